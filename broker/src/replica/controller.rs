//! The controller's (router's) decisions for one shard: who leads, in which epoch, with which
//! ISR. The router persists [`PartitionState`] after every change and pushes it to the brokers.
//!
//! Rules:
//!
//! * Elections pick the first live ISR member in replica order, in the next epoch; the new ISR
//!   is the live part of the old one. Every ISR member holds every committed entry (the leader's
//!   HW waits for all of them), so a clean election loses nothing.
//! * A broker that goes down leaves every ISR at once; if it led, a new leader is elected.
//! * When the leader goes down and no other ISR member is live, the shard goes offline (no
//!   leader) and keeps its ISR as it was, the old leader included: those are the replicas known
//!   to hold everything committed, and the first of them to come back leads again. A replica
//!   outside it (say one removed from the ISR earlier, so stale) is not elected, however long
//!   the wait, unless an unclean election is asked for explicitly (KIP-966's point about the
//!   last known ISR).
//! * ISR changes come from the leader only, as compare-and-set on its epoch and the ISR version;
//!   a repeat of the change just made is answered as a success (the leader lost the answer).
//!   Every change of the state bumps `isr_version`, and so does refusing a proposal made at the
//!   current version (say it adds a broker that is down): the leader resends proposals whose
//!   answer is late, so a copy of a refused one may arrive later, when it would pass, while the
//!   leader already learned of the refusal. The bump makes every copy stale, and the push of the
//!   new version is what ends the proposal at the leader.

use super::{BrokerId, LeaderEpoch};

/// The controller's record of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionState {
    /// In preference order.
    pub replicas: Vec<BrokerId>,
    /// `None` while the shard is offline.
    pub leader: Option<BrokerId>,
    pub leader_epoch: LeaderEpoch,
    /// In replica order; never empty (while offline: the last ISR, the old leader included).
    pub isr: Vec<BrokerId>,
    pub isr_version: u64,
}

/// A leader chosen by [`PartitionState::elect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub leader: BrokerId,
    pub epoch: LeaderEpoch,
    pub isr: Vec<BrokerId>,
    /// Unclean: the leader was not in the ISR, so committed entries may be lost.
    pub possibly_lost: bool,
}

/// What [`PartitionState::broker_down`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownOutcome {
    /// The broker was in no ISR role here (or the shard is offline, keeping its last ISR).
    Unchanged,
    /// A follower left the ISR.
    IsrShrunk,
    /// The leader went down and this one was elected.
    Elected(Election),
    /// The leader went down and no ISR member is live: no leader until one is.
    Offline,
}

/// Why [`PartitionState::alter_isr`] refused a proposal. The ISR is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The proposer does not lead in this epoch (any more).
    FencedLeaderEpoch { current: LeaderEpoch },
    /// The proposal replaces an older ISR version: the leader learns the current one from the
    /// controller's push.
    StaleVersion { current: u64 },
    /// The proposed ISR leaves out the leader.
    LeaderNotInIsr,
    /// Not a replica of this shard.
    NotAReplica(BrokerId),
    /// A broker the controller considers down cannot join the ISR, nor can one whose process
    /// is not the one the leader heard from (it restarted since, maybe with less).
    IneligibleReplica(BrokerId),
}

pub use shardq_protocol::may_join;

impl PartitionState {
    /// A new shard: the first replica leads in epoch 0, every replica in the ISR.
    pub fn new(replicas: Vec<BrokerId>) -> Self {
        PartitionState {
            leader: replicas.first().copied(),
            leader_epoch: 0,
            isr: replicas.clone(),
            isr_version: 0,
            replicas,
        }
    }

    fn in_replica_order(&self, mut pick: impl FnMut(BrokerId) -> bool) -> Vec<BrokerId> {
        self.replicas.iter().copied().filter(|&r| pick(r)).collect()
    }

    /// The leader to elect now, given which brokers are live, in the next epoch: the first live
    /// ISR member in replica order; failing that, with `unclean`, the first live replica
    /// (`possibly_lost`, and the ISR is it alone). `None` when nobody qualifies. Changes
    /// nothing: [`PartitionState::apply`] does.
    pub fn elect(&self, live: impl Fn(BrokerId) -> bool, unclean: bool) -> Option<Election> {
        let epoch = self.leader_epoch + 1;
        if let Some(leader) = self
            .replicas
            .iter()
            .copied()
            .find(|&r| live(r) && self.isr.contains(&r))
        {
            let isr = self.in_replica_order(|r| live(r) && self.isr.contains(&r));
            return Some(Election {
                leader,
                epoch,
                isr,
                possibly_lost: false,
            });
        }
        if !unclean {
            return None;
        }
        let leader = self.replicas.iter().copied().find(|&r| live(r))?;
        Some(Election {
            leader,
            epoch,
            isr: vec![leader],
            possibly_lost: true,
        })
    }

