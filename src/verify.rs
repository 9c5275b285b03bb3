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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use shardq_protocol::{parse_partition, validate_topic, ShardId, ShardSpec};

/// What to check: the log directory, which producers wrote, and what each consumer subscribed to.
#[derive(Clone, Debug)]
pub struct VerifySpec {
    pub dir: PathBuf,
    /// Producer ids; empty = every `producer_N.txt` in `dir`.
    pub producers: Vec<u32>,
    /// Consumer id and its subscriptions (as given to `runconsume --topics`).
    pub consumers: Vec<(u32, Vec<ShardSpec>)>,
}

/// One consumer's findings.
#[derive(Clone, Debug, Default)]
pub struct ConsumerReport {
    pub id: u32,
    pub expected: usize,
    pub received: usize,
    pub missing: Vec<String>,
    pub duplicates: Vec<String>,
    pub unexpected: Vec<String>,
    pub out_of_order: Vec<String>,
    /// Shards whose order could not be decided within the search budget (repeated texts).
    pub undecided: Vec<String>,
}

impl ConsumerReport {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.duplicates.is_empty()
            && self.unexpected.is_empty()
            && self.out_of_order.is_empty()
            && self.undecided.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub produced: usize,
    /// Records sent to `T:*` whose partition no ack log resolved (checked per topic).
    pub unresolved: usize,
    /// Of those, records the consumers' receipts place on one partition unambiguously (then
    /// required there like any record sent to that partition).
    pub placed: usize,
    /// Records their producer's ack log shows were not acknowledged (optional, at most once).
    pub failed: usize,
    pub consumers: Vec<ConsumerReport>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.consumers.iter().all(ConsumerReport::ok)
    }

    /// Human-readable summary ending in PASS or FAIL.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            "produced {} records ({} sent to T:* without an ack log",
            self.produced, self.unresolved
        );
        if self.placed > 0 {
            let _ = write!(s, ", {} of them placed by receipts", self.placed);
        }
        if self.failed > 0 {
            let _ = write!(s, ", {} not acknowledged", self.failed);
        }
        let _ = writeln!(s, ")");
        for c in &self.consumers {
            let _ = write!(
                s,
                "consumer {}: expected {}, received {}, missing {}, duplicates {}, unexpected {}, out of order {}",
                c.id,
                c.expected,
                c.received,
                c.missing.len(),
                c.duplicates.len(),
                c.unexpected.len(),
                c.out_of_order.len()
            );
            if !c.undecided.is_empty() {
                let _ = write!(s, ", undecided {}", c.undecided.len());
            }
            let _ = writeln!(s);
            for (what, list) in [
                ("missing", &c.missing),
                ("duplicate", &c.duplicates),
                ("unexpected", &c.unexpected),
                ("out of order", &c.out_of_order),
                ("undecided", &c.undecided),
            ] {
                for item in list.iter().take(10) {
                    let _ = writeln!(s, "  {what}: {item}");
                }
                if list.len() > 10 {
                    let _ = writeln!(s, "  ... and {} more {what}", list.len() - 10);
                }
            }
        }
        let undecided_only = self.consumers.iter().all(|c| {
            c.missing.is_empty()
                && c.duplicates.is_empty()
                && c.unexpected.is_empty()
                && c.out_of_order.is_empty()
        });
        let verdict = if self.passed() {
            "PASS"
        } else if undecided_only {
            "FAIL (undecided: too many ways to match repeated messages; nothing definitely wrong)"
        } else {
            "FAIL"
        };
        let _ = writeln!(s, "{verdict}");
        s
    }
}

/// Characters of a message shown in a report before it is cut.
const SHOWN_CHARS: usize = 80;

/// A message as reports show it: up to [`SHOWN_CHARS`] characters, then `… (N bytes)`.
pub fn show(msg: &str) -> String {
    match msg.char_indices().nth(SHOWN_CHARS) {
        None => msg.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &msg[..cut], msg.len()),
    }
}

/// Positions the one-producer pass keeps at once before it gives up (undecided).
const MAX_FRONTIER: usize = 1 << 18;

/// Search steps allowed per checked scope on top of a few per received line.
const SEARCH_BUDGET: usize = 2_000_000;

/// A record as the producer's input file names it.
#[derive(Clone, Debug)]
struct Sent {
    line: usize,
    topic: String,
    partition: Option<u32>,
    msg: String,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses `producer_N.txt`: `<time> <message> <partition|*> <topic>` per line.
fn parse_producer_file(path: &Path) -> Result<Vec<Sent>> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut out = Vec::new();
    for (i, line) in read(path)?.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [_, msg, part, topic] = fields[..] else {
            bail!(
                "{name}:{}: expected 4 fields `<time> <message> <partition|*> <topic>`, found {}",
                i + 1,
                fields.len()
            );
        };
        validate_topic(topic).map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?;
        let partition = if part == "*" {
            None
        } else {
            Some(parse_partition(part).map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?)
        };
        out.push(Sent {
            line: i + 1,
            topic: topic.to_string(),
            partition,
            msg: msg.to_string(),
        });
    }
    Ok(out)
}

/// Splits `T1:P1     MSG` (consumer output) or `T1:P1 OFFSET MSG` (ack log) into the shard and rest.
fn split_shard(line: &str) -> Option<(ShardId, &str)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (shard, rest) = line.split_once(char::is_whitespace)?;
    Some((shard.parse().ok()?, rest.trim_start()))
}

/// One line of `producer_N.acked` (`runproduce --ack-log`), one per acknowledged record (a
/// record whose produce failed has no line): `T:P OFFSET RECORD MESSAGE` in ack order under the
/// `# shardq ack log v2` header line, where RECORD is the record's 1-based position in the input;
/// or, in logs without that header, `T:P OFFSET MESSAGE` in send order.
struct Ack {
    line: usize,
    shard: ShardId,
    offset: u64,
    msg: String,
}

