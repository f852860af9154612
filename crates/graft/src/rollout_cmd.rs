//! `graft fleet rollout`: start staged rollouts, follow them, and act on them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Subcommand;
use graft_client::Client;
use graft_protocol::rollout::{Rollback, RolloutState, RolloutView, StartRollout};
use graft_protocol::trust::SignedLevel;

use crate::fleet_cmd::print;

/// Rollout commands.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Start a staged rollout of a published level to a stream's hosts.
    ///
    /// Hosts move wave by wave (cumulative shares of the selected hosts, in an order drawn
    /// for this rollout); each wave bakes, then gates compare the moved hosts with those still
    /// on the previous level. A crash, a lost host, a kernel error or transition failures
    /// halt at once; a metric that is worse (one-sided Mann-Whitney U, with an effect-size
    /// floor) halts at the bake's end. A halted rollout waits for `resume` or `rollback`.
    #[command(
        after_help = "Example: graft fleet rollout start --stream 6.1.0-56-amd64@eb4fbcd037e7 \
--level 3 --canary 10 --waves 1,5,25,100 --bake 30m --max-parallel 500"
    )]
    Start {
        /// The stream (`graft fleet streams`).
        #[arg(long)]
        stream: String,
        /// The level, published and signed.
        #[arg(long)]
        level: u32,
        /// Only the stream's hosts with this label (key=value).
        #[arg(long)]
        selector: Option<String>,
        /// A first wave of this many hosts, before the percentages.
        #[arg(long)]
        canary: Option<u32>,
        /// Cumulative percentages of the selected hosts, ending at 100.
        #[arg(long, default_value = "1,5,25,100")]
        waves: String,
        /// How long each wave runs before its gates decide (e.g. 30m, 2h, 90s).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        bake: Duration,
        /// At most this many hosts of a wave applying at once.
        #[arg(long)]
        max_parallel: Option<u32>,
        /// A moved host silent this long is lost, which halts the rollout (default 10m). The
        /// server writes check-in times to its last-seen resolution (`graft server run
        /// --last-seen-resolution-ms`, default 5 min) and allows for it: a host is counted lost
        /// between this and this plus the resolution after its last check-in.
        #[arg(long, value_parser = humantime::parse_duration)]
        lost_after: Option<Duration>,
        /// On a halt, send every moved host back at once (only when they come from no level:
        /// going back to a level needs the publisher's fresh signature).
        #[arg(long)]
        auto_rollback: bool,
    },
    /// Rollouts, newest first.
    List,
    /// One rollout: its waves, hosts, and every gate decision with its reasons.
    Status {
        /// The rollout's id (`r-...`).
        id: String,
        /// Wait until it is no longer running (completed, halted, paused, ...), printing each
        /// change; exit status 0 only if it completed.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long.
        #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Stop moving hosts until `resume`.
    Pause {
        /// The rollout's id.
        id: String,
    },
    /// Go on after a pause, or after a halt (its hosts accepted, its wave passed).
    Resume {
        /// The rollout's id.
        id: String,
    },
    /// Stop for good; moved hosts stay where they are.
    Abort {
        /// The rollout's id.
        id: String,
    },
    /// Send every moved host back to its previous level, through its agent.
    ///
    /// Going back to a level (not to none) needs its metadata signed again with a version
    /// newer than any of the stream's: agents refuse older versions, so that a server can
    /// never take hosts back to a level with a known hole on its own.
    Rollback {
        /// The rollout's id.
        id: String,
        /// The publisher's private key, to sign the previous level again.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Days until agents refuse the re-signed metadata.
        #[arg(long, default_value_t = 30)]
        expires_days: u64,
    },
}

