//! Live shard migration driven by the router, with real `shardq_broker` nodes: a joining broker
//! receives exactly the placement diff with every record at its offset, a graceful leave drains
//! a broker and removes it, a router restarted mid-move finishes the move, and a move whose
//! destination dies after the fence is rolled back (the source is unfenced and takes writes).
//! The last test uses a fake destination (a `Service` that fences the real source and then
//! disappears) so the failure happens at a known phase.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shardq_broker::{BrokerConfig, BrokerHandle, FsyncPolicy};
use shardq_protocol::{
    serve, Acks, BatchBuilder, BrokerAddr, BrokerReport, BrokerStatus, CancellationToken,
    ClusterStatus, Connection, ErrorKind, FetchRequest, MovePhase, MoveProgress, ProduceRequest,
    Request, Response, ServerConfig, Service, ServiceFuture, ShardId,
};
use shardq_ring::{diff, Member, Ring, RingConfig};
use shardq_router::{start, RouterConfig, RouterHandle};
use tokio::net::TcpListener;

use common::*;

async fn broker(id: u32, dir: &Path, router: &str) -> BrokerHandle {
    let mut config = BrokerConfig::new(id, dir.join(format!("broker-{id}")));
    config.router = Some(router.to_string());
    config.heartbeat = Duration::from_millis(50);
    config.fsync = FsyncPolicy::Never;
    shardq_broker::start(config).await.expect("broker starts")
}

async fn router_with(dir: &Path, listen: &str, f: impl FnOnce(&mut RouterConfig)) -> RouterHandle {
    let mut config = RouterConfig::new(dir);
    config.listen = listen.into();
    config.broker_timeout = Duration::from_millis(500);
    f(&mut config);
    start(config).await.expect("router starts")
}

fn placement(shards: &[String], members: &[u32]) -> shardq_ring::Assignment {
    let members: Vec<Member> = members.iter().map(|&id| Member::new(id)).collect();
    Ring::new(RingConfig::default(), &members).place(shards)
}

fn keys(topic: &str, partitions: u32) -> Vec<String> {
    (1..=partitions)
        .map(|p| ShardId::new(topic, p).key())
        .collect()
}

/// Produces `n` records `shard-i` (batches of 100) through the router.
async fn fill(c: &Connection, shard: &ShardId, n: usize, value_len: usize) {
    let mut i = 0;
    while i < n {
        let mut b = BatchBuilder::default();
        let end = (i + 100).min(n);
        for j in i..end {
            let mut v = format!("{shard}-{j}").into_bytes();
            v.resize(value_len.max(v.len()), b'.');
            b.push(None, &v, 0);
        }
        let req = Request::Produce(ProduceRequest {
            shard: shard.clone(),
            epoch: 0,
            producer: None,
            acks: Acks::Appended,
            batch: b.finish(),
        });
        match ask(c, req).await {
            Ok(Response::Produced { base_offset, .. }) => assert_eq!(base_offset, i as u64),
            other => panic!("{shard}: {other:?}"),
        }
        i = end;
    }
}

/// Reads the whole shard through the router: (offset, value prefix before the padding).
async fn read_all(c: &Connection, shard: &ShardId) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let req = Request::Fetch(FetchRequest {
            shard: shard.clone(),
            epoch: 0,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        });
        match ask(c, req).await {
            Ok(Response::Fetched {
                high_watermark,
                batches,
                ..
            }) => {
                for b in &batches {
                    for (o, r) in b.records_from(offset) {
                        let v = String::from_utf8_lossy(&r.value);
                        out.push((o, v.trim_end_matches('.').to_string()));
                    }
                }
                offset = out.last().map_or(0, |(o, _)| o + 1);
                if offset >= high_watermark || batches.is_empty() {
                    return out;
                }
            }
            other => panic!("{shard}: {other:?}"),
        }
    }
}

fn expected(shard: &ShardId, n: usize) -> Vec<(u64, String)> {
    (0..n).map(|j| (j as u64, format!("{shard}-{j}"))).collect()
}

async fn status(c: &Connection) -> ClusterStatus {
    match ask(c, Request::Status).await {
        Ok(Response::Status(s)) => s,
        other => panic!("{other:?}"),
    }
}

