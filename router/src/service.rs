//! The router's request handlers: membership (including graceful leave, which the rebalancer
//! then drains), topic and broker admin, metadata, and the proxy that forwards data-plane
//! requests to shard owners.
//!
//! State changes happen synchronously in `call` (so they keep the order requests arrive in on a
//! connection, and the std lock is never held across an await); flushing the store, pushing
//! assignments and proxying happen in the returned future.

use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use shardq_protocol::{
    BrokerAddr, BrokerId, BrokerReport, ClientError, Epoch, ErrorKind, Request, Response, Service,
    ServiceFuture, ShardId,
};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::identity::Claim;
use crate::pool::BrokerPool;
use crate::state::{Created, Pushes};
use crate::store::{Op, StoreError};
use crate::Shared;

pub(crate) fn storage(e: StoreError) -> ErrorKind {
    ErrorKind::Storage {
        reason: e.to_string(),
    }
}

pub(crate) fn done(result: Result<Response, ErrorKind>) -> ServiceFuture {
    Box::pin(ready(result))
}

impl Service for Shared {
    fn name(&self) -> String {
        "router".into()
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        self.metrics.request(request.name());
        match request {
            Request::Fetch(ref f) => {
                let timeout =
                    Duration::from_millis(u64::from(f.max_wait_ms)) + self.config.request_timeout;
                self.proxy(request, timeout)
            }
            Request::Produce(_)
            | Request::CommitOffset { .. }
            | Request::FetchOffset { .. }
            | Request::ListOffsets { .. } => self.proxy(request, self.config.request_timeout),
            Request::Metadata { topics } => {
                done(self.state().routing_table(&topics).map(Response::Routing))
            }
            Request::CreateTopic {
                name,
                partitions,
                replication_factor,
                min_insync,
                retention,
            } => self.create_topic(name, partitions, replication_factor, min_insync, retention),
            r @ (Request::JoinGroup { .. }
            | Request::GroupHeartbeat { .. }
            | Request::LeaveGroup { .. }
            | Request::ListGroups
            | Request::DescribeGroup { .. }) => done(self.group_request(&r).unwrap_or_else(|| {
                Err(ErrorKind::Unsupported {
                    request: r.name().to_string(),
                })
            })),
            Request::DeleteTopic { name } => self.delete_topic(name),
            Request::AlterTopic {
                name,
                partitions,
                retention_ms,
                retention_bytes,
            } => self.alter_topic(name, partitions, retention_ms, retention_bytes),
            Request::PurgeTopic { name } => self.purge_topic(name),
            Request::DeleteGroup { group } => self.delete_group(group),
            Request::AlterIsr {
                broker,
                shard,
                leader_epoch,
                isr_version,
                isr,
                incarnations,
            } => self.alter_isr(
                broker,
                shard,
                leader_epoch,
                isr_version,
                (isr, incarnations),
            ),
            Request::ElectLeader { shard, unclean } => self.elect(shard, unclean),
            Request::ShardChecksum { shard, .. } => self.checksums(shard),
            Request::ListTopics => done(Ok(Response::Topics(self.state().topic_list()))),
            Request::DescribeTopic { name } => {
                done(self.state().describe(&name).map(Response::Topic))
            }
            Request::ListBrokers => {
                done(Ok(Response::Brokers(self.state().brokers(Instant::now()))))
            }
            Request::Status => done(Ok(Response::Status(self.status()))),
            Request::RemoveBroker { id, force: true } => self.remove_broker(id, true),
            Request::RemoveBroker { id, force: false } | Request::LeaveBroker { id } => {
                self.leave(id)
            }
            Request::RegisterBroker {
                id,
                addr,
                weight,
                uuid,
                cluster,
                incarnation,
            } => self.register(id, addr, weight, (uuid, cluster, incarnation)),
            Request::Heartbeat {
                id,
                report,
                uuid,
                incarnation,
            } => done(self.heartbeat(id, (&uuid, incarnation), report)),
            Request::ReplaceBroker { id } => self.replace(id),
            other => done(Err(ErrorKind::Unsupported {
                request: other.name().to_string(),
            })),
        }
    }
}

