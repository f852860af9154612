//! Splitting a Debian update into one patch per changed `.c` file, with the header changes
//! each needs, and `report.json` naming every changed file that is in no patch and why.
//!
//! A changed header goes with each changed `.c` file that may include it (by the include graph,
//! or an `#include` line of the updated file) *and* whose changed lines use a name the header's
//! changed lines declare (a macro, function, enum constant or member): a header that merely lies
//! on every include path is not carried into unrelated patches. Each patch also has a fallback
//! with the other changed headers its file includes directly, for when it does not compile
//! alone.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::changelog::Entry;
use crate::changes::{sanitize_header, ChangeKind, FileChange, SourceChanges};
use crate::KernelError;

/// Why a changed file does not go into a split patch.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Unsplit {
    /// The file.
    pub file: String,
    /// What it is: `header-only`, `assembly`, `build`, `not-kernel-code`, `binary`, `deleted`,
    /// `added`, `other`.
    pub kind: String,
    /// Why it is not a patch of its own.
    pub reason: String,
}

/// One patch of a split.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SplitPatch {
    /// The `.c` file it changes.
    pub file: String,
    /// The patch file's name in the split directory.
    pub patch: String,
    /// The header changes it carries (changed headers the `.c` file may include).
    pub headers: Vec<String>,
    /// Whether the `.c` file is new in the update.
    pub added: bool,
    /// The other changed headers the `.c` file includes directly (or that sit in its
    /// directory): what a build adds when the patch alone does not compile, because the
    /// `.c` change relies on a header change no changed line names.
    pub fallback_headers: Vec<String>,
    /// The patch with those headers too, when there are any.
    pub fallback: Option<String>,
}

/// What `--split` wrote, as `report.json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SplitReport {
    /// The target.
    pub target: String,
    /// The target's source version.
    pub from: String,
    /// The update's source version.
    pub to: String,
    /// CVE ids of the changelog entries.
    pub cves: Vec<String>,
    /// The changelog entries in between.
    pub changelog: Vec<Entry>,
    /// Files the update changes.
    pub files_changed: usize,
    /// One per changed `.c` file.
    pub patches: Vec<SplitPatch>,
    /// Changed files that are in no patch, with the reason.
    pub not_split: Vec<Unsplit>,
}

/// Plans a split of `changes` into one patch per changed `.c` file: each header change goes
/// with every changed `.c` file that may include it (by the target's include graph, or by an
/// `#include` line of the updated file); a header no changed `.c` file includes is reported,
/// as are assembly, build files and files outside the kernel.
pub fn plan_split(
    changes: &SourceChanges,
    graph: &crate::IncludeGraph,
) -> (Vec<SplitPatch>, Vec<Unsplit>) {
    let sources: Vec<&FileChange> = changes
        .files
        .iter()
        .filter(|c| c.path.ends_with(".c") && c.kind != ChangeKind::Deleted && !c.is_binary())
        .collect();
    let used: Vec<BTreeSet<String>> = sources.iter().map(|c| changed_identifiers(c)).collect();
    let mut headers_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut unsplit = Vec::new();
    for change in &changes.files {
        let path = change.path.as_str();
        if let Some(kind) = outside_kernel(path) {
            unsplit.push(Unsplit {
                file: path.to_string(),
                kind: kind.to_string(),
                reason: "not part of the running kernel's code".into(),
            });
            continue;
        }
        if change.is_binary() {
            unsplit.push(Unsplit {
                file: path.to_string(),
                kind: "binary".into(),
                reason: "a binary file cannot be carried by a source patch".into(),
            });
            continue;
        }
        if path.ends_with(".c") {
            if change.kind == ChangeKind::Deleted {
                unsplit.push(Unsplit {
                    file: path.to_string(),
                    kind: "deleted".into(),
                    reason: "the update removes this source: code cannot be removed from a running kernel by a live patch".into(),
                });
            }
            continue;
        }
        if path.ends_with(".h") {
            // A header change goes with a .c change that needs it: one that may include the
            // header and whose own changed lines use a name the header's changed lines define
            // or change (a new field, prototype, macro). A header that merely lies on every
            // include path is not carried into thousands of unrelated patches.
            let defined = defined_identifiers(change);
            let reachable: BTreeSet<String> = graph.candidate_units(path).into_iter().collect();
            let users: Vec<&str> = sources
                .iter()
                .zip(&used)
                .filter(|(source, used)| {
                    !used.is_disjoint(&defined)
                        && (reachable.contains(&source.path) || includes_by_name(&source.new, path))
                })
                .map(|(source, _)| source.path.as_str())
                .collect();
            if users.is_empty() {
                unsplit.push(Unsplit {
                    file: path.to_string(),
                    kind: "header-only".into(),
                    reason: "no changed .c file includes it: a header change alone would replace code in every unit that includes it; build it on its own with graft build if it fixes an inline function or macro".into(),
                });
            }
            for user in users {
                headers_of.entry(user).or_default().push(path.to_string());
            }
            continue;
        }
        let (kind, reason) = if path.ends_with(".S") || path.ends_with(".s") {
            (
                "assembly",
                "assembly is not live patched: only C functions are replaced",
            )
        } else if is_build_file(path) {
            ("build", "a build or configuration file changes how the kernel is built, not code a live patch can replace")
        } else {
            ("other", "not a C source or header")
        };
        unsplit.push(Unsplit {
            file: path.to_string(),
            kind: kind.into(),
            reason: reason.into(),
        });
    }
    let mut names = BTreeSet::new();
    let changed_headers: Vec<&str> = changes
        .files
        .iter()
        .filter(|c| c.path.ends_with(".h") && c.kind != ChangeKind::Deleted && !c.is_binary())
        .map(|c| c.path.as_str())
        .collect();
    let patches = sources
        .iter()
        .map(|c| {
            let mut name = c.path.replace('/', "-") + ".patch";
            while !names.insert(name.clone()) {
                name = format!("x-{name}");
            }
            let headers = headers_of.remove(c.path.as_str()).unwrap_or_default();
            let dir = c.path.rsplit_once('/').map_or("", |(d, _)| d);
            let fallback_headers: Vec<String> = changed_headers
                .iter()
                .filter(|h| !headers.iter().any(|x| x == *h))
                .filter(|h| {
                    includes_by_name(&c.new, h) || h.rsplit_once('/').is_some_and(|(d, _)| d == dir)
                })
                .map(|h| h.to_string())
                .collect();
            let fallback = (!fallback_headers.is_empty())
                .then(|| name.replace(".patch", ".with-headers.patch"));
            SplitPatch {
                file: c.path.clone(),
                patch: name,
                headers,
                added: c.kind == ChangeKind::Added,
                fallback_headers,
                fallback,
            }
        })
        .collect();
    (patches, unsplit)
}

