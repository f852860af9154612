//! Package relationships as Debian writes them (`Depends: a (>= 1.0), b | c`), and the version
//! order they are judged by.
//!
//! graft follows a package's real `Depends` instead of assuming that related packages share a
//! version: Debian's own headers accept a newer kbuild (`linux-kbuild-6.1 (>= 6.1.192-2)`), and
//! the archive keeps only the newest kbuild of each suite. Versions are compared by dpkg's rules
//! (epoch, upstream, revision; `~` before everything), through the `debversion` crate.

use std::cmp::Ordering;
use std::fmt;

use debversion::Version;

use crate::DebError;

/// A version operator of a relationship.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Op {
    /// `<<`
    Less,
    /// `<=`
    LessOrEqual,
    /// `=`
    Equal,
    /// `>=`
    GreaterOrEqual,
    /// `>>`
    Greater,
}

impl Op {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "<<" => Op::Less,
            // `<` and `>` are obsolete spellings of `<=` and `>=` (Debian Policy 7.1).
            "<=" | "<" => Op::LessOrEqual,
            "=" => Op::Equal,
            ">=" | ">" => Op::GreaterOrEqual,
            ">>" => Op::Greater,
            _ => return None,
        })
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Less => "<<",
            Op::LessOrEqual => "<=",
            Op::Equal => "=",
            Op::GreaterOrEqual => ">=",
            Op::Greater => ">>",
        }
    }

    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Op::Less => ordering == Ordering::Less,
            Op::LessOrEqual => ordering != Ordering::Greater,
            Op::Equal => ordering == Ordering::Equal,
            Op::GreaterOrEqual => ordering != Ordering::Less,
            Op::Greater => ordering == Ordering::Greater,
        }
    }
}

/// One package with an optional version constraint: `linux-kbuild-6.1 (>= 6.1.192-2)`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Relation {
    /// The package name (without an architecture qualifier).
    pub name: String,
    /// The version constraint, if any.
    pub constraint: Option<(Op, String)>,
}

impl Relation {
    /// Whether `version` satisfies the constraint (always, without one). A version that does
    /// not parse satisfies nothing.
    pub fn allows(&self, version: &str) -> bool {
        match &self.constraint {
            None => true,
            Some((op, wanted)) => match compare(version, wanted) {
                Some(ordering) => op.holds(ordering),
                None => false,
            },
        }
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.constraint {
            None => write!(f, "{}", self.name),
            Some((op, version)) => write!(f, "{} ({} {version})", self.name, op.symbol()),
        }
    }
}

/// One entry of a `Depends` list: any of its alternatives satisfies it.
pub type Dependency = Vec<Relation>;

/// Parses a `Depends`-style field: comma-separated entries, `|`-separated alternatives.
/// Architecture qualifiers (`:any`) and restrictions (`[amd64]`, `<!nocheck>`) are dropped.
pub fn parse_depends(package: &str, text: &str) -> Result<Vec<Dependency>, DebError> {
    let bad = |reason: String| DebError::BadIndex {
        package: package.to_string(),
        reason,
    };
    let mut dependencies = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let mut alternatives = Vec::new();
        for alternative in entry.split('|').map(str::trim) {
            alternatives.push(
                parse_relation(alternative)
                    .ok_or_else(|| bad(format!("cannot read the relationship `{alternative}`")))?,
            );
        }
        dependencies.push(alternatives);
    }
    Ok(dependencies)
}

fn parse_relation(text: &str) -> Option<Relation> {
    let (name_part, rest) = match text.find(['(', '[', '<']) {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let name = name_part.trim();
    let name = name.split_once(':').map_or(name, |(n, _)| n);
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return None;
    }
    let rest = rest.trim_start();
    let constraint = match rest.strip_prefix('(') {
        Some(inner) => {
            let inner = inner.split_once(')')?.0.trim();
            let split = inner
                .find(|c: char| !"<=>".contains(c))
                .unwrap_or(inner.len());
            let (op, version) = inner.split_at(split);
            let version = version.trim();
            if version.is_empty() || version.parse::<Version>().is_err() {
                return None;
            }
            Some((Op::parse(op.trim())?, version.to_string()))
        }
        None => None,
    };
    Some(Relation {
        name: name.to_string(),
        constraint,
    })
}

/// Compares two Debian versions by dpkg's rules; None when either does not parse.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let a: Version = a.parse().ok()?;
    let b: Version = b.parse().ok()?;
    Some(a.cmp(&b))
}

