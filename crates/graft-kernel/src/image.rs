//! The code image: the vmlinux ELF inside a bzImage (`vmlinuz`), and its GNU build-id.
//!
//! A bzImage is a real-mode setup block followed by a self-decompressing loader; since boot
//! protocol 2.08 its header says where the compressed vmlinux lies (`payload_offset`,
//! `payload_length`). The payload's compression is recognised by its magic bytes, so any
//! kernel build configuration that graft can decompress works, not just the one Debian uses.

use std::io::Read;
use std::path::Path;

use object::{Object, ObjectSection};

use crate::KernelError;

/// Compression formats the kernel can use for its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (CONFIG_KERNEL_GZIP)
    Gzip,
    /// xz (CONFIG_KERNEL_XZ)
    Xz,
    /// zstd (CONFIG_KERNEL_ZSTD)
    Zstd,
    /// lzma, bzip2, lzo or lz4: recognised, not supported.
    Other(&'static str),
}

impl Compression {
    fn sniff(data: &[u8]) -> Option<Self> {
        Some(if data.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else if data.starts_with(&[0x5d, 0, 0]) {
            Compression::Other("lzma")
        } else if data.starts_with(b"BZh") {
            Compression::Other("bzip2")
        } else if data.starts_with(&[0x89, b'L', b'Z', b'O']) {
            Compression::Other("lzo")
        } else if data.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
            Compression::Other("lz4")
        } else {
            return None;
        })
    }

    /// The format's name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Other(name) => name,
        }
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at + 4)?;
    Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// The compressed payload of a bzImage and its compression.
pub fn payload<'a>(path: &Path, bzimage: &'a [u8]) -> Result<(&'a [u8], Compression), KernelError> {
    let bad = |reason: String| KernelError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("not a bzImage (no `HdrS` boot header at 0x202)".into()));
    }
    let version = u16::from_le_bytes([bzimage[0x206], bzimage[0x207]]);
    if version < 0x208 {
        return Err(bad(format!(
            "boot protocol {}.{:02} predates payload fields (2.08)",
            version >> 8,
            version & 0xff
        )));
    }
    let setup_sects = match bzimage.get(0x1f1).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => return Err(bad("truncated boot header".into())),
    };
    let (offset, length) = match (read_u32(bzimage, 0x248), read_u32(bzimage, 0x24c)) {
        (Some(o), Some(l)) => (o as usize, l as usize),
        _ => return Err(bad("truncated boot header".into())),
    };
    let start = (setup_sects + 1) * 512 + offset;
    let payload = bzimage.get(start..start + length).ok_or_else(|| {
        bad(format!(
            "payload {start:#x}+{length:#x} lies past the end of the file"
        ))
    })?;
    let compression = Compression::sniff(payload)
        .ok_or_else(|| bad("payload compression not recognised".into()))?;
    Ok((payload, compression))
}

/// Extracts the vmlinux ELF from a bzImage. Returns it and the payload's compression.
pub fn extract_vmlinux(path: &Path, bzimage: &[u8]) -> Result<(Vec<u8>, Compression), KernelError> {
    let bad = |reason: String| KernelError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let (payload, compression) = payload(path, bzimage)?;
    let mut out = Vec::with_capacity(payload.len() * 5);
    let result = match compression {
        Compression::Gzip => flate2::read::GzDecoder::new(payload).read_to_end(&mut out),
        Compression::Xz => decompress_xz(payload, &mut out),
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(payload)
            .map(|d| d.single_frame())
            .and_then(|mut d| d.read_to_end(&mut out)),
        Compression::Other(name) => {
            return Err(bad(format!(
                "{name}-compressed kernels are not supported (gzip, xz and zstd are)"
            )))
        }
    };
    result.map_err(|e| {
        bad(format!(
            "{} payload does not decompress: {e}",
            compression.name()
        ))
    })?;
    if !out.starts_with(b"\x7fELF") {
        return Err(bad("the decompressed payload is not an ELF file".into()));
    }
    Ok((out, compression))
}

