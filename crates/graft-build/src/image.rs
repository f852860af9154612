//! The running kernel's code as run-pre matching reads it: the code image by link-time
//! address, and kallsyms by address.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use graft_kernel::SymbolTable;
use object::{Object, ObjectSegment};

use crate::BuildError;

/// The target's code image, addressable by link-time address.
pub struct CodeImage {
    data: Vec<u8>,
    /// (address, size, file offset) of each loaded segment.
    segments: Vec<(u64, u64, u64)>,
    /// When set, every range read is noted: how a fixture learns what matching needs.
    log: Option<ReadLog>,
}

/// Ranges (start, end) read from an image, or addresses looked up in an index.
pub type ReadLog = Arc<Mutex<Vec<(u64, u64)>>>;

impl std::fmt::Debug for CodeImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeImage")
            .field("segments", &self.segments)
            .finish_non_exhaustive()
    }
}

impl CodeImage {
    /// Loads vmlinux.
    pub fn load(path: &Path) -> Result<Self, BuildError> {
        let data = std::fs::read(path).map_err(|e| BuildError::io("reading", path, e))?;
        let segments = {
            let file = object::File::parse(&*data)
                .map_err(|e| BuildError::Unsupported(format!("{}: {e}", path.display())))?;
            file.segments()
                .map(|s| {
                    let (offset, size) = s.file_range();
                    (s.address(), size, offset)
                })
                .collect()
        };
        Ok(Self {
            data,
            segments,
            log: None,
        })
    }

    /// Notes every range read from now on in `log`.
    pub fn with_log(mut self, log: ReadLog) -> Self {
        self.log = Some(log);
        self
    }

    fn note(&self, start: u64, end: u64) {
        if let Some(log) = &self.log {
            if let Ok(mut log) = log.lock() {
                log.push((start, end));
            }
        }
    }

    /// An image of the given pieces of memory (address, bytes), for fixtures that keep only
    /// what matching reads.
    pub fn from_slices(slices: &[(u64, Vec<u8>)]) -> Self {
        let mut data = Vec::new();
        let mut segments = Vec::new();
        for (address, bytes) in slices {
            segments.push((*address, bytes.len() as u64, data.len() as u64));
            data.extend_from_slice(bytes);
        }
        Self {
            data,
            segments,
            log: None,
        }
    }

    /// The pieces of memory around `addresses` (each `before` bytes before to `after` after),
    /// merged where they overlap: what a fixture keeps of the image.
    pub fn slices(&self, addresses: &[(u64, u64)]) -> Vec<(u64, Vec<u8>)> {
        let mut ranges: Vec<(u64, u64)> = addresses.to_vec();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
            .into_iter()
            .filter_map(|(start, end)| {
                // Clip to the segment that holds the start.
                let (seg_start, size, _) = self
                    .segments
                    .iter()
                    .find(|(s, size, _)| start >= *s && start < s + size)?;
                let end = end.min(seg_start + size);
                let bytes = self.read(start, (end - start) as usize)?;
                Some((start, bytes.to_vec()))
            })
            .collect()
    }

    /// `len` bytes at `address`, if the image has them.
    pub fn read(&self, address: u64, len: usize) -> Option<&[u8]> {
        self.note(address, address + len as u64);
        let (start, size, offset) = self
            .segments
            .iter()
            .find(|(start, size, _)| address >= *start && address < start + size)?;
        let at = address - start;
        if at + len as u64 > *size {
            return None;
        }
        self.data
            .get((offset + at) as usize..(offset + at) as usize + len)
    }

    /// The NUL-terminated string at `address` (without the NUL).
    pub fn string(&self, address: u64) -> Option<&[u8]> {
        let (start, size, offset) = self
            .segments
            .iter()
            .find(|(start, size, _)| address >= *start && address < start + size)?;
        let from = (offset + (address - start)) as usize;
        let end = (offset + size) as usize;
        let rest = self.data.get(from..end)?;
        let string = &rest[..rest.iter().position(|&b| b == 0)?];
        self.note(address, address + string.len() as u64 + 1);
        Some(string)
    }
}

/// kallsyms by address.
#[derive(Debug)]
pub struct AddressIndex {
    by_address: HashMap<u64, Vec<(String, u32)>>,
    log: Option<ReadLog>,
}

impl AddressIndex {
    /// Indexes a symbol table.
    pub fn new(table: &SymbolTable) -> Self {
        let mut by_address: HashMap<u64, Vec<(String, u32)>> = HashMap::new();
        for s in table.symbols() {
            by_address
                .entry(s.address)
                .or_default()
                .push((s.name.clone(), s.sympos()));
        }
        Self {
            by_address,
            log: None,
        }
    }

    /// Notes every address looked up from now on in `log`.
    pub fn with_log(mut self, log: ReadLog) -> Self {
        self.log = Some(log);
        self
    }

    /// The names at `address`, with their sympos.
    pub fn names_at(&self, address: u64) -> &[(String, u32)] {
        if let Some(log) = &self.log {
            if let Ok(mut log) = log.lock() {
                log.push((address, address));
            }
        }
        self.by_address
            .get(&address)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}
