//! `shardq router`: command-line options of the routing front and the loop that runs it until
//! Ctrl-C or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shardq_protocol::DEFAULT_MAX_FRAME;
use shardq_ring::{HashFn, PlacementMode, RingConfig, DEFAULT_VNODES};
use tracing::info;

use shardq_protocol::cli_args::ListenerArgs;

use crate::{start, RouterConfig, DEFAULT_LISTEN, DEFAULT_MAX_MOVES};

/// Run the routing front: broker membership, topics, shard placement, metadata and a proxy for
/// clients that only know this address.
#[derive(clap::Args, Debug, Clone)]
pub struct RouterArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Directory of the router's metadata (members, topics, assignment, epoch); a restart with
    /// the same directory loses nothing.
    #[arg(long, default_value = "./shardq-data/router")]
    pub data: PathBuf,
    /// Virtual nodes per unit of broker weight on the consistent-hash ring.
    #[arg(long, default_value_t = DEFAULT_VNODES, value_parser = clap::value_parser!(u32).range(1..))]
    pub vnodes: u32,
    /// Hash function of the ring: xxh3, fnv1a, sip13 or murmur3.
    #[arg(long, default_value_t = HashFn::Xxh3)]
    pub hash: HashFn,
    /// Placement of new shards: plain (ring owner), bounded (bounded-load with the default
    /// slack) or bounded:EPS (each broker holds at most ceil((1+EPS) x fair share)).
    #[arg(long, default_value_t = RingConfig::default().mode)]
    pub placement: PlacementMode,
    /// A broker without a heartbeat for this many milliseconds is down: the shards it led elect
    /// new leaders from their in-sync replicas. Brokers get a leader lease of 2/3 of this.
    #[arg(long, default_value_t = crate::DEFAULT_BROKER_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub broker_timeout_ms: u64,
    /// Replicas per shard of a topic created without `--replication-factor` (capped at the
    /// brokers up when the topic is created).
    #[arg(long, default_value_t = crate::DEFAULT_REPLICATION_FACTOR, value_parser = clap::value_parser!(u32).range(1..=5))]
    pub default_replication_factor: u32,
    /// A broker down for this many milliseconds has its replicas re-created on other brokers
    /// (copied from their leaders), restoring each shard's replication factor; it gets its
    /// place back when it returns.
    #[arg(long, default_value_t = crate::DEFAULT_REPLACE_AFTER.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub replace_after_ms: u64,
    /// How often, in milliseconds, the leaders are told to apply their topics' retention
    /// (`topic create --retention-ms/--retention-bytes`).
    #[arg(long, default_value_t = crate::DEFAULT_RETENTION_CHECK.as_millis() as u64, value_parser = clap::value_parser!(u64).range(10..))]
    pub retention_check_ms: u64,
    /// Deadline in milliseconds of a request the router sends to a broker (a proxied fetch gets
    /// its long-poll wait on top).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
    /// Largest frame accepted or sent, in bytes (a produce batch must fit in one frame).
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME, value_parser = parse_frame)]
    pub max_frame_bytes: usize,
    /// Most shard moves (live migrations) in flight at once when brokers join or leave.
    #[arg(long, default_value_t = DEFAULT_MAX_MOVES as u64, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub max_moves: u64,
    /// A move whose destination broker stays down this many milliseconds, or reports no
    /// progress for as long, is rolled back (its source is unfenced and keeps the shard).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub move_timeout_ms: u64,

    #[command(flatten)]
    pub listener: ListenerArgs,
    /// Serve the HTTP admin API, Prometheus metrics (`/metrics`) and the web page on this
    /// address (port 0 picks a free one; the address is printed). Off by default; `shardq up`
    /// turns it on.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Set by `shardq up`: its data directory, where `POST /api/brokers` asks it for one more
    /// broker.
    #[arg(long, value_name = "DIR", hide = true)]
    pub up_data: Option<PathBuf>,
}