fn in_flight(s: &ClusterStatus) -> Vec<&MoveProgress> {
    s.moves
        .iter()
        .filter(|m| {
            !matches!(
                m.phase,
                MovePhase::Done | MovePhase::RolledBack | MovePhase::Failed
            )
        })
        .collect()
}

fn owners(s: &ClusterStatus) -> BTreeMap<String, u32> {
    s.shards
        .iter()
        .filter_map(|(r, _)| Some((r.shard.key(), r.owner.as_ref()?.id)))
        .collect()
}

async fn create(c: &Connection, name: &str, partitions: u32) {
    let req = Request::CreateTopic {
        name: name.into(),
        partitions,
        // One replica per shard: these tests drive the import copy (replicated moves are
        // covered by the router's state tests and tests/chaos.rs).
        replication_factor: Some(1),
        min_insync: None,
        retention: Default::default(),
    };
    assert!(matches!(ask(c, req).await, Ok(Response::TopicCreated(_))));
}

#[tokio::test]
async fn a_joining_broker_gets_exactly_the_placement_diff_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(&dir.path().join("router"), "127.0.0.1:0", |_| {}).await;
    let raddr = router.addr().to_string();
    let mut brokers = vec![
        broker(1, dir.path(), &raddr).await,
        broker(2, dir.path(), &raddr).await,
    ];
    let c = client(&raddr).await;
    await_up(&c, &[1, 2]).await;
    create(&c, "J", 16).await;
    let shards: Vec<ShardId> = (1..=16).map(|p| ShardId::new("J", p)).collect();
    for (i, s) in shards.iter().enumerate() {
        fill(&c, s, 50 + i * 10, 0).await;
    }
    let before = status(&c).await;
    let two = placement(&keys("J", 16), &[1, 2]);
    assert_eq!(owners(&before), two);

    brokers.push(broker(3, dir.path(), &raddr).await);
    let three = placement(&keys("J", 16), &[1, 2, 3]);
    let want: BTreeSet<String> = diff(&two, &three).into_iter().map(|m| m.shard).collect();
    assert!(!want.is_empty());
    let after = eventually("the moves to finish", || async {
        let s = status(&c).await;
        (in_flight(&s).is_empty() && owners(&s) == three).then_some(s)
    })
    .await;
    let moved: BTreeSet<String> = after
        .moves
        .iter()
        .map(|m| {
            assert_eq!(m.phase, MovePhase::Done, "{m:?}");
            assert!(m.write_pause_ms.is_some(), "{m:?}");
            m.shard.key()
        })
        .collect();
    assert_eq!(moved, want);
    assert_eq!(after.moves.len(), want.len(), "each shard moved once");
    assert!(after.epoch >= before.epoch + want.len() as u64);
    for (i, s) in shards.iter().enumerate() {
        assert_eq!(read_all(&c, s).await, expected(s, 50 + i * 10), "{s}");
    }
    // The sources stop serving what they gave away.
    for m in &after.moves {
        let from = &brokers[(m.from.unwrap() - 1) as usize];
        let direct = client(from.addr()).await;
        let req = Request::ListOffsets {
            shard: m.shard.clone(),
            epoch: after.epoch,
        };
        let answer = eventually("the source to let go", || async {
            let r = ask(&direct, req.clone()).await;
            r.is_err().then_some(r)
        })
        .await;
        assert!(
            matches!(
                answer,
                Err(ErrorKind::NotOwner { .. } | ErrorKind::UnknownShard { .. })
            ),
            "{answer:?}"
        );
    }
    for b in brokers {
        b.shutdown().await;
    }
    router.shutdown().await;
}

