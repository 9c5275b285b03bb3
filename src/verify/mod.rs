//! The verifier: from the producers' input files (and their ack logs, when present) and the
//! consumers' output files alone, checks that every consumer received every record produced into
//! the shards it subscribed to, exactly once, and in each shard in the order each producer sent it.
//! Works for any number of producers, consumers, topics and partitions.
//!
//! Message texts are not unique in general (several producers, or one producer several times, may
//! send the same text), so a received line cannot always be attributed to one record. The check is
//! therefore a matching: per shard, the consumer's sequence must decompose into each producer's
//! records for that shard as an in-order subsequence (each exactly once) plus nothing else.
//!
//! - A record an ack log places at (shard, offset) is *fixed*: all such records of a shard form one
//!   chain in offset order, whatever producer sent them.
//! - A record sent to `T:Pn` by a producer without an ack log belongs to that producer's chain of
//!   the shard, in file order.
//! - A record sent to `T:*` without an ack log (*unresolved*) is in its producer's chain on every
//!   partition of the topic, may be skipped on any one of them, and must be received exactly once
//!   over the topic when the consumer reads the whole topic (at most once when it reads only some
//!   partitions: it cannot know whether the record should have reached it).
//! - Unless the consumers' receipts place it: when a whole-topic consumer received the `*`
//!   copies of a text (beyond those sent to each partition) all on one partition, or any
//!   consumer received a text sent once on one partition, and no receipt disagrees, the records
//!   are treated as sent to that partition, so every consumer of it must have them.
//! - A record its producer's ack log leaves out failed to produce: not required, allowed at most
//!   once, in no particular order.
//!
//! The matching is a depth-first search over (line, chain cursors, which once-only records are
//! used) with memoized dead ends. With unique texts every line has one candidate and the search is
//! a single linear pass; only repeated texts branch, and a step budget turns a search that grows
//! too large into an "undecided" verdict instead of a wrong one. Counts (missing, duplicate,
//! unexpected) are derived first; the order search then tolerates exactly those texts' surplus and
//! deficit, so a missing copy is reported as missing and not also as out of order.
//!
//! Two shortcuts keep heavily repeated texts decidable:
//! - A consumer reads a shard as a contiguous run of offsets, so its k-th line of the shard is
//!   offset s+k for the offset s it started at. Where the ack-logged records fit such a reading,
//!   they are matched to their lines outright and only the remaining lines are searched, against
//!   the producers without an ack log. Success is a matching of the whole; if no reading works
//!   and the full search cannot decide, the readings decide (only when the counts found nothing).
//! - When the chains left are one producer's, its records are dealt out over the shards in file
//!   order, keeping the set of reachable positions: no search over which shard took which `*`.

mod acks;
mod check;
mod input;
mod order;
mod place;
mod records;
mod report;
mod search;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Result};
use shardq_protocol::{ShardId, ShardSpec};

use acks::parse_ack_log;
use check::check_topic;
use input::{discover_producers, parse_producer_file, read, split_shard};
use place::place_stars;
use records::{coverage, Item, Kind, Received, Texts, Topic};

pub use input::parse_consumer;
pub use report::{show, ConsumerReport, VerifyReport};

/// What to check: the log directory, which producers wrote, and what each consumer subscribed to.
#[derive(Clone, Debug)]
pub struct VerifySpec {
    pub dir: PathBuf,
    /// Producer ids; empty = every `producer_N.txt` in `dir`.
    pub producers: Vec<u32>,
    /// Consumer id and its subscriptions (as given to `runconsume --topics`).
    pub consumers: Vec<(u32, Vec<ShardSpec>)>,
}

/// Search steps allowed per checked scope on top of a few per received line.
const SEARCH_BUDGET: usize = 2_000_000;

pub fn verify(spec: &VerifySpec) -> Result<VerifyReport> {
    verify_with_budget(spec, SEARCH_BUDGET)
}

