//! `chown` and `chmod`: the administrator gives files and directories another owner or
//! mode, without keys; and how owners, groups and modes are shown (`inspect`).

use std::path::PathBuf;

use clap::Args;
use serde_json::{json, Value};

use super::store_cmds::{audit_store_change, count_bar};
use super::CliResult;
use crate::audit::EventKind;
use crate::container::Ownership;
use crate::store::{Node, Store, StoreError, NOBODY_UID};

/// The owner name that means root (uid 0), unless a store user has that name.
const ROOT: &str = "root";
/// Changing a file's owner clears these, as chown(2) does on Linux (even for root).
const SET_ID_BITS: u16 = 0o6000;

#[derive(Args)]
pub struct ChownArgs {
    store: PathBuf,
    /// Store path of a file or directory ("" for the store's root directory)
    rel: String,
    /// The new owner: a user of the store, or root
    user: String,
    /// Also every file and directory under REL
    #[arg(short = 'R', long)]
    recursive: bool,
}

#[derive(Args)]
pub struct ChmodArgs {
    store: PathBuf,
    /// Store path of a file or directory ("" for the store's root directory)
    rel: String,
    /// The new permission bits, in octal (e.g. 755, 2775, 1777)
    #[arg(value_parser = parse_mode)]
    mode: u16,
    /// Also every file and directory under REL (links keep 0777)
    #[arg(short = 'R', long)]
    recursive: bool,
}

fn parse_mode(text: &str) -> Result<u16, String> {
    u16::from_str_radix(text, 8)
        .ok()
        .filter(|m| m & !crate::container::MODE_BITS == 0)
        .ok_or_else(|| format!("{text:?} is not an octal mode from 0 to 7777"))
}

