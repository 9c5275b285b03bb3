//! `shardq-router`: the routing front of a shardq cluster. It keeps the membership (brokers
//! register and heartbeat; a silent broker turns Down), the topics, the actual assignment
//! shard -> broker and the routing epoch, all persisted in sled; places new shards with
//! `shardq_ring`; serves metadata and admin requests; and proxies data-plane requests to shard
//! owners for clients that only know the router's address. Its rebalancer moves shards live to
//! where the ring wants them when brokers join or leave (see `rebalance`).
//!
//! Start one in-process with [`start`]; the `shardq router` command wraps it in [`cli`].
//!
//! After a restart, members come back `Up` with a fresh grace period of one broker timeout:
//! brokers keep serving while the router is away, so the restored routes are valid at once, and
//! a broker that really is gone turns `Down` one timeout later. Liveness is never persisted.

pub mod cli;
mod group_service;
pub mod groups;
mod http;
mod identity;
mod liveness;
mod pool;
mod reassign;
mod rebalance;
mod replication;
mod retention;
mod service;
mod state;
mod store;
pub mod up_control;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use shardq_protocol::cli_args::Listener;
use shardq_protocol::{serve, CancellationToken, ConnectionConfig, DEFAULT_MAX_FRAME};
use shardq_ring::RingConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::pool::BrokerPool;
use crate::state::State;
use crate::store::{Op, Store};

pub use crate::state::MAX_WEIGHT;
pub use crate::store::StoreError;

/// Default address the router listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
/// Default time without a heartbeat after which a broker is Down.
pub const DEFAULT_BROKER_TIMEOUT: Duration = Duration::from_secs(1);
/// Replicas per shard of a topic created without `--replication-factor` (capped at the brokers
/// up when the topic is created).
pub const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// How long a broker may be down before its replicas are re-created on other brokers.
pub const DEFAULT_REPLACE_AFTER: Duration = Duration::from_secs(60);
/// How often topics' retention is applied (`--retention-check-ms`).
pub const DEFAULT_RETENTION_CHECK: Duration = Duration::from_secs(5);
/// Default deadline of a request the router sends to a broker (proxied or its own).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of shard moves in flight at once.
pub const DEFAULT_MAX_MOVES: usize = 2;
/// Default time a move's destination may stay down before the move is rolled back.
pub const DEFAULT_MOVE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a router runs.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port; see [`RouterHandle::addr`]).
    pub listen: String,
    /// Directory of the sled metadata store (created if missing).
    pub data_dir: PathBuf,
    /// Ring parameters used to place new shards.
    pub ring: RingConfig,
    /// A broker with no heartbeat for this long is Down.
    pub broker_timeout: Duration,
    /// Deadline of a request the router sends to a broker; a proxied fetch gets its long-poll
    /// wait on top of this.
    pub request_timeout: Duration,
    /// Largest frame accepted or sent, in bytes.
    pub max_frame: usize,
    /// Most shard moves in flight at once (at least 1 is used).
    pub max_moves: usize,
    /// A move whose destination stays down (or, after a router restart, either end stays
    /// unregistered) longer than this, or whose destination reports no progress for this long,
    /// is rolled back (the source is unfenced and keeps the shard).
    pub move_timeout: Duration,
    /// The cluster secret, the open data plane and the connection limits of the listener; the
    /// secret is also what the router proves to brokers.
    pub listener: Listener,
    /// Replicas per shard of a topic created without `--replication-factor` (capped at the
    /// brokers up when it is created).
    pub default_replication_factor: u32,
    /// A broker down for longer than this has its replicas re-created on other brokers.
    pub replace_after: Duration,
    /// How often the leaders are told to apply their topics' retention.
    pub retention_check: Duration,
    /// Address of the HTTP API, metrics and web page (`127.0.0.1:0` picks a free port; see
    /// [`RouterHandle::http_addr`]); None: no HTTP.
    pub http: Option<String>,
    /// The data directory of the `shardq up` that runs this router, so the HTTP API can ask
    /// it for more brokers; None: not run by `shardq up`.
    pub up_data: Option<PathBuf>,
}

