//! `graft agent`: a host's side of the fleet.
//!
//! One check-in ([`check_in`]) is a list of steps:
//! 1. enroll, the first time, with a bootstrap token; pin the publisher keys the fleet names;
//! 2. ask for the desired state with the last ETag (unchanged: a 304, nothing else happens);
//! 3. when a level is wanted that is not the one applied: verify its signed metadata against
//!    the pinned keys (signature, stream, expiry, no rollback), download the module and its
//!    manifest by digest and check both, then apply through graft-host;
//!    when no level is wanted, revert the level the agent applied;
//! 4. report the inventory and every outcome not yet acknowledged.
//!
//! The agent never acts on what it cannot verify, and never reverts because the server is
//! away: an unreachable server leaves the host as it is, and [`run`] retries with jittered
//! exponential backoff so that a fleet coming back from an outage does not arrive at once.

pub mod health;
mod host;
pub mod probe;
mod state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use graft_client::{Client, ClientError};
use graft_protocol::api::{Desired, EnrollRequest, HealthSample, Inventory, Outcome, Report};
use graft_protocol::trust::{self, TrustError};

pub use host::{failed, ActionResult, Host, KernelHost};
pub use state::{AgentState, AppliedLevel};

/// Why the agent could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The server (a transient failure is retried by [`run`]).
    #[error(transparent)]
    Server(#[from] ClientError),
    /// The state file.
    #[error("agent state {}: {reason}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Not enrolled and no token to enroll with.
    #[error("this host is not enrolled (no {}): pass --enroll-token with a bootstrap token from `graft fleet token --role enroll`", path.display())]
    NotEnrolled {
        /// The state file.
        path: PathBuf,
    },
    /// Nothing to verify levels with.
    #[error("the server named no publisher key at enrollment and none was pinned (--pin-key): this host could verify no level; enrollment abandoned")]
    NoKeys,
    /// The kernel could not be read.
    #[error("reading the running kernel: {0}")]
    Kernel(String),
    /// Enrolled with another server.
    #[error("this host is enrolled with {enrolled}, not {asked}: remove {} to enroll again", path.display())]
    OtherServer {
        /// The server in the state.
        enrolled: String,
        /// The server asked for.
        asked: String,
        /// The state file.
        path: PathBuf,
    },
}

impl AgentError {
    /// Worth retrying: the server is away, not refusing.
    pub fn is_transient(&self) -> bool {
        matches!(self, AgentError::Server(e) if e.is_transient())
    }
}

/// What the agent needs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The server's URL.
    pub server: String,
    /// The fleet's CA certificate, for HTTPS.
    pub ca: Option<PathBuf>,
    /// A bootstrap token, for the first check-in.
    pub enroll_token: Option<String>,
    /// Where the agent keeps its state and downloaded modules.
    pub state_dir: PathBuf,
    /// The host's name.
    pub hostname: String,
    /// Labels to enroll with.
    pub labels: BTreeMap<String, String>,
    /// Time between check-ins.
    pub interval: Duration,
    /// Publisher keys (hex) given out of band: pinned instead of the ones the server names at
    /// enrollment, so that not even the first contact has to trust the server.
    pub pinned_keys: Vec<String>,
}

/// What one check-in did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckIn {
    /// Enrolled in this check-in.
    pub enrolled: bool,
    /// The desired state was unchanged (a 304).
    pub unchanged: bool,
    /// What was done to the kernel: `applied level 2`, `refused level 3: ...`, ...
    pub actions: Vec<String>,
    /// Outcomes the server acknowledged.
    pub reported: usize,
}

