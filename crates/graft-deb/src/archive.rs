//! Unpacking .deb packages (an `ar` archive around a compressed tar) and plain tarballs.
//!
//! Packages are unpacked into an arbitrary directory, not `/`, so absolute symlinks inside them
//! (`/lib/modules/<release>/build -> /usr/src/...`) would point at the host; they are rewritten
//! to stay inside the unpacked tree.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use graft_progress::{Progress, Task, Unit};

use crate::DebError;

/// What an unpack produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Regular files written.
    pub files: u64,
    /// Bytes of file contents written.
    pub bytes: u64,
    /// The regular files' paths below the destination, in archive order.
    pub members: Vec<String>,
}

/// Counts bytes read through it, to drive a progress bar from the compressed side.
struct Counting<'a, R> {
    inner: R,
    read: u64,
    task: &'a mut dyn Task,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        // Updating on every read is cheap: renderers rate-limit drawing themselves.
        self.task.set(self.read);
        Ok(n)
    }
}

/// Compression of a stream, recognised by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

fn sniff(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(Compression::Xz)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Compression::Zstd)
    } else if head.len() >= 262 && &head[257..262] == b"ustar" {
        Some(Compression::None)
    } else {
        None
    }
}

fn decompressor<'a, R: Read + 'a>(kind: Compression, reader: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match kind {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(reader)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(reader)?),
    })
}

/// Unpacks the data of a .deb into `dest`, rewriting absolute symlinks to stay inside it.
pub fn unpack_deb(
    deb: &Path,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<UnpackStats, DebError> {
    let bad = |reason: String| DebError::BadArchive {
        path: deb.to_path_buf(),
        reason,
    };
    let file = File::open(deb).map_err(|e| DebError::io("opening", deb, e))?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    while let Some(member) = archive.next_entry() {
        let member = member.map_err(|e| bad(format!("not a Debian package: {e}")))?;
        let name = String::from_utf8_lossy(member.header().identifier()).into_owned();
        if !name.starts_with("data.tar") {
            continue;
        }
        let size = member.header().size();
        let label = format!(
            "unpack {}",
            deb.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let mut task = progress.start(&label, Some(size), Unit::Bytes);
        let mut reader = BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: member,
                read: 0,
                task: task.as_mut(),
            },
        );
        let head = peek(&mut reader).map_err(|e| DebError::io("reading", deb, e))?;
        let kind = sniff(head).ok_or_else(|| bad(format!("{name}: unknown compression")))?;
        let stream =
            decompressor(kind, reader).map_err(|e| DebError::io("decompressing", deb, e))?;
        let stats = unpack_tar_stream(stream, dest, 0).map_err(|e| match e {
            DebError::BadArchive { reason, .. } => bad(format!("{name}: {reason}")),
            other => other,
        })?;
        relink_absolute_symlinks(dest)?;
        task.finish(&format!("{} files", stats.files));
        return Ok(stats);
    }
    Err(bad("no data.tar member: not a Debian binary package".into()))
}

fn peek<R: Read>(reader: &mut BufReader<R>) -> io::Result<&[u8]> {
    use std::io::BufRead;
    reader.fill_buf()
}

