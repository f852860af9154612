//! Asking apt about packages and downloading them.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use graft_progress::{Progress, Unit};
use sha2::{Digest, Sha256};

use crate::relation::{parse_depends, Dependency};
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
    /// What it depends on (`Depends`, parsed).
    pub depends: Vec<Dependency>,
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
    let text = apt_cache(&["show", "--no-all-versions", &spec], package)?
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| DebError::NotInArchive {
            package: package.to_string(),
            version: version.map(str::to_string),
        })?;
    let first = stanza_blocks(&text).next().unwrap_or_default();
    parse_stanza(package, first)
}

/// A snapshot of what apt's index says about some packages, read in one `apt-cache` call.
#[derive(Clone, Debug, Default)]
pub struct Index {
    packages: BTreeMap<String, Vec<PackageInfo>>,
}

impl Index {
    /// Every version apt lists of each of `names` (a name apt does not know has none).
    pub fn all_versions(names: &[String]) -> Result<Self, DebError> {
        Self::load("--all-versions", names)
    }

    /// The candidate version (the one `apt-get install` would pick) of each of `names`.
    pub fn candidates(names: &[String]) -> Result<Self, DebError> {
        Self::load("--no-all-versions", names)
    }

    fn load(which: &str, names: &[String]) -> Result<Self, DebError> {
        let mut index = Self::default();
        if names.is_empty() {
            return Ok(index);
        }
        let mut args = vec!["show", which];
        args.extend(names.iter().map(String::as_str));
        let text = apt_cache(&args, &names.join(" "))?.unwrap_or_default();
        for stanza in stanza_blocks(&text) {
            let name = stanza
                .lines()
                .find_map(|l| l.strip_prefix("Package:"))
                .map(str::trim)
                .unwrap_or_default()
                .to_string();
            let info = parse_stanza(&name, stanza)?;
            index
                .packages
                .entry(info.name.clone())
                .or_default()
                .push(info);
        }
        index.normalize();
        Ok(index)
    }

    /// Newest first; the same version is listed once per suite that carries it, kept once.
    fn normalize(&mut self) {
        for list in self.packages.values_mut() {
            list.sort_by(|a, b| {
                crate::relation::compare(&b.version, &a.version)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            list.dedup_by(|a, b| a.version == b.version);
        }
    }

    /// Builds an index from packages already known (for tests and composed indexes).
    pub fn from_packages(packages: impl IntoIterator<Item = PackageInfo>) -> Self {
        let mut index = Self::default();
        for p in packages {
            index.packages.entry(p.name.clone()).or_default().push(p);
        }
        index.normalize();
        index
    }

    /// The versions of `name`, newest first.
    pub fn versions(&self, name: &str) -> &[PackageInfo] {
        self.packages.get(name).map_or(&[], Vec::as_slice)
    }

    /// `name` at exactly `version`.
    pub fn get(&self, name: &str, version: &str) -> Option<&PackageInfo> {
        self.versions(name).iter().find(|p| p.version == version)
    }

    /// The newest version of `name`.
    pub fn newest(&self, name: &str) -> Option<&PackageInfo> {
        self.versions(name).first()
    }

    /// The package names in the index.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.packages.keys().map(String::as_str)
    }
}

/// The names of the packages apt knows that start with `prefix`, sorted.
pub fn package_names(prefix: &str) -> Result<Vec<String>, DebError> {
    let text = apt_cache(&["pkgnames", prefix], prefix)?.unwrap_or_default();
    let mut names: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    Ok(names)
}

/// Runs `apt-cache` with `args`: its output, or None when it exits with an error (apt-cache
/// does so for a package or version its index lacks).
fn apt_cache(args: &[&str], about: &str) -> Result<Option<String>, DebError> {
    let output = Command::new("apt-cache")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => DebError::AptMissing { tool: "apt-cache" },
            _ => DebError::io("running apt-cache for", Path::new(about), e),
        })?;
    if !output.status.success() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&output.stdout).into_owned()))
}

fn stanza_blocks(text: &str) -> impl Iterator<Item = &str> {
    text.split("\n\n").filter(|s| !s.trim().is_empty())
}

/// Parses one stanza of `apt-cache show` output.
fn parse_stanza(package: &str, stanza: &str) -> Result<PackageInfo, DebError> {
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
    let depends = parse_depends(name, field("Depends").unwrap_or_default())?;
    Ok(PackageInfo {
        name: name.to_string(),
        version: version.to_string(),
        arch: arch.to_string(),
        source,
        source_version,
        size,
        sha256: sha256.to_ascii_lowercase(),
        depends,
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
        let info = parse_stanza("linux-source-6.1", stanza_blocks(STANZA).next().unwrap()).unwrap();
        assert_eq!(info.name, "linux-source-6.1");
        assert_eq!(info.version, "6.1.192-2");
        assert_eq!(info.source, "linux");
        assert_eq!(info.source_version, "6.1.192-2");
        assert_eq!(info.size, 139_331_676);
        assert!(info.sha256.ends_with("abcdef"));
        assert_eq!(info.deb_file_name(), "linux-source-6.1_6.1.192-2_all.deb");
    }

    #[test]
    fn an_index_sorts_newest_first_and_drops_repeats() {
        let info = |v: &str| {
            let text = STANZA.replace("6.1.192-2", v);
            let first = stanza_blocks(&text).next().unwrap();
            parse_stanza("linux-source-6.1", first).unwrap()
        };
        let index = Index::from_packages([info("6.1.190-1"), info("6.1.192-3"), info("6.1.192-3")]);
        let versions: Vec<&str> = index
            .versions("linux-source-6.1")
            .iter()
            .map(|p| p.version.as_str())
            .collect();
        assert_eq!(versions, ["6.1.192-3", "6.1.190-1"]);
        assert!(index.get("linux-source-6.1", "6.1.190-1").is_some());
        assert!(index.versions("linux-source-6.2").is_empty());
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        #[test]
        fn any_stanza_is_a_package_or_an_error(cut in proptest::prelude::any::<usize>(), noise in "(?s).{0,60}") {
            let at = (0..=cut % STANZA.len()).rev().find(|&i| STANZA.is_char_boundary(i)).unwrap_or(0);
            let text = format!("{}{noise}{}", &STANZA[..at], &STANZA[at..]);
            for stanza in stanza_blocks(&text) {
                let _ = parse_stanza("p", stanza);
            }
        }
    }
}
