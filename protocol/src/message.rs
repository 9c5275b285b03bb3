//! Every request and response of the protocol, and the envelopes that carry them.
//!
//! Who serves what: brokers serve the data plane (produce, fetch, offsets), router-to-broker control
//! (assign, drop) and broker-to-broker transfer (export, fence, state); the router serves metadata,
//! admin and membership, and proxies the data plane for clients that only know its address. A node
//! answers a request it does not serve with `ErrorKind::Unsupported`.

use serde::{Deserialize, Serialize};

use crate::batch::{RecordBatch, StoredBatch};
use crate::error::ErrorKind;
use crate::types::{BrokerAddr, BrokerId, Epoch, LeaderEpoch, Offset, ShardId, ShardSpec};

/// A request frame: the client picks `correlation_id`, unique among its requests in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub correlation_id: u64,
    pub request: Request,
}

/// A response frame, matched to its request by `correlation_id`; may arrive out of order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    pub correlation_id: u64,
    pub result: Result<Response, ErrorKind>,
}

/// When the producer's acknowledgement is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Acks {
    /// Once the batch is below the shard's high watermark (on every in-sync replica, and the
    /// in-sync replicas at least the topic's `min_insync`) and durable under the leader's
    /// `--fsync` policy. The default: an acknowledged record survives the loss of any
    /// `min_insync - 1` brokers.
    #[default]
    Durable,
    /// Once the leader alone holds the batch under its `--fsync` policy; a failover may lose it.
    Leader,
    /// As soon as the leader appended the batch (in memory); durability follows later.
    Appended,
}

/// Idempotence: `sequence` numbers a producer session's batches to one shard 0, 1, 2, ...
/// A batch with the sequence last appended is acknowledged again, never appended twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSeq {
    pub producer_id: u64,
    pub sequence: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProduceRequest {
    pub shard: ShardId,
    /// The routing epoch the client used to pick this broker.
    pub epoch: Epoch,
    pub producer: Option<ProducerSeq>,
    pub acks: Acks,
    pub batch: RecordBatch,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    pub shard: ShardId,
    pub epoch: Epoch,
    /// First offset wanted.
    pub offset: Offset,
    /// Soft cap on the bytes returned (at least one batch is returned when data exists).
    pub max_bytes: u32,
    /// Long poll: wait up to this long for data at `offset` before answering with none.
    pub max_wait_ms: u32,
}

/// The state of one shard as a broker holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardState {
    /// Owned and serving reads and writes.
    Active,
    /// Being copied in from another broker (not serving clients yet).
    Importing,
    /// Writes stopped for the hand-over; reads still served.
    Fenced,
}

/// A broker's view of one shard, for heartbeats and status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    pub shard: ShardId,
    pub state: ShardState,
    pub epoch: Epoch,
    pub start_offset: Offset,
    pub end_offset: Offset,
    pub bytes: u64,
    /// Committed offset per consumer group.
    pub groups: Vec<(String, Offset)>,
    /// This broker's part in the shard's replication.
    pub role: ReplicaRole,
    pub leader_epoch: LeaderEpoch,
    /// Offsets below this are on every in-sync replica (what readers may see).
    pub high_watermark: Offset,
    /// On the leader: each follower's progress.
    pub followers: Vec<FollowerProgress>,
}

/// A broker's part in one shard's replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRole {
    Leader,
    Follower,
    /// Held but neither leading nor following (e.g. dropped from the replica set, or a shard
    /// being imported).
    Idle,
}

/// A leader's view of one follower.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerProgress {
    pub broker: BrokerId,
    /// The follower's log end as of its last fetch in the current leader epoch (None: no fetch
    /// yet).
    pub end: Option<Offset>,
    /// Records it is behind the leader's end.
    pub lag: u64,
    pub in_sync: bool,
}

/// Sent by a broker with every heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct BrokerReport {
    pub shards: Vec<ShardReport>,
    pub imports: Vec<MoveProgress>,
    /// Why the broker cannot take writes now (e.g. "storage full: ..."); it recovers by itself.
    pub degraded: Option<String>,
}

/// Where one shard lives, as the router tells clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardRoute {
    pub shard: ShardId,
    /// In a routing table (Metadata): None while the shard has no live owner (e.g. its broker is
    /// down), so clients do not send there. In Status and DescribeTopic answers: the owner even
    /// when it is down, so operators see where the shard's data is. The shard's leader.
    pub owner: Option<BrokerAddr>,
    /// True while the shard is being moved (writes may pause briefly).
    pub moving: bool,
    pub leader_epoch: LeaderEpoch,
    /// Every broker holding a replica, the preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// The in-sync replicas: the ones a new leader may be elected from.
    pub isr: Vec<BrokerId>,
}

