//! Structured requests for fuzzing [`crate::Command::parse`]: every input
//! is a real `kind.verb` of the API table with its example body, then
//! mutated field by field (values swapped for hostile ones, fields dropped
//! or added, YAML made deep, bytes cut or flipped). A byte-level fuzzer
//! almost never forms a valid `kind.verb`, let alone a body that gets past
//! the first field; this one starts inside every operation.
//!
//! Pure and deterministic: the choices come from the caller (`choose(n)`
//! returns an index below `n`), so the same driver serves the cargo-fuzz
//! target (`schema/fuzz`, from libFuzzer's bytes) and the property test
//! (from proptest's numbers). Compiled for tests and under the `fuzzing`
//! feature only.

use serde_json::{Map, Value};

use crate::api::OPERATIONS;

/// Strings that have broken parsers somewhere.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "../../etc/shadow",
    "/etc/shadow",
    "file:///etc",
    "s3://b?endpoint=http://169.254.169.254",
    "a/b/c",
    "v@s@t",
    "_admin",
    "_cluster",
    "UPPER",
    "-leading",
    "trailing-",
    "ÿ\u{0}\u{1f}",
    "é",
    "9999999999999999999999T",
    "-1",
    "1e400",
    "0x10",
    "18446744073709551616",
    "${nope}",
    "${workflow.id}",
    "a: [[[[[[[[",
    "---\n---\n",
    "{",
    "kind: App\napiVersion: cairn.dev/v1\nmetadata: {name: x}",
    "&a [*a, *a]",
    "!!binary AAAA",
    "12:30:00",
    "2024-02-31T00:00:00Z",
];

/// One structured request: `(kind, verb, body bytes)`.
pub fn request(choose: &mut dyn FnMut(usize) -> usize) -> (&'static str, &'static str, Vec<u8>) {
    let op = &OPERATIONS[choose(OPERATIONS.len())];
    let mut body: Value = serde_json::from_str(op.example).unwrap_or(Value::Null);
    for _ in 0..choose(5) {
        mutate(&mut body, choose, 0);
    }
    let mut bytes = serde_json::to_vec(&body).unwrap_or_default();
    match choose(8) {
        0 if !bytes.is_empty() => {
            let at = choose(bytes.len());
            bytes.truncate(at);
        }
        1 if !bytes.is_empty() => {
            let at = choose(bytes.len());
            bytes[at] ^= 1 << choose(8);
        }
        _ => {}
    }
    (op.kind, op.verb, bytes)
}

fn hostile_value(choose: &mut dyn FnMut(usize) -> usize) -> Value {
    match choose(9) {
        0 => Value::String(HOSTILE[choose(HOSTILE.len())].to_owned()),
        1 => Value::String("x".repeat(choose(70_000))),
        2 => Value::String(format!("a: {}", "[".repeat(choose(400)))),
        3 => [
            serde_json::json!(i64::MIN),
            serde_json::json!(u64::MAX),
            serde_json::json!(-0.0),
            serde_json::json!(1e300),
        ][choose(4)]
        .clone(),
        4 => Value::Bool(choose(2) == 0),
        5 => Value::Null,
        6 => Value::Array(Vec::new()),
        7 => Value::Object(Map::new()),
        _ => {
            let mut v = Value::Null;
            for _ in 0..choose(130) {
                v = Value::Array(vec![v]);
            }
            v
        }
    }
}

fn mutate(value: &mut Value, choose: &mut dyn FnMut(usize) -> usize, depth: usize) {
    match value {
        Value::Object(map) if !map.is_empty() && depth < 8 => {
            let key = map
                .keys()
                .nth(choose(map.len()))
                .cloned()
                .unwrap_or_default();
            match choose(6) {
                0 => {
                    map.remove(&key);
                }
                1 => {
                    map.insert(format!("unknown_{}", choose(3)), hostile_value(choose));
                }
                2 | 3 => {
                    map.insert(key, hostile_value(choose));
                }
                _ => {
                    if let Some(inner) = map.get_mut(&key) {
                        mutate(inner, choose, depth + 1);
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() && depth < 8 => {
            let at = choose(items.len());
            match choose(3) {
                0 => {
                    items.remove(at);
                }
                1 => items.push(hostile_value(choose)),
                _ => mutate(&mut items[at], choose, depth + 1),
            }
        }
        other => *other = hostile_value(choose),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// `Command::parse` never panics on structured, mutated requests of
        /// every operation.
        #[test]
        fn parse_never_panics_on_structured_requests(
            choices in proptest::collection::vec(proptest::num::usize::ANY, 1..64),
        ) {
            let mut at = 0;
            let mut choose = |n: usize| {
                let c = choices[at % choices.len()];
                at += 1;
                if n == 0 { 0 } else { c % n }
            };
            let (kind, verb, bytes) = request(&mut choose);
            let _ = crate::Command::parse(kind, verb, &bytes);
        }
    }

    #[test]
    fn the_driver_reaches_every_operation_and_unmutated_examples_parse() {
        let mut reached = std::collections::BTreeSet::new();
        for i in 0..OPERATIONS.len() {
            // First choice: the operation; then no mutation, no cut.
            let mut choices = vec![i, 0, 2].into_iter();
            let (kind, verb, bytes) = request(&mut |n| choices.next().unwrap_or(0) % n.max(1));
            reached.insert((kind, verb));
            crate::Command::parse(kind, verb, &bytes)
                .unwrap_or_else(|e| panic!("{kind}.{verb}'s example: {e}"));
        }
        assert_eq!(reached.len(), OPERATIONS.len());
    }
}