/// Decompresses one xz stream, ignoring what follows it: the kernel build appends the
/// uncompressed size after the stream, which stream readers reject as corruption.
fn decompress_xz(input: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0).map_err(std::io::Error::other)?;
    loop {
        if out.capacity() - out.len() < 1 << 20 {
            out.reserve(16 << 20);
        }
        let consumed = stream.total_in() as usize;
        let rest = input.get(consumed..).unwrap_or_default();
        match stream
            .process_vec(rest, out, Action::Run)
            .map_err(std::io::Error::other)?
        {
            Status::StreamEnd => return Ok(out.len()),
            Status::Ok | Status::GetCheck => {}
            Status::MemNeeded => return Err(std::io::Error::other("xz decoder needs more memory")),
        }
        if rest.is_empty() && stream.total_in() as usize == consumed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "truncated xz stream",
            ));
        }
    }
}

/// The GNU build-id of an ELF image, as lower-case hex.
pub fn build_id(path: &Path, elf: &[u8]) -> Result<String, KernelError> {
    let bad = |reason: String| KernelError::BadImage {
        path: path.to_path_buf(),
        reason,
    };
    let file = object::File::parse(elf).map_err(|e| bad(format!("not a valid ELF file: {e}")))?;
    let id = file
        .build_id()
        .map_err(|e| bad(format!("malformed notes: {e}")))?
        .ok_or_else(|| bad("no GNU build-id note".into()))?;
    Ok(hex::encode(id))
}

/// The GNU build-id inside the note blob the running kernel exposes as `/sys/kernel/notes`.
pub fn build_id_from_notes(notes: &[u8]) -> Option<String> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = read_u32(notes, at)? as usize;
        let descsz = read_u32(notes, at + 4)? as usize;
        let kind = read_u32(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at + namesz.next_multiple_of(4);
        let name = notes.get(name_at..name_at + namesz)?;
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == NT_GNU_BUILD_ID && name.starts_with(b"GNU") {
            return Some(hex::encode(desc));
        }
        at = desc_at + descsz.next_multiple_of(4);
    }
    None
}

/// The address of the `.text` section (where `_text` is linked), for mapping symbols to bytes.
pub fn text_address(path: &Path, elf: &[u8]) -> Result<u64, KernelError> {
    let file = object::File::parse(elf).map_err(|e| KernelError::BadImage {
        path: path.to_path_buf(),
        reason: format!("not a valid ELF file: {e}"),
    })?;
    file.section_by_name(".text")
        .map(|s| s.address())
        .ok_or_else(|| KernelError::BadImage {
            path: path.to_path_buf(),
            reason: "no .text section".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_a_bzimage() {
        let err = extract_vmlinux(Path::new("x"), &[0u8; 4096]).unwrap_err();
        assert!(err.to_string().contains("not a bzImage"), "{err}");
    }

    #[test]
    fn truncated_payload_is_reported() {
        let mut image = vec![0u8; 0x400];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206] = 0x0f;
        image[0x207] = 0x02;
        image[0x1f1] = 1;
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&0x1000u32.to_le_bytes());
        let err = extract_vmlinux(Path::new("vmlinuz"), &image).unwrap_err();
        assert!(
            err.to_string().contains("past the end of the file"),
            "{err}"
        );
    }

    #[test]
    fn notes_blob() {
        let mut notes = Vec::new();
        for (kind, name, desc) in [
            (1u32, &b"Xen\0"[..], &[1u8, 2][..]),
            (3, b"GNU\0", &[0xab, 0xcd, 0xef]),
        ] {
            notes.extend((name.len() as u32).to_le_bytes());
            notes.extend((desc.len() as u32).to_le_bytes());
            notes.extend(kind.to_le_bytes());
            notes.extend(name);
            notes.resize(notes.len().next_multiple_of(4), 0);
            notes.extend(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
        assert_eq!(build_id_from_notes(&notes).as_deref(), Some("abcdef"));
        assert_eq!(build_id_from_notes(&notes[..10]), None);
    }
}
