//! Special sections: arrays of fixed-size entries that describe places in code (exception
//! table, alternatives, ORC unwind data, ...). An entry belongs to the function its *anchor*
//! relocation points into; the patch object carries exactly the entries of the functions it
//! copies. Sizes are those of x86-64 Linux 6.1 (`struct exception_table_entry`, `alt_instr`,
//! `bug_entry` with relative pointers, `jump_entry`, `static_call_site`, ...).

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

/// How `name` is carried, or None when it is not a special section.
pub fn handling(name: &str) -> Option<Handling> {
    let entries = |size, anchor| Some(Handling::Entries { size, anchor });
    match name {
        "__ex_table" | "__bug_table" | ".altinstructions" => entries(12, 0),
        "__jump_table" => entries(16, 0),
        ".static_call_sites" => entries(8, 0),
        "__mcount_loc" => entries(8, 0),
        ".return_sites" | ".retpoline_sites" | ".call_sites" | ".smp_locks" | ".orc_unwind_ip"
        | ".ibt_endbr_seal" => entries(4, 0),
        ".orc_unwind" => Some(Handling::OrcUnwind),
        ".printk_index" | ".comment" | ".note.GNU-stack" => Some(Handling::Drop),
        n if n.starts_with(".discard") || n.starts_with(".debug") || n.starts_with(".note") => {
            Some(Handling::Drop)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(
            handling("__ex_table"),
            Some(Handling::Entries {
                size: 12,
                anchor: 0
            })
        );
        assert_eq!(handling(".discard.retpoline_safe"), Some(Handling::Drop));
        assert_eq!(handling(".text.foo"), None);
    }
}