#[tokio::test]
async fn a_graceful_remove_drains_the_broker_and_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(&dir.path().join("router"), "127.0.0.1:0", |_| {}).await;
    let raddr = router.addr().to_string();
    let b1 = broker(1, dir.path(), &raddr).await;
    let b2 = broker(2, dir.path(), &raddr).await;
    let b3 = broker(3, dir.path(), &raddr).await;
    let c = client(&raddr).await;
    await_up(&c, &[1, 2, 3]).await;
    create(&c, "L", 8).await;
    let shards: Vec<ShardId> = (1..=8).map(|p| ShardId::new("L", p)).collect();
    for s in &shards {
        fill(&c, s, 120, 0).await;
    }
    let on_3: Vec<ShardId> = status(&c)
        .await
        .shards
        .iter()
        .filter(|(r, _)| r.owner.as_ref().is_some_and(|o| o.id == 3))
        .map(|(r, _)| r.shard.clone())
        .collect();
    assert!(!on_3.is_empty());

    match ask(
        &c,
        Request::RemoveBroker {
            id: 3,
            force: false,
        },
    )
    .await
    {
        Ok(Response::BrokerRemoved {
            id: 3,
            shards,
            forced: false,
        }) => assert_eq!(shards, on_3),
        other => panic!("{other:?}"),
    }
    eventually("broker 3 to be drained and removed", || async {
        (!brokers(&c).await.contains_key(&3)).then_some(())
    })
    .await;
    let s = status(&c).await;
    assert!(in_flight(&s).is_empty());
    assert_eq!(owners(&s), placement(&keys("L", 8), &[1, 2]));
    for s in &shards {
        assert_eq!(read_all(&c, s).await, expected(s, 120), "{s}");
    }
    // Its next heartbeat is refused and the broker stops itself.
    tokio::time::timeout(DEADLINE, b3.removed())
        .await
        .expect("the removed broker shuts itself down");
    b3.shutdown().await;
    b1.shutdown().await;
    b2.shutdown().await;
    router.shutdown().await;
}

#[tokio::test]
async fn a_router_restarted_mid_move_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let rdir = dir.path().join("router");
    let one = |c: &mut RouterConfig| c.max_moves = 1;
    let router = router_with(&rdir, "127.0.0.1:0", one).await;
    let raddr = router.addr().to_string();
    let b1 = broker(1, dir.path(), &raddr).await;
    let c = client(&raddr).await;
    await_up(&c, &[1]).await;
    create(&c, "M", 8).await;
    let moving = diff(
        &placement(&keys("M", 8), &[1]),
        &placement(&keys("M", 8), &[1, 2]),
    );
    let big: ShardId = moving
        .first()
        .map(|m| m.shard.parse().expect("shard key"))
        .expect("something moves to a second broker");
    // Big-ish: the copy takes a noticeable moment, and the move of this shard comes first.
    fill(&c, &big, 20_000, 1000).await;

    let b2 = broker(2, dir.path(), &raddr).await;
    let copying = eventually("the big shard's move to be copying", || async {
        let s = status(&c).await;
        in_flight(&s)
            .iter()
            .find(|m| m.shard == big && m.phase == MovePhase::Copying)
            .map(|m| m.move_id)
    })
    .await;
    drop(c);
    router.shutdown().await;

    // Same data dir and address: the brokers keep talking to it.
    let router = router_with(&rdir, &raddr, one).await;
    let c = client(&raddr).await;
    let done = eventually("the moves to finish after the restart", || async {
        let s = status(&c).await;
        (in_flight(&s).is_empty() && owners(&s) == placement(&keys("M", 8), &[1, 2])).then_some(s)
    })
    .await;
    let big_moves: Vec<&MoveProgress> = done.moves.iter().filter(|m| m.shard == big).collect();
    assert_eq!(big_moves.len(), 1, "{big_moves:?}");
    assert_eq!(big_moves[0].phase, MovePhase::Done);
    // The same move, resumed from the store, not a new one.
    assert_eq!(big_moves[0].move_id, copying);
    assert_eq!(read_all(&c, &big).await, expected(&big, 20_000));
    // Exactly one broker serves it: the old owner refuses.
    let direct = client(b1.addr()).await;
    let req = Request::ListOffsets {
        shard: big.clone(),
        epoch: done.epoch,
    };
    eventually("the source to let go", || async {
        ask(&direct, req.clone()).await.is_err().then_some(())
    })
    .await;
    b1.shutdown().await;
    b2.shutdown().await;
    router.shutdown().await;
}

/// Registers a fake broker 2 at `addr` with the router and heartbeats for it until `stop`.
fn fake_broker_2_heartbeats(
    raddr: &str,
    addr: &str,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (stop, raddr, addr) = (stop.clone(), raddr.to_string(), addr.to_string());
    tokio::spawn(async move {
        let conn = client(&raddr).await;
        let register = Request::RegisterBroker {
            id: 2,
            addr,
            weight: 1,
            uuid: fake_uuid(2),
            cluster: None,
            incarnation: 1,
        };
        ask(&conn, register).await.expect("registered");
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let beat = Request::Heartbeat {
                id: 2,
                report: BrokerReport::default(),
                uuid: fake_uuid(2),
                incarnation: 1,
            };
            let _ = conn.request(beat).await;
        }
    })
}

