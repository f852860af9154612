//! Command-line interface: what each command does, with examples, in `--help`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// graft builds live patches for running Linux kernels from source patches, proves them
/// against the exact kernel binary, tests them in a VM of that kernel, and applies them.
#[derive(Debug, Parser)]
#[command(
    name = "graft",
    version,
    propagate_version = true,
    max_term_width = 100
)]
#[command(
    after_help = "Start with `graft kernel fetch` (downloads and prepares the default target), \
then `graft lab run -- 'cat /proc/version'`.\nLogging: -v, -vv, or GRAFT_LOG=debug. Cache: GRAFT_CACHE (default ~/.cache/graft)."
)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug); GRAFT_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Target kernels: fetch one into the cache, describe it, look up its symbols.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// The lab: boot a target kernel in QEMU and run a script in it.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Turn source patches into a livepatch module for a target, proven against its code.
    ///
    /// Applies the patches (in order) to a scratch view of the target's prepared source,
    /// compiles only the translation units they touch, before and after, with the target's own
    /// kbuild commands, and compares the objects function by function. Changed and new
    /// functions go into the module; everything else they use stays a reference into the
    /// running kernel. Each replaced function is first matched byte for byte (modulo
    /// relocations) against the target's code image, which proves the build reproduces the
    /// running kernel and pins every local symbol's position (sympos). The module is linked
    /// with the target's kbuild, converted to the livepatch ELF format and checked.
    ///
    /// Writes OUT.ko and OUT.json (the manifest) only when every step passed.
    ///
    /// Exit status: 0 built; 1 failed (the patch does not apply or compile, a tool failed);
    /// 2 refused (the reason is printed); 3 not built in this configuration: the patch changes
    /// only code this kernel's config does not build, so there is nothing to patch; 4 no
    /// change: it compiles to the code the kernel already runs. With --json a failed build
    /// prints {"outcome": ..., "error": ...}.
    #[command(
        after_help = "Examples:\n  graft build -o fix.ko fix.patch\n  graft build --explain --no-replace -o fix2.ko a.patch b.patch\n  graft build --each update/ --sample 50 --seed 7 --test"
    )]
    Build(BuildArgs),
    /// Test a livepatch module on its target kernel, booted in the lab.
    ///
    /// In one boot: load the target modules marked @before, optionally check that SCRIPT fails
    /// on the unpatched kernel (--baseline-fails), load the patch and wait for its transition,
    /// load the modules marked @after, run SCRIPT (exit 0 = the fix is observed), disable the
    /// patch, wait for the reverse transition, unload it, and fail if the kernel logged a
    /// WARN, BUG, Oops or livepatch error from the moment the patch was loaded (errors logged
    /// before, by the target modules themselves, are shown as a note).
    ///
    /// Exit status: 0 passed; 2 a target module failed to load; 3 SCRIPT passed before the
    /// patch (with --baseline-fails); 4 the patch failed to load; 5 its transition did not
    /// finish; 6 SCRIPT failed; 7 disabling or unloading failed; 8 the kernel log shows
    /// errors; 124/125/126 as for `graft lab run`; 1 other errors.
    #[command(
        after_help = "Example: graft test fix.ko --script check.sh --load-module isofs@before"
    )]
    Test(TestArgs),
    /// Show the whole path on a target: fetch, build a livepatch, watch it go live in a VM.
    Demo(DemoArgs),
    /// The fleet, as an operator: hosts, kernels, streams of signed cumulative levels,
    /// publishing and assigning them, tokens, the audit log.
    Fleet(crate::fleet_cmd::FleetArgs),
    /// The fleet's server: create its data directory, serve the API.
    #[command(subcommand)]
    Server(crate::server_cmd::ServerCommand),
    /// The fleet, as a host: enroll, check in, verify and apply the level the fleet assigns.
    ///
    /// Each check-in asks for the desired state with the last ETag (an unchanged answer is a
    /// 304), verifies a new level's signature against the keys pinned at enrollment (refusing
    /// unsigned, tampered, expired or rolled-back metadata), checks the module's digest,
    /// applies it with graft's transition watch and reversal, and reports the outcome. When
    /// the server is away it keeps the host as it is and retries with jittered backoff.
    Agent(crate::fleet_cmd::AgentArgs),
    /// Benchmarks: graft against the floor of what it must do, measured in one run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Apply a livepatch module to the running kernel, and watch it go live on every task.
    ///
    /// Refuses, changing nothing: a module without its manifest (MODULE.json) or whose SHA-256
    /// differs from it; a module built for another kernel (release or build-id, read from
    /// /sys/kernel/notes); a patch whose functions another loaded patch already replaces in a
    /// way that would drop that patch's change, or that another replace set owns; a second
    /// transition while one runs. Then loads exactly the verified bytes (finit_module) and
    /// watches the transition, showing the tasks still pending. After --grace it names the
    /// tasks that block it: pid, command, state, stack and the patched function they are in.
    /// At --timeout it reverses the transition and unloads the module, so the kernel ends as it
    /// started. An atomic replace patch retires every older patch (their modules are unloaded);
    /// a patch of a replace set retires only its set's older patch, after its own transition.
    ///
    /// Every step is journaled in the state directory; if graft is killed, the next graft
    /// command finishes or rolls back the apply and says which.
    ///
    /// Exit status: 0 live; 3 the transition timed out and was reversed (the kernel is as
    /// before); 4 it timed out and is still in transition (--no-revert-on-timeout, or the
    /// reversal stalled too); 5 live, but retiring the superseded set patch stalled; 1 refused
    /// or failed before loading.
    #[command(
        after_help = "Examples:\n  graft apply fix.ko\n  graft apply --timeout 120 --grace 30 fix.ko\n  graft apply --timeout 300 --force --i-understand-force-is-permanent fix.ko"
    )]
    Apply(ApplyArgs),
    /// Disable a livepatch (an unpatching transition, watched like an apply) and unload it.
    ///
    /// Works on any loaded livepatch, graft's or not. At --timeout the patch is re-enabled, so
    /// the kernel ends as it started. Exit status: 0 reverted; 3 timed out and restored;
    /// 4 timed out and still in transition; 1 other errors.
    #[command(after_help = "Example: graft revert fix")]
    Revert(RevertArgs),
    /// Every loaded livepatch, and the kernel's health since the last apply.
    ///
    /// Shows each patch (graft's or not) in stack order: enabled, in transition, replace mode
    /// and set, objects and whether each is patched, functions, and the tasks still pending
    /// during a transition; for each patched function, which patch's version runs; livepatch
    /// modules left loaded without a patch; new kernel log errors (WARN, BUG, Oops, livepatch
    /// errors) and taints since the last apply; the installed patches. Reconciles actions of a
    /// graft that was killed first, and reports what it did.
    Status(StatusArgs),
    /// One line per loaded livepatch.
    List(StatusArgs),
    /// Keep a livepatch module in the state directory, for `graft boot` to apply at each boot.
    ///
    /// An atomic replace patch supersedes every installed patch for the same kernel; a replace
    /// set patch supersedes its set's older one. Installing does not apply: run `graft apply`
    /// for that.
    #[command(after_help = "Example: graft install fix.ko && graft apply fix.ko")]
    Install(InstallArgs),
    /// Remove an installed patch (a live one stays live; `graft revert` removes it now).
    Uninstall(UninstallArgs),
    /// Apply the installed patches for the running kernel, in order (run by graft.service).
    ///
    /// Does nothing when the kernel command line has graft.disable=1. Patches built for another
    /// kernel are skipped and listed; the first failure stops the rest. Exit status: 0 all
    /// applied (or disabled); 1 a patch failed.
    Boot(BootArgs),
}

