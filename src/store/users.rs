//! Keyrings: `.tvault/users/NAME.json`, one per user, each uid at most once.

use super::{Backend, Kind, Result, Store, StoreError, FILE_MODE, MAX_KEYRING_LEN, USERS_REL};
use crate::keyring::{self, Keyring, KeyringError};

fn user_rel(name: &str) -> Result<String> {
    keyring::validate_name(name)?;
    Ok(format!("{USERS_REL}/{name}.json"))
}

/// The keyring of user `name` in `backend`, checked to be named for `name`. Needs no valid
/// `store.json`, so that `fsck` can read it in a damaged store.
pub(crate) fn read_keyring(backend: &dyn Backend, name: &str) -> Result<Keyring> {
    let rel = user_rel(name)?;
    let bytes = match backend.read_capped(&rel, MAX_KEYRING_LEN) {
        Err(e) if e.is_not_found() => return Err(StoreError::NoSuchUser(name.to_string())),
        other => other?,
    };
    let path = backend.display_path(&rel);
    let keyring = Keyring::from_json(&bytes).map_err(|source| StoreError::Keyring {
        path: path.clone(),
        source,
    })?;
    if keyring.name != name {
        return Err(StoreError::Keyring {
            path,
            source: KeyringError::Malformed(format!(
                "file is named for {name:?} but holds {:?}",
                keyring.name
            )),
        });
    }
    Ok(keyring)
}

impl Store {
    pub fn user(&self, name: &str) -> Result<Keyring> {
        read_keyring(&*self.backend, name)
    }

    /// Names of the keyring files in `.tvault/users/`. Links and special files are skipped
    /// (`fsck` reports them).
    fn user_names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in self.backend.list(USERS_REL)? {
            let Some(name) = entry.name.strip_suffix(".json") else {
                continue;
            };
            if entry.kind != Kind::File {
                // Debug only: this runs on every unlock and denied open; fsck reports it.
                log::debug!(
                    "{}: skipped: {} is not a keyring",
                    self.backend
                        .display_path(&format!("{USERS_REL}/{}", entry.name))
                        .display(),
                    entry.kind.describe()
                );
                continue;
            }
            names.push(name.to_string());
        }
        names.sort();
        Ok(names)
    }

    /// All keyrings, sorted by name. A malformed keyring file is an error, not skipped: an
    /// admin must hear about it.
    pub(crate) fn users(&self) -> Result<Vec<Keyring>> {
        self.user_names()?.iter().map(|n| self.user(n)).collect()
    }

    /// The keyring registered for `uid`. Unreadable keyrings of other users are skipped with a
    /// warning, so that one bad file does not lock every user out.
    pub(crate) fn user_by_uid(&self, uid: u32) -> Result<Option<Keyring>> {
        for name in self.user_names()? {
            match self.user(&name) {
                Ok(k) if k.uid == uid => return Ok(Some(k)),
                Ok(_) => {}
                Err(e) => log::warn!("skipping keyring {name:?}: {e}"),
            }
        }
        Ok(None)
    }

    /// Adds a new user; refuses an existing name or a uid that already has a keyring (the
    /// mount maps each uid to exactly one keyring).
    pub(crate) fn add_user(&self, keyring: &Keyring) -> Result<()> {
        for other in self.users()? {
            if other.name == keyring.name {
                return Err(StoreError::UserExists(other.name));
            }
            if other.uid == keyring.uid {
                return Err(StoreError::UidTaken {
                    uid: other.uid,
                    name: other.name,
                });
            }
        }
        self.save_user(keyring)
    }

    /// Writes (or replaces) a keyring atomically.
    pub(crate) fn save_user(&self, keyring: &Keyring) -> Result<()> {
        let rel = user_rel(&keyring.name)?;
        self.backend
            .write_small(&rel, keyring.to_json().as_bytes(), FILE_MODE)
    }

    /// Keyrings for key-slot labels (the recipients of an existing file, when it is
    /// rewritten). Labels that name no user of the store are skipped with a warning.
    pub(crate) fn keyrings_for<'a>(&self, labels: impl Iterator<Item = &'a str>) -> Vec<Keyring> {
        labels
            .filter_map(|label| match self.user(label) {
                Ok(k) => Some(k),
                Err(e) => {
                    log::warn!("dropping recipient {label:?} on rewrite: {e}");
                    None
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container;
    use crate::store::tests::FAST;

    #[test]
    fn users_unique_by_name_and_uid() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), container::DEFAULT_CHUNK_LOG2).unwrap();
        let (a, _) = Keyring::create("alice", 1001, b"pw", FAST).unwrap();
        store.add_user(&a).unwrap();
        assert!(matches!(store.add_user(&a), Err(StoreError::UserExists(_))));
        let (b, _) = Keyring::create("bob", 1001, b"pw", FAST).unwrap();
        assert!(matches!(
            store.add_user(&b),
            Err(StoreError::UidTaken { .. })
        ));
        assert_eq!(store.user_by_uid(1001).unwrap().unwrap().name, "alice");
        assert!(matches!(
            Store::init(dir.path(), 16),
            Err(StoreError::AlreadyAStore(_))
        ));
    }
}
