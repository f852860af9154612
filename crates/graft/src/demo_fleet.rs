//! `graft demo fleet`: the fleet end to end on real kernels.
//!
//! A `graft server` on the host's loopback and three lab VMs of the target, each running
//! `graft agent` from its initramfs. A guest has no network device: its agent talks to
//! `https://127.0.0.1:PORT` inside the guest, where `graft lab bridge` carries the connection
//! over a serial port that QEMU connects to a socket on the host's `127.0.0.1`
//! ([`graft_lab::HostBridge`]), which opens a connection to the server. TLS runs end to end.
//!
//! The steps, each checked before the next:
//! 1. build the levels: level 1 (one fix), and a cumulative level carrying it and a second fix;
//! 2. start the server, boot the hosts, see each enroll with the keys pinned out of band;
//! 3. publish level 1 and assign it: every host applies it;
//! 4. a bad signature: a level signed by a key that is not the publisher's is refused by the
//!    server; then, with the server compromised (the attacker's key trusted there), it is served
//!    and refused by every agent, and nothing is loaded;
//! 5. publish and assign the cumulative level, kill the server (SIGKILL) while a host applies
//!    it, start it again: every host ends on it, each loaded it once, no report is lost;
//! 6. a staged rollout of a clean level (one host, then all, each wave baked and gated), with
//!    a health probe the publisher signed: it completes on every host, and the probe's values
//!    reach the gates;
//! 7. a staged rollout of a level whose patched function logs a kernel warning when called
//!    (a fixture: the guests read `/proc/cmdline` every second): the first wave's host warns,
//!    the server halts the rollout before its second wave and says why; the operator rolls it
//!    back, signing the previous level again, and the host returns to it;
//! 8. stop the guests and check, from each guest's own kernel log, what was loaded.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use graft_build::BuildOptions;
use graft_client::Client;
use graft_lab::{GuestFile, HostBridge, Lab, LabKernel, RunSpec};
use graft_protocol::api::{Assign, HostFilter, HostView, NewToken};

use crate::cli::DemoFleetArgs;
use crate::fleet_cmd::LevelOptions;
use crate::kernel_cmd::{ensure_kernel, target_and_cache};

const FIX_1: &str = include_str!("../../../tests/cases/proc-pid-limits-header/fix.patch");
const FIX_2: &str = include_str!("../../../tests/cases/proc-comm-write-strip-newline/fix.patch");
const FIX_3: &str = include_str!("../../../tests/host/patches/version-a.patch");
/// Not a fix: a level that logs a kernel warning whenever `/proc/cmdline` is read.
const WARNS: &str = include_str!("../../../tests/fleet/cmdline-warns.patch");
/// The probe the clean level carries.
const DEMO_PROBE: &str = "load1";

/// How long each wave of the demo's rollouts bakes: long enough for the canary to read
/// `/proc/cmdline` and report what its kernel logged (a check-in every two seconds).
const BAKE: Duration = Duration::from_secs(12);
/// The guests' port on their own loopback, where the bridge listens.
const GUEST_PORT: u16 = 8443;
/// How long one step may take before the demo gives up on it.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// Seconds between an agent's check-ins.
const INTERVAL_SECS: u32 = 2;

/// What the demo saw, for `--json` and for its test.
#[derive(Debug, Default, serde::Serialize)]
pub struct Summary {
    /// The target.
    pub kernel: String,
    /// The stream the hosts run.
    pub stream: String,
    /// Per host, by name.
    pub hosts: BTreeMap<String, HostSummary>,
    /// The server's refusal of the level signed by a foreign key.
    pub refused_at_publish: String,
    /// Times the server was started.
    pub server_starts: u32,
    /// The host that was applying when the server was killed.
    pub applying_when_killed: String,
    /// The clean level's rollout, as it ended.
    pub clean_rollout: RolloutSummary,
    /// The warning level's rollout, as it ended (halted), before the rollback.
    pub warning_rollout: RolloutSummary,
    /// The host the warning level reached.
    pub warned_host: String,
    /// Whole run, seconds.
    pub seconds: f64,
}

