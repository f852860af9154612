//! Regenerates the fast tier's fixtures (tests/fixtures) from the real target kernel.
//!
//! Each fixture directory holds `patches` (patch files, one per line, relative to the
//! repository root) and optionally `target` (default: the default target); this captures the
//! compiled units and the slices of the running code into its `captured/` subdirectory. Run it
//! through `scripts/bless-fixtures.sh`; it needs the kernel cache (it fetches the target).

use std::path::{Path, PathBuf};

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let fixtures = root.join("tests/fixtures");
    let only: Vec<String> = std::env::args().skip(1).collect();
    let cache = graft_cache::Cache::from_env()?;
    let progress = graft_progress::silent();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .with_context(|| format!("listing {}", fixtures.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("patches").is_file())
        .filter(|p| only.is_empty() || only.iter().any(|o| p.ends_with(o)))
        .collect();
    dirs.sort();
    for dir in dirs {
        let target_name = std::fs::read_to_string(dir.join("target"))
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|_| graft_kernel::DEFAULT_TARGET.to_string());
        let target: graft_kernel::Target = target_name.parse()?;
        graft_kernel::fetch(&cache, &target, &progress, false)?;
        let kernel = graft_kernel::Kernel::open(&cache, &target)?;
        let patches: Vec<PathBuf> = std::fs::read_to_string(dir.join("patches"))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| root.join(l))
            .collect();
        let out = dir.join("captured");
        graft_build::fixture::capture(&cache, &kernel, &patches, &out)
            .with_context(|| format!("capturing {}", dir.display()))?;
        let bytes: u64 = std::fs::read_dir(&out)?
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        println!("{}: {} KiB", dir.display(), bytes / 1024);
    }
    Ok(())
}
