//! Logging set-up: human-readable by default, JSON with `--log-format json`.
//! `RUST_LOG` overrides the level; long-running commands default to `info`,
//! client commands to `warn` so that their output stays clean.

use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, LogFormat};

pub fn init(args: &Cli) {
    let default = match &args.command {
        crate::cli::Command::Up(_) => "info,async_nats=warn",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
