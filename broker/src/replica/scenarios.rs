//! Hand-written scenarios: the two of KIP-101 where truncating to the follower's own high
//! watermark goes wrong, replayed with truncation by leader epoch.

use super::*;

type Entry = (LeaderEpoch, u64);

/// One replica's log with its epoch cache and HW.
#[derive(Default)]
struct Replica {
    log: Vec<Entry>,
    cache: EpochCache,
    hw: Offset,
}

impl Replica {
    fn end(&self) -> Offset {
        self.log.len() as Offset
    }

    fn last_epoch(&self) -> Option<LeaderEpoch> {
        self.log.last().map(|e| e.0)
    }

    /// Takes over as leader in `epoch`.
    fn lead(&mut self, epoch: LeaderEpoch) {
        self.cache.truncate_from(self.end());
        assert!(self.cache.assign(epoch, self.end()));
    }

    fn append(&mut self, entry: Entry) {
        if self.cache.latest().map(|(e, _)| e) != Some(entry.0) {
            assert!(self.cache.assign(entry.0, self.end()));
        }
        self.log.push(entry);
    }

    fn truncate(&mut self, to: Offset) {
        self.log.truncate(to as usize);
        self.cache.truncate_from(to);
        self.hw = self.hw.min(to);
    }

    /// Fetch rounds from `leader` until it copied everything: truncating on divergence.
    /// Returns the truncation points.
    fn catch_up(&mut self, leader: &Replica) -> Vec<Offset> {
        let mut cuts = Vec::new();
        loop {
            match check_fetch(&leader.cache, leader.end(), self.end(), self.last_epoch()) {
                FetchCheck::Diverging { epoch, end_offset } => {
                    let point = truncation_point(&self.cache, self.end(), (epoch, end_offset));
                    assert!(point < self.end());
                    self.truncate(point);
                    cuts.push(point);
                }
                FetchCheck::Ok => {
                    for &e in &leader.log[self.log.len()..] {
                        self.append(e);
                    }
                    self.hw = self.hw.max(leader.hw.min(self.end()));
                    return cuts;
                }
            }
        }
    }
}

/// KIP-101 scenario 1: B copied m0 and m1 from leader A, and A acknowledged both (its HW is 2),
/// but B restarts before it learned that HW: its own HW is 1. Truncating to it on restart drops
/// m1; if A then dies, B leads without the acknowledged m1. By epoch, B keeps its log: nothing
/// is cut unless a leader says the logs diverge, and A's log agrees with it.
#[test]
fn kip101_scenario_1_a_restarted_follower_keeps_entries_above_its_hw() {
    let mut a = Replica::default();
    a.lead(0);
    a.append((0, 100));
    a.append((0, 101));
    let mut b = Replica::default();
    b.catch_up(&a);
    let mut leader = LeaderState::new(1, 0, vec![1, 2], [1, 2].into(), 0, 2, 0, a.end(), 0);
    leader.on_fetch(2, 1, b.end(), a.end(), 1);
    a.hw = leader.hw();
    assert_eq!(leader.can_ack(2), AckCheck::Acked, "m1 acknowledged");
    b.hw = 1; // the HW of 2 did not reach B before it restarted

    // B restarts (still in the ISR: it was back before anyone noticed).
    assert!(
        b.hw < 2,
        "truncating to its own HW would cut the acknowledged m1"
    );
    assert_eq!(
        check_fetch(&a.cache, a.end(), b.end(), b.last_epoch()),
        FetchCheck::Ok,
        "if B gets to fetch, A confirms its log: nothing to cut"
    );

    // A dies before B fetches: B is elected from the ISR and holds m1.
    let mut controller = PartitionState::new(vec![1, 2]);
    let election = match controller.broker_down(1, |r| r == 2) {
        DownOutcome::Elected(e) => e,
        other => panic!("expected an election, got {other:?}"),
    };
    assert_eq!((election.leader, election.epoch), (2, 1));
    b.lead(election.epoch);
    assert_eq!(b.log, vec![(0, 100), (0, 101)]);

    // A comes back as a follower of B: nothing to cut either.
    assert_eq!(a.catch_up(&b), Vec::<Offset>::new());
    assert_eq!(a.log, b.log);
}

/// KIP-101 scenario 2: A (leader, epoch 0) wrote m0 and m1 while B, out of the ISR, had only
/// m0; A's HW is 2. Both crash; B comes back first and is elected (unclean, explicitly: the
/// only way a replica outside the ISR leads), and writes m2 at offset 1 in epoch 1. A comes
/// back: truncating to its HW (2) cuts nothing, and the logs stay different at offset 1 for
/// ever (A: m1, B: m2). By epoch, A learns that epoch 0 ends at 1 on B and cuts there.
#[test]
fn kip101_scenario_2_replicas_back_in_the_other_order_converge_by_epoch() {
    let mut a = Replica::default();
    a.lead(0);
    a.append((0, 100));
    let mut b = Replica::default();
    b.catch_up(&a);
    a.append((0, 101));
    a.hw = 2;

    let mut controller = PartitionState::new(vec![1, 2]);
    controller.isr = vec![1];
    assert_eq!(controller.broker_down(1, |_| false), DownOutcome::Offline);
    // B is back alone: not in the ISR, so no clean election.
    assert_eq!(controller.restore_leader(|r| r == 2, false), None);
    let election = controller
        .restore_leader(|r| r == 2, true)
        .expect("unclean");
    assert_eq!((election.leader, election.epoch), (2, 1));
    assert!(election.possibly_lost);
    b.lead(1);
    b.append((1, 102));
    b.hw = 2;

    // A is back as a follower.
    assert!(
        a.hw >= a.end(),
        "truncating to its HW would keep m1 against B's m2"
    );
    assert_eq!(a.catch_up(&b), vec![1], "epoch 0 ends at 1 on B");
    assert_eq!(a.log, vec![(0, 100), (1, 102)]);
    assert_eq!(a.log, b.log);
}

/// A follower that led epochs nobody else kept walks back through them round by round, each
/// round cutting at or above the first difference, and ends at the shared prefix.
#[test]
fn a_follower_walks_back_through_epochs_the_leader_never_had() {
    // Epoch 1 by A: offsets 0..3 on everyone.
    let mut a = Replica::default();
    a.lead(1);
    for v in 0..3 {
        a.append((1, v));
    }
    let mut c = Replica::default();
    c.catch_up(&a);
    // A goes on alone in epoch 1 (3..5), then leads epoch 3 too (5..6), unseen by anyone.
    a.append((1, 3));
    a.append((1, 4));
    a.lead(3);
    a.append((3, 5));
    // Meanwhile C was elected in epoch 2 and epoch 4, writing 3..4 and 4..6.
    c.lead(2);
    c.append((2, 10));
    c.lead(4);
    c.append((4, 11));
    c.append((4, 12));
    // A follows C: its epoch 3 is unknown to C (C answers epoch 2, ending at 4), and A knows
    // no epoch 2 (it cuts where its epoch 1 ends, at 5, then not past 4); then epoch 1 ends at
    // 3 on C.
    assert_eq!(a.catch_up(&c), vec![4, 3]);
    assert_eq!(a.log, c.log);
}
