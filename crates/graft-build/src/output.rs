//! Output: the manifest, and writing module and manifest so that both appear or neither does.

use std::fs;
use std::path::Path;

use graft_kernel::Kernel;

use crate::manifest::{self, Digest256, Manifest, ManifestKernel};
use crate::patchset::PatchFile;
use crate::resolve::Resolved;
use crate::{BuildError, BuildOptions};

/// The manifest of a module built for `kernel`.
pub fn manifest(
    kernel: &Kernel,
    options: &BuildOptions,
    patches: &[PatchFile],
    resolved: &Resolved,
    module_bytes: &[u8],
) -> Manifest {
    Manifest {
        name: resolved.spec.name.clone(),
        kernel: ManifestKernel {
            target: kernel.target().to_string(),
            release: kernel.target().release.clone(),
            build_id: kernel.meta().build_id.clone(),
        },
        replace: options.replace,
        set: options.set.clone(),
        functions: resolved.functions.clone(),
        new_functions: resolved.new_functions.clone(),
        patches: patches
            .iter()
            .map(|p| Digest256 {
                file: manifest::file_name(&p.path),
                sha256: manifest::sha256(p.text.as_bytes()),
            })
            .collect(),
        module: Digest256 {
            file: manifest::file_name(&options.output),
            sha256: manifest::sha256(module_bytes),
        },
        graft_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// Writes module and manifest, each durably (a temporary file, synced, renamed): if the
/// manifest cannot be written the module is removed again, so either both appear or neither.
pub fn write(
    module: &Path,
    module_bytes: &[u8],
    manifest: &Path,
    manifest_bytes: &[u8],
) -> Result<(), BuildError> {
    graft_cache::write_atomic(module, module_bytes)?;
    if let Err(e) = graft_cache::write_atomic(manifest, manifest_bytes) {
        let _ = fs::remove_file(module);
        return Err(e.into());
    }
    Ok(())
}
