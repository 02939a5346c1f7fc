//! The journal record: one event plus its envelope, chained by blake3.
//!
//! `hash = blake3(prev_hash ‖ seq ‖ time_ms ‖ tenant ‖ aggregate ‖ causation
//! ‖ user ‖ tag ‖ payload)`, every variable-length field length-prefixed. The
//! first record's `prev_hash` is all zeroes. Changing any byte of any record
//! breaks the chain at that record, which `events verify` reports.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Event;
use crate::event::CodecError;
use crate::time::format_rfc3339_ms;

pub type Hash = [u8; 32];

/// The hash that precedes the first record.
pub const GENESIS_HASH: Hash = [0; 32];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// 1-based, gap-free position in the journal.
    pub seq: u64,
    pub time_ms: u64,
    pub tenant: String,
    /// `volume/<name>`, `app/<name>`, …
    pub aggregate: String,
    /// What caused it: a request id or a saga id.
    pub causation: String,
    pub user: String,
    pub tag: u16,
    pub payload: Vec<u8>,
    pub prev_hash: Hash,
    pub hash: Hash,
}

impl EventRecord {
    /// Builds a record and seals it with its hash.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        seq: u64,
        time_ms: u64,
        tenant: &str,
        causation: &str,
        user: &str,
        event: &Event,
        prev_hash: Hash,
    ) -> EventRecord {
        let mut record = EventRecord {
            seq,
            time_ms,
            tenant: tenant.to_owned(),
            aggregate: event.aggregate(),
            causation: causation.to_owned(),
            user: user.to_owned(),
            tag: event.tag(),
            payload: event.encode(),
            prev_hash,
            hash: [0; 32],
        };
        record.hash = record.compute_hash();
        record
    }

    pub fn compute_hash(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(&self.prev_hash);
        h.update(&self.seq.to_le_bytes());
        h.update(&self.time_ms.to_le_bytes());
        for field in [&self.tenant, &self.aggregate, &self.causation, &self.user] {
            h.update(&(field.len() as u64).to_le_bytes());
            h.update(field.as_bytes());
        }
        h.update(&self.tag.to_le_bytes());
        h.update(&(self.payload.len() as u64).to_le_bytes());
        h.update(&self.payload);
        *h.finalize().as_bytes()
    }

    pub fn event(&self) -> Result<Event, CodecError> {
        Event::decode(self.tag, &self.payload)
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("records always encode")
    }

    pub fn decode(bytes: &[u8]) -> Result<EventRecord, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Decodes like [`EventRecord::decode`], into `self`, reusing its
    /// buffers: a replay decodes millions of records without allocating
    /// for each. The strings and payload are borrowed from `bytes` first,
    /// then copied; the two hashes are the row's last 64 bytes (postcard
    /// writes a `[u8; 32]` as 32 raw bytes).
    pub fn decode_into(&mut self, bytes: &[u8]) -> Result<(), postcard::Error> {
        /// The fields of [`EventRecord`] before its hashes, in order.
        #[derive(Deserialize)]
        struct Head<'a> {
            seq: u64,
            time_ms: u64,
            tenant: &'a str,
            aggregate: &'a str,
            causation: &'a str,
            user: &'a str,
            tag: u16,
            payload: &'a [u8],
        }
        let (head, hashes) = postcard::take_from_bytes::<Head>(bytes)?;
        let (prev_hash, hash) = match hashes.split_first_chunk::<32>() {
            Some((prev_hash, rest)) => (prev_hash, <&Hash>::try_from(rest)),
            None => return Err(postcard::Error::DeserializeUnexpectedEnd),
        };
        let hash = hash.map_err(|_| postcard::Error::DeserializeBadEncoding)?;
        let copy = |to: &mut String, from: &str| {
            to.clear();
            to.push_str(from);
        };
        self.seq = head.seq;
        self.time_ms = head.time_ms;
        copy(&mut self.tenant, head.tenant);
        copy(&mut self.aggregate, head.aggregate);
        copy(&mut self.causation, head.causation);
        copy(&mut self.user, head.user);
        self.tag = head.tag;
        self.payload.clear();
        self.payload.extend_from_slice(head.payload);
        self.prev_hash = *prev_hash;
        self.hash = *hash;
        Ok(())
    }

    /// The JSON view printed by `cairn events --json` and published on NATS;
    /// sealed workflow params show as `<redacted>` ([`crate::sealed`]).
    pub fn view(&self) -> EventView {
        let (kind, data) = match self.event() {
            Ok(mut event) => {
                crate::sealed::redact_event(&mut event);
                (
                    event.kind().to_owned(),
                    serde_json::to_value(&event).unwrap_or_default(),
                )
            }
            Err(e) => (
                format!("Unknown({})", self.tag),
                serde_json::json!({ "error": e.to_string() }),
            ),
        };
        EventView {
            seq: self.seq,
            time: format_rfc3339_ms(self.time_ms),
            time_ms: self.time_ms,
            tenant: self.tenant.clone(),
            kind,
            subject: self.aggregate.clone(),
            causation: self.causation.clone(),
            user: self.user.clone(),
            hash: hex(&self.hash),
            prev_hash: hex(&self.prev_hash),
            data,
        }
    }
}

