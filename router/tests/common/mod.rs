//! Test helpers: an in-process router on an ephemeral port, a client connection, polling with a
//! deadline, and a small fake broker (a real `Service` on a real socket) that registers,
//! heartbeats, accepts assignments and answers data-plane requests for the shards it owns.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardq_protocol::{
    serve, BrokerId, BrokerReport, BrokerStatus, CancellationToken, ClientError, Connection,
    ConnectionConfig, ErrorKind, Request, Response, ServerConfig, Service, ServiceFuture, ShardId,
};
use shardq_router::{start, RouterConfig, RouterHandle};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const DEADLINE: Duration = Duration::from_secs(15);

/// The UUID fake broker `id` registers and heartbeats with (one process per id).
pub fn fake_uuid(id: BrokerId) -> String {
    format!("00000000-0000-4000-8000-{id:012x}")
}

pub async fn router(dir: &Path, broker_timeout: Duration) -> RouterHandle {
    let mut config = RouterConfig::new(dir);
    config.listen = "127.0.0.1:0".into();
    config.broker_timeout = broker_timeout;
    start(config).await.expect("router starts")
}

pub async fn client(addr: impl ToString) -> Connection {
    let config = ConnectionConfig {
        request_timeout: Duration::from_secs(10),
        client_name: "router-test".into(),
        ..ConnectionConfig::default()
    };
    Connection::connect(&addr.to_string(), config)
        .await
        .expect("client connects")
}

