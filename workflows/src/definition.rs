//! Workflow definitions as data: the `kind: Workflow` YAML format, its
//! parameters and `${param}` substitution, and the resolved [`Definition`]
//! the saga machine runs. Pure: text in, definition or error out.
//!
//! ```yaml
//! apiVersion: cairn.dev/v1
//! kind: Workflow
//! metadata: {name: nightly}
//! spec:
//!   params:
//!     app: {required: true}
//!     keep: {default: 7}
//!   output: snapshot            # the step whose reply is the workflow's
//!   steps:
//!     - name: snapshot
//!       run: app.snapshot       # any API command, kind.verb
//!       with: {name: "${app}", snapshot: "nightly-${date}"}
//!       compensate: {run: app.snapshot-delete, with: {name: "${app}", snapshot: "nightly-${date}"}}
//!       retry: {attempts: 3, backoff: 200ms, maxBackoff: 10s}
//!       timeout: 5m
//! ```
//!
//! A param written `name: null` or `{required: true}` must be given; a
//! scalar is its default. A param declared `{secret: true}` (a password, an
//! access key) is sealed in the journal by the runtime and shown as
//! `<redacted>` in views, events and exports ([`Template::redact`]). `${workflow.id}` is the workflow's id. A string
//! that is exactly `${p}` becomes `p`'s JSON value (a list stays a list);
//! inside longer text a value is spliced as text.

use std::collections::BTreeMap;

use cairn_schema::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most steps one definition has.
pub const MAX_STEPS: usize = 64;
/// Largest definition text accepted.
pub const MAX_DEFINITION_BYTES: usize = 64 << 10;
/// The longest timeout a step may ask for (a day).
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// The longest wait between two attempts of a step (an hour): a definition
/// cannot park a workflow, and its tenant's saga slot, for years.
pub const MAX_BACKOFF_MS: u64 = 3600 * 1000;
/// Most attempts of one step.
pub const MAX_ATTEMPTS: u32 = 100;

/// One API command: `kind.verb` with JSON arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub run: String,
    #[serde(default)]
    pub with: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            max_attempts: 3,
            backoff_ms: 200,
            max_backoff_ms: 10_000,
        }
    }
}

impl Retry {
    /// The wait before attempt `attempt` (2, 3, …): doubling, capped.
    pub fn delay_ms(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(2).min(32);
        self.backoff_ms
            .saturating_mul(1u64 << doublings)
            .min(self.max_backoff_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    #[serde(flatten)]
    pub action: Action,
    #[serde(default)]
    pub compensate: Option<Action>,
    #[serde(default)]
    pub retry: Retry,
    pub timeout_ms: u64,
}

/// A definition with its parameters substituted: what a saga runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub description: String,
    pub steps: Vec<Step>,
    /// The step whose reply is the workflow's reply (default: the last).
    pub output: usize,
}

/// One declared parameter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Param {
    pub name: String,
    pub required: bool,
    pub default: Option<Value>,
    pub description: String,
    /// `secret: true`: its value is sealed in the journal and redacted
    /// wherever the workflow is shown.
    pub secret: bool,
}

/// A parsed, not yet substituted definition.
#[derive(Debug, Clone)]
pub struct Template {
    pub name: String,
    pub description: String,
    pub params: Vec<Param>,
    output: Option<String>,
    steps: Vec<RawStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    kind: String,
    #[serde(default)]
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, Value>,
    #[serde(default)]
    output: Option<String>,
    steps: Vec<RawStep>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    name: String,
    run: String,
    #[serde(default)]
    with: Value,
    #[serde(default)]
    compensate: Option<RawAction>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    timeout: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    run: String,
    #[serde(default)]
    with: Value,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRetry {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    backoff: Option<Value>,
    #[serde(default)]
    max_backoff: Option<Value>,
}

fn invalid(what: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("workflow definition: {what}"))
}

/// `250ms`, `30s`, `5m`, `1h 30m` (humantime's syntax), or a number of
/// seconds.
pub fn parse_duration_ms(value: &Value) -> Result<u64, String> {
    let text = match value {
        Value::Number(n) => {
            return n
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| (s * 1000.0) as u64)
                .ok_or_else(|| format!("{n} is not a duration"));
        }
        Value::String(s) => s.trim(),
        other => return Err(format!("{other} is not a duration")),
    };
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text
            .parse()
            .map_err(|_| format!("{text:?} is too many seconds"))?;
        return Ok(secs.saturating_mul(1000));
    }
    humantime::parse_duration(text)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|e| format!("{text:?} is not a duration (like 500ms, 30s, 5m, 1h 30m): {e}"))
}

fn check_command(run: &str, step: &str) -> Result<(), ApiError> {
    let ok = run.split_once('.').is_some_and(|(k, v)| {
        let word =
            |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        word(k) && word(v)
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "step {step}: run must name an API command as kind.verb (like app.snapshot), not {run:?}"
        )))
    }
}

