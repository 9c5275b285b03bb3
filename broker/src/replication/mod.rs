//! The broker's side of replication: the leader lease, the fetchers that keep followed shards
//! in sync (one per leader broker, carrying every shard the two share), the task that proposes
//! ISR changes to the router, and the leader's answers to replica fetches.
//!
//! A follower pulls: its fetcher sends the positions of every shard it follows on one leader in
//! one `ReplicaFetch`; the leader answers each with the entries that follow (unchanged, with
//! their leader epochs), or with where the logs diverge, and its high watermark. The fetch's
//! position is also the leader's only news of the follower's progress: the high watermark moves
//! when the follower asks for what comes next.

mod fetcher;
mod serve;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardq_protocol::{BrokerAddr, CancellationToken, ErrorKind, Request, Response, ShardId};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info};

pub(crate) use serve::checksum;

use crate::import::now_ms;
use crate::service::Broker;
use crate::shard::Following;

/// How often a leader looks for ISR changes to propose.
const ISR_CHECK: Duration = Duration::from_millis(100);
/// The lease until the router's registration answer says (2/3 of its default down timeout).
const DEFAULT_LEASE_MS: u64 = 666;

/// The leader lease: a broker with a router acknowledges writes only while it heard from the
/// router recently (see `Response::Registered::lease_ms`). A standalone broker has no lease.
pub(crate) struct Lease {
    enabled: bool,
    duration_ms: AtomicU64,
    renewed: Mutex<Option<Instant>>,
}

impl Lease {
    fn new(enabled: bool) -> Lease {
        Lease {
            enabled,
            duration_ms: AtomicU64::new(DEFAULT_LEASE_MS),
            renewed: Mutex::new(None),
        }
    }

    pub fn set_duration(&self, ms: u64) {
        if ms > 0 {
            self.duration_ms.store(ms, Ordering::Release);
        }
    }

    /// The router answered a request sent at `sent`.
    pub fn renew(&self, sent: Instant) {
        let mut r = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none_or(|t| t < sent) {
            *r = Some(sent);
        }
    }

    /// Whether this broker may acknowledge writes now.
    pub fn valid(&self) -> bool {
        if !self.enabled {
            return true;
        }
        let d = Duration::from_millis(self.duration_ms.load(Ordering::Acquire));
        self.renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < d)
    }

    /// The answer to a write this broker may not acknowledge: the client asks the router
    /// where the shard's leader is now.
    pub fn expired(&self, shard: &ShardId) -> ErrorKind {
        ErrorKind::NotOwner {
            shard: shard.to_string(),
            epoch: 0,
            owner: None,
        }
    }
}

/// Replication state of a broker.
pub(crate) struct Replication {
    pub lease: Lease,
    /// Shard -> what it follows, as last applied.
    following: Mutex<HashMap<ShardId, Following>>,
    /// Wakes the supervisor when what is followed changes.
    changed: Notify,
    /// Follower lag after which a leader proposes to drop it from the ISR.
    lag_max_ms: AtomicU64,
}

impl Replication {
    pub fn new(with_router: bool) -> Replication {
        Replication {
            lease: Lease::new(with_router),
            following: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            lag_max_ms: AtomicU64::new(crate::config::DEFAULT_REPLICA_LAG_MAX_MS),
        }
    }

    pub fn set_lag_max_ms(&self, ms: u64) {
        self.lag_max_ms.store(ms.max(1), Ordering::Release);
    }

    /// Records what `shard` follows now (None: it leads, or is idle).
    pub fn follow(&self, shard: &ShardId, following: Option<Following>) {
        let mut map = self.following.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match following {
            Some(f) => map.insert(shard.clone(), f.clone()) != Some(f),
            None => map.remove(shard).is_some(),
        };
        drop(map);
        if changed {
            self.changed.notify_one();
        }
    }

    /// The shards that follow `leader` (same id and address), with the leader epoch each
    /// follows at.
    fn followed_on(&self, leader: &BrokerAddr) -> Vec<(ShardId, u64)> {
        self.following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, f)| &f.leader == leader)
            .map(|(s, f)| (s.clone(), f.leader_epoch))
            .collect()
    }

    fn leaders(&self) -> Vec<BrokerAddr> {
        let mut v: Vec<BrokerAddr> = self
            .following
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|f| f.leader.clone())
            .collect();
        v.sort_by(|a, b| (a.id, &a.addr).cmp(&(b.id, &b.addr)));
        v.dedup();
        v
    }
}

/// Runs the fetchers (one per leader this broker follows) and the ISR proposer until shutdown.
pub(crate) async fn run(broker: Arc<Broker>, shutdown: CancellationToken) {
    let mut fetchers: HashMap<BrokerAddr, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut isr_tick = tokio::time::interval(ISR_CHECK);
    isr_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = broker.replication.changed.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        fetchers.retain(|_, h| !h.is_finished());
        for leader in broker.replication.leaders() {
            if let std::collections::hash_map::Entry::Vacant(slot) = fetchers.entry(leader) {
                debug!(leader = %slot.key(), "starting the replica fetcher");
                let task = tokio::spawn(fetcher::run(
                    broker.clone(),
                    slot.key().clone(),
                    shutdown.child_token(),
                ));
                slot.insert(task);
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake => {}
            _ = isr_tick.tick() => propose_isr_changes(&broker).await,
        }
    }
    for (_, h) in fetchers {
        let _ = h.await;
    }
}

/// Sends the router every ISR change a led shard proposes, and applies its answers.
async fn propose_isr_changes(broker: &Arc<Broker>) {
    let Some(router) = broker.router_link() else {
        return;
    };
    let lag_max = broker.replication.lag_max_ms.load(Ordering::Acquire);
    let now = now_ms();
    for shard in broker.held_shards() {
        let Some(change) = shard.isr_change(now, lag_max) else {
            continue;
        };
        let req = Request::AlterIsr {
            broker: broker.id(),
            shard: shard.id().clone(),
            leader_epoch: change.leader_epoch,
            isr_version: change.base_version,
            isr: change.isr.clone(),
            incarnations: change.incarnations.clone(),
        };
        // A refusal, or no answer, leaves the proposal pending: the router's push of a newer
        // ISR version ends it (it bumps the version when it refuses), or it is resent below.
        match router.request(req, Duration::from_secs(2)).await {
            Ok(Response::IsrAltered { isr_version }) => {
                info!(shard = %shard.id(), isr = ?change.isr, isr_version, "in-sync replicas changed");
                shard.isr_confirmed(&change, isr_version);
            }
            Ok(other) => {
                debug!(shard = %shard.id(), "router answered an ISR change with {}", other.name())
            }
            Err(e) => debug!(shard = %shard.id(), "ISR change refused: {e}"),
        }
    }
}
