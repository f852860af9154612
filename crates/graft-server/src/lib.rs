//! `graft server`: the fleet's control plane, as a library the `graft` binary calls.
//!
//! - [`init`] makes a data directory: the publisher key pair, the TLS CA and certificate, the
//!   first admin token, the SQLite database.
//! - [`start`] (or [`serve`]) runs the HTTP API of [`graft_protocol::api`] over it, on SQLite
//!   in the directory or on a PostgreSQL database that any number of replicas share.
//!
//! Replicas hold no authoritative state: everything is in the database, including module
//! files; the only memory is a buffer of hosts' check-in times (`lastseen`), flushed every
//! few seconds. Where a server may listen is restricted: plain HTTP only on loopback and only
//! when asked for; beyond loopback only with TLS and an explicit flag.
//!
//! Module layout: [`init`] (the directory), `store` (the database), `auth` (who calls),
//! `extract` and `error` (every failure an `ApiError`), `routes` (the handlers), `openapi`,
//! `tls`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod auth;
mod checkins;
mod dashboard;
mod error;
mod extract;
mod group;
mod init;
mod lastseen;
mod metrics;
mod openapi;
mod rollouts;
mod routes;
mod store;
mod tls;

pub use error::ServerError;
pub use init::{init, InitReport};

use lastseen::LastSeen;
use store::{Backend, Store};

/// The files of a data directory.
pub mod files {
    /// The SQLite database.
    pub const DATABASE: &str = "graft.db";
    /// The publisher's private key, hex (mode 0600): move it to the publisher's machine.
    pub const PUBLISHER_KEY: &str = "publisher.key";
    /// The publisher's public key, hex: trusted by the server and pinned by hosts.
    pub const PUBLISHER_PUB: &str = "publisher.pub";
    /// The fleet's CA certificate, which hosts and operators trust.
    pub const CA: &str = "ca.pem";
    /// The server's certificate.
    pub const SERVER_CERT: &str = "server.pem";
    /// The server's private key (mode 0600).
    pub const SERVER_KEY: &str = "server.key";
    /// The first admin token (mode 0600).
    pub const ADMIN_TOKEN: &str = "admin.token";
}

/// [`ServerConfig::last_seen_resolution`] unless set: half the default lost-after of a
/// rollout, so a host is counted lost 10 to 15 minutes after its last check-in, and a host
/// checking in every minute rewrites its row every sixth.
pub const DEFAULT_LAST_SEEN_RESOLUTION: Duration = Duration::from_secs(300);

