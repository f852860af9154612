//! `graft fleet simulate --rollout` and `graft bench rollouts`: staged rollouts through the
//! real server, to simulated hosts that behave like a fleet, trouble included.
//!
//! A [`SimFleet`] is enrolled once, on one kernel build; its hosts then check in once per
//! interval at their phase, as agents do, from worker threads that run until the fleet is
//! dropped. Their reports go through a pool of reporter threads: a worker runs many hosts, and
//! while the server takes a report (a wave of applies is a burst of them) the worker's other
//! hosts keep checking in, as agents, each its own process, do. A host with a report on its way
//! sends no other until the first is answered, and keeps its outcomes until one gets through.
//! Each [`SimFleet::rollout`]:
//! 1. publishes the stream's next level, signed with the publisher's key, and starts a rollout
//!    of it (`--waves`, `--bake`), which the server's own driver moves;
//! 2. tells the hosts what this run injects. A host whose desired level changed "applies" it:
//!    its transition may fail, it may crash and come back (an unclean reboot in its next
//!    sample) or stop reporting; it reports the outcome and a sample of the patching window
//!    (the spike every host shows while a patch goes live). As agents do, the hosts the
//!    server asks for health (a rollout samples its treated and control hosts, and the next
//!    wave's, for their baselines) report at every check-in; of the others, a share does in
//!    an interval (`--report-share`: the reports of changes and the hourly ones). Metrics come
//!    from a seeded model of a fleet
//!    (hosts differ, intervals are noisy), redrawn for every run, with the run's regression on
//!    hosts that run the level under test;
//! 3. follows the rollout until it is no longer running;
//! 4. if it did not complete, aborts it and assigns its level to every host, then waits until
//!    they all run it, so that the next run starts from one level.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use graft_client::{Client, ClientError};
use graft_protocol::api::{Assign, HealthSample, HostFilter, Inventory, Outcome, Report};
use graft_protocol::rollout::{GateDecision, RolloutState, RolloutView, StartRollout};
use graft_rollout::model::HostModel;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{wire, SimError, Target};

/// What one run injects, and how its rollout runs.
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
    /// Share of the hosts the server did not ask for health that report in an interval.
    pub report_share: f64,
    /// Give up after this long.
    pub timeout: Duration,
    /// The model's spreads between hosts and intervals, scaled (1: the model's; 0: none, so
    /// that only the injected trouble differs).
    pub noise: f64,
}

/// How a rollout ended: what `--json` shows under `rollout`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RolloutOutcome {
    /// The rollout's id.
    pub id: String,
    /// The level it rolled out.
    pub level: u32,
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
    /// Health reports sent during the run.
    pub reports: u64,
    /// Failed requests during the run.
    pub errors: u64,
    /// Every gate decision the server logged.
    pub decisions: Vec<GateDecision>,
}

/// What the hosts are told about the current run.
#[derive(Clone, Debug)]
struct Run {
    /// Changes with every run: hosts redraw their model.
    epoch: u64,
    seed: u64,
    level: u32,
    regression: BTreeMap<String, f64>,
    crash_rate: f64,
    transition_failure_rate: f64,
    stuck_rate: f64,
    report_share: f64,
    noise: f64,
}

/// One simulated host.
struct Host {
    credential: String,
    etag: Option<String>,
    phase: f64,
    level: Option<u32>,
    model: HostModel,
    epoch: u64,
    stuck: bool,
    /// Unclean reboots not reported yet.
    crashes: u32,
    /// A report of this host's is with the reporters.
    in_flight: bool,
    /// The server asks it for health at every check-in (a rollout's gates read it).
    asked: bool,
    /// Outcomes not acknowledged yet: sent again until a report gets through, as an agent
    /// keeps them.
    pending: Vec<Outcome>,
}

/// An enrolled simulated fleet whose hosts check in until it is dropped.
pub struct SimFleet {
    admin: Client,
    key: ed25519_dalek::SigningKey,
    stream: String,
    hosts: u64,
    interval: Duration,
    level: u32,
    run: Arc<RwLock<Run>>,
    stop: Arc<AtomicBool>,
    reports: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    workers: Vec<std::thread::JoinHandle<()>>,
    reporters: Vec<std::thread::JoinHandle<()>>,
}

/// Reports waiting for a reporter, per reporter. When the queue is full a host keeps its
/// report for its next check-in, as an agent whose report timed out does.
const QUEUED_PER_REPORTER: usize = 4;

