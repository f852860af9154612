//! `graft fleet simulate`: N simulated hosts speaking the real protocol to a real server.
//!
//! The steps:
//! 1. a server: the one given, or a `graft server run` of its own on loopback (SQLite in a
//!    temporary directory, or the PostgreSQL database given), a separate process so that its
//!    memory is measured apart from the simulator's;
//! 2. enrollment of every host (spread over a few kernel builds), through the real endpoint;
//! 3. a first round in which each host checks in once, cold (a full answer from the database,
//!    as after a server's start), measured apart; then, for the duration, each host checks in
//!    once per interval at its own phase, with the
//!    ETag of its last answer, as the agent does; a pool of worker threads, each with one
//!    keep-alive connection, speaks for its share of the hosts (to a plain-HTTP loopback
//!    server with requests written by hand, so the simulator itself costs little: [`wire`]);
//! 4. the measures: check-ins per second against the rate asked for, latency percentiles,
//!    errors, the server's resident memory and the database's size.
//!
//! Hosts do not apply anything: the question is what the control plane sustains.

mod rollout;
mod server;
mod wire;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use graft_client::{Client, ClientError};
use graft_protocol::api::{EnrollRequest, NewToken};
use graft_protocol::KernelId;

pub use rollout::{RolloutOutcome, RolloutSim, SimFleet};
pub use server::OwnServer;

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The server refused or could not be reached during set-up.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The simulation's own server.
    #[error("the simulation's server: {0}")]
    Server(String),
    /// A bad option.
    #[error("{0}")]
    Option(String),
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Simulated hosts.
    pub hosts: u64,
    /// Each host checks in once per interval.
    pub interval: Duration,
    /// How long to measure after enrollment.
    pub duration: Duration,
    /// Worker threads (one connection each).
    pub workers: usize,
    /// Distinct kernel builds the hosts run.
    pub kernels: u32,
}

impl SimConfig {
    /// The worker threads it runs: `workers`, but no more than there are hosts.
    pub fn threads(&self) -> usize {
        self.workers
            .min(usize::try_from(self.hosts).unwrap_or(usize::MAX))
            .max(1)
    }
}

/// Where the server is.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its URL.
    pub url: String,
    /// An admin token (to make the bootstrap token).
    pub token: String,
    /// The fleet's CA for HTTPS.
    pub ca: Option<PathBuf>,
    /// The server's PID, when the simulation started it (for its memory).
    pub pid: Option<u32>,
    /// The SQLite database file, when known (for its size).
    pub database_file: Option<PathBuf>,
    /// The PostgreSQL database, when known (for its size, asked with `psql`).
    pub database_url: Option<String>,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// The publisher's private key, for a rollout's level (the simulation's own server keeps
    /// it in its data directory).
    pub signing_key: Option<PathBuf>,
}

/// What a simulated rollout gave.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RolloutReport {
    /// Hosts simulated.
    pub hosts: u64,
    /// Seconds between a host's check-ins.
    pub interval_s: f64,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// The seed of every draw.
    pub seed: u64,
    /// Enrollments per second.
    pub enroll_per_s: f64,
    /// The server's resident memory at the end, MiB.
    pub server_rss_mib: Option<f64>,
    /// The database's size, MiB.
    pub db_mib: Option<f64>,
    /// How the rollout ended.
    pub rollout: RolloutOutcome,
}

/// Runs a staged rollout through `target` to `config.hosts` simulated hosts, all on one
/// kernel build (see [`rollout`]).
pub fn run_rollout(
    config: &SimConfig,
    sim: &RolloutSim,
    target: &Target,
    progress: &dyn Fn(&str),
) -> Result<RolloutReport, SimError> {
    check_trouble(sim)?;
    let (mut fleet, enroll_per_s) = enroll_fleet(config, target, progress)?;
    let outcome = fleet.rollout(sim, progress)?;
    drop(fleet);
    Ok(RolloutReport {
        hosts: config.hosts,
        interval_s: config.interval.as_secs_f64(),
        database: target.database.clone(),
        seed: sim.seed,
        enroll_per_s,
        server_rss_mib: target.pid.and_then(rss_mib),
        db_mib: target_db_mib(target),
        rollout: outcome,
    })
}