/// How to run a server.
#[derive(Clone)]
pub struct ServerConfig {
    /// The data directory made by [`init`].
    pub data: PathBuf,
    /// Where to listen (port 0: any free port, see [`RunningServer::addr`]).
    pub listen: SocketAddr,
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`; `None`: SQLite in the data directory.
    pub database: Option<String>,
    /// Plain HTTP instead of TLS: only on a loopback address.
    pub insecure_http: bool,
    /// Listen on an address other than loopback (TLS only).
    pub allow_remote: bool,
    /// How often hosts' check-in times are written.
    pub last_seen_flush: Duration,
    /// How far a host's check-in time must have moved on before it is written again: with
    /// the flush interval, what `last_seen_ms` is accurate to. The lost-host gate allows for
    /// it (a host counts as lost once silent for the rollout's lost-after plus this).
    pub last_seen_resolution: Duration,
    /// How stale, at most, the check-in answers this replica keeps in memory may be against
    /// another replica's writes (its own writes are seen at once). Zero: checked at every
    /// check-in.
    pub checkin_cache: Duration,
    /// How often running rollouts are moved on (a step each: gates checked, hosts moved).
    pub rollout_tick: Duration,
    /// How strict rollout gates are.
    pub gates: graft_rollout::GateConfig,
}

impl ServerConfig {
    /// A configuration with TLS, SQLite, loopback only and a 5 s last-seen flush.
    pub fn new(data: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data: data.into(),
            listen,
            database: None,
            insecure_http: false,
            allow_remote: false,
            last_seen_flush: Duration::from_secs(5),
            last_seen_resolution: DEFAULT_LAST_SEEN_RESOLUTION,
            checkin_cache: Duration::from_secs(1),
            rollout_tick: Duration::from_secs(5),
            gates: graft_rollout::GateConfig::default(),
        }
    }
}

impl std::fmt::Debug for ServerConfig {
    // By hand: the database URL may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("data", &self.data)
            .field("listen", &self.listen)
            .field("database", &self.database.as_deref().map(describe_database))
            .field("insecure_http", &self.insecure_http)
            .field("allow_remote", &self.allow_remote)
            .field("last_seen_flush", &self.last_seen_flush)
            .field("last_seen_resolution", &self.last_seen_resolution)
            .field("checkin_cache", &self.checkin_cache)
            .field("rollout_tick", &self.rollout_tick)
            .field("gates", &self.gates)
            .finish()
    }
}

/// What the handlers share.
#[derive(Debug, Clone)]
pub(crate) struct AppState(Arc<Shared>);

#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Store,
    pub last_seen: Arc<LastSeen>,
    pub checkins: checkins::CheckinCache,
    /// The writers that group-commit hosts' reports and enrollments.
    pub reports: group::GroupCommit<group::ReportWrite>,
    pub enrollments: group::GroupCommit<store::NewHost>,
    pub counters: metrics::Counters,
    /// Served over TLS (the dashboard's cookie is then `Secure`).
    pub tls: bool,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// A server that is listening.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    database: &'static str,
    handle: axum_server::Handle,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    flusher: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
    stop_flusher: tokio::sync::watch::Sender<bool>,
    store: Store,
}

impl RunningServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `sqlite` or `postgres`.
    pub fn database(&self) -> &'static str {
        self.database
    }

    /// Stops accepting, lets requests in flight finish (10 s at most), writes the pending
    /// check-in times and closes the database.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.handle.graceful_shutdown(Some(Duration::from_secs(10)));
        let served = self.server.await;
        let _ = self.stop_flusher.send(true);
        let flushed = self.flusher.await;
        let _ = self.driver.await;
        self.store.close().await;
        finished(served)?;
        flushed.map_err(|e| ServerError::Task(e.to_string()))
    }
}

fn finished(
    served: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> Result<(), ServerError> {
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServerError::Serve(e)),
        Err(e) => Err(ServerError::Task(e.to_string())),
    }
}

/// Starts a server and returns once it listens.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    // 1. Where it may listen, before anything else.
    check_listen(&config)?;
    // 2. TLS from the data directory (unless plain HTTP on loopback was asked for).
    let tls = if config.insecure_http {
        None
    } else {
        for file in [files::SERVER_CERT, files::SERVER_KEY] {
            if !config.data.join(file).is_file() {
                return Err(ServerError::NotInitialized {
                    path: config.data.clone(),
                    missing: file,
                });
            }
        }
        Some(tls::server_config(
            &config.data.join(files::SERVER_CERT),
            &config.data.join(files::SERVER_KEY),
        )?)
    };
    // 3. The database: connect, migrate, seed from the data directory.
    let url = match &config.database {
        Some(url) => url.clone(),
        None => init::sqlite_url(&config.data)?,
    };
    let described = describe_database(&url);
    let backend = Backend::of_url(&url).ok_or_else(|| ServerError::DatabaseUrl {
        url: described.clone(),
    })?;
    if config.database.is_none() && !config.data.join(files::DATABASE).is_file() {
        return Err(ServerError::NotInitialized {
            path: config.data.clone(),
            missing: files::DATABASE,
        });
    }
    let store = Store::connect(&url, backend)
        .await
        .map_err(|cause| ServerError::Database {
            database: described.clone(),
            cause,
        })?
        .with_seen_resolution(config.last_seen_resolution);
    store
        .migrate()
        .await
        .map_err(|cause| ServerError::Migration {
            database: described.clone(),
            cause,
        })?;
    init::seed(&store, &config.data, &described).await?;
    if config.data.join(files::PUBLISHER_KEY).exists() {
        tracing::warn!(
            path = %config.data.join(files::PUBLISHER_KEY).display(),
            "the publisher's private key is still in the server's directory: move it to the publisher's machine (the server never needs it)"
        );
    }
    // 4. Listen.
    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|cause| ServerError::Bind {
            addr: config.listen,
            cause,
        })?;
    let bind_error = |cause| ServerError::Bind {
        addr: config.listen,
        cause,
    };
    listener.set_nonblocking(true).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    // 5. Serve, and flush check-in times in the background.
    let last_seen = Arc::new(LastSeen::default());
    let state = AppState(Arc::new(Shared {
        store: store.clone(),
        last_seen: last_seen.clone(),
        checkins: checkins::CheckinCache::new(config.checkin_cache),
        reports: group::GroupCommit::start(store.clone()),
        enrollments: group::GroupCommit::start(store.clone()),
        counters: metrics::Counters::default(),
        tls: !config.insecure_http,
    }));
    let app = routes::router(state.clone()).into_make_service();
    let handle = axum_server::Handle::new();
    let server = match tls {
        Some(tls) => {
            let server = axum_server::from_tcp_rustls(
                listener,
                axum_server::tls_rustls::RustlsConfig::from_config(tls),
            )
            .handle(handle.clone());
            tokio::spawn(server.serve(app))
        }
        None => {
            let server = axum_server::from_tcp(listener).handle(handle.clone());
            tokio::spawn(server.serve(app))
        }
    };
    let (stop_flusher, stopped) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(lastseen::flush_until(
        last_seen,
        store.clone(),
        config.last_seen_flush,
        stopped.clone(),
    ));
    let driver = tokio::spawn(rollouts::drive_until(
        state,
        config.gates.clone(),
        config.rollout_tick,
        stopped,
    ));
    tracing::info!(%addr, database = described, tls = !config.insecure_http, "graft server listening");
    Ok(RunningServer {
        addr,
        database: backend.name(),
        handle,
        server,
        flusher,
        driver,
        stop_flusher,
        store,
    })
}

/// Runs a server until `shutdown` completes (e.g. [`shutdown_signal`]), or until it fails.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let mut running = start(config).await?;
    tokio::select! {
        () = shutdown => running.shutdown().await,
        served = &mut running.server => {
            let _ = running.stop_flusher.send(true);
            let _ = (&mut running.flusher).await;
            let _ = (&mut running.driver).await;
            running.store.close().await;
            finished(served)
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminate = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
}

/// The project's rule on where servers listen: loopback, unless TLS and `allow_remote`.
fn check_listen(config: &ServerConfig) -> Result<(), ServerError> {
    let loopback = config.listen.ip().is_loopback();
    let refuse = |reason| {
        Err(ServerError::ListenRefused {
            addr: config.listen,
            reason,
        })
    };
    match (config.insecure_http, loopback, config.allow_remote) {
        (true, false, _) => refuse("plain HTTP is only allowed on a loopback address (127.0.0.1, ::1): drop --insecure-http to use TLS"),
        (false, false, false) => refuse("not a loopback address: listening beyond this machine needs the explicit allow-remote flag"),
        _ => Ok(()),
    }
}

/// A database URL fit for logs and errors: no user, password or parameters.
fn describe_database(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.split('?').next().unwrap_or_default().to_string();
    };
    let rest = rest.split('?').next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if path.is_empty() {
        format!("{scheme}://{host}")
    } else {
        format!("{scheme}://{host}/{path}")
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addr: &str, insecure: bool, remote: bool) -> ServerConfig {
        let mut c = ServerConfig::new("/nonexistent", addr.parse().unwrap());
        c.insecure_http = insecure;
        c.allow_remote = remote;
        c
    }

    #[test]
    fn plain_http_only_on_loopback_and_remote_only_with_tls_and_the_flag() {
        assert!(check_listen(&config("127.0.0.1:0", true, false)).is_ok());
        assert!(check_listen(&config("[::1]:0", true, false)).is_ok());
        assert!(check_listen(&config("127.0.0.1:0", false, false)).is_ok());
        assert!(check_listen(&config("0.0.0.0:0", true, true)).is_err());
        assert!(check_listen(&config("0.0.0.0:0", false, false)).is_err());
        assert!(check_listen(&config("0.0.0.0:0", false, true)).is_ok());
    }

    #[test]
    fn database_urls_are_logged_without_credentials() {
        assert_eq!(
            describe_database("postgres://u:secret@db:5432/graft?sslmode=disable"),
            "postgres://db:5432/graft"
        );
        assert_eq!(
            describe_database("sqlite:///srv/graft.db?mode=rwc"),
            "sqlite:///srv/graft.db"
        );
    }

    #[test]
    fn a_server_without_a_directory_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(start(config("127.0.0.1:0", true, false)))
            .unwrap_err();
        assert!(matches!(err, ServerError::NotInitialized { .. }), "{err}");
    }
}
