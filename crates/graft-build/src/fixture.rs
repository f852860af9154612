//! Fixtures: a build's compiled units and the pieces of the running code they were matched
//! against, kept small enough to check in, so that the differ, run-pre matching, extraction
//! and klp conversion are tested without the kernel cache, the network or QEMU.
//!
//! [`capture`] runs the real pipeline on a real target up to run-pre matching, with the code
//! image and the kallsyms index noting every range and address matching reads; it writes the
//! unpatched and patched objects (without debug sections), exactly those ranges of the image,
//! the kallsyms entries of the names looked at (with every same-named entry, so positions stay
//! right), the whole object and symbols of each patched module, and where the patch moved the
//! lines of the files it touches. [`Fixture::load`] reads it back as a [`RunningCode`].
//! `scripts/bless-fixtures.sh` regenerates every fixture with one command.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use graft_cache::Cache;
use graft_diff::{Context, Layout, LineMap};
use graft_elf::ElfObject;
use graft_kernel::{Kernel, SymbolTable};

use crate::image::{AddressIndex, CodeImage, ReadLog};
use crate::pairs::CompiledPair;
use crate::runpre::RunningCode;
use crate::{diff, BuildError, BuildOptions, Parent, Unit};

/// Largest module object a fixture keeps (whole modules are what module matching reads).
const MAX_MODULE_BYTES: usize = 256 * 1024;

/// What `fixture.json` records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Description {
    target: String,
    /// `major.minor`.
    series: String,
    units: Vec<UnitRecord>,
    /// (address, length) of each image piece, in `image.bin` order.
    image: Vec<(u64, u64)>,
    /// Modules whose objects and symbols are kept.
    modules: Vec<String>,
    /// Patched modules too large to keep: tests of such a fixture stop before run-pre.
    #[serde(default)]
    modules_left_out: Vec<String>,
    lines: LineMap,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct UnitRecord {
    source: String,
    object: String,
    command: String,
    /// `vmlinux` or the module.
    parent: String,
}

/// A loaded fixture.
#[derive(Debug)]
pub struct Fixture {
    /// The target it was captured on.
    pub target: String,
    /// The compiled units.
    pub pairs: Vec<CompiledPair>,
    /// The differ's context: where lines moved, the special-section layouts.
    pub context: Context,
    image: Vec<(u64, Vec<u8>)>,
    vmlinux: SymbolTable,
    modules: BTreeMap<String, SymbolTable>,
    kos: BTreeMap<String, ElfObject>,
}

/// Captures the fixture of `patches` on `kernel` into `out` (replaced).
pub fn capture(
    cache: &Cache,
    kernel: &Kernel,
    patches: &[PathBuf],
    out: &Path,
) -> Result<(), BuildError> {
    let options = BuildOptions {
        patches: patches.to_vec(),
        output: out.join("fixture.ko"),
        name: Some("fixture".into()),
        replace: true,
        set: None,
        keep_scratch: false,
    };
    let crate::Compiled { pairs, ctx, .. } = crate::compile_only(cache, kernel, &options)?;
    let units_diff: Vec<_> = pairs
        .iter()
        .map(|p| graft_diff::diff_unit(&p.unit.source, &p.pre, &p.post, &ctx))
        .collect();
    let diffs = diff::Diffs {
        units: units_diff,
        callbacks: Vec::new(),
    };
    let recorder = Recorder {
        kernel,
        image_log: Arc::new(Mutex::new(Vec::new())),
        index_log: Arc::new(Mutex::new(Vec::new())),
    };
    // A mismatch is a result worth keeping too (a fixture of a refusal).
    if let Err(e) = crate::runpre::prove(&recorder, &pairs, &diffs) {
        tracing::info!("run-pre on the fixture: {e}");
    }
    write(kernel, &pairs, &diffs, &ctx.lines, &recorder, out)
}