/// One check-in.
pub fn check_in(
    config: &AgentConfig,
    host: &mut dyn Host,
    now_ms: u64,
) -> Result<CheckIn, AgentError> {
    let mut done = CheckIn::default();
    let kernel = host.kernel().map_err(AgentError::Kernel)?;
    let mut state = enrolled(config, &kernel, &mut done)?;
    note_boot(host, &mut state);
    let client =
        Client::new(&config.server, config.ca.as_deref())?.with_secret(state.credential.clone());

    // The desired state: an unchanged answer costs the server a comparison, not a write.
    match client.desired(state.etag.as_deref())? {
        None => done.unchanged = true,
        Some((desired, etag)) => {
            state.desired = Some(desired);
            state.etag = etag;
            state.save(&config.state_dir)?;
        }
    }
    // A desired state that already failed or was refused is not tried again until it changes:
    // a stalled transition is not re-run every interval.
    let tried = state.etag.is_some() && state.failed_etag == state.etag;
    if let Some(desired) = state.desired.clone().filter(|_| !tried) {
        if let Some(action) = converge(&client, config, host, &mut state, &desired, now_ms)? {
            done.actions.push(action);
        }
    }

    // The report: the inventory and every outcome not yet acknowledged, when there is
    // something to say or the server asked for health.
    let mut inventory = host.inventory(state.kmsg_seq_at_apply);
    inventory.level = state.applied.as_ref().map(|a| a.level);
    if !worth_reporting(&state, &inventory, !done.actions.is_empty(), now_ms) {
        return Ok(done);
    }
    let (mut health, counters) = sample(host, &state, !done.actions.is_empty(), now_ms);
    if let Some(h) = health.as_mut() {
        h.metrics.extend(signed_probes(&state, now_ms));
    }
    let report = Report {
        kernel,
        inventory,
        outcomes: state.pending.clone(),
        health,
    };
    client.report(&report)?;
    done.reported = state.pending.len();
    state.pending.clear();
    state.unclean_reboot = false;
    state.reported = Some((now_ms, report.inventory));
    if let Some(c) = counters {
        state.counters = Some((now_ms, c));
    }
    state.save(&config.state_dir)?;
    Ok(done)
}

/// The values of the probes the publisher signed with the level a rollout moves hosts to,
/// when the server asked this host for health and the metadata verifies against the pinned
/// keys; nothing otherwise (a refusal is logged: a server cannot make a host run a command).
fn signed_probes(state: &AgentState, now_ms: u64) -> BTreeMap<String, f64> {
    let Some(desired) = state.desired.as_ref().filter(|d| d.report_health) else {
        return BTreeMap::new();
    };
    let Some(signed) = &desired.probes else {
        return BTreeMap::new();
    };
    let keys: Result<Vec<_>, _> = state
        .keys
        .iter()
        .map(|k| trust::verifying_key_from_hex(k))
        .collect();
    // Not the rollback check: the probes' level is not applied, only read.
    let verified = keys.map_err(|e| e.to_string()).and_then(|keys| {
        signed
            .verify(&keys, &desired.stream, now_ms / 1000, None)
            .map_err(|e| e.to_string())
    });
    match verified {
        Ok(level) => probe::run_all(&level.probes),
        Err(why) => {
            tracing::warn!(
                error = why,
                "the probes' metadata does not verify: none run"
            );
            BTreeMap::new()
        }
    }
}

/// Longest a host stays silent with nothing to say.
const REPORT_AT_LEAST: Duration = Duration::from_secs(3600);

/// Whether this check-in sends a report: outcomes or an unclean reboot to tell, an action
/// taken, an inventory unlike the last one sent (a kernel warning, a taint, a level), the
/// server asking for health (a rollout's gates read this host), or an hour of silence.
/// A fleet at rest then costs its server no writes.
fn worth_reporting(state: &AgentState, inventory: &Inventory, acted: bool, now_ms: u64) -> bool {
    let asked = state.desired.as_ref().is_some_and(|d| d.report_health);
    let stale = state.reported.as_ref().is_none_or(|(at, last)| {
        last != inventory
            || now_ms.saturating_sub(*at) >= u64::try_from(REPORT_AT_LEAST.as_millis()).unwrap_or(0)
    });
    asked || acted || stale || !state.pending.is_empty() || state.unclean_reboot
}

