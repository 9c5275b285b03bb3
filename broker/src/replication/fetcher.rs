//! One follower-to-leader replication stream: every shard this broker follows on `leader`, in
//! one long-polled `ReplicaFetch` at a time over one connection.

use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::{
    BrokerAddr, CancellationToken, ClientError, Connection, ConnectionConfig, ErrorKind,
    ReplicaFetchRequest, Request, Response,
};
use tracing::{debug, warn};

use crate::service::Broker;

/// How long the leader may hold a fetch with nothing new.
const LONG_POLL_MS: u32 = 500;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

pub(super) async fn run(broker: Arc<Broker>, leader: BrokerAddr, stop: CancellationToken) {
    let mut conn: Option<Connection> = None;
    let mut backoff = BACKOFF_MIN;
    let mut warned = false;
    let mut round = 0usize;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let mut positions: Vec<_> = broker
            .replication
            .followed_on(&leader)
            .into_iter()
            .filter_map(|(shard, epoch)| broker.held(&shard)?.position(epoch))
            .collect();
        // The leader fills one frame in the order asked: each round another shard goes first,
        // so none waits for ever behind the others when all are far behind.
        if !positions.is_empty() {
            positions.sort_by(|a, b| a.shard.cmp(&b.shard));
            let first = round % positions.len();
            positions.rotate_left(first);
        }
        round = round.wrapping_add(1);
        if positions.is_empty() {
            debug!(%leader, "nothing left to follow on this leader; fetcher stops");
            return;
        }
        let c = match conn.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => {
                let config = ConnectionConfig {
                    max_frame: broker.max_frame(),
                    client_name: format!("broker-{}-replica", broker.id()),
                    connect_timeout: Duration::from_secs(2),
                    secret: broker.secret(),
                    ..ConnectionConfig::default()
                };
                let connected = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = Connection::connect(&leader.addr, config) => c,
                };
                match connected {
                    Ok(c) => c,
                    Err(e) => {
                        if !warned {
                            warn!(%leader, "cannot reach the leader to replicate: {e}; retrying");
                            warned = true;
                        }
                        if !pause(&stop, &mut backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let asked: std::collections::HashMap<_, _> = positions
            .iter()
            .map(|p| (p.shard.clone(), p.clone()))
            .collect();
        let req = Request::ReplicaFetch(ReplicaFetchRequest {
            follower: broker.id(),
            incarnation: broker.incarnation,
            positions,
            max_bytes: broker.read_limit() as u32,
            max_wait_ms: LONG_POLL_MS,
        });
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            r = c.request_with_timeout(req, Duration::from_millis(LONG_POLL_MS as u64) + Duration::from_secs(5)) => r,
        };
        let results = match answer {
            Ok(Response::ReplicaFetched(results)) => results,
            Ok(other) => {
                warn!(%leader, "leader answered a replica fetch with {}", other.name());
                if !pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
            Err(e) => {
                if !warned {
                    warn!(%leader, "replica fetch failed: {e}; retrying");
                    warned = true;
                }
                if matches!(e, ClientError::Server(_)) {
                    conn = Some(c);
                }
                if !pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        conn = Some(c);
        if warned {
            debug!(%leader, "replicating again");
            warned = false;
        }
        let mut refused = false;
        let mut appended = Vec::new();
        for r in results {
            let (Some(shard), Some(pos)) = (broker.held(&r.shard), asked.get(&r.shard)) else {
                continue;
            };
            match r.result {
                Ok(data) => match shard.apply_replica(pos, data) {
                    Ok(n) if n > 0 => appended.push(shard),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(shard = %r.shard, "cannot apply what the leader sent: {e}");
                        refused = true;
                    }
                },
                // The leader has not learnt of this epoch yet, or has moved on: the router
                // tells whichever side is behind.
                Err(ErrorKind::LeaderEpochMismatch { .. } | ErrorKind::NotOwner { .. }) => {
                    refused = true;
                }
                Err(e) => {
                    debug!(shard = %r.shard, "leader refused a replica fetch: {e}");
                    refused = true;
                }
            }
        }
        // Where only durable records count (`fsync always`), sync what was appended before
        // the next fetch reports it: one flush for every shard of this answer.
        let durability = broker.durability();
        if durability.reads_wait_for_flush() && !appended.is_empty() {
            let ticket = durability.note_write();
            let ends: Vec<_> = appended.iter().map(|s| s.end_offset()).collect();
            if let Err(e) = durability.wait(ticket).await {
                warn!(%leader, "cannot sync replicated records: {e}");
            } else {
                for (s, end) in appended.iter().zip(ends) {
                    s.mark_durable(end);
                }
            }
        }
        if refused {
            // A shard the leader refused (its epoch changed): the router's word follows
            // shortly; the other shards of the stream wait only briefly.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(BACKOFF_MIN) => {}
            }
        } else {
            backoff = BACKOFF_MIN;
        }
    }
}

async fn pause(stop: &CancellationToken, backoff: &mut Duration) -> bool {
    let d = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}
