//! The gates a wave passes before the next one starts.
//!
//! The input is one [`HostWindow`] per host and window: what the host's agent observed over it
//! (crash, silence, kernel errors, the transition's outcome, and metrics from the kernel, all
//! oriented so that higher is worse). The output is a [`Decision`] with its reasons, each
//! naming the gate, the metric, the effect, the p-value and the hosts, so that the human the
//! halt waits for sees why at once.
//!
//! The steps of [`evaluate`]:
//! 1. hard gates on the treated hosts: a crash, a lost host, a kernel error after the apply,
//!    or transition failures above a limit, each halt;
//! 2. statistical gates on steady-state windows: per metric, treatment against control with a
//!    one-sided rank test; a halt needs both significance (the family-wise `alpha` split over
//!    the metrics) and an effect at least `min_effect`, so that a tiny real difference in a
//!    big fleet does not page anyone. What is ranked is each host's *change*: its value over
//!    the window divided by its own baseline from before the wave (a difference in
//!    differences). Hosts differ from each other far more than a host differs from itself, so
//!    comparing levels would bury a doubling in the spread between hosts; comparing changes
//!    leaves only a host's own noise. A metric with too few baselined hosts on either side is
//!    compared by level, and the reason says which comparison it was;
//! 3. the patching window, tested the same way, is reported (the expected spike while a patch
//!    goes live) and never halts.

use std::collections::{BTreeMap, BTreeSet};

use crate::stats::{mann_whitney_greater, RankTest};

/// Which side of the comparison a host is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Group {
    /// Took the new level.
    Treatment,
    /// Same kernel build, still at the previous level, observed over the same window.
    Control,
}

/// Which part of the rollout a window covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// While the patch was being applied (its transition and the seconds after).
    Patching,
    /// After it, while the wave bakes.
    Steady,
}

/// What one host's agent observed over one window.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HostWindow {
    /// The host.
    pub host: String,
    /// Treatment or control.
    pub group: Group,
    /// Patching window or steady state.
    pub phase: Phase,
    /// It rebooted uncleanly (or panicked) after the apply.
    pub crashed: bool,
    /// It stopped reporting.
    pub lost: bool,
    /// New WARN, BUG, Oops or livepatch errors in its kernel log.
    pub kernel_errors: u32,
    /// Its transition failed (timed out and was reversed, or the load failed).
    pub transition_failed: bool,
    /// Metrics, each oriented so that higher is worse (retransmits per second, I/O latency,
    /// softirq time, probe results).
    pub metrics: BTreeMap<String, f64>,
    /// The same metrics over the host's baseline: the span before it was moved (a treated
    /// host) or before the wave started (a control host). `None`: it did not report then.
    #[serde(default)]
    pub baseline: Option<BTreeMap<String, f64>>,
}

/// How strict the gates are.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GateConfig {
    /// Family-wise false-halt rate of the statistical gates per evaluation, split evenly over
    /// the metrics tested (Bonferroni).
    pub alpha: f64,
    /// The smallest effect that halts: the probability that a treated host's value exceeds a
    /// control host's (0.5: no difference).
    pub min_effect: f64,
    /// Hosts each group needs before a metric is tested at all.
    pub min_hosts: usize,
    /// The largest fraction of treated hosts whose transition may fail.
    pub max_transition_failures: f64,
    /// Most hosts per side whose samples a bake's end reads (and whom the server asks for
    /// health): a rank test of changes on a thousand hosts a side already detects small
    /// shifts, and a million-host fleet then writes a few thousand samples a minute.
    pub hosts_per_side: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            alpha: 0.001,
            min_effect: 0.65,
            min_hosts: 5,
            max_transition_failures: 0.02,
            hosts_per_side: 1000,
        }
    }
}

/// Why a gate spoke.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Reason {
    /// `crash`, `lost-host`, `kernel-error`, `transition-failures`, `metric`, `spike`,
    /// `too-few-hosts`.
    pub gate: &'static str,
    /// The metric, for statistical gates.
    pub metric: Option<String>,
    /// The rank test, for statistical gates.
    pub test: Option<RankTest>,
    /// The hosts it is about (treated hosts, for hard gates).
    pub hosts: Vec<String>,
    /// One line for people.
    pub message: String,
}

/// Go on, or halt and wait for a human.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "decision", rename_all = "lowercase")]
pub enum Decision {
    /// Every gate passed; `notes` are what was seen without halting (the patching spike,
    /// metrics with too few hosts).
    Continue {
        /// Not halting, but worth showing.
        notes: Vec<Reason>,
    },
    /// At least one gate failed.
    Halt {
        /// Every failed gate.
        reasons: Vec<Reason>,
        /// Not halting, but worth showing.
        notes: Vec<Reason>,
    },
}

