//! The livepatch module ELF format (the kernel's Documentation/livepatch/module-elf-format.rst):
//! constants, names, and a checker for every rule the livepatch core relies on.
//!
//! References from patched code to symbols the module loader cannot resolve (anything not
//! exported) are carried in relocation sections named `.klp.rela.<object>.<section>`, flagged
//! `SHF_RELA_LIVEPATCH`, whose symbols are named `.klp.sym.<object>.<symbol>,<sympos>` and
//! defined in the pseudo-section `SHN_LIVEPATCH`. The livepatch core resolves and applies them
//! when `<object>` (vmlinux, or a module when it loads) is patched.

use object::elf;

use crate::{ElfObject, SymSection};

/// `st_shndx` of symbols the livepatch core resolves (include/uapi/linux/elf.h).
pub const SHN_LIVEPATCH: u16 = 0xff20;
/// `sh_flags` bit of relocation sections the livepatch core applies (include/uapi/linux/elf.h).
pub const SHF_RELA_LIVEPATCH: u64 = 0x0010_0000;

/// Longest object name the core parses (`MODULE_NAME_LEN - 1`).
const MAX_OBJECT_NAME: usize = 55;
/// Longest symbol name the core parses (`KSYM_NAME_LEN - 1` in 6.1's sscanf format).
const MAX_SYMBOL_NAME: usize = 511;

/// `.klp.rela.<object>.<section>`.
pub fn klp_rela_name(object: &str, section: &str) -> String {
    format!(".klp.rela.{object}.{section}")
}

/// `.klp.sym.<object>.<symbol>,<sympos>`.
pub fn klp_sym_name(object: &str, symbol: &str, sympos: u32) -> String {
    format!(".klp.sym.{object}.{symbol},{sympos}")
}

/// Splits a `.klp.sym.` name into (object, symbol, sympos) as the kernel's sscanf does.
pub fn parse_klp_sym_name(name: &str) -> Option<(&str, &str, u32)> {
    let rest = name.strip_prefix(".klp.sym.")?;
    let (object, rest) = rest.split_once('.')?;
    let (symbol, pos) = rest.rsplit_once(',')?;
    Some((object, symbol, pos.parse().ok()?))
}

/// The rules a livepatch module must follow, each checked by [`check_livepatch_module`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KlpRule {
    /// `.modinfo` has `livepatch=Y`.
    ModinfoLivepatch,
    /// A `.klp.rela.` section is SHT_RELA with SHF_ALLOC and SHF_RELA_LIVEPATCH set, and a
    /// section with SHF_RELA_LIVEPATCH is named `.klp.rela.`.
    KlpRelaSection,
    /// Object names have no dot and at most 55 characters.
    ObjectName,
    /// Every relocation of a `.klp.rela.` section uses a `SHN_LIVEPATCH` symbol.
    KlpRelaSymbol,
    /// `SHN_LIVEPATCH` symbols are named `.klp.sym.<object>.<name>,<pos>`, name at most 511
    /// characters without a comma.
    KlpSymName,
    /// A module's `.klp.rela.` section does not reference `vmlinux` symbols.
    ModuleRelaVmlinuxSymbol,
    /// `SHN_LIVEPATCH` symbols are used only by `.klp.rela.` sections.
    KlpSymOutsideKlpRela,
    /// Every undefined symbol is exported by vmlinux or a module (the loader can resolve it).
    UnresolvedSymbol,
    /// Relocation types are ones the x86-64 module loader applies.
    RelocationType,
}

/// One broken rule, with where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KlpViolation {
    /// The rule.
    pub rule: KlpRule,
    /// What breaks it.
    pub detail: String,
}

impl std::fmt::Display for KlpViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.rule, self.detail)
    }
}

