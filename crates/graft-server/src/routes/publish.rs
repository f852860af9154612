//! `POST /v1/streams/{stream}/levels`: publishing a level.
//!
//! The server cannot sign (it never holds the publisher's key) but it refuses, before storing
//! anything, a level agents would refuse or that would break the stream: metadata not signed
//! by a trusted key, for another stream or kernel, expired, older than what the stream has;
//! a module or manifest that is not the one signed; a level number out of order; a level that
//! silently drops a patch the previous one carried. [`check`] is pure, so every refusal is
//! unit-tested; the handler feeds it the stream's state and stores what it returns in one
//! transaction (the keys then settle concurrent publishes: one wins, the other gets 409).

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use graft_manifest::Manifest;
use graft_protocol::api::{check_string, LevelView, Publish, Role};
use graft_protocol::trust::{check_digest, verifying_key_from_hex, TrustError};

use super::audited;
use crate::auth::Operator;
use crate::error::{is_unique_violation, Failure};
use crate::extract::{Body, Path};
use crate::store::{NewLevel, StreamState};
use crate::AppState;

pub(crate) async fn publish(
    State(state): State<AppState>,
    op: Operator,
    Path(stream): Path<String>,
    body: Result<Body<Publish>, Failure>,
) -> Result<Json<LevelView>, Failure> {
    let level = body
        .as_ref()
        .ok()
        .and_then(|Body(p)| p.signed.peek().ok())
        .map_or("?".to_string(), |l| l.level.to_string());
    let what = format!("publish {stream} level {level}");
    let result = publish_checked(&state, &op, &stream, body).await;
    audited(&state, &op.name, what, result).await.map(Json)
}

async fn publish_checked(
    state: &AppState,
    op: &Operator,
    stream: &str,
    body: Result<Body<Publish>, Failure>,
) -> Result<LevelView, Failure> {
    // 1. Who and what.
    op.require(Role::Operator)?;
    let Body(publish) = body?;
    check_string("stream", stream).map_err(Failure::invalid)?;
    // 2. What the checks need from the database: trusted keys, the stream and its latest level.
    let keys = trusted_keys(state).await?;
    let current = state.store.stream_state(stream).await?;
    // 3. The checks.
    let now_ms = crate::now_ms();
    let new = check(
        stream,
        &publish,
        &keys,
        current.as_ref(),
        now_ms / 1000,
        now_ms,
        &op.name,
    )?;
    // 4. Store, all or nothing.
    match state.store.publish(&new).await {
        Err(e) if is_unique_violation(&e) => {
            return Err(Failure::conflict(format!(
                "level {} or version {} of {stream} was published meanwhile by someone else: fetch the stream and publish the next level",
                new.level, new.version
            )))
        }
        other => other?,
    }
    state.checkins.invalidate();
    Ok(LevelView {
        stream: new.stream,
        level: new.level,
        version: new.version,
        module_name: new.module_name,
        module_sha256: new.module_sha256,
        patches: new.patches,
        expires: new.expires,
        published_ms: new.published_ms,
        signed: Some(publish.signed.clone()),
    })
}

pub(crate) async fn trusted_keys(state: &AppState) -> Result<Vec<VerifyingKey>, Failure> {
    let mut keys = Vec::new();
    for hex in state.store.publisher_keys().await? {
        match verifying_key_from_hex(&hex) {
            Ok(key) => keys.push(key),
            Err(e) => {
                tracing::error!(key = hex, error = %e, "a stored publisher key is malformed: ignored")
            }
        }
    }
    Ok(keys)
}

