//! `graft build`: from source patches to a livepatch module proven against the target.
//!
//! The pipeline, each phase timed in a tracing span:
//! 1. **gate**: the target has CONFIG_LIVEPATCH and this machine has its exact compiler;
//! 2. **units**: the files the patches touch, applied in a scratch farm of the prepared tree;
//! 3. **compile**: pre objects (cached per target) and post objects, by kbuild's own commands;
//! 4. **diff**: per unit, changed and new functions, refusals (graft-diff);
//! 5. **run-pre**: replaced functions matched against the target's code image, pinning sympos;
//! 6. **extract**: the patch object of each unit;
//! 7. **module**: hook, kbuild link, livepatch conversion, format check;
//! 8. **manifest**: written with the module, both only once everything passed.

pub mod bench;
mod compile;
mod farm;
pub use graft_manifest as manifest;
mod module;
mod patchset;
mod runpre;

pub use compile::{Parent, Unit};
pub use manifest::Manifest;
pub use patchset::PatchFile;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use graft_cache::Cache;
use graft_diff::{FunctionVerdict, Refusal, Verdict};
use graft_elf::ElfObject;
use graft_kernel::{CompilerCheck, Kernel};
use graft_progress::{SharedProgress, Unit as ProgressUnit};

use crate::manifest::{Digest256, ManifestFunction, ManifestKernel};
use crate::module::{KlpFunc, ModuleSpec, Resolution};

/// A patched compile started from the command kbuild printed: (source, command, thread).
type EarlyPost<'scope> = (
    String,
    String,
    std::thread::ScopedJoinHandle<'scope, Result<PathBuf, BuildError>>,
);

/// `graft/patch.h`, the helpers patched sources may include.
pub const PATCH_HELPER: &str = include_str!("../include/graft/patch.h");

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

fn module_name(options: &BuildOptions) -> Result<String, BuildError> {
    let raw = match &options.name {
        Some(n) => n.clone(),
        None => options
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let name = raw.replace('-', "_");
    if name.is_empty()
        || name.len() > 55
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(BuildError::Unsupported(format!(
            "`{raw}` is not a usable module name: use letters, digits, - or _, at most 55 (--name)"
        )));
    }
    Ok(name)
}

struct Phases(Vec<(String, f64)>, Instant);

impl Phases {
    fn mark(&mut self, name: &str) {
        let now = Instant::now();
        self.0
            .push((name.to_string(), (now - self.1).as_secs_f64()));
        tracing::info!("{name}: {:.2} s", (now - self.1).as_secs_f64());
        self.1 = now;
    }
}

