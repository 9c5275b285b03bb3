//! Black-box tests of the router over real sockets, with fake brokers (see `common`): placement on
//! topic create, typed refusals, liveness, restart persistence, the proxy, force removal and
//! robustness against garbage bytes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use shardq_protocol::{
    Acks, BatchBuilder, BrokerStatus, ErrorKind, FetchRequest, ProduceRequest, Request, Response,
    ShardId,
};
use shardq_ring::{Member, Ring, RingConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

fn produce(shard: ShardId, value: &[u8]) -> Request {
    let mut b = BatchBuilder::default();
    b.push(None, value, 0);
    Request::Produce(ProduceRequest {
        shard,
        epoch: 0,
        producer: None,
        acks: Acks::Durable,
        batch: b.finish(),
    })
}

async fn create(
    conn: &shardq_protocol::Connection,
    name: &str,
    partitions: u32,
) -> Result<Response, ErrorKind> {
    ask(
        conn,
        Request::CreateTopic {
            name: name.into(),
            partitions,
            // One replica: the fake brokers do not replicate, and these tests are about
            // placement and ownership.
            replication_factor: Some(1),
            min_insync: None,
            retention: Default::default(),
        },
    )
    .await
}

#[tokio::test]
async fn topic_create_places_every_shard_like_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path(), Duration::from_secs(3)).await;
    let mut fakes = Vec::new();
    for id in 1..=3 {
        fakes.push(FakeBroker::start(id, router.addr()).await);
    }
    let c = client(router.addr()).await;
    await_up(&c, &[1, 2, 3]).await;
    assert_eq!(routing(&c, &[]).await.epoch, 0);

    let answer = create(&c, "T1", 12).await.unwrap();
    assert_eq!(
        answer,
        Response::TopicCreated(shardq_protocol::TopicInfo {
            name: "T1".into(),
            partitions: 12,
            replication_factor: 1,
            min_insync: 1,
            retention: Default::default(),
        })
    );
    let table = routing(&c, &["T1"]).await;
    assert_eq!(table.epoch, 1);
    assert_eq!(table.shards.len(), 12);
    let ring = Ring::new(
        RingConfig::default(),
        &[Member::new(1), Member::new(2), Member::new(3)],
    );
    let keys: Vec<String> = (1..=12).map(|p| ShardId::new("T1", p).key()).collect();
    let expected = ring.place(&keys);
    for route in &table.shards {
        let owner = route.owner.as_ref().expect("every shard has a live owner");
        assert!((1..=3).contains(&owner.id));
        assert_eq!(
            expected.get(&route.shard.key()),
            Some(&owner.id),
            "{}",
            route.shard
        );
        // Pushed before the create was answered, so a produce right away works.
        let fake = &fakes[(owner.id - 1) as usize];
        assert_eq!(owner.addr, fake.addr);
        assert!(
            fake.owned().contains(&route.shard),
            "{} not pushed",
            route.shard
        );
    }

    // A second topic bumps the epoch and leaves T1's owners alone.
    create(&c, "T2", 5).await.unwrap();
    let both = routing(&c, &[]).await;
    assert_eq!(both.epoch, 2);
    assert_eq!(both.shards.len(), 17);
    for route in &table.shards {
        assert_eq!(both.route(&route.shard).unwrap().owner, route.owner);
    }
    match ask(&c, Request::ListBrokers).await.unwrap() {
        Response::Brokers(bs) => assert_eq!(bs.iter().map(|b| b.shards).sum::<u32>(), 17),
        other => panic!("{other:?}"),
    }

    for f in fakes {
        f.stop().await;
    }
    router.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path(), Duration::from_secs(3)).await;
    let c = client(router.addr()).await;

    // No broker yet: nothing can own the shards.
    assert!(matches!(
        create(&c, "T1", 2).await,
        Err(ErrorKind::Unavailable { .. })
    ));

    let fake = FakeBroker::start(1, router.addr()).await;
    await_up(&c, &[1]).await;
    assert!(matches!(
        create(&c, "bad/name", 1).await,
        Err(ErrorKind::InvalidName { .. })
    ));
    assert!(matches!(
        create(&c, "", 1).await,
        Err(ErrorKind::InvalidName { .. })
    ));
    assert!(matches!(
        create(&c, "T1", 0).await,
        Err(ErrorKind::BadRequest { .. })
    ));
    assert!(matches!(
        create(&c, "T1", 10_001).await,
        Err(ErrorKind::BadRequest { .. })
    ));
    create(&c, "T1", 2).await.unwrap();
    // Same count: idempotent. Different count: refused, naming the existing count.
    assert!(matches!(
        create(&c, "T1", 2).await,
        Ok(Response::TopicCreated(_))
    ));
    assert_eq!(
        create(&c, "T1", 3).await,
        Err(ErrorKind::TopicExists {
            topic: "T1".into(),
            partitions: 2
        })
    );
    assert_eq!(
        routing(&c, &[]).await.epoch,
        1,
        "refusals do not bump the epoch"
    );

    assert_eq!(
        ask(
            &c,
            Request::Metadata {
                topics: vec!["T1".into(), "nope".into()]
            }
        )
        .await,
        Err(ErrorKind::UnknownTopic {
            topic: "nope".into()
        })
    );
    assert!(matches!(
        ask(
            &c,
            Request::DescribeTopic {
                name: "nope".into()
            }
        )
        .await,
        Err(ErrorKind::UnknownTopic { .. })
    ));
    assert!(matches!(
        ask(&c, produce(ShardId::new("nope", 1), b"x")).await,
        Err(ErrorKind::UnknownTopic { .. })
    ));
    assert!(matches!(
        ask(&c, produce(ShardId::new("T1", 3), b"x")).await,
        Err(ErrorKind::UnknownShard { .. })
    ));
    assert!(matches!(
        ask(
            &c,
            Request::Heartbeat {
                id: 42,
                report: Default::default(),
                uuid: fake_uuid(42),
                incarnation: 1,
            }
        )
        .await,
        Err(ErrorKind::UnknownBroker { id: 42 })
    ));
    assert!(matches!(
        ask(
            &c,
            Request::RegisterBroker {
                id: 9,
                addr: "h:1".into(),
                weight: 1_000_000,
                uuid: fake_uuid(9),
                cluster: None,
                incarnation: 1,
            }
        )
        .await,
        Err(ErrorKind::BadRequest { .. })
    ));
    assert_eq!(
        ask(
            &c,
            Request::ExportShard {
                shard: ShardId::new("T1", 1),
                from_offset: 0,
                max_bytes: 10
            }
        )
        .await,
        Err(ErrorKind::Unsupported {
            request: "export-shard".into()
        })
    );
    fake.stop().await;
    router.shutdown().await;
}

