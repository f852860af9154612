//! The kernel's interfaces for livepatching: `/sys/kernel/livepatch`, the running kernel's
//! identity, and loading and unloading modules.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use object::{Object, ObjectSection};

use crate::HostError;

/// Where the livepatch core publishes its patches.
pub const LIVEPATCH_DIR: &str = "/sys/kernel/livepatch";
/// The running kernel's ELF notes (its GNU build-id among them).
pub const KERNEL_NOTES: &str = "/sys/kernel/notes";
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const PROC_MODULES: &str = "/proc/modules";

/// The running kernel, as a manifest names its target.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RunningKernel {
    /// `uname -r`.
    pub release: String,
    /// GNU build-id of the kernel image, lower-case hex.
    pub build_id: String,
}

/// Reads the running kernel's release and build-id.
pub fn running_kernel() -> Result<RunningKernel, HostError> {
    let release = fs::read_to_string(OSRELEASE)
        .map_err(|e| HostError::io("reading", OSRELEASE, e))?
        .trim()
        .to_string();
    let notes = fs::read(KERNEL_NOTES).map_err(|e| HostError::io("reading", KERNEL_NOTES, e))?;
    let build_id = gnu_build_id(&notes).ok_or_else(|| HostError::State {
        path: KERNEL_NOTES.into(),
        reason: "the kernel's notes carry no GNU build-id".into(),
    })?;
    Ok(RunningKernel { release, build_id })
}

/// The GNU build-id in a sequence of ELF notes (native endianness, 4-byte aligned).
pub fn gnu_build_id(notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |at: usize| -> Option<u32> {
        let bytes = notes.get(at..at + 4)?;
        Some(u32::from_ne_bytes(bytes.try_into().ok()?))
    };
    let align = |n: usize| (n + 3) & !3;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = word(at)? as usize;
        let descsz = word(at + 4)? as usize;
        let kind = word(at + 8)?;
        let name = notes.get(at + 12..at + 12 + namesz)?;
        let desc_at = at + 12 + align(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name == b"GNU\0" {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        at = desc_at + align(descsz);
    }
    None
}

/// The livepatch directory, or the error that the kernel has none.
pub fn livepatch_dir() -> Result<PathBuf, HostError> {
    let dir = PathBuf::from(LIVEPATCH_DIR);
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(HostError::NoLivepatch { path: dir })
    }
}

/// A function a loaded patch replaces, as sysfs names it (`name,sympos`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct PatchFunction {
    /// Function name.
    pub name: String,
    /// Position among same-named symbols (sysfs shows 1 for a unique name).
    pub sympos: u32,
}

/// An object (vmlinux or a module) a loaded patch patches.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PatchObject {
    /// `vmlinux` or a module name.
    pub name: String,
    /// Whether the object is loaded and its functions redirected.
    pub patched: bool,
    /// Its functions.
    pub functions: Vec<PatchFunction>,
}

/// A livepatch registered with the kernel.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LoadedPatch {
    /// Its name (the module's name).
    pub name: String,
    /// `enabled`: patching (1) or unpatching (0).
    pub enabled: bool,
    /// `transition`: tasks are still being moved.
    pub transition: bool,
    /// What it patches.
    pub objects: Vec<PatchObject>,
}

impl LoadedPatch {
    /// `(object, function)` pairs.
    pub fn functions(&self) -> impl Iterator<Item = (&str, &PatchFunction)> {
        self.objects
            .iter()
            .flat_map(|o| o.functions.iter().map(move |f| (o.name.as_str(), f)))
    }
}

/// Whether a sysfs read failed because its object is gone: removed (`ENOENT`), or being
/// removed while it was read (`ENODEV`: a livepatch's kobject after its unpatching finished,
/// before its directory disappears).
pub fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENODEV)
}

fn read_flag(path: &Path) -> io::Result<bool> {
    Ok(fs::read_to_string(path)?.trim() == "1")
}

/// Reads one patch; `None` when it is not (or no longer) registered.
pub fn patch(name: &str) -> Result<Option<LoadedPatch>, HostError> {
    let dir = livepatch_dir()?.join(name);
    match read_patch(&dir, name) {
        Ok(p) => Ok(Some(p)),
        Err(e) if is_gone(&e) => Ok(None),
        Err(e) => Err(HostError::io("reading", dir, e)),
    }
}

