//! The lab: boot the exact target kernel under QEMU and run a script in it.
//!
//! Everything graft claims about the kernel ABI is proven here, on the real kernel, not on a
//! model of it. A run builds an initramfs (static busybox from Debian's package, optionally the
//! running `graft` binary, the caller's files and kernel modules), boots it with
//! `qemu-system-x86_64 -accel tcg`, and talks to the guest over two serial ports:
//!
//! - `ttyS0` is the kernel console, written to a log file on the host (the kernel log of the run);
//! - `ttyS1` carries the script's output, streamed to the caller, and the guest init's markers:
//!   one when the script starts (the guest booted) and one with the script's exit status;
//! - `ttyS2` and `ttyS3`, when asked for, are bridged to sockets on the host's `127.0.0.1`
//!   ([`bridge`]): the guest reaches host servers through them, and has no network device.
//!
//! Markers carry a per-run nonce so no script output can forge them. The outcome is thereby one
//! of: the script's exit status; a kernel panic (QEMU exits through `panic=-1` + `-no-reboot`);
//! the script running past its timeout; the guest never reaching the script; or the guest
//! stopping on its own. QEMU never outlives the run: it is killed on every exit path, and the
//! kernel kills it if graft itself dies (`PR_SET_PDEATHSIG`).

pub mod bridge;
mod busybox;
mod initramfs;
mod run;

pub use bridge::HostBridge;
pub use initramfs::Initramfs;
pub use run::{kill_with_parent, GuestFile, GuestModule, Lab, LabKernel, Outcome, RunSpec};

use std::path::PathBuf;
use std::time::Duration;

/// Errors of a lab run. Each says what happened and where the kernel log is.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// QEMU is not installed.
    #[error("`{program}` was not found: install QEMU (Debian: `apt-get install qemu-system-x86`) or set GRAFT_QEMU")]
    QemuMissing {
        /// The program looked for.
        program: String,
    },
    /// A file to put into the guest cannot be read.
    #[error("cannot read {path} for the guest: {cause}")]
    GuestFile {
        /// The host path.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The guest file layout is invalid (duplicate or malformed destination).
    #[error("bad guest file layout: {0}")]
    Layout(String),
    /// Busybox could not be provided.
    #[error("cannot provide busybox for the guest: {0}")]
    Busybox(String),
    /// The kernel panicked.
    #[error("the guest kernel panicked: {panic_line}\n  kernel log: {}", log.display())]
    KernelPanic {
        /// The `Kernel panic - not syncing` line.
        panic_line: String,
        /// The saved kernel log.
        log: PathBuf,
    },
    /// The script ran past its timeout; QEMU was killed.
    #[error("timeout: the script did not finish within {} s; the VM was stopped\n  kernel log: {}", timeout.as_secs_f32(), log.display())]
    ScriptTimeout {
        /// The timeout.
        timeout: Duration,
        /// The saved kernel log.
        log: PathBuf,
    },
    /// The guest did not reach the script in time.
    #[error("the guest did not reach the script within {} s of boot{}; the VM was stopped\n  kernel log: {}",
        timeout.as_secs_f32(), last_line.as_deref().map(|l| format!(" (last kernel line: {l})")).unwrap_or_default(), log.display())]
    NeverReachedScript {
        /// The boot timeout.
        timeout: Duration,
        /// The last line the kernel printed, if any.
        last_line: Option<String>,
        /// The saved kernel log.
        log: PathBuf,
    },
    /// QEMU exited before the script reported its status, without a panic.
    #[error("the guest stopped before the script finished ({status}){}\n  kernel log: {}",
        last_line.as_deref().map(|l| format!("; last kernel line: {l}")).unwrap_or_default(), log.display())]
    GuestStopped {
        /// QEMU's exit status.
        status: String,
        /// The last kernel line.
        last_line: Option<String>,
        /// The saved kernel log.
        log: PathBuf,
    },
    /// QEMU refused to start the VM.
    #[error("QEMU failed to start the VM: {0}")]
    QemuFailed(String),
    /// A filesystem or process operation failed.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
}

impl LabError {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        LabError::Io {
            action,
            path: path.to_path_buf(),
            cause: source,
        }
    }

    /// The saved kernel log, for errors that have one.
    pub fn kernel_log(&self) -> Option<&std::path::Path> {
        match self {
            LabError::KernelPanic { log, .. }
            | LabError::ScriptTimeout { log, .. }
            | LabError::NeverReachedScript { log, .. }
            | LabError::GuestStopped { log, .. } => Some(log),
            _ => None,
        }
    }
}