/// Whether the updated `source` has an `#include` line naming `header` by its last path
/// components (the include graph is of the target's tree, which may predate the line).
fn includes_by_name(source: &[u8], header: &str) -> bool {
    let name = header.rsplit('/').next().unwrap_or(header);
    String::from_utf8_lossy(source).lines().any(|l| {
        let l = l.trim_start();
        l.starts_with('#')
            && l.contains("include")
            && l.split(['"', '<', '>'])
                .any(|p| !p.is_empty() && header.ends_with(p) && p.ends_with(name))
    })
}

/// The names a header change declares on its changed lines: macros (`#define NAME`),
/// functions and prototypes (the name before `(` on a line at column 0), enum constants
/// (`NAME,` or `NAME = v`) and struct members or variables (the last name before `;`). A `.c`
/// change that uses one needs the header change to compile or to mean what it says; sharing an
/// ordinary word does not.
fn defined_identifiers(change: &FileChange) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for code in changed_code(change) {
        let line = code.trim();
        let declared = if let Some(rest) = line.strip_prefix("#define") {
            words(rest).next()
        } else if line.starts_with('#') {
            None
        } else if !code.starts_with([' ', '\t']) && line.contains('(') {
            words(&line[..line.find('(').unwrap_or(0)]).last()
        } else if let Some(head) = line.strip_suffix(';').filter(|h| is_declaration(h)) {
            let head = head.split(['[', ':', '=']).next().unwrap_or(head);
            words(head).last()
        } else if line.ends_with(',') || line.contains('=') {
            // An enum constant: `NAME,` or `NAME = value,`.
            let head = line.split(['=', ',']).next().unwrap_or(line).trim();
            words(head).next().filter(|w| *w == head)
        } else {
            None
        };
        if let Some(name) = declared {
            names.insert(name.to_string());
        }
    }
    names
}

/// The code (see [`code_of`]) of the lines a change adds or removes.
fn changed_code(change: &FileChange) -> Vec<String> {
    let old = String::from_utf8_lossy(&change.old);
    let new = String::from_utf8_lossy(&change.new);
    let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
    diff.iter_all_changes()
        .filter(|op| op.tag() != similar::ChangeTag::Equal)
        .filter_map(|op| code_of(op.value()))
        .collect()
}

/// Whether `text` (a line without its `;`) reads as a declaration (`struct foo *name`,
/// `u32 name:3`), not a statement (`return skb->len`, `x = f(y)`).
fn is_declaration(text: &str) -> bool {
    const STATEMENTS: &[&str] = &[
        "return", "goto", "break", "continue", "if", "else", "while", "do",
    ];
    let head = text.split(['=', '[', ':']).next().unwrap_or(text);
    let first = head.split_whitespace().next().unwrap_or_default();
    !head.contains(['(', ')', '.', '-', '+', '&', '|', '!'])
        && head.split_whitespace().count() >= 2
        && !STATEMENTS.contains(&first)
}

