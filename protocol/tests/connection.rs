//! End-to-end tests of the multiplexed client `Connection` against `serve`, over loopback TCP:
//! pipelining with out-of-order completion, in-flight backpressure, per-request timeouts, the
//! handshake (version mismatch, non-handshake first frame), garbage and oversize frames closing
//! only their own connection, oversize requests/responses, shutdown, and connect failures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BufMut;
use futures::{SinkExt, StreamExt};
use shardq_protocol::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

/// Bound on anything a test waits for; far above what a healthy run needs.
const DEADLINE: Duration = Duration::from_secs(20);

/// A test service. `DescribeTopic{name}` is the workhorse:
/// - a number `n`: answered after a delay derived from `n` (so later requests often finish
///   first) with `TopicCreated{name, partitions: completion counter}`;
/// - `hang`: answered only once the test adds a permit to `release`;
/// - `big:N`: answered with an N-byte name (to exceed the server's frame limit).
///
/// Every other request is answered `Ok`. Counts calls and concurrent calls.
struct TestService {
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    arrivals: AtomicU64,
    completions: AtomicU32,
    /// name -> (arrival index, completion index).
    order: Mutex<HashMap<String, (u64, u32)>>,
    release: Semaphore,
}

impl TestService {
    fn new() -> Arc<Self> {
        Arc::new(TestService {
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            arrivals: AtomicU64::new(0),
            completions: AtomicU32::new(0),
            order: Mutex::new(HashMap::new()),
            release: Semaphore::new(0),
        })
    }
}

/// Decrements the in-flight count however the call's future ends (completed or dropped).
struct InFlight(Arc<TestService>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service for TestService {
    fn name(&self) -> String {
        "test-echo".into()
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let guard = InFlight(self.clone());
        let arrival = self.arrivals.fetch_add(1, Ordering::SeqCst);
        let svc = self.clone();
        Box::pin(async move {
            let _guard = guard;
            let name = match request {
                Request::DescribeTopic { name } => name,
                _ => return Ok(Response::Ok),
            };
            if name == "hang" {
                match svc.release.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => return Err(ErrorKind::ShuttingDown),
                }
                return Ok(Response::TopicCreated(TopicInfo {
                    name,
                    partitions: 0,
                    replication_factor: 1,
                    min_insync: 1,
                    retention: Default::default(),
                }));
            }
            if let Some(n) = name.strip_prefix("big:") {
                let n: usize = n.parse().map_err(|_| ErrorKind::BadRequest {
                    reason: format!("bad size in {name:?}"),
                })?;
                return Ok(Response::TopicCreated(TopicInfo {
                    name: "x".repeat(n),
                    partitions: 0,
                    replication_factor: 1,
                    min_insync: 1,
                    retention: Default::default(),
                }));
            }
            let n: u64 = name.parse().map_err(|_| ErrorKind::BadRequest {
                reason: format!("not a number: {name:?}"),
            })?;
            // Within each run of 5, later requests wait less: they tend to overtake.
            tokio::time::sleep(Duration::from_millis(4 - n % 5)).await;
            let completion = svc.completions.fetch_add(1, Ordering::SeqCst);
            svc.order
                .lock()
                .expect("poisoned")
                .insert(name.clone(), (arrival, completion));
            Ok(Response::TopicCreated(TopicInfo {
                name,
                partitions: completion,
                replication_factor: 1,
                min_insync: 1,
                retention: Default::default(),
            }))
        })
    }
}

struct TestServer {
    addr: String,
    token: CancellationToken,
    handle: JoinHandle<std::io::Result<()>>,
    svc: Arc<TestService>,
}

async fn start(svc: Arc<TestService>, config: ServerConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let token = CancellationToken::new();
    let handle = tokio::spawn(serve(listener, svc.clone(), config, token.clone()));
    TestServer {
        addr,
        token,
        handle,
        svc,
    }
}

impl TestServer {
    /// Cancels the server and waits (bounded) for `serve` to return.
    async fn stop(self) {
        self.svc.release.close();
        self.token.cancel();
        let res = tokio::time::timeout(DEADLINE, self.handle)
            .await
            .expect("serve() did not return after shutdown")
            .expect("serve task panicked");
        res.expect("serve() failed");
    }
}

fn client_config() -> ConnectionConfig {
    ConnectionConfig {
        request_timeout: DEADLINE,
        connect_timeout: Duration::from_secs(5),
        client_name: "connection-test".into(),
        ..ConnectionConfig::default()
    }
}

