//! The dashboard: server-rendered pages for people, beside the JSON API.
//!
//! - `/`: hosts per stream and level, and every rollout with its wave and state;
//! - `/rollouts/{id}`: a rollout's waves, treatment-against-control charts per metric over
//!   time (the patching windows shaded), and every gate decision with its reasons;
//! - `/hosts`: the host list with the API's filters;
//! - `/login`, `/logout`: an operator token (any role) kept in an HttpOnly, SameSite=Strict
//!   cookie, so the pages need no script and the token never sits in a URL.
//!
//! Every page reads a bounded amount: lists are limited, counts are grouped in the database,
//! charts read the newest samples only; a fleet of 100k hosts costs what a fleet of 100 does.

mod chart;
mod html;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Form;
use graft_protocol::api::{parse_selector, HostFilter, Role};
use graft_protocol::rollout::RolloutState;
use std::fmt::Write as _;

use crate::auth::{authenticate, hash_secret, Credential, Operator};
use crate::error::Failure;
use crate::extract::{Path, Query};
use crate::store::{Principal, RolloutRow};
use crate::AppState;
use html::{decision_badge, esc, page, progress, state_badge, time};

/// The cookie holding the operator's token.
const COOKIE_NAME: &str = "graft_token";
/// Hosts a page lists at most.
const HOST_ROWS: u32 = 500;
/// Samples a rollout's charts read at most (the newest).
const CHART_SAMPLES: i64 = 50_000;

/// `GET /login`.
pub(crate) async fn login_page() -> Html<String> {
    Html(login_html(None))
}

fn login_html(error: Option<&str>) -> String {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"reason\">{}</p>", esc(e))
    });
    page(
        "Sign in",
        None,
        &format!(
            "<h1>Sign in</h1>{error}<form method=\"post\" action=\"/login\">\
             <p><label>Operator token (viewer, operator or admin)<br>\
             <input type=\"password\" name=\"token\" size=\"70\" autocomplete=\"off\" required></label></p>\
             <p><button type=\"submit\">Sign in</button></p></form>\
             <p class=\"muted\">Make one with <code>graft fleet token --name NAME --role viewer</code>.</p>"
        ),
    )
}

/// The sign-in form.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /login`: a known operator token becomes the session cookie.
pub(crate) async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim().to_string();
    match operator_of(&state, &token).await {
        Ok(_) => {
            let cookie = format!(
                "{COOKIE_NAME}={token}; Path=/; HttpOnly; SameSite=Strict{}",
                if state.tls { "; Secure" } else { "" }
            );
            let mut response = redirect("/");
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(SET_COOKIE, v);
            }
            response
        }
        Err(e) => (
            StatusCode::UNAUTHORIZED,
            Html(login_html(Some(&format!("Not signed in: {}", &e.message)))),
        )
            .into_response(),
    }
}

