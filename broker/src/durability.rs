//! The fsync policy in action: group commit for `always`, a periodic flusher for `interval=MS`,
//! nothing for `never`.
//!
//! Every write that an acknowledgement may depend on takes a ticket ([`Durability::note_write`])
//! after sled has applied it. Under `always`, the flusher task reads the newest ticket *before* it
//! starts a flush and publishes it once the flush is done, so a waiter released by ticket `t` knows
//! a flush that started after its write has completed; writes that arrive during a flush are all
//! covered by the next one.
//!
//! A flush is sled's `flush()` followed by an `fdatasync` of sled's files ([`SyncFiles`]): sled's
//! own flush only issues `sync_file_range`, which leaves the device cache and the file size
//! unsynced. Tickets are taken under the shard lock that ordered the write, so the tickets of
//! every write before a given point can be failed exactly ([`Durability::fail_pending`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::{CancellationToken, ErrorKind};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::config::FsyncPolicy;
use crate::storage::{Health, SyncFiles};
use crate::wal::Wal;

/// The pause after a failed group commit before the next try (no spinning on a failing disk).
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// What the flusher has achieved so far.
#[derive(Clone, Debug, Default)]
struct FlushProgress {
    /// Every write with a ticket `<=` this is on disk.
    flushed: u64,
    /// The last failure: every unflushed ticket `<=` it fails with its error.
    failed: Option<(u64, ErrorKind)>,
}

/// One open instance of the database and the files to sync after flushing it.
pub struct Disk {
    pub db: sled::Db,
    files: SyncFiles,
    /// How long successful flushes took, for `/metrics`.
    flushes: prometheus_client::metrics::histogram::Histogram,
}

impl Disk {
    pub fn new(db: sled::Db, files: SyncFiles) -> Arc<Disk> {
        Arc::new(Disk {
            db,
            files,
            flushes: crate::metrics::latency_histogram(),
        })
    }

    /// Flushes sled's buffers, then makes them durable. Blocking.
    fn flush(&self, health: &Health) -> Result<(), ErrorKind> {
        let start = std::time::Instant::now();
        self.files
            .sync_segments()
            .map_err(|e| health.io_error("fdatasync of the segment files failed", &e))?;
        self.db
            .flush()
            .map_err(|e| health.sled_error("flush to disk failed", &e))?;
        self.files
            .sync()
            .map_err(|e| health.io_error("fdatasync of the database failed", &e))?;
        self.flushes.observe(start.elapsed().as_secs_f64());
        Ok(())
    }
}

/// Shared by the request handlers (who take tickets and wait) and the flusher task.
pub struct Durability {
    policy: FsyncPolicy,
    /// The database and the files to sync after flushing it.
    disk: Arc<Disk>,
    /// Under `interval`: every write also goes here before its ack, so a process crash loses
    /// nothing acknowledged; each flush retires the segments it covers.
    wal: Option<Arc<Wal>>,
    health: Arc<Health>,
    written: AtomicU64,
    progress: watch::Sender<FlushProgress>,
    wake: Notify,
}

impl Durability {
    pub fn new(
        policy: FsyncPolicy,
        disk: Arc<Disk>,
        wal: Option<Arc<Wal>>,
        health: Arc<Health>,
    ) -> Arc<Self> {
        Arc::new(Durability {
            policy,
            disk,
            wal,
            health,
            written: AtomicU64::new(0),
            progress: watch::Sender::new(FlushProgress::default()),
            wake: Notify::new(),
        })
    }

    /// Where the shards keep their segment files, and the list of those to sync.
    pub fn segments(&self) -> (std::path::PathBuf, Arc<crate::shard::PendingSyncs>) {
        self.disk.files.segments()
    }

