//! The recordings of the kernel's livepatch interface that the fast tier tests the host's
//! rules on are what the real kernel shows.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

#[path = "common/host_lab.rs"]
mod host_lab;

use host_lab::*;

/// The recordings the fast tier checks the host's rules on (tests/fixtures/sysfs) are what the
/// kernel shows: a graft set patch beside a livepatch graft did not apply, and a transition
/// left running. `GRAFT_BLESS=1` writes them; otherwise the live kernel must show the same.
#[test]
fn recorded_sysfs_trees_are_what_the_kernel_shows() {
    let dump = graft_host::recorded::DUMP_SCRIPT;
    let candidates =
        "for f in p/*.json; do echo \"@@file candidates/${f#p/}\"; cat \"$f\"; echo; done";
    let output = run_guest(
        &format!(
            r#"
dump() {{
{dump}
}}
expect 0 graft apply p/graft_set_limits_1.ko
insmod p/graft_version_c.ko || fail "insmod"
wait_for() {{ i=0; until eval "$1"; do i=$((i + 1)); [ $i -lt 300 ] || fail "timeout: $1"; sleep 0.1; done; }}
wait_for '[ "$(cat /sys/kernel/livepatch/graft_version_c/transition)" = 0 ]'
echo "@@recording-begin mixed"
dump
{candidates}
echo "@@recording-end"
echo 0 > /sys/kernel/livepatch/graft_version_c/enabled
wait_for '[ ! -e /sys/kernel/livepatch/graft_version_c ]'
rmmod graft_version_c
insmod p/graft_stall_fixture.ko || fail "fixture"
expect 4 graft apply --grace 1 --timeout 2 --no-revert-on-timeout p/graft_stall_patch.ko
echo "@@recording-begin transition"
dump
{candidates}
echo "@@recording-end"
expect 0 graft revert --timeout 20 graft_stall_patch
"#
        ),
        |_| {},
    );
    let bless = std::env::var_os("GRAFT_BLESS").is_some_and(|v| v == "1");
    let dir = repo_root().join("tests/fixtures/sysfs");
    for name in ["mixed", "transition"] {
        let recorded = output
            .split(&format!("@@recording-begin {name}\n"))
            .nth(1)
            .and_then(|rest| rest.split("@@recording-end").next())
            .unwrap_or_else(|| panic!("no recording {name}"));
        let path = dir.join(format!("{name}.txt"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, recorded).unwrap();
            continue;
        }
        let checked_in = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (record with GRAFT_BLESS=1)", path.display()));
        let shape = |text: &str| {
            let recording = graft_host::recorded::Recording::parse(text);
            let root = tempfile::tempdir().unwrap();
            recording.materialize(root.path()).unwrap();
            let patches = graft_host::recorded::patches(root.path(), &recording.modules()).unwrap();
            patches
                .iter()
                .map(|p| (p.name.clone(), p.enabled, p.transition, p.objects.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            shape(recorded),
            shape(&checked_in),
            "{name}: the kernel shows something else than {} (re-record with GRAFT_BLESS=1)",
            path.display()
        );
    }
}
