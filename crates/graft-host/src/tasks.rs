//! Tasks during a transition: which are still pending, and what holds them.
//!
//! The livepatch core moves each task to the new state only when no function it is switching
//! is on the task's stack. `/proc/<pid>/task/<tid>/patch_state` says where each task is (-1: no
//! transition, 0: unpatched, 1: patched); `/proc/<pid>/task/<tid>/stack` shows why a task
//! cannot move.

use std::fs;
use std::path::Path;

use crate::sys::LoadedPatch;

/// `PF_KTHREAD` in the flags field of `/proc/<pid>/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// A task (thread) of the running system.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TaskInfo {
    /// Thread group (process) id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Command name.
    pub comm: String,
    /// Scheduler state letter (R, S, D, I, T, ...).
    pub state: char,
    /// A kernel thread: the fake signals the kernel sends after 15 s do not move it.
    pub kthread: bool,
    /// `patch_state`: -1, 0 or 1.
    pub patch_state: i32,
}

impl TaskInfo {
    /// The state letter with its meaning.
    pub fn state_text(&self) -> String {
        let meaning = match self.state {
            'R' => "running",
            'S' => "sleeping",
            'D' => "uninterruptible sleep",
            'I' => "idle",
            'T' => "stopped",
            't' => "traced",
            'Z' => "zombie",
            'X' => "dead",
            _ => "unknown",
        };
        format!("{} ({meaning})", self.state)
    }
}

fn numeric_entries(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Parses `/proc/<pid>/task/<tid>/stat`: the command is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<(String, char, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    // After the state: ppid pgrp session tty_nr tpgid flags.
    let flags = rest.nth(5)?.parse().ok()?;
    Some((comm, state, flags))
}

/// Every thread, with its patch state. Threads that exit while being read are skipped.
pub fn all_tasks() -> Vec<TaskInfo> {
    let mut tasks = Vec::new();
    for pid in numeric_entries(Path::new("/proc")) {
        let task_dir = Path::new("/proc").join(pid.to_string()).join("task");
        for tid in numeric_entries(&task_dir) {
            let dir = task_dir.join(tid.to_string());
            let Ok(stat) = fs::read_to_string(dir.join("stat")) else {
                continue;
            };
            let Some((comm, state, flags)) = parse_stat(&stat) else {
                continue;
            };
            let Ok(patch_state) = fs::read_to_string(dir.join("patch_state")) else {
                continue;
            };
            let Ok(patch_state) = patch_state.trim().parse() else {
                continue;
            };
            tasks.push(TaskInfo {
                pid,
                tid,
                comm,
                state,
                kthread: flags & PF_KTHREAD != 0,
                patch_state,
            });
        }
    }
    tasks
}

/// Tasks not yet in `target` state (1 when patching, 0 when unpatching).
pub fn pending(target: i32) -> Vec<TaskInfo> {
    all_tasks()
        .into_iter()
        .filter(|t| t.patch_state != -1 && t.patch_state != target)
        .collect()
}

/// A frame of `/proc/<pid>/stack`: `[<0>] func+0x1a/0x40 [module]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Frame {
    /// The line as the kernel printed it (without the address, which is hidden anyway).
    pub text: String,
    /// The function.
    pub function: String,
    /// `vmlinux` or the module.
    pub object: String,
}

fn parse_frame(line: &str) -> Option<Frame> {
    let body = line.split_once("] ").map(|(_, b)| b).unwrap_or(line).trim();
    if body.is_empty() {
        return None;
    }
    let (symbol, object) = match body.split_once(" [") {
        Some((s, m)) => (s, m.trim_end_matches(']').to_string()),
        None => (body, "vmlinux".to_string()),
    };
    let function = symbol.split('+').next().unwrap_or(symbol).to_string();
    Some(Frame {
        text: body.to_string(),
        function,
        object,
    })
}

/// A task's kernel stack; empty when it cannot be read (a task running on another CPU, or one
/// that exited).
pub fn stack(task: &TaskInfo) -> Vec<Frame> {
    let path = format!("/proc/{}/task/{}/stack", task.pid, task.tid);
    fs::read_to_string(path)
        .map(|text| text.lines().filter_map(parse_frame).collect())
        .unwrap_or_default()
}

/// A task the transition waits for, and the patched functions it is in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Blocker {
    /// The task.
    pub task: TaskInfo,
    /// Its stack.
    pub stack: Vec<String>,
    /// `object:function` of each frame that is one of the functions being switched.
    pub holding: Vec<String>,
}

/// Why a transition has not finished.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StallReport {
    /// The patch in transition.
    pub patch: String,
    /// Patching (true) or unpatching.
    pub patching: bool,
    /// Seconds since the transition started.
    pub elapsed_secs: f64,
    /// Pending tasks.
    pub blockers: Vec<Blocker>,
    /// Online CPUs: each has an idle task the transition also waits for, which /proc does not
    /// list (the kernel switches it when the CPU next goes idle).
    pub idle_tasks: usize,
}

