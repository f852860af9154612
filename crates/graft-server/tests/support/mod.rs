//! What the API tests share: a fleet (a data directory made by `init`, on SQLite or on a
//! PostgreSQL database), the real server started on 127.0.0.1 in a runtime of its own, and a
//! blocking HTTP client (ureq, as the agent and the CLI use) that the test thread drives.

#![allow(dead_code, reason = "each test binary uses a part of the support")]

pub mod postgres;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use graft_manifest::{Digest256, Manifest, ManifestKernel};
use graft_protocol::api::{
    ApiError, EnrollRequest, EnrollResponse, NewToken, Publish, TokenCreated,
};
use graft_protocol::trust::{signing_key_from_hex, Level, SignedLevel};
use graft_protocol::KernelId;
use graft_server::{files, RunningServer, ServerConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Where a suite's fleets keep their data.
#[derive(Clone, Copy)]
pub enum Db<'a> {
    /// SQLite in the data directory.
    Sqlite,
    /// A new database on this cluster for every fleet.
    Postgres(&'a postgres::Cluster),
}

impl Db<'_> {
    fn fresh(&self) -> Option<String> {
        match self {
            Db::Sqlite => None,
            Db::Postgres(cluster) => Some(cluster.create_database()),
        }
    }
}

/// A server's data directory and what `init` gave.
pub struct Fleet {
    _tmp: tempfile::TempDir,
    pub data: PathBuf,
    /// The admin token `init` wrote.
    pub admin: String,
    /// The publisher key `init` wrote.
    pub publisher: SigningKey,
    /// `None`: SQLite in `data`.
    pub database: Option<String>,
}

impl Fleet {
    pub fn new(db: Db<'_>) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("server");
        let report = graft_server::init(&data).unwrap();
        let admin = std::fs::read_to_string(&report.admin_token)
            .unwrap()
            .trim()
            .to_string();
        let publisher =
            signing_key_from_hex(&std::fs::read_to_string(&report.publisher_private_key).unwrap())
                .unwrap();
        Self {
            _tmp: tmp,
            data,
            admin,
            publisher,
            database: db.fresh(),
        }
    }

    fn config(&self) -> ServerConfig {
        let mut config = ServerConfig::new(&self.data, "127.0.0.1:0".parse().unwrap());
        config.database = self.database.clone();
        // Long: a test sees exactly when check-in times are written (at shutdown).
        config.last_seen_flush = Duration::from_secs(3600);
        // Every check-in's time written when flushed, as the tests compare them.
        config.last_seen_resolution = Duration::ZERO;
        // Short: rollouts in tests bake for fractions of a second.
        config.rollout_tick = Duration::from_millis(100);
        config
    }

    /// A server over plain HTTP on loopback.
    pub fn start(&self) -> Server {
        let mut config = self.config();
        config.insecure_http = true;
        Server::start(config, None)
    }

    /// A server over TLS, with a client that trusts the fleet's CA.
    pub fn start_tls(&self) -> Server {
        let ca = std::fs::read(self.data.join(files::CA)).unwrap();
        Server::start(self.config(), Some(ca))
    }

    /// The database URL, for looking at what the server stored.
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data.join(files::DATABASE).display()),
        }
    }

    /// An integer a query of the database answers.
    pub fn sql_i64(&self, sql: &str) -> i64 {
        let url = self.database_url();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Row as _;
                sqlx::any::install_default_drivers();
                let pool = sqlx::any::AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .unwrap();
                let row = sqlx::query(&sql).fetch_one(&pool).await.unwrap();
                let v: i64 = row.try_get(0).unwrap();
                pool.close().await;
                v
            })
        })
        .join()
        .unwrap()
    }
}

/// A running server, stopped on drop.
pub struct Server {
    running: Option<RunningServer>,
    pub http: Client,
    runtime: tokio::runtime::Runtime,
}

impl Server {
    fn start(config: ServerConfig, ca: Option<Vec<u8>>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let tls = ca.is_some();
        let running = runtime.block_on(graft_server::start(config)).unwrap();
        let scheme = if tls { "https" } else { "http" };
        let host = if tls { "localhost" } else { "127.0.0.1" };
        let base = format!("{scheme}://{host}:{}", running.addr().port());
        Self {
            running: Some(running),
            http: Client::new(base, ca.as_deref()),
            runtime,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.running.as_ref().unwrap().addr()
    }

    /// Stops it (and writes pending check-in times).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.block_on(running.shutdown()).unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A blocking client of one server.
pub struct Client {
    agent: ureq::Agent,
    pub base: String,
}

/// An answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: ureq::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as `T`, after checking the status.
    pub fn json<T: DeserializeOwned>(&self, status: u16) -> T {
        self.status(status);
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Checks the status.
    pub fn status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "answer: {}",
            String::from_utf8_lossy(&self.body)
        );
        self
    }