impl Shared {
    /// Applies `ops` to the store now (under the state lock, so the store sees changes in the
    /// same order as memory); the caller's future flushes before answering.
    pub(crate) fn persist(&self, ops: &[Op]) -> Result<(), ErrorKind> {
        if ops.is_empty() {
            return Ok(());
        }
        self.store.apply(ops).map_err(storage)
    }

    fn register(
        self: &Arc<Self>,
        id: BrokerId,
        addr: String,
        weight: u32,
        (uuid, cluster, incarnation): (String, Option<String>, u64),
    ) -> ServiceFuture {
        let result = {
            let mut st = self.state();
            let was = st.members.get(&id).map(|m| (m.addr.clone(), m.status));
            st.register_process(
                id,
                addr.clone(),
                weight,
                Claim {
                    uuid: &uuid,
                    cluster: cluster.as_deref(),
                    incarnation,
                },
                Instant::now(),
                |ops| self.persist(ops),
            )
            .map(|changed| {
                // Every registration of a known broker is a new process: whatever it led may
                // have lost what it had not synced, so it leaves every ISR and its shards get
                // new leader epochs (and other leaders where an in-sync replica is up) before
                // it may lead again. In the same critical section as the registration, so no
                // election or leadership move can pick the new process in between.
                // The registering broker itself is not pushed to: it serves only once
                // registered (a push would wait for its timeout and hold up the answer, and the
                // broker's heartbeats with it); its first heartbeat's answer carries all of it.
                let failover = was.is_some().then(|| {
                    st.fail_over(Some(id), |ops| self.persist(ops))
                        .map(|mut f| {
                            f.pushes.retain(|(b, _)| b.id != id);
                            (f, st.epoch)
                        })
                });
                let cluster = st.identities.cluster().to_string();
                (st.epoch, was, !changed, cluster, failover)
            })
        };
        let (epoch, was, unchanged, cluster, failover) = match result {
            Ok(r) => r,
            Err(e) => {
                match e {
                    ErrorKind::RemovedBroker { .. } => {
                        warn!(broker = id, %addr, "registration refused: this broker id was removed from the cluster")
                    }
                    ErrorKind::IdentityConflict { .. } | ErrorKind::WrongCluster { .. } => {
                        warn!(broker = id, %addr, %uuid, "registration refused: {e}")
                    }
                    _ => {}
                }
                return done(Err(e));
            }
        };
        // A new broker, or one back from Down: the desired placement may now be reachable.
        if was
            .as_ref()
            .is_none_or(|(_, s)| *s == shardq_protocol::BrokerStatus::Down)
        {
            self.kick_rebalancer();
        }
        match was {
            None => info!(broker = id, %addr, weight, "broker registered"),
            Some((old, status)) => {
                info!(broker = id, %addr, previously = %old, %status, "broker registered again")
            }
        }
        let shared = self.clone();
        Box::pin(async move {
            if !unchanged {
                shared.store.flush().await.map_err(storage)?;
            }
            if let Some(failover) = failover {
                shared.failed_over(Some(id), failover).await;
            }
            Ok(Response::Registered {
                epoch,
                cluster,
                lease_ms: lease_ms(shared.config.broker_timeout),
            })
        })
    }