impl StallReport {
    /// The report as a user reads it.
    pub fn render(&self) -> String {
        let mut s = format!(
            "the {} transition of {} is waiting after {:.0} s for {} task{}:\n",
            if self.patching {
                "patching"
            } else {
                "unpatching"
            },
            self.patch,
            self.elapsed_secs,
            self.blockers.len(),
            if self.blockers.len() == 1 { "" } else { "s" },
        );
        for b in &self.blockers {
            let t = &b.task;
            let pid = if t.pid == t.tid {
                format!("pid {}", t.pid)
            } else {
                format!("pid {} (thread {})", t.pid, t.tid)
            };
            let kind = if t.kthread {
                "kernel thread"
            } else {
                "user task"
            };
            s.push_str(&format!(
                "  {pid} [{}], {kind}, state {}",
                t.comm,
                t.state_text()
            ));
            if b.holding.is_empty() {
                s.push_str(", no switched function on its stack (it may be running; the kernel retries every second)\n");
            } else {
                s.push_str(&format!(", inside {}\n", b.holding.join(", ")));
            }
            for frame in &b.stack {
                s.push_str(&format!("      {frame}\n"));
            }
        }
        if self.blockers.is_empty() {
            s.push_str(&format!(
                "  no task /proc lists is pending: the transition waits for the per-CPU idle tasks ({} online CPUs), which /proc does not list; each switches when its CPU next goes idle, so a CPU that never idles holds it\n",
                self.idle_tasks
            ));
        }
        if self
            .blockers
            .iter()
            .any(|b| b.task.kthread && !b.holding.is_empty())
        {
            s.push_str("  A kernel thread sleeping inside a switched function leaves it only when that call returns; if it loops there, the transition cannot finish.\n");
        }
        s
    }
}

/// Diagnoses the pending tasks of `patch`'s transition.
pub fn diagnose(patch: &LoadedPatch, elapsed_secs: f64) -> StallReport {
    let target = if patch.enabled { 1 } else { 0 };
    let blockers = pending(target)
        .into_iter()
        .map(|task| {
            let frames = stack(&task);
            let holding = frames
                .iter()
                .filter(|f| holds(patch, f))
                .map(|f| format!("{} ({})", f.function, f.object))
                .collect();
            Blocker {
                task,
                stack: frames.into_iter().map(|f| f.text).collect(),
                holding,
            }
        })
        .collect();
    StallReport {
        patch: patch.name.clone(),
        patching: patch.enabled,
        elapsed_secs,
        blockers,
        idle_tasks: online_cpus(),
    }
}

/// The number of online CPUs (`/sys/devices/system/cpu/online`, e.g. `0-3,6`).
fn online_cpus() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .map(|t| count_cpu_list(&t))
        .unwrap_or(0)
}

/// Counts the CPUs of a kernel CPU list (`0-3,6` is 5).
fn count_cpu_list(text: &str) -> usize {
    text.trim()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| match r.split_once('-') {
            Some((a, b)) => match (a.parse::<usize>(), b.parse::<usize>()) {
                (Ok(a), Ok(b)) if b >= a => b - a + 1,
                _ => 0,
            },
            None => usize::from(r.parse::<usize>().is_ok()),
        })
        .sum()
}

/// Whether a frame is in a function this transition switches: one of the replaced functions
/// (the old code a patching transition waits to leave), or the patch's own code (what an
/// unpatching transition waits to leave).
fn holds(patch: &LoadedPatch, frame: &Frame) -> bool {
    frame.object == patch.name
        || patch
            .functions()
            .any(|(object, f)| object == frame.object && f.name == frame.function)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_parentheses_in_the_command() {
        let stat = "42 (a (b) c) S 2 0 0 0 -1 2129984 0 0";
        let (comm, state, flags) = parse_stat(stat).unwrap_or_default();
        assert_eq!(comm, "a (b) c");
        assert_eq!(state, 'S');
        assert_eq!(flags & PF_KTHREAD, PF_KTHREAD);
    }

    #[test]
    fn frames_name_their_module() {
        let f = parse_frame("[<0>] graft_stall_wait+0x2a/0x50 [graft_stall_fixture]");
        assert_eq!(
            f.map(|f| (f.function, f.object)),
            Some(("graft_stall_wait".into(), "graft_stall_fixture".into()))
        );
        let f = parse_frame("[<0>] kthread+0xd7/0x100");
        assert_eq!(
            f.map(|f| (f.function, f.object)),
            Some(("kthread".into(), "vmlinux".into()))
        );
    }

    /// Regression: the stall diagnosis ignored the per-CPU idle tasks, which /proc does not
    /// list, so a transition waiting only for them showed no blocker and no reason.
    #[test]
    fn idle_tasks_are_named_when_no_listed_task_is_pending() {
        assert_eq!(count_cpu_list("0-3,6\n"), 5);
        assert_eq!(count_cpu_list("0"), 1);
        assert_eq!(count_cpu_list("garbage"), 0);
        let report = StallReport {
            patch: "p".into(),
            patching: true,
            elapsed_secs: 20.0,
            blockers: Vec::new(),
            idle_tasks: 2,
        };
        let text = report.render();
        assert!(
            text.contains("per-CPU idle tasks (2 online CPUs)"),
            "{text}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Malformed /proc stat and stack text never panics.
        #[test]
        fn malformed_proc_text_never_panics(text in "(?s).{0,300}") {
            let _ = parse_stat(&text);
            let _ = parse_stat(&format!("1 ({text}) S 0 0 0 0 0 {text}"));
            let _ = parse_frame(&text);
            let _ = parse_frame(&format!("[<0>] {text} [{text}"));
        }
    }
}
