//! `graft kernel changes`: Debian's own updates as source patches against a target.
//!
//! A host on 6.1.0-56 wants the fix Debian shipped in 6.1.192-3 now, without rebooting into
//! 6.1.0-57. The update's source is `linux-source-<series>` at the newer version; its changes
//! against the target are the difference between that tarball and the target's own source
//! tree. The new tarball is streamed, not unpacked: each member is compared with the target's
//! file (sizes first, bytes when they agree), and only changed files are kept in memory. Files
//! Debian deleted are those of the target's tarball list (kept at fetch) that the new tarball
//! lacks; files `make prepare` generated are in neither and never show up.
//!
//! The result is a `-p1` unified diff whose header carries the Debian changelog entries in
//! between (CVE ids included), or, with a split, one patch per changed `.c` file with the
//! header changes it needs.

use std::collections::BTreeSet;
use std::fs;

use graft_cache::Cache;
use graft_progress::SharedProgress;

use crate::changelog::{self, Entry};
use crate::resolve::source_package;
use crate::source::SourcePackage;
use crate::{Kernel, KernelError};

/// What happened to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Changed contents.
    Modified,
    /// New in the update.
    Added,
    /// Removed by the update.
    Deleted,
}

/// One changed file, with both versions' bytes (empty for the side that lacks it).
#[derive(Clone, Debug)]
pub struct FileChange {
    /// Path relative to the tree.
    pub path: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The target's contents.
    pub old: Vec<u8>,
    /// The update's contents.
    pub new: Vec<u8>,
}

impl FileChange {
    /// A change of `path` from `old` to `new`.
    pub fn new(path: &str, kind: ChangeKind, old: &[u8], new: &[u8]) -> Self {
        Self {
            path: path.to_string(),
            kind,
            old: old.to_vec(),
            new: new.to_vec(),
        }
    }

    /// Whether either side is not text (a diff of it cannot be a patch).
    pub fn is_binary(&self) -> bool {
        let binary = |b: &[u8]| b.contains(&0) || std::str::from_utf8(b).is_err();
        binary(&self.old) || binary(&self.new)
    }

    /// The unified diff of this file (`a/` and `b/` prefixes, three lines of context).
    pub fn diff(&self) -> String {
        let old = String::from_utf8_lossy(&self.old);
        let new = String::from_utf8_lossy(&self.new);
        let (a, b) = match self.kind {
            ChangeKind::Modified => (format!("a/{}", self.path), format!("b/{}", self.path)),
            ChangeKind::Added => ("/dev/null".to_string(), format!("b/{}", self.path)),
            ChangeKind::Deleted => (format!("a/{}", self.path), "/dev/null".to_string()),
        };
        let diff = similar::TextDiff::from_lines(old.as_ref(), new.as_ref());
        format!(
            "diff -u {a} {b}\n{}",
            diff.unified_diff().context_radius(3).header(&a, &b)
        )
    }
}

/// The source changes of a Debian update against a target.
#[derive(Clone, Debug)]
pub struct SourceChanges {
    /// The target.
    pub target: String,
    /// The source package.
    pub package: String,
    /// The target's source version.
    pub from: String,
    /// The update's source version.
    pub to: String,
    /// The changelog entries after `from` up to `to`, newest first.
    pub changelog: Vec<Entry>,
    /// Changed files, sorted by path.
    pub files: Vec<FileChange>,
}

impl SourceChanges {
    /// CVE ids of every entry, each once.
    pub fn cves(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        for cve in self.changelog.iter().flat_map(|e| e.cves.iter()) {
            if !all.contains(cve) {
                all.push(cve.clone());
            }
        }
        all
    }

    /// The patch header: what the changes are, and the changelog between the versions.
    pub fn header(&self) -> String {
        let mut out = format!(
            "{} {} -> {} for {} ({} files)\n",
            self.package,
            self.from,
            self.to,
            self.target,
            self.files.len()
        );
        let cves = self.cves();
        if !cves.is_empty() {
            out.push_str(&format!("CVE: {}\n", cves.join(" ")));
        }
        out.push('\n');
        for entry in &self.changelog {
            out.push_str(&entry.text);
            out.push('\n');
        }
        sanitize_header(&out)
    }

    /// A `-p1` patch of the text files `include` accepts, with the header.
    pub fn patch(&self, include: impl Fn(&FileChange) -> bool) -> String {
        let mut out = self.header();
        for change in self.files.iter().filter(|c| !c.is_binary() && include(c)) {
            out.push_str(&change.diff());
        }
        out
    }
}

