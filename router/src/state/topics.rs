//! Topics and routes: creating a topic (owners of its new shards), listing and describing
//! topics, the clients' routing table and the proxy's owner lookup.

use shardq_protocol::{
    validate_topic, BrokerAddr, BrokerId, BrokerStatus, ErrorKind, Retention, RoutingTable,
    ShardId, ShardReport, ShardRoute, TopicDescription, TopicInfo, MAX_PARTITIONS,
    MAX_REPLICATION_FACTOR,
};

use super::{Created, Pushes, Replicas, State};
use crate::store::{Op, TopicConfig};

impl State {
    /// Validates and creates a topic. New shards take their owner from `Ring::place` over every
    /// shard of every topic with the Up members; existing shards keep theirs. Bumps the epoch.
    /// The state is changed only if `persist(ops)` succeeds.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        min_insync: Option<u32>,
        retention: Retention,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Created, ErrorKind> {
        validate_topic(name).map_err(|reason| ErrorKind::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "topic {name:?}: {partitions} partitions asked; a topic has 1 to {MAX_PARTITIONS}"
                ),
            });
        }
        if let Some(existing) = self.topics.get(name) {
            let same = existing.partitions == partitions
                && replication_factor.is_none_or(|r| r == existing.replication_factor)
                && min_insync.is_none_or(|m| m == existing.min_insync)
                && (retention.is_forever() || retention == existing.retention);
            return if same {
                Ok(Created::Existing(topic_info(name, existing)))
            } else {
                Err(ErrorKind::TopicExists {
                    topic: name.to_string(),
                    partitions: existing.partitions,
                })
            };
        }
        // A deleted topic of this name is not gone until every copy is: a broker holding one
        // would serve it as the new topic's shard.
        if let Some((b, s)) = self.pending_drops_of(name).first() {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "topic {name:?} is still being deleted: broker {b} has not dropped its copy                      of {s} yet (it drops it when it is up); retry then"
                ),
            });
        }
        let up = self.up_brokers();
        let mut config =
            self.topic_config(name, partitions, replication_factor, min_insync, up.len())?;
        config.retention = check_retention(name, retention)?;
        let info = topic_info(name, &config);
        let new: Vec<ShardId> = (1..=partitions).map(|p| ShardId::new(name, p)).collect();
        let placed = self.place_new(name, &new, config.replication_factor as usize, &up)?;
        let pushes = self.commit_topic(name, config, placed, persist)?;
        Ok(Created::New { info, pushes })
    }

    /// Records topic `name` as `config` with its newly placed shards (a creation, or a topic
    /// grown), at a new epoch: persisted first, then applied. The assignments to push.
    pub(super) fn commit_topic(
        &mut self,
        name: &str,
        config: TopicConfig,
        placed: Vec<(ShardId, Replicas)>,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Pushes, ErrorKind> {
        let epoch = self.epoch + 1;
        let mut ops = vec![
            Op::Epoch(epoch),
            Op::PutTopic {
                name: name.to_string(),
                config,
            },
        ];
        ops.extend(placement_ops(&placed));
        persist(&ops)?;
        self.epoch = epoch;
        self.topics.insert(name.to_string(), config);
        Ok(self.put_placed(placed))
    }

    /// Topic `name`'s settings, or "unknown topic".
    pub(crate) fn topic_config_of(&self, name: &str) -> Result<TopicConfig, ErrorKind> {
        self.topics
            .get(name)
            .copied()
            .ok_or_else(|| ErrorKind::UnknownTopic {
                topic: name.to_string(),
            })
    }

    /// Replica sets for the new shards `new` of topic `name` (a new topic's, or a grown one's),
    /// `rf` replicas each from the Up brokers `up`. The leader is the desired placement's owner
    /// where that broker is up (so the rebalancer has nothing to move); a shard whose desired
    /// owner is down goes to the ring of the Up brokers instead (a new shard must be writable
    /// at once) and moves when its desired owner is back.
    pub(super) fn place_new(
        &self,
        name: &str,
        new: &[ShardId],
        rf: usize,
        up: &[BrokerId],
    ) -> Result<Vec<(ShardId, Replicas)>, ErrorKind> {
        let desired = self.desired(new)?;
        let fallback = self.up_ring(None)?.place(&self.all_keys(new));
        let desired_sets = self.desired_replicas(new, rf)?;
        let up_ring = self.up_ring(None)?;
        let mut placed = Vec::with_capacity(new.len());
        for shard in new {
            let key = shard.key();
            let owner = desired
                .get(&key)
                .copied()
                .filter(|id| up.contains(id))
                .or_else(|| fallback.get(&key).copied())
                .ok_or_else(|| no_broker_up(name))?;
            // Followers: the ring's balanced choice where those brokers are up, else the next
            // distinct brokers clockwise that are up.
            let mut replicas = vec![owner];
            let candidates = desired_sets
                .get(&key)
                .into_iter()
                .flatten()
                .copied()
                .chain(up_ring.replicas(&key, up.len()));
            for b in candidates {
                if replicas.len() == rf {
                    break;
                }
                if up.contains(&b) && !replicas.contains(&b) {
                    replicas.push(b);
                }
            }
            let r = Replicas {
                isr: replicas.clone(),
                replicas,
                leader: Some(owner),
                leader_epoch: 1,
                isr_version: 0,
            };
            placed.push((shard.clone(), r));
        }
        Ok(placed)
    }

    /// Takes in placed shards (already persisted); the assignments to push to their brokers.
    pub(super) fn put_placed(&mut self, placed: Vec<(ShardId, Replicas)>) -> Pushes {
        let mut touched = Vec::new();
        for (shard, r) in placed {
            touched.extend(r.replicas.iter().copied());
            self.put_replicas(&shard, r);
        }
        self.pushes_for(touched)
    }

    /// The brokers up and not leaving: where new shards may go.
    pub(super) fn up_brokers(&self) -> Vec<BrokerId> {
        self.members
            .iter()
            .filter(|(_, m)| m.status == BrokerStatus::Up && !m.leaving)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The settings of a new topic: the replication factor asked (or the default, capped at
    /// the brokers up), refused above the brokers up; `min_insync` asked (or a majority).
    fn topic_config(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
        min_insync: Option<u32>,
        up: usize,
    ) -> Result<TopicConfig, ErrorKind> {
        let up = u32::try_from(up).unwrap_or(u32::MAX);
        if up == 0 {
            return Err(no_broker_up(name));
        }
        let rf = match replication_factor {
            Some(r) if r == 0 || r > MAX_REPLICATION_FACTOR => {
                return Err(ErrorKind::BadRequest {
                    reason: format!(
                        "topic {name:?}: replication factor {r} asked; it must be 1 to {MAX_REPLICATION_FACTOR}"
                    ),
                })
            }
            Some(r) if r > up => {
                return Err(ErrorKind::BadRequest {
                    reason: format!(
                        "topic {name:?}: replication factor {r} asked, but only {up} broker(s) are up; start more brokers or ask for at most {up}"
                    ),
                })
            }
            Some(r) => r,
            None => self.default_replication_factor.clamp(1, MAX_REPLICATION_FACTOR).min(up),
        };
        let min_insync = match min_insync {
            Some(m) if m == 0 || m > rf => {
                return Err(ErrorKind::BadRequest {
                    reason: format!(
                        "topic {name:?}: --min-insync-replicas {m} asked with replication factor {rf}; it must be 1 to {rf}"
                    ),
                })
            }
            Some(m) => m,
            None => rf / 2 + 1,
        };
        Ok(TopicConfig {
            partitions,
            replication_factor: rf,
            min_insync,
            retention: Retention::default(),
        })
    }

    fn route(&self, shard: &ShardId) -> ShardRoute {
        let r = self.replicas_of(shard);
        let leader = r.as_ref().and_then(|r| r.leader);
        let owner = leader.and_then(|id| {
            let m = self.members.get(&id).filter(|m| m.serving())?;
            Some(BrokerAddr {
                id,
                addr: m.addr.clone(),
            })
        });
        let r = r.unwrap_or_else(|| Replicas::sole(0, 0));
        ShardRoute {
            shard: shard.clone(),
            owner,
            moving: self.moves.values().any(|m| &m.shard == shard),
            leader_epoch: r.leader_epoch,
            replicas: r.replicas,
            isr: r.isr,
        }
    }

    /// The route shown to operators (describe, status): like [`State::route`], but a shard on
    /// a down broker still names that owner (the broker list says it is down), so the
    /// operator sees whose return the shard waits for. Clients route by the metadata table.
    pub(super) fn shown_route(&self, shard: &ShardId) -> ShardRoute {
        let mut route = self.route(shard);
        if route.owner.is_none() {
            route.owner = self.owners.get(shard).and_then(|id| {
                Some(BrokerAddr {
                    id: *id,
                    addr: self.members.get(id)?.addr.clone(),
                })
            });
        }
        route
    }

    /// The last report of `shard` from its owner (even if the owner is Down now: it is the last
    /// thing known).
    pub(super) fn report(&self, shard: &ShardId) -> Option<ShardReport> {
        let owner = self.owners.get(shard)?;
        self.members
            .get(owner)?
            .report
            .shards
            .iter()
            .find(|r| &r.shard == shard)
            .cloned()
    }

    pub(crate) fn shards_of(
        &self,
        topic: &str,
        partitions: u32,
    ) -> impl Iterator<Item = ShardId> + '_ {
        let topic = topic.to_string();
        (1..=partitions).map(move |p| ShardId::new(topic.clone(), p))
    }

    /// Where a shard lives, for the proxy: its owner, or why it cannot be reached.
    pub fn owner_for(&self, shard: &ShardId) -> Result<BrokerAddr, ErrorKind> {
        let partitions = self
            .topics
            .get(&shard.topic)
            .ok_or_else(|| ErrorKind::UnknownTopic {
                topic: shard.topic.clone(),
            })?
            .partitions;
        if shard.partition == 0 || shard.partition > partitions {
            return Err(ErrorKind::UnknownShard {
                shard: shard.key(),
                reason: format!("topic {} has partitions P1..P{partitions}", shard.topic),
            });
        }
        let id = self
            .replicas_of(shard)
            .ok_or_else(|| ErrorKind::Internal {
                reason: format!("{shard} has no recorded owner"),
            })?
            .leader
            .ok_or_else(|| ErrorKind::Unavailable {
                what: shard.key(),
                reason: "every in-sync replica is down; it waits for one to return (or `shardq shard elect --unclean`)".into(),
            })?;
        match self.members.get(&id) {
            Some(m) if m.serving() => Ok(BrokerAddr {
                id,
                addr: m.addr.clone(),
            }),
            Some(_) => Err(ErrorKind::Unavailable {
                what: shard.key(),
                reason: format!("its broker {id} is down"),
            }),
            None => Err(ErrorKind::Unavailable {
                what: shard.key(),
                reason: format!("its broker {id} is no longer a member"),
            }),
        }
    }

    pub fn routing_table(&self, topics: &[String]) -> Result<RoutingTable, ErrorKind> {
        let infos: Vec<TopicInfo> = if topics.is_empty() {
            self.topic_list()
        } else {
            let mut names: Vec<&String> = topics.iter().collect();
            names.sort();
            names.dedup();
            names
                .into_iter()
                .map(|t| {
                    let config = self
                        .topics
                        .get(t)
                        .ok_or_else(|| ErrorKind::UnknownTopic { topic: t.clone() })?;
                    Ok(topic_info(t, config))
                })
                .collect::<Result<_, ErrorKind>>()?
        };
        let shards = infos
            .iter()
            .flat_map(|t| self.shards_of(&t.name, t.partitions))
            .map(|s| self.route(&s))
            .collect();
        Ok(RoutingTable {
            epoch: self.epoch,
            topics: infos,
            shards,
        })
    }

    pub fn topic_list(&self) -> Vec<TopicInfo> {
        self.topics
            .iter()
            .map(|(name, config)| topic_info(name, config))
            .collect()
    }

    pub fn describe(&self, name: &str) -> Result<TopicDescription, ErrorKind> {
        let config = self
            .topics
            .get(name)
            .ok_or_else(|| ErrorKind::UnknownTopic {
                topic: name.to_string(),
            })?;
        Ok(TopicDescription {
            topic: topic_info(name, config),
            shards: self
                .shards_of(name, config.partitions)
                .map(|s| (self.shown_route(&s), self.report(&s)))
                .collect(),
        })
    }
}

pub(super) fn topic_info(name: &str, c: &TopicConfig) -> TopicInfo {
    TopicInfo {
        name: name.to_string(),
        partitions: c.partitions,
        replication_factor: c.replication_factor,
        min_insync: c.min_insync,
        retention: c.retention,
    }
}

/// Retention limits of 0 would delete everything as it is written: refused.
pub(super) fn check_retention(topic: &str, r: Retention) -> Result<Retention, ErrorKind> {
    if r.ms == Some(0) || r.bytes == Some(0) {
        return Err(ErrorKind::BadRequest {
            reason: format!(
                "topic {topic:?}: a retention of 0 would delete every record as it is written; \
                 give a positive --retention-ms / --retention-bytes, or none to keep everything"
            ),
        });
    }
    Ok(r)
}

pub(super) fn no_broker_up(topic: &str) -> ErrorKind {
    ErrorKind::Unavailable {
        what: format!("creating topic {topic:?}"),
        reason: "no broker is up to own its shards; start a broker with --router pointing here"
            .into(),
    }
}

/// The store operations that record placed shards (leader and replica set of each).
pub(super) fn placement_ops(placed: &[(ShardId, Replicas)]) -> Vec<Op> {
    let mut ops = Vec::with_capacity(placed.len() * 2);
    for (shard, r) in placed {
        ops.push(Op::PutOwner {
            shard: shard.clone(),
            owner: r.replicas[0],
        });
        ops.push(Op::PutReplicas {
            shard: shard.clone(),
            replicas: r.clone(),
        });
    }
    ops
}
