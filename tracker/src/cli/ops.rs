//! What `shoal-tracker serve` needs to run as a service: its log format and the state it tells
//! the service manager.

/// Log format on stderr.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log collectors.
    Json,
}

/// Installs the log subscriber: `SHOAL_LOG` filters (default `info`), in `format`.
pub(crate) fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Tells the service manager the tracker's state, if one started it (a no-op without
/// NOTIFY_SOCKET); a failure is only logged.
pub(crate) fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(&state)) {
        tracing::warn!(error = %e, %state, "cannot notify the service manager");
    }
}
