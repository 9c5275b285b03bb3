//! The `shardq broker` command: parse options, start a broker, say where it listens, run until
//! Ctrl-C, SIGTERM or its removal from the cluster by the router, and shut down cleanly (flushing
//! the database). A removed broker (removed while running, or refused at start because the router
//! removed its id earlier) exits with [`EXIT_REMOVED`], which means "removed: do not restart". A
//! process the router refuses as the broker of its `--id` (another data dir is bound to that id,
//! or this data dir is another cluster's) exits with [`EXIT_REFUSED`]: do not restart either.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shardq_protocol::{
    with_default_port, BrokerId, DEFAULT_BROKER_PORT, DEFAULT_MAX_FRAME, DEFAULT_ROUTER_PORT,
};
use tracing::{error, info};

use shardq_protocol::cli_args::ListenerArgs;

use crate::config::{BrokerConfig, FsyncPolicy, DEFAULT_MAX_RECORD_BYTES};
use crate::{RefusedByRouter, RemovedFromCluster, EXIT_REFUSED, EXIT_REMOVED};

/// Options of `shardq broker`.
#[derive(clap::Args, Debug, Clone)]
pub struct BrokerArgs {
    /// This broker's id, unique in the cluster; a restarted broker keeps its id (and its shards).
    // Named in the struct's own group: clap leaves the group of a struct with a flattened part
    // empty, and `Option<BrokerArgs>` (in `shardq broker`) is Some only when the group is present.
    #[arg(long, group = "BrokerArgs")]
    pub id: BrokerId,

    /// Address to listen on, HOST:PORT (port 0 picks a free one).
    #[arg(long, default_value_t = format!("127.0.0.1:{DEFAULT_BROKER_PORT}"))]
    pub listen: String,

    /// Address the router gives clients for this broker [default: the address bound by --listen].
    #[arg(long)]
    pub advertise: Option<String>,

    /// Data directory of this broker's database (created if missing).
    #[arg(long)]
    pub data: PathBuf,

    /// Router address, HOST or HOST:PORT (default port 7400); `none` runs a standalone broker
    /// that takes shard assignments from anyone.
    #[arg(long, default_value_t = format!("127.0.0.1:{DEFAULT_ROUTER_PORT}"))]
    pub router: String,

    /// Relative capacity: the ring gives this broker `vnodes x weight` tokens.
    #[arg(long, default_value_t = 1)]
    pub weight: u32,

    /// Durability of acknowledged writes: `always` (flush before ack, group-committed),
    /// `interval=MS` (flush every MS in the background) or `never` (leave it to the OS).
    #[arg(long, default_value_t = FsyncPolicy::default())]
    pub fsync: FsyncPolicy,

    /// Milliseconds between heartbeats to the router. Each answered heartbeat renews this
    /// broker's leader lease (it stops acknowledging writes once the router has not answered
    /// for the lease the router grants, about 2/3 of its `--broker-timeout-ms`).
    #[arg(long, default_value_t = crate::config::DEFAULT_HEARTBEAT.as_millis() as u64)]
    pub heartbeat_ms: u64,

    /// A follower that has not caught up with its leader for this many milliseconds is dropped
    /// from the shard's in-sync replicas (it rejoins once caught up).
    #[arg(long, default_value_t = crate::config::DEFAULT_REPLICA_LAG_MAX_MS)]
    pub replica_lag_max_ms: u64,

    /// Largest frame accepted or sent, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME)]
    pub max_frame_bytes: usize,

    /// Largest record (key + value) accepted, in bytes; larger ones are refused with RecordTooLarge.
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,

    /// Throttle each incoming shard move to this many MB/s (0 = unthrottled), leaving bandwidth
    /// and disk for producers and consumers while shards migrate.
    #[arg(long, default_value_t = 0.0)]
    pub move_max_mbps: f64,

    /// Free space (bytes) kept on the data dir's filesystem: below it, writes are refused with
    /// "storage full" while everything already accepted is still flushed, and they resume by
    /// themselves once space is freed. 0 turns the reserve off (a disk filled to the last byte
    /// then needs a broker restart).
    #[arg(long, default_value_t = crate::storage::DEFAULT_MIN_FREE_BYTES)]
    pub min_free_bytes: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free one; the address is
    /// printed). Off by default; `shardq up` turns it on.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    #[command(flatten)]
    pub listener: ListenerArgs,
}

impl BrokerArgs {
    /// The configuration these options describe (reading the token file).
    pub fn config(&self) -> anyhow::Result<BrokerConfig> {
        let router = match self.router.trim() {
            "" | "none" => None,
            r => Some(with_default_port(r, DEFAULT_ROUTER_PORT)),
        };
        Ok(BrokerConfig {
            id: self.id,
            listen: self.listen.clone(),
            advertise: self.advertise.clone(),
            data_dir: self.data.clone(),
            router,
            weight: self.weight,
            fsync: self.fsync,
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            replica_lag_max_ms: self.replica_lag_max_ms,
            max_frame: self.max_frame_bytes,
            max_record_bytes: self.max_record_bytes,
            move_rate_limit: (self.move_max_mbps > 0.0)
                .then(|| (self.move_max_mbps * 1e6).max(1.0) as u64),
            min_free_bytes: self.min_free_bytes,
            listener: self.listener.listener().map_err(anyhow::Error::msg)?,
            metrics: self.metrics.clone(),
        })
    }
}

