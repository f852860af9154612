//! `graft kernel fetch`: bring a target into the cache, stage by stage.
//!
//! Every stage is all-or-nothing (see `graft-cache`), so a fetch killed at any point is
//! finished by the next one, and a complete entry makes the next fetch a no-op that does not
//! even ask apt.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graft_cache::{Cache, EntryLock};
use graft_deb::PackageInfo;
use graft_lab::{Lab, RunSpec};
use graft_progress::{SharedProgress, Unit};

use crate::config::{blank_distro_key_files, KernelConfig};
use crate::kernel::{
    image_file, kbuild_dir, modules_dir, stage, Kernel, PackageRecord, TargetMeta,
};
use crate::modules::{module_symbols, module_symbols_text, ModuleIndex};
use crate::{image, KernelError, SymbolTable, Target};

/// What a fetch did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FetchReport {
    /// The target.
    pub target: String,
    /// The cache directory.
    pub dir: PathBuf,
    /// Stages built by this run, with their durations in seconds; empty when all were cached.
    pub built: Vec<(String, f64)>,
    /// Wall time of the whole fetch, in seconds.
    pub seconds: f64,
}

/// Free space a fetch from scratch needs: packages, unpacked image, source tree and objects.
const NEEDED_MIB: u64 = 3 * 1024;

/// The packages of a Debian target.
struct Packages {
    image: PackageInfo,
    headers: Vec<PackageInfo>,
    source: PackageInfo,
}

impl Packages {
    fn resolve(target: &Target) -> Result<Self, KernelError> {
        let image = graft_deb::query(&format!("linux-image-{}-unsigned", target.release), None)?;
        let same = Some(image.version.as_str());
        let headers = vec![
            graft_deb::query(&format!("linux-headers-{}", target.release), same)?,
            graft_deb::query(&format!("linux-headers-{}-common", target.abi), same)?,
            graft_deb::query(&format!("linux-kbuild-{}", target.series), same)?,
        ];
        let source = graft_deb::query(
            &format!("linux-source-{}", target.series),
            Some(&image.source_version),
        )?;
        Ok(Self {
            image,
            headers,
            source,
        })
    }

    fn records(&self) -> Vec<PackageRecord> {
        std::iter::once(&self.image)
            .chain(&self.headers)
            .chain(std::iter::once(&self.source))
            .map(|p| PackageRecord {
                name: p.name.clone(),
                version: p.version.clone(),
                sha256: p.sha256.clone(),
            })
            .collect()
    }
}

/// Fetches `target` into `cache` (a no-op when complete, unless `refresh`).
pub fn fetch(
    cache: &Cache,
    target: &Target,
    progress: &SharedProgress,
    refresh: bool,
) -> Result<FetchReport, KernelError> {
    let entry = Kernel::entry(cache, target);
    let lock = entry.lock()?;
    let result = fetch_locked(cache, target, progress, refresh, &lock);
    if result.is_err() {
        lock.discard_if_empty()?;
    }
    result
}

