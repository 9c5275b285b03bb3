//! The disk underneath the broker: real syncs of sled's files, and the "storage full" state.
//!
//! sled 0.34's `flush()` writes its buffers with `sync_file_range`, which neither flushes the
//! device's write cache nor the file's size, so on its own it survives a process crash but not a
//! power loss. [`SyncFiles`] holds a descriptor of our own on sled's log file (`DATA/db`) and
//! `fdatasync`s it (and any blob file sled wrote since the last sync) after each flush.
//!
//! A full disk is sticky inside sled: the first failed write stores a global error that every
//! later operation returns until the database is opened again (`Config::global_error`, reset only
//! in `PageCache::start`), and reopening in-process can hang in sled's drop-time flush. So sled
//! must never see a full disk: [`Health`] keeps a reserve of free space (`--min-free-bytes`).
//! Below it, writes are refused with [`ErrorKind::StorageFull`] before they reach sled or the
//! write-ahead file, while flushes go on in the reserve, and the broker tells the router it is
//! degraded; once the free space is back above the reserve (plus an eighth, so it does not
//! flap), writes resume by themselves. Only a disk filled faster than the reserve can absorb, so
//! that sled's own write fails, leaves the broker degraded until a restart ("sticky").

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardq_protocol::{BrokerId, CancellationToken, ErrorKind};
use tokio::sync::watch;
use tracing::{debug, info, warn};

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

/// Why writes are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Full {
    pub reason: String,
    /// sled itself failed a write: its error is sticky until a restart. Otherwise the free space
    /// fell below the reserve, and writes resume once it is back.
    pub sticky: bool,
}

/// Default of `--min-free-bytes`: room for sled to flush what it holds and to compact.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 << 20;
/// How stale the last look at the free space may be when a write asks.
const SPACE_CHECK_EVERY: Duration = Duration::from_millis(10);

/// The free-space reserve of the data directory's filesystem.
struct Reserve {
    dir: PathBuf,
    bytes: u64,
    /// The last look at the free space: when, how much was free, and how many bytes writes were
    /// admitted with since (so a burst between two looks is counted, not missed).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    at: Option<Instant>,
    free: u64,
    spent: u64,
}

/// The broker's storage state: healthy, or full (with why, for the error and the router).
pub struct Health {
    broker: BrokerId,
    full: watch::Sender<Option<Full>>,
    reserve: Option<Reserve>,
}

impl Health {
    /// Without a reserve: only a failed write of sled's makes the broker full (tests).
    pub fn new(broker: BrokerId) -> Self {
        Health {
            broker,
            full: watch::Sender::new(None),
            reserve: None,
        }
    }

    /// Writes are refused while `dir`'s filesystem has fewer than `min_free` bytes free (0: no
    /// reserve).
    pub fn with_reserve(broker: BrokerId, dir: &Path, min_free: u64) -> Self {
        Health {
            reserve: (min_free > 0).then(|| Reserve {
                dir: dir.to_path_buf(),
                bytes: min_free,
                seen: Mutex::new(Seen::default()),
            }),
            ..Health::new(broker)
        }
    }

    /// Why the storage is degraded, if it is.
    pub fn degraded(&self) -> Option<String> {
        self.full.borrow().as_ref().map(|f| f.reason.clone())
    }

    pub fn is_full(&self) -> bool {
        self.full.borrow().is_some()
    }

    /// Whether sled itself failed for want of space (no flush can succeed until a restart).
    pub fn is_broken(&self) -> bool {
        self.full.borrow().as_ref().is_some_and(|f| f.sticky)
    }

    /// The error a write gets while the storage is full (below the reserve, or broken).
    pub fn full_error(&self) -> Option<ErrorKind> {
        self.degraded().map(|reason| ErrorKind::StorageFull {
            broker: self.broker,
            reason,
        })
    }

    /// The error a flush gets: only when sled is broken (below the reserve, flushes go on).
    pub fn broken_error(&self) -> Option<ErrorKind> {
        if self.is_broken() {
            self.full_error()
        } else {
            None
        }
    }

    /// Enters the sticky full state (logged once, on the change) and returns the error for the
    /// caller.
    pub fn set_full(&self, reason: String) -> ErrorKind {
        let reason = format!("{reason}; free space, then restart the broker");
        let mut first = false;
        self.full.send_if_modified(|s| match s {
            Some(f) if f.sticky => false,
            _ => {
                *s = Some(Full {
                    reason: reason.clone(),
                    sticky: true,
                });
                first = true;
                true
            }
        });
        if first {
            warn!(
                broker = self.broker,
                "storage full: {reason} (the database cannot take writes until the broker is \
                 restarted; nothing acknowledged is lost)"
            );
        }
        self.full_error().unwrap_or(ErrorKind::StorageFull {
            broker: self.broker,
            reason,
        })
    }

    /// Enters the "below the reserve" state, unless already full (logged once).
    fn set_low(&self, reason: String) {
        let entered = self.full.send_if_modified(|s| {
            if s.is_some() {
                return false;
            }
            *s = Some(Full {
                reason: reason.clone(),
                sticky: false,
            });
            true
        });
        if entered {
            warn!(
                broker = self.broker,
                "storage full: {reason}; refusing writes until space is freed (nothing \
                 acknowledged is lost; writes resume by themselves)"
            );
        }
    }

