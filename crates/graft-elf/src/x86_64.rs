//! x86-64 relocation facts: how many bytes a relocation patches and whether it is relative to
//! the place it patches. The differ masks exactly these bytes when comparing code, and the
//! run-pre matcher decodes the same bytes from the running kernel's image.

use object::elf;

/// What a relocation type does to the bytes at its offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelocKind {
    /// Bytes written.
    pub size: usize,
    /// Whether the value is `S + A - P` (else `S + A`).
    pub pc_relative: bool,
    /// Whether the value is sign-extended when read back.
    pub signed: bool,
}

/// The relocation kinds kernel objects use; None for anything else (which callers refuse).
pub fn reloc_kind(r_type: u32) -> Option<RelocKind> {
    let kind = |size, pc_relative, signed| {
        Some(RelocKind {
            size,
            pc_relative,
            signed,
        })
    };
    match r_type {
        // Written by objtool where it turned a jump-label jump into a NOP: relocates nothing.
        elf::R_X86_64_NONE => kind(0, false, false),
        elf::R_X86_64_64 => kind(8, false, false),
        elf::R_X86_64_PC64 => kind(8, true, true),
        elf::R_X86_64_PC32 | elf::R_X86_64_PLT32 => kind(4, true, true),
        elf::R_X86_64_32 => kind(4, false, false),
        elf::R_X86_64_32S => kind(4, false, true),
        _ => None,
    }
}

/// Which of `len` bytes starting at `start` relocations patch: the bytes a comparison of two
/// objects (or of an object and a linked image) must skip. Err names the first relocation type
/// graft does not know (callers refuse it rather than guess its size).
pub fn relocated_bytes<'a>(
    relocs: impl IntoIterator<Item = &'a crate::Reloc>,
    start: u64,
    len: usize,
) -> Result<Vec<bool>, u32> {
    let mut masked = vec![false; len];
    for r in relocs {
        let kind = reloc_kind(r.r_type).ok_or(r.r_type)?;
        let Some(at) = r.offset.checked_sub(start) else {
            continue;
        };
        for m in masked.iter_mut().skip(at as usize).take(kind.size) {
            *m = true;
        }
    }
    Ok(masked)
}

/// Reads the value stored at a relocation's place, sign- or zero-extended.
pub fn read_value(bytes: &[u8], kind: RelocKind) -> Option<i64> {
    Some(match (kind.size, kind.signed) {
        (8, _) => i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?),
        (4, true) => i64::from(i32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)),
        (4, false) => i64::from(u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?)),
        _ => return None,
    })
}

/// The address a relocation's place refers to, given the value found there in a linked image
/// at address `place`: `S + A` recovered from `S + A - P` or `S + A`.
pub fn referenced_address(value: i64, kind: RelocKind, place: u64) -> u64 {
    if kind.pc_relative {
        place.wrapping_add(value as u64)
    } else {
        value as u64
    }
}

/// A printable name for a relocation type.
pub fn reloc_name(r_type: u32) -> String {
    match r_type {
        elf::R_X86_64_NONE => "R_X86_64_NONE".into(),
        elf::R_X86_64_64 => "R_X86_64_64".into(),
        elf::R_X86_64_PC64 => "R_X86_64_PC64".into(),
        elf::R_X86_64_PC32 => "R_X86_64_PC32".into(),
        elf::R_X86_64_PLT32 => "R_X86_64_PLT32".into(),
        elf::R_X86_64_32 => "R_X86_64_32".into(),
        elf::R_X86_64_32S => "R_X86_64_32S".into(),
        other => format!("relocation type {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pc_relative_round_trip() {
        let kind = reloc_kind(elf::R_X86_64_PLT32).unwrap();
        // call at 0x1000, field at 0x1001, target 0x2000, addend -4: value = S + A - P.
        let value: i32 = 0x2000 - 4 - 0x1001;
        let read = read_value(&value.to_le_bytes(), kind).unwrap();
        assert_eq!(
            referenced_address(read, kind, 0x1001).wrapping_sub(-4i64 as u64),
            0x2000
        );
        assert!(reloc_kind(elf::R_X86_64_GOTPCREL).is_none());
    }

    #[test]
    fn relocated_bytes_are_masked_and_unknown_types_named() {
        let r = |offset, r_type| crate::Reloc {
            offset,
            r_type,
            symbol: 1,
            addend: 0,
        };
        let relocs = [r(11, elf::R_X86_64_PLT32), r(2, elf::R_X86_64_NONE)];
        let mask = relocated_bytes(&relocs, 10, 8).unwrap();
        assert_eq!(mask, [false, true, true, true, true, false, false, false]);
        let unknown = [r(10, elf::R_X86_64_GOTPCREL)];
        assert_eq!(
            relocated_bytes(&unknown, 10, 4),
            Err(elf::R_X86_64_GOTPCREL)
        );
    }
}
