//! `shardq`: run a router or a broker, start a local cluster, administer topics and brokers, see
//! the cluster's status, analyze ring placement, verify a run, and benchmark.

use shardq::{admin, bench, bench_failover, tools, up, verify};

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use shardq_ring::analyze;

#[derive(Parser, Debug)]
#[command(
    name = "shardq",
    version,
    propagate_version = true,
    about = "shardq: a distributed, sharded, persistent message queue",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    #[command(flatten)]
    log: shardq_protocol::logging::LogArgs,
}

/// Where admin commands find the cluster.
#[derive(Args, Debug, Clone)]
struct Target {
    /// Router (or any broker) address, HOST or HOST:PORT (default port 7400).
    #[arg(long, short = 'b', default_value = "127.0.0.1:7400", global = true)]
    broker: String,
    /// File holding the cluster secret (`shardq up` writes DATA/cluster.token); the
    /// SHARDQ_TOKEN_FILE environment variable serves too, and ./shardq-data/cluster.token is
    /// found without either.
    #[arg(long, value_name = "PATH", global = true)]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the routing front (membership, topics, placement, metadata, proxy).
    Router(shardq_router::cli::RouterArgs),
    /// Run a broker node, or administer brokers (`shardq broker list|add|remove|replace`).
    Broker(BrokerCmd),
    /// Start a local cluster (router + N brokers as child processes) and keep it running.
    Up(up::UpArgs),
    /// Create, list, describe, grow and delete topics.
    Topic {
        #[command(subcommand)]
        cmd: TopicCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Send stdin as records, one per line (whole lines: spaces are part of the message).
    /// `printf 'a\nb\n' | shardq produce T`.
    Produce {
        #[command(flatten)]
        args: tools::produce::ProduceArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Print records of a topic or shard, following new ones until Ctrl-C (or --count).
    /// `shardq consume T --from earliest --count 2`.
    Consume {
        #[command(flatten)]
        args: tools::consume::ConsumeArgs,
        #[command(flatten)]
        target: Target,
    },
    /// Consumer groups: list them, describe one (members, assignment, committed offsets,
    /// lag), reset a group's offsets.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Replicated shards: elect a leader, compare the replicas' checksums.
    Shard {
        #[command(subcommand)]
        cmd: ShardCmd,
        #[command(flatten)]
        target: Target,
    },
    /// Print the cluster's members, shards per broker, offsets, consumer lag and moves.
    Status {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A live view of the cluster. On a terminal: a pinned header (epoch, brokers with their
    /// state, shards led/held and msgs/s), a progress bar per move in flight, and a scrolling
    /// list of shards (Tab: finished moves). Keys: Up/Down, PgUp/PgDn, Home/End scroll; Tab
    /// switches the list; q, Esc or Ctrl-C quits. When stdout is not a terminal (or with
    /// --once) it prints the status as text instead.
    Watch {
        #[command(flatten)]
        target: Target,
        /// Refresh interval in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
        /// Print the status once, as text, and exit.
        #[arg(long)]
        once: bool,
    },
    /// Every shard move the router remembers, with a summary: copy rate, write pause median/max.
    Moves {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Wait until no shard move is in flight (e.g. after adding or removing a broker), printing
    /// moves as they progress.
    WaitBalanced {
        #[command(flatten)]
        target: Target,
        /// Also wait until this broker owns at least one shard (after adding it).
        #[arg(long)]
        owner: Option<u32>,
        /// How long no move must be in flight to call it balanced, in milliseconds.
        #[arg(long, default_value_t = 1500)]
        quiet_ms: u64,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
        /// One JSON object per line: moves as they change phase, progress, then "balanced".
        #[arg(long)]
        json: bool,
    },
    /// Consistent-hash ring tools.
    Ring {
        #[command(subcommand)]
        cmd: RingCmd,
    },
    /// Check a run from its producer and consumer files: every record received exactly once per
    /// subscribed consumer, in per-shard producer order.
    Verify(VerifyArgs),
    /// Benchmark a local cluster: throughput and latency of produce and end-to-end.
    Bench(bench::BenchArgs),
    /// Measure failover on a `shardq up` cluster under load: kill brokers one after another and
    /// time, per shard, kill to the first acknowledged produce; check nothing acknowledged is
    /// lost. With --catch-up: how fast a replaced broker (empty disk) gets back in sync.
    BenchFailover(bench_failover::FailoverArgs),
    /// The cluster secret: `shardq token create PATH` writes a new one (mode 0600) for clusters
    /// not started with `shardq up` (which makes its own in DATA/cluster.token).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Summarize `shardq bench --json` result files (one per configuration) as a table of medians.
    BenchReport {
        /// JSON-lines files written by `shardq bench --json`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
struct BrokerCmd {
    #[command(subcommand)]
    admin: Option<BrokerAdmin>,
    #[command(flatten)]
    run: Option<shardq_broker::cli::BrokerArgs>,
}

#[derive(Subcommand, Debug)]
enum BrokerAdmin {
    /// List the brokers the router knows.
    List {
        #[command(flatten)]
        target: Target,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Remove a broker: drain its shards to their new owners (waits and shows progress; fails
    /// at once if the broker is down, since its shards cannot drain until it returns); with
    /// --force, give up a dead broker's data (says what it discards; refused while the broker
    /// is up: drain it with a plain remove instead).
    Remove {
        id: u32,
        /// Only for a broker that is down: DISCARD the data of its shards (re-created empty on
        /// other brokers) and remove it now.
        #[arg(long)]
        force: bool,
        /// Return once the drain has started instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Machine-readable output (JSON; with the wait, one object per line).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Let a new broker process take over the id of broker ID whose disk was lost (refused while
    /// it is up). The router binds every broker id to the UUID of its data dir and refuses any
    /// other process with that id; after this, the next process to register ID (on an empty data
    /// dir) takes it. Its replicated shards are copied back from their leaders (it rejoins their
    /// in-sync replicas once caught up); its unreplicated shards START EMPTY there.
    Replace {
        id: u32,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Add a broker to a local cluster started with `shardq up --data DIR`; shards migrate to it.
    Add {
        /// The data directory of the `shardq up` cluster.
        #[arg(long, default_value = "./shardq-data")]
        data: PathBuf,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
}

/// `--retention-ms` and `--retention-bytes` of `topic create` and `topic alter`.
#[derive(clap::Args, Debug)]
struct RetentionArgs {
    /// Delete a stored batch once its newest record is older than this: a number of
    /// milliseconds or e.g. `90s`, `12h`, `7d`; `none`: keep forever (the default).
    #[arg(long, value_name = "DURATION", value_parser = admin::units::ms_limit)]
    retention_ms: Option<admin::units::Limit>,
    /// Keep at most about this much of the topic, e.g. `10MB`, `2GiB`; `none`: no limit (the
    /// default). Each of its N partitions keeps an equal share (plus the one batch that
    /// straddles the limit), on every replica; the oldest batches go first.
    #[arg(long, value_name = "SIZE", value_parser = admin::units::bytes_limit)]
    retention_bytes: Option<admin::units::Limit>,
}

#[derive(Subcommand, Debug)]
enum TopicCmd {
    /// Create a topic with N partitions (P1..PN), each replicated on R brokers.
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
        /// Replicas per partition, 1 to 5 (default: the router's --default-replication-factor,
        /// capped at the brokers up). More than the brokers up is refused.
        #[arg(long, short = 'r')]
        replication_factor: Option<u32>,
        /// In-sync replicas a `durable` produce needs, else it is refused with "not enough
        /// replicas" (default: a majority of the replication factor).
        #[arg(long)]
        min_insync_replicas: Option<u32>,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// List topics.
    List {
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Show a topic's partitions: owner, offsets, consumer groups.
    Describe {
        name: String,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Grow a topic to N partitions (never shrinks; records stay where they were written;
    /// the new shards are placed on the ring like a new topic's) and/or change its retention
    /// (`none` lifts a limit).
    Alter {
        name: String,
        #[arg(long, short = 'p')]
        partitions: Option<u32>,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Delete every committed record of a topic on every replica. Offsets are never reused:
    /// each partition's log then starts where it ended, and consumers below that move on by
    /// their --from policy, saying how many records they skipped.
    Purge {
        name: String,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
    /// Delete a topic and its records on every replica. Clients get "unknown topic" at once;
    /// a broker that is down deletes its copy when it is back, and the name can be created
    /// again once every copy is gone (this waits for that, up to --timeout-secs).
    Delete {
        name: String,
        /// Do not wait for the copies to be deleted.
        #[arg(long)]
        no_wait: bool,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// Machine-readable output (JSON).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Groups with live members or committed offsets.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A group's members (what each owns, what it is taking over), strategy and generation,
    /// and per shard its committed offset, end offset and lag.
    Describe {
        group: String,
        #[arg(long)]
        json: bool,
    },
    /// Commit new offsets for a group with no live members: --to earliest, latest, an OFFSET,
    /// or a TIMESTAMP (@MILLISECONDS or UTC 2026-11-28T08:00:00Z: the first record stamped at
    /// or after it). Every shard the group has offsets on, or those given with --shard.
    ResetOffsets {
        group: String,
        #[arg(long)]
        to: shardq_consumer::StartFrom,
        /// T:P or T:* (repeatable).
        #[arg(long = "shard")]
        shards: Vec<shardq_protocol::ShardSpec>,
        #[arg(long)]
        json: bool,
    },
    /// Delete a group with no live members: its committed offsets go from every shard, and
    /// a consumer that joins it again starts by its --from policy.
    Delete {
        group: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ShardCmd {
    /// Elect a leader for SHARD now: the first in-sync replica that is up. With --unclean, a
    /// replica that is NOT in sync may be elected when none in sync is up: records only the old
    /// in-sync replicas held are then lost (the command prints how many, as last reported).
    Elect {
        /// The shard, `TOPIC:Pn`.
        shard: shardq_protocol::ShardId,
        #[arg(long)]
        unclean: bool,
        #[arg(long)]
        json: bool,
    },
    /// One checksum per replica of SHARD over its committed records (below the leader's high
    /// watermark); exits 1 when replicas disagree over the same range.
    Checksum {
        /// The shard, `TOPIC:Pn`.
        shard: shardq_protocol::ShardId,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Write a new random cluster secret to PATH (refuses to overwrite an existing file).
    Create { path: PathBuf },
}

#[derive(Subcommand, Debug)]
enum RingCmd {
    /// Balance and movement of ring placements over ranges of brokers, vnodes, hashes, modes and
    /// replication factors.
    ///
    /// Every combination is one row: brokers 1..=N hold the synthetic shards T<i>:P<j> (8
    /// partitions per topic), then broker N+1 joins. Columns: max/mean and stddev% of the leaders
    /// per broker against each broker's fair share; min and max: leaders per broker; moved: the
    /// fraction of shards whose leader changes on the join; ideal: the newcomer's fair share;
    /// moved/ideal; to-new-only: every moved leader went to the newcomer. Then per replication
    /// factor R (leader included): rep-min and rep-max: replicas (leaders + followers) per
    /// broker; rep-moved: the fraction of the replicas after the join that are new copies;
    /// rep-to-new: every new copy is on the newcomer. --json prints the same rows as JSON.
    Analyze(AnalyzeArgs),
}

#[derive(Args, Debug)]
struct AnalyzeArgs {
    /// Broker counts: `8`, `2..=8`, `4,10`.
    #[arg(long, default_value = "2..=8")]
    brokers: String,
    /// Number of shards placed.
    #[arg(long, default_value_t = 10_000)]
    shards: usize,
    /// Virtual nodes per broker: `128`, `1,16,128,512`.
    #[arg(long, default_value = "128")]
    vnodes: String,
    /// Hash functions: `xxh3,fnv1a,sip13,murmur3` or `all`.
    #[arg(long, default_value = "xxh3")]
    hash: String,
    /// Placement modes: `plain`, `bounded`, `bounded:0.1`, `both`.
    #[arg(long, default_value = "both")]
    mode: String,
    /// Broker weights, cycled over the brokers: `1,2`.
    #[arg(long)]
    weights: Option<String>,
    /// Replication factors R, replicas per shard including the leader (one row each, capped at
    /// the broker count when placing): `3`, `1,2,3`, `1..=3`.
    #[arg(long, default_value = "1..=3")]
    replication_factor: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Directory with producer_N.txt (+ optional producer_N.acked) and consumer_N.txt files.
    #[arg(long = "log-dir", alias = "log_loc", default_value = ".")]
    dir: PathBuf,
    /// A consumer and what it subscribed to: `1=T1:P1,T2:P1` (repeat per consumer).
    #[arg(long = "consumer", required = true)]
    consumers: Vec<String>,
    /// Producer ids to read (default: every producer_N.txt in the directory).
    #[arg(long = "producer")]
    producers: Vec<u32>,
}

/// Servers log their life at `info` by default; client-side commands only warn, so their own
/// output stays readable. RUST_LOG overrides both. Colours only on a terminal; `--log-format
/// json` writes one JSON object per line.
fn init_tracing(server: bool, format: shardq_protocol::logging::LogFormat) {
    let default = if server { "info" } else { "warn" };
    shardq_protocol::logging::init(format, default);
}

impl Cmd {
    /// The cluster an admin command talks to. Exhaustive on purpose: a new command must say
    /// whether it talks to a cluster, or its connections would go without the secret.
    fn target(&self) -> Option<&Target> {
        match self {
            Cmd::Topic { target, .. }
            | Cmd::Produce { target, .. }
            | Cmd::Group { target, .. }
            | Cmd::Consume { target, .. }
            | Cmd::Shard { target, .. }
            | Cmd::Status { target, .. }
            | Cmd::Watch { target, .. }
            | Cmd::Moves { target, .. }
            | Cmd::WaitBalanced { target, .. } => Some(target),
            Cmd::Broker(BrokerCmd { admin, .. }) => match admin.as_ref()? {
                BrokerAdmin::List { target, .. }
                | BrokerAdmin::Remove { target, .. }
                | BrokerAdmin::Replace { target, .. } => Some(target),
                // Asks the local `shardq up` through its data directory, not the cluster.
                BrokerAdmin::Add { .. } => None,
            },
            // Servers read their own secret; these need no cluster or bring their own.
            Cmd::Router(_)
            | Cmd::Up(_)
            | Cmd::Ring { .. }
            | Cmd::Verify(_)
            | Cmd::Bench(_)
            | Cmd::BenchFailover(_)
            | Cmd::Token { .. }
            | Cmd::BenchReport { .. } => None,
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(target) = cli.cmd.target() {
        let token = shardq_protocol::cli_args::TokenArgs {
            token_file: target.token_file.clone(),
        };
        admin::use_secret(token.secret()?);
    }
    match cli.cmd {
        Cmd::Router(args) => shardq_router::cli::run(args).await?,
        Cmd::Broker(BrokerCmd { admin: Some(a), .. }) => match a {
            BrokerAdmin::List { target, json } => admin::broker_list(&target.broker, json).await?,
            BrokerAdmin::Remove {
                id,
                force,
                no_wait,
                timeout_secs,
                json,
                target,
            } => {
                admin::broker_remove(&target.broker, id, force, json).await?;
                if !force && !no_wait {
                    admin::wait_drained(
                        &target.broker,
                        id,
                        std::time::Duration::from_secs(timeout_secs),
                        json,
                    )
                    .await?;
                }
            }
            BrokerAdmin::Replace { id, json, target } => {
                admin::broker_replace(&target.broker, id, json).await?
            }
            BrokerAdmin::Add { data, json } => {
                let (id, addr) = up::request_broker(&data).await?;
                if json {
                    println!("{}", serde_json::json!({ "id": id, "addr": addr }));
                } else {
                    println!("broker {id} listening on {addr}; the router moves shards to it now (see `shardq watch`)");
                }
            }
        },
        Cmd::Broker(BrokerCmd {
            run: Some(args), ..
        }) => shardq_broker::cli::run(args).await?,
        Cmd::Broker(_) => {
            anyhow::bail!("`shardq broker` needs broker options (see --help) or a subcommand")
        }
        Cmd::Up(args) => up::run(args).await?,
        Cmd::Produce { args, target } => {
            let verbose = args.verbose;
            let n = tools::produce::run(&target.broker, args).await?;
            if verbose {
                eprintln!("{n} record(s) acknowledged");
            }
        }
        Cmd::Consume { args, target } => {
            tools::consume::run(&target.broker, args).await?;
        }
        Cmd::Topic { cmd, target } => match cmd {
            TopicCmd::Create {
                name,
                partitions,
                replication_factor,
                min_insync_replicas,
                retention,
                json,
            } => {
                let retention = shardq_protocol::Retention {
                    ms: retention.retention_ms.and_then(|l| l.0),
                    bytes: retention.retention_bytes.and_then(|l| l.0),
                };
                admin::topic_create(
                    &target.broker,
                    &name,
                    partitions,
                    replication_factor,
                    min_insync_replicas,
                    retention,
                    json,
                )
                .await?
            }
            TopicCmd::List { json } => admin::topic_list(&target.broker, json).await?,
            TopicCmd::Describe { name, json } => {
                admin::topic_describe(&target.broker, &name, json).await?
            }
            TopicCmd::Alter {
                name,
                partitions,
                retention,
                json,
            } => {
                let change = admin::TopicAlter {
                    partitions,
                    retention_ms: retention.retention_ms.map(|l| l.0),
                    retention_bytes: retention.retention_bytes.map(|l| l.0),
                };
                admin::topic_alter(&target.broker, &name, change, json).await?
            }
            TopicCmd::Purge { name, json } => {
                admin::topic_purge(&target.broker, &name, json).await?
            }
            TopicCmd::Delete {
                name,
                no_wait,
                timeout_secs,
                json,
            } => {
                let timeout = std::time::Duration::from_secs(timeout_secs);
                admin::topic_delete(&target.broker, &name, no_wait, timeout, json).await?
            }
        },
        Cmd::Group { cmd, target } => match cmd {
            GroupCmd::List { json } => admin::group_list(&target.broker, json).await?,
            GroupCmd::Describe { group, json } => {
                admin::group_describe(&target.broker, &group, json).await?
            }
            GroupCmd::ResetOffsets {
                group,
                to,
                shards,
                json,
            } => admin::group_reset_offsets(&target.broker, &group, to, &shards, json).await?,
            GroupCmd::Delete { group, json } => {
                admin::group_delete(&target.broker, &group, json).await?
            }
        },
        Cmd::Shard { cmd, target } => match cmd {
            ShardCmd::Elect {
                shard,
                unclean,
                json,
            } => admin::shard_elect(&target.broker, &shard, unclean, json).await?,
            ShardCmd::Checksum { shard, json } => {
                admin::shard_checksum(&target.broker, &shard, json).await?
            }
        },
        Cmd::Status { target, json } => admin::status(&target.broker, json).await?,
        Cmd::Moves { target, json } => admin::moves(&target.broker, json).await?,
        Cmd::WaitBalanced {
            target,
            owner,
            quiet_ms,
            timeout_secs,
            json,
        } => {
            admin::wait_balanced(
                &target.broker,
                owner,
                std::time::Duration::from_millis(quiet_ms),
                std::time::Duration::from_secs(timeout_secs),
                json,
            )
            .await?
        }
        Cmd::Watch {
            target,
            interval_ms,
            once,
        } => {
            admin::watch(
                &target.broker,
                std::time::Duration::from_millis(interval_ms.max(50)),
                once,
            )
            .await?
        }
        Cmd::Ring {
            cmd: RingCmd::Analyze(a),
        } => {
            let params = analyze::AnalyzeParams {
                brokers: analyze::parse_u32_list(&a.brokers)
                    .map_err(|e| anyhow::anyhow!("--brokers: {e}"))?,
                shards: a.shards,
                vnodes: analyze::parse_u32_list(&a.vnodes)
                    .map_err(|e| anyhow::anyhow!("--vnodes: {e}"))?,
                hashes: analyze::parse_hash_list(&a.hash)
                    .map_err(|e| anyhow::anyhow!("--hash: {e}"))?,
                modes: analyze::parse_mode_list(&a.mode)
                    .map_err(|e| anyhow::anyhow!("--mode: {e}"))?,
                weights: a
                    .weights
                    .as_deref()
                    .map(analyze::parse_u32_list)
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--weights: {e}"))?,
                replication: analyze::parse_replication_list(&a.replication_factor)
                    .map_err(|e| anyhow::anyhow!("--replication-factor: {e}"))?,
            };
            let rows = analyze::run(&params);
            if a.json {
                println!("{}", analyze::render_json(&rows));
            } else {
                print!("{}", analyze::render_table(&rows));
            }
        }
        Cmd::Verify(v) => {
            let spec = verify::VerifySpec {
                dir: v.dir,
                producers: v.producers,
                consumers: v
                    .consumers
                    .iter()
                    .map(|c| verify::parse_consumer(c))
                    .collect::<Result<_>>()?,
            };
            let report = verify::verify(&spec)?;
            print!("{}", report.render());
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Token {
            cmd: TokenCmd::Create { path },
        } => {
            shardq_protocol::Secret::write_new(&path)?;
            println!(
                "wrote a new cluster secret to {} (mode 0600); give it to the router, the \
                 brokers and clients with --token-file or SHARDQ_TOKEN_FILE",
                path.display()
            );
        }
        Cmd::Bench(args) => bench::run(args).await?,
        Cmd::BenchFailover(args) => bench_failover::run(args).await?,
        Cmd::BenchReport { files } => print!("{}", bench::report(&files)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let server = matches!(
        cli.cmd,
        Cmd::Router(_) | Cmd::Up(_) | Cmd::Broker(BrokerCmd { run: Some(_), .. })
    );
    if matches!(cli.cmd, Cmd::Up(_)) {
        // The router and brokers `up` starts log in the same format (they read the variable
        // when their own flag is absent). Set before any thread exists.
        std::env::set_var(
            shardq_protocol::logging::LOG_FORMAT_ENV,
            cli.log.log_format.as_str(),
        );
    }
    init_tracing(server, cli.log.log_format);
    if server {
        let files = shardq::raise_fd_limit();
        tracing::debug!(files, "open-file limit");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
