//! Replication logic without I/O (placeholder until the model branch lands).
pub mod epochs;
pub use epochs::EpochCache;
pub type LeaderEpoch = u64;
pub mod leader;
pub use leader::{AckCheck, LeaderState};
pub mod fetch;
pub use fetch::{check_fetch, truncation_point, FetchCheck};
