//! A throwaway PostgreSQL cluster for the tests: initdb into a temporary directory, listening
//! on 127.0.0.1 at a free port (its socket in the directory too), trust authentication, no
//! fsync; a new database per fleet; stopped and removed on drop. PostgreSQL refuses to run as
//! root, so as root the cluster runs as the `postgres` user (runuser) in a directory it owns.
//!
//! Not installed: the PostgreSQL tests fail saying to install it, unless
//! `GRAFT_TEST_NO_POSTGRES=1` says to skip them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Cluster {
    tmp: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    databases: AtomicU32,
}

/// Why there is no cluster.
pub enum Unavailable {
    /// Not installed and `GRAFT_TEST_NO_POSTGRES=1`: skip.
    Skip,
}

/// The cluster, or a skip; panics (a failed test) if PostgreSQL is missing and skipping was
/// not asked for, or if the cluster does not start.
pub fn cluster() -> Result<Cluster, Unavailable> {
    let Some(bin) = find_bin() else {
        if std::env::var("GRAFT_TEST_NO_POSTGRES").as_deref() == Ok("1") {
            eprintln!("PostgreSQL tests skipped: PostgreSQL is not installed and GRAFT_TEST_NO_POSTGRES=1");
            return Err(Unavailable::Skip);
        }
        panic!(
            "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin or on PATH): \
             install it (Debian: apt-get install postgresql) to run the PostgreSQL tests, \
             or set GRAFT_TEST_NO_POSTGRES=1 to skip them"
        );
    };
    Ok(Cluster::start(bin))
}

fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    // The newest version: directories are named by major version.
    found.sort_by_key(|b| {
        b.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(bin) = found.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start(bin: PathBuf) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("graft-pg-")
            .tempdir()
            .unwrap();
        let as_postgres = is_root();
        let cluster = Self {
            tmp,
            bin,
            port: free_port(),
            as_postgres,
            databases: AtomicU32::new(0),
        };
        std::fs::create_dir(cluster.socket_dir()).unwrap();
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.tmp.path())
                .status()
                .unwrap();
            assert!(
                status.success(),
                "chown of the cluster's directory to postgres failed"
            );
        }
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.pg_ctl_start();
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.tmp.path().join("socket")
    }

    /// Runs one of the cluster's programs (as postgres when we are root); panics with its
    /// output on failure.
    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let output = command
            .args(args)
            .current_dir(self.tmp.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}; log: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.tmp.path().join("log")).unwrap_or_default()
        );
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.socket_dir().display()
        );
        let data = self.data_dir();
        let log = self.tmp.path().join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "120",
                "-o",
                &options,
                "start",
            ],
        );
    }

    /// Stops the cluster, as an outage.
    pub fn stop(&self) {
        let data = self.data_dir();
        self.run("pg_ctl", &["-D", path(&data), "-m", "fast", "-w", "stop"]);
    }

    /// Starts it again on the same port.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }

    /// A new, empty database; its URL.
    pub fn create_database(&self) -> String {
        let name = format!("graft_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let port = self.port.to_string();
        let output = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", &name])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        if data.join("postmaster.pid").exists() {
            let pg_ctl = self.bin.join("pg_ctl");
            let mut command = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
                c
            } else {
                Command::new(&pg_ctl)
            };
            let _ = command
                .args(["-D", path(&data), "-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
