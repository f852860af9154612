//! Turning patch objects into a loadable livepatch module.
//!
//! 1. Generate the hook: a C file declaring the `klp_patch` (one `klp_object` per patched
//!    object, one `klp_func` per replaced function with its `old_sympos`) that enables itself
//!    at load.
//! 2. Link hook and patch objects with the target's kbuild. References to symbols that are not
//!    exported stay undefined, so modpost is told to warn, not fail.
//! 3. Convert: every relocation against such a symbol moves to `.klp.rela.<object>.<section>`
//!    and the symbol becomes `.klp.sym.<object>.<name>,<sympos>` in `SHN_LIVEPATCH`, for the
//!    livepatch core to resolve when `<object>` is patched. Debug sections are dropped: they
//!    would embed scratch paths and make builds irreproducible.
//! 4. Check the result against every rule of the format before anyone loads it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use graft_elf::{
    klp_rela_name, klp_sym_name, ElfObject, RelocSection, SymSection, SHF_RELA_LIVEPATCH,
};
use graft_kernel::Kernel;
use object::elf;

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
}

fn hook_source(spec: &ModuleSpec) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "// SPDX-License-Identifier: GPL-2.0\n// The livepatch core's view of {}: which functions it replaces.", spec.name);
    c.push_str(
        "#include <linux/kernel.h>\n#include <linux/module.h>\n#include <linux/livepatch.h>\n\n",
    );
    let mut n = 0;
    let mut tables = Vec::new();
    let mut objects: Vec<&String> = spec.objects.keys().chain(spec.callbacks.keys()).collect();
    objects.sort();
    objects.dedup();
    let none = Vec::new();
    for object in objects {
        let funcs = spec.objects.get(object).unwrap_or(&none);
        let table = format!("graft_funcs_{}", tables.len());
        let mut entries = String::new();
        for f in funcs {
            let _ = writeln!(
                c,
                "extern char graft_new_{n}[] __asm__(\"{}\");",
                f.new_symbol
            );
            let _ = writeln!(
                entries,
                "\t{{ .old_name = \"{}\", .new_func = graft_new_{n}, .old_sympos = {} }},",
                f.old_name, f.sympos
            );
            n += 1;
        }
        let _ = writeln!(
            c,
            "\nstatic struct klp_func {table}[] = {{\n{entries}\t{{ }}\n}};\n"
        );
        let mut callbacks = String::new();
        for (kind, symbol) in spec.callbacks.get(object).into_iter().flatten() {
            let ret = if kind == "pre_patch" { "int" } else { "void" };
            let _ = writeln!(
                c,
                "extern {ret} graft_cb_{n}(struct klp_object *) __asm__(\"{symbol}\");"
            );
            let _ = write!(callbacks, " .{kind} = graft_cb_{n},");
            n += 1;
        }
        tables.push((object.clone(), table, callbacks));
    }
    c.push_str("static struct klp_object graft_objects[] = {\n");
    for (object, table, callbacks) in &tables {
        let name = if object == "vmlinux" {
            "NULL".to_string()
        } else {
            format!("\"{object}\"")
        };
        let callbacks = if callbacks.is_empty() {
            String::new()
        } else {
            format!(", .callbacks = {{{callbacks} }}")
        };
        let _ = writeln!(c, "\t{{ .name = {name}, .funcs = {table}{callbacks} }},");
    }
    c.push_str("\t{ }\n};\n\n");
    let _ = writeln!(
        c,
        "static struct klp_patch graft_patch = {{\n\t.mod = THIS_MODULE,\n\t.objs = graft_objects,\n\t.replace = {},\n}};\n",
        spec.replace
    );
    c.push_str("static int __init graft_patch_init(void)\n{\n\treturn klp_enable_patch(&graft_patch);\n}\n\n");
    c.push_str("static void __exit graft_patch_exit(void)\n{\n}\n\n");
    c.push_str("module_init(graft_patch_init);\nmodule_exit(graft_patch_exit);\nMODULE_LICENSE(\"GPL\");\nMODULE_INFO(livepatch, \"Y\");\n");
    let _ = writeln!(c, "MODULE_DESCRIPTION(\"graft live patch {}\");", spec.name);
    c
}

