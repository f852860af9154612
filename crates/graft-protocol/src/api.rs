//! The JSON bodies of every endpoint, and the limits the server enforces on them.
//!
//! Endpoints (all under [`crate::API`]; bearer credentials in `Authorization`):
//!
//! | method and path | who | body → answer |
//! |---|---|---|
//! | `POST /enroll` | bootstrap token | [`EnrollRequest`] → [`EnrollResponse`] |
//! | `GET /host/desired` | host credential | `If-None-Match` → 304, or [`Desired`] with `ETag` |
//! | `POST /host/report` | host credential | [`Report`] → 204 |
//! | `GET /modules/{sha256}` | host or operator | the bytes of a module or manifest, by digest |
//! | `GET /hosts` | viewer | query [`HostFilter`] → `[`[`HostView`]`]` |
//! | `POST /hosts/{id}/revoke` | admin | → [`HostView`] |
//! | `GET /kernels` | viewer | → `[`[`KernelView`]`]` |
//! | `GET /streams` | viewer | → `[`[`StreamView`]`]` |
//! | `GET /streams/{stream}` | viewer | → [`StreamView`] with its levels |
//! | `POST /streams/{stream}/levels` | operator | [`Publish`] → [`LevelView`] |
//! | `POST /assignments` | operator | [`Assign`] → [`Assigned`] |
//! | `POST /tokens` | admin | [`NewToken`] → [`TokenCreated`] |
//! | `GET /audit` | admin | → `[`[`AuditEntry`]`]` |
//! | `GET /openapi.json` | anyone | the OpenAPI document |
//!
//! Every error is an [`ApiError`] body with the HTTP status that fits.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::trust::SignedLevel;
use crate::KernelId;

/// Largest request body the server reads, modules included.
pub const MAX_BODY: usize = 64 << 20;
/// Longest string field (host names, labels, stream names, ...).
pub const MAX_STRING: usize = 256;
/// Most labels on a host, patches in a report, outcomes in a report.
pub const MAX_ITEMS: usize = 64;

/// Roles of operator tokens, each allowing what the one before allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads hosts, kernels, streams.
    Viewer,
    /// Also publishes levels and assigns them.
    Operator,
    /// Also makes tokens, revokes hosts, reads the audit log.
    Admin,
}

impl Role {
    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a role's name.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable, machine-readable kind (`unauthorized`, `forbidden`, `not-found`, `invalid`,
    /// `conflict`, `too-large`, `unavailable`, `internal`).
    pub error: String,
    /// What went wrong and what to do, for a human.
    pub message: String,
}

/// A host asks to join the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The host's name.
    pub hostname: String,
    /// Labels (`ring=canary`, `dc=east`, ...), used to select hosts.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The running kernel.
    pub kernel: KernelId,
}

/// The fleet admits a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The host's id.
    pub host_id: String,
    /// Its own credential (the server keeps only a hash of it).
    pub credential: String,
    /// The fleet's publisher public keys (hex), for the host to pin.
    pub keys: Vec<String>,
}

/// What a host should run for its kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The host's stream.
    pub stream: String,
    /// The level to run; `None`: no live patch (revert any graft applied).
    pub level: Option<u32>,
    /// The publisher's signed metadata of that level.
    pub signed: Option<SignedLevel>,
    /// Send a health sample at every check-in: a running rollout's gates read this host
    /// (treated, or a control host, or one whose baseline the next wave needs). Otherwise a
    /// host reports only when it has something to say (an outcome, a changed inventory, an
    /// unclean reboot) and at least hourly, so that a large fleet at rest costs no writes.
    #[serde(default)]
    pub report_health: bool,
    /// With `report_health`: the signed metadata of the level the rollout moves hosts to, for
    /// its probes ([`crate::trust::Level::probes`]), which treated and control hosts alike
    /// run (the agent verifies it; it does not apply it). `None`: no probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<SignedLevel>,
}

/// A live patch as the host sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivePatch {
    /// Module name.
    pub name: String,
    /// Enabled in sysfs.
    pub enabled: bool,
    /// Still in transition.
    pub transition: bool,
}

/// The host's state, sent with every report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Every live patch.
    #[serde(default)]
    pub patches: Vec<LivePatch>,
    /// The stream level the agent last applied (`None`: none).
    pub level: Option<u32>,
    /// The kernel's taint mask.
    pub taint: u64,
    /// Kernel warnings (WARN, BUG, Oops, livepatch errors) since the last apply.
    pub kernel_errors: u32,
}

/// How an agent's action ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// A unique id the agent chose, so a report resent after an outage is stored once.
    pub id: String,
    /// The level acted on (`None`: a revert to none).
    pub level: Option<u32>,
    /// `applied`, `reverted`, `refused`, `failed` or graft-host's outcome name.
    pub result: String,
    /// Seconds the transition took.
    pub transition_secs: Option<f64>,
    /// Tasks that blocked the transition, named.
    #[serde(default)]
    pub blockers: Vec<String>,
    /// Why, for a refusal or failure.
    pub message: Option<String>,
    /// When, milliseconds since the epoch.
    pub at_ms: u64,
}