/// The routing table: every shard of the requested topics and its owner, as of `epoch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct RoutingTable {
    pub epoch: Epoch,
    pub topics: Vec<TopicInfo>,
    pub shards: Vec<ShardRoute>,
}

impl RoutingTable {
    pub fn route(&self, shard: &ShardId) -> Option<&ShardRoute> {
        self.shards.iter().find(|r| &r.shard == shard)
    }

    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.iter().find(|t| t.name == name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    /// Replicas per shard.
    pub replication_factor: u32,
    /// In-sync replicas a `durable` produce needs (else `NotEnoughReplicas`).
    pub min_insync: u32,
    /// How long and how much the topic keeps (default: everything, forever).
    pub retention: Retention,
}

/// What a topic keeps. Whole stored batches are deleted from the front of each shard's log, the
/// oldest first, and only below the high watermark; consumers below the new log start get
/// [`crate::ErrorKind::OffsetOutOfRange`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// A batch goes once its newest record is older than this (by the producer's timestamps).
    pub ms: Option<u64>,
    /// The topic keeps at most about this many bytes: each of its N shards keeps at most
    /// `bytes / N` (rounded up) plus the one batch that straddles the limit, on every replica.
    pub bytes: Option<u64>,
}

impl Retention {
    pub fn is_forever(&self) -> bool {
        self.ms.is_none() && self.bytes.is_none()
    }

    /// The bytes each of `partitions` shards may keep.
    pub fn shard_bytes(&self, partitions: u32) -> Option<u64> {
        self.bytes.map(|b| b.div_ceil(u64::from(partitions.max(1))))
    }
}

impl std::fmt::Display for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.ms, self.bytes) {
            (None, None) => f.write_str("forever"),
            (ms, bytes) => {
                let mut parts = Vec::new();
                if let Some(ms) = ms {
                    parts.push(format!("{ms} ms"));
                }
                if let Some(b) = bytes {
                    parts.push(format!("{b} bytes"));
                }
                f.write_str(&parts.join(", "))
            }
        }
    }
}

/// How far a leader deletes the front of a shard's log (`TrimShards`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrimTo {
    /// By the topic's retention (`shard_bytes` is the shard's share of the topic's bytes).
    Retention {
        ms: Option<u64>,
        shard_bytes: Option<u64>,
    },
    /// Everything below this offset (None: the high watermark, i.e. every committed record).
    Before(Option<Offset>),
}

/// One shard's part in a `TrimShards` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTrim {
    pub shard: ShardId,
    pub to: TrimTo,
}

/// A shard's log after a trim (or why it could not be trimmed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimResult {
    pub shard: ShardId,
    pub result: Result<LogRange, ErrorKind>,
}

/// The offsets a shard's log holds and the bytes they take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRange {
    pub start: Offset,
    pub end: Offset,
    pub bytes: u64,
    /// Records deleted by this trim.
    pub deleted: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopicDescription {
    pub topic: TopicInfo,
    /// Per partition: route plus, where the owner reported it, offsets and group positions.
    pub shards: Vec<(ShardRoute, Option<ShardReport>)>,
}

/// A broker's state as the router sees it. Spelled one way everywhere people read it (`shardq
/// status`, `--json`, logs): lowercase `up`, `down`, `leaving` ([`std::fmt::Display`] and serde
/// agree; bincode on the wire uses the variant index, so the names cost nothing there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerStatus {
    Up,
    /// Missed heartbeats for longer than the router's timeout.
    Down,
    /// Draining its shards before leaving.
    Leaving,
}

impl BrokerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerStatus::Up => "up",
            BrokerStatus::Down => "down",
            BrokerStatus::Leaving => "leaving",
        }
    }
}

impl std::fmt::Display for BrokerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BrokerInfo {
    pub addr: BrokerAddr,
    pub weight: u32,
    pub status: BrokerStatus,
    /// Milliseconds since the last heartbeat.
    pub last_seen_ms: u64,
    pub shards: u32,
    /// The broker's own word, in its last heartbeat, on why it cannot take writes now.
    pub degraded: Option<String>,
}

/// Router to broker: hold `shard` at `epoch` (creating an empty log if none exists), leading it
/// or following its leader as `replication` says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardAssignment {
    pub shard: ShardId,
    pub epoch: Epoch,
    pub replication: ReplicaSet,
}

