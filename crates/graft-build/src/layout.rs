//! Layout: a patch that changes what a structure holds cannot be live patched.
//!
//! Objects of the old layout are alive in the running kernel, created by code the patch does
//! not replace; patched code that reads a new member, or the old code reading past a removed
//! one, would disagree about every such object. A changed line inside a `struct` or `union`
//! definition (a member added, removed or retyped) is refused with the type's name, before
//! anything is compiled: the compiler would show it only as changes everywhere the type is
//! used.

use std::path::Path;

use graft_diff::Refusal;

use crate::patchset::{self, PatchFile};
use crate::BuildError;

/// Refuses patches that change a structure's members, in any touched file.
pub fn check(patches: &[PatchFile], tree: &Path, touched: &[String]) -> Result<(), BuildError> {
    let mut refusals = Vec::new();
    for file in touched {
        let Ok(text) = std::fs::read_to_string(tree.join(file)) else {
            continue;
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut types: Vec<String> = Vec::new();
        for line in patches
            .iter()
            .flat_map(|p| patchset::changed_lines(&p.text, file))
        {
            if let Some(name) = enclosing_type(&lines, line.saturating_sub(1)) {
                if !types.contains(&name) {
                    types.push(name);
                }
            }
        }
        refusals.extend(types.into_iter().map(|what| Refusal::ChangedLayout {
            file: file.clone(),
            what,
        }));
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(BuildError::Refused(refusals))
    }
}

/// The `struct`/`union` whose member list holds line `index` (0-based), if any: the nearest
/// line above that opens a definition, with no line closing one (`}` at column 0) between.
fn enclosing_type(lines: &[&str], index: usize) -> Option<String> {
    let here = lines.get(index)?.trim();
    // A blank or comment line changes no member.
    if here.is_empty() || here.starts_with("/*") || here.starts_with('*') || here.starts_with("//")
    {
        return None;
    }
    for i in (0..index).rev() {
        let line = lines[i];
        if line.starts_with('}') || line.starts_with("#define") {
            return None;
        }
        if let Some(name) = opens_definition(line) {
            return Some(name);
        }
        // A function body or an initializer is not a member list.
        if line.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && (line.contains('(') || line.contains('='))
        {
            return None;
        }
    }
    None
}

/// `struct seq_buf {` or `typedef union {` at column 0: the type's name (or `union` for an
/// anonymous one).
fn opens_definition(line: &str) -> Option<String> {
    let line = line.trim_end();
    if !line.ends_with('{') || line.contains('=') || line.contains('(') {
        return None;
    }
    let body = line.trim_end_matches('{').trim();
    let body = body.strip_prefix("typedef ").unwrap_or(body);
    let mut words = body.split_whitespace();
    let kind = words.next()?;
    if kind != "struct" && kind != "union" {
        return None;
    }
    let name = words.find(|w| !w.starts_with("__"));
    Some(match name {
        Some(n) => format!("{kind} {n}"),
        None => kind.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "struct seq_buf {\n\tchar\t*buffer;\n\tsize_t\tlen;\n};\n\nstatic inline void seq_buf_clear(struct seq_buf *s)\n{\n\ts->len = 0;\n}\nstatic struct seq_buf init = {\n\t.len = 0,\n};\n";

    /// Regression: removing a member of struct seq_buf was refused only as "9059 units may
    /// include it", not as what it is.
    #[test]
    fn a_changed_member_names_its_structure() {
        let lines: Vec<&str> = HEADER.lines().collect();
        assert_eq!(enclosing_type(&lines, 2).as_deref(), Some("struct seq_buf"));
        // A function body and an initializer are not member lists.
        assert_eq!(enclosing_type(&lines, 7), None);
        assert_eq!(enclosing_type(&lines, 10), None);
        assert_eq!(
            opens_definition("typedef union {").as_deref(),
            Some("union")
        );
        assert_eq!(opens_definition("struct foo bar = {"), None);
    }
}
