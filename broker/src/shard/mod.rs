//! One shard's log: its index in its own sled tree, with its producer (idempotence) state and
//! group offsets, and the batches' bytes in its segment files.
//!
//! The tree's keys and the encoding of its entries are in [`entry`]; the segment files in
//! [`segments`] (a batch's bytes are written there first, then its index entry to sled, and a
//! failed sled write takes the bytes back).
//!
//! Offsets are dense from 0: the next offset lives in memory and is recovered on open from the last
//! log key plus its count. All mutation happens under the shard's `std::sync::Mutex`, which is
//! never held across an `.await`.
//!
//! Besides the next offset the shard tracks its *durable end*: every offset below it is known to be
//! on disk. Reads that must not hand out what a crash could take back (fetch under `fsync always`,
//! and every export to a move's destination) stop there: otherwise a record read before its flush
//! and lost in a crash would leave its offset to be reused by a different, acknowledged record,
//! which a consumer (or a copy) that had read the lost one would then skip or hold twice.
//!
//! The tree handle lives under the same lock (a dropped shard lets go of it at once, so requests
//! still holding the `Arc<Shard>` do not keep the database instance open).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use shardq_protocol::codec::{decode, encode};
use shardq_protocol::{
    BrokerId, Epoch, ErrorKind, LeaderEpoch, Offset, ProducerSeq, ProducerState, RecordBatch,
    ReplicaRole, ReplicaSet, ShardId, ShardMeta, ShardReport, ShardState, StoredBatch,
};
use tokio::sync::{watch, Notify};

use crate::replica::EpochCache;
use crate::storage::Health;
use crate::wal::Wal;

mod entry;
mod replicated;
mod segments;
mod trim;

pub use entry::stored_size;
pub use replicated::Following;

use entry::{
    be_u64, decode_entry, encode_entry_at, epoch_key, group_key, inline_size, log_key,
    producer_key, storage, EPOCH, GROUP, LOG, PRODUCER, STATS_BYTES, STATS_HW, STATS_START,
    STATS_SYNCED,
};
pub use segments::PendingSyncs;
use segments::{Found, Ptr, Reader, Segments};

/// Stored log entries are kept at or below this size: sled writes a separate file per value above
/// about 128 KiB, and smaller values keep fetch granularity fine.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;

/// A segment file takes entries until it holds this much; the space retention frees comes
/// back at once anyway (whole files, and a punched hole in the first one kept).
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Name of the sled tree holding `shard`.
pub fn tree_name(shard: &ShardId) -> String {
    format!("shard/{shard}")
}

/// The directory of `shard`'s segment files under the broker's segment root.
pub fn segments_dir(root: &std::path::Path, shard: &ShardId) -> std::path::PathBuf {
    root.join(&shard.topic)
        .join(format!("P{}", shard.partition))
}

/// A shard's state as found in its tree.
struct Loaded {
    start: Offset,
    next_offset: Offset,
    bytes: u64,
    producers: HashMap<u64, ProducerState>,
    groups: BTreeMap<String, Offset>,
    epochs: EpochCache,
    hw: Offset,
    /// Where the last entry's payload is (None: no entry, or an inline one).
    last_ptr: Option<Ptr>,
    /// Every entry's bytes below this were on disk (see [`Shard::synced_mark`]).
    synced: Offset,
}

impl Loaded {
    fn read(db: &sled::Db, id: &ShardId) -> Result<(sled::Tree, Loaded), ErrorKind> {
        let tree = db
            .open_tree(tree_name(id))
            .map_err(|e| storage(id, "cannot open tree", e))?;
        let stat = |key: &[u8]| -> Result<Option<u64>, ErrorKind> {
            Ok(tree
                .get(key)
                .map_err(|e| storage(id, "cannot read stats", e))?
                .and_then(|v| be_u64(&v)))
        };
        // Retention may have deleted every entry: the log then ends where it starts.
        let start = stat(STATS_START)?.unwrap_or(0);
        let last = match tree
            .range(log_key(0)..=log_key(u64::MAX))
            .next_back()
            .transpose()
            .map_err(|e| storage(id, "cannot read the log end", e))?
        {
            Some((k, v)) => Some(decode_entry(id, &k, v)?),
            None => None,
        };
        let next_offset = last.as_ref().map_or(start, |e| e.end_offset().max(start));
        let mut producers = HashMap::new();
        for kv in tree.scan_prefix([PRODUCER]) {
            let (_, v) = kv.map_err(|e| storage(id, "cannot read producer state", e))?;
            let st: ProducerState =
                decode(&v).map_err(|e| storage(id, "corrupt producer state", e))?;
            producers.insert(st.producer_id, st);
        }
        let mut groups = BTreeMap::new();
        for kv in tree.scan_prefix([GROUP]) {
            let (k, v) = kv.map_err(|e| storage(id, "cannot read group offsets", e))?;
            let group = String::from_utf8_lossy(&k[1..]).into_owned();
            let off = be_u64(&v).ok_or_else(|| storage(id, "corrupt group offset", &group))?;
            groups.insert(group, off);
        }
        let bytes = stat(STATS_BYTES)?.unwrap_or(0);
        let mut epochs = Vec::new();
        for kv in tree.scan_prefix([EPOCH]) {
            let (k, v) = kv.map_err(|e| storage(id, "cannot read leader epochs", e))?;
            let epoch = be_u64(&k[1..]).ok_or_else(|| storage(id, "corrupt epoch key", ""))?;
            let start = be_u64(&v).ok_or_else(|| storage(id, "corrupt epoch start", epoch))?;
            epochs.push((epoch, start));
        }
        // Entries written before replication carry epoch 0 and no epoch record.
        let hw = stat(STATS_HW)?.unwrap_or(0).min(next_offset);
        let loaded = Loaded {
            start,
            next_offset,
            bytes,
            producers,
            groups,
            epochs: EpochCache::from_entries(epochs),
            hw,
            last_ptr: last.and_then(|e| e.ptr()),
            synced: stat(STATS_SYNCED)?.unwrap_or(0),
        };
        Ok((tree, loaded))
    }
}

