//! Building the patch object of one unit: the changed and new functions, what they need
//! copied, and references to the running kernel for everything else.

use std::collections::{BTreeMap, HashMap};

use graft_elf::{ElfObject, Reloc, Section, SymSection, Symbol};
use object::elf;

use crate::compare::{is_private_constant, relocs_in, UnitDiff, Verdict};
use crate::correlate::{target_of, Target};
use crate::naming::{is_cold_part, NEW_FUNCTION_PREFIX};
use crate::special::{Handling, ORC_ENTRY_SIZE};
use crate::Refusal;

/// A function the patch replaces.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PatchedFunction {
    /// Its name in the running kernel.
    pub name: String,
    /// The symbol of its new version in the patch object.
    pub new_symbol: String,
    /// The unit it comes from.
    pub unit: String,
    /// Size in the running kernel.
    pub old_size: u64,
    /// Size of the new version.
    pub new_size: u64,
}

/// A reference from the patch to something in the running kernel (or a module).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct External {
    /// The undefined symbol's name in the patch object.
    pub symbol: String,
    /// The name in the running kernel's kallsyms.
    pub name: String,
    /// Whether the name is local to the unit (static): such names can repeat in kallsyms.
    pub local: bool,
    /// The unit that references it.
    pub unit: String,
}

/// The patch object of one unit.
#[derive(Debug)]
pub struct PatchObject {
    /// The relocatable object.
    pub elf: ElfObject,
    /// Functions it replaces.
    pub functions: Vec<PatchedFunction>,
    /// Functions it adds.
    pub new_functions: Vec<String>,
    /// References to the running kernel.
    pub externals: Vec<External>,
    /// Global functions it defines: (name in the source, symbol of the copy), so other units
    /// of the same patch can call the copies.
    pub global_copies: Vec<(String, String)>,
}

/// The symbol the patch object gives the copy of function `name` of unit `unit_index`.
pub fn new_function_name(name: &str, unit_index: usize) -> String {
    if unit_index == 0 {
        format!("{NEW_FUNCTION_PREFIX}{name}")
    } else {
        format!("{NEW_FUNCTION_PREFIX}{unit_index}_{name}")
    }
}

struct Carved {
    start: u64,
    end: u64,
    out_symbol: usize,
}

struct Extractor<'a> {
    unit: &'a str,
    unit_index: usize,
    diff: &'a UnitDiff,
    pre: &'a ElfObject,
    post: &'a ElfObject,
    out: ElfObject,
    carved: BTreeMap<usize, Vec<Carved>>,
    carved_symbol: HashMap<usize, usize>,
    copied: HashMap<usize, usize>,
    copied_symbols: HashMap<usize, usize>,
    externals: BTreeMap<(String, bool), usize>,
    external_list: Vec<External>,
}

