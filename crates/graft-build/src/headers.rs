//! Headers: a changed header (or a source only ever `#include`d) reaches the units that
//! include it, by the compiler's own dependency lists.
//!
//! The include graph gives a superset of candidates cheaply; each candidate kbuild builds is
//! compiled unpatched (cached), and its recorded dependency list decides whether it really
//! includes the header. A change that can be narrowed to named definitions (functions,
//! macros) only reaches the units that use them.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use graft_cache::Cache;
use graft_kernel::{KbuildMap, Kernel, Membership};
use graft_progress::{SharedProgress, Unit as ProgressUnit};

use crate::compile::{self, Unit};
use crate::patchset::{self, PatchFile};
use crate::BuildError;

/// Most units a header change may reach before graft refuses: a patch that replaces code in
/// more places than this is no longer a live patch anyone should review.
pub const MAX_HEADER_UNITS: usize = 64;

/// The units that include any of `headers`, narrowed by what the patches change in them, and
/// why headers only units this configuration does not build include reach nothing.
pub fn units_including_all(
    kernel: &Kernel,
    cache: &Cache,
    headers: &[String],
    patches: &[PatchFile],
    tree: &Path,
    progress: &SharedProgress,
) -> Result<(Vec<Unit>, Vec<String>), BuildError> {
    let mut all: Vec<Unit> = Vec::new();
    let mut not_built = Vec::new();
    for header in headers {
        let definitions = changed_definitions(header, patches, tree);
        match units_including(kernel, cache, header, definitions.as_ref(), tree, progress) {
            Ok(units) => {
                for unit in units {
                    if !all.iter().any(|u| u.source == unit.source) {
                        all.push(unit);
                    }
                }
            }
            Err(BuildError::NotBuiltInConfig { reasons, .. }) => not_built.extend(reasons),
            Err(e) => return Err(e),
        }
    }
    Ok((all, not_built))
}

/// The definitions a header change touches, when every changed line lies in one graft can
/// name.
fn changed_definitions(
    header: &str,
    patches: &[PatchFile],
    tree: &Path,
) -> Option<BTreeSet<String>> {
    if !header.ends_with(".h") {
        return None;
    }
    let lines: Vec<usize> = patches
        .iter()
        .flat_map(|p| patchset::changed_lines(&p.text, header))
        .collect();
    let text = fs::read_to_string(tree.join(header)).unwrap_or_default();
    graft_kernel::enclosing_definitions(&text, &lines)
}

/// The units of the target that include `header`, by the compiler's own dependency lists.
fn units_including(
    kernel: &Kernel,
    cache: &Cache,
    header: &str,
    definitions: Option<&BTreeSet<String>>,
    tree: &Path,
    progress: &SharedProgress,
) -> Result<Vec<Unit>, BuildError> {
    let graph = kernel.include_graph(cache)?;
    let candidates = match definitions {
        // Read the patched view: the patch may add the first uses of what it defines.
        Some(names) => graph.candidate_units_using(tree, header, names),
        None => graph.candidate_units(header),
    };
    if candidates.len() > MAX_HEADER_UNITS {
        let what = match definitions {
            Some(names) => format!(
                "units that may use {}",
                names.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
            None => "units that may include it".to_string(),
        };
        return Err(BuildError::Unsupported(format!(
            "{header}: {} {what} (more than {MAX_HEADER_UNITS}): a live patch of it would replace code all over the kernel; patch the functions that need the fix instead",
            candidates.len()
        )));
    }
    let task = progress.start(
        &format!("find units including {header}"),
        Some(candidates.len() as u64),
        ProgressUnit::Items,
    );
    // Only units this configuration builds are part of the running kernel; a compile failure
    // of one of those is a real error, not a hint that it is not built.
    let mut map = KbuildMap::new(kernel, cache);
    let mut built = Vec::new();
    for candidate in &candidates {
        match map.membership(candidate)? {
            Membership::NotBuilt { reason } => tracing::debug!("{reason}"),
            _ => built.push(candidate.clone()),
        }
    }
    if built.is_empty() && !candidates.is_empty() {
        // Every unit that could include it is left out by the configuration (a driver of
        // another architecture): nothing of it runs.
        return Err(BuildError::NotBuiltInConfig {
            target: kernel.target().to_string(),
            reasons: vec![format!(
                "{header}: none of the {} units that may include it is built",
                candidates.len()
            )],
        });
    }
    let mut affected = Vec::new();
    for result in compile::prepare_units(kernel, cache, &built, &|_, _| {}) {
        let unit = result?;
        if unit.deps.iter().any(|d| d == header) {
            affected.push(unit);
        }
    }
    task.finish(&format!(
        "{} of {} candidates include it",
        affected.len(),
        candidates.len()
    ));
    // A change narrowed to named definitions may reach no other unit (a new prototype);
    // without names, a header nobody includes is a mistake in the patch.
    if affected.is_empty() && definitions.is_none() {
        return Err(BuildError::Unsupported(format!(
            "no unit of {} includes {header}",
            kernel.target()
        )));
    }
    Ok(affected)
}
