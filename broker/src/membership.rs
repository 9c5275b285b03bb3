//! The broker's membership task: register with the router (retrying with backoff while it is
//! away), then heartbeat every interval with a report of the shards held, and reconcile the
//! complete assignment each answer carries. An `UnknownBroker` answer to a heartbeat means the
//! router removed this broker from the cluster (it persists its members, so a mere restart of
//! either side never causes it): the broker then shuts itself down.

use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::{CancellationToken, ErrorKind, Request, Response};
use tracing::{info, warn};

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
    /// Cancelled when the router removes this broker; `BrokerHandle::removed` waits on it.
    pub removed: CancellationToken,
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

    /// Registers, retrying until the router answers. Returns false on shutdown.
    async fn register(&self, shutdown: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut warned = false;
        loop {
            let req = Request::RegisterBroker {
                id: self.broker.id(),
                addr: self.advertise.clone(),
                weight: self.weight,
            };
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return false,
                r = self.router.request(req, self.rpc_timeout()) => r,
            };
            match outcome {
                Ok(Response::Registered { epoch }) => {
                    self.broker.observe_epoch(epoch);
                    info!(router = %self.router.addr(), epoch, addr = %self.advertise, "registered with the router");
                    return true;
                }
                Ok(other) => warn!(
                    "router answered registration with {}; retrying",
                    other.name()
                ),
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
        if !self.register(&shutdown).await {
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
            };
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.router.request(req, self.rpc_timeout()) => r,
            };
            match outcome {
                Ok(Response::HeartbeatAck { epoch, assignments }) => {
                    if failing {
                        info!(router = %self.router.addr(), "heartbeats answered again");
                        failing = false;
                    }
                    self.broker.reconcile(epoch, &assignments);
                }
                Ok(other) => warn!("router answered a heartbeat with {}", other.name()),
                Err(ErrorKind::UnknownBroker { .. }) => {
                    info!(id = self.broker.id(), router = %self.router.addr(),
                        "removed from the cluster by the router; shutting down");
                    self.removed.cancel();
                    shutdown.cancel();
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