fn fetch_locked(
    cache: &Cache,
    target: &Target,
    progress: &SharedProgress,
    refresh: bool,
    lock: &EntryLock<'_>,
) -> Result<FetchReport, KernelError> {
    let started = Instant::now();
    let entry = lock.entry();
    if refresh {
        for name in stage::ALL {
            lock.invalidate(name)?;
        }
    }
    let mut report = FetchReport {
        target: target.to_string(),
        dir: entry.dir().to_path_buf(),
        built: Vec::new(),
        seconds: 0.0,
    };
    if stage::ALL.iter().all(|s| entry.is_done(s)) {
        report.seconds = started.elapsed().as_secs_f64();
        return Ok(report);
    }
    tracing::info!("fetching {target} into {}", entry.dir().display());
    let packages = Packages::resolve(target)?;
    check_space(entry.dir(), NEEDED_MIB)?;
    let dir = entry.dir().to_path_buf();
    let downloads = dir.join("downloads");
    let mut fetcher = Fetcher {
        lock,
        report: &mut report,
    };

    fetcher.stage(stage::IMAGE, false, |out| {
        let deb = graft_deb::download(&packages.image, &downloads, progress.as_ref())?;
        graft_deb::unpack_deb(&deb, out, progress.as_ref())?;
        remove_file(&deb);
        for kind in ["vmlinuz", "config"] {
            let path = out.join("boot").join(format!("{kind}-{}", target.release));
            if !path.is_file() {
                return Err(KernelError::MissingInPackage {
                    package: packages.image.name.clone(),
                    what: format!("boot/{kind}-{}", target.release),
                });
            }
        }
        Ok(())
    })?;
    let config_text = read_text(&image_file(&dir, "config", &target.release))?;
    let config = KernelConfig::parse(&config_text);
    let compiler = config
        .get("CC_VERSION_TEXT")
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or("gcc")
        .to_string();
    let make_vars = vec![
        format!("CC={compiler}"),
        format!("KERNELRELEASE={}", target.release),
    ];

    fetcher.stage(stage::HEADERS, false, |out| {
        for package in &packages.headers {
            let deb = graft_deb::download(package, &downloads, progress.as_ref())?;
            graft_deb::unpack_deb(&deb, out, progress.as_ref())?;
            remove_file(&deb);
        }
        // The flavour's Makefile includes the common one by its installed path; point it at
        // the copy in the cache, where the directory will be once this stage completes.
        let flavour = out
            .join("usr/src")
            .join(format!("linux-headers-{}", target.release));
        let makefile = flavour.join("Makefile");
        let text = read_text(&makefile)?;
        let installed = "/usr/src/";
        let cached = format!(
            "{}/",
            kbuild_dir(&dir, &target.release)
                .parent()
                .map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
        fs::write(&makefile, text.replace(installed, &cached))
            .map_err(|e| KernelError::io("writing", &makefile, e))
    })?;

    fetcher.stage(stage::SOURCE, true, |out| {
        check_build_tools(&compiler)?;
        let deb = graft_deb::download(&packages.source, &downloads, progress.as_ref())?;
        let unpacked = dir.join("source-deb.partial");
        let _ = graft_cache::remove_any(&unpacked);
        graft_deb::unpack_deb(&deb, &unpacked, progress.as_ref())?;
        let tarball = unpacked
            .join("usr/src")
            .join(format!("linux-source-{}.tar.xz", target.series));
        if !tarball.is_file() {
            return Err(KernelError::MissingInPackage {
                package: packages.source.name.clone(),
                what: format!("usr/src/linux-source-{}.tar.xz", target.series),
            });
        }
        graft_deb::unpack_tarball(&tarball, out, 1, progress.as_ref())?;
        let _ = graft_cache::remove_any(&unpacked);
        remove_file(&deb);
        let dot_config = out.join(".config");
        fs::write(&dot_config, blank_distro_key_files(&config_text))
            .map_err(|e| KernelError::io("writing", &dot_config, e))?;
        let logs = dir.join("logs");
        prepare(out, &make_vars, &["olddefconfig"], &logs, progress)?;
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        prepare(
            out,
            &make_vars,
            &[&format!("-j{jobs}"), "prepare"],
            &logs,
            progress,
        )
    })?;

    let vmlinuz = image_file(&dir, "vmlinuz", &target.release);
    let vmlinuz_bytes = fs::read(&vmlinuz).map_err(|e| KernelError::io("reading", &vmlinuz, e))?;
    let compression = image::payload(&vmlinuz, &vmlinuz_bytes)?
        .1
        .name()
        .to_string();
    fetcher.stage(stage::VMLINUX, false, |out| {
        let (elf, _) = image::extract_vmlinux(&vmlinuz, &vmlinuz_bytes)?;
        fs::write(out, &elf).map_err(|e| KernelError::io("writing", out, e))
    })?;
    let vmlinux = entry.path(stage::VMLINUX);
    let elf = fs::read(&vmlinux).map_err(|e| KernelError::io("reading", &vmlinux, e))?;
    let build_id = image::build_id(&vmlinux, &elf)
        .map_err(|e| with_hint(e, "run `graft kernel fetch --refresh`"))?;
    let text_address = image::text_address(&vmlinux, &elf)?;
    drop(elf);

    let modules = modules_dir(&dir, &target.release);
    fetcher.stage(stage::MODULES, false, |out| {
        let index = ModuleIndex::scan(&modules)?;
        let json = serde_json::to_string_pretty(&index)
            .map_err(|e| KernelError::Inconsistent(e.to_string()))?;
        fs::write(out, json).map_err(|e| KernelError::io("writing", out, e))
    })?;

    fetcher.stage(stage::MODULE_SYMBOLS, false, |out| {
        let text = read_text(&entry.path(stage::MODULES))?;
        let index: ModuleIndex =
            serde_json::from_str(&text).map_err(|e| KernelError::Inconsistent(e.to_string()))?;
        let mut task = progress.start("read module symbols", Some(index.len() as u64), Unit::Items);
        let mut tables = Vec::with_capacity(index.len());
        for (done, module) in index.iter().enumerate() {
            let path = modules.join(&module.path);
            let data = fs::read(&path).map_err(|e| KernelError::io("reading", &path, e))?;
            tables.push((module.name.clone(), module_symbols(&path, &data)?));
            task.set(done as u64 + 1);
        }
        let text = module_symbols_text(&tables);
        task.finish(&format!("{} modules", tables.len()));
        fs::write(out, text).map_err(|e| KernelError::io("writing", out, e))
    })?;

    fetcher.stage(stage::SYMBOLS, false, |out| {
        let table = boot_for_symbols(cache, target, &dir, progress, text_address, &build_id)?;
        fs::write(out, table.to_text()).map_err(|e| KernelError::io("writing", out, e))
    })?;

    fetcher.stage(stage::META, false, |out| {
        let meta = TargetMeta {
            target: target.to_string(),
            release: target.release.clone(),
            source_version: packages.image.source_version.clone(),
            packages: packages.records(),
            // The symbols stage refuses a kernel whose booted build-id differs, so past it the
            // two are known equal.
            booted_build_id: build_id.clone(),
            build_id: build_id.clone(),
            compression: compression.clone(),
            text_address,
            make_vars: make_vars.clone(),
            graft_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let json = serde_json::to_string_pretty(&meta)
            .map_err(|e| KernelError::Inconsistent(e.to_string()))?;
        fs::write(out, json).map_err(|e| KernelError::io("writing", out, e))
    })?;
    let _ = fs::remove_dir(&downloads);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

struct Fetcher<'a, 'b> {
    lock: &'a EntryLock<'b>,
    report: &'a mut FetchReport,
}

impl Fetcher<'_, '_> {
    fn stage(
        &mut self,
        name: &str,
        in_place: bool,
        build: impl FnOnce(&Path) -> Result<(), KernelError>,
    ) -> Result<(), KernelError> {
        let started = Instant::now();
        let _span = tracing::info_span!("stage", name).entered();
        let built = if in_place {
            self.lock.ensure_in_place(name, build)
        } else {
            self.lock.ensure(name, build)
        }
        .map_err(unwrap_stage_error)?;
        if built {
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!("{name} ready in {seconds:.1} s");
            self.report.built.push((name.to_string(), seconds));
        }
        Ok(())
    }
}

/// Stage failures wrap the builder's error; surface a `KernelError` as itself.
fn unwrap_stage_error(error: graft_cache::CacheError) -> KernelError {
    match error {
        graft_cache::CacheError::Stage {
            stage,
            cause: source,
        } => match source.downcast::<KernelError>() {
            Ok(inner) => *inner,
            Err(other) => KernelError::Cache(graft_cache::CacheError::Stage {
                stage,
                cause: other,
            }),
        },
        other => KernelError::Cache(other),
    }
}

fn with_hint(error: KernelError, hint: &str) -> KernelError {
    match error {
        KernelError::BadImage { path, reason } => KernelError::BadImage {
            path,
            reason: format!("{reason}; {hint}"),
        },
        other => other,
    }
}

fn read_text(path: &Path) -> Result<String, KernelError> {
    fs::read_to_string(path).map_err(|e| KernelError::io("reading", path, e))
}

fn remove_file(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        tracing::debug!("could not remove {}: {e}", path.display());
    }
}

fn check_space(dir: &Path, needed_mib: u64) -> Result<(), KernelError> {
    fs::create_dir_all(dir).map_err(|e| KernelError::io("creating", dir, e))?;
    let stat = rustix::fs::statvfs(dir)
        .map_err(|e| KernelError::io("checking free space of", dir, e.into()))?;
    let free_mib = stat.f_bavail.saturating_mul(stat.f_frsize) >> 20;
    if free_mib < needed_mib {
        return Err(KernelError::NoSpace {
            dir: dir.to_path_buf(),
            free_mib,
            needed_mib,
        });
    }
    Ok(())
}

/// Checks up front for what `make prepare` needs, so a missing package is named at once
/// instead of after minutes of work.
fn check_build_tools(compiler: &str) -> Result<(), KernelError> {
    let programs: [(&str, &'static str); 6] = [
        ("make", "make"),
        (
            compiler,
            "the compiler the kernel was built with (Debian: gcc-12)",
        ),
        ("flex", "flex"),
        ("bison", "bison"),
        ("bc", "bc"),
        ("pahole", "dwarves"),
    ];
    for (program, package) in programs {
        let found = std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
            .unwrap_or(false);
        if !found {
            return Err(KernelError::MissingTool {
                program: program.to_string(),
                package,
            });
        }
    }
    for (header, package) in [
        ("/usr/include/gelf.h", "libelf-dev"),
        ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ] {
        if !Path::new(header).is_file() {
            return Err(KernelError::MissingTool {
                program: header.to_string(),
                package,
            });
        }
    }
    Ok(())
}

/// Runs one `make` in the source tree, logging to `logs/prepare.log` and showing its last line.
fn prepare(
    tree: &Path,
    vars: &[String],
    args: &[&str],
    logs: &Path,
    progress: &SharedProgress,
) -> Result<(), KernelError> {
    fs::create_dir_all(logs).map_err(|e| KernelError::io("creating", logs, e))?;
    let log = logs.join("prepare.log");
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| KernelError::io("opening", &log, e))?;
    let err_file = file
        .try_clone()
        .map_err(|e| KernelError::io("opening", &log, e))?;
    let step = args.last().copied().unwrap_or("prepare").to_string();
    let mut task = progress.start(&format!("make {step}"), None, Unit::Items);
    let mut make = Command::new("make");
    // A killed fetch must not leave make writing into a tree the next fetch is removing.
    graft_lab::kill_with_parent(&mut make);
    let mut child = make
        .arg("-C")
        .arg(tree)
        .args(vars)
        .args(args)
        .env("LC_ALL", "C")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| KernelError::io("running make in", tree, e))?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {
                if let Some(line) = last_line(&log) {
                    task.message(&line);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(KernelError::io("waiting for make in", tree, e)),
        }
    };
    if !status.success() {
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        return Err(KernelError::PrepareFailed {
            step,
            status: status
                .code()
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into()),
            tail,
            log,
        });
    }
    task.finish(&format!("make {step} done"));
    Ok(())
}

