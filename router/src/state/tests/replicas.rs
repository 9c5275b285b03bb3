//! Tests of the controller's replication decisions: placement of replicas, elections on failure
//! and restart, the leaders' ISR changes, explicit (clean and unclean) elections.

use std::collections::BTreeMap;

use shardq_protocol::{BrokerId, ErrorKind, ShardId, ShardReport};

use super::{down, heard, join, ok, process, state};
use crate::state::{Replicas, State};

fn create(s: &mut State, topic: &str, partitions: u32, rf: u32) {
    s.create_topic(topic, partitions, Some(rf), None, Default::default(), ok)
        .unwrap();
}

fn replicas(s: &State, topic: &str, p: u32) -> Replicas {
    s.replicas_of(&ShardId::new(topic, p)).unwrap()
}

/// Reports `end` as broker `id`'s end offset of `shard` (what an unclean election compares).
fn report_end(s: &mut State, id: BrokerId, shard: &ShardId, end: u64) {
    s.members
        .get_mut(&id)
        .unwrap()
        .report
        .shards
        .push(ShardReport {
            shard: shard.clone(),
            state: shardq_protocol::ShardState::Active,
            epoch: 1,
            start_offset: 0,
            end_offset: end,
            bytes: 0,
            groups: vec![],
            role: shardq_protocol::ReplicaRole::Follower,
            leader_epoch: 1,
            high_watermark: 0,
            followers: vec![],
        });
}

#[test]
fn six_partitions_on_three_brokers_are_led_two_each_with_balanced_replicas() {
    for topic in ["orders", "T1", "bench-1", "x"] {
        let mut s = state(&[1, 2, 3]);
        create(&mut s, topic, 6, 3);
        let mut leaders: BTreeMap<BrokerId, usize> = BTreeMap::new();
        let mut held: BTreeMap<BrokerId, usize> = BTreeMap::new();
        for p in 1..=6 {
            let r = replicas(&s, topic, p);
            assert_eq!(r.replicas.len(), 3, "{topic}:P{p}: {r:?}");
            assert_eq!(r.isr, r.replicas, "a new shard's replicas are all in sync");
            assert_eq!(r.leader, Some(r.replicas[0]));
            assert_eq!(s.owners[&ShardId::new(topic, p)], r.replicas[0]);
            *leaders.entry(r.replicas[0]).or_default() += 1;
            for b in &r.replicas {
                *held.entry(*b).or_default() += 1;
            }
        }
        assert_eq!(
            leaders.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2],
            "{topic}"
        );
        assert_eq!(
            held.values().copied().collect::<Vec<_>>(),
            vec![6, 6, 6],
            "{topic}"
        );
        // Every broker is told about the shards it follows too.
        for id in 1..=3 {
            assert_eq!(s.assignments_of(id).len(), 6);
        }
    }
}

#[test]
fn replication_factors_are_checked_against_the_brokers_up() {
    let mut s = state(&[1, 2]);
    let err = s
        .create_topic("t", 2, Some(3), None, Default::default(), ok)
        .unwrap_err();
    assert!(
        matches!(&err, ErrorKind::BadRequest { reason } if reason.contains("replication factor 3") && reason.contains("only 2 broker(s)")),
        "{err}"
    );
    assert!(s
        .create_topic("t", 2, Some(6), None, Default::default(), ok)
        .is_err());
    assert!(s
        .create_topic("t", 2, Some(0), None, Default::default(), ok)
        .is_err());
    assert!(s
        .create_topic("t", 2, Some(2), Some(3), Default::default(), ok)
        .is_err());
    // The default is capped at the brokers up; min in-sync defaults to a majority.
    s.default_replication_factor = 3;
    s.create_topic("d", 1, None, None, Default::default(), ok)
        .unwrap();
    let t = s.topics["d"];
    assert_eq!((t.replication_factor, t.min_insync), (2, 2));
    s.create_topic("m", 1, Some(1), None, Default::default(), ok)
        .unwrap();
    assert_eq!(s.topics["m"].min_insync, 1);
}

