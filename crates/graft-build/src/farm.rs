//! A scratch view of the prepared source tree in which some files are replaced.
//!
//! Copying a 1.3 GB tree per build is too slow and hard links risk writes landing in the cached
//! tree. Instead the view is a *symlink farm*: only the directories leading to replaced files
//! are real; every other entry is a symbolic link into the cached tree. Compilers read through
//! the links, outputs land in the real directories, and the cached tree is never written.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::BuildError;

/// Build outputs that must never be links into the cache (a compiler writing through one
/// would change the cached tree).
fn is_output(name: &str) -> bool {
    name.ends_with(".o")
        || name.ends_with(".cmd")
        || name.ends_with(".d")
        || name.ends_with(".ko")
        || name.ends_with(".mod")
}

/// Creates at `farm` a view of `tree` where each path in `real` is a regular file copied from
/// the tree (or absent, if the tree lacks it) so that it can be patched.
pub fn create(tree: &Path, farm: &Path, real: &[String]) -> Result<(), BuildError> {
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
    dirs.insert(PathBuf::new());
    for file in real {
        let mut dir = Path::new(file).parent();
        while let Some(d) = dir {
            dirs.insert(d.to_path_buf());
            dir = d.parent();
        }
    }
    for dir in &dirs {
        let here = farm.join(dir);
        fs::create_dir_all(&here).map_err(|e| BuildError::io("creating", &here, e))?;
        let source = tree.join(dir);
        let Ok(entries) = fs::read_dir(&source) else {
            continue; // a directory the patch creates
        };
        for entry in entries {
            let entry = entry.map_err(|e| BuildError::io("listing", &source, e))?;
            let name = entry.file_name();
            let rel = dir.join(&name);
            if dirs.contains(&rel)
                || real.iter().any(|f| Path::new(f) == rel)
                || is_output(&name.to_string_lossy())
            {
                continue;
            }
            let link = here.join(&name);
            std::os::unix::fs::symlink(entry.path(), &link)
                .map_err(|e| BuildError::io("linking", &link, e))?;
        }
    }
    for file in real {
        let from = tree.join(file);
        let to = farm.join(file);
        if from.is_file() {
            fs::copy(&from, &to).map_err(|e| BuildError::io("copying", &from, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_replaced_files_are_real() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("fs/proc")).unwrap();
        fs::create_dir_all(tree.join("include/linux")).unwrap();
        fs::write(tree.join("fs/proc/cmdline.c"), "old").unwrap();
        fs::write(tree.join("fs/proc/internal.h"), "h").unwrap();
        fs::write(tree.join("fs/proc/cmdline.o"), "obj").unwrap();
        fs::write(tree.join("include/linux/x.h"), "x").unwrap();
        let farm = dir.path().join("farm");
        create(&tree, &farm, &["fs/proc/cmdline.c".to_string()]).unwrap();
        assert!(!fs::symlink_metadata(farm.join("fs/proc/cmdline.c"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::symlink_metadata(farm.join("fs/proc/internal.h"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(fs::symlink_metadata(farm.join("include"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(
            !farm.join("fs/proc/cmdline.o").exists(),
            "outputs must not be linked"
        );
        fs::write(farm.join("fs/proc/cmdline.c"), "new").unwrap();
        assert_eq!(
            fs::read_to_string(tree.join("fs/proc/cmdline.c")).unwrap(),
            "old"
        );
    }
}
