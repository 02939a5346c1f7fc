//! `cairn volume …`: volumes and their snapshots, clones, diffs, scrubs.
//! Requests are the shared body types of `cairn_schema::command`, replies
//! the shared types of `cairn_schema::reply`.

use cairn_actors::client::Client;
use cairn_schema::command::{
    EmptyBody, NameBody, Size, SnapshotBody, VolumeCloneBody, VolumeCreateBody, VolumeDiffBody,
};
use cairn_schema::reply::{
    DiffReply, ScrubReply, SnapshotDeleteReply, SnapshotReply, SnapshotsReply, VolumeCloneReply,
    VolumeCreateReply, VolumeDeleteReply, VolumeListReply, VolumeRollbackReply, VolumeView,
};

use super::{VolumeCommand, call};
use crate::output::{self, Format};

fn name(name: &str) -> NameBody {
    NameBody {
        name: name.to_owned(),
    }
}

fn snapshot(name: &str, snapshot: &str) -> SnapshotBody {
    SnapshotBody {
        name: name.to_owned(),
        snapshot: snapshot.to_owned(),
    }
}

pub async fn run(client: &Client, fmt: Format, cmd: &VolumeCommand) -> anyhow::Result<i32> {
    match cmd {
        VolumeCommand::Create {
            name,
            size,
            compress,
            encrypt,
        } => {
            let body = VolumeCreateBody {
                name: name.clone(),
                size: Size::Text(size.clone()),
                compress: compress.clone(),
                encrypt: *encrypt,
            };
            let reply = call::<VolumeCreateReply>(client, "volume", "create", &body).await?;
            reply.print(fmt, |r| {
                vec![vec![format!(
                    "volume {} created ({})",
                    r.name,
                    output::human(r.size_bytes)
                )]]
            });
        }
        VolumeCommand::Clone { source, target } => {
            let Some((name, snapshot)) = source.split_once('@') else {
                anyhow::bail!("the source must be V@S (a snapshot), not {source:?}");
            };
            let body = VolumeCloneBody {
                name: name.to_owned(),
                snapshot: snapshot.to_owned(),
                target: target.clone(),
            };
            let reply = call::<VolumeCloneReply>(client, "volume", "clone", &body).await?;
            reply.print(fmt, |r| {
                vec![vec![format!("volume {} cloned from {}", r.name, r.origin)]]
            });
        }
        VolumeCommand::Rollback {
            name,
            snapshot: snap,
        } => {
            let body = snapshot(name, snap);
            let reply = call::<VolumeRollbackReply>(client, "volume", "rollback", &body).await?;
            reply.print(fmt, |r| {
                vec![vec![format!(
                    "volume {} rolled back to {}",
                    r.name, r.rolled_back_to
                )]]
            });
        }
        VolumeCommand::Diff { from, to } => {
            let body = VolumeDiffBody {
                from: from.clone(),
                to: to.clone(),
            };
            let reply = call::<DiffReply>(client, "volume", "diff", &body).await?;
            reply.print(fmt, output::diff_rows);
        }
        VolumeCommand::Scrub { name: volume } => {
            let reply = call::<ScrubReply>(client, "volume", "scrub", &name(volume)).await?;
            reply.print(fmt, output::scrub_rows);
            return Ok(if reply.body.bad_blocks.is_empty() {
                0
            } else {
                1
            });
        }
        VolumeCommand::List => {
            let reply = call::<VolumeListReply>(client, "volume", "list", &EmptyBody {}).await?;
            reply.print(fmt, |r| output::volume_rows(&r.volumes));
        }
        VolumeCommand::Show { name: volume } => {
            let reply = call::<VolumeView>(client, "volume", "show", &name(volume)).await?;
            reply.print(fmt, |r| {
                let mut rows = output::volume_rows(std::slice::from_ref(r));
                if let Some(node) = &r.node {
                    rows.push(vec![format!("node: {node}")]);
                }
                if let Some(nbd) = &r.nbd {
                    rows.push(vec![format!("nbd: {nbd}")]);
                }
                rows.push(vec![]);
                rows.extend(output::snapshot_rows(&r.snapshots));
                rows
            });
        }
        VolumeCommand::Delete { name: volume } => {
            let reply =
                call::<VolumeDeleteReply>(client, "volume", "delete", &name(volume)).await?;
            reply.print(fmt, |r| vec![vec![format!("volume {} deleted", r.name)]]);
        }
        VolumeCommand::Snapshot {
            name,
            snapshot: snap,
        } => {
            let body = snapshot(name, snap);
            let reply = call::<SnapshotReply>(client, "volume", "snapshot", &body).await?;
            reply.print(fmt, |r| {
                vec![vec![format!("snapshot {}@{} created", r.name, r.snapshot)]]
            });
        }
        VolumeCommand::Snapshots { name: volume } => {
            let reply =
                call::<SnapshotsReply>(client, "volume", "snapshots", &name(volume)).await?;
            reply.print(fmt, |r| output::snapshot_rows(&r.snapshots));
        }
        VolumeCommand::SnapshotDelete {
            name,
            snapshot: snap,
        } => {
            let body = snapshot(name, snap);
            let reply =
                call::<SnapshotDeleteReply>(client, "volume", "snapshot-delete", &body).await?;
            reply.print(fmt, |r| {
                vec![vec![format!("snapshot {}@{} deleted", r.name, r.snapshot)]]
            });
        }
    }
    Ok(0)
}
