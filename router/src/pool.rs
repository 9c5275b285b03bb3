//! Pooled, multiplexed [`Connection`]s to each broker: one proxies clients' data-plane requests,
//! another carries the router's own control requests (assignments, drops, moves), so that
//! clients' long polls filling the first one's in-flight slots never hold up the control plane.
//! A connection that closed, or that points at an address the broker no longer registers with,
//! is replaced on the next use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardq_protocol::{
    Access, BrokerAddr, BrokerId, ClientError, Connection, ConnectionConfig, Request, Response,
};
use tracing::debug;

/// Per broker: the current connection, behind an async lock so that concurrent callers wait for
/// one connect instead of each opening their own.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

/// Which of a broker's connections a request travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// Proxied produce, fetch and offsets.
    Data,
    /// The router's own requests.
    Control,
}

pub struct BrokerPool {
    slots: Mutex<HashMap<(BrokerId, Lane), Slot>>,
    config: ConnectionConfig,
}

impl BrokerPool {
    pub fn new(config: ConnectionConfig) -> BrokerPool {
        BrokerPool {
            slots: Mutex::new(HashMap::new()),
            config,
        }
    }

    async fn connection(
        &self,
        broker: &BrokerAddr,
        lane: Lane,
    ) -> Result<Arc<Connection>, ClientError> {
        let slot = self
            .slots
            .lock()
            .expect("pool lock poisoned")
            .entry((broker.id, lane))
            .or_default()
            .clone();
        let mut current = slot.lock().await;
        if let Some(c) = current.as_ref() {
            if !c.is_closed() && c.addr() == broker.addr {
                return Ok(c.clone());
            }
            c.close();
        }
        debug!(broker = broker.id, addr = %broker.addr, "connecting to broker");
        let conn = Arc::new(Connection::connect(&broker.addr, self.config.clone()).await?);
        *current = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `request` to `broker` and waits up to `timeout` for its answer.
    pub async fn request(
        &self,
        broker: &BrokerAddr,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let lane = match request.access() {
            Access::Data => Lane::Data,
            Access::Control | Access::Handshake => Lane::Control,
        };
        let conn = self.connection(broker, lane).await?;
        conn.request_with_timeout(request, timeout).await
    }

    /// Closes and forgets the connections to a broker that left.
    pub fn evict(&self, id: BrokerId) {
        let slots: Vec<Slot> = [Lane::Data, Lane::Control]
            .iter()
            .filter_map(|lane| {
                self.slots
                    .lock()
                    .expect("pool lock poisoned")
                    .remove(&(id, *lane))
            })
            .collect();
        for slot in slots {
            if let Ok(current) = slot.try_lock() {
                if let Some(c) = current.as_ref() {
                    c.close();
                }
            }
        }
    }

    /// Closes every connection (router shutdown).
    pub fn close_all(&self) {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .expect("pool lock poisoned")
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in slots {
            if let Ok(current) = slot.try_lock() {
                if let Some(c) = current.as_ref() {
                    c.close();
                }
            }
        }
    }
}
