//! The agent against a real graft server on loopback (SQLite): enrollment, signed levels,
//! ETag check-ins, restarts, refusals and outages. The kernel side is a recording [`Host`]:
//! what the kernel accepts is proven by the lab's fleet test; here it is the protocol and the
//! agent's decisions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use graft_agent::{ActionResult, AgentConfig, AgentState, Host};
use graft_client::Client;
use graft_protocol::api::{Assign, Inventory, NewToken};
use graft_protocol::KernelId;

/// A kernel that records what it was asked to do.
struct Recording {
    kernel: KernelId,
    applied: Vec<(PathBuf, Vec<u8>)>,
    reverted: Vec<String>,
}

impl Host for Recording {
    fn kernel(&self) -> Result<KernelId, String> {
        Ok(self.kernel.clone())
    }
    fn inventory(&self, _since: Option<u64>) -> Inventory {
        Inventory::default()
    }
    fn log_mark(&self) -> Option<u64> {
        None
    }
    fn apply(&mut self, module: &Path) -> ActionResult {
        let bytes = std::fs::read(module).unwrap_or_default();
        self.applied.push((module.to_path_buf(), bytes));
        ActionResult {
            result: "applied".into(),
            done: true,
            transition_secs: Some(0.1),
            blockers: Vec::new(),
            message: None,
        }
    }
    fn revert(&mut self, name: &str) -> ActionResult {
        self.reverted.push(name.to_string());
        ActionResult {
            result: "reverted".into(),
            done: true,
            transition_secs: Some(0.1),
            blockers: Vec::new(),
            message: None,
        }
    }
}

struct Fleet {
    runtime: tokio::runtime::Runtime,
    server: Option<graft_server::RunningServer>,
    data: tempfile::TempDir,
    url: String,
}