/// Builds the module in `dir` and returns the converted, checked module bytes.
pub fn build_module(kernel: &Kernel, spec: &ModuleSpec, dir: &Path) -> Result<Vec<u8>, BuildError> {
    fs::create_dir_all(dir).map_err(|e| BuildError::io("creating", dir, e))?;
    fs::write(dir.join("graft_hook.c"), hook_source(spec))
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
    convert(&mut module, &spec.resolutions)?;
    let written = with_content_build_id(&mut module, &spec.name)?;
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

/// Serialises the module with a GNU build-id derived from its final contents. The linker's
/// id also covered the debug information (which names the scratch directory) that conversion
/// drops; deriving it again makes the same inputs give a byte-identical module.
fn with_content_build_id(module: &mut ElfObject, name: &str) -> Result<Vec<u8>, BuildError> {
    use sha2::Digest;
    let Some(note) = module.section_index(".note.gnu.build-id") else {
        return Ok(module.write(name)?);
    };
    // Note layout: namesz, descsz, type (4 bytes each), "GNU\0", then the id.
    const DESC: usize = 16;
    let len = module.sections[note].data.len();
    if len <= DESC {
        return Ok(module.write(name)?);
    }
    module.sections[note].data[DESC..].fill(0);
    let zeroed = module.write(name)?;
    let digest = sha2::Sha256::digest(&zeroed);
    let id_len = len - DESC;
    module.sections[note].data[DESC..].copy_from_slice(&digest[..id_len.min(digest.len())]);
    Ok(module.write(name)?)
}

/// `make -C <kbuild> M=<dir> modules` as graft links livepatch modules: modpost warns (not
/// fails) on the symbols the livepatch core resolves later.
pub fn kbuild_modules(kernel: &Kernel, dir: &Path) -> Command {
    let mut make = kernel.kbuild_modules(dir);
    make.arg("KBUILD_MODPOST_WARN=1");
    make
}

/// Rewrites references to livepatch-resolved symbols into the livepatch format.
fn convert(
    module: &mut ElfObject,
    resolutions: &HashMap<String, Resolution>,
) -> Result<(), BuildError> {
    // Debug information is for the compiled objects, not the module (and embeds scratch paths).
    let dropped: HashSet<usize> = module
        .sections
        .iter()
        .enumerate()
        .filter(|(_, s)| s.name.starts_with(".debug") || s.name == ".comment")
        .map(|(i, _)| i)
        .collect();
    if module.symbols.iter().any(
        |s| matches!(s.section, SymSection::Section(i) if dropped.contains(&i) && !s.is_section()),
    ) {
        return Err(BuildError::ModuleFailed(
            "a symbol lives in a debug section".into(),
        ));
    }
    remove_sections(module, &dropped);

    let mut klp_object: HashMap<usize, String> = HashMap::new();
    for (i, sym) in module.symbols.iter_mut().enumerate() {
        if sym.section != SymSection::Undefined {
            continue;
        }
        match resolutions.get(&sym.name) {
            Some(Resolution::Livepatch {
                patched,
                object,
                name,
                sympos,
            }) => {
                sym.name = klp_sym_name(object, name, *sympos);
                sym.section = SymSection::LivePatch;
                sym.bind = elf::STB_GLOBAL;
                // Relocations apply when the patched object is: they go in its sections.
                klp_object.insert(i, patched.clone());
            }
            Some(Resolution::Exported(name)) => sym.name = name.clone(),
            None => {}
        }
    }

    for section in module.sections.iter_mut() {
        let mut moved: BTreeMap<String, Vec<graft_elf::Reloc>> = BTreeMap::new();
        for rs in section
            .relocations
            .iter_mut()
            .filter(|r| r.flags & SHF_RELA_LIVEPATCH == 0)
        {
            rs.relocs.retain(|r| match klp_object.get(&r.symbol) {
                Some(object) => {
                    moved.entry(object.clone()).or_default().push(*r);
                    false
                }
                None => true,
            });
        }
        for (object, relocs) in moved {
            section.relocations.push(RelocSection {
                name: klp_rela_name(&object, &section.name),
                flags: u64::from(elf::SHF_ALLOC | elf::SHF_INFO_LINK) | SHF_RELA_LIVEPATCH,
                relocs,
            });
        }
    }
    Ok(())
}

fn remove_sections(module: &mut ElfObject, dropped: &HashSet<usize>) {
    let mut new_index = Vec::with_capacity(module.sections.len());
    let mut next = 0;
    for i in 0..module.sections.len() {
        new_index.push((!dropped.contains(&i)).then(|| {
            next += 1;
            next - 1
        }));
    }
    // Section symbols of dropped sections go; others are renumbered.
    let mut symbol_map = Vec::with_capacity(module.symbols.len());
    let mut kept = Vec::with_capacity(module.symbols.len());
    for sym in module.symbols.drain(..) {
        match sym.section {
            SymSection::Section(i) if new_index[i].is_none() => symbol_map.push(None),
            SymSection::Section(i) => {
                let mut s = sym;
                s.section = SymSection::Section(new_index[i].unwrap_or_default());
                symbol_map.push(Some(kept.len()));
                kept.push(s);
            }
            _ => {
                symbol_map.push(Some(kept.len()));
                kept.push(sym);
            }
        }
    }
    module.symbols = kept;
    let sections = std::mem::take(&mut module.sections);
    for (i, mut section) in sections.into_iter().enumerate() {
        if new_index[i].is_none() {
            continue;
        }
        section.link = section.link.and_then(|l| new_index[l]);
        for rs in section.relocations.iter_mut() {
            rs.relocs.retain_mut(|r| match symbol_map[r.symbol] {
                Some(s) => {
                    r.symbol = s;
                    true
                }
                None => false,
            });
        }
        module.sections.push(section);
    }
}

/// Every symbol exported by vmlinux or a module of the target (Module.symvers).
pub fn exported_symbols(kernel: &Kernel) -> Result<HashSet<String>, BuildError> {
    Ok(symvers(kernel)?.into_keys().collect())
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

/// Jump labels and static call sites whose key only the livepatch core can resolve cannot be
/// set up by the module loader, which processes them before the livepatch core runs. Static
/// call sites are dropped (the call through the trampoline stays correct); tracepoint jump
/// labels are dropped too (the tracepoint stays off in the patched code, noted); any other
/// such static key is refused with what to do instead.
pub fn settle_static_keys(
    elf: &mut ElfObject,
    resolutions: &HashMap<String, Resolution>,
    unit: &str,
    notes: &mut Vec<String>,
) -> Result<(), BuildError> {
    for (name, entry, key_at) in [("__jump_table", 16u64, 8u64), (".static_call_sites", 8, 4)] {
        let Some(index) = elf.section_index(name) else {
            continue;
        };
        let relocs: Vec<graft_elf::Reloc> = elf.sections[index].relocs().copied().collect();
        let mut drop_entries = HashSet::new();
        for r in relocs.iter().filter(|r| r.offset % entry == key_at) {
            let symbol = &elf.symbols[r.symbol];
            let Some(Resolution::Livepatch { name: key, .. }) = resolutions.get(&symbol.name)
            else {
                continue;
            };
            if name == ".static_call_sites" {
                drop_entries.insert(r.offset / entry);
            } else if key.starts_with("__tracepoint_") {
                drop_entries.insert(r.offset / entry);
                let note = format!("{unit}: tracepoint {} stays disabled in the patched code (its key is not exported)", key.trim_start_matches("__tracepoint_"));
                if !notes.contains(&note) {
                    notes.push(note);
                }
            } else {
                return Err(BuildError::Unsupported(format!(
                    "{unit}: the patched code branches on the static key {key}, which is not exported: the module loader sets up jump labels before the livepatch core can resolve it; in the patch, test it with static_key_enabled() instead of static_branch_*()"
                )));
            }
        }
        if drop_entries.is_empty() {
            continue;
        }
        let section = &mut elf.sections[index];
        let old = std::mem::take(&mut section.data);
        let mut kept = 0u64;
        let mut new_offset = HashMap::new();
        for e in 0..(old.len() as u64 / entry) {
            if drop_entries.contains(&e) {
                continue;
            }
            new_offset.insert(e, kept);
            section
                .data
                .extend_from_slice(&old[(e * entry) as usize..((e + 1) * entry) as usize]);
            kept += 1;
        }
        section.size = section.data.len() as u64;
        for rs in section.relocations.iter_mut() {
            rs.relocs
                .retain_mut(|r| match new_offset.get(&(r.offset / entry)) {
                    Some(&k) => {
                        r.offset = k * entry + r.offset % entry;
                        true
                    }
                    None => false,
                });
        }
    }
    Ok(())
}
