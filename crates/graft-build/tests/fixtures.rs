//! The fast tier: the differ, run-pre matching, extraction and klp conversion on fixtures
//! captured from the real target (tests/fixtures, `scripts/bless-fixtures.sh`): real objects
//! compiled by kbuild's own commands, and the slices of the running code matching reads. No
//! network, no kernel cache, no QEMU.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic in a test is a failed assertion with a backtrace"
)]

use std::collections::HashMap;
use std::path::PathBuf;

use graft_build::diff;
use graft_build::fixture::Fixture;
use graft_build::module::Resolution;
use graft_build::{runpre, BuildError};
use graft_diff::{LineMap, Refusal, Verdict};

fn fixture(name: &str) -> Fixture {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
        .join("captured");
    Fixture::load(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/bless-fixtures.sh)", dir.display()))
}

fn included(f: &Fixture, diffs: &diff::Diffs) -> Vec<String> {
    let _ = f;
    diffs
        .units
        .iter()
        .flat_map(|d| d.included().map(|v| format!("{:?}:{}", v.verdict, v.name)))
        .collect()
}

// ---- the differ -------------------------------------------------------------------------

#[test]
fn a_string_change_changes_only_its_function() {
    let f = fixture("cmdline");
    let diffs = diff::diff(&f.pairs, &f.context).unwrap();
    assert_eq!(included(&f, &diffs), ["Changed:cmdline_proc_show"]);
    let v = diffs.units[0].included().next().unwrap();
    assert!(v.reason.is_some(), "{v:?}");
    // Everything else of the unit is unchanged.
    assert!(diffs.units[0]
        .functions
        .iter()
        .filter(|v| v.name != "cmdline_proc_show")
        .all(|v| v.verdict == Verdict::Unchanged));
}

#[test]
fn correlation_pairs_every_function_of_an_unchanged_unit_by_name() {
    let f = fixture("cmdline");
    let pair = &f.pairs[0];
    let corr = graft_diff::Correlation::new(&pair.pre, &pair.post);
    for (q, s) in pair.post.symbols.iter().enumerate() {
        if s.kind == object::elf::STT_FUNC {
            let p = corr
                .pre_of(q)
                .unwrap_or_else(|| panic!("{} unpaired", s.name));
            assert_eq!(pair.pre.symbols[p].name, s.name);
        }
    }
}

/// Regression (kpatch's warn-detect-FAIL class): a blank line moved only __LINE__ values.
#[test]
fn a_moved_line_number_is_no_effective_change() {
    let f = fixture("params-line-only");
    let err = diff::diff(&f.pairs, &f.context).unwrap_err();
    assert!(matches!(err, BuildError::NoEffectiveChange(_)), "{err}");
}

/// Without knowing where lines moved, the same objects differ: the map is what decides.
#[test]
fn without_the_line_map_the_moved_line_is_a_change_of_init_code() {
    let f = fixture("params-line-only");
    let ctx = graft_diff::Context {
        lines: LineMap::default(),
        ..f.context.clone()
    };
    let err = diff::diff(&f.pairs, &ctx).unwrap_err();
    let BuildError::Refused(refusals) = err else {
        panic!("{err}")
    };
    assert!(refusals.iter().any(
        |r| matches!(r, Refusal::InitCode { function, .. } if function == "param_sysfs_init")
    ));
}

/// The line-number rule never hides a real constant change next to a `__FILE__` string.
#[test]
fn a_changed_constant_beside_a_file_string_is_a_change() {
    let f = fixture("params-line-and-constant");
    let err = diff::diff(&f.pairs, &f.context).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("param_sysfs_init is __init/__exit code"),
        "{text}"
    );
}

