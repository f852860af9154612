//! The checks every apply makes before touching the kernel: the module against its manifest
//! and the running kernel, and the conflict rules against the patches already live.

use std::collections::BTreeMap;
use std::path::Path;

use graft_manifest::Manifest;

use crate::kmsg;
use crate::state::{self, Baseline};
use crate::sys::{self, LoadedPatch};
use crate::HostError;

/// A module checked against its manifest and the running kernel.
pub(crate) struct Checked {
    pub(crate) manifest: Manifest,
    pub(crate) bytes: Vec<u8>,
    pub(crate) manifest_bytes: Vec<u8>,
}

/// Checks a module file: manifest, digest, that it is the livepatch the manifest names, and
/// (with `running`) that it is for this kernel.
pub(crate) fn check_module(
    module: &Path,
    running: Option<&sys::RunningKernel>,
) -> Result<Checked, HostError> {
    let (manifest, bytes) = Manifest::for_module(module)?;
    let manifest_path = graft_manifest::manifest_path(module);
    let manifest_bytes =
        std::fs::read(&manifest_path).map_err(|e| HostError::io("reading", &manifest_path, e))?;
    let info = sys::modinfo(module, &bytes)?;
    let name = sys::livepatch_name(module, &info)?;
    if name != manifest.name {
        return Err(HostError::BadModule {
            module: module.to_path_buf(),
            reason: format!(
                "its module name {name} differs from the manifest's {}",
                manifest.name
            ),
        });
    }
    if let Some(running) = running {
        let vermagic = info.get("vermagic").cloned().unwrap_or_default();
        let vermagic_release = vermagic.split_whitespace().next().unwrap_or("");
        if manifest.kernel.release != running.release
            || manifest.kernel.build_id != running.build_id
            || vermagic_release != running.release
        {
            return Err(HostError::ForeignKernel {
                module: module.to_path_buf(),
                want_release: if manifest.kernel.release == running.release {
                    vermagic_release.to_string()
                } else {
                    manifest.kernel.release.clone()
                },
                want_build_id: manifest.kernel.build_id.clone(),
                have_release: running.release.clone(),
                have_build_id: running.build_id.clone(),
            });
        }
    }
    Ok(Checked {
        manifest,
        bytes,
        manifest_bytes,
    })
}

pub(crate) fn baseline() -> Baseline {
    Baseline {
        kmsg_seq: kmsg::last_seq().ok().flatten(),
        taint: kmsg::taint().unwrap_or(0),
        at_ms: state::now_ms(),
    }
}

/// Decides what an apply retires, or why it must not happen (the conflict rules).
pub fn plan(
    manifest: &Manifest,
    loaded: &[LoadedPatch],
    modules: &[sys::LoadedModule],
    root: &Path,
) -> Result<Vec<String>, HostError> {
    let refuse = |reason: String| HostError::Conflict {
        patch: manifest.name.clone(),
        reason,
    };
    if let Some(p) = loaded.iter().find(|p| p.name == manifest.name) {
        return Err(refuse(format!(
            "a livepatch named {} is already loaded ({}); revert it first (`graft revert {}`) or build the new one under another --name",
            p.name,
            if p.enabled { "enabled" } else { "being disabled" },
            p.name
        )));
    }
    if modules.iter().any(|m| m.name == manifest.name) {
        return Err(refuse(format!(
            "a module named {} is already loaded (a disabled livepatch not yet unloaded?); unload it first",
            manifest.name
        )));
    }
    if let Some(p) = loaded.iter().find(|p| p.transition) {
        return Err(refuse(format!(
            "{} is in a transition; the kernel runs one at a time: wait for it (`graft status`) or revert it",
            p.name
        )));
    }
    if manifest.replace {
        // Atomic replace: the kernel disables every other patch when the transition finishes.
        return Ok(loaded.iter().map(|p| p.name.clone()).collect());
    }
    let applied: BTreeMap<String, Manifest> = state::applied_in(root)
        .into_iter()
        .map(|a| (a.manifest.name.clone(), a.manifest))
        .collect();
    let predecessors: Vec<String> = match &manifest.set {
        Some(set) => loaded
            .iter()
            .filter(|p| applied.get(&p.name).and_then(|m| m.set.as_ref()) == Some(set))
            .map(|p| p.name.clone())
            .collect(),
        None => Vec::new(),
    };
    let digests =
        |m: &Manifest| -> Vec<String> { m.patches.iter().map(|d| d.sha256.clone()).collect() };
    let ours = digests(manifest);
    for function in &manifest.functions {
        for other in loaded.iter().filter(|p| !predecessors.contains(&p.name)) {
            let touches = other.functions().any(|(object, f)| {
                object == function.object
                    && f.name == function.name
                    && (f.sympos == function.sympos || f.sympos.max(1) == function.sympos.max(1))
            });
            if !touches {
                continue;
            }
            let what = format!("{}:{}", function.object, function.name);
            let Some(theirs) = applied.get(&other.name) else {
                return Err(refuse(format!(
                    "{what} is already patched by {}, a livepatch graft did not apply and cannot inspect; the newer patch would hide its version of {what}. Revert {} first, or fold both fixes into one patch",
                    other.name, other.name
                )));
            };
            match (&manifest.set, &theirs.set) {
                (Some(a), Some(b)) if a != b => {
                    return Err(refuse(format!(
                        "sets {a} and {b} would both patch {what} ({} is live in set {b}); a function may belong to one replace set only, so that upgrading one set never changes another's code",
                        other.name
                    )));
                }
                (Some(a), None) => {
                    return Err(refuse(format!(
                        "{what} is already patched by {} (in no replace set); the set {a} patch would hide its version. Fold the fix into set {a}'s patches or revert {} first",
                        other.name, other.name
                    )));
                }
                (None, Some(b)) => {
                    return Err(refuse(format!(
                        "{what} belongs to replace set {b} (live in {}); a patch outside the set would hide it and block the set's upgrades. Build the fix into set {b} (graft build --set {b})",
                        other.name
                    )));
                }
                _ => {}
            }
            let carries = digests(theirs).iter().all(|d| ours.contains(d));
            if !carries {
                return Err(refuse(format!(
                    "{what} is already patched by {}, and this patch was not built from {}'s source patches: stacked on top, it would silently drop {}'s change to {what}. Build it with {}'s patches first (graft build A.patch B.patch), or make it an atomic replace patch",
                    other.name, other.name, other.name, other.name
                )));
            }
        }
    }
    Ok(predecessors)
}
