//! A real S3-compatible server (`s3s-fs`, installed by `scripts/setup.sh --tests`) on
//! loopback for one test: its own data directory and port, stopped and started again for the
//! outage tests, killed when dropped. Nothing mocks the client: tvault talks HTTP to it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::mount::run;
use super::{state_dir, FAST_KDF, TVAULT};

pub const ACCESS_KEY: &str = "tvault-test-access";
pub const SECRET_KEY: &str = "tvault-test-secret-key";
pub const REGION: &str = "us-east-1";
/// The s3s-fs release the tests are written against (see scripts/setup.sh).
const S3S_FS_VERSION: &str = "s3s-fs 0.14.1";

/// The server binary: `$TVAULT_S3S_FS`, else where scripts/setup.sh installs it. Missing is a
/// failure, never a skip: the S3 tests are part of the suite.
pub fn s3s_fs_binary() -> PathBuf {
    let path = match std::env::var_os("TVAULT_S3S_FS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(
            std::env::var("TVAULT_TOOLS").unwrap_or_else(|_| "/var/tmp/tvault-tools".into()),
        )
        .join("bin/s3s-fs"),
    };
    let version = Command::new(&path).arg("--version").output();
    match version {
        Ok(out) if String::from_utf8_lossy(&out.stdout).trim() == S3S_FS_VERSION => path,
        Ok(out) => panic!(
            "{} is not {S3S_FS_VERSION} (it says {:?}): run `bash scripts/setup.sh --tests`",
            path.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        Err(e) => panic!(
            "the S3 test server is missing ({}: {e}): run `bash scripts/setup.sh --tests`, \
             which installs it into /var/tmp/tvault-tools, or set TVAULT_S3S_FS",
            path.display()
        ),
    }
}

pub struct S3Server {
    data: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl S3Server {
    /// Starts a server on a free loopback port with an empty data directory.
    pub fn start() -> S3Server {
        let data = tempfile::tempdir().expect("tempdir");
        let log = data.path().with_extension("log");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut server = S3Server {
            data,
            port,
            child: None,
            log,
        };
        server.resume();
        server
    }

    /// Starts the (stopped) server again on the same port and data, and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log");
        let child = Command::new(s3s_fs_binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.data.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn s3s-fs");
        self.child = Some(child);
        let start = Instant::now();
        while !self.answers() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("s3s-fs exited with {status}: {}", self.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "s3s-fs did not answer on port {}: {}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (as an outage would); `resume` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, never answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn unpause(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("the server is running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on our own child, which has not been waited for (still its pid).
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "signal s3s-fs");
    }

    /// Any HTTP answer (403 to an unsigned request) means the server is up.
    fn answers(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn
            .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut head = [0u8; 5];
        conn.read_exact(&mut head).is_ok() && &head == b"HTTP/"
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the server keeps its objects: bucket B, key K is the file `data_dir()/B/K`.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// A bucket is a directory in the server's data directory.
    pub fn create_bucket(&self, bucket: &str) {
        std::fs::create_dir(self.data.path().join(bucket)).expect("create bucket");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The standard AWS settings that reach this server with its keys.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_REGION".into(), REGION.into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// A new bucket `bucket` and the store location `s3://bucket/prefix` in it (not initialised).
    pub fn store(&self, bucket: &str, prefix: &str) -> S3Store {
        self.create_bucket(bucket);
        S3Store {
            url: format!("s3://{bucket}/{prefix}"),
            dir: self.data.path().join(bucket).join(prefix),
            env: self.env(),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A store location on a server, with the settings every tvault command on it gets.
pub struct S3Store {
    pub url: String,
    /// The server-side directory holding the store's objects (for looking at the ciphertext).
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl S3Store {
    /// `tvault ARGS` with this store's settings; AWS settings from the caller's environment are
    /// removed so that only the ones given here count.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(TVAULT);
        clear_aws_env(&mut cmd);
        cmd.args(args)
            .env("RUST_LOG", "error")
            .env(tensorvault::audit::STATE_DIR_ENV, state_dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `tvault ARGS` (killed after the harness's command timeout).
    pub fn run(&self, args: &[&str], stdin: &str) -> Output {
        run(self.command(args), stdin)
    }

    pub fn ok(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin);
        assert!(
            out.status.success(),
            "tvault {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn fails(&self, args: &[&str], stdin: &str) -> String {
        let out = self.run(args, stdin);
        assert!(
            !out.status.success(),
            "tvault {args:?} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `tvault init` and users alice (uid 1001, "pw-alice") and bob (1002, "pw-bob").
    pub fn init_with_users(&self) {
        self.ok(&["init", &self.url], "");
        for (name, uid) in [("alice", "1001"), ("bob", "1002")] {
            let mut args = vec!["user", "add", &self.url, name, "--uid", uid];
            args.extend(FAST_KDF);
            self.ok(&args, &format!("pw-{name}\n"));
        }
    }
}

/// Every file under `dir` (recursively), with its bytes.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Removes every AWS_* variable (and TVAULT_S3_TIMEOUT) inherited from the test's environment.
pub fn clear_aws_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let name = key.to_string_lossy();
        if name.starts_with("AWS_") || name == "TVAULT_S3_TIMEOUT" {
            cmd.env_remove(&key);
        }
    }
}