/// Whether a follower may join an ISR: its broker is live and runs the process the leader heard
/// from (`heard`, an incarnation) as registered now (`registered`; None while the controller
/// has not heard from it, say after the controller restarted). A broker that restarted since
/// may hold less than its previous process did (KIP-903).
pub fn may_join(live: bool, heard: Option<u64>, registered: Option<u64>) -> bool {
    live && heard.is_some() && heard == registered
}

/// One shard's replication as the controller (the router) decided it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSet {
    /// None while no replica may lead (every in-sync replica is down).
    pub leader: Option<BrokerAddr>,
    pub leader_epoch: LeaderEpoch,
    /// Every broker holding a replica, the preferred leader first.
    pub replicas: Vec<BrokerId>,
    pub isr: Vec<BrokerId>,
    /// Bumped on every ISR change; a leader's `AlterIsr` names the version it changes.
    pub isr_version: u64,
    pub min_insync: u32,
}

impl ShardAssignment {
    /// An unreplicated shard led by broker `leader` (a standalone broker's assignment), at
    /// leader epoch `epoch`.
    pub fn sole(shard: ShardId, epoch: Epoch, leader: BrokerId) -> ShardAssignment {
        let addr = BrokerAddr {
            id: leader,
            addr: String::new(),
        };
        ShardAssignment {
            shard,
            epoch,
            replication: ReplicaSet::sole(addr, epoch),
        }
    }
}

impl ReplicaSet {
    /// A shard with one replica, led by `leader`.
    pub fn sole(leader: BrokerAddr, leader_epoch: LeaderEpoch) -> ReplicaSet {
        ReplicaSet {
            replicas: vec![leader.id],
            isr: vec![leader.id],
            leader: Some(leader),
            leader_epoch,
            isr_version: 0,
            min_insync: 1,
        }
    }

    pub fn leader_id(&self) -> Option<BrokerId> {
        self.leader.as_ref().map(|l| l.id)
    }
}

/// A follower's position in one shard, in a [`ReplicaFetchRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPosition {
    pub shard: ShardId,
    /// The leader epoch the follower believes current; the leader refuses another.
    pub leader_epoch: LeaderEpoch,
    /// The follower's log end: it has every offset below.
    pub fetch_offset: Offset,
    /// The epoch of the follower's last entry (None: empty log). The leader answers `diverging`
    /// when its log disagrees there.
    pub last_epoch: Option<LeaderEpoch>,
    /// The follower's durable end (what it could lose in a crash is not counted in sync).
    pub durable_end: Offset,
    /// The version of the group offsets the follower holds (see `ReplicaData::groups`).
    pub groups_version: (LeaderEpoch, u64),
}

/// Follower to leader: every shard the two share, in one request (one stream per broker pair).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaFetchRequest {
    pub follower: BrokerId,
    /// The follower's process (see `RegisterBroker::incarnation`): the leader proposes a
    /// follower for the ISR naming the process it heard from, and the router refuses it unless
    /// that process is the one registered now (a restarted follower may hold less).
    pub incarnation: u64,
    pub positions: Vec<ReplicaPosition>,
    /// Soft cap on the bytes of batches returned (per request).
    pub max_bytes: u32,
    /// Long poll: wait up to this long for any shard to have something new.
    pub max_wait_ms: u32,
}

/// The leader's answer for one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaData {
    pub high_watermark: Offset,
    /// Set when the follower's log disagrees with the leader's at its end: truncate to where
    /// the follower's log for `epoch` ends, at most `end_offset`, and fetch again.
    pub diverging: Option<(LeaderEpoch, Offset)>,
    pub batches: Vec<StoredBatch>,
    /// The leader's group offsets when they changed since the follower's `groups_version`
    /// (complete when the version's epoch differs, else the changed groups).
    pub groups: Vec<(String, Offset)>,
    /// Groups deleted since the follower's `groups_version` (same epoch only).
    pub groups_deleted: Vec<String>,
    /// The leader's log start: the follower deletes what is below (and, when its whole log is
    /// below, starts empty there).
    pub log_start: Offset,
    pub groups_version: (LeaderEpoch, u64),
}

/// One shard's answer in a replica fetch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaFetchResult {
    pub shard: ShardId,
    pub result: Result<ReplicaData, ErrorKind>,
}

/// One replica's checksum of a shard's committed records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaChecksum {
    pub broker: BrokerId,
    pub role: ReplicaRole,
    /// The checksum covers offsets `start..end`.
    pub start: Offset,
    pub end: Offset,
    pub records: u64,
    /// FNV-1a 64 over every record's offset, timestamp, key and value.
    pub checksum: u64,
    /// Why this replica could not answer.
    pub error: Option<String>,
}

