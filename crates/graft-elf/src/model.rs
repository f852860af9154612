//! The owned object model, its parser and its writer.

use object::elf;
use object::read::elf::{FileHeader, Rela, SectionHeader, Sym};
use object::write::elf as w;
use object::LittleEndian as LE;

use crate::ElfError;

/// Where a symbol is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SymSection {
    /// Not defined here.
    Undefined,
    /// An absolute value.
    Absolute,
    /// A common block.
    Common,
    /// Resolved by the livepatch core (`SHN_LIVEPATCH`).
    LivePatch,
    /// Defined in this section of the model.
    Section(usize),
}

/// A symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// The name (empty for section symbols).
    pub name: String,
    /// `STT_*`.
    pub kind: u8,
    /// `STB_*`.
    pub bind: u8,
    /// `st_other` (visibility).
    pub other: u8,
    /// Where it is defined.
    pub section: SymSection,
    /// Value (offset in its section for relocatable objects).
    pub value: u64,
    /// Size.
    pub size: u64,
}

impl Symbol {
    /// Whether this is the symbol standing for a section.
    pub fn is_section(&self) -> bool {
        self.kind == elf::STT_SECTION
    }

    /// Whether the symbol is local to its object.
    pub fn is_local(&self) -> bool {
        self.bind == elf::STB_LOCAL
    }
}

/// A relocation (always with an explicit addend: x86-64 uses RELA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reloc {
    /// Offset in the section patched.
    pub offset: u64,
    /// `R_X86_64_*`.
    pub r_type: u32,
    /// Index into [`ElfObject::symbols`].
    pub symbol: usize,
    /// The addend.
    pub addend: i64,
}

/// A relocation section, attached to the section it patches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelocSection {
    /// Its name (`.rela.text.foo`, `.klp.rela.vmlinux..text.foo`).
    pub name: String,
    /// Its flags (`SHF_INFO_LINK`, plus `SHF_ALLOC | SHF_RELA_LIVEPATCH` for livepatch ones).
    pub flags: u64,
    /// The relocations.
    pub relocs: Vec<Reloc>,
}

/// A section with content (not a relocation, symbol or string table).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// The name.
    pub name: String,
    /// `SHT_*`.
    pub kind: u32,
    /// `SHF_*`.
    pub flags: u64,
    /// Alignment.
    pub align: u64,
    /// Entry size.
    pub entsize: u64,
    /// Contents (empty for `SHT_NOBITS`).
    pub data: Vec<u8>,
    /// Size (differs from `data.len()` only for `SHT_NOBITS`).
    pub size: u64,
    /// `sh_link` as a model section index, for sections that name one (`SHF_LINK_ORDER`).
    pub link: Option<usize>,
    /// `sh_info` as read.
    pub info: u32,
    /// Relocation sections that patch this section.
    pub relocations: Vec<RelocSection>,
}

impl Section {
    /// A new section with data.
    pub fn new(name: impl Into<String>, kind: u32, flags: u64, align: u64, data: Vec<u8>) -> Self {
        let size = data.len() as u64;
        Self {
            name: name.into(),
            kind,
            flags,
            align,
            entsize: 0,
            data,
            size,
            link: None,
            info: 0,
            relocations: Vec::new(),
        }
    }

    /// Whether the section occupies memory at run time.
    pub fn is_alloc(&self) -> bool {
        self.flags & u64::from(elf::SHF_ALLOC) != 0
    }

    /// Whether the section holds code.
    pub fn is_exec(&self) -> bool {
        self.flags & u64::from(elf::SHF_EXECINSTR) != 0
    }

    /// All relocations of the normal (non-livepatch) relocation sections.
    pub fn relocs(&self) -> impl Iterator<Item = &Reloc> {
        self.relocations
            .iter()
            .filter(|r| r.flags & crate::SHF_RELA_LIVEPATCH == 0)
            .flat_map(|r| r.relocs.iter())
    }

