//! Host commands: apply, revert, status, list, install, uninstall, boot.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use graft_host::ops::{self, ApplyOutcome, RevertOutcome};
use graft_host::tasks::StallReport;
use graft_host::{ApplyOptions, Observer, StateDir, Status, TransitionLimits};
use graft_progress::{SharedProgress, Task, Unit};

use crate::cli::{
    ApplyArgs, BootArgs, InstallArgs, RevertArgs, StateArg, StatusArgs, TransitionArgs,
    UninstallArgs,
};

/// Prints a line to stdout; a closed pipe (`graft status | head`) is not an error worth a
/// panic, and must never interrupt an action.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// The transition timed out and was undone: the kernel is as before.
const EXIT_TIMED_OUT_UNDONE: u8 = 3;
/// The transition timed out and is still running.
const EXIT_STILL_IN_TRANSITION: u8 = 4;
/// Live, but the superseded set patch could not be retired.
const EXIT_RETIREMENT_STALLED: u8 = 5;

/// Shows a transition as a live line and stall reports on stderr.
struct Watcher {
    progress: SharedProgress,
    task: Option<(String, Box<dyn Task>)>,
    quiet: bool,
}

impl Watcher {
    fn new(json: bool) -> Self {
        Self {
            progress: crate::progress::for_output(json),
            task: None,
            quiet: json,
        }
    }

    fn close(&mut self) {
        if let Some((_, task)) = self.task.take() {
            task.finish("");
        }
    }
}

impl Observer for Watcher {
    fn progress(&mut self, patch: &str, patching: bool, pending: Option<usize>, elapsed: Duration) {
        let label = format!(
            "{} {patch}",
            if patching { "patching" } else { "unpatching" }
        );
        if self.task.as_ref().is_none_or(|(l, _)| *l != label) {
            self.close();
            let task = self.progress.start(&label, None, Unit::Items);
            self.task = Some((label, task));
        }
        if let (Some((_, task)), Some(n)) = (self.task.as_mut(), pending) {
            task.message(&format!(
                "{n} task{} pending, {:.0} s",
                if n == 1 { "" } else { "s" },
                elapsed.as_secs_f64()
            ));
        }
    }

    fn stalled(&mut self, report: &StallReport) {
        self.close();
        eprint!("graft: {}", report.render());
    }

    fn note(&mut self, message: &str) {
        self.close();
        if !self.quiet {
            eprintln!("graft: {message}");
        }
    }
}

fn limits(t: &TransitionArgs) -> anyhow::Result<TransitionLimits> {
    if t.timeout == 0 {
        anyhow::bail!("--timeout must be at least 1 second");
    }
    Ok(TransitionLimits {
        timeout: Duration::from_secs(t.timeout),
        grace: Duration::from_secs(t.grace.min(t.timeout)),
    })
}

/// Opens the state directory and reconciles interrupted actions, reporting them.
fn open_state(state: &StateArg, watcher: &mut Watcher) -> anyhow::Result<(StateDir, Vec<String>)> {
    let dir = StateDir::open(&state.dir, &mut |msg| eprintln!("graft: {msg}"))?;
    tracing::debug!("state directory open");
    let reconciled = ops::reconcile(&dir, TransitionLimits::default(), watcher)
        .context("reconciling an interrupted action")?;
    tracing::debug!("reconciled");
    Ok((dir, reconciled))
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(value)?;
    out!("{json}");
    Ok(())
}

