//! A shard's replication: its role (leader, follower, idle) under the controller's replica set,
//! the high watermark, the leader's side of a replica fetch (divergence check, follower
//! progress, what to send) and the follower's side (truncation by leader epoch, appending the
//! leader's entries unchanged, its groups and producer states).
//!
//! The decisions themselves (epoch lookups, the divergence check, the HW and ISR rules) are the
//! pure ones in [`crate::replica`]; this file applies them to the stored log under the shard's
//! lock.

use std::collections::{BTreeMap, BTreeSet};

use shardq_protocol::{
    BrokerAddr, BrokerId, ErrorKind, FollowerProgress, LeaderEpoch, Offset, ReplicaData,
    ReplicaPosition, ReplicaRole, ReplicaSet, StoredBatch,
};

use super::entry::{
    decode_entry, epoch_key, group_key, log_key, producer_key, STATS_BYTES, STATS_HW, STATS_START,
};
use super::segments::Ptr;
use super::{Inner, Shard};
use crate::replica::{check_fetch, truncation_point, AckCheck, FetchCheck, LeaderState};

/// This replica's part in the shard's replication.
#[derive(Debug)]
pub(crate) enum Role {
    Leader(Box<LeaderState>),
    Follower { leader: BrokerAddr },
    Idle,
}

/// The replication state kept with the shard.
#[derive(Debug)]
pub(crate) struct Repl {
    pub role: Role,
    /// The controller's latest decision this replica applied.
    pub set: Option<ReplicaSet>,
    pub leader_epoch: LeaderEpoch,
    /// Readers see offsets below this; acknowledgements wait for it.
    pub hw: Offset,
    /// Group offsets' replication version: (leader epoch, change counter) and, on the leader,
    /// the counter at which each group last changed.
    pub groups_version: (LeaderEpoch, u64),
    pub group_changes: BTreeMap<String, u64>,
    /// On the leader: the groups version each follower reported holding.
    pub follower_groups: BTreeMap<BrokerId, (LeaderEpoch, u64)>,
    /// When the pending ISR proposal was last sent.
    pub isr_sent_ms: u64,
}

impl Repl {
    pub fn new(hw: Offset) -> Repl {
        Repl {
            role: Role::Idle,
            set: None,
            leader_epoch: 0,
            hw,
            groups_version: (0, 0),
            group_changes: BTreeMap::new(),
            follower_groups: BTreeMap::new(),
            isr_sent_ms: 0,
        }
    }

    pub fn role(&self) -> ReplicaRole {
        match self.role {
            Role::Leader(_) => ReplicaRole::Leader,
            Role::Follower { .. } => ReplicaRole::Follower,
            Role::Idle => ReplicaRole::Idle,
        }
    }
}

/// The most bytes one stored entry takes (its records plus the entry's header).
pub const MAX_STORED_ENTRY: usize = super::MAX_ENTRY_BYTES + 64;

/// A pending ISR proposal unanswered for this long is sent again.
pub const ISR_RESEND_MS: u64 = 1_000;

/// An ISR change a leader proposes to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChange {
    pub leader_epoch: LeaderEpoch,
    /// The leader's id of the proposal (the answer names it).
    pub proposal: u64,
    /// The ISR version the proposal changes.
    pub base_version: u64,
    pub isr: Vec<BrokerId>,
    /// The process of each member it adds, as the leader heard from it.
    pub incarnations: Vec<(BrokerId, u64)>,
}

/// What a follower fetches from, after an assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Following {
    pub leader: BrokerAddr,
    pub leader_epoch: LeaderEpoch,
}

impl Shard {
    /// The end this replica counts as its own for the high watermark: its durable end where
    /// readers wait for the flush (`fsync always`), else its log end (the write-ahead file keeps
    /// it through a process crash).
    fn counted_end(&self, inner: &Inner) -> Offset {
        if self.counts_durable {
            inner.durable
        } else {
            inner.next_offset
        }
    }