/// A new boot since the last check-in: unclean if the agent was not stopped cleanly in the
/// last one (or the kernel kept a crash record), which matters with a level applied.
fn note_boot(host: &dyn Host, state: &mut AgentState) {
    let Some(boot) = host.boot_id() else { return };
    if state.boot_id.as_deref() == Some(boot.as_str()) {
        return;
    }
    let rebooted = state.boot_id.is_some();
    if rebooted && state.applied.is_some() && (!state.clean_stop || host.crash_records()) {
        tracing::warn!("this host rebooted uncleanly with a level applied: reported to the fleet");
        state.unclean_reboot = true;
    }
    state.boot_id = Some(boot);
    state.clean_stop = false;
    // Counters restart with the kernel: rates across the reboot mean nothing.
    state.counters = None;
}

/// The health sample of the interval since the last report (none before a first reading),
/// and the counters read now. `patching`: a level was applied or reverted in the interval.
fn sample(
    host: &dyn Host,
    state: &AgentState,
    patching: bool,
    now_ms: u64,
) -> (Option<HealthSample>, Option<health::Counters>) {
    let now = host.counters();
    let metrics = match (&state.counters, &now) {
        (Some((_, before)), Some(after)) => health::rates(before, after),
        _ => BTreeMap::new(),
    };
    let since = state.counters.as_ref().map(|(at, _)| *at);
    if since.is_none() && !state.unclean_reboot {
        return (None, now);
    }
    let sample = HealthSample {
        at_ms: now_ms,
        interval_ms: since.map_or(0, |at| now_ms.saturating_sub(at)),
        level: state.applied.as_ref().map(|a| a.level),
        patching,
        unclean_reboot: state.unclean_reboot,
        metrics,
    };
    (Some(sample), now)
}

/// Marks the agent stopped cleanly in this boot (the unit's ExecStop): the next boot is then
/// not counted as an unclean reboot.
pub fn mark_clean_stop(state_dir: &std::path::Path) -> Result<(), AgentError> {
    let Some(mut state) = AgentState::load(state_dir)? else {
        return Ok(());
    };
    state.clean_stop = true;
    state.save(state_dir)
}

/// The agent's state, enrolling first when there is none.
fn enrolled(
    config: &AgentConfig,
    kernel: &graft_protocol::KernelId,
    done: &mut CheckIn,
) -> Result<AgentState, AgentError> {
    if let Some(state) = AgentState::load(&config.state_dir)? {
        if state.server != config.server {
            return Err(AgentError::OtherServer {
                enrolled: state.server,
                asked: config.server.clone(),
                path: AgentState::path(&config.state_dir),
            });
        }
        return Ok(state);
    }
    let token = config
        .enroll_token
        .as_ref()
        .ok_or_else(|| AgentError::NotEnrolled {
            path: AgentState::path(&config.state_dir),
        })?;
    let client = Client::new(&config.server, config.ca.as_deref())?.with_secret(token.clone());
    let admitted = client.enroll(&EnrollRequest {
        hostname: config.hostname.clone(),
        labels: config.labels.clone(),
        kernel: kernel.clone(),
    })?;
    let keys = if config.pinned_keys.is_empty() {
        admitted.keys
    } else {
        config.pinned_keys.clone()
    };
    if keys.is_empty() {
        return Err(AgentError::NoKeys);
    }
    let state = AgentState {
        server: config.server.clone(),
        host_id: admitted.host_id,
        credential: admitted.credential,
        keys,
        ..Default::default()
    };
    state.save(&config.state_dir)?;
    done.enrolled = true;
    Ok(state)
}

