//! Property tests: random runs (repeated texts, `*` records, ack logs with failures) pass, and
//! fail after one corruption, with swaps judged against a brute-force oracle.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use super::{spec, write, Rng};
use crate::verify::verify;

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