/// How a rollout ended.
#[derive(Debug, Default, serde::Serialize)]
pub struct RolloutSummary {
    /// Its id.
    pub id: String,
    /// The level.
    pub level: u32,
    /// `completed`, `halted`, ...
    pub state: String,
    /// The wave it ended in.
    pub wave: u32,
    /// Waves planned.
    pub waves: usize,
    /// Hosts moved to the level.
    pub treated: u64,
    /// Why it stopped, as the server tells the operator.
    pub reason: Option<String>,
    /// The gates that failed, each `gate: hosts`.
    pub halted_by: Vec<String>,
    /// Every metric the gates' decisions name (tested, or noted as too few hosts).
    pub metrics_seen: Vec<String>,
}

/// One host's story.
#[derive(Debug, Default, serde::Serialize)]
pub struct HostSummary {
    /// Its id at the server.
    pub id: String,
    /// The level it reports at the end.
    pub level: Option<u32>,
    /// Outcomes the server holds for it: `applied 1`, `refused 2`, ...
    pub outcomes: Vec<String>,
    /// The refusal of the attacker's level, as the agent put it.
    pub refusal: String,
    /// Per module: how many times its guest's kernel enabled it (from the guest's kernel log).
    pub loads: BTreeMap<String, usize>,
    /// The guest script's exit status.
    pub exit_code: i32,
}

