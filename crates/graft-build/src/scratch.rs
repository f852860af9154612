//! Scratch: a build's own directory, holding the patched view of the source tree.
//!
//! The view is a symlink farm of the prepared tree ([`crate::farm`]) in which the touched
//! files and graft's helper headers are real files, and the patches are applied there, so the
//! cached tree is never written. `GRAFT_KEEP_BUILD=1` (or `keep_scratch`) keeps the directory
//! for inspection (farm, objects, generated hook, kbuild log); its path is logged.

use std::fs;
use std::path::{Path, PathBuf};

use graft_cache::Cache;
use graft_kernel::Kernel;

use crate::patchset::{self, PatchFile};
use crate::{farm, BuildError};

/// Headers every patched source may include, and where they go in the tree.
pub const HELPERS: &[(&str, &str)] = &[
    ("include/graft/patch.h", crate::PATCH_HELPER),
    ("include/kpatch-macros.h", crate::KPATCH_MACROS),
    ("include/kpatch-syscall.h", crate::KPATCH_SYSCALL),
];

/// A build's scratch directory, removed on drop unless kept.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
    /// The kept directory, when kept.
    pub kept: Option<PathBuf>,
}

impl Scratch {
    /// Creates the scratch directory under the cache and the patched view in it.
    pub fn prepare(
        cache: &Cache,
        kernel: &Kernel,
        touched: &[String],
        patches: &[PatchFile],
        keep: bool,
    ) -> Result<Self, BuildError> {
        let root = cache.root().join("builds");
        fs::create_dir_all(&root).map_err(|e| BuildError::io("creating", &root, e))?;
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&root)
            .map_err(|e| BuildError::io("creating a directory in", &root, e))?;
        let path = dir.path().to_path_buf();
        let keep = keep || std::env::var_os("GRAFT_KEEP_BUILD").is_some_and(|v| v == "1");
        let (dir, kept) = if keep {
            tracing::info!("keeping the build directory {}", path.display());
            (None, Some(dir.keep()))
        } else {
            (Some(dir), None)
        };
        let scratch = Self {
            path,
            _dir: dir,
            kept,
        };
        let mut real = touched.to_vec();
        real.extend(HELPERS.iter().map(|(p, _)| p.to_string()));
        let tree = scratch.tree();
        farm::create(&kernel.source_dir(), &tree, &real)?;
        for (path, text) in HELPERS {
            let at = tree.join(path);
            fs::write(&at, text).map_err(|e| BuildError::io("writing", &at, e))?;
        }
        for patch in patches {
            patchset::apply(patch, &tree)?;
        }
        Ok(scratch)
    }

    /// The patched view of the source tree.
    pub fn tree(&self) -> PathBuf {
        self.path.join("tree")
    }

    /// A subdirectory for the module's own files.
    pub fn module_dir(&self) -> PathBuf {
        self.path.join("module")
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