    /// The normal relocation section, created if missing.
    pub fn rela_mut(&mut self) -> &mut Vec<Reloc> {
        let at = match self
            .relocations
            .iter()
            .position(|r| r.flags & crate::SHF_RELA_LIVEPATCH == 0)
        {
            Some(at) => at,
            None => {
                self.relocations.push(RelocSection {
                    name: format!(".rela{}", self.name),
                    flags: u64::from(elf::SHF_INFO_LINK),
                    relocs: Vec::new(),
                });
                self.relocations.len() - 1
            }
        };
        &mut self.relocations[at].relocs
    }
}

/// A relocatable ELF object (x86-64, little-endian).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ElfObject {
    /// Content sections, in file order.
    pub sections: Vec<Section>,
    /// Symbols; index 0 is the null symbol.
    pub symbols: Vec<Symbol>,
    /// `e_ident[EI_OSABI]`.
    pub os_abi: u8,
    /// `e_flags`.
    pub e_flags: u32,
}

/// The largest section alignment accepted. Kernel objects align to a page at most; a larger
/// value is damage, and writing it would reserve that much padding.
pub const MAX_ALIGN: u64 = 1 << 20;

/// The largest section accepted (4 GiB). Bounds the arithmetic of symbol values and places.
pub const MAX_SECTION_SIZE: u64 = 1 << 32;

/// The largest relocation addend accepted in magnitude (2^48). Kernel code adds section
/// offsets and, at most, the distance to the kernel's virtual base; larger values are damage.
pub const MAX_ADDEND: u64 = 1 << 48;

/// Zero (no constraint) or a power of two no larger than [`MAX_ALIGN`].
fn alignment_is_sane(align: u64) -> bool {
    align == 0 || (align.is_power_of_two() && align <= MAX_ALIGN)
}

impl ElfObject {
    /// An empty object with only the null symbol.
    pub fn new() -> Self {
        Self {
            symbols: vec![Symbol {
                name: String::new(),
                kind: elf::STT_NOTYPE,
                bind: elf::STB_LOCAL,
                other: 0,
                section: SymSection::Undefined,
                value: 0,
                size: 0,
            }],
            ..Self::default()
        }
    }

