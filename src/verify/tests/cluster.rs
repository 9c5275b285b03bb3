//! Tests on modelled cluster runs with heavily repeated texts: ack-logged offsets decide them
//! fast, corruptions fail, and one producer without an ack log is dealt out in order.

use std::fmt::Write as _;
use std::path::Path;

use shardq_protocol::ShardSpec;

use super::{spec, write, Rng};
use crate::verify::{verify, verify_with_budget, VerifyReport};

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
