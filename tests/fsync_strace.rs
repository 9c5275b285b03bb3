//! What `--fsync` does at the system-call level, seen through strace on a real `shardq broker`:
//! under `always` every acknowledgement is preceded by an `fdatasync`/`fsync` of the segment file
//! holding the record, then of sled's database file, after the record arrived and was written;
//! under `interval=100` such a sync happens at
//! least every 100 ms (+ slack) while writes arrive, and write-ahead segments are deleted only
//! after a sync. (sled's own `flush()` only calls `sync_file_range`, which leaves the disk's
//! write cache and the file size unsynced: before this test's fix there was no sync at all.)

mod storage_common;

use std::time::{Duration, Instant};

use storage_common::{assign, produce, shard, Call, TracedBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_always_syncs_the_database_file_before_every_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TracedBroker::start(dir.path(), "always");
    let conn = broker.connect().await;
    let s = shard();
    assign(&conn, &s).await;
    const N: usize = 20;
    for i in 0..N {
        // One produce at a time: between its request and its answer the trace holds exactly
        // this record's way to disk.
        let value = format!("STRACEMARK{i:04}X").into_bytes();
        produce(&conn, &s, &[value]).await.expect("produce");
    }
    // One more round trip, not checked: the broker was killed right after the last marked
    // answer's send, which then sometimes never reached the trace (strace held the call).
    produce(&conn, &s, &[b"STRACEEND".to_vec()])
        .await
        .expect("produce");
    drop(conn);
    let calls = broker.finish();

    let syncs = calls.iter().filter(|c| c.is_db_sync()).count();
    eprintln!("fsync always: {syncs} syncs of the database file for {N} produces");
    assert!(
        syncs >= N,
        "{syncs} fsync/fdatasync calls on the database file for {N} acknowledged produces"
    );
    for i in 0..N {
        let mark = format!("STRACEMARK{i:04}X");
        let received = calls
            .iter()
            .position(|c| c.is_socket_read() && c.text.contains(&mark))
            .unwrap_or_else(|| panic!("the request carrying {mark} is not in the trace"));
        let acked = received
            + 1
            + calls[received + 1..]
                .iter()
                .position(Call::is_socket_write)
                .unwrap_or_else(|| panic!("no answer after the request carrying {mark}"));
        let between = &calls[received + 1..acked];
        let written = between
            .iter()
            .position(|c| c.name.starts_with("pwrite") && c.on_db() && c.ok())
            .unwrap_or_else(|| {
                panic!("record {mark}: no write to the database file before its ack")
            });
        let calls_text = || {
            between
                .iter()
                .map(|c| c.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            between[written + 1..].iter().any(Call::is_db_sync),
            "record {mark}: acknowledged without an fsync/fdatasync of the database file after \
             its write; calls between request and ack:\n{}",
            calls_text()
        );
        // The record itself is in a segment file: synced after its write, and before the
        // database (whose entry points at it) is.
        let payload = between
            .iter()
            .position(|c| c.name.starts_with("pwrite") && c.on_segment() && c.ok())
            .unwrap_or_else(|| {
                panic!(
                    "record {mark}: no write to a segment file before its ack:\n{}",
                    calls_text()
                )
            });
        let synced = payload
            + 1
            + between[payload + 1..]
                .iter()
                .position(Call::is_segment_sync)
                .unwrap_or_else(|| {
                    panic!(
                        "record {mark}: acknowledged without syncing the segment file it was \
                         written to:\n{}",
                        calls_text()
                    )
                });
        assert!(
            between[synced + 1..].iter().any(Call::is_db_sync),
            "record {mark}: the database was not synced after the segment file:\n{}",
            calls_text()
        );
    }
}

/// The bound on the time between two syncs under `interval=100`: the interval, plus the flush
/// itself and scheduling under strace on a small shared machine.
const INTERVAL_BOUND: Duration = Duration::from_millis(100 + 200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_interval_syncs_the_database_file_every_interval_while_writes_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TracedBroker::start(dir.path(), "interval=100");
    let conn = broker.connect().await;
    let s = shard();
    assign(&conn, &s).await;
    // A steady stream for 2 s: a record every 5 ms.
    let until = Instant::now() + Duration::from_secs(2);
    let mut i = 0u64;
    while Instant::now() < until {
        let value = format!("IVMARK{i:06}X").into_bytes();
        produce(&conn, &s, &[value]).await.expect("produce");
        i += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = format!("IVMARK{:06}X", i - 1);
    drop(conn);
    let calls = broker.finish();

    let first = calls
        .iter()
        .find(|c| c.is_socket_read() && c.text.contains("IVMARK000000X"))
        .expect("the first record's request is in the trace")
        .at_us;
    let end = calls
        .iter()
        .find(|c| c.is_socket_read() && c.text.contains(&last))
        .expect("the last record's request is in the trace")
        .at_us;
    let syncs: Vec<u64> = calls
        .iter()
        .filter(|c| c.is_db_sync() && c.at_us >= first && c.at_us <= end)
        .map(|c| c.at_us)
        .collect();
    let mut points = vec![first];
    points.extend(&syncs);
    points.push(end);
    let worst = points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    eprintln!(
        "fsync interval=100: {} syncs in {} ms of writes, longest stretch without one {} ms",
        syncs.len(),
        (end - first) / 1000,
        worst / 1000
    );
    assert!(
        !syncs.is_empty() && worst <= INTERVAL_BOUND.as_micros() as u64,
        "{} syncs of the database file in {} ms of writes; longest stretch without one: {} ms \
         (bound {} ms)",
        syncs.len(),
        (end - first) / 1000,
        worst / 1000,
        INTERVAL_BOUND.as_millis()
    );

    // A write-ahead segment goes only once a sync covers it: between the rotation that closed
    // it (the next segment's creation) and its deletion there is a sync.
    let mut last_rotation = None;
    let mut synced_since_rotation = false;
    let mut deleted = 0;
    for c in &calls {
        if c.name == "openat" && c.text.contains("/wal/") && c.text.contains("O_CREAT") {
            last_rotation = Some(c);
            synced_since_rotation = false;
        } else if c.is_db_sync() {
            synced_since_rotation = true;
        } else if c.name.starts_with("unlink") && c.text.contains("/wal/") {
            deleted += 1;
            assert!(
                last_rotation.is_some() && synced_since_rotation,
                "a write-ahead segment was deleted without a sync after its rotation: {}",
                c.text
            );
        }
    }
    assert!(deleted > 0, "no write-ahead segment was ever retired");
}
