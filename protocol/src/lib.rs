//! The shardq wire protocol: shard names, record batches, request/response messages, typed errors,
//! the length-delimited bincode frame codec, a multiplexed client [`Connection`] and the generic
//! request server every shardq node (broker, router) runs.
//!
//! Everything that crosses a socket is defined here, so the broker, router and clients can only
//! disagree about behaviour, never about bytes.

pub mod auth;
pub mod batch;
#[cfg(feature = "cli")]
pub mod cli_args;
#[cfg(feature = "cli")]
pub mod client_metrics;
pub mod cluster;
pub mod codec;
pub mod connection;
pub mod error;
pub mod exposition;
#[cfg(feature = "cli")]
pub mod logging;
pub mod message;
pub mod server;
pub mod types;

pub use auth::Secret;
pub use batch::{BatchBuilder, Record, RecordBatch, StoredBatch};
pub use cluster::ClusterClient;
pub use codec::{FrameCodec, DEFAULT_MAX_FRAME};
pub use connection::{Connection, ConnectionConfig};
pub use error::{ClientError, ErrorKind};
pub use message::*;
pub use server::{serve, ServerConfig, Service, ServiceFuture};
pub use tokio_util::sync::CancellationToken;
pub use types::*;

/// Bumped on any incompatible change to the messages below; the handshake refuses a mismatch.
pub const PROTOCOL_VERSION: u32 = 7;

/// Default TCP port of the router (the address clients pass as `--broker HOST`).
pub const DEFAULT_ROUTER_PORT: u16 = 7400;
/// Default TCP port of the first broker; `shardq up` numbers further brokers upward from here.
pub const DEFAULT_BROKER_PORT: u16 = 7401;
