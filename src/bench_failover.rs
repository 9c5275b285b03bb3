//! `shardq bench-failover`: how long shards stay unwritable when a broker dies, measured on a real
//! `shardq up` cluster (router and brokers as child processes) under a steady produce load; and,
//! with `--catch-up`, how fast a replaced broker (empty disk) copies its replicas back.
//!
//! Failover: a producer (acks durable) sends to every partition at `--rate`. `--kills` times, a
//! broker leading at least one shard (rotating over the brokers) is held down
//! (`DATA/control/hold-broker-N`) and SIGKILLed. For every shard, the unwritable time is from the
//! kill to the acknowledgement of the first record *sent after* the kill that was acknowledged
//! (records in flight at the kill are counted apart). Then the broker is let back and the next
//! kill waits until it is in every ISR again. At the end every shard is read from the beginning
//! and every acknowledged (shard, offset, value) must be there.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use shardq_consumer::{Consumer, ConsumerConfig, StartFrom};
use shardq_producer::{DeliveryFuture, Producer, ProducerConfig};
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{Acks, BrokerStatus, ClusterStatus, Request, Response, ShardId, ShardSpec};

#[derive(clap::Args, Debug, Clone)]
pub struct FailoverArgs {
    /// Brokers of the `shardq up` cluster.
    #[arg(long, default_value_t = 3)]
    pub brokers: u32,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: u32,
    /// Replicas per partition.
    #[arg(long, default_value_t = 3)]
    pub replication_factor: u32,
    /// In-sync replicas a durable produce needs (default: the router's, a majority).
    #[arg(long)]
    pub min_insync_replicas: Option<u32>,
    /// Records per second, over all partitions.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Record value size in bytes (at least 8; default 100, 1000 with --catch-up).
    #[arg(long)]
    pub size: Option<usize>,
    /// Brokers killed, one after the other.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Steady traffic before each kill, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// Give up on a kill whose shards are not all writable again after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub measure_timeout_secs: u64,
    /// Broker durability policy: always | interval=MS | never.
    #[arg(long, default_value = "interval=100")]
    pub fsync: String,
    /// The router's --broker-timeout-ms (default: the router's, 1000).
    #[arg(long)]
    pub broker_timeout_ms: Option<u64>,
    /// The brokers' --heartbeat-ms (default: the broker's, 250).
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Data directory of the cluster (default: a temp dir, removed at the end).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Measure a replaced broker's catch-up instead: preload --catch-up-mb into the topic, stop
    /// a broker, delete its data dir, `shardq broker replace` it, restart it empty and time
    /// until it is in every ISR again.
    #[arg(long)]
    pub catch_up: bool,
    /// Megabytes of record values preloaded for --catch-up.
    #[arg(long, default_value_t = 200)]
    pub catch_up_mb: u64,
    /// Producer batch size of the --catch-up preload, in bytes (the producer's default: 64 KiB).
    #[arg(long, default_value_t = 64 * 1024)]
    pub catch_up_batch_bytes: usize,
    /// Give up on a --catch-up that makes no progress (no shard back in sync, its data dir not
    /// growing) for this many seconds.
    #[arg(long, default_value_t = 60)]
    pub catch_up_stall_secs: u64,
    /// The broker replaced in --catch-up (default: the highest id).
    #[arg(long)]
    pub victim: Option<u32>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

mod catch_up;

const TOPIC: &str = "failover";

/// A `shardq up` child process on a data dir; the whole process group is killed on drop.
struct UpCluster {
    data: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: tokio::process::Child,
    router: String,
}

fn cluster_file(data: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(data.join("cluster.json")).ok()?;
    serde_json::from_str(&text).ok()
}

impl UpCluster {
    async fn start(args: &FailoverArgs) -> Result<UpCluster> {
        let (data, temp) = match &args.data {
            Some(d) => {
                if d.join("router").exists() {
                    bail!(
                        "{} already holds a cluster; give an empty or new directory",
                        d.display()
                    );
                }
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::tempdir().context("cannot create a temp dir")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let exe = std::env::current_exe().context("cannot find the shardq executable")?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.args(["up", "--port", "0", "--brokers", &args.brokers.to_string()])
            .arg("--data")
            .arg(&data)
            .args(["--fsync", &args.fsync]);
        if let Some(ms) = args.broker_timeout_ms {
            cmd.arg(format!("--router-arg=--broker-timeout-ms={ms}"));
        }
        if let Some(ms) = args.heartbeat_ms {
            cmd.arg(format!("--broker-arg=--heartbeat-ms={ms}"));
        }
        let out = std::fs::File::create(data.join("up.out"))?;
        let child = cmd
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(std::process::Stdio::null())
            // Its own process group, so dropping this (an error) stops the router and brokers too.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start `shardq up`")?;
        let mut up = UpCluster {
            data,
            _temp: temp,
            child,
            router: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = cluster_file(&up.data);
            let brokers = info
                .as_ref()
                .and_then(|v| v["broker_pids"].as_array().map(Vec::len));
            if let (Some(info), Some(n)) = (info, brokers) {
                if n == args.brokers as usize {
                    up.router = info["router"].as_str().context("router address")?.into();
                    break;
                }
            }
            if let Ok(Some(status)) = up.child.try_wait() {
                bail!(
                    "`shardq up` exited ({status}); see {}",
                    up.data.join("up.out").display()
                );
            }
            if Instant::now() > deadline {
                bail!("`shardq up` did not start within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let secret =
            shardq_protocol::Secret::load(&up.data.join(shardq_protocol::auth::TOKEN_FILE_NAME))?;
        crate::admin::use_secret(Some(secret));
        Ok(up)
    }

    fn broker_pid(&self, id: u32) -> Option<i32> {
        cluster_file(&self.data)?["broker_pids"]
            .as_array()?
            .iter()
            .find(|p| p[0].as_u64() == Some(u64::from(id)))
            .and_then(|p| p[1].as_u64())
            .map(|p| p as i32)
    }

    fn hold_file(&self, id: u32) -> PathBuf {
        self.data.join("control").join(format!("hold-broker-{id}"))
    }

    /// Holds broker `id` down and SIGKILLs it; returns the instant of the kill.
    fn kill(&self, id: u32) -> Result<Instant> {
        let pid = self
            .broker_pid(id)
            .with_context(|| format!("no pid of broker {id} in cluster.json"))?;
        std::fs::write(self.hold_file(id), b"bench-failover")?;
        // SAFETY: sends a signal to a broker process this cluster started.
        let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
        let at = Instant::now();
        if rc != 0 {
            bail!(
                "kill({pid}) of broker {id} failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(at)
    }

    fn release(&self, id: u32) -> Result<()> {
        std::fs::remove_file(self.hold_file(id))
            .with_context(|| format!("cannot remove the hold file of broker {id}"))
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            // SAFETY: SIGTERM to the `shardq up` this started; it stops its children.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            other => bail!("`shardq up` did not stop cleanly: {other:?}"),
        }
    }
}

impl Drop for UpCluster {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: the process group of the `shardq up` this started (it leads it).
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

async fn status(client: &ClusterClient) -> Result<ClusterStatus> {
    match client.admin(Request::Status).await? {
        Response::Status(s) => Ok(s),
        other => bail!("router answered status with {}", other.name()),
    }
}

fn topic_shards(st: &ClusterStatus) -> impl Iterator<Item = &shardq_protocol::ShardRoute> {
    st.shards
        .iter()
        .map(|(r, _)| r)
        .filter(|r| r.shard.topic == TOPIC)
}

/// Every broker up and every shard of the topic with its whole replica set in sync.
fn all_in_sync(st: &ClusterStatus, brokers: u32, partitions: u32) -> bool {
    let up = st
        .brokers
        .iter()
        .filter(|b| b.status == BrokerStatus::Up)
        .count();
    let mut n = 0;
    for r in topic_shards(st) {
        n += 1;
        let mut isr = r.isr.clone();
        let mut replicas = r.replicas.clone();
        isr.sort_unstable();
        replicas.sort_unstable();
        if isr != replicas || r.owner.is_none() {
            return false;
        }
    }
    up >= brokers as usize && n == partitions as usize
}

async fn wait_in_sync(client: &ClusterClient, args: &FailoverArgs, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(st) = status(client).await {
            if all_in_sync(&st, args.brokers, args.partitions) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("not every replica back in sync within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create_topic(client: &ClusterClient, args: &FailoverArgs) -> Result<()> {
    let answer = client
        .admin(Request::CreateTopic {
            name: TOPIC.into(),
            partitions: args.partitions,
            replication_factor: Some(args.replication_factor),
            min_insync: args.min_insync_replicas,
            retention: Default::default(),
        })
        .await?;
    match answer {
        Response::TopicCreated(t) if t.replication_factor == args.replication_factor => Ok(()),
        Response::TopicCreated(t) => bail!(
            "topic created with replication factor {} instead of {}",
            t.replication_factor,
            args.replication_factor
        ),
        other => bail!("topic create answered {}", other.name()),
    }
}

/// One record the load generator sent, and what became of it.
#[derive(Clone, Copy)]
struct Rec {
    partition: u32,
    sent: Instant,
    acked: Option<Instant>,
    offset: u64,
    failed: bool,
}

/// A steady produce load over every partition; `log[seq]` is record `seq` (whose value starts
/// with `seq`).
struct Load {
    log: Arc<Mutex<Vec<Rec>>>,
    stop: Arc<AtomicBool>,
    sender: tokio::task::JoinHandle<Result<()>>,
    collector: tokio::task::JoinHandle<()>,
}

fn record_value(seq: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(8));
    b.put_u64_le(seq);
    b.resize(size.max(8), b'x');
    b.freeze()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Load {
    async fn start(bootstrap: &str, args: &FailoverArgs, size: usize) -> Result<Load> {
        let mut cfg = ProducerConfig::new(bootstrap);
        cfg.connection.secret = crate::admin::secret();
        cfg.acks = Acks::Durable;
        cfg.linger = Duration::ZERO;
        let producer = Producer::connect(cfg).await?;
        let log: Arc<Mutex<Vec<Rec>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, DeliveryFuture)>();
        let collector = tokio::spawn({
            let log = log.clone();
            async move {
                let mut pending = FuturesUnordered::new();
                let mut open = true;
                loop {
                    tokio::select! {
                        m = rx.recv(), if open => match m {
                            Some((seq, d)) => pending.push(async move { (seq, d.await, Instant::now()) }),
                            None => open = false,
                        },
                        Some((seq, res, at)) = pending.next(), if !pending.is_empty() => {
                            let mut log = lock(&log);
                            let r = &mut log[seq];
                            match res {
                                Ok(d) => {
                                    r.acked = Some(at);
                                    r.offset = d.offset;
                                }
                                Err(_) => r.failed = true,
                            }
                        }
                        else => break,
                    }
                }
            }
        });
        let sender = tokio::spawn({
            let (log, stop) = (log.clone(), stop.clone());
            let shards: Vec<ShardSpec> = (1..=args.partitions)
                .map(|p| ShardSpec::One(ShardId::new(TOPIC, p)))
                .collect();
            let rate = args.rate.max(1);
            async move {
                let per_tick = rate as f64 / 1000.0;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut owed = 0f64;
                while !stop.load(Ordering::Acquire) {
                    tick.tick().await;
                    owed += per_tick;
                    while owed >= 1.0 {
                        owed -= 1.0;
                        let seq = {
                            let mut log = lock(&log);
                            let seq = log.len();
                            log.push(Rec {
                                partition: (seq % shards.len()) as u32 + 1,
                                sent: Instant::now(),
                                acked: None,
                                offset: 0,
                                failed: false,
                            });
                            seq
                        };
                        let target = &shards[seq % shards.len()];
                        let d = producer
                            .send(target, None, record_value(seq as u64, size))
                            .await?;
                        tx.send((seq, d)).ok();
                    }
                }
                drop(tx);
                let stats = producer.close().await;
                if stats.failed > 0 {
                    eprintln!("bench-failover: {} records failed", stats.failed);
                }
                anyhow::Ok(())
            }
        });
        Ok(Load {
            log,
            stop,
            sender,
            collector,
        })
    }

    fn len(&self) -> usize {
        lock(&self.log).len()
    }

    /// Stops sending and waits for every outstanding record's outcome.
    async fn finish(self) -> Result<Vec<Rec>> {
        self.stop.store(true, Ordering::Release);
        self.sender.await??;
        self.collector.await?;
        let log = std::mem::take(&mut *lock(&self.log));
        Ok(log)
    }
}

/// One shard's outage in one kill.
#[derive(Serialize, Debug, Clone)]
pub struct ShardSample {
    pub shard: String,
    /// "leader": the killed broker led it; "follower": it held a replica; "none".
    pub role: &'static str,
    /// Kill to the acknowledgement of the first record sent after the kill that was acknowledged.
    pub unwritable_ms: Option<f64>,
    /// Kill to the first status answer showing another leader (led shards).
    pub elected_ms: Option<f64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct KillResult {
    pub kill: u32,
    pub broker: u32,
    /// Kill to the first status answer showing the broker down.
    pub detected_ms: Option<f64>,
    pub shards: Vec<ShardSample>,
    /// Max unwritable time over the shards the broker led.
    pub max_led_ms: Option<f64>,
    /// Max over the shards where it was a follower (durable acks wait for the ISR to shrink).
    pub max_follower_ms: Option<f64>,
    /// Records sent before the kill and acknowledged after it, and the latest such ack.
    pub in_flight_acked_after: u64,
    pub in_flight_max_ms: Option<f64>,
    /// Hold file removed to the broker back in every ISR.
    pub rejoin_ms: f64,
}

#[derive(Serialize, Debug, Default)]
pub struct FailoverReport {
    pub brokers: u32,
    pub partitions: u32,
    pub replication_factor: u32,
    pub rate: u64,
    pub size: usize,
    pub broker_timeout_ms: Option<u64>,
    pub kills: Vec<KillResult>,
    /// Over every (kill, shard led by the killed broker) sample.
    pub led_samples: usize,
    pub led_median_ms: Option<f64>,
    pub led_max_ms: Option<f64>,
    /// Over kills, the max over the shards the killed broker led.
    pub per_kill_max_median_ms: Option<f64>,
    pub per_kill_max_max_ms: Option<f64>,
    /// Over every (kill, shard where the killed broker was a follower) sample.
    pub follower_median_ms: Option<f64>,
    pub follower_max_ms: Option<f64>,
    pub detected_median_ms: Option<f64>,
    /// Samples (led or follower shards) that took no write within --measure-timeout-secs: left
    /// out of the medians and maxima above.
    pub timed_out: usize,
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub acknowledged_lost: u64,
}

fn ms_since(t0: Instant, t: Instant) -> f64 {
    t.saturating_duration_since(t0).as_secs_f64() * 1e3
}

/// The median (upper for an even count) and the max of the finite values.
pub fn median_max(v: impl IntoIterator<Item = f64>) -> (Option<f64>, Option<f64>) {
    let mut v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (None, None);
    }
    v.sort_by(f64::total_cmp);
    (Some(v[v.len() / 2]), v.last().copied())
}

/// Per partition, the first record sent at or after `t` (scanning from `lo`) that was acked.
fn first_acked_after(log: &[Rec], lo: usize, t: Instant, partitions: u32) -> Vec<Option<Instant>> {
    let mut first = vec![None; partitions as usize];
    for r in &log[lo.min(log.len())..] {
        let slot = &mut first[r.partition as usize - 1];
        if slot.is_none() && r.sent >= t {
            if let Some(a) = r.acked {
                *slot = Some(a);
            }
        }
    }
    first
}

async fn one_kill(
    k: u32,
    victim: u32,
    up: &UpCluster,
    client: &ClusterClient,
    load: &Load,
    before: &ClusterStatus,
    args: &FailoverArgs,
) -> Result<KillResult> {
    let roles: BTreeMap<u32, &'static str> = topic_shards(before)
        .map(|r| {
            let role = if r.owner.as_ref().is_some_and(|o| o.id == victim) {
                "leader"
            } else if r.replicas.contains(&victim) {
                "follower"
            } else {
                "none"
            };
            (r.shard.partition, role)
        })
        .collect();
    let lo = load.len();
    let killed = up.kill(victim)?;
    let deadline = killed + Duration::from_secs(args.measure_timeout_secs);
    let mut detected = None;
    let mut elected: HashMap<u32, Instant> = HashMap::new();
    let first = loop {
        if let Ok(st) = status(client).await {
            let seen = Instant::now();
            let down = st
                .brokers
                .iter()
                .any(|b| b.addr.id == victim && b.status == BrokerStatus::Down);
            if down && detected.is_none() {
                detected = Some(seen);
            }
            for r in topic_shards(&st) {
                let moved = r.owner.as_ref().is_some_and(|o| o.id != victim);
                if roles.get(&r.shard.partition) == Some(&"leader") && moved {
                    elected.entry(r.shard.partition).or_insert(seen);
                }
            }
        }
        let first = first_acked_after(&lock(&load.log), lo, killed, args.partitions);
        if first.iter().all(Option::is_some) || Instant::now() > deadline {
            break first;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (in_flight, in_flight_max) = {
        let log = lock(&load.log);
        let late: Vec<f64> = log[lo.saturating_sub(args.rate as usize * 5)..]
            .iter()
            .filter(|r| r.sent < killed)
            .filter_map(|r| r.acked.filter(|a| *a > killed))
            .map(|a| ms_since(killed, a))
            .collect();
        (late.len() as u64, median_max(late).1)
    };
    let shards: Vec<ShardSample> = (1..=args.partitions)
        .map(|p| ShardSample {
            shard: ShardId::new(TOPIC, p).to_string(),
            role: roles.get(&p).copied().unwrap_or("none"),
            unwritable_ms: first[p as usize - 1].map(|a| ms_since(killed, a)),
            elected_ms: elected.get(&p).map(|e| ms_since(killed, *e)),
        })
        .collect();
    let max_of = |role: &str| {
        median_max(
            shards
                .iter()
                .filter(|s| s.role == role)
                .map(|s| s.unwritable_ms.unwrap_or(f64::INFINITY)),
        )
        .1
    };
    let (max_led_ms, max_follower_ms) = (max_of("leader"), max_of("follower"));
    if first.iter().any(Option::is_none) {
        eprintln!(
            "bench-failover: kill {k}: some shards took no write within {} s",
            args.measure_timeout_secs
        );
    }
    let released = Instant::now();
    up.release(victim)?;
    wait_in_sync(client, args, Duration::from_secs(180)).await?;
    Ok(KillResult {
        kill: k,
        broker: victim,
        detected_ms: detected.map(|d| ms_since(killed, d)),
        shards,
        max_led_ms,
        max_follower_ms,
        in_flight_acked_after: in_flight,
        in_flight_max_ms: in_flight_max,
        rejoin_ms: ms_since(released, Instant::now()),
    })
}

/// Reads every shard of the topic from the beginning (a fresh group) and counts the acknowledged
/// records that are not there with their value; the second number is records read twice.
async fn lost_records(bootstrap: &str, log: &[Rec], partitions: u32) -> Result<(u64, u64)> {
    let mut want: HashMap<(u32, u64), u64> = HashMap::new();
    let mut ends = vec![0u64; partitions as usize];
    for (seq, r) in log.iter().enumerate() {
        if r.acked.is_some() {
            want.insert((r.partition, r.offset), seq as u64);
            let e = &mut ends[r.partition as usize - 1];
            *e = (*e).max(r.offset + 1);
        }
    }
    let subs = (1..=partitions)
        .map(|p| ShardSpec::One(ShardId::new(TOPIC, p)))
        .collect();
    let group = format!("bench-failover-check-{}", std::process::id());
    let mut cfg = ConsumerConfig::new(bootstrap, group, subs);
    cfg.connection.secret = crate::admin::secret();
    cfg.from = StartFrom::Earliest;
    cfg.max_wait = Duration::from_millis(200);
    let mut consumer = Consumer::connect(cfg).await?;
    let mut seen: HashMap<(u32, u64), u64> = HashMap::new();
    let mut twice = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = consumer
            .positions()
            .iter()
            .all(|(s, pos)| *pos >= ends[s.partition as usize - 1]);
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("could not read every acknowledged offset back within 300 s");
        }
        for r in consumer.poll().await? {
            let Some(v) = r.record.value.get(..8) else {
                continue;
            };
            let seq = u64::from_le_bytes(v.try_into().expect("8 bytes"));
            if seen.insert((r.shard.partition, r.offset), seq).is_some() {
                twice += 1;
            }
        }
    }
    consumer.close();
    let lost = want
        .iter()
        .filter(|(k, seq)| seen.get(k) != Some(seq))
        .count() as u64;
    Ok((lost, twice))
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

fn render(r: &FailoverReport) -> String {
    let mut out = format!(
        "bench-failover: {} brokers, {} partitions, R={}, {} msgs/s of {} B, broker timeout {}\n\n",
        r.brokers,
        r.partitions,
        r.replication_factor,
        r.rate,
        r.size,
        r.broker_timeout_ms
            .map_or("1000 ms (default)".into(), |m| format!("{m} ms"))
    );
    out.push_str("| kill | broker | detected ms | led shards: unwritable ms (elected ms) | follower shards max ms | in flight at kill: acked after / latest ms | max led ms | rejoin ms |\n|---|---|---|---|---|---|---|---|\n");
    for k in &r.kills {
        let led: Vec<String> = k
            .shards
            .iter()
            .filter(|s| s.role == "leader")
            .map(|s| {
                format!(
                    "{} {} ({})",
                    s.shard.rsplit(':').next().unwrap_or(&s.shard),
                    fmt_ms(s.unwritable_ms),
                    fmt_ms(s.elected_ms)
                )
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} | {} |\n",
            k.kill,
            k.broker,
            fmt_ms(k.detected_ms),
            led.join(", "),
            fmt_ms(k.max_follower_ms),
            k.in_flight_acked_after,
            fmt_ms(k.in_flight_max_ms),
            fmt_ms(k.max_led_ms),
            format_args!("{:.0}", k.rejoin_ms),
        ));
    }
    out.push_str(&format!(
        "\nkill -> first acknowledged produce, shards the killed broker led ({} samples): median {} ms, max {} ms\n\
         per kill (max over its led shards): median {} ms, max {} ms\n\
         shards where it was a follower: median {} ms, max {} ms\n\
         kill -> router shows the broker down: median {} ms\n\
         samples with no write within the measure timeout (left out above): {}\n\
         records: {} sent, {} acknowledged, {} failed\n\
         acknowledged records lost: {}\n",
        r.led_samples,
        fmt_ms(r.led_median_ms),
        fmt_ms(r.led_max_ms),
        fmt_ms(r.per_kill_max_median_ms),
        fmt_ms(r.per_kill_max_max_ms),
        fmt_ms(r.follower_median_ms),
        fmt_ms(r.follower_max_ms),
        fmt_ms(r.detected_median_ms),
        r.timed_out,
        r.sent,
        r.acknowledged,
        r.failed,
        r.acknowledged_lost,
    ));
    out
}

/// Picks the next broker, from `next` on in id order, that leads a shard of the topic.
fn pick_victim(st: &ClusterStatus, next: &mut usize) -> Option<u32> {
    let mut ids: Vec<u32> = st.brokers.iter().map(|b| b.addr.id).collect();
    ids.sort_unstable();
    for i in 0..ids.len() {
        let id = ids[(*next + i) % ids.len()];
        if topic_shards(st).any(|r| r.owner.as_ref().is_some_and(|o| o.id == id)) {
            *next = (*next + i + 1) % ids.len();
            return Some(id);
        }
    }
    None
}

async fn failover(args: &FailoverArgs, up: &UpCluster, client: &ClusterClient) -> Result<()> {
    let size = args.size.unwrap_or(100);
    create_topic(client, args).await?;
    wait_in_sync(client, args, Duration::from_secs(60)).await?;
    let load = Load::start(&up.router, args, size).await?;
    let mut report = FailoverReport {
        brokers: args.brokers,
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        rate: args.rate,
        size,
        broker_timeout_ms: args.broker_timeout_ms,
        ..Default::default()
    };
    let mut next = 0;
    for k in 1..=args.kills {
        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
        let st = status(client).await?;
        let victim = pick_victim(&st, &mut next).context("no broker leads a shard")?;
        let r = one_kill(k, victim, up, client, &load, &st, args).await?;
        if !args.json {
            eprintln!(
                "kill {k}: broker {victim}: led shards writable again after max {} ms (detected {} ms); back in every ISR {:.0} ms after release",
                fmt_ms(r.max_led_ms),
                fmt_ms(r.detected_ms),
                r.rejoin_ms
            );
        }
        report.kills.push(r);
    }
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let log = load.finish().await?;
    report.sent = log.len() as u64;
    report.acknowledged = log.iter().filter(|r| r.acked.is_some()).count() as u64;
    report.failed = log.iter().filter(|r| r.failed).count() as u64;
    let (lost, twice) = lost_records(&up.router, &log, args.partitions).await?;
    report.acknowledged_lost = lost;
    if twice > 0 {
        eprintln!("bench-failover: {twice} offsets were read twice");
    }
    let samples = |role: &'static str| {
        report
            .kills
            .iter()
            .flat_map(|k| k.shards.iter())
            .filter(move |s| s.role == role)
            .map(|s| s.unwritable_ms.unwrap_or(f64::INFINITY))
            .collect::<Vec<f64>>()
    };
    let led = samples("leader");
    report.led_samples = led.len();
    report.timed_out = led
        .iter()
        .chain(samples("follower").iter())
        .filter(|v| !v.is_finite())
        .count();
    (report.led_median_ms, report.led_max_ms) = median_max(led);
    (report.follower_median_ms, report.follower_max_ms) = median_max(samples("follower"));
    (report.per_kill_max_median_ms, report.per_kill_max_max_ms) = median_max(
        report
            .kills
            .iter()
            .map(|k| k.max_led_ms.unwrap_or(f64::INFINITY)),
    );
    report.detected_median_ms = median_max(report.kills.iter().filter_map(|k| k.detected_ms)).0;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render(&report));
    }
    if lost > 0 {
        bail!("{lost} acknowledged records lost");
    }
    Ok(())
}

pub async fn run(args: FailoverArgs) -> Result<()> {
    if args.brokers < 2 || args.replication_factor < 2 || args.replication_factor > args.brokers {
        bail!("failover needs --brokers >= 2 and 2 <= --replication-factor <= --brokers");
    }
    if args.partitions == 0 || args.size.is_some_and(|s| s < 8) {
        bail!("--partitions must be at least 1 and --size at least 8 bytes");
    }
    let up = UpCluster::start(&args).await?;
    let client = crate::admin::client(&up.router).await?;
    let result = if args.catch_up {
        catch_up::catch_up(&args, &up, &client).await
    } else {
        failover(&args, &up, &client).await
    };
    client.close();
    up.stop().await?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(partition: u32, sent: Instant, acked: Option<Instant>) -> Rec {
        Rec {
            partition,
            sent,
            acked,
            offset: 0,
            failed: false,
        }
    }

    #[test]
    fn the_first_acked_record_sent_after_the_kill_counts() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let log = vec![
            rec(1, at(0), Some(at(900))), // in flight at the kill: not counted
            rec(2, at(5), Some(at(6))),
            rec(1, at(20), None), // failed
            rec(1, at(30), Some(at(1200))),
            rec(1, at(40), Some(at(1100))),
            rec(2, at(50), Some(at(52))),
        ];
        let first = first_acked_after(&log, 0, at(10), 3);
        assert_eq!(first, vec![Some(at(1200)), Some(at(52)), None]);
    }

    #[test]
    fn medians_and_victims() {
        assert_eq!(median_max([3.0, 1.0, 2.0]), (Some(2.0), Some(3.0)));
        assert_eq!(median_max([f64::INFINITY]), (None, None));
        assert_eq!(record_value(7, 20).len(), 20);
        assert_eq!(&record_value(7, 20)[..8], &7u64.to_le_bytes());
    }
}
