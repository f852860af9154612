//! One lab run: initramfs assembly, QEMU supervision and the guest protocol.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use graft_cache::Cache;
use graft_progress::SharedProgress;

use crate::{busybox, Initramfs, LabError};

/// The kernel a run boots.
#[derive(Clone, Debug)]
pub struct LabKernel {
    /// `uname -r` of the kernel.
    pub release: String,
    /// The bootable image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` of the unpacked image package, for modules.
    pub modules_dir: PathBuf,
}

/// A host file copied into the guest.
#[derive(Clone, Debug)]
pub struct GuestFile {
    /// The host path.
    pub source: PathBuf,
    /// The absolute path in the guest.
    pub dest: String,
}

/// A module of the target put into the guest's `/lib/modules`, so the script can `modprobe` it.
#[derive(Clone, Debug)]
pub struct GuestModule {
    /// Path below `lib/modules/<release>`, e.g. `kernel/fs/isofs/isofs.ko`.
    pub path: String,
    /// Paths of the modules it depends on, directly or not, in `modules.dep` order.
    pub depends: Vec<String>,
}

/// What to run, and how.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The kernel to boot.
    pub kernel: LabKernel,
    /// Shell script run as root by busybox `sh` in `/root`.
    pub script: String,
    /// Files to add.
    pub files: Vec<GuestFile>,
    /// Modules to add (with their dependencies listed).
    pub modules: Vec<GuestModule>,
    /// A `graft` binary to install as `/usr/bin/graft` with its shared libraries.
    pub graft_binary: Option<PathBuf>,
    /// Extra kernel command line.
    pub cmdline: String,
    /// How long the script may run once started.
    pub timeout: Duration,
    /// How long the guest may take to reach the script.
    pub boot_timeout: Duration,
    /// Guest memory.
    pub memory_mib: u32,
    /// Raw disk images attached as virtio disks (`/dev/vda`, `/dev/vdb`, ... once the
    /// `virtio_pci` and `virtio_blk` modules are loaded). They outlive the run, so two runs
    /// sharing one are a reboot of the same machine.
    pub disks: Vec<PathBuf>,
    /// Host ports on `127.0.0.1` (each a [`crate::HostBridge`] or any listener) that the
    /// guest's serial ports `/dev/ttyS2`, `/dev/ttyS3` connect to, in order: the guest's only
    /// way to the host. At most two.
    pub serial_bridges: Vec<u16>,
}

impl RunSpec {
    /// A run of `script` on `kernel` with defaults: 1 GiB, 120 s to boot, 600 s to run.
    pub fn new(kernel: LabKernel, script: impl Into<String>) -> Self {
        Self {
            kernel,
            script: script.into(),
            files: Vec::new(),
            modules: Vec::new(),
            graft_binary: None,
            cmdline: String::new(),
            timeout: Duration::from_secs(600),
            boot_timeout: Duration::from_secs(120),
            memory_mib: 1024,
            disks: Vec::new(),
            serial_bridges: Vec::new(),
        }
    }
}

/// How a run ended when the script ran to completion.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The script's exit status.
    pub exit_code: i32,
    /// The saved kernel log.
    pub log: PathBuf,
    /// QEMU start to script start.
    pub boot_time: Duration,
    /// QEMU start to QEMU exit.
    pub total_time: Duration,
}

impl Outcome {
    /// The kernel log of the run.
    pub fn kernel_log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Runs scripts in VMs of a target kernel.
#[derive(Clone)]
pub struct Lab {
    cache: Cache,
    progress: SharedProgress,
    qemu: PathBuf,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("qemu", &self.qemu)
            .finish_non_exhaustive()
    }
}

const QEMU: &str = "qemu-system-x86_64";
/// How long held-back output may wait for the rest of a possible marker.
const IDLE_FLUSH: Duration = Duration::from_millis(30);
/// Serial ports left for bridges after the console and the protocol port (ISA has four).
const MAX_BRIDGES: usize = 2;
/// Kept logs of earlier runs; older ones are deleted.
const KEPT_LOGS: usize = 50;

