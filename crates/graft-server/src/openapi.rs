//! The OpenAPI 3.0 document of `/v1/openapi.json`, kept by hand from one table.
//!
//! By hand rather than derived: the protocol types live in `graft-protocol`, which should not
//! depend on a documentation framework, and a table of endpoints is short. The integration
//! tests check that the table and the router agree both ways.

use serde_json::{json, Map, Value};

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    Anyone,
    Enroll,
    Host,
    HostOrViewer,
    Viewer,
    Operator,
    Admin,
}

impl Auth {
    fn describe(self) -> &'static str {
        match self {
            Auth::Anyone => "no credential",
            Auth::Enroll => "an enroll (bootstrap) token",
            Auth::Host => "a host credential",
            Auth::HostOrViewer => "a host credential or an operator token of any role",
            Auth::Viewer => "an operator token of role viewer or above",
            Auth::Operator => "an operator token of role operator or admin",
            Auth::Admin => "an operator token of role admin",
        }
    }
}

/// One endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    auth: Auth,
    summary: &'static str,
    /// The request body's schema (a `graft_protocol::api` type).
    request: Option<&'static str>,
    /// The 2xx answer: its status, and its schema (`[X]` for a list).
    ok: (u16, Option<&'static str>),
    /// Other answers the endpoint gives on purpose.
    errors: &'static [u16],
}

const BODY_ERRORS: &[u16] = &[400, 401, 403, 413, 503];

