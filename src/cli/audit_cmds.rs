//! `tvault audit` (read, filter and verify audit logs) and `tvault access` (who holds key
//! slots for what).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::{audit_store, CliResult};
use crate::audit::{self, AuditError, Decision, Entry, HeadCheck, Start, VerifyReport};
use crate::store::Store;

pub(super) fn error(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    msg.into().into()
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DecisionArg {
    Allow,
    Deny,
}

fn parse_since(text: &str) -> Result<SystemTime, String> {
    audit::parse_time(text).ok_or_else(|| {
        format!("invalid time {text:?}: expected RFC 3339 (2025-01-02T03:04:05Z) or YYYY-MM-DD")
    })
}

#[derive(Args)]
pub struct AuditArgs {
    /// A store (every host's chain in it, merged by time), or audit log file(s), oldest
    /// first (e.g. audit.jsonl.2 audit.jsonl.1 audit.jsonl)
    #[arg(required = true, value_name = "STORE|LOG")]
    pub(super) logs: Vec<PathBuf>,
    /// For a store: the directory holding each host's key as HOST.key (and its head record,
    /// HOST.key.head), collected from each host's $TVAULT_STATE_DIR/audit-keys/STORE_ID/
    /// (default: this host's own, which holds only its key)
    #[arg(long, value_name = "DIR")]
    pub(super) keys: Option<PathBuf>,
    /// Also read each LOG's rotated files (LOG.5 … LOG.1) before it
    #[arg(long)]
    pub(super) rotated: bool,
    /// Check the hash chain, every line's MAC and the daemon's head record; print the first
    /// broken line and exit 1, or a report (exit 0; exit 2 if no key could be read, so the
    /// entries are not authenticated; exit 1 for a chain that restarts)
    #[arg(long, conflicts_with_all = ["user", "path", "since", "decision"])]
    pub(super) verify: bool,
    /// The audit key (default: the log's key in $TVAULT_STATE_DIR/audit-keys/, normally
    /// /var/lib/tvault/audit-keys/; a key beside the log is never used)
    #[arg(long, value_name = "FILE")]
    pub(super) key: Option<PathBuf>,
    /// With --verify: a last hash printed by an earlier --verify; fails if it is no longer in
    /// the chain (entries were cut off the end)
    #[arg(long, value_name = "HASH", requires = "verify")]
    pub(super) expect_last: Option<String>,
    /// Only entries of this user (name, or numeric uid)
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Only entries whose path matches this pattern (`*` any characters, `/` included; `?`
    /// one character)
    #[arg(long, value_name = "GLOB")]
    path: Option<String>,
    /// Only entries at or after this time (RFC 3339, or YYYY-MM-DD for midnight UTC); a
    /// counted line matches when its last event does
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    since: Option<SystemTime>,
    /// Only allowed or only denied decisions
    #[arg(long, value_enum)]
    decision: Option<DecisionArg>,
    /// Print the matching JSON lines as they are in the log (or, with --verify, a JSON report)
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args)]
pub struct AccessArgs {
    store: PathBuf,
    /// Only this file, or the files under this directory
    rel: Option<String>,
    /// Print JSON
    #[arg(long)]
    json: bool,
}

/// Matches `text` against `pattern` in full: `*` matches any run of characters (`/`
/// included), `?` exactly one character, everything else itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in the text it started matching.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

pub(super) struct Filter<'a> {
    user: Option<&'a str>,
    uid: Option<u32>,
    path: Option<&'a str>,
    since: Option<SystemTime>,
    decision: Option<Decision>,
}

impl Filter<'_> {
    pub(super) fn matches(&self, e: &Entry) -> bool {
        if let Some(user) = self.user {
            let by_name = e.user.as_deref() == Some(user);
            let by_uid = self.uid.is_some() && e.uid == self.uid;
            if !by_name && !by_uid {
                return false;
            }
        }
        if let Some(glob) = self.path {
            let hit = |p: &Option<String>| p.as_deref().is_some_and(|p| glob_match(glob, p));
            if !hit(&e.path) && !hit(&e.target) {
                return false;
            }
        }
        if let Some(since) = self.since {
            if e.latest_time().is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(decision) = self.decision {
            if e.decision != Some(decision) {
                return false;
            }
        }
        true
    }
}

/// Control characters from a log (file names can hold escape sequences) are shown escaped,
/// never sent to the terminal.
pub(super) fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}