#[tokio::test]
async fn silent_broker_goes_down_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path(), Duration::from_millis(300)).await;
    let mut b1 = FakeBroker::start(1, router.addr()).await;
    let b2 = FakeBroker::start(2, router.addr()).await;
    let c = client(router.addr()).await;
    await_up(&c, &[1, 2]).await;
    create(&c, "T", 8).await.unwrap();
    let table = routing(&c, &["T"]).await;
    let on_1: BTreeSet<ShardId> = table
        .shards
        .iter()
        .filter(|r| r.owner.as_ref().is_some_and(|o| o.id == 1))
        .map(|r| r.shard.clone())
        .collect();
    assert!(
        !on_1.is_empty(),
        "bounded placement gives both brokers shards"
    );

    b1.pause_heartbeats().await;
    eventually("broker 1 down", || async {
        (brokers(&c).await.get(&1) == Some(&BrokerStatus::Down)).then_some(())
    })
    .await;
    assert_eq!(brokers(&c).await.get(&2), Some(&BrokerStatus::Up));
    let down = routing(&c, &["T"]).await;
    for r in &down.shards {
        assert_eq!(r.owner.is_none(), on_1.contains(&r.shard), "{}", r.shard);
    }
    let shard = on_1.iter().next().unwrap().clone();
    assert!(matches!(
        ask(&c, produce(shard.clone(), b"x")).await,
        Err(ErrorKind::Unavailable { .. })
    ));

    // Registering again brings it back with the same shards.
    b1.resume_heartbeats();
    await_up(&c, &[1, 2]).await;
    let back = routing(&c, &["T"]).await;
    // The same owners and routing epoch; broker 1's shards have a new leader epoch (they were
    // offline in between, and their leader is elected again).
    let owners = |t: &shardq_protocol::RoutingTable| {
        t.shards
            .iter()
            .map(|r| (r.shard.clone(), r.owner.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(owners(&back), owners(&table));
    assert_eq!(back.epoch, table.epoch);
    for r in &back.shards {
        let before = table.route(&r.shard).unwrap().leader_epoch;
        assert_eq!(
            r.leader_epoch > before,
            on_1.contains(&r.shard),
            "{}",
            r.shard
        );
    }
    assert!(matches!(
        ask(&c, produce(shard, b"x")).await,
        Ok(Response::Produced { .. })
    ));

    b1.stop().await;
    b2.stop().await;
    router.shutdown().await;
}

/// A broker whose process is gone (its port refuses connections) is Down long before the broker
/// timeout; one that is only silent (its port still accepts) waits for the timeout.
#[tokio::test]
async fn a_dead_brokers_refused_port_brings_it_down_before_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path(), Duration::from_secs(4)).await;
    let b1 = FakeBroker::start(1, router.addr()).await;
    let mut b2 = FakeBroker::start(2, router.addr()).await;
    let c = client(router.addr()).await;
    await_up(&c, &[1, 2]).await;

    // Both go silent at the same moment; only broker 1's listener closes.
    b2.pause_heartbeats().await;
    b1.stop().await;
    let at_1 = eventually("broker 1 down", || async {
        let b = brokers(&c).await;
        (b.get(&1) == Some(&BrokerStatus::Down)).then_some(b)
    })
    .await;
    assert_eq!(
        at_1.get(&2),
        Some(&BrokerStatus::Up),
        "broker 1 went down by its refused port, before the 4 s timeout that broker 2 waits for"
    );
    eventually("broker 2 down by the timeout", || async {
        (brokers(&c).await.get(&2) == Some(&BrokerStatus::Down)).then_some(())
    })
    .await;

    b2.stop().await;
    router.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_topics_assignment_and_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let first = router(dir.path(), Duration::from_secs(3)).await;
    let mut fakes = Vec::new();
    for id in 1..=2 {
        fakes.push(FakeBroker::start(id, first.addr()).await);
    }
    let c = client(first.addr()).await;
    await_up(&c, &[1, 2]).await;
    create(&c, "A", 3).await.unwrap();
    create(&c, "B", 4).await.unwrap();
    let before = routing(&c, &[]).await;
    assert_eq!(before.epoch, 2);
    for f in &mut fakes {
        f.pause_heartbeats().await;
    }
    drop(c);
    first.shutdown().await;

    let second = router(dir.path(), Duration::from_secs(3)).await;
    let c = client(second.addr()).await;
    // Members come back Up with a fresh grace period, so routes are valid at once. (With
    // floors, B's shards can make the ring move one of A's: whether that move shows as in
    // flight depends on timing, so `moving` is not compared.)
    let routes = |t: &shardq_protocol::RoutingTable| {
        let shards: Vec<_> = t
            .shards
            .iter()
            .map(|r| {
                (
                    r.shard.clone(),
                    r.owner.clone(),
                    r.leader_epoch,
                    r.replicas.clone(),
                )
            })
            .collect();
        (t.epoch, t.topics.clone(), shards)
    };
    assert_eq!(routes(&routing(&c, &[]).await), routes(&before));
    assert_eq!(
        brokers(&c).await.into_iter().collect::<Vec<_>>(),
        vec![(1, BrokerStatus::Up), (2, BrokerStatus::Up)]
    );
    // Creating again after the restart continues the epoch sequence.
    assert!(matches!(
        create(&c, "A", 3).await,
        Ok(Response::TopicCreated(_))
    ));
    create(&c, "C", 1).await.unwrap();
    assert_eq!(routing(&c, &[]).await.epoch, 3);
    for f in fakes {
        f.stop().await;
    }
    second.shutdown().await;
}