fn write(
    kernel: &Kernel,
    pairs: &[CompiledPair],
    diffs: &diff::Diffs,
    lines: &LineMap,
    recorder: &Recorder<'_>,
    out: &Path,
) -> Result<(), BuildError> {
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out).map_err(|e| BuildError::io("creating", out, e))?;
    let mut records = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        for (which, object) in [("pre", &pair.pre), ("post", &pair.post)] {
            let path = out.join(format!("{i}.{which}.o"));
            let bytes = without_debug(object).write(&path.display().to_string())?;
            fs::write(&path, bytes).map_err(|e| BuildError::io("writing", &path, e))?;
        }
        records.push(UnitRecord {
            source: pair.unit.source.clone(),
            object: pair.unit.object.clone(),
            command: pair.unit.command.clone(),
            parent: pair.unit.parent.object_name().to_string(),
        });
    }
    let reads = recorder
        .image_log
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    let image = kernel_image(kernel, &reads)?;
    let mut blob = Vec::new();
    for (_, bytes) in &image {
        blob.extend_from_slice(bytes);
    }
    let image_path = out.join("image.bin");
    fs::write(&image_path, blob).map_err(|e| BuildError::io("writing", &image_path, e))?;
    let kallsyms = kallsyms_subset(kernel, pairs, diffs, recorder)?;
    let kallsyms_path = out.join("kallsyms.txt");
    fs::write(&kallsyms_path, kallsyms.to_text())
        .map_err(|e| BuildError::io("writing", &kallsyms_path, e))?;
    let modules: BTreeSet<String> = pairs
        .iter()
        .zip(&diffs.units)
        .filter(|(_, d)| d.included().next().is_some())
        .filter_map(|(p, _)| match &p.unit.parent {
            Parent::Module(m) => Some(m.clone()),
            Parent::Vmlinux => None,
        })
        .collect();
    let mut kept = Vec::new();
    let mut left_out = Vec::new();
    if !modules.is_empty() {
        let tables = kernel.module_symbols()?;
        for module in &modules {
            let ko = without_debug(&recorder.module_object(module)?).write(module)?;
            if ko.len() > MAX_MODULE_BYTES {
                left_out.push(module.clone());
                continue;
            }
            kept.push(module.clone());
            let path = out.join(format!("module-{module}.ko"));
            fs::write(&path, ko).map_err(|e| BuildError::io("writing", &path, e))?;
            let path = out.join(format!("module-{module}.symbols.txt"));
            let text = tables
                .get(module)
                .map(SymbolTable::to_text)
                .unwrap_or_default();
            fs::write(&path, text).map_err(|e| BuildError::io("writing", &path, e))?;
        }
    }
    let description = Description {
        target: kernel.target().to_string(),
        series: kernel.target().series.clone(),
        units: records,
        image: image.iter().map(|(a, b)| (*a, b.len() as u64)).collect(),
        modules: kept,
        modules_left_out: left_out,
        lines: lines.clone(),
    };
    let json = serde_json::to_string_pretty(&description)
        .map_err(|e| BuildError::Unsupported(e.to_string()))?;
    let path = out.join("fixture.json");
    fs::write(&path, json).map_err(|e| BuildError::io("writing", &path, e))
}

/// The image pieces matching read, each widened a little so a test that perturbs a neighbour
/// still reads real bytes.
fn kernel_image(kernel: &Kernel, reads: &[(u64, u64)]) -> Result<Vec<(u64, Vec<u8>)>, BuildError> {
    let image = CodeImage::load(&kernel.vmlinux())?;
    let widened: Vec<(u64, u64)> = reads
        .iter()
        .map(|(s, e)| (s.saturating_sub(16), e + 16))
        .collect();
    Ok(image.slices(&widened))
}