/// The code of a line: None for comment lines and `#include`s, else the line without its
/// comments and string literals (their words name nothing).
fn code_of(line: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('*')
        || trimmed.starts_with("/*")
        || trimmed.starts_with("//")
        || trimmed.starts_with("#include")
        || trimmed.is_empty()
    {
        return None;
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let comment = rest.find("/*");
        let string = rest.find('"');
        let line_comment = rest.find("//");
        let next = [comment, string, line_comment].into_iter().flatten().min();
        let Some(at) = next else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..at]);
        if Some(at) == line_comment {
            break;
        }
        let (open, close) = if Some(at) == comment {
            (2, "*/")
        } else {
            (1, "\"")
        };
        match rest[at + open..].find(close) {
            Some(end) => rest = &rest[at + open + end + close.len()..],
            None => break,
        }
    }
    Some(out)
}

fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.len() > 2 && w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'))
}

/// The identifiers on the lines a change adds or removes, minus C keywords and the names so
/// common that sharing them means nothing.
fn changed_identifiers(change: &FileChange) -> BTreeSet<String> {
    const COMMON: &[&str] = &[
        "if", "else", "for", "while", "do", "return", "goto", "break", "continue", "switch",
        "case", "default", "struct", "union", "enum", "typedef", "static", "inline", "const",
        "volatile", "extern", "unsigned", "signed", "int", "long", "short", "char", "void", "bool",
        "true", "false", "sizeof", "define", "include", "ifdef", "ifndef", "endif", "undef",
        "NULL", "u8", "u16", "u32", "u64", "s8", "s16", "s32", "s64", "size_t", "__user", "__init",
        "__exit", "err", "ret", "out", "i", "j", "len", "val", "dev", "data", "flags", "size",
        "type", "name", "count", "buf", "ptr", "p", "x", "y", "n",
    ];
    let mut names = BTreeSet::new();
    for code in changed_code(change) {
        for word in words(&code) {
            if !COMMON.contains(&word) {
                names.insert(word.to_string());
            }
        }
    }
    names
}

fn outside_kernel(path: &str) -> Option<&'static str> {
    let top = path.split('/').next().unwrap_or_default();
    match top {
        "Documentation" | "tools" | "scripts" | "samples" | "LICENSES" | "debian" | "usr" => {
            Some("not-kernel-code")
        }
        _ if !path.contains('/') && !path.ends_with(".c") && !path.ends_with(".h") => {
            Some("not-kernel-code")
        }
        _ => None,
    }
}

fn is_build_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("Makefile")
        || name.starts_with("Kconfig")
        || name == "Kbuild"
        || name.ends_with(".lds")
        || name.ends_with(".lds.S")
        || name.ends_with(".config")
}

