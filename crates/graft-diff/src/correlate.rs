//! Pairing the symbols of the post object with those of the pre object.

use std::collections::{BTreeSet, HashMap};

use graft_elf::{ElfObject, Reloc, SymSection};
use object::elf;

use crate::naming::base_name;

/// What a relocation points at, once section-relative references are seen through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A named symbol, with the addend made relative to the symbol.
    Symbol { symbol: usize, addend: i64 },
    /// A place in a section with no single named symbol there (strings, constant pools).
    Section { section: usize, addend: i64 },
}

/// Resolves a relocation's target. GNU as turns references to local symbols into
/// `section + offset`; with one object per section (`-fdata-sections`) that is the symbol again.
pub fn target_of(object: &ElfObject, section_of_reloc: usize, reloc: &Reloc) -> Target {
    let Some(sym) = object.symbols.get(reloc.symbol) else {
        return Target::Symbol {
            symbol: reloc.symbol,
            addend: reloc.addend,
        };
    };
    let SymSection::Section(section) = sym.section else {
        return Target::Symbol {
            symbol: reloc.symbol,
            addend: reloc.addend,
        };
    };
    if !sym.is_section() {
        return Target::Symbol {
            symbol: reloc.symbol,
            addend: reloc.addend,
        };
    }
    let named: Vec<(usize, &graft_elf::Symbol)> = object
        .symbols_in(section)
        .filter(|(_, s)| matches!(s.kind, elf::STT_FUNC | elf::STT_OBJECT | elf::STT_NOTYPE))
        .collect();
    let pc_relative = graft_elf::x86_64::reloc_kind(reloc.r_type).is_some_and(|k| k.pc_relative);
    // A PC-relative field in code is followed by the rest of its instruction (4 bytes of field
    // plus any immediate: `cmpb $0, flag(%rip)` has 5): decode it for the exact distance, else
    // try the usual ones.
    let exact = pc_relative
        .then(|| code_bias(object, section_of_reloc, reloc.offset))
        .flatten();
    let guesses: &[i64] = if pc_relative { &[4, 5, 6, 8] } else { &[0] };
    let exact_places = exact.map(|b| [b]);
    let places: &[i64] = match &exact_places {
        Some(one) => one,
        None => guesses,
    };
    let sized: Vec<_> = named.iter().filter(|(_, s)| s.size > 0).collect();
    let pick = if sized.len() == 1 {
        Some(*sized[0])
    } else {
        places.iter().find_map(|bias| {
            let place = reloc.addend + bias;
            named
                .iter()
                .find(|(_, s)| place >= s.value as i64 && place < (s.value + s.size.max(1)) as i64)
                .copied()
        })
    };

    match pick {
        Some((index, s)) => Target::Symbol {
            symbol: index,
            addend: reloc.addend - s.value as i64,
        },
        None => Target::Section {
            section,
            addend: reloc.addend,
        },
    }
}

/// Where a symbol is first used: (function base name, offset, symbol index).
type FirstUse = (String, u64, usize);

/// The post-to-pre symbol pairing of one unit.
#[derive(Clone, Debug, Default)]
pub struct Correlation {
    post_to_pre: HashMap<usize, usize>,
    pre_to_post: HashMap<usize, usize>,
}

fn defined_named(object: &ElfObject) -> Vec<usize> {
    object
        .symbols
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            !s.is_section()
                && !s.name.is_empty()
                && !s.name.starts_with(".L")
                && s.kind != elf::STT_FILE
                && matches!(s.section, SymSection::Section(_))
        })
        .map(|(i, _)| i)
        .collect()
}

