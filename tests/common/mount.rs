//! A real FUSE mount for one test: its own store, mountpoint and daemon, always unmounted
//! (even when the test panics), with helpers to run commands as other uids.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{s, store_with_users, TVAULT};

/// Every command a test runs gets this long before it is killed and the test fails, so a
/// hung mount fails the test instead of hanging CI.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

pub fn python() -> String {
    std::env::var("TVAULT_PYTHON").unwrap_or_else(|_| "/var/tmp/tvault-venv/bin/python".into())
}

/// A process of `uid` that runs `code` (Python) and talks over stdin/stdout: it prints a
/// line when ready and acts on each line it reads.
pub fn spawn_python_as(
    uid: u32,
    code: &str,
    args: &[&str],
) -> (Child, std::io::BufReader<std::process::ChildStdout>) {
    let mut child = setpriv(uid)
        .arg(python())
        .args(["-c", code])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

pub fn is_mounted(mountpoint: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let target = mountpoint
        .to_str()
        .unwrap_or_default()
        .replace(' ', "\\040");
    text.lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// Runs a command to completion with a timeout, feeding `stdin`.
pub fn run(mut cmd: Command, stdin: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    wait_with_timeout(child, &format!("{cmd:?}"))
}

/// Waits for `child`, draining its stdout/stderr concurrently (a full pipe would otherwise
/// stall it), and kills it after `COMMAND_TIMEOUT`.
pub fn wait_with_timeout(mut child: Child, what: &str) -> Output {
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
    ) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() > COMMAND_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                panic!(
                    "timed out: {what}\nstderr: {}",
                    String::from_utf8_lossy(&stderr)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("wait {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// `setpriv` set up to run the command that follows as `uid` (gid = uid, no supplementary
/// groups).
pub fn setpriv(uid: u32) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        &uid.to_string(),
        "--regid",
        &uid.to_string(),
        "--clear-groups",
        "--",
    ]);
    cmd
}

pub struct MountFixture {
    pub tmp: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
    /// A copy of the tvault binary that every uid can execute.
    pub bin: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
    /// Environment for every command the fixture runs (e.g. S3 settings, a state directory).
    env: Vec<(String, String)>,
}

impl MountFixture {
    /// A store with alice (uid 1001, "pw-alice") and bob (uid 1002, "pw-bob"); not mounted.
    pub fn new() -> Self {
        let mut fx = Self::for_store(PathBuf::new(), Vec::new());
        fx.store = store_with_users(fx.tmp.path());
        fx
    }

    /// A fixture for a store made elsewhere (e.g. an `s3://` URL); every command it runs,
    /// the daemon included, gets `env` on top of the defaults.
    pub fn for_store(store: PathBuf, env: Vec<(String, String)>) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Other uids must be able to reach the mountpoint and the binary.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::set_permissions(&mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = tmp.path().join("tvault");
        std::fs::copy(TVAULT, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let log = tmp.path().join("daemon.log");
        MountFixture {
            tmp,
            store,
            mnt,
            bin,
            daemon: None,
            log,
            env,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Writes a world-readable plaintext file under the temp dir (for comparisons by other uids).
    pub fn plain_file(&self, name: &str, data: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// Starts `tvault mount --foreground` and waits until the mount is live.
    pub fn mount(&mut self, extra: &[&str]) {
        self.mount_wrapped(&[], extra)
    }

    /// Like `mount`, with the daemon started through `wrapper` (e.g. `prlimit ... --`).
    pub fn mount_wrapped(&mut self, wrapper: &[&str], extra: &[&str]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.args(["mount", s(&self.store), s(&self.mnt), "--foreground"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env(tensorvault::audit::STATE_DIR_ENV, super::state_dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // The binary was copied just now: a process forked meanwhile by another test thread
        // may still hold the copy's write descriptor for a moment (ETXTBSY on exec).
        let mut tries = 0;
        let child = loop {
            match cmd.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("spawn daemon"),
            }
        };
        self.daemon = Some(child);
        let start = Instant::now();
        while !is_mounted(&self.mnt) {
            if let Some(Ok(Some(status))) = self.daemon.as_mut().map(Child::try_wait) {
                panic!("daemon exited with {status}: {}", self.daemon_log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "mount did not come up: {}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The control socket is bound before the mount exists, so it answers now.
    }

    /// Runs `tvault mount --foreground` with `extra`, for a mount that must refuse to start,
    /// and returns its output (a mount that does come up is unmounted when the fixture drops).
    pub fn mount_refused(&self, extra: &[&str]) -> Output {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["mount", s(&self.store), s(&self.mnt), "--foreground"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .env(tensorvault::audit::STATE_DIR_ENV, super::state_dir())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let out = run(cmd, "");
        assert!(
            !out.status.success(),
            "the mount started: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Child::id)
    }

    /// Runs `program args` as `uid` (gid = uid, no supplementary groups).
    pub fn as_uid(&self, uid: u32, program: &str, args: &[&str], stdin: &str) -> Output {
        let mut cmd = setpriv(uid);
        cmd.arg(program)
            .args(args)
            .env("RUST_LOG", "error")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.tmp.path());
        run(cmd, stdin)
    }

    /// Runs the tvault binary as `uid`.
    pub fn tvault_as(&self, uid: u32, args: &[&str], stdin: &str) -> Output {
        self.as_uid(uid, s(&self.bin), args, stdin)
    }

    pub fn unlock(&self, uid: u32, passphrase: &str) {
        let out = self.tvault_as(uid, &["unlock", s(&self.mnt)], &format!("{passphrase}\n"));
        assert!(
            out.status.success(),
            "unlock uid {uid}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs a Python snippet as `uid`; `sys.argv[1:]` are `args`.
    pub fn python_as(&self, uid: u32, code: &str, args: &[&str]) -> Output {
        let mut all = vec!["-c", code];
        all.extend(args);
        self.as_uid(uid, &python(), &all, "")
    }

    /// `status --json` as root.
    pub fn status(&self) -> serde_json::Value {
        let out = run(
            {
                let mut c = Command::new(&self.bin);
                c.args(["status", s(&self.mnt), "--json"])
                    .envs(self.env.iter().map(|(k, v)| (k, v)));
                c
            },
            "",
        );
        assert!(
            out.status.success(),
            "status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    pub fn unmount(&mut self) {
        if is_mounted(&self.mnt) {
            let mut cmd = Command::new(&self.bin);
            cmd.args(["umount", s(&self.mnt)])
                .envs(self.env.iter().map(|(k, v)| (k, v)));
            let _ = run(cmd, "");
        }
        if let Some(mut child) = self.daemon.take() {
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.mnt) {
            let path = std::ffi::CString::new(s(&self.mnt)).unwrap();
            // SAFETY: valid NUL-terminated path.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

impl Drop for MountFixture {
    fn drop(&mut self) {
        self.unmount();
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tmpfs of `size` (e.g. "2m") mounted at `dir` for one test, unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn new(dir: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs at {}", dir.display());
        Tmpfs(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
