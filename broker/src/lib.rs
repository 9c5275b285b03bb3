//! `shardq-broker`: a broker node. It stores shard logs in one sled database, serves produce
//! (idempotent, group-committed), long-poll fetch and group offsets for the shards the router
//! assigned it, exports and fences shards for migration, forwards router-only requests to the
//! router, registers and heartbeats with the router, imports shards for live migration, and
//! shuts itself down when the router removes it from the cluster (a broker whose id the router
//! removed earlier does not start at all: see [`RemovedFromCluster`]).
//!
//! [`start`] runs a broker inside the current tokio runtime and returns a [`BrokerHandle`];
//! [`cli`] is the `shardq broker` command.

pub mod cli;
pub mod config;
mod durability;
pub mod identity;
mod import;
mod membership;
mod metrics;
pub mod replica;
mod replication;
mod router_link;
pub mod service;
mod shard;
mod storage;
pub mod wal;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shardq_protocol::batch::RECORD_OVERHEAD;
use shardq_protocol::{serve, BrokerId, CancellationToken, ErrorKind};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use config::{BrokerConfig, FsyncPolicy, ParseFsyncError, DEFAULT_MAX_RECORD_BYTES};
pub use service::Broker;
pub use shard::{stored_size, MAX_ENTRY_BYTES};

use durability::{Disk, Durability};
use membership::Membership;
use router_link::RouterLink;

/// Exit code of a `shardq broker` process that the router removed from the cluster (drained and
/// removed, or force-removed, or refused at start because its id was removed earlier): the id
/// is retired, so supervisors must not restart it (`shardq up` does not). A new broker needs a
/// new id and an empty data directory.
pub const EXIT_REMOVED: i32 = 10;

/// Exit code of a `shardq broker` process that the router refused as the broker of its `--id`:
/// another process (another data dir) is bound to that id, or its data dir belongs to another
/// cluster. Restarting it would only be refused again, so supervisors must not (`shardq up`
/// does not); the id itself stays with the process bound to it.
pub const EXIT_REFUSED: i32 = 11;

/// [`start`] failed, or the broker stopped, because the router refused this process as broker
/// `id` (`IdentityConflict` or `WrongCluster`). Nothing was served.
#[derive(Debug, thiserror::Error)]
#[error("the router refused this process as broker {id} (data dir {}): {kind}", data_dir.display())]
pub struct RefusedByRouter {
    pub id: BrokerId,
    pub kind: ErrorKind,
    pub data_dir: PathBuf,
}

/// [`start`] failed because the router refused this broker's registration: its id was removed
/// from the cluster. Nothing was served. (`anyhow::Error::downcast_ref` finds it.)
#[derive(Debug, thiserror::Error)]
#[error("{}", ErrorKind::RemovedBroker { id: *id })]
pub struct RemovedFromCluster {
    pub id: BrokerId,
}

/// A running broker. Dropping it without [`BrokerHandle::shutdown`] stops its tasks too, but does
/// not wait for them.
pub struct BrokerHandle {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    id: BrokerId,
    broker: Arc<Broker>,
    router: Option<Arc<RouterLink>>,
    shutdown: CancellationToken,
    /// Cancelled when the router removed this broker from the cluster, or refused it.
    removed: CancellationToken,
    /// Set when the router refused this process as the broker of its id.
    refusal: Arc<OnceLock<ErrorKind>>,
    data_dir: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl BrokerHandle {
    /// The address the broker is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of `/metrics`, if it was asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn id(&self) -> BrokerId {
        self.id
    }

    /// The request handler itself, for in-process use (benchmarks, embedding) without a socket.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Resolves once the router has removed this broker from the cluster (it answered a
    /// heartbeat with `RemovedBroker` or `UnknownBroker`, or a registration with
    /// `RemovedBroker`), or refused this process as the broker of its id (see
    /// [`BrokerHandle::refusal`]); the broker has then stopped serving. Call
    /// [`BrokerHandle::shutdown`] afterwards to flush and release the data directory.
    pub async fn removed(&self) {
        self.removed.cancelled().await
    }

    /// Whether the router has removed this broker (see [`BrokerHandle::removed`]).
    pub fn is_removed(&self) -> bool {
        self.removed.is_cancelled() && self.refusal.get().is_none()
    }

    /// Why the router refused this process as the broker of its id, once it did.
    pub fn refusal(&self) -> Option<RefusedByRouter> {
        self.refusal.get().map(|kind| RefusedByRouter {
            id: self.id,
            kind: kind.clone(),
            data_dir: self.data_dir.clone(),
        })
    }

    /// Stops accepting, ends connections, imports and background tasks, and flushes the database.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            if let Err(e) = t.await {
                warn!("broker task ended abnormally: {e}");
            }
        }
        self.broker.stop_imports().await;
        if let Some(r) = &self.router {
            r.close().await;
        }
        match self.broker.flush().await {
            Ok(()) => info!(id = self.id, "broker stopped; data flushed"),
            Err(e) => warn!(
                id = self.id,
                "broker stopped, but the final flush failed: {e}"
            ),
        }
    }
}