/// What a fake destination answers to MoveStatus: a move stuck in `phase`, nothing copied.
fn frozen_move(move_id: u64, phase: MovePhase, lag: u64) -> Response {
    Response::Move(MoveProgress {
        move_id,
        shard: ShardId::new("x", 1),
        from: None,
        to: 2,
        phase,
        records_copied: 0,
        bytes_copied: 0,
        lag,
        started_ms: 0,
        finished_ms: None,
        write_pause_ms: None,
        error: None,
    })
}

/// A destination that fences the real source on ImportShard, then reports phase Fenced for
/// ever: it is stopped to play a broker that died after the fence.
struct FencingDestination {
    source_conn: tokio::sync::OnceCell<Connection>,
}

impl Service for FencingDestination {
    fn name(&self) -> String {
        "fencing-destination".into()
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        let this = self.clone();
        Box::pin(async move {
            match request {
                Request::ImportShard {
                    move_id,
                    shard,
                    source,
                    ..
                } => {
                    let conn = this
                        .source_conn
                        .get_or_init(|| async { client(&source.addr).await })
                        .await;
                    let fence = Request::FenceShard { shard, move_id };
                    match conn.request(fence).await {
                        Ok(Response::Fenced { .. }) => Ok(Response::Ok),
                        other => Err(ErrorKind::Internal {
                            reason: format!("fence failed: {other:?}"),
                        }),
                    }
                }
                Request::MoveStatus { move_id } => Ok(frozen_move(move_id, MovePhase::Fenced, 0)),
                _ => Ok(Response::Ok),
            }
        })
    }
}

#[tokio::test]
async fn a_dead_destination_past_the_move_timeout_rolls_the_move_back() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(&dir.path().join("router"), "127.0.0.1:0", |c| {
        c.max_moves = 1;
        c.broker_timeout = Duration::from_millis(300);
        c.move_timeout = Duration::from_millis(800);
    })
    .await;
    let raddr = router.addr().to_string();
    let b1 = broker(1, dir.path(), &raddr).await;
    let c = client(&raddr).await;
    await_up(&c, &[1]).await;
    create(&c, "D", 8).await;
    for p in 1..=8 {
        fill(&c, &ShardId::new("D", p), 10, 0).await;
    }

    // The fake broker 2: serves, registers and heartbeats until stopped.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let service = Arc::new(FencingDestination {
        source_conn: tokio::sync::OnceCell::new(),
    });
    let server = tokio::spawn(serve(
        listener,
        service,
        ServerConfig::default(),
        stop.clone(),
    ));
    let beats = fake_broker_2_heartbeats(&raddr, &addr, &stop);

    let fenced = eventually("a move to reach the fence", || async {
        let s = status(&c).await;
        in_flight(&s)
            .iter()
            .find(|m| m.phase == MovePhase::Fenced)
            .map(|m| (m.move_id, m.shard.clone()))
    })
    .await;
    let (move_id, shard) = fenced;
    let produce = |v: &str| {
        let mut b = BatchBuilder::default();
        b.push(None, v.as_bytes(), 0);
        Request::Produce(ProduceRequest {
            shard: shard.clone(),
            epoch: 0,
            producer: None,
            acks: Acks::Durable,
            batch: b.finish(),
        })
    };
    assert!(matches!(
        ask(&c, produce("paused")).await,
        Err(ErrorKind::Moving { .. })
    ));
    let route = routing(&c, &["D"]).await;
    let r = route.route(&shard).unwrap();
    assert!(r.moving);
    assert_eq!(r.owner.as_ref().map(|o| o.id), Some(1));

    // The destination dies.
    stop.cancel();
    beats.await.unwrap();
    let _ = server.await;

    let rolled = eventually("the move to be rolled back", || async {
        let s = status(&c).await;
        s.moves
            .iter()
            .find(|m| m.move_id == move_id && m.phase == MovePhase::RolledBack)
            .cloned()
    })
    .await;
    assert!(rolled.error.is_some_and(|e| e.contains("down")));
    assert!(rolled.finished_ms.is_some());
    match ask(&c, produce("after")).await {
        Ok(Response::Produced { base_offset, .. }) => assert_eq!(base_offset, 10),
        other => panic!("{other:?}"),
    }
    let table = routing(&c, &["D"]).await;
    let r = table.route(&shard).unwrap();
    assert!(!r.moving);
    assert_eq!(
        r.owner.as_ref(),
        Some(&BrokerAddr {
            id: 1,
            addr: b1.addr().to_string()
        })
    );
    b1.shutdown().await;
    router.shutdown().await;
}