impl Fleet {
    fn start() -> Self {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("server");
        graft_server::init(&dir).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = graft_server::ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap());
        config.insecure_http = true;
        let server = runtime.block_on(graft_server::start(config)).unwrap();
        let url = format!("http://{}", server.addr());
        Self {
            runtime,
            server: Some(server),
            data,
            url,
        }
    }

    fn admin(&self) -> Client {
        let token = std::fs::read_to_string(self.data.path().join("server/admin.token")).unwrap();
        Client::new(&self.url, None)
            .unwrap()
            .with_secret(token.trim())
    }

    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            self.runtime.block_on(server.shutdown()).unwrap();
        }
    }

    /// Publishes a module as the next level of `kernel`'s stream, signed with `key`.
    fn publish(
        &self,
        kernel: &KernelId,
        level: u32,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<(), graft_client::ClientError> {
        let dir = self.data.path().join(format!("build{level}"));
        std::fs::create_dir_all(&dir).unwrap();
        let module = dir.join(format!("fix{level}.ko"));
        let bytes = format!("\x7fELF module of level {level}").into_bytes();
        std::fs::write(&module, &bytes).unwrap();
        let patches: Vec<serde_json::Value> = (1..=level)
            .map(|i| serde_json::json!({"file": format!("fix{i}.patch"), "sha256": format!("{i:064x}")}))
            .collect();
        let manifest = serde_json::json!({
            "name": format!("fix{level}"),
            "kernel": {"target": "debian:test", "release": kernel.release, "build_id": kernel.build_id},
            "replace": true,
            "functions": [{"object": "vmlinux", "name": "proc_pid_limits", "sympos": 0, "old_size": 100, "new_size": 110, "unit": "fs/proc/base.c"}],
            "new_functions": [],
            "patches": patches,
            "module": {"file": format!("fix{level}.ko"), "sha256": graft_manifest::sha256(&bytes)},
            "graft_version": "test"
        });
        std::fs::write(
            dir.join(format!("fix{level}.json")),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let now = graft_agent::now_ms() / 1000;
        let prepared = graft_client::publish::prepare(
            &module,
            key,
            level,
            now + u64::from(level),
            now + 3600,
            false,
        )
        .unwrap();
        self.admin()
            .publish(&prepared.stream, &prepared.publish)
            .map(drop)
    }

    fn publisher_key(&self) -> ed25519_dalek::SigningKey {
        let text = std::fs::read_to_string(self.data.path().join("server/publisher.key")).unwrap();
        graft_protocol::trust::signing_key_from_hex(&text).unwrap()
    }
}

/// A bootstrap token, an empty agent state directory and a host on [`kernel`].
fn newcomer(admin: &Client) -> (String, tempfile::TempDir, Recording) {
    let enroll = admin
        .new_token(&NewToken {
            name: "bootstrap".into(),
            role: "enroll".into(),
        })
        .unwrap()
        .token;
    let host = Recording {
        kernel: kernel(),
        applied: Vec::new(),
        reverted: Vec::new(),
    };
    (enroll, tempfile::tempdir().unwrap(), host)
}

fn kernel() -> KernelId {
    KernelId {
        release: "6.1.0-56-amd64".into(),
        build_id: "eb4fbcd037e7253717950bf2b93bd5566f47c56f".into(),
    }
}

fn agent(fleet: &Fleet, state: &Path, enroll: Option<String>) -> AgentConfig {
    AgentConfig {
        server: fleet.url.clone(),
        ca: None,
        enroll_token: enroll,
        state_dir: state.to_path_buf(),
        hostname: "web1".into(),
        labels: BTreeMap::from([("ring".to_string(), "canary".to_string())]),
        interval: Duration::from_secs(1),
        pinned_keys: Vec::new(),
    }
}

#[test]
fn an_agent_applies_the_signed_level_once_and_survives_restarts_and_outages() {
    let mut fleet = Fleet::start();
    let admin = fleet.admin();
    let (enroll, state, mut host) = newcomer(&admin);

    // Not enrolled and no token: a clear error, nothing written.
    let err = graft_agent::check_in(
        &agent(&fleet, state.path(), None),
        &mut host,
        graft_agent::now_ms(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not enrolled"), "{err}");
    assert!(AgentState::load(state.path()).unwrap().is_none());

    let config = agent(&fleet, state.path(), Some(enroll));
    let first = graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    assert!(first.enrolled && first.actions.is_empty(), "{first:?}");

    fleet.publish(&kernel(), 1, &fleet.publisher_key()).unwrap();
    let stream = kernel().stream();
    admin
        .assign(&Assign {
            stream: stream.clone(),
            level: Some(1),
            selector: Some("ring=canary".into()),
        })
        .unwrap();

    let applied = graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    assert_eq!(applied.actions, ["applied level 1"]);
    assert_eq!(host.applied.len(), 1);
    assert_eq!(host.applied[0].1, b"\x7fELF module of level 1");
    assert!(
        graft_manifest::manifest_path(&host.applied[0].0).is_file(),
        "the manifest is beside the module"
    );

    // Unchanged: a 304, nothing applied again, also after a restart of the agent.
    let again = graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    assert!(again.unchanged && again.actions.is_empty(), "{again:?}");
    let restarted = agent(&fleet, state.path(), None);
    let after_restart =
        graft_agent::check_in(&restarted, &mut host, graft_agent::now_ms()).unwrap();
    assert!(after_restart.actions.is_empty(), "{after_restart:?}");
    assert_eq!(host.applied.len(), 1);

    // The server reports the host at level 1.
    let hosts = admin.hosts(&Default::default()).unwrap();
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].level, Some(1));
    assert_eq!(hosts[0].desired, Some(1));

    // A level signed by a key the fleet does not trust never reaches the host.
    let stranger = graft_protocol::trust::generate_key();
    let refused = fleet.publish(&kernel(), 2, &stranger).unwrap_err();
    assert!(refused.to_string().contains("refused"), "{refused}");

    // Level 2, then "none": the agent reverts what it applied.
    fleet.publish(&kernel(), 2, &fleet.publisher_key()).unwrap();
    admin
        .assign(&Assign {
            stream: stream.clone(),
            level: Some(2),
            selector: None,
        })
        .unwrap();
    let second = graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    assert_eq!(second.actions, ["applied level 2"]);
    admin
        .assign(&Assign {
            stream: stream.clone(),
            level: None,
            selector: None,
        })
        .unwrap();
    let reverted = graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    assert_eq!(reverted.actions, ["reverted level 2"]);
    assert_eq!(host.reverted, ["fix2"]);

    // The server goes away: a transient error, and the host is left exactly as it was.
    admin
        .assign(&Assign {
            stream,
            level: Some(2),
            selector: None,
        })
        .unwrap();
    graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    let before = (host.applied.len(), host.reverted.len());
    fleet.stop();
    let away = graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap_err();
    assert!(away.is_transient(), "{away}");
    assert_eq!(
        (host.applied.len(), host.reverted.len()),
        before,
        "nothing applied or reverted while the server is away"
    );
    let kept = AgentState::load(state.path()).unwrap().unwrap();
    assert_eq!(kept.applied.map(|a| a.level), Some(2));
}

#[test]
fn an_agent_refuses_a_level_its_pinned_key_did_not_sign() {
    let fleet = Fleet::start();
    let admin = fleet.admin();
    let (enroll, state, mut host) = newcomer(&admin);
    // The host was given its publisher key out of band (--pin-key), and this server's levels
    // are signed by another: as if the server had been replaced by one holding its own key.
    let other = graft_protocol::trust::generate_key();
    let mut config = agent(&fleet, state.path(), Some(enroll));
    config.pinned_keys = vec![hex::encode(other.verifying_key().as_bytes())];
    graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    let pinned = AgentState::load(state.path()).unwrap().unwrap();
    assert_eq!(
        pinned.keys, config.pinned_keys,
        "the pinned key, not the server's"
    );

    fleet.publish(&kernel(), 1, &fleet.publisher_key()).unwrap();
    admin
        .assign(&Assign {
            stream: kernel().stream(),
            level: Some(1),
            selector: None,
        })
        .unwrap();
    let done = graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    assert_eq!(done.actions.len(), 1);
    assert!(
        done.actions[0].starts_with("refused level 1")
            && done.actions[0].contains("not signed by a key this host trusts"),
        "{:?}",
        done.actions
    );
    assert!(host.applied.is_empty(), "nothing loaded");
    // Not retried every interval while the desired state is unchanged.
    let later = graft_agent::check_in(&config, &mut host, graft_agent::now_ms()).unwrap();
    assert!(later.actions.is_empty(), "{later:?}");
}
