//! The order check of one scope: reading shards at the offsets their ack-logged records fit,
//! explaining readings that fit none, and deciding by the matching search.

use shardq_protocol::ShardId;

use super::check::Counts;
use super::records::{Kind, Received, Texts, Topic};
use super::search::Search;

/// Start offsets tried per shard, and combinations of them per scope.
const MAX_FITS: usize = 4;
const MAX_COMBOS: usize = 16;
/// Comparisons allowed per shard when looking for start offsets.
const ALIGN_WORK: usize = 4_000_000;

/// How a consumer's lines of one shard can be read as a contiguous run of offsets.
struct Fit {
    /// Start offsets `s` at which reading the lines as offsets `s, s+1, …` puts every ack-logged
    /// record on a line of its text.
    starts: Vec<u64>,
    /// `starts` holds every such offset (not cut short by [`MAX_FITS`] or [`ALIGN_WORK`]).
    complete: bool,
    /// When none fits: the start that fits the longest run of records in offset order, and the
    /// index (in `pinned`) of the first record it does not fit; `None` when no start fits even
    /// the first record.
    best: Option<(u64, usize)>,
}

/// The readings of a shard's lines (`recv`) that fit its ack-logged records (`pinned`: offset,
/// text, item, by offset). A consumer reads a shard as a contiguous run of offsets from where it
/// starts, so when no line is missing or repeated its lines fit at that offset.
fn alignments(pinned: &[(u64, u32, u32)], recv: &[(u32, usize)]) -> Fit {
    let mut fit = Fit {
        starts: Vec::new(),
        complete: true,
        best: None,
    };
    let (Some(&(first, t0, _)), Some(&(last, _, _))) = (pinned.first(), pinned.last()) else {
        fit.starts.push(0);
        return fit;
    };
    let n = recv.len() as u64;
    let lowest = (last + 1).saturating_sub(n);
    // Two records at one offset fit no reading; nor do more records than lines.
    if pinned.windows(2).any(|w| w[0].0 >= w[1].0) || n == 0 || lowest > first {
        return fit;
    }
    let mut work = 0usize;
    let mut best_len = 0;
    // `k` is the line the first record falls on.
    for k in 0..=(first - lowest) {
        if recv[k as usize].0 != t0 {
            continue;
        }
        let s = first - k;
        let fits = pinned
            .iter()
            .position(|&(o, t, _)| {
                work += 1;
                recv[(o - s) as usize].0 != t
            })
            .unwrap_or(pinned.len());
        if fits == pinned.len() {
            if fit.starts.len() == MAX_FITS {
                fit.complete = false;
                return fit;
            }
            fit.starts.push(s);
        } else if fits > best_len {
            best_len = fits;
            fit.best = Some((s, fits));
        }
        if work > ALIGN_WORK {
            fit.complete = false;
            return fit;
        }
    }
    fit
}

/// Why no reading of shard `p` from one start offset fits its ack-logged records: fewer lines
/// than the offsets they span (missing), or a record on a line of another text (out of order).
#[allow(clippy::too_many_arguments)]
fn explain_no_fit(
    consumer: u32,
    name: &str,
    p: u32,
    topic: &Topic,
    texts: &Texts,
    pinned: &[(u64, u32, u32)],
    recv: &[(u32, usize)],
    best: Option<(u64, usize)>,
) -> Verdict {
    let pinned_at = |i: u32| {
        let it = &topic.items[i as usize];
        format!("producer_{}.txt:{}", it.producer, it.line)
    };
    let record = |j: usize| {
        let it = &topic.items[pinned[j].2 as usize];
        format!(
            "producer_{}.txt:{} `{}` acknowledged at offset {}",
            it.producer,
            it.line,
            texts.show(it.text),
            pinned[j].0
        )
    };
    let n = recv.len() as u64;
    let (first, last) = (pinned[0].0, pinned[pinned.len() - 1].0);
    if let Some(w) = pinned.windows(2).find(|w| w[0].0 >= w[1].0) {
        let (a, b) = (pinned_at(w[0].2), pinned_at(w[1].2));
        return Verdict::OutOfOrder(format!(
            "{name}:P{p}: the ack logs place {a} and {b} at offset {} alike",
            w[1].0
        ));
    }
    if last - first >= n {
        return Verdict::Missing(format!(
            "{name}:P{p}: the ack logs place records on offsets {first} to {last}, but consumer_{consumer}.txt has only {n} lines of it: reading the shard in offset order, it lost some"
        ));
    }
    let whole = format!(
        "{name}:P{p}: consumer_{consumer}.txt read from no start offset has every record the ack logs place on {name}:P{p} on a line of its text (a line lost, repeated or out of order)"
    );
    Verdict::OutOfOrder(match best {
        Some((s, j)) => {
            let (t, line) = recv[(pinned[j].0 - s) as usize];
            format!(
                "{whole}; read from offset {s}, {j} fit, then {} is consumer_{consumer}.txt:{line} `{}`",
                record(j),
                texts.show(t)
            )
        }
        None => format!(
            "{whole}; read from offset {} to {first} (which keeps offsets {first} to {last} within its {n} lines), {} is on a line of another text",
            (last + 1).saturating_sub(n),
            record(0)
        ),
    })
}

