//! `graft fleet simulate --rollout`: a staged rollout through the real server, to simulated
//! hosts that behave like a fleet, trouble included.
//!
//! The steps:
//! 1. every host enrolls on one kernel build; level 1 of its stream is published, signed with
//!    the publisher's key;
//! 2. a rollout of level 1 starts (`--waves`, `--bake`), and the server's own driver moves it;
//! 3. each host checks in once per interval at its phase, as agents do; a host whose desired
//!    level changed "applies" it: its transition may fail (`--transition-failure-rate`), it may
//!    crash and come back (`--crash-rate`, an unclean reboot in its next sample) or stop
//!    reporting (`--stuck-rate`); it reports the outcome and a health sample of the patching
//!    window (the spike every host shows while a patch goes live);
//! 4. between applies, a share of the hosts (`--report-share`) sends a health sample each
//!    interval: metrics from a seeded model of a fleet (hosts differ, intervals are noisy),
//!    with `--regression METRIC=FACTOR` on hosts that run the new level;
//! 5. it ends when the rollout is no longer running: completed, or halted with its reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graft_client::{Client, ClientError};
use graft_protocol::api::{HealthSample, Inventory, Outcome, Report};
use graft_protocol::rollout::{GateDecision, RolloutState, RolloutView, StartRollout};
use graft_rollout::model::HostModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{wire, SimError, Target};

/// The level the simulated rollout takes hosts to.
const LEVEL: u32 = 1;

/// What trouble to inject, and how the rollout runs.
#[derive(Clone, Debug)]
pub struct RolloutSim {
    /// Cumulative percentages, ending at 100.
    pub waves: String,
    /// Bake per wave.
    pub bake: Duration,
    /// Seed of every draw (hosts' metric levels, noise, trouble).
    pub seed: u64,
    /// Factors on metrics of hosts that run the new level.
    pub regression: BTreeMap<String, f64>,
    /// Chance that a host crashes after applying.
    pub crash_rate: f64,
    /// Chance that a host's transition fails.
    pub transition_failure_rate: f64,
    /// Chance that a host stops reporting after applying.
    pub stuck_rate: f64,
    /// Share of hosts that send a health sample in an interval without an apply.
    pub report_share: f64,
    /// Give up after this long.
    pub timeout: Duration,
}

/// How the rollout ended: what `--json` shows under `rollout`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RolloutOutcome {
    /// The rollout's id.
    pub id: String,
    /// `completed` or `halted` (or `running`, if it timed out).
    pub state: String,
    /// The wave it ended in, from 1.
    pub wave: u32,
    /// Waves planned.
    pub waves: usize,
    /// Why it halted.
    pub reason: Option<String>,
    /// Hosts selected.
    pub hosts: u64,
    /// Hosts moved.
    pub treated: u64,
    /// Seconds from start to end.
    pub seconds: f64,
    /// Health reports sent.
    pub reports: u64,
    /// Failed requests.
    pub errors: u64,
    /// Every gate decision the server logged.
    pub decisions: Vec<GateDecision>,
}

/// One simulated host.
struct Host {
    credential: String,
    etag: Option<String>,
    phase: f64,
    level: Option<u32>,
    model: HostModel,
    stuck: bool,
    crashed: bool,
}

