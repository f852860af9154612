//! The fleet API's client, shared by `graft agent` and `graft fleet`.
//!
//! HTTPS is checked against the fleet's own CA (`ca.pem` from `graft server init`), never the
//! web's roots: a fleet trusts its server, not every CA on the internet. Plain HTTP is allowed
//! only to a loopback address, for tests and the lab's bridged character device.

pub mod publish;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use graft_protocol::api::{
    ApiError, Assign, Assigned, AuditEntry, Desired, EnrollRequest, EnrollResponse, HostFilter,
    HostView, KernelView, LevelView, NewToken, Outcome, Publish, Report, StreamView, TokenCreated,
};
use graft_protocol::API;
use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::http::{Response, StatusCode};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Body;

/// Why a request did not get its answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached (or the connection broke).
    #[error("the fleet server at {url} is unreachable: {reason}")]
    Unreachable {
        /// The server.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("the fleet server refused {what}: {message} (HTTP {status}, {kind})")]
    Api {
        /// The request.
        what: String,
        /// HTTP status.
        status: u16,
        /// The error's kind.
        kind: String,
        /// The server's explanation.
        message: String,
    },
    /// The answer is not what the protocol says.
    #[error("the fleet server's answer to {what} is malformed: {reason}")]
    Malformed {
        /// The request.
        what: String,
        /// Why.
        reason: String,
    },
    /// The server's address or CA is unusable.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// Worth retrying later: the server is away or overloaded, not refusing.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// A client of one fleet server, with an optional bearer secret.
#[derive(Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
    secret: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `server` (`https://...`, or `http://` to a loopback address), trusting the
    /// CA certificate in `ca` for HTTPS.
    pub fn new(server: &str, ca: Option<&Path>) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_string();
        let tls = if let Some(rest) = base.strip_prefix("http://") {
            if !is_loopback(rest) {
                return Err(ClientError::Config(format!(
                    "{server}: plain HTTP is allowed only to a loopback address; use https:// with the fleet's CA (--ca)"
                )));
            }
            TlsConfig::builder().build()
        } else if base.starts_with("https://") {
            let ca = ca.ok_or_else(|| {
                ClientError::Config(format!(
                    "{server}: HTTPS needs the fleet's CA certificate (--ca DIR/ca.pem from `graft server init`)"
                ))
            })?;
            let pem = std::fs::read(ca).map_err(|e| {
                ClientError::Config(format!("reading the fleet CA {}: {e}", ca.display()))
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                ClientError::Config(format!("{} is not a PEM certificate: {e}", ca.display()))
            })?;
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&[cert.to_owned()]))
                .build()
        } else {
            return Err(ClientError::Config(format!(
                "{server}: the server's URL must start with https:// (or http:// to a loopback address)"
            )));
        };
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(base.starts_with("https://"))
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(120)))
            .tls_config(tls)
            .build();
        Ok(Self {
            base,
            agent: config.into(),
            secret: None,
        })
    }

    /// The same client, authenticating with `secret` (a token or a host credential).
    pub fn with_secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Enrolls a host with a bootstrap token (the client's secret).
    pub fn enroll(&self, request: &EnrollRequest) -> Result<EnrollResponse, ClientError> {
        self.post_json("enroll", "/enroll", request)
    }

    /// The desired state of this host; `None` when it is unchanged since `etag` (a 304).
    pub fn desired(
        &self,
        etag: Option<&str>,
    ) -> Result<Option<(Desired, Option<String>)>, ClientError> {
        self.desired_as(self.secret.as_deref(), etag)
    }

    /// [`Client::desired`] with another host's credential: one client (one connection pool)
    /// speaking for many hosts, as the simulator does.
    pub fn desired_as(
        &self,
        secret: Option<&str>,
        etag: Option<&str>,
    ) -> Result<Option<(Desired, Option<String>)>, ClientError> {
        let what = "the desired state";
        let mut request = self.agent.get(self.url("/host/desired"));
        if let Some(secret) = secret {
            request = request.header("Authorization", format!("Bearer {secret}"));
        }
        if let Some(tag) = etag {
            request = request.header("If-None-Match", tag);
        }
        let response = request.call().map_err(|e| self.unreachable(e))?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let tag = response
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let desired = decode(what, response)?;
        Ok(Some((desired, tag)))
    }

    /// Sends a report.
    pub fn report(&self, report: &Report) -> Result<(), ClientError> {
        self.report_as(self.secret.as_deref(), report)
    }

    /// [`Client::report`] with another host's credential (the simulator's many hosts).
    pub fn report_as(&self, secret: Option<&str>, report: &Report) -> Result<(), ClientError> {
        let mut request = self.agent.post(self.url("/host/report"));
        if let Some(secret) = secret {
            request = request.header("Authorization", format!("Bearer {secret}"));
        }
        let response = request.send_json(report).map_err(|e| self.unreachable(e))?;
        expect_ok("the report", response).map(drop)
    }

    /// Downloads a content-addressed file (module or manifest) by its SHA-256.
    pub fn download(&self, sha256: &str) -> Result<Vec<u8>, ClientError> {
        let what = format!("the download of {sha256}");
        let response = self
            .authorized(self.agent.get(self.url(&format!("/modules/{sha256}"))))
            .call()
            .map_err(|e| self.unreachable(e))?;
        let mut response = expect_ok(&what, response)?;
        response
            .body_mut()
            .with_config()
            .limit(graft_protocol::api::MAX_BODY as u64)
            .read_to_vec()
            .map_err(|e| ClientError::Malformed {
                what,
                reason: e.to_string(),
            })
    }

    /// Hosts matching `filter`.
    pub fn hosts(&self, filter: &HostFilter) -> Result<Vec<HostView>, ClientError> {
        let mut request = self.authorized(self.agent.get(self.url("/hosts")));
        let pairs = [
            ("label", filter.label.clone()),
            ("kernel", filter.kernel.clone()),
            ("level", filter.level.map(|l| l.to_string())),
            ("health", filter.health.clone()),
            ("limit", filter.limit.map(|l| l.to_string())),
        ];
        for (key, value) in pairs {
            if let Some(value) = value {
                request = request.query(key, value);
            }
        }
        let response = request.call().map_err(|e| self.unreachable(e))?;
        decode("the host list", response)
    }

    /// Every outcome a host reported, oldest first.
    pub fn outcomes(&self, host: &str) -> Result<Vec<Outcome>, ClientError> {
        self.get_json("the host's outcomes", &format!("/hosts/{host}/outcomes"))
    }

    /// Revokes a host's credential.
    pub fn revoke(&self, host: &str) -> Result<HostView, ClientError> {
        self.post_json(
            "the revocation",
            &format!("/hosts/{host}/revoke"),
            &serde_json::json!({}),
        )
    }

    /// The kernels the fleet runs.
    pub fn kernels(&self) -> Result<Vec<KernelView>, ClientError> {
        self.get_json("the kernel list", "/kernels")
    }

    /// Every stream.
    pub fn streams(&self) -> Result<Vec<StreamView>, ClientError> {
        self.get_json("the stream list", "/streams")
    }

    /// One stream with its levels.
    pub fn stream(&self, stream: &str) -> Result<StreamView, ClientError> {
        self.get_json(&format!("stream {stream}"), &format!("/streams/{stream}"))
    }

    /// Publishes a level.
    pub fn publish(&self, stream: &str, publish: &Publish) -> Result<LevelView, ClientError> {
        self.post_json("the level", &format!("/streams/{stream}/levels"), publish)
    }

    /// Assigns a level to hosts.
    pub fn assign(&self, assign: &Assign) -> Result<Assigned, ClientError> {
        self.post_json("the assignment", "/assignments", assign)
    }

    /// Makes a token.
    pub fn new_token(&self, token: &NewToken) -> Result<TokenCreated, ClientError> {
        self.post_json("the new token", "/tokens", token)
    }

    /// Starts a rollout.
    pub fn start_rollout(
        &self,
        start: &graft_protocol::rollout::StartRollout,
    ) -> Result<graft_protocol::rollout::RolloutView, ClientError> {
        self.post_json("the rollout", "/rollouts", start)
    }

    /// Rollouts, newest first (without their decisions).
    pub fn rollouts(&self) -> Result<Vec<graft_protocol::rollout::RolloutView>, ClientError> {
        self.get_json("the rollout list", "/rollouts")
    }

    /// One rollout with its decisions.
    pub fn rollout(&self, id: &str) -> Result<graft_protocol::rollout::RolloutView, ClientError> {
        self.get_json(&format!("rollout {id}"), &format!("/rollouts/{id}"))
    }

    /// `pause`, `resume` or `abort` a rollout.
    pub fn rollout_action(
        &self,
        id: &str,
        action: &str,
    ) -> Result<graft_protocol::rollout::RolloutView, ClientError> {
        self.post_json(
            &format!("the {action} of rollout {id}"),
            &format!("/rollouts/{id}/{action}"),
            &serde_json::json!({}),
        )
    }

    /// Rolls a rollout back.
    pub fn rollback(
        &self,
        id: &str,
        rollback: &graft_protocol::rollout::Rollback,
    ) -> Result<graft_protocol::rollout::RolloutView, ClientError> {
        self.post_json(
            &format!("the rollback of rollout {id}"),
            &format!("/rollouts/{id}/rollback"),
            rollback,
        )
    }

    /// The audit log.
    pub fn audit(&self) -> Result<Vec<AuditEntry>, ClientError> {
        self.get_json("the audit log", "/audit")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API}{path}", self.base)
    }

    fn authorized<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.secret {
            Some(secret) => request.header("Authorization", format!("Bearer {secret}")),
            None => request,
        }
    }

    fn unreachable(&self, error: ureq::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            reason: error.to_string(),
        }
    }

    fn get_json<T: DeserializeOwned>(&self, what: &str, path: &str) -> Result<T, ClientError> {
        let response = self
            .authorized(self.agent.get(self.url(path)))
            .call()
            .map_err(|e| self.unreachable(e))?;
        decode(what, response)
    }

    fn post_json<T: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let response = self
            .authorized(self.agent.post(self.url(path)))
            .send_json(body)
            .map_err(|e| self.unreachable(e))?;
        decode(what, response)
    }
}