impl Correlation {
    /// Pairs symbols: by exact name, then by name without GCC's numbers, then (for statics of
    /// the same name in different functions) by the functions that use them.
    pub fn new(pre: &ElfObject, post: &ElfObject) -> Self {
        let mut corr = Self::default();
        let pre_syms = defined_named(pre);
        let post_syms = defined_named(post);

        let pass = |corr: &mut Self,
                    key_pre: &dyn Fn(usize) -> String,
                    key_post: &dyn Fn(usize) -> String| {
            let mut pre_groups: HashMap<String, Vec<usize>> = HashMap::new();
            for &i in pre_syms
                .iter()
                .filter(|i| !corr.pre_to_post.contains_key(i))
            {
                pre_groups.entry(key_pre(i)).or_default().push(i);
            }
            let mut post_groups: HashMap<String, Vec<usize>> = HashMap::new();
            for &i in post_syms
                .iter()
                .filter(|i| !corr.post_to_pre.contains_key(i))
            {
                post_groups.entry(key_post(i)).or_default().push(i);
            }
            for (key, posts) in post_groups {
                if let (Some(pres), [post]) = (pre_groups.get(&key), posts.as_slice()) {
                    if let [pre] = pres.as_slice() {
                        corr.insert(*pre, *post);
                    }
                }
            }
        };
        let kind = |o: &ElfObject, i: usize| o.symbols[i].kind;
        // GCC numbers static locals and clones per unit (`x.12`): adding one renumbers the
        // rest, so such names identify nothing by themselves and never pair by exact name.
        let numbered = |o: &ElfObject, i: usize| {
            o.symbols[i].is_local() && base_name(&o.symbols[i].name) != o.symbols[i].name
        };
        let exact = |o: &ElfObject, i: usize, side: &str| {
            if numbered(o, i) {
                format!("\0{side}{i}")
            } else {
                format!("{}/{}", o.symbols[i].name, kind(o, i))
            }
        };
        pass(&mut corr, &|i| exact(pre, i, "pre"), &|i| {
            exact(post, i, "post")
        });

        pass(
            &mut corr,
            &|i| format!("{}/{}", base_name(&pre.symbols[i].name), kind(pre, i)),
            &|i| format!("{}/{}", base_name(&post.symbols[i].name), kind(post, i)),
        );
        let pre_users = users(pre);
        let post_users = users(post);
        pass(
            &mut corr,
            &|i| {
                format!(
                    "{}/{:?}",
                    base_name(&pre.symbols[i].name),
                    pre_users.get(&i)
                )
            },
            &|i| {
                format!(
                    "{}/{:?}",
                    base_name(&post.symbols[i].name),
                    post_users.get(&i)
                )
            },
        );
        // Several statics of one name used by the same functions (two `__key`s of lock
        // initialisations, two `__func__`s): pair them in the order the code first uses them.
        let pre_uses = uses(pre);
        let post_uses = uses(post);
        let mut groups: HashMap<String, (Vec<FirstUse>, Vec<FirstUse>)> = HashMap::new();
        for &i in pre_syms
            .iter()
            .filter(|i| !corr.pre_to_post.contains_key(i))
        {
            if let Some((users, first)) = pre_uses.get(&i) {
                let key = format!("{}/{:?}", base_name(&pre.symbols[i].name), users);
                groups
                    .entry(key)
                    .or_default()
                    .0
                    .push((first.0.clone(), first.1, i));
            }
        }
        for &i in post_syms
            .iter()
            .filter(|i| !corr.post_to_pre.contains_key(i))
        {
            if let Some((users, first)) = post_uses.get(&i) {
                let key = format!("{}/{:?}", base_name(&post.symbols[i].name), users);
                groups
                    .entry(key)
                    .or_default()
                    .1
                    .push((first.0.clone(), first.1, i));
            }
        }
        for (_, (mut pres, mut posts)) in groups {
            if pres.len() == posts.len() && pres.len() > 1 {
                pres.sort();
                posts.sort();
                for (a, b) in pres.iter().zip(&posts) {
                    corr.insert(a.2, b.2);
                }
            }
        }
        corr
    }

    fn insert(&mut self, pre: usize, post: usize) {
        self.post_to_pre.insert(post, pre);
        self.pre_to_post.insert(pre, post);
    }

    /// The pre symbol a post symbol corresponds to.
    pub fn pre_of(&self, post: usize) -> Option<usize> {
        self.post_to_pre.get(&post).copied()
    }

    /// The post symbol a pre symbol corresponds to.
    pub fn post_of(&self, pre: usize) -> Option<usize> {
        self.pre_to_post.get(&pre).copied()
    }
}

/// For each data symbol, the base names of the functions whose code references it.
fn users(object: &ElfObject) -> HashMap<usize, BTreeSet<String>> {
    uses(object)
        .into_iter()
        .map(|(k, (users, _))| (k, users))
        .collect()
}

