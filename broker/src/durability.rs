//! The fsync policy in action: group commit for `always`, a periodic flusher for `interval=MS`,
//! nothing for `never`.
//!
//! Every write that an acknowledgement may depend on takes a ticket ([`Durability::note_write`])
//! after sled has applied it. Under `always`, the flusher task reads the newest ticket *before* it
//! starts a flush and publishes it once the flush is done, so a waiter released by ticket `t` knows
//! a flush that started after its write has completed; writes that arrive during a flush are all
//! covered by the next one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::{CancellationToken, ErrorKind};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::config::FsyncPolicy;
use crate::wal::Wal;

/// What the flusher has achieved so far.
#[derive(Clone, Debug, Default)]
struct FlushProgress {
    /// Every write with a ticket `<=` this is on disk.
    flushed: u64,
    /// The last failed flush: the ticket it was meant to cover and why it failed.
    failed: Option<(u64, String)>,
}

/// Shared by the request handlers (who take tickets and wait) and the flusher task.
pub struct Durability {
    policy: FsyncPolicy,
    db: sled::Db,
    /// Under `interval`: every write also goes here before its ack, so a process crash loses
    /// nothing acknowledged; each flush retires the segments it covers.
    wal: Option<Arc<Wal>>,
    written: AtomicU64,
    progress: watch::Sender<FlushProgress>,
    wake: Notify,
}

impl Durability {
    pub fn new(policy: FsyncPolicy, db: sled::Db, wal: Option<Arc<Wal>>) -> Arc<Self> {
        Arc::new(Durability {
            policy,
            db,
            wal,
            written: AtomicU64::new(0),
            progress: watch::Sender::new(FlushProgress::default()),
            wake: Notify::new(),
        })
    }

    /// The write-ahead file, if the policy keeps one.
    pub fn wal(&self) -> Option<Arc<Wal>> {
        self.wal.clone()
    }

    /// Whether consumers may only read flushed records: under `always` an acknowledgement means
    /// "on disk", and a consumer must not see (and commit past) what a crash could still take back.
    /// Under the other policies a crash may lose the last unflushed records anyway, and fetches
    /// serve them at once, as Kafka does without replication.
    pub fn reads_wait_for_flush(&self) -> bool {
        self.policy == FsyncPolicy::Always
    }

    /// Records that a write has been applied; call after the sled write returned.
    pub fn note_write(&self) -> u64 {
        self.written.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The newest ticket handed out (for duplicates: the retried write may still be unflushed).
    pub fn current(&self) -> u64 {
        self.written.load(Ordering::Acquire)
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
        let reason = done
            .failed
            .as_ref()
            .map_or_else(String::new, |(_, r)| r.clone());
        Err(ErrorKind::Storage {
            reason: format!("flush to disk failed, the write may not be durable: {reason}"),
        })
    }

    /// Flushes everything written so far, off the async threads.
    pub async fn flush_now(&self) -> Result<(), ErrorKind> {
        let target = self.current();
        let (db, wal) = (self.db.clone(), self.wal.clone());
        // All of it is blocking file work (a file create or delete can wait for a journal commit
        // of another flush): none of it on the async threads. Every write before the rotation is
        // covered by the flush; the closed segments can go once it is done.
        let res = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let closed = wal
                .as_ref()
                .map(|w| w.rotate())
                .transpose()
                .map_err(|e| e.to_string())?;
            db.flush().map_err(|e| e.to_string())?;
            if let (Some(wal), Some(closed)) = (&wal, closed) {
                wal.release(closed);
            }
            Ok(())
        })
        .await
        .map_err(|e| ErrorKind::Internal {
            reason: format!("flush task failed: {e}"),
        })?;
        match res {
            Ok(()) => {
                self.progress
                    .send_modify(|p| p.flushed = p.flushed.max(target));
                Ok(())
            }
            Err(reason) => {
                self.progress
                    .send_modify(|p| p.failed = Some((target, reason.clone())));
                Err(ErrorKind::Storage {
                    reason: format!("flush to disk failed: {reason}"),
                })
            }
        }
    }

    /// The background flusher: group commit (`always`) or periodic (`interval`); returns at once
    /// for `never`. Runs until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        match self.policy {
            FsyncPolicy::Never => {}
            FsyncPolicy::Always => loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => {}
                }
                // Keep flushing while writes keep arriving: each round covers everything that was
                // written while the previous one ran.
                while self.current() > self.progress.borrow().flushed {
                    if let Err(e) = self.flush_now().await {
                        warn!("group commit: {e}");
                        // Do not spin on a failing disk.
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                }
            },
            FsyncPolicy::Interval(every) => {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    if self.current() > self.progress.borrow().flushed {
                        match self.flush_now().await {
                            Ok(()) => debug!("interval flush done"),
                            Err(e) => warn!("interval flush: {e}"),
                        }
                    }
                }
            }
        }
    }
}