/// Where graft keeps its journal and installed patches.
#[derive(Debug, Args)]
pub struct StateArg {
    /// The state directory.
    #[arg(long = "state-dir", value_name = "DIR", env = "GRAFT_STATE_DIR", default_value = graft_host::state::DEFAULT_STATE_DIR)]
    pub dir: PathBuf,
}

/// How long transitions may take.
#[derive(Debug, Args)]
pub struct TransitionArgs {
    /// Seconds before a stalled transition is reversed.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
    /// Seconds before the tasks blocking a transition are named.
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub state: StateArg,
    #[command(flatten)]
    pub transition: TransitionArgs,
    /// At the timeout, leave the transition running instead of reversing it.
    #[arg(long)]
    pub no_revert_on_timeout: bool,
    /// At the timeout, write `force`: every pending task is marked patched. Irreversible: the
    /// module can never be removed, and tasks inside the old code may still run it. Recorded.
    #[arg(
        long,
        requires = "i_understand_force_is_permanent",
        conflicts_with = "no_revert_on_timeout"
    )]
    pub force: bool,
    /// Confirms --force.
    #[arg(long, requires = "force")]
    pub i_understand_force_is_permanent: bool,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
    /// The livepatch module (its manifest MODULE.json beside it).
    #[arg(value_name = "MODULE.ko")]
    pub module: PathBuf,
}

