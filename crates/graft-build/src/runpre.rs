//! Run-pre matching: proving that the code graft compiled is the code the target runs.
//!
//! Each pre function the patch replaces is compared with the same function in the target's
//! code image: bytes outside relocated fields must be equal, and every relocated field, decoded
//! from the image, must point at what the relocation names: the same symbol (by kallsyms), the
//! same string, the same place in the function. A mismatch means graft's build does not
//! reproduce the running kernel, and the build is refused. Every match also *pins* the symbols
//! the function references to their exact kallsyms entries, which gives each local symbol its
//! `sympos` without guessing.

use std::collections::HashMap;
use std::path::Path;

use graft_diff::compare::{bytes_of, relocs_in};
use graft_diff::correlate::{target_of, Target};
use graft_elf::x86_64::{read_value, referenced_address, reloc_kind, reloc_name};
use graft_elf::{ElfObject, SymSection};
use graft_kernel::SymbolTable;
use object::{Object, ObjectSegment};

use crate::BuildError;

/// The target's code image, addressable by link-time address.
pub struct CodeImage {
    data: Vec<u8>,
    /// (address, size, file offset) of each loaded segment.
    segments: Vec<(u64, u64, u64)>,
}

impl std::fmt::Debug for CodeImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeImage")
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

impl CodeImage {
    /// Loads vmlinux.
    pub fn load(path: &Path) -> Result<Self, BuildError> {
        let data = std::fs::read(path).map_err(|e| BuildError::io("reading", path, e))?;
        let segments = {
            let file = object::File::parse(&*data)
                .map_err(|e| BuildError::Unsupported(format!("{}: {e}", path.display())))?;
            file.segments()
                .map(|s| {
                    let (offset, size) = s.file_range();
                    (s.address(), size, offset)
                })
                .collect()
        };
        Ok(Self { data, segments })
    }

    /// `len` bytes at `address`, if the image has them.
    pub fn read(&self, address: u64, len: usize) -> Option<&[u8]> {
        let (start, size, offset) = self
            .segments
            .iter()
            .find(|(start, size, _)| address >= *start && address < start + size)?;
        let at = address - start;
        if at + len as u64 > *size {
            return None;
        }
        self.data
            .get((offset + at) as usize..(offset + at) as usize + len)
    }

    fn string(&self, address: u64) -> Option<&[u8]> {
        let (start, size, offset) = self
            .segments
            .iter()
            .find(|(start, size, _)| address >= *start && address < start + size)?;
        let from = (offset + (address - start)) as usize;
        let end = (offset + size) as usize;
        let rest = self.data.get(from..end)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    }
}

/// kallsyms by address.
#[derive(Debug)]
pub struct AddressIndex {
    by_address: HashMap<u64, Vec<(String, u32)>>,
}

impl AddressIndex {
    /// Indexes a symbol table.
    pub fn new(table: &SymbolTable) -> Self {
        let mut by_address: HashMap<u64, Vec<(String, u32)>> = HashMap::new();
        for s in table.symbols() {
            by_address
                .entry(s.address)
                .or_default()
                .push((s.name.clone(), s.sympos()));
        }
        Self { by_address }
    }

