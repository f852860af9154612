//! The graft cache: downloaded packages, unpacked kernels and prepared source trees.
//!
//! Everything expensive is kept under one root (`$GRAFT_CACHE`, else `$XDG_CACHE_HOME/graft`,
//! else `~/.cache/graft`), in *entries* keyed by what they hold (e.g. `kernels/debian-6.1.0-56-amd64`).
//! Two rules keep the cache trustworthy when runs overlap or die half-way:
//!
//! - **Locking.** An entry is changed only under an exclusive `flock` on its lock file; readers take
//!   a shared lock. Locks die with the process, so a killed run never leaves a stale lock.
//! - **Stages.** Each product of an entry is built in `<name>.partial` and renamed into place, and
//!   only then is `<name>.done` written. A product without its `.done` marker is never used: the next
//!   run throws it away and builds it again. That is how a fetch killed mid-way is detected and redone.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Errors of cache handling. Each names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// No cache root could be chosen.
    #[error("cannot choose a cache directory: set GRAFT_CACHE or HOME")]
    NoRoot,
    /// A filesystem operation failed.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done ("creating", "locking", ...).
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        cause: io::Error,
    },
    /// A stage's builder failed; the partial product has been removed.
    #[error("{stage}: {cause}")]
    Stage {
        /// The stage's name.
        stage: String,
        /// What the builder reported.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl CacheError {
    fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        CacheError::Io {
            action,
            path: path.to_path_buf(),
            cause: source,
        }
    }
}

/// The cache root.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache named by the environment (`GRAFT_CACHE`, `XDG_CACHE_HOME`, `HOME`).
    pub fn from_env() -> Result<Self, CacheError> {
        let root = if let Some(dir) = std::env::var_os("GRAFT_CACHE").filter(|v| !v.is_empty()) {
            PathBuf::from(dir)
        } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(dir).join("graft")
        } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            PathBuf::from(home).join(".cache").join("graft")
        } else {
            return Err(CacheError::NoRoot);
        };
        Ok(Self::at(root))
    }

    /// A cache rooted at `root` (created on first use).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The keys of the entries of `kind` present on disk, sorted.
    pub fn keys(&self, kind: &str) -> Vec<String> {
        let mut keys: Vec<String> = fs::read_dir(self.root.join(kind))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|k| !k.contains(".removing-"))
            .collect();
        keys.sort();
        keys
    }

    /// Removes what interrupted [`EntryLock::remove_entry`] calls left of entries of `kind`.
    pub fn sweep(&self, kind: &str) {
        for entry in fs::read_dir(self.root.join(kind)).into_iter().flatten() {
            let Ok(entry) = entry else { continue };
            if entry.file_name().to_string_lossy().contains(".removing-") {
                let _ = remove_any(&entry.path());
            }
        }
    }

    /// The entry `kind/key`, e.g. `kernels/debian-6.1.0-56-amd64`.
    pub fn entry(&self, kind: &str, key: &str) -> Entry {
        Entry {
            dir: self.root.join(kind).join(key),
            // Locks live apart from entries so that removing an entry never removes a lock
            // another process is waiting on.
            lock: self.root.join("locks").join(format!("{kind}-{key}.lock")),
        }
    }
}

/// One keyed entry of the cache: a directory of stages.
#[derive(Clone, Debug)]
pub struct Entry {
    dir: PathBuf,
    lock: PathBuf,
}

impl Entry {
    /// The entry's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a stage's product (it may not exist or be complete).
    pub fn path(&self, stage: &str) -> PathBuf {
        self.dir.join(stage)
    }

    /// Whether `stage` completed. Only meaningful under a lock.
    pub fn is_done(&self, stage: &str) -> bool {
        self.done_marker(stage).is_file() && self.path(stage).exists()
    }

    fn done_marker(&self, stage: &str) -> PathBuf {
        self.dir.join(format!("{stage}.done"))
    }

    /// Takes the entry's exclusive lock, waiting (and saying so) while another process holds it.
    pub fn lock(&self) -> Result<EntryLock<'_>, CacheError> {
        self.take_lock(
            FlockOperation::NonBlockingLockExclusive,
            FlockOperation::LockExclusive,
        )
    }

    /// Takes a shared lock for reading: stages are not changed while it is held.
    pub fn lock_shared(&self) -> Result<SharedLock, CacheError> {
        let guard = self.take_lock(
            FlockOperation::NonBlockingLockShared,
            FlockOperation::LockShared,
        )?;
        Ok(SharedLock { _file: guard.file })
    }

    fn take_lock(
        &self,
        try_op: FlockOperation,
        wait_op: FlockOperation,
    ) -> Result<EntryLock<'_>, CacheError> {
        let lock_path = self.lock.clone();
        if let Some(parent) = lock_path.parent() {
            fs::create_dir_all(parent).map_err(|e| CacheError::io("creating", parent, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| CacheError::io("opening lock", &lock_path, e))?;
        if flock(&file, try_op).is_err() {
            tracing::info!(
                "waiting for another graft process using {}",
                self.dir.display()
            );
            flock(&file, wait_op)
                .map_err(|e| CacheError::io("locking", &lock_path, io::Error::from(e)))?;
        }
        fs::create_dir_all(&self.dir).map_err(|e| CacheError::io("creating", &self.dir, e))?;
        Ok(EntryLock { entry: self, file })
    }
}