/// What an election did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Election {
    pub shard: ShardId,
    pub leader: BrokerId,
    pub leader_epoch: LeaderEpoch,
    /// Unclean: the new leader was not in sync; records the old in-sync replicas held beyond
    /// its end may be lost (the router's last report of how many, when known).
    pub unclean: bool,
    pub may_lose: Option<u64>,
}

/// Where a shard move is. Displayed and serialized (JSON) in lowercase with dashes:
/// `pending`, `copying`, `fenced`, `activating`, `done`, `failed`, `rolled-back`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MovePhase {
    Pending,
    /// Destination copies the log while the source serves.
    Copying,
    /// Source fenced; destination copies the tail.
    Fenced,
    /// Destination active; router flipping the owner.
    Activating,
    Done,
    Failed,
    /// Gave up and returned the shard to its source.
    RolledBack,
}

impl MovePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MovePhase::Pending => "pending",
            MovePhase::Copying => "copying",
            MovePhase::Fenced => "fenced",
            MovePhase::Activating => "activating",
            MovePhase::Done => "done",
            MovePhase::Failed => "failed",
            MovePhase::RolledBack => "rolled-back",
        }
    }

    /// Done, failed or rolled back: the move is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            MovePhase::Done | MovePhase::Failed | MovePhase::RolledBack
        )
    }
}

impl std::fmt::Display for MovePhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Progress of one shard move, reported by the destination and kept by the router.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoveProgress {
    pub move_id: u64,
    pub shard: ShardId,
    pub from: Option<BrokerId>,
    pub to: BrokerId,
    pub phase: MovePhase,
    pub records_copied: u64,
    pub bytes_copied: u64,
    /// Records the destination is behind the source.
    pub lag: u64,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// Write pause (fence to activate), once known.
    pub write_pause_ms: Option<u64>,
    pub error: Option<String>,
}

/// Idempotent-producer state of one producer on one shard; travels with the shard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    pub producer_id: u64,
    pub last_sequence: u64,
    pub base_offset: Offset,
    pub count: u32,
}

/// Everything about a shard besides its log: copied during a move.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct ShardMeta {
    pub groups: Vec<(String, Offset)>,
    pub producers: Vec<ProducerState>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub epoch: Epoch,
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicInfo>,
    pub shards: Vec<(ShardRoute, Option<ShardReport>)>,
    pub moves: Vec<MoveProgress>,
    /// The last decisions of the autoscaler of the `shardq up` that runs this router, oldest
    /// first (none for a router `shardq up` did not start, or before any decision).
    pub scaling: Vec<ScalingDecision>,
    /// Local copies brokers still have to delete (a deleted topic's, or a moved shard's old
    /// copy): (broker, shard).
    pub pending_drops: Vec<(BrokerId, ShardId)>,
}

/// One member of a consumer group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMemberInfo {
    pub member_id: String,
    pub client: String,
    pub subscriptions: Vec<ShardSpec>,
    /// Shards it reported owning in its last heartbeat.
    pub owned: Vec<ShardId>,
    /// Shards the assignment gives it (owned once their previous owners let go).
    pub target: Vec<ShardId>,
    pub last_seen_ms: u64,
}

/// A consumer group: its live members and assignment (empty for a group that only has
/// committed offsets), and per shard it has offsets on: committed offset and end offset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDescription {
    pub name: String,
    pub strategy: String,
    pub generation: u64,
    pub members: Vec<GroupMemberInfo>,
    /// (shard, committed offset, end offset), from the brokers' last reports.
    pub offsets: Vec<(ShardId, Offset, Offset)>,
}

