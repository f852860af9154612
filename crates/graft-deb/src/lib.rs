//! Debian packages as data: graft fetches kernels and tools from Debian's archive with the
//! system's own `apt` (so mirrors, proxies and signatures work as the admin configured them),
//! but never installs them system-wide. Packages are downloaded with `apt-get download`,
//! checked against the SHA-256 that apt's signed index lists, and unpacked into a directory.

mod apt;
mod archive;
pub mod relation;

pub use apt::{download, package_names, query, Index, PackageInfo};
pub use archive::{
    read_tarball, relink_absolute_symlinks, unpack_deb, unpack_tarball, UnpackStats,
};
pub use relation::{Dependency, Relation};

use std::path::PathBuf;

/// Errors of fetching and unpacking packages.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    /// apt's tools are not on this machine.
    #[error(
        "`{tool}` was not found: graft fetches packages with apt, run it on a Debian-like system"
    )]
    AptMissing {
        /// The missing program.
        tool: &'static str,
    },
    /// The archive apt knows has no such package (or not that version).
    #[error("Debian's archive (as apt sees it) has no {package}{}: run `apt-get update`, or pick a version apt lists (`apt-cache policy {package}`)",
        version.as_deref().map(|v| format!(" at version {v}")).unwrap_or_default())]
    NotInArchive {
        /// The package name.
        package: String,
        /// The version asked for, if any.
        version: Option<String>,
    },
    /// apt printed something graft cannot read.
    #[error("cannot read apt's description of {package}: {reason}")]
    BadIndex {
        /// The package name.
        package: String,
        /// What was missing or malformed.
        reason: String,
    },
    /// `apt-get download` failed.
    #[error("apt-get could not download {package}={version}: {detail}; check the network and `apt-get update`")]
    DownloadFailed {
        /// The package name.
        package: String,
        /// The version.
        version: String,
        /// apt's last error line.
        detail: String,
    },
    /// The downloaded file does not match the archive's digest.
    #[error("{path}: SHA-256 {actual} does not match the archive's {expected}: the download is corrupt; it was deleted, run again")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The digest apt's index lists.
        expected: String,
        /// The digest of the file.
        actual: String,
    },
    /// A package or tarball is not in a format graft can unpack.
    #[error("{path}: {reason}")]
    BadArchive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
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

impl DebError {
    /// A filesystem error about `path`.
    pub fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        DebError::Io {
            action,
            path: path.to_path_buf(),
            cause: source,
        }
    }
}
