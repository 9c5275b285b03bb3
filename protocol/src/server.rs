//! The request server every shardq node runs: an accept loop, one task per connection, a versioned
//! handshake with the cluster secret's challenge-response, pipelined requests whose responses go
//! back as they complete, and a shutdown token. A garbage or oversize frame closes only the
//! connection that sent it; so does a frame that stalls, an idle connection, or a peer that stops
//! reading. Connection slots are capped, with a reserve only authenticated peers may use, and
//! every request is checked against what the connection proved before a handler sees it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::auth::{random_bytes, Secret, NONCE_LEN};
use crate::codec::{FrameCodec, DEFAULT_MAX_FRAME};
use crate::error::ErrorKind;
use crate::message::{Access, OpenTo, Request, RequestEnvelope, Response, ResponseEnvelope};
use crate::PROTOCOL_VERSION;

pub type ServiceFuture = Pin<Box<dyn Future<Output = Result<Response, ErrorKind>> + Send>>;

/// What a node does with requests.
pub trait Service: Send + Sync + 'static {
    /// Name sent in the handshake (e.g. `broker-2`, `router`).
    fn name(&self) -> String;

    /// Handles one request. `call` itself runs in the order requests arrive on a connection, so
    /// work done before returning the future (e.g. appending a batch) keeps that order; the
    /// returned future (e.g. waiting for fsync or a long poll) runs concurrently with others.
    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture;
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub max_frame: usize,
    /// Connections held at once (after their handshake). Past `max_connections -
    /// reserved_connections`, only peers that prove the cluster secret are let in; past
    /// `max_connections`, nobody: the newcomer gets a typed `TooManyConnections` answer.
    pub max_connections: usize,
    /// Slots only authenticated peers (brokers, admin commands, clients holding the token) may
    /// take, so a flood of other clients never locks out `status` or heartbeats.
    pub reserved_connections: usize,
    /// Connections still in their handshake at once; past it new connections are closed at once
    /// (instead of waiting unseen in the kernel's backlog).
    pub max_pending_handshakes: usize,
    /// Requests one connection may have in flight; past it the server stops reading that
    /// connection until answers go out (backpressure instead of unbounded memory).
    pub max_in_flight: usize,
    /// A connection with nothing in flight and nothing arriving for this long is closed.
    pub idle_timeout: Duration,
    /// A frame (the handshake included) must arrive whole within this long of its first byte,
    /// and an answer must be taken by the peer within as long; otherwise the connection is closed.
    pub frame_timeout: Duration,
    /// The cluster secret. None: no authentication, every request is allowed.
    pub secret: Option<Secret>,
    /// With a secret: let unauthenticated connections use the data plane (produce, fetch,
    /// offsets, metadata and read-only views). Control, admin and transfer always need the secret.
    pub open_data_plane: bool,
    /// Connections open now (handshakes included), kept by the server for metrics.
    pub open_connections: Arc<std::sync::atomic::AtomicUsize>,
}

