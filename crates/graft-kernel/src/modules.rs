//! The modules of a target's image: names, dependencies and symbols, read from the `.ko`
//! files themselves (the image package ships no `modules.dep`; depmod makes it at install).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, SectionHeader, Sym};
use object::{Endianness, Object, ObjectSection};

use crate::symbols::SymbolTable;
use crate::KernelError;

/// One module of the image.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModuleInfo {
    /// The module name (`modinfo name`), with underscores.
    pub name: String,
    /// Path below `lib/modules/<release>`.
    pub path: String,
    /// Names of the modules it needs (`modinfo depends`).
    pub depends: Vec<String>,
    /// Names (or aliases) of modules it wants loaded first (`modinfo softdep`, `pre:`): not
    /// linked against, but its init fails without them (libcrc32c wants crc32c).
    #[serde(default)]
    pub softdeps: Vec<String>,
    /// Its aliases (`modinfo alias`), by which softdeps and request_module name it.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// All modules of an image, by name.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ModuleIndex {
    modules: BTreeMap<String, ModuleInfo>,
    /// Names and aliases of what is built into the kernel (`modules.builtin.modinfo`): a soft
    /// dependency on one needs no module.
    #[serde(default)]
    builtin: std::collections::BTreeSet<String>,
}

/// Module names are written with `-` or `_` interchangeably; the kernel uses `_`.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

impl ModuleIndex {
    /// Reads every `.ko` below `modules_dir` (a `lib/modules/<release>` directory).
    pub fn scan(modules_dir: &Path) -> Result<Self, KernelError> {
        let mut files = Vec::new();
        collect_modules(modules_dir, &mut files)?;
        let mut modules = BTreeMap::new();
        for file in files {
            let data = fs::read(&file).map_err(|e| KernelError::io("reading", &file, e))?;
            let info = modinfo(&file, &data)?;
            let path = file
                .strip_prefix(modules_dir)
                .unwrap_or(&file)
                .to_string_lossy()
                .into_owned();
            let name = info
                .iter()
                .find_map(|(k, v)| (*k == "name").then(|| v.to_string()))
                .unwrap_or_else(|| {
                    normalize_name(
                        &file
                            .file_stem()
                            .map(|s| s.to_string_lossy())
                            .unwrap_or_default(),
                    )
                });
            let depends = info
                .iter()
                .find_map(|(k, v)| (*k == "depends").then_some(*v))
                .unwrap_or_default()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(normalize_name)
                .collect();
            let softdeps = info
                .iter()
                .filter(|(k, _)| *k == "softdep")
                .flat_map(|(_, v)| pre_softdeps(v))
                .collect();
            let aliases = info
                .iter()
                .filter(|(k, _)| *k == "alias")
                .map(|(_, v)| v.to_string())
                .collect();
            modules.insert(
                name.clone(),
                ModuleInfo {
                    name,
                    path,
                    depends,
                    softdeps,
                    aliases,
                },
            );
        }
        let builtin = builtin_names(&modules_dir.join("modules.builtin.modinfo"))?;
        Ok(Self { modules, builtin })
    }

    /// Number of modules.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// All modules by name.
    pub fn iter(&self) -> impl Iterator<Item = &ModuleInfo> {
        self.modules.values()
    }

    /// The module called `name` (dashes or underscores).
    pub fn get(&self, name: &str) -> Option<&ModuleInfo> {
        self.modules.get(&normalize_name(name))
    }

    /// `name`'s dependencies, transitively, in the order `modules.dep` lists them: the module
    /// needed last first, so loading proceeds from the end of the list.
    pub fn dependencies(&self, name: &str) -> Result<Vec<&ModuleInfo>, KernelError> {
        let root = self.get(name).ok_or_else(|| KernelError::UnknownModule {
            name: name.to_string(),
        })?;
        let mut load_order = Vec::new();
        let mut seen = HashSet::new();
        seen.insert(root.name.clone());
        self.visit(root, &mut seen, &mut load_order)?;
        load_order.reverse();
        Ok(load_order)
    }