#[derive(Debug, Args)]
pub struct RevertArgs {
    #[command(flatten)]
    pub state: StateArg,
    #[command(flatten)]
    pub transition: TransitionArgs,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
    /// The livepatch's name (as `graft status` shows it).
    pub name: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: StateArg,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub state: StateArg,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
    /// The livepatch module (its manifest MODULE.json beside it).
    #[arg(value_name = "MODULE.ko")]
    pub module: PathBuf,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    pub state: StateArg,
    /// The installed patch's name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct BootArgs {
    #[command(flatten)]
    pub state: StateArg,
    #[command(flatten)]
    pub transition: TransitionArgs,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time `graft build` for each FIX against the floor: compiling the affected units twice
    /// (unpatched and patched, by the target's own commands) plus linking the module with the
    /// target's kbuild. graft is timed warm (unpatched objects cached, the median of --runs)
    /// and cold (those objects dropped first); both are printed as ratios of the floor.
    #[command(
        after_help = "Example: graft bench build tests/cases/proc-pid-limits-header tests/cases/uts-names-reject-control-chars"
    )]
    Build(BenchBuildArgs),
    /// Time `graft apply` against the floor, in a VM of the module's target: the floor is
    /// loading the module with busybox insmod and polling its `transition` file in a shell
    /// loop until it reads 0. Each run of either is from the start of the command to the
    /// transition done, the module reverted between runs; the medians and their ratio are
    /// printed.
    #[command(after_help = "Example: graft bench apply --runs 7 fix.ko")]
    Apply(BenchApplyArgs),
    /// The guest half of `graft bench apply` (runs inside the lab VM).
    #[command(hide = true)]
    ApplyGuest(BenchApplyGuestArgs),
    /// Measure the rollout health gates on a seeded model of a fleet's kernel metrics: how
    /// often an injected regression halts a rollout in its first wave (detection), and how
    /// often a clean rollout is halted in any wave (false halts), over --runs seeded runs.
    ///
    /// Hosts differ from each other (log-normal levels per host) and from window to window,
    /// and every treated host shows the patching spike while its patch goes live; the gates
    /// are those a rollout uses: hard gates, then a one-sided Mann-Whitney U test per metric
    /// against the control group with an effect-size floor, the patching window judged apart.
    #[command(
        after_help = "Example: graft bench gates --runs 200 --seed 1 --regression tcp_retransmits=2.0"
    )]
    Gates(BenchGatesArgs),
    /// Measure staged rollouts end to end: seeded runs through a real server (its own, on
    /// loopback) and its rollout driver, to simulated hosts that report health samples from
    /// the model `bench gates` uses. Each run rolls out a level with the regression (did it
    /// halt within its first wave?) and then a clean level (was it halted in any wave?).
    ///
    /// A benchmark: it measures detection and false-halt rates and how long runs took; it
    /// asserts nothing. The hosts are enrolled once; every run publishes the next level.
    #[command(
        after_help = "Example: graft bench rollouts --runs 200 --hosts 2000 --interval 1 --bake 3s --json"
    )]
    Rollouts(BenchRolloutsArgs),
}

