//! Matching a consumer's lines to the producers' records when message texts repeat: a
//! depth-first search with memoized dead ends and a step budget, and the one-producer pass.

use std::collections::{BTreeMap, HashMap, HashSet};

use shardq_protocol::ShardId;

use super::check::{get, Counts};
use super::order::Verdict;
use super::records::{Item, Kind, Received, Texts, Topic};

/// Positions the one-producer pass keeps at once before it gives up (undecided).
const MAX_FRONTIER: usize = 1 << 18;

/// One covered partition as the search sees it.
struct ShardView {
    partition: u32,
    /// Received lines: (text, line number in consumer_N.txt).
    recv: Vec<(u32, usize)>,
    /// Ordered chains of item ids: the ack-logged records by offset, then one per producer
    /// without an ack log (its `Fixed` records here and all its `Star` records, in file order).
    chains: Vec<Vec<u32>>,
    /// Per chain and cursor: the first record at or after the cursor that cannot be skipped.
    next_req: Vec<Vec<u32>>,
    /// Per chain: (text, position) of its records, sorted.
    occ: Vec<Vec<(u32, u32)>>,
    /// Per chain: the producer without an ack log it is; `None` for the ack-logged records.
    producer: Vec<Option<u32>>,
    /// Per text: `Failed` records sent to this partition.
    failed: HashMap<u32, Vec<u32>>,
    /// Texts of which a line here may stay unmatched.
    surplus: HashSet<u32>,
}

pub(super) struct Search<'a> {
    consumer: u32,
    topic: &'a str,
    items: &'a [Item],
    texts: &'a Texts,
    shards: Vec<ShardView>,
    /// Per text: `Failed` records sent to `T:*`.
    failed_star: HashMap<u32, Vec<u32>>,
    /// `Star` records that must be matched somewhere (whole-topic consumers).
    required: Vec<bool>,
    required_total: usize,
}

#[derive(Clone, Copy)]
enum Opt {
    Match { chain: u32, at: u32 },
    Failed(u32),
    Drop,
    NextShard,
}

enum Undo {
    Match { chain: u32, prev: u32, item: u32 },
    Failed(u32),
    Drop,
    NextShard(Vec<u32>),
}

/// A search state: partition index, line, chain cursors, and a hash of the once-only records used.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    shard: u32,
    pos: u32,
    cursors: Vec<u32>,
    used: u128,
}

struct State {
    shard: usize,
    pos: usize,
    cursors: Vec<u32>,
    used: Vec<bool>,
    used_hash: u128,
    required_used: usize,
}

struct Frame {
    opts: Vec<Opt>,
    next: usize,
    key: Option<Key>,
    undo: Option<Undo>,
}

/// 128 pseudo-random bits per record (splitmix64), XORed into the state's hash when it is used.
fn zobrist(item: u32) -> u128 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let i = u64::from(item);
    (u128::from(mix(2 * i)) << 64) | u128::from(mix(2 * i + 1))
}