/// For each referenced symbol: the base names of the functions that reference it, and where
/// it is first referenced (function base name, offset in it), in code order.
fn uses(object: &ElfObject) -> HashMap<usize, (BTreeSet<String>, (String, u64))> {
    let mut out: HashMap<usize, (BTreeSet<String>, (String, u64))> = HashMap::new();
    for (index, section) in object.sections.iter().enumerate() {
        if !section.is_exec() {
            continue;
        }
        let functions: Vec<&graft_elf::Symbol> = object
            .symbols_in(index)
            .map(|(_, s)| s)
            .filter(|s| s.kind == elf::STT_FUNC)
            .collect();
        let mut relocs: Vec<&Reloc> = section.relocs().collect();
        relocs.sort_by_key(|r| r.offset);
        for reloc in relocs {
            let Target::Symbol { symbol, .. } = target_of(object, index, reloc) else {
                continue;
            };
            let (user, at) = functions
                .iter()
                .find(|f| reloc.offset >= f.value && reloc.offset < f.value + f.size.max(1))
                .map(|f| (base_name(&f.name), reloc.offset - f.value))
                .unwrap_or_else(|| (section.name.clone(), reloc.offset));
            let entry = out
                .entry(symbol)
                .or_insert_with(|| (BTreeSet::new(), (user.clone(), at)));
            entry.0.insert(user.clone());
            if (user.as_str(), at) < (entry.1 .0.as_str(), entry.1 .1) {
                entry.1 = (user, at);
            }
        }
    }
    out
}

/// For a PC-relative field at `offset` of code section `section`: the distance from the field
/// to the end of its instruction, from decoding the enclosing function.
fn code_bias(object: &ElfObject, section: usize, offset: u64) -> Option<i64> {
    let sec = object.sections.get(section)?;
    if !sec.is_exec() {
        return None;
    }
    let function = object
        .symbols_in(section)
        .map(|(_, s)| s)
        .find(|s| s.kind == elf::STT_FUNC && offset >= s.value && offset < s.value + s.size)?;
    instruction_end(&sec.data, function.value, function.size, offset)
        .map(|end| end as i64 - offset as i64)
}

/// Decodes the function at `start..start+size` of `code` and returns the end offset of the
/// instruction that covers `offset`.
pub fn instruction_end(code: &[u8], start: u64, size: u64, offset: u64) -> Option<u64> {
    let bytes = code.get(start as usize..(start + size) as usize)?;
    let mut decoder = iced_x86::Decoder::with_ip(64, bytes, start, iced_x86::DecoderOptions::NONE);
    let mut instruction = iced_x86::Instruction::default();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if instruction.is_invalid() {
            return None;
        }
        if offset < instruction.next_ip() {
            return (offset >= instruction.ip()).then_some(instruction.next_ip());
        }
    }
    None
}

/// The distance from a relocated field to the address it designates, beyond `S + A`: the rest
/// of the instruction for PC-relative fields in code (decoded; 4 when decoding is impossible),
/// 0 for absolute fields and for data.
pub fn pc_bias(object: &ElfObject, section: usize, reloc: &Reloc) -> i64 {
    if !graft_elf::x86_64::reloc_kind(reloc.r_type).is_some_and(|k| k.pc_relative) {
        return 0;
    }
    if !object.sections.get(section).is_some_and(|s| s.is_exec()) {
        return 0;
    }
    code_bias(object, section, reloc.offset).unwrap_or(4)
}

/// The constant a reference designates: the C string at `offset` of a string section, else up
/// to 16 bytes (the largest literal-pool entry) of a read-only section.
pub fn constant_at(object: &ElfObject, section: usize, offset: i64) -> Option<&[u8]> {
    let sec = object.sections.get(section)?;
    if sec.flags & u64::from(elf::SHF_STRINGS) != 0 {
        return c_string(&sec.data, offset);
    }
    let start = usize::try_from(offset).ok()?;
    let rest = sec.data.get(start..)?;
    Some(&rest[..rest.len().min(16)])
}

/// The NUL-terminated string at `offset` of `data`, without its NUL; None when `offset` is
/// outside `data` or no NUL ends the string there (malformed: never equal to anything).
pub fn c_string(data: &[u8], offset: i64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let rest = data.get(start..)?;
    Some(&rest[..rest.iter().position(|&b| b == 0)?])
}