    /// Applies the controller's replica set: becomes leader (at a new epoch) or follower, or
    /// takes a newer ISR. A set at an older leader epoch than the one applied is ignored.
    /// Returns what to follow, if this replica follows.
    pub fn set_replication(
        &self,
        set: &ReplicaSet,
        me: BrokerId,
        now_ms: u64,
    ) -> Option<Following> {
        let mut inner = self.lock();
        let repl = &inner.repl;
        if set.leader_epoch < repl.leader_epoch
            || (set.leader_epoch == repl.leader_epoch
                && repl
                    .set
                    .as_ref()
                    .is_some_and(|s| s.isr_version > set.isr_version))
        {
            return self.following(&inner);
        }
        let same_epoch = set.leader_epoch == repl.leader_epoch && repl.set.is_some();
        let isr: BTreeSet<BrokerId> = set.isr.iter().copied().collect();
        let end = self.counted_end(&inner);
        let hw = inner.repl.hw;
        let role = match (&mut inner.repl.role, set.leader_id() == Some(me)) {
            (Role::Leader(l), true) if same_epoch => {
                if l.update_from_controller(set.replicas.clone(), isr, set.isr_version, now_ms) {
                    l.on_append(end);
                }
                None
            }
            (_, true) => Some(Role::Leader(Box::new(LeaderState::new(
                me,
                set.leader_epoch,
                set.replicas.clone(),
                isr,
                set.isr_version,
                set.min_insync as usize,
                hw,
                end,
                now_ms,
            )))),
            (_, false) => match (&set.leader, set.replicas.contains(&me)) {
                (Some(leader), true) => Some(Role::Follower {
                    leader: leader.clone(),
                }),
                _ => Some(Role::Idle),
            },
        };
        if let Some(role) = role {
            if matches!(role, Role::Leader(_)) {
                // Readers only ever saw committed records, which every in-sync replica (this
                // one, elected from them) holds: nothing below its end was lost to a reader
                // coming from the old leader (see `Response::Fetched::stable_end`).
                inner.stable_end = inner.next_offset;
            }
            if !same_epoch {
                // A new leader epoch: group offsets are sent whole again.
                inner.repl.groups_version = (set.leader_epoch, 0);
                inner.repl.group_changes.clear();
                inner.repl.follower_groups.clear();
            }
            inner.repl.role = role;
        }
        inner.repl.leader_epoch = set.leader_epoch;
        inner.repl.set = Some(set.clone());
        self.publish_hw(&mut inner);
        drop(inner);
        self.changed.notify_waiters();
        self.following(&self.lock())
    }

    /// No longer assigned here: neither lead nor follow (the data stays until dropped).
    pub fn stop_replicating(&self) {
        self.lock().repl.role = Role::Idle;
        self.changed.notify_waiters();
    }

    fn following(&self, inner: &Inner) -> Option<Following> {
        match &inner.repl.role {
            Role::Follower { leader } => Some(Following {
                leader: leader.clone(),
                leader_epoch: inner.repl.leader_epoch,
            }),
            _ => None,
        }
    }

    /// Recomputes the high watermark from the leader state (or keeps a follower's) and wakes
    /// readers and acknowledgements waiting on it.
    pub(super) fn publish_hw(&self, inner: &mut Inner) {
        let end = self.counted_end(inner);
        if let Role::Leader(l) = &mut inner.repl.role {
            l.on_append(end);
            inner.repl.hw = l.hw().min(inner.next_offset);
        }
        let hw = inner.repl.hw.min(inner.next_offset);
        inner.repl.hw = hw;
        self.hw.send_if_modified(|v| {
            let changed = *v != hw;
            *v = hw;
            changed
        });
    }

    /// Whether acknowledgements need the leader lease: only where another replica could be
    /// elected in this one's place (a single replica has no one to be replaced by).
    pub fn needs_lease(&self) -> bool {
        self.lock()
            .repl
            .set
            .as_ref()
            .is_some_and(|s| s.replicas.len() > 1)
    }

    pub fn high_watermark(&self) -> Offset {
        self.lock().repl.hw
    }

    pub fn role(&self) -> ReplicaRole {
        self.lock().repl.role()
    }

