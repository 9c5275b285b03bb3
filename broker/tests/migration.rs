//! Live shard migration between two real in-process brokers, the test acting as the router:
//! ImportShard / MoveStatus / AssignShards / DropShard over connections. Covers a move under a
//! live producer (logs identical at the same offsets, group offsets and producer state moved, the
//! write pause recorded), a destination restart mid-copy (resumes from its local end), a source
//! outage (the import waits), a drop that cancels an import, and removal by the router.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use shardq_broker::{start, BrokerConfig, BrokerHandle, FsyncPolicy};
use shardq_protocol::{
    BatchBuilder, BrokerAddr, CancellationToken, ClientError, Connection, ErrorKind, MovePhase,
    MoveProgress, Offset, ProducerSeq, Record, Request, Response, Service, ServiceFuture, ShardId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The cluster id the fake routers answer registrations with.
const FAKE_CLUSTER: &str = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";

const DEADLINE: Duration = Duration::from_secs(60);

fn broker_config(id: u32, dir: &std::path::Path) -> BrokerConfig {
    let mut c = config(dir, FsyncPolicy::Never);
    c.id = id;
    c
}

async fn start_broker(id: u32, dir: &std::path::Path) -> BrokerHandle {
    start(broker_config(id, dir)).await.expect("broker starts")
}

/// Polls `check` until it returns `Some`, or fails the test after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A TCP forwarder standing in for the source's address, so a test can take the source away
/// (dropping every connection and refusing new ones) and slow it down.
struct Proxy {
    addr: String,
    up: watch::Sender<bool>,
    /// Microseconds to sleep after forwarding each read of up to 16 KiB (0: full speed).
    throttle_us: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = watch::Sender::new(true);
        let throttle_us = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (up, throttle) = (up.clone(), throttle_us.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if !*up.borrow() {
                        continue;
                    }
                    tokio::spawn(forward(
                        client,
                        target.clone(),
                        up.subscribe(),
                        throttle.clone(),
                    ));
                }
            }
        });
        Proxy {
            addr,
            up,
            throttle_us,
            task,
        }
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    fn throttle(&self, us: u64) {
        self.throttle_us.store(us, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.up.send_replace(false);
        self.task.abort();
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    throttle: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        let us = throttle.load(Ordering::Relaxed);
        if us > 0 {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
}

async fn forward(
    client: TcpStream,
    target: String,
    mut up: watch::Receiver<bool>,
    throttle: Arc<AtomicU64>,
) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (crd, cwr) = client.into_split();
    let (srd, swr) = server.into_split();
    tokio::select! {
        _ = pipe(crd, swr, throttle.clone()) => {}
        _ = pipe(srd, cwr, throttle) => {}
        _ = up.wait_for(|u| !*u) => {}
    }
}

async fn import(conn: &Connection, move_id: u64, shard: &ShardId, source: BrokerAddr) {
    let resp = conn
        .request(Request::ImportShard {
            move_id,
            shard: shard.clone(),
            source,
            epoch: 1,
        })
        .await
        .expect("import-shard");
    assert_eq!(resp, Response::Ok);
}

async fn move_status(conn: &Connection, move_id: u64) -> Result<MoveProgress, ClientError> {
    match conn.request(Request::MoveStatus { move_id }).await? {
        Response::Move(p) => Ok(p),
        other => panic!("unexpected answer to move-status: {other:?}"),
    }
}

async fn wait_phase(conn: &Connection, move_id: u64, phase: MovePhase) -> MoveProgress {
    eventually(&format!("move {move_id} reaching {phase:?}"), || async {
        let p = move_status(conn, move_id).await.expect("move-status");
        assert_ne!(p.phase, MovePhase::Failed, "move failed: {p:?}");
        (p.phase == phase).then_some(p)
    })
    .await
}

async fn list_offsets(conn: &Connection, shard: &ShardId) -> Result<(Offset, Offset), ClientError> {
    match conn
        .request(Request::ListOffsets {
            shard: shard.clone(),
            epoch: 2,
        })
        .await?
    {
        Response::Offsets { start, end } => Ok((start, end)),
        other => panic!("unexpected answer to list-offsets: {other:?}"),
    }
}

async fn group_offset(conn: &Connection, shard: &ShardId, group: &str) -> Option<Offset> {
    match conn
        .request(Request::FetchOffset {
            shard: shard.clone(),
            epoch: 2,
            group: group.into(),
        })
        .await
        .expect("fetch-offset")
    {
        Response::GroupOffset { offset } => offset,
        other => panic!("unexpected answer to fetch-offset: {other:?}"),
    }
}

async fn commit(conn: &Connection, shard: &ShardId, group: &str, offset: Offset) {
    let resp = conn
        .request(Request::CommitOffset {
            shard: shard.clone(),
            epoch: 1,
            group: group.into(),
            offset,
        })
        .await
        .expect("commit");
    assert_eq!(resp, Response::Committed);
}

/// Every record of the shard below `end`, with its offset (keys and timestamps included).
async fn log_of(conn: &Connection, shard: &ShardId, end: Offset) -> Vec<(Offset, Record)> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < end {
        let (_, batches) = fetch(conn, shard, offset, 4 << 20, 0).await.expect("fetch");
        let recs = records_from(&batches, offset);
        assert!(!recs.is_empty(), "no records at {offset} below {end}");
        offset += recs.len() as u64;
        out.extend(recs);
    }
    out.truncate(end as usize);
    out
}