/// Copies the included functions of `diff` out of `post` into a new object.
pub fn extract(
    diff: &UnitDiff,
    pre: &ElfObject,
    post: &ElfObject,
    unit_index: usize,
    ctx: &crate::Context,
) -> Result<PatchObject, Refusal> {
    let mut x = Extractor {
        unit: &diff.unit,
        unit_index,
        diff,
        pre,
        post,
        out: ElfObject::new(),
        carved: BTreeMap::new(),
        carved_symbol: HashMap::new(),
        copied: HashMap::new(),
        copied_symbols: HashMap::new(),
        externals: BTreeMap::new(),
        external_list: Vec::new(),
    };
    x.out.os_abi = post.os_abi;
    x.out.e_flags = post.e_flags;

    let included: Vec<&crate::FunctionVerdict> = diff.included().collect();
    let mut chosen: Vec<usize> = included.iter().filter_map(|v| v.post_symbol).collect();
    // Cold parts travel with their parent.
    for v in &included {
        let prefix = format!("{}.cold", v.name);
        for (i, s) in post.symbols.iter().enumerate() {
            if s.kind == elf::STT_FUNC && s.name.starts_with(&prefix) && !chosen.contains(&i) {
                chosen.push(i);
            }
        }
    }
    let mut functions = Vec::new();
    let mut new_functions = Vec::new();
    let mut global_copies = Vec::new();
    for &q in &chosen {
        let verdict = diff.functions.iter().find(|v| v.post_symbol == Some(q));
        let sym = &post.symbols[q];
        let is_replacement = verdict.is_some_and(|v| v.verdict == Verdict::Changed && v.redirect)
            && !is_cold_part(&sym.name);
        let new_name = x.new_name(&sym.name);
        if !sym.is_local() {
            global_copies.push((sym.name.clone(), new_name.clone()));
        }
        // Global, so the hook can name replacements and callbacks; the names are unique.
        x.carve(q, &new_name, true)?;
        match verdict {
            Some(v) if is_replacement => functions.push(PatchedFunction {
                name: v.pre_name.clone().unwrap_or_else(|| v.name.clone()),
                new_symbol: new_name,
                unit: diff.unit.clone(),
                old_size: v.pre_size.unwrap_or_default(),
                new_size: sym.size,
            }),
            _ if !is_cold_part(&sym.name) && verdict.is_some_and(|v| v.verdict == Verdict::New) => {
                new_functions.push(sym.name.clone())
            }
            _ => {}
        }
    }
    for &q in &chosen {
        x.relocate_function(q)?;
    }
    x.special_sections(&ctx.layout)?;
    Ok(PatchObject {
        elf: x.out,
        functions,
        new_functions,
        externals: x.external_list,
        global_copies,
    })
}

