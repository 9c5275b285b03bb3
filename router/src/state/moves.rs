//! The bookkeeping of live shard moves: which moves start, their phases and progress, the owner
//! flip, the end of a move and its history, pending drops of old copies, and stale fences.

use std::collections::HashMap;

use shardq_protocol::{
    BrokerAddr, BrokerId, BrokerStatus, Epoch, ErrorKind, MovePhase, MoveProgress, ShardId,
    ShardState,
};
use shardq_ring::{diff, Assignment};
use tokio::time::Instant;

use super::{DueDrop, Member, Replicas, State, MOVE_HISTORY};
use crate::store::{MoveRecord, Op, PendingDrop};

impl State {
    /// The moves to start now: diff(actual, desired) restricted to shards without a move in
    /// flight whose source is live and destination Up, up to `max` in flight. They are recorded
    /// (phase Pending, ids from the persisted counter) before anyone is told.
    pub fn plan_moves(
        &mut self,
        max: usize,
        now: Instant,
        now_ms: u64,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Vec<MoveRecord>, ErrorKind> {
        let room = max.max(1).saturating_sub(self.moves.len());
        if room == 0 || self.owners.is_empty() {
            return Ok(Vec::new());
        }
        let desired = self.desired(&[])?;
        let actual: Assignment = self.owners.iter().map(|(s, o)| (s.key(), *o)).collect();
        let by_key: HashMap<String, &ShardId> = self.owners.keys().map(|s| (s.key(), s)).collect();
        let is = |id: BrokerId, f: fn(&Member) -> bool| self.members.get(&id).is_some_and(f);
        let mut planned = Vec::new();
        let mut id = self.next_move_id;
        for mv in diff(&actual, &desired) {
            if planned.len() >= room {
                break;
            }
            let (Some(from), Some(to), Some(shard)) = (mv.from, mv.to, by_key.get(&mv.shard))
            else {
                continue;
            };
            let shard = (*shard).clone();
            // Replicated shards move replica by replica (`State::plan_replica_moves`).
            let blocked = self.replicated(&shard)
                || self.moves.values().any(|m| m.shard == shard)
                || self.retry_after.get(&shard).is_some_and(|t| *t > now)
                // An old copy there still waits for its drop: importing over it would resume
                // from data that is about to be deleted.
                || self.drops.contains_key(&(to, shard.clone()))
                || self.unfencing.contains(&shard)
                || !is(from, |m| m.status == BrokerStatus::Up && m.confirmed)
                || !is(to, |m| m.status == BrokerStatus::Up && m.confirmed && !m.leaving);
            if blocked {
                continue;
            }
            planned.push(MoveRecord::new(
                id,
                shard,
                from,
                to,
                MovePhase::Pending,
                now_ms,
            ));
            id += 1;
        }
        if planned.is_empty() {
            return Ok(planned);
        }
        let mut ops = vec![Op::MoveSeq(id)];
        ops.extend(planned.iter().cloned().map(Op::PutMove));
        persist(&ops)?;
        self.next_move_id = id;
        for m in &planned {
            self.moves.insert(m.move_id, m.clone());
        }
        Ok(planned)
    }

    /// Records a phase reached by an in-flight move (persisted: resumption depends on it).
    pub fn set_phase(
        &mut self,
        move_id: u64,
        phase: MovePhase,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(), ErrorKind> {
        let Some(m) = self.moves.get(&move_id) else {
            return Ok(());
        };
        if m.phase == phase {
            return Ok(());
        }
        let mut record = m.clone();
        record.phase = phase;
        persist(&[Op::PutMove(record.clone())])?;
        self.moves.insert(move_id, record);
        Ok(())
    }

    /// Copies the destination's progress counters into the record (memory only).
    pub fn progress(&mut self, p: &MoveProgress) {
        if let Some(m) = self.moves.get_mut(&p.move_id) {
            m.records_copied = p.records_copied;
            m.bytes_copied = p.bytes_copied;
            m.lag = p.lag;
            if p.write_pause_ms.is_some() {
                m.write_pause_ms = p.write_pause_ms;
            }
        }
    }

    /// The owner flip: the shard belongs to the destination from the next epoch on. Refused if
    /// the source no longer owns the shard (e.g. it was force-removed meanwhile), or if the
    /// destination is no longer a member (removed meanwhile: the driver then rolls back).
    pub fn flip(
        &mut self,
        move_id: u64,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Epoch, ErrorKind> {
        let m = self
            .moves
            .get(&move_id)
            .ok_or_else(|| ErrorKind::Internal {
                reason: format!("move {move_id} is not in flight"),
            })?;
        if m.phase == MovePhase::Activating {
            return Ok(self.epoch);
        }
        if self.owners.get(&m.shard) != Some(&m.from) {
            return Err(ErrorKind::Internal {
                reason: format!(
                    "move {move_id}: {} is no longer owned by broker {}",
                    m.shard, m.from
                ),
            });
        }
        if !self.members.contains_key(&m.to) {
            return Err(ErrorKind::Internal {
                reason: format!(
                    "move {move_id}: destination broker {} is no longer a member",
                    m.to
                ),
            });
        }
        let epoch = self.epoch + 1;
        let mut record = m.clone();
        record.phase = MovePhase::Activating;
        // A new leader: a new leader epoch, so the entries it appends are told apart from the
        // source's.
        let leader_epoch = self
            .replicas_of(&record.shard)
            .map_or(0, |r| r.leader_epoch)
            + 1;
        let replicas = Replicas::sole(record.to, leader_epoch);
        let ops = [
            Op::Epoch(epoch),
            Op::PutOwner {
                shard: record.shard.clone(),
                owner: record.to,
            },
            Op::PutReplicas {
                shard: record.shard.clone(),
                replicas: replicas.clone(),
            },
            Op::PutMove(record.clone()),
        ];
        persist(&ops)?;
        self.epoch = epoch;
        self.put_replicas(&record.shard, replicas);
        self.moves.insert(move_id, record);
        Ok(epoch)
    }

    /// Ends a move (Done, RolledBack or Failed): into the history, with the copy to delete, if
    /// any, recorded as a pending drop in the same batch.
    pub fn finish(
        &mut self,
        move_id: u64,
        phase: MovePhase,
        error: Option<String>,
        now_ms: u64,
        drop: Option<PendingDrop>,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Option<MoveRecord>, ErrorKind> {
        let Some(m) = self.moves.get(&move_id) else {
            return Ok(None);
        };
        let mut record = m.clone();
        record.phase = phase;
        record.error = error;
        record.finished_ms = Some(now_ms);
        if phase == MovePhase::Done {
            record.lag = 0;
        }
        let mut ops = vec![Op::PutMove(record.clone())];
        let trimmed = (self.history.len() + 1).saturating_sub(MOVE_HISTORY);
        ops.extend(
            self.history
                .iter()
                .take(trimmed)
                .map(|old| Op::DeleteMove(old.move_id)),
        );
        if let Some(d) = &drop {
            ops.push(Op::PutDrop(d.clone()));
        }
        persist(&ops)?;
        self.moves.remove(&move_id);
        self.history.drain(..trimmed);
        self.history.push_back(record.clone());
        if let Some(d) = drop {
            self.drops.insert((d.broker, d.shard), d.epoch);
        }
        Ok(Some(record))
    }

    /// Pending drops that can be sent now (their broker is Up), and the ones that became moot
    /// (the broker owns the shard again, or imports it right now: deleting would lose data),
    /// which the caller forgets with `Op::DeleteDrop`.
    pub fn drops_due(&self) -> (Vec<DueDrop>, Vec<(BrokerId, ShardId)>) {
        let mut due = Vec::new();
        let mut moot = Vec::new();
        for ((broker, shard), epoch) in &self.drops {
            // A replica again (leader or follower): its copy is live data now.
            let owns = self.owners.get(shard) == Some(broker)
                || self
                    .replicas_of(shard)
                    .is_some_and(|r| r.replicas.contains(broker));
            let importing = self
                .moves
                .values()
                .any(|m| &m.shard == shard && m.to == *broker);
            match self.members.get(broker) {
                _ if owns || importing => moot.push((*broker, shard.clone())),
                // A removed broker has nobody to tell; forget it.
                None => moot.push((*broker, shard.clone())),
                Some(m) if m.status == BrokerStatus::Up => due.push((
                    BrokerAddr {
                        id: *broker,
                        addr: m.addr.clone(),
                    },
                    shard.clone(),
                    *epoch,
                )),
                Some(_) => {}
            }
        }
        (due, moot)
    }

    /// Reconciliation of fences: shards their owner reports `Fenced` while no move of them is
    /// in flight (a rolled-back move whose unfence was lost, or a stale fence the destination's
    /// import sent late). Such a shard refuses writes forever unless it is unfenced. Returned
    /// with the owner's address and marked in [`State::unfencing`] (no move of them starts, and
    /// they are not returned again, until [`State::unfenced`]).
    pub fn stale_fences(&mut self) -> Vec<(BrokerAddr, ShardId)> {
        let mut out = Vec::new();
        for (id, m) in &self.members {
            if m.status != BrokerStatus::Up || !m.confirmed {
                continue;
            }
            for r in &m.report.shards {
                let stale = r.state == ShardState::Fenced
                    && self.owners.get(&r.shard) == Some(id)
                    && !self.unfencing.contains(&r.shard)
                    && !self.moves.values().any(|mv| mv.shard == r.shard);
                if stale {
                    out.push((
                        BrokerAddr {
                            id: *id,
                            addr: m.addr.clone(),
                        },
                        r.shard.clone(),
                    ));
                }
            }
        }
        for (_, shard) in &out {
            self.unfencing.insert(shard.clone());
        }
        out
    }

    /// The unfence of a [`State::stale_fences`] shard was answered (`ok`: the broker took it,
    /// so its last report is corrected to Active until the next one) or failed (retried at
    /// the next round; no move of the shard starts before `hold_until`, in case the request
    /// still lands late).
    pub fn unfenced(&mut self, broker: BrokerId, shard: &ShardId, ok: bool, hold_until: Instant) {
        self.unfencing.remove(shard);
        if ok {
            if let Some(m) = self.members.get_mut(&broker) {
                for r in m.report.shards.iter_mut().filter(|r| &r.shard == shard) {
                    if r.state == ShardState::Fenced {
                        r.state = ShardState::Active;
                    }
                }
            }
        } else {
            let t = self.retry_after.entry(shard.clone()).or_insert(hold_until);
            *t = (*t).max(hold_until);
        }
    }

    /// Forgets pending drops (done or moot).
    pub fn forget_drops(
        &mut self,
        drops: &[(BrokerId, ShardId)],
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(), ErrorKind> {
        if drops.is_empty() {
            return Ok(());
        }
        let ops: Vec<Op> = drops
            .iter()
            .map(|(broker, shard)| Op::DeleteDrop {
                broker: *broker,
                shard: shard.clone(),
            })
            .collect();
        persist(&ops)?;
        for d in drops {
            self.drops.remove(d);
        }
        Ok(())
    }
}
