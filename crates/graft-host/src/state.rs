//! The state directory (`/var/lib/graft` by default): the journal of actions, the manifests of
//! the patches graft applied, and the patches installed for `graft boot`.
//!
//! Layout:
//! - `lock`: held (flock) by the graft command that changes anything;
//! - `journal/<id>.json`: one file per action, rewritten atomically at its key steps; an entry
//!   without an outcome after its graft died is an interrupted action, reconciled next time;
//! - `journal/open/<id>`: a marker per action still running, so finding interrupted actions
//!   never reads the whole journal;
//! - `applied/<name>.json`: the manifest and health baseline of each patch graft applied;
//! - `installed/index.json` plus `installed/<name>.ko` and `.json`: what `graft boot` applies.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use graft_manifest::Manifest;
use rustix::fs::{flock, FlockOperation};

use crate::HostError;

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/graft";
/// Journal entries kept; older ones are pruned.
const KEPT_ENTRIES: usize = 500;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// What an action is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `graft apply` (also each patch of `graft boot`).
    Apply,
    /// `graft revert`.
    Revert,
    /// `graft install`.
    Install,
    /// `graft uninstall`.
    Uninstall,
    /// `graft boot`.
    Boot,
    /// Reconciling an interrupted action.
    Reconcile,
}

/// How an action ended.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Whether it did what was asked.
    pub ok: bool,
    /// What happened, for people.
    pub summary: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// One journaled step.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// What.
    pub what: String,
}

/// A journal entry: one action, from start to outcome.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// File stem: sortable by start time.
    pub id: String,
    /// The action.
    pub action: Action,
    /// The patch it concerns.
    pub patch: Option<String>,
    /// The graft process.
    pub pid: u32,
    /// Start (ms since the epoch).
    pub started_ms: u64,
    /// For an apply: the manifest of the patch being applied.
    #[serde(default)]
    pub manifest: Option<Manifest>,
    /// Patches this action retires once its own transition is done.
    #[serde(default)]
    pub retire: Vec<String>,
    /// Kernel log mark and taint before the action (the health baseline).
    #[serde(default)]
    pub baseline: Option<Baseline>,
    /// Whether `force` was written.
    #[serde(default)]
    pub forced: bool,
    /// Steps so far.
    pub steps: Vec<Step>,
    /// How it ended; `None` while running, or forever if graft was killed.
    pub outcome: Option<Outcome>,
}

/// The kernel's health when an apply started.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    /// Newest kernel log sequence number.
    pub kmsg_seq: Option<u64>,
    /// Taint mask.
    pub taint: u64,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

impl Entry {
    /// Adds a step, written with the entry's next save.
    pub fn note(&mut self, what: impl Into<String>) {
        self.steps.push(Step {
            at_ms: now_ms(),
            what: what.into(),
        });
    }
}

/// What graft remembers of a patch it applied.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// The manifest.
    pub manifest: Manifest,
    /// Health baseline at apply.
    pub baseline: Baseline,
    /// When the transition finished (ms since the epoch).
    pub applied_ms: u64,
    /// `force` was written: the module can never be removed.
    pub forced: bool,
}

/// An installed patch.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Installed {
    /// Patch name.
    pub name: String,
    /// When installed (ms since the epoch).
    pub installed_ms: u64,
    /// Its manifest.
    pub manifest: Manifest,
}

/// The open state directory. Mutating commands hold its lock for their whole run, so one
/// graft at a time changes the kernel's patches.
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: File,
}