impl Lab {
    /// A lab using `cache` for busybox and logs. Fails when QEMU is not installed.
    pub fn new(cache: Cache, progress: SharedProgress) -> Result<Self, LabError> {
        let qemu = match std::env::var_os("GRAFT_QEMU").filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => find_in_path(QEMU).ok_or_else(|| LabError::QemuMissing {
                program: QEMU.to_string(),
            })?,
        };
        if !qemu.is_file() {
            return Err(LabError::QemuMissing {
                program: qemu.display().to_string(),
            });
        }
        Ok(Self {
            cache,
            progress,
            qemu,
        })
    }

    /// Boots `spec.kernel`, runs the script, streams its output into `output` and returns how
    /// it ended. Failures of the guest (panic, timeouts) are errors naming the saved kernel log.
    pub fn run(&self, spec: &RunSpec, output: &mut dyn FnMut(&[u8])) -> Result<Outcome, LabError> {
        let busybox = busybox::ensure(&self.cache, self.progress.as_ref())?;
        let tmp_root = self.cache.root().join("lab").join("tmp");
        fs::create_dir_all(&tmp_root).map_err(|e| LabError::io("creating", &tmp_root, e))?;
        let scratch = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&tmp_root)
            .map_err(|e| LabError::io("creating a directory in", &tmp_root, e))?;
        let nonce = nonce();
        let initrd = scratch.path().join("initramfs.cpio");
        let started = Instant::now();
        build_initramfs(spec, &busybox, &nonce, &initrd)?;
        tracing::debug!(elapsed = ?started.elapsed(), "initramfs ready");
        let log = self.new_log_path()?;

        let mut cmdline = format!("console=ttyS0 panic=-1 rdinit=/init {}", spec.cmdline);
        cmdline = cmdline.trim().to_string();
        let mut command = Command::new(&self.qemu);
        command
            .args([
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args(["-m", &spec.memory_mib.to_string()])
            .arg("-chardev")
            .arg(format!("file,id=console,path={}", qemu_escape(&log)))
            .args(["-serial", "chardev:console", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&spec.kernel.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &cmdline]);
        for disk in &spec.disks {
            if !disk.is_file() {
                return Err(LabError::io(
                    "attaching",
                    disk,
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                ));
            }
            command.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,cache=writeback",
                qemu_escape(disk)
            ));
        }
        if spec.serial_bridges.len() > MAX_BRIDGES {
            return Err(LabError::Layout(format!(
                "{} serial bridges asked for; a guest has {MAX_BRIDGES} serial ports to spare",
                spec.serial_bridges.len()
            )));
        }
        for (n, port) in spec.serial_bridges.iter().enumerate() {
            command
                .arg("-chardev")
                .arg(format!("socket,id=bridge{n},host=127.0.0.1,port={port}"))
                .args(["-serial", &format!("chardev:bridge{n}")]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        kill_with_parent(&mut command);
        tracing::debug!(?command, "starting QEMU");
        let child = command
            .spawn()
            .map_err(|e| LabError::io("starting", &self.qemu, e))?;
        let mut qemu = Guard(Some(child));
        let events = spawn_reader(&mut qemu)?;

        let mut scanner = Scanner::new(&nonce);
        let boot_deadline = started + spec.boot_timeout;
        let mut ready_at: Option<Instant> = None;
        let mut exit_code: Option<i32> = None;
        loop {
            let deadline = match ready_at {
                None => boot_deadline,
                Some(at) => at + spec.timeout,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = if scanner.pending.is_empty() {
                left
            } else {
                left.min(IDLE_FLUSH)
            };
            match events.recv_timeout(wait) {
                Ok(Some(chunk)) => {
                    for event in scanner.feed(&chunk) {
                        match event {
                            Event::Output(bytes) => output(&bytes),
                            Event::Ready => ready_at = Some(Instant::now()),
                            Event::Exit(code) => exit_code = Some(code),
                        }
                    }
                    if exit_code.is_some() {
                        break;
                    }
                }
                Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    output(&scanner.flush());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    qemu.kill();
                    output(&scanner.flush());
                    return Err(match ready_at {
                        None => LabError::NeverReachedScript {
                            timeout: spec.boot_timeout,
                            last_line: last_line(&log),
                            log,
                        },
                        Some(_) => LabError::ScriptTimeout {
                            timeout: spec.timeout,
                            log,
                        },
                    });
                }
            }
        }
        output(&scanner.flush());
        // The guest powers off right after reporting; give it a moment, then make sure.
        let status = qemu.wait_for(Duration::from_secs(10));
        let total_time = started.elapsed();
        let boot_time = ready_at.map(|at| at - started).unwrap_or_default();
        if let Some(code) = exit_code {
            return Ok(Outcome {
                exit_code: code,
                log,
                boot_time,
                total_time,
            });
        }
        let text = fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .find(|l| l.contains("Kernel panic - not syncing"))
        {
            return Err(LabError::KernelPanic {
                panic_line: strip_timestamp(line).to_string(),
                log,
            });
        }
        let stderr = qemu.stderr();
        if ready_at.is_none() && !stderr.trim().is_empty() && text.trim().is_empty() {
            return Err(LabError::QemuFailed(stderr.trim().to_string()));
        }
        Err(LabError::GuestStopped {
            status: status.unwrap_or_else(|| "killed".into()),
            last_line: last_line(&log),
            log,
        })
    }

    fn new_log_path(&self) -> Result<PathBuf, LabError> {
        let dir = self.cache.root().join("lab").join("logs");
        fs::create_dir_all(&dir).map_err(|e| LabError::io("creating", &dir, e))?;
        prune_logs(&dir);
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        Ok(dir.join(format!("{stamp}-{}-{}.log", std::process::id(), nonce())))
    }
}