/// What every shard of a broker shares.
#[derive(Clone)]
pub struct ShardEnv {
    /// Under `fsync interval`, every acknowledged write is also written here.
    pub wal: Option<Arc<Wal>>,
    pub health: Arc<Health>,
    /// Readers wait for the flush (`fsync always`): a replica's end counts once durable.
    pub counts_durable: bool,
    /// This broker's id.
    pub me: BrokerId,
    /// A shard this broker led when it stopped leads again at once (a standalone broker); with
    /// a router it waits for the router's word, which gives it a new leader epoch: a restarted
    /// process may have lost records its followers hold, under the same epoch otherwise.
    pub resume_leadership: bool,
    /// Where the shards keep their payload segment files (`DATA/segments`).
    pub segments_root: std::path::PathBuf,
    /// The segment files written since the last flush, which syncs them first.
    pub pending: Arc<PendingSyncs>,
}

/// Whether and how this broker holds the shard; persisted in the `shards` tree so a restarted
/// broker serves at once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ownership {
    pub shard: ShardId,
    pub state: ShardState,
    /// Routing epoch of the latest assignment (or unassignment) this broker applied.
    pub epoch: Epoch,
    /// Assigned to this broker by the router (or a standalone `AssignShards`). A held but
    /// unassigned shard keeps its data and answers `NotOwner` until dropped.
    pub owned: bool,
    /// The controller's latest replica set for the shard (None: never told, e.g. a shard
    /// being imported, or one held by a broker from before replication).
    pub replication: Option<ReplicaSet>,
}

/// The ownership record as brokers before replication wrote it.
#[derive(Deserialize)]
struct OwnershipV1 {
    shard: ShardId,
    state: ShardState,
    epoch: Epoch,
    owned: bool,
}

impl Ownership {
    pub fn encode(&self) -> Result<Vec<u8>, ErrorKind> {
        encode(self).map_err(|e| storage(&self.shard, "cannot encode ownership", e))
    }

    pub fn decode(bytes: &[u8]) -> Result<Ownership, String> {
        decode(bytes).or_else(|e| {
            let old: OwnershipV1 = decode(bytes).map_err(|_| e)?;
            Ok(Ownership {
                shard: old.shard,
                state: old.state,
                epoch: old.epoch,
                owned: old.owned,
                replication: None,
            })
        })
    }
}

/// What a produce call achieved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub count: u32,
    pub duplicate: bool,
    /// The durability ticket of the write (see [`crate::durability`]).
    pub ticket: u64,
}

struct Inner {
    /// None once the shard was dropped here.
    tree: Option<sled::Tree>,
    /// The entries' payloads (None once the shard was dropped here).
    segments: Option<Segments>,
    own: Ownership,
    /// The first offset still stored (retention and purges delete what is below).
    start: Offset,
    next_offset: Offset,
    /// Every offset below this is on disk (`<= next_offset`).
    durable: Offset,
    /// Every offset below this was on disk when this process began serving the shard (opened it,
    /// or activated its import): what a crash since an earlier incarnation cannot have taken back.
    stable_end: Offset,
    bytes: u64,
    producers: HashMap<u64, ProducerState>,
    groups: BTreeMap<String, Offset>,
    /// Set once the tree is deleted; the `Arc<Shard>` may outlive it in in-flight requests.
    dropped: bool,
    /// Leader epoch -> first offset written under it (persisted under `EPOCH` keys).
    epochs: EpochCache,
    /// This replica's part in the shard's replication and the high watermark.
    repl: replicated::Repl,
}

/// One shard held by this broker.
pub struct Shard {
    id: ShardId,
    /// This replica's own end, for the high watermark, is its durable end (`fsync always`).
    counts_durable: bool,
    /// The high watermark, for long polls of readers and acknowledgements.
    hw: watch::Sender<Offset>,
    /// Under `fsync interval`, every acknowledged write is also written here (see [`crate::wal`]).
    wal: Option<Arc<Wal>>,
    health: Arc<Health>,
    inner: Mutex<Inner>,
    /// The shard's next offset, for long polls.
    end: watch::Sender<Offset>,
    /// The shard's durable end, for long polls that may only see flushed records.
    durable: watch::Sender<Offset>,
    /// Signalled when ownership or state changes, so long polls answer (e.g. `NotOwner`) at once.
    changed: Notify,
}

/// How far a read may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The log end (replication to followers).
    End,
    /// The durable end (a move's destination).
    Durable,
    /// The high watermark (consumers).
    Committed,
}

/// Why a request may not touch the shard now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Produce and commit: owned and Active.
    Write,
    /// Fetch and offsets: owned and Active or Fenced (reads continue during a hand-over).
    Read,
    /// Transfer calls: held in any state.
    Held,
}