/// The ack log's records in send order (a v2 log is sorted by its RECORD field).
fn parse_ack_log(path: &Path) -> Result<Vec<Ack>> {
    let mut out = Vec::new();
    let text = read(path)?;
    let v2 = text.starts_with("# shardq ack log v2");
    let mut numbered = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || (v2 && line.starts_with('#')) {
            continue;
        }
        let bad = || {
            format!(
                "{}:{}: not `T:P OFFSET {}MESSAGE`",
                path.display(),
                i + 1,
                if v2 { "RECORD " } else { "" }
            )
        };
        let (shard, rest) = split_shard(line).with_context(bad)?;
        let (offset, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let (record, msg) = if v2 {
            let (n, msg) = rest
                .trim_start()
                .split_once(char::is_whitespace)
                .unwrap_or((rest.trim_start(), ""));
            (Some(n.parse::<u64>().ok().with_context(bad)?), msg)
        } else {
            (None, rest)
        };
        let ack = Ack {
            line: i + 1,
            shard,
            offset: offset.parse().ok().with_context(bad)?,
            msg: msg.trim().to_string(),
        };
        match record {
            Some(n) => numbered.push((n, ack)),
            None => out.push(ack),
        }
    }
    if v2 {
        numbered.sort_by_key(|(n, _)| *n);
        if let Some(w) = numbered.windows(2).find(|w| w[0].0 == w[1].0) {
            bail!(
                "{}:{}: record {} is acknowledged twice (also on line {})",
                path.display(),
                w[1].1.line,
                w[1].0,
                w[0].1.line
            );
        }
        out = numbered.into_iter().map(|(_, a)| a).collect();
    }
    Ok(out)
}

/// Parses a `--consumer` argument: `ID=T1:P1,T2:*` (commas or spaces between shards).
pub fn parse_consumer(s: &str) -> Result<(u32, Vec<ShardSpec>)> {
    let (id, subs) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--consumer {s:?}: expected ID=T1:P1,T2:*"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--consumer {s:?}: {id:?} is not a consumer id"))?;
    let subs = subs
        .split([',', ' '])
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<ShardSpec>()
                .map_err(|e| anyhow::anyhow!("--consumer {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if subs.is_empty() {
        bail!("--consumer {s:?}: consumer {id} subscribes to no shard (expected ID=T1:P1,T2:*)");
    }
    Ok((id, subs))
}