    /// Parses a relocatable x86-64 ELF object. `what` names it in errors.
    pub fn parse(what: &str, data: &[u8]) -> Result<Self, ElfError> {
        let bad = |reason: String| ElfError::Malformed {
            what: what.to_string(),
            reason,
        };
        let header = elf::FileHeader64::<LE>::parse(data)
            .map_err(|e| bad(format!("not a 64-bit ELF file: {e}")))?;
        let endian = header.endian().map_err(|e| bad(e.to_string()))?;
        if header.e_type.get(endian) != elf::ET_REL {
            return Err(bad("not a relocatable object (ET_REL)".into()));
        }
        if header.e_machine.get(endian) != elf::EM_X86_64 {
            return Err(bad("not an x86-64 object".into()));
        }
        let table = header
            .sections(endian, data)
            .map_err(|e| bad(format!("bad section headers: {e}")))?;
        let headers = table.iter().collect::<Vec<_>>();

        // Content sections get model indices; relocation/symbol/string tables are regenerated.
        let mut model_index = vec![None; headers.len()];
        let mut sections = Vec::new();
        for (i, sh) in headers.iter().enumerate() {
            let kind = sh.sh_type(endian);
            if i == 0
                || matches!(
                    kind,
                    elf::SHT_NULL
                        | elf::SHT_SYMTAB
                        | elf::SHT_STRTAB
                        | elf::SHT_RELA
                        | elf::SHT_REL
                        | elf::SHT_SYMTAB_SHNDX
                )
            {
                continue;
            }
            if kind == elf::SHT_GROUP {
                return Err(bad(format!(
                    "section {i} is a section group (COMDAT), which kernel objects do not use"
                )));
            }
            let name = table
                .section_name(endian, sh)
                .map_err(|e| bad(format!("section {i}: bad name: {e}")))?;
            let name = String::from_utf8_lossy(name).into_owned();
            let content = if kind == elf::SHT_NOBITS {
                Vec::new()
            } else {
                sh.data(endian, data)
                    .map_err(|e| bad(format!("section {name}: data out of bounds: {e}")))?
                    .to_vec()
            };
            let align = sh.sh_addralign(endian);
            if !alignment_is_sane(align) {
                return Err(bad(format!(
                    "section {name}: alignment {align:#x} is not a power of two of at most {MAX_ALIGN:#x}"
                )));
            }
            let size = sh.sh_size(endian);
            if size > MAX_SECTION_SIZE {
                return Err(bad(format!(
                    "section {name}: size {size:#x} is larger than any kernel object's ({MAX_SECTION_SIZE:#x})"
                )));
            }
            model_index[i] = Some(sections.len());
            sections.push(Section {
                name,
                kind,
                flags: sh.sh_flags(endian),
                align,
                entsize: sh.sh_entsize(endian),
                size,
                data: content,
                link: None,
                info: sh.sh_info(endian),
                relocations: Vec::new(),
            });
        }
        for (i, sh) in headers.iter().enumerate() {
            if let Some(m) = model_index[i] {
                let link = sh.sh_link(endian) as usize;
                if sh.sh_flags(endian) & u64::from(elf::SHF_LINK_ORDER) != 0 && link != 0 {
                    sections[m].link = model_index.get(link).copied().flatten();
                }
            }
        }

        let symtab = table
            .symbols(endian, data, elf::SHT_SYMTAB)
            .map_err(|e| bad(format!("bad symbol table: {e}")))?;
        let mut symbols = Vec::with_capacity(symtab.len());
        for (i, sym) in symtab.iter().enumerate() {
            let name = sym
                .name(endian, symtab.strings())
                .map_err(|e| bad(format!("symbol {i}: bad name: {e}")))?;
            let shndx = sym.st_shndx(endian);
            let section = match shndx {
                elf::SHN_UNDEF => SymSection::Undefined,
                elf::SHN_ABS => SymSection::Absolute,
                elf::SHN_COMMON => SymSection::Common,
                crate::SHN_LIVEPATCH => SymSection::LivePatch,
                elf::SHN_XINDEX => {
                    return Err(bad(format!(
                        "symbol {i}: extended section indices are not supported"
                    )))
                }
                n => match model_index.get(usize::from(n)).copied().flatten() {
                    Some(m) => SymSection::Section(m),
                    None => {
                        return Err(bad(format!(
                            "symbol {i} refers to section {n}, which is not a content section"
                        )))
                    }
                },
            };
            let (value, size) = (sym.st_value(endian), sym.st_size(endian));
            if let SymSection::Section(m) = section {
                if value
                    .checked_add(size)
                    .is_none_or(|end| end > sections[m].size)
                {
                    return Err(bad(format!(
                        "symbol {i} ({}) at {value:#x}+{size:#x} lies outside its section {}",
                        String::from_utf8_lossy(name),
                        sections[m].name
                    )));
                }
            }
            symbols.push(Symbol {
                name: String::from_utf8_lossy(name).into_owned(),
                kind: sym.st_type(),
                bind: sym.st_bind(),
                other: sym.st_other(),
                section,
                value,
                size,
            });
        }
        if symbols.is_empty() {
            return Err(bad("no symbol table".into()));
        }

        for (i, sh) in headers.iter().enumerate() {
            match sh.sh_type(endian) {
                elf::SHT_RELA => {}
                elf::SHT_REL => {
                    return Err(bad(format!(
                        "section {i}: REL relocations are not used on x86-64"
                    )))
                }
                _ => continue,
            }
            let name = table
                .section_name(endian, sh)
                .map_err(|e| bad(format!("section {i}: {e}")))?;
            let name = String::from_utf8_lossy(name).into_owned();
            let target = model_index
                .get(sh.sh_info(endian) as usize)
                .copied()
                .flatten()
                .ok_or_else(|| bad(format!("{name} patches no content section")))?;
            let (relas, _) = sh
                .rela(endian, data)
                .map_err(|e| bad(format!("{name}: {e}")))?
                .ok_or_else(|| bad(format!("{name}: unreadable")))?;
            let mut relocs = Vec::with_capacity(relas.len());
            for rela in relas {
                let symbol = rela.r_sym(endian, false) as usize;
                if symbol >= symbols.len() {
                    return Err(bad(format!(
                        "{name}: relocation refers to symbol {symbol}, past the table"
                    )));
                }
                let (offset, addend) = (rela.r_offset(endian), rela.r_addend(endian));
                if offset >= sections[target].size {
                    return Err(bad(format!(
                        "{name}: relocation at {offset:#x} lies outside {}",
                        sections[target].name
                    )));
                }
                if addend.unsigned_abs() > MAX_ADDEND {
                    return Err(bad(format!(
                        "{name}: relocation at {offset:#x} has addend {addend:#x}, beyond any kernel address arithmetic"
                    )));
                }
                relocs.push(Reloc {
                    offset,
                    r_type: rela.r_type(endian, false),
                    symbol,
                    addend,
                });
            }
            sections[target].relocations.push(RelocSection {
                name,
                flags: sh.sh_flags(endian),
                relocs,
            });
        }
        Ok(Self {
            sections,
            symbols,
            os_abi: header.e_ident.os_abi,
            e_flags: header.e_flags.get(endian),
        })
    }

