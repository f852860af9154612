//! How a simulation worker sends check-ins.
//!
//! Against a plain-HTTP server on loopback (the simulation's own), a worker writes the
//! check-in request itself on one keep-alive connection and parses the answer with `httparse`:
//! the same request an agent sends (`GET /v1/host/desired` with its bearer credential and
//! `If-None-Match`), at a few system calls each, so that the simulator on the same cores costs
//! the server as little CPU as possible. Against any other server (HTTPS), it uses the agent's
//! own client.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use graft_client::Client;
use graft_protocol::api::Desired;

/// How a check-in ended.
pub(crate) enum Answer {
    /// 304: the ETag still holds.
    NotModified,
    /// 200: a (new) desired state's ETag and level.
    Changed(Option<String>, Option<u32>, bool),
}

/// One worker's way to the server.
pub(crate) enum Wire {
    /// Plain HTTP/1.1 on loopback, written by hand.
    Lean(LeanHttp),
    /// The agent's client.
    Client(Client),
}

impl Wire {
    /// A lean connection for `http://127.0.0.1:PORT` (or `[::1]`), the agent's client for
    /// anything else.
    pub fn for_server(url: &str, client: Client) -> Self {
        match loopback_http(url) {
            Some(addr) => Wire::Lean(LeanHttp::new(addr)),
            None => Wire::Client(client),
        }
    }

    /// One check-in.
    pub fn desired(&mut self, credential: &str, etag: Option<&str>) -> Result<Answer, String> {
        match self {
            Wire::Lean(lean) => lean.desired(credential, etag),
            Wire::Client(client) => match client.desired_as(Some(credential), etag) {
                Ok(None) => Ok(Answer::NotModified),
                Ok(Some((desired, tag))) => {
                    Ok(Answer::Changed(tag, desired.level, desired.report_health))
                }
                Err(e) => Err(e.to_string()),
            },
        }
    }
}

/// The address of a plain-HTTP loopback URL.
fn loopback_http(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split('/').next()?;
    let addr: SocketAddr = authority.parse().ok()?;
    addr.ip().is_loopback().then_some(addr)
}

/// A keep-alive HTTP/1.1 connection; reconnects after an error or a `Connection: close`.
pub(crate) struct LeanHttp {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    request: Vec<u8>,
    buf: Vec<u8>,
}

const TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEADERS: usize = 32;

impl LeanHttp {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            request: Vec::with_capacity(512),
            buf: Vec::with_capacity(8192),
        }
    }

    fn desired(&mut self, credential: &str, etag: Option<&str>) -> Result<Answer, String> {
        let result = self.exchange(credential, etag);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(&mut self, credential: &str, etag: Option<&str>) -> Result<Answer, String> {
        if self.stream.is_none() {
            let stream = TcpStream::connect_timeout(&self.addr, TIMEOUT)
                .map_err(|e| format!("connecting to {}: {e}", self.addr))?;
            let _ = stream.set_nodelay(true);
            stream
                .set_read_timeout(Some(TIMEOUT))
                .map_err(|e| e.to_string())?;
            self.stream = Some(stream);
        }
        self.request.clear();
        let _ = write!(
            self.request,
            "GET /v1/host/desired HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {credential}\r\n",
            self.addr
        );
        if let Some(tag) = etag {
            let _ = write!(self.request, "If-None-Match: {tag}\r\n");
        }
        self.request.extend_from_slice(b"\r\n");
        let stream = self.stream.as_mut().ok_or("no connection")?;
        stream
            .write_all(&self.request)
            .map_err(|e| format!("sending: {e}"))?;
        self.buf.clear();
        let (status, head_len, body_len, tag, close) = loop {
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Partial) => continue,
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = response.code.unwrap_or(0);
                    let header = |name: &str| {
                        response
                            .headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .and_then(|h| std::str::from_utf8(h.value).ok())
                            .map(str::to_string)
                    };
                    // A 304 has no body whatever its Content-Length says (RFC 9110, 8.6).
                    let body_len = match status {
                        304 | 204 => 0,
                        _ => header("content-length")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0),
                    };
                    let close =
                        header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    break (status, head_len, body_len, header("etag"), close);
                }
                Err(e) => return Err(format!("a malformed answer: {e}")),
            }
        };
        while self.buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            let n = stream
                .read(&mut chunk)
                .map_err(|e| format!("reading: {e}"))?;
            if n == 0 {
                return Err("the server closed the connection mid-answer".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        if close {
            self.stream = None;
        }
        match status {
            304 => Ok(Answer::NotModified),
            200 => {
                // What the agent does with a changed answer: read it.
                let body = &self.buf[head_len..head_len + body_len];
                let desired = serde_json::from_slice::<Desired>(body)
                    .map_err(|e| format!("the desired state does not parse: {e}"))?;
                Ok(Answer::Changed(tag, desired.level, desired.report_health))
            }
            other => Err(format!(
                "HTTP {other}: {}",
                String::from_utf8_lossy(&self.buf[head_len..head_len + body_len])
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_to_loopback_is_written_by_hand() {
        assert!(loopback_http("http://127.0.0.1:8080").is_some());
        assert!(loopback_http("http://[::1]:8080/").is_some());
        assert!(loopback_http("https://127.0.0.1:8443").is_none());
        assert!(loopback_http("http://192.0.2.1:80").is_none());
        assert!(loopback_http("http://localhost:80").is_none());
    }
}
