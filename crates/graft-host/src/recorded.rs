//! Recorded copies of what the kernel shows: `/sys/kernel/livepatch`, `/proc/modules` and
//! graft's state directory, as one text file, and back into a directory tree.
//!
//! The host's conflict rules and status are exercised on such recordings, taken from the real
//! kernel in the lab (`graft/tests/host_recordings.rs` records them with `GRAFT_BLESS=1`), so that the
//! fast tier tests them against what the kernel really wrote, without a kernel.
//!
//! Format: `@@dir <path>` names a directory (function directories hold no files), `@@file
//! <path>` starts a file (paths relative to the recording's root: `livepatch/`, `modules`,
//! `state/`), then its contents verbatim up to the next `@@` line or the end.
//! The guest-side dump script is [`DUMP_SCRIPT`].

use std::fs;
use std::path::Path;

use crate::sys::{self, LoadedModule, LoadedPatch};
use crate::HostError;

/// A busybox sh script that prints the recording of the running kernel and a state directory
/// (`$1`, default /var/lib/graft).
pub const DUMP_SCRIPT: &str = r#"state=${1:-/var/lib/graft}
for d in $(find /sys/kernel/livepatch -mindepth 1 -type d | sort); do
	echo "@@dir livepatch/${d#/sys/kernel/livepatch/}"
done
for f in $(find /sys/kernel/livepatch -type f | sort); do
	echo "@@file livepatch/${f#/sys/kernel/livepatch/}"
	cat "$f" 2>/dev/null
done
echo "@@file modules"
cat /proc/modules
for f in $(cd "$state" 2>/dev/null && find . -type f -name '*.json' | sort); do
	echo "@@file state/${f#./}"
	cat "$state/$f"
	echo
done
"#;

/// A parsed recording.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recording {
    dirs: Vec<String>,
    files: Vec<(String, String)>,
}

impl Recording {
    /// Parses a recording's text (everything before the first `@@file` is ignored).
    pub fn parse(text: &str) -> Self {
        let mut files: Vec<(String, String)> = Vec::new();
        let mut dirs = Vec::new();
        let mut in_file = false;
        for line in text.lines() {
            if let Some(path) = line.strip_prefix("@@dir ") {
                dirs.push(path.trim().to_string());
                in_file = false;
            } else if let Some(path) = line.strip_prefix("@@file ") {
                in_file = true;
                files.push((path.trim().to_string(), String::new()));
            } else if let (true, Some((_, body))) = (in_file, files.last_mut()) {
                body.push_str(line);
                body.push('\n');
            }
        }
        Self { dirs, files }
    }

    /// Writes the recording under `root` (`root/livepatch/...`, `root/modules`,
    /// `root/state/...`). Paths that would leave `root` are refused.
    pub fn materialize(&self, root: &Path) -> Result<(), HostError> {
        let inside = |path: &str| -> Result<std::path::PathBuf, HostError> {
            if path.starts_with('/') || path.split('/').any(|p| p == "..") {
                return Err(HostError::BadModule {
                    module: root.to_path_buf(),
                    reason: format!("the recording names {path}, outside its root"),
                });
            }
            Ok(root.join(path))
        };
        for dir in &self.dirs {
            let at = inside(dir)?;
            fs::create_dir_all(&at).map_err(|e| HostError::io("creating", &at, e))?;
        }
        for (path, body) in &self.files {
            let at = inside(path)?;
            if let Some(dir) = at.parent() {
                fs::create_dir_all(dir).map_err(|e| HostError::io("creating", dir, e))?;
            }
            fs::write(&at, body).map_err(|e| HostError::io("writing", &at, e))?;
        }
        fs::create_dir_all(root.join("livepatch")).map_err(|e| HostError::io("creating", root, e))
    }

    /// The modules it lists, oldest first.
    pub fn modules(&self) -> Vec<LoadedModule> {
        self.files
            .iter()
            .find(|(p, _)| p == "modules")
            .map(|(_, text)| sys::parse_proc_modules(text))
            .unwrap_or_default()
    }
}

/// The patches of a materialized recording at `root`, as [`sys::loaded_patches`] reads them.
pub fn patches(root: &Path, modules: &[LoadedModule]) -> Result<Vec<LoadedPatch>, HostError> {
    sys::patches_in(&root.join("livepatch"), modules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_round_trips_through_a_directory() {
        let text = "noise\n@@dir livepatch/p\n@@dir livepatch/p/vmlinux\n@@dir livepatch/p/vmlinux/f,1\n@@file livepatch/p/enabled\n1\n@@file livepatch/p/transition\n0\n@@file livepatch/p/vmlinux/patched\n1\n@@file modules\np 16384 1 - Live 0x0 (OEK)\n";
        let recording = Recording::parse(text);
        let dir = tempfile::tempdir().unwrap();
        recording.materialize(dir.path()).unwrap();
        let modules = recording.modules();
        assert!(modules[0].livepatch);
        let patches = patches(dir.path(), &modules).unwrap();
        assert_eq!(patches[0].name, "p");
        assert!(patches[0].enabled && !patches[0].transition);
        assert_eq!(patches[0].objects[0].functions[0].name, "f");
    }

    #[test]
    fn a_recording_cannot_write_outside_its_root() {
        let dir = tempfile::tempdir().unwrap();
        let bad = Recording::parse("@@file ../escape\nx\n");
        assert!(bad.materialize(dir.path()).is_err());
    }
}