    /// The index of the section called `name`.
    pub fn section_index(&self, name: &str) -> Option<usize> {
        self.sections.iter().position(|s| s.name == name)
    }

    /// The section symbol of section `index`, if the object has one.
    pub fn section_symbol(&self, index: usize) -> Option<usize> {
        self.symbols
            .iter()
            .position(|s| s.is_section() && s.section == SymSection::Section(index))
    }

    /// Symbols defined in section `index` that have a name (functions, objects, labels).
    pub fn symbols_in(&self, index: usize) -> impl Iterator<Item = (usize, &Symbol)> {
        self.symbols.iter().enumerate().filter(move |(_, s)| {
            !s.is_section() && !s.name.is_empty() && s.section == SymSection::Section(index)
        })
    }

    /// Serialises the object. `what` names it in errors.
    pub fn write(&self, what: &str) -> Result<Vec<u8>, ElfError> {
        let fail = |reason: String| ElfError::Write {
            what: what.to_string(),
            reason,
        };
        for (i, section) in self.sections.iter().enumerate() {
            for rs in &section.relocations {
                if let Some(r) = rs.relocs.iter().find(|r| r.symbol >= self.symbols.len()) {
                    return Err(fail(format!(
                        "{} (for section {i}) refers to symbol {}, past the table",
                        rs.name, r.symbol
                    )));
                }
            }
        }
        if let Some(s) = self.sections.iter().find(|s| !alignment_is_sane(s.align)) {
            return Err(fail(format!(
                "section {}: alignment {:#x} is not a power of two of at most {MAX_ALIGN:#x}",
                s.name, s.align
            )));
        }
        // ELF wants local symbols first; keep the model's order within each group.
        let mut order: Vec<usize> = (1..self.symbols.len())
            .filter(|&i| self.symbols[i].is_local())
            .collect();
        let num_local = order.len() as u32 + 1;
        order.extend((1..self.symbols.len()).filter(|&i| !self.symbols[i].is_local()));
        let mut new_index = vec![0u32; self.symbols.len()];

        let mut buffer = Vec::new();
        let mut writer = w::Writer::new(object::Endianness::Little, true, &mut buffer);
        writer.reserve_file_header();
        writer.reserve_null_section_index();
        let mut section_ids = Vec::with_capacity(self.sections.len());
        let mut rela_ids = Vec::with_capacity(self.sections.len());
        for section in &self.sections {
            let name = writer.add_section_name(section.name.as_bytes());
            section_ids.push((writer.reserve_section_index(), name));
            let mut ids = Vec::new();
            for rs in section.relocations.iter().filter(|r| !r.relocs.is_empty()) {
                let name = writer.add_section_name(rs.name.as_bytes());
                ids.push((writer.reserve_section_index(), name));
            }
            rela_ids.push(ids);
        }
        writer.reserve_null_symbol_index();
        let mut symbol_names = Vec::with_capacity(order.len());
        for &i in &order {
            let sym = &self.symbols[i];
            let section = match sym.section {
                SymSection::Section(m) => Some(
                    section_ids
                        .get(m)
                        .ok_or_else(|| {
                            fail(format!(
                                "symbol {} is in section {m}, past the table",
                                sym.name
                            ))
                        })?
                        .0,
                ),
                _ => None,
            };
            new_index[i] = writer.reserve_symbol_index(section).0;
            symbol_names
                .push((!sym.name.is_empty()).then(|| writer.add_string(sym.name.as_bytes())));
        }
        writer.reserve_symtab_section_index();
        writer.reserve_strtab_section_index();
        writer.reserve_shstrtab_section_index();

        let mut offsets = Vec::with_capacity(self.sections.len());
        for (section, relas) in self.sections.iter().zip(&rela_ids) {
            let offset = if section.kind == elf::SHT_NOBITS {
                writer.reserved_len()
            } else {
                writer.reserve(section.data.len(), section.align.max(1) as usize)
            };
            let mut rela_offsets = Vec::new();
            for (rs, _) in section
                .relocations
                .iter()
                .filter(|r| !r.relocs.is_empty())
                .zip(relas)
            {
                rela_offsets.push(writer.reserve_relocations(rs.relocs.len(), true));
            }
            offsets.push((offset, rela_offsets));
        }
        writer.reserve_symtab();
        writer.reserve_strtab();
        writer.reserve_shstrtab();
        writer.reserve_section_headers();

        writer
            .write_file_header(&w::FileHeader {
                os_abi: self.os_abi,
                abi_version: 0,
                e_type: elf::ET_REL,
                e_machine: elf::EM_X86_64,
                e_entry: 0,
                e_flags: self.e_flags,
            })
            .map_err(|e| fail(e.to_string()))?;
        for (section, (offset, _)) in self.sections.iter().zip(&offsets) {
            if section.kind != elf::SHT_NOBITS {
                writer.pad_until(*offset);
                writer.write(&section.data);
            }
            for rs in section.relocations.iter().filter(|r| !r.relocs.is_empty()) {
                writer.write_align_relocation();
                for r in &rs.relocs {
                    writer.write_relocation(
                        true,
                        &w::Rel {
                            r_offset: r.offset,
                            r_sym: new_index[r.symbol],
                            r_type: r.r_type,
                            r_addend: r.addend,
                        },
                    );
                }
            }
        }
        writer.write_null_symbol();
        for (&i, name) in order.iter().zip(&symbol_names) {
            let sym = &self.symbols[i];
            let (section, st_shndx) = match sym.section {
                SymSection::Undefined => (None, elf::SHN_UNDEF),
                SymSection::Absolute => (None, elf::SHN_ABS),
                SymSection::Common => (None, elf::SHN_COMMON),
                SymSection::LivePatch => (None, crate::SHN_LIVEPATCH),
                SymSection::Section(m) => (Some(section_ids[m].0), 0),
            };
            writer.write_symbol(&w::Sym {
                name: *name,
                section,
                st_info: (sym.bind << 4) | (sym.kind & 0xf),
                st_other: sym.other,
                st_shndx,
                st_value: sym.value,
                st_size: sym.size,
            });
        }
        writer.write_strtab();
        writer.write_shstrtab();
        writer.write_null_section_header();
        let symtab = writer.symtab_index();
        for (m, section) in self.sections.iter().enumerate() {
            let (offset, rela_offsets) = &offsets[m];
            writer.write_section_header(&w::SectionHeader {
                name: Some(section_ids[m].1),
                sh_type: section.kind,
                sh_flags: section.flags,
                sh_addr: 0,
                sh_offset: *offset as u64,
                sh_size: section.size,
                sh_link: section.link.map(|l| section_ids[l].0 .0).unwrap_or(0),
                sh_info: section.info,
                sh_addralign: section.align,
                sh_entsize: section.entsize,
            });
            for ((rs, (_, name)), offset) in section
                .relocations
                .iter()
                .filter(|r| !r.relocs.is_empty())
                .zip(&rela_ids[m])
                .zip(rela_offsets)
            {
                writer.write_section_header(&w::SectionHeader {
                    name: Some(*name),
                    sh_type: elf::SHT_RELA,
                    sh_flags: rs.flags,
                    sh_addr: 0,
                    sh_offset: *offset as u64,
                    sh_size: (rs.relocs.len() * 24) as u64,
                    sh_link: symtab.0,
                    sh_info: section_ids[m].0 .0,
                    sh_addralign: 8,
                    sh_entsize: 24,
                });
            }
        }
        writer.write_symtab_section_header(num_local);
        writer.write_strtab_section_header();
        writer.write_shstrtab_section_header();
        Ok(buffer)
    }
}
