//! The control socket between the CLI and a running mount daemon.
//!
//! One Unix stream socket per mount, at `$TVAULT_RUNTIME_DIR` (default `/run/tvault`) /
//! `<first 16 bytes of SHA-256(canonical mountpoint), hex>.sock`, mode 0666: every local user
//! may connect, and the daemon identifies the caller by `SO_PEERCRED`, never by anything the
//! client says. Protocol: one JSON request line, one JSON response line, then close.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Requests are tiny; anything longer is abuse.
pub const MAX_REQUEST: u64 = 64 * 1024;
const MAX_CONNECTIONS: usize = 256;
const MAX_PER_UID: usize = 16;
/// A request must arrive whole within this long of the connection being accepted, however
/// it is paced; the reply gets as long again.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Unseal the caller's keyring.
    Unlock {
        passphrase: String,
    },
    /// Forget the caller's keys; `force` also invalidates files the caller still has open.
    Lock {
        force: bool,
    },
    Status,
    /// Whether the caller can read and write `path` (relative to the mountpoint), and why not.
    Why {
        path: String,
    },
    /// Unmount (the daemon's owner or root only).
    Umount,
    /// A store change made outside the mount (grant, revoke, chown), recorded in the daemon's audit
    /// log (the daemon's owner or root only).
    AuditNote {
        event: String,
        path: String,
        target: String,
        user: Option<String>,
        detail: Option<String>,
    },
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Request::Unlock { passphrase } = self {
            passphrase.zeroize();
        }
    }
}

/// The connecting process, as the kernel reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

pub(crate) trait Handler: Send + Sync + 'static {
    /// Why a request is refused; its `Display` is the reply's `error` text.
    type Error: std::error::Error;

    /// Returns the response body (merged into `{"ok": true, ...}`) or the refusal.
    fn handle(&self, peer: Peer, request: &Request) -> Result<Value, Self::Error>;
}

/// Requests the socket code refuses before (or instead of) the handler.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("daemon busy: too many connections")]
    Busy,
    #[error("request not complete within {} s", IO_TIMEOUT.as_secs())]
    Timeout,
    #[error("empty request")]
    Empty,
    #[error("request longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("malformed request: {0}")]
    Malformed(#[source] serde_json::Error),
}

pub(crate) fn runtime_dir() -> PathBuf {
    std::env::var_os("TVAULT_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/tvault"))
}

/// The socket path for a mountpoint, given canonical (as the daemon canonicalizes it when it
/// mounts, and as the mount table lists it): the mountpoint is not looked at, so this also
/// names the socket of a dead mount, whose mountpoint no longer resolves.
pub(crate) fn socket_path(mountpoint: &Path) -> PathBuf {
    let digest = Sha256::digest(mountpoint.as_os_str().as_encoded_bytes());
    runtime_dir().join(format!("{}.sock", hex::encode(&digest[..16])))
}

fn peer_cred(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a properly sized ucred.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid,
    })
}

/// Binds the socket, replacing a stale one left by a dead daemon but refusing to steal one
/// that a live daemon still answers on.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{}: another tvault daemon is serving this mountpoint",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(listener)
}

/// Accepts connections forever on a background thread, one short-lived thread per
/// connection. Each uid may hold at most `MAX_PER_UID` connections at once and all uids
/// together `MAX_CONNECTIONS`; beyond that new connections are refused, not queued, so a
/// user who opens connections and stalls only blocks themselves.
pub(crate) fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    let per_uid: Arc<Mutex<HashMap<u32, usize>>> = Arc::new(Mutex::new(HashMap::new()));
    std::thread::Builder::new()
        .name("tvault-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Ok(peer) = peer_cred(&stream) else {
                    continue;
                };
                let admitted = {
                    let mut counts = crate::sync::lock(&per_uid);
                    let mine = counts.entry(peer.uid).or_insert(0);
                    let ok =
                        *mine < MAX_PER_UID && active.load(Ordering::Acquire) < MAX_CONNECTIONS;
                    if ok {
                        *mine += 1;
                        active.fetch_add(1, Ordering::AcqRel);
                    }
                    ok
                };
                if !admitted {
                    if let Err(e) = respond(&mut stream, Err::<Value, _>(ProtocolError::Busy)) {
                        log::debug!("control: refusing a connection: {e}");
                    }
                    continue;
                }
                let handler = handler.clone();
                let (active, per_uid) = (active.clone(), per_uid.clone());
                let release = move || {
                    active.fetch_sub(1, Ordering::AcqRel);
                    let mut counts = crate::sync::lock(&per_uid);
                    if let Some(n) = counts.get_mut(&peer.uid) {
                        *n = n.saturating_sub(1);
                    }
                };
                let spawned = std::thread::Builder::new()
                    .name("tvault-conn".into())
                    .spawn(move || {
                        if let Err(e) = handle_connection(&mut stream, peer, handler.as_ref()) {
                            log::debug!("control connection: {e}");
                        }
                        release();
                    });
                if spawned.is_err() {
                    log::warn!("control: cannot spawn a connection thread");
                }
            }
        })?;
    Ok(())
}

