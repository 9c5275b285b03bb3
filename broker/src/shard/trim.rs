//! Deleting the front of a shard's log: retention and purges at the leader, and followers taking
//! the leader's log start.
//!
//! Only whole stored entries go, the oldest first, and never one at or past the high watermark:
//! what a consumer may not read yet is never deleted. The log start is persisted with the
//! deletion (`STATS_START`, in the same atomic batch), so a restarted replica neither serves
//! deleted offsets nor, with an empty log, starts its offsets at 0 again. Followers learn the
//! leader's start from every replica fetch answer; one whose whole log is below it deletes
//! everything and continues empty at the leader's start (what a new replica does when the
//! leader has already deleted offset 0).
//!
//! Deletions skip the free-space check that writes pass: they are what frees the space.

use shardq_protocol::{ErrorKind, LogRange, Offset, TrimTo};

use super::entry::{decode_entry, epoch_key, log_key, storage, STATS_BYTES, STATS_HW, STATS_START};
use super::{Access, Inner, Shard};

/// At most this many entries go in one trim (one sled batch); the next round takes the rest.
const MAX_ENTRIES_PER_TRIM: usize = 8_192;

impl Shard {
    /// Leader: deletes the front of the log as `to` says (`now_ms`: the clock retention by time
    /// compares record timestamps with). Returns the log after it.
    pub fn trim(&self, to: TrimTo, now_ms: u64) -> Result<LogRange, ErrorKind> {
        // Find the new start without holding the lock (it reads entries), then cut under it.
        let (tree, segments, start, hw, bytes) = {
            let inner = self.lock();
            self.check(&inner, Access::Read, inner.own.epoch)?;
            let hw = inner.repl.hw.min(inner.next_offset);
            let segments = self.reader(&inner)?;
            (self.tree(&inner)?, segments, inner.start, hw, inner.bytes)
        };
        let target = match to {
            TrimTo::Before(upto) => upto.map_or(hw, |o| o.min(hw)),
            TrimTo::Retention { ms, shard_bytes } => {
                let expired_before = ms.map(|ms| now_ms.saturating_sub(ms));
                let mut keep_from = start;
                let mut left = bytes;
                for kv in tree
                    .range(log_key(start)..log_key(hw))
                    .take(MAX_ENTRIES_PER_TRIM)
                {
                    let (k, v) = kv.map_err(|e| storage(&self.id, "read failed", e))?;
                    let e = decode_entry(&self.id, &k, v)?;
                    let (size, end) = (e.size(), e.end_offset());
                    if end > hw {
                        break;
                    }
                    let too_big = shard_bytes.is_some_and(|max| left.saturating_sub(size) >= max);
                    let too_old = !too_big
                        && expired_before.is_some_and(|before| {
                            // The batch's newest record decides; an unreadable batch is kept.
                            e.into_batch(&self.id, &segments).is_ok_and(|b| {
                                b.batch
                                    .iter()
                                    .map(|r| r.map(|r| r.timestamp_ms))
                                    .try_fold(0u64, |m, t| t.map(|t| m.max(t)))
                                    .is_ok_and(|newest| newest < before)
                            })
                        });
                    if !(too_big || too_old) {
                        break;
                    }
                    left = left.saturating_sub(size);
                    keep_from = end;
                }
                keep_from
            }
        };
        let mut inner = self.lock();
        self.check(&inner, Access::Read, inner.own.epoch)?;
        let target = target.min(inner.repl.hw.min(inner.next_offset));
        let deleted = self.cut_front(&mut inner, target)?;
        if deleted > 0 {
            // Wakes the followers' parked replica fetches, which carry the new start.
            self.end.send_modify(|_| {});
        }
        Ok(LogRange {
            start: inner.start,
            end: inner.next_offset,
            bytes: inner.bytes,
            deleted,
        })
    }

    /// Gives back the segment files' space below the first entry kept (at `start` or after).
    /// A failure only delays it: the next trim tries again.
    fn free_payloads_before(&self, inner: &mut Inner, tree: &sled::Tree, start: Offset) {
        let first_kept = match tree.range(log_key(start)..=log_key(u64::MAX)).next() {
            None => None,
            Some(kv) => match kv
                .map_err(|e| storage(&self.id, "read failed", e))
                .and_then(|(k, v)| decode_entry(&self.id, &k, v))
            {
                Ok(e) => match e.ptr() {
                    Some(p) => Some(p),
                    // Entries stored inline come before every one in the segment files: none
                    // of those is deleted yet.
                    None => return,
                },
                Err(e) => {
                    tracing::warn!(shard = %self.id, "cannot find the first entry kept: {e}");
                    return;
                }
            },
        };
        if let Some(segments) = inner.segments.as_mut() {
            if let Err(e) = segments.trim(first_kept) {
                tracing::warn!(shard = %self.id, "cannot give back the segment files' space: {e}");
            }
        }
    }

