//! The command bus: NATS for real, or an in-process twin when no NATS server
//! is around. Both speak the same subjects, wildcards and request/reply.
//!
//! [`Bus`] is an enum, not a trait object, because its methods are async.
//! The in-process bus is also what unit tests use in place of NATS, and
//! [`FaultyBus`] (`bus/faulty.rs`) wraps either to drop, delay or
//! disconnect, seeded.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cairn_schema::subject;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

mod faulty;

pub use faulty::{Faults, FaultyBus, Stats as FaultStats};

/// The request headers (a request id for dedup, the user), named in the
/// API document.
pub use cairn_schema::api::{REQUEST_ID_HEADER, USER_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("no one is serving {subject} (is `cairn up` running?)")]
    NoResponders { subject: String },
    #[error(
        "request on {subject} timed out after {timeout_ms} ms (no reply: the server is busy or stopped, or your NATS user may not publish on that subject)"
    )]
    Timeout { subject: String, timeout_ms: u64 },
    #[error("bus error: {0}")]
    Other(String),
}

#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
    pub reply: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl BusMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub type Subscription = Pin<Box<dyn Stream<Item = BusMessage> + Send>>;

/// How to reach NATS: the URL plus auth and TLS options passed through.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub nkey_seed: Option<String>,
    pub creds_file: Option<std::path::PathBuf>,
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    pub name: Option<String>,
    /// Reply subjects this client listens on (`_INBOX` by default); the CLI
    /// uses `_INBOX.<tenant>`, which a tenant's NATS user may subscribe to.
    pub inbox_prefix: Option<String>,
}

/// Credentials given in a NATS URL (`nats://user:password@host:port`, or
/// `nats://token@host:port`), and the URL without them. A comma-separated
/// list of URLs is taken whole; the first with credentials gives them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UrlCredentials {
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
}

pub fn split_url_credentials(urls: &str) -> UrlCredentials {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut out = UrlCredentials::default();
    let mut stripped = Vec::new();
    for part in urls.split(',') {
        let part = part.trim();
        match url::Url::parse(part) {
            Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
                if out.user.is_none() && out.token.is_none() {
                    match parsed.password() {
                        Some(password) => {
                            out.user = Some(decode(parsed.username()));
                            out.password = Some(decode(password));
                        }
                        None => out.token = Some(decode(parsed.username())),
                    }
                }
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
                stripped.push(parsed.to_string().trim_end_matches('/').to_owned());
            }
            _ => stripped.push(part.to_owned()),
        }
    }
    out.url = stripped.join(",");
    out
}

#[derive(Clone)]
pub enum Bus {
    Nats {
        client: async_nats::Client,
        url: String,
    },
    Local(LocalBus),
    /// A fault-injecting wrapper (tests).
    Faulty(FaultyBus),
}