/// Checks a built livepatch module against the format. `exported` answers whether an undefined
/// symbol is exported by the kernel or a module (Module.symvers).
pub fn check_livepatch_module(
    module: &ElfObject,
    exported: &dyn Fn(&str) -> bool,
) -> Vec<KlpViolation> {
    let mut out = Vec::new();
    let mut violation = |rule, detail: String| out.push(KlpViolation { rule, detail });

    let modinfo = module.sections.iter().find(|s| s.name == ".modinfo");
    let has_livepatch =
        modinfo.is_some_and(|s| s.data.split(|&b| b == 0).any(|kv| kv == b"livepatch=Y"));
    if !has_livepatch {
        violation(
            KlpRule::ModinfoLivepatch,
            ".modinfo lacks livepatch=Y".into(),
        );
    }

    for section in &module.sections {
        for rs in &section.relocations {
            let is_klp_flag = rs.flags & SHF_RELA_LIVEPATCH != 0;
            let klp_object = rs
                .name
                .strip_prefix(".klp.rela.")
                .and_then(|r| r.split_once('.'))
                .map(|(o, _)| o);
            if is_klp_flag != klp_object.is_some()
                || (is_klp_flag && rs.flags & u64::from(elf::SHF_ALLOC) == 0)
            {
                violation(
                    KlpRule::KlpRelaSection,
                    format!("{} (flags {:#x}) for {}", rs.name, rs.flags, section.name),
                );
            }
            if let Some(object) = klp_object {
                if object.is_empty() || object.len() > MAX_OBJECT_NAME {
                    violation(
                        KlpRule::ObjectName,
                        format!("{}: object name `{object}`", rs.name),
                    );
                }
            }
            for r in &rs.relocs {
                let Some(sym) = module.symbols.get(r.symbol) else {
                    continue;
                };
                if crate::x86_64::reloc_kind(r.r_type).is_none() {
                    violation(
                        KlpRule::RelocationType,
                        format!(
                            "{}+{:#x}: {}",
                            section.name,
                            r.offset,
                            crate::x86_64::reloc_name(r.r_type)
                        ),
                    );
                }
                match (klp_object, sym.section == SymSection::LivePatch) {
                    (Some(object), true) => {
                        if object != "vmlinux"
                            && parse_klp_sym_name(&sym.name).is_some_and(|(o, _, _)| o == "vmlinux")
                        {
                            violation(
                                KlpRule::ModuleRelaVmlinuxSymbol,
                                format!("{} uses {}", rs.name, sym.name),
                            );
                        }
                    }
                    (Some(_), false) => violation(
                        KlpRule::KlpRelaSymbol,
                        format!(
                            "{}+{:#x} uses `{}`, not a SHN_LIVEPATCH symbol",
                            rs.name, r.offset, sym.name
                        ),
                    ),
                    (None, true) => violation(
                        KlpRule::KlpSymOutsideKlpRela,
                        format!(
                            "{} uses {} from a normal relocation section",
                            rs.name, sym.name
                        ),
                    ),
                    (None, false) => {}
                }
            }
        }
    }
    for (i, sym) in module.symbols.iter().enumerate() {
        match sym.section {
            SymSection::LivePatch => match parse_klp_sym_name(&sym.name) {
                Some((object, name, _)) => {
                    if object.is_empty() || object.len() > MAX_OBJECT_NAME {
                        violation(
                            KlpRule::ObjectName,
                            format!("{}: object name `{object}`", sym.name),
                        );
                    }
                    if name.is_empty() || name.len() > MAX_SYMBOL_NAME || name.contains(',') {
                        violation(KlpRule::KlpSymName, format!("{}: symbol name", sym.name));
                    }
                }
                None => violation(
                    KlpRule::KlpSymName,
                    format!("`{}` is not .klp.sym.<object>.<name>,<pos>", sym.name),
                ),
            },
            SymSection::Undefined if i > 0 && !sym.name.is_empty() && !exported(&sym.name) => {
                violation(
                    KlpRule::UnresolvedSymbol,
                    format!(
                        "`{}` is undefined and exported by nothing the loader knows",
                        sym.name
                    ),
                )
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let name = klp_sym_name("vmlinux", "jhash.constprop.0", 2);
        assert_eq!(name, ".klp.sym.vmlinux.jhash.constprop.0,2");
        assert_eq!(
            parse_klp_sym_name(&name),
            Some(("vmlinux", "jhash.constprop.0", 2))
        );
        assert_eq!(
            klp_rela_name("isofs", ".text.isofs_lookup"),
            ".klp.rela.isofs..text.isofs_lookup"
        );
        assert_eq!(parse_klp_sym_name(".klp.sym.vmlinux.noposition"), None);
    }
}
