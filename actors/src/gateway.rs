//! The gateway: takes requests off the bus, decodes and validates them,
//! routes them to actors or answers queries, and replies with JSON.
//!
//! - Requests arrive on `cairn.v1.<tenant>.<kind>.<verb>` (queue group
//!   `cairn-gateway`). The tenant comes from the subject, and a request only
//!   ever sees that tenant's volumes.
//! - Every failure is a reply `{"error":{"code","message","details"}}`; the
//!   gateway never panics on input and keeps serving.
//! - At most [`crate::Limits::max_in_flight`] requests run at once; the
//!   subscription is not read while that many are open (back-pressure).
//! - On shutdown it stops taking requests, then waits for those in flight.

use std::sync::Arc;

use bytes::Bytes;
use cairn_schema::command::EventsFilter;
use cairn_schema::{ApiError, Command, ErrorCode, Query, VolumeCommand, VolumeState, subject};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument;

use crate::bus::{Bus, BusMessage, REQUEST_ID_HEADER, USER_HEADER};
use crate::journal::Causation;
use crate::registry::Registry;
use crate::services::{Services, journal_error};
use crate::volume::{self, Execute, Get, engine_name};

/// Span field names; they live in [`crate::telemetry::fields`].
pub use crate::telemetry::fields;

pub struct Gateway {
    pub services: Services,
    pub registry: Arc<Registry>,
}

/// Who sent a request, from its headers.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub request_id: Option<String>,
    pub user: Option<String>,
}

impl Gateway {
    /// Serves requests from `bus` until `shutdown` turns true, then drains.
    /// `ready` is answered once the subscription is in place.
    pub async fn serve(
        self: Arc<Self>,
        bus: Bus,
        mut shutdown: watch::Receiver<bool>,
        ready: tokio::sync::oneshot::Sender<Result<(), crate::bus::Error>>,
    ) -> Result<(), crate::bus::Error> {
        let mut requests = match bus
            .subscribe(subject::REQUEST_WILDCARD, Some("cairn-gateway"))
            .await
        {
            Ok(s) => {
                let _ = ready.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = ready.send(Err(crate::bus::Error::Other(e.to_string())));
                return Err(e);
            }
        };
        let _ = bus.flush().await;
        let max = self.services.limits.max_in_flight;
        let in_flight = Arc::new(Semaphore::new(max));
        loop {
            let message = tokio::select! {
                m = requests.next() => match m { Some(m) => m, None => break },
                _ = shutdown.changed() => break,
            };
            let permit = in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("semaphore never closes");
            let gateway = self.clone();
            let bus = bus.clone();
            actix_rt::spawn(async move {
                gateway.answer(&bus, message).await;
                drop(permit);
            });
        }
        drop(requests);
        // Drain: every permit back means every request answered.
        let _all = in_flight.acquire_many(max as u32).await;
        Ok(())
    }

    async fn answer(&self, bus: &Bus, message: BusMessage) {
        let caller = Caller {
            request_id: message.header(REQUEST_ID_HEADER).map(str::to_owned),
            user: message.header(USER_HEADER).map(str::to_owned),
        };
        let span = tracing::info_span!(
            crate::telemetry::spans::COMMAND,
            { fields::TENANT } = tracing::field::Empty,
            { fields::KIND } = tracing::field::Empty,
            { fields::VERB } = tracing::field::Empty,
            { fields::REQUEST_ID } = caller.request_id.as_deref().unwrap_or(""),
        );
        let result = self
            .dispatch_raw(&message.subject, &message.payload, &caller)
            .instrument(span)
            .await;
        let body = match result {
            Ok(value) => value,
            Err(e) => {
                tracing::debug!(subject = %message.subject, code = %e.code, "request refused: {}", e.message);
                e.to_reply()
            }
        };
        if let Some(reply) = message.reply {
            let bytes = Bytes::from(serde_json::to_vec(&body).expect("json values serialize"));
            if let Err(e) = bus.publish(&reply, bytes).await {
                tracing::warn!(error = %e, "reply not sent");
            }
        }
    }

