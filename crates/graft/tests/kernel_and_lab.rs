//! End-to-end tests of kernel targets and the lab, on the real default target booted in QEMU.
//!
//! They use the normal cache (`GRAFT_CACHE` or `~/.cache/graft`), so the first test to run
//! fetches the default target and the rest reuse it; fetching is locked and idempotent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use graft_kernel::known::default_target;
use graft_kernel::{Kernel, Target, DEFAULT_TARGET};
use graft_lab::{GuestFile, Lab, RunSpec};

fn graft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_graft"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(command: &mut Command) -> Output {
    let output = command.stdin(Stdio::null()).output().expect("graft runs");
    eprintln!(
        "stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default target, fetched once per test run. Fails with a clear message when Debian's
/// archive no longer publishes it.
fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        let output = run(graft().args(["kernel", "fetch"]));
        let stderr = text(&output.stderr);
        if stderr.contains("has no linux-") {
            panic!(
                "Debian's archive (as apt sees it) lacks the default target {DEFAULT_TARGET}: {stderr}\n\
                 If Debian published a newer ABI, update crates/graft-kernel/src/known.rs."
            );
        }
        assert!(output.status.success(), "graft kernel fetch failed: {stderr}");
        let cache = graft_cache::Cache::from_env().unwrap();
        let target: Target = DEFAULT_TARGET.parse().unwrap();
        let kernel = Kernel::open(&cache, &target).unwrap();
        assert_eq!(
            kernel.meta().source_version,
            default_target::SOURCE_VERSION,
            "the default target was rebuilt by Debian; update crates/graft-kernel/src/known.rs"
        );
        kernel
    })
}

fn lab() -> Lab {
    Lab::new(
        graft_cache::Cache::from_env().unwrap(),
        graft_progress::silent(),
    )
    .unwrap()
}

/// Runs `script` in the default target's lab and returns (exit code, output).
fn lab_run(spec: RunSpec) -> (i32, String) {
    let mut output = Vec::new();
    let outcome = lab()
        .run(&spec, &mut |b| output.extend_from_slice(b))
        .unwrap_or_else(|e| panic!("lab run failed: {e}\noutput: {}", text(&output)));
    let output = text(&output);
    eprintln!("guest output:\n{output}");
    (outcome.exit_code, output)
}

/// The build-id of the vmlinuz computed without graft: the kernel's own
/// scripts/extract-vmlinux and binutils' readelf.
fn build_id_by_kernel_scripts(kernel: &Kernel) -> String {
    let dir = tempfile::tempdir().unwrap();
    let vmlinux = dir.path().join("vmlinux");
    let extracted = Command::new("sh")
        .arg(kernel.source_dir().join("scripts/extract-vmlinux"))
        .arg(kernel.vmlinuz())
        .stdout(std::fs::File::create(&vmlinux).unwrap())
        .status()
        .unwrap();
    assert!(extracted.success(), "scripts/extract-vmlinux failed");
    let notes = Command::new("readelf")
        .arg("-n")
        .arg(&vmlinux)
        .output()
        .unwrap();
    let notes = text(&notes.stdout);
    notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .unwrap_or_else(|| panic!("readelf shows no build-id:\n{notes}"))
        .trim()
        .to_string()
}

#[test]
fn kernel_info_describes_the_default_target() {
    let kernel = kernel();
    let output = run(graft().args(["kernel", "info", "--json"]));
    assert!(output.status.success());
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["release"], default_target::RELEASE);
    assert_eq!(info["source_version"], default_target::SOURCE_VERSION);
    assert_eq!(info["compiler"], default_target::COMPILER);
    assert_eq!(
        info["compiler_matches"], true,
        "the local gcc is not the kernel's"
    );
    assert_eq!(info["config"]["livepatch"], "y");
    assert_eq!(info["config"]["dynamic_ftrace_with_regs"], "y");
    assert_eq!(info["config"]["unwinder"], "orc");
    assert!(
        info["symbols"]["vmlinux"].as_u64().unwrap() > 90_000,
        "{}",
        info["symbols"]
    );
    assert!(info["symbols"]["modules"].as_u64().unwrap() > 1_000);
    let expected = build_id_by_kernel_scripts(kernel);
    assert_eq!(info["build_id"], expected.as_str());
    assert_eq!(info["booted_build_id"], expected.as_str());

    let human = run(graft().args(["kernel", "info"]));
    assert!(human.status.success());
    assert!(text(&human.stdout).contains(&format!("build-id        {expected}")));
}

#[test]
fn second_fetch_does_nothing() {
    kernel();
    let output = run(graft().args(["kernel", "fetch", "--json"]));
    assert!(output.status.success());
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report["built"],
        serde_json::json!([]),
        "a complete target was fetched again"
    );
}

