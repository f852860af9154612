//! The check-in cache: what `GET /v1/host/desired` answers, kept in memory.
//!
//! Nearly every request a fleet makes is a check-in whose answer has not changed. Serving those
//! from memory makes them cost no database query at all. What keeps the cache true:
//!
//! - Every write that can change an answer (an assignment, a publish, a revocation, a host
//!   moving to another kernel) bumps one counter in the database, the *generation*, in the
//!   same transaction, and empties this replica's cache at once: a replica reads its own writes.
//! - A replica reads the generation at most every `max_age` (one tiny query for all check-ins),
//!   and empties its cache when the generation moved: another replica's write reaches its
//!   check-ins within `max_age`.
//! - A host's entry holds only its id, its revocation and a shared answer; answers are shared
//!   by every host on the same stream and level, so a million hosts cost tens of megabytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::store::Store;

/// Above this many hosts the cache starts again empty rather than grow.
const MAX_ENTRIES: usize = 4_000_000;

/// One answer, shared by every host that gets it.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The strong ETag, quoted.
    pub tag: String,
    /// The JSON body.
    pub body: axum::body::Bytes,
}

/// What the cache knows of one host.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub host_id: String,
    pub revoked: bool,
    pub answer: Arc<Answer>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The database generation the entries are valid for (`None`: not read yet).
    generation: Option<i64>,
    /// Bumped at every emptying, so an entry read before one is not put back after it.
    epoch: u64,
    hosts: HashMap<String, Entry>,
    answers: HashMap<String, Arc<Answer>>,
}

/// See the module's documentation.
#[derive(Debug)]
pub(crate) struct CheckinCache {
    inner: RwLock<Inner>,
    /// When the generation was last read, milliseconds since the epoch.
    checked_ms: AtomicU64,
    /// One generation read at a time.
    refresh: tokio::sync::Mutex<()>,
    max_age_ms: u64,
}

impl CheckinCache {
    /// A cache whose entries see other replicas' writes within `max_age` (zero: the generation
    /// is read at every check-in).
    pub fn new(max_age: Duration) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            checked_ms: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(()),
            max_age_ms: u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Makes sure the entries are no older than `max_age` against the database's generation.
    /// While one check-in reads it, the others go on with what the cache holds.
    pub async fn validate(&self, store: &Store) -> Result<(), sqlx::Error> {
        let now = crate::now_ms();
        let checked = self.checked_ms.load(Ordering::Acquire);
        if self.max_age_ms > 0 && now.saturating_sub(checked) < self.max_age_ms {
            return Ok(());
        }
        let _reading = match self.refresh.try_lock() {
            Ok(guard) => guard,
            // Another check-in is reading it; with a zero max age, wait for its answer.
            Err(_) if self.max_age_ms > 0 => return Ok(()),
            Err(_) => self.refresh.lock().await,
        };
        let generation = store.generation().await?;
        let mut inner = self.write();
        if inner.generation != Some(generation) {
            empty(&mut inner);
            inner.generation = Some(generation);
        }
        self.checked_ms.store(now, Ordering::Release);
        Ok(())
    }

    /// The host holding this credential (hashed), if the cache has it.
    pub fn get(&self, credential_hash: &str) -> Option<Entry> {
        self.read().hosts.get(credential_hash).cloned()
    }

    /// The epoch to pass to [`Self::put`]: read it before reading the database.
    pub fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// Keeps what was read from the database at `epoch`, unless the cache was emptied since.
    /// Returns the entry with its answer shared with other hosts'.
    pub fn put(
        &self,
        credential_hash: &str,
        epoch: u64,
        host_id: String,
        revoked: bool,
        answer: Answer,
    ) -> Entry {
        let mut inner = self.write();
        let answer = match inner.answers.get(&answer.tag) {
            Some(shared) => Arc::clone(shared),
            None => Arc::new(answer),
        };
        let entry = Entry {
            host_id,
            revoked,
            answer: Arc::clone(&answer),
        };
        if inner.epoch == epoch && inner.generation.is_some() {
            if inner.hosts.len() >= MAX_ENTRIES {
                empty(&mut inner);
                inner.generation = None;
            } else {
                inner.answers.insert(answer.tag.clone(), answer);
                inner
                    .hosts
                    .insert(credential_hash.to_string(), entry.clone());
            }
        }
        entry
    }

    /// This replica wrote something that may change answers: forget them all now.
    pub fn invalidate(&self) {
        let mut inner = self.write();
        empty(&mut inner);
        inner.generation = None;
        self.checked_ms.store(0, Ordering::Release);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }
}

fn empty(inner: &mut Inner) {
    inner.hosts.clear();
    inner.answers.clear();
    inner.epoch += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(tag: &str) -> Answer {
        Answer {
            tag: tag.into(),
            body: axum::body::Bytes::from_static(b"{}"),
        }
    }

    fn primed() -> CheckinCache {
        let cache = CheckinCache::new(Duration::from_secs(1));
        cache.write().generation = Some(7);
        cache
    }

    #[test]
    fn hosts_on_one_level_share_one_answer() {
        let cache = primed();
        let epoch = cache.epoch();
        let a = cache.put("ca", epoch, "a".into(), false, answer("\"t\""));
        let b = cache.put("cb", epoch, "b".into(), false, answer("\"t\""));
        assert!(Arc::ptr_eq(&a.answer, &b.answer));
        assert_eq!(cache.get("cb").map(|e| e.host_id), Some("b".to_string()));
        assert_eq!(cache.read().answers.len(), 1);
    }

    #[test]
    fn an_entry_read_before_an_invalidation_is_not_kept() {
        let cache = primed();
        let epoch = cache.epoch();
        cache.invalidate();
        cache.write().generation = Some(8);
        cache.put("ca", epoch, "a".into(), false, answer("\"t\""));
        assert!(cache.get("ca").is_none(), "a stale read was cached");
        let epoch = cache.epoch();
        cache.put("ca", epoch, "a".into(), false, answer("\"u\""));
        assert_eq!(
            cache.get("ca").map(|e| e.answer.tag.clone()),
            Some("\"u\"".into())
        );
    }

    #[test]
    fn nothing_is_kept_before_the_generation_is_known() {
        let cache = CheckinCache::new(Duration::from_secs(1));
        let epoch = cache.epoch();
        cache.put("ca", epoch, "a".into(), false, answer("\"t\""));
        assert!(cache.get("ca").is_none());
    }
}
