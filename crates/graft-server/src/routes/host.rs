//! What hosts call: their desired state (polled, so cheap: one indexed query, no write, 304
//! when unchanged), their reports, and module downloads.

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use graft_protocol::api::{Desired, Report};
use graft_protocol::trust::SignedLevel;
use sha2::{Digest, Sha256};

use crate::auth::{authenticate, revoked_host, Credential, HostCaller, Reader};
use crate::checkins::{Answer, Entry};
use crate::error::Failure;
use crate::extract::{Body, Path};
use crate::store::{DesiredRow, Principal};
use crate::AppState;

/// `GET /v1/host/desired`.
pub(crate) async fn desired(
    State(state): State<AppState>,
    credential: Credential,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    // 1. From memory while nothing changed (no query at all); else one indexed query, kept.
    state.checkins.validate(&state.store).await?;
    let entry = match state.checkins.get(&credential.0) {
        Some(entry) => entry,
        None => look_up(&state, &credential).await?,
    };
    if entry.revoked {
        return Err(revoked_host(&entry.host_id));
    }
    // 2. The check-in time goes to the batch, not to the database.
    state.last_seen.record(&entry.host_id, crate::now_ms());
    // 3. Unchanged: 304, no body.
    let tag = &entry.answer.tag;
    let tag_header = HeaderValue::from_str(tag).map_err(|e| Failure::internal(e.to_string()))?;
    if matches_tag(&headers, tag) {
        crate::metrics::Counters::add(&state.counters.checkins_unchanged);
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, tag_header)]).into_response());
    }
    // 4. The level and the publisher's signed metadata, as stored.
    crate::metrics::Counters::add(&state.counters.checkins_changed);
    Ok((
        [
            (ETAG, tag_header),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
        ],
        entry.answer.body.clone(),
    )
        .into_response())
}

/// The host holding `credential` and its answer, from the database: one query on the
/// credential's unique index joined to the level's primary key; then kept in the cache.
async fn look_up(state: &AppState, credential: &Credential) -> Result<Entry, Failure> {
    crate::metrics::Counters::add(&state.counters.checkin_lookups);
    let epoch = state.checkins.epoch();
    let Some(row) = state.store.desired(&credential.0).await? else {
        // Not a host: find out which answer fits (unknown, or a token of another kind).
        return Err(match authenticate(state, credential).await? {
            Principal::Host { id, .. } => Failure::unauthorized(format!("host {id} is unknown")),
            Principal::Token { .. } => Failure::forbidden(
                "this endpoint is for hosts: use the host credential enrollment returned",
            ),
        });
    };
    let tag = etag(&row);
    let (level, signed) = match &row.level {
        Some((level, _, signed)) => {
            let signed: SignedLevel = serde_json::from_str(signed).map_err(|e| {
                tracing::error!(stream = row.stream, level, error = %e, "stored signed metadata is corrupt");
                Failure::internal("stored level metadata is corrupt: see the server's log")
            })?;
            (Some(*level), Some(signed))
        }
        None => (None, None),
    };
    // The rollout's level travels for its probes only when it has some.
    let probes = match &row.probes {
        Some((_, json)) => serde_json::from_str::<SignedLevel>(json)
            .ok()
            .filter(|s| s.peek().is_ok_and(|l| !l.probes.is_empty())),
        None => None,
    };
    let body = serde_json::to_vec(&Desired {
        stream: row.stream.clone(),
        level,
        signed,
        report_health: row.report_health,
        probes,
    })
    .map_err(|e| Failure::internal(e.to_string()))?;
    Ok(state.checkins.put(
        &credential.0,
        epoch,
        row.host_id,
        row.revoked,
        Answer {
            tag,
            body: body.into(),
        },
    ))
}

/// A strong tag of what `desired` answers, from database state only, so every replica gives
/// the same tag for the same answer: the stream, the level and its signed version (a level's
/// metadata never changes once published, and a new signing is a new version), and whether a
/// rollout samples the host's health.
fn etag(row: &DesiredRow) -> String {
    let (level, version) = row
        .level
        .as_ref()
        .map_or(("none".to_string(), "0".to_string()), |(l, v, _)| {
            (l.to_string(), v.to_string())
        });
    let probes = row.probes.as_ref().map_or(0, |(version, _)| *version);
    let digest = Sha256::digest(
        format!(
            "{}\n{level}\n{version}\n{}\n{probes}",
            row.stream,
            u8::from(row.report_health)
        )
        .as_bytes(),
    );
    format!("\"{}\"", &hex::encode(digest)[..32])
}

/// Whether `If-None-Match` names `tag` (or `*`); weak forms compare equal, as RFC 9110 says
/// for this header.
fn matches_tag(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == tag)
}

/// `POST /v1/host/report`: 204.
pub(crate) async fn report(
    State(state): State<AppState>,
    host: HostCaller,
    Body(report): Body<Report>,
) -> Result<StatusCode, Failure> {
    report.check().map_err(Failure::invalid)?;
    let row = state
        .store
        .host(&host.id)
        .await?
        .ok_or_else(|| Failure::unauthorized(format!("host {} is unknown", host.id)))?;
    let moved = report.kernel != row.kernel;
    let report = crate::group::ReportWrite {
        host: row,
        report,
        now_ms: crate::now_ms(),
    };
    state.reports.submit(report).await?;
    crate::metrics::Counters::add(&state.counters.reports);
    if moved {
        // The host moved to another stream: its answer changed.
        state.checkins.invalidate();
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/modules/{sha256}`: the bytes. Content-addressed, so they never change.
pub(crate) async fn module(
    State(state): State<AppState>,
    _reader: Reader,
    Path(sha256): Path<String>,
) -> Result<Response, Failure> {
    let sha256 = sha256.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::invalid(format!(
            "{sha256:?} is not a SHA-256 (64 hex digits)"
        )));
    }
    let bytes = state
        .store
        .module(&sha256)
        .await?
        .ok_or_else(|| Failure::not_found(format!("no module with SHA-256 {sha256}")))?;
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=31536000, immutable"),
            ),
        ],
        bytes,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(level: Option<(u32, u64, String)>) -> DesiredRow {
        DesiredRow {
            host_id: "h".into(),
            stream: "s@1".into(),
            revoked: false,
            level,
            report_health: false,
            probes: None,
        }
    }

    #[test]
    fn the_tag_changes_with_level_version_and_sampling_only() {
        let none = etag(&row(None));
        let one = etag(&row(Some((1, 5, "x".into()))));
        let one_again = etag(&row(Some((1, 5, "y".into()))));
        let resigned = etag(&row(Some((1, 6, "x".into()))));
        assert_ne!(none, one);
        assert_eq!(one, one_again);
        assert_ne!(one, resigned);
        assert!(one.starts_with('"') && one.ends_with('"'));
        let mut asked = row(Some((1, 5, "x".into())));
        asked.report_health = true;
        assert_ne!(
            etag(&asked),
            one,
            "a host asked for health sees a new answer"
        );
    }

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let mut h = HeaderMap::new();
        assert!(!matches_tag(&h, "\"a\""));
        h.insert(IF_NONE_MATCH, "\"b\", W/\"a\"".parse().unwrap());
        assert!(matches_tag(&h, "\"a\""));
        assert!(!matches_tag(&h, "\"c\""));
        h.insert(IF_NONE_MATCH, "*".parse().unwrap());
        assert!(matches_tag(&h, "\"c\""));
    }
}
