//! Where a store is: a local directory, or `s3://BUCKET/PREFIX` in an S3-compatible object
//! store. Every command takes the store as one argument (a path), so URLs are told apart by
//! their scheme: a local directory whose name starts with `s3://` is written `./s3://...`.

use std::path::{Path, PathBuf};

use super::s3::S3Location;
use super::{Result, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Dir(PathBuf),
    S3(S3Location),
}

impl StoreLocation {
    /// Reads a STORE argument. A `scheme://` other than `s3://` is refused rather than taken
    /// for a relative directory of that odd name.
    pub fn parse(given: &Path) -> Result<StoreLocation> {
        let Some(text) = given.to_str() else {
            return Ok(StoreLocation::Dir(given.to_path_buf()));
        };
        if let Some(rest) = text.strip_prefix("s3://") {
            return S3Location::parse(rest).map(StoreLocation::S3);
        }
        if let Some((scheme, _)) = text.split_once("://") {
            let is_scheme = !scheme.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
            if is_scheme {
                return Err(StoreError::UnsupportedUrl(text.to_string()));
            }
        }
        Ok(StoreLocation::Dir(given.to_path_buf()))
    }

    /// Whether the store is a directory of this host's filesystems.
    pub fn is_local(&self) -> bool {
        matches!(self, StoreLocation::Dir(_))
    }

    /// The store as it is named in messages and in the mount table (`s3://b/p`, or the path).
    pub fn display_path(&self) -> PathBuf {
        match self {
            StoreLocation::Dir(path) => path.clone(),
            StoreLocation::S3(s3) => PathBuf::from(s3.to_string()),
        }
    }
}

/// True if `given` names a store that is not a local directory (an `s3://` URL): such a
/// store has no canonical path and cannot overlap a mountpoint.
pub fn is_remote(given: &Path) -> bool {
    given.to_str().is_some_and(|t| t.starts_with("s3://"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_told_apart() {
        let s3 = StoreLocation::parse(Path::new("s3://models/team/a")).unwrap();
        assert!(!s3.is_local());
        assert_eq!(s3.display_path(), PathBuf::from("s3://models/team/a"));
        for local in ["/srv/store", "store", "./s3://x", "a:b", "C:/x"] {
            assert_eq!(
                StoreLocation::parse(Path::new(local)).unwrap(),
                StoreLocation::Dir(PathBuf::from(local)),
                "{local}"
            );
        }
        for bad in ["gs://b/p", "http://host/b", "S3+x://b"] {
            assert!(
                matches!(
                    StoreLocation::parse(Path::new(bad)),
                    Err(StoreError::UnsupportedUrl(_))
                ),
                "{bad}"
            );
        }
        assert!(is_remote(Path::new("s3://b")));
        assert!(!is_remote(Path::new("/s3/b")));
    }
}
