//! A deterministic simulation of one shard replicated on 3 to 5 brokers, driven by proptest:
//! random produces, fetches, fetch answers delivered late or out of order, clock ticks, ISR
//! proposals delivered, lost, repeated or answered late, controller pushes delivered late,
//! crashes (the log survives) and restarts, and brokers the controller declares down while they
//! still run (a paused leader keeps believing it leads). Unclean elections are off.
//!
//! Every entry a client was told is acknowledged, and every entry below the HW of any replica
//! that believes it leads (what a consumer may have read), is *committed*; the committed entries
//! form one prefix (two leaders exposing different entries at one offset is a failure). After
//! every step:
//!
//! * every member of the controller's ISR holds the whole committed prefix (what makes a clean
//!   election safe), and so does the controller's leader (checked at each election too);
//! * every controller-ISR member agrees with the leader up to its HW;
//! * a leader's HW never goes back within its epoch;
//! * every replica's epoch cache describes its log, and its HW covers only committed entries;
//! * a follower's truncation never cuts into the committed entries it holds, when it is in the
//!   ISR or follows the current leader (a replica following a deposed leader may be told to cut
//!   entries committed since; it is outside the ISR then and catches up before it rejoins).
//!
//! At the end everything is healed and fetched to quiescence: all logs must be identical.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;

type Entry = (LeaderEpoch, u64);

const LAG_MAX_MS: u64 = 100;

#[derive(Clone, Debug)]
enum Op {
    /// A replica that believes it leads (`pick` among them) appends `count` entries.
    Produce {
        pick: u8,
        count: u8,
    },
    /// A follower sends a fetch for at most `max` entries; its leader answers at once, and the
    /// answer arrives at once (`now`) or travels until an `Answer`.
    Fetch {
        node: u8,
        max: u8,
        now: bool,
    },
    /// One of the fetch answers in flight to `node` arrives (`pick`: which one).
    Answer {
        node: u8,
        pick: u8,
    },
    Tick {
        ms: u8,
    },
    /// A replica that believes it leads computes an ISR change and sends it.
    Propose {
        pick: u8,
    },
    /// A leader with a pending proposal sends it again (its answer is late or lost).
    Retry {
        pick: u8,
    },
    /// One proposal in flight reaches the controller, or is lost.
    Controller {
        pick: u8,
        lose: bool,
    },
    /// One answer of the controller reaches its leader, or is lost.
    Reply {
        pick: u8,
        lose: bool,
    },
    /// The next push of the controller reaches `node`, or (`all`) every push reaches everyone.
    Deliver {
        node: u8,
        all: bool,
    },
    /// The process stops; its log, epoch cache and HW survive. The controller notices at once
    /// (`detected`) or at a later `CtrlDown`.
    Crash {
        node: u8,
        detected: bool,
    },
    /// A stopped process (`pick` among them) starts again and registers (a new incarnation).
    Restart {
        pick: u8,
    },
    /// The controller declares `node` down (session expired) whether it runs or not.
    CtrlDown {
        node: u8,
    },
    /// A running replica the controller considers down (`pick` among them) registers again.
    CtrlUp {
        pick: u8,
    },
    /// The leader serves a fetch of one of `node`'s processes again (`pick`: the last of each
    /// process), whatever became of it since: a long poll woken by an append re-reads the
    /// positions it was sent, and the request of a process that died may still be in one.
    Replay {
        node: u8,
        pick: u8,
    },
    /// A stopped process the controller knows is down and holds out of the ISR (`pick` among
    /// them) loses the end of its log, or all of it (`keep` picks how much stays): a lost or
    /// replaced disk, or writes not yet synced.
    Lose {
        pick: u8,
        keep: u8,
    },
}

/// How often each kind of operation comes up, in the order of [`decode`]: produce, fetch,
/// answer, tick, propose, retry, controller, reply, deliver, crash, restart, controller-down,
/// controller-up, replay, lose. Faults are rare enough that most runs commit entries between
/// them.
const WEIGHTS: [u32; 15] = [8, 12, 5, 4, 3, 2, 5, 5, 8, 2, 4, 1, 2, 2, 1];

const TOTAL_WEIGHT: u32 = {
    let (mut total, mut i) = (0, 0);
    while i < WEIGHTS.len() {
        total += WEIGHTS[i];
        i += 1;
    }
    total
};