/// Brings the kernel to the desired level; the action taken, if any.
fn converge(
    client: &Client,
    config: &AgentConfig,
    host: &mut dyn Host,
    state: &mut AgentState,
    desired: &Desired,
    now_ms: u64,
) -> Result<Option<String>, AgentError> {
    let applied = state.applied.clone();
    match (desired.level, &desired.signed, applied) {
        (None, _, None) => Ok(None),
        (None, _, Some(applied)) => {
            let result = host.revert(&applied.module_name);
            let action = format!("{} level {}", result.result, applied.level);
            if result.done {
                state.applied = None;
            }
            settle(
                config,
                state,
                &desired.stream,
                None,
                &result,
                now_ms,
                "revert",
            )?;
            Ok(Some(action))
        }
        (Some(level), _, Some(applied))
            if applied.level == level && applied.stream == desired.stream =>
        {
            Ok(None)
        }
        (Some(level), None, _) => {
            let result = failed(format!(
                "the server names level {level} without its signed metadata: refused"
            ));
            Ok(Some(refuse(config, state, desired, level, result, now_ms)?))
        }
        (Some(level), Some(signed), _) => {
            let prepared = match prepare(client, config, state, desired, signed, now_ms) {
                Ok(p) => p,
                Err(Refused::Transient(e)) => return Err(e),
                Err(Refused::Untrusted(why)) => {
                    return Ok(Some(refuse(
                        config,
                        state,
                        desired,
                        level,
                        failed(why),
                        now_ms,
                    )?))
                }
            };
            tracing::info!(
                "applying level {level} of {} ({})",
                desired.stream,
                prepared.module_name
            );
            let result = host.apply(&prepared.module);
            let action = format!("{} level {level}", result.result);
            if result.done {
                state.applied = Some(AppliedLevel {
                    stream: desired.stream.clone(),
                    level,
                    version: prepared.version,
                    module_name: prepared.module_name,
                });
                state.kmsg_seq_at_apply = host.log_mark();
            }
            settle(
                config,
                state,
                &desired.stream,
                Some(level),
                &result,
                now_ms,
                "apply",
            )?;
            Ok(Some(action))
        }
    }
}

/// A level refused before anything touched the kernel; recorded once per signed version.
fn refuse(
    config: &AgentConfig,
    state: &mut AgentState,
    desired: &Desired,
    level: u32,
    result: ActionResult,
    now_ms: u64,
) -> Result<String, AgentError> {
    let mut result = result;
    result.result = "refused".into();
    result.done = false;
    let why = result.message.clone().unwrap_or_default();
    tracing::warn!(level, "{why}");
    settle(
        config,
        state,
        &desired.stream,
        Some(level),
        &result,
        now_ms,
        "refuse",
    )?;
    Ok(format!("refused level {level}: {why}"))
}

/// After an action: a failure is not retried until the desired state changes; the outcome
/// waits for the next report; the state is saved before anything else happens.
fn settle(
    config: &AgentConfig,
    state: &mut AgentState,
    stream: &str,
    level: Option<u32>,
    result: &ActionResult,
    now_ms: u64,
    action: &str,
) -> Result<(), AgentError> {
    if !result.done {
        state.failed_etag = state.etag.clone();
    }
    record(state, stream, level, result, now_ms, action);
    state.save(&config.state_dir)
}

/// A verified module on disk.
struct Prepared {
    module: PathBuf,
    module_name: String,
    version: u64,
}

enum Refused {
    Transient(AgentError),
    Untrusted(String),
}

