//! Staged rollouts on the wire: what an operator starts, and what the server shows of one.
//!
//! | method and path | who | body → answer |
//! |---|---|---|
//! | `POST /rollouts` | operator | [`StartRollout`] → [`RolloutView`] (201) |
//! | `GET /rollouts` | viewer | → `[`[`RolloutView`]`]`, newest first, without decisions |
//! | `GET /rollouts/{id}` | viewer | → [`RolloutView`] with every gate decision |
//! | `POST /rollouts/{id}/pause` | operator | → [`RolloutView`] |
//! | `POST /rollouts/{id}/resume` | operator | → [`RolloutView`] |
//! | `POST /rollouts/{id}/abort` | operator | → [`RolloutView`] |
//! | `POST /rollouts/{id}/rollback` | operator | [`Rollback`] → [`RolloutView`] |

use serde::{Deserialize, Serialize};

use crate::api::{check_string, parse_selector};
use crate::trust::SignedLevel;

/// Longest bake time a rollout may ask for: a week.
pub const MAX_BAKE_MS: u64 = 7 * 24 * 3600 * 1000;

/// `POST /rollouts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRollout {
    /// The stream (kernel build).
    pub stream: String,
    /// The level to roll out: published and signed.
    pub level: u32,
    /// `label=value`: only the stream's hosts with this label (default: all of them).
    #[serde(default)]
    pub selector: Option<String>,
    /// A first wave of this many hosts, before the percentages.
    #[serde(default)]
    pub canary: Option<u32>,
    /// Cumulative percentages of the selected hosts, ending at 100: `1,5,25,100`.
    pub waves: String,
    /// How long each wave runs with every host on it before the gates decide.
    pub bake_ms: u64,
    /// At most this many hosts of a wave applying at once (default: the whole wave).
    #[serde(default)]
    pub max_parallel: Option<u32>,
    /// A treated host silent for this long is lost, which halts the rollout.
    #[serde(default)]
    pub lost_after_ms: Option<u64>,
    /// On a halt, put the halted wave's hosts back on their previous level at once (only
    /// when that needs no new signature: the previous level is none).
    #[serde(default)]
    pub auto_rollback: bool,
}

impl StartRollout {
    /// The limits on a start request (the wave plan is checked by the server's planner).
    pub fn check(&self) -> Result<(), String> {
        check_string("stream", &self.stream)?;
        check_string("waves", &self.waves)?;
        if let Some(s) = &self.selector {
            check_string("selector", s)?;
            parse_selector(s)?;
        }
        if self.bake_ms > MAX_BAKE_MS {
            return Err(format!(
                "a bake of {} s is longer than the limit of a week",
                self.bake_ms / 1000
            ));
        }
        if self.canary == Some(0) {
            return Err("a canary wave of 0 hosts: give at least 1, or leave it out".into());
        }
        if self.max_parallel == Some(0) {
            return Err("max-parallel 0 would never move a host: give at least 1".into());
        }
        if self.lost_after_ms == Some(0) {
            return Err("lost-after 0 would count every host lost: give a duration".into());
        }
        Ok(())
    }
}

/// Where a rollout is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Moving hosts, or baking a wave.
    Running,
    /// Stopped by an operator; `resume` goes on.
    Paused,
    /// Stopped by a gate; waits for `resume` or `rollback`.
    Halted,
    /// Every wave passed.
    Completed,
    /// Stopped for good by an operator; hosts stay where they are.
    Aborted,
    /// The treated hosts were sent back to their previous level.
    RolledBack,
}

impl RolloutState {
    /// Every state, in the order a rollout may pass through them.
    pub const ALL: [RolloutState; 6] = [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Halted,
        RolloutState::Completed,
        RolloutState::Aborted,
        RolloutState::RolledBack,
    ];

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
            RolloutState::RolledBack => "rolled-back",
        }
    }

    /// The state a name stands for.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// No further change is possible.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Completed | RolloutState::Aborted | RolloutState::RolledBack
        )
    }
}

