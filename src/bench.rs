//! `shardq bench`: throughput and latency of a cluster, measured end to end through the real
//! producer and consumer libraries. By default it starts a local cluster in this process (router +
//! N brokers in a temp dir); `--cluster ADDR` measures a running one instead.
//!
//! Throughput: producers send `--count` records as fast as they can; "produce" is records over the
//! time from the first send to the last acknowledgement, "end to end" to the last record consumed.
//! Latency: producers send at a fixed `--rate`; publish->ack is measured per record from its
//! delivery, send->consume from a send timestamp carried in the record's value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use shardq_consumer::{Consumer, ConsumerConfig, StartFrom};
use shardq_producer::{Producer, ProducerConfig};
use shardq_protocol::{Acks, ShardId, ShardSpec};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Brokers in the local cluster (ignored with --cluster).
    #[arg(long, default_value_t = 1)]
    pub brokers: u32,
    /// Measure a running cluster at this router/broker address instead of starting one.
    #[arg(long)]
    pub cluster: Option<String>,
    /// The running cluster's secret (with --cluster).
    #[command(flatten)]
    pub token: shardq_protocol::cli_args::TokenArgs,
    /// Broker durability policy for the local cluster: always | interval=MS | never.
    #[arg(long, default_value = "interval=100")]
    pub fsync: String,
    /// Record value size in bytes (at least 16).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Records sent in the throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Replicas per partition of the benchmark's topics (default: the router's default).
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Concurrent producers.
    #[arg(long, default_value_t = 2)]
    pub producers: u32,
    /// Concurrent consumers (the partitions are split among them).
    #[arg(long, default_value_t = 2)]
    pub consumers: u32,
    /// Records per second in the latency run.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Seconds the latency run lasts.
    #[arg(long = "latency-secs", default_value_t = 5)]
    pub latency_secs: u64,
    /// Producer linger in milliseconds for the throughput run (the latency run uses 0).
    #[arg(long = "linger-ms", default_value_t = 2)]
    pub linger_ms: u64,
    /// Which runs: throughput, latency or all.
    #[arg(long, default_value = "all")]
    pub mode: String,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize, serde::Deserialize, Debug, Default, Clone)]
pub struct BenchResult {
    pub brokers: u32,
    pub fsync: String,
    pub size: usize,
    pub partitions: u32,
    /// Replicas per partition of the benchmark topics, as the router created them (results
    /// from before replication have none: 1).
    #[serde(default = "one")]
    pub replication_factor: u32,
    pub producers: u32,
    pub consumers: u32,
    pub count: u64,
    pub produce_msgs_per_s: Option<f64>,
    pub produce_mb_per_s: Option<f64>,
    pub e2e_msgs_per_s: Option<f64>,
    pub e2e_mb_per_s: Option<f64>,
    pub rate: u64,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
    pub e2e_p50_ms: Option<f64>,
    pub e2e_p99_ms: Option<f64>,
}

fn one() -> u32 {
    1
}

struct LocalCluster {
    _dir: tempfile::TempDir,
    router: shardq_router::RouterHandle,
    brokers: Vec<shardq_broker::BrokerHandle>,
}

async fn start_local(brokers: u32, fsync: &str) -> Result<LocalCluster> {
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    // Measured as users run it: with a cluster secret, every connection authenticated.
    let secret = shardq_protocol::Secret::generate();
    crate::admin::use_secret(Some(secret.clone()));
    let mut rc = shardq_router::RouterConfig::new(dir.path().join("router"));
    rc.listen = "127.0.0.1:0".into();
    rc.listener.secret = Some(secret.clone());
    let router = shardq_router::start(rc).await?;
    let mut handles = Vec::new();
    for id in 1..=brokers {
        let mut bc = shardq_broker::BrokerConfig::new(id, dir.path().join(format!("broker-{id}")));
        bc.listen = "127.0.0.1:0".into();
        bc.router = Some(router.addr().to_string());
        bc.listener.secret = Some(secret.clone());
        bc.fsync = fsync
            .parse()
            .map_err(|e| anyhow::anyhow!("--fsync {fsync:?}: {e}"))?;
        handles.push(shardq_broker::start(bc).await?);
    }
    Ok(LocalCluster {
        _dir: dir,
        router,
        brokers: handles,
    })
}

