//! The kernel side of the agent: what it runs, what is live, and apply/revert with all of
//! graft-host's safety (journal, transition watch, reversal at the timeout).
//!
//! A trait, so that `graft fleet simulate` can run many agents' protocol logic against one
//! server with simulated kernels; the real agent always uses [`KernelHost`].

use std::path::{Path, PathBuf};

use graft_host::ops::{self, ApplyOptions, Observer, TransitionLimits};
use graft_host::state::StateDir;
use graft_host::tasks::StallReport;
use graft_protocol::api::{Inventory, LivePatch};
use graft_protocol::KernelId;

/// How an action on the kernel ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionResult {
    /// `applied`, `reverted`, or graft-host's outcome name; `failed` for an error.
    pub result: String,
    /// The patch is live (applied) or gone (reverted) as asked.
    pub done: bool,
    /// Seconds the transition took.
    pub transition_secs: Option<f64>,
    /// Tasks that blocked the transition.
    pub blockers: Vec<String>,
    /// Why, when not done.
    pub message: Option<String>,
}

/// A host's kernel.
pub trait Host {
    /// The running kernel.
    fn kernel(&self) -> Result<KernelId, String>;
    /// Live patches, taint and kernel errors since `since_seq`.
    fn inventory(&self, since_seq: Option<u64>) -> Inventory;
    /// The kernel log's newest sequence number.
    fn log_mark(&self) -> Option<u64>;
    /// Applies the module at `module` (its manifest beside it).
    fn apply(&mut self, module: &Path) -> ActionResult;
    /// Reverts the patch `name`.
    fn revert(&mut self, name: &str) -> ActionResult;
    /// The kernel's counters that health samples are rates of (`None`: not measured).
    fn counters(&self) -> Option<crate::health::Counters> {
        None
    }
    /// This boot's id (`/proc/sys/kernel/random/boot_id`): a new one means a reboot.
    fn boot_id(&self) -> Option<String> {
        None
    }
    /// The kernel kept a crash record of an earlier boot (pstore).
    fn crash_records(&self) -> bool {
        false
    }
}

/// The real kernel, through graft-host.
#[derive(Debug)]
pub struct KernelHost {
    state: PathBuf,
    limits: TransitionLimits,
}

impl KernelHost {
    /// graft-host's state directory (`/var/lib/graft` by default) and the transition limits.
    pub fn new(state: PathBuf, limits: TransitionLimits) -> Self {
        Self { state, limits }
    }

    fn open(&self) -> Result<StateDir, String> {
        StateDir::open(&self.state, &mut |msg| tracing::info!("{msg}")).map_err(|e| e.to_string())
    }
}

/// Collects the names of blocking tasks.
#[derive(Default)]
struct Blockers(Vec<String>);

impl Observer for Blockers {
    fn progress(&mut self, _: &str, _: bool, _: Option<usize>, _: std::time::Duration) {}
    fn stalled(&mut self, report: &StallReport) {
        self.0 = report
            .blockers
            .iter()
            .map(|b| {
                format!(
                    "pid {} [{}] {}",
                    b.task.pid,
                    b.task.comm,
                    b.holding.join(" ")
                )
            })
            .map(|s| s.trim_end().to_string())
            .collect();
        tracing::warn!(blockers = ?self.0, "transition stalled");
    }
    fn note(&mut self, message: &str) {
        tracing::info!("{message}");
    }
}

impl Host for KernelHost {
    fn kernel(&self) -> Result<KernelId, String> {
        let k = graft_host::sys::running_kernel().map_err(|e| e.to_string())?;
        Ok(KernelId {
            release: k.release,
            build_id: k.build_id,
        })
    }

    fn inventory(&self, since_seq: Option<u64>) -> Inventory {
        let patches = graft_host::sys::loaded_modules()
            .and_then(|m| graft_host::sys::loaded_patches(&m))
            .unwrap_or_default()
            .into_iter()
            .map(|p| LivePatch {
                name: p.name,
                enabled: p.enabled,
                transition: p.transition,
            })
            .collect();
        let kernel_errors = graft_host::kmsg::records_after(since_seq)
            .map(|records| {
                records
                    .iter()
                    .filter(|r| graft_host::kmsg::is_bad(&r.text))
                    .count()
            })
            .unwrap_or(0);
        Inventory {
            patches,
            level: None,
            taint: graft_host::kmsg::taint().unwrap_or(0),
            kernel_errors: u32::try_from(kernel_errors).unwrap_or(u32::MAX),
        }
    }

    fn log_mark(&self) -> Option<u64> {
        graft_host::kmsg::last_seq().ok().flatten()
    }

    fn counters(&self) -> Option<crate::health::Counters> {
        Some(crate::health::read(Path::new("/proc"), Path::new("/sys")))
    }

    fn boot_id(&self) -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    fn crash_records(&self) -> bool {
        crate::health::pstore_has_records(Path::new("/sys"))
    }

    fn apply(&mut self, module: &Path) -> ActionResult {
        let state = match self.open() {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let options = ApplyOptions {
            limits: self.limits,
            ..Default::default()
        };
        let mut blockers = Blockers::default();
        let report = match ops::apply(&state, module, &options, &mut blockers) {
            Ok(report) => report,
            Err(e) => return failed(e.to_string()),
        };
        let done = matches!(
            report.outcome,
            graft_host::ApplyOutcome::Applied | graft_host::ApplyOutcome::Forced
        );
        // Live now; installed, so that `graft boot` applies it again after a reboot.
        if done {
            // The levels it replaced are not to come back at boot either.
            for retired in &report.retired {
                if let Err(e) = ops::uninstall(&state, retired) {
                    tracing::debug!("{retired} was not installed: {e}");
                }
            }
        }
        let message = if done {
            ops::install(&state, module)
                .err()
                .map(|e| format!("applied, but not installed for the next boot: {e}"))
        } else {
            None
        };
        ActionResult {
            done,
            result: serde_name(&report.outcome),
            transition_secs: report.transition_secs,
            blockers: blockers.0,
            message,
        }
    }

    fn revert(&mut self, name: &str) -> ActionResult {
        let state = match self.open() {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let mut blockers = Blockers::default();
        let report = match ops::revert(&state, name, self.limits, &mut blockers) {
            Ok(report) => report,
            Err(e) => return failed(e.to_string()),
        };
        let done = matches!(
            report.outcome,
            ops::RevertOutcome::Reverted | ops::RevertOutcome::RevertedModuleKept
        );
        // Gone now, and not applied again at the next boot.
        let message = if done {
            ops::uninstall(&state, name)
                .err()
                .map(|e| format!("reverted, but still installed for the next boot: {e}"))
        } else {
            None
        };
        ActionResult {
            done,
            result: serde_name(&report.outcome),
            transition_secs: Some(report.elapsed_secs),
            blockers: blockers.0,
            message,
        }
    }
}

/// An action that did not run.
pub fn failed(message: impl Into<String>) -> ActionResult {
    ActionResult {
        result: "failed".into(),
        done: false,
        transition_secs: None,
        blockers: Vec::new(),
        message: Some(message.into()),
    }
}

/// graft-host's kebab-case name of an outcome.
fn serde_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
