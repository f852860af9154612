//! `graft build`: from source patches to a livepatch module proven against the target.
//!
//! [`build`] is a pipeline of phases, each in the module named after it, each passing a typed
//! value to the next and timed in the report:
//!
//! | phase | module | produces |
//! |---|---|---|
//! | gate | [`gate`] | [`gate::Inputs`]: the target is patchable, the compiler is the kernel's version, the patches read |
//! | units | [`units`] | [`units::Units`]: touched sources kbuild builds, headers, sources not built |
//! | apply | [`scratch`], [`layout`] | [`scratch::Scratch`]: the patched view of the tree; refuses changed structure members |
//! | compile | [`pairs`] (with [`compile`], [`headers`]) | [`pairs::CompiledPair`]s: each unit before and after |
//! | symvers | [`symvers`] | nothing: refuses a patch that changes exported symbols' CRCs |
//! | diff | [`diff`] | [`diff::Diffs`]: changed and new functions, refusals, callbacks |
//! | run-pre | [`runpre`] | [`runpre::RunPreProof`]: replaced functions proven against the running code, positions pinned |
//! | extract | [`extract`] | [`extract::Extracted`]: each unit's patch object |
//! | resolve | [`resolve`] | [`resolve::Resolved`]: how each reference binds, the module's description |
//! | module | [`module`] (with [`hook`], [`klp`]) | the converted, checked module bytes |
//! | write | [`output`] | module and manifest, both or neither |

pub mod bench;
pub mod compile;
pub mod diff;
pub mod extract;
mod farm;
pub mod fixture;
pub mod gate;
pub mod headers;
pub mod hook;
pub mod image;
pub mod klp;
pub mod layout;
pub use graft_manifest as manifest;
pub mod module;
pub mod output;
pub mod pairs;
pub mod patchset;
pub mod resolve;
pub mod runpre;
pub mod scratch;
pub mod symvers;
pub mod units;

pub use compile::{Parent, Unit};
pub use graft_diff::{Explanation, Refusal as RefusalReason};
pub use manifest::Manifest;
pub use patchset::PatchFile;

use std::path::{Path, PathBuf};
use std::time::Instant;

use graft_cache::Cache;
use graft_diff::{FunctionVerdict, Refusal};
use graft_kernel::Kernel;
use graft_progress::SharedProgress;

/// `graft/patch.h`, the helpers patched sources may include.
pub const PATCH_HELPER: &str = include_str!("../include/graft/patch.h");
/// `kpatch-macros.h`: kpatch's callback macros, on top of `graft/patch.h`.
pub const KPATCH_MACROS: &str = include_str!("../include/kpatch-macros.h");
/// `kpatch-syscall.h`: kpatch's `KPATCH_SYSCALL_DEFINE<n>`.
pub const KPATCH_SYSCALL: &str = include_str!("../include/kpatch-syscall.h");

