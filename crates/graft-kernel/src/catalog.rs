//! `graft kernel list` and `graft kernel remove`: the kernels apt can see, and those in the
//! cache.
//!
//! A fleet runs many kernels at once, so every Debian kernel the archive still offers is a
//! target. Listing reads apt's index in three `apt-cache` calls (the image names, their
//! candidates, every version of the related packages) and resolves each kernel exactly as
//! `fetch` would, so "obtainable" means that a fetch would find every package, not a guess.

use std::collections::BTreeSet;

use graft_cache::Cache;
use graft_deb::Index;

use crate::kernel::{stage, Kernel};
use crate::resolve::{image_package, related_packages, Packages};
use crate::{KernelError, Provider, Target};

/// One kernel: what apt offers of it and what the cache holds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Available {
    /// The target name, `debian:<release>`.
    pub target: String,
    /// `uname -r`.
    pub release: String,
    /// The image package's version, when apt lists it.
    pub image_version: Option<String>,
    /// The Debian source version it was built from.
    pub source_version: Option<String>,
    /// Whether apt lists the image.
    pub image: bool,
    /// Whether apt lists headers, common headers and a usable kbuild for it.
    pub headers: bool,
    /// Whether apt lists the source at the image's source version.
    pub source: bool,
    /// Whether a fetch would find every package.
    pub obtainable: bool,
    /// Whether kbuild's programs would be built from the target's source (the archive has no
    /// kbuild of the kernel's upstream version).
    pub kbuild_from_source: bool,
    /// Why not, or the notes of a resolution that needed another revision.
    pub notes: Vec<String>,
    /// Whether the cache holds the whole target.
    pub cached: bool,
    /// Bytes the target's cache entries use (kernel and compiled objects).
    pub cache_bytes: u64,
    /// Whether this is the default target.
    pub default: bool,
}

/// Every kernel of `flavour` apt lists for `provider`, and every one in the cache, ordered by
/// ABI number.
pub fn list(
    cache: &Cache,
    provider: Provider,
    flavour: &str,
) -> Result<Vec<Available>, KernelError> {
    let Provider::Debian = provider;
    let mut targets: BTreeSet<Release> = BTreeSet::new();
    for name in graft_deb::package_names("linux-image-")? {
        let Some(release) = name
            .strip_prefix("linux-image-")
            .and_then(|r| r.strip_suffix("-unsigned"))
        else {
            continue;
        };
        if let Some(r) = Release::parse(release).filter(|r| r.flavour() == flavour) {
            targets.insert(r);
        }
    }
    let prefix = format!("{}-", provider.name());
    for key in cache.keys("kernels") {
        if let Some(r) = key
            .strip_prefix(&prefix)
            .and_then(Release::parse)
            .filter(|r| r.flavour() == flavour)
        {
            targets.insert(r);
        }
    }
    let targets: Vec<Target> = targets
        .into_iter()
        .filter_map(|r| format!("{}:{}", provider.name(), r.0).parse().ok())
        .collect();
    let images = Index::candidates(&targets.iter().map(image_package).collect::<Vec<_>>())?;
    let related: BTreeSet<String> = targets.iter().flat_map(related_packages).collect();
    let index = Index::all_versions(&related.into_iter().collect::<Vec<_>>())?;
    Ok(targets
        .iter()
        .map(|t| describe(cache, t, &images, &index))
        .collect())
}

fn describe(cache: &Cache, target: &Target, images: &Index, index: &Index) -> Available {
    let image = images.newest(&image_package(target));
    let resolution = Packages::resolve_in(target, images, index);
    let notes: Vec<String> = match &resolution {
        Ok(packages) => packages.notes(),
        Err(e) => vec![e.to_string()],
    };
    let listed = |name: String, version: Option<&String>| {
        version.is_some_and(|v| index.get(&name, v).is_some())
    };
    let source = listed(
        crate::resolve::source_package(target),
        image.map(|i| &i.source_version),
    );
    // The headers count as obtainable when they and what they depend on resolve.
    let headers_resolve = !matches!(
        resolution,
        Err(KernelError::Unsatisfiable { .. }
            | KernelError::OtherUpstream { .. }
            | KernelError::Inconsistent(_))
    );
    let headers = headers_resolve
        && listed(
            crate::resolve::headers_package(target),
            image.map(|i| &i.version),
        );
    let entry = Kernel::entry(cache, target);
    let cached = stage::ALL.iter().all(|s| entry.is_done(s));
    let objects = cache.entry("objects", &target.key());
    Available {
        target: target.to_string(),
        release: target.release.clone(),
        image_version: image.map(|i| i.version.clone()),
        source_version: image.map(|i| i.source_version.clone()),
        image: image.is_some(),
        headers,
        source,
        obtainable: resolution.is_ok(),
        kbuild_from_source: resolution.as_ref().is_ok_and(|p| p.kbuild.is_none()),
        notes,
        cached,
        cache_bytes: graft_cache::disk_usage(entry.dir()) + graft_cache::disk_usage(objects.dir()),
        default: target.to_string() == crate::DEFAULT_TARGET,
    }
}

/// What `remove` freed.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Removed {
    /// The target.
    pub target: String,
    /// Bytes freed.
    pub bytes: u64,
    /// Whether anything was there.
    pub existed: bool,
}

/// Removes `target` from the cache: its kernel entry and its compiled objects.
pub fn remove(cache: &Cache, target: &Target) -> Result<Removed, KernelError> {
    let kernel = Kernel::entry(cache, target);
    let objects = cache.entry("objects", &target.key());
    let existed = kernel.dir().exists() || objects.dir().exists();
    // Objects first: they are derived from the kernel entry, never the other way round.
    let mut bytes = objects.lock()?.remove_entry()?;
    bytes += kernel.lock()?.remove_entry()?;
    cache.sweep("kernels");
    cache.sweep("objects");
    Ok(Removed {
        target: target.to_string(),
        bytes,
        existed,
    })
}

/// A release string ordered by its ABI number, so `6.1.0-9` sorts before `6.1.0-10`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Release(String, Vec<u64>, String);

impl Release {
    fn flavour(&self) -> &str {
        &self.2
    }

    fn parse(release: &str) -> Option<Self> {
        let target: Target = format!("debian:{release}").parse().ok()?;
        let numbers = target
            .abi
            .split(['.', '-'])
            .map(|n| n.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        Some(Self(release.to_string(), numbers, target.flavour))
    }
}

impl PartialOrd for Release {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Release {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.1, &self.0).cmp(&(&other.1, &other.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_sort_by_abi_number() {
        let mut releases: Vec<Release> = ["6.1.0-10-amd64", "6.1.0-9-amd64", "6.1.0-57-amd64"]
            .iter()
            .filter_map(|r| Release::parse(r))
            .collect();
        releases.sort();
        let names: Vec<&str> = releases.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(names, ["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-57-amd64"]);
        assert!(Release::parse("6.1.0-amd64").is_none());
    }
}
