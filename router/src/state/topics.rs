//! Topics and routes: creating a topic (owners of its new shards), listing and describing
//! topics, the clients' routing table and the proxy's owner lookup.

use shardq_protocol::{
    validate_topic, BrokerAddr, BrokerStatus, ErrorKind, RoutingTable, ShardId, ShardReport,
    ShardRoute, TopicDescription, TopicInfo, MAX_PARTITIONS,
};

use super::{Created, State};
use crate::store::Op;

impl State {
    /// Validates and creates a topic. New shards take their owner from `Ring::place` over every
    /// shard of every topic with the Up members; existing shards keep theirs. Bumps the epoch.
    /// The state is changed only if `persist(ops)` succeeds.
    pub fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
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
        let info = TopicInfo {
            name: name.to_string(),
            partitions,
        };
        if let Some(&existing) = self.topics.get(name) {
            return if existing == partitions {
                Ok(Created::Existing(info))
            } else {
                Err(ErrorKind::TopicExists {
                    topic: name.to_string(),
                    partitions: existing,
                })
            };
        }
        let new: Vec<ShardId> = (1..=partitions).map(|p| ShardId::new(name, p)).collect();
        // The desired placement where that owner is up (so the rebalancer has nothing to move);
        // a shard whose desired owner is down goes to the ring of the Up brokers instead (a new
        // shard must be writable at once) and moves when its desired owner is back.
        let desired = self.desired(&new)?;
        let fallback = self.up_ring(None)?.place(&self.all_keys(&new));
        let mut owners = Vec::with_capacity(new.len());
        for shard in &new {
            let owner = desired
                .get(&shard.key())
                .copied()
                .filter(|id| {
                    self.members
                        .get(id)
                        .is_some_and(|m| m.status == BrokerStatus::Up)
                })
                .or_else(|| fallback.get(&shard.key()).copied())
                .ok_or_else(|| no_broker_up(name))?;
            owners.push((shard.clone(), owner));
        }
        let epoch = self.epoch + 1;
        let mut ops = vec![
            Op::Epoch(epoch),
            Op::PutTopic {
                name: name.to_string(),
                partitions,
            },
        ];
        ops.extend(owners.iter().map(|(shard, owner)| Op::PutOwner {
            shard: shard.clone(),
            owner: *owner,
        }));
        persist(&ops)?;
        self.epoch = epoch;
        self.topics.insert(name.to_string(), partitions);
        self.owners.extend(owners.iter().cloned());
        let pushes = self.pushes_for(owners.iter().map(|(_, o)| *o));
        Ok(Created::New { info, pushes })
    }

    fn route(&self, shard: &ShardId) -> ShardRoute {
        let owner = self.owners.get(shard).and_then(|id| {
            let m = self.members.get(id).filter(|m| m.serving())?;
            Some(BrokerAddr {
                id: *id,
                addr: m.addr.clone(),
            })
        });
        ShardRoute {
            shard: shard.clone(),
            owner,
            moving: self.moves.values().any(|m| &m.shard == shard),
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

    fn shards_of(&self, topic: &str, partitions: u32) -> impl Iterator<Item = ShardId> + '_ {
        let topic = topic.to_string();
        (1..=partitions).map(move |p| ShardId::new(topic.clone(), p))
    }

    /// Where a shard lives, for the proxy: its owner, or why it cannot be reached.
    pub fn owner_for(&self, shard: &ShardId) -> Result<BrokerAddr, ErrorKind> {
        let partitions = *self
            .topics
            .get(&shard.topic)
            .ok_or_else(|| ErrorKind::UnknownTopic {
                topic: shard.topic.clone(),
            })?;
        if shard.partition == 0 || shard.partition > partitions {
            return Err(ErrorKind::UnknownShard {
                shard: shard.key(),
                reason: format!("topic {} has partitions P1..P{partitions}", shard.topic),
            });
        }
        let id = *self.owners.get(shard).ok_or_else(|| ErrorKind::Internal {
            reason: format!("{shard} has no recorded owner"),
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
                    let partitions = *self
                        .topics
                        .get(t)
                        .ok_or_else(|| ErrorKind::UnknownTopic { topic: t.clone() })?;
                    Ok(TopicInfo {
                        name: t.clone(),
                        partitions,
                    })
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
            .map(|(name, &partitions)| TopicInfo {
                name: name.clone(),
                partitions,
            })
            .collect()
    }

    pub fn describe(&self, name: &str) -> Result<TopicDescription, ErrorKind> {
        let partitions = *self
            .topics
            .get(name)
            .ok_or_else(|| ErrorKind::UnknownTopic {
                topic: name.to_string(),
            })?;
        Ok(TopicDescription {
            topic: TopicInfo {
                name: name.to_string(),
                partitions,
            },
            shards: self
                .shards_of(name, partitions)
                .map(|s| (self.shown_route(&s), self.report(&s)))
                .collect(),
        })
    }
}

fn no_broker_up(topic: &str) -> ErrorKind {
    ErrorKind::Unavailable {
        what: format!("creating topic {topic:?}"),
        reason: "no broker is up to own its shards; start a broker with --router pointing here"
            .into(),
    }
}
