//! The transmission phase of one NBD connection: a reader, a bounded pool of
//! workers, and one shared reply writer, so that a client with many requests
//! in flight on one socket (fio's nbd engine at iodepth 32, qemu) gets them
//! served concurrently.
//!
//! # Threads
//! * The connection's own thread is the **reader**. It reads each 28-byte
//!   header, parses it with the pure [`parse_request`], reads a `WRITE`'s
//!   payload and queues the request. One exception keeps a lone request
//!   fast: when nothing else is in flight and the client has sent nothing
//!   more, the reader runs a request itself (not `FLUSH` or `FUA`, which wait
//!   for the disk), so a client at queue depth 1 pays no thread hand-off.
//! * Up to [`Limits::max_workers_per_connection`] **workers**, started on
//!   demand inside a [`thread::scope`], take requests from the queue, run
//!   them against the [`Device`] and write the reply. The scope joins them all
//!   before the connection is closed.
//!
//! # State
//! * [`Pipeline`] (a mutex and two condvars): the queue, the count and
//!   payload bytes of requests in flight (admitted and not yet answered), the
//!   number of workers and idle workers, and whether the reader is done or
//!   the connection has failed.
//! * [`Replies`]: the buffered socket writer behind a mutex, the first write
//!   error, how many workers wait for the mutex, and how many fast requests
//!   are admitted but unanswered.
//!
//! # Invariants
//! * Bounded: at most [`Limits::max_in_flight_requests`] requests and
//!   [`Limits::max_in_flight_bytes`] of payload are in flight (one request
//!   larger than the byte budget is admitted alone). A request is admitted
//!   before its payload is read, so when the pipeline is full the reader
//!   blocks and TCP pushes back on the client.
//! * Each reply (header, then the data of a `READ`) is written while holding
//!   the writer mutex, so replies never interleave. They go out in completion
//!   order, not request order.
//! * Replies are batched like a serial server's, without waiting on slow
//!   requests: the reply to a fast request (anything but `FLUSH` and `FUA`)
//!   stays in the buffer only while another fast request is still unanswered
//!   or another worker waits for the mutex; whoever answers the last one
//!   flushes. `FLUSH` and `FUA` replies are flushed at once. So a burst of
//!   small replies shares one `write` call, and no reply waits on an `fsync`.
//! * `FLUSH` runs like any other request: [`Device::flush`] makes durable
//!   every write the device has completed, and a write is answered only after
//!   it completed, so every write whose reply was sent before the `FLUSH` was
//!   received is covered. A write still in flight when the `FLUSH` arrives may
//!   or may not be; the protocol only promises completed ones.
//! * Idle: the reader waits for a request header with a deadline of
//!   [`Limits::idle_timeout`] after the last sign of life (a request read or
//!   answered). When it passes with nothing in flight, the connection is
//!   closed like at EOF; with requests still running it waits on. A `WRITE`
//!   payload must arrive within the idle timeout of its header.
//! * `DISC`, EOF and protocol violations (bad magic, an oversized `WRITE`):
//!   the reader stops reading, every admitted request still runs and is
//!   answered, then the connection closes. After `DISC` the device is flushed
//!   too. A write error on the socket fails the connection: the reader stops
//!   at its next request and the remaining replies are dropped.

use std::collections::VecDeque;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::socket::{Incoming, is_timeout};
use super::{
    Command, Limits, NBD_EINVAL, NBD_ENOSPC, NBD_EPERM, NBD_SIMPLE_REPLY_MAGIC, REQUEST_LEN,
    Request, SIMPLE_REPLY_LEN, in_range, nbd_errno, parse_request,
};
use crate::Device;