    /// Records an election.
    pub fn apply(&mut self, election: &Election) {
        self.leader = Some(election.leader);
        self.leader_epoch = election.epoch;
        self.isr = election.isr.clone();
        self.isr_version += 1;
    }

    /// Broker `id` is down (its session expired, or it restarted: a new incarnation counts as
    /// down first). It leaves the ISR; if it led, a live ISR member is elected (clean only), or
    /// the shard goes offline keeping its last ISR. While offline nothing changes. `live` says
    /// which other brokers are live.
    pub fn broker_down(&mut self, id: BrokerId, live: impl Fn(BrokerId) -> bool) -> DownOutcome {
        match self.leader {
            Some(leader) if leader == id => match self.elect(|r| r != id && live(r), false) {
                Some(election) => {
                    self.apply(&election);
                    DownOutcome::Elected(election)
                }
                None => {
                    self.leader = None;
                    self.isr_version += 1;
                    DownOutcome::Offline
                }
            },
            Some(_) if self.isr.contains(&id) => {
                self.isr.retain(|&r| r != id);
                self.isr_version += 1;
                DownOutcome::IsrShrunk
            }
            _ => DownOutcome::Unchanged,
        }
    }

    /// While offline, elects a leader if one qualifies now (e.g. an ISR member came back), and
    /// records it. `None` when the shard has a leader or nobody qualifies.
    pub fn restore_leader(
        &mut self,
        live: impl Fn(BrokerId) -> bool,
        unclean: bool,
    ) -> Option<Election> {
        if self.leader.is_some() {
            return None;
        }
        let election = self.elect(live, unclean)?;
        self.apply(&election);
        Some(election)
    }

