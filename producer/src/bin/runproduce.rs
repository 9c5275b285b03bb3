//! `runproduce`: send a producer log file (or a synthetic load) to a shardq cluster. All logic is
//! in `shardq_producer::cli`; this only parses flags, sets up logging and maps the outcome to an
//! exit code.

use std::process::ExitCode;

use clap::Parser;
use shardq_producer::cli::{self, Args};

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
    match cli::run(args).await {
        Ok(summary) => {
            for e in &summary.errors {
                eprintln!("runproduce {id}: error: {e}");
            }
            eprintln!("runproduce {id}: {summary}");
            if summary.ok() {
                ExitCode::SUCCESS
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
            ExitCode::FAILURE
        }
    }
}
