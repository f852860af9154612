//! Rollouts in the database: the rollout row (its whole state, changed under a
//! compare-and-set on `revision`), the hosts it selected in the order it moves them, and the
//! health samples the gates read.

use std::collections::{BTreeMap, BTreeSet};

use graft_protocol::api::HealthSample;
use graft_protocol::rollout::{GateDecision, RolloutState, RolloutView, WaveView};
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{int, json_column, ms, opt_int, Store, BUMP, BUMP_HOSTS, STAMP};

/// Most rows one insert statement carries.
const INSERT_CHUNK: usize = 400;

/// Most hosts named in one finding, and most hosts per group the statistical gates sample.
pub(crate) const NAMED_HOSTS: i64 = 20;

/// A rollout's whole state, as stored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RolloutRow {
    pub id: String,
    pub stream: String,
    pub level: u32,
    pub from_level: Option<u32>,
    pub selector: Option<String>,
    pub state: RolloutState,
    pub reason: Option<String>,
    pub wave: u32,
    pub waves: Vec<WaveView>,
    pub bake_ms: u64,
    pub max_parallel: Option<u32>,
    pub lost_after_ms: u64,
    pub auto_rollback: bool,
    pub hosts: u64,
    pub decisions: Vec<GateDecision>,
    pub created_by: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub revision: i64,
    pub excused: Vec<String>,
}

impl RolloutRow {
    /// The view, with the counts the caller read.
    pub fn view(&self, counts: RolloutCounts, with_decisions: bool) -> RolloutView {
        RolloutView {
            id: self.id.clone(),
            stream: self.stream.clone(),
            level: self.level,
            from_level: self.from_level,
            selector: self.selector.clone(),
            state: self.state,
            reason: self.reason.clone(),
            wave: self.wave,
            waves: self.waves.clone(),
            bake_ms: self.bake_ms,
            max_parallel: self.max_parallel,
            lost_after_ms: self.lost_after_ms,
            auto_rollback: self.auto_rollback,
            hosts: self.hosts,
            treated: counts.treated,
            applied: counts.applied,
            created_by: self.created_by.clone(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            decisions: if with_decisions {
                self.decisions.clone()
            } else {
                Vec::new()
            },
        }
    }
}

/// How far a rollout's hosts are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RolloutCounts {
    /// Moved to the level.
    pub treated: u64,
    /// Moved and reporting it applied.
    pub applied: u64,
    /// Moved, not applied, no failed outcome, still reporting: on their way.
    pub in_flight: u64,
    /// Moved, on the level, with kernel errors logged since the apply.
    pub kernel_errors: u64,
    /// Moved, and silent for longer than the rollout's `lost_after` (and the last-seen
    /// resolution, see [`Store::with_seen_resolution`]).
    pub lost: u64,
}

/// What a start found, before anything is written.
#[derive(Debug, Clone)]
pub(crate) struct Population {
    /// Host ids and their desired level.
    pub hosts: Vec<(String, Option<u32>)>,
}

impl Population {
    /// The level most of the selected hosts are assigned (the rollout's "previous level").
    pub fn previous_level(&self) -> Option<u32> {
        let mut counts: BTreeMap<Option<u32>, u64> = BTreeMap::new();
        for (_, desired) in &self.hosts {
            *counts.entry(*desired).or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(level, n)| (*n, *level))
            .and_then(|(level, _)| level)
    }
}

/// How a start ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Started {
    Ok,
    /// Another rollout of the stream is not over.
    Overlaps(String),
}

/// What the hard gates need, over every treated host.
#[derive(Debug, Clone, Default)]
pub(crate) struct HardFacts {
    pub treated: u64,
    /// Treated hosts with kernel errors since they applied the level (named, at most 20).
    pub kernel_errors: Vec<String>,
    /// Treated hosts silent for longer than lost-after (and the last-seen resolution).
    pub lost: Vec<String>,
    /// Treated hosts that came back from an unclean reboot since they were moved.
    pub crashed: Vec<String>,
    /// Treated hosts whose apply of the level failed or was refused.
    pub failed: Vec<String>,
    /// How many failed, in all (the list above is cut at 20).
    pub failed_count: u64,
}

impl HardFacts {
    /// Leaves out the hosts an operator accepted when resuming after a halt, then cuts each
    /// list to [`NAMED_HOSTS`]; `failed_count` counts the failed hosts left. The lists must hold
    /// every excused host they found, beyond the cut: an excused host among the first names
    /// would otherwise hide the unexcused ones after them.
    fn excuse(&mut self, excused: &[String]) {
        let cut = usize::try_from(NAMED_HOSTS).unwrap_or(usize::MAX);
        for list in [
            &mut self.kernel_errors,
            &mut self.lost,
            &mut self.crashed,
            &mut self.failed,
        ] {
            list.retain(|h| !excused.contains(h));
        }
        self.failed_count = self.failed.len() as u64;
        for list in [
            &mut self.kernel_errors,
            &mut self.lost,
            &mut self.crashed,
            &mut self.failed,
        ] {
            list.truncate(cut);
        }
    }
}

/// One health sample: in the patching window or not, and its metrics.
pub(crate) type Sample = (bool, BTreeMap<String, f64>);

