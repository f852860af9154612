//! The server's API end to end: the real server on 127.0.0.1 (plain HTTP, and once over TLS
//! with the CA `init` made), driven by the HTTP client the agent uses, on SQLite and on a real
//! PostgreSQL cluster the test starts. Each suite function makes its own fleet from a [`Db`],
//! so the same suite runs on both databases; PostgreSQL also gets two replicas sharing one
//! database, and an outage of the database.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

#[path = "suites/rollouts.rs"]
mod rollouts;
mod support;

use rollouts::{
    a_clean_rollout_completes_wave_by_wave, a_kernel_warning_halts_the_first_wave,
    a_metric_regression_halts_at_the_bake_end, bad_rollouts_are_refused,
    crashes_and_failed_transitions_halt_at_once, probes_travel_to_sampled_hosts,
    the_dashboard_shows_a_halted_rollout,
};

use std::io::{Read as _, Write as _};

use graft_protocol::api::{
    Assign, Assigned, AuditEntry, Desired, HostView, Inventory, KernelView, LevelView, LivePatch,
    Outcome, Report, StreamView,
};
use graft_protocol::trust::{generate_key, verifying_key_from_hex};
use graft_server::ServerConfig;
use support::{kernel, levels_path, other_kernel, Db, Fleet, LevelParts};

// ---- the suite --------------------------------------------------------------------------

