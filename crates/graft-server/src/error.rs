//! Errors, in two kinds: [`ServerError`] for the library's callers (`init`, `start`), and
//! [`Failure`] for what a request answers. Every request failure goes through [`Failure`], the
//! one place that maps it to an HTTP status and an [`ApiError`] body, so a client always gets
//! JSON it can parse, with a stable `error` kind and a message for a human.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use graft_protocol::api::ApiError;

/// Why the server could not be set up or run. Each says what and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file operation failed.
    #[error("{action} {}: {cause}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        cause: std::io::Error,
    },
    /// `init` was pointed at a directory that already holds a server.
    #[error("{}: already holds a graft server ({marker} is there): start it with `graft server`, or init another directory", path.display())]
    AlreadyInitialized {
        /// The directory.
        path: PathBuf,
        /// The file that shows it.
        marker: &'static str,
    },
    /// `init` was pointed at a directory with other things in it.
    #[error("{}: exists and is not empty: `graft server init` creates a directory of its own", path.display())]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The data directory lacks a file the server needs.
    #[error("{}: not a graft server directory ({missing} is missing): run `graft server init` first", path.display())]
    NotInitialized {
        /// The directory.
        path: PathBuf,
        /// The missing file.
        missing: &'static str,
    },
    /// A file the server reads is malformed.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Making the CA or the server certificate failed.
    #[error("generating the TLS certificates failed: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration could not be built from the certificate and key.
    #[error("TLS with {}: {reason}", path.display())]
    Tls {
        /// The certificate or key.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The `--database` URL is not one the server speaks.
    #[error("database URL {url:?} is not supported: use postgres://USER@HOST/DB, or none for SQLite in the data directory")]
    DatabaseUrl {
        /// The URL, password removed.
        url: String,
    },
    /// Connecting to or setting up the database failed.
    #[error("database {database}: {cause}")]
    Database {
        /// Which database (password removed).
        database: String,
        /// The failure.
        cause: sqlx::Error,
    },
    /// A schema migration failed.
    #[error("migrating database {database}: {cause}")]
    Migration {
        /// Which database (password removed).
        database: String,
        /// The failure.
        cause: sqlx::migrate::MigrateError,
    },
    /// The listen address breaks the rules on where a server may listen.
    #[error("refusing to listen on {addr}: {reason}")]
    ListenRefused {
        /// The address.
        addr: SocketAddr,
        /// Why, and what to do.
        reason: &'static str,
    },
    /// Binding the listen address failed.
    #[error("listening on {addr}: {cause}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The failure.
        cause: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("the server stopped: {0}")]
    Serve(std::io::Error),
    /// A task of the server panicked or was cancelled.
    #[error("a server task ended abnormally: {0}")]
    Task(String),
}

/// What a request answers when it fails: a status and an [`ApiError`] body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl Failure {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or breaks a rule; the message names the field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    /// 401: no credential, or one the server does not know (or revoked).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: a known credential without the right to do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", message)
    }

    /// 409: conflicts with what is stored (level or version ordering).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 413.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too-large", message)
    }

    /// 503: the database cannot be reached; the client should retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: a bug or corrupt data; details go to the log, not to the client.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The text the audit log records for a refused action.
    pub fn audit_text(&self) -> String {
        format!("{}: {}", self.kind, self.message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = ApiError {
            error: self.kind.to_string(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        if database_is_down(&e) {
            tracing::warn!(error = %e, "database unavailable");
            return Failure::unavailable(format!("the database is unavailable ({e}): retry later"));
        }
        tracing::error!(error = %e, "database error");
        Failure::internal("internal database error: see the server's log")
    }
}

/// Whether a database error means "cannot reach the database now" (503, retry) rather than a
/// bug (500): lost connections, a pool that timed out, a busy SQLite file, PostgreSQL shutting
/// down or refusing connections.
fn database_is_down(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
                code.parse::<u32>()
                    .is_ok_and(|n| n & 0xff == 5 || n & 0xff == 6)
            } else {
                // PostgreSQL: connection exceptions (08...), operator intervention (57P...).
                code.starts_with("08") || code.starts_with("57P")
            }
        }
        _ => false,
    }
}

/// Whether a database error is a unique-constraint violation (a concurrent write won).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
