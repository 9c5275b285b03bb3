//! Round-trip tests for every message of the protocol: each `Request`, `Response` and `ErrorKind`
//! variant must come back bit-for-bit equal from `codec::encode`/`codec::decode` and from the
//! `FrameCodec`, inside its envelope. Exhaustive `match`es over the variants make adding a variant
//! without a sample here a compile error (missing match arm) or a test failure (missing sample).
//! Proptest strategies cover the data-plane messages with random contents.

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use shardq_protocol::codec::{decode, encode};
use shardq_protocol::*;
use tokio_util::codec::{Decoder, Encoder};

// ---------------------------------------------------------------------------------------------
// Fixed samples, one per variant, every field non-default.
// ---------------------------------------------------------------------------------------------

fn shard(t: &str, p: u32) -> ShardId {
    ShardId::new(t, p)
}

fn broker(id: BrokerId) -> BrokerAddr {
    BrokerAddr {
        id,
        addr: format!("10.0.0.{id}:74{id:02}"),
    }
}

fn sample_batch() -> RecordBatch {
    let mut b = BatchBuilder::default();
    b.push(Some(b"key-1"), b"value one", 1_700_000_000_001);
    b.push(None, b"", 1_700_000_000_002);
    b.push(Some(b""), &[0xff; 300], u64::MAX);
    b.push_with_headers(
        Some(b"k"),
        b"with headers",
        1_700_000_000_003,
        &[
            ("trace-id".into(), Bytes::from_static(b"abc")),
            ("empty".into(), Bytes::new()),
        ],
    );
    b.finish()
}

fn sample_stored(base: Offset) -> StoredBatch {
    StoredBatch {
        base_offset: base,
        leader_epoch: 7,
        producer: Some(ProducerState {
            producer_id: 77,
            last_sequence: 5,
            base_offset: base,
            count: 3,
        }),
        batch: sample_batch(),
    }
}

fn sample_report() -> ShardReport {
    ShardReport {
        shard: shard("orders", 3),
        state: ShardState::Fenced,
        epoch: 42,
        start_offset: 100,
        end_offset: 12_345,
        bytes: 9_999_999,
        groups: vec![("billing".into(), 77), ("audit".into(), 12_000)],
        role: ReplicaRole::Leader,
        leader_epoch: 4,
        high_watermark: 12_000,
        followers: vec![
            FollowerProgress {
                broker: 2,
                end: Some(12_300),
                lag: 45,
                in_sync: true,
            },
            FollowerProgress {
                broker: 3,
                end: None,
                lag: 12_345,
                in_sync: false,
            },
        ],
    }
}

fn sample_move() -> MoveProgress {
    MoveProgress {
        move_id: 9,
        shard: shard("orders", 2),
        from: Some(1),
        to: 4,
        phase: MovePhase::Activating,
        records_copied: 1_000_000,
        bytes_copied: 123_456_789,
        lag: 17,
        started_ms: 1_700_000_000_000,
        finished_ms: Some(1_700_000_005_000),
        write_pause_ms: Some(35),
        error: Some("destination disk slow".into()),
    }
}

fn sample_route(p: u32) -> ShardRoute {
    ShardRoute {
        shard: shard("orders", p),
        owner: Some(broker(p)),
        moving: p == 2,
        leader_epoch: 0,
        replicas: vec![],
        isr: vec![],
    }
}

fn sample_topic() -> TopicInfo {
    TopicInfo {
        name: "orders".into(),
        partitions: 3,
        replication_factor: 1,
        min_insync: 1,
        retention: Retention {
            ms: Some(3_600_000),
            bytes: Some(1 << 30),
        },
    }
}

fn sample_broker_info() -> BrokerInfo {
    BrokerInfo {
        addr: broker(2),
        weight: 150,
        status: BrokerStatus::Leaving,
        last_seen_ms: 250,
        shards: 11,
        degraded: Some("storage full: No space left on device".into()),
    }
}

/// Index of a request variant. Exhaustive on purpose: a new variant does not compile until it is
/// listed here, and then `every_request_variant_round_trips` fails until it has a sample.
fn request_variant(r: &Request) -> usize {
    match r {
        Request::Handshake { .. } => 0,
        Request::Produce(_) => 1,
        Request::Fetch(_) => 2,
        Request::CommitOffset { .. } => 3,
        Request::FetchOffset { .. } => 4,
        Request::ListOffsets { .. } => 5,
        Request::Metadata { .. } => 6,
        Request::CreateTopic { .. } => 7,
        Request::ListTopics => 8,
        Request::DescribeTopic { .. } => 9,
        Request::ListBrokers => 10,
        Request::Status => 11,
        Request::RemoveBroker { .. } => 12,
        Request::RegisterBroker { .. } => 13,
        Request::Heartbeat { .. } => 14,
        Request::LeaveBroker { .. } => 15,
        Request::AssignShards { .. } => 16,
        Request::ImportShard { .. } => 17,
        Request::DropShard { .. } => 18,
        Request::MoveStatus { .. } => 19,
        Request::ExportShard { .. } => 20,
        Request::ExportMeta { .. } => 21,
        Request::FenceShard { .. } => 22,
        Request::UnfenceShard { .. } => 23,
        Request::Authenticate { .. } => 24,
        Request::ReplaceBroker { .. } => 25,
        Request::ReplicaFetch(_) => 26,
        Request::AlterIsr { .. } => 27,
        Request::ElectLeader { .. } => 28,
        Request::ShardChecksum { .. } => 29,
        Request::DeleteTopic { .. } => 30,
        Request::AlterTopic { .. } => 31,
        Request::JoinGroup { .. } => 32,
        Request::GroupHeartbeat { .. } => 33,
        Request::LeaveGroup { .. } => 34,
        Request::ListGroups => 35,
        Request::DescribeGroup { .. } => 36,
        Request::PurgeTopic { .. } => 37,
        Request::DeleteGroup { .. } => 38,
        Request::TrimShards { .. } => 39,
        Request::DeleteGroupOffset { .. } => 40,
    }
}
const REQUEST_VARIANTS: usize = 41;