#[test]
fn a_down_leader_is_replaced_from_the_isr_and_the_shard_waits_when_none_is_left() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 1, 3);
    let shard = ShardId::new("t", 1);
    let r0 = replicas(&s, "t", 1);
    let (a, b, c) = (r0.replicas[0], r0.replicas[1], r0.replicas[2]);

    down(&mut s, a);
    let f = s.fail_over(Some(a), ok).unwrap();
    let r = replicas(&s, "t", 1);
    assert_eq!(r.leader, Some(b), "the next in-sync replica leads");
    assert_eq!(r.leader_epoch, r0.leader_epoch + 1);
    assert!(!r.isr.contains(&a), "a down broker leaves the ISR at once");
    assert_eq!(f.elected, vec![(shard.clone(), Some(b))]);
    assert!(f.pushes.iter().any(|(addr, _)| addr.id == b));

    down(&mut s, b);
    s.fail_over(Some(b), ok).unwrap();
    assert_eq!(replicas(&s, "t", 1).leader, Some(c));
    down(&mut s, c);
    s.fail_over(Some(c), ok).unwrap();
    let r = replicas(&s, "t", 1);
    assert_eq!(r.leader, None, "offline: nobody in sync is up");
    assert_eq!(
        r.isr,
        vec![c],
        "the last in-sync replica is kept, never an empty ISR"
    );
    assert!(matches!(
        s.owner_for(&shard),
        Err(ErrorKind::Unavailable { .. })
    ));

    // a comes back first: it is not in sync, so the shard stays offline.
    s.members.get_mut(&a).unwrap().status = shardq_protocol::BrokerStatus::Up;
    s.fail_over(None, ok).unwrap();
    assert_eq!(replicas(&s, "t", 1).leader, None);
    // c comes back: it leads again, at a new epoch.
    let before = replicas(&s, "t", 1).leader_epoch;
    s.members.get_mut(&c).unwrap().status = shardq_protocol::BrokerStatus::Up;
    s.fail_over(None, ok).unwrap();
    let r = replicas(&s, "t", 1);
    assert_eq!((r.leader, r.leader_epoch), (Some(c), before + 1));
}

#[test]
fn a_restarted_leader_is_replaced_or_leads_again_at_a_new_epoch() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 1, 3);
    create(&mut s, "u", 1, 1);
    let r0 = replicas(&s, "t", 1);
    let a = r0.replicas[0];
    // A restart: the broker registered again and is up.
    s.fail_over(Some(a), ok).unwrap();
    let r = replicas(&s, "t", 1);
    assert_eq!(r.leader, Some(r0.replicas[1]));
    assert!(!r.isr.contains(&a));
    // A single replica leads again, but at a new epoch (the new process may have lost records).
    let u = replicas(&s, "u", 1);
    let owner = u.replicas[0];
    s.fail_over(Some(owner), ok).unwrap();
    let u2 = replicas(&s, "u", 1);
    assert_eq!(
        (u2.leader, u2.leader_epoch),
        (Some(owner), u.leader_epoch + 1)
    );
}

