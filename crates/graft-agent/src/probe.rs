//! Health probes: commands the publisher signed with a level (`Level::probes`), which the
//! hosts a rollout of that level samples run at every check-in, treated and control hosts
//! alike. A probe prints one number, higher being worse (a latency, an error count), and is
//! reported as the metric `probe:NAME`, gated like the kernel's own metrics.
//!
//! The agent runs a probe only from metadata it verified against its pinned keys: a server
//! cannot make a host run a command the publisher did not sign. A probe that fails, prints no
//! number or runs too long is left out of the sample and logged; it never stops a check-in.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a probe may run.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a probe gave no value.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// `/bin/sh` could not be started.
    #[error("cannot run /bin/sh: {0}")]
    Spawn(std::io::Error),
    /// It ran longer than allowed, and was killed.
    #[error("still running after {0:?}: killed")]
    Timeout(Duration),
    /// It exited with a failure.
    #[error("exited with {status}: {stderr}")]
    Failed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The start of what it wrote to stderr.
        stderr: String,
    },
    /// Its output did not start with a finite number.
    #[error("printed {0:?}, not a number")]
    NotANumber(String),
}

/// Runs `command` with `/bin/sh -c` and reads the number it prints first.
pub fn run(command: &str, timeout: Duration) -> Result<f64, ProbeError> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, so that a timeout ends whatever the shell started too.
        .process_group(0)
        .spawn()
        .map_err(ProbeError::Spawn)?;
    // Polled rather than waited on: a hung probe must not hang the agent.
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(ProbeError::Spawn)? {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                if let Some(group) = i32::try_from(child.id())
                    .ok()
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::Kill);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProbeError::Timeout(timeout));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let read = |pipe: Option<&mut dyn std::io::Read>| {
        let mut text = String::new();
        if let Some(p) = pipe {
            let _ = p.take(4096).read_to_string(&mut text);
        }
        text
    };
    let stdout = read(child.stdout.as_mut().map(|p| p as &mut dyn std::io::Read));
    if !status.success() {
        let stderr = read(child.stderr.as_mut().map(|p| p as &mut dyn std::io::Read));
        return Err(ProbeError::Failed {
            status,
            stderr: stderr.trim().chars().take(200).collect(),
        });
    }
    let first = stdout.split_whitespace().next().unwrap_or("");
    match first.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        _ => Err(ProbeError::NotANumber(
            stdout.trim().chars().take(80).collect(),
        )),
    }
}

/// Runs every probe; the values as metrics named `probe:NAME`, the failures logged.
pub fn run_all(probes: &BTreeMap<String, String>) -> BTreeMap<String, f64> {
    let mut metrics = BTreeMap::new();
    for (name, command) in probes {
        match run(command, PROBE_TIMEOUT) {
            Ok(value) => {
                metrics.insert(format!("probe:{name}"), value);
            }
            Err(e) => tracing::warn!(probe = name, error = %e, "health probe gave no value"),
        }
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_the_first_number_it_prints() {
        assert_eq!(run("echo 3.5 ms", PROBE_TIMEOUT).unwrap(), 3.5);
        assert_eq!(run("printf '  12\\n7\\n'", PROBE_TIMEOUT).unwrap(), 12.0);
    }

    #[test]
    fn a_failing_silent_or_hung_probe_gives_no_value_and_says_why() {
        let failed = run("echo oops >&2; exit 3", PROBE_TIMEOUT).unwrap_err();
        assert!(
            matches!(&failed, ProbeError::Failed { stderr, .. } if stderr == "oops"),
            "{failed}"
        );
        assert!(matches!(
            run("echo fine", PROBE_TIMEOUT),
            Err(ProbeError::NotANumber(s)) if s == "fine"
        ));
        assert!(matches!(
            run("echo nan", PROBE_TIMEOUT),
            Err(ProbeError::NotANumber(_))
        ));
        let started = Instant::now();
        assert!(matches!(
            run("sleep 30", Duration::from_millis(200)),
            Err(ProbeError::Timeout(_))
        ));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "killed, not waited for"
        );
    }

    #[test]
    fn every_probe_is_a_metric_of_its_own_and_failures_are_left_out() {
        let probes = BTreeMap::from([
            ("queue".to_string(), "echo 4".to_string()),
            ("broken".to_string(), "exit 1".to_string()),
        ]);
        let metrics = run_all(&probes);
        assert_eq!(metrics, BTreeMap::from([("probe:queue".to_string(), 4.0)]));
    }
}
