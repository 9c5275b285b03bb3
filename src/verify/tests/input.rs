//! Tests of reading the input files: ack logs in ack order, malformed producer files, and
//! `--consumer` arguments with no shard.

use super::{spec, write};
use crate::verify::{parse_consumer, verify, VerifySpec};

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