/// Builds a livepatch module for `kernel` from `options.patches`.
pub fn build(
    cache: &Cache,
    kernel: &Kernel,
    options: &BuildOptions,
    progress: &SharedProgress,
) -> Result<BuildReport, BuildError> {
    let mut phases = Phases(Vec::new(), Instant::now());
    let name = module_name(options)?;
    let config = kernel.config()?;
    if !config.is_yes("LIVEPATCH") {
        return Err(BuildError::TargetUnsuitable {
            target: kernel.target().to_string(),
            reason: "its config lacks CONFIG_LIVEPATCH=y".into(),
        });
    }
    let check = CompilerCheck::run(config.get("CC_VERSION_TEXT").unwrap_or_default());
    if !check.matches {
        return Err(BuildError::CompilerMismatch {
            command: check.command,
            expected: check.expected,
            local: check.local,
        });
    }
    if let Some(note) = &check.note {
        tracing::warn!("{note}");
    }
    let patches = options
        .patches
        .iter()
        .map(|p| PatchFile::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut touched: Vec<String> = Vec::new();
    for p in &patches {
        for f in &p.files {
            if !touched.contains(f) {
                touched.push(f.clone());
            }
        }
    }
    let mut sources = Vec::new();
    let mut headers = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut not_built = Vec::new();
    let mut kbuild_map = graft_kernel::KbuildMap::new(kernel, cache);
    for file in &touched {
        if file.ends_with(".c") {
            match kbuild_map.membership(file)? {
                graft_kernel::Membership::BuiltIn | graft_kernel::Membership::Module => {
                    sources.push(file.clone())
                }
                // Some sources are compiled only as part of another (kernel/sched/
                // build_utility.c includes kernel/sched/debug.c): those are handled like
                // headers.
                graft_kernel::Membership::NotBuilt { .. }
                    if includers_exist(kernel, cache, file)? =>
                {
                    headers.push(file.clone())
                }
                graft_kernel::Membership::NotBuilt { reason } => not_built.push(reason),
            }
        } else if file.ends_with(".h") {
            headers.push(file.clone());
        } else {
            return Err(BuildError::Unsupported(format!(
                "{file}: only C sources and headers can be live patched (not build files or assembly)"
            )));
        }
    }
    if sources.is_empty() && headers.is_empty() && !not_built.is_empty() {
        return Err(BuildError::NotBuiltInConfig {
            target: kernel.target().to_string(),
            reasons: not_built,
        });
    }
    notes.extend(
        not_built.into_iter().map(|r| {
            format!("{r}: nothing of it runs in this kernel, so nothing is patched there")
        }),
    );
    phases.mark("gate");

    let scratch_root = cache.root().join("builds");
    fs::create_dir_all(&scratch_root).map_err(|e| BuildError::io("creating", &scratch_root, e))?;
    let scratch = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&scratch_root)
        .map_err(|e| BuildError::io("creating a directory in", &scratch_root, e))?;
    // Debug aid: GRAFT_KEEP_BUILD=1 keeps the scratch directory (farm, objects, hook, kbuild
    // log) for inspection; its path is logged.
    let scratch_path = scratch.path().to_path_buf();
    let keep =
        options.keep_scratch || std::env::var_os("GRAFT_KEEP_BUILD").is_some_and(|v| v == "1");
    let kept = if keep {
        tracing::info!("keeping the build directory {}", scratch_path.display());
        Some(scratch.keep())
    } else {
        None
    };
    let farm_dir = scratch_path.join("tree");
    let helper = "include/graft/patch.h".to_string();
    let mut real = touched.clone();
    real.push(helper.clone());
    farm::create(&kernel.source_dir(), &farm_dir, &real)?;
    let helper_path = farm_dir.join(&helper);
    fs::write(&helper_path, PATCH_HELPER)
        .map_err(|e| BuildError::io("writing", &helper_path, e))?;
    for p in &patches {
        patchset::apply(p, &farm_dir)?;
    }
    phases.mark("apply");

    // Unpatched objects: one kbuild run for all uncached units. Each unit's patched compile
    // starts as soon as kbuild prints the unit's command, overlapping the two.
    let task = progress.start(
        "compile units",
        Some(sources.len() as u64),
        ProgressUnit::Items,
    );
    let (results, early) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
        let farm = &farm_dir;
        let consumer = scope.spawn(move || {
            let mut started: Vec<EarlyPost<'_>> = Vec::new();
            for (source, command) in rx {
                if !started.iter().any(|(s, _, _)| *s == source) {
                    let (s, c) = (source.clone(), command.clone());
                    let handle = scope.spawn(move || compile::compile_post_command(&s, &c, farm));
                    started.push((source, command, handle));
                }
            }
            started
                .into_iter()
                .map(|(s, c, h)| {
                    (
                        s,
                        (
                            c,
                            h.join().unwrap_or_else(|_| {
                                Err(BuildError::Unsupported("a compiler thread panicked".into()))
                            }),
                        ),
                    )
                })
                .collect::<HashMap<_, _>>()
        });
        let results = compile::prepare_units(kernel, cache, &sources, &|source, command| {
            let _ = tx.send((source.to_string(), command.to_string()));
        });
        drop(tx);
        let early = consumer.join().unwrap_or_default();
        (results, early)
    });
    let mut units = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    task.finish(&format!("{} units", units.len()));
    for header in &headers {
        // Narrow a header change to the definitions it touches, when they can be named.
        let definitions = if header.ends_with(".h") {
            let lines: Vec<usize> = patches
                .iter()
                .flat_map(|p| patchset::changed_lines(&p.text, header))
                .collect();
            let text = fs::read_to_string(farm_dir.join(header)).unwrap_or_default();
            graft_kernel::enclosing_definitions(&text, &lines)
        } else {
            None
        };
        for unit in units_including(
            kernel,
            cache,
            header,
            definitions.as_ref(),
            &farm_dir,
            progress,
        )? {
            if !units.iter().any(|u: &Unit| u.source == unit.source) {
                units.push(unit);
            }
        }
    }
    phases.mark("compile pre");
    // Patched objects: those started early stand if they used kbuild's recorded command.
    let mut early = early;
    let post_paths: Vec<PathBuf> = std::thread::scope(|scope| {
        let handles: Vec<_> = units
            .iter()
            .map(|u| {
                let ready = early
                    .remove(&u.source)
                    .filter(|(command, _)| *command == u.command);
                let farm = &farm_dir;
                scope.spawn(move || match ready {
                    Some((_, result)) => result,
                    None => compile::compile_post(u, farm),
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BuildError::Unsupported("a compiler thread panicked".into()))
                })
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    phases.mark("compile post");

    let mut parsed = Vec::new();
    for (unit, post_path) in units.iter().zip(&post_paths) {
        let pre_bytes = fs::read(&unit.pre).map_err(|e| BuildError::io("reading", &unit.pre, e))?;
        let post_bytes =
            fs::read(post_path).map_err(|e| BuildError::io("reading", post_path, e))?;
        let pre = ElfObject::parse(&format!("{} (unpatched)", unit.object), &pre_bytes)?;
        let post = ElfObject::parse(&format!("{} (patched)", unit.object), &post_bytes)?;
        parsed.push((pre, post));
    }
    let diffs: Vec<graft_diff::UnitDiff> = units
        .iter()
        .zip(&parsed)
        .map(|(u, (pre, post))| graft_diff::diff_unit(&u.source, pre, post))
        .collect();
    let mut diffs = diffs;
    let mut callbacks: Vec<(usize, String, String)> = Vec::new();
    for (i, (diff, (_, post))) in diffs.iter_mut().zip(&parsed).enumerate() {
        for (kind, function) in directives(post) {
            if kind == "force" {
                if let Some(v) = diff
                    .functions
                    .iter_mut()
                    .find(|v| v.name == function && v.verdict == Verdict::Unchanged)
                {
                    v.verdict = Verdict::Changed;
                    v.reason = Some("marked GRAFT_ALWAYS_INCLUDE".into());
                }
            } else {
                callbacks.push((i, kind, function));
            }
        }
    }
    let refusals: Vec<Refusal> = diffs.iter().flat_map(|d| d.refusals.clone()).collect();
    if !refusals.is_empty() {
        return Err(BuildError::Refused(refusals));
    }
    if diffs.iter().all(|d| d.included().next().is_none()) {
        return Err(BuildError::NoEffectiveChange(sources.join(", ")));
    }
    phases.mark("diff");

    // Run-pre: prove each replaced function against the running code, pinning sympos.
    let mut sympos_of_function: HashMap<(usize, String), u32> = HashMap::new();
    let mut pins: HashMap<(String, String), u32> = HashMap::new();
    let needs_vmlinux = units
        .iter()
        .zip(&diffs)
        .any(|(u, d)| u.parent == Parent::Vmlinux && d.included().next().is_some());
    let vmlinux_symbols = kernel.symbols()?;
    if needs_vmlinux {
        let image = runpre::CodeImage::load(&kernel.vmlinux())?;
        let index = runpre::AddressIndex::new(&vmlinux_symbols);
        for (i, ((unit, diff), (pre, _))) in units.iter().zip(&diffs).zip(&parsed).enumerate() {
            if unit.parent != Parent::Vmlinux {
                continue;
            }
            for v in diff.included().filter(|v| v.verdict == Verdict::Changed) {
                let Some(p) = v.pre_symbol else { continue };
                if graft_diff::is_cold_part(&v.name) {
                    continue;
                }
                let (pos, found) = runpre::match_function(pre, p, &image, &vmlinux_symbols, &index)
                    .map_err(|e| match e {
                        BuildError::RunPre { function, detail } => BuildError::RunPre {
                            function: format!("vmlinux:{function} ({})", unit.source),
                            detail,
                        },
                        other => other,
                    })?;
                sympos_of_function.insert((i, v.pre_name.clone().unwrap_or_default()), pos);
                for (name, pos) in found.sympos {
                    pins.insert(("vmlinux".into(), name), pos);
                }
            }
        }
    }
    let module_symbols = if units.iter().any(|u| matches!(u.parent, Parent::Module(_))) {
        kernel.module_symbols()?
    } else {
        BTreeMap::new()
    };
    let module_index = kernel.module_index()?;
    for (i, ((unit, diff), (pre, _))) in units.iter().zip(&diffs).zip(&parsed).enumerate() {
        let Parent::Module(module) = &unit.parent else {
            continue;
        };
        if diff.included().next().is_none() {
            continue;
        }
        let info = module_index.get(module).ok_or_else(|| {
            BuildError::Symbol(format!(
                "{}: the target's image has no module {module}",
                unit.source
            ))
        })?;
        let path = kernel.modules_dir().join(&info.path);
        let bytes = fs::read(&path).map_err(|e| BuildError::io("reading", &path, e))?;
        let ko = ElfObject::parse(&path.display().to_string(), &bytes)?;
        let empty = graft_kernel::SymbolTable::default();
        let table = module_symbols.get(module).unwrap_or(&empty);
        for v in diff.included().filter(|v| v.verdict == Verdict::Changed) {
            let Some(p) = v.pre_symbol else { continue };
            if graft_diff::is_cold_part(&v.name) {
                continue;
            }
            let (pos, found) = runpre::match_module_function(pre, p, &ko, module, table)?;
            sympos_of_function.insert((i, v.pre_name.clone().unwrap_or_default()), pos);
            for (name, pos) in found.sympos {
                pins.insert((module.clone(), name), pos);
            }
        }
    }
    phases.mark("run-pre");

    let work = scratch_path.join("module");
    fs::create_dir_all(&work).map_err(|e| BuildError::io("creating", &work, e))?;
    let symvers = module::symvers(kernel)?;
    let mut spec = ModuleSpec {
        name: name.clone(),
        replace: options.replace,
        objects: BTreeMap::new(),
        patch_objects: Vec::new(),
        resolutions: HashMap::new(),
        callbacks: BTreeMap::new(),
    };
    for (i, kind, function) in &callbacks {
        let object = units[*i].parent.object_name().to_string();
        let list = spec.callbacks.entry(object.clone()).or_default();
        if list.iter().any(|(k, _)| k == kind) {
            return Err(BuildError::Unsupported(format!(
                "{object} has two GRAFT_{} callbacks",
                kind.to_uppercase()
            )));
        }
        list.push((kind.clone(), graft_diff::new_function_name(function, *i)));
    }
    let mut manifest_functions = Vec::new();
    let mut new_functions = Vec::new();
    let mut extracted = Vec::new();
    for (i, ((unit, diff), (pre, post))) in units.iter().zip(&diffs).zip(&parsed).enumerate() {
        if diff.included().next().is_some() {
            let patch = graft_diff::extract(diff, pre, post, i)
                .map_err(|r| BuildError::Refused(vec![r]))?;
            extracted.push((i, unit, patch));
        }
    }
    // Global functions the patch itself defines anew: other units call the copies.
    let copies: HashMap<(String, String), String> = extracted
        .iter()
        .flat_map(|(_, unit, patch)| {
            let object = unit.parent.object_name().to_string();
            patch
                .global_copies
                .iter()
                .map(move |(name, copy)| ((object.clone(), name.clone()), copy.clone()))
        })
        .collect();
    for (i, unit, patch) in extracted {
        let object = unit.parent.object_name().to_string();
        let mut renames: HashMap<String, String> = HashMap::new();
        for f in &patch.functions {
            let sympos = match sympos_of_function.get(&(i, f.name.clone())) {
                Some(&pos) => pos,
                None => position(&object, &f.name, &vmlinux_symbols, &module_symbols, &pins)?,
            };
            spec.objects
                .entry(object.clone())
                .or_default()
                .push(KlpFunc {
                    old_name: f.name.clone(),
                    new_symbol: f.new_symbol.clone(),
                    sympos,
                });
            manifest_functions.push(ManifestFunction {
                object: object.clone(),
                name: f.name.clone(),
                sympos,
                old_size: f.old_size,
                new_size: f.new_size,
                unit: f.unit.clone(),
            });
        }
        new_functions.extend(patch.new_functions.iter().map(|n| format!("{object}:{n}")));
        for ext in &patch.externals {
            // Module.symvers names exporters by path (net/ceph/libceph); modules go by name.
            let exported_by = symvers
                .get(&ext.name)
                .map(|p| graft_kernel::normalize_name(p.rsplit('/').next().unwrap_or(p)));
            let exported_by = exported_by.as_deref();
            let resolution = if let Some(copy) = copies
                .get(&(object.clone(), ext.name.clone()))
                .filter(|_| !ext.local)
            {
                // Bound at link time: the undefined reference takes the copy's name.
                renames.insert(ext.symbol.clone(), copy.clone());
                continue;
            } else if !ext.local && exported_by == Some("vmlinux") {
                Resolution::Exported(ext.name.clone())
            } else if let (false, Some(exporter), false) =
                (ext.local, exported_by, object == "vmlinux")
            {
                // Exported by a module: resolved by the livepatch core when the patched module
                // (which needs the exporter loaded) arrives, so the patch itself needs nothing.
                let pos = position(
                    exporter,
                    &ext.name,
                    &vmlinux_symbols,
                    &module_symbols,
                    &pins,
                )?;
                Resolution::Livepatch {
                    patched: object.clone(),
                    object: exporter.to_string(),
                    name: ext.name.clone(),
                    sympos: pos,
                }
            } else if !ext.local && object == "vmlinux" && exported_by.is_some() {
                return Err(BuildError::Unsupported(format!(
                    "{}: the patched code uses {}, exported by module {}, which a vmlinux patch cannot depend on",
                    ext.unit,
                    ext.name,
                    exported_by.unwrap_or_default()
                )));
            } else {
                let pos = position(&object, &ext.name, &vmlinux_symbols, &module_symbols, &pins)
                    .map_err(|e| match e {
                        BuildError::Symbol(msg) => {
                            BuildError::Symbol(format!("{}: {msg}", ext.unit))
                        }
                        other => other,
                    })?;
                Resolution::Livepatch {
                    patched: object.clone(),
                    object: object.clone(),
                    name: ext.name.clone(),
                    sympos: pos,
                }
            };
            spec.resolutions.insert(ext.symbol.clone(), resolution);
        }
        let mut elf = patch.elf;
        for sym in elf.symbols.iter_mut() {
            if let Some(copy) = renames.get(&sym.name) {
                sym.name = copy.clone();
            }
        }
        module::settle_static_keys(&mut elf, &spec.resolutions, &unit.source, &mut notes)?;
        let path = work.join(format!("unit{i}.o"));
        let bytes = elf.write(&format!("patch object of {}", unit.source))?;
        fs::write(&path, bytes).map_err(|e| BuildError::io("writing", &path, e))?;
        spec.patch_objects.push(path);
    }
    phases.mark("extract");

    let module_bytes = module::build_module(kernel, &spec, &work.join("kbuild"))?;
    phases.mark("module");

    let manifest = Manifest {
        name: name.clone(),
        kernel: ManifestKernel {
            target: kernel.target().to_string(),
            release: kernel.target().release.clone(),
            build_id: kernel.meta().build_id.clone(),
        },
        replace: options.replace,
        set: options.set.clone(),
        functions: manifest_functions,
        new_functions,
        patches: patches
            .iter()
            .map(|p| Digest256 {
                file: manifest::file_name(&p.path),
                sha256: manifest::sha256(p.text.as_bytes()),
            })
            .collect(),
        module: Digest256 {
            file: manifest::file_name(&options.output),
            sha256: manifest::sha256(&module_bytes),
        },
        graft_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let manifest_file = manifest_path(&options.output);
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| BuildError::Unsupported(e.to_string()))?;
    write_outputs(
        &options.output,
        &module_bytes,
        &manifest_file,
        json.as_bytes(),
    )?;
    phases.mark("write");

    Ok(BuildReport {
        manifest,
        module: options.output.clone(),
        manifest_path: manifest_file,
        units: units
            .iter()
            .zip(&diffs)
            .map(|(u, d)| UnitReport {
                unit: u.source.clone(),
                object: u.parent.object_name().to_string(),
                functions: d.functions.clone(),
            })
            .collect(),
        timings: phases.0,
        notes,
        scratch: kept,
    })
}

/// The `graft/patch.h` directives in a post object: (kind, function name), kind being
/// `force` or a callback kind.
fn directives(post: &ElfObject) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (index, section) in post.sections.iter().enumerate() {
        let Some(kind) = section.name.strip_prefix(".graft.") else {
            continue;
        };
        for r in section.relocs() {
            if let graft_diff::correlate::Target::Symbol { symbol, .. } =
                graft_diff::correlate::target_of(post, index, r)
            {
                out.push((kind.to_string(), post.symbols[symbol].name.clone()));
            }
        }
    }
    out
}

/// Whether other units `#include` the source `file`.
fn includers_exist(kernel: &Kernel, cache: &Cache, file: &str) -> Result<bool, BuildError> {
    Ok(!kernel
        .include_graph(cache)?
        .candidate_units(file)
        .is_empty())
}

/// Most units a header change may reach before graft refuses: a patch that replaces code in
/// more places than this is no longer a live patch anyone should review.
const MAX_HEADER_UNITS: usize = 64;

/// The units of the target that include `header`, by the compiler's own dependency lists.
fn units_including(
    kernel: &Kernel,
    cache: &Cache,
    header: &str,
    definitions: Option<&std::collections::BTreeSet<String>>,
    farm: &Path,
    progress: &SharedProgress,
) -> Result<Vec<Unit>, BuildError> {
    let graph = kernel.include_graph(cache)?;
    let candidates = match definitions {
        // Read the patched view: the patch may add the first uses of what it defines.
        Some(names) => graph.candidate_units_using(farm, header, names),
        None => graph.candidate_units(header),
    };
    if candidates.len() > MAX_HEADER_UNITS {
        let what = match definitions {
            Some(names) => format!(
                "units that may use {}",
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            None => "units that may include it".to_string(),
        };
        return Err(BuildError::Unsupported(format!(
            "{header}: {} {what} (more than {MAX_HEADER_UNITS}): a live patch of it would replace code all over the kernel; patch the functions that need the fix instead",
            candidates.len()
        )));
    }
    let task = progress.start(
        &format!("find units including {header}"),
        Some(candidates.len() as u64),
        ProgressUnit::Items,
    );
    // Only units this configuration builds are part of the running kernel; a compile
    // failure of one of those is a real error, not a hint that it is not built.
    let mut map = graft_kernel::KbuildMap::new(kernel, cache);
    let mut built = Vec::new();
    for candidate in &candidates {
        match map.membership(candidate)? {
            graft_kernel::Membership::NotBuilt { reason } => tracing::debug!("{reason}"),
            _ => built.push(candidate.clone()),
        }
    }
    let mut affected = Vec::new();
    for result in compile::prepare_units(kernel, cache, &built, &|_, _| {}) {
        let unit = result?;
        if unit.deps.iter().any(|d| d == header) {
            affected.push(unit);
        }
    }
    task.finish(&format!(
        "{} of {} candidates include it",
        affected.len(),
        candidates.len()
    ));
    // A change narrowed to named definitions may reach no other unit (a new prototype);
    // without names, a header nobody includes is a mistake in the patch.
    if affected.is_empty() && definitions.is_none() {
        return Err(BuildError::Unsupported(format!(
            "no unit of {} includes {header}",
            kernel.target()
        )));
    }
    Ok(affected)
}

/// The sympos of `name` in `object`: pinned by run-pre, else 0 when the name is unique.
fn position(
    object: &str,
    name: &str,
    vmlinux: &graft_kernel::SymbolTable,
    modules: &BTreeMap<String, graft_kernel::SymbolTable>,
    pins: &HashMap<(String, String), u32>,
) -> Result<u32, BuildError> {
    if let Some(&pos) = pins.get(&(object.to_string(), name.to_string())) {
        return Ok(pos);
    }
    let table = if object == "vmlinux" {
        vmlinux
    } else {
        modules
            .get(object)
            .ok_or_else(|| BuildError::Symbol(format!("the target has no module {object}")))?
    };
    match table.lookup(name).len() {
        0 => Err(BuildError::Symbol(format!(
            "{object} has no symbol {name} in kallsyms (is it inlined everywhere in the running kernel?)"
        ))),
        1 => Ok(0),
        n => Err(BuildError::Symbol(format!(
            "{name} occurs {n} times in {object}'s kallsyms and no matched function pins which one the patch means"
        ))),
    }
}

/// Writes module and manifest so that either both appear or neither does.
fn write_outputs(
    module: &Path,
    module_bytes: &[u8],
    manifest: &Path,
    manifest_bytes: &[u8],
) -> Result<(), BuildError> {
    let tmp = |p: &Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        p.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
    };
    let (module_tmp, manifest_tmp) = (tmp(module), tmp(manifest));
    let result = (|| {
        fs::write(&module_tmp, module_bytes)
            .map_err(|e| BuildError::io("writing", &module_tmp, e))?;
        fs::write(&manifest_tmp, manifest_bytes)
            .map_err(|e| BuildError::io("writing", &manifest_tmp, e))?;
        fs::rename(&module_tmp, module).map_err(|e| BuildError::io("writing", module, e))?;
        fs::rename(&manifest_tmp, manifest).map_err(|e| {
            let _ = fs::remove_file(module);
            BuildError::io("writing", manifest, e)
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&module_tmp);
        let _ = fs::remove_file(&manifest_tmp);
    }
    result
}