impl Decision {
    /// Whether the rollout must stop.
    pub fn halts(&self) -> bool {
        matches!(self, Decision::Halt { .. })
    }
}

/// Decides on one wave's windows (see the module's documentation).
pub fn evaluate(windows: &[HostWindow], config: &GateConfig) -> Decision {
    let mut reasons = hard_gates(windows, config);
    let mut notes = Vec::new();
    let (halting, steady_notes) = statistical_gates(windows, config, Phase::Steady);
    reasons.extend(halting);
    notes.extend(steady_notes);
    // The patching window: the same test, reported only.
    let (spikes, patching_notes) = statistical_gates(windows, config, Phase::Patching);
    notes.extend(spikes.into_iter().map(|mut r| {
        r.gate = "spike";
        r.message = format!("while patching (expected, not a regression): {}", r.message);
        r
    }));
    notes.extend(
        patching_notes
            .into_iter()
            .filter(|n| n.gate != "too-few-hosts"),
    );
    if reasons.is_empty() {
        Decision::Continue { notes }
    } else {
        Decision::Halt { reasons, notes }
    }
}

fn hard_gates(windows: &[HostWindow], config: &GateConfig) -> Vec<Reason> {
    let treated: Vec<&HostWindow> = windows
        .iter()
        .filter(|w| w.group == Group::Treatment)
        .collect();
    let hosts = |keep: &dyn Fn(&HostWindow) -> bool| -> Vec<String> {
        let set: BTreeSet<&str> = treated
            .iter()
            .filter(|w| keep(w))
            .map(|w| w.host.as_str())
            .collect();
        set.into_iter().map(str::to_string).collect()
    };
    let mut reasons = Vec::new();
    let mut hard = |gate: &'static str, hosts: Vec<String>, what: &str| {
        if !hosts.is_empty() {
            reasons.push(Reason {
                gate,
                metric: None,
                test: None,
                message: format!("{} treated host(s) {what}: {}", hosts.len(), list(&hosts)),
                hosts,
            });
        }
    };
    hard("crash", hosts(&|w| w.crashed), "crashed after the apply");
    hard("lost-host", hosts(&|w| w.lost), "stopped reporting");
    hard(
        "kernel-error",
        hosts(&|w| w.kernel_errors > 0),
        "logged kernel errors after the apply",
    );
    let all: BTreeSet<&str> = treated.iter().map(|w| w.host.as_str()).collect();
    let failed = hosts(&|w| w.transition_failed);
    if !all.is_empty() && failed.len() as f64 / all.len() as f64 > config.max_transition_failures {
        reasons.push(Reason {
            gate: "transition-failures",
            metric: None,
            test: None,
            message: format!(
                "{} of {} treated hosts failed the transition (limit {:.1}%): {}",
                failed.len(),
                all.len(),
                config.max_transition_failures * 100.0,
                list(&failed)
            ),
            hosts: failed,
        });
    }
    reasons
}

/// One metric's values in one phase: each host's value and, where it has one, its baseline.
#[derive(Default)]
struct Samples<'a> {
    treatment: Vec<(f64, Option<f64>)>,
    control: Vec<(f64, Option<f64>)>,
    treated_hosts: Vec<&'a str>,
}

/// What a metric's rank test compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compared {
    /// Each host's change from its own baseline.
    Changes,
    /// The hosts' levels (too few hosts had a baseline).
    Levels,
}

impl Samples<'_> {
    /// The values to rank: changes when both sides have enough baselined hosts, else levels.
    fn compared(&self, min_hosts: usize) -> (Compared, Vec<f64>, Vec<f64>) {
        let baselined =
            |side: &[(f64, Option<f64>)]| side.iter().filter(|(_, b)| b.is_some()).count();
        if baselined(&self.treatment) < min_hosts || baselined(&self.control) < min_hosts {
            let levels = |side: &[(f64, Option<f64>)]| side.iter().map(|(v, _)| *v).collect();
            return (
                Compared::Levels,
                levels(&self.treatment),
                levels(&self.control),
            );
        }
        // A metric that is often zero (an idle host retransmits nothing) would make ratios
        // infinite: both sides of each ratio get a floor of 1% of the median baseline.
        let mut baselines: Vec<f64> = self
            .treatment
            .iter()
            .chain(&self.control)
            .filter_map(|(_, b)| *b)
            .collect();
        baselines.sort_by(f64::total_cmp);
        let floor = (0.01 * baselines[baselines.len() / 2]).max(1e-9);
        let changes = |side: &[(f64, Option<f64>)]| {
            side.iter()
                .filter_map(|(v, b)| b.map(|b| (v + floor) / (b + floor)))
                .collect()
        };
        (
            Compared::Changes,
            changes(&self.treatment),
            changes(&self.control),
        )
    }
}

