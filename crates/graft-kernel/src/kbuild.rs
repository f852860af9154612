//! Building out-of-tree modules (livepatches among them) with the target's own kbuild.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Kernel, KernelError};

impl Kernel {
    /// `make -C <kbuild> M=<dir> CC=<the kernel's compiler> modules`: building modules for
    /// this target, killed if graft dies.
    pub fn kbuild_modules(&self, dir: &Path) -> Command {
        let mut make = Command::new("make");
        graft_lab::kill_with_parent(&mut make);
        make.arg("-C")
            .arg(self.kbuild_dir())
            .arg(format!("M={}", dir.display()))
            .args(
                self.meta()
                    .make_vars
                    .iter()
                    .filter(|v| v.starts_with("CC=")),
            )
            .arg("modules");
        make
    }

    /// Builds the module sources in `src` (a directory with a `Kbuild` file) against the
    /// target's headers package, in `out` (a fresh copy, so `src` is never written to).
    /// Returns the built `.ko` files.
    pub fn build_external_module(
        &self,
        src: &Path,
        out: &Path,
    ) -> Result<Vec<PathBuf>, KernelError> {
        fs::create_dir_all(out).map_err(|e| KernelError::io("creating", out, e))?;
        let entries = fs::read_dir(src).map_err(|e| KernelError::io("listing", src, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| KernelError::io("listing", src, e))?;
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                let to = out.join(entry.file_name());
                fs::copy(entry.path(), &to)
                    .map_err(|e| KernelError::io("copying", &entry.path(), e))?;
            }
        }
        let log = out.join("build.log");
        let file = fs::File::create(&log).map_err(|e| KernelError::io("creating", &log, e))?;
        let err_file = file
            .try_clone()
            .map_err(|e| KernelError::io("creating", &log, e))?;
        let status = self
            .kbuild_modules(out)
            .env("LC_ALL", "C")
            .env_remove("MAKEFLAGS")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .status()
            .map_err(|e| KernelError::io("running make for", out, e))?;
        if !status.success() {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            return Err(KernelError::ModuleBuildFailed {
                dir: out.to_path_buf(),
                status: status
                    .code()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "signal".into()),
                tail: lines[lines.len().saturating_sub(15)..].join("\n"),
                log,
            });
        }
        let mut modules: Vec<PathBuf> = fs::read_dir(out)
            .map_err(|e| KernelError::io("listing", out, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "ko"))
            .collect();
        modules.sort();
        if modules.is_empty() {
            return Err(KernelError::Inconsistent(format!(
                "kbuild succeeded in {} but produced no .ko (is there a Kbuild file with obj-m?)",
                out.display()
            )));
        }
        Ok(modules)
    }
}
