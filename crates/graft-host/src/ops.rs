//! Host actions: apply, revert, reconcile, install, uninstall, boot.
//!
//! Every action that changes the kernel is journaled before it touches anything and after each
//! step, so that a graft killed at any point leaves an entry the next graft command reconciles
//! from what the kernel shows: a patch whose transition finished is kept (and its pending
//! retirements finished); one still in transition, or loaded but not registered, is reversed and
//! unloaded.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use graft_manifest::Manifest;

use crate::kmsg;
use crate::state::{self, Action, Applied, Baseline, Entry, Installed, StateDir};
use crate::sys::{self, LoadedPatch};
use crate::tasks::{self, StallReport};
use crate::HostError;

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
fn pause_point(point: &str) {
    if std::env::var("GRAFT_PAUSE_AT").is_ok_and(|p| p == point) {
        eprintln!("graft: paused at {point} (GRAFT_PAUSE_AT)");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// A module checked against its manifest and the running kernel.
struct Checked {
    manifest: Manifest,
    bytes: Vec<u8>,
    manifest_bytes: Vec<u8>,
}

/// Checks a module file: manifest, digest, that it is the livepatch the manifest names, and
/// (with `running`) that it is for this kernel.
fn check_module(module: &Path, running: Option<&sys::RunningKernel>) -> Result<Checked, HostError> {
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

fn baseline() -> Baseline {
    Baseline {
        kmsg_seq: kmsg::last_seq().ok().flatten(),
        taint: kmsg::taint().unwrap_or(0),
        at_ms: state::now_ms(),
    }
}

/// Decides what an apply retires, or why it must not happen.
fn plan(
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

/// Watches a transition until it ends or times out. Returns the diagnosis on timeout.
fn wait_transition(
    name: &str,
    limits: TransitionLimits,
    started: Instant,
    observer: &mut dyn Observer,
) -> Result<Option<StallReport>, HostError> {
    let transition = sys::livepatch_dir()?.join(name).join("transition");
    let mut last_count = started;
    let mut counted_once = false;
    let mut reported = false;
    loop {
        let elapsed = started.elapsed();
        match std::fs::read(&transition) {
            Ok(v) if v.first() == Some(&b'1') => {}
            Ok(_) => return Ok(None),
            // A patch whose unpatching finished is freed: its directory goes away.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HostError::io("reading", &transition, e)),
        }
        if elapsed >= Duration::from_millis(100)
            && (!counted_once || last_count.elapsed() >= Duration::from_millis(500))
        {
            if let Some(patch) = sys::patch(name)? {
                let target = i32::from(patch.enabled);
                let pending = tasks::pending(target).len();
                observer.progress(name, patch.enabled, Some(pending), elapsed);
                if !reported && elapsed >= limits.grace {
                    observer.stalled(&tasks::diagnose(&patch, elapsed.as_secs_f64()));
                    reported = true;
                }
                if elapsed >= limits.timeout {
                    return Ok(Some(tasks::diagnose(&patch, elapsed.as_secs_f64())));
                }
            }
            last_count = Instant::now();
            counted_once = true;
        }
        // Most transitions end inside the load itself or at the kernel's next retry (each
        // second): poll finely at first, then gently.
        let nap = if elapsed < Duration::from_millis(300) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(20)
        };
        std::thread::sleep(nap);
    }
}

/// Waits until a disabled patch is freed, then unloads its module.
fn unload_patch_module(name: &str) -> Result<(), HostError> {
    let dir = sys::livepatch_dir()?.join(name);
    let started = Instant::now();
    while dir.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    sys::unload_module(name, Duration::from_secs(10))
}

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
fn finish_applied(
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

/// The result of an install.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstallReport {
    /// The patch.
    pub name: String,
    /// Installed patches it superseded (removed from the list).
    pub superseded: Vec<String>,
    /// Whether it is for the running kernel (else `graft boot` skips it until that kernel runs).
    pub for_running_kernel: Option<bool>,
    /// The boot order now.
    pub order: Vec<String>,
}

/// Installs a module for `graft boot`: an atomic replace patch supersedes every installed patch
/// for the same kernel; a set member supersedes its set's older patch.
pub fn install(state: &StateDir, module: &Path) -> Result<InstallReport, HostError> {
    let checked = check_module(module, None)?;
    let m = &checked.manifest;
    let mut entry = state.begin(Action::Install, Some(&m.name))?;
    let mut list = state.installed()?;
    let mut superseded = Vec::new();
    list.retain(|i| {
        let same_kernel = i.manifest.kernel.build_id == m.kernel.build_id;
        let replaced = i.name == m.name
            || (same_kernel && m.replace)
            || (same_kernel && m.set.is_some() && i.manifest.set == m.set);
        if replaced && i.name != m.name {
            superseded.push(i.name.clone());
        }
        !replaced
    });
    list.push(Installed {
        name: m.name.clone(),
        installed_ms: state::now_ms(),
        manifest: m.clone(),
    });
    state.set_installed(
        &list,
        &[(
            m.name.clone(),
            checked.bytes.clone(),
            checked.manifest_bytes.clone(),
        )],
    )?;
    let for_running_kernel = sys::running_kernel()
        .ok()
        .map(|r| r.build_id == m.kernel.build_id);
    state.finish(
        &mut entry,
        true,
        format!("installed; superseded {superseded:?}"),
    )?;
    Ok(InstallReport {
        name: m.name.clone(),
        superseded,
        for_running_kernel,
        order: list.into_iter().map(|i| i.name).collect(),
    })
}

/// Removes an installed patch (a live one stays live: `graft revert` removes it now).
pub fn uninstall(state: &StateDir, name: &str) -> Result<(), HostError> {
    let mut list = state.installed()?;
    let before = list.len();
    list.retain(|i| i.name != name);
    if list.len() == before {
        return Err(HostError::NotInstalled(name.to_string()));
    }
    let mut entry = state.begin(Action::Uninstall, Some(name))?;
    state.set_installed(&list, &[])?;
    state.finish(&mut entry, true, "uninstalled")?;
    Ok(())
}

/// One installed patch at boot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BootItem {
    /// The patch.
    pub name: String,
    /// `applied`, `already-live`, `skipped` or `failed`.
    pub result: String,
    /// Why, for skipped and failed ones.
    pub detail: Option<String>,
}

/// The result of `graft boot`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BootReport {
    /// `graft.disable=1` was on the kernel command line.
    pub disabled: bool,
    /// Each installed patch.
    pub items: Vec<BootItem>,
    /// Whether every patch for this kernel is live.
    pub ok: bool,
}

/// Whether the kernel command line disables graft at boot.
pub fn boot_disabled(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| matches!(w, "graft.disable=1" | "graft.disable=y" | "graft.disable=Y"))
}

