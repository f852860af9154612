//! Storage: one code path over sqlx's `AnyPool` for SQLite (the default, a file in the data
//! directory) and PostgreSQL (shared by any number of server replicas).
//!
//! Why one path rather than a trait with two implementations: the schema and queries are kept
//! portable (TEXT and BIGINT, `$N` placeholders, `ON CONFLICT DO NOTHING`, ids made here), so
//! the same statements run on both, and the same test suite covers both. The only difference
//! is the module bytes' column type, substituted into the migration.
//!
//! Nothing here is cached: the database is the only authority, so replicas never disagree.
//! Integrity under concurrency comes from keys, not from read-then-write checks: a level number
//! and a version exist once per stream, an outcome once per host.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use graft_protocol::api::{
    AuditEntry, HostFilter, HostView, KernelView, LevelView, Outcome, Report, StreamView,
};
use graft_protocol::KernelId;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migrate, MigrateError, Migration, MigrationType};
use sqlx::{AnyPool, Row};

use crate::group::ReportWrite;

mod rollouts;

pub(crate) use rollouts::{HardFacts, HostSamples, RollBack, RolloutRow, Started, NAMED_HOSTS};

/// The database kind behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The kind of a database URL, if the server speaks it.
    pub fn of_url(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// Its name, as `/v1/health` reports it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The migrations, oldest first.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "schema", include_str!("../migrations/0001_schema.sql")),
    (
        2,
        "generation",
        include_str!("../migrations/0002_generation.sql"),
    ),
    (
        3,
        "rollouts",
        include_str!("../migrations/0003_rollouts.sql"),
    ),
    (
        4,
        "rollout indexes",
        include_str!("../migrations/0004_rollout_indexes.sql"),
    ),
    (
        5,
        "answer changes",
        include_str!("../migrations/0005_answer_changes.sql"),
    ),
    (
        6,
        "rollout counts",
        include_str!("../migrations/0006_rollout_counts.sql"),
    ),
    (
        7,
        "unsettled by rollout",
        include_str!("../migrations/0007_unsettled_by_rollout.sql"),
    ),
];

/// Bumps the generation for a write that may change any host's answer: replicas empty their
/// check-in caches (see [`crate::checkins`]). The right-hand sides read the old row.
const BUMP: &str = "UPDATE generation SET value = value + 1, flushed = value + 1 WHERE id = 1";

/// Bumps the generation for a write that changes only some hosts' answers; the same
/// transaction stamps those hosts with [`STAMP`], and replicas forget only them.
const BUMP_HOSTS: &str = "UPDATE generation SET value = value + 1 WHERE id = 1";

/// The assignment that stamps a host row with the generation [`BUMP_HOSTS`] made (run after it,
/// in the same transaction).
const STAMP: &str = "answer_gen = (SELECT value FROM generation WHERE id = 1)";

/// How long a request waits for a database connection before it answers 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bits of the kernel's taint mask that live patching itself sets (O: out-of-tree module,
/// E: unsigned module, K: live patched): they do not make a host unhealthy.
pub(crate) const EXPECTED_TAINT: u64 = (1 << 12) | (1 << 13) | (1 << 15);

/// Most hosts one last-seen statement updates. Not more: SQLite's driver looks each bound
/// parameter's name up in a list, so a statement's binding costs grow with its square.
const TOUCH_CHUNK: usize = 250;

/// Most hosts one last-seen transaction updates: the write turn is given up between them, so
/// that reports waiting for it are not held up by a flush that fell behind (a million hosts
/// written in one transaction held it for most of a minute).
const TOUCH_TRANSACTION: usize = 20_000;

/// The pool and its kind.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's writers take turns here (see [`Store::write_turn`]).
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// How far a host's check-in time must have moved on before it is written (see
    /// [`Store::with_seen_resolution`]), in ms.
    seen_resolution_ms: u64,
}

/// Who a bearer secret belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Principal {
    /// An operator or enroll token: its name and role.
    Token {
        name: String,
        role: String,
        revoked: bool,
    },
    /// A host credential.
    Host { id: String, revoked: bool },
}

/// What `/v1/host/desired` needs, read in one query.
#[derive(Debug, Clone)]
pub(crate) struct DesiredRow {
    pub host_id: String,
    pub stream: String,
    pub revoked: bool,
    /// The desired level and its version and signed JSON (both `None` if no level).
    pub level: Option<(u32, u64, String)>,
    /// The stream's running rollout samples this host's health.
    pub report_health: bool,
    /// With `report_health`: the version and signed JSON of the level that rollout moves
    /// hosts to (its probes).
    pub probes: Option<(u64, String)>,
}

/// The generation counter's row (see [`crate::checkins`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation {
    pub value: i64,
    /// The last generation at which any host's answer may have changed.
    pub flushed: i64,
}

/// A host as the report handler needs it.
#[derive(Debug, Clone)]
pub(crate) struct HostRow {
    pub id: String,
    pub kernel: KernelId,
    pub stream: String,
}

/// A stream's kernel and latest level, for publishing and assigning.
#[derive(Debug, Clone)]
pub(crate) struct StreamState {
    pub kernel: KernelId,
    pub latest: Option<LatestLevel>,
}

/// The newest level of a stream.
#[derive(Debug, Clone)]
pub(crate) struct LatestLevel {
    pub level: u32,
    pub version: u64,
    pub patches: Vec<String>,
}

