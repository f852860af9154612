//! Compile: the unpatched and patched object of every affected unit, by kbuild's own commands.
//!
//! Unpatched objects come from one kbuild run for all uncached units (cached per target); each
//! unit's patched compile starts as soon as kbuild prints the unit's command, overlapping the
//! two. Header changes are then expanded into the units that include them ([`headers`]), whose
//! patched objects are compiled in parallel. The phase ends with both objects parsed.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::thread::ScopedJoinHandle;

use graft_cache::Cache;
use graft_elf::ElfObject;
use graft_kernel::Kernel;
use graft_progress::{SharedProgress, Unit as ProgressUnit};

use crate::compile::{self, Unit};
use crate::patchset::PatchFile;
use crate::units::Units;
use crate::{headers, BuildError};

/// One unit, compiled before and after the patch.
#[derive(Debug)]
pub struct CompiledPair {
    /// The unit: source, kbuild command, parent object.
    pub unit: Unit,
    /// The unpatched object.
    pub pre: ElfObject,
    /// The patched object.
    pub post: ElfObject,
}

/// Patched compiles that ran while kbuild compiled the unpatched units: source -> (the
/// command they used, the object or error).
type EarlyPatched = HashMap<String, (String, Result<PathBuf, BuildError>)>;

/// A patched compile started from the command kbuild printed: (source, command, thread).
type EarlyPost<'scope> = (
    String,
    String,
    ScopedJoinHandle<'scope, Result<PathBuf, BuildError>>,
);

/// Compiles every unit the patches affect, in the patched `tree`.
pub fn compile(
    kernel: &Kernel,
    cache: &Cache,
    units: &Units,
    patches: &[PatchFile],
    tree: &Path,
    progress: &SharedProgress,
) -> Result<Vec<CompiledPair>, BuildError> {
    let task = progress.start(
        "compile units",
        Some(units.sources.len() as u64),
        ProgressUnit::Items,
    );
    let (mut affected, mut early) =
        unpatched_with_early_patched(kernel, cache, &units.sources, tree)?;
    task.finish(&format!("{} units", affected.len()));
    let (included, not_built) =
        headers::units_including_all(kernel, cache, &units.headers, patches, tree, progress)?;
    for unit in included {
        if !affected.iter().any(|u| u.source == unit.source) {
            affected.push(unit);
        }
    }
    if affected.is_empty() {
        return Err(BuildError::NotBuiltInConfig {
            target: kernel.target().to_string(),
            reasons: units.not_built.iter().cloned().chain(not_built).collect(),
        });
    }
    let posts = patched(&affected, &mut early, tree)?;
    affected
        .into_iter()
        .zip(posts)
        .map(|(unit, post)| parse_pair(unit, &post))
        .collect()
}

/// The unpatched units of `sources`, and the patched compiles started while kbuild ran.
fn unpatched_with_early_patched(
    kernel: &Kernel,
    cache: &Cache,
    sources: &[String],
    tree: &Path,
) -> Result<(Vec<Unit>, EarlyPatched), BuildError> {
    let (results, early) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<(String, String)>();
        let consumer = scope.spawn(move || {
            let mut started: Vec<EarlyPost<'_>> = Vec::new();
            for (source, command) in rx {
                if !started.iter().any(|(s, _, _)| *s == source) {
                    let (s, c) = (source.clone(), command.clone());
                    let handle = scope.spawn(move || compile::compile_post_command(&s, &c, tree));
                    started.push((source, command, handle));
                }
            }
            started
                .into_iter()
                .map(|(s, c, h)| (s, (c, join(h))))
                .collect::<HashMap<_, _>>()
        });
        let results = compile::prepare_units(kernel, cache, sources, &|source, command| {
            let _ = tx.send((source.to_string(), command.to_string()));
        });
        drop(tx);
        let early = consumer.join().unwrap_or_default();
        (results, early)
    });
    let units = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((units, early))
}

/// The patched objects of `units`: those started early stand if they used kbuild's recorded
/// command; the rest are compiled now, in parallel.
fn patched(
    units: &[Unit],
    early: &mut EarlyPatched,
    tree: &Path,
) -> Result<Vec<PathBuf>, BuildError> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = units
            .iter()
            .map(|u| {
                let ready = early
                    .remove(&u.source)
                    .filter(|(command, _)| *command == u.command);
                scope.spawn(move || match ready {
                    Some((_, result)) => result,
                    None => compile::compile_post(u, tree),
                })
            })
            .collect();
        handles.into_iter().map(join).collect::<Result<Vec<_>, _>>()
    })
}

fn join<T>(handle: ScopedJoinHandle<'_, Result<T, BuildError>>) -> Result<T, BuildError> {
    handle
        .join()
        .unwrap_or_else(|_| Err(BuildError::Unsupported("a compiler thread panicked".into())))
}

fn parse_pair(unit: Unit, post_path: &Path) -> Result<CompiledPair, BuildError> {
    let pre_bytes = fs::read(&unit.pre).map_err(|e| BuildError::io("reading", &unit.pre, e))?;
    let post_bytes = fs::read(post_path).map_err(|e| BuildError::io("reading", post_path, e))?;
    let pre = ElfObject::parse(&format!("{} (unpatched)", unit.object), &pre_bytes)?;
    let post = ElfObject::parse(&format!("{} (patched)", unit.object), &post_bytes)?;
    Ok(CompiledPair { unit, pre, post })
}
