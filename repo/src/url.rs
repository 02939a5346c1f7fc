//! [`RepoUrl`]: where a repository lives, parsed from the URL a person
//! gives `cairn repo add NAME URL`.
//!
//! - `file:///abs/dir`: a [`super::FileStore`] in that directory.
//! - `s3://bucket[/prefix]?endpoint=http://127.0.0.1:9000&region=us-east-1&path_style=true`:
//!   a [`super::S3Store`]. Query parameters: `endpoint` (default: AWS),
//!   `region` (default `AWS_REGION`, else `us-east-1`), `path_style`
//!   (default true with an endpoint, else false), `access_key` and
//!   `secret_key` (default `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`, and
//!   `AWS_SESSION_TOKEN`), `max_attempts` (retries per request, default 5,
//!   1..=20). Values may be percent-encoded.
//!
//! `file:` URLs and S3 endpoints are read by the `url` crate (with the
//! extra strictness the allowlist needs); the `s3:` location and query are
//! split by hand, for the reasons given in [`RepoUrl::parse`].
//!
//! `Display` never shows the secret key, so a URL can go in logs and
//! replies.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_schema::repo::redact_url;

use super::error::{Error, Result};
use super::store::ObjectStore;

/// A parsed repository URL.
#[derive(Clone, PartialEq, Eq)]
pub enum RepoUrl {
    File { path: PathBuf },
    S3(S3Location),
}

/// An S3 bucket and key prefix, with how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`;
    /// empty for the whole bucket.
    pub prefix: String,
    /// `http://host:port` of an S3-compatible server; `None` for AWS.
    pub endpoint: Option<String>,
    pub region: String,
    pub path_style: bool,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// Attempts per request (the first try included), with backoff.
    pub max_attempts: u32,
}

/// An S3 endpoint as the allowlist compares it: scheme, host (lower
/// case) and port (the scheme's default when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub https: bool,
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `http://HOST[:PORT]` or `https://HOST[:PORT]`: no user info, path,
    /// query or fragment, so what is compared is what is dialled. HOST is
    /// a DNS name or IPv4 address (letters, digits, `.`, `-`) or an IPv6
    /// address in brackets.
    pub fn parse(text: &str) -> Option<Endpoint> {
        // Only an authority may follow the scheme: no path (not even `/`),
        // query, fragment, user info, escapes or blanks, all of which the
        // URL parser would accept or quietly normalise.
        let authority = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))?;
        let clean = !authority.is_empty()
            && !authority.ends_with(':')
            && !authority
                .bytes()
                .any(|b| b <= b' ' || matches!(b, b'/' | b'?' | b'#' | b'@' | b'%' | b'\\'));
        if !clean {
            return None;
        }
        let url = ::url::Url::parse(text).ok()?;
        let host = match url.host()? {
            // The parser lower-cases names; the allowlist also wants
            // plain DNS names (no `_`, no IDNA).
            ::url::Host::Domain(name) => {
                let ok = name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                if !ok {
                    return None;
                }
                name.to_owned()
            }
            // Addresses in their canonical form, so `127.1` and
            // `127.0.0.1` are the same endpoint.
            ::url::Host::Ipv4(ip) => ip.to_string(),
            ::url::Host::Ipv6(ip) => format!("[{ip}]"),
        };
        let port = url.port_or_known_default().filter(|p| *p != 0)?;
        Some(Endpoint {
            https: url.scheme() == "https",
            host,
            port,
        })
    }
}

impl S3Location {
    /// The endpoint, parsed (`None`: AWS).
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint.as_deref().and_then(Endpoint::parse)
    }

    /// Whether this location lies under `allowed` (an operator's
    /// `--s3-allow`/`--s3-grant` prefix), compared part by part: the same
    /// endpoint (scheme, host, port; or both AWS), the same bucket, and a
    /// key prefix that starts with the allowed one at a `/` boundary.
    /// Never a raw string prefix: `s3://b?endpoint=http://evil` is not
    /// under `s3://b`.
    pub fn is_under(&self, allowed: &S3Location) -> bool {
        let same_endpoint = match (&self.endpoint, &allowed.endpoint) {
            (None, None) => true,
            (Some(_), Some(_)) => {
                self.endpoint().is_some() && self.endpoint() == allowed.endpoint()
            }
            _ => false,
        };
        let prefix_ok = allowed.prefix.is_empty()
            || self.prefix == allowed.prefix
            || self
                .prefix
                .strip_prefix(&allowed.prefix)
                .is_some_and(|rest| rest.starts_with('/'));
        same_endpoint && self.bucket == allowed.bucket && prefix_ok
    }
}

impl fmt::Debug for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", RepoUrl::S3(self.clone()))
    }
}

impl fmt::Debug for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoUrl({self})")
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoUrl::File { path } => write!(f, "file://{}", path.display()),
            RepoUrl::S3(s3) => {
                write!(f, "s3://{}", s3.bucket)?;
                if !s3.prefix.is_empty() {
                    write!(f, "/{}", s3.prefix)?;
                }
                write!(f, "?region={}", s3.region)?;
                if let Some(endpoint) = &s3.endpoint {
                    write!(f, "&endpoint={endpoint}")?;
                }
                write!(f, "&path_style={}", s3.path_style)
            }
        }
    }
}

