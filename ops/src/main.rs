//! The `cairn` binary: the CLI client, `cairn up` and `cairn demo`.
//!
//! This crate stays thin: it parses arguments, calls `cairn_actors`, and
//! prints. Every command maps to one request on
//! `cairn.v1.<tenant>.<kind>.<verb>` (see `cairn_schema::command`).

mod cli;
mod demo;
mod output;
mod security_args;
mod telemetry;
mod up;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    if !matches!(args.command, cli::Command::Up(_) | cli::Command::Demo(_)) {
        // A client printing into `| head` should stop quietly, not panic.
        // SAFETY: setting a signal disposition before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let telemetry = telemetry::init(&args);
    let code = actix_rt::System::new().block_on(cli::run(args));
    // Export the spans still queued before exit skips every destructor.
    telemetry.shutdown();
    std::process::exit(code);
}
