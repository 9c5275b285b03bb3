//! Record batches: many records packed into one contiguous buffer.
//!
//! A batch travels in one frame and is stored by the broker as one sled value, unchanged: the broker
//! validates it in one pass over the lengths and never re-encodes it, and consumers slice records
//! out of it without copying. Layout per record, little-endian:
//! `timestamp_ms: u64 | key_len: u32 (u32::MAX = no key) | key | value_len: u32 | value`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::message::ProducerState;
use crate::types::{LeaderEpoch, Offset};

const NO_KEY: u32 = u32::MAX;
/// Bytes of framing each record costs inside a batch.
pub const RECORD_OVERHEAD: usize = 16;

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Bytes,
    /// Producer-side wall clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A packed run of records (see the module docs for the layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RecordBatch {
    pub count: u32,
    pub data: Bytes,
}

/// A batch as stored in a shard: its records have offsets `base_offset ..base_offset + count`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBatch {
    pub base_offset: Offset,
    /// The leader epoch under which the batch was appended (0: written before replication).
    pub leader_epoch: LeaderEpoch,
    /// On the last stored entry of a producer's batch: the idempotence state that batch left
    /// (its sequence, and the whole batch's offsets), so a follower that copies the entry keeps
    /// the same state as the leader and a failover never appends a retried batch twice.
    pub producer: Option<ProducerState>,
    pub batch: RecordBatch,
}

impl StoredBatch {
    /// Offset one past the last record.
    pub fn end_offset(&self) -> Offset {
        self.base_offset.saturating_add(self.batch.count as u64)
    }

    /// The records with their offsets, skipping those before `from`.
    pub fn records_from(&self, from: Offset) -> impl Iterator<Item = (Offset, Record)> + '_ {
        let base = self.base_offset;
        self.batch
            .iter()
            .map_while(Result::ok)
            .enumerate()
            .map(move |(i, r)| (base.saturating_add(i as u64), r))
            .filter(move |(o, _)| *o >= from)
    }
}

/// Builds a batch record by record.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    buf: BytesMut,
    count: u32,
}

impl BatchBuilder {
    pub fn with_capacity(bytes: usize) -> Self {
        BatchBuilder {
            buf: BytesMut::with_capacity(bytes),
            count: 0,
        }
    }

    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp_ms: u64) {
        self.buf
            .reserve(RECORD_OVERHEAD + key.map_or(0, <[u8]>::len) + value.len());
        self.buf.put_u64_le(timestamp_ms);
        match key {
            Some(k) => {
                self.buf.put_u32_le(k.len() as u32);
                self.buf.put_slice(k);
            }
            None => self.buf.put_u32_le(NO_KEY),
        }
        self.buf.put_u32_le(value.len() as u32);
        self.buf.put_slice(value);
        self.count += 1;
    }

    pub fn push_record(&mut self, r: &Record) {
        self.push(r.key.as_deref(), &r.value, r.timestamp_ms);
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(self) -> RecordBatch {
        RecordBatch {
            count: self.count,
            data: self.buf.freeze(),
        }
    }
}

/// Size one record takes inside a batch.
pub fn encoded_record_size(key_len: Option<usize>, value_len: usize) -> usize {
    RECORD_OVERHEAD + key_len.unwrap_or(0) + value_len
}

/// Walks the packed records; yields an error (once) on a malformed buffer.
pub struct BatchIter<'a> {
    data: &'a Bytes,
    pos: usize,
    failed: bool,
}

