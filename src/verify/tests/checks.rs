//! Tests of the count checks and reports: each fault is caught (missing, duplicate, unexpected),
//! failed records are optional, long messages are cut, and large unique runs are fast.

use std::fmt::Write as _;

use super::{spec, write};
use crate::verify::verify;

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
    // Not a benchmark: a guard against a quadratic search, which takes minutes here. A debug
    // build needs about 4 s on an idle 2-core machine, and twice that next to other builds.
    assert!(took.as_secs_f64() < 30.0, "took {took:?}");
}
