//! Deciding which functions changed, and refusing what a live patch cannot carry.

use std::collections::HashMap;

use graft_elf::{ElfObject, Reloc, SymSection, Symbol};
use object::elf;

use crate::correlate::{c_string, target_of, Correlation, Target};
use crate::lines::LineMap;
use crate::naming::{base_name, is_cold_part};
use crate::Refusal;

/// What happened to a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Same code, same references.
    Unchanged,
    /// Differs: it will be replaced.
    Changed,
    /// Only in the post object: it will be added.
    New,
    /// Only in the pre object (removed or now inlined everywhere).
    Removed,
}

/// One function's verdict.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FunctionVerdict {
    /// The name in the post object (pre object for removed ones).
    pub name: String,
    /// The name in the pre object, i.e. in the running kernel.
    pub pre_name: Option<String>,
    /// Its section in the post object.
    pub section: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Why it changed.
    pub reason: Option<String>,
    /// Size before.
    pub pre_size: Option<u64>,
    /// Size after.
    pub post_size: Option<u64>,
    /// Whether the livepatch core redirects it (false: copied only, its callers are
    /// replaced instead, as for changed out-of-line copies of `static inline` functions).
    pub redirect: bool,
    /// Symbol index in the post object.
    #[serde(skip)]
    pub post_symbol: Option<usize>,
    /// Symbol index in the pre object.
    #[serde(skip)]
    pub pre_symbol: Option<usize>,
}

/// Everything the differ found in one unit.
#[derive(Debug)]
pub struct UnitDiff {
    /// The unit (source path).
    pub unit: String,
    /// Verdicts of all functions, in post order then removed ones.
    pub functions: Vec<FunctionVerdict>,
    /// What makes the change impossible to live patch.
    pub refusals: Vec<Refusal>,
    /// The symbol pairing.
    pub correlation: Correlation,
}

impl UnitDiff {
    /// Functions that go into the patch (changed or new).
    pub fn included(&self) -> impl Iterator<Item = &FunctionVerdict> {
        self.functions
            .iter()
            .filter(|f| matches!(f.verdict, Verdict::Changed | Verdict::New))
    }
}

fn functions(object: &ElfObject) -> Vec<usize> {
    object
        .symbols
        .iter()
        .enumerate()
        .filter(|(_, s)| s.kind == elf::STT_FUNC && matches!(s.section, SymSection::Section(_)))
        .map(|(i, _)| i)
        .collect()
}

fn section_of(_object: &ElfObject, sym: &Symbol) -> Option<usize> {
    match sym.section {
        SymSection::Section(s) => Some(s),
        _ => None,
    }
}

/// The relocations inside a symbol's bytes, sorted by offset.
pub fn relocs_in<'a>(object: &'a ElfObject, sym: &Symbol) -> Vec<&'a Reloc> {
    let Some(section) = section_of(object, sym).and_then(|s| object.sections.get(s)) else {
        return Vec::new();
    };
    let end = sym.value + sym.size;
    let mut relocs: Vec<&Reloc> = section
        .relocs()
        .filter(|r| r.offset >= sym.value && r.offset < end)
        .collect();
    relocs.sort_by_key(|r| r.offset);
    relocs
}

/// The bytes of a symbol (empty for `SHT_NOBITS`).
pub fn bytes_of<'a>(object: &'a ElfObject, sym: &Symbol) -> &'a [u8] {
    section_of(object, sym)
        .and_then(|s| object.sections.get(s))
        .and_then(|s| {
            s.data
                .get(sym.value as usize..(sym.value + sym.size) as usize)
        })
        .unwrap_or_default()
}

/// Whether a function starts with the ftrace call (`call __fentry__`), which the livepatch
/// core needs to redirect it.
pub fn is_traceable(object: &ElfObject, sym: &Symbol) -> bool {
    relocs_in(object, sym)
        .first()
        .is_some_and(|r| r.offset <= sym.value + 5 && object.symbols[r.symbol].name == "__fentry__")
}

/// The constant an assembler-local label (plus addend and instruction bias) designates.
fn label_bytes<'a>(object: &'a ElfObject, label: &Symbol, addend: i64) -> Option<&'a [u8]> {
    match label.section {
        SymSection::Section(sec) => {
            crate::correlate::constant_at(object, sec, label.value as i64 + addend)
        }
        _ => None,
    }
}