/// Enrollment with an admin-made enroll token; the desired state with its ETag, and a 304
/// that writes nothing (check-in times are written in batches: here, at shutdown).
fn enroll_and_poll_desired(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let server = fleet.start();
    let http = &server.http;
    let enroll = http.token(&fleet.admin, "bootstrap", "enroll");

    // Only an enroll token enrolls; the request is checked field by field.
    let request = graft_protocol::api::EnrollRequest {
        hostname: "web1".into(),
        labels: Default::default(),
        kernel: kernel(),
    };
    http.post("/v1/enroll", None, &request)
        .error(401, "unauthorized");
    http.post("/v1/enroll", Some("nonsense"), &request)
        .error(401, "unauthorized");
    let e = http
        .post("/v1/enroll", Some(&fleet.admin), &request)
        .error(403, "forbidden");
    assert!(e.message.contains("not an enroll token"), "{e:?}");
    let mut bad = request.clone();
    bad.hostname = String::new();
    let e = http
        .post("/v1/enroll", Some(&enroll), &bad)
        .error(400, "invalid");
    assert!(e.message.contains("hostname"), "{e:?}");

    let host = http.enroll(&enroll, "web1", &[("ring", "canary")], &kernel());
    let public = std::fs::read_to_string(fleet.data.join("publisher.pub")).unwrap();
    assert_eq!(host.keys, vec![public.trim().to_string()]);
    assert!(verifying_key_from_hex(&host.keys[0]).is_ok());
    // An enroll token is for enrolling only.
    http.get("/v1/hosts", Some(&enroll)).error(403, "forbidden");

    let first = http.get("/v1/host/desired", Some(&host.credential));
    let desired: Desired = first.json(200);
    assert_eq!(
        desired,
        Desired {
            stream: kernel().stream(),
            level: None,
            signed: None,
            report_health: false,
            probes: None,
        }
    );
    let tag = first.header("etag").expect("an ETag");
    assert!(tag.starts_with('"'), "a strong tag: {tag}");

    let enrolled_seen = fleet.sql_i64(&format!(
        "SELECT last_seen_ms FROM hosts WHERE id = '{}'",
        host.host_id
    ));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let again = http
        .request(
            "GET",
            "/v1/host/desired",
            Some(&host.credential),
            None,
            &[("if-none-match", &tag)],
        )
        .unwrap();
    again.status(304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag").as_deref(), Some(tag.as_str()));
    // A stale tag gets the full answer.
    let stale = http
        .request(
            "GET",
            "/v1/host/desired",
            Some(&host.credential),
            None,
            &[("if-none-match", "\"0\"")],
        )
        .unwrap();
    stale.status(200);
    // No write per check-in ...
    let seen = fleet.sql_i64(&format!(
        "SELECT last_seen_ms FROM hosts WHERE id = '{}'",
        host.host_id
    ));
    assert_eq!(seen, enrolled_seen, "a check-in wrote to the database");
    // ... but the batch is written at shutdown.
    server.stop();
    let seen = fleet.sql_i64(&format!(
        "SELECT last_seen_ms FROM hosts WHERE id = '{}'",
        host.host_id
    ));
    assert!(seen > enrolled_seen, "check-in times were not flushed");
}

/// Publish level 1 signed with init's publisher key, assign it by label, the host sees it,
/// verifies it against the key it pinned and downloads the module by digest.
fn publish_assign_and_download(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let server = fleet.start();
    let http = &server.http;
    let enroll = http.token(&fleet.admin, "bootstrap", "enroll");
    let operator = http.token(&fleet.admin, "ops", "operator");
    let viewer = http.token(&fleet.admin, "watcher", "viewer");
    let canary = http.enroll(&enroll, "web1", &[("ring", "canary")], &kernel());
    let main = http.enroll(&enroll, "web2", &[("ring", "main")], &kernel());
    let stream = kernel().stream();

    let parts = LevelParts::new(1, 10, &["p1"]);
    let published: LevelView = http
        .post(
            &levels_path(&stream),
            Some(&operator),
            &parts.sign(&fleet.publisher),
        )
        .json(200);
    assert_eq!(
        (
            published.level,
            published.version,
            published.patches.clone()
        ),
        (1, 10, vec!["p1".to_string()])
    );
    assert_eq!(published.module_sha256, parts.level.module_sha256);

    // Published is not assigned.
    let d: Desired = http
        .get("/v1/host/desired", Some(&canary.credential))
        .json(200);
    assert_eq!(d.level, None);

    // Assignments: checked, by selector.
    let assign = |level, selector: Option<&str>| Assign {
        stream: stream.clone(),
        level,
        selector: selector.map(str::to_string),
    };
    let e = http
        .post("/v1/assignments", Some(&operator), &assign(Some(2), None))
        .error(404, "not-found");
    assert!(e.message.contains("no level 2"), "{e:?}");
    let e = http
        .post(
            "/v1/assignments",
            Some(&operator),
            &assign(Some(1), Some("ring=nowhere")),
        )
        .error(404, "not-found");
    assert!(e.message.contains("ring=nowhere"), "{e:?}");
    http.post(
        "/v1/assignments",
        Some(&operator),
        &assign(Some(1), Some("ring")),
    )
    .error(400, "invalid");
    http.post("/v1/assignments", Some(&viewer), &assign(Some(1), None))
        .error(403, "forbidden");
    let unknown = Assign {
        stream: "nope@000000000000".into(),
        level: None,
        selector: None,
    };
    http.post("/v1/assignments", Some(&operator), &unknown)
        .error(404, "not-found");
    let done: Assigned = http
        .post(
            "/v1/assignments",
            Some(&operator),
            &assign(Some(1), Some("ring=canary")),
        )
        .json(200);
    assert_eq!(done.hosts, 1);
    let again: Assigned = http
        .post(
            "/v1/assignments",
            Some(&operator),
            &assign(Some(1), Some("ring=canary")),
        )
        .json(200);
    assert_eq!(again.hosts, 0, "no host changed");

    // The canary sees level 1 with metadata that verifies against its pinned key.
    let d: Desired = http
        .get("/v1/host/desired", Some(&canary.credential))
        .json(200);
    assert_eq!(d.level, Some(1));
    let pinned = [verifying_key_from_hex(&canary.keys[0]).unwrap()];
    let level = d
        .signed
        .unwrap()
        .verify(&pinned, &stream, support::now_secs(), None)
        .unwrap();
    assert_eq!(level.module_sha256, parts.level.module_sha256);
    let d: Desired = http
        .get("/v1/host/desired", Some(&main.credential))
        .json(200);
    assert_eq!(d.level, None, "the other ring is not assigned");

    // The module, by digest, for hosts and operators.
    let module = http.get(
        &format!("/v1/modules/{}", level.module_sha256),
        Some(&canary.credential),
    );
    module.status(200);
    assert_eq!(module.body, parts.module);
    assert_eq!(
        http.get(
            &format!("/v1/modules/{}", level.module_sha256),
            Some(&viewer)
        )
        .status,
        200
    );
    http.get(
        &format!("/v1/modules/{}", "0".repeat(64)),
        Some(&canary.credential),
    )
    .error(404, "not-found");
    http.get("/v1/modules/xyz", Some(&canary.credential))
        .error(400, "invalid");
    http.get(&format!("/v1/modules/{}", level.module_sha256), None)
        .error(401, "unauthorized");

    // Without a selector: every host of the stream, and hosts enrolling later.
    let all: Assigned = http
        .post("/v1/assignments", Some(&operator), &assign(Some(1), None))
        .json(200);
    assert_eq!(all.hosts, 1);
    let late = http.enroll(&enroll, "web3", &[], &kernel());
    let d: Desired = http
        .get("/v1/host/desired", Some(&late.credential))
        .json(200);
    assert_eq!(d.level, Some(1));

    // What viewers read.
    let view: StreamView = http
        .get(&format!("/v1/streams/{stream}"), Some(&viewer))
        .json(200);
    assert_eq!(
        (view.latest, view.hosts, view.levels.len()),
        (Some(1), 3, 1)
    );
    assert_eq!(view.levels[0], published);
    let streams: Vec<StreamView> = http.get("/v1/streams", Some(&viewer)).json(200);
    assert_eq!(streams.len(), 1);
    assert!(streams[0].levels.is_empty());
    http.get("/v1/streams/nope@000000000000", Some(&viewer))
        .error(404, "not-found");
    let kernels: Vec<KernelView> = http.get("/v1/kernels", Some(&viewer)).json(200);
    assert_eq!(
        kernels,
        vec![KernelView {
            kernel: kernel(),
            stream: stream.clone(),
            hosts: 3,
            latest: Some(1)
        }]
    );
    let hosts: Vec<HostView> = http
        .get("/v1/hosts?label=ring%3Dcanary", Some(&viewer))
        .json(200);
    assert_eq!(
        hosts
            .iter()
            .map(|h| h.hostname.as_str())
            .collect::<Vec<_>>(),
        ["web1"]
    );
    assert_eq!(hosts[0].desired, Some(1));
    let hosts: Vec<HostView> = http
        .get(
            &format!("/v1/hosts?kernel={}", kernel().release),
            Some(&viewer),
        )
        .json(200);
    assert_eq!(hosts.len(), 3);
    let hosts: Vec<HostView> = http.get("/v1/hosts?limit=2", Some(&viewer)).json(200);
    assert_eq!(hosts.len(), 2);
    http.get("/v1/hosts?health=sick", Some(&viewer))
        .error(400, "invalid");
    http.get("/v1/hosts?level=x", Some(&viewer))
        .error(400, "invalid");
    // A host credential is not an operator's.
    http.get("/v1/hosts", Some(&canary.credential))
        .error(403, "forbidden");
}

/// Every refusal of a publish, each with its status, and each in the audit log.
fn publish_refusals_are_audited(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let server = fleet.start();
    let http = &server.http;
    let operator = http.token(&fleet.admin, "ops", "operator");
    let viewer = http.token(&fleet.admin, "watcher", "viewer");
    let stream = kernel().stream();
    let path = levels_path(&stream);
    let publish =
        |parts: &LevelParts| http.post(&path, Some(&operator), &parts.sign(&fleet.publisher));

    // Signed by a key the fleet does not trust.
    let parts = LevelParts::new(1, 1, &["p1"]);
    let e = http
        .post(&path, Some(&operator), &parts.sign(&generate_key()))
        .error(400, "invalid");
    assert!(e.message.contains("not signed by a key"), "{e:?}");
    // A viewer cannot publish.
    http.post(&path, Some(&viewer), &parts.sign(&fleet.publisher))
        .error(403, "forbidden");
    // A module that is not the signed one.
    let mut tampered = parts.clone();
    tampered.module.push(0);
    let e = publish(&tampered).error(400, "invalid");
    assert!(e.message.contains("the module has SHA-256"), "{e:?}");
    // A manifest for another kernel build.
    let mut wrong = parts.clone();
    wrong.manifest.kernel.build_id = other_kernel().build_id;
    let e = publish(&wrong).error(400, "invalid");
    assert!(e.message.contains("manifest is for kernel"), "{e:?}");
    // Metadata for another stream than the path's.
    let e = http.post(
        &levels_path(&other_kernel().stream()),
        Some(&operator),
        &parts.sign(&fleet.publisher),
    );
    assert!(e
        .error(400, "invalid")
        .message
        .contains("not for this host's"));
    // Malformed.
    http.post_raw(&path, Some(&operator), b"{\"signed\": 1}")
        .error(400, "invalid");
    // Nothing refused was stored.
    http.get(&format!("/v1/streams/{stream}"), Some(&viewer))
        .error(404, "not-found");

    publish(&parts).status(200);
    // Level 3 before 2.
    let e = publish(&LevelParts::new(3, 3, &["p1"])).error(409, "conflict");
    assert!(e.message.contains("the next is 2"), "{e:?}");
    // Level 2 dropping level 1's patch; allowed only when asked.
    let mut dropping = LevelParts::new(2, 2, &["p2"]);
    let e = publish(&dropping).error(409, "conflict");
    assert!(e.message.contains("p1"), "{e:?}");
    // A rollback: an older version, and the same version.
    let e = publish(&LevelParts::new(2, 0, &["p1", "p2"])).error(409, "conflict");
    assert!(e.message.contains("rollback"), "{e:?}");
    let e = publish(&LevelParts::new(2, 1, &["p1", "p2"])).error(409, "conflict");
    assert!(e.message.contains("not newer"), "{e:?}");
    dropping.allow_dropped_patches = true;
    publish(&dropping).status(200);
    let view: StreamView = http
        .get(&format!("/v1/streams/{stream}"), Some(&viewer))
        .json(200);
    assert_eq!(
        view.levels.iter().map(|l| l.level).collect::<Vec<_>>(),
        [1, 2]
    );

    // The audit log: every attempt, newest first; only for admins.
    http.get("/v1/audit", Some(&operator))
        .error(403, "forbidden");
    let log: Vec<AuditEntry> = http.get("/v1/audit", Some(&fleet.admin)).json(200);
    let publishes: Vec<&AuditEntry> = log
        .iter()
        .filter(|a| a.what.starts_with("publish"))
        .collect();
    let results: Vec<&str> = publishes
        .iter()
        .rev()
        .map(|a| a.result.split(':').next().unwrap())
        .collect();
    assert_eq!(
        results,
        [
            "invalid",
            "forbidden",
            "invalid",
            "invalid",
            "invalid",
            "invalid",
            "ok",
            "conflict",
            "conflict",
            "conflict",
            "conflict",
            "ok"
        ],
        "{publishes:#?}"
    );
    assert_eq!(publishes.last().unwrap().who, "ops");
    assert!(publishes
        .iter()
        .any(|a| a.who == "watcher" && a.result.starts_with("forbidden")));
    assert!(log
        .iter()
        .any(|a| a.what.contains("make token \"ops\"") && a.who == "admin" && a.result == "ok"));
}

/// Reports: stored, each outcome once however often it is sent; a new kernel moves the host.
fn reports_are_idempotent(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let server = fleet.start();
    let http = &server.http;
    let enroll = http.token(&fleet.admin, "bootstrap", "enroll");
    let viewer = http.token(&fleet.admin, "watcher", "viewer");
    let host = http.enroll(&enroll, "web1", &[], &kernel());
    let report = Report {
        kernel: kernel(),
        inventory: Inventory {
            patches: vec![LivePatch {
                name: "graft_fix1".into(),
                enabled: true,
                transition: false,
            }],
            level: Some(1),
            // Live patched (K) and out of tree (O): expected, still healthy.
            taint: (1 << 15) | (1 << 12),
            kernel_errors: 0,
        },
        outcomes: vec![Outcome {
            id: "outcome-1".into(),
            level: Some(1),
            result: "applied".into(),
            transition_secs: Some(1.5),
            blockers: vec![],
            message: None,
            at_ms: 1_700_000_000_000,
        }],
        health: None,
    };
    http.post("/v1/host/report", Some(&host.credential), &report)
        .status(204);
    http.post("/v1/host/report", Some(&host.credential), &report)
        .status(204);
    let count = |id: &str| {
        fleet.sql_i64(&format!(
            "SELECT COUNT(*) FROM outcomes WHERE host_id = '{}' AND id = '{id}'",
            host.host_id
        ))
    };
    assert_eq!(count("outcome-1"), 1, "a resent outcome was stored twice");
    let hosts: Vec<HostView> = http
        .get("/v1/hosts?level=1&health=healthy", Some(&viewer))
        .json(200);
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0].last_outcome.as_deref(), Some("applied level 1"));
    // An operator reads the outcomes as the host sent them, the resent one once.
    let outcomes: Vec<Outcome> = http
        .get(
            &format!("/v1/hosts/{}/outcomes", host.host_id),
            Some(&viewer),
        )
        .json(200);
    assert_eq!(outcomes, report.outcomes);
    http.get("/v1/hosts/no-such-host/outcomes", Some(&viewer))
        .error(404, "not-found");
    http.get(
        &format!("/v1/hosts/{}/outcomes", host.host_id),
        Some(&host.credential),
    )
    .error(403, "forbidden");

    // Limits, and who may report.
    let mut big = report.clone();
    big.outcomes = vec![report.outcomes[0].clone(); 65];
    http.post("/v1/host/report", Some(&host.credential), &big)
        .error(400, "invalid");
    http.post("/v1/host/report", Some(&viewer), &report)
        .error(403, "forbidden");

    // Kernel errors make it unhealthy; a reboot into another kernel moves it to that stream.
    let mut moved = report.clone();
    moved.kernel = other_kernel();
    moved.inventory.kernel_errors = 2;
    moved.inventory.level = None;
    moved.outcomes[0].id = "outcome-2".into();
    http.post("/v1/host/report", Some(&host.credential), &moved)
        .status(204);
    assert_eq!(count("outcome-2"), 1);
    let hosts: Vec<HostView> = http
        .get("/v1/hosts?health=unhealthy", Some(&viewer))
        .json(200);
    assert_eq!(hosts.len(), 1);
    assert_eq!(
        (hosts[0].stream.clone(), hosts[0].kernel.clone()),
        (other_kernel().stream(), other_kernel())
    );
    let hosts: Vec<HostView> = http
        .get(
            &format!("/v1/hosts?kernel={}", other_kernel().stream()),
            Some(&viewer),
        )
        .json(200);
    assert_eq!(hosts.len(), 1);
    let d: Desired = http
        .get("/v1/host/desired", Some(&host.credential))
        .json(200);
    assert_eq!(d.stream, other_kernel().stream());
}

