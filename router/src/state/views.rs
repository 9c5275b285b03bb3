//! What operators see: the broker list and the cluster status.

use std::collections::BTreeMap;

use shardq_protocol::{BrokerAddr, BrokerId, BrokerInfo, ClusterStatus};
use tokio::time::Instant;

use super::State;
use crate::store::MoveRecord;

impl State {
    pub fn brokers(&self, now: Instant) -> Vec<BrokerInfo> {
        let mut counts: BTreeMap<BrokerId, u32> = BTreeMap::new();
        for owner in self.owners.values() {
            *counts.entry(*owner).or_insert(0) += 1;
        }
        self.members
            .iter()
            .map(|(id, m)| BrokerInfo {
                addr: BrokerAddr {
                    id: *id,
                    addr: m.addr.clone(),
                },
                weight: m.weight,
                status: m.shown_status(),
                last_seen_ms: u64::try_from(now.saturating_duration_since(m.last_seen).as_millis())
                    .unwrap_or(u64::MAX),
                shards: counts.get(id).copied().unwrap_or(0),
                degraded: m.report.degraded.clone(),
            })
            .collect()
    }

    pub fn status(&self, now: Instant) -> ClusterStatus {
        ClusterStatus {
            epoch: self.epoch,
            brokers: self.brokers(now),
            topics: self.topic_list(),
            shards: self
                .owners
                .keys()
                .map(|s| (self.shown_route(s), self.report(s)))
                .collect(),
            moves: self
                .moves
                .values()
                .chain(self.history.iter())
                .map(MoveRecord::progress)
                .collect(),
            scaling: Vec::new(),
            pending_drops: self.drops.keys().cloned().collect(),
        }
    }
}