/// Parses a `kind: Workflow` document.
pub fn parse(text: &str) -> Result<Template, ApiError> {
    if text.len() > MAX_DEFINITION_BYTES {
        return Err(invalid(format!(
            "it is {} bytes; the limit is {MAX_DEFINITION_BYTES}",
            text.len()
        )));
    }
    cairn_schema::yaml::check_nesting("the workflow definition", text)?;
    let doc: Document = serde_yaml_ng::from_str(text).map_err(invalid)?;
    if doc.kind != "Workflow" {
        return Err(invalid(format!(
            "kind must be Workflow, not {:?}",
            doc.kind
        )));
    }
    if let Some(v) = &doc.api_version
        && !v.starts_with("cairn.dev/")
    {
        return Err(invalid(format!(
            "apiVersion must be cairn.dev/v1, not {v:?}"
        )));
    }
    let name = doc.metadata.name.unwrap_or_else(|| "workflow".into());
    cairn_schema::names::check_label("workflow name", &name)?;
    if doc.spec.steps.is_empty() || doc.spec.steps.len() > MAX_STEPS {
        return Err(invalid(format!("it needs 1 to {MAX_STEPS} steps")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for step in &doc.spec.steps {
        if !seen.insert(step.name.as_str()) {
            return Err(invalid(format!("two steps are named {:?}", step.name)));
        }
        check_command(&step.run, &step.name)?;
        if let Some(c) = &step.compensate {
            check_command(&c.run, &step.name)?;
        }
    }
    if let Some(output) = &doc.spec.output
        && !seen.contains(output.as_str())
    {
        return Err(invalid(format!("output names no step: {output:?}")));
    }
    let params = doc
        .spec
        .params
        .into_iter()
        .map(|(name, spec)| {
            let (required, default, description, secret) = match spec {
                Value::Null => (true, None, String::new(), false),
                Value::Object(m)
                    if m.keys().all(|k| {
                        matches!(
                            k.as_str(),
                            "required" | "default" | "description" | "secret"
                        )
                    }) =>
                {
                    let default = m.get("default").cloned();
                    let required = m
                        .get("required")
                        .and_then(Value::as_bool)
                        .unwrap_or(default.is_none());
                    let description = m
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    let secret = m.get("secret").and_then(Value::as_bool).unwrap_or(false);
                    (required, default, description, secret)
                }
                other => (false, Some(other), String::new(), false),
            };
            Param {
                name,
                required,
                default,
                description,
                secret,
            }
        })
        .collect();
    let template = Template {
        name,
        description: doc.spec.description.unwrap_or_default(),
        params,
        output: doc.spec.output,
        steps: doc.spec.steps,
    };
    // Every ${…} must name a param: checked now, with placeholder values.
    let placeholders: Vec<(String, Value)> = template
        .params
        .iter()
        .map(|p| (p.name.clone(), Value::String(String::new())))
        .collect();
    template.resolve("check", &placeholders)?;
    Ok(template)
}

impl Template {
    /// Whether `name` is a param declared `secret: true`.
    pub fn is_secret(&self, name: &str) -> bool {
        self.params.iter().any(|p| p.secret && p.name == name)
    }

    /// The params as they may be shown: a secret param's value (given or
    /// default) becomes `"<redacted>"`. Resolving with these gives the
    /// definition a view shows.
    pub fn redact(&self, given: &[(String, Value)]) -> Vec<(String, Value)> {
        let redacted = || Value::String(cairn_schema::sealed::REDACTED.to_owned());
        let mut out: Vec<(String, Value)> = given
            .iter()
            .map(|(k, v)| {
                let v = if self.is_secret(k) {
                    redacted()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect();
        for p in &self.params {
            if p.secret && p.default.is_some() && !given.iter().any(|(k, _)| k == &p.name) {
                out.push((p.name.clone(), redacted()));
            }
        }
        out
    }

    /// Substitutes parameters (given values over defaults) and the workflow
    /// id: the definition a saga runs.
    pub fn resolve(&self, id: &str, given: &[(String, Value)]) -> Result<Definition, ApiError> {
        let mut values: BTreeMap<String, Value> = BTreeMap::new();
        for (k, v) in given {
            if !self.params.iter().any(|p| &p.name == k) {
                let known: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                return Err(invalid(format!(
                    "{} has no param {k:?} (it has: {})",
                    self.name,
                    known.join(", ")
                )));
            }
            values.insert(k.clone(), v.clone());
        }
        for p in &self.params {
            if !values.contains_key(&p.name) {
                match (&p.default, p.required) {
                    (Some(d), _) => {
                        values.insert(p.name.clone(), d.clone());
                    }
                    (None, true) => {
                        return Err(invalid(format!(
                            "{} needs param {:?} (--param {}=…)",
                            self.name, p.name, p.name
                        )));
                    }
                    (None, false) => {
                        values.insert(p.name.clone(), Value::String(String::new()));
                    }
                }
            }
        }
        values.insert("workflow.id".into(), Value::String(id.to_owned()));
        let steps = self
            .steps
            .iter()
            .map(|raw| {
                let at = |what: &str| format!("step {}: {what}", raw.name);
                let retry = match &raw.retry {
                    None => Retry::default(),
                    Some(r) => {
                        let d = Retry::default();
                        let ms = |v: &Option<Value>, default: u64| -> Result<u64, ApiError> {
                            let ms = v.as_ref().map_or(Ok(default), |v| {
                                parse_duration_ms(v).map_err(|e| invalid(at(&e)))
                            })?;
                            if ms > MAX_BACKOFF_MS {
                                return Err(invalid(at(
                                    "retry backoff and maxBackoff must be at most 1h",
                                )));
                            }
                            Ok(ms)
                        };
                        let attempts = r.attempts.unwrap_or(d.max_attempts);
                        if !(1..=MAX_ATTEMPTS).contains(&attempts) {
                            return Err(invalid(at(&format!(
                                "retry attempts must be 1 to {MAX_ATTEMPTS}"
                            ))));
                        }
                        Retry {
                            max_attempts: attempts,
                            backoff_ms: ms(&r.backoff, d.backoff_ms)?,
                            max_backoff_ms: ms(&r.max_backoff, d.max_backoff_ms)?,
                        }
                    }
                };
                let timeout_ms = match &raw.timeout {
                    None => 60_000,
                    Some(v) => parse_duration_ms(v).map_err(|e| invalid(at(&e)))?,
                };
                if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
                    return Err(invalid(at("timeout must be more than 0 and at most 24h")));
                }
                Ok(Step {
                    name: raw.name.clone(),
                    action: Action {
                        run: raw.run.clone(),
                        with: substitute(&raw.with, &values).map_err(|e| invalid(at(&e)))?,
                    },
                    compensate: match &raw.compensate {
                        None => None,
                        Some(c) => Some(Action {
                            run: c.run.clone(),
                            with: substitute(&c.with, &values)
                                .map_err(|e| invalid(at(&format!("compensate: {e}"))))?,
                        }),
                    },
                    retry,
                    timeout_ms,
                })
            })
            .collect::<Result<Vec<Step>, ApiError>>()?;
        let output = match &self.output {
            Some(name) => steps.iter().position(|s| &s.name == name).unwrap_or(0),
            None => steps.len() - 1,
        };
        Ok(Definition {
            name: self.name.clone(),
            description: self.description.clone(),
            steps,
            output,
        })
    }
}

/// Replaces `${name}` in every string of `value`.
fn substitute(value: &Value, values: &BTreeMap<String, Value>) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}'))
                && !name.contains("${")
            {
                return values
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("${{{name}}} is not a param"));
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(at) = rest.find("${") {
                out.push_str(&rest[..at]);
                let after = &rest[at + 2..];
                let end = after
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?;
                let name = &after[..end];
                let v = values
                    .get(name)
                    .ok_or_else(|| format!("${{{name}}} is not a param"))?;
                match v {
                    Value::String(t) => out.push_str(t),
                    other => out.push_str(&other.to_string()),
                }
                rest = &after[end + 1..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute(v, values))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, values)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// The pinned hash of a definition's text (blake3, hex).
pub fn hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NIGHTLY: &str = r#"
apiVersion: cairn.dev/v1
kind: Workflow
metadata: {name: nightly}
spec:
  params:
    app: null
    tag: {default: nightly}
    set: {default: []}
  steps:
    - name: snap
      run: app.snapshot
      with: {name: "${app}", snapshot: "${tag}-${workflow.id}", set: "${set}"}
      compensate: {run: app.snapshot-delete, with: {name: "${app}", snapshot: "${tag}-${workflow.id}"}}
      retry: {attempts: 2, backoff: 1s}
      timeout: 5m
"#;

    #[test]
    fn params_substitute_everywhere_and_whole_values_keep_their_type() {
        let t = parse(NIGHTLY).unwrap();
        let d = t
            .resolve(
                "wf-1",
                &[
                    ("app".into(), json!("shop")),
                    ("set".into(), json!(["a=1"])),
                ],
            )
            .unwrap();
        let step = &d.steps[0];
        assert_eq!(
            step.action.with,
            json!({"name": "shop", "snapshot": "nightly-wf-1", "set": ["a=1"]})
        );
        assert_eq!(
            step.compensate.as_ref().unwrap().with,
            json!({"name": "shop", "snapshot": "nightly-wf-1"})
        );
        assert_eq!(step.retry.max_attempts, 2);
        assert_eq!(step.retry.backoff_ms, 1000);
        assert_eq!(step.timeout_ms, 300_000);
        assert_eq!(d.output, 0);
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let t = parse(NIGHTLY).unwrap();
        let e = t.resolve("x", &[]).unwrap_err();
        assert!(e.message.contains("needs param \"app\""), "{}", e.message);
        let e = t.resolve("x", &[("nope".into(), json!(1))]).unwrap_err();
        assert!(e.message.contains("no param \"nope\""), "{}", e.message);
        let e = parse(&NIGHTLY.replace("${tag}", "${tga}")).unwrap_err();
        assert!(e.message.contains("${tga} is not a param"), "{}", e.message);
        let e = parse(&NIGHTLY.replace("run: app.snapshot\n", "run: snapshot\n")).unwrap_err();
        assert!(e.message.contains("kind.verb"), "{}", e.message);
        let e = parse("kind: Workflow\nspec: {steps: []}").unwrap_err();
        assert!(e.message.contains("1 to 64 steps"), "{}", e.message);
        assert!(parse("kind: Job\nspec: {steps: []}").is_err());
        assert!(parse("{not yaml").is_err());
        let e = parse(&NIGHTLY.replace("timeout: 5m", "timeout: 5 parsecs")).unwrap_err();
        assert!(e.message.contains("not a duration"), "{}", e.message);
        let e = parse(&NIGHTLY.replace("timeout: 5m", "timeout: 5 weeks")).unwrap_err();
        assert!(e.message.contains("at most 24h"), "{}", e.message);
    }

    /// Finding 5 of issue 13: `backoff: 87600h` parked a workflow (and a
    /// saga slot) for ten years.
    #[test]
    fn retry_is_bounded_before_anything_runs() {
        let params = [("app".to_owned(), json!("shop"))];
        let resolve = |text: &str| parse(text).and_then(|t| t.resolve("wf-1", &params));
        let long = NIGHTLY.replace("backoff: 1s", "backoff: 87600h");
        assert!(
            long.contains("87600h"),
            "the fixture has a backoff to replace"
        );
        let e = resolve(&long).unwrap_err();
        assert!(e.message.contains("at most 1h"), "{}", e.message);
        let e =
            resolve(&NIGHTLY.replace("backoff: 1s", "backoff: 1s, maxBackoff: 2h")).unwrap_err();
        assert!(e.message.contains("at most 1h"), "{}", e.message);
        let e = resolve(&NIGHTLY.replace("attempts: 2", "attempts: 100000")).unwrap_err();
        assert!(
            e.message.contains("attempts must be 1 to 100"),
            "{}",
            e.message
        );
        assert!(resolve(&NIGHTLY.replace("backoff: 1s", "backoff: 1h")).is_ok());
    }

    #[test]
    fn secret_params_are_declared_and_redacted() {
        let t = parse(
            r#"
kind: Workflow
metadata: {name: upload}
spec:
  params:
    app: null
    key: {required: true, secret: true}
    token: {default: abc, secret: true}
  steps:
    - name: push
      run: app.push
      with: {name: "${app}", key: "${key}", token: "x-${token}"}
"#,
        )
        .unwrap();
        assert!(t.is_secret("key") && t.is_secret("token") && !t.is_secret("app"));
        let given = [
            ("app".to_owned(), json!("shop")),
            ("key".to_owned(), json!("hunter2")),
        ];
        let shown = t.redact(&given);
        assert!(shown.contains(&("app".to_owned(), json!("shop"))));
        assert!(shown.contains(&("key".to_owned(), json!("<redacted>"))));
        assert!(shown.contains(&("token".to_owned(), json!("<redacted>"))));
        let d = t.resolve("wf", &shown).unwrap();
        let text = d.steps[0].action.with.to_string();
        assert!(!text.contains("hunter2") && !text.contains("abc"), "{text}");
        // Running, the real values are substituted.
        let d = t.resolve("wf", &given).unwrap();
        assert_eq!(d.steps[0].action.with["key"], "hunter2");
        assert_eq!(d.steps[0].action.with["token"], "x-abc");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms(&json!("250ms")), Ok(250));
        assert_eq!(parse_duration_ms(&json!(2)), Ok(2000));
        assert_eq!(parse_duration_ms(&json!("2h")), Ok(7_200_000));
        assert!(parse_duration_ms(&json!("soon")).is_err());
        assert_eq!(parse_duration_ms(&json!("1h 30m")), Ok(5_400_000));
        assert_eq!(parse_duration_ms(&json!("45")), Ok(45_000));
        assert!(parse_duration_ms(&json!("-5s")).is_err());
        assert!(parse_duration_ms(&json!("")).is_err());
    }
}