fn sample_replica_set() -> ReplicaSet {
    ReplicaSet {
        leader: Some(broker(2)),
        leader_epoch: 9,
        replicas: vec![2, 1, 3],
        isr: vec![2, 3],
        isr_version: 14,
        min_insync: 2,
    }
}

fn sample_requests() -> Vec<Request> {
    vec![
        Request::Handshake {
            version: 7,
            client: "producer-3".into(),
            nonce: vec![7; 32],
            authenticate: true,
        },
        Request::Authenticate {
            proof: vec![0xab; 32],
        },
        Request::Produce(ProduceRequest {
            shard: shard("orders", 2),
            epoch: 19,
            producer: Some(ProducerSeq {
                producer_id: 0xdead_beef,
                sequence: 41,
            }),
            acks: Acks::Appended,
            batch: sample_batch(),
        }),
        Request::Fetch(FetchRequest {
            shard: shard("orders", 1),
            epoch: 20,
            offset: 555,
            max_bytes: 1 << 20,
            max_wait_ms: 250,
        }),
        Request::CommitOffset {
            shard: shard("orders", 1),
            epoch: 21,
            group: "billing".into(),
            offset: 556,
        },
        Request::FetchOffset {
            shard: shard("orders", 3),
            epoch: 22,
            group: "audit".into(),
        },
        Request::ListOffsets {
            shard: shard("events", 10_000),
            epoch: u64::MAX,
        },
        Request::Metadata {
            topics: vec!["orders".into(), "events".into()],
        },
        Request::CreateTopic {
            name: "payments".into(),
            partitions: 12,
            replication_factor: None,
            min_insync: None,
            retention: Default::default(),
        },
        Request::ListTopics,
        Request::DescribeTopic {
            name: "orders".into(),
        },
        Request::DeleteTopic {
            name: "old-orders".into(),
        },
        Request::AlterTopic {
            name: "orders".into(),
            partitions: Some(24),
            retention_ms: Some(None),
            retention_bytes: Some(Some(10_000_000)),
        },
        Request::PurgeTopic {
            name: "orders".into(),
        },
        Request::DeleteGroup {
            group: "billing".into(),
        },
        Request::TrimShards {
            trims: vec![
                ShardTrim {
                    shard: shard("orders", 1),
                    to: TrimTo::Retention {
                        ms: Some(86_400_000),
                        shard_bytes: None,
                    },
                },
                ShardTrim {
                    shard: shard("orders", 2),
                    to: TrimTo::Before(Some(77)),
                },
                ShardTrim {
                    shard: shard("orders", 3),
                    to: TrimTo::Before(None),
                },
            ],
        },
        Request::DeleteGroupOffset {
            shard: shard("orders", 2),
            group: "billing".into(),
        },
        Request::JoinGroup {
            group: "billing".into(),
            member: Some("runconsume-3-17".into()),
            client: "runconsume-3".into(),
            subscriptions: vec![
                ShardSpec::All("orders".into()),
                ShardSpec::One(shard("events", 2)),
            ],
            strategy: "sticky".into(),
            session_timeout_ms: 10_000,
            owned: vec![shard("orders", 4)],
        },
        Request::GroupHeartbeat {
            group: "billing".into(),
            member: "runconsume-3-17".into(),
            owned: vec![shard("orders", 4), shard("orders", 5)],
        },
        Request::LeaveGroup {
            group: "billing".into(),
            member: "runconsume-3-17".into(),
        },
        Request::ListGroups,
        Request::DescribeGroup {
            group: "billing".into(),
        },
        Request::ListBrokers,
        Request::Status,
        Request::RemoveBroker { id: 3, force: true },
        Request::RegisterBroker {
            id: 5,
            addr: "127.0.0.1:7405".into(),
            weight: 200,
            uuid: "0f8e7a4c-3b2d-4c1e-9a8b-7c6d5e4f3a2b".into(),
            cluster: Some("c0ffee00-1111-4222-8333-444455556666".into()),
            incarnation: 0x1d2c_3b4a_5968_7786,
        },
        Request::Heartbeat {
            id: 5,
            report: BrokerReport {
                shards: vec![sample_report()],
                imports: vec![sample_move()],
                degraded: None,
            },
            uuid: "0f8e7a4c-3b2d-4c1e-9a8b-7c6d5e4f3a2b".into(),
            incarnation: 0x1d2c_3b4a_5968_7786,
        },
        Request::LeaveBroker { id: 6 },
        Request::AssignShards {
            epoch: 33,
            shards: vec![
                ShardAssignment {
                    shard: shard("orders", 1),
                    epoch: 33,
                    replication: sample_replica_set(),
                },
                ShardAssignment::sole(shard("orders", 2), 32, 4),
            ],
        },
        Request::ImportShard {
            move_id: 12,
            shard: shard("orders", 2),
            source: broker(1),
            epoch: 34,
        },
        Request::DropShard {
            shard: shard("orders", 2),
            epoch: 35,
        },
        Request::MoveStatus { move_id: 12 },
        Request::ExportShard {
            shard: shard("orders", 2),
            from_offset: 4_096,
            max_bytes: 65_536,
        },
        Request::ExportMeta {
            shard: shard("orders", 2),
        },
        Request::FenceShard {
            shard: shard("orders", 2),
            move_id: 12,
        },
        Request::UnfenceShard {
            shard: shard("orders", 2),
            move_id: 13,
        },
        Request::ReplaceBroker { id: 4 },
        Request::ReplicaFetch(ReplicaFetchRequest {
            follower: 3,
            incarnation: u64::MAX - 7,
            positions: vec![
                ReplicaPosition {
                    shard: shard("orders", 1),
                    leader_epoch: 9,
                    fetch_offset: 1_000,
                    last_epoch: Some(8),
                    durable_end: 990,
                    groups_version: (9, 4),
                },
                ReplicaPosition {
                    shard: shard("orders", 2),
                    leader_epoch: 1,
                    fetch_offset: 0,
                    last_epoch: None,
                    durable_end: 0,
                    groups_version: (0, 0),
                },
            ],
            max_bytes: 1 << 20,
            max_wait_ms: 500,
        }),
        Request::AlterIsr {
            broker: 2,
            shard: shard("orders", 1),
            leader_epoch: 9,
            isr_version: 14,
            isr: vec![2, 1, 3],
            incarnations: vec![(3, 0x0123_4567_89ab_cdef)],
        },
        Request::ElectLeader {
            shard: shard("orders", 1),
            unclean: true,
        },
        Request::ShardChecksum {
            shard: shard("orders", 1),
            upto: Some(12_000),
        },
    ]
}

