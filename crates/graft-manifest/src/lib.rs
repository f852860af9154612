//! The manifest written beside every livepatch module: what it patches, for which kernel,
//! from which source patches. It is the contract between `graft build` and the host commands,
//! which refuse a module whose bytes or kernel do not match it.

use std::path::{Path, PathBuf};

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
    /// The replace set this stacking patch belongs to: a newer patch of the same set supersedes
    /// it, leaving other sets' patches live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<String>,
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

/// Why a manifest or its module cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Reading a file failed.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The failure.
        cause: std::io::Error,
    },
    /// The module has no manifest beside it.
    #[error("{module}: no manifest {manifest} beside it: graft applies only modules it can check; rebuild with `graft build` (which writes both)")]
    Missing {
        /// The module.
        module: PathBuf,
        /// Where the manifest was looked for.
        manifest: PathBuf,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path}: not a valid graft manifest: {cause}")]
    Corrupt {
        /// The manifest.
        path: PathBuf,
        /// What the parser said.
        cause: serde_json::Error,
    },
    /// The manifest is well-formed but says something impossible.
    #[error("{path}: invalid manifest: {reason}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The module's bytes are not the ones the manifest describes.
    #[error("{module}: its SHA-256 {actual} ({size} bytes) differs from {expected} recorded in {manifest}: the module was truncated, altered or rebuilt without its manifest")]
    DigestMismatch {
        /// The module.
        module: PathBuf,
        /// The manifest.
        manifest: PathBuf,
        /// Recorded digest.
        expected: String,
        /// Digest of the file.
        actual: String,
        /// The file's size.
        size: usize,
    },
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn read(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read(path).map_err(|cause| ManifestError::Io {
            action: "reading",
            path: path.to_path_buf(),
            cause,
        })?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|cause| ManifestError::Corrupt {
                path: path.to_path_buf(),
                cause,
            })?;
        manifest
            .validate()
            .map_err(|reason| ManifestError::Invalid {
                path: path.to_path_buf(),
                reason,
            })?;
        Ok(manifest)
    }

    /// Reads the manifest beside `module` (`fix.ko` -> `fix.json`) and checks the module's bytes
    /// against it. Returns the manifest and the module's bytes.
    pub fn for_module(module: &Path) -> Result<(Self, Vec<u8>), ManifestError> {
        let manifest_path = manifest_path(module);
        let bytes = std::fs::read(module).map_err(|cause| ManifestError::Io {
            action: "reading",
            path: module.to_path_buf(),
            cause,
        })?;
        if !manifest_path.is_file() {
            return Err(ManifestError::Missing {
                module: module.to_path_buf(),
                manifest: manifest_path,
            });
        }
        let manifest = Self::read(&manifest_path)?;
        let actual = sha256(&bytes);
        if actual != manifest.module.sha256 {
            return Err(ManifestError::DigestMismatch {
                module: module.to_path_buf(),
                manifest: manifest_path,
                expected: manifest.module.sha256.clone(),
                actual,
                size: bytes.len(),
            });
        }
        Ok((manifest, bytes))
    }

    fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 55
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(format!("`{}` is not a module name", self.name));
        }
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(&self.module.sha256) {
            return Err(format!(
                "module digest `{}` is not a SHA-256",
                self.module.sha256
            ));
        }
        if self.kernel.release.is_empty() || self.kernel.build_id.is_empty() {
            return Err("the kernel release or build-id is empty".into());
        }
        if self.set.is_some() && self.replace {
            return Err("a patch of a replace set cannot also be an atomic replace patch".into());
        }
        if let Some(set) = &self.set {
            if set.is_empty() || !set.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!("`{set}` is not a set name"));
            }
        }
        Ok(())
    }
}

/// The manifest path for a module path: `fix.ko` -> `fix.json`.
pub fn manifest_path(module: &Path) -> PathBuf {
    module.with_extension("json")
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// A damaged manifest is refused, never a panic.
        #[test]
        fn damaged_manifests_are_refused_not_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), at in proptest::prelude::any::<usize>()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("m.json");
            let good = br#"{"name":"fix","kernel":{"target":"debian:6.1.0-56-amd64","release":"6.1.0-56-amd64","build_id":"ab"},"replace":true,"functions":[],"new_functions":[],"patches":[],"module":{"file":"fix.ko","sha256":"00"},"graft_version":"0.1.0"}"#;
            let mut data = good.to_vec();
            let i = at % data.len();
            data.splice(i..i, bytes);
            std::fs::write(&path, &data).unwrap();
            let _ = Manifest::read(&path);
        }
    }
}
