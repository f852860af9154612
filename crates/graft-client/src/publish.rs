//! What `graft fleet publish` sends: a module, its manifest, and the publisher's signature over
//! what the level is. Signing happens here, on the publisher's machine, with a key the server
//! never holds.

use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use graft_manifest::Manifest;
use graft_protocol::api::Publish;
use graft_protocol::trust::{Level, SignedLevel};
use graft_protocol::KernelId;

/// Why a level cannot be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The module or its manifest.
    #[error(transparent)]
    Manifest(#[from] graft_manifest::ManifestError),
    /// A probe the publisher named.
    #[error("{0}")]
    Probes(String),
    /// The manifest beside the module.
    #[error("reading {path}: {cause}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// A level to publish: the stream it belongs to and the request.
#[derive(Debug)]
pub struct Prepared {
    /// The stream (the manifest's kernel build).
    pub stream: String,
    /// The metadata as signed.
    pub level: Level,
    /// The request body.
    pub publish: Publish,
}

impl Prepared {
    /// The same level with `probes` (checked against their limits), signed again with `key`.
    pub fn with_probes(
        mut self,
        probes: std::collections::BTreeMap<String, String>,
        key: &SigningKey,
    ) -> Result<Self, PublishError> {
        graft_protocol::trust::check_probes(&probes).map_err(PublishError::Probes)?;
        self.level.probes = probes;
        self.publish.signed = SignedLevel::sign(&self.level, key);
        Ok(self)
    }
}

/// Prepares level `level`, version `version`, of the module at `module` (its manifest
/// beside it, checked against the module's digest), expiring at `expires` (seconds since the
/// epoch), signed with `key`.
pub fn prepare(
    module: &Path,
    key: &SigningKey,
    level: u32,
    version: u64,
    expires: u64,
    allow_dropped_patches: bool,
) -> Result<Prepared, PublishError> {
    let (manifest, bytes) = Manifest::for_module(module)?;
    let manifest_path = graft_manifest::manifest_path(module);
    let manifest_text =
        std::fs::read_to_string(&manifest_path).map_err(|cause| PublishError::Io {
            path: manifest_path.clone(),
            cause,
        })?;
    let kernel = KernelId {
        release: manifest.kernel.release.clone(),
        build_id: manifest.kernel.build_id.clone(),
    };
    let stream = kernel.stream();
    let level = Level {
        stream: stream.clone(),
        kernel,
        level,
        version,
        module_name: manifest.name.clone(),
        module_sha256: graft_manifest::sha256(&bytes),
        manifest_sha256: graft_manifest::sha256(manifest_text.as_bytes()),
        patches: manifest.patches.iter().map(|p| p.sha256.clone()).collect(),
        expires,
        probes: Default::default(),
    };
    let publish = Publish {
        signed: SignedLevel::sign(&level, key),
        module: base64::engine::general_purpose::STANDARD.encode(&bytes),
        manifest: manifest_text,
        allow_dropped_patches,
    };
    Ok(Prepared {
        stream,
        level,
        publish,
    })
}