/// Applies the installed patches for the running kernel, in order; stops at the first failure
/// (a later patch may rely on an earlier one).
pub fn boot(
    state: &StateDir,
    options: &ApplyOptions,
    observer: &mut dyn Observer,
) -> Result<BootReport, HostError> {
    let installed = state.installed()?;
    let mut entry = state.begin(Action::Boot, None)?;
    if boot_disabled(&sys::kernel_cmdline()?) {
        state.finish(&mut entry, true, "graft.disable=1: applied nothing")?;
        return Ok(BootReport {
            disabled: true,
            items: installed
                .into_iter()
                .map(|i| BootItem {
                    name: i.name,
                    result: "skipped".into(),
                    detail: Some("graft.disable=1 on the kernel command line".into()),
                })
                .collect(),
            ok: true,
        });
    }
    sys::livepatch_dir()?;
    let running = sys::running_kernel()?;
    let mut items = Vec::new();
    let mut ok = true;
    for i in installed {
        let item = |result: &str, detail: Option<String>| BootItem {
            name: i.name.clone(),
            result: result.into(),
            detail,
        };
        if !ok {
            items.push(item("skipped", Some("an earlier patch failed".into())));
            continue;
        }
        if i.manifest.kernel.build_id != running.build_id {
            items.push(item(
                "skipped",
                Some(format!(
                    "built for {} (build-id {}), not this kernel",
                    i.manifest.kernel.release, i.manifest.kernel.build_id
                )),
            ));
            continue;
        }
        if sys::patch(&i.name)?.is_some() {
            items.push(item("already-live", None));
            continue;
        }
        match apply(state, &state.installed_module(&i.name), options, observer) {
            Ok(r) if matches!(r.outcome, ApplyOutcome::Applied | ApplyOutcome::Forced) => {
                items.push(item("applied", None));
            }
            Ok(r) => {
                ok = false;
                items.push(item("failed", Some(format!("{:?}", r.outcome))));
            }
            Err(e) => {
                ok = false;
                items.push(item("failed", Some(e.to_string())));
            }
        }
    }
    state.finish(
        &mut entry,
        ok,
        if ok {
            "all applied"
        } else {
            "stopped at a failure"
        },
    )?;
    Ok(BootReport {
        disabled: false,
        items,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_switch_is_a_whole_word() {
        assert!(boot_disabled("console=ttyS0 graft.disable=1 quiet"));
        assert!(!boot_disabled("console=ttyS0 graft.disable=10"));
        assert!(!boot_disabled("xgraft.disable=1"));
    }
}
