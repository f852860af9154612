//! What the host tests share: the default target, the livepatches they apply (built once per
//! run), and running a script in a lab guest with them.

#![allow(dead_code, reason = "each test binary uses the helpers it needs")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use graft_kernel::{Kernel, Target, DEFAULT_TARGET};
use graft_lab::{GuestFile, Lab, RunSpec};
use graft_manifest::{Digest256, Manifest, ManifestFunction, ManifestKernel};

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn graft(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_graft"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("graft runs");
    assert!(
        output.status.success(),
        "graft {args:?} failed:\n{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

/// The default target, fetched once per test run.
pub fn kernel() -> &'static Kernel {
    static KERNEL: OnceLock<Kernel> = OnceLock::new();
    KERNEL.get_or_init(|| {
        graft(&["kernel", "fetch"]);
        let cache = graft_cache::Cache::from_env().unwrap();
        let target: Target = DEFAULT_TARGET.parse().unwrap();
        Kernel::open(&cache, &target).unwrap()
    })
}

/// Livepatches built by `graft build`: (name, build flags, patches).
pub const BUILDS: &[(&str, &[&str], &[&str])] = &[
    ("graft_version_a", &["--no-replace"], &["version-a"]),
    (
        "graft_version_ab",
        &["--no-replace"],
        &["version-a", "version-b"],
    ),
    ("graft_version_c", &["--no-replace"], &["version-c"]),
    ("graft_limits", &[], &["limits"]),
    ("graft_set_version_1", &["--set", "version"], &["version-a"]),
    (
        "graft_set_version_2",
        &["--set", "version"],
        &["version-a", "version-b"],
    ),
    ("graft_set_limits_1", &["--set", "limits"], &["limits"]),
    ("graft_set_other", &["--set", "other"], &["version-c"]),
];

/// Builds every fixture once: the livepatches above, and the stall fixture with its patch and
/// a manifest for that hand-written patch.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let kernel = kernel();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("host-fixtures");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, flags, patches) in BUILDS {
            let out = dir.join(format!("{name}.ko"));
            let mut args = vec![
                "build".to_string(),
                "--name".into(),
                name.to_string(),
                "-o".into(),
                out.display().to_string(),
            ];
            args.extend(flags.iter().map(|f| f.to_string()));
            for p in *patches {
                let path = if *p == "limits" {
                    repo_root().join("tests/cases/proc-pid-limits-header/fix.patch")
                } else {
                    repo_root().join(format!("tests/host/patches/{p}.patch"))
                };
                args.push(path.display().to_string());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            graft(&args);
        }
        let built = kernel
            .build_external_module(
                &repo_root().join("tests/fixtures/stall"),
                &dir.join("stall"),
            )
            .unwrap();
        for ko in &built {
            std::fs::copy(ko, dir.join(ko.file_name().unwrap())).unwrap();
        }
        let patch = dir.join("graft_stall_patch.ko");
        let bytes = std::fs::read(&patch).unwrap();
        let function = |name: &str| ManifestFunction {
            object: "graft_stall_fixture".into(),
            name: name.into(),
            sympos: 0,
            old_size: 0,
            new_size: 0,
            unit: "tests/fixtures/stall/graft_stall_fixture.c".into(),
        };
        let manifest = Manifest {
            name: "graft_stall_patch".into(),
            kernel: ManifestKernel {
                target: DEFAULT_TARGET.into(),
                release: kernel.target().release.clone(),
                build_id: kernel.meta().build_id.clone(),
            },
            replace: false,
            set: None,
            functions: vec![
                function("graft_stall_wait"),
                function("graft_stall_version"),
            ],
            new_functions: Vec::new(),
            patches: Vec::new(),
            module: Digest256 {
                file: "graft_stall_patch.ko".into(),
                sha256: graft_manifest::sha256(&bytes),
            },
            graft_version: "fixture".into(),
        };
        std::fs::write(
            dir.join("graft_stall_patch.json"),
            serde_json::to_string_pretty(&manifest).unwrap(),
        )
        .unwrap();
        dir
    })
}

/// Shell helpers every guest script starts with.
pub const PRELUDE: &str = r#"
fail() { echo "FAIL: $*"; exit 1; }
# expect CODE COMMAND...: runs COMMAND (output shown) and fails unless it exits with CODE.
expect() {
	want=$1; shift
	echo "\$ $*"
	"$@"; rc=$?
	[ "$rc" = "$want" ] || fail "'$*' exited $rc, expected $want"
}
# json NAME COMMAND...: prints COMMAND's stdout between markers for the test to parse.
json() {
	name=$1; shift
	echo "@@json-begin $name"
	"$@" 2>/tmp/json-stderr
	echo "@@json-end"
	cat /tmp/json-stderr
}
patches() { ls /sys/kernel/livepatch | tr '\n' ' '; }
no_livepatch_left() {
	[ -z "$(ls /sys/kernel/livepatch)" ] || fail "livepatches left: $(patches)"
	grep -q '(.*K.*)$' /proc/modules && fail "livepatch modules left: $(cat /proc/modules)"
	return 0
}
limits_fixed() { head -n 1 /proc/self/limits | grep -q 'Units$'; }
"#;

/// Runs a guest script with the fixtures in /root/p and returns its output (the script must
/// exit 0).
pub fn run_guest(script: &str, tune: impl FnOnce(&mut RunSpec)) -> String {
    let kernel = kernel();
    let dir = fixtures();
    let mut spec = RunSpec::new(kernel.lab_kernel(), format!("{PRELUDE}\n{script}"));
    spec.graft_binary = Some(PathBuf::from(env!("CARGO_BIN_EXE_graft")));
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            spec.files.push(GuestFile {
                source: path,
                dest: format!("/root/p/{name}"),
            });
        }
    }
    spec.timeout = Duration::from_secs(600);
    tune(&mut spec);
    let lab = Lab::new(
        graft_cache::Cache::from_env().unwrap(),
        graft_progress::silent(),
    )
    .unwrap();
    let mut output = Vec::new();
    let outcome = lab
        .run(&spec, &mut |b| output.extend_from_slice(b))
        .unwrap_or_else(|e| panic!("lab run failed: {e}\noutput: {}", text(&output)));
    let output = text(&output);
    eprintln!("guest output:\n{output}");
    assert_eq!(outcome.exit_code, 0, "the guest script failed:\n{output}");
    output
}

/// The JSON documents the guest printed with `json NAME ...`.
pub fn json_blocks(output: &str) -> BTreeMap<String, serde_json::Value> {
    let mut blocks = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("@@json-begin ") {
            current = Some((name.trim().to_string(), String::new()));
        } else if line.starts_with("@@json-end") {
            let (name, body) = current.take().unwrap();
            let value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("{name}: not JSON ({e}):\n{body}"));
            blocks.insert(name, value);
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    blocks
}

pub fn patch_names(status: &serde_json::Value) -> Vec<String> {
    status["patches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

pub fn function<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no function {name} in {status:#}"))
}