/// A revoked host's credential stops working at once, with a message saying why.
fn revoked_hosts_are_refused(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let server = fleet.start();
    let http = &server.http;
    let enroll = http.token(&fleet.admin, "bootstrap", "enroll");
    let operator = http.token(&fleet.admin, "ops", "operator");
    let host = http.enroll(&enroll, "web1", &[], &kernel());
    http.get("/v1/host/desired", Some(&host.credential))
        .status(200);

    let revoke = format!("/v1/hosts/{}/revoke", host.host_id);
    http.request("POST", &revoke, Some(&operator), None, &[])
        .unwrap()
        .error(403, "forbidden");
    http.request(
        "POST",
        "/v1/hosts/nope/revoke",
        Some(&fleet.admin),
        None,
        &[],
    )
    .unwrap()
    .error(404, "not-found");
    let view: HostView = http
        .request("POST", &revoke, Some(&fleet.admin), None, &[])
        .unwrap()
        .json(200);
    assert!(view.revoked);

    let e = http
        .get("/v1/host/desired", Some(&host.credential))
        .error(401, "unauthorized");
    assert!(e.message.contains("revoked"), "{e:?}");
    let report = Report {
        kernel: kernel(),
        inventory: Inventory::default(),
        outcomes: vec![],
        health: None,
    };
    let e = http
        .post("/v1/host/report", Some(&host.credential), &report)
        .error(401, "unauthorized");
    assert!(e.message.contains("revoked"), "{e:?}");
    let kernels: Vec<KernelView> = http.get("/v1/kernels", Some(&operator)).json(200);
    assert!(
        kernels.is_empty(),
        "a revoked host is no longer counted: {kernels:?}"
    );
    let log: Vec<AuditEntry> = http.get("/v1/audit", Some(&fleet.admin)).json(200);
    let revokes: Vec<&str> = log
        .iter()
        .filter(|a| a.what.starts_with("revoke"))
        .map(|a| a.result.as_str())
        .collect();
    assert_eq!(revokes.len(), 3);
    assert_eq!(revokes[0], "ok");
}

