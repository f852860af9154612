//! Run-pre matching: proving that the code graft compiled is the code the target runs.
//!
//! Each pre function the patch replaces is compared with the same function in the target's
//! code image: bytes outside relocated fields must be equal, and every relocated field, decoded
//! from the image, must point at what the relocation names: the same symbol (by kallsyms), the
//! same string, the same place in the function. A mismatch means graft's build does not
//! reproduce the running kernel, and the build is refused. Every match also *pins* the symbols
//! the function references to their exact kallsyms entries, which gives each local symbol its
//! `sympos` without guessing.

use std::collections::{BTreeMap, HashMap};

use graft_diff::compare::{bytes_of, relocs_in};
use graft_diff::correlate::{target_of, Target};
use graft_diff::Verdict;
use graft_elf::x86_64::{read_value, referenced_address, reloc_kind, reloc_name, relocated_bytes};
use graft_elf::{ElfObject, SymSection};
use graft_kernel::{Kernel, SymbolTable};

use crate::diff::Diffs;
pub use crate::image::{AddressIndex, CodeImage};
use crate::pairs::CompiledPair;
use crate::{BuildError, Parent};

/// What run-pre matching proved: every replaced function is the running code, at a known
/// kallsyms position, and the symbols those functions reference are pinned.
#[derive(Debug)]
pub struct RunPreProof {
    /// (unit index, function name in the running kernel) -> its sympos.
    pub function_sympos: HashMap<(usize, String), u32>,
    /// (object, symbol name) -> sympos, for every symbol a matched function references.
    pub pins: HashMap<(String, String), u32>,
    /// vmlinux's kallsyms.
    pub vmlinux: SymbolTable,
    /// Each module's symbols, when a module is patched.
    pub modules: BTreeMap<String, SymbolTable>,
}

/// What run-pre matching reads of the running kernel: the target's files, or a fixture's
/// slices of them.
pub trait RunningCode {
    /// vmlinux's symbols in kallsyms order.
    fn vmlinux_symbols(&self) -> Result<SymbolTable, BuildError>;
    /// Every module's symbols in kallsyms order.
    fn module_symbols(&self) -> Result<BTreeMap<String, SymbolTable>, BuildError>;
    /// The code image.
    fn image(&self) -> Result<CodeImage, BuildError>;
    /// Module `module`'s object file, as the image ships it.
    fn module_object(&self, module: &str) -> Result<ElfObject, BuildError>;
    /// kallsyms by address.
    fn address_index(&self, table: &SymbolTable) -> AddressIndex {
        AddressIndex::new(table)
    }
}

impl RunningCode for Kernel {
    fn vmlinux_symbols(&self) -> Result<SymbolTable, BuildError> {
        Ok(self.symbols()?)
    }

    fn module_symbols(&self) -> Result<BTreeMap<String, SymbolTable>, BuildError> {
        Ok(Kernel::module_symbols(self)?)
    }

    fn image(&self) -> Result<CodeImage, BuildError> {
        CodeImage::load(&self.vmlinux())
    }

    fn module_object(&self, module: &str) -> Result<ElfObject, BuildError> {
        let info = self.module_index()?.get(module).cloned().ok_or_else(|| {
            BuildError::Symbol(format!("the target's image has no module {module}"))
        })?;
        let path = self.modules_dir().join(&info.path);
        let bytes = std::fs::read(&path).map_err(|e| BuildError::io("reading", &path, e))?;
        Ok(ElfObject::parse(&path.display().to_string(), &bytes)?)
    }
}

/// Matches every changed function of every unit against the running code.
pub fn prove(
    running: &dyn RunningCode,
    pairs: &[CompiledPair],
    diffs: &Diffs,
) -> Result<RunPreProof, BuildError> {
    let mut proof = RunPreProof {
        function_sympos: HashMap::new(),
        pins: HashMap::new(),
        vmlinux: running.vmlinux_symbols()?,
        modules: if pairs
            .iter()
            .any(|p| matches!(p.unit.parent, Parent::Module(_)))
        {
            running.module_symbols()?
        } else {
            BTreeMap::new()
        },
    };
    if diffs.any_included(pairs, &Parent::Vmlinux) {
        prove_vmlinux(running, pairs, diffs, &mut proof)?;
    }
    prove_modules(running, pairs, diffs, &mut proof)?;
    Ok(proof)
}

