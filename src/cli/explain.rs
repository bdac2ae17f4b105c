//! A denial's reason code (as the audit log and the daemon give it) in words, with what fixes
//! it, for the user who was refused.

use std::path::Path;

use super::shell_word;

/// Where a denial happened and to whom, for the commands a fix names.
pub(crate) struct Context<'a> {
    pub mountpoint: &'a Path,
    /// The store the mount serves.
    pub store: &'a str,
    /// The path on the mount (the same path in the store).
    pub rel: &'a str,
    pub uid: u32,
    /// The caller's user name, when the daemon knows it (they are unlocked).
    pub user: Option<&'a str>,
    /// For a `mode` denial, the daemon's account of it (which entry, what was missing) and
    /// the owner of that entry.
    pub detail: Option<&'a str>,
    pub owner: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Explained {
    pub words: String,
    pub fix: String,
}

pub(crate) fn explain(reason: &str, cx: &Context<'_>) -> Explained {
    let store = shell_word(cx.store);
    let rel = shell_word(if cx.rel.is_empty() { "." } else { cx.rel });
    let me = cx.user.map_or_else(|| "YOUR-NAME".to_string(), shell_word);
    let (words, fix) = match reason {
        "locked" => (
            "your keyring is not unlocked on this mount".to_string(),
            format!(
                "run `tvault unlock {}`",
                shell_word(&cx.mountpoint.display().to_string())
            ),
        ),
        "no-keyring" => (
            format!("uid {} has no keyring in this store", cx.uid),
            format!(
                "ask the store's administrator to add you: `tvault user add {store} NAME --uid {}`",
                cx.uid
            ),
        ),
        "no-key-slot" => (
            "your user holds no key slot for this file".to_string(),
            format!(
                "ask a user who can read it (`tvault access {store} {rel}` lists them) to run \
                 `tvault grant {store} {rel} {me} --user THEIR-NAME`"
            ),
        ),
        "mode" => (
            cx.detail.map_or_else(
                || {
                    "the permission bits of the file, or of a directory above it, do not allow \
                     this"
                        .to_string()
                },
                str::to_string,
            ),
            format!(
                "ask {} to change the mode (`chmod`) or to do it for you, or work on a copy \
                 of your own",
                cx.owner
                    .map_or_else(|| "the owner".to_string(), |o| format!("the owner, {o},"))
            ),
        ),
        "integrity" => (
            "the file failed its integrity check: it was damaged or tampered with in the store"
                .to_string(),
            format!("tell the store's administrator (`tvault fsck {store}` names the damage)"),
        ),
        "store-error" => (
            "the store could not be read".to_string(),
            "tell the store's administrator (the daemon's log says why)".to_string(),
        ),
        other => (
            format!("refused ({other})"),
            "the daemon's log says more".to_string(),
        ),
    };
    Explained { words, fix }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(user: Option<&str>) -> Context<'_> {
        Context {
            mountpoint: Path::new("/mnt/my models"),
            store: "/srv/store",
            rel: "m/model.safetensors",
            uid: 1001,
            user,
            detail: None,
            owner: None,
        }
    }

    #[test]
    fn each_reason_names_its_fix() {
        let locked = explain("locked", &cx(None));
        assert_eq!(locked.fix, "run `tvault unlock '/mnt/my models'`");
        let slot = explain("no-key-slot", &cx(Some("alice")));
        assert!(
            slot.fix
                .contains("`tvault grant /srv/store m/model.safetensors alice --user THEIR-NAME`"),
            "{}",
            slot.fix
        );
        assert!(explain("no-key-slot", &cx(None)).fix.contains("YOUR-NAME"));
        assert!(explain("no-keyring", &cx(None))
            .fix
            .contains("tvault user add /srv/store NAME --uid 1001"));
        assert!(explain("integrity", &cx(None)).fix.contains("tvault fsck"));
        assert_eq!(
            explain("new-reason", &cx(None)).words,
            "refused (new-reason)"
        );
        let mode = Context {
            detail: Some("no read permission on file /m/x (owner alice, mode 0600)"),
            owner: Some("alice"),
            ..cx(None)
        };
        let mode = explain("mode", &mode);
        assert_eq!(
            mode.words,
            "no read permission on file /m/x (owner alice, mode 0600)"
        );
        assert!(
            mode.fix.starts_with("ask the owner, alice, to change"),
            "{}",
            mode.fix
        );
    }
}