pub(super) fn table_row(e: &Entry) -> [String; 8] {
    let opt = |s: &Option<String>| s.as_deref().map(printable).unwrap_or_else(|| "-".into());
    let who = match (&e.user, e.uid) {
        (Some(u), Some(uid)) => format!("{}({uid})", printable(u)),
        (Some(u), None) => printable(u),
        (None, Some(uid)) => format!("uid {uid}"),
        (None, None) => "-".into(),
    };
    let process = match (&e.process, e.pid) {
        (Some(p), Some(pid)) => format!("{}[{pid}]", printable(p)),
        (Some(p), None) => printable(p),
        (None, Some(pid)) => format!("[{pid}]"),
        (None, None) => "-".into(),
    };
    let path = match (&e.path, &e.target) {
        (Some(p), Some(t)) => format!("{} -> {}", printable(p), printable(t)),
        (p, _) => opt(p),
    };
    [
        e.time.clone(),
        who,
        process,
        path,
        e.event.as_str().to_string(),
        e.decision.map_or("-", Decision::as_str).to_string(),
        e.events().to_string(),
        opt(&e.reason),
    ]
}

/// The table's columns (a store's merged chains put `HOST` after `TIME`).
pub(super) const HEAD: [&str; 8] = [
    "TIME", "USER", "PROCESS", "PATH", "EVENT", "DECISION", "COUNT", "REASON",
];

pub(super) fn print_table(head: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    const MAX_WIDTH: usize = 48;
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count()).min(MAX_WIDTH.max(*w));
        }
    }
    let mut out = std::io::stdout().lock();
    let mut line = |cells: &[&str]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let pad = width[i].saturating_sub(cell.chars().count());
                s.push_str(cell);
                s.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        writeln!(out, "{}", s.trim_end())
    };
    line(head)?;
    for row in rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    Ok(())
}

fn log_files(args: &AuditArgs) -> Vec<PathBuf> {
    if args.rotated {
        args.logs
            .iter()
            .flat_map(|l| audit::with_rotated(l))
            .collect()
    } else {
        args.logs.clone()
    }
}

pub(super) fn filter(args: &AuditArgs) -> Filter<'_> {
    Filter {
        user: args.user.as_deref(),
        uid: args.user.as_deref().and_then(|u| u.parse().ok()),
        path: args.path.as_deref(),
        since: args.since,
        decision: args.decision.map(|d| match d {
            DecisionArg::Allow => Decision::Allow,
            DecisionArg::Deny => Decision::Deny,
        }),
    }
}

pub fn audit(args: &AuditArgs) -> CliResult {
    if let Some(store) = audit_store::store_arg(args)? {
        return audit_store::audit(args, &store);
    }
    if args.keys.is_some() {
        return Err(error(
            "--keys DIR is for a store's chains (tvault audit STORE --verify --keys DIR); for \
             a log file, pass --key FILE",
        ));
    }
    let files = log_files(args);
    if args.verify {
        return verify(args, &files);
    }
    let filter = filter(args);
    let mut rows = Vec::new();
    let mut skipped = 0u64;
    let mut out = std::io::stdout().lock();
    for file in &files {
        let mut write_error = None;
        audit::for_each_line(file, |raw| {
            if raw.bytes.is_empty() && !raw.terminated {
                return true;
            }
            let entry = match audit::parse_entry(raw.bytes) {
                Ok(entry) if raw.terminated => entry,
                Ok(_) => {
                    eprintln!(
                        "tvault: {}, line {}: incomplete line, skipped",
                        file.display(),
                        raw.number
                    );
                    skipped += 1;
                    return true;
                }
                Err(why) => {
                    eprintln!(
                        "tvault: {}, line {}: {why}; skipped",
                        file.display(),
                        raw.number
                    );
                    skipped += 1;
                    return true;
                }
            };
            if !filter.matches(&entry) {
                return true;
            }
            if args.json {
                let written = out.write_all(raw.bytes).and_then(|()| out.write_all(b"\n"));
                if let Err(e) = written {
                    write_error = Some(e);
                    return false;
                }
            } else {
                rows.push(table_row(&entry).to_vec());
            }
            true
        })
        .map_err(|e| error(format!("{}: {e}", file.display())))?;
        if let Some(e) = write_error {
            // A closed pipe (`| head`) is not an error worth reporting.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
    }
    drop(out);
    if !args.json {
        if let Err(e) = print_table(&HEAD, &rows) {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                return Err(e.into());
            }
        }
    }
    if skipped > 0 {
        eprintln!(
            "tvault: {skipped} line(s) could not be read; run `tvault audit --verify` to check the log"
        );
    }
    Ok(())
}

/// `--verify` found the chain intact, but could not read a key: nothing is authenticated.
pub(super) const EXIT_UNAUTHENTICATED: i32 = 2;

