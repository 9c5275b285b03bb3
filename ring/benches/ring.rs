//! Criterion benchmarks for the ring: `owner` lookup on a large ring (target median < 200 ns) and
//! `place` of 10,000 shards on 8 brokers in plain and bounded-load modes.
//!
//! Run with `cargo bench -p shardq-ring`. Inputs are fixed (no randomness) so runs are comparable.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use shardq_ring::analyze::shard_names;
use shardq_ring::{HashFn, Member, PlacementMode, Ring, RingConfig, DEFAULT_EPS};

fn members(n: u32) -> Vec<Member> {
    (1..=n).map(Member::new).collect()
}

fn lookup(c: &mut Criterion) {
    let ring = Ring::new(
        RingConfig {
            vnodes: 256,
            hash: HashFn::Xxh3,
            mode: PlacementMode::Plain,
        },
        &members(64),
    );
    // 4096 precomputed keys, cycled, so the timing covers hashing + binary search over 16,384
    // tokens with realistic cache behaviour rather than one hot key.
    let keys = shard_names(4096);
    let mut i = 0usize;
    c.bench_function("owner/64x256/xxh3", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(ring.owner(black_box(&keys[i])))
        })
    });
}

fn place(c: &mut Criterion) {
    let shards = shard_names(10_000);
    let mut g = c.benchmark_group("place/10k-shards/8-brokers");
    g.sample_size(20);
    for (label, mode) in [
        ("plain", PlacementMode::Plain),
        ("bounded", PlacementMode::Bounded { eps: DEFAULT_EPS }),
    ] {
        let ring = Ring::new(
            RingConfig {
                vnodes: 128,
                hash: HashFn::Xxh3,
                mode,
            },
            &members(8),
        );
        g.bench_function(label, |b| {
            b.iter(|| black_box(ring.place(black_box(&shards))))
        });
    }
    g.finish();
}

criterion_group!(benches, lookup, place);
criterion_main!(benches);