/// Nanoseconds since the process-wide bench epoch: the send timestamp carried in each value.
fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn value(size: usize, ts: u64, filler: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(size);
    b.put_u64_le(ts);
    b.put_slice(&filler[..size - 8]);
    b.freeze()
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000_000, 3).expect("valid histogram bounds")
}

fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e6)
}

/// The consuming side of one run: a fresh topic, consumers splitting its partitions (each returns
/// once the shared count reaches the run's total), and their latency and finish time.
struct Consumers {
    topic: String,
    /// Send timestamps in values are nanoseconds since this instant.
    epoch: Instant,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
    latency: Arc<Mutex<Histogram<u64>>>,
    last: Arc<Mutex<Option<Instant>>>,
}

/// The topic of this process's `kind` run ("t": throughput, "l": latency).
fn bench_topic(kind: &str) -> String {
    format!("bench-{kind}-{}", std::process::id())
}

/// Deletes the topics this run created in a running cluster (`--cluster`), so benchmarks leave
/// nothing behind. A failure is reported, not fatal: the numbers are still good.
async fn delete_bench_topics(bootstrap: &str, kinds: &[&str]) {
    for kind in kinds {
        let name = bench_topic(kind);
        let deleted = async {
            crate::admin::client(bootstrap)
                .await?
                .admin(shardq_protocol::Request::DeleteTopic { name: name.clone() })
                .await
                .map_err(anyhow::Error::from)
        }
        .await;
        match deleted {
            Ok(_) => eprintln!("bench: deleted its topic {name}"),
            Err(e) => eprintln!(
                "bench: could not delete its topic {name}: {e:#} (delete it with `shardq topic delete {name}`)"
            ),
        }
    }
}

/// Creates the run's topic and starts its consumers; returns once they are all polling.
async fn start_consumers(
    args: &BenchArgs,
    bootstrap: &str,
    kind: &str,
    total: u64,
    res: &mut BenchResult,
) -> Result<Consumers> {
    let topic = bench_topic(kind);
    let created = crate::admin::client(bootstrap)
        .await?
        .admin(shardq_protocol::Request::CreateTopic {
            name: topic.clone(),
            partitions: args.partitions,
            replication_factor: args.replication_factor,
            min_insync: None,
            retention: Default::default(),
        })
        .await?;
    // The router may cap or default the replication factor: record what the topic got, and
    // refuse to measure something other than what was asked for.
    match created {
        shardq_protocol::Response::TopicCreated(t) => {
            if args
                .replication_factor
                .is_some_and(|r| r != t.replication_factor)
            {
                bail!(
                    "topic {topic} was created with replication factor {} instead of {}",
                    t.replication_factor,
                    args.replication_factor.unwrap_or_default()
                );
            }
            res.replication_factor = t.replication_factor;
        }
        other => bail!(
            "creating topic {topic}: the router answered {}",
            other.name()
        ),
    }
    let epoch = Instant::now();
    let n = args.consumers.min(args.partitions);
    let ready = Arc::new(tokio::sync::Barrier::new(n as usize + 1));
    let consumed = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(hist()));
    let last = Arc::new(Mutex::new(None));
    let mut tasks = Vec::new();
    for c in 0..n {
        let subs: Vec<ShardSpec> = (1..=args.partitions)
            .filter(|p| (p - 1) % n == c)
            .map(|p| ShardSpec::One(ShardId::new(&topic, p)))
            .collect();
        let mut cfg = ConsumerConfig::new(bootstrap, "bench", subs);
        cfg.connection.secret = crate::admin::secret();
        cfg.from = StartFrom::Earliest;
        cfg.max_wait = Duration::from_millis(200);
        let (consumed, lat, last, ready) =
            (consumed.clone(), lat.clone(), last.clone(), ready.clone());
        let mut consumer = Consumer::connect(cfg).await?;
        tasks.push(tokio::spawn(async move {
            ready.wait().await;
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut local = hist();
            while consumed.load(Ordering::Acquire) < total {
                if Instant::now() > deadline {
                    bail!("consumers did not receive all {total} records within 600 s");
                }
                let recs = consumer.poll().await?;
                if recs.is_empty() {
                    continue;
                }
                let now = now_ns(epoch);
                for r in &recs {
                    if let Some(b) = r.record.value.get(..8) {
                        let sent = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                        let _ = local.record(now.saturating_sub(sent).max(1));
                    }
                }
                let n = consumed.fetch_add(recs.len() as u64, Ordering::AcqRel) + recs.len() as u64;
                if n >= total {
                    *last.lock().expect("poisoned") = Some(Instant::now());
                }
            }
            let _ = consumer.commit().await;
            lat.lock().expect("poisoned").add(&local).ok();
            Ok(())
        }));
    }
    ready.wait().await;
    Ok(Consumers {
        topic,
        epoch,
        tasks,
        latency: lat,
        last,
    })
}

