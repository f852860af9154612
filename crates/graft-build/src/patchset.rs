//! Source patches: which files they touch, and applying them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::BuildError;

/// A patch file read from disk.
#[derive(Clone, Debug)]
pub struct PatchFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Files it changes (paths relative to the source root, as after `patch -p1`).
    pub files: Vec<String>,
}

impl PatchFile {
    /// Reads and checks a unified diff.
    pub fn read(path: &Path) -> Result<Self, BuildError> {
        let bytes =
            std::fs::read(path).map_err(|e| BuildError::io("reading the patch", path, e))?;
        let text = String::from_utf8(bytes).map_err(|_| BuildError::BadPatch {
            patch: path.to_path_buf(),
            reason: "not UTF-8 text".into(),
        })?;
        let files = touched_files(&text);
        if files.is_empty() {
            return Err(BuildError::BadPatch {
                patch: path.to_path_buf(),
                reason: "no `+++ b/<file>` lines: not a unified diff".into(),
            });
        }
        if let Some(bad) = files
            .iter()
            .find(|f| f.starts_with('/') || f.split('/').any(|p| p == ".."))
        {
            return Err(BuildError::BadPatch {
                patch: path.to_path_buf(),
                reason: format!("`{bad}` points outside the kernel source"),
            });
        }
        // patch(1) runs inside the scratch tree, so the path must not be relative.
        let path = std::path::absolute(path).map_err(|e| BuildError::io("resolving", path, e))?;
        Ok(Self { path, text, files })
    }
}

/// The files a unified diff changes, from its `+++` lines, with the first path component
/// (`b/`) stripped as `patch -p1` does.
pub fn touched_files(text: &str) -> Vec<String> {
    let mut files = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("+++ ") else {
            continue;
        };
        let path = rest.split('\t').next().unwrap_or_default().trim();
        if path == "/dev/null" {
            continue;
        }
        let stripped = path
            .split_once('/')
            .map(|(_, p)| p)
            .unwrap_or(path)
            .to_string();
        if !files.contains(&stripped) {
            files.push(stripped);
        }
    }
    files
}

/// Applies `patch` with `patch -p1` in `dir`.
pub fn apply(patch: &PatchFile, dir: &Path) -> Result<(), BuildError> {
    let output = Command::new("patch")
        .args([
            "-p1",
            "--forward",
            "--batch",
            "--no-backup-if-mismatch",
            "-r",
            "-",
            "-i",
        ])
        .arg(&patch.path)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::io("running patch(1) for", &patch.path, e))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stdout);
        let detail: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(6)
            .collect();
        return Err(BuildError::BadPatch {
            patch: patch.path.clone(),
            reason: format!(
                "does not apply to the target's source:\n  {}",
                detail.join("\n  ")
            ),
        });
    }
    Ok(())
}

/// Lines of `file` (1-based, in the patched version) that the patch adds, or next to which it
/// removes lines. Hunks are consumed by their line counts, so a removed line that happens to
/// read `--- x` is never taken for the next file's header.
pub fn changed_lines(text: &str, file: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut in_file = false;
    let (mut post, mut old_left, mut new_left) = (0usize, 0usize, 0usize);
    let count = |spec: &str| -> (usize, usize) {
        let mut parts = spec.split(',');
        let start = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        let len = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
        (start, len)
    };
    for line in text.lines() {
        if old_left > 0 || new_left > 0 {
            match line.as_bytes().first() {
                Some(b'+') => {
                    if in_file {
                        out.push(post);
                    }
                    post += 1;
                    new_left = new_left.saturating_sub(1);
                }
                Some(b'-') => {
                    if in_file {
                        out.push(post);
                    }
                    old_left = old_left.saturating_sub(1);
                }
                Some(b'\\') => {}
                _ => {
                    post += 1;
                    old_left = old_left.saturating_sub(1);
                    new_left = new_left.saturating_sub(1);
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("+++ ") {
            let path = rest.split('\t').next().unwrap_or_default().trim();
            in_file = path.split_once('/').map(|(_, p)| p) == Some(file);
        } else if let Some(rest) = line.strip_prefix("@@ ") {
            let mut words = rest.split_whitespace();
            let old = words
                .next()
                .and_then(|w| w.strip_prefix('-'))
                .map(count)
                .unwrap_or((0, 0));
            let new = words
                .next()
                .and_then(|w| w.strip_prefix('+'))
                .map(count)
                .unwrap_or((0, 0));
            post = new.0;
            old_left = old.1;
            new_left = new.1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_lines_in_the_patched_file() {
        let text = "--- a/x.h\n+++ b/x.h\n@@ -10,3 +10,4 @@ ctx\n a\n-b\n+c\n+d\n e\n--- a/y.c\n+++ b/y.c\n@@ -1,1 +1,1 @@\n-x\n+y\n";
        assert_eq!(changed_lines(text, "x.h"), [11, 11, 12]);
        assert_eq!(changed_lines(text, "y.c"), [1, 1]);
        assert!(changed_lines(text, "y.h").is_empty());
    }

    #[test]
    fn files_from_plus_lines() {
        let text = "diff --git a/fs/proc/cmdline.c b/fs/proc/cmdline.c\n--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\t2024-01-01\n@@ -1 +1 @@\n-a\n+b\n--- /dev/null\n+++ b/kernel/new.c\n";
        assert_eq!(touched_files(text), ["fs/proc/cmdline.c", "kernel/new.c"]);
    }
}
