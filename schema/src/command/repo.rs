//! Requests of kind `repo`: their body types (`repo.add`, `remove`,
//! `check`, `ls`, `prune`), the server-path check, and the `repo.*` parse
//! arm.

use super::*;

/// The body of `repo.add`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoAddBody {
    /// The repository's name here (a DNS-1123 label).
    pub name: String,
    /// `file:///abs/dir` or `s3://bucket[/prefix][?endpoint=…&region=…&path_style=true]`.
    /// A `secret_key` in the URL is kept out of the journal. Left out: a
    /// repository in the server's data dir (`<data-dir>/repos/<tenant>/<name>`).
    #[serde(default)]
    pub url: Option<String>,
    /// A file (on the server) holding the repository key: 32 raw bytes or
    /// 64 hex digits. Without it and without `passphrase_file`, a new
    /// repository gets a new key file in the data dir.
    #[serde(default)]
    pub key_file: Option<String>,
    /// A file (on the server) whose first line is the passphrase (argon2id).
    #[serde(default)]
    pub passphrase_file: Option<String>,
}

/// The body of `repo.remove`, `repo.check`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoNameBody {
    /// A registered repository.
    pub name: String,
}

/// The body of `repo.ls`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoLsBody {
    pub name: String,
    /// Only this app's snapshots.
    #[serde(default)]
    pub app: Option<String>,
}

/// The body of `repo.prune`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RepoPruneBody {
    pub name: String,
    /// Keep the newest N snapshots of every app (at least 1).
    pub keep_last: u32,
}

/// A server-side file path from a request: absolute, bounded.
fn check_path(field: &str, path: String) -> Result<String, ApiError> {
    if !path.starts_with('/') || path.len() > 1024 || path.contains('\0') {
        return Err(ApiError::invalid(format!(
            "{field} must be an absolute path on the server (at most 1024 bytes), not {path:?}"
        )));
    }
    Ok(path)
}

/// Decodes and validates a `repo.<verb>` request.
pub(super) fn parse(verb: &str, bytes: &[u8]) -> Result<Command, ApiError> {
    let cmd = match verb {
        "add" => {
            let b: RepoAddBody = body(bytes)?;
            check_label("repo", &b.name)?;
            if let Some(url) = &b.url {
                check_repo_url(url)?;
            }
            let key = match (b.key_file, b.passphrase_file) {
                (Some(_), Some(_)) => {
                    return Err(ApiError::invalid(
                        "give key_file or passphrase_file, not both",
                    ));
                }
                (Some(f), None) => RepoKey::File(check_path("key_file", f)?),
                (None, Some(f)) => RepoKey::PassphraseFile(check_path("passphrase_file", f)?),
                (None, None) => RepoKey::Generate,
            };
            Command::Repo(RepoCommand::Add {
                name: b.name,
                url: b.url,
                key,
            })
        }
        "remove" | "check" => {
            let b: RepoNameBody = body(bytes)?;
            check_label("repo", &b.name)?;
            Command::Repo(if verb == "remove" {
                RepoCommand::Remove { name: b.name }
            } else {
                RepoCommand::Check { name: b.name }
            })
        }
        "list" => {
            body::<EmptyBody>(bytes)?;
            Command::Query(Query::RepoList)
        }
        "ls" => {
            let b: RepoLsBody = body(bytes)?;
            check_label("repo", &b.name)?;
            if let Some(app) = &b.app {
                check_label("app", app)?;
            }
            Command::Repo(RepoCommand::Ls {
                name: b.name,
                app: b.app,
            })
        }
        "prune" => {
            let b: RepoPruneBody = body(bytes)?;
            check_label("repo", &b.name)?;
            if b.keep_last == 0 {
                return Err(ApiError::invalid(
                    "keep_last must be at least 1 (prune never deletes every snapshot)",
                ));
            }
            Command::Repo(RepoCommand::Prune {
                name: b.name,
                keep_last: b.keep_last,
            })
        }
        _ => return Err(unknown("repo", verb)),
    };
    Ok(cmd)
}