    /// The leader's proposal to replace ISR version `isr_version` by `proposed`, compare-and-set:
    /// refused from anyone but the leader of the current epoch, against an older version, when
    /// it leaves out the leader or names a non-replica, or when it adds a broker that may not
    /// join (`may_join`: see [`may_join`]). A repeat of the change that made the current
    /// version succeeds again without changing anything (it adds nobody). Returns the ISR version now in force. Refusing a proposal made at the
    /// current version bumps `isr_version` (the ISR is unchanged): the caller pushes the state
    /// to the leader as after any change, so the leader learns the proposal is dead.
    pub fn alter_isr(
        &mut self,
        from_leader: BrokerId,
        leader_epoch: LeaderEpoch,
        isr_version: u64,
        proposed: impl IntoIterator<Item = BrokerId>,
        may_join: impl Fn(BrokerId) -> bool,
    ) -> Result<u64, Reject> {
        if self.leader != Some(from_leader) || leader_epoch != self.leader_epoch {
            return Err(Reject::FencedLeaderEpoch {
                current: self.leader_epoch,
            });
        }
        let proposed: Vec<BrokerId> = proposed.into_iter().collect();
        let ordered = self.in_replica_order(|r| proposed.contains(&r));
        if isr_version != self.isr_version {
            if isr_version + 1 == self.isr_version && ordered == self.isr {
                return Ok(self.isr_version);
            }
            return Err(Reject::StaleVersion {
                current: self.isr_version,
            });
        }
        let invalid = if let Some(&r) = proposed.iter().find(|r| !self.replicas.contains(r)) {
            Some(Reject::NotAReplica(r))
        } else if !proposed.contains(&from_leader) {
            Some(Reject::LeaderNotInIsr)
        } else {
            ordered
                .iter()
                .find(|&&r| !self.isr.contains(&r) && !may_join(r))
                .map(|&r| Reject::IneligibleReplica(r))
        };
        if let Some(reject) = invalid {
            self.isr_version += 1;
            return Err(reject);
        }
        let proposed = ordered;
        if proposed != self.isr {
            self.isr = proposed;
            self.isr_version += 1;
        }
        Ok(self.isr_version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: BrokerId) -> bool {
        true
    }

    #[test]
    fn elections_prefer_the_first_live_isr_member() {
        let mut s = PartitionState::new(vec![1, 2, 3]);
        assert_eq!(s.leader, Some(1));
        s.isr = vec![1, 3];
        let e = s.elect(|r| r != 1, false).expect("3 is live");
        assert_eq!(
            e,
            Election {
                leader: 3,
                epoch: 1,
                isr: vec![3],
                possibly_lost: false
            }
        );
        s.apply(&e);
        assert_eq!((s.leader, s.leader_epoch, s.isr_version), (Some(3), 1, 1));
    }

    #[test]
    fn a_down_follower_leaves_the_isr_and_a_down_leader_is_replaced() {
        let mut s = PartitionState::new(vec![1, 2, 3]);
        assert_eq!(s.broker_down(2, |r| r != 2), DownOutcome::IsrShrunk);
        assert_eq!(s.isr, vec![1, 3]);
        assert_eq!(s.broker_down(2, |r| r != 2), DownOutcome::Unchanged);
        match s.broker_down(1, |r| r == 3) {
            DownOutcome::Elected(e) => assert_eq!((e.leader, e.epoch), (3, 1)),
            other => panic!("expected an election, got {other:?}"),
        }
        assert_eq!(s.isr, vec![3]);
        assert_eq!(s.isr_version, 2);
    }

    #[test]
    fn all_isr_down_waits_for_an_isr_member_unless_unclean() {
        // 2 and 3 fell out of the ISR earlier (they lag); then the leader 1 goes down.
        let mut s = PartitionState::new(vec![1, 2, 3]);
        s.isr = vec![1];
        assert_eq!(s.broker_down(1, |r| r != 1), DownOutcome::Offline);
        assert_eq!((s.leader, s.isr.clone()), (None, vec![1]));
        // 2 and 3 are live and stale: no clean election, however often asked.
        assert_eq!(s.restore_leader(|r| r != 1, false), None);
        assert_eq!(s.broker_down(2, |r| r == 3), DownOutcome::Unchanged);
        assert_eq!(s.isr, vec![1], "offline keeps the last ISR");
        // Explicitly unclean: 2 (first live replica), data may be lost.
        let unclean = s.elect(|r| r != 1, true).expect("2 is live");
        assert_eq!(
            unclean,
            Election {
                leader: 2,
                epoch: 1,
                isr: vec![2],
                possibly_lost: true
            }
        );
        // The old leader comes back: it leads again, in the next epoch.
        let e = s.restore_leader(all, false).expect("1 is back");
        assert_eq!((e.leader, e.epoch, e.possibly_lost), (1, 1, false));
        assert_eq!(s.isr, vec![1]);
    }

    #[test]
    fn a_leader_down_with_another_isr_member_down_too_keeps_both() {
        let mut s = PartitionState::new(vec![1, 2, 3]);
        s.isr = vec![1, 2];
        // Both 1 and 2 are down, 1's expiry is handled first: nobody live in the ISR.
        assert_eq!(s.broker_down(1, |r| r == 3), DownOutcome::Offline);
        assert_eq!(s.isr, vec![1, 2]);
        let e = s.restore_leader(|r| r != 1, false).expect("2 is back");
        assert_eq!((e.leader, e.isr), (2, vec![2]));
    }

    #[test]
    fn alter_isr_is_a_compare_and_set() {
        let mut s = PartitionState::new(vec![1, 2, 3]);
        assert_eq!(s.alter_isr(1, 0, 0, [1, 2], all), Ok(1));
        assert_eq!(s.isr, vec![1, 2]);
        // The same proposal again (its answer was lost): success, nothing changes.
        assert_eq!(s.alter_isr(1, 0, 0, [2, 1], all), Ok(1));
        assert_eq!(s.isr_version, 1);
        // Another proposal from the old version: refused.
        assert_eq!(
            s.alter_isr(1, 0, 0, [1], all),
            Err(Reject::StaleVersion { current: 1 })
        );
        assert_eq!(
            s.alter_isr(2, 0, 1, [1, 2], all),
            Err(Reject::FencedLeaderEpoch { current: 0 })
        );
        assert_eq!(
            s.alter_isr(1, 1, 1, [1, 2], all),
            Err(Reject::FencedLeaderEpoch { current: 0 })
        );
        // Invalid proposals at the current version are refused, and the version moves on so that
        // no copy of them can pass later.
        assert_eq!(
            s.alter_isr(1, 0, 1, [2, 3], all),
            Err(Reject::LeaderNotInIsr)
        );
        assert_eq!(s.isr_version, 2);
        assert_eq!(
            s.alter_isr(1, 0, 2, [1, 4], all),
            Err(Reject::NotAReplica(4))
        );
        assert_eq!(s.isr_version, 3);
        assert_eq!(
            s.alter_isr(1, 0, 3, [1, 2, 3], |r| r != 3),
            Err(Reject::IneligibleReplica(3))
        );
        assert_eq!((s.isr.clone(), s.isr_version), (vec![1, 2], 4));
        // 3 is back: the copy of the refused proposal is stale; a new one passes.
        assert_eq!(
            s.alter_isr(1, 0, 3, [1, 2, 3], all),
            Err(Reject::StaleVersion { current: 4 })
        );
        assert_eq!(s.alter_isr(1, 0, 4, [1, 2, 3], |r| r != 2), Ok(5));
        assert_eq!(s.isr, vec![1, 2, 3]);
        // After an election the old leader's proposals are fenced.
        s.broker_down(1, |r| r != 1);
        assert_eq!(
            s.alter_isr(1, 0, 6, [1, 2], all),
            Err(Reject::FencedLeaderEpoch { current: 1 })
        );
    }
}
