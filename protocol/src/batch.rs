//! Record batches: many records packed into one contiguous buffer.
//!
//! A batch travels in one frame and is stored by the broker as one sled value, unchanged: the broker
//! validates it in one pass over the lengths and never re-encodes it, and consumers slice records
//! out of it without copying. Layout per record, little-endian:
//! `timestamp_ms: u64 | key_len: u32 (u32::MAX = no key) | key | value_len: u32 | value`, and when
//! the top bit of `value_len` is set ([`HAS_HEADERS`]; the length is the other 31 bits) the
//! headers follow the value: `count: u16`, then per header `name_len: u16 | name (UTF-8) |
//! value_len: u32 | value`. A record without headers costs nothing for them, and batches written
//! before headers existed read the same.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::message::ProducerState;
use crate::types::{LeaderEpoch, Offset};

const NO_KEY: u32 = u32::MAX;
/// Set in a record's `value_len` when headers follow its value.
pub const HAS_HEADERS: u32 = 1 << 31;
/// Most headers one record may carry.
pub const MAX_HEADERS: usize = u16::MAX as usize;
/// Bytes of framing each record costs inside a batch.
pub const RECORD_OVERHEAD: usize = 16;

/// One message.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    pub key: Option<Bytes>,
    pub value: Bytes,
    /// Producer-side wall clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Name and value pairs, in the order the producer gave them (names may repeat).
    pub headers: Vec<(String, Bytes)>,
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
        self.push_with_headers(key, value, timestamp_ms, &[]);
    }

    /// A record with headers. Lengths beyond the layout's fields (a value of 2 GiB, more than
    /// [`MAX_HEADERS`] headers, a name over 64 KiB) are cut to fit: frames are far smaller, so
    /// the producer refuses such a record long before it gets here.
    pub fn push_with_headers(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: u64,
        headers: &[(String, Bytes)],
    ) {
        self.buf.reserve(
            encoded_record_size(key.map(<[u8]>::len), value.len()) + encoded_headers_size(headers),
        );
        self.buf.put_u64_le(timestamp_ms);
        match key {
            Some(k) => {
                self.buf.put_u32_le(k.len() as u32);
                self.buf.put_slice(k);
            }
            None => self.buf.put_u32_le(NO_KEY),
        }
        let value = &value[..value.len().min((HAS_HEADERS - 1) as usize)];
        let flag = if headers.is_empty() { 0 } else { HAS_HEADERS };
        self.buf.put_u32_le(value.len() as u32 | flag);
        self.buf.put_slice(value);
        if !headers.is_empty() {
            let headers = &headers[..headers.len().min(MAX_HEADERS)];
            self.buf.put_u16_le(headers.len() as u16);
            for (name, v) in headers {
                let name = &name.as_bytes()[..name.len().min(u16::MAX as usize)];
                self.buf.put_u16_le(name.len() as u16);
                self.buf.put_slice(name);
                self.buf.put_u32_le(v.len() as u32);
                self.buf.put_slice(v);
            }
        }
        self.count += 1;
    }

    pub fn push_record(&mut self, r: &Record) {
        self.push_with_headers(r.key.as_deref(), &r.value, r.timestamp_ms, &r.headers);
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

/// Size one record takes inside a batch, without its headers.
pub fn encoded_record_size(key_len: Option<usize>, value_len: usize) -> usize {
    RECORD_OVERHEAD + key_len.unwrap_or(0) + value_len
}

/// Size a record's headers take inside a batch (0 for none).
pub fn encoded_headers_size(headers: &[(String, Bytes)]) -> usize {
    if headers.is_empty() {
        return 0;
    }
    2 + headers
        .iter()
        .map(|(n, v)| 2 + n.len() + 4 + v.len())
        .sum::<usize>()
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

/// Where one record's parts lie in a batch's buffer.
struct Located {
    key: Option<(usize, usize)>,
    value: (usize, usize),
    timestamp_ms: u64,
    /// (name range, value range) per header.
    headers: Vec<((usize, usize), (usize, usize))>,
    /// Bytes of the headers' names and values.
    header_bytes: usize,
    end: usize,
}

/// Locates the record at `pos`; with `headers` false the headers are skipped, not collected.
fn locate(data: &[u8], pos: usize, headers: bool) -> Result<Located, ErrorKind> {
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
    let vfield = read_u32(data, p).ok_or_else(|| bad("truncated value length"))?;
    p += 4;
    let vend = p
        .checked_add((vfield & !HAS_HEADERS) as usize)
        .filter(|e| *e <= data.len())
        .ok_or_else(|| bad("value runs past the end"))?;
    let value = (p, vend);
    p = vend;
    let mut found = Vec::new();
    let mut header_bytes = 0;
    if vfield & HAS_HEADERS != 0 {
        let count = read_u16(data, p).ok_or_else(|| bad("truncated header count"))?;
        p += 2;
        for _ in 0..count {
            let nlen = read_u16(data, p).ok_or_else(|| bad("truncated header name length"))?;
            p += 2;
            let nend = p
                .checked_add(usize::from(nlen))
                .filter(|e| *e <= data.len())
                .ok_or_else(|| bad("header name runs past the end"))?;
            let name = (p, nend);
            p = nend;
            let hlen = read_u32(data, p).ok_or_else(|| bad("truncated header value length"))?;
            p += 4;
            let hend = p
                .checked_add(hlen as usize)
                .filter(|e| *e <= data.len())
                .ok_or_else(|| bad("header value runs past the end"))?;
            header_bytes += usize::from(nlen) + hlen as usize;
            if headers {
                found.push((name, (p, hend)));
            }
            p = hend;
        }
    }
    Ok(Located {
        key,
        value,
        timestamp_ms: ts,
        headers: found,
        header_bytes,
        end: p,
    })
}

fn read_u16(data: &[u8], pos: usize) -> Option<u16> {
    data.get(pos..pos + 2)
        .map(|b| u16::from_le_bytes(b.try_into().expect("2 bytes")))
}

fn next_record(data: &Bytes, pos: usize) -> Result<(Record, usize), ErrorKind> {
    let at = locate(data, pos, true)?;
    let (vs, ve) = at.value;
    Ok((
        Record {
            key: at.key.map(|(s, e)| data.slice(s..e)),
            value: data.slice(vs..ve),
            timestamp_ms: at.timestamp_ms,
            headers: at
                .headers
                .iter()
                .map(|&((ns, ne), (hs, he))| {
                    (
                        String::from_utf8_lossy(&data[ns..ne]).into_owned(),
                        data.slice(hs..he),
                    )
                })
                .collect(),
        },
        at.end,
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
            let at = locate(&self.data, pos, false)?;
            let (vs, ve) = at.value;
            let size = at.key.map_or(0, |(s, e)| e - s) + (ve - vs) + at.header_bytes;
            let end = at.end;
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
            let Ok(Located { end, .. }) = locate(&self.data, pos, false) else {
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
            proptest::collection::vec(
                ("[a-z-]{0,8}", proptest::collection::vec(any::<u8>(), 0..20)),
                0..4,
            ),
        )
            .prop_map(|(k, v, t, h)| Record {
                key: k.map(Bytes::from),
                value: Bytes::from(v),
                timestamp_ms: t,
                headers: h.into_iter().map(|(n, v)| (n, Bytes::from(v))).collect(),
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
    fn headers_count_towards_the_record_size_and_old_batches_read_the_same() {
        let headers = vec![("trace".to_string(), Bytes::from_static(b"0123456789"))];
        let mut b = BatchBuilder::default();
        b.push_with_headers(Some(b"k"), &[0u8; 90], 7, &headers);
        let batch = b.finish();
        assert_eq!(
            batch.size_bytes(),
            encoded_record_size(Some(1), 90) + encoded_headers_size(&headers)
        );
        // 1 + 90 + 5 + 10 = 106 bytes of key, value and headers.
        assert!(batch.validate(106).is_ok());
        assert!(matches!(
            batch.validate(105),
            Err(ErrorKind::RecordTooLarge { size: 106, .. })
        ));
        // The layout without headers is the one batches had before headers existed.
        let mut old = BatchBuilder::default();
        old.push(None, b"v", 1);
        assert_eq!(
            &old.finish().data[..],
            &[1, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255, 1, 0, 0, 0, b'v'][..]
        );
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
