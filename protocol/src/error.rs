//! Typed errors. [`ErrorKind`] travels on the wire as the answer to a request; [`ClientError`] is
//! what a client call returns (a wire error, or a transport failure).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::types::{BrokerAddr, Epoch};

/// An error answer. Every variant's message says what happened and, where it can, what to do.
#[derive(Clone, Debug, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum ErrorKind {
    #[error("{shard} is not owned by this broker (routing epoch {epoch}); owner: {}", owner.as_ref().map_or("unknown".to_string(), |o| o.to_string()))]
    NotOwner {
        shard: String,
        epoch: Epoch,
        owner: Option<BrokerAddr>,
    },
    #[error("{shard} is moving to another broker; retry shortly")]
    Moving { shard: String },
    #[error(
        "unknown topic {topic:?} (create it with `shardq topic create {topic} --partitions N`)"
    )]
    UnknownTopic { topic: String },
    #[error(
        "member {member} is not in consumer group {group} (its session expired, it left, or the \
         router restarted); it gives up its shards and joins again"
    )]
    UnknownMember { group: String, member: String },
    #[error("unknown shard {shard}: {reason}")]
    UnknownShard { shard: String, reason: String },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("topic {topic:?} already exists with {partitions} partitions")]
    TopicExists { topic: String, partitions: u32 },
    #[error("record of {size} bytes is larger than the maximum of {max} bytes")]
    RecordTooLarge { size: u64, max: u64 },
    #[error("frame of {size} bytes is larger than the maximum of {max} bytes")]
    FrameTooLarge { size: u64, max: u64 },
    #[error("{what} is unavailable: {reason}")]
    Unavailable { what: String, reason: String },
    #[error("protocol version mismatch: client speaks {client}, server speaks {server}")]
    VersionMismatch { client: u32, server: u32 },
    #[error("producer {producer_id} sent sequence {got} to {shard}, expected {expected}")]
    OutOfOrderSequence {
        shard: String,
        producer_id: u64,
        expected: u64,
        got: u64,
    },
    #[error("timed out after {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    #[error("this node does not serve {request} requests")]
    Unsupported { request: String },
    #[error("storage error: {reason}")]
    Storage { reason: String },
    #[error("unknown broker {id}")]
    UnknownBroker { id: u32 },
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("internal error: {reason}")]
    Internal { reason: String },
    /// The broker id was removed from the cluster (drained or forced): the router keeps it
    /// retired and refuses its registration and heartbeats, whatever data it comes back with.
    #[error("broker {id} was removed from the cluster; start a new broker with a new id and an empty data dir")]
    RemovedBroker { id: u32 },
    /// A graceful removal of a broker that is down: its shards cannot drain until it returns, so
    /// nothing was recorded.
    #[error(
        "broker {id} is DOWN: its {shards} shard(s) cannot drain to other brokers until it \
         returns, so nothing was changed. Restart it and run `shardq broker remove {id}` again, \
         or run `shardq broker remove {id} --force` to remove it now, which DISCARDS the data of \
         the shards it holds (they are re-created empty on other brokers)"
    )]
    BrokerDown { id: u32, shards: u32 },
    /// The request needs a connection that proved the cluster secret.
    #[error("unauthorized: {request} {reason}")]
    Unauthorized { request: String, reason: String },
    /// The node holds as many connections as it may; authenticated peers still have a reserve.
    #[error("{node} refused the connection: it holds its limit of {limit} connections{}", if *reserved > 0 { format!(" ({reserved} more are kept for peers that hold the cluster secret)") } else { String::new() })]
    TooManyConnections {
        node: String,
        limit: u32,
        reserved: u32,
    },
    /// An admin action that is only for a broker that is down (a forced removal, a replacement)
    /// asked about one that is up; nothing was changed.
    #[error("broker {id} is UP: {reason}; nothing was changed")]
    BrokerUp { id: u32, reason: String },
    /// Another process (another UUID) registered or heartbeated as broker `id`: two processes
    /// would otherwise serve the same shards, one of them with empty logs.
    #[error(
        "broker {id} is bound to UUID {bound}; this process has UUID {offered}. Another process \
         is broker {id}: give this one its own --id and data dir. If broker {id}'s disk was lost, \
         run `shardq broker replace {id}` (its shards then start empty on this process)"
    )]
    IdentityConflict {
        id: u32,
        bound: String,
        offered: String,
    },
    /// The broker's data directory belongs to another cluster than this router's.
    #[error(
        "broker {id}'s data dir belongs to cluster {data_cluster}, but this router runs cluster \
         {router_cluster}: point it at its own cluster's router, or start it on an empty data dir"
    )]
    WrongCluster {
        id: u32,
        data_cluster: String,
        router_cluster: String,
    },
    /// The broker's disk is full: it refuses writes until space is freed, then resumes by itself
    /// (nothing acknowledged is lost). Retriable: a client retries until its deadline.
    #[error("broker {broker}: storage full ({reason})")]
    StorageFull { broker: u32, reason: String },
    /// A `durable` produce (or a group commit) to a shard whose in-sync replicas are fewer than
    /// the topic's `min_insync`: nothing was appended. Retriable: followers catch up, or the
    /// router re-replicates.
    #[error("{shard}: not enough in-sync replicas ({isr} in sync, the topic needs {min}); retry when replicas catch up, or produce with --acks leader")]
    NotEnoughReplicas { shard: String, isr: u32, min: u32 },
    /// A replication request named another leader epoch than the replica holds: the side with
    /// the older epoch learns the new one from the router and retries.
    #[error("{shard}: leader epoch {theirs} asked, this replica is at leader epoch {ours}")]
    LeaderEpochMismatch {
        shard: String,
        ours: u64,
        theirs: u64,
    },
    /// A read below the shard's log start: retention or a purge deleted those records. The
    /// reader moves to `start` (or the end), by its `--from` policy.
    #[error("{shard}: offset {offset} is no longer stored: retention or a purge deleted the records below {start} (the log holds {start}..{end})")]
    OffsetOutOfRange {
        shard: String,
        offset: u64,
        start: u64,
        end: u64,
    },
}