/// Whether `rest` (a URL after its scheme) names a loopback host.
fn is_loopback(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The response when it is a success; the server's [`ApiError`] otherwise.
fn expect_ok(what: &str, mut response: Response<Body>) -> Result<Response<Body>, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    let (kind, message) = match serde_json::from_str::<ApiError>(&text) {
        Ok(e) => (e.error, e.message),
        Err(_) => ("http".to_string(), text.chars().take(300).collect()),
    };
    Err(ClientError::Api {
        what: what.to_string(),
        status: status.as_u16(),
        kind,
        message,
    })
}

fn decode<T: DeserializeOwned>(what: &str, response: Response<Body>) -> Result<T, ClientError> {
    let mut response = expect_ok(what, response)?;
    response
        .body_mut()
        .with_config()
        .limit(graft_protocol::api::MAX_BODY as u64)
        .read_json()
        .map_err(|e| ClientError::Malformed {
            what: what.to_string(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_only_for_loopback() {
        assert!(Client::new("http://127.0.0.1:8080", None).is_ok());
        assert!(Client::new("http://[::1]:8080/", None).is_ok());
        assert!(Client::new("http://localhost:1", None).is_ok());
        let err = Client::new("http://10.0.0.1:8080", None)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("loopback")));
        let err = Client::new("https://fleet.example:443", None)
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("--ca")));
        assert!(Client::new("ftp://x", None).is_err());
    }

    #[test]
    fn an_absent_server_is_transient() {
        // Port 9 on loopback: nothing listens there in the test environment.
        let client = Client::new("http://127.0.0.1:9", None).unwrap();
        let err = client.streams().unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("unreachable"), "{err}");
    }
}