/// Resolves when the process is asked to stop (Ctrl-C, or SIGTERM on Unix).
async fn stop_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    Ok(())
}

/// How [`run_until_stopped`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Ctrl-C or SIGTERM.
    Signal,
    /// The router removed this broker from the cluster (now, or earlier: it refused it at start).
    Removed,
    /// The router refused this process as the broker of its id (at start or later).
    Refused,
}

/// Runs a broker until Ctrl-C, SIGTERM or its removal from the cluster; a broker removed from
/// the cluster then exits the process with [`EXIT_REMOVED`] (after a clean shutdown), so that
/// supervisors such as `shardq up` know not to restart it.
pub async fn run(args: BrokerArgs) -> anyhow::Result<()> {
    match run_until_stopped(args).await? {
        Stopped::Signal => Ok(()),
        Stopped::Removed => std::process::exit(EXIT_REMOVED),
        Stopped::Refused => std::process::exit(EXIT_REFUSED),
    }
}

/// [`run`] without exiting the process.
pub async fn run_until_stopped(args: BrokerArgs) -> anyhow::Result<Stopped> {
    let data = args.data.clone();
    let config = args.config()?;
    let id = config.id;
    let handle = match crate::start(config).await {
        Ok(h) => h,
        Err(e) => {
            if let Some(removed) = e.downcast_ref::<RemovedFromCluster>() {
                error!(id, "{removed}");
                eprintln!("error: {removed} (exit code {EXIT_REMOVED}: removed, do not restart)");
                return Ok(Stopped::Removed);
            }
            if let Some(refused) = e.downcast_ref::<RefusedByRouter>() {
                error!("{refused}");
                eprintln!("error: {refused} (exit code {EXIT_REFUSED}: refused, do not restart)");
                return Ok(Stopped::Refused);
            }
            return Err(e.context(format!("broker {id} failed to start")));
        }
    };
    info!(id, addr = %handle.addr(), "broker listening");
    // `shardq up` and scripts read this line to learn the bound address.
    let mut out = std::io::stdout().lock();
    writeln!(out, "broker {id} listening on {}", handle.addr())
        .and_then(|()| match handle.metrics_addr() {
            Some(m) => writeln!(out, "broker {id} metrics on http://{m}/metrics"),
            None => Ok(()),
        })
        .and_then(|()| out.flush())
        .context("cannot write to stdout")?;
    drop(out);
    let stopped = tokio::select! {
        s = stop_signal() => s.map(|()| Stopped::Signal),
        () = handle.removed() => match handle.refusal() {
            Some(refused) => {
                eprintln!("error: {refused} (exit code {EXIT_REFUSED}: refused, do not restart)");
                Ok(Stopped::Refused)
            }
            None => {
                info!(id, code = EXIT_REMOVED, "broker removed from the cluster by the router; exiting (do not restart it)");
                eprintln!(
                    "broker {id} was removed from the cluster; its data directory {} is no \
                     longer used: delete it to reclaim the space (`shardq up` does, unless \
                     --keep-removed-data)",
                    data.display()
                );
                Ok(Stopped::Removed)
            }
        }
    };
    info!(id, "stopping broker");
    handle.shutdown().await;
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, Subcommand};

    /// The shape `shardq broker` uses: admin subcommands, or these options flattened.
    #[derive(Parser, Debug)]
    #[command(args_conflicts_with_subcommands = true)]
    struct Cmd {
        #[command(subcommand)]
        admin: Option<Admin>,
        #[command(flatten)]
        run: Option<BrokerArgs>,
    }

    #[derive(Subcommand, Debug)]
    enum Admin {
        List,
    }

    #[test]
    fn options_parse_into_a_config() {
        let cmd = Cmd::try_parse_from([
            "broker",
            "--id",
            "3",
            "--data",
            "/tmp/b3",
            "--router",
            "localhost",
            "--fsync",
            "always",
            "--insecure-no-auth",
        ])
        .unwrap();
        let cfg = cmd.run.unwrap().config().unwrap();
        assert_eq!(cfg.id, 3);
        assert_eq!(cfg.router.as_deref(), Some("localhost:7400"));
        assert_eq!(cfg.fsync, FsyncPolicy::Always);
        assert_eq!(cfg.listen, "127.0.0.1:7401");
        assert_eq!(cfg.heartbeat, Duration::from_millis(250));

        let cmd = Cmd::try_parse_from([
            "broker",
            "--id",
            "1",
            "--data",
            "d",
            "--router",
            "none",
            "--insecure-no-auth",
        ])
        .unwrap();
        assert_eq!(cmd.run.unwrap().config().unwrap().router, None);

        let cmd = Cmd::try_parse_from(["broker", "list"]).unwrap();
        assert!(matches!(cmd.admin, Some(Admin::List)));

        let err = Cmd::try_parse_from(["broker", "--id", "1", "--data", "d", "--fsync", "often"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("interval=MS"), "{err}");
    }
}
