//! Watching a transition to its end, naming what blocks it, and unloading a retired module.

use std::time::{Duration, Instant};

use super::{Observer, TransitionLimits};
use crate::sys::{self};
use crate::tasks::{self, StallReport};
use crate::HostError;

/// Watches a transition until it ends or times out. Returns the diagnosis on timeout.
pub(crate) fn wait_transition(
    name: &str,
    limits: TransitionLimits,
    started: Instant,
    observer: &mut dyn Observer,
) -> Result<Option<StallReport>, HostError> {
    let transition = sys::livepatch_dir()?.join(name).join("transition");
    let mut last_count = started;
    let mut counted_once = false;
    let mut reported = false;
    loop {
        let elapsed = started.elapsed();
        match std::fs::read(&transition) {
            Ok(v) if v.first() == Some(&b'1') => {}
            Ok(_) => return Ok(None),
            // A patch whose unpatching finished is freed: its directory goes away (and a read
            // racing with the removal answers ENODEV).
            Err(e) if sys::is_gone(&e) => return Ok(None),
            Err(e) => return Err(HostError::io("reading", &transition, e)),
        }
        if elapsed >= Duration::from_millis(100)
            && (!counted_once || last_count.elapsed() >= Duration::from_millis(500))
        {
            if let Some(patch) = sys::patch(name)? {
                let target = i32::from(patch.enabled);
                let pending = tasks::pending(target).len();
                observer.progress(name, patch.enabled, Some(pending), elapsed);
                if !reported && elapsed >= limits.grace {
                    observer.stalled(&tasks::diagnose(&patch, elapsed.as_secs_f64()));
                    reported = true;
                }
                if elapsed >= limits.timeout {
                    return Ok(Some(tasks::diagnose(&patch, elapsed.as_secs_f64())));
                }
            }
            last_count = Instant::now();
            counted_once = true;
        }
        // Most transitions end inside the load itself or at the kernel's next retry (each
        // second): poll finely at first, then gently.
        let nap = if elapsed < Duration::from_millis(300) {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(20)
        };
        std::thread::sleep(nap);
    }
}

/// Waits until a disabled patch is freed, then unloads its module.
pub(crate) fn unload_patch_module(name: &str) -> Result<(), HostError> {
    let dir = sys::livepatch_dir()?.join(name);
    let started = Instant::now();
    while dir.exists() && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    sys::unload_module(name, Duration::from_secs(10))
}