/// Errors of `graft build`: each names the file, function or section and the reason.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The target kernel cannot be live patched.
    #[error("{target} cannot be live patched: {reason}")]
    TargetUnsuitable {
        /// The target.
        target: String,
        /// Why.
        reason: String,
    },
    /// The local compiler is not the kernel's.
    #[error("the kernel was built by `{expected}` but this machine's `{command}` is {}: objects would not match the running kernel; install that compiler version (another distribution revision of it is accepted)",
        local.as_deref().map(|l| format!("`{l}`")).unwrap_or_else(|| "missing".into()))]
    CompilerMismatch {
        /// The compiler command.
        command: String,
        /// The kernel's compiler.
        expected: String,
        /// The local one.
        local: Option<String>,
    },
    /// A patch is unusable.
    #[error("{}: {reason}", patch.display())]
    BadPatch {
        /// The patch.
        patch: PathBuf,
        /// Why.
        reason: String,
    },
    /// Compiling a unit failed.
    #[error("compiling the {which} {unit} failed:\n{tail}")]
    CompileFailed {
        /// The unit.
        unit: String,
        /// "unpatched" or "patched".
        which: &'static str,
        /// The end of the compiler's output.
        tail: String,
    },
    /// The differ refused the change.
    #[error("the patch cannot be live patched:\n{}", .0.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<Refusal>),
    /// The patch changes only sources this kernel's configuration does not build.
    #[error("not built in this configuration of {target}: nothing to patch ({})", reasons.join("; "))]
    NotBuiltInConfig {
        /// The target.
        target: String,
        /// Why each source is not built.
        reasons: Vec<String>,
    },
    /// Nothing in the compiled code changed.
    #[error(
        "no effective change: the patches compile to the same code as the running kernel ({0})"
    )]
    NoEffectiveChange(String),
    /// Run-pre matching failed.
    #[error("run-pre mismatch in {function}: {detail}; graft's build does not reproduce the running kernel, so no patch is made")]
    RunPre {
        /// The function.
        function: String,
        /// What differs.
        detail: String,
    },
    /// A symbol cannot be resolved unambiguously.
    #[error("{0}")]
    Symbol(String),
    /// An option given to the build is unusable.
    #[error("{0}")]
    BadOption(String),
    /// Something graft does not support (yet), named.
    #[error("{0}")]
    Unsupported(String),
    /// Building the module failed.
    #[error("{0}")]
    ModuleFailed(String),
    /// ELF handling failed.
    #[error(transparent)]
    Elf(#[from] graft_elf::ElfError),
    /// Kernel data failed.
    #[error(transparent)]
    Kernel(#[from] graft_kernel::KernelError),
    /// Cache handling failed.
    #[error(transparent)]
    Cache(#[from] graft_cache::CacheError),
    /// A filesystem operation failed.
    #[error("{action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
}

/// How a build ended, for reports and exit statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// A module was written.
    Built,
    /// The patch touches only code this kernel's configuration does not build.
    NotBuiltInConfig,
    /// The patch compiles to the code the kernel already runs.
    NoChange,
    /// graft will not make this patch, for a stated reason (changed data, `__init`, a run-pre
    /// mismatch, an ambiguous symbol, ...).
    Refused,
    /// Something failed (the patch does not apply or compile, a tool failed).
    Failed,
}

impl Outcome {
    /// The exit status `graft build` uses for it.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Built => 0,
            Outcome::Failed => 1,
            Outcome::Refused => 2,
            Outcome::NotBuiltInConfig => 3,
            Outcome::NoChange => 4,
        }
    }
}

impl BuildError {
    /// What kind of ending this error is.
    pub fn outcome(&self) -> Outcome {
        match self {
            BuildError::NotBuiltInConfig { .. } => Outcome::NotBuiltInConfig,
            BuildError::NoEffectiveChange(_) => Outcome::NoChange,
            BuildError::Refused(_)
            | BuildError::RunPre { .. }
            | BuildError::Symbol(_)
            | BuildError::Unsupported(_)
            | BuildError::TargetUnsuitable { .. } => Outcome::Refused,
            BuildError::CompilerMismatch { .. }
            | BuildError::BadOption(_)
            | BuildError::BadPatch { .. }
            | BuildError::CompileFailed { .. }
            | BuildError::ModuleFailed(_)
            | BuildError::Elf(_)
            | BuildError::Kernel(_)
            | BuildError::Cache(_)
            | BuildError::Io { .. } => Outcome::Failed,
        }
    }

    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        BuildError::Io {
            action,
            path: path.to_path_buf(),
            cause: source,
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Patches, applied in order.
    pub patches: Vec<PathBuf>,
    /// The module to write (`OUT.ko`); the manifest goes to `OUT.json`.
    pub output: PathBuf,
    /// Module name (default: from the output file name).
    pub name: Option<String>,
    /// Atomic replace (default true).
    pub replace: bool,
    /// The replace set of a stacking patch (implies `replace == false`).
    pub set: Option<String>,
    /// Keep the scratch directory (farm, objects, kbuild directory) and report it.
    pub keep_scratch: bool,
}

/// Per-unit verdicts, for `--explain`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct UnitReport {
    /// The unit.
    pub unit: String,
    /// Its parent object.
    pub object: String,
    /// Function verdicts (unchanged ones included).
    pub functions: Vec<FunctionVerdict>,
}

/// The result of a successful build.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// The module path.
    pub module: PathBuf,
    /// The manifest path.
    pub manifest_path: PathBuf,
    /// Per-unit verdicts.
    pub units: Vec<UnitReport>,
    /// Seconds per phase.
    pub timings: Vec<(String, f64)>,
    /// What the patch does differently from the source, by necessity (e.g. a tracepoint left off).
    pub notes: Vec<String>,
    /// The kept scratch directory, with `keep_scratch`.
    pub scratch: Option<PathBuf>,
}

pub use graft_manifest::manifest_path;

/// Phase timings, logged as they end.
struct Phases(Vec<(String, f64)>, Instant);

