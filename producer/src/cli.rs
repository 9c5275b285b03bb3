//! `runproduce`: sends the records of `DIR/producer_N.txt` (or a synthetic load) to a cluster and
//! reports what was acknowledged. The binary is a thin `main` over [`run`], so tests drive the
//! same code in-process.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use shardq_protocol::{Acks, ShardSpec};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::logfile::{self, LineError};
use crate::partitioner::Partitioner;
use crate::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerStats};

/// Most bad lines printed before the rest are only counted.
pub const MAX_REPORTED_LINES: usize = 20;
/// Most distinct delivery errors kept for the summary.
const MAX_REPORTED_ERRORS: usize = 10;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "runproduce",
    about = "Send the records of DIR/producer_N.txt (or a synthetic load) to a shardq cluster",
    after_help = "Each line of producer_N.txt is `<time> <message> <partition|*> <topic>`, e.g.\n  21:52:23\tMSG1\t\tP1\t\tT1\nThe whole file is checked before anything is sent. RUST_LOG sets the log level (default warn)."
)]
pub struct Args {
    /// Producer id N: reads DIR/producer_N.txt.
    #[arg(long)]
    pub id: u32,
    /// Shards this producer may send to: T1:P1, T1:1 or T1:* (every partition).
    #[arg(long, num_args = 1.., required = true)]
    pub topics: Vec<ShardSpec>,
    /// The router or any broker: HOST[:PORT] (default port 7400).
    #[arg(long, default_value = "127.0.0.1")]
    pub broker: String,
    /// Directory with producer_N.txt (and where producer_N.acked is written).
    #[arg(long = "log_loc", visible_alias = "log-loc")]
    pub log_loc: Option<PathBuf>,
    /// Synthetic load: send this many records (no log file) spread over --topics.
    #[arg(long)]
    pub count: Option<u64>,
    /// Synthetic load: bytes per record value.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// At most this many records per second, from the file or synthetic (default: as fast as
    /// possible).
    #[arg(long)]
    pub rate: Option<u64>,
    /// When the broker acknowledges: durable (after its fsync policy) or appended.
    #[arg(long, default_value = "durable", value_parser = parse_acks)]
    pub acks: Acks,
    /// How `T:*` records pick a partition: round-robin, key-hash or least-loaded.
    #[arg(long, default_value = "round-robin")]
    pub partitioner: Partitioner,
    /// How long a batch waits for more records.
    #[arg(long = "linger-ms", default_value_t = 2)]
    pub linger_ms: u64,
    /// Largest batch in bytes.
    #[arg(long = "batch-bytes", default_value_t = 64 * 1024)]
    pub batch_bytes: usize,
    /// A record not acknowledged within this many seconds fails.
    #[arg(long = "timeout-secs", default_value_t = 30)]
    pub timeout_secs: u64,
    /// Write DIR/producer_N.acked: `T:P OFFSET MESSAGE` per acknowledged record, in ack order.
    #[arg(long = "ack-log")]
    pub ack_log: bool,
}

fn parse_acks(s: &str) -> Result<Acks, String> {
    match s.to_ascii_lowercase().as_str() {
        "durable" | "all" => Ok(Acks::Durable),
        "appended" | "leader" => Ok(Acks::Appended),
        _ => Err(format!("unknown acks {s:?}; expected durable or appended")),
    }
}

/// The log file was refused: every bad line (up to [`MAX_REPORTED_LINES`]) with its reason.
#[derive(Debug)]
pub struct InvalidInput {
    pub lines: Vec<String>,
    /// Bad lines not listed.
    pub more: usize,
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        if self.more > 0 {
            writeln!(f, "... and {} more bad line(s)", self.more)?;
        }
        write!(f, "nothing was sent")
    }
}

impl std::error::Error for InvalidInput {}

impl InvalidInput {
    fn new(all: Vec<String>) -> Self {
        let more = all.len().saturating_sub(MAX_REPORTED_LINES);
        InvalidInput {
            lines: all.into_iter().take(MAX_REPORTED_LINES).collect(),
            more,
        }
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// The first distinct delivery errors.
    pub errors: Vec<String>,
}

impl Summary {
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.acknowledged == self.sent
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "sent {} acknowledged {} failed {} in {:.3}s: {:.0} msgs/s, {:.2} MB/s",
            self.sent,
            self.acknowledged,
            self.failed,
            secs,
            self.acknowledged as f64 / secs,
            self.bytes as f64 / secs / 1e6
        )
    }
}

