//! The leader's answer to a replica fetch, and a replica's checksum of its committed records.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::{
    ErrorKind, Offset, ReplicaChecksum, ReplicaFetchRequest, ReplicaFetchResult, Response,
    ServiceFuture, ShardId,
};

use crate::import::now_ms;
use crate::service::Broker;
use crate::shard::{Limit, Shard};

/// The longest a replica fetch is held with nothing new.
const MAX_WAIT: Duration = Duration::from_secs(5);

impl Broker {
    /// Answers a follower's positions; when nothing is new for any shard, waits (up to the
    /// request's `max_wait_ms`) for an append to one of them.
    pub(crate) fn replica_fetch(self: &Arc<Self>, req: ReplicaFetchRequest) -> ServiceFuture {
        let broker = self.clone();
        Box::pin(async move {
            let wait = Duration::from_millis(req.max_wait_ms as u64).min(MAX_WAIT);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let shards: Vec<Option<Arc<Shard>>> = req
                    .positions
                    .iter()
                    .map(|p| broker.held(&p.shard))
                    .collect();
                // Subscribe before answering, so an append between the two wakes the wait.
                let mut ends: Vec<_> = shards
                    .iter()
                    .flatten()
                    .map(|s| s.subscribe(Limit::End))
                    .collect();
                let results = broker.serve_positions(&req, &shards);
                let news = results.iter().any(|r| match &r.result {
                    Ok(d) => !d.batches.is_empty() || d.diverging.is_some() || !d.groups.is_empty(),
                    Err(_) => true,
                });
                if news || tokio::time::Instant::now() >= deadline || ends.is_empty() {
                    return Ok(Response::ReplicaFetched(results));
                }
                let mut waits: Vec<_> = ends.iter_mut().map(|rx| Box::pin(rx.changed())).collect();
                let any_append = std::future::poll_fn(|cx| {
                    for w in waits.iter_mut() {
                        if w.as_mut().poll(cx).is_ready() {
                            return std::task::Poll::Ready(());
                        }
                    }
                    std::task::Poll::Pending
                });
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = any_append => {}
                }
            }
        })
    }

    fn serve_positions(
        &self,
        req: &ReplicaFetchRequest,
        shards: &[Option<Arc<Shard>>],
    ) -> Vec<ReplicaFetchResult> {
        let now = now_ms();
        let mut budget = (req.max_bytes as usize).min(self.read_limit());
        req.positions
            .iter()
            .zip(shards)
            .map(|(pos, shard)| {
                let result = match shard {
                    Some(s) => s.serve_replica((req.follower, req.incarnation), pos, budget, now),
                    None => Err(ErrorKind::NotOwner {
                        shard: pos.shard.to_string(),
                        epoch: self.epoch(),
                        owner: None,
                    }),
                };
                if let Ok(d) = &result {
                    // What the entries take encoded, with a margin for the envelope around each.
                    let used: usize = d
                        .batches
                        .iter()
                        .map(|b| crate::shard::stored_size(b) as usize + 64)
                        .sum();
                    // Once the budget is spent, the other shards answer with positions only.
                    budget = budget.saturating_sub(used);
                }
                ReplicaFetchResult {
                    shard: pos.shard.clone(),
                    result,
                }
            })
            .collect()
    }
}

/// This replica's checksum of `shard`'s records below `upto` (its high watermark if None).
pub(crate) fn checksum(
    broker: &Broker,
    shard: &ShardId,
    upto: Option<Offset>,
) -> Result<Response, ErrorKind> {
    let s = broker.held(shard).ok_or_else(|| ErrorKind::UnknownShard {
        shard: shard.to_string(),
        reason: format!("broker {} holds no replica of it", broker.id()),
    })?;
    let end = upto
        .unwrap_or_else(|| s.high_watermark())
        .min(s.end_offset());
    let mut sum = Fnv::new();
    let mut records = 0u64;
    let start = s.offsets().0;
    let mut from: Offset = start;
    while from < end {
        let (batches, _) = s.read(from, 1 << 20, 4 << 20, Limit::End)?;
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            for (offset, r) in b.records_from(from) {
                if offset >= end {
                    break;
                }
                sum.write(&offset.to_le_bytes());
                sum.write(&r.timestamp_ms.to_le_bytes());
                match &r.key {
                    Some(k) => {
                        sum.write(&[1]);
                        sum.write(&(k.len() as u64).to_le_bytes());
                        sum.write(k);
                    }
                    None => sum.write(&[0]),
                }
                sum.write(&(r.value.len() as u64).to_le_bytes());
                sum.write(&r.value);
                records += 1;
            }
            from = b.end_offset();
        }
    }
    Ok(Response::Checksums(vec![ReplicaChecksum {
        broker: broker.id(),
        role: s.role(),
        start,
        end: from.min(end),
        records,
        checksum: sum.finish(),
        error: None,
    }]))
}

/// FNV-1a, 64 bit.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