/// Halting reasons and notes for the windows of one phase.
fn statistical_gates(
    windows: &[HostWindow],
    config: &GateConfig,
    phase: Phase,
) -> (Vec<Reason>, Vec<Reason>) {
    let mut by_metric: BTreeMap<&str, Samples<'_>> = BTreeMap::new();
    for w in windows.iter().filter(|w| w.phase == phase) {
        for (name, &value) in &w.metrics {
            let baseline = w.baseline.as_ref().and_then(|b| b.get(name)).copied();
            let entry = by_metric.entry(name).or_default();
            match w.group {
                Group::Treatment => {
                    entry.treatment.push((value, baseline));
                    entry.treated_hosts.push(&w.host);
                }
                Group::Control => entry.control.push((value, baseline)),
            }
        }
    }
    let tested = by_metric
        .values()
        .filter(|m| m.treatment.len() >= config.min_hosts && m.control.len() >= config.min_hosts)
        .count()
        .max(1);
    let alpha = config.alpha / tested as f64;
    let (mut halting, mut notes) = (Vec::new(), Vec::new());
    for (name, samples) in by_metric {
        let (compared, treatment, control) = samples.compared(config.min_hosts);
        let hosts = samples.treated_hosts;
        if treatment.len() < config.min_hosts || control.len() < config.min_hosts {
            notes.push(Reason {
                gate: "too-few-hosts",
                metric: Some(name.to_string()),
                test: None,
                hosts: Vec::new(),
                message: format!(
                    "{name}: {} treated and {} control hosts, {} each needed: not tested",
                    treatment.len(),
                    control.len(),
                    config.min_hosts
                ),
            });
            continue;
        }
        let Some(test) = mann_whitney_greater(&treatment, &control) else {
            continue;
        };
        if test.p_value < alpha && test.effect >= config.min_effect {
            halting.push(Reason {
                gate: "metric",
                metric: Some(name.to_string()),
                test: Some(test),
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                message: format!(
                    "{name} is higher on treated hosts{}: P(treated > control) = {:.2} (floor {:.2}), p = {:.2e} (alpha {:.1e}), median ratio {}",
                    match compared {
                        Compared::Changes => " (each against its own baseline)",
                        Compared::Levels => " (levels compared: too few hosts had a baseline)",
                    },
                    test.effect,
                    config.min_effect,
                    test.p_value,
                    alpha,
                    test.median_ratio
                        .map_or("n/a".to_string(), |r| format!("{r:.2}"))
                ),
            });
        }
    }
    (halting, notes)
}