/// One record to send, in order.
struct Outgoing {
    target: ShardSpec,
    value: Bytes,
}

/// Runs `runproduce`: validates everything first, then sends in order and waits for every
/// acknowledgement. A refused input file is an [`InvalidInput`] error (downcast to inspect).
pub async fn run(args: Args) -> Result<Summary> {
    if args.topics.is_empty() {
        bail!("--topics needs at least one shard (e.g. T1:P1 or T1:*)");
    }
    let file_name = format!("producer_{}.txt", args.id);
    // Read and parse the file before connecting: a syntax error needs no cluster.
    let parsed = match (args.count, &args.log_loc) {
        (Some(_), _) => None,
        (None, Some(dir)) => {
            let path = dir.join(&file_name);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some(logfile::parse(&file_name, &text))
        }
        (None, None) => {
            bail!("give --log_loc DIR (to send DIR/{file_name}) or --count N (synthetic load)")
        }
    };
    let ack_path = if args.ack_log {
        let dir = args
            .log_loc
            .as_ref()
            .context("--ack-log needs --log_loc DIR to write producer_N.acked into")?;
        Some(dir.join(format!("producer_{}.acked", args.id)))
    } else {
        None
    };

    let config = ProducerConfig {
        linger: Duration::from_millis(args.linger_ms),
        max_batch_bytes: args.batch_bytes.max(1),
        delivery_timeout: Duration::from_secs(args.timeout_secs.max(1)),
        acks: args.acks,
        partitioner: args.partitioner.clone(),
        ..ProducerConfig::new(args.broker.clone())
    };
    let producer = Producer::connect(config)
        .await
        .with_context(|| format!("cannot start a producer against {}", args.broker))?;
    let table = producer.cluster().table();

    let mut bad = logfile::validate_topics(&table, &args.topics);
    let outgoing: Vec<Outgoing> = match parsed {
        Some((records, syntax)) => {
            let mut errors: Vec<LineError> = syntax;
            errors.extend(logfile::validate(
                &file_name,
                &records,
                &table,
                &args.topics,
            ));
            errors.sort_by_key(|e| e.line);
            bad.extend(errors.iter().map(ToString::to_string));
            records
                .into_iter()
                .map(|r| Outgoing {
                    target: r.target,
                    value: Bytes::from(r.message),
                })
                .collect()
        }
        None => Vec::new(),
    };
    if !bad.is_empty() {
        let _ = producer.close().await;
        return Err(InvalidInput::new(bad).into());
    }

    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let acker = tokio::spawn(track_acks(ack_rx, ack_path));
    let start = Instant::now();
    let sent = match args.count {
        Some(n) => send_synthetic(&producer, &args, n, start, &ack_tx).await,
        None => send_all(&producer, outgoing, args.rate, start, &ack_tx).await,
    };
    drop(ack_tx);
    producer.flush().await;
    let stats: ProducerStats = producer.close().await;
    let acks = acker
        .await
        .context("the acknowledgement tracker failed")??;
    let elapsed = start.elapsed();
    let mut errors = acks.errors;
    if let Err(e) = sent {
        errors.insert(0, format!("{e:#}"));
    }
    Ok(Summary {
        sent: stats.sent,
        acknowledged: acks.acknowledged,
        failed: stats.sent - acks.acknowledged.min(stats.sent),
        bytes: stats.bytes,
        elapsed,
        errors,
    })
}

type Pending = (DeliveryFuture, Bytes);

/// Holds the send loop to `rate` records per second (none: as fast as possible), waking once
/// per millisecond's worth of records so a high rate costs few timer waits.
async fn pace(rate: Option<u64>, start: Instant, i: u64) {
    if let Some(rate) = rate.filter(|r| *r > 0) {
        let step = (rate / 1000).max(1);
        if i.is_multiple_of(step) {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        }
    }
}

async fn send_all(
    producer: &Producer,
    records: Vec<Outgoing>,
    rate: Option<u64>,
    start: Instant,
    acks: &mpsc::UnboundedSender<Pending>,
) -> Result<()> {
    for (i, r) in records.into_iter().enumerate() {
        pace(rate, start, i as u64).await;
        let fut = producer
            .send(&r.target, None, r.value.clone())
            .await
            .with_context(|| format!("cannot send to {}", r.target))?;
        // The tracker only goes away if it failed; its error is reported instead.
        let _ = acks.send((fut, r.value));
    }
    Ok(())
}