impl ErrorKind {
    /// Whether a client should refresh its routing table and try again (within its deadline).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ErrorKind::NotOwner { .. }
                | ErrorKind::Moving { .. }
                | ErrorKind::Unavailable { .. }
                | ErrorKind::Timeout { .. }
                | ErrorKind::ShuttingDown
                | ErrorKind::TooManyConnections { .. }
                | ErrorKind::StorageFull { .. }
                | ErrorKind::NotEnoughReplicas { .. }
                | ErrorKind::LeaderEpochMismatch { .. }
        )
    }
}

/// What a client call can fail with.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ClientError {
    #[error("{0}")]
    Server(ErrorKind),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connection to {addr} closed{}", if reason.is_empty() { String::new() } else { format!(": {reason}") })]
    Closed { addr: String, reason: String },
    #[error("request to {addr} timed out after {after_ms} ms")]
    Timeout { addr: String, after_ms: u64 },
    #[error("protocol error from {addr}: {reason}")]
    Protocol { addr: String, reason: String },
}

impl ClientError {
    /// Transport failures and retriable server answers are worth another try.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server(k) => k.is_retriable(),
            ClientError::Connect { .. }
            | ClientError::Closed { .. }
            | ClientError::Timeout { .. } => true,
            ClientError::Protocol { .. } => false,
        }
    }

    /// The server's typed answer, if that is what this is.
    pub fn kind(&self) -> Option<&ErrorKind> {
        match self {
            ClientError::Server(k) => Some(k),
            _ => None,
        }
    }
}

impl From<ErrorKind> for ClientError {
    fn from(k: ErrorKind) -> Self {
        ClientError::Server(k)
    }
}
