//! The leader-epoch cache of one replica's log (Kafka's leader-epoch checkpoint, KIP-101): for
//! every leader epoch that wrote into this log, the offset of its first entry.
//!
//! Entries are kept strictly increasing in both epoch and start offset, so every offset of the
//! log belongs to exactly one epoch (the last one starting at or before it). The rules that keep
//! it so:
//!
//! * a follower assigns the epoch of every entry it appends that is newer than the latest known
//!   one (at the entry's offset); a leader assigns its own epoch at its log end when it takes
//!   over, so that followers asking about the previous epoch learn where it ended here;
//! * a new epoch starting at the same offset as the latest one replaces it: the latest wrote
//!   nothing into this log (a leader that appended nothing), so nothing in the log is its;
//! * after the log's suffix from offset `o` is removed, [`EpochCache::truncate_from`]`(o)` drops
//!   every epoch starting at or after `o`. A replica that stops leading calls it with its log
//!   end too: that drops the epoch it led if it wrote nothing, so the cache again names only
//!   epochs that own entries, and the older epochs a new leader may still send are accepted.

use super::{LeaderEpoch, Offset};

/// Leader epoch -> start offset, for one replica's log. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    /// Strictly increasing in both fields.
    entries: Vec<(LeaderEpoch, Offset)>,
}

impl EpochCache {
    /// An empty cache (an empty log).
    pub fn new() -> Self {
        EpochCache::default()
    }

    /// A cache loaded from a checkpoint, as written out from [`EpochCache::entries`]. Entries
    /// that break the ordering rules are skipped as [`EpochCache::assign`] would refuse them.
    pub fn from_entries(entries: impl IntoIterator<Item = (LeaderEpoch, Offset)>) -> Self {
        let mut cache = EpochCache::new();
        for (epoch, start) in entries {
            cache.insert(epoch, start);
        }
        cache
    }

    /// The (epoch, start offset) pairs, oldest first: what a checkpoint stores.
    pub fn entries(&self) -> impl Iterator<Item = (LeaderEpoch, Offset)> + '_ {
        self.entries.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records that `epoch` starts at `start_offset` (the offset of its first entry, or the
    /// leader's log end when it takes over). Returns whether the cache changed.
    ///
    /// * An epoch already known (the latest one, or any older one) changes nothing: `false`.
    /// * A new epoch starting where the latest starts replaces the latest (which wrote nothing).
    /// * A new epoch older than the latest, or starting below the latest's start, is a logic
    ///   error of the caller (the log would have to be truncated first): `false`, the cache is
    ///   left as it is, and debug builds panic.
    pub fn assign(&mut self, epoch: LeaderEpoch, start_offset: Offset) -> bool {
        if self.entries.iter().any(|&(e, _)| e == epoch) {
            return false;
        }
        let ok = self.insert(epoch, start_offset);
        debug_assert!(
            ok,
            "epoch {epoch} at {start_offset} is older than, or starts before, the latest {:?}",
            self.latest()
        );
        ok
    }

    fn insert(&mut self, epoch: LeaderEpoch, start: Offset) -> bool {
        match self.entries.last().copied() {
            Some((latest, latest_start)) if epoch <= latest || start < latest_start => false,
            Some((_, latest_start)) if start == latest_start => {
                *self.entries.last_mut().expect("not empty") = (epoch, start);
                true
            }
            _ => {
                self.entries.push((epoch, start));
                true
            }
        }
    }

    /// The newest epoch and its start offset.
    pub fn latest(&self) -> Option<(LeaderEpoch, Offset)> {
        self.entries.last().copied()
    }

    /// The epoch of the entry at `offset` (the last epoch starting at or before it); `None`
    /// below the first known epoch. The caller keeps `offset` below the log end.
    pub fn epoch_at(&self, offset: Offset) -> Option<LeaderEpoch> {
        let i = self.entries.partition_point(|&(_, start)| start <= offset);
        i.checked_sub(1).map(|i| self.entries[i].0)
    }

    /// KIP-101's OffsetsForLeaderEpoch, answered from this log (whose end is `log_end`): the
    /// largest known epoch `<= requested`, and the end of it here (the start of the next known
    /// epoch, or `log_end` for the latest). `None` when `requested` is below every known epoch
    /// (or the cache is empty).
    pub fn end_offset_for(
        &self,
        requested: LeaderEpoch,
        log_end: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        let i = self.entries.partition_point(|&(e, _)| e <= requested);
        let (epoch, _) = *self.entries.get(i.checked_sub(1)?)?;
        let end = self.entries.get(i).map_or(log_end, |&(_, start)| start);
        Some((epoch, end))
    }

    /// The log's suffix from `offset` on was removed: forgets every epoch starting at or after
    /// `offset`.
    pub fn truncate_from(&mut self, offset: Offset) {
        let keep = self.entries.partition_point(|&(_, start)| start < offset);
        self.entries.truncate(keep);
    }

    /// The log's prefix below `offset` was removed (retention): forgets the epochs that ended
    /// before `offset`, and moves the start of the epoch covering `offset` up to it.
    pub fn truncate_before(&mut self, offset: Offset) {
        let covering = self.entries.partition_point(|&(_, start)| start <= offset);
        if covering == 0 {
            return;
        }
        self.entries.drain(..covering - 1);
        self.entries[0].1 = offset;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(LeaderEpoch, Offset)]) -> EpochCache {
        EpochCache::from_entries(entries.iter().copied())
    }