/// Positions of repeated names must be the order the kernel itself walks, which is what
/// `old_sympos` counts in.
#[test]
fn repeated_symbol_positions_follow_the_booted_kernel() {
    let kernel = kernel();
    let names = ["version_show", "s_show"];
    let output = run(graft().args(["kernel", "symbols", "--json"]).args(names));
    assert!(output.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();

    let mut spec = RunSpec::new(
        kernel.lab_kernel(),
        "echo 0 > /proc/sys/kernel/kptr_restrict\ngrep -E ' (version_show|s_show)$' /proc/kallsyms",
    );
    spec.cmdline = "nokaslr".into();
    let (code, guest) = lab_run(spec);
    assert_eq!(code, 0);
    for name in names {
        let ours: Vec<(String, u64)> = rows
            .iter()
            .filter(|r| r["name"] == name)
            .map(|r| {
                (
                    r["address"].as_str().unwrap().to_string(),
                    r["sympos"].as_u64().unwrap(),
                )
            })
            .collect();
        let theirs: Vec<String> = guest
            .lines()
            .filter(|l| l.ends_with(&format!(" {name}")))
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect();
        assert!(
            theirs.len() >= 2,
            "{name} is expected to repeat: {theirs:?}"
        );
        assert_eq!(
            ours.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>(),
            theirs,
            "{name}: order differs"
        );
        let positions: Vec<u64> = ours.iter().map(|(_, p)| *p).collect();
        assert_eq!(
            positions,
            (1..=theirs.len() as u64).collect::<Vec<_>>(),
            "{name}"
        );
    }
}

/// A module's symbols, computed from its .ko, must list what the kernel's kallsyms lists once
/// the module is loaded, in the same order.
#[test]
fn module_symbols_follow_the_loaded_module() {
    let kernel = kernel();
    let index = kernel.module_index().unwrap();
    let mut spec = RunSpec::new(
        kernel.lab_kernel(),
        "modprobe isofs\necho 0 > /proc/sys/kernel/kptr_restrict\ngrep '\\[isofs\\]$' /proc/kallsyms\nlsmod",
    );
    spec.modules
        .push(kernel.guest_module(&index, "isofs").unwrap());
    let (code, guest) = lab_run(spec);
    assert_eq!(code, 0);
    assert!(
        guest.contains("cdrom"),
        "the dependency cdrom was not loaded with isofs"
    );
    let theirs: Vec<&str> = guest
        .lines()
        .filter(|l| l.ends_with("[isofs]"))
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let tables = kernel.module_symbols().unwrap();
    let ours: Vec<&str> = tables["isofs"]
        .symbols()
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(theirs.len() > 20, "{theirs:?}");
    assert_eq!(ours, theirs);
}

#[test]
fn lab_prints_the_kernel_version_and_passes_the_exit_status() {
    kernel();
    let output = run(graft().args(["lab", "run", "--show-dmesg", "--", "cat /proc/version"]));
    assert_eq!(output.status.code(), Some(0));
    let stdout = text(&output.stdout);
    assert!(
        stdout.starts_with(&format!("Linux version {}", default_target::RELEASE)),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Debian {}", default_target::SOURCE_VERSION)),
        "{stdout}"
    );
    assert!(
        text(&output.stderr).contains("--- guest kernel log"),
        "--show-dmesg printed no log"
    );

    let output = run(graft().args(["lab", "run", "--", "exit 3"]));
    assert_eq!(output.status.code(), Some(3));
}

#[test]
fn lab_stops_a_script_at_its_timeout() {
    kernel();
    let output = run(graft().args(["lab", "run", "--timeout", "5", "--", "sleep 60"]));
    assert_eq!(output.status.code(), Some(124));
    assert!(text(&output.stderr).contains("timeout: the script did not finish within 5 s"));
}

#[test]
fn lab_reports_a_kernel_panic() {
    kernel();
    let output = run(graft().args(["lab", "run", "--", "echo c > /proc/sysrq-trigger; sleep 30"]));
    assert_eq!(output.status.code(), Some(125));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash"
        ),
        "{stderr}"
    );
}

#[test]
fn lab_reports_a_guest_that_never_reaches_the_script() {
    kernel();
    let output = run(graft().args(["lab", "run", "--boot-timeout", "1", "--", "true"]));
    assert_eq!(output.status.code(), Some(126));
    assert!(text(&output.stderr).contains("the guest did not reach the script within 1 s"));
}