/// Opens a (possibly compressed) tarball as a decompressed stream with a progress task named
/// `verb <file name>`, and runs `use_stream` on it. Errors about the archive name `tarball`.
fn with_tar_stream<T>(
    tarball: &Path,
    verb: &str,
    progress: &dyn Progress,
    use_stream: impl FnOnce(Box<dyn Read + '_>) -> Result<T, DebError>,
    summary: impl FnOnce(&T) -> String,
) -> Result<T, DebError> {
    let file = File::open(tarball).map_err(|e| DebError::io("opening", tarball, e))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let label = format!(
        "{verb} {}",
        tarball
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let mut task = progress.start(&label, size, Unit::Bytes);
    let result = {
        let mut reader = BufReader::with_capacity(
            1 << 20,
            Counting {
                inner: file,
                read: 0,
                task: task.as_mut(),
            },
        );
        let head = peek(&mut reader).map_err(|e| DebError::io("reading", tarball, e))?;
        let kind = sniff(head).ok_or_else(|| DebError::BadArchive {
            path: tarball.to_path_buf(),
            reason: "not a tar archive (unknown compression)".into(),
        })?;
        let stream =
            decompressor(kind, reader).map_err(|e| DebError::io("decompressing", tarball, e))?;
        use_stream(stream).map_err(|e| match e {
            DebError::BadArchive { reason, .. } => DebError::BadArchive {
                path: tarball.to_path_buf(),
                reason,
            },
            other => other,
        })?
    };
    task.finish(&summary(&result));
    Ok(result)
}

/// Unpacks a (possibly compressed) tarball into `dest`, dropping the first `strip` path
/// components of each member, like `tar --strip-components`.
pub fn unpack_tarball(
    tarball: &Path,
    dest: &Path,
    strip: usize,
    progress: &dyn Progress,
) -> Result<UnpackStats, DebError> {
    with_tar_stream(
        tarball,
        "unpack",
        progress,
        |stream| unpack_tar_stream(stream, dest, strip),
        |stats| format!("{} files", stats.files),
    )
}

/// Reads the regular files of a (possibly compressed) tarball without writing them: `visit`
/// gets each member's path (the first `strip` components dropped) and its contents.
pub fn read_tarball(
    tarball: &Path,
    strip: usize,
    progress: &dyn Progress,
    visit: &mut dyn FnMut(&str, &mut dyn Read) -> Result<(), DebError>,
) -> Result<u64, DebError> {
    with_tar_stream(
        tarball,
        "read",
        progress,
        |stream| {
            let bad = |reason: String| DebError::BadArchive {
                path: tarball.to_path_buf(),
                reason,
            };
            let mut archive = tar::Archive::new(stream);
            let entries = archive
                .entries()
                .map_err(|e| bad(format!("corrupt tar stream: {e}")))?;
            let mut count = 0;
            for entry in entries {
                let mut entry = entry.map_err(|e| bad(format!("corrupt tar stream: {e}")))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path = entry
                    .path()
                    .map_err(|e| bad(format!("bad member name: {e}")))?
                    .into_owned();
                let relative = match safe_relative(&path, strip) {
                    Ok(Some(relative)) => relative,
                    Ok(None) => continue,
                    Err(()) => {
                        return Err(bad(format!("member {} escapes the tree", path.display())))
                    }
                };
                visit(&relative.to_string_lossy(), &mut entry)?;
                count += 1;
            }
            Ok(count)
        },
        |count| format!("{count} files"),
    )
}

fn unpack_tar_stream<R: Read>(
    stream: R,
    dest: &Path,
    strip: usize,
) -> Result<UnpackStats, DebError> {
    let bad = |reason: String| DebError::BadArchive {
        path: dest.to_path_buf(),
        reason,
    };
    fs::create_dir_all(dest).map_err(|e| DebError::io("creating", dest, e))?;
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    let mut stats = UnpackStats::default();
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("corrupt tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt tar stream: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad member name: {e}")))?
            .into_owned();
        let relative = match safe_relative(&path, strip) {
            Ok(Some(relative)) => relative,
            Ok(None) => continue,
            Err(()) => {
                return Err(bad(format!(
                    "member {} escapes the destination",
                    path.display()
                )))
            }
        };
        let target = dest.join(&relative);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|e| DebError::io("creating", parent, e))?;
        }
        let kind = entry.header().entry_type();
        if kind.is_hard_link() {
            let link = entry
                .link_name()
                .ok()
                .flatten()
                .and_then(|l| safe_relative(&l, strip).ok().flatten())
                .ok_or_else(|| bad(format!("hard link {} has a bad target", path.display())))?;
            let _ = fs::remove_file(&target);
            fs::hard_link(dest.join(link), &target)
                .map_err(|e| DebError::io("linking", &target, e))?;
            continue;
        }
        if kind.is_file() {
            stats.files += 1;
            stats.bytes += entry.size();
            stats.members.push(relative.to_string_lossy().into_owned());
        }
        entry
            .unpack(&target)
            .map_err(|e| DebError::io("unpacking", &target, e))?;
    }
    Ok(stats)
}

/// The member path below the destination: `Ok(None)` for the stripped prefix itself (`./`,
/// `linux-6.1/`), `Err` for a path that climbs out with `..`.
fn safe_relative(path: &Path, strip: usize) -> Result<Option<PathBuf>, ()> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(()),
        }
    }
    if parts.len() <= strip {
        return Ok(None);
    }
    Ok(Some(parts[strip..].iter().collect()))
}