/// One decision of the `shardq up --autoscale` autoscaler: a line of `DATA/autoscaler.log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalingDecision {
    /// When it was taken, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// `add` or `remove`.
    pub action: String,
    /// Why, with the measured load and the thresholds.
    pub reason: String,
    /// Brokers serving when it was taken.
    pub brokers: u32,
    /// The broker added or removed.
    pub broker: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Must be the first frame on a connection.
    Handshake {
        version: u32,
        client: String,
        /// A fresh random nonce ([`crate::auth::NONCE_LEN`] bytes) the server's proof covers.
        nonce: Vec<u8>,
        /// The client holds the cluster secret and sends `Authenticate` next. Such a client may
        /// take a connection slot kept for authenticated peers, and must then prove it.
        authenticate: bool,
    },
    /// Second frame, from a client holding the cluster secret: its proof over both nonces.
    /// A client without the secret skips it and may use only what the server leaves open.
    Authenticate {
        proof: Vec<u8>,
    },

    // ---- data plane (broker; proxied by the router) ----
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    CommitOffset {
        shard: ShardId,
        epoch: Epoch,
        group: String,
        offset: Offset,
    },
    FetchOffset {
        shard: ShardId,
        epoch: Epoch,
        group: String,
    },
    /// First and next offsets of a shard.
    ListOffsets {
        shard: ShardId,
        epoch: Epoch,
    },

    // ---- metadata and admin (router) ----
    /// Routing table for these topics (empty: all).
    Metadata {
        topics: Vec<String>,
    },
    CreateTopic {
        name: String,
        partitions: u32,
        /// None: the router's `--default-replication-factor` (capped at the live brokers).
        replication_factor: Option<u32>,
        /// None: a majority of the replication factor.
        min_insync: Option<u32>,
        retention: Retention,
    },
    ListTopics,
    DescribeTopic {
        name: String,
    },
    /// Admin: delete topic `name`: its routes go at once, every replica's copy is deleted
    /// (a broker that is down deletes it when it is back), and the name can be created again
    /// once every copy is gone.
    DeleteTopic {
        name: String,
    },
    /// Admin: grow topic `name` to `partitions` (never shrinks; the new shards are placed on
    /// the ring like a new topic's) and/or change its retention: `Some(None)` lifts a limit.
    AlterTopic {
        name: String,
        partitions: Option<u32>,
        retention_ms: Option<Option<u64>>,
        retention_bytes: Option<Option<u64>>,
    },
    /// Admin: delete every committed record of topic `name` (each shard's log then starts at
    /// its high watermark); offsets are never reused.
    PurgeTopic {
        name: String,
    },
    /// Admin: delete consumer group `group`'s committed offsets on every shard (refused while it
    /// has live members).
    DeleteGroup {
        group: String,
    },
    // ---- consumer groups (router) ----
    /// A consumer joins `group` (or rejoins as `member`) to read `subscriptions` with the others;
    /// `owned`: shards it still reads (joining again after "unknown member"), so they are not
    /// handed to another member meanwhile.
    JoinGroup {
        group: String,
        member: Option<String>,
        client: String,
        subscriptions: Vec<ShardSpec>,
        /// `sticky`, `range` or `round-robin` (the group keeps its first member's).
        strategy: String,
        session_timeout_ms: u32,
        owned: Vec<ShardId>,
    },
    /// A member is alive and owns `owned`; the answer is what it may own now.
    GroupHeartbeat {
        group: String,
        member: String,
        owned: Vec<ShardId>,
    },
    /// A member leaves after committing and giving up its shards.
    LeaveGroup {
        group: String,
        member: String,
    },
    ListGroups,
    DescribeGroup {
        group: String,
    },
    ListBrokers,
    Status,
    /// Admin: drain broker `id` (or with `force`, drop a dead broker and its data).
    RemoveBroker {
        id: BrokerId,
        force: bool,
    },

    // ---- membership (broker -> router) ----
    RegisterBroker {
        id: BrokerId,
        addr: String,
        weight: u32,
        /// The broker process's identity: created once in its data directory. The router binds
        /// `id` to the first UUID that registers it and refuses any other (`IdentityConflict`).
        uuid: String,
        /// The cluster id its data directory belongs to; None for a fresh one (the router's
        /// answer then tells it which cluster it joined). Another cluster's is `WrongCluster`.
        cluster: Option<String>,
        /// New at every start of the broker process (the uuid stays with the data directory).
        incarnation: u64,
    },
    Heartbeat {
        id: BrokerId,
        report: BrokerReport,
        /// Same as in `RegisterBroker`: a heartbeat from another process than the one bound to
        /// `id` is refused, so it cannot keep `id` looking alive.
        uuid: String,
        /// Same as in `RegisterBroker` (a router that restarted learns it from here).
        incarnation: u64,
    },
    /// The broker asks to leave gracefully (same as RemoveBroker without force).
    LeaveBroker {
        id: BrokerId,
    },

    // ---- control (router -> broker) ----
    /// Own these shards from now on (create empty logs where none exist).
    AssignShards {
        epoch: Epoch,
        shards: Vec<ShardAssignment>,
    },
    /// Start importing `shard` from `source` (move `move_id`); the broker reports progress.
    ImportShard {
        move_id: u64,
        shard: ShardId,
        source: BrokerAddr,
        epoch: Epoch,
    },
    /// Drop the local copy of a shard that now lives elsewhere.
    DropShard {
        shard: ShardId,
        epoch: Epoch,
    },
    /// Progress of an import this broker runs.
    MoveStatus {
        move_id: u64,
    },
    /// Delete the front of the logs of shards this broker leads (retention and purge); the
    /// followers take the new log start from their next replica fetch.
    TrimShards {
        trims: Vec<ShardTrim>,
    },
    /// Delete `group`'s committed offset on `shard` (the leader; followers follow).
    DeleteGroupOffset {
        shard: ShardId,
        group: String,
    },

    // ---- transfer (destination broker -> source broker) ----
    /// Batches of `shard` starting at `from_offset`, up to about `max_bytes`.
    ExportShard {
        shard: ShardId,
        from_offset: Offset,
        max_bytes: u32,
    },
    /// Group offsets and producer state of `shard`.
    ExportMeta {
        shard: ShardId,
    },
    /// Stop appending to `shard` (answer `Moving` to producers) and report its final end offset.
    FenceShard {
        shard: ShardId,
        move_id: u64,
    },
    /// Undo a fence (the move was rolled back).
    UnfenceShard {
        shard: ShardId,
        move_id: u64,
    },

    // ---- admin (router), continued ----
    /// Let a new process (a new UUID, an empty data dir) take over the id of broker `id`, whose
    /// disk was lost. Refused while it is up. Its replicated shards are copied back from their
    /// leaders; its unreplicated ones start empty on the new process.
    ReplaceBroker {
        id: BrokerId,
    },

    // ---- replication ----
    /// Follower to leader: the follower's positions; the leader answers with what follows.
    ReplicaFetch(ReplicaFetchRequest),
    /// Leader to router: change `shard`'s ISR (compare-and-set on the leader epoch and version).
    AlterIsr {
        broker: BrokerId,
        shard: ShardId,
        leader_epoch: LeaderEpoch,
        isr_version: u64,
        isr: Vec<BrokerId>,
        /// For each broker the change adds: the process (incarnation) whose fetches showed it
        /// caught up. The router refuses the change when that is not the process registered now.
        incarnations: Vec<(BrokerId, u64)>,
    },
    /// Admin (router): elect a leader for `shard` now; `unclean` allows a replica outside the
    /// ISR (records only the old in-sync replicas held may be lost).
    ElectLeader {
        shard: ShardId,
        unclean: bool,
    },
    /// Router: one checksum per replica of `shard`'s committed records. Broker: its own
    /// checksum of `shard` over offsets below `upto` (None: its high watermark).
    ShardChecksum {
        shard: ShardId,
        upto: Option<Offset>,
    },
}

