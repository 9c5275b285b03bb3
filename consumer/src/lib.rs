//! shardq consumer: the [`Consumer`] library (concurrent long-poll fetches over a group's shards,
//! exactly-once hand-out per consumer, offset commits) and the `runconsume` command's logic in
//! [`cli`].

pub mod cli;
pub mod consumer;
pub mod start;

pub use consumer::{resolve, ConsumedRecord, Consumer, ConsumerConfig, ConsumerError, StartFrom};