impl Shard {
    /// Opens (or creates) the shard's tree and recovers its next offset, producer state and groups.
    pub fn open(db: &sled::Db, own: Ownership, env: &ShardEnv) -> Result<Shard, ErrorKind> {
        let ShardEnv {
            wal,
            health,
            counts_durable,
            me,
            resume_leadership,
            segments_root,
            pending,
        } = env.clone();
        let id = own.shard.clone();
        let (tree, loaded) = Loaded::read(db, &id)?;
        let segments = (|| {
            let mut s = Segments::open(&segments_dir(&segments_root, &id), SEGMENT_BYTES, pending)?;
            // Frames past the last entry's were written for batches sled never got.
            s.cut(loaded.last_ptr)?;
            Ok::<_, std::io::Error>(s)
        })()
        .map_err(|e| storage(&id, "cannot open the segment files", e))?;
        let set = own.replication.clone();
        let shard = Shard {
            id,
            counts_durable,
            hw: watch::Sender::new(loaded.hw),
            wal,
            health,
            end: watch::Sender::new(loaded.next_offset),
            // What a fresh open finds was on disk.
            durable: watch::Sender::new(loaded.next_offset),
            changed: Notify::new(),
            inner: Mutex::new(Inner {
                tree: Some(tree),
                segments: Some(segments),
                own,
                start: loaded.start,
                next_offset: loaded.next_offset,
                durable: loaded.next_offset,
                stable_end: loaded.next_offset,
                bytes: loaded.bytes,
                producers: loaded.producers,
                groups: loaded.groups,
                dropped: false,
                epochs: loaded.epochs,
                repl: replicated::Repl::new(loaded.hw),
            }),
        };
        if let Err(e) = shard.drop_lost_payloads(loaded.synced) {
            // Reads of what is lost fail; the broker and its other shards go on.
            tracing::error!(shard = %shard.id, "cannot check the log's stored bytes: {e}");
        }
        // The role this replica had when it stopped; the router's next word replaces it, and
        // until the broker's lease is renewed no acknowledgement goes out.
        if let Some(set) = set.filter(|s| resume_leadership || s.leader_id() != Some(me)) {
            shard.set_replication(&set, me, 0);
        }
        Ok(shard)
    }

    /// Entries whose payloads the segment files no longer hold, at either end of the log:
    ///
    /// * at the front, entries a trim deleted whose deletion had not reached sled's disk when
    ///   the broker stopped (a trim gives the bytes back at once): the log starts after them,
    ///   as the trim meant;
    /// * after a power loss, entries whose bytes were not synced yet (a flush syncs the files
    ///   before sled, but sled may also write on its own), wherever they are among the entries
    ///   from `synced` on (unsynced writes reach the disk in any order): the log is cut at the
    ///   first, as a crash under `fsync interval` or `never` may take the last records.
    fn drop_lost_payloads(&self, synced: Offset) -> Result<(), ErrorKind> {
        let mut inner = self.lock();
        let tree = self.tree(&inner)?;
        let reader = self.reader(&inner)?;
        let mut start = None;
        for kv in tree.range(log_key(inner.start)..=log_key(u64::MAX)) {
            let (k, v) = kv.map_err(|e| storage(&self.id, "read failed", e))?;
            let e = decode_entry(&self.id, &k, v)?;
            match e.ptr().map(|p| reader.check(&p)) {
                Some(Found::Lost) => start = Some(e.end_offset()),
                _ => break,
            }
        }
        if let Some(start) = start {
            tracing::warn!(shard = %self.id, from = inner.start, to = start, "the first entries' bytes are gone (a trim or a drop whose deletion had not reached the database's disk): the log starts after them");
            self.cut_front(&mut inner, start)?;
        }
        // The entry holding `synced` (if it starts below) is checked too.
        let from: sled::IVec = match tree
            .range(log_key(0)..=log_key(synced.max(inner.start)))
            .next_back()
        {
            Some(kv) => kv.map_err(|e| storage(&self.id, "read failed", e))?.0,
            None => log_key(0).as_slice().into(),
        };
        let mut cut = None;
        for kv in tree.range(from..=sled::IVec::from(&log_key(u64::MAX))) {
            let (k, v) = kv.map_err(|e| storage(&self.id, "read failed", e))?;
            let e = decode_entry(&self.id, &k, v)?;
            let Some(p) = e.ptr() else { continue };
            match reader.check(&p) {
                Found::Lost => {
                    cut = Some(e.base_offset);
                    break;
                }
                Found::Damaged(err) => {
                    tracing::error!(shard = %self.id, offset = e.base_offset, "a stored batch is damaged (kept; reads of it fail): {err}")
                }
                Found::Intact => {}
            }
        }
        if let Some(cut) = cut {
            tracing::warn!(shard = %self.id, from = inner.next_offset, to = cut, "the segment files lost the bytes of entries at the log's end (writes not synced before a power loss): the log is cut back to the first of them");
            self.truncate(&mut inner, cut)?;
        }
        // Checked, and on disk (a starting broker syncs its data dir first): the next start
        // checks only what is written from now on.
        let mark = self.synced_mark(&inner, inner.next_offset);
        self.apply_to(&tree, &[mark], "cannot record the synced mark")?;
        Ok(())
    }

    /// A reader of the segment files as they are now.
    fn reader(&self, inner: &Inner) -> Result<Reader, ErrorKind> {
        match &inner.segments {
            Some(s) => Ok(s.reader()),
            None => Err(self.dropped()),
        }
    }

    /// Writes `data`, the payload of the entry at `offset`, to the segment files. Returns the
    /// stored value pointing at it, the bytes the entry counts for, and the pointer.
    fn stage(
        &self,
        inner: &mut Inner,
        offset: Offset,
        (count, leader_epoch): (u32, LeaderEpoch),
        producer: Option<&ProducerState>,
        data: &[u8],
    ) -> Result<(Vec<u8>, u64, Ptr), ErrorKind> {
        let segments = match inner.segments.as_mut() {
            Some(s) => s,
            None => return Err(self.dropped()),
        };
        let ptr = segments.append(offset, data).map_err(|e| {
            self.health.io_error_undone(
                &format!("{}: cannot write to the segment files", self.id),
                &e,
            )
        })?;
        let size = inline_size(producer.is_some(), data.len());
        Ok((
            encode_entry_at(count, leader_epoch, producer, ptr),
            size,
            ptr,
        ))
    }