/// Every endpoint the router serves.
pub(crate) const ENDPOINTS: &[Endpoint] = &[
    Endpoint { method: "get", path: "/v1/health", auth: Auth::Anyone, summary: "Whether this replica and its database answer: {\"ok\": true, \"database\": \"sqlite\" or \"postgres\"}", request: None, ok: (200, Some("Health")), errors: &[503] },
    Endpoint { method: "get", path: "/v1/openapi.json", auth: Auth::Anyone, summary: "This document", request: None, ok: (200, None), errors: &[] },
    Endpoint { method: "post", path: "/v1/enroll", auth: Auth::Enroll, summary: "A host joins the fleet: its id, its own credential, the publisher keys to pin", request: Some("EnrollRequest"), ok: (200, Some("EnrollResponse")), errors: BODY_ERRORS },
    Endpoint { method: "get", path: "/v1/host/desired", auth: Auth::Host, summary: "The level the host should run, with the publisher's signed metadata; ETag, and 304 for a matching If-None-Match", request: None, ok: (200, Some("Desired")), errors: &[304, 401, 403, 503] },
    Endpoint { method: "post", path: "/v1/host/report", auth: Auth::Host, summary: "The host's inventory and outcomes (each outcome id stored once); a new kernel moves the host to its stream", request: Some("Report"), ok: (204, None), errors: BODY_ERRORS },
    Endpoint { method: "get", path: "/v1/modules/{sha256}", auth: Auth::HostOrViewer, summary: "A module's bytes by SHA-256", request: None, ok: (200, Some("Bytes")), errors: &[400, 401, 403, 404, 503] },
    Endpoint { method: "get", path: "/v1/hosts", auth: Auth::Viewer, summary: "Hosts, filtered by label, kernel (release or stream), level, health; at most limit (default 1000)", request: None, ok: (200, Some("[HostView]")), errors: &[400, 401, 403, 503] },
    Endpoint { method: "get", path: "/v1/hosts/{id}/outcomes", auth: Auth::Viewer, summary: "Every outcome a host reported (apply, revert, refusal), oldest first, each stored once", request: None, ok: (200, Some("[Outcome]")), errors: &[400, 401, 403, 404, 503] },
    Endpoint { method: "post", path: "/v1/hosts/{id}/revoke", auth: Auth::Admin, summary: "Revokes a host's credential (audited)", request: None, ok: (200, Some("HostView")), errors: &[401, 403, 404, 503] },
    Endpoint { method: "get", path: "/v1/kernels", auth: Auth::Viewer, summary: "The kernels enrolled hosts run, with host counts and their stream's latest level", request: None, ok: (200, Some("[KernelView]")), errors: &[401, 403, 503] },
    Endpoint { method: "get", path: "/v1/streams", auth: Auth::Viewer, summary: "Every stream (levels not listed)", request: None, ok: (200, Some("[StreamView]")), errors: &[401, 403, 503] },
    Endpoint { method: "get", path: "/v1/streams/{stream}", auth: Auth::Viewer, summary: "One stream with its levels, oldest first", request: None, ok: (200, Some("StreamView")), errors: &[401, 403, 404, 503] },
    Endpoint { method: "post", path: "/v1/streams/{stream}/levels", auth: Auth::Operator, summary: "Publishes the stream's next level: signed by a trusted publisher key, module and manifest as signed, for the stream's kernel, carrying every earlier patch (audited)", request: Some("Publish"), ok: (200, Some("LevelView")), errors: &[400, 401, 403, 409, 413, 503] },
    Endpoint { method: "post", path: "/v1/assignments", auth: Auth::Operator, summary: "Sets the desired level of a stream's hosts, all or those matching a key=value selector (audited)", request: Some("Assign"), ok: (200, Some("Assigned")), errors: &[400, 401, 403, 404, 413, 503] },
    Endpoint { method: "post", path: "/v1/tokens", auth: Auth::Admin, summary: "Makes a token of role viewer, operator, admin or enroll; the secret is shown once (audited)", request: Some("NewToken"), ok: (200, Some("TokenCreated")), errors: BODY_ERRORS },
    Endpoint { method: "post", path: "/v1/rollouts", auth: Auth::Operator, summary: "Starts a staged rollout of a published level to a stream's hosts (all, or a key=value selector): waves of cumulative percentages, each baked, then gated against the hosts still on the previous level (audited)", request: Some("StartRollout"), ok: (201, Some("RolloutView")), errors: &[400, 401, 403, 404, 409, 413, 503] },
    Endpoint { method: "get", path: "/v1/rollouts", auth: Auth::Viewer, summary: "Rollouts, newest first, without their decisions; at most limit (default 1000)", request: None, ok: (200, Some("[RolloutView]")), errors: &[400, 401, 403, 503] },
    Endpoint { method: "get", path: "/v1/rollouts/{id}", auth: Auth::Viewer, summary: "One rollout with its waves and every gate decision and its reasons", request: None, ok: (200, Some("RolloutView")), errors: &[401, 403, 404, 503] },
    Endpoint { method: "post", path: "/v1/rollouts/{id}/pause", auth: Auth::Operator, summary: "Pauses a running rollout: no host moves until resume (audited)", request: None, ok: (200, Some("RolloutView")), errors: &[401, 403, 404, 409, 503] },
    Endpoint { method: "post", path: "/v1/rollouts/{id}/resume", auth: Auth::Operator, summary: "Resumes a paused rollout, or a halted one with the halt's hosts accepted (and its wave passed, for a halt at a bake's end) (audited)", request: None, ok: (200, Some("RolloutView")), errors: &[401, 403, 404, 409, 503] },
    Endpoint { method: "post", path: "/v1/rollouts/{id}/abort", auth: Auth::Operator, summary: "Stops a rollout for good; moved hosts stay on the level (audited)", request: None, ok: (200, Some("RolloutView")), errors: &[401, 403, 404, 409, 503] },
    Endpoint { method: "post", path: "/v1/rollouts/{id}/rollback", auth: Auth::Operator, summary: "Sends every moved host back to its previous level; a level (not none) needs its metadata re-signed with a newer version (audited)", request: Some("Rollback"), ok: (200, Some("RolloutView")), errors: &[400, 401, 403, 404, 409, 503] },
    Endpoint { method: "get", path: "/v1/audit", auth: Auth::Admin, summary: "The audit log, newest first, at most limit (default 1000)", request: None, ok: (200, Some("[AuditEntry]")), errors: &[400, 401, 403, 503] },
];