#[derive(Debug, Args)]
pub struct BenchRolloutsArgs {
    /// Seeded runs of each case.
    #[arg(long, default_value_t = 200)]
    pub runs: u64,
    /// The first run's seed (run k uses seed + k).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Simulated hosts.
    #[arg(long, default_value_t = 2000)]
    pub hosts: u64,
    /// Seconds between a host's check-ins.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Bake per wave.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub bake: std::time::Duration,
    /// Cumulative wave shares, in percent, ending at 100.
    #[arg(long, default_value = "1,5,25,100")]
    pub waves: String,
    /// The injected regression, METRIC=FACTOR on hosts running the level under test.
    #[arg(long, default_value = "tcp_retransmits=2.0")]
    pub regression: String,
    /// Share of the hosts the server did not ask for health that report each interval
    /// (the sampled ones always do).
    #[arg(long, default_value_t = 0.0)]
    pub report_share: f64,
    /// Hosts per side the server's gates read and ask for health (`server run --gate-hosts`).
    #[arg(long, default_value_t = 200)]
    pub gate_hosts: u64,
    /// Worker threads of the simulator.
    #[arg(long, default_value_t = 8)]
    pub workers: usize,
    /// The PostgreSQL database the server uses (default: SQLite in a temporary directory).
    #[arg(long)]
    pub database: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchGatesArgs {
    /// Seeded runs of each case.
    #[arg(long, default_value_t = 200)]
    pub runs: u64,
    /// The first run's seed (run k uses seed + k).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Hosts on the stream.
    #[arg(long, default_value_t = 10_000)]
    pub hosts: u64,
    /// Cumulative wave shares, in percent, ending at 100.
    #[arg(long, default_value = "1,5,25,100")]
    pub waves: String,
    /// The injected regression, METRIC=FACTOR on treated hosts' steady state (metrics:
    /// tcp_retransmits, io_latency_ms, softirq_pct).
    #[arg(long, default_value = "tcp_retransmits=2.0")]
    pub regression: String,
    /// Control hosts per treated host (at most the hosts not yet treated).
    #[arg(long, default_value_t = 2)]
    pub control_ratio: u64,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchApplyArgs {
    #[command(flatten)]
    pub kernel: KernelArg,
    /// Timed runs of each (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// A livepatch module for the target (its manifest beside it).
    #[arg(value_name = "MODULE.ko")]
    pub module: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchApplyGuestArgs {
    /// Timed runs of each.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The module.
    pub module: PathBuf,
}

#[derive(Debug, Args)]
pub struct BenchBuildArgs {
    #[command(flatten)]
    pub kernel: KernelArg,
    /// Warm builds to time per fix (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// A fix: a patch file, patch files joined by commas, or a directory with fix.patch.
    #[arg(required = true, value_name = "FIX")]
    pub fixes: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub kernel: KernelArg,
    /// The livepatch module to test.
    #[arg(value_name = "MODULE.ko")]
    pub module: PathBuf,
    /// A target module to load before (default) or after the patch: NAME[@before|@after].
    #[arg(long = "load-module", value_name = "NAME[@WHEN]")]
    pub load_modules: Vec<String>,
    /// Shell script run in the guest with the patch live; exit 0 means the fix is observed.
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,
    /// Also require SCRIPT to fail before the patch is applied.
    #[arg(long, requires = "script")]
    pub baseline_fails: bool,
    /// Seconds each transition may take.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub transition_timeout: u64,
    /// Print the guest kernel log after the run.
    #[arg(long)]
    pub show_dmesg: bool,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub kernel: KernelArg,
    /// The module (and livepatch) name; default: OUT's file name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Build a stacking patch instead of an atomic replace (cumulative) one.
    #[arg(long)]
    pub no_replace: bool,
    /// Make the patch a member of the replace set NAME (a stacking patch): when applied, it
    /// supersedes only the live patch of the same set and leaves other sets' patches live.
    /// Each patch of a set should carry all of that set's fixes.
    #[arg(long, value_name = "NAME", conflicts_with = "no_replace")]
    pub set: Option<String>,
    /// Print every function's verdict: changed, new, unchanged, removed, and why.
    #[arg(long)]
    pub explain: bool,
    /// Print a JSON report (manifest, verdicts, timings).
    #[arg(long)]
    pub json: bool,
    /// Output module path (OUT.ko; the manifest goes to OUT.json).
    #[arg(short, long, value_name = "OUT.ko", required_unless_present = "each")]
    pub output: Option<PathBuf>,
    /// Build every patch of DIR on its own (a `graft kernel changes --split` directory, or
    /// any directory of *.patch) and report each one's verdict: built (functions), not built
    /// in this configuration, no change, refused (reason), failed (error). Modules go to
    /// DIR/built/.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["output", "patches", "explain"])]
    pub each: Option<PathBuf>,
    /// With --each: build a seeded random sample of N patches.
    #[arg(long, value_name = "N", requires = "each")]
    pub sample: Option<usize>,
    /// With --sample: the seed (the same seed picks the same sample).
    #[arg(long, value_name = "SEED", default_value_t = 1, requires = "sample")]
    pub seed: u64,
    /// With --each: also load each built module in the lab (with the module it patches),
    /// wait for its transition, unload it, and check the kernel log.
    #[arg(long, requires = "each")]
    pub test: bool,
    /// Source patches (unified diffs, -p1), applied in order.
    #[arg(required_unless_present = "each", value_name = "PATCH")]
    pub patches: Vec<PathBuf>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DemoArgs {
    #[command(flatten)]
    pub kernel: KernelArg,
    #[command(subcommand)]
    pub what: Option<DemoCommand>,
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// The fleet on real kernels: a server on 127.0.0.1 and three lab VMs running `graft agent`.
    ///
    /// The guests have no network device: each agent reaches the server through a serial port
    /// QEMU bridges to 127.0.0.1 (`graft lab bridge`), with TLS end to end. The demo builds
    /// five levels, publishes and assigns level 1 (every host applies it), shows a level with
    /// a bad signature refused by the server and then, served by a compromised server, by every
    /// agent (nothing loaded), publishes the cumulative level and kills the server while a host
    /// applies it, restarts it, and checks that every host ends on it having loaded it once,
    /// with every outcome reported. Then two staged rollouts (a canary, then the rest, each
    /// wave baked and gated): a clean level completes on every host; a level that logs a kernel
    /// warning when /proc/cmdline is read (the guests read it every second) is halted by the
    /// server before its second wave, with the reason, and rolled back by re-signing the
    /// previous level. Exit status 0 when all of that held.
    #[command(after_help = "Example: graft demo fleet --json > summary.json")]
    Fleet(DemoFleetArgs),
}

#[derive(Debug, Args)]
pub struct DemoFleetArgs {
    #[command(flatten)]
    pub kernel: KernelArg,
    /// How many lab hosts to boot (each a VM of 512 MiB).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=8))]
    pub hosts: u16,
    /// Narrate on stderr and print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Which kernel to work on.
#[derive(Debug, Args)]
pub struct KernelArg {
    /// The target kernel, `<provider>:<release>`; Debian is the provider today.
    #[arg(long = "kernel", value_name = "TARGET", default_value = graft_kernel::DEFAULT_TARGET, env = "GRAFT_KERNEL")]
    pub target: String,
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Download a target's packages with apt and prepare everything graft needs.
    ///
    /// Fetches the image (vmlinuz, config, modules), headers with kbuild, and source packages
    /// of the target with `apt-get download` (nothing is installed system-wide), verifies them
    /// against apt's SHA-256, unpacks them into the cache, prepares the source tree with the
    /// distribution's config (olddefconfig + prepare), extracts the code image (vmlinux), reads
    /// every module's symbols, and boots the kernel once in the lab without KASLR to read
    /// /proc/kallsyms, the authoritative symbol order for livepatch positions.
    ///
    /// Each stage is all-or-nothing; a fetch that was interrupted is finished by the next one,
    /// and fetching a complete target does nothing.
    #[command(after_help = "Example: graft kernel fetch --kernel debian:6.1.0-56-amd64")]
    Fetch {
        #[command(flatten)]
        kernel: KernelArg,
        /// Throw away the cached target and fetch it again.
        #[arg(long)]
        refresh: bool,
        /// Print a JSON report instead of progress.
        #[arg(long)]
        json: bool,
    },
    /// Describe a fetched target: release, build-id, compiler, key config, symbols, cache.
    Info {
        #[command(flatten)]
        kernel: KernelArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// The kernels apt can see for this provider, and those in the cache.
    ///
    /// For each: the release, image and source versions, whether the image, headers (with the
    /// common headers and a kbuild their Depends accept) and source are all obtainable, whether
    /// the cache holds it and how much room it takes. Resolution is exactly what `fetch` would
    /// do; notes say when a package of another Debian revision would be used, or why a kernel
    /// cannot be fetched.
    #[command(after_help = "Example: graft kernel list
         graft kernel list --json --flavour cloud-amd64")]
    List {
        /// The image flavour.
        #[arg(long, value_name = "FLAVOUR", default_value = "amd64")]
        flavour: String,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a target from the cache (the kernel and its compiled objects), freeing its room.
    #[command(after_help = "Example: graft kernel remove --kernel debian:6.1.0-54-amd64")]
    Remove {
        #[command(flatten)]
        kernel: KernelArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Debian's own update as a source patch against the target: Debian's fixes, live.
    ///
    /// Fetches `linux-source` at SOURCE_VERSION (a newer Debian revision, or a newer upstream
    /// version of the same series), compares it with the target's own source, and writes the
    /// changes as a -p1 unified diff whose header carries the Debian changelog entries in
    /// between, CVE ids included. `graft build` takes it as it takes any patch.
    ///
    /// With --split DIR: one patch per changed .c file instead (each with the header changes
    /// it may need), plus DIR/report.json naming every changed file that is in no patch and
    /// why (assembly, build files, headers no changed .c file includes, ...). Build them all
    /// with `graft build --each DIR`.
    #[command(
        after_help = "Examples:\n  graft kernel changes --to 6.1.192-3 -o update.patch && graft build -o update.ko update.patch\n  graft kernel changes --kernel debian:6.1.0-54-amd64 --to 6.1.192-1 --split update/"
    )]
    Changes {
        #[command(flatten)]
        kernel: KernelArg,
        /// The Debian source version to take the changes from (`apt-cache policy linux-source-6.1`
        /// lists them).
        #[arg(long, value_name = "SOURCE_VERSION")]
        to: String,
        /// Write one patch of all changes here.
        #[arg(
            short,
            long,
            value_name = "FILE.patch",
            required_unless_present = "split",
            conflicts_with = "split"
        )]
        output: Option<PathBuf>,
        /// Write one patch per changed .c file, and report.json, into this new directory.
        #[arg(long, value_name = "DIR")]
        split: Option<PathBuf>,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// How the target's configuration builds each source file: into vmlinux, into a module,
    /// or not at all (and which option leaves it out). kbuild itself is asked.
    #[command(after_help = "Example: graft kernel sources fs/proc/cmdline.c fs/ext2/inode.c")]
    Sources {
        #[command(flatten)]
        kernel: KernelArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Source files, relative to the kernel tree.
        #[arg(required = true, value_name = "FILE.c")]
        files: Vec<String>,
    },
    /// Look up symbols with their livepatch positions (sympos).
    ///
    /// A name that occurs more than once in an object needs its position to be patched; sympos
    /// 0 means the name is unique.
    #[command(
        after_help = "Example: graft kernel symbols cmdline_proc_show\n         graft kernel symbols --module isofs isofs_lookup"
    )]
    Symbols {
        #[command(flatten)]
        kernel: KernelArg,
        /// Look in this module of the image instead of vmlinux.
        #[arg(long, value_name = "NAME")]
        module: Option<String>,
        /// Symbol names.
        #[arg(required = true)]
        names: Vec<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Boot the target under QEMU (TCG), run SCRIPT as root in the guest, exit with its status.
    ///
    /// The guest is a busybox initramfs with /proc, /sys, /dev, debugfs mounted, the graft
    /// binary as /usr/bin/graft, the given files, and the given modules of the target (with
    /// their dependencies) under /lib/modules, loadable with `modprobe NAME`. The script's
    /// output is streamed as it runs; the guest kernel log is saved, and printed with
    /// --show-dmesg.
    ///
    /// Exit status: the script's own, or 124 when the script ran past --timeout, 125 when the
    /// guest kernel panicked, 126 when the guest never reached the script or stopped on its own,
    /// 1 for any other error (bad arguments, missing QEMU, ...).
    #[command(
        after_help = "Examples:\n  graft lab run -- 'cat /proc/version'\n  graft lab run --module isofs -- 'modprobe isofs && lsmod'\n  graft lab run --file fix.ko:/root/fix.ko -- 'insmod /root/fix.ko'"
    )]
    Run(LabRunArgs),
    /// Inside a lab guest: carry TCP connections made to the guest's 127.0.0.1:PORT over a
    /// serial port to the host, until the host says to stop.
    ///
    /// A lab guest has no network device. A run given serial bridges connects the guest's
    /// /dev/ttyS2 (and /dev/ttyS3) to sockets on the host's 127.0.0.1, and the host end opens
    /// a connection to a host server (e.g. `graft server`) for each connection made here, so an
    /// agent in the guest reaches the server at https://127.0.0.1:PORT. TLS runs end to end;
    /// the bridge carries bytes as they are. Exit status: 0 when the host ended the bridge,
    /// 1 when the serial line failed or closed.
    #[command(
        after_help = "Example, in a guest run by `graft demo fleet`:\n  graft lab bridge --port 8443 --device /dev/ttyS2 &\n  graft agent --server https://127.0.0.1:8443 --ca /root/ca.pem ..."
    )]
    Bridge(LabBridgeArgs),
}

