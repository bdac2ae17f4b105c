//! `put` and `get`: plaintext files into and out of a store, with their owner, group and
//! mode.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::own_cmds::parse_owner;
use super::store_cmds::{error, progress_bar, unlock, validate_safetensors_file};
use super::{CliResult, PassphraseArgs};
use crate::container::{self, Ownership, Reader};
use crate::fsutil::write_atomic;
use crate::keyring::Keyring;
use crate::store::{self, PutOptions, Store, StoreError};

/// The mode of a directory `put` makes that has no source directory (a prefix of `--as`).
const NEW_DIR_MODE: u32 = 0o755;
/// Mode bits `get` never restores: the record is not authenticated (docs/SECURITY.md), and a
/// store writer must not be able to make a decrypted program setuid.
const SET_ID_BITS: u32 = 0o6000;

/// Mode bits and group of a source file or directory.
#[derive(Clone, Copy)]
struct SourceMode {
    mode: u32,
    gid: u32,
}

impl SourceMode {
    fn of(meta: &Metadata) -> SourceMode {
        SourceMode {
            mode: meta.mode() & u32::from(container::MODE_BITS),
            gid: meta.gid(),
        }
    }
}

/// One file to put: where it comes from, where it goes, how big it is, its mode and group.
struct PutItem {
    source: PathBuf,
    rel: String,
    len: u64,
    mode: SourceMode,
}

/// What `put` writes: the files, and the store directory each source directory maps to.
#[derive(Default)]
struct Sources {
    items: Vec<PutItem>,
    dirs: BTreeMap<String, SourceMode>,
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
/// directories are not, so a link cycle cannot loop), and the directories on the way.
fn walk_sources(dir: &Path, prefix: &str, out: &mut Sources) -> CliResult {
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
        match fs::metadata(&path) {
            Ok(meta) if kind.is_dir() => {
                out.dirs.insert(rel.clone(), SourceMode::of(&meta));
                walk_sources(&path, &rel, out)?;
            }
            Ok(meta) if meta.is_file() => out.items.push(PutItem {
                source: path,
                rel,
                len: meta.len(),
                mode: SourceMode::of(&meta),
            }),
            Ok(_) => log::warn!("skipping {} (not a regular file)", path.display()),
            Err(e) => return Err(error(format!("{}: {e}", path.display()))),
        }
    }
    Ok(())
}

fn collect_sources(
    sources: &[PathBuf],
    as_rel: Option<&str>,
) -> Result<Sources, Box<dyn std::error::Error>> {
    if as_rel.is_some() && sources.len() > 1 {
        return Err(error(
            "--as names one destination: give a single source with it",
        ));
    }
    let mut out = Sources::default();
    for source in sources {
        let meta = fs::metadata(source).map_err(|e| error(format!("{}: {e}", source.display())))?;
        let dest = match as_rel {
            Some(rel) => rel.trim_end_matches('/').to_string(),
            None => base_name(source)?,
        };
        if meta.is_dir() {
            out.dirs.insert(dest.clone(), SourceMode::of(&meta));
            walk_sources(source, &dest, &mut out)?;
        } else if meta.is_file() {
            out.items.push(PutItem {
                source: source.clone(),
                rel: dest,
                len: meta.len(),
                mode: SourceMode::of(&meta),
            });
        } else {
            return Err(error(format!(
                "{}: not a regular file or directory",
                source.display()
            )));
        }
    }
    let mut seen = BTreeSet::new();
    for item in &out.items {
        store::validate_rel(&item.rel)?;
        if !seen.insert(item.rel.as_str()) {
            return Err(error(format!(
                "two sources map to the same store path {:?}",
                item.rel
            )));
        }
    }
    Ok(out)
}

fn is_safetensors(rel: &str) -> bool {
    rel.ends_with(".safetensors")
}

pub fn put(
    path: &Path,
    sources: &[PathBuf],
    to: &[String],
    owner: Option<&str>,
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
    // The first --to by default: whoever the files are put for.
    let owner = match owner {
        Some(name) => parse_owner(&store, name)?,
        None => recipients.first().map(|k| k.name.clone()),
    };
    let chunk_log2 = match chunk_size {
        Some(size) => container::chunk_log2_from_size(size)?,
        None => store.default_chunk_log2(),
    };
    let Sources { items, dirs } = collect_sources(sources, as_rel)?;
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
    // Directories made here get the owner, and their source directory's mode and group.
    let mut dir_ownership = |rel: &str| {
        let mode = dirs.get(rel).copied().unwrap_or(SourceMode {
            mode: NEW_DIR_MODE,
            gid: 0,
        });
        Ownership::new(owner.clone(), mode.gid, mode.mode)
    };
    let total: u64 = items.iter().map(|i| i.len).sum();
    let bar = progress_bar(total);
    let mut done_before = 0u64;
    for item in &items {
        bar.set_message(item.rel.clone());
        if let Some((parent, _)) = item.rel.rsplit_once('/') {
            store.mkdir_all(parent, &mut dir_ownership)?;
        }
        let ownership = Ownership::new(owner.clone(), item.mode.gid, item.mode.mode);
        let options = PutOptions {
            chunk_log2,
            replace: force,
            ownership: &ownership,
        };
        store.put(&item.rel, &item.source, &recipients, &options, &mut |n| {
            bar.set_position(done_before + n)
        })?;
        done_before += item.len;
        log::info!("stored {} ({} bytes)", item.rel, item.len);
    }
    bar.finish_and_clear();
    let names: Vec<_> = recipients.iter().map(|k| k.name.as_str()).collect();
    println!(
        "stored {} file(s), {} bytes, for {}, owned by {}",
        items.len(),
        total,
        names.join(", "),
        owner.as_deref().unwrap_or("root")
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

/// Gives the file `get` wrote the stored mode bits (never setuid or setgid) and, when run as
/// root, the owner's registered uid and the stored group, before it is renamed into place.
/// An owner who is no longer a user of the store leaves the file root's, with a warning.
fn restore_ownership(store: &Store, rel: &str, file: &File, own: &Ownership) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let uid = match &own.owner {
            None => Some(0),
            Some(name) => match store.user(name) {
                Ok(k) => Some(k.uid),
                Err(e) => {
                    eprintln!("tvault: warning: {rel}: owner {name:?} is not kept ({e})");
                    None
                }
            },
        };
        std::os::unix::fs::fchown(file, uid, Some(own.gid))?;
    }
    let mode = u32::from(own.mode) & !SET_ID_BITS;
    file.set_permissions(fs::Permissions::from_mode(mode))
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
    // file over them would replace the device node. Their owner and mode are left alone.
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
                let mut out = BufWriter::with_capacity(1 << 20, &mut *file);
                copy_plaintext(&reader, &mut out, &bar)?;
                out.flush().map_err(describe)?;
                drop(out);
                restore_ownership(&store, rel, file, reader.ownership()).map_err(describe)
            },
            describe,
        )?;
    }
    bar.finish_and_clear();
    Ok(())
}