    #[test]
    fn assign_appends_new_epochs_and_ignores_known_ones() {
        let mut c = EpochCache::new();
        assert!(c.assign(1, 0));
        assert!(c.assign(3, 5));
        assert!(!c.assign(3, 5));
        assert!(!c.assign(3, 9), "a known epoch keeps its first start");
        assert!(
            !c.assign(1, 0),
            "an older known epoch is a no-op, not an error"
        );
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(1, 0), (3, 5)]);
        assert_eq!(c.latest(), Some((3, 5)));
    }

    #[test]
    fn a_new_epoch_at_the_latest_start_replaces_the_empty_latest() {
        let mut c = cache(&[(1, 0), (2, 4)]);
        assert!(c.assign(4, 4));
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(1, 0), (4, 4)]);
        // Epoch 2 wrote nothing here: asking for it answers with epoch 1, ending at 4.
        assert_eq!(c.end_offset_for(2, 9), Some((1, 4)));
        assert_eq!(c.end_offset_for(4, 9), Some((4, 9)));
    }

    #[test]
    #[cfg(not(debug_assertions))]
    fn out_of_order_assignments_leave_the_cache_unchanged() {
        let mut c = cache(&[(2, 4)]);
        assert!(!c.assign(1, 6));
        assert!(!c.assign(3, 3));
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(2, 4)]);
    }

    #[test]
    #[should_panic]
    #[cfg(debug_assertions)]
    fn an_older_epoch_is_a_logic_error() {
        cache(&[(2, 4)]).assign(1, 6);
    }

    #[test]
    #[should_panic]
    #[cfg(debug_assertions)]
    fn a_start_below_the_latest_is_a_logic_error() {
        cache(&[(2, 4)]).assign(3, 3);
    }

    #[test]
    fn from_entries_skips_what_assign_would_refuse() {
        let c = cache(&[(1, 0), (3, 5), (2, 7), (4, 4), (5, 5), (6, 9)]);
        assert_eq!(
            c.entries().collect::<Vec<_>>(),
            vec![(1, 0), (5, 5), (6, 9)]
        );
    }

    #[test]
    fn epoch_at_finds_the_covering_epoch() {
        let c = cache(&[(1, 2), (3, 5), (7, 6)]);
        assert_eq!(c.epoch_at(0), None);
        assert_eq!(c.epoch_at(2), Some(1));
        assert_eq!(c.epoch_at(4), Some(1));
        assert_eq!(c.epoch_at(5), Some(3));
        assert_eq!(c.epoch_at(6), Some(7));
        assert_eq!(c.epoch_at(100), Some(7));
        assert_eq!(EpochCache::new().epoch_at(0), None);
    }

    #[test]
    fn end_offset_for_answers_like_offsets_for_leader_epoch() {
        let c = cache(&[(1, 0), (3, 5), (7, 6)]);
        assert_eq!(c.end_offset_for(0, 10), None, "below every epoch");
        assert_eq!(c.end_offset_for(1, 10), Some((1, 5)));
        assert_eq!(
            c.end_offset_for(2, 10),
            Some((1, 5)),
            "unknown: the largest below"
        );
        assert_eq!(c.end_offset_for(3, 10), Some((3, 6)));
        assert_eq!(c.end_offset_for(6, 10), Some((3, 6)));
        assert_eq!(
            c.end_offset_for(7, 10),
            Some((7, 10)),
            "the latest ends at the log end"
        );
        assert_eq!(c.end_offset_for(9, 10), Some((7, 10)));
        assert_eq!(EpochCache::new().end_offset_for(3, 0), None);
    }

    #[test]
    fn truncate_from_drops_epochs_starting_at_or_after() {
        let mut c = cache(&[(1, 0), (3, 5), (7, 6)]);
        c.truncate_from(6);
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(1, 0), (3, 5)]);
        c.truncate_from(5);
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(1, 0)]);
        c.truncate_from(3);
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(1, 0)]);
        c.truncate_from(0);
        assert!(c.is_empty());
    }

    #[test]
    fn truncate_before_keeps_and_rebases_the_covering_epoch() {
        let mut c = cache(&[(1, 0), (3, 5), (7, 8)]);
        c.truncate_before(0);
        assert_eq!(
            c.entries().collect::<Vec<_>>(),
            vec![(1, 0), (3, 5), (7, 8)]
        );
        c.truncate_before(6);
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(3, 6), (7, 8)]);
        c.truncate_before(8);
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(7, 8)]);
        c.truncate_before(20);
        assert_eq!(c.entries().collect::<Vec<_>>(), vec![(7, 20)]);
        let mut c = cache(&[(2, 10)]);
        c.truncate_before(4);
        assert_eq!(
            c.entries().collect::<Vec<_>>(),
            vec![(2, 10)],
            "nothing covers 4"
        );
    }
}
