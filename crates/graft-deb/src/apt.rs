//! Asking apt about packages and downloading them.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use graft_progress::{Progress, Unit};
use sha2::{Digest, Sha256};

use crate::DebError;

/// What apt's index says about one version of a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageInfo {
    /// Binary package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// Architecture (`amd64`, `all`).
    pub arch: String,
    /// Source package name (the binary name when the index omits it).
    pub source: String,
    /// Source version (from `Source: name (version)`, else the binary version).
    pub source_version: String,
    /// Size of the .deb in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the .deb.
    pub sha256: String,
}

impl PackageInfo {
    /// The file name `apt-get download` gives the package.
    pub fn deb_file_name(&self) -> String {
        // apt percent-encodes the epoch colon in file names.
        let version = self.version.replace(':', "%3a");
        let arch = self.arch.as_str();
        format!("{}_{}_{}.deb", self.name, version, arch)
    }
}

/// Looks a package up in apt's index: the candidate version, or exactly `version`.
pub fn query(package: &str, version: Option<&str>) -> Result<PackageInfo, DebError> {
    let spec = match version {
        Some(v) => format!("{package}={v}"),
        None => package.to_string(),
    };
    let output = Command::new("apt-cache")
        .args(["show", "--no-all-versions", &spec])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DebError::AptMissing { tool: "apt-cache" },
            _ => DebError::io("running apt-cache for", Path::new(package), e),
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || text.trim().is_empty() {
        return Err(DebError::NotInArchive {
            package: package.to_string(),
            version: version.map(str::to_string),
        });
    }
    parse_stanza(package, &text)
}

/// Parses the first stanza of `apt-cache show` output.
fn parse_stanza(package: &str, text: &str) -> Result<PackageInfo, DebError> {
    let stanza = text.split("\n\n").next().unwrap_or_default();
    let field = |name: &str| -> Option<&str> {
        stanza.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key == name).then(|| value.trim())
        })
    };
    let bad = |reason: &str| DebError::BadIndex {
        package: package.to_string(),
        reason: reason.to_string(),
    };
    let name = field("Package").ok_or_else(|| bad("no Package field"))?;
    let version = field("Version").ok_or_else(|| bad("no Version field"))?;
    let arch = field("Architecture").ok_or_else(|| bad("no Architecture field"))?;
    let size = field("Size")
        .ok_or_else(|| bad("no Size field"))?
        .parse::<u64>()
        .map_err(|_| bad("Size is not a number"))?;
    let sha256 = field("SHA256").ok_or_else(|| bad("no SHA256 field"))?;
    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("SHA256 is not a SHA-256 digest"));
    }
    let (source, source_version) = match field("Source") {
        Some(s) => match s.split_once(' ') {
            Some((src, ver)) => (
                src.to_string(),
                ver.trim_matches(|c| c == '(' || c == ')').to_string(),
            ),
            None => (s.to_string(), version.to_string()),
        },
        None => (name.to_string(), version.to_string()),
    };
    Ok(PackageInfo {
        name: name.to_string(),
        version: version.to_string(),
        arch: arch.to_string(),
        source,
        source_version,
        size,
        sha256: sha256.to_ascii_lowercase(),
    })
}

/// Downloads `info` into `dir` (created if needed), verifies it and returns its path.
///
/// An existing file with the right digest is reused. The download happens in a scratch
/// directory beside the destination, so an interrupted one never looks complete.
pub fn download(
    info: &PackageInfo,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, DebError> {
    let dest = dir.join(info.deb_file_name());
    if dest.is_file() && sha256_file(&dest)? == info.sha256 {
        return Ok(dest);
    }
    fs::create_dir_all(dir).map_err(|e| DebError::io("creating", dir, e))?;
    let scratch = dir.join(format!(".download-{}-{}", info.name, std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    fs::create_dir_all(&scratch).map_err(|e| DebError::io("creating", &scratch, e))?;
    let result = download_into(info, &scratch, progress).and_then(|file| {
        let actual = sha256_file(&file)?;
        if actual != info.sha256 {
            return Err(DebError::Corrupt {
                path: dest.clone(),
                expected: info.sha256.clone(),
                actual,
            });
        }
        fs::rename(&file, &dest).map_err(|e| DebError::io("moving", &file, e))
    });
    let _ = fs::remove_dir_all(&scratch);
    result.map(|()| dest)
}

fn download_into(
    info: &PackageInfo,
    scratch: &Path,
    progress: &dyn Progress,
) -> Result<PathBuf, DebError> {
    let spec = format!("{}={}", info.name, info.version);
    let mut task = progress.start(
        &format!("download {}", info.name),
        Some(info.size),
        Unit::Bytes,
    );
    let mut child = Command::new("apt-get")
        // apt drops privileges to `_apt` for downloads, which cannot write into a root-owned
        // cache directory; downloading as the caller is what `apt-get download` falls back to
        // anyway, minus the warning.
        .args(["-q", "-o", "APT::Sandbox::User=root", "download", &spec])
        .current_dir(scratch)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DebError::AptMissing { tool: "apt-get" },
            _ => DebError::io("running apt-get in", scratch, e),
        })?;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {
                task.set(dir_bytes(scratch));
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(DebError::io("waiting for apt-get in", scratch, e)),
        }
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    let file = scratch.join(info.deb_file_name());
    if !status.success() || !file.is_file() {
        let detail = stderr
            .lines()
            .rev()
            .find(|l| l.starts_with("E:"))
            .or_else(|| stderr.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no error message")
            .to_string();
        return Err(DebError::DownloadFailed {
            package: info.name.clone(),
            version: info.version.clone(),
            detail,
        });
    }
    task.set(info.size);
    task.finish(&format!("{} ({} MiB)", info.name, info.size >> 20));
    Ok(file)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The lower-case hex SHA-256 of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<String, DebError> {
    let mut file = fs::File::open(path).map_err(|e| DebError::io("opening", path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| DebError::io("reading", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANZA: &str = "Package: linux-source-6.1\nSource: linux\nVersion: 6.1.192-2\nArchitecture: all\nSize: 139331676\nSHA256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF\nDescription: x\n\nPackage: other\n";

    #[test]
    fn parses_first_stanza() {
        let info = parse_stanza("linux-source-6.1", STANZA).unwrap();
        assert_eq!(info.name, "linux-source-6.1");
        assert_eq!(info.version, "6.1.192-2");
        assert_eq!(info.source, "linux");
        assert_eq!(info.source_version, "6.1.192-2");
        assert_eq!(info.size, 139_331_676);
        assert!(info.sha256.ends_with("abcdef"));
        assert_eq!(info.deb_file_name(), "linux-source-6.1_6.1.192-2_all.deb");
    }

    #[test]
    fn source_with_version_is_split() {
        let text = STANZA.replace("Source: linux", "Source: linux-signed (6.1.192+2)");
        let info = parse_stanza("p", &text).unwrap();
        assert_eq!(info.source, "linux-signed");
        assert_eq!(info.source_version, "6.1.192+2");
    }

    #[test]
    fn missing_digest_is_an_error_naming_the_package() {
        let text = STANZA.replace("SHA256", "MD5sum");
        let err = parse_stanza("linux-source-6.1", &text).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read apt's description of linux-source-6.1: no SHA256 field"
        );
    }
}
