//! Model-based property test of a shard log: random produce batches, fetches and restarts against
//! a `Vec` of records. Offsets must be dense from 0 and a fetch from any offset must return exactly
//! the model's records from there on, before and after a restart.

mod common;

use common::*;
use proptest::prelude::*;
use shardq_broker::FsyncPolicy;
use shardq_protocol::ShardId;

#[derive(Clone, Debug)]
enum Op {
    /// Value lengths of one batch.
    Produce(Vec<usize>),
    /// Offset as a fraction (per mille) of the current end, and the fetch's max_bytes.
    Fetch(u16, u32),
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(0usize..400, 1..40).prop_map(Op::Produce),
        // Batches above 64 KiB are split into several stored entries.
        1 => proptest::collection::vec(2_000usize..9_000, 10..30).prop_map(Op::Produce),
        5 => (0u16..=1000, 1u32..200_000).prop_map(|(f, m)| Op::Fetch(f, m)),
        1 => Just(Op::Restart),
    ]
}

/// A record's value: its intended offset, then filler, so any misplacement shows.
fn value(offset: u64, len: usize) -> Vec<u8> {
    let mut v = offset.to_le_bytes().to_vec();
    v.resize(len.max(8), (offset % 251) as u8);
    v
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let shard = ShardId::new("model", 1);
        let mut handle = broker(dir.path(), FsyncPolicy::Never).await;
        let mut conn = connect(&handle).await;
        assign(&conn, &shard, 1).await;
        let mut model: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            match op {
                Op::Produce(lens) => {
                    let values: Vec<Vec<u8>> = lens
                        .iter()
                        .enumerate()
                        .map(|(i, l)| value(model.len() as u64 + i as u64, *l))
                        .collect();
                    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
                    let (base, count, dup) = produce(&conn, &shard, batch_of(&refs), None)
                        .await
                        .expect("produce");
                    prop_assert_eq!(base, model.len() as u64, "offsets must be dense");
                    prop_assert_eq!(count as usize, values.len());
                    prop_assert!(!dup);
                    model.extend(values);
                }
                Op::Fetch(per_mille, max_bytes) => {
                    let offset = model.len() as u64 * per_mille as u64 / 1000;
                    let (hw, batches) = fetch(&conn, &shard, offset, max_bytes, 0)
                        .await
                        .expect("fetch");
                    prop_assert_eq!(hw, model.len() as u64);
                    let got = records_from(&batches, offset);
                    if offset < hw {
                        prop_assert!(
                            !got.is_empty(),
                            "data exists at {} but none returned",
                            offset
                        );
                    }
                    for (o, r) in &got {
                        prop_assert_eq!(&r.value[..], &model[*o as usize][..]);
                    }
                }
                Op::Restart => {
                    conn.close();
                    handle.shutdown().await;
                    handle = broker(dir.path(), FsyncPolicy::Never).await;
                    conn = connect(&handle).await;
                }
            }
        }
        let all = read_all(&conn, &shard, 0).await;
        prop_assert_eq!(all.len(), model.len());
        prop_assert!(all == model, "the full log differs from the model");
        handle.shutdown().await;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn shard_log_matches_a_vec_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops)?;
    }
}
