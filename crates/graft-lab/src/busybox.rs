//! The guest's userland: Debian's statically linked busybox, fetched once into the cache.

use std::path::PathBuf;

use graft_cache::Cache;
use graft_progress::Progress;

use crate::LabError;

const PACKAGE: &str = "busybox-static";

/// Returns the path of a cached static busybox binary, fetching the package on first use.
pub(crate) fn ensure(cache: &Cache, progress: &dyn Progress) -> Result<PathBuf, LabError> {
    let err = |e: &dyn std::fmt::Display| LabError::Busybox(e.to_string());
    // A cached copy of any version is good enough for the guest; ask apt only when none is.
    let tools = cache.root().join("tools");
    if let Some(found) = existing(&tools) {
        return Ok(found);
    }
    let info = graft_deb::query(PACKAGE, None).map_err(|e| err(&e))?;
    let entry = cache.entry("tools", &format!("{PACKAGE}-{}", info.version));
    let lock = entry.lock().map_err(|e| err(&e))?;
    lock.ensure("root", |dir| -> Result<(), graft_deb::DebError> {
        let deb = graft_deb::download(&info, &entry.dir().join("downloads"), progress)?;
        graft_deb::unpack_deb(&deb, dir, progress)?;
        let _ = std::fs::remove_file(&deb);
        Ok(())
    })
    .map_err(|e| err(&e))?;
    let binary = entry.path("root").join("bin/busybox");
    if !binary.is_file() {
        return Err(LabError::Busybox(format!(
            "{} has no bin/busybox",
            entry.path("root").display()
        )));
    }
    Ok(binary)
}

fn existing(tools: &std::path::Path) -> Option<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(tools)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PACKAGE) && !n.ends_with(".lock"))
        })
        .collect();
    dirs.sort();
    dirs.into_iter().rev().find_map(|dir| {
        let done = dir.join("root.done").is_file();
        let binary = dir.join("root/bin/busybox");
        (done && binary.is_file()).then_some(binary)
    })
}
