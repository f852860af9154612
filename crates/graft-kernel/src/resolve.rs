//! Which Debian packages make up a target, resolved the way Debian itself relates them.
//!
//! The image's candidate version fixes the kernel. Everything else follows the real
//! relationships: the flavour's headers at the image's version, then what *they* depend on
//! (`linux-headers-<abi>-common (= v)`, `linux-kbuild-<series> (>= v)`), then the source at the
//! image's source version. Debian's archive keeps only the newest kbuild of each suite, and its
//! own headers accept any kbuild at or above their version, so graft does too, within limits it
//! states: a kbuild of another Debian revision of the same upstream version is accepted with a
//! note (its scripts are built from the same upstream tree); one of another upstream version is
//! refused. Run-pre matching later proves every replaced function against the running code, so
//! nothing taken here can make a wrong patch go unnoticed.

use graft_deb::{Index, PackageInfo, Relation};

use crate::kernel::PackageRecord;
use crate::{KernelError, Target};

/// What a package is for in a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The kernel image and its modules.
    Image,
    /// The flavour's headers (Makefile, config, Module.symvers).
    Headers,
    /// Headers shared by the flavours of one ABI.
    HeadersCommon,
    /// kbuild's host programs (modpost, fixdep, ...).
    Kbuild,
    /// The patched source tree.
    Source,
}

/// One resolved package, with how it was chosen.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// What it is for.
    pub role: Role,
    /// The package as apt lists it.
    pub info: PackageInfo,
    /// The relationship that asked for it (`linux-kbuild-6.1 (>= 6.1.192-2)`), if any.
    pub wanted: Option<String>,
    /// Why this version differs from the image's, when it does.
    pub note: Option<String>,
}

/// The packages of a Debian target.
#[derive(Clone, Debug)]
pub struct Packages {
    /// The image.
    pub image: Resolved,
    /// The flavour's and the common headers, in unpacking order.
    pub headers: Vec<Resolved>,
    /// kbuild's package, or None when its programs are built from the target's own source
    /// (the archive offers kbuild only of another upstream version).
    pub kbuild: Option<Resolved>,
    /// Why kbuild is built from source, when it is.
    pub kbuild_note: Option<String>,
    /// The source.
    pub source: Resolved,
}

impl Packages {
    /// Resolves `target`'s packages from apt's index (two `apt-cache` calls); nothing is
    /// downloaded.
    pub fn resolve(target: &Target) -> Result<Self, KernelError> {
        let images = Index::candidates(&[image_package(target)])?;
        let index = Index::all_versions(&related_packages(target))?;
        Self::resolve_in(target, &images, &index)
    }