/// The key `--verify` uses: `--key FILE`, else the log's default key, never one beside the
/// log. `Err(why)` when there is none to use, which makes the check unauthenticated.
fn verify_key(
    args: &AuditArgs,
    base: &Path,
) -> Result<(PathBuf, Result<audit::Key, String>), Box<dyn std::error::Error>> {
    let path = args.key.clone().unwrap_or_else(|| {
        audit_store::host_chain_key(base).unwrap_or_else(|| audit::default_key_path(base))
    });
    let key = match audit::read_key(&path) {
        Ok(Some(key)) => Ok(key),
        Ok(None) if args.key.is_some() => {
            return Err(error(format!("{}: no such key file", path.display())))
        }
        Ok(None) => Err(format!(
            "there is no audit key at {}, where this log's key is kept (pass --key FILE)",
            path.display()
        )),
        Err(AuditError::Io { source, .. })
            if args.key.is_none() && source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Err(format!(
                "cannot read {}: permission denied (run as root, or pass --key FILE)",
                path.display()
            ))
        }
        Err(e) => return Err(e.into()),
    };
    Ok((path, key))
}

fn verify(args: &AuditArgs, files: &[PathBuf]) -> CliResult {
    let newest = files.last().ok_or_else(|| error("no log files given"))?;
    let base = audit::base_log(newest);
    let (key_path, key) = verify_key(args, &base)?;
    // The head record holds the log's newest entry: it applies when the newest file given is
    // the log itself, not an older rotated file.
    let head = match &key {
        Ok(_) if *newest == base => audit::read_head(&audit::head_path(&key_path))?,
        _ => None,
    };
    let report = audit::verify(
        files,
        key.as_ref().ok().map(|k| k.as_slice()),
        args.expect_last.as_deref(),
        head.as_ref(),
    )?;
    let unauthenticated = key.as_ref().err();
    let restarted = matches!(report.start, Start::Restarted { .. });
    if args.json {
        println!(
            "{}",
            json!({
                "intact": unauthenticated.is_none() && !restarted,
                "authenticated": report.authenticated,
                "unauthenticated_because": unauthenticated,
                "key": key_path,
                "entries": report.entries,
                "events": report.events,
                "files": files,
                "start": report.start,
                "head": report.head,
                "first_seq": report.first_seq,
                "last_seq": report.last_seq,
                "last_hash": report.last_hash,
                "anchor": report.anchor,
                "expected_found": report.expected_at.as_ref().map(|(f, l)| json!({"file": f, "line": l})),
            })
        );
    } else {
        print_report(&report, &key_path, unauthenticated, head.is_some());
    }
    let _ = std::io::stdout().flush();
    if let Start::Restarted {
        seq,
        reason,
        detail,
    } = &report.start
    {
        return Err(error(format!(
            "the chain restarts at seq {seq} ({reason}: {}): the writer found the log before \
             it broken, so whatever came before is not vouched for; check the earlier files \
             (--rotated) for where it breaks",
            detail.as_deref().unwrap_or("no detail")
        )));
    }
    if let Some(why) = unauthenticated {
        eprintln!("tvault: the entries are NOT authenticated: {why}");
        std::process::exit(EXIT_UNAUTHENTICATED);
    }
    Ok(())
}

fn print_report(
    report: &VerifyReport,
    key_path: &Path,
    unauthenticated: Option<&String>,
    had_head: bool,
) {
    let files = if report.files == 1 { "file" } else { "files" };
    let check = match unauthenticated {
        None => format!(
            "chain intact, every entry authenticated under {}",
            key_path.display()
        ),
        Some(why) => format!(
            "hash chain intact, but NOT AUTHENTICATED ({why}): anyone who can write the log \
             could have written these entries"
        ),
    };
    println!(
        "{} entries ({} events) in {} {files}: {check}",
        report.entries, report.events, report.files
    );
    match &report.start {
        Start::Empty => println!("start: the log is empty"),
        Start::Beginning => {
            println!("start: the log's first entry (seq 1); nothing is missing before it")
        }
        Start::Rotated { seq } => println!(
            "start: seq {seq}, a rotate entry: the {} entries before it were rotated out, or are \
             in files not given (--rotated)",
            seq.saturating_sub(1)
        ),
        Start::Restarted { seq, reason, .. } => {
            println!("start: seq {seq}, a restart ({reason}); see below")
        }
    }
    if unauthenticated.is_none() {
        match &report.head {
            HeadCheck::Matched { seq } => {
                println!("end: reaches the daemon's head record (seq {seq}); nothing was cut off")
            }
            HeadCheck::Earlier { seq } => println!(
                "end: the daemon's head record (seq {seq}) is in an earlier file; not checked"
            ),
            HeadCheck::None if had_head => println!("end: the head record is empty"),
            HeadCheck::None => println!(
                "end: no head record beside the key, or the files given end before the log \
                 does; a cut tail is caught only with --expect-last"
            ),
        }
    }
    if let Some(hash) = &report.last_hash {
        println!("last hash {hash} (keep it elsewhere to detect tail truncation)");
    }
    if let Some((file, line)) = &report.expected_at {
        println!(
            "the expected hash is the hash of {}, line {line}",
            file.display()
        );
    }
}