/// Query parameters, by path.
fn query_parameters(path: &str) -> Vec<Value> {
    let param = |name: &str, kind: &str, description: &str| json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": kind}});
    match path {
        "/v1/hosts" => vec![
            param("label", "string", "key=value"),
            param("kernel", "string", "a release (uname -r) or a stream"),
            param("level", "integer", "the level the host reports"),
            param("health", "string", "healthy or unhealthy"),
            param(
                "limit",
                "integer",
                "at most this many (default 1000, at most 10000)",
            ),
        ],
        "/v1/rollouts" | "/v1/audit" => vec![param(
            "limit",
            "integer",
            "at most this many (default 1000, at most 10000)",
        )],
        _ => Vec::new(),
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "Stored",
        304 => "Not modified: the If-None-Match tag is current",
        400 => "Invalid: malformed JSON or a field that breaks a rule (the message names it)",
        401 => "No credential, an unknown one, or a revoked host",
        403 => "A credential of the wrong kind or role",
        404 => "Not found",
        409 => "Conflict: level or version ordering, or a rollout's state",
        413 => "The body is larger than the limit",
        503 => "The database is unavailable: retry",
        _ => "",
    }
}

fn schema_ref(name: &str) -> Value {
    match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(item) => {
            json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}})
        }
        None => json!({"$ref": format!("#/components/schemas/{name}")}),
    }
}

fn operation(e: &Endpoint) -> Value {
    let mut responses = Map::new();
    let ok = match e.ok {
        (code, Some("Bytes")) => {
            json!({"description": status_text(code), "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}})
        }
        (code, Some(schema)) => {
            json!({"description": status_text(code), "content": {"application/json": {"schema": schema_ref(schema)}}})
        }
        (code, None) => json!({"description": status_text(code)}),
    };
    responses.insert(e.ok.0.to_string(), ok);
    for code in e.errors {
        let mut answer = json!({"description": status_text(*code)});
        if *code >= 400 {
            answer["content"] = json!({"application/json": {"schema": schema_ref("ApiError")}});
        }
        responses.insert(code.to_string(), answer);
    }
    let mut parameters = query_parameters(e.path);
    for segment in e.path.split('/') {
        if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            parameters.push(
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
    }
    let mut op = json!({
        "summary": e.summary,
        "description": format!("Who: {}.", e.auth.describe()),
        "responses": responses,
    });
    if !parameters.is_empty() {
        op["parameters"] = Value::Array(parameters);
    }
    if e.auth != Auth::Anyone {
        op["security"] = json!([{"bearer": []}]);
    }
    if let Some(request) = e.request {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema_ref(request)}}});
    }
    op
}

/// The document.
pub(crate) fn document() -> Value {
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let entry = paths.entry(e.path).or_insert_with(|| json!({}));
        entry[e.method] = operation(e);
    }
    let mut schemas = Map::new();
    for name in [
        "EnrollRequest",
        "EnrollResponse",
        "Desired",
        "Report",
        "HostView",
        "Outcome",
        "KernelView",
        "StreamView",
        "LevelView",
        "Publish",
        "Assign",
        "Assigned",
        "NewToken",
        "TokenCreated",
        "AuditEntry",
        "StartRollout",
        "RolloutView",
        "Rollback",
    ] {
        schemas.insert(
            name.to_string(),
            json!({"type": "object", "description": format!("graft_protocol::{}::{name}", if name.contains("ollout") || name == "Rollback" { "rollout" } else { "api" })}),
        );
    }
    schemas.insert(
        "ApiError".into(),
        json!({"type": "object", "required": ["error", "message"], "properties": {
            "error": {"type": "string", "enum": ["unauthorized", "forbidden", "not-found", "invalid", "conflict", "too-large", "unavailable", "internal"]},
            "message": {"type": "string"}
        }}),
    );
    schemas.insert(
        "Health".into(),
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}, "database": {"type": "string", "enum": ["sqlite", "postgres"]}}}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "graft server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The fleet's control plane. Bodies are JSON (graft_protocol::api); every error is an ApiError; credentials are bearer secrets.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_documented_once_with_its_statuses() {
        let doc = document();
        let mut seen = std::collections::HashSet::new();
        for e in ENDPOINTS {
            assert!(
                seen.insert((e.method, e.path)),
                "{} {} twice",
                e.method,
                e.path
            );
            let op = &doc["paths"][e.path][e.method];
            assert!(
                op["responses"][e.ok.0.to_string()].is_object(),
                "{}",
                e.path
            );
        }
        assert_eq!(
            doc["paths"]["/v1/hosts/{id}/revoke"]["post"]["parameters"][0]["name"],
            "id"
        );
    }
}
