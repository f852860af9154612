//! Special sections: arrays of fixed-size entries that describe places in code (exception
//! table, alternatives, ORC unwind data, ...). An entry belongs to the function its *anchor*
//! relocation points into; the patch object carries exactly the entries of the functions it
//! copies.
//!
//! Entry sizes are facts of a kernel version (`struct alt_instr` is 12 bytes on 6.1 and 6.2,
//! 14 from 6.3), so the table is chosen by the target's version, and a version graft has not
//! checked is refused rather than guessed. A section the table does not know that refers to
//! copied code is refused by name ([`crate::extract`]), never dropped.

/// How to carry one special section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handling {
    /// Entries of `size` bytes whose relocation at `anchor` locates them.
    Entries {
        /// Entry size.
        size: u64,
        /// Offset of the anchoring relocation in the entry.
        anchor: u64,
    },
    /// `.orc_unwind`: entries parallel to `.orc_unwind_ip`, carried with them.
    OrcUnwind,
    /// Dropped: build-time only (`.discard.*`), or per-unit bookkeeping a patch does not need.
    Drop,
}

/// ORC unwind entries are 6 bytes (`struct orc_entry`).
pub const ORC_ENTRY_SIZE: u64 = 6;

/// The special-section layouts of one kernel version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `sizeof(struct alt_instr)`.
    alt_instr: u64,
}

impl Layout {
    /// The layouts of Linux `major.minor` on x86-64, or why graft has none.
    pub fn for_version(major: u32, minor: u32) -> Result<Self, String> {
        match (major, minor) {
            // Checked against the 6.1 sources: alt_instr { s32 instr_offset,
            // repl_offset; u16 cpuid; u8 instrlen, replacementlen } (6.3 widened the lengths).
            (6, 1) | (6, 2) => Ok(Self { alt_instr: 12 }),
            _ => Err(format!(
                "graft knows the special-section layouts (alt_instr, bug_entry, ...) of Linux 6.1 and 6.2, not {major}.{minor}"
            )),
        }
    }

    /// How section `name` is carried, or None when it is not a special section graft knows.
    pub fn handling(&self, name: &str) -> Option<Handling> {
        let entries = |size, anchor| Some(Handling::Entries { size, anchor });
        match name {
            // struct exception_table_entry { int insn, fixup, data }, struct bug_entry with
            // relative pointers { int bug_addr_disp, file_disp; u16 line, flags }.
            "__ex_table" | "__bug_table" => entries(12, 0),
            ".altinstructions" => entries(self.alt_instr, 0),
            // struct jump_entry { s32 code, target; long key }.
            "__jump_table" => entries(16, 0),
            // struct static_call_site { s32 addr, key }.
            ".static_call_sites" => entries(8, 0),
            "__mcount_loc" => entries(8, 0),
            // struct paravirt_patch_site { u8 *instr; u8 type, len }, 8-aligned.
            ".parainstructions" => entries(16, 0),
            ".return_sites" | ".retpoline_sites" | ".call_sites" | ".smp_locks"
            | ".orc_unwind_ip" | ".ibt_endbr_seal" => entries(4, 0),
            ".orc_unwind" => Some(Handling::OrcUnwind),
            ".printk_index" | ".comment" | ".note.GNU-stack" => Some(Handling::Drop),
            // Export tables: the running kernel exports the symbols already; a patch module
            // never exports them again.
            n if n.starts_with("___ksymtab")
                || n.starts_with("__ksymtab")
                || n.starts_with("__kcrctab") =>
            {
                Some(Handling::Drop)
            }
            n if n.starts_with(".discard") || n.starts_with(".debug") || n.starts_with(".note") => {
                Some(Handling::Drop)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let layout = Layout::for_version(6, 1).unwrap();
        assert_eq!(
            layout.handling("__ex_table"),
            Some(Handling::Entries {
                size: 12,
                anchor: 0
            })
        );
        assert_eq!(
            layout.handling(".altinstructions"),
            Some(Handling::Entries {
                size: 12,
                anchor: 0
            })
        );
        assert_eq!(
            layout.handling(".discard.retpoline_safe"),
            Some(Handling::Drop)
        );
        assert_eq!(layout.handling(".text.foo"), None);
    }

    #[test]
    fn an_unchecked_kernel_version_is_refused() {
        let err = Layout::for_version(6, 12).unwrap_err();
        assert!(err.contains("not 6.12"), "{err}");
    }
}
