//! Failpoints: named places in the runtime where a test can make Cairn fail
//! on purpose, to check that it recovers. They are armed only through the
//! `CAIRN_FAILPOINTS` environment variable of `cairn up`, read once:
//!
//! ```text
//! CAIRN_FAILPOINTS="app.execute.config-set=panic-once,volume.execute.snapshot=panic"
//! ```
//!
//! Actions: `panic` (every hit), `panic-once` (the first hit only) and
//! `abort` (kill the process without cleanup, like `kill -9`). Unarmed
//! failpoints cost one hash lookup in a map that is empty in production.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::OnceLock;

/// The environment variable that arms failpoints.
pub const ENV: &str = "CAIRN_FAILPOINTS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Panic,
    PanicOnce,
    Abort,
}

fn armed() -> &'static Mutex<HashMap<String, Action>> {
    static ARMED: OnceLock<Mutex<HashMap<String, Action>>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let mut map = HashMap::new();
        if let Ok(spec) = std::env::var(ENV) {
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
                tracing::warn!(failpoint = name, ?action, "failpoint armed");
                map.insert(name.trim().to_owned(), action);
            }
        }
        Mutex::new(map)
    })
}

/// Fails here if the failpoint `name` is armed.
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
