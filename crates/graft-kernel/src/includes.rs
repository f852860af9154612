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

use graft_cache::Cache;

use crate::{Kernel, KernelError};

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
    pub fn scan(tree: &Path) -> Result<Self, KernelError> {
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

impl Kernel {
    /// The include graph of the target's source tree, scanned once and kept in the cache
    /// (`objects/<target>/include-graph.json`).
    pub fn include_graph(&self, cache: &Cache) -> Result<IncludeGraph, KernelError> {
        let entry = cache.entry("objects", &self.target().key());
        {
            let lock = entry.lock()?;
            lock.ensure("include-graph.json", |out| -> Result<(), KernelError> {
                let graph = IncludeGraph::scan(&self.source_dir())?;
                let json = serde_json::to_vec(&graph)
                    .map_err(|e| KernelError::Inconsistent(e.to_string()))?;
                fs::write(out, json).map_err(|e| KernelError::io("writing", out, e))
            })?;
        }
        let path = entry.path("include-graph.json");
        let text = fs::read(&path).map_err(|e| KernelError::io("reading", &path, e))?;
        serde_json::from_slice(&text).map_err(|e| KernelError::BadImage {
            path: path.clone(),
            reason: format!("unreadable include graph: {e}; delete it to rescan"),
        })
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), KernelError> {
    let entries = fs::read_dir(dir).map_err(|e| KernelError::io("listing", dir, e))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel.to_string_lossy().into_owned();
        let kind = entry
            .file_type()
            .map_err(|e| KernelError::io("inspecting", &path, e))?;
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
        let close = match rest.first() {
            Some(b'"') => b'"',
            Some(b'<') => b'>',
            _ => continue,
        };
        if let Some(end) = rest[1..].iter().position(|&b| b == close) {
            out.push(String::from_utf8_lossy(&rest[1..1 + end]).into_owned());
        }
    }
    out
}

/// A path with `.` and `..` components resolved (`fs/proc/../x.h` is `fs/x.h`).
pub(crate) fn normalize(path: &str) -> String {
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

/// The names of the definitions (functions, macros) that enclose the given lines (1-based), or
/// None when a line lies outside any definition graft can name (then nothing can be narrowed).
pub fn enclosing_definitions(text: &str, lines: &[usize]) -> Option<BTreeSet<String>> {
    let all: Vec<&str> = text.lines().collect();
    let mut names = BTreeSet::new();
    for &line in lines {
        let index = line.saturating_sub(1).min(all.len().saturating_sub(1));
        // Blank lines and comments define nothing.
        let text = all.get(index).map(|l| l.trim()).unwrap_or_default();
        if text.is_empty()
            || text.starts_with("/*")
            || text.starts_with('*')
            || text.starts_with("//")
        {
            continue;
        }
        names.insert(definition_at(&all, index)?);
    }
    Some(names)
}

fn identifier_before_paren(line: &str) -> Option<String> {
    let head = &line[..line.find('(')?];
    let name: String = head
        .chars()
        .rev()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The definition line `index` belongs to: the nearest line above at column 0 that opens a
/// function (`... name(`) or a macro (`#define name`).
fn definition_at(lines: &[&str], index: usize) -> Option<String> {
    // A changed prototype (`extern bool f(...);`) names f itself.
    let here = lines.get(index)?.trim();
    if here.contains('(')
        && here.ends_with(';')
        && !here.starts_with(['#', '/', '*'])
        && !lines[index].starts_with([' ', '\t'])
    {
        return identifier_before_paren(here);
    }
    for i in (0..=index).rev() {
        let line = lines[i];
        if let Some(rest) = line.strip_prefix("#define") {
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            return (!name.is_empty()).then_some(name);
        }
        if i < index
            && (line.starts_with('}') || line.starts_with("#endif") || line.starts_with("#include"))
        {
            return None;
        }
        let starts_code = line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if starts_code && line.contains('(') && !line.trim_end().ends_with(';') {
            return identifier_before_paren(line);
        }
    }
    None
}

fn mentions(text: &str, names: &BTreeSet<String>) -> bool {
    names.iter().any(|name| {
        text.match_indices(name.as_str()).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + name.len()..].chars().next();
            let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            !word(before) && !word(after)
        })
    })
}

