//! A seeded model of a fleet's kernel metrics, to measure what the gates decide: how often a
//! real regression halts a rollout in its first wave, and how often a clean one is halted.
//!
//! The model is deliberately unkind to the gates: hosts differ from each other far more than a
//! host differs from itself (each host's level of every metric is drawn from a log-normal
//! spread, then every window adds its own log-normal noise), and every treated host shows the
//! patching spike (TCP retransmits and I/O latency up for the seconds of the transition, as
//! Meta saw) in its patching window.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::gate::{Group, HostWindow, Phase};

/// A metric of the model: the median host's level, the spread between hosts and the spread
/// of one host's windows (both as standard deviations of the logarithm).
#[derive(Debug, Clone, Copy)]
pub struct MetricModel {
    /// Its name.
    pub name: &'static str,
    /// The median host's value.
    pub median: f64,
    /// Spread between hosts (log scale).
    pub between_hosts: f64,
    /// Spread of one host's windows (log scale).
    pub within_host: f64,
    /// Factor on treated hosts during the patching window.
    pub patching_spike: f64,
}

/// The metrics agents collect, as the model draws them.
pub const METRICS: &[MetricModel] = &[
    MetricModel {
        name: "tcp_retransmits",
        median: 2.0,
        between_hosts: 0.6,
        within_host: 0.25,
        patching_spike: 3.0,
    },
    MetricModel {
        name: "io_latency_ms",
        median: 5.0,
        between_hosts: 0.5,
        within_host: 0.2,
        patching_spike: 2.0,
    },
    MetricModel {
        name: "softirq_pct",
        median: 3.0,
        between_hosts: 0.4,
        within_host: 0.15,
        patching_spike: 1.2,
    },
];

/// One wave to draw.
#[derive(Debug, Clone)]
pub struct WaveModel {
    /// Treated hosts.
    pub treated: usize,
    /// Control hosts.
    pub control: usize,
    /// Factors on treated hosts' steady-state metrics: the injected regression.
    pub regression: BTreeMap<String, f64>,
    /// The chance that a treated host crashes.
    pub crash_rate: f64,
    /// The chance that a treated host's transition fails.
    pub transition_failure_rate: f64,
}

/// Draws one wave's windows: for each host, a patching window and a steady one, each with the
/// host's baseline (one window at its own level, before the wave).
pub fn draw(wave: &WaveModel, seed: u64) -> Vec<HostWindow> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut windows = Vec::with_capacity(2 * (wave.treated + wave.control));
    let groups = std::iter::repeat_n(Group::Treatment, wave.treated)
        .chain(std::iter::repeat_n(Group::Control, wave.control));
    for (i, group) in groups.enumerate() {
        let levels: Vec<f64> = METRICS
            .iter()
            .map(|m| m.median * (m.between_hosts * normal(&mut rng)).exp())
            .collect();
        let treated = group == Group::Treatment;
        let crashed = treated && rng.gen_bool(wave.crash_rate.clamp(0.0, 1.0));
        let transition_failed =
            treated && rng.gen_bool(wave.transition_failure_rate.clamp(0.0, 1.0));
        let baseline: BTreeMap<String, f64> = METRICS
            .iter()
            .zip(&levels)
            .map(|(m, level)| {
                let value = level * (m.within_host * normal(&mut rng)).exp();
                (m.name.to_string(), value)
            })
            .collect();
        for phase in [Phase::Patching, Phase::Steady] {
            let metrics = METRICS
                .iter()
                .zip(&levels)
                .map(|(m, level)| {
                    let mut value = level * (m.within_host * normal(&mut rng)).exp();
                    if treated && phase == Phase::Patching {
                        value *= m.patching_spike;
                    }
                    if treated && phase == Phase::Steady {
                        value *= wave.regression.get(m.name).copied().unwrap_or(1.0);
                    }
                    (m.name.to_string(), value)
                })
                .collect();
            windows.push(HostWindow {
                host: format!("host-{i}"),
                group,
                phase,
                crashed,
                lost: false,
                kernel_errors: 0,
                transition_failed,
                metrics,
                baseline: Some(baseline.clone()),
            });
        }
    }
    windows
}