/// Regression: a changed switch became a changed lookup table (CSWTCH), refused as changed
/// data; it is private read-only data of the function, carried with it.
#[test]
fn a_changed_switch_table_is_the_functions_own_data() {
    let f = fixture("switch-table");
    let diffs = diff::diff(&f.pairs, &f.context).unwrap();
    let changed = included(&f, &diffs);
    assert!(
        changed.iter().any(|c| c.contains("enh_desc_get_rx_status")),
        "{changed:?}"
    );
    let extracted = graft_build::extract::extract(&f.pairs, &diffs, &f.context).unwrap();
    let table = extracted[0]
        .patch
        .elf
        .symbols
        .iter()
        .find(|s| s.name.starts_with("CSWTCH"))
        .expect("the table is copied into the patch");
    assert!(table.is_local());
}

#[test]
fn new_data_and_an_altinstr_aux_slow_path_are_handled() {
    let f = fixture("meminfo-aux");
    let diffs = diff::diff(&f.pairs, &f.context).unwrap();
    assert!(included(&f, &diffs).contains(&"Changed:meminfo_proc_show".to_string()));
    let extracted = graft_build::extract::extract(&f.pairs, &diffs, &f.context).unwrap();
    let elf = &extracted[0].patch.elf;
    // The slow path the function jumps to travels with it.
    assert!(
        elf.section_index(".altinstr_aux").is_some(),
        "{:?}",
        elf.sections.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    // The function's special-section entries came along.
    for name in [
        "__mcount_loc",
        ".orc_unwind_ip",
        ".orc_unwind",
        ".return_sites",
    ] {
        assert!(elf.section_index(name).is_some(), "{name} missing");
    }
}

#[test]
fn an_unknown_special_section_describing_patched_code_is_refused_by_name() {
    let mut f = fixture("cmdline");
    let post = &mut f.pairs[0].post;
    let at = post
        .section_index(".return_sites")
        .expect("the object has .return_sites");
    post.sections[at].name = ".graft_unknown_sites".into();
    let diffs = diff::diff(&f.pairs, &f.context).unwrap();
    let err = graft_build::extract::extract(&f.pairs, &diffs, &f.context).unwrap_err();
    assert!(
        err.to_string()
            .contains("special section .graft_unknown_sites"),
        "{err}"
    );
}

// ---- run-pre matching -------------------------------------------------------------------

fn prove(f: &Fixture) -> Result<runpre::RunPreProof, BuildError> {
    let diffs = diff::diff(&f.pairs, &f.context).unwrap();
    runpre::prove(f, &f.pairs, &diffs)
}

#[test]
fn a_function_that_is_the_running_code_is_proven_and_positioned() {
    let f = fixture("cmdline");
    let proof = prove(&f).unwrap();
    assert_eq!(
        proof
            .function_sympos
            .get(&(0, "cmdline_proc_show".to_string())),
        Some(&0)
    );
    // What it references is pinned to kallsyms entries.
    assert!(proof
        .pins
        .keys()
        .any(|(o, n)| o == "vmlinux" && n == "saved_command_line"));
}

/// A function whose running bytes differ from the compiled ones is refused, by name.
#[test]
fn a_run_pre_mismatch_is_refused_naming_the_function() {
    let mut f = fixture("cmdline");
    let address = f.vmlinux_symbols_address("cmdline_proc_show");
    let slice = f
        .image_mut()
        .iter_mut()
        .find(|(a, b)| *a <= address && address < a + b.len() as u64)
        .expect("the function's bytes are in the fixture");
    // The second byte of `push %rbx` after the 5-byte __fentry__ call.
    let at = (address - slice.0) as usize + 5;
    slice.1[at] ^= 0xff;
    let err = prove(&f).unwrap_err();
    let BuildError::RunPre { function, detail } = &err else {
        panic!("{err}")
    };
    assert!(
        function.contains("cmdline_proc_show") && function.contains("fs/proc/cmdline.c"),
        "{err}"
    );
    assert!(detail.contains("code differs at +0x5"), "{err}");
}

/// Regression: the slow path of static_cpu_has() lives in .altinstr_aux; its relocated bytes
/// differ in the image, and run-pre called the running kernel different.
#[test]
fn an_altinstr_aux_slow_path_matches_as_the_functions_code() {
    let f = fixture("meminfo-aux");
    prove(&f).unwrap();
}

#[test]
fn a_different_altinstr_aux_slow_path_is_refused() {
    let f = fixture("meminfo-aux");
    let function = f.vmlinux_symbols_address("meminfo_proc_show");
    let mut found = Vec::new();
    for i in 0..f.image_len() {
        let mut g = fixture("meminfo-aux");
        let (address, bytes) = &mut g.image_mut()[i];
        if *address <= function && function < *address + bytes.len() as u64 {
            continue;
        }
        // Skip the 16 bytes of context each slice carries.
        if bytes.len() > 17 {
            bytes[16] ^= 0xff;
        }
        if let Err(e) = prove(&g) {
            found.push(e.to_string());
        }
    }
    assert!(
        found.iter().any(|e| e.contains(".altinstr_aux")),
        "{found:?}"
    );
}

#[test]
fn a_module_function_is_matched_against_the_modules_object() {
    let f = fixture("module-isofs");
    let proof = prove(&f).unwrap();
    assert!(proof
        .function_sympos
        .keys()
        .any(|(_, name)| name == "isofs_show_options"));
}

/// Regression: with lockdep off, `__key.N` has size 0 and shares its address with the next
/// object; the module's relocation names that object, ours the key.
#[test]
fn a_zero_size_static_sharing_its_address_matches() {
    let f = fixture("module-zero-size-key");
    prove(&f).unwrap();
}

#[test]
fn a_module_mismatch_is_refused_naming_module_and_function() {
    let mut f = fixture("module-isofs");
    f.perturb_module_function("isofs", "isofs_show_options", 6);
    let err = prove(&f).unwrap_err().to_string();
    assert!(err.contains("isofs:isofs_show_options"), "{err}");
}

// ---- extraction and klp conversion ------------------------------------------------------

#[test]
fn the_patch_object_holds_the_new_function_and_references_the_rest() {
    let f = fixture("cmdline");
    let diffs = diff::diff(&f.pairs, &f.context).unwrap();
    let x = graft_build::extract::extract(&f.pairs, &diffs, &f.context).unwrap();
    let patch = &x[0].patch;
    assert_eq!(patch.functions.len(), 1);
    assert_eq!(patch.functions[0].name, "cmdline_proc_show");
    let names: Vec<&str> = patch.externals.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"seq_printf") && names.contains(&"saved_command_line"),
        "{names:?}"
    );
    let mcount = patch.elf.section_index("__mcount_loc").unwrap();
    assert_eq!(
        patch.elf.sections[mcount].data.len(),
        8,
        "one __fentry__ site"
    );
}