impl IncludeGraph {
    /// Like [`IncludeGraph::candidate_units`], keeping only units whose own text, or the text
    /// of a header between them and `header`, mentions one of `names` (the changed definitions,
    /// grown by the definitions of `header` that use them).
    pub fn candidate_units_using(
        &self,
        tree: &Path,
        header: &str,
        names: &BTreeSet<String>,
    ) -> Vec<String> {
        let mut names = names.clone();
        if let Ok(text) = fs::read_to_string(tree.join(header)) {
            let lines: Vec<&str> = text.lines().collect();
            for _ in 0..5 {
                let before = names.len();
                for (i, line) in lines.iter().enumerate() {
                    // A comment that names a definition (its kerneldoc) uses nothing.
                    let code = line.trim_start();
                    if code.starts_with('*') || code.starts_with("/*") || code.starts_with("//") {
                        continue;
                    }
                    if mentions(line, &names) {
                        if let Some(def) = definition_at(&lines, i) {
                            names.insert(def);
                        }
                    }
                }
                if names.len() == before {
                    break;
                }
            }
        }
        let mut seen = BTreeSet::new();
        let mut queue = VecDeque::from([header.to_string()]);
        let mut users = BTreeSet::new();
        while let Some(h) = queue.pop_front() {
            for user in self.included_by.get(&h).into_iter().flatten() {
                if !seen.insert(user.clone()) {
                    continue;
                }
                let text = fs::read_to_string(tree.join(user)).unwrap_or_default();
                if mentions(&text, &names) {
                    users.insert(user.clone());
                } else if user.ends_with(".h") {
                    queue.push_back(user.clone());
                }
            }
        }
        let mut units = BTreeSet::new();
        for user in users {
            if user.ends_with(".c") {
                units.insert(user);
            } else {
                units.extend(self.candidate_units(&user));
            }
        }
        units.into_iter().collect()
    }
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
    fn definitions_around_changed_lines() {
        let text = "#ifndef X\n#define X\nstatic inline void seq_show_option(struct seq_file *m,\n\t\tconst char *name)\n{\n\tseq_putc(m, ',');\n}\n#define seq_show_option_n(m, n) \\\n\tdo { } while (0)\n#endif\n";
        assert_eq!(
            enclosing_definitions(text, &[6]).unwrap(),
            BTreeSet::from(["seq_show_option".to_string()])
        );
        assert_eq!(
            enclosing_definitions(text, &[9]).unwrap(),
            BTreeSet::from(["seq_show_option_n".to_string()])
        );
        assert!(mentions(
            "x = seq_show_option(m);",
            &BTreeSet::from(["seq_show_option".to_string()])
        ));
        assert!(!mentions(
            "seq_show_options",
            &BTreeSet::from(["seq_show_option".to_string()])
        ));
    }

    /// Regression: the kerneldoc of a new inline in list.h named it, so the definition above
    /// the comment counted as a user and the change reached 1835 units.
    #[test]
    fn a_new_definitions_kerneldoc_uses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("include/linux")).unwrap();
        std::fs::write(
            dir.path().join("include/linux/list.h"),
            "static inline int list_empty(const struct list_head *h)\n{\n\treturn h->next == h;\n}\n\n/**\n * list_count_nodes - count nodes in the list\n */\nstatic inline size_t list_count_nodes(struct list_head *head)\n{\n\treturn 0;\n}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.c"),
            "#include <linux/list.h>\nint f(void) { return list_empty(0); }\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("b.c"),
            "#include <linux/list.h>\nint g(void) { return list_count_nodes(0); }\n",
        )
        .unwrap();
        let graph = IncludeGraph::scan(dir.path()).unwrap();
        let names = BTreeSet::from(["list_count_nodes".to_string()]);
        assert_eq!(
            graph.candidate_units_using(dir.path(), "include/linux/list.h", &names),
            ["b.c"]
        );
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