    fn visit<'a>(
        &'a self,
        module: &'a ModuleInfo,
        seen: &mut HashSet<String>,
        load_order: &mut Vec<&'a ModuleInfo>,
    ) -> Result<(), KernelError> {
        // Soft dependencies load first, as modprobe does with `softdep pre:`; they are wanted,
        // not required, so one the image lacks is skipped.
        let soft = module
            .softdeps
            .iter()
            .filter_map(|name| self.provider(name))
            .map(|m| m.name.clone());
        let hard = module.depends.iter().cloned();
        for dep in soft.chain(hard).collect::<Vec<_>>() {
            if !seen.insert(dep.clone()) {
                continue;
            }
            let info = self
                .modules
                .get(&dep)
                .ok_or_else(|| KernelError::UnknownModule {
                    name: format!("{dep} (needed by {})", module.name),
                })?;
            self.visit(info, seen, load_order)?;
            load_order.push(info);
        }
        Ok(())
    }

    /// The module called `name`, or else one with `name` as an alias; of several, the generic
    /// implementation (`crc32c_generic` before `crc32c_intel`, which needs a CPU feature).
    pub fn provider(&self, name: &str) -> Option<&ModuleInfo> {
        if let Some(module) = self.get(name) {
            return Some(module);
        }
        // Built in (sha256_generic provides `sha256`): nothing to load, and a module offering
        // the same alias (sha256_ssse3, which needs a CPU feature) is not wanted.
        if self.builtin.contains(name) || self.builtin.contains(&normalize_name(name)) {
            return None;
        }
        let mut providers: Vec<&ModuleInfo> = self
            .modules
            .values()
            .filter(|m| m.aliases.iter().any(|a| a == name))
            .collect();
        providers.sort_by_key(|m| (!m.name.ends_with("_generic"), m.name.clone()));
        providers.first().copied()
    }
}

fn collect_modules(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), KernelError> {
    let entries = fs::read_dir(dir).map_err(|e| KernelError::io("listing", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| KernelError::io("listing", dir, e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| KernelError::io("inspecting", &path, e))?;
        if kind.is_dir() {
            collect_modules(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "ko") {
            out.push(path);
        }
    }
    Ok(())
}

/// The names and aliases of built-in modules, from `modules.builtin.modinfo` (`name.key=value`
/// records, NUL-separated); empty when the image has none.
fn builtin_names(path: &Path) -> Result<std::collections::BTreeSet<String>, KernelError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(KernelError::io("reading", path, e)),
    };
    let mut names = std::collections::BTreeSet::new();
    for record in data.split(|&b| b == 0) {
        let Ok(text) = std::str::from_utf8(record) else {
            continue;
        };
        let Some((key, value)) = text.split_once('=') else {
            continue;
        };
        let Some((module, field)) = key.split_once('.') else {
            continue;
        };
        names.insert(module.to_string());
        if field == "alias" {
            names.insert(value.to_string());
        }
    }
    Ok(names)
}

/// The module names of a `softdep` value's `pre:` part: `pre: crc32c post: foo` gives crc32c.
fn pre_softdeps(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_pre = false;
    for word in value.split_whitespace() {
        match word {
            "pre:" => in_pre = true,
            "post:" => in_pre = false,
            name if in_pre => out.push(normalize_name(name)),
            _ => {}
        }
    }
    out
}

/// The `key=value` strings of a module's `.modinfo` section.
fn modinfo<'a>(path: &Path, data: &'a [u8]) -> Result<Vec<(&'a str, &'a str)>, KernelError> {
    let file = object::File::parse(data).map_err(|e| KernelError::BadModule {
        path: path.to_path_buf(),
        reason: format!("not an ELF object: {e}"),
    })?;
    let Some(section) = file.section_by_name(".modinfo") else {
        return Ok(Vec::new());
    };
    let bytes = section.data().map_err(|e| KernelError::BadModule {
        path: path.to_path_buf(),
        reason: format!("unreadable .modinfo: {e}"),
    })?;
    Ok(bytes
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok()?.split_once('='))
        .collect())
}

