//! Malformed input never panics: real objects from the fixtures, truncated, bit-flipped and
//! with fields overwritten by huge values (counts, offsets, `value + size` that overflow),
//! go through the parser, the differ, extraction, run-pre matching and the writer. Each must
//! answer with an error or a result, never a panic. Bounded to run in seconds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

use std::path::PathBuf;

use graft_build::fixture::Fixture;
use graft_elf::ElfObject;
use proptest::prelude::*;

fn captured(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .join("captured")
}

fn bytes(name: &str, file: &str) -> Vec<u8> {
    std::fs::read(captured(name).join(file)).unwrap()
}

/// How to damage an object.
#[derive(Clone, Debug)]
enum Damage {
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    /// Overwrite 8 bytes at the offset with a huge or random value.
    Overwrite(usize, u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        any::<usize>().prop_map(Damage::Truncate),
        proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8).prop_map(Damage::Flip),
        (
            any::<usize>(),
            prop_oneof![
                Just(u64::MAX),
                Just(u64::MAX / 2),
                Just(0x8000_0000),
                any::<u64>()
            ]
        )
            .prop_map(|(at, v)| Damage::Overwrite(at, v)),
    ]
}

fn apply(mut data: Vec<u8>, damage: &Damage) -> Vec<u8> {
    let len = data.len().max(1);
    match damage {
        Damage::Truncate(at) => data.truncate(at % len),
        Damage::Flip(flips) => {
            for (at, mask) in flips {
                let i = at % len;
                if let Some(b) = data.get_mut(i) {
                    *b ^= mask;
                }
            }
        }
        Damage::Overwrite(at, value) => {
            let i = at % len;
            for (k, b) in value.to_le_bytes().iter().enumerate() {
                if let Some(d) = data.get_mut(i + k) {
                    *d = *b;
                }
            }
        }
    }
    data
}

/// Runs everything downstream of the parser on a damaged patched object.
fn exercise(name: &str, which: &str, damage: &Damage) {
    let mut fixture = Fixture::load(&captured(name)).unwrap();
    let damaged = apply(bytes(name, &format!("0.{which}.o")), damage);
    let Ok(object) = ElfObject::parse("damaged", &damaged) else {
        return;
    };
    let _ = object.write("damaged");
    match which {
        "post" => fixture.pairs[0].post = object,
        _ => fixture.pairs[0].pre = object,
    }
    let Ok(diffs) = graft_build::diff::diff(&fixture.pairs, &fixture.context) else {
        return;
    };
    let _ = graft_build::runpre::prove(&fixture, &fixture.pairs, &diffs);
    if let Ok(extracted) = graft_build::extract::extract(&fixture.pairs, &diffs, &fixture.context) {
        for x in extracted {
            let _ = x.patch.elf.write("patch");
        }
    }
}

/// Regression: a damaged `sh_addralign` of 2^40 made the writer reserve a terabyte of padding
/// and abort the process instead of answering with an error.
#[test]
fn a_huge_section_alignment_is_an_error_not_an_allocation() {
    let mut data = bytes("cmdline", "0.post.o");
    let le64 = |d: &[u8], at: usize| u64::from_le_bytes(d[at..at + 8].try_into().unwrap());
    let shoff = le64(&data, 0x28) as usize;
    let shentsize = u16::from_le_bytes([data[0x3a], data[0x3b]]) as usize;
    // Section 1's sh_addralign sits 0x30 bytes into its header.
    let at = shoff + shentsize + 0x30;
    data[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let err = ElfObject::parse("damaged", &data).unwrap_err().to_string();
    assert!(err.contains("alignment 0x10000000000"), "{err}");

    let mut object = ElfObject::parse("cmdline", &bytes("cmdline", "0.post.o")).unwrap();
    object.sections[1].align = 1 << 40;
    let err = object.write("patch").unwrap_err().to_string();
    assert!(err.contains("is not a power of two of at most"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_damaged_patched_object_never_panics(d in damage()) {
        exercise("cmdline", "post", &d);
    }

    #[test]
    fn a_damaged_unpatched_object_never_panics(d in damage()) {
        exercise("meminfo-aux", "pre", &d);
    }

    #[test]
    fn a_damaged_module_object_never_panics(d in damage()) {
        let mut fixture = Fixture::load(&captured("module-isofs")).unwrap();
        let ko = apply(bytes("module-isofs", "module-isofs.ko"), &d);
        let Ok(object) = ElfObject::parse("damaged.ko", &ko) else { return Ok(()); };
        fixture.set_module_object_for_tests("isofs", object);
        if let Ok(diffs) = graft_build::diff::diff(&fixture.pairs, &fixture.context) {
            let _ = graft_build::runpre::prove(&fixture, &fixture.pairs, &diffs);
        }
    }

    #[test]
    fn a_damaged_livepatch_check_never_panics(d in damage()) {
        let ko = apply(bytes("module-isofs", "module-isofs.ko"), &d);
        if let Ok(object) = ElfObject::parse("damaged.ko", &ko) {
            let _ = graft_elf::check_livepatch_module(&object, &|_| false);
        }
    }

    #[test]
    fn damaged_patch_text_never_panics(text in "(?s).{0,400}", cut in any::<usize>()) {
        let real = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/params-line-and-constant/fix.patch")).unwrap();
        let at = (0..=cut % real.len().max(1)).rev().find(|&i| real.is_char_boundary(i)).unwrap_or(0);
        let mixed = format!("{}{text}{}", &real[..at], &real[at..]);
        let _ = graft_build::patchset::touched_files(&mixed);
        let _ = graft_build::patchset::changed_lines(&mixed, "kernel/params.c");
    }
}
