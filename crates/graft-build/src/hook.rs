//! The hook: the C file that declares the `klp_patch` the livepatch core applies.
//!
//! One `klp_object` per patched object (vmlinux or a module), one `klp_func` per replaced
//! function with its `old_sympos`, the callbacks, and `replace` for atomic replace. The module
//! enables the patch when it loads.

use std::fmt::Write as _;

use crate::module::ModuleSpec;

/// The hook's C source.
pub fn hook_source(spec: &ModuleSpec) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "// SPDX-License-Identifier: GPL-2.0\n// The livepatch core's view of {}: which functions it replaces.", spec.name);
    c.push_str(
        "#include <linux/kernel.h>\n#include <linux/module.h>\n#include <linux/livepatch.h>\n\n",
    );
    let mut n = 0;
    let mut tables = Vec::new();
    let mut objects: Vec<&String> = spec.objects.keys().chain(spec.callbacks.keys()).collect();
    objects.sort();
    objects.dedup();
    let none = Vec::new();
    for object in objects {
        let funcs = spec.objects.get(object).unwrap_or(&none);
        let table = format!("graft_funcs_{}", tables.len());
        let mut entries = String::new();
        for f in funcs {
            let _ = writeln!(
                c,
                "extern char graft_new_{n}[] __asm__(\"{}\");",
                f.new_symbol
            );
            let _ = writeln!(
                entries,
                "\t{{ .old_name = \"{}\", .new_func = graft_new_{n}, .old_sympos = {} }},",
                f.old_name, f.sympos
            );
            n += 1;
        }
        let _ = writeln!(
            c,
            "\nstatic struct klp_func {table}[] = {{\n{entries}\t{{ }}\n}};\n"
        );
        let mut callbacks = String::new();
        for (kind, symbol) in spec.callbacks.get(object).into_iter().flatten() {
            let ret = if kind == "pre_patch" { "int" } else { "void" };
            let _ = writeln!(
                c,
                "extern {ret} graft_cb_{n}(struct klp_object *) __asm__(\"{symbol}\");"
            );
            let _ = write!(callbacks, " .{kind} = graft_cb_{n},");
            n += 1;
        }
        tables.push((object.clone(), table, callbacks));
    }
    c.push_str("static struct klp_object graft_objects[] = {\n");
    for (object, table, callbacks) in &tables {
        let name = if object == "vmlinux" {
            "NULL".to_string()
        } else {
            format!("\"{object}\"")
        };
        let callbacks = if callbacks.is_empty() {
            String::new()
        } else {
            format!(", .callbacks = {{{callbacks} }}")
        };
        let _ = writeln!(c, "\t{{ .name = {name}, .funcs = {table}{callbacks} }},");
    }
    c.push_str("\t{ }\n};\n\n");
    let _ = writeln!(
        c,
        "static struct klp_patch graft_patch = {{\n\t.mod = THIS_MODULE,\n\t.objs = graft_objects,\n\t.replace = {},\n}};\n",
        spec.replace
    );
    c.push_str("static int __init graft_patch_init(void)\n{\n\treturn klp_enable_patch(&graft_patch);\n}\n\n");
    c.push_str("static void __exit graft_patch_exit(void)\n{\n}\n\n");
    c.push_str("module_init(graft_patch_init);\nmodule_exit(graft_patch_exit);\nMODULE_LICENSE(\"GPL\");\nMODULE_INFO(livepatch, \"Y\");\n");
    let _ = writeln!(c, "MODULE_DESCRIPTION(\"graft live patch {}\");", spec.name);
    // The patched code uses symbols exported into these namespaces (EXPORT_SYMBOL_NS).
    for namespace in &spec.namespaces {
        let _ = writeln!(c, "MODULE_IMPORT_NS({namespace});");
    }
    c
}
