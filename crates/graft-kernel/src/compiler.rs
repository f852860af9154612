//! Whether this machine has the compiler the target kernel was built with.
//!
//! Binary differencing and run-pre matching only hold when objects are compiled by the
//! compiler that built the kernel. Kconfig records its `--version` first line as
//! `CONFIG_CC_VERSION_TEXT`, e.g. `gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`: the command the
//! build used, the distribution's package revision in parentheses, and the compiler version.
//!
//! The gate is the command and the compiler *version* (`12.2.0`). Another Debian revision of
//! that compiler (`12.2.0-14+deb12u2`) passes with a note: a stable update of gcc carries
//! targeted fixes, not a new code generator, and run-pre matching proves every replaced
//! function byte for byte against the running kernel anyway, so a revision that did change code
//! is refused there, naming the function.

use std::process::{Command, Stdio};

/// The outcome of comparing the target's compiler with the local one.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CompilerCheck {
    /// The command the kernel was built with (`gcc-12`).
    pub command: String,
    /// `CONFIG_CC_VERSION_TEXT` of the target.
    pub expected: String,
    /// The first line of `<command> --version` here, if it runs.
    pub local: Option<String>,
    /// Whether the local compiler passes the gate: same command, same compiler version.
    pub matches: bool,
    /// Whether the two version lines are identical.
    pub exact: bool,
    /// Why a passing compiler is not identical (another distribution revision), if it is not.
    pub note: Option<String>,
}

impl CompilerCheck {
    /// Compares `version_text` (the config's) with the local compiler it names.
    pub fn run(version_text: &str) -> Self {
        let command = version_text
            .split_whitespace()
            .next()
            .unwrap_or("gcc")
            .to_string();
        let local = local_compiler_version(&command);
        Self::judge(version_text, local)
    }

    /// The judgement of [`run`](Self::run), given the local version line.
    pub fn judge(version_text: &str, local: Option<String>) -> Self {
        let expected = VersionLine::parse(version_text);
        let found = local.as_deref().map(VersionLine::parse);
        let exact = local.as_deref() == Some(version_text);
        let matches = exact
            || found.as_ref().is_some_and(|f| {
                !expected.version.is_empty()
                    && f.command == expected.command
                    && f.version == expected.version
            });
        let note = match (&found, matches && !exact) {
            (Some(f), true) => Some(format!(
                "the kernel was built by {} {} ({}), this machine has {} ({}): the same compiler version, another distribution revision; run-pre matching proves each replaced function against the running code",
                expected.command, expected.version, expected.build, f.command, f.build
            )),
            _ => None,
        };
        Self {
            command: expected.command.to_string(),
            expected: version_text.to_string(),
            local,
            matches,
            exact,
            note,
        }
    }
}

/// `gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0`, in parts.
struct VersionLine<'a> {
    command: &'a str,
    build: &'a str,
    version: &'a str,
}

impl<'a> VersionLine<'a> {
    fn parse(text: &'a str) -> Self {
        let text = text.trim();
        let command = text.split_whitespace().next().unwrap_or_default();
        let build = text
            .split_once('(')
            .and_then(|(_, rest)| rest.rsplit_once(')'))
            .map_or("", |(inside, _)| inside.trim());
        // The version is the last word that starts with a digit (clang prints its name after).
        let version = text
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .unwrap_or_default();
        Self {
            command,
            build,
            version,
        }
    }
}

/// The first line of `<command> --version`, as Kbuild reads it (`LC_ALL=C`, `#` removed).
pub fn local_compiler_version(command: &str) -> Option<String> {
    let output = Command::new(command)
        .arg("--version")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .next()
        .map(|l| l.replace('#', "").trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KERNEL: &str = "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0";

    #[test]
    fn missing_compiler_does_not_match() {
        let check = CompilerCheck::run("graft-no-such-cc (X) 1.0");
        assert_eq!(check.command, "graft-no-such-cc");
        assert_eq!(check.local, None);
        assert!(!check.matches);
    }

    #[test]
    fn the_identical_compiler_matches_without_a_note() {
        let check = CompilerCheck::judge(KERNEL, Some(KERNEL.into()));
        assert!(check.matches && check.exact);
        assert_eq!(check.note, None);
    }

    #[test]
    fn another_debian_revision_of_the_same_version_passes_with_a_note() {
        let check = CompilerCheck::judge(
            KERNEL,
            Some("gcc-12 (Debian 12.2.0-14+deb12u2) 12.2.0".into()),
        );
        assert!(check.matches);
        assert!(!check.exact);
        let note = check.note.unwrap();
        assert!(note.contains("12.2.0-14+deb12u1"), "{note}");
        assert!(note.contains("12.2.0-14+deb12u2"), "{note}");
    }

    #[test]
    fn another_compiler_version_is_refused() {
        for local in [
            "gcc-12 (Debian 12.3.0-1) 12.3.0",
            "gcc-13 (Debian 12.2.0-14+deb12u1) 12.2.0",
            "garbage",
        ] {
            let check = CompilerCheck::judge(KERNEL, Some(local.into()));
            assert!(!check.matches, "{local}");
            assert_eq!(check.note, None);
        }
    }
}
