//! The controller's side of replication: every shard's replica set, ISR, leader and leader
//! epoch; elections when a leader's broker goes down or restarts, the leaders' ISR changes
//! (compare-and-set), and explicit elections (`shardq shard elect`, clean or unclean).
//!
//! The rules (Kafka's, with the router as controller):
//! - a new leader comes from the ISR only (unless an unclean election is asked for), and every
//!   leader change bumps the shard's leader epoch;
//! - a broker that is down, or that restarted (it registered again: a new process may have lost
//!   what it had not synced), leaves every ISR at once and loses every leadership, so a dead
//!   follower holds up `durable` writes no longer than its detection;
//! - the ISR is never emptied: when its last member fails the shard goes offline (no leader)
//!   with that member kept as the ISR, and waits for it (or an unclean election) rather than
//!   electing a replica that may lack acknowledged records;
//! - a leader's ISR change applies only if it comes from the current leader, at the current
//!   leader epoch and ISR version, names only replicas, includes the leader, and adds no broker
//!   that is down, nor one whose registered process is not the one the leader heard from (it
//!   restarted since, maybe with less: KIP-903).

use serde::{Deserialize, Serialize};
use shardq_protocol::{
    BrokerAddr, BrokerId, BrokerStatus, Election, Epoch, ErrorKind, LeaderEpoch, ReplicaSet,
    ShardId,
};

use super::{Pushes, State};
use crate::store::Op;

/// One shard's replication as the controller keeps it (persisted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replicas {
    /// Every broker holding a replica, the preferred leader first.
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    /// None while offline (every ISR member is down).
    pub leader: Option<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    pub isr_version: u64,
}

impl Replicas {
    /// A shard with one replica on `owner`.
    pub fn sole(owner: BrokerId, leader_epoch: LeaderEpoch) -> Replicas {
        Replicas {
            replicas: vec![owner],
            isr: vec![owner],
            leader: Some(owner),
            leader_epoch,
            isr_version: 0,
        }
    }
}

/// What a failover did: the shards whose leader changed (None: now offline) and the brokers
/// to tell.
#[derive(Debug, Default)]
pub struct Failover {
    pub elected: Vec<(ShardId, Option<BrokerId>)>,
    pub isr_shrunk: usize,
    pub pushes: Pushes,
}

impl State {
    /// Whether broker `id` is up (a leaving broker still serves, and leads, until drained).
    pub(super) fn up(&self, id: BrokerId) -> bool {
        self.members
            .get(&id)
            .is_some_and(|m| m.status == BrokerStatus::Up)
    }

    /// The replication of `shard` (a shard from before replication: its owner alone).
    pub fn replicas_of(&self, shard: &ShardId) -> Option<Replicas> {
        self.replicas.get(shard).cloned().or_else(|| {
            self.owners
                .get(shard)
                .map(|owner| Replicas::sole(*owner, 0))
        })
    }

    /// The replica set brokers are told, with the leader's address.
    pub(crate) fn replica_set(&self, shard: &ShardId) -> Option<ReplicaSet> {
        let r = self.replicas_of(shard)?;
        let leader = r.leader.and_then(|id| {
            Some(BrokerAddr {
                id,
                addr: self.members.get(&id)?.addr.clone(),
            })
        });
        let min_insync = self.topics.get(&shard.topic).map_or(1, |t| t.min_insync);
        Some(ReplicaSet {
            leader,
            leader_epoch: r.leader_epoch,
            replicas: r.replicas,
            isr: r.isr,
            isr_version: r.isr_version,
            min_insync,
        })
    }

    /// Sets `shard`'s replication (and its owner, the leader or, while offline, the last one).
    pub(crate) fn put_replicas(&mut self, shard: &ShardId, r: Replicas) {
        if let Some(l) = r.leader {
            self.owners.insert(shard.clone(), l);
        }
        self.replicas.insert(shard.clone(), r);
    }