/// See [`request_variant`].
fn response_variant(r: &Response) -> usize {
    match r {
        Response::Handshake { .. } => 0,
        Response::Produced { .. } => 1,
        Response::Fetched { .. } => 2,
        Response::Committed => 3,
        Response::GroupOffset { .. } => 4,
        Response::Offsets { .. } => 5,
        Response::Routing(_) => 6,
        Response::TopicCreated(_) => 7,
        Response::Topics(_) => 8,
        Response::Topic(_) => 9,
        Response::Brokers(_) => 10,
        Response::Status(_) => 11,
        Response::BrokerRemoved { .. } => 12,
        Response::Registered { .. } => 13,
        Response::HeartbeatAck { .. } => 14,
        Response::Ok => 15,
        Response::Move(_) => 16,
        Response::Exported { .. } => 17,
        Response::Meta(_) => 18,
        Response::Fenced { .. } => 19,
        Response::Authenticated => 20,
        Response::BrokerReplaced { .. } => 21,
        Response::ReplicaFetched(_) => 22,
        Response::IsrAltered { .. } => 23,
        Response::Elected(_) => 24,
        Response::Checksums(_) => 25,
        Response::TopicDeleted { .. } => 26,
        Response::TopicAltered(_) => 27,
        Response::GroupAssignment { .. } => 28,
        Response::Groups(_) => 29,
        Response::Group(_) => 30,
        Response::TopicPurged { .. } => 31,
        Response::GroupDeleted { .. } => 32,
        Response::Trimmed(_) => 33,
    }
}
const RESPONSE_VARIANTS: usize = 34;

