//! Reconciling what a killed graft left in the journal with what the kernel shows.

use std::time::Instant;

use super::apply::finish_applied;
use super::transition::{unload_patch_module, wait_transition};
use super::{Observer, TransitionLimits};
use crate::state::{self, Action, Entry, StateDir};
use crate::sys::{self};
use crate::HostError;

/// Brings every interrupted action to a known state. Returns what was done, for the user.
pub fn reconcile(
    state: &StateDir,
    limits: TransitionLimits,
    observer: &mut dyn Observer,
) -> Result<Vec<String>, HostError> {
    let mut messages = Vec::new();
    for mut entry in state.interrupted()? {
        if entry.pid == std::process::id() {
            continue;
        }
        let when = entry.started_ms;
        let patch = entry.patch.clone().unwrap_or_default();
        let summary = match entry.action {
            Action::Apply => reconcile_apply(state, &mut entry, limits, observer)?,
            Action::Revert => reconcile_revert(state, &patch, limits, observer)?,
            Action::Install | Action::Uninstall => {
                Some("the installed list is written atomically: it holds the state before or after, not between".to_string())
            }
            Action::Boot | Action::Reconcile => Some("each of its applies is reconciled on its own".to_string()),
        };
        let Some(summary) = summary else {
            messages.push(format!(
                "interrupted {:?} of {patch} (graft pid {}) could not be reconciled yet: a transition is still stalled; run graft again later",
                entry.action, entry.pid
            ));
            continue;
        };
        let ago = state::now_ms().saturating_sub(when) / 1000;
        let message = format!(
            "interrupted {} of {patch} (graft pid {}, started {ago} s ago, was killed): {summary}",
            format!("{:?}", entry.action).to_ascii_lowercase(),
            entry.pid,
        );
        state.finish(
            &mut entry,
            false,
            format!("interrupted; reconciled: {summary}"),
        )?;
        observer.note(&message);
        messages.push(message);
    }
    Ok(messages)
}

fn reconcile_apply(
    state: &StateDir,
    entry: &mut Entry,
    limits: TransitionLimits,
    observer: &mut dyn Observer,
) -> Result<Option<String>, HostError> {
    let name = entry.patch.clone().unwrap_or_default();
    if sys::livepatch_dir().is_err() {
        return Ok(Some(
            "the kernel has no livepatch interface; nothing to do".into(),
        ));
    }
    match sys::patch(&name)? {
        Some(p) if p.enabled && !p.transition => {
            // The kernel finished; graft died before recording it. Finish what remained.
            let report = finish_applied(state, entry, observer, limits, entry.forced, 0.0, None)?;
            // finish_applied wrote an outcome; reconcile's caller overwrites it with the story.
            Ok(Some(if report.retired.is_empty() {
                "its transition had finished: kept it applied and recorded it".to_string()
            } else {
                format!(
                    "its transition had finished: kept it applied and retired {}",
                    report.retired.join(", ")
                )
            }))
        }
        Some(p) => {
            if p.enabled {
                sys::write_control(&name, "enabled", "0")?;
            }
            if wait_transition(&name, limits, Instant::now(), observer)?.is_some() {
                return Ok(None);
            }
            unload_patch_module(&name)?;
            Ok(Some(if p.transition {
                "it was still in transition: reversed it and unloaded the module; the kernel is as before the apply".into()
            } else {
                "it was being disabled: unloaded the module".into()
            }))
        }
        None if sys::module_loaded(&name)? => {
            unload_patch_module(&name)?;
            Ok(Some("the module was loaded but not registered as a livepatch: unloaded it; the kernel is as before the apply".into()))
        }
        None => Ok(Some(
            "nothing had been loaded; the kernel is as before the apply".into(),
        )),
    }
}

fn reconcile_revert(
    state: &StateDir,
    name: &str,
    limits: TransitionLimits,
    observer: &mut dyn Observer,
) -> Result<Option<String>, HostError> {
    if sys::livepatch_dir().is_err() {
        return Ok(Some(
            "the kernel has no livepatch interface; nothing to do".into(),
        ));
    }
    match sys::patch(name)? {
        Some(p) if p.enabled && !p.transition => Ok(Some(
            "the patch is still applied (the revert had not started or was undone)".into(),
        )),
        Some(p) => {
            if wait_transition(name, limits, Instant::now(), observer)?.is_some() {
                return Ok(None);
            }
            if p.enabled {
                Ok(Some(
                    "its restore finished: the patch is still applied".into(),
                ))
            } else {
                unload_patch_module(name)?;
                state.clear_applied(name)?;
                Ok(Some("finished the revert and unloaded the module".into()))
            }
        }
        None if sys::module_loaded(name)? => {
            unload_patch_module(name)?;
            state.clear_applied(name)?;
            Ok(Some("finished the revert: unloaded the module".into()))
        }
        None => {
            state.clear_applied(name)?;
            Ok(Some("the revert had finished".into()))
        }
    }
}
