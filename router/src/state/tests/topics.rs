//! Tests of topic creation: placement of new shards, validation, idempotence, failed persists.

use shardq_protocol::{ErrorKind, ShardId, MAX_PARTITIONS};
use tokio::time::Instant;

use super::{ok, state};
use crate::state::Created;

#[test]
fn create_places_new_shards_and_keeps_old_ones() {
    let mut s = state(&[1, 2, 3]);
    let Created::New { pushes, .. } = s
        .create_topic("A", 4, None, None, Default::default(), ok)
        .unwrap()
    else {
        panic!("expected a new topic")
    };
    assert_eq!(s.epoch, 1);
    assert_eq!(pushes.iter().map(|(_, a)| a.len()).sum::<usize>(), 4);
    let before = s.owners.clone();
    // A fourth broker joins; existing shards must not move when another topic is created.
    s.register(4, "127.0.0.1:9004".into(), 1, Instant::now())
        .unwrap();
    s.create_topic("B", 8, None, None, Default::default(), ok)
        .unwrap();
    assert_eq!(s.epoch, 2);
    for (shard, owner) in &before {
        assert_eq!(s.owners.get(shard), Some(owner));
    }
    let ring = s.up_ring(None).unwrap();
    let placement = ring.place(&s.all_keys(&[]));
    for p in 1..=8 {
        let shard = ShardId::new("B", p);
        assert_eq!(placement.get(&shard.key()), s.owners.get(&shard));
    }
}

#[test]
fn create_is_validated_and_idempotent() {
    let mut s = state(&[1]);
    assert!(matches!(
        s.create_topic("a/b", 1, None, None, Default::default(), ok),
        Err(ErrorKind::InvalidName { .. })
    ));
    assert!(matches!(
        s.create_topic("a", 0, None, None, Default::default(), ok),
        Err(ErrorKind::BadRequest { .. })
    ));
    assert!(matches!(
        s.create_topic("a", MAX_PARTITIONS + 1, None, None, Default::default(), ok),
        Err(ErrorKind::BadRequest { .. })
    ));
    s.create_topic("a", 2, None, None, Default::default(), ok)
        .unwrap();
    assert!(matches!(
        s.create_topic("a", 2, None, None, Default::default(), ok),
        Ok(Created::Existing(_))
    ));
    assert_eq!(
        s.create_topic("a", 3, None, None, Default::default(), ok)
            .unwrap_err(),
        ErrorKind::TopicExists {
            topic: "a".into(),
            partitions: 2
        }
    );
    assert_eq!(s.epoch, 1);
}

#[test]
fn failed_persist_changes_nothing() {
    let mut s = state(&[1]);
    let err = s
        .create_topic("a", 2, None, None, Default::default(), |_| {
            Err(ErrorKind::Storage {
                reason: "disk full".into(),
            })
        })
        .unwrap_err();
    assert!(matches!(err, ErrorKind::Storage { .. }));
    assert_eq!((s.epoch, s.topics.len(), s.owners.len()), (0, 0, 0));
}
