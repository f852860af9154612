//! Hosts' last check-in times, written in batches.
//!
//! Every host polls `/v1/host/desired`; writing a row per poll would make the cheapest, most
//! frequent request a database write (and a 304 must write nothing). So a poll only records
//! the time here, in memory, and a task flushes the batch every few seconds; the store writes
//! a host's time only once it moved on by more than the last-seen resolution (see
//! [`Store::with_seen_resolution`]). The map is a buffer, never an authority: a replica that
//! dies loses at most one interval of check-in times. `last_seen_ms` is therefore accurate to
//! the resolution and the flush interval (plus the clock difference between replicas).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::store::Store;

/// Check-in times not written yet, by host id.
#[derive(Debug, Default)]
pub(crate) struct LastSeen {
    pending: Mutex<HashMap<String, u64>>,
}

impl LastSeen {
    /// Notes a check-in.
    pub fn record(&self, host_id: &str, at_ms: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let at = pending.entry(host_id.to_string()).or_insert(at_ms);
        *at = (*at).max(at_ms);
    }

    /// Writes what is pending; on failure keeps it for the next flush.
    pub async fn flush(&self, store: &Store) -> Result<usize, sqlx::Error> {
        let batch: Vec<(String, u64)> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.drain().collect()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        match store.touch_hosts(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                for (id, at) in batch {
                    self.record(&id, at);
                }
                Err(e)
            }
        }
    }
}

/// How often the flush task also empties SQLite's write-ahead log (see [`Store::checkpoint`]).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// Flushes every `interval` until `stop` fires, then once more. Every [`CHECKPOINT_EVERY`] it
/// also checkpoints the database: this is the server's one periodic writer.
pub(crate) async fn flush_until(
    last_seen: std::sync::Arc<LastSeen>,
    store: Store,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checkpointed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = last_seen.flush(&store).await {
            tracing::warn!(error = %e, "writing hosts' last-seen times failed; retrying at the next flush");
        }
        if checkpointed.elapsed() >= CHECKPOINT_EVERY {
            checkpointed = tokio::time::Instant::now();
            if let Err(e) = store.checkpoint().await {
                tracing::warn!(error = %e, "checkpointing the database's write-ahead log failed");
            }
        }
    }
    if let Err(e) = last_seen.flush(&store).await {
        tracing::warn!(error = %e, "writing hosts' last-seen times at shutdown failed");
    }
}
