//! Which translation units include a header.
//!
//! The answer must come from the compiler (which sees the configuration, per-directory `-I`
//! flags and `#ifdef`s), but asking it about every unit of the kernel would mean preprocessing
//! tens of thousands of files. So: a cheap scan of `#include` lines over the tree gives a
//! *superset* of candidates (every conditional taken, unresolvable names matched by file name),
//! and the compiler's dependency output of each candidate (kbuild's `deps_` list, recorded when
//! the unit is compiled) decides which really include the header.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::path::Path;

use crate::BuildError;

/// Directories kbuild passes with `-I` for x86-64, in order.
const INCLUDE_DIRS: &[&str] = &[
    "arch/x86/include",
    "arch/x86/include/generated",
    "include",
    "arch/x86/include/uapi",
    "arch/x86/include/generated/uapi",
    "include/uapi",
    "include/generated/uapi",
];

/// Top-level directories that never hold kernel units for this target.
fn skipped(top: &str) -> bool {
    matches!(
        top,
        "Documentation" | "tools" | "scripts" | "samples" | "usr" | "LICENSES" | ".git"
    )
}

/// Reverse include edges: header -> files that may include it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct IncludeGraph {
    included_by: BTreeMap<String, BTreeSet<String>>,
}

impl IncludeGraph {
    /// Scans the tree's .c and .h files.
    pub fn scan(tree: &Path) -> Result<Self, BuildError> {
        let mut files = Vec::new();
        collect(tree, tree, &mut files)?;
        let existing: BTreeSet<&str> = files.iter().map(String::as_str).collect();
        let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
        for f in &files {
            if f.ends_with(".h") {
                let name = f.rsplit('/').next().unwrap_or(f);
                by_name.entry(name).or_default().push(f);
            }
        }
        let mut graph = IncludeGraph::default();
        for file in &files {
            let Ok(text) = fs::read(tree.join(file)) else {
                continue;
            };
            let dir = file.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
            for name in include_names(&text) {
                for target in resolve(&name, dir, &existing, &by_name) {
                    graph
                        .included_by
                        .entry(target)
                        .or_default()
                        .insert(file.clone());
                }
            }
        }
        Ok(graph)
    }

    /// The `.c` files that may include `header`, directly or not.
    pub fn candidate_units(&self, header: &str) -> Vec<String> {
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([header.to_string()]);
        while let Some(h) = queue.pop_front() {
            for user in self.included_by.get(&h).into_iter().flatten() {
                if seen.insert(user.clone()) && user.ends_with(".h") {
                    queue.push_back(user.clone());
                }
            }
        }
        seen.into_iter().filter(|f| f.ends_with(".c")).collect()
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), BuildError> {
    let entries = fs::read_dir(dir).map_err(|e| BuildError::io("listing", dir, e))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .map_err(|e| BuildError::io("inspecting", &path, e))?;
        if kind.is_dir() {
            let top = rel.split('/').next().unwrap_or_default();
            let other_arch =
                rel.starts_with("arch/") && rel.split('/').nth(1).is_some_and(|a| a != "x86");
            if !skipped(top) && !other_arch {
                collect(root, &path, out)?;
            }
        } else if rel.ends_with(".c") || rel.ends_with(".h") {
            out.push(rel);
        }
    }
    Ok(())
}

/// The names in `#include "x"` and `#include <x>` lines.
fn include_names(text: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        let line = line.trim_ascii_start();
        let Some(rest) = line.strip_prefix(b"#") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b"include") else {
            continue;
        };
        let rest = rest.trim_ascii_start();
        let (open, close) = match rest.first() {
            Some(b'"') => (b'"', b'"'),
            Some(b'<') => (b'<', b'>'),
            _ => continue,
        };
        let _ = open;
        if let Some(end) = rest[1..].iter().position(|&b| b == close) {
            out.push(String::from_utf8_lossy(&rest[1..1 + end]).into_owned());
        }
    }
    out
}

fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

fn resolve(
    name: &str,
    dir: &str,
    existing: &BTreeSet<&str>,
    by_name: &HashMap<&str, Vec<&str>>,
) -> Vec<String> {
    let local = normalize(&format!("{dir}/{name}"));
    if existing.contains(local.as_str()) {
        return vec![local];
    }
    for inc in INCLUDE_DIRS {
        let p = normalize(&format!("{inc}/{name}"));
        if existing.contains(p.as_str()) {
            return vec![p];
        }
    }
    // Not found where kbuild always looks: a directory-specific -I. Any header that ends the
    // same way may be it.
    let base = name.rsplit('/').next().unwrap_or(name);
    by_name
        .get(base)
        .into_iter()
        .flatten()
        .filter(|h| h.ends_with(&format!("/{name}")) || **h == name)
        .map(|h| h.to_string())
        .collect()
}

/// The dependency paths in a kbuild `.cmd` file's `deps_` list.
pub fn deps_from_cmd_file(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("deps_") {
            inside = true;
            continue;
        }
        if !inside {
            continue;
        }
        let entry = line.trim().trim_end_matches('\\').trim();
        if entry.is_empty() {
            break;
        }
        if !entry.starts_with("$(wildcard") {
            out.push(entry.trim_start_matches("./").to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_deps() {
        let names = include_names(
            b"#include <linux/sched.h>\n  #  include \"internal.h\"\n#define X 1\n#include MACRO\n",
        );
        assert_eq!(names, ["linux/sched.h", "internal.h"]);
        let deps = deps_from_cmd_file("cmd_x := gcc\nsource_x := a.c\ndeps_x := \\\n  include/linux/kconfig.h \\\n    $(wildcard include/config/FOO) \\\n  fs/proc/internal.h \\\n\nx: $(deps_x)\n");
        assert_eq!(deps, ["include/linux/kconfig.h", "fs/proc/internal.h"]);
        assert_eq!(normalize("fs/proc/../x.h"), "fs/x.h");
    }

    #[test]
    fn reverse_closure() {
        let mut g = IncludeGraph::default();
        g.included_by
            .entry("a.h".into())
            .or_default()
            .insert("b.h".into());
        g.included_by
            .entry("b.h".into())
            .or_default()
            .insert("x.c".into());
        g.included_by
            .entry("a.h".into())
            .or_default()
            .insert("y.c".into());
        assert_eq!(g.candidate_units("a.h"), ["x.c", "y.c"]);
    }
}
