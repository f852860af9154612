//! A writer for the kernel's initramfs format: an uncompressed cpio archive in the "newc"
//! layout (see the kernel's Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! The archive is left uncompressed on purpose: under TCG emulation the guest decompresses far
//! slower than QEMU copies bytes into guest memory, so compression only costs boot time.

use std::collections::BTreeSet;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Builds an initramfs in memory. Parent directories are added automatically, before their
/// children, because the kernel's unpacker does not create missing parents.
#[derive(Debug, Default)]
pub struct Initramfs {
    out: Vec<u8>,
    dirs: BTreeSet<String>,
    names: BTreeSet<String>,
    next_ino: u32,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, S_IFDIR | 0o755, 2, 0, &[]);
    }

    /// Adds a regular file with `mode` permission bits, replacing nothing: a second file at the
    /// same path is an error so that two `--file` options cannot silently collide.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let path = self.claim(path)?;
        self.entry(&path, S_IFREG | (mode & 0o7777), 1, 0, data);
        Ok(())
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let path = self.claim(path)?;
        self.entry(&path, S_IFLNK | 0o777, 1, 0, target.as_bytes());
        Ok(())
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) -> io::Result<()> {
        let path = self.claim(path)?;
        self.entry(&path, S_IFCHR | 0o600, 1, (major << 8) | minor, &[]);
        Ok(())
    }

    /// Whether a file, link or device exists at `path`.
    pub fn contains(&self, path: &str) -> bool {
        self.names.contains(path.trim_matches('/'))
    }

    fn claim(&mut self, path: &str) -> io::Result<String> {
        let path = path.trim_matches('/').to_string();
        if path.is_empty()
            || path
                .split('/')
                .any(|p| p == ".." || p == "." || p.is_empty())
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("`{path}` is not a valid path inside the guest"),
            ));
        }
        if self.dirs.contains(&path) || !self.names.insert(path.clone()) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("/{path} is added to the guest twice"),
            ));
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        Ok(path)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: u32, data: &[u8]) {
        self.next_ino += 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so identical inputs give identical archives
            data.len() as u32,
            0,
            0,
            rdev >> 8,
            rdev & 0xff,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for field in fields {
            self.out
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    /// Finishes the archive with its trailer and writes it.
    pub fn write_to(mut self, mut sink: impl Write) -> io::Result<()> {
        self.entry("TRAILER!!!", 0, 1, 0, &[]);
        sink.write_all(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<(String, u32)> {
        let mut at = 0;
        let mut out = Vec::new();
        while at < archive.len() {
            assert_eq!(&archive[at..at + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&archive[at + 6 + i * 8..at + 14 + i * 8]).unwrap();
                u32::from_str_radix(s, 16).unwrap()
            };
            let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
            let name_at = at + 110;
            let name = std::str::from_utf8(&archive[name_at..name_at + namesize - 1]).unwrap();
            out.push((name.to_string(), mode));
            let data_at = (name_at + namesize).next_multiple_of(4);
            at = (data_at + size).next_multiple_of(4);
        }
        out
    }

    #[test]
    fn parents_come_first_and_trailer_last() {
        let mut ramfs = Initramfs::new();
        ramfs
            .file("/lib/modules/6.1/kernel/a.ko", 0o644, b"elf")
            .unwrap();
        ramfs.symlink("bin/sh", "busybox").unwrap();
        let mut buf = Vec::new();
        ramfs.write_to(&mut buf).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let names: Vec<String> = names(&buf).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "lib",
                "lib/modules",
                "lib/modules/6.1",
                "lib/modules/6.1/kernel",
                "lib/modules/6.1/kernel/a.ko",
                "bin",
                "bin/sh",
                "TRAILER!!!"
            ]
        );
    }

    #[test]
    fn duplicate_and_escaping_paths_are_refused() {
        let mut ramfs = Initramfs::new();
        ramfs.file("/root/x", 0o644, b"1").unwrap();
        let err = ramfs.file("root/x", 0o644, b"2").unwrap_err();
        assert_eq!(err.to_string(), "/root/x is added to the guest twice");
        assert!(ramfs.file("/root/../etc/passwd", 0o644, b"").is_err());
    }
}
