//! What went wrong talking to the object store, named, with what to do about it. An
//! `object_store` error is sorted into the POSIX-like faults the store layer acts on (not
//! found, exists, changed) and service faults that end the operation ([`S3Error`]).

use std::error::Error as _;
use std::time::Duration;

use object_store::client::{HttpError, HttpErrorKind};

use super::settings::SettingsError;

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error(
        "{url}: the server refused the credentials ({code}): check AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY (or the profile AWS_PROFILE names), AWS_SESSION_TOKEN if they \
         are temporary, and this host's clock"
    )]
    Credentials { url: String, code: String },
    #[error(
        "{url}: access denied ({code}): the credentials may not do this here; check the \
         bucket policy and the user's permissions"
    )]
    Denied { url: String, code: String },
    #[error(
        "bucket {bucket:?} does not exist at {endpoint}: create it first (e.g. `aws s3 mb \
         s3://{bucket}`); tvault creates the prefix, never the bucket"
    )]
    NoBucket { bucket: String, endpoint: String },
    #[error(
        "{url}: the server is throttling requests (SlowDown / 503) and still was after \
         retrying for {secs} s; try again later"
    )]
    Throttled { url: String, secs: u64 },
    #[error(
        "{url}: no answer within {secs} s (the store's timeout: `--s3-timeout` on mount, \
         TVAULT_S3_TIMEOUT for every command)"
    )]
    Timeout { url: String, secs: u64 },
    #[error(
        "{url}: cannot reach the S3 endpoint {endpoint} ({why}); check AWS_ENDPOINT_URL and \
         that the server is up"
    )]
    Unreachable {
        url: String,
        endpoint: String,
        why: String,
    },
    #[error(
        "{url}: no AWS credentials: none in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the \
         shared credentials file, and no instance role answered; set them (or AWS_PROFILE)"
    )]
    NoCredentials { url: String },
    #[error("{url}: replaced by another writer since it was opened; open it again")]
    Changed { url: String },
    #[error(
        "{url}: the bucket holds a key that is not a valid path (an empty component, '.', \
         '..' or a control character), which tvault never uses; remove it: {detail}"
    )]
    BadKey { url: String, detail: String },
    #[error("{url}: {detail}")]
    Other { url: String, detail: String },
    #[error("S3 settings: {0}")]
    Settings(#[from] SettingsError),
}

/// What a failed request means to the caller.
#[derive(Debug)]
pub enum Fault {
    NotFound,
    Exists,
    /// A condition (If-Match, If-None-Match) did not hold.
    Precondition,
    Service(S3Error),
}

/// Where a request went, for naming it in errors.
pub struct Context<'a> {
    pub url: &'a str,
    pub bucket: &'a str,
    pub endpoint: &'a str,
    pub timeout: Duration,
}

/// Server error codes that mean the credentials are wrong (not merely too weak).
const CREDENTIAL_CODES: [&str; 8] = [
    "NotSignedUp",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
];
const THROTTLE_CODES: [&str; 4] = [
    "SlowDown",
    "ServiceUnavailable",
    "RequestLimitExceeded",
    "Throttling",
];

/// The `<Code>` of an S3 error body somewhere in `text`.
fn error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// The HTTP failure below `e`, if the request never got an answer.
fn http_kind(e: &object_store::Error) -> Option<(HttpErrorKind, String)> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(err) = at {
        if let Some(http) = err.downcast_ref::<HttpError>() {
            let why = http.source().map_or_else(|| http.to_string(), root_cause);
            return Some((http.kind(), why));
        }
        at = err.source();
    }
    None
}

/// The innermost message of an error chain (e.g. "Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