/// One gate's finding, as the server recorded it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `crash`, `lost-host`, `kernel-error`, `transition-failures`, `metric`, `spike`,
    /// `too-few-hosts`, `no-control`.
    pub gate: String,
    /// The metric, for statistical gates.
    #[serde(default)]
    pub metric: Option<String>,
    /// P(treated host's value > control host's value), for statistical gates.
    #[serde(default)]
    pub effect: Option<f64>,
    /// The one-sided p-value, for statistical gates.
    #[serde(default)]
    pub p_value: Option<f64>,
    /// Median of treatment over median of control, where both are positive.
    #[serde(default)]
    pub median_ratio: Option<f64>,
    /// Hosts in the treatment and the control.
    #[serde(default)]
    pub n_treatment: Option<u64>,
    /// Hosts in the control.
    #[serde(default)]
    pub n_control: Option<u64>,
    /// The hosts it is about (at most 20 named).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// One line for people.
    pub message: String,
}

/// One evaluation of the gates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    /// When.
    pub at_ms: u64,
    /// The wave it judged (from 1).
    pub wave: u32,
    /// `continue` or `halt`.
    pub decision: String,
    /// Bake over (all gates) or during the bake (hard gates only).
    pub at_bake_end: bool,
    /// The failed gates.
    #[serde(default)]
    pub reasons: Vec<Finding>,
    /// What was seen without halting.
    #[serde(default)]
    pub notes: Vec<Finding>,
}

/// One wave of a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveView {
    /// From 1.
    pub wave: u32,
    /// Hosts treated once it is out (cumulative).
    pub target: u64,
    /// When its first host was moved.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When its last host was moved: its bake starts.
    #[serde(default)]
    pub assigned_ms: Option<u64>,
    /// When its gates passed.
    #[serde(default)]
    pub passed_ms: Option<u64>,
}

/// A rollout as the server shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    /// `r-...`.
    pub id: String,
    /// The stream.
    pub stream: String,
    /// The level it rolls out.
    pub level: u32,
    /// The level the selected hosts were assigned before (none: no level).
    pub from_level: Option<u32>,
    /// The selector, if any.
    pub selector: Option<String>,
    /// Its state.
    pub state: RolloutState,
    /// Why it is in that state, for halts, aborts and rollbacks.
    pub reason: Option<String>,
    /// The wave it is in (from 1; 0 before the first host moved).
    pub wave: u32,
    /// Its waves.
    pub waves: Vec<WaveView>,
    /// Bake time per wave.
    pub bake_ms: u64,
    /// Hosts applying at once, at most.
    pub max_parallel: Option<u32>,
    /// Silence that makes a treated host lost.
    pub lost_after_ms: u64,
    /// Roll the wave back on a halt.
    pub auto_rollback: bool,
    /// Hosts selected when it started.
    pub hosts: u64,
    /// Hosts moved to the level so far.
    pub treated: u64,
    /// Treated hosts that report the level applied.
    pub applied: u64,
    /// Who started it.
    pub created_by: String,
    /// When.
    pub created_ms: u64,
    /// Last change.
    pub updated_ms: u64,
    /// Gate decisions, oldest first (only in `GET /rollouts/{id}`).
    #[serde(default)]
    pub decisions: Vec<GateDecision>,
}

/// `POST /rollouts/{id}/rollback`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    /// The previous level's metadata signed again with a version newer than every level of the
    /// stream: agents refuse older versions (a server must not be able to take hosts back to a
    /// level with a known hole), so going back needs the publisher's fresh signature. Not
    /// needed when the previous level is none (a revert).
    #[serde(default)]
    pub resigned: Option<SignedLevel>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> StartRollout {
        StartRollout {
            stream: "6.1.0-56-amd64@eb4fbcd037e7".into(),
            level: 2,
            selector: None,
            canary: None,
            waves: "1,5,25,100".into(),
            bake_ms: 60_000,
            max_parallel: None,
            lost_after_ms: None,
            auto_rollback: false,
        }
    }

    #[test]
    fn start_requests_are_checked_by_field() {
        assert!(start().check().is_ok());
        let mut s = start();
        s.selector = Some("ring".into());
        assert!(s.check().unwrap_err().contains("key=value"));
        let mut s = start();
        s.bake_ms = MAX_BAKE_MS + 1;
        assert!(s.check().unwrap_err().contains("week"));
        let mut s = start();
        s.canary = Some(0);
        assert!(s.check().unwrap_err().contains("canary"));
        let mut s = start();
        s.max_parallel = Some(0);
        assert!(s.check().unwrap_err().contains("max-parallel"));
    }

    #[test]
    fn states_round_trip_by_name() {
        for s in RolloutState::ALL {
            assert_eq!(RolloutState::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        assert!(RolloutState::Completed.is_final() && !RolloutState::Halted.is_final());
    }
}
