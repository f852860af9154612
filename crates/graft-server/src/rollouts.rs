//! The rollout driver: a loop in every replica that moves running rollouts on, one step per
//! tick. All of a rollout's state is its database row, written under a compare-and-set on its
//! revision, so a rollout survives restarts and replica changes, and two replicas never drive
//! one step twice (the loser of a race reads the new row at the next tick).
//!
//! One step of a running rollout ([`step`]):
//! 1. the hard gates over every host moved so far: a crash, a lost host, a kernel error, or
//!    transition failures above the limit halt it at once, mid-bake or mid-wave;
//! 2. the wave not fully out: move the next hosts in the rollout's order (at most
//!    `max_parallel` on their way at once);
//! 3. the wave out: bake, until the bake time has passed and every moved host settled;
//! 4. baked: every gate, the statistical ones on the window since the wave started (the
//!    patching window apart); pass: the next wave, or completed; fail: halted (and, if asked,
//!    rolled back), with the reasons recorded.

use std::collections::BTreeMap;
use std::time::Duration;

use graft_protocol::rollout::{Finding, GateDecision, RolloutState, WaveView};
use graft_rollout::{evaluate, Decision, GateConfig, Group, HostWindow, Phase, Reason, WavePlan};

use crate::checkins::CheckinCache;
use crate::store::{HardFacts, HostSamples, RollBack, RolloutRow, Store, NAMED_HOSTS};

/// How long health samples are kept.
const HEALTH_KEPT: Duration = Duration::from_secs(14 * 24 * 3600);

/// The waves of a plan over `hosts` selected hosts, with an optional canary wave of a fixed
/// size first; waves that would add no host (a small fleet's 1% after a canary) are dropped.
pub(crate) fn plan_waves(plan: &WavePlan, canary: Option<u32>, hosts: u64) -> Vec<WaveView> {
    let mut targets = Vec::new();
    if let Some(c) = canary {
        targets.push(u64::from(c).min(hosts));
    }
    for wave in 1..=plan.waves() {
        targets.push(plan.treated_after(wave, hosts));
    }
    let mut waves: Vec<WaveView> = Vec::new();
    for target in targets {
        let before = waves.last().map_or(0, |w| w.target);
        if target > before {
            waves.push(WaveView {
                wave: u32::try_from(waves.len() + 1).unwrap_or(u32::MAX),
                target,
                started_ms: None,
                assigned_ms: None,
                passed_ms: None,
            });
        }
    }
    waves
}

