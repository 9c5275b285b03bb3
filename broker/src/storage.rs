//! The disk underneath the broker: real syncs of sled's files, and the "storage full" state.
//!
//! sled 0.34's `flush()` writes its buffers with `sync_file_range`, which neither flushes the
//! device's write cache nor the file's size, so on its own it survives a process crash but not a
//! power loss. [`SyncFiles`] holds a descriptor of our own on sled's log file (`DATA/db`) and
//! `fdatasync`s it (and any blob file sled wrote since the last sync) after each flush.
//!
//! A full disk is sticky inside sled: the first failed write stores a global error that every
//! later operation returns until the database is opened again (`Config::global_error`, reset only
//! in `PageCache::start`). [`Health`] records that the broker is in that state, so writes are
//! refused at once with [`ErrorKind::StorageFull`] instead of being handed to sled, and the broker
//! tells the router. Leaving the state needs a restart for now (see `crate::start`).

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use shardq_protocol::{BrokerId, ErrorKind};
use tokio::sync::watch;
use tracing::{info, warn};

/// Whether an I/O error means "no space left" (or over quota): the condition to recover from.
pub fn io_is_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 | 122))
}

/// The same for sled's errors (a sticky ENOSPC comes back as a clone of the first one).
pub fn sled_is_full(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io_is_full(io))
}

/// The broker's storage state: healthy, or full (with why, for the error and the router).
pub struct Health {
    broker: BrokerId,
    /// `Some(reason)` while the disk is full and the database waits to be reopened.
    full: watch::Sender<Option<String>>,
}

impl Health {
    pub fn new(broker: BrokerId) -> Self {
        Health {
            broker,
            full: watch::Sender::new(None),
        }
    }

    /// Why the storage is degraded, if it is.
    pub fn degraded(&self) -> Option<String> {
        self.full.borrow().clone()
    }

    pub fn is_full(&self) -> bool {
        self.full.borrow().is_some()
    }

    /// The error a write gets while the storage is full.
    pub fn full_error(&self) -> Option<ErrorKind> {
        self.degraded().map(|reason| ErrorKind::StorageFull {
            broker: self.broker,
            reason,
        })
    }

    /// Enters the full state (logged once, on the change) and returns the error for the caller.
    pub fn set_full(&self, reason: String) -> ErrorKind {
        let mut first = false;
        self.full.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(reason.clone());
                first = true;
                true
            } else {
                false
            }
        });
        if first {
            warn!(
                broker = self.broker,
                "storage full: {reason}; refusing writes (nothing acknowledged is lost); free space and restart the broker"
            );
        }
        self.full_error().unwrap_or(ErrorKind::StorageFull {
            broker: self.broker,
            reason,
        })
    }

    /// Leaves the full state (logged once).
    pub fn set_recovered(&self) {
        if self.full.send_replace(None).is_some() {
            info!(
                broker = self.broker,
                "storage recovered: space is available again and the database was reopened; accepting writes"
            );
        }
    }

    /// Receives every change of state.
    pub fn subscribe(&self) -> watch::Receiver<Option<String>> {
        self.full.subscribe()
    }

    /// Turns a sled error into an [`ErrorKind`], entering the full state on ENOSPC.
    pub fn sled_error(&self, context: &str, e: &sled::Error) -> ErrorKind {
        if sled_is_full(e) {
            self.set_full(format!("{context}: {e}"))
        } else {
            ErrorKind::Storage {
                reason: format!("{context}: {e}"),
            }
        }
    }

    /// The same for a plain I/O error.
    pub fn io_error(&self, context: &str, e: &io::Error) -> ErrorKind {
        if io_is_full(e) {
            self.set_full(format!("{context}: {e}"))
        } else {
            ErrorKind::Storage {
                reason: format!("{context}: {e}"),
            }
        }
    }
}

/// The files sled writes that only our own `fdatasync` makes durable.
pub struct SyncFiles {
    db_file: File,
    blobs: PathBuf,
    /// The newest blob (named by its log sequence number) already synced.
    blobs_synced: Mutex<u64>,
}

impl SyncFiles {
    /// Opens sled's log file in `data_dir` (sled 0.34 keeps everything in `db`, plus `blobs/`
    /// for values too large to inline and `snap.*` snapshots, which it syncs itself) and syncs
    /// the directories once, so the files' names survive a power loss too.
    pub fn open(data_dir: &Path) -> io::Result<SyncFiles> {
        let db_file = File::open(data_dir.join("db"))?;
        let blobs = data_dir.join("blobs");
        let files = SyncFiles {
            db_file,
            blobs,
            blobs_synced: Mutex::new(0),
        };
        sync_dir(data_dir)?;
        files.sync()?;
        Ok(files)
    }

    /// Makes everything sled has written so far durable: call right after `Db::flush`. Blocking.
    pub fn sync(&self) -> io::Result<()> {
        self.db_file.sync_data()?;
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|p| p.into_inner());
        let mut newest = *synced;
        let entries = match fs::read_dir(&self.blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if lsn > *synced {
                // sled writes blobs with `write_all` and never syncs them.
                match File::open(entry.path()) {
                    Ok(f) => f.sync_data()?,
                    // Replaced (and deleted) by sled since the listing: nothing to keep.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                newest = newest.max(lsn);
            }
        }
        if newest > *synced {
            sync_dir(&self.blobs)?;
            *synced = newest;
        }
        Ok(())
    }
}

/// `fsync` of a directory, so the entries created in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_is_recognised_and_the_state_changes_once() {
        let enospc = io::Error::from_raw_os_error(28);
        assert!(io_is_full(&enospc));
        assert!(!io_is_full(&io::Error::from_raw_os_error(5)));
        assert!(sled_is_full(&sled::Error::Io(
            io::Error::from_raw_os_error(28)
        )));
        let h = Health::new(7);
        let mut rx = h.subscribe();
        assert!(matches!(
            h.io_error("x", &io::Error::from_raw_os_error(5)),
            ErrorKind::Storage { .. }
        ));
        assert!(!h.is_full());
        let e = h.io_error("wal", &enospc);
        assert!(e.to_string().starts_with("broker 7: storage full"), "{e}");
        assert!(e.is_retriable());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // A second failure keeps the first reason and does not signal again.
        h.set_full("later".into());
        assert!(!rx.has_changed().unwrap());
        assert!(h.degraded().unwrap().starts_with("wal"));
        h.set_recovered();
        assert!(h.degraded().is_none());
        assert!(rx.has_changed().unwrap());
    }
}
