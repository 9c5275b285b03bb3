//! `shardq`: run a router or a broker, start a local cluster, administer topics and brokers, see
//! the cluster's status, analyze ring placement, verify a run, and benchmark.

use shardq::{admin, bench, up, verify};

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use shardq_protocol::ShardSpec;
use shardq_ring::analyze;

#[derive(Parser, Debug)]
#[command(name = "shardq", version, about = "shardq: a distributed, sharded, persistent message queue", long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where admin commands find the cluster.
#[derive(Args, Debug, Clone)]
struct Target {
    /// Router (or any broker) address, HOST or HOST:PORT (default port 7400).
    #[arg(long, short = 'b', default_value = "127.0.0.1:7400", global = true)]
    broker: String,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the routing front (membership, topics, placement, metadata, proxy).
    Router(shardq_router::cli::RouterArgs),
    /// Run a broker node, or administer brokers (`shardq broker list|remove`).
    Broker(BrokerCmd),
    /// Start a local cluster (router + N brokers as child processes) and keep it running.
    Up(up::UpArgs),
    /// Create, list and describe topics.
    Topic {
        #[command(subcommand)]
        cmd: TopicCmd,
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
    },
    /// Remove a broker: drain its shards to their new owners; with --force, give up a dead
    /// broker's data (says what it discards).
    Remove {
        id: u32,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand, Debug)]
enum TopicCmd {
    /// Create a topic with N partitions (P1..PN).
    Create {
        name: String,
        #[arg(long, short = 'p', default_value_t = 1)]
        partitions: u32,
    },
    /// List topics.
    List,
    /// Show a topic's partitions: owner, offsets, consumer groups.
    Describe { name: String },
}

#[derive(Subcommand, Debug)]
enum RingCmd {
    /// Balance and movement of ring placements over ranges of brokers, vnodes, hashes and modes.
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

fn parse_consumer(s: &str) -> Result<(u32, Vec<ShardSpec>)> {
    let (id, subs) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--consumer {s:?}: expected ID=T1:P1,T2:*"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--consumer {s:?}: {id:?} is not a consumer id"))?;
    let subs = subs
        .split([',', ' '])
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<ShardSpec>()
                .map_err(|e| anyhow::anyhow!("--consumer {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((id, subs))
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Router(args) => shardq_router::cli::run(args).await?,
        Cmd::Broker(BrokerCmd { admin: Some(a), .. }) => match a {
            BrokerAdmin::List { target } => admin::broker_list(&target.broker).await?,
            BrokerAdmin::Remove { id, force, target } => {
                admin::broker_remove(&target.broker, id, force).await?
            }
        },
        Cmd::Broker(BrokerCmd {
            run: Some(args), ..
        }) => shardq_broker::cli::run(args).await?,
        Cmd::Broker(_) => {
            anyhow::bail!("`shardq broker` needs broker options (see --help) or a subcommand")
        }
        Cmd::Up(args) => up::run(args).await?,
        Cmd::Topic { cmd, target } => match cmd {
            TopicCmd::Create { name, partitions } => {
                admin::topic_create(&target.broker, &name, partitions).await?
            }
            TopicCmd::List => admin::topic_list(&target.broker).await?,
            TopicCmd::Describe { name } => admin::topic_describe(&target.broker, &name).await?,
        },
        Cmd::Status { target, json } => admin::status(&target.broker, json).await?,
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
                    .map(|c| parse_consumer(c))
                    .collect::<Result<_>>()?,
            };
            let report = verify::verify(&spec)?;
            print!("{}", report.render());
            if !report.passed() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Bench(args) => bench::run(args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
