//! AWS shared configuration files (`~/.aws/credentials`, `~/.aws/config`), read as the AWS
//! CLI reads them, for the one profile in use. `object_store` reads only the environment,
//! so this small reader covers the static keys, the region and the endpoint of a profile;
//! profiles that get credentials some other way (`role_arn`, `credential_process`, SSO)
//! are refused by name rather than half-used.

use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// The largest configuration file read (real ones are a few KiB).
const MAX_FILE_LEN: u64 = 1 << 20;

/// Ways of getting credentials that this reader does not follow.
const UNSUPPORTED: [&str; 6] = [
    "role_arn",
    "credential_process",
    "sso_session",
    "sso_start_url",
    "web_identity_token_file",
    "credential_source",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("{path}: {why}")]
    Unreadable { path: String, why: String },
    #[error("{path}, line {line}: {why} (expected `[section]` or `key = value`)")]
    Malformed {
        path: String,
        line: usize,
        why: &'static str,
    },
    #[error(
        "AWS profile {name:?} is in neither {credentials} nor {config} (set AWS_PROFILE to a \
         profile there, or unset it)"
    )]
    NoProfile {
        name: String,
        credentials: String,
        config: String,
    },
    #[error(
        "AWS profile {name:?} gets its credentials through `{key}`, which tvault does not \
         follow: give the profile static keys (aws_access_key_id, aws_secret_access_key), or \
         export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    Unsupported { name: String, key: &'static str },
}

/// What one profile says. Secrets are wiped when dropped.
#[derive(Default)]
pub struct Profile {
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Zeroizing<String>>,
    pub session_token: Option<Zeroizing<String>>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

/// `key = value` pairs, keys in lower case.
type Pairs = Vec<(String, Zeroizing<String>)>;

/// One `[section]` of an INI file and its top-level pairs.
struct Section {
    name: String,
    pairs: Pairs,
}

/// Parses the AWS dialect: `#` and `;` start comments (at the start of a line, or after
/// whitespace); keys are case-insensitive; an indented line continues the key before it
/// (nested settings such as `s3 =` followed by indented keys), and is not a key of its own.
fn parse(path: &str, text: &str) -> Result<Vec<Section>, ProfileError> {
    let mut sections: Vec<Section> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let malformed = |why| ProfileError::Malformed {
            path: path.to_string(),
            line: i + 1,
            why,
        };
        let line = strip_comment(raw);
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if sections.last().is_none_or(|s| s.pairs.is_empty()) {
                return Err(malformed("an indented line with no key above it"));
            }
            continue;
        }
        let line = line.trim_end();
        if let Some(inner) = line.strip_prefix('[') {
            let name = inner
                .strip_suffix(']')
                .ok_or_else(|| malformed("a section header without `]`"))?;
            sections.push(Section {
                name: name.trim().to_string(),
                pairs: Vec::new(),
            });
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| malformed("a line without `=`"))?;
        let section = sections
            .last_mut()
            .ok_or_else(|| malformed("a key before any [section]"))?;
        section.pairs.push((
            key.trim().to_ascii_lowercase(),
            Zeroizing::new(value.trim().to_string()),
        ));
    }
    Ok(sections)
}

fn strip_comment(line: &str) -> &str {
    if line.trim_start().starts_with(['#', ';']) {
        return "";
    }
    let bytes = line.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if (*b == b'#' || *b == b';') && i > 0 && bytes[i - 1].is_ascii_whitespace() {
            return &line[..i];
        }
    }
    line
}

/// Reads `path`; a missing file is empty.
fn read(path: &Path) -> Result<Zeroizing<String>, ProfileError> {
    let unreadable = |why: String| ProfileError::Unreadable {
        path: path.display().to_string(),
        why,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Zeroizing::default()),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| unreadable(e.to_string()))?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(unreadable(format!("larger than {MAX_FILE_LEN} bytes")));
    }
    Ok(text)
}