fn sample_responses() -> Vec<Response> {
    vec![
        Response::Handshake {
            version: 7,
            server: "broker-2".into(),
            nonce: vec![9; 32],
            proof: Some(vec![3; 32]),
            open: OpenTo::DataPlane,
        },
        Response::Produced {
            base_offset: 1_000,
            count: 3,
            duplicate: true,
        },
        Response::Fetched {
            high_watermark: 2_000,
            start_offset: 10,
            incarnation: 0xfeed_beef,
            stable_end: 1_500,
            batches: vec![sample_stored(1_000), sample_stored(1_003)],
        },
        Response::Committed,
        Response::GroupOffset { offset: Some(88) },
        Response::Offsets {
            start: 10,
            end: 2_000,
        },
        Response::Routing(RoutingTable {
            epoch: 44,
            topics: vec![sample_topic()],
            shards: vec![
                sample_route(1),
                sample_route(2),
                ShardRoute {
                    shard: shard("orders", 3),
                    owner: None,
                    moving: false,
                    leader_epoch: 0,
                    replicas: vec![],
                    isr: vec![],
                },
            ],
        }),
        Response::TopicCreated(sample_topic()),
        Response::TopicDeleted {
            name: "old-orders".into(),
            partitions: 6,
            copies: 18,
        },
        Response::TopicAltered(sample_topic()),
        Response::GroupAssignment {
            member_id: "runconsume-3-17".into(),
            generation: 9,
            strategy: "range".into(),
            shards: vec![shard("orders", 1), shard("orders", 2)],
        },
        Response::Groups(vec!["billing".into(), "audit".into()]),
        Response::Group(GroupDescription {
            name: "billing".into(),
            strategy: "sticky".into(),
            generation: 4,
            members: vec![GroupMemberInfo {
                member_id: "runconsume-3-17".into(),
                client: "runconsume-3".into(),
                subscriptions: vec![ShardSpec::All("orders".into())],
                owned: vec![shard("orders", 1)],
                target: vec![shard("orders", 1), shard("orders", 2)],
                last_seen_ms: 420,
            }],
            offsets: vec![(shard("orders", 1), 17, 40)],
        }),
        Response::Topics(vec![
            sample_topic(),
            TopicInfo {
                name: "events".into(),
                partitions: 64,
                replication_factor: 1,
                min_insync: 1,
                retention: Default::default(),
            },
        ]),
        Response::Topic(TopicDescription {
            topic: sample_topic(),
            shards: vec![
                (sample_route(1), Some(sample_report())),
                (sample_route(2), None),
            ],
        }),
        Response::Brokers(vec![sample_broker_info()]),
        Response::Status(ClusterStatus {
            epoch: 45,
            brokers: vec![sample_broker_info()],
            topics: vec![sample_topic()],
            shards: vec![(sample_route(3), Some(sample_report()))],
            moves: vec![sample_move()],
            scaling: vec![ScalingDecision {
                time_ms: 1_790_000_000_000,
                action: "remove".into(),
                reason: "average 120 msgs/s per broker below 2000 for 10 s".into(),
                brokers: 3,
                broker: Some(3),
            }],
            pending_drops: vec![(3, ShardId::new("orders", 2))],
        }),
        Response::BrokerRemoved {
            id: 3,
            shards: vec![shard("orders", 1), shard("events", 7)],
            forced: true,
        },
        Response::Registered {
            epoch: 46,
            cluster: "c0ffee00-1111-4222-8333-444455556666".into(),
            lease_ms: 1000,
        },
        Response::HeartbeatAck {
            epoch: 47,
            assignments: vec![ShardAssignment {
                shard: shard("orders", 1),
                epoch: 47,
                replication: sample_replica_set(),
            }],
        },
        Response::Ok,
        Response::Move(sample_move()),
        Response::Exported {
            batches: vec![sample_stored(0)],
            end_offset: 3,
            fenced: true,
        },
        Response::Meta(ShardMeta {
            groups: vec![("billing".into(), 3)],
            producers: vec![ProducerState {
                producer_id: 77,
                last_sequence: 5,
                base_offset: 100,
                count: 4,
            }],
        }),
        Response::Fenced { end_offset: 3_333 },
        Response::Authenticated,
        Response::BrokerReplaced {
            id: 4,
            shards: vec![shard("orders", 1), shard("orders", 3)],
        },
        Response::ReplicaFetched(vec![
            ReplicaFetchResult {
                shard: shard("orders", 1),
                result: Ok(ReplicaData {
                    high_watermark: 990,
                    diverging: None,
                    batches: vec![sample_stored(1_000)],
                    groups: vec![("billing".into(), 800)],
                    groups_deleted: vec!["old".into()],
                    groups_version: (9, 5),
                    log_start: 400,
                }),
            },
            ReplicaFetchResult {
                shard: shard("orders", 2),
                result: Ok(ReplicaData {
                    high_watermark: 0,
                    diverging: Some((3, 120)),
                    batches: vec![],
                    groups: vec![],
                    groups_deleted: vec![],
                    groups_version: (1, 0),
                    log_start: 0,
                }),
            },
            ReplicaFetchResult {
                shard: shard("orders", 3),
                result: Err(ErrorKind::LeaderEpochMismatch {
                    shard: "orders:P3".into(),
                    ours: 4,
                    theirs: 5,
                }),
            },
        ]),
        Response::IsrAltered { isr_version: 15 },
        Response::TopicPurged {
            name: "orders".into(),
            shards: vec![
                TrimResult {
                    shard: shard("orders", 1),
                    result: Ok(LogRange {
                        start: 900,
                        end: 900,
                        bytes: 0,
                        deleted: 900,
                    }),
                },
                TrimResult {
                    shard: shard("orders", 2),
                    result: Err(ErrorKind::Unavailable {
                        what: "broker 3".into(),
                        reason: "down".into(),
                    }),
                },
            ],
        },
        Response::GroupDeleted {
            group: "billing".into(),
            shards: 12,
        },
        Response::Trimmed(vec![TrimResult {
            shard: shard("orders", 3),
            result: Ok(LogRange {
                start: 10,
                end: 20,
                bytes: 300,
                deleted: 10,
            }),
        }]),
        Response::Elected(Election {
            shard: shard("orders", 1),
            leader: 3,
            leader_epoch: 10,
            unclean: true,
            may_lose: Some(42),
        }),
        Response::Checksums(vec![
            ReplicaChecksum {
                broker: 2,
                role: ReplicaRole::Leader,
                start: 0,
                end: 12_000,
                records: 12_000,
                checksum: 0xdead_beef_f00d,
                error: None,
            },
            ReplicaChecksum {
                broker: 3,
                role: ReplicaRole::Idle,
                start: 0,
                end: 0,
                records: 0,
                checksum: 0,
                error: Some("cannot connect".into()),
            },
        ]),
    ]
}