/// One host of a simulated fleet, interval by interval: its own level of every metric (hosts
/// differ), drawn again with the within-host noise at each interval.
#[derive(Debug, Clone)]
pub struct HostModel {
    levels: Vec<f64>,
    noise: f64,
}

impl HostModel {
    /// A host drawn from `rng`.
    pub fn draw(rng: &mut ChaCha8Rng) -> Self {
        Self::draw_with_noise(rng, 1.0)
    }

    /// A host drawn from `rng` with the model's spreads scaled by `noise` (0: every host and
    /// interval at the medians).
    pub fn draw_with_noise(rng: &mut ChaCha8Rng, noise: f64) -> Self {
        Self {
            levels: METRICS
                .iter()
                .map(|m| m.median * (noise * m.between_hosts * normal(rng)).exp())
                .collect(),
            noise,
        }
    }

    /// One interval's metrics: with the spike of a patch going live when `patching`, and
    /// `regression`'s factors when the host runs the level under test (`None`: it does not).
    pub fn interval(
        &self,
        rng: &mut ChaCha8Rng,
        patching: bool,
        regression: Option<&BTreeMap<String, f64>>,
    ) -> BTreeMap<String, f64> {
        METRICS
            .iter()
            .zip(&self.levels)
            .map(|(m, level)| {
                let mut value = level * (self.noise * m.within_host * normal(rng)).exp();
                if patching {
                    value *= m.patching_spike;
                } else if let Some(factors) = regression {
                    value *= factors.get(m.name).copied().unwrap_or(1.0);
                }
                (m.name.to_string(), value)
            })
            .collect()
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::{evaluate, GateConfig};

    fn clean(treated: usize) -> WaveModel {
        WaveModel {
            treated,
            control: 2 * treated,
            regression: BTreeMap::new(),
            crash_rate: 0.0,
            transition_failure_rate: 0.0,
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_wave() {
        assert_eq!(draw(&clean(10), 7), draw(&clean(10), 7));
        assert_ne!(draw(&clean(10), 7), draw(&clean(10), 8));
    }

    #[test]
    fn every_treated_host_spikes_while_patching_and_the_gates_say_so_without_halting() {
        let decision = evaluate(&draw(&clean(100), 1), &GateConfig::default());
        let crate::gate::Decision::Continue { notes } = &decision else {
            panic!("a clean wave halted: {decision:?}")
        };
        assert!(
            notes
                .iter()
                .any(|n| n.gate == "spike" && n.metric.as_deref() == Some("tcp_retransmits")),
            "{notes:?}"
        );
    }

    /// Of 200 seeded first waves (20 treated hosts, 1% of two thousand, and 500 control), how
    /// many halt.
    fn halts_in_200(regression: Option<f64>) -> usize {
        let mut wave = WaveModel {
            control: 500,
            ..clean(20)
        };
        if let Some(factor) = regression {
            wave.regression.insert("tcp_retransmits".into(), factor);
        }
        (0..200)
            .filter(|&seed| evaluate(&draw(&wave, seed), &GateConfig::default()).halts())
            .count()
    }

    #[test]
    fn a_doubled_retransmit_rate_halts_nearly_every_first_wave_of_twenty_and_a_clean_one_almost_never(
    ) {
        // The model's hosts differ by a factor of 1.8 (one standard deviation) from each
        // other; each host's own baseline takes that out.
        assert!(
            halts_in_200(Some(2.0)) >= 198,
            "{}",
            halts_in_200(Some(2.0))
        );
        assert!(halts_in_200(None) <= 2, "{}", halts_in_200(None));
    }

    #[test]
    fn a_doubled_retransmit_rate_halts_a_wave_of_a_hundred() {
        let mut wave = clean(100);
        wave.regression.insert("tcp_retransmits".into(), 2.0);
        assert!(evaluate(&draw(&wave, 1), &GateConfig::default()).halts());
    }
}
