//! `graft build --each DIR`: the coverage of an update, one build per split patch.
//!
//! Each patch of DIR (in `report.json` order when `graft kernel changes --split` wrote it, else
//! by name) is built on its own, and optionally loaded and unloaded on the target in the lab
//! (`--test`). Every patch ends with one verdict: built (with its functions), not built in
//! this configuration (nothing to patch: not an error), no change, refused (with the reason),
//! or failed (with the error). Nothing is skipped silently.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use graft_build::{BuildOptions, Outcome};

use crate::cli::BuildArgs;
use crate::kernel_cmd::{ensure_kernel, target_and_cache};
use crate::test_cmd::{run_plan, TestPlan};

/// One patch's result.
#[derive(Debug, serde::Serialize)]
struct Row {
    patch: String,
    verdict: Outcome,
    /// `object:function` replaced, for a built patch.
    functions: Vec<String>,
    /// The reason or error, on one line.
    reason: Option<String>,
    /// With --test: whether the module loaded, went live and unloaded cleanly.
    loaded: Option<bool>,
    /// With --test, when it did not: why.
    load_error: Option<String>,
    /// Whether it was built with the update's other header changes its file includes (it
    /// did not compile alone).
    with_headers: bool,
    seconds: f64,
}

pub fn run(args: &BuildArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let all = patches_in(dir)?;
    let patches = match args.sample {
        Some(n) => sample(patches_in(dir)?, n, args.seed),
        None => patches_in(dir)?,
    };
    let (target, cache) = target_and_cache(&args.kernel.target)?;
    let progress = crate::progress::for_output(true);
    let kernel = ensure_kernel(&cache, &target, &crate::progress::for_output(args.json))?;
    let out_dir = dir.join("built");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let started = Instant::now();
    let mut rows = Vec::new();
    if !args.json {
        println!(
            "{} patches of {} on {target}{}",
            patches.len(),
            dir.display(),
            if args.test {
                ", each loaded in the lab"
            } else {
                ""
            }
        );
    }
    for (i, candidate) in patches.iter().enumerate() {
        let patch = &candidate.patch;
        let begun = Instant::now();
        let stem = patch
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = module_name(i, &stem);
        let options = BuildOptions {
            patches: vec![patch.clone()],
            output: out_dir.join(format!("{name}.ko")),
            name: Some(name),
            replace: !args.no_replace && args.set.is_none(),
            set: args.set.clone(),
            keep_scratch: false,
        };
        let mut result = graft_build::build(&cache, &kernel, &options, &progress);
        let mut with_headers = false;
        if let (
            Err(graft_build::BuildError::CompileFailed {
                which: "patched", ..
            }),
            Some(fallback),
        ) = (&result, &candidate.fallback)
        {
            // The change relies on the update's header changes no changed line names.
            let options = BuildOptions {
                patches: vec![fallback.clone()],
                ..options.clone()
            };
            result = graft_build::build(&cache, &kernel, &options, &progress);
            with_headers = true;
        }
        let result = result.map_err(|e| needs_other_files(e, candidate, &all));
        let mut row = match result {
            Ok(report) => Row {
                patch: stem.clone(),
                verdict: Outcome::Built,
                functions: report
                    .manifest
                    .functions
                    .iter()
                    .map(|f| format!("{}:{}", f.object, f.name))
                    .collect(),
                reason: None,
                loaded: None,
                load_error: None,
                with_headers,
                seconds: 0.0,
            },
            Err(e) => Row {
                patch: stem.clone(),
                verdict: e.outcome(),
                functions: Vec::new(),
                reason: Some(one_line(&e.to_string())),
                loaded: None,
                load_error: None,
                with_headers,
                seconds: 0.0,
            },
        };
        if args.test && row.verdict == Outcome::Built {
            let objects: Vec<String> = row
                .functions
                .iter()
                .filter_map(|f| f.split_once(':').map(|(o, _)| o.to_string()))
                .filter(|o| o != "vmlinux")
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let plan = TestPlan {
                module: options.output.clone(),
                before: objects,
                after: Vec::new(),
                script: None,
                baseline_fails: false,
                transition_timeout: 60,
            };
            match run_plan(&plan, &cache, &kernel, &progress, &mut |_| {}) {
                Ok(result) => {
                    row.loaded = Some(result.code == 0);
                    row.load_error = result.failed_step.map(|step| {
                        let first = result.errors.first().cloned().unwrap_or_default();
                        one_line(&format!("{step} {first}"))
                    });
                }
                Err(e) => {
                    row.loaded = Some(false);
                    row.load_error = Some(one_line(&format!("{e:#}")));
                }
            }
        }
        row.seconds = begun.elapsed().as_secs_f64();
        if !args.json {
            print_row(&row);
        }
        rows.push(row);
    }
    let seconds = started.elapsed().as_secs_f64();
    let count = |o: Outcome| rows.iter().filter(|r| r.verdict == o).count();
    let counts = serde_json::json!({
        "built": count(Outcome::Built),
        "not-built-in-config": count(Outcome::NotBuiltInConfig),
        "no-change": count(Outcome::NoChange),
        "refused": count(Outcome::Refused),
        "failed": count(Outcome::Failed),
        "loaded": rows.iter().filter(|r| r.loaded == Some(true)).count(),
        "load-failed": rows.iter().filter(|r| r.loaded == Some(false)).count(),
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "target": target.to_string(),
                "dir": dir,
                "patches": rows.len(),
                "counts": counts,
                "seconds": seconds,
                "results": rows,
            }))?
        );
    } else {
        println!(
            "{} patches in {seconds:.0} s: {}",
            rows.len(),
            counts
                .as_object()
                .map(|o| o
                    .iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
    let all_ok = rows.iter().all(|r| {
        matches!(
            r.verdict,
            Outcome::Built | Outcome::NotBuiltInConfig | Outcome::NoChange
        ) && r.loaded != Some(false)
    });
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(Outcome::Refused.exit_code())
    })
}