/// The changed functions of a unit that are matched: cold parts go with their parent.
fn matched_functions(diff: &graft_diff::UnitDiff) -> impl Iterator<Item = (&str, usize)> {
    diff.included()
        .filter(|v| v.verdict == Verdict::Changed && !graft_diff::is_cold_part(&v.name))
        .filter_map(|v| Some((v.pre_name.as_deref().unwrap_or_default(), v.pre_symbol?)))
}

fn prove_vmlinux(
    running: &dyn RunningCode,
    pairs: &[CompiledPair],
    diffs: &Diffs,
    proof: &mut RunPreProof,
) -> Result<(), BuildError> {
    let image = running.image()?;
    let index = running.address_index(&proof.vmlinux);
    for (i, (pair, diff)) in pairs.iter().zip(&diffs.units).enumerate() {
        if pair.unit.parent != Parent::Vmlinux {
            continue;
        }
        for (name, p) in matched_functions(diff) {
            let (pos, found) = match_function(&pair.pre, p, &image, &proof.vmlinux, &index)
                .map_err(|e| match e {
                    BuildError::RunPre { function, detail } => BuildError::RunPre {
                        function: format!("vmlinux:{function} ({})", pair.unit.source),
                        detail,
                    },
                    other => other,
                })?;
            proof.function_sympos.insert((i, name.to_string()), pos);
            for (symbol, pos) in found.sympos {
                proof.pins.insert(("vmlinux".into(), symbol), pos);
            }
        }
    }
    Ok(())
}

fn prove_modules(
    running: &dyn RunningCode,
    pairs: &[CompiledPair],
    diffs: &Diffs,
    proof: &mut RunPreProof,
) -> Result<(), BuildError> {
    let empty = SymbolTable::default();
    for (i, (pair, diff)) in pairs.iter().zip(&diffs.units).enumerate() {
        let Parent::Module(module) = &pair.unit.parent else {
            continue;
        };
        if diff.included().next().is_none() {
            continue;
        }
        let ko = running.module_object(module).map_err(|e| match e {
            BuildError::Symbol(msg) => BuildError::Symbol(format!("{}: {msg}", pair.unit.source)),
            other => other,
        })?;
        let table = proof.modules.get(module).unwrap_or(&empty);
        for (name, p) in matched_functions(diff) {
            let (pos, found) = match_module_function(&pair.pre, p, &ko, module, table)?;
            proof.function_sympos.insert((i, name.to_string()), pos);
            for (symbol, pos) in found.sympos {
                proof.pins.insert((module.clone(), symbol), pos);
            }
        }
    }
    Ok(())
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
            Ok(pins) => matches.push((candidate.sympos(), pins, candidate.address)),
            Err(detail) => {
                if first_error.is_none() {
                    first_error = Some(format!("at {:#x}: {detail}", candidate.address));
                }
            }
        }
    }
    if matches.len() > 1 {
        // Identical copies of a static function in several units (a `static inline` of a
        // header, say): the running copy of *this* unit is the one among this unit's other
        // functions, where the linker placed the whole object.
        let scores: Vec<usize> = matches
            .iter()
            .map(|(_, _, address)| neighbours(pre, function, *address, symbols))
            .collect();
        let best = scores.iter().copied().max().unwrap_or(0);
        if best > 0 && scores.iter().filter(|&&s| s == best).count() == 1 {
            let at = scores.iter().position(|&s| s == best).unwrap_or(0);
            let (pos, pins, _) = matches.swap_remove(at);
            return Ok((pos, pins));
        }
    }
    match matches.len() {
        0 => Err(BuildError::RunPre {
            function: sym.name.clone(),
            detail: first_error.unwrap_or_default(),
        }),
        1 => {
            let (pos, pins, _) = matches.remove(0);
            Ok((pos, pins))
        }
        _ => {
            // Copies that cannot be told apart by their unit: acceptable only if they pin the
            // same symbols (then any is the function the patch means).
            let (pos, pins, _) = matches.remove(0);
            if matches.iter().all(|(_, p, _)| p.sympos == pins.sympos) {
                Ok((pos, pins))
            } else {
                Err(BuildError::RunPre {
                    function: sym.name.clone(),
                    detail: format!("{} functions of this name match the compiled code and reference different symbols, and none is placed among this unit's other functions", matches.len() + 1),
                })
            }
        }
    }
}

