//! The kernel's `.config`: the options graft's decisions depend on.

use std::collections::BTreeMap;

/// A parsed kernel configuration. Options that are "not set" are absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses `.config` text. Lines that are neither assignments nor comments are ignored, as
    /// Kconfig itself does.
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|line| {
                let (key, value) = line.trim().split_once('=')?;
                let key = key.strip_prefix("CONFIG_")?;
                let value = value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .map(|v| v.replace("\\\"", "\"").replace("\\\\", "\\"))
                    .unwrap_or_else(|| value.to_string());
                Some((key.to_string(), value))
            })
            .collect();
        Self { values }
    }

    /// The value of `CONFIG_<name>` (without the prefix), unquoted; None when not set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Whether `CONFIG_<name>=y`.
    pub fn is_yes(&self, name: &str) -> bool {
        self.get(name) == Some("y")
    }

    /// `y`, `m`, a value, or `n` when not set: how `graft kernel info` reports an option.
    pub fn tristate(&self, name: &str) -> String {
        self.get(name).unwrap_or("n").to_string()
    }

    /// The stack unwinder the kernel was built with.
    pub fn unwinder(&self) -> &'static str {
        if self.is_yes("UNWINDER_ORC") {
            "orc"
        } else if self.is_yes("UNWINDER_FRAME_POINTER") {
            "frame-pointer"
        } else if self.is_yes("UNWINDER_GUESS") {
            "guess"
        } else {
            "unknown"
        }
    }
}

/// Blanks options that name files of the distribution's build machine (signing certificates),
/// which a rebuilt tree does not have and does not need to compile objects.
pub fn blank_distro_key_files(text: &str) -> String {
    const BLANKED: &[&str] = &[
        "CONFIG_SYSTEM_TRUSTED_KEYS",
        "CONFIG_SYSTEM_REVOCATION_KEYS",
    ];
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.split_once('=') {
            Some((key, _)) if BLANKED.contains(&key) => {
                out.push_str(key);
                out.push_str("=\"\"");
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "CONFIG_LIVEPATCH=y\n# CONFIG_X86_KERNEL_IBT is not set\nCONFIG_CC_VERSION_TEXT=\"gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0\"\nCONFIG_UNWINDER_ORC=y\nCONFIG_9P_FS=m\nCONFIG_SYSTEM_TRUSTED_KEYS=\"debian/certs/a.pem\"\n";

    #[test]
    fn reads_values() {
        let c = KernelConfig::parse(SAMPLE);
        assert!(c.is_yes("LIVEPATCH"));
        assert_eq!(c.tristate("X86_KERNEL_IBT"), "n");
        assert_eq!(c.tristate("9P_FS"), "m");
        assert_eq!(
            c.get("CC_VERSION_TEXT"),
            Some("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0")
        );
        assert_eq!(c.unwinder(), "orc");
    }

    #[test]
    fn blanks_certificate_paths_only() {
        let out = blank_distro_key_files(SAMPLE);
        assert!(out.contains("CONFIG_SYSTEM_TRUSTED_KEYS=\"\"\n"));
        assert!(out.contains("CONFIG_LIVEPATCH=y\n"));
        assert_eq!(out.lines().count(), SAMPLE.lines().count());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        #[test]
        fn any_config_text_parses(text in "(?s).{0,300}") {
            let c = KernelConfig::parse(&text);
            let _ = c.unwinder();
            let _ = c.tristate("LIVEPATCH");
        }
    }
}
