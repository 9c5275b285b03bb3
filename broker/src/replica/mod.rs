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

pub mod controller;
pub mod epochs;
pub mod fetch;
pub mod leader;

pub use controller::{DownOutcome, Election, PartitionState, Reject};
pub use epochs::EpochCache;
pub use fetch::{check_fetch, check_leader_epoch, truncation_point, EpochMismatch, FetchCheck};
pub use leader::{AckCheck, IsrProposal, LeaderState, Progress};
pub use shardq_protocol::{BrokerId, Offset};

/// Bumped by the controller on every leader change of a shard; every stored batch carries the
/// epoch of the leader that wrote it.
pub type LeaderEpoch = u64;