/// How many of the unit's other functions, by names kallsyms lists once, lie within the
/// unit's code size of `address`: high for the copy linked with this unit.
pub fn neighbours(pre: &ElfObject, function: usize, address: u64, symbols: &SymbolTable) -> usize {
    let functions: Vec<&graft_elf::Symbol> = pre
        .symbols
        .iter()
        .enumerate()
        .filter(|(i, s)| *i != function && s.kind == object::elf::STT_FUNC && s.size > 0)
        .map(|(_, s)| s)
        .collect();
    let span: u64 = functions.iter().map(|s| s.size).sum::<u64>() + pre.symbols[function].size;
    functions
        .iter()
        .filter(|s| !graft_diff::is_cold_part(&s.name))
        .filter_map(|s| match symbols.lookup(&s.name).as_slice() {
            [only] => Some(only.address),
            _ => None,
        })
        .filter(|a| a.abs_diff(address) <= span)
        .count()
}

/// Matching one compiled function against the image at one address.
struct ImageMatch<'a> {
    pre: &'a ElfObject,
    function: usize,
    /// The function's section in the compiled object.
    section: usize,
    /// Where the function is in the image.
    address: u64,
    image: &'a CodeImage,
    index: &'a AddressIndex,
    pins: Pins,
    /// Auxiliary code blocks already matched (section, offset): a block may be reached twice.
    aux_seen: Vec<(usize, i64)>,
}

/// Most bytes of auxiliary code (`.altinstr_aux`) one reference is taken to cover: the slow
/// paths of `static_cpu_has()` are a test, a branch back and a jump back.
const AUX_BLOCK_MAX: usize = 64;

fn compare_at(
    pre: &ElfObject,
    function: usize,
    address: u64,
    image: &CodeImage,
    index: &AddressIndex,
) -> Result<Pins, String> {
    let sym = &pre.symbols[function];
    let SymSection::Section(section) = sym.section else {
        return Err("the function has no section".into());
    };
    let mut m = ImageMatch {
        pre,
        function,
        section,
        address,
        image,
        index,
        pins: Pins::default(),
        aux_seen: Vec::new(),
    };
    let relocs: Vec<graft_elf::Reloc> = relocs_in(pre, sym).into_iter().copied().collect();
    m.compare_bytes(section, sym.value, bytes_of(pre, sym), address, &relocs)?;
    for r in &relocs {
        m.check_reference(section, r, address + (r.offset - sym.value))?;
    }
    Ok(m.pins)
}

