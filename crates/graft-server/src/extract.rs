//! Extractors whose every rejection is a [`Failure`], so that a malformed body, query or path
//! answers an `ApiError` JSON body like every other error (axum's own answer plain text).
//!
//! Bodies are read as bytes and parsed with serde_json whatever their `Content-Type`: a
//! machine API gains nothing from refusing a missing header, and the message then always says
//! what in the JSON is wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::Failure;

/// A JSON body.
#[derive(Debug)]
pub(crate) struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Failure> {
        // A declared length over the limit is refused before reading a byte of it; a body
        // without one is cut off at the limit by axum's DefaultBodyLimit.
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > graft_protocol::api::MAX_BODY as u64) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                Failure::invalid(format!("reading the body: {e}"))
            }
        })?;
        serde_json::from_slice(&bytes).map(Body).map_err(|e| {
            Failure::invalid(format!(
                "the body is not valid JSON of the expected shape: {e}"
            ))
        })
    }
}

fn too_large() -> Failure {
    Failure::too_large(format!(
        "the body is larger than the limit of {} bytes",
        graft_protocol::api::MAX_BODY
    ))
}

/// A query string.
#[derive(Debug)]
pub(crate) struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| Failure::invalid(format!("the query string: {}", e.body_text())))
    }
}

/// Path parameters.
#[derive(Debug)]
pub(crate) struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Failure> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| Failure::invalid(format!("the path: {}", e.body_text())))
    }
}