#[test]
fn isr_changes_are_compare_and_set_from_the_current_leader() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 1, 3);
    let shard = ShardId::new("t", 1);
    let r = replicas(&s, "t", 1);
    let (l, f1, f2) = (r.replicas[0], r.replicas[1], r.replicas[2]);
    let (e, v) = (r.leader_epoch, r.isr_version);
    // From a follower, from an old epoch, at an old version: refused.
    assert!(s
        .alter_isr(f1, &shard, e, v, &[f1], &heard(&s, &[f1]), ok)
        .is_err());
    assert!(matches!(
        s.alter_isr(l, &shard, e - 1, v, &[l], &heard(&s, &[l]), ok),
        Err(ErrorKind::LeaderEpochMismatch { .. })
    ));
    assert!(s
        .alter_isr(l, &shard, e, v + 1, &[l], &heard(&s, &[l]), ok)
        .is_err());
    // Without the leader, or naming a broker without a replica: refused.
    assert!(s
        .alter_isr(l, &shard, e, v, &[f1], &heard(&s, &[f1]), ok)
        .is_err());
    assert!(s
        .alter_isr(l, &shard, e, v, &[l, 9], &heard(&s, &[l, 9]), ok)
        .is_err());
    // Shrink, then a down broker may not be added back.
    let v2 = s
        .alter_isr(l, &shard, e, v, &[l, f1], &heard(&s, &[l, f1]), ok)
        .unwrap();
    assert_eq!(v2, v + 1);
    assert_eq!(replicas(&s, "t", 1).isr.len(), 2);
    down(&mut s, f2);
    assert!(s
        .alter_isr(l, &shard, e, v2, &[l, f1, f2], &heard(&s, &[l, f1, f2]), ok)
        .is_err());
    // A failed persist changes nothing.
    let fail = |_: &[crate::store::Op]| -> Result<(), ErrorKind> {
        Err(ErrorKind::Storage {
            reason: "disk".into(),
        })
    };
    assert!(s
        .alter_isr(l, &shard, e, v2, &[l], &heard(&s, &[l]), fail)
        .is_err());
    assert_eq!(replicas(&s, "t", 1).isr_version, v2);
}

#[test]
fn an_unclean_election_is_explicit_and_says_what_may_be_lost() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 1, 3);
    let shard = ShardId::new("t", 1);
    let r = replicas(&s, "t", 1);
    let (l, f1, f2) = (r.replicas[0], r.replicas[1], r.replicas[2]);
    // The ISR shrank to the leader, which then died: the shard is offline.
    s.alter_isr(
        l,
        &shard,
        r.leader_epoch,
        r.isr_version,
        &[l],
        &heard(&s, &[l]),
        ok,
    )
    .unwrap();
    report_end(&mut s, l, &shard, 1_000);
    report_end(&mut s, f1, &shard, 700);
    report_end(&mut s, f2, &shard, 900);
    down(&mut s, l);
    s.fail_over(Some(l), ok).unwrap();
    assert_eq!(replicas(&s, "t", 1).leader, None);
    let err = s.elect(&shard, false, ok).unwrap_err();
    assert!(err.to_string().contains("--unclean"), "{err}");
    let (e, pushes) = s.elect(&shard, true, ok).unwrap();
    assert!(e.unclean);
    assert_eq!(e.leader, f2, "the longest log among the replicas up");
    assert_eq!(e.may_lose, Some(100));
    assert!(!pushes.is_empty());
    let r = replicas(&s, "t", 1);
    assert_eq!((r.leader, r.isr.clone()), (Some(f2), vec![f2]));
}

#[test]
fn a_replaced_broker_is_in_sync_for_nothing_and_never_elected_empty() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 3, 3);
    create(&mut s, "u", 3, 1);
    let victim = 2;
    down(&mut s, victim);
    s.fail_over(Some(victim), ok).unwrap();
    let start_empty = s.replace(victim, ok).unwrap();
    // Only its unreplicated shards start empty on the new process.
    let single: Vec<ShardId> = (1..=3)
        .map(|p| ShardId::new("u", p))
        .filter(|sh| s.replicas_of(sh).unwrap().replicas == vec![victim])
        .collect();
    assert_eq!(start_empty, single);
    for p in 1..=3 {
        let r = replicas(&s, "t", p);
        assert!(r.replicas.contains(&victim));
        assert!(!r.isr.contains(&victim), "t:P{p}: {r:?}");
    }
    // Where it was the last in-sync replica, the shard stays offline when it registers again.
    let mut s2 = state(&[1, 2, 3]);
    create(&mut s2, "t", 1, 3);
    let r2 = replicas(&s2, "t", 1);
    let last = r2.replicas[2];
    for b in r2.replicas.iter().copied().filter(|b| *b != last) {
        down(&mut s2, b);
        s2.fail_over(Some(b), ok).unwrap();
    }
    assert_eq!(replicas(&s2, "t", 1).isr, vec![last]);
    down(&mut s2, last);
    s2.fail_over(Some(last), ok).unwrap();
    s2.replace(last, ok).unwrap();
    assert!(replicas(&s2, "t", 1).isr.is_empty());
    s2.members.get_mut(&last).unwrap().status = shardq_protocol::BrokerStatus::Up;
    s2.fail_over(Some(last), ok).unwrap();
    assert_eq!(
        replicas(&s2, "t", 1).leader,
        None,
        "the empty process is not elected"
    );
}