#[tokio::test]
async fn proxy_forwards_to_the_owner_and_passes_its_errors_through() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = shardq_router::RouterConfig::new(dir.path());
    config.listen = "127.0.0.1:0".into();
    // Shorter than the long poll below: a proxied fetch must get max_wait on top.
    config.request_timeout = Duration::from_millis(500);
    let router = shardq_router::start(config).await.unwrap();
    let fakes = [
        FakeBroker::start(1, router.addr()).await,
        FakeBroker::start(2, router.addr()).await,
    ];
    let c = client(router.addr()).await;
    await_up(&c, &[1, 2]).await;
    create(&c, "P", 4).await.unwrap();
    let table = routing(&c, &["P"]).await;
    for (i, route) in table.shards.iter().enumerate() {
        let answer = ask(&c, produce(route.shard.clone(), format!("v{i}").as_bytes())).await;
        assert!(
            matches!(
                answer,
                Ok(Response::Produced {
                    base_offset: 0,
                    count: 1,
                    ..
                })
            ),
            "{answer:?}"
        );
        let owner = route.owner.as_ref().unwrap().id;
        let st = fakes[(owner - 1) as usize].state.lock().unwrap();
        assert_eq!(
            st.logs[&route.shard],
            vec![bytes::Bytes::from(format!("v{i}"))]
        );
    }

    let shard = table.shards[0].shard.clone();
    let fetch = Request::Fetch(FetchRequest {
        shard: shard.clone(),
        epoch: table.epoch,
        offset: 1,
        max_bytes: 1 << 20,
        max_wait_ms: 1000,
    });
    assert!(matches!(
        ask(&c, fetch).await,
        Ok(Response::Fetched {
            high_watermark: 1,
            ..
        })
    ));

    // The owner forgets the shard: its NotOwner reaches the client unchanged.
    let owner = table.shards[0].owner.as_ref().unwrap().id;
    fakes[(owner - 1) as usize]
        .state
        .lock()
        .unwrap()
        .owned
        .clear();
    assert!(matches!(
        ask(&c, produce(shard, b"late")).await,
        Err(ErrorKind::NotOwner { .. })
    ));
    for f in fakes {
        f.stop().await;
    }
    router.shutdown().await;
}

