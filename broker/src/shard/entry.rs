//! The keys of a shard's tree and the encoding of its stored log entries.
//!
//! | key                               | value                                             |
//! |-----------------------------------|---------------------------------------------------|
//! | `0x00` + base offset (u64 BE)     | a log entry (below)                               |
//! | `0x01` + producer id (u64 BE)     | `ProducerState` (bincode)                         |
//! | `0x02` + group name bytes         | committed offset (u64 BE)                         |
//! | `0x03` `b"bytes"`                 | log bytes stored so far (u64 BE)                  |
//! | `0x03` `b"hw"`                    | the last high watermark this replica knew (u64 BE) |
//! | `0x03` `b"start"`                 | the log start: retention deleted what is below (u64 BE) |
//! | `0x03` `b"synced"`                | every entry's bytes below this were synced when written (u64 BE) |
//! | `0x04` + leader epoch (u64 BE)    | the first offset written under that epoch (u64 BE) |
//!
//! A log entry is `count: u32 LE` with the top bit set, `leader_epoch: u64 LE`, a flag byte and,
//! when the flag is 1, the producer state the batch left (`producer_id u64, sequence u64,
//! base_offset u64, count u32`, LE), then the packed `RecordBatch.data`, or, when the count's
//! second bit is set, a pointer to it in the shard's segment files (`segment u64, position
//! u64, length u32`, LE; see [`super::segments`]). Entries written before replication existed
//! have the top bit clear and no header: leader epoch 0, no producer.

use bytes::Bytes;
use shardq_protocol::{
    ErrorKind, LeaderEpoch, Offset, ProducerState, RecordBatch, ShardId, StoredBatch,
};

use super::segments::{Ptr, Reader};

pub const LOG: u8 = 0x00;
pub const PRODUCER: u8 = 0x01;
pub const GROUP: u8 = 0x02;
pub const EPOCH: u8 = 0x04;
pub const STATS_BYTES: &[u8] = b"\x03bytes";
pub const STATS_HW: &[u8] = b"\x03hw";
pub const STATS_START: &[u8] = b"\x03start";
pub const STATS_SYNCED: &[u8] = b"\x03synced";

/// Marks an entry with the replication header.
const WITH_HEADER: u32 = 0x8000_0000;
/// Marks an entry whose payload is in the segment files.
const IN_SEGMENT: u32 = 0x4000_0000;
const PRODUCER_LEN: usize = 8 + 8 + 8 + 4;
const PTR_LEN: usize = 8 + 8 + 4;

fn prefixed(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [prefix; 9];
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

pub fn log_key(offset: Offset) -> [u8; 9] {
    prefixed(LOG, offset)
}

pub fn producer_key(id: u64) -> [u8; 9] {
    prefixed(PRODUCER, id)
}

pub fn epoch_key(epoch: LeaderEpoch) -> [u8; 9] {
    prefixed(EPOCH, epoch)
}

pub fn group_key(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + group.len());
    k.push(GROUP);
    k.extend_from_slice(group.as_bytes());
    k
}

pub fn storage(shard: &ShardId, what: &str, e: impl std::fmt::Display) -> ErrorKind {
    ErrorKind::Storage {
        reason: format!("{shard}: {what}: {e}"),
    }
}

pub fn be_u64(b: &[u8]) -> Option<u64> {
    b.try_into().ok().map(u64::from_be_bytes)
}

/// The stored value of one log entry holding its payload (how entries were stored before the
/// segment files; still read).
#[cfg(test)]
pub fn encode_entry(
    count: u32,
    leader_epoch: LeaderEpoch,
    producer: Option<&ProducerState>,
    data: &[u8],
) -> Vec<u8> {
    let mut v = entry_head(count, leader_epoch, producer, data.len());
    v.extend_from_slice(data);
    v
}

/// The stored value of one log entry whose payload is at `ptr` in the segment files.
pub fn encode_entry_at(
    count: u32,
    leader_epoch: LeaderEpoch,
    producer: Option<&ProducerState>,
    ptr: Ptr,
) -> Vec<u8> {
    let mut v = entry_head(count | IN_SEGMENT, leader_epoch, producer, PTR_LEN);
    v.extend_from_slice(&ptr.segment.to_le_bytes());
    v.extend_from_slice(&ptr.pos.to_le_bytes());
    v.extend_from_slice(&ptr.len.to_le_bytes());
    v
}

