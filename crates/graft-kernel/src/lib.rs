//! A target kernel as graft understands it.
//!
//! `fetch` brings a target's Debian packages into the cache and derives from them everything
//! later stages need: the unpacked image and modules, the headers with kbuild (to build modules
//! against), the source tree prepared with the distribution's config (to compile single objects
//! exactly as the distribution did), the code image (vmlinux, extracted from the vmlinuz), and
//! the symbols in kallsyms order with livepatch positions. [`Kernel`] then opens the result.

mod catalog;
pub mod changelog;
pub mod changes;
mod compiler;
mod config;
mod fetch;
mod image;
mod includes;
mod info;
mod kbuild;
mod kernel;
pub mod known;
mod membership;
mod modules;
mod resolve;
mod source;
pub mod split;
mod symbols;
mod target;

pub use catalog::{list, remove, Available, Removed};
pub use compiler::{local_compiler_version, CompilerCheck};
pub use config::{blank_distro_key_files, KernelConfig};
pub use fetch::{fetch, FetchReport};
pub use image::{
    build_id, build_id_from_notes, extract_vmlinux, payload, text_address, Compression,
};
pub use includes::{deps_from_cmd_file, enclosing_definitions, IncludeGraph};
pub use info::{CachePaths, KernelInfo, KeyConfig, SymbolCounts};
pub use kernel::{Kernel, TargetMeta};
pub use known::DEFAULT_TARGET;
pub use membership::{KbuildMap, Membership};
pub use modules::{module_symbols, normalize_name, ModuleIndex, ModuleInfo};
pub use resolve::{Packages, Resolved, Role};
pub use symbols::{Symbol, SymbolTable};
pub use target::{Provider, Target};

use std::path::{Path, PathBuf};

/// Errors about target kernels. Each names the target, file or package involved.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The target name does not parse.
    #[error("bad kernel target `{name}`: {reason}")]
    BadTargetName {
        /// The name given.
        name: String,
        /// Why it is wrong.
        reason: String,
    },
    /// apt knows no image for the release.
    #[error("Debian's archive (as apt sees it) has no {package}, so {target} cannot be fetched: `graft kernel list` shows the kernels apt can see (run `apt-get update` if it is stale)")]
    UnknownRelease {
        /// The target.
        target: String,
        /// The image package looked for.
        package: String,
    },
    /// A package the headers depend on has no version apt can give.
    #[error("{needed_by} needs {wanted}, but apt lists {}: run `apt-get update`, and check that apt's sources include the suite that carries it (bookworm-security for Debian 12's kernels)",
        if listed.is_empty() { "no version of it".to_string() } else { format!("only {}", listed.join(", ")) })]
    Unsatisfiable {
        /// The package whose dependency it is.
        needed_by: String,
        /// The relationship, as Debian writes it.
        wanted: String,
        /// The versions apt lists.
        listed: Vec<String>,
    },
    /// Only another upstream version of a build-tool package is available.
    #[error("{package}: apt offers only {offered}, another upstream version than the kernel's {kernel_upstream}; graft does not mix upstream versions")]
    OtherUpstream {
        /// The package.
        package: String,
        /// The newest version that satisfies the relationship.
        offered: String,
        /// The kernel's upstream version.
        kernel_upstream: String,
    },
    /// A `--to` version that cannot be an update of the target.
    #[error("--to {to}: {reason}")]
    UpdateVersion {
        /// The version asked for.
        to: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The target has not been fetched.
    #[error(
        "kernel {target} is not in the cache ({dir}): run `graft kernel fetch --kernel {target}`"
    )]
    NotFetched {
        /// The target.
        target: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A package step failed.
    #[error(transparent)]
    Package(#[from] graft_deb::DebError),
    /// A cache step failed.
    #[error(transparent)]
    Cache(#[from] graft_cache::CacheError),
    /// The lab failed while reading the kernel's symbols.
    #[error("booting {target} to read its symbols failed: {cause}")]
    Lab {
        /// The target.
        target: String,
        /// What the lab reported.
        cause: graft_lab::LabError,
    },
    /// Not enough free disk.
    #[error("{dir} has {free_mib} MiB free; fetching a kernel needs about {needed_mib} MiB: free some space or set GRAFT_CACHE to a larger disk")]
    NoSpace {
        /// The cache directory.
        dir: PathBuf,
        /// Free space.
        free_mib: u64,
        /// What is needed.
        needed_mib: u64,
    },
    /// A program the preparation needs is missing.
    #[error(
        "`{program}` is needed to prepare the kernel source but was not found: install {package}"
    )]
    MissingTool {
        /// The program.
        program: String,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// `make` failed while preparing the source tree.
    #[error("`make {step}` failed in the kernel source (exit {status}); log: {}\n{tail}", log.display())]
    PrepareFailed {
        /// The make target.
        step: String,
        /// make's exit status.
        status: String,
        /// The last lines of the log.
        tail: String,
        /// The full log.
        log: PathBuf,
    },
    /// Building an out-of-tree module failed.
    #[error("building the module in {} against the target's kbuild failed (exit {status}); log: {}\n{tail}", dir.display(), log.display())]
    ModuleBuildFailed {
        /// The build directory.
        dir: PathBuf,
        /// make's exit status.
        status: String,
        /// The last lines of the log.
        tail: String,
        /// The full log.
        log: PathBuf,
    },
    /// The image file is not a kernel graft can read.
    #[error("{path}: {reason}")]
    BadImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A module file is malformed.
    #[error("module {path}: {reason}")]
    BadModule {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A symbol list is malformed.
    #[error("{}:{line}: {reason}", path.display())]
    BadSymbols {
        /// The file.
        path: PathBuf,
        /// The 1-based line (0: the whole file).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The kernel booted from the image is not the one the files describe.
    #[error("{0}")]
    Inconsistent(String),
    /// No such module in the image.
    #[error("the target has no module `{name}`")]
    UnknownModule {
        /// The module asked for.
        name: String,
    },
    /// A package lacks a file graft expects in it.
    #[error("{package} has no {what}")]
    MissingInPackage {
        /// The package.
        package: String,
        /// What is missing.
        what: String,
    },
    /// A filesystem operation failed.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
}

impl KernelError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        KernelError::Io {
            action,
            path: path.to_path_buf(),
            cause: source,
        }
    }
}
