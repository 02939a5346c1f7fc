//! [`FaultyBus`]: a fault-injecting twin around any [`Bus`] (usually the
//! in-process one), for tests of what the control plane and its clients do
//! when messages are lost, late, or the connection is gone.
//!
//! # Faults
//! - drop: a publish is lost silently (it returns `Ok`, as a NATS core
//!   publish does); a request's message is lost, so it ends in
//!   [`Error::Timeout`] after its timeout.
//! - delay: a publish or request waits before it is sent.
//! - disconnect: until [`FaultyBus::reconnect`], publishing, requesting and
//!   flushing fail with [`Error::Other`], and messages that arrive for this
//!   handle's subscriptions are lost (NATS core keeps nothing for a client
//!   that is away).
//!
//! Drops and delays apply to what this handle sends; disconnect also to
//! what it receives.
//!
//! # Determinism
//! Which messages are dropped or delayed comes from a generator seeded by
//! [`Faults::seed`], drawn once per message sent in the order they are
//! sent, or from an explicit count ([`FaultyBus::drop_next`]); never from the
//! clock. One sender in a test gives one sequence for one seed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::{Bus, Error, Subscription};

/// What to inject, at random (seeded). `0` in a `one_in` means never.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub seed: u64,
    /// Drop about one message sent in this many.
    pub drop_one_in: u64,
    /// Delay about one message sent in this many, by `delay`.
    pub delay_one_in: u64,
    pub delay: Duration,
}

/// The wrapper's handle; cheap to clone, clones share the faults. Hand
/// [`FaultyBus::bus`] to the code under test and keep this to steer it.
#[derive(Clone)]
pub struct FaultyBus {
    inner: Box<Bus>,
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    faults: Faults,
    rng: fastrand::Rng,
    /// The next this many messages sent are dropped.
    drop_next: u64,
    disconnected: bool,
    /// Counts, for tests: messages dropped, delayed, refused while
    /// disconnected, and lost on the way in while disconnected.
    stats: Stats,
}

/// What the wrapper did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub sent: u64,
    pub dropped: u64,
    pub delayed: u64,
    pub refused: u64,
    pub lost_incoming: u64,
}

/// What happens to one message sent.
enum Verdict {
    Send,
    Delay(Duration),
    Drop,
    Disconnected,
}

fn disconnected() -> Error {
    Error::Other("bus disconnected (injected fault)".into())
}

impl FaultyBus {
    pub fn new(inner: Bus, faults: Faults) -> FaultyBus {
        FaultyBus {
            inner: Box::new(inner),
            state: Arc::new(Mutex::new(State {
                faults,
                rng: fastrand::Rng::with_seed(faults.seed),
                ..State::default()
            })),
        }
    }

    /// The bus to hand to the code under test.
    pub fn bus(&self) -> Bus {
        Bus::Faulty(self.clone())
    }

    /// Drops the next `n` messages sent (before any random choice).
    pub fn drop_next(&self, n: u64) {
        self.state.lock().unwrap().drop_next += n;
    }