/// The kallsyms entries of every name matching looked at or for, with all their same-named
/// entries (a position counts them).
fn kallsyms_subset(
    kernel: &Kernel,
    pairs: &[CompiledPair],
    diffs: &diff::Diffs,
    recorder: &Recorder<'_>,
) -> Result<SymbolTable, BuildError> {
    let table = kernel.symbols()?;
    let looked_up: BTreeSet<u64> = recorder
        .index_log
        .lock()
        .map(|l| l.iter().map(|(a, _)| *a).collect())
        .unwrap_or_default();
    let mut names: BTreeSet<String> = table
        .symbols()
        .iter()
        .filter(|s| looked_up.contains(&s.address))
        .map(|s| s.name.clone())
        .collect();
    for (pair, diff) in pairs.iter().zip(&diffs.units) {
        for v in diff.included() {
            names.insert(v.pre_name.clone().unwrap_or_else(|| v.name.clone()));
        }
        // What resolution may look up by name: every symbol the unit references.
        for s in &pair.post.symbols {
            if !s.name.is_empty() {
                names.insert(s.name.clone());
            }
        }
    }
    names.insert("_text".into());
    Ok(SymbolTable::from_ordered(
        table
            .symbols()
            .iter()
            .filter(|s| names.contains(&s.name))
            .map(|s| (s.name.clone(), s.address, s.kind)),
    ))
}

/// `object` without debug information, which fixtures do not need and which is most of a
/// kernel object's size.
fn without_debug(object: &ElfObject) -> ElfObject {
    let mut out = object.clone();
    let keep: Vec<bool> = out
        .sections
        .iter()
        .map(|s| !s.name.starts_with(".debug") && !s.name.starts_with(".BTF"))
        .collect();
    crate::klp::remove_sections(
        &mut out,
        &keep
            .iter()
            .enumerate()
            .filter(|(_, k)| !**k)
            .map(|(i, _)| i)
            .collect(),
    );
    out
}

/// The kernel, with every read of matching noted.
struct Recorder<'k> {
    kernel: &'k Kernel,
    image_log: ReadLog,
    index_log: ReadLog,
}

impl RunningCode for Recorder<'_> {
    fn vmlinux_symbols(&self) -> Result<SymbolTable, BuildError> {
        self.kernel.vmlinux_symbols()
    }

    fn module_symbols(&self) -> Result<BTreeMap<String, SymbolTable>, BuildError> {
        RunningCode::module_symbols(self.kernel)
    }

    fn image(&self) -> Result<CodeImage, BuildError> {
        Ok(self.kernel.image()?.with_log(self.image_log.clone()))
    }

    fn module_object(&self, module: &str) -> Result<ElfObject, BuildError> {
        self.kernel.module_object(module)
    }

    fn address_index(&self, table: &SymbolTable) -> AddressIndex {
        AddressIndex::new(table).with_log(self.index_log.clone())
    }
}

