//! Conversion into the livepatch module format, after kbuild linked the module.
//!
//! Every relocation against a symbol the livepatch core resolves moves to
//! `.klp.rela.<object>.<section>` and the symbol becomes `.klp.sym.<object>.<name>,<sympos>` in
//! `SHN_LIVEPATCH`, for the core to resolve when `<object>` is patched. Debug sections are
//! dropped: they would embed scratch paths and make builds irreproducible. The build-id is then
//! derived from the final contents.

use std::collections::{BTreeMap, HashMap, HashSet};

use graft_elf::{
    klp_rela_name, klp_sym_name, ElfObject, RelocSection, SymSection, SHF_RELA_LIVEPATCH,
};
use object::elf;

use crate::module::Resolution;
use crate::BuildError;

/// Serialises the module with a GNU build-id derived from its final contents. The linker's
/// id also covered the debug information (which names the scratch directory) that conversion
/// drops; deriving it again makes the same inputs give a byte-identical module.
pub fn with_content_build_id(module: &mut ElfObject, name: &str) -> Result<Vec<u8>, BuildError> {
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

/// Rewrites references to livepatch-resolved symbols into the livepatch format.
pub fn convert(
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

    refuse_early_klp_relocations(module, &klp_object)?;
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

/// Sections the module loader reads while it loads the livepatch module (alternatives,
/// paravirt sites, jump labels, static calls), before the livepatch core has resolved
/// relocations meant for a module that may load later.
const LOADER_SECTIONS: &[&str] = &[
    ".altinstructions",
    ".altinstr_replacement",
    ".parainstructions",
    "__jump_table",
    ".static_call_sites",
];

/// A relocation the livepatch core resolves for a module (`.klp.rela.<module>.*`) is applied
/// only when that module loads; if it lies in a section the module loader reads at once, the
/// loader would use the unresolved value. (vmlinux's are applied during the module's own load,
/// before those sections are read.) Such a patch is refused, as kpatch does.
fn refuse_early_klp_relocations(
    module: &ElfObject,
    klp_object: &HashMap<usize, String>,
) -> Result<(), BuildError> {
    for section in &module.sections {
        let early = LOADER_SECTIONS
            .iter()
            .any(|name| section.name.starts_with(name));
        if !early {
            continue;
        }
        for r in section.relocs() {
            let Some(object) = klp_object.get(&r.symbol).filter(|o| *o != "vmlinux") else {
                continue;
            };
            return Err(BuildError::Unsupported(format!(
                "{}: an entry refers to {} of {object}, which only the livepatch core can resolve, when {object} loads; the module loader reads {} when the patch module loads, before that: keep such references out of alternatives, jump labels and static calls in the patched code",
                section.name, module.symbols[r.symbol].name, section.name
            )));
        }
    }
    Ok(())
}

pub(crate) fn remove_sections(module: &mut ElfObject, dropped: &HashSet<usize>) {
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
