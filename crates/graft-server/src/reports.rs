//! Hosts' reports, written in group commits.
//!
//! A rollout's wave moves thousands of hosts at once, and each applies the level and reports
//! within the same minute. One transaction per report makes the database's one writer (SQLite's
//! lock, or a commit per request on PostgreSQL) the bottleneck of the whole server. So each
//! report handler hands its report to one writer task and waits: the writer takes every report
//! queued while the last transaction ran (up to [`MAX_BATCH`]) and stores them in one. A report
//! is acknowledged only once its transaction committed, and a batch that fails is written again
//! one report at a time, so that one bad report fails only its own request.

use graft_protocol::api::Report;
use tokio::sync::{mpsc, oneshot};

use crate::store::{HostRow, Store};

/// Reports stored in one transaction at most.
const MAX_BATCH: usize = 512;

/// Reports waiting for the writer at most; a handler waits for room beyond that.
const QUEUE: usize = 8192;

struct Job {
    host: HostRow,
    report: Report,
    now_ms: u64,
    done: oneshot::Sender<Result<(), sqlx::Error>>,
}

/// The handlers' end of the writer (see the module's documentation).
#[derive(Debug, Clone)]
pub(crate) struct Reports {
    queue: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("host", &self.host.id).finish()
    }
}

impl Reports {
    /// Starts the writer on `store`; it ends when every handle is dropped.
    pub fn start(store: Store) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write_until_closed(store, jobs));
        Self { queue }
    }

    /// Stores a report, returning once it is committed.
    pub async fn store(
        &self,
        host: HostRow,
        report: Report,
        now_ms: u64,
    ) -> Result<(), sqlx::Error> {
        let (done, committed) = oneshot::channel();
        let job = Job {
            host,
            report,
            now_ms,
            done,
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        committed.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn write_until_closed(store: Store, mut jobs: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Host rows are locked in one order (a host's own reports keep theirs), so that two
        // replicas' batches on PostgreSQL do not deadlock on each other.
        batch.sort_by(|a, b| a.host.id.cmp(&b.host.id));
        write(&store, std::mem::take(&mut batch)).await;
    }
}

/// One transaction for the batch; if it fails, one per report.
async fn write(store: &Store, batch: Vec<Job>) {
    let reports: Vec<(&HostRow, &Report, u64)> = batch
        .iter()
        .map(|j| (&j.host, &j.report, j.now_ms))
        .collect();
    match store.reports(&reports).await {
        Ok(()) => {
            for job in batch {
                // The handler may have gone (its client hung up): nothing to tell.
                let _ = job.done.send(Ok(()));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(job) = batch.into_iter().next() {
                let _ = job.done.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(reports = batch.len(), error = %e, "a batch of reports failed; writing them one by one");
            for job in batch {
                let result = store.reports(&[(&job.host, &job.report, job.now_ms)]).await;
                let _ = job.done.send(result);
            }
        }
    }
}