/// The upstream part of a Debian version: `6.1.192-3` gives `6.1.192`, `1:2.3-4` gives `2.3`.
pub fn upstream(version: &str) -> &str {
    let without_epoch = version.split_once(':').map_or(version, |(_, rest)| rest);
    without_epoch
        .rsplit_once('-')
        .map_or(without_epoch, |(upstream, _)| upstream)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADERS_DEPENDS: &str = "linux-headers-6.1.0-56-common (= 6.1.192-2), linux-kbuild-6.1 (>= 6.1.192-2), linux-compiler-gcc-12-x86";

    #[test]
    fn debian_headers_depends_parse() {
        let deps = parse_depends("linux-headers-6.1.0-56-amd64", HEADERS_DEPENDS).unwrap();
        assert_eq!(deps.len(), 3);
        assert_eq!(
            deps[0][0].to_string(),
            "linux-headers-6.1.0-56-common (= 6.1.192-2)"
        );
        assert_eq!(deps[1][0].name, "linux-kbuild-6.1");
        assert_eq!(
            deps[1][0].constraint,
            Some((Op::GreaterOrEqual, "6.1.192-2".to_string()))
        );
        assert_eq!(deps[2][0].constraint, None);
    }

    #[test]
    fn a_newer_debian_revision_satisfies_greater_or_equal() {
        let kbuild = &parse_depends("h", HEADERS_DEPENDS).unwrap()[1][0];
        assert!(kbuild.allows("6.1.192-2"));
        assert!(kbuild.allows("6.1.192-3"));
        assert!(kbuild.allows("6.1.193-1"));
        assert!(!kbuild.allows("6.1.192-1"));
        assert!(!kbuild.allows("6.1.176-1"));
        let common = &parse_depends("h", HEADERS_DEPENDS).unwrap()[0][0];
        assert!(common.allows("6.1.192-2"));
        assert!(!common.allows("6.1.192-3"));
    }

    #[test]
    fn alternatives_qualifiers_and_restrictions() {
        let deps = parse_depends(
            "p",
            "initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, libc6:any (>> 2.36~), foo [amd64] <!nocheck>",
        )
        .unwrap();
        assert_eq!(deps[0].len(), 2);
        assert_eq!(deps[0][1].name, "linux-initramfs-tool");
        assert_eq!(deps[1][0].name, "libc6");
        assert!(deps[1][0].allows("2.36-9+deb12u14"));
        assert!(!deps[1][0].allows("2.35-1"));
        assert_eq!(deps[2][0].name, "foo");
    }

    #[test]
    fn malformed_relationships_name_the_package() {
        for text in [
            "linux-kbuild-6.1 (>= )",
            "linux-kbuild-6.1 (~~ 1.0)",
            "(>= 1)",
            "a b",
        ] {
            let err = parse_depends("linux-headers-x", text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("linux-headers-x"), "{text}: {err}");
        }
    }

    #[test]
    fn dpkg_order() {
        assert_eq!(compare("6.1.192-3", "6.1.192-2"), Some(Ordering::Greater));
        assert_eq!(compare("6.1.192~rc1-1", "6.1.192-1"), Some(Ordering::Less));
        assert_eq!(compare("1:1.0-1", "2.0-1"), Some(Ordering::Greater));
        assert_eq!(
            compare("12.2.0-14+deb12u2", "12.2.0-14+deb12u1"),
            Some(Ordering::Greater)
        );
        assert_eq!(upstream("6.1.192-3"), "6.1.192");
        assert_eq!(upstream("1:2.3-4"), "2.3");
        assert_eq!(upstream("2.3"), "2.3");
    }

    /// The version order is dpkg's own: checked against `dpkg --compare-versions` on pairs a
    /// kernel archive produces.
    #[test]
    fn order_agrees_with_dpkg() {
        let versions = [
            "6.1.170-3",
            "6.1.192-1",
            "6.1.192-2",
            "6.1.192-3",
            "6.1.192-3~bpo11+1",
            "6.1.192+1",
            "6.1.192",
            "1:6.1.0-1",
            "6.1.90-1",
            "6.12.118-1",
        ];
        for a in versions {
            for b in versions {
                let ours = compare(a, b).unwrap();
                let lt = std::process::Command::new("dpkg")
                    .args(["--compare-versions", a, "lt", b])
                    .status()
                    .unwrap();
                assert_eq!(lt.success(), ours == Ordering::Less, "{a} < {b}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, failure_persistence: None, ..Default::default() })]

        /// Any Depends text is relationships or an error naming the package, never a panic.
        #[test]
        fn any_depends_text_is_handled(text in "[a-z0-9.+~:|,()<>= -]{0,80}", version in "[0-9a-z.+~:-]{0,20}") {
            if let Ok(deps) = parse_depends("p", &text) {
                for r in deps.iter().flatten() {
                    let _ = r.allows(&version);
                }
            }
            let _ = upstream(&version);
            let _ = compare(&version, "6.1.192-3");
        }
    }
}
