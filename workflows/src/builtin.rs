//! The built-in operations as workflow definitions: the same `kind:
//! Workflow` format users write (`workflows/definitions/*.yaml`, compiled
//! in), readable with `cairn workflow show app-snapshot`.

/// (name, definition text) of every built-in.
pub const BUILTINS: &[(&str, &str)] = &[
    (
        "app-snapshot",
        include_str!("../definitions/app-snapshot.yaml"),
    ),
    (
        "app-rollback",
        include_str!("../definitions/app-rollback.yaml"),
    ),
    ("app-clone", include_str!("../definitions/app-clone.yaml")),
    (
        "app-snapshot-delete",
        include_str!("../definitions/app-snapshot-delete.yaml"),
    ),
    ("app-delete", include_str!("../definitions/app-delete.yaml")),
    ("app-push", include_str!("../definitions/app-push.yaml")),
    ("app-pull", include_str!("../definitions/app-pull.yaml")),
    (
        "app-pull-repair",
        include_str!("../definitions/app-pull-repair.yaml"),
    ),
];

/// A built-in definition's text, by name.
pub fn text(name: &str) -> Option<&'static str> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::parse;

    #[test]
    fn every_builtin_parses_under_its_own_name() {
        for (name, text) in BUILTINS {
            let t = parse(text).unwrap_or_else(|e| panic!("{name}: {}", e.message));
            assert_eq!(&t.name, name);
        }
    }

    #[test]
    fn the_shipped_examples_parse_and_resolve() {
        let drill = parse(include_str!(
            "../../examples/workflows/upgrade-fire-drill.yaml"
        ))
        .unwrap();
        let d = drill
            .resolve(
                "wf-1",
                &[
                    ("app".into(), serde_json::json!("pg")),
                    ("image".into(), serde_json::json!("postgres:16")),
                ],
            )
            .unwrap();
        assert_eq!(
            d.steps[1].action.with["set"],
            serde_json::json!(["image=postgres:16"])
        );
        assert_eq!(d.steps[1].action.with["target"], "pg-drill");
        let nightly = parse(include_str!(
            "../../examples/workflows/nightly-snapshot.yaml"
        ))
        .unwrap();
        assert_eq!(nightly.params.len(), 3);
    }
}
