//! Object-store backends from URLs.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::ObjectStore;

/// S3 settings that override the environment (`AWS_ENDPOINT_URL`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, ...).
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible service, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Access key id.
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<String>,
    /// Allow plain HTTP endpoints (an S3 server on loopback, say).
    pub allow_http: bool,
}

/// Error opening a backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The URL is neither `file:///path` nor `s3://bucket`.
    #[error("unsupported store URL {0:?}: use file:///absolute/path or s3://bucket[/prefix]")]
    Url(String),
    /// The local directory cannot be created.
    #[error("cannot create store directory {path}: {source}")]
    Dir {
        /// the directory
        path: String,
        /// the cause
        source: std::io::Error,
    },
    /// The backend rejected its configuration.
    #[error("cannot open store {url}: {source}")]
    Config {
        /// the URL
        url: String,
        /// the cause
        source: object_store::Error,
    },
}

/// Opens the object store named by `url`.
pub fn open(url: &str, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, BackendError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(BackendError::Url(url.to_string()));
        }
        std::fs::create_dir_all(path)
            .map_err(|source| BackendError::Dir { path: path.into(), source })?;
        let fs = LocalFileSystem::new_with_prefix(path)
            .map_err(|source| BackendError::Config { url: url.into(), source })?;
        return Ok(Arc::new(fs));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(BackendError::Url(url.to_string()));
        }
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(e) = &s3.endpoint {
            b = b.with_endpoint(e);
        }
        if let Some(r) = &s3.region {
            b = b.with_region(r);
        }
        if let Some(k) = &s3.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(k) = &s3.secret_access_key {
            b = b.with_secret_access_key(k);
        }
        if s3.allow_http {
            b = b.with_allow_http(true);
        }
        let store = b.build().map_err(|source| BackendError::Config { url: url.into(), source })?;
        let prefix = prefix.trim_matches('/');
        return Ok(if prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        });
    }
    Err(BackendError::Url(url.to_string()))
}