/// Runs a rollout over `hosts` hosts enrolled in `shares` (one per worker), all on `kernel`.
pub(crate) fn run(
    sim: &RolloutSim,
    target: &Target,
    shares: Vec<Vec<(String, f64)>>,
    interval: Duration,
    progress: &dyn Fn(&str),
) -> Result<RolloutOutcome, SimError> {
    let admin = Client::new(&target.url, target.ca.as_deref())?.with_secret(target.token.clone());
    // 1. The level, signed and published.
    let stream = publish_level(&admin, target)?;
    // 2. The rollout.
    let lost_after = interval.mul_f64(3.0) + sim.bake + Duration::from_secs(2);
    let started = admin.start_rollout(&StartRollout {
        stream: stream.clone(),
        level: LEVEL,
        selector: None,
        canary: None,
        waves: sim.waves.clone(),
        bake_ms: millis(sim.bake),
        max_parallel: None,
        lost_after_ms: Some(millis(lost_after)),
        auto_rollback: false,
    })?;
    progress(&format!(
        "rollout {} of level {LEVEL} to {} hosts in {} waves ({}), bake {:.0} s",
        started.id,
        started.hosts,
        started.waves.len(),
        started
            .waves
            .iter()
            .map(|w| w.target.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        sim.bake.as_secs_f64()
    ));
    // 3. The hosts, until the rollout stops running.
    let done = Arc::new(AtomicBool::new(false));
    let reports = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let workers: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(w, share)| {
            let mut rng = ChaCha8Rng::seed_from_u64(sim.seed ^ (w as u64).wrapping_mul(0x9E37));
            let hosts: Vec<Host> = share
                .into_iter()
                .map(|(credential, phase)| Host {
                    credential,
                    etag: None,
                    phase,
                    level: None,
                    model: HostModel::draw(&mut rng),
                    stuck: false,
                    crashed: false,
                })
                .collect();
            let client = Client::new(&target.url, target.ca.as_deref());
            let url = target.url.clone();
            let (sim, done, reports, errors) = (
                sim.clone(),
                Arc::clone(&done),
                Arc::clone(&reports),
                Arc::clone(&errors),
            );
            std::thread::spawn(move || -> Result<(), ClientError> {
                let client = client?;
                let mut wire = wire::Wire::for_server(&url, client.clone());
                let mut worker = Worker {
                    sim: &sim,
                    client: &client,
                    rng,
                    reports: &reports,
                    errors: &errors,
                };
                worker.check_in_loop(&mut wire, hosts, begin, interval, &done);
                Ok(())
            })
        })
        .collect();
    // 4. Follow the rollout.
    let mut last = String::new();
    let view = loop {
        std::thread::sleep(Duration::from_millis(500));
        let view = match admin.rollout(&started.id) {
            Ok(v) => v,
            Err(e) if e.is_transient() => continue,
            Err(e) => {
                done.store(true, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let line = format!(
            "{} in wave {}/{}: {} of {} hosts moved, {} applied",
            view.state.as_str(),
            view.wave,
            view.waves.len(),
            view.treated,
            view.hosts,
            view.applied
        );
        if line != last {
            progress(&line);
            last = line;
        }
        if view.state != RolloutState::Running || begin.elapsed() > sim.timeout {
            break view;
        }
    };
    let seconds = begin.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| SimError::Server("a simulation worker panicked".into()))??;
    }
    Ok(outcome(view, seconds, &reports, &errors))
}

fn outcome(
    view: RolloutView,
    seconds: f64,
    reports: &AtomicU64,
    errors: &AtomicU64,
) -> RolloutOutcome {
    RolloutOutcome {
        id: view.id,
        state: view.state.as_str().to_string(),
        wave: view.wave.max(1),
        waves: view.waves.len(),
        reason: view.reason,
        hosts: view.hosts,
        treated: view.treated,
        seconds,
        reports: reports.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        decisions: view.decisions,
    }
}

/// One worker's hosts and its draws.
struct Worker<'a> {
    sim: &'a RolloutSim,
    client: &'a Client,
    rng: ChaCha8Rng,
    reports: &'a AtomicU64,
    errors: &'a AtomicU64,
}