/// Decodes one random word into an operation: its kind by [`WEIGHTS`], its fields from the
/// remaining bits. Proptest generates and shrinks plain words far faster than nested strategies
/// (which took most of the test's time in debug builds); shrinking a word towards 0 makes its
/// operation simpler, and a failure prints the decoded operations.
fn decode(word: u32) -> Op {
    let (mut kind, p) = (word % TOTAL_WEIGHT, word / TOTAL_WEIGHT);
    let k = WEIGHTS
        .iter()
        .position(|&w| {
            let here = kind < w;
            kind = kind.saturating_sub(w);
            here
        })
        .expect("weights add up to the total");
    let (low, high) = (p as u8, (p >> 8) as u8);
    match k {
        0 => Op::Produce {
            pick: low,
            count: 1 + high % 3,
        },
        1 => Op::Fetch {
            node: low,
            max: 1 + high % 4,
            now: (p >> 16) & 1 == 1,
        },
        2 => Op::Answer {
            node: low,
            pick: high,
        },
        3 => Op::Tick { ms: 1 + low % 59 },
        4 => Op::Propose { pick: low },
        5 => Op::Retry { pick: low },
        6 => Op::Controller {
            pick: low,
            lose: high % 10 == 9,
        },
        7 => Op::Reply {
            pick: low,
            lose: high % 10 == 9,
        },
        8 => Op::Deliver {
            node: low,
            all: high % 5 == 4,
        },
        9 => Op::Crash {
            node: low,
            detected: high & 1 == 1,
        },
        10 => Op::Restart { pick: low },
        11 => Op::CtrlDown { node: low },
        12 => Op::CtrlUp { pick: low },
        13 => Op::Replay {
            node: low,
            pick: high,
        },
        _ => Op::Lose {
            pick: low,
            keep: high,
        },
    }
}

/// The controller's state as pushed to a broker.
#[derive(Clone, Debug)]
struct Push {
    leader: Option<BrokerId>,
    epoch: LeaderEpoch,
    replicas: Vec<BrokerId>,
    isr: Vec<BrokerId>,
    version: u64,
}

#[derive(Clone, Debug)]
enum Body {
    Records {
        entries: Vec<Entry>,
        hw: Offset,
    },
    Diverging {
        epoch: LeaderEpoch,
        end_offset: Offset,
    },
}

/// A fetch answer in flight: to which of the follower's requests, from which leader, for which
/// epoch and fetch offset.
#[derive(Clone, Debug)]
struct Answer {
    seq: u64,
    from: BrokerId,
    epoch: LeaderEpoch,
    fetch_offset: Offset,
    body: Body,
}

#[derive(Clone, Debug)]
enum Role {
    Follower {
        leader: Option<BrokerId>,
        epoch: LeaderEpoch,
    },
    Leader(Box<LeaderState>),
}

#[derive(Clone, Debug)]
struct Node {
    id: BrokerId,
    up: bool,
    /// Its process: new at every restart.
    incarnation: u64,
    // Survive a crash:
    log: Vec<Entry>,
    cache: EpochCache,
    hw: Offset,
    // Lost in a crash:
    role: Role,
    /// The newest controller state seen, (epoch, version).
    seen: Option<(LeaderEpoch, u64)>,
    inbox: VecDeque<Push>,
    answers: Vec<Answer>,
    /// Numbers this replica's fetch requests; only the answer to the latest one is applied.
    fetch_seq: u64,
    /// The last fetch of each of its recent processes as its leader got it.
    last_fetch: Vec<LastFetch>,
}

impl Node {
    fn end(&self) -> Offset {
        self.log.len() as Offset
    }

    fn leader_state(&self) -> Option<&LeaderState> {
        match &self.role {
            Role::Leader(l) if self.up => Some(l),
            _ => None,
        }
    }

    /// Stops leading (or forgets its role in a crash): an epoch it led without writing
    /// anything leaves the cache, so the cache names exactly the epochs of its entries.
    fn stop_leading(&mut self, leader: Option<BrokerId>, epoch: LeaderEpoch) {
        self.cache.truncate_from(self.end());
        self.role = Role::Follower { leader, epoch };
    }
}

/// A follower's fetch as its leader got it (what a long poll serves again).
#[derive(Clone, Copy, Debug)]
struct LastFetch {
    leader: BrokerId,
    epoch: LeaderEpoch,
    incarnation: u64,
    fetch_offset: Offset,
    last_epoch: Option<LeaderEpoch>,
}

/// A produce waiting for its acknowledgement.
#[derive(Clone, Debug)]
struct Waiting {
    node: usize,
    epoch: LeaderEpoch,
    end: Offset,
}

/// An ISR proposal in flight to the controller.
#[derive(Clone, Debug)]
struct Proposal {
    from: BrokerId,
    epoch: LeaderEpoch,
    proposal: IsrProposal,
}

/// The controller's answer to a proposal, on its way back to the leader.
#[derive(Clone, Debug)]
struct Reply {
    to: BrokerId,
    epoch: LeaderEpoch,
    id: u64,
    result: Result<u64, Reject>,
}

struct Sim {
    nodes: Vec<Node>,
    ctrl: PartitionState,
    ctrl_live: Vec<bool>,
    /// The process each broker registered last.
    ctrl_incarnation: Vec<u64>,
    proposals: Vec<Proposal>,
    replies: Vec<Reply>,
    waiting: Vec<Waiting>,
    now: u64,
    min_insync: usize,
    next_value: u64,
    /// Every entry acknowledged or exposed below a leader's HW, as one prefix.
    committed: Vec<Entry>,
    /// The highest HW seen per (leader, epoch).
    hw_seen: BTreeMap<(BrokerId, LeaderEpoch), Offset>,
}