/// Serves requests on `device` until `DISC`, EOF, a protocol violation or a
/// socket error; returns once every admitted request has been answered.
pub(super) fn serve<R: Incoming, W: Write + Send>(
    r: &mut BufReader<R>,
    w: BufWriter<W>,
    device: &dyn Device,
    limits: &Limits,
    peer: &str,
) -> io::Result<()> {
    debug!(
        peer,
        export = device.name(),
        size = device.size(),
        read_only = device.read_only(),
        "NBD transmission"
    );
    let conn = Transmission {
        device,
        max_request_bytes: limits.max_request_bytes,
        idle_timeout: limits.idle_timeout,
        peer,
        pipeline: Pipeline::new(limits),
        replies: Replies {
            out: Mutex::new(ReplyOut { w, error: None }),
            waiting: AtomicUsize::new(0),
            unanswered_fast: AtomicUsize::new(0),
        },
    };
    let ended = thread::scope(|scope| {
        // Workers drain the queue and exit once the reader is done, even if
        // it unwinds; the scope joins them.
        let _close = CloseOnDrop(&conn.pipeline);
        loop {
            match conn.next_request(r) {
                Ok(Next::Job(job)) if conn.runs_inline(&job, r) => conn.run(job),
                Ok(Next::Job(job)) => {
                    if conn.pipeline.push(job) {
                        let spawned = thread::Builder::new()
                            .name("nbd-worker".into())
                            .spawn_scoped(scope, || conn.work());
                        if let Err(e) = spawned
                            && !conn.pipeline.worker_not_started()
                        {
                            break Err(e);
                        }
                    }
                }
                Ok(Next::End(end)) => break Ok(end),
                Err(e) => break Err(e),
            }
        }
    });
    if matches!(ended, Ok(End::Disconnect))
        && !device.read_only()
        && let Err(e) = device.flush()
    {
        warn!(export = device.name(), error = %e, "flush at NBD disconnect failed");
    }
    let out = conn.replies.into_inner();
    let written = match out.error {
        Some(e) => Err(e),
        None => out.w.into_inner().map(drop).map_err(|e| e.into_error()),
    };
    ended.and(written)
}

/// Why the reader stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Disconnect,
    Eof,
    Violation,
    /// A reply could not be written.
    Failed,
    /// Nothing in flight and nothing arriving for the idle timeout.
    Idle,
}

/// What the reader got from the socket.
enum Next {
    Job(Job),
    End(End),
}

/// An admitted request on its way to a worker.
struct Job {
    req: Request,
    /// A `WRITE`'s payload; empty for every other command.
    payload: Vec<u8>,
    /// Bytes charged to the in-flight budget until the reply is written.
    cost: usize,
}

struct Transmission<'a, W: Write> {
    device: &'a dyn Device,
    max_request_bytes: u32,
    idle_timeout: Duration,
    peer: &'a str,
    pipeline: Pipeline,
    replies: Replies<W>,
}