impl Phases {
    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        let seconds = (now - self.1).as_secs_f64();
        self.0.push((name.to_string(), seconds));
        tracing::info!("{name}: {seconds:.2} s");
        self.1 = now;
    }
}

/// What every use of the pipeline shares: the first phases, up to both objects of each unit.
pub(crate) struct Compiled {
    pub inputs: gate::Inputs,
    pub units: units::Units,
    pub scratch: scratch::Scratch,
    pub pairs: Vec<pairs::CompiledPair>,
    pub ctx: graft_diff::Context,
}

/// Gate, units, apply and compile.
fn compile_patches(
    cache: &Cache,
    kernel: &Kernel,
    options: &BuildOptions,
    progress: &SharedProgress,
    phases: &mut Phases,
) -> Result<Compiled, BuildError> {
    let inputs = gate::check(kernel, options)?;
    let units = units::classify(kernel, cache, &inputs.touched)?;
    phases.mark("gate");
    let scratch = scratch::Scratch::prepare(
        cache,
        kernel,
        &inputs.touched,
        &inputs.patches,
        options.keep_scratch,
    )?;
    layout::check(&inputs.patches, &scratch.tree(), &inputs.touched)?;
    phases.mark("apply");
    let pairs = pairs::compile(
        kernel,
        cache,
        &units,
        &inputs.patches,
        &scratch.tree(),
        progress,
    )?;
    phases.mark("compile");
    let ctx = diff::context(kernel, &scratch.tree(), &inputs.touched)?;
    Ok(Compiled {
        inputs,
        units,
        scratch,
        pairs,
        ctx,
    })
}

/// The units of `options.patches` compiled before and after, with the differ's context:
/// what fixtures are captured from.
pub(crate) fn compile_only(
    cache: &Cache,
    kernel: &Kernel,
    options: &BuildOptions,
) -> Result<Compiled, BuildError> {
    let mut phases = Phases(Vec::new(), Instant::now());
    compile_patches(
        cache,
        kernel,
        options,
        &graft_progress::silent(),
        &mut phases,
    )
}

/// Builds a livepatch module for `kernel` from `options.patches`.
pub fn build(
    cache: &Cache,
    kernel: &Kernel,
    options: &BuildOptions,
    progress: &SharedProgress,
) -> Result<BuildReport, BuildError> {
    let mut phases = Phases(Vec::new(), Instant::now());
    let Compiled {
        inputs,
        units,
        scratch,
        pairs,
        ctx,
    } = compile_patches(cache, kernel, options, progress, &mut phases)?;
    symvers::check(kernel, &pairs, &scratch.tree())?;
    phases.mark("symvers");
    let diffs = diff::diff(&pairs, &ctx)?;
    phases.mark("diff");
    let proof = runpre::prove(kernel, &pairs, &diffs)?;
    phases.mark("run-pre");
    let extracted = extract::extract(&pairs, &diffs, &ctx)?;
    let work = scratch.module_dir();
    std::fs::create_dir_all(&work).map_err(|e| BuildError::io("creating", &work, e))?;
    let resolved = resolve::resolve(
        &resolve::ResolveInputs {
            name: &inputs.name,
            replace: options.replace,
            pairs: &pairs,
            diffs: &diffs,
            proof: &proof,
            symvers: &module::symvers(kernel)?,
            namespaces: &module::namespaces(kernel)?,
            work: &work,
        },
        extracted,
    )?;
    phases.mark("extract");
    let module_bytes = module::build_module(kernel, &resolved.spec, &work.join("kbuild"))?;
    phases.mark("module");
    let manifest = output::manifest(kernel, options, &inputs.patches, &resolved, &module_bytes);
    let manifest_file = manifest_path(&options.output);
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| BuildError::Unsupported(e.to_string()))?;
    output::write(
        &options.output,
        &module_bytes,
        &manifest_file,
        json.as_bytes(),
    )?;
    phases.mark("write");
    let mut notes = inputs.notes;
    notes.extend(units.notes());
    notes.extend(resolved.notes);
    Ok(BuildReport {
        manifest,
        module: options.output.clone(),
        manifest_path: manifest_file,
        units: pairs
            .iter()
            .zip(&diffs.units)
            .map(|(p, d)| UnitReport {
                unit: p.unit.source.clone(),
                object: p.unit.parent.object_name().to_string(),
                functions: d.functions.clone(),
            })
            .collect(),
        timings: phases.0,
        notes,
        scratch: scratch.kept.clone(),
    })
}
