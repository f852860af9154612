//! Rollouts through the API, driven by the server's own rollout loop, with hosts that speak
//! the real protocol: each round, every host asks for its desired level, "applies" it, and
//! reports its inventory and a health sample. Which hosts misbehave, and how, is the test's
//! choice; what the server decides from their reports is what is checked.

#![allow(dead_code, reason = "each test binary uses a part of the suite")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use graft_protocol::api::{Desired, HealthSample, Inventory, Outcome, Report};
use graft_protocol::rollout::{Rollback, RolloutState, RolloutView, StartRollout};
use graft_protocol::trust::SignedLevel;

use crate::support::{kernel, levels_path, now_secs, Db, Fleet, LevelParts, Server};

/// A host the test plays.
pub struct Played {
    id: String,
    credential: String,
    level: Option<u32>,
    /// Kernel errors it reports once it runs the level under test.
    errors_on_level: Option<u32>,
    /// Its retransmit rate is multiplied by this on the level under test.
    factor_on_level: f64,
    /// Its first sample on the level under test reports an unclean reboot.
    crashes_on_level: bool,
    /// Its transition to the level under test fails (reversed; it stays where it was).
    fails_on_level: bool,
    /// The server asked it for health in its last check-in.
    asked: bool,
    noise: u64,
    /// The levels it went to, in order (a failure message shows them).
    went_to: Vec<Option<u32>>,
}

impl Played {
    /// One check-in: desired state, apply if it changed, report with a health sample.
    fn round(&mut self, server: &Server, under_test: u32, now_ms: u64) {
        let desired: Desired = server
            .http
            .get("/v1/host/desired", Some(&self.credential))
            .json(200);
        self.asked = desired.report_health;
        let mut outcomes = Vec::new();
        let patching = desired.level != self.level;
        let mut unclean_reboot = false;
        if patching {
            self.went_to.push(desired.level);
            let fails = self.fails_on_level && desired.level == Some(under_test);
            if !fails {
                self.level = desired.level;
                unclean_reboot = self.crashes_on_level && desired.level == Some(under_test);
            }
            outcomes.push(Outcome {
                id: format!("{}-{now_ms}", self.id),
                level: desired.level,
                result: if fails {
                    "timed-out-reversed"
                } else if desired.level.is_some() {
                    "applied"
                } else {
                    "reverted"
                }
                .into(),
                transition_secs: Some(0.2),
                blockers: Vec::new(),
                message: None,
                at_ms: now_ms,
            });
        }
        let on_test_level = self.level == Some(under_test);
        // Noise every host has: a deterministic draw around 2 retransmits per 1,000 segments.
        self.noise = self
            .noise
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let jitter = (self.noise >> 33) as f64 / (1u64 << 31) as f64; // 0..1
                                                                      // A clean fleet reports one rate everywhere: a test asserts what the gates decide,
                                                                      // and noise would make a clean level's halt a matter of chance (its rate is what
                                                                      // `graft bench rollouts` measures).
        let mut retransmits = if self.factor_on_level == 1.0 {
            2.0
        } else {
            1.5 + jitter
        };
        if on_test_level {
            retransmits *= self.factor_on_level;
        }
        let report = Report {
            kernel: kernel(),
            inventory: Inventory {
                patches: Vec::new(),
                level: self.level,
                taint: 0,
                kernel_errors: if on_test_level {
                    self.errors_on_level.unwrap_or(0)
                } else {
                    0
                },
            },
            outcomes,
            health: Some(HealthSample {
                at_ms: now_ms,
                interval_ms: 50,
                level: self.level,
                patching,
                unclean_reboot,
                metrics: BTreeMap::from([("tcp_retransmits".to_string(), retransmits)]),
            }),
        };
        server
            .http
            .post("/v1/host/report", Some(&self.credential), &report)
            .status(204);
    }
}

