//! Moves of replicated shards (a topic with more than one replica): Kafka's reassignment. A move
//! of one replica from broker `from` to broker `to`:
//!
//! 1. `to` joins the replica set as a follower (persisted with the move, phase Copying); it
//!    copies the log from the leader like any follower while everyone keeps serving.
//! 2. Once the leader has taken `to` into the ISR, one persisted step finishes the move: `to`
//!    takes `from`'s place in the replica list (which takes the ring's order), `from` leaves the
//!    ISR, and if `from` led or the ring wants `to` to lead, leadership moves at a new leader
//!    epoch (the only write pause: clients follow the new route). `from`'s copy is dropped
//!    afterwards (a pending drop, as for unreplicated moves).
//! 3. A move that cannot finish (`to` down or making no progress for the move timeout) rolls
//!    back: `to` leaves the replica set and its partial copy is dropped.
//!
//! Every step is one persisted change, so a router restart resumes each move from where it is.

use std::collections::{BTreeMap, HashMap};

use shardq_protocol::{
    BrokerId, BrokerStatus, Epoch, ErrorKind, MovePhase, ShardAssignment, ShardId, ShardReport,
};

use tokio::time::Instant;

use super::{Pushes, Replicas, State};
use crate::store::{MoveRecord, Op, PendingDrop};

/// What finishing a replicated move did.
#[derive(Debug)]
pub struct Finished {
    /// The source's copy, to drop once the move is recorded as done.
    pub drop: PendingDrop,
    pub pushes: Pushes,
    /// The leader moved with it (clients must re-route: the write pause is measured).
    pub leader_moved: bool,
    pub epoch: Epoch,
}

impl State {
    /// Whether `shard` is moved replica by replica (its topic has more than one replica).
    pub fn replicated(&self, shard: &ShardId) -> bool {
        self.topics
            .get(&shard.topic)
            .is_some_and(|t| t.replication_factor > 1)
    }

