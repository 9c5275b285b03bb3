//! One consumer's receipts of one topic: per-text counts (missing, duplicate, unexpected), then
//! the order check of each scope of partitions.

use std::collections::{HashMap, HashSet};

use shardq_protocol::ShardId;

use super::order::{check_order, Verdict};
use super::records::{Kind, Received, Texts, Topic};
use super::report::ConsumerReport;

/// Per-text counts of what a consumer may and must receive on one topic.
#[derive(Default)]
pub(super) struct Counts {
    /// Per (covered partition, text): required (`Fixed`) records, optional `Failed` ones,
    /// received lines.
    req: HashMap<(u32, u32), usize>,
    failed: HashMap<(u32, u32), usize>,
    recv: HashMap<(u32, u32), usize>,
    /// Topic-wide: `Star` records and `Failed` records sent to `T:*`.
    pub(super) star: HashMap<u32, usize>,
    failed_star: HashMap<u32, usize>,
    /// Received beyond what the partition itself can hold, summed over the topic.
    extra: HashMap<u32, usize>,
    /// Received beyond the partition's required records, summed over the topic: the most
    /// `Star` records of the text that can have arrived.
    pub(super) extra_req: HashMap<u32, usize>,
}

pub(super) fn get<K: std::hash::Hash + Eq>(m: &HashMap<K, usize>, k: K) -> usize {
    m.get(&k).copied().unwrap_or(0)
}

impl Counts {
    fn pool(&self, t: u32) -> usize {
        get(&self.star, t) + get(&self.failed_star, t)
    }

    /// A required record of this text on partition `p` may be missing.
    pub(super) fn deficit(&self, p: u32, t: u32) -> bool {
        get(&self.recv, (p, t)) < get(&self.req, (p, t))
    }

    /// A line of this text on `p` may be left unmatched (a duplicate or unexpected one).
    pub(super) fn surplus(&self, p: u32, t: u32) -> bool {
        let cap = get(&self.req, (p, t)) + get(&self.failed, (p, t));
        (cap == 0 && self.pool(t) == 0) || get(&self.extra, t) > self.pool(t)
    }
}

/// Checks one consumer's receipts of one topic on its covered partitions: counts first, then the
/// order (jointly over the partitions when `*` records tie them together).
#[allow(clippy::too_many_arguments)]
pub(super) fn check_topic(
    id: u32,
    name: &str,
    topic: &Topic,
    covered: &[u32],
    whole: bool,
    got: &Received,
    texts: &Texts,
    budget: usize,
    c: &mut ConsumerReport,
) {
    let before = (c.missing.len(), c.duplicates.len(), c.unexpected.len());
    let mut n = Counts::default();
    let is_covered: HashSet<u32> = covered.iter().copied().collect();
    for item in &topic.items {
        match (item.kind, item.partition) {
            (Kind::Star, _) => *n.star.entry(item.text).or_default() += 1,
            (Kind::Failed, None) => *n.failed_star.entry(item.text).or_default() += 1,
            (Kind::Fixed, Some(p)) if is_covered.contains(&p) => {
                *n.req.entry((p, item.text)).or_default() += 1;
            }
            (Kind::Failed, Some(p)) if is_covered.contains(&p) => {
                *n.failed.entry((p, item.text)).or_default() += 1;
            }
            _ => {}
        }
    }
    let empty = Vec::new();
    let lines = |p: u32| got.get(&ShardId::new(name, p)).unwrap_or(&empty);
    for &p in covered {
        for &(t, _) in lines(p) {
            *n.recv.entry((p, t)).or_default() += 1;
        }
    }
    c.expected += n.req.values().sum::<usize>();
    if whole {
        c.expected += n.star.values().sum::<usize>();
    }
    // Reports follow the files' order: each (partition, text) once, where first seen.
    let mut seen: HashSet<(u32, u32)> = HashSet::new();
    for item in &topic.items {
        let (Kind::Fixed, Some(p)) = (item.kind, item.partition) else {
            continue;
        };
        let (want, r) = (get(&n.req, (p, item.text)), get(&n.recv, (p, item.text)));
        if want > r && seen.insert((p, item.text)) {
            c.missing.push(format!(
                "{name}:P{p} {} (x{})",
                texts.show(item.text),
                want - r
            ));
        }
    }
    // Surplus per partition; what a partition cannot hold goes to the topic's pool.
    let mut over: Vec<(u32, u32, usize)> = Vec::new();
    seen.clear();
    for &p in covered {
        for &(t, _) in lines(p) {
            if !seen.insert((p, t)) {
                continue;
            }
            let (r, req) = (get(&n.recv, (p, t)), get(&n.req, (p, t)));
            if r > req {
                *n.extra_req.entry(t).or_default() += r - req;
            }
            let cap = req + get(&n.failed, (p, t));
            if r <= cap {
                continue;
            }
            if cap == 0 && n.pool(t) == 0 {
                c.unexpected.push(format!(
                    "{name}:P{p} {} (x{r}): no producer sent it there",
                    texts.show(t)
                ));
            } else {
                *n.extra.entry(t).or_default() += r - cap;
                over.push((t, p, r - cap));
            }
        }
    }
    let mut reported = HashSet::new();
    for &(t, p, k) in &over {
        let (e, pool) = (get(&n.extra, t), n.pool(t));
        if e <= pool {
            continue;
        }
        if pool == 0 {
            c.duplicates
                .push(format!("{name}:P{p} {} (x{k})", texts.show(t)));
        } else if reported.insert(t) {
            c.duplicates
                .push(format!("{name} {} (x{})", texts.show(t), e - pool));
        }
    }
    if whole {
        for item in &topic.items {
            let t = item.text;
            let (k, e) = (get(&n.star, t), get(&n.extra_req, t));
            if item.kind == Kind::Star && e < k && reported.insert(t) {
                c.missing.push(format!(
                    "{name} {} (x{}, sent to {name}:*)",
                    texts.show(t),
                    k - e
                ));
            }
        }
    }

    // Order.
    let scopes: Vec<Vec<u32>> = if topic.has_star() {
        vec![covered.to_vec()]
    } else {
        covered.iter().map(|&p| vec![p]).collect()
    };
    let clean = (c.missing.len(), c.duplicates.len(), c.unexpected.len()) == before;
    for scope in scopes {
        match check_order(
            id, name, topic, &scope, whole, &n, got, texts, budget, clean,
        ) {
            Verdict::Ok => {}
            Verdict::OutOfOrder(m) => c.out_of_order.push(m),
            Verdict::Missing(m) => c.missing.push(m),
            Verdict::Undecided(m) => c.undecided.push(m),
        }
    }
}