    /// The write persisting the shard's synced mark with a batch that ends the log at `end`:
    /// every entry's bytes below it are on disk (it never passes `end`). Persisted with every
    /// write of entries, so after a power loss only the entries from it on need checking.
    fn synced_mark(&self, inner: &Inner, end: Offset) -> (sled::IVec, sled::IVec) {
        let synced = inner
            .segments
            .as_ref()
            .and_then(|s| s.unsynced_from())
            .unwrap_or(end)
            .min(end);
        (STATS_SYNCED.into(), synced.to_be_bytes().as_slice().into())
    }

    /// Takes back the payloads written from `first` (the entry at `offset`) on: their sled
    /// batch failed.
    fn unstage(&self, inner: &mut Inner, offset: Offset, first: Option<Ptr>) {
        if let (Some(segments), Some(first)) = (inner.segments.as_mut(), first) {
            if let Err(e) = segments.truncate(offset, Some(first)) {
                tracing::warn!(shard = %self.id, "cannot take back payloads whose write failed (the next start cuts them): {e}");
            }
        }
    }

    /// The tree, or why it cannot be used now.
    fn tree(&self, inner: &Inner) -> Result<sled::Tree, ErrorKind> {
        inner.tree.clone().ok_or_else(|| self.dropped())
    }

    /// Why a dropped shard's storage cannot be used.
    fn dropped(&self) -> ErrorKind {
        self.health
            .full_error()
            .unwrap_or_else(|| ErrorKind::Unavailable {
                what: self.id.to_string(),
                reason: "it was dropped from this broker; retry at its owner".into(),
            })
    }

    /// The tree for a write: refused while the disk is full, so sled is not handed writes that
    /// cannot be made durable.
    fn writable_tree(&self, inner: &Inner, bytes: u64) -> Result<sled::Tree, ErrorKind> {
        self.health.check_space(bytes)?;
        self.tree(inner)
    }

    fn sled_err(&self, what: &str, e: &sled::Error) -> ErrorKind {
        self.health.sled_error(&format!("{}: {what}", self.id), e)
    }

