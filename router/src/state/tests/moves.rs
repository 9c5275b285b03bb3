//! Tests of live shard moves: planning, flips, rollbacks, drops, address confirmation after a
//! restart, and the reconciliation of stale fences.

use std::collections::BTreeMap;
use std::time::Duration;

use shardq_protocol::{
    BrokerId, BrokerReport, BrokerStatus, ErrorKind, MovePhase, ShardId, ShardReport, ShardState,
};
use shardq_ring::{diff, Assignment, RingConfig};
use tokio::time::Instant;

use super::{complete, down, ok, state};
use crate::state::State;
use crate::store::{Op, PendingDrop, Snapshot};

#[test]
fn a_move_destination_cannot_be_removed_under_the_move() {
    let mut s = state(&[1, 2]);
    s.create_topic("t", 16, None, None, Default::default(), ok)
        .unwrap();
    s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
        .unwrap();
    let m = s
        .plan_moves(16, Instant::now(), 1, ok)
        .unwrap()
        .into_iter()
        .find(|m| m.to == 3)
        .expect("a move to the new broker");
    assert!(s.held_by(3).is_empty());
    // Without --force: refused while the move is in flight.
    assert!(matches!(
        s.remove_broker(3, false, ok),
        Err(ErrorKind::BadRequest { .. })
    ));
    assert!(s.members.contains_key(&3));
    // Forced (once it is down): it goes, and the move can no longer flip to it (the driver
    // rolls it back).
    down(&mut s, 3);
    let r = s.remove_broker(3, true, ok).unwrap();
    assert!(r.shards.is_empty());
    assert!(s.flip(m.move_id, ok).is_err());
    assert_eq!(s.owners[&m.shard], m.from);
}

#[test]
fn a_join_plans_exactly_the_placement_diff_and_flips_one_at_a_time() {
    let mut s = state(&[1, 2]);
    s.create_topic("t", 16, None, None, Default::default(), ok)
        .unwrap();
    let before: Assignment = s.owners.iter().map(|(k, o)| (k.key(), *o)).collect();
    s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
        .unwrap();
    let want = diff(&before, &s.desired(&[]).unwrap());
    assert!(!want.is_empty());
    let now = Instant::now();
    let first = s.plan_moves(2, now, 1, ok).unwrap();
    assert_eq!(first.len(), 2.min(want.len()));
    assert!(
        s.plan_moves(2, now, 1, ok).unwrap().is_empty(),
        "two in flight"
    );
    let m = first[0].clone();
    assert_eq!((m.move_id, m.phase), (1, MovePhase::Pending));
    let table = s.routing_table(&[]).unwrap();
    let route = table.route(&m.shard).unwrap();
    assert!(route.moving);
    assert_eq!(route.owner.as_ref().map(|o| o.id), Some(m.from));

    let epoch = complete(&mut s, &m);
    assert_eq!(epoch, 2);
    assert_eq!(s.owners[&m.shard], m.to);
    assert!(
        !s.routing_table(&[])
            .unwrap()
            .route(&m.shard)
            .unwrap()
            .moving
    );
    let (due, moot) = s.drops_due();
    assert_eq!(due.len(), 1);
    assert!(moot.is_empty());
    let status = s.status(now);
    assert_eq!(status.moves.len(), 2);
    assert_eq!(status.moves.last().unwrap().phase, MovePhase::Done);

    // Drive the rest to the end: the actual assignment becomes the desired one.
    for _ in 0..32 {
        let ids: Vec<u64> = s.moves.keys().copied().collect();
        for id in ids {
            s.flip(id, ok).unwrap();
            s.finish(id, MovePhase::Done, None, 3, None, ok).unwrap();
        }
        s.plan_moves(2, now, 3, ok).unwrap();
    }
    let after: Assignment = s.owners.iter().map(|(k, o)| (k.key(), *o)).collect();
    assert_eq!(after, s.desired(&[]).unwrap());
    let moved: Vec<String> = s.history.iter().map(|m| m.shard.key()).collect();
    assert_eq!(
        moved,
        want.iter().map(|m| m.shard.clone()).collect::<Vec<_>>()
    );
}

#[test]
fn no_move_from_or_to_a_down_broker_and_rollback_backs_off() {
    let mut s = state(&[1, 2]);
    s.create_topic("t", 16, None, None, Default::default(), ok)
        .unwrap();
    s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
        .unwrap();
    let t0 = Instant::now();
    s.members.get_mut(&3).unwrap().status = BrokerStatus::Down;
    // Inspect what would be planned, then refuse to persist it so nothing changes.
    let _ = s.plan_moves(16, t0, 1, |ops| {
        for op in ops {
            if let Op::PutMove(m) = op {
                assert!(m.from != 3 && m.to != 3, "{m:?}");
            }
        }
        Err(ErrorKind::Internal {
            reason: "dry run".into(),
        })
    });
    assert!(s.moves.is_empty());
    s.members.get_mut(&3).unwrap().status = BrokerStatus::Up;
    let m = s.plan_moves(1, t0, 1, ok).unwrap().remove(0);
    let drop = PendingDrop {
        broker: 3,
        shard: m.shard.clone(),
        epoch: s.epoch,
    };
    s.retry_after
        .insert(m.shard.clone(), t0 + Duration::from_secs(5));
    s.finish(
        m.move_id,
        MovePhase::RolledBack,
        Some("x".into()),
        2,
        Some(drop),
        ok,
    )
    .unwrap();
    assert_eq!(s.owners[&m.shard], m.from);
    let next = s.plan_moves(1, t0, 2, ok).unwrap();
    assert!(next.iter().all(|n| n.shard != m.shard));
    assert!(next.iter().all(|n| n.move_id > m.move_id));
}

