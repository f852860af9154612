//! `graft server init DIR`: a new server's data directory.
//!
//! Everything is made in a hidden sibling directory and renamed into place at the end, so a
//! failure leaves nothing half-written (the sibling is removed) and a directory that exists
//! is always complete. What it holds:
//!
//! - `publisher.key` (0600) and `publisher.pub`: the publisher's Ed25519 key pair, hex. The
//!   private key belongs on the publisher's machine: move it there. The server only needs the
//!   public key, which it trusts and hands to enrolling hosts.
//! - `ca.pem`, `server.pem`, `server.key` (0600): the fleet's TLS CA and server certificate.
//! - `admin.token` (0600): the first admin token; the database keeps only its hash.
//! - `graft.db`: the SQLite database (unused when the server runs on PostgreSQL).
//!
//! At every start the server [`seed`]s its database from the directory (the public key, the
//! admin token's hash), idempotently: that is how a PostgreSQL database gets them too.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use graft_protocol::trust::{generate_key, key_id, verifying_key_from_hex};

use crate::auth::{hash_secret, new_secret, random_hex};
use crate::error::ServerError;
use crate::files;
use crate::store::{Backend, Store};

/// What `init` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// The data directory.
    pub data: PathBuf,
    /// The publisher key's id ([`graft_protocol::trust::key_id`]).
    pub publisher_key_id: String,
    /// The publisher's public key, hex.
    pub publisher_public_key: String,
    /// The publisher's private key file: move it to the publisher's machine.
    pub publisher_private_key: PathBuf,
    /// The file holding the first admin token.
    pub admin_token: PathBuf,
    /// The CA certificate hosts and operators must trust.
    pub ca: PathBuf,
}

/// Creates a server's data directory at `data` (see the module's documentation).
pub fn init(data: &Path) -> Result<InitReport, ServerError> {
    // 1. Refuse a directory that holds a server, or anything else.
    check_target(data)?;
    // 2. Stage everything in a sibling that is removed unless it is renamed into place.
    let staging = Staging::create(data)?;
    // 3. The publisher's key pair.
    let key = generate_key();
    let public = hex::encode(key.verifying_key().as_bytes());
    let id = key_id(&key.verifying_key());
    write_file(
        &staging.path.join(files::PUBLISHER_KEY),
        &hex::encode(key.to_bytes()),
        true,
    )?;
    write_file(
        &staging.path.join(files::PUBLISHER_PUB),
        &format!("{public}\n"),
        false,
    )?;
    // 4. TLS.
    let certs = crate::tls::generate()?;
    write_file(&staging.path.join(files::CA), &certs.ca, false)?;
    write_file(&staging.path.join(files::SERVER_CERT), &certs.server, false)?;
    write_file(
        &staging.path.join(files::SERVER_KEY),
        &certs.server_key,
        true,
    )?;
    // 5. The first admin token.
    write_file(
        &staging.path.join(files::ADMIN_TOKEN),
        &format!("{}\n", new_secret()),
        true,
    )?;
    // 6. The SQLite database, migrated and seeded.
    create_database(&staging.path)?;
    // 7. Into place.
    staging.commit(data)?;
    Ok(InitReport {
        data: data.to_path_buf(),
        publisher_key_id: id,
        publisher_public_key: public,
        publisher_private_key: data.join(files::PUBLISHER_KEY),
        admin_token: data.join(files::ADMIN_TOKEN),
        ca: data.join(files::CA),
    })
}

/// The SQLite URL of a data directory's database.
pub(crate) fn sqlite_url(dir: &Path) -> Result<String, ServerError> {
    let db = dir.join(files::DATABASE);
    let absolute = std::path::absolute(&db).map_err(|cause| ServerError::Io {
        action: "resolving",
        path: db.clone(),
        cause,
    })?;
    Ok(format!("sqlite://{}?mode=rwc", absolute.display()))
}

/// Puts what the data directory holds into the database: the publisher's public key as a
/// trusted key, and the admin token's hash if the token file is still there. Idempotent.
pub(crate) async fn seed(store: &Store, dir: &Path, database: &str) -> Result<(), ServerError> {
    let now = crate::now_ms();
    let db_error = |cause| ServerError::Database {
        database: database.to_string(),
        cause,
    };
    let pub_path = dir.join(files::PUBLISHER_PUB);
    let public = read_text(&pub_path)?.ok_or_else(|| ServerError::NotInitialized {
        path: dir.to_path_buf(),
        missing: files::PUBLISHER_PUB,
    })?;
    let key = verifying_key_from_hex(&public).map_err(|e| ServerError::BadFile {
        path: pub_path.clone(),
        reason: e.to_string(),
    })?;
    store
        .add_publisher_key(&key_id(&key), &hex::encode(key.as_bytes()), now)
        .await
        .map_err(db_error)?;
    if let Some(token) = read_text(&dir.join(files::ADMIN_TOKEN))? {
        store
            .add_token(&hash_secret(token.trim()), "admin", "admin", now)
            .await
            .map_err(db_error)?;
    }
    Ok(())
}

