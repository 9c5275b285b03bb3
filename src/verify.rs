//! The verifier: from the producers' input files (and their ack logs, when present) and the
//! consumers' output files alone, checks that every consumer received every record produced into
//! the shards it subscribed to, exactly once, and in each shard in the order each producer sent it.
//! Works for any number of producers, consumers, topics and partitions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
}

impl ConsumerReport {
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.duplicates.is_empty()
            && self.unexpected.is_empty()
            && self.out_of_order.is_empty()
    }
}

#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub produced: usize,
    /// Records sent to `T:*` whose partition no ack log resolved (checked per topic).
    pub unresolved: usize,
    pub consumers: Vec<ConsumerReport>,
}

impl VerifyReport {
    pub fn passed(&self) -> bool {
        self.consumers.iter().all(ConsumerReport::ok)
    }

    /// Human-readable summary ending in PASS or FAIL.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "produced {} records ({} sent to T:* without an ack log)",
            self.produced, self.unresolved
        );
        for c in &self.consumers {
            let _ = writeln!(
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
            for (what, list) in [
                ("missing", &c.missing),
                ("duplicate", &c.duplicates),
                ("unexpected", &c.unexpected),
                ("out of order", &c.out_of_order),
            ] {
                for item in list.iter().take(10) {
                    let _ = writeln!(s, "  {what}: {item}");
                }
                if list.len() > 10 {
                    let _ = writeln!(s, "  ... and {} more {what}", list.len() - 10);
                }
            }
        }
        let _ = writeln!(s, "{}", if self.passed() { "PASS" } else { "FAIL" });
        s
    }
}

/// A record as the producer's input file names it.
#[derive(Clone, Debug)]
struct Sent {
    producer: u32,
    topic: String,
    partition: Option<u32>,
    msg: String,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses `producer_N.txt`: `<time> <message> <partition|*> <topic>` per line.
fn parse_producer_file(path: &Path, producer: u32) -> Result<Vec<Sent>> {
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
            producer,
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

/// Reads an ack log: per (topic, message) the shards its `*` records landed on, in ack order.
fn parse_ack_log(path: &Path) -> Result<HashMap<(String, String), Vec<ShardId>>> {
    let mut out: HashMap<(String, String), Vec<ShardId>> = HashMap::new();
    for (i, line) in read(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (shard, rest) = split_shard(line)
            .with_context(|| format!("{}:{}: not `T:P OFFSET MESSAGE`", path.display(), i + 1))?;
        let msg = rest
            .split_once(char::is_whitespace)
            .map_or("", |(_, m)| m.trim())
            .to_string();
        out.entry((shard.topic.clone(), msg))
            .or_default()
            .push(shard);
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

/// Multiset difference helper: counts of each message.
fn counts<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

pub fn verify(spec: &VerifySpec) -> Result<VerifyReport> {
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
    // Expected records per shard (resolved) and per topic (sent to T:* and not resolved).
    let mut by_shard: BTreeMap<ShardId, Vec<Sent>> = BTreeMap::new();
    let mut unresolved: BTreeMap<String, Vec<Sent>> = BTreeMap::new();
    let mut partitions: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    let mut produced = 0;
    for &p in &producers {
        let sent = parse_producer_file(&spec.dir.join(format!("producer_{p}.txt")), p)?;
        let ack_path = spec.dir.join(format!("producer_{p}.acked"));
        let mut acks = if ack_path.exists() {
            parse_ack_log(&ack_path)?
        } else {
            HashMap::new()
        };
        for list in acks.values_mut() {
            list.reverse(); // pop() takes them in ack order
        }
        for s in sent {
            produced += 1;
            let shard = match s.partition {
                Some(n) => Some(ShardId::new(&s.topic, n)),
                None => acks
                    .get_mut(&(s.topic.clone(), s.msg.clone()))
                    .and_then(Vec::pop),
            };
            match shard {
                Some(id) => {
                    partitions
                        .entry(id.topic.clone())
                        .or_default()
                        .insert(id.partition);
                    by_shard.entry(id).or_default().push(s);
                }
                None => {
                    partitions.entry(s.topic.clone()).or_default();
                    unresolved.entry(s.topic.clone()).or_default().push(s);
                }
            }
        }
    }
    let mut report = VerifyReport {
        produced,
        unresolved: unresolved.values().map(Vec::len).sum(),
        consumers: Vec::new(),
    };

    for (id, subs) in &spec.consumers {
        let path = spec.dir.join(format!("consumer_{id}.txt"));
        let text = read(&path)?;
        let mut got: BTreeMap<ShardId, Vec<String>> = BTreeMap::new();
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
                    "consumer_{id}.txt:{}: unreadable line {line:?}",
                    i + 1
                ));
                continue;
            };
            c.received += 1;
            partitions
                .entry(shard.topic.clone())
                .or_default()
                .insert(shard.partition);
            got.entry(shard).or_default().push(msg.trim().to_string());
        }
        for shard in got.keys() {
            if !subs.iter().any(|s| s.covers(shard)) {
                c.unexpected.push(format!(
                    "records from {shard}, which consumer {id} did not subscribe to"
                ));
            }
        }
        // Shards this consumer covers, per topic.
        for (topic, parts) in &partitions {
            let covered: Vec<ShardId> = parts
                .iter()
                .map(|&p| ShardId::new(topic, p))
                .filter(|s| subs.iter().any(|sub| sub.covers(s)))
                .collect();
            let whole_topic = subs
                .iter()
                .any(|s| matches!(s, ShardSpec::All(t) if t == topic))
                || (!parts.is_empty() && covered.len() == parts.len());
            let pool = unresolved.get(topic).map(Vec::as_slice).unwrap_or(&[]);
            let mut topic_expected: Vec<&str> = Vec::new();
            let mut topic_got: Vec<&str> = Vec::new();
            for shard in &covered {
                let expected = by_shard.get(shard).map(Vec::as_slice).unwrap_or(&[]);
                let received = got.get(shard).map(Vec::as_slice).unwrap_or(&[]);
                topic_expected.extend(expected.iter().map(|s| s.msg.as_str()));
                topic_got.extend(received.iter().map(String::as_str));
                check_order(shard, expected, received, &mut c.out_of_order);
            }
            c.expected += topic_expected.len();
            if whole_topic {
                c.expected += pool.len();
                topic_expected.extend(pool.iter().map(|s| s.msg.as_str()));
                diff_counts(topic, &topic_expected, &topic_got, &mut c);
            } else {
                // Partial cover: resolved records must match per shard; unresolved ones may
                // legitimately be elsewhere, so they only excuse extra receipts.
                for shard in &covered {
                    let expected: Vec<&str> = by_shard
                        .get(shard)
                        .map_or(vec![], |v| v.iter().map(|s| s.msg.as_str()).collect());
                    let received: Vec<&str> = got
                        .get(shard)
                        .map_or(vec![], |v| v.iter().map(String::as_str).collect());
                    let mut allowed = expected.clone();
                    allowed.extend(pool.iter().map(|s| s.msg.as_str()));
                    let (exp, rec) = (counts(expected), counts(received));
                    let allowed = counts(allowed);
                    for (m, n) in &exp {
                        let r = rec.get(m).copied().unwrap_or(0);
                        if r < *n {
                            c.missing.push(format!("{shard} {m} (x{})", n - r));
                        }
                    }
                    for (m, r) in &rec {
                        let a = allowed.get(m).copied().unwrap_or(0);
                        if *r > a {
                            c.duplicates.push(format!("{shard} {m} (x{})", r - a));
                        }
                    }
                }
            }
        }
        report.consumers.push(c);
    }
    Ok(report)
}

