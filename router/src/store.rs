//! The router's durable metadata in sled: members, topics, the shard -> broker assignment, the
//! routing epoch and the ring parameters last used, so that a router restart loses nothing.
//!
//! Layout: one tree, keys prefixed by kind (`member/<id BE>`, `removed/<id BE>`, `topic/<name>`,
//! `shard/<T:Pn>`, `replicas/<T:Pn>`, `move/<id BE>`, `drop/<broker BE><T:Pn>`, `uuid/<id BE>`, `epoch`, `ring`,
//! `move-seq`, `cluster`), values
//! encoded with the protocol's bincode codec. Everything one admin
//! operation changes goes in one `sled::Batch`, which sled applies atomically, so a crash never
//! leaves a topic without its shards or an epoch behind its assignment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use shardq_protocol::codec::{decode, encode};
use shardq_protocol::{BrokerId, Epoch, MovePhase, MoveProgress, Retention, ShardId};

pub use crate::state::Replicas;

/// A topic's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    pub partitions: u32,
    pub replication_factor: u32,
    pub min_insync: u32,
    pub retention: Retention,
}

/// A topic's settings as routers before retention stored them.
#[derive(Deserialize)]
struct TopicConfigV2 {
    partitions: u32,
    replication_factor: u32,
    min_insync: u32,
}
use shardq_ring::RingConfig;
use thiserror::Error;

const TREE: &str = "router-meta";
const MEMBER: &[u8] = b"member/";
const TOPIC: &[u8] = b"topic/";
const SHARD: &[u8] = b"shard/";
/// A shard's replica set, ISR, leader and leader epoch.
const REPLICAS: &[u8] = b"replicas/";
const EPOCH: &[u8] = b"epoch";
const RING: &[u8] = b"ring";
const MOVE: &[u8] = b"move/";
const DROP: &[u8] = b"drop/";
const MOVE_SEQ: &[u8] = b"move-seq";
/// Tombstones of removed brokers: their ids are never admitted again.
const REMOVED: &[u8] = b"removed/";
/// The cluster id, created at the router's first start (stores from before it get one then).
const CLUSTER: &[u8] = b"cluster";
/// The UUID each broker id is bound to (see `crate::identity`).
const UUID: &[u8] = b"uuid/";

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

/// One shard move as the router records it: persisted when created (before any broker hears of
/// it) and at every phase change a resumption depends on; progress counters are refreshed in
/// memory from the destination's reports and saved along with those phase changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub move_id: u64,
    pub shard: ShardId,
    pub from: BrokerId,
    pub to: BrokerId,
    /// `Activating` here means the router has flipped the owner to `to` (persisted with it).
    pub phase: MovePhase,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub records_copied: u64,
    pub bytes_copied: u64,
    pub lag: u64,
    pub write_pause_ms: Option<u64>,
    pub error: Option<String>,
}

impl MoveRecord {
    /// A move just planned, starting in `phase`.
    pub fn new(
        move_id: u64,
        shard: ShardId,
        from: BrokerId,
        to: BrokerId,
        phase: MovePhase,
        started_ms: u64,
    ) -> MoveRecord {
        MoveRecord {
            move_id,
            shard,
            from,
            to,
            phase,
            started_ms,
            finished_ms: None,
            records_copied: 0,
            bytes_copied: 0,
            lag: 0,
            write_pause_ms: None,
            error: None,
        }
    }

    /// Whether the move has ended (it stays only as history).
    pub fn finished(&self) -> bool {
        matches!(
            self.phase,
            MovePhase::Done | MovePhase::Failed | MovePhase::RolledBack
        )
    }

    /// The wire form for status and watch.
    pub fn progress(&self) -> MoveProgress {
        MoveProgress {
            move_id: self.move_id,
            shard: self.shard.clone(),
            from: Some(self.from),
            to: self.to,
            phase: self.phase,
            records_copied: self.records_copied,
            bytes_copied: self.bytes_copied,
            lag: self.lag,
            started_ms: self.started_ms,
            finished_ms: self.finished_ms,
            write_pause_ms: self.write_pause_ms,
            error: self.error.clone(),
        }
    }
}

