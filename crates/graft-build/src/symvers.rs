//! Symbol versions: a live patch must not change the CRCs of what a unit exports.
//!
//! With CONFIG_MODVERSIONS every exported symbol has a CRC of the types it uses (genksyms over
//! the preprocessed unit), and every module records the CRCs it was built against. A patch
//! that changes one, even without changing code (an added `#include` that defines a type
//! the export's signature names), says the exported interface now looks different: modules
//! built against the running kernel would disagree with it. kbuild records no CRCs in the
//! compile command graft replays, so they are computed here the way kbuild does
//! (`$(CPP) -D__GENKSYMS__ $(c_flags) $< | genksyms -r /dev/null`), before and after.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use graft_diff::Refusal;
use graft_kernel::Kernel;

use crate::pairs::CompiledPair;
use crate::BuildError;

/// Refuses the patch when it changes the CRC of a symbol a unit exports.
pub fn check(kernel: &Kernel, pairs: &[CompiledPair], tree: &Path) -> Result<(), BuildError> {
    if !kernel.config()?.is_yes("MODVERSIONS") {
        return Ok(());
    }
    let genksyms = kernel.kbuild_program("scripts/genksyms/genksyms");
    let exporting: Vec<&CompiledPair> = pairs.iter().filter(|p| exports(p)).collect();
    let results: Vec<Result<Option<Refusal>, BuildError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = exporting
            .iter()
            .map(|pair| {
                let genksyms = &genksyms;
                let source_dir = kernel.source_dir();
                scope.spawn(move || {
                    let before =
                        crcs(&pair.unit.command, &pair.unit.source, &source_dir, genksyms)?;
                    let after = crcs(&pair.unit.command, &pair.unit.source, tree, genksyms)?;
                    Ok(changed(&pair.unit.source, &before, &after))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BuildError::Unsupported("a genksyms thread panicked".into()))
                })
            })
            .collect()
    });
    let refusals: Vec<Refusal> = results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Refused(refusals))
    }
}

/// Whether the unit exports symbols (its unpatched object has export tables).
fn exports(pair: &CompiledPair) -> bool {
    pair.pre
        .sections
        .iter()
        .any(|s| s.name.starts_with("___ksymtab") || s.name.starts_with("__ksymtab"))
}

/// The refusal for the exports whose CRC differs, if any.
fn changed(
    unit: &str,
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
) -> Option<Refusal> {
    let symbols: Vec<String> = before
        .iter()
        .filter(|(name, crc)| after.get(*name).is_some_and(|c| c != *crc))
        .map(|(name, _)| name.clone())
        .collect();
    (!symbols.is_empty()).then(|| Refusal::ChangedExports {
        unit: unit.to_string(),
        symbols,
    })
}

/// The CRCs genksyms gives `source` compiled by kbuild's `command`, in `dir`.
fn crcs(
    command: &str,
    source: &str,
    dir: &Path,
    genksyms: &Path,
) -> Result<BTreeMap<String, String>, BuildError> {
    let preprocess = preprocess_command(command, source).ok_or_else(|| {
        BuildError::Unsupported(format!(
            "{source}: kbuild's command has no `-c -o` to derive the preprocessor run from"
        ))
    })?;
    let script = format!("{preprocess} | {} -r /dev/null", genksyms.display());
    let output = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::io("running genksyms in", dir, e))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(BuildError::CompileFailed {
            unit: source.to_string(),
            which: if dir.ends_with("tree") {
                "patched"
            } else {
                "unpatched"
            },
            tail: format!(
                "genksyms: {}",
                err.lines().take(8).collect::<Vec<_>>().join("\n")
            ),
        });
    }
    Ok(parse_symvers(&String::from_utf8_lossy(&output.stdout)))
}

/// `gcc ... -c -o x.o x.c ; objtool ...` -> `gcc ... -E -D__GENKSYMS__ x.c`, without the
/// dependency file option (the preprocessing must not overwrite kbuild's).
fn preprocess_command(command: &str, source: &str) -> Option<String> {
    let compile = command
        .split(" -c -o ")
        .next()
        .filter(|_| command.contains(" -c -o "))?;
    let flags: Vec<&str> = compile
        .split(' ')
        .filter(|w| !w.starts_with("-Wp,-MMD,") && !w.starts_with("-Wp,-MD,"))
        .collect();
    Some(format!("{} -E -D__GENKSYMS__ {source}", flags.join(" ")))
}

/// `#SYMVER name 0xcrc` lines.
fn parse_symvers(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.strip_prefix("#SYMVER ")?.split_whitespace();
            Some((words.next()?.to_string(), words.next()?.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preprocessor_run_comes_from_kbuilds_command() {
        let cmd = "gcc-12 -Wp,-MMD,drivers/base/.core.o.d -nostdinc -DKBUILD_MODNAME='\"core\"' -c -o drivers/base/core.o drivers/base/core.c   ; ./tools/objtool/objtool x";
        assert_eq!(
            preprocess_command(cmd, "drivers/base/core.c").unwrap(),
            "gcc-12 -nostdinc -DKBUILD_MODNAME='\"core\"' -E -D__GENKSYMS__ drivers/base/core.c"
        );
        assert!(preprocess_command("gcc -E x.c", "x.c").is_none());
    }

    /// Regression (kpatch's symvers-disagreement-FAIL): an added #include changed exported
    /// CRCs while the code stayed the same, and graft called it "no effective change".
    #[test]
    fn a_changed_crc_of_an_export_is_refused_by_name() {
        let before = parse_symvers("#SYMVER get_device 0x1111\n#SYMVER put_device 0x2222\nother\n");
        let mut after = before.clone();
        assert!(changed("drivers/base/core.c", &before, &after).is_none());
        after.insert("get_device".into(), "0x3333".into());
        let refusal = changed("drivers/base/core.c", &before, &after)
            .unwrap()
            .to_string();
        assert!(refusal.contains("exported get_device"), "{refusal}");
        assert!(refusal.contains("modversions CRCs"), "{refusal}");
    }
}
