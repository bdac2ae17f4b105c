//! `s3://BUCKET/PREFIX`: which bucket, and which prefix of it is the store's root. Store
//! path `REL` is the object `PREFIX/REL`.

use std::fmt;

use crate::store::{Result, StoreError};

/// The longest object key S3 accepts, in bytes.
const MAX_KEY_LEN: usize = 1024;
/// The marker object that makes an empty directory exist: `DIR/.tvault-s3-dir`, empty.
pub const DIR_MARKER: &str = ".tvault-s3-dir";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; empty for the whole bucket.
    pub prefix: String,
}

impl S3Location {
    /// Parses what follows `s3://`.
    pub fn parse(rest: &str) -> Result<S3Location> {
        let bad = |why: String| StoreError::BadUrl {
            url: format!("s3://{rest}"),
            why,
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|why| bad(why.to_string()))?;
        let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
        if !prefix.is_empty() {
            for part in prefix.split('/') {
                check_segment(part).map_err(|why| bad(format!("prefix {prefix:?}: {why}")))?;
            }
        }
        // Room for the longest store path below it (`.tvault/users/NAME.json` and the like
        // are short; containers are checked per key).
        if prefix.len() > MAX_KEY_LEN / 2 {
            return Err(bad(format!("prefix longer than {} bytes", MAX_KEY_LEN / 2)));
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The object key of store path `rel` (`""`: the root, i.e. the prefix).
    pub fn key(&self, rel: &str) -> String {
        match (self.prefix.is_empty(), rel.is_empty()) {
            (true, _) => rel.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) => format!("{}/{rel}", self.prefix),
        }
    }

    /// The key of store path `rel`, checked: every component one a store path may have and
    /// none the directory marker's name, short enough for a marker below it to fit S3's key
    /// length.
    pub fn checked_key(&self, rel: &str) -> std::result::Result<String, &'static str> {
        if !rel.is_empty() {
            for part in rel.split('/') {
                check_segment(part)?;
                if part == DIR_MARKER {
                    return Err("the name of the S3 backend's directory markers");
                }
            }
        }
        let key = self.key(rel);
        if key.len() + 1 + DIR_MARKER.len() > MAX_KEY_LEN {
            return Err("longer than an S3 object key may be");
        }
        Ok(key)
    }
}

/// The entry name that `key`, listed with delimiter below `dir_prefix` (`KEY/`, or `None` for
/// a bucket's root), stands for: `None` for the marker and for names that are not store path
/// components, which are never shown or used.
pub(crate) fn entry_name<'a>(dir_prefix: Option<&str>, key: &'a str) -> Option<&'a str> {
    let below = match dir_prefix {
        Some(p) => key.strip_prefix(p)?,
        None => key,
    };
    let ok = !below.contains('/') && check_segment(below).is_ok() && below != DIR_MARKER;
    ok.then_some(below)
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// S3's bucket naming rules (3 to 63 letters, digits, `.`, `-`, starting and ending with a
/// letter or digit), with `_` and capitals, which older buckets and other servers allow.
fn check_bucket(bucket: &str) -> std::result::Result<(), &'static str> {
    if bucket.is_empty() {
        return Err("no bucket name (write s3://BUCKET/PREFIX)");
    }
    if !(3..=63).contains(&bucket.len()) {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bucket
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err("a bucket name has only letters, digits, '.', '-' and '_'");
    }
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !ends_ok(bucket.chars().next()) || !ends_ok(bucket.chars().last()) {
        return Err("a bucket name starts and ends with a letter or digit");
    }
    Ok(())
}

/// One `/`-separated name of a key: what a store path component may be, so that every key
/// tvault uses maps back to a store path.
pub(crate) fn check_segment(part: &str) -> std::result::Result<(), &'static str> {
    match part {
        "" => Err("empty path component"),
        "." | ".." => Err("'.' and '..' are not allowed"),
        _ if part.len() > 255 => Err("a name longer than 255 bytes"),
        _ if part.chars().any(|c| c.is_control()) => Err("a control character"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_and_prefix() {
        let l = S3Location::parse("models/team/a/").unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("models", "team/a"));
        assert_eq!(l.to_string(), "s3://models/team/a");
        assert_eq!(l.key(""), "team/a");
        assert_eq!(l.key(".tvault/store.json"), "team/a/.tvault/store.json");
        let whole = S3Location::parse("models").unwrap();
        assert_eq!(whole.prefix, "");
        assert_eq!(whole.to_string(), "s3://models");
        assert_eq!(whole.key("a/b"), "a/b");
        assert_eq!(S3Location::parse("models/").unwrap(), whole);
    }

    #[test]
    fn keys_are_store_paths_and_nothing_else() {
        let l = S3Location::parse("models/p").unwrap();
        assert_eq!(l.checked_key("a/b.tvlt"), Ok("p/a/b.tvlt".into()));
        assert_eq!(l.checked_key(""), Ok("p".into()));
        for bad in [
            "a//b",
            "a/./b",
            "../x",
            "a/\u{1}",
            ".tvault-s3-dir",
            "d/.tvault-s3-dir/x",
        ] {
            assert!(l.checked_key(bad).is_err(), "{bad:?}");
        }
        assert!(l.checked_key(&"n".repeat(256)).is_err());
        let deep = vec!["n".repeat(250); 5].join("/");
        assert_eq!(
            l.checked_key(&deep),
            Err("longer than an S3 object key may be")
        );
        // Listing entries: one name below the directory, never the marker or a bad name.
        let dir = Some("p/d/");
        assert_eq!(entry_name(dir, "p/d/x.tvlt"), Some("x.tvlt"));
        assert_eq!(
            entry_name(dir, "p/d/sub/"),
            None,
            "prefixes come without the slash"
        );
        assert_eq!(entry_name(dir, "p/d/sub"), Some("sub"));
        assert_eq!(entry_name(dir, "p/d/.tvault-s3-dir"), None);
        assert_eq!(entry_name(dir, "p/d/a/b"), None);
        assert_eq!(entry_name(dir, "p/e/x"), None);
        assert_eq!(entry_name(dir, &format!("p/d/{}", "n".repeat(256))), None);
        assert_eq!(entry_name(dir, "p/d/tab\u{85}"), None);
        assert_eq!(entry_name(None, "top"), Some("top"));
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "no bucket"),
            ("/p", "no bucket"),
            ("ab", "3 to 63"),
            ("my bucket", "only letters"),
            ("-abc", "starts and ends"),
            ("b1b/a//c", "empty path component"),
            ("b1b/a/../c", "'.' and '..'"),
            ("b1b/a\tb", "control"),
        ] {
            let err = S3Location::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(&format!("s3://{bad}")), "{err}");
        }
        let long = format!("b1b/{}", "a/".repeat(300));
        assert!(S3Location::parse(&long).is_err());
    }
}
