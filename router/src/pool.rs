//! One pooled, multiplexed [`Connection`] per broker, used both to proxy clients' data-plane
//! requests and to push assignments. A connection that closed, or that points at an address the
//! broker no longer registers with, is replaced on the next use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardq_protocol::{
    BrokerAddr, BrokerId, ClientError, Connection, ConnectionConfig, Request, Response,
};
use tracing::debug;

/// Per broker: the current connection, behind an async lock so that concurrent callers wait for
/// one connect instead of each opening their own.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Connection>>>>;

pub struct BrokerPool {
    slots: Mutex<HashMap<BrokerId, Slot>>,
    config: ConnectionConfig,
}

impl BrokerPool {
    pub fn new(config: ConnectionConfig) -> BrokerPool {
        BrokerPool {
            slots: Mutex::new(HashMap::new()),
            config,
        }
    }

    async fn connection(&self, broker: &BrokerAddr) -> Result<Arc<Connection>, ClientError> {
        let slot = self
            .slots
            .lock()
            .expect("pool lock poisoned")
            .entry(broker.id)
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
        let conn = self.connection(broker).await?;
        conn.request_with_timeout(request, timeout).await
    }

    /// Closes and forgets the connection to a broker that left.
    pub fn evict(&self, id: BrokerId) {
        let slot = self.slots.lock().expect("pool lock poisoned").remove(&id);
        if let Some(slot) = slot {
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
