//! Commands that work on a store directly (no mount): init, user, inspect, grant, revoke
//! (`put` and `get` are in `put_cmds`, `chown` in `own_cmds`), and what they share.

use std::fs::File;
use std::io;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{own_cmds, passphrase, CliResult, KdfArgs, PassphraseArgs};
use crate::audit::{self, Event, EventKind};
use crate::container::{self, Container, Reader};
use crate::control::{self, Request};
use crate::crypto::{KdfParams, PrivateKey};
use crate::keyring::{self, Keyring};
use crate::safetensors::{self, Header};
use crate::store::{self, Store, StoreError};

pub(super) fn error(msg: impl Into<String>) -> Box<dyn std::error::Error> {
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

pub(super) fn unlock(
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

/// A bar of `total` bytes (drawn only on a terminal).
pub(super) fn progress_bar(total: u64) -> ProgressBar {
    styled_bar(
        total,
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
}

/// A bar of `total` entries (drawn only on a terminal).
pub(super) fn count_bar(total: u64) -> ProgressBar {
    styled_bar(total, "{msg} [{bar:30}] {pos}/{len} eta {eta}")
}

fn styled_bar(total: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(template) {
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

/// Reads and validates the safetensors header of a plaintext file.
pub(super) fn validate_safetensors_file(path: &Path) -> Result<Header, Box<dyn std::error::Error>> {
    let describe = |e: &dyn std::fmt::Display| error(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(|e| describe(&e))?;
    let file_len = file.metadata().map_err(|e| describe(&e))?.len();
    safetensors::read_header(file_len, |offset, buf| {
        std::os::unix::fs::FileExt::read_exact_at(&file, buf, offset)
    })
    .map_err(|e| describe(&e))
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
    let Some(rel) = rel else {
        super::container_file::refuse_container(path)?;
        let header = validate_safetensors_file(path)?;
        return print_header(&path.display().to_string(), &header, None, as_json);
    };
    let store = Store::open(path)?;
    let summary = container_summary(&store, rel, &store.open_container(rel)?);
    // Without a user, what needs no key: the container, its owner and its readers.
    let Some(user) = user else {
        if as_json {
            println!("{}", serde_json::to_string_pretty(&summary.1)?);
        } else {
            println!("{}", summary.0);
        }
        return Ok(());
    };
    let private = unlock(&store, user, pass)?;
    let reader = store.reader(rel, user, &private)?;
    let header = header_from_reader(&reader).map_err(|e| error(format!("{rel}: {e}")))?;
    print_header(rel, &header, Some(summary), as_json)
}

/// What `inspect STORE REL` shows without a key, as text and as JSON: version, size, owner,
/// group, mode and the users holding key slots.
fn container_summary(
    store: &Store,
    rel: &str,
    c: &Container<store::Blob>,
) -> (String, serde_json::Value) {
    let h = c.header();
    let readers: Vec<&str> = c.slots().iter().map(|s| s.label.as_str()).collect();
    let legacy = if h.version == container::VERSION_1 {
        " (version 1 has no ownership record: the first reader owns it, mode 0644)"
    } else {
        ""
    };
    let text = format!(
        "{rel}: tensorvault container version {}, {} plaintext bytes in {} chunk(s) of {}\n  \
         {}{legacy}\n  readers: {}",
        h.version,
        h.plaintext_len,
        h.chunk_count(),
        h.chunk_size(),
        own_cmds::describe(store, false, c.ownership()),
        readers.join(", ")
    );
    let mut doc = json!({
        "path": rel,
        "version": h.version,
        "plaintext_len": h.plaintext_len,
        "chunk_size": h.chunk_size(),
        "readers": readers,
    });
    if let (Some(doc), serde_json::Value::Object(own)) =
        (doc.as_object_mut(), own_cmds::to_json(store, c.ownership()))
    {
        doc.extend(own);
    }
    (text, doc)
}

fn print_header(
    label: &str,
    header: &Header,
    container: Option<(String, serde_json::Value)>,
    as_json: bool,
) -> CliResult {
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
        let mut doc = json!({
            "path": label,
            "header_len": header.header_len,
            "tensor_count": header.tensors.len(),
            "data_bytes": header.data_len(),
            "metadata": header.metadata,
            "tensors": tensors,
        });
        if let (Some(doc), Some((_, summary))) = (doc.as_object_mut(), container) {
            doc.insert("container".into(), summary);
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    if let Some((text, _)) = container {
        println!("{text}");
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

/// Records a grant, revoke or chown in this host's audit chain of the store: through this
/// host's running mount of it if there is one (it holds the chain), else directly (and, for
/// a store that is not a local directory, mirrored into it at once). The host is
/// `$TVAULT_HOST_ID`, else the host name, as for `mount`. Failing to record is a warning, not
/// an error: the change is already made.
pub(super) fn audit_store_change(
    store: &Store,
    kind: EventKind,
    rel: &str,
    target: &str,
    user: Option<&str>,
    detail: Option<&str>,
) {
    let recorded = audit::default_host_id()
        .map_err(|e| e.to_string())
        .and_then(|host| {
            let event = change_event(kind, rel, target, user, detail);
            if let Some(mnt) = crate::daemon::find_daemon(store, &host) {
                let note = Request::AuditNote {
                    event: kind.as_str().to_string(),
                    path: rel.to_string(),
                    target: target.to_string(),
                    user: user.map(str::to_string),
                    detail: detail.map(str::to_string),
                };
                match control::call(&mnt, &note, std::time::Duration::from_secs(10)) {
                    Ok(_) => return Ok(()),
                    Err(e) => log::info!("audit through the daemon at {}: {e}", mnt.display()),
                }
            }
            record_directly(store, &host, &event).map_err(|e| e.to_string())
        });
    if let Err(e) = recorded {
        eprintln!(
            "tvault: warning: {} of {rel} not recorded in the audit log: {e}",
            kind.as_str()
        );
    }
}

fn change_event(
    kind: EventKind,
    rel: &str,
    target: &str,
    user: Option<&str>,
    detail: Option<&str>,
) -> Event {
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
    event
}

fn record_directly(store: &Store, host: &str, event: &Event) -> Result<(), audit::AuditError> {
    let opened = audit::open_host_log(store, host, None, None)?;
    opened.log.record(event)?;
    opened.log.close()?;
    if let Some(mirror) = opened.mirror {
        mirror.sync(store)?;
    }
    Ok(())
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
