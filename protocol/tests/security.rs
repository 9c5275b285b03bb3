//! The server's trust and connection rules, over loopback TCP: the handshake's mutual proof of the
//! cluster secret, which requests need it (with and without an open data plane), connection
//! slots with a reserve for authenticated peers, idle and stalled connections closed, and frame
//! buffers that follow the bytes that arrived rather than the length a peer declared.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures::{SinkExt, StreamExt};
use shardq_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Framed};

/// Bound on anything a test waits for; far above what a healthy run needs.
const DEADLINE: Duration = Duration::from_secs(20);

/// Answers `DescribeTopic` with its name and everything else with `Ok`.
struct Echo;

impl Service for Echo {
    fn name(&self) -> String {
        "echo".into()
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        Box::pin(async move {
            Ok(match request {
                Request::DescribeTopic { name } => Response::TopicCreated(TopicInfo {
                    name,
                    partitions: 1,
                    replication_factor: 1,
                    min_insync: 1,
                    retention: Default::default(),
                }),
                _ => Response::Ok,
            })
        })
    }
}

struct Server {
    addr: String,
    stop: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(config: ServerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, Arc::new(Echo), config, stop.clone()));
    Server { addr, stop }
}

fn secured(secret: &Secret) -> ServerConfig {
    ServerConfig {
        secret: Some(secret.clone()),
        ..ServerConfig::default()
    }
}

fn client(secret: Option<&Secret>) -> ConnectionConfig {
    ConnectionConfig {
        secret: secret.cloned(),
        request_timeout: DEADLINE,
        ..ConnectionConfig::default()
    }
}

fn drop_shard() -> Request {
    Request::DropShard {
        shard: ShardId::new("T", 1),
        epoch: u64::MAX,
    }
}

fn export() -> Request {
    Request::ExportShard {
        shard: ShardId::new("T", 1),
        from_offset: 0,
        max_bytes: 1 << 20,
    }
}

fn describe(name: &str) -> Request {
    Request::DescribeTopic { name: name.into() }
}

