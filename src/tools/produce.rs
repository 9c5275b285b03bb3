//! `shardq produce T[:P]`: every line of stdin becomes one record (the whole line, spaces and
//! all; the newline is not part of it), optionally split into a key and a value, with headers.

use std::io::BufRead;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures::stream::{FuturesOrdered, StreamExt};
use shardq_producer::partitioner::Partitioner;
use shardq_producer::{Producer, ProducerConfig};
use shardq_protocol::{Acks, ShardSpec};

/// How many records may wait for their acknowledgement before reading more input.
const IN_FLIGHT: usize = 10_000;

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// Where to send: `T` or `T:*` (the partitioner picks a partition per record), or one
    /// partition `T:P3` (or `T:3`).
    #[arg(value_parser = super::parse_target)]
    pub target: ShardSpec,
    /// Split each line at the first SEP into a key and a value (`--key-separator :` sends
    /// `user-7:hello` with key `user-7`). A line without SEP is sent without a key. Keyed
    /// records to `T` go to the partition their key hashes to.
    #[arg(long, value_name = "SEP")]
    pub key_separator: Option<String>,
    /// A header on every record, NAME=VALUE (repeat for more).
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = super::parse_header)]
    pub headers: Vec<(String, String)>,
    /// Print `T:Pn OFFSET` for every acknowledged record, in input order.
    #[arg(long, short)]
    pub verbose: bool,
    /// When the cluster acknowledges: durable (held by the in-sync replicas) or leader.
    #[arg(long, default_value = "durable", value_parser = shardq_producer::cli::parse_acks)]
    pub acks: Acks,
    /// How unkeyed records sent to `T` pick a partition: round-robin, key-hash or
    /// least-loaded.
    #[arg(long, default_value = "round-robin")]
    pub partitioner: Partitioner,
    /// A record not acknowledged within this many seconds fails.
    #[arg(long, default_value_t = 30)]
    pub timeout_secs: u64,
}

/// Sends stdin as records; returns how many were acknowledged. Fails (after sending what it
/// could) if any record failed, naming the first failure and its input line.
pub async fn run(bootstrap: &str, args: ProduceArgs) -> Result<u64> {
    let mut config = ProducerConfig {
        acks: args.acks,
        partitioner: args.partitioner.clone(),
        delivery_timeout: std::time::Duration::from_secs(args.timeout_secs.max(1)),
        ..ProducerConfig::new(bootstrap)
    };
    config.connection.secret = crate::admin::secret();
    config.connection.client_name = "shardq-produce".into();
    let producer = Producer::connect(config)
        .await
        .with_context(|| format!("cannot reach the cluster at {bootstrap}"))?;
    let headers: Vec<(String, Bytes)> = args
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Bytes::from(v.clone())))
        .collect();
    // Lines are read on a blocking thread: stdin may be a terminal that waits for the user.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(1024);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                        if line.last() == Some(&b'\r') {
                            line.pop();
                        }
                    }
                    if tx.blocking_send(Ok(line)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    let mut pending = FuturesOrdered::new();
    let (mut line_no, mut acked, mut failed) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    let mut settle = |(line, outcome): (u64, Result<shardq_producer::Delivery, _>)| match outcome {
        Ok(d) => {
            acked += 1;
            if args.verbose {
                let d: shardq_producer::Delivery = d;
                println!("{} {}", d.shard, d.offset);
            }
        }
        Err(e) => {
            failed += 1;
            let e: shardq_producer::ProducerError = e;
            first_error.get_or_insert(format!("line {line}: {e}"));
        }
    };
    while let Some(line) = rx.recv().await {
        let line = line.context("cannot read stdin")?;
        line_no += 1;
        let (key, value) = split_key(&line, args.key_separator.as_deref());
        let fut = producer
            .send_with_headers(&args.target, key, value, headers.clone())
            .await
            .with_context(|| format!("cannot send line {line_no}"))?;
        pending.push_back(async move { (line_no, fut.await) });
        while pending.len() >= IN_FLIGHT {
            if let Some(done) = pending.next().await {
                settle(done);
            }
        }
    }
    producer.flush().await;
    while let Some(done) = pending.next().await {
        settle(done);
    }
    producer.close().await;
    if let Some(e) = first_error {
        bail!("{failed} of {line_no} record(s) failed; the first: {e}");
    }
    Ok(acked)
}

/// (key, value) of a line: split at the first `sep` when one is given and present.
fn split_key(line: &[u8], sep: Option<&str>) -> (Option<Bytes>, Bytes) {
    let Some(sep) = sep.map(str::as_bytes).filter(|s| !s.is_empty()) else {
        return (None, Bytes::copy_from_slice(line));
    };
    match line.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (
            Some(Bytes::copy_from_slice(&line[..at])),
            Bytes::copy_from_slice(&line[at + sep.len()..]),
        ),
        None => (None, Bytes::copy_from_slice(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_splits_at_the_first_separator_only() {
        assert_eq!(
            split_key(b"user-7:a:b", Some(":")),
            (Some(Bytes::from("user-7")), Bytes::from("a:b"))
        );
        assert_eq!(
            split_key(b"no sep", Some("::")),
            (None, Bytes::from("no sep"))
        );
        assert_eq!(split_key(b"a b", None), (None, Bytes::from("a b")));
        assert_eq!(
            split_key(b"::x", Some("::")),
            (Some(Bytes::new()), Bytes::from("x"))
        );
    }
}
