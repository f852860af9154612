//! `GET /metrics`: the Prometheus text format, for any operator token (a scraper's
//! `bearer_token`). Counters are this replica's own (check-ins and reports it answered); the
//! fleet's state (hosts per level, rollouts, gate decisions) is read from the database, so
//! every replica shows the same.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use graft_protocol::api::Role;
use graft_protocol::rollout::RolloutState;

use crate::auth::Operator;
use crate::error::Failure;
use crate::AppState;

/// Rollouts whose gauges are shown (the newest).
const ROLLOUTS_SHOWN: u32 = 100;

/// What this replica counts as it answers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Check-ins answered with a body.
    pub checkins_changed: AtomicU64,
    /// Check-ins answered 304.
    pub checkins_unchanged: AtomicU64,
    /// Check-ins whose answer was read from the database (not kept in memory).
    pub checkin_lookups: AtomicU64,
    /// Reports stored.
    pub reports: AtomicU64,
}

impl Counters {
    /// Counts one.
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    op: Operator,
) -> Result<Response, Failure> {
    op.require(Role::Viewer)?;
    let mut out = String::new();
    let c = &state.counters;
    family(
        &mut out,
        "graft_checkins_total",
        "counter",
        "Check-ins (GET /v1/host/desired) this replica answered, by answer.",
    );
    let _ = writeln!(
        out,
        "graft_checkins_total{{answer=\"changed\"}} {}",
        c.checkins_changed.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "graft_checkins_total{{answer=\"not_modified\"}} {}",
        c.checkins_unchanged.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "graft_checkin_lookups_total",
        "counter",
        "Check-ins this replica answered from the database, not from memory (a host's first, or one whose answer changed).",
    );
    let _ = writeln!(
        out,
        "graft_checkin_lookups_total {}",
        c.checkin_lookups.load(Ordering::Relaxed)
    );
    family(
        &mut out,
        "graft_reports_total",
        "counter",
        "Host reports this replica stored.",
    );
    let _ = writeln!(
        out,
        "graft_reports_total {}",
        c.reports.load(Ordering::Relaxed)
    );

    family(
        &mut out,
        "graft_hosts",
        "gauge",
        "Enrolled hosts (not revoked) per stream and reported level.",
    );
    for (stream, level, n) in state.store.hosts_by_level().await? {
        let level = level.map_or("none".into(), |l| l.to_string());
        let _ = writeln!(
            out,
            "graft_hosts{{stream=\"{}\",level=\"{level}\"}} {n}",
            label(&stream)
        );
    }

    let rollouts = state.store.rollouts(ROLLOUTS_SHOWN).await?;
    family(
        &mut out,
        "graft_rollouts",
        "gauge",
        "Rollouts per state (of the newest 100).",
    );
    for s in RolloutState::ALL {
        let n = rollouts.iter().filter(|r| r.state == s).count();
        let _ = writeln!(out, "graft_rollouts{{state=\"{}\"}} {n}", s.as_str());
    }
    family(
        &mut out,
        "graft_rollout_wave",
        "gauge",
        "The wave a rollout is in (from 1), with its state.",
    );
    for r in &rollouts {
        let _ = writeln!(
            out,
            "graft_rollout_wave{{rollout=\"{}\",stream=\"{}\",level=\"{}\",state=\"{}\"}} {}",
            label(&r.id),
            label(&r.stream),
            r.level,
            r.state.as_str(),
            r.wave
        );
    }
    family(
        &mut out,
        "graft_rollout_hosts",
        "gauge",
        "Hosts a rollout selected, and moved so far.",
    );
    for r in rollouts.iter().filter(|r| !r.state.is_final()) {
        let counts = state.store.rollout_counts(r, crate::now_ms()).await?;
        let _ = writeln!(
            out,
            "graft_rollout_hosts{{rollout=\"{}\",kind=\"selected\"}} {}",
            label(&r.id),
            r.hosts
        );
        let _ = writeln!(
            out,
            "graft_rollout_hosts{{rollout=\"{}\",kind=\"moved\"}} {}",
            label(&r.id),
            counts.treated
        );
        let _ = writeln!(
            out,
            "graft_rollout_hosts{{rollout=\"{}\",kind=\"applied\"}} {}",
            label(&r.id),
            counts.applied
        );
    }
    family(
        &mut out,
        "graft_gate_decisions",
        "gauge",
        "Gate decisions of the newest 100 rollouts, by decision and gate.",
    );
    let mut decisions: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for d in rollouts.iter().flat_map(|r| &r.decisions) {
        if d.reasons.is_empty() {
            *decisions
                .entry((d.decision.clone(), "none".into()))
                .or_default() += 1;
        }
        for f in &d.reasons {
            *decisions
                .entry((d.decision.clone(), f.gate.clone()))
                .or_default() += 1;
        }
    }
    for ((decision, gate), n) in decisions {
        let _ = writeln!(
            out,
            "graft_gate_decisions{{decision=\"{}\",gate=\"{}\"}} {n}",
            label(&decision),
            label(&gate)
        );
    }
    Ok((
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response())
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value escaped as the text format asks (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
