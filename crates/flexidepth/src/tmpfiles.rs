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

/// A registered temp file beside `target`; removed when dropped unless [`TmpFile::persist`]ed. A target that
/// exists and is not a regular file (a device such as `/dev/null` or `/dev/full`, a FIFO) is written directly, as a
/// shell redirection would: renaming over it would replace the device with a file. A symlink is followed, so the
/// file it points to is replaced, not the link.
pub struct TmpFile {
    path: PathBuf,
    target: PathBuf,
    /// Writing straight into the target (not a regular file): no temp file, no rename.
    direct: bool,
}

/// Where an atomic write of `target` goes: the symlink's destination for a symlink, and whether that is something
/// other than a regular file (written directly). A folder is an error.
fn resolve_target(target: &Path) -> Result<(PathBuf, bool)> {
    let meta = match std::fs::metadata(target) {
        Ok(m) => m,
        // Nothing there yet (or a dangling link, which the rename then replaces): a new regular file.
        Err(_) => return Ok((target.to_path_buf(), false)),
    };
    if meta.is_dir() {
        return Err(Error::Input(format!("{} is a folder, not a file", target.display())));
    }
    let real = std::fs::canonicalize(target).map_err(|e| Error::io(target, e))?;
    Ok((real, !meta.is_file()))
}

impl TmpFile {
    /// Create the temp file for `target` (`.{name}.tmp{pid}` in the same folder) and open it for writing.
    pub fn create(target: &Path) -> Result<(Self, std::fs::File)> {
        let (target, direct) = resolve_target(target)?;
        if direct {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&target)
                .map_err(|e| Error::io(&target, e))?;
            let tmp = TmpFile {
                path: target.clone(),
                target,
                direct,
            };
            return Ok((tmp, file));
        }
        let target = target.as_path();
        let mut name = std::ffi::OsString::from(".");
        name.push(target.file_name().unwrap_or_default());
        name.push(format!(".tmp{}", std::process::id()));
        let path = target.with_file_name(name);
        // Registered before it exists, so there is no moment when an interrupt could miss it.
        live().push(path.clone());
        let tmp = TmpFile {
            path,
            target: target.to_path_buf(),
            direct: false,
        };
        let file = std::fs::File::create(&tmp.path).map_err(|e| Error::io(target, e))?;
        Ok((tmp, file))
    }

    /// Flush `file` to disk and rename the temp file to its target.
    pub fn persist(self, file: std::fs::File) -> Result<()> {
        if self.direct {
            // A device or FIFO: the writes went straight in (their errors, e.g. ENOSPC of /dev/full, were
            // reported); there is nothing to sync or rename, and nothing to remove.
            std::mem::forget(self);
            return Ok(());
        }
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
        if self.direct {
            return; // never remove a device or FIFO
        }
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

    /// Every kind of existing target that is not a plain file: devices and FIFOs are written through (their errors
    /// reported) and stay what they are, a symlink keeps pointing at its file, a folder is an error.
    #[cfg(unix)]
    #[test]
    fn devices_fifos_links_and_folders_are_not_replaced() {
        use crate::error::write_atomic;
        use std::os::unix::fs::FileTypeExt;
        let is_char = |p: &str| std::fs::metadata(p).unwrap().file_type().is_char_device();
        write_atomic(Path::new("/dev/null"), b"x").unwrap();
        assert!(is_char("/dev/null"));
        let e = write_atomic(Path::new("/dev/full"), b"x").unwrap_err().to_string();
        assert!(e.contains("/dev/full"), "{e}");
        assert!(is_char("/dev/full"));

        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(&fifo).unwrap())
        };
        write_atomic(&fifo, b"through the pipe").unwrap();
        assert_eq!(reader.join().unwrap(), b"through the pipe");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());

        let file = dir.path().join("real.txt");
        std::fs::write(&file, b"old").unwrap();
        let link = dir.path().join("link.txt");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&file).unwrap(), b"new");

        let e = write_atomic(dir.path(), b"x").unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        assert!(live().is_empty() || live().iter().all(|p| !p.starts_with(dir.path())));
    }
}
