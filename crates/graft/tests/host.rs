//! `graft apply`, `revert`, `status`, `install`, `boot` on the real default target, booted in
//! the lab: every test runs graft inside a VM of the kernel the patches were built for.
//!
//! The patches are built once per run by `graft build` from `tests/host/patches` (and the
//! corpus' /proc/<pid>/limits fix); the stall fixture is a module whose kernel thread sleeps
//! forever inside the function its livepatch replaces (`tests/fixtures/stall`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

use std::path::Path;

use graft_lab::RunSpec;

#[path = "common/host_lab.rs"]
mod host_lab;

use host_lab::*;

#[test]
fn apply_then_revert_leaves_the_kernel_as_it_was() {
    let output = run_guest(
        r#"
limits_fixed && fail "the header is fixed before the patch"
expect 0 graft apply p/graft_limits.ko
limits_fixed || fail "the header is not fixed with the patch live"
json applied graft status --json
expect 0 graft list
expect 0 graft revert graft_limits
limits_fixed && fail "the header is still fixed after the revert"
no_livepatch_left
json reverted graft status --json
if grep -l '"outcome": null' /var/lib/graft/journal/*.json; then fail "a journal entry has no outcome"; fi
grep -h '"summary"' /var/lib/graft/journal/*.json
"#,
        |_| {},
    );
    let json = json_blocks(&output);
    let applied = &json["applied"];
    assert_eq!(patch_names(applied), ["graft_limits"]);
    let p = &applied["patches"][0];
    assert_eq!(p["enabled"], true);
    assert_eq!(p["transition"], false);
    assert_eq!(p["managed"], true);
    assert_eq!(p["replace"], true);
    assert_eq!(p["objects"][0]["name"], "vmlinux");
    assert_eq!(p["objects"][0]["patched"], true);
    assert_eq!(p["objects"][0]["functions"][0]["name"], "proc_pid_limits");
    assert_eq!(function(applied, "proc_pid_limits")["live"], "graft_limits");
    assert_eq!(applied["health"]["ok"], true, "{applied:#}");
    assert_eq!(applied["kernel"]["build_id"], kernel().meta().build_id);
    let list: Vec<&str> = output
        .lines()
        .find(|l| l.starts_with("graft_limits "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        list,
        ["graft_limits", "enabled", "replace", "1", "function"]
    );
    assert_eq!(json["reverted"]["patches"], serde_json::json!([]));
    assert!(output.contains("\"summary\": \"applied\""), "{output}");
    assert!(
        output.contains("\"summary\": \"disabled and unloaded\""),
        "{output}"
    );
}

#[test]
fn stacked_patches_show_the_live_version_and_a_replace_patch_retires_them() {
    let output = run_guest(
        r#"
expect 0 graft apply p/graft_version_a.ko
grep -qx 'graft-a' /proc/version || fail "patch a is not live"
expect 0 graft apply p/graft_version_ab.ko
grep -qx 'graft-a graft-b' /proc/version || fail "patch ab is not live on top"
json stacked graft status --json
graft status
echo "@@refusal"
expect 1 graft apply p/graft_version_c.ko
echo "@@refusal-end"
[ "$(patches)" = "graft_version_a graft_version_ab " ] || fail "the refusal changed the patches: $(patches)"
expect 0 graft apply p/graft_limits.ko
grep -q 'graft-' /proc/version && fail "the stacked patches are still live"
limits_fixed || fail "the replace patch is not live"
json replaced graft status --json
grep -q graft_version /proc/modules && fail "retired modules are still loaded"
exit 0
"#,
        |_| {},
    );
    let json = json_blocks(&output);
    let stacked = &json["stacked"];
    assert_eq!(
        patch_names(stacked),
        ["graft_version_a", "graft_version_ab"]
    );
    let f = function(stacked, "version_proc_show");
    assert_eq!(
        f["patches"],
        serde_json::json!(["graft_version_a", "graft_version_ab"])
    );
    assert_eq!(f["live"], "graft_version_ab");
    assert!(output.contains("vmlinux:version_proc_show -> graft_version_ab (stack: graft_version_a < graft_version_ab)"), "{output}");
    let refusal = output.split("@@refusal").nth(1).unwrap();
    assert!(
        refusal.contains("vmlinux:version_proc_show is already patched by graft_version_a"),
        "{refusal}"
    );
    assert!(
        refusal.contains("silently drop graft_version_a's change"),
        "{refusal}"
    );
    assert!(refusal.contains("nothing was changed"), "{refusal}");
    let replaced = &json["replaced"];
    assert_eq!(patch_names(replaced), ["graft_limits"]);
    assert_eq!(replaced["disabled_modules"], serde_json::json!([]));
    assert!(
        output.contains("retired graft_version_a, graft_version_ab"),
        "{output}"
    );
}

#[test]
fn replace_sets_upgrade_one_set_and_leave_the_other_live() {
    let output = run_guest(
        r#"
expect 0 graft apply p/graft_set_version_1.ko
expect 0 graft apply p/graft_set_limits_1.ko
echo "@@refusal"
expect 1 graft apply p/graft_set_other.ko
echo "@@refusal-end"
expect 0 graft apply p/graft_set_version_2.ko
grep -qx 'graft-a graft-b' /proc/version || fail "set version 2 is not live"
limits_fixed || fail "set limits was disturbed"
grep -q graft_set_version_1 /proc/modules && fail "the superseded set patch is still loaded"
json sets graft status --json
graft list
"#,
        |_| {},
    );
    let json = json_blocks(&output);
    let sets = &json["sets"];
    assert_eq!(
        patch_names(sets),
        ["graft_set_limits_1", "graft_set_version_2"]
    );
    assert_eq!(sets["patches"][0]["set"], "limits");
    assert_eq!(sets["patches"][1]["set"], "version");
    assert_eq!(
        function(sets, "version_proc_show")["live"],
        "graft_set_version_2"
    );
    assert_eq!(
        function(sets, "proc_pid_limits")["live"],
        "graft_set_limits_1"
    );
    let refusal = output.split("@@refusal").nth(1).unwrap();
    assert!(
        refusal.contains("sets other and version would both patch vmlinux:version_proc_show"),
        "{refusal}"
    );
    assert!(output.contains("retired graft_set_version_1"), "{output}");
}

#[test]
fn a_stalled_transition_names_its_blocker_and_is_reversed() {
    let output = run_guest(
        r#"
insmod p/graft_stall_fixture.ko || fail "fixture"
version() { cat /sys/module/graft_stall_fixture/parameters/version; }
[ "$(version)" = 1 ] || fail "fixture version"
echo "@@stall"
expect 3 graft apply --grace 2 --timeout 6 p/graft_stall_patch.ko
echo "@@stall-end"
no_livepatch_left
[ "$(version)" = 1 ] || fail "the fixture still runs patched code"
json after graft status --json

echo "@@left"
expect 4 graft apply --grace 1 --timeout 2 --no-revert-on-timeout p/graft_stall_patch.ko
echo "@@left-end"
[ "$(cat /sys/kernel/livepatch/graft_stall_patch/transition)" = 1 ] || fail "not left in transition"
json pending graft status --json
expect 0 graft revert --timeout 20 graft_stall_patch
no_livepatch_left

expect 0 graft apply --grace 1 --timeout 2 --force --i-understand-force-is-permanent p/graft_stall_patch.ko
[ "$(version)" = 2 ] || fail "the forced patch is not live"
json forced graft status --json
"#,
        |_| {},
    );
    let stall = output.split("@@stall").nth(1).unwrap();
    // The stall report, as the user sees it.
    assert!(
        stall.contains("the patching transition of graft_stall_patch is waiting"),
        "{stall}"
    );
    assert!(
        stall.contains("[graft-stall], kernel thread, state "),
        "{stall}"
    );
    assert!(
        stall.contains("inside graft_stall_wait (graft_stall_fixture)"),
        "{stall}"
    );
    assert!(stall.contains("graft_stall_wait+0x"), "{stall}");
    assert!(
        stall.contains("reversed the transition and unloaded it; the kernel is as before"),
        "{stall}"
    );
    let json = json_blocks(&output);
    assert_eq!(json["after"]["patches"], serde_json::json!([]));
    let pending = &json["pending"]["patches"][0];
    assert_eq!(pending["transition"], true);
    let tasks = pending["pending_tasks"].as_array().unwrap();
    assert!(
        tasks
            .iter()
            .any(|t| t["comm"] == "graft-stall" && t["kthread"] == true),
        "{pending:#}"
    );
    assert!(json["pending"]["functions"][0]["transition"]
        .as_str()
        .unwrap()
        .contains("moving from the original to graft_stall_patch"));
    let forced = &json["forced"]["patches"][0];
    assert_eq!(forced["forced"], true);
    assert!(output.contains("with force after the timeout: its module can never be removed"));
}

#[test]
fn a_killed_apply_is_reconciled_by_the_next_command() {
    let output = run_guest(
        r#"
# kill_at POINT MODULE: start an apply paused at POINT, kill it with SIGKILL.
kill_at() {
	GRAFT_PAUSE_AT=$1 graft apply --timeout 600 "$2" 2>/tmp/apply.err &
	pid=$!
	i=0
	until grep -q "paused at $1" /tmp/apply.err; do
		i=$((i + 1)); [ $i -lt 300 ] || fail "graft never paused at $1"; sleep 0.1
	done
	kill -9 $pid; wait $pid 2>/dev/null
	echo "killed graft at $1"
}
kill_at before-load p/graft_limits.ko
echo "@@status-1"; graft status; echo "@@end"
no_livepatch_left

kill_at after-transition p/graft_limits.ko
echo "@@status-2"; graft status; echo "@@end"
limits_fixed || fail "the finished apply was not kept"
json kept graft status --json
expect 0 graft revert graft_limits

kill_at after-load p/graft_limits.ko
echo "@@status-4"; graft status; echo "@@end"
expect 0 graft revert graft_limits

# Killed while retiring the superseded patch of a replace set: the retirement is finished.
expect 0 graft apply p/graft_set_version_1.ko
kill_at retiring p/graft_set_version_2.ko
echo "@@status-5"; graft status; echo "@@end"
[ "$(patches)" = "graft_set_version_2 " ] || fail "the retirement was not finished: $(patches)"
grep -q graft_set_version_1 /proc/modules && fail "the superseded module is still loaded"
grep -qx 'graft-a graft-b' /proc/version || fail "set version 2 is not live"
expect 0 graft revert graft_set_version_2

# Killed while the transition is stalled: no pause point needed.
insmod p/graft_stall_fixture.ko || fail "fixture"
graft apply --timeout 600 p/graft_stall_patch.ko 2>/dev/null &
pid=$!
i=0
until [ "$(cat /sys/kernel/livepatch/graft_stall_patch/transition 2>/dev/null)" = 1 ]; do
	i=$((i + 1)); [ $i -lt 300 ] || fail "no transition"; sleep 0.1
done
sleep 1
kill -9 $pid; wait $pid 2>/dev/null
echo "@@status-3"; graft status; echo "@@end"
no_livepatch_left
[ "$(cat /sys/module/graft_stall_fixture/parameters/version)" = 1 ] || fail "the fixture runs patched code"
grep -h '"summary"' /var/lib/graft/journal/*.json
"#,
        |_| {},
    );
    let section = |name: &str| {
        output
            .split(&format!("@@{name}"))
            .nth(1)
            .and_then(|s| s.split("@@end").next())
            .unwrap()
            .to_string()
    };
    assert!(
        section("status-1").contains("interrupted apply of graft_limits"),
        "{output}"
    );
    assert!(
        section("status-1").contains("nothing had been loaded; the kernel is as before the apply")
    );
    assert!(section("status-2")
        .contains("its transition had finished: kept it applied and recorded it"));
    assert!(section("status-2").contains("1. graft_limits [enabled, replace]"));
    assert_eq!(json_blocks(&output)["kept"]["patches"][0]["managed"], true);
    let fourth = section("status-4");
    assert!(
        fourth.contains("interrupted apply of graft_limits"),
        "{fourth}"
    );
    assert!(
        fourth.contains("1. graft_limits [enabled, replace]"),
        "{fourth}"
    );
    let fifth = section("status-5");
    assert!(
        fifth.contains("interrupted apply of graft_set_version_2"),
        "{fifth}"
    );
    assert!(
        fifth.contains("kept it applied and retired graft_set_version_1"),
        "{fifth}"
    );
    let third = section("status-3");
    assert!(
        third.contains("interrupted apply of graft_stall_patch"),
        "{third}"
    );
    assert!(
        third.contains("it was still in transition: reversed it and unloaded the module"),
        "{third}"
    );
    assert!(third.contains("no livepatches loaded"), "{third}");
    assert!(output.contains("interrupted; reconciled: "), "{output}");
}

#[test]
fn bad_inputs_are_refused_and_change_nothing() {
    let output = run_guest(
        r#"
cd /root/p
before=$(cat /proc/modules | wc -l)
refused() {
	label=$1; shift
	echo "@@$label"
	expect 1 graft apply "$@"
	[ "$(cat /proc/modules | wc -l)" = "$before" ] || fail "$label: a module was loaded"
	no_livepatch_left
}
# A module for another kernel: the manifest names another build-id.
cp graft_limits.ko /tmp/foreign.ko
sed 's/"build_id": "[0-9a-f]*"/"build_id": "0123456789abcdef0123456789abcdef01234567"/' graft_limits.json > /tmp/foreign.json
refused foreign /tmp/foreign.ko
# A truncated module.
head -c 5000 graft_limits.ko > /tmp/truncated.ko; cp graft_limits.json /tmp/truncated.json
refused truncated /tmp/truncated.ko
# A corrupt manifest.
cp graft_limits.ko /tmp/corrupt.ko; head -c 100 graft_limits.json > /tmp/corrupt.json
refused corrupt /tmp/corrupt.ko
# No manifest at all.
cp graft_limits.ko /tmp/bare.ko
refused bare /tmp/bare.ko
# A state directory that is a file.
touch /tmp/state-file
refused statefile --state-dir /tmp/state-file graft_limits.ko
# No livepatch interface (sysfs hidden under a tmpfs).
mount -t tmpfs none /sys/kernel
refused nosysfs graft_limits.ko
umount /sys/kernel
echo "@@end"
expect 0 graft apply graft_limits.ko
"#,
        |_| {},
    );
    let section = |name: &str| {
        output
            .split(&format!("@@{name}\n"))
            .nth(1)
            .and_then(|s| s.split("\n@@").next())
            .unwrap()
            .to_string()
    };
    let foreign = section("foreign");
    assert!(
        foreign.contains("built for 6.1.0-56-amd64 (build-id 0123456789abcdef"),
        "{foreign}"
    );
    assert!(
        foreign.contains(&format!(
            "the running kernel is 6.1.0-56-amd64 (build-id {})",
            kernel().meta().build_id
        )),
        "{foreign}"
    );
    assert!(
        section("truncated").contains("(5000 bytes) differs from"),
        "{output}"
    );
    assert!(section("truncated").contains("truncated, altered or rebuilt"));
    assert!(
        section("corrupt").contains("/tmp/corrupt.json: not a valid graft manifest"),
        "{output}"
    );
    assert!(
        section("bare").contains("no manifest /tmp/bare.json beside it"),
        "{output}"
    );
    assert!(
        section("statefile")
            .contains("state directory /tmp/state-file: exists and is not a directory"),
        "{output}"
    );
    assert!(
        section("nosysfs").contains("/sys/kernel/livepatch does not exist"),
        "{output}"
    );
    for name in ["foreign", "truncated", "corrupt", "bare", "nosysfs"] {
        assert!(
            section(name).contains("nothing was changed"),
            "{name}: {output}"
        );
    }
}

#[test]
fn boot_reapplies_installed_patches_after_a_reboot_unless_disabled() {
    let disk = Path::new(env!("CARGO_TARGET_TMPDIR")).join("graft-state.img");
    let _ = std::fs::remove_file(&disk);
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let kernel = kernel();
    let index = kernel.module_index().unwrap();
    let disk_modules: Vec<_> = ["virtio_pci", "virtio_blk", "ext4", "crc32c_generic"]
        .iter()
        .map(|m| kernel.guest_module(&index, m).unwrap())
        .collect();
    let mount = r#"
for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe $m || fail "modprobe $m"; done
mkdir -p /var/lib/graft
"#;
    let with_disk = |spec: &mut RunSpec| {
        spec.disks = vec![disk.clone()];
        spec.modules = disk_modules.clone();
    };
    // First boot: make the file system, install two patches (and one for another kernel).
    let first = run_guest(
        &format!(
            r#"{mount}
mke2fs -q /dev/vda || fail mke2fs
mount -t ext4 /dev/vda /var/lib/graft || fail mount
expect 0 graft install p/graft_set_version_1.ko
expect 0 graft install p/graft_set_limits_1.ko
expect 0 graft install p/graft_set_version_2.ko
expect 0 graft install p/graft_version_c.ko
expect 0 graft uninstall graft_version_c
expect 1 graft uninstall graft_version_c
cp p/graft_limits.ko /tmp/other.ko
sed -e 's/"build_id": "[0-9a-f]*"/"build_id": "0123456789abcdef0123456789abcdef01234567"/' p/graft_limits.json > /tmp/other.json
expect 0 graft install /tmp/other.ko
graft status
umount /var/lib/graft
"#
        ),
        with_disk,
    );
    assert!(first.contains("installed graft_set_limits_1"), "{first}");
    assert!(
        first.contains("it supersedes (uninstalled): graft_set_version_1"),
        "{first}"
    );
    assert!(first.contains("uninstalled graft_version_c"), "{first}");
    assert!(
        first.contains("no installed patch named graft_version_c"),
        "{first}"
    );
    assert!(
        first.contains("graft_limits for 6.1.0-56-amd64 (for another kernel: skipped at boot)"),
        "{first}"
    );
    // Reboot: graft boot applies them.
    let second = run_guest(
        &format!(
            r#"{mount}
mount -t ext4 /dev/vda /var/lib/graft || fail mount
no_livepatch_left
json boot graft boot --json
grep -qx 'graft-a graft-b' /proc/version || fail "set version 2 is not live after boot"
limits_fixed || fail "set limits is not live after boot"
json status graft status --json
umount /var/lib/graft
"#
        ),
        with_disk,
    );
    let json = json_blocks(&second);
    let items = json["boot"]["items"].as_array().unwrap();
    let result = |name: &str| {
        items
            .iter()
            .find(|i| i["name"] == name)
            .map(|i| i["result"].as_str().unwrap().to_string())
    };
    assert_eq!(result("graft_set_version_1"), None, "superseded at install");
    assert_eq!(result("graft_set_version_2").as_deref(), Some("applied"));
    assert_eq!(result("graft_set_limits_1").as_deref(), Some("applied"));
    assert_eq!(result("graft_limits").as_deref(), Some("skipped"));
    assert_eq!(
        patch_names(&json["status"]),
        ["graft_set_limits_1", "graft_set_version_2"]
    );
    // Reboot with graft.disable=1: nothing is applied.
    let third = run_guest(
        &format!(
            r#"{mount}
mount -t ext4 /dev/vda /var/lib/graft || fail mount
expect 0 graft boot
no_livepatch_left
"#
        ),
        |spec| {
            with_disk(spec);
            spec.cmdline = "graft.disable=1".into();
        },
    );
    assert!(third.contains("graft.disable=1 is on the kernel command line: applying none of the 3 installed patches"), "{third}");
}

/// The apply benchmark runs end to end (it measures; this only checks that it reports).
#[test]
fn apply_benchmark_reports_both_guests() {
    let module = fixtures().join("graft_limits.ko");
    let json = graft(&[
        "bench",
        "apply",
        "--runs",
        "1",
        "--json",
        module.to_str().unwrap(),
    ]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{json}");
    assert_eq!(rows[0]["cmdline"], "norandmaps");
    for row in rows {
        assert_eq!(row["module"], "graft_limits");
        assert_eq!(row["graft_s"].as_array().unwrap().len(), 1);
        assert!(row["floor_median_s"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["ratio"].as_f64().unwrap() > 0.0, "{row}");
    }
}
