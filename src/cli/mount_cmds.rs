//! Commands that work on a mount: mount, unlock, lock, status, umount. All but `mount` take
//! any path on the mount (or in the store it serves), found by `resolve`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::explain::{explain, Context};
use super::resolve::resolve;
use super::{passphrase, CliResult, PassphraseArgs};
use crate::control::{self, ClientError, Request};
use crate::daemon::{self, MountOptions};
use crate::store::StoreOptions;

const UNLOCK_TIMEOUT: Duration = Duration::from_secs(120);
// Any passphrase a keyring accepts fits an unlock request, even escaped at six bytes per byte.
const _: () = assert!(
    6 * crate::keyring::MAX_PASSPHRASE_LEN + 64 <= control::MAX_REQUEST as usize,
    "MAX_PASSPHRASE_LEN does not fit the control request limit"
);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub struct MountArgs {
    pub store: PathBuf,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub cache_size: u64,
    pub readahead: u64,
    pub data_path: crate::fs::DataPath,
    pub eager_memory: u64,
    pub read_only: bool,
    pub log_file: Option<PathBuf>,
    pub host_id: Option<String>,
    pub audit_log: Option<PathBuf>,
    pub audit_key: Option<PathBuf>,
    pub audit_max_size: Option<u64>,
    pub store_options: StoreOptions,
    pub daemon_child: bool,
}

/// Points fd `target` at `path` (or /dev/null).
fn redirect(target: i32, path: Option<&Path>) -> std::io::Result<()> {
    let file = match path {
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?,
        None => std::fs::OpenOptions::new().write(true).open("/dev/null")?,
    };
    // SAFETY: both descriptors are open for the call (`file` lives until the end of this
    // function); dup2 makes `target` refer to the file, so whatever uses it still holds an
    // open descriptor.
    if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&file), target) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn mount(args: &MountArgs) -> CliResult {
    // Checked before anything starts, so that a bad id is a plain error.
    let host_id = match &args.host_id {
        Some(id) => {
            crate::audit::validate_host_id(id)?;
            id.clone()
        }
        None => crate::audit::default_host_id()?,
    };
    let opts = MountOptions {
        host_id: host_id.clone(),
        store: args.store.clone(),
        mountpoint: args.mountpoint.clone(),
        cache_bytes: args.cache_size,
        readahead_bytes: args.readahead,
        data_path: args.data_path,
        eager_bytes: args.eager_memory,
        read_only: args.read_only,
        audit_log: args.audit_log.clone(),
        audit_key: args.audit_key.clone(),
        audit_max_size: args.audit_max_size,
        store_options: args.store_options.clone(),
    };
    if args.foreground {
        let ready = || {
            eprintln!(
                "tvault: mounted {} at {} (pid {})",
                args.store.display(),
                args.mountpoint.display(),
                std::process::id()
            );
            if args.daemon_child {
                // Closing our end of the parent's pipe tells it we are up.
                if let Err(e) = redirect(2, args.log_file.as_deref()) {
                    log::warn!("cannot redirect log output: {e}");
                }
            }
        };
        daemon::run(&opts, ready)?;
        return Ok(());
    }
    spawn_daemon(args, &host_id)
}

/// Starts `tvault mount --foreground` detached (new session, no terminal) and waits until
/// it reports the mount up, or relays its error.
fn spawn_daemon(args: &MountArgs, host_id: &str) -> CliResult {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg(&args.store)
        .arg(&args.mountpoint)
        .args(["--foreground", "--daemon-child", "--cache-size"])
        .arg(args.cache_size.to_string())
        .arg("--readahead")
        .arg(args.readahead.to_string())
        .arg("--data-path")
        .arg(match args.data_path {
            crate::fs::DataPath::Auto => "auto",
            crate::fs::DataPath::Chunked => "chunked",
            crate::fs::DataPath::Eager => "eager",
        })
        .arg("--eager-memory")
        .arg(args.eager_memory.to_string());
    if args.read_only {
        cmd.arg("--read-only");
    }
    if let Some(log) = &args.log_file {
        cmd.arg("--log-file").arg(log);
    }
    cmd.arg("--host-id").arg(host_id);
    if let Some(log) = &args.audit_log {
        cmd.arg("--audit-log").arg(log);
    }
    if let Some(key) = &args.audit_key {
        cmd.arg("--audit-key").arg(key);
    }
    if let Some(max) = args.audit_max_size {
        cmd.arg("--audit-max-size").arg(max.to_string());
    }
    let remote = &args.store_options;
    if let Some(dir) = &remote.disk_cache {
        cmd.arg("--disk-cache").arg(dir);
        if remote.disk_cache_bytes > 0 {
            cmd.arg("--disk-cache-size")
                .arg(remote.disk_cache_bytes.to_string());
        }
    }
    if let Some(t) = remote.s3_timeout {
        cmd.arg("--s3-timeout").arg(t.as_secs().to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: setsid is async-signal-safe and touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let mut said = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut said)?;
    }
    match child.try_wait()? {
        Some(status) if !status.success() => {
            eprint!("{said}");
            Err("the mount daemon failed to start".into())
        }
        _ if said.contains("tvault: mounted") => {
            print!("{said}");
            Ok(())
        }
        _ => {
            eprint!("{said}");
            Err("the mount daemon exited without mounting".into())
        }
    }
}