/// Verifies the signed metadata, downloads the module and its manifest, checks their digests
/// and writes them where graft-host reads them.
fn prepare(
    client: &Client,
    config: &AgentConfig,
    state: &mut AgentState,
    desired: &Desired,
    signed: &trust::SignedLevel,
    now_ms: u64,
) -> Result<Prepared, Refused> {
    let keys = state
        .keys
        .iter()
        .map(|k| trust::verifying_key_from_hex(k))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Refused::Untrusted(format!("the pinned keys are unusable: {e}")))?;
    let seen = state.seen_version.get(&desired.stream).copied();
    let level = signed
        .verify(&keys, &desired.stream, now_ms / 1000, seen)
        .map_err(|e: TrustError| Refused::Untrusted(e.to_string()))?;
    if Some(level.level) != desired.level {
        return Err(Refused::Untrusted(format!(
            "the server names level {:?} but the signed metadata is for level {}",
            desired.level, level.level
        )));
    }
    state
        .seen_version
        .insert(desired.stream.clone(), level.version);
    let download = |sha: &str| {
        client
            .download(sha)
            .map_err(|e| Refused::Transient(e.into()))
    };
    let module = download(&level.module_sha256)?;
    trust::check_digest("the module", &module, &level.module_sha256)
        .map_err(|e| Refused::Untrusted(e.to_string()))?;
    let manifest = download(&level.manifest_sha256)?;
    trust::check_digest("the manifest", &manifest, &level.manifest_sha256)
        .map_err(|e| Refused::Untrusted(e.to_string()))?;
    let dir = config.state_dir.join("modules");
    let path = dir.join(format!("{}.ko", level.module_name));
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, &module))
        .and_then(|()| std::fs::write(graft_manifest::manifest_path(&path), &manifest));
    written.map_err(|e| {
        Refused::Transient(AgentError::State {
            path: path.clone(),
            reason: e.to_string(),
        })
    })?;
    Ok(Prepared {
        module: path,
        module_name: level.module_name,
        version: level.version,
    })
}

/// Queues an outcome for the next report. Its id is derived from what it is about, so a
/// report resent after an outage is stored once.
fn record(
    state: &mut AgentState,
    stream: &str,
    level: Option<u32>,
    result: &ActionResult,
    now_ms: u64,
    action: &str,
) {
    let version = state.seen_version.get(stream).copied().unwrap_or(0);
    let id = format!(
        "{}-{action}-{}-{}",
        state.host_id,
        level.map_or("none".to_string(), |l| l.to_string()),
        version
    );
    if state.pending.iter().any(|o| o.id == id) {
        return;
    }
    state.pending.push(Outcome {
        id,
        level,
        result: result.result.clone(),
        transition_secs: result.transition_secs,
        blockers: result.blockers.clone(),
        message: result.message.clone(),
        at_ms: now_ms,
    });
}

/// Checks in every `interval` until `stop` says so (or once, with `once`). Transient failures
/// are retried with jittered exponential backoff, capped at the interval; any other error
/// ends the loop.
pub fn run(
    config: &AgentConfig,
    host: &mut dyn Host,
    once: bool,
    stop: &dyn Fn() -> bool,
    on_check_in: &mut dyn FnMut(&CheckIn),
) -> Result<(), AgentError> {
    let mut failures = 0u32;
    loop {
        match check_in(config, host, now_ms()) {
            Ok(done) => {
                failures = 0;
                on_check_in(&done);
                if once {
                    return Ok(());
                }
                sleep_until(jittered(config.interval), stop);
            }
            Err(e) if e.is_transient() && !once => {
                failures = failures.saturating_add(1);
                let wait = backoff(failures, config.interval);
                tracing::warn!("{e}; retrying in {:.1} s", wait.as_secs_f64());
                sleep_until(wait, stop);
            }
            Err(e) => return Err(e),
        }
        if stop() {
            return Ok(());
        }
    }
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The wait after `failures` consecutive failures: 1 s doubling, capped at `cap`, then spread
/// over half to the whole of it so that hosts that failed together come back apart.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1u32 << failures.min(16).saturating_sub(1));
    let ceiling = base.min(cap.max(Duration::from_secs(1)));
    ceiling.mul_f64(0.5 + 0.5 * unit_random())
}

/// `interval` spread by ±10%.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * unit_random())
}