#[derive(Debug, Args)]
pub struct LabBridgeArgs {
    /// The guest's loopback port to listen on.
    #[arg(long, value_name = "PORT")]
    pub port: u16,
    /// The serial port bridged to the host.
    #[arg(long, value_name = "DEVICE", default_value = "/dev/ttyS2")]
    pub device: PathBuf,
}

#[derive(Debug, Args)]
pub struct LabRunArgs {
    #[command(flatten)]
    pub kernel: KernelArg,
    /// Copy a host file into the guest (default destination: /root/<file name>).
    #[arg(long = "file", value_name = "SRC[:DEST]")]
    pub files: Vec<String>,
    /// Add a module of the target, with its dependencies.
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// Seconds the script may run once the guest has booted.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub timeout: u64,
    /// Seconds the guest may take to boot to the script.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub boot_timeout: u64,
    /// Extra kernel command line, e.g. `nokaslr`.
    #[arg(long, value_name = "EXTRA", default_value = "")]
    pub cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub memory: u32,
    /// Attach a raw disk image as a virtio disk (load `virtio_pci` and `virtio_blk` with
    /// --module to see it as /dev/vda); it keeps what the guest writes, across runs.
    #[arg(long = "disk", value_name = "IMAGE")]
    pub disks: Vec<PathBuf>,
    /// Print the guest kernel log after the run.
    #[arg(long)]
    pub show_dmesg: bool,
    /// Do not put the graft binary into the guest.
    #[arg(long)]
    pub no_graft: bool,
    /// Read the script from this file instead of the command line.
    #[arg(long, value_name = "FILE", conflicts_with = "script")]
    pub script_file: Option<PathBuf>,
    /// Capture the script's output and print one JSON report at the end.
    #[arg(long)]
    pub json: bool,
    /// The shell script to run (words are joined with spaces).
    #[arg(last = true, value_name = "SCRIPT")]
    pub script: Vec<String>,
}