    /// Whether a write ending at `end` may be acknowledged with `acks=durable` now: Ok(true)
    /// yes, Ok(false) not yet (wait for the high watermark), or why never at this leader.
    pub fn ack_check(&self, end: Offset) -> Result<bool, ErrorKind> {
        let inner = self.lock();
        match &inner.repl.role {
            Role::Leader(l) => match l.can_ack(end) {
                AckCheck::Acked => Ok(true),
                AckCheck::Wait => Ok(false),
                AckCheck::NotEnoughReplicas { isr, min } => Err(ErrorKind::NotEnoughReplicas {
                    shard: self.id.to_string(),
                    isr: isr as u32,
                    min: min as u32,
                }),
            },
            _ => Err(self.not_leader(&inner)),
        }
    }

    /// Whether every in-sync follower holds the groups at `version` of this leader epoch: Ok
    /// (true) yes, Ok(false) not yet, or why never at this leader.
    pub fn groups_check(&self, version: u64) -> Result<bool, ErrorKind> {
        let inner = self.lock();
        let epoch = inner.repl.groups_version.0;
        match &inner.repl.role {
            Role::Leader(l) => {
                if !l.enough_insync() {
                    return Err(ErrorKind::NotEnoughReplicas {
                        shard: self.id.to_string(),
                        isr: l.isr().len() as u32,
                        min: l.min_insync() as u32,
                    });
                }
                Ok(l.isr().iter().filter(|b| **b != l.leader()).all(|b| {
                    inner
                        .repl
                        .follower_groups
                        .get(b)
                        .is_some_and(|v| *v >= (epoch, version))
                }))
            }
            _ => Err(self.not_leader(&inner)),
        }
    }

    /// Refuses a durable write up front when the ISR is below `min_insync`.
    pub fn check_insync(&self) -> Result<(), ErrorKind> {
        self.ack_check(0).map(|_| ())
    }

    /// A proposed ISR change to send the controller, if one is due (leader only): a new one,
    /// or the pending one again when it went unanswered for [`ISR_RESEND_MS`] (a copy the
    /// controller already applied is refused as stale, harmlessly).
    pub fn isr_change(&self, now_ms: u64, lag_max_ms: u64) -> Option<IsrChange> {
        let mut inner = self.lock();
        let end = self.counted_end(&inner);
        let epoch = inner.repl.leader_epoch;
        let sent = inner.repl.isr_sent_ms;
        let Role::Leader(l) = &mut inner.repl.role else {
            return None;
        };
        let proposal = match l.isr_change(now_ms, lag_max_ms, end) {
            Some(p) => p,
            None => l
                .pending()
                .filter(|_| now_ms.saturating_sub(sent) >= ISR_RESEND_MS)?
                .clone(),
        };
        inner.repl.isr_sent_ms = now_ms;
        Some(IsrChange {
            leader_epoch: epoch,
            proposal: proposal.id,
            base_version: proposal.base_version,
            isr: proposal.isr.into_iter().collect(),
            incarnations: proposal.incarnations.into_iter().collect(),
        })
    }

    /// The controller applied `change` as ISR version `version`. (A refusal changes nothing
    /// here: the router pushes the shard's state with a newer version, which ends the
    /// proposal.)
    pub fn isr_confirmed(&self, change: &IsrChange, version: u64) {
        let mut inner = self.lock();
        if inner.repl.leader_epoch != change.leader_epoch {
            return;
        }
        let confirmed = match &mut inner.repl.role {
            Role::Leader(l) => l.isr_confirmed(change.proposal, version),
            _ => false,
        };
        if confirmed {
            if let Some(set) = &mut inner.repl.set {
                set.isr = change.isr.clone();
                set.isr_version = version;
            }
        }
        self.publish_hw(&mut inner);
    }