fn entry_head(
    count: u32,
    leader_epoch: LeaderEpoch,
    producer: Option<&ProducerState>,
    more: usize,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(4 + 8 + 1 + PRODUCER_LEN + more);
    v.extend_from_slice(&(count | WITH_HEADER).to_le_bytes());
    v.extend_from_slice(&leader_epoch.to_le_bytes());
    match producer {
        Some(p) => {
            v.push(1);
            v.extend_from_slice(&p.producer_id.to_le_bytes());
            v.extend_from_slice(&p.last_sequence.to_le_bytes());
            v.extend_from_slice(&p.base_offset.to_le_bytes());
            v.extend_from_slice(&p.count.to_le_bytes());
        }
        None => v.push(0),
    }
    v
}

/// Bytes `b` takes stored as one entry (what a shard's byte count and a copy's progress count).
pub fn stored_size(b: &StoredBatch) -> u64 {
    inline_size(b.producer.is_some(), b.batch.data.len())
}

/// Bytes an entry counts for: its header and payload, as if stored inline (wherever the
/// payload is).
pub fn inline_size(with_producer: bool, payload: usize) -> u64 {
    (4 + 8 + 1 + if with_producer { PRODUCER_LEN } else { 0 } + payload) as u64
}

fn le_u64(v: &[u8], at: usize) -> Option<u64> {
    v.get(at..at + 8)?.try_into().ok().map(u64::from_le_bytes)
}

fn le_u32(v: &[u8], at: usize) -> Option<u32> {
    v.get(at..at + 4)?.try_into().ok().map(u32::from_le_bytes)
}

/// Where a stored entry's payload is.
#[derive(Clone, Debug)]
pub enum Payload {
    Inline(Bytes),
    At(Ptr),
}

/// A stored log entry, its payload not read yet.
#[derive(Clone, Debug)]
pub struct Entry {
    pub base_offset: Offset,
    pub count: u32,
    pub leader_epoch: LeaderEpoch,
    pub producer: Option<ProducerState>,
    pub payload: Payload,
}

impl Entry {
    pub fn end_offset(&self) -> Offset {
        self.base_offset + u64::from(self.count)
    }

    /// The bytes the entry counts for (a shard's byte count, retention): as if its payload
    /// were stored inline, wherever it is.
    pub fn size(&self) -> u64 {
        let payload = match &self.payload {
            Payload::Inline(b) => b.len(),
            Payload::At(p) => p.len as usize,
        };
        inline_size(self.producer.is_some(), payload)
    }

    /// Where its payload is in the segment files (None: stored inline).
    pub fn ptr(&self) -> Option<Ptr> {
        match self.payload {
            Payload::At(p) => Some(p),
            Payload::Inline(_) => None,
        }
    }

    /// The batch, its payload read through `segments` if it is not inline.
    pub fn into_batch(self, shard: &ShardId, segments: &Reader) -> Result<StoredBatch, ErrorKind> {
        let data = match self.payload {
            Payload::Inline(b) => b,
            Payload::At(p) => segments.read(&p).map_err(|e| {
                storage(
                    shard,
                    "cannot read a payload from the segment files",
                    format!("offset {}: {e}", self.base_offset),
                )
            })?,
        };
        Ok(StoredBatch {
            base_offset: self.base_offset,
            leader_epoch: self.leader_epoch,
            producer: self.producer,
            batch: RecordBatch {
                count: self.count,
                data,
            },
        })
    }
}

/// Decodes a stored log entry and reads its payload (through `segments` if it is there).
#[cfg(test)]
pub fn entry_to_batch(
    shard: &ShardId,
    key: &[u8],
    value: sled::IVec,
    segments: &Reader,
) -> Result<StoredBatch, ErrorKind> {
    decode_entry(shard, key, value)?.into_batch(shard, segments)
}

