//! `graft bench rollouts`: staged rollouts end to end through a real server, seeded runs.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::BenchRolloutsArgs;

/// What the benchmark measured.
#[derive(Debug, serde::Serialize)]
struct RolloutBench {
    runs: u64,
    hosts: u64,
    interval_s: f64,
    bake_s: f64,
    waves: String,
    regression: std::collections::BTreeMap<String, f64>,
    database: String,
    /// Runs with the regression halted within their first wave, of `runs`.
    detected_in_first_wave: u64,
    detection_rate: f64,
    /// Where each regressed run that was not halted in wave 1 ended: (seed, state, wave).
    missed: Vec<(u64, String, u32)>,
    /// Clean runs halted in any wave, of `runs`.
    clean_halted: u64,
    false_halt_rate: f64,
    /// Each clean halt: (seed, wave, reason).
    clean_halts: Vec<(u64, u32, String)>,
    /// Gate decisions the server logged over all runs.
    decisions: u64,
    /// Median seconds of a regressed run, and of a clean one.
    regressed_run_s: f64,
    clean_run_s: f64,
    errors: u64,
    seconds: f64,
}

pub fn run(args: &BenchRolloutsArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    graft_rollout::WavePlan::parse(&args.waves).context("--waves")?;
    let regression = crate::bench_gates::parse_regression(&args.regression)?;
    if !(args.interval.is_finite() && args.interval > 0.0 && args.interval < 3600.0) {
        anyhow::bail!("--interval {}: seconds above 0", args.interval);
    }
    let interval = Duration::from_secs_f64(args.interval);
    if !(0.0..=1.0).contains(&args.report_share) {
        anyhow::bail!(
            "--report-share {}: a probability from 0 to 1",
            args.report_share
        );
    }
    let scratch = tempfile::tempdir().context("making a directory for the server")?;
    let exe = std::env::current_exe().context("finding the graft binary")?;
    let own = graft_sim::OwnServer::start(
        &exe,
        scratch.path(),
        args.database.as_deref(),
        Some(250),
        Some(args.gate_hosts),
    )?;
    let target = own.target().clone();
    let quiet = |_: &str| {};
    let config = graft_sim::SimConfig {
        hosts: args.hosts,
        interval,
        duration: interval,
        workers: args.workers,
        kernels: 1,
    };
    eprintln!("graft bench rollouts: enrolling {} hosts", args.hosts);
    let (mut fleet, _) = graft_sim::enroll_fleet(&config, &target, &quiet)?;
    let sim = |seed: u64, regression| graft_sim::RolloutSim {
        waves: args.waves.clone(),
        bake: args.bake,
        seed,
        regression,
        crash_rate: 0.0,
        transition_failure_rate: 0.0,
        stuck_rate: 0.0,
        report_share: args.report_share,
        timeout: Duration::from_secs(600),
        noise: 1.0,
    };
    graft_sim::check_trouble(&sim(0, Default::default()))?;
    let mut bench = RolloutBench {
        runs: args.runs,
        hosts: args.hosts,
        interval_s: args.interval,
        bake_s: args.bake.as_secs_f64(),
        waves: args.waves.clone(),
        regression: regression.clone(),
        database: target.database.clone(),
        detected_in_first_wave: 0,
        detection_rate: 0.0,
        missed: Vec::new(),
        clean_halted: 0,
        false_halt_rate: 0.0,
        clean_halts: Vec::new(),
        decisions: 0,
        regressed_run_s: 0.0,
        clean_run_s: 0.0,
        errors: 0,
        seconds: 0.0,
    };
    let (mut regressed_s, mut clean_s) = (Vec::new(), Vec::new());
    for k in 0..args.runs {
        let seed = args.seed.wrapping_add(k);
        // The regressed level: halted within its first wave?
        let r = fleet.rollout(&sim(seed, regression.clone()), &quiet)?;
        let detected = r.state == "halted" && r.wave == 1;
        if detected {
            bench.detected_in_first_wave += 1;
        } else {
            bench.missed.push((seed, r.state.clone(), r.wave));
            // Why the first wave passed: its decision's notes (too few hosts, levels compared).
            if let Some(first) = r.decisions.iter().find(|d| d.wave == 1) {
                let notes: Vec<&str> = first.notes.iter().map(|n| n.message.as_str()).collect();
                eprintln!(
                    "graft bench rollouts: seed {seed}: the first wave {}: {}",
                    first.decision,
                    notes.join("; ")
                );
            }
        }
        regressed_s.push(r.seconds);
        bench.decisions += r.decisions.len() as u64;
        bench.errors += r.errors;
        // The clean level: halted anywhere?
        let c = fleet.rollout(&sim(seed ^ 0x5eed_0000, Default::default()), &quiet)?;
        if c.state != "completed" {
            bench.clean_halted += 1;
            bench.clean_halts.push((
                seed,
                c.wave,
                c.reason.clone().unwrap_or_else(|| c.state.clone()),
            ));
        }
        clean_s.push(c.seconds);
        bench.decisions += c.decisions.len() as u64;
        bench.errors += c.errors;
        eprintln!(
            "graft bench rollouts: run {}/{} (seed {seed}): regressed {} in wave {} ({:.1} s); clean {} ({:.1} s)",
            k + 1,
            args.runs,
            r.state,
            r.wave,
            r.seconds,
            c.state,
            c.seconds
        );
    }
    drop(fleet);
    drop(own);
    let runs = args.runs.max(1) as f64;
    bench.detection_rate = bench.detected_in_first_wave as f64 / runs;
    bench.false_halt_rate = bench.clean_halted as f64 / runs;
    bench.regressed_run_s = median(&mut regressed_s);
    bench.clean_run_s = median(&mut clean_s);
    bench.seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&bench)?);
    } else {
        println!(
            "{} hosts, waves {}, bake {:.1} s, interval {:.2} s, {}: a {} regression halted within the first wave in {} of {} runs ({:.1}%); clean rollouts were halted in {} of {} ({:.1}%); {} gate decisions logged; median run {:.1} s regressed, {:.1} s clean; {} errors; {:.0} s in all",
            bench.hosts,
            bench.waves,
            bench.bake_s,
            bench.interval_s,
            bench.database,
            args.regression,
            bench.detected_in_first_wave,
            bench.runs,
            100.0 * bench.detection_rate,
            bench.clean_halted,
            bench.runs,
            100.0 * bench.false_halt_rate,
            bench.decisions,
            bench.regressed_run_s,
            bench.clean_run_s,
            bench.errors,
            bench.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