async fn throughput(args: &BenchArgs, bootstrap: &str, res: &mut BenchResult) -> Result<()> {
    let Consumers {
        topic,
        epoch,
        tasks: ctasks,
        last,
        ..
    } = start_consumers(args, bootstrap, "t", args.count, res).await?;
    let filler = Bytes::from(vec![b'x'; args.size]);
    let start = Instant::now();
    let mut ptasks = Vec::new();
    let per = args.count / args.producers as u64;
    for p in 0..args.producers {
        let n = if p == 0 {
            args.count - per * (args.producers as u64 - 1)
        } else {
            per
        };
        let mut cfg = ProducerConfig::new(bootstrap);
        cfg.connection.secret = crate::admin::secret();
        cfg.linger = Duration::from_millis(args.linger_ms);
        cfg.acks = Acks::Durable;
        let producer = Producer::connect(cfg).await?;
        let (target, filler, size) = (ShardSpec::All(topic.clone()), filler.clone(), args.size);
        ptasks.push(tokio::spawn(async move {
            let mut window = std::collections::VecDeque::new();
            for _ in 0..n {
                let d = producer
                    .send(&target, None, value(size, now_ns(epoch), &filler))
                    .await?;
                window.push_back(d);
                if window.len() > 100_000 {
                    window.pop_front().expect("non-empty").await?;
                }
            }
            for d in window {
                d.await?;
            }
            let stats = producer.close().await;
            if stats.failed > 0 {
                bail!("{} records failed", stats.failed);
            }
            anyhow::Ok(())
        }));
    }
    for t in ptasks {
        t.await??;
    }
    let produce = start.elapsed().as_secs_f64();
    for t in ctasks {
        t.await??;
    }
    let e2e = last
        .lock()
        .expect("poisoned")
        .map_or(start.elapsed(), |l| l - start)
        .as_secs_f64();
    let mb = (args.count * args.size as u64) as f64 / 1e6;
    res.produce_msgs_per_s = Some(args.count as f64 / produce);
    res.produce_mb_per_s = Some(mb / produce);
    res.e2e_msgs_per_s = Some(args.count as f64 / e2e);
    res.e2e_mb_per_s = Some(mb / e2e);
    Ok(())
}