/// Rewrites every symlink below `root` whose target is absolute into a relative link to the
/// same path inside `root`, as if `root` were `/`.
pub fn relink_absolute_symlinks(root: &Path) -> Result<(), DebError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).map_err(|e| DebError::io("listing", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DebError::io("listing", &dir, e))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(|e| DebError::io("inspecting", &path, e))?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_symlink() {
                let target =
                    fs::read_link(&path).map_err(|e| DebError::io("reading link", &path, e))?;
                if target.is_absolute() {
                    let relative = relative_link(root, &path, &target);
                    fs::remove_file(&path).map_err(|e| DebError::io("replacing link", &path, e))?;
                    std::os::unix::fs::symlink(&relative, &path)
                        .map_err(|e| DebError::io("creating link", &path, e))?;
                }
            }
        }
    }
    Ok(())
}

/// The relative path from `link`'s directory to `root` + `target`.
fn relative_link(root: &Path, link: &Path, target: &Path) -> PathBuf {
    let depth = link
        .strip_prefix(root)
        .map(|p| p.components().count().saturating_sub(1))
        .unwrap_or(0);
    let mut rel = PathBuf::new();
    for _ in 0..depth {
        rel.push("..");
    }
    rel.push(target.strip_prefix("/").unwrap_or(target));
    rel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_and_escape() {
        assert_eq!(
            safe_relative(Path::new("./a/b"), 0),
            Ok(Some(PathBuf::from("a/b")))
        );
        assert_eq!(safe_relative(Path::new("./"), 0), Ok(None));
        assert_eq!(
            safe_relative(Path::new("linux-6.1/Makefile"), 1),
            Ok(Some(PathBuf::from("Makefile")))
        );
        assert_eq!(safe_relative(Path::new("linux-6.1/"), 1), Ok(None));
        assert_eq!(safe_relative(Path::new("../etc/passwd"), 0), Err(()));
    }

    #[test]
    fn absolute_links_become_relative_inside_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/src/headers")).unwrap();
        fs::create_dir_all(root.join("lib/modules/6.1")).unwrap();
        std::os::unix::fs::symlink("/usr/src/headers", root.join("lib/modules/6.1/build")).unwrap();
        relink_absolute_symlinks(root).unwrap();
        let link = fs::read_link(root.join("lib/modules/6.1/build")).unwrap();
        assert_eq!(link, PathBuf::from("../../../usr/src/headers"));
        assert!(root.join("lib/modules/6.1/build").is_dir());
    }

    #[test]
    fn tarball_with_strip_and_a_corrupt_one() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("t.tar.gz");
        {
            let gz = flate2::write::GzEncoder::new(
                File::create(&tarball).unwrap(),
                flate2::Compression::fast(),
            );
            let mut builder = tar::Builder::new(gz);
            let data = b"obj-y += x.o\n";
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, "linux/kernel/Makefile", &data[..])
                .unwrap();
            builder.into_inner().unwrap().finish().unwrap();
        }
        let out = dir.path().join("out");
        let stats = unpack_tarball(&tarball, &out, 1, &graft_progress::Silent).unwrap();
        assert_eq!(stats.files, 1);
        assert_eq!(stats.members, ["kernel/Makefile"]);
        assert_eq!(
            fs::read_to_string(out.join("kernel/Makefile")).unwrap(),
            "obj-y += x.o\n"
        );
        let mut seen = Vec::new();
        read_tarball(&tarball, 1, &graft_progress::Silent, &mut |path, data| {
            let mut text = String::new();
            data.read_to_string(&mut text).unwrap();
            seen.push((path.to_string(), text));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            [("kernel/Makefile".to_string(), "obj-y += x.o\n".to_string())]
        );

        let junk = dir.path().join("junk.tar.xz");
        fs::write(&junk, b"this is not a tarball at all").unwrap();
        let err = unpack_tarball(&junk, &dir.path().join("out2"), 0, &graft_progress::Silent)
            .unwrap_err();
        assert!(
            err.to_string().contains("junk.tar.xz: not a tar archive"),
            "{err}"
        );
    }
}