/// A level to store, checked.
#[derive(Debug, Clone)]
pub(crate) struct NewLevel {
    /// The stream's kernel, when the stream is created by this publish.
    pub create_stream: Option<KernelId>,
    pub stream: String,
    pub level: u32,
    pub version: u64,
    pub module_name: String,
    pub module_sha256: String,
    pub module: Vec<u8>,
    pub manifest: String,
    pub patches: Vec<String>,
    pub signed_json: String,
    pub expires: u64,
    pub published_ms: u64,
    pub published_by: String,
}

/// A host to enroll.
#[derive(Debug, Clone)]
pub(crate) struct NewHost {
    pub id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    pub credential_hash: String,
    pub kernel: KernelId,
    pub now_ms: u64,
}

/// What an assignment did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AssignResult {
    /// This many hosts' desired level changed.
    Changed(u64),
    /// The selector matched no host of the stream.
    NoMatch,
}

/// A value to bind to a statement built at run time.
enum Arg {
    Text(String),
    Int(i64),
}

impl Store {
    /// Connects, and for SQLite makes the file use WAL (a property of the file, so once is
    /// enough): readers then never wait for the writer.
    pub async fn connect(url: &str, backend: Backend) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let max = match backend {
            // One writer at a time anyway; a few readers.
            Backend::Sqlite => 4,
            Backend::Postgres => 16,
        };
        let pool = AnyPoolOptions::new()
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // In WAL mode a commit need not wait for the disk: the database stays
                        // consistent after a crash, and what the last moments before a power
                        // loss wrote is at most lost (agents resend unacknowledged outcomes).
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        // Pages read through a map of the file, not copied into each
                        // connection's 2 MB cache: a million hosts' tables are read from the
                        // kernel's page cache in place, shared by every connection.
                        sqlx::query("PRAGMA mmap_size = 1073741824")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .max_connections(max)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        if backend == Backend::Sqlite {
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        Ok(Self {
            pool,
            backend,
            writer: Default::default(),
            seen_resolution_ms: 0,
        })
    }

    /// Writes a host's check-in time only once it is more than `resolution` past the written
    /// one. Check-ins are the fleet's most frequent event and last-seen its hottest write: a
    /// million hosts checking in every minute rewrite 17,000 host rows a second, which on
    /// SQLite takes most of the one write lock from reports. Only the lost-host gate needs the
    /// time, and only to minutes, so it counts a host silent once it is `lost_after` plus
    /// this resolution behind (see [`Store::silent_since`]).
    pub fn with_seen_resolution(mut self, resolution: std::time::Duration) -> Self {
        self.seen_resolution_ms = u64::try_from(resolution.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// The last-seen time before which a host has been silent for longer than `lost_after_ms`
    /// at `now_ms`, whatever times the resolution left unwritten.
    pub fn silent_since(&self, now_ms: u64, lost_after_ms: u64) -> i64 {
        ms(now_ms
            .saturating_sub(lost_after_ms)
            .saturating_sub(self.seen_resolution_ms))
    }

    /// Waits for this process's turn to write, on SQLite. Its database has one write lock, and
    /// a writer that finds it taken sleeps in SQLite's busy handler, up to 100 ms a try, however
    /// soon the lock is free: the report writer, the last-seen flush and a rollout's driver
    /// then lose most of their time to each other. Queued here instead, each starts the moment
    /// the last one commits, in the order they came. PostgreSQL locks rows, not the database:
    /// no turn is needed.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.writer.lock().await),
            Backend::Postgres => None,
        }
    }

    /// Moves SQLite's write-ahead log back into the database file and empties it. SQLite does
    /// so by itself after each commit, but only up to the oldest snapshot a reader still holds,
    /// and it can restart the log from the top only when no reader holds an old one: under a
    /// steady stream of check-ins there always is one, so the log grows without end (1.4 GB
    /// in a million-host rollout) and every read searches it. Taken in the write turn, the
    /// checkpoint waits only for the readers in flight. PostgreSQL: nothing to do.
    pub async fn checkpoint(&self) -> Result<(), sqlx::Error> {
        let Some(_turn) = self.write_turn().await else {
            return Ok(());
        };
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection (SQLite then checkpoints its WAL into the file).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Applies the migrations not applied yet, under sqlx's migration lock (an advisory lock on
    /// PostgreSQL), so replicas starting together migrate once.
    pub async fn migrate(&self) -> Result<(), MigrateError> {
        let bytes_type = match self.backend {
            Backend::Sqlite => "BLOB",
            Backend::Postgres => "BYTEA",
        };
        let mut conn = self.pool.acquire().await?;
        conn.lock().await?;
        let result = async {
            conn.ensure_migrations_table().await?;
            if let Some(version) = conn.dirty_version().await? {
                return Err(MigrateError::Dirty(version));
            }
            let applied = conn.list_applied_migrations().await?;
            for (version, description, sql) in MIGRATIONS {
                let migration = Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    Cow::Owned(sql.replace("BYTES_TYPE", bytes_type)),
                    false,
                );
                match applied.iter().find(|a| a.version == *version) {
                    Some(a) if a.checksum != migration.checksum => {
                        return Err(MigrateError::VersionMismatch(*version))
                    }
                    Some(_) => {}
                    None => {
                        conn.apply(&migration).await?;
                    }
                }
            }
            Ok(())
        }
        .await;
        conn.unlock().await?;
        result
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
    }