/// Whether two relocation targets are the same thing.
fn same_target(
    pre: &ElfObject,
    (pre_section, a): (usize, &Reloc),
    post: &ElfObject,
    (post_section, b): (usize, &Reloc),
    corr: &Correlation,
    lines: &LineMap,
) -> Result<(), String> {
    match (
        target_of(pre, pre_section, a),
        target_of(post, post_section, b),
    ) {
        (
            Target::Symbol {
                symbol: sa,
                addend: aa,
            },
            Target::Symbol {
                symbol: sb,
                addend: ab,
            },
        ) => {
            let (na, nb) = (&pre.symbols[sa], &post.symbols[sb]);
            if na.name.starts_with(".L") && nb.name.starts_with(".L") {
                // Assembler-local labels (`.LC12`, string constants) are anonymous: their
                // numbers shift freely, so only what they label counts.
                let (x, y) = (
                    label_bytes(pre, na, aa + crate::correlate::pc_bias(pre, pre_section, a)),
                    label_bytes(
                        post,
                        nb,
                        ab + crate::correlate::pc_bias(post, post_section, b),
                    ),
                );
                let moved_lines =
                    matches!((x, y), (Some(x), Some(y)) if lines.only_lines_differ(x, y));
                if x.is_none() || (x != y && !moved_lines) {
                    return Err(format!(
                        "uses {:?} (was {:?})",
                        String::from_utf8_lossy(y.unwrap_or_default()),
                        String::from_utf8_lossy(x.unwrap_or_default())
                    ));
                }
                return Ok(());
            }
            if is_switch_table(&na.name) && is_switch_table(&nb.name) {
                // A switch converted to a lookup table: the table is the code's, compared by
                // what it holds (it is copied with the code, never referenced).
                if aa != ab || difference(pre, na, post, nb, corr, lines).is_some() {
                    return Err(format!("uses a changed switch table {}", nb.name));
                }
                return Ok(());
            }
            let same = match (na.section, nb.section) {
                (SymSection::Section(_), SymSection::Section(_)) => corr.pre_of(sb) == Some(sa),
                (SymSection::Section(_), _) | (_, SymSection::Section(_)) => false,
                _ => na.name == nb.name,
            };
            if !same {
                return Err(format!("refers to {} (was {})", nb.name, na.name));
            }
            if aa != ab {
                return Err(format!("refers to {}{:+} (was {:+})", nb.name, ab, aa));
            }
            Ok(())
        }
        (
            Target::Section {
                section: sa,
                addend: aa,
            },
            Target::Section {
                section: sb,
                addend: ab,
            },
        ) => {
            let (x, y) = (&pre.sections[sa], &post.sections[sb]);
            let strings = y.flags & u64::from(elf::SHF_STRINGS) != 0;
            if strings {
                let (s1, s2) = (
                    c_string(&x.data, aa + crate::correlate::pc_bias(pre, pre_section, a)),
                    c_string(
                        &y.data,
                        ab + crate::correlate::pc_bias(post, post_section, b),
                    ),
                );
                let moved_lines =
                    matches!((s1, s2), (Some(x), Some(y)) if lines.only_lines_differ(x, y));
                if s1.is_none() || (s1 != s2 && !moved_lines) {
                    return Err(format!(
                        "uses the string {:?} (was {:?})",
                        String::from_utf8_lossy(s2.unwrap_or_default()),
                        String::from_utf8_lossy(s1.unwrap_or_default())
                    ));
                }
                return Ok(());
            }
            if base_name(&x.name) != base_name(&y.name) || aa != ab || x.data != y.data {
                return Err(format!(
                    "refers to {}{:+} (was {}{:+})",
                    y.name, ab, x.name, aa
                ));
            }
            Ok(())
        }
        (_, Target::Symbol { symbol, .. }) => {
            Err(format!("refers to {}", post.symbols[symbol].name))
        }
        (_, Target::Section { section, .. }) => {
            Err(format!("refers into {}", post.sections[section].name))
        }
    }
}

