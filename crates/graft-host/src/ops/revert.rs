//! `graft revert`: an unpatching transition, watched like an apply, then the module unloaded.

use std::time::Instant;

use super::transition::{unload_patch_module, wait_transition};
use super::{pause_point, Observer, RevertOutcome, RevertReport, TransitionLimits};
use crate::state::{self, Action, Entry, StateDir};
use crate::sys::{self};
use crate::HostError;

/// Disables a livepatch (an unpatching transition), watches it like an apply, unloads it. At
/// the timeout the patch is re-enabled, so the kernel ends as it started.
pub fn revert(
    state: &StateDir,
    name: &str,
    limits: TransitionLimits,
    observer: &mut dyn Observer,
) -> Result<RevertReport, HostError> {
    let started = Instant::now();
    sys::livepatch_dir()?;
    let forced = state::applied_in(state.root())
        .iter()
        .any(|a| a.manifest.name == name && a.forced);
    let patch = sys::patch(name)?;
    let mut entry = state.begin(Action::Revert, Some(name))?;
    let done = |state: &StateDir, entry: &mut Entry, outcome: RevertOutcome, summary: &str| {
        state.finish(entry, true, summary)?;
        Ok(RevertReport {
            name: name.to_string(),
            outcome,
            elapsed_secs: started.elapsed().as_secs_f64(),
            stall: None,
        })
    };
    match patch {
        None if sys::module_loaded(name)? => {
            // Disabled already (replaced, or a revert that was interrupted): just unload.
            unload_patch_module(name)?;
            state.clear_applied(name)?;
            return done(
                state,
                &mut entry,
                RevertOutcome::Reverted,
                "was disabled; unloaded",
            );
        }
        None => {
            state.finish(&mut entry, false, "no such livepatch")?;
            return Err(HostError::NotLoaded(name.to_string()));
        }
        Some(p) if p.enabled => {
            state.step(&mut entry, "disabling")?;
            sys::write_control(name, "enabled", "0")?;
        }
        Some(_) => state.step(&mut entry, "already being disabled; waiting")?,
    }
    pause_point("reverting");
    if let Some(stall) = wait_transition(name, limits, Instant::now(), observer)? {
        observer.stalled(&stall);
        state.step(&mut entry, "timed out; re-enabling")?;
        sys::write_control(name, "enabled", "1")?;
        let outcome = match wait_transition(name, limits, Instant::now(), observer)? {
            None => RevertOutcome::TimedOutRestored,
            Some(_) => RevertOutcome::Stalled,
        };
        state.finish(&mut entry, false, format!("timed out; {outcome:?}"))?;
        return Ok(RevertReport {
            name: name.to_string(),
            outcome,
            elapsed_secs: started.elapsed().as_secs_f64(),
            stall: Some(stall),
        });
    }
    if forced {
        // The kernel keeps a reference to a forced patch's module forever.
        return done(
            state,
            &mut entry,
            RevertOutcome::RevertedModuleKept,
            "disabled; the module of a forced patch cannot be unloaded",
        );
    }
    unload_patch_module(name)?;
    state.clear_applied(name)?;
    done(
        state,
        &mut entry,
        RevertOutcome::Reverted,
        "disabled and unloaded",
    )
}