impl RouterConfig {
    /// Defaults: listen on [`DEFAULT_LISTEN`], default ring, 3 s broker timeout, 16 MiB frames.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        RouterConfig {
            listen: DEFAULT_LISTEN.to_string(),
            data_dir: data_dir.into(),
            ring: RingConfig::default(),
            broker_timeout: DEFAULT_BROKER_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_frame: DEFAULT_MAX_FRAME,
            max_moves: DEFAULT_MAX_MOVES,
            move_timeout: DEFAULT_MOVE_TIMEOUT,
            listener: Listener::default(),
            default_replication_factor: DEFAULT_REPLICATION_FACTOR,
            replace_after: DEFAULT_REPLACE_AFTER,
            retention_check: DEFAULT_RETENTION_CHECK,
            http: None,
            up_data: None,
        }
    }
}

/// State shared by the request handlers and the background tasks.
pub(crate) struct Shared {
    config: RouterConfig,
    /// Never held across an `.await`.
    state: Mutex<State>,
    store: Store,
    /// Behind its own `Arc` so best-effort background sends do not keep the store open.
    pool: Arc<BrokerPool>,
    shutdown: CancellationToken,
    /// Wakes the rebalancer early (membership changed, a move ended).
    rebalance: tokio::sync::Notify,
    dropping: rebalance::Dropping,
    metrics: http::RouterMetrics,
    /// Consumer groups whose members share their shards.
    groups: Mutex<groups::Coordinator>,
}

/// How long a restarted router grants no shard to a group member that does not hold it: the
/// default session timeout of members (`runconsume --session-timeout-ms`).
const GROUP_WARM_UP: Duration = Duration::from_secs(10);

/// Autoscaler decisions a status carries (the newest).
const SCALING_SHOWN: usize = 10;

impl Shared {
    /// Records move `move_id` finished in `phase` ([`State::finish`], persisted through the
    /// store) and counts it in the metrics.
    fn finish_move(
        &self,
        st: &mut State,
        move_id: u64,
        phase: shardq_protocol::MovePhase,
        error: Option<String>,
        drop: Option<store::PendingDrop>,
    ) -> Result<Option<store::MoveRecord>, shardq_protocol::ErrorKind> {
        let finished = st.finish(move_id, phase, error, rebalance::now_ms(), drop, |ops| {
            self.persist(ops)
        })?;
        if let Some(r) = &finished {
            self.metrics
                .move_finished(phase, r.bytes_copied, r.write_pause_ms);
        }
        Ok(finished)
    }

    /// The cluster's status as `shardq status` and `watch` get it: the state's, with the last
    /// decisions of the autoscaler of the `shardq up` next to this router.
    fn status(&self) -> shardq_protocol::ClusterStatus {
        let mut status = self.state().status(tokio::time::Instant::now());
        let mut decisions = self.autoscaler_decisions();
        status.scaling = decisions.split_off(decisions.len().saturating_sub(SCALING_SHOWN));
        status
    }

    /// The decisions of the `shardq up` autoscaler next to this router (none when it was not
    /// started by `shardq up`, or nothing was decided), oldest first.
    fn autoscaler_decisions(&self) -> Vec<shardq_protocol::ScalingDecision> {
        self.config
            .up_data
            .as_deref()
            .map(up_control::autoscaler_decisions)
            .unwrap_or_default()
    }

    fn groups(&self) -> MutexGuard<'_, groups::Coordinator> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving with the state as it is
        // rather than failing every later request.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running router.
pub struct RouterHandle {
    addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    http: Option<JoinHandle<std::io::Result<()>>>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    liveness: JoinHandle<()>,
    rebalancer: JoinHandle<()>,
    retention: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl RouterHandle {
    /// The address the router is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the HTTP API, if it was asked for.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops accepting, ends every connection and background task, flushes the metadata store
    /// and closes it, so the same data directory can be opened again (even in this process).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("router server ended with an error: {e}"),
            Err(e) => warn!("router server task failed: {e}"),
        }
        if let Some(http) = self.http {
            match http.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("router HTTP server ended with an error: {e}"),
                Err(e) => warn!("router HTTP server task failed: {e}"),
            }
        }
        if let Err(e) = self.liveness.await {
            warn!("liveness task failed: {e}");
        }
        if let Err(e) = self.retention.await {
            warn!("retention task failed: {e}");
        }
        // Moves in flight stop at their next step; they resume from the store at the next start.
        if let Err(e) = self.rebalancer.await {
            warn!("rebalancer task failed: {e}");
        }
        self.shared.pool.close_all();
        // Request futures of connections that were just aborted may still hold the state for a
        // moment; wait (bounded) until ours is the last reference so sled's lock is released.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.shared) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if let Err(e) = self.shared.store.flush().await {
            warn!("flushing router metadata at shutdown failed: {e}");
        }
        info!("router stopped");
    }
}