fn parse_frame(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of bytes"))?;
    // Below this not even a handshake or a routing table of a small cluster fits.
    if n < 1024 {
        return Err(format!(
            "{n} bytes is too small for a frame; use at least 1024"
        ));
    }
    if n > u32::MAX as usize {
        return Err(format!("{n} bytes does not fit the 4-byte frame length"));
    }
    Ok(n)
}

impl RouterArgs {
    /// The configuration these options describe (reading the token file).
    pub fn config(&self) -> anyhow::Result<RouterConfig> {
        Ok(RouterConfig {
            listen: self.listen.clone(),
            ring: RingConfig {
                vnodes: self.vnodes,
                hash: self.hash,
                mode: self.placement,
            },
            broker_timeout: Duration::from_millis(self.broker_timeout_ms),
            default_replication_factor: self.default_replication_factor,
            replace_after: Duration::from_millis(self.replace_after_ms),
            retention_check: Duration::from_millis(self.retention_check_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_frame: self.max_frame_bytes,
            // Bounded to 1..=1000 by the parser.
            max_moves: usize::try_from(self.max_moves).unwrap_or(DEFAULT_MAX_MOVES),
            move_timeout: Duration::from_millis(self.move_timeout_ms),
            listener: self.listener.listener().map_err(anyhow::Error::msg)?,
            http: self.http.clone(),
            up_data: self.up_data.clone(),
            ..RouterConfig::new(self.data.clone())
        })
    }
}

/// Starts the router, prints `router listening on ADDR` on stdout (scripts and `shardq up` wait
/// for that line) and runs until Ctrl-C or SIGTERM.
pub async fn run(args: RouterArgs) -> anyhow::Result<()> {
    let handle = start(args.config()?).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "router listening on {}", handle.addr()).context("writing to stdout")?;
        if let Some(http) = handle.http_addr() {
            writeln!(out, "router http on http://{http}/").context("writing to stdout")?;
        }
        out.flush().context("writing to stdout")?;
    }
    wait_for_signal().await?;
    info!("stopping the router");
    handle.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RouterArgs,
    }

    #[test]
    fn help_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--listen",
            "--data",
            "--vnodes",
            "--hash",
            "--placement",
            "--broker-timeout-ms",
            "--max-frame-bytes",
            "--max-moves",
            "--move-timeout-ms",
        ] {
            assert!(help.contains(flag), "{flag} missing from --help");
        }
    }

    #[test]
    fn defaults_and_parsing() {
        let c = Cli::parse_from(["x", "--insecure-no-auth"])
            .args
            .config()
            .unwrap();
        assert_eq!(c.listen, "127.0.0.1:7400");
        assert_eq!(c.ring, RingConfig::default());
        assert_eq!(c.broker_timeout, Duration::from_secs(1));
        assert_eq!(c.max_moves, 2);
        assert_eq!(c.move_timeout, Duration::from_secs(30));
        let c = Cli::parse_from([
            "x",
            "--placement",
            "plain",
            "--hash",
            "fnv1a",
            "--vnodes",
            "16",
            "--broker-timeout-ms",
            "250",
            "--max-moves",
            "5",
            "--move-timeout-ms",
            "1500",
            "--insecure-no-auth",
        ])
        .args
        .config()
        .unwrap();
        assert_eq!(c.ring.mode, PlacementMode::Plain);
        assert_eq!(c.ring.hash, HashFn::Fnv1a);
        assert_eq!(c.ring.vnodes, 16);
        assert_eq!(c.broker_timeout, Duration::from_millis(250));
        assert_eq!(c.max_moves, 5);
        assert_eq!(c.move_timeout, Duration::from_millis(1500));
        assert!(Cli::try_parse_from(["x", "--max-moves", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--placement", "bounded:-1"]).is_err());
        assert!(Cli::try_parse_from(["x", "--max-frame-bytes", "10"]).is_err());
        assert!(Cli::try_parse_from(["x", "--broker-timeout-ms", "0"]).is_err());
        assert!(Cli::try_parse_from(["x", "--vnodes", "0"]).is_err());
    }
}