    /// The leader's side of a replica fetch for this shard, from `follower`'s process
    /// (its id and incarnation).
    pub fn serve_replica(
        &self,
        (follower, incarnation): (BrokerId, u64),
        pos: &ReplicaPosition,
        max_bytes: usize,
        now_ms: u64,
    ) -> Result<ReplicaData, ErrorKind> {
        let (data_from, groups, groups_deleted, groups_version) = {
            let mut inner = self.lock();
            if inner.dropped {
                return Err(self.not_leader(&inner));
            }
            let epoch = inner.repl.leader_epoch;
            if !matches!(inner.repl.role, Role::Leader(_)) {
                return Err(self.not_leader(&inner));
            }
            if pos.leader_epoch != epoch {
                return Err(ErrorKind::LeaderEpochMismatch {
                    shard: self.id.to_string(),
                    ours: epoch,
                    theirs: pos.leader_epoch,
                });
            }
            let end = inner.next_offset;
            if pos.fetch_offset < inner.start {
                // Retention deleted what the follower would fetch next: it continues at the
                // log start (nothing below it can be compared or sent).
                return Ok(Self::no_data(&inner, None));
            }
            if let FetchCheck::Diverging { epoch, end_offset } =
                check_fetch(&inner.epochs, end, pos.fetch_offset, pos.last_epoch)
            {
                return Ok(Self::no_data(&inner, Some((epoch, end_offset))));
            }
            let counted = self.counted_end(&inner);
            if let Role::Leader(l) = &mut inner.repl.role {
                l.on_fetch(
                    follower,
                    incarnation,
                    pos.durable_end.min(pos.fetch_offset),
                    counted,
                    now_ms,
                );
            }
            let before = inner
                .repl
                .follower_groups
                .insert(follower, pos.groups_version);
            self.publish_hw(&mut inner);
            if before != Some(pos.groups_version) {
                // Wakes group commits waiting for their followers.
                self.hw.send_modify(|_| {});
            }
            let g_epoch = inner.repl.groups_version.0;
            let mut deleted = Vec::new();
            let groups: Vec<(String, Offset)> = if pos.groups_version.0 != g_epoch {
                inner.groups.iter().map(|(g, o)| (g.clone(), *o)).collect()
            } else {
                let mut changed = Vec::new();
                for (g, _) in inner
                    .repl
                    .group_changes
                    .iter()
                    .filter(|(_, v)| **v > pos.groups_version.1)
                {
                    match inner.groups.get(g) {
                        Some(o) => changed.push((g.clone(), *o)),
                        None => deleted.push(g.clone()),
                    }
                }
                changed
            };
            (pos.fetch_offset, groups, deleted, inner.repl.groups_version)
        };
        // `max_bytes` is a hard cap (the answer shares one frame with the other shards'): below
        // one stored entry's worth, this shard answers with its position only.
        let mut batches = if max_bytes < MAX_STORED_ENTRY {
            Vec::new()
        } else {
            self.read(data_from, max_bytes, max_bytes, super::Limit::End)?
                .0
        };
        // A read always returns its first entry: one larger than the cap (a record above the
        // entry size) waits for a round where this shard comes first.
        if batches
            .first()
            .is_some_and(|b| super::stored_size(b) as usize > max_bytes)
        {
            batches.clear();
        }
        // Read after the batches: a trim that ran meanwhile is covered (the follower skips
        // what it then deletes).
        let log_start = self.offsets().0;
        Ok(ReplicaData {
            high_watermark: self.high_watermark(),
            diverging: None,
            batches,
            groups,
            groups_deleted,
            groups_version,
            log_start,
        })
    }

    /// An answer with the leader's position only: the follower's log start, or where it
    /// diverges, must be dealt with before it can take entries.
    fn no_data(inner: &Inner, diverging: Option<(LeaderEpoch, Offset)>) -> ReplicaData {
        ReplicaData {
            high_watermark: inner.repl.hw,
            diverging,
            batches: Vec::new(),
            groups: Vec::new(),
            groups_deleted: Vec::new(),
            groups_version: inner.repl.groups_version,
            log_start: inner.start,
        }
    }

    fn not_leader(&self, inner: &Inner) -> ErrorKind {
        ErrorKind::NotOwner {
            shard: self.id.to_string(),
            epoch: inner.own.epoch,
            owner: inner.repl.set.as_ref().and_then(|s| s.leader.clone()),
        }
    }