    fn names_at(&self, address: u64) -> &[(String, u32)] {
        self.by_address
            .get(&address)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// What matching one function proved.
#[derive(Clone, Debug, Default)]
pub struct Pins {
    /// Kernel name -> its sympos, for every symbol a matched function references.
    pub sympos: HashMap<String, u32>,
}

/// Finds `name` (pre symbol `function` of `pre`) in the image and proves it is the same code.
/// Returns the function's own sympos and the pins of what it references.
pub fn match_function(
    pre: &ElfObject,
    function: usize,
    image: &CodeImage,
    symbols: &SymbolTable,
    index: &AddressIndex,
) -> Result<(u32, Pins), BuildError> {
    let sym = &pre.symbols[function];
    let candidates: Vec<_> = symbols
        .lookup(&sym.name)
        .into_iter()
        .filter(|s| matches!(s.kind, 't' | 'T'))
        .collect();
    if candidates.is_empty() {
        return Err(BuildError::RunPre {
            function: sym.name.clone(),
            detail: "the running kernel has no function of this name (inlined everywhere, or the unit is not built into vmlinux)".into(),
        });
    }
    let mut first_error = None;
    let mut matches = Vec::new();
    for candidate in &candidates {
        match compare_at(pre, function, candidate.address, image, index) {
            Ok(pins) => matches.push((candidate.sympos(), pins)),
            Err(detail) => {
                if first_error.is_none() {
                    first_error = Some(format!("at {:#x}: {detail}", candidate.address));
                }
            }
        }
    }
    match matches.len() {
        0 => Err(BuildError::RunPre {
            function: sym.name.clone(),
            detail: first_error.unwrap_or_default(),
        }),
        1 => Ok(matches.remove(0)),
        _ => {
            // Identical copies: acceptable only if they pin the same symbols.
            let (pos, pins) = matches.remove(0);
            if matches.iter().all(|(_, p)| p.sympos == pins.sympos) {
                Ok((pos, pins))
            } else {
                Err(BuildError::RunPre {
                    function: sym.name.clone(),
                    detail: format!("{} functions of this name match the compiled code and reference different symbols", matches.len() + 1),
                })
            }
        }
    }
}

fn compare_at(
    pre: &ElfObject,
    function: usize,
    address: u64,
    image: &CodeImage,
    index: &AddressIndex,
) -> Result<Pins, String> {
    let sym = &pre.symbols[function];
    let ours = bytes_of(pre, sym);
    let theirs = image
        .read(address, ours.len())
        .ok_or_else(|| "the image does not contain the function's bytes".to_string())?;
    let relocs = relocs_in(pre, sym);
    let mut masked = vec![false; ours.len()];
    for r in &relocs {
        let kind =
            reloc_kind(r.r_type).ok_or_else(|| format!("unsupported {}", reloc_name(r.r_type)))?;
        let at = (r.offset - sym.value) as usize;
        for m in masked.iter_mut().skip(at).take(kind.size) {
            *m = true;
        }
    }
    if let Some(at) = (0..ours.len()).find(|&i| !masked[i] && ours[i] != theirs[i]) {
        return Err(format!(
            "code differs at +{at:#x} (compiled {:02x}, running {:02x})",
            ours[at], theirs[at]
        ));
    }
    let SymSection::Section(section_index) = sym.section else {
        return Err("the function has no section".into());
    };
    let mut pins = Pins::default();
    for r in &relocs {
        let kind =
            reloc_kind(r.r_type).ok_or_else(|| format!("unsupported {}", reloc_name(r.r_type)))?;
        let at = (r.offset - sym.value) as usize;
        let value = read_value(&theirs[at..], kind)
            .ok_or_else(|| "truncated relocation field".to_string())?;
        let referenced = referenced_address(value, kind, address + at as u64);
        // Assembler-local labels (`.LC3`) name anonymous constants: compare what they hold.
        let target = match target_of(pre, section_index, r) {
            Target::Symbol { symbol, addend } if pre.symbols[symbol].name.starts_with(".L") => {
                match pre.symbols[symbol].section {
                    SymSection::Section(section) => Target::Section {
                        section,
                        addend: pre.symbols[symbol].value as i64 + addend,
                    },
                    _ => target_of(pre, section_index, r),
                }
            }
            other => other,
        };
        match target {
            Target::Symbol { symbol, addend } => {
                let target = &pre.symbols[symbol];
                let symbol_address = referenced.wrapping_sub(addend as u64);
                if symbol == function
                    || (target.section == sym.section
                        && target.section != SymSection::Undefined
                        && target.kind != object::elf::STT_FUNC)
                {
                    // A place inside this very function.
                    let expected = address.wrapping_add(target.value.wrapping_sub(sym.value));
                    if symbol_address != expected {
                        return Err(format!("+{at:#x} should refer into the function itself"));
                    }
                    continue;
                }
                let names = index.names_at(symbol_address);
                match names.iter().find(|(n, _)| *n == target.name) {
                    Some((name, pos)) => {
                        pins.sympos.insert(name.clone(), *pos);
                    }
                    None => {
                        let found = names
                            .first()
                            .map(|(n, _)| n.clone())
                            .unwrap_or_else(|| format!("{symbol_address:#x}"));
                        return Err(format!(
                            "+{at:#x} refers to {found}, the compiled code to {}",
                            target.name
                        ));
                    }
                }
            }
            Target::Section { section, addend } => {
                let sec = &pre.sections[section];
                let bias = graft_diff::correlate::pc_bias(pre, section_index, r);
                if sec.flags & u64::from(object::elf::SHF_STRINGS) != 0 {
                    let ours = string_at(&sec.data, addend + bias);
                    let theirs = image.string(referenced.wrapping_add(bias as u64));
                    if ours != theirs {
                        return Err(format!(
                            "+{at:#x} uses the string {:?}, the running kernel {:?}",
                            String::from_utf8_lossy(ours.unwrap_or_default()),
                            String::from_utf8_lossy(theirs.unwrap_or_default())
                        ));
                    }
                } else if sec.flags & u64::from(object::elf::SHF_WRITE) == 0
                    && sec.kind != object::elf::SHT_NOBITS
                {
                    let from = (addend + bias).max(0) as usize;
                    let len = sec.data.len().saturating_sub(from).min(16);
                    let ours = sec.data.get(from..from + len);
                    let theirs = image.read(referenced.wrapping_add(bias as u64), len);
                    if ours != theirs {
                        return Err(format!(
                            "+{at:#x} uses constants of {} that differ in the running kernel",
                            sec.name
                        ));
                    }
                }
            }
        }
    }
    Ok(pins)
}

fn string_at(data: &[u8], offset: i64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let rest = data.get(start..)?;
    Some(&rest[..rest.iter().position(|&b| b == 0)?])
}

/// Matches pre function `function` against the same function in the target's module file
/// `ko` (an unlinked relocatable object). Returns the function's sympos among the module's
/// same-named symbols, and pins for what it references.
pub fn match_module_function(
    pre: &ElfObject,
    function: usize,
    ko: &ElfObject,
    module: &str,
    table: &SymbolTable,
) -> Result<(u32, Pins), BuildError> {
    let sym = &pre.symbols[function];
    let candidates: Vec<usize> = ko
        .symbols
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.name == sym.name
                && s.kind == object::elf::STT_FUNC
                && matches!(s.section, SymSection::Section(_))
        })
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        return Err(BuildError::RunPre {
            function: format!("{module}:{}", sym.name),
            detail: format!("{module}.ko has no function of this name"),
        });
    }
    let mut first_error = None;
    for (k, &candidate) in candidates.iter().enumerate() {
        match compare_in_module(pre, function, ko, candidate) {
            Ok(names) => {
                let mut pins = Pins::default();
                for (name, position) in names {
                    match table.lookup(&name).as_slice() {
                        [only] => {
                            pins.sympos.insert(name, only.sympos());
                        }
                        [] => {}
                        _ => {
                            if let Some(p) = position {
                                pins.sympos.insert(name, p);
                            }
                        }
                    }
                }
                let pos = if candidates.len() == 1 {
                    0
                } else {
                    k as u32 + 1
                };
                return Ok((pos, pins));
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    Err(BuildError::RunPre {
        function: format!("{module}:{}", sym.name),
        detail: first_error.unwrap_or_default(),
    })
}

/// Name (or string contents) a relocation targets, for comparison across objects.
fn target_name(object: &ElfObject, section_of_reloc: usize, r: &graft_elf::Reloc) -> String {
    match target_of(object, section_of_reloc, r) {
        Target::Symbol { symbol, addend } => format!("{}{addend:+}", object.symbols[symbol].name),
        Target::Section { section, addend } => {
            let sec = &object.sections[section];
            let bias = graft_diff::correlate::pc_bias(object, section_of_reloc, r);
            match string_at(&sec.data, addend + bias)
                .filter(|_| sec.flags & u64::from(object::elf::SHF_STRINGS) != 0)
            {
                Some(s) => format!("string {:?}", String::from_utf8_lossy(s)),
                None => format!("{}{addend:+}", sec.name),
            }
        }
    }
}

/// The kallsyms position (1-based) of `ko` symbol `index` among the module's symbols of its
/// name, counting them as the module loader keeps them (defined, in a kept allocated section).
fn ko_position(ko: &ElfObject, index: usize) -> Option<u32> {
    let name = &ko.symbols.get(index)?.name;
    let kept = |s: &graft_elf::Symbol| match s.section {
        SymSection::Section(i) => {
            let sec = &ko.sections[i];
            sec.is_alloc()
                && !sec.name.starts_with(".init")
                && sec.name != ".modinfo"
                && sec.name != "__versions"
        }
        _ => false,
    };
    let mut position = 0;
    for (i, s) in ko.symbols.iter().enumerate() {
        if &s.name == name && !s.is_section() && kept(s) {
            position += 1;
            if i == index {
                return Some(position);
            }
        }
    }
    None
}

fn compare_in_module(
    pre: &ElfObject,
    function: usize,
    ko: &ElfObject,
    candidate: usize,
) -> Result<Vec<(String, Option<u32>)>, String> {
    let (ps, ks) = (&pre.symbols[function], &ko.symbols[candidate]);
    let (ours, theirs) = (bytes_of(pre, ps), bytes_of(ko, ks));
    if ours.len() != theirs.len() {
        return Err(format!(
            "size {} in the running module, {} compiled",
            theirs.len(),
            ours.len()
        ));
    }
    let SymSection::Section(ko_section) = ks.section else {
        return Err("the module's function has no section".into());
    };
    let ko_relocs: HashMap<u64, &graft_elf::Reloc> = ko.sections[ko_section]
        .relocs()
        .filter(|r| r.offset >= ks.value && r.offset < ks.value + ks.size)
        .map(|r| (r.offset - ks.value, r))
        .collect();
    let relocs = relocs_in(pre, ps);
    let mut masked = vec![false; ours.len()];
    for r in &relocs {
        let size = reloc_kind(r.r_type).map(|k| k.size).unwrap_or(8);
        let at = (r.offset - ps.value) as usize;
        for m in masked.iter_mut().skip(at).take(size) {
            *m = true;
        }
    }
    if let Some(at) = (0..ours.len()).find(|&i| !masked[i] && ours[i] != theirs[i]) {
        return Err(format!("code differs at +{at:#x}"));
    }
    if let Some(extra) = ko_relocs
        .keys()
        .find(|o| !relocs.iter().any(|r| r.offset - ps.value == **o))
    {
        return Err(format!(
            "the running module relocates +{extra:#x}, the compiled code does not"
        ));
    }
    let mut names = Vec::new();
    for r in &relocs {
        let at = r.offset - ps.value;
        let SymSection::Section(pre_section) = ps.section else {
            return Err("the compiled function has no section".into());
        };
        let ours = target_name(pre, pre_section, r);
        let mut ko_target = None;
        let theirs = match ko_relocs.get(&at) {
            Some(k) => {
                if let Target::Symbol { symbol, .. } = target_of(ko, ko_section, k) {
                    ko_target = Some(symbol);
                }
                target_name(ko, ko_section, k)
            }
            None => {
                // Resolved by the assembler within the section: decode the displacement.
                let kind = reloc_kind(r.r_type)
                    .ok_or_else(|| format!("unsupported {}", reloc_name(r.r_type)))?;
                if !kind.pc_relative {
                    return Err(format!(
                        "+{at:#x} is absolute in the compiled code but not relocated in the module"
                    ));
                }
                let value =
                    read_value(&bytes_of(ko, ks)[at as usize..], kind).ok_or("truncated field")?;
                let place = ks.value + at;
                let target = (place as i64 + value - r.addend) as u64;
                let addend = r.addend;
                match ko.symbols_in(ko_section).find(|(_, s)| s.value == target) {
                    Some((index, s)) => {
                        ko_target = Some(index);
                        format!("{}{:+}", s.name, addend)
                    }
                    None => format!("{target:#x}"),
                }
            }
        };
        let ours_base = graft_diff::base_name(&ours);
        if ours != theirs && ours_base != graft_diff::base_name(&theirs) {
            return Err(format!(
                "+{at:#x} refers to {theirs} in the running module, to {ours} in the compiled code"
            ));
        }
        if let Target::Symbol { symbol, .. } = target_of(pre, pre_section, r) {
            names.push((
                pre.symbols[symbol].name.clone(),
                ko_target.and_then(|k| ko_position(ko, k)),
            ));
        }
    }
    Ok(names)
}
