//! Tests of the order check with repeated texts: each producer's order is kept across producers
//! and `*` records, and a search over its budget is undecided rather than a verdict.

use super::{spec, write};
use crate::verify::{verify, verify_with_budget};

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
