//! Log files on disk, for reading: lines one by one (bounded, never blocking on a FIFO), the
//! last line of a file, and the names rotation gives the older files.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::key::suffixed;
use super::{KEEP_ROTATED, MAX_LINE};

/// One line of a log file as read: its number (from 1), its bytes without the newline, and
/// whether it ended with a newline (only the last line of a file can lack one).
pub struct RawLine<'a> {
    pub number: u64,
    pub bytes: &'a [u8],
    pub terminated: bool,
}

/// Opens a log for reading. Anyone who can write the store can put a FIFO where a log
/// should be: that must not hang the reader, so only regular files are read.
pub(super) fn open_for_reading(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Calls `f` on every line of `path`. A line longer than [`MAX_LINE`] is passed cut to that
/// length (which fails to parse). Stops early when `f` returns `false`.
pub fn for_each_line(path: &Path, f: impl FnMut(RawLine<'_>) -> bool) -> Result<(), io::Error> {
    for_each_line_in(open_for_reading(path)?, f)
}

/// [`for_each_line`] over any reader (a log file in a store that is not a local directory).
pub fn for_each_line_in(
    source: impl Read,
    mut f: impl FnMut(RawLine<'_>) -> bool,
) -> Result<(), io::Error> {
    let mut reader = BufReader::with_capacity(1 << 16, source);
    let mut buf = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            // Skip the rest of the overlong line without holding it in memory.
            reader.skip_until(b'\n')?;
        }
        let keep_going = f(RawLine {
            number,
            bytes: &buf,
            terminated: terminated || buf.len() > MAX_LINE,
        });
        if !keep_going {
            return Ok(());
        }
    }
}

/// Why the last line of a log cannot be read as a line.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum TailError {
    #[error("the last line is incomplete (no newline)")]
    Incomplete,
    #[error("the last line is too long")]
    TooLong,
}

/// The last line of an open log (`size` bytes, at least 1) without its newline, or why it
/// is unusable.
pub(super) fn read_last_line(file: &File, size: u64) -> io::Result<Result<Vec<u8>, TailError>> {
    let want = size.min(MAX_LINE as u64 + 1);
    let start = size - want;
    let mut buf = vec![0u8; want as usize];
    file.read_exact_at(&mut buf, start)?;
    if buf.last() != Some(&b'\n') {
        return Ok(Err(TailError::Incomplete));
    }
    buf.pop();
    match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => Ok(Ok(buf[i + 1..].to_vec())),
        None if start == 0 => Ok(Ok(buf)),
        None => Ok(Err(TailError::TooLong)),
    }
}

pub(super) fn rotated_name(log: &Path, n: u32) -> PathBuf {
    suffixed(log, &format!(".{n}"))
}

/// The rotated files of `log` that exist, oldest first, followed by `log` itself.
pub fn with_rotated(log: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..=KEEP_ROTATED)
        .rev()
        .map(|n| rotated_name(log, n))
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    out.push(log.to_path_buf());
    out
}

/// `N` of a rotated file's `.N` suffix: ASCII digits only (`parse` alone would take `+1`).
pub(super) fn rotation_number(suffix: &str) -> Option<u32> {
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// The log a file belongs to: `LOG` for a rotated `LOG.N` (N from 1 to [`KEEP_ROTATED`]),
/// else the file itself.
pub fn base_log(file: &Path) -> PathBuf {
    let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
        return file.to_path_buf();
    };
    match name.rsplit_once('.') {
        Some((base, n))
            if !base.is_empty()
                && rotation_number(n).is_some_and(|n| (1..=KEEP_ROTATED).contains(&n)) =>
        {
            file.with_file_name(base)
        }
        _ => file.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn rotated_names() {
        assert_eq!(base_log(Path::new("/a/x.jsonl.3")), Path::new("/a/x.jsonl"));
        assert_eq!(base_log(Path::new("/a/x.jsonl")), Path::new("/a/x.jsonl"));
        assert_eq!(
            base_log(Path::new("/a/x.jsonl.2024")),
            Path::new("/a/x.jsonl.2024"),
            "only the suffixes rotation makes"
        );
    }

    #[test]
    fn fifos_and_overlong_lines_do_not_hang_or_exhaust_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(for_each_line(&fifo, |_| true).is_err());
        let long = dir.path().join("long");
        let mut bytes = vec![b'x'; 3 * MAX_LINE];
        bytes.extend_from_slice(b"\n{}\n");
        fs::write(&long, bytes).unwrap();
        let mut seen = Vec::new();
        for_each_line(&long, |raw| {
            seen.push((raw.number, raw.bytes.len()));
            true
        })
        .unwrap();
        assert_eq!(seen, [(1, MAX_LINE + 1), (2, 2)]);
    }

    #[test]
    fn the_last_line_is_read_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let last = |bytes: &[u8]| {
            fs::write(&path, bytes).unwrap();
            let file = File::open(&path).unwrap();
            read_last_line(&file, bytes.len() as u64).unwrap()
        };
        assert_eq!(last(b"one\n"), Ok(b"one".to_vec()));
        assert_eq!(last(b"one\ntwo\n"), Ok(b"two".to_vec()));
        assert_eq!(last(b"one\n\n"), Ok(Vec::new()));
        assert_eq!(last(b"one\ntw"), Err(TailError::Incomplete));
        let mut long = b"one\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_LINE + 1));
        long.push(b'\n');
        assert_eq!(last(&long), Err(TailError::TooLong));
        // A line of exactly MAX_LINE bytes is still read.
        let mut full = vec![b'y'; MAX_LINE];
        full.push(b'\n');
        assert_eq!(last(&full), Ok(vec![b'y'; MAX_LINE]));
    }
}
