//! The manifest written beside every module: what it patches, for which kernel, from what.

use std::path::Path;

use sha2::{Digest, Sha256};

/// A replaced function.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestFunction {
    /// `vmlinux` or a module name.
    pub object: String,
    /// Name in the running kernel.
    pub name: String,
    /// Position among kallsyms entries of the name (0: unique).
    pub sympos: u32,
    /// Size of the running version.
    pub old_size: u64,
    /// Size of the new version.
    pub new_size: u64,
    /// The source file it comes from.
    pub unit: String,
}

/// A file and its digest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Digest256 {
    /// File name (no directory).
    pub file: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// The kernel a module is for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestKernel {
    /// Target name.
    pub target: String,
    /// `uname -r`.
    pub release: String,
    /// GNU build-id of the kernel image.
    pub build_id: String,
}

/// `OUT.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Module name (the livepatch's name in sysfs).
    pub name: String,
    /// The kernel.
    pub kernel: ManifestKernel,
    /// Atomic replace (cumulative) or stacking.
    pub replace: bool,
    /// Replaced functions.
    pub functions: Vec<ManifestFunction>,
    /// Functions the patch adds.
    pub new_functions: Vec<String>,
    /// The source patches, in the order applied.
    pub patches: Vec<Digest256>,
    /// The module.
    pub module: Digest256,
    /// graft's version.
    pub graft_version: String,
}

/// SHA-256 of bytes, lower-case hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The file name of a path, for manifests.
pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
