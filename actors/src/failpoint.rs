//! Failpoints: named places in the runtime where a test can make Cairn fail
//! on purpose, to check that it recovers. They exist only in a build with
//! the cargo feature `failpoints` (off by default; the integration harness,
//! `cairn_integration::cairn_bin`, builds its `cairn` with it), and are
//! armed through the `CAIRN_FAILPOINTS` environment variable of `cairn up`,
//! read once:
//!
//! ```text
//! CAIRN_FAILPOINTS="app.execute.config-set=panic-once,volume.execute.snapshot=panic"
//! ```
//!
//! Actions: `panic` (every hit), `panic-once` (the first hit only) and
//! `abort` (kill the process without cleanup, like `kill -9`).
//!
//! # Invariant
//! A default build (every release binary) has no failpoint mechanism:
//! [`hit`] is an empty inline function and `CAIRN_FAILPOINTS` is never
//! acted on, only reported as ignored ([`warn_if_requested`]), so no
//! environment variable can kill a production process.

/// The environment variable that arms failpoints.
pub const ENV: &str = "CAIRN_FAILPOINTS";

/// Whether this build has failpoints (the `failpoints` feature).
pub const ENABLED: bool = cfg!(feature = "failpoints");

#[cfg(any(feature = "failpoints", test))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Panic,
    PanicOnce,
    Abort,
}

/// What this build makes of a `CAIRN_FAILPOINTS` value: the armed
/// failpoints. Always empty without the `failpoints` feature.
#[cfg(any(feature = "failpoints", test))]
fn parse(spec: &str) -> Vec<(String, Action)> {
    if !ENABLED {
        return Vec::new();
    }
    let mut out = Vec::new();
    for item in spec.split(',').filter(|s| !s.trim().is_empty()) {
        let (name, action) = item.split_once('=').unwrap_or((item, "panic"));
        let action = match action.trim() {
            "panic" => Action::Panic,
            "panic-once" => Action::PanicOnce,
            "abort" => Action::Abort,
            other => {
                tracing::warn!(
                    failpoint = name,
                    action = other,
                    "unknown failpoint action ignored"
                );
                continue;
            }
        };
        out.push((name.trim().to_owned(), action));
    }
    out
}

/// Logs that `CAIRN_FAILPOINTS` is set in a build without failpoints (and
/// so is ignored). Called once at start-up.
pub fn warn_if_requested() {
    if !ENABLED && std::env::var_os(ENV).is_some() {
        tracing::warn!(
            "{ENV} is set, but this build has no failpoints (cargo feature `failpoints`): ignored"
        );
    }
}

/// Fails here if the failpoint `name` is armed. Without the `failpoints`
/// feature, does nothing.
#[inline(always)]
pub fn hit(name: &str) {
    #[cfg(feature = "failpoints")]
    armed::hit(name);
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use super::{Action, ENV, parse};

    fn armed() -> &'static Mutex<HashMap<String, Action>> {
        static ARMED: OnceLock<Mutex<HashMap<String, Action>>> = OnceLock::new();
        ARMED.get_or_init(|| {
            let spec = std::env::var(ENV).unwrap_or_default();
            let map: HashMap<_, _> = parse(&spec).into_iter().collect();
            for (name, action) in &map {
                tracing::warn!(failpoint = %name, ?action, "failpoint armed");
            }
            Mutex::new(map)
        })
    }

    pub fn hit(name: &str) {
        let action = {
            let mut map = armed().lock().unwrap_or_else(|e| e.into_inner());
            match map.get(name).copied() {
                None => return,
                Some(Action::PanicOnce) => {
                    map.remove(name);
                    Action::PanicOnce
                }
                Some(a) => a,
            }
        };
        match action {
            Action::Panic | Action::PanicOnce => panic!("failpoint {name} hit"),
            Action::Abort => {
                eprintln!("failpoint {name} hit: aborting");
                std::process::abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default build (what `cargo build --release` makes) arms nothing,
    /// whatever `CAIRN_FAILPOINTS` says, and a hit is a no-op.
    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn a_default_build_ignores_cairn_failpoints() {
        const { assert!(!ENABLED) };
        assert!(parse("volume.execute.create=abort,saga.before.x=panic").is_empty());
        hit("volume.execute.create");
        hit("saga.before.x");
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn a_failpoints_build_parses_the_spec() {
        assert_eq!(
            parse("a=abort, b=panic-once,c,d=bogus"),
            [
                ("a".to_owned(), Action::Abort),
                ("b".to_owned(), Action::PanicOnce),
                ("c".to_owned(), Action::Panic),
            ]
        );
    }
}
