//! Target names: `<provider>:<release>`, e.g. `debian:6.1.0-56-amd64`.

use std::fmt;
use std::str::FromStr;

use crate::KernelError;

/// Where a target's packages come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// Debian's archive, through apt.
    Debian,
}

impl Provider {
    const ALL: &'static [(&'static str, Provider)] = &[("debian", Provider::Debian)];

    /// The provider's name as written in target names.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Debian => "debian",
        }
    }
}

/// A parsed, validated target name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The package source.
    pub provider: Provider,
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// Upstream major.minor, e.g. `6.1`.
    pub series: String,
    /// Debian's ABI name, e.g. `6.1.0-56`.
    pub abi: String,
    /// The flavour, e.g. `amd64` or `cloud-amd64`.
    pub flavour: String,
}

impl Target {
    /// The cache key: the name with the provider separator made file-name safe.
    pub fn key(&self) -> String {
        format!("{}-{}", self.provider.name(), self.release)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.provider.name(), self.release)
    }
}

impl FromStr for Target {
    type Err = KernelError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| KernelError::BadTargetName {
            name: name.to_string(),
            reason,
        };
        let (provider, release) = name.split_once(':').ok_or_else(|| {
            bad("expected <provider>:<release>, e.g. `debian:6.1.0-56-amd64`".into())
        })?;
        let provider = Provider::ALL
            .iter()
            .find(|(n, _)| *n == provider)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                let known: Vec<_> = Provider::ALL.iter().map(|(n, _)| *n).collect();
                bad(format!(
                    "unknown provider `{provider}` (known: {})",
                    known.join(", ")
                ))
            })?;
        // Debian releases read <major>.<minor>.<patch>-<abi>-<flavour>, e.g. 6.1.0-56-cloud-amd64.
        let mut parts = release.splitn(3, '-');
        let (version, abi_num, flavour) = match (parts.next(), parts.next(), parts.next()) {
            (Some(v), Some(a), Some(f)) if !f.is_empty() => (v, a, f),
            _ => {
                return Err(bad(format!(
                    "`{release}` is not a Debian kernel release like 6.1.0-56-amd64"
                )))
            }
        };
        let numbers: Vec<&str> = version.split('.').collect();
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if numbers.len() != 3 || !numbers.iter().all(|n| numeric(n)) || !numeric(abi_num) {
            return Err(bad(format!(
                "`{release}` is not a Debian kernel release like 6.1.0-56-amd64"
            )));
        }
        if !flavour
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad(format!(
                "flavour `{flavour}` has unexpected characters"
            )));
        }
        Ok(Target {
            provider,
            release: release.to_string(),
            series: format!("{}.{}", numbers[0], numbers[1]),
            abi: format!("{version}-{abi_num}"),
            flavour: flavour.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_target_parses() {
        let t: Target = crate::DEFAULT_TARGET.parse().unwrap();
        assert_eq!(t.provider, Provider::Debian);
        assert_eq!(t.release, crate::known::default_target::RELEASE);
        assert_eq!(t.to_string(), crate::DEFAULT_TARGET);
    }

    #[test]
    fn flavour_with_dash() {
        let t: Target = "debian:6.1.0-56-cloud-amd64".parse().unwrap();
        assert_eq!(
            (t.series.as_str(), t.abi.as_str(), t.flavour.as_str()),
            ("6.1", "6.1.0-56", "cloud-amd64")
        );
    }

    #[test]
    fn bad_names_say_why() {
        let err = "fedora:6.1.0-56-amd64"
            .parse::<Target>()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown provider `fedora` (known: debian)"),
            "{err}"
        );
        let err = "6.1.0-56-amd64".parse::<Target>().unwrap_err().to_string();
        assert!(err.contains("expected <provider>:<release>"), "{err}");
        let err = "debian:6.1-amd64"
            .parse::<Target>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not a Debian kernel release"), "{err}");
    }
}
