//! The broker's membership task: register with the router (retrying with backoff while it is
//! away), then heartbeat every interval with a report of the shards held, and reconcile the
//! complete assignment each answer carries. A `RemovedBroker` answer (to a registration or a
//! heartbeat), or an `UnknownBroker` answer to a heartbeat, means the router removed this broker
//! from the cluster (it persists its members and the ids it removed, so a mere restart of either
//! side never causes it): the broker then shuts itself down, and its process exits with
//! [`crate::EXIT_REMOVED`] so that supervisors do not restart it.
//!
//! Registrations and heartbeats carry this data dir's UUID (see [`crate::identity`]). An
//! `IdentityConflict` (another process is bound to this id) or `WrongCluster` (the data dir is
//! another cluster's) answer stops the broker too, and its process exits with
//! [`crate::EXIT_REFUSED`]: restarting it would only be refused again.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use shardq_protocol::{CancellationToken, Epoch, ErrorKind, Request, Response};
use tracing::{error, info, warn};

use crate::identity::Identity;
use crate::router_link::RouterLink;
use crate::service::Broker;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct Membership {
    pub broker: Arc<Broker>,
    pub router: Arc<RouterLink>,
    /// The address the router gives clients for this broker.
    pub advertise: String,
    pub weight: u32,
    pub heartbeat: Duration,
    /// Cancelled when the router removes or refuses this broker; `BrokerHandle::removed` waits
    /// on it.
    pub removed: CancellationToken,
    /// Why the router refused this process (set before `removed` is cancelled), if it did.
    pub refusal: Arc<OnceLock<ErrorKind>>,
    /// This data dir's identity; its cluster is recorded at the first registration.
    pub identity: Mutex<Identity>,
    pub data_dir: PathBuf,
    /// Already registered (by [`crate::start`], before serving): go straight to heartbeats.
    pub registered: bool,
}

impl Membership {
    /// Waits `d` or returns false when shutting down.
    async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    fn rpc_timeout(&self) -> Duration {
        (self.heartbeat * 4).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }

    fn identity(&self) -> Identity {
        self.identity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One registration attempt: the routing epoch, or why not (`RemovedBroker`: this id was
    /// removed from the cluster for good; `IdentityConflict` / `WrongCluster`: this process is
    /// not broker `id` for the router).
    pub async fn register_once(&self) -> Result<Epoch, ErrorKind> {
        let identity = self.identity();
        let req = Request::RegisterBroker {
            id: self.broker.id(),
            addr: self.advertise.clone(),
            weight: self.weight,
            uuid: identity.uuid.clone(),
            cluster: identity.cluster.clone(),
            incarnation: self.broker.incarnation,
        };
        let sent = tokio::time::Instant::now();
        match self.router.request(req, self.rpc_timeout()).await? {
            Response::Registered {
                epoch,
                cluster,
                lease_ms,
            } => {
                self.broker.replication.lease.set_duration(lease_ms);
                self.broker.replication.lease.renew(sent);
                match &identity.cluster {
                    // The router checked ours; a different answer means it is not that router.
                    Some(ours) if *ours != cluster => {
                        return Err(ErrorKind::WrongCluster {
                            id: self.broker.id(),
                            data_cluster: ours.clone(),
                            router_cluster: cluster,
                        })
                    }
                    Some(_) => {}
                    None => self.record_cluster(identity, cluster)?,
                }
                self.broker.observe_epoch(epoch);
                info!(router = %self.router.addr(), epoch, addr = %self.advertise, "registered with the router");
                Ok(epoch)
            }
            other => Err(ErrorKind::Internal {
                reason: format!("router answered registration with {}", other.name()),
            }),
        }
    }

    /// A fresh data dir joined the router's cluster: record it, so that it is never registered
    /// with another cluster's router by mistake.
    fn record_cluster(&self, mut identity: Identity, cluster: String) -> Result<(), ErrorKind> {
        identity.cluster = Some(cluster.clone());
        identity
            .save(&self.data_dir)
            .map_err(|e| ErrorKind::Storage {
                reason: e.to_string(),
            })?;
        info!(%cluster, data = %self.data_dir.display(), "this data dir joined the cluster");
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = identity;
        Ok(())
    }

    /// The router refused this process as broker `id` (another process is bound to the id, or
    /// the data dir is another cluster's): stop everything; the process exits "refused".
    fn refused(&self, shutdown: &CancellationToken, why: ErrorKind) {
        error!(id = self.broker.id(), router = %self.router.addr(), data = %self.data_dir.display(),
            "refused by the router: {why}; shutting down");
        let _ = self.refusal.set(why);
        self.removed.cancel();
        shutdown.cancel();
    }

    /// The router removed this broker: stop everything; the process exits "removed".
    fn removed(&self, shutdown: &CancellationToken, why: &ErrorKind) {
        error!(id = self.broker.id(), router = %self.router.addr(),
            "removed from the cluster by the router ({why}); shutting down for good");
        self.removed.cancel();
        shutdown.cancel();
    }

    /// Registers, retrying until the router answers. Returns false on shutdown (or removal).
    async fn register(&self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = self.register_once() => r,
            };
            match outcome {
                Ok(_) => return true,
                Err(e @ ErrorKind::RemovedBroker { .. }) => {
                    self.removed(shutdown, &e);
                    return false;
                }
                Err(e @ (ErrorKind::IdentityConflict { .. } | ErrorKind::WrongCluster { .. })) => {
                    self.refused(shutdown, e);
                    return false;
                }
                Err(e @ ErrorKind::Internal { .. }) => warn!("{e}; retrying"),
                Err(e) if !warned => {
                    warn!(router = %self.router.addr(), "cannot register yet ({e}); retrying with backoff while serving held shards");
                    warned = true;
                }
                Err(_) => {}
            }
            if !Self::pause(shutdown, backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Runs until `shutdown`, or until the router removes this broker (then it cancels
    /// `shutdown` itself, stopping the whole broker).
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.registered && !self.register(&shutdown).await {
            return;
        }
        let mut failing = false;
        loop {
            if !Self::pause(&shutdown, self.heartbeat).await {
                return;
            }
            let req = Request::Heartbeat {
                id: self.broker.id(),
                report: self.broker.report(),
                uuid: self.identity().uuid,
                incarnation: self.broker.incarnation,
            };
            let sent = tokio::time::Instant::now();
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.router.request(req, self.rpc_timeout()) => r,
            };
            match outcome {
                Ok(Response::HeartbeatAck { epoch, assignments }) => {
                    // Counted from the send: the router saw this broker alive after `sent`.
                    self.broker.replication.lease.renew(sent);
                    if failing {
                        info!(router = %self.router.addr(), "heartbeats answered again");
                        failing = false;
                    }
                    self.broker.reconcile(epoch, &assignments);
                }
                Ok(other) => warn!("router answered a heartbeat with {}", other.name()),
                Err(e @ (ErrorKind::UnknownBroker { .. } | ErrorKind::RemovedBroker { .. })) => {
                    self.removed(&shutdown, &e);
                    return;
                }
                // Another process took this id (`shardq broker replace` while this one was cut
                // off): serving on would be split brain.
                Err(e @ ErrorKind::IdentityConflict { .. }) => {
                    self.refused(&shutdown, e);
                    return;
                }
                Err(e) => {
                    if !failing {
                        warn!(router = %self.router.addr(), "heartbeat failed: {e}; still serving held shards");
                        failing = true;
                    }
                }
            }
        }
    }
}
