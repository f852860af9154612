//! GCC's symbol naming, seen through.

/// Prefix the patch object gives the new versions of patched functions, so they never clash
/// with the names they replace (which headers may declare with other types).
pub const NEW_FUNCTION_PREFIX: &str = "__graft_new_";

/// The name without GCC's numeric suffixes: `count.12` -> `count`,
/// `foo.constprop.0` -> `foo.constprop`, `__already_done.3` -> `__already_done`.
pub fn base_name(name: &str) -> String {
    let base = name
        .split('.')
        .filter(|part| part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()))
        .collect::<Vec<_>>()
        .join(".");
    // `__UNIQUE_ID_ddebug340`: numbered by __COUNTER__, which any earlier use shifts.
    if base.starts_with("__UNIQUE_ID_") {
        return base
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .to_string();
    }
    base
}

/// Whether a function symbol is the cold part GCC split out of another (`foo.cold`).
pub fn is_cold_part(name: &str) -> bool {
    name.ends_with(".cold") || name.contains(".cold.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(base_name("count.12"), "count");
        assert_eq!(base_name("foo.constprop.0"), "foo.constprop");
        assert_eq!(base_name("foo.isra.0.cold"), "foo.isra.cold");
        assert_eq!(base_name("plain"), "plain");
        assert_eq!(base_name("__UNIQUE_ID_ddebug340.11"), "__UNIQUE_ID_ddebug");
        assert!(is_cold_part("foo.cold"));
        assert!(!is_cold_part("coldplug"));
    }
}
