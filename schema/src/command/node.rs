//! Requests of kind `node` (`node.list`, `node.fail`): the `node.*` parse
//! arm; their bodies are the shared [`NameBody`](super::NameBody) and
//! [`EmptyBody`](super::EmptyBody).

use super::*;

/// Decodes and validates a `node.<verb>` request.
pub(super) fn parse(verb: &str, bytes: &[u8]) -> Result<Command, ApiError> {
    let cmd = match verb {
        "fail" => {
            let b: NameBody = body(bytes)?;
            check_label("node", &b.name)?;
            Command::NodeFail { name: b.name }
        }
        "list" => {
            body::<EmptyBody>(bytes)?;
            Command::Query(Query::NodeList)
        }
        _ => return Err(unknown("node", verb)),
    };
    Ok(cmd)
}