    /// The resolution of [`resolve`](Self::resolve), from indexes already read: `images` has
    /// the image's candidate, `index` every version of the packages related to it.
    pub fn resolve_in(target: &Target, images: &Index, index: &Index) -> Result<Self, KernelError> {
        let image_name = image_package(target);
        let image = images
            .newest(&image_name)
            .ok_or_else(|| KernelError::UnknownRelease {
                target: target.to_string(),
                package: image_name.clone(),
            })?
            .clone();
        let headers_name = headers_package(target);
        let headers = index
            .get(&headers_name, &image.version)
            .ok_or_else(|| not_listed(&headers_name, &image.version))?
            .clone();
        let mut common = None;
        let mut kbuild = None;
        let mut kbuild_note = None;
        for dependency in &headers.depends {
            // The compiler package only names gcc; the compiler check judges the compiler.
            let Some((relation, role)) = dependency
                .iter()
                .find_map(|r| needed(target, r).map(|role| (r, role)))
            else {
                continue;
            };
            let chosen = choose(
                &headers.name,
                relation,
                role,
                &image.version,
                index.versions(&relation.name),
            );
            match (role, chosen) {
                (
                    Role::Kbuild,
                    Err(KernelError::OtherUpstream {
                        package,
                        offered,
                        kernel_upstream,
                    }),
                ) => {
                    kbuild_note = Some(format!(
                        "{package}: apt offers only {offered}, another upstream version than the kernel's {kernel_upstream}; kbuild's programs are built from the target's own source {} instead",
                        image.source_version
                    ));
                    kbuild = Some(None);
                }
                (Role::Kbuild, chosen) => kbuild = Some(Some(chosen?)),
                (_, chosen) => common = Some(chosen?),
            }
        }
        let missing = |role| {
            KernelError::Inconsistent(format!(
                "{} {} does not depend on the {} package graft expects; its Depends: {}",
                headers.name,
                headers.version,
                role_name(role),
                headers
                    .depends
                    .iter()
                    .flatten()
                    .map(Relation::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        };
        let common = common.ok_or_else(|| missing(Role::HeadersCommon))?;
        let kbuild = kbuild.ok_or_else(|| missing(Role::Kbuild))?;
        let source_name = source_package(target);
        let source = index
            .get(&source_name, &image.source_version)
            .ok_or_else(|| not_listed(&source_name, &image.source_version))?
            .clone();
        let plain = |role, info| Resolved {
            role,
            info,
            wanted: None,
            note: None,
        };
        Ok(Self {
            image: plain(Role::Image, image),
            headers: vec![plain(Role::Headers, headers), common],
            kbuild,
            kbuild_note,
            source: plain(Role::Source, source),
        })
    }

    /// Every package, in fetch order.
    pub fn all(&self) -> impl Iterator<Item = &Resolved> {
        std::iter::once(&self.image)
            .chain(&self.headers)
            .chain(&self.kbuild)
            .chain(std::iter::once(&self.source))
    }

    /// Every note of the resolution.
    pub fn notes(&self) -> Vec<String> {
        self.all()
            .filter_map(|p| p.note.clone())
            .chain(self.kbuild_note.clone())
            .collect()
    }

    /// What the target's metadata records.
    pub fn records(&self) -> Vec<PackageRecord> {
        let mut records: Vec<PackageRecord> = self
            .all()
            .map(|p| PackageRecord {
                name: p.info.name.clone(),
                version: p.info.version.clone(),
                sha256: p.info.sha256.clone(),
                role: Some(p.role),
                wanted: p.wanted.clone(),
                note: p.note.clone(),
            })
            .collect();
        if self.kbuild.is_none() {
            // Built from the source package: that package's digest is what it came from.
            records.push(PackageRecord {
                name: format!("{} (kbuild built from it)", self.source.info.name),
                version: self.source.info.version.clone(),
                sha256: self.source.info.sha256.clone(),
                role: Some(Role::Kbuild),
                wanted: None,
                note: self.kbuild_note.clone(),
            });
        }
        records
    }
}

/// `linux-image-<release>-unsigned`: the unsigned image carries the same vmlinuz bytes as the
/// signed one minus the signature, and its modules.
pub fn image_package(target: &Target) -> String {
    format!("linux-image-{}-unsigned", target.release)
}

pub(crate) fn headers_package(target: &Target) -> String {
    format!("linux-headers-{}", target.release)
}

/// The packages besides the image whose versions the resolution looks at.
pub fn related_packages(target: &Target) -> Vec<String> {
    vec![
        headers_package(target),
        format!("linux-headers-{}-common", target.abi),
        format!("linux-headers-{}-common-rt", target.abi),
        format!("linux-kbuild-{}", target.series),
        source_package(target),
    ]
}

fn not_listed(package: &str, version: &str) -> KernelError {
    KernelError::Package(graft_deb::DebError::NotInArchive {
        package: package.to_string(),
        version: Some(version.to_string()),
    })
}

/// `linux-source-<series>`.
pub fn source_package(target: &Target) -> String {
    format!("linux-source-{}", target.series)
}

/// Which of the headers' dependencies graft unpacks, and as what.
fn needed(target: &Target, relation: &Relation) -> Option<Role> {
    // The rt flavour's common headers are `-common-rt`.
    if relation
        .name
        .starts_with(&format!("linux-headers-{}-common", target.abi))
    {
        Some(Role::HeadersCommon)
    } else if relation.name == format!("linux-kbuild-{}", target.series) {
        Some(Role::Kbuild)
    } else {
        None
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Image => "image",
        Role::Headers => "headers",
        Role::HeadersCommon => "common headers",
        Role::Kbuild => "kbuild",
        Role::Source => "source",
    }
}

/// Picks the version of `relation` to fetch among those apt lists (newest first): the image's
/// own version when apt has it, else the newest of the same upstream version that satisfies
/// the relation.
fn choose(
    needed_by: &str,
    relation: &Relation,
    role: Role,
    image_version: &str,
    listed: &[PackageInfo],
) -> Result<Resolved, KernelError> {
    let allowed: Vec<&PackageInfo> = listed
        .iter()
        .filter(|p| relation.allows(&p.version))
        .collect();
    let kernel_upstream = graft_deb::relation::upstream(image_version);
    let exact = allowed.iter().find(|p| p.version == image_version);
    let same_upstream = allowed
        .iter()
        .find(|p| graft_deb::relation::upstream(&p.version) == kernel_upstream);
    let chosen = exact.or(same_upstream).copied();
    let Some(info) = chosen else {
        let listed_versions: Vec<String> = listed.iter().map(|p| p.version.clone()).collect();
        return Err(match allowed.first() {
            Some(other) => KernelError::OtherUpstream {
                package: relation.name.clone(),
                offered: other.version.clone(),
                kernel_upstream: kernel_upstream.to_string(),
            },
            None => KernelError::Unsatisfiable {
                needed_by: needed_by.to_string(),
                wanted: relation.to_string(),
                listed: listed_versions,
            },
        });
    };
    let note = (info.version != image_version).then(|| {
        format!(
            "{} {} is another Debian revision of upstream {kernel_upstream} than the kernel's {image_version}; {needed_by} accepts it ({relation})",
            info.name, info.version
        )
    });
    if let Some(note) = &note {
        tracing::info!("{note}");
    }
    Ok(Resolved {
        role,
        info: info.clone(),
        wanted: Some(relation.to_string()),
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, versions: &[&str]) -> Vec<PackageInfo> {
        versions
            .iter()
            .map(|v| PackageInfo {
                name: name.to_string(),
                version: v.to_string(),
                arch: "amd64".into(),
                source: "linux".into(),
                source_version: v.to_string(),
                size: 1,
                sha256: "0".repeat(64),
                depends: Vec::new(),
            })
            .collect()
    }

    fn kbuild_at_least(version: &str) -> Relation {
        let text = format!("linux-kbuild-6.1 (>= {version})");
        graft_deb::relation::parse_depends("h", &text).unwrap()[0][0].clone()
    }

    const HEADERS: &str = "linux-headers-6.1.0-56-amd64";

    /// Regression: Debian published 6.1.192-3 and dropped kbuild 6.1.192-2 from its index;
    /// the headers of 6.1.192-2 accept it, so graft must too.
    #[test]
    fn kbuild_of_a_newer_debian_revision_is_taken_with_a_note() {
        let relation = kbuild_at_least("6.1.192-2");
        let offered = listed("linux-kbuild-6.1", &["6.1.192-3", "6.1.176-1"]);
        let chosen = choose(HEADERS, &relation, Role::Kbuild, "6.1.192-2", &offered).unwrap();
        assert_eq!(chosen.info.version, "6.1.192-3");
        let note = chosen.note.unwrap();
        assert!(
            note.contains("another Debian revision of upstream 6.1.192"),
            "{note}"
        );
        assert_eq!(
            chosen.wanted.as_deref(),
            Some("linux-kbuild-6.1 (>= 6.1.192-2)")
        );
    }

    #[test]
    fn the_image_version_is_preferred_and_needs_no_note() {
        let relation = kbuild_at_least("6.1.192-2");
        let offered = listed("linux-kbuild-6.1", &["6.1.192-3", "6.1.192-2"]);
        let chosen = choose(HEADERS, &relation, Role::Kbuild, "6.1.192-2", &offered).unwrap();
        assert_eq!(chosen.info.version, "6.1.192-2");
        assert_eq!(chosen.note, None);
    }

    #[test]
    fn kbuild_of_another_upstream_version_is_refused() {
        let relation = kbuild_at_least("6.1.192-2");
        let offered = listed("linux-kbuild-6.1", &["6.1.193-1"]);
        let err = choose(HEADERS, &relation, Role::Kbuild, "6.1.192-2", &offered)
            .unwrap_err()
            .to_string();
        assert!(err.contains("6.1.193-1"), "{err}");
        assert!(err.contains("the kernel's 6.1.192"), "{err}");
    }

    fn package(name: &str, version: &str, depends: &str) -> PackageInfo {
        let mut p = listed(name, &[version]).remove(0);
        p.depends = graft_deb::relation::parse_depends(name, depends).unwrap();
        p
    }

    /// The archive keeps only the newest kbuild of a suite: an older kernel's kbuild comes
    /// from its own source, never from another upstream version's package.
    #[test]
    fn an_older_kernel_builds_kbuild_from_its_source() {
        let target: Target = "debian:6.1.0-54-amd64".parse().unwrap();
        let mut image = package("linux-image-6.1.0-54-amd64-unsigned", "6.1.190-1", "");
        image.source_version = "6.1.190-1".into();
        let images = Index::from_packages([image]);
        let index = Index::from_packages([
            package(
                "linux-headers-6.1.0-54-amd64",
                "6.1.190-1",
                "linux-headers-6.1.0-54-common (= 6.1.190-1), linux-kbuild-6.1 (>= 6.1.190-1), linux-compiler-gcc-12-x86",
            ),
            package("linux-headers-6.1.0-54-common", "6.1.190-1", ""),
            package("linux-kbuild-6.1", "6.1.192-3", ""),
            package("linux-source-6.1", "6.1.190-1", ""),
        ]);
        let packages = Packages::resolve_in(&target, &images, &index).unwrap();
        assert!(packages.kbuild.is_none());
        let note = packages.kbuild_note.clone().unwrap();
        assert!(
            note.contains("6.1.192-3")
                && note.contains("built from the target's own source 6.1.190-1"),
            "{note}"
        );
        let records = packages.records();
        let kbuild = records
            .iter()
            .find(|r| r.role == Some(Role::Kbuild))
            .unwrap();
        assert_eq!(kbuild.version, "6.1.190-1");
        assert_eq!(packages.headers.len(), 2);

        let missing_image = Packages::resolve_in(&target, &Index::default(), &index)
            .unwrap_err()
            .to_string();
        assert!(
            missing_image.contains("graft kernel list"),
            "{missing_image}"
        );
    }

    #[test]
    fn nothing_satisfying_lists_what_apt_has() {
        let relation = kbuild_at_least("6.1.192-2");
        let offered = listed("linux-kbuild-6.1", &["6.1.176-1"]);
        let err = choose(HEADERS, &relation, Role::Kbuild, "6.1.192-2", &offered)
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux-kbuild-6.1 (>= 6.1.192-2)"), "{err}");
        assert!(err.contains("6.1.176-1"), "{err}");
        assert!(err.contains("apt-get update"), "{err}");
    }
}