/// Drives every running rollout every `tick` until `stop` turns true.
pub(crate) async fn drive_until(
    state: crate::AppState,
    gates: GateConfig,
    tick: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_prune = 0u64;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(tick) => {}
        }
        let now = crate::now_ms();
        let (store, checkins) = (&state.store, &state.checkins);
        match store.running_rollouts().await {
            Ok(rollouts) => {
                for row in rollouts {
                    let id = row.id.clone();
                    if let Err(e) = step(store, checkins, &gates, row, now).await {
                        tracing::warn!(rollout = id, error = %e, "rollout step failed; retried at the next tick");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading running rollouts failed"),
        }
        if now.saturating_sub(last_prune) > 3_600_000 {
            last_prune = now;
            let before = now.saturating_sub(u64::try_from(HEALTH_KEPT.as_millis()).unwrap_or(0));
            if let Err(e) = store.prune_health(before).await {
                tracing::warn!(error = %e, "pruning old health samples failed");
            }
        }
    }
}

/// One step of a running rollout (see the module's documentation).
pub(crate) async fn step(
    store: &Store,
    checkins: &CheckinCache,
    gates: &GateConfig,
    mut row: RolloutRow,
    now: u64,
) -> Result<(), sqlx::Error> {
    let counts = store.rollout_counts(&row, now).await?;
    // 1. Hard gates over every moved host, at every tick: a halt stops new hosts at once.
    if counts.treated > 0 {
        let facts = store.hard_facts(&row, &counts, now).await?;
        let reasons = hard_findings(&facts, gates);
        if !reasons.is_empty() {
            return halt(store, checkins, row, reasons, Vec::new(), false, now).await;
        }
    }
    // 2. The current wave, started if none is: its sampled hosts are asked for health first,
    //    and the first wave moves nobody before they reported a bake's length of baseline.
    if row.wave == 0 && !row.waves.is_empty() {
        row.wave = 1;
        row.waves[0].started_ms = Some(now);
        tracing::info!(
            rollout = row.id,
            "collecting a baseline before the first wave"
        );
        let sample = sampled_ranks(&row.waves, 0, gates.hosts_per_side);
        return save(store, checkins, &row, 0, None, &sample, now).await;
    }
    let index = (row.wave as usize).max(1) - 1;
    let Some(wave) = row.waves.get(index).cloned() else {
        // No waves at all: nothing selected. Completed, nothing to do.
        row.state = RolloutState::Completed;
        return save(store, checkins, &row, 0, None, &[], now).await;
    };
    let collecting_baseline = row.wave == 1
        && counts.treated == 0
        && now < wave.started_ms.unwrap_or(0).saturating_add(row.bake_ms);
    if collecting_baseline {
        return Ok(());
    }
    if counts.treated < wave.target {
        let room = match row.max_parallel {
            Some(k) => u64::from(k).saturating_sub(counts.in_flight),
            None => u64::MAX,
        };
        let moves = (wave.target - counts.treated).min(room);
        if moves == 0 {
            return Ok(());
        }
        if counts.treated + moves >= wave.target {
            row.waves[index].assigned_ms = Some(now);
        }
        tracing::info!(
            rollout = row.id,
            wave = row.wave,
            moves,
            "moving hosts to level {}",
            row.level
        );
        return save(store, checkins, &row, moves, None, &[], now).await;
    }
    let Some(assigned) = wave.assigned_ms else {
        row.waves[index].assigned_ms = Some(now);
        return save(store, checkins, &row, 0, None, &[], now).await;
    };
    // 3. Baking.
    if now < assigned.saturating_add(row.bake_ms) || counts.in_flight > 0 {
        return Ok(());
    }
    // 4. Baked: every gate on the window since the wave started.
    let since = wave.started_ms.unwrap_or(assigned);
    // Each host's baseline: a bake's length of its samples before it was moved (or, for a
    // control host, before the wave started).
    let samples = store
        .window_samples(
            &row,
            since,
            row.bake_ms,
            i64::try_from(gates.hosts_per_side).unwrap_or(i64::MAX),
        )
        .await?;
    let windows = windows_of(&samples);
    let has_control = windows.iter().any(|w| w.group == Group::Control);
    let decision = evaluate(&windows, gates);
    let (reasons, mut notes) = match decision {
        Decision::Continue { notes } => (Vec::new(), notes),
        Decision::Halt { reasons, notes } => (reasons, notes),
    };
    let reasons: Vec<Finding> = reasons.iter().map(finding).collect();
    let mut notes: Vec<Finding> = notes.drain(..).map(|n| finding(&n)).collect();
    if !has_control {
        notes.push(Finding {
            gate: "no-control".into(),
            metric: None,
            effect: None,
            p_value: None,
            median_ratio: None,
            n_treatment: None,
            n_control: Some(0),
            hosts: Vec::new(),
            message: format!(
                "no host left at level {} reported over the window: wave {} had only the hard gates",
                level_text(row.from_level),
                row.wave
            ),
        });
    }
    if !reasons.is_empty() {
        return halt(store, checkins, row, reasons, notes, true, now).await;
    }
    row.decisions.push(GateDecision {
        at_ms: now,
        wave: row.wave,
        decision: "continue".into(),
        at_bake_end: true,
        reasons: Vec::new(),
        notes,
    });
    row.waves[index].passed_ms = Some(now);
    if row.wave as usize == row.waves.len() {
        row.state = RolloutState::Completed;
        tracing::info!(rollout = row.id, "rollout completed");
        return save(store, checkins, &row, 0, None, &[], now).await;
    }
    row.wave += 1;
    row.waves[index + 1].started_ms = Some(now);
    tracing::info!(
        rollout = row.id,
        wave = row.wave,
        "wave passed its gates; next wave"
    );
    let sample = sampled_ranks(&row.waves, index + 1, gates.hosts_per_side);
    save(store, checkins, &row, 0, None, &sample, now).await
}

/// Stops a rollout on failed gates, records why, and rolls it back if it was asked to.
async fn halt(
    store: &Store,
    checkins: &CheckinCache,
    mut row: RolloutRow,
    reasons: Vec<Finding>,
    notes: Vec<Finding>,
    at_bake_end: bool,
    now: u64,
) -> Result<(), sqlx::Error> {
    let why = reasons
        .iter()
        .map(|r| r.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    tracing::warn!(
        rollout = row.id,
        wave = row.wave,
        reason = why,
        "rollout halted"
    );
    row.decisions.push(GateDecision {
        at_ms: now,
        wave: row.wave.max(1),
        decision: "halt".into(),
        at_bake_end,
        reasons,
        notes,
    });
    if row.auto_rollback {
        row.state = RolloutState::RolledBack;
        row.reason = Some(format!(
            "halted in wave {}: {why}; rolled back automatically",
            row.wave.max(1)
        ));
        let back = RollBack {
            wave: None,
            resigned: None,
        };
        return save(store, checkins, &row, 0, Some(back), &[], now).await;
    }
    row.state = RolloutState::Halted;
    row.reason = Some(format!(
        "halted in wave {}: {why}; waiting for `rollout resume` or `rollout rollback`",
        row.wave.max(1)
    ));
    save(store, checkins, &row, 0, None, &[], now).await
}

/// The ranks, in the rollout's order, of the hosts asked to report health while wave `index`
/// runs (offset, count), `per_group` of each: its own first hosts (the treated side the gates read), the first
/// hosts after it (the control side, whose baseline was collected in the previous wave),
/// and the first hosts of the wave after (the next control side, collecting its baseline).
/// A wave's treated hosts were the previous wave's control, so their baseline exists too.
fn sampled_ranks(waves: &[WaveView], index: usize, per_group: u64) -> Vec<(u64, u64)> {
    let before = index
        .checked_sub(1)
        .and_then(|i| waves.get(i))
        .map_or(0, |w| w.target);
    let mut ranks = vec![(before, per_group)];
    ranks.extend(
        waves
            .iter()
            .skip(index)
            .take(2)
            .map(|w| (w.target, per_group)),
    );
    ranks
}

/// Writes a step; a lost race is not an error (the winner's row is read at the next tick).
async fn save(
    store: &Store,
    checkins: &CheckinCache,
    row: &RolloutRow,
    moves: u64,
    back: Option<RollBack<'_>>,
    sample: &[(u64, u64)],
    now: u64,
) -> Result<(), sqlx::Error> {
    let changes_answers = moves > 0 || back.is_some() || !sample.is_empty() || row.state.is_final();
    if store.save_rollout(row, moves, back, sample, now).await? {
        if changes_answers {
            checkins.invalidate();
        }
    } else {
        tracing::debug!(rollout = row.id, "another replica moved this rollout first");
    }
    Ok(())
}

/// The hard gates, from facts over every moved host.
pub(crate) fn hard_findings(facts: &HardFacts, gates: &GateConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut hard = |gate: &str, hosts: &[String], message: String| {
        out.push(Finding {
            gate: gate.into(),
            metric: None,
            effect: None,
            p_value: None,
            median_ratio: None,
            n_treatment: Some(facts.treated),
            n_control: None,
            hosts: hosts.to_vec(),
            message,
        });
    };
    if !facts.crashed.is_empty() {
        hard(
            "crash",
            &facts.crashed,
            format!(
                "{} came back from an unclean reboot after taking the level",
                named(&facts.crashed)
            ),
        );
    }
    if !facts.lost.is_empty() {
        hard(
            "lost-host",
            &facts.lost,
            format!("{} stopped reporting after being moved", named(&facts.lost)),
        );
    }
    if !facts.kernel_errors.is_empty() {
        hard(
            "kernel-error",
            &facts.kernel_errors,
            format!(
                "{} logged kernel warnings or errors (WARN, BUG, Oops, livepatch) since applying the level",
                named(&facts.kernel_errors)
            ),
        );
    }
    let share = facts.failed_count as f64 / facts.treated.max(1) as f64;
    if facts.failed_count > 0 && share > gates.max_transition_failures {
        hard(
            "transition-failures",
            &facts.failed,
            format!(
                "{} of {} moved hosts failed to apply the level ({:.1}%, the limit is {:.1}%): {}",
                facts.failed_count,
                facts.treated,
                share * 100.0,
                gates.max_transition_failures * 100.0,
                named(&facts.failed)
            ),
        );
    }
    out
}

/// Each host's samples as gate windows: the treated hosts' patching samples apart from their
/// steady ones, a control host's whole window as the reference of both; each metric the mean
/// over the window, and over the host's baseline span.
pub(crate) fn windows_of(samples: &[HostSamples]) -> Vec<HostWindow> {
    let mut out = Vec::new();
    for host in samples {
        let baseline = mean_of(host.baseline.iter().map(|(_, m)| m));
        for phase in [Phase::Patching, Phase::Steady] {
            // A control host applies nothing in the window: all of it is what the treated
            // hosts' patching window and their steady state are both compared with.
            let chosen = host
                .samples
                .iter()
                .filter(|(patching, _)| !host.treated || *patching == (phase == Phase::Patching))
                .map(|(_, m)| m);
            let Some(metrics) = mean_of(chosen) else {
                continue;
            };
            out.push(HostWindow {
                host: host.host.clone(),
                group: if host.treated {
                    Group::Treatment
                } else {
                    Group::Control
                },
                phase,
                crashed: false,
                lost: false,
                kernel_errors: 0,
                transition_failed: false,
                metrics,
                baseline: baseline.clone(),
            });
        }
    }
    out
}

/// Each metric's mean over some samples; `None` when there are none.
fn mean_of<'a>(
    samples: impl Iterator<Item = &'a BTreeMap<String, f64>>,
) -> Option<BTreeMap<String, f64>> {
    let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    for metrics in samples {
        for (name, value) in metrics {
            let e = sums.entry(name.clone()).or_default();
            e.0 += value;
            e.1 += 1;
        }
    }
    (!sums.is_empty()).then(|| {
        sums.into_iter()
            .map(|(k, (sum, n))| (k, sum / f64::from(n)))
            .collect()
    })
}

/// A gate's reason as the server records it.
fn finding(r: &Reason) -> Finding {
    Finding {
        gate: r.gate.to_string(),
        metric: r.metric.clone(),
        effect: r.test.as_ref().map(|t| t.effect),
        p_value: r.test.as_ref().map(|t| t.p_value),
        median_ratio: r.test.as_ref().and_then(|t| t.median_ratio),
        n_treatment: r.test.as_ref().map(|t| t.n_treatment as u64),
        n_control: r.test.as_ref().map(|t| t.n_control as u64),
        hosts: r.hosts.iter().take(NAMED_HOSTS as usize).cloned().collect(),
        message: r.message.clone(),
    }
}

fn named(hosts: &[String]) -> String {
    match hosts {
        [one] => format!("host {one}"),
        _ => format!("hosts {}", hosts.join(", ")),
    }
}

fn level_text(level: Option<u32>) -> String {
    level.map_or("none".into(), |l| l.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_grow_and_a_small_fleet_skips_empty_ones() {
        let plan = WavePlan::parse("1,5,25,100").unwrap();
        let targets = |canary, hosts| {
            plan_waves(&plan, canary, hosts)
                .iter()
                .map(|w| w.target)
                .collect::<Vec<_>>()
        };
        assert_eq!(targets(None, 1000), vec![10, 50, 250, 1000]);
        assert_eq!(targets(None, 3), vec![1, 3]);
        assert_eq!(targets(Some(10), 1000), vec![10, 50, 250, 1000]);
        assert_eq!(targets(Some(20), 1000), vec![20, 50, 250, 1000]);
        assert_eq!(targets(Some(5), 3), vec![3]);
        assert!(targets(None, 0).is_empty());
        let waves = plan_waves(&plan, None, 3);
        assert_eq!(waves.iter().map(|w| w.wave).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn hard_gates_name_hosts_and_transition_failures_have_a_limit() {
        let gates = GateConfig::default();
        let mut facts = HardFacts {
            treated: 100,
            failed: vec!["h1".into()],
            failed_count: 1,
            ..HardFacts::default()
        };
        assert!(hard_findings(&facts, &gates).is_empty(), "1% is under 2%");
        facts.failed_count = 3;
        let found = hard_findings(&facts, &gates);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].gate, "transition-failures");
        assert!(
            found[0].message.contains("3 of 100"),
            "{}",
            found[0].message
        );
        facts.failed_count = 0;
        facts.kernel_errors = vec!["web1".into()];
        let found = hard_findings(&facts, &gates);
        assert_eq!(found[0].gate, "kernel-error");
        assert!(found[0].message.contains("host web1"));
    }

    #[test]
    fn each_wave_samples_its_own_hosts_the_next_ones_and_the_ones_after() {
        let plan = WavePlan::parse("1,5,25,100").unwrap();
        let waves = plan_waves(&plan, None, 1_000_000);
        let k = 1000;
        assert_eq!(
            sampled_ranks(&waves, 0, k),
            [(0, k), (10_000, k), (50_000, k)]
        );
        // Wave 2's treated hosts were wave 1's control: their baseline exists.
        assert_eq!(
            sampled_ranks(&waves, 1, k),
            [(10_000, k), (50_000, k), (250_000, k)]
        );
        // The last wave has no control after it.
        assert_eq!(sampled_ranks(&waves, 3, k), [(250_000, k), (1_000_000, k)]);
    }

    #[test]
    fn patching_samples_are_a_window_of_their_own() {
        let m = |v: f64| BTreeMap::from([("tcp_retransmits".to_string(), v)]);
        let samples = vec![
            HostSamples {
                host: "t".into(),
                treated: true,
                samples: vec![(true, m(9.0)), (false, m(2.0)), (false, m(4.0))],
                baseline: vec![(false, m(1.0)), (false, m(3.0))],
            },
            HostSamples {
                host: "c".into(),
                treated: false,
                samples: vec![(false, m(1.0))],
                baseline: vec![],
            },
            HostSamples {
                host: "silent".into(),
                treated: false,
                samples: vec![],
                baseline: vec![],
            },
        ];
        let w = windows_of(&samples);
        assert_eq!(w.len(), 4);
        assert_eq!(
            (w[0].phase, w[0].metrics["tcp_retransmits"]),
            (Phase::Patching, 9.0)
        );
        assert_eq!(
            (w[1].phase, w[1].metrics["tcp_retransmits"]),
            (Phase::Steady, 3.0)
        );
        assert_eq!((w[2].group, w[2].phase), (Group::Control, Phase::Patching));
        assert_eq!((w[3].group, w[3].phase), (Group::Control, Phase::Steady));
        assert_eq!(w[3].metrics["tcp_retransmits"], 1.0);
    }
}