/// A local copy a broker still has to delete (the source after a move, or a rolled-back
/// destination's partial copy); retried until the broker answers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PendingDrop {
    pub broker: BrokerId,
    pub shard: ShardId,
    pub epoch: Epoch,
}

/// One change to the persisted state; an operation's changes are applied together.
#[derive(Clone, Debug)]
pub enum Op {
    Epoch(Epoch),
    Ring(RingConfig),
    PutMember(MemberRecord),
    /// Removes a member for good: its record goes and its id is tombstoned in the same batch, so
    /// the router refuses it ever after (a removed broker that restarts, or a new one reusing
    /// the id, would otherwise rejoin and get shards, or offer its stale copies, back).
    DeleteMember(BrokerId),
    PutTopic {
        name: String,
        config: TopicConfig,
    },
    /// Removes a topic with the owner and replica set of each of its `partitions` shards.
    DeleteTopic {
        name: String,
        partitions: u32,
    },
    PutReplicas {
        shard: ShardId,
        replicas: Replicas,
    },
    PutOwner {
        shard: ShardId,
        owner: BrokerId,
    },
    PutMove(MoveRecord),
    DeleteMove(u64),
    /// The next move id to hand out.
    MoveSeq(u64),
    PutDrop(PendingDrop),
    DeleteDrop {
        broker: BrokerId,
        shard: ShardId,
    },
    /// This router's cluster id (written once).
    ClusterId(String),
    /// Broker `id` is the process with this UUID from now on.
    Bind {
        id: BrokerId,
        uuid: String,
    },
    /// Broker `id` is bound to no process: the next to register it takes it (`broker replace`).
    Unbind(BrokerId),
}

