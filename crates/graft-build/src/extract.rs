//! Extract: the patch object of each unit that changed: its changed and new functions, what
//! they need copied, and undefined references for everything else (graft-diff).

use graft_diff::PatchObject;

use crate::diff::Diffs;
use crate::pairs::CompiledPair;
use crate::BuildError;

/// One unit's patch object.
#[derive(Debug)]
pub struct Extracted {
    /// Index of the unit in the compiled pairs.
    pub unit: usize,
    /// The unit's source.
    pub source: String,
    /// The livepatch object it patches (`vmlinux` or a module).
    pub object: String,
    /// The patch object.
    pub patch: PatchObject,
}

/// Extracts the patch object of every unit with something to replace or add.
pub fn extract(
    pairs: &[CompiledPair],
    diffs: &Diffs,
    ctx: &graft_diff::Context,
) -> Result<Vec<Extracted>, BuildError> {
    let mut out = Vec::new();
    for (i, (pair, diff)) in pairs.iter().zip(&diffs.units).enumerate() {
        if diff.included().next().is_none() {
            continue;
        }
        let patch = graft_diff::extract(diff, &pair.pre, &pair.post, i, ctx)
            .map_err(|r| BuildError::Refused(vec![r]))?;
        out.push(Extracted {
            unit: i,
            source: pair.unit.source.clone(),
            object: pair.unit.parent.object_name().to_string(),
            patch,
        });
    }
    Ok(out)
}
