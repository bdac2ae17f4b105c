//! Passphrase input: from a file, from the terminal without echo, or one line of stdin (for
//! scripts). Never from the command line itself, where `ps` would show it.

use std::io::{self, BufRead, IsTerminal};
use std::path::Path;

use zeroize::Zeroizing;

use crate::keyring::Passphrase;

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
    #[error("the passphrase is empty")]
    Empty,
    #[error("the passphrases do not match")]
    Mismatch,
}

fn strip_newline(mut text: Zeroizing<String>) -> Zeroizing<String> {
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    text
}

fn non_empty(text: Zeroizing<String>) -> Result<Passphrase, PassphraseError> {
    if text.is_empty() {
        return Err(PassphraseError::Empty);
    }
    Ok(Zeroizing::new(text.as_bytes().to_vec()))
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
        let bytes = std::fs::read(path).map_err(|source| PassphraseError::File {
            path: path.display().to_string(),
            source,
        })?;
        let text = Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned());
        let first_line = Zeroizing::new(text.lines().next().unwrap_or("").to_string());
        return non_empty(first_line);
    }
    if io::stdin().is_terminal() {
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
        return non_empty(first);
    }
    let mut line = Zeroizing::new(String::new());
    let n = io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(PassphraseError::Stdin)?;
    if n == 0 {
        return Err(PassphraseError::Missing);
    }
    non_empty(strip_newline(line))
}
