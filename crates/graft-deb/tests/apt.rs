//! graft-deb against the real apt and Debian archive, with a small package.

#![allow(
    clippy::unwrap_used,
    reason = "a panic in a test is a failed assertion"
)]

use std::fs;

const PACKAGE: &str = "busybox-static";

#[test]
fn a_corrupt_cached_download_is_replaced_by_a_verified_one() {
    let info = graft_deb::query(PACKAGE, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cached = dir.path().join(info.deb_file_name());
    fs::write(&cached, b"truncated download").unwrap();
    let path = graft_deb::download(&info, dir.path(), &graft_progress::Silent).unwrap();
    assert_eq!(path, cached);
    assert_eq!(fs::metadata(&path).unwrap().len(), info.size);
    // No scratch directory is left beside it.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

    let out = dir.path().join("root");
    let stats = graft_deb::unpack_deb(&path, &out, &graft_progress::Silent).unwrap();
    assert!(stats.files > 0);
    assert!(out.join("bin/busybox").is_file());
}

#[test]
fn an_unknown_version_is_named() {
    let err = graft_deb::query(PACKAGE, Some("0.0-graft-nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no busybox-static at version 0.0-graft-nonexistent"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_package_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.deb");
    fs::write(&fake, b"!<arch>\nnot really").unwrap();
    let err = graft_deb::unpack_deb(&fake, &dir.path().join("out"), &graft_progress::Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("fake.deb"), "{err}");
}
