//! Host actions: apply, revert, reconcile, install, uninstall, boot, one file each over the
//! shared checks ([`checks`]: the module, the kernel it is for, the conflict rules) and the
//! transition watch ([`transition`]).
//!
//! Every action that changes the kernel is journaled before it touches anything and after each
//! step, so that a graft killed at any point leaves an entry the next graft command reconciles
//! from what the kernel shows: a patch whose transition finished is kept (and its pending
//! retirements finished); one still in transition, or loaded but not registered, is reversed and
//! unloaded.

mod apply;
pub mod checks;
mod install;
mod reconcile;
mod revert;
mod transition;

pub use apply::apply;
pub use install::{boot, boot_disabled, install, uninstall, BootItem, BootReport, InstallReport};
pub use reconcile::reconcile;
pub use revert::revert;

use std::time::Duration;

use crate::tasks::StallReport;

/// How long transitions may take.
#[derive(Clone, Copy, Debug)]
pub struct TransitionLimits {
    /// Give up (and reverse) after this long.
    pub timeout: Duration,
    /// Name the blocking tasks after this long.
    pub grace: Duration,
}

impl Default for TransitionLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(60),
            grace: Duration::from_secs(15),
        }
    }
}

/// Options of `graft apply`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApplyOptions {
    /// Transition limits.
    pub limits: TransitionLimits,
    /// Leave a stalled transition running instead of reversing it.
    pub no_revert_on_timeout: bool,
    /// At the timeout, write `force` instead of reversing (irreversible).
    pub force: bool,
}

/// Receives what a long action is doing.
pub trait Observer {
    /// A transition is running: tasks still pending (when counted) and time so far.
    fn progress(&mut self, patch: &str, patching: bool, pending: Option<usize>, elapsed: Duration);
    /// A transition is past its grace period: who blocks it.
    fn stalled(&mut self, report: &StallReport);
    /// A step finished.
    fn note(&mut self, message: &str);
}

/// How an apply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApplyOutcome {
    /// Live on every task.
    Applied,
    /// Live after `force` was written at the timeout.
    Forced,
    /// The transition timed out, was reversed, and the module unloaded: the kernel is as before.
    TimedOutReversed,
    /// The transition timed out and was left running (`--no-revert-on-timeout`).
    TimedOutLeftInTransition,
    /// The transition timed out and its reversal timed out too: still in transition.
    ReversalStalled,
    /// The patch is live, but retiring the superseded patch of its set stalled; that patch
    /// was re-enabled and stays loaded underneath.
    RetirementStalled,
}

/// The result of an apply.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ApplyReport {
    /// The patch.
    pub name: String,
    /// How it ended.
    pub outcome: ApplyOutcome,
    /// Seconds from start to the end of the transition (or of the action).
    pub elapsed_secs: f64,
    /// Seconds the transition took, when it finished.
    pub transition_secs: Option<f64>,
    /// Patches retired (replaced, or superseded within the set).
    pub retired: Vec<String>,
    /// The last diagnosis of a stalled transition.
    pub stall: Option<StallReport>,
}

/// How a revert ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevertOutcome {
    /// Disabled and unloaded.
    Reverted,
    /// Disabled, but the module stays: the patch was forced once.
    RevertedModuleKept,
    /// The unpatching transition timed out; the patch was re-enabled: as before.
    TimedOutRestored,
    /// Timed out and the restore stalled too: still in transition.
    Stalled,
}

/// The result of a revert.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RevertReport {
    /// The patch.
    pub name: String,
    /// How it ended.
    pub outcome: RevertOutcome,
    /// Seconds.
    pub elapsed_secs: f64,
    /// The last diagnosis of a stalled transition.
    pub stall: Option<StallReport>,
}

/// Stops here forever when `GRAFT_PAUSE_AT` names this point: lets tests kill graft at an
/// exact step of an action and check that the next command reconciles it.
pub(crate) fn pause_point(point: &str) {
    if std::env::var("GRAFT_PAUSE_AT").is_ok_and(|p| p == point) {
        eprintln!("graft: paused at {point} (GRAFT_PAUSE_AT)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