pub fn access(args: &AccessArgs) -> CliResult {
    let store = Store::open(&args.store)?;
    let users = store.users()?;
    let files = match args.rel.as_deref() {
        Some(rel) => super::targets(&store, rel)?,
        None => store.files()?.into_iter().map(|f| f.rel).collect(),
    };
    // Column order: the store's users by name, then slot labels that name no user.
    let mut columns: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
    let mut rows: Vec<(String, Result<Vec<String>, String>)> = Vec::new();
    for rel in files {
        let readers = store
            .open_container(&rel)
            .map(|c| {
                c.slots()
                    .iter()
                    .map(|s| s.label.clone())
                    .collect::<Vec<_>>()
            })
            .map_err(|e| e.to_string());
        if let Ok(readers) = &readers {
            for label in readers {
                if !columns.contains(label) {
                    columns.push(label.clone());
                }
            }
        }
        rows.push((rel, readers));
    }
    let unknown: Vec<&String> = columns[users.len()..].iter().collect();
    let failed = rows.iter().filter(|(_, r)| r.is_err()).count();
    if args.json {
        let uids: BTreeMap<&str, u32> = users.iter().map(|u| (u.name.as_str(), u.uid)).collect();
        let out = json!({
            "users": users.iter().map(|u| json!({"name": u.name, "uid": u.uid})).collect::<Vec<_>>(),
            "unknown_labels": unknown,
            "files": rows.iter().map(|(rel, readers)| match readers {
                Ok(readers) => json!({
                    "path": rel,
                    "readers": readers,
                    "reader_uids": readers.iter().filter_map(|r| uids.get(r.as_str())).collect::<Vec<_>>(),
                }),
                Err(e) => json!({"path": rel, "error": e}),
            }).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let headers: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i < users.len() {
                    printable(c)
                } else {
                    format!("{}?", printable(c))
                }
            })
            .collect();
        let file_width = rows
            .iter()
            .map(|(rel, _)| printable(rel).chars().count())
            .max()
            .unwrap_or(0)
            .max(4);
        let mut head = format!("{:<file_width$}", "FILE");
        for h in &headers {
            head.push_str(&format!("  {h}"));
        }
        println!("{}", head.trim_end());
        for (rel, readers) in &rows {
            let mut line = format!("{:<file_width$}", printable(rel));
            match readers {
                Ok(readers) => {
                    for (c, h) in columns.iter().zip(&headers) {
                        let mark = if readers.contains(c) { "x" } else { "-" };
                        line.push_str(&format!("  {mark:<w$}", w = h.chars().count()));
                    }
                }
                Err(e) => line.push_str(&format!("  (unreadable: {})", printable(e))),
            }
            println!("{}", line.trim_end());
        }
        if rows.is_empty() {
            eprintln!("tvault: the store holds no files");
        }
        if !unknown.is_empty() {
            eprintln!(
                "tvault: columns marked ? are key-slot labels that name no user of this store"
            );
        }
    }
    if failed > 0 {
        return Err(error(format!("{failed} file(s) could not be read")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t) in [
            ("*", ""),
            ("*", "a/b/c"),
            ("*.safetensors", "m/model.safetensors"),
            ("m/*", "m/x/y"),
            ("m/?.json", "m/a.json"),
            ("a*b*c", "aXXbYYc"),
            ("a*b", "abab"),
            ("é?", "éü"),
            ("exact", "exact"),
        ] {
            assert!(glob_match(p, t), "{p} {t}");
        }
        for (p, t) in [
            ("", "a"),
            ("?", ""),
            ("*.json", "a.jsonl"),
            ("m/?.json", "m/ab.json"),
            ("a*b", "abac"),
            ("exact", "exactly"),
        ] {
            assert!(!glob_match(p, t), "{p} {t}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(printable("plain/é"), "plain/é");
    }
}
