//! The kernel's mount table (`/proc/self/mountinfo`), and detaching a mount.

use super::*;

/// One line of /proc/self/mountinfo.
pub struct MountEntry {
    pub point: PathBuf,
    /// "major:minor".
    pub dev: String,
    /// e.g. "fuse.tvault", "ext4".
    pub fstype: String,
    /// What is mounted: for a tvault mount `tvault:` and the store's canonical path.
    pub source: String,
}

/// Mounts from /proc/self/mountinfo, in mount order (the last one at a path is on top).
pub fn mounts() -> Vec<MountEntry> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// `id parent major:minor root point options [optional fields…] - fstype source super-options`
fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (front, back) = line.split_once(" - ")?;
    let mut fields = front.split(' ');
    let dev = fields.nth(2)?.to_string();
    let point = fields.nth(1)?;
    let mut back = back.split(' ');
    Some(MountEntry {
        point: PathBuf::from(unescape_mountinfo(point)),
        dev,
        fstype: back.next()?.to_string(),
        source: unescape_mountinfo(back.next()?),
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mount_point(path: &Path) -> bool {
    mounts().iter().any(|m| m.point == path)
}

/// Detaches the mount at `mountpoint` lazily (`MNT_DETACH`, so open files do not keep it),
/// with `fusermount3 -uz` when not root. `UMOUNT_NOFOLLOW`: a link swapped in at the path
/// (which comes from the mount table, which users can add FUSE mounts to) cannot aim root's
/// unmount at another mount.
pub fn detach(mountpoint: &Path) -> std::io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_encoded_bytes())?;
    // SAFETY: `path` is NUL-terminated and outlives the call, which only reads it.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) } == 0 {
        return Ok(());
    }
    let umount_error = std::io::Error::last_os_error();
    match std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mountpoint)
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        _ => Err(umount_error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let m = parse_mountinfo_line(
            "36 35 0:52 / /mnt/a\\040b rw,nosuid shared:1 master:2 - fuse.tvault tvault:/s rw,user_id=0",
        )
        .unwrap();
        assert_eq!(m.point, Path::new("/mnt/a b"));
        assert_eq!(m.dev, "0:52");
        assert_eq!(m.fstype, "fuse.tvault");
        assert_eq!(m.source, "tvault:/s");
        assert!(parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\04"), "/end\\04");
    }
}
