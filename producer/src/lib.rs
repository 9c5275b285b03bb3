//! shardq producer: the [`Producer`] library (per-shard batching, one batch in flight per shard,
//! idempotent retries that follow shard moves) and the `runproduce` command's logic in [`cli`].

pub mod cli;
pub mod logfile;
pub mod partitioner;
pub mod producer;

pub use partitioner::{key_partition, PartitionContext, PartitionStrategy, Partitioner};
pub use producer::{
    Delivery, DeliveryFuture, Producer, ProducerConfig, ProducerError, ProducerStats,
};
