//! Tests of placing `*` records by the consumers' receipts: placed records are required on their
//! shard, ambiguous receipts place nothing.

use super::{spec, write};
use crate::verify::verify;

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