fn print_row(row: &Row) {
    let verdict = serde_json::to_value(row.verdict)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let detail = match (&row.reason, row.functions.is_empty()) {
        (Some(reason), _) => reason.clone(),
        (None, false) => row.functions.join(" "),
        (None, true) => String::new(),
    };
    let load = match (row.loaded, &row.load_error) {
        (Some(true), _) => " [loaded]".to_string(),
        (Some(false), Some(e)) => format!(" [LOAD FAILED: {e}]"),
        (Some(false), None) => " [LOAD FAILED]".to_string(),
        _ => String::new(),
    };
    let headers = if row.with_headers {
        " [with the update's headers it includes]"
    } else {
        ""
    };
    println!(
        "  {:<48} {:<20} {:>6.1} s  {detail}{load}{headers}",
        row.patch, verdict, row.seconds
    );
}

/// One patch to build, and the patch with the update's other header changes its file includes,
/// to try when it does not compile alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    patch: PathBuf,
    fallback: Option<PathBuf>,
    /// The `.c` file the patch is for (from `report.json`).
    file: Option<String>,
}

/// A patch whose build, with the update's headers, fails to compile another unit that the
/// update itself changes (a prototype changed in the header, its definition in that unit) is
/// not self-contained: refused with the files it needs, not reported as a tool failure.
fn needs_other_files(
    error: graft_build::BuildError,
    candidate: &Candidate,
    all: &[Candidate],
) -> graft_build::BuildError {
    let graft_build::BuildError::CompileFailed {
        unit,
        which: "patched",
        ..
    } = &error
    else {
        return error;
    };
    let other = candidate.file.as_deref() != Some(unit.as_str());
    match all
        .iter()
        .find(|c| c.file.as_deref() == Some(unit.as_str()))
    {
        Some(needed) if other => {
            graft_build::BuildError::Refused(vec![graft_build::RefusalReason::NotSelfContained {
                file: candidate.file.clone().unwrap_or_default(),
                needs: unit.clone(),
                patch: needed
                    .patch
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }])
        }
        _ => error,
    }
}

