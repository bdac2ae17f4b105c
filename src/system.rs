//! Facts about the running system that the kernel tells through `/proc` and plain syscalls:
//! who a process is, who we are, and how much room a filesystem has. Nothing here fails
//! loudly: a process may exit, or hide its `exe` from an unprivileged reader, between the
//! question and the answer, so each fact is an `Option`.

use std::path::Path;

/// `/proc/PID/comm`, the process's command name (without the kernel's newline); `None` for
/// pid 0, an empty name, or a process that is gone.
pub(crate) fn process_comm(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let bytes = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let name = String::from_utf8_lossy(bytes.strip_suffix(b"\n").unwrap_or(&bytes));
    (!name.is_empty()).then(|| name.into_owned())
}

/// `readlink /proc/PID/exe`, the executable's path; `None` for pid 0, a process that is gone,
/// or (without privileges) another user's process.
pub(crate) fn process_exe(pid: u32) -> Option<String> {
    if pid == 0 {
        return None;
    }
    let path = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    Some(path.to_string_lossy().into_owned())
}

/// This process's effective uid.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
pub(crate) fn free_space(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The supplementary groups of process `pid` (`Groups:` in `/proc/PID/status`); empty for
/// pid 0 or a process that is gone. Read when a permission check needs them, so that a
/// `newgrp` or `setpriv --groups` takes effect at once.
pub(crate) fn process_groups(pid: u32) -> Vec<u32> {
    if pid == 0 {
        return Vec::new();
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The machine's host name (`gethostname`); `None` if it cannot be read or is not UTF-8.
pub(crate) fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length, which is what we pass.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..len]).ok()?;
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_about_this_process() {
        let me = std::process::id();
        let comm = process_comm(me).unwrap();
        assert!(!comm.is_empty() && !comm.ends_with('\n'), "{comm:?}");
        let exe = process_exe(me).unwrap();
        assert_eq!(
            Path::new(&exe),
            std::env::current_exe().unwrap(),
            "exe is the running binary"
        );
        assert_eq!((process_comm(0), process_exe(0)), (None, None));
        let host = hostname().unwrap();
        assert_eq!(host.trim(), host, "no NUL or newline in {host:?}");
        // Pids are below 2^22 on Linux, so this one never exists.
        assert_eq!(process_comm(u32::MAX), None);
        let made = tempfile::NamedTempFile::new().unwrap();
        let owner = std::os::unix::fs::MetadataExt::uid(&made.as_file().metadata().unwrap());
        assert_eq!(euid(), owner, "new files belong to the effective uid");
        assert!(free_space(Path::new("/")).is_some());
        assert_eq!(free_space(Path::new("/nonexistent/dir")), None);
    }
}
