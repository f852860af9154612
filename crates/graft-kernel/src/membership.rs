//! Which sources kbuild builds for the target's configuration, and into what.
//!
//! `make dir/file.o` compiles any object of a directory kbuild descends into, whether or not
//! the configuration selects it, and fails for some that it does not select (their headers need
//! options that are off). So a failed compile cannot tell "not part of this kernel" from "the
//! patch does not compile". kbuild itself can: evaluated for one directory
//! (`make -f scripts/Makefile.build obj=<dir>`), it computes `real-obj-y` and `real-obj-m`
//! (composite objects expanded into their parts) and `subdir-ym` (the subdirectories it
//! descends into) from that directory's Makefile and the configuration. A source is built when
//! its object is in one of those lists of a directory that is itself reached from the top, and
//! the lists say whether it goes into vmlinux or a module. Each evaluation costs ~20 ms and is
//! remembered.

use std::collections::HashMap;
use std::process::Stdio;

use graft_cache::Cache;

use crate::includes::normalize;
use crate::{Kernel, KernelError};

/// How the target's configuration builds a source file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Membership {
    /// Compiled and linked into vmlinux (`obj-y`, `lib-y`).
    BuiltIn,
    /// Compiled into a module (`obj-m`).
    Module,
    /// Not compiled for this configuration.
    NotBuilt {
        /// Why, naming the directory or option: "fs/ext2/ is not built (CONFIG_EXT2_FS is not
        /// set)".
        reason: String,
    },
}

/// What kbuild computes for one directory.
#[derive(Clone, Debug, Default)]
struct Directory {
    built_in: Vec<String>,
    modular: Vec<String>,
    subdirs: Vec<String>,
}

/// Answers [`Membership`] questions for one target, remembering each directory it evaluated.
#[derive(Debug)]
pub struct KbuildMap<'k> {
    kernel: &'k Kernel,
    cache: &'k Cache,
    arch_vars: Option<Vec<String>>,
    dirs: HashMap<String, Directory>,
    whole: Option<HashMap<String, bool>>,
}

/// The recipe that prints what kbuild computed for a directory, added to its makefiles with
/// `--eval`.
const PRINT: &str = "graft-objects: ; $(info y: $(real-obj-y) $(lib-y))$(info m: $(real-obj-m))$(info sub: $(subdir-ym))@:";

/// The same for the top Kbuild, which lists directories in plain `obj-y` and `obj-m`.
const PRINT_TOP: &str = "graft-objects: ; $(info y: $(obj-y))$(info m: $(obj-m))@:";

impl<'k> KbuildMap<'k> {
    /// A map of `kernel`'s prepared source tree.
    pub fn new(kernel: &'k Kernel, cache: &'k Cache) -> Self {
        Self {
            kernel,
            cache,
            arch_vars: None,
            dirs: HashMap::new(),
            whole: None,
        }
    }

    /// How the configuration builds `source` (a `.c` path relative to the tree).
    pub fn membership(&mut self, source: &str) -> Result<Membership, KernelError> {
        let object = match source.strip_suffix(".c") {
            Some(stem) => format!("{stem}.o"),
            None => {
                return Ok(Membership::NotBuilt {
                    reason: format!("{source} is not a C source"),
                })
            }
        };
        let dir = parent_dir(source);
        let unreached = self.unreached(&dir)?;
        if unreached.is_none() {
            let listed = self.directory(&dir)?;
            if listed.built_in.contains(&object) {
                return Ok(Membership::BuiltIn);
            }
            if listed.modular.contains(&object) {
                return Ok(Membership::Module);
            }
        }
        // Composite objects may take parts from another directory (`amdgpu-y +=
        // ../display/...`), which kbuild never descends into itself: only the lists of every
        // directory together can tell.
        if let Some(reason) = unreached {
            match self.whole_tree()?.get(&object) {
                Some(true) => return Ok(Membership::Module),
                Some(false) => return Ok(Membership::BuiltIn),
                None => return Ok(Membership::NotBuilt { reason }),
            }
        }
        let file = source.rsplit('/').next().unwrap_or(source);
        let object_name = format!("{}.o", file.trim_end_matches(".c"));
        Ok(Membership::NotBuilt {
            reason: match self.option_for(&dir, &object_name) {
                Some(option) => format!("{source} is not built ({option} is not set)"),
                None => format!("{source} is not built: {dir}'s Makefile does not select it for this configuration"),
            },
        })
    }