pub fn unlock(path: &Path, pass: &PassphraseArgs) -> CliResult {
    // Before the passphrase is asked: a path on no mount needs none.
    let mountpoint = resolve(path)?.mountpoint;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let phrase = passphrase::read(
        &format!("Passphrase for uid {uid}"),
        pass.passphrase_file.as_deref(),
        false,
    )?;
    // Checked in place: a failed `String::from_utf8` would drop an unwiped copy.
    let text = std::str::from_utf8(&phrase).map_err(|_| "the passphrase is not UTF-8")?;
    // `Request` wipes the passphrase when dropped.
    let request = Request::Unlock {
        passphrase: text.to_owned(),
    };
    let reply = control::call(&mountpoint, &request, UNLOCK_TIMEOUT)?;
    println!(
        "unlocked {} (uid {uid}) on {}",
        reply["user"].as_str().unwrap_or("?"),
        mountpoint.display()
    );
    Ok(())
}

pub fn lock(path: &Path, force: bool) -> CliResult {
    let mountpoint = resolve(path)?.mountpoint;
    let reply = control::call(&mountpoint, &Request::Lock { force }, REQUEST_TIMEOUT)?;
    let invalidated = reply["invalidated"].as_u64().unwrap_or(0);
    print!(
        "locked {} on {}",
        reply["user"].as_str().unwrap_or("?"),
        mountpoint.display()
    );
    if invalidated > 0 {
        print!("; {invalidated} open file(s) invalidated");
    }
    println!();
    Ok(())
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

pub fn status(path: &Path, as_json: bool) -> CliResult {
    let mountpoint = resolve(path)?.mountpoint;
    let mut reply = control::call(&mountpoint, &Request::Status, REQUEST_TIMEOUT)?;
    if let Value::Object(map) = &mut reply {
        map.remove("ok");
    }
    explain_denials(&mut reply, &mountpoint);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(());
    }
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    println!(
        "mount:      {} (store {}, daemon pid {})",
        reply["mountpoint"].as_str().unwrap_or("?"),
        reply["store"].as_str().unwrap_or("?"),
        n(&reply["pid"])
    );
    let users: Vec<String> = reply["unlocked"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| {
                    format!(
                        "{} (uid {})",
                        u["user"].as_str().unwrap_or("?"),
                        n(&u["uid"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "unlocked:   {}",
        if users.is_empty() {
            "nobody".into()
        } else {
            users.join(", ")
        }
    );
    let open = reply["open_files"].as_array().cloned().unwrap_or_default();
    println!("open files: {}", open.len());
    for f in &open {
        println!(
            "  {} (uid {} {})",
            f["path"].as_str().unwrap_or("?"),
            n(&f["uid"]),
            f["user"].as_str().unwrap_or("?")
        );
    }
    let c = &reply["cache"];
    println!(
        "cache:      {} of {}, {} hits, {} misses",
        human(n(&c["bytes"])),
        human(n(&c["capacity"])),
        n(&c["hits"]),
        n(&c["misses"])
    );
    let copies = &reply["copies"];
    println!(
        "copies:     {} of {} in locked RAM, passthrough {}",
        human(n(&copies["bytes"])),
        human(n(&copies["budget"])),
        if copies["passthrough"].as_bool() == Some(true) {
            "on"
        } else {
            "off"
        }
    );
    println!("decrypted:  {}", human(n(&reply["bytes_decrypted"])));
    println!(
        "opens:      {} allowed, {} denied; integrity failures: {}",
        n(&reply["opens_allowed"]),
        n(&reply["opens_denied"]),
        n(&reply["integrity_failures"])
    );
    print_denials(&reply, &mountpoint);
    Ok(())
}

/// Adds to each of the caller's denials in a status reply its reason in words (`words`) and
/// what fixes it (`fix`).
fn explain_denials(reply: &mut Value, mountpoint: &Path) {
    let uid = reply["uid"].as_u64().and_then(|u| u32::try_from(u).ok());
    let Some(uid) = uid else { return };
    let store = reply["store"].as_str().unwrap_or("STORE").to_string();
    let user = reply["unlocked"].as_array().and_then(|users| {
        users
            .iter()
            .find(|u| u["uid"].as_u64() == Some(uid.into()))
            .and_then(|u| u["user"].as_str().map(str::to_string))
    });
    let Some(denials) = reply.get_mut("denials").and_then(Value::as_array_mut) else {
        return;
    };
    for denial in denials {
        let text = |key: &str| denial[key].as_str().map(str::to_string);
        let (rel, detail, owner) = (
            text("path").unwrap_or_default(),
            text("detail"),
            text("owner"),
        );
        let cx = Context {
            mountpoint,
            store: &store,
            rel: &rel,
            uid,
            user: user.as_deref(),
            detail: detail.as_deref(),
            owner: owner.as_deref(),
        };
        let explained = explain(denial["reason"].as_str().unwrap_or("?"), &cx);
        denial["words"] = Value::String(explained.words);
        denial["fix"] = Value::String(explained.fix);
    }
}

/// The caller's recent denials, most recent first, each with its reason and fix.
fn print_denials(reply: &Value, mountpoint: &Path) {
    let uid = reply["uid"].as_u64().unwrap_or(0);
    let denials = reply["denials"].as_array().cloned().unwrap_or_default();
    if denials.is_empty() {
        println!("denials:    none recently for uid {uid}");
        return;
    }
    println!(
        "denials:    {} recent for uid {uid} (latest first)",
        denials.len()
    );
    for d in &denials {
        let count = d["count"].as_u64().unwrap_or(1);
        let times = if count > 1 {
            format!(" ({count} times)")
        } else {
            String::new()
        };
        println!(
            "  {} {} {}{times}",
            d["time"].as_str().unwrap_or("?"),
            d["op"].as_str().unwrap_or("?"),
            mountpoint
                .join(d["path"].as_str().unwrap_or_default())
                .display()
        );
        println!(
            "    {}: {}",
            d["reason"].as_str().unwrap_or("?"),
            d["words"].as_str().unwrap_or("?")
        );
        println!("    fix: {}", d["fix"].as_str().unwrap_or("?"));
    }
}

fn wait_unmounted(mountpoint: &Path, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !daemon::is_mount_point(mountpoint) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn umount(path: &Path) -> CliResult {
    // Found in the mount table even when its daemon is dead (its mountpoint then does not
    // resolve: ENOTCONN).
    let mountpoint = resolve(path)?.mountpoint;
    let socket = control::socket_path(&mountpoint);
    match control::call(&mountpoint, &Request::Umount, REQUEST_TIMEOUT) {
        Ok(_) => {
            if wait_unmounted(&mountpoint, Duration::from_secs(10)) {
                // The daemon removes its socket last: once it is gone, a new mount of this
                // directory cannot collide with the old daemon.
                let start = Instant::now();
                while socket.exists() && start.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                println!("unmounted {}", mountpoint.display());
                return Ok(());
            }
            Err(format!("{}: still mounted after 10 s", mountpoint.display()).into())
        }
        Err(ClientError::Refused(msg)) => Err(msg.into()),
        Err(e) => {
            // No daemon answers (killed?): detach the dead mount so the directory is usable.
            if !daemon::is_mount_point(&mountpoint) {
                return Err(e.into());
            }
            daemon::detach(&mountpoint).map_err(|e| {
                format!(
                    "{}: cannot unmount ({e}; not root, and fusermount3 failed)",
                    mountpoint.display()
                )
            })?;
            println!(
                "detached {} (its daemon was not answering)",
                mountpoint.display()
            );
            Ok(())
        }
    }
}