/// Malformed and oversized bodies, unknown paths and methods: ApiError bodies with the right
/// status; tokens need an admin.
fn malformed_requests_answer_api_errors(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let server = fleet.start();
    let http = &server.http;
    let viewer = http.token(&fleet.admin, "watcher", "viewer");

    let e = http
        .post_raw("/v1/tokens", Some(&fleet.admin), b"{not json")
        .error(400, "invalid");
    assert!(e.message.contains("not valid JSON"), "{e:?}");
    http.post_raw("/v1/tokens", Some(&fleet.admin), b"{\"name\": \"x\"}")
        .error(400, "invalid");
    let bad_role = graft_protocol::api::NewToken {
        name: "x".into(),
        role: "root".into(),
    };
    http.post("/v1/tokens", Some(&fleet.admin), &bad_role)
        .error(400, "invalid");
    http.post("/v1/tokens", Some(&viewer), &bad_role)
        .error(403, "forbidden");
    http.get("/v1/hosts", Some("Bearer-less"))
        .error(401, "unauthorized");
    http.request(
        "GET",
        "/v1/hosts",
        None,
        None,
        &[("authorization", "Basic abc")],
    )
    .unwrap()
    .error(401, "unauthorized");
    let e = http.get("/v1/nothing", None).error(404, "not-found");
    assert!(e.message.contains("no endpoint"), "{e:?}");
    assert_eq!(
        http.request("DELETE", "/v1/hosts", Some(&viewer), None, &[])
            .unwrap()
            .status,
        405
    );

    // A declared body over the limit is refused before it is sent.
    let mut tcp = std::net::TcpStream::connect(server.addr()).unwrap();
    write!(
        tcp,
        "POST /v1/tokens HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        fleet.admin,
        graft_protocol::api::MAX_BODY + 1
    )
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too-large\""), "{answer}");
    // One without a declared length is cut off at the limit: sent chunked by one thread
    // while this one reads the answer (the server answers before the upload ends).
    let tcp = std::net::TcpStream::connect(server.addr()).unwrap();
    let mut writer = tcp.try_clone().unwrap();
    let admin = fleet.admin.clone();
    let upload = std::thread::spawn(move || {
        let head = format!(
            "POST /v1/tokens HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {admin}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let chunk = vec![b' '; 1 << 20];
        let mut sent = writer.write_all(head.as_bytes());
        for _ in 0..(graft_protocol::api::MAX_BODY >> 20) + 2 {
            if sent.is_err() {
                break;
            }
            sent = write!(writer, "{:x}\r\n", chunk.len())
                .and_then(|()| writer.write_all(&chunk))
                .and_then(|()| writer.write_all(b"\r\n"));
        }
    });
    let mut answer = Vec::new();
    let _ = (&tcp).read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"too-large\""), "{answer}");
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    upload.join().unwrap();
}