impl Extractor<'_> {
    fn new_name(&self, name: &str) -> String {
        new_function_name(name, self.unit_index)
    }

    fn refuse(&self, what: String) -> Refusal {
        Refusal::Unsupported {
            unit: self.unit.to_string(),
            what,
        }
    }

    fn carve(&mut self, q: usize, new_name: &str, global: bool) -> Result<(), Refusal> {
        let sym = &self.post.symbols[q];
        let SymSection::Section(section) = sym.section else {
            return Err(self.refuse(format!("function {} has no section", sym.name)));
        };
        let src = &self.post.sections[section];
        let data = src
            .data
            .get(sym.value as usize..(sym.value + sym.size) as usize)
            .ok_or_else(|| self.refuse(format!("function {} lies outside {}", sym.name, src.name)))?
            .to_vec();
        let mut out = Section::new(
            format!(".text.{new_name}"),
            src.kind,
            src.flags,
            src.align.max(16),
            data,
        );
        out.entsize = src.entsize;
        self.out.sections.push(out);
        let out_section = self.out.sections.len() - 1;
        self.out.symbols.push(Symbol {
            name: new_name.to_string(),
            kind: elf::STT_FUNC,
            bind: if global {
                elf::STB_GLOBAL
            } else {
                elf::STB_LOCAL
            },
            other: 0,
            section: SymSection::Section(out_section),
            value: 0,
            size: sym.size,
        });
        let out_symbol = self.out.symbols.len() - 1;
        self.carved_symbol.insert(q, out_symbol);
        self.carved.entry(section).or_default().push(Carved {
            start: sym.value,
            end: sym.value.saturating_add(sym.size),
            out_symbol,
        });
        Ok(())
    }

    fn relocate_function(&mut self, q: usize) -> Result<(), Refusal> {
        let sym = self.post.symbols[q].clone();
        let Some(&out_symbol) = self.carved_symbol.get(&q) else {
            return Err(self.refuse(format!("{} was not carved before relocation", sym.name)));
        };
        let SymSection::Section(out_section) = self.out.symbols[out_symbol].section else {
            return Ok(());
        };
        let SymSection::Section(post_section) = sym.section else {
            return Ok(());
        };
        // objtool's R_X86_64_NONE (a jump label turned into a NOP) relocates nothing.
        let relocs: Vec<Reloc> = relocs_in(self.post, &sym)
            .into_iter()
            .filter(|r| r.r_type != elf::R_X86_64_NONE)
            .copied()
            .collect();
        for r in relocs {
            let (symbol, addend) = self.map_target(post_section, &r)?;
            self.out.sections[out_section].rela_mut().push(Reloc {
                offset: r.offset - sym.value,
                r_type: r.r_type,
                symbol,
                addend,
            });
        }
        Ok(())
    }

    /// The carved copy covering `place` in post section `section`, as (symbol, offset in it).
    fn carved_at(&self, section: usize, places: &[i64]) -> Option<(usize, i64)> {
        let ranges = self.carved.get(&section)?;
        for &place in places {
            if let Some(c) = ranges
                .iter()
                .find(|c| place >= c.start as i64 && place < c.end as i64)
            {
                return Some((c.out_symbol, c.start as i64));
            }
        }
        None
    }

    /// Where a relocation of copied code or data should point in the patch object.
    fn map_target(&mut self, section_of_reloc: usize, r: &Reloc) -> Result<(usize, i64), Refusal> {
        match target_of(self.post, section_of_reloc, r) {
            Target::Symbol { symbol, addend } => {
                if let Some(&out) = self.carved_symbol.get(&symbol) {
                    return Ok((out, addend));
                }
                let sym = self.post.symbols[symbol].clone();
                match sym.section {
                    SymSection::Section(section) => {
                        let sec = &self.post.sections[section];
                        if sec.is_exec() {
                            // A label inside a copied function, or an unchanged function.
                            if let Some((out, start)) = self.carved_at(
                                section,
                                &[sym.value as i64 + addend, sym.value as i64 + addend + 4],
                            ) {
                                return Ok((out, sym.value as i64 - start + addend));
                            }
                            return Ok((self.external(symbol)?, addend));
                        }
                        // Dynamic debug descriptors hold a static key the patched code's jump
                        // labels use; the patch gets its own, so the key is its module's.
                        let is_new = self.diff.correlation.pre_of(symbol).is_none()
                            || sec.name == "__dyndbg";
                        // Read-only data private to the code (function names, switch tables,
                        // assembler-local `.L` constants) is copied, not referenced.
                        let constant = !sec.flags & u64::from(elf::SHF_WRITE) != 0
                            && (is_private_constant(&sym.name) || sym.name.starts_with(".L"));
                        if is_new || constant {
                            self.copy_section(section)?;
                            let out =
                                self.copied_symbols.get(&symbol).copied().ok_or_else(|| {
                                    self.refuse(format!(
                                        "{} in {} was not carried with its section",
                                        sym.name, sec.name
                                    ))
                                })?;
                            return Ok((out, addend));
                        }
                        Ok((self.external(symbol)?, addend))
                    }
                    SymSection::Undefined => Ok((self.external(symbol)?, addend)),
                    SymSection::Absolute | SymSection::Common | SymSection::LivePatch => Err(self
                        .refuse(format!(
                            "reference to {} of a kind graft cannot carry",
                            sym.name
                        ))),
                }
            }
            Target::Section { section, addend } => {
                if let Some((out, start)) = self.carved_at(section, &[addend, addend + 4]) {
                    return Ok((out, addend - start));
                }
                let sec = &self.post.sections[section];
                if sec.flags & u64::from(elf::SHF_WRITE) != 0 {
                    return Err(self.refuse(format!(
                        "reference into writable section {}{addend:+} with no symbol there",
                        sec.name
                    )));
                }
                let out = self.copy_section(section)?;
                let symbol = self.section_symbol(out);
                Ok((symbol, addend))
            }
        }
    }

    fn section_symbol(&mut self, out_section: usize) -> usize {
        if let Some(s) = self.out.section_symbol(out_section) {
            return s;
        }
        self.out.symbols.push(Symbol {
            name: String::new(),
            kind: elf::STT_SECTION,
            bind: elf::STB_LOCAL,
            other: 0,
            section: SymSection::Section(out_section),
            value: 0,
            size: 0,
        });
        self.out.symbols.len() - 1
    }

    /// Copies a whole post section (strings, constants, new data) once, with its symbols.
    fn copy_section(&mut self, section: usize) -> Result<usize, Refusal> {
        if let Some(&out) = self.copied.get(&section) {
            return Ok(out);
        }
        let src = &self.post.sections[section];
        let mut copy = src.clone();
        copy.relocations.clear();
        copy.link = None;
        self.out.sections.push(copy);
        let out = self.out.sections.len() - 1;
        self.copied.insert(section, out);
        let named: Vec<(usize, Symbol)> = self
            .post
            .symbols_in(section)
            .map(|(i, s)| (i, s.clone()))
            .collect();
        for (i, mut sym) in named {
            sym.section = SymSection::Section(out);
            // Copied objects are private to the patch: never export or clash.
            sym.bind = elf::STB_LOCAL;
            self.out.symbols.push(sym);
            self.copied_symbols.insert(i, self.out.symbols.len() - 1);
        }
        let relocs: Vec<Reloc> = self.post.sections[section].relocs().copied().collect();
        for r in relocs {
            let (symbol, addend) = self.map_target(section, &r)?;
            self.out.sections[out].rela_mut().push(Reloc {
                symbol,
                addend,
                ..r
            });
        }
        Ok(out)
    }

    /// An undefined symbol standing for `post` symbol `symbol` in the running kernel.
    fn external(&mut self, symbol: usize) -> Result<usize, Refusal> {
        let sym = &self.post.symbols[symbol];
        let defined = matches!(sym.section, SymSection::Section(_));
        let name = if defined {
            match self.diff.correlation.pre_of(symbol) {
                Some(p) => self.pre.symbols[p].name.clone(),
                None => {
                    return Err(self.refuse(format!(
                    "{} is referenced by patched code but matches nothing in the running kernel",
                    sym.name
                )))
                }
            }
        } else {
            sym.name.clone()
        };
        let local = defined && sym.is_local();
        if let Some(&out) = self.externals.get(&(name.clone(), local)) {
            return Ok(out);
        }
        // Statics of the same name can exist in several units: keep their placeholders apart.
        // Dots stay out of placeholders: modpost trims `.N` suffixes when it reports names.
        let placeholder = if local {
            format!(
                "__graft_local_{}_{}_{}",
                self.unit_index,
                self.external_list.len(),
                name.replace('.', "_")
            )
        } else {
            name.clone()
        };

        self.out.symbols.push(Symbol {
            name: placeholder.clone(),
            kind: elf::STT_NOTYPE,
            bind: elf::STB_GLOBAL,
            other: 0,
            section: SymSection::Undefined,
            value: 0,
            size: 0,
        });
        let out = self.out.symbols.len() - 1;
        self.externals.insert((name.clone(), local), out);
        self.external_list.push(External {
            symbol: placeholder,
            name,
            local,
            unit: self.unit.to_string(),
        });
        Ok(out)
    }

    /// Carries the entries of special sections that describe copied code.
    fn special_sections(&mut self, layout: &crate::Layout) -> Result<(), Refusal> {
        self.refuse_unknown_special_sections(layout)?;
        let orc = self.post.section_index(".orc_unwind");
        let mut kept_orc: Vec<u64> = Vec::new();
        for (index, section) in self.post.sections.iter().enumerate() {
            let Some(Handling::Entries { size, anchor }) = layout.handling(&section.name) else {
                continue;
            };
            let relocs: Vec<Reloc> = section.relocs().copied().collect();
            let mut by_entry: BTreeMap<u64, Vec<Reloc>> = BTreeMap::new();
            for r in relocs {
                by_entry.entry(r.offset / size).or_default().push(r);
            }
            let mut out_section: Option<usize> = None;
            for (entry, relocs) in by_entry {
                let start = entry * size;
                let Some(anchor_reloc) = relocs.iter().find(|r| r.offset == start + anchor) else {
                    continue;
                };
                if !self.points_into_copied_code(index, anchor_reloc) {
                    continue;
                }
                let bytes = section
                    .data
                    .get(start as usize..(start + size) as usize)
                    .ok_or_else(|| {
                        self.refuse(format!("{} entry {entry} is truncated", section.name))
                    })?
                    .to_vec();
                let out = match out_section {
                    Some(o) => o,
                    None => {
                        let mut s = Section::new(
                            section.name.clone(),
                            section.kind,
                            section.flags,
                            section.align,
                            Vec::new(),
                        );
                        s.entsize = section.entsize;
                        self.out.sections.push(s);
                        let o = self.out.sections.len() - 1;
                        out_section = Some(o);
                        o
                    }
                };
                let base = self.out.sections[out].data.len() as u64;
                self.out.sections[out].data.extend_from_slice(&bytes);
                self.out.sections[out].size += size;
                for r in &relocs {
                    let (symbol, addend) = self.map_target(index, r)?;
                    self.out.sections[out].rela_mut().push(Reloc {
                        offset: base + (r.offset - start),
                        r_type: r.r_type,
                        symbol,
                        addend,
                    });
                }
                if section.name == ".orc_unwind_ip" {
                    kept_orc.push(entry);
                }
            }
        }
        if let (Some(orc), false) = (orc, kept_orc.is_empty()) {
            let src = &self.post.sections[orc];
            let mut data = Vec::with_capacity(kept_orc.len() * ORC_ENTRY_SIZE as usize);
            for entry in kept_orc {
                let at = (entry * ORC_ENTRY_SIZE) as usize;
                let bytes = src
                    .data
                    .get(at..at + ORC_ENTRY_SIZE as usize)
                    .ok_or_else(|| {
                        self.refuse(".orc_unwind is shorter than .orc_unwind_ip".into())
                    })?;
                data.extend_from_slice(bytes);
            }
            let mut s = Section::new(".orc_unwind", src.kind, src.flags, src.align, data);
            s.entsize = src.entsize;
            self.out.sections.push(s);
        }
        Ok(())
    }

    /// A section graft has no layout for, that describes copied code at places no named object
    /// covers, is a special section graft would have to drop: refused by name.
    fn refuse_unknown_special_sections(&self, layout: &crate::Layout) -> Result<(), Refusal> {
        for (index, section) in self.post.sections.iter().enumerate() {
            if !section.is_alloc()
                || section.is_exec()
                || layout.handling(&section.name).is_some()
                || section.name.starts_with(".graft.")
            {
                continue;
            }
            let objects: Vec<&Symbol> = self
                .post
                .symbols_in(index)
                .map(|(_, s)| s)
                .filter(|s| s.kind == elf::STT_OBJECT)
                .collect();
            let anonymous = |offset: u64| {
                !objects
                    .iter()
                    .any(|o| offset >= o.value && offset < o.value + o.size.max(1))
            };
            if let Some(r) = section
                .relocs()
                .find(|r| anonymous(r.offset) && self.points_into_copied_code(index, r))
            {
                return Err(self.refuse(format!(
                    "special section {} describes patched code (at +{:#x}) and graft does not know its layout, so its entries cannot be carried",
                    section.name, r.offset
                )));
            }
        }
        Ok(())
    }

    fn points_into_copied_code(&self, section_of_reloc: usize, r: &Reloc) -> bool {
        match target_of(self.post, section_of_reloc, r) {
            Target::Symbol { symbol, addend } => {
                if self.carved_symbol.contains_key(&symbol) {
                    return true;
                }
                let sym = &self.post.symbols[symbol];
                match sym.section {
                    SymSection::Section(s) => {
                        self.carved_at(s, &[sym.value as i64 + addend]).is_some()
                    }
                    _ => false,
                }
            }
            Target::Section { section, addend } => self.carved_at(section, &[addend]).is_some(),
        }
    }
}
