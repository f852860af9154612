//! Binary differencing of one translation unit compiled before and after a source patch.
//!
//! Both objects are compiled with `-ffunction-sections -fdata-sections`, so every function and
//! data object has a section of its own. The phases, each in its own module:
//!
//! 1. [`correlate`]: pair each symbol of the post object with its pre counterpart, seeing through
//!    GCC's renumbering of static locals (`count.12` -> `count.15`) and clones
//!    (`.constprop.N`, `.isra.N`, `.part.N`).
//! 2. [`compare`]: a function changed when its bytes differ outside relocated fields, or when a
//!    relocation differs in type, place or *target*, targets being compared by correlated
//!    symbol, by string contents, or by data section, never by address.
//! 3. [`extract`]: copy the changed and new functions, the strings and constants they use and
//!    the data the patch adds into a new object; everything else they reference stays a
//!    reference to the running kernel. Special-section entries (exception tables, alternatives,
//!    ORC, ...) that describe copied code come along ([`special`]).
//!
//! Doubt always resolves towards including a function: patching an unchanged function is
//! harmless, missing a changed one is not.

pub mod compare;
pub mod correlate;
pub mod extract;
pub mod lines;
mod naming;
pub mod special;

pub use compare::{diff_unit, FunctionVerdict, UnitDiff, Verdict};
pub use correlate::Correlation;
pub use extract::{extract, new_function_name, External, PatchObject, PatchedFunction};
pub use lines::LineMap;
pub use naming::{base_name, is_cold_part, NEW_FUNCTION_PREFIX};
pub use special::Layout;

/// What the differ knows besides the two objects of a unit.
#[derive(Clone, Debug)]
pub struct Context {
    /// Where the patch moved the lines of the files it touches.
    pub lines: LineMap,
    /// The target kernel's special-section layouts.
    pub layout: Layout,
}

/// Reasons a patch cannot be a live patch, each naming what and where.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
pub enum Refusal {
    /// An `__init`/`__exit` function changed: it ran at boot (or runs at unload) and cannot be
    /// redone by a live patch.
    #[error("{unit}: {function} is __init/__exit code ({section}) and changed ({reason}): it ran at boot (or runs at unload) and cannot be live patched; move the change into a callback (graft/patch.h: GRAFT_PRE_PATCH) if it must run")]
    InitCode {
        /// The translation unit.
        unit: String,
        /// The function.
        function: String,
        /// Its section.
        section: String,
        /// What changed.
        reason: String,
    },

    /// Existing initialized data changed.
    #[error("{unit}: the patch changes the initialized data {symbol} (section {section}): a live patch cannot change existing data; keep the old value and add a shadow variable (klp_shadow_*) or change it from a callback")]
    ChangedData {
        /// The translation unit.
        unit: String,
        /// The data symbol.
        symbol: String,
        /// Its section.
        section: String,
    },
    /// A changed function cannot be patched: it has no ftrace call site.
    #[error("{unit}: {function} changed but is not traceable (no __fentry__ call: notrace or noinstr), so the livepatch core cannot redirect it; change its traceable callers instead")]
    NotTraceable {
        /// The unit.
        unit: String,
        /// The function.
        function: String,
    },
    /// The patch changes the symbol versions of exported symbols.
    #[error("{unit}: the patch changes the symbol versions (modversions CRCs) of exported {}: the types these exports use now look different to the modules built against the running kernel, which check them; leave the declarations the unit sees unchanged (an added #include can do this), or keep new types out of exported interfaces",
        name_list(symbols))]
    ChangedExports {
        /// The unit.
        unit: String,
        /// The exported symbols whose CRC changed.
        symbols: Vec<String>,
    },
    /// The patch changes a structure's members.
    #[error("{file}: the patch changes the members of {what}: objects of the old layout live in the running kernel, made by code the patch does not replace, and would disagree with the patched code; keep the layout and attach new data with a shadow variable (klp_shadow_*)")]
    ChangedLayout {
        /// The file.
        file: String,
        /// The type (`struct seq_buf`).
        what: String,
    },
    /// The patch adds functions but replaces none: nothing running would reach them.
    #[error("{units}: the patch only adds functions ({}) and replaces none the running kernel runs, so nothing would call them; a function a live patch exports is no export of the running kernel: patch its callers with it (if it is one file of a split update, build it together with the files that call it)", name_list(functions))]
    OnlyNewFunctions {
        /// The units.
        units: String,
        /// The new functions.
        functions: Vec<String>,
    },
    /// One file's change of an update that does not compile without another file's change.
    #[error("{file}: not self-contained: with the update's headers, {needs} no longer compiles unchanged; the fix needs that file's change too ({patch}): build the patches together")]
    NotSelfContained {
        /// The file the patch is for.
        file: String,
        /// The unit that needs its own change.
        needs: String,
        /// The patch holding that change.
        patch: String,
    },
    /// Something graft does not know how to carry.
    #[error("{unit}: {what}")]
    Unsupported {
        /// The unit.
        unit: String,
        /// What is unsupported.
        what: String,
    },
}

/// A refusal, in parts: what it is about, where, and what the patch author can do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// The unit or file.
    pub unit: String,
    /// The function, symbol or type refused.
    pub subject: String,
    /// The section, when one is involved.
    pub section: Option<String>,
    /// Why.
    pub reason: String,
    /// What to do instead.
    pub remedy: String,
}

impl Refusal {
    /// The refusal in parts, for `graft build --explain`.
    pub fn explain(&self) -> Explanation {
        let e = |unit: &str, subject: &str, section: Option<&str>, reason: &str, remedy: &str| {
            Explanation {
                unit: unit.to_string(),
                subject: subject.to_string(),
                section: section.map(str::to_string),
                reason: reason.to_string(),
                remedy: remedy.to_string(),
            }
        };
        match self {
            Refusal::InitCode { unit, function, section, reason } => e(unit, function, Some(section), &format!("__init/__exit code changed ({reason}); it ran at boot"), "move the change into a GRAFT_PRE_PATCH callback if it must run"),
            Refusal::ChangedData { unit, symbol, section } => e(unit, symbol, Some(section), "existing initialized data changed", "keep the old value; add a shadow variable (klp_shadow_*) or change it from a callback"),
            Refusal::NotTraceable { unit, function } => e(unit, function, None, "changed but not traceable (no __fentry__: notrace or noinstr)", "change its traceable callers instead"),
            Refusal::ChangedExports { unit, symbols } => e(unit, &name_list(symbols), Some("__ksymtab"), "the CRCs of exported symbols change", "leave the declarations the unit sees unchanged"),
            Refusal::ChangedLayout { file, what } => e(file, what, None, "a structure's members change", "keep the layout; attach new data with a shadow variable"),
            Refusal::OnlyNewFunctions { units, functions } => e(units, &name_list(functions), None, "only new functions, and no replaced function calls them", "patch their callers too"),
            Refusal::NotSelfContained { file, needs, patch } => e(file, needs, None, "the change needs another file's change of the same update", &format!("build it together with {patch}")),
            Refusal::Unsupported { unit, what } => e(unit, what, None, "not supported", "change the patch as the message says"),
        }
    }
}

/// Up to eight names, then how many more.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut text = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        text.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    text
}