/// Stored bytes of the shard below `end` as a migration counts them (entry data + count field).
async fn stored_bytes(conn: &Connection, shard: &ShardId) -> u64 {
    let mut offset = 0;
    let mut bytes = 0;
    loop {
        let (hw, batches) = fetch(conn, shard, offset, 4 << 20, 0).await.expect("fetch");
        if offset >= hw {
            return bytes;
        }
        for b in &batches {
            assert_eq!(b.base_offset, offset);
            bytes += shardq_broker::stored_size(b);
            offset = b.end_offset();
        }
    }
}

/// `batches` produce calls of `per_batch` records of `value_bytes` bytes (record `i` of batch `b`
/// is tagged `b:i` with key `k{b}`), as idempotent producer `producer_id` from sequence 0.
async fn load(
    conn: &Connection,
    shard: &ShardId,
    producer_id: u64,
    batches: u64,
    per_batch: u32,
    value_bytes: usize,
) {
    for b in 0..batches {
        let mut builder = BatchBuilder::default();
        for i in 0..per_batch {
            let mut v = format!("{producer_id}/{b}:{i}:").into_bytes();
            v.resize(value_bytes.max(v.len()), b'.');
            builder.push(Some(format!("k{b}").as_bytes()), &v, b * 1000 + i as u64);
        }
        let ps = Some(ProducerSeq {
            producer_id,
            sequence: b,
        });
        let (_, _, dup) = produce(conn, shard, builder.finish(), ps)
            .await
            .expect("produce");
        assert!(!dup);
    }
}

fn addr_of(id: u32, addr: &str) -> BrokerAddr {
    BrokerAddr {
        id,
        addr: addr.to_string(),
    }
}

