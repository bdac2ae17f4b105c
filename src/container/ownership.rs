//! Who owns a mount entry and what its mode allows: the record stored with every file (in
//! its container), directory (`.tvault-dir`) and symbolic link (`.tvln`). See docs/FORMAT.md,
//! "Ownership record".
//!
//! ```text
//! owner_len u8 (0: root) ‖ owner (a store user name) ‖ gid u32le ‖ mode u16le
//! ```

use super::{ContainerError, Result};

/// Permission bits a record may carry: rwx for owner, group and others, plus setuid, setgid
/// and sticky. The file type is never stored: it follows from what the entry is.
pub const MODE_BITS: u16 = 0o7777;
/// The longest owner name: a store user name (see `keyring::validate_name`).
pub const MAX_OWNER_LEN: usize = 32;
/// The mode of a version 1 container (see [`Ownership::legacy_file`]).
pub const LEGACY_FILE_MODE: u32 = 0o644;
/// Encoded length without the owner name.
const FIXED_LEN: usize = 1 + 4 + 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ownership {
    /// The owning store user; `None` is root (uid 0), which owns what no user was named for.
    pub owner: Option<String>,
    /// A host gid, stored as a number (groups are not store objects).
    pub gid: u32,
    /// Permission bits, within [`MODE_BITS`].
    pub mode: u16,
}

impl Ownership {
    pub fn new(owner: Option<String>, gid: u32, mode: u32) -> Ownership {
        Ownership {
            owner,
            gid,
            mode: (mode & u32::from(MODE_BITS)) as u16,
        }
    }

    /// What a version 1 container, which has no record, is taken to carry: owned by the user
    /// of its first key slot (its creator: the writer through the mount, or the first `--to`
    /// of `tvault put`), group 0, mode 0o644. A first label that cannot be a store user name
    /// (longer than [`MAX_OWNER_LEN`]), or no slot at all, gives root.
    pub fn legacy_file(first_label: Option<&str>) -> Ownership {
        let owner = first_label.filter(|l| !l.is_empty() && l.len() <= MAX_OWNER_LEN);
        Ownership::new(owner.map(str::to_string), 0, LEGACY_FILE_MODE)
    }

    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + self.owner.as_deref().map_or(0, str::len)
    }

    pub fn encode(&self, out: &mut Vec<u8>) -> Result<()> {
        let owner = self.owner.as_deref().unwrap_or("");
        if owner.len() > MAX_OWNER_LEN || (self.owner.is_some() && owner.is_empty()) {
            return Err(ContainerError::Ownership("owner name of 1 to 32 bytes"));
        }
        if self.mode & !MODE_BITS != 0 {
            return Err(ContainerError::Ownership("mode bits within 0o7777"));
        }
        out.push(owner.len() as u8);
        out.extend_from_slice(owner.as_bytes());
        out.extend_from_slice(&self.gid.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        Ok(())
    }

    /// Decodes one record at the start of `bytes`; returns it and the bytes it took.
    pub fn decode(bytes: &[u8]) -> Result<(Ownership, usize)> {
        let (&owner_len, rest) = bytes
            .split_first()
            .ok_or(ContainerError::Ownership("a record of at least 7 bytes"))?;
        let owner_len = usize::from(owner_len);
        if owner_len > MAX_OWNER_LEN {
            return Err(ContainerError::Ownership("owner name of 1 to 32 bytes"));
        }
        if rest.len() < owner_len + 6 {
            return Err(ContainerError::Ownership("a complete record"));
        }
        let owner = match owner_len {
            0 => None,
            n => {
                let name = std::str::from_utf8(&rest[..n])
                    .map_err(|_| ContainerError::Ownership("an owner name in UTF-8"))?;
                if name.chars().any(char::is_control) {
                    return Err(ContainerError::Ownership(
                        "an owner name without control characters",
                    ));
                }
                Some(name.to_string())
            }
        };
        let gid = u32::from_le_bytes(
            rest[owner_len..owner_len + 4]
                .try_into()
                .unwrap_or_default(),
        );
        let mode = u16::from_le_bytes(
            rest[owner_len + 4..owner_len + 6]
                .try_into()
                .unwrap_or_default(),
        );
        if mode & !MODE_BITS != 0 {
            return Err(ContainerError::Ownership("mode bits within 0o7777"));
        }
        Ok((Ownership { owner, gid, mode }, FIXED_LEN + owner_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        for own in [
            Ownership::new(Some("alice".into()), 1001, 0o640),
            Ownership::new(None, 0, 0o1777),
            Ownership::new(Some("a".repeat(32)), u32::MAX, 0o7777),
        ] {
            let mut out = Vec::new();
            own.encode(&mut out).unwrap();
            assert_eq!(out.len(), own.encoded_len());
            out.push(0xaa);
            assert_eq!(
                Ownership::decode(&out).unwrap(),
                (own.clone(), out.len() - 1)
            );
            for cut in 0..out.len() - 1 {
                assert!(Ownership::decode(&out[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut bytes = vec![5];
        bytes.extend_from_slice(b"alice");
        bytes.extend_from_slice(&7u32.to_le_bytes());
        bytes.extend_from_slice(&0o10000u16.to_le_bytes());
        assert!(Ownership::decode(&bytes).is_err(), "file-type bits");
        assert!(Ownership::decode(&[33; 64]).is_err(), "owner too long");
        assert!(
            Ownership::decode(&[1, 0x07, 0, 0, 0, 0, 0, 0]).is_err(),
            "control char"
        );
        assert!(Ownership::new(Some(String::new()), 0, 0)
            .encode(&mut Vec::new())
            .is_err());
        assert_eq!(Ownership::new(None, 0, 0o100644).mode, 0o644);
    }

    #[test]
    fn legacy_file_defaults() {
        let alice = Ownership::legacy_file(Some("alice"));
        assert_eq!(alice, Ownership::new(Some("alice".into()), 0, 0o644));
        assert_eq!(Ownership::legacy_file(None).owner, None);
        assert_eq!(Ownership::legacy_file(Some(&"x".repeat(33))).owner, None);
        alice.encode(&mut Vec::new()).unwrap();
    }
}
