//! Crash-safe file replacement: write a temporary file in the target's directory, fsync it,
//! rename it over the target, fsync the directory. A reader (or a crash) sees the old file or
//! the new one, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Temporary files are named `.tvault-tmp-` followed by 24 hex digits: a fixed length, so
/// that any target name that fits in `NAME_MAX` can be written atomically, and never ending in
/// `.tvlt` or `.json`, so that no listing mistakes one for a container or a keyring.
pub const TEMP_PREFIX: &str = ".tvault-tmp-";
/// Marker of the temporary names of earlier versions (`.NAME.tmp-` + 12 hex digits), still
/// recognised so that `fsck` reports leftovers.
pub const TEMP_MARKER: &str = ".tmp-";

/// True for temporary-file names, of this version or an earlier one.
pub fn is_temp_name(name: &str) -> bool {
    if let Some(suffix) = name.strip_prefix(TEMP_PREFIX) {
        return suffix.len() == 24 && suffix.bytes().all(|b| b.is_ascii_hexdigit());
    }
    let Some((head, suffix)) = name.rsplit_once(TEMP_MARKER) else {
        return false;
    };
    head.len() > 1
        && head.starts_with('.')
        && suffix.len() == 12
        && suffix.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A fresh random temporary-file name.
pub fn temp_name() -> io::Result<String> {
    let mut suffix = [0u8; 12];
    getrandom::getrandom(&mut suffix).map_err(io::Error::other)?;
    Ok(format!("{TEMP_PREFIX}{}", hex::encode(suffix)))
}

fn temp_path(target: &Path) -> io::Result<PathBuf> {
    Ok(target.with_file_name(temp_name()?))
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Creates an empty temporary file beside `target` (same directory, so the final rename is
/// atomic), with permission bits `mode`.
pub fn create_temp_beside(target: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    let temp = temp_path(target)?;
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)?;
    Ok((temp, file))
}

/// Makes a finished temporary file durable and moves it over `target`.
pub fn commit_temp(temp: &Path, file: &File, target: &Path) -> io::Result<()> {
    file.sync_all()?;
    fs::rename(temp, target)?;
    sync_dir(target.parent().unwrap_or(Path::new(".")))
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
    // Never rename over a device, FIFO or directory (e.g. `-o /dev/null`).
    if fs::symlink_metadata(target).is_ok_and(|m| !m.is_file()) {
        return Err(io_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} exists and is not a regular file", target.display()),
        )));
    }
    let (temp, mut file) = create_temp_beside(target, mode).map_err(&io_error)?;
    let result =
        fill(&mut file).and_then(|()| commit_temp(&temp, &file, target).map_err(&io_error));
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
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
        let (temp, _) = create_temp_beside(&target, 0o600).unwrap();
        assert!(is_temp_name(temp.file_name().unwrap().to_str().unwrap()));
        assert!(!is_temp_name(".model.safetensors.tmp-x"));
        assert!(is_temp_name(".model.safetensors.tmp-0123456789ab"));
        assert!(!is_temp_name(".tmp-0123456789ab"));
    }
}