async fn latency(args: &BenchArgs, bootstrap: &str, res: &mut BenchResult) -> Result<()> {
    let total = args.rate * args.latency_secs;
    let Consumers {
        topic,
        epoch,
        tasks: ctasks,
        latency: e2e_lat,
        ..
    } = start_consumers(args, bootstrap, "l", total, res).await?;
    let mut cfg = ProducerConfig::new(bootstrap);
    cfg.connection.secret = crate::admin::secret();
    cfg.linger = Duration::ZERO;
    let producer = Arc::new(Producer::connect(cfg).await?);
    let ack_lat = Arc::new(Mutex::new(hist()));
    let filler = Bytes::from(vec![b'x'; args.size]);
    let target = ShardSpec::All(topic.clone());
    // Send in 1 ms ticks so the rate is steady rather than bursty.
    let per_tick = (args.rate as f64 / 1000.0).max(1.0);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut sent, mut owed) = (0u64, 0f64);
    let mut acks = Vec::new();
    while sent < total {
        tick.tick().await;
        owed += per_tick;
        while owed >= 1.0 && sent < total {
            owed -= 1.0;
            sent += 1;
            let t0 = now_ns(epoch);
            let d = producer
                .send(&target, None, value(args.size, t0, &filler))
                .await?;
            let lat = ack_lat.clone();
            acks.push(tokio::spawn(async move {
                d.await?;
                let _ = lat
                    .lock()
                    .expect("poisoned")
                    .record(now_ns(epoch).saturating_sub(t0).max(1));
                anyhow::Ok(())
            }));
        }
    }
    for a in acks {
        a.await??;
    }
    for t in ctasks {
        t.await??;
    }
    if let Ok(p) = Arc::try_unwrap(producer) {
        p.close().await;
    }
    let ack = ack_lat.lock().expect("poisoned");
    let e2e = e2e_lat.lock().expect("poisoned");
    res.ack_p50_ms = ms(&ack, 0.5);
    res.ack_p99_ms = ms(&ack, 0.99);
    res.e2e_p50_ms = ms(&e2e, 0.5);
    res.e2e_p99_ms = ms(&e2e, 0.99);
    Ok(())
}

