//! Whether this machine has the compiler the target kernel was built with.
//!
//! Binary differencing and run-pre matching only hold when objects are compiled by the very
//! compiler that built the kernel. Kconfig records its `--version` first line as
//! `CONFIG_CC_VERSION_TEXT`, whose first word is the command the build used (`gcc-12`).

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
    /// Whether the two are identical.
    pub matches: bool,
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
        let matches = local.as_deref() == Some(version_text);
        Self {
            command,
            expected: version_text.to_string(),
            local,
            matches,
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

    #[test]
    fn missing_compiler_does_not_match() {
        let check = CompilerCheck::run("graft-no-such-cc (X) 1.0");
        assert_eq!(check.command, "graft-no-such-cc");
        assert_eq!(check.local, None);
        assert!(!check.matches);
    }
}