/// The size of the target's database: its SQLite file, or its PostgreSQL database.
fn target_db_mib(target: &Target) -> Option<f64> {
    match (&target.database_file, &target.database_url) {
        (Some(file), _) => Some(db_mib(file)),
        (None, Some(url)) => postgres_mib(url),
        (None, None) => None,
    }
}

/// The probabilities of a run's trouble, checked.
pub fn check_trouble(sim: &RolloutSim) -> Result<(), SimError> {
    for (name, rate) in [
        ("crash-rate", sim.crash_rate),
        ("transition-failure-rate", sim.transition_failure_rate),
        ("stuck-rate", sim.stuck_rate),
        ("report-share", sim.report_share),
    ] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(SimError::Option(format!(
                "--{name} {rate}: a probability from 0 to 1"
            )));
        }
    }
    Ok(())
}

/// Enrolls `config.hosts` hosts on one kernel build and starts their check-ins: a fleet for
/// one rollout or many; and the enrollment rate.
pub fn enroll_fleet(
    config: &SimConfig,
    target: &Target,
    progress: &dyn Fn(&str),
) -> Result<(SimFleet, f64), SimError> {
    if config.hosts == 0 || config.workers == 0 {
        return Err(SimError::Option(
            "--hosts and --workers must be at least 1".into(),
        ));
    }
    let admin = Client::new(&target.url, target.ca.as_deref())?.with_secret(target.token.clone());
    let bootstrap = admin
        .new_token(&NewToken {
            name: "simulation".into(),
            role: "enroll".into(),
        })?
        .token;
    progress(&format!("enrolling {} hosts", config.hosts));
    let started = Instant::now();
    let one_kernel = SimConfig {
        kernels: 1,
        ..config.clone()
    };
    let shares = enroll_all(&one_kernel, target, &bootstrap)?;
    let enroll_per_s = config.hosts as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let shares = shares
        .into_iter()
        .map(|share| share.into_iter().map(|h| (h.credential, h.phase)).collect())
        .collect();
    let fleet = SimFleet::start(target, shares, config.interval)?;
    Ok((fleet, enroll_per_s))
}

/// What was measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimReport {
    /// Hosts simulated.
    pub hosts: u64,
    /// Seconds between a host's check-ins.
    pub interval_s: f64,
    /// Seconds measured.
    pub duration_s: f64,
    /// Check-ins per second the fleet asks for (hosts / interval).
    pub target_per_s: f64,
    /// Check-ins per second answered.
    pub checkins_per_s: f64,
    /// Check-ins answered.
    pub checkins: u64,
    /// Of which unchanged (304).
    pub not_modified: u64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Failed requests.
    pub errors: u64,
    /// Enrollments per second.
    pub enroll_per_s: f64,
    /// The server's resident memory at the end (its own process only), MiB.
    pub server_rss_mib: Option<f64>,
    /// The database's size on disk, MiB (SQLite), when known.
    pub db_mib: Option<f64>,
    /// `sqlite` or `postgres`.
    pub database: String,
    /// Worker threads.
    pub workers: usize,
    /// Whether the server kept up: check-ins answered at 95% or more of the rate asked.
    pub kept_up: bool,
    /// The first round, measured apart: every host's first check-in after enrollment, a full
    /// answer from the database (what a server's cold start costs too).
    pub first_round: Round,
}

/// One round of check-ins, measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Round {
    /// Seconds it took (at least one interval).
    pub seconds: f64,
    /// Check-ins per second.
    pub checkins_per_s: f64,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Failed requests.
    pub errors: u64,
}

/// One simulated host.
struct SimHost {
    credential: String,
    etag: Option<String>,
    /// Its check-in offset within the interval, in [0, 1).
    phase: f64,
}

