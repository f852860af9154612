//! `graft bench build`

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
