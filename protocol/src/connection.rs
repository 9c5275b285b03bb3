//! A multiplexed client connection: many requests in flight on one TCP stream, responses matched to
//! requests by correlation id (they may come back in any order), a bounded number in flight
//! (callers wait for a slot: backpressure), a timeout per request, and a clean close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::codec::{Encoder, FramedRead};

use crate::auth::{random_bytes, Secret, NONCE_LEN};
use crate::codec::{FrameCodec, DEFAULT_MAX_FRAME};
use crate::error::{ClientError, ErrorKind};
use crate::message::{OpenTo, Request, RequestEnvelope, Response, ResponseEnvelope};
use crate::PROTOCOL_VERSION;

#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    pub max_frame: usize,
    /// Requests in flight at once; further callers wait for a slot.
    pub max_in_flight: usize,
    /// Default deadline of one request (send to response).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Sent in the handshake, for the server's logs.
    pub client_name: String,
    /// The cluster secret: proven in the handshake, and required of the server in turn. None:
    /// the connection may use only what the server leaves open.
    pub secret: Option<Secret>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            client_name: "shardq-client".into(),
            secret: None,
        }
    }
}

type Reply = oneshot::Sender<Result<Response, ErrorKind>>;

struct Shared {
    pending: Mutex<HashMap<u64, Reply>>,
    /// Set once the connection is unusable, with the reason.
    closed: Mutex<Option<String>>,
}

impl Shared {
    fn close(&self, reason: String) {
        let mut c = self.closed.lock().expect("poisoned");
        if c.is_none() {
            *c = Some(reason);
        }
        drop(c);
        // Dropping the senders wakes every waiter with "closed".
        self.pending.lock().expect("poisoned").clear();
    }

    fn closed_reason(&self) -> Option<String> {
        self.closed.lock().expect("poisoned").clone()
    }
}

/// One client connection to a shardq node. Share it behind an `Arc`; every method takes `&self`.
pub struct Connection {
    addr: String,
    server: String,
    config: ConnectionConfig,
    tx: mpsc::UnboundedSender<RequestEnvelope>,
    slots: Arc<Semaphore>,
    next_id: AtomicU64,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    /// What the server leaves open to connections that did not prove the secret.
    open: OpenTo,
    /// This connection proved the cluster secret.
    authenticated: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("server", &self.server)
            .finish()
    }
}