fn last_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().chars().take(100).collect())
}

const NOTES_MARK: &str = "--- graft: /sys/kernel/notes ---";

/// Boots the target without KASLR and reads its symbols and build-id from the kernel itself.
fn boot_for_symbols(
    cache: &Cache,
    target: &Target,
    dir: &Path,
    progress: &SharedProgress,
    text_address: u64,
    build_id: &str,
) -> Result<SymbolTable, KernelError> {
    let lab = Lab::new(cache.clone(), progress.clone()).map_err(|cause| KernelError::Lab {
        target: target.to_string(),
        cause,
    })?;
    let kernel = graft_lab::LabKernel {
        release: target.release.clone(),
        vmlinuz: image_file(dir, "vmlinuz", &target.release),
        modules_dir: modules_dir(dir, &target.release),
    };
    let script = format!(
        "echo 0 > /proc/sys/kernel/kptr_restrict\ncat /proc/kallsyms\necho '{NOTES_MARK}'\nod -An -v -tx1 /sys/kernel/notes\n"
    );
    let mut spec = RunSpec::new(kernel, script);
    spec.cmdline = "nokaslr".into();
    spec.timeout = Duration::from_secs(300);
    let mut task = progress.start("boot the target to read kallsyms", None, Unit::Bytes);
    let mut output = Vec::new();
    let outcome = lab
        .run(&spec, &mut |bytes| {
            output.extend_from_slice(bytes);
            task.set(output.len() as u64);
        })
        .map_err(|cause| KernelError::Lab {
            target: target.to_string(),
            cause,
        })?;
    let text = String::from_utf8_lossy(&output);
    if outcome.exit_code != 0 {
        return Err(KernelError::Inconsistent(format!(
            "reading /proc/kallsyms in the lab failed (exit {}); kernel log: {}",
            outcome.exit_code,
            outcome.log.display()
        )));
    }
    let (kallsyms, notes) = text.split_once(NOTES_MARK).ok_or_else(|| {
        KernelError::Inconsistent("the lab's output lacks /sys/kernel/notes".into())
    })?;
    let source = Path::new("/proc/kallsyms (lab)");
    let table = SymbolTable::from_kallsyms(source, kallsyms)?;
    let text_symbol = table.lookup("_text");
    if text_symbol.first().map(|s| s.address) != Some(text_address) {
        return Err(KernelError::Inconsistent(format!(
            "booted without KASLR, {target} put _text at {:#x?} but its vmlinux links .text at {text_address:#x}",
            text_symbol.first().map(|s| s.address)
        )));
    }
    let bytes: Vec<u8> = notes
        .split_whitespace()
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    let booted = image::build_id_from_notes(&bytes).unwrap_or_default();
    if booted != build_id {
        return Err(KernelError::Inconsistent(format!(
            "the kernel booted from {target}'s vmlinuz reports build-id {booted:?}, but the vmlinux extracted from it has {build_id}"
        )));
    }
    task.finish(&format!("{} vmlinux symbols", table.len()));
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_little_space_is_refused_with_the_numbers() {
        let dir = tempfile::tempdir().unwrap();
        check_space(dir.path(), 1).unwrap();
        let err = check_space(dir.path(), u64::MAX >> 21)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MiB free; fetching a kernel needs about"),
            "{err}"
        );
        assert!(err.contains("set GRAFT_CACHE to a larger disk"), "{err}");
    }
}