/// A module's symbols in the order of its kallsyms once loaded.
///
/// The loader keeps, in symbol-table order, the symbols that are defined, named, and either in
/// the per-cpu section or in an allocated section outside `.init*` (kernel/module/kallsyms.c,
/// `is_core_symbol`, with CONFIG_KALLSYMS_ALL as the targets graft supports have it). Before
/// that, it drops the allocation flag of `.modinfo` and `__versions`, which it reads but does
/// not keep (kernel/module/main.c, `rewrite_section_headers`).
pub fn module_symbols(path: &Path, data: &[u8]) -> Result<SymbolTable, KernelError> {
    let bad = |reason: String| KernelError::BadModule {
        path: path.to_path_buf(),
        reason,
    };
    let file = ElfFile64::<Endianness>::parse(data)
        .map_err(|e| bad(format!("not a 64-bit ELF object: {e}")))?;
    let endian = file.endian();
    let header = file.elf_header();
    let sections = header
        .sections(endian, data)
        .map_err(|e| bad(format!("bad section headers: {e}")))?;
    let symbols = sections
        .symbols(endian, data, elf::SHT_SYMTAB)
        .map_err(|e| bad(format!("bad symbol table: {e}")))?;
    let percpu = sections
        .section_by_name(endian, b".data..percpu")
        .map(|(index, _)| index.0);
    let mut entries = Vec::new();
    for symbol in symbols.iter() {
        let shndx = usize::from(symbol.st_shndx(endian));
        if shndx == usize::from(elf::SHN_UNDEF)
            || shndx >= sections.len()
            || symbol.st_name(endian) == 0
        {
            continue;
        }
        let section = sections
            .section(object::SectionIndex(shndx))
            .map_err(|e| bad(format!("symbol in a bad section: {e}")))?;
        let flags = section.sh_flags(endian);
        let is_percpu = Some(shndx) == percpu;
        if !is_percpu {
            let name = sections
                .section_name(endian, section)
                .map_err(|e| bad(format!("bad section name: {e}")))?;
            let dropped = name == b".modinfo" || name == b"__versions";
            if flags & u64::from(elf::SHF_ALLOC) == 0 || dropped || name.starts_with(b".init") {
                continue;
            }
        }
        let name = symbol
            .name(endian, symbols.strings())
            .map_err(|e| bad(format!("bad symbol name: {e}")))?;
        let kind = symbol_kind(flags, is_percpu, symbol.st_bind() != elf::STB_LOCAL);
        entries.push((
            String::from_utf8_lossy(name).into_owned(),
            symbol.st_value(endian),
            kind,
        ));
    }
    Ok(SymbolTable::from_ordered(entries))
}

/// A kallsyms-style type letter from the section a symbol lives in.
fn symbol_kind(flags: u64, percpu: bool, global: bool) -> char {
    let kind = if flags & u64::from(elf::SHF_EXECINSTR) != 0 {
        't'
    } else if percpu || flags & u64::from(elf::SHF_WRITE) != 0 {
        'd'
    } else {
        'r'
    };
    if global {
        kind.to_ascii_uppercase()
    } else {
        kind
    }
}

/// Serialises every module's symbols as `module<TAB>address<TAB>type<TAB>name` lines.
pub fn module_symbols_text(tables: &[(String, SymbolTable)]) -> String {
    let mut out = String::new();
    for (module, table) in tables {
        for s in table.symbols() {
            let _ = writeln!(out, "{module}\t{:x}\t{}\t{}", s.address, s.kind, s.name);
        }
    }
    out
}

