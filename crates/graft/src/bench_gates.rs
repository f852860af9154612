//! `graft bench gates`: the rollout gates' detection and false-halt rates on a seeded model.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use graft_rollout::model::{draw, WaveModel, METRICS};
use graft_rollout::{evaluate, Decision, GateConfig, WavePlan};

use crate::cli::BenchGatesArgs;

/// What the benchmark measured.
#[derive(Debug, serde::Serialize)]
struct GateBench {
    runs: u64,
    hosts: u64,
    waves: Vec<u8>,
    regression: BTreeMap<String, f64>,
    /// Runs with the regression halted in their first wave, of `runs`.
    detected_in_first_wave: u64,
    detection_rate: f64,
    /// Clean runs halted in any wave, of `runs`.
    clean_halted: u64,
    false_halt_rate: f64,
    /// The wave each clean halt happened in (1-based), and its first reason.
    clean_halts: Vec<(usize, String)>,
    /// Clean waves in which the patching spike was seen and reported without halting.
    spikes_reported: u64,
    gates: GateConfig,
    seconds: f64,
}

pub fn run(args: &BenchGatesArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let plan = WavePlan::parse(&args.waves).context("--waves")?;
    let regression = parse_regression(&args.regression)?;
    let gates = GateConfig::default();
    let mut detected = 0;
    let mut clean_halts = Vec::new();
    let mut spikes = 0;
    for run in 0..args.runs {
        let seed = args.seed.wrapping_add(run);
        // The regressed rollout: only its first wave matters.
        let first = wave(&plan, 1, args, regression.clone());
        if evaluate(&draw(&first, seed), &gates).halts() {
            detected += 1;
        }
        // The clean rollout, wave by wave until one halts.
        for k in 1..=plan.waves() {
            let model = wave(&plan, k, args, BTreeMap::new());
            let decision = evaluate(&draw(&model, seed ^ 0x5eed_0000 ^ k as u64), &gates);
            match &decision {
                Decision::Halt { reasons, .. } => {
                    let why = reasons
                        .first()
                        .map(|r| r.message.clone())
                        .unwrap_or_default();
                    clean_halts.push((k, why));
                    break;
                }
                Decision::Continue { notes } => {
                    if notes.iter().any(|n| n.gate == "spike") {
                        spikes += 1;
                    }
                }
            }
        }
    }
    let runs = args.runs.max(1);
    let report = GateBench {
        runs: args.runs,
        hosts: args.hosts,
        waves: plan.percents().to_vec(),
        regression,
        detected_in_first_wave: detected,
        detection_rate: detected as f64 / runs as f64,
        clean_halted: clean_halts.len() as u64,
        false_halt_rate: clean_halts.len() as f64 / runs as f64,
        clean_halts,
        spikes_reported: spikes,
        gates,
        seconds: started.elapsed().as_secs_f64(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} seeded runs, {} hosts, waves {}:\n  regression {:?}: halted in the first wave in {} runs ({:.1}%)\n  clean: halted in {} runs ({:.1}%); the patching spike reported without halting in {} waves\n  ({:.1} s)",
            report.runs,
            report.hosts,
            plan,
            report.regression,
            report.detected_in_first_wave,
            report.detection_rate * 100.0,
            report.clean_halted,
            report.false_halt_rate * 100.0,
            report.spikes_reported,
            report.seconds
        );
        for (k, why) in &report.clean_halts {
            println!("  clean halt in wave {k}: {why}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Wave `k` of the plan: the hosts it newly treats, against a control of those not treated
/// yet (`control_ratio` per treated host, at most all of them).
fn wave(
    plan: &WavePlan,
    k: usize,
    args: &BenchGatesArgs,
    regression: BTreeMap<String, f64>,
) -> WaveModel {
    let before = plan.treated_after(k - 1, args.hosts);
    let after = plan.treated_after(k, args.hosts);
    let treated = (after - before) as usize;
    let untreated = args.hosts - after;
    WaveModel {
        treated,
        control: (treated as u64 * args.control_ratio).min(untreated) as usize,
        regression,
        crash_rate: 0.0,
        transition_failure_rate: 0.0,
    }
}

pub(crate) fn parse_regression(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (name, factor) = part
            .split_once('=')
            .with_context(|| format!("--regression {part:?}: write METRIC=FACTOR"))?;
        let name = name.trim();
        if !METRICS.iter().any(|m| m.name == name) {
            let known: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
            bail!(
                "--regression: no metric {name:?}; the model has {}",
                known.join(", ")
            );
        }
        let factor: f64 = factor
            .trim()
            .parse()
            .ok()
            .filter(|f: &f64| f.is_finite() && *f > 0.0)
            .with_context(|| format!("--regression {part:?}: FACTOR is a positive number"))?;
        out.insert(name.to_string(), factor);
    }
    Ok(out)
}
