//! [`S3Store`]: an object store in an S3 bucket (AWS or any S3-compatible
//! server: MinIO, s3s-fs, Ceph RGW), through aws-sdk-s3.
//!
//! State: the SDK client and a private two-thread tokio runtime that runs
//! it. Every [`ObjectStore`] call spawns its request on that runtime and
//! blocks the calling thread until it finishes, so the store works from any
//! thread, including one that belongs to another runtime (it is dropped
//! with `shutdown_background`, which is allowed anywhere).
//!
//! - Objects larger than [`MULTIPART_THRESHOLD`] go up as a multipart
//!   upload of [`PART_BYTES`] parts (aborted on failure); S3 shows a
//!   multipart object only once it completes, so puts stay atomic.
//! - Each request is tried `max_attempts` times (the URL's parameter) with
//!   the SDK's exponential backoff and jitter; connect and per-attempt
//!   timeouts bound a dead server. What still fails is
//!   [`store::Error::Unavailable`] (dispatch failures, timeouts, 5xx and
//!   throttling), [`store::Error::Denied`] (401/403, a missing bucket) or
//!   [`store::Error::NotFound`].
//! - Checksums: the SDK's default request checksums (aws-chunked bodies) are
//!   turned off (`WhenRequired`); the repository verifies every byte itself
//!   (pack names are the blake3 of their bytes, blobs are sealed).

use std::future::Future;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::error::Error as RepoError;
use super::store::{Error, ObjectInfo, ObjectStore};
use super::url::{RepoUrl, S3Location};

/// Objects larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 16 << 20;
/// The size of each part but the last (S3's minimum is 5 MiB).
pub const PART_BYTES: usize = 8 << 20;
const _: () = assert!(PART_BYTES >= 5 << 20 && PART_BYTES <= MULTIPART_THRESHOLD);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

