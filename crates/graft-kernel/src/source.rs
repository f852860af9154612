//! Debian's `linux-source-<series>` package: a .deb holding the patched tree as one tarball
//! (`usr/src/linux-source-<series>.tar.xz`) and the package's changelog.

use std::io::Read;
use std::path::{Path, PathBuf};

use graft_deb::PackageInfo;
use graft_progress::SharedProgress;

use crate::KernelError;

/// A source package unpacked into a scratch directory, removed on drop.
#[derive(Debug)]
pub(crate) struct SourcePackage {
    dir: PathBuf,
    /// The tree's tarball.
    pub tarball: PathBuf,
    /// `changelog.Debian.gz`.
    pub changelog: PathBuf,
}

impl SourcePackage {
    /// Downloads (or reuses a verified download in `downloads`) and unpacks `info` into
    /// `scratch`. The .deb is kept in `downloads` for the next use.
    pub fn unpack(
        info: &PackageInfo,
        series: &str,
        downloads: &Path,
        scratch: &Path,
        progress: &SharedProgress,
    ) -> Result<Self, KernelError> {
        let deb = graft_deb::download(info, downloads, progress.as_ref())?;
        let _ = graft_cache::remove_any(scratch);
        let package = Self {
            dir: scratch.to_path_buf(),
            tarball: scratch
                .join("usr/src")
                .join(format!("linux-source-{series}.tar.xz")),
            changelog: scratch
                .join("usr/share/doc")
                .join(format!("linux-source-{series}"))
                .join("changelog.Debian.gz"),
        };
        graft_deb::unpack_deb(&deb, scratch, progress.as_ref())?;
        if !package.tarball.is_file() {
            return Err(KernelError::MissingInPackage {
                package: format!("{} {}", info.name, info.version),
                what: format!("usr/src/linux-source-{series}.tar.xz"),
            });
        }
        Ok(package)
    }

    /// The tree's regular files, as the tarball lists them.
    pub fn members(&self, progress: &SharedProgress) -> Result<Vec<String>, KernelError> {
        let mut members = Vec::new();
        graft_deb::read_tarball(&self.tarball, 1, progress.as_ref(), &mut |path, _| {
            members.push(path.to_string());
            Ok(())
        })?;
        Ok(members)
    }

    /// The changelog's text.
    pub fn changelog_text(&self) -> Result<String, KernelError> {
        let file = std::fs::File::open(&self.changelog)
            .map_err(|e| KernelError::io("opening", &self.changelog, e))?;
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .map_err(|e| KernelError::io("decompressing", &self.changelog, e))?;
        Ok(text)
    }
}

impl Drop for SourcePackage {
    fn drop(&mut self) {
        let _ = graft_cache::remove_any(&self.dir);
    }
}