pub fn apply(args: ApplyArgs) -> anyhow::Result<ExitCode> {
    let limits = limits(&args.transition)?;
    let mut watcher = Watcher::new(args.json);
    let (state, reconciled) = open_state(&args.state, &mut watcher)?;
    let options = ApplyOptions {
        limits,
        no_revert_on_timeout: args.no_revert_on_timeout,
        force: args.force && args.i_understand_force_is_permanent,
    };
    let report = ops::apply(&state, &args.module, &options, &mut watcher)
        .with_context(|| format!("applying {}", args.module.display()))?;
    watcher.close();
    if args.json {
        print_json(&serde_json::json!({ "reconciled": reconciled, "apply": report }))?;
    } else {
        let retired = if report.retired.is_empty() {
            String::new()
        } else {
            format!("; retired {}", report.retired.join(", "))
        };
        match report.outcome {
            ApplyOutcome::Applied => out!(
                "applied {} in {:.2} s{retired}",
                report.name, report.elapsed_secs
            ),
            ApplyOutcome::Forced => out!(
                "applied {} with force after the timeout: its module can never be removed{retired}",
                report.name
            ),
            ApplyOutcome::TimedOutReversed => out!(
                "{} did not go live within {} s: reversed the transition and unloaded it; the kernel is as before",
                report.name, args.transition.timeout
            ),
            ApplyOutcome::TimedOutLeftInTransition => out!(
                "{} did not go live within {} s: left in transition as asked; `graft revert {}` reverses it",
                report.name, args.transition.timeout, report.name
            ),
            ApplyOutcome::ReversalStalled => out!(
                "{} did not go live within {} s, and reversing it stalled too: still in transition; `graft status` shows the blockers",
                report.name, args.transition.timeout
            ),
            ApplyOutcome::RetirementStalled => out!(
                "applied {}, but retiring the older patch of its set stalled: that patch was re-enabled and stays underneath; `graft revert` it later",
                report.name
            ),
        }
    }
    Ok(match report.outcome {
        ApplyOutcome::Applied | ApplyOutcome::Forced => ExitCode::SUCCESS,
        ApplyOutcome::TimedOutReversed => ExitCode::from(EXIT_TIMED_OUT_UNDONE),
        ApplyOutcome::TimedOutLeftInTransition | ApplyOutcome::ReversalStalled => {
            ExitCode::from(EXIT_STILL_IN_TRANSITION)
        }
        ApplyOutcome::RetirementStalled => ExitCode::from(EXIT_RETIREMENT_STALLED),
    })
}

pub fn revert(args: RevertArgs) -> anyhow::Result<ExitCode> {
    let limits = limits(&args.transition)?;
    let mut watcher = Watcher::new(args.json);
    let (state, reconciled) = open_state(&args.state, &mut watcher)?;
    let report = ops::revert(&state, &args.name, limits, &mut watcher)
        .with_context(|| format!("reverting {}", args.name))?;
    watcher.close();
    if args.json {
        print_json(&serde_json::json!({ "reconciled": reconciled, "revert": report }))?;
    } else {
        match report.outcome {
            RevertOutcome::Reverted => out!("reverted {} in {:.2} s", report.name, report.elapsed_secs),
            RevertOutcome::RevertedModuleKept => out!(
                "reverted {}; its module stays loaded because the patch was forced",
                report.name
            ),
            RevertOutcome::TimedOutRestored => out!(
                "{} could not be disabled within {} s: re-enabled it; the kernel is as before",
                report.name, args.transition.timeout
            ),
            RevertOutcome::Stalled => out!(
                "{} could not be disabled within {} s, and re-enabling it stalled too: still in transition",
                report.name, args.transition.timeout
            ),
        }
    }
    Ok(match report.outcome {
        RevertOutcome::Reverted | RevertOutcome::RevertedModuleKept => ExitCode::SUCCESS,
        RevertOutcome::TimedOutRestored => ExitCode::from(EXIT_TIMED_OUT_UNDONE),
        RevertOutcome::Stalled => ExitCode::from(EXIT_STILL_IN_TRANSITION),
    })
}

pub fn status(args: StatusArgs, brief: bool) -> anyhow::Result<ExitCode> {
    let mut watcher = Watcher::new(args.json);
    // Reconcile only when no other graft is at work (status must never wait on an apply), and
    // never create the state directory just to look.
    let mut reconciled = Vec::new();
    if args.state.dir.is_dir() {
        match StateDir::try_open(&args.state.dir) {
            Ok(Some(state)) => {
                reconciled = ops::reconcile(&state, TransitionLimits::default(), &mut watcher)
                    .context("reconciling an interrupted action")?;
            }
            Ok(None) => {
                eprintln!("graft: another graft is at work; showing the kernel as it is now")
            }
            Err(e) => eprintln!("graft: not reconciling interrupted actions: {e}"),
        }
    }
    let status = Status::read(&args.state.dir, reconciled)?;
    if args.json {
        print_json(&status)?;
    } else if brief {
        print_list(&status);
    } else {
        print_status(&status);
    }
    Ok(ExitCode::SUCCESS)
}

fn mode(p: &graft_host::status::PatchStatus) -> String {
    match (&p.set, p.replace) {
        (Some(set), _) => format!("set {set}"),
        (None, Some(true)) => "replace".into(),
        (None, Some(false)) => "stacking".into(),
        (None, None) => "not graft's".into(),
    }
}

fn state_word(p: &graft_host::status::PatchStatus) -> &'static str {
    match (p.enabled, p.transition) {
        (true, false) => "enabled",
        (true, true) => "patching",
        (false, true) => "unpatching",
        (false, false) => "disabled",
    }
}

