//! Tests of membership: registration, liveness, removal, graceful leave and the tombstones of
//! removed brokers.

use std::time::Duration;

use shardq_protocol::{BrokerReport, BrokerStatus, ErrorKind, MovePhase, ShardId};
use shardq_ring::RingConfig;
use tokio::time::Instant;

use super::{down, ok, state};
use crate::state::{State, MAX_WEIGHT};
use crate::store::{Op, Snapshot};

#[test]
fn down_brokers_lose_routes_and_get_them_back() {
    let mut s = state(&[1, 2]);
    s.create_topic("t", 1, None, None, Default::default(), ok)
        .unwrap();
    let t0 = Instant::now();
    let expired = s.expire(t0 + Duration::from_secs(10), Duration::from_secs(3));
    assert_eq!(expired, vec![1, 2]);
    let table = s.routing_table(&[]).unwrap();
    assert!(table.shards.iter().all(|r| r.owner.is_none()));
    // Operators still see whose return the shard waits for.
    let status = s.status(t0);
    assert!(status.shards.iter().all(|(r, _)| r.owner.is_some()));
    assert!(status
        .brokers
        .iter()
        .all(|b| b.status == BrokerStatus::Down));
    assert!(matches!(
        s.create_topic("u", 1, None, None, Default::default(), ok),
        Err(ErrorKind::Unavailable { .. })
    ));
    let owner = s.owners[&ShardId::new("t", 1)];
    let (_, assignments, revived) = s.heartbeat(owner, BrokerReport::default(), t0).unwrap();
    assert!(revived);
    assert_eq!(assignments.len(), 1);
    assert!(s.routing_table(&["t".into()]).unwrap().shards[0]
        .owner
        .is_some());
    assert_eq!(
        s.heartbeat(99, BrokerReport::default(), t0).unwrap_err(),
        ErrorKind::UnknownBroker { id: 99 }
    );
}

#[test]
fn remove_broker_rules() {
    let mut s = state(&[1, 2]);
    s.create_topic("t", 6, None, None, Default::default(), ok)
        .unwrap();
    let owner = s.owners[&ShardId::new("t", 1)];
    let other = if owner == 1 { 2 } else { 1 };
    assert!(matches!(
        s.remove_broker(owner, false, ok),
        Err(ErrorKind::BadRequest { .. })
    ));
    // --force is for a broker that is down: a live one is refused, and nothing changes.
    let refused = s
        .remove_broker(owner, true, |_| panic!("refused: nothing persisted"))
        .unwrap_err();
    assert!(
        matches!(&refused, ErrorKind::BrokerUp { id, .. } if *id == owner),
        "{refused}"
    );
    let text = refused.to_string();
    assert!(
        text.contains("UP") && text.contains(&format!("shardq broker remove {owner}` without")),
        "{text}"
    );
    assert_eq!(s.epoch, 1);
    assert!(s.members.contains_key(&owner));
    down(&mut s, owner);
    let r = s.remove_broker(owner, true, ok).unwrap();
    assert!(!r.shards.is_empty());
    assert!(s.owners.values().all(|o| *o == other));
    assert_eq!(s.epoch, 2);
    // The last broker cannot be force-removed while it owns shards: nobody could take them.
    down(&mut s, other);
    assert!(matches!(
        s.remove_broker(other, true, ok),
        Err(ErrorKind::Unavailable { .. })
    ));
    s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
        .unwrap();
    let r = s.remove_broker(3, false, ok).unwrap();
    assert!(r.shards.is_empty());
    assert!(!s.members.contains_key(&3));
}

#[test]
fn graceful_leave_drains_then_removes() {
    let mut s = state(&[1]);
    s.create_topic("t", 4, None, None, Default::default(), ok)
        .unwrap();
    assert!(matches!(s.leave(1, ok), Err(ErrorKind::BadRequest { .. })));
    s.register(2, "127.0.0.1:9002".into(), 1, Instant::now())
        .unwrap();
    let l = s.leave(1, ok).unwrap();
    assert_eq!((l.shards.len(), l.removed), (4, false));
    assert_eq!(s.brokers(Instant::now())[0].status, BrokerStatus::Leaving);
    assert!(s.desired(&[]).unwrap().values().all(|o| *o == 2));
    let now = Instant::now();
    for _ in 0..4 {
        for m in s.plan_moves(2, now, 1, ok).unwrap() {
            assert!(s.reap_leavers(ok).unwrap().is_empty());
            s.flip(m.move_id, ok).unwrap();
            s.finish(m.move_id, MovePhase::Done, None, 2, None, ok)
                .unwrap();
        }
    }
    assert_eq!(s.reap_leavers(ok).unwrap(), vec![1]);
    assert!(!s.members.contains_key(&1));
    assert!(s.owners.values().all(|o| *o == 2));
    // Owning nothing: removed at once.
    s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
        .unwrap();
    assert!(s.leave(3, ok).unwrap().removed);
}