    /// The replicated moves to start now: for each replicated shard whose replica set differs
    /// from the ring's (`place_replicas` over the members that are not leaving), one replica
    /// from a broker that should not hold it to one that should, up to `room` moves.
    pub fn plan_replica_moves(
        &mut self,
        room: usize,
        now: Instant,
        now_ms: u64,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(Vec<MoveRecord>, Pushes), ErrorKind> {
        if room == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        // Desired sets per replication factor in use.
        let mut factors: Vec<usize> = self
            .topics
            .values()
            .map(|t| t.replication_factor as usize)
            .filter(|r| *r > 1)
            .collect();
        factors.sort_unstable();
        factors.dedup();
        let mut desired: HashMap<usize, shardq_ring::ReplicaAssignment> = HashMap::new();
        for r in factors {
            desired.insert(r, self.desired_replicas(&[], r)?);
        }
        let usable = |s: &State, id: BrokerId| {
            s.members
                .get(&id)
                .is_some_and(|m| m.status == BrokerStatus::Up && m.confirmed && !m.leaving)
        };
        let mut planned: Vec<(MoveRecord, Replicas)> = Vec::new();
        // Sets resized without a move: (shard, new set, the broker that left it).
        let mut resized: Vec<(ShardId, Replicas, Option<BrokerId>)> = Vec::new();
        let mut id = self.next_move_id;
        let shards: Vec<ShardId> = self.owners.keys().cloned().collect();
        for shard in shards {
            if planned.len() >= room {
                break;
            }
            let Some(rf) = self
                .topics
                .get(&shard.topic)
                .map(|t| t.replication_factor as usize)
            else {
                continue;
            };
            let Some(want) = desired.get(&rf).and_then(|d| d.get(&shard.key())) else {
                continue;
            };
            let Some(r) = self.replicas_of(&shard) else {
                continue;
            };
            let blocked = self.moves.values().any(|m| m.shard == shard)
                || self.retry_after.get(&shard).is_some_and(|t| *t > now)
                // Copies from the leader: there must be one, up.
                || r.leader.is_none_or(|l| !self.up(l));
            if blocked {
                continue;
            }
            if same_members(&r.replicas, want) && r.replicas.first() != want.first() {
                // The right brokers, another preferred leader (the set was resized, or a move
                // replaced its first replica): take the ring's order, so the ring's leader
                // leads once it is in sync ([`State::prefer_leaders`]) and leaders stay
                // balanced. Nothing is copied.
                let mut next = r.clone();
                next.replicas = want.to_vec();
                next.isr_version += 1;
                resized.push((shard.clone(), next, None));
                continue;
            }
            let from = r.replicas.iter().copied().find(|b| !want.contains(b));
            let to = want
                .iter()
                .copied()
                .find(|b| !r.replicas.contains(b) && usable(self, *b))
                .filter(|b| !self.drops.contains_key(&(*b, shard.clone())));
            let (from, to) = match (from, to) {
                (Some(from), Some(to)) => (from, to),
                // Fewer brokers than replicas: the set shrinks, or grows back, in one step.
                (Some(from), None) if want.len() < r.replicas.len() => {
                    resized.extend(shrunk(self, &r, from).map(|n| (shard.clone(), n, Some(from))));
                    continue;
                }
                (None, Some(to)) if r.replicas.len() < rf => {
                    let mut next = r.clone();
                    next.replicas.push(to);
                    next.isr_version += 1;
                    resized.push((shard.clone(), next, None));
                    continue;
                }
                _ => continue,
            };
            let mut next = r.clone();
            next.replicas.push(to);
            next.isr_version += 1;
            planned.push((
                MoveRecord::new(id, shard, from, to, MovePhase::Copying, now_ms),
                next,
            ));
            id += 1;
        }
        if planned.is_empty() && resized.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut ops = vec![Op::MoveSeq(id)];
        for (shard, r, left) in &resized {
            ops.push(Op::PutReplicas {
                shard: shard.clone(),
                replicas: r.clone(),
            });
            if let Some(b) = left {
                ops.push(Op::PutDrop(PendingDrop {
                    broker: *b,
                    shard: shard.clone(),
                    epoch: self.epoch,
                }));
            }
        }
        for (m, r) in &planned {
            ops.push(Op::PutMove(m.clone()));
            ops.push(Op::PutReplicas {
                shard: m.shard.clone(),
                replicas: r.clone(),
            });
        }
        persist(&ops)?;
        self.next_move_id = id;
        let mut touched = Vec::new();
        let mut out = Vec::new();
        let mut left_sets = Vec::new();
        for (shard, r, left) in resized {
            touched.extend(r.replicas.iter().copied().chain(left));
            if let Some(b) = left {
                self.drops.insert((b, shard.clone()), self.epoch);
                left_sets.push((b, shard.clone()));
            }
            self.put_replicas(&shard, r);
        }
        for (m, r) in planned {
            touched.extend(r.replicas.iter().copied());
            self.put_replicas(&m.shard, r);
            self.moves.insert(m.move_id, m.clone());
            out.push(m);
        }
        let mut pushes = self.pushes_for(touched);
        // A broker that left a set is told at once (it may have led it).
        for (b, shard) in left_sets {
            if let (Some(set), Some((_, list))) = (
                self.replica_set(&shard),
                pushes.iter_mut().find(|(a, _)| a.id == b),
            ) {
                list.push(ShardAssignment {
                    shard,
                    epoch: self.epoch,
                    replication: set,
                });
            }
        }
        Ok((out, pushes))
    }

    /// Whether replicated move `move_id`'s destination is in sync (the move can finish).
    pub fn replica_caught_up(&self, move_id: u64) -> Option<bool> {
        let m = self.moves.get(&move_id)?;
        Some(
            self.replicas_of(&m.shard)
                .is_some_and(|r| r.isr.contains(&m.to)),
        )
    }

    /// Switches replicated move `move_id` (its destination is in sync): the destination takes
    /// the source's place, leadership with it if the source led. The caller then records the
    /// move as done with the returned drop ([`State::finish`]); a crash in between leaves the
    /// move listed over a switched set, which the resumed driver finishes (switching again is
    /// a no-op).
    pub fn switch_replica_move(
        &mut self,
        move_id: u64,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Finished, ErrorKind> {
        let (m, mut r) = self.move_in_flight(move_id)?;
        let epoch = self.epoch;
        if !r.replicas.contains(&m.from) && r.replicas.contains(&m.to) {
            // Switched already (before a router restart).
            return Ok(Finished {
                drop: PendingDrop {
                    broker: m.from,
                    shard: m.shard.clone(),
                    epoch,
                },
                pushes: self.pushes_for(r.replicas.iter().copied().chain([m.from])),
                leader_moved: false,
                epoch,
            });
        }
        if !r.isr.contains(&m.to) {
            return Err(ErrorKind::Internal {
                reason: format!("move {move_id}: broker {} is not in sync yet", m.to),
            });
        }
        // `to` takes `from`'s place, and the set takes the ring's order where the ring wants
        // exactly these brokers (so a joining broker leads the shards the ring gives it).
        r.replicas.retain(|b| *b != m.to);
        match r.replicas.iter().position(|b| *b == m.from) {
            Some(i) => r.replicas[i] = m.to,
            None => r.replicas.push(m.to),
        }
        if let Some(want) = self
            .desired_order(&m.shard)
            .filter(|w| same_members(&r.replicas, w))
        {
            r.replicas = want;
        }
        r.isr.retain(|b| *b != m.from);
        r.isr_version += 1;
        // Leadership moves with this step (one write pause, measured) when the source led, or
        // when the destination is the preferred leader now; to the preferred replica if it is
        // in sync, else to the destination (which is).
        let preferred = r.replicas[0];
        let leader_moved = r.leader == Some(m.from)
            || r.leader.is_none()
            || (preferred == m.to && r.leader != Some(m.to));
        if leader_moved {
            r.leader = Some(if r.isr.contains(&preferred) && self.up(preferred) {
                preferred
            } else {
                m.to
            });
            r.leader_epoch += 1;
        }
        let epoch = self.epoch + u64::from(leader_moved);
        let drop = PendingDrop {
            broker: m.from,
            shard: m.shard.clone(),
            epoch,
        };
        let ops = [
            Op::Epoch(epoch),
            Op::PutReplicas {
                shard: m.shard.clone(),
                replicas: r.clone(),
            },
        ];
        persist(&ops)?;
        self.epoch = epoch;
        let touched: Vec<BrokerId> = r.replicas.iter().copied().chain([m.from]).collect();
        self.put_replicas(&m.shard, r);
        let mut pushes = self.pushes_for(touched);
        // The source is told explicitly that it holds no replica now (its complete assignment
        // no longer lists the shard, which it would only act on at its next heartbeat): an old
        // leader must stop at once.
        if let (Some(set), Some((_, list))) = (
            self.replica_set(&m.shard),
            pushes.iter_mut().find(|(b, _)| b.id == m.from),
        ) {
            list.push(ShardAssignment {
                shard: m.shard.clone(),
                epoch,
                replication: set,
            });
        }
        Ok(Finished {
            drop,
            pushes,
            leader_moved,
            epoch,
        })
    }

    /// Rolls replicated move `move_id` back: the destination leaves the replica set (its copy
    /// is dropped). Returns the pushes and the pending drop (None when the destination leads
    /// now: nothing is undone, and its copy is live).
    pub fn roll_back_replica_move(
        &mut self,
        move_id: u64,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(Pushes, Option<PendingDrop>), ErrorKind> {
        let (m, mut r) = self.move_in_flight(move_id)?;
        let drop = PendingDrop {
            broker: m.to,
            shard: m.shard.clone(),
            epoch: self.epoch,
        };
        if r.leader == Some(m.to) {
            return Ok((Vec::new(), None));
        }
        if !r.replicas.contains(&m.to) {
            return Ok((Vec::new(), Some(drop)));
        }
        r.replicas.retain(|b| *b != m.to);
        r.isr.retain(|b| *b != m.to);
        r.isr_version += 1;
        persist(&[Op::PutReplicas {
            shard: m.shard.clone(),
            replicas: r.clone(),
        }])?;
        let touched: Vec<BrokerId> = r.replicas.iter().copied().chain([m.to]).collect();
        self.put_replicas(&m.shard, r);
        Ok((self.pushes_for(touched), Some(drop)))
    }

    /// Gives leadership back to preferred leaders (the first replica, which the ring balanced)
    /// where another replica leads since a failover: at most `max` shards, only where every
    /// replica is in sync (so the preferred one has every committed record and is not flapping)
    /// and no move of the shard is in flight. Each is an election at a new leader epoch.
    pub fn prefer_leaders(
        &mut self,
        max: usize,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(Vec<(ShardId, BrokerId)>, Pushes), ErrorKind> {
        let mut changed = Vec::new();
        for (shard, _) in self.owners.iter() {
            if changed.len() >= max {
                break;
            }
            let Some(r) = self.replicas_of(shard) else {
                continue;
            };
            let Some(&preferred) = r.replicas.first() else {
                continue;
            };
            let ready = r.leader.is_some()
                && r.leader != Some(preferred)
                && r.isr.len() == r.replicas.len()
                && self.up(preferred)
                && self
                    .members
                    .get(&preferred)
                    .is_some_and(|m| !m.leaving && m.confirmed)
                && !self.moves.values().any(|m| &m.shard == shard);
            if ready {
                let mut next = r.clone();
                next.leader = Some(preferred);
                next.leader_epoch += 1;
                changed.push((shard.clone(), next));
            }
        }
        if changed.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let out = changed
            .iter()
            .map(|(shard, r)| (shard.clone(), r.replicas[0]))
            .collect();
        let pushes = self.put_replica_sets(self.epoch + 1, changed, persist)?;
        Ok((out, pushes))
    }

    /// The ring's replicas for `shard` now (leader first), None if its topic is gone or the
    /// placement cannot be computed.
    fn desired_order(&self, shard: &ShardId) -> Option<Vec<BrokerId>> {
        let rf = self.topics.get(&shard.topic)?.replication_factor as usize;
        self.desired_replicas(&[], rf)
            .ok()?
            .get(&shard.key())
            .map(|w| w.to_vec())
    }

    /// A replicated move in flight and its shard's replication.
    fn move_in_flight(&self, move_id: u64) -> Result<(MoveRecord, Replicas), ErrorKind> {
        let m = self
            .moves
            .get(&move_id)
            .cloned()
            .ok_or_else(|| ErrorKind::Internal {
                reason: format!("move {move_id} is not in flight"),
            })?;
        let r = self.known_replicas(&m.shard)?;
        Ok((m, r))
    }

    /// What replicated move `move_id`'s destination copied, once it is in sync: the shard's
    /// records and bytes as its leader last reported them (the destination holds all of them).
    pub fn replica_copied(&self, move_id: u64) -> Option<(u64, u64)> {
        let report = self.leader_report(&self.moves.get(&move_id)?.shard)?;
        Some((
            report.end_offset.saturating_sub(report.start_offset),
            report.bytes,
        ))
    }

    /// Per replicated move in flight: the destination's lag behind the leader, from the
    /// leader's last report.
    pub fn replica_lags(&self) -> BTreeMap<u64, (u64, Option<u64>)> {
        self.moves
            .values()
            .filter(|m| self.replicated(&m.shard))
            .filter_map(|m| {
                let report = self.leader_report(&m.shard)?;
                let f = report.followers.iter().find(|f| f.broker == m.to)?;
                Some((m.move_id, (f.lag, f.end)))
            })
            .collect()
    }

    /// What `shard`'s leader said of it in its last heartbeat.
    fn leader_report(&self, shard: &ShardId) -> Option<&ShardReport> {
        let leader = self.replicas_of(shard)?.leader?;
        self.members
            .get(&leader)?
            .report
            .shards
            .iter()
            .find(|s| &s.shard == shard)
    }
}

/// Whether `a` and `b` hold the same brokers, in any order.
fn same_members(a: &[BrokerId], b: &[BrokerId]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// `r` without broker `from` (its set shrinks: fewer brokers are there than replicas), with
/// another in-sync replica leading if `from` led; None where that would leave no in-sync
/// replica or no leader.
fn shrunk(s: &State, r: &Replicas, from: BrokerId) -> Option<Replicas> {
    let mut next = r.clone();
    next.replicas.retain(|b| *b != from);
    next.isr.retain(|b| *b != from);
    if next.isr.is_empty() || next.replicas.is_empty() {
        return None;
    }
    next.isr_version += 1;
    if next.leader == Some(from) {
        next.leader = Some(
            next.replicas
                .iter()
                .copied()
                .find(|b| next.isr.contains(b) && s.up(*b))?,
        );
        next.leader_epoch += 1;
    }
    Some(next)
}