    /// Broker `failed` is down, or restarted: it leaves every ISR it shares with another member
    /// and every shard it led gets a new leader from the ISR (itself again, at a new epoch, only
    /// when it restarted and is the last in-sync replica), or goes offline. Offline shards whose
    /// ISR has a broker that is up get it as leader (`failed` None: only that). Persisted before
    /// it is applied.
    pub fn fail_over(
        &mut self,
        failed: Option<BrokerId>,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Failover, ErrorKind> {
        let id = failed.unwrap_or(BrokerId::MAX);
        let mut changed: Vec<(ShardId, Replicas)> = Vec::new();
        let mut out = Failover::default();
        // Whether any shard's leader is another broker now (clients must re-route): only then
        // does the routing epoch move.
        let mut rerouted = false;
        let shards: Vec<ShardId> = self.owners.keys().cloned().collect();
        for shard in shards {
            let Some(mut r) = self.replicas_of(&shard) else {
                continue;
            };
            let before = r.clone();
            if r.isr.contains(&id) && r.isr.len() > 1 {
                r.isr.retain(|b| *b != id);
                r.isr_version += 1;
                out.isr_shrunk += 1;
            }
            let leader_gone = r.leader == Some(id) || r.leader.is_some_and(|l| !self.up(l));
            if leader_gone || r.leader.is_none() {
                let eligible = |b: &BrokerId| r.isr.contains(b) && self.up(*b);
                let next = r
                    .replicas
                    .iter()
                    .copied()
                    .find(|b| *b != id && eligible(b))
                    .or_else(|| r.replicas.iter().copied().find(eligible));
                if next != r.leader || leader_gone {
                    // Offline (no leader) and back on the same broker keeps the routes.
                    rerouted |= next.is_some() && next != self.owners.get(&shard).copied();
                    r.leader = next;
                    r.leader_epoch += 1;
                    out.elected.push((shard.clone(), next));
                }
            }
            if r != before {
                changed.push((shard, r));
            }
        }
        if changed.is_empty() {
            return Ok(out);
        }
        out.pushes = self.put_replica_sets(self.epoch + u64::from(rerouted), changed, persist)?;
        Ok(out)
    }

    /// Persists and applies new replica sets (with the routing epoch `epoch`); returns what to
    /// push to their brokers.
    pub(super) fn put_replica_sets(
        &mut self,
        epoch: Epoch,
        changed: Vec<(ShardId, Replicas)>,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Pushes, ErrorKind> {
        let mut ops = vec![Op::Epoch(epoch)];
        ops.extend(changed.iter().map(|(shard, r)| Op::PutReplicas {
            shard: shard.clone(),
            replicas: r.clone(),
        }));
        persist(&ops)?;
        self.epoch = epoch;
        let mut touched = Vec::new();
        for (shard, r) in changed {
            touched.extend(r.replicas.iter().copied());
            self.put_replicas(&shard, r);
        }
        Ok(self.pushes_for(touched))
    }

    /// The replication of a shard that must exist.
    pub(super) fn known_replicas(&self, shard: &ShardId) -> Result<Replicas, ErrorKind> {
        self.replicas_of(shard)
            .ok_or_else(|| ErrorKind::UnknownShard {
                shard: shard.to_string(),
                reason: "no such shard".into(),
            })
    }

    /// A leader's proposal to change `shard`'s ISR, naming the process (`incarnations`) of each
    /// broker it adds. Returns the new ISR version.
    #[allow(clippy::too_many_arguments)]
    pub fn alter_isr(
        &mut self,
        from: BrokerId,
        shard: &ShardId,
        leader_epoch: LeaderEpoch,
        isr_version: u64,
        isr: &[BrokerId],
        incarnations: &[(BrokerId, u64)],
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<u64, ErrorKind> {
        let mut r = self.known_replicas(shard)?;
        let refuse = |reason: String| ErrorKind::BadRequest {
            reason: format!("ISR change of {shard} from broker {from} refused: {reason}"),
        };
        if r.leader != Some(from) || r.leader_epoch != leader_epoch {
            return Err(ErrorKind::LeaderEpochMismatch {
                shard: shard.to_string(),
                ours: r.leader_epoch,
                theirs: leader_epoch,
            });
        }
        if r.isr_version != isr_version {
            return Err(refuse(format!(
                "it changes ISR version {isr_version}, the current one is {}",
                r.isr_version
            )));
        }
        if !isr.contains(&from) {
            return Err(refuse("the leader must stay in sync with itself".into()));
        }
        if let Some(b) = isr.iter().find(|b| !r.replicas.contains(b)) {
            return Err(refuse(format!("broker {b} holds no replica")));
        }
        for b in isr.iter().filter(|b| !r.isr.contains(b)) {
            if !self.up(*b) {
                return Err(refuse(format!("broker {b} is down")));
            }
            // The leader counted some process of `b` caught up; a broker that restarted since
            // may hold less (a replaced disk, writes it had not synced).
            let heard = incarnations.iter().find(|(id, _)| id == b).map(|(_, i)| *i);
            let runs = self.members.get(b).and_then(|m| m.incarnation);
            if !shardq_protocol::may_join(true, heard, runs) {
                return Err(refuse(format!(
                    "broker {b} runs another process than the one the leader heard from \
                     (it restarted since, or this router has not heard from it yet)"
                )));
            }
        }
        let mut next: Vec<BrokerId> = r
            .replicas
            .iter()
            .copied()
            .filter(|b| isr.contains(b))
            .collect();
        next.dedup();
        r.isr = next;
        r.isr_version += 1;
        persist(&[Op::PutReplicas {
            shard: shard.clone(),
            replicas: r.clone(),
        }])?;
        let version = r.isr_version;
        self.put_replicas(shard, r);
        Ok(version)
    }

    /// After refusing a proposal from `from`: when it is the shard's leader at this epoch, the
    /// ISR version is bumped (if the proposal was made at the current one, so no copy of it can
    /// be applied later) and the leader is sent the shard's state, which ends its proposal.
    pub fn isr_refused(
        &mut self,
        from: BrokerId,
        shard: &ShardId,
        leader_epoch: LeaderEpoch,
        base_version: u64,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Pushes, ErrorKind> {
        let Some(mut r) = self.replicas_of(shard) else {
            return Ok(Vec::new());
        };
        if r.leader != Some(from) || r.leader_epoch != leader_epoch {
            return Ok(Vec::new());
        }
        if r.isr_version == base_version {
            r.isr_version += 1;
            persist(&[Op::PutReplicas {
                shard: shard.clone(),
                replicas: r.clone(),
            }])?;
            self.put_replicas(shard, r);
        }
        Ok(self.pushes_for([from]))
    }

    /// An explicit election (`shardq shard elect`): the first up ISR member in replica order,
    /// or with `unclean` the up replica that reported the longest log (records the old ISR held
    /// beyond it may be lost: `may_lose` says how many by the last reports).
    pub fn elect(
        &mut self,
        shard: &ShardId,
        unclean: bool,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(Election, Pushes), ErrorKind> {
        let mut r = self.known_replicas(shard)?;
        let end_on = |b: BrokerId| -> Option<u64> {
            self.members
                .get(&b)?
                .report
                .shards
                .iter()
                .find(|s| &s.shard == shard)
                .map(|s| s.end_offset)
        };
        let clean = r
            .replicas
            .iter()
            .copied()
            .find(|b| r.isr.contains(b) && self.up(*b));
        let (leader, is_unclean) = match (clean, unclean) {
            (Some(b), _) => (b, false),
            (None, false) => {
                return Err(ErrorKind::Unavailable {
                    what: shard.to_string(),
                    reason: format!(
                        "no in-sync replica is up (ISR {:?}); wait for one to return, or run \
                         `shardq shard elect {shard} --unclean` to elect an out-of-sync replica \
                         (records only the ISR held are then lost)",
                        r.isr
                    ),
                })
            }
            (None, true) => {
                let b = r
                    .replicas
                    .iter()
                    .copied()
                    .filter(|b| self.up(*b))
                    .max_by_key(|b| end_on(*b).unwrap_or(0))
                    .ok_or_else(|| ErrorKind::Unavailable {
                        what: shard.to_string(),
                        reason: "none of its replicas is up".into(),
                    })?;
                (b, true)
            }
        };
        let may_lose = if is_unclean {
            let best_isr = r.isr.iter().filter_map(|b| end_on(*b)).max();
            best_isr.map(|e| e.saturating_sub(end_on(leader).unwrap_or(0)))
        } else {
            None
        };
        r.leader = Some(leader);
        r.leader_epoch += 1;
        if is_unclean {
            r.isr = vec![leader];
            r.isr_version += 1;
        }
        let election = Election {
            shard: shard.clone(),
            leader,
            leader_epoch: r.leader_epoch,
            unclean: is_unclean,
            may_lose,
        };
        let pushes = self.put_replica_sets(self.epoch + 1, vec![(shard.clone(), r)], persist)?;
        Ok((election, pushes))
    }
}
