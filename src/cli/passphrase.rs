//! Passphrase input: from a file, from the terminal without echo, or one line of stdin (for
//! scripts). Never from the command line itself, where `ps` would show it.
//!
//! Every buffer that holds a passphrase is wiped when dropped, and none grows once it holds
//! part of one (a reallocation would leave a copy in freed memory). Files and stdin are read
//! into one buffer allocated up front, with a cap; stdin without buffering, so that nothing is
//! left in the process's stdin buffer either.

use std::io::{self, IsTerminal, Read};
use std::os::fd::AsFd;
use std::path::Path;

use zeroize::Zeroizing;

use crate::keyring::Passphrase;

/// The most a passphrase file or line may hold: far more than any passphrase a keyring
/// accepts (which then reports the length), far less than a `/dev/zero` would give.
const MAX_INPUT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    #[error("cannot read passphrase file {path}: {source}")]
    File { path: String, source: io::Error },
    #[error("cannot read the passphrase from the terminal: {0}")]
    Terminal(io::Error),
    #[error("cannot read the passphrase from stdin: {0}")]
    Stdin(io::Error),
    #[error("no passphrase on stdin (expected one line; or use --passphrase-file)")]
    Missing,
    #[error("the passphrase input is longer than {MAX_INPUT} bytes")]
    TooLong,
    #[error("the passphrase is empty")]
    Empty,
    #[error("the passphrases do not match")]
    Mismatch,
}

/// The passphrase in `text`, as UTF-8 (invalid sequences replaced, as a passphrase file has
/// always been read).
fn non_empty(text: &[u8]) -> Result<Passphrase, PassphraseError> {
    if text.is_empty() {
        return Err(PassphraseError::Empty);
    }
    Ok(match String::from_utf8_lossy(text) {
        std::borrow::Cow::Borrowed(valid) => Zeroizing::new(valid.as_bytes().to_vec()),
        std::borrow::Cow::Owned(replaced) => Zeroizing::new(replaced.into_bytes()),
    })
}

/// Reads `input` to its end into a buffer of `MAX_INPUT` bytes; returns it and the length read.
fn read_capped(mut input: impl Read) -> io::Result<Option<(Zeroizing<Vec<u8>>, usize)>> {
    let mut buf = Zeroizing::new(vec![0u8; MAX_INPUT]);
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => return Ok(Some((buf, filled))),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Full: only a one-byte probe tells a file of exactly MAX_INPUT bytes from a longer one.
    let mut probe = [0u8; 1];
    Ok(match input.read(&mut probe)? {
        0 => Some((buf, filled)),
        _ => None,
    })
}

/// The first line of a passphrase file (without its `\n` or `\r\n`).
fn first_line(text: &[u8]) -> &[u8] {
    match text.iter().position(|&b| b == b'\n') {
        Some(end) => text[..end].strip_suffix(b"\r").unwrap_or(&text[..end]),
        None => text,
    }
}

/// One line of stdin, read a byte at a time from the descriptor itself: a later read (the
/// next passphrase, another process sharing the pipe) starts right after it. `None` at EOF.
fn stdin_line() -> Result<Option<Zeroizing<Vec<u8>>>, PassphraseError> {
    let fd = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(PassphraseError::Stdin)?;
    let mut stdin = std::fs::File::from(fd);
    let mut line = Zeroizing::new(vec![0u8; MAX_INPUT]);
    let mut len = 0;
    loop {
        if len == line.len() {
            return Err(PassphraseError::TooLong);
        }
        match stdin.read(&mut line[len..=len]) {
            Ok(0) if len == 0 => return Ok(None),
            Ok(0) => break,
            Ok(_) if line[len] == b'\n' => break,
            Ok(_) => len += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PassphraseError::Stdin(e)),
        }
    }
    // Also drops the newline read last; `truncate` keeps the allocation, wiped on drop.
    while len > 0 && line[len - 1] == b'\r' {
        len -= 1;
    }
    line.truncate(len);
    Ok(Some(line))
}

/// Reads a passphrase. A file wins; otherwise a terminal on stdin is prompted without echo
/// (twice when `confirm`); otherwise one line is read from stdin, so a script can pipe
/// several passphrases one per line.
pub fn read(
    prompt: &str,
    file: Option<&Path>,
    confirm: bool,
) -> Result<Passphrase, PassphraseError> {
    if let Some(path) = file {
        let failed = |source| PassphraseError::File {
            path: path.display().to_string(),
            source,
        };
        let opened = std::fs::File::open(path).map_err(failed)?;
        let (text, len) = read_capped(opened)
            .map_err(failed)?
            .ok_or(PassphraseError::TooLong)?;
        return non_empty(first_line(&text[..len]));
    }
    if io::stdin().is_terminal() {
        // rpassword returns a plain String: wrapped before anything else happens to it.
        let first = Zeroizing::new(
            rpassword::prompt_password(format!("{prompt}: ")).map_err(PassphraseError::Terminal)?,
        );
        if confirm {
            let again = Zeroizing::new(
                rpassword::prompt_password(format!("{prompt} (again): "))
                    .map_err(PassphraseError::Terminal)?,
            );
            if *again != *first {
                return Err(PassphraseError::Mismatch);
            }
        }
        return non_empty(first.as_bytes());
    }
    let line = stdin_line()?.ok_or(PassphraseError::Missing)?;
    // A line of stdin has always had to be UTF-8.
    std::str::from_utf8(&line).map_err(|e| {
        PassphraseError::Stdin(io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    })?;
    non_empty(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_lines() {
        assert_eq!(first_line(b"pw\nnext\n"), b"pw");
        assert_eq!(first_line(b"pw\r\nnext"), b"pw");
        assert_eq!(first_line(b"pw"), b"pw");
        assert_eq!(first_line(b"pw\r"), b"pw\r");
        assert_eq!(first_line(b"\nnext"), b"");
    }

    #[test]
    fn capped_reads() {
        let (text, len) = read_capped(&b"secret\n"[..]).unwrap().unwrap();
        assert_eq!(&text[..len], b"secret\n");
        assert_eq!(text.len(), MAX_INPUT, "the buffer never grew");
        let exact = vec![b'x'; MAX_INPUT];
        assert_eq!(read_capped(&exact[..]).unwrap().unwrap().1, MAX_INPUT);
        let over = vec![b'x'; MAX_INPUT + 1];
        assert!(read_capped(&over[..]).unwrap().is_none());
    }

    #[test]
    fn passphrases_are_utf8_or_replaced() {
        assert_eq!(&*non_empty(b"p\xc3\xbcw").unwrap(), "püw".as_bytes());
        assert_eq!(&*non_empty(b"p\xffw").unwrap(), "p\u{fffd}w".as_bytes());
        assert!(matches!(non_empty(b""), Err(PassphraseError::Empty)));
    }
}
