//! A shard's record payloads, in segment files of its own (sled keeps each entry's header and a
//! [`Ptr`] to its payload here).
//!
//! Why: sled 0.34 writes any page above a quarter of its 512 KiB segments (a leaf of 64 KiB
//! log entries) to a blob file and does not reliably delete the blob once the page is replaced
//! or freed (sled #786), so the space retention deletes never fully comes back. Here it does:
//! a segment whose entries are all below the log start is deleted, and in the segment that
//! holds the first entry kept the space before it is given back with a punched hole
//! (`fallocate(PUNCH_HOLE)`), so what a shard takes on disk follows what it keeps to a block.
//!
//! Files: `DIR/<base offset, 20 digits>.seg`, the base offset being that of the first entry
//! written to the file. A frame is `len: u32 LE | xxh3(payload): u64 LE | payload`; a pointer
//! names the segment, the frame's position and the payload's length, and a read checks both.
//!
//! Writes are `pwrite`s (in the operating system's cache at once, so they survive a crash of
//! the process). The files written since the last flush wait in the broker's [`PendingSyncs`],
//! which every flush syncs before it flushes sled (whose entries point into them). Frames past
//! the last pointer sled holds (a write whose sled batch failed or was lost in a crash) are cut
//! off when the shard opens ([`Segments::cut`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use shardq_protocol::Offset;
use xxhash_rust::xxh3::xxh3_64;

const SUFFIX: &str = ".seg";
const HEADER: u64 = 12;
/// Hole punching works in file-system blocks; less than this is not worth a call.
const BLOCK: u64 = 4096;

/// Where one entry's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ptr {
    /// The segment's base offset (its name).
    pub segment: Offset,
    /// The frame's position in the segment.
    pub pos: u64,
    /// The payload's length.
    pub len: u32,
}

impl Ptr {
    /// Where the frame ends in its segment.
    pub fn frame_end(&self) -> u64 {
        self.pos + HEADER + u64::from(self.len)
    }
}

/// An open segment file, and which of its bytes may not be on disk yet.
struct SegFile {
    file: File,
    unsynced: Mutex<Unsynced>,
}

/// The first entry (by offset) whose bytes in a segment may not be on disk yet.
#[derive(Default)]
struct Unsynced {
    /// Written since the last sync of the file began (the file then waits in the list).
    pending: Option<Offset>,
    /// Written before the sync in progress began.
    syncing: Option<Offset>,
}

fn min_some(a: Option<Offset>, b: Option<Offset>) -> Option<Offset> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl SegFile {
    fn unsynced(&self) -> std::sync::MutexGuard<'_, Unsynced> {
        self.unsynced.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The first entry whose bytes here may not be on disk (None: all are).
    fn unsynced_from(&self) -> Option<Offset> {
        let u = self.unsynced();
        min_some(u.pending, u.syncing)
    }
}

impl std::ops::Deref for SegFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

fn seg_file(file: File) -> Arc<SegFile> {
    Arc::new(SegFile {
        file,
        unsynced: Mutex::default(),
    })
}

struct Segment {
    file: Arc<SegFile>,
    /// Bytes written (the file's length).
    len: u64,
    /// Bytes at the front already given back (punched).
    punched: u64,
}

/// A shard's segment files.
pub struct Segments {
    dir: PathBuf,
    /// A segment this long takes no more entries: the next one starts a new file.
    roll_bytes: u64,
    segments: BTreeMap<Offset, Segment>,
    /// Where writes wait for the next flush.
    pending: Arc<PendingSyncs>,
    /// The next append starts a new segment: a truncation cut the last one, and bytes at
    /// positions a reader may still know are never written again.
    roll_next: bool,
    /// The open files, for readers outside the shard's lock (rebuilt when the set changes).
    reader: Reader,
}

/// The segment files, and directories, written since the last flush, across a broker's shards.
#[derive(Default)]
pub struct PendingSyncs {
    files: Mutex<Vec<Arc<SegFile>>>,
    dirs: Mutex<BTreeSet<PathBuf>>,
}

