//! Live-migration throughput: loads a shard of 200,000 x 1 KiB records (~210 MB) into broker A,
//! then moves it to broker B (both in this process, talking over loopback TCP) while a producer
//! keeps appending to A, polling MoveStatus like the router does (every 100 ms while copying,
//! every 5 ms once fenced or nearly caught up). Prints the copy rate and the write pause (from
//! B's fence request to activation).
//! Run with `cargo bench -p shardq-broker --bench migrate`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardq_broker::{start, BrokerConfig};
use shardq_protocol::{
    Acks, BatchBuilder, BrokerAddr, Connection, ConnectionConfig, ErrorKind, MovePhase,
    MoveProgress, ProduceRequest, Request, Response, Service, ShardAssignment, ShardId,
};

const RECORDS: u64 = 200_000;
const RECORD_BYTES: usize = 1024;
const PER_BATCH: u64 = 256;
/// Records of lag below which the poller switches from 100 ms to 5 ms.
const NEAR_END_LAG: u64 = 20_000;

fn produce_request(shard: &ShardId, n: u64, seed: u64) -> Request {
    let mut b = BatchBuilder::with_capacity(n as usize * (RECORD_BYTES + 16));
    let mut value = vec![0u8; RECORD_BYTES];
    for i in 0..n {
        value[..8].copy_from_slice(&(seed + i).to_le_bytes());
        b.push(None, &value, seed + i);
    }
    Request::Produce(ProduceRequest {
        shard: shard.clone(),
        epoch: 1,
        producer: None,
        acks: Acks::Appended,
        batch: b.finish(),
    })
}

async fn status(conn: &Connection, move_id: u64) -> anyhow::Result<MoveProgress> {
    match conn.request(Request::MoveStatus { move_id }).await? {
        Response::Move(p) => Ok(p),
        other => anyhow::bail!("unexpected answer to move-status: {}", other.name()),
    }
}

fn assignment(shard: &ShardId, epoch: u64) -> Request {
    Request::AssignShards {
        epoch,
        shards: vec![ShardAssignment::sole(shard.clone(), epoch, 1)],
    }
}

async fn bench() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    // The default durability policy (flush every 100 ms): the fence's flush on A then only
    // covers the last interval's writes.
    let a = start(BrokerConfig::new(1, da.path())).await?;
    let b = start(BrokerConfig::new(2, db.path())).await?;
    let shard = ShardId::new("bench", 1);
    a.broker().call(assignment(&shard, 1)).await?;

    let load_start = Instant::now();
    let mut next = 0;
    while next < RECORDS {
        let n = PER_BATCH.min(RECORDS - next);
        a.broker().call(produce_request(&shard, n, next)).await?;
        next += n;
    }
    let loaded = load_start.elapsed();
    println!(
        "loaded {RECORDS} x {RECORD_BYTES} B records into A in {:.2} s",
        loaded.as_secs_f64()
    );

    // A producer that keeps appending 10-record batches to A until it is fenced.
    let appended = Arc::new(AtomicU64::new(0));
    let producer = tokio::spawn({
        let (broker, shard, appended) = (a.broker().clone(), shard.clone(), appended.clone());
        async move {
            let mut seed = RECORDS;
            loop {
                match broker.call(produce_request(&shard, 10, seed)).await {
                    Ok(_) => {
                        seed += 10;
                        appended.fetch_add(10, Ordering::Relaxed);
                    }
                    Err(ErrorKind::Moving { .. }) => return,
                    Err(e) => panic!("live produce failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });

    let config = ConnectionConfig {
        request_timeout: Duration::from_secs(30),
        ..ConnectionConfig::default()
    };
    let conn = Connection::connect(&b.addr().to_string(), config).await?;
    let started = Instant::now();
    conn.request(Request::ImportShard {
        move_id: 1,
        shard: shard.clone(),
        source: BrokerAddr {
            id: 1,
            addr: a.addr().to_string(),
        },
        epoch: 1,
    })
    .await?;
    let deadline = started + Duration::from_secs(120);
    let ready = loop {
        let p = status(&conn, 1).await?;
        match p.phase {
            MovePhase::Activating => break p,
            MovePhase::Failed => anyhow::bail!("the move failed: {:?}", p.error),
            // Near the end (fenced, or little left) poll fast: B fences and finishes within a
            // few ms of catching up, so a slow poll would add up to its interval to the pause.
            MovePhase::Fenced => tokio::time::sleep(Duration::from_millis(5)).await,
            _ if p.lag < NEAR_END_LAG => tokio::time::sleep(Duration::from_millis(5)).await,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        anyhow::ensure!(Instant::now() < deadline, "the move did not finish in time");
    };
    let copy_time = started.elapsed();
    conn.request(assignment(&shard, 2)).await?;
    let done = status(&conn, 1).await?;
    producer.await?;
    anyhow::ensure!(
        done.phase == MovePhase::Done,
        "not activated: {:?}",
        done.phase
    );

    let mb = ready.bytes_copied as f64 / 1e6;
    println!(
        "moved {} records, {mb:.1} MB in {:.2} s: {:.0} MB/s (including fence, tail, meta and flush; {} records appended live during the copy)",
        ready.records_copied,
        copy_time.as_secs_f64(),
        mb / copy_time.as_secs_f64(),
        appended.load(Ordering::Relaxed)
    );
    println!(
        "write pause (fence request to activation): {} ms",
        done.write_pause_ms.unwrap_or_default()
    );
    conn.close();
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; any other argument filters like libtest: skip unless it
    // matches this bench's name.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if filter.is_some_and(|f| !"migrate".contains(f.as_str())) {
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(bench())
}
