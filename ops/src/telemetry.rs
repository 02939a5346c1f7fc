//! Logging and tracing set-up.
//!
//! # Logs
//! Human-readable on stderr by default, one JSON object per line with
//! `--log-format json`. `RUST_LOG` overrides the level; long-running commands
//! (`up`, `demo`) default to `info`, client commands to `warn` so that their
//! output stays clean.
//!
//! # Traces
//! When `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set, `up` and `demo` also export their spans over OTLP/HTTP with
//! protobuf bodies (to `<endpoint>/v1/traces`), through the SDK's batch
//! processor on its own thread. The service name is `OTEL_SERVICE_NAME`, else
//! a `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else `cairn`. Only spans
//! and events at info and above from Cairn's own crates are exported, so the
//! exporter's HTTP client never traces itself. The other standard variables
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_BSP_*`) are honored by the SDK. Without the variable no exporter is
//! built.
//!
//! # Shutdown
//! [`init`] returns a [`Telemetry`] whose [`Telemetry::shutdown`] flushes the
//! batch processor; `main` calls it after the command returns (for `up`,
//! after SIGINT/SIGTERM and the drain), before the process exits.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{EnvFilter, FilterFn};
use tracing_subscriber::prelude::*;

use crate::cli::{Cli, Command, LogFormat};

/// The service name when neither `OTEL_SERVICE_NAME` nor
/// `OTEL_RESOURCE_ATTRIBUTES` names one.
pub const DEFAULT_SERVICE_NAME: &str = "cairn";

/// How long shutdown waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`init`] set up; flush it with [`Telemetry::shutdown`] before exit.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter. A no-op when
    /// no exporter was built.
    pub fn shutdown(mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT)
        {
            tracing::warn!(error = %e, "flushing traces at exit failed");
        }
    }
}

pub fn init(args: &Cli) -> Telemetry {
    let serves = matches!(args.command, Command::Up(_) | Command::Demo(_));
    let default = if serves {
        "info,async_nats=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match args.log_format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let (provider, failed) = match serves.then(otlp_provider).flatten() {
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("cairn"))
            .with_filter(FilterFn::new(|meta| {
                meta.target().starts_with("cairn") && *meta.level() <= tracing::Level::INFO
            }))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "OTLP trace export is off: the exporter could not be built");
    }
    Telemetry { provider }
}

/// The OTLP/HTTP pipeline, or `None` when no endpoint is configured.
fn otlp_provider() -> Option<Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError>> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|var| std::env::var_os(var).is_some_and(|v| !v.is_empty()));
    if !configured {
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => return Some(Err(e)),
    };
    Some(Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build()))
}

/// The SDK's detected resource (`OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), with Cairn's name instead of the SDK's
/// `unknown_service` fallback, and the version.
fn resource() -> Resource {
    let service_name = opentelemetry::Key::from_static_str("service.name");
    let named = Resource::builder()
        .build()
        .get(&service_name)
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let builder = Resource::builder().with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    if named {
        builder.build()
    } else {
        builder.with_service_name(DEFAULT_SERVICE_NAME).build()
    }
}