pub async fn ask(conn: &Connection, req: Request) -> Result<Response, ErrorKind> {
    match conn.request(req).await {
        Ok(r) => Ok(r),
        Err(ClientError::Server(k)) => Err(k),
        Err(e) => panic!("transport failure: {e}"),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what` after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn brokers(conn: &Connection) -> BTreeMap<BrokerId, BrokerStatus> {
    match ask(conn, Request::ListBrokers).await {
        Ok(Response::Brokers(bs)) => bs.into_iter().map(|b| (b.addr.id, b.status)).collect(),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// Waits until the router lists exactly these brokers as Up.
pub async fn await_up(conn: &Connection, ids: &[BrokerId]) {
    let want: BTreeSet<BrokerId> = ids.iter().copied().collect();
    eventually("brokers to be up", || async {
        let up: BTreeSet<BrokerId> = brokers(conn)
            .await
            .into_iter()
            .filter(|(_, s)| *s == BrokerStatus::Up)
            .map(|(id, _)| id)
            .collect();
        (up == want).then_some(())
    })
    .await
}

pub async fn routing(conn: &Connection, topics: &[&str]) -> shardq_protocol::RoutingTable {
    match ask(
        conn,
        Request::Metadata {
            topics: topics.iter().map(|t| t.to_string()).collect(),
        },
    )
    .await
    {
        Ok(Response::Routing(t)) => t,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// What the fake broker holds: shard -> records appended (values only).
#[derive(Default)]
pub struct FakeState {
    pub owned: BTreeSet<ShardId>,
    pub logs: BTreeMap<ShardId, Vec<bytes::Bytes>>,
    pub pushes: u32,
    /// Fetches that reached this broker.
    pub fetches: u32,
}

struct FakeService {
    id: BrokerId,
    state: Arc<Mutex<FakeState>>,
}

impl FakeService {
    fn not_owner(shard: &ShardId) -> ErrorKind {
        ErrorKind::NotOwner {
            shard: shard.key(),
            epoch: 0,
            owner: None,
        }
    }
}

impl Service for FakeService {
    fn name(&self) -> String {
        format!("fake-broker-{}", self.id)
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        let mut st = self.state.lock().unwrap();
        let result = match request {
            Request::AssignShards { shards, .. } => {
                st.pushes += 1;
                st.owned.extend(shards.into_iter().map(|a| a.shard));
                Ok(Response::Ok)
            }
            Request::Produce(p) if st.owned.contains(&p.shard) => {
                let log = st.logs.entry(p.shard.clone()).or_default();
                let base = log.len() as u64;
                let records: Vec<_> = p.batch.iter().map(|r| r.expect("valid batch")).collect();
                let count = records.len() as u32;
                log.extend(records.into_iter().map(|r| r.value));
                Ok(Response::Produced {
                    base_offset: base,
                    count,
                    duplicate: false,
                })
            }
            Request::Produce(p) => Err(Self::not_owner(&p.shard)),
            Request::Fetch(f) if st.owned.contains(&f.shard) => {
                st.fetches += 1;
                let end = st.logs.get(&f.shard).map_or(0, |l| l.len() as u64);
                let wait = Duration::from_millis(u64::from(f.max_wait_ms));
                drop(st);
                // A long poll that never finds data: answers empty after max_wait.
                return Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    Ok(Response::Fetched {
                        high_watermark: end,
                        start_offset: 0,
                        incarnation: 1,
                        stable_end: 0,
                        batches: Vec::new(),
                    })
                });
            }
            Request::Fetch(f) => Err(Self::not_owner(&f.shard)),
            other => Err(ErrorKind::Unsupported {
                request: other.name().into(),
            }),
        };
        Box::pin(std::future::ready(result))
    }
}

/// A broker stand-in: serves on its own port and heartbeats to the router until paused.
pub struct FakeBroker {
    pub id: BrokerId,
    pub addr: String,
    pub state: Arc<Mutex<FakeState>>,
    server_stop: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    beats_stop: CancellationToken,
    beats: Option<JoinHandle<()>>,
    router: String,
}

impl FakeBroker {
    pub async fn start(id: BrokerId, router: impl ToString) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(FakeState::default()));
        let service = Arc::new(FakeService {
            id,
            state: state.clone(),
        });
        let server_stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            service,
            ServerConfig::default(),
            server_stop.clone(),
        ));
        let mut b = FakeBroker {
            id,
            addr,
            state,
            server_stop,
            server,
            beats_stop: CancellationToken::new(),
            beats: None,
            router: router.to_string(),
        };
        b.resume_heartbeats();
        b
    }

    /// Registers and heartbeats every 50 ms (re-registering on UnknownBroker), reconciling its
    /// owned set with each answer like a real broker.
    pub fn resume_heartbeats(&mut self) {
        self.beats_stop = CancellationToken::new();
        let stop = self.beats_stop.clone();
        let (id, addr, router, state) = (
            self.id,
            self.addr.clone(),
            self.router.clone(),
            self.state.clone(),
        );
        self.beats = Some(tokio::spawn(async move {
            let conn = client(&router).await;
            let register = Request::RegisterBroker {
                id,
                addr,
                weight: 1,
                uuid: fake_uuid(id),
                cluster: None,
                incarnation: 1,
            };
            ask(&conn, register.clone()).await.expect("registered");
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                let beat = Request::Heartbeat {
                    id,
                    report: BrokerReport::default(),
                    uuid: fake_uuid(id),
                    incarnation: 1,
                };
                match conn.request(beat).await {
                    Ok(Response::HeartbeatAck { assignments, .. }) => {
                        state.lock().unwrap().owned =
                            assignments.into_iter().map(|a| a.shard).collect();
                    }
                    Err(ClientError::Server(ErrorKind::UnknownBroker { .. })) => {
                        let _ = conn.request(register.clone()).await;
                    }
                    // The router may be restarting; keep trying until stopped.
                    _ => {}
                }
            }
        }));
    }

    pub async fn pause_heartbeats(&mut self) {
        self.beats_stop.cancel();
        if let Some(h) = self.beats.take() {
            h.await.expect("heartbeat task");
        }
    }

    pub fn owned(&self) -> BTreeSet<ShardId> {
        self.state.lock().unwrap().owned.clone()
    }

    pub async fn stop(mut self) {
        self.pause_heartbeats().await;
        self.server_stop.cancel();
        let _ = self.server.await;
    }
}