/// Runs the simulation against `target`.
pub fn run(
    config: &SimConfig,
    target: &Target,
    progress: &dyn Fn(&str),
) -> Result<SimReport, SimError> {
    if config.hosts == 0 || config.workers == 0 || config.kernels == 0 {
        return Err(SimError::Option(
            "--hosts, --workers and --kernels must be at least 1".into(),
        ));
    }
    let admin = Client::new(&target.url, target.ca.as_deref())?.with_secret(target.token.clone());
    let bootstrap = admin
        .new_token(&NewToken {
            name: "simulation".into(),
            role: "enroll".into(),
        })?
        .token;

    // Enrollment, spread over the workers.
    progress(&format!("enrolling {} hosts", config.hosts));
    let started = Instant::now();
    let shares = enroll_all(config, target, &bootstrap)?;
    let enroll_secs = started.elapsed().as_secs_f64();

    let rate = config.hosts as f64 / config.interval.as_secs_f64();
    // 1. The first round: each host's first check-in, cold, at its phase of one interval.
    progress(&format!(
        "first round: {rate:.0} check-ins per second for {:.0} s",
        config.interval.as_secs_f64()
    ));
    let first = measure(target, shares, config.interval, config.interval)?;
    let first_round = Round {
        seconds: first.seconds,
        checkins_per_s: first.latencies.len() as f64 / first.seconds,
        p50_ms: percentile(&first.latencies, 0.50),
        p99_ms: percentile(&first.latencies, 0.99),
        errors: first.errors,
    };
    // 2. The steady state: check-ins with the ETag of the last answer, for the duration.
    progress(&format!(
        "steady state: {rate:.0} check-ins per second for {:.0} s",
        config.duration.as_secs_f64()
    ));
    let steady = measure(target, first.shares, config.interval, config.duration)?;
    let (measured, latencies, errors, not_modified) = (
        steady.seconds,
        steady.latencies,
        steady.errors,
        steady.not_modified,
    );
    let checkins = latencies.len() as u64;
    let target_per_s = config.hosts as f64 / config.interval.as_secs_f64();
    let checkins_per_s = checkins as f64 / measured;
    Ok(SimReport {
        hosts: config.hosts,
        interval_s: config.interval.as_secs_f64(),
        duration_s: measured,
        target_per_s,
        checkins_per_s,
        checkins,
        not_modified,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        max_ms: latencies.last().map_or(0.0, |&us| f64::from(us) / 1000.0),
        errors,
        enroll_per_s: config.hosts as f64 / enroll_secs.max(1e-9),
        server_rss_mib: target.pid.and_then(rss_mib),
        db_mib: target_db_mib(target),
        database: target.database.clone(),
        workers: config.threads(),
        kept_up: checkins_per_s >= 0.95 * target_per_s,
        first_round,
    })
}

/// What a measured stretch of check-ins gave.
struct Measured {
    shares: Vec<Vec<SimHost>>,
    seconds: f64,
    latencies: Vec<u32>,
    errors: u64,
    not_modified: u64,
}

/// Every worker checks in for its share for `duration`, each host at its phase of every
/// interval; returns the hosts (with their new ETags) and what was measured.
fn measure(
    target: &Target,
    shares: Vec<Vec<SimHost>>,
    interval: Duration,
    duration: Duration,
) -> Result<Measured, SimError> {
    let errors = Arc::new(AtomicU64::new(0));
    let not_modified = Arc::new(AtomicU64::new(0));
    let begin = Instant::now() + Duration::from_millis(200);
    let workers: Vec<_> = shares
        .into_iter()
        .map(|mut share| {
            let client = Client::new(&target.url, target.ca.as_deref());
            let errors = Arc::clone(&errors);
            let not_modified = Arc::clone(&not_modified);
            let url = target.url.clone();
            std::thread::spawn(move || -> Result<(Vec<SimHost>, Vec<u32>), ClientError> {
                let mut wire = wire::Wire::for_server(&url, client?);
                let latencies = check_in_loop(
                    &mut wire,
                    &mut share,
                    begin,
                    interval,
                    duration,
                    &errors,
                    &not_modified,
                );
                Ok((share, latencies))
            })
        })
        .collect();
    let mut latencies: Vec<u32> = Vec::new();
    let mut shares = Vec::new();
    for worker in workers {
        let (share, measured) = worker
            .join()
            .map_err(|_| SimError::Server("a simulation worker panicked".into()))??;
        latencies.extend(measured);
        shares.push(share);
    }
    latencies.sort_unstable();
    Ok(Measured {
        shares,
        // A round that fell behind took longer than asked: the rate is over what it took.
        seconds: begin.elapsed().as_secs_f64().max(duration.as_secs_f64()),
        latencies,
        errors: errors.load(Ordering::Relaxed),
        not_modified: not_modified.load(Ordering::Relaxed),
    })
}

