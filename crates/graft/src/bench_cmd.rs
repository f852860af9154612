//! `graft bench build` and `graft bench apply`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::cli::BenchBuildArgs;
use crate::kernel_cmd::{ensure_kernel, target_and_cache};

/// The patches of a FIX argument and a label for it.
fn fix_patches(fix: &str) -> anyhow::Result<(String, Vec<PathBuf>)> {
    let path = PathBuf::from(fix);
    let patches: Vec<PathBuf> = if path.is_dir() {
        vec![path.join("fix.patch")]
    } else {
        fix.split(',').map(PathBuf::from).collect()
    };
    for p in &patches {
        if !p.is_file() {
            anyhow::bail!("{fix}: no patch file {}", p.display());
        }
    }
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| fix.to_string());
    Ok((label, patches))
}

pub fn run(args: BenchBuildArgs) -> anyhow::Result<ExitCode> {
    let fixes = args
        .fixes
        .iter()
        .map(|f| fix_patches(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (target, cache) = target_and_cache(&args.kernel.target)?;
    let progress = graft_progress::silent();
    let kernel = ensure_kernel(&cache, &target, &crate::progress::for_output(args.json))?;
    let mut rows = Vec::new();
    for (label, patches) in &fixes {
        eprintln!("graft: benchmarking {label} ...");
        let row =
            graft_build::bench::bench_build(&cache, &kernel, label, patches, args.runs, &progress)
                .with_context(|| format!("benchmarking {label}"))?;
        rows.push(row);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("| fix | units | floor: compile x2 | floor: link | floor | graft warm | warm/floor | graft cold | cold/floor |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} | {:.2} s | {:.2} |",
            r.label,
            r.units,
            r.floor_compile_s,
            r.floor_link_s,
            r.floor_s,
            r.graft_warm_s,
            r.warm_ratio,
            r.graft_cold_s,
            r.cold_ratio
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One side of the apply benchmark: seconds per run.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct ApplyTimes {
    floor_s: Vec<f64>,
    graft_s: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

const APPLY_MARK: &str = "@@graft-bench-apply";

pub fn apply(args: crate::cli::BenchApplyArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    let (manifest, _) = graft_manifest::Manifest::for_module(&args.module)
        .with_context(|| format!("benchmarking {}", args.module.display()))?;
    let (target, cache) = target_and_cache(&args.kernel.target)?;
    let progress = crate::progress::for_output(args.json);
    let kernel = ensure_kernel(&cache, &target, &progress)?;
    if manifest.kernel.build_id != kernel.meta().build_id {
        anyhow::bail!(
            "{}: built for {} (build-id {}), not the target {target}",
            args.module.display(),
            manifest.kernel.release,
            manifest.kernel.build_id
        );
    }
    let lab = graft_lab::Lab::new(cache.clone(), progress)?;
    let graft = std::env::current_exe().context("locating the graft binary")?;
    let mut rows = Vec::new();
    for (label, cmdline) in VARIANTS {
        eprintln!(
            "graft: timing {} runs each of the floor and graft apply in the lab ({label}) ...",
            args.runs
        );
        let mut spec = graft_lab::RunSpec::new(
            kernel.lab_kernel(),
            format!(
                "echo {APPLY_MARK}\ngraft bench apply-guest --runs {} /root/bench/{name}.ko || exit 1\necho {APPLY_MARK}\n",
                args.runs,
                name = manifest.name
            ),
        );
        spec.cmdline = cmdline.to_string();
        spec.graft_binary = Some(graft.clone());
        for (source, ext) in [
            (args.module.clone(), "ko"),
            (graft_manifest::manifest_path(&args.module), "json"),
        ] {
            spec.files.push(graft_lab::GuestFile {
                source,
                dest: format!("/root/bench/{}.{ext}", manifest.name),
            });
        }
        let mut output = Vec::new();
        let outcome = lab.run(&spec, &mut |b| output.extend_from_slice(b))?;
        let output = String::from_utf8_lossy(&output).into_owned();
        if outcome.exit_code != 0 {
            anyhow::bail!("the benchmark failed in the guest:\n{output}");
        }
        let json = output
            .split(APPLY_MARK)
            .nth(1)
            .context("the guest printed no timings")?;
        let times: ApplyTimes = serde_json::from_str(json.trim())
            .with_context(|| format!("reading the guest's timings: {json}"))?;
        let (floor, graft) = (median(&times.floor_s), median(&times.graft_s));
        rows.push(serde_json::json!({
            "module": manifest.name,
            "guest": label,
            "cmdline": cmdline,
            "runs": args.runs,
            "floor_median_s": floor,
            "graft_median_s": graft,
            "ratio": graft / floor,
            "floor_s": times.floor_s,
            "graft_s": times.graft_s,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("| module | guest | runs | floor (insmod + poll) | graft apply | graft/floor |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.3} s | {:.3} s | {:.2} |",
            manifest.name,
            r["guest"].as_str().unwrap_or_default(),
            args.runs,
            r["floor_median_s"].as_f64().unwrap_or_default(),
            r["graft_median_s"].as_f64().unwrap_or_default(),
            r["ratio"].as_f64().unwrap_or_default(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The guests the apply benchmark runs in. QEMU's TCG translates code per virtual address, so
/// with address-space randomization every new process pays to translate all the code it runs
/// again: a cost no real CPU has, growing with the size of the program, that swamps the
/// comparison of a 5 MB graft against busybox. With `norandmaps` translations are reused
/// across runs, as on hardware. Both are measured and shown.
const VARIANTS: &[(&str, &str)] = &[
    (
        "norandmaps (translations reused, as on hardware)",
        "norandmaps",
    ),
    ("randomized (TCG retranslates each process)", ""),
];

/// Runs a command to completion; its wall time in seconds.
fn timed(command: &mut std::process::Command, what: &str) -> anyhow::Result<f64> {
    let started = std::time::Instant::now();
    let output = command
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    if !output.status.success() {
        anyhow::bail!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(elapsed)
}

pub fn apply_guest(args: crate::cli::BenchApplyGuestArgs) -> anyhow::Result<ExitCode> {
    let (manifest, _) = graft_manifest::Manifest::for_module(&args.module)?;
    let name = &manifest.name;
    let module = args.module.display().to_string();
    let graft = std::env::current_exe().context("locating the graft binary")?;
    let state = "/tmp/graft-bench-state";
    // The floor: what any loader must do, in the cheapest shell form (no fork while polling).
    let floor = |c: &mut std::process::Command| {
        c.args([
            "-c",
            r#"insmod "$1" || exit 1
t=/sys/kernel/livepatch/$2/transition
until read v < "$t" && [ "$v" = 0 ]; do :; done"#,
            "sh",
            &module,
            name,
        ]);
    };
    let floor_undo = format!(
        "echo 0 > /sys/kernel/livepatch/{name}/enabled; while [ -e /sys/kernel/livepatch/{name} ]; do :; done; rmmod {name}"
    );
    let mut times = ApplyTimes {
        floor_s: Vec::new(),
        graft_s: Vec::new(),
    };
    // One untimed round first: the page cache and the kernel's caches warm up for both.
    for round in 0..=args.runs {
        let mut sh = std::process::Command::new("sh");
        floor(&mut sh);
        let f = timed(&mut sh, "the floor")?;
        timed(
            std::process::Command::new("sh").args(["-c", &floor_undo]),
            "undoing the floor",
        )?;
        let g = timed(
            std::process::Command::new(&graft).args(["apply", "--state-dir", state, &module]),
            "graft apply",
        )?;
        timed(
            std::process::Command::new(&graft).args(["revert", "--state-dir", state, name]),
            "graft revert",
        )?;
        if round > 0 {
            times.floor_s.push(f);
            times.graft_s.push(g);
        }
    }
    println!("{}", serde_json::to_string(&times)?);
    Ok(ExitCode::SUCCESS)
}
