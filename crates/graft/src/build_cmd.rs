//! `graft build`

use std::process::ExitCode;

use graft_build::{BuildOptions, BuildReport};

use crate::cli::BuildArgs;
use crate::kernel_cmd::{ensure_kernel, target_and_cache};

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    if let Some(dir) = &args.each {
        return crate::each_cmd::run(&args, dir);
    }
    let Some(output) = args.output.clone() else {
        anyhow::bail!("-o OUT.ko is required (or --each DIR)");
    };
    for patch in &args.patches {
        if !patch.is_file() {
            anyhow::bail!("{}: no such patch file", patch.display());
        }
    }
    if output.extension().is_none_or(|e| e != "ko") {
        anyhow::bail!("-o {}: the output must be a .ko file", output.display());
    }
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            anyhow::bail!(
                "-o {}: the directory {} does not exist",
                output.display(),
                dir.display()
            );
        }
    }
    let (target, cache) = target_and_cache(&args.kernel.target)?;
    let progress = crate::progress::for_output(args.json);
    let kernel = ensure_kernel(&cache, &target, &progress)?;
    let options = BuildOptions {
        patches: args.patches.clone(),
        output: output.clone(),
        name: args.name.clone(),
        replace: !args.no_replace && args.set.is_none(),
        set: args.set.clone(),
        keep_scratch: false,
    };
    let report = match graft_build::build(&cache, &kernel, &options, &progress) {
        Ok(report) => report,
        Err(e) if args.json => {
            let outcome = e.outcome();
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "outcome": outcome,
                    "error": e.to_string(),
                }))?
            );
            return Ok(ExitCode::from(outcome.exit_code()));
        }
        Err(e) => {
            match (&e, args.explain) {
                (graft_build::BuildError::Refused(refusals), true) => explain_refusals(refusals),
                (other, true) if other.outcome() == graft_build::Outcome::Refused => {
                    println!("refused   {other}");
                }
                _ => {}
            }
            return Err(
                anyhow::Error::new(e).context(format!("building a live patch for {target}"))
            );
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.explain {
        explain(&report);
    }
    let m = &report.manifest;
    println!(
        "built {} ({}, {}) for {} [{}]",
        report.module.display(),
        m.name,
        match (&m.set, m.replace) {
            (Some(set), _) => format!("replace set {set}"),
            (None, true) => "atomic replace".to_string(),
            (None, false) => "stacking".to_string(),
        },
        m.kernel.release,
        m.kernel.build_id
    );
    for f in &m.functions {
        println!(
            "  replaces {}:{} (sympos {}, {} -> {} bytes) from {}",
            f.object, f.name, f.sympos, f.old_size, f.new_size, f.unit
        );
    }
    for f in &m.new_functions {
        println!("  adds     {f}");
    }
    for note in &report.notes {
        println!("  note     {note}");
    }
    let total: f64 = report.timings.iter().map(|(_, s)| s).sum();
    println!(
        "  manifest {} ; {:.1} s",
        report.manifest_path.display(),
        total
    );
    Ok(ExitCode::SUCCESS)
}

fn explain(report: &BuildReport) {
    for unit in &report.units {
        println!("{} ({}):", unit.unit, unit.object);
        for f in &unit.functions {
            let verdict = format!("{:?}", f.verdict).to_lowercase();
            match &f.reason {
                Some(why) => println!("  {verdict:<9} {} : {why}", f.name),
                None => println!("  {verdict:<9} {}", f.name),
            }
        }
    }
}

/// Each refusal as `--explain` shows it: what, where, why, what to do.
fn explain_refusals(refusals: &[graft_build::RefusalReason]) {
    for r in refusals {
        let x = r.explain();
        println!("refused   {} ({})", x.subject, x.unit);
        if let Some(section) = &x.section {
            println!("  section {section}");
        }
        println!("  why     {}", x.reason);
        println!("  do      {}", x.remedy);
    }
}
