//! `graft kernel ...`

use std::process::ExitCode;

use anyhow::Context;
use graft_cache::Cache;
use graft_kernel::{Available, Kernel, KernelInfo, Provider, Target};
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
        KernelCommand::List { flavour, json } => {
            let cache = Cache::from_env()?;
            let kernels = graft_kernel::list(&cache, Provider::Debian, &flavour)
                .context("listing the kernels apt can see")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&kernels)?);
            } else {
                print_list(&kernels);
            }
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::Remove { kernel, json } => {
            let (target, cache) = target_and_cache(&kernel.target)?;
            let removed = graft_kernel::remove(&cache, &target)
                .with_context(|| format!("removing {target} from the cache"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&removed)?);
            } else if removed.existed {
                println!(
                    "removed {target}: {:.2} GiB freed",
                    removed.bytes as f64 / (1u64 << 30) as f64
                );
            } else {
                println!("{target} was not in the cache ({})", cache.root().display());
            }
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::Changes {
            kernel,
            to,
            output,
            split,
            json,
        } => {
            let (target, cache) = target_and_cache(&kernel.target)?;
            let kernel = Kernel::open(&cache, &target)?;
            let progress = crate::progress::for_output(json);
            let changes = graft_kernel::changes::changes(&cache, &kernel, &to, &progress)
                .with_context(|| format!("comparing {target}'s source with {to}"))?;
            let summary = serde_json::json!({
                "target": target.to_string(),
                "from": changes.from,
                "to": changes.to,
                "files_changed": changes.files.len(),
                "cves": changes.cves(),
                "changelog_entries": changes.changelog.iter().map(|e| &e.version).collect::<Vec<_>>(),
            });
            if let Some(path) = output {
                let text = changes.patch(|_| true);
                graft_cache::write_atomic(&path, text.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                let binary = changes.files.iter().filter(|c| c.is_binary()).count();
                if json {
                    let mut summary = summary;
                    summary["patch"] = serde_json::json!(path);
                    summary["binary_files_left_out"] = serde_json::json!(binary);
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                } else {
                    println!(
                        "{} -> {}: {} files changed{}; CVE: {}; wrote {}",
                        changes.from,
                        changes.to,
                        changes.files.len(),
                        if binary > 0 {
                            format!(" ({binary} binary, left out)")
                        } else {
                            String::new()
                        },
                        if changes.cves().is_empty() {
                            "none named".into()
                        } else {
                            changes.cves().join(" ")
                        },
                        path.display()
                    );
                }
            } else if let Some(dir) = split {
                let graph = kernel.include_graph(&cache)?;
                let report = graft_kernel::split::write_split(&changes, &graph, &dir)
                    .with_context(|| format!("writing the split into {}", dir.display()))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!(
                        "{} -> {}: {} files changed: {} patches of .c files in {}, {} files in no patch (see {}/report.json)",
                        changes.from,
                        changes.to,
                        report.files_changed,
                        report.patches.len(),
                        dir.display(),
                        report.not_split.len(),
                        dir.display()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::Sources {
            kernel,
            json,
            files,
        } => {
            let (target, cache) = target_and_cache(&kernel.target)?;
            let kernel = Kernel::open(&cache, &target)?;
            let mut map = graft_kernel::KbuildMap::new(&kernel, &cache);
            let mut rows = Vec::new();
            for file in &files {
                let membership = map
                    .membership(file)
                    .with_context(|| format!("asking kbuild about {file}"))?;
                rows.push(serde_json::json!({"file": file, "membership": membership}));
                if !json {
                    match &membership {
                        graft_kernel::Membership::BuiltIn => println!("{file}: built into vmlinux"),
                        graft_kernel::Membership::Module => println!("{file}: built into a module"),
                        graft_kernel::Membership::NotBuilt { reason } => {
                            println!("{file}: not built in this configuration: {reason}")
                        }
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
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
        match (info.compiler_matches, &info.compiler_note) {
            (true, None) => "matches",
            (true, Some(_)) => "same version, another revision",
            (false, _) => "DIFFERS: graft build will refuse",
        }
    );
    if let Some(note) = &info.compiler_note {
        println!("                note: {note}");
    }
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
    println!("packages");
    for package in &info.packages {
        println!(
            "  {:<36} {:<12} sha256 {}",
            package.name, package.version, package.sha256
        );
        if let Some(wanted) = &package.wanted {
            println!("  {:<36} wanted as {wanted}", "");
        }
        if let Some(note) = &package.note {
            println!("  {:<36} note: {note}", "");
        }
    }
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

fn print_list(kernels: &[Available]) {
    let yes = |b: bool| if b { "yes" } else { "no" };
    println!(
        "{:<26} {:<11} {:<11} {:<6} {:<8} {:<7} {:<7} cache",
        "target", "image", "source", "image", "headers", "source", "cached"
    );
    for k in kernels {
        let cache = if k.cache_bytes > 0 {
            format!("{:.2} GiB", k.cache_bytes as f64 / (1u64 << 30) as f64)
        } else {
            "-".into()
        };
        println!(
            "{:<26} {:<11} {:<11} {:<6} {:<8} {:<7} {:<7} {cache}{}",
            k.target,
            k.image_version.as_deref().unwrap_or("-"),
            k.source_version.as_deref().unwrap_or("-"),
            yes(k.image),
            yes(k.headers),
            yes(k.source),
            yes(k.cached),
            if k.default { "  (default)" } else { "" }
        );
        for note in &k.notes {
            println!("    note: {note}");
        }
    }
}