    pub fn id(&self) -> &ShardId {
        &self.id
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave sled half-written (batches are atomic), and
        // the in-memory fields are only updated after sled succeeded: the data is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, inner: &Inner, access: Access, known_epoch: Epoch) -> Result<(), ErrorKind> {
        let not_owner = || ErrorKind::NotOwner {
            shard: self.id.to_string(),
            epoch: known_epoch,
            owner: inner.repl.set.as_ref().and_then(|s| s.leader.clone()),
        };
        if inner.dropped {
            return Err(not_owner());
        }
        match (access, inner.own.state) {
            (Access::Held, _) => Ok(()),
            (_, ShardState::Importing) => Err(not_owner()),
            _ if !inner.own.owned => Err(not_owner()),
            // Clients read and write at the leader only.
            _ if inner.repl.role() != ReplicaRole::Leader => Err(not_owner()),
            (Access::Write, ShardState::Fenced) => Err(ErrorKind::Moving {
                shard: self.id.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Checks access without doing anything (for requests that then wait).
    pub fn ensure(&self, access: Access, known_epoch: Epoch) -> Result<(), ErrorKind> {
        let inner = self.lock();
        self.check(&inner, access, known_epoch)
    }

    pub fn ownership(&self) -> Ownership {
        self.lock().own.clone()
    }

    /// Appends a validated batch (or recognises a retry). Synchronous: the caller runs it in
    /// arrival order.
    pub fn append(
        &self,
        batch: &RecordBatch,
        producer: Option<ProducerSeq>,
        known_epoch: Epoch,
        note_write: &dyn Fn() -> u64,
        current: &dyn Fn() -> u64,
    ) -> Result<Appended, ErrorKind> {
        let mut inner = self.lock();
        self.check(&inner, Access::Write, known_epoch)?;
        if let Some(p) = producer {
            if let Some(st) = inner.producers.get(&p.producer_id) {
                if p.sequence <= st.last_sequence {
                    // A retry of the last batch (or an even older one, whose exact offsets are no
                    // longer known): acknowledge again, append nothing.
                    return Ok(Appended {
                        base_offset: st.base_offset,
                        count: st.count,
                        duplicate: true,
                        ticket: current(),
                    });
                }
                if p.sequence != st.last_sequence + 1 {
                    return Err(ErrorKind::OutOfOrderSequence {
                        shard: self.id.to_string(),
                        producer_id: p.producer_id,
                        expected: st.last_sequence + 1,
                        got: p.sequence,
                    });
                }
            }
        }
        let base_offset = inner.next_offset;
        // The inserts, kept for the write-ahead file too (IVec clones share the bytes).
        let mut ops: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let leader_epoch = inner.repl.leader_epoch;
        let mut epochs = inner.epochs.clone();
        if epochs.latest().map(|(e, _)| e) < Some(leader_epoch) && leader_epoch > 0 {
            // The first write of this leader epoch: record where it starts.
            epochs.assign(leader_epoch, base_offset);
            ops.push((
                epoch_key(leader_epoch).as_slice().into(),
                base_offset.to_be_bytes().as_slice().into(),
            ));
        }
        let state = producer.map(|p| ProducerState {
            producer_id: p.producer_id,
            last_sequence: p.sequence,
            base_offset,
            count: batch.count,
        });
        let mut offset = base_offset;
        let mut added = 0u64;
        let mut first = None;
        // Refused before anything is written while the disk is low.
        self.health.check_space(batch.data.len() as u64)?;
        let parts = batch.split(MAX_ENTRY_BYTES);
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.into_iter().enumerate() {
            // The producer state rides on the batch's last entry, so a follower that has it
            // has the whole batch.
            let st = state.as_ref().filter(|_| i == last);
            let staged = self.stage(
                &mut inner,
                offset,
                (part.count, leader_epoch),
                st,
                &part.data,
            );
            let (value, size, ptr) = match staged {
                Ok(s) => s,
                Err(e) => {
                    self.unstage(&mut inner, base_offset, first);
                    return Err(e);
                }
            };
            first.get_or_insert(ptr);
            added += size;
            ops.push((log_key(offset).as_slice().into(), value.into()));
            offset += part.count as u64;
        }
        if let Some(st) = &state {
            let v = encode(st).map_err(|e| storage(&self.id, "cannot encode producer state", e))?;
            ops.push((producer_key(st.producer_id).as_slice().into(), v.into()));
        }
        let bytes = inner.bytes + added;
        ops.push((STATS_BYTES.into(), bytes.to_be_bytes().as_slice().into()));
        ops.push(self.synced_mark(&inner, offset));
        if let Err(e) = self.apply(&inner, &ops, "append failed") {
            self.unstage(&mut inner, base_offset, first);
            return Err(e);
        }
        let ticket = note_write();
        inner.next_offset = offset;
        inner.bytes = bytes;
        inner.epochs = epochs;
        if let Some(st) = state {
            inner.producers.insert(st.producer_id, st);
        }
        self.end.send_replace(offset);
        self.publish_hw(&mut inner);
        Ok(Appended {
            base_offset,
            count: batch.count,
            duplicate: false,
            ticket,
        })
    }

    /// The first offset still stored and the next offset.
    pub fn offsets(&self) -> (Offset, Offset) {
        let inner = self.lock();
        (inner.start, inner.next_offset)
    }

    pub fn end_offset(&self) -> Offset {
        self.lock().next_offset
    }

    /// The durable end: every offset below it is on disk.
    pub fn durable_end(&self) -> Offset {
        self.lock().durable
    }

    /// See [`shardq_protocol::Response::Fetched`]'s `stable_end`.
    pub fn stable_end(&self) -> Offset {
        self.lock().stable_end
    }

    /// An import was activated at `end`: this process serves the shard from here, everything
    /// below `end` on disk.
    pub fn activated(&self, end: Offset) {
        self.mark_durable(end);
        self.lock().stable_end = end;
    }

    /// Records that a flush which started after offsets `..upto` were appended has completed.
    pub fn mark_durable(&self, upto: Offset) {
        let mut inner = self.lock();
        let upto = upto.min(inner.next_offset);
        if upto > inner.durable {
            inner.durable = upto;
            self.durable.send_replace(upto);
            self.publish_hw(&mut inner);
        }
    }

    /// Receives the offset `limit` names whenever it moves; long polls wait on it.
    pub fn subscribe(&self, limit: Limit) -> watch::Receiver<Offset> {
        match limit {
            Limit::End => self.end.subscribe(),
            Limit::Durable => self.durable.subscribe(),
            Limit::Committed => self.hw.subscribe(),
        }
    }

    /// Completes on the next ownership or state change (enable it before checking the state).
    pub fn state_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Reads whole stored entries covering `from ..end`, where `end` is the next offset or, with
    /// `durable_only`, the durable end: the entry holding `from` first, then forward until about
    /// `max_bytes` (at least one entry when there is data, never beyond `hard_max` bytes). Returns
    /// the batches and the end offset they were read against. A `from` past the end reads nothing
    /// and returns the end: the reader learns that the log is shorter than it thought (a crash
    /// took back records it had read) and where it ends now. A consumer's read (`Committed`)
    /// below the log start is [`ErrorKind::OffsetOutOfRange`]; the others read from the first
    /// entry still stored.
    pub fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        hard_max: usize,
        limit: Limit,
    ) -> Result<(Vec<StoredBatch>, Offset), ErrorKind> {
        let (end, tree, segments) = {
            let inner = self.lock();
            let end = match limit {
                Limit::End => inner.next_offset,
                Limit::Durable => inner.durable,
                Limit::Committed => inner.repl.hw.min(inner.next_offset),
            };
            if limit == Limit::Committed && from < inner.start {
                return Err(self.out_of_range(&inner, from));
            }
            (end, self.tree(&inner)?, self.reader(&inner)?)
        };
        let mut out = Vec::new();
        if from >= end {
            return Ok((out, end));
        }
        let start_key = match tree
            .range(log_key(0)..=log_key(from))
            .next_back()
            .transpose()
            .map_err(|e| storage(&self.id, "read failed", e))?
        {
            Some((k, _)) => k,
            None => sled::IVec::from(&log_key(0)),
        };
        let mut total = 0usize;
        // Only entries below `end` are complete from this reader's point of view.
        for kv in tree.range(start_key..sled::IVec::from(&log_key(end))) {
            let (k, v) = kv.map_err(|e| storage(&self.id, "read failed", e))?;
            let entry = decode_entry(&self.id, &k, v)?;
            let size = entry.size() as usize;
            if !out.is_empty() && (total >= max_bytes || total + size > hard_max) {
                break;
            }
            total += size;
            let base = entry.base_offset;
            match entry.into_batch(&self.id, &segments) {
                Ok(b) => out.push(b),
                // A trim or truncation took the entry's bytes since the read began: what was
                // read so far stands (the next read finds the log as it is now).
                Err(_) if !out.is_empty() => break,
                Err(e) => {
                    let inner = self.lock();
                    if base >= inner.start {
                        return Err(e);
                    }
                    // Below the log start now: a trim ran meanwhile.
                    if limit == Limit::Committed {
                        return Err(self.out_of_range(&inner, from));
                    }
                    return Ok((out, end));
                }
            }
        }
        if limit == Limit::Committed && out.first().is_none_or(|b| b.base_offset > from) {
            // A trim deleted the entry holding `from` while this read ran: never hand out a gap.
            let inner = self.lock();
            if from < inner.start {
                return Err(self.out_of_range(&inner, from));
            }
        }
        Ok((out, end))
    }

    fn out_of_range(&self, inner: &Inner, offset: Offset) -> ErrorKind {
        ErrorKind::OffsetOutOfRange {
            shard: self.id.to_string(),
            offset,
            start: inner.start,
            end: inner.repl.hw.min(inner.next_offset),
        }
    }

    /// Applies inserts atomically to the tree, then to the write-ahead file if there is one (in
    /// that order, under the shard lock: see [`crate::wal`]).
    fn apply(
        &self,
        inner: &Inner,
        ops: &[(sled::IVec, sled::IVec)],
        what: &str,
    ) -> Result<(), ErrorKind> {
        let bytes = ops.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        let tree = self.writable_tree(inner, bytes)?;
        self.apply_to(&tree, ops, what)
    }

    /// [`Shard::apply`] without the free-space check: for deletions, which are what frees it.
    fn apply_to(
        &self,
        tree: &sled::Tree,
        ops: &[(sled::IVec, sled::IVec)],
        what: &str,
    ) -> Result<(), ErrorKind> {
        let mut batch = sled::Batch::default();
        for (k, v) in ops {
            // An empty value removes the key (see `crate::wal::Op`).
            if v.is_empty() {
                batch.remove(k.clone());
            } else {
                batch.insert(k.clone(), v.clone());
            }
        }
        tree.apply_batch(batch)
            .map_err(|e| self.sled_err(what, &e))?;
        if let Some(wal) = &self.wal {
            let ops: Vec<crate::wal::Op<'_>> =
                ops.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
            wal.append(&self.id, &ops)?;
        }
        Ok(())
    }

    /// Commits a group's offset (synchronously; the caller waits for durability, then for the
    /// in-sync replicas to have it). Returns the write's durability ticket and the groups
    /// version the followers must reach.
    pub fn commit(
        &self,
        group: &str,
        offset: Offset,
        known_epoch: Epoch,
        note_write: &dyn Fn() -> u64,
    ) -> Result<(u64, u64), ErrorKind> {
        let mut inner = self.lock();
        self.check(&inner, Access::Write, known_epoch)?;
        if offset > inner.next_offset {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "cannot commit offset {offset} for group {group:?}: {} ends at {}",
                    self.id, inner.next_offset
                ),
            });
        }
        let op = (
            group_key(group).into(),
            offset.to_be_bytes().as_slice().into(),
        );
        self.apply(&inner, &[op], "commit failed")?;
        let ticket = note_write();
        inner.groups.insert(group.to_string(), offset);
        Ok((ticket, self.group_changed(&mut inner, group)))
    }

