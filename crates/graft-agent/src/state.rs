//! What the agent remembers across restarts and server outages: its identity, the keys it
//! pinned at enrollment, the newest signed version it saw per stream (so an older one is a
//! rollback), the last desired state with its ETag, what it applied, and the outcomes the
//! server has not yet acknowledged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use graft_protocol::api::{Desired, Outcome};

use crate::AgentError;

/// The level the agent applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppliedLevel {
    /// The stream.
    pub stream: String,
    /// The level.
    pub level: u32,
    /// Its signed version.
    pub version: u64,
    /// The livepatch module's name.
    pub module_name: String,
}

/// The agent's persistent state (`STATE_DIR/agent.json`).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AgentState {
    /// The server enrolled with.
    pub server: String,
    /// The host's id.
    pub host_id: String,
    /// The host's credential.
    pub credential: String,
    /// Publisher keys pinned at enrollment (hex).
    pub keys: Vec<String>,
    /// Newest signed version seen, per stream.
    #[serde(default)]
    pub seen_version: BTreeMap<String, u64>,
    /// The last desired state and its ETag.
    pub desired: Option<Desired>,
    /// Its ETag.
    pub etag: Option<String>,
    /// The ETag of a desired state whose action failed or was refused: not retried until the
    /// desired state changes.
    #[serde(default)]
    pub failed_etag: Option<String>,
    /// What the agent applied.
    pub applied: Option<AppliedLevel>,
    /// The kernel log's sequence number at the last apply: kernel errors after it are reported.
    pub kmsg_seq_at_apply: Option<u64>,
    /// Outcomes not yet acknowledged by the server.
    #[serde(default)]
    pub pending: Vec<Outcome>,
    /// The kernel's counters at the last report, and when: the next health sample is the
    /// rates since.
    #[serde(default)]
    pub counters: Option<(u64, crate::health::Counters)>,
    /// The boot the agent last ran in.
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The agent was stopped cleanly in that boot (`graft agent --stopping`, the unit's
    /// ExecStop): a new boot without it was an unclean reboot.
    #[serde(default)]
    pub clean_stop: bool,
    /// An unclean reboot with a level applied, not yet reported.
    #[serde(default)]
    pub unclean_reboot: bool,
    /// The inventory the server last acknowledged, and when: an unchanged one is not sent
    /// again unless the server asks for health or an hour passed.
    #[serde(default)]
    pub reported: Option<(u64, graft_protocol::api::Inventory)>,
}

impl AgentState {
    /// The state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("agent.json")
    }

    /// Loads the state, or `None` before enrollment.
    pub fn load(dir: &Path) -> Result<Option<Self>, AgentError> {
        let path = Self::path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| AgentError::State {
                    path,
                    reason: format!("not an agent state file ({e}); move it away to enroll again"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(AgentError::State {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Saves the state durably: a temporary file, synced, renamed over the old one, so a crash
    /// leaves the old state or the new one, never a torn file.
    pub fn save(&self, dir: &Path) -> Result<(), AgentError> {
        use std::io::Write as _;
        let path = Self::path(dir);
        let fail = |e: std::io::Error| AgentError::State {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let tmp = dir.join(".agent.json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| AgentError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode_private()
                .open(&tmp)
                .map_err(fail)?;
            file.write_all(&bytes).map_err(fail)?;
            file.sync_all().map_err(fail)?;
        }
        std::fs::rename(&tmp, &path).map_err(fail)?;
        Ok(())
    }
}

/// The credential in the state file is a secret: owner-only.
trait PrivateMode {
    fn mode_private(&mut self) -> &mut Self;
}

impl PrivateMode for std::fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt as _;
        self.mode(0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_restart_and_a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AgentState::load(dir.path()).unwrap().is_none());
        let mut state = AgentState {
            host_id: "h1".into(),
            ..Default::default()
        };
        state.seen_version.insert("s".into(), 4);
        state.save(dir.path()).unwrap();
        let again = AgentState::load(dir.path()).unwrap().unwrap();
        assert_eq!(again.seen_version.get("s"), Some(&4));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(AgentState::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(AgentState::path(dir.path()), b"{broken").unwrap();
        let err = AgentState::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("agent.json") && err.contains("enroll again"),
            "{err}"
        );
    }
}
