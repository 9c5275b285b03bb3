//! The router's durable metadata in sled: members, topics, the shard -> broker assignment, the
//! routing epoch and the ring parameters last used, so that a router restart loses nothing.
//!
//! Layout: one tree, keys prefixed by kind (`member/<id BE>`, `topic/<name>`, `shard/<T:Pn>`,
//! `epoch`, `ring`), values encoded with the protocol's bincode codec. Everything one admin
//! operation changes goes in one `sled::Batch`, which sled applies atomically, so a crash never
//! leaves a topic without its shards or an epoch behind its assignment.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use shardq_protocol::codec::{decode, encode};
use shardq_protocol::{BrokerId, Epoch, ShardId};
use shardq_ring::RingConfig;
use thiserror::Error;

const TREE: &str = "router-meta";
const MEMBER: &[u8] = b"member/";
const TOPIC: &[u8] = b"topic/";
const SHARD: &[u8] = b"shard/";
const EPOCH: &[u8] = b"epoch";
const RING: &[u8] = b"ring";

/// What can go wrong with the router's metadata store.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("cannot open the router's metadata store in {dir}: {source} (is another router using this --data directory?)")]
    Open { dir: String, source: sled::Error },
    #[error("metadata store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error("metadata entry {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("cannot encode metadata: {0}")]
    Encode(String),
}

/// A member as persisted: identity and configuration, not liveness (that is re-learned from
/// heartbeats after a restart).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: BrokerId,
    pub addr: String,
    pub weight: u32,
    /// Draining before leaving; survives restarts so a drain is not forgotten.
    pub leaving: bool,
}

/// One change to the persisted state; an operation's changes are applied together.
#[derive(Clone, Debug)]
pub enum Op {
    Epoch(Epoch),
    Ring(RingConfig),
    PutMember(MemberRecord),
    DeleteMember(BrokerId),
    PutTopic { name: String, partitions: u32 },
    PutOwner { shard: ShardId, owner: BrokerId },
}

/// Everything loaded back at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub epoch: Epoch,
    pub ring: Option<RingConfig>,
    pub members: BTreeMap<BrokerId, MemberRecord>,
    pub topics: BTreeMap<String, u32>,
    pub owners: BTreeMap<ShardId, BrokerId>,
}

pub struct Store {
    db: sled::Db,
    tree: sled::Tree,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .open()
            .map_err(|source| StoreError::Open {
                dir: dir.display().to_string(),
                source,
            })?;
        let tree = db.open_tree(TREE)?;
        Ok(Store { db, tree })
    }

    /// Reads the whole state. A corrupt entry is an error rather than skipped: silently losing a
    /// topic or an owner would route clients wrongly.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        let mut snap = Snapshot::default();
        for item in self.tree.iter() {
            let (key, value) = item?;
            let corrupt = |reason: String| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason,
            };
            if key.as_ref() == EPOCH {
                let bytes: [u8; 8] = value
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt(format!("epoch has {} bytes, expected 8", value.len())))?;
                snap.epoch = u64::from_be_bytes(bytes);
            } else if key.as_ref() == RING {
                snap.ring = Some(decode(&value).map_err(corrupt)?);
            } else if key.starts_with(MEMBER) {
                let m: MemberRecord = decode(&value).map_err(corrupt)?;
                snap.members.insert(m.id, m);
            } else if key.starts_with(TOPIC) {
                let (name, partitions): (String, u32) = decode(&value).map_err(corrupt)?;
                snap.topics.insert(name, partitions);
            } else if key.starts_with(SHARD) {
                let (shard, owner): (ShardId, BrokerId) = decode(&value).map_err(corrupt)?;
                snap.owners.insert(shard, owner);
            } else {
                return Err(corrupt("unknown key kind".into()));
            }
        }
        Ok(snap)
    }

    /// Applies `ops` atomically (not yet flushed to disk: see [`Store::flush`]).
    pub fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                Op::Epoch(e) => batch.insert(EPOCH, &e.to_be_bytes()),
                Op::Ring(r) => batch.insert(RING, enc(r)?),
                Op::PutMember(m) => batch.insert(member_key(m.id), enc(m)?),
                Op::DeleteMember(id) => batch.remove(member_key(*id)),
                Op::PutTopic { name, partitions } => {
                    batch.insert(key(TOPIC, name.as_bytes()), enc(&(name, partitions))?)
                }
                Op::PutOwner { shard, owner } => {
                    batch.insert(key(SHARD, shard.key().as_bytes()), enc(&(shard, owner))?)
                }
            }
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Waits until everything applied so far is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    encode(v).map_err(StoreError::Encode)
}

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + rest.len());
    k.extend_from_slice(prefix);
    k.extend_from_slice(rest);
    k
}

fn member_key(id: BrokerId) -> Vec<u8> {
    key(MEMBER, &id.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.apply(&[
                Op::Epoch(7),
                Op::Ring(RingConfig::default()),
                Op::PutMember(MemberRecord {
                    id: 1,
                    addr: "a:1".into(),
                    weight: 1,
                    leaving: false,
                }),
                Op::PutMember(MemberRecord {
                    id: 2,
                    addr: "a:2".into(),
                    weight: 2,
                    leaving: true,
                }),
                Op::PutTopic {
                    name: "T1".into(),
                    partitions: 2,
                },
                Op::PutOwner {
                    shard: ShardId::new("T1", 1),
                    owner: 1,
                },
                Op::PutOwner {
                    shard: ShardId::new("T1", 2),
                    owner: 2,
                },
            ])
            .unwrap();
            s.apply(&[
                Op::DeleteMember(1),
                Op::PutOwner {
                    shard: ShardId::new("T1", 1),
                    owner: 2,
                },
            ])
            .unwrap();
            s.flush().await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.epoch, 7);
        assert_eq!(snap.ring, Some(RingConfig::default()));
        assert_eq!(snap.members.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert!(snap.members[&2].leaving);
        assert_eq!(snap.topics.get("T1"), Some(&2));
        assert_eq!(snap.owners.get(&ShardId::new("T1", 1)), Some(&2));
        assert_eq!(snap.owners.get(&ShardId::new("T1", 2)), Some(&2));
    }

    #[test]
    fn corrupt_entries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.tree.insert(b"topic/T1", &b"\xff\xff\xff"[..]).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("topic/T1") && e.contains("corrupt"), "{e}");
    }
}