/// Compares one function (or data object) of pre and post: None when equal, else why not.
pub fn difference(
    pre: &ElfObject,
    ps: &Symbol,
    post: &ElfObject,
    qs: &Symbol,
    corr: &Correlation,
    lines: &LineMap,
) -> Option<String> {
    if ps.size != qs.size {
        return Some(format!("size {} -> {}", ps.size, qs.size));
    }
    let (ra, rb) = (relocs_in(pre, ps), relocs_in(post, qs));
    let (ba, bb) = (bytes_of(pre, ps), bytes_of(post, qs));
    let len = ba.len().max(bb.len());
    let masks = (
        graft_elf::x86_64::relocated_bytes(ra.iter().copied(), ps.value, len),
        graft_elf::x86_64::relocated_bytes(rb.iter().copied(), qs.value, len),
    );
    let (Ok(ma), Ok(mb)) = masks else {
        // A relocation graft cannot size: the function is taken as changed.
        return Some("a relocation of a type graft does not know".into());
    };
    let masked: Vec<bool> = ma.iter().zip(&mb).map(|(a, b)| *a || *b).collect();
    if let Some(at) = (0..ba.len().min(bb.len())).find(|&i| !masked[i] && ba[i] != bb[i]) {
        if !only_line_numbers_differ(pre, ps, post, qs, &masked, lines) {
            return Some(format!("code differs at +{at:#x}"));
        }
    }
    if ra.len() != rb.len() {
        return Some(format!("{} relocations -> {}", ra.len(), rb.len()));
    }
    for (a, b) in ra.iter().zip(&rb) {
        let at = a.offset - ps.value;
        if at != b.offset - qs.value || a.r_type != b.r_type {
            return Some(format!("relocation at +{at:#x} moved or changed type"));
        }
        let (Some(sa), Some(sb)) = (section_of(pre, ps), section_of(post, qs)) else {
            return Some("not in a section".into());
        };
        if let Err(why) = same_target(pre, (sa, a), post, (sb, b), corr, lines) {
            return Some(format!("+{at:#x} {why}"));
        }
    }
    None
}

fn is_init_section(name: &str) -> bool {
    name.starts_with(".init.")
        || name.starts_with(".exit.")
        || name.starts_with(".meminit")
        || name == ".init.text"
}

/// Diffs one unit. `lines` says where the patch moved the source lines, so that a moved
/// `__LINE__` is not taken for a change.
pub fn diff_unit(unit: &str, pre: &ElfObject, post: &ElfObject, ctx: &crate::Context) -> UnitDiff {
    let lines = &ctx.lines;
    let correlation = Correlation::new(pre, post);
    let mut verdicts = Vec::new();
    let mut refusals = Vec::new();
    let mut seen_pre = std::collections::HashSet::new();
    for q in functions(post) {
        let qs = &post.symbols[q];
        let section = section_of(post, qs)
            .map(|s| post.sections[s].name.clone())
            .unwrap_or_default();
        let (verdict, reason, pre_symbol) = match correlation.pre_of(q) {
            Some(p) if pre.symbols[p].kind == elf::STT_FUNC => {
                seen_pre.insert(p);
                match difference(pre, &pre.symbols[p], post, qs, &correlation, lines) {
                    None => (Verdict::Unchanged, None, Some(p)),
                    Some(why) => (Verdict::Changed, Some(why), Some(p)),
                }
            }
            _ => (Verdict::New, None, None),
        };
        verdicts.push(FunctionVerdict {
            name: qs.name.clone(),
            pre_name: pre_symbol.map(|p| pre.symbols[p].name.clone()),
            section,
            verdict,
            reason,
            pre_size: pre_symbol.map(|p| pre.symbols[p].size),
            post_size: Some(qs.size),
            redirect: true,
            post_symbol: Some(q),
            pre_symbol,
        });
    }
    for p in functions(pre).into_iter().filter(|p| !seen_pre.contains(p)) {
        let ps = &pre.symbols[p];
        verdicts.push(FunctionVerdict {
            name: ps.name.clone(),
            pre_name: Some(ps.name.clone()),
            section: section_of(pre, ps)
                .map(|s| pre.sections[s].name.clone())
                .unwrap_or_default(),
            verdict: Verdict::Removed,
            reason: None,
            pre_size: Some(ps.size),
            post_size: None,
            redirect: true,
            post_symbol: None,
            pre_symbol: Some(p),
        });
    }

    // A changed cold part means its parent changed: the parent is what gets redirected.
    let changed_cold: Vec<String> = verdicts
        .iter()
        .filter(|v| v.verdict == Verdict::Changed && is_cold_part(&v.name))
        .map(|v| v.name.split(".cold").next().unwrap_or_default().to_string())
        .collect();
    for v in verdicts.iter_mut() {
        if v.verdict == Verdict::Unchanged && changed_cold.contains(&v.name) {
            v.verdict = Verdict::Changed;
            v.reason = Some("its .cold part changed".into());
        }
    }

    // A changed function the livepatch core cannot redirect (no __fentry__: the kernel makes
    // out-of-line copies of `static inline` functions notrace) is copied instead, and every
    // function of the unit that calls it is replaced so the calls reach the copy. That only
    // works for static functions reached by direct calls; anything else is refused.
    let traceable = |v: &FunctionVerdict| {
        v.post_symbol
            .is_some_and(|q| is_traceable(post, &post.symbols[q]))
            && v.pre_symbol
                .is_some_and(|p| is_traceable(pre, &pre.symbols[p]))
    };
    loop {
        let mut grew = false;
        let copied: Vec<(usize, usize)> = verdicts
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                v.verdict == Verdict::Changed
                    && v.redirect
                    && !is_cold_part(&v.name)
                    && !traceable(v)
            })
            .filter_map(|(i, v)| Some((i, v.post_symbol?)))
            .collect();
        for (i, q) in copied {
            let sym = &post.symbols[q];
            if !sym.is_local() || referenced_from_data(post, q, &ctx.layout) {
                refusals.push(Refusal::NotTraceable {
                    unit: unit.to_string(),
                    function: verdicts[i].name.clone(),
                });
                verdicts[i].redirect = true;
                continue;
            }
            verdicts[i].redirect = false;
            let name = verdicts[i].name.clone();
            for caller in callers(post, q) {
                if let Some(v) = verdicts.iter_mut().find(|v| v.post_symbol == Some(caller)) {
                    if v.verdict == Verdict::Unchanged {
                        v.verdict = Verdict::Changed;
                        v.reason = Some(format!(
                            "calls {name}, which changed and cannot be redirected"
                        ));
                        grew = true;
                    }
                }
            }
        }
        if !grew {
            break;
        }
    }
    for v in verdicts.iter().filter(|v| v.verdict == Verdict::Changed) {
        if is_init_section(&v.section) {
            refusals.push(Refusal::InitCode {
                unit: unit.to_string(),
                function: v.name.clone(),
                section: v.section.clone(),
                reason: v.reason.clone().unwrap_or_default(),
            });
        }
    }
    refusals.dedup();
    for v in verdicts
        .iter()
        .filter(|v| v.verdict == Verdict::New && is_init_section(&v.section))
    {
        // New init code never runs in a live patch: the kernel booted long ago.
        refusals.push(Refusal::InitCode {
            unit: unit.to_string(),
            function: v.name.clone(),
            section: v.section.clone(),
            reason: "new".into(),
        });
    }
    refusals.extend(changed_data(unit, pre, post, &correlation, lines));
    UnitDiff {
        unit: unit.to_string(),
        functions: verdicts,
        refusals,
        correlation,
    }
}

