//! A topic after its creation: deleting it (routes go at once, every replica's copy becomes a
//! pending drop, the name is free again once every copy is gone) and growing it (new shards
//! placed like a new topic's).

use std::collections::BTreeSet;

use shardq_protocol::{BrokerId, ErrorKind, ShardId, TopicInfo, MAX_PARTITIONS};

use super::{Pushes, State};
use crate::store::{Op, PendingDrop};

/// Outcome of [`State::delete_topic`].
#[derive(Debug)]
pub struct Deleted {
    pub partitions: u32,
    /// Replica copies to delete (pending drops, sent by the rebalancer).
    pub copies: u32,
}

impl State {
    /// Deletes topic `name`: its config and routes now, and a pending drop of every replica's
    /// copy (retried until each broker answers; a broker that is down drops it when it is
    /// back). Refused while a shard of the topic is moving. Bumps the epoch.
    pub fn delete_topic(
        &mut self,
        name: &str,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Deleted, ErrorKind> {
        let config = self.topic_config_of(name)?;
        if let Some(m) = self.moves.values().find(|m| m.shard.topic == name) {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "topic {name:?} cannot be deleted while its shard {} is moving (move #{}); \
                     retry once it ends (`shardq wait-balanced`)",
                    m.shard, m.move_id
                ),
            });
        }
        let shards: Vec<ShardId> = (1..=config.partitions)
            .map(|p| ShardId::new(name, p))
            .collect();
        let mut copies: BTreeSet<(BrokerId, ShardId)> = BTreeSet::new();
        for s in &shards {
            let holders = self
                .replicas_of(s)
                .map(|r| r.replicas)
                .unwrap_or_default()
                .into_iter()
                .chain(self.owners.get(s).copied());
            for b in holders {
                copies.insert((b, s.clone()));
            }
        }
        let epoch = self.epoch + 1;
        let mut ops = vec![
            Op::Epoch(epoch),
            Op::DeleteTopic {
                name: name.to_string(),
                partitions: config.partitions,
            },
        ];
        ops.extend(copies.iter().map(|(broker, shard)| {
            Op::PutDrop(PendingDrop {
                broker: *broker,
                shard: shard.clone(),
                epoch,
            })
        }));
        persist(&ops)?;
        self.epoch = epoch;
        self.topics.remove(name);
        for s in &shards {
            self.owners.remove(s);
            self.replicas.remove(s);
            self.retry_after.remove(s);
        }
        let n = copies.len();
        for key in copies {
            self.drops.insert(key, epoch);
        }
        Ok(Deleted {
            partitions: config.partitions,
            copies: u32::try_from(n).unwrap_or(u32::MAX),
        })
    }

    /// Copies of topic `name`'s shards that brokers still have to delete (a deleted topic's,
    /// or old copies left by moves): (broker, shard).
    pub fn pending_drops_of(&self, name: &str) -> Vec<(BrokerId, ShardId)> {
        self.drops
            .keys()
            .filter(|(_, s)| s.topic == name)
            .cloned()
            .collect()
    }

    /// Grows topic `name` to `partitions`: the new shards are placed on the Up brokers like a
    /// new topic's, with its replication factor. Asking for its current count changes nothing;
    /// fewer is refused (records are never re-partitioned). Bumps the epoch.
    pub fn alter_partitions(
        &mut self,
        name: &str,
        partitions: u32,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<(TopicInfo, Pushes), ErrorKind> {
        let mut config = self.topic_config_of(name)?;
        if partitions < config.partitions {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "topic {name:?} has {} partitions; it can grow but not shrink to {partitions} \
                     (its records stay in the partitions they were written to)",
                    config.partitions
                ),
            });
        }
        if partitions > MAX_PARTITIONS {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "topic {name:?}: {partitions} partitions asked; a topic has 1 to {MAX_PARTITIONS}"
                ),
            });
        }
        if partitions == config.partitions {
            return Ok((super::topics::topic_info(name, &config), Vec::new()));
        }
        let new: Vec<ShardId> = (config.partitions + 1..=partitions)
            .map(|p| ShardId::new(name, p))
            .collect();
        // Old copies of these shards (an earlier topic of this name) must be gone first, or a
        // broker holding one would serve it as the new shard.
        if let Some((b, s)) = self.drops.keys().find(|(_, s)| new.contains(s)) {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {b} still holds an old copy of {s} (from a deleted topic); \
                     retry once it has dropped it"
                ),
            });
        }
        let up = self.up_brokers();
        let rf = (config.replication_factor as usize).min(up.len());
        if rf == 0 {
            return Err(super::topics::no_broker_up(name));
        }
        let placed = self.place_new(name, &new, rf, &up)?;
        config.partitions = partitions;
        let pushes = self.commit_topic(name, config, placed, persist)?;
        Ok((super::topics::topic_info(name, &config), pushes))
    }

    /// Changes topic `name`'s retention (`Some(None)` lifts a limit); persisted, and applied
    /// by the retention rounds from the next one on.
    pub fn alter_retention(
        &mut self,
        name: &str,
        ms: Option<Option<u64>>,
        bytes: Option<Option<u64>>,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<TopicInfo, ErrorKind> {
        let mut config = self.topic_config_of(name)?;
        let mut retention = config.retention;
        if let Some(ms) = ms {
            retention.ms = ms;
        }
        if let Some(bytes) = bytes {
            retention.bytes = bytes;
        }
        config.retention = super::topics::check_retention(name, retention)?;
        persist(&[Op::PutTopic {
            name: name.to_string(),
            config,
        }])?;
        self.topics.insert(name.to_string(), config);
        Ok(super::topics::topic_info(name, &config))
    }
}
