//! `graft fleet` (operators) and `graft agent` (hosts): thin over graft-client and graft-agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use graft_client::Client;
use graft_protocol::api::{Assign, HostFilter, NewToken};

/// Where the fleet's server is, and who is asking.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The server: https://HOST:PORT (or http:// to a loopback address). `simulate` starts
    /// its own when none is given.
    #[arg(long, env = "GRAFT_SERVER")]
    pub server: Option<String>,
    /// An operator token (viewer, operator or admin).
    #[arg(
        long,
        env = "GRAFT_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the token (`DIR/admin.token` from `graft server init`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The fleet's CA certificate for HTTPS (`DIR/ca.pem` from `graft server init`).
    #[arg(long, env = "GRAFT_CA")]
    pub ca: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: FleetCommand,
}

/// Operators' commands.
#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Hosts, with filters.
    Hosts {
        /// Only hosts with this label (key=value).
        #[arg(long)]
        label: Option<String>,
        /// Only hosts on this kernel (a release or a stream).
        #[arg(long)]
        kernel: Option<String>,
        /// Only hosts reporting this level.
        #[arg(long)]
        level: Option<u32>,
        /// healthy or unhealthy.
        #[arg(long)]
        health: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// The kernels the fleet runs: the targets to build for.
    Kernels,
    /// Streams (one per kernel build) and their latest levels; with STREAM, its levels.
    Streams {
        /// One stream.
        stream: Option<String>,
    },
    /// Publish a livepatch module as the next level of its kernel's stream, signed here.
    ///
    /// The module's manifest (MODULE.json beside it) names the kernel, hence the stream. The
    /// level is the stream's latest plus one unless given; each level must carry every patch
    /// of the one before (atomic replace) unless --allow-dropped-patches.
    #[command(
        after_help = "Example: graft fleet --server https://127.0.0.1:8443 --ca ca.pem \
--token-file admin.token publish fix.ko --signing-key publisher.key"
    )]
    Publish {
        /// The module (OUT.ko from `graft build`).
        module: PathBuf,
        /// The publisher's private key (publisher.key from `graft server init`, kept off the
        /// server).
        #[arg(long)]
        signing_key: PathBuf,
        /// The level (default: the stream's latest plus one).
        #[arg(long)]
        level: Option<u32>,
        /// Days until agents refuse the signed metadata.
        #[arg(long, default_value_t = 30)]
        expires_days: u64,
        /// Allow a level that drops a patch of the level before it.
        #[arg(long)]
        allow_dropped_patches: bool,
        /// A health probe (repeatable): NAME=COMMAND, a shell command printing one number,
        /// higher being worse. The hosts a rollout of this level samples run it at every
        /// check-in, reported and gated as `probe:NAME`. Signed with the level: agents run
        /// only what the publisher signed.
        #[arg(long = "probe", value_name = "NAME=COMMAND")]
        probes: Vec<String>,
    },
    /// Assign a level of a stream to its hosts (all, or those with a label).
    Assign {
        /// The stream.
        #[arg(long)]
        stream: String,
        /// The level, or `none` to remove the live patch.
        #[arg(long)]
        level: String,
        /// Only hosts with this label (key=value).
        #[arg(long)]
        selector: Option<String>,
    },
    /// Make a token: an operator's (viewer, operator, admin) or a bootstrap token hosts
    /// enroll with (enroll). Shown once.
    Token {
        /// Who it is for.
        #[arg(long)]
        name: String,
        /// viewer, operator, admin or enroll.
        #[arg(long)]
        role: String,
    },
    /// Every outcome a host reported (apply, revert, refusal), oldest first.
    Outcomes {
        /// The host's id.
        host: String,
    },
    /// Revoke a host's credential.
    Revoke {
        /// The host's id.
        host: String,
    },
    /// The audit log of operators' actions.
    Audit,
    /// Staged rollouts with health gates: start, list, status, pause, resume, abort,
    /// rollback.
    #[command(subcommand)]
    Rollout(crate::rollout_cmd::RolloutCommand),
    /// Measure the control plane: N simulated hosts enroll and check in with the real
    /// protocol (ETag polls, as agents do), each once per interval at its own phase.
    ///
    /// Without --server it starts its own `graft server run` on loopback (SQLite in a
    /// temporary directory, or --database). A benchmark: it reports check-ins per second
    /// against the rate asked for, latency percentiles, errors, the server's memory and the
    /// database's size; it asserts nothing.
    ///
    /// With --rollout it runs a staged rollout instead, through the server's own driver, to
    /// hosts on one kernel build that apply the level, report outcomes and health samples
    /// (metrics from a seeded model of a fleet, the patching spike included), with the
    /// trouble asked for; it ends when the rollout completes or halts, and reports how.
    #[command(after_help = "Examples:
  graft fleet simulate --hosts 100000 --interval 60 --duration 60 --json
  graft fleet simulate --rollout --hosts 10000 --interval 2 --waves 1,5,25,100 --bake 6s \\
      --seed 7 --regression tcp_retransmits=2.0 --json")]
    Simulate {
        /// Simulated hosts.
        #[arg(long, default_value_t = 10_000)]
        hosts: u64,
        /// Seconds between a host's check-ins.
        #[arg(long, default_value_t = 60.0)]
        interval: f64,
        /// Seconds to measure the steady state, after enrollment and a first round of one
        /// interval in which every host checks in once (reported apart).
        #[arg(long, default_value_t = 60.0)]
        duration: f64,
        /// Worker threads, one connection each, each carrying its share of the hosts in turn
        /// [default: 32; 256 with --rollout, whose hosts' reports go through as many reporter
        /// threads: the server commits the reports in flight together, so a wave's applies
        /// are stored faster the more of them wait at once].
        #[arg(long)]
        workers: Option<usize>,
        /// Distinct kernel builds the hosts run.
        #[arg(long, default_value_t = 4)]
        kernels: u32,
        /// With no --server: the PostgreSQL database its own server uses.
        #[arg(long)]
        database: Option<String>,
        /// Run a staged rollout of a level to the simulated hosts (its own server only).
        #[arg(long)]
        rollout: bool,
        /// With --rollout: cumulative percentages of the hosts, ending at 100.
        #[arg(long, default_value = "1,5,25,100", requires = "rollout")]
        waves: String,
        /// With --rollout: bake per wave.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, requires = "rollout")]
        bake: Duration,
        /// With --rollout: the seed of every draw.
        #[arg(long, default_value_t = 1, requires = "rollout")]
        seed: u64,
        /// With --rollout: METRIC=FACTOR on hosts running the new level (tcp_retransmits,
        /// io_latency_ms, softirq_pct); repeatable.
        #[arg(
            long = "regression",
            value_name = "METRIC=FACTOR",
            requires = "rollout"
        )]
        regressions: Vec<String>,
        /// With --rollout: chance that a host crashes after applying.
        #[arg(long, default_value_t = 0.0, requires = "rollout")]
        crash_rate: f64,
        /// With --rollout: chance that a host's transition fails.
        #[arg(long, default_value_t = 0.0, requires = "rollout")]
        transition_failure_rate: f64,
        /// With --rollout: chance that a host stops reporting after applying.
        #[arg(long, default_value_t = 0.0, requires = "rollout")]
        stuck_rate: f64,
        /// With --rollout: share of the hosts the server did not ask for health that report
        /// each interval anyway, standing for agents' reports of changes and hourly ones
        /// (default: about 4,000 per interval; 0: only the hosts asked, as at rest).
        #[arg(long, requires = "rollout")]
        report_share: Option<f64>,
        /// With --rollout: the model's spreads between hosts and intervals, scaled (0: none,
        /// so that only the injected trouble differs).
        #[arg(long, default_value_t = 1.0, requires = "rollout")]
        noise: f64,
        /// With --rollout: give up after this long.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, requires = "rollout")]
        rollout_timeout: Duration,
        /// With --rollout and the simulation's own server: hosts per side its gates read and
        /// ask for health (`server run --gate-hosts`; default 1000).
        #[arg(long, requires = "rollout")]
        gate_hosts: Option<u64>,
    },
}

