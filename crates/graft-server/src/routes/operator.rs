//! The operator API: reading the fleet (viewer), assigning levels (operator), tokens, revoking
//! hosts and the audit log (admin). Every action that changes something is audited, refused
//! ones included; publishing is in [`super::publish`].

use axum::extract::State;
use axum::Json;
use graft_protocol::api::{
    check_string, parse_selector, Assign, Assigned, AuditEntry, HostFilter, HostView, KernelView,
    NewToken, Outcome, Role, StreamView, TokenCreated,
};

use super::{audited, DEFAULT_LIST, MAX_LIST};
use crate::auth::{hash_secret, new_secret, Operator, ENROLL_ROLE};
use crate::error::Failure;
use crate::extract::{Body, Path, Query};
use crate::store::AssignResult;
use crate::AppState;

/// `GET /v1/hosts`.
pub(crate) async fn hosts(
    State(state): State<AppState>,
    op: Operator,
    Query(filter): Query<HostFilter>,
) -> Result<Json<Vec<HostView>>, Failure> {
    op.require(Role::Viewer)?;
    let label = filter
        .label
        .as_deref()
        .map(parse_selector)
        .transpose()
        .map_err(Failure::invalid)?;
    if let Some(health) = filter.health.as_deref() {
        if health != "healthy" && health != "unhealthy" {
            return Err(Failure::invalid(format!(
                "health {health:?} is neither \"healthy\" nor \"unhealthy\""
            )));
        }
    }
    if let Some(kernel) = &filter.kernel {
        check_string("kernel", kernel).map_err(Failure::invalid)?;
    }
    let limit = filter.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
    Ok(Json(state.store.hosts(&filter, label, limit).await?))
}

/// `GET /v1/hosts/{id}/outcomes`.
pub(crate) async fn outcomes(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<Vec<Outcome>>, Failure> {
    op.require(Role::Viewer)?;
    check_string("host", &id).map_err(Failure::invalid)?;
    state
        .store
        .outcomes(&id)
        .await?
        .map(Json)
        .ok_or_else(|| Failure::not_found(format!("no host {id}")))
}

/// `POST /v1/hosts/{id}/revoke`.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<HostView>, Failure> {
    let what = format!("revoke host {id}");
    let result = async {
        op.require(Role::Admin)?;
        let revoked = state.store.revoke(&id, crate::now_ms()).await?;
        state.checkins.invalidate();
        if !revoked {
            return Err(Failure::not_found(format!("no host {id}")));
        }
        state
            .store
            .host_view(&id)
            .await?
            .ok_or_else(|| Failure::not_found(format!("no host {id}")))
    }
    .await;
    audited(&state, &op.name, what, result).await.map(Json)
}

/// `GET /v1/kernels`.
pub(crate) async fn kernels(
    State(state): State<AppState>,
    op: Operator,
) -> Result<Json<Vec<KernelView>>, Failure> {
    op.require(Role::Viewer)?;
    Ok(Json(state.store.kernels().await?))
}

/// `GET /v1/streams`.
pub(crate) async fn streams(
    State(state): State<AppState>,
    op: Operator,
) -> Result<Json<Vec<StreamView>>, Failure> {
    op.require(Role::Viewer)?;
    Ok(Json(state.store.streams().await?))
}

/// `GET /v1/streams/{stream}`.
pub(crate) async fn stream(
    State(state): State<AppState>,
    op: Operator,
    Path(stream): Path<String>,
) -> Result<Json<StreamView>, Failure> {
    op.require(Role::Viewer)?;
    state
        .store
        .stream_view(&stream)
        .await?
        .map(Json)
        .ok_or_else(|| Failure::not_found(format!("no stream {stream}")))
}

/// `POST /v1/assignments`.
pub(crate) async fn assign(
    State(state): State<AppState>,
    op: Operator,
    body: Result<Body<Assign>, Failure>,
) -> Result<Json<Assigned>, Failure> {
    let what = match &body {
        Ok(Body(a)) => format!(
            "assign {} level {} to {}",
            a.stream,
            a.level.map_or("none".to_string(), |l| l.to_string()),
            a.selector.as_deref().unwrap_or("every host")
        ),
        Err(_) => "assign (malformed request)".to_string(),
    };
    let result = async {
        op.require(Role::Operator)?;
        let Body(assign) = body?;
        check_string("stream", &assign.stream).map_err(Failure::invalid)?;
        let selector = assign
            .selector
            .as_deref()
            .map(parse_selector)
            .transpose()
            .map_err(Failure::invalid)?;
        if state.store.stream_state(&assign.stream).await?.is_none() {
            return Err(Failure::not_found(format!("no stream {}", assign.stream)));
        }
        if let Some(level) = assign.level {
            if !state.store.level_exists(&assign.stream, level).await? {
                return Err(Failure::not_found(format!(
                    "stream {} has no level {level}: publish it first",
                    assign.stream
                )));
            }
        }
        let assigned = state
            .store
            .assign(&assign.stream, assign.level, selector)
            .await?;
        state.checkins.invalidate();
        match assigned {
            AssignResult::Changed(hosts) => Ok(Assigned { hosts }),
            AssignResult::NoMatch => Err(Failure::not_found(format!(
                "no host on stream {} has the label {}: nothing was assigned",
                assign.stream,
                assign.selector.as_deref().unwrap_or_default()
            ))),
        }
    }
    .await;
    audited(&state, &op.name, what, result).await.map(Json)
}

/// `POST /v1/tokens`.
pub(crate) async fn new_token(
    State(state): State<AppState>,
    op: Operator,
    body: Result<Body<NewToken>, Failure>,
) -> Result<Json<TokenCreated>, Failure> {
    let what = match &body {
        Ok(Body(t)) => format!("make token {:?} with role {}", t.name, t.role),
        Err(_) => "make token (malformed request)".to_string(),
    };
    let result = async {
        op.require(Role::Admin)?;
        let Body(new) = body?;
        check_string("name", &new.name).map_err(Failure::invalid)?;
        if new.name.is_empty() {
            return Err(Failure::invalid("name is empty"));
        }
        if Role::parse(&new.role).is_none() && new.role != ENROLL_ROLE {
            return Err(Failure::invalid(format!(
                "role {:?} is none of viewer, operator, admin, enroll",
                new.role
            )));
        }
        let token = new_secret();
        state
            .store
            .add_token(&hash_secret(&token), &new.name, &new.role, crate::now_ms())
            .await?;
        Ok(TokenCreated {
            name: new.name,
            role: new.role,
            token,
        })
    }
    .await;
    audited(&state, &op.name, what, result).await.map(Json)
}

/// The query of `GET /v1/audit`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<u32>,
}

/// `GET /v1/audit`: newest first.
pub(crate) async fn audit(
    State(state): State<AppState>,
    op: Operator,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, Failure> {
    op.require(Role::Admin)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
    Ok(Json(state.store.audit_log(limit).await?))
}