/// The OpenAPI document parses, lists every endpoint of the protocol, and every path it
/// lists is one the router serves.
fn openapi_lists_every_path(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let server = fleet.start();
    let http = &server.http;
    let doc: serde_json::Value = http.get("/v1/openapi.json", None).json(200);
    assert_eq!(doc["openapi"], "3.0.3");
    let served = [
        ("post", "/v1/enroll"),
        ("get", "/v1/host/desired"),
        ("post", "/v1/host/report"),
        ("get", "/v1/modules/{sha256}"),
        ("get", "/v1/hosts"),
        ("get", "/v1/hosts/{id}/outcomes"),
        ("post", "/v1/hosts/{id}/revoke"),
        ("get", "/v1/kernels"),
        ("get", "/v1/streams"),
        ("get", "/v1/streams/{stream}"),
        ("post", "/v1/streams/{stream}/levels"),
        ("post", "/v1/assignments"),
        ("post", "/v1/rollouts"),
        ("get", "/v1/rollouts"),
        ("get", "/v1/rollouts/{id}"),
        ("post", "/v1/rollouts/{id}/pause"),
        ("post", "/v1/rollouts/{id}/resume"),
        ("post", "/v1/rollouts/{id}/abort"),
        ("post", "/v1/rollouts/{id}/rollback"),
        ("post", "/v1/tokens"),
        ("get", "/v1/audit"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/health"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = 0;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().unwrap() {
            listed += 1;
            assert!(
                served.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is documented but not expected"
            );
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no statuses"
            );
            // The router answers it with something other than its "no endpoint".
            let concrete = path
                .replace("{sha256}", &"0".repeat(64))
                .replace("{id}", "x")
                .replace("{stream}", "s@000000000000");
            let answer = http
                .request(&method.to_uppercase(), &concrete, None, None, &[])
                .unwrap();
            assert_ne!(answer.status, 405, "{method} {path}");
            assert!(
                !String::from_utf8_lossy(&answer.body).contains("no endpoint"),
                "{method} {path} is not served"
            );
        }
    }
    assert_eq!(listed, served.len());
    let health: serde_json::Value = http.get("/v1/health", None).json(200);
    assert_eq!(health["ok"], true);
    assert_eq!(
        health["database"],
        if fleet.database.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    );
}

