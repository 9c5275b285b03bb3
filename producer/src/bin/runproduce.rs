//! `runproduce`: send a producer log file (or a synthetic load) to a shardq cluster. All logic is
//! in `shardq_producer::cli`; this only parses flags, sets up logging, turns Ctrl-C into a clean
//! stop and maps the outcome to an exit code.

use std::process::ExitCode;

use clap::{Args as _, CommandFactory, FromArgMatches};
use shardq_producer::cli::{self, Args};
use shardq_protocol::logging::LogArgs;
use shardq_protocol::CancellationToken;

/// The library's flags plus `--version` and `--log-format` (text or json logs on stderr).
fn parse_args() -> (Args, LogArgs) {
    let matches = LogArgs::augment_args(Args::command())
        .version(env!("CARGO_PKG_VERSION"))
        .get_matches();
    let log = LogArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (args, log)
}

/// Exit status after Ctrl-C stopped the run before everything was sent (128 + SIGINT).
const INTERRUPTED: u8 = 130;

#[tokio::main]
async fn main() -> ExitCode {
    let (args, log) = parse_args();
    shardq_protocol::logging::init(log.log_format, "warn");
    let id = args.id;
    let timeout_secs = args.timeout_secs.max(1);
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    let interrupted = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!(
            "runproduce {id}: interrupted: sending no more records, waiting up to {timeout_secs}s \
             for acknowledgements (Ctrl-C again to quit now)"
        );
        on_signal.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("runproduce {id}: interrupted again: quitting without waiting");
            std::process::exit(INTERRUPTED.into());
        }
    });
    match cli::run_until(args, stop).await {
        Ok(summary) => {
            for e in &summary.errors {
                eprintln!("runproduce {id}: error: {e}");
            }
            eprintln!("runproduce {id}: {summary}");
            if summary.ok() {
                ExitCode::SUCCESS
            } else if summary.interrupted {
                ExitCode::from(INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            if let Some(invalid) = e.downcast_ref::<cli::InvalidInput>() {
                eprintln!("{invalid}");
            } else {
                eprintln!("runproduce {id}: error: {e:#}");
            }
            if interrupted.is_cancelled() {
                ExitCode::from(INTERRUPTED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
