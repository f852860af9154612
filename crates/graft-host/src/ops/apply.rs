//! `graft apply`: check, journal, load the verified bytes, watch the transition, reverse it at
//! the timeout unless told otherwise, retire what the patch supersedes.

use std::path::Path;
use std::time::Instant;

use super::checks::{baseline, check_module, plan};
use super::transition::{unload_patch_module, wait_transition};
use super::{pause_point, ApplyOptions, ApplyOutcome, ApplyReport, Observer, TransitionLimits};
use crate::kmsg;
use crate::state::{self, Action, Applied, Baseline, Entry, StateDir};
use crate::sys::{self};
use crate::HostError;

/// Applies a livepatch module. Refusals change nothing; a stalled transition is reversed at the
/// timeout unless told otherwise.
pub fn apply(
    state: &StateDir,
    module: &Path,
    options: &ApplyOptions,
    observer: &mut dyn Observer,
) -> Result<ApplyReport, HostError> {
    let started = Instant::now();
    sys::livepatch_dir()?;
    let running = sys::running_kernel()?;
    let checked = check_module(module, Some(&running))?;
    let manifest = checked.manifest;
    let name = manifest.name.clone();
    let modules = sys::loaded_modules()?;
    let loaded = sys::loaded_patches(&modules)?;
    let retire = plan(&manifest, &loaded, &modules, state.root())?;
    tracing::debug!(elapsed = ?started.elapsed(), "checked");

    // The kernel log from here on: load errors for the report, the health baseline after.
    let mut log = kmsg::Follow::from_now().ok();
    let mut entry = StateDir::new_entry(Action::Apply, Some(&name));
    entry.manifest = Some(manifest.clone());
    entry.retire = retire.clone();
    entry.baseline = Some(Baseline {
        kmsg_seq: None,
        taint: kmsg::taint().unwrap_or(0),
        at_ms: state::now_ms(),
    });
    entry.note(format!("checked {}; loading", module.display()));
    state.start(&entry)?;
    tracing::debug!(elapsed = ?started.elapsed(), "journaled");
    pause_point("before-load");

    observer.note(&format!("loading {name}"));
    let loaded = sys::load_module(&name, &checked.bytes);
    let records = log
        .as_mut()
        .and_then(|l| l.new_records().ok())
        .unwrap_or_default();
    if let (Some(b), Some(first)) = (entry.baseline.as_mut(), records.first()) {
        b.kmsg_seq = first.seq.checked_sub(1);
    }
    if let Err(cause) = loaded {
        let lines: Vec<String> = records.into_iter().map(|r| r.text).collect();
        let log = if lines.is_empty() {
            String::new()
        } else {
            format!("; kernel log:\n  {}", lines.join("\n  "))
        };
        state.finish(&mut entry, false, format!("load refused: {cause}"))?;
        return Err(HostError::Load {
            module: module.to_path_buf(),
            cause,
            log,
        });
    }
    tracing::debug!(elapsed = ?started.elapsed(), "loaded");
    entry.note("loaded; transition started");
    pause_point("after-load");

    let transition_started = Instant::now();
    let stall = wait_transition(&name, options.limits, transition_started, observer)?;
    let Some(stall) = stall else {
        let transition_secs = transition_started.elapsed().as_secs_f64();
        let elapsed_secs = started.elapsed().as_secs_f64();
        tracing::debug!(elapsed = ?started.elapsed(), "transition done");
        state.step(
            &mut entry,
            format!("transition complete in {transition_secs:.3} s"),
        )?;
        observer.note(&format!(
            "{name} is live ({transition_secs:.2} s transition)"
        ));
        pause_point("after-transition");
        return finish_applied(
            state,
            &mut entry,
            observer,
            options.limits,
            false,
            elapsed_secs,
            Some(transition_secs),
        );
    };
    observer.stalled(&stall);
    if options.force {
        entry.forced = true;
        state.step(&mut entry, "timed out; writing force (irreversible)")?;
        sys::write_control(&name, "force", "1")?;
        observer.note(&format!(
            "{name}: force written; its module can never be removed"
        ));
        wait_transition(&name, options.limits, Instant::now(), observer)?;
        let mut report = finish_applied(
            state,
            &mut entry,
            observer,
            options.limits,
            true,
            started.elapsed().as_secs_f64(),
            None,
        )?;
        if report.outcome == ApplyOutcome::Applied {
            report.outcome = ApplyOutcome::Forced;
        }
        report.stall = Some(stall);
        return Ok(report);
    }
    if options.no_revert_on_timeout {
        state.finish(
            &mut entry,
            false,
            "timed out; left in transition as asked (--no-revert-on-timeout)",
        )?;
        return Ok(ApplyReport {
            name,
            outcome: ApplyOutcome::TimedOutLeftInTransition,
            elapsed_secs: started.elapsed().as_secs_f64(),
            transition_secs: None,
            retired: Vec::new(),
            stall: Some(stall),
        });
    }
    state.step(&mut entry, "timed out; reversing")?;
    observer.note(&format!("{name}: timed out; reversing the transition"));
    sys::write_control(&name, "enabled", "0")?;
    let outcome = match wait_transition(&name, options.limits, Instant::now(), observer)? {
        None => {
            unload_patch_module(&name)?;
            state.finish(
                &mut entry,
                false,
                "timed out; reversed and unloaded: the kernel is as before",
            )?;
            ApplyOutcome::TimedOutReversed
        }
        Some(second) => {
            observer.stalled(&second);
            state.finish(
                &mut entry,
                false,
                "timed out; the reversal timed out too: still in transition",
            )?;
            ApplyOutcome::ReversalStalled
        }
    };
    Ok(ApplyReport {
        name,
        outcome,
        elapsed_secs: started.elapsed().as_secs_f64(),
        transition_secs: None,
        retired: Vec::new(),
        stall: Some(stall),
    })
}

