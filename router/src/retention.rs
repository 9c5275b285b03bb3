//! Retention, purges and group deletion: the router tells each shard's leader what to delete.
//!
//! Retention is driven from here because the router knows every topic's limits and every
//! shard's leader: each round (`--retention-check-ms`) sends one `TrimShards` per leader
//! carrying all the shards it leads of topics with a limit. The leader decides the cut from its
//! own log (whole stored batches, the oldest first, never at or past the high watermark) and
//! its followers take the new log start from their next replica fetch, so every replica ends up
//! holding the same range. While the router is down nothing is deleted, and nothing is lost.
//!
//! A purge is the same request with "everything committed" as the cut, sent at once.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::join_all;
use shardq_protocol::{
    BrokerAddr, ClientError, ErrorKind, Request, Response, ServiceFuture, ShardId, ShardTrim,
    TrimResult, TrimTo,
};
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::service::done;
use crate::Shared;

impl Shared {
    /// `PurgeTopic`: every shard of `name` deletes its committed records now.
    pub(crate) fn purge_topic(self: &Arc<Self>, name: String) -> ServiceFuture {
        let shards = {
            let st = self.state();
            st.topic_config_of(&name)
                .map(|c| st.shards_of(&name, c.partitions).collect::<Vec<_>>())
        };
        let shards = match shards {
            Ok(s) => s,
            Err(e) => return done(Err(e)),
        };
        let shared = self.clone();
        Box::pin(async move {
            let trims = shards
                .into_iter()
                .map(|shard| ShardTrim {
                    shard,
                    to: TrimTo::Before(None),
                })
                .collect();
            let mut results = shared.trim_at_leaders(trims).await;
            results.sort_by(|a, b| a.shard.cmp(&b.shard));
            let deleted: u64 = results
                .iter()
                .filter_map(|r| r.result.as_ref().ok())
                .map(|r| r.deleted)
                .sum();
            info!(topic = %name, deleted, "topic purged");
            Ok(Response::TopicPurged {
                name,
                shards: results,
            })
        })
    }

    /// `DeleteGroup`: refused while the group has live members; otherwise its committed offset
    /// is deleted on every shard (each leader answers once durable and on its in-sync
    /// followers).
    pub(crate) fn delete_group(self: &Arc<Self>, group: String) -> ServiceFuture {
        let live = self
            .groups()
            .describe(&group, tokio::time::Instant::now())
            .map_or(0, |v| v.members.len());
        if live > 0 {
            return done(Err(ErrorKind::BadRequest {
                reason: format!(
                    "consumer group {group:?} has {live} live member(s); stop them (or wait for \
                     their sessions to expire) before deleting it"
                ),
            }));
        }
        // Every shard, not only those the last reports list: a commit may be newer than them.
        let shards: Vec<ShardId> = {
            let st = self.state();
            st.topics
                .iter()
                .flat_map(|(name, c)| st.shards_of(name, c.partitions).collect::<Vec<_>>())
                .collect()
        };
        let shared = self.clone();
        Box::pin(async move {
            let timeout = shared.config.request_timeout;
            let asks = shards.iter().map(|shard| {
                let request = Request::DeleteGroupOffset {
                    shard: shard.clone(),
                    group: group.clone(),
                };
                shared.proxy(request, timeout)
            });
            let answers = join_all(asks).await;
            let mut failed = Vec::new();
            for (shard, a) in shards.iter().zip(answers) {
                if let Err(e) = a {
                    failed.push(format!("{shard}: {e}"));
                }
            }
            if !failed.is_empty() {
                return Err(ErrorKind::Unavailable {
                    what: format!("deleting group {group:?}"),
                    reason: format!(
                        "{} of {} shards could not delete its offset ({}); run it again",
                        failed.len(),
                        shards.len(),
                        failed.join("; ")
                    ),
                });
            }
            info!(%group, shards = shards.len(), "consumer group deleted");
            Ok(Response::GroupDeleted {
                group,
                shards: shards.len() as u32,
            })
        })
    }

    /// Sends each leader the trims of the shards it leads, in one request per leader; a shard
    /// without a reachable leader gets its error.
    async fn trim_at_leaders(self: &Arc<Self>, trims: Vec<ShardTrim>) -> Vec<TrimResult> {
        let mut by_leader: BTreeMap<u32, (BrokerAddr, Vec<ShardTrim>)> = BTreeMap::new();
        let mut results = Vec::new();
        {
            let st = self.state();
            for t in trims {
                match st.owner_for(&t.shard) {
                    Ok(owner) => by_leader
                        .entry(owner.id)
                        .or_insert_with(|| (owner, Vec::new()))
                        .1
                        .push(t),
                    Err(e) => results.push(TrimResult {
                        shard: t.shard,
                        result: Err(e),
                    }),
                }
            }
        }
        let timeout = self.config.request_timeout;
        let sends = by_leader.into_values().map(|(leader, trims)| async move {
            let shards: Vec<ShardId> = trims.iter().map(|t| t.shard.clone()).collect();
            let answer = self
                .pool
                .request(&leader, Request::TrimShards { trims }, timeout)
                .await;
            let error = match answer {
                Ok(Response::Trimmed(r)) => return r,
                Ok(other) => shardq_protocol::unexpected("trimmed", &other),
                Err(ClientError::Server(e)) => e,
                Err(e) => ErrorKind::Unavailable {
                    what: format!("broker {}", leader.id),
                    reason: e.to_string(),
                },
            };
            shards
                .into_iter()
                .map(|shard| TrimResult {
                    shard,
                    result: Err(error.clone()),
                })
                .collect()
        });
        for r in join_all(sends).await {
            results.extend(r);
        }
        results
    }

    /// The trims one retention round asks for: every shard of every topic with a limit.
    fn retention_trims(&self) -> Vec<ShardTrim> {
        let st = self.state();
        let mut trims = Vec::new();
        for (name, c) in &st.topics {
            if c.retention.is_forever() {
                continue;
            }
            let to = TrimTo::Retention {
                ms: c.retention.ms,
                shard_bytes: c.retention.shard_bytes(c.partitions),
            };
            trims.extend(
                st.shards_of(name, c.partitions)
                    .map(|shard| ShardTrim { shard, to }),
            );
        }
        trims
    }
}

/// Applies the topics' retention every `--retention-check-ms` until shutdown.
pub(crate) async fn retention_task(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.retention_check);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Shards whose last trim failed, so a lasting failure is logged once, not every round.
    let mut failing: BTreeMap<ShardId, String> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let trims = shared.retention_trims();
        if trims.is_empty() {
            failing.clear();
            continue;
        }
        for r in shared.trim_at_leaders(trims).await {
            match r.result {
                Ok(range) => {
                    failing.remove(&r.shard);
                    if range.deleted > 0 {
                        debug!(shard = %r.shard, deleted = range.deleted, start = range.start,
                            end = range.end, bytes = range.bytes, "retention deleted old records");
                    }
                }
                Err(e) => {
                    let e = e.to_string();
                    if failing.get(&r.shard) != Some(&e) {
                        warn!(shard = %r.shard, "retention could not trim: {e}; retrying next round");
                        failing.insert(r.shard, e);
                    }
                }
            }
        }
    }
}
