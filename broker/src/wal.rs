//! The write-ahead file that lets `fsync interval=MS` survive a crash of the broker process.
//!
//! sled keeps unflushed writes in the process's own buffers, so without this a `kill -9` would lose
//! everything acknowledged since the last interval flush, and the lost offsets would be handed out
//! again to different records. Kafka and JetStream defaults survive a process crash because their
//! writes reach the operating system before the acknowledgement; this file does the same for us:
//! every log append and group commit is also `write()`n here (no fsync) before it is acknowledged.
//! A power loss can still take the last interval, as the policy says.
//!
//! Segments `wal/NNNNNNNNNNNNNNNNNNNN.wal` hold frames `len: u32 LE | xxh3(payload): u64 LE | payload`
//! where the payload names the shard and carries the exact sled inserts of one write. Before each
//! flush the current segment is closed ([`Wal::rotate`]) and once the flush is done every closed
//! segment it covers is deleted ([`Wal::release`]). On start, [`replay`] re-applies what is left
//! (idempotent: the same keys get the same values, in the original order), flushes and deletes it.
//!
//! Order matters for correctness: a write is applied to sled first and to this file second, both
//! under the shard's lock. A rotation between the two puts the entry in the next segment (replayed
//! harmlessly); a rotation after both closes a segment whose writes the following flush covers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use shardq_protocol::{ErrorKind, ShardId};
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64;

use crate::storage::Health;

const DIR: &str = "wal";
const SUFFIX: &str = ".wal";
const HEADER: usize = 12;
/// A frame larger than this is garbage (an append is at most one frame of the protocol).
const MAX_FRAME: usize = 1 << 30;

/// One sled write: key and value; an empty value removes the key (no stored value is empty:
/// a truncated log's removals travel this way).
pub type Op<'a> = (&'a [u8], &'a [u8]);

struct Segment {
    number: u64,
    file: File,
    /// Bytes of whole frames written so far.
    len: u64,
    /// A failed write could not be cut off again: nothing more may follow it in this segment.
    broken: bool,
}

/// The broker's write-ahead file (present only under `fsync interval=MS`).
pub struct Wal {
    dir: PathBuf,
    health: Arc<Health>,
    current: Mutex<Segment>,
    /// Held through a rotation, so rotations keep segment numbers in write order while the next
    /// segment is created without holding up appends.
    rotating: Mutex<()>,
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}{SUFFIX}"))
}

/// The segment numbers present in `dir`, in order.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name();
                let name = name.to_string_lossy();
                if let Some(n) = name.strip_suffix(SUFFIX).and_then(|n| n.parse().ok()) {
                    out.push(n);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort_unstable();
    Ok(out)
}

fn create_segment(dir: &Path, number: u64) -> io::Result<Segment> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, number))?;
    Ok(Segment {
        number,
        file,
        len: 0,
        broken: false,
    })
}

fn storage(what: &str, e: impl std::fmt::Display) -> ErrorKind {
    ErrorKind::Storage {
        reason: format!("write-ahead file: {what}: {e}"),
    }
}

fn encode(shard: &ShardId, ops: &[Op<'_>]) -> Vec<u8> {
    let name = shard.key();
    let size = HEADER
        + 2
        + name.len()
        + 4
        + ops
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>();
    let mut frame = Vec::with_capacity(size);
    frame.extend_from_slice(&[0u8; HEADER]);
    frame.extend_from_slice(&(name.len() as u16).to_le_bytes());
    frame.extend_from_slice(name.as_bytes());
    frame.extend_from_slice(&(ops.len() as u32).to_le_bytes());
    for (k, v) in ops {
        frame.extend_from_slice(&(k.len() as u32).to_le_bytes());
        frame.extend_from_slice(k);
        frame.extend_from_slice(&(v.len() as u32).to_le_bytes());
        frame.extend_from_slice(v);
    }
    let len = (frame.len() - HEADER) as u32;
    let sum = xxh3_64(&frame[HEADER..]);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..HEADER].copy_from_slice(&sum.to_le_bytes());
    frame
}

/// A decoded frame: the shard key and its inserts.
struct Entry {
    shard: String,
    ops: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads `n` bytes at `*at`, advancing it.
fn take<'a>(buf: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let end = at.checked_add(n)?;
    let s = buf.get(*at..end)?;
    *at = end;
    Some(s)
}

fn take_u32(buf: &[u8], at: &mut usize) -> Option<usize> {
    take(buf, at, 4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) as usize)
}

fn decode_payload(p: &[u8]) -> Option<Entry> {
    let mut at = 0;
    let name_len = take(p, &mut at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)?;
    let shard = String::from_utf8(take(p, &mut at, name_len)?.to_vec()).ok()?;
    let count = take_u32(p, &mut at)?;
    let mut ops = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let kl = take_u32(p, &mut at)?;
        let k = take(p, &mut at, kl)?.to_vec();
        let vl = take_u32(p, &mut at)?;
        let v = take(p, &mut at, vl)?.to_vec();
        ops.push((k, v));
    }
    (at == p.len()).then_some(Entry { shard, ops })
}