fn diff_counts(topic: &str, expected: &[&str], got: &[&str], c: &mut ConsumerReport) {
    let (exp, rec) = (
        counts(expected.iter().copied()),
        counts(got.iter().copied()),
    );
    for (m, n) in &exp {
        let r = rec.get(m).copied().unwrap_or(0);
        if r < *n {
            c.missing.push(format!("{topic} {m} (x{})", n - r));
        }
    }
    for (m, r) in &rec {
        let n = exp.get(m).copied().unwrap_or(0);
        if *r > n {
            c.duplicates.push(format!("{topic} {m} (x{})", r - n));
        }
    }
}

/// Per producer, the messages only that producer sent to `shard` must arrive in the order sent.
/// (A message text several producers sent to the same shard cannot be attributed, so it is left
/// to the exactly-once count.)
fn check_order(shard: &ShardId, expected: &[Sent], received: &[String], out: &mut Vec<String>) {
    let mut owners: HashMap<&str, BTreeSet<u32>> = HashMap::new();
    for s in expected {
        owners.entry(&s.msg).or_default().insert(s.producer);
    }
    let producers: BTreeSet<u32> = expected.iter().map(|s| s.producer).collect();
    for p in producers {
        let mine = |m: &str| {
            owners
                .get(m)
                .is_some_and(|o| o.len() == 1 && o.contains(&p))
        };
        let sent: Vec<&str> = expected
            .iter()
            .filter(|s| s.producer == p && mine(&s.msg))
            .map(|s| s.msg.as_str())
            .collect();
        let mut got: Vec<&str> = received
            .iter()
            .map(String::as_str)
            .filter(|m| mine(m))
            .collect();
        // Duplicates/missing are reported by the counts; compare first occurrences only.
        let mut seen = BTreeSet::new();
        got.retain(|m| seen.insert(*m) || sent.iter().filter(|s| *s == m).count() > 1);
        let sent_present: Vec<&str> = sent.iter().copied().filter(|m| got.contains(m)).collect();
        if let Some(pos) = sent_present.iter().zip(&got).position(|(a, b)| a != b) {
            out.push(format!(
                "{shard}: producer {p}'s records arrived as {:?} where {:?} was sent",
                &got[pos..(pos + 3).min(got.len())],
                &sent_present[pos..(pos + 3).min(sent_present.len())]
            ));
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
}