fn list(hosts: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = hosts
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if hosts.len() > SHOWN {
        text.push_str(&format!(" (+{} more)", hosts.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(host: usize, group: Group, phase: Phase, retransmits: f64) -> HostWindow {
        HostWindow {
            host: format!("h{host}"),
            group,
            phase,
            crashed: false,
            lost: false,
            kernel_errors: 0,
            transition_failed: false,
            metrics: [("tcp_retransmits".to_string(), retransmits)].into(),
            baseline: None,
        }
    }

    /// Twenty treated and twenty control hosts with the same spread of values, the treated ones
    /// multiplied by `factor` in `phase`.
    fn wave(factor: f64, phase: Phase) -> Vec<HostWindow> {
        let mut windows = Vec::new();
        for i in 0..20 {
            let base = 1.0 + i as f64 * 0.1;
            windows.push(window(i, Group::Treatment, phase, base * factor));
            windows.push(window(100 + i, Group::Control, phase, base));
        }
        windows
    }

    fn reasons(decision: &Decision) -> Vec<&'static str> {
        match decision {
            Decision::Halt { reasons, .. } => reasons.iter().map(|r| r.gate).collect(),
            Decision::Continue { .. } => Vec::new(),
        }
    }

    #[test]
    fn a_doubled_metric_in_steady_state_halts_and_says_which() {
        let decision = evaluate(&wave(2.0, Phase::Steady), &GateConfig::default());
        assert_eq!(reasons(&decision), ["metric"]);
        let Decision::Halt { reasons, .. } = &decision else {
            unreachable!()
        };
        assert_eq!(reasons[0].metric.as_deref(), Some("tcp_retransmits"));
        assert!(
            reasons[0].message.contains("median ratio 2.00"),
            "{}",
            reasons[0].message
        );
        assert_eq!(reasons[0].hosts.len(), 20);
    }

    #[test]
    fn the_same_spike_while_patching_is_reported_not_halted() {
        let decision = evaluate(&wave(2.0, Phase::Patching), &GateConfig::default());
        let Decision::Continue { notes } = &decision else {
            panic!("the patching spike halted: {decision:?}")
        };
        assert!(notes.iter().any(|n| n.gate == "spike"), "{notes:?}");
    }

    #[test]
    fn alike_groups_pass() {
        assert!(!evaluate(&wave(1.0, Phase::Steady), &GateConfig::default()).halts());
    }

    #[test]
    fn a_small_real_difference_is_below_the_effect_floor() {
        // 3% higher everywhere: every treated host is a little worse than its twin, but the
        // groups overlap almost entirely.
        assert!(!evaluate(&wave(1.03, Phase::Steady), &GateConfig::default()).halts());
    }

    #[test]
    fn a_crash_on_a_treated_host_halts_but_not_on_a_control_host() {
        let mut windows = wave(1.0, Phase::Steady);
        windows[1].crashed = true; // a control host
        assert!(!evaluate(&windows, &GateConfig::default()).halts());
        windows[0].crashed = true; // a treated host
        windows[2].lost = true;
        windows[4].kernel_errors = 1;
        let decision = evaluate(&windows, &GateConfig::default());
        assert_eq!(reasons(&decision), ["crash", "lost-host", "kernel-error"]);
    }

    #[test]
    fn transition_failures_halt_above_the_limit_only() {
        let config = GateConfig {
            max_transition_failures: 0.05,
            ..GateConfig::default()
        };
        let mut windows = wave(1.0, Phase::Steady);
        windows[0].transition_failed = true; // 1 of 20: 5%, at the limit
        assert!(!evaluate(&windows, &config).halts());
        windows[2].transition_failed = true; // 2 of 20
        assert_eq!(
            reasons(&evaluate(&windows, &config)),
            ["transition-failures"]
        );
    }

    /// Hosts whose levels span a factor of twenty, each with a baseline at its level, the
    /// treated ones multiplied by `factor` over the window.
    fn spread_wave(factor: f64) -> Vec<HostWindow> {
        let mut windows = Vec::new();
        for i in 0..20 {
            // Treated and control hosts interleave over the whole spread.
            let level = |k: usize| 1.0 + 19.0 * ((k * 7) % 20) as f64 / 19.0;
            let mut treated = window(i, Group::Treatment, Phase::Steady, level(i) * factor);
            treated.baseline = Some([("tcp_retransmits".into(), level(i))].into());
            let mut control = window(100 + i, Group::Control, Phase::Steady, level(i + 3));
            control.baseline = Some([("tcp_retransmits".into(), level(i + 3))].into());
            windows.extend([treated, control]);
        }
        windows
    }

    #[test]
    fn a_doubling_buried_in_the_spread_between_hosts_halts_against_each_hosts_own_baseline() {
        let windows = spread_wave(2.0);
        // By level, the doubled hosts are lost among hosts twenty times apart.
        let levels: Vec<HostWindow> = windows
            .iter()
            .cloned()
            .map(|mut w| {
                w.baseline = None;
                w
            })
            .collect();
        assert!(!evaluate(&levels, &GateConfig::default()).halts());
        // Against their own baselines, every treated host changed and no control host did.
        let decision = evaluate(&windows, &GateConfig::default());
        let Decision::Halt { reasons, .. } = &decision else {
            panic!("{decision:?}")
        };
        assert!(
            reasons[0].message.contains("each against its own baseline"),
            "{}",
            reasons[0].message
        );
        assert_eq!(reasons[0].test.map(|t| t.effect), Some(1.0));
        assert!(!evaluate(&spread_wave(1.0), &GateConfig::default()).halts());
    }

    #[test]
    fn too_few_baselined_hosts_compare_levels_and_say_so() {
        let mut windows = wave(2.0, Phase::Steady);
        for w in windows.iter_mut().take(4) {
            w.baseline = Some(w.metrics.clone());
        }
        let decision = evaluate(&windows, &GateConfig::default());
        let Decision::Halt { reasons, .. } = &decision else {
            panic!("{decision:?}")
        };
        assert!(
            reasons[0].message.contains("levels compared"),
            "{}",
            reasons[0].message
        );
    }

    #[test]
    fn too_few_hosts_is_said_not_tested() {
        let windows: Vec<HostWindow> = wave(3.0, Phase::Steady).into_iter().take(6).collect();
        let decision = evaluate(&windows, &GateConfig::default());
        let Decision::Continue { notes } = &decision else {
            panic!("{decision:?}")
        };
        assert_eq!(notes[0].gate, "too-few-hosts");
    }
}
