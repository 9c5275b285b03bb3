//! The broker against a stand-in router: it registers, heartbeats with reports, takes and gives
//! up shards as the heartbeat answers say (keeping the data), forwards router-only requests, and
//! shuts itself down once the router answers `UnknownBroker` or `RemovedBroker` (it was removed
//! from the cluster), and does not start at all, serving nothing, when the router refuses its
//! registration because its id was removed earlier.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use shardq_broker::cli::{run_until_stopped, BrokerArgs, Stopped};
use shardq_broker::{start, FsyncPolicy, RemovedFromCluster};
use shardq_protocol::{
    CancellationToken, ErrorKind, Request, Response, RoutingTable, Service, ServiceFuture,
    ShardAssignment, ShardId, ShardReport, TopicInfo,
};

/// The cluster id the fake routers answer registrations with.
const FAKE_CLUSTER: &str = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";

#[derive(Default)]
struct FakeRouter {
    assignments: Mutex<Vec<ShardAssignment>>,
    registrations: Mutex<Vec<String>>,
    reports: Mutex<Vec<ShardReport>>,
    /// Answer the next heartbeat with UnknownBroker.
    forget: Mutex<bool>,
}

impl Service for FakeRouter {
    fn name(&self) -> String {
        "router".into()
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        let result = match request {
            Request::RegisterBroker { addr, .. } => {
                self.registrations.lock().unwrap().push(addr);
                Ok(Response::Registered {
                    epoch: 5,
                    cluster: FAKE_CLUSTER.into(),
                    lease_ms: 1000,
                })
            }
            Request::Heartbeat { id, report, .. } => {
                *self.reports.lock().unwrap() = report.shards;
                if std::mem::take(&mut *self.forget.lock().unwrap()) {
                    Err(ErrorKind::UnknownBroker { id })
                } else {
                    Ok(Response::HeartbeatAck {
                        epoch: 5,
                        assignments: self.assignments.lock().unwrap().clone(),
                    })
                }
            }
            Request::ListTopics => Ok(Response::Topics(vec![TopicInfo {
                name: "t".into(),
                partitions: 1,
                replication_factor: 1,
                min_insync: 1,
                retention: Default::default(),
            }])),
            Request::Metadata { .. } => Ok(Response::Routing(RoutingTable {
                epoch: 5,
                ..Default::default()
            })),
            other => Err(ErrorKind::Unsupported {
                request: other.name().into(),
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

/// Polls `check` until it holds or 10 s pass.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn heartbeats_reconcile_assignments_and_requests_are_forwarded() {
    let router = Arc::new(FakeRouter::default());
    let shard = ShardId::new("t", 1);
    router
        .assignments
        .lock()
        .unwrap()
        .push(ShardAssignment::sole(shard.clone(), 5, 1));
    let stop = CancellationToken::new();
    let (router_addr, server) = serve_fake(router.clone(), &stop).await;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), FsyncPolicy::Never);
    cfg.router = Some(router_addr);
    cfg.heartbeat = Duration::from_millis(30);
    cfg.advertise = Some("broker-one.example:7401".into());
    let handle = start(cfg).await.unwrap();
    let conn = connect(&handle).await;

    eventually("the heartbeat assignment is served", || async {
        produce(&conn, &shard, batch_of(&[b"a"]), None)
            .await
            .is_ok()
    })
    .await;
    assert_eq!(
        router.registrations.lock().unwrap()[0],
        "broker-one.example:7401"
    );
    eventually("the report shows the record", || async {
        router
            .reports
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.shard == shard && r.end_offset == 1)
    })
    .await;

    // Router-only requests are forwarded.
    assert_eq!(
        conn.request(Request::ListTopics).await.unwrap(),
        Response::Topics(vec![TopicInfo {
            name: "t".into(),
            partitions: 1,
            replication_factor: 1,
            min_insync: 1,
            retention: Default::default(),
        }])
    );
    assert!(matches!(
        conn.request(Request::Metadata { topics: vec![] })
            .await
            .unwrap(),
        Response::Routing(_)
    ));

    // Unassigned: refused with NotOwner at the router's epoch, data kept.
    router.assignments.lock().unwrap().clear();
    eventually("the unassigned shard is refused", || async {
        // A read probe: a produce probe would append while the shard is still served.
        matches!(
            conn.request(Request::ListOffsets { shard: shard.clone(), epoch: 5 }).await,
            Err(e) if matches!(e.kind(), Some(ErrorKind::NotOwner { epoch: 5, .. }))
        )
    })
    .await;
    let err = server_error(
        produce(&conn, &shard, batch_of(&[b"b"]), None)
            .await
            .unwrap_err(),
    );
    assert!(matches!(err, ErrorKind::NotOwner { .. }), "{err:?}");

    // Assigned again: the same log is served, data intact.
    router
        .assignments
        .lock()
        .unwrap()
        .push(ShardAssignment::sole(shard.clone(), 6, 1));
    eventually("the shard is served again", || async {
        produce(&conn, &shard, batch_of(&[b"c"]), None)
            .await
            .is_ok()
    })
    .await;
    assert_eq!(
        read_all(&conn, &shard, 0).await,
        vec![b"a".to_vec(), b"c".to_vec()]
    );
    assert!(!handle.is_removed());

    // The router removed the broker: it shuts itself down instead of registering again.
    *router.forget.lock().unwrap() = true;
    tokio::time::timeout(Duration::from_secs(10), handle.removed())
        .await
        .expect("the broker notices its removal");
    assert_eq!(router.registrations.lock().unwrap().len(), 1);
    eventually("the removed broker stops serving", || async {
        conn.request(Request::ListOffsets {
            shard: shard.clone(),
            epoch: 6,
        })
        .await
        .is_err_and(|e| e.kind().is_none())
    })
    .await;

    handle.shutdown().await;
    stop.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unreachable_router_is_unavailable_and_shards_keep_serving() {
    // A port with nothing listening.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), FsyncPolicy::Never);
    cfg.router = Some(dead_addr);
    let handle = start(cfg).await.unwrap();
    let conn = connect(&handle).await;
    let err = server_error(conn.request(Request::ListBrokers).await.unwrap_err());
    assert!(matches!(err, ErrorKind::Unavailable { .. }), "{err:?}");
    let shard = ShardId::new("t", 9);
    assign(&conn, &shard, 1).await;
    assert_eq!(
        produce(&conn, &shard, batch_of(&[b"x"]), None)
            .await
            .unwrap()
            .0,
        0
    );
    handle.shutdown().await;
}

/// A router that removed the ids in `removed`: it refuses their registrations and
/// heartbeats with `RemovedBroker`, and accepts any other id.
#[derive(Default)]
struct TombstoningRouter {
    removed: Mutex<Vec<u32>>,
    registrations: Mutex<Vec<u32>>,
}

impl Service for TombstoningRouter {
    fn name(&self) -> String {
        "router".into()
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        let refused = |id: u32| self.removed.lock().unwrap().contains(&id);
        let result = match request {
            Request::RegisterBroker { id, .. } => {
                self.registrations.lock().unwrap().push(id);
                if refused(id) {
                    Err(ErrorKind::RemovedBroker { id })
                } else {
                    Ok(Response::Registered {
                        epoch: 5,
                        cluster: FAKE_CLUSTER.into(),
                        lease_ms: 1000,
                    })
                }
            }
            Request::Heartbeat { id, .. } if refused(id) => Err(ErrorKind::RemovedBroker { id }),
            Request::Heartbeat { .. } => Ok(Response::HeartbeatAck {
                epoch: 5,
                assignments: Vec::new(),
            }),
            other => Err(ErrorKind::Unsupported {
                request: other.name().into(),
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

#[tokio::test]
async fn a_broker_whose_id_was_removed_does_not_start_and_never_serves_its_old_data() {
    let router = Arc::new(TombstoningRouter::default());
    let stop = CancellationToken::new();
    let (router_addr, server) = serve_fake(router.clone(), &stop).await;

    // Broker 1 holds a shard with data (as a force-removed broker's disk would).
    let dir = tempfile::tempdir().unwrap();
    let shard = ShardId::new("t", 1);
    {
        let handle = start(config(dir.path(), FsyncPolicy::Always))
            .await
            .unwrap();
        let conn = connect(&handle).await;
        assign(&conn, &shard, 1).await;
        produce(&conn, &shard, batch_of(&[b"stale"]), None)
            .await
            .unwrap();
        handle.shutdown().await;
    }

    // The router removed it meanwhile: it comes back with that data and is refused before it
    // serves anything.
    router.removed.lock().unwrap().push(1);
    let mut cfg = config(dir.path(), FsyncPolicy::Always);
    cfg.router = Some(router_addr.clone());
    let err = match start(cfg).await {
        Ok(_) => panic!("a removed broker must not start"),
        Err(e) => e,
    };
    assert_eq!(
        err.downcast_ref::<RemovedFromCluster>().map(|r| r.id),
        Some(1),
        "{err:#}"
    );
    assert!(
        err.to_string()
            .contains("start a new broker with a new id and an empty data dir"),
        "{err:#}"
    );
    assert_eq!(*router.registrations.lock().unwrap(), vec![1]);

    // The command says so with its own outcome (the process exits with EXIT_REMOVED on it).
    let args = BrokerArgs {
        id: 1,
        listen: "127.0.0.1:0".into(),
        advertise: None,
        data: dir.path().to_path_buf(),
        router: router_addr.clone(),
        weight: 1,
        fsync: FsyncPolicy::Always,
        heartbeat_ms: 50,
        replica_lag_max_ms: 5_000,
        max_frame_bytes: shardq_protocol::DEFAULT_MAX_FRAME,
        max_record_bytes: shardq_broker::DEFAULT_MAX_RECORD_BYTES,
        move_max_mbps: 0.0,
        min_free_bytes: 0,
        metrics: None,
        listener: shardq_protocol::cli_args::ListenerArgs {
            insecure_no_auth: true,
            ..Default::default()
        },
    };
    assert_eq!(run_until_stopped(args).await.unwrap(), Stopped::Removed);
    assert_ne!(shardq_broker::EXIT_REMOVED, 0);
    assert_ne!(shardq_broker::EXIT_REMOVED, 1);

    // A broker removed while running is told so by its next heartbeat and shuts down.
    let dir2 = tempfile::tempdir().unwrap();
    let mut cfg = config(dir2.path(), FsyncPolicy::Never);
    cfg.id = 2;
    cfg.router = Some(router_addr);
    cfg.heartbeat = Duration::from_millis(30);
    let handle = start(cfg).await.unwrap();
    assert!(!handle.is_removed());
    router.removed.lock().unwrap().push(2);
    tokio::time::timeout(Duration::from_secs(10), handle.removed())
        .await
        .expect("the broker notices its removal");
    // It registered once (before serving) and never again.
    assert_eq!(*router.registrations.lock().unwrap(), vec![1, 1, 2]);
    handle.shutdown().await;
    stop.cancel();
    server.await.unwrap().unwrap();
}
