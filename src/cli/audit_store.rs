//! `tvault audit STORE`: every chain the store holds (one per host, and the single log of
//! older versions), read through the store, merged by time, each entry tagged with its host;
//! with `--verify`, each chain checked under its own host's key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{json, Value};

use super::audit_cmds::{
    error, filter, print_table, printable, table_row, AuditArgs, EXIT_UNAUTHENTICATED, HEAD,
};
use super::CliResult;
use crate::audit::{self, Chain, Start, VerifyReport};
use crate::store::Store;

/// The store named by a lone `STORE|LOG` argument, if it names one: a directory, or a
/// location that is not a local path (`s3://…`). A file argument is a log.
pub(super) fn store_arg(args: &AuditArgs) -> Result<Option<Store>, Box<dyn std::error::Error>> {
    let [only] = args.logs.as_slice() else {
        return Ok(None);
    };
    let is_url = only.to_str().is_some_and(|s| s.contains("://"));
    if !only.is_dir() && !is_url {
        return Ok(None);
    }
    if args.key.is_some() || args.expect_last.is_some() {
        return Err(error(
            "--key and --expect-last are for one log file; a store holds a chain per host: \
             collect their keys into a directory and pass --keys DIR",
        ));
    }
    Ok(Some(Store::open(only)?))
}

/// The key of a host's chain given as a file (`STORE/.tvault/audit/HOST.jsonl`): this host's
/// key for that store and host, found through the store's id.
pub(super) fn host_chain_key(log: &Path) -> Option<PathBuf> {
    let dir = log.parent()?;
    let meta = dir.parent()?;
    if dir.file_name()? != audit::CHAIN_DIR || meta.file_name()? != crate::store::META_DIR {
        return None;
    }
    let host = log.file_name()?.to_str()?.strip_suffix(".jsonl")?;
    audit::validate_host_id(host).ok()?;
    let id = Store::open(meta.parent()?).ok()?.id().ok()??;
    Some(audit::host_key_path(&id, host))
}

pub(super) fn audit(args: &AuditArgs, store: &Store) -> CliResult {
    let chains = audit::store_chains(store)?;
    if args.verify {
        return verify(args, store, &chains);
    }
    let filter = filter(args);
    // Each chain is in time order already, but hosts interleave.
    let mut found: Vec<Found<'_>> = Vec::new();
    let mut skipped = 0u64;
    for chain in &chains {
        for shown in audit::display_files(store, chain) {
            let source = match audit::open_chain_file(store, chain, &shown) {
                Ok(source) => source,
                Err(e) => {
                    eprintln!("tvault: {}: {e}; skipped", shown.display());
                    skipped += 1;
                    continue;
                }
            };
            audit::for_each_line_in(source, |raw| {
                if raw.bytes.is_empty() && !raw.terminated {
                    return true;
                }
                match audit::parse_entry(raw.bytes) {
                    Ok(entry) if raw.terminated => {
                        if filter.matches(&entry) {
                            let order = found.len();
                            found.push((
                                entry.parsed_time(),
                                order,
                                chain.host.as_deref(),
                                raw.bytes.to_vec(),
                            ));
                        }
                    }
                    _ => {
                        eprintln!(
                            "tvault: {}, line {}: not a complete entry; skipped",
                            shown.display(),
                            raw.number
                        );
                        skipped += 1;
                    }
                }
                true
            })
            .map_err(|e| error(format!("{}: {e}", shown.display())))?;
        }
    }
    found.sort_by_key(|(time, order, _, _)| (*time, *order));
    let shown = if args.json {
        print_json(&found)
    } else {
        print_rows(&found)
    };
    if let Err(e) = shown {
        // A closed pipe (`| head`) is not an error worth reporting.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    if skipped > 0 {
        eprintln!(
            "tvault: {skipped} line(s) or file(s) could not be read; run `tvault audit STORE \
             --verify` to check the chains"
        );
    }
    Ok(())
}