/// `GET /logout`.
pub(crate) async fn logout() -> Response {
    let mut response = redirect("/login");
    response.headers_mut().insert(
        SET_COOKIE,
        HeaderValue::from_static("graft_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

/// `GET /`.
pub(crate) async fn index(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(r) => return r,
    };
    render(page_index(&state, &op).await, "Rollouts", &op)
}

async fn page_index(state: &AppState, _op: &Operator) -> Result<String, Failure> {
    let mut body = String::from("<h1>Rollouts</h1>");
    let rollouts = state.store.rollouts(200).await?;
    if rollouts.is_empty() {
        body.push_str("<p class=\"muted\">No rollout yet: <code>graft fleet rollout start --stream S --level N</code>.</p>");
    } else {
        body.push_str("<table id=\"rollouts\"><tr><th>Rollout</th><th>Stream</th><th>Level</th><th>State</th><th>Wave</th><th>Hosts moved</th><th>Started</th><th>Why</th></tr>");
        for r in &rollouts {
            let counts = state.store.rollout_counts(r, crate::now_ms()).await?;
            let _ = write!(
                body,
                "<tr><td><a href=\"/rollouts/{id}\">{id}</a></td><td>{}</td><td class=\"n\">{} → {}</td><td>{}</td>\
                 <td class=\"n\">{} / {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&r.stream),
                r.from_level.map_or("none".into(), |l| l.to_string()),
                r.level,
                state_badge(r.state),
                r.wave,
                r.waves.len(),
                progress(counts.treated, r.hosts),
                time(r.created_ms),
                esc(r.reason.as_deref().unwrap_or("")),
                id = esc(&r.id),
            );
        }
        body.push_str("</table>");
    }
    body.push_str("<h2>Hosts per stream and level</h2><table id=\"levels\"><tr><th>Stream</th><th>Level</th><th>Hosts</th></tr>");
    for (stream, level, n) in state.store.hosts_by_level().await? {
        let level = level.map_or("none".into(), |l| l.to_string());
        let _ = write!(
            body,
            "<tr><td><a href=\"/hosts?kernel={s}\">{s}</a></td><td class=\"n\">{level}</td><td class=\"n\">{n}</td></tr>",
            s = esc(&stream)
        );
    }
    body.push_str("</table>");
    Ok(body)
}

/// `GET /rollouts/{id}`.
pub(crate) async fn rollout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(r) => return r,
    };
    let title = format!("Rollout {id}");
    render(page_rollout(&state, &id).await, &title, &op)
}

async fn page_rollout(state: &AppState, id: &str) -> Result<String, Failure> {
    let row = state
        .store
        .rollout(id)
        .await?
        .ok_or_else(|| Failure::not_found(format!("no rollout {id}")))?;
    let now = crate::now_ms();
    let counts = state.store.rollout_counts(&row, now).await?;
    let mut body = format!(
        "<h1>Rollout {} {}</h1><p>Level {} of <a href=\"/hosts?kernel={s}\">{s}</a> (from {}){}, started {} by {}: \
         {} hosts selected, {} moved, {} applied; {} bake per wave.</p>",
        esc(&row.id),
        state_badge(row.state),
        row.level,
        row.from_level.map_or("none".into(), |l| format!("level {l}")),
        row.selector
            .as_deref()
            .map_or(String::new(), |s| format!(", hosts with {}", esc(s))),
        time(row.created_ms),
        esc(&row.created_by),
        row.hosts,
        counts.treated,
        counts.applied,
        seconds(row.bake_ms),
        s = esc(&row.stream),
    );
    if let Some(reason) = &row.reason {
        let _ = write!(
            body,
            "<p class=\"reason\" id=\"reason\">{}</p>",
            esc(reason)
        );
    }
    body.push_str(&waves_table(&row));
    body.push_str(&charts(state, &row, now).await?);
    body.push_str(&decisions_table(&row));
    Ok(body)
}

fn waves_table(row: &RolloutRow) -> String {
    let mut out = String::from("<h2>Waves</h2><table id=\"waves\"><tr><th>Wave</th><th>Hosts (cumulative)</th><th>Started</th><th>Bake from</th><th>Passed</th></tr>");
    let when = |t: Option<u64>| t.map_or("—".to_string(), time);
    for w in &row.waves {
        let _ = write!(
            out,
            "<tr><td class=\"n\">{}{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            w.wave,
            if w.wave == row.wave { " ◀" } else { "" },
            w.target,
            when(w.started_ms),
            when(w.assigned_ms),
            when(w.passed_ms)
        );
    }
    out.push_str("</table>");
    out
}

async fn charts(state: &AppState, row: &RolloutRow, now: u64) -> Result<String, Failure> {
    let samples = state.store.rollout_samples(row, CHART_SAMPLES).await?;
    let mut out = String::from(
        "<h2>Treatment against control</h2><p class=\"legend\"><span style=\"background:#d9480f\"></span>hosts on the new level\
         <span style=\"background:#1c7ed6\"></span>hosts still on the previous level\
         <span style=\"background:#fff0c2;height:10px\"></span>patching windows</p>",
    );
    if samples.is_empty() {
        out.push_str("<p class=\"muted\">No health samples reported yet.</p>");
        return Ok(out);
    }
    let end = if row.state == RolloutState::Running {
        now
    } else {
        samples.iter().map(|s| s.0).max().unwrap_or(now)
    };
    out.push_str("<div id=\"charts\">");
    for s in chart::series(&samples, row.created_ms, end) {
        out.push_str(&chart::svg(&s));
    }
    out.push_str("</div>");
    Ok(out)
}