/// A held shared lock; released on drop.
#[derive(Debug)]
pub struct SharedLock {
    _file: File,
}

/// A held exclusive lock on an entry; stages are built through it. Released on drop.
#[derive(Debug)]
pub struct EntryLock<'a> {
    entry: &'a Entry,
    file: File,
}

impl EntryLock<'_> {
    /// The locked entry.
    pub fn entry(&self) -> &Entry {
        self.entry
    }

    /// Ensures `stage` is complete, building it with `build` if it is not.
    ///
    /// `build` receives the path to create (a file or directory named `<stage>.partial`). On
    /// success it is renamed to `<stage>` and marked done; on failure it is removed, so nothing
    /// half-built remains. Returns whether the stage was built (false: it was already done).
    pub fn ensure<E>(
        &self,
        stage: &str,
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<bool, CacheError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.entry.is_done(stage) {
            return Ok(false);
        }
        let product = self.entry.path(stage);
        let partial = self.entry.dir.join(format!("{stage}.partial"));
        let marker = self.entry.done_marker(stage);
        remove_any(&marker)?;
        remove_any(&product)?;
        remove_any(&partial)?;
        if let Err(e) = build(&partial) {
            // Leave nothing half-written behind; the original error matters more than a
            // failure to clean up, which the next run repeats anyway.
            let _ = remove_any(&partial);
            return Err(CacheError::Stage {
                stage: stage.to_string(),
                cause: e.into(),
            });
        }
        if !partial.exists() {
            return Err(CacheError::Stage {
                stage: stage.to_string(),
                cause: format!("the builder did not create {}", partial.display()).into(),
            });
        }
        fs::rename(&partial, &product).map_err(|e| CacheError::io("renaming", &partial, e))?;
        write_atomic(&marker, b"done\n")?;
        Ok(true)
    }

    /// Like [`EntryLock::ensure`], but builds directly at the stage's final path, for products
    /// that must not move once made (a prepared kernel tree records absolute paths). A product
    /// without its `.done` marker is still never used: it is removed and rebuilt.
    pub fn ensure_in_place<E>(
        &self,
        stage: &str,
        build: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<bool, CacheError>
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.entry.is_done(stage) {
            return Ok(false);
        }
        let product = self.entry.path(stage);
        let marker = self.entry.done_marker(stage);
        remove_any(&marker)?;
        remove_any(&product)?;
        if let Err(e) = build(&product) {
            let _ = remove_any(&product);
            return Err(CacheError::Stage {
                stage: stage.to_string(),
                cause: e.into(),
            });
        }
        write_atomic(&marker, b"done\n")?;
        Ok(true)
    }

    /// Removes the entry's directory when no stage of it completed, so a failed first attempt
    /// (an unknown version, a failed download) leaves nothing behind.
    pub fn discard_if_empty(&self) -> Result<(), CacheError> {
        let dir = &self.entry.dir;
        let any_done = fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".done"))
            })
            .unwrap_or(false);
        if any_done {
            Ok(())
        } else {
            remove_any(dir)
        }
    }

    /// Removes the whole entry, returning the bytes it used. The directory is first renamed
    /// aside, so an interrupted removal never leaves a half-deleted entry under its own name
    /// (the remains are named `<key>.removing-<pid>` and removed by [`Cache::sweep`]).
    pub fn remove_entry(&self) -> Result<u64, CacheError> {
        let dir = &self.entry.dir;
        if !dir.exists() {
            return Ok(0);
        }
        let bytes = disk_usage(dir);
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = dir.with_file_name(format!("{name}.removing-{}", std::process::id()));
        fs::rename(dir, &aside).map_err(|e| CacheError::io("renaming", dir, e))?;
        remove_any(&aside)?;
        Ok(bytes)
    }

    /// Forgets a stage so the next [`EntryLock::ensure`] rebuilds it.
    pub fn invalidate(&self, stage: &str) -> Result<(), CacheError> {
        remove_any(&self.entry.done_marker(stage))?;
        remove_any(&self.entry.path(stage))
    }
}

