//! Domain names shared by every crate: shards (`topic:partition`), offsets, epochs, broker ids,
//! and the parsing/validation rules users see at the CLI.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub type BrokerId = u32;
pub type Offset = u64;
/// Routing epoch: bumped by the router every time any shard changes owner or a topic is created.
pub type Epoch = u64;
/// Leader epoch of one shard: bumped by the router every time the shard's leader changes. Every
/// stored batch carries the leader epoch that appended it, so replicas can find where their logs
/// diverge (Kafka's KIP-101).
pub type LeaderEpoch = u64;
/// Most replicas a shard may have.
pub const MAX_REPLICATION_FACTOR: u32 = 5;

/// Longest topic name accepted.
pub const MAX_TOPIC_LEN: usize = 128;
/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u32 = 10_000;

/// Checks a topic name against `[A-Za-z0-9_.-]{1,128}`, not `.` or `..` and not starting with `-`;
/// the error says what is wrong. Every path that takes a topic name (topic create, produce and
/// consume specs, the verifier) checks it here.
pub fn validate_topic(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("topic name is empty".into());
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic name is {} bytes long, at most {MAX_TOPIC_LEN} allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "topic name {name:?} contains {c:?}; allowed are A-Z a-z 0-9 _ . -"
        ));
    }
    // Within the allowed set, these would name the current or parent directory wherever a
    // topic becomes a path, or read as an option on the command lines that take a topic.
    if name == "." || name == ".." {
        return Err(format!(
            "topic name {name:?} is reserved (it names a directory); pick another name"
        ));
    }
    if name.starts_with('-') {
        return Err(format!(
            "topic name {name:?} starts with '-', which reads as a command-line option; \
             start it with a letter, digit, '_' or '.'"
        ));
    }
    Ok(())
}

/// One partition of one topic: the unit of placement, storage and migration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId {
    pub topic: String,
    /// Numbered from 1 (`P1`).
    pub partition: u32,
}

impl ShardId {
    pub fn new(topic: impl Into<String>, partition: u32) -> Self {
        ShardId {
            topic: topic.into(),
            partition,
        }
    }

    /// The key hashed onto the ring and used in logs: `T1:P2`.
    pub fn key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:P{}", self.topic, self.partition)
    }
}

/// Parses a partition written `P3`, `p3` or `3`.
pub fn parse_partition(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix(['P', 'p']).unwrap_or(s);
    let n: u32 = digits
        .parse()
        .map_err(|_| format!("partition {s:?} is not P<number> (e.g. P1) or a number"))?;
    if n == 0 {
        return Err(format!("partition {s:?}: partitions are numbered from 1"));
    }
    if n > MAX_PARTITIONS {
        return Err(format!(
            "partition {s:?}: at most {MAX_PARTITIONS} partitions"
        ));
    }
    Ok(n)
}

impl FromStr for ShardId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.parse::<ShardSpec>()? {
            ShardSpec::One(id) => Ok(id),
            ShardSpec::All(t) => Err(format!(
                "{t}:* names every partition; a single shard was expected"
            )),
        }
    }
}

/// What a user names on the command line: one shard (`T1:P1`, `T1:1`) or all of a topic (`T1:*`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ShardSpec {
    One(ShardId),
    All(String),
}

impl ShardSpec {
    pub fn topic(&self) -> &str {
        match self {
            ShardSpec::One(id) => &id.topic,
            ShardSpec::All(t) => t,
        }
    }

    /// Whether this spec covers `shard`.
    pub fn covers(&self, shard: &ShardId) -> bool {
        match self {
            ShardSpec::One(id) => id == shard,
            ShardSpec::All(t) => *t == shard.topic,
        }
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShardSpec::One(id) => id.fmt(f),
            ShardSpec::All(t) => write!(f, "{t}:*"),
        }
    }
}

impl FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (topic, part) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not topic:partition (e.g. T1:P1 or T1:*)"))?;
        validate_topic(topic).map_err(|e| format!("{s:?}: {e}"))?;
        if part == "*" {
            return Ok(ShardSpec::All(topic.to_string()));
        }
        let partition = parse_partition(part).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(ShardSpec::One(ShardId::new(topic, partition)))
    }
}

/// Where a broker listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BrokerAddr {
    pub id: BrokerId,
    pub addr: String,
}

impl fmt::Display for BrokerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "broker {} at {}", self.id, self.addr)
    }
}

/// Adds `default_port` to `HOST` when the user gave no port; `HOST:PORT` and `[v6]:PORT` pass through.
pub fn with_default_port(addr: &str, default_port: u16) -> String {
    let has_port = if let Some(rest) = addr.strip_prefix('[') {
        rest.contains("]:")
    } else {
        addr.rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if has_port {
        addr.to_string()
    } else {
        format!("{addr}:{default_port}")
    }
}

/// A random (version 4) UUID in its usual text form, from the OS's randomness: broker and
/// cluster identities must differ between any two data directories, so no clock or counter.
pub fn random_uuid() -> std::io::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// Whether `s` is a UUID in the text form [`random_uuid`] writes (any version; lower or upper
/// case hex).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs_parse() {
        assert_eq!(
            "T1:P2".parse::<ShardSpec>().unwrap(),
            ShardSpec::One(ShardId::new("T1", 2))
        );
        assert_eq!(
            "T1:2".parse::<ShardSpec>().unwrap(),
            ShardSpec::One(ShardId::new("T1", 2))
        );
        assert_eq!(
            "a.b-c_d:*".parse::<ShardSpec>().unwrap(),
            ShardSpec::All("a.b-c_d".into())
        );
        for bad in [
            "T1",
            "T1:P0",
            "T1:Px",
            ":P1",
            "T 1:P1",
            "T1:",
            "T1:P99999999999",
        ] {
            assert!(bad.parse::<ShardSpec>().is_err(), "{bad} should be refused");
        }
        assert_eq!(ShardId::new("T1", 2).to_string(), "T1:P2");
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic("T1").is_ok());
        assert!(validate_topic(&"x".repeat(128)).is_ok());
        assert!(validate_topic(&"x".repeat(129)).is_err());
        assert!(validate_topic("a/b").unwrap_err().contains("'/'"));
        for bad in [".", "..", "-x", "-", "--partitions"] {
            assert!(validate_topic(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["...", ".a", "a.", "a-", "_-", "a..b", "x-1"] {
            assert!(validate_topic(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn uuids_are_random_and_well_formed() {
        let (a, b) = (random_uuid().unwrap(), random_uuid().unwrap());
        assert_ne!(a, b);
        assert!(is_uuid(&a) && is_uuid(&b), "{a} {b}");
        assert_eq!(&a[14..15], "4");
        for bad in ["", "x", "0123456789abcdef0123456789abcdef0123", &a[1..]] {
            assert!(!is_uuid(bad), "{bad}");
        }
    }

    #[test]
    fn default_port() {
        assert_eq!(with_default_port("localhost", 7400), "localhost:7400");
        assert_eq!(with_default_port("127.0.0.1:9", 7400), "127.0.0.1:9");
        assert_eq!(with_default_port("[::1]:9", 7400), "[::1]:9");
        assert_eq!(with_default_port("[::1]", 7400), "[::1]:7400");
    }
}