/// A host's report on its way to the server.
struct Delivery {
    /// The host's place in its worker's list.
    host: usize,
    credential: String,
    report: Report,
    /// The unclean reboots the report tells of.
    crashes: u32,
    /// Where the answer goes: the host's worker.
    back: mpsc::Sender<Delivered>,
}

/// A report's answer, back at the host's worker.
struct Delivered {
    host: usize,
    /// How many of the host's pending outcomes, and unclean reboots, the report carried:
    /// acknowledged if it got through.
    outcomes: usize,
    crashes: u32,
    ok: bool,
}

impl SimFleet {
    /// Starts the check-ins of hosts already enrolled (`shares`: per worker, each host's
    /// credential and phase), all on `crate::kernel(0)`.
    pub(crate) fn start(
        target: &Target,
        shares: Vec<Vec<(String, f64)>>,
        interval: Duration,
    ) -> Result<Self, SimError> {
        let admin =
            Client::new(&target.url, target.ca.as_deref())?.with_secret(target.token.clone());
        let key = signing_key(target)?;
        let run = Arc::new(RwLock::new(Run {
            epoch: 0,
            seed: 0,
            level: 0,
            regression: BTreeMap::new(),
            crash_rate: 0.0,
            transition_failure_rate: 0.0,
            stuck_rate: 0.0,
            report_share: 0.0,
            noise: 1.0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let reports = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let hosts = shares.iter().map(|s| s.len() as u64).sum();
        let begin = Instant::now();
        // As many reporters as workers: the server group-commits the reports in flight, so
        // its rate grows with how many wait at once (a million-host run with 64 reporters
        // for 256 workers: 143 reports a second; with 256: 340).
        let reporters_n = shares.len().max(1);
        let (deliver, deliveries) =
            mpsc::sync_channel::<Delivery>(QUEUED_PER_REPORTER * reporters_n);
        let deliveries = Arc::new(Mutex::new(deliveries));
        let mut reporters = Vec::new();
        for _ in 0..reporters_n {
            let client = Client::new(&target.url, target.ca.as_deref())?;
            let (deliveries, reports, errors) = (
                Arc::clone(&deliveries),
                Arc::clone(&reports),
                Arc::clone(&errors),
            );
            reporters.push(std::thread::spawn(move || {
                report_until_closed(&client, &deliveries, &reports, &errors)
            }));
        }
        let mut workers = Vec::new();
        for (w, share) in shares.into_iter().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(w as u64);
            let hosts: Vec<Host> = share
                .into_iter()
                .map(|(credential, phase)| Host {
                    credential,
                    etag: None,
                    phase,
                    level: None,
                    model: HostModel::draw(&mut rng),
                    epoch: 0,
                    stuck: false,
                    crashes: 0,
                    in_flight: false,
                    asked: false,
                    pending: Vec::new(),
                })
                .collect();
            let client = Client::new(&target.url, target.ca.as_deref())?;
            let url = target.url.clone();
            let (run, stop, errors, deliver) = (
                Arc::clone(&run),
                Arc::clone(&stop),
                Arc::clone(&errors),
                deliver.clone(),
            );
            workers.push(std::thread::spawn(move || {
                let mut wire = wire::Wire::for_server(&url, client);
                let (back, delivered) = mpsc::channel();
                let mut worker = Worker {
                    index: w as u64,
                    rng,
                    run: &run,
                    errors: &errors,
                    deliver,
                    back,
                    delivered,
                };
                worker.check_in_loop(&mut wire, hosts, begin, interval, &stop);
            }));
        }
        Ok(Self {
            admin,
            key,
            stream: crate::kernel(0).stream(),
            hosts,
            interval,
            level: 0,
            run,
            stop,
            reports,
            errors,
            workers,
            reporters,
        })
    }

    /// One run: the next level rolled out with `sim`'s trouble, followed to its end (see the
    /// module's documentation).
    pub fn rollout(
        &mut self,
        sim: &RolloutSim,
        progress: &dyn Fn(&str),
    ) -> Result<RolloutOutcome, SimError> {
        // 1. The next level, and the run's trouble for the hosts.
        self.level += 1;
        let level = self.level;
        publish_level(&self.admin, &self.key, level)?;
        {
            let mut run = self
                .run
                .write()
                .map_err(|_| SimError::Server("a worker panicked".into()))?;
            *run = Run {
                epoch: run.epoch + 1,
                seed: sim.seed,
                level,
                regression: sim.regression.clone(),
                crash_rate: sim.crash_rate,
                transition_failure_rate: sim.transition_failure_rate,
                stuck_rate: sim.stuck_rate,
                report_share: sim.report_share,
                noise: sim.noise,
            };
        }
        // Every host redraws its model at its next check-in, and reports a bake's length of
        // samples from the new model (the baseline each host is compared with) before the
        // rollout starts.
        std::thread::sleep(self.interval + sim.bake + Duration::from_millis(100));
        let (reports, errors) = (
            self.reports.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        );
        // 2. The rollout.
        // Generous: the simulator shares the cores with the server, and a host it could not
        // run in time is not a host the patch lost.
        let lost_after = self.interval.mul_f64(10.0) + sim.bake + Duration::from_secs(10);
        let started = self.admin.start_rollout(&StartRollout {
            stream: self.stream.clone(),
            level,
            selector: None,
            canary: None,
            waves: sim.waves.clone(),
            bake_ms: millis(sim.bake),
            max_parallel: None,
            lost_after_ms: Some(millis(lost_after)),
            auto_rollback: false,
        })?;
        progress(&format!(
            "rollout {} of level {level} to {} hosts in {} waves ({}), bake {:.1} s, seed {}",
            started.id,
            started.hosts,
            started.waves.len(),
            started
                .waves
                .iter()
                .map(|w| w.target.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            sim.bake.as_secs_f64(),
            sim.seed
        ));
        // 3. Follow it.
        let begin = Instant::now();
        let mut last = String::new();
        // Each look counts the rollout's hosts: a big fleet's rollout is looked at less often.
        let every = (self.interval / 20).clamp(Duration::from_millis(250), Duration::from_secs(2));
        let view = loop {
            std::thread::sleep(every);
            let view = match self.admin.rollout(&started.id) {
                Ok(v) => v,
                Err(e) if e.is_transient() => continue,
                Err(e) => return Err(e.into()),
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
        let outcome = RolloutOutcome {
            id: view.id.clone(),
            level,
            state: view.state.as_str().to_string(),
            wave: view.wave.max(1),
            waves: view.waves.len(),
            reason: view.reason.clone(),
            hosts: view.hosts,
            treated: view.treated,
            seconds,
            reports: self.reports.load(Ordering::Relaxed) - reports,
            errors: self.errors.load(Ordering::Relaxed) - errors,
            decisions: view.decisions.clone(),
        };
        // 4. One level for every host before the next run.
        if view.state != RolloutState::Completed {
            self.catch_up(&view)?;
        }
        Ok(outcome)
    }

    /// After a rollout that did not complete: abort it, assign its level to every host, and
    /// wait until they run it (stuck hosts excepted: they are gone).
    fn catch_up(&self, view: &RolloutView) -> Result<(), SimError> {
        if !view.state.is_final() {
            self.admin.rollout_action(&view.id, "abort")?;
        }
        self.admin.assign(&Assign {
            stream: self.stream.clone(),
            level: Some(view.level),
            selector: None,
        })?;
        let deadline = Instant::now() + self.interval.mul_f64(10.0) + Duration::from_secs(10);
        loop {
            std::thread::sleep(self.interval);
            let behind = self.admin.hosts(&HostFilter {
                level: None,
                limit: Some(10_000),
                ..HostFilter::default()
            })?;
            let lagging = behind
                .iter()
                .filter(|h| h.level != Some(view.level))
                .count();
            if lagging == 0 || Instant::now() > deadline {
                return Ok(());
            }
        }
    }

    /// Hosts in the fleet.
    pub fn hosts(&self) -> u64 {
        self.hosts
    }
}

impl std::fmt::Debug for SimFleet {
    // By hand: it holds the publisher's key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFleet")
            .field("stream", &self.stream)
            .field("hosts", &self.hosts)
            .field("level", &self.level)
            .finish_non_exhaustive()
    }
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // The workers held the queue's senders: the reporters end once it is empty.
        for r in self.reporters.drain(..) {
            let _ = r.join();
        }
    }
}

/// A reporter: sends the reports it is given, one at a time, until every worker is gone.
fn report_until_closed(
    client: &Client,
    deliveries: &Mutex<mpsc::Receiver<Delivery>>,
    reports: &AtomicU64,
    errors: &AtomicU64,
) {
    loop {
        // The lock is held only while waiting for the next report, not while sending it.
        let next = match deliveries.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(delivery) = next else { return };
        let result = client.report_as(Some(&delivery.credential), &delivery.report);
        let ok = match result {
            Ok(_) => {
                reports.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::debug!("simulated report failed: {e}");
                errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        // A worker that ended no longer needs the answer.
        let _ = delivery.back.send(Delivered {
            host: delivery.host,
            outcomes: delivery.report.outcomes.len(),
            crashes: delivery.crashes,
            ok,
        });
    }
}

/// One worker's hosts and its draws.
struct Worker<'a> {
    index: u64,
    rng: ChaCha8Rng,
    run: &'a RwLock<Run>,
    errors: &'a AtomicU64,
    /// The reporters' queue.
    deliver: mpsc::SyncSender<Delivery>,
    /// Answers to this worker's reports.
    back: mpsc::Sender<Delivered>,
    delivered: mpsc::Receiver<Delivered>,
}

impl Worker<'_> {
    fn check_in_loop(
        &mut self,
        wire: &mut wire::Wire,
        mut hosts: Vec<Host>,
        begin: Instant,
        interval: Duration,
        stop: &AtomicBool,
    ) {
        hosts.sort_by(|a, b| a.phase.total_cmp(&b.phase));
        for cycle in 0u32.. {
            for index in 0..hosts.len() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                self.take_answers(&mut hosts);
                let host = &mut hosts[index];
                let due = begin + interval.mul_f64(f64::from(cycle) + host.phase);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let Ok(run) = self.run.read().map(|r| r.clone()) else {
                    return;
                };
                if host.epoch != run.epoch {
                    // A new run is a new fleet of the model: new draws, nobody stuck.
                    host.epoch = run.epoch;
                    self.rng =
                        ChaCha8Rng::seed_from_u64(run.seed ^ self.index.wrapping_mul(0x9E37_79B9));
                    host.model = HostModel::draw_with_noise(&mut self.rng, run.noise);
                    host.stuck = false;
                }
                if host.stuck {
                    continue;
                }
                if let Err(e) = self.check_in(wire, index, host, &run, interval) {
                    tracing::debug!("simulated check-in failed: {e}");
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Acknowledges what the reports that got through carried; a host whose report failed
    /// sends its outcomes again in its next one.
    fn take_answers(&self, hosts: &mut [Host]) {
        while let Ok(answer) = self.delivered.try_recv() {
            let Some(host) = hosts.get_mut(answer.host) else {
                continue;
            };
            host.in_flight = false;
            if answer.ok {
                host.pending
                    .drain(..answer.outcomes.min(host.pending.len()));
                host.crashes = host.crashes.saturating_sub(answer.crashes);
            }
        }
    }

    /// One host's check-in: the desired level; an apply when it changed; a report when there
    /// is something to say or the host is one of this interval's reporters, handed to the
    /// reporters unless one of the host's is still on its way.
    fn check_in(
        &mut self,
        wire: &mut wire::Wire,
        index: usize,
        host: &mut Host,
        run: &Run,
        interval: Duration,
    ) -> Result<(), String> {
        let wanted = match wire.desired(&host.credential, host.etag.as_deref())? {
            wire::Answer::NotModified => None,
            wire::Answer::Changed(tag, level, asked) => {
                host.etag = tag;
                host.asked = asked;
                Some(level)
            }
        };
        let now_ms = now_ms();
        let mut patching = false;
        let under_test = |level: Option<u32>| run.level > 0 && level == Some(run.level);
        if let Some(level) = wanted.filter(|l| *l != host.level) {
            patching = true;
            // Trouble strikes only the level under test.
            let troubled = under_test(level);
            let failed = troubled && self.rng.gen_bool(run.transition_failure_rate);
            if !failed {
                host.level = level;
                host.crashes += u32::from(troubled && self.rng.gen_bool(run.crash_rate));
                host.stuck = troubled && self.rng.gen_bool(run.stuck_rate);
            }
            host.pending.push(Outcome {
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
        } else if host.pending.is_empty()
            && host.crashes == 0
            && !host.asked
            && !self.rng.gen_bool(run.report_share)
        {
            // As a real agent: silent unless it has something to say or the server asked
            // for its health; `report_share` stands for the reports of changes and the
            // hourly ones.
            return Ok(());
        }
        if host.in_flight {
            // Its last report is still with the server: this one would tell it again.
            return Ok(());
        }
        let on_level = under_test(host.level);
        let metrics = host.model.interval(
            &mut self.rng,
            patching && on_level,
            on_level.then_some(&run.regression),
        );
        let report = Report {
            kernel: crate::kernel(0),
            inventory: Inventory {
                patches: Vec::new(),
                level: host.level,
                taint: 0,
                kernel_errors: 0,
            },
            outcomes: host.pending.clone(),
            health: Some(HealthSample {
                at_ms: now_ms,
                interval_ms: millis(interval),
                level: host.level,
                patching,
                unclean_reboot: host.crashes > 0,
                metrics,
            }),
        };
        let delivery = Delivery {
            host: index,
            credential: host.credential.clone(),
            report,
            crashes: host.crashes,
            back: self.back.clone(),
        };
        match self.deliver.try_send(delivery) {
            Ok(()) => host.in_flight = true,
            // Every reporter is busy: the host tells it all at its next check-in.
            Err(mpsc::TrySendError::Full(_)) => {}
            Err(mpsc::TrySendError::Disconnected(_)) => {
                return Err("the reporters are gone".into());
            }
        }
        Ok(())
    }
}

fn signing_key(target: &Target) -> Result<ed25519_dalek::SigningKey, SimError> {
    let key_path = target.signing_key.as_ref().ok_or_else(|| {
        SimError::Option(
            "a simulated rollout needs the publisher's key: run without --server (the \
             simulation's own server keeps its key)"
                .into(),
        )
    })?;
    let key_text = std::fs::read_to_string(key_path)
        .map_err(|e| SimError::Server(format!("reading {}: {e}", key_path.display())))?;
    graft_protocol::trust::signing_key_from_hex(&key_text)
        .map_err(|e| SimError::Server(format!("{}: {e}", key_path.display())))
}

/// Publishes `level` of the simulated fleet's stream: a stand-in module (the server stores
/// modules, it does not load them) with a manifest for the stream's kernel, signed.
fn publish_level(
    admin: &Client,
    key: &ed25519_dalek::SigningKey,
    level: u32,
) -> Result<(), SimError> {
    let dir = tempfile::tempdir().map_err(|e| SimError::Server(e.to_string()))?;
    let name = format!("graft_sim_level{level}");
    let module = dir.path().join(format!("{name}.ko"));
    let bytes = format!("\x7fELF a stand-in for level {level}: simulated hosts never load it");
    std::fs::write(&module, &bytes).map_err(|e| SimError::Server(e.to_string()))?;
    let kernel = crate::kernel(0);
    // Cumulative, as a stream's levels are: every earlier level's patch and this one's.
    let patches = (1..=level)
        .map(|l| {
            let file = format!("simulated-{l}.patch");
            graft_manifest::Digest256 {
                sha256: graft_manifest::sha256(file.as_bytes()),
                file,
            }
        })
        .collect();
    let manifest = graft_manifest::Manifest {
        name: name.clone(),
        kernel: graft_manifest::ManifestKernel {
            target: format!("debian:{}", kernel.release),
            release: kernel.release.clone(),
            build_id: kernel.build_id.clone(),
        },
        replace: true,
        set: None,
        functions: vec![],
        new_functions: vec![],
        patches,
        module: graft_manifest::Digest256 {
            file: format!("{name}.ko"),
            sha256: graft_manifest::sha256(bytes.as_bytes()),
        },
        graft_version: env!("CARGO_PKG_VERSION").into(),
    };
    let manifest_json =
        serde_json::to_string_pretty(&manifest).map_err(|e| SimError::Server(e.to_string()))?;
    std::fs::write(graft_manifest::manifest_path(&module), manifest_json)
        .map_err(|e| SimError::Server(e.to_string()))?;
    let now = now_ms() / 1000;
    // Versions above every earlier one: the level number on top of the time.
    let version = now * 1000 + u64::from(level);
    let prepared =
        graft_client::publish::prepare(&module, key, level, version, now + 86_400, false)
            .map_err(|e| SimError::Server(format!("preparing level {level}: {e}")))?;
    admin
        .publish(&prepared.stream, &prepared.publish)
        .map_err(|e: ClientError| SimError::Client(e))?;
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