#[test]
fn a_join_moves_replicas_to_the_new_broker_one_at_a_time_and_switches_once_in_sync() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 12, 2);
    join(&mut s, 4);
    let (planned, pushes) = s
        .plan_replica_moves(100, tokio::time::Instant::now(), 0, ok)
        .unwrap();
    assert!(!planned.is_empty(), "a new broker gets replicas");
    assert!(planned.iter().all(|m| m.to == 4), "{planned:?}");
    assert!(pushes.iter().any(|(b, _)| b.id == 4));
    // One move per shard at a time, and nothing more while they run.
    let (again, _) = s
        .plan_replica_moves(100, tokio::time::Instant::now(), 0, ok)
        .unwrap();
    assert!(again.is_empty());
    for m in &planned {
        let r = s.replicas_of(&m.shard).unwrap();
        assert!(r.replicas.contains(&4) && !r.isr.contains(&4));
        assert_eq!(s.replica_caught_up(m.move_id), Some(false));
        assert!(
            s.switch_replica_move(m.move_id, ok).is_err(),
            "not in sync yet"
        );
    }
    // The first: its leader takes broker 4 into the ISR, then the set switches.
    let m = &planned[0];
    let r = s.replicas_of(&m.shard).unwrap();
    let leader = r.leader.unwrap();
    let mut isr = r.isr.clone();
    isr.push(4);
    s.alter_isr(
        leader,
        &m.shard,
        r.leader_epoch,
        r.isr_version,
        &isr,
        &heard(&s, &isr),
        ok,
    )
    .unwrap();
    let f = s.switch_replica_move(m.move_id, ok).unwrap();
    let after = s.replicas_of(&m.shard).unwrap();
    assert!(!after.replicas.contains(&m.from) && after.replicas.contains(&4));
    assert!(!after.isr.contains(&m.from));
    assert_eq!(after.replicas.len(), 2);
    // Leadership moves when the source led or the ring wants broker 4 to lead, to the
    // preferred (first) replica, which is in sync.
    assert_eq!(
        f.leader_moved,
        leader == m.from || (after.replicas[0] == 4 && leader != 4)
    );
    if f.leader_moved {
        assert_eq!(after.leader, Some(after.replicas[0]));
        assert!(after.isr.contains(&after.replicas[0]));
        assert_eq!(after.leader_epoch, r.leader_epoch + 1);
    }
    assert_eq!(f.drop.broker, m.from);
    // The source is told it holds no replica now.
    let (_, to_source) = f.pushes.iter().find(|(b, _)| b.id == m.from).unwrap();
    assert!(to_source
        .iter()
        .any(|a| a.shard == m.shard && !a.replication.replicas.contains(&m.from)));
    // Switching again (a resumed driver) changes nothing.
    s.switch_replica_move(m.move_id, ok).unwrap();
    assert_eq!(s.replicas_of(&m.shard).unwrap(), after);

    // Another is rolled back: broker 4 leaves that set again.
    let m = &planned[1];
    let before = s.replicas_of(&m.shard).unwrap();
    let (_, drop) = s.roll_back_replica_move(m.move_id, ok).unwrap();
    let drop = drop.expect("the destination's copy is dropped");
    let back = s.replicas_of(&m.shard).unwrap();
    assert!(!back.replicas.contains(&4));
    assert_eq!(back.replicas.len(), before.replicas.len() - 1);
    assert_eq!(drop.broker, 4);
}

