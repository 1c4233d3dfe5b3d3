//! Claiming a file out of its writer's way, and disposing of it once its outcome is durable.
//!
//! Both are renames within one filesystem, so a file is always whole in exactly one place: the
//! landing folder, the working folder, the done folder or the failed folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Moves `path` into `work_dir` (this instance's working folder) and returns where it now is.
///
/// # Errors
///
/// `NotFound` when the file is gone (another scan or process claimed it first); any other
/// error of creating the working folder or renaming.
pub(crate) fn claim(work_dir: &Path, path: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(work_dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("path has no file name"))?;
    let dest = free_name(work_dir, Path::new(name))?;
    fs::rename(path, &dest)?;
    Ok(dest)
}

/// Puts a claimed file back where it was found, for a file that changed after being claimed.
/// If a new file took the old name meanwhile, the claimed one stays in the working folder.
pub(crate) fn unclaim(working: &Path, original: &Path) -> io::Result<()> {
    if original.exists() {
        return Ok(());
    }
    fs::rename(working, original)
}

/// A path in `dir` for `name` that no file holds yet: `name`, else `name.1`, `name.2`, ...
pub(crate) fn free_name(dir: &Path, name: &Path) -> io::Result<PathBuf> {
    let first = dir.join(name);
    if !exists(&first)? {
        return Ok(first);
    }
    for n in 1..10_000u32 {
        let mut candidate = name.as_os_str().to_owned();
        candidate.push(format!(".{n}"));
        let candidate = dir.join(candidate);
        if !exists(&candidate)? {
            return Ok(candidate);
        }
    }
    Err(io::Error::other(format!(
        "no free name for `{}` in `{}`",
        name.display(),
        dir.display()
    )))
}

fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// Moves `from` to `to`, creating `to`'s folder first.
pub(crate) fn move_to(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::rename(from, to)
}

/// Writes `text` to `path` through a temporary file and a rename, so a reader never sees half.
pub(crate) fn write_beside(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;

    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("path has no parent"))?;
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_name_skips_taken_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            free_name(dir.path(), Path::new("a.csv")).unwrap(),
            dir.path().join("a.csv")
        );
        fs::write(dir.path().join("a.csv"), "x").unwrap();
        fs::write(dir.path().join("a.csv.1"), "x").unwrap();
        assert_eq!(
            free_name(dir.path(), Path::new("a.csv")).unwrap(),
            dir.path().join("a.csv.2")
        );
    }

    #[test]
    fn unclaim_never_overwrites_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("a.csv");
        let working = dir.path().join("w.csv");
        fs::write(&original, "new").unwrap();
        fs::write(&working, "old").unwrap();
        unclaim(&working, &original).unwrap();
        assert_eq!(fs::read_to_string(&original).unwrap(), "new");
        assert!(working.exists());
    }
}
