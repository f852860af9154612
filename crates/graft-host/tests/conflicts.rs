//! The host's conflict rules and live-version status on recordings of the real kernel
//! (tests/fixtures/sysfs, recorded in the lab by graft/tests/host_recordings.rs): a graft set patch beside
//! a livepatch graft did not apply, and a transition left running. Fast tier: no kernel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

use std::path::{Path, PathBuf};

use graft_host::ops::checks::plan;
use graft_host::recorded::{self, Recording};
use graft_host::sys::{LoadedModule, LoadedPatch};
use graft_host::HostError;
use graft_manifest::Manifest;

struct Recorded {
    root: tempfile::TempDir,
    modules: Vec<LoadedModule>,
    loaded: Vec<LoadedPatch>,
}

impl Recorded {
    fn load(name: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/sysfs")
            .join(format!("{name}.txt"));
        let text = std::fs::read_to_string(&path).unwrap();
        let recording = Recording::parse(&text);
        let root = tempfile::tempdir().unwrap();
        recording.materialize(root.path()).unwrap();
        let modules = recording.modules();
        let loaded = recorded::patches(root.path(), &modules).unwrap();
        Self {
            root,
            modules,
            loaded,
        }
    }

    fn candidate(&self, name: &str) -> Manifest {
        let path = self
            .root
            .path()
            .join("candidates")
            .join(format!("{name}.json"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    fn plan(&self, name: &str) -> Result<Vec<String>, HostError> {
        plan(
            &self.candidate(name),
            &self.loaded,
            &self.modules,
            &self.state(),
        )
    }

    fn state(&self) -> PathBuf {
        self.root.path().join("state")
    }
}

fn refusal(result: Result<Vec<String>, HostError>) -> String {
    match result {
        Err(HostError::Conflict { reason, .. }) => reason,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn the_recording_reads_as_the_kernel_stacked_it() {
    let r = Recorded::load("mixed");
    let names: Vec<&str> = r.loaded.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["graft_set_limits_1", "graft_version_c"]);
    assert!(r.loaded.iter().all(|p| p.enabled && !p.transition));
    assert!(r.modules.iter().all(|m| m.livepatch));
}

#[test]
fn a_second_patch_of_the_same_name_is_refused() {
    let r = Recorded::load("mixed");
    let why = refusal(r.plan("graft_set_limits_1"));
    assert!(
        why.contains("a livepatch named graft_set_limits_1 is already loaded"),
        "{why}"
    );
}

#[test]
fn stacking_on_a_function_of_a_patch_graft_did_not_apply_is_refused() {
    let r = Recorded::load("mixed");
    let why = refusal(r.plan("graft_version_a"));
    assert!(
        why.contains("vmlinux:version_proc_show is already patched by graft_version_c, a livepatch graft did not apply"),
        "{why}"
    );
}

#[test]
fn a_set_patch_on_a_function_another_patch_owns_is_refused() {
    let r = Recorded::load("mixed");
    let why = refusal(r.plan("graft_set_version_1"));
    assert!(why.contains("graft_version_c"), "{why}");
}

#[test]
fn an_atomic_replace_patch_retires_every_patch() {
    let r = Recorded::load("mixed");
    let retired = r.plan("graft_limits").unwrap();
    assert_eq!(retired, ["graft_set_limits_1", "graft_version_c"]);
}

#[test]
fn nothing_applies_while_a_transition_runs() {
    let r = Recorded::load("transition");
    assert!(r.loaded.iter().any(|p| p.transition));
    let why = refusal(r.plan("graft_limits"));
    assert!(
        why.contains("graft_stall_patch is in a transition"),
        "{why}"
    );
}

#[test]
fn status_shows_the_live_version_of_each_function() {
    let r = Recorded::load("mixed");
    let functions = graft_host::status::live_versions(&r.loaded);
    let version = functions
        .iter()
        .find(|f| f.name == "version_proc_show")
        .unwrap();
    assert_eq!(version.live.as_deref(), Some("graft_version_c"));
    let limits = functions
        .iter()
        .find(|f| f.name == "proc_pid_limits")
        .unwrap();
    assert_eq!(limits.live.as_deref(), Some("graft_set_limits_1"));
    assert!(functions.iter().all(|f| f.transition.is_none()));
}

#[test]
fn status_shows_a_function_in_transition() {
    let r = Recorded::load("transition");
    let functions = graft_host::status::live_versions(&r.loaded);
    let moving: Vec<_> = functions
        .iter()
        .filter(|f| f.transition.is_some())
        .collect();
    assert!(!moving.is_empty());
    for f in moving {
        assert!(f.live.is_none());
        assert!(f
            .transition
            .as_deref()
            .unwrap()
            .contains("moving from the original to graft_stall_patch"));
    }
}

#[test]
fn the_applied_manifests_of_the_state_directory_are_read() {
    let r = Recorded::load("mixed");
    let applied = graft_host::state::applied_in(&r.state());
    let names: Vec<&str> = applied.iter().map(|a| a.manifest.name.as_str()).collect();
    assert_eq!(names, ["graft_set_limits_1"]);
    assert!(Path::new(&r.state()).join("applied").is_dir());
}
