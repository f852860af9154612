//! `graft kernel ...`

use std::process::ExitCode;

use anyhow::Context;
use graft_cache::Cache;
use graft_kernel::{Kernel, KernelInfo, Target};
use graft_progress::SharedProgress;

use crate::cli::KernelCommand;

/// Parses a target name and opens the cache.
pub fn target_and_cache(name: &str) -> anyhow::Result<(Target, Cache)> {
    let target: Target = name.parse()?;
    let cache = Cache::from_env()?;
    Ok((target, cache))
}

/// Opens `target`, fetching it first when the cache does not have it complete.
pub fn ensure_kernel(
    cache: &Cache,
    target: &Target,
    progress: &SharedProgress,
) -> anyhow::Result<Kernel> {
    graft_kernel::fetch(cache, target, progress, false)
        .with_context(|| format!("fetching {target}"))?;
    Ok(Kernel::open(cache, target)?)
}

pub fn run(command: KernelCommand) -> anyhow::Result<ExitCode> {
    match command {
        KernelCommand::Fetch {
            kernel,
            refresh,
            json,
        } => {
            let (target, cache) = target_and_cache(&kernel.target)?;
            let progress = crate::progress::for_output(json);
            let report = graft_kernel::fetch(&cache, &target, &progress, refresh)
                .with_context(|| format!("fetching {target}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.built.is_empty() {
                println!("{target} is already fetched: {}", report.dir.display());
            } else {
                for (stage, seconds) in &report.built {
                    println!("  {stage:<20} {seconds:>7.1} s");
                }
                println!(
                    "{target} fetched in {:.1} s: {}",
                    report.seconds,
                    report.dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::Info { kernel, json } => {
            let (target, cache) = target_and_cache(&kernel.target)?;
            let kernel = Kernel::open(&cache, &target)?;
            let info = KernelInfo::gather(&kernel)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print_info(&info);
            }
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::Symbols {
            kernel,
            module,
            names,
            json,
        } => {
            let (target, cache) = target_and_cache(&kernel.target)?;
            let kernel = Kernel::open(&cache, &target)?;
            let (object, table) = match &module {
                None => ("vmlinux".to_string(), kernel.symbols()?),
                Some(name) => {
                    let index = kernel.module_index()?;
                    let info = index.get(name).ok_or_else(|| {
                        graft_kernel::KernelError::UnknownModule { name: name.clone() }
                    })?;
                    let mut all = kernel.module_symbols()?;
                    (
                        info.name.clone(),
                        all.remove(&info.name).unwrap_or_default(),
                    )
                }
            };
            let mut rows = Vec::new();
            let mut missing = Vec::new();
            for name in &names {
                let found = table.lookup(name);
                if found.is_empty() {
                    missing.push(name.clone());
                }
                rows.extend(found.into_iter().map(|s| SymbolRow {
                    object: object.clone(),
                    name: s.name.clone(),
                    sympos: s.sympos(),
                    count: s.count,
                    address: format!("{:016x}", s.address),
                    kind: s.kind,
                }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<10} {:<40} {:>6} {:>16} type",
                    "object", "name", "sympos", "address"
                );
                for r in &rows {
                    println!(
                        "{:<10} {:<40} {:>6} {:>16} {}",
                        r.object, r.name, r.sympos, r.address, r.kind
                    );
                }
            }
            if !missing.is_empty() {
                anyhow::bail!(
                    "{object} of {target} has no symbol named {}",
                    missing.join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(serde::Serialize)]
struct SymbolRow {
    object: String,
    name: String,
    sympos: u32,
    count: u32,
    address: String,
    kind: char,
}

fn print_info(info: &KernelInfo) {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let c = &info.config;
    println!("target          {}", info.target);
    println!("release         {}", info.release);
    println!("source version  {}", info.source_version);
    println!(
        "build-id        {} ({} vmlinuz; the booted kernel reports the same)",
        info.build_id, info.compression
    );
    println!("compiler        {}", info.compiler);
    println!(
        "local compiler  {} [{}]",
        info.local_compiler.as_deref().unwrap_or("not found"),
        if info.compiler_matches {
            "matches"
        } else {
            "DIFFERS: graft build will refuse"
        }
    );
    println!(
        "config          LIVEPATCH={} DYNAMIC_FTRACE_WITH_REGS={} HAVE_RELIABLE_STACKTRACE={} UNWINDER={}",
        c.livepatch, c.dynamic_ftrace_with_regs, c.have_reliable_stacktrace, c.unwinder
    );
    println!(
        "                RETPOLINE={} RETHUNK={} X86_KERNEL_IBT={} MODULE_SIG_FORCE={}",
        c.retpoline, c.rethunk, c.ibt, c.module_sig_force
    );
    let s = &info.symbols;
    println!(
        "symbols         {} vmlinux ({} names repeat), {} modules with {} symbols",
        s.vmlinux, s.vmlinux_repeated_names, s.modules, s.module_symbols
    );
    let p = &info.cache;
    println!(
        "cache           {} ({:.2} GiB; source tree {:.2} GiB)",
        p.dir.display(),
        gib(p.size_bytes),
        gib(p.source_bytes)
    );
    println!("  vmlinuz       {}", p.vmlinuz.display());
    println!("  vmlinux       {}", p.vmlinux.display());
    println!("  source        {}", p.source.display());
    println!("  kbuild        {}", p.kbuild.display());
    println!("  modules       {}", p.modules.display());
}