type Check = Result<(), String>;

fn idx(id: BrokerId) -> usize {
    id as usize - 1
}

/// Length of the common prefix of two logs.
fn common(a: &[Entry], b: &[Entry]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Sim {
    fn new(n: usize, min_insync: usize) -> Sim {
        let ids: Vec<BrokerId> = (1..=n as BrokerId).collect();
        let nodes = ids
            .iter()
            .map(|&id| Node {
                id,
                up: true,
                incarnation: 0,
                log: Vec::new(),
                cache: EpochCache::new(),
                hw: 0,
                role: Role::Follower {
                    leader: None,
                    epoch: 0,
                },
                seen: None,
                inbox: VecDeque::new(),
                answers: Vec::new(),
                fetch_seq: 0,
                last_fetch: Vec::new(),
            })
            .collect();
        let mut sim = Sim {
            nodes,
            ctrl: PartitionState::new(ids),
            ctrl_live: vec![true; n],
            ctrl_incarnation: vec![0; n],
            proposals: Vec::new(),
            replies: Vec::new(),
            waiting: Vec::new(),
            now: 0,
            min_insync,
            next_value: 0,
            committed: Vec::new(),
            hw_seen: BTreeMap::new(),
        };
        sim.broadcast();
        for i in 0..n {
            sim.deliver(i).expect("initial push");
        }
        sim
    }

    fn push(&self) -> Push {
        Push {
            leader: self.ctrl.leader,
            epoch: self.ctrl.leader_epoch,
            replicas: self.ctrl.replicas.clone(),
            isr: self.ctrl.isr.clone(),
            version: self.ctrl.isr_version,
        }
    }

    /// The controller pushes its state to every running broker it considers live.
    fn broadcast(&mut self) {
        let push = self.push();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if n.up && self.ctrl_live[i] {
                n.inbox.push_back(push.clone());
            }
        }
    }

    /// Replicas that believe they lead (running, role leader), possibly deposed.
    fn leaders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].leader_state().is_some())
            .collect()
    }

    fn step(&mut self, op: &Op) -> Check {
        let n = self.nodes.len();
        match *op {
            Op::Produce { pick, count } => {
                let leaders = self.leaders();
                if let Some(&i) = leaders.get(pick as usize % leaders.len().max(1)) {
                    self.produce(i, count as usize);
                }
            }
            Op::Fetch { node, max, now } => {
                let i = node as usize % n;
                self.fetch(i, max as usize);
                if now && !self.nodes[i].answers.is_empty() {
                    let last = self.nodes[i].answers.len() - 1;
                    self.answer(i, last)?;
                }
            }
            Op::Answer { node, pick } => self.answer(node as usize % n, pick as usize)?,
            Op::Tick { ms } => self.now += ms as u64,
            Op::Propose { pick } => {
                let leaders = self.leaders();
                if let Some(&i) = leaders.get(pick as usize % leaders.len().max(1)) {
                    self.propose(i);
                }
            }
            Op::Retry { pick } => {
                let leaders = self.leaders();
                if let Some(&i) = leaders.get(pick as usize % leaders.len().max(1)) {
                    self.retry(i);
                }
            }
            Op::Controller { pick, lose } => {
                if !self.proposals.is_empty() {
                    let p = self.proposals.remove(pick as usize % self.proposals.len());
                    if !lose {
                        self.alter_isr(p);
                    }
                }
            }
            Op::Reply { pick, lose } => {
                if !self.replies.is_empty() {
                    let r = self.replies.remove(pick as usize % self.replies.len());
                    if !lose {
                        self.reply(r);
                    }
                }
            }
            Op::Deliver { node, all: false } => self.deliver(node as usize % n)?,
            Op::Deliver { all: true, .. } => self.deliver_all()?,
            Op::Crash { node, detected } => {
                let i = node as usize % n;
                self.crash(i);
                if detected {
                    self.ctrl_down(i)?;
                }
            }
            Op::Restart { pick } => {
                let down: Vec<usize> = (0..n).filter(|&i| !self.nodes[i].up).collect();
                if let Some(&i) = down.get(pick as usize % down.len().max(1)) {
                    self.restart(i)?;
                }
            }
            Op::CtrlDown { node } => self.ctrl_down(node as usize % n)?,
            Op::CtrlUp { pick } => {
                let unseen: Vec<usize> = (0..n)
                    .filter(|&i| self.nodes[i].up && !self.ctrl_live[i])
                    .collect();
                if let Some(&i) = unseen.get(pick as usize % unseen.len().max(1)) {
                    self.ctrl_up(i)?;
                }
            }
            Op::Replay { node, pick } => self.replay(node as usize % n, pick as usize),
            Op::Lose { pick, keep } => {
                let out: Vec<usize> = (0..n)
                    .filter(|&i| {
                        !self.nodes[i].up
                            && !self.ctrl_live[i]
                            && !self.ctrl.isr.contains(&self.nodes[i].id)
                    })
                    .collect();
                if let Some(&i) = out.get(pick as usize % out.len().max(1)) {
                    self.lose(i, keep as usize);
                }
            }
        }
        self.settle()
    }

    fn produce(&mut self, i: usize, count: usize) {
        let node = &mut self.nodes[i];
        let Role::Leader(l) = &mut node.role else {
            return;
        };
        if !l.enough_insync() {
            return; // NotEnoughReplicas, before appending
        }
        let epoch = l.leader_epoch();
        assert_eq!(node.cache.latest().map(|(e, _)| e), Some(epoch));
        for _ in 0..count {
            node.log.push((epoch, self.next_value));
            self.next_value += 1;
        }
        let end = node.log.len() as Offset;
        l.on_append(end);
        self.waiting.push(Waiting {
            node: i,
            epoch,
            end,
        });
    }

    fn fetch(&mut self, i: usize, max: usize) {
        let f = &self.nodes[i];
        let Role::Follower {
            leader: Some(leader),
            epoch,
        } = f.role
        else {
            return;
        };
        if !f.up || leader == f.id {
            return;
        }
        let (from, incarnation, fetch_offset) = (f.id, f.incarnation, f.end());
        let last_epoch = f.log.last().map(|e| e.0);
        // A new request: answers to older ones are dropped from now on.
        self.nodes[i].fetch_seq += 1;
        let seq = self.nodes[i].fetch_seq;
        let l = &mut self.nodes[idx(leader)];
        if !l.up {
            return;
        }
        let leader_end = l.end();
        let Role::Leader(state) = &mut l.role else {
            return; // NotLeader: the follower retries later
        };
        if check_leader_epoch(state.leader_epoch(), epoch).is_err() {
            return;
        }
        let parked = &mut self.nodes[i].last_fetch;
        parked.retain(|f| f.incarnation != incarnation);
        if parked.len() >= 3 {
            parked.remove(0);
        }
        parked.push(LastFetch {
            leader,
            epoch,
            incarnation,
            fetch_offset,
            last_epoch,
        });
        let l = &mut self.nodes[idx(leader)];
        let Role::Leader(state) = &mut l.role else {
            unreachable!("checked above");
        };
        let body = match check_fetch(&l.cache, leader_end, fetch_offset, last_epoch) {
            FetchCheck::Diverging { epoch, end_offset } => Body::Diverging { epoch, end_offset },
            FetchCheck::Ok => {
                state.on_fetch(from, incarnation, fetch_offset, leader_end, self.now);
                let upto = (fetch_offset as usize + max).min(l.log.len());
                Body::Records {
                    entries: l.log[fetch_offset as usize..upto].to_vec(),
                    hw: state.hw(),
                }
            }
        };
        self.nodes[i].answers.push(Answer {
            seq,
            from: leader,
            epoch,
            fetch_offset,
            body,
        });
    }

    /// The leader of one of `i`'s parked fetches (`pick`) serves it again (a long poll's second
    /// look): it counts as that fetch did, the answer goes nowhere.
    fn replay(&mut self, i: usize, pick: usize) {
        let parked = &self.nodes[i].last_fetch;
        let Some(&f) = parked.get(pick % parked.len().max(1)) else {
            return;
        };
        let from = self.nodes[i].id;
        let l = &mut self.nodes[idx(f.leader)];
        let leader_end = l.end();
        if !l.up {
            return;
        }
        let Role::Leader(state) = &mut l.role else {
            return;
        };
        if state.leader_epoch() != f.epoch {
            return;
        }
        if check_fetch(&l.cache, leader_end, f.fetch_offset, f.last_epoch) == FetchCheck::Ok {
            state.on_fetch(from, f.incarnation, f.fetch_offset, leader_end, self.now);
        }
    }

    /// `i` (stopped) keeps only the first `keep % (end + 1)` entries of its log.
    fn lose(&mut self, i: usize, keep: usize) {
        let node = &mut self.nodes[i];
        let keep = keep % (node.log.len() + 1);
        node.log.truncate(keep);
        node.cache.truncate_from(keep as Offset);
        node.hw = node.hw.min(keep as Offset);
    }

    fn answer(&mut self, i: usize, pick: usize) -> Check {
        let f = &mut self.nodes[i];
        if !f.up || f.answers.is_empty() {
            return Ok(());
        }
        let a = f.answers.remove(pick % f.answers.len());
        // Only the answer to the latest request, from the current leader and epoch, for the log
        // as it still is. (The log end alone is not enough: an older answer may find the log
        // truncated and grown back to the same end since.)
        match f.role {
            Role::Follower {
                leader: Some(leader),
                epoch,
            } if a.seq == f.fetch_seq
                && leader == a.from
                && epoch == a.epoch
                && f.end() == a.fetch_offset => {}
            _ => return Ok(()),
        }
        match a.body {
            Body::Diverging { epoch, end_offset } => {
                let end = f.end();
                let point = truncation_point(&f.cache, end, (epoch, end_offset));
                if point >= end {
                    return Err(format!(
                        "node {}: truncation to {point} makes no progress from {end}",
                        f.id
                    ));
                }
                // A replica that follows a deposed leader may be told to cut entries committed
                // after that leader's time; it is then outside the ISR (which the current
                // leader's HW waited for), and catches up before it rejoins. A follower of the
                // current leader, or an ISR member, never cuts committed entries.
                let bound = self.ctrl.isr.contains(&f.id)
                    || (self.ctrl.leader == Some(a.from) && self.ctrl.leader_epoch == a.epoch);
                let held = common(&f.log, &self.committed) as Offset;
                if bound && point < held {
                    return Err(format!(
                        "node {} truncates to {point}, below the {held} committed entries it holds",
                        f.id
                    ));
                }
                f.log.truncate(point as usize);
                f.cache.truncate_from(point);
                f.hw = f.hw.min(point);
            }
            Body::Records { entries, hw } => {
                for entry in entries {
                    let offset = f.end();
                    match f.cache.latest() {
                        Some((latest, _)) if entry.0 == latest => {}
                        Some((latest, _)) if entry.0 < latest => {
                            return Err(format!(
                                "node {}: entry of epoch {} at {offset} after epoch {latest}",
                                f.id, entry.0
                            ));
                        }
                        _ => assert!(f.cache.assign(entry.0, offset)),
                    }
                    f.log.push(entry);
                }
                f.hw = f.hw.max(hw.min(f.end()));
            }
        }
        Ok(())
    }

    fn propose(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let end = node.end();
        if let Role::Leader(l) = &mut node.role {
            if let Some(proposal) = l.isr_change(self.now, LAG_MAX_MS, end) {
                self.proposals.push(Proposal {
                    from: node.id,
                    epoch: l.leader_epoch(),
                    proposal,
                });
            }
        }
    }

    fn retry(&mut self, i: usize) {
        let node = &self.nodes[i];
        if let Role::Leader(l) = &node.role {
            if let Some(p) = l.pending() {
                self.proposals.push(Proposal {
                    from: node.id,
                    epoch: l.leader_epoch(),
                    proposal: p.clone(),
                });
            }
        }
    }

    fn alter_isr(&mut self, p: Proposal) {
        let before = self.ctrl.isr_version;
        let live: Vec<bool> = self.ctrl_live.clone();
        let registered = self.ctrl_incarnation.clone();
        let heard = &p.proposal.incarnations;
        let result = self.ctrl.alter_isr(
            p.from,
            p.epoch,
            p.proposal.base_version,
            p.proposal.isr.iter().copied(),
            |id| {
                may_join(
                    live[idx(id)],
                    heard.get(&id).copied(),
                    Some(registered[idx(id)]),
                )
            },
        );
        if self.ctrl.isr_version != before {
            self.broadcast();
        }
        self.replies.push(Reply {
            to: p.from,
            epoch: p.epoch,
            id: p.proposal.id,
            result,
        });
    }

    fn reply(&mut self, r: Reply) {
        let node = &mut self.nodes[idx(r.to)];
        if !node.up {
            return;
        }
        if let Role::Leader(l) = &mut node.role {
            if l.leader_epoch() == r.epoch {
                // A refusal ends nothing: the push of the controller's newer version does.
                if let Ok(version) = r.result {
                    l.isr_confirmed(r.id, version);
                }
            }
        }
    }

    fn deliver(&mut self, i: usize) -> Check {
        let node = &mut self.nodes[i];
        if !node.up {
            return Ok(());
        }
        let Some(push) = node.inbox.pop_front() else {
            return Ok(());
        };
        if node
            .seen
            .is_some_and(|seen| (push.epoch, push.version) <= seen)
        {
            return Ok(());
        }
        node.seen = Some((push.epoch, push.version));
        let isr: BTreeSet<BrokerId> = push.isr.iter().copied().collect();
        if push.leader == Some(node.id) {
            if let Role::Leader(l) = &mut node.role {
                if l.leader_epoch() == push.epoch {
                    l.update_from_controller(push.replicas, isr, push.version, self.now);
                    return Ok(());
                }
            }
            // Takes over: the epoch starts at its log end.
            let end = node.end();
            if let Some((latest, _)) = node.cache.latest() {
                if latest >= push.epoch {
                    return Err(format!(
                        "node {} elected in epoch {} but its cache has {latest}",
                        node.id, push.epoch
                    ));
                }
            }
            assert!(node.cache.assign(push.epoch, end));
            // A push delivered late can make a replica take over an epoch the controller has
            // already replaced: it is deposed from the start, and its HW cannot pass what the
            // newer leader holds. Only the current epoch's leader must hold everything.
            let held = common(&node.log, &self.committed);
            if push.epoch == self.ctrl.leader_epoch && held < self.committed.len() {
                return Err(format!(
                    "node {} leads epoch {} holding {held} of {} committed entries",
                    node.id,
                    push.epoch,
                    self.committed.len()
                ));
            }
            node.role = Role::Leader(Box::new(LeaderState::new(
                node.id,
                push.epoch,
                push.replicas,
                isr,
                push.version,
                self.min_insync,
                node.hw,
                end,
                self.now,
            )));
        } else {
            let same = matches!(node.role,
                Role::Follower { leader, epoch } if leader == push.leader && epoch == push.epoch);
            if !same {
                node.stop_leading(push.leader, push.epoch);
            }
        }
        Ok(())
    }

    fn deliver_all(&mut self) -> Check {
        for i in 0..self.nodes.len() {
            while !self.nodes[i].inbox.is_empty() {
                self.deliver(i)?;
            }
        }
        Ok(())
    }

    fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if !node.up {
            return;
        }
        node.up = false;
        node.stop_leading(None, 0);
        node.seen = None;
        node.inbox.clear();
        node.answers.clear();
    }

    /// Runs the controller's reaction to `i` going down and pushes the result.
    fn ctrl_mark_down(&mut self, i: usize) -> Check {
        self.ctrl_live[i] = false;
        let id = self.nodes[i].id;
        let live: Vec<bool> = self.ctrl_live.clone();
        let outcome = self.ctrl.broker_down(id, |b| live[idx(b)]);
        if let DownOutcome::Elected(e) = &outcome {
            self.check_elected(e)?;
        }
        if outcome != DownOutcome::Unchanged {
            self.broadcast();
        }
        Ok(())
    }

    /// `i` (running) registers: the controller marks it live, elects a leader if the shard is
    /// offline and one of the ISR is now live, and pushes its state to `i`.
    fn ctrl_mark_up(&mut self, i: usize) -> Check {
        self.ctrl_live[i] = true;
        self.ctrl_incarnation[i] = self.nodes[i].incarnation;
        let live: Vec<bool> = self.ctrl_live.clone();
        if let Some(e) = self.ctrl.restore_leader(|b| live[idx(b)], false) {
            self.check_elected(&e)?;
            self.broadcast();
        } else {
            let push = self.push();
            self.nodes[i].inbox.push_back(push);
        }
        Ok(())
    }

    fn check_elected(&self, e: &Election) -> Check {
        if e.possibly_lost {
            return Err(format!("unclean election of {}", e.leader));
        }
        let held = common(&self.nodes[idx(e.leader)].log, &self.committed);
        if held < self.committed.len() {
            return Err(format!(
                "the controller elected {} in epoch {}, holding {held} of {} committed entries",
                e.leader,
                e.epoch,
                self.committed.len()
            ));
        }
        Ok(())
    }

    fn restart(&mut self, i: usize) -> Check {
        if self.nodes[i].up {
            return Ok(());
        }
        self.nodes[i].up = true;
        self.nodes[i].incarnation += 1;
        // A new incarnation: whatever the controller thought, the old one is gone.
        if self.ctrl_live[i] {
            self.ctrl_mark_down(i)?;
        }
        self.ctrl_mark_up(i)
    }

    fn ctrl_down(&mut self, i: usize) -> Check {
        if self.ctrl_live[i] {
            self.ctrl_mark_down(i)?;
        }
        Ok(())
    }

    fn ctrl_up(&mut self, i: usize) -> Check {
        if self.nodes[i].up && !self.ctrl_live[i] {
            self.ctrl_mark_up(i)?;
        }
        Ok(())
    }

    /// Adds `log[..upto]` to the committed prefix; it must agree with what is there.
    fn commit(&mut self, i: usize, upto: Offset, what: &str) -> Check {
        let log = &self.nodes[i].log;
        let upto = upto as usize;
        let k = upto.min(self.committed.len());
        if log[..k] != self.committed[..k] {
            return Err(format!(
                "node {} {what} up to {upto}, but differs from the committed entries at {}",
                self.nodes[i].id,
                common(log, &self.committed)
            ));
        }
        if upto > self.committed.len() {
            let more = log[self.committed.len()..upto].to_vec();
            self.committed.extend(more);
        }
        Ok(())
    }

    /// Acknowledges what can be, records what leaders expose, and checks the invariants.
    fn settle(&mut self) -> Check {
        let mut waiting = std::mem::take(&mut self.waiting);
        let mut err = Ok(());
        waiting.retain(|w| {
            let Some(l) = self.nodes[w.node].leader_state() else {
                return false; // no longer leading: the client gets an error
            };
            if l.leader_epoch() != w.epoch {
                return false;
            }
            match l.can_ack(w.end) {
                AckCheck::Wait => true,
                AckCheck::NotEnoughReplicas { .. } => false,
                AckCheck::Acked => {
                    if err.is_ok() {
                        err = self.commit(w.node, w.end, "acknowledged");
                    }
                    false
                }
            }
        });
        self.waiting = waiting;
        err?;
        for i in self.leaders() {
            let l = self.nodes[i].leader_state().expect("leads");
            let (id, epoch, hw) = (l.leader(), l.leader_epoch(), l.hw());
            let seen = self.hw_seen.entry((id, epoch)).or_insert(0);
            if hw < *seen {
                return Err(format!(
                    "leader {id} moved its HW back from {seen} to {hw} in epoch {epoch}"
                ));
            }
            *seen = hw;
            self.commit(i, hw, "exposed")?;
        }
        self.check()
    }

    fn check(&self) -> Check {
        // Clean elections rely on this: every ISR member holds everything committed.
        for &m in &self.ctrl.isr {
            let held = common(&self.nodes[idx(m)].log, &self.committed);
            if held < self.committed.len() {
                return Err(format!(
                    "ISR member {m} holds {held} of the {} committed entries",
                    self.committed.len()
                ));
            }
        }
        if let Some(leader) = self.ctrl.leader {
            let l = &self.nodes[idx(leader)];
            let held = common(&l.log, &self.committed);
            if held < self.committed.len() {
                return Err(format!(
                    "leader {leader} holds {held} of the {} committed entries",
                    self.committed.len()
                ));
            }
            if let Some(state) = l.leader_state() {
                if state.leader_epoch() == self.ctrl.leader_epoch {
                    let hw = state.hw() as usize;
                    for &m in &self.ctrl.isr {
                        let log = &self.nodes[idx(m)].log;
                        if log.len() < hw || log[..hw] != l.log[..hw] {
                            return Err(format!(
                                "ISR member {m} disagrees with leader {leader} below its HW {hw}"
                            ));
                        }
                    }
                }
            }
        }
        for n in &self.nodes {
            if n.hw > n.end() || common(&n.log, &self.committed) < n.hw as usize {
                return Err(format!(
                    "node {}: HW {} over uncommitted entries",
                    n.id, n.hw
                ));
            }
            // The cache lists the epoch runs of the log, plus the epoch a leader took over in
            // while it has written nothing yet.
            let mut runs: Vec<(LeaderEpoch, Offset)> = Vec::new();
            for (o, e) in n.log.iter().enumerate() {
                if runs.last().is_none_or(|r| r.0 != e.0) {
                    runs.push((e.0, o as Offset));
                }
            }
            let mut cache: Vec<_> = n.cache.entries().collect();
            if let Some(l) = n.leader_state() {
                if cache.last() == Some(&(l.leader_epoch(), n.end())) {
                    cache.pop();
                }
            }
            if cache != runs {
                return Err(format!(
                    "node {}: epoch cache {cache:?} does not describe its log {runs:?}",
                    n.id
                ));
            }
        }
        Ok(())
    }

    /// Heals everything (restarts, registrations, deliveries) and runs fetch rounds until all
    /// logs are equal and every replica is in the ISR.
    fn heal(&mut self) -> Check {
        let n = self.nodes.len();
        for i in 0..n {
            self.restart(i)?;
            self.ctrl_up(i)?;
        }
        for round in 0..200 {
            self.deliver_all()?;
            for i in self.leaders() {
                self.retry(i);
            }
            while let Some(p) = self.proposals.pop() {
                self.alter_isr(p);
            }
            while let Some(r) = self.replies.pop() {
                self.reply(r);
            }
            self.settle()?;
            for i in 0..n {
                self.fetch(i, 16);
                while !self.nodes[i].answers.is_empty() {
                    self.answer(i, 0)?;
                }
                self.settle()?;
            }
            self.now += 1;
            for i in self.leaders() {
                self.propose(i);
            }
            self.settle()?;
            let first = &self.nodes[0].log;
            let equal = self.nodes.iter().all(|x| &x.log == first);
            let full = self.ctrl.isr.len() == n && self.ctrl.leader.is_some();
            let quiet = self.nodes.iter().all(|x| x.inbox.is_empty())
                && self.proposals.is_empty()
                && self.leaders().len() == 1;
            if equal && full && quiet && round > 2 {
                return Ok(());
            }
        }
        let logs: Vec<_> = self.nodes.iter().map(|x| (x.id, x.log.clone())).collect();
        Err(format!(
            "no quiescence after healing: controller {:?}, logs {logs:?}",
            self.ctrl
        ))
    }
}