/// A header line that `patch` or a diff reader could take for part of a diff is indented.
pub(crate) fn sanitize_header(text: &str) -> String {
    text.lines()
        .map(|line| {
            let risky = ["--- ", "+++ ", "@@ ", "diff ", "Index: ", "*** "]
                .iter()
                .any(|p| line.starts_with(p));
            if risky {
                format!(" {line}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect()
}

/// Computes the changes of `linux-source-<series>` at `to` against `kernel`'s source.
pub fn changes(
    cache: &Cache,
    kernel: &Kernel,
    to: &str,
    progress: &SharedProgress,
) -> Result<SourceChanges, KernelError> {
    let target = kernel.target();
    let from = kernel.meta().source_version.clone();
    let package = source_package(target);
    check_update_version(&target.series, &from, to)?;
    let index = graft_deb::Index::all_versions(std::slice::from_ref(&package))?;
    let info = index.get(&package, to).cloned().ok_or_else(|| {
        let newer: Vec<String> = index
            .versions(&package)
            .iter()
            .filter(|p| {
                graft_deb::relation::compare(&p.version, &from)
                    == Some(std::cmp::Ordering::Greater)
            })
            .map(|p| p.version.clone())
            .collect();
        KernelError::UpdateVersion {
            to: to.to_string(),
            reason: format!(
                "Debian's archive (as apt sees it) has no {package} at that version; newer than the target's {from}: {}",
                if newer.is_empty() { "none".to_string() } else { newer.join(", ") }
            ),
        }
    })?;
    let known: BTreeSet<String> = kernel.source_files()?.into_iter().collect();
    let scratch = tempfile::Builder::new()
        .prefix("changes-")
        .tempdir_in(cache.root())
        .map_err(|e| KernelError::io("creating a directory in", cache.root(), e))?;
    let source = SourcePackage::unpack(
        &info,
        &target.series,
        &cache.root().join("downloads"),
        &scratch.path().join("deb"),
        progress,
    )?;
    let entries = changelog::parse(&source.changelog_text()?)?;
    let tree = kernel.source_dir();
    let mut files = Vec::new();
    let mut seen = BTreeSet::new();
    graft_deb::read_tarball(&source.tarball, 1, progress.as_ref(), &mut |path, data| {
        seen.insert(path.to_string());
        let old_path = tree.join(path);
        let was_there = known.contains(path);
        let mut new = Vec::new();
        data.read_to_end(&mut new)
            .map_err(|e| graft_deb::DebError::io("reading", &source.tarball, e))?;
        if !was_there {
            files.push(FileChange {
                path: path.to_string(),
                kind: ChangeKind::Added,
                old: Vec::new(),
                new,
            });
            return Ok(());
        }
        let same_size = fs::metadata(&old_path).is_ok_and(|m| m.len() == new.len() as u64);
        let old =
            fs::read(&old_path).map_err(|e| graft_deb::DebError::io("reading", &old_path, e))?;
        if !same_size || old != new {
            files.push(FileChange {
                path: path.to_string(),
                kind: ChangeKind::Modified,
                old,
                new,
            });
        }
        Ok(())
    })?;
    for path in known.difference(&seen) {
        let old_path = tree.join(path);
        let old = fs::read(&old_path).map_err(|e| KernelError::io("reading", &old_path, e))?;
        files.push(FileChange {
            path: path.clone(),
            kind: ChangeKind::Deleted,
            old,
            new: Vec::new(),
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(SourceChanges {
        target: target.to_string(),
        package,
        changelog: changelog::between(&entries, &from, to),
        from,
        to: to.to_string(),
        files,
    })
}

/// Refuses a `--to` that is not a newer version of the same series.
fn check_update_version(series: &str, from: &str, to: &str) -> Result<(), KernelError> {
    let bad = |reason: String| KernelError::UpdateVersion {
        to: to.to_string(),
        reason,
    };
    let upstream = graft_deb::relation::upstream(to);
    // Debian Policy 5.6.12: the upstream version starts with a digit.
    let ordering = graft_deb::relation::compare(to, from)
        .filter(|_| upstream.starts_with(|c: char| c.is_ascii_digit()))
        .ok_or_else(|| bad("not a Debian version (like 6.1.192-3)".into()))?;
    if !upstream.starts_with(&format!("{series}.")) {
        return Err(bad(format!(
            "upstream {upstream} is not of the target's series {series}: live patches carry fixes within a series"
        )));
    }
    match ordering {
        std::cmp::Ordering::Greater => Ok(()),
        std::cmp::Ordering::Equal => Err(bad(
            "that is the target's own source version: there is nothing to change".into(),
        )),
        std::cmp::Ordering::Less => Err(bad(format!(
            "older than the target's source {from}: an update must be newer"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str, kind: ChangeKind, old: &str, new: &str) -> FileChange {
        FileChange::new(path, kind, old.as_bytes(), new.as_bytes())
    }

    #[test]
    fn diffs_are_p1_unified_diffs() {
        let m = change("fs/a.c", ChangeKind::Modified, "1\n2\n3\n", "1\nTWO\n3\n");
        let text = m.diff();
        assert!(
            text.contains("--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1,3 +1,3 @@\n 1\n-2\n+TWO\n 3\n"),
            "{text}"
        );
        let added = change("fs/new.c", ChangeKind::Added, "", "x\n").diff();
        assert!(added.contains("--- /dev/null\n+++ b/fs/new.c\n"), "{added}");
        assert!(added.contains("+x\n"), "{added}");
        let gone = change("fs/old.c", ChangeKind::Deleted, "y\n", "").diff();
        assert!(gone.contains("--- a/fs/old.c\n+++ /dev/null\n"), "{gone}");
        let no_newline = change("fs/b.c", ChangeKind::Modified, "a\n", "a\nb").diff();
        assert!(
            no_newline.contains("\\ No newline at end of file"),
            "{no_newline}"
        );
    }
    #[test]
    fn header_lines_that_look_like_diffs_are_indented() {
        assert_eq!(
            sanitize_header("--- x\nok\n+++ y\n"),
            " --- x\nok\n +++ y\n"
        );
    }
    #[test]
    fn update_versions_are_checked() {
        check_update_version("6.1", "6.1.192-2", "6.1.192-3").unwrap();
        check_update_version("6.1", "6.1.190-1", "6.1.192-1").unwrap();
        for (to, says) in [
            ("6.1.192-1", "older than the target's source 6.1.192-2"),
            ("6.1.192-2", "nothing to change"),
            ("6.12.118-1", "not of the target's series 6.1"),
            ("not a version!", "not a Debian version"),
        ] {
            let err = check_update_version("6.1", "6.1.192-2", to)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{to}: {err}");
            assert!(err.contains(to), "{to}: {err}");
        }
    }
}