    /// The error body, after checking the status and kind.
    pub fn error(&self, status: u16, kind: &str) -> ApiError {
        let e: ApiError = self.json(status);
        assert_eq!(e.error, kind, "{e:?}");
        e
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

impl Client {
    pub fn new(base: String, ca: Option<&[u8]>) -> Self {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect is an answer to look at (the dashboard's sign-in), not to follow.
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(120)));
        if let Some(ca) = ca {
            let cert = ureq::tls::Certificate::from_pem(ca).unwrap();
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
                    .build(),
            );
        }
        Self {
            agent: ureq::Agent::new_with_config(config.build()),
            base,
        }
    }

    /// Any request; `headers` beside the bearer token.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, ureq::Error> {
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let typed = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        let response = match body {
            Some(body) if typed => self.agent.run(builder.body(body).unwrap())?,
            Some(body) => self.agent.run(
                builder
                    .header("content-type", "application/json")
                    .body(body)
                    .unwrap(),
            )?,
            None => self.agent.run(builder.body(()).unwrap())?,
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .with_config()
            .limit(128 << 20)
            .read_to_vec()?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.request("GET", path, token, None, &[]).unwrap()
    }

    pub fn post<T: Serialize>(&self, path: &str, token: Option<&str>, body: &T) -> Answer {
        self.request(
            "POST",
            path,
            token,
            Some(serde_json::to_vec(body).unwrap()),
            &[],
        )
        .unwrap()
    }

    pub fn post_raw(&self, path: &str, token: Option<&str>, body: &[u8]) -> Answer {
        self.request("POST", path, token, Some(body.to_vec()), &[])
            .unwrap()
    }

    /// A new token of `role`.
    pub fn token(&self, admin: &str, name: &str, role: &str) -> String {
        let made: TokenCreated = self
            .post(
                "/v1/tokens",
                Some(admin),
                &NewToken {
                    name: name.into(),
                    role: role.into(),
                },
            )
            .json(200);
        assert_eq!(made.role, role);
        made.token
    }

    /// Enrolls a host with labels; its id and credential.
    pub fn enroll(
        &self,
        enroll_token: &str,
        hostname: &str,
        labels: &[(&str, &str)],
        kernel: &KernelId,
    ) -> EnrollResponse {
        let request = EnrollRequest {
            hostname: hostname.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            kernel: kernel.clone(),
        };
        self.post("/v1/enroll", Some(enroll_token), &request)
            .json(200)
    }
}

/// The kernel most tests run.
pub fn kernel() -> KernelId {
    KernelId {
        release: "6.1.0-56-amd64".into(),
        build_id: "eb4fbcd037e7253717950bf2b93bd5566f47c56f".into(),
    }
}

/// Another build.
pub fn other_kernel() -> KernelId {
    KernelId {
        release: "6.1.0-57-amd64".into(),
        build_id: "0123456789abcdef0123456789abcdef01234567".into(),
    }
}

/// What a level is made of before signing; tests damage one part at a time.
#[derive(Clone)]
pub struct LevelParts {
    pub level: Level,
    pub module: Vec<u8>,
    pub manifest: Manifest,
    pub allow_dropped_patches: bool,
}

impl LevelParts {
    /// A real-looking level of `kernel()`'s stream (the module bytes are not an ELF file:
    /// the server does not parse them).
    pub fn new(level: u32, version: u64, patches: &[&str]) -> Self {
        let module = format!("\x7fELF not really: the module of level {level}").into_bytes();
        let sha = graft_manifest::sha256(&module);
        let k = kernel();
        let manifest = Manifest {
            name: format!("graft_fix{level}"),
            kernel: ManifestKernel {
                target: "debian:6.1.0-56-amd64".into(),
                release: k.release.clone(),
                build_id: k.build_id.clone(),
            },
            replace: true,
            set: None,
            functions: vec![],
            new_functions: vec![],
            patches: patches
                .iter()
                .map(|p| Digest256 {
                    file: format!("{p}.patch"),
                    sha256: p.to_string(),
                })
                .collect(),
            module: Digest256 {
                file: format!("graft_fix{level}.ko"),
                sha256: sha.clone(),
            },
            graft_version: "0.1.0".into(),
        };
        let level = Level {
            stream: k.stream(),
            kernel: k,
            level,
            version,
            module_name: manifest.name.clone(),
            module_sha256: sha,
            manifest_sha256: String::new(),
            patches: patches.iter().map(|p| p.to_string()).collect(),
            expires: now_secs() + 86_400,
            probes: Default::default(),
        };
        Self {
            level,
            module,
            manifest,
            allow_dropped_patches: false,
        }
    }

    /// Signs with `key` (filling in the manifest's digest unless a test set one).
    pub fn sign(&self, key: &SigningKey) -> Publish {
        let manifest = serde_json::to_string(&self.manifest).unwrap();
        let mut level = self.level.clone();
        if level.manifest_sha256.is_empty() {
            level.manifest_sha256 = graft_manifest::sha256(manifest.as_bytes());
        }
        Publish {
            signed: SignedLevel::sign(&level, key),
            module: base64::engine::general_purpose::STANDARD.encode(&self.module),
            manifest,
            allow_dropped_patches: self.allow_dropped_patches,
        }
    }
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The path of a stream's levels.
pub fn levels_path(stream: &str) -> String {
    format!("/v1/streams/{stream}/levels")
}