/// Writes the split into `dir`: one patch per planned `.c` file and `report.json`. Nothing is
/// written unless all of it can be: the patches go to a scratch directory renamed into place.
pub fn write_split(
    changes: &SourceChanges,
    graph: &crate::IncludeGraph,
    dir: &Path,
) -> Result<SplitReport, KernelError> {
    if dir.exists()
        && fs::read_dir(dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(KernelError::Inconsistent(format!(
            "{} exists and is not empty: give a new directory to --split",
            dir.display()
        )));
    }
    let (patches, not_split) = plan_split(changes, graph);
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| KernelError::io("creating", parent, e))?;
    let scratch = tempfile::Builder::new()
        .prefix(".split-")
        .tempdir_in(parent)
        .map_err(|e| KernelError::io("creating a directory in", parent, e))?;
    let header_prefix = |p: &SplitPatch| {
        format!(
            "{}: {} {} -> {} for {}\nCVE (whole update): {}\n\n",
            p.file,
            changes.package,
            changes.from,
            changes.to,
            changes.target,
            changes.cves().join(" ")
        )
    };
    for p in &patches {
        let write_patch = |name: &str, extra: &[String]| -> Result<(), KernelError> {
            let wanted: BTreeSet<&str> = std::iter::once(p.file.as_str())
                .chain(p.headers.iter().map(String::as_str))
                .chain(extra.iter().map(String::as_str))
                .collect();
            let mut text = sanitize_header(&header_prefix(p));
            for change in changes
                .files
                .iter()
                .filter(|c| wanted.contains(c.path.as_str()))
            {
                text.push_str(&change.diff());
            }
            let path = scratch.path().join(name);
            fs::write(&path, text).map_err(|e| KernelError::io("writing", &path, e))
        };
        write_patch(&p.patch, &[])?;
        if let Some(fallback) = &p.fallback {
            write_patch(fallback, &p.fallback_headers)?;
        }
    }
    let report = SplitReport {
        target: changes.target.clone(),
        from: changes.from.clone(),
        to: changes.to.clone(),
        cves: changes.cves(),
        changelog: changes.changelog.clone(),
        files_changed: changes.files.len(),
        patches,
        not_split,
    };
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| KernelError::Inconsistent(e.to_string()))?;
    let path = scratch.path().join("report.json");
    fs::write(&path, json).map_err(|e| KernelError::io("writing", &path, e))?;
    let _ = fs::remove_dir(dir);
    let kept: PathBuf = scratch.keep();
    fs::rename(&kept, dir).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        KernelError::io("renaming into", dir, e)
    })?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str, kind: ChangeKind, old: &str, new: &str) -> FileChange {
        FileChange::new(path, kind, old.as_bytes(), new.as_bytes())
    }

    #[test]
    fn declarations_and_statements() {
        assert!(is_declaration("\tstruct sk_buff *next"));
        assert!(is_declaration("\tunsigned int flags:3"));
        assert!(!is_declaration("\treturn skb->len"));
        assert!(!is_declaration("\tx = f(y)"));
        assert!(!is_declaration("\tbreak"));
        let header = change(
            "include/linux/x.h",
            ChangeKind::Modified,
            "static inline int f(struct s *s)\n{\n\treturn s->len;\n}\n",
            "static inline int f(struct s *s)\n{\n\treturn s->size;\n}\n#define X_NEW 1\nint x_func(void);\nstruct t {\n\tu32 x_member;\n\tX_ENUM = 3,\n};\n",
        );
        let names: Vec<String> = defined_identifiers(&header).into_iter().collect();
        assert_eq!(names, ["X_ENUM", "X_NEW", "x_func", "x_member"]);
    }
    #[test]
    fn comments_strings_and_includes_name_nothing() {
        assert_eq!(code_of(" * These are the io priority classes"), None);
        assert_eq!(code_of("#include <linux/types.h>"), None);
        assert_eq!(
            code_of("\tx = f(\"the text\"); /* note */ y++; // tail").as_deref(),
            Some("\tx = f();  y++; ")
        );
    }
    #[test]
    fn split_puts_headers_with_the_sources_that_include_them() {
        let changes = SourceChanges {
            target: "debian:t".into(),
            package: "linux-source-6.1".into(),
            from: "1".into(),
            to: "2".into(),
            changelog: Vec::new(),
            files: vec![
                change(
                    "fs/ext4/ext4.h",
                    ChangeKind::Modified,
                    "a\n",
                    "int ext4_mb_new_check(void);\n",
                ),
                change(
                    "fs/ext4/mballoc.c",
                    ChangeKind::Modified,
                    "#include \"ext4.h\"\n",
                    "#include \"ext4.h\"\nstatic int x = ext4_mb_new_check();\n",
                ),
                change(
                    "fs/ext4/super.c",
                    ChangeKind::Modified,
                    "#include \"ext4.h\"\n",
                    "#include \"ext4.h\"\nint unrelated_change;\n",
                ),
                change("fs/nfsd/nfs4state.c", ChangeKind::Modified, "1\n", "2\n"),
                change("include/linux/lonely.h", ChangeKind::Modified, "1\n", "2\n"),
                change(
                    "arch/x86/entry/entry_64.S",
                    ChangeKind::Modified,
                    "1\n",
                    "2\n",
                ),
                change("fs/ext4/Makefile", ChangeKind::Modified, "1\n", "2\n"),
                change("Documentation/x.rst", ChangeKind::Modified, "1\n", "2\n"),
                change("drivers/gone.c", ChangeKind::Deleted, "1\n", ""),
            ],
        };
        let mut changes = changes;
        changes.files.sort_by(|a, b| a.path.cmp(&b.path));
        let (patches, unsplit) = plan_split(&changes, &crate::IncludeGraph::default());
        let files: Vec<&str> = patches.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            [
                "fs/ext4/mballoc.c",
                "fs/ext4/super.c",
                "fs/nfsd/nfs4state.c"
            ]
        );
        assert_eq!(patches[0].headers, ["fs/ext4/ext4.h"]);
        assert_eq!(patches[0].patch, "fs-ext4-mballoc.c.patch");
        // super.c includes ext4.h, but its change uses nothing the header's change defines.
        assert!(patches[1].headers.is_empty());
        assert!(patches[2].headers.is_empty());
        let kinds: Vec<(&str, &str)> = unsplit
            .iter()
            .map(|u| (u.file.as_str(), u.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("Documentation/x.rst", "not-kernel-code"),
                ("arch/x86/entry/entry_64.S", "assembly"),
                ("drivers/gone.c", "deleted"),
                ("fs/ext4/Makefile", "build"),
                ("include/linux/lonely.h", "header-only"),
            ]
        );
    }
}
