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
/// definition at column 0 above it that is still open there, with no line closing one (`}` at
/// column 0), no function and no initializer between. A definition nested inside a function
/// body (`struct { ... } table[] = ...;` as a local variable) is the function's own business:
/// the function is replaced whole, so it is no layout the running kernel holds objects of.
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
        if let Some(kind) = opens_definition(line) {
            let close = closing_line(lines, i);
            if close.is_some_and(|c| c < index) {
                // A definition that ended above the line: look further up.
                continue;
            }
            if line.starts_with(char::is_whitespace) {
                // Nested: the member of an outer type, or a local type of a function.
                continue;
            }
            return Some(name_of(kind, close.and_then(|c| lines.get(c).copied())));
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

/// The line that closes the braces opened on line `open`, counting braces outside string and
/// character literals and `//` comments.
fn closing_line(lines: &[&str], open: usize) -> Option<usize> {
    let mut depth = 0i64;
    for (i, line) in lines.iter().enumerate().skip(open) {
        let mut quote: Option<char> = None;
        let mut escaped = false;
        let mut prev = '\0';
        for c in line.chars() {
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
                continue;
            }
            match c {
                '"' | '\'' => quote = Some(c),
                '/' if prev == '/' => break,
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            }
            prev = c;
        }
    }
    None
}

/// A definition's name: `struct seq_buf`, or for an anonymous one the typedef or variable its
/// closing line declares (`struct (anonymous) pte_t`), or just its kind.
fn name_of(kind: Definition, closing: Option<&str>) -> String {
    match kind {
        Definition {
            kind,
            name: Some(name),
        } => format!("{kind} {name}"),
        Definition { kind, name: None } => {
            let declared = closing
                .map(|l| {
                    l.trim_start_matches('}')
                        .trim()
                        .trim_end_matches(';')
                        .trim()
                })
                .and_then(|rest| {
                    rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .rfind(|w| !w.is_empty() && !w.starts_with("__"))
                });
            match declared {
                Some(d) => format!("{kind} (anonymous) {d}"),
                None => kind.to_string(),
            }
        }
    }
}

/// A line that opens a `struct` or `union` definition.
#[derive(Debug, PartialEq, Eq)]
struct Definition {
    kind: &'static str,
    name: Option<String>,
}

/// `struct seq_buf {` or `typedef union {`: the definition's kind and name.
fn opens_definition(line: &str) -> Option<Definition> {
    let line = line.trim_end();
    if !line.ends_with('{') || line.contains('=') || line.contains('(') {
        return None;
    }
    let body = line.trim_end_matches('{').trim();
    let body = body.strip_prefix("typedef ").unwrap_or(body);
    let mut words = body.split_whitespace();
    let kind = match words.next()? {
        "struct" => "struct",
        "union" => "union",
        _ => return None,
    };
    let name = words.find(|w| !w.starts_with("__")).map(str::to_string);
    Some(Definition { kind, name })
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
            opens_definition("typedef union {"),
            Some(Definition {
                kind: "union",
                name: None
            })
        );
        assert_eq!(opens_definition("struct foo bar = {"), None);
    }

    /// Regression: intel_bios.c's fix changed lines of a function that declares a local
    /// `struct { ... } panel_types[] = { ... };`, and was refused as changing "struct".
    #[test]
    fn a_local_struct_in_a_function_is_no_layout_change() {
        let text = "static int get_panel_type(int x)\n{\n\tstruct {\n\t\tconst char *name;\n\t\tint panel_type;\n\t} panel_types[] = {\n\t\t[0] = { .name = \"{x\" },\n\t};\n\tif (x)\n\t\treturn 1;\n\treturn 0;\n}\n";
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(enclosing_type(&lines, 8), None);
        assert_eq!(enclosing_type(&lines, 3), None);
    }

    /// Regression: a member of an anonymous typedef was refused as changing "struct", with no
    /// name to act on.
    #[test]
    fn an_anonymous_type_is_named_by_what_it_declares() {
        let text = "typedef struct {\n\tu64 a;\n\tunion {\n\t\tu32 b;\n\t};\n} __packed pebs_t;\n";
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            enclosing_type(&lines, 1).as_deref(),
            Some("struct (anonymous) pebs_t")
        );
        // A member of a nested union belongs to the outer type.
        assert_eq!(
            enclosing_type(&lines, 3).as_deref(),
            Some("struct (anonymous) pebs_t")
        );
        assert_eq!(closing_line(&lines, 0), Some(5));
    }
}