/// Default of [`ServerConfig::idle_timeout`] (as Kafka's `connections.max.idle.ms`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default of [`ServerConfig::frame_timeout`].
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`ServerConfig::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default of [`ServerConfig::reserved_connections`].
pub const DEFAULT_RESERVED_CONNECTIONS: usize = 256;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            reserved_connections: DEFAULT_RESERVED_CONNECTIONS,
            max_pending_handshakes: 1024,
            max_in_flight: 4096,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            frame_timeout: DEFAULT_FRAME_TIMEOUT,
            secret: None,
            open_data_plane: false,
            open_connections: Arc::default(),
        }
    }
}

impl ServerConfig {
    /// What an unauthenticated connection may do here.
    pub fn open_to(&self) -> OpenTo {
        match (&self.secret, self.open_data_plane) {
            (None, _) => OpenTo::Everything,
            (Some(_), true) => OpenTo::DataPlane,
            (Some(_), false) => OpenTo::Nothing,
        }
    }
}

/// Connection slots: at most `max` held, of which at most `max - reserved` by connections that
/// did not prove the secret, so `reserved` slots always remain for those that did.
struct Slots {
    /// (all held, held without the secret)
    held: std::sync::Mutex<(usize, usize)>,
    max: usize,
    reserved: usize,
}

/// A held slot; dropping it frees the slot.
struct Slot {
    slots: Arc<Slots>,
    authenticated: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().expect("poisoned");
        held.0 -= 1;
        if !self.authenticated {
            held.1 -= 1;
        }
    }
}

impl Slots {
    fn take(self: &Arc<Self>, authenticated: bool) -> Option<Slot> {
        let mut held = self.held.lock().expect("poisoned");
        if held.0 >= self.max || (!authenticated && held.1 >= self.max - self.reserved) {
            return None;
        }
        held.0 += 1;
        if !authenticated {
            held.1 += 1;
        }
        Some(Slot {
            slots: self.clone(),
            authenticated,
        })
    }
}

/// Serves `service` on `listener` until `shutdown` is cancelled, then stops accepting, ends every
/// connection and returns once their tasks are done.
pub async fn serve<S: Service>(
    listener: TcpListener,
    service: Arc<S>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let max = config.max_connections.max(1);
    let slots = Arc::new(Slots {
        held: std::sync::Mutex::new((0, 0)),
        max,
        reserved: config.reserved_connections.min(max - 1),
    });
    let pending = Arc::new(Semaphore::new(config.max_pending_handshakes.max(1)));
    let config = Arc::new(config);
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let Ok(handshake) = pending.clone().try_acquire_owned() else {
                    // Closing at once tells the peer now; leaving it in the backlog would make
                    // every client, legitimate or not, wait for its connect timeout.
                    debug!(%peer, "too many connections in their handshake; closed");
                    drop(stream);
                    continue;
                };
                debug!(%peer, "accepted connection");
                let conn = Conn {
                    service: service.clone(),
                    config: config.clone(),
                    slots: slots.clone(),
                    shutdown: shutdown.child_token(),
                };
                let open = config.open_connections.clone();
                open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                conns.spawn(async move {
                    // Counted down however the connection ends (a panic included).
                    struct Open(Arc<std::sync::atomic::AtomicUsize>);
                    impl Drop for Open {
                        fn drop(&mut self) {
                            self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    let _open = Open(open);
                    if let Err(reason) = conn.run(stream, handshake).await {
                        // Peers cause these (garbage, stalls, refusals): a warning each would
                        // let any peer fill the logs.
                        debug!(%peer, "closed connection: {reason}");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
    info!("server {} stopping", service.name());
    conns.shutdown().await;
    Ok(())
}

/// One connection's task.
struct Conn<S> {
    service: Arc<S>,
    config: Arc<ServerConfig>,
    slots: Arc<Slots>,
    shutdown: CancellationToken,
}

type Frames = FramedRead<OwnedReadHalf, FrameCodec<RequestEnvelope>>;

/// Waits for the next frame until `deadline`.
async fn next_frame(
    frames: &mut Frames,
    deadline: Instant,
    what: &str,
) -> Result<Option<RequestEnvelope>, String> {
    match tokio::time::timeout_at(deadline, frames.next()).await {
        Err(_) => Err(format!("no {what} in time")),
        Ok(None) => Ok(None),
        Ok(Some(Err(e))) => Err(e.to_string()),
        Ok(Some(Ok(env))) => Ok(Some(env)),
    }
}

/// Aborts a task when dropped: the answer writer ends with its connection, even when the
/// connection's task is itself aborted at shutdown.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Largest frame a connection may send before it proved the secret on a node that opens nothing
/// to it: a handshake or an authentication is a few dozen bytes, and a request it sends is
/// refused anyway, so it never gets to make the node buffer megabytes.
const UNAUTHENTICATED_MAX_FRAME: usize = 64 * 1024;
/// How long a connection may take to complete its handshake (and prove the secret).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A read buffer grown past this by a large frame is given back once it is empty.
const KEEP_READ_BUFFER: usize = 1 << 20;

impl<S: Service> Conn<S> {
    async fn run(self, stream: TcpStream, handshake: OwnedSemaphorePermit) -> Result<(), String> {
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        let cfg = self.config.clone();
        let mut frames = FramedRead::new(
            rd,
            FrameCodec::<RequestEnvelope>::new(cfg.max_frame.min(UNAUTHENTICATED_MAX_FRAME)),
        );
        // Bounded: a request's task ends only once its response is queued, so a client that sends
        // and never reads stops being read (`max_in_flight`) instead of piling up responses here.
        let (tx, rx) = mpsc::channel::<ResponseEnvelope>(cfg.max_in_flight.max(1));
        // The writer cancels this when the peer stops taking answers, which ends the connection.
        let writer_gone = self.shutdown.child_token();
        let mut writer = AbortOnDrop(tokio::spawn(write_loop(
            wr,
            rx,
            FrameCodec::<()>::new(cfg.max_frame),
            cfg.frame_timeout,
            writer_gone.clone(),
        )));
        // The slot is held until the last answer is written, not only while requests are read.
        let mut slot = None;
        let result = tokio::select! {
            _ = self.shutdown.cancelled() => Ok(()),
            r = self.converse(&mut frames, &tx, handshake, &writer_gone, &mut slot) => r,
        };
        drop(tx);
        // The answers queued go out (a refusal says why the connection ends); each write is
        // bounded by the frame timeout, and shutdown aborts the writer with this task.
        let _ = (&mut writer.0).await;
        drop(slot);
        result
    }

    /// The handshake, admission, then requests until the peer leaves, idles or misbehaves.
    async fn converse(
        &self,
        frames: &mut Frames,
        tx: &mpsc::Sender<ResponseEnvelope>,
        handshake: OwnedSemaphorePermit,
        writer_gone: &CancellationToken,
        slot: &mut Option<Slot>,
    ) -> Result<(), String> {
        let cfg = &self.config;
        let answer = |correlation_id, result| ResponseEnvelope {
            correlation_id,
            result,
        };
        let handshake_deadline = Instant::now() + cfg.frame_timeout.min(HANDSHAKE_TIMEOUT);
        let Some(hello) = next_frame(frames, handshake_deadline, "handshake").await? else {
            return Ok(());
        };
        let (client_nonce, wants_auth) = match hello.request {
            Request::Handshake {
                version,
                nonce,
                authenticate,
                ..
            } if version == PROTOCOL_VERSION => (nonce, authenticate),
            Request::Handshake { version, .. } => {
                let e = ErrorKind::VersionMismatch {
                    client: version,
                    server: PROTOCOL_VERSION,
                };
                let reason = e.to_string();
                let _ = tx.send(answer(hello.correlation_id, Err(e))).await;
                return Err(reason);
            }
            other => {
                let e = ErrorKind::BadRequest {
                    reason: format!("the first frame must be a handshake, got {}", other.name()),
                };
                let reason = e.to_string();
                let _ = tx.send(answer(hello.correlation_id, Err(e))).await;
                return Err(reason);
            }
        };
        let auth_off = cfg.secret.is_none();
        let too_many = |slots: &Slots| ErrorKind::TooManyConnections {
            node: self.service.name(),
            limit: slots.max as u32,
            reserved: if auth_off { 0 } else { slots.reserved as u32 },
        };
        // Admission. A peer that will prove the secret is admitted once it has (a mere claim
        // takes no slot); the others now, to the slots not kept for authenticated peers.
        if !wants_auth || auth_off {
            match self.slots.take(auth_off) {
                Some(s) => *slot = Some(s),
                None => {
                    let e = too_many(&self.slots);
                    let reason = e.to_string();
                    let _ = tx.send(answer(hello.correlation_id, Err(e))).await;
                    return Err(reason);
                }
            }
        }
        let server_nonce = random_bytes::<NONCE_LEN>().to_vec();
        // Proven only to a peer that says it holds the secret: nobody else gets proofs to try
        // guesses against.
        let proof = cfg
            .secret
            .as_ref()
            .filter(|_| wants_auth)
            .map(|s| s.server_proof(&client_nonce, &server_nonce));
        let _ = tx
            .send(answer(
                hello.correlation_id,
                Ok(Response::Handshake {
                    version: PROTOCOL_VERSION,
                    server: self.service.name(),
                    nonce: server_nonce.clone(),
                    proof,
                    open: cfg.open_to(),
                }),
            ))
            .await;
        let mut authenticated = auth_off;
        if wants_auth {
            let Some(env) = next_frame(frames, handshake_deadline, "authentication").await? else {
                return Ok(());
            };
            let Request::Authenticate { proof } = env.request else {
                return Err(format!(
                    "expected the authentication frame, got {}",
                    env.request.name()
                ));
            };
            match &cfg.secret {
                None => {}
                Some(secret) if secret.verify_client(&client_nonce, &server_nonce, &proof) => {
                    authenticated = true
                }
                Some(_) => {
                    let e = ErrorKind::Unauthorized {
                        request: "authentication".into(),
                        reason: "failed: the client holds another cluster secret than this \
                                 node (check --token-file / SHARDQ_TOKEN_FILE)"
                            .into(),
                    };
                    let reason = e.to_string();
                    let _ = tx.send(answer(env.correlation_id, Err(e))).await;
                    return Err(reason);
                }
            }
            if slot.is_none() {
                match self.slots.take(true) {
                    Some(s) => *slot = Some(s),
                    None => {
                        let e = too_many(&self.slots);
                        let reason = e.to_string();
                        let _ = tx.send(answer(env.correlation_id, Err(e))).await;
                        return Err(reason);
                    }
                }
            }
            let _ = tx
                .send(answer(env.correlation_id, Ok(Response::Authenticated)))
                .await;
        }
        drop(handshake);
        let data_open = authenticated || cfg.open_data_plane;
        if data_open {
            frames.decoder_mut().set_max_frame(cfg.max_frame);
        }

        let mut in_flight = JoinSet::new();
        let max_in_flight = cfg.max_in_flight.max(1);
        let mut last_activity = Instant::now();
        // With nothing else to wake it, the loop still looks every half frame timeout whether a
        // frame started arriving and stalled.
        let check_every = (cfg.frame_timeout / 2).max(Duration::from_millis(1));
        let result = loop {
            let now = Instant::now();
            let reading = in_flight.len() < max_in_flight;
            // A frame only stalls while the server reads: when it stopped reading (too many
            // requests in flight), the rest of the frame waits in the socket, not in the peer.
            let wake = match frames.decoder().partial_since().filter(|_| reading) {
                Some(since) => since + cfg.frame_timeout,
                None if in_flight.is_empty() => {
                    (last_activity + cfg.idle_timeout).min(now + check_every)
                }
                None => now + check_every,
            };
            tokio::select! {
                _ = writer_gone.cancelled() => break Err("the peer stopped taking answers".to_string()),
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => last_activity = Instant::now(),
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    let reading = in_flight.len() < max_in_flight;
                    if let Some(since) = frames.decoder().partial_since().filter(|_| reading) {
                        if now >= since + cfg.frame_timeout {
                            break Err(format!(
                                "a frame did not arrive whole within {} ms of its first byte",
                                cfg.frame_timeout.as_millis()
                            ));
                        }
                    } else if in_flight.is_empty() && now >= last_activity + cfg.idle_timeout {
                        debug!("closing a connection idle for {} ms", cfg.idle_timeout.as_millis());
                        break Ok(());
                    }
                }
                frame = frames.next(), if in_flight.len() < max_in_flight => match frame {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(e.to_string()),
                    Some(Ok(env)) => {
                        let buf = frames.read_buffer_mut();
                        if buf.is_empty() && buf.capacity() > KEEP_READ_BUFFER {
                            *buf = BytesMut::new();
                        }
                        let name = env.request.name();
                        let refusal = match env.request.access() {
                            Access::Handshake => Some(ErrorKind::BadRequest {
                                reason: format!("{name} is only valid when a connection opens"),
                            }),
                            Access::Data if !data_open => Some(unauthorized(name, cfg.open_data_plane)),
                            Access::Control if !authenticated => Some(unauthorized(name, cfg.open_data_plane)),
                            _ => None,
                        };
                        if let Some(e) = refusal {
                            // Refused requests are no activity: they do not keep a connection.
                            // A connection that can do nothing here is told why, then closed.
                            let _ = tx.send(answer(env.correlation_id, Err(e))).await;
                            if !data_open {
                                break Ok(());
                            }
                            continue;
                        }
                        last_activity = Instant::now();
                        let fut = self.service.call(env.request);
                        let tx = tx.clone();
                        in_flight.spawn(async move {
                            // A bug in one handler answers that request with an error instead of
                            // leaving the client waiting for its timeout.
                            let result = AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|_| {
                                Err(ErrorKind::Internal { reason: format!("the {name} handler failed") })
                            });
                            let _ = tx.send(answer(env.correlation_id, result)).await;
                        });
                    }
                }
            }
        };
        // Finish what was asked before EOF (a client may half-close after sending); on error or
        // shutdown drop the rest.
        if result.is_ok() && !self.shutdown.is_cancelled() {
            while in_flight.join_next().await.is_some() {}
        }
        in_flight.shutdown().await;
        result
    }
}

/// The refusal of a request that needs the secret on a connection that did not prove it.
fn unauthorized(request: &str, open_data_plane: bool) -> ErrorKind {
    let scope = if open_data_plane {
        "needs the cluster secret (this node opens only produce, fetch, offsets and metadata \
         to clients without it)"
    } else {
        "needs the cluster secret"
    };
    ErrorKind::Unauthorized {
        request: request.to_string(),
        reason: format!(
            "{scope}, and this connection did not prove it: give the command the cluster's \
             token file with --token-file PATH or SHARDQ_TOKEN_FILE=PATH (`shardq up` writes \
             DATA/cluster.token)"
        ),
    }
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<ResponseEnvelope>,
    mut codec: FrameCodec<()>,
    write_timeout: Duration,
    gone: CancellationToken,
) {
    // Allocated on first use and given back after a large answer: an idle connection holds no
    // write buffer worth counting.
    let mut buf = BytesMut::new();
    while let Some(env) = rx.recv().await {
        let mut next = Some(env);
        while let Some(env) = next.take() {
            if let Err(e) = codec.encode(&env, &mut buf) {
                // Too large to send: answer with the error instead, so the client is not left waiting.
                let fallback = ResponseEnvelope {
                    correlation_id: env.correlation_id,
                    result: Err(ErrorKind::Internal {
                        reason: format!("response could not be sent: {e}"),
                    }),
                };
                if codec.encode(&fallback, &mut buf).is_err() {
                    gone.cancel();
                    return;
                }
            }
            if buf.len() < 1 << 20 {
                next = rx.try_recv().ok();
            }
        }
        match tokio::time::timeout(write_timeout, wr.write_all(&buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => {
                gone.cancel();
                return;
            }
        }
        if buf.capacity() > KEEP_WRITE_BUFFER {
            buf = BytesMut::new();
        } else {
            buf.clear();
        }
    }
    let _ = wr.shutdown().await;
}

/// Largest write buffer a connection keeps between answers.
const KEEP_WRITE_BUFFER: usize = 256 * 1024;
