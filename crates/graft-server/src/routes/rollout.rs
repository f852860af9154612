//! Rollouts: start one (operator), read them (viewer), and an operator's pause, resume,
//! abort and rollback. Every action is audited, refused ones included. The driver that moves
//! running rollouts on is [`crate::rollouts`]; actions here change the same row under the same
//! compare-and-set, retried when the driver wrote first.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use graft_protocol::api::{check_string, parse_selector, Role};
use graft_protocol::rollout::{Rollback, RolloutState, RolloutView, StartRollout};
use graft_rollout::WavePlan;

use super::{audited, DEFAULT_LIST, MAX_LIST};
use crate::auth::{random_hex, Operator};
use crate::error::Failure;
use crate::extract::{Body, Path, Query};
use crate::rollouts::plan_waves;
use crate::store::{RollBack, RolloutRow, Started};
use crate::AppState;

/// A treated host silent this long is lost, unless the rollout says otherwise.
const DEFAULT_LOST_AFTER_MS: u64 = 10 * 60 * 1000;

/// How often an action retries when the driver changed the rollout in between.
const ACTION_RETRIES: usize = 5;

/// `POST /v1/rollouts`: 201 and the rollout.
pub(crate) async fn start(
    State(state): State<AppState>,
    op: Operator,
    body: Result<Body<StartRollout>, Failure>,
) -> Result<(StatusCode, Json<RolloutView>), Failure> {
    let what = match &body {
        Ok(Body(s)) => format!(
            "start rollout of {} level {} (waves {}{})",
            s.stream,
            s.level,
            s.waves,
            s.selector
                .as_deref()
                .map_or(String::new(), |sel| format!(", selector {sel}"))
        ),
        Err(_) => "start rollout".to_string(),
    };
    let result = start_checked(&state, &op, body).await;
    audited(&state, &op.name, what, result)
        .await
        .map(|v| (StatusCode::CREATED, Json(v)))
}

async fn start_checked(
    state: &AppState,
    op: &Operator,
    body: Result<Body<StartRollout>, Failure>,
) -> Result<RolloutView, Failure> {
    // 1. Who, and a well-formed request.
    op.require(Role::Operator)?;
    let Body(start) = body?;
    start.check().map_err(Failure::invalid)?;
    let plan = WavePlan::parse(&start.waves).map_err(|e| Failure::invalid(e.to_string()))?;
    let selector = start
        .selector
        .as_deref()
        .map(parse_selector)
        .transpose()
        .map_err(Failure::invalid)?;
    // 2. The level: published (so signed: publishing refuses anything else).
    if state.store.stream_state(&start.stream).await?.is_none() {
        return Err(Failure::not_found(format!(
            "no stream {}: `graft fleet streams` lists them",
            start.stream
        )));
    }
    if !state.store.level_exists(&start.stream, start.level).await? {
        return Err(Failure::not_found(format!(
            "{} has no level {}: publish it first (`graft fleet publish`)",
            start.stream, start.level
        )));
    }
    // 3. The hosts it selects, and what they are on now.
    let population = state
        .store
        .rollout_population(&start.stream, selector.as_ref())
        .await?;
    if population.hosts.is_empty() {
        return Err(Failure::invalid(format!(
            "the selection matches no host of {}{}",
            start.stream,
            start
                .selector
                .as_deref()
                .map_or(String::new(), |s| format!(" (selector {s})"))
        )));
    }
    let from_level = population.previous_level();
    if from_level == Some(start.level) {
        return Err(Failure::conflict(format!(
            "the selected hosts of {} are already assigned level {}",
            start.stream, start.level
        )));
    }
    if start.auto_rollback && population.hosts.iter().any(|(_, d)| d.is_some()) {
        return Err(Failure::invalid(format!(
            "auto-rollback needs every selected host to come from no level (a revert needs no \
             signature); these come from level {}: going back to it needs the publisher's fresh \
             signature, so roll back by hand with `graft fleet rollout rollback ID --signing-key`",
            from_level.map_or("none".into(), |l| l.to_string())
        )));
    }
    // 4. Its waves and its row; refused if another rollout of the stream is not over.
    let hosts = population.hosts.len() as u64;
    let now = crate::now_ms();
    let row = RolloutRow {
        id: format!("r-{}", random_hex(6)),
        stream: start.stream.clone(),
        level: start.level,
        from_level,
        selector: start.selector.clone(),
        state: RolloutState::Running,
        reason: None,
        wave: 0,
        waves: plan_waves(&plan, start.canary, hosts),
        bake_ms: start.bake_ms,
        max_parallel: start.max_parallel,
        lost_after_ms: start.lost_after_ms.unwrap_or(DEFAULT_LOST_AFTER_MS),
        auto_rollback: start.auto_rollback,
        hosts,
        decisions: Vec::new(),
        created_by: op.name.clone(),
        created_ms: now,
        updated_ms: now,
        revision: 0,
        excused: Vec::new(),
    };
    match state.store.start_rollout(&row, &population).await? {
        Started::Ok => {}
        Started::Overlaps(other) => {
            return Err(Failure::conflict(format!(
                "rollout {other} of {} is not over: pause and abort it, or wait for it, before starting another",
                start.stream
            )))
        }
    }
    tracing::info!(
        rollout = row.id,
        stream = row.stream,
        level = row.level,
        hosts,
        "rollout started"
    );
    view(state, &row, true).await
}

