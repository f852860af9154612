//! Progress reporting for long work (downloads, unpacking, kernel preparation).
//!
//! Libraries describe *what* is happening through [`Progress`]; the binary decides *how* it
//! is shown (bars on a terminal, log lines in CI, nothing under `--json`). Keeping the trait
//! here, with no rendering dependency, lets every library report progress without pulling a
//! terminal library into code that also runs inside the lab guest.

use std::sync::Arc;

/// Starts progress tasks. Implementations must be cheap to call from any thread.
pub trait Progress: Send + Sync {
    /// Begins a task. `total` is in `unit`s when known (bytes, files, steps).
    fn start(&self, label: &str, total: Option<u64>, unit: Unit) -> Box<dyn Task>;
}

/// What a task's counter counts, so renderers can format it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Byte counts, shown as KiB/MiB.
    Bytes,
    /// Plain counts (files, symbols, steps).
    Items,
}

/// One running task. Dropping it without [`Task::finish`] marks it abandoned.
pub trait Task: Send {
    /// Sets the absolute position.
    fn set(&mut self, position: u64);
    /// Replaces the total once it becomes known.
    fn set_total(&mut self, total: u64);
    /// Updates the one-line detail shown next to the task.
    fn message(&mut self, message: &str);
    /// Marks the task done with a closing summary.
    fn finish(self: Box<Self>, summary: &str);
}

/// Reports nothing; for tests and machine-readable output.
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

struct SilentTask;

impl Task for SilentTask {
    fn set(&mut self, _: u64) {}
    fn set_total(&mut self, _: u64) {}
    fn message(&mut self, _: &str) {}
    fn finish(self: Box<Self>, _: &str) {}
}

impl Progress for Silent {
    fn start(&self, _: &str, _: Option<u64>, _: Unit) -> Box<dyn Task> {
        Box::new(SilentTask)
    }
}

/// A shared handle, as libraries store it.
pub type SharedProgress = Arc<dyn Progress>;

/// A shared [`Silent`] handle.
pub fn silent() -> SharedProgress {
    Arc::new(Silent)
}