    /// Every object kbuild builds for the target (true: into a module), from all directories
    /// reached from the top; evaluated once per target (a few seconds) and kept in the cache.
    fn whole_tree(&mut self) -> Result<&HashMap<String, bool>, KernelError> {
        if self.whole.is_none() {
            let entry = self.cache.entry("objects", &self.kernel.target().key());
            let stage = "kbuild-objects.json";
            {
                let lock = entry.lock()?;
                lock.ensure(stage, |out| -> Result<(), KernelError> {
                    let index = self.scan_tree()?;
                    let json = serde_json::to_vec(&index)
                        .map_err(|e| KernelError::Inconsistent(e.to_string()))?;
                    std::fs::write(out, json).map_err(|e| KernelError::io("writing", out, e))
                })?;
            }
            let path = entry.path(stage);
            let text = std::fs::read(&path).map_err(|e| KernelError::io("reading", &path, e))?;
            let index = serde_json::from_slice(&text).map_err(|e| KernelError::BadImage {
                path: path.clone(),
                reason: format!("unreadable object index: {e}; delete it to rebuild"),
            })?;
            self.whole = Some(index);
        }
        Ok(self.whole.get_or_insert_with(HashMap::new))
    }

    fn scan_tree(&mut self) -> Result<HashMap<String, bool>, KernelError> {
        let mut index = HashMap::new();
        let mut level = vec![".".to_string()];
        let mut seen = std::collections::HashSet::new();
        tracing::info!(
            "listing every object kbuild builds for {}",
            self.kernel.target()
        );
        let arch = self.arch_vars()?;
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Breadth first, each level's directories evaluated on all cores.
        while !level.is_empty() {
            level.retain(|d| seen.insert(d.clone()));
            let chunk = level.len().div_ceil(workers).max(1);
            let kernel = self.kernel;
            let results: Vec<Result<Vec<(String, Directory)>, KernelError>> =
                std::thread::scope(|scope| {
                    let handles: Vec<_> = level
                        .chunks(chunk)
                        .map(|dirs| {
                            let arch = &arch;
                            scope.spawn(move || {
                                dirs.iter()
                                    .map(|d| evaluate(kernel, arch, d).map(|e| (d.clone(), e)))
                                    .collect::<Result<Vec<_>, _>>()
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(KernelError::Inconsistent("a kbuild worker panicked".into()))
                            })
                        })
                        .collect()
                });
            let mut next = Vec::new();
            for (dir, listed) in results
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
            {
                for object in &listed.built_in {
                    index.insert(object.clone(), false);
                }
                for object in &listed.modular {
                    index.entry(object.clone()).or_insert(true);
                }
                next.extend(listed.subdirs.iter().cloned());
                self.dirs.insert(dir, listed);
            }
            level = next;
        }
        Ok(index)
    }

    /// Why `dir` is not descended into, or None when kbuild reaches it from the top.
    fn unreached(&mut self, dir: &str) -> Result<Option<String>, KernelError> {
        if dir == "." {
            return Ok(None);
        }
        let top = self.directory(".")?;
        if top.subdirs.iter().any(|d| d == dir) {
            return Ok(None);
        }
        let parent = parent_dir(dir);
        if parent == "." {
            return Ok(Some(format!("{dir}/ is not built for this configuration")));
        }
        if let Some(reason) = self.unreached(&parent)? {
            return Ok(Some(reason));
        }
        if self.directory(&parent)?.subdirs.iter().any(|d| d == dir) {
            return Ok(None);
        }
        let name = format!("{}/", dir.rsplit('/').next().unwrap_or(dir));
        Ok(Some(match self.option_for(&parent, &name) {
            Some(option) => format!("{dir}/ is not built ({option} is not set)"),
            None => format!("{dir}/ is not built for this configuration"),
        }))
    }

    fn directory(&mut self, dir: &str) -> Result<&Directory, KernelError> {
        if !self.dirs.contains_key(dir) {
            let arch = self.arch_vars()?;
            let evaluated = evaluate(self.kernel, &arch, dir)?;
            self.dirs.insert(dir.to_string(), evaluated);
        }
        Ok(&self.dirs[dir])
    }

