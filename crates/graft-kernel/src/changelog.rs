//! Debian changelogs (`debian/changelog` format, as `changelog.Debian.gz`): the entries between
//! two versions, and the CVE ids they name.
//!
//! An entry starts with `package (version) distribution; urgency=...` at column 0 and ends
//! with its trailer line ` -- Maintainer <email>  Date`.

use crate::KernelError;

/// One changelog entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// The source package (`linux`).
    pub package: String,
    /// The version it describes.
    pub version: String,
    /// The distribution (`bookworm-security`).
    pub distribution: String,
    /// The urgency (`high`).
    pub urgency: String,
    /// The whole entry as written, header and trailer included.
    pub text: String,
    /// CVE ids the entry names, in order of first mention.
    pub cves: Vec<String>,
}

/// Parses every entry of a changelog, newest first as written.
pub fn parse(text: &str) -> Result<Vec<Entry>, KernelError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut current: Option<Entry> = None;
    for (number, line) in text.lines().enumerate() {
        let starts_entry = line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        if starts_entry {
            if let Some(done) = current.take() {
                entries.push(done);
            }
            current = Some(header(line).ok_or_else(|| KernelError::BadSymbols {
                path: "changelog.Debian".into(),
                line: number + 1,
                reason: format!("not a changelog entry header: {line}"),
            })?);
        }
        if let Some(entry) = current.as_mut() {
            entry.text.push_str(line);
            entry.text.push('\n');
            if line.starts_with(" -- ") {
                entry.text = entry.text.trim_end().to_string() + "\n";
                entry.cves = cves(&entry.text);
                if let Some(done) = current.take() {
                    entries.push(done);
                }
            }
        }
    }
    if let Some(mut unfinished) = current {
        unfinished.cves = cves(&unfinished.text);
        entries.push(unfinished);
    }
    Ok(entries)
}

fn header(line: &str) -> Option<Entry> {
    let (package, rest) = line.split_once(" (")?;
    let (version, rest) = rest.split_once(") ")?;
    let (distribution, rest) = rest.split_once(';')?;
    let urgency = rest
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix("urgency="))
        .unwrap_or_default();
    Some(Entry {
        package: package.trim().to_string(),
        version: version.to_string(),
        distribution: distribution.trim().to_string(),
        urgency: urgency.to_string(),
        text: String::new(),
        cves: Vec::new(),
    })
}

/// The entries newer than `after` and not newer than `up_to`, newest first.
pub fn between(entries: &[Entry], after: &str, up_to: &str) -> Vec<Entry> {
    use graft_deb::relation::compare;
    use std::cmp::Ordering::{Greater, Less};
    entries
        .iter()
        .filter(|e| {
            compare(&e.version, after) == Some(Greater)
                && matches!(
                    compare(&e.version, up_to),
                    Some(Less) | Some(std::cmp::Ordering::Equal)
                )
        })
        .cloned()
        .collect()
}

/// `CVE-YYYY-NNNN...` ids in `text`, each once, in order.
pub fn cves(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("CVE-") {
        let start = at + found;
        let mut end = start + 4;
        let digits = |from: usize| {
            bytes[from..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count()
        };
        let year = digits(end);
        if year == 4 && bytes.get(end + 4) == Some(&b'-') {
            end += 5;
            let number = digits(end);
            if number >= 4 {
                let id = &text[start..end + number];
                if !out.iter().any(|c| c == id) {
                    out.push(id.to_string());
                }
                end += number;
            }
        }
        at = end.max(start + 4);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "linux (6.1.192-3) bookworm-security; urgency=high

  * nfsd: fix the session slot check in nfsd4_sequence (CVE-2026-99362)

 -- Salvatore Bonaccorso <carnil@debian.org>  Sun, 29 Nov 2026 10:00:00 +0100

linux (6.1.192-2) bookworm-security; urgency=high

  * ext4: mballoc: fix a range check (CVE-2026-99001, CVE-2026-99001)
  * Bump ABI to 57

 -- Salvatore Bonaccorso <carnil@debian.org>  Sun, 22 Nov 2026 10:00:00 +0100

linux (6.1.192-1) bookworm-security; urgency=high

  * New upstream stable update:
    https://www.kernel.org/pub/linux/kernel/v6.x/ChangeLog-6.1.191
    - net: fix CVE-2026-1234 in something

 -- Ben Hutchings <benh@debian.org>  Sun, 15 Nov 2026 10:00:00 +0100
";

    #[test]
    fn entries_and_cves() {
        let entries = parse(TEXT).unwrap();
        let versions: Vec<&str> = entries.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(versions, ["6.1.192-3", "6.1.192-2", "6.1.192-1"]);
        assert_eq!(entries[0].distribution, "bookworm-security");
        assert_eq!(entries[0].urgency, "high");
        assert_eq!(entries[0].cves, ["CVE-2026-99362"]);
        assert_eq!(entries[1].cves, ["CVE-2026-99001"]);
        assert!(entries[1].text.starts_with("linux (6.1.192-2)"));
        assert!(entries[1].text.trim_end().ends_with("+0100"));
        assert_eq!(entries[2].cves, ["CVE-2026-1234"]);
    }

    #[test]
    fn entries_between_two_versions() {
        let entries = parse(TEXT).unwrap();
        let picked = between(&entries, "6.1.192-1", "6.1.192-3");
        let versions: Vec<&str> = picked.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(versions, ["6.1.192-3", "6.1.192-2"]);
        assert!(between(&entries, "6.1.192-3", "6.1.192-3").is_empty());
        assert_eq!(between(&entries, "6.1.190-1", "6.1.192-2").len(), 2);
    }

    #[test]
    fn a_garbled_header_is_an_error_naming_the_line() {
        let err = parse("linux 6.1.192-3 bookworm\n").unwrap_err().to_string();
        assert!(err.contains(":1:"), "{err}");
        assert!(cves("CVE-20-1 CVE-2026-12 CVE-").is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// A damaged changelog is an error or entries, never a panic.
        #[test]
        fn damaged_changelogs_never_panic(cut in proptest::prelude::any::<usize>(), noise in "(?s).{0,80}") {
            let at = (0..=cut % TEXT.len()).rev().find(|&i| TEXT.is_char_boundary(i)).unwrap_or(0);
            let text = format!("{}{noise}{}", &TEXT[..at], &TEXT[at..]);
            if let Ok(entries) = parse(&text) {
                let _ = between(&entries, "6.1.192-1", "6.1.192-3");
            }
            let _ = cves(&noise);
        }
    }
}
