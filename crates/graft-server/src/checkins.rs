//! The check-in cache: what `GET /v1/host/desired` answers, kept in memory.
//!
//! Nearly every request a fleet makes is a check-in whose answer has not changed. Serving those
//! from memory makes them cost no database query at all. What keeps the cache true:
//!
//! - Every write that can change an answer bumps one counter in the database, the
//!   *generation*, in the same transaction. A write that changes some hosts' answers (a
//!   rollout's wave, its health sampling, a revocation, a host booting another kernel) stamps
//!   those hosts with the new generation; one that may change anyone's (a publish, an
//!   assignment) records it as a *flush*.
//! - A replica reads the generation at most every `max_age` (one tiny query for all
//!   check-ins). When it moved, the replica forgets the entries of the hosts stamped since the
//!   generation it knew (one indexed query), or all of them after a flush: another replica's
//!   write reaches its check-ins within `max_age`, and a wave of a million-host rollout costs
//!   the moved hosts' lookups, not the fleet's.
//! - A replica's own write makes its next check-in read the generation first: a replica reads
//!   its own writes.
//! - A host's entry holds only its id, its revocation and a shared answer; answers are shared
//!   by every host on the same stream and level, so a million hosts cost tens of megabytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::store::{Generation, Store};

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
    /// This replica wrote something: the next check-in reads the generation, waiting for it.
    stale: AtomicBool,
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
            stale: AtomicBool::new(false),
            refresh: tokio::sync::Mutex::new(()),
            max_age_ms: u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Makes sure the entries are no older than `max_age` against the database's generation.
    /// While one check-in reads it, the others go on with what the cache holds, unless this
    /// replica's own write is not read yet.
    pub async fn validate(&self, store: &Store) -> Result<(), sqlx::Error> {
        let now = crate::now_ms();
        let stale = self.stale.load(Ordering::Acquire);
        let checked = self.checked_ms.load(Ordering::Acquire);
        if !stale && self.max_age_ms > 0 && now.saturating_sub(checked) < self.max_age_ms {
            return Ok(());
        }
        let _reading = match self.refresh.try_lock() {
            Ok(guard) => guard,
            // Another check-in is reading it; with a zero max age, or a write of ours that it
            // may have missed, wait for it and read again.
            Err(_) if self.max_age_ms > 0 && !stale => return Ok(()),
            Err(_) => self.refresh.lock().await,
        };
        // Cleared before the read: a write committed after this point marks it again.
        self.stale.store(false, Ordering::Release);
        let now_gen = store.generation().await?;
        let known = self.read().generation;
        match known {
            Some(known) if known == now_gen.value => {}
            Some(known) if now_gen.flushed <= known => {
                let changed = store.changed_answers(known).await?;
                self.forget(&changed, now_gen);
            }
            _ => {
                let mut inner = self.write();
                empty(&mut inner);
                inner.generation = Some(now_gen.value);
            }
        }
        self.checked_ms.store(now, Ordering::Release);
        Ok(())
    }

    /// Forgets the entries of these credentials, which changed up to `now_gen`.
    fn forget(&self, changed: &[String], now_gen: Generation) {
        let mut inner = self.write();
        for credential in changed {
            inner.hosts.remove(credential);
        }
        // A lookup that read the database before the change must not put its answer back.
        inner.epoch += 1;
        inner.generation = Some(now_gen.value);
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

    /// This replica wrote something that may change answers: the next check-in reads the
    /// generation (and what changed) before answering.
    pub fn invalidate(&self) {
        self.stale.store(true, Ordering::Release);
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
    fn an_entry_read_before_its_host_changed_is_not_kept() {
        let cache = primed();
        let epoch = cache.epoch();
        let changed = Generation {
            value: 8,
            flushed: 0,
        };
        cache.forget(&["ca".to_string()], changed);
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
    fn a_change_to_some_hosts_forgets_only_them() {
        let cache = primed();
        let epoch = cache.epoch();
        cache.put("ca", epoch, "a".into(), false, answer("\"t\""));
        cache.put("cb", epoch, "b".into(), false, answer("\"t\""));
        let changed = Generation {
            value: 8,
            flushed: 0,
        };
        cache.forget(&["cb".to_string()], changed);
        assert!(cache.get("cb").is_none());
        assert_eq!(cache.get("ca").map(|e| e.host_id), Some("a".to_string()));
        assert_eq!(cache.read().generation, Some(8));
    }

    #[test]
    fn nothing_is_kept_before_the_generation_is_known() {
        let cache = CheckinCache::new(Duration::from_secs(1));
        let epoch = cache.epoch();
        cache.put("ca", epoch, "a".into(), false, answer("\"t\""));
        assert!(cache.get("ca").is_none());
    }
}
