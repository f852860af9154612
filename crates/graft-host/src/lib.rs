//! graft on a host: applying, reverting and watching livepatches on the running kernel.
//!
//! - [`sys`]: the kernel's interfaces: `/sys/kernel/livepatch`, the running build-id, module
//!   loading and unloading, `/proc/modules`.
//! - [`tasks`]: which tasks a transition still waits for, and what holds them (stacks).
//! - [`kmsg`]: the kernel log and taint, for health since the last apply.
//! - [`state`]: the state directory: a journal of every action (atomic writes), the manifests
//!   of applied patches, installed patches for `graft boot`.
//! - [`ops`]: apply, revert, reconcile an interrupted action, install, boot.
//! - [`recorded`]: recordings of what the kernel shows, for tests and bug reports.
//! - [`status`]: every loaded livepatch, graft's or not, with the live version of each function.
//!
//! Everything here acts on the real kernel; the lab tests run it in a VM of the target.

pub mod error;
pub mod kmsg;
pub mod ops;
pub mod recorded;
pub mod state;
pub mod status;
pub mod sys;
pub mod tasks;

pub use error::HostError;
pub use ops::{ApplyOptions, ApplyOutcome, ApplyReport, Observer, RevertReport, TransitionLimits};
pub use state::StateDir;
pub use status::Status;