impl Drop for BrokerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn check_config(config: &BrokerConfig) -> anyhow::Result<()> {
    if config.max_record_bytes == 0 {
        bail!("--max-record-bytes must be at least 1");
    }
    // A fetch answer must be able to carry the largest record, plus the entry around it.
    let needed = config.max_record_bytes + RECORD_OVERHEAD + MAX_ENTRY_BYTES + 128 * 1024;
    if config.max_frame < needed {
        bail!(
            "--max-frame-bytes {} is too small for --max-record-bytes {}: frames must hold at least {needed} bytes",
            config.max_frame,
            config.max_record_bytes
        );
    }
    if config.weight == 0 {
        bail!("--weight must be at least 1");
    }
    if config.heartbeat.is_zero() {
        bail!("--heartbeat-ms must be at least 1");
    }
    Ok(())
}

/// How long [`start`] waits for the database lock: sled releases it only once its background
/// writes of a just-closed instance finish (an in-process restart), so a short wait avoids a
/// spurious failure; a lock held by another live broker still fails after this.
const DB_LOCK_WAIT: Duration = Duration::from_secs(3);

pub(crate) fn lock_held(e: &sled::Error) -> bool {
    // sled reports the file lock as an `Other` I/O error wrapping the OS `WouldBlock`.
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

async fn open_db(dir: &Path) -> anyhow::Result<sled::Db> {
    let deadline = Instant::now() + DB_LOCK_WAIT;
    loop {
        let path = dir.to_path_buf();
        // We flush ourselves, as the fsync policy says; sled's own timer would blur `never`.
        //
        // sled's default 512 KiB segments are kept, with a known cost under retention: sled
        // writes a page larger than a quarter segment (every leaf of 64 KiB log entries) to a
        // blob file, and does not reliably delete those once the page is rewritten or freed
        // (sled #786), so space freed by retention comes back only in part (measured: ~4% of
        // what was written stays behind). 8 MiB segments keep pages out of blob files and the
        // disk bounded, but stalled flushes for up to 0.9 s (breaking `fsync interval=100`,
        // tests/fsync_strace.rs) and cost ~12% of produce throughput; see the README.
        let opened = tokio::task::spawn_blocking(move || {
            sled::Config::new().path(path).flush_every_ms(None).open()
        })
        .await
        .context("opening the database panicked")?;
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if lock_held(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                let hint = if lock_held(&e) {
                    " (is another broker using it?)"
                } else {
                    ""
                };
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot open the broker database in {}{hint}",
                    dir.display()
                )));
            }
        }
    }
}