/// Results of the live producer: (sequence, base offset, acknowledged by B).
type Acks = Arc<Mutex<Vec<(u64, Offset, bool)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_moves_under_a_live_producer_with_its_offsets_and_producer_state() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_broker(1, da.path()).await;
    let b = start_broker(2, db.path()).await;
    let (ca, cb) = (Arc::new(connect(&a).await), Arc::new(connect(&b).await));
    let shard = ShardId::new("live", 1);
    assign(&ca, &shard, 1).await;
    // 50,000 records in ~8 MB: several export chunks, many stored entries.
    load(&ca, &shard, 100, 250, 200, 120).await;
    commit(&ca, &shard, "g1", 1_000).await;
    commit(&ca, &shard, "g2", 49_999).await;

    // A producer that keeps going: to A until the flip, then to B, retrying a batch refused with
    // Moving/NotOwner (the same sequence) until it is acknowledged.
    let flipped = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let producer = tokio::spawn({
        let (ca, cb, flipped, stop, acks, shard) = (
            ca.clone(),
            cb.clone(),
            flipped.clone(),
            stop.clone(),
            acks.clone(),
            shard.clone(),
        );
        async move {
            let deadline = Instant::now() + DEADLINE;
            for seq in 0..100_000u64 {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let batch = batch_of(&[format!("live-{seq}").as_bytes()]);
                let ps = Some(ProducerSeq {
                    producer_id: 200,
                    sequence: seq,
                });
                loop {
                    assert!(Instant::now() < deadline, "producer stuck at {seq}");
                    let to_b = flipped.load(Ordering::Acquire);
                    let conn = if to_b { &cb } else { &ca };
                    match produce(conn, &shard, batch.clone(), ps).await {
                        Ok((base, _, dup)) => {
                            assert!(!dup, "sequence {seq} acknowledged twice");
                            acks.lock().unwrap().push((seq, base, to_b));
                            break;
                        }
                        Err(e) => {
                            let kind = server_error(e);
                            assert!(
                                matches!(
                                    kind,
                                    ErrorKind::Moving { .. } | ErrorKind::NotOwner { .. }
                                ),
                                "{kind:?}"
                            );
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }
        }
    });
    eventually("the producer is running", || async {
        (acks.lock().unwrap().len() > 20).then_some(())
    })
    .await;

    import(&cb, 7, &shard, addr_of(1, &a.addr().to_string())).await;
    // Idempotent: the same move again is just acknowledged.
    import(&cb, 7, &shard, addr_of(1, &a.addr().to_string())).await;
    // While importing, B does not serve the shard.
    let err = server_error(list_offsets(&cb, &shard).await.unwrap_err());
    assert!(matches!(err, ErrorKind::NotOwner { .. }), "{err:?}");
    let ready = wait_phase(&cb, 7, MovePhase::Activating).await;
    assert_eq!((ready.from, ready.to), (Some(1), 2));
    assert!(ready.records_copied >= 50_000, "{ready:?}");
    assert!(ready.write_pause_ms.is_none());
    assert!(b
        .broker()
        .report()
        .imports
        .iter()
        .any(|p| p.move_id == 7 && p.phase == MovePhase::Activating));

    // A is fenced now: its end is final, writes answer Moving, reads continue.
    let (_, fence_end) = list_offsets(&ca, &shard)
        .await
        .expect("A still serves reads");
    assert!(fence_end >= 50_000);

    // The flip.
    let resp = cb
        .request(Request::AssignShards {
            epoch: 2,
            shards: vec![shardq_protocol::ShardAssignment::sole(shard.clone(), 2, 2)],
        })
        .await
        .unwrap();
    assert_eq!(resp, Response::Ok);
    assert_eq!(list_offsets(&cb, &shard).await.unwrap(), (0, fence_end));
    let done = move_status(&cb, 7).await.unwrap();
    assert_eq!(done.phase, MovePhase::Done, "{done:?}");
    assert!(done.finished_ms.is_some());
    let pause = done.write_pause_ms.expect("write pause recorded");
    assert!(pause < 30_000, "{done:?}");
    flipped.store(true, Ordering::Release);

    // B's log is A's, record for record at the same offsets; offsets and producer state moved.
    assert_eq!(
        log_of(&cb, &shard, fence_end).await,
        log_of(&ca, &shard, fence_end).await
    );
    assert_eq!(group_offset(&cb, &shard, "g1").await, Some(1_000));
    assert_eq!(group_offset(&cb, &shard, "g2").await, Some(49_999));
    let (base, count, dup) = produce(
        &cb,
        &shard,
        batch_of(&[b"retry of the last preload batch"]),
        Some(ProducerSeq {
            producer_id: 100,
            sequence: 249,
        }),
    )
    .await
    .unwrap();
    assert!(dup, "a retry of the last sequence must be a duplicate on B");
    assert_eq!((base, count), (249 * 200, 200));

    // Produces after the flip land on B, continuing at the fenced end.
    eventually("the producer writes to B", || async {
        (acks.lock().unwrap().iter().filter(|a| a.2).count() >= 20).then_some(())
    })
    .await;
    stop.store(true, Ordering::Release);
    producer.await.unwrap();
    let acks = acks.lock().unwrap().clone();
    let first_on_b = acks.iter().find(|a| a.2).unwrap();
    assert_eq!(
        first_on_b.1, fence_end,
        "the first write on B is at the fenced end"
    );
    // Every acknowledged live record is in B's log once, at its acknowledged offset, in order.
    let (_, end) = list_offsets(&cb, &shard).await.unwrap();
    let log = log_of(&cb, &shard, end).await;
    let live: Vec<(Offset, String)> = log
        .iter()
        .filter(|(_, r)| r.value.starts_with(b"live-"))
        .map(|(o, r)| (*o, String::from_utf8_lossy(&r.value).into_owned()))
        .collect();
    let expected: Vec<(Offset, String)> = acks
        .iter()
        .map(|(seq, base, _)| (*base, format!("live-{seq}")))
        .collect();
    assert_eq!(live, expected);

    // The router reassigns the shard away from A and drops it there.
    assert_eq!(
        ca.request(Request::DropShard {
            shard: shard.clone(),
            epoch: 2
        })
        .await
        .unwrap(),
        Response::Ok
    );
    let err = server_error(list_offsets(&ca, &shard).await.unwrap_err());
    assert!(matches!(err, ErrorKind::NotOwner { .. }), "{err:?}");

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_restarted_mid_copy_resumes_from_its_local_end() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_broker(1, da.path()).await;
    let ca = connect(&a).await;
    let shard = ShardId::new("big", 3);
    assign(&ca, &shard, 1).await;
    load(&ca, &shard, 1, 20, 1_000, 1_000).await; // ~20 MB
    commit(&ca, &shard, "g", 12_345).await;
    let total = stored_bytes(&ca, &shard).await;
    let (_, end) = list_offsets(&ca, &shard).await.unwrap();

    // Slow the source down (~3 MB/s) so the copy is still running when B goes away.
    let proxy = Proxy::start(a.addr().to_string()).await;
    proxy.throttle(5_000);
    let b = start_broker(2, db.path()).await;
    let cb = connect(&b).await;
    import(&cb, 9, &shard, addr_of(1, &proxy.addr)).await;
    let before = eventually("some data copied", || async {
        let p = move_status(&cb, 9).await.unwrap();
        (p.bytes_copied > 0).then_some(p)
    })
    .await;
    assert_eq!(before.phase, MovePhase::Copying, "{before:?}");
    cb.close();
    b.shutdown().await;

    // Restarted, B remembers the import but runs nothing until told again.
    let b = start_broker(2, db.path()).await;
    let cb = connect(&b).await;
    let err = server_error(move_status(&cb, 9).await.unwrap_err());
    assert!(matches!(err, ErrorKind::UnknownShard { .. }), "{err:?}");
    let err = server_error(list_offsets(&cb, &shard).await.unwrap_err());
    assert!(matches!(err, ErrorKind::NotOwner { .. }), "{err:?}");
    let report = b.broker().report();
    let held = report.shards.iter().find(|s| s.shard == shard).unwrap();
    assert_eq!(held.state, shardq_protocol::ShardState::Importing);
    assert!(held.end_offset > 0 && held.end_offset < end, "{held:?}");

    proxy.throttle(0);
    import(&cb, 9, &shard, addr_of(1, &proxy.addr)).await;
    let ready = wait_phase(&cb, 9, MovePhase::Activating).await;
    assert!(
        ready.bytes_copied > 0 && ready.bytes_copied < total,
        "resumed copy moved {} of {total} bytes",
        ready.bytes_copied
    );
    assert_eq!(ready.records_copied, end - held.end_offset);
    assign_to(&cb, &shard, 2, 2).await;
    assert_eq!(move_status(&cb, 9).await.unwrap().phase, MovePhase::Done);
    assert_eq!(list_offsets(&cb, &shard).await.unwrap(), (0, end));
    assert_eq!(
        log_of(&cb, &shard, end).await,
        log_of(&ca, &shard, end).await
    );
    assert_eq!(group_offset(&cb, &shard, "g").await, Some(12_345));

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_waits_for_an_unreachable_source() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_broker(1, da.path()).await;
    let ca = connect(&a).await;
    let shard = ShardId::new("away", 1);
    assign(&ca, &shard, 1).await;
    load(&ca, &shard, 5, 30, 100, 64).await;
    let proxy = Proxy::start(a.addr().to_string()).await;
    proxy.set_up(false);

    let b = start_broker(2, db.path()).await;
    let cb = connect(&b).await;
    import(&cb, 3, &shard, addr_of(1, &proxy.addr)).await;
    let waiting = eventually("the import reports the outage", || async {
        let p = move_status(&cb, 3).await.unwrap();
        p.error.is_some().then_some(p)
    })
    .await;
    assert_eq!(
        (waiting.phase, waiting.records_copied),
        (MovePhase::Copying, 0)
    );

    proxy.set_up(true);
    let ready = wait_phase(&cb, 3, MovePhase::Activating).await;
    assert_eq!(ready.error, None);
    assign_to(&cb, &shard, 2, 2).await;
    assert_eq!(list_offsets(&cb, &shard).await.unwrap(), (0, 3_000));
    assert_eq!(
        log_of(&cb, &shard, 3_000).await,
        log_of(&ca, &shard, 3_000).await
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_importing_shard_cancels_the_import_and_deletes_the_copy() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_broker(1, da.path()).await;
    let ca = connect(&a).await;
    let shard = ShardId::new("gone", 2);
    assign(&ca, &shard, 1).await;
    load(&ca, &shard, 5, 10, 1_000, 1_000).await; // ~10 MB
    let total = stored_bytes(&ca, &shard).await;
    let proxy = Proxy::start(a.addr().to_string()).await;
    proxy.throttle(5_000);

    let b = start_broker(2, db.path()).await;
    let cb = connect(&b).await;
    import(&cb, 4, &shard, addr_of(1, &proxy.addr)).await;
    eventually("some data copied", || async {
        (move_status(&cb, 4).await.unwrap().bytes_copied > 0).then_some(())
    })
    .await;
    // A heartbeat assignment without the shard neither stops nor drops the import.
    b.broker().reconcile(1, &[]);
    let p = move_status(&cb, 4).await.unwrap();
    assert_eq!(p.phase, MovePhase::Copying, "{p:?}");
    assert!(b.broker().report().shards.iter().any(|s| s.shard == shard));

    assert_eq!(
        cb.request(Request::DropShard {
            shard: shard.clone(),
            epoch: 1
        })
        .await
        .unwrap(),
        Response::Ok
    );
    let p = move_status(&cb, 4).await.unwrap();
    assert_eq!(p.phase, MovePhase::Failed, "{p:?}");
    assert!(p.error.unwrap().contains("dropped"));
    assert!(!b.broker().report().shards.iter().any(|s| s.shard == shard));
    let err = server_error(
        cb.request(Request::ExportMeta {
            shard: shard.clone(),
        })
        .await
        .unwrap_err(),
    );
    assert!(matches!(err, ErrorKind::NotOwner { .. }), "{err:?}");

    // The partial copy is gone: a new move starts from offset 0 and copies everything.
    proxy.throttle(0);
    import(&cb, 5, &shard, addr_of(1, &proxy.addr)).await;
    let ready = wait_phase(&cb, 5, MovePhase::Activating).await;
    assert_eq!(ready.bytes_copied, total);
    assert_eq!(ready.records_copied, 10_000);
    a.shutdown().await;
    b.shutdown().await;
}

/// A router that registers the broker, then answers its first heartbeat with `UnknownBroker`.
#[derive(Default)]
struct RemovingRouter {
    heartbeats: AtomicU64,
}

impl Service for RemovingRouter {
    fn name(&self) -> String {
        "router".into()
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        let result = match request {
            Request::RegisterBroker { .. } => Ok(Response::Registered {
                epoch: 3,
                cluster: FAKE_CLUSTER.into(),
                lease_ms: 1000,
            }),
            Request::Heartbeat { id, .. } => {
                self.heartbeats.fetch_add(1, Ordering::AcqRel);
                Err(ErrorKind::UnknownBroker { id })
            }
            other => Err(ErrorKind::Unsupported {
                request: other.name().into(),
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

#[tokio::test]
async fn a_broker_removed_by_the_router_shuts_itself_down() {
    let router = Arc::new(RemovingRouter::default());
    let stop = CancellationToken::new();
    let (router_addr, server) = serve_fake(router.clone(), &stop).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = broker_config(4, dir.path());
    cfg.router = Some(router_addr);
    cfg.heartbeat = Duration::from_millis(20);
    let handle = start(cfg).await.unwrap();
    tokio::time::timeout(DEADLINE, handle.removed())
        .await
        .expect("removed() resolves");
    assert!(handle.is_removed());
    assert_eq!(router.heartbeats.load(Ordering::Acquire), 1);
    // It stopped serving: new connections are refused or closed at once.
    let addr = handle.addr().to_string();
    eventually("the listener is closed", || async {
        match Connection::connect(&addr, Default::default()).await {
            Err(_) => Some(()),
            Ok(c) => c.request(Request::ListTopics).await.is_err().then_some(()),
        }
    })
    .await;
    handle.shutdown().await;
    stop.cancel();
    server.await.unwrap().unwrap();
}
