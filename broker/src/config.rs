//! Broker configuration: identity, addresses, data directory, durability policy and limits.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use shardq_protocol::cli_args::Listener;
use shardq_protocol::{BrokerId, DEFAULT_MAX_FRAME};

/// When appended data is flushed to disk, and so what an acknowledgement promises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Flush before acknowledging; concurrent appends share one flush (group commit).
    Always,
    /// Flush every interval in the background; acknowledgements do not wait.
    Interval(Duration),
    /// Never flush explicitly (the OS and sled decide); fastest, loses recent data on a crash.
    Never,
}

impl Default for FsyncPolicy {
    fn default() -> Self {
        FsyncPolicy::Interval(Duration::from_millis(100))
    }
}

/// A policy string that is not `always`, `never` or `interval=MS`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fsync policy {input:?}: {reason} (expected `always`, `never` or `interval=MS`, e.g. interval=100)")]
pub struct ParseFsyncError {
    input: String,
    reason: String,
}

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseFsyncError {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        match s.trim() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => {
                let ms = other
                    .strip_prefix("interval=")
                    .ok_or_else(|| err("unknown policy"))?;
                let ms: u64 = ms
                    .trim_end_matches("ms")
                    .parse()
                    .map_err(|_| err("the interval is not a whole number of milliseconds"))?;
                if ms == 0 {
                    return Err(err("the interval must be at least 1 ms (use `always` to flush before every ack)"));
                }
                Ok(FsyncPolicy::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval={}", d.as_millis()),
        }
    }
}

/// Largest record (key + value) accepted by default.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// Default heartbeat interval to the router.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(250);
/// A follower not caught up with its leader for this long leaves the ISR.
pub const DEFAULT_REPLICA_LAG_MAX_MS: u64 = 5_000;

/// Everything [`crate::start`] needs.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub id: BrokerId,
    /// Address to bind; `127.0.0.1:0` picks a free port.
    pub listen: String,
    /// Address the router hands to clients; defaults to the bound address.
    pub advertise: Option<String>,
    /// Directory of this broker's sled database.
    pub data_dir: PathBuf,
    /// Router address; `None` runs standalone (accepts `AssignShards` from anyone, no heartbeats).
    pub router: Option<String>,
    /// Relative share of shards (the ring gives this broker `vnodes x weight` tokens).
    pub weight: u32,
    pub fsync: FsyncPolicy,
    pub heartbeat: Duration,
    /// A follower behind its leader for this long leaves the ISR.
    pub replica_lag_max_ms: u64,
    pub max_frame: usize,
    pub max_record_bytes: usize,
    /// Bytes per second one incoming shard move may copy (None: unthrottled).
    pub move_rate_limit: Option<u64>,
    /// Writes are refused (StorageFull) while the data dir's filesystem has less free space
    /// than this, and resume by themselves once it is back; 0 turns the reserve off.
    pub min_free_bytes: u64,
    /// The cluster secret, the open data plane and the connection limits of the listener; the
    /// secret is also what this broker proves to the router and to other brokers.
    pub listener: Listener,
    /// Address of the Prometheus `/metrics` endpoint (`127.0.0.1:0` picks a free port; see
    /// [`crate::BrokerHandle::metrics_addr`]); None: none.
    pub metrics: Option<String>,
}

impl BrokerConfig {
    /// A standalone broker on an ephemeral loopback port with default policy and limits.
    pub fn new(id: BrokerId, data_dir: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            id,
            listen: "127.0.0.1:0".into(),
            advertise: None,
            data_dir: data_dir.into(),
            router: None,
            weight: 1,
            fsync: FsyncPolicy::default(),
            heartbeat: DEFAULT_HEARTBEAT,
            replica_lag_max_ms: DEFAULT_REPLICA_LAG_MAX_MS,
            max_frame: DEFAULT_MAX_FRAME,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            move_rate_limit: None,
            min_free_bytes: crate::storage::DEFAULT_MIN_FREE_BYTES,
            listener: Listener::default(),
            metrics: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policies_parse_and_print() {
        for (s, p) in [
            ("always", FsyncPolicy::Always),
            ("never", FsyncPolicy::Never),
            (
                "interval=100",
                FsyncPolicy::Interval(Duration::from_millis(100)),
            ),
            (
                "interval=5ms",
                FsyncPolicy::Interval(Duration::from_millis(5)),
            ),
        ] {
            assert_eq!(s.parse::<FsyncPolicy>(), Ok(p));
        }
        assert_eq!(FsyncPolicy::default().to_string(), "interval=100");
        for bad in ["sometimes", "interval=", "interval=x", "interval=0", ""] {
            let e = bad.parse::<FsyncPolicy>().unwrap_err().to_string();
            assert!(e.contains("interval=MS"), "{e}");
        }
    }
}