fn check_target(data: &Path) -> Result<(), ServerError> {
    if !data.exists() {
        return Ok(());
    }
    for marker in [files::DATABASE, files::PUBLISHER_PUB, files::ADMIN_TOKEN] {
        if data.join(marker).exists() {
            return Err(ServerError::AlreadyInitialized {
                path: data.to_path_buf(),
                marker,
            });
        }
    }
    let mut entries = std::fs::read_dir(data).map_err(|cause| ServerError::Io {
        action: "reading",
        path: data.to_path_buf(),
        cause,
    })?;
    if entries.next().is_some() {
        return Err(ServerError::NotEmpty {
            path: data.to_path_buf(),
        });
    }
    Ok(())
}

fn create_database(dir: &Path) -> Result<(), ServerError> {
    let url = sqlite_url(dir)?;
    let database = dir.join(files::DATABASE).display().to_string();
    let work = || -> Result<(), ServerError> {
        // The caller may or may not be inside a tokio runtime: use a runtime of our own, on a
        // thread of our own, which works either way.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|cause| ServerError::Io {
                action: "starting a runtime for",
                path: dir.to_path_buf(),
                cause,
            })?;
        runtime.block_on(async {
            let store = Store::connect(&url, Backend::Sqlite)
                .await
                .map_err(|cause| ServerError::Database {
                    database: database.clone(),
                    cause,
                })?;
            let result = async {
                store
                    .migrate()
                    .await
                    .map_err(|cause| ServerError::Migration {
                        database: database.clone(),
                        cause,
                    })?;
                seed(&store, dir, &database).await
            }
            .await;
            store.close().await;
            result
        })
    };
    std::thread::scope(|s| s.spawn(work).join())
        .map_err(|_| ServerError::Task("creating the database panicked".into()))?
}

/// A hidden sibling of the target, removed on drop unless committed.
struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    fn create(target: &Path) -> Result<Self, ServerError> {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ServerError::BadFile {
                path: target.to_path_buf(),
                reason: "not a directory name".into(),
            })?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|cause| ServerError::Io {
            action: "creating",
            path: parent.clone(),
            cause,
        })?;
        let path = parent.join(format!(".{name}.init-{}", random_hex(6)));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|cause| ServerError::Io {
                action: "creating",
                path: path.clone(),
                cause,
            })?;
        Ok(Self {
            path,
            committed: false,
        })
    }

    /// Renames the staged directory to `target` (replacing it if it is an empty directory).
    fn commit(mut self, target: &Path) -> Result<(), ServerError> {
        std::fs::rename(&self.path, target).map_err(|cause| ServerError::Io {
            action: "renaming the new data directory to",
            path: target.to_path_buf(),
            cause,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn write_file(path: &Path, text: &str, private: bool) -> Result<(), ServerError> {
    let io = |cause| ServerError::Io {
        action: "writing",
        path: path.to_path_buf(),
        cause,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// A file's text, `None` if it does not exist.
fn read_text(path: &Path) -> Result<Option<String>, ServerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(cause) => Err(ServerError::Io {
            action: "reading",
            path: path.to_path_buf(),
            cause,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn init_makes_a_complete_directory_and_refuses_to_make_it_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("srv");
        let report = init(&dir).unwrap();
        for f in [
            files::DATABASE,
            files::PUBLISHER_KEY,
            files::PUBLISHER_PUB,
            files::CA,
            files::SERVER_CERT,
            files::SERVER_KEY,
            files::ADMIN_TOKEN,
        ] {
            assert!(dir.join(f).is_file(), "{f}");
        }
        for f in [files::PUBLISHER_KEY, files::SERVER_KEY, files::ADMIN_TOKEN] {
            let mode = std::fs::metadata(dir.join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert_eq!(report.publisher_key_id.len(), 16);
        let err = init(&dir).unwrap_err();
        assert!(
            err.to_string().contains("already holds a graft server"),
            "{err}"
        );
        // Nothing staged is left behind, and an occupied directory is refused.
        let other = tmp.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("x"), "").unwrap();
        assert!(matches!(init(&other), Err(ServerError::NotEmpty { .. })));
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn an_empty_directory_can_be_initialized() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path()).unwrap();
        assert!(tmp.path().join(files::DATABASE).is_file());
    }
}
