//! The controller's requests and reactions (see `state::replicas` for the rules): leaders'
//! ISR changes, explicit elections, per-replica checksums, and the failover when a broker goes
//! down, restarts or comes back.

use std::sync::Arc;

use shardq_protocol::{
    BrokerAddr, BrokerId, ClientError, ErrorKind, LeaderEpoch, ReplicaChecksum, Request, Response,
    ServiceFuture, ShardId,
};
use tracing::{info, warn};

use crate::service::{done, push, storage};
use crate::Shared;

impl Shared {
    /// A leader's ISR change: applied and flushed before the answer (the leader acts on it).
    pub(crate) fn alter_isr(
        self: &Arc<Self>,
        from: BrokerId,
        shard: ShardId,
        leader_epoch: LeaderEpoch,
        isr_version: u64,
        (isr, incarnations): (Vec<BrokerId>, Vec<(BrokerId, u64)>),
    ) -> ServiceFuture {
        let result = self.state().alter_isr(
            from,
            &shard,
            leader_epoch,
            isr_version,
            &isr,
            &incarnations,
            |ops| self.persist(ops),
        );
        let refused = match &result {
            Err(e) if !matches!(e, ErrorKind::LeaderEpochMismatch { .. }) => {
                let mut st = self.state();
                st.isr_refused(from, &shard, leader_epoch, isr_version, |ops| {
                    self.persist(ops)
                })
                .map(|p| (p, st.epoch))
                .ok()
            }
            _ => None,
        };
        let shared = self.clone();
        Box::pin(async move {
            if let Some((pushes, epoch)) = refused {
                // The leader's proposal ends with the state it is sent.
                shared.store.flush().await.map_err(storage)?;
                push(&shared.pool, epoch, pushes, shared.config.request_timeout).await;
            }
            let version = result?;
            shared.store.flush().await.map_err(storage)?;
            info!(%shard, leader = from, ?isr, isr_version = version, "ISR changed");
            Ok(Response::IsrAltered {
                isr_version: version,
            })
        })
    }

    /// `shardq shard elect`: a new leader now (see `State::elect`).
    pub(crate) fn elect(self: &Arc<Self>, shard: ShardId, unclean: bool) -> ServiceFuture {
        let result = {
            let mut st = self.state();
            st.elect(&shard, unclean, |ops| self.persist(ops))
                .map(|r| (r, st.epoch))
        };
        let ((election, pushes), epoch) = match result {
            Ok(r) => r,
            Err(e) => return done(Err(e)),
        };
        if election.unclean {
            warn!(%shard, leader = election.leader, leader_epoch = election.leader_epoch,
                may_lose = election.may_lose, "UNCLEAN election: records only the old in-sync replicas held may be lost");
        } else {
            info!(%shard, leader = election.leader, leader_epoch = election.leader_epoch, "leader elected");
        }
        let shared = self.clone();
        Box::pin(async move {
            shared.store.flush().await.map_err(storage)?;
            push(&shared.pool, epoch, pushes, shared.config.request_timeout).await;
            Ok(Response::Elected(election))
        })
    }

    /// One checksum per replica of `shard`, each over the same range: below the leader's high
    /// watermark as the leader answers first.
    pub(crate) fn checksums(self: &Arc<Self>, shard: ShardId) -> ServiceFuture {
        let replicas = {
            let st = self.state();
            st.replicas_of(&shard).map(|r| {
                let addrs: Vec<(BrokerId, Option<String>)> = r
                    .replicas
                    .iter()
                    .map(|b| (*b, st.members.get(b).map(|m| m.addr.clone())))
                    .collect();
                (r.leader, addrs)
            })
        };
        let Some((leader, replicas)) = replicas else {
            return done(Err(ErrorKind::UnknownShard {
                shard: shard.to_string(),
                reason: "no such shard".into(),
            }));
        };
        let shared = self.clone();
        Box::pin(async move {
            let timeout = shared.config.request_timeout;
            let ask = |id: BrokerId, addr: Option<String>, upto| {
                let shared = shared.clone();
                let shard = shard.clone();
                async move {
                    let Some(addr) = addr else {
                        return failed(id, "not a member".into());
                    };
                    let broker = BrokerAddr { id, addr };
                    let req = Request::ShardChecksum { shard, upto };
                    match shared.pool.request(&broker, req, timeout).await {
                        Ok(Response::Checksums(mut v)) if v.len() == 1 => v.remove(0),
                        Ok(other) => failed(id, format!("answered {}", other.name())),
                        Err(ClientError::Server(e)) => failed(id, e.to_string()),
                        Err(e) => failed(id, e.to_string()),
                    }
                }
            };
            // The leader's high watermark is the range every in-sync replica must agree on.
            let mut out = Vec::new();
            let mut upto = None;
            if let Some(l) = leader {
                let addr = replicas
                    .iter()
                    .find(|(b, _)| *b == l)
                    .and_then(|(_, a)| a.clone());
                let c = ask(l, addr, None).await;
                upto = c.error.is_none().then_some(c.end);
                out.push(c);
            }
            let others = replicas
                .into_iter()
                .filter(|(b, _)| Some(*b) != leader)
                .map(|(b, a)| ask(b, a, upto));
            out.extend(futures::future::join_all(others).await);
            Ok(Response::Checksums(out))
        })
    }

    /// Broker `failed` went down or restarted (None: a broker came back, which may let offline
    /// shards elect): elections and ISR shrinks, persisted, flushed and pushed to the brokers.
    pub(crate) async fn fail_over(self: &Arc<Self>, failed: Option<BrokerId>) {
        let result = {
            let mut st = self.state();
            st.fail_over(failed, |ops| self.persist(ops))
                .map(|f| (f, st.epoch))
        };
        self.failed_over(failed, result).await;
    }

    /// Logs, flushes and pushes a failover already recorded in the state (with the routing
    /// epoch after it).
    pub(crate) async fn failed_over(
        self: &Arc<Self>,
        failed: Option<BrokerId>,
        result: Result<(crate::state::Failover, shardq_protocol::Epoch), ErrorKind>,
    ) {
        let (f, epoch) = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(broker = failed, "failover could not be recorded: {e}");
                return;
            }
        };
        if f.elected.is_empty() && f.isr_shrunk == 0 {
            return;
        }
        self.metrics.failover();
        let offline: Vec<&ShardId> = f
            .elected
            .iter()
            .filter(|(_, l)| l.is_none())
            .map(|(s, _)| s)
            .collect();
        info!(
            broker = failed,
            elected = f.elected.len() - offline.len(),
            offline = offline.len(),
            isr_shrunk = f.isr_shrunk,
            epoch,
            "failover"
        );
        for s in offline {
            warn!(shard = %s, "offline: every in-sync replica is down; it waits for one to return (or `shardq shard elect {s} --unclean`)");
        }
        if let Err(e) = self.store.flush().await {
            warn!("flushing the failover failed: {e}");
        }
        push(&self.pool, epoch, f.pushes, self.config.request_timeout).await;
    }
}

fn failed(broker: BrokerId, error: String) -> ReplicaChecksum {
    ReplicaChecksum {
        broker,
        role: shardq_protocol::ReplicaRole::Idle,
        start: 0,
        end: 0,
        records: 0,
        checksum: 0,
        error: Some(error),
    }
}
