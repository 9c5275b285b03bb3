//! Trust and connection limits of a whole cluster: peers without the cluster secret cannot drop,
//! export or force-remove anything (the data stays intact), and a flood of idle connections does
//! not lock out `shardq status`, producers or heartbeats.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use shardq_consumer::Consumer;
use shardq_producer::Producer;
use shardq_protocol::*;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

const RECORDS: u64 = 300;

fn anonymous() -> ConnectionConfig {
    ConnectionConfig {
        client_name: "intruder".into(),
        ..ConnectionConfig::default()
    }
}

fn refused(r: Result<Response, ClientError>, what: &str) {
    assert!(
        matches!(r, Err(ClientError::Server(ErrorKind::Unauthorized { .. }))),
        "{what} from a peer without the secret: {r:?}"
    );
}

/// Reads every record of topic `S` with a fresh group: (shard, offset) -> value.
async fn read_all(at: &common::Endpoint, group: &str) -> Vec<(ShardId, u64, Bytes)> {
    let mut consumer =
        Consumer::connect(at.consumer_config(group, vec![ShardSpec::All("S".into())]))
            .await
            .unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while (got.len() as u64) < RECORDS && Instant::now() < deadline {
        for r in consumer.poll().await.unwrap() {
            got.push((r.shard, r.offset, r.record.value));
        }
    }
    got.sort();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_secret_cannot_drop_export_or_force_remove_and_data_stays() {
    // The data plane is open here, so the intruder can be a legitimate data-plane client
    // ("unentitled"), not only a stranger: it can produce, and still touch nothing else.
    let cluster = common::Cluster::start_with(2, "interval=100", true).await;
    cluster.create_topic("S", 2).await;
    let at = cluster.endpoint();
    let producer = Producer::connect(at.producer_config()).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..RECORDS {
        let target = ShardSpec::One(ShardId::new("S", 1 + (i % 2) as u32));
        acks.push(
            producer
                .send(&target, None, Bytes::from(format!("s{i}")))
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
    let before = read_all(&at, "before").await;
    assert_eq!(before.len() as u64, RECORDS);

    let table = at.client().await.refresh(&[]).await.unwrap();
    for p in 1..=2 {
        let shard = ShardId::new("S", p);
        let owner = table.route(&shard).unwrap().owner.clone().unwrap();
        let broker = Connection::connect(&owner.addr, anonymous()).await.unwrap();
        assert!(!broker.is_authenticated());
        // The data plane is open: a fetch works...
        assert!(matches!(
            broker
                .request(Request::ListOffsets {
                    shard: shard.clone(),
                    epoch: table.epoch
                })
                .await,
            Ok(Response::Offsets { .. })
        ));
        // ...and everything that deletes, hands out or takes over a shard does not.
        refused(
            broker
                .request(Request::DropShard {
                    shard: shard.clone(),
                    epoch: u64::MAX,
                })
                .await,
            "DropShard",
        );
        refused(
            broker
                .request(Request::ExportShard {
                    shard: shard.clone(),
                    from_offset: 0,
                    max_bytes: 1 << 20,
                })
                .await,
            "ExportShard",
        );
        refused(
            broker
                .request(Request::ExportMeta {
                    shard: shard.clone(),
                })
                .await,
            "ExportMeta",
        );
        refused(
            broker
                .request(Request::FenceShard {
                    shard: shard.clone(),
                    move_id: 1,
                })
                .await,
            "FenceShard",
        );
        refused(
            broker
                .request(Request::AssignShards {
                    epoch: u64::MAX,
                    shards: vec![],
                })
                .await,
            "AssignShards",
        );
    }
    let router = Connection::connect(&at.addr, anonymous()).await.unwrap();
    for id in 1..=2 {
        refused(
            router
                .request(Request::RemoveBroker { id, force: true })
                .await,
            "a forced RemoveBroker",
        );
    }
    refused(
        router
            .request(Request::RegisterBroker {
                id: 77,
                addr: "127.0.0.1:1".into(),
                weight: 100,
                uuid: "00000000-0000-4000-8000-000000000077".into(),
                cluster: None,
                incarnation: 1,
            })
            .await,
        "RegisterBroker",
    );
    refused(
        router
            .request(Request::CreateTopic {
                name: "Rogue".into(),
                partitions: 1,
                replication_factor: None,
                min_insync: None,
                retention: Default::default(),
            })
            .await,
        "CreateTopic",
    );

    // Nothing changed: both brokers are members, and every record is where it was.
    let brokers = at.client().await.admin(Request::ListBrokers).await.unwrap();
    assert!(
        matches!(&brokers, Response::Brokers(b) if b.len() == 2),
        "{brokers:?}"
    );
    assert_eq!(read_all(&at, "after").await, before);
    cluster.stop().await;
}

type Raw = Framed<TcpStream, FrameCodec<ResponseEnvelope>>;

/// Opens a connection and completes a handshake without the secret; None if the node refused it.
async fn idle_connection(addr: String) -> Option<Raw> {
    let stream = TcpStream::connect(&addr).await.ok()?;
    let mut framed = Framed::new(stream, FrameCodec::new(DEFAULT_MAX_FRAME));
    framed
        .send(&RequestEnvelope {
            correlation_id: 1,
            request: Request::Handshake {
                version: PROTOCOL_VERSION,
                client: "idler".into(),
                nonce: vec![0; 32],
                authenticate: false,
            },
        })
        .await
        .ok()?;
    match tokio::time::timeout(Duration::from_secs(20), framed.next()).await {
        Ok(Some(Ok(ResponseEnvelope {
            result: Ok(Response::Handshake { .. }),
            ..
        }))) => Some(framed),
        _ => None,
    }
}

/// Opens `n` idle handshaken connections to `addr`, 100 at a time; returns the ones accepted.
async fn flood(addr: &str, n: usize) -> Vec<Raw> {
    let mut held = Vec::new();
    let mut pending = futures::stream::iter((0..n).map(|_| idle_connection(addr.to_string())))
        .buffer_unordered(100);
    while let Some(c) = pending.next().await {
        held.extend(c);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_do_not_lock_out_status_or_producers() {
    let limit = shardq::raise_fd_limit();
    assert!(
        limit >= 12_000,
        "this test needs 12,000 open files, the limit is {limit}"
    );
    let up = common::UpCluster::start(2, &[]).await;
    let at = up.endpoint();
    at.client()
        .await
        .admin(Request::CreateTopic {
            name: "F".into(),
            partitions: 4,
            replication_factor: None,
            min_insync: None,
            retention: Default::default(),
        })
        .await
        .unwrap();
    let router_pid = up.router_pid();
    let rss_start = common::rss_kib(router_pid);

    // 5,000 idle connections to the router and 5,000 to broker 1, none with the secret.
    let b1 = up
        .broker_addrs()
        .into_iter()
        .find(|(id, _)| *id == 1)
        .unwrap()
        .1;
    let on_router = flood(&at.addr, 5_000).await;
    let on_broker = flood(&b1, 5_000).await;
    // Every slot but the reserve is taken: without the reserve, nothing else would get in.
    let open_slots = server::DEFAULT_MAX_CONNECTIONS - server::DEFAULT_RESERVED_CONNECTIONS;
    assert!(
        on_router.len() >= open_slots - 10 && on_broker.len() >= open_slots - 10,
        "the flood holds {} router and {} broker connections; expected about {open_slots} each",
        on_router.len(),
        on_broker.len()
    );
    let rss_flooded = common::rss_kib(router_pid);

    // `shardq status` answers within a second.
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
        .args(["status", "--broker", &at.addr, "--token-file"])
        .arg(&at.token)
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(1), "status took {took:?}");

    // A producer sends 10,000 records, none failed.
    let mut cfg = at.producer_config();
    cfg.delivery_timeout = Duration::from_secs(30);
    let producer = Producer::connect(cfg).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..10_000 {
        acks.push(
            producer
                .send(
                    &ShardSpec::All("F".into()),
                    None,
                    Bytes::from(format!("f{i}")),
                )
                .await
                .unwrap(),
        );
    }
    let mut failed = 0;
    for a in acks {
        failed += a.await.is_err() as usize;
    }
    assert_eq!(failed, 0, "records failed while the cluster was flooded");
    // Heartbeats got through too: both brokers are still up.
    match at.client().await.admin(Request::ListBrokers).await.unwrap() {
        Response::Brokers(bs) => assert!(bs.iter().all(|b| b.status == BrokerStatus::Up), "{bs:?}"),
        other => panic!("{other:?}"),
    }

    // Churn: the flood leaves; 2 rounds of 5,000 connect/handshake/close. Memory stays bounded:
    // the second round adds (almost) nothing over the first.
    drop(on_router);
    drop(on_broker);
    let mut after_round = Vec::new();
    for _ in 0..2 {
        for _ in 0..50 {
            drop(flood(&at.addr, 100).await);
        }
        after_round.push(common::rss_kib(router_pid));
    }
    eprintln!(
        "router RSS: start {rss_start} KiB, with 5,000 idle connections {rss_flooded} KiB, \
         after churn rounds {after_round:?} KiB"
    );
    assert!(
        after_round[1] <= after_round[0] + 16 * 1024,
        "router memory grows with connection churn: {after_round:?} KiB"
    );
    up.stop().await;
}