fn discover_producers(dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_prefix("producer_")
            .and_then(|r| r.strip_suffix(".txt"))
            .and_then(|n| n.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A consumer's lines per shard: (text, line number in consumer_N.txt), in the order consumed.
type Received = BTreeMap<ShardId, Vec<(u32, usize)>>;

/// Message texts, interned: records and received lines compare by id.
#[derive(Default)]
struct Texts {
    ids: HashMap<String, u32>,
    list: Vec<String>,
}

impl Texts {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.list.len() as u32;
        self.ids.insert(s.to_string(), id);
        self.list.push(s.to_string());
        id
    }

    fn show(&self, id: u32) -> String {
        show(&self.list[id as usize])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Required on its shard (an explicit partition, or a `*` an ack log resolved).
    Fixed,
    /// Sent to `T:*` without an ack log: on one partition of the topic, nobody knows which.
    Star,
    /// Left out of its producer's ack log: optional, at most once, in no particular order.
    Failed,
}

#[derive(Clone, Debug)]
struct Item {
    producer: u32,
    line: usize,
    text: u32,
    kind: Kind,
    /// `None` for `Star` and for a `Failed` record sent to `T:*`.
    partition: Option<u32>,
    /// From the ack log.
    offset: Option<u64>,
}

/// A topic's records (ids index `items`) and every partition anyone named.
#[derive(Default)]
struct Topic {
    partitions: BTreeSet<u32>,
    items: Vec<Item>,
    /// Producers whose records here have ack-log offsets.
    acked: BTreeSet<u32>,
}

impl Topic {
    fn has_star(&self) -> bool {
        self.items
            .iter()
            .any(|i| i.partition.is_none() && i.kind != Kind::Fixed)
    }
}

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

/// The covered partitions of a topic for a subscription, and whether it reads the whole topic.
fn coverage(name: &str, topic: &Topic, subs: &[ShardSpec]) -> (Vec<u32>, bool) {
    let covered: Vec<u32> = topic
        .partitions
        .iter()
        .copied()
        .filter(|&p| subs.iter().any(|s| s.covers(&ShardId::new(name, p))))
        .collect();
    let whole = !covered.is_empty()
        && (covered.len() == topic.partitions.len()
            || subs
                .iter()
                .any(|s| matches!(s, ShardSpec::All(t) if t == name)));
    (covered, whole)
}

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
fn place_stars(
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

/// Per-text counts of what a consumer may and must receive on one topic.
#[derive(Default)]
struct Counts {
    /// Per (covered partition, text): required (`Fixed`) records, optional `Failed` ones,
    /// received lines.
    req: HashMap<(u32, u32), usize>,
    failed: HashMap<(u32, u32), usize>,
    recv: HashMap<(u32, u32), usize>,
    /// Topic-wide: `Star` records and `Failed` records sent to `T:*`.
    star: HashMap<u32, usize>,
    failed_star: HashMap<u32, usize>,
    /// Received beyond what the partition itself can hold, summed over the topic.
    extra: HashMap<u32, usize>,
    /// Received beyond the partition's required records, summed over the topic: the most
    /// `Star` records of the text that can have arrived.
    extra_req: HashMap<u32, usize>,
}

fn get<K: std::hash::Hash + Eq>(m: &HashMap<K, usize>, k: K) -> usize {
    m.get(&k).copied().unwrap_or(0)
}

impl Counts {
    fn pool(&self, t: u32) -> usize {
        get(&self.star, t) + get(&self.failed_star, t)
    }

    /// A required record of this text on partition `p` may be missing.
    fn deficit(&self, p: u32, t: u32) -> bool {
        get(&self.recv, (p, t)) < get(&self.req, (p, t))
    }

    /// A line of this text on `p` may be left unmatched (a duplicate or unexpected one).
    fn surplus(&self, p: u32, t: u32) -> bool {
        let cap = get(&self.req, (p, t)) + get(&self.failed, (p, t));
        (cap == 0 && self.pool(t) == 0) || get(&self.extra, t) > self.pool(t)
    }
}

/// Checks one consumer's receipts of one topic on its covered partitions: counts first, then the
/// order (jointly over the partitions when `*` records tie them together).
#[allow(clippy::too_many_arguments)]
fn check_topic(
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
fn check_order(
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

enum Verdict {
    Ok,
    OutOfOrder(String),
    /// Records lost that the counts could not show (copies of their texts may be elsewhere).
    Missing(String),
    Undecided(String),
}

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

struct Search<'a> {
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
    fn new(
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
    fn solve(&self, budget: usize) -> Verdict {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    fn spec(dir: &Path, consumers: &[(u32, &str)]) -> VerifySpec {
        VerifySpec {
            dir: dir.to_path_buf(),
            producers: vec![],
            consumers: consumers
                .iter()
                .map(|(id, subs)| (*id, subs.split(',').map(|s| s.parse().unwrap()).collect()))
                .collect(),
        }
    }

    #[test]
    fn an_ack_log_in_ack_order_is_read_in_send_order_by_its_record_numbers() {
        let d = tempfile::tempdir().unwrap();
        // Record 2 (on a broker that was paused) is acknowledged after records 3 and 4.
        write(
            d.path(),
            "producer_1.txt",
            "1 A1 * T1\n2 A2 * T1\n3 A3 * T1\n4 A1 * T1\n",
        );
        write(
            d.path(),
            "producer_1.acked",
            "# shardq ack log v2: SHARD OFFSET RECORD MESSAGE\n\
             T1:P1 0 1 A1\nT1:P1 1 3 A3\nT1:P1 2 4 A1\nT1:P2 0 2 A2\n",
        );
        write(
            d.path(),
            "consumer_1.txt",
            "T1:P1     A1\nT1:P2     A2\nT1:P1     A3\nT1:P1     A1\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T1:*")])).unwrap();
        assert!(r.passed(), "{}", r.render());
        assert_eq!((r.failed, r.unresolved), (0, 0));
        // A record acknowledged twice is a broken log, said so with its line.
        write(
            d.path(),
            "producer_1.acked",
            "# shardq ack log v2\nT1:P1 0 1 A1\nT1:P2 0 1 A1\n",
        );
        let e = verify(&spec(d.path(), &[(1, "T1:*")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("producer_1.acked:3") && e.contains("twice"),
            "{e}"
        );
    }

    #[test]
    fn passes_and_catches_each_fault() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "producer_1.txt",
            "1 A1 P1 T1\n2 A2 P1 T1\n3 A3 P2 T1\n",
        );
        write(d.path(), "producer_2.txt", "1 B1 * T1\n2 B2 P1 T1\n");
        write(d.path(), "producer_2.acked", "T1:P2 1 B1\nT1:P1 2 B2\n");
        write(
            d.path(),
            "consumer_1.txt",
            "T1:P1     A1\nT1:P1     B2\nT1:P1     A2\n",
        );
        write(
            d.path(),
            "consumer_2.txt",
            "T1:P2     A3\nT1:P1     A1\nT1:P2     B1\nT1:P1     A2\nT1:P1     B2\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T1:P1"), (2, "T1:*")])).unwrap();
        assert!(r.passed(), "{}", r.render());
        assert_eq!(r.consumers[0].expected, 3);
        assert_eq!(r.consumers[1].expected, 5);

        // Out of order, duplicate, missing, unexpected shard.
        write(
            d.path(),
            "consumer_1.txt",
            "T1:P1     A2\nT1:P1     A1\nT1:P1     B2\nT1:P1     B2\nT1:P2     A3\n",
        );
        write(
            d.path(),
            "consumer_2.txt",
            "T1:P2     A3\nT1:P1     A1\nT1:P1     A2\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T1:P1"), (2, "T1:*")])).unwrap();
        assert!(!r.passed());
        let c1 = &r.consumers[0];
        assert_eq!(c1.out_of_order.len(), 1, "{}", r.render());
        assert_eq!(c1.duplicates.len(), 1, "{}", r.render());
        assert_eq!(c1.unexpected.len(), 1, "{}", r.render());
        let c2 = &r.consumers[1];
        assert_eq!(c2.missing.len(), 2, "{}", r.render());
    }

    #[test]
    fn star_records_without_ack_log_are_checked_per_topic() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "producer_1.txt",
            "1 X1 * T1\n1 X2 * T1\n1 X3 P2 T1\n",
        );
        write(
            d.path(),
            "consumer_1.txt",
            "T1:P1     X1\nT1:P2     X2\nT1:P2     X3\n",
        );
        write(d.path(), "consumer_2.txt", "T1:P1     X1\n");
        let r = verify(&spec(d.path(), &[(1, "T1:*"), (2, "T1:P1")])).unwrap();
        assert!(r.passed(), "{}", r.render());
        write(d.path(), "consumer_1.txt", "T1:P1     X1\nT1:P2     X3\n");
        let r = verify(&spec(d.path(), &[(1, "T1:*")])).unwrap();
        assert_eq!(r.consumers[0].missing.len(), 1, "{}", r.render());
    }

    #[test]
    fn bad_producer_file_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "producer_3.txt", "1 A P1 T1\n\n1 A T1\n");
        write(d.path(), "consumer_1.txt", "");
        let err = verify(&spec(d.path(), &[(1, "T1:*")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("producer_3.txt:3"), "{err}");
    }

    // Defect 1: a message text repeated across producers must not hide producer 1's `a`
    // arriving before its `X`, whichever X is which.
    #[test]
    fn repeated_texts_across_producers_keep_each_producers_order() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "producer_1.txt", "1 X P1 T\n1 a P1 T\n");
        write(d.path(), "producer_2.txt", "1 X P1 T\n1 b P1 T\n");
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     a\nT:P1     X\nT:P1     X\nT:P1     b\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        assert!(!r.passed(), "{}", r.render());
        assert_eq!(r.consumers[0].out_of_order.len(), 1, "{}", r.render());
        // The valid interleavings still pass.
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     X\nT:P1     X\nT:P1     a\nT:P1     b\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        assert!(r.passed(), "{}", r.render());
    }

    // Defect 2: a `*` record without an ack log takes its place in its producer's order on the
    // shard it landed on, and another producer's same text is not mistaken for it.
    #[test]
    fn star_record_without_ack_log_interleaves_with_same_text_of_another_producer() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "producer_1.txt", "1 X * T\n");
        write(d.path(), "producer_2.txt", "1 a P1 T\n1 X P1 T\n");
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     X\nT:P1     a\nT:P1     X\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        assert!(r.passed(), "{}", r.render());
        assert_eq!(r.consumers[0].expected, 3);
        // Producer 2's X before its a is still caught.
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     X\nT:P1     X\nT:P1     a\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        assert_eq!(r.consumers[0].out_of_order.len(), 1, "{}", r.render());
    }

    // Defect 3: records an ack log shows were not acknowledged are not required; received
    // once they are fine, twice they are a duplicate.
    #[test]
    fn records_that_failed_to_produce_are_optional_but_at_most_once() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "producer_1.txt",
            "1 A P1 T\n1 B P1 T\n1 C * T\n1 D * T\n",
        );
        write(d.path(), "producer_1.acked", "T:P1 0 A\nT:P2 0 D\n");
        write(d.path(), "consumer_1.txt", "T:P1     A\nT:P2     D\n");
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        assert!(r.passed(), "{}", r.render());
        assert_eq!(r.consumers[0].expected, 2, "{}", r.render());
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     A\nT:P1     B\nT:P2     C\nT:P2     D\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        assert!(r.passed(), "{}", r.render());
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     A\nT:P1     B\nT:P1     B\nT:P2     D\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        assert_eq!(r.consumers[0].duplicates.len(), 1, "{}", r.render());
    }

    // Defect 4: a line no producer sent is unexpected, not a duplicate.
    #[test]
    fn a_line_no_producer_sent_is_unexpected() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "producer_1.txt", "1 A P1 T\n");
        write(d.path(), "consumer_1.txt", "T:P1     A\nT:P1     ZZZ\n");
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        let c = &r.consumers[0];
        assert_eq!(c.unexpected.len(), 1, "{}", r.render());
        assert!(c.duplicates.is_empty(), "{}", r.render());
        assert!(c.unexpected[0].contains("ZZZ"), "{}", r.render());
    }

    // Defect 5: a long message is shown truncated, with its size.
    #[test]
    fn long_messages_are_truncated_in_reports() {
        let d = tempfile::tempdir().unwrap();
        let long = "y".repeat(3000);
        write(
            d.path(),
            "producer_1.txt",
            &format!("1 A P1 T\n1 {long} P1 T\n"),
        );
        write(d.path(), "consumer_1.txt", "T:P1     A\n");
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        let shown = r.render();
        assert_eq!(r.consumers[0].missing.len(), 1, "{shown}");
        assert!(!shown.contains(&long), "{shown}");
        assert!(
            shown.contains(&format!("{}… (3000 bytes)", "y".repeat(80))),
            "{shown}"
        );
    }

    // Defect 6: one missing copy of a repeated message is missing, not also out of order.
    #[test]
    fn a_missing_copy_of_a_repeated_message_is_not_out_of_order() {
        let d = tempfile::tempdir().unwrap();
        write(
            d.path(),
            "producer_1.txt",
            "1 X P1 T\n1 a P1 T\n1 X P1 T\n1 b P1 T\n",
        );
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     X\nT:P1     a\nT:P1     b\n",
        );
        let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
        let c = &r.consumers[0];
        assert_eq!(c.missing.len(), 1, "{}", r.render());
        assert!(c.out_of_order.is_empty(), "{}", r.render());
    }

    // Defect 7: `ID=` with no shard is refused, not taken as an empty subscription.
    #[test]
    fn an_empty_subscription_is_refused() {
        let err = parse_consumer("3=").unwrap_err().to_string();
        assert!(err.contains("no shard"), "{err}");
        assert!(parse_consumer("3= , ").is_err());
        assert_eq!(parse_consumer("3=T1:P1,T2:*").unwrap().1.len(), 2);
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "producer_1.txt", "1 A P1 T\n");
        write(d.path(), "consumer_3.txt", "");
        let spec = VerifySpec {
            dir: d.path().to_path_buf(),
            producers: vec![],
            consumers: vec![(3, vec![])],
        };
        assert!(verify(&spec).is_err());
    }

    // Repeated texts that make the search branch: decided with the default budget, reported as
    // undecided (not as a verdict) when the budget is too small.
    #[test]
    fn a_search_over_its_budget_is_undecided_not_a_verdict() {
        let d = tempfile::tempdir().unwrap();
        let xs = "1 X P1 T\n".repeat(20);
        write(
            d.path(),
            "producer_1.txt",
            &format!("{xs}1 a P1 T\n1 X P1 T\n"),
        );
        write(d.path(), "producer_2.txt", &format!("{xs}1 b P1 T\n"));
        let lines = "T:P1     X\n".repeat(40);
        write(
            d.path(),
            "consumer_1.txt",
            &format!("{lines}T:P1     b\nT:P1     X\nT:P1     a\n"),
        );
        let r = verify(&spec(d.path(), &[(1, "T:P1")])).unwrap();
        assert_eq!(r.consumers[0].out_of_order.len(), 1, "{}", r.render());
        let r = verify_with_budget(&spec(d.path(), &[(1, "T:P1")]), 0).unwrap();
        let c = &r.consumers[0];
        assert!(!r.passed());
        assert!(c.out_of_order.is_empty(), "{}", r.render());
        assert_eq!(c.undecided.len(), 1, "{}", r.render());
        assert!(r.render().contains("undecided"), "{}", r.render());
        // The valid order is found.
        write(
            d.path(),
            "consumer_1.txt",
            &format!("{lines}T:P1     a\nT:P1     X\nT:P1     b\n"),
        );
        let r = verify(&spec(d.path(), &[(1, "T:P1")])).unwrap();
        assert!(r.passed(), "{}", r.render());
    }

    #[test]
    fn two_hundred_thousand_unique_records_verify_fast() {
        let d = tempfile::tempdir().unwrap();
        let per = 50_000;
        let mut consumer_1 = String::new();
        let mut consumer_2 = String::new();
        for p in 1..=4u32 {
            let mut file = String::new();
            for i in 0..per {
                let part = 1 + (i % 4);
                // Producers 1 and 2 name the partition, 3 and 4 send to T:* (no ack log).
                let target = if p <= 2 {
                    format!("P{part}")
                } else {
                    "*".to_string()
                };
                writeln!(file, "21:52:23\tm{p}-{i}\t\t{target}\t\tT").unwrap();
                writeln!(consumer_1, "T:P{part}     m{p}-{i}").unwrap();
                if part == 1 {
                    writeln!(consumer_2, "T:P1     m{p}-{i}").unwrap();
                }
            }
            write(d.path(), &format!("producer_{p}.txt"), &file);
        }
        write(d.path(), "consumer_1.txt", &consumer_1);
        write(d.path(), "consumer_2.txt", &consumer_2);
        let start = std::time::Instant::now();
        let r = verify(&spec(d.path(), &[(1, "T:*"), (2, "T:P1")])).unwrap();
        let took = start.elapsed();
        assert!(r.passed(), "{}", r.render());
        assert_eq!(r.produced, 200_000);
        assert_eq!(r.unresolved, 100_000);
        assert_eq!(r.consumers[0].expected, 200_000);
        // Consumer 1's receipts place every (unique) `*` record, so consumer 2 must have the
        // 25,000 of them on P1 as well as the 25,000 sent to P1.
        assert_eq!(r.placed, 100_000);
        assert_eq!(r.consumers[1].expected, 50_000);
        assert!(took.as_secs_f64() < 5.0, "took {took:?}");
    }

    /// xorshift64*: a reproducible stream for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// One generated run: producers' records, where each landed, and what consumer 1 (`T:*`)
    /// received per partition, each line tagged with the record it is.
    struct Run {
        partitions: u32,
        /// Per producer: (text, target partition or None for `*`).
        sent: Vec<Vec<(String, Option<u32>)>>,
        /// Per producer: per record, Some(partition) it landed on, None if never delivered.
        landed: Vec<Vec<Option<u32>>>,
        /// Per producer: whether it writes an ack log; per record: acknowledged or failed.
        acked: Vec<Option<Vec<bool>>>,
        /// Per partition, in offset order: (producer, record index).
        log: Vec<Vec<(usize, usize)>>,
    }

    fn generate(rng: &mut Rng, with_acks: bool) -> Run {
        let partitions = 1 + rng.below(3) as u32;
        let producers = 1 + rng.below(3);
        let alphabet = ["X", "Y", "Z"];
        let mut run = Run {
            partitions,
            sent: Vec::new(),
            landed: Vec::new(),
            acked: Vec::new(),
            log: vec![Vec::new(); partitions as usize],
        };
        let mut star_budget = 4;
        for p in 0..producers {
            let n = 1 + rng.below(6);
            let acks = with_acks && rng.below(2) == 0;
            let (mut sent, mut landed, mut ack) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..n {
                // Repeated texts, within and across producers, plus some unique ones.
                let text = if rng.below(3) == 0 {
                    format!("u{p}-{i}")
                } else {
                    alphabet[rng.below(alphabet.len())].to_string()
                };
                let star = rng.below(3) == 0 && (acks || star_budget > 0);
                if star && !acks {
                    star_budget -= 1;
                }
                let target = (!star).then(|| 1 + rng.below(partitions as usize) as u32);
                let part = target.unwrap_or_else(|| 1 + rng.below(partitions as usize) as u32);
                // With an ack log some records fail; a failed one may still have been appended.
                let ok = !acks || rng.below(5) != 0;
                let delivered = ok || rng.below(2) == 0;
                sent.push((text, target));
                landed.push(delivered.then_some(part));
                ack.push(ok);
            }
            run.sent.push(sent);
            run.landed.push(landed);
            run.acked.push(acks.then_some(ack));
        }
        // Interleave: repeatedly append the next delivered record of a random producer.
        let mut next = vec![0; producers];
        loop {
            let live: Vec<usize> = (0..producers)
                .filter(|&p| next[p] < run.sent[p].len())
                .collect();
            if live.is_empty() {
                break;
            }
            let p = live[rng.below(live.len())];
            let i = next[p];
            next[p] += 1;
            if let Some(part) = run.landed[p][i] {
                run.log[part as usize - 1].push((p, i));
            }
        }
        run
    }

    /// Writes the run's files; consumer 1 gets `lines` per partition.
    fn write_run(dir: &Path, run: &Run, lines: &[Vec<(usize, usize)>]) {
        for f in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        for (p, sent) in run.sent.iter().enumerate() {
            let mut file = String::new();
            for (text, target) in sent {
                let part = target.map_or("*".to_string(), |n| format!("P{n}"));
                writeln!(file, "12:00:00 {text} {part} T").unwrap();
            }
            write(dir, &format!("producer_{}.txt", p + 1), &file);
            if let Some(acked) = &run.acked[p] {
                let mut log = String::new();
                for (i, (text, _)) in sent.iter().enumerate() {
                    if acked[i] {
                        let part = run.landed[p][i].unwrap();
                        let offset = run.log[part as usize - 1]
                            .iter()
                            .position(|&r| r == (p, i))
                            .unwrap();
                        writeln!(log, "T:P{part} {offset} {text}").unwrap();
                    }
                }
                write(dir, &format!("producer_{}.acked", p + 1), &log);
            }
        }
        let mut consumer = String::new();
        for (part, lines) in lines.iter().enumerate() {
            for &(p, i) in lines {
                let text = if p == usize::MAX {
                    "FOREIGN"
                } else {
                    &run.sent[p][i].0
                };
                writeln!(consumer, "T:P{}     {text}", part + 1).unwrap();
            }
        }
        write(dir, "consumer_1.txt", &consumer);
    }

    /// Brute force over where each `*` record went, then over which producer each line came
    /// from: whether `lines` is a valid receipt of a run without ack logs.
    fn oracle(run: &Run, lines: &[Vec<(usize, usize)>]) -> bool {
        let texts = |part: usize| -> Vec<&str> {
            lines[part]
                .iter()
                .map(|&(p, i)| {
                    if p == usize::MAX {
                        "FOREIGN"
                    } else {
                        run.sent[p][i].0.as_str()
                    }
                })
                .collect()
        };
        let stars: Vec<(usize, usize)> = run
            .sent
            .iter()
            .enumerate()
            .flat_map(|(p, s)| {
                s.iter()
                    .enumerate()
                    .filter(|(_, r)| r.1.is_none())
                    .map(move |(i, _)| (p, i))
            })
            .collect();
        let k = run.partitions as usize;
        fn fits(queues: &mut [Vec<&str>], got: &[&str]) -> bool {
            let Some((first, rest)) = got.split_first() else {
                return queues.iter().all(Vec::is_empty);
            };
            for q in 0..queues.len() {
                if queues[q].first() == Some(first) {
                    let head = queues[q].remove(0);
                    let ok = fits(queues, rest);
                    queues[q].insert(0, head);
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        (0..k.pow(stars.len() as u32)).any(|code| {
            let mut place = HashMap::new();
            let mut c = code;
            for s in &stars {
                place.insert(*s, c % k + 1);
                c /= k;
            }
            (0..k).all(|part| {
                let mut queues: Vec<Vec<&str>> = run
                    .sent
                    .iter()
                    .enumerate()
                    .map(|(p, s)| {
                        s.iter()
                            .enumerate()
                            .filter(|(i, r)| {
                                r.1.map_or_else(|| place[&(p, *i)], |n| n as usize) == part + 1
                            })
                            .map(|(_, r)| r.0.as_str())
                            .collect()
                    })
                    .collect();
                fits(&mut queues, &texts(part))
            })
        })
    }

    /// Consumer 1's lines per partition, each the (producer, record index) it is.
    type Lines = Vec<Vec<(usize, usize)>>;

    /// One random corruption of a valid receipt. Returns the corrupted lines and whether it
    /// must fail whatever the texts (false: only the oracle can tell).
    fn corrupt(
        rng: &mut Rng,
        run: &Run,
        lines: &[Vec<(usize, usize)>],
    ) -> Option<(Lines, &'static str, bool)> {
        let mut out = lines.to_vec();
        let part = rng.below(out.len());
        let required = |&(p, i): &(usize, usize)| run.acked[p].as_ref().is_none_or(|a| a[i]);
        let text = |(p, i): (usize, usize)| run.sent[p][i].0.as_str();
        // Texts some failed record could also explain.
        let spare: HashSet<&str> = (0..run.sent.len())
            .flat_map(|p| (0..run.sent[p].len()).map(move |i| (p, i)))
            .filter(|r| !required(r))
            .map(text)
            .collect();
        match rng.below(4) {
            0 => {
                let at: Vec<usize> = (0..out[part].len())
                    .filter(|&j| required(&out[part][j]) && !spare.contains(text(out[part][j])))
                    .collect();
                let j = *at.get(rng.below(at.len().max(1)))?;
                out[part].remove(j);
                Some((out, "drop", true))
            }
            1 => {
                let at: Vec<usize> = (0..out[part].len())
                    .filter(|&j| !spare.contains(text(out[part][j])))
                    .collect();
                let j = *at.get(rng.below(at.len().max(1)))?;
                let r = out[part][j];
                let to = rng.below(out[part].len() + 1);
                out[part].insert(to, r);
                Some((out, "duplicate", true))
            }
            2 => {
                let to = rng.below(out[part].len() + 1);
                out[part].insert(to, (usize::MAX, 0));
                Some((out, "foreign", true))
            }
            _ => {
                // Two records of one producer with different texts, swapped.
                let n = out[part].len();
                let pairs: Vec<(usize, usize)> = (0..n)
                    .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
                    .filter(|&(a, b)| {
                        let (ra, rb) = (out[part][a], out[part][b]);
                        ra.0 == rb.0 && text(ra) != text(rb)
                    })
                    .collect();
                let (a, b) = *pairs.get(rng.below(pairs.len().max(1)))?;
                out[part].swap(a, b);
                // With ack logs and no spare copies, offsets fix the order: must fail.
                let fixed = run.acked[out[part][a].0].is_some()
                    && !spare.contains(text(out[part][a]))
                    && !spare.contains(text(out[part][b]))
                    && [a, b].iter().all(|&j| {
                        let t = text(out[part][j]);
                        out.iter().flatten().filter(|&&r| text(r) == t).count() == 1
                    });
                Some((out, "swap", fixed))
            }
        }
    }

    fn property(with_acks: bool, seeds: u64) {
        let d = tempfile::tempdir().unwrap();
        let (mut corrupted, mut swaps_failed) = (0, 0);
        for seed in 1..=seeds {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let run = generate(&mut rng, with_acks);
            write_run(d.path(), &run, &run.log);
            let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
            assert!(r.passed(), "seed {seed}: valid run failed\n{}", r.render());
            let Some((lines, what, must_fail)) = corrupt(&mut rng, &run, &run.log) else {
                continue;
            };
            corrupted += 1;
            write_run(d.path(), &run, &lines);
            let r = verify(&spec(d.path(), &[(1, "T:*")])).unwrap();
            let want_pass = if must_fail {
                false
            } else if with_acks {
                continue;
            } else {
                oracle(&run, &lines)
            };
            if what == "swap" && !want_pass {
                swaps_failed += 1;
            }
            assert_eq!(
                r.passed(),
                want_pass,
                "seed {seed}: after a {what} the verdict should be {}\n{}",
                if want_pass { "PASS" } else { "FAIL" },
                r.render()
            );
            assert!(r.consumers[0].undecided.is_empty(), "seed {seed}");
        }
        assert!(corrupted > seeds / 2, "{corrupted} corrupted runs");
        assert!(swaps_failed > 0, "no swap was ever a failure");
    }

    #[test]
    fn random_valid_runs_pass_and_one_corruption_fails() {
        property(false, 400);
    }

    #[test]
    fn random_valid_runs_with_ack_logs_pass_and_one_corruption_fails() {
        property(true, 400);
    }

    // A `*` record without an ack log that a whole-topic consumer received on P1 (its text is
    // unique) landed on P1: a consumer of P1 alone must have it too.
    #[test]
    fn a_star_record_placed_by_receipts_is_required_on_its_shard() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "producer_1.txt", "1 A * T\n1 B P2 T\n1 C P1 T\n");
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     A\nT:P2     B\nT:P1     C\n",
        );
        write(d.path(), "consumer_2.txt", "T:P1     A\nT:P1     C\n");
        let subs = [(1, "T:*"), (2, "T:P1")];
        let r = verify(&spec(d.path(), &subs)).unwrap();
        assert!(r.passed(), "{}", r.render());
        assert_eq!((r.unresolved, r.placed), (1, 1), "{}", r.render());
        assert_eq!(r.consumers[1].expected, 2, "{}", r.render());
        write(d.path(), "consumer_2.txt", "T:P1     C\n");
        let r = verify(&spec(d.path(), &subs)).unwrap();
        assert_eq!(r.consumers[1].missing.len(), 1, "{}", r.render());
        assert!(
            r.consumers[1].missing[0].contains("T:P1 A"),
            "{}",
            r.render()
        );
        // Placed, it also takes its place in its producer's order there.
        write(d.path(), "consumer_2.txt", "T:P1     C\nT:P1     A\n");
        let r = verify(&spec(d.path(), &subs)).unwrap();
        assert_eq!(r.consumers[1].out_of_order.len(), 1, "{}", r.render());
        // A subset consumer's receipt of a unique text places it as well.
        write(d.path(), "consumer_1.txt", "T:P2     B\nT:P1     C\n");
        write(d.path(), "consumer_2.txt", "T:P1     A\nT:P1     C\n");
        let r = verify(&spec(d.path(), &subs)).unwrap();
        assert_eq!(r.placed, 1, "{}", r.render());
        assert_eq!(r.consumers[0].missing.len(), 1, "{}", r.render());
        assert!(r.consumers[1].ok(), "{}", r.render());
    }

    // Where the receipts do not show one partition, a `*` record stays unplaced: copies of a
    // text split over partitions, receipts that disagree, a copy that may have failed.
    #[test]
    fn ambiguous_receipts_leave_star_records_unplaced() {
        let d = tempfile::tempdir().unwrap();
        let subs = [(1, "T:*"), (2, "T:P1")];
        write(d.path(), "producer_1.txt", "1 X * T\n1 X * T\n1 V P2 T\n");
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     X\nT:P2     X\nT:P2     V\n",
        );
        write(d.path(), "consumer_2.txt", "");
        let r = verify(&spec(d.path(), &subs)).unwrap();
        assert_eq!(r.placed, 0, "{}", r.render());
        assert!(r.passed(), "{}", r.render());
        // Both copies on P1: both placed there.
        write(
            d.path(),
            "consumer_1.txt",
            "T:P1     X\nT:P1     X\nT:P2     V\n",
        );
        write(d.path(), "consumer_2.txt", "T:P1     X\n");
        let r = verify(&spec(d.path(), &subs)).unwrap();
        assert_eq!(r.placed, 2, "{}", r.render());
        assert_eq!(r.consumers[1].missing.len(), 1, "{}", r.render());
        // Two whole-topic consumers that disagree place nothing.
        write(d.path(), "producer_1.txt", "1 Y * T\n");
        write(d.path(), "consumer_1.txt", "T:P1     Y\n");
        write(d.path(), "consumer_2.txt", "T:P2     Y\n");
        let r = verify(&spec(d.path(), &[(1, "T:*"), (2, "T:*")])).unwrap();
        assert_eq!(r.placed, 0, "{}", r.render());
        // A copy that failed to produce (ack log) may be the one received.
        write(d.path(), "producer_1.txt", "1 Z * T\n");
        write(d.path(), "producer_2.txt", "1 Z * T\n1 W P2 T\n");
        write(d.path(), "producer_2.acked", "T:P2 0 W\n");
        write(d.path(), "consumer_1.txt", "T:P1     Z\nT:P2     W\n");
        write(d.path(), "consumer_2.txt", "");
        let r = verify(&spec(d.path(), &subs)).unwrap();
        assert_eq!(r.placed, 0, "{}", r.render());
        assert!(r.passed(), "{}", r.render());
    }

    /// A model of a cluster run like the tester's: producers send their files' records in order,
    /// interleaved at random, to topics A and B (3 partitions each); a record sent to `T:*`
    /// goes to the producer's next partition round-robin; each shard's offsets are dense from a
    /// base offset; the producers marked in `acked` write ack logs. Consumer 1 reads A:* and
    /// B:*, consumer 2 A:P1, consumer 3 B:* and A:P3, each shard in offset order from its start
    /// and the shards interleaved at random.
    struct Cluster {
        /// Per consumer, in consumed order: (shard, text, producer index, pinned by an ack log).
        consumers: Vec<Vec<(String, String, usize, bool)>>,
    }

    const CLUSTER_SUBS: [(u32, &str); 3] = [(1, "A:*,B:*"), (2, "A:P1"), (3, "B:*,A:P3")];

    fn cluster(dir: &Path, seed: u64, lines: usize, texts: usize, acked: &[bool]) -> Cluster {
        for f in std::fs::read_dir(dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let shards: Vec<String> = ["A", "B"]
            .iter()
            .flat_map(|t| (1..=3).map(move |p| format!("{t}:P{p}")))
            .collect();
        let base: Vec<usize> = shards.iter().map(|_| rng.below(50)).collect();
        // Per producer: (text, topic, target partition or None for `*`).
        let sent: Vec<Vec<(String, &str, Option<usize>)>> = acked
            .iter()
            .map(|_| {
                (0..lines)
                    .map(|_| {
                        let topic = ["A", "B"][rng.below(2)];
                        let part = (rng.below(10) >= 6).then(|| 1 + rng.below(3));
                        (format!("same{}", rng.below(texts)), topic, part)
                    })
                    .collect()
            })
            .collect();
        let mut logs: Vec<Vec<(String, usize, bool)>> = vec![Vec::new(); shards.len()];
        let mut acks: Vec<String> = vec![String::new(); acked.len()];
        let mut next = vec![0; acked.len()];
        let mut round_robin = vec![[0usize; 2]; acked.len()];
        loop {
            let live: Vec<usize> = (0..acked.len()).filter(|&p| next[p] < lines).collect();
            let Some(&p) = live.get(rng.below(live.len().max(1))) else {
                break;
            };
            let (text, topic, part) = &sent[p][next[p]];
            next[p] += 1;
            let t = usize::from(*topic == "B");
            let part = part.unwrap_or_else(|| {
                round_robin[p][t] += 1;
                1 + round_robin[p][t] % 3
            });
            let shard = 3 * t + part - 1;
            let offset = base[shard] + logs[shard].len();
            logs[shard].push((text.clone(), p, acked[p]));
            if acked[p] {
                writeln!(acks[p], "{} {offset} {text}", shards[shard]).unwrap();
            }
        }
        for (p, records) in sent.iter().enumerate() {
            let mut file = String::new();
            for (text, topic, part) in records {
                let part = part.map_or("*".to_string(), |n| format!("P{n}"));
                writeln!(file, "10:00:00 {text} {part} {topic}").unwrap();
            }
            write(dir, &format!("producer_{}.txt", p + 1), &file);
            if acked[p] {
                write(dir, &format!("producer_{}.acked", p + 1), &acks[p]);
            }
        }
        let consumers = CLUSTER_SUBS
            .iter()
            .map(|(_, subs)| {
                let mut cursors: Vec<(usize, usize)> = subs
                    .split(',')
                    .flat_map(|sub| {
                        let sub: ShardSpec = sub.parse().unwrap();
                        (0..shards.len())
                            .filter(|&k| sub.covers(&shards[k].parse().unwrap()))
                            .collect::<Vec<_>>()
                    })
                    .map(|k| (k, 0))
                    .collect();
                let mut out = Vec::new();
                loop {
                    cursors.retain(|&(k, c)| c < logs[k].len());
                    if cursors.is_empty() {
                        break out;
                    }
                    let j = rng.below(cursors.len());
                    let (k, c) = cursors[j];
                    cursors[j].1 += 1;
                    let (text, p, pinned) = &logs[k][c];
                    out.push((shards[k].clone(), text.clone(), *p, *pinned));
                }
            })
            .collect();
        let run = Cluster { consumers };
        write_cluster_consumers(dir, &run);
        run
    }

    fn write_cluster_consumers(dir: &Path, run: &Cluster) {
        for (c, lines) in run.consumers.iter().enumerate() {
            let mut file = String::new();
            for (shard, text, _, _) in lines {
                writeln!(file, "{shard}     {text}").unwrap();
            }
            write(dir, &format!("consumer_{}.txt", c + 1), &file);
        }
    }

    // The tester's heavy repeats: 3 producers x 400 records over 3 texts, 60% to `T:*`, two with
    // ack logs. The ack logs place most records at their offsets; matching those first leaves
    // only the third producer's records to deal out, which is decided at once.
    #[test]
    fn heavy_repeats_with_ack_logs_pass_fast_and_corruptions_fail() {
        let d = tempfile::tempdir().unwrap();
        let acked = [true, true, false];
        for seed in 1..=3 {
            cluster(d.path(), seed, 400, 3, &acked);
            let start = std::time::Instant::now();
            let r = verify(&spec(d.path(), &CLUSTER_SUBS)).unwrap();
            let took = start.elapsed();
            assert!(r.passed(), "seed {seed}\n{}", r.render());
            assert!(took.as_secs_f64() < 2.0, "seed {seed} took {took:?}");
        }
        let run = cluster(d.path(), 7, 400, 3, &acked);
        // Each corruption must fail: with a small budget, so the full search cannot decide and
        // what decides is the reading of the shards at their acknowledged offsets.
        let check = |run: &Cluster, what: &str| {
            write_cluster_consumers(d.path(), run);
            let r = verify_with_budget(&spec(d.path(), &CLUSTER_SUBS), 10_000).unwrap();
            assert!(!r.passed(), "{what}: should fail\n{}", r.render());
            r
        };
        let decided = |r: &VerifyReport, what: &str| {
            assert!(
                r.consumers.iter().all(|c| c.undecided.is_empty()),
                "{what}: should be decided\n{}",
                r.render()
            );
        };
        let pinned_at = |lines: &[(String, String, usize, bool)], shard: &str| -> Vec<usize> {
            (0..lines.len())
                .filter(|&j| lines[j].0 == shard && lines[j].3)
                .collect()
        };
        // Consumer 2 loses an acknowledged record.
        let mut bad = Cluster {
            consumers: run.consumers.clone(),
        };
        let j = pinned_at(&bad.consumers[1], "A:P1")[10];
        bad.consumers[1].remove(j);
        let r = check(&bad, "drop");
        decided(&r, "drop");
        // The counts cannot tell (the text's `*` copies may account for it); the reading of
        // A:P1 at the acknowledged offsets can.
        let c = &r.consumers[1];
        assert_eq!(c.missing.len() + c.out_of_order.len(), 1, "{}", r.render());
        // Consumer 1 loses a record of the producer without an ack log.
        let mut bad = Cluster {
            consumers: run.consumers.clone(),
        };
        let j = (0..bad.consumers[0].len())
            .find(|&j| bad.consumers[0][j].2 == 2 && j > 100)
            .unwrap();
        bad.consumers[0].remove(j);
        let r = check(&bad, "drop unpinned");
        // Counted missing; the order is left to the search (undecided with this budget).
        assert!(!r.consumers[0].missing.is_empty(), "{}", r.render());
        // Consumer 1 gets a line twice.
        let mut bad = Cluster {
            consumers: run.consumers.clone(),
        };
        let line = bad.consumers[0][200].clone();
        bad.consumers[0].insert(230, line);
        let r = check(&bad, "duplicate");
        assert!(!r.consumers[0].duplicates.is_empty(), "{}", r.render());
        // Two acknowledged records of different texts swap places, on each consumer of A:P1.
        let mut bad = Cluster {
            consumers: run.consumers.clone(),
        };
        for c in [0, 1] {
            let lines = &mut bad.consumers[c];
            let at = pinned_at(lines, "A:P1");
            let (a, b) = at
                .windows(2)
                .map(|w| (w[0], w[1]))
                .find(|&(a, b)| a > 20 && lines[a].1 != lines[b].1)
                .unwrap();
            let (ta, tb) = (lines[a].1.clone(), lines[b].1.clone());
            lines[a].1 = tb;
            lines[b].1 = ta;
        }
        let r = check(&bad, "swap");
        decided(&r, "swap");
        for c in [0, 1] {
            let c = &r.consumers[c];
            assert_eq!(c.out_of_order.len(), 1, "{}", r.render());
            assert!(c.out_of_order[0].contains("A:P1"), "{}", r.render());
        }
        assert!(r.consumers[2].ok(), "{}", r.render());
        // A line no producer sent.
        let mut bad = Cluster {
            consumers: run.consumers.clone(),
        };
        bad.consumers[2].insert(50, ("B:P2".into(), "other".into(), 0, false));
        let r = check(&bad, "foreign");
        assert_eq!(r.consumers[2].unexpected.len(), 1, "{}", r.render());
    }

    // Larger runs like the tester's: 3000 records per producer over 3 and over 50 texts.
    #[test]
    fn long_heavy_repeat_runs_with_ack_logs_pass() {
        let d = tempfile::tempdir().unwrap();
        for texts in [3, 50] {
            cluster(d.path(), 11, 3000, texts, &[true, true, false]);
            let r = verify(&spec(d.path(), &CLUSTER_SUBS)).unwrap();
            assert!(r.passed(), "{texts} texts\n{}", r.render());
        }
    }

    // Without ack logs, one producer's records over 3 texts, 60% to `T:*`: dealing them out
    // over the shards in order decides what a search over which shard took which `*` cannot.
    #[test]
    fn one_producer_without_ack_log_and_heavy_repeats_is_decided() {
        let d = tempfile::tempdir().unwrap();
        let run = cluster(d.path(), 5, 600, 3, &[false]);
        let start = std::time::Instant::now();
        let r = verify(&spec(d.path(), &CLUSTER_SUBS)).unwrap();
        let took = start.elapsed();
        assert!(r.passed(), "{}", r.render());
        assert!(took.as_secs_f64() < 2.0, "took {took:?}");
        // Consumer 1 gets A:P2's lines in reverse: definitely not the order sent.
        let mut bad = Cluster {
            consumers: run.consumers.clone(),
        };
        let at: Vec<usize> = (0..bad.consumers[0].len())
            .filter(|&j| bad.consumers[0][j].0 == "A:P2")
            .collect();
        let texts: Vec<String> = at.iter().map(|&j| bad.consumers[0][j].1.clone()).collect();
        for (&j, t) in at.iter().zip(texts.into_iter().rev()) {
            bad.consumers[0][j].1 = t;
        }
        write_cluster_consumers(d.path(), &bad);
        let r = verify(&spec(d.path(), &CLUSTER_SUBS)).unwrap();
        let c = &r.consumers[0];
        assert_eq!(c.out_of_order.len(), 1, "{}", r.render());
        assert!(c.undecided.is_empty(), "{}", r.render());
    }
}
