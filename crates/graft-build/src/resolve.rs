//! Resolve: how each reference of the patch to the running kernel is bound, and the module's
//! description (`klp_func`s with their positions, callbacks).
//!
//! Every undefined symbol of a patch object is one of:
//! - a function the patch itself defines anew in another unit: bound at link time to the copy;
//! - exported by vmlinux: resolved by the module loader, like any module's;
//! - exported by a module, used by a module's patch: resolved by the livepatch core when the
//!   patched module (which already needs the exporter) arrives;
//! - exported by a module, used by a vmlinux patch: refused (vmlinux cannot depend on it);
//! - anything else (statics, unexported globals): resolved by the livepatch core in the
//!   patched object itself, at the position run-pre matching pinned or, for a unique name, 0.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use graft_diff::External;
use graft_kernel::SymbolTable;

use crate::diff::Diffs;
use crate::extract::Extracted;
use crate::manifest::ManifestFunction;
use crate::module::{KlpFunc, ModuleSpec, Resolution};
use crate::pairs::CompiledPair;
use crate::runpre::RunPreProof;
use crate::BuildError;

/// How one undefined reference is bound, before positions are looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// To the patch's own copy of the function, by this symbol.
    Copy(String),
    /// By the module loader: vmlinux exports it.
    Exported,
    /// By the livepatch core, in `object` (the patched object or the exporting module).
    Livepatch {
        /// Where the symbol lives.
        object: String,
    },
}

/// The binding of `ext`, referenced from a patch of `patched`. `exported_by` is the object
/// exporting the name (Module.symvers), `copy` the patch's own copy of it, if any.
pub fn bind(
    ext: &External,
    patched: &str,
    exported_by: Option<&str>,
    copy: Option<&str>,
) -> Result<Binding, BuildError> {
    if let (false, Some(copy)) = (ext.local, copy) {
        return Ok(Binding::Copy(copy.to_string()));
    }
    match (ext.local, exported_by) {
        (false, Some("vmlinux")) => Ok(Binding::Exported),
        (false, Some(exporter)) if patched != "vmlinux" => Ok(Binding::Livepatch {
            object: exporter.to_string(),
        }),
        (false, Some(exporter)) => Err(BuildError::Unsupported(format!(
            "{}: the patched code uses {}, exported by module {exporter}, which a vmlinux patch cannot depend on",
            ext.unit, ext.name
        ))),
        _ => Ok(Binding::Livepatch {
            object: patched.to_string(),
        }),
    }
}

/// The module description and the manifest's function lists.
#[derive(Debug)]
pub struct Resolved {
    /// What the module is made of.
    pub spec: ModuleSpec,
    /// Replaced functions, for the manifest.
    pub functions: Vec<ManifestFunction>,
    /// Added functions, `object:name`.
    pub new_functions: Vec<String>,
    /// What the patch does differently from the source, by necessity.
    pub notes: Vec<String>,
}

/// Everything [`resolve`] reads.
#[derive(Debug)]
pub struct ResolveInputs<'a> {
    /// Module name.
    pub name: &'a str,
    /// Atomic replace.
    pub replace: bool,
    /// The compiled units.
    pub pairs: &'a [CompiledPair],
    /// Their diffs (for callbacks).
    pub diffs: &'a Diffs,
    /// What run-pre matching proved.
    pub proof: &'a RunPreProof,
    /// Module.symvers: exported name -> exporting object path.
    pub symvers: &'a HashMap<String, String>,
    /// Module.symvers: exported name -> its namespace, for those that have one.
    pub namespaces: &'a HashMap<String, String>,
    /// Where the patch objects are written.
    pub work: &'a Path,
}