    /// The follower's position for its next fetch (None unless it follows at `leader_epoch`).
    pub fn position(&self, leader_epoch: LeaderEpoch) -> Option<ReplicaPosition> {
        let inner = self.lock();
        if inner.dropped
            || inner.repl.leader_epoch != leader_epoch
            || !matches!(inner.repl.role, Role::Follower { .. })
        {
            return None;
        }
        let end = inner.next_offset;
        Some(ReplicaPosition {
            shard: self.id.clone(),
            leader_epoch,
            fetch_offset: end,
            // An empty log (never written, or all deleted by retention) vouches for nothing.
            last_epoch: if end == inner.start {
                None
            } else {
                inner.epochs.epoch_at(end - 1).or(Some(0))
            },
            durable_end: self.counted_end(&inner),
            groups_version: inner.repl.groups_version,
        })
    }

    /// Applies a leader's answer: truncates where the logs diverge, or appends the leader's
    /// entries and takes its high watermark and group offsets. Returns the records appended.
    pub fn apply_replica(
        &self,
        asked: &ReplicaPosition,
        data: ReplicaData,
    ) -> Result<u64, ErrorKind> {
        let mut inner = self.lock();
        // Only the answer to this replica's position as it still is: an answer to an older
        // position (another epoch, or a log that changed since) could cut or splice wrongly.
        if inner.dropped
            || inner.repl.leader_epoch != asked.leader_epoch
            || inner.next_offset != asked.fetch_offset
            || !matches!(inner.repl.role, Role::Follower { .. })
        {
            return Ok(0);
        }
        if data.log_start > inner.start {
            let end = inner.next_offset;
            self.cut_front(&mut inner, data.log_start)?;
            if inner.next_offset != end {
                // Started over empty at the leader's log start: fetch from there.
                return Ok(0);
            }
        }
        if let Some((epoch, end_offset)) = data.diverging {
            let at = truncation_point(&inner.epochs, inner.next_offset, (epoch, end_offset));
            self.truncate(&mut inner, at)?;
            return Ok(0);
        }
        let before = inner.next_offset;
        self.write_copied(&mut inner, &data.batches, Some(data.high_watermark))?;
        if !data.groups.is_empty() || data.groups_version != inner.repl.groups_version {
            let whole = data.groups_version.0 != inner.repl.groups_version.0;
            self.write_groups(&mut inner, &data.groups, &data.groups_deleted, whole)?;
            inner.repl.groups_version = data.groups_version;
        }
        let appended = inner.next_offset - before;
        inner.repl.hw = data
            .high_watermark
            .min(inner.next_offset)
            .max(inner.repl.hw.min(inner.next_offset));
        self.publish_hw(&mut inner);
        Ok(appended)
    }

    /// Writes entries copied from another replica, unchanged and with their leader epochs and
    /// producer states, continuing the local log exactly (entries wholly below the local end are
    /// skipped). Used by imports and by followers. Returns the records and bytes written.
    pub(super) fn write_copied(
        &self,
        inner: &mut Inner,
        batches: &[StoredBatch],
        hw: Option<Offset>,
    ) -> Result<(u64, u64), ErrorKind> {
        if hw.is_none() {
            // An import: a source whose retention deleted what the copy would read next sends
            // its first entry still stored; the copy continues from there.
            if let Some(first) = batches.iter().find(|b| b.end_offset() > inner.next_offset) {
                if first.base_offset > inner.next_offset {
                    self.cut_front(inner, first.base_offset)?;
                }
            }
        }
        // The payloads go to the segment files first; a failure takes them back.
        let from = inner.next_offset;
        let mut first = None;
        let result = self.copy_entries(inner, batches, hw, &mut first);
        if result.is_err() {
            self.unstage(inner, from, first);
        }
        result
    }