async fn connect(addr: &str, config: ConnectionConfig) -> Connection {
    Connection::connect(addr, config).await.expect("connect")
}

fn describe(name: impl Into<String>) -> Request {
    Request::DescribeTopic { name: name.into() }
}

/// Asserts `conn` still answers a numbered request correctly.
async fn assert_works(conn: &Connection, n: u64) {
    match conn.request(describe(n.to_string())).await {
        Ok(Response::TopicCreated(t)) => assert_eq!(t.name, n.to_string()),
        other => panic!("connection no longer works: {other:?}"),
    }
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A raw framed socket speaking the protocol by hand.
async fn raw(addr: &str) -> Framed<TcpStream, FrameCodec<ResponseEnvelope>> {
    let stream = TcpStream::connect(addr).await.expect("raw connect");
    Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME))
}

async fn raw_handshake(framed: &mut Framed<TcpStream, FrameCodec<ResponseEnvelope>>) {
    let hello = RequestEnvelope {
        correlation_id: 1,
        request: Request::Handshake {
            version: PROTOCOL_VERSION,
            client: "raw".into(),
            nonce: vec![1; 32],
            authenticate: false,
        },
    };
    framed.send(&hello).await.expect("send handshake");
    let answer = tokio::time::timeout(DEADLINE, framed.next())
        .await
        .expect("handshake answer in time")
        .expect("a frame")
        .expect("a valid frame");
    assert_eq!(answer.correlation_id, 1);
    assert!(
        matches!(answer.result, Ok(Response::Handshake { version, .. }) if version == PROTOCOL_VERSION),
        "{answer:?}"
    );
}

