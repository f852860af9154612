//! Errors of host actions: each names what is wrong and where; none leaves the kernel changed.

use std::path::PathBuf;

/// Why a host action did not start or could not finish.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The kernel offers no livepatch interface.
    #[error("{path} does not exist: this kernel has no livepatch support (CONFIG_LIVEPATCH) or sysfs is not mounted at /sys; nothing was changed")]
    NoLivepatch {
        /// The directory looked for.
        path: PathBuf,
    },
    /// A file or directory could not be read or written.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The failure.
        cause: std::io::Error,
    },
    /// The module or its manifest is unusable.
    #[error("{0}; nothing was changed")]
    Manifest(#[from] graft_manifest::ManifestError),
    /// The module was built for another kernel.
    #[error("{module}: built for {want_release} (build-id {want_build_id}), but the running kernel is {have_release} (build-id {have_build_id}); a livepatch only fits the exact kernel it was built and proven against: build it for this kernel; nothing was changed")]
    ForeignKernel {
        /// The module.
        module: PathBuf,
        /// Release in the manifest.
        want_release: String,
        /// Build-id in the manifest.
        want_build_id: String,
        /// Running release.
        have_release: String,
        /// Running build-id.
        have_build_id: String,
    },
    /// The module itself is not what it claims.
    #[error("{module}: {reason}; nothing was changed")]
    BadModule {
        /// The module.
        module: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The action would conflict with what is loaded.
    #[error("refusing to apply {patch}: {reason}; nothing was changed")]
    Conflict {
        /// The patch.
        patch: String,
        /// The explanation.
        reason: String,
    },
    /// The state directory is unusable.
    #[error("state directory {path}: {reason}")]
    State {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The kernel refused to load the module.
    #[error("the kernel refused to load {module}: {cause}{log}; nothing was changed")]
    Load {
        /// The module.
        module: PathBuf,
        /// errno from finit_module.
        cause: std::io::Error,
        /// New kernel log lines, if any.
        log: String,
    },
    /// A module could not be unloaded.
    #[error("unloading module {name}: {cause}")]
    Unload {
        /// The module.
        name: String,
        /// The failure.
        cause: std::io::Error,
    },
    /// No such livepatch.
    #[error("no livepatch named {0} is loaded (`graft status` lists them)")]
    NotLoaded(String),
    /// No such installed patch.
    #[error("no installed patch named {0} (`graft status` lists installed patches)")]
    NotInstalled(String),
    /// Writing to a livepatch control file failed.
    #[error("writing {value} to {path}: {cause}")]
    Control {
        /// The sysfs file.
        path: PathBuf,
        /// What was written.
        value: &'static str,
        /// The failure.
        cause: std::io::Error,
    },
}

impl HostError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        cause: std::io::Error,
    ) -> Self {
        Self::Io {
            action,
            path: path.into(),
            cause,
        }
    }
}
