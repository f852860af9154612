//! `graft demo`: the main job on a target, end to end, narrated.
//!
//! Fetches the target, builds a live patch from a real source fix (the `/proc/<pid>/limits`
//! header loses its trailing blanks), boots the exact kernel in the lab, and shows the file
//! before the patch, with the patch live, and after it is reversed.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use graft_build::BuildOptions;
use graft_lab::{GuestFile, Lab, RunSpec};

use crate::kernel_cmd::{ensure_kernel, target_and_cache};

const FIX: &str = include_str!("../../../tests/cases/proc-pid-limits-header/fix.patch");

/// Shows the header line with its end marked, applies the patch, shows it again, reverses it.
const GUEST: &str = r#"show() { head -n 1 /proc/self/limits | sed 's/$/|  <- end of line/'; }
wait_for() { i=0; until eval "$1"; do i=$((i + 1)); [ $i -lt 300 ] || exit 20; sleep 0.1; done; }
p=/sys/kernel/livepatch/limits_header_fix
echo "   running kernel, unpatched:"; show
insmod /root/limits_header_fix.ko
wait_for '[ "$(cat $p/transition)" = 0 ]'
echo "   live patch applied (enabled=$(cat $p/enabled), transition done):"; show
echo 0 > $p/enabled
wait_for '[ ! -e $p ]'
rmmod limits_header_fix
echo "   live patch reversed and unloaded:"; show
"#;

pub fn run(target: &str) -> anyhow::Result<ExitCode> {
    let (target, cache) = target_and_cache(target)?;
    let progress = crate::progress::for_output(false);
    let lab = Lab::new(cache.clone(), progress.clone())?;
    println!("== 1. the target: {target} (fetched and prepared once, then cached)");
    let kernel = ensure_kernel(&cache, &target, &progress)?;
    let info = graft_kernel::KernelInfo::gather(&kernel)?;
    println!(
        "   {} build-id {}, LIVEPATCH={}, local compiler {}",
        info.release,
        info.build_id,
        info.config.livepatch,
        if info.compiler_matches {
            "matches the kernel's"
        } else {
            "DIFFERS"
        }
    );

    println!("== 2. the fix: /proc/<pid>/limits prints its header without trailing blanks");
    for line in FIX.lines().filter(|l| {
        (l.starts_with('+') || l.starts_with('-')) && !l.starts_with("+++") && !l.starts_with("---")
    }) {
        println!("   {line}");
    }
    let work = tempfile::Builder::new()
        .prefix("graft-demo-")
        .tempdir()
        .context("creating a scratch directory")?;
    let patch = work.path().join("fix.patch");
    std::fs::write(&patch, FIX)?;
    let module = work.path().join("limits_header_fix.ko");

    println!("== 3. graft build: compile only fs/proc/base.c, before and after; diff; prove against the running code");
    let started = Instant::now();
    let report = graft_build::build(
        &cache,
        &kernel,
        &BuildOptions {
            patches: vec![patch],
            output: module.clone(),
            name: None,
            replace: true,
            set: None,
            keep_scratch: false,
        },
        &progress,
    )?;
    for f in &report.manifest.functions {
        println!(
            "   replaces {}:{} (sympos {}) from {}",
            f.object, f.name, f.sympos, f.unit
        );
    }
    println!(
        "   built and checked in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    println!("== 4. boot {target} in QEMU and apply the patch to the running kernel");
    let mut spec = RunSpec::new(kernel.lab_kernel(), GUEST);
    spec.files.push(GuestFile {
        source: module,
        dest: "/root/limits_header_fix.ko".into(),
    });
    let mut stdout = std::io::stdout().lock();
    let outcome = lab.run(&spec, &mut |bytes| {
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    })?;
    drop(stdout);
    if outcome.exit_code != 0 {
        anyhow::bail!(
            "the guest run failed with status {}; kernel log: {}",
            outcome.exit_code,
            outcome.log.display()
        );
    }
    println!(
        "== done: guest booted in {:.1} s, whole run {:.1} s; guest kernel log {}",
        outcome.boot_time.as_secs_f64(),
        outcome.total_time.as_secs_f64(),
        outcome.log.display()
    );
    Ok(ExitCode::SUCCESS)
}
