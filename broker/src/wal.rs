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
//! Order matters for correctness: a write is applied to sled first and handed to this file second,
//! both under the shard's lock; its acknowledgement waits until the frame reached the OS. A
//! rotation between the two puts the entry in the next segment (replayed harmlessly); a rotation
//! after both closes a segment whose writes the following flush covers.
//!
//! One writer thread per broker does the `write()`s, in the order the frames were handed over,
//! several queued frames in one call. A `write()` can wait (for a journal commit of a flush, for
//! dirty-page throttling): it then holds up the appends that wait for it, not an async worker with
//! every other request on it, and not the shard's lock. Rotations go through the same queue, so
//! they fall between appends exactly where they were asked for.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use shardq_protocol::{ErrorKind, ShardId};
use tracing::{info, warn};
use xxhash_rust::xxh3::xxh3_64;

const DIR: &str = "wal";
const SUFFIX: &str = ".wal";
const HEADER: usize = 12;
/// A frame larger than this is garbage (an append is at most one frame of the protocol).
const MAX_FRAME: usize = 1 << 30;
/// The writer gathers queued frames into one `write()` up to about this many bytes.
const GATHER_BYTES: usize = 8 << 20;

/// One sled insert: key and value.
pub type Op<'a> = (&'a [u8], &'a [u8]);

struct Segment {
    number: u64,
    file: File,
}

/// What the writer thread is asked to do, in order.
enum Cmd {
    /// Write a frame (empty: a barrier that completes once everything before it is written).
    Append {
        frame: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Close the current segment, start the next; answers the closed one's number.
    Rotate {
        done: mpsc::Sender<Result<u64, String>>,
    },
}

/// The broker's write-ahead file (present only under `fsync interval=MS`).
pub struct Wal {
    dir: PathBuf,
    queue: Option<mpsc::Sender<Cmd>>,
    /// The number of the segment being written.
    current: Arc<AtomicU64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// A write handed to the writer thread; [`WalWrite::done`] once it reached the OS.
#[derive(Debug)]
pub struct WalWrite(oneshot::Receiver<Result<(), String>>);

impl WalWrite {
    pub async fn done(self) -> Result<(), ErrorKind> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(storage("cannot write", e)),
            Err(_) => Err(storage("cannot write", "the writer thread stopped")),
        }
    }

    #[cfg(test)]
    fn wait(self) -> Result<(), ErrorKind> {
        match self.0.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(storage("cannot write", e)),
            Err(_) => Err(storage("cannot write", "the writer thread stopped")),
        }
    }
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// Writes what `buf` gathered to the segment and tells its waiters how it went.
fn write_out(seg: &mut Segment, buf: &mut Vec<u8>, waiters: &mut Vec<Waiter>) {
    let result = if buf.is_empty() {
        Ok(())
    } else {
        seg.file.write_all(buf).map_err(|e| e.to_string())
    };
    buf.clear();
    for w in waiters.drain(..) {
        let _ = w.send(result.clone());
    }
}

