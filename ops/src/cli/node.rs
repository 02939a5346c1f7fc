//! `cairn node …`: the operator's view of nodes and their disks, and
//! marking a node failed.

use cairn_actors::client::Client;
use cairn_schema::command::{EmptyBody, NameBody};
use cairn_schema::reply::{NodeFailReply, NodeListReply};

use super::{NodeCommand, call_admin};
use crate::output::{self, Format};

pub async fn run(client: &Client, fmt: Format, cmd: &NodeCommand) -> anyhow::Result<i32> {
    match cmd {
        NodeCommand::List => {
            let reply = call_admin::<NodeListReply>(client, "node", "list", &EmptyBody {}).await?;
            reply.print(fmt, output::node_rows);
            Ok(0)
        }
        NodeCommand::Fail { name } => {
            let body = NameBody { name: name.clone() };
            let reply = call_admin::<NodeFailReply>(client, "node", "fail", &body).await?;
            reply.print(fmt, |r| {
                r.report.lines().map(|l| vec![l.to_owned()]).collect()
            });
            // A replica set that lost two members is what placement must prevent.
            Ok(if reply.body.lost_more_than_one_member {
                2
            } else {
                0
            })
        }
    }
}