/// Checks a publish of the next level of `stream` (whose state is `current`, `None` if the
/// stream does not exist yet) and returns what to store.
pub(crate) fn check(
    stream: &str,
    publish: &Publish,
    keys: &[VerifyingKey],
    current: Option<&StreamState>,
    now_secs: u64,
    now_ms: u64,
    by: &str,
) -> Result<NewLevel, Failure> {
    let latest = current.and_then(|c| c.latest.as_ref());
    // 1. Signed by a trusted key, for this stream, not expired, not older than the stream's.
    let level = publish
        .signed
        .verify(keys, stream, now_secs, latest.map(|l| l.version))
        .map_err(|e| match e {
            TrustError::Rollback { .. } => Failure::conflict(e.to_string()),
            _ => Failure::invalid(format!("signed metadata: {e}")),
        })?;
    if let Some(latest) = latest {
        if level.version <= latest.version {
            return Err(Failure::conflict(format!(
                "signed version {} is not newer than version {} of {stream} level {}: re-sign with a higher version",
                level.version, latest.version, latest.level
            )));
        }
    }
    for (what, value) in [("version", level.version), ("expires", level.expires)] {
        if i64::try_from(value).is_err() {
            return Err(Failure::invalid(format!(
                "signed {what} {value} is out of range"
            )));
        }
    }
    check_string("module name", &level.module_name).map_err(Failure::invalid)?;
    level
        .check_probes()
        .map_err(|e| Failure::invalid(format!("signed metadata: {e}")))?;
    // 2. The kernel: the stream's, or (for a new stream) one whose stream this is.
    let create_stream = match current {
        Some(current) => {
            if level.kernel != current.kernel {
                return Err(Failure::invalid(format!(
                    "the signed metadata is for kernel {} build {}, stream {stream} is kernel {} build {}",
                    level.kernel.release, level.kernel.build_id, current.kernel.release, current.kernel.build_id
                )));
            }
            None
        }
        None => {
            level.kernel.check().map_err(Failure::invalid)?;
            if level.kernel.stream() != stream {
                return Err(Failure::invalid(format!(
                    "the signed kernel's stream is {}, not {stream}",
                    level.kernel.stream()
                )));
            }
            Some(level.kernel.clone())
        }
    };
    let kernel = &level.kernel;
    // 3. The module is the one signed.
    let module = base64::engine::general_purpose::STANDARD
        .decode(&publish.module)
        .map_err(|e| Failure::invalid(format!("module is not base64: {e}")))?;
    if module.is_empty() {
        return Err(Failure::invalid("module is empty"));
    }
    check_digest("the module", &module, &level.module_sha256)
        .map_err(|e| Failure::invalid(e.to_string()))?;
    // 4. The manifest is the one signed, and describes this module for this kernel.
    check_digest(
        "the manifest",
        publish.manifest.as_bytes(),
        &level.manifest_sha256,
    )
    .map_err(|e| Failure::invalid(e.to_string()))?;
    let manifest: Manifest = serde_json::from_str(&publish.manifest)
        .map_err(|e| Failure::invalid(format!("manifest is not a graft manifest: {e}")))?;
    if manifest.kernel.release != kernel.release
        || !manifest
            .kernel
            .build_id
            .eq_ignore_ascii_case(&kernel.build_id)
    {
        return Err(Failure::invalid(format!(
            "the manifest is for kernel {} build {}, stream {stream} is kernel {} build {}",
            manifest.kernel.release, manifest.kernel.build_id, kernel.release, kernel.build_id
        )));
    }
    if manifest.module.sha256 != level.module_sha256 {
        return Err(Failure::invalid(format!(
            "the manifest's module digest {} is not the module's {}",
            manifest.module.sha256, level.module_sha256
        )));
    }
    if manifest.name != level.module_name {
        return Err(Failure::invalid(format!(
            "the manifest names module {:?}, the signed metadata {:?}",
            manifest.name, level.module_name
        )));
    }
    // 5. The next level, carrying every patch of the one before (atomic replace would
    //    otherwise silently revert a fix).
    let expected = latest.map_or(1, |l| l.level.saturating_add(1));
    if level.level != expected {
        return Err(Failure::conflict(match latest {
            Some(l) => format!(
                "level {} is out of order: {stream} is at level {}, the next is {expected}",
                level.level, l.level
            ),
            None => format!(
                "level {} is out of order: the first level of {stream} is 1",
                level.level
            ),
        }));
    }
    if let Some(latest) = latest {
        let dropped: Vec<&String> = latest
            .patches
            .iter()
            .filter(|p| !level.patches.contains(p))
            .collect();
        if !dropped.is_empty() && !publish.allow_dropped_patches {
            return Err(Failure::conflict(format!(
                "level {} drops patches of level {}: {}; publish with allow_dropped_patches to revert them on purpose",
                level.level,
                latest.level,
                dropped.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    Ok(NewLevel {
        create_stream,
        stream: stream.to_string(),
        level: level.level,
        version: level.version,
        module_name: level.module_name.clone(),
        module_sha256: level.module_sha256.clone(),
        module,
        manifest: publish.manifest.clone(),
        patches: level.patches.clone(),
        signed_json: serde_json::to_string(&publish.signed)
            .map_err(|e| Failure::internal(e.to_string()))?,
        expires: level.expires,
        published_ms: now_ms,
        published_by: by.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use graft_manifest::{Digest256, ManifestKernel};
    use graft_protocol::trust::{generate_key, Level, SignedLevel};
    use graft_protocol::KernelId;

    use super::*;
    use crate::store::LatestLevel;

    const NOW: u64 = 1_000_000;

    fn kernel() -> KernelId {
        KernelId {
            release: "6.1.0-56-amd64".into(),
            build_id: "eb4fbcd037e7253717950bf2b93bd5566f47c56f".into(),
        }
    }

    struct Case {
        key: ed25519_dalek::SigningKey,
        level: Level,
        module: Vec<u8>,
        manifest: Manifest,
    }

    impl Case {
        fn new(level: u32, version: u64, patches: &[&str]) -> Self {
            let module = format!("module of level {level}").into_bytes();
            let sha = graft_manifest::sha256(&module);
            let manifest = Manifest {
                name: format!("fix{level}"),
                kernel: ManifestKernel {
                    target: "debian:6.1.0-56-amd64".into(),
                    release: kernel().release,
                    build_id: kernel().build_id,
                },
                replace: true,
                set: None,
                functions: vec![],
                new_functions: vec![],
                patches: vec![],
                module: Digest256 {
                    file: format!("fix{level}.ko"),
                    sha256: sha.clone(),
                },
                graft_version: "0.1.0".into(),
            };
            let level = Level {
                stream: kernel().stream(),
                kernel: kernel(),
                level,
                version,
                module_name: manifest.name.clone(),
                module_sha256: sha,
                manifest_sha256: String::new(),
                patches: patches.iter().map(|p| p.to_string()).collect(),
                expires: NOW + 3600,
                probes: Default::default(),
            };
            Self {
                key: generate_key(),
                level,
                module,
                manifest,
            }
        }

        fn publish(&self) -> Publish {
            let manifest = serde_json::to_string(&self.manifest).unwrap();
            let mut level = self.level.clone();
            if level.manifest_sha256.is_empty() {
                level.manifest_sha256 = graft_manifest::sha256(manifest.as_bytes());
            }
            Publish {
                signed: SignedLevel::sign(&level, &self.key),
                module: base64::engine::general_purpose::STANDARD.encode(&self.module),
                manifest,
                allow_dropped_patches: false,
            }
        }

        fn check(&self, current: Option<&StreamState>) -> Result<NewLevel, Failure> {
            self.check_publish(&self.publish(), current)
        }

        fn check_publish(
            &self,
            p: &Publish,
            current: Option<&StreamState>,
        ) -> Result<NewLevel, Failure> {
            check(
                &kernel().stream(),
                p,
                &[self.key.verifying_key()],
                current,
                NOW,
                NOW * 1000,
                "ops",
            )
        }
    }

    fn at_level(level: u32, version: u64, patches: &[&str]) -> StreamState {
        StreamState {
            kernel: kernel(),
            latest: Some(LatestLevel {
                level,
                version,
                patches: patches.iter().map(|p| p.to_string()).collect(),
            }),
        }
    }

    fn refused(r: Result<NewLevel, Failure>, status: u16, needle: &str) {
        let f = r.unwrap_err();
        assert_eq!(f.status.as_u16(), status, "{f:?}");
        assert!(
            f.message.contains(needle),
            "{needle:?} not in {:?}",
            f.message
        );
    }

    #[test]
    fn a_first_level_creates_its_stream() {
        let new = Case::new(1, 1, &["p1"]).check(None).unwrap();
        assert_eq!(new.create_stream, Some(kernel()));
        assert_eq!((new.level, new.version), (1, 1));
    }

    #[test]
    fn the_next_level_carries_the_previous_patches() {
        let new = Case::new(2, 7, &["p1", "p2"])
            .check(Some(&at_level(1, 3, &["p1"])))
            .unwrap();
        assert_eq!(new.create_stream, None);
    }

    #[test]
    fn foreign_signatures_are_refused() {
        let case = Case::new(1, 1, &[]);
        let mut p = case.publish();
        p.signed = SignedLevel::sign(&p.signed.peek().unwrap(), &generate_key());
        refused(case.check_publish(&p, None), 400, "not signed by a key");
    }

    #[test]
    fn a_module_that_is_not_the_signed_one_is_refused() {
        let mut case = Case::new(1, 1, &[]);
        case.module = b"another module".to_vec();
        refused(case.check(None), 400, "the module has SHA-256");
    }

    #[test]
    fn a_manifest_for_another_kernel_is_refused() {
        let mut case = Case::new(1, 1, &[]);
        case.manifest.kernel.build_id = "00".repeat(20);
        refused(case.check(None), 400, "the manifest is for kernel");
        let mut case = Case::new(1, 1, &[]);
        case.manifest.module.sha256 = "11".repeat(32);
        refused(case.check(None), 400, "module digest");
        let case = Case::new(1, 1, &[]);
        let mut p = case.publish();
        p.manifest.push(' ');
        refused(
            case.check_publish(&p, None),
            400,
            "the manifest has SHA-256",
        );
    }

    #[test]
    fn signed_metadata_for_another_kernel_than_the_stream_is_refused() {
        let mut case = Case::new(1, 1, &[]);
        case.level.kernel.release = "6.1.0-57-amd64".into();
        case.manifest.kernel.release = "6.1.0-57-amd64".into();
        let mut state = at_level(1, 1, &[]);
        state.latest = None;
        refused(
            case.check(Some(&state)),
            400,
            "signed metadata is for kernel",
        );
        refused(case.check(None), 400, "stream is");
    }

    #[test]
    fn levels_out_of_order_conflict() {
        refused(
            Case::new(3, 9, &[]).check(Some(&at_level(1, 1, &[]))),
            409,
            "the next is 2",
        );
        refused(Case::new(2, 9, &[]).check(None), 409, "the first level");
    }

    #[test]
    fn dropped_patches_conflict_unless_allowed() {
        let case = Case::new(2, 2, &["p2"]);
        let state = at_level(1, 1, &["p1"]);
        refused(
            case.check(Some(&state)),
            409,
            "drops patches of level 1: p1",
        );
        let mut p = case.publish();
        p.allow_dropped_patches = true;
        assert!(case.check_publish(&p, Some(&state)).is_ok());
    }

    #[test]
    fn old_or_equal_versions_are_rollbacks() {
        refused(
            Case::new(2, 4, &[]).check(Some(&at_level(1, 5, &[]))),
            409,
            "rollback",
        );
        refused(
            Case::new(2, 5, &[]).check(Some(&at_level(1, 5, &[]))),
            409,
            "not newer",
        );
    }

    #[test]
    fn expired_metadata_is_refused() {
        let mut case = Case::new(1, 1, &[]);
        case.level.expires = NOW - 1;
        refused(case.check(None), 400, "expired");
    }
}
