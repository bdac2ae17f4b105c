//! The object store client (`object_store`'s S3 implementation) and the tokio runtime it
//! runs on, private to this backend: the store's API is blocking, so each call is run to
//! completion here under the store's timeout, and its failure sorted by `errors.rs`.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};
use tokio::runtime::Runtime;

use super::errors::{classify, Context, Fault, S3Error};
use super::location::S3Location;
use super::settings::S3Settings;
use super::DIR_MARKER;
use crate::store::{Result, StoreError};

/// Threads of the runtime: requests are I/O bound, and the callers' threads (the mount's
/// workers) drive their own requests.
const RUNTIME_THREADS: usize = 2;
/// Connecting takes at most this long (or the store's timeout, if shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Client {
    pub store: Arc<AmazonS3>,
    runtime: Runtime,
    pub location: S3Location,
    /// The endpoint, for messages (`https://s3.REGION.amazonaws.com` when none is set).
    endpoint: String,
    timeout: Duration,
    /// Whether credentials were given (environment or profile), rather than left to the
    /// instance metadata service.
    has_keys: bool,
}

impl Client {
    pub fn new(location: &S3Location, settings: &S3Settings) -> Result<Client> {
        let timeout = settings.timeout;
        let mut options = ClientOptions::new()
            .with_timeout(timeout)
            .with_connect_timeout(timeout.min(CONNECT_TIMEOUT));
        let endpoint = match &settings.endpoint {
            Some(e) => {
                // settings.rs allowed plain http only on loopback or by AWS_ALLOW_HTTP.
                options = options.with_allow_http(e.starts_with("http://"));
                e.clone()
            }
            None => format!("https://s3.{}.amazonaws.com", settings.region),
        };
        // Retries stop starting once the timeout has passed; `run` bounds the whole call.
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 10,
            retry_timeout: timeout,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&location.bucket)
            .with_region(&settings.region)
            .with_client_options(options)
            .with_retry(retry)
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        if let Some(e) = &settings.endpoint {
            // S3-compatible servers are addressed by path (`ENDPOINT/BUCKET/KEY`).
            builder = builder
                .with_endpoint(e)
                .with_virtual_hosted_style_request(false);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret.as_str());
            if let Some(token) = &settings.session_token {
                builder = builder.with_token(token.as_str());
            }
        }
        let url = location.to_string();
        let store = builder.build().map_err(|e| {
            StoreError::S3(S3Error::Other {
                url: url.clone(),
                detail: e.to_string(),
            })
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("tvault-s3")
            .enable_all()
            .build()
            .map_err(|source| StoreError::Io {
                path: url.into(),
                source,
            })?;
        Ok(Client {
            store: Arc::new(store),
            runtime,
            location: location.clone(),
            endpoint,
            timeout,
            has_keys: settings.access_key_id.is_some(),
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// `s3://BUCKET/PREFIX/REL`, for messages.
    /// The endpoint requests go to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn url(&self, rel: &str) -> String {
        let root = self.location.to_string();
        if rel.is_empty() {
            root
        } else {
            format!("{root}/{rel}")
        }
    }

    /// The object key of store path `rel`, checked: every component a store path may have,
    /// none of them the backend's directory marker, within S3's key length.
    pub fn key(&self, rel: &str) -> Result<Key> {
        let bad = |why| StoreError::InvalidPath {
            rel: rel.to_string(),
            why,
        };
        let key = self.location.checked_key(rel).map_err(bad)?;
        Key::parse(&key).map_err(|_| bad("not a valid object key"))
    }

    /// The key of directory `rel`'s marker.
    pub fn marker(&self, rel: &str) -> Result<Key> {
        let dir = self.location.key(rel);
        let key = if dir.is_empty() {
            DIR_MARKER.to_string()
        } else {
            format!("{dir}/{DIR_MARKER}")
        };
        self.key(rel)?;
        Key::parse(&key).map_err(|_| StoreError::InvalidPath {
            rel: rel.to_string(),
            why: "not a valid object key",
        })
    }

    /// Runs `fut` to completion, within the timeout, sorting its failure.
    pub fn run<T>(
        &self,
        rel: &str,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> std::result::Result<T, Fault> {
        let timeout = self.timeout;
        match self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, fut).await })
        {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.classify(rel, &e)),
            Err(_) => Err(Fault::Service(S3Error::Timeout {
                url: self.url(rel),
                secs: timeout.as_secs(),
            })),
        }
    }

    /// Runs a future that needs no timeout of its own (it is made of timed calls).
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.runtime.block_on(fut)
    }

    /// Starts `fut` on the runtime (for uploads of parts in parallel).
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(fut)
    }

    pub fn classify(&self, rel: &str, e: &object_store::Error) -> Fault {
        let url = self.url(rel);
        let fault = classify(
            e,
            &Context {
                url: &url,
                bucket: &self.location.bucket,
                endpoint: &self.endpoint,
                timeout: self.timeout,
            },
        );
        match fault {
            // Without keys, object_store asks the instance metadata service, which fails
            // away from a cloud host.
            Fault::Service(S3Error::Other { url, .. }) if !self.has_keys => {
                Fault::Service(S3Error::NoCredentials { url })
            }
            other => other,
        }
    }

    /// `fault` as the store's error for `rel`: missing and existing paths as the errno a
    /// directory would give, the rest named.
    pub fn error(&self, rel: &str, fault: Fault) -> StoreError {
        let errno = |n| StoreError::Io {
            path: self.url(rel).into(),
            source: io::Error::from_raw_os_error(n),
        };
        match fault {
            Fault::NotFound => errno(libc::ENOENT),
            Fault::Exists => errno(libc::EEXIST),
            Fault::Precondition => StoreError::S3(S3Error::Changed { url: self.url(rel) }),
            Fault::Service(e) => StoreError::S3(e),
        }
    }

    /// [`Client::run`], with the failure as the store's error.
    pub fn call<T>(
        &self,
        rel: &str,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<T> {
        self.run(rel, fut).map_err(|f| self.error(rel, f))
    }
}

/// A read's failure as an I/O error (the mount answers `EIO`, or `ENOENT` for a vanished
/// object), keeping the named cause.
pub fn io_error(fault: Fault, url: &str) -> io::Error {
    match fault {
        Fault::NotFound => io::Error::new(
            io::ErrorKind::NotFound,
            format!("{url}: removed since it was opened"),
        ),
        Fault::Exists => io::Error::from_raw_os_error(libc::EEXIST),
        Fault::Precondition => io::Error::other(S3Error::Changed {
            url: url.to_string(),
        }),
        Fault::Service(e @ S3Error::Timeout { .. }) => io::Error::new(io::ErrorKind::TimedOut, e),
        Fault::Service(e) => io::Error::other(e),
    }
}