    /// `ARCH_CORE`, `ARCH_LIB` and `ARCH_DRIVERS`: the directories the architecture's
    /// Makefile adds at the top, as the top Makefile computes them (once per map).
    fn arch_vars(&mut self) -> Result<Vec<String>, KernelError> {
        if let Some(vars) = &self.arch_vars {
            return Ok(vars.clone());
        }
        let mut make = self.kernel.make();
        make.args(["-s", "-f", "Makefile"]).arg(
            "--eval=graft-arch: ; $(info ARCH_CORE=$(ARCH_CORE))$(info ARCH_LIB=$(ARCH_LIB))$(info ARCH_DRIVERS=$(ARCH_DRIVERS))@:",
        );
        let text = run(make.arg("graft-arch"), "the top Makefile")?;
        let vars: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("ARCH_"))
            .map(|l| l.trim().to_string())
            .collect();
        if vars.len() != 3 {
            return Err(KernelError::Inconsistent(format!(
                "the top Makefile of {} did not report ARCH_CORE, ARCH_LIB and ARCH_DRIVERS: {text}",
                self.kernel.target()
            )));
        }
        self.arch_vars = Some(vars.clone());
        Ok(vars)
    }

    /// The `CONFIG_` option that selects `entry` (`ext2/`, `decompressor_lzma.o`) in `dir`'s
    /// Makefile, read from a line like `obj-$(CONFIG_EXT2_FS) += ext2/`.
    fn option_for(&self, dir: &str, entry: &str) -> Option<String> {
        let tree = self.kernel.source_dir();
        let base = if dir == "." {
            tree.clone()
        } else {
            tree.join(dir)
        };
        let text = ["Kbuild", "Makefile"]
            .iter()
            .find_map(|f| std::fs::read_to_string(base.join(f)).ok())?;
        let joined = text.replace("\\\n", " ");
        let line = joined
            .lines()
            .find(|l| l.contains("$(CONFIG_") && l.split_whitespace().any(|w| w == entry))?;
        let start = line.find("$(CONFIG_")? + 2;
        let end = start + line[start..].find(')')?;
        Some(line[start..end].to_string())
    }
}

/// Asks kbuild what it builds in `dir`.
fn evaluate(kernel: &Kernel, arch: &[String], dir: &str) -> Result<Directory, KernelError> {
    let mut make = kernel.make();
    make.arg("-s").arg("SRCARCH=x86").args(arch);
    if dir == "." {
        // Makefile.build cannot be pointed at the top directory (its pattern rules then
        // try to remake the makefiles themselves); the top Kbuild is plain make.
        make.args([
            "-f",
            "include/config/auto.conf",
            "-f",
            "Kbuild",
            "srctree=.",
        ]);
    } else {
        make.args([
            "KBUILD_MODULES=y",
            "KBUILD_BUILTIN=y",
            "-f",
            "scripts/Makefile.build",
            "srctree=.",
            "objtree=.",
        ])
        .arg(format!("obj={dir}"));
    }
    let print = if dir == "." { PRINT_TOP } else { PRINT };
    let text = run(
        make.arg(format!("--eval={print}")).arg("graft-objects"),
        dir,
    )?;
    let field = |name: &str| -> Vec<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .map(normalize)
            .collect()
    };
    if dir == "." {
        // The top Kbuild lists directories in obj-y/obj-m directly.
        let mut subdirs = field("y: ");
        subdirs.extend(field("m: "));
        return Ok(Directory {
            subdirs,
            ..Directory::default()
        });
    }
    Ok(Directory {
        built_in: field("y: "),
        modular: field("m: "),
        subdirs: field("sub: "),
    })
}

fn run(command: &mut std::process::Command, what: &str) -> Result<String, KernelError> {
    let output = command
        .env("LC_ALL", "C")
        .env_remove("MAKEFLAGS")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KernelError::io("running make for", std::path::Path::new(what), e))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        return Err(KernelError::Inconsistent(format!(
            "kbuild could not evaluate {what}: {}",
            err.lines().last().unwrap_or("no message")
        )));
    }
    Ok(text)
}

fn parent_dir(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => dir.to_string(),
        _ => ".".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parent_dir("fs/ext2/inode.c"), "fs/ext2");
        assert_eq!(parent_dir("fs"), ".");
    }
}