/// See [`request_variant`].
fn error_variant(e: &ErrorKind) -> usize {
    match e {
        ErrorKind::NotOwner { .. } => 0,
        ErrorKind::Moving { .. } => 1,
        ErrorKind::UnknownTopic { .. } => 2,
        ErrorKind::UnknownShard { .. } => 3,
        ErrorKind::InvalidName { .. } => 4,
        ErrorKind::TopicExists { .. } => 5,
        ErrorKind::RecordTooLarge { .. } => 6,
        ErrorKind::FrameTooLarge { .. } => 7,
        ErrorKind::Unavailable { .. } => 8,
        ErrorKind::VersionMismatch { .. } => 9,
        ErrorKind::OutOfOrderSequence { .. } => 10,
        ErrorKind::Timeout { .. } => 11,
        ErrorKind::BadRequest { .. } => 12,
        ErrorKind::Unsupported { .. } => 13,
        ErrorKind::Storage { .. } => 14,
        ErrorKind::UnknownBroker { .. } => 15,
        ErrorKind::ShuttingDown => 16,
        ErrorKind::Internal { .. } => 17,
        ErrorKind::RemovedBroker { .. } => 18,
        ErrorKind::BrokerDown { .. } => 19,
        ErrorKind::Unauthorized { .. } => 20,
        ErrorKind::TooManyConnections { .. } => 21,
        ErrorKind::BrokerUp { .. } => 22,
        ErrorKind::IdentityConflict { .. } => 23,
        ErrorKind::WrongCluster { .. } => 24,
        ErrorKind::StorageFull { .. } => 25,
        ErrorKind::NotEnoughReplicas { .. } => 26,
        ErrorKind::LeaderEpochMismatch { .. } => 27,
        ErrorKind::UnknownMember { .. } => 28,
        ErrorKind::OffsetOutOfRange { .. } => 29,
    }
}
const ERROR_VARIANTS: usize = 30;

