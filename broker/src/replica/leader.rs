//! The leader's view of one shard in one leader epoch: where each follower is, the high
//! watermark (HW), whether a produce can be acknowledged, and which ISR change to propose.
//!
//! Rules:
//!
//! * A follower's end counts only once it fetched in this epoch and [`super::check_fetch`] said
//!   Ok: its fetch offset is then its log end, and its log agrees with the leader's below it.
//!   Until then an ISR member is *silent* and holds the HW where it is: it may lack anything
//!   above (a new leader's HW may lag what the previous leader exposed, but never leads it).
//! * The HW is the lowest end over the *maximal ISR*: the confirmed ISR together with a
//!   proposed one the controller has not answered yet (KIP-497). The controller may already
//!   have applied the proposal, so a member being added counts from the moment it is proposed,
//!   and a member being removed counts until the removal is confirmed. The HW never decreases.
//! * Progress belongs to one follower *process* (its incarnation, KIP-903): a fetch from
//!   another process starts the follower's progress over, and a proposal to add a follower
//!   names the process whose fetches showed it caught up. The controller refuses it unless that
//!   process is the one registered now, so a follower that restarted with less than it had (a
//!   lost disk, unsynced writes) is never let in on what its previous process held. (A long
//!   poll re-serves the positions it was sent, so a dead process's fetch can still count after
//!   the controller dropped it from the ISR.)
//! * A new leader starts from its own HW (it was elected from the ISR, so it holds everything
//!   committed; its HW, learned as a follower, never exceeds that).
//! * A proposal stays pending until the controller confirms it ([`LeaderState::isr_confirmed`])
//!   or pushes a newer ISR version ([`LeaderState::update_from_controller`]). A refusal does not
//!   end it: another copy of the same proposal (the leader resends it when an answer is late or
//!   lost, see [`LeaderState::pending`]) may still be on its way and be applied; only an ISR
//!   version past the proposal's base version rules that out. The controller makes sure one
//!   follows every refusal (see [`super::PartitionState::alter_isr`]).

use std::collections::{BTreeMap, BTreeSet};

use super::{BrokerId, LeaderEpoch, Offset};

/// What the leader knows of one follower in this epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The follower process the fields below come from (`None` until it fetched).
    pub incarnation: Option<u64>,
    /// Its log end, from its last fetch that passed [`super::check_fetch`] in this epoch;
    /// `None` until then.
    pub end: Option<Offset>,
    /// The last time it was caught up (see [`LeaderState::on_fetch`]); for ISR members the
    /// time this leader took over, until they first catch up.
    pub last_caught_up_ms: u64,
    /// The time of its last fetch in this epoch.
    pub last_fetch_ms: Option<u64>,
    /// The leader's log end at that fetch.
    last_fetch_leader_end: Option<Offset>,
}

/// A change of the ISR proposed to the controller, compare-and-set on `base_version` (and the
/// leader epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrProposal {
    /// Numbers the proposals of this leader state, to match answers to them.
    pub id: u64,
    /// The ISR version the proposal replaces.
    pub base_version: u64,
    pub isr: BTreeSet<BrokerId>,
    /// For each member it adds: the process whose fetches showed it caught up.
    pub incarnations: BTreeMap<BrokerId, u64>,
}

/// Whether a produce that ends at some offset can be acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckCheck {
    Acked,
    /// Not below the HW yet.
    Wait,
    /// Below the HW, but the ISR is smaller than `min_insync`: fail it (the entries stay in the
    /// log and may still be committed; the producer retries, idempotently).
    NotEnoughReplicas {
        isr: usize,
        min: usize,
    },
}

/// The leader's view of one shard. See the module docs.
#[derive(Clone, Debug)]
pub struct LeaderState {
    leader: BrokerId,
    leader_epoch: LeaderEpoch,
    /// The leader's log end when it took over: the first offset written in this epoch.
    epoch_start: Offset,
    replicas: Vec<BrokerId>,
    isr: BTreeSet<BrokerId>,
    isr_version: u64,
    pending: Option<IsrProposal>,
    next_proposal: u64,
    followers: BTreeMap<BrokerId, Progress>,
    hw: Offset,
    leader_end: Offset,
    min_insync: usize,
}

