//! Units: which translation units of the target a patch touches, by kbuild's own answer.
//!
//! A touched `.c` file is a unit when the configuration builds it (into vmlinux or a module);
//! a source that is only `#include`d by others (kernel/sched/build_utility.c includes
//! kernel/sched/debug.c) is handled like a header; a source the configuration does not build
//! has nothing running to patch. Headers are expanded into the units that include them later,
//! from the compiler's dependency lists ([`crate::headers`]).

use graft_cache::Cache;
use graft_kernel::{KbuildMap, Kernel, Membership};

use crate::BuildError;

/// The touched files, sorted by what happens to them.
#[derive(Debug, Default)]
pub struct Units {
    /// Sources kbuild builds: compiled before and after.
    pub sources: Vec<String>,
    /// Headers (and sources only ever included): expanded into the units that include them.
    pub headers: Vec<String>,
    /// Sources this configuration does not build, with why: reported, not patched.
    pub not_built: Vec<String>,
}

/// Sorts `touched`. Refuses files that are neither C sources nor headers, and a patch that
/// touches only sources the configuration does not build.
pub fn classify(kernel: &Kernel, cache: &Cache, touched: &[String]) -> Result<Units, BuildError> {
    let mut units = Units::default();
    let mut map = KbuildMap::new(kernel, cache);
    for file in touched {
        if file.ends_with(".h") {
            units.headers.push(file.clone());
        } else if file.ends_with(".c") {
            match map.membership(file)? {
                Membership::BuiltIn | Membership::Module => units.sources.push(file.clone()),
                Membership::NotBuilt { .. } if included_elsewhere(kernel, cache, file)? => {
                    units.headers.push(file.clone())
                }
                Membership::NotBuilt { reason } => units.not_built.push(reason),
            }
        } else {
            return Err(BuildError::Unsupported(format!(
                "{file}: only C sources and headers can be live patched (not build files or assembly)"
            )));
        }
    }
    if units.sources.is_empty() && units.headers.is_empty() && !units.not_built.is_empty() {
        return Err(BuildError::NotBuiltInConfig {
            target: kernel.target().to_string(),
            reasons: units.not_built,
        });
    }
    Ok(units)
}

impl Units {
    /// The notes the report carries about sources left alone.
    pub fn notes(&self) -> Vec<String> {
        self.not_built
            .iter()
            .map(|r| format!("{r}: nothing of it runs in this kernel, so nothing is patched there"))
            .collect()
    }
}

/// Whether other units `#include` the source `file`.
fn included_elsewhere(kernel: &Kernel, cache: &Cache, file: &str) -> Result<bool, BuildError> {
    Ok(!kernel
        .include_graph(cache)?
        .candidate_units(file)
        .is_empty())
}
