//! Compiling single translation units exactly as the target's build did.
//!
//! The *pre* object of a unit is compiled once per target, by kbuild itself (`make <unit>.o`)
//! in the prepared tree with `-ffunction-sections -fdata-sections`, and cached together with
//! the exact command kbuild ran (from its `.cmd` file: compiler flags, `-D` defines, the objtool
//! pass). The *post* object is compiled by that same command in a farm where the patched
//! files replace the originals, so the two differ only by the patch.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use graft_cache::Cache;
use graft_kernel::Kernel;

use crate::BuildError;

/// Flags that give each function and object a section of its own, for differencing.
pub const SECTION_FLAGS: &str = "-ffunction-sections -fdata-sections";

/// Which object of the kernel a unit is linked into.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Parent {
    /// The kernel image.
    Vmlinux,
    /// A module, by name.
    Module(String),
}

impl Parent {
    /// The livepatch object name: `vmlinux` or the module name.
    pub fn object_name(&self) -> &str {
        match self {
            Parent::Vmlinux => "vmlinux",
            Parent::Module(m) => m,
        }
    }
}

/// A unit ready to diff: its kbuild command and cached pre object.
#[derive(Clone, Debug)]
pub struct Unit {
    /// The source, relative to the tree (`fs/proc/cmdline.c`).
    pub source: String,
    /// The object, relative to the tree (`fs/proc/cmdline.o`).
    pub object: String,
    /// kbuild's command for it (run from the tree root).
    pub command: String,
    /// Where it is linked.
    pub parent: Parent,
    /// The cached pre object.
    pub pre: PathBuf,
    /// The files the compiler read for it (kbuild's dependency list).
    pub deps: Vec<String>,
}

fn stage_name(source: &str) -> String {
    format!("unit-v1-{}", source.replace('/', "__"))
}

/// Reads kbuild's recorded command out of a `.cmd` file (make syntax: `$$` is `$`).
pub fn command_from_cmd_file(text: &str, object: &str) -> Option<String> {
    let prefix = format!("cmd_{object} := ");
    let line = text.lines().find_map(|l| l.strip_prefix(&prefix))?;
    Some(line.replace("$(pound)", "#").replace("$$", "$"))
}

/// The unit's parent, from its command's defines.
pub fn parent_from_command(command: &str) -> Parent {
    if !command.split_whitespace().any(|w| w == "-DMODULE") {
        return Parent::Vmlinux;
    }
    let name = command
        .split("-DKBUILD_MODNAME='\"")
        .nth(1)
        .and_then(|rest| rest.split("\"'").next())
        .unwrap_or_default();
    Parent::Module(name.replace('-', "_"))
}