    /// Records that `group`'s offset changed (or went): followers fetch the change with their
    /// next replica fetch, which this wakes. Returns the groups version they must reach.
    fn group_changed(&self, inner: &mut Inner, group: &str) -> u64 {
        inner.repl.groups_version.1 += 1;
        let version = inner.repl.groups_version.1;
        inner.repl.group_changes.insert(group.to_string(), version);
        self.end.send_modify(|_| {});
        version
    }

    /// Deletes a group's committed offset (`group delete`); like [`Shard::commit`], the caller
    /// waits for durability and the followers. Returns None when the group had none here.
    pub fn delete_group(
        &self,
        group: &str,
        note_write: &dyn Fn() -> u64,
    ) -> Result<Option<(u64, u64)>, ErrorKind> {
        let mut inner = self.lock();
        self.check(&inner, Access::Write, inner.own.epoch)?;
        if !inner.groups.contains_key(group) {
            return Ok(None);
        }
        let op = (group_key(group).into(), sled::IVec::default());
        self.apply(&inner, &[op], "cannot delete the group offset")?;
        let ticket = note_write();
        inner.groups.remove(group);
        Ok(Some((ticket, self.group_changed(&mut inner, group))))
    }

    pub fn group_offset(&self, group: &str) -> Option<Offset> {
        self.lock().groups.get(group).copied()
    }

    pub fn meta(&self) -> ShardMeta {
        let inner = self.lock();
        let mut producers: Vec<ProducerState> = inner.producers.values().cloned().collect();
        producers.sort_by_key(|p| p.producer_id);
        ShardMeta {
            groups: inner.groups.iter().map(|(g, o)| (g.clone(), *o)).collect(),
            producers,
        }
    }

    pub fn report(&self) -> ShardReport {
        let inner = self.lock();
        ShardReport {
            shard: self.id.clone(),
            state: inner.own.state,
            epoch: inner.own.epoch,
            start_offset: inner.start,
            end_offset: inner.next_offset,
            bytes: inner.bytes,
            groups: inner.groups.iter().map(|(g, o)| (g.clone(), *o)).collect(),
            role: inner.repl.role(),
            leader_epoch: inner.repl.leader_epoch,
            high_watermark: inner.repl.hw,
            followers: Self::followers(&inner),
        }
    }

