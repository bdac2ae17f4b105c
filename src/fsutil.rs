//! Crash-safe file replacement: write a temporary file in the target's directory, fsync it,
//! rename it over the target, fsync the directory. A reader (or a crash) sees the old file or
//! the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Temporary files carry this marker so that listings (and the mount) can skip them.
pub const TEMP_MARKER: &str = ".tmp-";

pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARKER)
}

fn temp_path(target: &Path) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut suffix = [0u8; 6];
    getrandom::getrandom(&mut suffix).map_err(io::Error::other)?;
    let temp = format!(
        ".{}{TEMP_MARKER}{}",
        name.to_string_lossy(),
        hex::encode(suffix)
    );
    Ok(target.with_file_name(temp))
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Creates `target` atomically with permission bits `mode`: `fill` writes the content into a
/// fresh temporary file; on any error the temporary file is removed and `target` is untouched.
/// `io_error` turns this function's own I/O failures into the caller's error type.
pub fn write_atomic<E>(
    target: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> Result<(), E>,
    io_error: impl Fn(io::Error) -> E,
) -> Result<(), E> {
    let temp = temp_path(target).map_err(&io_error)?;
    let mut file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .map_err(&io_error)?;
    let result = fill(&mut file)
        .and_then(|()| file.sync_all().map_err(&io_error))
        .and_then(|()| fs::rename(&temp, target).map_err(&io_error));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
        return result;
    }
    sync_dir(target.parent().unwrap_or(Path::new("."))).map_err(&io_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn failure_leaves_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("f");
        fs::write(&target, b"old").unwrap();
        let r = write_atomic(
            &target,
            0o600,
            |f| {
                f.write_all(b"partial")?;
                Err(io::Error::other("boom"))
            },
            |e| e,
        );
        assert!(r.is_err());
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        write_atomic(&target, 0o600, |f| f.write_all(b"new"), |e| e).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
    }
}