/// The owner `name` means: a user of the store (who need not hold a key slot), or `None` for
/// `root` when no user has that name.
pub(crate) fn parse_owner(
    store: &Store,
    name: &str,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    match store.user(name) {
        Ok(k) => Ok(Some(k.name)),
        Err(StoreError::NoSuchUser(_)) if name == ROOT => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// An owner's name and uid as the mount shows them: root is uid 0; an owner who is no longer
/// a user shows as [`NOBODY_UID`].
pub(crate) fn owner_uid(store: &Store, ownership: &Ownership) -> (String, u32) {
    match &ownership.owner {
        None => (ROOT.to_string(), 0),
        Some(name) => match store.user(name) {
            Ok(k) => (k.name, k.uid),
            Err(_) => (name.clone(), NOBODY_UID),
        },
    }
}

/// `ls -l` style permissions: `drwxr-xr-x`, `-rw-r-----`, with s/S and t/T for the setuid,
/// setgid and sticky bits.
pub(crate) fn mode_string(dir: bool, mode: u16) -> String {
    let mut out = String::from(if dir { "d" } else { "-" });
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 0o7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(match (bits & 1 != 0, mode & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    out
}

/// One line: `owner alice (uid 1001), group 1001, mode 0640 -rw-r-----`.
pub(crate) fn describe(store: &Store, dir: bool, ownership: &Ownership) -> String {
    let (name, uid) = owner_uid(store, ownership);
    let gone = if uid == NOBODY_UID && ownership.owner.is_some() {
        ", no longer a user"
    } else {
        ""
    };
    format!(
        "owner {name} (uid {uid}{gone}), group {}, mode {:04o} {}",
        ownership.gid,
        ownership.mode,
        mode_string(dir, ownership.mode)
    )
}

/// The same as JSON members.
pub(crate) fn to_json(store: &Store, ownership: &Ownership) -> Value {
    let (name, uid) = owner_uid(store, ownership);
    json!({
        "owner": name,
        "owner_uid": uid,
        "gid": ownership.gid,
        "mode": format!("{:04o}", ownership.mode),
    })
}

/// The entries `chown` changes: `rel` (a file, link or directory, `""` the root) and, with
/// `recursive`, every directory, file and link under a directory, parents first.
fn chown_targets(
    store: &Store,
    rel: &str,
    recursive: bool,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    if !rel.is_empty() && !store.is_dir(rel) {
        if store.mount_kind(rel)?.is_some() {
            return Ok(vec![rel.to_string()]);
        }
        return Err(StoreError::NoSuchFile(rel.to_string()).into());
    }
    let mut out = vec![rel.to_string()];
    if recursive {
        out.extend(store.dirs_under(rel)?);
        out.extend(store.files_under(rel)?.into_iter().map(|f| f.rel));
        out.extend(store.links_under(rel)?);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Dir,
    File,
    Link,
}

/// Applies `change` to the ownership of every target (it returns false to leave one as it
/// is), recording each change in the audit log as `event` with `detail`; returns how many
/// changed.
fn change_all(
    store: &Store,
    targets: &[String],
    event: EventKind,
    target_name: &str,
    mut change: impl FnMut(Entry, &mut Ownership) -> Option<String>,
) -> Result<usize, Box<dyn std::error::Error>> {
    let bar = count_bar(targets.len() as u64);
    let mut changed = 0usize;
    for target in targets {
        bar.set_message(target.clone());
        let (entry, mut ownership) = match store.node(target)? {
            Some(Node::Dir { ownership, .. }) => (Entry::Dir, ownership),
            Some(Node::File { ownership, .. }) => (Entry::File, ownership),
            Some(Node::Link { own, .. }) => (Entry::Link, own),
            None => return Err(StoreError::NoSuchFile(target.clone()).into()),
        };
        bar.inc(1);
        let Some(detail) = change(entry, &mut ownership) else {
            continue;
        };
        store.set_ownership(target, &ownership)?;
        audit_store_change(store, event, target, target_name, None, Some(&detail));
        changed += 1;
    }
    bar.finish_and_clear();
    Ok(changed)
}

fn shown(rel: &str, recursive: bool) -> String {
    let what = if rel.is_empty() {
        "the store's root"
    } else {
        rel
    };
    if recursive {
        format!("{what} and everything in it")
    } else {
        what.to_string()
    }
}

pub fn chown(args: &ChownArgs) -> CliResult {
    let store = Store::open(&args.store)?;
    let owner = parse_owner(&store, &args.user)?;
    let name = owner.as_deref().unwrap_or(ROOT);
    let rel = args.rel.trim_end_matches('/');
    let targets = chown_targets(&store, rel, args.recursive)?;
    let changed = change_all(
        &store,
        &targets,
        EventKind::Chown,
        name,
        |entry, ownership| {
            if ownership.owner == owner {
                return None;
            }
            let previous = std::mem::replace(&mut ownership.owner, owner.clone());
            if entry != Entry::Dir {
                ownership.mode &= !SET_ID_BITS;
            }
            Some(format!("from {}", previous.as_deref().unwrap_or(ROOT)))
        },
    )?;
    println!(
        "{name} now owns {}: {changed} of {} entries changed",
        shown(rel, args.recursive),
        targets.len()
    );
    Ok(())
}

pub fn chmod(args: &ChmodArgs) -> CliResult {
    let store = Store::open(&args.store)?;
    let rel = args.rel.trim_end_matches('/');
    let targets = chown_targets(&store, rel, args.recursive)?;
    let mode = format!("{:04o}", args.mode);
    let changed = change_all(
        &store,
        &targets,
        EventKind::Chmod,
        &mode,
        |entry, ownership| {
            // A link's mode is always 0777, as on Linux.
            if entry == Entry::Link || ownership.mode == args.mode {
                return None;
            }
            let previous = std::mem::replace(&mut ownership.mode, args.mode);
            Some(format!("from {previous:04o}"))
        },
    )?;
    println!(
        "{} is now mode {mode}: {changed} of {} entries changed",
        shown(rel, args.recursive),
        targets.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_read_like_ls() {
        assert_eq!(mode_string(true, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(false, 0o640), "-rw-r-----");
        assert_eq!(mode_string(true, 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(false, 0o6644), "-rwSr-Sr--");
        assert_eq!(mode_string(false, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(true, 0o1770), "drwxrwx--T");
    }
}
