//! `runconsume`: consume shards of a shardq cluster into `DIR/consumer_N.txt`. All logic is in
//! `shardq_consumer::cli`; this parses flags, sets up logging, turns Ctrl-C into a clean stop (a second one quits at once) and
//! maps the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use shardq_consumer::cli::{self, Args};
use shardq_protocol::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
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
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runconsume {id}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