/// Binds every reference, settles static keys, and writes each unit's final patch object.
pub fn resolve(
    input: &ResolveInputs<'_>,
    extracted: Vec<Extracted>,
) -> Result<Resolved, BuildError> {
    let mut out = Resolved {
        spec: ModuleSpec {
            name: input.name.to_string(),
            replace: input.replace,
            objects: BTreeMap::new(),
            patch_objects: Vec::new(),
            resolutions: HashMap::new(),
            callbacks: callbacks(input.pairs, input.diffs)?,
            namespaces: Default::default(),
        },
        functions: Vec::new(),
        new_functions: Vec::new(),
        notes: Vec::new(),
    };
    // Global functions the patch itself defines: other units of the same object call the
    // copies, and so does any unit for a function that is new (the running kernel has none;
    // the whole patch is one module, so the copy is there whatever object calls it).
    let copies: HashMap<(String, String), String> = extracted
        .iter()
        .flat_map(|x| {
            x.patch
                .global_copies
                .iter()
                .map(move |(name, copy)| ((x.object.clone(), name.clone()), copy.clone()))
        })
        .collect();
    let new_copies: HashMap<String, String> = extracted
        .iter()
        .flat_map(|x| {
            x.patch
                .global_copies
                .iter()
                .filter(|(name, _)| x.patch.new_functions.contains(name))
                .map(|(name, copy)| (name.clone(), copy.clone()))
        })
        .collect();
    for x in extracted {
        replaced_functions(input.proof, &x, &mut out)?;
        out.new_functions.extend(
            x.patch
                .new_functions
                .iter()
                .map(|n| format!("{}:{n}", x.object)),
        );
        let mut renames: HashMap<String, String> = HashMap::new();
        for ext in &x.patch.externals {
            if let Some(namespace) = input.namespaces.get(&ext.name).filter(|_| !ext.local) {
                out.spec.namespaces.insert(namespace.clone());
            }
            // Module.symvers names exporters by path (net/ceph/libceph); modules go by name.
            let exported_by = input
                .symvers
                .get(&ext.name)
                .map(|p| graft_kernel::normalize_name(p.rsplit('/').next().unwrap_or(p)));
            let copy = copies
                .get(&(x.object.clone(), ext.name.clone()))
                .or_else(|| new_copies.get(&ext.name));
            let resolution = match bind(
                ext,
                &x.object,
                exported_by.as_deref(),
                copy.map(String::as_str),
            )? {
                Binding::Copy(copy) => {
                    // Bound at link time: the undefined reference takes the copy's name.
                    renames.insert(ext.symbol.clone(), copy);
                    continue;
                }
                Binding::Exported => Resolution::Exported(ext.name.clone()),
                Binding::Livepatch { object } => Resolution::Livepatch {
                    sympos: position(&object, &ext.name, input.proof).map_err(|e| match e {
                        BuildError::Symbol(_)
                            if !ext.local && absent(&object, &ext.name, input.proof) =>
                        {
                            BuildError::Symbol(undefined_global(&ext.unit, &ext.name, &object))
                        }
                        BuildError::Symbol(msg) => {
                            BuildError::Symbol(format!("{}: {msg}", ext.unit))
                        }
                        other => other,
                    })?,
                    patched: x.object.clone(),
                    object,
                    name: ext.name.clone(),
                },
            };
            out.spec.resolutions.insert(ext.symbol.clone(), resolution);
        }
        let mut elf = x.patch.elf;
        for sym in elf.symbols.iter_mut() {
            if let Some(copy) = renames.get(&sym.name) {
                sym.name = copy.clone();
            }
        }
        crate::klp::settle_static_keys(&mut elf, &out.spec.resolutions, &x.source, &mut out.notes)?;
        let path = input.work.join(format!("unit{}.o", x.unit));
        let bytes = elf.write(&format!("patch object of {}", x.source))?;
        fs::write(&path, bytes).map_err(|e| BuildError::io("writing", &path, e))?;
        out.spec.patch_objects.push(path);
    }
    Ok(out)
}

/// The `klp_func`s of one unit, at the positions run-pre matching proved.
fn replaced_functions(
    proof: &RunPreProof,
    x: &Extracted,
    out: &mut Resolved,
) -> Result<(), BuildError> {
    for f in &x.patch.functions {
        let sympos = match proof.function_sympos.get(&(x.unit, f.name.clone())) {
            Some(&pos) => pos,
            None => position(&x.object, &f.name, proof)?,
        };
        out.spec
            .objects
            .entry(x.object.clone())
            .or_default()
            .push(KlpFunc {
                old_name: f.name.clone(),
                new_symbol: f.new_symbol.clone(),
                sympos,
            });
        out.functions.push(ManifestFunction {
            object: x.object.clone(),
            name: f.name.clone(),
            sympos,
            old_size: f.old_size,
            new_size: f.new_size,
            unit: f.unit.clone(),
        });
    }
    Ok(())
}

/// Callbacks by object: (kind, symbol of the copy). One of each kind per object.
fn callbacks(
    pairs: &[CompiledPair],
    diffs: &Diffs,
) -> Result<BTreeMap<String, Vec<(String, String)>>, BuildError> {
    let mut by_object: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for c in &diffs.callbacks {
        let object = pairs[c.unit].unit.parent.object_name().to_string();
        let list = by_object.entry(object.clone()).or_default();
        if list.iter().any(|(k, _)| *k == c.kind) {
            return Err(BuildError::Unsupported(format!(
                "{object} has two GRAFT_{} callbacks",
                c.kind.to_uppercase()
            )));
        }
        list.push((
            c.kind.clone(),
            graft_diff::new_function_name(&c.function, c.unit),
        ));
    }
    Ok(by_object)
}

/// Whether `object`'s kallsyms lack `name` altogether.
fn absent(object: &str, name: &str, proof: &RunPreProof) -> bool {
    let table = if object == "vmlinux" {
        Some(&proof.vmlinux)
    } else {
        proof.modules.get(object)
    };
    table.is_none_or(|t| t.lookup(name).is_empty())
}

