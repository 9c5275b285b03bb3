//! `runconsume`: consume shards of a shardq cluster into `DIR/consumer_N.txt`. All logic is in
//! `shardq_consumer::cli`; this parses flags, sets up logging, turns Ctrl-C into a clean stop (a second one quits at once) and
//! maps the outcome to an exit code.

use std::process::ExitCode;

use clap::{Args as _, CommandFactory, FromArgMatches};
use shardq_consumer::cli::{self, Args};
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

#[tokio::main]
async fn main() -> ExitCode {
    let (args, log) = parse_args();
    shardq_protocol::logging::init(log.log_format, "warn");
    let id = args.id;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!("runconsume {id}: interrupted: writing and committing what it has (Ctrl-C again to quit now)");
        on_signal.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("runconsume {id}: interrupted again: quitting without the final commit");
            std::process::exit(130);
        }
    });
    match cli::run(args, stop).await {
        Ok(summary) => {
            eprintln!("runconsume {id}: {summary}");
            if summary.topic_gone.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("runconsume {id}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
