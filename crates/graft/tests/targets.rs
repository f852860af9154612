//! Targets as Debian's archive has them today: several kernels side by side, a fetch into an
//! empty cache of a kernel other than the default, and Debian's own security updates turned
//! into live patches that go live on the real kernels in the lab.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

mod common;

use common::{fetch, graft, run, run_json, text, write, CMDLINE_CHECK, CMDLINE_PATCH};
use graft_kernel::known::{archive, default_target};
use graft_kernel::DEFAULT_TARGET;

#[test]
fn kernel_list_shows_the_archive_kernels_with_their_versions() {
    let list = run_json(graft().args(["kernel", "list", "--json"]));
    let list = list.as_array().unwrap();
    for (target, source_version) in archive::TARGETS {
        let entry = list
            .iter()
            .find(|k| k["target"] == *target)
            .unwrap_or_else(|| panic!("{target} is not listed"));
        assert_eq!(entry["source_version"], *source_version, "{target}");
        assert_eq!(entry["image"], true, "{target}");
        assert_eq!(entry["obtainable"], true, "{target}: {}", entry["notes"]);
    }
    // Only the requested flavour, and the default marked.
    assert!(list
        .iter()
        .all(|k| !k["target"].as_str().unwrap().contains("cloud")));
    let default = list.iter().find(|k| k["default"] == true).unwrap();
    assert_eq!(default["target"], DEFAULT_TARGET);
    // The oldest target's kbuild is built from its own source (the archive keeps only the
    // newest kbuild), and the listing says so.
    let oldest = list
        .iter()
        .find(|k| k["target"] == archive::OLDEST)
        .unwrap();
    assert_eq!(oldest["kbuild_from_source"], true);
}