/// Runs every replicated move the planner starts to its end (each destination taken into the
/// ISR by its leader, then switched), until the planner has nothing left to do.
fn complete_replica_moves(s: &mut State) {
    for _ in 0..100 {
        let (planned, _) = s
            .plan_replica_moves(100, tokio::time::Instant::now(), 0, ok)
            .unwrap();
        if planned.is_empty() {
            return;
        }
        for m in planned {
            let r = s.replicas_of(&m.shard).unwrap();
            let mut isr = r.isr.clone();
            isr.push(m.to);
            s.alter_isr(
                r.leader.unwrap(),
                &m.shard,
                r.leader_epoch,
                r.isr_version,
                &isr,
                &heard(s, &isr),
                ok,
            )
            .unwrap();
            s.switch_replica_move(m.move_id, ok).unwrap();
            s.moves.remove(&m.move_id);
        }
    }
    panic!("the planner kept planning moves");
}

#[test]
fn a_joining_broker_leads_its_share_once_its_replicas_arrive() {
    for (partitions, rf) in [(12, 3), (6, 3), (8, 2), (24, 3)] {
        let mut s = state(&[1, 2, 3]);
        create(&mut s, "t", partitions, rf);
        join(&mut s, 4);
        complete_replica_moves(&mut s);
        for _ in 0..partitions {
            s.prefer_leaders(100, ok).unwrap();
        }
        let desired = s.desired_replicas(&[], rf as usize).unwrap();
        let mut led: BTreeMap<BrokerId, u32> = BTreeMap::new();
        for p in 1..=partitions {
            let r = replicas(&s, "t", p);
            let want = &desired[&ShardId::new("t", p).key()];
            assert_eq!(
                &r.replicas, want,
                "t:{p} takes the ring's replicas, in its order"
            );
            assert_eq!(r.leader, Some(want[0]), "t:{p} is led by the ring's leader");
            *led.entry(r.leader.unwrap()).or_default() += 1;
        }
        let floor = partitions / 4;
        assert_eq!(
            led.len(),
            4,
            "{partitions} x R{rf}: every broker leads: {led:?}"
        );
        assert!(
            led.values().all(|n| *n >= floor),
            "{partitions} x R{rf}: every broker leads at least {floor}: {led:?}"
        );
    }
}

#[test]
fn replicas_of_a_broker_down_past_replace_after_are_re_created_elsewhere() {
    let mut s = state(&[1, 2, 3, 4]);
    create(&mut s, "t", 8, 3);
    let victim = 1;
    let held = s.held_by(victim);
    assert!(!held.is_empty());
    down(&mut s, victim);
    s.fail_over(Some(victim), ok).unwrap();
    // Down, but not for long yet: nothing moves.
    s.replace_after = std::time::Duration::from_secs(3600);
    let (planned, _) = s
        .plan_replica_moves(100, tokio::time::Instant::now(), 0, ok)
        .unwrap();
    assert!(planned.is_empty(), "{planned:?}");
    // Past replace_after: every replica it held moves to another broker, copied from leaders.
    s.replace_after = std::time::Duration::ZERO;
    s.members.get_mut(&victim).unwrap().last_seen -= std::time::Duration::from_millis(10);
    let (planned, _) = s
        .plan_replica_moves(100, tokio::time::Instant::now(), 0, ok)
        .unwrap();
    let moved: Vec<ShardId> = planned.iter().map(|m| m.shard.clone()).collect();
    assert_eq!(moved, held);
    assert!(planned.iter().all(|m| m.from == victim && m.to != victim));
}