/// Decodes a stored log entry without reading (or copying) its payload.
pub fn decode_entry(shard: &ShardId, key: &[u8], value: sled::IVec) -> Result<Entry, ErrorKind> {
    let base_offset = key
        .get(1..)
        .and_then(be_u64)
        .ok_or_else(|| storage(shard, "corrupt log key", format!("{key:?}")))?;
    let corrupt = || {
        storage(
            shard,
            "corrupt log entry",
            format!("at offset {base_offset}"),
        )
    };
    let head = le_u32(&value, 0).ok_or_else(corrupt)?;
    if head & WITH_HEADER == 0 {
        let data = Bytes::from_owner(value).slice(4..);
        return Ok(Entry {
            base_offset,
            count: head,
            leader_epoch: 0,
            producer: None,
            payload: Payload::Inline(data),
        });
    }
    let leader_epoch = le_u64(&value, 4).ok_or_else(corrupt)?;
    let (producer, at) = match value.get(12) {
        Some(0) => (None, 13),
        Some(1) => {
            let p = (|| {
                Some(ProducerState {
                    producer_id: le_u64(&value, 13)?,
                    last_sequence: le_u64(&value, 21)?,
                    base_offset: le_u64(&value, 29)?,
                    count: le_u32(&value, 37)?,
                })
            })()
            .ok_or_else(corrupt)?;
            (Some(p), 13 + PRODUCER_LEN)
        }
        _ => return Err(corrupt()),
    };
    if value.len() < at {
        return Err(corrupt());
    }
    let payload = if head & IN_SEGMENT != 0 {
        if value.len() != at + PTR_LEN {
            return Err(corrupt());
        }
        Payload::At(Ptr {
            segment: le_u64(&value, at).ok_or_else(corrupt)?,
            pos: le_u64(&value, at + 8).ok_or_else(corrupt)?,
            len: le_u32(&value, at + 16).ok_or_else(corrupt)?,
        })
    } else {
        Payload::Inline(Bytes::from_owner(value).slice(at..))
    };
    Ok(Entry {
        base_offset,
        count: head & !(WITH_HEADER | IN_SEGMENT),
        leader_epoch,
        producer,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_and_without_a_producer_and_old_entries_read_as_epoch_0() {
        let shard = ShardId::new("t", 1);
        let p = ProducerState {
            producer_id: 7,
            last_sequence: 9,
            base_offset: 40,
            count: 12,
        };
        for producer in [None, Some(&p)] {
            let v = encode_entry(3, 5, producer, b"abc");
            let b = entry_to_batch(&shard, &log_key(42), v.into(), &Reader::default()).unwrap();
            assert_eq!(b.base_offset, 42);
            assert_eq!(b.leader_epoch, 5);
            assert_eq!(b.producer.as_ref(), producer);
            assert_eq!((b.batch.count, &b.batch.data[..]), (3, &b"abc"[..]));
        }
        let mut old = 2u32.to_le_bytes().to_vec();
        old.extend_from_slice(b"xy");
        let b = entry_to_batch(&shard, &log_key(0), old.into(), &Reader::default()).unwrap();
        assert_eq!((b.leader_epoch, b.producer, b.batch.count), (0, None, 2));
        // Truncated headers are errors, never panics.
        let v = encode_entry(3, 5, Some(&p), b"");
        for cut in 0..v.len() {
            let _ = decode_entry(&shard, &log_key(0), v[..cut].to_vec().into());
        }
        assert!(decode_entry(&shard, &log_key(0), v[..20].to_vec().into()).is_err());
    }

    #[test]
    fn entries_in_the_segment_files_count_as_if_inline_and_read_through_the_files() {
        let shard = ShardId::new("t", 1);
        let dir = tempfile::tempdir().unwrap();
        let pending = std::sync::Arc::new(super::super::segments::PendingSyncs::default());
        let mut segs =
            super::super::segments::Segments::open(dir.path(), 1 << 20, pending).unwrap();
        let p = ProducerState {
            producer_id: 7,
            last_sequence: 9,
            base_offset: 40,
            count: 12,
        };
        let ptr = segs.append(40, b"payload").unwrap();
        let v = encode_entry_at(12, 5, Some(&p), ptr);
        let inline = encode_entry(12, 5, Some(&p), b"payload");
        let e = decode_entry(&shard, &log_key(40), v.clone().into()).unwrap();
        assert_eq!((e.count, e.end_offset(), e.ptr()), (12, 52, Some(ptr)));
        assert_eq!(e.size(), inline.len() as u64);
        let b = e.into_batch(&shard, &segs.reader()).unwrap();
        assert_eq!((b.producer, &b.batch.data[..]), (Some(p), &b"payload"[..]));
        // A pointer cut short is corrupt, never a panic; a pointer to nothing is an error.
        for cut in 0..v.len() {
            let _ = decode_entry(&shard, &log_key(40), v[..cut].to_vec().into());
        }
        assert!(entry_to_batch(&shard, &log_key(40), v.into(), &Reader::default()).is_err());
    }
}
