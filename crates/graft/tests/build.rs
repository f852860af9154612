//! `graft build` against the real default target: reproducibility and every refusal path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

const CMDLINE_PATCH: &str = "--- a/fs/proc/cmdline.c\n+++ b/fs/proc/cmdline.c\n@@ -7,7 +7,7 @@\n \n static int cmdline_proc_show(struct seq_file *m, void *v)\n {\n-\tseq_puts(m, saved_command_line);\n+\tseq_printf(m, \"%s graft\", saved_command_line);\n \tseq_putc(m, '\\n');\n \treturn 0;\n }\n";

fn graft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graft"));
    c.stdin(Stdio::null());
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    eprintln!("stdout:\n{}\nstderr:\n{}", text(&o.stdout), text(&o.stderr));
    o
}

fn fetched() {
    let o = run(graft().args(["kernel", "fetch"]));
    assert!(o.status.success());
}

fn write_patch(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn same_inputs_give_a_byte_identical_module_and_a_matching_manifest() {
    fetched();
    let dir = tempfile::tempdir().unwrap();
    let patch = write_patch(dir.path(), "fix.patch", CMDLINE_PATCH);
    let mut modules = Vec::new();
    for n in ["one", "two"] {
        let out = dir.path().join(n).join("fix.ko");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let o = run(graft()
            .args(["build", "--json", "-o"])
            .arg(&out)
            .arg(&patch));
        assert!(o.status.success());
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            report["manifest"]["functions"][0]["name"],
            "cmdline_proc_show"
        );
        assert_eq!(report["manifest"]["replace"], true);
        modules.push(std::fs::read(&out).unwrap());
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
                .unwrap();
        let digest = Command::new("sha256sum").arg(&out).output().unwrap();
        assert!(text(&digest.stdout).starts_with(manifest["module"]["sha256"].as_str().unwrap()));
    }
    assert!(
        modules[0] == modules[1],
        "two builds of the same patch differ"
    );
}

#[test]
fn stacking_mode_is_recorded() {
    fetched();
    let dir = tempfile::tempdir().unwrap();
    let patch = write_patch(dir.path(), "fix.patch", CMDLINE_PATCH);
    let out = dir.path().join("stack.ko");
    let o = run(graft()
        .args(["build", "--no-replace", "-o"])
        .arg(&out)
        .arg(&patch));
    assert!(o.status.success());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(manifest["replace"], false);
}

#[test]
fn bad_inputs_are_refused_naming_the_problem_and_leave_no_output() {
    fetched();
    let dir = tempfile::tempdir().unwrap();
    let good = write_patch(dir.path(), "fix.patch", CMDLINE_PATCH);
    let stale = write_patch(
        dir.path(),
        "stale.patch",
        &CMDLINE_PATCH.replace(
            "seq_puts(m, saved_command_line)",
            "seq_puts(m, no_such_line)",
        ),
    );
    let makefile = write_patch(
        dir.path(),
        "make.patch",
        "--- a/Makefile\n+++ b/Makefile\n@@ -1 +1 @@\n-x\n+y\n",
    );
    let notdiff = write_patch(dir.path(), "notes.txt", "just words\n");
    let out = dir.path().join("out.ko");
    // Bad input fails (1); a well-formed patch graft will not make is refused (2).
    let cases: Vec<(Vec<std::ffi::OsString>, &str)> = vec![
        (
            vec![
                "build".into(),
                "-o".into(),
                out.clone().into(),
                dir.path().join("missing.patch").into(),
            ],
            "no such patch file",
        ),
        (
            vec![
                "build".into(),
                "-o".into(),
                dir.path().join("out.txt").into(),
                good.clone().into(),
            ],
            "the output must be a .ko file",
        ),
        (
            vec![
                "build".into(),
                "-o".into(),
                out.clone().into(),
                stale.into(),
            ],
            "does not apply to the target's source",
        ),
        (
            vec![
                "build".into(),
                "-o".into(),
                out.clone().into(),
                makefile.into(),
            ],
            "Makefile: only C sources and headers can be live patched",
        ),
        (
            vec![
                "build".into(),
                "-o".into(),
                out.clone().into(),
                notdiff.into(),
            ],
            "not a unified diff",
        ),
        (
            vec![
                "build".into(),
                "--name".into(),
                "bad name!".into(),
                "-o".into(),
                out.clone().into(),
                good.clone().into(),
            ],
            "is not a usable module name",
        ),
    ];
    for (args, message) in cases {
        let o = run(graft().args(&args));
        let expected = if message.contains("only C sources") {
            2
        } else {
            1
        };
        assert_eq!(o.status.code(), Some(expected), "{args:?}");
        assert!(
            text(&o.stderr).contains(message),
            "{args:?}: expected {message:?}"
        );
        assert!(
            !out.exists() && !out.with_extension("json").exists(),
            "{args:?} left output"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().contains(".tmp-")),
        "{leftovers:?}"
    );
}

/// A machine whose gcc-12 is not the kernel's compiler must not build patches.
#[test]
fn another_compiler_is_refused() {
    fetched();
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("gcc-12");
    std::fs::write(&fake, "#!/bin/sh\necho 'gcc-12 (Other 12.9.0-1) 12.9.0'\n").unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&fake)
        .status()
        .unwrap();
    let patch = write_patch(dir.path(), "fix.patch", CMDLINE_PATCH);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = dir.path().join("fix.ko");
    let o = run(graft()
        .env("PATH", path)
        .args(["build", "-o"])
        .arg(&out)
        .arg(&patch));
    assert_eq!(o.status.code(), Some(1));
    let stderr = text(&o.stderr);
    assert!(
        stderr.contains("the kernel was built by `gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("`gcc-12 (Other 12.9.0-1) 12.9.0`"),
        "{stderr}"
    );
    assert!(!out.exists());
}