    /// Leaves the full state (logged once).
    pub fn set_recovered(&self) {
        if self.full.send_replace(None).is_some() {
            info!(
                broker = self.broker,
                "storage recovered: space is available again; accepting writes"
            );
        }
    }

    /// Leaves the "below the reserve" state if that is the state (a sticky failure stays).
    fn leave_low(&self) {
        let left = self.full.send_if_modified(|s| {
            if matches!(s, Some(f) if !f.sticky) {
                *s = None;
                true
            } else {
                false
            }
        });
        if left {
            info!(
                broker = self.broker,
                "storage recovered: space is available again; accepting writes"
            );
        }
    }

    /// Admits a write of about `bytes` (0: a state check only): looks at the free space when
    /// the last look is over 10 ms old, when writes admitted since could have eaten into the
    /// reserve, or while below it; enters or leaves the "below the reserve" state. Its error is
    /// the refusal.
    pub fn check_space(&self, bytes: u64) -> Result<(), ErrorKind> {
        if let Some(r) = &self.reserve {
            let low = self.full.borrow().as_ref().is_some_and(|f| !f.sticky);
            let mut seen = r.seen.lock().unwrap_or_else(|p| p.into_inner());
            // Under `interval` a write also goes to the write-ahead file: count it twice.
            seen.spent = seen.spent.saturating_add(bytes.saturating_mul(2));
            let due = low
                || seen.at.is_none_or(|t| t.elapsed() >= SPACE_CHECK_EVERY)
                || seen.free.saturating_sub(seen.spent) < r.bytes;
            if due {
                match free_bytes(&r.dir) {
                    Ok(free) => {
                        *seen = Seen {
                            at: Some(Instant::now()),
                            free,
                            spent: 0,
                        };
                        drop(seen);
                        if free < r.bytes {
                            self.set_low(format!(
                                "{} free on {}, below the reserve of {} (--min-free-bytes); \
                                 writes resume once space is freed",
                                human(free),
                                r.dir.display(),
                                human(r.bytes)
                            ));
                        } else if low && free >= r.bytes + r.bytes / 8 {
                            self.leave_low();
                        }
                    }
                    Err(e) => debug!("cannot read the free space of {}: {e}", r.dir.display()),
                }
            }
        }
        match self.full_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Like [`Health::io_error`] for a failed write that was cleanly undone (nothing of it is
    /// left on disk): a full disk there is the "below the reserve" state, left when space
    /// returns, not a sticky failure.
    pub fn io_error_undone(&self, context: &str, e: &io::Error) -> ErrorKind {
        if io_is_full(e) {
            self.set_low(format!("{context}: {e}; writes resume once space is freed"));
            self.full_error().unwrap_or(ErrorKind::StorageFull {
                broker: self.broker,
                reason: format!("{context}: {e}"),
            })
        } else {
            self.io_error(context, e)
        }
    }

    /// Receives every change of state.
    pub fn subscribe(&self) -> watch::Receiver<Option<Full>> {
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

/// The files sled writes that only our own `fdatasync` makes durable, and the shards' segment
/// files (see [`crate::shard`]) written since the last flush.
pub struct SyncFiles {
    db_file: File,
    blobs: PathBuf,
    /// The newest blob (named by its log sequence number) already synced.
    blobs_synced: Mutex<u64>,
    /// `DATA/segments`: the shards' payload files.
    segments_root: PathBuf,
    segments: Arc<crate::shard::PendingSyncs>,
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
            segments_root: data_dir.join("segments"),
            segments: Arc::default(),
        };
        sync_dir(data_dir)?;
        files.sync()?;
        Ok(files)
    }

    /// Where the shards keep their segment files, and the list of those to sync.
    pub fn segments(&self) -> (PathBuf, Arc<crate::shard::PendingSyncs>) {
        (self.segments_root.clone(), self.segments.clone())
    }

    /// Makes the segment files written so far durable: call right before `Db::flush`, whose
    /// entries point into them. Blocking.
    pub fn sync_segments(&self) -> io::Result<()> {
        self.segments.sync()
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

/// Looks at the free space every 250 ms, so the broker leaves (and enters) the "below the
/// reserve" state, and tells the router, even while no write asks. Runs until `shutdown`.
pub async fn watch_space(health: std::sync::Arc<Health>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // The refusal, if any, is for writers; here only the state change matters.
        let _ = health.check_space(0);
    }
}

/// Bytes an unprivileged writer may still use on `dir`'s filesystem.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs writes only into `st`, which lives for the call; `path` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// `12.3 MB`-style sizes for messages.
fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.1} MB", bytes as f64 / 1e6)
    }
}

/// `fsync` of a directory, so the entries created in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes everything written to `dir`'s file system durable (`syncfs`). At start, before any
/// flush of sled: a killed process may have left segment bytes, and new segment files' names,
/// only in the operating system's cache, and no index entry may be made durable before the
/// bytes it points at.
pub fn sync_filesystem(dir: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir)?;
    // SAFETY: syncfs on a descriptor this process owns.
    if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the soft limit on open files to the hard limit (every segment file a shard keeps
/// stays open). Returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
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