/// Reads the request into `buf` straight from the socket, so that no other buffer ever holds
/// it (an unlock request carries a passphrase). Returns its length: up to and including the
/// first newline, or what arrived before EOF or before `buf` filled up. The whole request must
/// arrive by `deadline`: a per-read timeout alone would let a client that sends one byte every
/// few seconds hold the connection, and its uid's share of them, forever.
fn read_request(stream: &mut UnixStream, deadline: Instant, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                if let Some(end) = buf[filled..filled + n].iter().position(|&b| b == b'\n') {
                    return Ok(filled + end + 1);
                }
                filled += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout is reported as WouldBlock on Unix.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::ErrorKind::TimedOut.into())
            }
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn handle_connection<H: Handler>(
    stream: &mut UnixStream,
    peer: Peer,
    handler: &H,
) -> io::Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    // Allocated whole up front and wiped on drop: nothing grows, so no stray copy of a
    // passphrase is left in freed memory.
    let mut buf = Zeroizing::new(vec![0u8; MAX_REQUEST as usize]);
    let request = match read_request(stream, deadline, &mut buf) {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ProtocolError::Timeout),
        Err(e) => return Err(e),
        Ok(0) => Err(ProtocolError::Empty),
        Ok(n) if n == buf.len() && buf[n - 1] != b'\n' => Err(ProtocolError::TooLong),
        Ok(n) => serde_json::from_slice::<Request>(&buf[..n]).map_err(ProtocolError::Malformed),
    };
    drop(buf);
    match request {
        Ok(request) => respond(stream, handler.handle(peer, &request)),
        Err(refused) => respond(stream, Err::<Value, _>(refused)),
    }
}

fn respond<E: std::fmt::Display>(
    stream: &mut UnixStream,
    result: Result<Value, E>,
) -> io::Result<()> {
    let body = match result {
        Ok(Value::Object(mut map)) => {
            map.insert("ok".into(), Value::Bool(true));
            Value::Object(map)
        }
        Ok(other) => json!({"ok": true, "result": other}),
        Err(error) => json!({"ok": false, "error": error.to_string()}),
    };
    let mut text = body.to_string();
    text.push('\n');
    stream.write_all(text.as_bytes())
}

/// Counts what is written, keeping none of it.
struct Counter(usize);

impl Write for Counter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0 += data.len();
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `request` as one line, in a buffer sized exactly once: serializing into a growing string
/// would leave copies of a passphrase behind in the memory each reallocation frees.
fn encode_request(request: &Request) -> Result<Zeroizing<Vec<u8>>, ClientError> {
    let protocol = |e: serde_json::Error| ClientError::Protocol(e.to_string());
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, request).map_err(protocol)?;
    let len = counter.0 + 1;
    if len as u64 > MAX_REQUEST {
        return Err(ClientError::TooLong(len));
    }
    let mut text = Zeroizing::new(Vec::with_capacity(len));
    serde_json::to_writer(&mut *text, request).map_err(protocol)?;
    text.push(b'\n');
    debug_assert_eq!(text.capacity(), len, "the request buffer was reallocated");
    Ok(text)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The OS error ends the message, so that the error-chain printer does not repeat it.
    #[error(
        "{mountpoint} is a tvault mount but its daemon does not answer (if the daemon is gone, \
         `tvault umount {mountpoint}` detaches the mount): {source}"
    )]
    NoDaemon {
        mountpoint: String,
        source: io::Error,
    },
    #[error("control socket: {0}")]
    Io(#[from] io::Error),
    #[error("malformed response from the daemon: {0}")]
    Protocol(String),
    #[error(
        "the request is {0} bytes, over the daemon's limit of {MAX_REQUEST}: a passphrase this \
         long cannot unlock a mount (`tvault user passwd` sets a shorter one)"
    )]
    TooLong(usize),
    #[error("{0}")]
    Refused(String),
}