/// The whole frames of one segment; stops at a torn or corrupt tail (a crash mid-write).
fn read_segment(path: &Path) -> io::Result<(Vec<Entry>, bool)> {
    let mut buf = Vec::new();
    File::open(path)?.read_to_end(&mut buf)?;
    let mut entries = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let Some(header) = buf.get(at..at + HEADER) else {
            return Ok((entries, false));
        };
        let len = u32::from_le_bytes(header[..4].try_into().unwrap_or([0; 4])) as usize;
        let sum = u64::from_le_bytes(header[4..].try_into().unwrap_or([0; 8]));
        let Some(payload) = (len <= MAX_FRAME)
            .then(|| buf.get(at + HEADER..at + HEADER + len))
            .flatten()
        else {
            return Ok((entries, false));
        };
        if xxh3_64(payload) != sum {
            return Ok((entries, false));
        }
        match decode_payload(payload) {
            Some(e) => entries.push(e),
            None => return Ok((entries, false)),
        }
        at += HEADER + len;
    }
    Ok((entries, true))
}

/// What [`replay`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub segments: usize,
    pub entries: usize,
    /// Entries of shards this broker no longer holds (dropped after the write), skipped.
    pub skipped: usize,
}

/// Re-applies the write-ahead segments left by a crash to the shards still held (the `shards`
/// tree names them), flushes, and deletes the segments. Run before the shards are opened.
pub fn replay(db: &sled::Db, data_dir: &Path) -> Result<Replayed, ErrorKind> {
    let dir = data_dir.join(DIR);
    let numbers = segments(&dir).map_err(|e| storage("cannot list segments", e))?;
    let mut done = Replayed::default();
    if numbers.is_empty() {
        return Ok(done);
    }
    let owners = db
        .open_tree("shards")
        .map_err(|e| storage("cannot open the shards tree", e))?;
    for &n in &numbers {
        let path = segment_path(&dir, n);
        let (entries, whole) =
            read_segment(&path).map_err(|e| storage(&format!("{}", path.display()), e))?;
        if !whole {
            warn!(segment = %path.display(), "write-ahead segment ends in a torn frame (a crash mid-write); replaying the whole frames before it");
        }
        done.segments += 1;
        for entry in entries {
            let held = owners
                .contains_key(entry.shard.as_bytes())
                .map_err(|e| storage("cannot read the shards tree", e))?;
            if !held {
                done.skipped += 1;
                continue;
            }
            let tree = db
                .open_tree(format!("shard/{}", entry.shard))
                .map_err(|e| storage("cannot open a shard tree", e))?;
            let mut batch = sled::Batch::default();
            for (k, v) in entry.ops {
                if v.is_empty() {
                    batch.remove(k);
                } else {
                    batch.insert(k, v);
                }
            }
            tree.apply_batch(batch)
                .map_err(|e| storage("cannot re-apply an entry", e))?;
            done.entries += 1;
        }
    }
    db.flush()
        .map_err(|e| storage("cannot flush the replayed entries", e))?;
    // sled's flush does not reach the disk's platter: sync before the segments go.
    crate::storage::SyncFiles::open(data_dir)
        .and_then(|f| f.sync())
        .map_err(|e| storage("cannot sync the replayed entries", e))?;
    for n in numbers {
        let path = segment_path(&dir, n);
        fs::remove_file(&path).map_err(|e| storage(&format!("{}", path.display()), e))?;
    }
    info!(
        segments = done.segments,
        entries = done.entries,
        skipped = done.skipped,
        "replayed the write-ahead file left by a crash"
    );
    Ok(done)
}