#[test]
fn klp_conversion_moves_unexported_references_into_klp_sections() {
    let f = fixture("cmdline");
    let diffs = diff::diff(&f.pairs, &f.context).unwrap();
    let x = graft_build::extract::extract(&f.pairs, &diffs, &f.context).unwrap();
    let mut elf = x[0].patch.elf.clone();
    let mut resolutions = HashMap::new();
    for ext in &x[0].patch.externals {
        let r = if ext.name == "saved_command_line" {
            Resolution::Livepatch {
                patched: "vmlinux".into(),
                object: "vmlinux".into(),
                name: ext.name.clone(),
                sympos: 0,
            }
        } else {
            Resolution::Exported(ext.name.clone())
        };
        resolutions.insert(ext.symbol.clone(), r);
    }
    graft_build::klp::convert(&mut elf, &resolutions).unwrap();
    let klp_sym = elf
        .symbols
        .iter()
        .position(|s| s.name == ".klp.sym.vmlinux.saved_command_line,0")
        .expect("the klp symbol");
    assert_eq!(
        elf.symbols[klp_sym].section,
        graft_elf::SymSection::LivePatch
    );
    let text = elf
        .sections
        .iter()
        .find(|s| s.name.contains("cmdline_proc_show") && s.is_exec())
        .unwrap();
    let klp = text
        .relocations
        .iter()
        .find(|r| r.name.starts_with(".klp.rela.vmlinux."))
        .expect("a .klp.rela.vmlinux section");
    assert!(klp.flags & graft_elf::SHF_RELA_LIVEPATCH != 0);
    assert!(klp.relocs.iter().all(|r| r.symbol == klp_sym));
    // The normal relocations keep only what the loader resolves.
    assert!(text.relocs().all(|r| r.symbol != klp_sym));
    // Debug sections never reach the module.
    assert!(elf.sections.iter().all(|s| !s.name.starts_with(".debug")));
}