pub fn run(args: &DemoFleetArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let out = Narrator { json: args.json };
    let (target, cache) = target_and_cache(&args.kernel.target)?;
    let progress = crate::progress::for_output(args.json);
    let lab = Lab::new(cache.clone(), progress.clone())?;
    let kernel = ensure_kernel(&cache, &target, &progress)?;
    let work = tempfile::Builder::new()
        .prefix("graft-demo-fleet-")
        .tempdir()
        .context("creating a scratch directory")?;
    let exe = std::env::current_exe().context("locating the graft binary")?;

    out.say(format!("== 1. the levels, built for {target}"));
    let levels = build_levels(&out, &cache, &kernel, work.path())?;

    out.say("== 2. graft server on 127.0.0.1, and three hosts of the target in QEMU");
    let data = work.path().join("server");
    init_server(&exe, &data)?;
    let mut server = ServerProcess::start(&exe, &data, "127.0.0.1:0")?;
    let mut summary = Summary {
        kernel: target.to_string(),
        server_starts: 1,
        ..Default::default()
    };
    out.say(format!("   server: {}", server.url));
    let admin = Client::new(&server.url, Some(&data.join("ca.pem")))?.with_secret(
        std::fs::read_to_string(data.join("admin.token"))
            .context("reading the admin token")?
            .trim(),
    );
    let enroll = admin.new_token(&NewToken {
        name: "demo-hosts".into(),
        role: "enroll".into(),
    })?;
    let fleet = Fleet::boot(
        &lab,
        &kernel.lab_kernel(),
        &exe,
        &data,
        server.addr,
        &enroll.token,
        usize::from(args.hosts),
    )?;
    let hosts = fleet.wait_hosts(&out, &admin, "enrolled and reporting", |h| {
        h.last_seen_ms > 0
    })?;
    let stream = hosts[0].stream.clone();
    summary.stream = stream.clone();
    for h in &hosts {
        out.say(format!(
            "   {} enrolled as {} on {} (keys pinned from publisher.pub)",
            h.hostname, h.id, h.stream
        ));
    }

    out.say("== 3. publish level 1, signed by the publisher; assign it to the stream");
    let publisher = signing_key(&data.join("publisher.key"))?;
    let view =
        crate::fleet_cmd::publish_level(&admin, &levels[0], &publisher, &LevelOptions::default())?;
    out.say(format!(
        "   published {} as level {} (version {})",
        view.module_name, view.level, view.version
    ));
    assign(&admin, &stream, 1)?;
    fleet.wait_hosts(&out, &admin, "on level 1", |h| h.level == Some(1))?;
    out.say("   every host applied level 1");

    out.say("== 4. a bad signature");
    let attacker = graft_protocol::trust::generate_key();
    match crate::fleet_cmd::publish_level(&admin, &levels[1], &attacker, &LevelOptions::default()) {
        Ok(v) => bail!(
            "the server accepted level {} signed by a foreign key",
            v.level
        ),
        Err(e) => {
            summary.refused_at_publish = format!("{e:#}");
            out.say(format!("   the server refuses it: {e:#}"));
        }
    }
    out.say("   now the server is compromised: the attacker makes it trust their key");
    server.kill()?;
    compromise(&data, &attacker)?;
    server = ServerProcess::start(&exe, &data, &server.addr.to_string())?;
    summary.server_starts += 1;
    let view =
        crate::fleet_cmd::publish_level(&admin, &levels[1], &attacker, &LevelOptions::default())?;
    out.say(format!(
        "   the compromised server takes {} as level {} and serves it",
        view.module_name, view.level
    ));
    assign(&admin, &stream, view.level)?;
    let refused_level = view.level;
    fleet.wait_outcomes(&out, &admin, "refusing the attacker's level", |o| {
        o.iter()
            .any(|o| o.level == Some(refused_level) && o.result == "refused")
    })?;
    let hosts = admin.hosts(&HostFilter::default())?;
    if let Some(h) = hosts.iter().find(|h| h.level != Some(1)) {
        bail!(
            "{} left level 1 for a level it should have refused",
            h.hostname
        );
    }
    out.say(
        "   every agent refused it (the publisher did not sign it); every host is still on level 1",
    );

    out.say("== 5. the cumulative level; the server is killed while a host applies it");
    let view =
        crate::fleet_cmd::publish_level(&admin, &levels[2], &publisher, &LevelOptions::default())?;
    let last = view.level;
    out.say(format!(
        "   published {} as level {last} (carries both fixes)",
        view.module_name
    ));
    assign(&admin, &stream, last)?;
    let applying = fleet.wait_line(&out, &format!("applying level {last}"))?;
    server.kill()?;
    summary.applying_when_killed = applying.clone();
    out.say(format!(
        "   {applying} is applying level {last}: the server is killed (SIGKILL)"
    ));
    fleet.watch(&out, Duration::from_secs(6));
    server = ServerProcess::start(&exe, &data, &server.addr.to_string())?;
    summary.server_starts += 1;
    out.say(format!("   the server is back on {}", server.url));
    fleet.wait_hosts(&out, &admin, &format!("on level {last}"), |h| {
        h.level == Some(last)
    })?;
    out.say(format!("   every host is on level {last}"));

    out.say("== 6. a staged rollout of a clean level: one host, then every host, each wave baked and gated");
    // With a probe the publisher signs: the sampled guests run it at every check-in.
    let probed = LevelOptions {
        probes: BTreeMap::from([(
            DEMO_PROBE.to_string(),
            "cut -d' ' -f1 /proc/loadavg".to_string(),
        )]),
        ..LevelOptions::default()
    };
    let view = crate::fleet_cmd::publish_level(&admin, &levels[3], &publisher, &probed)?;
    let clean_level = view.level;
    out.say(format!(
        "   published {} as level {clean_level} (the fixes so far and a third), with a signed probe {DEMO_PROBE} (the 1-minute load average)",
        view.module_name
    ));
    summary.clean_rollout = roll_out(&fleet, &out, &admin, &stream, clean_level)?;
    if summary.clean_rollout.state != "completed" {
        bail!(
            "the clean level's rollout ended {}: {}",
            summary.clean_rollout.state,
            summary.clean_rollout.reason.as_deref().unwrap_or("")
        );
    }
    fleet.wait_hosts(&out, &admin, &format!("on level {clean_level}"), |h| {
        h.level == Some(clean_level)
    })?;
    out.say(format!(
        "   completed: every host is on level {clean_level}"
    ));
    let probe_metric = format!("probe:{DEMO_PROBE}");
    if !summary.clean_rollout.metrics_seen.contains(&probe_metric) {
        bail!(
            "the guests never reported the signed probe {probe_metric}: the gates saw {:?}",
            summary.clean_rollout.metrics_seen
        );
    }
    out.say(format!(
        "   the guests ran the signed probe and its values reached the gates as {probe_metric}"
    ));

    out.say(
        "== 7. a staged rollout of a level that logs a kernel warning when /proc/cmdline is read",
    );
    let view =
        crate::fleet_cmd::publish_level(&admin, &levels[4], &publisher, &LevelOptions::default())?;
    let warning_level = view.level;
    out.say(format!(
        "   published {} as level {warning_level} (the guests read /proc/cmdline every second)",
        view.module_name
    ));
    summary.warning_rollout = roll_out(&fleet, &out, &admin, &stream, warning_level)?;
    let warned = &summary.warning_rollout;
    if warned.state != "halted" || warned.wave != 1 || warned.treated != 1 {
        bail!(
            "the warning level's rollout ended {} in wave {} with {} hosts moved, not halted in its first wave",
            warned.state,
            warned.wave,
            warned.treated
        );
    }
    out.say(format!(
        "   the server halted it in wave 1 of {}: {}",
        warned.waves,
        warned.reason.as_deref().unwrap_or("")
    ));
    let hosts = admin.hosts(&HostFilter::default())?;
    let on_warning: Vec<&HostView> = hosts
        .iter()
        .filter(|h| h.desired == Some(warning_level))
        .collect();
    if on_warning.len() != 1 {
        bail!(
            "{} hosts were moved to the warning level, not the one canary",
            on_warning.len()
        );
    }
    summary.warned_host = on_warning[0].hostname.clone();
    out.say(format!(
        "   only {} took it; the others stay on level {clean_level}. The operator rolls back, signing level {clean_level} again:",
        summary.warned_host
    ));
    let resigned =
        crate::rollout_cmd::resign_previous(&admin, &warned.id, &data.join("publisher.key"), 30)?;
    let back = admin.rollback(&warned.id, &graft_protocol::rollout::Rollback { resigned })?;
    out.say(format!(
        "   {}",
        back.reason.as_deref().unwrap_or("rolled back")
    ));
    fleet.wait_hosts(&out, &admin, &format!("back on level {clean_level}"), |h| {
        h.level == Some(clean_level)
    })?;
    out.say(format!("   every host is on level {clean_level} again"));

    out.say("== 8. stop the hosts; what each kernel loaded, and what the server holds");
    let ended = fleet.stop(&out)?;
    let names: Vec<String> = levels.iter().map(|m| module_name(m)).collect();
    for h in admin.hosts(&HostFilter::default())? {
        let outcomes = admin.outcomes(&h.id)?;
        let guest = ended.get(&h.hostname);
        let host = HostSummary {
            id: h.id.clone(),
            level: h.level,
            outcomes: outcomes
                .iter()
                .map(|o| format!("{} {}", o.result, level_text(o.level)))
                .collect(),
            refusal: outcomes
                .iter()
                .find(|o| o.result == "refused")
                .and_then(|o| o.message.clone())
                .unwrap_or_default(),
            loads: names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        guest.map_or(0, |g| enabled_count(&g.kernel_log, n)),
                    )
                })
                .collect(),
            exit_code: guest.map_or(-1, |g| g.exit_code),
        };
        out.say(format!(
            "   {}: level {}, outcomes [{}], loads {}",
            h.hostname,
            level_text(host.level),
            host.outcomes.join(", "),
            host.loads
                .iter()
                .map(|(m, n)| format!("{m}×{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        summary.hosts.insert(h.hostname.clone(), host);
    }
    drop(server);
    let failed = check(&summary, &names, refused_level, last);
    let failed = failed.or_else(|| check_rollouts(&summary, &names, clean_level, warning_level));
    summary.seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    if let Some(why) = failed {
        bail!("the fleet demo failed: {why}");
    }
    out.say(format!(
        "== done in {:.0} s: signed levels applied once each, the forged one refused everywhere, the outage survived, a clean rollout completed, a warning one halted in its first wave and rolled back",
        summary.seconds
    ));
    Ok(ExitCode::SUCCESS)
}

/// What must hold at the end; the first thing that does not.
fn check(summary: &Summary, names: &[String], refused: u32, last: u32) -> Option<String> {
    for (name, h) in &summary.hosts {
        let want_outcomes = [
            "applied 1".to_string(),
            format!("refused {refused}"),
            format!("applied {last}"),
        ];
        let want_loads = [(&names[0], 1), (&names[1], 0), (&names[2], 1)];
        if h.exit_code != 0 {
            return Some(format!("{name}'s guest ended with status {}", h.exit_code));
        }
        if h.outcomes.get(..3) != Some(&want_outcomes[..]) {
            return Some(format!(
                "{name}'s outcomes are [{}], not [{}]",
                h.outcomes.join(", "),
                want_outcomes.join(", ")
            ));
        }
        for (module, want) in want_loads {
            let got = h.loads.get(module).copied().unwrap_or(0);
            if got != want {
                return Some(format!(
                    "{name}'s kernel enabled {module} {got} times, not {want}"
                ));
            }
        }
    }
    None
}

/// What must hold of the rollouts at the end; the first thing that does not. Every host ends
/// on the clean level; only the warned host took the warning level, once, and went back.
fn check_rollouts(summary: &Summary, names: &[String], clean: u32, warning: u32) -> Option<String> {
    if !summary
        .warning_rollout
        .halted_by
        .iter()
        .any(|g| g.starts_with("kernel-error"))
    {
        return Some(format!(
            "the warning level's rollout was not halted by its kernel warning: {:?}",
            summary.warning_rollout.halted_by
        ));
    }
    for (name, h) in &summary.hosts {
        let warned = *name == summary.warned_host;
        let mut want = vec![format!("applied {clean}")];
        if warned {
            want.extend([format!("applied {warning}"), format!("applied {clean}")]);
        }
        if h.level != Some(clean) {
            return Some(format!("{name} ends on level {}", level_text(h.level)));
        }
        if h.outcomes.get(3..) != Some(&want[..]) {
            return Some(format!(
                "{name}'s rollout outcomes are [{}], not [{}]",
                h.outcomes.get(3..).unwrap_or_default().join(", "),
                want.join(", ")
            ));
        }
        let loads = [
            (&names[3], if warned { 2 } else { 1 }),
            (&names[4], usize::from(warned)),
        ];
        for (module, want) in loads {
            let got = h.loads.get(module).copied().unwrap_or(0);
            if got != want {
                return Some(format!(
                    "{name}'s kernel enabled {module} {got} times, not {want}"
                ));
            }
        }
    }
    None
}

/// Starts a rollout of `level` in two waves (one host, then all) and follows it until it is
/// no longer running.
fn roll_out(
    fleet: &Fleet,
    out: &Narrator,
    admin: &Client,
    stream: &str,
    level: u32,
) -> anyhow::Result<RolloutSummary> {
    let started = admin.start_rollout(&graft_protocol::rollout::StartRollout {
        stream: stream.to_string(),
        level,
        selector: None,
        canary: Some(1),
        waves: "100".into(),
        bake_ms: u64::try_from(BAKE.as_millis()).unwrap_or(u64::MAX),
        max_parallel: None,
        lost_after_ms: Some(120_000),
        auto_rollback: false,
    })?;
    out.say(format!(
        "   rollout {}: level {level} to {} hosts, a canary of 1 then the rest, {} s bake per wave",
        started.id,
        started.hosts,
        BAKE.as_secs()
    ));
    let view = fleet.wait(out, &format!("done with rollout {}", started.id), || {
        let v = admin.rollout(&started.id)?;
        Ok((v.state != graft_protocol::rollout::RolloutState::Running).then_some(v))
    })?;
    let halted_by = view
        .decisions
        .iter()
        .filter(|d| d.decision == "halt")
        .flat_map(|d| &d.reasons)
        .map(|r| format!("{}: {}", r.gate, r.hosts.join(", ")))
        .collect();
    let metrics_seen: std::collections::BTreeSet<String> = view
        .decisions
        .iter()
        .flat_map(|d| d.reasons.iter().chain(&d.notes))
        .filter_map(|f| f.metric.clone())
        .collect();
    Ok(RolloutSummary {
        id: view.id,
        level,
        state: view.state.as_str().to_string(),
        wave: view.wave,
        waves: view.waves.len(),
        treated: view.treated,
        reason: view.reason,
        halted_by,
        metrics_seen: metrics_seen.into_iter().collect(),
    })
}

/// Level 1 (the first fix), the attacker's level (both fixes), the cumulative level 3 (both
/// fixes), the clean level 4 (a third fix) and level 5 (which warns), each a module of its
/// own name.
fn build_levels(
    out: &Narrator,
    cache: &graft_cache::Cache,
    kernel: &graft_kernel::Kernel,
    work: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let fix_1 = work.join("limits-header.patch");
    let fix_2 = work.join("comm-write.patch");
    let fix_3 = work.join("version.patch");
    let warns = work.join("cmdline-warns.patch");
    std::fs::write(&fix_1, FIX_1)?;
    std::fs::write(&fix_2, FIX_2)?;
    std::fs::write(&fix_3, FIX_3)?;
    std::fs::write(&warns, WARNS)?;
    let plan = [
        (
            "fleet_level_1",
            vec![fix_1.clone()],
            "/proc/<pid>/limits header",
        ),
        (
            "fleet_forged",
            vec![fix_1.clone(), fix_2.clone()],
            "both fixes, to be signed by an attacker",
        ),
        (
            "fleet_level_3",
            vec![fix_1.clone(), fix_2.clone()],
            "cumulative: the limits header and /proc/<pid>/comm",
        ),
        (
            "fleet_level_4",
            vec![fix_1.clone(), fix_2.clone(), fix_3.clone()],
            "cumulative, and a line in /proc/version",
        ),
        (
            "fleet_level_5",
            vec![fix_1, fix_2, fix_3, warns],
            "cumulative, and a kernel warning at every read of /proc/cmdline",
        ),
    ];
    let progress = graft_progress::silent();
    let mut modules = Vec::new();
    for (name, patches, what) in plan {
        let started = Instant::now();
        let output = work.join(format!("{name}.ko"));
        graft_build::build(
            cache,
            kernel,
            &BuildOptions {
                patches,
                output: output.clone(),
                name: Some(name.into()),
                replace: true,
                set: None,
                keep_scratch: false,
            },
            &progress,
        )
        .with_context(|| format!("building {name}"))?;
        out.say(format!(
            "   {name}.ko ({what}) built in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        modules.push(output);
    }
    Ok(modules)
}

/// `graft server init`, as an operator runs it.
fn init_server(exe: &Path, data: &Path) -> anyhow::Result<()> {
    let output = Command::new(exe)
        .args(["server", "init", "--data"])
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .context("running graft server init")?;
    if !output.status.success() {
        bail!(
            "graft server init failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The attacker's move: a key of theirs in the data directory, trusted at the next start.
fn compromise(data: &Path, attacker: &ed25519_dalek::SigningKey) -> anyhow::Result<()> {
    let path = data.join("publisher.pub");
    let genuine = std::fs::read_to_string(&path).context("reading publisher.pub")?;
    std::fs::write(&path, hex::encode(attacker.verifying_key().as_bytes()))
        .context("writing publisher.pub")?;
    // The server trusts every key it has seen; the genuine one stays in the file for the
    // operator, beside it.
    std::fs::write(data.join("publisher.pub.genuine"), genuine)?;
    Ok(())
}

fn signing_key(path: &Path) -> anyhow::Result<ed25519_dalek::SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the signing key {}", path.display()))?;
    graft_protocol::trust::signing_key_from_hex(&text)
        .with_context(|| format!("{}", path.display()))
}

fn assign(admin: &Client, stream: &str, level: u32) -> anyhow::Result<()> {
    admin.assign(&Assign {
        stream: stream.to_string(),
        level: Some(level),
        selector: None,
    })?;
    Ok(())
}

fn module_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn level_text(level: Option<u32>) -> String {
    level.map_or("none".into(), |l| l.to_string())
}

/// How many times a guest's kernel enabled the patch `module` (the livepatch core logs each).
fn enabled_count(kernel_log: &str, module: &str) -> usize {
    let needle = format!("livepatch: enabling patch '{module}'");
    kernel_log.lines().filter(|l| l.contains(&needle)).count()
}

/// Narration: stdout, or stderr when stdout carries the JSON summary.
struct Narrator {
    json: bool,
}

impl Narrator {
    fn say(&self, line: impl AsRef<str>) {
        if self.json {
            eprintln!("{}", line.as_ref());
        } else {
            println!("{}", line.as_ref());
            let _ = std::io::stdout().flush();
        }
    }
}

/// `graft server run` as a process of its own, so that killing it is a real crash.
struct ServerProcess {
    child: Option<Child>,
    addr: SocketAddr,
    url: String,
}

impl ServerProcess {
    fn start(exe: &Path, data: &Path, listen: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(exe);
        command
            .args([
                "server",
                "run",
                "--rollout-tick-ms",
                "500",
                "--listen",
                listen,
                "--data",
            ])
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        graft_lab::kill_with_parent(&mut command);
        let mut child = command.spawn().context("starting graft server run")?;
        let stderr = child.stderr.take().context("the server's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        let url = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.wait();
                bail!(
                    "graft server run exited before listening: {}",
                    seen.join("\n")
                );
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
            seen.push(line);
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let addr: SocketAddr = url
            .rsplit("//")
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("the server's address in {url}"))?;
        Ok(Self {
            child: Some(child),
            addr,
            url,
        })
    }

    /// SIGKILL: no graceful shutdown, nothing flushed.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing the server")?;
            child.wait().context("waiting for the server")?;
        }
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_raw(child.id() as i32);
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
            }
            let _ = child.wait();
        }
    }
}

/// A line a guest printed.
struct GuestLine {
    host: String,
    line: String,
}

/// How a guest ended.
struct GuestEnd {
    exit_code: i32,
    kernel_log: String,
}

/// The lab hosts, their bridges and what they print.
struct Fleet {
    bridges: Vec<HostBridge>,
    lines: mpsc::Receiver<GuestLine>,
    runs: Vec<(String, std::thread::JoinHandle<anyhow::Result<GuestEnd>>)>,
    count: usize,
}

impl Fleet {
    /// Boots `count` hosts, each with a bridge to the server at `server`.
    fn boot(
        lab: &Lab,
        kernel: &LabKernel,
        exe: &Path,
        data: &Path,
        server: SocketAddr,
        enroll_token: &str,
        count: usize,
    ) -> anyhow::Result<Self> {
        let (tx, lines) = mpsc::channel();
        let mut bridges = Vec::new();
        let mut runs = Vec::new();
        for n in 1..=count {
            let host = format!("lab-{n}");
            let bridge = HostBridge::start(server).context("starting a serial bridge")?;
            let mut spec = RunSpec::new(kernel.clone(), guest_script(&host, enroll_token));
            spec.graft_binary = Some(exe.to_path_buf());
            spec.memory_mib = 512;
            spec.timeout = Duration::from_secs(900);
            spec.boot_timeout = Duration::from_secs(240);
            spec.serial_bridges = vec![bridge.port()];
            for (file, dest) in [
                ("ca.pem", "/root/ca.pem"),
                ("publisher.pub", "/root/publisher.pub"),
            ] {
                spec.files.push(GuestFile {
                    source: data.join(file),
                    dest: dest.into(),
                });
            }
            let lab = lab.clone();
            let tx = tx.clone();
            let name = host.clone();
            let run = std::thread::spawn(move || -> anyhow::Result<GuestEnd> {
                let mut pending = Vec::new();
                let outcome = lab.run(&spec, &mut |bytes| {
                    pending.extend_from_slice(bytes);
                    while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line).trim_end().to_string();
                        if !line.is_empty() {
                            let _ = tx.send(GuestLine {
                                host: name.clone(),
                                line,
                            });
                        }
                    }
                })?;
                Ok(GuestEnd {
                    exit_code: outcome.exit_code,
                    kernel_log: outcome.kernel_log(),
                })
            });
            bridges.push(bridge);
            runs.push((host, run));
        }
        Ok(Self {
            bridges,
            lines,
            runs,
            count,
        })
    }

    /// Shows what the guests print for `duration`.
    fn watch(&self, out: &Narrator, duration: Duration) {
        let end = Instant::now() + duration;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => out.say(format!("     [{}] {}", l.host, l.line)),
                Err(_) => break,
            }
        }
    }

    /// Waits until a guest prints a line containing `needle`; the guest's name.
    fn wait_line(&self, out: &Narrator, needle: &str) -> anyhow::Result<String> {
        let end = Instant::now() + STEP_TIMEOUT;
        loop {
            self.check_running()?;
            let left = end
                .checked_duration_since(Instant::now())
                .with_context(|| format!("no host printed {needle:?} within {STEP_TIMEOUT:?}"))?;
            if let Ok(l) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(500)))
            {
                out.say(format!("     [{}] {}", l.host, l.line));
                if l.line.contains(needle) {
                    return Ok(l.host);
                }
            }
        }
    }

    /// Waits until every host, as the server sees it, satisfies `ready`.
    fn wait_hosts(
        &self,
        out: &Narrator,
        admin: &Client,
        what: &str,
        ready: impl Fn(&HostView) -> bool,
    ) -> anyhow::Result<Vec<HostView>> {
        self.wait(out, what, || {
            let hosts = admin.hosts(&HostFilter::default())?;
            Ok((hosts.len() == self.count && hosts.iter().all(&ready)).then_some(hosts))
        })
    }

    /// Waits until every host's outcomes satisfy `ready`.
    fn wait_outcomes(
        &self,
        out: &Narrator,
        admin: &Client,
        what: &str,
        ready: impl Fn(&[graft_protocol::api::Outcome]) -> bool,
    ) -> anyhow::Result<()> {
        self.wait(out, what, || {
            let hosts = admin.hosts(&HostFilter::default())?;
            for h in &hosts {
                if !ready(&admin.outcomes(&h.id)?) {
                    return Ok(None);
                }
            }
            Ok((hosts.len() == self.count).then_some(()))
        })
    }

    /// Polls `probe` twice a second, showing guest output, until it gives a value.
    fn wait<T>(
        &self,
        out: &Narrator,
        what: &str,
        mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let end = Instant::now() + STEP_TIMEOUT;
        loop {
            self.check_running()?;
            if let Some(value) = probe()? {
                return Ok(value);
            }
            if Instant::now() > end {
                bail!("the hosts were not all {what} within {STEP_TIMEOUT:?}");
            }
            self.watch(out, Duration::from_millis(500));
        }
    }

    /// A guest that stopped early is an error now, not a timeout later.
    fn check_running(&self) -> anyhow::Result<()> {
        if let Some((host, _)) = self.runs.iter().find(|(_, r)| r.is_finished()) {
            bail!("{host}'s VM stopped before the demo was over");
        }
        Ok(())
    }

    /// Tells each guest to stop, and waits for the runs.
    fn stop(self, out: &Narrator) -> anyhow::Result<BTreeMap<String, GuestEnd>> {
        for bridge in &self.bridges {
            bridge.shutdown_guest();
        }
        let mut ended = BTreeMap::new();
        for (host, run) in self.runs {
            let end = run
                .join()
                .map_err(|_| anyhow::anyhow!("{host}'s run panicked"))?
                .with_context(|| format!("{host}'s VM"))?;
            ended.insert(host, end);
        }
        while let Ok(l) = self.lines.try_recv() {
            out.say(format!("     [{}] {}", l.host, l.line));
        }
        Ok(ended)
    }
}

/// A host's script: loopback up, the bridge, the agent; when the host ends the bridge, stop
/// the agent and show the patches the kernel runs.
fn guest_script(host: &str, enroll_token: &str) -> String {
    format!(
        r#"ip link set lo up
graft lab bridge --port {GUEST_PORT} --device /dev/ttyS2 &
bridge=$!
GRAFT_LOG=warn,graft_agent=info graft agent --server https://127.0.0.1:{GUEST_PORT} \
  --ca /root/ca.pem --pin-key /root/publisher.pub --enroll-token {enroll_token} \
  --hostname {host} --label demo=fleet --interval {INTERVAL_SECS} \
  --state-dir /var/lib/graft-agent --graft-state /var/lib/graft 2>&1 &
agent=$!
# What the host runs: something reads /proc/cmdline every second.
(while sleep 1; do cat /proc/cmdline >/dev/null; done) &
work=$!
wait $bridge
rc=$?
kill $work 2>/dev/null
kill $agent 2>/dev/null
wait $agent 2>/dev/null
echo "live patches: $(ls /sys/kernel/livepatch | tr '\n' ' ')"
exit $rc
"#
    )
}
