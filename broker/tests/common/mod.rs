//! Helpers shared by the broker's integration tests: a standalone broker in a temp dir, a client
//! connection, and one-line wrappers for the requests the tests send.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use shardq_broker::{start, BrokerConfig, BrokerHandle, FsyncPolicy};
use shardq_protocol::{
    Acks, BatchBuilder, ClientError, Connection, ConnectionConfig, FetchRequest, Offset,
    ProduceRequest, ProducerSeq, Record, RecordBatch, Request, Response, ShardAssignment, ShardId,
    StoredBatch,
};

pub fn config(dir: &Path, fsync: FsyncPolicy) -> BrokerConfig {
    let mut c = BrokerConfig::new(1, dir);
    c.fsync = fsync;
    c
}

pub async fn broker(dir: &Path, fsync: FsyncPolicy) -> BrokerHandle {
    start(config(dir, fsync)).await.expect("broker starts")
}

pub async fn connect(handle: &BrokerHandle) -> Connection {
    let config = ConnectionConfig {
        request_timeout: Duration::from_secs(10),
        ..ConnectionConfig::default()
    };
    Connection::connect(&handle.addr().to_string(), config)
        .await
        .expect("connects")
}

/// Assigns `shard` to the standalone broker 1 (it leads it at leader epoch `epoch`).
pub async fn assign(conn: &Connection, shard: &ShardId, epoch: u64) {
    assign_to(conn, shard, epoch, 1).await
}

/// Assigns `shard` to the standalone broker `broker`, which leads it at leader epoch `epoch`.
pub async fn assign_to(conn: &Connection, shard: &ShardId, epoch: u64, broker: u32) {
    let resp = conn
        .request(Request::AssignShards {
            epoch,
            shards: vec![ShardAssignment::sole(shard.clone(), epoch, broker)],
        })
        .await
        .expect("assign");
    assert_eq!(resp, Response::Ok);
}

pub fn batch_of(values: &[&[u8]]) -> RecordBatch {
    let mut b = BatchBuilder::default();
    for (i, v) in values.iter().enumerate() {
        b.push(None, v, i as u64);
    }
    b.finish()
}

pub async fn produce(
    conn: &Connection,
    shard: &ShardId,
    batch: RecordBatch,
    producer: Option<ProducerSeq>,
) -> Result<(Offset, u32, bool), ClientError> {
    let resp = conn
        .request(Request::Produce(ProduceRequest {
            shard: shard.clone(),
            epoch: 1,
            producer,
            acks: Acks::Durable,
            batch,
        }))
        .await?;
    match resp {
        Response::Produced {
            base_offset,
            count,
            duplicate,
        } => Ok((base_offset, count, duplicate)),
        other => panic!("unexpected answer to produce: {other:?}"),
    }
}

pub async fn fetch(
    conn: &Connection,
    shard: &ShardId,
    offset: Offset,
    max_bytes: u32,
    max_wait_ms: u32,
) -> Result<(Offset, Vec<StoredBatch>), ClientError> {
    let resp = conn
        .request(Request::Fetch(FetchRequest {
            shard: shard.clone(),
            epoch: 1,
            offset,
            max_bytes,
            max_wait_ms,
        }))
        .await?;
    match resp {
        Response::Fetched {
            high_watermark,
            batches,
            ..
        } => Ok((high_watermark, batches)),
        other => panic!("unexpected answer to fetch: {other:?}"),
    }
}

/// Records from `offset` on, as the fetched batches give them, checking offsets are consecutive.
pub fn records_from(batches: &[StoredBatch], offset: Offset) -> Vec<(Offset, Record)> {
    let out: Vec<(Offset, Record)> = batches
        .iter()
        .flat_map(|b| b.records_from(offset))
        .collect();
    for (i, (o, _)) in out.iter().enumerate() {
        assert_eq!(*o, offset + i as u64, "fetched offsets are not consecutive");
    }
    out
}

/// Every record of the shard from `offset` to the end, fetching repeatedly.
pub async fn read_all(conn: &Connection, shard: &ShardId, mut offset: Offset) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let (hw, batches) = fetch(conn, shard, offset, 256 * 1024, 0)
            .await
            .expect("fetch");
        if offset >= hw {
            return out;
        }
        let recs = records_from(&batches, offset);
        assert!(
            !recs.is_empty(),
            "a fetch below the high watermark returned nothing"
        );
        offset += recs.len() as u64;
        out.extend(recs.into_iter().map(|(_, r)| r.value.to_vec()));
    }
    panic!("read_all did not reach the end");
}

pub fn server_error(e: ClientError) -> shardq_protocol::ErrorKind {
    match e {
        ClientError::Server(k) => k,
        other => panic!("expected a server error, got {other}"),
    }
}

/// Serves a fake peer (a router, a source broker) on an ephemeral 127.0.0.1 port until `stop`:
/// its address and the serving task.
pub async fn serve_fake<S: shardq_protocol::Service>(
    service: std::sync::Arc<S>,
    stop: &shardq_protocol::CancellationToken,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(shardq_protocol::serve(
        listener,
        service,
        shardq_protocol::ServerConfig::default(),
        stop.clone(),
    ));
    (addr, server)
}