/// A uniform random number in [0, 1).
fn unit_random() -> f64 {
    use rand_core::RngCore as _;
    (rand_core::OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Sleeps for `total`, waking each 100 ms to see whether to stop.
fn sleep_until(total: Duration, stop: &dyn Fn() -> bool) {
    let end = std::time::Instant::now() + total;
    while std::time::Instant::now() < end && !stop() {
        std::thread::sleep(Duration::from_millis(100).min(end - std::time::Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_is_spread() {
        let cap = Duration::from_secs(60);
        for failures in 1..30 {
            let wait = backoff(failures, cap);
            assert!(wait <= cap, "{failures}: {wait:?}");
        }
        let first = backoff(1, cap);
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        let waits: std::collections::BTreeSet<u128> =
            (0..20).map(|_| backoff(10, cap).as_millis()).collect();
        assert!(waits.len() > 1, "no spread: {waits:?}");
        assert!(waits.iter().all(|&w| w >= 30_000), "{waits:?}");
    }

    #[test]
    fn a_host_at_rest_reports_only_when_it_has_something_to_say_or_is_asked() {
        let at_rest = Inventory {
            level: Some(2),
            ..Inventory::default()
        };
        let mut state = AgentState {
            reported: Some((1_000, at_rest.clone())),
            desired: Some(Desired {
                stream: "s".into(),
                level: Some(2),
                signed: None,
                report_health: false,
                probes: None,
            }),
            ..AgentState::default()
        };
        // Nothing changed a minute later: silent.
        assert!(!worth_reporting(&state, &at_rest, false, 61_000));
        // A kernel warning, an action, an outcome to tell, an hour: each reports.
        let warned = Inventory {
            kernel_errors: 1,
            ..at_rest.clone()
        };
        assert!(worth_reporting(&state, &warned, false, 61_000));
        assert!(worth_reporting(&state, &at_rest, true, 61_000));
        assert!(worth_reporting(&state, &at_rest, false, 1_000 + 3_600_000));
        state.unclean_reboot = true;
        assert!(worth_reporting(&state, &at_rest, false, 61_000));
        state.unclean_reboot = false;
        // A rollout's gates read this host: every check-in.
        if let Some(d) = state.desired.as_mut() {
            d.report_health = true;
        }
        assert!(worth_reporting(&state, &at_rest, false, 61_000));
        // Never reported yet: reports.
        let fresh = AgentState::default();
        assert!(worth_reporting(&fresh, &at_rest, false, 0));
    }

    #[test]
    fn probes_run_only_from_signed_metadata_and_only_when_asked() {
        use graft_protocol::trust::{generate_key, key_id, Level, SignedLevel};
        let publisher = generate_key();
        let stream = "6.1.0-56-amd64@eb4fbcd037e7";
        let level = Level {
            stream: stream.into(),
            kernel: graft_protocol::KernelId {
                release: "6.1.0-56-amd64".into(),
                build_id: "eb4fbcd0".into(),
            },
            level: 3,
            version: 9,
            module_name: "fix3".into(),
            module_sha256: "aa".into(),
            manifest_sha256: "bb".into(),
            patches: Vec::new(),
            expires: u64::MAX / 2000,
            probes: BTreeMap::from([("queue".to_string(), "echo 7".to_string())]),
        };
        let state = |signed: SignedLevel, asked: bool| AgentState {
            keys: vec![hex::encode(publisher.verifying_key().to_bytes())],
            desired: Some(Desired {
                stream: stream.into(),
                level: Some(2),
                signed: None,
                report_health: asked,
                probes: Some(signed),
            }),
            ..AgentState::default()
        };
        let signed = SignedLevel::sign(&level, &publisher);
        assert_eq!(
            signed_probes(&state(signed.clone(), true), 1_000),
            BTreeMap::from([("probe:queue".to_string(), 7.0)])
        );
        // Not asked for health: nothing runs.
        assert!(signed_probes(&state(signed, false), 1_000).is_empty());
        // Signed by anyone but the pinned publisher: nothing runs.
        let forged = SignedLevel::sign(&level, &generate_key());
        assert_ne!(forged.signatures[0].key, key_id(&publisher.verifying_key()));
        assert!(signed_probes(&state(forged, true), 1_000).is_empty());
    }

    /// A kernel whose counters and boot the test sets.
    struct Counting {
        counters: health::Counters,
        boot: String,
        pstore: bool,
    }

    impl Host for Counting {
        fn kernel(&self) -> Result<graft_protocol::KernelId, String> {
            Err("not needed".into())
        }
        fn inventory(&self, _: Option<u64>) -> graft_protocol::api::Inventory {
            Default::default()
        }
        fn log_mark(&self) -> Option<u64> {
            None
        }
        fn apply(&mut self, _: &std::path::Path) -> ActionResult {
            failed("not needed")
        }
        fn revert(&mut self, _: &str) -> ActionResult {
            failed("not needed")
        }
        fn counters(&self) -> Option<health::Counters> {
            Some(self.counters)
        }
        fn boot_id(&self) -> Option<String> {
            Some(self.boot.clone())
        }
        fn crash_records(&self) -> bool {
            self.pstore
        }
    }

    fn applied() -> Option<AppliedLevel> {
        Some(AppliedLevel {
            stream: "s@1".into(),
            level: 2,
            version: 9,
            module_name: "graft_fix2".into(),
        })
    }

    #[test]
    fn a_sample_is_the_rates_since_the_last_report_and_none_before_a_first_reading() {
        let mut host = Counting {
            counters: health::Counters {
                tcp_out_segs: 1000,
                cpu_total: 100,
                ..Default::default()
            },
            boot: "b1".into(),
            pstore: false,
        };
        let mut state = AgentState {
            applied: applied(),
            ..Default::default()
        };
        let (first, read) = sample(&host, &state, false, 1_000);
        assert!(first.is_none(), "nothing to compare with yet");
        state.counters = read.map(|c| (1_000, c));
        host.counters.tcp_out_segs = 3000;
        host.counters.tcp_retrans_segs = 10;
        host.counters.cpu_total = 300;
        host.counters.cpu_softirq = 4;
        let (second, _) = sample(&host, &state, true, 61_000);
        let second = second.unwrap();
        assert_eq!(second.interval_ms, 60_000);
        assert_eq!(second.level, Some(2));
        assert!(second.patching);
        assert_eq!(second.metrics["tcp_retransmits"], 5.0);
        assert_eq!(second.metrics["softirq_pct"], 2.0);
    }

    #[test]
    fn a_reboot_without_a_clean_stop_with_a_level_applied_is_unclean() {
        let host = |boot: &str, pstore| Counting {
            counters: Default::default(),
            boot: boot.into(),
            pstore,
        };
        // First boot seen: nothing to compare.
        let mut state = AgentState {
            applied: applied(),
            ..Default::default()
        };
        note_boot(&host("b1", false), &mut state);
        assert!(!state.unclean_reboot);
        // Same boot: nothing.
        note_boot(&host("b1", false), &mut state);
        assert!(!state.unclean_reboot);
        // A clean stop, then a new boot: clean.
        state.clean_stop = true;
        state.counters = Some((1, Default::default()));
        note_boot(&host("b2", false), &mut state);
        assert!(!state.unclean_reboot && !state.clean_stop);
        assert!(state.counters.is_none(), "counters restart with the kernel");
        // A new boot with no clean stop: unclean, and reported in a sample.
        note_boot(&host("b3", false), &mut state);
        assert!(state.unclean_reboot);
        let (s, _) = sample(&host("b3", false), &state, false, 5);
        assert!(s.unwrap().unclean_reboot);
        // A clean stop but a crash record kept by the kernel: unclean too.
        state.unclean_reboot = false;
        state.clean_stop = true;
        note_boot(&host("b4", true), &mut state);
        assert!(state.unclean_reboot);
        // No level applied: a reboot is no one's business.
        let mut bare = AgentState::default();
        note_boot(&host("b1", false), &mut bare);
        note_boot(&host("b2", false), &mut bare);
        assert!(!bare.unclean_reboot);
    }
}