#[tokio::test]
async fn forced_removal_reassigns_shards_empty_and_draining_to_nobody_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path(), Duration::from_secs(3)).await;
    let b1 = FakeBroker::start(1, router.addr()).await;
    let mut b2 = FakeBroker::start(2, router.addr()).await;
    let c = client(router.addr()).await;
    await_up(&c, &[1, 2]).await;
    create(&c, "R", 6).await.unwrap();
    let on_2: Vec<ShardId> = b2.owned().into_iter().collect();
    assert!(!on_2.is_empty());

    // While it is up, --force is refused (it would discard data a drain could keep).
    match ask(&c, Request::RemoveBroker { id: 2, force: true }).await {
        Err(ErrorKind::BrokerUp { id: 2, reason }) => {
            assert!(reason.contains("without --force"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(routing(&c, &["R"]).await.epoch, 1);
    // The broker is stopped for good, then dropped with its data.
    b2.pause_heartbeats().await;
    eventually("broker 2 down", || async {
        (brokers(&c).await.get(&2) == Some(&BrokerStatus::Down)).then_some(())
    })
    .await;
    match ask(&c, Request::RemoveBroker { id: 2, force: true }).await {
        Ok(Response::BrokerRemoved {
            id: 2,
            shards,
            forced: true,
        }) => assert_eq!(shards, on_2),
        other => panic!("{other:?}"),
    }
    let table = routing(&c, &["R"]).await;
    assert_eq!(table.epoch, 2);
    assert!(table
        .shards
        .iter()
        .all(|r| r.owner.as_ref().is_some_and(|o| o.id == 1)));
    // Pushed to the new owner before the answer.
    assert_eq!(b1.owned().len(), 6);
    assert!(!brokers(&c).await.contains_key(&2));
    assert!(matches!(
        ask(&c, Request::RemoveBroker { id: 2, force: true }).await,
        Err(ErrorKind::UnknownBroker { id: 2 })
    ));
    // Broker 1 is the only one left: draining it has nowhere to go.
    match ask(&c, Request::LeaveBroker { id: 1 }).await {
        Err(ErrorKind::BadRequest { reason }) => {
            assert!(reason.contains("nowhere to drain"), "{reason}")
        }
        other => panic!("{other:?}"),
    }

    // A broker without shards may leave gracefully.
    let b3 = FakeBroker::start(3, router.addr()).await;
    await_up(&c, &[1, 3]).await;
    b3.stop().await;
    assert!(matches!(
        ask(&c, Request::LeaveBroker { id: 3 }).await,
        Ok(Response::BrokerRemoved {
            id: 3,
            forced: false,
            ..
        })
    ));
    b1.stop().await;
    b2.stop().await;
    router.shutdown().await;
}

#[tokio::test]
async fn garbage_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path(), Duration::from_secs(3)).await;
    let good = client(router.addr()).await;

    let mut raw = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    // A frame header announcing 16 bytes, then bytes that are no handshake envelope.
    raw.write_all(&[0, 0, 0, 16]).await.unwrap();
    raw.write_all(&[0xff; 16]).await.unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the router should close a connection that sent garbage"
    );

    // An oversize length prefix is refused the same way, without reading 4 GiB first.
    let mut raw = tokio::net::TcpStream::connect(router.addr()).await.unwrap();
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok());

    assert!(
        matches!(ask(&good, Request::ListTopics).await, Ok(Response::Topics(t)) if t.is_empty())
    );
    let fresh = client(router.addr()).await;
    assert!(matches!(
        ask(&fresh, Request::Status).await,
        Ok(Response::Status(_))
    ));
    router.shutdown().await;
}

