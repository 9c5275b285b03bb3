//! A reader whose position fell below a shard's log start (retention or a purge deleted the
//! records it had not read yet) moves on by its `--from` policy, and says how many it skipped.

use shardq_protocol::{Offset, ShardId};
use tracing::warn;

use super::StartFrom;

/// Where the reader goes: the log start for `earliest`, an offset or a timestamp (the oldest
/// record left is the nearest to what it asked for), the end for `latest`.
pub(super) fn reset_position(from: StartFrom, start: Offset, end: Offset) -> Offset {
    match from {
        StartFrom::Latest => end.max(start),
        StartFrom::Earliest | StartFrom::Timestamp(_) => start,
        StartFrom::Offset(o) => o.clamp(start, end.max(start)),
    }
}

/// Moves a reader at `position` past the deleted records and warns; returns the new position
/// and the records skipped.
pub(super) fn skip_deleted(
    shard: &ShardId,
    from: StartFrom,
    position: Offset,
    start: Offset,
    end: Offset,
) -> (Offset, u64) {
    let to = reset_position(from, start, end).max(position);
    let skipped = to - position;
    warn!(
        %shard,
        position,
        log_start = start,
        resume_at = to,
        skipped,
        "retention or a purge deleted records before they were read: skipped {skipped} \
         record(s) of {shard} ({position}..{to}), resuming at {to} (--from {from})"
    );
    (to, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_policy_lands_inside_the_log() {
        assert_eq!(reset_position(StartFrom::Earliest, 100, 150), 100);
        assert_eq!(reset_position(StartFrom::Timestamp(5), 100, 150), 100);
        assert_eq!(reset_position(StartFrom::Latest, 100, 150), 150);
        assert_eq!(reset_position(StartFrom::Offset(7), 100, 150), 100);
        assert_eq!(reset_position(StartFrom::Offset(120), 100, 150), 120);
        assert_eq!(reset_position(StartFrom::Offset(900), 100, 150), 150);
        // A purged shard: start and end meet.
        assert_eq!(reset_position(StartFrom::Latest, 150, 150), 150);
        let s = ShardId::new("t", 1);
        assert_eq!(
            skip_deleted(&s, StartFrom::Earliest, 40, 100, 150),
            (100, 60)
        );
        // Never backwards.
        assert_eq!(
            skip_deleted(&s, StartFrom::Earliest, 120, 100, 150),
            (120, 0)
        );
    }
}