fn run(n: usize, min_insync: usize, words: &[u32]) -> Check {
    let ops: Vec<Op> = words.iter().map(|&w| decode(w)).collect();
    let mut sim = Sim::new(n, min_insync);
    let result = ops
        .iter()
        .enumerate()
        .try_for_each(|(k, op)| sim.step(op).map_err(|e| format!("step {k} ({op:?}): {e}")))
        .and_then(|()| sim.heal().map_err(|e| format!("healing: {e}")));
    result.map_err(|e| format!("{e}\nn = {n}, min_insync = {min_insync}, ops = {ops:#?}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8000, ..ProptestConfig::default() })]

    #[test]
    fn replication_never_loses_committed_entries(
        n in 3usize..=5,
        min_insync in 1usize..=2,
        words in prop::collection::vec(any::<u32>(), 50..250),
    ) {
        run(n, min_insync, &words).map_err(TestCaseError::fail)?;
    }
}

/// Every ISR member is down while stale replicas are live: no election until an ISR member is
/// back (unclean elections being off), and nothing committed is lost.
#[test]
fn all_isr_down_with_stale_replicas_up_waits_for_the_isr() {
    let mut sim = Sim::new(3, 1);
    sim.produce(0, 2);
    // 2 and 3 never fetch: the leader shrinks the ISR to itself and commits alone.
    sim.now += LAG_MAX_MS + 1;
    sim.propose(0);
    let p = sim.proposals.pop().expect("a proposal");
    assert_eq!(p.proposal.isr, [1].into());
    sim.alter_isr(p);
    sim.deliver_all().unwrap();
    sim.settle().unwrap();
    sim.produce(0, 1);
    sim.settle().unwrap();
    assert_eq!(sim.committed.len(), 3);

    // The leader crashes; 2 and 3, live but stale, are not elected.
    sim.crash(0);
    sim.ctrl_down(0).unwrap();
    assert_eq!((sim.ctrl.leader, sim.ctrl.isr.clone()), (None, vec![1]));
    sim.deliver_all().unwrap();
    sim.settle().unwrap();
    let live = |b: BrokerId| b != 1;
    assert_eq!(sim.ctrl.restore_leader(live, false), None);
    let unclean = sim.ctrl.elect(live, true).expect("only when asked for");
    assert!(unclean.possibly_lost);

    // The old leader comes back and leads again, with everything committed.
    sim.restart(0).unwrap();
    assert_eq!((sim.ctrl.leader, sim.ctrl.leader_epoch), (Some(1), 1));
    sim.deliver_all().unwrap();
    sim.settle().unwrap();
    sim.heal().unwrap();
    assert!(sim.nodes.iter().all(|n| n.log.len() == 3));
}

/// A late answer to an older fetch is dropped even when the follower's log has been truncated
/// and grown back to the end that answer was for (found by the property test).
#[test]
fn a_late_answer_is_dropped_after_the_log_regrew_to_its_offset() {
    let mut sim = Sim::new(3, 1);
    sim.produce(0, 3);
    // 3 copies all three entries, 2 only the first.
    sim.fetch(2, 3);
    sim.answer(2, 0).unwrap();
    sim.fetch(1, 1);
    sim.answer(1, 0).unwrap();
    // 1 crashes: 2 leads epoch 1 and writes two entries where 3 has 1's uncommitted ones.
    sim.crash(0);
    sim.ctrl_down(0).unwrap();
    assert_eq!(sim.ctrl.leader, Some(2));
    sim.deliver_all().unwrap();
    sim.produce(1, 2);
    // 3 fetches twice (both answers: diverging at 1), applies the second, catches up.
    sim.fetch(2, 8);
    sim.fetch(2, 8);
    sim.answer(2, 1).unwrap();
    assert_eq!(sim.nodes[2].log.len(), 1);
    sim.fetch(2, 8);
    sim.answer(2, 1).unwrap();
    sim.fetch(2, 8);
    sim.answer(2, 1).unwrap();
    assert_eq!(sim.nodes[2].log.len(), 3);
    sim.settle().unwrap();
    assert_eq!(sim.committed.len(), 3, "2's HW covers 3's end");
    // The first answer (diverging, for offset 3) arrives now: dropped.
    assert_eq!(sim.nodes[2].answers.len(), 1);
    sim.answer(2, 0).unwrap();
    assert_eq!(sim.nodes[2].log.len(), 3);
    sim.settle().unwrap();
}

/// The chaos run that found it: a follower's broker dies, the controller drops it from the ISR,
/// a long poll of its dead process is served once more (so the leader counts it caught up
/// again), and the broker comes back on a replaced, empty disk. The leader's proposal to add it
/// names the dead process: refused, so it never joins the ISR (nor can it be elected) empty.
#[test]
fn a_follower_back_on_an_empty_disk_does_not_join_the_isr_on_its_dead_process_fetch() {
    let mut sim = Sim::new(3, 1);
    sim.produce(0, 3);
    for i in [1, 2] {
        sim.fetch(i, 3);
        sim.answer(i, 0).unwrap();
        sim.fetch(i, 3); // tells the leader it holds all 3
    }
    sim.settle().unwrap();
    assert_eq!(sim.committed.len(), 3);
    sim.crash(2);
    sim.ctrl_down(2).unwrap();
    assert_eq!(sim.ctrl.isr, vec![1, 2]);
    sim.deliver_all().unwrap();
    sim.replay(2, 0);
    sim.lose(2, 0);
    sim.restart(2).unwrap();
    sim.deliver_all().unwrap();
    sim.propose(0);
    let p = sim.proposals.pop().expect("the leader proposes 3 back");
    assert_eq!(p.proposal.isr, [1, 2, 3].into());
    sim.alter_isr(p);
    assert_eq!(
        sim.ctrl.isr,
        vec![1, 2],
        "refused: 3 runs another process now"
    );
    sim.deliver_all().unwrap();
    sim.settle().unwrap();
    sim.heal().unwrap();
    assert!(sim.nodes.iter().all(|n| n.log.len() == 3));
}