/// `GET /v1/rollouts`.
pub(crate) async fn list(
    State(state): State<AppState>,
    op: Operator,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<RolloutView>>, Failure> {
    op.require(Role::Viewer)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIST).min(MAX_LIST);
    let mut out = Vec::new();
    for row in state.store.rollouts(limit).await? {
        out.push(view(&state, &row, false).await?);
    }
    Ok(Json(out))
}

/// The query of `GET /v1/rollouts`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
}

/// `GET /v1/rollouts/{id}`.
pub(crate) async fn get_one(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, Failure> {
    op.require(Role::Viewer)?;
    let row = find(&state, &id).await?;
    view(&state, &row, true).await.map(Json)
}

/// `POST /v1/rollouts/{id}/pause`.
pub(crate) async fn pause(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, Failure> {
    act(&state, &op, &id, "pause", |row, _now| match row.state {
        RolloutState::Running => {
            row.state = RolloutState::Paused;
            row.reason = Some("paused by an operator".into());
            Ok(())
        }
        other => Err(not_in(row, other, "pause", "only a running rollout pauses")),
    })
    .await
}

/// `POST /v1/rollouts/{id}/resume`: a paused rollout goes on; a halted one goes on with the
/// halt's hosts accepted (the hard gates stop counting them) and, if the halt came at a
/// bake's end, its wave passed.
pub(crate) async fn resume(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, Failure> {
    act(&state, &op, &id, "resume", |row, now| match row.state {
        RolloutState::Paused => {
            row.state = RolloutState::Running;
            row.reason = None;
            Ok(())
        }
        RolloutState::Halted => {
            let last = row.decisions.last().cloned();
            if let Some(halt) = last.filter(|d| d.decision == "halt") {
                for finding in &halt.reasons {
                    for host in &finding.hosts {
                        if !row.excused.contains(host) {
                            row.excused.push(host.clone());
                        }
                    }
                }
                if halt.at_bake_end {
                    pass_wave(row, now);
                }
            }
            if row.state == RolloutState::Halted {
                row.state = RolloutState::Running;
            }
            row.reason = None;
            Ok(())
        }
        other => Err(not_in(row, other, "resume", "start a new rollout instead")),
    })
    .await
}

/// `POST /v1/rollouts/{id}/abort`: stops for good; hosts stay where they are.
pub(crate) async fn abort(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, Failure> {
    act(&state, &op, &id, "abort", |row, _now| {
        if row.state.is_final() {
            return Err(not_in(row, row.state, "abort", "it is over already"));
        }
        row.state = RolloutState::Aborted;
        row.reason = Some(format!(
            "aborted by an operator in wave {}; moved hosts stay on level {}",
            row.wave.max(1),
            row.level
        ));
        Ok(())
    })
    .await
}

/// `POST /v1/rollouts/{id}/rollback`: every moved host back to the level it was assigned
/// before, through its agent.
pub(crate) async fn rollback(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<String>,
    body: Result<Body<Rollback>, Failure>,
) -> Result<Json<RolloutView>, Failure> {
    let what = format!("rollback rollout {id}");
    let result = rollback_checked(&state, &op, &id, body).await;
    audited(&state, &op.name, what, result).await.map(Json)
}

async fn rollback_checked(
    state: &AppState,
    op: &Operator,
    id: &str,
    body: Result<Body<Rollback>, Failure>,
) -> Result<RolloutView, Failure> {
    op.require(Role::Operator)?;
    let Body(request) = body?;
    check_string("rollout", id).map_err(Failure::invalid)?;
    // 1. Where the moved hosts go back to: one level, or none.
    let previous = state.store.moved_previous(id).await?;
    let back_to = match previous.as_slice() {
        [] | [None] => None,
        [Some(level)] => Some(*level),
        _ => {
            return Err(Failure::conflict(format!(
                "the moved hosts of {id} came from several levels ({}): assign each group its level by hand",
                previous
                    .iter()
                    .map(|l| l.map_or("none".into(), |l| l.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    // 2. Going back to a level needs its metadata signed again, newer than everything.
    let resigned = match (back_to, &request.resigned) {
        (None, _) => None,
        (Some(level), None) => {
            return Err(Failure::conflict(format!(
                "going back to level {level} needs its metadata signed again with a newer version \
                 (agents refuse older versions): `graft fleet rollout rollback {id} --signing-key publisher.key`"
            )))
        }
        (Some(level), Some(signed)) => Some(check_resigned(state, id, level, signed).await?),
    };
    // 3. The state change and the hosts' move, in one transaction.
    for _ in 0..ACTION_RETRIES {
        let mut row = find(state, id).await?;
        if row.state == RolloutState::RolledBack {
            return Err(not_in(
                &row,
                row.state,
                "roll back",
                "it was rolled back already",
            ));
        }
        let now = crate::now_ms();
        row.state = RolloutState::RolledBack;
        row.reason = Some(format!(
            "rolled back by an operator: moved hosts go back to level {}",
            back_to.map_or("none".into(), |l| l.to_string())
        ));
        let back = RollBack {
            wave: None,
            resigned: resigned
                .as_ref()
                .map(|(level, version, json)| (*level, *version, json.as_str())),
        };
        if state
            .store
            .save_rollout(&row, 0, Some(back), &[], now)
            .await?
        {
            state.checkins.invalidate();
            let row = find(state, id).await?;
            return view(state, &row, true).await;
        }
    }
    Err(Failure::unavailable(format!(
        "rollout {id} kept changing under this request: try again"
    )))
}

/// The previous level's metadata, signed again: by a trusted key, for the stream and that
/// level's module, newer than every version of the stream.
async fn check_resigned(
    state: &AppState,
    id: &str,
    level: u32,
    signed: &graft_protocol::trust::SignedLevel,
) -> Result<(u32, u64, String), Failure> {
    let row = find(state, id).await?;
    let keys = super::publish::trusted_keys(state).await?;
    let newest = state
        .store
        .stream_state(&row.stream)
        .await?
        .and_then(|s| s.latest)
        .map_or(0, |l| l.version);
    let now_secs = crate::now_ms() / 1000;
    let meta = signed
        .verify(&keys, &row.stream, now_secs, Some(newest + 1))
        .map_err(|e| Failure::invalid(format!("re-signed metadata: {e}")))?;
    let module = state.store.level_module(&row.stream, level).await?;
    if meta.level != level || module.as_deref() != Some(meta.module_sha256.as_str()) {
        return Err(Failure::invalid(format!(
            "the re-signed metadata is for level {} (module {}), not for level {level} as published",
            meta.level, meta.module_sha256
        )));
    }
    let json = serde_json::to_string(signed).map_err(|e| Failure::internal(e.to_string()))?;
    Ok((level, meta.version, json))
}

/// An action that changes only the rollout's row: read, change, compare-and-set, retried.
async fn act(
    state: &AppState,
    op: &Operator,
    id: &str,
    name: &str,
    change: impl Fn(&mut RolloutRow, u64) -> Result<(), Failure>,
) -> Result<Json<RolloutView>, Failure> {
    let what = format!("{name} rollout {id}");
    let result = async {
        op.require(Role::Operator)?;
        check_string("rollout", id).map_err(Failure::invalid)?;
        for _ in 0..ACTION_RETRIES {
            let mut row = find(state, id).await?;
            let now = crate::now_ms();
            change(&mut row, now)?;
            if state.store.save_rollout(&row, 0, None, &[], now).await? {
                if row.state.is_final() {
                    // Its sampled hosts are no longer asked for health.
                    state.checkins.invalidate();
                }
                let row = find(state, id).await?;
                return view(state, &row, true).await;
            }
        }
        Err(Failure::unavailable(format!(
            "rollout {id} kept changing under this request: try again"
        )))
    }
    .await;
    audited(state, &op.name, what, result).await.map(Json)
}

/// Marks the current wave passed by an operator and moves to the next (or completes).
fn pass_wave(row: &mut RolloutRow, now: u64) {
    let index = row.wave.max(1) as usize - 1;
    if let Some(w) = row.waves.get_mut(index) {
        w.passed_ms = Some(now);
    }
    if index + 1 >= row.waves.len() {
        row.state = RolloutState::Completed;
    } else {
        row.wave = row.wave.max(1) + 1;
        if let Some(w) = row.waves.get_mut(index + 1) {
            w.started_ms = Some(now);
        }
    }
}

async fn find(state: &AppState, id: &str) -> Result<RolloutRow, Failure> {
    state.store.rollout(id).await?.ok_or_else(|| {
        Failure::not_found(format!(
            "no rollout {id}: `graft fleet rollout list` lists them"
        ))
    })
}

async fn view(state: &AppState, row: &RolloutRow, decisions: bool) -> Result<RolloutView, Failure> {
    let counts = state.store.rollout_counts(row, crate::now_ms()).await?;
    Ok(row.view(counts, decisions))
}

fn not_in(row: &RolloutRow, state: RolloutState, action: &str, hint: &str) -> Failure {
    Failure::conflict(format!(
        "rollout {} is {}: it cannot {action} ({hint})",
        row.id,
        state.as_str()
    ))
}
