//! The latest denials of each uid, for `tvault status`: a refused process sees only `EACCES`,
//! and the audit log that says why is not the refused user's to read. Each denial is also
//! written to the daemon's log, at info level.
//!
//! Bounded whatever the callers do, since any local user can be refused at will: at most
//! [`PER_UID`] denials per uid (a repeat of a kept one updates it instead of adding one), at
//! most [`UIDS`] uids (the one refused least recently is forgotten first), paths cut to
//! [`MAX_PATH`] bytes. The log gets one line per (uid, op, path, reason) per [`LOG_WINDOW`],
//! with the repeats counted into the next line, and at most [`LOG_BUDGET`] lines per uid per
//! window: the denials beyond that are counted and the count logged when the next window
//! starts, so a loop over many names cannot flood the log either.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::access::{Denial, ModeDenial};
use crate::sync::lock;

pub const PER_UID: usize = 32;
pub const UIDS: usize = 64;
pub const MAX_PATH: usize = 1024;
pub const LOG_WINDOW: Duration = Duration::from_secs(60);
pub const LOG_BUDGET: u32 = 20;

/// One denial as `tvault status` shows it; repeats update `last` and `count`.
#[derive(Debug, Clone)]
pub struct DeniedOp {
    /// The operation, as the audit log names it (`open`, `create`, `rename`…).
    pub op: &'static str,
    /// The path on the mount (cut to [`MAX_PATH`] bytes).
    pub path: String,
    /// The reason code, as the audit log has it (`locked`, `no-key-slot`…).
    pub reason: &'static str,
    /// For a `mode` denial: which entry refused what, and its owner and mode (the latest).
    pub mode: Option<ModeDenial>,
    pub last: SystemTime,
    pub count: u64,
}

struct Kept {
    denied: DeniedOp,
    /// When this denial was last logged, and the repeats since.
    logged: Instant,
    unlogged: u64,
}

struct OfUid {
    /// Most recent first.
    kept: VecDeque<Kept>,
    last: Instant,
    /// This uid's log budget: lines written in the window that began at `window`, and the
    /// denials left out of the log since.
    window: Instant,
    lines: u32,
    left_out: u64,
}

#[derive(Default)]
pub struct Denials {
    by_uid: Mutex<HashMap<u32, OfUid>>,
}

impl Denials {
    /// Keeps a denial of `uid` and logs it unless logged within the window.
    pub fn note(&self, uid: u32, op: &'static str, path: &str, denial: &Denial) {
        let mode = match denial {
            Denial::Mode(m) => Some(ModeDenial {
                path: cut(&m.path),
                ..m.clone()
            }),
            _ => None,
        };
        let seen = DeniedOp {
            op,
            path: cut(path),
            reason: denial.code(),
            mode,
            last: SystemTime::now(),
            count: 1,
        };
        for line in self.note_at(uid, seen, Instant::now()) {
            log::info!("{line}");
        }
    }

    /// The denials of `uid` kept, most recent first.
    pub fn of(&self, uid: u32) -> Vec<DeniedOp> {
        lock(&self.by_uid)
            .get(&uid)
            .map(|u| u.kept.iter().map(|k| k.denied.clone()).collect())
            .unwrap_or_default()
    }

    /// `note` of `seen` (its path already cut, a count of 1) at `now`; returns the lines to
    /// log.
    fn note_at(&self, uid: u32, seen: DeniedOp, now: Instant) -> Vec<String> {
        let mut by_uid = lock(&self.by_uid);
        if !by_uid.contains_key(&uid) && by_uid.len() >= UIDS {
            let stalest = by_uid.iter().min_by_key(|(_, u)| u.last).map(|(&k, _)| k);
            if let Some(stalest) = stalest {
                by_uid.remove(&stalest);
            }
        }
        let of = by_uid.entry(uid).or_insert_with(|| OfUid {
            kept: VecDeque::new(),
            last: now,
            window: now,
            lines: 0,
            left_out: 0,
        });
        of.last = now;
        let mut lines = Vec::new();
        if now.duration_since(of.window) >= LOG_WINDOW {
            if of.left_out > 0 {
                lines.push(format!(
                    "uid {uid}: {} more denials in the last {} s were not logged",
                    of.left_out,
                    LOG_WINDOW.as_secs()
                ));
            }
            of.window = now;
            of.lines = 0;
            of.left_out = 0;
        }
        let same = |k: &Kept| {
            (k.denied.op, &k.denied.path, k.denied.reason) == (seen.op, &seen.path, seen.reason)
        };
        let mut kept = match of
            .kept
            .iter()
            .position(same)
            .and_then(|i| of.kept.remove(i))
        {
            Some(mut k) => {
                k.denied.last = seen.last;
                k.denied.count += 1;
                k.denied.mode = seen.mode;
                if now.duration_since(k.logged) < LOG_WINDOW {
                    k.unlogged += 1;
                    of.kept.push_front(k);
                    return lines;
                }
                k
            }
            None => Kept {
                denied: seen,
                logged: now,
                unlogged: 0,
            },
        };
        if of.lines < LOG_BUDGET {
            // The path is quoted: a name with a newline in it cannot forge a log line.
            let d = &kept.denied;
            let mut line = format!("denied: uid {uid} {} {:?}: {}", d.op, d.path, d.reason);
            if kept.unlogged > 0 {
                line.push_str(&format!(
                    " (and {} times before, not logged)",
                    kept.unlogged
                ));
            }
            lines.push(line);
            of.lines += 1;
            kept.logged = now;
            kept.unlogged = 0;
        } else {
            of.left_out += 1;
        }
        of.kept.push_front(kept);
        of.kept.truncate(PER_UID);
        lines
    }
}