/// Runs the suite on one kind of database.
macro_rules! suite {
    ($db:expr, $($name:ident),* $(,)?) => {
        $(
            eprintln!("postgres: {}", stringify!($name));
            $name($db);
        )*
    };
}

// ---- SQLite -----------------------------------------------------------------------------

#[test]
fn sqlite_a_clean_rollout_completes_wave_by_wave() {
    a_clean_rollout_completes_wave_by_wave(Db::Sqlite);
}

#[test]
fn sqlite_a_kernel_warning_halts_the_first_wave() {
    a_kernel_warning_halts_the_first_wave(Db::Sqlite);
}

#[test]
fn sqlite_crashes_and_failed_transitions_halt_at_once() {
    crashes_and_failed_transitions_halt_at_once(Db::Sqlite);
}

#[test]
fn sqlite_probes_travel_to_sampled_hosts() {
    probes_travel_to_sampled_hosts(Db::Sqlite);
}

#[test]
fn sqlite_a_metric_regression_halts_at_the_bake_end() {
    a_metric_regression_halts_at_the_bake_end(Db::Sqlite);
}

#[test]
fn sqlite_bad_rollouts_are_refused() {
    bad_rollouts_are_refused(Db::Sqlite);
}

#[test]
fn sqlite_the_dashboard_shows_a_halted_rollout() {
    the_dashboard_shows_a_halted_rollout(Db::Sqlite);
}

#[test]
fn sqlite_enroll_and_poll_desired() {
    enroll_and_poll_desired(Db::Sqlite);
}

#[test]
fn sqlite_publish_assign_and_download() {
    publish_assign_and_download(Db::Sqlite);
}

#[test]
fn sqlite_publish_refusals_are_audited() {
    publish_refusals_are_audited(Db::Sqlite);
}

#[test]
fn sqlite_reports_are_idempotent() {
    reports_are_idempotent(Db::Sqlite);
}

#[test]
fn sqlite_revoked_hosts_are_refused() {
    revoked_hosts_are_refused(Db::Sqlite);
}

#[test]
fn sqlite_malformed_requests_answer_api_errors() {
    malformed_requests_answer_api_errors(Db::Sqlite);
}

#[test]
fn sqlite_openapi_lists_every_path() {
    openapi_lists_every_path(Db::Sqlite);
}