/// The writer thread: takes commands in order; writes every queued frame up to a rotation (or
/// about [`GATHER_BYTES`]) in one call, then tells their waiters.
fn write_loop(dir: PathBuf, mut seg: Segment, queue: mpsc::Receiver<Cmd>, current: Arc<AtomicU64>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut waiters: Vec<Waiter> = Vec::new();
    while let Ok(first) = queue.recv() {
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Cmd::Append { frame, done } => {
                    buf.extend_from_slice(&frame);
                    waiters.push(done);
                    if buf.len() >= GATHER_BYTES {
                        write_out(&mut seg, &mut buf, &mut waiters);
                    }
                }
                Cmd::Rotate { done } => {
                    write_out(&mut seg, &mut buf, &mut waiters);
                    let rotated = create_segment(&dir, seg.number + 1)
                        .map(|new| std::mem::replace(&mut seg, new).number)
                        .map_err(|e| e.to_string());
                    current.store(seg.number, Ordering::Release);
                    let _ = done.send(rotated);
                }
            }
            next = queue.try_recv().ok();
        }
        write_out(&mut seg, &mut buf, &mut waiters);
    }
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
    Ok(Segment { number, file })
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
                batch.insert(k, v);
            }
            tree.apply_batch(batch)
                .map_err(|e| storage("cannot re-apply an entry", e))?;
            done.entries += 1;
        }
    }
    db.flush()
        .map_err(|e| storage("cannot flush the replayed entries", e))?;
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
    pub fn open(data_dir: &Path) -> Result<Wal, ErrorKind> {
        let dir = data_dir.join(DIR);
        fs::create_dir_all(&dir).map_err(|e| storage(&format!("{}", dir.display()), e))?;
        let next = segments(&dir)
            .map_err(|e| storage("cannot list segments", e))?
            .last()
            .map_or(0, |n| n + 1);
        let seg = create_segment(&dir, next).map_err(|e| storage("cannot create a segment", e))?;
        let current = Arc::new(AtomicU64::new(seg.number));
        let (tx, rx) = mpsc::channel();
        let writer = {
            let (dir, current) = (dir.clone(), current.clone());
            std::thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || write_loop(dir, seg, rx, current))
                .map_err(|e| storage("cannot start the writer thread", e))?
        };
        Ok(Wal {
            dir,
            queue: Some(tx),
            current,
            writer: Mutex::new(Some(writer)),
        })
    }

    fn send(&self, cmd: Cmd) -> Result<(), ErrorKind> {
        self.queue
            .as_ref()
            .and_then(|q| q.send(cmd).ok())
            .ok_or_else(|| storage("cannot write", "the writer thread stopped"))
    }

    /// Hands one entry to the writer (which writes it to the OS, no fsync). Call after sled
    /// applied the same inserts, under the shard's lock; acknowledge once the write is done.
    pub fn append(&self, shard: &ShardId, ops: &[Op<'_>]) -> Result<WalWrite, ErrorKind> {
        self.push(encode(shard, ops))
    }

    /// Completes once every entry handed over before it is written (for a retried produce whose
    /// original may still be on its way).
    pub fn barrier(&self) -> Result<WalWrite, ErrorKind> {
        self.push(Vec::new())
    }

    fn push(&self, frame: Vec<u8>) -> Result<WalWrite, ErrorKind> {
        let (done, rx) = oneshot::channel();
        self.send(Cmd::Append { frame, done })?;
        Ok(WalWrite(rx))
    }

    /// Closes the current segment (after writing everything handed over before) and starts the
    /// next; returns the closed one's number. A flush that starts after this covers every write
    /// in it and before it. Blocks: call off the async threads.
    pub fn rotate(&self) -> Result<u64, ErrorKind> {
        let (done, rx) = mpsc::channel();
        self.send(Cmd::Rotate { done })?;
        rx.recv()
            .map_err(|_| storage("cannot rotate", "the writer thread stopped"))?
            .map_err(|e| storage("cannot create a segment", e))
    }

    /// Deletes the closed segments up to `upto` (their writes are flushed). Blocking file work.
    pub fn release(&self, upto: u64) {
        let current = self.current.load(Ordering::Acquire);
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

impl Drop for Wal {
    /// Lets the writer finish what was handed over, then joins it.
    fn drop(&mut self) {
        self.queue = None;
        let writer = self.writer.lock().map(|mut w| w.take()).unwrap_or(None);
        if let Some(w) = writer {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        let shard = ShardId::new("w", 1);
        wal.append(&shard, &[(b"k1", b"v1"), (b"k2", b"")])
            .unwrap()
            .wait()
            .unwrap();
        wal.append(&shard, &[(b"k3", &[7u8; 1000][..])])
            .unwrap()
            .wait()
            .unwrap();
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
            let wal = Wal::open(dir.path()).unwrap();
            // Not waited for: dropping the file lets the writer finish what was handed over.
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
        let wal = Wal::open(dir.path()).unwrap();
        wal.append(&held, &[(b"c", b"5")]).unwrap().wait().unwrap();
        let closed = wal.rotate().unwrap();
        wal.release(closed);
        assert_eq!(segments(&dir.path().join(DIR)).unwrap(), vec![closed + 1]);
    }
}
