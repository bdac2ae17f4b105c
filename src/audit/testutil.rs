//! Helpers shared by the writer, opening, rotation and verification tests.

use std::fs;
use std::path::{Path, PathBuf};

use super::head::{read_head, HeadRecord};
use super::key::{self, Key};
use super::{
    parse_entry, AuditLog, ChainError, Entry, Event, EventKind, VerifyError, VerifyReport,
};

pub(super) fn key_of(path: &Path) -> Key {
    key::read_trusted(path).unwrap().unwrap()
}

pub(super) fn head_of(key: &Path) -> HeadRecord {
    read_head(&super::head_path(key)).unwrap().unwrap()
}
pub(super) fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let key = dir.path().join("audit.key");
    (dir, log, key)
}

pub(super) fn open_event(i: u32) -> Event {
    Event::new(EventKind::Open)
        .uid(1000 + i)
        .user(format!("user{i}"))
        .path(format!("m/file{i}.safetensors"))
        .open_flags(libc::O_RDONLY)
        .allow()
}

pub(super) fn write_log(log: &Path, key: &Path, n: u32) -> String {
    let audit = AuditLog::open(log, key, None).unwrap();
    for i in 0..n {
        audit.record(&open_event(i)).unwrap();
    }
    let last = audit.last_hash();
    audit.close().unwrap();
    last
}

pub(super) fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

pub(super) fn put_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

pub(super) fn broken_at(result: Result<VerifyReport, VerifyError>) -> (PathBuf, u64, ChainError) {
    match result {
        Err(VerifyError::Broken { file, line, why }) => (file, line, why),
        other => panic!("expected a broken line, got {other:?}"),
    }
}

pub(super) fn entries(path: &Path) -> Vec<Entry> {
    lines(path)
        .iter()
        .map(|l| parse_entry(l.as_bytes()).unwrap())
        .collect()
}