    /// Applies `change` to the ownership record and persists it in `owners` (the `shards` tree),
    /// under the shard lock so it is ordered with appends. Returns the new record.
    pub fn update_ownership(
        &self,
        owners: &sled::Tree,
        change: impl FnOnce(&mut Ownership),
    ) -> Result<Ownership, ErrorKind> {
        let mut inner = self.lock();
        if inner.dropped {
            return Err(ErrorKind::UnknownShard {
                shard: self.id.to_string(),
                reason: "it was dropped from this broker".into(),
            });
        }
        let mut own = inner.own.clone();
        change(&mut own);
        if own != inner.own {
            owners
                .insert(self.id.key().as_bytes(), own.encode()?)
                .map_err(|e| self.sled_err("cannot record ownership", &e))?;
            inner.own = own.clone();
            drop(inner);
            self.changed.notify_waiters();
        }
        Ok(own)
    }

    /// Writes log entries copied from a migration source with their original base offsets (the
    /// stored bytes unchanged). Only for a shard being imported; entries must continue the local
    /// log exactly (entries entirely below the local end are skipped: a resumed copy may be sent
    /// one again). Returns the records and bytes written.
    pub fn import_batches(&self, batches: &[StoredBatch]) -> Result<(u64, u64), ErrorKind> {
        let mut inner = self.lock();
        if inner.dropped {
            return Err(ErrorKind::UnknownShard {
                shard: self.id.to_string(),
                reason: "it was dropped from this broker while importing".into(),
            });
        }
        if inner.own.state != ShardState::Importing {
            return Err(ErrorKind::BadRequest {
                reason: format!("{} is {:?} here, not importing", self.id, inner.own.state),
            });
        }
        self.write_copied(&mut inner, batches, None)
    }

    /// Replaces the group offsets and producer states with the source's (imported last, once
    /// the source is fenced and they are final).
    pub fn import_meta(&self, meta: &ShardMeta) -> Result<(), ErrorKind> {
        let mut inner = self.lock();
        if inner.dropped || inner.own.state != ShardState::Importing {
            return Err(ErrorKind::BadRequest {
                reason: format!("{} is not being imported here any more", self.id),
            });
        }
        let tree = self.writable_tree(&inner, 0)?;
        let mut sled_batch = sled::Batch::default();
        for id in inner.producers.keys() {
            sled_batch.remove(&producer_key(*id));
        }
        for g in inner.groups.keys() {
            sled_batch.remove(group_key(g));
        }
        for st in &meta.producers {
            let v = encode(st).map_err(|e| storage(&self.id, "cannot encode producer state", e))?;
            sled_batch.insert(&producer_key(st.producer_id), v);
        }
        for (g, o) in &meta.groups {
            sled_batch.insert(group_key(g), &o.to_be_bytes());
        }
        tree.apply_batch(sled_batch)
            .map_err(|e| self.sled_err("cannot write the imported offsets", &e))?;
        inner.producers = meta
            .producers
            .iter()
            .map(|p| (p.producer_id, p.clone()))
            .collect();
        inner.groups = meta.groups.iter().cloned().collect();
        Ok(())
    }