/// An entry to show: its time, the order it was found in, its host, its raw line.
type Found<'a> = (Option<SystemTime>, usize, Option<&'a str>, Vec<u8>);

/// Each line as it is in its log, with `"host"` put first (`null` for the single log).
fn print_json(found: &[Found<'_>]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for (_, _, host, raw) in found {
        let tag = serde_json::to_string(host).unwrap_or_else(|_| "null".into());
        let rest = raw.strip_prefix(b"{").unwrap_or(raw);
        out.write_all(format!("{{\"host\":{tag},").as_bytes())?;
        out.write_all(rest)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

fn print_rows(found: &[Found<'_>]) -> std::io::Result<()> {
    let mut head: Vec<&str> = HEAD.to_vec();
    head.insert(1, "HOST");
    let rows: Vec<Vec<String>> = found
        .iter()
        .filter_map(|(_, _, host, raw)| {
            let entry = audit::parse_entry(raw).ok()?;
            let mut row = table_row(&entry).to_vec();
            row.insert(1, host.map_or_else(|| "-".into(), printable));
            Some(row)
        })
        .collect();
    print_table(&head, &rows)
}

/// How one chain came out of `--verify`.
enum Outcome {
    Intact(VerifyReport),
    /// Intact as a hash chain, but without its key: nothing is authenticated.
    Unverified(VerifyReport, String),
    Failed(String),
}

/// Where the keys are looked up: `--keys DIR`, else this host's directory for the store.
fn keys_dir(
    args: &AuditArgs,
    store: &Store,
) -> Result<Option<PathBuf>, Box<dyn std::error::Error>> {
    if let Some(dir) = &args.keys {
        if !dir.is_dir() {
            return Err(error(format!(
                "{}: not a directory (--keys)",
                dir.display()
            )));
        }
        return Ok(Some(dir.clone()));
    }
    match store.id()? {
        Some(id) => {
            audit::check_store_id(store, &id, false)?;
            Ok(Some(audit::host_key_dir(&id)))
        }
        None => Ok(None),
    }
}

/// The key file of `chain`: `DIR/HOST.key`; the single log's under its own name (as its
/// writer named it), in DIR or in this host's key directory.
fn key_path(args: &AuditArgs, store: &Store, dir: Option<&Path>, chain: &Chain) -> Option<PathBuf> {
    match &chain.host {
        Some(host) => dir.map(|d| d.join(format!("{host}.key"))),
        None => {
            let (_, default) = audit::default_paths(store.root(), None);
            match &args.keys {
                Some(d) => default.file_name().map(|n| d.join(n)),
                None => Some(default),
            }
        }
    }
}

fn check(args: &AuditArgs, store: &Store, dir: Option<&Path>, chain: &Chain) -> Outcome {
    let key_file = key_path(args, store, dir, chain);
    let fix = || match &chain.host {
        Some(host) => format!(
            "copy {host}.key and {host}.key.head from host {host}'s \
             $TVAULT_STATE_DIR/audit-keys/{}/ into one directory and pass --keys DIR",
            store
                .id()
                .ok()
                .flatten()
                .unwrap_or_else(|| "STORE_ID".into())
        ),
        None => "pass --keys DIR holding the key of the store's single log, named as in the \
                 writer's audit-keys/"
            .to_string(),
    };
    let key = match &key_file {
        None => Err(format!(
            "the store has no id, so no key names it; {}",
            fix()
        )),
        Some(path) => match audit::read_key(path) {
            Ok(Some(key)) => Ok(key),
            Ok(None) => Err(format!("no key at {}; {}", path.display(), fix())),
            Err(e) => return Outcome::Failed(format!("{}: {e}", path.display())),
        },
    };
    let head = match (&key, &key_file) {
        (Ok(_), Some(path)) => match audit::read_head(&audit::head_path(path)) {
            Ok(head) => head,
            Err(e) => return Outcome::Failed(e.to_string()),
        },
        _ => None,
    };
    let files = audit::display_files(store, chain);
    let checked = audit::verify_with(
        &files,
        |shown| audit::open_chain_file(store, chain, shown),
        key.as_ref().ok().map(|k| k.as_slice()),
        None,
        head.as_ref(),
    );
    let report = match checked {
        Ok(report) => report,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    if let Start::Restarted {
        seq,
        reason,
        detail,
    } = &report.start
    {
        return Outcome::Failed(format!(
            "the chain restarts at seq {seq} ({reason}: {}): the writer found its log broken, \
             so what came before is not vouched for",
            detail.as_deref().unwrap_or("no detail")
        ));
    }
    match key {
        Ok(_) => Outcome::Intact(report),
        Err(why) => Outcome::Unverified(report, why),
    }
}

/// Hosts whose key is in `dir` but whose chain the store lacks: deleted chains.
fn missing_chains(dir: &Path, chains: &[Chain]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| name.strip_suffix(".key").map(str::to_string))
        .filter(|host| audit::validate_host_id(host).is_ok())
        .filter(|host| !chains.iter().any(|c| c.host.as_deref() == Some(host)))
        .collect();
    out.sort();
    out
}

fn verify(args: &AuditArgs, store: &Store, chains: &[Chain]) -> CliResult {
    let dir = keys_dir(args, store)?;
    let mut results: Vec<(String, Outcome)> = chains
        .iter()
        .map(|c| (c.label().to_string(), check(args, store, dir.as_deref(), c)))
        .collect();
    if let Some(dir) = &dir {
        for host in missing_chains(dir, chains) {
            let why = format!(
                "{}/{host}.key is here, but the store holds no chain for host {host}: its chain \
                 was deleted (or {host} never wrote one under this key)",
                dir.display()
            );
            results.push((host, Outcome::Failed(why)));
        }
    }
    let failed = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
        .count();
    let unverified = results
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Unverified(..)))
        .count();
    if args.json {
        let list: Vec<Value> = results
            .iter()
            .map(|(host, o)| outcome_json(host, o))
            .collect();
        println!(
            "{}",
            json!({"intact": failed == 0 && unverified == 0 && !results.is_empty(),
                   "keys": dir, "chains": list})
        );
    } else {
        for (host, outcome) in &results {
            print_outcome(host, outcome);
        }
    }
    let _ = std::io::stdout().flush();
    if results.is_empty() {
        return Err(error(format!(
            "{}: no audit chains in this store (nothing was ever mounted or recorded)",
            store.root().display()
        )));
    }
    if failed > 0 {
        return Err(error(format!(
            "{failed} of {} chain(s) failed verification",
            results.len()
        )));
    }
    if unverified > 0 {
        eprintln!(
            "tvault: {unverified} chain(s) NOT authenticated: their keys were not found (see above)"
        );
        std::process::exit(EXIT_UNAUTHENTICATED);
    }
    Ok(())
}

fn outcome_json(host: &str, outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Intact(r) => json!({"host": host, "status": "ok", "report": r}),
        Outcome::Unverified(r, why) => {
            json!({"host": host, "status": "unverified", "why": why, "report": r})
        }
        Outcome::Failed(why) => json!({"host": host, "status": "failed", "why": why}),
    }
}

fn print_outcome(host: &str, outcome: &Outcome) {
    let host = printable(host);
    match outcome {
        Outcome::Intact(r) => println!(
            "{host}: ok: {} entries ({} events) in {} file(s), seq {}..{}, every entry \
             authenticated{}",
            r.entries,
            r.events,
            r.files,
            r.first_seq.unwrap_or(0),
            r.last_seq.unwrap_or(0),
            match r.head {
                audit::HeadCheck::Matched { .. } => ", reaches the host's head record",
                _ => "",
            }
        ),
        Outcome::Unverified(r, why) => println!(
            "{host}: NOT VERIFIED: hash chain of {} entries intact, but MACs unchecked: {why}",
            r.entries
        ),
        Outcome::Failed(why) => println!("{host}: FAILED: {}", printable(why)),
    }
}