impl ImageMatch<'_> {
    /// The compiled `ours` (at `start` of `section`, relocated by `relocs`) equals the image at
    /// `at` outside relocated fields.
    fn compare_bytes(
        &self,
        section: usize,
        start: u64,
        ours: &[u8],
        at: u64,
        relocs: &[graft_elf::Reloc],
    ) -> Result<(), String> {
        let theirs = self
            .image
            .read(at, ours.len())
            .ok_or_else(|| "the image does not contain the code's bytes".to_string())?;
        let masked = relocated_bytes(relocs, start, ours.len())
            .map_err(|t| format!("unsupported {}", reloc_name(t)))?;
        match (0..ours.len()).find(|&i| !masked[i] && ours[i] != theirs[i]) {
            None => Ok(()),
            Some(i) if section == self.section => Err(format!(
                "code differs at +{i:#x} (compiled {:02x}, running {:02x})",
                ours[i], theirs[i]
            )),
            Some(i) => Err(format!(
                "its code in {}{:+#x} differs (compiled {:02x}, running {:02x})",
                self.pre.sections[section].name,
                start + i as u64,
                ours[i],
                theirs[i]
            )),
        }
    }

    /// The relocated field at image address `field` (of relocation `r` in `section`) points
    /// at what the relocation names.
    fn check_reference(
        &mut self,
        section: usize,
        r: &graft_elf::Reloc,
        field: u64,
    ) -> Result<(), String> {
        let fsym = &self.pre.symbols[self.function];
        let at = field.wrapping_sub(self.address);
        let kind =
            reloc_kind(r.r_type).ok_or_else(|| format!("unsupported {}", reloc_name(r.r_type)))?;
        if kind.size == 0 {
            return Ok(());
        }
        let raw = self
            .image
            .read(field, kind.size)
            .ok_or_else(|| "truncated relocation field".to_string())?;
        let value =
            read_value(raw, kind).ok_or_else(|| "truncated relocation field".to_string())?;
        let referenced = referenced_address(value, kind, field);
        // Assembler-local labels (`.LC3`) name anonymous constants: compare what they hold.
        let target = match target_of(self.pre, section, r) {
            Target::Symbol { symbol, addend }
                if self.pre.symbols[symbol].name.starts_with(".L") =>
            {
                match self.pre.symbols[symbol].section {
                    SymSection::Section(s) => Target::Section {
                        section: s,
                        addend: self.pre.symbols[symbol].value as i64 + addend,
                    },
                    _ => target_of(self.pre, section, r),
                }
            }
            other => other,
        };
        match target {
            Target::Symbol { symbol, addend } => {
                let target = &self.pre.symbols[symbol];
                let symbol_address = referenced.wrapping_sub(addend as u64);
                if symbol == self.function
                    || (target.section == fsym.section
                        && target.section != SymSection::Undefined
                        && target.kind != object::elf::STT_FUNC)
                {
                    // A place inside this very function.
                    let expected = self
                        .address
                        .wrapping_add(target.value.wrapping_sub(fsym.value));
                    if symbol_address != expected {
                        return Err(format!("+{at:#x} should refer into the function itself"));
                    }
                    return Ok(());
                }
                if let SymSection::Section(s) = target.section {
                    if self.pre.sections[s].is_exec() && target.kind != object::elf::STT_FUNC {
                        return self.check_aux(
                            s,
                            target.value as i64 + addend,
                            referenced,
                            r,
                            section,
                        );
                    }
                }
                let names = self.index.names_at(symbol_address);
                match names.iter().find(|(n, _)| *n == target.name) {
                    Some((name, pos)) => {
                        self.pins.sympos.insert(name.clone(), *pos);
                        Ok(())
                    }
                    None => {
                        let found = names
                            .first()
                            .map(|(n, _)| n.clone())
                            .unwrap_or_else(|| format!("{symbol_address:#x}"));
                        Err(format!(
                            "+{at:#x} refers to {found}, the compiled code to {}",
                            target.name
                        ))
                    }
                }
            }
            Target::Section { section: s, addend } => {
                let sec = &self.pre.sections[s];
                let bias = graft_diff::correlate::pc_bias(self.pre, section, r);
                if sec.is_exec() {
                    return self.check_aux(s, addend, referenced, r, section);
                }
                if sec.flags & u64::from(object::elf::SHF_STRINGS) != 0 {
                    let ours = graft_diff::correlate::c_string(&sec.data, addend + bias);
                    let theirs = self.image.string(referenced.wrapping_add(bias as u64));
                    if ours.is_none() || ours != theirs {
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
                    let theirs = self.image.read(referenced.wrapping_add(bias as u64), len);
                    if ours != theirs {
                        return Err(format!(
                            "+{at:#x} uses constants of {} that differ in the running kernel",
                            sec.name
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// A reference from the function into auxiliary code outside it (`static_cpu_has()` puts
    /// its slow path in `.altinstr_aux`): the block the reference lands on is the function's
    /// too, so its bytes are compared modulo its relocations, and its relocations (back into
    /// the function, to the CPU feature words) are checked like the function's own.
    fn check_aux(
        &mut self,
        aux: usize,
        addend: i64,
        referenced: u64,
        r: &graft_elf::Reloc,
        from_section: usize,
    ) -> Result<(), String> {
        let bias = graft_diff::correlate::pc_bias(self.pre, from_section, r);
        let start = addend + bias;
        if self.aux_seen.contains(&(aux, start)) {
            return Ok(());
        }
        self.aux_seen.push((aux, start));
        let sec = &self.pre.sections[aux];
        let begin = usize::try_from(start)
            .ok()
            .filter(|&b| b < sec.data.len())
            .ok_or_else(|| format!("a reference into {} points outside it", sec.name))?;
        let len = aux_block_len(&sec.data[begin..]);
        let image_start = referenced.wrapping_add(bias as u64);
        let relocs: Vec<graft_elf::Reloc> = sec
            .relocs()
            .filter(|x| x.offset >= begin as u64 && x.offset < (begin + len) as u64)
            .copied()
            .collect();
        self.compare_bytes(
            aux,
            begin as u64,
            &sec.data[begin..begin + len],
            image_start,
            &relocs,
        )?;
        for x in &relocs {
            self.check_reference(aux, x, image_start + (x.offset - begin as u64))?;
        }
        Ok(())
    }
}

/// The length of the auxiliary code block at the start of `code`: up to and including its
/// first unconditional jump or return, at most [`AUX_BLOCK_MAX`] bytes.
fn aux_block_len(code: &[u8]) -> usize {
    use iced_x86::{Decoder, DecoderOptions, FlowControl};
    let window = &code[..code.len().min(AUX_BLOCK_MAX)];
    let mut decoder = Decoder::with_ip(64, window, 0, DecoderOptions::NONE);
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.is_invalid() {
            break;
        }
        if matches!(
            ins.flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::Return | FlowControl::IndirectBranch
        ) {
            return ins.next_ip() as usize;
        }
    }
    window.len()
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

/// The module symbol standing for our relocation's target at `place` (section, offset): one
/// of the same name (or the same name without GCC's numbers) in that section, at the place
/// our reference reaches from it.
fn same_place(
    pre: &ElfObject,
    pre_section: usize,
    r: &graft_elf::Reloc,
    ko: &ElfObject,
    (section, offset): (usize, i64),
) -> Option<usize> {
    let Target::Symbol { symbol, addend } = target_of(pre, pre_section, r) else {
        return None;
    };
    let ours = &pre.symbols[symbol];
    let base = graft_diff::base_name(&ours.name);
    let candidates = || {
        ko.symbols_in(section)
            .filter(|(_, k)| k.value as i64 + addend == offset)
    };
    candidates()
        .find(|(_, k)| k.name == ours.name)
        .or_else(|| candidates().find(|(_, k)| graft_diff::base_name(&k.name) == base))
        .map(|(i, _)| i)
}

/// Name (or string contents) a relocation targets, for comparison across objects.
fn target_name(object: &ElfObject, section_of_reloc: usize, r: &graft_elf::Reloc) -> String {
    match target_of(object, section_of_reloc, r) {
        Target::Symbol { symbol, addend } => format!("{}{addend:+}", object.symbols[symbol].name),
        Target::Section { section, addend } => {
            let sec = &object.sections[section];
            let bias = graft_diff::correlate::pc_bias(object, section_of_reloc, r);
            match graft_diff::correlate::c_string(&sec.data, addend + bias)
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
    let masked = relocated_bytes(relocs.iter().copied(), ps.value, ours.len())
        .map_err(|t| format!("unsupported {}", reloc_name(t)))?;
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
        // Where the module's field points, as (section, offset), before any naming.
        let mut their_place: Option<(usize, i64)> = None;
        let theirs = match ko_relocs.get(&at) {
            Some(k) => {
                if let Target::Symbol { symbol, .. } = target_of(ko, ko_section, k) {
                    ko_target = Some(symbol);
                }
                let s = &ko.symbols[k.symbol];
                if let SymSection::Section(sec) = s.section {
                    their_place = Some((sec, s.value as i64 + k.addend));
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
                their_place = Some((ko_section, place as i64 + value));
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
        let same_name = ours == theirs || ours_base == graft_diff::base_name(&theirs);
        // Named differently, the same place is still the same thing: a zero-size static
        // (`__key.47`) shares its address with the next object, a loop's end pointer is one
        // past an object, and a module's `.rodata` is one section where ours has one per
        // object. So: where would the module have our target, by its name?
        let by_place = if same_name {
            None
        } else {
            their_place.and_then(|place| same_place(pre, pre_section, r, ko, place))
        };
        if let Some(k) = by_place {
            ko_target = Some(k);
        } else if !same_name {
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
