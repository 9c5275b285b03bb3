//! The request server every shardq node runs: an accept loop bounded by a semaphore, one task per
//! connection, a versioned handshake, pipelined requests whose responses go back as they complete,
//! and a shutdown token. A garbage or oversize frame closes only the connection that sent it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::{Encoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::{FrameCodec, DEFAULT_MAX_FRAME};
use crate::error::ErrorKind;
use crate::message::{Request, RequestEnvelope, Response, ResponseEnvelope};
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
    pub max_connections: usize,
    /// Requests one connection may have in flight; past it the server stops reading that
    /// connection until answers go out (backpressure instead of unbounded memory).
    pub max_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_frame: DEFAULT_MAX_FRAME,
            max_connections: 4096,
            max_in_flight: 4096,
        }
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
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut conns = JoinSet::new();
    let mut backoff = Duration::from_millis(5);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => p.expect("never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                debug!(%peer, "accepted connection");
                let svc = service.clone();
                let token = shutdown.child_token();
                let (max_frame, max_in_flight) = (config.max_frame, config.max_in_flight);
                conns.spawn(async move {
                    if let Err(reason) =
                        handle_connection(stream, svc, max_frame, max_in_flight, token).await
                    {
                        warn!(%peer, "closed connection: {reason}");
                    }
                    drop(permit);
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

async fn handle_connection<S: Service>(
    stream: TcpStream,
    service: Arc<S>,
    max_frame: usize,
    max_in_flight: usize,
    shutdown: CancellationToken,
) -> Result<(), String> {
    stream.set_nodelay(true).ok();
    let (rd, wr) = stream.into_split();
    let mut frames = FramedRead::new(rd, FrameCodec::<RequestEnvelope>::new(max_frame));
    // Bounded: a request's task ends only once its response is queued, so a client that sends
    // and never reads stops being read (`max_in_flight`) instead of piling up responses here.
    let (tx, rx) = mpsc::channel::<ResponseEnvelope>(max_in_flight.max(1));
    let writer = tokio::spawn(write_loop(wr, rx, FrameCodec::<()>::new(max_frame)));

    // The handshake comes first and names a version we speak.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        f = tokio::time::timeout(Duration::from_secs(10), frames.next()) => f,
    };
    let hello = match first {
        Err(_) => return Err("no handshake within 10 s".into()),
        Ok(None) => return Ok(()),
        Ok(Some(Err(e))) => return Err(e.to_string()),
        Ok(Some(Ok(env))) => env,
    };
    let refusal = match hello.request {
        Request::Handshake { version, .. } if version == PROTOCOL_VERSION => None,
        Request::Handshake { version, .. } => Some(ErrorKind::VersionMismatch {
            client: version,
            server: PROTOCOL_VERSION,
        }),
        other => Some(ErrorKind::BadRequest {
            reason: format!("the first frame must be a handshake, got {}", other.name()),
        }),
    };
    let refused = refusal.as_ref().map(|e| e.to_string());
    let _ = tx.try_send(ResponseEnvelope {
        correlation_id: hello.correlation_id,
        result: match refusal {
            None => Ok(Response::Handshake {
                version: PROTOCOL_VERSION,
                server: service.name(),
            }),
            Some(e) => Err(e),
        },
    });
    if let Some(reason) = refused {
        drop(tx);
        let _ = writer.await;
        return Err(reason);
    }

    let mut in_flight = JoinSet::new();
    let max_in_flight = max_in_flight.max(1);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            frame = frames.next(), if in_flight.len() < max_in_flight => match frame {
                None => break Ok(()),
                Some(Err(e)) => break Err(e.to_string()),
                Some(Ok(env)) => {
                    let name = env.request.name();
                    let fut = service.call(env.request);
                    let tx = tx.clone();
                    in_flight.spawn(async move {
                        // A bug in one handler answers that request with an error instead of
                        // leaving the client waiting for its timeout.
                        let result = AssertUnwindSafe(fut).catch_unwind().await.unwrap_or_else(|_| {
                            Err(ErrorKind::Internal { reason: format!("the {name} handler failed") })
                        });
                        let _ = tx.send(ResponseEnvelope { correlation_id: env.correlation_id, result }).await;
                    });
                }
            }
        }
    };
    // Finish what was asked before EOF (a client may half-close after sending); on error or
    // shutdown drop the rest.
    if result.is_ok() && !shutdown.is_cancelled() {
        while in_flight.join_next().await.is_some() {}
    }
    in_flight.shutdown().await;
    drop(tx);
    let _ = writer.await;
    result
}

async fn write_loop(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<ResponseEnvelope>,
    mut codec: FrameCodec<()>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
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
                    return;
                }
            }
            if buf.len() < 1 << 20 {
                next = rx.try_recv().ok();
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = wr.shutdown().await;
}
