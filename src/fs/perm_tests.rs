//! Permission checks against another local user: what they reach
//! through the kernel's caches, and what `tvault why` tells them.

use super::inodes::ROOT;
use super::tests::{caller, errno, fixture, name, ALICE, BOB};
use super::*;

/// alice's `priv` (0700) holds `sub` (0755), which holds `f` (0644), readable by bob by
/// key slot (the policy of `priv` names him). Returns the inodes of `priv/sub` and of
/// `priv/sub/f` as alice's lookups made them: inodes the kernel caches for every uid.
fn private_tree(f: &super::tests::Fixture) -> (u64, u64) {
    let alice = caller(ALICE);
    let private = f
        .core
        .mkdir(alice, (ROOT, name("priv")), (0o700, 0o022))
        .unwrap();
    std::fs::write(f.root.join("priv/.tvault-recipients"), "bob\n").unwrap();
    let sub = f
        .core
        .mkdir(alice, (private.ino, name("sub")), (0o755, 0o022))
        .unwrap();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    let (file, opened) = f
        .core
        .create(alice, (sub.ino, name("f")), (0o644, 0o022), flags)
        .unwrap();
    f.core.write(opened.fh, 0, b"alice's").unwrap();
    f.core.release(opened.fh).unwrap();
    (sub.ino, file.ino)
}

/// The mount has no `default_permissions`, so the kernel checks no search permission when
/// it walks a path through entries it has cached (for one second after any uid looked them
/// up): the core must check every directory on the way itself, not only the last one.
#[test]
fn cached_entries_do_not_let_another_user_past_a_directory_it_cannot_search() {
    let f = fixture();
    let (sub, file) = private_tree(&f);
    let bob = caller(BOB);
    let private = f.core.lookup(bob, ROOT, name("priv")).unwrap().ino;
    assert_eq!(errno(f.core.opendir(bob, private)), libc::EACCES);
    // bob reaches `priv/sub` and `priv/sub/f` through alice's cached entries.
    assert_eq!(errno(f.core.lookup(bob, sub, name("f"))), libc::EACCES);
    assert_eq!(errno(f.core.opendir(bob, sub)), libc::EACCES);
    assert_eq!(
        errno(f.core.open(bob, file, libc::O_RDONLY)),
        libc::EACCES,
        "bob holds a key slot, but may not search priv"
    );
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
    assert_eq!(
        errno(f.core.create(bob, (sub, name("g")), (0o644, 0), flags)),
        libc::EACCES
    );
    // alice, and root, still pass.
    f.core.lookup(caller(ALICE), sub, name("f")).unwrap();
    f.core.open(caller(ALICE), file, libc::O_RDONLY).unwrap();
    f.core.lookup(caller(0), sub, name("f")).unwrap();
}

/// `tvault why` must not be an oracle for names in a directory the caller cannot search:
/// a name there and a name not there get the same answer, as stat(2) gives `EACCES` for
/// both.
#[test]
fn why_tells_nothing_about_names_in_a_directory_the_caller_cannot_search() {
    let f = fixture();
    private_tree(&f);
    let bob = caller(BOB);
    let verdict = |path: &str| match f.core.why_path(bob, path) {
        Ok(why) => match (why.read.verdict, why.write.verdict) {
            (why::Verdict::Denied(r), why::Verdict::Denied(w)) => {
                format!("denied {} {}", r.code(), w.code())
            }
            _ => "allowed".to_string(),
        },
        Err(e) => format!("errno {}", e.errno()),
    };
    assert_eq!(verdict("priv/sub/f"), verdict("priv/sub/missing"));
    assert_eq!(verdict("priv/sub"), verdict("priv/nothing"));
    assert_eq!(verdict("priv/sub/f"), "denied mode mode");
}

/// A policy says who else reads what is made below it, and only the administrator places
/// one (the mount refuses the name). Moving a directory that holds one is placing one: bob
/// moved his team directory (policy: alice, bob) to the name alice's job was about to
/// `makedirs(exist_ok=True)` and write into (the root is 1777), and read her output.
#[test]
fn a_directory_holding_a_policy_is_moved_only_by_root() {
    let f = fixture();
    let bob = caller(BOB);
    let team = f
        .core
        .mkdir(bob, (ROOT, name("team")), (0o755, 0o022))
        .unwrap();
    f.core
        .mkdir(bob, (team.ino, name("deep")), (0o755, 0o022))
        .unwrap();
    std::fs::write(f.root.join("team/deep/.tvault-recipients"), "alice bob\n").unwrap();
    let moved = f
        .core
        .rename(bob, (ROOT, name("team")), (ROOT, name("run1")), false);
    assert_eq!(errno(moved), libc::EPERM);
    let denials = f.core.denials_of(BOB);
    assert_eq!(denials[0].reason, "mode", "recorded as a decision");
    // bob may still move directories without a policy (the administrator moves this one in
    // the store).
    f.core
        .mkdir(bob, (ROOT, name("plain")), (0o755, 0o022))
        .unwrap();
    f.core
        .rename(bob, (ROOT, name("plain")), (ROOT, name("plain2")), false)
        .unwrap();
}
