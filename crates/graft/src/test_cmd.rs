//! `graft test`: a livepatch module on its target, in the lab, start to finish.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use graft_lab::{GuestFile, Lab, RunSpec};

use crate::cli::TestArgs;
use crate::kernel_cmd::{ensure_kernel, target_and_cache};

/// Exit statuses of the guest script, one per step, so the caller knows which step failed.
const STEPS: &[(i32, &str)] = &[
    (2, "loading a target module failed"),
    (
        3,
        "the check passed before the patch was applied, so it cannot observe the fix",
    ),
    (4, "loading the livepatch module failed"),
    (5, "the patching transition did not finish"),
    (6, "the check failed with the patch live"),
    (7, "disabling or unloading the patch failed"),
];
/// The kernel log shows errors.
const EXIT_KERNEL_LOG: u8 = 8;
/// Written to the kernel log just before the patch loads: errors before it (a target module's
/// own self-test under emulation, say) are not the patch's.
const KMSG_MARK: &str = "graft-test: loading the patch";

/// The module name recorded in `.modinfo` (what the livepatch is called in sysfs).
fn module_name(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let info = graft_host::sys::modinfo(path, &bytes)?;
    Ok(graft_host::sys::livepatch_name(path, &info)?)
}

fn guest_script(
    name: &str,
    before: &[String],
    after: &[String],
    check: bool,
    baseline: bool,
    transition: u64,
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        r#"patch=/sys/kernel/livepatch/{name}
wait_for() {{
	i=0
	until eval "$1"; do
		i=$((i + 1))
		[ $i -lt {ticks} ] || return 1
		sleep 0.1
	done
}}
"#,
        ticks = transition * 10
    ));
    for m in before {
        s.push_str(&format!(
            "echo \"graft-test: load {m}\"; modprobe {m} || exit 2\n"
        ));
    }
    if baseline {
        s.push_str("echo 'graft-test: check before the patch (must fail)'\nif sh /root/graft-check.sh; then exit 3; fi\n");
    }
    s.push_str(&format!(
        "echo 'graft-test: apply {name}'\necho '{KMSG_MARK}' > /dev/kmsg\ninsmod /root/{name}.ko || exit 4\nwait_for '[ \"$(cat $patch/transition)\" = 0 ]' || exit 5\necho \"graft-test: patched, enabled=$(cat $patch/enabled)\"\n"
    ));
    for m in after {
        s.push_str(&format!(
            "echo \"graft-test: load {m}\"; modprobe {m} || exit 2\n"
        ));
    }
    if check {
        s.push_str(
            "echo 'graft-test: check with the patch live'\nsh /root/graft-check.sh || exit 6\n",
        );
    }
    s.push_str(&format!(
        "echo 'graft-test: disable {name}'\necho 0 > $patch/enabled || exit 7\nwait_for '[ ! -e $patch ]' || exit 7\nrmmod {name} || exit 7\necho 'graft-test: unloaded'\n"
    ));
    s
}

#[derive(serde::Serialize)]
struct TestReport<'a> {
    module: &'a str,
    passed: bool,
    failed_step: Option<&'a str>,
    kernel_log_errors: Vec<String>,
    kernel_log_errors_before_patch: Vec<String>,
    kernel_log: String,
    output: String,
}

/// One test of a module on its target, as `graft test` and `graft build --each --test` run it.
#[derive(Debug)]
pub struct TestPlan {
    /// The module.
    pub module: std::path::PathBuf,
    /// Target modules loaded before the patch.
    pub before: Vec<String>,
    /// Target modules loaded after it.
    pub after: Vec<String>,
    /// The check script.
    pub script: Option<std::path::PathBuf>,
    /// Whether the check must fail unpatched.
    pub baseline_fails: bool,
    /// Seconds each transition may take.
    pub transition_timeout: u64,
}

/// How a test ended.
#[derive(Debug)]
pub struct TestResult {
    /// The livepatch's name.
    pub name: String,
    /// 0 passed, else the exit status of the failed step.
    pub code: u8,
    /// What failed, if anything.
    pub failed_step: Option<String>,
    /// Kernel log lines that show errors since the patch was loaded.
    pub errors: Vec<String>,
    /// Errors the kernel logged before the patch was loaded (not the patch's).
    pub errors_before_patch: Vec<String>,
    /// The saved guest kernel log.
    pub log: std::path::PathBuf,
    /// The guest kernel log's text.
    pub log_text: String,
    /// What the guest printed.
    pub output: String,
    /// Seconds the run took.
    pub seconds: f64,
}

