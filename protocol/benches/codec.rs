//! Codec throughput: how many records per second one core can build into a batch, and push through
//! encode + decode of a `Produce` envelope (reading every record back out), which bounds what a
//! broker or client can move per core before any I/O.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shardq_protocol::codec::{decode, encode};
use shardq_protocol::*;
use tokio_util::codec::{Decoder, Encoder};

const RECORDS: usize = 1_000;
const VALUE_LEN: usize = 100;

fn build_batch(value: &[u8]) -> RecordBatch {
    let mut b = BatchBuilder::with_capacity(RECORDS * (VALUE_LEN + 16));
    for i in 0..RECORDS {
        b.push(None, value, 1_700_000_000_000 + i as u64);
    }
    b.finish()
}

fn produce_envelope(batch: RecordBatch) -> RequestEnvelope {
    RequestEnvelope {
        correlation_id: 42,
        request: Request::Produce(ProduceRequest {
            shard: ShardId::new("bench", 1),
            epoch: 7,
            producer: Some(ProducerSeq {
                producer_id: 1,
                sequence: 99,
            }),
            acks: Acks::Durable,
            batch,
        }),
    }
}

/// Sums the value lengths so the optimizer cannot skip the walk.
fn walk(env: &RequestEnvelope) -> usize {
    match &env.request {
        Request::Produce(p) => p.batch.iter().map(|r| r.map_or(0, |r| r.value.len())).sum(),
        _ => 0,
    }
}

fn benches(c: &mut Criterion) {
    let value = vec![0xabu8; VALUE_LEN];
    let env = produce_envelope(build_batch(&value));
    assert_eq!(walk(&env), RECORDS * VALUE_LEN);

    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(RECORDS as u64));

    g.bench_function("batch_build_1000x100B", |b| {
        b.iter(|| black_box(build_batch(black_box(&value))))
    });

    g.bench_function("produce_encode_decode_iter_1000x100B", |b| {
        b.iter(|| {
            let bytes = encode(black_box(&env)).expect("encode");
            let back: RequestEnvelope = decode(&bytes).expect("decode");
            black_box(walk(&back))
        })
    });

    // The same through the frame codec, as it runs on a connection (reused buffer).
    let mut codec = FrameCodec::<RequestEnvelope>::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::with_capacity(256 * 1024);
    g.bench_function("produce_frame_encode_decode_iter_1000x100B", |b| {
        b.iter(|| {
            codec.encode(black_box(&env), &mut buf).expect("encode");
            let back = codec
                .decode(&mut buf)
                .expect("decode")
                .expect("whole frame");
            black_box(walk(&back))
        })
    });
    g.finish();
}

criterion_group!(codec_benches, benches);
criterion_main!(codec_benches);