pub struct S3Store {
    location: S3Location,
    described: String,
    client: aws_sdk_s3::Client,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for S3Store {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Keys of the `AWS_PROFILE` (else `default`) profile in the shared
/// credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else
/// `~/.aws/credentials`), as the AWS CLI reads them.
fn profile_credentials() -> Option<(String, String, Option<String>)> {
    let path = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|home| std::path::Path::new(&home).join(".aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    parse_credentials(&text, &profile)
}

/// The access key, secret key and optional session token of `profile` in
/// an INI-style credentials file.
fn parse_credentials(text: &str, profile: &str) -> Option<(String, String, Option<String>)> {
    let (mut section, mut access, mut secret, mut token) = (String::new(), None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_owned();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if section != profile {
            continue;
        }
        let value = Some(value.trim().to_owned()).filter(|v| !v.is_empty());
        match key.trim() {
            "aws_access_key_id" => access = value,
            "aws_secret_access_key" => secret = value,
            "aws_session_token" => token = value,
            _ => {}
        }
    }
    Some((access?, secret?, token))
}

impl S3Store {
    /// Builds the client; no request is sent yet.
    pub fn new(location: S3Location) -> Result<S3Store, RepoError> {
        S3Store::with_credentials(location, true)
    }

    /// Builds the client. Without credentials in the URL, the server's own
    /// (`AWS_*` environment, the shared credentials file) are used only
    /// when `server_credentials` says the caller may lend them (the
    /// operator, or a tenant the operator granted this URL with
    /// `--s3-grant`); otherwise [`RepoError::NotPermitted`].
    pub fn with_credentials(
        location: S3Location,
        server_credentials: bool,
    ) -> Result<S3Store, RepoError> {
        let described = RepoUrl::S3(location.clone()).to_string();
        let (access_key, secret_key, token) = match (&location.access_key, &location.secret_key) {
            (Some(a), Some(s)) => (a.clone(), s.clone(), None),
            _ if !server_credentials => {
                return Err(RepoError::NotPermitted(format!(
                    "{described}: give this repository's own access_key and secret_key in the URL; the server's S3 credentials serve only repositories the operator grants (cairn up --s3-grant TENANT=URL_PREFIX)"
                )));
            }
            _ => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(a), Some(s)) => (a, s, env("AWS_SESSION_TOKEN")),
                _ => match profile_credentials() {
                    Some(found) => found,
                    None => {
                        return Err(RepoError::InvalidUrl {
                            url: described,
                            reason: "no S3 credentials: give access_key and secret_key in the URL, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or put them in the AWS_PROFILE (else default) profile of ~/.aws/credentials".into(),
                        });
                    }
                },
            },
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-s3")
            .enable_all()
            .build()
            .map_err(|e| RepoError::InvalidArgument(format!("S3 client runtime: {e}")))?;
        let _enter = runtime.enter();
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(location.region.clone()))
            .credentials_provider(Credentials::new(
                access_key, secret_key, token, None, "cairn",
            ))
            .force_path_style(location.path_style)
            .http_client(http)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(location.max_attempts)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &location.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let client = aws_sdk_s3::Client::from_conf(config.build());
        drop(_enter);
        Ok(S3Store {
            location,
            described,
            client,
            runtime: Some(runtime),
        })
    }

    fn full_key(&self, key: &str) -> String {
        if self.location.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.location.prefix)
        }
    }

    /// Runs `fut` on the private runtime and waits for it.
    fn run<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let runtime = self.runtime.as_ref().expect("runtime lives until drop");
        match futures::executor::block_on(runtime.spawn(fut)) {
            Ok(value) => value,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    fn map<E, R>(&self, op: &'static str, key: &str, e: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HasStatus,
    {
        let store = self.described.clone();
        let key = key.to_owned();
        // The full error (with whatever the remote sent) goes to the
        // server's debug log only; replies carry a status and an S3 code.
        tracing::debug!(store = %store, op, key = %key, error = %DisplayErrorContext(&e), "S3 request failed");
        let reason = match &e {
            SdkError::ServiceError(service) => {
                let status = service.raw().status_code();
                match service.err().code().and_then(safe_code) {
                    Some(code) => format!("HTTP {status} {code}"),
                    None => format!("HTTP {status}"),
                }
            }
            SdkError::DispatchFailure(failure) => {
                if failure.is_timeout() {
                    "timed out connecting".into()
                } else if failure.is_io() {
                    "connection failed".into()
                } else {
                    "request could not be sent".into()
                }
            }
            SdkError::TimeoutError(_) => "timed out".into(),
            SdkError::ResponseError(_) => "unreadable response".into(),
            SdkError::ConstructionFailure(_) => "request could not be built".into(),
            _ => "request failed".into(),
        };
        match &e {
            SdkError::ServiceError(service) => {
                let status = service.raw().status_code();
                let code = service.err().code().unwrap_or("");
                if status == 404 && code != "NoSuchBucket" || code == "NoSuchKey" {
                    Error::NotFound { store, key }
                } else if status == 401 || status == 403 || code == "NoSuchBucket" {
                    Error::Denied {
                        store,
                        op,
                        key,
                        reason,
                    }
                } else if status >= 500 || status == 429 || code == "SlowDown" {
                    Error::Unavailable {
                        store,
                        op,
                        key,
                        reason,
                    }
                } else {
                    Error::Io {
                        store,
                        op,
                        key,
                        reason,
                    }
                }
            }
            SdkError::DispatchFailure(_)
            | SdkError::TimeoutError(_)
            | SdkError::ResponseError(_) => Error::Unavailable {
                store,
                op,
                key,
                reason,
            },
            _ => Error::Io {
                store,
                op,
                key,
                reason,
            },
        }
    }

    fn put_multipart(&self, key: &str, data: Bytes) -> Result<(), Error> {
        let (client, bucket, full) = (
            self.client.clone(),
            self.location.bucket.clone(),
            self.full_key(key),
        );
        let created = self
            .run({
                let (client, bucket, full) = (client.clone(), bucket.clone(), full.clone());
                async move {
                    client
                        .create_multipart_upload()
                        .bucket(bucket)
                        .key(full)
                        .send()
                        .await
                }
            })
            .map_err(|e| self.map("put", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let mut parts = vec![];
        let mut result = Ok(());
        for (i, start) in (0..data.len()).step_by(PART_BYTES).enumerate() {
            let body = data.slice(start..(start + PART_BYTES).min(data.len()));
            let number = i as i32 + 1;
            let sent = self.run({
                let (client, bucket, full, upload_id) = (
                    client.clone(),
                    bucket.clone(),
                    full.clone(),
                    upload_id.clone(),
                );
                async move {
                    client
                        .upload_part()
                        .bucket(bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .part_number(number)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                }
            });
            match sent {
                Ok(part) => parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .build(),
                ),
                Err(e) => {
                    result = Err(self.map("put", key, e));
                    break;
                }
            }
        }
        if result.is_ok() {
            let completed = self.run({
                let (client, bucket, full, upload_id) = (
                    client.clone(),
                    bucket.clone(),
                    full.clone(),
                    upload_id.clone(),
                );
                async move {
                    client
                        .complete_multipart_upload()
                        .bucket(bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .set_parts(Some(parts))
                                .build(),
                        )
                        .send()
                        .await
                }
            });
            match completed {
                Ok(_) => return Ok(()),
                Err(e) => result = Err(self.map("put", key, e)),
            }
        }
        // Best effort: a dead server keeps the parts until its own expiry.
        let _ = self.run(async move {
            client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(full)
                .upload_id(upload_id)
                .send()
                .await
        });
        result
    }
}

/// The HTTP status of a raw response, for error mapping.
pub trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.described.clone()
    }

    fn put(&self, key: &str, data: Bytes) -> Result<(), Error> {
        if data.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(key, data);
        }
        let (client, bucket, full) = (
            self.client.clone(),
            self.location.bucket.clone(),
            self.full_key(key),
        );
        self.run(async move {
            client
                .put_object()
                .bucket(bucket)
                .key(full)
                .body(ByteStream::from(data))
                .send()
                .await
        })
        .map(|_| ())
        .map_err(|e| self.map("put", key, e))
    }

    fn get(&self, key: &str, max: u64) -> Result<Vec<u8>, Error> {
        self.get_inner(key, None, max)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, Error> {
        let Some(last) = offset.checked_add(len).and_then(|end| end.checked_sub(1)) else {
            return Ok(vec![]);
        };
        self.get_inner(key, Some(format!("bytes={offset}-{last}")), len)
    }

    fn head(&self, key: &str) -> Result<Option<u64>, Error> {
        let (client, bucket, full) = (
            self.client.clone(),
            self.location.bucket.clone(),
            self.full_key(key),
        );
        let result =
            self.run(async move { client.head_object().bucket(bucket).key(full).send().await });
        match result {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match self.map("head", key, e) {
                Error::NotFound { .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<ObjectInfo>, Error> {
        let (client, bucket) = (self.client.clone(), self.location.bucket.clone());
        let full_prefix = self.full_key(prefix);
        let start_after = after.map(|a| self.full_key(a));
        let strip = if self.location.prefix.is_empty() {
            0
        } else {
            self.location.prefix.len() + 1
        };
        let max_keys = max.clamp(1, 1000) as i32;
        let listed = self
            .run(async move {
                client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(full_prefix)
                    .set_start_after(start_after)
                    .max_keys(max_keys)
                    .send()
                    .await
            })
            .map_err(|e| self.map("list", prefix, e))?;
        let mut objects: Vec<ObjectInfo> = listed
            .contents()
            .iter()
            .filter_map(|o| {
                let key = o.key()?.get(strip..)?.to_owned();
                Some(ObjectInfo {
                    key,
                    size: o.size().unwrap_or(0).max(0) as u64,
                })
            })
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.truncate(max);
        Ok(objects)
    }

    fn delete(&self, key: &str) -> Result<(), Error> {
        let (client, bucket, full) = (
            self.client.clone(),
            self.location.bucket.clone(),
            self.full_key(key),
        );
        self.run(async move { client.delete_object().bucket(bucket).key(full).send().await })
            .map(|_| ())
            .map_err(|e| self.map("delete", key, e))
    }
}

/// Why a bounded GET failed.
enum GetFailure<E> {
    Sdk(E),
    Body(String),
    Oversized,
}

impl S3Store {
    /// GETs `key` (a `range` of `len` bytes, or the whole object up to
    /// `max`), collecting the body chunk by chunk and stopping past `max`:
    /// the declared length is checked before reading and the bytes that
    /// actually arrive after. A server that sends more than asked is
    /// [`Error::Oversized`].
    fn get_inner(&self, key: &str, range: Option<String>, max: u64) -> Result<Vec<u8>, Error> {
        let (client, bucket, full) = (
            self.client.clone(),
            self.location.bucket.clone(),
            self.full_key(key),
        );
        let result = self.run(async move {
            let mut object = client
                .get_object()
                .bucket(bucket)
                .key(full)
                .set_range(range)
                .send()
                .await
                .map_err(GetFailure::Sdk)?;
            let declared = object.content_length().unwrap_or(0).max(0) as u64;
            if declared > max {
                return Err(GetFailure::Oversized);
            }
            let mut out = Vec::with_capacity(declared as usize);
            while let Some(piece) = object.body.next().await {
                let piece = piece.map_err(|e| GetFailure::Body(short_reason(&e.to_string())))?;
                if out.len() as u64 + piece.len() as u64 > max {
                    return Err(GetFailure::Oversized);
                }
                out.extend_from_slice(&piece);
            }
            Ok(out)
        });
        result.map_err(|e| match e {
            GetFailure::Sdk(sdk) => self.map("get", key, sdk),
            GetFailure::Body(reason) => Error::Unavailable {
                store: self.described.clone(),
                op: "get",
                key: key.to_owned(),
                reason: format!("reading the body: {reason}"),
            },
            GetFailure::Oversized => Error::oversized(self.described.clone(), "get", key, max),
        })
    }
}

/// An error text from the SDK's own layers (not the remote's words),
/// cut short: the first line, at most 120 characters.
fn short_reason(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    line.chars().take(120).collect()
}

/// An S3 error code as the remote sent it, kept only when it looks like
/// one (`NoSuchKey`, `AccessDenied`): letters and digits, at most 64.
fn safe_code(code: &str) -> Option<&str> {
    let ok =
        !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then_some(code)
}

#[cfg(test)]
mod profile_tests {
    use super::parse_credentials;

    #[test]
    fn a_profile_is_read_from_the_shared_credentials_file() {
        let text = "# comment\n[default]\naws_access_key_id = AK1\naws_secret_access_key=SK1\n\n\
                    [backup]\naws_access_key_id=AK2\naws_secret_access_key = SK2\naws_session_token = T2\n";
        assert_eq!(
            parse_credentials(text, "default"),
            Some(("AK1".into(), "SK1".into(), None))
        );
        assert_eq!(
            parse_credentials(text, "backup"),
            Some(("AK2".into(), "SK2".into(), Some("T2".into())))
        );
        assert_eq!(parse_credentials(text, "other"), None);
        assert_eq!(parse_credentials("[x]\naws_access_key_id=A\n", "x"), None);
    }
}
