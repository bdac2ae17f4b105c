//! Tests of appending: the line layout, reopening, one writer per log, concurrency, clipping,
//! and coalescing through the writer.

use super::*;
use crate::audit::coalesce::SUPPRESSED_REASON;
use crate::audit::rotate::DEFAULT_MAX_SIZE;
use crate::audit::testutil::*;
use crate::audit::{parse_entry, verify, EventKind, MAX_FIELD};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

#[test]
fn lines_have_fixed_fields_and_chain() {
    let (_dir, log, key) = setup();
    let audit = AuditLog::open(&log, &key, None).unwrap();
    let id = audit.last_hash();
    audit
        .record(
            &Event::from_pid(EventKind::Open, std::process::id())
                .uid(1001)
                .user("alice")
                .path("m/w.safetensors")
                .open_flags(libc::O_RDONLY)
                .deny("locked"),
        )
        .unwrap();
    audit.record(&Event::new(EventKind::Mount)).unwrap();
    assert_eq!(audit.entries_written(), 2);
    assert!(audit.last_entry_time().is_some());
    let all = lines(&log);
    let first: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // serde_json's map is sorted, so check the raw order instead.
    assert!(keys.contains(&"exe"));
    let order = [
        "\"time\"",
        "\"seq\"",
        "\"event\"",
        "\"uid\"",
        "\"user\"",
        "\"pid\"",
        "\"process\"",
        "\"exe\"",
        "\"path\"",
        "\"flags\"",
        "\"decision\"",
        "\"reason\"",
        "\"prev\"",
        "\"mac\"",
    ];
    let positions: Vec<usize> = order.iter().map(|k| all[0].find(k).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{}", all[0]);
    assert_eq!(first["event"], "open");
    assert_eq!(first["decision"], "deny");
    assert_eq!(first["reason"], "locked");
    assert_eq!(first["flags"], "O_RDONLY");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["prev"], id.as_str());
    assert!(first["process"].as_str().is_some_and(|p| !p.is_empty()));
    let second: serde_json::Value = serde_json::from_str(&all[1]).unwrap();
    assert_eq!(second["seq"], 2);
    assert_eq!(second["prev"], line_hash(all[0].as_bytes()).as_str());
    assert!(second.get("uid").is_none() && second.get("decision").is_none());
    assert!(!all[1].contains("null"));
    let last = audit.last_hash();
    audit.close().unwrap();
    assert!(matches!(
        audit.record(&Event::new(EventKind::Lock)),
        Err(AuditError::Closed)
    ));
    let key_bytes = key_of(&key);
    let report = verify(
        std::slice::from_ref(&log),
        Some(&key_bytes),
        Some(&last),
        None,
    )
    .unwrap();
    assert_eq!(report.entries, 2);
    assert_eq!(report.last_hash.as_deref(), Some(last.as_str()));
    assert_eq!(report.anchor.as_deref(), Some(id.as_str()));
    assert_eq!(
        fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[test]
fn reopen_continues_the_chain() {
    let (_dir, log, key) = setup();
    write_log(&log, &key, 3);
    let audit = AuditLog::open(&log, &key, None).unwrap();
    assert_eq!(audit.last_hash(), line_hash(lines(&log)[2].as_bytes()));
    assert!(audit.last_entry_time().is_some());
    audit.record(&open_event(9)).unwrap();
    audit.close().unwrap();
    assert_eq!(lines(&log).len(), 4);
    let report = verify(&[log], Some(&key_of(&key)), None, None).unwrap();
    assert_eq!(report.entries, 4);
    assert_eq!(report.last_seq, Some(4));
}

#[test]
fn one_writer_per_log() {
    let (_dir, log, key) = setup();
    let a = AuditLog::open(&log, &key, None).unwrap();
    assert!(matches!(
        AuditLog::open(&log, &key, None),
        Err(AuditError::InUse(_))
    ));
    drop(a);
    AuditLog::open(&log, &key, None).unwrap();
}

#[test]
fn concurrent_writers_do_not_interleave() {
    let (_dir, log, key) = setup();
    let audit = Arc::new(AuditLog::open(&log, &key, None).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let audit = audit.clone();
            std::thread::spawn(move || {
                for i in 0..200 {
                    let event =
                        open_event(t * 1000 + i).detail("x".repeat((i as usize * 37) % 3000));
                    audit.record(&event).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(audit.entries_written(), 1600);
    audit.close().unwrap();
    let all = lines(&log);
    assert_eq!(all.len(), 1600);
    for l in &all {
        parse_entry(l.as_bytes()).unwrap();
    }
    let report = verify(&[log], Some(&key_of(&key)), None, None).unwrap();
    assert_eq!(report.entries, 1600);
}
#[test]
fn long_fields_are_clipped() {
    let (_dir, log, key) = setup();
    let audit = AuditLog::open(&log, &key, None).unwrap();
    audit
        .record(&Event::new(EventKind::Open).path("é".repeat(MAX_FIELD)))
        .unwrap();
    audit.close().unwrap();
    let entry = parse_entry(lines(&log)[0].as_bytes()).unwrap();
    assert!(entry.path.unwrap().len() <= MAX_FIELD + 3);
    verify(&[log], Some(&key_of(&key)), None, None).unwrap();
}

fn quick(burst: u32) -> Limits {
    Limits {
        max_size: DEFAULT_MAX_SIZE,
        coalesce: coalesce::Limits {
            window: Duration::from_millis(800),
            burst,
            refill: Duration::from_secs(3600),
            windows: 1000,
            windows_per_uid: 100,
        },
    }
}

fn denial(uid: u32, path: &str) -> Event {
    Event::from_pid(EventKind::Open, std::process::id())
        .uid(uid)
        .path(path)
        .open_flags(libc::O_RDONLY)
        .deny("no-keyring")
}

/// (lines, events) of `uid` in a log.
fn of_uid(path: &Path, uid: u32) -> (usize, u64) {
    let mine: Vec<Entry> = entries(path)
        .into_iter()
        .filter(|e| e.uid == Some(uid))
        .collect();
    (mine.len(), mine.iter().map(Entry::events).sum())
}

#[test]
fn repeated_denials_become_one_counted_line() {
    let (_dir, log, key) = setup();
    let audit = AuditLog::open_with(open_dir(&log).unwrap(), &log, &key, quick(10)).unwrap();
    for _ in 0..1000 {
        audit.record(&denial(1003, "m/w")).unwrap();
    }
    assert_eq!(lines(&log)[0].matches("\"count\"").count(), 0);
    // The background thread writes the count once the window has ended, while the log
    // stays open.
    let start = Instant::now();
    while of_uid(&log, 1003).1 < 1000 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no counted line: {:?}",
            lines(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = entries(&log);
    assert!(all.len() <= 3, "{all:?}");
    let counted = &all[1];
    assert!(counted.count.is_some_and(|c| c > 1), "{counted:?}");
    assert!(counted.first.is_some() && counted.first <= counted.last);
    assert_eq!(counted.reason.as_deref(), Some("no-keyring"));
    assert_eq!(counted.path.as_deref(), Some("m/w"));
    assert_eq!(counted.pid, Some(std::process::id()));
    assert_eq!(audit.events_coalesced(), 999);
    audit.close().unwrap();
    let report = verify(&[log], Some(&key_of(&key)), None, None).unwrap();
    assert_eq!(report.events, 1000);
}

#[test]
fn a_flooding_uid_is_held_to_its_budget_and_nothing_is_lost() {
    let (_dir, log, key) = setup();
    let audit = AuditLog::open_with(open_dir(&log).unwrap(), &log, &key, quick(4)).unwrap();
    for i in 0..5000 {
        audit.record(&denial(1003, &format!("p{i}"))).unwrap();
    }
    assert_eq!(of_uid(&log, 1003), (4, 4), "the burst only");
    // Other users are not affected: their allowed opens and denials are written at once.
    for i in 0..3 {
        audit.record(&open_event(i)).unwrap();
    }
    audit.record(&denial(1004, "x")).unwrap();
    assert_eq!(of_uid(&log, 1004), (1, 1));
    assert_eq!(lines(&log).len(), 4 + 3 + 1);
    // Closing writes the tally, whatever the budget.
    audit.close().unwrap();
    assert_eq!(of_uid(&log, 1003), (5, 5000));
    let all = entries(&log);
    let summary = all.last().unwrap();
    assert_eq!(summary.event, EventKind::Suppressed);
    assert_eq!(summary.uid, Some(1003));
    assert_eq!(summary.count, Some(4996));
    assert_eq!(summary.reason.as_deref(), Some(SUPPRESSED_REASON));
    let report = verify(&[log], Some(&key_of(&key)), None, None).unwrap();
    assert_eq!(report.events, 5000 + 3 + 1);
}

#[test]
fn allowed_events_always_get_a_line_each() {
    let (_dir, log, key) = setup();
    let audit = AuditLog::open_with(open_dir(&log).unwrap(), &log, &key, quick(1)).unwrap();
    for _ in 0..100 {
        audit.record(&open_event(1)).unwrap();
    }
    assert_eq!(lines(&log).len(), 100);
    assert_eq!(audit.events_coalesced(), 0);
}