    /// The write-ahead file, if the policy keeps one.
    pub fn wal(&self) -> Option<Arc<Wal>> {
        self.wal.clone()
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The histogram of flush times (a handle onto the same values).
    pub fn flush_histogram(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.disk.flushes.clone()
    }

    /// Whether consumers may only read flushed records: under `always` an acknowledgement means
    /// "on disk", and a consumer must not see (and commit past) what a crash could still take back.
    /// Under the other policies a crash may lose the last unflushed records anyway, and fetches
    /// serve them at once, as Kafka does without replication.
    pub fn reads_wait_for_flush(&self) -> bool {
        self.policy == FsyncPolicy::Always
    }

    /// Records that a write has been applied; call after the sled write returned, under the lock
    /// that ordered it (see the module docs).
    pub fn note_write(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The newest ticket handed out (for duplicates: the retried write may still be unflushed).
    pub fn current(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Fails every ticket handed out so far that is not flushed yet.
    pub fn fail_pending(&self, error: ErrorKind) {
        let upto = self.current();
        self.progress.send_modify(|p| {
            if p.flushed < upto {
                p.failed = Some((upto, error));
            }
        });
    }

    /// Waits until write `ticket` is durable as the policy promises: under `always` until a flush
    /// that started after the write has completed; otherwise at once.
    pub async fn wait(&self, ticket: u64) -> Result<(), ErrorKind> {
        if self.policy != FsyncPolicy::Always {
            return Ok(());
        }
        let mut rx = self.progress.subscribe();
        if rx.borrow().flushed >= ticket {
            return Ok(());
        }
        // sled failed for want of space: no flush can make this write durable.
        if let Some(e) = self.health.broken_error() {
            return Err(e);
        }
        self.wake.notify_one();
        let done = rx
            .wait_for(|p| {
                p.flushed >= ticket || p.failed.as_ref().is_some_and(|(t, _)| *t >= ticket)
            })
            .await
            .map_err(|_| ErrorKind::ShuttingDown)?;
        if done.flushed >= ticket {
            return Ok(());
        }
        Err(match &done.failed {
            Some((_, e @ ErrorKind::StorageFull { .. })) => e.clone(),
            Some((_, e)) => ErrorKind::Storage {
                reason: format!("the write may not be durable: {e}"),
            },
            None => ErrorKind::Internal {
                reason: "flush progress lost".into(),
            },
        })
    }

    /// Flushes everything written so far and syncs it, off the async threads.
    pub async fn flush_now(&self) -> Result<(), ErrorKind> {
        // Below the free-space reserve flushes go on (that is what the reserve is for); only a
        // failed write of sled's stops them.
        if let Some(e) = self.health.broken_error() {
            return Err(e);
        }
        let target = self.current();
        let disk = self.disk.clone();
        let (wal, health) = (self.wal.clone(), self.health.clone());
        let mut full = self.health.subscribe();
        // All of it is blocking file work (a file create or delete can wait for a journal commit
        // of another flush): none of it on the async threads. Every write before the rotation is
        // covered by the flush; the closed segments can go once it is synced, not before.
        let task = tokio::task::spawn_blocking(move || -> Result<(), ErrorKind> {
            let closed = wal.as_ref().map(|w| w.rotate()).transpose()?;
            disk.flush(&health)?;
            if let (Some(wal), Some(closed)) = (&wal, closed) {
                wal.release(closed);
            }
            Ok(())
        });
        // sled 0.34 can wait forever in a flush once a write of its failed for want of space
        // (nobody wakes the waiter): stop waiting when the full state is entered elsewhere.
        let res = tokio::select! {
            r = task => r.map_err(|e| ErrorKind::Internal {
                reason: format!("flush task failed: {e}"),
            })?,
            _ = full.wait_for(|s| s.as_ref().is_some_and(|f| f.sticky)) => Err(self.health.full_error().unwrap_or(
                ErrorKind::Internal { reason: "storage full state lost".into() },
            )),
        };
        match res {
            Ok(()) => {
                self.progress
                    .send_modify(|p| p.flushed = p.flushed.max(target));
                Ok(())
            }
            Err(e) => {
                self.progress
                    .send_modify(|p| p.failed = Some((target, e.clone())));
                Err(e)
            }
        }
    }

    /// The background flusher: group commit (`always`) or periodic (`interval`); nothing for
    /// `never`. Below the free-space reserve it goes on flushing (the reserve is for that). Once
    /// sled itself failed a write for want of space (sticky until a restart: see
    /// [`crate::storage`]) it fails the writes waiting for a flush and stops, creating no more
    /// write-ahead segments. Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut health = self.health.subscribe();
        let every = match self.policy {
            FsyncPolicy::Interval(every) => every,
            // Unused: the tick only drives `interval`.
            FsyncPolicy::Always | FsyncPolicy::Never => Duration::from_secs(3600),
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(e) = self.health.broken_error() {
                self.fail_pending(e);
                shutdown.cancelled().await;
                return;
            }
            match self.policy {
                FsyncPolicy::Never => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = health.changed() => {}
                },
                FsyncPolicy::Always => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = health.changed() => continue,
                        _ = self.wake.notified() => {}
                    }
                    // Keep flushing while writes keep arriving: each round covers everything that
                    // was written while the previous one ran.
                    while self.current() > self.progress.borrow().flushed
                        && !self.health.is_broken()
                    {
                        if let Err(e) = self.flush_now().await {
                            if self.health.is_broken() {
                                break;
                            }
                            warn!("group commit: {e}");
                            // Do not spin on a failing disk.
                            tokio::select! {
                                _ = shutdown.cancelled() => return,
                                _ = tokio::time::sleep(FIRST_BACKOFF) => {}
                            }
                        }
                    }
                }
                FsyncPolicy::Interval(_) => {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = health.changed() => continue,
                        _ = tick.tick() => {}
                    }
                    if self.current() > self.progress.borrow().flushed {
                        match self.flush_now().await {
                            Ok(()) => debug!("interval flush done"),
                            // The full state logs itself once.
                            Err(_) if self.health.is_broken() => {}
                            Err(e) => warn!("interval flush: {e}"),
                        }
                    }
                }
            }
        }
    }
}