fn decisions_table(row: &RolloutRow) -> String {
    let mut out = String::from("<h2>Gate decisions</h2>");
    if row.decisions.is_empty() {
        out.push_str("<p class=\"muted\">None yet: the first comes when wave 1 has baked, or at once if a hard gate fails.</p>");
        return out;
    }
    out.push_str("<table id=\"decisions\"><tr><th>When</th><th>Wave</th><th>Decision</th><th>Gate</th><th>Metric</th><th>Effect</th><th>p</th><th>Hosts</th><th>Why</th></tr>");
    for d in row.decisions.iter().rev() {
        let findings: Vec<(&str, &graft_protocol::rollout::Finding)> = d
            .reasons
            .iter()
            .map(|f| ("reason", f))
            .chain(d.notes.iter().map(|f| ("note", f)))
            .collect();
        let span = findings.len().max(1);
        let _ = write!(
            out,
            "<tr><td rowspan=\"{span}\">{}</td><td rowspan=\"{span}\" class=\"n\">{}</td><td rowspan=\"{span}\">{}{}</td>",
            time(d.at_ms),
            d.wave,
            decision_badge(&d.decision),
            if d.at_bake_end { "" } else { " <span class=\"muted\">mid-bake</span>" }
        );
        if findings.is_empty() {
            out.push_str("<td colspan=\"6\" class=\"muted\">every gate passed</td></tr>");
            continue;
        }
        for (i, (kind, f)) in findings.iter().enumerate() {
            if i > 0 {
                out.push_str("<tr>");
            }
            let hosts = match (f.n_treatment, f.n_control) {
                (Some(t), Some(c)) => format!("{t} vs {c}"),
                _ => esc(&f.hosts.join(", ")),
            };
            let _ = write!(
                out,
                "<td class=\"finding-{kind}\">{}{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{hosts}</td><td>{}</td></tr>",
                esc(&f.gate),
                if *kind == "note" { " <span class=\"muted\">(note)</span>" } else { "" },
                esc(f.metric.as_deref().unwrap_or("")),
                f.effect.map_or(String::new(), |e| format!("{e:.2}")),
                f.p_value.map_or(String::new(), |p| format!("{p:.1e}")),
                esc(&f.message)
            );
        }
    }
    out.push_str("</table>");
    out
}

/// `GET /hosts`.
pub(crate) async fn hosts(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(filter): Query<HostFilter>,
) -> Response {
    let op = match signed_in(&state, &headers).await {
        Ok(op) => op,
        Err(r) => return r,
    };
    render(page_hosts(&state, &filter).await, "Hosts", &op)
}

