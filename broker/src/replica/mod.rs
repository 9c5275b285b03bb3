//! Replication with failover (issue 9), the pure part: no I/O, no clock, no async. The broker
//! and the router drive these types with what they receive and persist what they return.
//!
//! * [`epochs`]: a log's leader-epoch cache (epoch -> start offset, KIP-101).
//! * [`fetch`]: the leader's check of a follower's fetch and the follower's truncation point on
//!   divergence (KIP-320: by epoch, never by the follower's own high watermark).
//! * [`leader`]: the leader's view of one shard: follower progress, high watermark over the
//!   maximal ISR (KIP-497), acks under `min_insync`, ISR change proposals.
//! * [`controller`]: the router's decisions per shard: elections from the ISR, brokers going
//!   down, compare-and-set ISR changes from the leader.
//!
//! What the callers must do besides, for the guarantees to hold (the simulation does it, and
//! breaks without each):
//!
//! * a leader assigns its epoch in its epoch cache at its log end when it takes over, and a
//!   replica that stops leading (or starts) calls [`EpochCache::truncate_from`] with its log
//!   end, dropping an epoch it led without writing anything;
//! * a follower truncates only on a [`FetchCheck::Diverging`] answer, to [`truncation_point`],
//!   never to its own high watermark; it applies only the answer to its latest fetch, while it
//!   still expects the same leader and epoch and its log still ends at the fetch offset;
//! * a leader serves a fetch only in the follower's epoch ([`check_leader_epoch`]), then
//!   [`check_fetch`], and calls [`LeaderState::on_fetch`] only when that says Ok;
//! * an ISR proposal ends at the leader only by [`LeaderState::isr_confirmed`] or by
//!   [`LeaderState::update_from_controller`] with a newer version, never by a refusal; the
//!   router pushes the shard's state to its leader after every change, refusals included;
//! * a broker that restarts is a new incarnation: the router handles it as
//!   [`PartitionState::broker_down`] first, then elects if the shard is offline.
//!
//! How the parts fit, and what they guarantee together, is checked by a deterministic simulation
//! of 3 to 5 replicas (`sim.rs`, a property test): no acknowledged or exposed entry is ever
//! lost or changed, whatever the crashes, pauses, delays and lost messages; `scenarios.rs`
//! replays KIP-101's two cases of divergence by hand.

pub mod controller;
pub mod epochs;
pub mod fetch;
pub mod leader;

#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod sim;

pub use controller::{may_join, DownOutcome, Election, PartitionState, Reject};
pub use epochs::EpochCache;
pub use fetch::{check_fetch, check_leader_epoch, truncation_point, EpochMismatch, FetchCheck};
pub use leader::{AckCheck, IsrProposal, LeaderState, Progress};
pub use shardq_protocol::{BrokerId, Offset};

/// Bumped by the controller on every leader change of a shard; every stored batch carries the
/// epoch of the leader that wrote it.
pub type LeaderEpoch = u64;
