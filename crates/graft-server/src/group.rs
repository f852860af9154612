//! Group commits: hosts' reports and enrollments, many to a transaction.
//!
//! A rollout's wave moves thousands of hosts at once, and each applies the level and reports
//! within the same minute; a fleet that joins enrolls its hosts by the thousand. One
//! transaction per request makes the database's one writer (SQLite's lock, or a commit per
//! request on PostgreSQL) the bottleneck of the whole server. So each handler hands its write
//! to one writer task per kind and waits: the writer takes every write queued while its last
//! transaction ran (up to [`MAX_BATCH`]) and stores them in one. A write is acknowledged only
//! once its transaction committed, and a batch that fails is written again one at a time, so
//! that one bad write fails only its own request.

use std::future::Future;

use graft_protocol::api::Report;
use tokio::sync::{mpsc, oneshot};

use crate::store::{HostRow, NewHost, Store};

/// Writes stored in one transaction at most.
const MAX_BATCH: usize = 512;

/// Writes waiting for the writer at most; a handler waits for room beyond that.
const QUEUE: usize = 8192;

/// A kind of write that can share a transaction with others of its kind.
pub(crate) trait Batched: Send + Sync + Sized + 'static {
    /// What the handler learns once it is committed.
    type Done: Send + 'static;

    /// Stores `batch` in one transaction: one result per write, in order.
    fn store(
        store: &Store,
        batch: &[Self],
    ) -> impl Future<Output = Result<Vec<Self::Done>, sqlx::Error>> + Send;

    /// The order writes are stored in. Rows are locked in one order, so that two replicas'
    /// batches on PostgreSQL do not deadlock on each other.
    fn order(&self) -> String;
}

/// A host's report, as its handler checked it.
#[derive(Debug)]
pub(crate) struct ReportWrite {
    pub host: HostRow,
    pub report: Report,
    pub now_ms: u64,
}

impl Batched for ReportWrite {
    type Done = ();

    async fn store(store: &Store, batch: &[Self]) -> Result<Vec<()>, sqlx::Error> {
        store.reports(batch).await.map(|()| vec![(); batch.len()])
    }

    fn order(&self) -> String {
        // A host's own reports keep their order (the sort is stable).
        self.host.id.clone()
    }
}

impl Batched for NewHost {
    /// The host's desired level.
    type Done = Option<u32>;

    async fn store(store: &Store, batch: &[Self]) -> Result<Vec<Option<u32>>, sqlx::Error> {
        store.enroll(batch).await
    }

    fn order(&self) -> String {
        // By stream (its row is created on demand), then host.
        format!("{}\n{}", self.kernel.stream(), self.id)
    }
}

struct Job<W: Batched> {
    write: W,
    done: oneshot::Sender<Result<W::Done, sqlx::Error>>,
}

/// The handlers' end of one kind's writer (see the module's documentation).
pub(crate) struct GroupCommit<W: Batched> {
    queue: mpsc::Sender<Job<W>>,
}

impl<W: Batched> std::fmt::Debug for GroupCommit<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("kind", &std::any::type_name::<W>())
            .finish()
    }
}

impl<W: Batched> GroupCommit<W> {
    /// Starts the writer on `store`; it ends when the handle is dropped.
    pub fn start(store: Store) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(write_until_closed(store, jobs));
        Self { queue }
    }

    /// Stores a write, returning once it is committed.
    pub async fn submit(&self, write: W) -> Result<W::Done, sqlx::Error> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send(Job { write, done })
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        committed.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn write_until_closed<W: Batched>(store: Store, mut jobs: mpsc::Receiver<Job<W>>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while jobs.recv_many(&mut batch, MAX_BATCH).await > 0 {
        batch.sort_by_cached_key(|j: &Job<W>| j.write.order());
        write(&store, std::mem::take(&mut batch)).await;
    }
}

/// One transaction for the batch; if it fails, one per write.
async fn write<W: Batched>(store: &Store, batch: Vec<Job<W>>) {
    let (writes, dones): (Vec<W>, Vec<_>) = batch.into_iter().map(|j| (j.write, j.done)).unzip();
    match W::store(store, &writes).await {
        Ok(results) => {
            for (done, result) in dones.into_iter().zip(results) {
                // The handler may have gone (its client hung up): nothing to tell.
                let _ = done.send(Ok(result));
            }
        }
        Err(e) if writes.len() == 1 => {
            if let Some(done) = dones.into_iter().next() {
                let _ = done.send(Err(e));
            }
        }
        Err(e) => {
            tracing::debug!(writes = writes.len(), kind = std::any::type_name::<W>(), error = %e, "a batch failed; writing it one by one");
            for (write, done) in writes.into_iter().zip(dones) {
                let result = W::store(store, std::slice::from_ref(&write))
                    .await
                    .and_then(|mut r| r.pop().ok_or(sqlx::Error::RowNotFound));
                let _ = done.send(result);
            }
        }
    }
}