/// A fleet of `n` hosts on `kernel()`, `ring=a` for the first half and `ring=b` after, with
/// level 1 published.
pub fn fleet_of(db: Db<'_>, n: usize) -> (Fleet, Server, Vec<Played>) {
    let fleet = Fleet::new(db);
    let server = fleet.start();
    let enroll = server.http.token(&fleet.admin, "bootstrap", "enroll");
    let hosts = (0..n)
        .map(|i| {
            let ring = if i < n / 2 { "a" } else { "b" };
            let e =
                server
                    .http
                    .enroll(&enroll, &format!("web{i:02}"), &[("ring", ring)], &kernel());
            Played {
                id: e.host_id,
                credential: e.credential,
                level: None,
                errors_on_level: None,
                factor_on_level: 1.0,
                crashes_on_level: false,
                fails_on_level: false,
                asked: false,
                noise: i as u64 + 1,
                went_to: Vec::new(),
            }
        })
        .collect();
    let publish = LevelParts::new(1, 1, &["a"]).sign(&fleet.publisher);
    server
        .http
        .post(
            &levels_path(&kernel().stream()),
            Some(&fleet.admin),
            &publish,
        )
        .status(200);
    (fleet, server, hosts)
}

pub fn start(waves: &str) -> StartRollout {
    StartRollout {
        stream: kernel().stream(),
        level: 1,
        selector: None,
        canary: None,
        waves: waves.into(),
        bake_ms: 400,
        max_parallel: None,
        lost_after_ms: Some(60_000),
        auto_rollback: false,
    }
}

