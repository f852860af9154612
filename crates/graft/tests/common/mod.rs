//! Helpers shared by the end-to-end tests: running the built `graft`, and the default target.

#![allow(dead_code, reason = "each test binary uses the helpers it needs")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `graft` binary of this build.
pub fn graft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_graft"))
}

/// Bytes as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `command` with no input, printing what it wrote (shown when a test fails).
pub fn run(command: &mut Command) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    eprintln!(
        "$ {command:?}\nstdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    output
}

/// Runs `command`, requires success, and parses its stdout as JSON.
pub fn run_json(command: &mut Command) -> serde_json::Value {
    let output = run(command);
    assert!(output.status.success(), "{command:?} failed");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{command:?} printed no JSON: {e}"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Fetches `target` into the normal cache (a no-op when it is there), failing clearly.
pub fn fetch(target: &str) {
    let output = run(graft().args(["kernel", "fetch", "--kernel", target]));
    assert!(
        output.status.success(),
        "graft kernel fetch --kernel {target} failed: {}",
        text(&output.stderr)
    );
}

/// Writes `body` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// A one-line fix of /proc/cmdline: the running kernel shows a marker after the command line.
pub const CMDLINE_PATCH: &str = "--- a/fs/proc/cmdline.c
+++ b/fs/proc/cmdline.c
@@ -7,7 +7,7 @@
 
 static int cmdline_proc_show(struct seq_file *m, void *v)
 {
-\tseq_puts(m, saved_command_line);
+\tseq_printf(m, \"%s graft_fresh_target\", saved_command_line);
 \tseq_putc(m, '\\n');
 \treturn 0;
 }
";

/// The check of [`CMDLINE_PATCH`].
pub const CMDLINE_CHECK: &str = "grep -q graft_fresh_target /proc/cmdline\n";
