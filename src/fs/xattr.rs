//! Extended attributes of stored files. Recipients and chunk size are read from the
//! container without a key (the store shows them to anyone who can read it). The tensor
//! count and header length come from the plaintext: reading them is an authorized,
//! recorded decision like an open.

use std::ffi::OsStr;

use super::error::{FsError, FsResult};
use super::op::{Allowed, Op};
use super::{perm, Caller, Core};
use crate::audit::EventKind;

const RECIPIENTS: &str = "user.tvault.recipients";
const CHUNK_SIZE: &str = "user.tvault.chunk_size";
const TENSOR_COUNT: &str = "user.tvault.tensor_count";
const HEADER_LEN: &str = "user.tvault.header_len";

impl Core {
    /// The value of attribute `name` of inode `ino`; `ENODATA` if it has none.
    pub fn getxattr(&self, caller: Caller, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        // Asked before every write (security.capability): answer fast for anything else.
        let no_data = FsError::new(libc::ENODATA);
        let Some(name) = name.to_str().filter(|n| n.starts_with("user.tvault.")) else {
            return Err(no_data);
        };
        let rel = self.path_of(ino).ok_or(FsError::new(libc::ENODATA))?;
        if !self.store.exists(&rel).unwrap_or(false) {
            return Err(no_data);
        }
        let value = match name {
            RECIPIENTS | CHUNK_SIZE => {
                let container = self.store.open_container(&rel)?;
                if name == RECIPIENTS {
                    let labels: Vec<&str> =
                        container.slots().iter().map(|s| s.label.as_str()).collect();
                    labels.join(",")
                } else {
                    container.header().chunk_size().to_string()
                }
            }
            TENSOR_COUNT | HEADER_LEN if rel.ends_with(".safetensors") => {
                self.tensor_xattr(caller, &rel, name)?.ok_or(no_data)?
            }
            _ => return Err(no_data),
        };
        Ok(value.into_bytes())
    }

    /// The attribute names of inode `ino`, each NUL-terminated. The plaintext-derived ones
    /// are listed for a `.safetensors` file whose slots name the caller's unlocked user
    /// (listing them decides nothing: reading them is authorized on its own).
    pub fn listxattr(&self, caller: Caller, ino: u64) -> FsResult<Vec<u8>> {
        let rel = self.path_of(ino).ok_or(FsError::new(libc::ENOENT))?;
        let mut names = Vec::new();
        if !self.store.exists(&rel).unwrap_or(false) {
            return Ok(names);
        }
        let container = self.store.open_container(&rel)?;
        let mut listed = vec![RECIPIENTS, CHUNK_SIZE];
        let holds_slot = self
            .access
            .session(caller.uid)
            .is_some_and(|s| container.slot(&s.name).is_some());
        if rel.ends_with(".safetensors") && holds_slot {
            listed.extend([TENSOR_COUNT, HEADER_LEN]);
        }
        for name in listed {
            names.extend_from_slice(name.as_bytes());
            names.push(0);
        }
        Ok(names)
    }

    /// Tensor count or header length of `rel`: None if its header did not parse.
    fn tensor_xattr(&self, caller: Caller, rel: &str, name: &str) -> FsResult<Option<String>> {
        self.change(
            Op::new(EventKind::Xattr, caller, rel),
            || {
                // Derived from the plaintext: read permission, as for an open.
                perm::need(caller, rel, &self.reachable(caller, rel)?, perm::MAY_READ)?;
                let (version, user) = self.open_version(caller.uid, rel)?;
                Ok(Allowed {
                    user,
                    value: version,
                })
            },
            |Allowed { value: version, .. }, _| {
                Ok(version.tensors.as_ref().map(|h| match name {
                    TENSOR_COUNT => h.tensors.len().to_string(),
                    _ => h.header_len.to_string(),
                }))
            },
        )
    }
}