/// Opens the data directory, binds, and starts serving, flushing and (with a router) registering
/// and heartbeating. Shards held before a restart are served at once.
pub async fn start(config: BrokerConfig) -> anyhow::Result<BrokerHandle> {
    check_config(&config)?;
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    if let Err(e) = storage::raise_open_files_limit() {
        warn!("cannot raise the open files limit (each shard keeps its segment files open): {e}");
    }
    let db = open_db(&config.data_dir).await?;
    // Under the database lock, before the replay flushes sled: what a killed process wrote to
    // the segment files becomes durable before any index entry pointing at it.
    let data_dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || storage::sync_filesystem(&data_dir))
        .await
        .context("syncing the data directory panicked")?
        .with_context(|| {
            format!(
                "cannot sync the data directory {}",
                config.data_dir.display()
            )
        })?;
    // After the database lock: two processes on one data dir never create two identities.
    let identity = identity::Identity::load_or_create(&config.data_dir)?;
    // Whatever the policy now, writes a crash left only in the write-ahead file go back first.
    wal::replay(&db, &config.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot replay the write-ahead file in {}: {e}",
            config.data_dir.display()
        )
    })?;
    if config.min_free_bytes > 0 && config.min_free_bytes < 2 * config.max_frame as u64 {
        warn!(
            min_free_bytes = config.min_free_bytes,
            max_frame = config.max_frame,
            "--min-free-bytes is below two frames: one large batch (and its write-ahead copy) \
             could fill the disk past the reserve, which then needs a restart"
        );
    }
    let health = Arc::new(storage::Health::with_reserve(
        config.id,
        &config.data_dir,
        config.min_free_bytes,
    ));
    let wal = match config.fsync {
        FsyncPolicy::Interval(_) => Some(Arc::new(
            wal::Wal::open(&config.data_dir, health.clone())
                .map_err(|e| anyhow::anyhow!("cannot start the write-ahead file: {e}"))?,
        )),
        FsyncPolicy::Always | FsyncPolicy::Never => None,
    };
    let sync_files = storage::SyncFiles::open(&config.data_dir).with_context(|| {
        format!(
            "cannot open the database file in {} to sync it",
            config.data_dir.display()
        )
    })?;

    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    if addr.ip().is_unspecified() && config.advertise.is_none() {
        warn!(%addr, "listening on a wildcard address without --advertise; clients will be told {advertise}");
    }

    let router = config.router.as_ref().map(|r| {
        Arc::new(RouterLink::new(
            r.clone(),
            format!("broker-{}", config.id),
            config.max_frame,
            config.listener.secret.clone(),
        ))
    });
    let durability = Durability::new(config.fsync, Disk::new(db.clone(), sync_files), wal, health);
    let space = durability.health().clone();
    let shutdown = CancellationToken::new();
    let removed = CancellationToken::new();
    let refusal = Arc::new(OnceLock::new());
    let uuid = identity.uuid.clone();
    let broker = Arc::new(
        Broker::open(
            config.id,
            db,
            durability.clone(),
            router.clone(),
            config.max_record_bytes,
            config.max_frame,
            shutdown.clone(),
        )
        .map(|b| {
            b.with_move_rate_limit(config.move_rate_limit)
                .with_secret(config.listener.secret.clone())
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot load the shards in {}: {e}",
                config.data_dir.display()
            )
        })?,
    );

    let mut membership = router.as_ref().map(|router| Membership {
        broker: broker.clone(),
        router: router.clone(),
        advertise: advertise.clone(),
        weight: config.weight,
        heartbeat: config.heartbeat,
        removed: removed.clone(),
        refusal: refusal.clone(),
        identity: Mutex::new(identity),
        data_dir: config.data_dir.clone(),
        registered: false,
    });
    if let Some(m) = membership.as_mut() {
        // Before serving anything: a broker whose id the router removed (killed before it
        // noticed, or force-removed while down and back with its old data) must not serve, nor
        // offer, the shard copies it still holds. A router that cannot be reached does not hold
        // the start up: held shards are served and the membership task keeps trying.
        match m.register_once().await {
            Ok(_) => m.registered = true,
            Err(ErrorKind::RemovedBroker { id }) => {
                shutdown.cancel();
                if let Some(r) = &router {
                    r.close().await;
                }
                warn!(id, "the router refused this broker: its id was removed from the cluster; not serving");
                return Err(RemovedFromCluster { id }.into());
            }
            // Another process is this id, or the data dir is another cluster's: serving the
            // shards held here (or empty ones) would answer for data that lives elsewhere.
            Err(kind @ (ErrorKind::IdentityConflict { .. } | ErrorKind::WrongCluster { .. })) => {
                shutdown.cancel();
                if let Some(r) = &router {
                    r.close().await;
                }
                let refused = RefusedByRouter {
                    id: config.id,
                    kind,
                    data_dir: config.data_dir.clone(),
                };
                warn!("{refused}; not serving");
                return Err(refused.into());
            }
            Err(e) => debug!("first registration attempt failed: {e}"),
        }
    }

    let mut tasks = Vec::new();
    let mut metrics_addr = None;
    if let Some(at) = &config.metrics {
        let listener = TcpListener::bind(at)
            .await
            .with_context(|| format!("cannot listen for metrics on {at}"))?;
        metrics_addr = Some(listener.local_addr()?);
        let (broker, token) = (broker.clone(), shutdown.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = metrics::serve(listener, broker, token).await {
                warn!("metrics server stopped: {e}");
            }
        }));
    }
    let mut server_config = config.listener.server_config(config.max_frame);
    server_config.open_connections = broker.metrics.connections.clone();
    tasks.push(tokio::spawn({
        let (broker, token) = (broker.clone(), shutdown.clone());
        async move {
            if let Err(e) = serve(listener, broker, server_config, token).await {
                warn!("server stopped: {e}");
            }
        }
    }));
    // sled 0.34 cannot resume in-process after a failed write: its error is sticky until the
    // database is opened again, and letting go of the old instance can hang for ever in its
    // drop-time flush (a waiter nobody wakes) while a process-wide lock of sled stays taken (seen
    // under gdb). The free-space reserve (`storage::Health::check_space`) keeps sled from ever
    // seeing a full disk; a disk filled past it anyway leaves the broker degraded until a restart,
    // with nothing acknowledged lost.
    broker.replication.set_lag_max_ms(config.replica_lag_max_ms);
    tasks.push(tokio::spawn(replication::run(
        broker.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(durability.run(shutdown.clone())));
    tasks.push(tokio::spawn(storage::watch_space(space, shutdown.clone())));
    if let Some(membership) = membership {
        tasks.push(tokio::spawn(membership.run(shutdown.clone())));
    }
    info!(
        id = config.id,
        %uuid,
        %addr,
        advertise = %advertise,
        data = %config.data_dir.display(),
        fsync = %config.fsync,
        router = config.router.as_deref().unwrap_or("none (standalone)"),
        shards = broker.report().shards.len(),
        "broker started"
    );
    Ok(BrokerHandle {
        addr,
        metrics_addr,
        id: config.id,
        broker,
        router,
        shutdown,
        removed,
        refusal,
        data_dir: config.data_dir.clone(),
        tasks,
    })
}
