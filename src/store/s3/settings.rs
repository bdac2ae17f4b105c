//! The settings of an S3 store, from the standard AWS environment variables and shared
//! files, as the AWS CLI and SDKs read them, plus tvault's own timeout.

use std::net::IpAddr;
use std::time::Duration;

use zeroize::Zeroizing;

use super::profile::{self, ProfileError};

/// How long one operation on the store may take, retries included, unless set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TIMEOUT_SECS: u64 = 3600;
const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error("{var}: {why}")]
    Bad { var: &'static str, why: String },
    #[error(
        "{endpoint}: plain http:// is allowed only on loopback (127.0.0.0/8, ::1, localhost); \
         use https://, or set AWS_ALLOW_HTTP=true if the network is trusted (requests are \
         signed, but everything else, including the ciphertext, goes in the clear)"
    )]
    PlainHttp { endpoint: String },
    #[error(
        "{set} is set but {missing} is not: set both (or neither, to use AWS_PROFILE and the \
         shared credentials file)"
    )]
    HalfCredentials {
        set: &'static str,
        missing: &'static str,
    },
}

/// Everything needed to reach the bucket. Secrets are wiped when dropped and never printed.
pub struct S3Settings {
    /// A custom endpoint (`https://host:port`), for S3-compatible servers; AWS otherwise.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Zeroizing<String>>,
    pub session_token: Option<Zeroizing<String>>,
    /// The longest one operation may take, retries included.
    pub timeout: Duration,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn first(env: Env<'_>, vars: &[&str]) -> Option<String> {
    vars.iter()
        .filter_map(|v| env(v))
        .find(|value| !value.is_empty())
}

impl S3Settings {
    /// From the process environment; `timeout` (the mount's `--s3-timeout`) wins over
    /// `TVAULT_S3_TIMEOUT`.
    pub fn from_env(timeout: Option<Duration>) -> Result<S3Settings, SettingsError> {
        S3Settings::from(&|var| std::env::var(var).ok(), timeout)
    }

    pub fn from(env: Env<'_>, timeout: Option<Duration>) -> Result<S3Settings, SettingsError> {
        let explicit = first(env, &["AWS_PROFILE"]);
        let name = explicit.clone().unwrap_or_else(|| "default".to_string());
        let (credentials, config) = profile::files(env);
        let profile = profile::load(&name, explicit.is_some(), &credentials, &config)?;
        let allow_http = match first(env, &["AWS_ALLOW_HTTP"]).as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
            Some(v) => {
                return Err(SettingsError::Bad {
                    var: "AWS_ALLOW_HTTP",
                    why: format!("{v:?} is not true or false"),
                })
            }
        };
        let endpoint = first(
            env,
            &["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"],
        )
        .or(profile.endpoint_url.clone());
        let endpoint = match endpoint {
            Some(e) => Some(check_endpoint(&e, allow_http)?),
            None => None,
        };
        let region = first(env, &["AWS_REGION", "AWS_DEFAULT_REGION"])
            .or(profile.region.clone())
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let key_id = first(env, &["AWS_ACCESS_KEY_ID"]);
        let secret = first(env, &["AWS_SECRET_ACCESS_KEY"]).map(Zeroizing::new);
        let (access_key_id, secret_access_key, session_token) = match (key_id, secret) {
            (Some(id), Some(secret)) => (
                Some(id),
                Some(secret),
                first(env, &["AWS_SESSION_TOKEN"]).map(Zeroizing::new),
            ),
            (Some(_), None) => {
                return Err(SettingsError::HalfCredentials {
                    set: "AWS_ACCESS_KEY_ID",
                    missing: "AWS_SECRET_ACCESS_KEY",
                })
            }
            (None, Some(_)) => {
                return Err(SettingsError::HalfCredentials {
                    set: "AWS_SECRET_ACCESS_KEY",
                    missing: "AWS_ACCESS_KEY_ID",
                })
            }
            (None, None) => (
                profile.access_key_id,
                profile.secret_access_key,
                profile.session_token,
            ),
        };
        let timeout = match timeout {
            Some(t) => t,
            None => match first(env, &["TVAULT_S3_TIMEOUT"]) {
                Some(v) => parse_timeout(&v).map_err(|why| SettingsError::Bad {
                    var: "TVAULT_S3_TIMEOUT",
                    why,
                })?,
                None => DEFAULT_TIMEOUT,
            },
        };
        Ok(S3Settings {
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            timeout,
        })
    }
}

/// Whole seconds, 1 to 3600.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<u64>() {
        Ok(secs) if (1..=MAX_TIMEOUT_SECS).contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "{text:?} is not a whole number of seconds from 1 to {MAX_TIMEOUT_SECS}"
        )),
    }
}