fn fmt(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}{unit}"))
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if args.size < 16 {
        bail!("--size must be at least 16 bytes (the value carries a send timestamp)");
    }
    if args.producers == 0 || args.consumers == 0 || args.partitions == 0 || args.count == 0 {
        bail!("--producers, --consumers, --partitions and --count must be at least 1");
    }
    let (mode_t, mode_l) = match args.mode.as_str() {
        "all" => (true, true),
        "throughput" => (true, false),
        "latency" => (false, true),
        m => bail!("--mode {m:?}: expected throughput, latency or all"),
    };
    let local = match &args.cluster {
        Some(_) => {
            crate::admin::use_secret(args.token.secret()?);
            None
        }
        None => Some(start_local(args.brokers, &args.fsync).await?),
    };
    let bootstrap = match (&args.cluster, &local) {
        (Some(addr), _) => {
            shardq_protocol::with_default_port(addr, shardq_protocol::DEFAULT_ROUTER_PORT)
        }
        (None, Some(l)) => l.router.addr().to_string(),
        (None, None) => unreachable!("a local cluster is started when no --cluster is given"),
    };
    let mut res = BenchResult {
        brokers: if args.cluster.is_some() {
            0
        } else {
            args.brokers
        },
        fsync: args.fsync.clone(),
        size: args.size,
        partitions: args.partitions,
        producers: args.producers,
        consumers: args.consumers,
        count: args.count,
        rate: args.rate,
        ..Default::default()
    };
    if !args.json {
        eprintln!(
            "bench: {} broker(s), fsync {}, {} B records, {} partitions, replication factor {}, {} producer(s), {} consumer(s)",
            res.brokers,
            res.fsync,
            res.size,
            res.partitions,
            args.replication_factor
                .map_or("default".to_string(), |r| r.to_string()),
            res.producers,
            res.consumers
        );
    }
    let measured = async {
        if mode_t {
            throughput(&args, &bootstrap, &mut res).await?;
        }
        if mode_l {
            latency(&args, &bootstrap, &mut res).await?;
        }
        anyhow::Ok(())
    }
    .await;
    // Also after a failed run: whatever it created goes.
    if args.cluster.is_some() {
        let kinds: Vec<&str> = [(mode_t, "t"), (mode_l, "l")]
            .into_iter()
            .filter_map(|(on, k)| on.then_some(k))
            .collect();
        delete_bench_topics(&bootstrap, &kinds).await;
    }
    if let Some(l) = local {
        for b in l.brokers {
            b.shutdown().await;
        }
        l.router.shutdown().await;
    }
    measured?;
    if args.json {
        println!("{}", serde_json::to_string(&res)?);
    } else {
        println!("replication factor {}", res.replication_factor);
        println!(
            "throughput ({} records): produce {} msgs/s ({}), end-to-end {} msgs/s ({})",
            res.count,
            fmt(res.produce_msgs_per_s, ""),
            fmt(res.produce_mb_per_s, " MB/s"),
            fmt(res.e2e_msgs_per_s, ""),
            fmt(res.e2e_mb_per_s, " MB/s"),
        );
        println!(
            "latency at {} msgs/s: publish->ack p50 {} p99 {}; send->consume p50 {} p99 {}",
            res.rate,
            fmt(res.ack_p50_ms, " ms"),
            fmt(res.ack_p99_ms, " ms"),
            fmt(res.e2e_p50_ms, " ms"),
            fmt(res.e2e_p99_ms, " ms"),
        );
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// Reads `shardq bench --json` lines (one file per configuration, one line per run) and renders a
/// markdown table of medians.
pub fn report(files: &[std::path::PathBuf]) -> Result<String> {
    let mut out = String::from(
        "| brokers | R | fsync | size | runs | produce msgs/s | produce MB/s | e2e msgs/s | e2e MB/s | ack p50/p99 ms | send->consume p50/p99 ms |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in files {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let runs: Vec<BenchResult> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .with_context(|| format!("{}:{}: not a bench result", f.display(), i + 1))
            })
            .collect::<Result<_>>()?;
        let Some(first) = runs.first() else { continue };
        let m =
            |get: fn(&BenchResult) -> Option<f64>| median(runs.iter().filter_map(get).collect());
        let num = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0}", v));
        let dec = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}", v));
        out.push_str(&format!(
            "| {} | {} | {} | {} B | {} | {} | {} | {} | {} | {} / {} | {} / {} |\n",
            first.brokers,
            first.replication_factor,
            first.fsync,
            first.size,
            runs.len(),
            num(m(|r| r.produce_msgs_per_s)),
            dec(m(|r| r.produce_mb_per_s)),
            num(m(|r| r.e2e_msgs_per_s)),
            dec(m(|r| r.e2e_mb_per_s)),
            dec(m(|r| r.ack_p50_ms)),
            dec(m(|r| r.ack_p99_ms)),
            dec(m(|r| r.e2e_p50_ms)),
            dec(m(|r| r.e2e_p99_ms)),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_shows_the_replication_factor_and_reads_older_results() {
        let d = tempfile::tempdir().unwrap();
        let r3 = BenchResult {
            brokers: 3,
            replication_factor: 3,
            produce_msgs_per_s: Some(1000.0),
            ..Default::default()
        };
        std::fs::write(
            d.path().join("r3.jsonl"),
            serde_json::to_string(&r3).unwrap(),
        )
        .unwrap();
        // A result written before the field existed: its topics had one replica.
        let mut old = serde_json::to_value(&r3).unwrap();
        old.as_object_mut().unwrap().remove("replication_factor");
        std::fs::write(d.path().join("old.jsonl"), old.to_string()).unwrap();
        let files = [d.path().join("r3.jsonl"), d.path().join("old.jsonl")];
        let table = report(&files).unwrap();
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert!(rows[0].starts_with("| 3 | 3 |"), "{table}");
        assert!(rows[1].starts_with("| 3 | 1 |"), "{table}");
    }
}
