//! A fetched target kernel: where its parts are in the cache and how to read them.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use graft_cache::{Cache, Entry};
use graft_lab::{GuestModule, LabKernel};

use crate::modules::{parse_module_symbols, ModuleIndex};
use crate::{KernelConfig, KernelError, SymbolTable, Target};

/// The stages of a cache entry, in the order `fetch` builds them. `target.json` comes last and
/// marks the whole entry complete.
pub(crate) mod stage {
    pub const IMAGE: &str = "image";
    pub const HEADERS: &str = "headers";
    pub const SOURCE: &str = "source";
    pub const SOURCE_FILES: &str = "source-files.txt";
    pub const KBUILD: &str = "kbuild";
    pub const VMLINUX: &str = "vmlinux";
    /// `-v3`: with soft dependencies, aliases and what is built in.
    pub const MODULES: &str = "modules-v3.json";
    pub const MODULE_SYMBOLS: &str = "module-symbols.txt";
    pub const SYMBOLS: &str = "kallsyms.txt";
    pub const META: &str = "target.json";
    pub const ALL: &[&str] = &[
        IMAGE,
        HEADERS,
        SOURCE,
        SOURCE_FILES,
        KBUILD,
        VMLINUX,
        MODULES,
        MODULE_SYMBOLS,
        SYMBOLS,
        META,
    ];
}

/// A package a target was made from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackageRecord {
    /// The package.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The .deb's SHA-256.
    pub sha256: String,
    /// What it is for in the target (absent in targets fetched before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::resolve::Role>,
    /// The relationship that asked for it, e.g. `linux-kbuild-6.1 (>= 6.1.192-2)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted: Option<String>,
    /// Why its version differs from the image's, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What fetch learnt about a target, kept as `target.json`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetMeta {
    /// The target name.
    pub target: String,
    /// `uname -r`.
    pub release: String,
    /// The Debian source version of the image.
    pub source_version: String,
    /// The packages fetched.
    pub packages: Vec<PackageRecord>,
    /// GNU build-id of the vmlinux inside the vmlinuz.
    pub build_id: String,
    /// Build-id the kernel reported in `/sys/kernel/notes` when booted in the lab.
    pub booted_build_id: String,
    /// The vmlinuz payload's compression.
    pub compression: String,
    /// Address of `.text` in vmlinux (`_text` without KASLR).
    pub text_address: u64,
    /// Variables every `make` in the source tree is given, so it stays configured as prepared.
    pub make_vars: Vec<String>,
    /// graft's version that fetched it.
    pub graft_version: String,
}

/// A fetched target kernel.
#[derive(Clone, Debug)]
pub struct Kernel {
    target: Target,
    entry: Entry,
    meta: TargetMeta,
}

impl Kernel {
    /// The cache entry of `target` (fetched or not).
    pub fn entry(cache: &Cache, target: &Target) -> Entry {
        cache.entry("kernels", &target.key())
    }

