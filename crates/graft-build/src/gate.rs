//! Gate: whether the target can be live patched by this machine, and what the patches touch,
//! decided before any work.

use graft_kernel::{CompilerCheck, Kernel};

use crate::patchset::PatchFile;
use crate::{BuildError, BuildOptions};

/// What passed the gate.
#[derive(Debug)]
pub struct Inputs {
    /// The module (and livepatch) name.
    pub name: String,
    /// The patches, read and checked.
    pub patches: Vec<PatchFile>,
    /// Files the patches touch, in first-touched order.
    pub touched: Vec<String>,
    /// What the gate noticed and allowed (another revision of the compiler).
    pub notes: Vec<String>,
}

/// Checks the target (CONFIG_LIVEPATCH), the compiler (its version), the module name and the
/// patches.
pub fn check(kernel: &Kernel, options: &BuildOptions) -> Result<Inputs, BuildError> {
    let name = module_name(options)?;
    let config = kernel.config()?;
    if !config.is_yes("LIVEPATCH") {
        return Err(BuildError::TargetUnsuitable {
            target: kernel.target().to_string(),
            reason: "its config lacks CONFIG_LIVEPATCH=y".into(),
        });
    }
    let check = CompilerCheck::run(config.get("CC_VERSION_TEXT").unwrap_or_default());
    if !check.matches {
        return Err(BuildError::CompilerMismatch {
            command: check.command,
            expected: check.expected,
            local: check.local,
        });
    }
    let notes: Vec<String> = check.note.into_iter().collect();
    for note in &notes {
        tracing::warn!("{note}");
    }
    let patches = options
        .patches
        .iter()
        .map(|p| PatchFile::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut touched: Vec<String> = Vec::new();
    for file in patches.iter().flat_map(|p| &p.files) {
        if !touched.contains(file) {
            touched.push(file.clone());
        }
    }
    Ok(Inputs {
        name,
        patches,
        touched,
        notes,
    })
}

/// The module name: `--name`, else the output's file stem, `-` made `_`.
pub fn module_name(options: &BuildOptions) -> Result<String, BuildError> {
    let raw = match &options.name {
        Some(n) => n.clone(),
        None => options
            .output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let name = raw.replace('-', "_");
    if name.is_empty()
        || name.len() > 55
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(BuildError::BadOption(format!(
            "`{raw}` is not a usable module name: use letters, digits, - or _, at most 55 (--name)"
        )));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(output: &str, name: Option<&str>) -> BuildOptions {
        BuildOptions {
            patches: Vec::new(),
            output: output.into(),
            name: name.map(str::to_string),
            replace: true,
            set: None,
            keep_scratch: false,
        }
    }

    #[test]
    fn module_names() {
        assert_eq!(
            module_name(&options("out/fix-1.ko", None)).unwrap(),
            "fix_1"
        );
        assert_eq!(module_name(&options("x.ko", Some("mine"))).unwrap(), "mine");
        for bad in ["bad name!", "", &"x".repeat(56)] {
            let err = module_name(&options("x.ko", Some(bad))).unwrap_err();
            assert!(
                err.to_string().contains("not a usable module name"),
                "{bad}"
            );
            assert_eq!(err.outcome(), crate::Outcome::Failed);
        }
    }
}
