//! The kernel log (`/dev/kmsg`) and taint: what graft compares before and after an apply.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;

/// Kernel log lines that mean something went wrong.
pub const BAD_LOG: &[&str] = &[
    "WARNING: CPU",
    "BUG:",
    "kernel BUG",
    "Oops",
    "general protection fault",
    "Call Trace:",
    "unable to handle",
];

/// Words that make a `livepatch:` line an error rather than progress.
const LIVEPATCH_ERRORS: &[&str] = &[
    "fail",
    "error",
    "unable",
    "not found",
    "invalid",
    "unreliable",
    "can't",
    "cannot",
];

/// Whether a log line reports a problem. The livepatch core quotes patch and object names
/// (`enabling patch 'fix_failover'`); those are names, not words of the message.
pub fn is_bad(line: &str) -> bool {
    BAD_LOG.iter().any(|p| line.contains(p))
        || (line.contains("livepatch:") && {
            let lower = without_quoted(line).to_ascii_lowercase();
            LIVEPATCH_ERRORS.iter().any(|w| lower.contains(w))
        })
}

/// `line` with every `'...'` part removed.
fn without_quoted(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut inside = false;
    for c in line.chars() {
        if c == '\'' {
            inside = !inside;
        } else if !inside {
            out.push(c);
        }
    }
    out
}

/// One kernel log record.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    /// Sequence number.
    pub seq: u64,
    /// Syslog level (0 emergency .. 7 debug).
    pub level: u8,
    /// The message.
    pub text: String,
}

fn parse_record(raw: &[u8]) -> Option<Record> {
    let text = String::from_utf8_lossy(raw);
    let (prefix, message) = text.split_once(';')?;
    let mut fields = prefix.split(',');
    let level = fields.next()?.parse::<u32>().ok()? & 7;
    let seq = fields.next()?.parse().ok()?;
    // Continuation lines (dictionary entries) start with a space.
    let message = message.lines().next().unwrap_or("").to_string();
    Some(Record {
        seq,
        level: level as u8,
        text: message,
    })
}

/// The records still in the kernel's buffer with a sequence number above `after`.
pub fn records_after(after: Option<u64>) -> io::Result<Vec<Record>> {
    let mut log = Follow::from_start()?;
    Ok(log
        .new_records()?
        .into_iter()
        .filter(|r| after.is_none_or(|a| r.seq > a))
        .collect())
}

/// The kernel log read as it grows: each read of `/dev/kmsg` returns one record.
#[derive(Debug)]
pub struct Follow {
    file: std::fs::File,
}

impl Follow {
    fn open() -> io::Result<std::fs::File> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
    }

    /// From the oldest record still in the buffer.
    pub fn from_start() -> io::Result<Self> {
        Ok(Self {
            file: Self::open()?,
        })
    }

    /// From the current end of the log (one seek, however long the log is): only records
    /// logged later.
    pub fn from_now() -> io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = Self::open()?;
        file.seek(SeekFrom::End(0))?;
        Ok(Self { file })
    }

    /// Records logged since the last call (or since the start point).
    pub fn new_records(&mut self) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => records.extend(buf.get(..n).and_then(parse_record)),
                // Records were overwritten while reading: go on from the oldest still there.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(records)
    }
}

/// The sequence number of the newest record, the mark to compare against later.
pub fn last_seq() -> io::Result<Option<u64>> {
    Ok(records_after(None)?.last().map(|r| r.seq))
}

/// `/proc/sys/kernel/tainted`.
pub fn taint() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/sys/kernel/tainted")?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Taint bits with their letters and meanings (Documentation/admin-guide/tainted-kernels).
const TAINTS: &[(u32, char, &str)] = &[
    (0, 'P', "proprietary module loaded"),
    (1, 'F', "module force loaded"),
    (2, 'S', "kernel running on an out of specification system"),
    (3, 'R', "module force unloaded"),
    (4, 'M', "machine check exception"),
    (5, 'B', "bad page referenced"),
    (6, 'U', "taint requested by userspace"),
    (7, 'D', "kernel died recently (OOPS or BUG)"),
    (8, 'A', "ACPI table overridden"),
    (9, 'W', "kernel issued a warning"),
    (10, 'C', "staging driver loaded"),
    (11, 'I', "firmware bug workaround"),
    (12, 'O', "out-of-tree module loaded"),
    (13, 'E', "unsigned module loaded"),
    (14, 'L', "soft lockup occurred"),
    (15, 'K', "kernel live patched"),
    (16, 'X', "auxiliary taint"),
    (17, 'T', "built with struct randomization"),
];

/// Taints that loading a livepatch module is expected to add.
pub const EXPECTED_BY_LIVEPATCH: u64 = (1 << 12) | (1 << 13) | (1 << 15);

/// Names the bits set in `mask`: `W (kernel issued a warning)`.
pub fn describe_taint(mask: u64) -> Vec<String> {
    TAINTS
        .iter()
        .filter(|(bit, _, _)| mask & (1 << bit) != 0)
        .map(|(_, letter, meaning)| format!("{letter} ({meaning})"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a patch named after kpatch's warn-detect-FAIL made "enabling patch
    /// 'e0010_warn_detect_fail'" look like a livepatch error.
    #[test]
    fn a_quoted_patch_name_is_not_an_error_word() {
        assert!(!is_bad(
            "[    3.5] livepatch: enabling patch 'e0010_warn_detect_fail'"
        ));
        assert!(!is_bad(
            "livepatch: 'fix_cannot': starting patching transition"
        ));
        assert!(is_bad("livepatch: failed to enable patch 'fix'"));
        assert!(is_bad("livepatch: 'fix': unreliable stack"));
    }

    #[test]
    fn records_parse_level_and_sequence() {
        let r = parse_record(b"4,1234,5678,-;livepatch: failed to patch\n SUBSYSTEM=x\n");
        assert_eq!(
            r,
            Some(Record {
                seq: 1234,
                level: 4,
                text: "livepatch: failed to patch".into()
            })
        );
    }

    #[test]
    fn progress_lines_are_not_errors() {
        assert!(!is_bad("livepatch: 'fix': starting patching transition"));
        assert!(!is_bad(
            "livepatch: 'fix': reversing transition from patching to unpatching"
        ));
        assert!(is_bad("livepatch: symbol 'foo' not found in symbol table"));
        assert!(is_bad("WARNING: CPU: 0 PID: 1 at kernel/foo.c:1"));
    }

    #[test]
    fn taint_letters() {
        assert_eq!(
            describe_taint(45056),
            vec![
                "O (out-of-tree module loaded)",
                "E (unsigned module loaded)",
                "K (kernel live patched)"
            ]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Malformed /dev/kmsg records and log lines never panic.
        #[test]
        fn malformed_records_never_panic(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200), line in "(?s).{0,200}") {
            let _ = parse_record(&raw);
            let _ = parse_record(format!("6,{line};{line}").as_bytes());
            let _ = is_bad(&line);
            let _ = describe_taint(u64::MAX);
        }
    }
}
