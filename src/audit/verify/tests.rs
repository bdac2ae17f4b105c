//! Tests of chain checking: legacy logs, the chain without a key, head records, and every
//! kind of tampering.

use super::*;
use crate::audit::testutil::*;
use crate::audit::{with_rotated, LineError};
use std::fs;
use std::path::Path;

/// A log written by tvault before `count` and the key outside the store existed.
const LEGACY_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/audit-legacy");

fn legacy_key() -> Vec<u8> {
    let text = fs::read_to_string(Path::new(LEGACY_DIR).join("legacy.key")).unwrap();
    hex::decode(text.trim()).unwrap()
}

#[test]
fn logs_written_before_counted_lines_still_verify() {
    let log = Path::new(LEGACY_DIR).join("audit.jsonl");
    let files = with_rotated(&log);
    assert_eq!(files.len(), 2);
    let report = verify(&files, Some(&legacy_key()), None, None).unwrap();
    assert_eq!(report.entries, 8);
    assert_eq!(report.events, 8);
    assert_eq!(report.start, Start::Beginning);
    // The newest file alone starts at its rotate entry.
    let report = verify(std::slice::from_ref(&log), Some(&legacy_key()), None, None).unwrap();
    assert_eq!(report.start, Start::Rotated { seq: 6 });
    assert!(verify(&files, Some(&[1u8; 32]), None, None).is_err());
}