/// Compiles (or reuses) the pre object of `source` and returns the unit.
pub fn prepare_unit(kernel: &Kernel, cache: &Cache, source: &str) -> Result<Unit, BuildError> {
    let object = match source.strip_suffix(".c") {
        Some(stem) => format!("{stem}.o"),
        None => {
            return Err(BuildError::Unsupported(format!(
                "{source}: only C sources and the headers they include can be patched"
            )))
        }
    };
    let entry = cache.entry("objects", &kernel.target().key());
    let lock = entry.lock()?;
    let stage = stage_name(source);
    let tree = kernel.source_dir();
    lock.ensure(&stage, |dir| -> Result<(), BuildError> {
        fs::create_dir_all(dir).map_err(|e| BuildError::io("creating", dir, e))?;
        let log = dir.join("make.log");
        let mut make = kernel.make();
        graft_lab::kill_with_parent(&mut make);
        let status = make
            .arg(format!("KCFLAGS={SECTION_FLAGS}"))
            .arg(&object)
            .env("LC_ALL", "C")
            .env_remove("MAKEFLAGS")
            .stdin(Stdio::null())
            .stdout(log_file(&log)?)
            .stderr(log_file(&log)?)
            .status()
            .map_err(|e| BuildError::io("running make in", &tree, e))?;
        let built = tree.join(&object);
        if !status.success() || !built.is_file() {
            return Err(BuildError::CompileFailed {
                unit: source.to_string(),
                which: "unpatched",
                tail: tail(&log),
            });
        }
        let cmd_file = cmd_file_of(&tree, &object);
        let text =
            fs::read_to_string(&cmd_file).map_err(|e| BuildError::io("reading", &cmd_file, e))?;
        let command = command_from_cmd_file(&text, &object).ok_or_else(|| {
            BuildError::Unsupported(format!("{}: no command for {object}", cmd_file.display()))
        })?;
        fs::write(dir.join("command"), &command).map_err(|e| BuildError::io("writing", dir, e))?;
        let deps = crate::includes::deps_from_cmd_file(&text).join("\n");
        fs::write(dir.join("deps"), deps).map_err(|e| BuildError::io("writing", dir, e))?;
        fs::rename(&built, dir.join("pre.o")).map_err(|e| BuildError::io("moving", &built, e))?;
        // Leave the cached tree as prepared: the farm must not see this unit's outputs.
        let _ = fs::remove_file(&cmd_file);
        Ok(())
    })
    .map_err(|e| match e {
        graft_cache::CacheError::Stage { cause, .. } => match cause.downcast::<BuildError>() {
            Ok(inner) => *inner,
            Err(other) => BuildError::Unsupported(other.to_string()),
        },
        other => BuildError::Cache(other),
    })?;
    let dir = entry.path(&stage);
    let command =
        fs::read_to_string(dir.join("command")).map_err(|e| BuildError::io("reading", &dir, e))?;
    let deps =
        fs::read_to_string(dir.join("deps")).map_err(|e| BuildError::io("reading", &dir, e))?;
    Ok(Unit {
        deps: deps.lines().map(str::to_string).collect(),
        source: source.to_string(),
        parent: parent_from_command(&command),
        object,
        command,
        pre: dir.join("pre.o"),
    })
}

fn cmd_file_of(tree: &Path, object: &str) -> PathBuf {
    let path = Path::new(object);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    tree.join(path.parent().unwrap_or(Path::new("")))
        .join(format!(".{name}.cmd"))
}

fn log_file(path: &Path) -> Result<fs::File, BuildError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| BuildError::io("opening", path, e))
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// Compiles the patched version of `unit` in `farm`; returns the object's path.
pub fn compile_post(unit: &Unit, farm: &Path) -> Result<PathBuf, BuildError> {
    let log = farm.join(format!("{}.log", unit.object.replace('/', "__")));
    let mut sh = Command::new("sh");
    graft_lab::kill_with_parent(&mut sh);
    let status = sh
        .arg("-c")
        .arg(&unit.command)
        .current_dir(farm)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(log_file(&log)?)
        .stderr(log_file(&log)?)
        .status()
        .map_err(|e| BuildError::io("compiling in", farm, e))?;
    let out = farm.join(&unit.object);
    if !status.success() || !out.is_file() {
        return Err(BuildError::CompileFailed {
            unit: unit.source.clone(),
            which: "patched",
            tail: tail(&log),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_and_parent() {
        let text = "cmd_fs/isofs/inode.o := gcc-12 -DMODULE -DKBUILD_BASENAME='\"inode\"' -DKBUILD_MODNAME='\"isofs\"' -c -o fs/isofs/inode.o fs/isofs/inode.c ; ./tools/objtool/objtool $$x\n\nsource_fs/isofs/inode.o := fs/isofs/inode.c\n";
        let cmd = command_from_cmd_file(text, "fs/isofs/inode.o").unwrap();
        assert!(cmd.ends_with("objtool $x"));
        assert_eq!(parent_from_command(&cmd), Parent::Module("isofs".into()));
        assert_eq!(
            parent_from_command("gcc -DKBUILD_MODNAME='\"proc\"' -c"),
            Parent::Vmlinux
        );
    }
}