/// Functions of `object` whose code references function symbol `target`.
fn callers(object: &ElfObject, target: usize) -> Vec<usize> {
    functions(object)
        .into_iter()
        .filter(|&f| f != target)
        .filter(|&f| {
            let Some(section) = section_of(object, &object.symbols[f]) else {
                return false;
            };
            relocs_in(object, &object.symbols[f]).iter().any(
                |r| matches!(target_of(object, section, r), Target::Symbol { symbol, .. } if symbol == target),
            )
        })
        .collect()
}

/// Whether data (not code, not special-section bookkeeping) holds the address of `target`,
/// e.g. an operations table: such a function is reached without a call graft can rewrite.
fn referenced_from_data(object: &ElfObject, target: usize, layout: &crate::Layout) -> bool {
    object.sections.iter().enumerate().any(|(i, s)| {
        !s.is_exec()
            && s.is_alloc()
            && layout.handling(&s.name).is_none()
            && s.relocs().any(|r| {
                matches!(target_of(object, i, r), Target::Symbol { symbol, .. } if symbol == target)
            })
    })
}

/// Whether `name` is a lookup table GCC made of a switch statement (`CSWTCH.17`): read-only
/// data private to the functions of the switch.
pub fn is_switch_table(name: &str) -> bool {
    base_name(name) == "CSWTCH"
}

/// Read-only objects the compiler makes for function names and switches: copied with the code
/// that uses them, so a change is no refusal.
pub fn is_private_constant(name: &str) -> bool {
    is_function_name_constant(name) || is_switch_table(name)
}

/// Read-only objects the compiler makes for function names: copied with the code that uses
/// them, so a change is no refusal.
pub fn is_function_name_constant(name: &str) -> bool {
    let base = base_name(name);
    matches!(
        base.as_str(),
        "__func__" | "__FUNCTION__" | "__PRETTY_FUNCTION__"
    )
}

