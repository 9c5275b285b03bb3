//! Recovery from a full disk without a restart.
//!
//! sled 0.34 keeps the first failed write's error as a global error that every later operation
//! returns, and only `PageCache::start` (opening the database) resets it. So once space is back
//! the broker does in-process what a restart would do: it lets go of every handle of the old
//! instance (the shards, the `shards` and `imports` trees, the flusher's), opens the database
//! again, re-applies the write-ahead file (which holds every write acknowledged since the last
//! synced flush), syncs, and reloads each shard from what is on disk. The acknowledged records are
//! all there: under `always` they were synced before their acknowledgement, under `interval` they
//! are in the write-ahead file; only unacknowledged writes can be missing, whose tickets fail.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardq_protocol::ErrorKind;
use tracing::{info, warn};

use crate::durability::Disk;
use crate::service::{new_incarnation, Broker, Store};
use crate::shard::{tree_name, Ownership};
use crate::storage::{probe_space, SyncFiles};

/// How long a reopen waits for the old instance's file lock (in-flight reads may hold a handle
/// for a moment).
const LOCK_WAIT: Duration = Duration::from_secs(10);

fn storage(what: &str, e: impl std::fmt::Display) -> ErrorKind {
    ErrorKind::Storage {
        reason: format!("recovery from a full disk: {what}: {e}"),
    }
}

impl Broker {
    /// One attempt to leave the full state: fails at once (changing nothing) while the disk has
    /// no room, otherwise reopens the database. Safe to call again after a failure.
    pub(crate) async fn recover_storage(self: Arc<Self>) -> Result<(), ErrorKind> {
        let dir = self.durability.data_dir().to_path_buf();
        tokio::task::spawn_blocking(move || probe_space(&dir))
            .await
            .map_err(|e| storage("space probe task failed", e))?
            .map_err(|e| storage("no room yet", e))?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reopen())
            .await
            .map_err(|e| storage("reopen task failed", e))?
    }

    /// Detaches everything from the old instance, opens the database again, replays and reloads.
    /// Blocking.
    fn reopen(&self) -> Result<(), ErrorKind> {
        let started = Instant::now();
        let health = self.durability.health().clone();
        // Moves into this broker stop: the router retries or rolls them back.
        for job in self.jobs().values().filter(|j| j.running()) {
            job.cancel("cancelled: the destination's disk was full");
        }
        self.durability.set_disk(None);
        let old_store = self.store.write().unwrap_or_else(|p| p.into_inner()).take();
        drop(old_store);
        self.imports.set_tree(None);
        let shards: Vec<_> = self.shards_read().values().cloned().collect();
        // Under each shard's lock: every write to the old instance has taken its ticket by now.
        for s in &shards {
            s.detach();
        }
        let full = health.full_error().unwrap_or(ErrorKind::Unavailable {
            what: "storage".into(),
            reason: "the database was reopened".into(),
        });
        self.durability.fail_pending(full);
        // What a reader saw may be gone (under `never`): fetch answers tell them, as after a
        // restart.
        self.incarnation.store(new_incarnation(), Ordering::Release);

        let dir = self.durability.data_dir().to_path_buf();
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new().path(&dir).flush_every_ms(None).open() {
                Ok(db) => break db,
                Err(e) if crate::lock_held(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(health.sled_error("cannot reopen the database", &e)),
            }
        };
        let sled_err = |what: &str, e: sled::Error| health.sled_error(what, &e);
        // The ownership records as this process knows them (a change the full disk kept from
        // reaching sled's file is written again), before the replay, which skips shards the
        // `shards` tree does not name.
        let owners = db
            .open_tree("shards")
            .map_err(|e| sled_err("cannot open the shards tree", e))?;
        for s in &shards {
            owners
                .insert(s.id().key().as_bytes(), s.ownership().encode()?)
                .map_err(|e| sled_err("cannot record ownership", e))?;
        }
        for kv in owners.iter() {
            let (k, v) = kv.map_err(|e| sled_err("cannot read the shards tree", e))?;
            let gone = match Ownership::decode(&v) {
                Ok(own) => (!shards.iter().any(|s| s.id() == &own.shard)).then_some(own),
                Err(_) => None,
            };
            if let Some(own) = gone {
                // Dropped in this process, but the drop did not reach the disk.
                db.drop_tree(tree_name(&own.shard))
                    .and_then(|_| owners.remove(&k))
                    .map_err(|e| sled_err("cannot finish a drop", e))?;
            }
        }
        let replayed = match self.durability.wal() {
            Some(wal) => Some(wal.replay_all(&db, &dir)?),
            None => None,
        };
        db.flush()
            .map_err(|e| sled_err("cannot flush the reopened database", e))?;
        let files = SyncFiles::open(&dir).map_err(|e| health.io_error("cannot sync", &e))?;
        files
            .sync()
            .map_err(|e| health.io_error("cannot sync", &e))?;
        let imports = db
            .open_tree("imports")
            .map_err(|e| sled_err("cannot open the imports tree", e))?;
        for s in &shards {
            s.reload(&db)?;
        }
        self.imports.set_tree(Some(imports));
        *self.store.write().unwrap_or_else(|p| p.into_inner()) = Some(Store {
            db: db.clone(),
            owners,
        });
        self.durability.set_disk(Some(Disk::new(db, files)));
        info!(
            shards = shards.len(),
            replayed = ?replayed,
            took_ms = started.elapsed().as_millis() as u64,
            "database reopened after the disk was full"
        );
        if let Some(r) = replayed.filter(|r| r.skipped > 0) {
            warn!(
                skipped = r.skipped,
                "write-ahead entries of shards no longer held were skipped"
            );
        }
        Ok(())
    }
}
