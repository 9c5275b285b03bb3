//! The leader's view of one shard's replicas (placeholder until the model branch lands).
use std::collections::{BTreeMap, BTreeSet};

use shardq_protocol::{BrokerId, Offset};

use super::LeaderEpoch;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckCheck {
    Acked,
    Wait,
    NotEnoughReplicas { isr: usize, min: usize },
}

#[derive(Clone, Debug, Default)]
pub struct Progress {
    pub end: Option<Offset>,
    pub last_caught_up_ms: u64,
}

#[derive(Clone, Debug)]
pub struct LeaderState {
    pub leader: BrokerId,
    pub leader_epoch: LeaderEpoch,
    pub replicas: Vec<BrokerId>,
    pub isr: BTreeSet<BrokerId>,
    pub isr_version: u64,
    pub pending: Option<BTreeSet<BrokerId>>,
    pub min_insync: usize,
    pub followers: BTreeMap<BrokerId, Progress>,
    hw: Offset,
    leader_end: Offset,
    epoch_start: Offset,
}

impl LeaderState {
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
        let followers = replicas
            .iter()
            .filter(|r| **r != leader)
            .map(|r| {
                (
                    *r,
                    Progress {
                        end: None,
                        last_caught_up_ms: now_ms,
                    },
                )
            })
            .collect();
        let mut s = LeaderState {
            leader,
            leader_epoch,
            replicas,
            isr,
            isr_version,
            pending: None,
            min_insync,
            followers,
            hw: start_hw.min(leader_end),
            leader_end,
            epoch_start: leader_end,
        };
        s.recompute();
        s
    }

    fn maximal_isr(&self) -> BTreeSet<BrokerId> {
        let mut m = self.isr.clone();
        if let Some(p) = &self.pending {
            m.extend(p.iter().copied());
        }
        m
    }

    fn recompute(&mut self) {
        let mut hw = self.leader_end;
        for id in self.maximal_isr() {
            if id == self.leader {
                continue;
            }
            let end = self.followers.get(&id).and_then(|p| p.end).unwrap_or(0);
            hw = hw.min(end);
        }
        if hw > self.hw {
            self.hw = hw;
        }
    }

    pub fn on_fetch(
        &mut self,
        follower: BrokerId,
        fetch_offset: Offset,
        leader_end: Offset,
        now_ms: u64,
    ) {
        self.leader_end = leader_end;
        if let Some(p) = self.followers.get_mut(&follower) {
            p.end = Some(fetch_offset);
            if fetch_offset >= leader_end {
                p.last_caught_up_ms = now_ms;
            }
        }
        self.recompute();
    }

    pub fn on_append(&mut self, leader_end: Offset) {
        self.leader_end = leader_end;
        self.recompute();
    }

    pub fn hw(&self) -> Offset {
        self.hw
    }

    pub fn can_ack(&self, end: Offset) -> AckCheck {
        if self.isr.len() < self.min_insync {
            return AckCheck::NotEnoughReplicas {
                isr: self.isr.len(),
                min: self.min_insync,
            };
        }
        if end <= self.hw {
            AckCheck::Acked
        } else {
            AckCheck::Wait
        }
    }

    pub fn isr_change(
        &mut self,
        now_ms: u64,
        lag_max_ms: u64,
        leader_end: Offset,
    ) -> Option<BTreeSet<BrokerId>> {
        if self.pending.is_some() {
            return None;
        }
        self.leader_end = leader_end;
        let mut next = self.isr.clone();
        for (id, p) in &self.followers {
            let caught = now_ms.saturating_sub(p.last_caught_up_ms) <= lag_max_ms;
            if self.isr.contains(id) && !caught {
                next.remove(id);
            }
            if !self.isr.contains(id)
                && p.end.is_some_and(|e| e >= self.hw && e >= self.epoch_start)
            {
                next.insert(*id);
            }
        }
        if next == self.isr {
            return None;
        }
        self.pending = Some(next.clone());
        Some(next)
    }

    pub fn isr_confirmed(&mut self, isr: BTreeSet<BrokerId>, version: u64) {
        self.isr = isr;
        self.isr_version = version;
        self.pending = None;
        self.recompute();
    }

    pub fn update_from_controller(
        &mut self,
        replicas: Vec<BrokerId>,
        isr: BTreeSet<BrokerId>,
        version: u64,
        min_insync: usize,
        leader_end: Offset,
        now_ms: u64,
    ) {
        for r in &replicas {
            if *r != self.leader {
                self.followers.entry(*r).or_insert(Progress {
                    end: None,
                    last_caught_up_ms: now_ms,
                });
            }
        }
        self.followers.retain(|id, _| replicas.contains(id));
        self.replicas = replicas;
        if version > self.isr_version {
            self.isr = isr;
            self.isr_version = version;
            self.pending = None;
        }
        self.min_insync = min_insync;
        self.leader_end = leader_end;
        self.recompute();
    }

    pub fn isr_rejected(&mut self) {
        self.pending = None;
    }
}