fn verify_with_budget(spec: &VerifySpec, budget: usize) -> Result<VerifyReport> {
    let producers = if spec.producers.is_empty() {
        discover_producers(&spec.dir)?
    } else {
        spec.producers.clone()
    };
    if producers.is_empty() {
        bail!("no producer_N.txt files in {}", spec.dir.display());
    }
    if let Some((id, _)) = spec.consumers.iter().find(|(_, subs)| subs.is_empty()) {
        bail!("consumer {id} subscribes to no shard: nothing to verify for it");
    }
    let mut texts = Texts::default();
    let mut topics: BTreeMap<String, Topic> = BTreeMap::new();
    let mut report = VerifyReport::default();
    // Acknowledged offsets that go backwards in a producer's file order, per shard.
    let mut ack_disorder: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
    for &p in &producers {
        let file = format!("producer_{p}.txt");
        let sent = parse_producer_file(&spec.dir.join(&file))?;
        let ack_path = spec.dir.join(format!("producer_{p}.acked"));
        let acks = if ack_path.exists() {
            Some(parse_ack_log(&ack_path)?)
        } else {
            None
        };
        // The ack log lists the acknowledged records in send (= file) order: align it with the
        // file; a record it skips was not acknowledged.
        let mut next_ack = 0;
        let mut last_offset: HashMap<ShardId, (u64, usize)> = HashMap::new();
        for s in sent {
            report.produced += 1;
            let text = texts.id(&s.msg);
            let topic = topics.entry(s.topic.clone()).or_default();
            let mut item = Item {
                producer: p,
                line: s.line,
                text,
                kind: if s.partition.is_some() {
                    Kind::Fixed
                } else {
                    Kind::Star
                },
                partition: s.partition,
                offset: None,
            };
            if let Some(acks) = &acks {
                match acks.get(next_ack) {
                    Some(a)
                        if a.msg == s.msg
                            && a.shard.topic == s.topic
                            && s.partition.is_none_or(|n| n == a.shard.partition) =>
                    {
                        next_ack += 1;
                        item.kind = Kind::Fixed;
                        item.partition = Some(a.shard.partition);
                        item.offset = Some(a.offset);
                        if let Some(&(prev, prev_line)) = last_offset.get(&a.shard) {
                            if a.offset <= prev {
                                ack_disorder.entry(a.shard.clone()).or_default().push(format!(
                                    "{}: producer {p}'s {file}:{} `{}` was acknowledged at offset {}, not after {file}:{prev_line} at offset {prev}",
                                    a.shard, s.line, show(&s.msg), a.offset
                                ));
                            }
                        }
                        last_offset.insert(a.shard.clone(), (a.offset, s.line));
                    }
                    _ => {
                        item.kind = Kind::Failed;
                        report.failed += 1;
                    }
                }
                topic.acked.insert(p);
            }
            if item.kind == Kind::Star {
                report.unresolved += 1;
            }
            if let Some(n) = item.partition {
                topic.partitions.insert(n);
            }
            topic.items.push(item);
        }
        if let Some(a) = acks.as_ref().and_then(|acks| acks.get(next_ack)) {
            bail!(
                "producer_{p}.acked:{}: `{}` acknowledged on {} matches no later record of {file} \
                 (the ack log lists the file's acknowledged records in order)",
                a.line,
                show(&a.msg),
                a.shard
            );
        }
    }

    // Every consumer's lines first: a partition only a consumer saw still counts for all.
    let mut received: Vec<(u32, Received, ConsumerReport)> = Vec::new();
    for (id, _) in &spec.consumers {
        let text = read(&spec.dir.join(format!("consumer_{id}.txt")))?;
        let mut got = Received::new();
        let mut c = ConsumerReport {
            id: *id,
            ..Default::default()
        };
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((shard, msg)) = split_shard(line) else {
                c.unexpected.push(format!(
                    "consumer_{id}.txt:{}: unreadable line {:?}",
                    i + 1,
                    show(line)
                ));
                continue;
            };
            c.received += 1;
            topics
                .entry(shard.topic.clone())
                .or_default()
                .partitions
                .insert(shard.partition);
            got.entry(shard)
                .or_default()
                .push((texts.id(msg.trim()), i + 1));
        }
        received.push((*id, got, c));
    }
    report.placed = place_stars(&mut topics, &received, &spec.consumers, texts.list.len());

    for ((id, got, mut c), (_, subs)) in received.into_iter().zip(&spec.consumers) {
        for (shard, lines) in &got {
            if !subs.iter().any(|s| s.covers(shard)) {
                c.unexpected.push(format!(
                    "{} records from {shard}, which consumer {id} did not subscribe to",
                    lines.len()
                ));
            }
        }
        for (name, topic) in &topics {
            let (covered, whole) = coverage(name, topic, subs);
            if covered.is_empty() {
                continue;
            }
            for &p in &covered {
                if let Some(list) = ack_disorder.get(&ShardId::new(name, p)) {
                    c.out_of_order.extend(list.iter().cloned());
                }
            }
            check_topic(
                id, name, topic, &covered, whole, &got, &texts, budget, &mut c,
            );
        }
        report.consumers.push(c);
    }
    Ok(report)
}