impl<W: Write + Send> Transmission<'_, W> {
    /// Reads and admits the next request (blocking while the pipeline is
    /// full), or says why to stop.
    fn next_request<R: Incoming>(&self, r: &mut BufReader<R>) -> io::Result<Next> {
        let peer = self.peer;
        let mut header = [0u8; REQUEST_LEN];
        if let Some(end) = self.read_header(r, &mut header)? {
            return Ok(Next::End(end));
        }
        let req = match parse_request(&header) {
            Ok(req) => req,
            Err(e) => {
                warn!(peer, error = %e, "NBD protocol violation; closing");
                return Ok(Next::End(End::Violation));
            }
        };
        let max = self.max_request_bytes;
        let cost = match req.command {
            Command::Disconnect => {
                debug!(peer, "NBD_CMD_DISC");
                return Ok(Next::End(End::Disconnect));
            }
            Command::Write if req.length > max => {
                let len = req.length;
                warn!(peer, len, max, "NBD write larger than the maximum; closing");
                return Ok(Next::End(End::Violation));
            }
            // Bounded by max_request_bytes; a larger READ is refused unread.
            Command::Read | Command::Write if req.length <= max => req.length as usize,
            _ => 0,
        };
        if !self.pipeline.admit(cost) {
            return Ok(Next::End(End::Failed));
        }
        let fast = !waits_for_disk(&req);
        if fast {
            self.replies.unanswered_fast.fetch_add(1, Ordering::SeqCst);
        }
        let mut payload = Vec::new();
        if req.command == Command::Write {
            r.get_mut()
                .set_deadline(Some(Instant::now() + self.idle_timeout));
            payload.resize(cost, 0);
            if let Err(e) = r.read_exact(&mut payload) {
                // Never answered; the connection ends.
                self.pipeline.answered(cost);
                return Err(e);
            }
        }
        Ok(Next::Job(Job { req, payload, cost }))
    }

    /// Reads a request header, waiting at most the idle timeout after the
    /// connection's last sign of life while nothing is in flight. `Some`
    /// says why to stop instead.
    fn read_header<R: Incoming>(
        &self,
        r: &mut BufReader<R>,
        header: &mut [u8; REQUEST_LEN],
    ) -> io::Result<Option<End>> {
        let mut filled = 0;
        while filled < header.len() {
            let deadline = self.pipeline.idle_deadline(self.idle_timeout);
            r.get_mut().set_deadline(Some(deadline));
            match r.read(&mut header[filled..]) {
                Ok(0) if filled == 0 => {
                    debug!(peer = self.peer, "client closed without NBD_CMD_DISC");
                    return Ok(Some(End::Eof));
                }
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    if self.pipeline.idle_deadline(self.idle_timeout) <= Instant::now() {
                        tracing::info!(peer = self.peer, "NBD connection idle; closing");
                        return Ok(Some(End::Idle));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.pipeline.touch();
        Ok(None)
    }

    /// A worker: runs queued requests until the reader is done and the queue
    /// is empty.
    fn work(&self) {
        while let Some(job) = self.pipeline.next() {
            self.run(job);
        }
    }

    /// True when the reader should run `job` itself rather than hand it to a
    /// worker: it is the only request in flight, the client has sent nothing
    /// more yet, and it is not one of the commands that wait for the disk
    /// (`FLUSH`, `FUA`). A client with one request at a time then pays no
    /// thread hand-off; a request that arrives meanwhile waits for at most
    /// one fast operation, as with a serial server.
    fn runs_inline<R: Read>(&self, job: &Job, r: &BufReader<R>) -> bool {
        r.buffer().is_empty() && !waits_for_disk(&job.req) && self.pipeline.alone()
    }

    /// Runs one admitted request and answers it; frees its place in flight
    /// afterwards.
    fn run(&self, job: Job) {
        let _slot = Slot {
            pipeline: &self.pipeline,
            cost: job.cost,
        };
        let (error, data) = execute(self.device, self.max_request_bytes, &job.req, job.payload);
        if !self.replies.send(&job.req, error, &data) {
            self.pipeline.fail();
        }
    }
}

/// `FLUSH` and `FUA` requests wait for the disk; every other one is fast
/// (on the page cache or the engine's log).
fn waits_for_disk(req: &Request) -> bool {
    req.command == Command::Flush || req.fua()
}

/// Runs one request against the device. Returns the reply's error value and,
/// for a successful `READ`, the data to send after the header.
fn execute(device: &dyn Device, max: u32, req: &Request, payload: Vec<u8>) -> (u32, Vec<u8>) {
    let (offset, len) = (req.offset, u64::from(req.length));
    let size = device.size();
    let read_only = device.read_only();
    let fail = |what: &str, e: crate::Error| {
        warn!(export = device.name(), offset, len, error = %e, "NBD {what} failed");
        (nbd_errno(e.errno()), Vec::new())
    };
    let done = |result: crate::Result<()>, what: &str| match result {
        Ok(()) => (0, Vec::new()),
        Err(e) => fail(what, e),
    };
    match req.command {
        Command::Read => {
            if req.length > max || !in_range(offset, len, size) {
                return (NBD_EINVAL, Vec::new());
            }
            // Bounded by max_request_bytes just above.
            let mut data = vec![0u8; req.length as usize];
            match device.read_at(&mut data, offset) {
                Ok(()) => (0, data),
                Err(e) => fail("read", e),
            }
        }
        Command::Write => {
            if read_only {
                (NBD_EPERM, Vec::new())
            } else if !in_range(offset, len, size) {
                (NBD_ENOSPC, Vec::new())
            } else {
                done(device.write_at(&payload, offset, req.fua()), "write")
            }
        }
        Command::Flush => done(device.flush(), "flush"),
        Command::Trim | Command::WriteZeroes => {
            if read_only {
                (NBD_EPERM, Vec::new())
            } else if !in_range(offset, len, size) {
                (NBD_ENOSPC, Vec::new())
            } else if req.command == Command::Trim {
                let result = device
                    .trim(offset, len)
                    .and_then(|()| if req.fua() { device.flush() } else { Ok(()) });
                done(result, "trim")
            } else {
                done(device.write_zeroes(offset, len, req.fua()), "write-zeroes")
            }
        }
        Command::Other(kind) => {
            debug!(kind, "unsupported NBD command");
            (NBD_EINVAL, Vec::new())
        }
        Command::Disconnect => unreachable!("the reader handles NBD_CMD_DISC"),
    }
}

// ---------------------------------------------------------------------------
// Pipeline: admission, queue and workers
// ---------------------------------------------------------------------------

struct Pipeline {
    state: Mutex<PipelineState>,
    /// Signalled when a job is queued or the reader is done.
    work: Condvar,
    /// Signalled when a request is answered or the connection fails.
    room: Condvar,
    max_requests: usize,
    max_bytes: usize,
    max_workers: usize,
}

#[derive(Default)]
struct PipelineState {
    queue: VecDeque<Job>,
    /// Requests admitted and not yet answered (queued or running).
    requests: usize,
    /// Payload bytes of those requests.
    bytes: usize,
    workers: usize,
    idle_workers: usize,
    /// The reader reads no more; workers exit once the queue is empty.
    closing: bool,
    /// A reply could not be written; the reader admits no more.
    failed: bool,
    /// The last request read or answered, or when transmission started.
    last_activity: Option<Instant>,
}

impl Pipeline {
    fn new(limits: &Limits) -> Pipeline {
        Pipeline {
            state: Mutex::new(PipelineState {
                last_activity: Some(Instant::now()),
                ..PipelineState::default()
            }),
            work: Condvar::new(),
            room: Condvar::new(),
            max_requests: limits.max_in_flight_requests.max(1),
            max_bytes: limits.max_in_flight_bytes,
            max_workers: limits.max_workers_per_connection.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PipelineState> {
        // No code that can panic runs under this lock, but a worker's Slot
        // takes it while unwinding; never turn that into a second panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When the connection counts as idle: the idle timeout after its last
    /// sign of life, or a full timeout from now while requests are in flight.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        let s = self.lock();
        if s.requests > 0 {
            Instant::now() + idle
        } else {
            s.last_activity.unwrap_or_else(Instant::now) + idle
        }
    }

    /// A request arrived.
    fn touch(&self) {
        self.lock().last_activity = Some(Instant::now());
    }

    /// Blocks until a request with `cost` payload bytes fits in flight, and
    /// counts it. False if the connection has failed.
    fn admit(&self, cost: usize) -> bool {
        let mut s = self.lock();
        loop {
            if s.failed {
                return false;
            }
            let fits = s.requests == 0
                || (s.requests < self.max_requests && s.bytes + cost <= self.max_bytes);
            if fits {
                s.requests += 1;
                s.bytes += cost;
                return true;
            }
            s = self.room.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Queues an admitted job. True when the caller should start one more
    /// worker for it (already counted).
    fn push(&self, job: Job) -> bool {
        let mut s = self.lock();
        s.queue.push_back(job);
        self.work.notify_one();
        let start = s.queue.len() > s.idle_workers && s.workers < self.max_workers;
        if start {
            s.workers += 1;
        }
        start
    }

    /// Undoes the count of a worker whose thread could not be started. False
    /// if no worker is left to run the queue.
    fn worker_not_started(&self) -> bool {
        let mut s = self.lock();
        s.workers -= 1;
        warn!(workers = s.workers, "cannot start an NBD worker thread");
        s.workers > 0
    }

    /// The next job for a worker; `None` once the reader is done and the
    /// queue is empty.
    fn next(&self) -> Option<Job> {
        let mut s = self.lock();
        loop {
            if let Some(job) = s.queue.pop_front() {
                return Some(job);
            }
            if s.closing {
                return None;
            }
            s.idle_workers += 1;
            s = self.work.wait(s).unwrap_or_else(PoisonError::into_inner);
            s.idle_workers -= 1;
        }
    }

    /// A request was answered (or abandoned): frees its place in flight.
    fn answered(&self, cost: usize) {
        let mut s = self.lock();
        s.requests -= 1;
        s.bytes -= cost;
        s.last_activity = Some(Instant::now());
        self.room.notify_one();
    }

    /// True when exactly one request (the caller's) is in flight.
    fn alone(&self) -> bool {
        self.lock().requests == 1
    }

    fn fail(&self) {
        self.lock().failed = true;
        self.room.notify_all();
    }

    fn close(&self) {
        self.lock().closing = true;
        self.work.notify_all();
    }
}

/// Closes the pipeline when the reader leaves its loop, however it leaves.
struct CloseOnDrop<'a>(&'a Pipeline);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A running request's place in flight, freed when dropped: after its reply
/// is written, or while unwinding from a panicking device, in which case the
/// connection fails so the reader cannot wait for room forever.
struct Slot<'a> {
    pipeline: &'a Pipeline,
    cost: usize,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.pipeline.fail();
        }
        self.pipeline.answered(self.cost);
    }
}

// ---------------------------------------------------------------------------
// Replies: one writer shared by the workers
// ---------------------------------------------------------------------------

struct Replies<W: Write> {
    out: Mutex<ReplyOut<W>>,
    /// Workers waiting for `out`. The holder leaves the flush to them.
    waiting: AtomicUsize,
    /// Fast requests admitted and not yet answered: counted up by the reader,
    /// down under `out`'s lock. The reply that brings it to zero flushes.
    unanswered_fast: AtomicUsize,
}

struct ReplyOut<W: Write> {
    w: BufWriter<W>,
    /// The first write error; later replies are dropped.
    error: Option<io::Error>,
}

impl<W: Write> Replies<W> {
    /// Writes the simple reply to `req`, `data` following the header, in one
    /// piece. False if the socket is broken.
    fn send(&self, req: &Request, error: u32, data: &[u8]) -> bool {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let fast = !waits_for_disk(req);
        // Under the lock, so exactly one of the last repliers sees zero.
        let others_fast = if fast {
            self.unanswered_fast.fetch_sub(1, Ordering::SeqCst) - 1
        } else {
            self.unanswered_fast.load(Ordering::SeqCst)
        };
        if out.error.is_some() {
            return false;
        }
        let mut header = [0u8; SIMPLE_REPLY_LEN];
        header[0..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
        header[4..8].copy_from_slice(&error.to_be_bytes());
        header[8..16].copy_from_slice(&req.cookie.to_be_bytes());
        let written = out
            .w
            .write_all(&header)
            .and_then(|()| out.w.write_all(data));
        // Whoever is waiting will write after us and flush (or leave it to
        // the next one). A fast reply also leaves it to the other unanswered
        // fast requests: the last of them flushes.
        let hold = self.waiting.load(Ordering::SeqCst) > 0 || (fast && others_fast > 0);
        let flushed = written.and_then(|()| if !hold { out.w.flush() } else { Ok(()) });
        match flushed {
            Ok(()) => true,
            Err(e) => {
                debug!(error = %e, "cannot write NBD reply");
                out.error = Some(e);
                false
            }
        }
    }

    fn into_inner(self) -> ReplyOut<W> {
        self.out
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