/// How a record looks at the edge (JSON): in `events.list` replies, in
/// `cairn events --json`, and published on
/// `cairn.v1.<tenant>.evt.<aggregate kind>.<EventKind>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventView {
    /// 1-based, gap-free position in the journal.
    pub seq: u64,
    /// `time_ms` as RFC 3339 (UTC, milliseconds).
    pub time: String,
    /// When the journal appended it (epoch ms).
    pub time_ms: u64,
    pub tenant: String,
    /// The event kind, e.g. `VolumeCreated`.
    pub kind: String,
    /// The aggregate, e.g. `volume/v1`.
    pub subject: String,
    /// What caused it: a request id or a saga id.
    pub causation: String,
    /// Who asked, as claimed in the `Cairn-User` header (`claimed:<name>`:
    /// any client can set it), `anonymous` if nobody said; `cairn` for the
    /// steps of a workflow Cairn runs itself.
    pub user: String,
    /// blake3 of this record (hex), chained through `prev_hash`.
    pub hash: String,
    /// The previous record's `hash`; all zeroes for the first.
    pub prev_hash: String,
    /// The event itself: `kind` plus the payload fields of that kind.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub data: serde_json::Value,
}

/// Lower-case hex, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The first problem found while checking a chain of records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainBreak {
    pub seq: u64,
    pub reason: String,
}

/// Checks one record against its predecessor's hash and seq.
pub fn check_link(prev_seq: u64, prev_hash: &Hash, record: &EventRecord) -> Result<(), ChainBreak> {
    let fail = |reason: String| {
        Err(ChainBreak {
            seq: record.seq,
            reason,
        })
    };
    if record.seq != prev_seq + 1 {
        return fail(format!("seq {} follows seq {prev_seq}", record.seq));
    }
    if &record.prev_hash != prev_hash {
        return fail("prev_hash does not match the previous record's hash".to_owned());
    }
    if record.compute_hash() != record.hash {
        return fail("hash does not match the record's contents".to_owned());
    }
    if let Err(e) = record.event() {
        return fail(format!("payload does not decode: {e}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::VolumeCreated;

    fn chain(n: u64) -> Vec<EventRecord> {
        let mut prev = GENESIS_HASH;
        (1..=n)
            .map(|seq| {
                let e = Event::VolumeCreated(VolumeCreated {
                    volume: format!("v{seq}"),
                    size_bytes: seq,
                    compression: "lz4".into(),
                    encrypted: false,
                });
                let r = EventRecord::seal(seq, 1000 * seq, "default", "req", "cli", &e, prev);
                prev = r.hash;
                r
            })
            .collect()
    }

    fn verify(records: &[EventRecord]) -> Result<(), ChainBreak> {
        let (mut seq, mut hash) = (0, GENESIS_HASH);
        for r in records {
            check_link(seq, &hash, r)?;
            (seq, hash) = (r.seq, r.hash);
        }
        Ok(())
    }

    #[test]
    fn intact_chain_verifies_and_any_tamper_is_named() {
        let records = chain(5);
        assert!(verify(&records).is_ok());
        let mut tampered = records.clone();
        tampered[2].payload[1] ^= 1;
        assert_eq!(verify(&tampered).unwrap_err().seq, 3);
        let mut tampered = records.clone();
        tampered[3].time_ms += 1;
        assert_eq!(verify(&tampered).unwrap_err().seq, 4);
        let mut dropped = records.clone();
        dropped.remove(1);
        assert_eq!(verify(&dropped).unwrap_err().seq, 3);
    }

    #[test]
    fn records_round_trip_through_postcard() {
        let r = &chain(1)[0];
        assert_eq!(&EventRecord::decode(&r.encode()).unwrap(), r);
        assert_eq!(r.view().kind, "VolumeCreated");
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn decode_into_reuses_a_record_and_agrees_with_decode() {
        let mut reused = chain(1)[0].clone();
        reused.tenant = "a much longer tenant name than the others".into();
        for mut r in chain(40) {
            // Vary every length, and the payload's bytes.
            r.tenant = "t".repeat(r.seq as usize % 7);
            r.causation = "c".repeat(r.seq as usize * 37 % 200);
            r.payload
                .extend(std::iter::repeat_n(r.seq as u8, r.seq as usize * 11 % 300));
            let bytes = r.encode();
            reused.decode_into(&bytes).unwrap();
            assert_eq!(reused, r);
            assert_eq!(EventRecord::decode(&bytes).unwrap(), r);
            // A row cut short, or with bytes after the hashes, is refused.
            assert!(reused.decode_into(&bytes[..bytes.len() - 1]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(reused.decode_into(&longer).is_err());
        }
    }
}
