//! Placing `*` records sent without an ack log on the partition the consumers' receipts show
//! they landed on, where that is unambiguous.

use std::collections::BTreeMap;

use shardq_protocol::{ShardId, ShardSpec};

use super::records::{coverage, Kind, Received, Topic};
use super::report::ConsumerReport;

/// Places `*` records without an ack log on the partition the receipts show they landed on,
/// where that is unambiguous, so that every consumer of that partition must have them (not only
/// the ones reading the whole topic). Returns how many were placed.
///
/// For a text with `*` records and no record that failed to produce: a consumer reading the
/// whole topic that received, beyond the text's records sent to each partition, exactly as many
/// copies as there are such `*` records, all on one partition `p`, shows that they all landed on
/// `p`. So does any consumer that received a text sent exactly once in the topic (a `*` record)
/// on exactly one covered partition, once. A text is placed when some consumer shows `p` and no
/// consumer received a surplus of it on another partition (receipts that disagree leave it
/// unplaced: checked per topic as before).
pub(super) fn place_stars(
    topics: &mut BTreeMap<String, Topic>,
    received: &[(u32, Received, ConsumerReport)],
    consumers: &[(u32, Vec<ShardSpec>)],
    ntexts: usize,
) -> usize {
    /// Sorted (text, partition) pairs as runs: (text, partition, how many).
    fn runs(mut v: Vec<(u32, u32)>) -> Vec<(u32, u32, usize)> {
        v.sort_unstable();
        let mut out: Vec<(u32, u32, usize)> = Vec::new();
        for (t, p) in v {
            match out.last_mut() {
                Some(last) if (last.0, last.1) == (t, p) => last.2 += 1,
                _ => out.push((t, p, 1)),
            }
        }
        out
    }
    let mut placed = 0;
    for (name, topic) in topics.iter_mut() {
        // Per text: `*` records, all records, whether one failed to produce.
        let (mut star, mut total) = (vec![0usize; ntexts], vec![0usize; ntexts]);
        let mut failed = vec![false; ntexts];
        for item in &topic.items {
            let t = item.text as usize;
            total[t] += 1;
            match item.kind {
                Kind::Star => star[t] += 1,
                Kind::Failed => failed[t] = true,
                Kind::Fixed => {}
            }
        }
        let candidate = |t: u32| star[t as usize] > 0 && !failed[t as usize];
        if !(0..ntexts as u32).any(candidate) {
            continue;
        }
        // Records of those texts sent to each partition.
        let fixed = runs(
            topic
                .items
                .iter()
                .filter(|it| it.kind == Kind::Fixed && candidate(it.text))
                .filter_map(|it| Some((it.text, it.partition?)))
                .collect(),
        );
        // (text, partition) some consumer shows, and with a surplus anywhere.
        let (mut shown, mut surplus) = (Vec::new(), Vec::new());
        for ((_, got, _), (_, subs)) in received.iter().zip(consumers) {
            let (covered, whole) = coverage(name, topic, subs);
            let mut recv = Vec::new();
            for &p in &covered {
                for &(t, _) in got.get(&ShardId::new(name, p)).into_iter().flatten() {
                    if candidate(t) {
                        recv.push((t, p));
                    }
                }
            }
            let recv = runs(recv);
            // Merge with `fixed` by (text, partition), a text at a time: its surpluses, and
            // whether it falls short somewhere (only known for the whole topic).
            let (mut i, mut j) = (0, 0);
            while i < recv.len() || (whole && j < fixed.len()) {
                let t = match (recv.get(i), fixed.get(j)) {
                    (Some(r), Some(f)) => r.0.min(f.0),
                    (Some(r), None) => r.0,
                    (None, Some(f)) => f.0,
                    (None, None) => break,
                };
                let (mut extra, mut short) = (Vec::new(), false);
                loop {
                    let r = recv.get(i).filter(|r| r.0 == t);
                    let f = fixed.get(j).filter(|f| f.0 == t);
                    let (p, got, sent) = match (r, f) {
                        (None, None) => break,
                        (Some(r), Some(f)) if r.1 == f.1 => {
                            i += 1;
                            j += 1;
                            (r.1, r.2, f.2)
                        }
                        (Some(r), Some(f)) if r.1 < f.1 => {
                            i += 1;
                            (r.1, r.2, 0)
                        }
                        (Some(r), None) => {
                            i += 1;
                            (r.1, r.2, 0)
                        }
                        (_, Some(f)) => {
                            j += 1;
                            let covers = covered.binary_search(&f.1).is_ok();
                            (f.1, 0, if covers { f.2 } else { 0 })
                        }
                    };
                    if got > sent {
                        extra.push((p, got - sent));
                        surplus.push((t, p));
                    }
                    short |= got < sent;
                }
                let [(p, k)] = extra[..] else { continue };
                let shows = if whole {
                    k == star[t as usize] && !short
                } else {
                    k == 1 && total[t as usize] == 1
                };
                if shows {
                    shown.push((t, p));
                }
            }
        }
        for v in [&mut shown, &mut surplus] {
            v.sort_unstable();
            v.dedup();
        }
        let only = |v: &[(u32, u32)], t: u32| -> Option<u32> {
            let from = v.partition_point(|&(x, _)| x < t);
            match v[from..] {
                [(x, p), ..] if x == t && v.get(from + 1).is_none_or(|n| n.0 != t) => Some(p),
                _ => None,
            }
        };
        for item in &mut topic.items {
            if item.kind != Kind::Star {
                continue;
            }
            // Shown on one partition, and no surplus of the text on any other.
            if let Some(p) = only(&shown, item.text) {
                if only(&surplus, item.text) == Some(p) {
                    item.kind = Kind::Fixed;
                    item.partition = Some(p);
                    placed += 1;
                }
            }
        }
    }
    placed
}