fn percent_decode(url: &str, value: &str) -> Result<String> {
    // The value is not echoed: it may be a secret.
    let bad = || Error::InvalidUrl {
        url: redact_url(url),
        reason: "bad percent-encoding (a % not followed by two hex digits, or not UTF-8)".into(),
    };
    // The decoder keeps a stray `%` as it is; a URL with one is refused.
    let well_formed = value
        .split('%')
        .skip(1)
        .all(|after| after.len() >= 2 && after.as_bytes()[..2].iter().all(u8::is_ascii_hexdigit));
    if !well_formed {
        return Err(bad());
    }
    percent_encoding::percent_decode_str(value)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| bad())
}

impl RepoUrl {
    pub fn parse(url: &str) -> Result<RepoUrl> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: redact_url(url),
            reason: reason.to_owned(),
        };
        if url.starts_with("file:") {
            // `.` and `..` segments are refused before the URL parser
            // would resolve them by text: `/a/link/../b` is not `/a/b` to
            // the kernel when `link` is a symbolic link, and a path that
            // climbs out of its root is a mistake to name, not to mend.
            let raw_path = url.split(['?', '#']).next().unwrap_or(url);
            let raw_path = percent_decode(url, raw_path)?;
            if raw_path.split('/').any(|p| p == "." || p == "..") {
                return Err(bad("the path may not contain . or .. parts"));
            }
            // Then the URL parser; the escapes are decoded strictly.
            let parsed = ::url::Url::parse(url).map_err(|e| bad(&format!("not a URL: {e}")))?;
            if !url.starts_with("file:///") || parsed.host().is_some() {
                return Err(bad("a file URL needs an absolute path: file:///abs/dir"));
            }
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(bad("a file URL takes no query"));
            }
            let path = percent_decode(url, parsed.path())?;
            return Ok(RepoUrl::File {
                path: PathBuf::from(path),
            });
        }
        // `s3:` URLs are split by hand: the URL parser would resolve `..`
        // in the prefix before it could be refused, and its query decoder
        // turns `+` into a space, which would change a secret key.
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad(
                "expected file:///abs/dir or s3://bucket/prefix?endpoint=…",
            ));
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3 to 63 characters of a-z, 0-9, '-' and '.'",
            ));
        }
        let prefix = prefix.trim_matches('/').to_owned();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            return Err(bad("the prefix may not contain . or .. parts"));
        }
        let mut s3 = S3Location {
            bucket: bucket.to_owned(),
            prefix,
            endpoint: None,
            region: std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| "us-east-1".into()),
            path_style: false,
            access_key: None,
            secret_key: None,
            max_attempts: 5,
        };
        let mut path_style = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| bad(&format!("query parameter {pair:?} has no value")))?;
            let value = percent_decode(url, value)?;
            match name {
                "endpoint" => {
                    let endpoint = value.trim_end_matches('/').to_owned();
                    if Endpoint::parse(&endpoint).is_none() {
                        return Err(bad(
                            "endpoint must be http://HOST[:PORT] or https://HOST[:PORT] (no user, path or query)",
                        ));
                    }
                    s3.endpoint = Some(endpoint);
                }
                "region" => {
                    let ok = (1..=32).contains(&value.len())
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                    if !ok {
                        return Err(bad("region must be 1 to 32 characters of a-z, 0-9 and '-'"));
                    }
                    s3.region = value
                }
                "path_style" => {
                    path_style = Some(match value.as_str() {
                        "true" | "1" => true,
                        "false" | "0" => false,
                        _ => return Err(bad("path_style must be true or false")),
                    })
                }
                "access_key" => s3.access_key = Some(value),
                "secret_key" => s3.secret_key = Some(value),
                "max_attempts" => {
                    s3.max_attempts = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=20).contains(n))
                        .ok_or_else(|| bad("max_attempts must be 1 to 20"))?
                }
                other => return Err(bad(&format!("unknown query parameter {other:?}"))),
            }
        }
        s3.path_style = path_style.unwrap_or(s3.endpoint.is_some());
        if s3.access_key.is_some() != s3.secret_key.is_some() {
            return Err(bad("give both access_key and secret_key, or neither"));
        }
        Ok(RepoUrl::S3(s3))
    }

    /// Opens the store the URL names (a file repo's directory is created
    /// when missing; S3 is not contacted until the first request), as the
    /// operator: any path, the server's S3 credentials as a fallback.
    /// Tenants' requests go through [`super::Access::open_store`].
    pub fn open_store(&self) -> Result<Arc<dyn ObjectStore>> {
        Ok(match self {
            RepoUrl::File { path } => Arc::new(super::FileStore::open(path.clone())?),
            RepoUrl::S3(s3) => Arc::new(super::S3Store::new(s3.clone())?),
        })
    }
}