impl Connection {
    /// Connects and performs the versioned handshake.
    pub async fn connect(addr: &str, config: ConnectionConfig) -> Result<Connection, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            addr: addr.to_string(),
            reason,
        };
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| connect_err(format!("no answer within {:?}", config.connect_timeout)))?
            .map_err(|e| connect_err(e.to_string()))?;
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            closed: Mutex::new(None),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_loop(
            wr,
            rx,
            FrameCodec::<()>::new(config.max_frame),
            shared.clone(),
        ));
        let reader = tokio::spawn(read_loop(
            FramedRead::new(rd, FrameCodec::<ResponseEnvelope>::new(config.max_frame)),
            shared.clone(),
        ));
        let mut conn = Connection {
            addr: addr.to_string(),
            server: String::new(),
            slots: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            config,
            tx,
            next_id: AtomicU64::new(1),
            shared,
            reader,
            writer,
            open: OpenTo::Nothing,
            authenticated: false,
        };
        let hs_timeout = conn.config.connect_timeout;
        let client_nonce = random_bytes::<NONCE_LEN>().to_vec();
        let hello = Request::Handshake {
            version: PROTOCOL_VERSION,
            client: conn.config.client_name.clone(),
            nonce: client_nonce.clone(),
            authenticate: conn.config.secret.is_some(),
        };
        let protocol_err = |reason: String| ClientError::Protocol {
            addr: addr.to_string(),
            reason,
        };
        let (server_nonce, proof) = match conn.request_with_timeout(hello, hs_timeout).await? {
            Response::Handshake {
                server,
                nonce,
                proof,
                open,
                ..
            } => {
                conn.server = server;
                conn.open = open;
                (nonce, proof)
            }
            other => {
                return Err(protocol_err(format!(
                    "expected a handshake answer, got {}",
                    other.name()
                )))
            }
        };
        if let Some(secret) = conn.config.secret.clone() {
            // Mutual: a node that cannot prove the secret is not part of this cluster, whatever
            // it says, so nothing is sent to it (nor taken from it).
            match proof {
                None => {
                    return Err(protocol_err(format!(
                        "{} runs without a cluster secret, but this client holds one; refusing \
                         a node that cannot prove it",
                        conn.server
                    )))
                }
                Some(p) if !secret.verify_server(&client_nonce, &server_nonce, &p) => {
                    return Err(protocol_err(format!(
                        "{} holds another cluster secret than this client's token file",
                        conn.server
                    )))
                }
                Some(_) => {}
            }
            let proof = secret.client_proof(&client_nonce, &server_nonce);
            match conn
                .request_with_timeout(Request::Authenticate { proof }, hs_timeout)
                .await?
            {
                Response::Authenticated => conn.authenticated = true,
                other => {
                    return Err(protocol_err(format!(
                        "expected an authentication answer, got {}",
                        other.name()
                    )))
                }
            }
        }
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's name from the handshake (e.g. `broker-2`).
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// Whether this connection proved the cluster secret.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// What the server lets connections without the secret do.
    pub fn server_open_to(&self) -> OpenTo {
        self.open
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed_reason().is_some() || self.tx.is_closed()
    }

    /// Sends a request and waits for its response, up to the configured request timeout.
    pub async fn request(&self, request: Request) -> Result<Response, ClientError> {
        self.request_with_timeout(request, self.config.request_timeout)
            .await
    }

    /// Sends a request and waits for its response, up to `timeout` (time waiting for an in-flight
    /// slot counts).
    pub async fn request_with_timeout(
        &self,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let timed_out = || ClientError::Timeout {
            addr: self.addr.clone(),
            after_ms: timeout.as_millis() as u64,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let _slot = tokio::time::timeout_at(deadline, self.slots.acquire())
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| self.closed_error())?;
        if self.is_closed() {
            return Err(self.closed_error());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.shared
            .pending
            .lock()
            .expect("poisoned")
            .insert(id, reply);
        // The reader may have closed between the check above and the insert; re-check so no
        // waiter is left behind.
        if self.shared.closed_reason().is_some() {
            self.shared.pending.lock().expect("poisoned").remove(&id);
            return Err(self.closed_error());
        }
        let env = RequestEnvelope {
            correlation_id: id,
            request,
        };
        if self.tx.send(env).is_err() {
            self.shared.pending.lock().expect("poisoned").remove(&id);
            return Err(self.closed_error());
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(kind))) => Err(ClientError::Server(kind)),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                self.shared.pending.lock().expect("poisoned").remove(&id);
                Err(timed_out())
            }
        }
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed {
            addr: self.addr.clone(),
            reason: self.shared.closed_reason().unwrap_or_default(),
        }
    }

    /// Closes the connection: requests already sent are flushed, waiters get `Closed`.
    pub fn close(&self) {
        self.shared.close("closed by client".into());
        self.slots.close();
        self.reader.abort();
        // Dropping the write half closes the socket now, not when the Connection is dropped.
        self.writer.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<RequestEnvelope>,
    mut codec: FrameCodec<()>,
    shared: Arc<Shared>,
) {
    let mut buf = BytesMut::new();
    while let Some(env) = rx.recv().await {
        let mut next = Some(env);
        // Coalesce whatever is queued into one write.
        while let Some(env) = next.take() {
            if let Err(e) = codec.encode(&env, &mut buf) {
                // Only this request fails (e.g. too large); the connection stays up.
                if let Some(reply) = shared
                    .pending
                    .lock()
                    .expect("poisoned")
                    .remove(&env.correlation_id)
                {
                    let _ = reply.send(Err(ErrorKind::BadRequest {
                        reason: e.to_string(),
                    }));
                }
            }
            if buf.len() < 1 << 20 {
                next = rx.try_recv().ok();
            }
        }
        if let Err(e) = wr.write_all(&buf).await {
            shared.close(format!("write failed: {e}"));
            return;
        }
        buf.clear();
        if shared.closed_reason().is_some() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

async fn read_loop(
    mut frames: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec<ResponseEnvelope>>,
    shared: Arc<Shared>,
) {
    let reason = loop {
        match frames.next().await {
            Some(Ok(env)) => {
                let reply = shared
                    .pending
                    .lock()
                    .expect("poisoned")
                    .remove(&env.correlation_id);
                // A missing entry is a request that timed out; its answer is dropped.
                if let Some(reply) = reply {
                    let _ = reply.send(env.result);
                }
            }
            Some(Err(e)) => break format!("read failed: {e}"),
            None => break "server closed the connection".to_string(),
        }
    };
    shared.close(reason);
}