    /// Marks the shard dropped (every later request is refused) and returns whether it was held.
    pub fn mark_dropped(&self) -> bool {
        let was_held = {
            let mut inner = self.lock();
            // In-flight requests may keep this shard alive: from now on they find no tree to
            // write to.
            inner.tree = None;
            if let Some(segments) = inner.segments.take() {
                if let Err(e) = segments.remove() {
                    tracing::warn!(shard = %self.id, "cannot delete the segment files: {e}");
                }
            }
            !std::mem::replace(&mut inner.dropped, true)
        };
        self.changed.notify_waiters();
        was_held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shardq_protocol::ShardAssignment;

    /// Shard d:P1, active and led here, in `db` with its segment files under `dir`.
    pub(super) fn open_active(db: &sled::Db, dir: &std::path::Path) -> Shard {
        let shard = ShardId::new("d", 1);
        let env = ShardEnv {
            segments_root: dir.join("segments"),
            pending: Arc::default(),
            wal: None,
            health: Arc::new(Health::new(1)),
            counts_durable: false,
            me: 1,
            resume_leadership: true,
        };
        Shard::open(
            db,
            Ownership {
                shard: shard.clone(),
                state: ShardState::Active,
                epoch: 1,
                owned: true,
                replication: Some(ShardAssignment::sole(shard, 1, 1).replication),
            },
            &env,
        )
        .unwrap()
    }

    pub(super) fn batch(values: &[&str]) -> RecordBatch {
        let records: Vec<shardq_protocol::Record> = values
            .iter()
            .map(|v| shardq_protocol::Record {
                key: None,
                value: Bytes::copy_from_slice(v.as_bytes()),
                ..shardq_protocol::Record::default()
            })
            .collect();
        RecordBatch::from_records(&records)
    }

    pub(super) fn offsets_read(
        s: &Shard,
        from: Offset,
        durable_only: bool,
    ) -> (Vec<Offset>, Offset) {
        let limit = if durable_only {
            Limit::Durable
        } else {
            Limit::End
        };
        let (batches, end) = s.read(from, 1 << 20, 1 << 20, limit).unwrap();
        let offsets = batches
            .iter()
            .flat_map(|b| b.base_offset..b.end_offset())
            .collect();
        (offsets, end)
    }

    #[test]
    fn durable_only_reads_stop_at_the_durable_end() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let s = open_active(&db, dir.path());
        s.append(&batch(&["a", "b"]), None, 1, &|| 0, &|| 0)
            .unwrap();
        s.append(&batch(&["c"]), None, 1, &|| 0, &|| 0).unwrap();
        // Nothing marked durable yet: a durable-only reader sees nothing, a plain one sees all.
        assert_eq!(offsets_read(&s, 0, true), (vec![], 0));
        assert_eq!(offsets_read(&s, 0, false), (vec![0, 1, 2], 3));
        let mut rx = s.subscribe(Limit::Durable);
        s.mark_durable(2);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 2);
        assert_eq!(offsets_read(&s, 0, true), (vec![0, 1], 2));
        // Reading at or past the durable end (but within the log) is empty, not an error.
        assert_eq!(offsets_read(&s, 2, true), (vec![], 2));
        assert_eq!(offsets_read(&s, 3, true), (vec![], 2));
        assert_eq!(offsets_read(&s, 9, false), (vec![], 3));
        // The mark never passes the log end and never goes back.
        s.mark_durable(100);
        assert_eq!(s.durable_end(), 3);
        s.mark_durable(1);
        assert_eq!(s.durable_end(), 3);
        assert_eq!(offsets_read(&s, 0, true), (vec![0, 1, 2], 3));
    }

    #[test]
    fn a_reopened_shard_is_durable_up_to_what_it_recovered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let s = open_active(&db, dir.path());
            s.append(&batch(&["a", "b", "c"]), None, 1, &|| 0, &|| 0)
                .unwrap();
            db.flush().unwrap();
        }
        let db = reopen(dir.path());
        let s = open_active(&db, dir.path());
        assert_eq!(s.durable_end(), 3);
        assert_eq!(offsets_read(&s, 0, true), (vec![0, 1, 2], 3));
    }

    /// Opens the database in `dir` again once sled let go of its file lock (shortly after the
    /// last handle is dropped).
    fn reopen(dir: &std::path::Path) -> sled::Db {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match sled::open(dir) {
                Ok(db) => return db,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("cannot reopen: {e}"),
            }
        }
    }

    #[test]
    fn entries_whose_bytes_a_trim_gave_back_before_sled_forgot_them_are_skipped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let s = open_active(&db, dir.path());
            for v in ["a", "b", "c"] {
                s.append(&batch(&[v]), None, 1, &|| 0, &|| 0).unwrap();
            }
            db.flush().unwrap();
        }
        // The first entry's bytes were punched out (the trim's deletion never reached sled).
        let seg = segments_dir(&dir.path().join("segments"), &ShardId::new("d", 1))
            .join(format!("{:020}.seg", 0));
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 16], 0).unwrap();
        drop(f);
        let db = reopen(dir.path());
        let s = open_active(&db, dir.path());
        assert_eq!(s.offsets(), (1, 3));
        assert_eq!(offsets_read(&s, 0, false), (vec![1, 2], 3));
        assert!(matches!(
            s.read(0, 1 << 20, 1 << 20, Limit::Committed),
            Err(ErrorKind::OffsetOutOfRange { start: 1, .. })
        ));
    }

    #[test]
    fn a_page_lost_inside_the_logs_end_cuts_there_but_damaged_bytes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let big = |c: char| c.to_string().repeat(10_000);
        {
            let db = sled::open(dir.path()).unwrap();
            let s = open_active(&db, dir.path());
            for c in ['a', 'b', 'c', 'd', 'e'] {
                s.append(&batch(&[&big(c)]), None, 1, &|| 0, &|| 0).unwrap();
            }
            db.flush().unwrap();
        }
        let seg = segments_dir(&dir.path().join("segments"), &ShardId::new("d", 1))
            .join(format!("{:020}.seg", 0));
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        // Entry 1 (about bytes 10 000..20 000) gets one flipped byte: damaged, not lost.
        std::os::unix::fs::FileExt::write_all_at(&f, b"!", 15_000).unwrap();
        // Entry 3 (about 30 000..40 000) lost a whole page (written out of order before a power
        // loss): the log ends before it, though entry 4's bytes are there.
        std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 4096], 32_768).unwrap();
        drop(f);
        let db = reopen(dir.path());
        let s = open_active(&db, dir.path());
        assert_eq!(s.offsets(), (0, 3));
        assert!(
            s.read(1, 1, 1 << 20, Limit::End).is_err(),
            "damaged: an error"
        );
        assert_eq!(offsets_read(&s, 2, false), (vec![2], 3));
    }

    #[test]
    fn entries_whose_payloads_the_segment_files_lost_are_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let s = open_active(&db, dir.path());
            for v in ["a", "b", "c", "d"] {
                s.append(&batch(&[v]), None, 1, &|| 0, &|| 0).unwrap();
            }
            db.flush().unwrap();
        }
        // A power loss took the end of the last payload (sled had written its entry).
        let seg = segments_dir(&dir.path().join("segments"), &ShardId::new("d", 1))
            .join(format!("{:020}.seg", 0));
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 1).unwrap();
        drop(f);
        let db = reopen(dir.path());
        let s = open_active(&db, dir.path());
        assert_eq!(s.end_offset(), 3, "the entry at 3 lost its payload");
        assert_eq!(offsets_read(&s, 0, false), (vec![0, 1, 2], 3));
        // The log goes on from there, its payload after the last one kept.
        let a = s.append(&batch(&["e"]), None, 1, &|| 0, &|| 0).unwrap();
        assert_eq!(a.base_offset, 3);
        let (batches, _) = s.read(3, 1 << 20, 1 << 20, Limit::End).unwrap();
        let values: Vec<Bytes> = batches[0].batch.iter().map(|r| r.unwrap().value).collect();
        assert_eq!(values, vec![Bytes::from_static(b"e")]);
    }
}