pub fn classify(e: &object_store::Error, cx: &Context<'_>) -> Fault {
    let text = e.to_string();
    let url = cx.url.to_string();
    let code = error_code(&text).map(str::to_string);
    let secs = cx.timeout.as_secs();
    match code.as_deref() {
        Some("NoSuchBucket") => {
            return Fault::Service(S3Error::NoBucket {
                bucket: cx.bucket.to_string(),
                endpoint: cx.endpoint.to_string(),
            })
        }
        Some(c) if CREDENTIAL_CODES.contains(&c) => {
            return Fault::Service(S3Error::Credentials {
                url,
                code: c.to_string(),
            })
        }
        Some(c) if THROTTLE_CODES.contains(&c) => {
            return Fault::Service(S3Error::Throttled { url, secs })
        }
        _ => {}
    }
    match e {
        object_store::Error::NotFound { .. } => return Fault::NotFound,
        object_store::Error::AlreadyExists { .. } => return Fault::Exists,
        object_store::Error::Precondition { .. } | object_store::Error::NotModified { .. } => {
            return Fault::Precondition
        }
        object_store::Error::Unauthenticated { .. } => {
            return Fault::Service(S3Error::Credentials {
                url,
                code: code.unwrap_or_else(|| "401 Unauthorized".into()),
            })
        }
        object_store::Error::InvalidPath { source } => {
            return Fault::Service(S3Error::BadKey {
                url,
                detail: source.to_string(),
            })
        }
        object_store::Error::PermissionDenied { .. } => {
            return Fault::Service(S3Error::Denied {
                url,
                code: code.unwrap_or_else(|| "403 Forbidden".into()),
            })
        }
        _ => {}
    }
    if text.contains(" 503 ") {
        return Fault::Service(S3Error::Throttled { url, secs });
    }
    match http_kind(e) {
        Some((HttpErrorKind::Timeout, _)) => Fault::Service(S3Error::Timeout { url, secs }),
        Some((HttpErrorKind::Connect | HttpErrorKind::Request, why)) => {
            Fault::Service(S3Error::Unreachable {
                url,
                endpoint: cx.endpoint.to_string(),
                why,
            })
        }
        _ => Fault::Service(S3Error::Other { url, detail: text }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context<'static> {
        Context {
            url: "s3://b/p/x",
            bucket: "b",
            endpoint: "http://127.0.0.1:9",
            timeout: Duration::from_secs(5),
        }
    }

    fn generic(body: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: body.to_string().into(),
        }
    }

    fn service(f: Fault) -> S3Error {
        match f {
            Fault::Service(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_codes_name_the_problem() {
        let body = |code: &str| {
            generic(&format!(
                "Server returned non-2xx status code: 403 Forbidden: <?xml?><Error><Code>{code}</Code></Error>"
            ))
        };
        for code in ["InvalidAccessKeyId", "SignatureDoesNotMatch"] {
            let e = service(classify(&body(code), &cx()));
            assert!(matches!(e, S3Error::Credentials { .. }), "{e}");
            assert!(e.to_string().contains(code) && e.to_string().contains("AWS_ACCESS_KEY_ID"));
        }
        let e = service(classify(&body("NoSuchBucket"), &cx()));
        assert!(e.to_string().contains("create it first"), "{e}");
        assert!(matches!(
            service(classify(&body("SlowDown"), &cx())),
            S3Error::Throttled { secs: 5, .. }
        ));
        let unavailable = generic("Server returned non-2xx status code: 503 Service Unavailable: ");
        assert!(matches!(
            service(classify(&unavailable, &cx())),
            S3Error::Throttled { .. }
        ));
        let other = service(classify(&generic("odd"), &cx()));
        assert_eq!(other.to_string(), "s3://b/p/x: Generic S3 error: odd");
    }

    #[test]
    fn requests_without_an_answer() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let wrap = |kind| object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(kind, std::io::Error::from(refused.kind()))),
        };
        match service(classify(&wrap(HttpErrorKind::Connect), &cx())) {
            S3Error::Unreachable { endpoint, why, .. } => {
                assert_eq!(endpoint, "http://127.0.0.1:9");
                assert_eq!(why, refused.to_string());
            }
            other => panic!("{other}"),
        }
        let e = service(classify(&wrap(HttpErrorKind::Timeout), &cx()));
        assert!(e.to_string().contains("no answer within 5 s"), "{e}");
    }

    #[test]
    fn posix_faults_are_told_apart() {
        let src = || -> Box<dyn std::error::Error + Send + Sync> { "x".into() };
        let nf = object_store::Error::NotFound {
            path: "k".into(),
            source: src(),
        };
        assert!(matches!(classify(&nf, &cx()), Fault::NotFound));
        let ex = object_store::Error::AlreadyExists {
            path: "k".into(),
            source: src(),
        };
        assert!(matches!(classify(&ex, &cx()), Fault::Exists));
        let pre = object_store::Error::Precondition {
            path: "k".into(),
            source: src(),
        };
        assert!(matches!(classify(&pre, &cx()), Fault::Precondition));
        let denied = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: src(),
        };
        assert!(matches!(
            service(classify(&denied, &cx())),
            S3Error::Denied { .. }
        ));
        let bad = object_store::Error::from(object_store::path::Path::parse("a//b").unwrap_err());
        let e = service(classify(&bad, &cx()));
        assert!(matches!(e, S3Error::BadKey { .. }), "{e}");
        assert!(e.to_string().contains("remove it"), "{e}");
        let unauth = object_store::Error::Unauthenticated {
            path: "k".into(),
            source: src(),
        };
        assert!(matches!(
            service(classify(&unauth, &cx())),
            S3Error::Credentials { .. }
        ));
    }
}