    /// Replaces the random faults (the generator keeps its position).
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }

    pub fn disconnect(&self) {
        self.state.lock().unwrap().disconnected = true;
    }

    pub fn reconnect(&self) {
        self.state.lock().unwrap().disconnected = false;
    }

    pub fn stats(&self) -> Stats {
        self.state.lock().unwrap().stats
    }

    pub(super) fn inner(&self) -> &Bus {
        &self.inner
    }

    fn verdict(&self) -> Verdict {
        let mut state = self.state.lock().unwrap();
        if state.disconnected {
            state.stats.refused += 1;
            return Verdict::Disconnected;
        }
        state.stats.sent += 1;
        if state.drop_next > 0 {
            state.drop_next -= 1;
            state.stats.dropped += 1;
            return Verdict::Drop;
        }
        let faults = state.faults;
        let roll =
            |state: &mut State, one_in: u64| one_in > 0 && state.rng.u64(..).is_multiple_of(one_in);
        if roll(&mut state, faults.drop_one_in) {
            state.stats.dropped += 1;
            return Verdict::Drop;
        }
        if roll(&mut state, faults.delay_one_in) {
            state.stats.delayed += 1;
            return Verdict::Delay(faults.delay);
        }
        Verdict::Send
    }

    pub(super) async fn subscribe(
        &self,
        subject: &str,
        queue: Option<&str>,
    ) -> Result<Subscription, Error> {
        if self.state.lock().unwrap().disconnected {
            return Err(disconnected());
        }
        let mut sub = Box::pin(self.inner.subscribe(subject, queue)).await?;
        // Messages are judged as they arrive (not when the subscriber gets
        // round to them): one forwarding task per subscription, which ends
        // with the inner stream or once the subscriber is gone.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                {
                    let mut state = state.lock().unwrap();
                    if state.disconnected {
                        state.stats.lost_incoming += 1;
                        continue;
                    }
                }
                if tx.send(message).is_err() {
                    break;
                }
            }
        });
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (m, rx))
        })))
    }

    pub(super) async fn publish(&self, subject: &str, payload: Bytes) -> Result<(), Error> {
        match self.verdict() {
            Verdict::Disconnected => Err(disconnected()),
            Verdict::Drop => Ok(()),
            Verdict::Delay(by) => {
                tokio::time::sleep(by).await;
                Box::pin(self.inner.publish(subject, payload)).await
            }
            Verdict::Send => Box::pin(self.inner.publish(subject, payload)).await,
        }
    }

    pub(super) async fn request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, Error> {
        match self.verdict() {
            Verdict::Disconnected => Err(disconnected()),
            Verdict::Drop => {
                tokio::time::sleep(timeout).await;
                Err(Error::Timeout {
                    subject: subject.to_owned(),
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
            Verdict::Delay(by) => {
                tokio::time::sleep(by).await;
                Box::pin(self.inner.request(subject, headers, payload, timeout)).await
            }
            Verdict::Send => Box::pin(self.inner.request(subject, headers, payload, timeout)).await,
        }
    }

    pub(super) async fn flush(&self) -> Result<(), Error> {
        if self.state.lock().unwrap().disconnected {
            return Err(disconnected());
        }
        Box::pin(self.inner.flush()).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A server on `inner` that answers every request with its subject.
    async fn echo_server(inner: &Bus) {
        let mut sub = inner.subscribe("svc.>", None).await.unwrap();
        let server = inner.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let reply = m.reply.clone().unwrap();
                server
                    .publish(&reply, Bytes::from(m.subject.clone()))
                    .await
                    .unwrap();
            }
        });
    }

    /// Which of `n` publishes through `faulty` reach a subscriber on the
    /// inner bus.
    async fn delivered(inner: &Bus, faulty: &Bus, n: u32) -> Vec<u32> {
        let mut sub = inner.subscribe("t.*", None).await.unwrap();
        for i in 0..n {
            faulty
                .publish(&format!("t.{i}"), Bytes::new())
                .await
                .unwrap();
        }
        inner.publish("t.end", Bytes::new()).await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = sub.next().await {
            match m.subject.strip_prefix("t.").unwrap() {
                "end" => break,
                i => out.push(i.parse().unwrap()),
            }
        }
        out
    }

    #[tokio::test]
    async fn drops_are_seeded_and_deterministic() {
        let run = |seed| async move {
            let inner = Bus::local();
            let faulty = FaultyBus::new(
                inner.clone(),
                Faults {
                    seed,
                    drop_one_in: 3,
                    ..Faults::default()
                },
            );
            let got = delivered(&inner, &faulty.bus(), 60).await;
            assert_eq!(faulty.stats().dropped, 60 - got.len() as u64);
            got
        };
        let first = run(1).await;
        assert!(first.len() > 20 && first.len() < 60, "{first:?}");
        assert_eq!(first, run(1).await, "same seed, same drops");
        assert_ne!(first, run(2).await);
    }

    #[tokio::test]
    async fn a_dropped_request_times_out_and_the_next_one_is_answered() {
        let inner = Bus::local();
        echo_server(&inner).await;
        let faulty = FaultyBus::new(inner, Faults::default());
        let bus = faulty.bus();
        faulty.drop_next(1);
        let lost = bus
            .request("svc.a", &[], Bytes::new(), Duration::from_millis(30))
            .await;
        assert!(matches!(lost, Err(Error::Timeout { .. })), "{lost:?}");
        let answered = bus
            .request("svc.b", &[], Bytes::new(), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(&answered[..], b"svc.b");
        assert_eq!(faulty.stats().dropped, 1);
    }

    #[tokio::test]
    async fn delays_hold_messages_back() {
        let inner = Bus::local();
        echo_server(&inner).await;
        let faulty = FaultyBus::new(
            inner,
            Faults {
                seed: 9,
                delay_one_in: 1,
                delay: Duration::from_millis(40),
                ..Faults::default()
            },
        );
        let started = Instant::now();
        let answered = faulty
            .bus()
            .request("svc.slow", &[], Bytes::new(), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(&answered[..], b"svc.slow");
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!(faulty.stats().delayed, 1);
    }

    #[tokio::test]
    async fn a_disconnect_refuses_sends_and_loses_incoming_until_reconnect() {
        let inner = Bus::local();
        echo_server(&inner).await;
        let faulty = FaultyBus::new(inner.clone(), Faults::default());
        let bus = faulty.bus();
        let mut sub = bus.subscribe("news.*", None).await.unwrap();
        faulty.disconnect();
        assert!(bus.publish("news.a", Bytes::new()).await.is_err());
        assert!(bus.flush().await.is_err());
        let refused = bus
            .request("svc.x", &[], Bytes::new(), Duration::from_secs(2))
            .await;
        assert!(matches!(refused, Err(Error::Other(_))), "{refused:?}");
        // Published by someone else while away: lost for this handle.
        inner.publish("news.lost", Bytes::new()).await.unwrap();
        for _ in 0..1000 {
            if faulty.stats().lost_incoming == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        faulty.reconnect();
        inner.publish("news.kept", Bytes::new()).await.unwrap();
        assert_eq!(sub.next().await.unwrap().subject, "news.kept");
        let answered = bus
            .request("svc.y", &[], Bytes::new(), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(&answered[..], b"svc.y");
        let stats = faulty.stats();
        assert_eq!((stats.refused, stats.lost_incoming), (2, 1));
    }
}
