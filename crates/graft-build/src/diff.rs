//! Diff: per unit, which functions changed, which are new, and what cannot be live patched
//! (graft-diff), plus the `graft/patch.h` directives of the patched objects.

use std::path::Path;

use graft_diff::{Context, Layout, LineMap, Refusal, UnitDiff, Verdict};
use graft_elf::ElfObject;
use graft_kernel::Kernel;

use crate::pairs::CompiledPair;
use crate::BuildError;

/// A callback a patched unit registers: the unit's index, its kind (`pre_patch`, ...), and the
/// function's name in the patched object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    /// Index of the unit in the compiled pairs.
    pub unit: usize,
    /// `pre_patch`, `post_patch`, `pre_unpatch` or `post_unpatch`.
    pub kind: String,
    /// The function.
    pub function: String,
}

/// What the differ found in all units.
#[derive(Debug)]
pub struct Diffs {
    /// One per compiled pair, in the same order.
    pub units: Vec<UnitDiff>,
    /// Callbacks the patched sources register.
    pub callbacks: Vec<Callback>,
}

impl Diffs {
    /// Whether any unit of `parent` has a function to replace or add.
    pub fn any_included(&self, pairs: &[CompiledPair], parent: &crate::Parent) -> bool {
        pairs
            .iter()
            .zip(&self.units)
            .any(|(p, d)| &p.unit.parent == parent && d.included().next().is_some())
    }
}

/// Diffs every pair; refuses what a live patch cannot carry, and a patch that changes nothing.
pub fn diff(pairs: &[CompiledPair], ctx: &Context) -> Result<Diffs, BuildError> {
    let mut units: Vec<UnitDiff> = pairs
        .iter()
        .map(|p| graft_diff::diff_unit(&p.unit.source, &p.pre, &p.post, ctx))
        .collect();
    let mut callbacks = Vec::new();
    for (i, (diff, pair)) in units.iter_mut().zip(pairs).enumerate() {
        for (kind, function) in directives(&pair.post) {
            if kind == "force" {
                force(diff, &function);
            } else {
                callbacks.push(Callback {
                    unit: i,
                    kind,
                    function,
                });
            }
        }
    }
    let refusals: Vec<Refusal> = units.iter().flat_map(|d| d.refusals.clone()).collect();
    if !refusals.is_empty() {
        return Err(BuildError::Refused(refusals));
    }
    if units.iter().all(|d| d.included().next().is_none()) {
        let names: Vec<&str> = pairs.iter().map(|p| p.unit.source.as_str()).collect();
        return Err(BuildError::NoEffectiveChange(names.join(", ")));
    }
    refuse_unreachable_additions(&units, pairs, &callbacks)?;
    Ok(Diffs { units, callbacks })
}

/// A patch that only adds functions, with no replaced function and no callback to reach
/// them, changes nothing that runs: refused rather than built as an empty live patch.
fn refuse_unreachable_additions(
    units: &[UnitDiff],
    pairs: &[CompiledPair],
    callbacks: &[Callback],
) -> Result<(), BuildError> {
    let included: Vec<(Verdict, &str)> = units
        .iter()
        .flat_map(|d| d.included())
        .map(|f| (f.verdict, f.name.as_str()))
        .collect();
    match only_additions(&included, !callbacks.is_empty()) {
        None => Ok(()),
        Some(functions) => {
            let units: Vec<&str> = pairs.iter().map(|p| p.unit.source.as_str()).collect();
            Err(BuildError::Refused(vec![Refusal::OnlyNewFunctions {
                units: units.join(", "),
                functions,
            }]))
        }
    }
}

/// The new functions, when they are all the patch includes and no callback runs.
fn only_additions(included: &[(Verdict, &str)], callbacks: bool) -> Option<Vec<String>> {
    let changed = included.iter().any(|(v, _)| *v == Verdict::Changed);
    if changed || callbacks || included.is_empty() {
        return None;
    }
    Some(included.iter().map(|(_, n)| n.to_string()).collect())
}

/// `GRAFT_ALWAYS_INCLUDE(function)`: replaced even when unchanged.
fn force(diff: &mut UnitDiff, function: &str) {
    if let Some(v) = diff
        .functions
        .iter_mut()
        .find(|v| v.name == function && v.verdict == Verdict::Unchanged)
    {
        v.verdict = Verdict::Changed;
        v.reason = Some("marked GRAFT_ALWAYS_INCLUDE".into());
    }
}

/// The `graft/patch.h` directives in a post object: (kind, function name), kind being
/// `force` or a callback kind.
pub fn directives(post: &ElfObject) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (index, section) in post.sections.iter().enumerate() {
        let Some(kind) = section.name.strip_prefix(".graft.") else {
            continue;
        };
        for r in section.relocs() {
            if let graft_diff::correlate::Target::Symbol { symbol, .. } =
                graft_diff::correlate::target_of(post, index, r)
            {
                out.push((kind.to_string(), post.symbols[symbol].name.clone()));
            }
        }
    }
    out
}

/// What the differ needs to know of the target and the patches: the special-section layouts
/// of the kernel's version, and where the patches moved the lines of the files they touch.
pub fn context(kernel: &Kernel, patched: &Path, touched: &[String]) -> Result<Context, BuildError> {
    let series = &kernel.target().series;
    let (major, minor) = series
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| {
            BuildError::Unsupported(format!(
                "{}: cannot read the kernel series {series}",
                kernel.target()
            ))
        })?;
    let layout =
        Layout::for_version(major, minor).map_err(|reason| BuildError::TargetUnsuitable {
            target: kernel.target().to_string(),
            reason,
        })?;
    Ok(Context {
        lines: line_map(&kernel.source_dir(), patched, touched),
        layout,
    })
}

/// Where the patches moved each line of the files they touch: the cached tree's text against
/// the patched view's.
fn line_map(original: &Path, patched: &Path, touched: &[String]) -> LineMap {
    let mut map = LineMap::default();
    for file in touched {
        let old = std::fs::read_to_string(original.join(file)).unwrap_or_default();
        let new = std::fs::read_to_string(patched.join(file)).unwrap_or_default();
        map.add_file(file, &old, &new);
    }
    map
}

#[cfg(test)]
mod unreachable_tests {
    use super::*;

    /// Regression: dmaengine.c's fix of the 6.1.192 update only adds devm_dma_request_chan
    /// (exported, called from other files of the update) and was "built" as a live patch
    /// replacing nothing.
    #[test]
    fn a_patch_that_only_adds_functions_is_refused() {
        let new = [
            (Verdict::New, "devm_dma_request_chan"),
            (Verdict::New, "dmaenginem_release_channel"),
        ];
        assert_eq!(
            only_additions(&new, false),
            Some(vec![
                "devm_dma_request_chan".to_string(),
                "dmaenginem_release_channel".to_string()
            ])
        );
        // Reached from a replaced function, or run by a callback: a real patch.
        let reached = [(Verdict::New, "helper"), (Verdict::Changed, "caller")];
        assert_eq!(only_additions(&reached, false), None);
        assert_eq!(only_additions(&new, true), None);
    }
}