impl Request {
    /// A short name for logs and `Unsupported` errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Handshake { .. } => "handshake",
            Request::Authenticate { .. } => "authenticate",
            Request::Produce(_) => "produce",
            Request::Fetch(_) => "fetch",
            Request::CommitOffset { .. } => "commit-offset",
            Request::FetchOffset { .. } => "fetch-offset",
            Request::ListOffsets { .. } => "list-offsets",
            Request::Metadata { .. } => "metadata",
            Request::CreateTopic { .. } => "create-topic",
            Request::ListTopics => "list-topics",
            Request::DescribeTopic { .. } => "describe-topic",
            Request::DeleteTopic { .. } => "delete-topic",
            Request::AlterTopic { .. } => "alter-topic",
            Request::PurgeTopic { .. } => "purge-topic",
            Request::DeleteGroup { .. } => "delete-group",
            Request::TrimShards { .. } => "trim-shards",
            Request::DeleteGroupOffset { .. } => "delete-group-offset",
            Request::JoinGroup { .. } => "join-group",
            Request::GroupHeartbeat { .. } => "group-heartbeat",
            Request::LeaveGroup { .. } => "leave-group",
            Request::ListGroups => "list-groups",
            Request::DescribeGroup { .. } => "describe-group",
            Request::ListBrokers => "list-brokers",
            Request::Status => "status",
            Request::RemoveBroker { .. } => "remove-broker",
            Request::RegisterBroker { .. } => "register-broker",
            Request::Heartbeat { .. } => "heartbeat",
            Request::LeaveBroker { .. } => "leave-broker",
            Request::AssignShards { .. } => "assign-shards",
            Request::ImportShard { .. } => "import-shard",
            Request::DropShard { .. } => "drop-shard",
            Request::MoveStatus { .. } => "move-status",
            Request::ExportShard { .. } => "export-shard",
            Request::ExportMeta { .. } => "export-meta",
            Request::FenceShard { .. } => "fence-shard",
            Request::UnfenceShard { .. } => "unfence-shard",
            Request::ReplaceBroker { .. } => "replace-broker",
            Request::ReplicaFetch(_) => "replica-fetch",
            Request::AlterIsr { .. } => "alter-isr",
            Request::ElectLeader { .. } => "elect-leader",
            Request::ShardChecksum { .. } => "shard-checksum",
        }
    }

    /// Who may send this request. The server checks it before the request reaches a handler.
    pub fn access(&self) -> Access {
        match self {
            Request::Handshake { .. } | Request::Authenticate { .. } => Access::Handshake,
            Request::Produce(_)
            | Request::Fetch(_)
            | Request::CommitOffset { .. }
            | Request::FetchOffset { .. }
            | Request::ListOffsets { .. }
            | Request::Metadata { .. }
            | Request::ListTopics
            | Request::DescribeTopic { .. }
            | Request::JoinGroup { .. }
            | Request::GroupHeartbeat { .. }
            | Request::LeaveGroup { .. }
            | Request::ListGroups
            | Request::DescribeGroup { .. }
            | Request::ListBrokers
            | Request::Status => Access::Data,
            // Everything that changes membership, placement or topics, moves or deletes data, or
            // hands a shard's contents to the asker. Listed in full, so that a new request is
            // a compile error here instead of silently open.
            Request::CreateTopic { .. }
            | Request::DeleteTopic { .. }
            | Request::AlterTopic { .. }
            | Request::PurgeTopic { .. }
            | Request::DeleteGroup { .. }
            | Request::TrimShards { .. }
            | Request::DeleteGroupOffset { .. }
            | Request::RemoveBroker { .. }
            | Request::RegisterBroker { .. }
            | Request::Heartbeat { .. }
            | Request::LeaveBroker { .. }
            | Request::AssignShards { .. }
            | Request::ImportShard { .. }
            | Request::DropShard { .. }
            | Request::MoveStatus { .. }
            | Request::ExportShard { .. }
            | Request::ExportMeta { .. }
            | Request::FenceShard { .. }
            | Request::UnfenceShard { .. }
            | Request::ReplaceBroker { .. }
            | Request::ReplicaFetch(_)
            | Request::AlterIsr { .. }
            | Request::ElectLeader { .. }
            | Request::ShardChecksum { .. } => Access::Control,
        }
    }

    /// The shard this request addresses, if any (for routing and proxying).
    pub fn shard(&self) -> Option<&ShardId> {
        match self {
            Request::Produce(p) => Some(&p.shard),
            Request::Fetch(f) => Some(&f.shard),
            Request::CommitOffset { shard, .. }
            | Request::FetchOffset { shard, .. }
            | Request::ListOffsets { shard, .. }
            | Request::DeleteGroupOffset { shard, .. } => Some(shard),
            _ => None,
        }
    }
}

