//! The router: every endpoint of [`graft_protocol::api`], and what is shared by the handlers
//! (the audit log, health, the answers for unknown paths and methods).

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use graft_protocol::api::{AuditEntry, MAX_BODY};

use crate::auth::random_hex;
use crate::error::Failure;
use crate::AppState;

pub(crate) mod enroll;
pub(crate) mod host;
pub(crate) mod operator;
pub(crate) mod publish;
pub(crate) mod rollout;

/// Most entries a list answers, whatever `limit` asks.
pub(crate) const MAX_LIST: u32 = 10_000;
/// Entries a list answers without `limit`.
pub(crate) const DEFAULT_LIST: u32 = 1_000;

/// The application. Paths must match [`crate::openapi::ENDPOINTS`] (the tests check both ways).
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::dashboard::index))
        .route(
            "/login",
            get(crate::dashboard::login_page).post(crate::dashboard::login),
        )
        .route("/logout", get(crate::dashboard::logout))
        .route("/rollouts/{id}", get(crate::dashboard::rollout))
        .route("/hosts", get(crate::dashboard::hosts))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/v1/health", get(health))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/enroll", post(enroll::enroll))
        .route("/v1/host/desired", get(host::desired))
        .route("/v1/host/report", post(host::report))
        .route("/v1/modules/{sha256}", get(host::module))
        .route("/v1/hosts", get(operator::hosts))
        .route("/v1/hosts/{id}/outcomes", get(operator::outcomes))
        .route("/v1/hosts/{id}/revoke", post(operator::revoke))
        .route("/v1/kernels", get(operator::kernels))
        .route("/v1/streams", get(operator::streams))
        .route("/v1/streams/{stream}", get(operator::stream))
        .route("/v1/streams/{stream}/levels", post(publish::publish))
        .route("/v1/assignments", post(operator::assign))
        .route("/v1/rollouts", post(rollout::start).get(rollout::list))
        .route("/v1/rollouts/{id}", get(rollout::get_one))
        .route("/v1/rollouts/{id}/pause", post(rollout::pause))
        .route("/v1/rollouts/{id}/resume", post(rollout::resume))
        .route("/v1/rollouts/{id}/abort", post(rollout::abort))
        .route("/v1/rollouts/{id}/rollback", post(rollout::rollback))
        .route("/v1/tokens", post(operator::new_token))
        .route("/v1/audit", get(operator::audit))
        .fallback(no_endpoint)
        .method_not_allowed_fallback(no_method)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// `GET /v1/health`: whether this replica and its database answer. No credential needed, for
/// load balancers.
async fn health(State(state): State<AppState>) -> Result<Json<serde_json::Value>, Failure> {
    state.store.ping().await?;
    Ok(Json(serde_json::json!({
        "ok": true,
        "database": state.store.backend().name(),
    })))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn no_endpoint(method: Method, uri: Uri) -> Failure {
    Failure::not_found(format!(
        "no endpoint {method} {}: see /v1/openapi.json",
        uri.path()
    ))
}

async fn no_method(method: Method, uri: Uri) -> Failure {
    Failure {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        kind: "invalid",
        message: format!(
            "{} does not answer {method}: see /v1/openapi.json",
            uri.path()
        ),
    }
}

/// Records an operator's action and passes its result through. The action has already
/// happened (or been refused), so a failure to write the audit row is logged, not answered.
pub(crate) async fn audited<T>(
    state: &AppState,
    who: &str,
    what: String,
    result: Result<T, Failure>,
) -> Result<T, Failure> {
    let entry = AuditEntry {
        at_ms: crate::now_ms(),
        who: who.to_string(),
        what,
        result: match &result {
            Ok(_) => "ok".to_string(),
            Err(f) => f.audit_text(),
        },
    };
    // Ids sort by time, then by the order this replica wrote them (entries of one millisecond
    // keep the order they happened in); the random part keeps replicas' ids apart.
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQUENCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = format!("{:016x}{seq:012x}{}", entry.at_ms, random_hex(8));
    if let Err(e) = state.store.audit(&id, &entry).await {
        tracing::error!(error = %e, who = entry.who, what = entry.what, result = entry.result, "writing the audit log failed");
    } else {
        tracing::info!(
            who = entry.who,
            what = entry.what,
            result = entry.result,
            "audit"
        );
    }
    result
}