/// One host's samples over a window, for the statistical gates.
#[derive(Debug, Clone)]
pub(crate) struct HostSamples {
    pub host: String,
    pub treated: bool,
    /// Its samples over the window: since it was moved (a treated host moved in this wave)
    /// or since the wave started.
    pub samples: Vec<Sample>,
    /// Its samples over the span before it was moved (a treated host) or before the wave
    /// started (a control host): the baseline each host is compared with.
    pub baseline: Vec<Sample>,
}

impl Store {
    /// The stream's hosts a rollout would select: not revoked, with the label if given.
    pub async fn rollout_population(
        &self,
        stream: &str,
        selector: Option<&(String, String)>,
    ) -> Result<Population, sqlx::Error> {
        let rows = match selector {
            Some((name, value)) => {
                sqlx::query(
                    "SELECT id, desired FROM hosts WHERE stream = $1 AND revoked_ms IS NULL \
                     AND id IN (SELECT host_id FROM host_labels WHERE name = $2 AND value = $3)",
                )
                .bind(stream)
                .bind(name)
                .bind(value)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, desired FROM hosts WHERE stream = $1 AND revoked_ms IS NULL",
                )
                .bind(stream)
                .fetch_all(&self.pool)
                .await?
            }
        };
        let hosts = rows
            .iter()
            .map(|r| Ok((r.try_get("id")?, opt_int::<u32>(r, "desired")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(Population { hosts })
    }

    /// Stores a new rollout and the hosts it selected, in one transaction; refused when another
    /// rollout of the stream is not over (checked here and, against a concurrent start on
    /// another replica, by the unique index on `live`).
    pub async fn start_rollout(
        &self,
        row: &RolloutRow,
        population: &Population,
    ) -> Result<Started, sqlx::Error> {
        let _turn = self.write_turn().await;
        // The insert comes first: the unique index on `live` refuses an overlap, and a
        // transaction that writes first takes SQLite's write lock at once (one that read first
        // could not upgrade past a concurrent writer).
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO rollouts (id, stream, level, from_level, selector, state, reason, wave, \
             waves, bake_ms, max_parallel, lost_after_ms, auto_rollback, hosts, decisions, \
             created_by, created_ms, updated_ms, revision, excused, live) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)",
        )
        .bind(&row.id)
        .bind(&row.stream)
        .bind(i64::from(row.level))
        .bind(row.from_level.map(i64::from))
        .bind(row.selector.clone())
        .bind(row.state.as_str())
        .bind(row.reason.clone())
        .bind(i64::from(row.wave))
        .bind(to_json(&row.waves))
        .bind(ms(row.bake_ms))
        .bind(row.max_parallel.map(i64::from))
        .bind(ms(row.lost_after_ms))
        .bind(i64::from(row.auto_rollback))
        .bind(ms(row.hosts))
        .bind(to_json(&row.decisions))
        .bind(&row.created_by)
        .bind(ms(row.created_ms))
        .bind(ms(row.updated_ms))
        .bind(row.revision)
        .bind(to_json(&row.excused))
        .bind(&row.stream)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            if is_unique_violation(&e) {
                drop(tx);
                let other = sqlx::query("SELECT id FROM rollouts WHERE live = $1")
                    .bind(&row.stream)
                    .fetch_optional(&self.pool)
                    .await?
                    .map(|r| r.try_get("id"))
                    .transpose()?
                    .unwrap_or_else(|| "another".into());
                return Ok(Started::Overlaps(other));
            }
            return Err(e);
        }
        // The order hosts move in: a hash of the rollout and the host, so that every rollout
        // draws its own canaries rather than the same hosts taking every first wave.
        let mut ranked: Vec<(String, &str, Option<u32>)> = population
            .hosts
            .iter()
            .map(|(id, desired)| (order_key(&row.id, id), id.as_str(), *desired))
            .collect();
        ranked.sort();
        for chunk in ranked.chunks(INSERT_CHUNK) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let b = 4 * i;
                    format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4)
                })
                .collect();
            let sql = format!(
                "INSERT INTO rollout_hosts (rollout_id, host_id, ord, previous) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (ord, host, previous) in chunk {
                query = query
                    .bind(&row.id)
                    .bind(*host)
                    .bind(ord.as_str())
                    .bind(previous.map(i64::from));
            }
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Started::Ok)
    }

    /// A rollout by id.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRow>, sqlx::Error> {
        let row = sqlx::query(&format!("{ROLLOUT_COLUMNS} WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rollout_row).transpose()
    }

    /// Rollouts, newest first.
    pub async fn rollouts(&self, limit: u32) -> Result<Vec<RolloutRow>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "{ROLLOUT_COLUMNS} ORDER BY created_ms DESC, id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rollout_row).collect()
    }

    /// The rollouts a driver has work on: running ones.
    pub async fn running_rollouts(&self) -> Result<Vec<RolloutRow>, sqlx::Error> {
        let rows = sqlx::query(&format!("{ROLLOUT_COLUMNS} WHERE state = 'running'"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rollout_row).collect()
    }

    /// Writes a rollout's new state if nobody else changed it since `row.revision` was read,
    /// moving `moves` more of its hosts to the level (the next ones in its order) for wave
    /// `row.wave`, or sending `back` hosts to their previous level; all in one transaction.
    /// False: another replica got there first, nothing written.
    pub async fn save_rollout(
        &self,
        row: &RolloutRow,
        moves: u64,
        back: Option<RollBack<'_>>,
        sample: &[(u64, u64)],
        now_ms: u64,
    ) -> Result<bool, sqlx::Error> {
        let _turn = self.write_turn().await;
        let mut tx = self.pool.begin().await?;
        let saved = sqlx::query(
            "UPDATE rollouts SET state = $1, reason = $2, wave = $3, waves = $4, decisions = $5, \
             updated_ms = $6, revision = revision + 1, \
             live = CASE WHEN $7 = 1 THEN NULL ELSE stream END, excused = $10 \
             WHERE id = $8 AND revision = $9",
        )
        .bind(row.state.as_str())
        .bind(row.reason.clone())
        .bind(i64::from(row.wave))
        .bind(to_json(&row.waves))
        .bind(to_json(&row.decisions))
        .bind(ms(now_ms))
        .bind(i64::from(row.state.is_final()))
        .bind(&row.id)
        .bind(row.revision)
        .bind(to_json(&row.excused))
        .execute(&mut *tx)
        .await?;
        if saved.rows_affected() == 0 {
            return Ok(false);
        }
        // Which check-in answers change: a re-signed level may be anyone's; otherwise only the
        // hosts moved, sent back, or asked (or no longer asked) for health, stamped below.
        let resigns = back.as_ref().is_some_and(|b| b.resigned.is_some());
        if resigns {
            sqlx::query(BUMP).execute(&mut *tx).await?;
        } else if moves > 0 || back.is_some() || !sample.is_empty() || row.state.is_final() {
            sqlx::query(BUMP_HOSTS).execute(&mut *tx).await?;
        }
        if moves > 0 {
            let next = "SELECT host_id FROM rollout_hosts WHERE rollout_id = $1 AND wave IS NULL \
                        ORDER BY ord LIMIT $2";
            let ids: Vec<String> = sqlx::query(next)
                .bind(&row.id)
                .bind(ms(moves))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("host_id"))
                .collect::<Result<_, _>>()?;
            for chunk in ids.chunks(INSERT_CHUNK) {
                let list = placeholders(4, chunk.len());
                let sql = format!(
                    "UPDATE rollout_hosts SET wave = $1, moved_ms = $2 WHERE rollout_id = $3 AND host_id IN ({list})"
                );
                let mut query = sqlx::query(&sql)
                    .bind(i64::from(row.wave))
                    .bind(ms(now_ms))
                    .bind(&row.id);
                for id in chunk {
                    query = query.bind(id.as_str());
                }
                query.execute(&mut *tx).await?;
                let sql = move_hosts_sql(chunk.len());
                let mut query = sqlx::query(&sql)
                    .bind(i64::from(row.level))
                    .bind(&row.stream)
                    .bind(&row.id);
                for id in chunk {
                    query = query.bind(id.as_str());
                }
                query.execute(&mut *tx).await?;
            }
        }
        if let Some(back) = back {
            // Each moved host back to what it was assigned before; the resigned metadata, if
            // any, replaces the previous level's (a newer version of the same level).
            if let Some((level, version, signed)) = back.resigned {
                sqlx::query(
                    "UPDATE levels SET version = $1, signed = $2 WHERE stream = $3 AND level = $4",
                )
                .bind(ms(version))
                .bind(signed)
                .bind(&row.stream)
                .bind(i64::from(level))
                .execute(&mut *tx)
                .await?;
            }
            let wave_clause = match back.wave {
                Some(_) => " AND wave = $3",
                None => " AND wave IS NOT NULL AND $3 = $3",
            };
            sqlx::query(&send_back_sql(wave_clause))
                .bind(&row.id)
                .bind(&row.stream)
                .bind(i64::from(back.wave.unwrap_or(0)))
                .execute(&mut *tx)
                .await?;
        }
        if !sample.is_empty() || row.state.is_final() {
            // The hosts asked for health until now see a new answer.
            Self::stamp_sampled(&mut tx, &row.id).await?;
        }
        if !sample.is_empty() {
            // The hosts whose health the gates will read, by their rank in the rollout's
            // order: asked to report at every check-in (their answers change).
            sqlx::query(
                "UPDATE rollout_hosts SET sampled = 0 WHERE rollout_id = $1 AND sampled = 1",
            )
            .bind(&row.id)
            .execute(&mut *tx)
            .await?;
            for &(offset, count) in sample {
                sqlx::query(
                    "UPDATE rollout_hosts SET sampled = 1 WHERE rollout_id = $1 AND host_id IN \
                     (SELECT host_id FROM rollout_hosts WHERE rollout_id = $1 ORDER BY ord LIMIT $2 OFFSET $3)",
                )
                .bind(&row.id)
                .bind(ms(count))
                .bind(ms(offset))
                .execute(&mut *tx)
                .await?;
            }
            Self::stamp_sampled(&mut tx, &row.id).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Stamps the hosts a rollout asks for health as changed (see [`STAMP`]).
    async fn stamp_sampled(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        rollout: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "UPDATE hosts SET {STAMP} WHERE id IN \
             (SELECT host_id FROM rollout_hosts WHERE rollout_id = $1 AND sampled = 1)"
        ))
        .bind(rollout)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The levels the moved hosts were assigned before the rollout, each once.
    pub async fn moved_previous(&self, id: &str) -> Result<Vec<Option<u32>>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT DISTINCT previous FROM rollout_hosts WHERE rollout_id = $1 AND wave IS NOT NULL",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| opt_int(r, "previous")).collect()
    }

    /// How far a rollout's hosts are, and how many of them the hard gates read from the host
    /// rows (kernel errors, silence). Every driver tick, status and dashboard page asks, so
    /// nothing here visits every moved host: each count starts from an index of the few hosts
    /// it is about (migration 0006) and looks their rollout row up by key, and `treated` is
    /// counted in the rollout's own index.
    pub async fn rollout_counts(
        &self,
        row: &RolloutRow,
        now_ms: u64,
    ) -> Result<RolloutCounts, sqlx::Error> {
        let (id, level) = (row.id.as_str(), i64::from(row.level));
        let silent_since = self.silent_since(now_ms, row.lost_after_ms);
        let treated = sqlx::query(TREATED_SQL)
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        let unsettled = sqlx::query(UNSETTLED_SQL)
            .bind(id)
            .bind(level)
            .fetch_one(&self.pool)
            .await?;
        let held_up = sqlx::query(HELD_UP_SQL)
            .bind(id)
            .bind(level)
            .bind(silent_since)
            .fetch_one(&self.pool)
            .await?;
        let kernel_errors = sqlx::query(&moved_hosts_sql("COUNT(*) AS n", KERNEL_ERRORS))
            .bind(id)
            .bind(level)
            .fetch_one(&self.pool)
            .await?;
        let lost = sqlx::query(&moved_hosts_sql("COUNT(*) AS n", SILENT))
            .bind(id)
            .bind(silent_since)
            .fetch_one(&self.pool)
            .await?;
        let treated: u64 = int(&treated, "n")?;
        let on_the_way: u64 = int(&unsettled, "on_the_way")?;
        // A moved host is on the level once it settled there, unless the rollout sent it
        // back: then "applied" is what still runs the level on its way back.
        let applied = if row.state == RolloutState::RolledBack {
            int(&unsettled, "still_on")?
        } else {
            treated.saturating_sub(on_the_way)
        };
        Ok(RolloutCounts {
            treated,
            applied,
            in_flight: on_the_way.saturating_sub(int(&held_up, "n")?),
            kernel_errors: int(&kernel_errors, "n")?,
            lost: int(&lost, "n")?,
        })
    }

    /// What the hard gates need: every treated host's troubles since it was moved, less the
    /// hosts an operator excused. The host rows' troubles are named only when `counts` found
    /// some; crashes and failed transitions are read from their own small indexes, never by
    /// visiting every moved host.
    pub async fn hard_facts(
        &self,
        row: &RolloutRow,
        counts: &RolloutCounts,
        now_ms: u64,
    ) -> Result<HardFacts, sqlx::Error> {
        // Enough names that the excused ones can be left out and the cut still be full.
        let limit =
            NAMED_HOSTS.saturating_add(i64::try_from(row.excused.len()).unwrap_or(i64::MAX));
        let names = |rows: Vec<AnyRow>| -> Result<Vec<String>, sqlx::Error> {
            rows.iter().map(|r| r.try_get("id")).collect()
        };
        let kernel_errors = if counts.kernel_errors > 0 {
            let rows = sqlx::query(&format!(
                "{} ORDER BY h.id LIMIT $3",
                moved_hosts_sql("h.id", KERNEL_ERRORS)
            ))
            .bind(&row.id)
            .bind(i64::from(row.level))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            names(rows)?
        } else {
            Vec::new()
        };
        let lost = if counts.lost > 0 {
            let rows = sqlx::query(&format!(
                "{} ORDER BY h.id LIMIT $3",
                moved_hosts_sql("h.id", SILENT)
            ))
            .bind(&row.id)
            .bind(self.silent_since(now_ms, row.lost_after_ms))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            names(rows)?
        } else {
            Vec::new()
        };
        // From the unclean reboots since the rollout began (a partial index), the treated
        // hosts' since their move; then the same for the level's failed outcomes. Rare rows
        // both: read whole, named in order here (an ORDER BY would walk the whole table).
        let crashed = sqlx::query(
            "SELECT s.host_id AS id FROM health s \
             WHERE s.unclean_reboot = 1 AND s.at_ms >= $2 AND EXISTS (SELECT 1 FROM rollout_hosts rh \
             WHERE rh.rollout_id = $1 AND rh.host_id = s.host_id AND rh.wave IS NOT NULL \
             AND rh.moved_ms <= s.at_ms)",
        )
        .bind(&row.id)
        .bind(ms(row.created_ms))
        .fetch_all(&self.pool)
        .await?;
        let failed = sqlx::query(
            "SELECT o.host_id AS id FROM outcomes o \
             WHERE o.level = $2 AND o.result NOT IN ('applied', 'forced') AND o.at_ms >= $3 \
             AND EXISTS (SELECT 1 FROM rollout_hosts rh WHERE rh.rollout_id = $1 \
             AND rh.host_id = o.host_id AND rh.wave IS NOT NULL AND rh.moved_ms <= o.at_ms)",
        )
        .bind(&row.id)
        .bind(i64::from(row.level))
        .bind(ms(row.created_ms))
        .fetch_all(&self.pool)
        .await?;
        let distinct = |rows: Vec<AnyRow>| -> Result<BTreeSet<String>, sqlx::Error> {
            rows.iter().map(|r| r.try_get("id")).collect()
        };
        let (crashed, failed) = (distinct(crashed)?, distinct(failed)?);
        let mut facts = HardFacts {
            treated: counts.treated,
            kernel_errors,
            lost,
            crashed: crashed.into_iter().collect(),
            failed_count: failed.len() as u64,
            failed: failed.into_iter().collect(),
        };
        facts.excuse(&row.excused);
        Ok(facts)
    }

    /// Samples since `since_ms` of up to `per_group` treated hosts (the latest wave's first)
    /// and as many control hosts: selected by the rollout, not moved, at the previous level.
    pub async fn window_samples(
        &self,
        row: &RolloutRow,
        since_ms: u64,
        baseline_ms: u64,
        per_group: i64,
    ) -> Result<Vec<HostSamples>, sqlx::Error> {
        let treated = sqlx::query(
            "SELECT host_id, moved_ms, wave FROM rollout_hosts WHERE rollout_id = $1 AND wave IS NOT NULL \
             ORDER BY wave DESC, ord LIMIT $2",
        )
        .bind(&row.id)
        .bind(per_group)
        .fetch_all(&self.pool)
        .await?;
        // The wave's treatment began with its first move: the control hosts' pivot.
        let mut first_move: Option<u64> = None;
        for r in &treated {
            let (wave, moved): (Option<i64>, Option<i64>) =
                (r.try_get("wave")?, r.try_get("moved_ms")?);
            if let (Some(w), Some(m)) = (wave, moved) {
                if w == i64::from(row.wave) {
                    let m = u64::try_from(m).unwrap_or(0);
                    first_move = Some(first_move.map_or(m, |f| f.min(m)));
                }
            }
        }
        let control_pivot = first_move.unwrap_or(since_ms).max(since_ms);
        let control = sqlx::query(
            "SELECT rh.host_id, rh.moved_ms FROM rollout_hosts rh JOIN hosts h ON h.id = rh.host_id \
             WHERE rh.rollout_id = $1 AND rh.wave IS NULL \
             AND ((h.level IS NULL AND $2 = -1) OR h.level = $2) ORDER BY rh.ord LIMIT $3",
        )
        .bind(&row.id)
        .bind(row.from_level.map_or(-1, i64::from))
        .bind(per_group)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for (rows, is_treated) in [(treated, true), (control, false)] {
            // Each host's pivot: when it was moved (a treated host), or when the wave's first
            // host was.
            let hosts: Vec<(String, u64)> = rows
                .iter()
                .map(|r| {
                    let moved: Option<i64> = r.try_get("moved_ms")?;
                    let pivot = match (is_treated, moved) {
                        (true, Some(m)) => u64::try_from(m).unwrap_or(0),
                        _ => control_pivot,
                    };
                    Ok((r.try_get("host_id")?, pivot))
                })
                .collect::<Result<_, sqlx::Error>>()?;
            for chunk in hosts.chunks(INSERT_CHUNK) {
                let from = chunk
                    .iter()
                    .map(|(_, pivot)| pivot.saturating_sub(baseline_ms))
                    .min()
                    .unwrap_or(since_ms);
                let sql = format!(
                    "SELECT host_id, at_ms, patching, metrics FROM health WHERE at_ms >= $1 AND host_id IN ({}) ORDER BY host_id, at_ms",
                    placeholders(2, chunk.len())
                );
                let mut query = sqlx::query(&sql).bind(ms(from));
                for (id, _) in chunk {
                    query = query.bind(id.as_str());
                }
                let mut by_host: BTreeMap<&str, HostSamples> = chunk
                    .iter()
                    .map(|(id, _)| {
                        let host = HostSamples {
                            host: id.clone(),
                            treated: is_treated,
                            samples: Vec::new(),
                            baseline: Vec::new(),
                        };
                        (id.as_str(), host)
                    })
                    .collect();
                let pivots: BTreeMap<&str, u64> =
                    chunk.iter().map(|(id, p)| (id.as_str(), *p)).collect();
                for r in query.fetch_all(&self.pool).await? {
                    let host: String = r.try_get("host_id")?;
                    let at = u64::try_from(r.try_get::<i64, _>("at_ms")?).unwrap_or(0);
                    let patching = r.try_get::<i64, _>("patching")? != 0;
                    let metrics: BTreeMap<String, f64> = json_column(&r, "metrics")?;
                    let (Some(&pivot), Some(entry)) =
                        (pivots.get(host.as_str()), by_host.get_mut(host.as_str()))
                    else {
                        continue;
                    };
                    if at >= pivot.max(since_ms) {
                        entry.samples.push((patching, metrics));
                    } else if at < pivot && at >= pivot.saturating_sub(baseline_ms) && !patching {
                        entry.baseline.push((patching, metrics));
                    }
                }
                out.extend(by_host.into_values());
            }
        }
        Ok(out)
    }

    /// Stores one health sample of a host (a resent one is ignored), inside a report's
    /// transaction.
    pub(super) async fn insert_health(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        host_id: &str,
        h: &HealthSample,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO health (host_id, at_ms, interval_ms, level, patching, unclean_reboot, metrics) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(host_id)
        .bind(ms(h.at_ms))
        .bind(ms(h.interval_ms))
        .bind(h.level.map(i64::from))
        .bind(i64::from(h.patching))
        .bind(i64::from(h.unclean_reboot))
        .bind(to_json(&h.metrics))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Hosts per stream and reported level (`None`: no level), not revoked.
    pub async fn hosts_by_level(&self) -> Result<Vec<(String, Option<u32>, u64)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT stream, level, COUNT(*) AS n FROM hosts WHERE revoked_ms IS NULL \
             GROUP BY stream, level ORDER BY stream, level",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("stream")?, opt_int(r, "level")?, int(r, "n")?)))
            .collect()
    }

    /// The rollout's health samples, newest `limit` of them: when, whether the host ran the
    /// rollout's level (treatment) or not (control), in its patching window or not, and the
    /// metrics.
    pub async fn rollout_samples(
        &self,
        row: &RolloutRow,
        limit: i64,
    ) -> Result<Vec<(u64, bool, bool, BTreeMap<String, f64>)>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT s.at_ms, s.patching, s.metrics, \
             CASE WHEN rh.wave IS NOT NULL AND s.level = $2 THEN 1 ELSE 0 END AS treated \
             FROM health s JOIN rollout_hosts rh ON rh.host_id = s.host_id \
             WHERE rh.rollout_id = $1 AND s.at_ms >= $3 ORDER BY s.at_ms DESC LIMIT $4",
        )
        .bind(&row.id)
        .bind(i64::from(row.level))
        .bind(ms(row.created_ms))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    int(r, "at_ms")?,
                    r.try_get::<i64, _>("treated")? != 0,
                    r.try_get::<i64, _>("patching")? != 0,
                    json_column(r, "metrics")?,
                ))
            })
            .collect()
    }

    /// Forgets health samples older than `before_ms`.
    pub async fn prune_health(&self, before_ms: u64) -> Result<u64, sqlx::Error> {
        let _turn = self.write_turn().await;
        let done = sqlx::query("DELETE FROM health WHERE at_ms < $1")
            .bind(ms(before_ms))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// What a rollback sends back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RollBack<'a> {
    /// Only this wave's hosts (an automatic rollback of the halted wave); `None`: all moved.
    pub wave: Option<u32>,
    /// The previous level's metadata, signed again: (level, version, signed JSON).
    pub resigned: Option<(u32, u64, &'a str)>,
}

const ROLLOUT_COLUMNS: &str = "SELECT id, stream, level, from_level, selector, state, reason, \
     wave, waves, bake_ms, max_parallel, lost_after_ms, auto_rollback, hosts, decisions, \
     created_by, created_ms, updated_ms, revision, excused FROM rollouts";

fn rollout_row(r: &AnyRow) -> Result<RolloutRow, sqlx::Error> {
    let state: String = r.try_get("state")?;
    Ok(RolloutRow {
        id: r.try_get("id")?,
        stream: r.try_get("stream")?,
        level: int(r, "level")?,
        from_level: opt_int(r, "from_level")?,
        selector: r.try_get("selector")?,
        state: RolloutState::parse(&state)
            .ok_or_else(|| super::decode_error("state", format!("unknown state {state:?}")))?,
        reason: r.try_get("reason")?,
        wave: int(r, "wave")?,
        waves: json_column(r, "waves")?,
        bake_ms: int(r, "bake_ms")?,
        max_parallel: opt_int(r, "max_parallel")?,
        lost_after_ms: int(r, "lost_after_ms")?,
        auto_rollback: r.try_get::<i64, _>("auto_rollback")? != 0,
        hosts: int(r, "hosts")?,
        decisions: json_column(r, "decisions")?,
        created_by: r.try_get("created_by")?,
        created_ms: int(r, "created_ms")?,
        updated_ms: int(r, "updated_ms")?,
        revision: r.try_get("revision")?,
        excused: json_column(r, "excused")?,
    })
}

/// A rollout's (`$1`) moved hosts, counted in its index of moved rows.
const TREATED_SQL: &str =
    "SELECT COUNT(*) AS n FROM rollout_hosts WHERE rollout_id = $1 AND wave IS NOT NULL";

/// Hosts on the level (`$2`) with kernel errors logged since the apply.
const KERNEL_ERRORS: &str = "h.kernel_errors > 0 AND h.level = $2";

/// Hosts silent since `$2`.
const SILENT: &str = "h.last_seen_ms < $2";

/// `select` over the hosts matching `condition` that rollout `$1` moved. The host rows come
/// first, from the index `condition` names, and each is looked up in the rollout by key:
/// `CROSS JOIN` fixes that order on SQLite, whose planner has no statistics to know the
/// condition's hosts are few and the rollout's many (PostgreSQL plans it from its own).
fn moved_hosts_sql(select: &str, condition: &str) -> String {
    format!(
        "SELECT {select} FROM hosts h CROSS JOIN rollout_hosts rh WHERE {condition} \
         AND rh.rollout_id = $1 AND rh.host_id = h.id AND rh.wave IS NOT NULL"
    )
}

/// The hosts rollout `$1` moved that are not on their desired level yet: on their way to its
/// level (`$2`), or sent back and still on it. Counted in the partial index of unsettled hosts
/// by rollout alone (migration 0007), whose entries are these hosts: no row is read, however
/// many a large wave leaves unsettled.
const UNSETTLED_SQL: &str = "SELECT \
     COALESCE(SUM(CASE WHEN level IS NULL OR level <> $2 THEN 1 ELSE 0 END), 0) AS on_the_way, \
     COALESCE(SUM(CASE WHEN level = $2 THEN 1 ELSE 0 END), 0) AS still_on \
     FROM hosts WHERE rollout_id = $1 AND level IS DISTINCT FROM desired";

/// Of the hosts on their way to rollout `$1`'s level (`$2`), those held up: silent since `$3`,
/// or with a failed apply of the level since their move. The rest are in flight. Found from
/// the few silent hosts (by last check-in) and failed outcomes (a partial index), each host
/// then looked up by key; `CROSS JOIN` fixes that order on SQLite.
const HELD_UP_SQL: &str = "SELECT COUNT(*) AS n FROM \
     (SELECT id FROM hosts WHERE last_seen_ms < $3 \
      UNION SELECT o.host_id AS id FROM outcomes o CROSS JOIN rollout_hosts rh \
      WHERE o.level = $2 AND o.result NOT IN ('applied', 'forced') \
      AND rh.rollout_id = $1 AND rh.host_id = o.host_id AND o.at_ms >= rh.moved_ms) AS held \
     CROSS JOIN hosts h WHERE h.id = held.id AND h.rollout_id = $1 \
     AND h.level IS DISTINCT FROM h.desired AND (h.level IS NULL OR h.level <> $2)";

/// Moves the hosts `$4...` (`n` of them) to level `$1` for rollout `$3` if they are still on
/// stream `$2`, and stamps them (see [`STAMP`]). The stream is compared as an expression on
/// purpose: SQLite, without statistics, would rather read the stream's index (which every
/// host of the stream matches) than the primary key, and each chunk of a wave would scan the
/// whole stream; a million-host stream's 250,000-host wave took minutes, holding the write
/// lock.
fn move_hosts_sql(n: usize) -> String {
    format!(
        "UPDATE hosts SET desired = $1, rollout_id = $3, {STAMP} WHERE revoked_ms IS NULL \
         AND stream || '' = $2 AND id IN ({})",
        placeholders(4, n)
    )
}

/// Sends a rollout's (`$1`) moved hosts on stream `$2` back to their previous levels, those of
/// one wave with `wave_clause`; by primary key, as [`move_hosts_sql`] says why.
fn send_back_sql(wave_clause: &str) -> String {
    format!(
        "UPDATE hosts SET desired = (SELECT rh.previous FROM rollout_hosts rh \
         WHERE rh.rollout_id = $1 AND rh.host_id = hosts.id), {STAMP} \
         WHERE stream || '' = $2 AND id IN (SELECT host_id FROM rollout_hosts \
         WHERE rollout_id = $1{wave_clause})"
    )
}

/// The place of a host in a rollout's order.
fn order_key(rollout: &str, host: &str) -> String {
    let digest = Sha256::digest(format!("{rollout}\n{host}").as_bytes());
    hex::encode(&digest[..8])
}

/// `$first, $first+1, ...`: `n` placeholders.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` (its `detail` lines), on the real schema, binding `args` text
    /// values.
    fn sqlite_plan(sql: &str, args: usize) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let (rt, store) = crate::store::sqlite_for_test(&dir.path().join("plan.db"));
        rt.block_on(async {
            let explain = format!("EXPLAIN QUERY PLAN {sql}");
            let mut query = sqlx::query(&explain);
            for i in 0..args {
                query = query.bind(format!("v{i}"));
            }
            let rows = query.fetch_all(&store.pool).await.unwrap();
            store.close().await;
            rows.iter()
                .map(|r| r.try_get::<String, _>("detail").unwrap())
                .collect()
        })
    }

    #[test]
    fn a_wave_moves_its_hosts_by_primary_key_not_by_scanning_the_stream() {
        let searches = |plan: &[String]| {
            plan.iter()
                .filter(|d| d.contains(" hosts ") || d.ends_with(" hosts"))
                .cloned()
                .collect::<Vec<_>>()
        };
        let moved = sqlite_plan(&move_hosts_sql(500), 503);
        let sent_back = sqlite_plan(&send_back_sql(" AND wave = $3"), 3);
        for plan in [&moved, &sent_back] {
            let hosts = searches(plan);
            assert!(
                !hosts.is_empty() && hosts.iter().all(|d| d.contains("sqlite_autoindex_hosts_1")),
                "hosts not read by primary key: {plan:?}"
            );
        }
    }

    /// The bug: a million-host rollout's last wave left 670,000 hosts unsettled, and counting
    /// them looked each one's rollout row and outcomes up: 12 s a count, every driver tick and
    /// every status. The count now reads the partial index alone, and the hosts held up
    /// (silent, failed) are found from their own few.
    #[test]
    fn counting_a_waves_unsettled_hosts_reads_no_host_row() {
        let unsettled = sqlite_plan(UNSETTLED_SQL, 2);
        assert!(
            unsettled.len() == 1
                && unsettled[0].contains("COVERING INDEX hosts_unsettled_by_rollout"),
            "unsettled hosts not counted in their index alone: {unsettled:?}"
        );
        let held_up = sqlite_plan(HELD_UP_SQL, 3);
        for index in ["hosts_by_last_seen", "outcomes_failed"] {
            assert!(
                held_up.iter().any(|d| d.contains(index)),
                "held-up hosts not found from {index}: {held_up:?}"
            );
        }
        // The one scan is of the few held-up ids themselves.
        assert!(
            held_up
                .iter()
                .all(|d| !d.starts_with("SCAN") || d == "SCAN held"),
            "a table scanned: {held_up:?}"
        );
        assert!(
            held_up
                .iter()
                .any(|d| d.starts_with("SEARCH h USING INDEX sqlite_autoindex_hosts_1")),
            "held-up hosts not looked up by key: {held_up:?}"
        );
    }

    #[test]
    fn a_rollouts_counts_read_indexes_not_every_moved_host() {
        let counts = [
            (TREATED_SQL.to_string(), 1, "rollout_hosts_moved"),
            (UNSETTLED_SQL.to_string(), 2, "hosts_unsettled_by_rollout"),
            (
                moved_hosts_sql("COUNT(*) AS n", KERNEL_ERRORS),
                2,
                "hosts_with_kernel_errors",
            ),
            (
                moved_hosts_sql("COUNT(*) AS n", SILENT),
                2,
                "hosts_by_last_seen",
            ),
        ];
        for (sql, args, index) in counts {
            let plan = sqlite_plan(&sql, args);
            assert!(
                plan.first().is_some_and(|d| d.contains(index)),
                "not started from {index}: {plan:?}"
            );
            // A scan is only of the partial index itself, whose entries are the hosts counted.
            assert!(
                plan.iter()
                    .all(|d| !d.starts_with("SCAN") || d.ends_with(&format!("INDEX {index}"))),
                "a table scanned: {plan:?}"
            );
            if sql.contains("CROSS JOIN") {
                assert!(
                    plan.iter()
                        .any(|d| d.contains("rh USING") && d.contains("PRIMARY KEY")
                            || d.contains("sqlite_autoindex_rollout_hosts_1")),
                    "rollout rows not looked up by key: {plan:?}"
                );
            }
        }
    }

    #[test]
    fn excused_hosts_among_the_first_names_do_not_hide_the_hosts_after_them() {
        let hosts = |n: usize| (0..n).map(|i| format!("h{i:02}")).collect::<Vec<_>>();
        let mut facts = HardFacts {
            treated: 100,
            lost: hosts(25),
            failed: hosts(30),
            failed_count: 30,
            ..HardFacts::default()
        };
        let excused = hosts(20);
        facts.excuse(&excused);
        assert_eq!(facts.lost, ["h20", "h21", "h22", "h23", "h24"]);
        assert_eq!(facts.failed_count, 10);
        assert_eq!(facts.failed.len(), 10);
        let mut many = HardFacts {
            crashed: hosts(40),
            ..HardFacts::default()
        };
        many.excuse(&[]);
        assert_eq!(
            many.crashed.len(),
            NAMED_HOSTS as usize,
            "cut to the named hosts"
        );
    }

    #[test]
    fn the_previous_level_is_what_most_selected_hosts_are_assigned() {
        let p = Population {
            hosts: vec![
                ("a".into(), Some(1)),
                ("b".into(), Some(1)),
                ("c".into(), None),
            ],
        };
        assert_eq!(p.previous_level(), Some(1));
        let p = Population {
            hosts: vec![
                ("a".into(), None),
                ("b".into(), None),
                ("c".into(), Some(2)),
            ],
        };
        assert_eq!(p.previous_level(), None);
        assert_eq!(Population { hosts: vec![] }.previous_level(), None);
    }

    #[test]
    fn every_rollout_draws_its_own_order() {
        let hosts: Vec<String> = (0..50).map(|i| format!("h{i}")).collect();
        let order = |rollout: &str| {
            let mut v: Vec<(String, &String)> =
                hosts.iter().map(|h| (order_key(rollout, h), h)).collect();
            v.sort();
            v.into_iter().map(|(_, h)| h.clone()).collect::<Vec<_>>()
        };
        assert_eq!(order("r-1"), order("r-1"));
        assert_ne!(order("r-1")[..5], order("r-2")[..5]);
    }
}