/// `path`, cut at a character boundary to at most [`MAX_PATH`] bytes.
fn cut(path: &str) -> String {
    let mut end = path.len().min(MAX_PATH);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A denial of `op` on `path` for `reason` at wall time `w`.
    fn seen(op: &'static str, path: &str, reason: &'static str, w: SystemTime) -> DeniedOp {
        DeniedOp {
            op,
            path: cut(path),
            reason,
            mode: None,
            last: w,
            count: 1,
        }
    }

    #[test]
    fn denials_are_kept_per_uid_most_recent_first() {
        let d = Denials::default();
        let (t, w) = (Instant::now(), SystemTime::now());
        d.note_at(1001, seen("open", "a", "locked", w), t);
        d.note_at(1001, seen("create", "b", "no-key-slot", w), t);
        d.note_at(1002, seen("open", "c", "no-keyring", w), t);
        let mine = d.of(1001);
        assert_eq!(mine.len(), 2);
        assert_eq!((mine[0].op, mine[0].path.as_str()), ("create", "b"));
        assert_eq!((mine[1].reason, mine[1].count), ("locked", 1));
        assert_eq!(d.of(1002).len(), 1);
        assert!(d.of(1003).is_empty());
    }

    #[test]
    fn repeats_update_one_entry_and_are_logged_once_a_window() {
        let d = Denials::default();
        let (t, w) = (Instant::now(), SystemTime::now());
        let first = d.note_at(1001, seen("open", "a\nforged", "locked", w), t);
        assert_eq!(first, ["denied: uid 1001 open \"a\\nforged\": locked"]);
        for i in 1..100 {
            let later = t + Duration::from_millis(i);
            assert!(d
                .note_at(1001, seen("open", "a\nforged", "locked", w), later)
                .is_empty());
        }
        let kept = d.of(1001);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].count, 100);
        let next = d.note_at(1001, seen("open", "a\nforged", "locked", w), t + LOG_WINDOW);
        assert_eq!(
            next,
            ["denied: uid 1001 open \"a\\nforged\": locked (and 99 times before, not logged)"]
        );
        // Another reason for the same path is another denial.
        assert_eq!(
            d.note_at(1001, seen("open", "a\nforged", "mode", w), t + LOG_WINDOW)
                .len(),
            1
        );
    }

    #[test]
    fn memory_and_log_lines_are_bounded() {
        let d = Denials::default();
        let (t, w) = (Instant::now(), SystemTime::now());
        let mut lines = 0;
        for i in 0..1000 {
            lines += d
                .note_at(1001, seen("open", &format!("f{i}"), "locked", w), t)
                .len();
        }
        assert_eq!(lines, LOG_BUDGET as usize);
        let kept = d.of(1001);
        assert_eq!(kept.len(), PER_UID);
        assert_eq!(kept[0].path, "f999");
        let summary = d.note_at(1001, seen("open", "g", "locked", w), t + LOG_WINDOW);
        assert_eq!(
            summary[0],
            format!(
                "uid 1001: {} more denials in the last 60 s were not logged",
                1000 - LOG_BUDGET
            )
        );
        assert_eq!(
            summary.len(),
            2,
            "the denial that starts the window is logged too"
        );
        for uid in 0..(UIDS as u32 + 10) {
            let later = t + LOG_WINDOW + Duration::from_secs(1 + u64::from(uid));
            d.note_at(2000 + uid, seen("open", "x", "locked", w), later);
        }
        assert_eq!(lock(&d.by_uid).len(), UIDS);
        assert!(
            d.of(1001).is_empty(),
            "the uid refused least recently goes first"
        );
        // Byte MAX_PATH falls inside a character.
        let long = format!("a{}", "é".repeat(MAX_PATH));
        d.note_at(5, seen("open", &long, "locked", w), t);
        assert_eq!(d.of(5)[0].path.len(), MAX_PATH - 1);
    }

    #[test]
    fn a_mode_denial_keeps_what_refused_it() {
        let d = Denials::default();
        let refused = |mode| {
            Denial::Mode(ModeDenial {
                need: crate::access::ModeNeed::Read,
                path: "m".repeat(2 * MAX_PATH),
                dir: false,
                owner: Some("alice".into()),
                mode,
            })
        };
        d.note(1002, "open", "m/x", &refused(0o600));
        d.note(1002, "open", "m/x", &refused(0o640));
        let kept = d.of(1002);
        assert_eq!((kept.len(), kept[0].reason, kept[0].count), (1, "mode", 2));
        let mode = kept[0].mode.as_ref().unwrap();
        assert_eq!(
            (mode.mode, mode.path.len()),
            (0o640, MAX_PATH),
            "the latest, cut"
        );
        d.note(1002, "open", "n", &Denial::Locked);
        assert!(d.of(1002)[0].mode.is_none());
    }
}