/// `graft agent`.
#[derive(Debug, Args)]
#[command(
    after_help = "Example: graft agent --server https://fleet:8443 --ca /etc/graft/ca.pem \
--enroll-token $(cat enroll.token) --state-dir /var/lib/graft-agent --label ring=canary"
)]
pub struct AgentArgs {
    /// The server: https://HOST:PORT (or http:// to a loopback address).
    #[arg(long, env = "GRAFT_SERVER")]
    pub server: String,
    /// The fleet's CA certificate for HTTPS.
    #[arg(long, env = "GRAFT_CA")]
    pub ca: Option<PathBuf>,
    /// A bootstrap token, needed only for the first check-in (enrollment).
    #[arg(long, env = "GRAFT_ENROLL_TOKEN", hide_env_values = true)]
    pub enroll_token: Option<String>,
    /// Where the agent keeps its identity, pinned keys, last desired state and modules.
    #[arg(long, default_value = "/var/lib/graft-agent")]
    pub state_dir: PathBuf,
    /// graft's host state directory (the journal of applies and reverts).
    #[arg(long, default_value = "/var/lib/graft")]
    pub graft_state: PathBuf,
    /// A label to enroll with (key=value), repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// The host's name (default: the kernel's hostname).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Seconds between check-ins.
    #[arg(long, default_value_t = 3600)]
    pub interval: u64,
    /// A publisher public key (hex, or a file holding it, e.g. publisher.pub) to pin at
    /// enrollment instead of the keys the server names; repeatable.
    #[arg(long = "pin-key")]
    pub pin_keys: Vec<String>,
    /// Seconds a transition may take before it is reversed.
    #[arg(long, default_value_t = 60)]
    pub transition_timeout: u64,
    /// Check in once and exit (status 0 when the check-in succeeded).
    #[arg(long)]
    pub once: bool,
    /// Record that the agent stops cleanly in this boot, and exit (the systemd unit's
    /// ExecStop): a later boot without it is reported as an unclean reboot.
    #[arg(long)]
    pub stopping: bool,
    /// Print each check-in as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs an operator's command.
pub fn run(args: &FleetArgs) -> anyhow::Result<ExitCode> {
    if let FleetCommand::Simulate { .. } = &args.command {
        return simulate(args);
    }
    let server = args
        .server
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("no server: pass --server URL or set GRAFT_SERVER"))?;
    let token = token_of(args)?;
    let client = Client::new(server, args.ca.as_deref())?.with_secret(token);
    match &args.command {
        FleetCommand::Hosts {
            label,
            kernel,
            level,
            health,
            limit,
        } => {
            let hosts = client.hosts(&HostFilter {
                label: label.clone(),
                kernel: kernel.clone(),
                level: *level,
                health: health.clone(),
                limit: *limit,
            })?;
            print(args.json, &hosts, || {
                let mut out = format!(
                    "{:<34} {:<20} {:<30} {:>7} {:>5} {:<9}\n",
                    "ID", "HOST", "KERNEL", "DESIRED", "LEVEL", "HEALTH"
                );
                for h in &hosts {
                    out += &format!(
                        "{:<34} {:<20} {:<30} {:>7} {:>5} {:<9}{}\n",
                        h.id,
                        h.hostname,
                        h.kernel.release,
                        level_text(h.desired),
                        level_text(h.level),
                        h.health,
                        if h.revoked { " (revoked)" } else { "" }
                    );
                }
                out
            })
        }
        FleetCommand::Kernels => {
            let kernels = client.kernels()?;
            print(args.json, &kernels, || {
                let mut out = format!("{:<44} {:>8} {:>7}\n", "STREAM", "HOSTS", "LATEST");
                for k in &kernels {
                    out += &format!(
                        "{:<44} {:>8} {:>7}\n",
                        k.stream,
                        k.hosts,
                        level_text(k.latest)
                    );
                }
                out
            })
        }
        FleetCommand::Streams { stream: None } => {
            let streams = client.streams()?;
            print(args.json, &streams, || {
                let mut out = format!("{:<44} {:>8} {:>7}\n", "STREAM", "HOSTS", "LATEST");
                for s in &streams {
                    out += &format!(
                        "{:<44} {:>8} {:>7}\n",
                        s.stream,
                        s.hosts,
                        level_text(s.latest)
                    );
                }
                out
            })
        }
        FleetCommand::Streams { stream: Some(name) } => {
            let stream = client.stream(name)?;
            print(args.json, &stream, || {
                let mut out = format!("{} ({} hosts)\n", stream.stream, stream.hosts);
                for l in &stream.levels {
                    out += &format!(
                        "  level {:>3}  version {:<12} {}  {} patches  module {}\n",
                        l.level,
                        l.version,
                        l.module_name,
                        l.patches.len(),
                        &l.module_sha256[..l.module_sha256.len().min(12)]
                    );
                }
                out
            })
        }
        FleetCommand::Publish {
            module,
            signing_key,
            level,
            expires_days,
            allow_dropped_patches,
            probes,
        } => publish(
            &client,
            args.json,
            module,
            signing_key,
            &LevelOptions {
                level: *level,
                expires_days: *expires_days,
                allow_dropped_patches: *allow_dropped_patches,
                probes: parse_probes(probes)?,
            },
        ),
        FleetCommand::Assign {
            stream,
            level,
            selector,
        } => {
            let level = match level.as_str() {
                "none" => None,
                n => Some(
                    n.parse::<u32>()
                        .with_context(|| format!("--level {n}: a level number or `none`"))?,
                ),
            };
            let assigned = client.assign(&Assign {
                stream: stream.clone(),
                level,
                selector: selector.clone(),
            })?;
            print(args.json, &assigned, || {
                format!(
                    "{} hosts of {stream} now want level {}\n",
                    assigned.hosts,
                    level_text(level)
                )
            })
        }
        FleetCommand::Token { name, role } => {
            let made = client.new_token(&NewToken {
                name: name.clone(),
                role: role.clone(),
            })?;
            print(args.json, &made, || format!("{}\n", made.token))
        }
        FleetCommand::Outcomes { host } => {
            let outcomes = client.outcomes(host)?;
            print(args.json, &outcomes, || {
                outcomes
                    .iter()
                    .map(|o| {
                        format!(
                            "{} {:<10} level {:<5} {}\n",
                            o.at_ms,
                            o.result,
                            o.level.map_or("none".into(), |l| l.to_string()),
                            o.message.as_deref().unwrap_or("")
                        )
                    })
                    .collect()
            })
        }
        FleetCommand::Revoke { host } => {
            let view = client.revoke(host)?;
            print(args.json, &view, || {
                format!("revoked {} ({})\n", view.id, view.hostname)
            })
        }
        FleetCommand::Simulate { .. } => simulate(args),
        FleetCommand::Rollout(command) => crate::rollout_cmd::run(&client, args.json, command),
        FleetCommand::Audit => {
            let entries = client.audit()?;
            print(args.json, &entries, || {
                entries
                    .iter()
                    .map(|e| format!("{} {:<16} {:<60} {}\n", e.at_ms, e.who, e.what, e.result))
                    .collect()
            })
        }
    }
}