/// What a server lets connections that did not prove the cluster secret do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpenTo {
    /// The server has no secret: every request is allowed.
    Everything,
    /// `--open-data-plane`: data-plane requests only.
    DataPlane,
    /// Nothing but the handshake.
    Nothing,
}

/// Which peers may send a request (see [`Request::access`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Opening a connection: anyone.
    Handshake,
    /// Produce, fetch, offsets, metadata and read-only views: peers that proved the cluster
    /// secret, or anyone where the node runs with an open data plane.
    Data,
    /// Control, admin and transfer: only peers that proved the cluster secret.
    Control,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Handshake {
        version: u32,
        server: String,
        /// The server's nonce, which the client's proof must cover.
        nonce: Vec<u8>,
        /// The server's proof over both nonces, when it holds a cluster secret (clients that
        /// hold one refuse a server that cannot prove it).
        proof: Option<Vec<u8>>,
        /// What this server lets an unauthenticated connection do.
        open: OpenTo,
    },
    /// The client's proof checked out: every request is allowed on this connection.
    Authenticated,
    /// The batch holds offsets `base_offset .. base_offset + count`. `duplicate` is true when
    /// this was a retry of a batch already appended (nothing was appended this time).
    Produced {
        base_offset: Offset,
        count: u32,
        duplicate: bool,
    },
    Fetched {
        /// The shard's next offset (that the reader may see) at the time of the answer.
        high_watermark: Offset,
        /// First offset still stored.
        start_offset: Offset,
        /// The serving broker process's incarnation, new at every start.
        incarnation: u64,
        /// Every offset below this was on disk when this incarnation began serving the shard. A
        /// reader that last read from another incarnation and stands past this lost records in a
        /// crash: the offsets from here on may hold other records now, so it reads on from here.
        stable_end: Offset,
        batches: Vec<StoredBatch>,
    },
    Committed,
    GroupOffset {
        offset: Option<Offset>,
    },
    Offsets {
        start: Offset,
        end: Offset,
    },
    Routing(RoutingTable),
    TopicCreated(TopicInfo),
    /// A topic's routes are gone; `copies` replica copies are being deleted on their brokers.
    TopicDeleted {
        name: String,
        partitions: u32,
        copies: u32,
    },
    /// A topic after `AlterTopic`.
    TopicAltered(TopicInfo),
    /// Each shard's log after `PurgeTopic`.
    TopicPurged {
        name: String,
        shards: Vec<TrimResult>,
    },
    /// `DeleteGroup`: the group's offsets are gone from `shards` shards.
    GroupDeleted {
        group: String,
        shards: u32,
    },
    Trimmed(Vec<TrimResult>),
    /// What a group member may own now (answer to `JoinGroup` and `GroupHeartbeat`): it gives
    /// up (commits, stops reading) every shard it owns that is not listed.
    GroupAssignment {
        member_id: String,
        generation: u64,
        strategy: String,
        shards: Vec<ShardId>,
    },
    /// Groups with live members.
    Groups(Vec<String>),
    Group(GroupDescription),
    Topics(Vec<TopicInfo>),
    Topic(TopicDescription),
    Brokers(Vec<BrokerInfo>),
    Status(ClusterStatus),
    BrokerRemoved {
        id: BrokerId,
        /// Shards that will move (drain) or were discarded (force).
        shards: Vec<ShardId>,
        forced: bool,
    },
    Registered {
        epoch: Epoch,
        /// The router's cluster id: a broker with a fresh data directory records it there.
        cluster: String,
        /// The broker's leader lease: it stops acknowledging writes this long after sending the
        /// last heartbeat the router answered. Shorter than the router's down timeout, so a
        /// leader cut off from the router stops before another replica is elected.
        lease_ms: u64,
    },
    HeartbeatAck {
        epoch: Epoch,
        /// The complete set of shards this broker should own now.
        assignments: Vec<ShardAssignment>,
    },
    /// Generic success for control requests.
    Ok,
    Move(MoveProgress),
    Exported {
        batches: Vec<StoredBatch>,
        /// The source's next offset when the chunk was read.
        end_offset: Offset,
        /// True once the source is fenced: `end_offset` is final.
        fenced: bool,
    },
    Meta(ShardMeta),
    Fenced {
        end_offset: Offset,
    },
    /// Broker `id` may now be registered by a new process; `shards` are its unreplicated ones,
    /// which start empty there (their data was only on the lost disk).
    BrokerReplaced {
        id: BrokerId,
        shards: Vec<ShardId>,
    },
    ReplicaFetched(Vec<ReplicaFetchResult>),
    IsrAltered {
        isr_version: u64,
    },
    Elected(Election),
    Checksums(Vec<ReplicaChecksum>),
}