#[test]
fn a_removed_broker_id_is_refused_for_good() {
    let mut s = state(&[1, 2, 3, 4]);
    s.create_topic("t", 8, None, None, Default::default(), ok)
        .unwrap();
    let t0 = Instant::now();
    let owner = s.owners[&ShardId::new("t", 1)];
    // Every way out of the cluster tombstones the id, persisted with the member's deletion.
    let mut persisted = Vec::new();
    down(&mut s, owner);
    s.remove_broker(owner, true, |ops| {
        persisted.extend(ops.iter().cloned());
        Ok(())
    })
    .unwrap();
    assert!(persisted
        .iter()
        .any(|op| matches!(op, Op::DeleteMember(id) if *id == owner)));
    let idle = (1..=4)
        .find(|id| *id != owner && s.held_by(*id).is_empty())
        .unwrap_or_else(|| {
            s.register(5, "127.0.0.1:9005".into(), 1, t0).unwrap();
            5
        });
    assert!(s.leave(idle, ok).unwrap().removed);
    let drained = s.members.keys().copied().find(|id| *id != owner).unwrap();
    s.leave(drained, ok).unwrap();
    for _ in 0..16 {
        for m in s.plan_moves(4, t0, 1, ok).unwrap() {
            s.flip(m.move_id, ok).unwrap();
            s.finish(m.move_id, MovePhase::Done, None, 2, None, ok)
                .unwrap();
        }
    }
    assert_eq!(s.reap_leavers(ok).unwrap(), vec![drained]);

    for id in [owner, idle, drained] {
        assert!(!s.members.contains_key(&id));
        // Neither a registration (a restart, with its old data or an empty one) nor a
        // heartbeat (a process that never noticed) brings it back.
        assert_eq!(
            s.register(id, format!("127.0.0.1:{}", 9100 + id), 1, t0)
                .unwrap_err(),
            ErrorKind::RemovedBroker { id }
        );
        assert_eq!(
            s.heartbeat(id, BrokerReport::default(), t0).unwrap_err(),
            ErrorKind::RemovedBroker { id }
        );
        assert!(!s.members.contains_key(&id));
        assert!(s.owners.values().all(|o| *o != id));
        assert!(s.desired(&[]).unwrap().values().all(|o| *o != id));
        // Removing it again: it is not a member.
        assert_eq!(
            s.remove_broker(id, true, ok).unwrap_err(),
            ErrorKind::UnknownBroker { id }
        );
    }
    assert!(
        ErrorKind::RemovedBroker { id: 2 }
            .to_string()
            .contains("start a new broker with a new id and an empty data dir"),
        "{}",
        ErrorKind::RemovedBroker { id: 2 }
    );

    // The tombstones are part of the persisted state: a restored router refuses them too.
    let snap = Snapshot {
        removed: [owner, idle, drained].into_iter().collect(),
        ..Snapshot::default()
    };
    let mut restored = State::restore(snap, RingConfig::default(), t0);
    assert_eq!(
        restored
            .register(owner, "127.0.0.1:9999".into(), 1, t0)
            .unwrap_err(),
        ErrorKind::RemovedBroker { id: owner }
    );
    assert!(restored
        .register(42, "127.0.0.1:9042".into(), 1, t0)
        .is_ok());
}

#[test]
fn a_down_broker_cannot_start_draining_and_nothing_is_recorded() {
    let mut s = state(&[1, 2, 3]);
    s.create_topic("t", 12, None, None, Default::default(), ok)
        .unwrap();
    let t0 = Instant::now();
    let on_3 = s.held_by(3).len();
    assert!(on_3 > 0);
    // Broker 3 goes silent; the others keep heartbeating.
    let later = t0 + Duration::from_secs(10);
    for id in [1, 2] {
        s.heartbeat(id, BrokerReport::default(), later).unwrap();
    }
    assert_eq!(s.expire(later, Duration::from_secs(3)), vec![3]);

    let refused = s
        .leave(3, |_| panic!("a refused removal must persist nothing"))
        .unwrap_err();
    assert_eq!(
        refused,
        ErrorKind::BrokerDown {
            id: 3,
            shards: on_3 as u32
        }
    );
    let text = refused.to_string();
    assert!(
        text.contains("DOWN") && text.contains("--force") && text.contains("until it returns"),
        "{text}"
    );
    assert!(!s.members[&3].leaving);
    // When it returns it is an ordinary member again, not draining.
    s.heartbeat(3, BrokerReport::default(), later).unwrap();
    assert_eq!(
        s.brokers(later)
            .iter()
            .find(|b| b.addr.id == 3)
            .unwrap()
            .status,
        BrokerStatus::Up
    );
    assert!(s.desired(&[]).unwrap().values().any(|o| *o == 3));

    // A broker already draining that then goes down keeps its recorded leave; asking again
    // answers as before (nothing new to record).
    s.leave(3, ok).unwrap();
    let much_later = later + Duration::from_secs(10);
    for id in [1, 2] {
        s.heartbeat(id, BrokerReport::default(), much_later)
            .unwrap();
    }
    assert_eq!(s.expire(much_later, Duration::from_secs(3)), vec![3]);
    let again = s.leave(3, |_| panic!("already recorded")).unwrap();
    assert_eq!((again.shards.len(), again.removed), (on_3, false));
    assert!(s.members[&3].leaving);

    // A down broker that owns nothing has nothing to drain: removed at once.
    s.register(4, "127.0.0.1:9004".into(), 1, much_later)
        .unwrap();
    let gone = much_later + Duration::from_secs(10);
    for id in [1, 2] {
        s.heartbeat(id, BrokerReport::default(), gone).unwrap();
    }
    s.expire(gone, Duration::from_secs(3));
    assert_eq!(s.members[&4].status, BrokerStatus::Down);
    assert!(s.leave(4, ok).unwrap().removed);
    // Forced removal of a down broker still works (and discards its shards' data).
    assert!(!s.remove_broker(3, true, ok).unwrap().shards.is_empty());
}

#[test]
fn registration_is_checked() {
    let mut s = state(&[]);
    let now = Instant::now();
    assert!(s.register(1, "".into(), 1, now).is_err());
    assert!(s.register(1, "h:1".into(), MAX_WEIGHT + 1, now).is_err());
    assert_eq!(s.register(1, "h:1".into(), 1, now).unwrap().len(), 1);
    // Same address and weight again: nothing to persist.
    assert!(s.register(1, "h:1".into(), 1, now).unwrap().is_empty());
    assert_eq!(s.register(1, "h:2".into(), 1, now).unwrap().len(), 1);
}