/// Sends one request to the daemon serving `mountpoint` (canonical, see [`socket_path`]) and
/// returns its response body.
pub(crate) fn call(
    mountpoint: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let no_daemon = |source| ClientError::NoDaemon {
        mountpoint: mountpoint.display().to_string(),
        source,
    };
    let text = encode_request(request)?;
    let connected = UnixStream::connect(socket_path(mountpoint)).and_then(|stream| {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    });
    let mut stream = connected.map_err(no_daemon)?;
    stream.write_all(&text)?;
    drop(text);
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST)).read_line(&mut line)?;
    let value: Value =
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if value.get("ok") == Some(&Value::Bool(true)) {
        Ok(value)
    } else {
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("request refused")
            .to_string();
        Err(ClientError::Refused(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("nope")]
    struct Nope;

    struct Echo;
    impl Handler for Echo {
        type Error = Nope;

        fn handle(&self, peer: Peer, request: &Request) -> Result<Value, Nope> {
            match request {
                Request::Status => Ok(json!({"uid": peer.uid})),
                _ => Err(Nope),
            }
        }
    }

    #[test]
    fn request_wire_format() {
        let r: Request = serde_json::from_str(r#"{"op":"lock","force":true}"#).unwrap();
        assert!(matches!(r, Request::Lock { force: true }));
        assert!(serde_json::from_str::<Request>(r#"{"op":"bogus"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"lock","force":1}"#).is_err());
    }

    #[test]
    fn round_trip_and_abuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let listener = bind(&path).unwrap();
        assert!(bind(&path).is_err(), "a live socket must not be stolen");
        serve(listener, Arc::new(Echo)).unwrap();
        let call_raw = |bytes: &[u8]| {
            let mut s = UnixStream::connect(&path).unwrap();
            let _ = s.write_all(bytes);
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = String::new();
            // An oversized request may be cut off with a reset instead of an answer.
            match s.read_to_string(&mut out) {
                Ok(_) => serde_json::from_str::<Value>(&out).unwrap(),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => json!({"ok": false}),
                Err(e) => panic!("{e}"),
            }
        };
        let ok = call_raw(b"{\"op\":\"status\"}\n");
        assert_eq!(ok["ok"], true);
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        assert_eq!(ok["uid"], uid);
        assert_eq!(call_raw(b"{\"op\":\"umount\"}\n")["error"], "nope");
        assert_eq!(call_raw(b"garbage\n")["ok"], false);
        assert_eq!(call_raw(b"")["error"], "empty request");
        // What follows the request line is not part of it.
        assert_eq!(call_raw(b"{\"op\":\"status\"}\ntrailing")["ok"], true);
        let huge = vec![b'x'; (MAX_REQUEST as usize) * 2];
        assert_eq!(call_raw(&huge)["ok"], false);
    }

    #[test]
    fn requests_are_encoded_in_one_allocation_and_capped() {
        let unlock = |passphrase: String| Request::Unlock { passphrase };
        let text = encode_request(&unlock("p\"w\\ü".into())).unwrap();
        assert_eq!(text.capacity(), text.len(), "sized once, exactly");
        assert_eq!(text.last(), Some(&b'\n'));
        let back: Request = serde_json::from_slice(&text).unwrap();
        assert!(matches!(&back, Request::Unlock { passphrase } if passphrase == "p\"w\\ü"));
        // `{"op":"unlock","passphrase":""}` and the newline are 32 bytes.
        let fits = unlock("x".repeat(MAX_REQUEST as usize - 32));
        assert_eq!(encode_request(&fits).unwrap().len() as u64, MAX_REQUEST);
        let over = unlock("x".repeat(MAX_REQUEST as usize - 31));
        assert!(matches!(
            encode_request(&over),
            Err(ClientError::TooLong(n)) if n as u64 == MAX_REQUEST + 1
        ));
    }
}