impl<'a> Search<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        consumer: u32,
        topic: &'a str,
        t: &'a Topic,
        scope: &[u32],
        whole: bool,
        n: &Counts,
        got: &Received,
        texts: &'a Texts,
        starts: Option<&[u64]>,
    ) -> Self {
        let items = &t.items[..];
        let mut failed_star: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut required = vec![false; items.len()];
        let mut required_total = 0;
        for (i, item) in items.iter().enumerate() {
            match (item.kind, item.partition) {
                (Kind::Failed, None) => failed_star.entry(item.text).or_default().push(i as u32),
                // A `*` record is required unless fewer of its text arrived than were sent.
                (Kind::Star, _)
                    if whole && get(&n.extra_req, item.text) >= get(&n.star, item.text) =>
                {
                    required[i] = true;
                    required_total += 1;
                }
                _ => {}
            }
        }
        let mut shards = Vec::new();
        for (k, &p) in scope.iter().enumerate() {
            let mut recv = got
                .get(&ShardId::new(topic, p))
                .cloned()
                .unwrap_or_default();
            let mut fixed: Vec<u32> = (0..items.len() as u32)
                .filter(|&i| {
                    let it = &items[i as usize];
                    it.kind == Kind::Fixed && it.partition == Some(p) && it.offset.is_some()
                })
                .collect();
            fixed.sort_by_key(|&i| items[i as usize].offset);
            // Read from a start offset, the ack-logged records are matched already: only the
            // other lines are left.
            if let Some(starts) = starts {
                let taken: HashSet<u64> = fixed
                    .iter()
                    .filter_map(|&i| items[i as usize].offset)
                    .map(|o| o - starts[k])
                    .collect();
                let mut line = 0u64;
                recv.retain(|_| {
                    line += 1;
                    !taken.contains(&(line - 1))
                });
                fixed.clear();
            }
            let mut chains = vec![fixed];
            let mut producer = vec![None];
            let mut per_producer: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
            let mut failed: HashMap<u32, Vec<u32>> = HashMap::new();
            for (i, it) in items.iter().enumerate() {
                let i = i as u32;
                match it.kind {
                    Kind::Fixed if it.partition == Some(p) && it.offset.is_none() => {
                        per_producer.entry(it.producer).or_default().push(i);
                    }
                    Kind::Star => per_producer.entry(it.producer).or_default().push(i),
                    Kind::Failed if it.partition == Some(p) => {
                        failed.entry(it.text).or_default().push(i);
                    }
                    _ => {}
                }
            }
            for (q, chain) in per_producer {
                chains.push(chain);
                producer.push(Some(q));
            }
            if chains[0].is_empty() {
                chains.remove(0);
                producer.remove(0);
            }
            let skippable = |i: u32| {
                let it = &items[i as usize];
                it.kind == Kind::Star || n.deficit(p, it.text)
            };
            let next_req = chains
                .iter()
                .map(|chain| {
                    let mut v = vec![chain.len() as u32; chain.len() + 1];
                    for j in (0..chain.len()).rev() {
                        v[j] = if skippable(chain[j]) {
                            v[j + 1]
                        } else {
                            j as u32
                        };
                    }
                    v
                })
                .collect();
            let occ = chains
                .iter()
                .map(|chain| {
                    let mut at: Vec<(u32, u32)> = chain
                        .iter()
                        .enumerate()
                        .map(|(j, &i)| (items[i as usize].text, j as u32))
                        .collect();
                    at.sort_unstable();
                    at
                })
                .collect();
            let surplus = recv
                .iter()
                .map(|&(t, _)| t)
                .filter(|&t| n.surplus(p, t))
                .collect();
            shards.push(ShardView {
                partition: p,
                recv,
                chains,
                next_req,
                occ,
                producer,
                failed,
                surplus,
            });
        }
        Search {
            consumer,
            topic,
            items,
            texts,
            shards,
            failed_star,
            required,
            required_total,
        }
    }

    fn shard_done(&self, st: &State) -> bool {
        let sh = &self.shards[st.shard];
        sh.chains
            .iter()
            .zip(&sh.next_req)
            .zip(&st.cursors)
            .all(|((chain, next), &c)| next[c as usize] as usize == chain.len())
    }

    /// What the line at `st.pos` may be, most likely first.
    fn options(&self, st: &State) -> Vec<Opt> {
        let sh = &self.shards[st.shard];
        let t = sh.recv[st.pos].0;
        let mut fixed = Vec::new();
        let mut star = Vec::new();
        for (chain, at) in sh.occ.iter().enumerate() {
            let c = st.cursors[chain];
            let limit = sh.next_req[chain][c as usize];
            let from = at.partition_point(|&k| k < (t, c));
            for &(_, j) in at[from..]
                .iter()
                .take_while(|&&(tx, j)| tx == t && j <= limit)
            {
                let i = sh.chains[chain][j as usize];
                let opt = Opt::Match {
                    chain: chain as u32,
                    at: j,
                };
                if self.items[i as usize].kind == Kind::Fixed {
                    fixed.push(opt);
                } else if !st.used[i as usize] {
                    star.push(opt);
                }
            }
        }
        fixed.append(&mut star);
        // Failed records of one text are interchangeable; one only this partition can take
        // leaves more choice than one any partition could.
        let unused = |list: Option<&Vec<u32>>| {
            list.into_iter()
                .flatten()
                .copied()
                .find(|&i| !st.used[i as usize])
        };
        if let Some(i) = unused(sh.failed.get(&t)).or_else(|| unused(self.failed_star.get(&t))) {
            fixed.push(Opt::Failed(i));
        }
        if sh.surplus.contains(&t) {
            fixed.push(Opt::Drop);
        }
        fixed
    }

    fn use_item(&self, st: &mut State, i: u32) {
        st.used[i as usize] = !st.used[i as usize];
        st.used_hash ^= zobrist(i);
        if self.required[i as usize] {
            if st.used[i as usize] {
                st.required_used += 1;
            } else {
                st.required_used -= 1;
            }
        }
    }

    fn apply(&self, st: &mut State, opt: Opt) -> Undo {
        match opt {
            Opt::Match { chain, at } => {
                st.pos += 1;
                let prev = std::mem::replace(&mut st.cursors[chain as usize], at + 1);
                let item = self.shards[st.shard].chains[chain as usize][at as usize];
                if self.items[item as usize].kind == Kind::Star {
                    self.use_item(st, item);
                }
                Undo::Match { chain, prev, item }
            }
            Opt::Failed(i) => {
                st.pos += 1;
                self.use_item(st, i);
                Undo::Failed(i)
            }
            Opt::Drop => {
                st.pos += 1;
                Undo::Drop
            }
            Opt::NextShard => {
                st.shard += 1;
                st.pos = 0;
                let fresh = vec![0; self.shards[st.shard].chains.len()];
                Undo::NextShard(std::mem::replace(&mut st.cursors, fresh))
            }
        }
    }

    fn undo(&self, st: &mut State, undo: Undo) {
        match undo {
            Undo::Match { chain, prev, item } => {
                st.pos -= 1;
                st.cursors[chain as usize] = prev;
                if self.items[item as usize].kind == Kind::Star {
                    self.use_item(st, item);
                }
            }
            Undo::Failed(i) => {
                st.pos -= 1;
                self.use_item(st, i);
            }
            Undo::Drop => st.pos -= 1,
            Undo::NextShard(cursors) => {
                st.shard -= 1;
                st.pos = self.shards[st.shard].recv.len();
                st.cursors = cursors;
            }
        }
    }

    /// Decides the order: by [`Self::one_producer`] when it applies, else by the search.
    pub(super) fn solve(&self, budget: usize) -> Verdict {
        self.one_producer(budget)
            .unwrap_or_else(|| self.run(budget))
    }

    /// When every chain left is one producer's (no ack log) and a line can be nothing else (no
    /// failed record, no surplus), the lines of all shards together must be that producer's
    /// records dealt out in order: walks its records once, keeping the set of reachable
    /// positions (one per shard) after each. A `*` record goes to any shard whose next line has
    /// its text (or nowhere when not required), a record sent to a partition to that shard. The
    /// set stays small, and no `*` record is ever used twice, so no search over which shard took
    /// which is needed. `None` when it does not apply.
    fn one_producer(&self, budget: usize) -> Option<Verdict> {
        let mut who = None;
        for sh in &self.shards {
            if !sh.failed.is_empty() || !sh.surplus.is_empty() {
                return None;
            }
            if sh
                .recv
                .iter()
                .any(|(t, _)| self.failed_star.contains_key(t))
            {
                return None;
            }
            for &q in &sh.producer {
                if q.is_none() || who.is_some_and(|w| Some(w) != q) {
                    return None;
                }
                who = q;
            }
        }
        // Per record, in file order: the shards it may go to, and whether it may go nowhere.
        let mut places: BTreeMap<u32, (Vec<usize>, bool)> = BTreeMap::new();
        for (k, sh) in self.shards.iter().enumerate() {
            let Some((chain, next)) = sh.chains.first().zip(sh.next_req.first()) else {
                continue;
            };
            for (j, &i) in chain.iter().enumerate() {
                let skip = if self.items[i as usize].kind == Kind::Star {
                    !self.required[i as usize]
                } else {
                    next[j] as usize != j
                };
                let e = places.entry(i).or_insert((Vec::new(), skip));
                e.0.push(k);
            }
        }
        let lines: usize = self.shards.iter().map(|s| s.recv.len()).sum();
        let budget = budget.saturating_add(4 * lines);
        let next_text = |st: &[u32], k: usize| self.shards[k].recv.get(st[k] as usize).map(|r| r.0);
        let mut frontier: HashSet<Vec<u32>> = HashSet::from([vec![0; self.shards.len()]]);
        let mut steps = 0usize;
        for (&i, (to, skip)) in &places {
            let t = self.items[i as usize].text;
            let mut next = HashSet::new();
            for st in &frontier {
                steps += 1 + to.len();
                if steps > budget || next.len() > MAX_FRONTIER {
                    return Some(Verdict::Undecided(format!(
                        "{}: repeated messages allow too many matchings; gave up after {steps} steps without deciding the order",
                        self.scope_name()
                    )));
                }
                if *skip {
                    next.insert(st.clone());
                }
                for &k in to {
                    if next_text(st, k) == Some(t) {
                        let mut st = st.clone();
                        st[k] += 1;
                        next.insert(st);
                    }
                }
            }
            if next.is_empty() {
                let it = &self.items[i as usize];
                let target = it.partition.map_or_else(
                    || format!("{}:*", self.topic),
                    |p| format!("{}:P{p}", self.topic),
                );
                return Some(Verdict::OutOfOrder(format!(
                    "{}: producer_{}.txt:{} `{}` (sent to {target}) is on no line where it can come next in producer {}'s order; next lines: {}",
                    self.scope_name(),
                    it.producer,
                    it.line,
                    self.texts.show(t),
                    it.producer,
                    self.next_lines(&frontier),
                )));
            }
            frontier = next;
        }
        let done = |st: &Vec<u32>| {
            st.iter()
                .zip(&self.shards)
                .all(|(&c, sh)| c as usize == sh.recv.len())
        };
        if frontier.iter().any(done) {
            return Some(Verdict::Ok);
        }
        Some(Verdict::OutOfOrder(format!(
            "{}: the received records match no order in which the producers sent them; lines left over: {}",
            self.scope_name(),
            self.next_lines(&frontier)
        )))
    }

    fn scope_name(&self) -> String {
        let shards: Vec<String> = self
            .shards
            .iter()
            .map(|s| format!("{}:P{}", self.topic, s.partition))
            .collect();
        shards.join(",")
    }

    /// The next line of each shard in the most advanced of `frontier`'s positions.
    fn next_lines(&self, frontier: &HashSet<Vec<u32>>) -> String {
        let Some(st) = frontier
            .iter()
            .max_by_key(|st| (st.iter().map(|&c| c as usize).sum::<usize>(), st.to_vec()))
        else {
            return "none".to_string();
        };
        let next: Vec<String> = self
            .shards
            .iter()
            .zip(st)
            .filter_map(|(sh, &c)| {
                let &(t, line) = sh.recv.get(c as usize)?;
                Some(format!(
                    "{}:P{} consumer_{}.txt:{line} `{}`",
                    self.topic,
                    sh.partition,
                    self.consumer,
                    self.texts.show(t)
                ))
            })
            .collect();
        if next.is_empty() {
            "none".to_string()
        } else {
            next.join(", ")
        }
    }

    fn run(&self, budget: usize) -> Verdict {
        if self.shards.is_empty() {
            return Verdict::Ok;
        }
        let lines: usize = self.shards.iter().map(|s| s.recv.len()).sum();
        let budget = budget.saturating_add(4 * lines);
        let mut st = State {
            shard: 0,
            pos: 0,
            cursors: vec![0; self.shards[0].chains.len()],
            used: vec![false; self.items.len()],
            used_hash: 0,
            required_used: 0,
        };
        let mut stack: Vec<Frame> = Vec::new();
        let mut dead_ends: HashSet<Key> = HashSet::new();
        let mut steps = 0usize;
        // The furthest point reached, to explain a failure.
        let mut furthest = (0, 0);
        let mut furthest_cursors = st.cursors.clone();
        'search: loop {
            if (st.shard, st.pos) > furthest {
                furthest = (st.shard, st.pos);
                furthest_cursors.clone_from(&st.cursors);
            }
            let opts = if st.pos < self.shards[st.shard].recv.len() {
                self.options(&st)
            } else if !self.shard_done(&st) {
                Vec::new()
            } else if st.shard + 1 < self.shards.len() {
                vec![Opt::NextShard]
            } else if st.required_used == self.required_total {
                return Verdict::Ok;
            } else {
                Vec::new()
            };
            // Only branching states are remembered: the rest lead straight to one.
            let key = (opts.len() > 1).then(|| Key {
                shard: st.shard as u32,
                pos: st.pos as u32,
                cursors: st.cursors.clone(),
                used: st.used_hash,
            });
            if !opts.is_empty() && !key.as_ref().is_some_and(|k| dead_ends.contains(k)) {
                stack.push(Frame {
                    opts,
                    next: 0,
                    key,
                    undo: None,
                });
            }
            // Take the next untried option, backing up as far as needed.
            loop {
                let Some(top) = stack.last_mut() else {
                    return Verdict::OutOfOrder(self.explain(furthest, &furthest_cursors));
                };
                if let Some(undo) = top.undo.take() {
                    self.undo(&mut st, undo);
                }
                if top.next < top.opts.len() {
                    let opt = top.opts[top.next];
                    top.next += 1;
                    steps += 1;
                    if steps > budget {
                        return Verdict::Undecided(format!(
                            "{}: repeated messages allow too many matchings; gave up after {budget} steps without deciding the order",
                            self.scope_name()
                        ));
                    }
                    top.undo = Some(self.apply(&mut st, opt));
                    continue 'search;
                }
                if let Some(key) = stack.pop().and_then(|f| f.key) {
                    dead_ends.insert(key);
                }
            }
        }
    }

    /// Why no matching exists, at the furthest line any attempt reached.
    fn explain(&self, (shard, pos): (usize, usize), cursors: &[u32]) -> String {
        let sh = &self.shards[shard];
        let name = format!("{}:P{}", self.topic, sh.partition);
        let mut next = Vec::new();
        for (chain, &c) in sh.chains.iter().zip(cursors) {
            if let Some(&i) = chain.get(c as usize) {
                let it = &self.items[i as usize];
                next.push(format!(
                    "`{}` (producer_{}.txt:{})",
                    self.texts.show(it.text),
                    it.producer,
                    it.line
                ));
            }
        }
        let next = if next.is_empty() {
            "nothing".to_string()
        } else {
            next.into_iter().take(4).collect::<Vec<_>>().join(" or ")
        };
        match sh.recv.get(pos) {
            Some(&(t, line)) => format!(
                "{name}: consumer_{}.txt:{line} `{}` cannot come next in any producer's order; next expected {next}",
                self.consumer,
                self.texts.show(t)
            ),
            None => format!(
                "{name}: the received records match no order in which the producers sent them; left over at the end: {next}"
            ),
        }
    }
}