fn read_patch(dir: &Path, name: &str) -> io::Result<LoadedPatch> {
    let enabled = read_flag(&dir.join("enabled"))?;
    let transition = read_flag(&dir.join("transition"))?;
    let mut objects = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let object_dir = entry.path();
        let patched = read_flag(&object_dir.join("patched")).unwrap_or(false);
        let mut functions = Vec::new();
        for f in fs::read_dir(&object_dir)? {
            let f = f?;
            if !f.file_type()?.is_dir() {
                continue;
            }
            let dir_name = f.file_name().to_string_lossy().into_owned();
            let (name, pos) = dir_name.rsplit_once(',').unwrap_or((&dir_name, "0"));
            functions.push(PatchFunction {
                name: name.to_string(),
                sympos: pos.parse().unwrap_or(0),
            });
        }
        functions.sort();
        objects.push(PatchObject {
            name: entry.file_name().to_string_lossy().into_owned(),
            patched,
            functions,
        });
    }
    objects.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(LoadedPatch {
        name: name.to_string(),
        enabled,
        transition,
        objects,
    })
}

/// Every registered patch, oldest first (the order the kernel stacks them in, which is the
/// load order of `modules`, from [`loaded_modules`]).
pub fn loaded_patches(modules: &[LoadedModule]) -> Result<Vec<LoadedPatch>, HostError> {
    patches_in(&livepatch_dir()?, modules)
}

/// The patches of a livepatch directory (`/sys/kernel/livepatch`, or a recorded copy of one),
/// ordered by `modules`.
pub fn patches_in(dir: &Path, modules: &[LoadedModule]) -> Result<Vec<LoadedPatch>, HostError> {
    let dir = dir.to_path_buf();
    let entries = fs::read_dir(&dir).map_err(|e| HostError::io("listing", &dir, e))?;
    let mut patches = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::io("listing", &dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match read_patch(&entry.path(), &name) {
            Ok(p) => patches.push(p),
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(HostError::io("reading", entry.path(), e)),
        }
    }
    let rank = |name: &str| {
        modules
            .iter()
            .position(|m| m.name == name)
            .unwrap_or(usize::MAX)
    };
    patches.sort_by_key(|p| rank(&p.name));
    Ok(patches)
}

/// Writes a livepatch control file (`enabled`, `force`).
pub fn write_control(
    patch: &str,
    file: &'static str,
    value: &'static str,
) -> Result<(), HostError> {
    let path = livepatch_dir()?.join(patch).join(file);
    fs::write(&path, value).map_err(|cause| HostError::Control { path, value, cause })
}

/// A module in `/proc/modules`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LoadedModule {
    /// Name.
    pub name: String,
    /// `Live`, `Loading` or `Unloading`.
    pub state: String,
    /// Carries the livepatch taint (`K`).
    pub livepatch: bool,
}

/// Loaded modules, oldest first.
pub fn loaded_modules() -> Result<Vec<LoadedModule>, HostError> {
    let text =
        fs::read_to_string(PROC_MODULES).map_err(|e| HostError::io("reading", PROC_MODULES, e))?;
    Ok(parse_proc_modules(&text))
}

/// `/proc/modules` text as modules, oldest first.
pub fn parse_proc_modules(text: &str) -> Vec<LoadedModule> {
    // The kernel lists the most recently loaded module first.
    let mut modules: Vec<LoadedModule> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let name = fields.next()?.to_string();
            let state = fields.nth(3)?.to_string();
            let taints = line
                .rsplit_once('(')
                .filter(|(_, t)| t.ends_with(')'))
                .map(|(_, t)| t.trim_end_matches(')').to_string())
                .unwrap_or_default();
            Some(LoadedModule {
                name,
                state,
                livepatch: taints.contains('K'),
            })
        })
        .collect();
    modules.reverse();
    modules
}

/// Whether a module of that name is loaded.
pub fn module_loaded(name: &str) -> Result<bool, HostError> {
    Ok(loaded_modules()?.iter().any(|m| m.name == name))
}