/// After the transition: retire what the entry says, record the patch as applied.
pub(crate) fn finish_applied(
    state: &StateDir,
    entry: &mut Entry,
    observer: &mut dyn Observer,
    limits: TransitionLimits,
    forced: bool,
    elapsed_secs: f64,
    transition_secs: Option<f64>,
) -> Result<ApplyReport, HostError> {
    let manifest = entry.manifest.clone().ok_or_else(|| HostError::State {
        path: state.root().to_path_buf(),
        reason: format!("journal entry {} has no manifest", entry.id),
    })?;
    let name = manifest.name.clone();
    let mut retired = Vec::new();
    let mut outcome = ApplyOutcome::Applied;
    if entry
        .baseline
        .as_ref()
        .is_some_and(|b| b.kmsg_seq.is_none())
    {
        let seq = kmsg::last_seq().ok().flatten();
        if let Some(b) = entry.baseline.as_mut() {
            b.kmsg_seq = seq;
        }
    }
    for old in entry.retire.clone() {
        state.step(entry, format!("retiring {old}"))?;
        if manifest.replace {
            // The kernel already disabled it; free its module.
            if sys::module_loaded(&old)? {
                unload_patch_module(&old)?;
            }
        } else if let Some(p) = sys::patch(&old)? {
            if p.enabled {
                sys::write_control(&old, "enabled", "0")?;
            }
            pause_point("retiring");
            if let Some(stall) = wait_transition(&old, limits, Instant::now(), observer)? {
                observer.stalled(&stall);
                sys::write_control(&old, "enabled", "1")?;
                wait_transition(&old, limits, Instant::now(), observer)?;
                state.step(entry, format!("retiring {old} stalled; re-enabled it"))?;
                outcome = ApplyOutcome::RetirementStalled;
                continue;
            }
            unload_patch_module(&old)?;
        } else if sys::module_loaded(&old)? {
            unload_patch_module(&old)?;
        }
        state.clear_applied(&old)?;
        state.step(entry, format!("retired {old}"))?;
        observer.note(&format!("retired {old}"));
        retired.push(old);
    }
    state.set_applied(&Applied {
        manifest,
        baseline: entry.baseline.clone().unwrap_or_else(baseline),
        applied_ms: state::now_ms(),
        forced,
    })?;
    let summary = match outcome {
        ApplyOutcome::RetirementStalled => {
            "applied; retiring the superseded patch stalled and it stays live underneath"
                .to_string()
        }
        _ if forced => "applied with force (irreversible)".to_string(),
        _ if retired.is_empty() => "applied".to_string(),
        _ => format!("applied; retired {}", retired.join(", ")),
    };
    state.finish(entry, outcome == ApplyOutcome::Applied, summary)?;
    Ok(ApplyReport {
        name,
        outcome,
        elapsed_secs,
        transition_secs,
        retired,
        stall: None,
    })
}