impl PendingSyncs {
    /// Notes a write to `file` of (or from) the entry at `offset` (a file already waiting
    /// costs nothing more).
    fn add(&self, file: &Arc<SegFile>, offset: Offset) {
        let mut u = file.unsynced();
        let listed = u.pending.is_some();
        u.pending = min_some(u.pending, Some(offset));
        if !listed {
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.push(file.clone());
        }
    }

    /// A deleted segment needs no sync (and its space comes back only once no one holds it).
    fn forget(&self, file: &Arc<SegFile>) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|f| !Arc::ptr_eq(f, file));
    }

    fn add_dir(&self, dir: &Path) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        dirs.insert(dir.to_path_buf());
    }

    /// Makes every write noted so far durable (the files' data, then the directories whose
    /// entries changed). Blocking. What fails stays pending.
    pub fn sync(&self) -> io::Result<()> {
        let files = std::mem::take(&mut *self.files.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, f) in files.iter().enumerate() {
            // What was written so far is what this sync covers; a write from now on notes the
            // file again.
            {
                let mut u = f.unsynced();
                let pending = u.pending.take();
                u.syncing = min_some(u.syncing, pending);
            }
            let synced = f.sync_data();
            let mut u = f.unsynced();
            let syncing = u.syncing.take();
            if let Err(e) = synced {
                let listed = u.pending.is_some();
                u.pending = min_some(u.pending, syncing);
                drop(u);
                let mut list = self.files.lock().unwrap_or_else(|p| p.into_inner());
                if !listed {
                    list.push(f.clone());
                }
                list.extend(files[i + 1..].iter().cloned());
                return Err(e);
            }
        }
        let dirs = std::mem::take(&mut *self.dirs.lock().unwrap_or_else(|p| p.into_inner()));
        for (i, d) in dirs.iter().enumerate() {
            let synced = match File::open(d) {
                Ok(f) => f.sync_all(),
                // A dropped shard's directory: nothing left to make durable.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                for d in dirs.iter().skip(i) {
                    self.add_dir(d);
                }
                return Err(e);
            }
        }
        Ok(())
    }
}

/// The segments' files as they were when taken: a read may run while the shard appends, and a
/// deleted segment's file stays readable through it.
#[derive(Clone, Default)]
pub struct Reader {
    files: Arc<BTreeMap<Offset, Arc<SegFile>>>,
}

fn segment_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{base:020}{SUFFIX}"))
}

