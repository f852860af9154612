//! `graft install`, `uninstall` and `boot`: installed patches, applied in order at each boot.

use std::path::Path;

use super::checks::check_module;
use super::ApplyOutcome;
use super::{apply, ApplyOptions, Observer};
use crate::state::{self, Action, Installed, StateDir};
use crate::sys::{self};
use crate::HostError;

/// The result of an install.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InstallReport {
    /// The patch.
    pub name: String,
    /// Installed patches it superseded (removed from the list).
    pub superseded: Vec<String>,
    /// Whether it is for the running kernel (else `graft boot` skips it until that kernel runs).
    pub for_running_kernel: Option<bool>,
    /// The boot order now.
    pub order: Vec<String>,
}

/// Installs a module for `graft boot`: an atomic replace patch supersedes every installed patch
/// for the same kernel; a set member supersedes its set's older patch.
pub fn install(state: &StateDir, module: &Path) -> Result<InstallReport, HostError> {
    let checked = check_module(module, None)?;
    let m = &checked.manifest;
    let mut entry = state.begin(Action::Install, Some(&m.name))?;
    let mut list = state.installed()?;
    let mut superseded = Vec::new();
    list.retain(|i| {
        let same_kernel = i.manifest.kernel.build_id == m.kernel.build_id;
        let replaced = i.name == m.name
            || (same_kernel && m.replace)
            || (same_kernel && m.set.is_some() && i.manifest.set == m.set);
        if replaced && i.name != m.name {
            superseded.push(i.name.clone());
        }
        !replaced
    });
    list.push(Installed {
        name: m.name.clone(),
        installed_ms: state::now_ms(),
        manifest: m.clone(),
    });
    state.set_installed(
        &list,
        &[(
            m.name.clone(),
            checked.bytes.clone(),
            checked.manifest_bytes.clone(),
        )],
    )?;
    let for_running_kernel = sys::running_kernel()
        .ok()
        .map(|r| r.build_id == m.kernel.build_id);
    state.finish(
        &mut entry,
        true,
        format!("installed; superseded {superseded:?}"),
    )?;
    Ok(InstallReport {
        name: m.name.clone(),
        superseded,
        for_running_kernel,
        order: list.into_iter().map(|i| i.name).collect(),
    })
}

/// Removes an installed patch (a live one stays live: `graft revert` removes it now).
pub fn uninstall(state: &StateDir, name: &str) -> Result<(), HostError> {
    let mut list = state.installed()?;
    let before = list.len();
    list.retain(|i| i.name != name);
    if list.len() == before {
        return Err(HostError::NotInstalled(name.to_string()));
    }
    let mut entry = state.begin(Action::Uninstall, Some(name))?;
    state.set_installed(&list, &[])?;
    state.finish(&mut entry, true, "uninstalled")?;
    Ok(())
}

/// One installed patch at boot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BootItem {
    /// The patch.
    pub name: String,
    /// `applied`, `already-live`, `skipped` or `failed`.
    pub result: String,
    /// Why, for skipped and failed ones.
    pub detail: Option<String>,
}

/// The result of `graft boot`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BootReport {
    /// `graft.disable=1` was on the kernel command line.
    pub disabled: bool,
    /// Each installed patch.
    pub items: Vec<BootItem>,
    /// Whether every patch for this kernel is live.
    pub ok: bool,
}

/// Whether the kernel command line disables graft at boot.
pub fn boot_disabled(cmdline: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|w| matches!(w, "graft.disable=1" | "graft.disable=y" | "graft.disable=Y"))
}

/// Applies the installed patches for the running kernel, in order; stops at the first failure
/// (a later patch may rely on an earlier one).
pub fn boot(
    state: &StateDir,
    options: &ApplyOptions,
    observer: &mut dyn Observer,
) -> Result<BootReport, HostError> {
    let installed = state.installed()?;
    let mut entry = state.begin(Action::Boot, None)?;
    if boot_disabled(&sys::kernel_cmdline()?) {
        state.finish(&mut entry, true, "graft.disable=1: applied nothing")?;
        return Ok(BootReport {
            disabled: true,
            items: installed
                .into_iter()
                .map(|i| BootItem {
                    name: i.name,
                    result: "skipped".into(),
                    detail: Some("graft.disable=1 on the kernel command line".into()),
                })
                .collect(),
            ok: true,
        });
    }
    sys::livepatch_dir()?;
    let running = sys::running_kernel()?;
    let mut items = Vec::new();
    let mut ok = true;
    for i in installed {
        let item = |result: &str, detail: Option<String>| BootItem {
            name: i.name.clone(),
            result: result.into(),
            detail,
        };
        if !ok {
            items.push(item("skipped", Some("an earlier patch failed".into())));
            continue;
        }
        if i.manifest.kernel.build_id != running.build_id {
            items.push(item(
                "skipped",
                Some(format!(
                    "built for {} (build-id {}), not this kernel",
                    i.manifest.kernel.release, i.manifest.kernel.build_id
                )),
            ));
            continue;
        }
        if sys::patch(&i.name)?.is_some() {
            items.push(item("already-live", None));
            continue;
        }
        match apply(state, &state.installed_module(&i.name), options, observer) {
            Ok(r) if matches!(r.outcome, ApplyOutcome::Applied | ApplyOutcome::Forced) => {
                items.push(item("applied", None));
            }
            Ok(r) => {
                ok = false;
                items.push(item("failed", Some(format!("{:?}", r.outcome))));
            }
            Err(e) => {
                ok = false;
                items.push(item("failed", Some(e.to_string())));
            }
        }
    }
    state.finish(
        &mut entry,
        ok,
        if ok {
            "all applied"
        } else {
            "stopped at a failure"
        },
    )?;
    Ok(BootReport {
        disabled: false,
        items,
        ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_switch_is_a_whole_word() {
        assert!(boot_disabled("console=ttyS0 graft.disable=1 quiet"));
        assert!(!boot_disabled("console=ttyS0 graft.disable=10"));
        assert!(!boot_disabled("xgraft.disable=1"));
    }
}