/// Where the two files are: `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`, else under
/// `~/.aws/`.
pub fn files(env: &dyn Fn(&str) -> Option<String>) -> (PathBuf, PathBuf) {
    let home = env("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
    let credentials = env("AWS_SHARED_CREDENTIALS_FILE")
        .map_or_else(|| home.join(".aws/credentials"), PathBuf::from);
    let config = env("AWS_CONFIG_FILE").map_or_else(|| home.join(".aws/config"), PathBuf::from);
    (credentials, config)
}

/// Profile `name` from the two files. `explicit`: the user named it (AWS_PROFILE), so it
/// must exist; the implicit `default` may be missing.
pub fn load(
    name: &str,
    explicit: bool,
    credentials: &Path,
    config: &Path,
) -> Result<Profile, ProfileError> {
    let from_credentials = find(&read(credentials)?, credentials, |s| s == name)?;
    let from_config = find(&read(config)?, config, |s| {
        s == format!("profile {name}") || (name == "default" && s == "default")
    })?;
    if explicit && from_credentials.is_none() && from_config.is_none() {
        return Err(ProfileError::NoProfile {
            name: name.to_string(),
            credentials: credentials.display().to_string(),
            config: config.display().to_string(),
        });
    }
    let mut profile = Profile::default();
    // The credentials file wins over the config file for keys, as in the AWS CLI.
    for pairs in [from_config, from_credentials].into_iter().flatten() {
        for (key, value) in pairs {
            match key.as_str() {
                "aws_access_key_id" => profile.access_key_id = Some(value.to_string()),
                "aws_secret_access_key" => profile.secret_access_key = Some(value),
                "aws_session_token" => profile.session_token = Some(value),
                "region" => profile.region = Some(value.to_string()),
                "endpoint_url" => profile.endpoint_url = Some(value.to_string()),
                other => {
                    if let Some(key) = UNSUPPORTED.iter().find(|k| **k == other) {
                        if profile.access_key_id.is_none() {
                            return Err(ProfileError::Unsupported {
                                name: name.to_string(),
                                key,
                            });
                        }
                    }
                }
            }
        }
    }
    Ok(profile)
}

/// The pairs of the section `matches` picks, if any (the last one, if repeated).
fn find(
    text: &str,
    path: &Path,
    matches: impl Fn(&str) -> bool,
) -> Result<Option<Pairs>, ProfileError> {
    let sections = parse(&path.display().to_string(), text)?;
    Ok(sections
        .into_iter()
        .rev()
        .find(|s| matches(&s.name))
        .map(|s| s.pairs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_with(credentials: &str, config: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let (c, f) = (dir.path().join("credentials"), dir.path().join("config"));
        std::fs::write(&c, credentials).unwrap();
        std::fs::write(&f, config).unwrap();
        (dir, c, f)
    }

    #[test]
    fn profiles_as_the_aws_cli_reads_them() {
        let (_d, c, f) = files_with(
            "# keys\n[default]\naws_access_key_id = AKDEF\naws_secret_access_key=SKDEF\n\n\
             [team]\nAWS_ACCESS_KEY_ID = AKTEAM ; note\naws_secret_access_key = a/b+c#d\n\
             aws_session_token = TOK\n",
            "[default]\nregion = eu-west-1\n[profile team]\nregion = us-east-2\n\
             endpoint_url = http://127.0.0.1:9000\ns3 =\n  addressing_style = path\n\
             [sso-session x]\nsso_start_url = https://x\n",
        );
        let team = load("team", true, &c, &f).unwrap();
        assert_eq!(team.access_key_id.as_deref(), Some("AKTEAM"));
        // `#` not after whitespace belongs to the value.
        assert_eq!(
            team.secret_access_key.as_deref().map(|s| s.as_str()),
            Some("a/b+c#d")
        );
        assert_eq!(
            team.session_token.as_deref().map(|s| s.as_str()),
            Some("TOK")
        );
        assert_eq!(team.region.as_deref(), Some("us-east-2"));
        assert_eq!(team.endpoint_url.as_deref(), Some("http://127.0.0.1:9000"));
        let default = load("default", false, &c, &f).unwrap();
        assert_eq!(default.access_key_id.as_deref(), Some("AKDEF"));
        assert_eq!(default.region.as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn missing_and_unusable_profiles_are_named() {
        let (_d, c, f) = files_with(
            "[a]\naws_access_key_id = X\n",
            "[profile role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = a\n",
        );
        assert!(matches!(
            load("nope", true, &c, &f),
            Err(ProfileError::NoProfile { .. })
        ));
        // The implicit default may be absent.
        assert!(load("default", false, &c, &f)
            .unwrap()
            .access_key_id
            .is_none());
        assert_eq!(
            load("role", true, &c, &f).err(),
            Some(ProfileError::Unsupported {
                name: "role".into(),
                key: "role_arn"
            })
        );
        let gone = c.with_file_name("absent");
        assert!(load("default", false, &gone, &gone).is_ok());
    }

    #[test]
    fn malformed_lines_are_refused_with_their_line() {
        for (text, line) in [
            ("[a]\nkey\n", 2),
            ("key = v\n", 1),
            ("[a\n", 1),
            ("[a]\n  indented = x\n", 2),
        ] {
            let (_d, c, f) = files_with(text, "");
            match load("a", true, &c, &f) {
                Err(ProfileError::Malformed { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {:?}", other.err()),
            }
        }
    }
}