    fn heartbeat(
        self: &Arc<Self>,
        id: BrokerId,
        (uuid, incarnation): (&str, u64),
        report: BrokerReport,
    ) -> Result<Response, ErrorKind> {
        // A binding made here (a member from before identities) is applied to the store but not
        // flushed: losing it in a crash only means the next contact binds again.
        let (epoch, assignments, revived) = self
            .state()
            .heartbeat_process(id, uuid, incarnation, report, Instant::now(), |ops| {
                self.persist(ops)
            })
            .inspect_err(|e| match e {
                ErrorKind::RemovedBroker { .. } => warn!(
                    broker = id,
                    "heartbeat refused: this broker id was removed from the cluster"
                ),
                ErrorKind::IdentityConflict { .. } => {
                    warn!(broker = id, %uuid, "heartbeat refused: {e}")
                }
                _ => {}
            })?;
        if revived {
            self.kick_rebalancer();
            // Offline shards whose in-sync replica this was can elect it now.
            let shared = self.clone();
            tokio::spawn(async move { shared.fail_over(None).await });
            info!(
                broker = id,
                "heartbeat from a broker that was down: it is up again"
            );
        }
        Ok(Response::HeartbeatAck { epoch, assignments })
    }

    fn create_topic(
        self: &Arc<Self>,
        name: String,
        partitions: u32,
        replication_factor: Option<u32>,
        min_insync: Option<u32>,
        retention: shardq_protocol::Retention,
    ) -> ServiceFuture {
        let result = {
            let mut st = self.state();
            st.create_topic(
                &name,
                partitions,
                replication_factor,
                min_insync,
                retention,
                |ops| self.persist(ops),
            )
            .map(|c| (c, st.epoch))
        };
        let (info, pushes, epoch) = match result {
            Ok((Created::Existing(info), _)) => return done(Ok(Response::TopicCreated(info))),
            Ok((Created::New { info, pushes, .. }, epoch)) => (info, pushes, epoch),
            Err(e) => return done(Err(e)),
        };
        info!(topic = %info.name, partitions, replication_factor = info.replication_factor,
            min_insync = info.min_insync, epoch, "topic created");
        let shared = self.clone();
        Box::pin(async move {
            shared.store.flush().await.map_err(storage)?;
            // Synchronously, so a produce right after `topic create` finds its shard; a failed
            // push is repaired by the broker's next heartbeat.
            push(&shared.pool, epoch, pushes, shared.config.broker_timeout).await;
            // New shards whose desired owner is down went elsewhere for now.
            shared.kick_rebalancer();
            Ok(Response::TopicCreated(info))
        })
    }

    /// Deletes a topic: persisted and flushed before the answer; the rebalancer sends the
    /// drops (now to brokers that are up, later to the others).
    fn delete_topic(self: &Arc<Self>, name: String) -> ServiceFuture {
        let result = {
            let mut st = self.state();
            st.delete_topic(&name, |ops| self.persist(ops))
                .map(|d| (d, st.epoch))
        };
        let (deleted, epoch) = match result {
            Ok(r) => r,
            Err(e) => return done(Err(e)),
        };
        info!(topic = %name, partitions = deleted.partitions, copies = deleted.copies, epoch,
            "topic deleted; its copies are being dropped");
        let shared = self.clone();
        Box::pin(async move {
            shared.store.flush().await.map_err(storage)?;
            shared.kick_rebalancer();
            Ok(Response::TopicDeleted {
                name,
                partitions: deleted.partitions,
                copies: deleted.copies,
            })
        })
    }

