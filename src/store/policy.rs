//! `.tvault-recipients`: who a file created through the mount is encrypted to.

use std::path::Path;

use super::{validate_rel, Result, Store, MAX_POLICY_LEN, RECIPIENTS_FILE};
use crate::keyring::Keyring;

/// User names in a `.tvault-recipients` file: separated by newlines, commas or spaces;
/// `#` starts a comment.
pub fn parse_policy(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split([',', ' ', '\t']))
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

impl Store {
    /// The users a file created at `rel` through the mount is encrypted to: `writer` plus the
    /// names in the nearest `.tvault-recipients` in `rel`'s directory or above. Names that
    /// are not users of the store are skipped (with a warning): a policy typo must not
    /// widen access, and it does not block the writer. A policy file that cannot be used (not
    /// UTF-8 in places, too large, a link) is read as far as it is valid or, if it cannot be
    /// read at all, counts as naming nobody: access is never widened by a broken policy.
    pub(crate) fn recipients_for_new(&self, rel: &str, writer: &Keyring) -> Result<Vec<Keyring>> {
        validate_rel(rel)?;
        let mut recipients = vec![writer.clone()];
        let mut dir = Path::new(rel).parent();
        while let Some(d) = dir {
            let d_str = d.to_str().unwrap_or_default();
            let policy = if d_str.is_empty() {
                RECIPIENTS_FILE.to_string()
            } else {
                format!("{d_str}/{RECIPIENTS_FILE}")
            };
            let shown = self.backend.display_path(&policy);
            match self.backend.read_capped(&policy, MAX_POLICY_LEN) {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes);
                    for name in parse_policy(&text) {
                        match self.user(&name) {
                            Ok(k) if !recipients.iter().any(|r| r.name == k.name) => {
                                recipients.push(k)
                            }
                            Ok(_) => {}
                            Err(e) => log::warn!("{}: skipping {name:?}: {e}", shown.display()),
                        }
                    }
                    break;
                }
                Err(e) if e.is_not_found() => dir = d.parent(),
                Err(e) => {
                    log::warn!(
                        "{}: ignored, new files get no extra recipients: {e}",
                        shown.display()
                    );
                    break;
                }
            }
        }
        Ok(recipients)
    }
}

impl Store {
    /// Whether directory `dir` or one below it holds a `.tvault-recipients`, whatever it is
    /// (a broken one is still the administrator's).
    pub(crate) fn holds_policy(&self, dir: &str) -> Result<bool> {
        for d in std::iter::once(dir.to_string()).chain(self.dirs_under(dir)?) {
            let policy = if d.is_empty() {
                RECIPIENTS_FILE.to_string()
            } else {
                format!("{d}/{RECIPIENTS_FILE}")
            };
            if self.backend.kind(&policy)?.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container;
    use crate::store::tests::FAST;
    use std::fs;

    #[test]
    fn policy_files() {
        assert_eq!(
            parse_policy("alice\n# team\nbob, carol # ml\n\n"),
            ["alice", "bob", "carol"]
        );
        let dir = tempfile::tempdir().unwrap();
        let store = Store::init(dir.path(), container::DEFAULT_CHUNK_LOG2).unwrap();
        let mk = |name: &str, uid| {
            let (k, _) = Keyring::create(name, uid, b"pw", FAST).unwrap();
            store.add_user(&k).unwrap();
            k
        };
        let (alice, bob, _carol) = (mk("alice", 1), mk("bob", 2), mk("carol", 3));
        fs::create_dir_all(dir.path().join("team/sub")).unwrap();
        fs::write(
            dir.path().join("team/.tvault-recipients"),
            "bob carol ghost\n",
        )
        .unwrap();
        let names = |v: Vec<Keyring>| v.into_iter().map(|k| k.name).collect::<Vec<_>>();
        assert_eq!(
            names(store.recipients_for_new("team/sub/x", &alice).unwrap()),
            ["alice", "bob", "carol"]
        );
        assert_eq!(
            names(store.recipients_for_new("other/x", &bob).unwrap()),
            ["bob"]
        );
        assert_eq!(
            names(store.recipients_for_new("x", &alice).unwrap()),
            ["alice"]
        );
    }
}