impl Wal {
    /// Starts a new segment after any left over (call [`replay`] first).
    pub fn open(data_dir: &Path, health: Arc<Health>) -> Result<Wal, ErrorKind> {
        let dir = data_dir.join(DIR);
        fs::create_dir_all(&dir).map_err(|e| storage(&format!("{}", dir.display()), e))?;
        let next = segments(&dir)
            .map_err(|e| storage("cannot list segments", e))?
            .last()
            .map_or(0, |n| n + 1);
        let current =
            create_segment(&dir, next).map_err(|e| storage("cannot create a segment", e))?;
        Ok(Wal {
            dir,
            health,
            current: Mutex::new(current),
            rotating: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Segment> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes one entry to the operating system (no fsync). Call after sled applied the same
    /// inserts, under the shard's lock.
    ///
    /// A failed write (a full disk) is cut off again, so the frames written after it (once space
    /// is back) are not hidden behind a torn frame, where replay stops.
    pub fn append(&self, shard: &ShardId, ops: &[Op<'_>]) -> Result<(), ErrorKind> {
        let frame = encode(shard, ops);
        let mut seg = self.lock();
        if seg.broken {
            return Err(self.health.full_error().unwrap_or_else(|| {
                storage("cannot write", "the current segment ends in a failed write")
            }));
        }
        match seg.file.write_all(&frame) {
            Ok(()) => {
                seg.len += frame.len() as u64;
                Ok(())
            }
            Err(e) => {
                let len = seg.len;
                match seg.file.set_len(len) {
                    // Nothing of the write is left: once space returns, appends go on.
                    Ok(()) => Err(self
                        .health
                        .io_error_undone("write-ahead file: cannot write", &e)),
                    Err(cut) => {
                        warn!(segment = seg.number, "cannot cut a failed write-ahead write off: {cut}; starting a new segment at the next flush");
                        seg.broken = true;
                        Err(self.health.io_error("write-ahead file: cannot write", &e))
                    }
                }
            }
        }
    }

    /// Closes the current segment and starts the next; returns the closed one's number. A flush
    /// that starts after this covers every write in it and before it. Blocking file work: call
    /// off the async threads. The new file is created before appends are held up, as creating a
    /// file can wait for another flush's journal commit.
    pub fn rotate(&self) -> Result<u64, ErrorKind> {
        let _rotation = self.rotating.lock().unwrap_or_else(|p| p.into_inner());
        let number = self.lock().number + 1;
        let next = create_segment(&self.dir, number).map_err(|e| {
            self.health
                .io_error("write-ahead file: cannot create a segment", &e)
        })?;
        Ok(std::mem::replace(&mut *self.lock(), next).number)
    }

    /// Deletes the closed segments up to `upto` (their writes are flushed). Blocking file work.
    pub fn release(&self, upto: u64) {
        let current = self.lock().number;
        let Ok(numbers) = segments(&self.dir) else {
            return;
        };
        for n in numbers.into_iter().filter(|&n| n <= upto && n < current) {
            if let Err(e) = fs::remove_file(segment_path(&self.dir, n)) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!(
                        segment = n,
                        "cannot delete a flushed write-ahead segment: {e}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), Arc::new(Health::new(1))).unwrap();
        let shard = ShardId::new("w", 1);
        wal.append(&shard, &[(b"k1", b"v1"), (b"k2", b"")]).unwrap();
        wal.append(&shard, &[(b"k3", &[7u8; 1000][..])]).unwrap();
        let path = segment_path(&dir.path().join(DIR), 0);
        let (entries, whole) = read_segment(&path).unwrap();
        assert!(whole);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].shard, "w:P1");
        assert_eq!(
            entries[0].ops,
            vec![(b"k1".to_vec(), b"v1".to_vec()), (b"k2".to_vec(), vec![])]
        );
        assert_eq!(entries[1].ops[0].1.len(), 1000);
        // Cut the file anywhere inside the second frame: only the first survives.
        let bytes = fs::read(&path).unwrap();
        let first = HEADER + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        for cut in [first + 1, first + HEADER, bytes.len() - 1] {
            fs::write(&path, &bytes[..cut]).unwrap();
            let (entries, whole) = read_segment(&path).unwrap();
            assert!(!whole, "cut at {cut}");
            assert_eq!(entries.len(), 1, "cut at {cut}");
        }
        // A flipped byte in a payload is caught by the checksum.
        let mut bad = bytes.clone();
        bad[HEADER + 3] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        assert_eq!(read_segment(&path).unwrap().0.len(), 0);
    }

    #[test]
    fn replay_applies_held_shards_skips_dropped_ones_and_deletes_segments() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let held = ShardId::new("w", 1);
        let gone = ShardId::new("w", 2);
        db.open_tree("shards")
            .unwrap()
            .insert(held.key().as_bytes(), b"x")
            .unwrap();
        {
            let wal = Wal::open(dir.path(), Arc::new(Health::new(1))).unwrap();
            wal.append(&held, &[(b"a", b"1")]).unwrap();
            wal.append(&gone, &[(b"a", b"2")]).unwrap();
            wal.rotate().unwrap();
            wal.append(&held, &[(b"a", b"3"), (b"b", b"4")]).unwrap();
        }
        let done = replay(&db, dir.path()).unwrap();
        assert_eq!(
            done,
            Replayed {
                segments: 2,
                entries: 2,
                skipped: 1
            }
        );
        let tree = db.open_tree("shard/w:P1").unwrap();
        assert_eq!(tree.get(b"a").unwrap().unwrap().as_ref(), b"3");
        assert_eq!(tree.get(b"b").unwrap().unwrap().as_ref(), b"4");
        assert!(!db.tree_names().iter().any(|n| n.as_ref() == b"shard/w:P2"));
        assert!(segments(&dir.path().join(DIR)).unwrap().is_empty());
        // A new file starts after a replay.
        let wal = Wal::open(dir.path(), Arc::new(Health::new(1))).unwrap();
        wal.append(&held, &[(b"c", b"5")]).unwrap();
        let closed = wal.rotate().unwrap();
        wal.release(closed);
        assert_eq!(segments(&dir.path().join(DIR)).unwrap(), vec![closed + 1]);
    }
}