/// The operator's token: --token (or GRAFT_TOKEN), or the file --token-file names.
fn token_of(args: &FleetArgs) -> anyhow::Result<String> {
    match (&args.token, &args.token_file) {
        (Some(t), _) => Ok(t.clone()),
        (None, Some(f)) => Ok(std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?
            .trim()
            .to_string()),
        (None, None) => anyhow::bail!("no token: pass --token, --token-file or GRAFT_TOKEN"),
    }
}

/// `graft fleet simulate`.
fn simulate(args: &FleetArgs) -> anyhow::Result<ExitCode> {
    let FleetCommand::Simulate {
        hosts,
        interval,
        duration,
        workers,
        kernels,
        database,
        rollout,
        waves,
        bake,
        seed,
        regressions,
        crash_rate,
        transition_failure_rate,
        stuck_rate,
        report_share,
        noise,
        rollout_timeout,
        gate_hosts,
    } = &args.command
    else {
        anyhow::bail!("not a simulation");
    };
    let seconds = |what: &str, s: f64| {
        if s.is_finite() && s > 0.0 && s < 1e6 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(anyhow::anyhow!("--{what} {s}: a number of seconds above 0"))
        }
    };
    let config = graft_sim::SimConfig {
        hosts: *hosts,
        interval: seconds("interval", *interval)?,
        duration: seconds("duration", *duration)?,
        workers: workers.unwrap_or(if *rollout { 256 } else { 32 }),
        kernels: *kernels,
    };
    let rollout = if *rollout {
        graft_rollout::WavePlan::parse(waves).context("--waves")?;
        let regression = crate::bench_gates::parse_regression(&regressions.join(","))?;
        if args.server.is_some() {
            anyhow::bail!("--rollout runs against the simulation's own server (it signs a level with that server's publisher key): drop --server");
        }
        Some(graft_sim::RolloutSim {
            waves: waves.clone(),
            bake: *bake,
            seed: *seed,
            regression,
            crash_rate: *crash_rate,
            transition_failure_rate: *transition_failure_rate,
            stuck_rate: *stuck_rate,
            report_share: report_share.unwrap_or((4000.0 / *hosts as f64).min(1.0)),
            timeout: *rollout_timeout,
            noise: if noise.is_finite() && *noise >= 0.0 {
                *noise
            } else {
                anyhow::bail!("--noise {noise}: a factor of 0 or more")
            },
        })
    } else {
        None
    };
    let scratch = tempfile::tempdir().context("making a directory for the simulation's server")?;
    let own;
    let target = match &args.server {
        Some(url) => graft_sim::Target {
            url: url.clone(),
            token: token_of(args)?,
            ca: args.ca.clone(),
            pid: None,
            database_file: None,
            database_url: None,
            database: "unknown".into(),
            signing_key: None,
        },
        None => {
            let exe = std::env::current_exe().context("finding the graft binary")?;
            // A rollout's driver ticks often enough for bakes of seconds, and no more often
            // than the hosts can have moved on (each tick counts the moved hosts).
            let tick = rollout.as_ref().map(|_| {
                let twelfth = config.interval.as_millis() / 12;
                u64::try_from(twelfth).unwrap_or(u64::MAX).clamp(250, 5000)
            });
            own = graft_sim::OwnServer::start(
                &exe,
                scratch.path(),
                database.as_deref(),
                tick,
                *gate_hosts,
            )?;
            own.target().clone()
        }
    };
    let json = args.json;
    if let Some(sim) = &rollout {
        // Progress goes to stderr with `--json` too: stdout carries only the report, and a
        // million-host run is long.
        let report = graft_sim::run_rollout(&config, sim, &target, &|msg| {
            eprintln!("graft fleet simulate: {msg}");
        })?;
        let r = &report.rollout;
        print(json, &report, || {
            let mut out = format!(
                "rollout {} to {} hosts ({}, seed {}): {} in wave {} of {} after {:.0} s, {} of {} hosts moved; {} gate decisions, {} health reports, {} errors\n",
                r.id, report.hosts, report.database, report.seed, r.state, r.wave, r.waves,
                r.seconds, r.treated, r.hosts, r.decisions.len(), r.reports, r.errors
            );
            if let Some(reason) = &r.reason {
                out += &format!("  {reason}\n");
            }
            out
        })?;
        return Ok(if r.state == "completed" || r.state == "halted" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let report = graft_sim::run(&config, &target, &|msg| {
        eprintln!("graft fleet simulate: {msg}");
    })?;
    print(json, &report, || {
        format!(
            "{} hosts every {:.0} s on {}: first round (cold) {:.0} check-ins/s, p99 {:.1} ms; steady {:.0} check-ins/s of {:.0} asked ({}), p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} errors; enrollment {:.0}/s; server {} MiB, database {} MiB\n",
            report.hosts,
            report.interval_s,
            report.database,
            report.first_round.checkins_per_s,
            report.first_round.p99_ms,
            report.checkins_per_s,
            report.target_per_s,
            if report.kept_up { "kept up" } else { "fell behind" },
            report.p50_ms,
            report.p99_ms,
            report.max_ms,
            report.errors,
            report.enroll_per_s,
            report.server_rss_mib.map_or("?".into(), |m| format!("{m:.0}")),
            report.db_mib.map_or("?".into(), |m| format!("{m:.1}")),
        )
    })
}

fn publish(
    client: &Client,
    json: bool,
    module: &std::path::Path,
    signing_key: &std::path::Path,
    options: &LevelOptions,
) -> anyhow::Result<ExitCode> {
    let key_text = std::fs::read_to_string(signing_key)
        .with_context(|| format!("reading the signing key {}", signing_key.display()))?;
    let key = graft_protocol::trust::signing_key_from_hex(&key_text)
        .with_context(|| format!("{}", signing_key.display()))?;
    let view = publish_level(client, module, &key, options)?;
    let expires_days = options.expires_days;
    print(json, &view, || {
        format!(
            "published {} as level {} of {} (version {}, {} patches, expires in {expires_days} days)\n",
            view.module_name,
            view.level,
            view.stream,
            view.version,
            view.patches.len()
        )
    })
}

/// How a level is published.
#[derive(Debug, Clone)]
pub struct LevelOptions {
    /// The level (default: the stream's latest plus one).
    pub level: Option<u32>,
    /// Days until agents refuse the signed metadata.
    pub expires_days: u64,
    /// Allow a level that drops a patch of the level before it.
    pub allow_dropped_patches: bool,
    /// Health probes, signed with the level.
    pub probes: BTreeMap<String, String>,
}

impl Default for LevelOptions {
    fn default() -> Self {
        Self {
            level: None,
            expires_days: 30,
            allow_dropped_patches: false,
            probes: BTreeMap::new(),
        }
    }
}

/// `NAME=COMMAND` pairs, each name once, within the limits signed metadata allows.
pub fn parse_probes(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut probes = BTreeMap::new();
    for arg in args {
        let Some((name, command)) = arg.split_once('=') else {
            anyhow::bail!("--probe {arg:?}: NAME=COMMAND");
        };
        if probes
            .insert(name.to_string(), command.to_string())
            .is_some()
        {
            anyhow::bail!("--probe {name}: named twice");
        }
    }
    graft_protocol::trust::check_probes(&probes).map_err(|e| anyhow::anyhow!("--probe: {e}"))?;
    Ok(probes)
}

/// Signs `module` as the next level of its stream (or as `options.level`), with a version
/// above every earlier one, and publishes it.
pub fn publish_level(
    client: &Client,
    module: &std::path::Path,
    key: &ed25519_dalek::SigningKey,
    options: &LevelOptions,
) -> anyhow::Result<graft_protocol::api::LevelView> {
    let LevelOptions {
        level,
        expires_days,
        allow_dropped_patches,
        ref probes,
    } = *options;
    let now = graft_agent::now_ms() / 1000;
    // The next level and a version above every earlier one: what the stream has so far.
    let draft = graft_client::publish::prepare(module, key, 1, now, now, allow_dropped_patches)?;
    let (latest, last_version) = match client.stream(&draft.stream) {
        Ok(s) => (s.latest, s.levels.iter().map(|l| l.version).max()),
        Err(graft_client::ClientError::Api { status: 404, .. }) => (None, None),
        Err(e) => return Err(e.into()),
    };
    let level = level.unwrap_or(latest.map_or(1, |l| l + 1));
    let version = last_version.map_or(now, |v| (v + 1).max(now));
    let expires = now + expires_days * 86_400;
    let prepared = graft_client::publish::prepare(
        module,
        key,
        level,
        version,
        expires,
        allow_dropped_patches,
    )?
    .with_probes(probes.clone(), key)?;
    Ok(client.publish(&prepared.stream, &prepared.publish)?)
}

/// Runs the agent.
pub fn agent(args: &AgentArgs) -> anyhow::Result<ExitCode> {
    if args.stopping {
        graft_agent::mark_clean_stop(&args.state_dir)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let (k, v) = graft_protocol::api::parse_selector(l).map_err(anyhow::Error::msg)?;
        labels.insert(k, v);
    }
    let hostname = match &args.hostname {
        Some(h) => h.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
    };
    let config = graft_agent::AgentConfig {
        server: args.server.clone(),
        ca: args.ca.clone(),
        enroll_token: args.enroll_token.clone(),
        state_dir: args.state_dir.clone(),
        hostname,
        labels,
        interval: Duration::from_secs(args.interval.max(1)),
        pinned_keys: pinned_keys(&args.pin_keys)?,
    };
    let limits = graft_host::TransitionLimits {
        timeout: Duration::from_secs(args.transition_timeout),
        ..Default::default()
    };
    let mut host = graft_agent::KernelHost::new(args.graft_state.clone(), limits);
    let json = args.json;
    graft_agent::run(&config, &mut host, args.once, &|| false, &mut |done| {
        if json {
            println!("{}", serde_json::to_string(done).unwrap_or_default());
        } else {
            let what = if done.actions.is_empty() {
                if done.unchanged {
                    "unchanged".to_string()
                } else {
                    "nothing to do".to_string()
                }
            } else {
                done.actions.join("; ")
            };
            println!(
                "graft agent: checked in{}: {what}",
                if done.enrolled { " (enrolled)" } else { "" }
            );
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Each `--pin-key`: hex, or a file holding hex; checked to be a public key.
fn pinned_keys(given: &[String]) -> anyhow::Result<Vec<String>> {
    given
        .iter()
        .map(|k| {
            let text = if std::path::Path::new(k).is_file() {
                std::fs::read_to_string(k).with_context(|| format!("reading --pin-key {k}"))?
            } else {
                k.clone()
            };
            let text = text.trim().to_string();
            graft_protocol::trust::verifying_key_from_hex(&text)
                .with_context(|| format!("--pin-key {k}"))?;
            Ok(text)
        })
        .collect()
}

fn level_text(level: Option<u32>) -> String {
    level.map_or("-".to_string(), |l| l.to_string())
}

pub(crate) fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", text());
    }
    Ok(ExitCode::SUCCESS)
}