    // ---- setup -------------------------------------------------------------------------

    /// Trusts a publisher key (idempotent).
    pub async fn add_publisher_key(
        &self,
        key_id: &str,
        public_hex: &str,
        now_ms: u64,
    ) -> Result<(), sqlx::Error> {
        let _turn = self.write_turn().await;
        sqlx::query("INSERT INTO publisher_keys (key_id, public_key, added_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(key_id)
            .bind(public_hex)
            .bind(ms(now_ms))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The trusted publisher keys, hex.
    pub async fn publisher_keys(&self) -> Result<Vec<String>, sqlx::Error> {
        let rows = sqlx::query("SELECT public_key FROM publisher_keys ORDER BY key_id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get::<String, _>(0)).collect()
    }

    /// Stores a token by the hash of its secret (idempotent).
    pub async fn add_token(
        &self,
        hash: &str,
        name: &str,
        role: &str,
        now_ms: u64,
    ) -> Result<(), sqlx::Error> {
        let _turn = self.write_turn().await;
        sqlx::query("INSERT INTO tokens (hash, name, role, created_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(hash)
            .bind(name)
            .bind(role)
            .bind(ms(now_ms))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // ---- authentication ----------------------------------------------------------------

    /// Who holds the secret with this hash: one query over both kinds of credential.
    pub async fn principal(&self, hash: &str) -> Result<Option<Principal>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT 'token' AS kind, name AS who, role, revoked_ms FROM tokens WHERE hash = $1 \
             UNION ALL \
             SELECT 'host' AS kind, id AS who, '' AS role, revoked_ms FROM hosts WHERE credential_hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let kind: String = row.try_get("kind")?;
        let who: String = row.try_get("who")?;
        let revoked = row.try_get::<Option<i64>, _>("revoked_ms")?.is_some();
        Ok(Some(if kind == "host" {
            Principal::Host { id: who, revoked }
        } else {
            Principal::Token {
                name: who,
                role: row.try_get("role")?,
                revoked,
            }
        }))
    }

    // ---- hosts -------------------------------------------------------------------------

    /// Enrolls hosts in one transaction (see [`crate::group`]): each one's stream (created on
    /// demand), row and labels. A host starts at its stream's default level, returned in order.
    pub async fn enroll(&self, hosts: &[NewHost]) -> Result<Vec<Option<u32>>, sqlx::Error> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let mut desired = Vec::with_capacity(hosts.len());
        for host in hosts {
            desired.push(Self::enroll_one(&mut tx, host).await?);
        }
        tx.commit().await?;
        Ok(desired)
    }

    async fn enroll_one(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        host: &NewHost,
    ) -> Result<Option<u32>, sqlx::Error> {
        let stream = host.kernel.stream();
        // A write first: SQLite then takes the write lock at once instead of failing a
        // read-to-write upgrade under concurrency.
        sqlx::query("INSERT INTO streams (stream, kernel_release, build_id, created_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(&stream)
            .bind(&host.kernel.release)
            .bind(&host.kernel.build_id)
            .bind(ms(host.now_ms))
            .execute(&mut **tx)
            .await?;
        let labels = serde_json::to_string(&host.labels).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO hosts (id, hostname, labels, credential_hash, kernel_release, build_id, stream, desired, \
             level, taint, kernel_errors, patches, enrolled_ms, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, (SELECT default_level FROM streams WHERE stream = $7), \
             NULL, 0, 0, '[]', $8, $8)",
        )
        .bind(&host.id)
        .bind(&host.hostname)
        .bind(labels)
        .bind(&host.credential_hash)
        .bind(&host.kernel.release)
        .bind(&host.kernel.build_id)
        .bind(&stream)
        .bind(ms(host.now_ms))
        .execute(&mut **tx)
        .await?;
        for (name, value) in &host.labels {
            sqlx::query("INSERT INTO host_labels (host_id, name, value) VALUES ($1, $2, $3)")
                .bind(&host.id)
                .bind(name)
                .bind(value)
                .execute(&mut **tx)
                .await?;
        }
        let desired = sqlx::query("SELECT desired FROM hosts WHERE id = $1")
            .bind(&host.id)
            .fetch_one(&mut **tx)
            .await?;
        opt_int::<u32>(&desired, "desired")
    }

    /// The generation of what check-ins answer, and the last one at which any answer may have
    /// changed (see [`crate::checkins`]).
    pub async fn generation(&self) -> Result<Generation, sqlx::Error> {
        let row = sqlx::query("SELECT value, flushed FROM generation WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(Generation {
            value: row.try_get("value")?,
            flushed: row.try_get("flushed")?,
        })
    }

    /// The credentials (hashed) of the hosts whose answers changed after generation `since`.
    pub async fn changed_answers(&self, since: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query("SELECT credential_hash FROM hosts WHERE answer_gen > $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("credential_hash"))
            .collect()
    }

    /// The desired state of the host holding a credential: one query on the credential's
    /// unique index joined to the level's primary key.
    pub async fn desired(&self, credential_hash: &str) -> Result<Option<DesiredRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT h.id, h.stream, h.revoked_ms, h.desired, l.version, l.signed, \
             CASE WHEN rh.sampled = 1 THEN 1 ELSE 0 END AS report_health, \
             CASE WHEN rh.sampled = 1 THEN lr.version END AS probes_version, \
             CASE WHEN rh.sampled = 1 THEN lr.signed END AS probes_signed \
             FROM hosts h LEFT JOIN levels l ON l.stream = h.stream AND l.level = h.desired \
             LEFT JOIN rollouts r ON r.live = h.stream \
             LEFT JOIN rollout_hosts rh ON rh.rollout_id = r.id AND rh.host_id = h.id \
             LEFT JOIN levels lr ON lr.stream = r.stream AND lr.level = r.level \
             WHERE h.credential_hash = $1",
        )
        .bind(credential_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let level = match (
            opt_int::<u32>(&row, "desired")?,
            opt_int::<u64>(&row, "version")?,
            row.try_get::<Option<String>, _>("signed")?,
        ) {
            (Some(level), Some(version), Some(signed)) => Some((level, version, signed)),
            _ => None,
        };
        Ok(Some(DesiredRow {
            host_id: row.try_get("id")?,
            stream: row.try_get("stream")?,
            revoked: row.try_get::<Option<i64>, _>("revoked_ms")?.is_some(),
            level,
            report_health: row.try_get::<i64, _>("report_health")? != 0,
            probes: match (
                opt_int::<u64>(&row, "probes_version")?,
                row.try_get::<Option<String>, _>("probes_signed")?,
            ) {
                (Some(version), Some(signed)) => Some((version, signed)),
                _ => None,
            },
        }))
    }

    /// Writes the last-seen times of a batch of hosts, one statement per [`TOUCH_CHUNK`]
    /// hosts, each only if it is more than the resolution past the written one (see
    /// [`Store::with_seen_resolution`]); so a time never moves backwards either (another
    /// replica may have written a newer one). The times are a table of values joined to the
    /// hosts by key, so that each row costs one lookup (a `CASE` over the chunk's ids would
    /// cost one comparison per id per row); a row the condition skips is read, not written.
    pub async fn touch_hosts(&self, seen: &[(String, u64)]) -> Result<(), sqlx::Error> {
        // In the order of the id index, and many chunks to a transaction: a page the batch
        // changes many times is then written to the log once, not once per chunk (in a
        // million-host fleet, a commit per thousand hosts wrote 8 MB of log each and took
        // check-ins at half the rate).
        let mut seen: Vec<&(String, u64)> = seen.iter().collect();
        seen.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for part in seen.chunks(TOUCH_TRANSACTION) {
            self.touch_in_one_transaction(part).await?;
        }
        Ok(())
    }

    async fn touch_in_one_transaction(&self, seen: &[&(String, u64)]) -> Result<(), sqlx::Error> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        for chunk in seen.chunks(TOUCH_CHUNK) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3))
                .collect();
            // `column1`, `column2`: what SQLite and PostgreSQL alike name a VALUES list's
            // columns.
            let sql = format!(
                "UPDATE hosts SET last_seen_ms = v.column2 FROM (VALUES {}) AS v \
                 WHERE hosts.id = v.column1 AND v.column2 > hosts.last_seen_ms + $1",
                rows.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(ms(self.seen_resolution_ms));
            for (id, at) in chunk {
                query = query.bind(id.as_str()).bind(ms(*at));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// A host by id, for reports.
    pub async fn host(&self, id: &str) -> Result<Option<HostRow>, sqlx::Error> {
        let row =
            sqlx::query("SELECT id, kernel_release, build_id, stream FROM hosts WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(HostRow {
                id: row.try_get("id")?,
                kernel: KernelId {
                    release: row.try_get("kernel_release")?,
                    build_id: row.try_get("build_id")?,
                },
                stream: row.try_get("stream")?,
            })
        })
        .transpose()
    }

    /// Stores reports in one transaction (see [`crate::group`]).
    pub async fn reports(&self, batch: &[ReportWrite]) -> Result<(), sqlx::Error> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        for w in batch {
            Self::report(&mut tx, &w.host, &w.report, w.now_ms).await?;
        }
        tx.commit().await
    }

    /// Stores one report: the inventory, a move to another stream if the host booted another
    /// kernel, and each outcome once (a resent report adds nothing).
    async fn report(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        host: &HostRow,
        report: &Report,
        now_ms: u64,
    ) -> Result<(), sqlx::Error> {
        let new_stream = report.kernel.stream();
        if report.kernel != host.kernel {
            sqlx::query("INSERT INTO streams (stream, kernel_release, build_id, created_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(&new_stream)
                .bind(&report.kernel.release)
                .bind(&report.kernel.build_id)
                .bind(ms(now_ms))
                .execute(&mut **tx)
                .await?;
            // A level is for one kernel build: on another stream the host starts from that
            // stream's default, never from a level number that means something else there.
            let moved = new_stream != host.stream;
            sqlx::query(BUMP_HOSTS).execute(&mut **tx).await?;
            sqlx::query(&format!(
                "UPDATE hosts SET kernel_release = $1, build_id = $2, stream = $3, \
                 desired = CASE WHEN $4 = 1 THEN (SELECT default_level FROM streams WHERE stream = $3) ELSE desired END, \
                 {STAMP} WHERE id = $5"
            ))
            .bind(&report.kernel.release)
            .bind(&report.kernel.build_id)
            .bind(&new_stream)
            .bind(i64::from(moved))
            .bind(&host.id)
            .execute(&mut **tx)
            .await?;
        }
        let inv = &report.inventory;
        let last_outcome = report
            .outcomes
            .iter()
            .max_by_key(|o| o.at_ms)
            .map(outcome_summary);
        sqlx::query(
            "UPDATE hosts SET level = $1, taint = $2, kernel_errors = $3, patches = $4, \
             last_outcome = COALESCE($5, last_outcome), \
             last_seen_ms = CASE WHEN $6 > last_seen_ms THEN $6 ELSE last_seen_ms END WHERE id = $7",
        )
        .bind(inv.level.map(i64::from))
        .bind(inv.taint as i64)
        .bind(i64::from(inv.kernel_errors))
        .bind(serde_json::to_string(&inv.patches).unwrap_or_else(|_| "[]".into()))
        .bind(last_outcome)
        .bind(ms(now_ms))
        .bind(&host.id)
        .execute(&mut **tx)
        .await?;
        for o in &report.outcomes {
            sqlx::query(
                "INSERT INTO outcomes (host_id, id, level, result, outcome, at_ms, received_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&host.id)
            .bind(&o.id)
            .bind(o.level.map(i64::from))
            .bind(&o.result)
            .bind(serde_json::to_string(o).unwrap_or_else(|_| "{}".into()))
            .bind(ms(o.at_ms))
            .bind(ms(now_ms))
            .execute(&mut **tx)
            .await?;
        }
        if let Some(h) = &report.health {
            Self::insert_health(tx, &host.id, h).await?;
        }
        Ok(())
    }

    /// Hosts matching a filter, by name. `label` is `(name, value)`, already parsed.
    pub async fn hosts(
        &self,
        filter: &HostFilter,
        label: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<HostView>, sqlx::Error> {
        let mut sql = format!("{HOST_COLUMNS} FROM hosts h WHERE 1 = 1");
        let mut args = Vec::new();
        let next = |args: &mut Vec<Arg>, arg: Arg| {
            args.push(arg);
            format!("${}", args.len())
        };
        if let Some((name, value)) = label {
            let n = next(&mut args, Arg::Text(name));
            let v = next(&mut args, Arg::Text(value));
            sql.push_str(&format!(
                " AND EXISTS (SELECT 1 FROM host_labels hl WHERE hl.host_id = h.id AND hl.name = {n} AND hl.value = {v})"
            ));
        }
        if let Some(kernel) = &filter.kernel {
            let k = next(&mut args, Arg::Text(kernel.clone()));
            sql.push_str(&format!(" AND (h.kernel_release = {k} OR h.stream = {k})"));
        }
        if let Some(level) = filter.level {
            let l = next(&mut args, Arg::Int(i64::from(level)));
            sql.push_str(&format!(" AND h.level = {l}"));
        }
        match filter.health.as_deref() {
            Some("healthy") => {
                let m = next(&mut args, Arg::Int(!EXPECTED_TAINT as i64));
                sql.push_str(&format!(" AND (h.taint & {m}) = 0 AND h.kernel_errors = 0"));
            }
            Some(_) => {
                let m = next(&mut args, Arg::Int(!EXPECTED_TAINT as i64));
                sql.push_str(&format!(
                    " AND ((h.taint & {m}) <> 0 OR h.kernel_errors <> 0)"
                ));
            }
            None => {}
        }
        let l = next(&mut args, Arg::Int(i64::from(limit)));
        sql.push_str(&format!(" ORDER BY h.hostname, h.id LIMIT {l}"));
        let mut query = sqlx::query(&sql);
        for arg in args {
            query = match arg {
                Arg::Text(t) => query.bind(t),
                Arg::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(host_view).collect()
    }

    /// One host's view.
    pub async fn host_view(&self, id: &str) -> Result<Option<HostView>, sqlx::Error> {
        let row = sqlx::query(&format!("{HOST_COLUMNS} FROM hosts h WHERE h.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(host_view).transpose()
    }

    /// A host's outcomes as it reported them, oldest first; `None` if there is no such host.
    pub async fn outcomes(&self, id: &str) -> Result<Option<Vec<Outcome>>, sqlx::Error> {
        let known = sqlx::query("SELECT 1 FROM hosts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        if known.is_none() {
            return Ok(None);
        }
        let rows =
            sqlx::query("SELECT outcome FROM outcomes WHERE host_id = $1 ORDER BY at_ms, id")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get("outcome")?;
                serde_json::from_str(&text).map_err(|e| sqlx::Error::Decode(Box::new(e)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// Revokes a host's credential; `false` if there is no such host.
    pub async fn revoke(&self, id: &str, now_ms: u64) -> Result<bool, sqlx::Error> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        sqlx::query(BUMP_HOSTS).execute(&mut *tx).await?;
        let done = sqlx::query(&format!(
            "UPDATE hosts SET revoked_ms = COALESCE(revoked_ms, $1), {STAMP} WHERE id = $2"
        ))
        .bind(ms(now_ms))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- kernels and streams -----------------------------------------------------------

    /// The kernels enrolled (not revoked) hosts run, with counts and their stream's latest level.
    pub async fn kernels(&self) -> Result<Vec<KernelView>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT h.kernel_release, h.build_id, h.stream, COUNT(*) AS hosts, \
             (SELECT MAX(l.level) FROM levels l WHERE l.stream = h.stream) AS latest \
             FROM hosts h WHERE h.revoked_ms IS NULL \
             GROUP BY h.kernel_release, h.build_id, h.stream ORDER BY h.kernel_release, h.stream",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KernelView {
                    kernel: KernelId {
                        release: r.try_get("kernel_release")?,
                        build_id: r.try_get("build_id")?,
                    },
                    stream: r.try_get("stream")?,
                    hosts: int(r, "hosts")?,
                    latest: opt_int(r, "latest")?,
                })
            })
            .collect()
    }

    /// Every stream (levels left empty).
    pub async fn streams(&self) -> Result<Vec<StreamView>, sqlx::Error> {
        let rows = sqlx::query(&format!("{STREAM_COLUMNS} ORDER BY s.stream"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(stream_view).collect()
    }

    /// One stream with its levels.
    pub async fn stream_view(&self, stream: &str) -> Result<Option<StreamView>, sqlx::Error> {
        let row = sqlx::query(&format!("{STREAM_COLUMNS} WHERE s.stream = $1"))
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let mut view = stream_view(&row)?;
        let rows = sqlx::query(
            "SELECT stream, level, version, module_name, module_sha256, patches, expires, published_ms, \
             signed FROM levels WHERE stream = $1 ORDER BY level",
        )
        .bind(stream)
        .fetch_all(&self.pool)
        .await?;
        view.levels = rows
            .iter()
            .map(|r| {
                Ok(LevelView {
                    stream: r.try_get("stream")?,
                    level: int(r, "level")?,
                    version: int(r, "version")?,
                    module_name: r.try_get("module_name")?,
                    module_sha256: r.try_get("module_sha256")?,
                    patches: json_column(r, "patches")?,
                    expires: int(r, "expires")?,
                    published_ms: int(r, "published_ms")?,
                    signed: Some(json_column(r, "signed")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Some(view))
    }

    /// A stream's kernel and newest level; `None` if there is no such stream.
    pub async fn stream_state(&self, stream: &str) -> Result<Option<StreamState>, sqlx::Error> {
        let row = sqlx::query("SELECT kernel_release, build_id FROM streams WHERE stream = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let kernel = KernelId {
            release: row.try_get("kernel_release")?,
            build_id: row.try_get("build_id")?,
        };
        // The version is the stream's highest, which a re-signed older level (a rollback) may
        // hold: every new signing must be newer than every earlier one.
        let latest = sqlx::query(
            "SELECT level, (SELECT MAX(v.version) FROM levels v WHERE v.stream = $1) AS version, \
             patches FROM levels WHERE stream = $1 ORDER BY level DESC LIMIT 1",
        )
        .bind(stream)
        .fetch_optional(&self.pool)
        .await?;
        let latest = latest
            .map(|r| {
                Ok::<_, sqlx::Error>(LatestLevel {
                    level: int(&r, "level")?,
                    version: int(&r, "version")?,
                    patches: json_column(&r, "patches")?,
                })
            })
            .transpose()?;
        Ok(Some(StreamState { kernel, latest }))
    }

    /// A level's module digest, if the stream has that level.
    pub async fn level_module(
        &self,
        stream: &str,
        level: u32,
    ) -> Result<Option<String>, sqlx::Error> {
        let row = sqlx::query("SELECT module_sha256 FROM levels WHERE stream = $1 AND level = $2")
            .bind(stream)
            .bind(i64::from(level))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("module_sha256")).transpose()
    }

    /// Whether a stream has a level.
    pub async fn level_exists(&self, stream: &str, level: u32) -> Result<bool, sqlx::Error> {
        let row = sqlx::query("SELECT 1 FROM levels WHERE stream = $1 AND level = $2")
            .bind(stream)
            .bind(i64::from(level))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Stores a checked level, its module and (if new) its stream, in one transaction.
    /// A concurrent publish of the same level or version fails on the keys.
    pub async fn publish(&self, new: &NewLevel) -> Result<(), sqlx::Error> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        if let Some(kernel) = &new.create_stream {
            sqlx::query("INSERT INTO streams (stream, kernel_release, build_id, created_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
                .bind(&new.stream)
                .bind(&kernel.release)
                .bind(&kernel.build_id)
                .bind(ms(new.published_ms))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO modules (sha256, bytes, size, stored_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(&new.module_sha256)
            .bind(new.module.as_slice())
            .bind(ms(new.module.len() as u64))
            .bind(ms(new.published_ms))
            .execute(&mut *tx)
            .await?;
        // The manifest too is content-addressed: agents fetch it by the digest the publisher
        // signed, as they fetch the module.
        sqlx::query("INSERT INTO modules (sha256, bytes, size, stored_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(graft_manifest::sha256(new.manifest.as_bytes()))
            .bind(new.manifest.as_bytes())
            .bind(ms(new.manifest.len() as u64))
            .bind(ms(new.published_ms))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO levels (stream, level, version, module_name, module_sha256, manifest, patches, signed, \
             expires, published_ms, published_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&new.stream)
        .bind(i64::from(new.level))
        .bind(ms(new.version))
        .bind(&new.module_name)
        .bind(&new.module_sha256)
        .bind(&new.manifest)
        .bind(serde_json::to_string(&new.patches).unwrap_or_else(|_| "[]".into()))
        .bind(&new.signed_json)
        .bind(ms(new.expires))
        .bind(ms(new.published_ms))
        .bind(&new.published_by)
        .execute(&mut *tx)
        .await?;
        sqlx::query(BUMP).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// A module's bytes by digest.
    pub async fn module(&self, sha256: &str) -> Result<Option<Vec<u8>>, sqlx::Error> {
        let row = sqlx::query("SELECT bytes FROM modules WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get::<Vec<u8>, _>("bytes")).transpose()
    }

    /// Sets the desired level of a stream's (not revoked) hosts, all of them or those with a
    /// label; without a selector it also becomes the stream's default for hosts arriving later.
    pub async fn assign(
        &self,
        stream: &str,
        level: Option<u32>,
        selector: Option<(String, String)>,
    ) -> Result<AssignResult, sqlx::Error> {
        let _turn = self.write_turn().await;
        let level = level.map(i64::from);
        // Only hosts whose desired level differs count as changed.
        let differs = if level.is_some() {
            "(desired IS NULL OR desired <> $1)"
        } else {
            "desired IS NOT NULL"
        };
        match selector {
            Some((name, value)) => {
                let labelled =
                    "id IN (SELECT host_id FROM host_labels WHERE name = $3 AND value = $4)";
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(&format!(
                    "UPDATE hosts SET desired = $1 WHERE stream = $2 AND revoked_ms IS NULL AND {labelled} AND {differs}"
                ))
                .bind(level)
                .bind(stream)
                .bind(&name)
                .bind(&value)
                .execute(&mut *tx)
                .await?;
                sqlx::query(BUMP).execute(&mut *tx).await?;
                tx.commit().await?;
                if done.rows_affected() > 0 {
                    return Ok(AssignResult::Changed(done.rows_affected()));
                }
                // Nothing changed: were there no such hosts, or were they all there already?
                let row = sqlx::query(&format!(
                    "SELECT COUNT(*) AS n FROM hosts WHERE stream = $1 AND revoked_ms IS NULL AND {}",
                    "id IN (SELECT host_id FROM host_labels WHERE name = $2 AND value = $3)"
                ))
                .bind(stream)
                .bind(&name)
                .bind(&value)
                .fetch_one(&self.pool)
                .await?;
                if int::<u64>(&row, "n")? == 0 {
                    Ok(AssignResult::NoMatch)
                } else {
                    Ok(AssignResult::Changed(0))
                }
            }
            None => {
                let mut tx = self.pool.begin().await?;
                let done = sqlx::query(&format!(
                    "UPDATE hosts SET desired = $1 WHERE stream = $2 AND revoked_ms IS NULL AND {differs}"
                ))
                .bind(level)
                .bind(stream)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE streams SET default_level = $1 WHERE stream = $2")
                    .bind(level)
                    .bind(stream)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(BUMP).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(AssignResult::Changed(done.rows_affected()))
            }
        }
    }

    // ---- audit -------------------------------------------------------------------------

    /// Records an operator's action.
    pub async fn audit(&self, id: &str, entry: &AuditEntry) -> Result<(), sqlx::Error> {
        let _turn = self.write_turn().await;
        sqlx::query("INSERT INTO audit (id, at_ms, who, what, result) VALUES ($1, $2, $3, $4, $5)")
            .bind(id)
            .bind(ms(entry.at_ms))
            .bind(&entry.who)
            .bind(&entry.what)
            .bind(&entry.result)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The newest audit entries, newest first.
    pub async fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT at_ms, who, what, result FROM audit ORDER BY at_ms DESC, id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at_ms: int(r, "at_ms")?,
                    who: r.try_get("who")?,
                    what: r.try_get("what")?,
                    result: r.try_get("result")?,
                })
            })
            .collect()
    }
}

const HOST_COLUMNS: &str =
    "SELECT h.id, h.hostname, h.labels, h.kernel_release, h.build_id, h.stream, h.desired, \
     h.level, h.taint, h.kernel_errors, h.last_seen_ms, h.last_outcome, h.revoked_ms";

const STREAM_COLUMNS: &str = "SELECT s.stream, s.kernel_release, s.build_id, \
     (SELECT MAX(l.level) FROM levels l WHERE l.stream = s.stream) AS latest, \
     (SELECT COUNT(*) FROM hosts h WHERE h.stream = s.stream AND h.revoked_ms IS NULL) AS hosts \
     FROM streams s";

fn host_view(r: &AnyRow) -> Result<HostView, sqlx::Error> {
    let taint = r.try_get::<i64, _>("taint")? as u64;
    let kernel_errors: u64 = int(r, "kernel_errors")?;
    let healthy = taint & !EXPECTED_TAINT == 0 && kernel_errors == 0;
    Ok(HostView {
        id: r.try_get("id")?,
        hostname: r.try_get("hostname")?,
        labels: json_column(r, "labels")?,
        kernel: KernelId {
            release: r.try_get("kernel_release")?,
            build_id: r.try_get("build_id")?,
        },
        stream: r.try_get("stream")?,
        desired: opt_int(r, "desired")?,
        level: opt_int(r, "level")?,
        health: if healthy { "healthy" } else { "unhealthy" }.to_string(),
        last_seen_ms: int(r, "last_seen_ms")?,
        last_outcome: r.try_get("last_outcome")?,
        revoked: r.try_get::<Option<i64>, _>("revoked_ms")?.is_some(),
    })
}

fn stream_view(r: &AnyRow) -> Result<StreamView, sqlx::Error> {
    Ok(StreamView {
        stream: r.try_get("stream")?,
        kernel: KernelId {
            release: r.try_get("kernel_release")?,
            build_id: r.try_get("build_id")?,
        },
        levels: Vec::new(),
        latest: opt_int(r, "latest")?,
        hosts: int(r, "hosts")?,
    })
}

/// How an outcome reads in a host's list entry.
fn outcome_summary(o: &Outcome) -> String {
    let level = o.level.map_or("none".to_string(), |l| format!("level {l}"));
    match &o.message {
        Some(m) => format!("{} {level}: {m}", o.result),
        None => format!("{} {level}", o.result),
    }
}

/// A time or count as the database stores it (BIGINT).
fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// An integer column, converted to the type the API uses.
fn int<T: TryFrom<i64>>(r: &AnyRow, col: &str) -> Result<T, sqlx::Error> {
    let v: i64 = r.try_get(col)?;
    T::try_from(v).map_err(|_| decode_error(col, format!("{v} is out of range")))
}

fn opt_int<T: TryFrom<i64>>(r: &AnyRow, col: &str) -> Result<Option<T>, sqlx::Error> {
    let v: Option<i64> = r.try_get(col)?;
    v.map(|v| T::try_from(v).map_err(|_| decode_error(col, format!("{v} is out of range"))))
        .transpose()
}

/// A column holding JSON text.
fn json_column<T: serde::de::DeserializeOwned>(r: &AnyRow, col: &str) -> Result<T, sqlx::Error> {
    let text: String = r.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| decode_error(col, e.to_string()))
}

fn decode_error(col: &str, reason: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: col.to_string(),
        source: reason.into(),
    }
}

/// For the store's own tests: a runtime and a migrated SQLite store in `file`.
#[cfg(test)]
pub(crate) fn sqlite_for_test(file: &std::path::Path) -> (tokio::runtime::Runtime, Store) {
    let url = format!("sqlite://{}?mode=rwc", file.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async {
        let store = Store::connect(&url, Backend::Sqlite).await.unwrap();
        store.migrate().await.unwrap();
        store
    });
    (rt, store)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bug: a million hosts checking in every minute rewrote 17,000 host rows a second,
    /// most of SQLite's one write lock, so reports stalled. A check-in time within the
    /// resolution of the written one is no longer written, and the lost-host gate allows for
    /// what that leaves unwritten.
    #[test]
    fn a_check_in_within_the_resolution_of_the_written_time_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (rt, store) = sqlite_for_test(&dir.path().join("seen.db"));
        let resolution = std::time::Duration::from_secs(300);
        let store = store.with_seen_resolution(resolution);
        let step = u64::try_from(resolution.as_millis()).unwrap();
        let enrolled = 1_000_000_u64;
        rt.block_on(async {
            sqlx::query("INSERT INTO streams (stream, kernel_release, build_id, created_ms) VALUES ('s', 'r', 'b', 0)")
                .execute(&store.pool)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO hosts (id, hostname, labels, credential_hash, kernel_release, build_id, \
                 stream, taint, kernel_errors, patches, enrolled_ms, last_seen_ms) \
                 VALUES ('h', 'h', '{}', 'c', 'r', 'b', 's', 0, 0, '[]', $1, $1)",
            )
            .bind(ms(enrolled))
            .execute(&store.pool)
            .await
            .unwrap();
            let touch = |at: u64| {
                let store = store.clone();
                async move { store.touch_hosts(&[("h".to_string(), at)]).await.unwrap() }
            };
            let written = || async {
                sqlx::query("SELECT last_seen_ms FROM hosts WHERE id = 'h'")
                    .fetch_one(&store.pool)
                    .await
                    .unwrap()
                    .try_get::<i64, _>("last_seen_ms")
                    .unwrap()
            };
            touch(enrolled + step - 1).await;
            assert_eq!(written().await, ms(enrolled), "a time within the resolution was written");
            let moved_on = enrolled + step + 1;
            touch(moved_on).await;
            assert_eq!(written().await, ms(moved_on));
            touch(enrolled).await;
            assert_eq!(written().await, ms(moved_on), "a time moved backwards");
            // The host went on checking in every minute, none of it written yet; a minute
            // after its last check-in it is not lost to a gate of two minutes.
            let last = moved_on + step - 1;
            touch(last).await;
            assert_eq!(written().await, ms(moved_on));
            let now = last + 60_000;
            assert!(written().await >= store.silent_since(now, 120_000), "a host heard from a minute ago counted lost");
            // Silent for the lost-after and the resolution: lost.
            assert!(written().await < store.silent_since(moved_on + step + 120_001, 120_000));
            store.close().await;
        });
    }

    /// The bug: under a steady stream of check-ins SQLite never restarted its write-ahead log,
    /// which grew to 1.4 GB in a million-host rollout.
    #[test]
    fn a_checkpoint_empties_the_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("wal.db-wal");
        let (rt, store) = sqlite_for_test(&dir.path().join("wal.db"));
        rt.block_on(async {
            sqlx::query("CREATE TABLE filler (x TEXT)")
                .execute(&store.pool)
                .await
                .unwrap();
            sqlx::query("INSERT INTO filler VALUES ('a row the log holds')")
                .execute(&store.pool)
                .await
                .unwrap();
            let written = std::fs::metadata(&wal).unwrap().len();
            assert!(written > 0, "the writes left nothing in the log");
            store.checkpoint().await.unwrap();
            assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
            // Nothing was lost on the way into the file.
            let rows = sqlx::query("SELECT x FROM filler")
                .fetch_all(&store.pool)
                .await
                .unwrap();
            assert_eq!(rows.len(), 1);
            store.close().await;
        });
    }
}
