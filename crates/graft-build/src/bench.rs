//! `graft bench build`: graft's build time against the floor, measured in one run.
//!
//! The floor is what no live-patch builder working from source can avoid: compiling the
//! affected units twice (unpatched and patched, with the target's own commands) and linking
//! the module with the target's kbuild. graft is timed warm (unpatched objects cached per
//! target, as after a first build) and cold (those objects dropped), and both are reported as
//! ratios against the floor.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use graft_cache::Cache;
use graft_kernel::Kernel;
use graft_progress::SharedProgress;

use crate::{build, compile, farm, patchset, BuildError, BuildOptions, PatchFile};

/// One measured fix.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    /// What was built.
    pub label: String,
    /// Translation units compiled.
    pub units: usize,
    /// Floor: compiling the units unpatched and patched.
    pub floor_compile_s: f64,
    /// Floor: linking the module with kbuild.
    pub floor_link_s: f64,
    /// The floor.
    pub floor_s: f64,
    /// graft build with cached unpatched objects (median of the runs).
    pub graft_warm_s: f64,
    /// graft build with no cached objects for these units.
    pub graft_cold_s: f64,
    /// warm / floor.
    pub warm_ratio: f64,
    /// cold / floor.
    pub cold_ratio: f64,
}

fn timed(what: &str, mut command: Command) -> Result<f64, BuildError> {
    let started = Instant::now();
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| BuildError::io("running", Path::new(what), e))?;
    if !status.success() {
        return Err(BuildError::Unsupported(format!(
            "benchmark step failed: {what}"
        )));
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Measures one fix (`patches`, applied in order). `runs` warm builds are timed.
pub fn bench_build(
    cache: &Cache,
    kernel: &Kernel,
    label: &str,
    patches: &[PathBuf],
    runs: usize,
    progress: &SharedProgress,
) -> Result<BenchRow, BuildError> {
    let work = tempfile::Builder::new()
        .prefix("bench-")
        .tempdir()
        .map_err(|e| BuildError::io("creating", Path::new("a temporary directory"), e))?;
    let options = |keep| BuildOptions {
        patches: patches.to_vec(),
        output: work.path().join("bench_fix.ko"),
        name: None,
        replace: true,
        set: None,
        keep_scratch: keep,
    };
    // Warm-up: fills the caches and keeps the kbuild directory for the link floor.
    let report = build(cache, kernel, &options(true), progress)?;
    let scratch = report.scratch.clone().unwrap_or_default();
    let sources: Vec<String> = report.units.iter().map(|u| u.unit.clone()).collect();
    let units = sources
        .iter()
        .map(|s| compile::prepare_unit(kernel, cache, s))
        .collect::<Result<Vec<_>, _>>()?;

    // Floor, compile: every unit unpatched, then patched, by the target's commands.
    let tree = kernel.source_dir();
    let files: Vec<PatchFile> = patches
        .iter()
        .map(|p| PatchFile::read(p))
        .collect::<Result<_, _>>()?;
    let mut touched: Vec<String> = files.iter().flat_map(|p| p.files.clone()).collect();
    touched.sort();
    touched.dedup();
    let mut sources_and_touched = touched.clone();
    sources_and_touched.extend(sources.iter().cloned());
    let pre_farm = work.path().join("pre");
    farm::create(&tree, &pre_farm, &sources_and_touched)?;
    let post_farm = work.path().join("post");
    farm::create(&tree, &post_farm, &sources_and_touched)?;
    for p in &files {
        patchset::apply(p, &post_farm)?;
    }
    let mut floor_compile = 0.0;
    for farm_dir in [&pre_farm, &post_farm] {
        for unit in &units {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(&unit.command)
                .current_dir(farm_dir)
                .env("LC_ALL", "C");
            floor_compile += timed(&unit.source, sh)?;
        }
    }

    // Floor, link: the same kbuild invocation graft makes, on the kept module directory.
    let kbuild_dir = scratch.join("module").join("kbuild");
    // Remove what the link produced (not `make clean`: it also drops the shipped objects'
    // .cmd files that modpost reads), so the timed run links from scratch.
    for entry in
        std::fs::read_dir(&kbuild_dir).map_err(|e| BuildError::io("listing", &kbuild_dir, e))?
    {
        let path = entry
            .map_err(|e| BuildError::io("listing", &kbuild_dir, e))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let product = [".ko", ".o", ".mod", ".mod.c", ".symvers", ".order"]
            .iter()
            .any(|e| name.ends_with(e));
        if product && !name.ends_with("_shipped") {
            let _ = std::fs::remove_file(&path);
        }
    }
    let mut link = crate::module::kbuild_modules(kernel, &kbuild_dir);
    link.env("LC_ALL", "C").env_remove("MAKEFLAGS");
    let floor_link = timed("make modules", link)?;
    let _ = std::fs::remove_dir_all(&scratch);

    let mut warm = Vec::new();
    for _ in 0..runs.max(1) {
        let started = Instant::now();
        build(cache, kernel, &options(false), progress)?;
        warm.push(started.elapsed().as_secs_f64());
    }
    warm.sort_by(f64::total_cmp);
    let graft_warm = warm[warm.len() / 2];

    let entry = cache.entry("objects", &kernel.target().key());
    {
        let lock = entry.lock()?;
        for unit in &units {
            lock.invalidate(&compile::stage_name(&unit.source))?;
        }
    }
    let started = Instant::now();
    build(cache, kernel, &options(false), progress)?;
    let graft_cold = started.elapsed().as_secs_f64();

    let floor = floor_compile + floor_link;
    Ok(BenchRow {
        label: label.to_string(),
        units: units.len(),
        floor_compile_s: floor_compile,
        floor_link_s: floor_link,
        floor_s: floor,
        graft_warm_s: graft_warm,
        graft_cold_s: graft_cold,
        warm_ratio: graft_warm / floor,
        cold_ratio: graft_cold / floor,
    })
}