#[test]
fn a_leaver_gets_its_drops_before_it_is_removed() {
    let mut s = state(&[1, 2]);
    s.create_topic("t", 4, None, None, Default::default(), ok)
        .unwrap();
    let on_1 = s.held_by(1);
    assert!(!on_1.is_empty());
    s.leave(1, ok).unwrap();
    let now = Instant::now();
    for _ in 0..8 {
        for m in s.plan_moves(2, now, 1, ok).unwrap() {
            complete(&mut s, &m);
        }
    }
    assert!(s.held_by(1).is_empty());
    // Drained, but its old copies are still to be dropped: not reaped yet, and the drops
    // are due (not moot).
    assert!(s.reap_leavers(ok).unwrap().is_empty());
    let (due, moot) = s.drops_due();
    assert!(moot.is_empty());
    let mut dropped: Vec<ShardId> = due
        .iter()
        .filter(|(b, _, _)| b.id == 1)
        .map(|(_, shard, _)| shard.clone())
        .collect();
    dropped.sort();
    assert_eq!(dropped, on_1);
    let sent: Vec<(BrokerId, ShardId)> = due.iter().map(|(b, sh, _)| (b.id, sh.clone())).collect();
    s.forget_drops(&sent, ok).unwrap();
    assert_eq!(s.reap_leavers(ok).unwrap(), vec![1]);
}

#[test]
fn no_move_starts_before_both_ends_confirmed_their_address_after_a_restart() {
    let mut s = state(&[1, 2]);
    s.create_topic("t", 16, None, None, Default::default(), ok)
        .unwrap();
    s.register(3, "127.0.0.1:9003".into(), 1, Instant::now())
        .unwrap();
    // The router restarts: members come back from disk, unconfirmed.
    let snap = Snapshot {
        epoch: s.epoch,
        ring: None,
        members: s
            .members
            .iter()
            .map(|(id, m)| (*id, m.record(*id)))
            .collect(),
        removed: s.removed.clone(),
        topics: s.topics.clone(),
        owners: s.owners.clone(),
        moves: BTreeMap::new(),
        next_move_id: s.next_move_id,
        drops: Vec::new(),
        ..Snapshot::default()
    };
    let now = Instant::now();
    let mut s = State::restore(snap, RingConfig::default(), now);
    assert!(s.plan_moves(4, now, 1, ok).unwrap().is_empty());
    // Broker 3 restarted elsewhere and registers; 1 and 2 have not been heard from yet.
    s.register(3, "127.0.0.1:9103".into(), 1, now).unwrap();
    assert!(s.plan_moves(4, now, 1, ok).unwrap().is_empty());
    s.heartbeat(1, BrokerReport::default(), now).unwrap();
    s.heartbeat(2, BrokerReport::default(), now).unwrap();
    let planned = s.plan_moves(4, now, 1, ok).unwrap();
    assert!(planned.iter().any(|m| m.to == 3));
}

#[test]
fn a_fence_without_a_move_is_reconciled_once_and_blocks_moves_meanwhile() {
    let mut s = state(&[1, 2]);
    s.create_topic("t", 8, None, None, Default::default(), ok)
        .unwrap();
    let shard = ShardId::new("t", 1);
    let owner = s.owners[&shard];
    let report = |state| BrokerReport {
        shards: vec![ShardReport {
            shard: shard.clone(),
            state,
            epoch: 1,
            start_offset: 0,
            end_offset: 5,
            bytes: 50,
            groups: Vec::new(),
            role: shardq_protocol::ReplicaRole::Leader,
            leader_epoch: 0,
            high_watermark: 0,
            followers: vec![],
        }],
        imports: Vec::new(),
        degraded: None,
    };
    let now = Instant::now();
    s.heartbeat(owner, report(ShardState::Active), now).unwrap();
    assert!(s.stale_fences().is_empty());
    s.heartbeat(owner, report(ShardState::Fenced), now).unwrap();
    let stale = s.stale_fences();
    assert_eq!(stale.len(), 1);
    assert_eq!((stale[0].0.id, &stale[0].1), (owner, &shard));
    // Claimed: not returned twice, and no move of it starts while the unfence is out.
    assert!(s.stale_fences().is_empty());
    s.register(3, "127.0.0.1:9003".into(), 1, now).unwrap();
    let planned = s.plan_moves(16, now, 1, ok).unwrap();
    assert!(planned.iter().all(|m| m.shard != shard));
    s.unfenced(owner, &shard, true, now);
    assert!(s.unfencing.is_empty());
    assert_eq!(s.report(&shard).map(|r| r.state), Some(ShardState::Active));
    // A fence some move in flight accounts for is left alone.
    s.heartbeat(owner, report(ShardState::Fenced), now).unwrap();
    let mut mv = planned.first().expect("moves to broker 3").clone();
    mv.shard = shard.clone();
    mv.move_id = 999;
    s.moves.insert(999, mv);
    assert!(s.stale_fences().is_empty());
}
