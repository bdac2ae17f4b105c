//! Unit tests of `fsck`.

use super::*;
use crate::crypto::KdfParams;
use std::fs::{self, File};

const FAST: KdfParams = KdfParams {
    m_kib: 64,
    t: 1,
    p: 1,
};

fn store_with_file(dir: &Path) -> (Store, PrivateKey, PathBuf) {
    let store = Store::init(dir, 12).unwrap();
    let (alice, private) = Keyring::create("alice", 1001, b"pw", FAST).unwrap();
    store.add_user(&alice).unwrap();
    let src = dir.join("..").join("plain.bin");
    fs::write(&src, vec![7u8; 10_000]).unwrap();
    let ownership = crate::container::Ownership::new(Some("alice".into()), 1001, 0o640);
    let options = store::PutOptions {
        chunk_log2: 12,
        replace: false,
        ownership: &ownership,
    };
    store.mkdir_all("m", &mut |_| ownership.clone()).unwrap();
    store
        .put("m/w.bin", &src, &[alice], &options, &mut |_| {})
        .unwrap();
    let path = dir.join(store::container_rel("m/w.bin").unwrap());
    (store, private, path)
}

fn kinds(report: &Report) -> Vec<(Severity, Kind)> {
    report
        .problems
        .iter()
        .map(|p| (p.severity, p.kind))
        .collect()
}

#[test]
fn clean_store_and_flipped_chunk() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("s");
    fs::create_dir(&dir).unwrap();
    let (_store, private, path) = store_with_file(&dir);
    let as_alice = Options {
        verify_as: Some(("alice", &private)),
        remove_temp: false,
    };
    let report = check(&dir, &as_alice).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!((report.containers, report.keyrings), (1, 1));
    assert_eq!(report.verified, std::slice::from_ref(&path));

    // A byte in the second chunk's ciphertext: invisible without the key.
    let mut bytes = fs::read(&path).unwrap();
    let slots_len = u32::from_le_bytes(bytes[60..64].try_into().unwrap()) as usize;
    bytes[64 + slots_len + 5000] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(check(&dir, &Options::default()).unwrap().is_clean());
    let report = check(&dir, &as_alice).unwrap();
    assert_eq!(kinds(&report), [(Severity::Error, Kind::Authentication)]);
    assert_eq!(report.problems[0].path, path);
    assert!(report.problems[0].message.contains("chunk 1"));
}

#[test]
fn structural_problems() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("s");
    fs::create_dir(&dir).unwrap();
    let (_store, _private, path) = store_with_file(&dir);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    fs::write(dir.join(".tvault/users/bob.json"), b"{\"version\":1").unwrap();
    fs::write(dir.join("m/.tvault-recipients"), "alice ghost\n").unwrap();
    let temp = dir.join("m/.w.bin.tvlt.tmp-0123456789ab");
    fs::write(&temp, b"half").unwrap();
    let report = check(&dir, &Options::default()).unwrap();
    let found: Vec<_> = report
        .problems
        .iter()
        .map(|p| {
            (
                p.severity,
                p.kind,
                p.path.strip_prefix(&dir).unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            (
                Severity::Error,
                Kind::Keyring,
                PathBuf::from(".tvault/users/bob.json")
            ),
            (
                Severity::Warning,
                Kind::Recipients,
                PathBuf::from("m/.tvault-recipients")
            ),
            (
                Severity::Warning,
                Kind::TempFile,
                PathBuf::from("m/.w.bin.tvlt.tmp-0123456789ab")
            ),
            (
                Severity::Error,
                Kind::Container,
                PathBuf::from("m/w.bin.tvlt")
            ),
        ]
    );
    assert_eq!(report.errors(), 2);

    // A fresh temporary file is never removed; an old one is.
    let remove = Options {
        verify_as: None,
        remove_temp: true,
    };
    let report = check(&dir, &remove).unwrap();
    assert!(report.removed.is_empty());
    assert!(temp.exists());
    let old = SystemTime::now() - TEMP_MIN_AGE - Duration::from_secs(10);
    File::options()
        .write(true)
        .open(&temp)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let report = check(&dir, &remove).unwrap();
    assert_eq!(report.removed, std::slice::from_ref(&temp));
    assert!(!temp.exists());
}

