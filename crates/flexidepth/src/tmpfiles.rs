//! Temporary files of atomic writes (a sibling temp file, then a rename), registered while they exist, so that an
//! interrupted process (Ctrl-C) removes them before it exits instead of leaving hidden half-written files behind.
//!
//! They are created with the default mode (0666 less the umask), so the renamed file has normal permissions.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The temp files that exist now.
static LIVE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock cannot leave the list inconsistent (push and retain only).
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A registered temp file beside `target`; removed when dropped unless [`TmpFile::persist`]ed.
pub struct TmpFile {
    path: PathBuf,
    target: PathBuf,
}

impl TmpFile {
    /// Create the temp file for `target` (`.{name}.tmp{pid}` in the same folder) and open it for writing.
    pub fn create(target: &Path) -> Result<(Self, std::fs::File)> {
        let mut name = std::ffi::OsString::from(".");
        name.push(target.file_name().unwrap_or_default());
        name.push(format!(".tmp{}", std::process::id()));
        let path = target.with_file_name(name);
        // Registered before it exists, so there is no moment when an interrupt could miss it.
        live().push(path.clone());
        let tmp = TmpFile {
            path,
            target: target.to_path_buf(),
        };
        let file = std::fs::File::create(&tmp.path).map_err(|e| Error::io(target, e))?;
        Ok((tmp, file))
    }

    /// Flush `file` to disk and rename the temp file to its target.
    pub fn persist(self, file: std::fs::File) -> Result<()> {
        file.sync_all().map_err(|e| Error::io(&self.target, e))?;
        drop(file);
        std::fs::rename(&self.path, &self.target).map_err(|e| Error::io(&self.target, e))?;
        live().retain(|p| p != &self.path);
        std::mem::forget(self);
        Ok(())
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        live().retain(|p| p != &self.path);
    }
}

/// Remove every temp file that exists now and exit with 130 (128 + SIGINT, as a shell reports Ctrl-C). For
/// interrupt handlers: the lock is held until the process is gone, so no new temp file can appear meanwhile.
pub fn exit_interrupted() -> ! {
    let files = live();
    for p in files.iter() {
        let _ = std::fs::remove_file(p);
    }
    std::process::exit(130)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_temp_file_is_renamed_or_removed_and_never_left_registered() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        let (tmp, mut f) = TmpFile::create(&target).unwrap();
        let tmp_path = tmp.path.clone();
        assert!(live().contains(&tmp_path));
        f.write_all(b"x").unwrap();
        tmp.persist(f).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
        assert!(!tmp_path.exists() && !live().contains(&tmp_path));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Not tempfile's 0600: what any new file gets.
            let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o777;
            assert_ne!(mode & 0o044, 0, "{mode:o}");
        }
        let (tmp, _f) = TmpFile::create(&dir.path().join("other.bin")).unwrap();
        let p = tmp.path.clone();
        drop(tmp);
        assert!(!p.exists() && !live().contains(&p));
    }
}