    /// Grows a topic and/or changes its retention. Like a creation, new shards are pushed to
    /// their brokers before the answer, so a produce right after finds them.
    fn alter_topic(
        self: &Arc<Self>,
        name: String,
        partitions: Option<u32>,
        retention_ms: Option<Option<u64>>,
        retention_bytes: Option<Option<u64>>,
    ) -> ServiceFuture {
        if partitions.is_none() && retention_ms.is_none() && retention_bytes.is_none() {
            return done(Err(ErrorKind::BadRequest {
                reason: format!(
                    "nothing to change on topic {name:?}: give partitions, retention ms or \
                     retention bytes"
                ),
            }));
        }
        let result = {
            let mut st = self.state();
            let grown = match partitions {
                Some(p) => st.alter_partitions(&name, p, |ops| self.persist(ops)),
                None => st.describe(&name).map(|d| (d.topic, Vec::new())),
            };
            grown.and_then(|(info, pushes)| {
                let info = if retention_ms.is_some() || retention_bytes.is_some() {
                    let info = st.alter_retention(&name, retention_ms, retention_bytes, |ops| {
                        self.persist(ops)
                    })?;
                    info!(topic = %name, retention = %info.retention, "topic retention changed");
                    info
                } else {
                    info
                };
                Ok(((info, pushes), st.epoch))
            })
        };
        let ((info, pushes), epoch) = match result {
            Ok(r) => r,
            Err(e) => return done(Err(e)),
        };
        if !pushes.is_empty() {
            info!(topic = %name, partitions = info.partitions, epoch, "topic grown");
        }
        let shared = self.clone();
        Box::pin(async move {
            shared.store.flush().await.map_err(storage)?;
            if !pushes.is_empty() {
                push(&shared.pool, epoch, pushes, shared.config.broker_timeout).await;
                shared.kick_rebalancer();
            }
            Ok(Response::TopicAltered(info))
        })
    }

    /// Graceful leave: answered at once with the shards that will move; the rebalancer drains
    /// the broker and removes it once it owns nothing.
    fn leave(self: &Arc<Self>, id: BrokerId) -> ServiceFuture {
        let result = {
            let mut st = self.state();
            st.leave(id, |ops| self.persist(ops))
        };
        let leaving = match result {
            Ok(l) => l,
            Err(e) => {
                if matches!(e, ErrorKind::BrokerDown { .. }) {
                    info!(broker = id, "graceful removal refused: the broker is down");
                }
                return done(Err(e));
            }
        };
        if leaving.removed {
            info!(broker = id, "broker removed (it owned no shards)");
        } else {
            info!(
                broker = id,
                shards = leaving.shards.len(),
                "broker leaving: draining its shards to the other brokers"
            );
        }
        self.kick_rebalancer();
        let shared = self.clone();
        Box::pin(async move {
            shared.store.flush().await.map_err(storage)?;
            if leaving.removed {
                shared.pool.evict(id);
            }
            Ok(Response::BrokerRemoved {
                id,
                shards: leaving.shards,
                forced: false,
            })
        })
    }

    fn remove_broker(self: &Arc<Self>, id: BrokerId, force: bool) -> ServiceFuture {
        let result = {
            let mut st = self.state();
            let was_down = st
                .members
                .get(&id)
                .is_some_and(|m| m.status == shardq_protocol::BrokerStatus::Down);
            st.remove_broker(id, force, |ops| self.persist(ops))
                .map(|r| (r, st.epoch, was_down))
        };
        let (removed, epoch, was_down) = match result {
            Ok(r) => r,
            Err(e) => return done(Err(e)),
        };
        let forced = !removed.shards.is_empty();
        if forced {
            warn!(
                broker = id,
                shards = removed.shards.len(),
                epoch,
                "broker force-removed: its shards are re-created empty on other brokers"
            );
        } else {
            info!(broker = id, "broker removed (it owned no shards)");
        }
        let shared = self.clone();
        Box::pin(async move {
            shared.store.flush().await.map_err(storage)?;
            push(
                &shared.pool,
                epoch,
                removed.pushes,
                shared.config.broker_timeout,
            )
            .await;
            match removed.dropped_from {
                // A live broker is told to drop the data it no longer owns; in the background,
                // because it may be unreachable and nothing depends on it.
                Some(broker) if !was_down => {
                    let pool = shared.pool.clone();
                    let shards = removed.shards.clone();
                    let timeout = shared.config.broker_timeout;
                    tokio::spawn(async move {
                        drop_shards(&pool, &broker, shards, epoch, timeout).await;
                        pool.evict(broker.id);
                    });
                }
                _ => shared.pool.evict(id),
            }
            Ok(Response::BrokerRemoved {
                id,
                shards: removed.shards,
                forced,
            })
        })
    }