fn corrupt(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Segments {
    /// Opens (creating it if needed) the segment directory `dir`. Other files in it are left
    /// alone.
    pub fn open(dir: &Path, roll_bytes: u64, pending: Arc<PendingSyncs>) -> io::Result<Segments> {
        if !dir.exists() {
            // Once more if the topic's directory went meanwhile (its last other shard here was
            // dropped just then).
            fs::create_dir_all(dir).or_else(|_| fs::create_dir_all(dir))?;
            if let Some(parent) = dir.parent() {
                pending.add_dir(parent);
            }
        }
        let mut segments = BTreeMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(base) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<Offset>().ok())
            else {
                continue;
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())?;
            let len = file.metadata()?.len();
            segments.insert(
                base,
                Segment {
                    file: seg_file(file),
                    len,
                    punched: 0,
                },
            );
        }
        let mut s = Segments {
            dir: dir.to_path_buf(),
            roll_bytes: roll_bytes.max(HEADER + 1),
            segments,
            pending,
            roll_next: false,
            reader: Reader::default(),
        };
        s.refresh_reader();
        Ok(s)
    }

    fn refresh_reader(&mut self) {
        self.reader = Reader {
            files: Arc::new(
                self.segments
                    .iter()
                    .map(|(b, s)| (*b, s.file.clone()))
                    .collect(),
            ),
        };
    }

    /// A reader of the segments as they are now.
    pub fn reader(&self) -> Reader {
        self.reader.clone()
    }

    /// Appends the payload of the entry at `offset` (above every offset written before).
    /// Nothing is left behind on failure.
    pub fn append(&mut self, offset: Offset, payload: &[u8]) -> io::Result<Ptr> {
        let len = u32::try_from(payload.len())
            .map_err(|_| corrupt(format!("a payload of {} bytes", payload.len())))?;
        let roll = match self.segments.last_key_value() {
            None => true,
            Some((base, s)) => {
                if offset < *base {
                    return Err(corrupt(format!(
                        "an entry at offset {offset} below segment {base}"
                    )));
                }
                s.len >= self.roll_bytes || self.roll_next
            }
        };
        if roll {
            self.roll_next = false;
            let path = segment_path(&self.dir, offset);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)?;
            self.segments.insert(
                offset,
                Segment {
                    file: seg_file(file),
                    len: 0,
                    punched: 0,
                },
            );
            self.pending.add_dir(&self.dir);
            self.refresh_reader();
        }
        let (&base, seg) = self
            .segments
            .iter_mut()
            .next_back()
            .expect("a segment was just made");
        let pos = seg.len;
        let mut frame = Vec::with_capacity(HEADER as usize + payload.len());
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(&xxh3_64(payload).to_le_bytes());
        frame.extend_from_slice(payload);
        if let Err(e) = seg.file.write_all_at(&frame, pos) {
            // A partial frame would be cut on the next open anyway; cut it now so the next
            // append writes where the pointer says.
            let _ = seg.file.set_len(pos);
            return Err(e);
        }
        seg.len = pos + frame.len() as u64;
        self.pending.add(&seg.file, offset);
        Ok(Ptr {
            segment: base,
            pos,
            len,
        })
    }

    /// Removes the frames from `first_removed` on (its own and every later one): where a
    /// truncation of the log cut it. `None` (the first entry removed keeps its payload in sled)
    /// removes every segment based at `cut` or above.
    pub fn truncate(&mut self, cut: Offset, first_removed: Option<Ptr>) -> io::Result<()> {
        self.delete_range(first_removed.map_or(cut, |p| p.segment + 1)..)?;
        if let Some(p) = first_removed {
            if p.pos == 0 {
                self.delete(p.segment)?;
            } else if let Some(seg) = self.segments.get_mut(&p.segment) {
                if seg.len > p.pos {
                    seg.file.set_len(p.pos)?;
                    seg.len = p.pos;
                    self.pending.add(&seg.file, cut);
                    self.roll_next = true;
                }
            }
        }
        self.refresh_reader();
        Ok(())
    }

    /// Cuts off what follows the frame of `last` (the last entry sled points at; `None`: no
    /// entry points here, so nothing is kept): frames whose sled batch never made it.
    pub fn cut(&mut self, last: Option<Ptr>) -> io::Result<()> {
        match last {
            Some(p) => {
                self.delete_range(p.segment + 1..)?;
                if let Some(seg) = self.segments.get_mut(&p.segment) {
                    if seg.len > p.frame_end() {
                        seg.file.set_len(p.frame_end())?;
                        seg.len = p.frame_end();
                        self.pending.add(&seg.file, Offset::MAX);
                    }
                }
            }
            None => {
                self.delete_range(..)?;
            }
        }
        self.refresh_reader();
        Ok(())
    }

    /// Gives back the space of every frame before `first_kept` (the first entry still in the
    /// log; `None`: the log holds no entry with a payload here, so every segment goes).
    /// Returns the bytes given back.
    pub fn trim(&mut self, first_kept: Option<Ptr>) -> io::Result<u64> {
        let mut freed = self.delete_range(..first_kept.map_or(Offset::MAX, |p| p.segment))?;
        if let Some(p) = first_kept {
            if let Some(seg) = self.segments.get_mut(&p.segment) {
                let upto = p.pos / BLOCK * BLOCK;
                if upto > seg.punched {
                    punch_hole(&seg.file, seg.punched, upto - seg.punched)?;
                    freed += upto - seg.punched;
                    seg.punched = upto;
                }
            }
        }
        self.refresh_reader();
        Ok(freed)
    }

    /// Deletes the segments based in `bases`; returns the bytes they held on disk.
    fn delete_range(&mut self, bases: impl std::ops::RangeBounds<Offset>) -> io::Result<u64> {
        let gone: Vec<(Offset, u64)> = self
            .segments
            .range(bases)
            .map(|(b, s)| (*b, s.len - s.punched))
            .collect();
        let mut freed = 0;
        for (base, held) in gone {
            self.delete(base)?;
            freed += held;
        }
        Ok(freed)
    }

    fn delete(&mut self, base: Offset) -> io::Result<()> {
        if let Some(seg) = self.segments.remove(&base) {
            self.pending.forget(&seg.file);
            match fs::remove_file(segment_path(&self.dir, base)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            self.pending.add_dir(&self.dir);
        }
        Ok(())
    }

    /// The bytes the segments take on disk (allocated blocks: punched holes take none).
    #[cfg(test)]
    pub fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        self.segments
            .values()
            .filter_map(|s| s.file.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    /// The first entry whose bytes may not be on disk yet (None: all are): what a power loss
    /// may take.
    pub fn unsynced_from(&self) -> Option<Offset> {
        self.segments
            .values()
            .fold(None, |m, s| min_some(m, s.file.unsynced_from()))
    }

    /// Deletes every segment and the directory (a dropped shard).
    pub fn remove(mut self) -> io::Result<()> {
        self.delete_range(..)?;
        match fs::remove_dir(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => {
                // The topic's directory goes with its last shard here (an error says another
                // shard still has files in it).
                if let Some(topic) = self.dir.parent() {
                    let _ = fs::remove_dir(topic);
                }
                Ok(())
            }
        }
    }
}

/// What [`Reader::check`] found where a pointer points.
#[derive(Debug)]
pub enum Found {
    Intact,
    /// Not there: the file or the frame's end is missing, or it reads as zeros where bytes
    /// were (what a power loss leaves of writes not synced yet, and what a trim gave back).
    Lost,
    /// Something else: an I/O error, or bytes that are not the frame's.
    Damaged(io::Error),
}

impl Reader {
    /// Whether the frame `ptr` points at is there and intact.
    pub fn check(&self, ptr: &Ptr) -> Found {
        let Some(file) = self.files.get(&ptr.segment) else {
            return Found::Lost;
        };
        let mut frame = vec![0u8; HEADER as usize + ptr.len as usize];
        match file.read_exact_at(&mut frame, ptr.pos) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Found::Lost,
            Err(e) => return Found::Damaged(e),
        }
        if frame_ok(&frame, ptr) {
            return Found::Intact;
        }
        // A page the disk never got reads as zeros: the frame's header, or a whole page of it
        // (pages are counted from the file's start).
        let zero = |b: &[u8]| b.iter().all(|x| *x == 0);
        let first_page = ptr.pos.div_ceil(BLOCK) * BLOCK;
        let mut page = first_page;
        let mut zero_page = false;
        while page + BLOCK <= ptr.frame_end() {
            let at = (page - ptr.pos) as usize;
            zero_page |= zero(&frame[at..at + BLOCK as usize]);
            page += BLOCK;
        }
        if zero(&frame[..HEADER as usize]) || zero_page || zero(&frame) {
            Found::Lost
        } else {
            Found::Damaged(corrupt(format!(
                "the frame at {} of segment {} does not match its pointer or checksum",
                ptr.pos, ptr.segment
            )))
        }
    }

    /// The payload `ptr` points at, checked against its frame header and checksum.
    pub fn read(&self, ptr: &Ptr) -> io::Result<Bytes> {
        let file = self.files.get(&ptr.segment).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("segment {} is gone", ptr.segment),
            )
        })?;
        let mut frame = vec![0u8; HEADER as usize + ptr.len as usize];
        file.read_exact_at(&mut frame, ptr.pos)?;
        if !frame_ok(&frame, ptr) {
            return Err(corrupt(format!(
                "the frame at {} of segment {} does not match its pointer or checksum",
                ptr.pos, ptr.segment
            )));
        }
        Ok(Bytes::from(frame).slice(HEADER as usize..))
    }
}