/// Everything loaded back at start-up.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub epoch: Epoch,
    pub ring: Option<RingConfig>,
    pub members: BTreeMap<BrokerId, MemberRecord>,
    /// Ids of removed brokers (tombstones).
    pub removed: BTreeSet<BrokerId>,
    pub topics: BTreeMap<String, TopicConfig>,
    pub owners: BTreeMap<ShardId, BrokerId>,
    pub replicas: BTreeMap<ShardId, Replicas>,
    pub moves: BTreeMap<u64, MoveRecord>,
    pub next_move_id: u64,
    pub drops: Vec<PendingDrop>,
    /// None in a new store, or in one written before cluster ids existed.
    pub cluster: Option<String>,
    /// Broker id -> the UUID of the process bound to it.
    pub uuids: BTreeMap<BrokerId, String>,
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
            if key.as_ref() == EPOCH || key.as_ref() == MOVE_SEQ {
                let bytes: [u8; 8] = value.as_ref().try_into().map_err(|_| {
                    corrupt(format!("counter has {} bytes, expected 8", value.len()))
                })?;
                if key.as_ref() == EPOCH {
                    snap.epoch = u64::from_be_bytes(bytes);
                } else {
                    snap.next_move_id = u64::from_be_bytes(bytes);
                }
            } else if key.as_ref() == CLUSTER {
                snap.cluster = Some(decode(&value).map_err(corrupt)?);
            } else if key.starts_with(UUID) {
                let (id, uuid): (BrokerId, String) = decode(&value).map_err(corrupt)?;
                snap.uuids.insert(id, uuid);
            } else if key.as_ref() == RING {
                snap.ring = Some(decode(&value).map_err(corrupt)?);
            } else if key.starts_with(MEMBER) {
                let m: MemberRecord = decode(&value).map_err(corrupt)?;
                snap.members.insert(m.id, m);
            } else if key.starts_with(REMOVED) {
                let id: BrokerId = decode(&value).map_err(corrupt)?;
                snap.removed.insert(id);
            } else if key.starts_with(TOPIC) {
                // Topics from before retention (forever), and from before replication
                // factors (one replica).
                let (name, config) = decode::<(String, TopicConfig)>(&value)
                    .or_else(|e| {
                        let old = |partitions, replication_factor, min_insync| TopicConfig {
                            partitions,
                            replication_factor,
                            min_insync,
                            retention: Retention::default(),
                        };
                        decode::<(String, TopicConfigV2)>(&value)
                            .map(|(n, c)| {
                                (n, old(c.partitions, c.replication_factor, c.min_insync))
                            })
                            .or_else(|_| {
                                decode::<(String, u32)>(&value).map(|(n, p)| (n, old(p, 1, 1)))
                            })
                            .map_err(|_| e)
                    })
                    .map_err(corrupt)?;
                snap.topics.insert(name, config);
            } else if key.starts_with(REPLICAS) {
                let (shard, r): (ShardId, Replicas) = decode(&value).map_err(corrupt)?;
                snap.replicas.insert(shard, r);
            } else if key.starts_with(SHARD) {
                let (shard, owner): (ShardId, BrokerId) = decode(&value).map_err(corrupt)?;
                snap.owners.insert(shard, owner);
            } else if key.starts_with(MOVE) {
                let m: MoveRecord = decode(&value).map_err(corrupt)?;
                snap.moves.insert(m.move_id, m);
            } else if key.starts_with(DROP) {
                snap.drops.push(decode(&value).map_err(corrupt)?);
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
                Op::DeleteMember(id) => {
                    batch.remove(member_key(*id));
                    batch.remove(key(UUID, &id.to_be_bytes()));
                    batch.insert(key(REMOVED, &id.to_be_bytes()), enc(id)?);
                }
                Op::PutTopic { name, config } => {
                    batch.insert(key(TOPIC, name.as_bytes()), enc(&(name, config))?)
                }
                Op::DeleteTopic { name, partitions } => {
                    batch.remove(key(TOPIC, name.as_bytes()));
                    for p in 1..=*partitions {
                        let shard = ShardId::new(name.clone(), p);
                        batch.remove(key(REPLICAS, shard.key().as_bytes()));
                        batch.remove(key(SHARD, shard.key().as_bytes()));
                    }
                }
                Op::PutReplicas { shard, replicas } => batch.insert(
                    key(REPLICAS, shard.key().as_bytes()),
                    enc(&(shard, replicas))?,
                ),
                Op::PutOwner { shard, owner } => {
                    batch.insert(key(SHARD, shard.key().as_bytes()), enc(&(shard, owner))?)
                }
                Op::PutMove(m) => batch.insert(key(MOVE, &m.move_id.to_be_bytes()), enc(m)?),
                Op::DeleteMove(id) => batch.remove(key(MOVE, &id.to_be_bytes())),
                Op::MoveSeq(n) => batch.insert(MOVE_SEQ, &n.to_be_bytes()),
                Op::PutDrop(d) => batch.insert(drop_key(d.broker, &d.shard), enc(d)?),
                Op::DeleteDrop { broker, shard } => batch.remove(drop_key(*broker, shard)),
                Op::ClusterId(c) => batch.insert(CLUSTER, enc(c)?),
                Op::Bind { id, uuid } => {
                    batch.insert(key(UUID, &id.to_be_bytes()), enc(&(id, uuid))?)
                }
                Op::Unbind(id) => batch.remove(key(UUID, &id.to_be_bytes())),
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

fn drop_key(broker: BrokerId, shard: &ShardId) -> Vec<u8> {
    let mut rest = broker.to_be_bytes().to_vec();
    rest.extend_from_slice(shard.key().as_bytes());
    key(DROP, &rest)
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
                    config: TopicConfig {
                        partitions: 2,
                        replication_factor: 3,
                        min_insync: 2,
                        retention: Retention {
                            ms: Some(60_000),
                            bytes: None,
                        },
                    },
                },
                Op::PutReplicas {
                    shard: ShardId::new("T1", 2),
                    replicas: Replicas {
                        replicas: vec![2, 1, 3],
                        isr: vec![2, 3],
                        leader: Some(2),
                        leader_epoch: 5,
                        isr_version: 9,
                    },
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
        let s = reopen(dir.path()).await;
        let snap = s.load().unwrap();
        assert_eq!(snap.epoch, 7);
        assert_eq!(snap.ring, Some(RingConfig::default()));
        assert_eq!(snap.members.keys().copied().collect::<Vec<_>>(), vec![2]);
        // The removed member is tombstoned, for good.
        assert_eq!(snap.removed.iter().copied().collect::<Vec<_>>(), vec![1]);
        assert!(snap.members[&2].leaving);
        assert_eq!(snap.topics.get("T1").map(|t| t.partitions), Some(2));
        assert_eq!(snap.topics.get("T1").map(|t| t.replication_factor), Some(3));
        let r = &snap.replicas[&ShardId::new("T1", 2)];
        assert_eq!(
            (r.leader, r.leader_epoch, &r.isr),
            (Some(2), 5, &vec![2, 3])
        );
        assert_eq!(snap.owners.get(&ShardId::new("T1", 1)), Some(&2));
        assert_eq!(snap.owners.get(&ShardId::new("T1", 2)), Some(&2));
    }

    #[tokio::test]
    async fn moves_drops_and_the_move_counter_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let record = MoveRecord {
            move_id: 3,
            shard: ShardId::new("T1", 1),
            from: 1,
            to: 2,
            phase: MovePhase::Copying,
            started_ms: 10,
            finished_ms: None,
            records_copied: 5,
            bytes_copied: 50,
            lag: 1,
            write_pause_ms: None,
            error: None,
        };
        let drop = PendingDrop {
            broker: 1,
            shard: ShardId::new("T1", 2),
            epoch: 4,
        };
        {
            let s = Store::open(dir.path()).unwrap();
            s.apply(&[
                Op::MoveSeq(4),
                Op::PutMove(record.clone()),
                Op::PutDrop(drop.clone()),
                Op::PutDrop(PendingDrop {
                    broker: 2,
                    shard: ShardId::new("T1", 1),
                    epoch: 4,
                }),
            ])
            .unwrap();
            s.apply(&[Op::DeleteDrop {
                broker: 2,
                shard: ShardId::new("T1", 1),
            }])
            .unwrap();
            s.flush().await.unwrap();
        }
        let snap = reopen(dir.path()).await.load().unwrap();
        assert_eq!(snap.next_move_id, 4);
        assert_eq!(snap.epoch, 0);
        assert_eq!(snap.moves.get(&3), Some(&record));
        assert_eq!(snap.drops, vec![drop]);
    }

    #[tokio::test]
    async fn the_cluster_id_and_bindings_survive_a_reopen_and_go_with_the_member() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            // A store from before identities: nothing of them in it.
            let old = s.load().unwrap();
            assert_eq!((old.cluster, old.uuids.len()), (None, 0));
            s.apply(&[
                Op::ClusterId("c-1".into()),
                Op::Bind {
                    id: 1,
                    uuid: "u-1".into(),
                },
                Op::Bind {
                    id: 2,
                    uuid: "u-2".into(),
                },
                Op::Bind {
                    id: 3,
                    uuid: "u-3".into(),
                },
            ])
            .unwrap();
            s.apply(&[Op::Unbind(2), Op::DeleteMember(3)]).unwrap();
            s.flush().await.unwrap();
        }
        let snap = Store::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(snap.cluster.as_deref(), Some("c-1"));
        assert_eq!(
            snap.uuids.into_iter().collect::<Vec<_>>(),
            vec![(1, "u-1".to_string())]
        );
    }

    #[test]
    fn corrupt_entries_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.tree.insert(b"topic/T1", &b"\xff\xff\xff"[..]).unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("topic/T1") && e.contains("corrupt"), "{e}");
    }

    /// Opens the store again once the previous handle's sled threads have let go of its lock
    /// (they can hold it for a moment after the handle is dropped).
    async fn reopen(dir: &std::path::Path) -> Store {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => panic!("cannot reopen the store: {e}"),
            }
        }
    }
}
