//! In-process append throughput: produce requests of 1,000 x 100 B records straight into the
//! broker's request handler (no socket), under `--fsync never`, the default `interval=100` (write-ahead
//! file) and `--fsync always` (one at a time, and 8 in flight to show group commit). Run with `cargo bench -p shardq-broker --bench append`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardq_broker::{start, Broker, BrokerConfig, FsyncPolicy};
use shardq_protocol::{
    Acks, BatchBuilder, ProduceRequest, RecordBatch, Request, Response, Service, ShardId,
};

const RECORDS: u32 = 1_000;
const RECORD_BYTES: usize = 100;

fn batch() -> RecordBatch {
    let mut b = BatchBuilder::with_capacity(RECORDS as usize * (RECORD_BYTES + 16));
    let value = [7u8; RECORD_BYTES];
    for i in 0..RECORDS {
        b.push(None, &value, i as u64);
    }
    b.finish()
}

fn produce(shard: &ShardId, batch: &RecordBatch) -> Request {
    Request::Produce(ProduceRequest {
        shard: shard.clone(),
        epoch: 1,
        producer: None,
        acks: Acks::Durable,
        batch: batch.clone(),
    })
}

async fn one(broker: &Arc<Broker>, req: Request) {
    match broker.call(req).await {
        Ok(Response::Produced { .. }) => {}
        other => panic!("produce failed: {other:?}"),
    }
}

fn bench_policy(c: &mut Criterion, name: &str, fsync: FsyncPolicy, in_flight: usize) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig::new(1, dir.path());
    config.fsync = fsync;
    let handle = rt.block_on(start(config)).expect("start");
    let broker = handle.broker().clone();
    let shard = ShardId::new("bench", 1);
    broker
        .assign(&shardq_protocol::ShardAssignment::sole(
            shard.clone(),
            1,
            broker.id(),
        ))
        .expect("assign");
    let batch = batch();

    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(RECORDS as u64 * in_flight as u64));
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let calls: Vec<_> = (0..in_flight)
                        .map(|_| broker.call(produce(&shard, &batch)))
                        .collect();
                    for call in calls {
                        match call.await {
                            Ok(Response::Produced { .. }) => {}
                            other => panic!("produce failed: {other:?}"),
                        }
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    rt.block_on(one(&broker, produce(&shard, &batch)));
    drop(broker);
    rt.block_on(handle.shutdown());
}

fn appends(c: &mut Criterion) {
    bench_policy(c, "fsync_never_1000x100B", FsyncPolicy::Never, 1);
    // The default: the write-ahead file (one write() per append) and a flush every 100 ms.
    bench_policy(
        c,
        "fsync_interval100_1000x100B",
        FsyncPolicy::Interval(Duration::from_millis(100)),
        1,
    );
    bench_policy(c, "fsync_always_1000x100B", FsyncPolicy::Always, 1);
    bench_policy(
        c,
        "fsync_always_1000x100B_8_in_flight",
        FsyncPolicy::Always,
        8,
    );
}

criterion_group!(benches, appends);
criterion_main!(benches);
