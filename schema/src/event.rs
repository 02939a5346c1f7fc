//! Events: past-tense facts, appended to the journal and never changed.
//!
//! # Tags
//! Each variant has an explicit numeric tag, stored in the journal next to
//! the postcard-encoded payload. A tag is never reused, even after a variant
//! is retired: the table in [`events!`] is append-only. JSON (at the edge)
//! names the variant by its `kind` string instead.

use serde::{Deserialize, Serialize};

/// A volume came into being. *Since v0.1.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCreated {
    pub volume: String,
    pub size_bytes: u64,
}

/// A volume and all its snapshots were removed. *Since v0.1.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDeleted {
    pub volume: String,
}

/// A volume was frozen as a named, read-only snapshot. *Since v0.1.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSnapshotted {
    pub volume: String,
    pub snapshot: String,
}

/// One snapshot of a volume was removed. *Since v0.1.*
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDeleted {
    pub volume: String,
    pub snapshot: String,
}

/// Errors decoding a stored event.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown event tag {0}")]
    UnknownTag(u16),
    #[error("event payload with tag {tag} does not decode: {source}")]
    Payload { tag: u16, source: postcard::Error },
}

macro_rules! events {
    ($( $tag:literal => $variant:ident ),* $(,)?) => {
        /// Every event Cairn records. JSON form: `{"kind":"VolumeCreated", …fields}`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum Event {
            $( $variant($variant), )*
        }

        impl Event {
            /// The stable tag stored in the journal.
            pub fn tag(&self) -> u16 {
                match self { $( Event::$variant(_) => $tag, )* }
            }

            /// The variant name, used in subjects and JSON.
            pub fn kind(&self) -> &'static str {
                match self { $( Event::$variant(_) => stringify!($variant), )* }
            }

            /// The payload bytes stored in the journal (postcard).
            pub fn encode(&self) -> Vec<u8> {
                let bytes = match self {
                    $( Event::$variant(e) => postcard::to_stdvec(e), )*
                };
                bytes.expect("events always encode")
            }

            pub fn decode(tag: u16, payload: &[u8]) -> Result<Event, CodecError> {
                match tag {
                    $( $tag => postcard::from_bytes(payload)
                        .map(Event::$variant)
                        .map_err(|source| CodecError::Payload { tag, source }), )*
                    other => Err(CodecError::UnknownTag(other)),
                }
            }

            /// Every (tag, kind) pair, for docs and the tag-uniqueness test.
            pub const TAGS: &'static [(u16, &'static str)] = &[ $( ($tag, stringify!($variant)), )* ];
        }
    };
}

// Append-only. Never renumber, never reuse a retired tag.
events! {
    1 => VolumeCreated,
    2 => VolumeDeleted,
    3 => VolumeSnapshotted,
    4 => SnapshotDeleted,
}

impl Event {
    /// The aggregate this event belongs to, e.g. `volume/v1`.
    pub fn aggregate(&self) -> String {
        match self {
            Event::VolumeCreated(VolumeCreated { volume, .. })
            | Event::VolumeDeleted(VolumeDeleted { volume })
            | Event::VolumeSnapshotted(VolumeSnapshotted { volume, .. })
            | Event::SnapshotDeleted(SnapshotDeleted { volume, .. }) => format!("volume/{volume}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_unique() {
        let mut tags: Vec<u16> = Event::TAGS.iter().map(|(t, _)| *t).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), Event::TAGS.len());
    }

    #[test]
    fn payloads_round_trip_and_unknown_tags_fail() {
        let e = Event::VolumeSnapshotted(VolumeSnapshotted {
            volume: "v1".into(),
            snapshot: "s1".into(),
        });
        assert_eq!(Event::decode(e.tag(), &e.encode()).unwrap(), e);
        assert!(matches!(
            Event::decode(999, &e.encode()),
            Err(CodecError::UnknownTag(999))
        ));
        assert!(Event::decode(1, &[0xff]).is_err());
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "VolumeSnapshotted");
    }
}
