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

pub(crate) fn stage_name(source: &str) -> String {
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

fn object_of(source: &str) -> Result<String, BuildError> {
    match source.strip_suffix(".c") {
        Some(stem) => Ok(format!("{stem}.o")),
        None => Err(BuildError::Unsupported(format!(
            "{source}: only C sources and the headers they include can be patched"
        ))),
    }
}

fn load_unit(dir: &Path, source: &str, object: String) -> Result<Unit, BuildError> {
    let command =
        fs::read_to_string(dir.join("command")).map_err(|e| BuildError::io("reading", dir, e))?;
    let deps =
        fs::read_to_string(dir.join("deps")).map_err(|e| BuildError::io("reading", dir, e))?;
    Ok(Unit {
        deps: deps.lines().map(str::to_string).collect(),
        source: source.to_string(),
        parent: parent_from_command(&command),
        object,
        command,
        pre: dir.join("pre.o"),
    })
}

/// Compiles (or reuses) the pre object of `source` and returns the unit.
pub fn prepare_unit(kernel: &Kernel, cache: &Cache, source: &str) -> Result<Unit, BuildError> {
    prepare_units(kernel, cache, &[source.to_string()], &|_, _| {})
        .pop()
        .unwrap_or_else(|| {
            Err(BuildError::Unsupported(format!(
                "{source}: nothing compiled"
            )))
        })
}

/// Compiles (or reuses) the pre objects of `sources`, all uncached ones in one kbuild run
/// (`make -jN`, so kbuild's fixed cost is paid once). `on_command(source, command)` is called
/// as soon as a unit's command is known, while kbuild is still compiling, so the caller can
/// start the patched compile at once. Results come in the order of `sources`.
pub fn prepare_units(
    kernel: &Kernel,
    cache: &Cache,
    sources: &[String],
    on_command: &(dyn Fn(&str, &str) + Sync),
) -> Vec<Result<Unit, BuildError>> {
    match prepare_units_inner(kernel, cache, sources, on_command) {
        Ok(results) => results,
        Err(e) => {
            let message = e.to_string();
            sources
                .iter()
                .map(|_| Err(BuildError::Unsupported(message.clone())))
                .collect()
        }
    }
}

fn prepare_units_inner(
    kernel: &Kernel,
    cache: &Cache,
    sources: &[String],
    on_command: &(dyn Fn(&str, &str) + Sync),
) -> Result<Vec<Result<Unit, BuildError>>, BuildError> {
    let entry = cache.entry("objects", &kernel.target().key());
    let lock = entry.lock()?;
    let tree = kernel.source_dir();
    let mut missing = Vec::new();
    for source in sources {
        let Ok(object) = object_of(source) else {
            continue;
        };
        if entry.is_done(&stage_name(source)) {
            if let Ok(unit) = load_unit(&entry.path(&stage_name(source)), source, object) {
                on_command(source, &unit.command);
            }
        } else if !missing.iter().any(|(s, _): &(String, String)| s == source) {
            missing.push((source.clone(), object));
        }
    }
    let log = entry.dir().join("make.log");
    if !missing.is_empty() {
        let jobs = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let mut make = kernel.make();
        graft_lab::kill_with_parent(&mut make);
        make.arg("V=1")
            .arg(format!("-j{jobs}"))
            .arg("-k")
            .arg(format!("KCFLAGS={SECTION_FLAGS}"))
            .args(missing.iter().map(|(_, o)| o.as_str()))
            .env("LC_ALL", "C")
            .env_remove("MAKEFLAGS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file_new(&log)?);
        let mut child = make
            .spawn()
            .map_err(|e| BuildError::io("running make in", &tree, e))?;
        let mut transcript = String::new();
        if let Some(stdout) = child.stdout.take() {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                // kbuild V=1 prints each command before running it: start the patched
                // compile of a unit as soon as its command appears.
                let command = line.trim_start();
                for (source, object) in &missing {
                    if command.contains(&format!(" -c -o {object} {source}"))
                        && !command.starts_with("if ")
                    {
                        on_command(source, command);
                    }
                }
                transcript.push_str(&line);
                transcript.push('\n');
            }
        }
        let _ = child.wait();
        let _ = fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, transcript.as_bytes()));
    }
    let mut results = Vec::with_capacity(sources.len());
    for source in sources {
        let object = match object_of(source) {
            Ok(o) => o,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        let stage = stage_name(source);
        let built = tree.join(&object);
        let cmd_file = cmd_file_of(&tree, &object);
        let outcome = lock.ensure(&stage, |dir| -> Result<(), BuildError> {
            if !built.is_file() {
                return Err(BuildError::CompileFailed {
                    unit: source.to_string(),
                    which: "unpatched",
                    tail: tail(&log),
                });
            }
            fs::create_dir_all(dir).map_err(|e| BuildError::io("creating", dir, e))?;
            let text = fs::read_to_string(&cmd_file)
                .map_err(|e| BuildError::io("reading", &cmd_file, e))?;
            let command = command_from_cmd_file(&text, &object).ok_or_else(|| {
                BuildError::Unsupported(format!("{}: no command for {object}", cmd_file.display()))
            })?;
            fs::write(dir.join("command"), &command)
                .map_err(|e| BuildError::io("writing", dir, e))?;
            let deps = graft_kernel::deps_from_cmd_file(&text).join("\n");
            fs::write(dir.join("deps"), deps).map_err(|e| BuildError::io("writing", dir, e))?;
            fs::rename(&built, dir.join("pre.o"))
                .map_err(|e| BuildError::io("moving", &built, e))?;
            // Leave the cached tree as prepared: the farm must not see this unit's outputs.
            let _ = fs::remove_file(&cmd_file);
            Ok(())
        });
        let unit = outcome
            .map_err(|e| match e {
                graft_cache::CacheError::Stage { cause, .. } => {
                    match cause.downcast::<BuildError>() {
                        Ok(inner) => *inner,
                        Err(other) => BuildError::Unsupported(other.to_string()),
                    }
                }
                other => BuildError::Cache(other),
            })
            .and_then(|_| load_unit(&entry.path(&stage), source, object));
        results.push(unit);
    }
    Ok(results)
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

fn log_file_new(path: &Path) -> Result<fs::File, BuildError> {
    fs::File::create(path).map_err(|e| BuildError::io("creating", path, e))
}

fn log_file(path: &Path) -> Result<fs::File, BuildError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| BuildError::io("opening", path, e))
}

