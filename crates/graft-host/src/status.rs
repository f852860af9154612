//! `graft status`: every loaded livepatch, graft's or not, which version of each patched
//! function runs, pending tasks, and the kernel's health since the last apply.

use std::collections::BTreeMap;
use std::path::Path;

use crate::kmsg;
use crate::state::{self, Applied};
use crate::sys::{self, LoadedPatch, PatchObject, RunningKernel};
use crate::tasks::{self, TaskInfo};
use crate::HostError;

/// One loaded livepatch.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PatchStatus {
    /// Name.
    pub name: String,
    /// Stack position, 1 = oldest.
    pub position: usize,
    /// Patching (true) or being disabled.
    pub enabled: bool,
    /// A transition is running.
    pub transition: bool,
    /// Applied by graft (its manifest is in the state directory).
    pub managed: bool,
    /// Atomic replace; unknown (None) for patches graft did not apply, as 6.1's sysfs does not
    /// show it.
    pub replace: Option<bool>,
    /// Its replace set.
    pub set: Option<String>,
    /// `force` was written; the module can never be removed.
    pub forced: bool,
    /// When graft applied it (ms since the epoch).
    pub applied_ms: Option<u64>,
    /// Objects and functions.
    pub objects: Vec<PatchObject>,
    /// Tasks still to move, during a transition.
    pub pending_tasks: Option<Vec<TaskInfo>>,
}

/// A patched function and which version of it runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FunctionStatus {
    /// `vmlinux` or a module.
    pub object: String,
    /// Function name.
    pub name: String,
    /// Position among same-named symbols.
    pub sympos: u32,
    /// Patches that replace it, oldest first.
    pub patches: Vec<String>,
    /// The patch whose version runs (the newest enabled one), when no transition is moving it.
    pub live: Option<String>,
    /// During a transition: tasks run either the version before or this patch's.
    pub transition: Option<String>,
}

/// The kernel's health since the last apply.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Health {
    /// The patch applied last.
    pub since_patch: String,
    /// When its apply started (ms since the epoch).
    pub since_ms: u64,
    /// Kernel log lines reporting problems since then.
    pub kernel_log_errors: Vec<String>,
    /// Why the kernel log could not be read (then `ok` is false: health unknown).
    pub kernel_log_unreadable: Option<String>,
    /// Taints now.
    pub taint: Vec<String>,
    /// Taints added since then, beyond those a livepatch always adds (O, E, K).
    pub new_taint: Vec<String>,
    /// Whether nothing bad was seen.
    pub ok: bool,
}

/// An installed patch, for the status report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstalledStatus {
    /// Name.
    pub name: String,
    /// Release it is for.
    pub release: String,
    /// Whether it is for the running kernel.
    pub for_running_kernel: bool,
}

/// Everything `graft status` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    /// The running kernel.
    pub kernel: RunningKernel,
    /// Loaded livepatches, oldest first.
    pub patches: Vec<PatchStatus>,
    /// Each patched function and its live version.
    pub functions: Vec<FunctionStatus>,
    /// Livepatch modules still loaded whose patch is gone (disabled or replaced).
    pub disabled_modules: Vec<String>,
    /// Health since the last apply graft did.
    pub health: Option<Health>,
    /// Patches `graft boot` applies.
    pub installed: Vec<InstalledStatus>,
    /// What reconciling interrupted actions did before this report.
    pub reconciled: Vec<String>,
}