impl Bus {
    /// Connects once and reports why it could not (refused, authorization,
    /// TLS) instead of retrying in the background: a CLI with a wrong
    /// password fails at once with a clear error. Once connected, the client
    /// reconnects on its own for as long as the process runs and resubscribes
    /// every subscription, so the gateway keeps serving across a nats-server
    /// restart (`integration/tests/control.rs` checks it).
    pub async fn connect(options: &NatsOptions) -> Result<Bus, Error> {
        // Credentials in the URL count like the options (which win), and
        // never appear in a message.
        let in_url = split_url_credentials(&options.url);
        let mut options = options.clone();
        if options.user.is_none() && options.token.is_none() {
            options.user = in_url.user;
            options.password = in_url.password;
            options.token = in_url.token;
        }
        options.url = in_url.url;
        let options = &options;
        let url = options.url.clone();
        let fail = |message: String| Error::Connect {
            url: url.clone(),
            message,
        };
        if options.user.is_some() != options.password.is_some() {
            return Err(fail("give --nats-user and --nats-password together".into()));
        }
        if options.tls_cert_file.is_some() != options.tls_key_file.is_some() {
            return Err(fail(
                "give --nats-tls-cert and --nats-tls-key together".into(),
            ));
        }
        for (option, file) in [
            ("--nats-creds", &options.creds_file),
            ("--nats-tls-ca", &options.tls_ca_file),
            ("--nats-tls-cert", &options.tls_cert_file),
            ("--nats-tls-key", &options.tls_key_file),
        ] {
            if let Some(path) = file
                && let Err(e) = std::fs::File::open(path)
            {
                return Err(fail(format!("{option} {}: {e}", path.display())));
            }
        }
        let mut opts = match &options.creds_file {
            Some(path) => async_nats::ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| fail(format!("credentials file {}: {e}", path.display())))?,
            None => async_nats::ConnectOptions::new(),
        };
        if let (Some(user), Some(password)) = (&options.user, &options.password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &options.token {
            opts = opts.token(token.clone());
        }
        if let Some(seed) = &options.nkey_seed {
            opts = opts.nkey(seed.clone());
        }
        if let Some(ca) = &options.tls_ca_file {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&options.tls_cert_file, &options.tls_key_file) {
            opts = opts
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if let Some(prefix) = &options.inbox_prefix {
            opts = opts.custom_inbox_prefix(prefix);
        }
        let client = opts
            .name(options.name.clone().unwrap_or_else(|| "cairn".into()))
            .connection_timeout(Duration::from_secs(5))
            // A comma-separated list is several servers of one cluster:
            // the client picks one and fails over to the others.
            .connect(
                options
                    .url
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .collect::<Vec<_>>(),
            )
            .await
            .map_err(|e| fail(connect_error_message(&e)))?;
        Ok(Bus::Nats { client, url })
    }

    pub fn local() -> Bus {
        Bus::Local(LocalBus::default())
    }

    /// Whether the server authenticates its clients (`auth_required` in
    /// its INFO). The in-process bus does not.
    pub fn auth_required(&self) -> bool {
        match self {
            Bus::Nats { client, .. } => client.server_info().auth_required,
            Bus::Local(_) => false,
            Bus::Faulty(faulty) => faulty.inner().auth_required(),
        }
    }

    /// A short description for people: the URL, or "in-process".
    pub fn describe(&self) -> String {
        match self {
            Bus::Nats { url, .. } => url.clone(),
            Bus::Local(_) => "in-process bus".into(),
            Bus::Faulty(faulty) => format!("faulty {}", faulty.inner().describe()),
        }
    }

    /// Subscribes to a subject (wildcards allowed); with `queue`, messages
    /// are shared among the group's members.
    pub async fn subscribe(
        &self,
        subject: &str,
        queue: Option<&str>,
    ) -> Result<Subscription, Error> {
        match self {
            Bus::Nats { client, .. } => {
                let sub = match queue {
                    Some(q) => {
                        client
                            .queue_subscribe(subject.to_owned(), q.to_owned())
                            .await
                    }
                    None => client.subscribe(subject.to_owned()).await,
                }
                .map_err(|e| Error::Other(e.to_string()))?;
                Ok(Box::pin(sub.map(|m| {
                    BusMessage {
                        subject: m.subject.to_string(),
                        payload: m.payload,
                        reply: m.reply.map(|r| r.to_string()),
                        headers: m
                            .headers
                            .map(|h| {
                                h.iter()
                                    .flat_map(|(k, vs)| {
                                        let k = k.to_string();
                                        vs.iter()
                                            .map(move |v| (k.clone(), v.to_string()))
                                            .collect::<Vec<_>>()
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    }
                })))
            }
            Bus::Local(local) => Ok(local.subscribe(subject)),
            Bus::Faulty(faulty) => faulty.subscribe(subject, queue).await,
        }
    }

    pub async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), Error> {
        match self {
            Bus::Nats { client, .. } => client
                .publish(subject.to_owned(), payload)
                .await
                .map_err(|e| Error::Other(e.to_string())),
            Bus::Local(local) => {
                local.publish(BusMessage {
                    subject: subject.to_owned(),
                    payload,
                    reply: None,
                    headers: vec![],
                });
                Ok(())
            }
            Bus::Faulty(faulty) => faulty.publish(subject, payload).await,
        }
    }

    /// Sends a request and waits for one reply.
    pub async fn request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        let timeout_err = || Error::Timeout {
            subject: subject.to_owned(),
            timeout_ms: timeout.as_millis() as u64,
        };
        match self {
            Bus::Nats { client, .. } => {
                let mut map = async_nats::HeaderMap::new();
                for (k, v) in headers {
                    map.insert(*k, *v);
                }
                let request = async_nats::Request::new()
                    .payload(payload)
                    .headers(map)
                    .timeout(Some(timeout));
                match client.send_request(subject.to_owned(), request).await {
                    Ok(m) => Ok(m.payload),
                    Err(e) => match e.kind() {
                        async_nats::RequestErrorKind::NoResponders => Err(Error::NoResponders {
                            subject: subject.to_owned(),
                        }),
                        async_nats::RequestErrorKind::TimedOut => Err(timeout_err()),
                        _ => Err(Error::Other(e.to_string())),
                    },
                }
            }
            Bus::Local(local) => {
                let inbox = local.new_inbox();
                let mut replies = local.subscribe(&inbox);
                let delivered = local.publish(BusMessage {
                    subject: subject.to_owned(),
                    payload,
                    reply: Some(inbox),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                });
                if delivered == 0 {
                    return Err(Error::NoResponders {
                        subject: subject.to_owned(),
                    });
                }
                match tokio::time::timeout(timeout, replies.next()).await {
                    Ok(Some(m)) => Ok(m.payload),
                    Ok(None) => Err(Error::Other("in-process bus closed".into())),
                    Err(_) => Err(timeout_err()),
                }
            }
            Bus::Faulty(faulty) => faulty.request(subject, headers, payload, timeout).await,
        }
    }

    /// Waits until everything published so far has reached the server.
    pub async fn flush(&self) -> Result<(), Error> {
        match self {
            Bus::Nats { client, .. } => client
                .flush()
                .await
                .map_err(|e| Error::Other(e.to_string())),
            Bus::Local(_) => Ok(()),
            Bus::Faulty(faulty) => faulty.flush().await,
        }
    }
}

/// What went wrong connecting, with a hint at the option that fixes it.
fn connect_error_message(e: &async_nats::ConnectError) -> String {
    use async_nats::ConnectErrorKind as K;
    const TLS_HINT: &str = "check --nats-tls-ca, --nats-tls-cert and --nats-tls-key";
    let text = e.to_string();
    // Certificate failures come back as IO errors from the TLS layer.
    let lower = text.to_ascii_lowercase();
    let tls = ["certificate", "tls", "handshake", "alert"]
        .iter()
        .any(|w| lower.contains(w));
    match e.kind() {
        K::AuthorizationViolation => format!(
            "{text} (the server refused the credentials: check --nats-user/--nats-password, \
             --nats-token, --nats-nkey-seed or --nats-creds)"
        ),
        K::Authentication => format!("{text} (check --nats-nkey-seed or --nats-creds)"),
        K::Tls => format!("{text} ({TLS_HINT})"),
        K::Io if tls => format!("{text} ({TLS_HINT})"),
        K::Io | K::TimedOut | K::Dns => {
            format!("{text} (is nats-server running there? set --nats or CAIRN_NATS_URL)")
        }
        _ => text,
    }
}

/// The in-process bus: subscriptions are channels, matched with NATS
/// wildcard rules. Queue groups are not modelled (one gateway per process).
#[derive(Clone, Default)]
pub struct LocalBus {
    inner: Arc<LocalInner>,
}

#[derive(Default)]
struct LocalInner {
    subscriptions: Mutex<Vec<(String, mpsc::UnboundedSender<BusMessage>)>>,
    next_inbox: AtomicU64,
}

impl LocalBus {
    fn new_inbox(&self) -> String {
        format!(
            "_INBOX.local.{}",
            self.inner.next_inbox.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn subscribe(&self, pattern: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .subscriptions
            .lock()
            .unwrap()
            .push((pattern.to_owned(), tx));
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        }))
    }

    /// Delivers to every matching subscriber; returns how many got it.
    fn publish(&self, message: BusMessage) -> usize {
        let mut subs = self.inner.subscriptions.lock().unwrap();
        subs.retain(|(_, tx)| !tx.is_closed());
        let mut delivered = 0;
        for (pattern, tx) in subs.iter() {
            if subject::matches(pattern, &message.subject) && tx.send(message.clone()).is_ok() {
                delivered += 1;
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finding 11 of issue 13: credentials in the URL were ignored.
    #[test]
    fn url_credentials_are_taken_and_stripped() {
        let c = split_url_credentials("nats://acme:s%40cret@127.0.0.1:4222");
        assert_eq!(c.user.as_deref(), Some("acme"));
        assert_eq!(c.password.as_deref(), Some("s@cret"));
        assert_eq!(c.url, "nats://127.0.0.1:4222");
        let t = split_url_credentials("nats://tok3n@h1:4222, nats://h2:4222");
        assert_eq!(t.token.as_deref(), Some("tok3n"));
        assert_eq!(t.url, "nats://h1:4222,nats://h2:4222");
        let plain = split_url_credentials("nats://127.0.0.1:4222");
        assert_eq!(plain.user, None);
        assert_eq!(plain.url, "nats://127.0.0.1:4222");
        assert_eq!(
            split_url_credentials("127.0.0.1:4222").url,
            "127.0.0.1:4222"
        );
    }

    #[tokio::test]
    async fn local_bus_does_request_reply_with_wildcards() {
        let bus = Bus::local();
        let mut sub = bus.subscribe("cairn.v1.*.*.*", None).await.unwrap();
        let server = bus.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let body = format!(
                    "{}:{}",
                    m.subject,
                    m.header(REQUEST_ID_HEADER).unwrap_or("-")
                );
                server
                    .publish(m.reply.as_deref().unwrap(), Bytes::from(body))
                    .await
                    .unwrap();
            }
        });
        let reply = bus
            .request(
                "cairn.v1.t.volume.list",
                &[(REQUEST_ID_HEADER, "r1")],
                Bytes::new(),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(&reply[..], b"cairn.v1.t.volume.list:r1");
        let err = bus
            .request("nobody.home", &[], Bytes::new(), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoResponders { .. }));
    }
}