/// What to show of a failed compile: the compiler's first errors with a line of context each
/// (a later `objtool: Can't open ...` only follows from them), else the log's end.
fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    first_errors(&text)
}

pub(crate) fn first_errors(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let errors: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("error:") || l.contains("fatal error"))
        .map(|(i, _)| i)
        .take(4)
        .collect();
    if errors.is_empty() {
        return lines[lines.len().saturating_sub(12)..].join("\n");
    }
    let mut shown: Vec<usize> = Vec::new();
    for i in errors {
        for k in i.saturating_sub(1)..=(i + 2).min(lines.len() - 1) {
            if !shown.contains(&k) {
                shown.push(k);
            }
        }
    }
    shown
        .iter()
        .map(|&k| lines[k])
        .collect::<Vec<_>>()
        .join("\n")
}

/// Compiles the patched version of `unit` in `farm`; returns the object's path.
pub fn compile_post(unit: &Unit, farm: &Path) -> Result<PathBuf, BuildError> {
    compile_post_command(&unit.source, &unit.command, farm)
}

/// Compiles the patched `source` in `farm` with kbuild's `command` for it.
pub fn compile_post_command(
    source: &str,
    command: &str,
    farm: &Path,
) -> Result<PathBuf, BuildError> {
    let object = object_of(source)?;
    let log = farm.join(format!("{}.log", object.replace('/', "__")));
    let mut sh = Command::new("sh");
    graft_lab::kill_with_parent(&mut sh);
    let status = sh
        .arg("-c")
        .arg(command)
        .current_dir(farm)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(log_file_new(&log)?)
        .stderr(log_file(&log)?)
        .status()
        .map_err(|e| BuildError::io("compiling in", farm, e))?;
    let out = farm.join(&object);
    if !status.success() || !out.is_file() {
        return Err(BuildError::CompileFailed {
            unit: source.to_string(),
            which: "patched",
            tail: tail(&log),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a failed compile showed only objtool's complaint about the missing object,
    /// not the compiler's error above it.
    #[test]
    fn a_compile_failure_shows_the_first_compiler_error() {
        let log = "  CC net/ipv6/netfilter.o\nnet/ipv6/netfilter.c:99:10: fatal error: kpatch-macros.h: No such file or directory\n   99 | #include \"kpatch-macros.h\"\ncompilation terminated.\nobjtool: Can't open 'net/ipv6/netfilter.o'\n";
        let shown = first_errors(log);
        assert!(shown.contains("fatal error: kpatch-macros.h"), "{shown}");
        assert!(first_errors("a\nb\n").contains('b'));
    }

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
