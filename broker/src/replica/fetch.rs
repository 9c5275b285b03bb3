//! Divergence check (placeholder until the model branch lands).
use shardq_protocol::Offset;

use super::{EpochCache, LeaderEpoch};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchCheck {
    Ok,
    Diverging {
        epoch: LeaderEpoch,
        end_offset: Offset,
    },
}

pub fn check_fetch(
    leader: &EpochCache,
    leader_end: Offset,
    fetch_offset: Offset,
    last_fetched_epoch: Option<LeaderEpoch>,
) -> FetchCheck {
    let Some(last) = last_fetched_epoch else {
        return FetchCheck::Ok;
    };
    match leader.end_offset_for(last, leader_end) {
        Some((e, end)) if e == last && end >= fetch_offset => FetchCheck::Ok,
        Some((e, end)) => FetchCheck::Diverging {
            epoch: e,
            end_offset: end,
        },
        None if last == 0 && fetch_offset <= leader_end => FetchCheck::Ok,
        None => FetchCheck::Diverging {
            epoch: 0,
            end_offset: 0,
        },
    }
}

pub fn truncation_point(
    follower: &EpochCache,
    follower_end: Offset,
    diverging: (LeaderEpoch, Offset),
) -> Offset {
    let (epoch, end) = diverging;
    match follower.end_offset_for(epoch, follower_end) {
        Some((e, own_end)) if e == epoch => own_end.min(end),
        Some((_, own_end)) => own_end.min(end),
        None => 0,
    }
}
