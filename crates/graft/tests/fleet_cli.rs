//! `graft server`, `graft fleet` and `graft agent` as a user runs them: a server on loopback,
//! an operator's token, a host enrolling with the real kernel it runs on, and the errors a
//! user meets first. Offline: loopback only, no kernel cache, no QEMU.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use common::{graft, run, run_json, text};

/// A `graft server run` started by the test, stopped by its PID when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &std::path::Path) -> Self {
        let mut child = graft()
            .args([
                "server",
                "run",
                "--insecure-http",
                "--listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(data)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the server exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining the server's log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the server stops gracefully, flushing what it holds.
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
        }
        let _ = self.child.wait();
    }
}

#[test]
fn a_host_enrolls_and_the_operator_sees_it_with_its_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let made = run_json(
        graft()
            .args(["server", "init", "--json", "--data"])
            .arg(&data),
    );
    assert!(
        made["publisher_key_id"]
            .as_str()
            .is_some_and(|k| k.len() == 16),
        "{made}"
    );
    // A second init refuses, changing nothing.
    let again = graft()
        .args(["server", "init", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains(&data.display().to_string()),
        "{}",
        text(&again.stderr)
    );

    let server = Server::start(&data);
    let fleet = |args: &[&str]| {
        let mut c = graft();
        c.args(["fleet", "--server", &server.url, "--token-file"])
            .arg(data.join("admin.token"))
            .args(args);
        c
    };
    let enroll = text(
        &run(&mut fleet(&[
            "token",
            "--name",
            "bootstrap",
            "--role",
            "enroll",
        ]))
        .stdout,
    );
    let state = dir.path().join("agent");
    let checked = run_json(
        graft()
            .args([
                "agent",
                "--once",
                "--json",
                "--hostname",
                "ci-host",
                "--server",
                &server.url,
            ])
            .args(["--enroll-token", enroll.trim(), "--state-dir"])
            .arg(&state)
            .arg("--graft-state")
            .arg(dir.path().join("graft-state")),
    );
    assert_eq!(checked["enrolled"], true, "{checked}");

    let hosts = run_json(&mut fleet(&["--json", "hosts"]));
    let hosts = hosts.as_array().unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["hostname"], "ci-host");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(hosts[0]["kernel"]["release"], release.trim());
    let kernels = run_json(&mut fleet(&["--json", "kernels"]));
    assert_eq!(kernels[0]["hosts"], 1, "{kernels}");
    let audit = run_json(&mut fleet(&["--json", "audit"]));
    assert!(
        audit.to_string().contains("bootstrap"),
        "the token's creation is audited: {audit}"
    );

    // A wrong token, a role that does not exist: clear refusals, non-zero.
    let wrong = graft()
        .args(["fleet", "--server", &server.url, "--token", "nope", "hosts"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(
        text(&wrong.stderr).contains("HTTP 401"),
        "{}",
        text(&wrong.stderr)
    );
    let role = fleet(&["token", "--name", "x", "--role", "root"])
        .output()
        .unwrap();
    assert!(!role.status.success());
    assert!(
        text(&role.stderr).contains("root"),
        "{}",
        text(&role.stderr)
    );
}

#[test]
fn plain_http_away_from_loopback_is_refused_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    run(graft().args(["server", "init", "--data"]).arg(&data));
    let server = graft()
        .args([
            "server",
            "run",
            "--insecure-http",
            "--listen",
            "0.0.0.0:0",
            "--data",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!server.status.success());
    assert!(
        text(&server.stderr).contains("loopback"),
        "{}",
        text(&server.stderr)
    );
    let client = graft()
        .args([
            "fleet",
            "--server",
            "http://192.0.2.1:8080",
            "--token",
            "t",
            "hosts",
        ])
        .output()
        .unwrap();
    assert!(!client.status.success());
    assert!(
        text(&client.stderr).contains("loopback"),
        "{}",
        text(&client.stderr)
    );
    let agent = graft()
        .args([
            "agent",
            "--once",
            "--server",
            "http://127.0.0.1:9",
            "--state-dir",
        ])
        .arg(dir.path().join("agent"))
        .output()
        .unwrap();
    assert!(!agent.status.success());
    assert!(
        text(&agent.stderr).contains("not enrolled"),
        "{}",
        text(&agent.stderr)
    );
}

/// The simulator speaks the real protocol: hosts enroll, check in once per interval, and
/// every check-in after a host's first is a 304 (nothing changed). Correctness only; the
/// figures are the benchmark's business.
#[test]
fn simulated_hosts_check_in_with_etags() {
    let report = run_json(graft().args([
        "fleet",
        "simulate",
        "--hosts",
        "200",
        "--interval",
        "1",
        "--duration",
        "3",
        "--workers",
        "4",
        "--json",
    ]));
    for key in [
        "hosts",
        "checkins_per_s",
        "p50_ms",
        "p99_ms",
        "errors",
        "server_rss_mib",
        "db_mib",
    ] {
        assert!(report.get(key).is_some(), "{key} missing: {report}");
    }
    assert_eq!(report["hosts"], 200);
    assert_eq!(report["errors"], 0, "{report}");
    let checkins = report["checkins"].as_u64().unwrap();
    let unchanged = report["not_modified"].as_u64().unwrap();
    assert!(checkins >= 400, "{report}");
    // Every host's first answer (the first round, measured apart) was a 200 with its ETag:
    // every steady-state check-in is a 304.
    assert_eq!(report["first_round"]["errors"], 0, "{report}");
    assert!(report["first_round"]["checkins_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(checkins, unchanged, "{report}");
}

/// More workers than hosts: a worker with no host used to loop without end, waiting for a
/// check-in it had none of, and the simulation never finished.
#[test]
fn a_simulation_with_more_workers_than_hosts_ends() {
    let report = run_json(graft().args([
        "fleet",
        "simulate",
        "--hosts",
        "3",
        "--interval",
        "0.5",
        "--duration",
        "1",
        "--workers",
        "8",
        "--json",
    ]));
    assert_eq!(report["workers"], 3, "a worker per host: {report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["checkins"].as_u64().unwrap() >= 3, "{report}");
}

#[test]
fn the_guest_bridge_names_a_serial_port_it_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("ttyS9");
    let output = run(graft()
        .args(["lab", "bridge", "--port", "8443", "--device"])
        .arg(&missing));
    assert!(!output.status.success());
    let err = text(&output.stderr);
    assert!(
        err.contains("bridging 127.0.0.1:8443 over") && err.contains("ttyS9"),
        "{err}"
    );
}

#[test]
fn the_fleet_demo_refuses_a_host_count_it_cannot_run() {
    let output = run(graft().args(["demo", "fleet", "--hosts", "0"]));
    assert_eq!(output.status.code(), Some(2));
    assert!(
        text(&output.stderr).contains("--hosts"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn the_gate_benchmark_refuses_a_plan_that_does_not_reach_every_host() {
    let output = run(graft().args(["bench", "gates", "--runs", "1", "--waves", "1,5,25"]));
    assert!(!output.status.success());
    let err = text(&output.stderr);
    assert!(err.contains("ends at 25%, not at 100%"), "{err}");
    let output = run(graft().args(["bench", "gates", "--runs", "1", "--regression", "tcp=2"]));
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("no metric \"tcp\""));
}

/// `simulate --rollout`: the server's own driver moves a rollout through waves to simulated
/// hosts without spread between them; a clean level completes every wave, and one that
/// doubles the treated hosts' retransmits halts in the first wave, with the metric named.
#[test]
fn simulated_rollouts_complete_clean_and_halt_on_a_regression() {
    let rollout = |extra: &[&str]| {
        let mut command = graft();
        command.args([
            "fleet",
            "simulate",
            "--rollout",
            "--hosts",
            "600",
            "--interval",
            "0.5",
            "--waves",
            "5,50,100",
            "--bake",
            "1500ms",
            "--workers",
            "4",
            "--seed",
            "3",
            // No spread between hosts: what halts is the injected trouble, never chance (the
            // chance is what `graft bench rollouts` measures).
            "--noise",
            "0",
            "--json",
        ]);
        command.args(extra);
        run_json(&mut command)
    };
    let clean = rollout(&[]);
    let r = &clean["rollout"];
    assert_eq!(r["state"], "completed", "{clean}");
    assert_eq!(
        (r["wave"].as_u64(), r["waves"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(r["treated"], 600);
    let decisions = r["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 3, "one decision per wave: {r}");
    assert!(decisions.iter().all(|d| d["decision"] == "continue"));
    // Every treated host spikes while its patch goes live: reported, never a halt.
    assert!(
        decisions[0]["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["gate"] == "spike"),
        "{r}"
    );
    assert_eq!(r["errors"], 0);

    let regressed = rollout(&["--regression", "tcp_retransmits=2.0"]);
    let r = &regressed["rollout"];
    assert_eq!(r["state"], "halted", "{regressed}");
    assert_eq!(r["wave"], 1);
    assert_eq!(r["treated"], 30, "no host beyond the first wave moved");
    assert!(
        r["reason"].as_str().unwrap().contains("tcp_retransmits"),
        "{r}"
    );
}

#[test]
fn simulated_rollouts_refuse_bad_trouble() {
    let fails = |args: &[&str], needle: &str| {
        let output = run(graft()
            .args(["fleet", "simulate", "--rollout", "--hosts", "10"])
            .args(args));
        assert!(!output.status.success(), "{args:?}");
        let err = text(&output.stderr);
        assert!(err.contains(needle), "{needle:?} not in {err}");
    };
    fails(&["--regression", "tcp=2"], "no metric \"tcp\"");
    fails(&["--regression", "tcp_retransmits=-1"], "positive number");
    fails(&["--regression", "tcp_retransmits"], "METRIC=FACTOR");
    fails(&["--waves", "1,5"], "not at 100%");
    fails(&["--crash-rate", "1.5"], "a probability from 0 to 1");
    let output = run(graft().args([
        "fleet",
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
        "simulate",
        "--rollout",
    ]));
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("drop --server"));
    // Rollout options without --rollout are refused by the parser.
    let output = run(graft().args(["fleet", "simulate", "--waves", "1,100"]));
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn the_rollout_benchmark_refuses_bad_plans_and_trouble() {
    for (args, needle) in [
        (vec!["--waves", "1,5"], "not at 100%"),
        (vec!["--regression", "tcp=2"], "no metric \"tcp\""),
        (vec!["--interval", "0"], "--interval 0"),
        (vec!["--report-share", "2"], "a probability from 0 to 1"),
    ] {
        let output = run(graft()
            .args(["bench", "rollouts", "--runs", "1", "--hosts", "10"])
            .args(&args));
        assert!(!output.status.success(), "{args:?}");
        let err = text(&output.stderr);
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
}

#[test]
fn publishing_refuses_bad_probes_before_anything_is_signed() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("fix.ko");
    let key = dir.path().join("publisher.key");
    for (probe, needle) in [
        ("no-equals-sign", "NAME=COMMAND"),
        ("Load=cat /proc/loadavg", "probe name \"Load\""),
        ("load=", "a command of"),
    ] {
        // An address nothing listens on: the probe is refused before any request.
        let output = run(graft()
            .args([
                "fleet",
                "--server",
                "http://127.0.0.1:9",
                "--token",
                "t",
                "publish",
            ])
            .arg(&module)
            .arg("--signing-key")
            .arg(&key)
            .args(["--probe", probe]));
        assert!(!output.status.success(), "{probe}");
        let err = text(&output.stderr);
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    let twice = run(graft()
        .args([
            "fleet",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "t",
            "publish",
        ])
        .arg(&module)
        .arg("--signing-key")
        .arg(&key)
        .args(["--probe", "a=echo 1", "--probe", "a=echo 2"]));
    assert!(text(&twice.stderr).contains("--probe a: named twice"));
}