impl Fixture {
    /// Reads a fixture written by [`capture`].
    pub fn load(dir: &Path) -> Result<Self, BuildError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read(&path).map_err(|e| BuildError::io("reading", &path, e))
        };
        let text =
            |name: &str| Ok::<_, BuildError>(String::from_utf8_lossy(&read(name)?).into_owned());
        let description: Description = serde_json::from_slice(&read("fixture.json")?)
            .map_err(|e| BuildError::Unsupported(format!("{}/fixture.json: {e}", dir.display())))?;
        let mut pairs = Vec::new();
        for (i, u) in description.units.iter().enumerate() {
            let pre = ElfObject::parse(
                &format!("{} (unpatched)", u.object),
                &read(&format!("{i}.pre.o"))?,
            )?;
            let post = ElfObject::parse(
                &format!("{} (patched)", u.object),
                &read(&format!("{i}.post.o"))?,
            )?;
            pairs.push(CompiledPair {
                unit: Unit {
                    source: u.source.clone(),
                    object: u.object.clone(),
                    command: u.command.clone(),
                    parent: if u.parent == "vmlinux" {
                        Parent::Vmlinux
                    } else {
                        Parent::Module(u.parent.clone())
                    },
                    pre: dir.join(format!("{i}.pre.o")),
                    deps: Vec::new(),
                },
                pre,
                post,
            });
        }
        let blob = read("image.bin")?;
        let mut image = Vec::new();
        let mut at = 0usize;
        for (address, len) in &description.image {
            let end = at + *len as usize;
            let bytes = blob.get(at..end).ok_or_else(|| {
                BuildError::Unsupported(format!(
                    "{}/image.bin is shorter than fixture.json says",
                    dir.display()
                ))
            })?;
            image.push((*address, bytes.to_vec()));
            at = end;
        }
        let vmlinux =
            SymbolTable::from_kallsyms(&dir.join("kallsyms.txt"), &text("kallsyms.txt")?)?;
        let mut modules = BTreeMap::new();
        let mut kos = BTreeMap::new();
        for m in &description.modules {
            let path = dir.join(format!("module-{m}.symbols.txt"));
            modules.insert(
                m.clone(),
                SymbolTable::from_kallsyms(&path, &text(&format!("module-{m}.symbols.txt"))?)?,
            );
            kos.insert(
                m.clone(),
                ElfObject::parse(m, &read(&format!("module-{m}.ko"))?)?,
            );
        }
        let (major, minor) = description
            .series
            .split_once('.')
            .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
            .ok_or_else(|| BuildError::Unsupported(format!("bad series {}", description.series)))?;
        let layout = Layout::for_version(major, minor).map_err(BuildError::Unsupported)?;
        Ok(Self {
            target: description.target,
            pairs,
            context: Context {
                lines: description.lines,
                layout,
            },
            image,
            vmlinux,
            modules,
            kos,
        })
    }

    /// The image pieces, for tests that perturb them.
    pub fn image_mut(&mut self) -> &mut Vec<(u64, Vec<u8>)> {
        &mut self.image
    }

    /// How many image pieces there are.
    pub fn image_len(&self) -> usize {
        self.image.len()
    }

    /// The kallsyms address of `name` (its first entry); 0 when the fixture lacks it.
    pub fn vmlinux_symbols_address(&self, name: &str) -> u64 {
        self.vmlinux.lookup(name).first().map_or(0, |s| s.address)
    }

    /// Replaces the kept object of `module`.
    pub fn set_module_object_for_tests(&mut self, module: &str, object: ElfObject) {
        self.kos.insert(module.to_string(), object);
    }

    /// The kept object of `module`, to inspect.
    pub fn module_object_for_tests(&self, module: &str) -> ElfObject {
        self.kos.get(module).cloned().unwrap_or_default()
    }

    /// Flips the byte at `offset` of `function` in the kept object of `module`: a running
    /// module that is not what graft compiled.
    pub fn perturb_module_function(&mut self, module: &str, function: &str, offset: u64) {
        let Some(ko) = self.kos.get_mut(module) else {
            return;
        };
        let Some(sym) = ko.symbols.iter().find(|s| s.name == function).cloned() else {
            return;
        };
        if let graft_elf::SymSection::Section(section) = sym.section {
            if let Some(b) = ko.sections[section]
                .data
                .get_mut((sym.value + offset) as usize)
            {
                *b ^= 0xff;
            }
        }
    }
}

impl RunningCode for Fixture {
    fn vmlinux_symbols(&self) -> Result<SymbolTable, BuildError> {
        Ok(self.vmlinux.clone())
    }

    fn module_symbols(&self) -> Result<BTreeMap<String, SymbolTable>, BuildError> {
        Ok(self.modules.clone())
    }

    fn image(&self) -> Result<CodeImage, BuildError> {
        Ok(CodeImage::from_slices(&self.image))
    }

    fn module_object(&self, module: &str) -> Result<ElfObject, BuildError> {
        self.kos
            .get(module)
            .cloned()
            .ok_or_else(|| BuildError::Symbol(format!("the fixture has no module {module}")))
    }
}