fn read_u32(data: &[u8], pos: usize) -> Option<u32> {
    data.get(pos..pos + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

impl Iterator for BatchIter<'_> {
    type Item = Result<Record, ErrorKind>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.data.len() {
            return None;
        }
        match next_record(self.data, self.pos) {
            Ok((rec, end)) => {
                self.pos = end;
                Some(Ok(rec))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Locates the record at `pos`: (key range, value range, timestamp, end).
#[allow(clippy::type_complexity)]
fn locate(
    data: &[u8],
    pos: usize,
) -> Result<(Option<(usize, usize)>, (usize, usize), u64, usize), ErrorKind> {
    let bad = |what: &str| ErrorKind::BadRequest {
        reason: format!("malformed record batch at byte {pos}: {what}"),
    };
    let ts = data
        .get(pos..pos + 8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| bad("truncated timestamp"))?;
    let mut p = pos + 8;
    let klen = read_u32(data, p).ok_or_else(|| bad("truncated key length"))?;
    p += 4;
    let key = if klen == NO_KEY {
        None
    } else {
        let end = p
            .checked_add(klen as usize)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad("key runs past the end"))?;
        let k = (p, end);
        p = end;
        Some(k)
    };
    let vlen = read_u32(data, p).ok_or_else(|| bad("truncated value length"))?;
    p += 4;
    let end = p
        .checked_add(vlen as usize)
        .filter(|e| *e <= data.len())
        .ok_or_else(|| bad("value runs past the end"))?;
    Ok((key, (p, end), ts, end))
}

fn next_record(data: &Bytes, pos: usize) -> Result<(Record, usize), ErrorKind> {
    let (key, (vs, ve), ts, end) = locate(data, pos)?;
    Ok((
        Record {
            key: key.map(|(s, e)| data.slice(s..e)),
            value: data.slice(vs..ve),
            timestamp_ms: ts,
        },
        end,
    ))
}

impl RecordBatch {
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut b = BatchBuilder::default();
        for r in records {
            b.push_record(r);
        }
        b.finish()
    }

    pub fn iter(&self) -> BatchIter<'_> {
        BatchIter {
            data: &self.data,
            pos: 0,
            failed: false,
        }
    }

    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }

    /// Checks the batch is well formed, holds exactly `count` records, none larger than
    /// `max_record_bytes` (key + value). Cheap: reads only the length fields.
    pub fn validate(&self, max_record_bytes: usize) -> Result<(), ErrorKind> {
        let mut pos = 0;
        let mut n: u64 = 0;
        while pos < self.data.len() {
            let (key, (vs, ve), _, end) = locate(&self.data, pos)?;
            let size = key.map_or(0, |(s, e)| e - s) + (ve - vs);
            if size > max_record_bytes {
                return Err(ErrorKind::RecordTooLarge {
                    size: size as u64,
                    max: max_record_bytes as u64,
                });
            }
            pos = end;
            n += 1;
        }
        if n != self.count as u64 {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "record batch says it holds {} records but holds {n}",
                    self.count
                ),
            });
        }
        if n == 0 {
            return Err(ErrorKind::BadRequest {
                reason: "empty record batch".into(),
            });
        }
        Ok(())
    }

    /// Splits a valid batch into consecutive batches of at most `max_bytes` each (a single record
    /// larger than that stays alone). Zero-copy: the parts share this batch's buffer.
    pub fn split(&self, max_bytes: usize) -> Vec<RecordBatch> {
        if self.data.len() <= max_bytes {
            return vec![self.clone()];
        }
        let mut parts = Vec::new();
        let (mut start, mut pos, mut count) = (0usize, 0usize, 0u32);
        while pos < self.data.len() {
            let Ok((_, _, _, end)) = locate(&self.data, pos) else {
                break;
            };
            if count > 0 && end - start > max_bytes {
                parts.push(RecordBatch {
                    count,
                    data: self.data.slice(start..pos),
                });
                start = pos;
                count = 0;
            }
            count += 1;
            pos = end;
        }
        if count > 0 {
            parts.push(RecordBatch {
                count,
                data: self.data.slice(start..pos),
            });
        }
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            proptest::collection::vec(any::<u8>(), 0..300),
            any::<u64>(),
        )
            .prop_map(|(k, v, t)| Record {
                key: k.map(Bytes::from),
                value: Bytes::from(v),
                timestamp_ms: t,
            })
    }

    proptest! {
        #[test]
        fn batch_round_trips_and_splits(records in proptest::collection::vec(arb_record(), 1..60), max in 1usize..2000) {
            let batch = RecordBatch::from_records(&records);
            prop_assert!(batch.validate(1 << 20).is_ok());
            let back: Vec<Record> = batch.iter().collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(&back, &records);
            let parts = batch.split(max);
            let mut joined = Vec::new();
            for p in &parts {
                prop_assert!(p.validate(1 << 20).is_ok());
                prop_assert!(p.size_bytes() <= max || p.count == 1);
                joined.extend(p.iter().map(Result::unwrap));
            }
            prop_assert_eq!(joined, records);
        }

        #[test]
        fn garbage_batches_are_refused_not_panics(data in proptest::collection::vec(any::<u8>(), 0..200), count in any::<u32>()) {
            let batch = RecordBatch { count, data: Bytes::from(data) };
            let _ = batch.validate(100);
            let _ = batch.iter().count();
            let _ = batch.split(10);
        }
    }

    #[test]
    fn oversized_record_is_named() {
        let mut b = BatchBuilder::default();
        b.push(None, &[0u8; 101], 0);
        match b.finish().validate(100) {
            Err(ErrorKind::RecordTooLarge {
                size: 101,
                max: 100,
            }) => {}
            other => panic!("expected RecordTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn records_from_skips_earlier_offsets() {
        let mut b = BatchBuilder::default();
        for i in 0..5u8 {
            b.push(None, &[i], 0);
        }
        let sb = StoredBatch {
            base_offset: 10,
            leader_epoch: 0,
            producer: None,
            batch: b.finish(),
        };
        let got: Vec<_> = sb.records_from(12).map(|(o, r)| (o, r.value[0])).collect();
        assert_eq!(got, vec![(12, 2), (13, 3), (14, 4)]);
        assert_eq!(sb.end_offset(), 15);
    }
}