/// Why a global the patch uses cannot be bound: the running kernel has no such symbol, and no
/// module exports it. Typically a fix split out of a larger update whose other file adds it.
fn undefined_global(unit: &str, name: &str, object: &str) -> String {
    format!(
        "{unit}: the patch uses {name}, which the running kernel does not define ({object} has no such symbol and no module exports it): the patch relies on code it does not carry; if it is one file of a split update, the file that adds {name} is another patch of that update: build them together"
    )
}

/// The sympos of `name` in `object`: pinned by run-pre, else 0 when the name is unique.
pub fn position(object: &str, name: &str, proof: &RunPreProof) -> Result<u32, BuildError> {
    if let Some(&pos) = proof.pins.get(&(object.to_string(), name.to_string())) {
        return Ok(pos);
    }
    let table: &SymbolTable = if object == "vmlinux" {
        &proof.vmlinux
    } else {
        proof
            .modules
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(name: &str, local: bool) -> External {
        External {
            symbol: format!("placeholder_{name}"),
            name: name.into(),
            local,
            unit: "fs/x.c".into(),
        }
    }

    #[test]
    fn the_resolution_policy() {
        let livepatch = |o: &str| Binding::Livepatch { object: o.into() };
        // A copy made by the patch wins for globals, never for statics.
        assert_eq!(
            bind(
                &ext("f", false),
                "vmlinux",
                Some("vmlinux"),
                Some("__graft_new_1_f")
            )
            .unwrap(),
            Binding::Copy("__graft_new_1_f".into())
        );
        assert_eq!(
            bind(&ext("f", true), "vmlinux", None, Some("c")).unwrap(),
            livepatch("vmlinux")
        );
        assert_eq!(
            bind(&ext("printk", false), "nfsd", Some("vmlinux"), None).unwrap(),
            Binding::Exported
        );
        assert_eq!(
            bind(&ext("svc_x", false), "nfsd", Some("sunrpc"), None).unwrap(),
            livepatch("sunrpc")
        );
        assert_eq!(
            bind(&ext("helper", true), "nfsd", None, None).unwrap(),
            livepatch("nfsd")
        );
        assert_eq!(
            bind(&ext("unexported", false), "vmlinux", None, None).unwrap(),
            livepatch("vmlinux")
        );
        // A static never binds to an export of the same name elsewhere.
        assert_eq!(
            bind(&ext("dup", true), "vmlinux", Some("vmlinux"), None).unwrap(),
            livepatch("vmlinux")
        );
        let err = bind(&ext("usb_x", false), "vmlinux", Some("usbcore"), None).unwrap_err();
        assert!(err
            .to_string()
            .contains("exported by module usbcore, which a vmlinux patch cannot depend on"));
    }

    #[test]
    fn positions_come_from_pins_or_uniqueness() {
        let table = |text: &str| SymbolTable::from_kallsyms(Path::new("k"), text).unwrap();
        let proof = RunPreProof {
            function_sympos: HashMap::new(),
            pins: HashMap::from([(("vmlinux".to_string(), "dup".to_string()), 2)]),
            vmlinux: table(
                "ffffffff81000000 t dup\nffffffff81000010 t dup\nffffffff81000020 T once\n",
            ),
            modules: BTreeMap::new(),
        };
        assert_eq!(position("vmlinux", "dup", &proof).unwrap(), 2);
        assert_eq!(position("vmlinux", "once", &proof).unwrap(), 0);
        let missing = position("vmlinux", "gone", &proof).unwrap_err().to_string();
        assert!(missing.contains("has no symbol gone"), "{missing}");
        let unknown = position("nfsd", "x", &proof).unwrap_err().to_string();
        assert!(unknown.contains("no module nfsd"), "{unknown}");
        let proof = RunPreProof {
            pins: HashMap::new(),
            ..proof
        };
        let ambiguous = position("vmlinux", "dup", &proof).unwrap_err().to_string();
        assert!(ambiguous.contains("occurs 2 times"), "{ambiguous}");
    }

    /// A split update's file calling a function another file of the update adds
    /// (virtio_transport_common.c calling vsock_check_source from af_vsock.c) was refused as
    /// "inlined everywhere?"; it is a definition the patch does not carry.
    #[test]
    fn a_global_the_running_kernel_lacks_is_a_definition_the_patch_does_not_carry() {
        let table = |text: &str| SymbolTable::from_kallsyms(Path::new("k"), text).unwrap();
        let proof = RunPreProof {
            function_sympos: HashMap::new(),
            pins: HashMap::new(),
            vmlinux: table("ffffffff81000020 T once\n"),
            modules: BTreeMap::new(),
        };
        assert!(absent("vmlinux", "vsock_check_source", &proof));
        assert!(absent("vsock", "vsock_check_source", &proof));
        assert!(!absent("vmlinux", "once", &proof));
        let why = undefined_global("net/vmw_vsock/x.c", "vsock_check_source", "vmlinux");
        assert!(
            why.contains("does not define") && why.contains("build them together"),
            "{why}"
        );
    }
}