/// An `http(s)://host[:port]` endpoint, plain http only where allowed.
fn check_endpoint(endpoint: &str, allow_http: bool) -> Result<String, SettingsError> {
    let bad = |why: String| SettingsError::Bad {
        var: "AWS_ENDPOINT_URL",
        why: format!("{endpoint:?}: {why}"),
    };
    let url = url::Url::parse(endpoint).map_err(|e| bad(e.to_string()))?;
    let host = url.host_str().ok_or_else(|| bad("no host".into()))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http || is_loopback(host) => {}
        "http" => {
            return Err(SettingsError::PlainHttp {
                endpoint: endpoint.to_string(),
            })
        }
        other => return Err(bad(format!("scheme {other:?}; use https:// (or http://)"))),
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(bad(
            "an endpoint is scheme://host[:port]; put the bucket in the store URL (s3://BUCKET/PREFIX)"
                .into(),
        ));
    }
    Ok(endpoint.trim_end_matches('/').to_string())
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<S3Settings, SettingsError> {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // No shared files unless a test gives them.
        map.entry("HOME".into())
            .or_insert_with(|| "/nonexistent-home".into());
        S3Settings::from(&|var| map.get(var).cloned(), None)
    }

    #[test]
    fn environment_wins_and_defaults_apply() {
        let s = settings(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000/"),
            ("AWS_ENDPOINT", "http://127.0.0.2:1"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "SK"),
            ("AWS_SESSION_TOKEN", "T"),
            ("TVAULT_S3_TIMEOUT", "7"),
        ])
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.region, "eu-west-3");
        assert_eq!(s.access_key_id.as_deref(), Some("AK"));
        assert_eq!(s.session_token.as_ref().map(|t| t.as_str()), Some("T"));
        assert_eq!(s.timeout, Duration::from_secs(7));
        assert!(!format!("{s:?}").contains("SK"), "secrets are not printed");
        let d = settings(&[]).unwrap();
        assert_eq!((d.region.as_str(), d.endpoint), ("us-east-1", None));
        assert_eq!(d.timeout, DEFAULT_TIMEOUT);
        assert!(d.access_key_id.is_none());
        let s = settings(&[("AWS_ENDPOINT", "https://s3.example.net")]).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("https://s3.example.net"));
    }

    #[test]
    fn plain_http_only_on_loopback_or_when_allowed() {
        for ok in [
            "http://localhost:9000",
            "http://127.8.0.1",
            "http://[::1]:80",
            "https://s3.example.net",
        ] {
            assert!(settings(&[("AWS_ENDPOINT_URL", ok)]).is_ok(), "{ok}");
        }
        let far = [("AWS_ENDPOINT_URL", "http://10.0.0.5:9000")];
        assert!(matches!(
            settings(&far),
            Err(SettingsError::PlainHttp { .. })
        ));
        let allowed = [far[0], ("AWS_ALLOW_HTTP", "true")];
        assert!(settings(&allowed).is_ok());
        assert!(settings(&[far[0], ("AWS_ALLOW_HTTP", "maybe")]).is_err());
        for bad in ["ftp://h", "http://127.0.0.1/bucket", "not a url"] {
            assert!(settings(&[("AWS_ENDPOINT_URL", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn credentials_come_whole_from_one_place() {
        let half = settings(&[("AWS_ACCESS_KEY_ID", "AK")]).err().unwrap();
        assert!(half.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{half}");
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("c");
        std::fs::write(
            &creds,
            "[p]\naws_access_key_id=PK\naws_secret_access_key=PS\n",
        )
        .unwrap();
        let config = dir.path().join("f");
        std::fs::write(&config, "[profile p]\nregion = ap-south-1\n").unwrap();
        let files = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
            ("AWS_CONFIG_FILE", config.to_str().unwrap()),
            ("AWS_PROFILE", "p"),
        ];
        let s = settings(&files).unwrap();
        assert_eq!(s.access_key_id.as_deref(), Some("PK"));
        assert_eq!(s.region, "ap-south-1");
        let mut env_first = files.to_vec();
        env_first.extend([("AWS_ACCESS_KEY_ID", "EK"), ("AWS_SECRET_ACCESS_KEY", "ES")]);
        assert_eq!(
            settings(&env_first).unwrap().access_key_id.as_deref(),
            Some("EK")
        );
        let missing = [files[0], files[1], ("AWS_PROFILE", "q")];
        assert!(matches!(
            settings(&missing),
            Err(SettingsError::Profile(ProfileError::NoProfile { .. }))
        ));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        for bad in ["0", "-1", "1.5", "3601", "x"] {
            assert!(parse_timeout(bad).is_err(), "{bad}");
        }
        assert!(settings(&[("TVAULT_S3_TIMEOUT", "0")]).is_err());
    }
}