/// Removes a file or directory tree if it exists.
pub fn remove_any(path: &Path) -> Result<(), CacheError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(path).map_err(|e| CacheError::io("removing", path, e))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| CacheError::io("removing", path, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::io("inspecting", path, e)),
    }
}

/// Writes `data` to `path` through a temporary file and a rename, so readers see the old
/// contents or the new, never a torn write.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CacheError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|e| CacheError::io("creating", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = File::create(&tmp)
        .map_err(|e| CacheError::io("creating", &tmp, e))
        .and_then(|mut file| {
            file.write_all(data)
                .and_then(|()| file.sync_all())
                .map_err(|e| CacheError::io("writing", &tmp, e))
        })
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| CacheError::io("renaming", &tmp, e)));
    if let Err(e) = written {
        // Nothing half-written stays behind.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename itself is durable only once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CacheError::io("syncing", dir, e))
}

/// Bytes used on disk below `path` (apparent sizes, symlinks not followed).
pub fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(entries) = fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| disk_usage(&e.path()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_is_built_once_and_marked_done() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        let entry = cache.entry("things", "a");
        let lock = entry.lock().unwrap();
        let mut calls = 0;
        let built = lock
            .ensure("blob", |p| {
                calls += 1;
                fs::write(p, b"x")
            })
            .unwrap();
        assert!(built);
        let built = lock
            .ensure("blob", |p| {
                calls += 1;
                fs::write(p, b"y")
            })
            .unwrap();
        assert!(!built);
        assert_eq!(calls, 1);
        assert_eq!(fs::read(entry.path("blob")).unwrap(), b"x");
    }

    #[test]
    fn failed_stage_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Cache::at(dir.path()).entry("things", "b");
        let lock = entry.lock().unwrap();
        let err = lock
            .ensure("tree", |p| {
                fs::create_dir_all(p.join("sub"))?;
                Err::<(), _>(io::Error::other("disk full"))
            })
            .unwrap_err();
        assert!(err.to_string().contains("tree: disk full"), "{err}");
        assert!(!entry.path("tree").exists());
        assert!(!entry.dir().join("tree.partial").exists());
        assert!(!entry.is_done("tree"));
    }

    /// A run killed after the rename but before the marker must not be trusted.
    #[test]
    fn product_without_marker_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Cache::at(dir.path()).entry("things", "c");
        fs::create_dir_all(entry.dir()).unwrap();
        fs::write(entry.path("blob"), b"torn").unwrap();
        fs::write(entry.dir().join("blob.partial"), b"older torn").unwrap();
        let lock = entry.lock().unwrap();
        assert!(!entry.is_done("blob"));
        lock.ensure("blob", |p| fs::write(p, b"whole")).unwrap();
        assert_eq!(fs::read(entry.path("blob")).unwrap(), b"whole");
        assert!(!entry.dir().join("blob.partial").exists());
    }

    #[test]
    fn failed_first_attempt_leaves_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Cache::at(dir.path()).entry("kernels", "unknown");
        let lock = entry.lock().unwrap();
        let _ = lock.ensure("image", |_| {
            Err::<(), _>(io::Error::other("no such package"))
        });
        lock.discard_if_empty().unwrap();
        assert!(!entry.dir().exists());
        // A lock of another entry kind/key does not collide with this one's.
        assert!(dir.path().join("locks/kernels-unknown.lock").is_file());
    }

    #[test]
    fn removed_entry_is_gone_and_its_remains_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path());
        for key in ["a", "b"] {
            let entry = cache.entry("kernels", key);
            let lock = entry.lock().unwrap();
            lock.ensure("blob", |p| fs::write(p, b"12345")).unwrap();
        }
        // What a removal killed between its rename and its delete leaves behind.
        fs::create_dir_all(dir.path().join("kernels/c.removing-1/x")).unwrap();
        assert_eq!(cache.keys("kernels"), ["a", "b"]);
        let entry = cache.entry("kernels", "a");
        let freed = entry.lock().unwrap().remove_entry().unwrap();
        assert!(freed >= 5, "{freed}");
        assert!(!entry.dir().exists());
        assert_eq!(cache.keys("kernels"), ["b"]);
        cache.sweep("kernels");
        assert!(!dir.path().join("kernels/c.removing-1").exists());
        assert_eq!(entry.lock().unwrap().remove_entry().unwrap(), 0);
    }

    #[test]
    fn a_failed_atomic_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // The destination is a directory: the rename fails after the data was written.
        let target = dir.path().join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"keep").unwrap();
        assert!(write_atomic(&target, b"data").is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["taken"]);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