#[tokio::test]
async fn a_down_broker_cannot_start_draining_and_removed_ids_stay_refused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = router(dir.path(), Duration::from_millis(300)).await;
    let b1 = FakeBroker::start(1, first.addr()).await;
    let mut b2 = FakeBroker::start(2, first.addr()).await;
    let mut b3 = FakeBroker::start(3, first.addr()).await;
    let c = client(first.addr()).await;
    await_up(&c, &[1, 2, 3]).await;
    create(&c, "D", 9).await.unwrap();
    let on_3 = b3.owned().len();
    assert!(on_3 > 0);

    // Broker 3 is down: a graceful removal is refused, and nothing is recorded.
    b3.pause_heartbeats().await;
    eventually("broker 3 down", || async {
        (brokers(&c).await.get(&3) == Some(&BrokerStatus::Down)).then_some(())
    })
    .await;
    let epoch = routing(&c, &[]).await.epoch;
    match ask(
        &c,
        Request::RemoveBroker {
            id: 3,
            force: false,
        },
    )
    .await
    {
        Err(ErrorKind::BrokerDown { id: 3, shards }) => assert_eq!(shards as usize, on_3),
        other => panic!("{other:?}"),
    }
    // When it comes back it is an ordinary member: not leaving, no move out of it.
    b3.resume_heartbeats();
    await_up(&c, &[1, 2, 3]).await;
    let st = match ask(&c, Request::Status).await {
        Ok(Response::Status(st)) => st,
        other => panic!("{other:?}"),
    };
    assert!(st.moves.is_empty(), "{:?}", st.moves);
    assert_eq!(st.epoch, epoch);
    assert_eq!(brokers(&c).await.get(&3), Some(&BrokerStatus::Up));

    // Broker 2 is force-removed while stopped; it comes back (old data or not): refused.
    b2.pause_heartbeats().await;
    eventually("broker 2 down", || async {
        (brokers(&c).await.get(&2) == Some(&BrokerStatus::Down)).then_some(())
    })
    .await;
    assert!(matches!(
        ask(&c, Request::RemoveBroker { id: 2, force: true }).await,
        Ok(Response::BrokerRemoved {
            id: 2,
            forced: true,
            ..
        })
    ));
    let register = Request::RegisterBroker {
        id: 2,
        addr: b2.addr.clone(),
        weight: 1,
        uuid: fake_uuid(2),
        cluster: None,
        incarnation: 1,
    };
    let heartbeat = Request::Heartbeat {
        id: 2,
        report: Default::default(),
        uuid: fake_uuid(2),
        incarnation: 1,
    };
    assert_eq!(
        ask(&c, register.clone()).await,
        Err(ErrorKind::RemovedBroker { id: 2 })
    );
    assert_eq!(
        ask(&c, heartbeat.clone()).await,
        Err(ErrorKind::RemovedBroker { id: 2 })
    );
    assert!(!brokers(&c).await.contains_key(&2));

    // The tombstone survives a router restart.
    drop(c);
    first.shutdown().await;
    let second = router(dir.path(), Duration::from_secs(3)).await;
    let c = client(second.addr()).await;
    let err = ask(&c, register).await.unwrap_err();
    assert_eq!(err, ErrorKind::RemovedBroker { id: 2 });
    assert!(
        err.to_string()
            .contains("start a new broker with a new id and an empty data dir"),
        "{err}"
    );
    assert_eq!(
        ask(&c, heartbeat).await,
        Err(ErrorKind::RemovedBroker { id: 2 })
    );
    assert_eq!(
        brokers(&c).await.keys().copied().collect::<Vec<_>>(),
        vec![1, 3]
    );
    assert!(routing(&c, &["D"])
        .await
        .shards
        .iter()
        .all(|r| r.owner.as_ref().is_none_or(|o| o.id != 2)));
    for b in [b1, b2, b3] {
        b.stop().await;
    }
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_long_polls_do_not_hold_up_the_routers_control_requests() {
    let dir = tempfile::tempdir().unwrap();
    let router = router(dir.path(), Duration::from_secs(3)).await;
    let fake = FakeBroker::start(1, router.addr()).await;
    let c = client(router.addr()).await;
    await_up(&c, &[1]).await;
    create(&c, "L", 1).await.unwrap();
    let table = routing(&c, &["L"]).await;
    // 1,100 long polls proxied to the broker: more than the in-flight slots of one router ->
    // broker connection (1,024). They never find data and last 20 s.
    let pollers: Vec<_> = (0..2).map(|_| client(router.addr())).collect();
    let mut pollers_conns = Vec::new();
    for p in pollers {
        pollers_conns.push(std::sync::Arc::new(p.await));
    }
    let mut polls = Vec::new();
    for i in 0..1_100 {
        let conn = pollers_conns[i % 2].clone();
        let fetch = Request::Fetch(FetchRequest {
            shard: ShardId::new("L", 1),
            epoch: table.epoch,
            offset: 0,
            max_bytes: 1 << 10,
            max_wait_ms: 20_000,
        });
        polls.push(tokio::spawn(async move { conn.request(fetch).await }));
    }
    // Until the router's connection to the broker is full of them (1,024 in flight).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fake.state.lock().unwrap().fetches < 1_024 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} long polls reached the broker",
            fake.state.lock().unwrap().fetches
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A new topic's assignment is pushed to the broker at once, not after the polls.
    let pushes = fake.state.lock().unwrap().pushes;
    let started = std::time::Instant::now();
    create(&c, "C", 1).await.unwrap();
    while fake.state.lock().unwrap().pushes == pushes {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the assignment of a new topic waited behind clients' long polls"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for p in polls {
        p.abort();
    }
    fake.stop().await;
    router.shutdown().await;
}
