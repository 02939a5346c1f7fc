//! Requests of kind `volume`: their body types (`volume.create`, `clone`,
//! `diff`, snapshots, and the [`Size`] syntax) and the `volume.*` parse arm.

use super::*;

/// The body of `volume.create`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateBody {
    /// The new volume: a DNS-1123 label, or `<app>/<pvc>`.
    pub name: String,
    pub size: Size,
    /// `lz4` (the default), `zstd` or `none`.
    #[serde(default)]
    pub compress: Option<String>,
    /// Encrypt at rest with the key `cairn up --key-file` was given.
    #[serde(default)]
    pub encrypt: bool,
}

/// The body of `volume.clone`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCloneBody {
    /// The source volume.
    pub name: String,
    /// The snapshot of `name` to clone.
    pub snapshot: String,
    /// The new volume; it shares every block of `name@snapshot`.
    pub target: String,
}

/// The body of `volume.diff`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeDiffBody {
    /// An image: a volume `v` or a snapshot `v@s`.
    pub from: String,
    /// An image of the same lineage: `v` or `v@s`.
    pub to: String,
}

/// Checks `v` or `v@s`.
fn check_image(image: &str) -> Result<(), ApiError> {
    match image.split_once('@') {
        Some((v, s)) => {
            check_volume_name(v)?;
            check_label("snapshot", s)
        }
        None => check_volume_name(image),
    }
}

/// A size: a byte count, or a Kubernetes quantity as in a PVC (`10Gi` is
/// 10 × 2^30, `10G` is 10 × 10^9, `512Mi`, `1.5Gi`). Must be greater than
/// zero.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Size {
    Bytes(#[schemars(range(min = 1))] u64),
    Text(
        #[schemars(regex(
            pattern = r"^\s*\+?([0-9]+\.?[0-9]*|\.[0-9]+)([KMGTPE]i|[kMGTPE]|[eE][+-]?[0-9]+)?\s*$"
        ))]
        String,
    ),
}

/// A body that names one snapshot of a volume.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotBody {
    /// The volume.
    pub name: String,
    /// The snapshot: a DNS-1123 label.
    pub snapshot: String,
}

/// Decodes and validates a `volume.<verb>` request.
pub(super) fn parse(verb: &str, bytes: &[u8]) -> Result<Command, ApiError> {
    let cmd = match verb {
        "create" => {
            let b: VolumeCreateBody = body(bytes)?;
            check_volume_name(&b.name)?;
            let size_bytes = match b.size {
                Size::Bytes(n) => n,
                Size::Text(t) => parse_quantity(&t)?,
            };
            if size_bytes == 0 {
                return Err(ApiError::invalid("size must be greater than zero"));
            }
            let compression = b.compress.unwrap_or_else(|| "lz4".to_owned());
            if !matches!(compression.as_str(), "lz4" | "zstd" | "none") {
                return Err(ApiError::invalid(format!(
                    "compress must be lz4, zstd or none, not {compression:?}"
                )));
            }
            Command::Volume(VolumeCommand::Create {
                name: b.name,
                size_bytes,
                compression,
                encrypted: b.encrypt,
            })
        }
        "clone" => {
            let b: VolumeCloneBody = body(bytes)?;
            check_volume_name(&b.name)?;
            check_label("snapshot", &b.snapshot)?;
            check_volume_name(&b.target)?;
            Command::Volume(VolumeCommand::Clone {
                name: b.name,
                snapshot: b.snapshot,
                target: b.target,
            })
        }
        "diff" => {
            let b: VolumeDiffBody = body(bytes)?;
            check_image(&b.from)?;
            check_image(&b.to)?;
            Command::Query(Query::VolumeDiff {
                from: b.from,
                to: b.to,
            })
        }
        "scrub" => {
            let b: NameBody = body(bytes)?;
            check_volume_name(&b.name)?;
            Command::Query(Query::VolumeScrub { name: b.name })
        }
        "delete" => {
            let b: NameBody = body(bytes)?;
            check_volume_name(&b.name)?;
            Command::Volume(VolumeCommand::Delete { name: b.name })
        }
        "snapshot" | "snapshot-delete" | "rollback" => {
            let b: SnapshotBody = body(bytes)?;
            check_volume_name(&b.name)?;
            check_label("snapshot", &b.snapshot)?;
            Command::Volume(if verb == "snapshot" {
                VolumeCommand::Snapshot {
                    name: b.name,
                    snapshot: b.snapshot,
                }
            } else if verb == "rollback" {
                VolumeCommand::Rollback {
                    name: b.name,
                    snapshot: b.snapshot,
                }
            } else {
                VolumeCommand::DeleteSnapshot {
                    name: b.name,
                    snapshot: b.snapshot,
                }
            })
        }
        "list" => {
            body::<EmptyBody>(bytes)?;
            Command::Query(Query::VolumeList)
        }
        "show" | "snapshots" => {
            let b: NameBody = body(bytes)?;
            check_volume_name(&b.name)?;
            Command::Query(if verb == "show" {
                Query::VolumeShow { name: b.name }
            } else {
                Query::VolumeSnapshots { name: b.name }
            })
        }
        _ => return Err(unknown("volume", verb)),
    };
    Ok(cmd)
}