/// Opens (or creates) the metadata store, restores the state and starts serving.
pub async fn start(config: RouterConfig) -> anyhow::Result<RouterHandle> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    // sled's open reads and replays its log: blocking work, kept off the runtime's threads.
    let dir = config.data_dir.clone();
    let (store, snap) = tokio::task::spawn_blocking(move || {
        let store = Store::open(&dir)?;
        let snap = store.load()?;
        Ok::<_, StoreError>((store, snap))
    })
    .await
    .context("opening the metadata store panicked")??;
    if let Some(old) = &snap.ring {
        if old != &config.ring {
            warn!(
                "ring parameters changed from {old:?} to {:?}: existing shards keep their owners, \
                 new shards are placed with the new parameters",
                config.ring
            );
        }
    }
    let mut snap = snap;
    let mut ops = vec![Op::Ring(config.ring.clone())];
    if snap.cluster.is_none() {
        // A new store, or one from before cluster ids: this router's cluster gets its id now,
        // once; brokers record it in their data dirs when they register.
        let id = shardq_protocol::random_uuid().context("cannot create a cluster id")?;
        info!(cluster = %id, "created the cluster id");
        ops.push(Op::ClusterId(id.clone()));
        snap.cluster = Some(id);
    }
    store.apply(&ops)?;
    if ops.len() > 1 {
        // On disk before any broker can record it: a crash must not give the cluster another id.
        store.flush().await?;
    }
    let mut state = State::restore(snap, config.ring.clone(), tokio::time::Instant::now());
    state.default_replication_factor = config.default_replication_factor;
    state.replace_after = config.replace_after;
    let cluster = state.identities.cluster().to_string();
    let (epoch, members, topics, moves) = (
        state.epoch,
        state.members.len(),
        state.topics.len(),
        state.moves.len(),
    );

    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let http_listener = match &config.http {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen for HTTP on {at}"))?,
        ),
        None => None,
    };
    let http_addr = http_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let shutdown = CancellationToken::new();
    let pool = BrokerPool::new(ConnectionConfig {
        max_frame: config.max_frame,
        max_in_flight: 1024,
        request_timeout: config.request_timeout,
        connect_timeout: config.broker_timeout,
        client_name: "router".into(),
        secret: config.listener.secret.clone(),
    });
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        store,
        pool: Arc::new(pool),
        shutdown: shutdown.clone(),
        rebalance: tokio::sync::Notify::new(),
        dropping: rebalance::Dropping::default(),
        metrics: http::RouterMetrics::default(),
        // A restarted router (it has topics) knows none of the groups' members: for one default
        // session it hands out no shard a member does not say it holds (see `groups`).
        groups: Mutex::new(groups::Coordinator::new(
            (topics > 0).then(|| tokio::time::Instant::now() + GROUP_WARM_UP),
        )),
        config,
    });
    let server_config = shared
        .config
        .listener
        .server_config(shared.config.max_frame);
    let server = tokio::spawn(serve(
        listener,
        shared.clone(),
        server_config,
        shutdown.clone(),
    ));
    let http =
        http_listener.map(|l| tokio::spawn(http::serve(l, shared.clone(), shutdown.clone())));
    let liveness = tokio::spawn(liveness::liveness_task(shared.clone()));
    let rebalancer = tokio::spawn(rebalance::rebalancer_task(shared.clone()));
    let retention = tokio::spawn(retention::retention_task(shared.clone()));
    info!(%addr, http = ?http_addr, %cluster, epoch, members, topics, moves, "router started");
    Ok(RouterHandle {
        addr,
        http_addr,
        http,
        shutdown,
        server,
        liveness,
        rebalancer,
        retention,
        shared,
    })
}