/// Regression: an exact-version pin on kbuild broke every fresh machine the day Debian
/// published a newer kbuild. A non-default target goes from an empty cache to a live fix.
#[test]
fn a_fresh_cache_fetches_another_target_and_a_fix_goes_live_on_it() {
    let cache = tempfile::tempdir().unwrap();
    let env = |c: &mut std::process::Command| {
        c.env("GRAFT_CACHE", cache.path());
    };
    let mut fetch = graft();
    env(&mut fetch);
    let report = run_json(fetch.args(["kernel", "fetch", "--json", "--kernel", archive::FRESH]));
    let stages: Vec<&str> = report["built"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[0].as_str().unwrap())
        .collect();
    assert!(
        stages.contains(&"kbuild") && stages.contains(&"kallsyms.txt"),
        "{stages:?}"
    );

    let mut info = graft();
    env(&mut info);
    let info = run_json(info.args(["kernel", "info", "--json", "--kernel", archive::FRESH]));
    let (_, source_version) = archive::TARGETS
        .iter()
        .find(|(t, _)| *t == archive::FRESH)
        .unwrap();
    assert_eq!(info["source_version"], *source_version);
    let roles: Vec<&str> = info["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["role"].as_str())
        .collect();
    assert_eq!(
        roles,
        ["image", "headers", "headers-common", "kbuild", "source"]
    );
    for package in info["packages"].as_array().unwrap() {
        assert_eq!(package["sha256"].as_str().unwrap().len(), 64, "{package}");
    }

    let dir = tempfile::tempdir().unwrap();
    let patch = write(dir.path(), "fix.patch", CMDLINE_PATCH);
    let check = write(dir.path(), "check.sh", CMDLINE_CHECK);
    let module = dir.path().join("fix.ko");
    let mut build = graft();
    env(&mut build);
    let built = run(build
        .args(["build", "--kernel", archive::FRESH, "-o"])
        .arg(&module)
        .arg(&patch));
    assert!(built.status.success());
    let mut test = graft();
    env(&mut test);
    let tested = run(test
        .args([
            "test",
            "--kernel",
            archive::FRESH,
            "--baseline-fails",
            "--script",
        ])
        .arg(&check)
        .arg(&module));
    assert!(tested.status.success(), "{}", text(&tested.stderr));
}

fn changes(target: &str, to: &str, out: &std::path::Path) -> serde_json::Value {
    run_json(
        graft()
            .args([
                "kernel", "changes", "--json", "--kernel", target, "--to", to, "-o",
            ])
            .arg(out),
    )
}

/// Debian's nfsd security update, taken from Debian's own source package, goes live on the
/// kernel before it with nfsd loaded.
#[test]
fn debian_update_becomes_a_live_patch() {
    fetch(DEFAULT_TARGET);
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("update.patch");
    let summary = changes(DEFAULT_TARGET, archive::NFSD_UPDATE, &patch);
    assert_eq!(summary["from"], default_target::SOURCE_VERSION);
    assert_eq!(summary["files_changed"], 1);
    assert_eq!(summary["cves"][0], archive::NFSD_CVE);
    let text_of_patch = std::fs::read_to_string(&patch).unwrap();
    assert!(text_of_patch.contains(archive::NFSD_CVE));
    assert!(text_of_patch.contains("+++ b/fs/nfsd/nfs4state.c"));

    let module = dir.path().join("update.ko");
    let report = run_json(
        graft()
            .args(["build", "--json", "-o"])
            .arg(&module)
            .arg(&patch),
    );
    let functions: Vec<String> = report["manifest"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{}:{}",
                f["object"].as_str().unwrap(),
                f["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        functions.iter().any(|f| f == archive::NFSD_FUNCTION),
        "{functions:?}"
    );
    let tested = run(graft().args(["test", "--load-module", "nfsd"]).arg(&module));
    assert!(tested.status.success(), "{}", text(&tested.stderr));
}

/// Two Debian updates (ext4's mballoc fix, then nfsd's) make one cumulative patch.
#[test]
fn two_debian_updates_make_one_cumulative_patch() {
    let target = archive::TWO_UPDATES_BEHIND;
    fetch(target);
    let dir = tempfile::tempdir().unwrap();
    let patch = dir.path().join("updates.patch");
    let summary = changes(target, archive::NFSD_UPDATE, &patch);
    assert_eq!(
        summary["changelog_entries"].as_array().unwrap().len(),
        2,
        "{summary}"
    );
    let module = dir.path().join("updates.ko");
    let report = run_json(
        graft()
            .args(["build", "--json", "--kernel", target, "-o"])
            .arg(&module)
            .arg(&patch),
    );
    let objects: Vec<&str> = report["manifest"]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["object"].as_str().unwrap())
        .collect();
    assert!(
        objects.contains(&"ext4") && objects.contains(&"nfsd"),
        "{objects:?}"
    );
    let tested = run(graft()
        .args([
            "test",
            "--kernel",
            target,
            "--load-module",
            "ext4",
            "--load-module",
            "nfsd",
        ])
        .arg(&module));
    assert!(tested.status.success(), "{}", text(&tested.stderr));

    // The same update split per file, then built patch by patch.
    let split = dir.path().join("split");
    let report = run_json(
        graft()
            .args(["kernel", "changes", "--json", "--kernel", target, "--to"])
            .arg(archive::NFSD_UPDATE)
            .arg("--split")
            .arg(&split),
    );
    let files: Vec<&str> = report["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["file"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["fs/ext4/mballoc.c", "fs/nfsd/nfs4state.c"]);
    let each = run(graft()
        .args(["build", "--json", "--kernel", target, "--each"])
        .arg(&split));
    assert!(each.status.success());
    let each: serde_json::Value = serde_json::from_slice(&each.stdout).unwrap();
    assert_eq!(each["counts"]["built"], 2, "{each}");
}

#[test]
fn bad_update_versions_are_refused_and_nothing_is_written() {
    fetch(DEFAULT_TARGET);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("u.patch");
    let (_, older) = archive::TARGETS[0];
    for (to, says) in [
        (older, "older than the target's source"),
        (default_target::SOURCE_VERSION, "nothing to change"),
        ("6.1.999-1", "has no linux-source-6.1 at that version"),
        ("6.12.1-1", "not of the target's series 6.1"),
        ("not-a-version", "not a Debian version"),
    ] {
        let o = run(graft()
            .args(["kernel", "changes", "--to", to, "-o"])
            .arg(&out));
        assert_eq!(o.status.code(), Some(1), "{to}");
        let stderr = text(&o.stderr);
        assert!(stderr.contains(says), "{to}: {stderr}");
        assert!(stderr.contains(&format!("--to {to}")), "{to}: {stderr}");
        assert!(!out.exists(), "{to}: a patch was written");
    }
    // A split never goes into a directory that holds something already.
    let full = dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    write(&full, "keep.txt", "mine");
    let o = run(graft()
        .args(["kernel", "changes", "--to", archive::NFSD_UPDATE, "--split"])
        .arg(&full));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("is not empty"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
}

#[test]
fn kbuild_says_which_sources_this_configuration_builds() {
    fetch(DEFAULT_TARGET);
    let rows = run_json(graft().args([
        "kernel",
        "sources",
        "--json",
        "fs/proc/cmdline.c",
        "fs/erofs/super.c",
        "fs/ext2/inode.c",
        "fs/erofs/decompressor_lzma.c",
    ]));
    let kinds: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["membership"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["built-in", "module", "not-built", "not-built"]);
    assert!(rows[2]["membership"]["reason"]
        .as_str()
        .unwrap()
        .contains("CONFIG_EXT2_FS is not set"));
    assert!(rows[3]["membership"]["reason"]
        .as_str()
        .unwrap()
        .contains("CONFIG_EROFS_FS_ZIP_LZMA is not set"));

    // A fix of a file this configuration does not build: nothing to patch, its own status.
    let dir = tempfile::tempdir().unwrap();
    let patch = write(
        dir.path(),
        "ext2.patch",
        "--- a/fs/ext2/inode.c\n+++ b/fs/ext2/inode.c\n@@ -1,1 +1,2 @@\n // SPDX-License-Identifier: GPL-2.0\n+/* a fix of code this kernel does not run */\n",
    );
    let out = dir.path().join("ext2.ko");
    let o = run(graft()
        .args(["build", "--json", "-o"])
        .arg(&out)
        .arg(&patch));
    assert_eq!(o.status.code(), Some(3));
    let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(verdict["outcome"], "not-built-in-config");
    assert!(!out.exists());
}

/// Another Debian revision of the kernel's compiler version passes the gate, with a note.
#[test]
fn another_revision_of_the_compiler_version_is_accepted_with_a_note() {
    fetch(DEFAULT_TARGET);
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let expected = default_target::COMPILER;
    let other = expected.replace("deb12u1", "deb12u9");
    assert_ne!(other, expected);
    let fake = write(
        &bin,
        "gcc-12",
        &format!("#!/bin/sh\n[ \"$1\" = --version ] && {{ echo '{other}'; exit 0; }}\nexec /usr/bin/gcc-12 \"$@\"\n"),
    );
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&fake)
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let info = run_json(graft().env("PATH", path).args(["kernel", "info", "--json"]));
    assert_eq!(info["compiler_matches"], true);
    let note = info["compiler_note"].as_str().unwrap();
    assert!(
        note.contains("deb12u1") && note.contains("deb12u9"),
        "{note}"
    );
}

#[test]
fn kernel_remove_frees_a_target_and_only_it() {
    let cache = tempfile::tempdir().unwrap();
    // Two entries shaped like fetched targets.
    for key in ["debian-6.1.0-54-amd64", "debian-6.1.0-55-amd64"] {
        let dir = cache.path().join("kernels").join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("image"), vec![0u8; 4096]).unwrap();
    }
    let removed = run_json(graft().env("GRAFT_CACHE", cache.path()).args([
        "kernel",
        "remove",
        "--json",
        "--kernel",
        "debian:6.1.0-54-amd64",
    ]));
    assert_eq!(removed["existed"], true);
    assert!(removed["bytes"].as_u64().unwrap() >= 4096);
    assert!(!cache.path().join("kernels/debian-6.1.0-54-amd64").exists());
    assert!(cache
        .path()
        .join("kernels/debian-6.1.0-55-amd64/image")
        .exists());
    let again = run_json(graft().env("GRAFT_CACHE", cache.path()).args([
        "kernel",
        "remove",
        "--json",
        "--kernel",
        "debian:6.1.0-54-amd64",
    ]));
    assert_eq!(again["existed"], false);
}

#[test]
fn without_apt_listing_and_fetching_say_so() {
    let cache = tempfile::tempdir().unwrap();
    for args in [
        &["kernel", "list"][..],
        &["kernel", "fetch", "--kernel", archive::FRESH][..],
    ] {
        let o = run(graft()
            .env("PATH", "/nonexistent")
            .env("GRAFT_CACHE", cache.path())
            .args(args));
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let stderr = text(&o.stderr);
        assert!(
            stderr.contains("`apt-cache` was not found"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        !cache.path().join("kernels/debian-6.1.0-57-amd64").exists(),
        "a half-made entry was left"
    );
}