impl Status {
    /// Reads everything. `state_root` may not exist (nothing applied by graft yet).
    pub fn read(state_root: &Path, reconciled: Vec<String>) -> Result<Self, HostError> {
        sys::livepatch_dir()?;
        let kernel = sys::running_kernel()?;
        let modules = sys::loaded_modules()?;
        let loaded = sys::loaded_patches(&modules)?;
        let applied: BTreeMap<String, Applied> = state::applied_in(state_root)
            .into_iter()
            .map(|a| (a.manifest.name.clone(), a))
            .collect();
        let patches = loaded
            .iter()
            .enumerate()
            .map(|(i, p)| patch_status(p, i + 1, applied.get(&p.name)))
            .collect();
        let functions = live_versions(&loaded);
        let disabled_modules = modules
            .into_iter()
            .filter(|m| m.livepatch && !loaded.iter().any(|p| p.name == m.name))
            .map(|m| m.name)
            .collect();
        let health = applied
            .values()
            .max_by_key(|a| a.baseline.at_ms)
            .map(health_since);
        let installed = state::installed_in(state_root)
            .unwrap_or_default()
            .into_iter()
            .map(|i| InstalledStatus {
                for_running_kernel: i.manifest.kernel.build_id == kernel.build_id,
                release: i.manifest.kernel.release,
                name: i.name,
            })
            .collect();
        Ok(Self {
            kernel,
            patches,
            functions,
            disabled_modules,
            health,
            installed,
            reconciled,
        })
    }
}

fn patch_status(p: &LoadedPatch, position: usize, applied: Option<&Applied>) -> PatchStatus {
    PatchStatus {
        name: p.name.clone(),
        position,
        enabled: p.enabled,
        transition: p.transition,
        managed: applied.is_some(),
        replace: applied.map(|a| a.manifest.replace),
        set: applied.and_then(|a| a.manifest.set.clone()),
        forced: applied.is_some_and(|a| a.forced),
        applied_ms: applied.map(|a| a.applied_ms),
        objects: p.objects.clone(),
        pending_tasks: p.transition.then(|| tasks::pending(i32::from(p.enabled))),
    }
}

/// The live version of each function: the kernel runs the newest enabled patch's version (the
/// top of its per-function stack), and during a transition, per task, either that or the one
/// below.
pub fn live_versions(loaded: &[LoadedPatch]) -> Vec<FunctionStatus> {
    let mut by_function: BTreeMap<(String, String, u32), Vec<&LoadedPatch>> = BTreeMap::new();
    for p in loaded {
        for (object, f) in p.functions() {
            by_function
                .entry((object.to_string(), f.name.clone(), f.sympos))
                .or_default()
                .push(p);
        }
    }
    by_function
        .into_iter()
        .map(|((object, name, sympos), patches)| {
            let top = patches.last();
            let moving = top.filter(|p| p.transition);
            let below = if patches.len() > 1 {
                patches.get(patches.len() - 2).map(|p| p.name.clone())
            } else {
                None
            };
            let transition = moving.map(|p| {
                let before = below.clone().unwrap_or_else(|| "the original".into());
                if p.enabled {
                    format!("moving from {before} to {}", p.name)
                } else {
                    format!("moving from {} back to {before}", p.name)
                }
            });
            let live = match moving {
                Some(_) => None,
                None => top.map(|p| p.name.clone()),
            };
            FunctionStatus {
                object,
                name,
                sympos,
                patches: patches.iter().map(|p| p.name.clone()).collect(),
                live,
                transition,
            }
        })
        .collect()
}

fn health_since(applied: &Applied) -> Health {
    let (kernel_log_errors, kernel_log_unreadable) =
        match kmsg::records_after(applied.baseline.kmsg_seq) {
            Ok(records) => (
                records
                    .into_iter()
                    .filter(|r| kmsg::is_bad(&r.text))
                    .map(|r| r.text)
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(format!("reading /dev/kmsg: {e}"))),
        };
    let now = kmsg::taint().unwrap_or(0);
    let added = now & !applied.baseline.taint & !kmsg::EXPECTED_BY_LIVEPATCH;
    let new_taint = kmsg::describe_taint(added);
    Health {
        since_patch: applied.manifest.name.clone(),
        since_ms: applied.baseline.at_ms,
        ok: kernel_log_errors.is_empty() && new_taint.is_empty() && kernel_log_unreadable.is_none(),
        kernel_log_errors,
        kernel_log_unreadable,
        taint: kmsg::describe_taint(now),
        new_taint,
    }
}
