//! What a leader checks on a follower's fetch, and where a follower cuts its log when the two
//! logs diverge (KIP-320: the divergence travels in the fetch answer itself, no separate
//! OffsetsForLeaderEpoch round trip).
//!
//! A follower's fetch carries the leader epoch it believes current, its log end (the fetch
//! offset) and the epoch of its last entry. The leader first compares the epochs
//! ([`check_leader_epoch`]), then the logs ([`check_fetch`]). On [`FetchCheck::Diverging`] the
//! follower truncates to [`truncation_point`] and fetches again with its new end and last epoch;
//! it repeats until the leader answers [`FetchCheck::Ok`]. Every round cuts at or above the first
//! offset where the two logs differ (so never below what both hold, hence never below the
//! committed prefix, which the leader holds) and strictly below the previous end, so the rounds
//! end; the last one cuts exactly at the first difference.
//!
//! The follower itself applies only the answer to its latest fetch request (one fetch in flight,
//! or numbered requests), and only while it still expects the same leader and epoch and its log
//! end is still the answer's fetch offset. The log end alone is not enough: a late answer to an
//! older request may find the log truncated and grown back to the same end since, and cut it
//! below what the leader has since recorded as the follower's end (the simulation found this).

use super::epochs::EpochCache;
use super::{LeaderEpoch, Offset};

/// Why a replica refuses a request made for another leader epoch than its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochMismatch {
    /// The requester's epoch is older: it has to learn the current leader from the controller.
    Fenced { current: LeaderEpoch },
    /// The requester's epoch is newer: this replica has not learned it yet; retry later.
    Unknown { current: LeaderEpoch },
}

/// The leader's first check of a fetch: its epoch must be exactly the leader's own.
pub fn check_leader_epoch(
    current: LeaderEpoch,
    requested: LeaderEpoch,
) -> Result<(), EpochMismatch> {
    match requested.cmp(&current) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Less => Err(EpochMismatch::Fenced { current }),
        std::cmp::Ordering::Greater => Err(EpochMismatch::Unknown { current }),
    }
}

/// The leader's verdict on a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchCheck {
    /// The follower's log is a prefix of the leader's: serve from the fetch offset, which is
    /// the follower's end (see [`super::LeaderState::on_fetch`]).
    Ok,
    /// The logs differ below the fetch offset: the leader's largest epoch not above the
    /// follower's last one, and where that epoch ends in the leader's log. The follower cuts at
    /// [`truncation_point`] and fetches again.
    Diverging {
        epoch: LeaderEpoch,
        end_offset: Offset,
    },
}

/// Checks a fetch against the leader's log (its epoch cache and end). `fetch_offset` is the
/// follower's log end, `last_fetched_epoch` the epoch of the follower's last entry (`None` for
/// an empty log).
///
/// Diverging when the leader does not know that epoch (its largest one below is answered), when
/// the epoch ends in the leader's log before `fetch_offset`, or when `fetch_offset` is past the
/// leader's end. When the leader knows no epoch that old, the answer is the follower's epoch
/// ending at the leader's first start offset (0 for a log that starts at 0): nothing below it is
/// shared.
pub fn check_fetch(
    leader: &EpochCache,
    leader_end: Offset,
    fetch_offset: Offset,
    last_fetched_epoch: Option<LeaderEpoch>,
) -> FetchCheck {
    let Some(last) = last_fetched_epoch else {
        if fetch_offset <= leader_end {
            return FetchCheck::Ok;
        }
        // A follower claiming entries without any epoch: nothing can be trusted.
        return FetchCheck::Diverging {
            epoch: leader.latest().map_or(0, |(e, _)| e),
            end_offset: 0,
        };
    };
    match leader.end_offset_for(last, leader_end) {
        None => FetchCheck::Diverging {
            epoch: last,
            end_offset: leader.entries().next().map_or(0, |(_, start)| start),
        },
        Some((epoch, end)) if epoch != last || end < fetch_offset || fetch_offset > leader_end => {
            FetchCheck::Diverging {
                epoch,
                end_offset: end.min(leader_end),
            }
        }
        Some(_) => FetchCheck::Ok,
    }
}