    /// [`Shard::write_copied`]'s writes; `first` gets the first payload's place.
    fn copy_entries(
        &self,
        inner: &mut Inner,
        batches: &[StoredBatch],
        hw: Option<Offset>,
        first: &mut Option<Ptr>,
    ) -> Result<(u64, u64), ErrorKind> {
        self.health.check_space(
            batches
                .iter()
                .map(|b| b.batch.data.len() as u64)
                .sum::<u64>(),
        )?;
        let mut next = inner.next_offset;
        let mut added = 0u64;
        let mut ops: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let mut epochs = inner.epochs.clone();
        let mut producers = Vec::new();
        for b in batches {
            if b.end_offset() <= next && b.batch.count > 0 {
                continue;
            }
            if b.base_offset != next || b.batch.count == 0 {
                return Err(ErrorKind::Internal {
                    reason: format!(
                        "copy of {}: the source sent an entry at offset {} holding {} records, but the local log ends at {next}",
                        self.id, b.base_offset, b.batch.count
                    ),
                });
            }
            if epochs.latest().map(|(e, _)| e) < Some(b.leader_epoch) && b.leader_epoch > 0 {
                epochs.assign(b.leader_epoch, b.base_offset);
                ops.push((
                    epoch_key(b.leader_epoch).as_slice().into(),
                    b.base_offset.to_be_bytes().as_slice().into(),
                ));
            }
            let (value, size, ptr) = self.stage(
                inner,
                next,
                (b.batch.count, b.leader_epoch),
                b.producer.as_ref(),
                &b.batch.data,
            )?;
            first.get_or_insert(ptr);
            added += size;
            ops.push((log_key(next).as_slice().into(), value.into()));
            if let Some(p) = &b.producer {
                let v = shardq_protocol::codec::encode(p)
                    .map_err(|e| super::storage(&self.id, "cannot encode producer state", e))?;
                ops.push((producer_key(p.producer_id).as_slice().into(), v.into()));
                producers.push(p.clone());
            }
            next = b.end_offset();
        }
        let records = next - inner.next_offset;
        if records == 0 {
            return Ok((0, 0));
        }
        let bytes = inner.bytes + added;
        ops.push((STATS_BYTES.into(), bytes.to_be_bytes().as_slice().into()));
        ops.push(self.synced_mark(inner, next));
        if let Some(hw) = hw {
            let hw = hw.min(next);
            ops.push((STATS_HW.into(), hw.to_be_bytes().as_slice().into()));
        }
        self.apply(inner, &ops, "copy write failed")?;
        inner.next_offset = next;
        inner.bytes = bytes;
        inner.epochs = epochs;
        for p in producers {
            inner.producers.insert(p.producer_id, p);
        }
        self.end.send_replace(next);
        Ok((records, added))
    }