async fn page_hosts(state: &AppState, filter: &HostFilter) -> Result<String, Failure> {
    let label = filter
        .label
        .as_deref()
        .filter(|l| !l.is_empty())
        .map(parse_selector)
        .transpose()
        .map_err(Failure::invalid)?;
    let mut filter = filter.clone();
    filter.health = filter.health.filter(|h| !h.is_empty());
    filter.kernel = filter.kernel.filter(|k| !k.is_empty());
    if let Some(h) = filter.health.as_deref() {
        if h != "healthy" && h != "unhealthy" {
            return Err(Failure::invalid(format!(
                "health {h:?} is neither healthy nor unhealthy"
            )));
        }
    }
    let limit = filter.limit.unwrap_or(HOST_ROWS).min(HOST_ROWS);
    let hosts = state.store.hosts(&filter, label, limit).await?;
    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or(""));
    let selected = |h: &str| {
        if filter.health.as_deref() == Some(h) {
            " selected"
        } else {
            ""
        }
    };
    let mut body = format!(
        "<h1>Hosts</h1><form class=\"filters\" method=\"get\" action=\"/hosts\">\
         <input name=\"label\" placeholder=\"label=value\" value=\"{}\">\
         <input name=\"kernel\" placeholder=\"release or stream\" value=\"{}\">\
         <input name=\"level\" placeholder=\"level\" size=\"5\" value=\"{}\">\
         <select name=\"health\"><option value=\"\">any health</option><option{}>healthy</option><option{}>unhealthy</option></select>\
         <button type=\"submit\">Filter</button></form>",
        v(&filter.label),
        v(&filter.kernel),
        filter.level.map_or(String::new(), |l| l.to_string()),
        selected("healthy"),
        selected("unhealthy"),
    );
    let _ = write!(
        body,
        "<p class=\"muted\">{} hosts shown (at most {limit}).</p>\
         <table id=\"hosts\"><tr><th>Host</th><th>Id</th><th>Stream</th><th>Desired</th><th>Level</th><th>Health</th><th>Last seen</th><th>Last outcome</th></tr>",
        hosts.len()
    );
    for h in &hosts {
        let level = |l: Option<u32>| l.map_or("none".into(), |l| l.to_string());
        let _ = write!(
            body,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&h.hostname),
            esc(&h.id),
            esc(&h.stream),
            level(h.desired),
            level(h.level),
            esc(&h.health),
            time(h.last_seen_ms),
            esc(h.last_outcome.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    Ok(body)
}

/// The operator whose token the session cookie (or a bearer header) holds; else the sign-in
/// page.
async fn signed_in(state: &AppState, headers: &HeaderMap) -> Result<Operator, Response> {
    let token = cookie(headers, COOKIE_NAME).or_else(|| {
        headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
    });
    let Some(token) = token else {
        return Err(redirect("/login"));
    };
    operator_of(state, &token).await.map_err(|e| {
        (
            StatusCode::UNAUTHORIZED,
            Html(login_html(Some(&format!("Not signed in: {}", &e.message)))),
        )
            .into_response()
    })
}

async fn operator_of(state: &AppState, token: &str) -> Result<Operator, Failure> {
    match authenticate(state, &Credential(hash_secret(token))).await? {
        Principal::Token { name, role, .. } => match Role::parse(&role) {
            Some(role) => Ok(Operator { name, role }),
            None => Err(Failure::forbidden(
                "an enroll token cannot read the dashboard",
            )),
        },
        Principal::Host { .. } => Err(Failure::forbidden(
            "a host credential cannot read the dashboard",
        )),
    }
}

/// A cookie's value.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

fn render(body: Result<String, Failure>, title: &str, op: &Operator) -> Response {
    let who = format!("{} ({})", op.name, op.role.as_str());
    match body {
        Ok(body) => (
            [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Html(page(title, Some(&who), &body)),
        )
            .into_response(),
        Err(e) => {
            let status = e.status;
            let body = format!(
                "<h1>{}</h1><p class=\"reason\">{}</p>",
                status,
                esc(&e.message)
            );
            (status, Html(page(title, Some(&who), &body))).into_response()
        }
    }
}

fn redirect(to: &'static str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (LOCATION, HeaderValue::from_static(to)),
            (CONTENT_TYPE, HeaderValue::from_static("text/plain")),
        ],
    )
        .into_response()
}

fn seconds(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 && ms > 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 && ms > 0 => format!("{} min", ms / 60_000),
        ms => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1; graft_token=secret; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE_NAME).as_deref(), Some("secret"));
        h.insert(COOKIE, "graft_token=".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE_NAME), None);
    }

    #[test]
    fn bake_times_read_as_people_give_them() {
        assert_eq!(seconds(1_800_000), "30 min");
        assert_eq!(seconds(7_200_000), "2 h");
        assert_eq!(seconds(1_500), "1.5 s");
    }
}
