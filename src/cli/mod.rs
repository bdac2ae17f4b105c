//! The `tvault` command line: argument definitions and dispatch. Commands are thin wrappers
//! over the library layers; all policy lives below.

mod audit_cmds;
mod audit_store;
mod container_file;
mod explain;
mod fsck_cmds;
mod mount_cmds;
mod own_cmds;
mod passphrase;
mod put_cmds;
mod resolve;
mod store_cmds;
mod why_cmd;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub type CliResult = Result<(), Box<dyn std::error::Error>>;

/// How every command reports an error: `tvault: error: ` and the error with its causes.
pub fn error_message(err: &dyn std::error::Error) -> String {
    let mut msg = format!("tvault: error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // thiserror's "{path}: {source}" messages already include the cause.
        if !msg.ends_with(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    msg
}

/// `text` as one shell word, quoted only when it must be, in commands shown for copying.
fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The files a store path means: the one file it names, or every file under the directory
/// it names (an error if there are none).
fn targets(
    store: &crate::store::Store,
    rel: &str,
) -> Result<Vec<String>, crate::store::StoreError> {
    let rel = rel.trim_end_matches('/');
    if store.exists(rel)? {
        return Ok(vec![rel.to_string()]);
    }
    let missing = || crate::store::StoreError::NoSuchFile(rel.to_string());
    if !store.is_dir(rel) {
        return Err(missing());
    }
    let files: Vec<_> = store.files_under(rel)?.into_iter().map(|f| f.rel).collect();
    if files.is_empty() {
        return Err(missing());
    }
    Ok(files)
}

#[derive(Parser)]
#[command(
    name = "tvault",
    version,
    about = "Encrypted-at-rest store for model weights, mounted with FUSE for per-user access",
    long_about = "tensorvault keeps .safetensors models and their companion files encrypted in a \
                  store directory. Each file is readable only by the users holding a key slot for it.\n\n\
                  Log output is controlled by RUST_LOG (e.g. RUST_LOG=debug)."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Whether this command runs a mount's daemon, which must outlive clients that hang up
    /// (a closed socket is an error to handle, never a signal that ends it).
    pub fn runs_a_daemon(&self) -> bool {
        matches!(self.command, Command::Mount { .. })
    }
}

#[derive(Args, Clone, Default)]
pub struct PassphraseArgs {
    /// Read the passphrase from the first line of this file instead of the terminal or stdin
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct KdfArgs {
    /// Argon2id memory in KiB (default 65536 = 64 MiB)
    #[arg(long, value_name = "KIB", default_value_t = crate::crypto::KdfParams::DEFAULT.m_kib)]
    kdf_memory: u32,
    /// Argon2id passes (default 3)
    #[arg(long, value_name = "N", default_value_t = crate::crypto::KdfParams::DEFAULT.t)]
    kdf_iterations: u32,
    /// Argon2id lanes (default 1)
    #[arg(long, value_name = "N", default_value_t = crate::crypto::KdfParams::DEFAULT.p)]
    kdf_parallelism: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new, empty store
    Init {
        store: PathBuf,
        /// Default plaintext chunk size for files put into the store (4K to 1M, power of two)
        #[arg(
            long,
            value_name = "SIZE",
            default_value_t = 1 << crate::container::DEFAULT_CHUNK_LOG2,
            value_parser = parse_size
        )]
        chunk_size: u64,
    },
    /// Manage users (keyrings)
    #[command(subcommand)]
    User(UserCommand),
    /// Encrypt files or whole directories into the store (no passphrase needed)
    Put {
        store: PathBuf,
        /// Files or directories to store
        #[arg(required = true)]
        sources: Vec<PathBuf>,
        /// Recipients: user names, comma-separated or repeated
        #[arg(
            long,
            required = true,
            value_delimiter = ',',
            value_name = "USER[,USER...]"
        )]
        to: Vec<String>,
        /// Who owns the files (and the directories made for them): a user of the store, or
        /// root; default: the first --to user. Mode bits and group are the source's
        #[arg(long, value_name = "NAME")]
        owner: Option<String>,
        /// Store path for a single file, or the prefix for a directory's files
        #[arg(long = "as", value_name = "REL")]
        as_rel: Option<String>,
        /// Plaintext chunk size (4K to 1M, power of two); default: the store's
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Replace files that already exist in the store
        #[arg(long)]
        force: bool,
    },
    /// Decrypt one file from the store (with its stored mode bits; as root, its owner too)
    Get {
        store: PathBuf,
        rel: String,
        /// Output path ("-" for stdout); written atomically
        #[arg(short, long, value_name = "OUT")]
        output: PathBuf,
        /// Whose keyring to unlock
        #[arg(long, value_name = "NAME")]
        user: String,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
    /// Show the tensor table of a .safetensors file: `inspect FILE` or `inspect STORE REL --user NAME`;
    /// `inspect STORE REL` shows a stored file's owner, mode and readers without a key
    Inspect {
        /// A plaintext .safetensors file (also one on a tvault mount), or a store
        path: PathBuf,
        /// Store path of an encrypted file (with STORE as the first argument)
        rel: Option<String>,
        /// Whose keyring to unlock (for an encrypted file)
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        #[command(flatten)]
        pass: PassphraseArgs,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Share a file (or every file under a directory) with another user
    Grant {
        store: PathBuf,
        rel: String,
        /// The user who gets access
        grantee: String,
        /// A user who can already read REL (their passphrase unwraps the data key)
        #[arg(long, value_name = "NAME")]
        user: String,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
    /// Remove a user's key slot from a file (or every file under a directory)
    Revoke {
        store: PathBuf,
        rel: String,
        /// The user who loses access
        revokee: String,
        /// Also re-encrypt under a new data key, so a key the user kept no longer decrypts it
        #[arg(long, requires = "user")]
        rekey: bool,
        /// With --rekey: a remaining reader whose passphrase unwraps the data key
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
    /// Give a file or directory (with -R, and everything in it) another owner, without keys
    Chown(own_cmds::ChownArgs),
    /// Set the mode of a file or directory (with -R, and of everything in it), without keys
    Chmod(own_cmds::ChmodArgs),
    /// Mount a store with FUSE (as a daemon unless --foreground)
    Mount {
        store: PathBuf,
        mountpoint: PathBuf,
        /// Stay in the foreground (for systemd and tests); SIGINT/SIGTERM unmount
        #[arg(long)]
        foreground: bool,
        /// Bytes of decrypted chunks kept in memory (e.g. 256M, 1G)
        #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
        cache_size: u64,
        /// Kernel readahead window of the mount, 4K to 16M: larger streams whole files
        /// faster, smaller makes first and scattered accesses through mmap decrypt less
        #[arg(long, value_name = "SIZE", default_value = "512K", value_parser = parse_readahead)]
        readahead: u64,
        /// How reads are served: `chunked` decrypts only the chunks each read touches;
        /// `eager` decrypts a file whole at open, on every core, into locked RAM that the
        /// kernel reads directly (FUSE passthrough); `auto` does that for a file once a
        /// reader on this mount has read half of it, so partial readers stay chunked
        #[arg(long, value_name = "PATH", value_enum, default_value = "auto")]
        data_path: DataPathArg,
        /// Locked RAM for whole-file copies; files over half of it are served chunked, and
        /// one user holds at most half (default: a quarter of the machine's memory)
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        eager_memory: Option<u64>,
        /// Refuse every write
        #[arg(long)]
        read_only: bool,
        /// Where the daemon's log goes once detached (default: discarded; RUST_LOG sets the level)
        #[arg(long, value_name = "FILE")]
        log_file: Option<PathBuf>,
        /// This host's name among the hosts that mount the store: it names the audit chain
        /// (STORE/.tvault/audit/HOST.jsonl) and the key (default: $TVAULT_HOST_ID, else the
        /// host name; letters, digits, '.', '_', '-', at most 64)
        #[arg(long, value_name = "NAME")]
        host_id: Option<String>,
        /// Audit log instead of this host's chain in the store
        #[arg(long, value_name = "FILE")]
        audit_log: Option<PathBuf>,
        /// Audit HMAC key: owned by the daemon's user, mode 0600, in a directory only it or
        /// root can write; created if missing (default: $TVAULT_STATE_DIR/audit-keys/
        /// STORE_ID/HOST.key, normally under /var/lib/tvault; with --audit-log,
        /// audit-keys/ID.key, ID from the log's path; never beside the log)
        #[arg(long, value_name = "FILE")]
        audit_key: Option<PathBuf>,
        /// Rotate the audit log when it would exceed this size; 5 rotated files are kept
        /// (default 64M, or a 16th of the free space if that is less); SIGHUP rotates too
        #[arg(long, value_name = "SIZE", value_parser = parse_audit_size)]
        audit_max_size: Option<u64>,
        /// For an s3:// store: a local directory caching its ciphertext (never plaintext),
        /// shared by every user of the mount and verified as it is read back
        #[arg(long, value_name = "DIR")]
        disk_cache: Option<PathBuf>,
        /// Bound of the disk cache (e.g. 10G)
        #[arg(long, value_name = "SIZE", value_parser = parse_size, requires = "disk_cache")]
        disk_cache_size: Option<u64>,
        /// For an s3:// store: the longest one request may take, retries included, before
        /// the read or write fails (EIO); default TVAULT_S3_TIMEOUT, else 30
        #[arg(long, value_name = "SECS", value_parser = crate::store::s3::parse_timeout)]
        s3_timeout: Option<std::time::Duration>,
        #[arg(long, hide = true)]
        daemon_child: bool,
    },
    /// Unlock the calling user's keyring on a running mount
    Unlock {
        /// The mountpoint, any path on the mount, or a path in the store it serves
        path: PathBuf,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
    /// Forget the calling user's keys on a running mount
    Lock {
        /// The mountpoint, any path on the mount, or a path in the store it serves
        path: PathBuf,
        /// Lock even with files open: their cached pages are dropped and further reads fail
        #[arg(long)]
        force: bool,
    },
    /// Show unlocked users, open files, cache counters and the caller's recent denials
    Status {
        /// The mountpoint, any path on the mount, or a path in the store it serves
        path: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Whether you can read and write a path on a mount and, if not, why and what to do
    /// (exit status 0 when you can read it)
    Why {
        /// Any path on a mount (or the mountpoint)
        path: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Unmount a tvault mount
    Umount {
        /// The mountpoint, any path on the mount, or a path in the store it serves
        path: PathBuf,
    },
    /// Show, filter or verify an audit log (a table by default)
    Audit(audit_cmds::AuditArgs),
    /// Show which users hold key slots for which files (no passphrase needed)
    Access(audit_cmds::AccessArgs),
    /// Check a store for damage: structure without a key, every chunk with --user
    Fsck(fsck_cmds::FsckArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a keyring for a new user (asks the user's passphrase)
    Add {
        store: PathBuf,
        name: String,
        /// The Unix uid whose processes this keyring unlocks for on a mount
        #[arg(long)]
        uid: u32,
        #[command(flatten)]
        kdf: KdfArgs,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
    /// List users: name, uid, public key fingerprint
    List {
        store: PathBuf,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Change a user's passphrase (re-seals the private key; no file is re-encrypted)
    Passwd {
        store: PathBuf,
        name: String,
        /// Read the new passphrase from this file
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        kdf: KdfArgs,
        #[command(flatten)]
        pass: PassphraseArgs,
    },
    /// Print a user's public key (one line)
    Export { store: PathBuf, name: String },
    /// Add a recipient whose private key lives elsewhere
    Import {
        store: PathBuf,
        name: String,
        #[arg(long)]
        uid: u32,
        /// The line printed by `tvault user export`
        #[arg(long, value_name = "KEY")]
        public_key: String,
    },
}

/// Parses sizes such as 65536, 64K, 64KiB, 1M, 256M, 2G.
/// `--data-path` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DataPathArg {
    Auto,
    Chunked,
    Eager,
}

impl From<DataPathArg> for crate::fs::DataPath {
    fn from(a: DataPathArg) -> Self {
        match a {
            DataPathArg::Auto => crate::fs::DataPath::Auto,
            DataPathArg::Chunked => crate::fs::DataPath::Chunked,
            DataPathArg::Eager => crate::fs::DataPath::Eager,
        }
    }
}

/// A quarter of the machine's memory (1 GiB if it cannot be read).
fn default_eager_memory() -> u64 {
    match crate::ramfile::physical_memory() {
        0 => 1 << 30,
        ram => ram / 4,
    }
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 65536, 64K, 256M"))?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("invalid size unit in {text:?}: use K, M or G")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// An audit log file size bound: at least 64 KiB, so that any line fits.
fn parse_audit_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < crate::audit::MIN_DEFAULT_MAX_SIZE {
        return Err(format!(
            "audit log size {text:?}: use at least 64K (the longest line must fit)"
        ));
    }
    Ok(bytes)
}

/// A readahead window: a size from 4 KiB to 16 MiB in whole 4 KiB pages.
fn parse_readahead(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if !(4 << 10..=16 << 20).contains(&bytes) || bytes % 4096 != 0 {
        return Err(format!(
            "readahead {text:?}: use a multiple of 4K from 4K to 16M"
        ));
    }
    Ok(bytes)
}

pub fn run(cli: Cli) -> CliResult {
    use store_cmds as s;
    match cli.command {
        Command::Init { store, chunk_size } => s::init(&store, chunk_size),
        Command::User(cmd) => match cmd {
            UserCommand::Add {
                store,
                name,
                uid,
                kdf,
                pass,
            } => s::user_add(&store, &name, uid, &kdf, &pass),
            UserCommand::List { store, json } => s::user_list(&store, json),
            UserCommand::Passwd {
                store,
                name,
                new_passphrase_file,
                kdf,
                pass,
            } => s::user_passwd(&store, &name, new_passphrase_file.as_deref(), &kdf, &pass),
            UserCommand::Export { store, name } => s::user_export(&store, &name),
            UserCommand::Import {
                store,
                name,
                uid,
                public_key,
            } => s::user_import(&store, &name, uid, &public_key),
        },
        Command::Put {
            store,
            sources,
            to,
            owner,
            as_rel,
            chunk_size,
            force,
        } => put_cmds::put(
            &store,
            &sources,
            &to,
            owner.as_deref(),
            as_rel.as_deref(),
            chunk_size,
            force,
        ),
        Command::Get {
            store,
            rel,
            output,
            user,
            pass,
        } => put_cmds::get(&store, &rel, &output, &user, &pass),
        Command::Inspect {
            path,
            rel,
            user,
            pass,
            json,
        } => s::inspect(&path, rel.as_deref(), user.as_deref(), &pass, json),
        Command::Grant {
            store,
            rel,
            grantee,
            user,
            pass,
        } => s::grant(&store, &rel, &grantee, &user, &pass),
        Command::Revoke {
            store,
            rel,
            revokee,
            rekey,
            user,
            pass,
        } => s::revoke(&store, &rel, &revokee, rekey, user.as_deref(), &pass),
        Command::Chown(args) => own_cmds::chown(&args),
        Command::Chmod(args) => own_cmds::chmod(&args),
        Command::Mount {
            store,
            mountpoint,
            foreground,
            cache_size,
            readahead,
            data_path,
            eager_memory,
            read_only,
            log_file,
            host_id,
            audit_log,
            audit_key,
            audit_max_size,
            disk_cache,
            disk_cache_size,
            s3_timeout,
            daemon_child,
        } => mount_cmds::mount(&mount_cmds::MountArgs {
            store,
            mountpoint,
            foreground,
            cache_size,
            readahead,
            data_path: data_path.into(),
            eager_memory: eager_memory.unwrap_or_else(default_eager_memory),
            read_only,
            log_file,
            host_id,
            audit_log,
            audit_key,
            audit_max_size,
            store_options: crate::store::StoreOptions {
                s3_timeout,
                disk_cache,
                disk_cache_bytes: disk_cache_size.unwrap_or(0),
            },
            daemon_child,
        }),
        Command::Unlock { path, pass } => mount_cmds::unlock(&path, &pass),
        Command::Lock { path, force } => mount_cmds::lock(&path, force),
        Command::Status { path, json } => mount_cmds::status(&path, json),
        Command::Why { path, json } => why_cmd::why(&path, json),
        Command::Umount { path } => mount_cmds::umount(&path),
        Command::Audit(args) => audit_cmds::audit(&args),
        Command::Access(args) => audit_cmds::access(&args),
        Command::Fsck(args) => fsck_cmds::fsck(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn error_messages_carry_causes_once() {
        #[derive(Debug, thiserror::Error)]
        enum Outer {
            #[error("{path}: {source}")]
            Embeds {
                path: String,
                source: std::io::Error,
            },
            #[error("cannot open")]
            Wraps(#[source] std::io::Error),
        }
        let denied = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let embeds = Outer::Embeds {
            path: "/x".into(),
            source: denied(),
        };
        assert_eq!(
            error_message(&embeds),
            format!("tvault: error: /x: {}", denied())
        );
        assert_eq!(
            error_message(&Outer::Wraps(denied())),
            format!("tvault: error: cannot open: {}", denied())
        );
    }

    #[test]
    fn shell_words_are_quoted_when_needed() {
        assert_eq!(shell_word("/mnt/models"), "/mnt/models");
        assert_eq!(shell_word("/mnt/my models"), "'/mnt/my models'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
