//! The NBD front-end: a user-space Network Block Device server speaking the
//! fixed-newstyle protocol, and a small blocking client for demos and benches.
//!
//! # Protocol subset
//! * Handshake: fixed newstyle only (`NBD_FLAG_FIXED_NEWSTYLE`, with
//!   `NBD_FLAG_NO_ZEROES` offered). Clients that do not set
//!   `NBD_FLAG_C_FIXED_NEWSTYLE` are disconnected.
//! * Options: `NBD_OPT_EXPORT_NAME`, `NBD_OPT_ABORT`, `NBD_OPT_LIST`,
//!   `NBD_OPT_INFO` and `NBD_OPT_GO` (replying `NBD_INFO_EXPORT` and
//!   `NBD_INFO_BLOCK_SIZE`, plus `NBD_INFO_NAME` when asked), and
//!   `NBD_OPT_STARTTLS` on a TCP server given a TLS configuration. Every
//!   other option (structured replies, meta contexts, extended headers) gets
//!   `NBD_REP_ERR_UNSUP` and negotiation goes on. No default export (an
//!   empty name is an unknown export).
//! * TLS (module `tls`): a TCP server with a TLS configuration runs the
//!   protocol's FORCEDTLS mode: before `NBD_OPT_STARTTLS` every option but
//!   `NBD_OPT_ABORT` gets `NBD_REP_ERR_TLS_REQD` and `NBD_OPT_EXPORT_NAME`
//!   closes the connection; a second `NBD_OPT_STARTTLS` is
//!   `NBD_REP_ERR_INVALID`. The unix socket never uses TLS (its file mode
//!   and group are its access control); a server without TLS answers
//!   `NBD_OPT_STARTTLS` with `NBD_REP_ERR_UNSUP`.
//! * Admission (module `admission`): each connection has an [`Identity`]
//!   (unix peer credentials, TCP peer, TLS client certificate's common
//!   name); the server's [`Admission`] maps a requested name to the export
//!   to open and filters `NBD_OPT_LIST`.
//! * Transmission: simple replies only. `READ`, `WRITE`, `DISC`, `FLUSH`,
//!   `TRIM` and `WRITE_ZEROES`, with `FUA` honoured; anything else is
//!   answered with `EINVAL`. Requests of one connection run concurrently and
//!   may be answered out of order (the cookie pairs them), as the protocol
//!   allows; see the `transmit` module for the pipeline and what `FLUSH` covers.
//!
//! # State per connection
//! One std thread per connection owns a buffered reader over the socket and
//! runs the handshake. In transmission it becomes the reader of the
//! connection's pipeline (module `transmit`): it parses requests and hands
//! them to a bounded pool of worker threads that run them against the opened
//! [`Device`](crate::Device) and write replies through one shared, buffered
//! writer.
//! Payload buffers are allocated per request and bounded per connection by
//! [`Limits::max_in_flight_bytes`].
//!
//! # Map
//! * `protocol`: constants, the request header, parsing, [`ListenAddr`].
//! * `server`: [`Limits`], [`Access`], the listener and connection threads.
//! * `handshake`: option negotiation, STARTTLS, opening the export.
//! * `transmit`: the request pipeline of one connection.
//! * `admission`, `socket`, [`tls`]: identities, sockets, TLS.
//! * `client`: [`NbdClient`] and [`list_exports`].
//!
//! # Invariants
//! * Every connection is bounded in time and number: negotiation (TLS
//!   included) must end within [`Limits::handshake_timeout`]; in
//!   transmission a connection with no request in flight and none arriving
//!   for [`Limits::idle_timeout`] is closed, and a write blocked that long
//!   fails it; at most [`Limits::max_connections`] connections, and
//!   [`Limits::max_connections_per_peer`] from one IP address, are served
//!   (others are closed at accept).
//! * An export another identity may not open and an export that does not
//!   exist get the same reply.
//! * Nothing is ever allocated from an unchecked client length: option data
//!   is bounded by [`Limits::max_option_bytes`] and payloads by
//!   [`Limits::max_request_bytes`]. Larger options are skipped by streaming
//!   them into a sink; a larger `WRITE` closes the connection (its payload
//!   cannot be skipped safely) and a larger `READ` fails with `EINVAL`.
//! * Client input never panics the server. A protocol violation (bad magic,
//!   oversized write) ends that connection only; device errors become an
//!   errno in the reply and the connection goes on. Other connections, which
//!   share nothing but the `Device`, are never affected.
//! * Range checks happen before the device is touched: out-of-range reads get
//!   `EINVAL`, out-of-range writes, trims and zeroing get `ENOSPC`, and any
//!   modification of a read-only export gets `EPERM` (after a `WRITE` payload
//!   has been consumed, so the stream stays in sync).

mod admission;
mod client;
mod handshake;
mod protocol;
mod server;
mod socket;
pub mod tls;
mod transmit;

pub use admission::{Admission, Identity, OpenAdmission};
pub use client::{NbdClient, list_exports, list_exports_with};
pub use protocol::*;
pub use server::{
    Access, Exports, Limits, NbdServer, NbdServerHandle, serve, serve_stream, serve_with,
};
pub use socket::group_id;
pub use tls::ClientTls;

#[cfg(test)]
mod access_tests;

#[cfg(test)]
mod tests;
