//! Relocatable ELF objects as graft reads, edits and writes them.
//!
//! The builder compares objects function by function, copies chosen sections into a new object,
//! and rewrites a linked module's relocations into the livepatch format. All of that is easier
//! on an owned model than on raw bytes: sections with their relocations attached, symbols with
//! their section as a reference rather than an index. [`ElfObject::parse`] builds the model from
//! bytes (never panicking on malformed input), [`ElfObject::write`] lays out a new file,
//! regenerating relocation sections, the symbol table (locals first, as ELF requires) and the
//! string tables.

mod livepatch;
mod model;
pub mod x86_64;

pub use livepatch::{
    check_livepatch_module, klp_rela_name, klp_sym_name, parse_klp_sym_name, KlpRule, KlpViolation,
    SHF_RELA_LIVEPATCH, SHN_LIVEPATCH,
};
pub use model::{ElfObject, Reloc, RelocSection, Section, SymSection, Symbol};

/// Errors reading or writing ELF.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// The bytes are not an ELF file graft handles.
    #[error("{what}: {reason}")]
    Malformed {
        /// The file or object name.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing failed.
    #[error("writing {what}: {reason}")]
    Write {
        /// The object name.
        what: String,
        /// What went wrong.
        reason: String,
    },
}