fn print_list(status: &Status) {
    for p in &status.patches {
        let functions: usize = p.objects.iter().map(|o| o.functions.len()).sum();
        out!(
            "{:<32} {:<10} {:<14} {functions} function{}",
            p.name,
            state_word(p),
            mode(p),
            if functions == 1 { "" } else { "s" }
        );
    }
}

fn print_status(status: &Status) {
    for line in &status.reconciled {
        out!("reconciled: {line}");
    }
    out!(
        "kernel {} (build-id {})",
        status.kernel.release,
        status.kernel.build_id
    );
    if status.patches.is_empty() {
        out!("no livepatches loaded");
    }
    for p in &status.patches {
        let forced = if p.forced {
            ", FORCED (module can never be removed)"
        } else {
            ""
        };
        out!(
            "{}. {} [{}, {}{forced}]",
            p.position,
            p.name,
            state_word(p),
            mode(p)
        );
        for o in &p.objects {
            let names: Vec<String> = o
                .functions
                .iter()
                .map(|f| format!("{},{}", f.name, f.sympos))
                .collect();
            out!(
                "     {} ({}): {}",
                o.name,
                if o.patched { "patched" } else { "not loaded" },
                names.join(" ")
            );
        }
        if let Some(pending) = &p.pending_tasks {
            out!("     {} task(s) pending:", pending.len());
            for t in pending.iter().take(20) {
                out!("       pid {} [{}] state {}", t.tid, t.comm, t.state_text());
            }
        }
    }
    let stacked: Vec<_> = status
        .functions
        .iter()
        .filter(|f| f.patches.len() > 1 || f.transition.is_some())
        .collect();
    if !stacked.is_empty() {
        out!("live versions of functions patched more than once:");
        for f in stacked {
            let now = f
                .live
                .clone()
                .or_else(|| f.transition.clone())
                .unwrap_or_default();
            out!(
                "  {}:{} -> {now} (stack: {})",
                f.object,
                f.name,
                f.patches.join(" < ")
            );
        }
    }
    for m in &status.disabled_modules {
        out!("module {m}: a livepatch module without a patch (disabled or replaced); `graft revert {m}` unloads it");
    }
    if let Some(h) = &status.health {
        if h.ok {
            out!(
                "health since applying {}: no kernel errors, no new taint",
                h.since_patch
            );
        } else {
            out!("health since applying {}: PROBLEMS", h.since_patch);
            if let Some(e) = &h.kernel_log_unreadable {
                out!("  unknown: {e}");
            }
            for l in &h.kernel_log_errors {
                out!("  kernel log: {l}");
            }
            for t in &h.new_taint {
                out!("  new taint: {t}");
            }
        }
    }
    if !status.installed.is_empty() {
        out!("installed (applied at boot, in order):");
        for i in &status.installed {
            let note = if i.for_running_kernel {
                ""
            } else {
                " (for another kernel: skipped at boot)"
            };
            out!("  {} for {}{note}", i.name, i.release);
        }
    }
}

pub fn install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let mut watcher = Watcher::new(args.json);
    let (state, _) = open_state(&args.state, &mut watcher)?;
    let report = ops::install(&state, &args.module)
        .with_context(|| format!("installing {}", args.module.display()))?;
    if args.json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    out!("installed {} in {}", report.name, state.root().display());
    if !report.superseded.is_empty() {
        out!(
            "  it supersedes (uninstalled): {}",
            report.superseded.join(", ")
        );
    }
    if report.for_running_kernel == Some(false) {
        out!("  it is for another kernel: `graft boot` applies it only when that kernel runs");
    }
    out!("  boot order: {}", report.order.join(", "));
    Ok(ExitCode::SUCCESS)
}

pub fn uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let mut watcher = Watcher::new(false);
    let (state, _) = open_state(&args.state, &mut watcher)?;
    ops::uninstall(&state, &args.name)?;
    out!("uninstalled {}", args.name);
    Ok(ExitCode::SUCCESS)
}

pub fn boot(args: BootArgs) -> anyhow::Result<ExitCode> {
    let limits = limits(&args.transition)?;
    let mut watcher = Watcher::new(args.json);
    let (state, _) = open_state(&args.state, &mut watcher)?;
    let options = ApplyOptions {
        limits,
        ..ApplyOptions::default()
    };
    let report = ops::boot(&state, &options, &mut watcher)?;
    watcher.close();
    if args.json {
        print_json(&report)?;
    } else {
        if report.disabled {
            out!("graft.disable=1 is on the kernel command line: applying none of the {} installed patches", report.items.len());
        }
        for i in &report.items {
            match &i.detail {
                Some(d) => out!("{}: {} ({d})", i.name, i.result),
                None => out!("{}: {}", i.name, i.result),
            }
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