    /// `shardq broker replace ID`: the id is unbound (persisted before the answer), so the next
    /// process to register it takes it, with the id's shards starting empty there.
    fn replace(self: &Arc<Self>, id: BrokerId) -> ServiceFuture {
        let result = self.state().replace(id, |ops| self.persist(ops));
        let shards = match result {
            Ok(s) => s,
            Err(e) => return done(Err(e)),
        };
        warn!(
            broker = id,
            shards = shards.len(),
            "broker replaced: the next process to register this id takes it; its shards start empty"
        );
        let shared = self.clone();
        Box::pin(async move {
            shared.store.flush().await.map_err(storage)?;
            // The old process is gone; a connection to its address must not be reused.
            shared.pool.evict(id);
            Ok(Response::BrokerReplaced { id, shards })
        })
    }

    /// Forwards a data-plane request to its shard's owner. The broker's own errors (NotOwner,
    /// UnknownShard, ...) pass through; not reaching it is `Unavailable`, which clients retry.
    pub(crate) fn proxy(self: &Arc<Self>, request: Request, timeout: Duration) -> ServiceFuture {
        let Some(shard) = request.shard().cloned() else {
            return done(Err(ErrorKind::Internal {
                reason: format!("{} request has no shard to route by", request.name()),
            }));
        };
        let owner = self.state().owner_for(&shard);
        let shared = self.clone();
        Box::pin(async move {
            let owner = owner?;
            forward(&shared.pool, &owner, &shard, request, timeout).await
        })
    }
}

/// The leader lease a broker is granted: 2/3 of the time after which the router declares it
/// down, so a leader cut off from the router stops acknowledging before another is elected.
pub(crate) fn lease_ms(broker_timeout: Duration) -> u64 {
    (broker_timeout.as_millis() as u64 * 2 / 3).max(1)
}

async fn forward(
    pool: &BrokerPool,
    owner: &BrokerAddr,
    shard: &ShardId,
    request: Request,
    timeout: Duration,
) -> Result<Response, ErrorKind> {
    match pool.request(owner, request, timeout).await {
        Ok(r) => Ok(r),
        Err(ClientError::Server(kind)) => Err(kind),
        Err(e) => {
            debug!(%shard, broker = owner.id, "proxy failed: {e}");
            Err(ErrorKind::Unavailable {
                what: shard.key(),
                reason: format!("its owner, {owner}, cannot be reached: {e}"),
            })
        }
    }
}

/// Sends every owner its complete assignment, concurrently; failures are logged only.
pub(crate) async fn push(pool: &BrokerPool, epoch: Epoch, pushes: Pushes, timeout: Duration) {
    let sends = pushes.into_iter().map(|(broker, shards)| async move {
        let n = shards.len();
        let request = Request::AssignShards { epoch, shards };
        match pool.request(&broker, request, timeout).await {
            Ok(Response::Ok) => debug!(broker = broker.id, shards = n, epoch, "assignment pushed"),
            Ok(other) => warn!(
                broker = broker.id,
                "broker answered assign-shards with {}; its next heartbeat reconciles",
                other.name()
            ),
            Err(e) => warn!(
                broker = broker.id,
                "cannot push assignments: {e}; its next heartbeat reconciles"
            ),
        }
    });
    join_all(sends).await;
}

async fn drop_shards(
    pool: &BrokerPool,
    broker: &BrokerAddr,
    shards: Vec<ShardId>,
    epoch: Epoch,
    timeout: Duration,
) {
    for shard in shards {
        let request = Request::DropShard {
            shard: shard.clone(),
            epoch,
        };
        if let Err(e) = pool.request(broker, request, timeout).await {
            // Not fatal: the broker's next heartbeat no longer lists the shard, so it stops
            // serving it; only the disk space stays until it is dropped.
            debug!(broker = broker.id, %shard, "drop-shard after forced removal failed: {e}");
            return;
        }
    }
}