/// Reads [`module_symbols_text`] output back, one table per module.
pub fn parse_module_symbols(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, SymbolTable>, KernelError> {
    let mut grouped: BTreeMap<String, Vec<(String, u64, char)>> = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let bad = || KernelError::BadSymbols {
            path: path.to_path_buf(),
            line: number + 1,
            reason: "expected `module<TAB>address<TAB>type<TAB>name`".into(),
        };
        let mut fields = line.split('\t');
        let (Some(module), Some(address), Some(kind), Some(name)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let address = u64::from_str_radix(address, 16).map_err(|_| bad())?;
        let kind = kind.chars().next().ok_or_else(bad)?;
        grouped
            .entry(module.to_string())
            .or_default()
            .push((name.to_string(), address, kind));
    }
    Ok(grouped
        .into_iter()
        .map(|(m, entries)| (m, SymbolTable::from_ordered(entries)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(entries: &[(&str, &[&str])]) -> ModuleIndex {
        ModuleIndex {
            builtin: Default::default(),
            modules: entries
                .iter()
                .map(|(name, deps)| {
                    (
                        name.to_string(),
                        ModuleInfo {
                            name: name.to_string(),
                            path: format!("kernel/{name}.ko"),
                            depends: deps.iter().map(|d| d.to_string()).collect(),
                            softdeps: Vec::new(),
                            aliases: Vec::new(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Regression: `graft test --load-module xfs` failed because libcrc32c wants crc32c
    /// (`softdep pre: crc32c`) and the guest lacked it.
    #[test]
    fn soft_dependencies_load_first_by_alias_preferring_generic() {
        let mut idx = index(&[
            ("xfs", &["libcrc32c"]),
            ("libcrc32c", &[]),
            ("crc32c_intel", &[]),
            ("crc32c_generic", &[]),
        ]);
        for m in ["crc32c_intel", "crc32c_generic"] {
            idx.modules.get_mut(m).unwrap().aliases = vec!["crc32c".into(), "crypto-crc32c".into()];
        }
        idx.modules.get_mut("libcrc32c").unwrap().softdeps =
            pre_softdeps("pre: crc32c post: nothing");
        assert_eq!(idx.modules["libcrc32c"].softdeps, ["crc32c"]);
        let deps: Vec<_> = idx
            .dependencies("xfs")
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        // Loaded from the end: crc32c_generic, then libcrc32c.
        assert_eq!(deps, ["libcrc32c", "crc32c_generic"]);
        // A softdep provided by the kernel itself needs no module.
        idx.builtin.insert("crc32c".into());
        assert_eq!(idx.dependencies("xfs").unwrap().len(), 1);
        idx.builtin.clear();
        // A softdep the image lacks is wanted, not needed.
        idx.modules.get_mut("libcrc32c").unwrap().softdeps = vec!["absent".into()];
        assert_eq!(idx.dependencies("xfs").unwrap().len(), 1);
    }

    #[test]
    fn dependencies_in_modules_dep_order() {
        let idx = index(&[("a", &["b", "c"]), ("b", &["c"]), ("c", &[]), ("d", &[])]);
        let deps: Vec<_> = idx
            .dependencies("a")
            .unwrap()
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        // Loaded from the end: c, then b.
        assert_eq!(deps, ["b", "c"]);
        assert!(idx.dependencies("d").unwrap().is_empty());
    }

    #[test]
    fn unknown_modules_are_named() {
        let idx = index(&[("a", &["gone"])]);
        assert_eq!(
            idx.dependencies("nope").unwrap_err().to_string(),
            "the target has no module `nope`"
        );
        assert_eq!(
            idx.dependencies("a").unwrap_err().to_string(),
            "the target has no module `gone (needed by a)`"
        );
    }

    #[test]
    fn dash_and_underscore_are_one_name() {
        let idx = index(&[("snd_hda_intel", &[])]);
        assert!(idx.get("snd-hda-intel.ko").is_some());
    }

    #[test]
    fn module_symbol_text_round_trips() {
        let table =
            SymbolTable::from_ordered([("f".to_string(), 0x10, 't'), ("f".to_string(), 0x20, 't')]);
        let text = module_symbols_text(&[("m".to_string(), table)]);
        let back = parse_module_symbols(Path::new("x"), &text).unwrap();
        assert_eq!(back["m"].lookup("f")[1].sympos(), 2);
    }
}