/// Loads a module from exactly these bytes: they go into a memory file, sealed against any
/// further write, growth or shrinking before it is handed to `finit_module`, so what the kernel
/// reads is what graft verified, whatever happens to the file on disk meanwhile.
pub fn load_module(name: &str, bytes: &[u8]) -> io::Result<()> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    use std::io::Write;
    let fd = memfd_create(
        format!("graft:{name}"),
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = fs::File::from(fd);
    file.write_all(bytes)?;
    fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    let params = c"";
    // SAFETY: finit_module(2) takes a file descriptor we own, a NUL-terminated parameter string
    // and flags; none of the pointers are retained after the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            file.as_raw_fd(),
            params.as_ptr(),
            0 as libc::c_int,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unloads a module, retrying while the livepatch core still holds it (it releases a disabled
/// patch's module asynchronously) up to `wait`.
pub fn unload_module(name: &str, wait: Duration) -> Result<(), HostError> {
    let cname = CString::new(name).map_err(|e| HostError::Unload {
        name: name.to_string(),
        cause: io::Error::other(e),
    })?;
    let started = Instant::now();
    loop {
        // SAFETY: delete_module(2) takes a NUL-terminated name that outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_delete_module,
                cname.as_ptr(),
                (libc::O_NONBLOCK) as libc::c_uint,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let cause = io::Error::last_os_error();
        match cause.raw_os_error() {
            Some(libc::ENOENT) => return Ok(()),
            Some(libc::EAGAIN | libc::EBUSY) if started.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                return Err(HostError::Unload {
                    name: name.to_string(),
                    cause,
                })
            }
        }
    }
}

/// The `.modinfo` key/value pairs of a kernel module's bytes.
pub fn modinfo(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, String>, HostError> {
    let bad = |reason: String| HostError::BadModule {
        module: path.to_path_buf(),
        reason,
    };
    let file = object::File::parse(bytes)
        .map_err(|e| bad(format!("not a valid ELF object ({e}); truncated?")))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo section: not a kernel module".into()))?;
    let data = section
        .data()
        .map_err(|e| bad(format!(".modinfo unreadable ({e}); truncated?")))?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

/// The name of a livepatch module (what sysfs calls the patch), from its `.modinfo`.
pub fn livepatch_name(path: &Path, info: &BTreeMap<String, String>) -> Result<String, HostError> {
    let bad = |reason: &str| HostError::BadModule {
        module: path.to_path_buf(),
        reason: reason.to_string(),
    };
    if info.get("livepatch").map(String::as_str) != Some("Y") {
        return Err(bad("not a livepatch module (.modinfo lacks livepatch=Y)"));
    }
    info.get("name")
        .cloned()
        .ok_or_else(|| bad(".modinfo has no name"))
}

/// The kernel command line.
pub fn kernel_cmdline() -> Result<String, HostError> {
    fs::read_to_string("/proc/cmdline").map_err(|e| HostError::io("reading", "/proc/cmdline", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enodev_from_a_patch_being_freed_counts_as_gone() {
        // Reconciling a killed, stalled apply read a patch's `transition` while its kobject
        // was being removed and failed with "No such device" instead of seeing it finished.
        assert!(is_gone(&io::Error::from_raw_os_error(libc::ENODEV)));
        assert!(is_gone(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(!is_gone(&io::Error::from_raw_os_error(libc::EACCES)));
    }

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(name);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v.extend_from_slice(desc);
        v.resize(v.len().div_ceil(4) * 4, 0);
        v
    }

    #[test]
    fn build_id_is_found_after_other_notes() {
        let mut notes = note(b"Xen\0", 1, &[1, 2, 3]);
        notes.extend(note(b"GNU\0", 3, &[0xeb, 0x4f, 0x00, 0x37]));
        assert_eq!(gnu_build_id(&notes).as_deref(), Some("eb4f0037"));
    }

    #[test]
    fn truncated_notes_have_no_build_id() {
        let notes = note(b"GNU\0", 3, &[0xeb, 0x4f, 0x00, 0x37]);
        assert_eq!(gnu_build_id(&notes[..notes.len() - 6]), None);
    }
}