/// The patches of `dir`: `report.json`'s order when present, else `*.patch` by name.
fn patches_in(dir: &Path) -> anyhow::Result<Vec<Candidate>> {
    if !dir.is_dir() {
        anyhow::bail!("--each {}: not a directory", dir.display());
    }
    let report = dir.join("report.json");
    let patches: Vec<Candidate> = if report.is_file() {
        let text = std::fs::read_to_string(&report)
            .with_context(|| format!("reading {}", report.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", report.display()))?;
        value["patches"]
            .as_array()
            .with_context(|| format!("{}: no `patches` list", report.display()))?
            .iter()
            .filter_map(|p| {
                Some(Candidate {
                    patch: dir.join(p["patch"].as_str()?),
                    fallback: p["fallback"].as_str().map(|f| dir.join(f)),
                    file: p["file"].as_str().map(str::to_string),
                })
            })
            .collect()
    } else {
        let mut list: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "patch"))
            .filter(|p| !p.to_string_lossy().ends_with(".with-headers.patch"))
            .collect();
        list.sort();
        list.into_iter()
            .map(|patch| Candidate {
                patch,
                fallback: None,
                file: None,
            })
            .collect()
    };
    if patches.is_empty() {
        anyhow::bail!("--each {}: no patches in it", dir.display());
    }
    if let Some(missing) = patches
        .iter()
        .flat_map(|c| std::iter::once(&c.patch).chain(&c.fallback))
        .find(|p| !p.is_file())
    {
        anyhow::bail!("{}: listed in report.json but missing", missing.display());
    }
    Ok(patches)
}

/// A seeded random sample of `n` (splitmix64 driving a partial Fisher-Yates shuffle), in the
/// original order, so a sample is repeatable from its seed.
fn sample<T: Default>(mut items: Vec<T>, n: usize, seed: u64) -> Vec<T> {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut indices: Vec<usize> = (0..items.len()).collect();
    let take = n.min(items.len());
    for i in 0..take {
        let span = (indices.len() - i) as u64;
        let j = i + (next() % span) as usize;
        indices.swap(i, j);
    }
    let mut chosen: Vec<usize> = indices[..take].to_vec();
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|index| std::mem::take(&mut items[index]))
        .collect()
}

/// A livepatch module name (at most 55 characters of [a-z0-9_]) for patch `i`.
fn module_name(i: usize, stem: &str) -> String {
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("e{i:04}_{clean}");
    name.truncate(55);
    name
}

fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if joined.chars().count() > 400 {
        joined.chars().take(400).collect::<String>() + "..."
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: mt7915's eeprom.c fix, built with the update's headers, failed compiling
    /// mcu.c, whose own change (the new prototype's definition) is another patch of the update:
    /// a refusal naming that patch, not a tool failure.
    #[test]
    fn a_split_patch_needing_another_files_change_is_not_self_contained() {
        let candidate = |file: &str| Candidate {
            patch: PathBuf::from(format!("{}.patch", file.replace('/', "-"))),
            fallback: None,
            file: Some(file.to_string()),
        };
        let all = [candidate("mt7915/eeprom.c"), candidate("mt7915/mcu.c")];
        let failed = |unit: &str| graft_build::BuildError::CompileFailed {
            unit: unit.to_string(),
            which: "patched",
            tail: "error: conflicting types".into(),
        };
        let refused = needs_other_files(failed("mt7915/mcu.c"), &all[0], &all);
        assert_eq!(refused.outcome(), Outcome::Refused);
        assert!(
            refused.to_string().contains("mt7915-mcu.c.patch"),
            "{refused}"
        );
        // The patch's own unit failing, or a unit the update does not change, stays a failure.
        assert_eq!(
            needs_other_files(failed("mt7915/eeprom.c"), &all[0], &all).outcome(),
            Outcome::Failed
        );
        assert_eq!(
            needs_other_files(failed("other.c"), &all[0], &all).outcome(),
            Outcome::Failed
        );
    }

    #[test]
    fn samples_are_repeatable_and_in_order() {
        let items: Vec<PathBuf> = (0..100)
            .map(|i| PathBuf::from(format!("{i:03}.patch")))
            .collect();
        let a = sample(items.clone(), 10, 7);
        let b = sample(items.clone(), 10, 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(a, sorted);
        assert_ne!(a, sample(items.clone(), 10, 8));
        assert_eq!(sample(items, 500, 1).len(), 100);
    }

    #[test]
    fn module_names_are_valid() {
        let name = module_name(
            3,
            "drivers-net-ethernet-intel-i40e-i40e_main.c-and-a-very-long-tail",
        );
        assert!(name.len() <= 55);
        assert!(name.starts_with("e0003_drivers_net"));
        assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
}