/// Where a follower cuts its log (keeps `[0, point)`) on a [`FetchCheck::Diverging`] answer
/// `(epoch, end_offset)` from the leader:
///
/// * it knows `epoch`: both logs hold the same entries of that epoch up to where the shorter run
///   ends, so it cuts at `min(its end of epoch, end_offset)`: the exact first difference;
/// * it does not know `epoch` but an older one: its entries after that older epoch belong to
///   epochs newer than `epoch`, which the leader does not have at these offsets, so it cuts where
///   its older epoch ends (and not past `end_offset`); the next fetch, with that older epoch as
///   its last, walks back further if needed;
/// * it knows no epoch that old: none of its entries is the leader's: 0.
///
/// Never above `follower_end`.
pub fn truncation_point(
    follower: &EpochCache,
    follower_end: Offset,
    (epoch, end_offset): (LeaderEpoch, Offset),
) -> Offset {
    match follower.end_offset_for(epoch, follower_end) {
        Some((_, own_end)) => own_end.min(end_offset).min(follower_end),
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(LeaderEpoch, Offset)]) -> EpochCache {
        EpochCache::from_entries(entries.iter().copied())
    }

    #[test]
    fn epochs_must_match_exactly() {
        assert_eq!(check_leader_epoch(5, 5), Ok(()));
        assert_eq!(
            check_leader_epoch(5, 4),
            Err(EpochMismatch::Fenced { current: 5 })
        );
        assert_eq!(
            check_leader_epoch(5, 6),
            Err(EpochMismatch::Unknown { current: 5 })
        );
    }

    #[test]
    fn a_prefix_of_the_leader_is_ok() {
        let leader = cache(&[(1, 0), (3, 5), (4, 8)]);
        assert_eq!(check_fetch(&leader, 10, 0, None), FetchCheck::Ok);
        assert_eq!(check_fetch(&leader, 10, 3, Some(1)), FetchCheck::Ok);
        assert_eq!(check_fetch(&leader, 10, 5, Some(1)), FetchCheck::Ok);
        assert_eq!(check_fetch(&leader, 10, 8, Some(3)), FetchCheck::Ok);
        assert_eq!(check_fetch(&leader, 10, 10, Some(4)), FetchCheck::Ok);
    }

    #[test]
    fn divergence_is_reported_with_the_leaders_epoch_end() {
        let leader = cache(&[(1, 0), (3, 5), (4, 8)]);
        // More of epoch 1 than the leader has.
        assert_eq!(
            check_fetch(&leader, 10, 7, Some(1)),
            FetchCheck::Diverging {
                epoch: 1,
                end_offset: 5
            }
        );
        // An epoch the leader never saw: its largest below.
        assert_eq!(
            check_fetch(&leader, 10, 7, Some(2)),
            FetchCheck::Diverging {
                epoch: 1,
                end_offset: 5
            }
        );
        // Past the leader's end in its own latest epoch.
        assert_eq!(
            check_fetch(&leader, 10, 11, Some(4)),
            FetchCheck::Diverging {
                epoch: 4,
                end_offset: 10
            }
        );
        // Older than anything the leader knows.
        let leader = cache(&[(2, 0)]);
        assert_eq!(
            check_fetch(&leader, 4, 3, Some(1)),
            FetchCheck::Diverging {
                epoch: 1,
                end_offset: 0
            }
        );
        // Entries but no epoch, past the leader's end.
        assert_eq!(
            check_fetch(&leader, 4, 6, None),
            FetchCheck::Diverging {
                epoch: 2,
                end_offset: 0
            }
        );
    }

    #[test]
    fn truncation_cuts_at_the_first_difference_when_the_epoch_is_known() {
        // Follower: epoch 1 up to 7. Leader: epoch 1 up to 5, then 3.
        let follower = cache(&[(1, 0)]);
        assert_eq!(truncation_point(&follower, 7, (1, 5)), 5);
        // The follower's run of the epoch is the shorter one.
        let follower = cache(&[(1, 0), (2, 4)]);
        assert_eq!(truncation_point(&follower, 6, (1, 5)), 4);
        // Never above the follower's end.
        assert_eq!(truncation_point(&cache(&[(4, 0)]), 3, (4, 10)), 3);
    }

    #[test]
    fn truncation_walks_back_through_epochs_the_leader_never_had() {
        // Leader: 1 [0,2), 3 [2,4), 5 [4,..). Follower: 1 [0,10), 4 [10,12).
        let leader = cache(&[(1, 0), (3, 2), (5, 4)]);
        let mut follower = cache(&[(1, 0), (4, 10)]);
        let mut end = 12;
        let mut rounds = 0;
        loop {
            let last = follower.epoch_at(end - 1);
            match check_fetch(&leader, 6, end, last) {
                FetchCheck::Ok => break,
                FetchCheck::Diverging { epoch, end_offset } => {
                    let point = truncation_point(&follower, end, (epoch, end_offset));
                    assert!(point < end, "every round makes progress");
                    end = point;
                    follower.truncate_from(end);
                    rounds += 1;
                }
            }
        }
        assert_eq!(end, 2, "epoch 1 is shared up to 2");
        assert_eq!(rounds, 2);
        // A follower whose epochs are all newer than the answered one shares nothing.
        assert_eq!(truncation_point(&cache(&[(4, 0)]), 3, (2, 6)), 0);
    }
}