fn prune_logs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if logs.len() < KEPT_LOGS {
        return;
    }
    logs.sort();
    for (_, path) in logs.iter().take(logs.len() + 1 - KEPT_LOGS) {
        let _ = fs::remove_file(path);
    }
}

/// The guest's `/init`: mount the usual filesystems, switch output to the protocol port, run the
/// script, report its status, power off.
fn init_script(nonce: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/bin:/bin:/sbin HOME=/root GRAFT_LAB=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname graft-lab
stty -F /dev/ttyS1 raw -echo
exec </dev/null >/dev/ttyS1 2>&1
cd /root
printf '\n@@graft-{nonce}:ready\n'
/bin/sh /graft/script.sh
rc=$?
sync
printf '\n@@graft-{nonce}:exit:%d\n' "$rc"
poweroff -f
"#
    )
}

fn build_initramfs(
    spec: &RunSpec,
    busybox: &Path,
    nonce: &str,
    out: &Path,
) -> Result<(), LabError> {
    let layout = |e: std::io::Error| LabError::Layout(e.to_string());
    let read = |path: &Path| {
        fs::read(path).map_err(|e| LabError::GuestFile {
            path: path.to_path_buf(),
            cause: e,
        })
    };
    let mut ramfs = Initramfs::new();
    for dir in [
        "proc", "sys", "dev", "tmp", "run", "root", "etc", "sbin", "usr/bin", "usr/sbin",
    ] {
        ramfs.dir(dir);
    }
    ramfs.char_device("dev/console", 5, 1).map_err(layout)?;
    ramfs
        .file("init", 0o755, init_script(nonce).as_bytes())
        .map_err(layout)?;
    ramfs
        .file("bin/busybox", 0o755, &read(busybox)?)
        .map_err(layout)?;
    ramfs
        .file("graft/script.sh", 0o755, spec.script.as_bytes())
        .map_err(layout)?;
    ramfs
        .file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
        .map_err(layout)?;
    ramfs
        .file("etc/group", 0o644, b"root:x:0:\n")
        .map_err(layout)?;

    if let Some(graft) = &spec.graft_binary {
        ramfs
            .file("usr/bin/graft", 0o755, &read(graft)?)
            .map_err(layout)?;
        for lib in shared_libraries(graft)? {
            let dest = lib.to_string_lossy().into_owned();
            if !ramfs.contains(&dest) {
                ramfs.file(&dest, 0o755, &read(&lib)?).map_err(layout)?;
            }
        }
    }

    let moddir = format!("lib/modules/{}", spec.kernel.release);
    ramfs.dir(&moddir);
    let mut dep = String::new();
    let mut added = std::collections::BTreeSet::new();
    for module in &spec.modules {
        for path in std::iter::once(&module.path).chain(&module.depends) {
            if added.insert(path.clone()) {
                let data = read(&spec.kernel.modules_dir.join(path))?;
                ramfs
                    .file(&format!("{moddir}/{path}"), 0o644, &data)
                    .map_err(layout)?;
            }
        }
        dep.push_str(&format!("{}: {}\n", module.path, module.depends.join(" ")));
    }
    // Dependencies get their own lines too, so `modprobe` of any of them works.
    for path in &added {
        if !dep.lines().any(|l| l.starts_with(&format!("{path}:"))) {
            dep.push_str(&format!("{path}:\n"));
        }
    }
    ramfs
        .file(&format!("{moddir}/modules.dep"), 0o644, dep.as_bytes())
        .map_err(layout)?;

    for file in &spec.files {
        if !file.dest.starts_with('/') {
            return Err(LabError::Layout(format!(
                "guest path `{}` (for {}) must be absolute",
                file.dest,
                file.source.display()
            )));
        }
        ramfs
            .file(&file.dest, file_mode(&file.source), &read(&file.source)?)
            .map_err(layout)?;
    }
    let mut buf = Vec::new();
    ramfs.write_to(&mut buf).map_err(layout)?;
    fs::write(out, buf).map_err(|e| LabError::io("writing", out, e))
}

fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644)
}

/// The shared libraries (and the loader) a dynamically linked binary needs, as `ldd` resolves
/// them on this host; a static binary needs none.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, LabError> {
    let output = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| LabError::io("running ldd on", binary, e))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // `ldd` fails on static binaries ("not a dynamic executable"): nothing to add.
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// QEMU's option syntax splits on commas; a literal comma is written twice.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

fn last_line(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| strip_timestamp(l).to_string())
}

fn strip_timestamp(line: &str) -> &str {
    let line = line.trim();
    match (line.starts_with('['), line.find("] ")) {
        (true, Some(end)) => &line[end + 2..],
        _ => line,
    }
}

fn nonce() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:x}{:x}", std::process::id(), nanos)
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// Makes the kernel kill the child if graft dies, even by SIGKILL: no VM (or build) outlives
/// the command that started it.
pub fn kill_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec; it only calls prctl(2), which is
    // async-signal-safe, and touches no memory shared with the parent.
    unsafe {
        command.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::Kill))
                .map_err(std::io::Error::from)
        });
    }
}

/// Owns the QEMU process: killed and reaped on drop, whatever path the run takes.
struct Guard(Option<Child>);

impl Guard {
    fn kill(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `limit` for QEMU to exit on its own, then kills it. Returns its status.
    fn wait_for(&mut self, limit: Duration) -> Option<String> {
        let child = self.0.as_mut()?;
        let until = Instant::now() + limit;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status.to_string()),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.kill();
                    return None;
                }
            }
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut pipe) = self.0.as_mut().and_then(|c| c.stderr.take()) {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads QEMU's stdout (the guest's ttyS1) on a thread; `None` marks the end.
fn spawn_reader(qemu: &mut Guard) -> Result<mpsc::Receiver<Option<Vec<u8>>>, LabError> {
    let mut stdout = qemu
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .ok_or_else(|| LabError::QemuFailed("QEMU's output is not connected".into()))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(n) => {
                    if tx.send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(rx)
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Output(Vec<u8>),
    Ready,
    Exit(i32),
}

/// Splits the protocol port's byte stream into script output and init markers.
///
/// A marker is `@@graft-<nonce>:<body>` on a line of its own; `/init` prints a newline before
/// it, which belongs to the marker, so script output passes through byte for byte. Bytes that
/// could be the start of a marker are held back, but only until the stream goes quiet
/// ([`Scanner::flush`]), so a script's output is never delayed waiting for more.
struct Scanner {
    marker: Vec<u8>,
    pending: Vec<u8>,
    at_line_start: bool,
}

impl Scanner {
    fn new(nonce: &str) -> Self {
        Self {
            marker: format!("@@graft-{nonce}:").into_bytes(),
            pending: Vec::new(),
            at_line_start: true,
        }
    }

    fn emit(&mut self, events: &mut Vec<Event>, upto: usize, skip: usize) {
        if upto > 0 {
            let bytes: Vec<u8> = self.pending[..upto].to_vec();
            self.at_line_start = bytes.last() == Some(&b'\n');
            events.push(Event::Output(bytes));
        }
        self.pending.drain(..upto + skip);
    }

    /// The first marker that starts a line, as (start of the line break before it, or the
    /// marker itself when it opens the stream, marker start).
    fn find_marker(&self) -> Option<(usize, usize)> {
        let m = &self.marker;
        if self.at_line_start && self.pending.starts_with(m) {
            return Some((0, 0));
        }
        self.pending
            .windows(m.len() + 1)
            .position(|w| w[0] == b'\n' && &w[1..] == m.as_slice())
            .map(|at| (at, at + 1))
    }

    fn feed(&mut self, data: &[u8]) -> Vec<Event> {
        self.pending.extend_from_slice(data);
        let mut events = Vec::new();
        loop {
            let Some((cut, start)) = self.find_marker() else {
                // Hold back a trailing line break and what follows it if it may become a marker.
                let keep = match self.pending.iter().rposition(|&b| b == b'\n') {
                    Some(nl) if self.marker.starts_with(&self.pending[nl + 1..]) => {
                        self.pending.len() - nl
                    }
                    None if self.at_line_start && self.marker.starts_with(&self.pending) => {
                        self.pending.len()
                    }
                    _ => 0,
                };
                let upto = self.pending.len() - keep;
                self.emit(&mut events, upto, 0);
                return events;
            };
            let body_at = start + self.marker.len();
            let Some(len) = self.pending[body_at..].iter().position(|&b| b == b'\n') else {
                self.emit(&mut events, cut, 0);
                return events;
            };
            let body = String::from_utf8_lossy(&self.pending[body_at..body_at + len]).into_owned();
            self.emit(&mut events, cut, body_at + len + 1 - cut);
            self.at_line_start = true;
            if body == "ready" {
                events.push(Event::Ready);
            } else if let Some(code) = body
                .strip_prefix("exit:")
                .and_then(|c| c.trim().parse().ok())
            {
                events.push(Event::Exit(code));
            }
        }
    }

    /// Releases held-back bytes: the stream went quiet, so they were not a marker's start.
    fn flush(&mut self) -> Vec<u8> {
        let bytes = std::mem::take(&mut self.pending);
        if let Some(&last) = bytes.last() {
            self.at_line_start = last == b'\n';
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_of(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .flat_map(|e| match e {
                Event::Output(b) => b.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn markers_are_split_from_output_across_chunks() {
        let mut s = Scanner::new("n1");
        let stream = b"\n@@graft-n1:ready\nhello\nno newline\n@@graft-n1:exit:3\n";
        let mut events = Vec::new();
        for chunk in stream.chunks(5) {
            events.extend(s.feed(chunk));
        }
        assert!(events.contains(&Event::Ready));
        assert!(events.contains(&Event::Exit(3)));
        assert_eq!(output_of(&events), b"hello\nno newline");
        assert!(s.flush().is_empty());
    }

    /// A finished line must reach the caller at once, not when the next output arrives.
    #[test]
    fn a_complete_line_is_not_held_until_more_output() {
        let mut s = Scanner::new("n1");
        let mut out = output_of(&s.feed(b"\n@@graft-n1:ready\nstarted\n"));
        // The trailing newline may begin a marker; it is released once the stream is quiet.
        out.extend(s.flush());
        assert_eq!(out, b"started\n");
        // The init's newline before the exit marker was already released: the marker is still
        // recognised at the start of the line.
        let events = s.feed(b"@@graft-n1:exit:0\n");
        assert_eq!(events, [Event::Exit(0)]);
    }

    #[test]
    fn forged_marker_with_another_nonce_is_output() {
        let mut s = Scanner::new("real");
        let events = s.feed(b"\n@@graft-fake:exit:0\n");
        assert!(!events.iter().any(|e| matches!(e, Event::Exit(_))));
        let mut out = output_of(&events);
        out.extend(s.flush());
        assert_eq!(out, b"\n@@graft-fake:exit:0\n");
    }

    #[test]
    fn timestamps_are_stripped() {
        assert_eq!(
            strip_timestamp("[    1.234] Kernel panic - x"),
            "Kernel panic - x"
        );
        assert_eq!(strip_timestamp("plain"), "plain");
    }
}