/// Runs `plan` on `kernel` in one lab boot; `echo` sees the guest's output as it comes.
pub fn run_plan(
    plan: &TestPlan,
    cache: &graft_cache::Cache,
    kernel: &graft_kernel::Kernel,
    progress: &graft_progress::SharedProgress,
    echo: &mut dyn FnMut(&[u8]),
) -> anyhow::Result<TestResult> {
    let name = module_name(&plan.module)?;
    let lab = Lab::new(cache.clone(), progress.clone())?;
    let index = kernel.module_index()?;
    let modules = plan
        .before
        .iter()
        .chain(&plan.after)
        .map(|m| {
            kernel
                .guest_module(&index, m)
                .with_context(|| format!("--load-module {m}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let script = guest_script(
        &name,
        &plan.before,
        &plan.after,
        plan.script.is_some(),
        plan.baseline_fails,
        plan.transition_timeout,
    );
    let mut spec = RunSpec::new(kernel.lab_kernel(), script);
    spec.modules = modules;
    spec.files.push(GuestFile {
        source: plan.module.clone(),
        dest: format!("/root/{name}.ko"),
    });
    if let Some(check) = &plan.script {
        spec.files.push(GuestFile {
            source: check.clone(),
            dest: "/root/graft-check.sh".into(),
        });
    }
    spec.timeout = Duration::from_secs(plan.transition_timeout * 2 + 300);
    let mut output = Vec::new();
    let outcome = lab.run(&spec, &mut |bytes| {
        output.extend_from_slice(bytes);
        echo(bytes);
    })?;
    let log_text = outcome.kernel_log();
    let (before_patch, since_patch) = match log_text.find(KMSG_MARK) {
        Some(at) => log_text.split_at(at),
        None => ("", log_text.as_str()),
    };
    let bad = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| graft_host::kmsg::is_bad(l))
            .map(|l| l.trim().to_string())
            .collect()
    };
    let errors = bad(since_patch);
    let errors_before_patch = bad(before_patch);
    let failed_step = STEPS
        .iter()
        .find(|(code, _)| *code == outcome.exit_code)
        .map(|(_, what)| *what);
    let (code, failed_step) = match (outcome.exit_code, errors.is_empty()) {
        (0, true) => (0u8, None),
        (0, false) => (
            EXIT_KERNEL_LOG,
            Some("the kernel log shows errors".to_string()),
        ),
        (c, _) => (
            u8::try_from(c).unwrap_or(1),
            Some(
                failed_step
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("the guest script failed with status {c}")),
            ),
        ),
    };
    Ok(TestResult {
        name,
        code,
        failed_step,
        errors,
        errors_before_patch,
        log: outcome.log.clone(),
        log_text,
        output: String::from_utf8_lossy(&output).into_owned(),
        seconds: outcome.total_time.as_secs_f64(),
    })
}

/// Splits `NAME[@before|@after]` specs.
pub fn split_load_modules(specs: &[String]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for spec in specs {
        let (module, when) = spec.split_once('@').unwrap_or((spec.as_str(), "before"));
        match when {
            "before" => before.push(module.to_string()),
            "after" => after.push(module.to_string()),
            other => {
                anyhow::bail!("--load-module {spec}: `{other}` is neither `before` nor `after`")
            }
        }
    }
    Ok((before, after))
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    if !args.module.is_file() {
        anyhow::bail!("{}: no such module", args.module.display());
    }
    if let Some(script) = &args.script {
        if !script.is_file() {
            anyhow::bail!("--script {}: no such file", script.display());
        }
    }
    let (before, after) = split_load_modules(&args.load_modules)?;
    let (target, cache) = target_and_cache(&args.kernel.target)?;
    let progress = crate::progress::for_output(args.json);
    let kernel = ensure_kernel(&cache, &target, &progress)?;
    let plan = TestPlan {
        module: args.module.clone(),
        before,
        after,
        script: args.script.clone(),
        baseline_fails: args.baseline_fails,
        transition_timeout: args.transition_timeout,
    };
    let json = args.json;
    let result = {
        let mut stdout = std::io::stdout().lock();
        run_plan(&plan, &cache, &kernel, &progress, &mut |bytes| {
            if !json {
                let _ = stdout.write_all(bytes);
                let _ = stdout.flush();
            }
        })?
    };
    if args.show_dmesg {
        eprintln!(
            "--- guest kernel log ({}) ---\n{}--- end of guest kernel log ---",
            result.log.display(),
            result.log_text
        );
    }
    if json {
        let report = TestReport {
            module: &result.name,
            passed: result.code == 0,
            failed_step: result.failed_step.as_deref(),
            kernel_log_errors: result.errors.clone(),
            kernel_log_errors_before_patch: result.errors_before_patch.clone(),
            kernel_log: result.log.display().to_string(),
            output: result.output.clone(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    if !json && !result.errors_before_patch.is_empty() {
        eprintln!(
            "graft-test: note: before the patch was loaded, the kernel logged {} error line(s), not counted: {}",
            result.errors_before_patch.len(),
            result.errors_before_patch[0]
        );
    }
    match &result.failed_step {
        None => {
            if !json {
                println!(
                    "graft-test: {} passed on {target} ({:.1} s)",
                    result.name, result.seconds
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(what) => {
            eprintln!("graft: test of {} failed: {what}", result.name);
            for e in result.errors.iter().take(10) {
                eprintln!("  kernel: {e}");
            }
            eprintln!("  kernel log: {}", result.log.display());
            Ok(ExitCode::from(result.code))
        }
    }
}