impl Response {
    pub fn name(&self) -> &'static str {
        match self {
            Response::Handshake { .. } => "handshake",
            Response::Authenticated => "authenticated",
            Response::Produced { .. } => "produced",
            Response::Fetched { .. } => "fetched",
            Response::Committed => "committed",
            Response::GroupOffset { .. } => "group-offset",
            Response::Offsets { .. } => "offsets",
            Response::Routing(_) => "routing",
            Response::TopicCreated(_) => "topic-created",
            Response::TopicDeleted { .. } => "topic-deleted",
            Response::TopicAltered(_) => "topic-altered",
            Response::TopicPurged { .. } => "topic-purged",
            Response::GroupDeleted { .. } => "group-deleted",
            Response::Trimmed(_) => "trimmed",
            Response::GroupAssignment { .. } => "group-assignment",
            Response::Groups(_) => "groups",
            Response::Group(_) => "group",
            Response::Topics(_) => "topics",
            Response::Topic(_) => "topic",
            Response::Brokers(_) => "brokers",
            Response::Status(_) => "status",
            Response::BrokerRemoved { .. } => "broker-removed",
            Response::Registered { .. } => "registered",
            Response::HeartbeatAck { .. } => "heartbeat-ack",
            Response::Ok => "ok",
            Response::Move(_) => "move",
            Response::Exported { .. } => "exported",
            Response::Meta(_) => "meta",
            Response::Fenced { .. } => "fenced",
            Response::BrokerReplaced { .. } => "broker-replaced",
            Response::ReplicaFetched(_) => "replica-fetched",
            Response::IsrAltered { .. } => "isr-altered",
            Response::Elected(_) => "elected",
            Response::Checksums(_) => "checksums",
        }
    }
}

/// Turns an unexpected response variant into a protocol error naming both sides.
pub fn unexpected(expected: &str, got: &Response) -> ErrorKind {
    ErrorKind::Internal {
        reason: format!("expected a {expected} response, got {}", got.name()),
    }
}
