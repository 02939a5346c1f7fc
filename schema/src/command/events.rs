//! Requests of kind `events`: the `events.replay` body and the `events.*`
//! parse arm (`events.list` takes [`EventsFilter`](super::EventsFilter)).

use super::*;

/// The body of `events.replay`: the state as of one point in the journal.
/// Give `at_seq` or `at_ms`, not both; with neither, the latest state.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Fold the journal up to and including this seq.
    #[serde(default)]
    pub at_seq: Option<u64>,
    /// Fold the journal up to the last record at or before this time
    /// (epoch ms).
    #[serde(default)]
    pub at_ms: Option<u64>,
    /// Only this app and its volumes.
    #[serde(default)]
    pub app: Option<String>,
}

/// Decodes and validates a `events.<verb>` request.
pub(super) fn parse(verb: &str, bytes: &[u8]) -> Result<Command, ApiError> {
    let cmd = match verb {
        "replay" => {
            let b: ReplayBody = body(bytes)?;
            if let Some(app) = &b.app {
                check_label("app", app)?;
            }
            if b.at_seq.is_some() && b.at_ms.is_some() {
                return Err(ApiError::invalid("give at_seq or at_ms, not both"));
            }
            Command::Query(Query::EventsReplay {
                at_seq: b.at_seq,
                at_ms: b.at_ms,
                app: b.app,
            })
        }
        "list" => Command::Query(Query::EventsList(body(bytes)?)),
        "verify" => {
            body::<EmptyBody>(bytes)?;
            Command::Query(Query::EventsVerify)
        }
        _ => return Err(unknown("events", verb)),
    };
    Ok(cmd)
}