    /// Opens a fetched target; fails with a hint to fetch it when it is not complete.
    pub fn open(cache: &Cache, target: &Target) -> Result<Self, KernelError> {
        let entry = Self::entry(cache, target);
        let _shared = entry.lock_shared()?;
        if !stage::ALL.iter().all(|s| entry.is_done(s)) {
            return Err(KernelError::NotFetched {
                target: target.to_string(),
                dir: entry.dir().to_path_buf(),
            });
        }
        let path = entry.path(stage::META);
        let text = fs::read_to_string(&path).map_err(|e| KernelError::io("reading", &path, e))?;
        let meta: TargetMeta = serde_json::from_str(&text).map_err(|e| KernelError::BadImage {
            path: path.clone(),
            reason: format!(
                "unreadable target description: {e}; run `graft kernel fetch --refresh`"
            ),
        })?;
        Ok(Self {
            target: target.clone(),
            entry,
            meta,
        })
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// What fetch recorded.
    pub fn meta(&self) -> &TargetMeta {
        &self.meta
    }

    /// The cache directory of the target.
    pub fn dir(&self) -> &Path {
        self.entry.dir()
    }

    /// The bootable image.
    pub fn vmlinuz(&self) -> PathBuf {
        image_file(self.entry.dir(), "vmlinuz", &self.target.release)
    }

    /// The distribution's config.
    pub fn config_path(&self) -> PathBuf {
        image_file(self.entry.dir(), "config", &self.target.release)
    }

    /// The parsed distribution config.
    pub fn config(&self) -> Result<KernelConfig, KernelError> {
        let path = self.config_path();
        let text = fs::read_to_string(&path).map_err(|e| KernelError::io("reading", &path, e))?;
        Ok(KernelConfig::parse(&text))
    }

    /// `lib/modules/<release>` of the image.
    pub fn modules_dir(&self) -> PathBuf {
        modules_dir(self.entry.dir(), &self.target.release)
    }

    /// The kbuild directory for out-of-tree modules (`make -C <this> M=...`).
    pub fn kbuild_dir(&self) -> PathBuf {
        kbuild_dir(self.entry.dir(), &self.target.release)
    }

    /// A program of kbuild's (`scripts/genksyms/genksyms`), as the kbuild stage has it.
    pub fn kbuild_program(&self, path: &str) -> PathBuf {
        kbuild_tools_dir(self.entry.dir(), &self.target.series).join(path)
    }

    /// The prepared source tree.
    pub fn source_dir(&self) -> PathBuf {
        self.entry.path(stage::SOURCE)
    }

    /// The files of the source tree as Debian's tarball has them (not those `make prepare`
    /// generated), sorted.
    pub fn source_files(&self) -> Result<Vec<String>, KernelError> {
        let path = self.entry.path(stage::SOURCE_FILES);
        let text = fs::read_to_string(&path).map_err(|e| KernelError::io("reading", &path, e))?;
        let mut files: Vec<String> = text.lines().map(str::to_string).collect();
        files.sort();
        Ok(files)
    }

    /// The code image extracted from the vmlinuz.
    pub fn vmlinux(&self) -> PathBuf {
        self.entry.path(stage::VMLINUX)
    }

    /// vmlinux symbols in kallsyms order.
    pub fn symbols(&self) -> Result<SymbolTable, KernelError> {
        let path = self.entry.path(stage::SYMBOLS);
        let text = fs::read_to_string(&path).map_err(|e| KernelError::io("reading", &path, e))?;
        SymbolTable::from_kallsyms(&path, &text)
    }

    /// Every module's symbols in its kallsyms order, by module name.
    pub fn module_symbols(&self) -> Result<BTreeMap<String, SymbolTable>, KernelError> {
        let path = self.entry.path(stage::MODULE_SYMBOLS);
        let text = fs::read_to_string(&path).map_err(|e| KernelError::io("reading", &path, e))?;
        parse_module_symbols(&path, &text)
    }

    /// The image's modules.
    pub fn module_index(&self) -> Result<ModuleIndex, KernelError> {
        let path = self.entry.path(stage::MODULES);
        let text = fs::read_to_string(&path).map_err(|e| KernelError::io("reading", &path, e))?;
        serde_json::from_str(&text).map_err(|e| KernelError::BadModule {
            path,
            reason: format!("unreadable module index: {e}"),
        })
    }

    /// The kernel as the lab boots it.
    pub fn lab_kernel(&self) -> LabKernel {
        LabKernel {
            release: self.target.release.clone(),
            vmlinuz: self.vmlinuz(),
            modules_dir: self.modules_dir(),
        }
    }

    /// Module `name` with its dependencies, ready to put into a lab guest.
    pub fn guest_module(
        &self,
        index: &ModuleIndex,
        name: &str,
    ) -> Result<GuestModule, KernelError> {
        let module = index.get(name).ok_or_else(|| KernelError::UnknownModule {
            name: name.to_string(),
        })?;
        let depends = index
            .dependencies(name)?
            .into_iter()
            .map(|m| m.path.clone())
            .collect();
        Ok(GuestModule {
            path: module.path.clone(),
            depends,
        })
    }

    /// `make -C <source> <vars>`: every make in the prepared tree must go through this.
    pub fn make(&self) -> Command {
        let mut command = Command::new("make");
        command
            .arg("-C")
            .arg(self.source_dir())
            .args(&self.meta.make_vars);
        command
    }
}

pub(crate) fn image_file(dir: &Path, kind: &str, release: &str) -> PathBuf {
    dir.join(stage::IMAGE)
        .join("boot")
        .join(format!("{kind}-{release}"))
}

pub(crate) fn modules_dir(dir: &Path, release: &str) -> PathBuf {
    dir.join(stage::IMAGE).join("lib/modules").join(release)
}

/// Where kbuild's programs and scripts are (`scripts/`, `tools/objtool/`, `certs/`), whether
/// unpacked from Debian's package or built from the target's source.
pub(crate) fn kbuild_tools_dir(dir: &Path, series: &str) -> PathBuf {
    dir.join(stage::KBUILD)
        .join("usr/lib")
        .join(format!("linux-kbuild-{series}"))
}

pub(crate) fn kbuild_dir(dir: &Path, release: &str) -> PathBuf {
    dir.join(stage::HEADERS)
        .join("usr/src")
        .join(format!("linux-headers-{release}"))
}
