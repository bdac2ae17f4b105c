//! Commands that work on a store directly (no mount): init, user, put, get, inspect, grant,
//! revoke.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{passphrase, CliResult, KdfArgs, PassphraseArgs};
use crate::audit::{self, AuditLog, Event, EventKind};
use crate::container::{self, Reader};
use crate::control::{self, Request};
use crate::crypto::{KdfParams, PrivateKey};
use crate::fsutil::write_atomic;
use crate::keyring::{self, Keyring};
use crate::safetensors::{self, Header};
use crate::store::{self, Store, StoreError};

fn error(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    msg.into().into()
}

fn kdf_params(args: &KdfArgs) -> KdfParams {
    let params = KdfParams {
        m_kib: args.kdf_memory,
        t: args.kdf_iterations,
        p: args.kdf_parallelism,
    };
    let d = KdfParams::DEFAULT;
    if params.m_kib < d.m_kib || params.t < d.t {
        log::warn!(
            "Argon2id parameters m={} KiB t={} are weaker than the default m={} KiB t={}",
            params.m_kib,
            params.t,
            d.m_kib,
            d.t
        );
    }
    params
}

fn unlock(
    store: &Store,
    name: &str,
    pass: &PassphraseArgs,
) -> Result<PrivateKey, Box<dyn std::error::Error>> {
    let keyring = store.user(name)?;
    if !keyring.has_private_key() {
        return Err(keyring::KeyringError::NoPrivateKey(name.to_string()).into());
    }
    let phrase = passphrase::read(
        &format!("Passphrase for {name}"),
        pass.passphrase_file.as_deref(),
        false,
    )?;
    Ok(keyring.unlock(&phrase)?)
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub fn init(path: &Path, chunk_size: u64) -> CliResult {
    let log2 = container::chunk_log2_from_size(chunk_size)?;
    Store::init(path, log2)?;
    println!("initialized tensorvault store at {}", path.display());
    Ok(())
}

pub fn user_add(
    path: &Path,
    name: &str,
    uid: u32,
    kdf: &KdfArgs,
    pass: &PassphraseArgs,
) -> CliResult {
    let store = Store::open(path)?;
    keyring::validate_name(name)?;
    if store.users()?.iter().any(|k| k.name == name) {
        return Err(StoreError::UserExists(name.to_string()).into());
    }
    let params = kdf_params(kdf);
    params.validate()?;
    params.check_cap()?;
    let phrase = passphrase::read(
        &format!("New passphrase for {name}"),
        pass.passphrase_file.as_deref(),
        true,
    )?;
    let (keyring, _) = Keyring::create(name, uid, &phrase, params)?;
    store.add_user(&keyring)?;
    println!(
        "added user {name} (uid {uid}), key fingerprint {}",
        keyring.public_key.fingerprint()
    );
    Ok(())
}

pub fn user_list(path: &Path, as_json: bool) -> CliResult {
    let store = Store::open(path)?;
    let users = store.users()?;
    if as_json {
        let list: Vec<_> = users
            .iter()
            .map(|k| {
                json!({
                    "name": k.name,
                    "uid": k.uid,
                    "fingerprint": k.public_key.fingerprint(),
                    "public_key": keyring::format_public_key(&k.public_key),
                    "has_private_key": k.has_private_key(),
                    "kdf": k.kdf_params().map(|p| json!({"algorithm": "argon2id", "m_kib": p.m_kib, "t": p.t, "p": p.p})),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("{:<20} {:>8}  {:<39}  KEY", "NAME", "UID", "FINGERPRINT");
    for k in users {
        let kind = if k.has_private_key() {
            "sealed"
        } else {
            "public only"
        };
        println!(
            "{:<20} {:>8}  {:<39}  {kind}",
            k.name,
            k.uid,
            k.public_key.fingerprint()
        );
    }
    Ok(())
}

pub fn user_passwd(
    path: &Path,
    name: &str,
    new_file: Option<&Path>,
    kdf: &KdfArgs,
    pass: &PassphraseArgs,
) -> CliResult {
    let store = Store::open(path)?;
    let mut keyring = store.user(name)?;
    // Refused before any passphrase is asked for.
    let params = kdf_params(kdf);
    params.validate()?;
    params.check_cap()?;
    let private = unlock(&store, name, pass)?;
    let phrase = passphrase::read(&format!("New passphrase for {name}"), new_file, true)?;
    keyring.reseal(&private, &phrase, params)?;
    store.save_user(&keyring)?;
    println!("changed the passphrase of {name}; no file was re-encrypted");
    Ok(())
}

pub fn user_export(path: &Path, name: &str) -> CliResult {
    let store = Store::open(path)?;
    println!(
        "{}",
        keyring::format_public_key(&store.user(name)?.public_key)
    );
    Ok(())
}

pub fn user_import(path: &Path, name: &str, uid: u32, public_key: &str) -> CliResult {
    let store = Store::open(path)?;
    let keyring = Keyring::import(name, uid, keyring::parse_public_key(public_key)?)?;
    store.add_user(&keyring)?;
    println!(
        "imported user {name} (uid {uid}), key fingerprint {}",
        keyring.public_key.fingerprint()
    );
    Ok(())
}

/// One file to put: where it comes from, where it goes, how big it is.
struct PutItem {
    source: PathBuf,
    rel: String,
    len: u64,
}

fn base_name(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let canonical =
        fs::canonicalize(path).map_err(|e| error(format!("{}: {e}", path.display())))?;
    canonical
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| error(format!("{}: has no usable file name", path.display())))
}

/// Lists regular files under `dir` recursively (symlinks to files are followed, symlinks to
/// directories are not, so a link cycle cannot loop).
fn walk_sources(dir: &Path, prefix: &str, out: &mut Vec<PutItem>) -> CliResult {
    let mut entries = fs::read_dir(dir)
        .map_err(|e| error(format!("{}: {e}", dir.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(format!("{}: {e}", dir.display())))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| error(format!("{}: file name is not UTF-8", path.display())))?;
        let rel = format!("{prefix}/{name}");
        let kind = entry
            .file_type()
            .map_err(|e| error(format!("{}: {e}", path.display())))?;
        if kind.is_dir() {
            walk_sources(&path, &rel, out)?;
            continue;
        }
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => out.push(PutItem {
                source: path,
                rel,
                len: meta.len(),
            }),
            Ok(_) => log::warn!("skipping {} (not a regular file)", path.display()),
            Err(e) => return Err(error(format!("{}: {e}", path.display()))),
        }
    }
    Ok(())
}

fn collect_put_items(
    sources: &[PathBuf],
    as_rel: Option<&str>,
) -> Result<Vec<PutItem>, Box<dyn std::error::Error>> {
    if as_rel.is_some() && sources.len() > 1 {
        return Err(error(
            "--as names one destination: give a single source with it",
        ));
    }
    let mut items = Vec::new();
    for source in sources {
        let meta = fs::metadata(source).map_err(|e| error(format!("{}: {e}", source.display())))?;
        let dest = match as_rel {
            Some(rel) => rel.trim_end_matches('/').to_string(),
            None => base_name(source)?,
        };
        if meta.is_dir() {
            walk_sources(source, &dest, &mut items)?;
        } else if meta.is_file() {
            items.push(PutItem {
                source: source.clone(),
                rel: dest,
                len: meta.len(),
            });
        } else {
            return Err(error(format!(
                "{}: not a regular file or directory",
                source.display()
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for item in &items {
        store::validate_rel(&item.rel)?;
        if !seen.insert(item.rel.as_str()) {
            return Err(error(format!(
                "two sources map to the same store path {:?}",
                item.rel
            )));
        }
    }
    Ok(items)
}

/// Reads and validates the safetensors header of a plaintext file.
fn validate_safetensors_file(path: &Path) -> Result<Header, Box<dyn std::error::Error>> {
    let describe = |e: &dyn std::fmt::Display| error(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(|e| describe(&e))?;
    let file_len = file.metadata().map_err(|e| describe(&e))?.len();
    safetensors::read_header(file_len, |offset, buf| {
        std::os::unix::fs::FileExt::read_exact_at(&file, buf, offset)
    })
    .map_err(|e| describe(&e))
}

fn is_safetensors(rel: &str) -> bool {
    rel.ends_with(".safetensors")
}

pub fn put(
    path: &Path,
    sources: &[PathBuf],
    to: &[String],
    as_rel: Option<&str>,
    chunk_size: Option<u64>,
    force: bool,
) -> CliResult {
    let store = Store::open(path)?;
    let mut recipients = Vec::new();
    for name in to {
        let keyring = store.user(name)?;
        if !recipients.iter().any(|k: &Keyring| k.name == keyring.name) {
            recipients.push(keyring);
        }
    }
    let chunk_log2 = match chunk_size {
        Some(size) => container::chunk_log2_from_size(size)?,
        None => store.default_chunk_log2(),
    };
    let items = collect_put_items(sources, as_rel)?;
    if items.is_empty() {
        return Err(error("nothing to put: the sources hold no files"));
    }
    // Everything is checked before anything is written: one bad file refuses the batch.
    for item in &items {
        if !force && store.taken(&item.rel)? {
            return Err(StoreError::FileExists(item.rel.clone()).into());
        }
        if is_safetensors(&item.rel) {
            validate_safetensors_file(&item.source)?;
        }
    }
    let total: u64 = items.iter().map(|i| i.len).sum();
    let bar = progress_bar(total);
    let mut done_before = 0u64;
    for item in &items {
        bar.set_message(item.rel.clone());
        store.put(
            &item.rel,
            &item.source,
            &recipients,
            chunk_log2,
            force,
            &mut |n| bar.set_position(done_before + n),
        )?;
        done_before += item.len;
        log::info!("stored {} ({} bytes)", item.rel, item.len);
    }
    bar.finish_and_clear();
    let names: Vec<_> = recipients.iter().map(|k| k.name.as_str()).collect();
    println!(
        "stored {} file(s), {} bytes, for {}",
        items.len(),
        total,
        names.join(", ")
    );
    Ok(())
}

fn copy_plaintext(
    reader: &Reader<store::Blob>,
    out: &mut dyn Write,
    bar: &ProgressBar,
) -> CliResult {
    let mut chunk = zeroize::Zeroizing::new(vec![0u8; reader.chunk_size() as usize]);
    for index in 0..reader.chunk_count() {
        let n = reader.read_chunk(index, &mut chunk)?;
        out.write_all(&chunk[..n])?;
        bar.inc(n as u64);
    }
    Ok(())
}

pub fn get(path: &Path, rel: &str, output: &Path, user: &str, pass: &PassphraseArgs) -> CliResult {
    let store = Store::open(path)?;
    // Check the file exists and the user holds a slot before asking for a passphrase.
    if store.open_container(rel)?.slot(user).is_none() {
        return Err(StoreError::NoAccess {
            rel: rel.to_string(),
            user: user.to_string(),
        }
        .into());
    }
    let private = unlock(&store, user, pass)?;
    let reader = store.reader(rel, user, &private)?;
    let bar = progress_bar(reader.len());
    bar.set_message(rel.to_string());
    // Devices and pipes (-o /dev/null, a FIFO) are written in place: renaming a temporary
    // file over them would replace the device node.
    let special = fs::metadata(output).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if output == Path::new("-") {
        let stdout = io::stdout();
        let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
        copy_plaintext(&reader, &mut out, &bar)?;
        out.flush()?;
    } else if special {
        let file = fs::OpenOptions::new()
            .write(true)
            .open(output)
            .map_err(|e| error(format!("{}: {e}", output.display())))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        copy_plaintext(&reader, &mut out, &bar)?;
        out.flush()?;
    } else {
        let describe = |e: io::Error| -> Box<dyn std::error::Error> {
            error(format!("{}: {e}", output.display()))
        };
        write_atomic(
            output,
            0o600,
            |file| {
                let mut out = BufWriter::with_capacity(1 << 20, file);
                copy_plaintext(&reader, &mut out, &bar)?;
                out.flush().map_err(describe)
            },
            describe,
        )?;
    }
    bar.finish_and_clear();
    Ok(())
}

/// Reads and validates the safetensors header of a stored file, decrypting only its chunks.
fn header_from_reader(
    reader: &Reader<store::Blob>,
) -> Result<Header, safetensors::ReadHeaderError<container::ContainerError>> {
    safetensors::read_header(reader.len(), |offset, buf| {
        // Short only past the end, which the header's length was checked against.
        match reader.read_at(offset, buf)? {
            n if n == buf.len() => Ok(()),
            _ => Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
        }
    })
}

pub fn inspect(
    path: &Path,
    rel: Option<&str>,
    user: Option<&str>,
    pass: &PassphraseArgs,
    as_json: bool,
) -> CliResult {
    let (label, header) = match rel {
        None => {
            super::container_file::refuse_container(path)?;
            (path.display().to_string(), validate_safetensors_file(path)?)
        }
        Some(rel) => {
            let store = Store::open(path)?;
            let user =
                user.ok_or_else(|| error("inspecting an encrypted file needs --user NAME"))?;
            let private = unlock(&store, user, pass)?;
            let reader = store.reader(rel, user, &private)?;
            let header = header_from_reader(&reader).map_err(|e| error(format!("{rel}: {e}")))?;
            (rel.to_string(), header)
        }
    };
    print_header(&label, &header, as_json)
}

fn print_header(label: &str, header: &Header, as_json: bool) -> CliResult {
    if as_json {
        let tensors: Vec<_> = header
            .tensors
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "dtype": t.dtype.name(),
                    "shape": t.shape,
                    "data_offsets": [t.begin, t.end],
                    "bytes": t.len(),
                })
            })
            .collect();
        let doc = json!({
            "path": label,
            "header_len": header.header_len,
            "tensor_count": header.tensors.len(),
            "data_bytes": header.data_len(),
            "metadata": header.metadata,
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{label}: {} tensors, {} data bytes, header {} bytes",
        header.tensors.len(),
        header.data_len(),
        header.header_len
    );
    for (k, v) in &header.metadata {
        println!("  metadata {k} = {v}");
    }
    let width = header
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "{:<width$}  {:<12} {:<24} {:>14}",
        "NAME", "DTYPE", "SHAPE", "BYTES"
    );
    for t in &header.tensors {
        let shape = format!("{:?}", t.shape);
        println!(
            "{:<width$}  {:<12} {:<24} {:>14}",
            t.name,
            t.dtype.name(),
            shape,
            t.len()
        );
    }
    Ok(())
}

/// Records a grant or revoke in the store's audit log: through the running mount's daemon if
/// one holds the log, else directly. Failing to record is a warning, not an error: the
/// change is already made.
fn audit_store_change(
    store: &Store,
    kind: EventKind,
    rel: &str,
    target: &str,
    user: Option<&str>,
    detail: Option<&str>,
) {
    let mountpoint = store
        .read_meta(crate::daemon::DAEMON_FILE, 64 << 10)
        .ok()
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|v| v["mountpoint"].as_str().map(PathBuf::from));
    if let Some(mnt) = mountpoint {
        let note = Request::AuditNote {
            event: kind.as_str().to_string(),
            path: rel.to_string(),
            target: target.to_string(),
            user: user.map(str::to_string),
            detail: detail.map(str::to_string),
        };
        match control::call(&mnt, &note, std::time::Duration::from_secs(10)) {
            Ok(_) => return,
            Err(e) => log::info!("audit through the daemon at {}: {e}", mnt.display()),
        }
    }
    let (log, key) = audit::default_paths(store.root(), None);
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let mut event = Event::from_pid(kind, std::process::id())
        .uid(uid)
        .path(rel)
        .target(target)
        .allow();
    if let Some(user) = user {
        event = event.user(user);
    }
    if let Some(detail) = detail {
        event = event.detail(detail);
    }
    // The store's own log, in `.tvault` opened through the store gate (no planted link is
    // followed).
    let recorded = match store.audit_dir() {
        Ok(dir) => AuditLog::open_in(dir, &log, &key, None)
            .and_then(|l| l.record(&event).and_then(|()| l.close()))
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = recorded {
        eprintln!(
            "tvault: warning: {} of {rel} not recorded in the audit log: {e}",
            kind.as_str()
        );
    }
}

pub fn grant(
    path: &Path,
    rel: &str,
    grantee: &str,
    user: &str,
    pass: &PassphraseArgs,
) -> CliResult {
    let store = Store::open(path)?;
    let grantee_keyring = store.user(grantee)?;
    let targets = super::targets(&store, rel)?;
    let private = unlock(&store, user, pass)?;
    for target in targets {
        if store.grant(&target, user, &private, &grantee_keyring)? {
            audit_store_change(&store, EventKind::Grant, &target, grantee, Some(user), None);
            println!("granted {grantee} access to {target}");
        } else {
            println!("{grantee} already has access to {target}");
        }
    }
    Ok(())
}

pub fn revoke(
    path: &Path,
    rel: &str,
    revokee: &str,
    rekey: bool,
    user: Option<&str>,
    pass: &PassphraseArgs,
) -> CliResult {
    let store = Store::open(path)?;
    let targets = super::targets(&store, rel)?;
    let private = match (rekey, user) {
        (true, Some(name)) => {
            if name == revokee {
                return Err(error(
                    "--user must be a remaining reader, not the revoked user",
                ));
            }
            Some((name, unlock(&store, name, pass)?))
        }
        (true, None) => return Err(error("--rekey needs --user NAME (a remaining reader)")),
        (false, _) => None,
    };
    for target in targets {
        store.revoke(&target, revokee, private.as_ref().map(|(n, k)| (*n, k)))?;
        let detail = rekey.then_some("rekey");
        audit_store_change(&store, EventKind::Revoke, &target, revokee, user, detail);
        if rekey {
            println!("revoked {revokee} from {target} and re-encrypted it under a new data key");
        } else {
            println!(
                "revoked {revokee} from {target} (data key unchanged; use --rekey if they may have kept it)"
            );
        }
    }
    Ok(())
}
