//! Membership and liveness: brokers register and heartbeat, go Down when silent, and leave the
//! cluster by removal (forced or not), a graceful drain, or being reaped once drained.

use shardq_protocol::{
    BrokerAddr, BrokerId, BrokerReport, BrokerStatus, Epoch, ErrorKind, ShardAssignment,
};
use tokio::time::Instant;

use super::{Leaving, Member, Removed, Replicas, State, MAX_WEIGHT};
use crate::store::Op;

impl State {
    /// Adds or updates a member and marks it Up. Returns what to persist (nothing when only its
    /// liveness changed).
    pub fn register(
        &mut self,
        id: BrokerId,
        addr: String,
        weight: u32,
        now: Instant,
    ) -> Result<Vec<Op>, ErrorKind> {
        if self.removed.contains(&id) {
            return Err(ErrorKind::RemovedBroker { id });
        }
        if addr.trim().is_empty() {
            return Err(ErrorKind::BadRequest {
                reason: format!("broker {id} registered with an empty address"),
            });
        }
        if weight > MAX_WEIGHT {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} registered with weight {weight}; at most {MAX_WEIGHT} allowed"
                ),
            });
        }
        let member = self.members.entry(id).or_insert_with(|| Member {
            addr: String::new(),
            weight,
            status: BrokerStatus::Up,
            leaving: false,
            last_seen: now,
            report: BrokerReport::default(),
            confirmed: true,
            incarnation: None,
        });
        let changed = member.addr != addr || member.weight != weight;
        member.addr = addr;
        member.weight = weight;
        member.last_seen = now;
        member.confirmed = true;
        // A Leaving broker that restarts keeps draining (`leaving` is separate from liveness).
        member.status = BrokerStatus::Up;
        Ok(if changed {
            vec![Op::PutMember(member.record(id))]
        } else {
            Vec::new()
        })
    }

    /// Records a heartbeat and answers with the broker's complete assignment.
    pub fn heartbeat(
        &mut self,
        id: BrokerId,
        report: BrokerReport,
        now: Instant,
    ) -> Result<(Epoch, Vec<ShardAssignment>, bool), ErrorKind> {
        if self.removed.contains(&id) {
            return Err(ErrorKind::RemovedBroker { id });
        }
        let member = self
            .members
            .get_mut(&id)
            .ok_or(ErrorKind::UnknownBroker { id })?;
        member.last_seen = now;
        member.confirmed = true;
        member.report = report;
        let revived = member.status == BrokerStatus::Down;
        if revived {
            member.status = BrokerStatus::Up;
        }
        Ok((self.epoch, self.assignments_of(id), revived))
    }

    /// Members not Down whose last heartbeat is older than `after`: (id, address, last heartbeat),
    /// for the liveness task to probe.
    pub fn silent(
        &self,
        now: Instant,
        after: std::time::Duration,
    ) -> Vec<(BrokerId, String, Instant)> {
        self.members
            .iter()
            .filter(|(_, m)| {
                m.status != BrokerStatus::Down
                    && m.confirmed
                    && now.saturating_duration_since(m.last_seen) > after
            })
            .map(|(id, m)| (*id, m.addr.clone(), m.last_seen))
            .collect()
    }

    /// Marks broker `id` Down if it has not been heard from since `last_seen` (nor gone Down
    /// already): its process is known to be gone. Returns whether it changed.
    pub fn down_if_silent_since(&mut self, id: BrokerId, last_seen: Instant) -> bool {
        match self.members.get_mut(&id) {
            Some(m) if m.status != BrokerStatus::Down && m.last_seen == last_seen => {
                m.status = BrokerStatus::Down;
                true
            }
            _ => false,
        }
    }

    /// Marks members without a heartbeat for longer than `timeout` Down; returns their ids.
    pub fn expire(&mut self, now: Instant, timeout: std::time::Duration) -> Vec<BrokerId> {
        let mut expired = Vec::new();
        for (id, m) in self.members.iter_mut() {
            if m.status != BrokerStatus::Down
                && now.saturating_duration_since(m.last_seen) > timeout
            {
                m.status = BrokerStatus::Down;
                expired.push(*id);
            }
        }
        expired
    }

    /// Removes a broker. With `force` its shards are given to the ring's owners among the other
    /// Up brokers as empty shards (its data is dropped); without `force` only a broker that owns
    /// nothing can go (a graceful drain is [`State::leave`]).
    pub fn remove_broker(
        &mut self,
        id: BrokerId,
        force: bool,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Removed, ErrorKind> {
        let member = self
            .members
            .get(&id)
            .ok_or(ErrorKind::UnknownBroker { id })?;
        if force && member.status != BrokerStatus::Down {
            // --force gives up the data of a broker that is gone; a live broker can drain it
            // to the others instead, so discarding it would lose records for nothing.
            return Err(ErrorKind::BrokerUp {
                id,
                reason: format!(
                    "`--force` is only for a broker that is down, as it DISCARDS the data of the \
                     shards the broker holds. Run `shardq broker remove {id}` without --force to \
                     drain its shards to the other brokers (it leaves once they moved)"
                ),
            });
        }
        let shards = self.held_by(id);
        if shards.is_empty() && !force && self.in_moves(id) {
            // It may be the destination of a move about to flip: removing it now would hand the
            // shard to a non-member and drop the source's copy.
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} takes part in a shard move in flight; remove it once the move \
                     has ended (see `shardq status`), or use --force (the move is rolled back)"
                ),
            });
        }
        if shards.is_empty() {
            let ops = vec![Op::DeleteMember(id)];
            persist(&ops)?;
            self.retire(id);
            return Ok(Removed {
                shards,
                pushes: Vec::new(),
                dropped_from: None,
            });
        }
        if !force {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} owns {} shard(s); remove it without --force to drain them, \
                     or use --force to drop the broker and its shards' data (they are \
                     re-created empty on other brokers)",
                    shards.len()
                ),
            });
        }
        let dropped_from = Some(BrokerAddr {
            id,
            addr: member.addr.clone(),
        });
        let placement = self.up_ring(Some(id))?.place(&self.all_keys(&[]));
        let mut moved = Vec::with_capacity(shards.len());
        for shard in &shards {
            let mut r = self
                .replicas_of(shard)
                .unwrap_or_else(|| Replicas::sole(id, 0));
            r.replicas.retain(|b| *b != id);
            r.isr.retain(|b| *b != id);
            if r.replicas.is_empty() {
                // Its only copy: re-created empty where the ring says.
                let owner = placement
                    .get(&shard.key())
                    .copied()
                    .ok_or_else(|| ErrorKind::Unavailable {
                        what: format!("forced removal of broker {id}"),
                        reason: format!(
                            "no other broker is up to take its {} shard(s); start or restart a broker first",
                            shards.len()
                        ),
                    })?;
                r = Replicas::sole(owner, r.leader_epoch + 1);
            } else {
                if r.isr.is_empty() {
                    // The removed broker was the last in sync: the others may lack records.
                    r.isr = r.replicas.clone();
                }
                if r.leader == Some(id) || r.leader.is_none() {
                    r.leader = r.replicas.iter().copied().find(|b| {
                        r.isr.contains(b)
                            && self
                                .members
                                .get(b)
                                .is_some_and(|m| m.status == BrokerStatus::Up)
                    });
                    r.leader_epoch += 1;
                }
                r.isr_version += 1;
            }
            moved.push((shard.clone(), r));
        }
        let epoch = self.epoch + 1;
        let mut ops = vec![Op::Epoch(epoch), Op::DeleteMember(id)];
        for (shard, r) in &moved {
            ops.push(Op::PutOwner {
                shard: shard.clone(),
                owner: r.leader.unwrap_or(r.replicas[0]),
            });
            ops.push(Op::PutReplicas {
                shard: shard.clone(),
                replicas: r.clone(),
            });
        }
        persist(&ops)?;
        self.epoch = epoch;
        self.retire(id);
        let mut touched = Vec::new();
        for (shard, r) in moved {
            touched.extend(r.replicas.iter().copied());
            self.owners
                .insert(shard.clone(), r.leader.unwrap_or(r.replicas[0]));
            self.put_replicas(&shard, r);
        }
        let pushes = self.pushes_for(touched);
        Ok(Removed {
            shards,
            pushes,
            dropped_from,
        })
    }

    /// Forgets a member and tombstones its id (what [`Op::DeleteMember`] persists).
    fn retire(&mut self, id: BrokerId) {
        self.members.remove(&id);
        self.identities.unbind(id);
        self.removed.insert(id);
    }

    /// Graceful leave: marks the broker Leaving (persisted) so the rebalancer drains it, or
    /// removes it at once when it owns nothing and takes part in no move. Refused, with nothing
    /// recorded, when nobody else is up to take its shards, or when the broker is down (its
    /// shards cannot drain until it returns: `BrokerDown`). A broker already leaving that went
    /// down keeps its recorded leave: asking again answers as before.
    pub fn leave(
        &mut self,
        id: BrokerId,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Leaving, ErrorKind> {
        let member = self
            .members
            .get(&id)
            .ok_or(ErrorKind::UnknownBroker { id })?;
        let shards = self.held_by(id);
        if shards.is_empty() && !self.in_moves(id) {
            persist(&[Op::DeleteMember(id)])?;
            self.retire(id);
            return Ok(Leaving {
                shards,
                removed: true,
            });
        }
        if member.status == BrokerStatus::Down && !member.leaving {
            return Err(ErrorKind::BrokerDown {
                id,
                shards: u32::try_from(shards.len()).unwrap_or(u32::MAX),
            });
        }
        let others_up = self
            .members
            .iter()
            .any(|(o, m)| *o != id && m.status == BrokerStatus::Up && !m.leaving);
        if !shards.is_empty() && !others_up {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} owns {} shard(s) and no other broker is up to take them: \
                     nowhere to drain to. Start another broker first, or use --force to drop \
                     the broker and its shards' data",
                    shards.len()
                ),
            });
        }
        if !member.leaving {
            let mut record = member.record(id);
            record.leaving = true;
            persist(&[Op::PutMember(record)])?;
            if let Some(m) = self.members.get_mut(&id) {
                m.leaving = true;
            }
        }
        Ok(Leaving {
            shards,
            removed: false,
        })
    }

    /// Leaving brokers that are drained (no shard, no move, no copy left to drop): removed
    /// from the membership. A pending drop keeps the broker a member until it is sent: once
    /// removed, the drop would be moot and the broker's copy would stay on its disk.
    pub fn reap_leavers(
        &mut self,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Vec<BrokerId>, ErrorKind> {
        let done: Vec<BrokerId> = self
            .members
            .iter()
            .filter(|(id, m)| {
                m.leaving
                    && self.held_by(**id).is_empty()
                    && !self.in_moves(**id)
                    && !self.drops.keys().any(|(b, _)| b == *id)
            })
            .map(|(id, _)| *id)
            .collect();
        if done.is_empty() {
            return Ok(done);
        }
        let ops: Vec<Op> = done.iter().map(|id| Op::DeleteMember(*id)).collect();
        persist(&ops)?;
        for id in &done {
            self.retire(*id);
        }
        Ok(done)
    }
}