    /// Takes the leader's group offsets (`whole`: they replace every local one) and deletes
    /// the groups it deleted.
    fn write_groups(
        &self,
        inner: &mut Inner,
        groups: &[(String, Offset)],
        deleted: &[String],
        whole: bool,
    ) -> Result<(), ErrorKind> {
        let mut ops: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let mut gone: Vec<String> = deleted.to_vec();
        if whole {
            gone.extend(
                inner
                    .groups
                    .keys()
                    .filter(|g| !groups.iter().any(|(n, _)| n == *g))
                    .cloned(),
            );
        }
        for g in &gone {
            ops.push((group_key(g).into(), sled::IVec::default()));
        }
        for (g, o) in groups {
            ops.push((group_key(g).into(), o.to_be_bytes().as_slice().into()));
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.apply(inner, &ops, "cannot write replicated group offsets")?;
        for g in &gone {
            inner.groups.remove(g);
        }
        inner.groups.extend(groups.iter().cloned());
        Ok(())
    }

    /// Cuts the log back to `at` (rounded down to an entry boundary): where it diverges from
    /// the leader's. Removes the entries, the epochs that start at or after the cut, and the
    /// producer states of batches that no longer fully exist (a truncated batch was never
    /// acknowledged, so its producer's retry is welcome).
    pub(super) fn truncate(&self, inner: &mut Inner, at: Offset) -> Result<(), ErrorKind> {
        if at >= inner.next_offset {
            return Ok(());
        }
        let tree = self.tree(inner)?;
        let mut ops: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let mut removed_bytes = 0u64;
        let mut cut = at;
        // The entry holding `at`, if it starts below, goes too.
        if let Some(kv) = tree.range(log_key(0)..=log_key(at)).next_back() {
            let (k, v) = kv.map_err(|e| super::storage(&self.id, "read failed", e))?;
            let e = decode_entry(&self.id, &k, v)?;
            if e.end_offset() > at {
                cut = e.base_offset;
            }
        }
        // Where the payloads of the entries removed begin in the segment files.
        let mut first_removed: Option<Option<Ptr>> = None;
        for kv in tree.range(log_key(cut)..) {
            let (k, v) = kv.map_err(|e| super::storage(&self.id, "read failed", e))?;
            if k.first() != Some(&super::LOG) {
                break;
            }
            let e = decode_entry(&self.id, &k, v)?;
            first_removed.get_or_insert(e.ptr());
            removed_bytes += e.size();
            ops.push((k, sled::IVec::default()));
        }
        let mut epochs = inner.epochs.clone();
        let dropped_epochs: Vec<LeaderEpoch> = epochs
            .entries()
            .filter(|(_, s)| *s >= cut)
            .map(|(e, _)| e)
            .collect();
        epochs.truncate_from(cut);
        for e in &dropped_epochs {
            ops.push((epoch_key(*e).as_slice().into(), sled::IVec::default()));
        }
        let gone: Vec<u64> = inner
            .producers
            .values()
            .filter(|p| p.base_offset + p.count as u64 > cut)
            .map(|p| p.producer_id)
            .collect();
        for id in &gone {
            ops.push((producer_key(*id).as_slice().into(), sled::IVec::default()));
        }
        let bytes = inner.bytes.saturating_sub(removed_bytes);
        ops.push((STATS_BYTES.into(), bytes.to_be_bytes().as_slice().into()));
        let hw = inner.repl.hw.min(cut);
        ops.push((STATS_HW.into(), hw.to_be_bytes().as_slice().into()));
        // A cut below the log start (entries the leader never had) leaves an empty log there.
        let start = inner.start.min(cut);
        if start != inner.start {
            ops.push((STATS_START.into(), start.to_be_bytes().as_slice().into()));
        }
        // Appends from the cut on go to bytes not synced yet.
        ops.push(self.synced_mark(inner, cut));
        // A deletion: no free-space check (it frees space).
        self.apply_to(&tree, &ops, "truncation failed")?;
        if let Some(segments) = inner.segments.as_mut() {
            // Frames left behind by a failure here only waste space: appends go after them,
            // and the next start cuts what no entry points at.
            if let Err(e) = segments.truncate(cut, first_removed.flatten()) {
                tracing::warn!(shard = %self.id, "cannot cut the segment files back: {e}");
            }
        }
        inner.start = start;
        tracing::info!(shard = %self.id, from = inner.next_offset, to = cut, "log truncated to where it agrees with the leader's");
        inner.next_offset = cut;
        inner.durable = inner.durable.min(cut);
        inner.stable_end = inner.stable_end.min(cut);
        inner.bytes = bytes;
        inner.epochs = epochs;
        for id in gone {
            inner.producers.remove(&id);
        }
        inner.repl.hw = hw;
        self.end.send_replace(cut);
        self.durable.send_replace(inner.durable);
        Ok(())
    }

    /// The leader's view of its followers, for reports.
    pub(super) fn followers(inner: &Inner) -> Vec<FollowerProgress> {
        match &inner.repl.role {
            Role::Leader(l) => l
                .replicas()
                .iter()
                .filter(|id| **id != l.leader())
                .map(|id| {
                    let end = l.progress(*id).and_then(|p| p.end);
                    FollowerProgress {
                        broker: *id,
                        end,
                        lag: inner.next_offset.saturating_sub(end.unwrap_or(0)),
                        in_sync: l.isr().contains(id),
                    }
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}