/// Plays every host until the rollout stops running (or 30 s pass).
pub fn play(server: &Server, admin: &str, hosts: &mut [Played], id: &str) -> RolloutView {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for h in hosts.iter_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            h.round(server, 1, now);
        }
        let view: RolloutView = server
            .http
            .get(&format!("/v1/rollouts/{id}"), Some(admin))
            .json(200);
        if view.state != RolloutState::Running {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "rollout still running after 30 s: {view:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A host that comes back from an unclean reboot after the apply, and transitions that fail
/// above the limit, each halt the wave at once and name their hosts; control hosts' troubles
/// (here: a failed transition to another level) do not count.
pub fn crashes_and_failed_transitions_halt_at_once(db: Db<'_>) {
    // A crash on one host of the first wave.
    let (fleet, server, mut hosts) = fleet_of(db, 20);
    let mut plan = start("50,100");
    plan.canary = Some(4);
    let started: RolloutView = server
        .http
        .post("/v1/rollouts", Some(&fleet.admin), &plan)
        .json(201);
    let first: Vec<String> = {
        // The rollout's order decides who is first: every host crashes on the level, so the
        // canary's hosts do.
        for h in hosts.iter_mut() {
            h.crashes_on_level = true;
        }
        let halted = play(&server, &fleet.admin, &mut hosts, &started.id);
        assert_eq!(halted.state, RolloutState::Halted, "{halted:?}");
        assert_eq!(halted.treated, 4, "only the canary moved: {halted:?}");
        let halt = halted.decisions.last().unwrap();
        assert!(!halt.at_bake_end, "a hard gate halts at once");
        assert_eq!(halt.reasons[0].gate, "crash", "{halt:?}");
        assert!(halted.reason.as_deref().unwrap().contains("unclean reboot"));
        halt.reasons[0].hosts.clone()
    };
    // The halt comes at the first crash reported: the named hosts are moved ones (the
    // canary's others may have applied since).
    let on_level: Vec<String> = hosts
        .iter()
        .filter(|h| h.level == Some(1))
        .map(|h| h.id.clone())
        .collect();
    assert!(
        !first.is_empty() && first.iter().all(|h| on_level.contains(h)),
        "{first:?} among {on_level:?}"
    );

    // Failed transitions: one of four (25%) is above the 2% limit.
    let (fleet, server, mut hosts) = fleet_of(db, 20);
    for h in hosts.iter_mut() {
        h.fails_on_level = true;
    }
    let started: RolloutView = server
        .http
        .post("/v1/rollouts", Some(&fleet.admin), &plan)
        .json(201);
    let halted = play(&server, &fleet.admin, &mut hosts, &started.id);
    assert_eq!(halted.state, RolloutState::Halted, "{halted:?}");
    let halt = halted.decisions.last().unwrap();
    assert_eq!(halt.reasons[0].gate, "transition-failures", "{halt:?}");
    // At the first failures reported: each named, out of the four moved.
    let named = halt.reasons[0].hosts.len();
    assert!((1..=4).contains(&named), "{halt:?}");
    assert!(
        halt.reasons[0]
            .message
            .contains(&format!("{named} of 4 moved hosts failed")),
        "{}",
        halt.reasons[0].message
    );
    assert!(
        hosts.iter().all(|h| h.level.is_none()),
        "nobody took the level"
    );
}

/// The probes the publisher signed with a level travel, with its signed metadata, to the
/// hosts a rollout of it samples, control hosts included (they run what the treated run);
/// a level whose probes break the limits is refused, with the reason, and nothing stored.
pub fn probes_travel_to_sampled_hosts(db: Db<'_>) {
    let (fleet, server, hosts) = fleet_of(db, 10);
    let stream = kernel().stream();
    // Level 2 with a probe; a level with a bad probe name is refused first.
    let mut bad = LevelParts::new(2, 2, &["a", "b"]);
    bad.level.probes.insert("Bad Name".into(), "echo 1".into());
    let refused = server
        .http
        .post(
            &levels_path(&stream),
            Some(&fleet.admin),
            &bad.sign(&fleet.publisher),
        )
        .error(400, "invalid");
    assert!(refused.message.contains("probe name"), "{refused:?}");
    let mut parts = LevelParts::new(2, 2, &["a", "b"]);
    parts
        .level
        .probes
        .insert("queue_depth".into(), "cat /run/queue-depth".into());
    server
        .http
        .post(
            &levels_path(&stream),
            Some(&fleet.admin),
            &parts.sign(&fleet.publisher),
        )
        .status(200);
    // Before any rollout, nobody is asked and no probes travel.
    let quiet: Desired = server
        .http
        .get("/v1/host/desired", Some(&hosts[0].credential))
        .json(200);
    assert!(!quiet.report_health && quiet.probes.is_none(), "{quiet:?}");
    let mut plan = start("100");
    plan.level = 2;
    plan.bake_ms = 60_000;
    let started: RolloutView = server
        .http
        .post("/v1/rollouts", Some(&fleet.admin), &plan)
        .json(201);
    // Once the rollout samples them (its first tick), every host, moved or not, gets the
    // level's signed probes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let desired = loop {
        let d: Desired = server
            .http
            .get("/v1/host/desired", Some(&hosts[0].credential))
            .json(200);
        if d.report_health {
            break d;
        }
        assert!(Instant::now() < deadline, "never asked for health: {d:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let signed = desired.probes.expect("the level's probes");
    let level = signed.peek().unwrap();
    assert_eq!(level.level, 2);
    assert_eq!(level.probes["queue_depth"], "cat /run/queue-depth");
    assert_eq!(
        signed,
        parts.sign(&fleet.publisher).signed,
        "as the publisher signed it"
    );
    // Aborted, it asks nobody and sends no probes.
    server
        .http
        .post(
            &format!("/v1/rollouts/{}/abort", started.id),
            Some(&fleet.admin),
            &(),
        )
        .status(200);
    let after: Desired = server
        .http
        .get("/v1/host/desired", Some(&hosts[0].credential))
        .json(200);
    assert!(!after.report_health && after.probes.is_none(), "{after:?}");
}

/// Rounds of every host for longer than a bake, before a rollout starts: the baseline the
/// gates compare each host's window with, as a fleet whose agents report all along has.
pub fn report_a_baseline(server: &Server, hosts: &mut [Played]) {
    let until = Instant::now() + Duration::from_millis(600);
    while Instant::now() < until {
        for h in hosts.iter_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            h.round(server, 1, now);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A clean level goes out wave by wave to every host; each wave's gates are recorded.
pub fn a_clean_rollout_completes_wave_by_wave(db: Db<'_>) {
    let (fleet, server, mut hosts) = fleet_of(db, 40);
    let started: RolloutView = server
        .http
        .post("/v1/rollouts", Some(&fleet.admin), &start("25,100"))
        .json(201);
    assert_eq!(started.hosts, 40);
    assert_eq!(
        started.waves.iter().map(|w| w.target).collect::<Vec<_>>(),
        vec![10, 40]
    );
    // While it runs, the hosts its gates read are asked for health at every check-in (in a
    // fleet this small, every host).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hosts.iter().all(|h| h.asked) {
        assert!(Instant::now() < deadline, "every host is sampled");
        std::thread::sleep(Duration::from_millis(50));
        for h in hosts.iter_mut() {
            h.round(&server, 1, now_secs() * 1000 + h.noise % 1000);
        }
    }
    let done = play(&server, &fleet.admin, &mut hosts, &started.id);
    assert_eq!(done.state, RolloutState::Completed, "{done:?}");
    assert_eq!((done.treated, done.applied), (40, 40));
    // Over, it asks nobody.
    for h in hosts.iter_mut() {
        h.round(&server, 1, now_secs() * 1000 + 1);
    }
    assert!(
        hosts.iter().all(|h| !h.asked),
        "nobody is asked after the rollout"
    );
    assert!(hosts.iter().all(|h| h.level == Some(1)));
    // One decision per wave, both "continue"; the first compared 10 treated with the others,
    // the last had no control left and says so.
    assert_eq!(done.decisions.len(), 2, "{:?}", done.decisions);
    assert!(done.decisions.iter().all(|d| d.decision == "continue"));
    assert!(done.decisions[1]
        .notes
        .iter()
        .any(|n| n.gate == "no-control"));
    assert!(done.waves.iter().all(|w| w.passed_ms.is_some()));
    // Listed, and the start audited.
    let list: Vec<RolloutView> = server
        .http
        .get("/v1/rollouts", Some(&fleet.admin))
        .json(200);
    assert_eq!(list.len(), 1);
    assert!(
        list[0].decisions.is_empty(),
        "the list leaves decisions out"
    );
    let audit: Vec<graft_protocol::api::AuditEntry> =
        server.http.get("/v1/audit", Some(&fleet.admin)).json(200);
    assert!(audit
        .iter()
        .any(|e| e.what.starts_with("start rollout") && e.result == "ok"));
}

/// A host that logs a kernel warning after taking the level halts the rollout in its first
/// wave, names the host, and moves nobody else; resume accepts that host and goes on, until
/// the next wave's host does the same.
pub fn a_kernel_warning_halts_the_first_wave(db: Db<'_>) {
    let (fleet, server, mut hosts) = fleet_of(db, 20);
    for h in hosts.iter_mut() {
        h.errors_on_level = Some(1);
    }
    // A canary of one host, so that the first halt is about exactly one host.
    let mut canary = start("10,100");
    canary.canary = Some(1);
    let started: RolloutView = server
        .http
        .post("/v1/rollouts", Some(&fleet.admin), &canary)
        .json(201);
    assert_eq!(
        started.waves.iter().map(|w| w.target).collect::<Vec<_>>(),
        vec![1, 2, 20]
    );
    let halted = play(&server, &fleet.admin, &mut hosts, &started.id);
    assert_eq!(halted.state, RolloutState::Halted, "{halted:?}");
    assert_eq!(halted.wave, 1);
    assert_eq!(halted.treated, 1, "only the canary moved");
    let halt = halted.decisions.last().unwrap();
    assert_eq!(halt.decision, "halt");
    assert!(!halt.at_bake_end, "a hard gate halts at once");
    assert_eq!(halt.reasons[0].gate, "kernel-error");
    let moved: Vec<String> = hosts
        .iter()
        .filter(|h| h.level == Some(1))
        .map(|h| h.id.clone())
        .collect();
    assert_eq!(halt.reasons[0].hosts, moved, "{halt:?}");
    assert!(halted
        .reason
        .as_deref()
        .unwrap()
        .contains("kernel warnings"));
    // Nobody else moves while it waits for a human.
    for _ in 0..3 {
        for h in hosts.iter_mut() {
            h.round(&server, 1, now_secs() * 1000 + h.noise % 1000);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(hosts.iter().filter(|h| h.level == Some(1)).count(), 1);

    // Pausing a halted rollout is refused; resume accepts the named hosts and goes on, and
    // the next wave's hosts halt it again (they log the same warning).
    server
        .http
        .post(
            &format!("/v1/rollouts/{}/pause", started.id),
            Some(&fleet.admin),
            &(),
        )
        .error(409, "conflict");
    let resumed: RolloutView = server
        .http
        .post(
            &format!("/v1/rollouts/{}/resume", started.id),
            Some(&fleet.admin),
            &(),
        )
        .json(200);
    assert_eq!(resumed.state, RolloutState::Running);
    let again = play(&server, &fleet.admin, &mut hosts, &started.id);
    assert_eq!(again.state, RolloutState::Halted, "{again:?}");
    assert_eq!(again.wave, 2);
    let last = again.decisions.last().unwrap();
    assert!(
        last.reasons[0].hosts.iter().all(|h| !moved.contains(h)),
        "the accepted hosts are not named again: {last:?}"
    );

    // Rollback: every moved host back to no level (a revert: no signature needed).
    let back: RolloutView = server
        .http
        .post(
            &format!("/v1/rollouts/{}/rollback", started.id),
            Some(&fleet.admin),
            &Rollback::default(),
        )
        .json(200);
    assert_eq!(back.state, RolloutState::RolledBack);
    for h in hosts.iter_mut() {
        h.round(&server, 1, now_secs() * 1000 + 500 + h.noise % 100);
    }
    assert!(
        hosts.iter().all(|h| h.level.is_none()),
        "every host reverted"
    );
    // Over: no resume, no second rollback.
    server
        .http
        .post(
            &format!("/v1/rollouts/{}/resume", started.id),
            Some(&fleet.admin),
            &(),
        )
        .error(409, "conflict");
    server
        .http
        .post(
            &format!("/v1/rollouts/{}/rollback", started.id),
            Some(&fleet.admin),
            &Rollback::default(),
        )
        .error(409, "conflict");
}

/// Treated hosts whose retransmits double halt the rollout at the end of the first wave's
/// bake, with the metric, its effect and p-value named; the control is the hosts still on
/// the previous level.
pub fn a_metric_regression_halts_at_the_bake_end(db: Db<'_>) {
    let (_fleet, _server, halted) = halted_rollout(db);
    assert_eq!((halted.wave, halted.treated), (1, 10));
    let halt = halted.decisions.last().unwrap();
    assert!(halt.at_bake_end);
    let r = &halt.reasons[0];
    assert_eq!(
        (r.gate.as_str(), r.metric.as_deref()),
        ("metric", Some("tcp_retransmits"))
    );
    assert!(r.effect.unwrap() > 0.9, "{r:?}");
    assert!(r.p_value.unwrap() < 0.01, "{r:?}");
    assert_eq!((r.n_treatment, r.n_control), (Some(10), Some(30)));
}

/// Bad starts and actions: each a clear error, nothing stored.
pub fn bad_rollouts_are_refused(db: Db<'_>) {
    let (fleet, server, mut hosts) = fleet_of(db, 6);
    let http = &server.http;
    let refuse = |s: &StartRollout, status: u16, kind: &str, needle: &str| {
        let e = http
            .post("/v1/rollouts", Some(&fleet.admin), s)
            .error(status, kind);
        assert!(e.message.contains(needle), "{needle:?} not in {e:?}");
    };
    let mut s = start("1,5,25");
    refuse(&s, 400, "invalid", "100%");
    s = start("100");
    s.level = 7;
    refuse(&s, 404, "not-found", "no level 7");
    s = start("100");
    s.stream = "6.1.0-0-amd64@000000000000".into();
    refuse(&s, 404, "not-found", "no stream");
    s = start("100");
    s.selector = Some("ring=nowhere".into());
    refuse(&s, 400, "invalid", "matches no host");
    s = start("100");
    s.canary = Some(0);
    refuse(&s, 400, "invalid", "canary");
    let viewer = http.token(&fleet.admin, "watcher", "viewer");
    http.post("/v1/rollouts", Some(&viewer), &start("100"))
        .error(403, "forbidden");
    assert_eq!(fleet.sql_i64("SELECT COUNT(*) FROM rollouts"), 0);

    // One rollout per stream at a time; pause, then abort; an aborted one does not resume.
    let mut paused_start = start("50,100");
    paused_start.selector = Some("ring=a".into());
    let first: RolloutView = http
        .post("/v1/rollouts", Some(&fleet.admin), &paused_start)
        .json(201);
    assert_eq!(first.hosts, 3);
    let e = http
        .post("/v1/rollouts", Some(&fleet.admin), &start("100"))
        .error(409, "conflict");
    assert!(e.message.contains(&first.id), "{e:?}");
    let paused: RolloutView = http
        .post(
            &format!("/v1/rollouts/{}/pause", first.id),
            Some(&fleet.admin),
            &(),
        )
        .json(200);
    assert_eq!(paused.state, RolloutState::Paused);
    let aborted: RolloutView = http
        .post(
            &format!("/v1/rollouts/{}/abort", first.id),
            Some(&fleet.admin),
            &(),
        )
        .json(200);
    assert_eq!(aborted.state, RolloutState::Aborted);
    let e = http
        .post(
            &format!("/v1/rollouts/{}/resume", first.id),
            Some(&fleet.admin),
            &(),
        )
        .error(409, "conflict");
    assert!(e.message.contains("aborted"), "{e:?}");
    http.get("/v1/rollouts/r-nonexistent", Some(&fleet.admin))
        .error(404, "not-found");

    // Level 2 from level 1: auto-rollback is refused (going back needs a signature), and a
    // rollback without the re-signed metadata names the command that signs it.
    let assign = graft_protocol::api::Assign {
        stream: kernel().stream(),
        level: Some(1),
        selector: None,
    };
    http.post("/v1/assignments", Some(&fleet.admin), &assign)
        .status(200);
    for h in hosts.iter_mut() {
        h.round(&server, 2, now_secs() * 1000 + h.noise);
    }
    let publish = LevelParts::new(2, 2, &["a", "b"]).sign(&fleet.publisher);
    http.post(
        &levels_path(&kernel().stream()),
        Some(&fleet.admin),
        &publish,
    )
    .status(200);
    let mut s = start("100");
    s.level = 2;
    s.auto_rollback = true;
    refuse(&s, 400, "invalid", "fresh signature");
    s.auto_rollback = false;
    let second: RolloutView = http.post("/v1/rollouts", Some(&fleet.admin), &s).json(201);
    assert_eq!(second.from_level, Some(1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while http
        .get(&format!("/v1/rollouts/{}", second.id), Some(&fleet.admin))
        .json::<RolloutView>(200)
        .treated
        < 6
    {
        assert!(Instant::now() < deadline, "the wave never went out");
        std::thread::sleep(Duration::from_millis(50));
    }
    for h in hosts.iter_mut() {
        h.round(&server, 2, now_secs() * 1000 + 100 + h.noise);
    }
    assert!(hosts.iter().all(|h| h.level == Some(2)));
    let rollback = format!("/v1/rollouts/{}/rollback", second.id);
    let e = http
        .post(&rollback, Some(&fleet.admin), &Rollback::default())
        .error(409, "conflict");
    assert!(e.message.contains("--signing-key"), "{e:?}");
    // Re-signed by someone the fleet does not trust: refused.
    let level1 = LevelParts::new(1, 3, &["a"]);
    let mut resigned = level1.sign(&fleet.publisher).signed;
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let forged = SignedLevel::sign(&resigned.peek().unwrap(), &stranger);
    http.post(
        &rollback,
        Some(&fleet.admin),
        &Rollback {
            resigned: Some(forged),
        },
    )
    .error(400, "invalid");
    // Re-signed by the publisher with version 3: the hosts go back to level 1 and accept it.
    resigned = level1.sign(&fleet.publisher).signed;
    let back: RolloutView = http
        .post(
            &rollback,
            Some(&fleet.admin),
            &Rollback {
                resigned: Some(resigned),
            },
        )
        .json(200);
    assert_eq!(back.state, RolloutState::RolledBack);
    let desired: Desired = http
        .get("/v1/host/desired", Some(&hosts[0].credential))
        .json(200);
    assert_eq!(desired.level, Some(1));
    assert_eq!(
        desired.signed.unwrap().peek().unwrap().version,
        3,
        "the re-signed metadata, newer than level 2's"
    );
    let audit: Vec<graft_protocol::api::AuditEntry> =
        http.get("/v1/audit", Some(&fleet.admin)).json(200);
    for what in ["pause rollout", "abort rollout", "rollback rollout"] {
        assert!(
            audit.iter().any(|e| e.what.starts_with(what)),
            "{what} audited"
        );
    }
    assert!(audit
        .iter()
        .any(|e| e.what.starts_with("resume rollout") && e.result != "ok"));
}

/// A fleet of 40 hosts whose rollout of level 1 halted in its first wave: the treated hosts'
/// retransmits doubled.
pub fn halted_rollout(db: Db<'_>) -> (Fleet, Server, RolloutView) {
    let (fleet, server, mut hosts) = fleet_of(db, 40);
    for h in hosts.iter_mut() {
        h.factor_on_level = 2.0;
    }
    report_a_baseline(&server, &mut hosts);
    let started: RolloutView = server
        .http
        .post("/v1/rollouts", Some(&fleet.admin), &start("25,100"))
        .json(201);
    let halted = play(&server, &fleet.admin, &mut hosts, &started.id);
    let went_to: Vec<_> = hosts.iter().map(|h| &h.went_to).collect();
    assert_eq!(
        halted.state,
        RolloutState::Halted,
        "{halted:?}\nthe hosts' levels, in order: {went_to:?}"
    );
    (fleet, server, halted)
}

/// The dashboard of a halted rollout, as a browser without script gets it: sign-in with an
/// operator token kept in an HttpOnly cookie, the rollout list, the rollout's charts and
/// decisions, the host table with filters; and `/metrics` for a scraper's bearer token.
pub fn the_dashboard_shows_a_halted_rollout(db: Db<'_>) {
    let (fleet, server, started) = halted_rollout(db);
    let http = &server.http;
    let viewer = http.token(&fleet.admin, "wall-screen", "viewer");

    // Signed out: every page sends to the sign-in form; a wrong token is refused there.
    let answer = http.get("/", None);
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location").as_deref(), Some("/login"));
    let login = http.get("/login", None);
    assert!(text(&login, 200).contains("name=\"token\""));
    let form = |token: &str| {
        http.request(
            "POST",
            "/login",
            None,
            Some(format!("token={token}").into_bytes()),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .unwrap()
    };
    let refused = form("not-a-token");
    assert!(text(&refused, 401).contains("unknown credential"));
    let signed = form(&viewer);
    assert_eq!(signed.status, 303);
    let cookie = signed.header("set-cookie").unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    let page = |path: &str, status: u16| {
        text(
            &http
                .request("GET", path, None, None, &[("cookie", &session)])
                .unwrap(),
            status,
        )
    };

    // The list: the rollout, halted, in wave 1; hosts per level.
    let index = page("/", 200);
    assert!(index.contains(&started.id), "{index}");
    assert!(index.contains("badge halted"), "{index}");
    assert!(index.contains("wall-screen (viewer)"));
    assert!(
        index.contains("<td class=\"n\">1</td><td class=\"n\">10</td>"),
        "10 hosts on level 1: {index}"
    );
    // The rollout: why it halted, a chart per metric, the decision with its numbers.
    let detail = page(&format!("/rollouts/{}", started.id), 200);
    assert!(detail.contains("id=\"reason\""), "{detail}");
    assert!(
        detail.contains("tcp_retransmits is higher on treated hosts"),
        "{detail}"
    );
    assert!(detail.contains("<svg class=\"chart\" data-metric=\"tcp_retransmits\""));
    assert!(detail.contains("class=\"treatment\"") && detail.contains("class=\"control\""));
    assert!(detail.contains("badge halt"), "{detail}");
    assert!(detail.contains("10 vs 30"), "the groups' sizes: {detail}");
    page("/rollouts/r-unknown", 404);
    // Hosts, filtered; names are escaped.
    let on_level = page("/hosts?level=1", 200);
    assert!(on_level.contains("10 hosts shown"), "{on_level}");
    assert!(page("/hosts?label=ring%3Da", 200).contains("20 hosts shown"));
    assert!(page("/hosts?health=bogus", 400).contains("neither healthy nor unhealthy"));
    let enroll = http.token(&fleet.admin, "late", "enroll");
    http.enroll(&enroll, "<script>alert(1)</script>", &[], &kernel());
    let all = page("/hosts", 200);
    assert!(all.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!all.contains("<script>alert"));

    // Metrics for a scraper's token; none without one.
    http.get("/metrics", None).error(401, "unauthorized");
    let metrics = text(&http.get("/metrics", Some(&viewer)), 200);
    for line in [
        "graft_rollouts{state=\"halted\"} 1",
        "graft_gate_decisions{decision=\"halt\",gate=\"metric\"} 1",
        &format!(
            "graft_hosts{{stream=\"{}\",level=\"1\"}} 10",
            kernel().stream()
        ),
        &format!(
            "graft_rollout_wave{{rollout=\"{}\",stream=\"{}\",level=\"1\",state=\"halted\"}} 1",
            started.id,
            kernel().stream()
        ),
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains("# TYPE graft_checkins_total counter"));
    // Sign out: the cookie is cleared.
    let out = http.get("/logout", None);
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
}

fn text(answer: &crate::support::Answer, status: u16) -> String {
    answer.status(status);
    String::from_utf8(answer.body.clone()).unwrap()
}
