//! The line model: [`Entry`] (one line, in its fixed field order), its canonical form, the MAC
//! over it and the hash that chains the next line to it, and the checks of a single line.
//! The byte format is specified in docs/FORMAT.md ("Audit log").

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::time::{format_time, parse_time};
use super::{Decision, Event, EventKind, MAX_FIELD};
use crate::crypto;

/// One line of the log, in its fixed field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub time: String,
    pub seq: u64,
    pub event: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// How many identical events this line stands for, when it stands for more than one
    /// (a counted or `suppressed` line); absent means one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Time of the first of the `count` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<String>,
    /// Time of the last of the `count` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<String>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

fn clip(field: &Option<String>) -> Option<String> {
    field.as_ref().map(|s| {
        if s.len() <= MAX_FIELD {
            return s.clone();
        }
        let mut end = MAX_FIELD;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    })
}

impl Entry {
    pub(super) fn new(
        event: &Event,
        span: Option<&Span>,
        time: SystemTime,
        seq: u64,
        prev: String,
    ) -> Entry {
        Entry {
            time: format_time(time),
            seq,
            event: event.kind,
            uid: event.uid,
            user: clip(&event.user),
            pid: event.pid,
            process: clip(&event.process),
            exe: clip(&event.exe),
            path: clip(&event.path),
            target: clip(&event.target),
            flags: clip(&event.flags),
            decision: event.decision,
            reason: clip(&event.reason),
            detail: clip(&event.detail),
            count: span.map(|s| s.count),
            first: span.map(|s| format_time(s.first)),
            last: span.map(|s| format_time(s.last)),
            prev,
            mac: None,
        }
    }

    /// The bytes the MAC covers: this entry serialized without `mac`.
    pub fn canonical(&self) -> Vec<u8> {
        let unsigned = Entry {
            mac: None,
            ..self.clone()
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_vec(&unsigned).unwrap_or_default()
    }

    /// The entry's time, if it is well-formed RFC 3339.
    pub fn parsed_time(&self) -> Option<SystemTime> {
        parse_time(&self.time)
    }

    /// How many events the line stands for.
    pub(crate) fn events(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// The time of the newest event the line stands for: `last` of a counted line, else
    /// `time`.
    pub(crate) fn latest_time(&self) -> Option<SystemTime> {
        self.last
            .as_deref()
            .and_then(parse_time)
            .or_else(|| self.parsed_time())
    }
}

/// `count` events, the first and last at these times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub count: u64,
    pub first: SystemTime,
    pub last: SystemTime,
}

impl Span {
    pub fn one(time: SystemTime) -> Span {
        Span {
            count: 1,
            first: time,
            last: time,
        }
    }

    pub fn add(&mut self, time: SystemTime) {
        self.count = self.count.saturating_add(1);
        self.first = self.first.min(time);
        self.last = self.last.max(time);
    }

    pub fn merge(&mut self, other: &Span) {
        self.count = self.count.saturating_add(other.count);
        self.first = self.first.min(other.first);
        self.last = self.last.max(other.last);
    }
}

fn mac_hex(key: &[u8], data: &[u8]) -> String {
    hex::encode(crypto::hmac_sha256(key, data))
}

fn mac_ok(key: &[u8], data: &[u8], expected_hex: &str) -> bool {
    let Ok(expected) = hex::decode(expected_hex) else {
        return false;
    };
    crypto::hmac_sha256_verify(key, data, &expected).is_ok()
}

/// Hex SHA-256 of a line (without its newline): the next line's `prev`.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(crypto::sha256(line))
}

/// Builds a signed line (without newline).
pub(super) fn signed_line(key: &[u8], mut entry: Entry) -> Vec<u8> {
    entry.mac = Some(mac_hex(key, &entry.canonical()));
    serde_json::to_vec(&entry).unwrap_or_default()
}

/// Why a line is not a valid entry, leaving its place in the chain aside.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// Not JSON, or not an object with exactly the entry's fields and their types.
    #[error("not a valid audit entry: {0}")]
    Json(serde_json::Error),
    #[error("no mac field")]
    NoMac,
    #[error("mac is not 64 lowercase hex digits")]
    MacNotHex,
    #[error("prev is not 64 lowercase hex digits")]
    PrevNotHex,
    #[error("MAC mismatch: the line was altered (or written under another key)")]
    MacMismatch,
    /// Valid JSON with the right MAC, but not the bytes the writer would have written (the
    /// MAC covers the fields, this covers the spelling).
    #[error("the line is not in canonical form (bytes were altered)")]
    NotCanonical,
}

/// Parses one line (without newline) into an entry, checking only the JSON shape.
pub fn parse_entry(line: &[u8]) -> Result<Entry, LineError> {
    serde_json::from_slice(line).map_err(LineError::Json)
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parses one line and checks its MAC and canonical form (not its place in the chain).
pub fn verify_line(key: &[u8], line: &[u8]) -> Result<Entry, LineError> {
    check_line_form(Some(key), line)
}

/// [`verify_line`] with the MAC checked only when a key is given: without one, the line must
/// still parse, carry a well-formed `mac` and `prev`, and be canonical.
pub(super) fn check_line_form(key: Option<&[u8]>, line: &[u8]) -> Result<Entry, LineError> {
    let entry = parse_entry(line)?;
    let mac = entry.mac.as_deref().ok_or(LineError::NoMac)?;
    if !is_hex64(mac) {
        return Err(LineError::MacNotHex);
    }
    if !is_hex64(&entry.prev) {
        return Err(LineError::PrevNotHex);
    }
    if let Some(key) = key {
        if !mac_ok(key, &entry.canonical(), mac) {
            return Err(LineError::MacMismatch);
        }
    }
    if serde_json::to_vec(&entry).unwrap_or_default() != line {
        return Err(LineError::NotCanonical);
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::KEY_LEN;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn counted_lines_carry_count_first_and_last() {
        let key = [5u8; KEY_LEN];
        let t = UNIX_EPOCH + Duration::from_millis(1_735_787_045_678);
        let mut span = Span::one(t);
        span.add(t + Duration::from_secs(9));
        span.add(t + Duration::from_secs(3));
        assert_eq!(span.count, 3);
        let event = Event::new(EventKind::Open)
            .uid(1003)
            .path("m/w.safetensors")
            .deny("no-keyring");
        let entry = Entry::new(
            &event,
            Some(&span),
            t + Duration::from_secs(10),
            4,
            "a".repeat(64),
        );
        let line = signed_line(&key, entry);
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.contains(
                "\"reason\":\"no-keyring\",\"count\":3,\"first\":\"2025-01-02T03:04:05.678Z\",\
                 \"last\":\"2025-01-02T03:04:14.678Z\",\"prev\""
            ),
            "{text}"
        );
        let parsed = verify_line(&key, &line).unwrap();
        assert_eq!(parsed.events(), 3);
        assert_eq!(parsed.latest_time(), Some(t + Duration::from_secs(9)));
        // The count is covered by the MAC like every other field.
        let edited = text.replace("\"count\":3", "\"count\":1");
        assert!(matches!(
            verify_line(&key, edited.as_bytes()),
            Err(LineError::MacMismatch)
        ));
        // A line without the new fields (as older versions wrote them) is unchanged.
        let plain = signed_line(&key, Entry::new(&event, None, t, 1, "b".repeat(64)));
        let plain_text = String::from_utf8(plain.clone()).unwrap();
        assert!(!plain_text.contains("count") && !plain_text.contains("\"first\""));
        assert_eq!(verify_line(&key, &plain).unwrap().events(), 1);
    }
}