/// An agent's report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The running kernel (a reboot into another one moves the host to another stream).
    pub kernel: KernelId,
    /// The host's state.
    pub inventory: Inventory,
    /// Actions since the last report that was accepted.
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
    /// What the host observed since its last report (absent from agents that do not measure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSample>,
}

/// What a host observed over one interval between two reports: what rollout gates compare.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthSample {
    /// The interval's end, milliseconds since the epoch.
    pub at_ms: u64,
    /// Its length.
    pub interval_ms: u64,
    /// The level applied at its end.
    pub level: Option<u32>,
    /// A level was applied or reverted in it: its metrics are the patching window's.
    #[serde(default)]
    pub patching: bool,
    /// The host came back from an unclean reboot (a panic, a hang, a power cut) since the
    /// last report, with a level applied before it.
    #[serde(default)]
    pub unclean_reboot: bool,
    /// Metrics over the interval, each oriented so that higher is worse:
    /// `tcp_retransmits` (retransmitted segments per 1,000 sent), `io_latency_ms` (mean time
    /// per completed block I/O), `softirq_pct` (share of CPU time in softirqs), and the
    /// stream's probes as `probe:NAME`.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// An operator publishes a level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The publisher's signed metadata.
    pub signed: SignedLevel,
    /// Base64 of the module.
    pub module: String,
    /// The module's graft manifest, as JSON text.
    pub manifest: String,
    /// Allow a level that does not carry every patch of the level before it.
    #[serde(default)]
    pub allow_dropped_patches: bool,
}

/// A level as the server lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LevelView {
    /// The stream.
    pub stream: String,
    /// The level.
    pub level: u32,
    /// Signed version.
    pub version: u64,
    /// Module name.
    pub module_name: String,
    /// Module digest.
    pub module_sha256: String,
    /// Digests of the source patches it carries.
    pub patches: Vec<String>,
    /// Expiry, seconds since the epoch.
    pub expires: u64,
    /// When published, milliseconds since the epoch.
    pub published_ms: u64,
    /// The publisher's signed metadata as stored (in a stream's level list), so that an
    /// operator can sign it again, e.g. to roll back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<SignedLevel>,
}

/// A stream as the server lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamView {
    /// Its name ([`KernelId::stream`]).
    pub stream: String,
    /// The kernel build.
    pub kernel: KernelId,
    /// Levels, oldest first (empty in lists).
    #[serde(default)]
    pub levels: Vec<LevelView>,
    /// Newest level.
    pub latest: Option<u32>,
    /// Hosts on this stream.
    pub hosts: u64,
}

/// Hosts to list.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFilter {
    /// `key=value`.
    pub label: Option<String>,
    /// A release (`uname -r`) or a stream.
    pub kernel: Option<String>,
    /// The level the host reports.
    pub level: Option<u32>,
    /// `healthy` or `unhealthy`.
    pub health: Option<String>,
    /// At most this many (default 1000).
    pub limit: Option<u32>,
}

/// A host as the server lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub hostname: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Its kernel.
    pub kernel: KernelId,
    /// Its stream.
    pub stream: String,
    /// The level assigned.
    pub desired: Option<u32>,
    /// The level it reports.
    pub level: Option<u32>,
    /// `healthy` (no taint, no kernel errors) or `unhealthy`.
    pub health: String,
    /// Last check-in, milliseconds since the epoch.
    pub last_seen_ms: u64,
    /// The outcome of its last action.
    pub last_outcome: Option<String>,
    /// Revoked: its credential no longer works.
    pub revoked: bool,
}

/// A kernel the fleet runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelView {
    /// The kernel build.
    pub kernel: KernelId,
    /// Its stream.
    pub stream: String,
    /// Hosts running it.
    pub hosts: u64,
    /// Newest published level.
    pub latest: Option<u32>,
}

/// Assign a level to hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    /// The stream.
    pub stream: String,
    /// The level (`None`: no live patch).
    pub level: Option<u32>,
    /// `key=value`: only hosts with this label (`None`: every host on the stream).
    pub selector: Option<String>,
}

/// What an assignment changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// Hosts whose desired level changed.
    pub hosts: u64,
}

/// Make an operator token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// Who it is for (the audit log's "who").
    pub name: String,
    /// `viewer`, `operator`, `admin`; or `enroll` for a bootstrap token hosts enroll with.
    pub role: String,
}

/// A token, shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// The secret (the server keeps only a hash).
    pub token: String,
}

/// An operator's action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, milliseconds since the epoch.
    pub at_ms: u64,
    /// The token's name.
    pub who: String,
    /// What (`publish 6.1.0-56-amd64@eb4f.. level 2`).
    pub what: String,
    /// `ok` or the error.
    pub result: String,
}