/// QEMU must die with graft, even when graft is killed outright.
#[test]
fn qemu_does_not_outlive_a_killed_graft() {
    kernel();
    let mut child = graft()
        .args(["lab", "run", "--", "echo started; sleep 120"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "started");
    let graft_pid = child.id();
    let qemu = children_of(graft_pid);
    assert_eq!(qemu.len(), 1, "expected one QEMU child, found {qemu:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", qemu[0])).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let state = std::fs::read_to_string(format!("/proc/{}/stat", qemu[0])).unwrap_or_default();
    // Gone, or a zombie waiting for init to reap it: either way it no longer runs.
    assert!(
        state.is_empty() || state.contains(") Z "),
        "QEMU {} still runs: {state}",
        qemu[0]
    );
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // The fields after the parenthesised command: state, ppid, ...
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

#[test]
fn bad_inputs_fail_with_a_clear_message_and_change_nothing() {
    kernel();
    let cases: &[(&[&str], &str)] = &[
        (
            &["lab", "run", "--script-file", "/nonexistent/script.sh"],
            "reading the script file /nonexistent/script.sh",
        ),
        (
            &["lab", "run", "--file", "/nonexistent/x.ko", "--", "true"],
            "--file /nonexistent/x.ko: /nonexistent/x.ko does not exist",
        ),
        (&["lab", "run"], "no script: give one after `--`"),
        (
            &["lab", "run", "--module", "no_such_module", "--", "true"],
            "the target has no module `no_such_module`",
        ),
        (
            &["lab", "run", "--kernel", "fedora:6.1", "--", "true"],
            "unknown provider `fedora` (known: debian)",
        ),
        (
            &["kernel", "info", "--kernel", "debian:6.1.0-1-amd64"],
            "is not in the cache",
        ),
        (
            &["kernel", "symbols", "no_such_symbol_anywhere"],
            "has no symbol named no_such_symbol_anywhere",
        ),
    ];
    for (args, message) in cases {
        let output = run(graft().args(*args));
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = text(&output.stderr);
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr}"
        );
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.starts_with("graft: error"))
                .count(),
            1,
            "{stderr}"
        );
    }

    // A version Debian does not have: refused before anything is written.
    let cache = tempfile::tempdir().unwrap();
    let output = run(graft().env("GRAFT_CACHE", cache.path()).args([
        "kernel",
        "fetch",
        "--kernel",
        "debian:6.1.0-999-amd64",
    ]));
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("has no linux-image-6.1.0-999-amd64-unsigned"));
    assert!(
        !cache.path().join("kernels/debian-6.1.0-999-amd64").exists(),
        "a half-made entry was left"
    );

    let output = run(graft()
        .env("GRAFT_QEMU", "/nonexistent/qemu")
        .args(["lab", "run", "--", "true"]));
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("install QEMU"));
}

/// The proof of the path: a hand-written livepatch built with the target's kbuild goes live
/// on the real kernel and is reversed.
#[test]
fn livepatch_replaces_cmdline_proc_show_and_reverts() {
    let kernel = kernel();
    let fixture = repo_root().join("tests/fixtures/livepatch-cmdline");
    let build = tempfile::tempdir().unwrap();
    let modules = kernel
        .build_external_module(&fixture, build.path())
        .unwrap();
    assert_eq!(modules.len(), 1);
    let mut spec = RunSpec::new(
        kernel.lab_kernel(),
        std::fs::read_to_string(fixture.join("check.sh")).unwrap(),
    );
    spec.files.push(GuestFile {
        source: modules[0].clone(),
        dest: "/root/graft_proof_cmdline.ko".into(),
    });
    let (code, output) = lab_run(spec);
    assert_eq!(code, 0, "the guest check failed");
    assert!(output.contains("enabled:  1 transition: 0"), "{output}");
    assert!(
        output.contains("patched:  graft-proof: this line comes from a livepatch"),
        "{output}"
    );
    assert!(output.contains("restored: console=ttyS0"), "{output}");
    assert!(output.contains("unloaded: 0 instances left"), "{output}");
}

/// A fetch killed mid-way leaves an entry that is never used, and the next fetch finishes it;
/// two fetches at once do the work once.
#[test]
fn interrupted_fetch_is_finished_by_the_next() {
    kernel();
    let cache = tempfile::tempdir().unwrap();
    let entry = cache
        .path()
        .join(format!("kernels/debian-{}", default_target::RELEASE));
    let mut first = graft()
        .env("GRAFT_CACHE", cache.path())
        .args(["kernel", "fetch"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it while it unpacks the source tree.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !entry.join("source/Makefile").exists() {
        assert!(
            Instant::now() < deadline,
            "the fetch never reached the source stage"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the fetch ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!entry.join("source.done").exists());

    let info = run(graft()
        .env("GRAFT_CACHE", cache.path())
        .args(["kernel", "info"]));
    assert_eq!(
        info.status.code(),
        Some(1),
        "a half-fetched target was used"
    );
    assert!(text(&info.stderr).contains("is not in the cache"));

    let spawn = || {
        graft()
            .env("GRAFT_CACHE", cache.path())
            .args(["kernel", "fetch", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert!(b.status.success(), "{}", text(&b.stderr));
    let built = |o: &Output| {
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        report["built"].as_array().unwrap().len()
    };
    assert!(
        built(&a) == 0 || built(&b) == 0,
        "both fetches did the work"
    );
    assert!(built(&a) + built(&b) > 0);

    let info = run(graft()
        .env("GRAFT_CACHE", cache.path())
        .args(["kernel", "info", "--json"]));
    assert!(info.status.success());
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["build_id"], kernel().meta().build_id.as_str());
}