/// Runs a rollout command.
pub fn run(client: &Client, json: bool, command: &RolloutCommand) -> anyhow::Result<ExitCode> {
    match command {
        RolloutCommand::Start {
            stream,
            level,
            selector,
            canary,
            waves,
            bake,
            max_parallel,
            lost_after,
            auto_rollback,
        } => {
            // The plan is checked here too, so that a typo is named before any request.
            graft_rollout::WavePlan::parse(waves).context("--waves")?;
            let view = client.start_rollout(&StartRollout {
                stream: stream.clone(),
                level: *level,
                selector: selector.clone(),
                canary: *canary,
                waves: waves.clone(),
                bake_ms: millis(*bake),
                max_parallel: *max_parallel,
                lost_after_ms: lost_after.map(millis),
                auto_rollback: *auto_rollback,
            })?;
            print(json, &view, || {
                format!(
                    "started {}: level {} of {} to {} hosts in {} waves ({}), {} bake each\n",
                    view.id,
                    view.level,
                    view.stream,
                    view.hosts,
                    view.waves.len(),
                    view.waves
                        .iter()
                        .map(|w| w.target.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    humantime::format_duration(Duration::from_millis(view.bake_ms))
                )
            })
        }
        RolloutCommand::List => {
            let list = client.rollouts()?;
            print(json, &list, || {
                let mut out = format!(
                    "{:<16} {:<36} {:>5} {:<12} {:>9} {:>13}\n",
                    "ID", "STREAM", "LEVEL", "STATE", "WAVE", "TREATED"
                );
                for r in &list {
                    out += &format!(
                        "{:<16} {:<36} {:>5} {:<12} {:>9} {:>13}\n",
                        r.id,
                        r.stream,
                        r.level,
                        r.state.as_str(),
                        format!("{}/{}", r.wave, r.waves.len()),
                        format!("{}/{}", r.treated, r.hosts)
                    );
                }
                out
            })
        }
        RolloutCommand::Status { id, wait, timeout } => {
            if *wait {
                return wait_for(client, json, id, *timeout);
            }
            let view = client.rollout(id)?;
            print(json, &view, || describe(&view))
        }
        RolloutCommand::Pause { id } => act(client, json, id, "pause"),
        RolloutCommand::Resume { id } => act(client, json, id, "resume"),
        RolloutCommand::Abort { id } => act(client, json, id, "abort"),
        RolloutCommand::Rollback {
            id,
            signing_key,
            expires_days,
        } => {
            let resigned = match signing_key {
                Some(path) => resign_previous(client, id, path, *expires_days)?,
                None => None,
            };
            let view = client.rollback(id, &Rollback { resigned })?;
            print(json, &view, || describe(&view))
        }
    }
}

fn act(client: &Client, json: bool, id: &str, action: &str) -> anyhow::Result<ExitCode> {
    let view = client.rollout_action(id, action)?;
    print(json, &view, || describe(&view))
}

/// Follows a rollout until it stops running; 0 only if it completed.
fn wait_for(client: &Client, json: bool, id: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut last = None;
    loop {
        let view = client.rollout(id)?;
        let line = format!(
            "{} wave {}/{}: {} of {} hosts moved, {} applied",
            view.state.as_str(),
            view.wave,
            view.waves.len(),
            view.treated,
            view.hosts,
            view.applied
        );
        if last.as_ref() != Some(&line) {
            eprintln!("{id}: {line}");
            last = Some(line);
        }
        if view.state != RolloutState::Running {
            print(json, &view, || describe(&view))?;
            return Ok(if view.state == RolloutState::Completed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if started.elapsed() > timeout {
            anyhow::bail!(
                "rollout {id} is still running after {}",
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The previous level's metadata, signed again with a version above every one of the stream.
pub(crate) fn resign_previous(
    client: &Client,
    id: &str,
    key_path: &std::path::Path,
    expires_days: u64,
) -> anyhow::Result<Option<SignedLevel>> {
    let key_text = std::fs::read_to_string(key_path)
        .with_context(|| format!("reading the signing key {}", key_path.display()))?;
    let key = graft_protocol::trust::signing_key_from_hex(&key_text)
        .with_context(|| format!("{}", key_path.display()))?;
    let rollout = client.rollout(id)?;
    let Some(previous) = rollout.from_level else {
        // Back to no level: a revert, which needs no signature.
        return Ok(None);
    };
    let stream = client.stream(&rollout.stream)?;
    let newest = stream.levels.iter().map(|l| l.version).max().unwrap_or(0);
    let level = stream
        .levels
        .iter()
        .find(|l| l.level == previous)
        .with_context(|| format!("{} has no level {previous}", rollout.stream))?;
    let signed = level.signed.as_ref().with_context(|| {
        format!(
            "the server did not give the signed metadata of level {previous}: it cannot be signed again"
        )
    })?;
    let mut meta = signed
        .peek()
        .with_context(|| format!("the stored metadata of level {previous}"))?;
    let now = graft_agent::now_ms() / 1000;
    meta.version = (newest + 1).max(now);
    meta.expires = now + expires_days * 86_400;
    Ok(Some(SignedLevel::sign(&meta, &key)))
}

/// A rollout for people.
fn describe(v: &RolloutView) -> String {
    let mut out = format!(
        "{} {}: level {} of {} (from {}){}\n",
        v.id,
        v.state.as_str(),
        v.level,
        v.stream,
        v.from_level.map_or("none".into(), |l| format!("level {l}")),
        v.selector
            .as_deref()
            .map_or(String::new(), |s| format!(", hosts with {s}"))
    );
    if let Some(reason) = &v.reason {
        out += &format!("  {reason}\n");
    }
    out += &format!(
        "  {} of {} hosts moved, {} applied; bake {} per wave\n",
        v.treated,
        v.hosts,
        v.applied,
        humantime::format_duration(Duration::from_millis(v.bake_ms))
    );
    for w in &v.waves {
        let state = if w.passed_ms.is_some() {
            "passed"
        } else if w.assigned_ms.is_some() {
            "baking"
        } else if w.started_ms.is_some() {
            "moving hosts"
        } else {
            "waiting"
        };
        out += &format!("  wave {}: up to {} hosts, {state}\n", w.wave, w.target);
    }
    for d in &v.decisions {
        out += &format!(
            "  decision wave {}: {}{}\n",
            d.wave,
            d.decision,
            if d.at_bake_end {
                " (bake over)"
            } else {
                " (mid-bake)"
            }
        );
        for r in &d.reasons {
            out += &format!("    halt [{}] {}\n", r.gate, r.message);
        }
        for n in &d.notes {
            out += &format!("    note [{}] {}\n", n.gate, n.message);
        }
    }
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
