//! `graft lab ...`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use graft_lab::{GuestFile, Lab, RunSpec};

use crate::cli::{LabBridgeArgs, LabCommand, LabRunArgs};
use crate::kernel_cmd::{ensure_kernel, target_and_cache};

/// The script ran past its timeout.
pub const EXIT_TIMEOUT: u8 = 124;
/// The guest kernel panicked.
pub const EXIT_PANIC: u8 = 125;
/// The guest never reached the script, or stopped before it finished.
pub const EXIT_GUEST_FAILED: u8 = 126;

pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Run(args) => run_script(args),
        LabCommand::Bridge(args) => bridge(&args),
    }
}

/// The guest's end of a serial bridge.
fn bridge(args: &LabBridgeArgs) -> anyhow::Result<ExitCode> {
    let ended = graft_lab::bridge::serve_guest(args.port, &args.device).with_context(|| {
        format!(
            "bridging 127.0.0.1:{} over {}",
            args.port,
            args.device.display()
        )
    })?;
    match ended {
        graft_lab::bridge::Ended::Shutdown => Ok(ExitCode::SUCCESS),
        graft_lab::bridge::Ended::LineClosed => {
            anyhow::bail!("the serial line {} closed", args.device.display())
        }
    }
}

/// Parses `SRC[:DEST]`; DEST defaults to `/root/<file name>`.
fn guest_file(spec: &str) -> anyhow::Result<GuestFile> {
    let (source, dest) = match spec.split_once(':') {
        Some((s, d)) => (PathBuf::from(s), d.to_string()),
        None => {
            let source = PathBuf::from(spec);
            let name = source
                .file_name()
                .with_context(|| format!("--file {spec}: no file name to copy to"))?;
            let dest = format!("/root/{}", name.to_string_lossy());
            (source, dest)
        }
    };
    if !source.is_file() {
        anyhow::bail!(
            "--file {spec}: {} does not exist or is not a file",
            source.display()
        );
    }
    if !dest.starts_with('/') {
        anyhow::bail!("--file {spec}: the guest path `{dest}` must be absolute");
    }
    Ok(GuestFile { source, dest })
}

fn script_text(args: &LabRunArgs) -> anyhow::Result<String> {
    match &args.script_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the script file {}", path.display())),
        None if args.script.is_empty() => {
            anyhow::bail!(
                "no script: give one after `--`, e.g. graft lab run -- 'cat /proc/version'"
            )
        }
        None => Ok(args.script.join(" ")),
    }
}

#[derive(serde::Serialize)]
struct RunReport<'a> {
    outcome: &'a str,
    exit_code: Option<i32>,
    output: String,
    error: Option<String>,
    kernel_log: Option<&'a Path>,
    boot_seconds: Option<f64>,
    total_seconds: Option<f64>,
}

fn run_script(args: LabRunArgs) -> anyhow::Result<ExitCode> {
    // Check every input before any slow work.
    let script = script_text(&args)?;
    let files = args
        .files
        .iter()
        .map(|f| guest_file(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (target, cache) = target_and_cache(&args.kernel.target)?;
    let progress = crate::progress::for_output(args.json);
    let lab = Lab::new(cache.clone(), progress.clone())?;
    let kernel = ensure_kernel(&cache, &target, &progress)?;
    let modules = if args.modules.is_empty() {
        Vec::new()
    } else {
        let index = kernel.module_index()?;
        args.modules
            .iter()
            .map(|m| {
                kernel
                    .guest_module(&index, m)
                    .with_context(|| format!("--module {m}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let mut spec = RunSpec::new(kernel.lab_kernel(), script);
    spec.files = files;
    spec.modules = modules;
    spec.cmdline = args.cmdline.clone();
    spec.timeout = Duration::from_secs(args.timeout);
    spec.boot_timeout = Duration::from_secs(args.boot_timeout);
    spec.memory_mib = args.memory;
    spec.disks = args.disks.clone();
    if !args.no_graft {
        spec.graft_binary = Some(std::env::current_exe().context("locating the graft binary")?);
    }

    let mut captured = Vec::new();
    let result = {
        let mut stdout = std::io::stdout().lock();
        let json = args.json;
        lab.run(&spec, &mut |bytes| {
            if json {
                captured.extend_from_slice(bytes);
            } else {
                let _ = stdout.write_all(bytes);
                let _ = stdout.flush();
            }
        })
    };
    if args.show_dmesg {
        let log = match &result {
            Ok(outcome) => Some(outcome.log.clone()),
            Err(e) => e.kernel_log().map(Path::to_path_buf),
        };
        if let Some(log) = log {
            eprintln!("--- guest kernel log ({}) ---", log.display());
            eprint!("{}", std::fs::read_to_string(&log).unwrap_or_default());
            eprintln!("--- end of guest kernel log ---");
        }
    }
    if args.json {
        let output = String::from_utf8_lossy(&captured).into_owned();
        let report = match &result {
            Ok(o) => RunReport {
                outcome: "exited",
                exit_code: Some(o.exit_code),
                output,
                error: None,
                kernel_log: Some(&o.log),
                boot_seconds: Some(o.boot_time.as_secs_f64()),
                total_seconds: Some(o.total_time.as_secs_f64()),
            },
            Err(e) => RunReport {
                outcome: match e {
                    graft_lab::LabError::ScriptTimeout { .. } => "timeout",
                    graft_lab::LabError::KernelPanic { .. } => "panic",
                    graft_lab::LabError::NeverReachedScript { .. } => "never-reached-script",
                    graft_lab::LabError::GuestStopped { .. } => "guest-stopped",
                    _ => "error",
                },
                exit_code: None,
                output,
                error: Some(e.to_string()),
                kernel_log: e.kernel_log(),
                boot_seconds: None,
                total_seconds: None,
            },
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    let outcome = result?;
    tracing::info!(
        boot = ?outcome.boot_time,
        total = ?outcome.total_time,
        "lab run finished"
    );
    Ok(ExitCode::from(outcome.exit_code.clamp(0, 255) as u8))
}