fn state_error(path: &Path, reason: impl Into<String>) -> HostError {
    HostError::State {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl StateDir {
    /// Opens (creating if needed) the state directory and takes its lock, waiting for another
    /// graft holding it. `on_wait` is called once if it has to wait.
    pub fn open(root: &Path, on_wait: &mut dyn FnMut(&str)) -> Result<Self, HostError> {
        Self::open_inner(root, Some(on_wait))
            .and_then(|s| s.ok_or_else(|| state_error(root, "locked by another graft")))
    }

    /// Like [`StateDir::open`], but `None` instead of waiting when another graft holds it.
    pub fn try_open(root: &Path) -> Result<Option<Self>, HostError> {
        Self::open_inner(root, None)
    }

    fn open_inner(
        root: &Path,
        on_wait: Option<&mut dyn FnMut(&str)>,
    ) -> Result<Option<Self>, HostError> {
        if root.exists() && !root.is_dir() {
            return Err(state_error(root, "exists and is not a directory"));
        }
        for sub in ["journal/open", "applied", "installed"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir)
                .map_err(|e| state_error(root, format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock_path = root.join("lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| state_error(root, format!("cannot open its lock file: {e}")))?;
        if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
            let Some(on_wait) = on_wait else {
                return Ok(None);
            };
            let holder = fs::read_to_string(&lock_path).unwrap_or_default();
            on_wait(&format!(
                "waiting for another graft (pid {}) using {}",
                holder.trim(),
                root.display()
            ));
            flock(&lock, FlockOperation::LockExclusive)
                .map_err(|e| state_error(root, format!("cannot lock it: {e}")))?;
        }
        // Who holds the lock, for the message above; a failure here only loses that detail.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()));
        // Writable? A read-only state directory must fail before anything touches the kernel.
        let probe = root.join(format!(".probe-{}", std::process::id()));
        write_atomic(&probe, b"")
            .map_err(|e| state_error(root, format!("is not writable: {e}")))?;
        let _ = fs::remove_file(&probe);
        Ok(Some(Self {
            root: root.to_path_buf(),
            _lock: lock,
        }))
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// Starts a journal entry (written before the action touches anything).
    pub fn begin(&self, action: Action, patch: Option<&str>) -> Result<Entry, HostError> {
        let entry = Self::new_entry(action, patch);
        self.start(&entry)?;
        Ok(entry)
    }

    /// A journal entry not yet written: fill it in, then [`StateDir::start`] it.
    pub fn new_entry(action: Action, patch: Option<&str>) -> Entry {
        let started_ms = now_ms();
        Entry {
            id: format!("{started_ms:013}-{}-{:?}", std::process::id(), action)
                .to_ascii_lowercase(),
            action,
            patch: patch.map(str::to_string),
            pid: std::process::id(),
            started_ms,
            manifest: None,
            retire: Vec::new(),
            baseline: None,
            forced: false,
            steps: Vec::new(),
            outcome: None,
        }
    }

    /// Writes a new entry and marks it open: from here on, a killed graft is detected.
    pub fn start(&self, entry: &Entry) -> Result<(), HostError> {
        self.save(entry)?;
        let marker = self.open_marker(&entry.id);
        File::create(&marker).map_err(|e| HostError::io("creating", &marker, e))?;
        sync_dir(&self.journal_dir().join("open"))?;
        self.prune();
        Ok(())
    }

    fn open_marker(&self, id: &str) -> PathBuf {
        self.journal_dir().join("open").join(id)
    }

    /// Rewrites an entry atomically.
    pub fn save(&self, entry: &Entry) -> Result<(), HostError> {
        let path = self.journal_dir().join(format!("{}.json", entry.id));
        write_json(&path, entry)
    }

    /// Records a step, durably.
    pub fn step(&self, entry: &mut Entry, what: impl Into<String>) -> Result<(), HostError> {
        entry.note(what);
        self.save(entry)
    }

    /// Records the outcome.
    pub fn finish(
        &self,
        entry: &mut Entry,
        ok: bool,
        summary: impl Into<String>,
    ) -> Result<(), HostError> {
        entry.outcome = Some(Outcome {
            ok,
            summary: summary.into(),
            at_ms: now_ms(),
        });
        self.save(entry)?;
        // A marker left by a crash right here is harmless: its entry has an outcome.
        let _ = fs::remove_file(self.open_marker(&entry.id));
        Ok(())
    }

    /// Entries with no outcome: actions whose graft was killed (the caller holds the lock, so
    /// no other graft is running them), oldest first.
    pub fn interrupted(&self) -> Result<Vec<Entry>, HostError> {
        let open = self.journal_dir().join("open");
        let mut ids: Vec<String> = fs::read_dir(&open)
            .map_err(|e| HostError::io("listing", &open, e))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ids.sort();
        let mut entries = Vec::new();
        for id in ids {
            let path = self.journal_dir().join(format!("{id}.json"));
            if !path.exists() {
                // Killed between creating the marker's entry and the marker: nothing ran.
                let _ = fs::remove_file(self.open_marker(&id));
                continue;
            }
            let entry: Entry = read_json(&path)?;
            if entry.outcome.is_some() {
                let _ = fs::remove_file(self.open_marker(&id));
            } else {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    fn prune(&self) {
        let Ok(entries) = fs::read_dir(self.journal_dir()) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        if paths.len() <= KEPT_ENTRIES {
            return;
        }
        paths.sort();
        for path in &paths[..paths.len() - KEPT_ENTRIES] {
            // Never drop an interrupted entry: it still has to be reconciled.
            let done = read_json::<Entry>(path).is_ok_and(|e| e.outcome.is_some());
            if done {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Records a patch as applied.
    pub fn set_applied(&self, applied: &Applied) -> Result<(), HostError> {
        let path = self.applied_path(&applied.manifest.name);
        write_json(&path, applied)
    }

    /// Forgets an applied patch (after it was reverted or replaced). A forced patch is never
    /// forgotten while its module is loaded; the caller checks.
    pub fn clear_applied(&self, name: &str) -> Result<(), HostError> {
        let path = self.applied_path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HostError::io("removing", &path, e)),
        }
    }

    fn applied_path(&self, name: &str) -> PathBuf {
        self.root.join("applied").join(format!("{name}.json"))
    }

    /// Installed patches, in the order `graft boot` applies them.
    pub fn installed(&self) -> Result<Vec<Installed>, HostError> {
        installed_in(&self.root)
    }

    /// Writes the installed list and files: copies go in first, then the index is replaced
    /// atomically, then files no longer listed are removed.
    pub fn set_installed(
        &self,
        list: &[Installed],
        new_files: &[(String, Vec<u8>, Vec<u8>)],
    ) -> Result<(), HostError> {
        let dir = self.root.join("installed");
        for (name, module, manifest) in new_files {
            write_atomic(&dir.join(format!("{name}.ko")), module)?;
            write_atomic(&dir.join(format!("{name}.json")), manifest)?;
        }
        write_json(&dir.join("index.json"), &list)?;
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                let stem = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if stem != "index" && !list.iter().any(|i| i.name == stem) {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(())
    }

    /// The stored module of an installed patch.
    pub fn installed_module(&self, name: &str) -> PathBuf {
        self.root.join("installed").join(format!("{name}.ko"))
    }
}

/// Applied records, readable without the lock (for `graft status` by any user).
pub fn applied_in(root: &Path) -> Vec<Applied> {
    let Ok(entries) = fs::read_dir(root.join("applied")) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| read_json(&e.path()).ok())
        .collect()
}

/// Installed patches, readable without the lock.
pub fn installed_in(root: &Path) -> Result<Vec<Installed>, HostError> {
    let index = root.join("installed").join("index.json");
    if !index.exists() {
        return Ok(Vec::new());
    }
    read_json(&index)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, HostError> {
    let bytes = fs::read(path).map_err(|e| HostError::io("reading", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| HostError::State {
        path: path.to_path_buf(),
        reason: format!("corrupt ({e}); move it aside to go on"),
    })
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), HostError> {
    let mut text = serde_json::to_vec_pretty(value).map_err(|e| HostError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push(b'\n');
    write_atomic(path, &text)
}

/// Writes a file so that it holds either its old or its new contents after a crash: a synced
/// temporary file renamed over it, then the directory synced so the rename itself is durable.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), HostError> {
    graft_cache::write_atomic(path, data).map_err(|e| HostError::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn sync_dir(dir: &Path) -> Result<(), HostError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| HostError::io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> StateDir {
        match StateDir::open(dir, &mut |_| {}) {
            Ok(s) => s,
            Err(e) => panic!("opening {}: {e}", dir.display()),
        }
    }

    #[test]
    fn an_entry_without_outcome_is_interrupted_until_finished() -> Result<(), HostError> {
        let tmp = tempfile::tempdir().map_err(|e| HostError::io("creating", "tmp", e))?;
        let state = open(tmp.path());
        let mut entry = StateDir::new_entry(Action::Apply, Some("fix"));
        entry.pid = 0; // another, dead graft
        state.start(&entry)?;
        let pending = state.interrupted()?;
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].patch.as_deref(), Some("fix"));
        state.finish(&mut entry, true, "done")?;
        assert!(state.interrupted()?.is_empty());
        let path = tmp
            .path()
            .join("journal")
            .join(format!("{}.json", entry.id));
        let kept: Entry = read_json(&path)?;
        assert_eq!(kept.outcome.map(|o| o.summary).as_deref(), Some("done"));
        Ok(())
    }

    #[test]
    fn a_second_graft_does_not_get_the_lock() -> Result<(), HostError> {
        let tmp = tempfile::tempdir().map_err(|e| HostError::io("creating", "tmp", e))?;
        let _held = open(tmp.path());
        assert!(StateDir::try_open(tmp.path())?.is_none());
        Ok(())
    }

    #[test]
    fn a_file_is_not_a_state_directory() -> Result<(), HostError> {
        let tmp =
            tempfile::NamedTempFile::new().map_err(|e| HostError::io("creating", "tmp", e))?;
        let err = StateDir::open(tmp.path(), &mut |_| {}).map(|_| ());
        let message = err.map_err(|e| e.to_string()).err().unwrap_or_default();
        assert!(
            message.contains("exists and is not a directory"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn a_corrupt_entry_is_an_error_not_skipped() -> Result<(), HostError> {
        let tmp = tempfile::tempdir().map_err(|e| HostError::io("creating", "tmp", e))?;
        let state = open(tmp.path());
        let entry = StateDir::new_entry(Action::Revert, Some("fix"));
        state.start(&entry)?;
        let path = tmp
            .path()
            .join("journal")
            .join(format!("{}.json", entry.id));
        fs::write(&path, b"{ truncated").map_err(|e| HostError::io("writing", &path, e))?;
        let message = state
            .interrupted()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("corrupt"), "{message}");
        Ok(())
    }
}