impl LeaderState {
    /// `leader` takes over in `leader_epoch` with the controller's `replicas`, `isr` (which
    /// includes it) and `isr_version`; its own HW `start_hw` and log end `leader_end` (where the
    /// epoch starts; the caller has assigned the epoch there in its epoch cache). ISR members
    /// count as caught up at `now_ms`, silent until they fetch.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        leader: BrokerId,
        leader_epoch: LeaderEpoch,
        replicas: Vec<BrokerId>,
        isr: BTreeSet<BrokerId>,
        isr_version: u64,
        min_insync: usize,
        start_hw: Offset,
        leader_end: Offset,
        now_ms: u64,
    ) -> Self {
        debug_assert!(isr.contains(&leader), "the ISR must include its leader");
        debug_assert!(start_hw <= leader_end, "the HW is within the log");
        let mut state = LeaderState {
            leader,
            leader_epoch,
            epoch_start: leader_end,
            replicas: Vec::new(),
            isr,
            isr_version,
            pending: None,
            next_proposal: 0,
            followers: BTreeMap::new(),
            hw: start_hw.min(leader_end),
            leader_end,
            min_insync,
        };
        state.set_replicas(replicas, now_ms);
        state.recompute_hw();
        state
    }

    fn set_replicas(&mut self, replicas: Vec<BrokerId>, now_ms: u64) {
        for &r in &replicas {
            if r != self.leader {
                self.followers.entry(r).or_insert(Progress {
                    last_caught_up_ms: now_ms,
                    ..Progress::default()
                });
            }
        }
        self.followers.retain(|r, _| replicas.contains(r));
        self.replicas = replicas;
    }

    pub fn leader(&self) -> BrokerId {
        self.leader
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    /// The first offset written in this epoch.
    pub fn epoch_start(&self) -> Offset {
        self.epoch_start
    }

    pub fn replicas(&self) -> &[BrokerId] {
        &self.replicas
    }

    /// The ISR as last confirmed by the controller.
    pub fn isr(&self) -> &BTreeSet<BrokerId> {
        &self.isr
    }

    pub fn isr_version(&self) -> u64 {
        self.isr_version
    }

    /// The proposal awaiting the controller's answer (to resend when its answer was lost).
    pub fn pending(&self) -> Option<&IsrProposal> {
        self.pending.as_ref()
    }

    /// The confirmed ISR together with a pending proposal: the members the HW waits for.
    pub fn maximal_isr(&self) -> BTreeSet<BrokerId> {
        let mut all = self.isr.clone();
        if let Some(p) = &self.pending {
            all.extend(p.isr.iter().copied());
        }
        all
    }

    pub fn progress(&self, follower: BrokerId) -> Option<&Progress> {
        self.followers.get(&follower)
    }

    pub fn hw(&self) -> Offset {
        self.hw
    }

    pub fn min_insync(&self) -> usize {
        self.min_insync
    }

    /// Whether the confirmed ISR has at least `min_insync` members: a produce is refused before
    /// it is appended otherwise.
    pub fn enough_insync(&self) -> bool {
        self.isr.len() >= self.min_insync
    }

    /// A fetch from `follower`'s process `incarnation` at `fetch_offset` that
    /// [`super::check_fetch`] found Ok, with the leader's log end `leader_end` at that moment.
    /// A fetch from another process than the last one starts its progress over: what the
    /// other process had says nothing about this one. The fetch offset is the follower's end; it
    /// is caught up when that reaches the leader's end, or reaches the leader's end at its
    /// previous fetch (then it was caught up as of that fetch: a steady stream of appends does
    /// not make a keeping-up follower look lagging). Returns whether the HW advanced. Fetches
    /// from brokers that are not followers of this shard change nothing.
    pub fn on_fetch(
        &mut self,
        follower: BrokerId,
        incarnation: u64,
        fetch_offset: Offset,
        leader_end: Offset,
        now_ms: u64,
    ) -> bool {
        self.leader_end = self.leader_end.max(leader_end);
        let Some(p) = self.followers.get_mut(&follower) else {
            return false;
        };
        if p.incarnation.is_some_and(|i| i != incarnation) {
            *p = Progress::default();
        }
        p.incarnation = Some(incarnation);
        let end = fetch_offset.min(leader_end);
        if end >= leader_end {
            p.last_caught_up_ms = p.last_caught_up_ms.max(now_ms);
        } else if let (Some(prev_end), Some(prev_ms)) = (p.last_fetch_leader_end, p.last_fetch_ms) {
            if end >= prev_end {
                p.last_caught_up_ms = p.last_caught_up_ms.max(prev_ms);
            }
        }
        p.end = Some(end);
        p.last_fetch_ms = Some(now_ms);
        p.last_fetch_leader_end = Some(leader_end);
        self.recompute_hw()
    }

    /// The leader appended; its log now ends at `leader_end`. Returns whether the HW advanced
    /// (it does when the maximal ISR is the leader alone).
    pub fn on_append(&mut self, leader_end: Offset) -> bool {
        self.leader_end = self.leader_end.max(leader_end);
        self.recompute_hw()
    }

    fn recompute_hw(&mut self) -> bool {
        let mut low = self.leader_end;
        for id in self.maximal_isr() {
            if id == self.leader {
                continue;
            }
            // Silent members (and ids without progress) hold the HW where it is.
            let end = self
                .followers
                .get(&id)
                .and_then(|p| p.end)
                .unwrap_or(self.hw);
            low = low.min(end);
        }
        if low > self.hw {
            self.hw = low;
            true
        } else {
            false
        }
    }

    /// Whether a produce whose last entry ends at `end` (exclusive) can be acknowledged: when
    /// `end <= hw` and the confirmed ISR has at least `min_insync` members.
    pub fn can_ack(&self, end: Offset) -> AckCheck {
        if end > self.hw {
            AckCheck::Wait
        } else if !self.enough_insync() {
            AckCheck::NotEnoughReplicas {
                isr: self.isr.len(),
                min: self.min_insync,
            }
        } else {
            AckCheck::Acked
        }
    }

    fn lagging(&self, p: &Progress, now_ms: u64, lag_max_ms: u64) -> bool {
        now_ms.saturating_sub(p.last_caught_up_ms) > lag_max_ms
    }

    /// The ISR change to propose now, if any, marked pending (the caller sends it to the
    /// controller). Nothing while a proposal is pending. Removed: ISR followers not caught up
    /// within `lag_max_ms`. Added: other replicas caught up within `lag_max_ms` whose end is at
    /// least the HW and at least this epoch's start (so they hold everything the previous leaders
    /// may have committed, even beyond this leader's HW). `leader_end` is the leader's log end.
    pub fn isr_change(
        &mut self,
        now_ms: u64,
        lag_max_ms: u64,
        leader_end: Offset,
    ) -> Option<IsrProposal> {
        self.leader_end = self.leader_end.max(leader_end);
        if self.pending.is_some() {
            return None;
        }
        let mut proposed = self.isr.clone();
        let mut incarnations = BTreeMap::new();
        for (&id, p) in &self.followers {
            let lagging = self.lagging(p, now_ms, lag_max_ms);
            if self.isr.contains(&id) {
                if lagging {
                    proposed.remove(&id);
                }
            } else if let (false, Some(end), Some(incarnation)) = (lagging, p.end, p.incarnation) {
                if end >= self.hw && end >= self.epoch_start {
                    proposed.insert(id);
                    incarnations.insert(id, incarnation);
                }
            }
        }
        proposed.insert(self.leader);
        if proposed == self.isr {
            return None;
        }
        let proposal = IsrProposal {
            id: self.next_proposal,
            base_version: self.isr_version,
            isr: proposed,
            incarnations,
        };
        self.next_proposal += 1;
        self.pending = Some(proposal.clone());
        self.recompute_hw();
        Some(proposal)
    }

    /// The controller applied proposal `id` as ISR version `new_version`. Returns whether it was
    /// still the pending one (answers to older proposals, or ones superseded by a push from the
    /// controller, change nothing).
    pub fn isr_confirmed(&mut self, id: u64, new_version: u64) -> bool {
        match self.pending.take() {
            Some(p) if p.id == id && new_version > self.isr_version => {
                self.isr = p.isr;
                self.isr_version = new_version;
                self.recompute_hw();
                true
            }
            other => {
                self.pending = other;
                false
            }
        }
    }

    /// The controller pushed the shard's replicas and ISR at `isr_version`, for this leader
    /// and epoch (after removing a broker that went down, applying or refusing a proposal). A
    /// controller's refusal may carry its current state for this too. Ignored unless newer than
    /// what the leader has; otherwise adopted, and a pending proposal ends: its base version is
    /// now stale, so no copy of it can be applied any more (what it did if it was applied is in
    /// this state). Returns whether it was adopted.
    pub fn update_from_controller(
        &mut self,
        replicas: Vec<BrokerId>,
        isr: BTreeSet<BrokerId>,
        isr_version: u64,
        now_ms: u64,
    ) -> bool {
        if isr_version <= self.isr_version {
            return false;
        }
        debug_assert!(
            isr.contains(&self.leader),
            "the ISR must include its leader"
        );
        self.set_replicas(replicas, now_ms);
        // A follower the controller took out of the ISR (it went down, restarted, or its disk
        // was replaced) may come back with less than it had: what this leader last heard from
        // it says nothing any more, and it must fetch again before it can be proposed back.
        for (id, p) in self.followers.iter_mut() {
            if self.isr.contains(id) && !isr.contains(id) {
                *p = Progress {
                    last_caught_up_ms: p.last_caught_up_ms,
                    ..Progress::default()
                };
            }
        }
        self.isr = isr;
        self.isr_version = isr_version;
        self.pending = None;
        self.recompute_hw();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The followers' processes, in tests about other things.
    const P: u64 = 1;

    #[test]
    fn a_dead_process_fetch_served_late_does_not_vouch_for_its_successor() {
        // Follower 2 caught up at 100, then its broker died and the controller dropped it.
        let mut l = leader(1, 100, 100);
        l.on_fetch(2, P, 100, 100, 10);
        l.on_fetch(3, P, 100, 100, 10);
        assert!(l.update_from_controller(vec![1, 2, 3], set(&[1, 3]), 8, 20));
        // A long poll of the dead process is served once more: it counts as it did...
        l.on_fetch(2, P, 100, 100, 30);
        // ...so the proposal names that process, which the controller refuses once another
        // process registered for broker 2.
        let p = l.isr_change(40, 10_000, 100).expect("a proposal");
        assert_eq!(p.incarnations, [(2, P)].into());
        assert!(l.update_from_controller(vec![1, 2, 3], set(&[1, 3]), 9, 50));
        // The new process (an empty disk) fetches: its progress starts over.
        l.on_fetch(2, P + 1, 0, 100, 60);
        assert_eq!(l.progress(2).and_then(|p| p.end), Some(0));
        assert_eq!(l.progress(2).map(|p| p.incarnation), Some(Some(P + 1)));
        assert_eq!(l.isr_change(70, 10_000, 100), None);
        // Caught up: proposed with the new process.
        l.on_fetch(2, P + 1, 100, 100, 80);
        let p = l.isr_change(90, 10_000, 100).expect("a proposal");
        assert_eq!(
            (p.isr, p.incarnations),
            (set(&[1, 2, 3]), [(2, P + 1)].into())
        );
    }

    #[test]
    fn a_follower_the_controller_drops_must_fetch_again_before_it_is_proposed_back() {
        // Leader 1 of 1, 2, 3 at end 100; follower 2 caught up, then the controller removes it
        // (its broker was down a while).
        let mut l = leader(1, 100, 100);
        l.on_fetch(2, P, 100, 100, 10);
        l.on_fetch(3, P, 100, 100, 10);
        assert!(l.update_from_controller(vec![1, 2, 3], set(&[1, 3]), 8, 20));
        assert_eq!(l.progress(2).and_then(|p| p.end), None);
        // Nothing to propose: its old progress does not count.
        assert_eq!(l.isr_change(30, 10_000, 100), None);
        // It fetches from 0 (its new, empty log): still nothing.
        l.on_fetch(2, P, 0, 100, 40);
        assert_eq!(l.isr_change(50, 10_000, 100), None);
        // Caught up again: proposed back.
        l.on_fetch(2, P, 100, 100, 60);
        let p = l.isr_change(70, 10_000, 100).expect("a proposal");
        assert_eq!(p.isr, set(&[1, 2, 3]));
    }

    fn set(ids: &[BrokerId]) -> BTreeSet<BrokerId> {
        ids.iter().copied().collect()
    }

    /// Leader 1 of replicas 1, 2, 3, all in the ISR, epoch 4 starting at `end`.
    fn leader(min_insync: usize, hw: Offset, end: Offset) -> LeaderState {
        LeaderState::new(
            1,
            4,
            vec![1, 2, 3],
            set(&[1, 2, 3]),
            7,
            min_insync,
            hw,
            end,
            0,
        )
    }

    #[test]
    fn silent_isr_members_hold_the_hw() {
        let mut l = leader(1, 3, 10);
        assert_eq!(l.hw(), 3);
        assert!(!l.on_fetch(2, P, 10, 10, 1));
        assert_eq!(l.hw(), 3, "member 3 has not fetched in this epoch");
        assert!(l.on_fetch(3, P, 8, 10, 1));
        assert_eq!(l.hw(), 8);
        assert!(l.on_fetch(3, P, 10, 10, 2));
        assert_eq!(l.hw(), 10);
    }

    #[test]
    fn the_hw_never_decreases_and_a_lone_leader_advances_it_by_appending() {
        let mut l = LeaderState::new(1, 0, vec![1, 2], set(&[1]), 0, 1, 0, 0, 0);
        assert!(l.on_append(5));
        assert_eq!(l.hw(), 5);
        assert_eq!(l.can_ack(5), AckCheck::Acked);
        assert_eq!(l.can_ack(6), AckCheck::Wait);
        let mut l = leader(1, 0, 10);
        l.on_fetch(2, P, 10, 10, 1);
        l.on_fetch(3, P, 10, 10, 1);
        assert_eq!(l.hw(), 10);
        // A stale, lower fetch offset lowers the follower's end but not the HW.
        assert!(!l.on_fetch(3, P, 6, 10, 2));
        assert_eq!(l.hw(), 10);
    }

    #[test]
    fn acks_need_the_hw_and_min_insync() {
        let mut l = LeaderState::new(1, 0, vec![1, 2, 3], set(&[1, 2]), 0, 3, 0, 0, 0);
        l.on_append(4);
        l.on_fetch(2, P, 4, 4, 1);
        assert_eq!(l.hw(), 4);
        assert_eq!(l.can_ack(4), AckCheck::NotEnoughReplicas { isr: 2, min: 3 });
        assert!(!l.enough_insync());
        assert_eq!(l.can_ack(5), AckCheck::Wait);
    }

    #[test]
    fn lagging_members_are_proposed_for_removal_and_caught_up_ones_for_adding() {
        let mut l = LeaderState::new(1, 2, vec![1, 2, 3], set(&[1, 2]), 5, 1, 0, 4, 0);
        l.on_append(6);
        l.on_fetch(2, P, 6, 6, 10);
        l.on_fetch(3, P, 6, 6, 10);
        assert_eq!(
            l.isr_change(50, 100, 6),
            Some(IsrProposal {
                id: 0,
                base_version: 5,
                isr: set(&[1, 2, 3]),
                incarnations: [(3, P)].into(),
            })
        );
        assert_eq!(l.maximal_isr(), set(&[1, 2, 3]));
        assert_eq!(l.isr_change(50, 100, 6), None, "one proposal at a time");
        assert!(l.isr_confirmed(0, 6));
        assert_eq!(l.isr(), &set(&[1, 2, 3]));
        assert_eq!(l.isr_version(), 6);
        // Member 3 stops fetching; 2 keeps catching up.
        l.on_append(8);
        l.on_fetch(2, P, 8, 8, 200);
        let p = l.isr_change(200, 100, 8).expect("3 lags");
        assert_eq!(p.isr, set(&[1, 2]));
        assert_eq!(p.base_version, 6);
        // Until confirmed, 3 still holds the HW.
        assert_eq!(l.hw(), 6);
        assert!(l.isr_confirmed(p.id, 7));
        assert_eq!(l.hw(), 8);
    }

    #[test]
    fn a_follower_behind_the_epoch_start_is_not_added() {
        // Epoch starts at 10; the HW is only 5 (not yet propagated).
        let mut l = LeaderState::new(1, 2, vec![1, 2, 3], set(&[1, 2]), 0, 1, 5, 10, 0);
        l.on_fetch(3, P, 8, 10, 1);
        assert_eq!(
            l.isr_change(1, 100, 10),
            None,
            "3 lacks 8..10 of the previous epoch"
        );
        l.on_fetch(3, P, 10, 10, 2);
        assert_eq!(
            l.isr_change(2, 100, 10).map(|p| p.isr),
            Some(set(&[1, 2, 3]))
        );
    }

    #[test]
    fn a_keeping_up_follower_is_caught_up_as_of_its_previous_fetch() {
        let mut l = leader(1, 0, 0);
        l.on_fetch(2, P, 0, 0, 0);
        l.on_fetch(3, P, 0, 0, 0);
        l.on_append(5);
        l.on_fetch(2, P, 0, 5, 100); // was at the leader's end of its previous fetch (0)
        assert_eq!(l.progress(2).unwrap().last_caught_up_ms, 0);
        l.on_append(9);
        l.on_fetch(2, P, 5, 9, 150); // reached the leader's end (5) of its fetch at 100
        assert_eq!(l.progress(2).unwrap().last_caught_up_ms, 100);
        assert_eq!(l.isr_change(160, 100, 9).map(|p| p.isr), Some(set(&[1, 2])));
    }

    #[test]
    fn the_hw_waits_for_members_being_added_and_removed() {
        let mut l = LeaderState::new(1, 0, vec![1, 2, 3], set(&[1, 2]), 0, 1, 0, 0, 0);
        l.on_append(4);
        l.on_fetch(3, P, 4, 4, 1);
        l.on_fetch(2, P, 4, 4, 1);
        assert_eq!(l.hw(), 4);
        let p = l.isr_change(1, 100, 4).expect("3 caught up");
        l.on_append(8);
        l.on_fetch(2, P, 8, 8, 2);
        assert_eq!(
            l.hw(),
            4,
            "3 is proposed: the controller may have added it already"
        );
        // Refused (3 was down, say), which moved the controller to version 1 without 3.
        assert_eq!(p.base_version, 0);
        assert!(l.update_from_controller(vec![1, 2, 3], set(&[1, 2]), 1, 3));
        assert_eq!(
            l.hw(),
            8,
            "3 is not a member, and can no longer become one by it"
        );
    }

    #[test]
    fn answers_are_matched_to_their_proposal() {
        let mut l = LeaderState::new(1, 0, vec![1, 2, 3], set(&[1, 2]), 0, 1, 0, 0, 0);
        l.on_fetch(3, P, 0, 0, 1);
        let p0 = l.isr_change(1, 100, 0).expect("3 caught up");
        // The controller pushes a newer ISR (it removed 2, say): the proposal is superseded.
        assert!(l.update_from_controller(vec![1, 2, 3], set(&[1]), 1, 2));
        assert!(l.pending().is_none());
        let p1 = l.isr_change(2, 100, 0).expect("3 still caught up");
        assert_eq!(p1.base_version, 1);
        assert!(
            !l.isr_confirmed(p0.id, 1),
            "an old answer must not end the new proposal"
        );
        assert_eq!(l.pending(), Some(&p1));
        assert!(
            !l.update_from_controller(vec![1, 2, 3], set(&[1, 2]), 1, 3),
            "not newer"
        );
        assert!(l.isr_confirmed(p1.id, 2));
        assert_eq!(l.isr(), &set(&[1, 3]));
    }
}