/// Checks a string field against [`MAX_STRING`] and for control characters.
pub fn check_string(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_STRING {
        return Err(format!(
            "{field} is {} bytes, the limit is {MAX_STRING}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

/// Parses a `key=value` selector.
pub fn parse_selector(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("selector {text:?} is not key=value")),
    }
}

impl EnrollRequest {
    /// The limits on an enrollment.
    pub fn check(&self) -> Result<(), String> {
        check_string("hostname", &self.hostname)?;
        if self.hostname.is_empty() {
            return Err("hostname is empty".into());
        }
        if self.labels.len() > MAX_ITEMS {
            return Err(format!(
                "{} labels, the limit is {MAX_ITEMS}",
                self.labels.len()
            ));
        }
        for (k, v) in &self.labels {
            check_string("label name", k)?;
            check_string("label value", v)?;
        }
        self.kernel.check()
    }
}

impl KernelId {
    /// The limits on a kernel id.
    pub fn check(&self) -> Result<(), String> {
        check_string("kernel release", &self.release)?;
        if self.release.is_empty() {
            return Err("kernel release is empty".into());
        }
        if self.build_id.len() < 12 || !self.build_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "kernel build-id {:?} is not hex of at least 12 digits",
                self.build_id
            ));
        }
        check_string("kernel build-id", &self.build_id)
    }
}

impl Report {
    /// The limits on a report.
    pub fn check(&self) -> Result<(), String> {
        self.kernel.check()?;
        if self.inventory.patches.len() > MAX_ITEMS {
            return Err(format!(
                "{} patches, the limit is {MAX_ITEMS}",
                self.inventory.patches.len()
            ));
        }
        if self.outcomes.len() > MAX_ITEMS {
            return Err(format!(
                "{} outcomes, the limit is {MAX_ITEMS}",
                self.outcomes.len()
            ));
        }
        for p in &self.inventory.patches {
            check_string("patch name", &p.name)?;
        }
        if let Some(h) = &self.health {
            h.check()?;
        }
        for o in &self.outcomes {
            check_string("outcome id", &o.id)?;
            check_string("outcome result", &o.result)?;
            if o.blockers.len() > MAX_ITEMS {
                return Err(format!(
                    "{} blockers, the limit is {MAX_ITEMS}",
                    o.blockers.len()
                ));
            }
            if let Some(m) = &o.message {
                if m.len() > 4 * MAX_STRING {
                    return Err(format!(
                        "outcome message is {} bytes, the limit is {}",
                        m.len(),
                        4 * MAX_STRING
                    ));
                }
            }
        }
        Ok(())
    }
}

impl HealthSample {
    /// The limits on a sample: a bounded number of named, finite metrics.
    pub fn check(&self) -> Result<(), String> {
        if self.metrics.len() > MAX_ITEMS {
            return Err(format!(
                "{} metrics, the limit is {MAX_ITEMS}",
                self.metrics.len()
            ));
        }
        for (name, value) in &self.metrics {
            check_string("metric name", name)?;
            if name.is_empty() {
                return Err("a metric has an empty name".into());
            }
            if !value.is_finite() {
                return Err(format!("metric {name} is {value}, not a finite number"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel() -> KernelId {
        KernelId {
            release: "6.1.0-56-amd64".into(),
            build_id: "eb4fbcd037e7253717950bf2".into(),
        }
    }

    #[test]
    fn oversized_and_malformed_enrollments_are_refused_by_field() {
        let mut e = EnrollRequest {
            hostname: "web1".into(),
            labels: BTreeMap::new(),
            kernel: kernel(),
        };
        assert!(e.check().is_ok());
        e.hostname = "x".repeat(MAX_STRING + 1);
        assert!(e.check().unwrap_err().contains("hostname"));
        e.hostname = "a\nb".into();
        assert!(e.check().unwrap_err().contains("control"));
        e.hostname = "web1".into();
        e.kernel.build_id = "zz".into();
        assert!(e.check().unwrap_err().contains("build-id"));
    }

    #[test]
    fn health_samples_need_named_finite_metrics() {
        let mut h = HealthSample {
            at_ms: 1,
            interval_ms: 1,
            level: None,
            patching: false,
            unclean_reboot: false,
            metrics: BTreeMap::from([("tcp_retransmits".to_string(), 2.0)]),
        };
        assert!(h.check().is_ok());
        h.metrics.insert("io_latency_ms".into(), f64::NAN);
        assert!(h.check().unwrap_err().contains("io_latency_ms"));
        h.metrics.clear();
        h.metrics.insert(String::new(), 1.0);
        assert!(h.check().unwrap_err().contains("empty name"));
    }

    #[test]
    fn selectors_are_key_value() {
        assert_eq!(
            parse_selector("ring=canary").unwrap(),
            ("ring".into(), "canary".into())
        );
        assert!(parse_selector("ring").is_err());
        assert!(parse_selector("=x").is_err());
    }

    #[test]
    fn roles_order_what_they_allow() {
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        for r in [Role::Viewer, Role::Operator, Role::Admin] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