fn unauthorized(r: Result<Response, ClientError>) -> String {
    match r {
        Err(ClientError::Server(e @ ErrorKind::Unauthorized { .. })) => e.to_string(),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

#[tokio::test]
async fn control_needs_the_secret_and_the_data_plane_is_closed_unless_opened() {
    let secret = Secret::generate();
    let server = start(secured(&secret)).await;

    // Without the secret: control, transfer and the data plane are all refused, the answer
    // says what to do, and the connection (which can do nothing here) is closed.
    let anon = || async {
        Connection::connect(&server.addr, client(None))
            .await
            .unwrap()
    };
    let first = anon().await;
    assert!(!first.is_authenticated());
    assert_eq!(first.server_open_to(), OpenTo::Nothing);
    let msg = unauthorized(first.request(drop_shard()).await);
    assert!(
        msg.contains("drop-shard") && msg.contains("--token-file"),
        "{msg}"
    );
    let began = Instant::now();
    while !first.is_closed() {
        assert!(
            began.elapsed() < DEADLINE,
            "a refused connection was kept open"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    unauthorized(anon().await.request(export()).await);
    unauthorized(
        anon()
            .await
            .request(Request::RemoveBroker { id: 2, force: true })
            .await,
    );
    unauthorized(anon().await.request(describe("x")).await);

    // With it: everything.
    let member = Connection::connect(&server.addr, client(Some(&secret)))
        .await
        .unwrap();
    assert!(member.is_authenticated());
    assert_eq!(member.request(drop_shard()).await.unwrap(), Response::Ok);
    assert!(matches!(
        member.request(describe("x")).await,
        Ok(Response::TopicCreated(_))
    ));

    // An open data plane lets anyone read and write, never control or transfer.
    let open = start(ServerConfig {
        open_data_plane: true,
        ..secured(&secret)
    })
    .await;
    let anon = Connection::connect(&open.addr, client(None)).await.unwrap();
    assert_eq!(anon.server_open_to(), OpenTo::DataPlane);
    assert!(matches!(
        anon.request(describe("x")).await,
        Ok(Response::TopicCreated(_))
    ));
    let msg = unauthorized(anon.request(drop_shard()).await);
    assert!(msg.contains("opens only"), "{msg}");
    // A second handshake on an open connection is refused, not a way around the check.
    let again = anon
        .request(Request::Authenticate { proof: vec![0; 32] })
        .await;
    assert!(
        matches!(
            again,
            Err(ClientError::Server(ErrorKind::BadRequest { .. }))
        ),
        "{again:?}"
    );
    unauthorized(anon.request(export()).await);
    unauthorized(
        anon.request(Request::CreateTopic {
            name: "T".into(),
            partitions: 1,
            replication_factor: None,
            min_insync: None,
            retention: Default::default(),
        })
        .await,
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_both_ways() {
    let secret = Secret::generate();
    let server = start(secured(&secret)).await;
    // A client with another secret: the server's proof does not check out, so the client
    // refuses the server before sending anything else.
    let other = Secret::generate();
    let err = Connection::connect(&server.addr, client(Some(&other)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("another cluster secret"), "{err}");

    // A node without any secret cannot pass for a cluster member.
    let open = start(ServerConfig::default()).await;
    let err = Connection::connect(&open.addr, client(Some(&secret)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("without a cluster secret"), "{err}");

    // A forged proof sent by hand is refused and the connection closed.
    let mut framed = raw(&server.addr).await;
    hello(&mut framed, true).await.expect("handshake");
    framed
        .send(&RequestEnvelope {
            correlation_id: 2,
            request: Request::Authenticate { proof: vec![7; 32] },
        })
        .await
        .unwrap();
    let answer = next(&mut framed).await.expect("an answer before close");
    assert!(
        matches!(answer.result, Err(ErrorKind::Unauthorized { .. })),
        "{answer:?}"
    );
    assert!(next(&mut framed).await.is_none(), "connection left open");
}

type Raw = Framed<TcpStream, FrameCodec<ResponseEnvelope>>;

async fn raw(addr: &str) -> Raw {
    Framed::new(
        TcpStream::connect(addr).await.expect("connect"),
        FrameCodec::new(DEFAULT_MAX_FRAME),
    )
}

async fn next(framed: &mut Raw) -> Option<ResponseEnvelope> {
    match tokio::time::timeout(DEADLINE, framed.next()).await {
        Ok(Some(Ok(env))) => Some(env),
        Ok(_) => None,
        Err(_) => panic!("no answer and no close within {DEADLINE:?}"),
    }
}

/// Sends a handshake by hand and returns the answer.
async fn hello(framed: &mut Raw, authenticate: bool) -> Result<Response, ErrorKind> {
    framed
        .send(&RequestEnvelope {
            correlation_id: 1,
            request: Request::Handshake {
                version: PROTOCOL_VERSION,
                client: "raw".into(),
                nonce: vec![5; 32],
                authenticate,
            },
        })
        .await
        .unwrap();
    next(framed).await.expect("a handshake answer").result
}

#[tokio::test]
async fn a_flood_of_connections_never_locks_out_authenticated_peers() {
    let secret = Secret::generate();
    let server = start(ServerConfig {
        max_connections: 12,
        reserved_connections: 4,
        ..secured(&secret)
    })
    .await;
    // Eight connections without the secret fill the open slots and stay idle.
    let mut flood = Vec::new();
    for _ in 0..8 {
        let c = Connection::connect(&server.addr, client(None))
            .await
            .unwrap();
        flood.push(c);
    }
    // The ninth is told why it is refused.
    let err = Connection::connect(&server.addr, client(None))
        .await
        .unwrap_err();
    match &err {
        ClientError::Server(ErrorKind::TooManyConnections {
            limit, reserved, ..
        }) => {
            assert_eq!((*limit, *reserved), (12, 4))
        }
        other => panic!("expected TooManyConnections, got {other:?}"),
    }
    assert!(err.is_retriable());
    // Peers with the secret still get in, up to the reserve.
    let mut members = Vec::new();
    for _ in 0..4 {
        let c = Connection::connect(&server.addr, client(Some(&secret)))
            .await
            .unwrap();
        assert_eq!(c.request(drop_shard()).await.unwrap(), Response::Ok);
        members.push(c);
    }
    assert!(matches!(
        Connection::connect(&server.addr, client(Some(&secret))).await,
        Err(ClientError::Server(ErrorKind::TooManyConnections { .. }))
    ));
    // A slot freed is a slot taken again.
    flood.pop().unwrap().close();
    let start = Instant::now();
    loop {
        match Connection::connect(&server.addr, client(None)).await {
            Ok(c) => {
                flood.push(c);
                break;
            }
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "slot never freed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let server = start(ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let idle = Connection::connect(&server.addr, client(None))
        .await
        .unwrap();
    let busy = Connection::connect(&server.addr, client(None))
        .await
        .unwrap();
    let opened = Instant::now();
    // `busy` sends a request every 100 ms for 1.2 s, four idle timeouts.
    while opened.elapsed() < Duration::from_millis(1200) {
        assert!(matches!(
            busy.request(describe("x")).await,
            Ok(Response::TopicCreated(_))
        ));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle.is_closed(), "an idle connection was kept open");
    assert!(!busy.is_closed(), "a busy connection was closed as idle");
}

#[tokio::test]
async fn a_stalled_frame_is_closed_and_holds_only_what_arrived() {
    let server = start(ServerConfig {
        frame_timeout: Duration::from_millis(400),
        ..ServerConfig::default()
    })
    .await;
    let mut framed = raw(&server.addr).await;
    hello(&mut framed, false).await.expect("handshake");
    // Declare a 16 MiB frame, send 10 bytes of it, and stop.
    let mut stream = framed.into_inner();
    let mut partial = BytesMut::new();
    partial.put_u32(16 << 20);
    partial.put_slice(&[0u8; 10]);
    stream.write_all(&partial).await.unwrap();
    let sent = Instant::now();
    let mut sink = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink))
        .await
        .expect("the server kept a stalled connection open")
        .ok();
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "closed after {waited:?}, before the frame timeout"
    );

    // The decoder itself: a declared length reserves nothing; the buffer holds what arrived.
    let mut codec = FrameCodec::<RequestEnvelope>::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    buf.put_u32(16 << 20);
    buf.put_slice(&[1u8; 1000]);
    let before = buf.capacity();
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert_eq!(
        buf.capacity(),
        before,
        "the decoder reserved room for the declared length"
    );
    assert!(codec.partial_since().is_some());
}

#[tokio::test]
async fn a_handshake_that_never_comes_is_closed() {
    let server = start(ServerConfig {
        frame_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    })
    .await;
    let mut stream = TcpStream::connect(&server.addr).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink))
        .await
        .expect("the server waited forever for a handshake")
        .ok();
}