/// Over TLS with the CA `init` made: trusted; a client that does not trust it is refused.
#[test]
fn tls_with_the_fleets_ca() {
    let fleet = Fleet::new(Db::Sqlite);
    let server = fleet.start_tls();
    let http = &server.http;
    assert!(http.base.starts_with("https://localhost:"));
    let health: serde_json::Value = http.get("/v1/health", None).json(200);
    assert_eq!(health["ok"], true);
    let enroll = http.token(&fleet.admin, "bootstrap", "enroll");
    let host = http.enroll(&enroll, "web1", &[], &kernel());
    http.get("/v1/host/desired", Some(&host.credential))
        .status(200);
    // By IP too (the certificate names 127.0.0.1).
    let ca = std::fs::read(fleet.data.join("ca.pem")).unwrap();
    let by_ip = support::Client::new(
        format!("https://127.0.0.1:{}", server.addr().port()),
        Some(&ca),
    );
    by_ip.get("/v1/health", None).status(200);
    // Public roots do not vouch for the fleet's server; plain HTTP gets no API.
    let public = support::Client::new(http.base.clone(), None);
    assert!(public
        .request("GET", "/v1/health", None, None, &[])
        .is_err());
    let plain = support::Client::new(format!("http://127.0.0.1:{}", server.addr().port()), None);
    assert!(plain.request("GET", "/v1/health", None, None, &[]).is_err());
}

/// A server refuses plain HTTP beyond loopback, and a directory `init` did not make.
#[test]
fn where_a_server_may_listen() {
    let fleet = Fleet::new(Db::Sqlite);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut config = graft_server::ServerConfig::new(&fleet.data, "0.0.0.0:0".parse().unwrap());
    config.insecure_http = true;
    let err = rt
        .block_on(graft_server::start(config.clone()))
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    config.insecure_http = false;
    let err = rt.block_on(graft_server::start(config)).unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let mut config = graft_server::ServerConfig::new(empty.path(), "127.0.0.1:0".parse().unwrap());
    config.insecure_http = true;
    let err = rt.block_on(graft_server::start(config)).unwrap_err();
    assert!(err.to_string().contains("graft server init"), "{err}");
}

// ---- PostgreSQL -------------------------------------------------------------------------

/// The whole suite on a PostgreSQL cluster of the test's own (one database per fleet), then
/// two replicas sharing a database, then an outage of the database.
#[test]
fn postgres() {
    let cluster = match support::postgres::cluster() {
        Ok(cluster) => cluster,
        Err(support::postgres::Unavailable::Skip) => return,
    };
    let db = Db::Postgres(&cluster);
    suite!(
        db,
        enroll_and_poll_desired,
        publish_assign_and_download,
        publish_refusals_are_audited,
        reports_are_idempotent,
        revoked_hosts_are_refused,
        malformed_requests_answer_api_errors,
        openapi_lists_every_path,
        a_clean_rollout_completes_wave_by_wave,
        a_kernel_warning_halts_the_first_wave,
        a_metric_regression_halts_at_the_bake_end,
        crashes_and_failed_transitions_halt_at_once,
        probes_travel_to_sampled_hosts,
        bad_rollouts_are_refused,
        the_dashboard_shows_a_halted_rollout,
        replicas_share_one_database,
        a_revocation_on_one_replica_forgets_only_that_host_on_the_other,
    );
    // Last: it stops the cluster.
    database_outage_answers_503(&cluster);
}

