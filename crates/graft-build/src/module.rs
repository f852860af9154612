//! Module: linking the patch objects into a loadable livepatch module.
//!
//! 1. Write the hook ([`crate::hook`]).
//! 2. Link hook and patch objects with the target's kbuild. References to symbols that are not
//!    exported stay undefined, so modpost is told to warn, not fail.
//! 3. Convert into the livepatch format ([`crate::klp`]).
//! 4. Check the result against every rule of the format before anyone loads it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use graft_elf::ElfObject;
use graft_kernel::Kernel;

use crate::BuildError;

/// One `klp_func`.
#[derive(Clone, Debug)]
pub struct KlpFunc {
    /// The function's name in the running kernel.
    pub old_name: String,
    /// The new version's symbol in the patch object.
    pub new_symbol: String,
    /// Its position among kallsyms entries of that name (0: unique).
    pub sympos: u32,
}

/// How an undefined symbol of the patch is resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// By the module loader: exported.
    Exported(String),
    /// By the livepatch core when `patched` (vmlinux or a module) is patched: the symbol
    /// `name` at `sympos` of `object` (the same object, or a module `patched` depends on).
    Livepatch {
        patched: String,
        object: String,
        name: String,
        sympos: u32,
    },
}

/// Everything needed to make the module.
#[derive(Debug)]
pub struct ModuleSpec {
    /// Module name.
    pub name: String,
    /// Atomic replace.
    pub replace: bool,
    /// Functions by object (`vmlinux` or module name).
    pub objects: BTreeMap<String, Vec<KlpFunc>>,
    /// Patch object files.
    pub patch_objects: Vec<PathBuf>,
    /// Resolution of each undefined symbol of the patch objects, by placeholder name.
    pub resolutions: HashMap<String, Resolution>,
    /// Callbacks by object: (kind, e.g. `pre_patch`, symbol in the patch object).
    pub callbacks: BTreeMap<String, Vec<(String, String)>>,
    /// Symbol namespaces the patch's references need imported (`MODULE_IMPORT_NS`).
    pub namespaces: std::collections::BTreeSet<String>,
}

/// Builds the module in `dir` and returns the converted, checked module bytes.
pub fn build_module(kernel: &Kernel, spec: &ModuleSpec, dir: &Path) -> Result<Vec<u8>, BuildError> {
    fs::create_dir_all(dir).map_err(|e| BuildError::io("creating", dir, e))?;
    fs::write(dir.join("graft_hook.c"), crate::hook::hook_source(spec))
        .map_err(|e| BuildError::io("writing", dir, e))?;
    let mut objects = vec!["graft_hook.o".to_string()];
    for (i, path) in spec.patch_objects.iter().enumerate() {
        let name = format!("graft_patch_{i}.o");
        fs::copy(path, dir.join(format!("{name}_shipped")))
            .map_err(|e| BuildError::io("copying", path, e))?;
        // modpost reads every object's .cmd file for its sources; the shipped-file rule
        // writes none, so describe it: the object is its own (only) source.
        let target = dir.join(&name);
        let cmd = format!(
            "cmd_{t} := cat {t}_shipped > {t}\n\nsource_{t} := {t}_shipped\n\ndeps_{t} := \\\n\n{t}: $(deps_{t})\n\n$(deps_{t}):\n",
            t = target.display()
        );
        fs::write(dir.join(format!(".{name}.cmd")), cmd)
            .map_err(|e| BuildError::io("writing", dir, e))?;
        objects.push(name);
    }
    let kbuild = format!(
        "obj-m := {name}.o\n{name}-y := {}\n",
        objects.join(" "),
        name = spec.name
    );
    fs::write(dir.join("Kbuild"), kbuild).map_err(|e| BuildError::io("writing", dir, e))?;

    let log = dir.join("kbuild.log");
    let out = fs::File::create(&log).map_err(|e| BuildError::io("creating", &log, e))?;
    let err = out
        .try_clone()
        .map_err(|e| BuildError::io("creating", &log, e))?;
    let mut make = kbuild_modules(kernel, dir);
    let status = make
        .env("LC_ALL", "C")
        .env_remove("MAKEFLAGS")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(|e| BuildError::io("running kbuild in", dir, e))?;
    let ko = dir.join(format!("{}.ko", spec.name));
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    if !status.success() || !ko.is_file() {
        let lines: Vec<&str> = log_text.lines().collect();
        return Err(BuildError::ModuleFailed(format!(
            "kbuild failed to link the module:\n{}",
            lines[lines.len().saturating_sub(15)..].join("\n")
        )));
    }
    // modpost may only complain about the symbols graft resolves through the livepatch core.
    for line in log_text.lines().filter(|l| l.contains("undefined!")) {
        let symbol = line.split('"').nth(1).unwrap_or_default();
        if !matches!(
            spec.resolutions.get(symbol),
            Some(Resolution::Livepatch { .. })
        ) {
            return Err(BuildError::ModuleFailed(format!(
                "modpost: `{symbol}` is undefined and nothing resolves it"
            )));
        }
    }
    let bytes = fs::read(&ko).map_err(|e| BuildError::io("reading", &ko, e))?;
    let mut module = ElfObject::parse(&ko.display().to_string(), &bytes)?;
    crate::klp::convert(&mut module, &spec.resolutions)?;
    let written = crate::klp::with_content_build_id(&mut module, &spec.name)?;
    let reparsed = ElfObject::parse(&format!("{} (converted)", spec.name), &written)?;
    let exported = exported_symbols(kernel)?;
    let violations = graft_elf::check_livepatch_module(&reparsed, &|name| exported.contains(name));
    if !violations.is_empty() {
        let list: Vec<String> = violations.iter().map(|v| format!("  {v}")).collect();
        return Err(BuildError::ModuleFailed(format!(
            "the module breaks the livepatch ELF format:\n{}",
            list.join("\n")
        )));
    }
    Ok(written)
}

/// `make -C <kbuild> M=<dir> modules` as graft links livepatch modules: modpost warns (not
/// fails) on the symbols the livepatch core resolves later.
pub fn kbuild_modules(kernel: &Kernel, dir: &Path) -> Command {
    let mut make = kernel.kbuild_modules(dir);
    make.arg("KBUILD_MODPOST_WARN=1");
    make
}

/// Every symbol exported by vmlinux or a module of the target (Module.symvers).
pub fn exported_symbols(kernel: &Kernel) -> Result<HashSet<String>, BuildError> {
    Ok(symvers(kernel)?.into_keys().collect())
}

/// The namespace of each exported symbol that has one (`EXPORT_SYMBOL_NS`), from
/// Module.symvers: a module using such a symbol must import the namespace.
pub fn namespaces(kernel: &Kernel) -> Result<HashMap<String, String>, BuildError> {
    let path = kernel.kbuild_dir().join("Module.symvers");
    let text = fs::read_to_string(&path).map_err(|e| BuildError::io("reading", &path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let namespace = f.get(4).filter(|n| !n.is_empty())?;
            Some((f.get(1)?.to_string(), namespace.to_string()))
        })
        .collect())
}

/// Module.symvers: exported symbol -> exporting object (`vmlinux` or a module path).
pub fn symvers(kernel: &Kernel) -> Result<HashMap<String, String>, BuildError> {
    let path = kernel.kbuild_dir().join("Module.symvers");
    let text = fs::read_to_string(&path).map_err(|e| BuildError::io("reading", &path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let _crc = f.next()?;
            let name = f.next()?;
            let object = f.next()?;
            Some((name.to_string(), object.to_string()))
        })
        .collect())
}