/// Enrolls every host; returns each worker's share.
fn enroll_all(
    config: &SimConfig,
    target: &Target,
    bootstrap: &str,
) -> Result<Vec<Vec<SimHost>>, SimError> {
    // No more workers than hosts: a worker with no host has nothing to wait for.
    let threads = config.threads();
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let client =
                Client::new(&target.url, target.ca.as_deref()).map(|c| c.with_secret(bootstrap));
            let (hosts, workers, kernels) = (config.hosts, threads as u64, config.kernels);
            std::thread::spawn(move || -> Result<Vec<SimHost>, ClientError> {
                let client = client?;
                let mut share = Vec::new();
                for i in (w as u64..hosts).step_by(workers as usize) {
                    let admitted = client.enroll(&EnrollRequest {
                        hostname: format!("sim-{i}"),
                        labels: [("ring".to_string(), ring(i).to_string())].into(),
                        kernel: kernel(i % u64::from(kernels)),
                    })?;
                    share.push(SimHost {
                        credential: admitted.credential,
                        etag: None,
                        phase: phase(i),
                    });
                }
                share.sort_by(|a, b| a.phase.total_cmp(&b.phase));
                Ok(share)
            })
        })
        .collect();
    let mut shares = Vec::new();
    for worker in workers {
        let share = worker
            .join()
            .map_err(|_| SimError::Server("an enrollment worker panicked".into()))??;
        shares.push(share);
    }
    Ok(shares)
}

/// One worker: its hosts check in, each at its phase of every interval, until `duration` is
/// over. Returns the latencies in microseconds.
fn check_in_loop(
    wire: &mut wire::Wire,
    hosts: &mut [SimHost],
    begin: Instant,
    interval: Duration,
    duration: Duration,
    errors: &AtomicU64,
    not_modified: &AtomicU64,
) -> Vec<u32> {
    let end = begin + duration;
    let mut latencies = Vec::new();
    for cycle in 0u32.. {
        for host in hosts.iter_mut() {
            let due = begin + interval.mul_f64(f64::from(cycle) + host.phase);
            if due >= end {
                return latencies;
            }
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let sent = Instant::now();
            match wire.desired(&host.credential, host.etag.as_deref()) {
                Ok(wire::Answer::NotModified) => {
                    not_modified.fetch_add(1, Ordering::Relaxed);
                }
                Ok(wire::Answer::Changed(tag, ..)) => host.etag = tag,
                Err(e) => {
                    tracing::debug!("check-in failed: {e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            }
            let us = sent.elapsed().as_micros();
            latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
    latencies
}

/// The kernel builds of the simulated fleet.
pub fn kernel(k: u64) -> KernelId {
    KernelId {
        release: format!("6.1.0-{}-amd64", 50 + k),
        build_id: format!("{:040x}", 0x5eed_0000_u64 + k),
    }
}

/// Canary, early or main: a tenth, a fifth, the rest.
fn ring(i: u64) -> &'static str {
    match i % 10 {
        0 => "canary",
        1 | 2 => "early",
        _ => "main",
    }
}

/// A host's phase in [0, 1): a hash of its index, so phases spread evenly and repeatably.
fn phase(i: u64) -> f64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The `q` quantile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[index.min(sorted.len() - 1)]) / 1000.0
}

/// A process's resident memory, MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// A SQLite database's size with its write-ahead log, MiB.
fn db_mib(file: &std::path::Path) -> f64 {
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = file.as_os_str().to_owned();
    wal.push("-wal");
    (size(file.to_path_buf()) + size(PathBuf::from(wal))) as f64 / (1024.0 * 1024.0)
}

/// A PostgreSQL database's size, MiB, from `pg_database_size` through `psql`.
fn postgres_mib(url: &str) -> Option<f64> {
    let out = std::process::Command::new("psql")
        .args([url, "-Atc", "SELECT pg_database_size(current_database())"])
        .output()
        .ok()?;
    let bytes: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_spread_over_the_interval() {
        let phases: Vec<f64> = (0..10_000).map(phase).collect();
        assert!(phases.iter().all(|p| (0.0..1.0).contains(p)));
        // Each tenth of the interval gets about a tenth of the hosts.
        for decile in 0..10 {
            let n = phases
                .iter()
                .filter(|p| (**p * 10.0) as usize == decile)
                .count();
            assert!((800..1200).contains(&n), "decile {decile}: {n}");
        }
    }

    #[test]
    fn percentiles_of_sorted_latencies() {
        let sorted: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile(&sorted, 0.5), 51.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}