    async fn dispatch_raw(
        &self,
        subject_text: &str,
        payload: &[u8],
        caller: &Caller,
    ) -> Result<Value, ApiError> {
        let limit = self.services.limits.max_request_bytes;
        if payload.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "request body is {} bytes; the limit is {limit}",
                    payload.len()
                ),
            ));
        }
        let parsed = subject::parse_request(subject_text)?;
        let span = tracing::Span::current();
        span.record(fields::TENANT, parsed.tenant.as_str());
        span.record(fields::KIND, parsed.kind.as_str());
        span.record(fields::VERB, parsed.verb.as_str());
        let command = Command::parse(&parsed.kind, &parsed.verb, payload)?;
        self.dispatch(&parsed.tenant, command, caller).await
    }

    /// Runs one decoded command for a tenant.
    pub async fn dispatch(
        &self,
        tenant: &str,
        command: Command,
        caller: &Caller,
    ) -> Result<Value, ApiError> {
        match command {
            Command::Volume(command) => {
                let journal = &self.services.journal;
                if let Some(id) = &caller.request_id
                    && let Some(first) =
                        journal.lookup_request(id).map_err(|e| journal_error(&e))?
                {
                    return Ok(serde_json::from_slice(&first).unwrap_or(Value::Null));
                }
                let causation = Causation {
                    tenant: tenant.to_owned(),
                    user: caller.user.clone().unwrap_or_else(|| "anonymous".into()),
                    dedup: caller.request_id.is_some(),
                    id: caller.request_id.clone().unwrap_or_else(new_request_id),
                };
                let source = match &command {
                    VolumeCommand::Clone { name, .. } => {
                        Some(self.volume_state(tenant, name).await?)
                    }
                    _ => None,
                };
                let actor = self
                    .registry
                    .volume_or_start(tenant, command.volume(), &self.services);
                actor
                    .send(Execute {
                        command,
                        causation,
                        source,
                    })
                    .await
                    .map_err(mailbox_error)?
            }
            Command::Query(query) => self.query(tenant, query).await,
        }
    }

    async fn volume_state(&self, tenant: &str, name: &str) -> Result<VolumeState, ApiError> {
        let missing = || ApiError::not_found(format!("volume {name:?} does not exist"));
        let actor = self.registry.volume(tenant, name).ok_or_else(missing)?;
        let state = actor.send(Get).await.map_err(mailbox_error)?;
        if state.exists() {
            Ok(state)
        } else {
            Err(missing())
        }
    }

    async fn volume_view(&self, tenant: &str, state: &VolumeState) -> Value {
        let engine = engine_name(tenant, &state.name);
        let info = self
            .services
            .blocking(move |pool| pool.volume_info(&engine))
            .await
            .ok();
        volume::view(state, info.as_ref())
    }

    async fn query(&self, tenant: &str, query: Query) -> Result<Value, ApiError> {
        match query {
            Query::Ping => Ok(json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") })),
            Query::VolumeList => {
                let mut volumes = Vec::new();
                for (_, actor) in self.registry.volumes_of(tenant) {
                    let state = actor.send(Get).await.map_err(mailbox_error)?;
                    if state.exists() {
                        volumes.push(self.volume_view(tenant, &state).await);
                    }
                }
                Ok(json!({ "volumes": volumes }))
            }
            Query::VolumeShow { name } => {
                let state = self.volume_state(tenant, &name).await?;
                Ok(self.volume_view(tenant, &state).await)
            }
            Query::VolumeSnapshots { name } => {
                let state = self.volume_state(tenant, &name).await?;
                let view = self.volume_view(tenant, &state).await;
                Ok(json!({ "name": name, "snapshots": view["snapshots"] }))
            }
            Query::VolumeDiff { from, to } => {
                for image in [&from, &to] {
                    let (vol, snap) = match image.split_once('@') {
                        Some((v, s)) => (v, Some(s)),
                        None => (image.as_str(), None),
                    };
                    let state = self.volume_state(tenant, vol).await?;
                    if let Some(s) = snap
                        && !state.snapshots.contains_key(s)
                    {
                        return Err(ApiError::not_found(format!(
                            "snapshot {image} does not exist"
                        )));
                    }
                }
                let (a, b) = (engine_image(tenant, &from), engine_image(tenant, &to));
                let extents = self
                    .services
                    .blocking(move |pool| pool.diff(&a, &b))
                    .await?;
                let changed: u64 = extents.iter().map(|e| e.len).sum();
                Ok(json!({ "from": from, "to": to, "changed_bytes": changed, "extents": extents }))
            }
            Query::VolumeScrub { name } => {
                self.volume_state(tenant, &name).await?;
                let engine = engine_name(tenant, &name);
                let mut report = self
                    .services
                    .blocking(move |pool| pool.scrub(&engine))
                    .await?;
                report.volume = name;
                for bad in &mut report.bad_blocks {
                    bad.image = public_image(tenant, &bad.image);
                }
                Ok(serde_json::to_value(report).expect("reports serialize"))
            }
            Query::EventsList(filter) => self.events(tenant, &filter),
            Query::EventsVerify => self.verify().await,
        }
    }

    fn events(&self, tenant: &str, filter: &EventsFilter) -> Result<Value, ApiError> {
        const PAGE: usize = 4096;
        let limit = filter.page_limit() as usize;
        let mut out = Vec::new();
        let mut from = filter.since_seq.max(1);
        let mut last_seq = 0;
        'pages: loop {
            let page = self
                .services
                .journal
                .read(from, PAGE)
                .map_err(|e| journal_error(&e))?;
            let n = page.len();
            for record in page {
                from = record.seq + 1;
                last_seq = record.seq;
                if record.tenant != tenant {
                    continue;
                }
                let view = record.view();
                if filter.matches(&record.aggregate, &view.kind, record.time_ms) {
                    out.push(view);
                    if out.len() == limit {
                        break 'pages;
                    }
                }
            }
            if n < PAGE {
                break;
            }
        }
        Ok(json!({ "events": out, "next_seq": last_seq + 1 }))
    }

    /// Checks the hash chain, then that replaying the journal gives the state
    /// the live actors hold.
    async fn verify(&self) -> Result<Value, ApiError> {
        let journal = &self.services.journal;
        let records = match journal.verify_chain().map_err(|e| journal_error(&e))? {
            Ok(n) => n,
            Err(brk) => {
                return Ok(
                    json!({ "ok": false, "records": Value::Null, "first_bad_seq": brk.seq, "reason": brk.reason }),
                );
            }
        };
        let replayed = crate::cluster::replay(journal).map_err(|e| journal_error(&e))?;
        for ((tenant, name), actor) in self.registry.all_volumes() {
            let live = actor.send(Get).await.map_err(mailbox_error)?;
            let expected = replayed
                .get(&(tenant.clone(), name.clone()))
                .cloned()
                .unwrap_or_default();
            if live != expected {
                return Ok(json!({
                    "ok": false,
                    "records": records,
                    "first_bad_seq": Value::Null,
                    "reason": format!("live state of volume {tenant}/{name} differs from the replayed journal"),
                }));
            }
        }
        let missing: Vec<String> = replayed
            .iter()
            .filter(|(key, state)| state.exists() && self.registry.volume(&key.0, &key.1).is_none())
            .map(|(key, _)| format!("{}/{}", key.0, key.1))
            .collect();
        if !missing.is_empty() {
            return Ok(
                json!({ "ok": false, "records": records, "first_bad_seq": Value::Null,
                "reason": format!("volumes in the journal but not live: {}", missing.join(", ")) }),
            );
        }
        Ok(json!({ "ok": true, "records": records }))
    }
}

fn mailbox_error(e: actix::MailboxError) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, format!("actor unavailable: {e}"))
}

/// A fresh request id for commands sent without one.
pub fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = blake3::hash(format!("{nanos}-{}-{n}", std::process::id()).as_bytes());
    cairn_schema::record::hex(&h.as_bytes()[..12])
}

/// The engine name of an image (`v` or `v@s`) of a tenant.
fn engine_image(tenant: &str, image: &str) -> String {
    match image.split_once('@') {
        Some((v, s)) => format!("{}@{s}", engine_name(tenant, v)),
        None => engine_name(tenant, image),
    }
}

/// The tenant's name for an engine image.
fn public_image(tenant: &str, image: &str) -> String {
    let prefix = format!("{tenant}:");
    image.strip_prefix(&prefix).unwrap_or(image).to_owned()
}
