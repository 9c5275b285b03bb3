//! The log setup every shardq binary shares (the `cli` feature): logs go to stderr, as text or
//! as one JSON object per line (`--log-format`), with ANSI colours only when stderr is a
//! terminal, so logs redirected to a file carry no escape codes.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The environment variable `--log-format` falls back to; `shardq up` sets it for the nodes it
/// starts, so they log the way it was asked to.
pub const LOG_FORMAT_ENV: &str = "SHARDQ_LOG_FORMAT";

/// `--log-format`, for a binary's flags (flatten it).
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct LogArgs {
    /// Log line format on stderr: text or json (one JSON object per line). RUST_LOG sets the
    /// level.
    #[arg(
        long,
        value_enum,
        default_value_t = LogFormat::Text,
        env = LOG_FORMAT_ENV,
        global = true
    )]
    pub log_format: LogFormat,
}

/// Installs the global subscriber: RUST_LOG or `default_level` (e.g. "info", "warn"), to stderr,
/// in `format`, coloured only when stderr is a terminal. A second call does nothing.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}