#[test]
fn leadership_returns_to_the_preferred_replica_once_every_replica_is_in_sync() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 6, 3);
    let shard = ShardId::new("t", 1);
    let r0 = replicas(&s, "t", 1);
    let preferred = r0.replicas[0];
    down(&mut s, preferred);
    s.fail_over(Some(preferred), ok).unwrap();
    let r = replicas(&s, "t", 1);
    assert_ne!(r.leader, Some(preferred));
    // Back up, but not in sync yet: leadership stays.
    s.members.get_mut(&preferred).unwrap().status = shardq_protocol::BrokerStatus::Up;
    let (none, _) = s.prefer_leaders(10, ok).unwrap();
    assert!(!none.iter().any(|(sh, _)| sh == &shard));
    // Caught up: the leaders take it back into their ISRs, then leadership returns to it.
    for p in 1..=6 {
        let rp = replicas(&s, "t", p);
        if !rp.isr.contains(&preferred) {
            let mut isr = rp.isr.clone();
            isr.push(preferred);
            let sh = ShardId::new("t", p);
            s.alter_isr(
                rp.leader.unwrap(),
                &sh,
                rp.leader_epoch,
                rp.isr_version,
                &isr,
                &heard(&s, &isr),
                ok,
            )
            .unwrap();
        }
    }
    let (elected, pushes) = s.prefer_leaders(10, ok).unwrap();
    assert!(elected.contains(&(shard.clone(), preferred)), "{elected:?}");
    assert!(!pushes.is_empty());
    let r2 = replicas(&s, "t", 1);
    assert_eq!(
        (r2.leader, r2.leader_epoch),
        (Some(preferred), r.leader_epoch + 1)
    );
    let mut led: BTreeMap<BrokerId, usize> = BTreeMap::new();
    for p in 1..=6 {
        *led.entry(replicas(&s, "t", p).leader.unwrap()).or_default() += 1;
    }
    assert_eq!(led.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
}

#[test]
fn a_refused_isr_proposal_bumps_the_version_and_tells_the_leader() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 1, 3);
    let shard = ShardId::new("t", 1);
    let r = replicas(&s, "t", 1);
    let (l, f1, f2) = (r.leader.unwrap(), r.replicas[1], r.replicas[2]);
    down(&mut s, f2);
    s.fail_over(Some(f2), ok).unwrap();
    let r = replicas(&s, "t", 1);
    // The leader proposes the down broker back (stale progress): refused, and the version
    // moves on so no copy of that proposal can be applied later.
    let propose_back = |s: &mut State| {
        let all = [l, f1, f2];
        let h = heard(s, &all);
        s.alter_isr(l, &shard, r.leader_epoch, r.isr_version, &all, &h, ok)
    };
    assert!(propose_back(&mut s).is_err());
    let pushes = s
        .isr_refused(l, &shard, r.leader_epoch, r.isr_version, ok)
        .unwrap();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0.id, l);
    assert_eq!(replicas(&s, "t", 1).isr_version, r.isr_version + 1);
    assert!(propose_back(&mut s).is_err());
    // From a broker that does not lead: nothing changes, nobody is told.
    assert!(s
        .isr_refused(f1, &shard, r.leader_epoch, r.isr_version + 1, ok)
        .unwrap()
        .is_empty());
}

#[test]
fn a_pending_drop_of_a_broker_that_holds_a_replica_again_is_moot() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 1, 2);
    let shard = ShardId::new("t", 1);
    let r = replicas(&s, "t", 1);
    let follower = r.replicas[1];
    s.drops.insert((follower, shard.clone()), s.epoch);
    let (due, moot) = s.drops_due();
    assert!(due.is_empty(), "{due:?}");
    assert_eq!(moot, vec![(follower, shard)]);
}

