//! `graft kernel info`: what graft knows about a fetched target, for people and scripts.

use std::fs;
use std::path::PathBuf;

use crate::kernel::{stage, PackageRecord};
use crate::{CompilerCheck, Kernel, KernelError};

/// The configuration options live patching depends on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyConfig {
    /// CONFIG_LIVEPATCH.
    pub livepatch: String,
    /// CONFIG_DYNAMIC_FTRACE_WITH_REGS.
    pub dynamic_ftrace_with_regs: String,
    /// CONFIG_HAVE_RELIABLE_STACKTRACE.
    pub have_reliable_stacktrace: String,
    /// The unwinder (orc, frame-pointer, guess).
    pub unwinder: String,
    /// CONFIG_RETPOLINE.
    pub retpoline: String,
    /// CONFIG_RETHUNK.
    pub rethunk: String,
    /// CONFIG_X86_KERNEL_IBT.
    pub ibt: String,
    /// CONFIG_MODULE_SIG_FORCE.
    pub module_sig_force: String,
}

/// Symbol counts.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SymbolCounts {
    /// vmlinux symbols in kallsyms.
    pub vmlinux: usize,
    /// vmlinux names that occur more than once (they need a sympos).
    pub vmlinux_repeated_names: usize,
    /// Modules in the image.
    pub modules: usize,
    /// Symbols of all modules, as their kallsyms will list them.
    pub module_symbols: usize,
}

/// Where the target's parts are, and how much room they take.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CachePaths {
    /// The entry directory.
    pub dir: PathBuf,
    /// The bootable image.
    pub vmlinuz: PathBuf,
    /// The extracted code image.
    pub vmlinux: PathBuf,
    /// The prepared source tree.
    pub source: PathBuf,
    /// The kbuild directory for external modules.
    pub kbuild: PathBuf,
    /// The image's modules.
    pub modules: PathBuf,
    /// Bytes used by the whole entry.
    pub size_bytes: u64,
    /// Bytes used by the source tree.
    pub source_bytes: u64,
}

/// Everything `graft kernel info` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelInfo {
    /// The target name.
    pub target: String,
    /// `uname -r`.
    pub release: String,
    /// The Debian source version.
    pub source_version: String,
    /// GNU build-id of the code image (from the vmlinuz).
    pub build_id: String,
    /// The build-id the booted kernel reported (checked equal at fetch).
    pub booted_build_id: String,
    /// The vmlinuz payload compression.
    pub compression: String,
    /// The compiler named by the config (`CONFIG_CC_VERSION_TEXT`).
    pub compiler: String,
    /// The local compiler's version line.
    pub local_compiler: Option<String>,
    /// Whether the local compiler passes the gate (same command and compiler version).
    pub compiler_matches: bool,
    /// Why a passing compiler is not identical to the kernel's, if it is not.
    pub compiler_note: Option<String>,
    /// Key configuration.
    pub config: KeyConfig,
    /// Symbol counts.
    pub symbols: SymbolCounts,
    /// The packages it came from.
    pub packages: Vec<PackageRecord>,
    /// Cache paths and sizes.
    pub cache: CachePaths,
}

impl KernelInfo {
    /// Gathers the report for a fetched kernel.
    pub fn gather(kernel: &Kernel) -> Result<Self, KernelError> {
        let config = kernel.config()?;
        let compiler_text = config
            .get("CC_VERSION_TEXT")
            .unwrap_or_default()
            .to_string();
        let check = CompilerCheck::run(&compiler_text);
        let symbols = kernel.symbols()?;
        let module_symbols_path = kernel.dir().join(stage::MODULE_SYMBOLS);
        let module_symbols = fs::read(&module_symbols_path)
            .map_err(|e| KernelError::io("reading", &module_symbols_path, e))?
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        let meta = kernel.meta();
        Ok(Self {
            target: meta.target.clone(),
            release: meta.release.clone(),
            source_version: meta.source_version.clone(),
            build_id: meta.build_id.clone(),
            booted_build_id: meta.booted_build_id.clone(),
            compression: meta.compression.clone(),
            compiler: compiler_text,
            local_compiler: check.local,
            compiler_matches: check.matches,
            compiler_note: check.note,
            config: KeyConfig {
                livepatch: config.tristate("LIVEPATCH"),
                dynamic_ftrace_with_regs: config.tristate("DYNAMIC_FTRACE_WITH_REGS"),
                have_reliable_stacktrace: config.tristate("HAVE_RELIABLE_STACKTRACE"),
                unwinder: config.unwinder().to_string(),
                retpoline: config.tristate("RETPOLINE"),
                rethunk: config.tristate("RETHUNK"),
                ibt: config.tristate("X86_KERNEL_IBT"),
                module_sig_force: config.tristate("MODULE_SIG_FORCE"),
            },
            symbols: SymbolCounts {
                vmlinux: symbols.len(),
                vmlinux_repeated_names: symbols.repeated_names(),
                modules: kernel.module_index()?.len(),
                module_symbols,
            },
            packages: meta.packages.clone(),
            cache: CachePaths {
                dir: kernel.dir().to_path_buf(),
                vmlinuz: kernel.vmlinuz(),
                vmlinux: kernel.vmlinux(),
                source: kernel.source_dir(),
                kbuild: kernel.kbuild_dir(),
                modules: kernel.modules_dir(),
                size_bytes: graft_cache::disk_usage(kernel.dir()),
                source_bytes: graft_cache::disk_usage(&kernel.source_dir()),
            },
        })
    }
}