/// A module-resolved reference in a section the module loader reads at load time is refused.
#[test]
fn a_module_klp_relocation_in_a_loader_section_is_refused() {
    let f = fixture("module-isofs");
    let diffs = diff::diff(&f.pairs, &f.context).unwrap();
    let x = graft_build::extract::extract(&f.pairs, &diffs, &f.context).unwrap();
    let mut elf = x[0].patch.elf.clone();
    let ext = x[0].patch.externals.first().expect("an external").clone();
    let symbol = elf
        .symbols
        .iter()
        .position(|s| s.name == ext.symbol)
        .unwrap();
    let mut section = graft_elf::Section::new(
        ".altinstr_replacement",
        object::elf::SHT_PROGBITS,
        6,
        1,
        vec![0xe8, 0, 0, 0, 0],
    );
    section.rela_mut().push(graft_elf::Reloc {
        offset: 1,
        r_type: object::elf::R_X86_64_PLT32,
        symbol,
        addend: -4,
    });
    elf.sections.push(section);
    let resolutions = HashMap::from([(
        ext.symbol.clone(),
        Resolution::Livepatch {
            patched: "isofs".into(),
            object: "isofs".into(),
            name: ext.name.clone(),
            sympos: 0,
        },
    )]);
    let err = graft_build::klp::convert(&mut elf, &resolutions)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(".altinstr_replacement") && err.contains("when isofs loads"),
        "{err}"
    );
}

#[test]
fn the_format_checker_names_what_a_plain_module_lacks() {
    let f = fixture("module-isofs");
    let ko = f.module_object_for_tests("isofs");
    let violations = graft_elf::check_livepatch_module(&ko, &|_| true);
    assert!(!violations.is_empty());
    let text: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
    assert!(text.iter().any(|v| v.contains("livepatch")), "{text:?}");
}

/// Regression: of identical copies of a static function in several units, the first match was
/// taken; the copy of the patched unit is the one placed among the unit's other functions.
#[test]
fn the_copy_linked_with_the_unit_is_recognised_by_its_neighbours() {
    use graft_build::runpre::RunningCode;
    let f = fixture("params-function");
    let pre = &f.pairs[0].pre;
    let function = pre
        .symbols
        .iter()
        .position(|s| s.name == "param_get_charp")
        .unwrap();
    let table = f.vmlinux_symbols().unwrap();
    let address = f.vmlinux_symbols_address("param_get_charp");
    assert!(runpre::neighbours(pre, function, address, &table) > 3);
    assert_eq!(
        runpre::neighbours(pre, function, address + 0x1000_0000, &table),
        0
    );
    prove(&f).unwrap();
}

/// Regression: a module function's references into its `.cold` part (in `.text.unlikely` of
/// the module, in a section of its own here) were named differently on the two sides.
#[test]
fn a_modules_reference_into_its_cold_part_matches() {
    let f = fixture("module-cold-part");
    let pre = &f.pairs[0].pre;
    assert!(pre
        .symbols
        .iter()
        .any(|s| s.name == "isofs_get_blocks.cold"));
    let proof = prove(&f).unwrap();
    assert!(proof
        .function_sympos
        .keys()
        .any(|(_, name)| name == "isofs_get_blocks"));
}