#[test]
fn with_fewer_brokers_than_replicas_a_leaver_shrinks_the_sets_and_a_joiner_grows_them_back() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 6, 3);
    let leaving = 3;
    let led: Vec<ShardId> = (1..=6)
        .map(|p| ShardId::new("t", p))
        .filter(|sh| s.replicas_of(sh).unwrap().leader == Some(leaving))
        .collect();
    s.leave(leaving, ok).unwrap();
    let (moves, pushes) = s
        .plan_replica_moves(100, tokio::time::Instant::now(), 0, ok)
        .unwrap();
    assert!(moves.is_empty(), "nowhere to move to: {moves:?}");
    for p in 1..=6 {
        let r = replicas(&s, "t", p);
        assert_eq!(r.replicas.len(), 2, "t:P{p}: {r:?}");
        assert!(!r.replicas.contains(&leaving) && !r.isr.contains(&leaving));
        assert!(r.leader.is_some_and(|l| l != leaving));
    }
    for sh in &led {
        // It led: told at once that it holds no replica now.
        let (_, list) = pushes.iter().find(|(b, _)| b.id == leaving).unwrap();
        assert!(list
            .iter()
            .any(|a| &a.shard == sh && !a.replication.replicas.contains(&leaving)));
    }
    assert!(s.held_by(leaving).is_empty());
    assert_eq!(s.drops.keys().filter(|(b, _)| *b == leaving).count(), 6);
    // Once its copies are dropped it is removed; a new broker brings the sets back to 3.
    let drops: Vec<(BrokerId, ShardId)> = s.drops.keys().cloned().collect();
    s.forget_drops(&drops, ok).unwrap();
    assert_eq!(s.reap_leavers(ok).unwrap(), vec![leaving]);
    join(&mut s, 4);
    s.plan_replica_moves(100, tokio::time::Instant::now(), 0, ok)
        .unwrap();
    for p in 1..=6 {
        let r = replicas(&s, "t", p);
        assert_eq!(r.replicas.len(), 3, "t:P{p}: {r:?}");
        assert!(
            r.replicas.contains(&4) && !r.isr.contains(&4),
            "it catches up first"
        );
    }
}

#[test]
fn a_broker_joins_the_isr_only_naming_the_process_registered_now() {
    let mut s = state(&[1, 2, 3]);
    create(&mut s, "t", 1, 3);
    let shard = ShardId::new("t", 1);
    let r = replicas(&s, "t", 1);
    let (l, f1, f2) = (r.leader.unwrap(), r.replicas[1], r.replicas[2]);
    let v = s
        .alter_isr(l, &shard, r.leader_epoch, r.isr_version, &[l, f1], &[], ok)
        .unwrap();
    // f2 restarted (say on a replaced disk): another process is registered now.
    s.members.get_mut(&f2).unwrap().incarnation = Some(process(f2) + 1);
    let all = [l, f1, f2];
    let refused = s.alter_isr(l, &shard, r.leader_epoch, v, &all, &[(f2, process(f2))], ok);
    assert!(
        matches!(&refused, Err(ErrorKind::BadRequest { reason }) if reason.contains("restarted")),
        "{refused:?}"
    );
    // Naming no process, or before this router heard from the broker: refused too.
    assert!(s
        .alter_isr(l, &shard, r.leader_epoch, v, &all, &[], ok)
        .is_err());
    s.members.get_mut(&f2).unwrap().incarnation = None;
    assert!(s
        .alter_isr(l, &shard, r.leader_epoch, v, &all, &[(f2, process(f2))], ok)
        .is_err());
    // The process registered now: in.
    s.members.get_mut(&f2).unwrap().incarnation = Some(process(f2) + 1);
    let joined = [(f2, process(f2) + 1)];
    assert_eq!(
        s.alter_isr(l, &shard, r.leader_epoch, v, &all, &joined, ok),
        Ok(v + 1)
    );
    assert_eq!(replicas(&s, "t", 1).isr.len(), 3);
}