fn sample_errors() -> Vec<ErrorKind> {
    vec![
        ErrorKind::NotOwner {
            shard: "orders:P1".into(),
            epoch: 9,
            owner: Some(broker(3)),
        },
        ErrorKind::Moving {
            shard: "orders:P2".into(),
        },
        ErrorKind::UnknownTopic {
            topic: "nope".into(),
        },
        ErrorKind::UnknownMember {
            group: "billing".into(),
            member: "gone-1".into(),
        },
        ErrorKind::OffsetOutOfRange {
            shard: "orders:P1".into(),
            offset: 10,
            start: 500,
            end: 900,
        },
        ErrorKind::UnknownShard {
            shard: "orders:P9".into(),
            reason: "topic has 3 partitions".into(),
        },
        ErrorKind::InvalidName {
            name: "a/b".into(),
            reason: "contains '/'".into(),
        },
        ErrorKind::TopicExists {
            topic: "orders".into(),
            partitions: 3,
        },
        ErrorKind::RecordTooLarge {
            size: 2_000_000,
            max: 1_000_000,
        },
        ErrorKind::FrameTooLarge {
            size: 20_000_000,
            max: 16_777_216,
        },
        ErrorKind::Unavailable {
            what: "orders:P1".into(),
            reason: "broker 2 is down".into(),
        },
        ErrorKind::VersionMismatch {
            client: 999,
            server: 1,
        },
        ErrorKind::OutOfOrderSequence {
            shard: "orders:P1".into(),
            producer_id: 4,
            expected: 10,
            got: 12,
        },
        ErrorKind::Timeout { after_ms: 1_500 },
        ErrorKind::BadRequest {
            reason: "empty record batch".into(),
        },
        ErrorKind::Unsupported {
            request: "export-shard".into(),
        },
        ErrorKind::Storage {
            reason: "sled: io error".into(),
        },
        ErrorKind::UnknownBroker { id: 8 },
        ErrorKind::ShuttingDown,
        ErrorKind::Internal {
            reason: "expected a produced response, got ok".into(),
        },
        ErrorKind::RemovedBroker { id: 2 },
        ErrorKind::BrokerDown { id: 3, shards: 23 },
        ErrorKind::Unauthorized {
            request: "drop-shard".into(),
            reason: "needs the cluster secret".into(),
        },
        ErrorKind::TooManyConnections {
            node: "router".into(),
            limit: 4096,
            reserved: 256,
        },
        ErrorKind::BrokerUp {
            id: 3,
            reason: "use a plain remove".into(),
        },
        ErrorKind::IdentityConflict {
            id: 1,
            bound: "0f8e7a4c-3b2d-4c1e-9a8b-7c6d5e4f3a2b".into(),
            offered: "c0ffee00-1111-4222-8333-444455556666".into(),
        },
        ErrorKind::WrongCluster {
            id: 1,
            data_cluster: "0f8e7a4c-3b2d-4c1e-9a8b-7c6d5e4f3a2b".into(),
            router_cluster: "c0ffee00-1111-4222-8333-444455556666".into(),
        },
        ErrorKind::StorageFull {
            broker: 2,
            reason: "No space left on device (os error 28)".into(),
        },
        ErrorKind::NotEnoughReplicas {
            shard: "orders:P1".into(),
            isr: 1,
            min: 2,
        },
        ErrorKind::LeaderEpochMismatch {
            shard: "orders:P1".into(),
            ours: 4,
            theirs: 3,
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Round-trips through `codec::encode`/`decode`, then through a `FrameCodec` frame, and returns
/// the decoded value of each path.
fn round_trip<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = encode(value).expect("encode");
    let back: T = decode(&bytes).expect("decode");
    assert_eq!(&back, value, "codec::decode(codec::encode(x)) != x");

    let mut codec = FrameCodec::<T>::new(DEFAULT_MAX_FRAME);
    let mut buf = BytesMut::new();
    codec.encode(value, &mut buf).expect("frame encode");
    assert_eq!(buf.len(), 4 + bytes.len(), "frame = 4-byte length + body");
    assert_eq!(&buf[..4], &(bytes.len() as u32).to_be_bytes()[..]);
    assert_eq!(
        &buf[4..],
        &bytes[..],
        "frame body differs from codec::encode"
    );
    let framed = codec
        .decode(&mut buf)
        .expect("frame decode")
        .expect("whole frame");
    assert!(buf.is_empty(), "the frame was not fully consumed");
    assert_eq!(&framed, value, "frame round trip != x");
    back
}

fn records(batch: &RecordBatch) -> Vec<Record> {
    batch
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .expect("batch decodes")
}

// ---------------------------------------------------------------------------------------------
// Fixed-sample tests
// ---------------------------------------------------------------------------------------------

#[test]
fn every_request_variant_round_trips() {
    let samples = sample_requests();
    let covered: BTreeSet<usize> = samples.iter().map(request_variant).collect();
    let missing: Vec<usize> = (0..REQUEST_VARIANTS)
        .filter(|i| !covered.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "request variants without a sample: {missing:?}"
    );
    assert_eq!(samples.len(), REQUEST_VARIANTS, "one sample per variant");

    for (i, request) in samples.into_iter().enumerate() {
        let env = RequestEnvelope {
            correlation_id: 0x0123_4567_89ab_cdef ^ i as u64,
            request,
        };
        let back = round_trip(&env);
        assert_eq!(back.request.name(), env.request.name());
        if let (Request::Produce(a), Request::Produce(b)) = (&env.request, &back.request) {
            assert_eq!(records(&a.batch), records(&b.batch));
        }
    }
}

#[test]
fn every_response_variant_round_trips() {
    let samples = sample_responses();
    let covered: BTreeSet<usize> = samples.iter().map(response_variant).collect();
    let missing: Vec<usize> = (0..RESPONSE_VARIANTS)
        .filter(|i| !covered.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "response variants without a sample: {missing:?}"
    );
    assert_eq!(samples.len(), RESPONSE_VARIANTS, "one sample per variant");

    for (i, response) in samples.into_iter().enumerate() {
        let env = ResponseEnvelope {
            correlation_id: u64::MAX - i as u64,
            result: Ok(response),
        };
        let back = round_trip(&env);
        if let (
            Ok(Response::Fetched { batches: a, .. }),
            Ok(Response::Fetched { batches: b, .. }),
        ) = (&env.result, &back.result)
        {
            let ra: Vec<_> = a.iter().flat_map(|s| s.records_from(0)).collect();
            let rb: Vec<_> = b.iter().flat_map(|s| s.records_from(0)).collect();
            assert_eq!(ra.len(), 8);
            assert_eq!(ra, rb);
        }
    }
}

#[test]
fn every_error_variant_round_trips() {
    let samples = sample_errors();
    let covered: BTreeSet<usize> = samples.iter().map(error_variant).collect();
    let missing: Vec<usize> = (0..ERROR_VARIANTS)
        .filter(|i| !covered.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "error variants without a sample: {missing:?}"
    );
    assert_eq!(samples.len(), ERROR_VARIANTS, "one sample per variant");

    for (i, kind) in samples.into_iter().enumerate() {
        let env = ResponseEnvelope {
            correlation_id: i as u64 + 1,
            result: Err(kind),
        };
        let back = round_trip(&env);
        // The message users see survives the trip too.
        let (Err(a), Err(b)) = (&env.result, &back.result) else {
            panic!("error became a success: {back:?}");
        };
        assert_eq!(a.to_string(), b.to_string());
        assert_eq!(a.is_retriable(), b.is_retriable());
    }
}

#[test]
fn different_variants_encode_differently() {
    // Guards against a serializer that drops the variant tag (everything would "round-trip"
    // into the first variant with the same shape).
    let mut seen = BTreeSet::new();
    for r in sample_requests() {
        assert!(
            seen.insert(encode(&r).expect("encode")),
            "two requests encode alike"
        );
    }
    let mut seen = BTreeSet::new();
    for r in sample_responses() {
        assert!(
            seen.insert(encode(&r).expect("encode")),
            "two responses encode alike"
        );
    }
    assert_ne!(
        encode(&Request::ListTopics).expect("encode"),
        encode(&Request::ListBrokers).expect("encode")
    );
}

// ---------------------------------------------------------------------------------------------
// Property tests for the data plane
// ---------------------------------------------------------------------------------------------

fn arb_topic() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,40}"
}