    /// Deletes the entries wholly below `target` (one that straddles it stays, and the log
    /// starts at its base). A `target` past the log end deletes everything and moves the end
    /// there: the log continues empty at `target`. Returns the records deleted.
    pub(super) fn cut_front(&self, inner: &mut Inner, target: Offset) -> Result<u64, ErrorKind> {
        if target <= inner.start {
            return Ok(0);
        }
        let tree = self.tree(inner)?;
        let mut ops: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        let mut removed_bytes = 0u64;
        let mut new_start = target.min(inner.next_offset);
        let mut removed = 0u64;
        for kv in tree.range(log_key(0)..log_key(target)) {
            let (k, v) = kv.map_err(|e| storage(&self.id, "read failed", e))?;
            let e = decode_entry(&self.id, &k, v)?;
            if e.end_offset() > target || ops.len() >= MAX_ENTRIES_PER_TRIM {
                new_start = e.base_offset;
                break;
            }
            removed_bytes += e.size();
            removed += u64::from(e.count);
            ops.push((k, sled::IVec::default()));
        }
        let reset = target > inner.next_offset && new_start == inner.next_offset;
        if reset {
            // The whole log is below the leader's start: continue empty there. Its epochs
            // describe entries that are gone.
            new_start = target;
            for (e, _) in inner.epochs.entries() {
                ops.push((epoch_key(e).as_slice().into(), sled::IVec::default()));
            }
            let hw = inner.repl.hw.max(target);
            ops.push((STATS_HW.into(), hw.to_be_bytes().as_slice().into()));
        }
        if new_start <= inner.start {
            return Ok(0);
        }
        let bytes = inner.bytes.saturating_sub(removed_bytes);
        ops.push((STATS_BYTES.into(), bytes.to_be_bytes().as_slice().into()));
        ops.push((
            STATS_START.into(),
            new_start.to_be_bytes().as_slice().into(),
        ));
        self.apply_to(&tree, &ops, "cannot delete the front of the log")?;
        self.free_payloads_before(inner, &tree, new_start);
        tracing::debug!(shard = %self.id, from = inner.start, to = new_start, removed, "log start moved");
        inner.start = new_start;
        inner.bytes = bytes;
        if reset {
            tracing::info!(shard = %self.id, start = new_start, "the leader deleted everything this replica held; continuing empty at its log start");
            inner.epochs = crate::replica::EpochCache::new();
            inner.next_offset = new_start;
            inner.durable = new_start;
            inner.stable_end = new_start;
            inner.repl.hw = inner.repl.hw.max(new_start);
            self.end.send_replace(new_start);
            self.durable.send_replace(new_start);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{batch, offsets_read, open_active};
    use super::*;
    use crate::shard::Limit;

    fn append(s: &Shard, values: &[&str]) {
        s.append(&batch(values), None, 1, &|| 0, &|| 0).unwrap();
    }

    #[test]
    fn purge_and_retention_delete_whole_entries_below_the_high_watermark_only() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let s = open_active(&db, dir.path());
        for i in 0..5 {
            let v = format!("{i}{}", "x".repeat(100));
            append(&s, &[&v, &v]);
        }
        s.mark_durable(10);
        assert_eq!(s.high_watermark(), 10);
        // Bytes: each entry is the same size; keep about two of them.
        let entry = s.report().bytes / 5;
        let r = s
            .trim(
                TrimTo::Retention {
                    ms: None,
                    shard_bytes: Some(2 * entry),
                },
                0,
            )
            .unwrap();
        assert_eq!((r.start, r.end, r.deleted), (6, 10, 6));
        assert_eq!(r.bytes, 2 * entry);
        assert_eq!(s.offsets(), (6, 10));
        // A consumer below the start is told, with where the log is now.
        match s.read(2, 1 << 20, 1 << 20, Limit::Committed) {
            Err(ErrorKind::OffsetOutOfRange { start, end, .. }) => {
                assert_eq!((start, end), (6, 10))
            }
            other => panic!("expected out of range, got {other:?}"),
        }
        assert_eq!(offsets_read(&s, 0, false).0, vec![6, 7, 8, 9]);
        // Everything is older than a minute from far in the future, but a purge to an offset
        // inside an entry keeps that entry.
        let r = s.trim(TrimTo::Before(Some(7)), 0).unwrap();
        assert_eq!((r.start, r.deleted), (6, 0));
        let far = u64::MAX / 2;
        let r = s
            .trim(
                TrimTo::Retention {
                    ms: Some(60_000),
                    shard_bytes: None,
                },
                far,
            )
            .unwrap();
        assert_eq!((r.start, r.end, r.bytes), (10, 10, 0));
        // Offsets are never reused, even after a reopen.
        append(&s, &["after"]);
        assert_eq!(s.offsets(), (10, 11));
        drop(s);
        let s = open_active(&db, dir.path());
        assert_eq!(s.offsets(), (10, 11));
    }

    #[test]
    fn a_purge_never_passes_the_high_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let s = open_active(&db, dir.path());
        append(&s, &["a"]);
        append(&s, &["b"]);
        let hw = s.high_watermark();
        let r = s.trim(TrimTo::Before(Some(1_000)), 0).unwrap();
        assert_eq!((r.start, r.end), (hw, 2));
        // The high watermark below the end (followers behind) bounds a purge, too.
        {
            let mut inner = s.lock();
            inner.repl.hw = 2;
        }
        append(&s, &["c"]);
        let mut inner = s.lock();
        inner.repl.hw = 2;
        drop(inner);
        let r = s.trim(TrimTo::Before(None), 0).unwrap();
        assert_eq!((r.start, r.end), (2, 3));
    }

    #[test]
    fn a_follower_whose_whole_log_is_below_the_start_continues_empty_there() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let s = open_active(&db, dir.path());
        append(&s, &["a", "b"]);
        {
            let mut inner = s.lock();
            assert_eq!(s.cut_front(&mut inner, 100).unwrap(), 2);
        }
        assert_eq!(s.offsets(), (100, 100));
        assert_eq!(s.report().bytes, 0);
        append(&s, &["c"]);
        assert_eq!(offsets_read(&s, 0, false), (vec![100], 101));
        drop(s);
        let s = open_active(&db, dir.path());
        assert_eq!(s.offsets(), (100, 101));
    }
}
