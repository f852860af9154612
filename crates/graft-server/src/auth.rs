//! Who is calling: `Authorization: Bearer <secret>`, looked up by the SHA-256 of the secret
//! (the database never holds a secret, so a leaked database grants nothing).
//!
//! Three kinds of caller: operator tokens (viewer < operator < admin), enroll tokens (only
//! `POST /v1/enroll`) and host credentials (only `/v1/host/*` and module downloads). Unknown
//! → 401, known but the wrong kind or role → 403, revoked → 401 saying so.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use graft_protocol::api::Role;
use rand_core::RngCore;
use sha2::{Digest, Sha256};

use crate::error::Failure;
use crate::store::Principal;
use crate::AppState;

/// The role name of enroll tokens.
pub(crate) const ENROLL_ROLE: &str = "enroll";

/// A fresh secret: 32 random bytes, hex.
pub(crate) fn new_secret() -> String {
    random_hex(32)
}

/// `n` random bytes, hex: ids and secrets.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    rand_core::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// What the database keeps of a secret.
pub(crate) fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The hash of the request's bearer secret.
#[derive(Debug, Clone)]
pub(crate) struct Credential(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Credential {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Failure> {
        bearer(&parts.headers).map(|secret| Credential(hash_secret(secret)))
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, Failure> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            Failure::unauthorized("no credential: send Authorization: Bearer <token>")
        })?;
    let text = value
        .to_str()
        .map_err(|_| Failure::unauthorized("the Authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, secret))
            if scheme.eq_ignore_ascii_case("bearer") && !secret.trim().is_empty() =>
        {
            Ok(secret.trim())
        }
        _ => Err(Failure::unauthorized(
            "the Authorization header is not `Bearer <token>`",
        )),
    }
}

/// Looks up a credential, refusing unknown and revoked ones.
pub(crate) async fn authenticate(
    state: &AppState,
    credential: &Credential,
) -> Result<Principal, Failure> {
    match state.store.principal(&credential.0).await? {
        None => Err(Failure::unauthorized("unknown credential")),
        Some(Principal::Host { revoked: true, id }) => Err(revoked_host(&id)),
        Some(Principal::Token {
            revoked: true,
            name,
            ..
        }) => Err(Failure::unauthorized(format!("token {name:?} was revoked"))),
        Some(p) => Ok(p),
    }
}

/// The 401 a revoked host gets.
pub(crate) fn revoked_host(id: &str) -> Failure {
    Failure::unauthorized(format!(
        "host {id} was revoked by the fleet's admin: its credential no longer works; re-enroll it to rejoin"
    ))
}

/// An operator token's holder (any role: the handler checks the role it needs, so that a
/// refusal is audited with the caller's name).
#[derive(Debug, Clone)]
pub(crate) struct Operator {
    pub name: String,
    pub role: Role,
}

impl Operator {
    /// Refuses a caller whose role is below `needed`.
    pub fn require(&self, needed: Role) -> Result<(), Failure> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Failure::forbidden(format!(
                "token {:?} has role {}; this needs {}",
                self.name,
                self.role.as_str(),
                needed.as_str()
            )))
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Failure> {
        let credential = Credential::from_request_parts(parts, state).await?;
        match authenticate(state, &credential).await? {
            Principal::Token { name, role, .. } => match Role::parse(&role) {
                Some(role) => Ok(Operator { name, role }),
                None => Err(Failure::forbidden(format!(
                    "token {name:?} is an enroll token: it can only enroll hosts (POST /v1/enroll)"
                ))),
            },
            Principal::Host { .. } => Err(Failure::forbidden(
                "a host credential cannot use the operator API",
            )),
        }
    }
}

/// An enroll token's holder.
#[derive(Debug, Clone)]
pub(crate) struct Enroller {
    pub name: String,
}

impl FromRequestParts<AppState> for Enroller {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Failure> {
        let credential = Credential::from_request_parts(parts, state).await?;
        match authenticate(state, &credential).await? {
            Principal::Token { name, role, .. } if role == ENROLL_ROLE => Ok(Enroller { name }),
            Principal::Token { name, .. } => Err(Failure::forbidden(format!(
                "token {name:?} is not an enroll token: make one with POST /v1/tokens and role \"enroll\""
            ))),
            Principal::Host { .. } => Err(Failure::forbidden(
                "a host credential cannot enroll a host: use an enroll token",
            )),
        }
    }
}

/// A host credential's holder (not revoked).
#[derive(Debug, Clone)]
pub(crate) struct HostCaller {
    pub id: String,
}

impl FromRequestParts<AppState> for HostCaller {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Failure> {
        let credential = Credential::from_request_parts(parts, state).await?;
        match authenticate(state, &credential).await? {
            Principal::Host { id, .. } => Ok(HostCaller { id }),
            Principal::Token { .. } => Err(Failure::forbidden(
                "this endpoint is for hosts: use the host credential enrollment returned",
            )),
        }
    }
}

/// A host or an operator token of any role (module downloads).
#[derive(Debug, Clone)]
pub(crate) struct Reader;

impl FromRequestParts<AppState> for Reader {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Failure> {
        let credential = Credential::from_request_parts(parts, state).await?;
        match authenticate(state, &credential).await? {
            Principal::Host { .. } => Ok(Reader),
            Principal::Token { role, name, .. } => match Role::parse(&role) {
                Some(_) => Ok(Reader),
                None => Err(Failure::forbidden(format!(
                    "token {name:?} is an enroll token: it can only enroll hosts"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().status, 401);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "abc");
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert!(bearer(&h).is_err());
        h.insert("authorization", "Bearer ".parse().unwrap());
        assert!(bearer(&h).is_err());
    }

    #[test]
    fn secrets_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!(hash_secret(&a).len(), 64);
        assert_ne!(hash_secret(&a), a);
    }

    #[test]
    fn roles_below_the_need_are_forbidden() {
        let viewer = Operator {
            name: "v".into(),
            role: Role::Viewer,
        };
        assert_eq!(viewer.require(Role::Operator).unwrap_err().status, 403);
        assert!(viewer.require(Role::Viewer).is_ok());
    }
}
