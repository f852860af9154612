//! `graft demo`: the whole path on the default target, end to end, narrated.
//!
//! Fetches the target, builds a small livepatch (replacing `cmdline_proc_show`) with the
//! target's kbuild, boots the exact kernel in the lab, and shows `/proc/cmdline` before, while
//! and after the patch is live.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use graft_lab::{GuestFile, Lab, RunSpec};

use crate::kernel_cmd::{ensure_kernel, target_and_cache};

const PROOF_SOURCE: &str =
    include_str!("../../../tests/fixtures/livepatch-cmdline/graft_proof_cmdline.c");
const PROOF_KBUILD: &str = include_str!("../../../tests/fixtures/livepatch-cmdline/Kbuild");
const PROOF_CHECK: &str = include_str!("../../../tests/fixtures/livepatch-cmdline/check.sh");

pub fn run(target: &str) -> anyhow::Result<ExitCode> {
    let (target, cache) = target_and_cache(target)?;
    let progress = crate::progress::for_output(false);
    let lab = Lab::new(cache.clone(), progress.clone())?;
    println!("== 1. fetch {target} (cached after the first run)");
    let kernel = ensure_kernel(&cache, &target, &progress)?;
    let info = graft_kernel::KernelInfo::gather(&kernel)?;
    println!(
        "   {} build-id {}, LIVEPATCH={}, compiler {}",
        info.release,
        info.build_id,
        info.config.livepatch,
        if info.compiler_matches {
            "matches"
        } else {
            "differs"
        }
    );

    println!("== 2. build a livepatch module with the target's kbuild");
    let work = tempfile::Builder::new()
        .prefix("graft-demo-")
        .tempdir()
        .context("creating a scratch directory")?;
    let src = work.path().join("src");
    std::fs::create_dir_all(&src)?;
    std::fs::write(src.join("graft_proof_cmdline.c"), PROOF_SOURCE)?;
    std::fs::write(src.join("Kbuild"), PROOF_KBUILD)?;
    let modules = kernel.build_external_module(&src, &work.path().join("build"))?;
    let module = modules.first().context("no module was built")?;
    println!(
        "   built {}",
        module
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );

    println!("== 3. boot {target} in QEMU, apply the livepatch, reverse it");
    let mut spec = RunSpec::new(kernel.lab_kernel(), PROOF_CHECK);
    spec.files.push(GuestFile {
        source: module.clone(),
        dest: "/root/graft_proof_cmdline.ko".into(),
    });
    let mut stdout = std::io::stdout().lock();
    let outcome = lab.run(&spec, &mut |bytes| {
        let _ = stdout.write_all(bytes);
        let _ = stdout.flush();
    })?;
    drop(stdout);
    if outcome.exit_code != 0 {
        anyhow::bail!(
            "the guest check failed with status {}; kernel log: {}",
            outcome.exit_code,
            outcome.log.display()
        );
    }
    println!(
        "== done: booted in {:.1} s, whole run {:.1} s; kernel log {}",
        outcome.boot_time.as_secs_f64(),
        outcome.total_time.as_secs_f64(),
        outcome.log.display()
    );
    Ok(ExitCode::SUCCESS)
}
