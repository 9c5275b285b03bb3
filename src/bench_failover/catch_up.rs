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
    /// Producer batch size of the preload: what the leaders store, and send, per entry.
    pub batch_bytes: usize,
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

/// The last WARN line of a node's log, without its colours.
fn last_warning(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.contains("WARN"))?;
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip an escape sequence up to its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
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

async fn preload(bootstrap: &str, count: u64, size: usize, batch_bytes: usize) -> Result<f64> {
    let mut cfg = ProducerConfig::new(bootstrap);
    cfg.connection.secret = crate::admin::secret();
    cfg.acks = Acks::Durable;
    cfg.linger = Duration::from_millis(5);
    cfg.max_batch_bytes = batch_bytes;
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
    let secs = preload(&up.router, count, size, args.catch_up_batch_bytes).await?;
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
    // Progress: the shards it is in sync for, and its data dir growing.
    let mut progress = (0usize, 0u64);
    let mut progressed = Instant::now();
    let stall = Duration::from_secs(args.catch_up_stall_secs);
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
        let now = (
            st.shards
                .iter()
                .filter(|(r, _)| r.shard.topic == TOPIC && r.isr.contains(&victim))
                .count(),
            dir_bytes(&dir),
        );
        if now != progress {
            (progress, progressed) = (now, Instant::now());
        } else if progressed.elapsed() > stall {
            let log = up.data.join("logs").join(format!("broker-{victim}.log"));
            bail!(
                "broker {victim} made no progress for {stall:?} ({:.1} MB in its data dir, {:.1} MB to copy, in sync for {} shards); its last warning: {}",
                now.1 as f64 / 1e6,
                copied as f64 / 1e6,
                now.0,
                last_warning(&log).unwrap_or_else(|| "none".into())
            );
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
        batch_bytes: args.catch_up_batch_bytes,
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
            "catch-up: {} brokers, {} partitions, R={}: preloaded {:.0} MB ({} records of {} B, batches up to {} B) at {:.1} MB/s\n\
             broker {} replaced (empty data dir): {:.1} MB of replicas copied back ({:.1} MB on disk)\n\
             restart to registered {:.0} ms; restart to in every ISR {:.0} ms: {:.1} MB/s ({:.1} MB/s over the copy alone)",
            r.brokers, r.partitions, r.replication_factor, r.preload_mb, r.preload_records, r.size, r.batch_bytes,
            r.preload_mb_per_s, r.broker, r.copied_mb, r.disk_mb, r.restart_ms, r.catch_up_ms,
            r.mb_per_s, r.copy_mb_per_s
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_warning_of_a_log_loses_its_colours() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("broker-3.log");
        std::fs::write(
            &log,
            "\u{1b}[33m WARN\u{1b}[0m first\n\u{1b}[33m WARN\u{1b}[0m frame of 17 bytes\n\u{1b}[32m INFO\u{1b}[0m later\n",
        )
        .unwrap();
        assert_eq!(
            last_warning(&log).as_deref(),
            Some(" WARN frame of 17 bytes")
        );
        assert_eq!(last_warning(&d.path().join("none.log")), None);
    }
}
