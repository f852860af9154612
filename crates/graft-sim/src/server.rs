//! The simulation's own server: `graft server init` and `graft server run` on loopback, as
//! separate processes, stopped (SIGTERM, by PID) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::{SimError, Target};

/// A `graft server run` the simulation started.
#[derive(Debug)]
pub struct OwnServer {
    child: Child,
    target: Target,
}

impl OwnServer {
    /// Initializes a data directory in `dir` and serves it with plain HTTP on a free loopback
    /// port, using `graft` (the binary) and, if given, a PostgreSQL database.
    pub fn start(
        graft: &Path,
        dir: &Path,
        database: Option<&str>,
        rollout_tick_ms: Option<u64>,
        gate_hosts: Option<u64>,
    ) -> Result<Self, SimError> {
        let data = dir.join("server");
        let init = Command::new(graft)
            .args(["server", "init", "--data"])
            .arg(&data)
            .output()
            .map_err(|e| SimError::Server(format!("running {}: {e}", graft.display())))?;
        if !init.status.success() {
            return Err(SimError::Server(
                String::from_utf8_lossy(&init.stderr).trim().to_string(),
            ));
        }
        let mut command = Command::new(graft);
        command
            .args([
                "server",
                "run",
                "--insecure-http",
                "--listen",
                "127.0.0.1:0",
                "--data",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(url) = database {
            command.args(["--database", url]);
        }
        if let Some(ms) = rollout_tick_ms {
            command.args(["--rollout-tick-ms", &ms.to_string()]);
        }
        if let Some(n) = gate_hosts {
            command.args(["--gate-hosts", &n.to_string()]);
        }
        let mut child = command
            .spawn()
            .map_err(|e| SimError::Server(format!("starting the server: {e}")))?;
        let url = match listening_url(&mut child) {
            Some(url) => url,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SimError::Server("the server exited before it listened (run `graft server run` by hand to see why)".into()));
            }
        };
        let token = std::fs::read_to_string(data.join("admin.token"))
            .map_err(|e| SimError::Server(format!("reading the admin token: {e}")))?
            .trim()
            .to_string();
        let target = Target {
            url,
            token,
            ca: None,
            pid: Some(child.id()),
            database_file: database.is_none().then(|| data.join("graft.db")),
            database_url: database.map(str::to_string),
            signing_key: Some(data.join("publisher.key")),
            database: if database.is_some() {
                "postgres"
            } else {
                "sqlite"
            }
            .to_string(),
        };
        Ok(Self { child, target })
    }

    /// Where it is.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Its data directory's database file, for SQLite.
    pub fn database_file(&self) -> Option<&PathBuf> {
        self.target.database_file.as_ref()
    }
}

/// Reads the server's log until it says where it listens; keeps draining it afterwards so the
/// server never blocks on a full pipe.
fn listening_url(child: &mut Child) -> Option<String> {
    let stderr = child.stderr.take()?;
    let mut lines = BufReader::new(stderr).lines();
    let url = lines.by_ref().map_while(Result::ok).find_map(|line| {
        line.split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    })?;
    std::thread::spawn(move || lines.for_each(drop));
    Some(url)
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        // SIGTERM by its PID: a graceful stop that flushes what the server holds.
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
        }
        let _ = self.child.wait();
    }
}
