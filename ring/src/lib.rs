//! `shardq-ring`: consistent-hash ring with virtual nodes, pluggable hash functions and
//! bounded-load placement, plus the movement/balance accounting behind `shardq ring analyze`.
//!
//! The crate is pure: no I/O, no async, no randomness, and no dependence on `HashMap` iteration
//! order. Every router computing an assignment from the same members, config and shard set gets
//! the same answer.
//!
//! * [`Ring`] — tokens, `owner`, `replicas`, `place` (plain or bounded-load).
//! * [`diff`], [`moved_fraction`], [`balance`] — what moves and how even the result is.
//! * [`analyze`] — parameter sweeps for the CLI.

mod assignment;
mod hash;
mod placement;
mod ring;

pub mod analyze;

pub use assignment::{
    balance, diff, diff_replicas, moved_fraction, Assignment, BalanceStats, Move,
    ReplicaAssignment, ReplicaMove,
};
pub use hash::{fnv1a64, murmur3_x64_128, HashFn};
pub use ring::{
    token_bytes, Member, PlacementMode, Ring, RingConfig, DEFAULT_EPS, DEFAULT_VNODES, MAX_TOKENS,
};

/// A broker's identity on the ring.
pub type BrokerId = u32;

/// Errors from parsing ring parameters or validating a member list.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RingError {
    /// Unrecognised hash function name.
    #[error("unknown hash function '{0}' (valid: xxh3, fnv1a, sip13 (alias siphash), murmur3)")]
    UnknownHash(String),
    /// Unrecognised or malformed placement mode.
    #[error("invalid placement mode '{0}' (valid: plain, bounded, bounded:<eps> with eps >= 0, e.g. bounded:0.25)")]
    BadMode(String),
    /// The same broker id appears more than once (only reported by [`Ring::try_new`]).
    #[error("broker {0} listed more than once")]
    DuplicateMember(BrokerId),
    /// vnodes x total weight is larger than [`MAX_TOKENS`] (only reported by [`Ring::try_new`]).
    #[error(
        "ring would have {tokens} tokens (vnodes x total weight), more than the limit {limit}"
    )]
    TooManyTokens {
        /// Requested token count.
        tokens: u64,
        /// The limit, [`MAX_TOKENS`].
        limit: u64,
    },
}