/// Reads until the server closes the socket (EOF or reset); fails if it stays open.
async fn assert_closed_by_server(stream: &mut TcpStream) {
    let mut sink = Vec::new();
    match tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink)).await {
        Ok(_) => {} // EOF or a reset: either way the server hung up.
        Err(_) => panic!("server kept the connection open"),
    }
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_requests_match_and_complete_out_of_order() {
    const N: u64 = 10_000;
    let server = start(TestService::new(), ServerConfig::default()).await;
    let conn = Arc::new(connect(&server.addr, client_config()).await);
    assert_eq!(conn.server(), "test-echo");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let conn = conn.clone();
        tasks.spawn(async move { (i, conn.request(describe(i.to_string())).await) });
    }
    let mut completions = vec![None; N as usize];
    while let Some(joined) = tokio::time::timeout(DEADLINE, tasks.join_next())
        .await
        .expect("all requests answered in time")
    {
        let (i, res) = joined.expect("request task panicked");
        match res {
            Ok(Response::TopicCreated(TopicInfo {
                name, partitions, ..
            })) => {
                assert_eq!(
                    name,
                    i.to_string(),
                    "request {i} got another request's answer"
                );
                assert!(completions[i as usize].replace(partitions).is_none());
            }
            other => panic!("request {i}: {other:?}"),
        }
    }
    // Every request answered once, and the completion counters are a permutation of 0..N.
    let mut seen: Vec<u32> = completions
        .iter()
        .map(|c| c.expect("request without an answer"))
        .collect();
    seen.sort_unstable();
    assert!(seen.iter().copied().eq(0..N as u32));

    // Out of order: sorted by the order the server received them (the send order on the wire),
    // the completion counters are not increasing.
    let order = server.svc.order.lock().expect("poisoned").clone();
    assert_eq!(order.len(), N as usize);
    let mut by_arrival: Vec<(u64, u32)> = order.values().copied().collect();
    by_arrival.sort_unstable();
    let inversions = by_arrival.windows(2).filter(|w| w[0].1 > w[1].1).count();
    assert!(inversions > 0, "every response completed in send order");
    for (name, (_, completion)) in &order {
        let i: usize = name.parse().expect("numeric name");
        assert_eq!(
            completions[i],
            Some(*completion),
            "answer of {name} is not its own"
        );
    }

    assert_works(&conn, 1).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_concurrent_calls_on_the_server() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let conn = Arc::new(
        connect(
            &server.addr,
            ConnectionConfig {
                max_in_flight: 4,
                ..client_config()
            },
        )
        .await,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let conn = conn.clone();
        tasks.spawn(async move { (i, conn.request(describe(i.to_string())).await) });
    }
    while let Some(joined) = tokio::time::timeout(DEADLINE, tasks.join_next())
        .await
        .expect("all requests answered in time")
    {
        let (i, res) = joined.expect("request task panicked");
        assert!(
            matches!(&res, Ok(Response::TopicCreated(t)) if t.name == i.to_string()),
            "request {i}: {res:?}"
        );
    }
    let max = server.svc.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max <= 4,
        "server saw {max} concurrent calls with max_in_flight = 4"
    );
    // And the limit is a limit, not serialization: with 200 waiting, all 4 slots were used.
    assert_eq!(max, 4, "requests were not pipelined");
    // The handshake is a call of the connection, not of the service.
    assert_eq!(server.svc.calls.load(Ordering::SeqCst), 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_only_that_request() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let conn = connect(&server.addr, client_config()).await;

    let started = Instant::now();
    let res = conn
        .request_with_timeout(describe("hang"), Duration::from_millis(100))
        .await;
    match res {
        Err(ClientError::Timeout { after_ms: 100, .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(started.elapsed() < DEADLINE);
    assert!(!conn.is_closed());

    // The late answer arrives and must be dropped, not handed to the next request.
    server.svc.release.add_permits(1);
    wait_for("the hung call to finish", || {
        server.svc.in_flight.load(Ordering::SeqCst) == 0
    })
    .await;
    assert_works(&conn, 7).await;
    assert_works(&conn, 8).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_an_in_flight_slot_counts_toward_the_timeout() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let conn = Arc::new(
        connect(
            &server.addr,
            ConnectionConfig {
                max_in_flight: 1,
                ..client_config()
            },
        )
        .await,
    );
    let hung = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(describe("hang")).await })
    };
    wait_for("the hang call", || {
        server.svc.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    match conn
        .request_with_timeout(describe("1"), Duration::from_millis(50))
        .await
    {
        Err(ClientError::Timeout { after_ms: 50, .. }) => {}
        other => panic!("expected a timeout while waiting for a slot, got {other:?}"),
    }
    // The queued request was never sent.
    assert_eq!(server.svc.calls.load(Ordering::SeqCst), 1);
    server.svc.release.add_permits(1);
    let res = tokio::time::timeout(DEADLINE, hung)
        .await
        .expect("hung request finished")
        .expect("task");
    assert!(matches!(res, Ok(Response::TopicCreated(t)) if t.name == "hang"));
    assert_works(&conn, 2).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_is_refused_and_closed() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let mut framed = raw(&server.addr).await;
    let hello = RequestEnvelope {
        correlation_id: 77,
        request: Request::Handshake {
            version: 999,
            client: "from-the-future".into(),
            nonce: vec![],
            authenticate: false,
        },
    };
    framed.send(&hello).await.expect("send");
    let answer = tokio::time::timeout(DEADLINE, framed.next())
        .await
        .expect("an answer in time")
        .expect("a frame before close")
        .expect("a valid frame");
    assert_eq!(answer.correlation_id, 77);
    let err = answer
        .result
        .expect_err("a version-999 handshake was accepted");
    assert_eq!(
        err,
        ErrorKind::VersionMismatch {
            client: 999,
            server: PROTOCOL_VERSION
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("999") && msg.contains(&PROTOCOL_VERSION.to_string()),
        "{msg}"
    );
    // Then the server hangs up.
    match tokio::time::timeout(DEADLINE, framed.next()).await {
        Ok(None) | Ok(Some(Err(_))) => {}
        Ok(Some(Ok(more))) => panic!("server kept talking after refusing: {more:?}"),
        Err(_) => panic!("server kept the refused connection open"),
    }
    assert_eq!(server.svc.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frame_must_be_a_handshake() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let mut framed = raw(&server.addr).await;
    let env = RequestEnvelope {
        correlation_id: 5,
        request: Request::ListTopics,
    };
    framed.send(&env).await.expect("send");
    let answer = tokio::time::timeout(DEADLINE, framed.next())
        .await
        .expect("an answer in time")
        .expect("a frame before close")
        .expect("a valid frame");
    assert_eq!(answer.correlation_id, 5);
    match answer.result {
        Err(ErrorKind::BadRequest { reason }) => {
            assert!(reason.contains("handshake"), "{reason}");
            assert!(reason.contains("list-topics"), "{reason}");
        }
        other => panic!("expected BadRequest, got {other:?}"),
    }
    match tokio::time::timeout(DEADLINE, framed.next()).await {
        Ok(None) | Ok(Some(Err(_))) => {}
        Ok(Some(Ok(more))) => panic!("server kept talking after refusing: {more:?}"),
        Err(_) => panic!("server kept the refused connection open"),
    }
    // The refused request never reached the service.
    assert_eq!(server.svc.calls.load(Ordering::SeqCst), 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_own_connection() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let good = Arc::new(connect(&server.addr, client_config()).await);
    assert_works(&good, 1).await;

    // Keep the good connection busy across the whole episode.
    let busy = {
        let good = good.clone();
        tokio::spawn(async move {
            for i in 100..150u64 {
                assert_works(&good, i).await;
            }
        })
    };

    // 1. Garbage after a valid handshake: a frame whose body is not a message.
    let mut framed = raw(&server.addr).await;
    raw_handshake(&mut framed).await;
    let mut stream = framed.into_inner();
    let mut junk = Vec::new();
    junk.put_u32(8);
    junk.extend_from_slice(&[0xff; 8]);
    stream.write_all(&junk).await.expect("write junk");
    assert_closed_by_server(&mut stream).await;

    // 2. Garbage as the very first bytes.
    let mut stream = TcpStream::connect(&server.addr).await.expect("connect");
    stream
        .write_all(&[0, 0, 0, 3, 0xde, 0xad, 0xbe])
        .await
        .expect("write junk");
    assert_closed_by_server(&mut stream).await;

    // 3. A length prefix above max_frame, after a valid handshake.
    let mut framed = raw(&server.addr).await;
    raw_handshake(&mut framed).await;
    let mut stream = framed.into_inner();
    let mut huge = Vec::new();
    huge.put_u32(DEFAULT_MAX_FRAME as u32 + 1);
    huge.extend_from_slice(b"not really");
    stream.write_all(&huge).await.expect("write prefix");
    assert_closed_by_server(&mut stream).await;

    // 4. u32::MAX as the first length prefix.
    let mut stream = TcpStream::connect(&server.addr).await.expect("connect");
    stream
        .write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("write prefix");
    assert_closed_by_server(&mut stream).await;

    tokio::time::timeout(DEADLINE, busy)
        .await
        .expect("good connection stalled")
        .expect("good connection failed");
    assert!(!good.is_closed());
    assert_works(&good, 2).await;
    // The server still accepts new connections.
    let fresh = connect(&server.addr, client_config()).await;
    assert_works(&fresh, 3).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_request_fails_alone() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let conn = connect(
        &server.addr,
        ConnectionConfig {
            max_frame: 64 * 1024,
            ..client_config()
        },
    )
    .await;
    let mut b = BatchBuilder::default();
    for i in 0..100u32 {
        b.push(None, &[i as u8; 1000], 0);
    }
    let produce = Request::Produce(ProduceRequest {
        shard: ShardId::new("t", 1),
        epoch: 1,
        producer: None,
        acks: Acks::Durable,
        batch: b.finish(),
    });
    match conn.request(produce).await {
        Err(ClientError::Server(ErrorKind::BadRequest { reason })) => {
            assert!(reason.contains("larger than the maximum"), "{reason}")
        }
        other => panic!("expected the oversize request to be refused, got {other:?}"),
    }
    assert_eq!(
        server.svc.calls.load(Ordering::SeqCst),
        0,
        "it was sent anyway"
    );
    assert!(!conn.is_closed());
    assert_works(&conn, 4).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_response_becomes_an_error_answer() {
    let server = start(
        TestService::new(),
        ServerConfig {
            max_frame: 4 * 1024,
            ..ServerConfig::default()
        },
    )
    .await;
    let conn = connect(&server.addr, client_config()).await;
    match conn.request(describe("big:10000")).await {
        Err(ClientError::Server(ErrorKind::Internal { reason })) => {
            assert!(reason.contains("could not be sent"), "{reason}")
        }
        other => panic!("expected an Internal error for an oversize answer, got {other:?}"),
    }
    // Just under the limit still goes through.
    match conn.request(describe("big:3000")).await {
        Ok(Response::TopicCreated(t)) => assert_eq!(t.name.len(), 3000),
        other => panic!("{other:?}"),
    }
    assert_works(&conn, 5).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_serve_and_fails_clients_fast() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let addr = server.addr.clone();
    let svc = server.svc.clone();
    let conn = Arc::new(connect(&addr, client_config()).await);
    assert_works(&conn, 1).await;

    // A request the service never answers on its own.
    let hung = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(describe("hang")).await })
    };
    wait_for("the hang call", || svc.calls.load(Ordering::SeqCst) == 2).await;

    let started = Instant::now();
    // Not via TestServer::stop: the hang must be ended by the shutdown, not by a release.
    server.token.cancel();
    tokio::time::timeout(DEADLINE, server.handle)
        .await
        .expect("serve() did not return after cancel")
        .expect("serve task panicked")
        .expect("serve() failed");

    let res = tokio::time::timeout(DEADLINE, hung)
        .await
        .expect("pending request hung after shutdown")
        .expect("task");
    assert!(
        matches!(res, Err(ClientError::Closed { .. })),
        "pending request: {res:?}"
    );
    // Well before the 20 s request timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    match conn.request(describe("2")).await {
        Err(ClientError::Closed { .. }) => {}
        other => panic!("request after shutdown: {other:?}"),
    }
    assert!(conn.is_closed());
    // The listener is gone with serve().
    match Connection::connect(&addr, client_config()).await {
        Err(ClientError::Connect { .. }) => {}
        other => panic!("connect after shutdown: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_closed_port_fails_quickly() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").to_string()
    }; // dropped: nothing listens there now
    let started = Instant::now();
    match Connection::connect(&addr, client_config()).await {
        Err(ClientError::Connect { addr: a, reason }) => {
            assert_eq!(a, addr);
            assert!(!reason.is_empty());
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_waiters_and_later_requests() {
    let server = start(TestService::new(), ServerConfig::default()).await;
    let conn = Arc::new(connect(&server.addr, client_config()).await);
    let hung = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.request(describe("hang")).await })
    };
    wait_for("the hang call", || {
        server.svc.calls.load(Ordering::SeqCst) == 1
    })
    .await;
    conn.close();
    let res = tokio::time::timeout(DEADLINE, hung)
        .await
        .expect("waiter hung after close")
        .expect("task");
    assert!(matches!(res, Err(ClientError::Closed { .. })), "{res:?}");
    assert!(conn.is_closed());
    assert!(matches!(
        conn.request(describe("1")).await,
        Err(ClientError::Closed { .. })
    ));
    server.stop().await;
}

/// A client that pipelines requests and never reads its answers must not make the server queue
/// answers without bound: once `max_in_flight` answers wait to be written, the server stops
/// reading that connection; when the client reads again, everything is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_stops_being_read() {
    let server = start(
        TestService::new(),
        ServerConfig {
            max_in_flight: 4,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut framed = raw(&server.addr).await;
    raw_handshake(&mut framed).await;
    const SENT: u64 = 200;
    const ANSWER_BYTES: usize = 256 * 1024;
    for i in 0..SENT {
        let env = RequestEnvelope {
            correlation_id: 10 + i,
            request: describe(format!("big:{ANSWER_BYTES}")),
        };
        framed.feed(&env).await.expect("queue request");
    }
    SinkExt::<&RequestEnvelope>::flush(&mut framed)
        .await
        .expect("send requests");
    // Let the server take all it will: wait until the call count stops moving (bounded).
    let deadline = Instant::now() + DEADLINE;
    let mut last = usize::MAX;
    loop {
        let now = server.svc.calls.load(Ordering::SeqCst);
        if now == last || Instant::now() > deadline {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // In flight (4) + queued answers (4) + what the kernel's socket buffers hold (a few MB of
    // 256 KiB answers) + the one being written; unbounded it would be all 200.
    let taken = server.svc.calls.load(Ordering::SeqCst);
    assert!(
        taken <= 48,
        "the server took {taken} of {SENT} requests from a client that reads nothing"
    );
    // Reading again drains everything.
    let mut answered = 0;
    while answered < SENT {
        let env = tokio::time::timeout(DEADLINE, framed.next())
            .await
            .expect("answers keep coming")
            .expect("a frame")
            .expect("a valid frame");
        assert!(
            matches!(&env.result, Ok(Response::TopicCreated(t)) if t.name.len() == ANSWER_BYTES),
            "{:?}",
            env.correlation_id
        );
        answered += 1;
    }
    assert_eq!(server.svc.calls.load(Ordering::SeqCst), SENT as usize);
    server.stop().await;
}
