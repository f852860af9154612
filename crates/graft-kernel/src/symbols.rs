//! Kernel symbols in kallsyms order, with livepatch symbol positions.
//!
//! The livepatch core finds a symbol by name in one object (vmlinux or a module), walking
//! kallsyms in order; a name that occurs more than once (static functions of the same name in
//! different files) is told apart by its position among the symbols of that name:
//! `sympos` 1 is the first, 2 the second; 0 means "the only one". Positions are therefore only
//! as good as the order they were counted in. graft takes the order from the kernel itself:
//! vmlinux symbols from the target's own `/proc/kallsyms` (booted in the lab), module symbols
//! from each module's ELF symbol table filtered exactly as the module loader builds its kallsyms.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::KernelError;

/// One symbol.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Symbol {
    /// The name.
    pub name: String,
    /// The link-time address (vmlinux) or section offset (modules).
    pub address: u64,
    /// The kallsyms type letter (`t`, `T`, `d`, ...).
    pub kind: char,
    /// 1-based position among the object's symbols of this name, in kallsyms order.
    pub position: u32,
    /// How many symbols of this name the object has.
    pub count: u32,
}

impl Symbol {
    /// The `sympos` a livepatch uses for this symbol: 0 when the name is unique.
    pub fn sympos(&self) -> u32 {
        if self.count == 1 {
            0
        } else {
            self.position
        }
    }
}

/// The symbols of one object (vmlinux or a module), in kallsyms order.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    symbols: Vec<Symbol>,
    by_name: HashMap<String, Vec<usize>>,
}

impl SymbolTable {
    /// Builds a table from (name, address, kind) in kallsyms order, counting positions.
    pub fn from_ordered(entries: impl IntoIterator<Item = (String, u64, char)>) -> Self {
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (name, address, kind) in entries {
            let slots = by_name.entry(name.clone()).or_default();
            slots.push(symbols.len());
            symbols.push(Symbol {
                name,
                address,
                kind,
                position: slots.len() as u32,
                count: 0,
            });
        }
        for slots in by_name.values() {
            for &i in slots {
                symbols[i].count = slots.len() as u32;
            }
        }
        Self { symbols, by_name }
    }

    /// Parses the vmlinux part of `/proc/kallsyms` text (lines without a `[module]` column).
    /// All addresses must be real: zeros mean `kptr_restrict` hid them.
    pub fn from_kallsyms(source: &Path, text: &str) -> Result<Self, KernelError> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let bad = |reason: &str| KernelError::BadSymbols {
                path: source.to_path_buf(),
                line: number + 1,
                reason: reason.to_string(),
            };
            if line.trim().is_empty() {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (Some(address), Some(kind), Some(name)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected `<address> <type> <name>`"));
            };
            if fields.next().is_some() {
                continue; // a module's symbol: `[module]` follows the name
            }
            let address =
                u64::from_str_radix(address, 16).map_err(|_| bad("address is not hex"))?;
            let mut kinds = kind.chars();
            let (Some(kind), None) = (kinds.next(), kinds.next()) else {
                return Err(bad("type is not one letter"));
            };
            entries.push((name.to_string(), address, kind));
        }
        if entries.is_empty() {
            return Err(KernelError::BadSymbols {
                path: source.to_path_buf(),
                line: 0,
                reason: "no vmlinux symbols".into(),
            });
        }
        if entries.iter().all(|(_, address, _)| *address == 0) {
            return Err(KernelError::BadSymbols {
                path: source.to_path_buf(),
                line: 0,
                reason: "every address is 0: kptr_restrict hid them".into(),
            });
        }
        Ok(Self::from_ordered(entries))
    }

    /// All symbols, in kallsyms order.
    pub fn symbols(&self) -> &[Symbol] {
        &self.symbols
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The symbols named `name`, in position order.
    pub fn lookup(&self, name: &str) -> Vec<&Symbol> {
        self.by_name
            .get(name)
            .map(|slots| slots.iter().map(|&i| &self.symbols[i]).collect())
            .unwrap_or_default()
    }

    /// How many distinct names occur more than once.
    pub fn repeated_names(&self) -> usize {
        self.by_name.values().filter(|s| s.len() > 1).count()
    }

    /// Serialises as `address type name` lines in order (the kallsyms layout, reloadable).
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.symbols.len() * 48);
        for s in &self.symbols {
            let _ = writeln!(out, "{:016x} {} {}", s.address, s.kind, s.name);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81000000 T _text
ffffffff81001000 t show_stat
ffffffff81002000 T cmdline_proc_show
ffffffff81003000 t show_stat
ffffffffc0000000 t show_stat\t[isofs]
ffffffff81004000 d show_stat
";

    #[test]
    fn positions_follow_kallsyms_order_and_skip_modules() {
        let table = SymbolTable::from_kallsyms(Path::new("k"), KALLSYMS).unwrap();
        assert_eq!(table.len(), 5);
        let stats = table.lookup("show_stat");
        assert_eq!(
            stats
                .iter()
                .map(|s| (s.address, s.sympos()))
                .collect::<Vec<_>>(),
            [
                (0xffffffff81001000, 1),
                (0xffffffff81003000, 2),
                (0xffffffff81004000, 3)
            ]
        );
        assert_eq!(table.lookup("cmdline_proc_show")[0].sympos(), 0);
        assert_eq!(table.repeated_names(), 1);
        let again = SymbolTable::from_kallsyms(Path::new("k"), &table.to_text()).unwrap();
        assert_eq!(again.symbols(), table.symbols());
    }

    #[test]
    fn hidden_addresses_are_refused() {
        let err =
            SymbolTable::from_kallsyms(Path::new("k"), "0000000000000000 T _text\n").unwrap_err();
        assert!(err.to_string().contains("kptr_restrict"), "{err}");
        let err = SymbolTable::from_kallsyms(Path::new("k"), "zz T _text\n").unwrap_err();
        assert!(err.to_string().contains("k:1: address is not hex"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Malformed kallsyms text is an error or a table, never a panic.
        #[test]
        fn malformed_kallsyms_never_panics(text in "(?s)([0-9a-f]{0,17} [tTdDbB?] [a-z_.0-9]{0,12}\\n|.{0,40}\\n){0,20}") {
            let _ = SymbolTable::from_kallsyms(std::path::Path::new("k"), &text);
        }
    }
}