async fn send_synthetic(
    producer: &Producer,
    args: &Args,
    count: u64,
    start: Instant,
    acks: &mpsc::UnboundedSender<Pending>,
) -> Result<()> {
    let payload = Bytes::from(vec![b'x'; args.size]);
    for i in 0..count {
        pace(args.rate, start, i).await;
        let target = &args.topics[(i % args.topics.len() as u64) as usize];
        let value = synthetic_value(&payload, args.id, i);
        let fut = producer
            .send(target, None, value.clone())
            .await
            .with_context(|| format!("cannot send to {target}"))?;
        if acks.send((fut, value)).is_err() {
            break;
        }
    }
    Ok(())
}

/// A synthetic record: `p<ID>-<SEQ>-` then filler up to the requested size (so every record is
/// distinct and traceable).
fn synthetic_value(filler: &Bytes, id: u32, seq: u64) -> Bytes {
    let tag = format!("p{id}-{seq}-");
    if tag.len() >= filler.len() {
        return Bytes::from(tag);
    }
    let mut v = Vec::with_capacity(filler.len());
    v.extend_from_slice(tag.as_bytes());
    v.extend_from_slice(&filler[tag.len()..]);
    Bytes::from(v)
}

struct AckReport {
    acknowledged: u64,
    errors: Vec<String>,
}

/// Awaits deliveries in send order (per shard that is ack order) and writes the ack log.
async fn track_acks(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    ack_path: Option<PathBuf>,
) -> Result<AckReport> {
    let mut log = match &ack_path {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let mut report = AckReport {
        acknowledged: 0,
        errors: Vec::new(),
    };
    while let Some((fut, value)) = rx.recv().await {
        match fut.await {
            Ok(d) => {
                report.acknowledged += 1;
                if let Some(w) = log.as_mut() {
                    writeln!(
                        w,
                        "{} {} {}",
                        d.shard,
                        d.offset,
                        String::from_utf8_lossy(&value)
                    )
                    .context("cannot write the ack log")?;
                }
            }
            Err(e) => {
                let e = e.to_string();
                if report.errors.len() < MAX_REPORTED_ERRORS && !report.errors.contains(&e) {
                    report.errors.push(e);
                }
            }
        }
    }
    if let Some(mut w) = log {
        w.flush().context("cannot write the ack log")?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_both_log_loc_spellings() {
        let a = Args::try_parse_from([
            "runproduce",
            "--id",
            "3",
            "--topics",
            "T1:P1",
            "T2:*",
            "--broker",
            "h:1",
            "--log_loc",
            "/tmp/x",
        ])
        .unwrap();
        assert_eq!(a.id, 3);
        assert_eq!(
            a.topics,
            vec!["T1:P1".parse().unwrap(), ShardSpec::All("T2".into())]
        );
        assert_eq!(a.log_loc, Some(PathBuf::from("/tmp/x")));
        assert_eq!(a.acks, Acks::Durable);
        let a = Args::try_parse_from([
            "runproduce",
            "--id",
            "1",
            "--topics",
            "T1:*",
            "--log-loc",
            "d",
            "--acks",
            "appended",
            "--partitioner",
            "least-loaded",
            "--linger-ms",
            "5",
            "--batch-bytes",
            "1000",
            "--ack-log",
        ])
        .unwrap();
        assert_eq!(a.log_loc, Some(PathBuf::from("d")));
        assert_eq!(a.acks, Acks::Appended);
        assert!(matches!(a.partitioner, Partitioner::LeastLoaded));
        assert!(a.ack_log);
        assert!(Args::try_parse_from(["runproduce", "--id", "1", "--topics", "T1:P0"]).is_err());
    }

    #[test]
    fn invalid_input_lists_at_most_twenty_lines() {
        let e = InvalidInput::new(
            (1..=25)
                .map(|i| format!("producer_1.txt:{i}: bad"))
                .collect(),
        );
        let shown = e.to_string();
        assert!(shown.contains("producer_1.txt:20: bad"));
        assert!(!shown.contains("producer_1.txt:21: bad"));
        assert!(shown.contains("and 5 more"));
        assert!(shown.ends_with("nothing was sent"));
    }

    #[test]
    fn synthetic_values_are_distinct_and_sized() {
        let filler = Bytes::from(vec![b'x'; 100]);
        let a = synthetic_value(&filler, 1, 7);
        assert_eq!(a.len(), 100);
        assert!(a.starts_with(b"p1-7-x"));
        assert_ne!(a, synthetic_value(&filler, 1, 8));
        assert_eq!(synthetic_value(&Bytes::new(), 2, 5), Bytes::from("p2-5-"));
    }
}