impl Worker<'_> {
    fn check_in_loop(
        &mut self,
        wire: &mut wire::Wire,
        mut hosts: Vec<Host>,
        begin: Instant,
        interval: Duration,
        done: &AtomicBool,
    ) {
        hosts.sort_by(|a, b| a.phase.total_cmp(&b.phase));
        for cycle in 0u32.. {
            for host in hosts.iter_mut() {
                if done.load(Ordering::Relaxed) {
                    return;
                }
                let due = begin + interval.mul_f64(f64::from(cycle) + host.phase);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if host.stuck {
                    continue;
                }
                if let Err(e) = self.check_in(wire, host, interval) {
                    tracing::debug!("simulated check-in failed: {e}");
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// One host's check-in: the desired level; an apply when it changed; a report when there
    /// is something to say or the host is one of this interval's reporters.
    fn check_in(
        &mut self,
        wire: &mut wire::Wire,
        host: &mut Host,
        interval: Duration,
    ) -> Result<(), String> {
        let wanted = match wire.desired(&host.credential, host.etag.as_deref())? {
            wire::Answer::NotModified => None,
            wire::Answer::Changed(tag, level) => {
                host.etag = tag;
                Some(level)
            }
        };
        let now_ms = now_ms();
        let mut outcomes = Vec::new();
        let mut patching = false;
        if let Some(level) = wanted.filter(|l| *l != host.level) {
            patching = true;
            let failed = self.rng.gen_bool(self.sim.transition_failure_rate);
            if !failed {
                host.level = level;
                host.crashed = self.rng.gen_bool(self.sim.crash_rate);
                host.stuck = self.rng.gen_bool(self.sim.stuck_rate);
            }
            outcomes.push(Outcome {
                id: format!("sim-{now_ms}-{}", self.rng.gen::<u32>()),
                level,
                result: if failed {
                    "timed-out-reversed"
                } else {
                    "applied"
                }
                .into(),
                transition_secs: Some(if failed { 60.0 } else { 0.3 }),
                blockers: Vec::new(),
                message: failed.then(|| "the transition timed out and was reversed".into()),
                at_ms: now_ms,
            });
            if host.stuck {
                // It hangs right after the apply: nothing more is heard from it.
                return Ok(());
            }
        } else if !host.crashed && !self.rng.gen_bool(self.sim.report_share) {
            return Ok(());
        }
        let on_level = host.level == Some(LEVEL);
        let metrics = host.model.interval(
            &mut self.rng,
            patching && on_level,
            on_level.then_some(&self.sim.regression),
        );
        let report = Report {
            kernel: crate::kernel(0),
            inventory: Inventory {
                patches: Vec::new(),
                level: host.level,
                taint: 0,
                kernel_errors: 0,
            },
            outcomes,
            health: Some(HealthSample {
                at_ms: now_ms,
                interval_ms: millis(interval),
                level: host.level,
                patching,
                unclean_reboot: std::mem::take(&mut host.crashed),
                metrics,
            }),
        };
        self.client
            .report_as(Some(&host.credential), &report)
            .map_err(|e| e.to_string())?;
        self.reports.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Publishes level 1 of the simulated fleet's stream: a stand-in module (the server stores
/// modules, it does not load them) with a manifest for the stream's kernel, signed.
fn publish_level(admin: &Client, target: &Target) -> Result<String, SimError> {
    let key_path = target.signing_key.as_ref().ok_or_else(|| {
        SimError::Option(
            "--rollout needs the publisher's key: run without --server (the simulation's own \
             server keeps its key)"
                .into(),
        )
    })?;
    let key_text = std::fs::read_to_string(key_path)
        .map_err(|e| SimError::Server(format!("reading {}: {e}", key_path.display())))?;
    let key = graft_protocol::trust::signing_key_from_hex(&key_text)
        .map_err(|e| SimError::Server(format!("{}: {e}", key_path.display())))?;
    let dir = tempfile::tempdir().map_err(|e| SimError::Server(e.to_string()))?;
    let module = dir.path().join("graft_sim_level1.ko");
    let bytes = b"\x7fELF a stand-in: simulated hosts never load it".to_vec();
    std::fs::write(&module, &bytes).map_err(|e| SimError::Server(e.to_string()))?;
    let kernel = crate::kernel(0);
    let manifest = graft_manifest::Manifest {
        name: "graft_sim_level1".into(),
        kernel: graft_manifest::ManifestKernel {
            target: format!("debian:{}", kernel.release),
            release: kernel.release.clone(),
            build_id: kernel.build_id.clone(),
        },
        replace: true,
        set: None,
        functions: vec![],
        new_functions: vec![],
        patches: vec![graft_manifest::Digest256 {
            file: "simulated.patch".into(),
            sha256: graft_manifest::sha256(b"simulated.patch"),
        }],
        module: graft_manifest::Digest256 {
            file: "graft_sim_level1.ko".into(),
            sha256: graft_manifest::sha256(&bytes),
        },
        graft_version: env!("CARGO_PKG_VERSION").into(),
    };
    let manifest_json =
        serde_json::to_string_pretty(&manifest).map_err(|e| SimError::Server(e.to_string()))?;
    std::fs::write(graft_manifest::manifest_path(&module), manifest_json)
        .map_err(|e| SimError::Server(e.to_string()))?;
    let now = now_ms() / 1000;
    let prepared = graft_client::publish::prepare(&module, &key, LEVEL, now, now + 86_400, false)
        .map_err(|e| SimError::Server(format!("preparing the level: {e}")))?;
    admin.publish(&prepared.stream, &prepared.publish)?;
    Ok(prepared.stream)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
