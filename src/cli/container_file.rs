//! Recognising a tensorvault container where a plaintext file was expected (`tvault inspect
//! STORE/REL.tvlt`): say what it is and what inspects it, instead of parsing ciphertext as
//! safetensors.

use std::io::Read;
use std::path::Path;

use super::resolve::resolve;
use super::shell_word;
use crate::container::MAGIC;
use crate::store::{CONFIG_REL, CONTAINER_EXT};

#[derive(Debug, thiserror::Error)]
#[error("{path} is an encrypted tensorvault container, not a plaintext file: {what_to_run}")]
pub(crate) struct IsContainer {
    path: String,
    what_to_run: String,
}

/// Refuses a file that starts with the container magic, naming the command that inspects it.
/// A file that cannot be read is left to the caller, which reports why.
pub(crate) fn refuse_container(path: &Path) -> Result<(), IsContainer> {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic));
    if read.is_err() || magic != MAGIC {
        return Ok(());
    }
    let absolute = std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let store = absolute
        .ancestors()
        .skip(1)
        .find(|dir| dir.join(CONFIG_REL).is_file());
    let rel = store
        .and_then(|store| absolute.strip_prefix(store).ok())
        .and_then(Path::to_str)
        .map(|rel| {
            rel.strip_suffix(&format!(".{CONTAINER_EXT}"))
                .unwrap_or(rel)
                .to_string()
        });
    let mut what_to_run = match (store, rel) {
        (Some(store), Some(rel)) => {
            let (store, rel) = (shell_word(&store.display().to_string()), shell_word(&rel));
            format!(
                "inspect it with `tvault inspect {store} {rel} --user NAME` (NAME: a user with a \
                 key slot for it; `tvault access {store} {rel}` lists them)"
            )
        }
        _ => format!(
            "inspect it with `tvault inspect STORE REL --user NAME`, where STORE is the store \
             directory it is in and REL its path there without `.{CONTAINER_EXT}`"
        ),
    };
    // The store is mounted: the plaintext view is a path away.
    if let Ok(on) = resolve(&absolute) {
        let view = on.mountpoint.join(&on.rel).display().to_string();
        what_to_run.push_str(&format!(
            ", or through its mount: `tvault inspect {}`",
            shell_word(&view)
        ));
    }
    Err(IsContainer {
        path: path.display().to_string(),
        what_to_run,
    })
}
