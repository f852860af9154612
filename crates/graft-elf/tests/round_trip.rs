//! The model against objects compiled here by gcc, as the builder will see them.

#![allow(
    clippy::unwrap_used,
    reason = "a panic in a test is a failed assertion"
)]

use std::process::Command;

use graft_elf::{ElfObject, SymSection};

const SOURCE: &str = r#"
static int counter;
static const char *const names[] = { "alpha", "beta" };
int shared = 3;
static int __attribute__((noinline)) helper(int x) { return x * counter + shared; }
int visible(int i) { counter++; return helper(i) + (names[i & 1][0]); }
int __attribute__((section(".init.text"))) setup(void) { return visible(1); }
"#;

fn compile(dir: &std::path::Path) -> Vec<u8> {
    let src = dir.join("t.c");
    std::fs::write(&src, SOURCE).unwrap();
    let obj = dir.join("t.o");
    let status = Command::new("gcc")
        .args([
            "-O2",
            "-c",
            "-ffunction-sections",
            "-fdata-sections",
            "-fno-pic",
            "-mcmodel=kernel",
            "-o",
        ])
        .arg(&obj)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(obj).unwrap()
}

#[test]
fn parse_write_parse_is_identity_and_ld_accepts_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = compile(dir.path());
    let object = ElfObject::parse("t.o", &bytes).unwrap();
    let text = object.section_index(".text.visible").unwrap();
    assert!(
        object.sections[text].relocs().count() >= 2,
        "visible calls helper and reads counter"
    );
    let helper = object.symbols.iter().find(|s| s.name == "helper").unwrap();
    assert!(matches!(helper.section, SymSection::Section(_)));

    let written = object.write("t.o").unwrap();
    let again = ElfObject::parse("t.o (written)", &written).unwrap();
    // Locals come first after writing, so compare as sets of names and per-section contents.
    assert_eq!(again.sections.len(), object.sections.len());
    for (a, b) in object.sections.iter().zip(&again.sections) {
        assert_eq!(
            (a.name.as_str(), &a.data, a.flags),
            (b.name.as_str(), &b.data, b.flags)
        );
        let names = |o: &ElfObject, s: &graft_elf::Section| {
            s.relocs()
                .map(|r| {
                    (
                        r.offset,
                        r.r_type,
                        o.symbols[r.symbol].name.clone(),
                        r.addend,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&object, a), names(&again, b), "{}", a.name);
    }

    let out = dir.path().join("w.o");
    std::fs::write(&out, &written).unwrap();
    let linked = dir.path().join("linked.o");
    let status = Command::new("ld")
        .arg("-r")
        .arg("-o")
        .arg(&linked)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "ld -r rejects the written object");
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for bytes in [
        &b""[..],
        b"\x7fELF",
        &[
            0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 62, 0,
        ][..],
    ] {
        let err = ElfObject::parse("junk.o", bytes).unwrap_err().to_string();
        assert!(err.starts_with("junk.o: "), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = compile(dir.path());
    // Truncate the section headers away.
    bytes.truncate(bytes.len() / 2);
    assert!(ElfObject::parse("cut.o", &bytes).is_err());
}
