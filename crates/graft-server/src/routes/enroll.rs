//! `POST /v1/enroll`: a host joins the fleet with an enroll token, and gets its own credential
//! and the publisher keys to pin. Its stream is created on demand from its kernel.

use axum::extract::State;
use axum::Json;
use graft_protocol::api::{EnrollRequest, EnrollResponse};

use crate::auth::{hash_secret, new_secret, random_hex, Enroller};
use crate::error::Failure;
use crate::extract::Body;
use crate::store::NewHost;
use crate::AppState;

pub(crate) async fn enroll(
    State(state): State<AppState>,
    enroller: Enroller,
    Body(request): Body<EnrollRequest>,
) -> Result<Json<EnrollResponse>, Failure> {
    // 1. The protocol's limits, naming the field at fault.
    request.check().map_err(Failure::invalid)?;
    // 2. A new id and credential; only the credential's hash is stored.
    let credential = new_secret();
    let host = NewHost {
        id: random_hex(16),
        hostname: request.hostname,
        labels: request.labels,
        credential_hash: hash_secret(&credential),
        kernel: request.kernel,
        now_ms: crate::now_ms(),
    };
    let (id, hostname, stream) = (host.id.clone(), host.hostname.clone(), host.kernel.stream());
    let desired = state.enrollments.submit(host).await?;
    // 3. The keys the host pins: it trusts the publisher, not this server.
    let keys = state.store.publisher_keys().await?;
    tracing::info!(
        host = id,
        hostname,
        stream,
        ?desired,
        by = enroller.name,
        "enrolled"
    );
    Ok(Json(EnrollResponse {
        host_id: id,
        credential,
        keys,
    }))
}