#[test]
fn not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        check(dir.path(), &Options::default()),
        Err(StoreError::NotAStore(_))
    ));
    fs::create_dir(dir.path().join(META_DIR)).unwrap();
    let report = check(dir.path(), &Options::default()).unwrap();
    assert_eq!(
        kinds(&report),
        [
            (Severity::Error, Kind::Config),
            (Severity::Error, Kind::Config)
        ]
    );
}

#[test]
fn link_files_are_checked_not_reported_as_junk() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("s");
    fs::create_dir(&dir).unwrap();
    let (store, _private, _path) = store_with_file(&dir);
    let link = |target: &[u8]| Link {
        own: crate::container::Ownership::new(Some("alice".into()), 0, 0o777),
        target: target.to_vec(),
    };
    store.symlink("m/good", &link(b"w.bin")).unwrap();
    store.symlink("dangling", &link(b"nowhere")).unwrap();
    assert!(check(&dir, &Options::default()).unwrap().is_clean());
    fs::write(dir.join("m/bad.tvln"), b"TVLN\x01\x00").unwrap();
    fs::write(dir.join("m/huge.tvln"), vec![0u8; 5000]).unwrap();
    fs::write(dir.join("m/w.bin.tvln"), link(b"x").encode().unwrap()).unwrap();
    let report = check(&dir, &Options::default()).unwrap();
    let found: Vec<_> = report
        .problems
        .iter()
        .map(|p| {
            let name = p.path.file_name().unwrap().to_string_lossy().into_owned();
            (p.severity, p.kind, name)
        })
        .collect();
    assert_eq!(
        found,
        [
            (Severity::Error, Kind::Link, "bad.tvln".to_string()),
            (Severity::Error, Kind::Link, "huge.tvln".to_string()),
            (Severity::Warning, Kind::Link, "w.bin.tvln".to_string()),
        ],
        "{:?}",
        report.problems
    );
    assert!(report.problems[2].message.contains("w.bin.tvlt"));
}

#[test]
fn ownership_problems() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("s");
    fs::create_dir(&dir).unwrap();
    let (store, _private, _path) = store_with_file(&dir);
    assert!(check(&dir, &Options::default()).unwrap().is_clean());
    // An owner who is not a user, a directory metadata file that does not parse, one that
    // is a link, and the directory an interrupted mkdir left.
    let ghost = crate::container::Ownership::new(Some("ghost".into()), 0, 0o644);
    store.set_ownership("m/w.bin", &ghost).unwrap();
    fs::write(dir.join("m/.tvault-dir"), b"TVDR\x01garbage").unwrap();
    fs::create_dir(dir.join("n")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.join("n/.tvault-dir")).unwrap();
    let temp = dir.join(".tvault-tmp-0123456789abcdef01234567");
    fs::create_dir(&temp).unwrap();
    fs::write(temp.join(".tvault-dir"), b"").unwrap();
    let report = check(&dir, &Options::default()).unwrap();
    let found: Vec<_> = report
        .problems
        .iter()
        .map(|p| {
            let rel = p.path.strip_prefix(&dir).unwrap().to_owned();
            (p.severity, p.kind, rel.to_string_lossy().into_owned())
        })
        .collect();
    assert_eq!(
        found,
        [
            (
                Severity::Warning,
                Kind::TempFile,
                ".tvault-tmp-0123456789abcdef01234567".to_string()
            ),
            (Severity::Error, Kind::Ownership, "m/.tvault-dir".into()),
            (Severity::Warning, Kind::Ownership, "m/w.bin.tvlt".into()),
            (Severity::Error, Kind::Ownership, "n/.tvault-dir".into()),
        ],
        "{:?}",
        report.problems
    );
    // Removed like a temporary file: only once old enough.
    let remove = Options {
        verify_as: None,
        remove_temp: true,
    };
    let report = check(&dir, &remove).unwrap();
    assert!(report.removed.is_empty());
    let old = SystemTime::now() - TEMP_MIN_AGE - Duration::from_secs(10);
    File::open(&temp).unwrap().set_modified(old).unwrap();
    let report = check(&dir, &remove).unwrap();
    assert_eq!(report.removed, std::slice::from_ref(&temp));
    assert!(!temp.exists());
}
