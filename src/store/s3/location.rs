//! `s3://BUCKET/PREFIX`: which bucket, and which prefix of it is the store's root. Store
//! path `REL` is the object `PREFIX/REL`.

use std::fmt;

use crate::store::{Result, StoreError};

/// The longest object key S3 accepts, in bytes.
pub(crate) const MAX_KEY_LEN: usize = 1024;

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

    /// The store path of object key `key`, if it lies below the prefix.
    pub fn rel_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        if self.prefix.is_empty() {
            return Some(key);
        }
        key.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
    }
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
        assert_eq!(l.rel_of("team/a/x/y.tvlt"), Some("x/y.tvlt"));
        assert_eq!(l.rel_of("team/ab/x"), None);
        let whole = S3Location::parse("models").unwrap();
        assert_eq!(whole.prefix, "");
        assert_eq!(whole.to_string(), "s3://models");
        assert_eq!(whole.key("a/b"), "a/b");
        assert_eq!(whole.rel_of("a/b"), Some("a/b"));
        assert_eq!(S3Location::parse("models/").unwrap(), whole);
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
