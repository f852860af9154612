//! Where each source line went: the line numbers of a patched file against the unpatched one.
//!
//! A patch that adds or removes lines shifts every later `__LINE__` value, and those values end
//! up in code (immediates passed to `__might_sleep()` and printk-style calls that also take
//! `__FILE__`) and in strings (`"at fs/x.c:123"`). Such a difference is not a change, but only
//! when the new number is exactly where the patch moved the old line: a constant that changed
//! next to a `__FILE__` string is still a change.

use std::collections::HashMap;

/// Per file (path as in `__FILE__`, relative to the tree), the patched line of each unpatched
/// line that survived the patch.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LineMap {
    files: HashMap<String, Vec<Option<u32>>>,
}

impl LineMap {
    /// Records `file`'s lines from its unpatched and patched text.
    pub fn add_file(&mut self, file: &str, old: &str, new: &str) {
        let diff = similar::TextDiff::from_lines(old, new);
        let mut map = vec![None; old.lines().count() + 1];
        for op in diff.ops() {
            if let similar::DiffOp::Equal {
                old_index,
                new_index,
                len,
            } = *op
            {
                for k in 0..len {
                    // 1-based, as __LINE__ counts.
                    if let Some(slot) = map.get_mut(old_index + k + 1) {
                        *slot = u32::try_from(new_index + k + 1).ok();
                    }
                }
            }
        }
        self.files.insert(file.to_string(), map);
    }

    /// Whether `post` is where the patch moved line `pre` of `file` (and it moved).
    pub fn moved(&self, file: &str, pre: u32, post: u32) -> bool {
        pre != post
            && self
                .files
                .get(file)
                .and_then(|m| m.get(pre as usize).copied().flatten())
                == Some(post)
    }

    /// Whether any file's lines moved at all.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether strings `a` (unpatched) and `b` (patched) differ only in line numbers that
    /// follow a `<file>:` the map knows, each moved where the patch moved its line.
    pub fn only_lines_differ(&self, a: &[u8], b: &[u8]) -> bool {
        let (Ok(a), Ok(b)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else {
            return false;
        };
        if a == b {
            return false;
        }
        let (pa, pb) = (split_numbers(a), split_numbers(b));
        if pa.len() != pb.len() {
            return false;
        }
        let mut any = false;
        for (i, (x, y)) in pa.iter().zip(&pb).enumerate() {
            if x == y {
                continue;
            }
            // Only a number right after `<file>:` may differ.
            let (Some(m), Some(n)) = (x.parse::<u32>().ok(), y.parse::<u32>().ok()) else {
                return false;
            };
            let before = pa[..i].concat();
            let Some(file) = before
                .strip_suffix(':')
                .and_then(|t| t.rsplit(|c: char| c.is_whitespace() || c == '"').next())
            else {
                return false;
            };
            if !self.moved(file, m, n) {
                return false;
            }
            any = true;
        }
        any
    }
}

/// `"at fs/x.c:12 y"` -> `["at fs/x.c:", "12", " y"]`: runs of digits and the rest.
fn split_numbers(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for i in 1..=bytes.len() {
        let boundary =
            i == bytes.len() || bytes[i].is_ascii_digit() != bytes[i - 1].is_ascii_digit();
        if boundary {
            parts.push(&text[start..i]);
            start = i;
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> LineMap {
        let mut m = LineMap::default();
        m.add_file("arch/x86/kvm/x86.c", "a\nb\nc\n", "a\n\nb\nc\n");
        m
    }

    #[test]
    fn lines_after_an_insertion_move_by_one() {
        let m = map();
        assert!(!m.moved("arch/x86/kvm/x86.c", 1, 1));
        assert!(m.moved("arch/x86/kvm/x86.c", 2, 3));
        assert!(m.moved("arch/x86/kvm/x86.c", 3, 4));
        assert!(!m.moved("arch/x86/kvm/x86.c", 3, 5));
        assert!(!m.moved("other.c", 2, 3));
    }

    /// Regression (kpatch's warn-detect-FAIL): a blank line at the top of x86.c changed only
    /// the line in a fortify message, and graft patched the function.
    #[test]
    fn a_moved_line_in_a_file_position_string_is_no_change() {
        let m = map();
        let a = b"field \"run->insn\" at arch/x86/kvm/x86.c:2";
        let b = b"field \"run->insn\" at arch/x86/kvm/x86.c:3";
        assert!(m.only_lines_differ(a, b));
        // Any other difference is a change.
        assert!(!m.only_lines_differ(a, b"field \"run->insn\" at arch/x86/kvm/x86.c:4"));
        assert!(!m.only_lines_differ(
            b"size 2 at arch/x86/kvm/x86.c:2",
            b"size 3 at arch/x86/kvm/x86.c:3"
        ));
        assert!(!m.only_lines_differ(a, a));
        assert!(!m.only_lines_differ(b"at other.c:2", b"at other.c:3"));
    }
}