/// Replica A and B on one database: what one stores, the other serves.
fn replicas_share_one_database(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let a = fleet.start();
    let b = fleet.start();
    let enroll = a.http.token(&fleet.admin, "bootstrap", "enroll");
    let operator = b.http.token(&fleet.admin, "ops", "operator");
    let host = b
        .http
        .enroll(&enroll, "web1", &[("ring", "canary")], &kernel());
    let stream = kernel().stream();

    // Publish on A, assign on B: the host sees the level on both.
    let parts = LevelParts::new(1, 1, &["p1"]);
    a.http
        .post(
            &levels_path(&stream),
            Some(&operator),
            &parts.sign(&fleet.publisher),
        )
        .status(200);
    let before_a = a.http.get("/v1/host/desired", Some(&host.credential));
    let tag = before_a.header("etag").unwrap();
    let assign = Assign {
        stream: stream.clone(),
        level: Some(1),
        selector: Some("ring=canary".into()),
    };
    let done: Assigned = b
        .http
        .post("/v1/assignments", Some(&operator), &assign)
        .json(200);
    assert_eq!(done.hosts, 1);
    // B wrote it: B answers it at once. A keeps answers in memory and sees B's write within
    // its check-in cache's bound (the default, 1 s).
    let ask = |server: &support::Server| {
        server
            .http
            .request(
                "GET",
                "/v1/host/desired",
                Some(&host.credential),
                None,
                &[("if-none-match", &tag)],
            )
            .unwrap()
    };
    let d: Desired = ask(&b).json(200);
    assert_eq!(
        d.level,
        Some(1),
        "the writing replica answered a stale state"
    );
    let bound = ServerConfig::new("unused", "127.0.0.1:0".parse().unwrap()).checkin_cache;
    let deadline = std::time::Instant::now() + bound * 3;
    loop {
        let answer = ask(&a);
        if answer.status == 200 {
            let d: Desired = answer.json(200);
            assert_eq!(d.level, Some(1));
            break;
        }
        assert_eq!(answer.status, 304);
        assert!(
            std::time::Instant::now() < deadline,
            "replica A still answers the old state {:?} after B's write",
            bound * 3
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The same tag from either replica.
    let tag_a = a
        .http
        .get("/v1/host/desired", Some(&host.credential))
        .header("etag");
    let tag_b = b
        .http
        .get("/v1/host/desired", Some(&host.credential))
        .header("etag");
    assert_eq!(tag_a, tag_b);
    // The module published on A downloads from B.
    let module = b.http.get(
        &format!("/v1/modules/{}", parts.level.module_sha256),
        Some(&host.credential),
    );
    assert_eq!(module.body, parts.module);
    // A second publish racing on both replicas: one wins, the other conflicts.
    let level2 = LevelParts::new(2, 2, &["p1"]).sign(&fleet.publisher);
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| {
            a.http
                .post(&levels_path(&stream), Some(&operator), &level2)
                .status
        });
        let tb = s.spawn(|| {
            b.http
                .post(&levels_path(&stream), Some(&operator), &level2)
                .status
        });
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut statuses = [ra, rb];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
}

/// A write that changes one host's answer (here a revocation on replica B) makes replica A
/// forget that host's answer within its cache's bound, and only that one: the other hosts are
/// still answered from memory (a rollout's wave costs the moved hosts' lookups, not the
/// fleet's).
fn a_revocation_on_one_replica_forgets_only_that_host_on_the_other(db: Db<'_>) {
    let fleet = Fleet::new(db);
    let a = fleet.start();
    let b = fleet.start();
    let enroll = b.http.token(&fleet.admin, "bootstrap", "enroll");
    let operator = b.http.token(&fleet.admin, "ops", "operator");
    let hosts: Vec<_> = ["web1", "web2", "web3"]
        .iter()
        .map(|name| b.http.enroll(&enroll, name, &[], &kernel()))
        .collect();
    for host in &hosts {
        a.http
            .get("/v1/host/desired", Some(&host.credential))
            .status(200);
    }
    let lookups = || -> u64 {
        let text = String::from_utf8(a.http.get("/metrics", Some(&operator)).body).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("graft_checkin_lookups_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("graft_checkin_lookups_total in /metrics")
    };
    let before = lookups();
    assert!(before >= 3, "A looked up each host once: {before}");

    let revoke = format!("/v1/hosts/{}/revoke", hosts[0].host_id);
    b.http
        .request("POST", &revoke, Some(&fleet.admin), None, &[])
        .unwrap()
        .status(200);
    let bound = ServerConfig::new("unused", "127.0.0.1:0".parse().unwrap()).checkin_cache;
    let deadline = std::time::Instant::now() + bound * 3;
    loop {
        let answer = a.http.get("/v1/host/desired", Some(&hosts[0].credential));
        if answer.status == 401 {
            break;
        }
        assert_eq!(answer.status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "replica A still serves a host revoked on B after {:?}",
            bound * 3
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let after_revocation = lookups();
    for host in &hosts[1..] {
        a.http
            .get("/v1/host/desired", Some(&host.credential))
            .status(200);
    }
    assert_eq!(
        lookups(),
        after_revocation,
        "the hosts the revocation did not touch were looked up again"
    );
}

/// The database goes away: 503 `unavailable`, not a hang or a 500; it comes back: 200.
fn database_outage_answers_503(cluster: &support::postgres::Cluster) {
    let fleet = Fleet::new(Db::Postgres(cluster));
    let server = fleet.start();
    let http = &server.http;
    let enroll = http.token(&fleet.admin, "bootstrap", "enroll");
    let host = http.enroll(&enroll, "web1", &[], &kernel());
    cluster.stop();
    let started = std::time::Instant::now();
    let e = http.get("/v1/health", None).error(503, "unavailable");
    assert!(e.message.contains("retry"), "{e:?}");
    http.get("/v1/host/desired", Some(&host.credential))
        .error(503, "unavailable");
    http.get("/v1/hosts", Some(&fleet.admin))
        .error(503, "unavailable");
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    cluster.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let answer = http.get("/v1/health", None);
        if answer.status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not recover: {answer:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    http.get("/v1/host/desired", Some(&host.credential))
        .status(200);
}
