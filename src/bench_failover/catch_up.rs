//! `shardq bench-failover --catch-up`: how fast a broker replaced with an empty data dir copies
//! its replicas back from their leaders, until it is in every ISR again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shardq_producer::{Producer, ProducerConfig};
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{Acks, BrokerStatus, Request, Response, ShardSpec};

use super::{
    all_in_sync, create_topic, ms_since, record_value, status, wait_in_sync, FailoverArgs,
    UpCluster, TOPIC,
};

#[derive(Serialize, Debug, Default)]
pub struct CatchUpReport {
    pub brokers: u32,
    pub partitions: u32,
    pub replication_factor: u32,
    pub size: usize,
    pub preload_records: u64,
    pub preload_mb: f64,
    pub preload_mb_per_s: f64,
    pub broker: u32,
    /// Bytes of the shards the replaced broker copies back, as their leaders report them.
    pub copied_mb: f64,
    /// Its data dir once back in every ISR.
    pub disk_mb: f64,
    /// Hold file removed (the process restarts on the empty dir) to registered with the router.
    pub restart_ms: f64,
    /// Hold file removed to in every ISR.
    pub catch_up_ms: f64,
    pub mb_per_s: f64,
    /// Over the copy alone (registered to in every ISR).
    pub copy_mb_per_s: f64,
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn preload(bootstrap: &str, count: u64, size: usize) -> Result<f64> {
    let mut cfg = ProducerConfig::new(bootstrap);
    cfg.connection.secret = crate::admin::secret();
    cfg.acks = Acks::Durable;
    cfg.linger = Duration::from_millis(5);
    let producer = Producer::connect(cfg).await?;
    let target = ShardSpec::All(TOPIC.into());
    let start = Instant::now();
    let mut window = std::collections::VecDeque::new();
    for seq in 0..count {
        window.push_back(
            producer
                .send(&target, None, record_value(seq, size))
                .await?,
        );
        if window.len() > 20_000 {
            window.pop_front().expect("non-empty").await?;
        }
    }
    for d in window {
        d.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let stats = producer.close().await;
    if stats.failed > 0 {
        bail!("{} preload records failed", stats.failed);
    }
    Ok(secs)
}

pub(super) async fn catch_up(
    args: &FailoverArgs,
    up: &UpCluster,
    client: &ClusterClient,
) -> Result<()> {
    let size = args.size.unwrap_or(1000);
    create_topic(client, args).await?;
    wait_in_sync(client, args, Duration::from_secs(60)).await?;
    let count = (args.catch_up_mb * 1_000_000).div_ceil(size as u64);
    if !args.json {
        eprintln!("catch-up: preloading {count} records of {size} B");
    }
    let secs = preload(&up.router, count, size).await?;
    wait_in_sync(client, args, Duration::from_secs(600)).await?;
    let victim = args.victim.unwrap_or(args.brokers);
    let st = status(client).await?;
    let copied: u64 = st
        .shards
        .iter()
        .filter(|(r, _)| r.shard.topic == TOPIC && r.replicas.contains(&victim))
        .filter_map(|(_, rep)| rep.as_ref().map(|s| s.bytes))
        .sum();
    up.kill(victim)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(client).await?;
        if st
            .brokers
            .iter()
            .any(|b| b.addr.id == victim && b.status == BrokerStatus::Down)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the router did not see broker {victim} down within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dir = up.data.join(format!("broker-{victim}"));
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot delete {}", dir.display()))?;
    match client.admin(Request::ReplaceBroker { id: victim }).await? {
        Response::BrokerReplaced { .. } => {}
        other => bail!("broker replace answered {}", other.name()),
    }
    let released = Instant::now();
    up.release(victim)?;
    if !args.json {
        eprintln!("catch-up: broker {victim} replaced and restarting on an empty data dir");
    }
    let mut registered = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let st = status(client).await?;
        if registered.is_none()
            && st
                .brokers
                .iter()
                .any(|b| b.addr.id == victim && b.status == BrokerStatus::Up)
        {
            registered = Some(Instant::now());
        }
        if all_in_sync(&st, args.brokers, args.partitions) {
            break;
        }
        if Instant::now() > deadline {
            bail!("broker {victim} not back in every ISR within 1800 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = Instant::now();
    let registered = registered.unwrap_or(done);
    let mb = copied as f64 / 1e6;
    let r = CatchUpReport {
        brokers: args.brokers,
        partitions: args.partitions,
        replication_factor: args.replication_factor,
        size,
        preload_records: count,
        preload_mb: (count * size as u64) as f64 / 1e6,
        preload_mb_per_s: (count * size as u64) as f64 / 1e6 / secs,
        broker: victim,
        copied_mb: mb,
        disk_mb: dir_bytes(&dir) as f64 / 1e6,
        restart_ms: ms_since(released, registered),
        catch_up_ms: ms_since(released, done),
        mb_per_s: mb / (done - released).as_secs_f64(),
        copy_mb_per_s: mb / (done - registered).as_secs_f64().max(1e-3),
    };
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "catch-up: {} brokers, {} partitions, R={}: preloaded {:.0} MB ({} records of {} B) at {:.1} MB/s\n\
             broker {} replaced (empty data dir): {:.1} MB of replicas copied back ({:.1} MB on disk)\n\
             restart to registered {:.0} ms; restart to in every ISR {:.0} ms: {:.1} MB/s ({:.1} MB/s over the copy alone)",
            r.brokers, r.partitions, r.replication_factor, r.preload_mb, r.preload_records, r.size,
            r.preload_mb_per_s, r.broker, r.copied_mb, r.disk_mb, r.restart_ms, r.catch_up_ms,
            r.mb_per_s, r.copy_mb_per_s
        );
    }
    Ok(())
}