#[test]
fn without_a_key_the_hash_chain_is_still_checked() {
    let log = Path::new(LEGACY_DIR).join("audit.jsonl.1");
    let report = verify(std::slice::from_ref(&log), None, None, None).unwrap();
    assert!(!report.authenticated);
    assert_eq!(report.entries, 5);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("audit.jsonl");
    let text = fs::read_to_string(&log).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(2);
    fs::write(&copy, lines.join("\n") + "\n").unwrap();
    match verify(&[copy], None, None, None) {
        Err(VerifyError::Broken { line: 3, why, .. }) => assert!(
            matches!(why, ChainError::PrevMismatch { at_boundary: false }),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn head_records_catch_a_cut_tail() {
    let log = Path::new(LEGACY_DIR).join("audit.jsonl.1");
    let key = legacy_key();
    let full = verify(std::slice::from_ref(&log), Some(&key), None, None).unwrap();
    let last = full.last_hash.clone().unwrap();
    let at_end = HeadRecord {
        seq: 5,
        hash: last.clone(),
    };
    let report = verify(std::slice::from_ref(&log), Some(&key), None, Some(&at_end)).unwrap();
    assert_eq!(report.head, HeadCheck::Matched { seq: 5 });
    let ahead = HeadRecord {
        seq: 7,
        hash: "0".repeat(64),
    };
    assert!(matches!(
        verify(std::slice::from_ref(&log), Some(&key), None, Some(&ahead)),
        Err(VerifyError::BehindHead {
            seq: 7,
            last_seq: Some(5),
            ..
        })
    ));
    let other = HeadRecord {
        seq: 3,
        hash: "0".repeat(64),
    };
    assert!(matches!(
        verify(std::slice::from_ref(&log), Some(&key), None, Some(&other)),
        Err(VerifyError::HeadMismatch {
            seq: 3,
            line: 3,
            ..
        })
    ));
    // The newest file alone starts after the recorded entry: not checked, not an error.
    let newest = Path::new(LEGACY_DIR).join("audit.jsonl");
    let report = verify(
        std::slice::from_ref(&newest),
        Some(&key),
        None,
        Some(&at_end),
    )
    .unwrap();
    assert_eq!(report.head, HeadCheck::Earlier { seq: 5 });
}

#[test]
fn detects_edit_insert_delete_reorder() {
    let (_dir, log, key) = setup();
    write_log(&log, &key, 6);
    let k = key_of(&key);
    let orig = lines(&log);
    verify(std::slice::from_ref(&log), Some(&k), None, None).unwrap();

    // Edit a field (MAC fails).
    let mut edited = orig.clone();
    edited[2] = edited[2].replace("\"allow\"", "\"deny\"");
    put_lines(&log, &edited);
    let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
    assert_eq!(line, 3);
    assert!(
        matches!(why, ChainError::Line(LineError::MacMismatch)),
        "{why}"
    );
    assert!(
        why.to_string().starts_with("MAC mismatch"),
        "the CLI's message"
    );

    // Same content, different bytes (whitespace): not canonical.
    let mut spaced = orig.clone();
    spaced[1] = spaced[1].replacen(",", ", ", 1);
    put_lines(&log, &spaced);
    let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
    assert_eq!(line, 2);
    assert!(
        matches!(why, ChainError::Line(LineError::NotCanonical)),
        "{why}"
    );

    // Insert a copy of a valid line.
    let mut inserted = orig.clone();
    inserted.insert(4, orig[1].clone());
    put_lines(&log, &inserted);
    assert_eq!(
        broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
        5
    );

    // Insert a forged line.
    let mut forged = orig.clone();
    forged.insert(
        3,
        orig[3]
            .replace("\"seq\":4", "\"seq\":99")
            .replace("user3", "mallory"),
    );
    put_lines(&log, &forged);
    assert_eq!(
        broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
        4
    );

    // Delete a line: the next one no longer links.
    let mut deleted = orig.clone();
    deleted.remove(2);
    put_lines(&log, &deleted);
    let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
    assert_eq!(line, 3);
    assert!(matches!(why, ChainError::PrevMismatch { .. }), "{why}");
    assert!(
        why.to_string().starts_with("prev does not match"),
        "the CLI's message"
    );

    // Delete the first line: the chain no longer starts at seq 1.
    put_lines(&log, &orig[1..]);
    let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
    assert_eq!(line, 1);
    assert!(
        matches!(
            why,
            ChainError::StartsLate {
                seq: 2,
                event: EventKind::Open
            }
        ),
        "{why}"
    );

    // Reorder two lines.
    let mut swapped = orig.clone();
    swapped.swap(3, 4);
    put_lines(&log, &swapped);
    assert_eq!(
        broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None)).1,
        4
    );

    // An empty line, and garbage.
    let mut blank = orig.clone();
    blank.insert(2, String::new());
    put_lines(&log, &blank);
    let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
    assert_eq!(line, 3);
    assert!(matches!(why, ChainError::Empty), "{why}");
    let mut garbage = orig.clone();
    garbage[5] = "\u{0}\u{ff}not json".into();
    put_lines(&log, &garbage);
    let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
    assert_eq!(line, 6);
    assert!(matches!(why, ChainError::Line(LineError::Json(_))), "{why}");

    // The wrong key.
    put_lines(&log, &orig);
    let (_, line, why) = broken_at(verify(
        std::slice::from_ref(&log),
        Some(&[7u8; 32]),
        None,
        None,
    ));
    assert_eq!(line, 1);
    assert!(
        matches!(why, ChainError::Line(LineError::MacMismatch)),
        "{why}"
    );
}

#[test]
fn truncated_tail_needs_a_recorded_hash() {
    let (_dir, log, key) = setup();
    let last = write_log(&log, &key, 5);
    let k = key_of(&key);
    let orig = lines(&log);
    put_lines(&log, &orig[..3]);
    // The shorter chain is valid on its own...
    assert_eq!(
        verify(std::slice::from_ref(&log), Some(&k), None, None)
            .unwrap()
            .entries,
        3
    );
    // ...but not against the hash recorded before the cut.
    assert!(matches!(
        verify(std::slice::from_ref(&log), Some(&k), Some(&last), None),
        Err(VerifyError::Truncated { .. })
    ));
    // A recorded hash stays valid when the log has grown since.
    put_lines(&log, &orig);
    let mid = line_hash(orig[2].as_bytes());
    let report = verify(
        std::slice::from_ref(&log),
        Some(&k),
        Some(&mid.to_uppercase()),
        None,
    )
    .unwrap();
    assert_eq!(report.expected_at, Some((log.clone(), 3)));
    // A line cut in the middle is reported as incomplete.
    let bytes = fs::read(&log).unwrap();
    fs::write(&log, &bytes[..bytes.len() - 10]).unwrap();
    let (_, line, why) = broken_at(verify(std::slice::from_ref(&log), Some(&k), None, None));
    assert_eq!(line, 5);
    assert!(matches!(why, ChainError::Incomplete), "{why}");
}