fn changed_data(
    unit: &str,
    pre: &ElfObject,
    post: &ElfObject,
    corr: &Correlation,
    lines: &LineMap,
) -> Vec<Refusal> {
    let mut out = Vec::new();
    let mut reported: HashMap<String, ()> = HashMap::new();
    for (q, qs) in post.symbols.iter().enumerate() {
        let Some(section) = section_of(post, qs) else {
            continue;
        };
        let sec = &post.sections[section];
        if qs.kind != elf::STT_OBJECT
            || !sec.is_alloc()
            || sec.is_exec()
            || is_private_constant(&qs.name)
        {
            continue;
        }
        // Export tables change whenever a function moves, and dynamic debug descriptors carry
        // line numbers: metadata, not data a patch changes.
        if sec.name.starts_with("__ksymtab")
            || sec.name.starts_with("__kcrctab")
            || sec.name == "__dyndbg"
        {
            continue;
        }
        let Some(p) = corr.pre_of(q) else { continue };
        let ps = &pre.symbols[p];
        let changed = if sec.kind == elf::SHT_NOBITS {
            ps.size != qs.size
        } else {
            difference(pre, ps, post, qs, corr, lines).is_some()
        };
        if changed && reported.insert(qs.name.clone(), ()).is_none() {
            out.push(Refusal::ChangedData {
                unit: unit.to_string(),
                symbol: ps.name.clone(),
                section: sec.name.clone(),
            });
        }
    }
    out
}

/// Whether two functions differ only in `__LINE__` values: the instruction streams are the
/// same except for `mov $imm32, %r32` immediates that feed a call which also takes a
/// `__FILE__` string, each new value being exactly where the patch moved the old line of that
/// file. A patch that adds lines shifts every later line number; such functions are not
/// changed, but a constant that changed beside a `__FILE__` string is.
fn only_line_numbers_differ(
    pre: &ElfObject,
    ps: &Symbol,
    post: &ElfObject,
    qs: &Symbol,
    masked: &[bool],
    lines: &LineMap,
) -> bool {
    if lines.is_empty() {
        return false;
    }
    use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};
    let (ba, bb) = (bytes_of(pre, ps), bytes_of(post, qs));
    let decode = |bytes: &[u8]| {
        let mut d = Decoder::with_ip(64, bytes, 0, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            let i: Instruction = d.decode();
            if i.is_invalid() {
                return None;
            }
            out.push(i);
        }
        Some(out)
    };
    let (Some(a), Some(b)) = (decode(ba), decode(bb)) else {
        return false;
    };
    if a.len() != b.len() {
        return false;
    }
    let relocs = relocs_in(post, qs);
    let section = match qs.section {
        SymSection::Section(s) => s,
        _ => return false,
    };
    // The `__FILE__` string passed to the call the window after instruction `k` reaches
    // (printk-style calls, `__might_sleep(file, line)`).
    let file_of_call = |k: usize| -> Option<String> {
        let mut file: Option<String> = None;
        for ins in b.iter().skip(k).take(10) {
            let (start, end) = (ins.ip(), ins.next_ip());
            for r in relocs
                .iter()
                .filter(|r| r.offset - qs.value >= start && r.offset - qs.value < end)
            {
                let (data_section, offset) = match target_of(post, section, r) {
                    Target::Symbol { symbol, addend } => match post.symbols[symbol].section {
                        SymSection::Section(s) => (s, post.symbols[symbol].value as i64 + addend),
                        _ => continue,
                    },
                    Target::Section { section: s, addend } => (s, addend),
                };
                let data = &post.sections[data_section].data;
                let text = c_string(data, offset)
                    .or_else(|| c_string(data, offset + 4))
                    .unwrap_or_default();
                if text.ends_with(b".c") || text.ends_with(b".h") {
                    file = Some(String::from_utf8_lossy(text).into_owned());
                }
            }
            if ins.mnemonic() == Mnemonic::Call {
                return file;
            }
        }
        None
    };
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        let range = x.ip() as usize..x.next_ip() as usize;
        if x.len() != y.len() || x.ip() != y.ip() {
            return false;
        }
        if range
            .clone()
            .all(|i| masked.get(i).copied().unwrap_or(true) || ba[i] == bb[i])
        {
            continue;
        }
        let line_move = matches!(x.code(), Code::Mov_r32_imm32)
            && x.code() == y.code()
            && x.op0_register() == y.op0_register()
            && x.op1_kind() == OpKind::Immediate32
            && (1..=1_000_000).contains(&x.immediate32())
            && (1..=1_000_000).contains(&y.immediate32());
        let moved = line_move
            && file_of_call(k).is_some_and(|f| lines.moved(&f, x.immediate32(), y.immediate32()));
        if !moved {
            return false;
        }
    }
    true
}
