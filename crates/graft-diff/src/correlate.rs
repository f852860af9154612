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
pub fn target_of(object: &ElfObject, reloc: &Reloc) -> Target {
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
    let place = reloc.addend + if pc_relative { 4 } else { 0 };
    let sized: Vec<_> = named.iter().filter(|(_, s)| s.size > 0).collect();
    let pick = if sized.len() == 1 {
        Some(*sized[0])
    } else {
        named
            .iter()
            .find(|(_, s)| place >= s.value as i64 && place < (s.value + s.size.max(1)) as i64)
            .copied()
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
        pass(
            &mut corr,
            &|i| format!("{}/{}", pre.symbols[i].name, kind(pre, i)),
            &|i| format!("{}/{}", post.symbols[i].name, kind(post, i)),
        );
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
    let mut out: HashMap<usize, BTreeSet<String>> = HashMap::new();
    for (index, section) in object.sections.iter().enumerate() {
        if !section.is_exec() {
            continue;
        }
        let functions: Vec<&graft_elf::Symbol> = object
            .symbols_in(index)
            .map(|(_, s)| s)
            .filter(|s| s.kind == elf::STT_FUNC)
            .collect();
        for reloc in section.relocs() {
            let Target::Symbol { symbol, .. } = target_of(object, reloc) else {
                continue;
            };
            let user = functions
                .iter()
                .find(|f| reloc.offset >= f.value && reloc.offset < f.value + f.size.max(1))
                .map(|f| base_name(&f.name))
                .unwrap_or_else(|| section.name.clone());
            out.entry(symbol).or_default().insert(user);
        }
    }
    out
}