/// Decides one scope's order. The full search is the arbiter, but with ack logs it is tried
/// last: for each reading of the shards at offsets that fit the ack-logged records, those
/// records are matched to their lines and only the remaining lines are searched, against the
/// records of producers without an ack log (and failed ones), which is small. A matching found
/// that way is a matching of the whole, so it passes. If every reading fails (or no reading
/// fits), the counts found nothing wrong (`clean`: no line missing or repeated) and the full
/// search cannot decide, the readings decide: a consumer reads each shard contiguously, so with
/// no line missing or repeated one of them is how it read.
#[allow(clippy::too_many_arguments)]
pub(super) fn check_order(
    id: u32,
    name: &str,
    topic: &Topic,
    scope: &[u32],
    whole: bool,
    n: &Counts,
    got: &Received,
    texts: &Texts,
    budget: usize,
    clean: bool,
) -> Verdict {
    let empty = Vec::new();
    let mut fits: Vec<Vec<u64>> = Vec::new();
    let mut complete = true;
    let mut any_pinned = false;
    // A definite reason the order is wrong, should the full search not decide.
    let mut decided: Option<Verdict> = None;
    for &p in scope {
        let mut pinned: Vec<(u64, u32, u32)> = topic
            .items
            .iter()
            .enumerate()
            .filter(|(_, it)| it.kind == Kind::Fixed && it.partition == Some(p))
            .filter_map(|(i, it)| Some((it.offset?, it.text, i as u32)))
            .collect();
        pinned.sort_unstable();
        any_pinned |= !pinned.is_empty();
        let recv = got.get(&ShardId::new(name, p)).unwrap_or(&empty);
        let fit = alignments(&pinned, recv);
        if fit.starts.is_empty() && fit.complete && decided.is_none() {
            decided = Some(explain_no_fit(
                id, name, p, topic, texts, &pinned, recv, fit.best,
            ));
        }
        complete &= fit.complete;
        fits.push(fit.starts);
    }
    if any_pinned && fits.iter().all(|f| !f.is_empty()) {
        let combos: usize = fits
            .iter()
            .map(Vec::len)
            .fold(1, |a, b| a.saturating_mul(b));
        complete &= combos <= MAX_COMBOS;
        for code in 0..combos.min(MAX_COMBOS) {
            let mut rest = code;
            let starts: Vec<u64> = fits
                .iter()
                .map(|f| {
                    let s = f[rest % f.len()];
                    rest /= f.len();
                    s
                })
                .collect();
            let search = Search::new(id, name, topic, scope, whole, n, got, texts, Some(&starts));
            match search.solve(budget) {
                Verdict::Ok => return Verdict::Ok,
                Verdict::OutOfOrder(m) => {
                    if decided.is_none() {
                        let at: Vec<String> = scope
                            .iter()
                            .zip(&starts)
                            .map(|(p, s)| format!("{name}:P{p} from offset {s}"))
                            .collect();
                        decided = Some(Verdict::OutOfOrder(format!(
                            "{m} (reading {}, where the ack logs put their records)",
                            at.join(", ")
                        )));
                    }
                }
                Verdict::Undecided(_) | Verdict::Missing(_) => complete = false,
            }
        }
    }
    let search = Search::new(id, name, topic, scope, whole, n, got, texts, None);
    match search.solve(budget) {
        Verdict::Undecided(m) => match decided {
            Some(d) if complete && clean => d,
            _ => Verdict::Undecided(m),
        },
        v => v,
    }
}

pub(super) enum Verdict {
    Ok,
    OutOfOrder(String),
    /// Records lost that the counts could not show (copies of their texts may be elsewhere).
    Missing(String),
    Undecided(String),
}
