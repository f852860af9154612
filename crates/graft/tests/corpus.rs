//! The build corpus (tests/cases) and the peer suite (tests/peer/kpatch-6.1, fixes written for
//! kpatch): every fix is built with `graft build` and, unless it must be refused, tested with
//! `graft test` on the real target kernel in the lab.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    expect: String,
    #[serde(default)]
    refusal: String,
    #[serde(default)]
    patched: Vec<String>,
    #[serde(default)]
    load_before: Vec<String>,
    #[serde(default)]
    load_after: Vec<String>,
    #[serde(default = "yes")]
    baseline_fails: bool,
    /// The patch, relative to the case directory (default `fix.patch`).
    #[serde(default)]
    patch: Option<String>,
}

fn yes() -> bool {
    true
}

fn graft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graft"));
    c.stdin(Stdio::null());
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn suite_dir(suite: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests")
        .join(suite)
}

/// Runs one case; returns a failure message, or None when it behaved as expected.
fn run_case(dir: &Path, out: &Path) -> Option<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let case: Case =
        match std::fs::read_to_string(dir.join("case.toml")).map(|t| toml::from_str(&t)) {
            Ok(Ok(case)) => case,
            Ok(Err(e)) => return Some(format!("{name}: bad case.toml: {e}")),
            Err(e) => return Some(format!("{name}: no case.toml: {e}")),
        };
    // A prefix keeps case names (`module`) clear of built-in module names.
    let module = out.join(format!("case_{name}.ko"));
    let build: Output = graft()
        .args(["build", "--explain", "-o"])
        .arg(&module)
        .arg(dir.join(case.patch.as_deref().unwrap_or("fix.patch")))
        .output()
        .unwrap();
    let log = format!(
        "--- build stdout\n{}--- build stderr\n{}",
        text(&build.stdout),
        text(&build.stderr)
    );
    match case.expect.as_str() {
        "refuse" => {
            if build.status.success() {
                return Some(format!(
                    "{name}: built, but must be refused ({})\n{log}",
                    case.refusal
                ));
            }
            if !text(&build.stderr).contains(&case.refusal) {
                return Some(format!(
                    "{name}: refused without naming `{}`\n{log}",
                    case.refusal
                ));
            }
            if module.exists() || module.with_extension("json").exists() {
                return Some(format!("{name}: a refused build left output files"));
            }
            None
        }
        "build" => {
            if !build.status.success() {
                return Some(format!(
                    "{name}: graft build failed ({})\n{log}",
                    case.description
                ));
            }
            let manifest: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(module.with_extension("json")).unwrap(),
            )
            .unwrap();
            let patched: Vec<String> = manifest["functions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    format!(
                        "{}:{}",
                        f["object"].as_str().unwrap(),
                        f["name"].as_str().unwrap()
                    )
                })
                .collect();
            if let Some(missing) = case.patched.iter().find(|p| !patched.contains(p)) {
                return Some(format!(
                    "{name}: {missing} is not patched (patched: {patched:?})\n{log}"
                ));
            }
            let mut test = graft();
            test.arg("test")
                .arg(&module)
                .arg("--script")
                .arg(dir.join("test.sh"));
            if case.baseline_fails {
                test.arg("--baseline-fails");
            }
            for m in &case.load_before {
                test.arg("--load-module").arg(format!("{m}@before"));
            }
            for m in &case.load_after {
                test.arg("--load-module").arg(format!("{m}@after"));
            }
            let run = test.output().unwrap();
            if !run.status.success() {
                return Some(format!(
                    "{name}: graft test failed (status {:?})\n--- test stdout\n{}--- test stderr\n{}",
                    run.status.code(),
                    text(&run.stdout),
                    text(&run.stderr)
                ));
            }
            None
        }
        other => Some(format!(
            "{name}: expect must be build or refuse, not {other}"
        )),
    }
}

/// Runs every case of `suite` (at least `min` of them), up to three at a time.
fn run_suite(suite: &str, min: usize) {
    let fetch = graft().args(["kernel", "fetch"]).output().unwrap();
    assert!(
        fetch.status.success(),
        "graft kernel fetch failed: {}",
        text(&fetch.stderr)
    );
    let mut cases: Vec<PathBuf> = std::fs::read_dir(suite_dir(suite))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("case.toml").is_file())
        .collect();
    cases.sort();
    assert!(cases.len() >= min, "{suite} has only {} cases", cases.len());
    let out = tempfile::tempdir().unwrap();
    let queue = Mutex::new(cases.clone());
    let failures = Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(3);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let Some(case) = queue.lock().unwrap().pop() else {
                    break;
                };
                let started = std::time::Instant::now();
                let result = run_case(&case, out.path());
                eprintln!(
                    "{suite}: {} {} ({:.1} s)",
                    case.file_name().unwrap().to_string_lossy(),
                    if result.is_none() { "ok" } else { "FAILED" },
                    started.elapsed().as_secs_f64()
                );
                if let Some(f) = result {
                    failures.lock().unwrap().push(f);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases of {suite} failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn corpus_cases_build_and_pass_on_the_target() {
    run_suite("cases", 20);
}

/// kpatch's own integration patches for 6.1: nine build and show their behaviour live, the
/// two `-FAIL` ones are refused with the reason kpatch's harness expects.
#[test]
fn kpatch_peer_suite_is_handled_as_kpatch_expects() {
    run_suite("peer/kpatch-6.1", 11);
}