fn arb_shard() -> impl Strategy<Value = ShardId> {
    (arb_topic(), 1u32..=MAX_PARTITIONS).prop_map(|(t, p)| ShardId::new(t, p))
}

fn arb_record() -> impl Strategy<Value = Record> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..24)),
        proptest::collection::vec(any::<u8>(), 0..256),
        any::<u64>(),
        proptest::collection::vec(
            (".{0,6}", proptest::collection::vec(any::<u8>(), 0..16)),
            0..3,
        ),
    )
        .prop_map(|(k, v, t, h)| Record {
            key: k.map(Bytes::from),
            value: Bytes::from(v),
            timestamp_ms: t,
            headers: h.into_iter().map(|(n, v)| (n, Bytes::from(v))).collect(),
        })
}

fn arb_records() -> impl Strategy<Value = Vec<Record>> {
    proptest::collection::vec(arb_record(), 1..40)
}

fn arb_stored() -> impl Strategy<Value = (Offset, Vec<Record>)> {
    (0u64..u64::MAX / 2, arb_records())
}

fn arb_broker_addr() -> impl Strategy<Value = BrokerAddr> {
    (any::<u32>(), "[a-z0-9.:]{1,30}").prop_map(|(id, addr)| BrokerAddr { id, addr })
}

fn arb_error() -> impl Strategy<Value = ErrorKind> {
    let s = || ".{0,40}";
    prop_oneof![
        (s(), any::<u64>(), proptest::option::of(arb_broker_addr())).prop_map(
            |(shard, epoch, owner)| ErrorKind::NotOwner {
                shard,
                epoch,
                owner
            }
        ),
        s().prop_map(|shard| ErrorKind::Moving { shard }),
        s().prop_map(|topic| ErrorKind::UnknownTopic { topic }),
        (s(), s()).prop_map(|(group, member)| ErrorKind::UnknownMember { group, member }),
        (s(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(shard, offset, start, end)| {
            ErrorKind::OffsetOutOfRange {
                shard,
                offset,
                start,
                end,
            }
        }),
        (s(), s()).prop_map(|(shard, reason)| ErrorKind::UnknownShard { shard, reason }),
        (s(), s()).prop_map(|(name, reason)| ErrorKind::InvalidName { name, reason }),
        (s(), any::<u32>())
            .prop_map(|(topic, partitions)| ErrorKind::TopicExists { topic, partitions }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(size, max)| ErrorKind::RecordTooLarge { size, max }),
        (any::<u64>(), any::<u64>()).prop_map(|(size, max)| ErrorKind::FrameTooLarge { size, max }),
        (s(), s()).prop_map(|(what, reason)| ErrorKind::Unavailable { what, reason }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(client, server)| ErrorKind::VersionMismatch { client, server }),
        (s(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(shard, producer_id, expected, got)| ErrorKind::OutOfOrderSequence {
                shard,
                producer_id,
                expected,
                got
            }
        ),
        any::<u64>().prop_map(|after_ms| ErrorKind::Timeout { after_ms }),
        s().prop_map(|reason| ErrorKind::BadRequest { reason }),
        s().prop_map(|request| ErrorKind::Unsupported { request }),
        s().prop_map(|reason| ErrorKind::Storage { reason }),
        any::<u32>().prop_map(|id| ErrorKind::UnknownBroker { id }),
        Just(ErrorKind::ShuttingDown),
        s().prop_map(|reason| ErrorKind::Internal { reason }),
        any::<u32>().prop_map(|id| ErrorKind::RemovedBroker { id }),
        (any::<u32>(), any::<u32>()).prop_map(|(id, shards)| ErrorKind::BrokerDown { id, shards }),
        (s(), s()).prop_map(|(request, reason)| ErrorKind::Unauthorized { request, reason }),
        (s(), any::<u32>(), any::<u32>()).prop_map(|(node, limit, reserved)| {
            ErrorKind::TooManyConnections {
                node,
                limit,
                reserved,
            }
        }),
        (any::<u32>(), ".*").prop_map(|(id, reason)| ErrorKind::BrokerUp { id, reason }),
        (any::<u32>(), ".*", ".*").prop_map(|(id, bound, offered)| ErrorKind::IdentityConflict {
            id,
            bound,
            offered
        }),
        (any::<u32>(), ".*", ".*").prop_map(|(id, data_cluster, router_cluster)| {
            ErrorKind::WrongCluster {
                id,
                data_cluster,
                router_cluster,
            }
        }),
        (any::<u32>(), ".*").prop_map(|(broker, reason)| ErrorKind::StorageFull { broker, reason }),
        (".*", any::<u32>(), any::<u32>())
            .prop_map(|(shard, isr, min)| ErrorKind::NotEnoughReplicas { shard, isr, min }),
        (".*", any::<u64>(), any::<u64>()).prop_map(|(shard, ours, theirs)| {
            ErrorKind::LeaderEpochMismatch {
                shard,
                ours,
                theirs,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn produce_round_trips(
        id in any::<u64>(),
        shard in arb_shard(),
        epoch in any::<u64>(),
        producer in proptest::option::of((any::<u64>(), any::<u64>())),
        appended in any::<bool>(),
        recs in arb_records(),
    ) {
        let batch = RecordBatch::from_records(&recs);
        let env = RequestEnvelope {
            correlation_id: id,
            request: Request::Produce(ProduceRequest {
                shard,
                epoch,
                producer: producer.map(|(producer_id, sequence)| ProducerSeq { producer_id, sequence }),
                acks: if appended { Acks::Appended } else { Acks::Durable },
                batch,
            }),
        };
        let back = round_trip(&env);
        prop_assert_eq!(&back, &env);
        let Request::Produce(p) = &back.request else {
            return Err(TestCaseError::fail("not a produce after the round trip"));
        };
        prop_assert!(p.batch.validate(1 << 20).is_ok());
        prop_assert_eq!(p.batch.count as usize, recs.len());
        prop_assert_eq!(records(&p.batch), recs);
    }

    #[test]
    fn fetch_round_trips(
        id in any::<u64>(),
        shard in arb_shard(),
        epoch in any::<u64>(),
        offset in any::<u64>(),
        max_bytes in any::<u32>(),
        max_wait_ms in any::<u32>(),
    ) {
        let env = RequestEnvelope {
            correlation_id: id,
            request: Request::Fetch(FetchRequest { shard, epoch, offset, max_bytes, max_wait_ms }),
        };
        prop_assert_eq!(round_trip(&env), env);
    }

    #[test]
    fn commit_offset_round_trips(
        id in any::<u64>(),
        shard in arb_shard(),
        epoch in any::<u64>(),
        group in ".{0,64}",
        offset in any::<u64>(),
    ) {
        let env = RequestEnvelope {
            correlation_id: id,
            request: Request::CommitOffset { shard, epoch, group, offset },
        };
        prop_assert_eq!(round_trip(&env), env);
    }

    #[test]
    fn fetched_round_trips(
        id in any::<u64>(),
        high_watermark in any::<u64>(),
        start_offset in any::<u64>(),
        incarnation in any::<u64>(),
        stable_end in any::<u64>(),
        stored in proptest::collection::vec(arb_stored(), 0..6),
    ) {
        let batches: Vec<StoredBatch> = stored
            .iter()
            .map(|(base, recs)| StoredBatch { base_offset: *base, leader_epoch: *base % 7, producer: None, batch: RecordBatch::from_records(recs) })
            .collect();
        let env = ResponseEnvelope {
            correlation_id: id,
            result: Ok(Response::Fetched { high_watermark, start_offset, incarnation, stable_end, batches }),
        };
        let back = round_trip(&env);
        prop_assert_eq!(&back, &env);
        let Ok(Response::Fetched { batches, .. }) = &back.result else {
            return Err(TestCaseError::fail("not a fetched after the round trip"));
        };
        prop_assert_eq!(batches.len(), stored.len());
        for (b, (base, recs)) in batches.iter().zip(&stored) {
            let got: Vec<(Offset, Record)> = b.records_from(0).collect();
            let want: Vec<(Offset, Record)> =
                recs.iter().cloned().enumerate().map(|(i, r)| (base + i as u64, r)).collect();
            prop_assert_eq!(got, want);
            prop_assert_eq!(b.end_offset(), base + recs.len() as u64);
        }
    }

    #[test]
    fn error_kinds_round_trip(id in any::<u64>(), kind in arb_error()) {
        let env = ResponseEnvelope { correlation_id: id, result: Err(kind) };
        let back = round_trip(&env);
        prop_assert_eq!(&back, &env);
        if let (Err(a), Err(b)) = (&back.result, &env.result) {
            prop_assert_eq!(a.to_string(), b.to_string());
        }
    }
}

#[test]
fn error_strategy_covers_every_variant() {
    // The strategy above is a prop_oneof! over a fixed list; make sure that list stays complete.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config::default());
    let strategy = arb_error();
    let mut seen = BTreeSet::new();
    for _ in 0..5_000 {
        let tree = strategy.new_tree(&mut runner).expect("generate");
        seen.insert(error_variant(&tree.current()));
        if seen.len() == ERROR_VARIANTS {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        ERROR_VARIANTS,
        "arb_error misses variants: saw {seen:?}"
    );
}
