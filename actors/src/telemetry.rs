//! Span names and span field names: the one place they are spelled.
//!
//! Dashboards, trace queries and the OTLP test rely on these strings, so
//! code never writes them inline: it opens spans with [`spans`] and records
//! fields with [`fields`]. Renaming one is a breaking change for whoever
//! reads the traces.
//!
//! # Spans
//! - [`spans::COMMAND`] (info): one per request the gateway answers, with
//!   the tenant, kind, verb and request id.
//! - [`spans::JOURNAL_COMMIT`] (info): one per group-committed redb
//!   transaction, on the journal's writer thread, with the number of appends
//!   and events and the seq range written.
//!
//! Numbers are recorded as `i64`: OTLP integers are signed, and
//! tracing-opentelemetry would export a `u64` as a string.
//!
//! The subscriber (logs, and the OTLP exporter when configured) is set up by
//! the binary (`ops/src/telemetry.rs`); this crate only opens spans.

/// Span names.
pub mod spans {
    /// One request answered by the gateway, from decode to reply.
    pub const COMMAND: &str = "command";
    /// One journal transaction (one fsync), on the writer thread.
    pub const JOURNAL_COMMIT: &str = "journal.commit";
    /// A durable redb commit that lets the journal's write-ahead log start
    /// again, on the writer thread.
    pub const JOURNAL_CHECKPOINT: &str = "journal.checkpoint";
}

/// Span field names. All start with `cairn.`.
pub mod fields {
    /// The tenant, from the request subject.
    pub const TENANT: &str = "cairn.tenant";
    /// The command's kind (`volume`, `system`…), from the subject.
    pub const KIND: &str = "cairn.kind";
    /// The command's verb (`create`, `list`…), from the subject.
    pub const VERB: &str = "cairn.verb";
    /// The `Cairn-Request-Id` header, empty when the client sent none.
    pub const REQUEST_ID: &str = "cairn.request_id";
    /// The app a command or saga step works on.
    pub const APP: &str = "cairn.app";
    /// The saga a step belongs to.
    pub const SAGA_ID: &str = "cairn.saga.id";
    /// Appends (callers) written by one journal transaction.
    pub const JOURNAL_BATCH: &str = "cairn.journal.batch";
    /// Events written by one journal transaction (duplicates write none).
    pub const JOURNAL_EVENTS: &str = "cairn.journal.events";
    /// Seq of the first event the transaction wrote (absent when none).
    pub const JOURNAL_FIRST_SEQ: &str = "cairn.journal.first_seq";
    /// Seq of the last event the transaction wrote (absent when none).
    pub const JOURNAL_LAST_SEQ: &str = "cairn.journal.last_seq";
}