/// Whether `frame` (header and payload, as read where `ptr` points) is the frame `ptr` names.
fn frame_ok(frame: &[u8], ptr: &Ptr) -> bool {
    let len = u32::from_le_bytes(frame[0..4].try_into().expect("4 bytes"));
    let sum = u64::from_le_bytes(frame[4..12].try_into().expect("8 bytes"));
    len == ptr.len && xxh3_64(&frame[HEADER as usize..]) == sum
}

/// Frees `len` bytes from `at` in `file` without changing its size. A file system that cannot
/// punch holes keeps the space until the whole segment goes.
fn punch_hole(file: &File, at: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(at), Ok(len)) = (libc::off_t::try_from(at), libc::off_t::try_from(len)) else {
        return Ok(());
    };
    // SAFETY: fallocate on a descriptor this process owns; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            at,
            len,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Arc<PendingSyncs> {
        Arc::new(PendingSyncs::default())
    }

    fn payload(i: u64, len: usize) -> Vec<u8> {
        (0..len).map(|k| (i as usize * 31 + k) as u8).collect()
    }

    #[test]
    fn appends_read_back_roll_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 10_000, pending()).unwrap();
        let ptrs: Vec<Ptr> = (0..20u64)
            .map(|i| s.append(i * 10, &payload(i, 3000)).unwrap())
            .collect();
        // 3012-byte frames, a new segment once one holds 10 000 bytes: 4 per segment.
        let bases: BTreeSet<Offset> = ptrs.iter().map(|p| p.segment).collect();
        assert_eq!(bases, [0, 40, 80, 120, 160].into());
        let r = s.reader();
        for (i, p) in ptrs.iter().enumerate() {
            assert_eq!(r.read(p).unwrap(), payload(i as u64, 3000));
        }
        s.pending.sync().unwrap();
        drop(s);
        let s = Segments::open(dir.path(), 10_000, pending()).unwrap();
        assert_eq!(s.reader().read(&ptrs[13]).unwrap(), payload(13, 3000));
    }

    #[test]
    fn a_wrong_pointer_or_a_damaged_frame_is_an_error_not_wrong_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 1 << 20, pending()).unwrap();
        let p = s.append(0, b"hello").unwrap();
        let r = s.reader();
        assert!(r.read(&Ptr { len: 4, ..p }).is_err());
        assert!(r.read(&Ptr { pos: 1, ..p }).is_err());
        assert!(r.read(&Ptr { segment: 9, ..p }).is_err());
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 0))
            .unwrap();
        file.write_all_at(b"J", HEADER).unwrap();
        assert!(r.read(&p).is_err());
    }

    #[test]
    fn truncation_cuts_the_frames_from_the_first_removed_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 2_000, pending()).unwrap();
        let ptrs: Vec<Ptr> = (0..10u64)
            .map(|i| s.append(i, &payload(i, 900)).unwrap())
            .collect();
        let old = s.reader();
        s.truncate(5, Some(ptrs[5])).unwrap();
        let r = s.reader();
        assert_eq!(r.read(&ptrs[4]).unwrap(), payload(4, 900));
        assert!(r.read(&ptrs[5]).is_err());
        // Appends go on in a new segment: the cut positions are never written again, so a
        // reader that still knows the old pointers finds nothing there rather than new bytes.
        let p = s.append(5, b"again").unwrap();
        assert_eq!((p.segment, p.pos), (5, 0));
        assert_eq!(s.reader().read(&p).unwrap(), &b"again"[..]);
        assert!(old.read(&ptrs[5]).is_err());
        assert!(matches!(s.reader().check(&ptrs[5]), Found::Lost));
        // Everything from offset 0 on, with no pointer (say the entry there kept its payload in
        // sled): every segment goes.
        s.truncate(0, None).unwrap();
        assert!(s.segments.is_empty());
        assert_eq!(s.append(0, b"x").unwrap().segment, 0);
    }

    #[test]
    fn trimming_deletes_whole_segments_and_punches_the_rest_up_to_the_first_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 64 * 1024, pending()).unwrap();
        let ptrs: Vec<Ptr> = (0..64u64)
            .map(|i| s.append(i, &payload(i, 8_000)).unwrap())
            .collect();
        s.pending.sync().unwrap();
        let before = s.disk_bytes();
        assert!(before >= 64 * 8_000, "{before}");
        let freed = s.trim(Some(ptrs[40])).unwrap();
        assert!(freed >= 39 * 8_000, "{freed}");
        let after = s.disk_bytes();
        // What is left: entries 40..64 and less than a block before the first of them (when
        // the file system punches holes; tmpfs and ext4 do).
        assert!(
            after <= 24 * 8_012 + 2 * BLOCK + 64 * 1024,
            "{after} bytes on disk after the trim"
        );
        let r = s.reader();
        assert!(r.read(&ptrs[10]).is_err());
        for (i, p) in ptrs.iter().enumerate().skip(40) {
            assert_eq!(r.read(p).unwrap(), payload(i as u64, 8_000));
        }
        // Nothing kept: every segment goes.
        s.trim(None).unwrap();
        assert_eq!(s.disk_bytes(), 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn frames_past_the_last_pointer_are_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 1_000, pending()).unwrap();
        let ptrs: Vec<Ptr> = (0..6u64)
            .map(|i| s.append(i, &payload(i, 300)).unwrap())
            .collect();
        assert_eq!((ptrs[2].segment, ptrs[4].segment), (0, 4));
        drop(s);
        // sled holds pointers up to entry 2 (the later batches never made it).
        let mut s = Segments::open(dir.path(), 1_000, pending()).unwrap();
        s.cut(Some(ptrs[2])).unwrap();
        assert!(s.reader().read(&ptrs[3]).is_err());
        let p = s.append(3, b"next").unwrap();
        assert_eq!(p.pos, ptrs[2].frame_end());
        s.cut(None).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_unsynced_mark_follows_writes_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let pending = pending();
        let mut s = Segments::open(dir.path(), 1_000, pending.clone()).unwrap();
        assert_eq!(s.unsynced_from(), None);
        let ptrs: Vec<Ptr> = (0..4u64)
            .map(|i| s.append(i, &payload(i, 300)).unwrap())
            .collect();
        assert_eq!(s.unsynced_from(), Some(0));
        pending.sync().unwrap();
        assert_eq!(s.unsynced_from(), None);
        s.append(4, &payload(4, 300)).unwrap();
        assert_eq!(s.unsynced_from(), Some(4));
        pending.sync().unwrap();
        // A truncation: what follows the cut is not synced until the next sync.
        s.truncate(2, Some(ptrs[2])).unwrap();
        assert_eq!(s.unsynced_from(), Some(2));
        s.append(2, b"again").unwrap();
        assert_eq!(s.unsynced_from(), Some(2));
        pending.sync().unwrap();
        assert_eq!(s.unsynced_from(), None);
    }

    #[test]
    fn a_reader_taken_before_a_trim_still_reads_the_deleted_segment() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 100, pending()).unwrap();
        let a = s.append(0, &payload(0, 200)).unwrap();
        let b = s.append(1, &payload(1, 200)).unwrap();
        let r = s.reader();
        s.trim(Some(b)).unwrap();
        assert_eq!(r.read(&a).unwrap(), payload(0, 200));
        assert!(s.reader().read(&a).is_err());
    }
}