#[tokio::test]
async fn a_fence_no_move_accounts_for_is_lifted_by_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(&dir.path().join("router"), "127.0.0.1:0", |_| {}).await;
    let raddr = router.addr().to_string();
    let b1 = broker(1, dir.path(), &raddr).await;
    let c = client(&raddr).await;
    await_up(&c, &[1]).await;
    create(&c, "F", 1).await;
    let shard = ShardId::new("F", 1);
    fill(&c, &shard, 10, 0).await;

    // A late fence from an import the router already rolled back (brokers ignore move ids).
    let direct = client(b1.addr()).await;
    let fence = Request::FenceShard {
        shard: shard.clone(),
        move_id: 4242,
    };
    assert!(matches!(
        ask(&direct, fence).await,
        Ok(Response::Fenced { end_offset: 10 })
    ));
    assert!(in_flight(&status(&c).await).is_empty());

    let produce = || {
        let mut b = BatchBuilder::default();
        b.push(None, b"after", 0);
        Request::Produce(ProduceRequest {
            shard: shard.clone(),
            epoch: 0,
            producer: None,
            acks: Acks::Appended,
            batch: b.finish(),
        })
    };
    // The router sees the fence in a heartbeat and unfences the shard: writes resume at the
    // fenced end.
    let base = eventually("the stale fence to be lifted", || async {
        match ask(&c, produce()).await {
            Ok(Response::Produced { base_offset, .. }) => Some(base_offset),
            Err(ErrorKind::Moving { .. }) => None,
            other => panic!("{other:?}"),
        }
    })
    .await;
    assert_eq!(base, 10);
    b1.shutdown().await;
    router.shutdown().await;
}

/// A destination that accepts every import and then reports it Copying, nothing copied, for
/// ever (like one that keeps failing to reach its source at an address that went away).
struct StuckDestination;

impl Service for StuckDestination {
    fn name(&self) -> String {
        "stuck-destination".into()
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        Box::pin(async move {
            match request {
                Request::MoveStatus { move_id } => Ok(frozen_move(move_id, MovePhase::Copying, 10)),
                _ => Ok(Response::Ok),
            }
        })
    }
}

#[tokio::test]
async fn a_move_without_progress_past_the_move_timeout_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let router = router_with(&dir.path().join("router"), "127.0.0.1:0", |c| {
        c.max_moves = 1;
        c.move_timeout = Duration::from_millis(800);
    })
    .await;
    let raddr = router.addr().to_string();
    let b1 = broker(1, dir.path(), &raddr).await;
    let c = client(&raddr).await;
    await_up(&c, &[1]).await;
    create(&c, "S", 8).await;

    // The fake broker 2 stays up (it heartbeats) but its imports never progress.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        Arc::new(StuckDestination),
        ServerConfig::default(),
        stop.clone(),
    ));
    let beats = fake_broker_2_heartbeats(&raddr, &addr, &stop);

    let rolled = eventually("a stuck move to be rolled back", || async {
        status(&c)
            .await
            .moves
            .into_iter()
            .find(|m| m.phase == MovePhase::RolledBack)
    })
    .await;
    assert!(
        rolled
            .error
            .as_ref()
            .is_some_and(|e| e.contains("no progress")),
        "{rolled:?}"
    );
    assert_eq!(brokers(&c).await.get(&2), Some(&BrokerStatus::Up));
    // The shard stayed with its source, writable.
    let table = routing(&c, &["S"]).await;
    assert_eq!(
        table
            .route(&rolled.shard)
            .unwrap()
            .owner
            .as_ref()
            .map(|o| o.id),
        Some(1)
    );
    fill(&c, &rolled.shard, 1, 0).await;
    stop.cancel();
    beats.await.unwrap();
    let _ = server.await;
    b1.shutdown().await;
    router.shutdown().await;
}
