//! The broker's connection to its router, (re)connected lazily: used for registration, heartbeats
//! and to forward router-only requests (metadata, topic and broker admin) that clients send to a
//! broker address.

use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::{
    ClientError, Connection, ConnectionConfig, ErrorKind, Request, Response, Secret,
};
use tokio::sync::Mutex;
use tracing::debug;

pub struct RouterLink {
    addr: String,
    config: ConnectionConfig,
    /// A tokio mutex: connecting awaits, and concurrent callers should share one attempt.
    conn: Mutex<Option<Arc<Connection>>>,
}

impl RouterLink {
    pub fn new(
        addr: String,
        client_name: String,
        max_frame: usize,
        secret: Option<Secret>,
    ) -> Self {
        RouterLink {
            addr,
            config: ConnectionConfig {
                max_frame,
                client_name,
                connect_timeout: Duration::from_secs(2),
                secret,
                ..ConnectionConfig::default()
            },
            conn: Mutex::new(None),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn unavailable(&self, reason: String) -> ErrorKind {
        ErrorKind::Unavailable {
            what: format!("router at {}", self.addr),
            reason,
        }
    }

    async fn connection(&self) -> Result<Arc<Connection>, ErrorKind> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let conn = Connection::connect(&self.addr, self.config.clone())
            .await
            .map_err(|e| self.unavailable(e.to_string()))?;
        debug!(router = %self.addr, "connected to the router");
        let conn = Arc::new(conn);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `request` to the router; transport failures become `Unavailable` (and the next call
    /// reconnects), the router's own error answers pass through unchanged.
    pub async fn request(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ErrorKind> {
        let conn = self.connection().await?;
        match conn.request_with_timeout(request, timeout).await {
            Ok(r) => Ok(r),
            Err(ClientError::Server(kind)) => Err(kind),
            Err(e) => {
                if conn.is_closed() {
                    let mut slot = self.conn.lock().await;
                    if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                        *slot = None;
                    }
                }
                Err(self.unavailable(e.to_string()))
            }
        }
    }

    /// Closes the current connection, if any.
    pub async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            c.close();
        }
    }
}
