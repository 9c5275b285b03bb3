//! `runproduce`: sends the records of `DIR/producer_N.txt` (or a synthetic load) to a cluster and
//! reports what was acknowledged. The binary is a thin `main` over [`run`], so tests drive the
//! same code in-process.

use shardq_protocol::cli_args::TokenArgs;
use shardq_protocol::client_metrics::{self, RunCounters};
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use shardq_protocol::batch::encoded_record_size;
use shardq_protocol::cluster::{BreakerArgs, BreakerMode, BreakerStatus};
use shardq_protocol::{Acks, CancellationToken, ConnectionConfig, ShardId, ShardSpec};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::logfile::{self, LineError};
use crate::partitioner::Partitioner;
use crate::producer::{DeliveryFuture, Producer, ProducerConfig, ProducerStats};

/// Most bad lines printed before the rest are only counted.
pub const MAX_REPORTED_LINES: usize = 20;
/// Most distinct delivery errors kept for the summary.
const MAX_REPORTED_ERRORS: usize = 10;
/// The broker's default `--max-record-bytes` (key + value of one record).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;
/// Room kept in a frame for the envelope and batch header around a single record.
const FRAME_HEADROOM: usize = 4096;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "runproduce",
    about = "Send the records of DIR/producer_N.txt (or a synthetic load) to a shardq cluster",
    after_help = "\
File mode (--log_loc DIR): each line of DIR/producer_N.txt is `<time> <message> <partition|*> <topic>`,
fields separated by spaces or tabs, e.g.
  21:52:23\tMSG1\t\tP1\t\tT1
A `*` partition lets --partitioner choose. The whole file is checked before anything is sent (syntax,
UTF-8, topics and partitions exist and are within --topics, message size within --max-record-bytes);
each bad line is reported as `producer_N.txt:LINE: why` and nothing is sent.

Synthetic mode (--count N): sends N generated records of --size bytes, rotating over --topics;
producer_N.txt is not read.

Circuit breakers (one per broker): after --breaker-failures consecutive failures of a broker within
--breaker-window-ms (connection errors, timeouts, `unavailable` answers, or the router reporting it
down while a request waits on it more than 1 s) its breaker opens, and records for the shards it
leads stop taking room in the producer's buffer, so the other shards keep flowing:
  --breaker wait       (default) they wait outside the buffer until the shard moves to another broker
                       or the breaker closes, at most --timeout-secs; up to 64 MiB may wait,
                       records beyond that fail at once
  --breaker fail-fast  they fail at once with \"circuit breaker for broker N (ADDR) is open ...\"
  --breaker off        no breakers: every record is retried until --timeout-secs and waits for room
A shard that moves or fails over is followed at once, whatever the old broker's breaker says.
After --breaker-cooldown-ms one trial request goes to the broker (half-open): success closes the
breaker, failure opens it for another cool-down. Opening is logged as a warning, closing as info.

While it runs, a progress line goes to stderr every --progress-secs (5): sent, acknowledged, failed,
rate and ETA. At the end a summary goes to stderr: sent, acknowledged, failed, msgs/s, MB/s, and
the state of every breaker that opened.
Ctrl-C stops sending, waits up to --timeout-secs for outstanding acknowledgements, then prints the
summary; a second Ctrl-C quits at once.
Exit status: 0 when every record was acknowledged; 130 when Ctrl-C stopped it before everything was
sent; 1 on any other error or failed record.
RUST_LOG sets the log level (default warn)."
)]
pub struct Args {
    #[command(flatten)]
    pub token: TokenArgs,
    /// Producer id N: reads DIR/producer_N.txt (and writes DIR/producer_N.acked with --ack-log).
    #[arg(long)]
    pub id: u32,
    /// Shards this producer may send to: T1:P1, T1:1 or T1:* (every partition). Every line of
    /// the file must fall within them; synthetic records rotate over them.
    #[arg(long, num_args = 1.., required = true)]
    pub topics: Vec<ShardSpec>,
    /// The router or any broker: HOST[:PORT] (default port 7400).
    #[arg(long, default_value = "127.0.0.1")]
    pub broker: String,
    /// Directory holding producer_N.txt; producer_N.acked is written there too.
    #[arg(long = "log_loc", visible_alias = "log-loc", value_name = "DIR")]
    pub log_loc: Option<PathBuf>,
    /// Synthetic mode: send this many generated records instead of reading producer_N.txt.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Synthetic mode: bytes per record value (at most --max-record-bytes).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    pub size: usize,
    /// At most this many records per second (default: as fast as possible).
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<u64>,
    /// When the broker acknowledges: durable (after its fsync policy) or appended (before it).
    #[arg(long, default_value = "durable", value_parser = parse_acks)]
    pub acks: Acks,
    /// How `T:*` records pick a partition: round-robin, key-hash or least-loaded. With
    /// key-hash each record is sent with its message text as its key, so equal messages land
    /// on one partition (and consumers see the key).
    #[arg(long, default_value = "round-robin")]
    pub partitioner: Partitioner,
    /// How long a batch waits for more records before it is sent, in milliseconds.
    #[arg(long = "linger-ms", default_value_t = 2)]
    pub linger_ms: u64,
    /// Largest batch in bytes (a single larger record goes alone).
    #[arg(long = "batch-bytes", default_value_t = 64 * 1024)]
    pub batch_bytes: usize,
    /// A record not acknowledged within this many seconds fails (it is retried until then).
    /// Also how long Ctrl-C waits for outstanding acknowledgements.
    #[arg(long = "timeout-secs", default_value_t = 30)]
    pub timeout_secs: u64,
    /// Largest message (record value) in bytes; a larger one is refused before anything is sent.
    /// Keep it at most the brokers' --max-record-bytes (default 1048576 there too).
    #[arg(long = "max-record-bytes", default_value_t = DEFAULT_MAX_RECORD_BYTES, value_name = "BYTES")]
    pub max_record_bytes: usize,
    /// Write DIR/producer_N.acked (needs --log_loc): after a header line, `T:P OFFSET RECORD
    /// MESSAGE` per acknowledged record, in the order the acknowledgements arrive (RECORD is the
    /// record's 1-based position in the input). Only one runproduce at a time may write a given
    /// ack log.
    #[arg(long = "ack-log")]
    pub ack_log: bool,
    /// Every this many seconds, a progress line on stderr (sent, acknowledged, failed, rate,
    /// percent done and ETA); 0: none. A run shorter than this prints none.
    #[arg(long = "progress-secs", default_value_t = 5, value_name = "SECS")]
    pub progress_secs: u64,
    /// What records for a broker whose circuit breaker is open do: wait (outside the buffer,
    /// until the shard moves or the breaker closes, at most --timeout-secs), fail-fast, or off
    /// (no breakers).
    #[arg(long, default_value = "wait", value_name = "MODE")]
    pub breaker: BreakerMode,
    #[command(flatten)]
    pub breaker_args: BreakerArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts: every broker's
    /// circuit breaker (state, times opened, requests refused) and the records sent,
    /// acknowledged and failed. Port 0 picks a free port (printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

pub fn parse_acks(s: &str) -> Result<Acks, String> {
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
    /// Records handed to the producer.
    pub sent: u64,
    pub acknowledged: u64,
    /// Records that were sent or tried but not acknowledged.
    pub failed: u64,
    /// Records of the input never tried: sending stopped early (Ctrl-C or an error).
    pub not_sent: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// The first distinct delivery errors.
    pub errors: Vec<String>,
    /// Sending was stopped by Ctrl-C (the stop token) rather than running to the end.
    pub interrupted: bool,
    /// Records failed at once by an open circuit breaker (included in `failed`).
    pub breaker_refused: u64,
    /// The brokers' circuit breakers, as the run ended.
    pub breakers: Vec<BreakerStatus>,
}

impl Summary {
    /// Every record of the input was sent and acknowledged, and nothing went wrong.
    pub fn ok(&self) -> bool {
        self.failed == 0
            && self.not_sent == 0
            && self.acknowledged == self.sent
            && self.errors.is_empty()
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
        )?;
        match (self.interrupted, self.not_sent) {
            (true, 0) => write!(f, " (interrupted by Ctrl-C after everything was sent)")?,
            (true, n) => write!(f, " (interrupted by Ctrl-C: {n} records not sent)")?,
            (false, 0) => {}
            (false, n) => write!(f, " ({n} records not sent)")?,
        }
        write_breakers(f, &self.breakers, self.breaker_refused)
    }
}

/// `; breakers: broker 3 open (opened 1x, 40 requests refused), ...` for every breaker that
/// opened (nothing when none did), and how many records they failed at once.
pub fn write_breakers(
    f: &mut fmt::Formatter<'_>,
    breakers: &[BreakerStatus],
    refused_records: u64,
) -> fmt::Result {
    let opened: Vec<String> = breakers
        .iter()
        .filter(|b| b.opened > 0)
        .map(ToString::to_string)
        .collect();
    if opened.is_empty() {
        return Ok(());
    }
    write!(f, "; breakers: {}", opened.join(", "))?;
    if refused_records > 0 {
        write!(f, "; {refused_records} records failed fast")?;
    }
    Ok(())
}

/// One record to send, in order.
struct Outgoing {
    target: ShardSpec,
    value: Bytes,
}

/// Runs `runproduce` to the end: validates everything first, then sends in order and waits for
/// every acknowledgement. A refused input file is an [`InvalidInput`] error (downcast to inspect).
pub async fn run(args: Args) -> Result<Summary> {
    run_until(args, CancellationToken::new()).await
}

/// [`run`], but cancelling `stop` (Ctrl-C) stops sending new records; what was sent is still
/// awaited (up to `--timeout-secs`), written to the ack log and counted, and the summary says
/// it was interrupted.
pub async fn run_until(args: Args, stop: CancellationToken) -> Result<Summary> {
    if args.topics.is_empty() {
        bail!("--topics needs at least one shard (e.g. T1:P1 or T1:*)");
    }
    let frame_room = ConnectionConfig::default()
        .max_frame
        .saturating_sub(FRAME_HEADROOM);
    if encoded_record_size(None, args.max_record_bytes) > frame_room {
        bail!(
            "--max-record-bytes {} is more than one frame can carry (at most about {} bytes)",
            args.max_record_bytes,
            frame_room - encoded_record_size(None, 0)
        );
    }
    let file_name = format!("producer_{}.txt", args.id);
    if let Some(dir) = &args.log_loc {
        check_log_dir(dir)?;
    }
    // Read and parse the file before connecting: a syntax error needs no cluster.
    let parsed = match (args.count, &args.log_loc) {
        (Some(_), _) => {
            if args.size > args.max_record_bytes {
                bail!(
                    "--size {} exceeds --max-record-bytes {}: the brokers would refuse every record \
                     (raise --max-record-bytes here and on the brokers, or lower --size)",
                    args.size,
                    args.max_record_bytes
                );
            }
            None
        }
        (None, Some(dir)) => {
            let path = dir.join(&file_name);
            let data =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            Some(logfile::parse_bytes(
                &file_name,
                &data,
                Some(args.max_record_bytes),
            ))
        }
        (None, None) => {
            bail!("give --log_loc DIR (to send DIR/{file_name}) or --count N (synthetic load)")
        }
    };
    // Taken before anything is sent, so a second runproduce with the same id stops here.
    let ack_log = if args.ack_log {
        let dir = args
            .log_loc
            .as_ref()
            .context("--ack-log needs --log_loc DIR to write producer_N.acked into")?;
        Some(open_ack_log(
            &dir.join(format!("producer_{}.acked", args.id)),
            args.id,
        )?)
    } else {
        None
    };

    let delivery_timeout = Duration::from_secs(args.timeout_secs.max(1));
    let mut config = ProducerConfig {
        linger: Duration::from_millis(args.linger_ms),
        max_batch_bytes: args.batch_bytes.max(1),
        delivery_timeout,
        acks: args.acks,
        partitioner: args.partitioner.clone(),
        breaker: args.breaker_args.config(args.breaker),
        ..ProducerConfig::new(args.broker.clone())
    };
    config.connection.secret = args.token.secret()?;
    let connected = tokio::select! {
        p = Producer::connect(config) => p,
        _ = stop.cancelled() => bail!("interrupted before connecting; nothing was sent"),
    };
    let producer = match (connected, &parsed) {
        (Ok(p), _) => p,
        // The lines already known bad say more than the cluster being away.
        (Err(_), Some((_, syntax))) if !syntax.is_empty() => {
            return Err(InvalidInput::new(syntax.iter().map(ToString::to_string).collect()).into())
        }
        (Err(e), _) => {
            return Err(e)
                .with_context(|| format!("cannot start a producer against {}", args.broker))
        }
    };
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
    let give_up = CancellationToken::new();
    let counts = Arc::new(Counts::default());
    let acker = tokio::spawn(track_acks(ack_rx, ack_log, give_up.clone(), counts.clone()));
    let metrics = match &args.metrics {
        Some(addr) => Some(serve_metrics(addr, args.id, &producer, counts.clone()).await?),
        None => None,
    };
    let start = Instant::now();
    let total = args.count.unwrap_or(outgoing.len() as u64);
    let progress = (args.progress_secs > 0).then(|| {
        tokio::spawn(report_progress(
            args.id,
            Duration::from_secs(args.progress_secs),
            total,
            counts.clone(),
        ))
    });
    let sender = Sender {
        producer: &producer,
        rate: args.rate,
        start,
        acks: &ack_tx,
        stop: &stop,
        sent: AtomicU64::new(0),
        counts: &counts,
        keyed: matches!(args.partitioner, Partitioner::KeyHash),
    };
    let outcome = match args.count {
        Some(n) => send_synthetic(&sender, &args, n).await,
        None => send_all(&sender, outgoing).await,
    };
    drop(ack_tx);
    // Every batch is retried at most until its delivery timeout, so this wait is bounded; the
    // margin only guards against a stuck connection.
    let drained = tokio::time::timeout(delivery_timeout + Duration::from_secs(5), producer.flush())
        .await
        .is_ok();
    let stats: ProducerStats = if drained {
        producer.close().await
    } else {
        give_up.cancel();
        producer.stats()
    };
    let acks = acker
        .await
        .context("the acknowledgement tracker failed")??;
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    let elapsed = start.elapsed();
    let mut errors = acks.errors;
    if let Some(e) = &outcome.error {
        errors.insert(0, e.clone());
    }
    if !drained {
        errors.push(format!(
            "gave up waiting for acknowledgements after {:?}",
            delivery_timeout + Duration::from_secs(5)
        ));
    }
    let tried = stats.sent + u64::from(outcome.error.is_some());
    Ok(Summary {
        sent: stats.sent,
        acknowledged: acks.acknowledged,
        failed: tried - acks.acknowledged.min(tried),
        not_sent: total.saturating_sub(tried),
        bytes: stats.bytes,
        elapsed,
        errors,
        interrupted: outcome.interrupted,
        breaker_refused: stats.breaker_refused,
        breakers: stats.breakers,
    })
}

/// `--log_loc` must be a directory (it holds producer_N.txt and producer_N.acked).
fn check_log_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!(
            "--log_loc {} is not a directory: give the directory that holds producer_N.txt",
            dir.display()
        ),
        Err(e) => Err(e).with_context(|| format!("--log_loc {}", dir.display())),
    }
}

/// Opens the ack log for writing under an exclusive lock (held until it is closed), and only
/// then empties it: a second runproduce with the same id fails here without touching it.
fn open_ack_log(path: &Path, id: u32) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => bail!(
            "{} is in use: another runproduce --id {id} is writing its ack log; \
             run one producer per id and --log_loc at a time",
            path.display()
        ),
        Err(TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
    file.set_len(0)
        .with_context(|| format!("cannot truncate {}", path.display()))?;
    Ok(file)
}

/// Records sent, acknowledged and failed so far, for the progress line.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
}

/// Starts `--metrics` on `addr` and says where on stderr.
async fn serve_metrics(
    addr: &str,
    id: u32,
    producer: &Producer,
    counts: Arc<Counts>,
) -> Result<tokio::task::JoinHandle<()>> {
    let counters: RunCounters = Arc::new(move || {
        vec![
            (
                "records_sent",
                "Records handed to the producer",
                counts.sent.load(Ordering::Relaxed),
            ),
            (
                "records_acknowledged",
                "Records the cluster acknowledged",
                counts.acknowledged.load(Ordering::Relaxed),
            ),
            (
                "records_failed",
                "Records that failed",
                counts.failed.load(Ordering::Relaxed),
            ),
        ]
    });
    let (at, task) = client_metrics::serve(addr, producer.cluster().clone(), counters)
        .await
        .with_context(|| format!("cannot serve --metrics on {addr}"))?;
    eprintln!("runproduce {id}: metrics on http://{at}/metrics");
    Ok(task)
}

/// Every `every`: `runproduce N: sent S acknowledged A failed F | R msgs/s | P% | ETA Ts` on
/// stderr, so a long run shows it is alive. Runs until aborted.
async fn report_progress(id: u32, every: Duration, total: u64, counts: Arc<Counts>) {
    let start = Instant::now();
    let mut tick = tokio::time::interval_at(start + every, every);
    loop {
        tick.tick().await;
        let sent = counts.sent.load(Ordering::Relaxed);
        let acked = counts.acknowledged.load(Ordering::Relaxed);
        let failed = counts.failed.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64().max(1e-3);
        let rate = acked as f64 / secs;
        let left = total.saturating_sub(acked + failed);
        let eta = if left == 0 {
            "0s".to_string()
        } else if rate > 0.0 {
            format!("{:.0}s", left as f64 / rate)
        } else {
            "?".to_string()
        };
        eprintln!(
            "runproduce {id}: sent {sent} acknowledged {acked} failed {failed} of {total} | \
             {rate:.0} msgs/s | {}% | ETA {eta}",
            (acked + failed) * 100 / total.max(1)
        );
    }
}

/// A record's delivery, its value, and its 1-based position in the input (send order).
type Pending = (DeliveryFuture, Bytes, u64);

/// First line of an ack log: says its lines are in ack order and carry each record's position
/// in the input, which the verifier sorts them by.
pub const ACK_LOG_HEADER: &str =
    "# shardq ack log v2: SHARD OFFSET RECORD MESSAGE per acknowledged record, in ack order; RECORD is its 1-based position in the input";

/// What the send loop needs besides the records.
struct Sender<'a> {
    producer: &'a Producer,
    rate: Option<u64>,
    start: Instant,
    acks: &'a mpsc::UnboundedSender<Pending>,
    stop: &'a CancellationToken,
    /// Records sent so far (numbers them for the ack log).
    sent: AtomicU64,
    counts: &'a Counts,
    /// `--partitioner key-hash`: the message is the record's key too.
    keyed: bool,
}

/// How a send loop ended.
#[derive(Default)]
struct SendOutcome {
    interrupted: bool,
    /// Sending stopped at a record the producer refused.
    error: Option<String>,
}

impl Sender<'_> {
    /// Holds the loop to `rate` records per second (none: as fast as possible), waking once per
    /// millisecond's worth of records so a high rate costs few timer waits. False when stopped.
    async fn pace(&self, i: u64) -> bool {
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let step = (rate / 1000).max(1);
            if i.is_multiple_of(step) {
                let at = self.start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => return false,
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
        }
        !self.stop.is_cancelled()
    }

    /// Sends one record and hands its delivery to the tracker. `Ok(false)` when stopped (the
    /// record was not sent).
    async fn send(&self, target: &ShardSpec, value: Bytes) -> Result<bool, String> {
        let fut = tokio::select! {
            biased;
            _ = self.stop.cancelled() => return Ok(false),
            f = self.producer.send(target, self.keyed.then(|| value.clone()), value.clone()) => {
                f.map_err(|e| format!("cannot send to {target}: {e}"))?
            }
        };
        let seq = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        self.counts.sent.store(seq, Ordering::Relaxed);
        // The tracker only goes away if it failed; its error is reported instead.
        let _ = self.acks.send((fut, value, seq));
        Ok(true)
    }
}

/// Where a send loop ends after one send: `None` to go on.
fn stop_after(sent: Result<bool, String>) -> Option<SendOutcome> {
    match sent {
        Ok(true) => None,
        Ok(false) => Some(SendOutcome {
            interrupted: true,
            error: None,
        }),
        Err(e) => Some(SendOutcome {
            interrupted: false,
            error: Some(e),
        }),
    }
}

async fn send_all(s: &Sender<'_>, records: Vec<Outgoing>) -> SendOutcome {
    for (i, r) in records.into_iter().enumerate() {
        if !s.pace(i as u64).await {
            return SendOutcome {
                interrupted: true,
                error: None,
            };
        }
        if let Some(end) = stop_after(s.send(&r.target, r.value).await) {
            return end;
        }
    }
    SendOutcome::default()
}

async fn send_synthetic(s: &Sender<'_>, args: &Args, count: u64) -> SendOutcome {
    let payload = Bytes::from(vec![b'x'; args.size]);
    for i in 0..count {
        if !s.pace(i).await {
            return SendOutcome {
                interrupted: true,
                error: None,
            };
        }
        let target = &args.topics[(i % args.topics.len() as u64) as usize];
        let value = synthetic_value(&payload, args.id, i);
        if let Some(end) = stop_after(s.send(target, value).await) {
            return end;
        }
    }
    SendOutcome::default()
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

/// A record's delivery outcome, with its value and position (one future type for the set).
/// Where an outcome goes among outcomes that arrived together: acknowledgements by shard and
/// offset, then failures in sending order.
fn ack_order(
    d: &std::result::Result<crate::producer::Delivery, crate::producer::ProducerError>,
    seq: u64,
) -> (u8, Option<&ShardId>, u64) {
    match d {
        Ok(d) => (0, Some(&d.shard), d.offset),
        Err(_) => (1, None, seq),
    }
}

async fn delivered(
    (fut, value, seq): Pending,
) -> (
    std::result::Result<crate::producer::Delivery, crate::producer::ProducerError>,
    Bytes,
    u64,
) {
    (fut.await, value, seq)
}

/// Writes each acknowledgement to the ack log as it arrives (ack order: one record waiting on a
/// paused broker does not hold back the lines of records other brokers acknowledged meanwhile),
/// each line with the record's position in the input so the verifier can restore send order.
/// Each line goes to the file in one piece, and the file is flushed whenever the tracker would
/// wait, so the log on disk is always whole lines and close behind the acknowledgements. Stops
/// waiting when `give_up` is cancelled.
async fn track_acks(
    mut rx: mpsc::UnboundedReceiver<Pending>,
    log: Option<File>,
    give_up: CancellationToken,
    counts: Arc<Counts>,
) -> Result<AckReport> {
    let mut log = log.map(|f| BufWriter::with_capacity(64 * 1024, f));
    if let Some(w) = log.as_mut() {
        writeln!(w, "{ACK_LOG_HEADER}").context("cannot write the ack log")?;
    }
    let mut report = AckReport {
        acknowledged: 0,
        errors: Vec::new(),
    };
    let mut line = Vec::with_capacity(256);
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    let mut unflushed = false;
    loop {
        // Take everything already sent or already acknowledged without waiting.
        while open {
            match rx.try_recv() {
                Ok(p) => pending.push(delivered(p)),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        let mut done = Vec::new();
        while let Some(Some(d)) = pending.next().now_or_never() {
            done.push(d);
        }
        let waiting = done.is_empty();
        if waiting {
            if !open && pending.is_empty() {
                break;
            }
            if unflushed {
                if let Some(w) = log.as_mut() {
                    w.flush().context("cannot write the ack log")?;
                }
                unflushed = false;
            }
            tokio::select! {
                _ = give_up.cancelled() => break,
                p = rx.recv(), if open => match p {
                    Some(p) => pending.push(delivered(p)),
                    None => open = false,
                },
                Some(d) = pending.next(), if !pending.is_empty() => done.push(d),
            }
            // A batch's records are acknowledged together: take the rest of them too.
            while let Some(Some(d)) = pending.next().now_or_never() {
                done.push(d);
            }
        }
        // Records acknowledged together come out of `pending` in no particular order; the log
        // keeps each shard's offsets in order (one batch in flight per shard, so the offsets
        // of later acknowledgements are always higher).
        if done.len() > 1 {
            done.sort_by(|(a, _, sa), (b, _, sb)| ack_order(a, *sa).cmp(&ack_order(b, *sb)));
        }
        for (delivered, value, seq) in done {
            match delivered {
                Ok(d) => {
                    report.acknowledged += 1;
                    counts.acknowledged.fetch_add(1, Ordering::Relaxed);
                    if let Some(w) = log.as_mut() {
                        line.clear();
                        write!(line, "{} {} {seq} ", d.shard, d.offset).expect("writing to a Vec");
                        line.extend_from_slice(String::from_utf8_lossy(&value).as_bytes());
                        line.push(b'\n');
                        w.write_all(&line).context("cannot write the ack log")?;
                        unflushed = true;
                    }
                }
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    let e = e.to_string();
                    if report.errors.len() < MAX_REPORTED_ERRORS && !report.errors.contains(&e) {
                        report.errors.push(e);
                    }
                }
            }
        }
    }
    if let Some(w) = log.as_mut() {
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

    /// Flags for a run that must fail before it connects (nothing listens on port 1).
    fn offline(extra: &[&str]) -> Args {
        let mut argv = vec!["runproduce", "--id", "5", "--topics", "T1:*"];
        argv.extend_from_slice(&["--broker", "127.0.0.1:1"]);
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    async fn offline_error(extra: &[&str]) -> String {
        let e = run(offline(extra)).await.expect_err("refused");
        format!("{e:#}")
    }

    #[tokio::test]
    async fn a_size_over_the_record_limit_is_refused_up_front() {
        let e = offline_error(&["--count", "1", "--size", "20000000"]).await;
        assert!(
            e.starts_with("--size 20000000 exceeds --max-record-bytes 1048576"),
            "{e}"
        );
        let e =
            offline_error(&["--count", "1", "--size", "200", "--max-record-bytes", "100"]).await;
        assert!(
            e.starts_with("--size 200 exceeds --max-record-bytes 100"),
            "{e}"
        );
        let e = offline_error(&["--count", "1", "--max-record-bytes", "100000000"]).await;
        assert!(e.contains("more than one frame can carry"), "{e}");
    }

    #[tokio::test]
    async fn log_loc_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("producer_5.txt");
        std::fs::write(&file, "1 A P1 T1\n").unwrap();
        let e = offline_error(&["--log_loc", file.to_str().unwrap()]).await;
        assert!(e.contains("is not a directory"), "{e}");
        assert!(e.contains(&file.display().to_string()), "{e}");
    }

    #[tokio::test]
    async fn bad_utf8_and_oversized_lines_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = b"1 small P1 T1\n1 b\xe9d P1 T1\n1 ".to_vec();
        data.extend(std::iter::repeat_n(b'x', 2_000_000));
        data.extend_from_slice(b" P1 T1\n1 after P1 T1\n");
        std::fs::write(dir.path().join("producer_5.txt"), data).unwrap();
        // Checked before connecting: no cluster is needed to find these.
        let e = offline_error(&["--log_loc", dir.path().to_str().unwrap()]).await;
        assert!(e.contains("producer_5.txt:2: not valid UTF-8"), "{e}");
        assert!(
            e.contains(
                "producer_5.txt:3: message of 2000000 bytes exceeds --max-record-bytes 1048576"
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_second_producer_with_the_same_id_cannot_take_the_ack_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("producer_5.acked");
        std::fs::write(&path, "T1:P1 0 kept\n").unwrap();
        let held = open_ack_log(&path, 5).expect("first lock");
        let d = dir.path().to_str().unwrap();
        let e = offline_error(&["--count", "1", "--log_loc", d, "--ack-log"]).await;
        assert!(
            e.contains("producer_5.acked is in use: another runproduce --id 5"),
            "{e}"
        );
        drop(held);
        // The holder emptied it when it took it; the refused one did not touch it.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        // Once released, the next run takes it (and fails later, at connecting).
        let e = offline_error(&["--count", "1", "--log_loc", d, "--ack-log"]).await;
        assert!(e.contains("cannot start a producer"), "{e}");
    }

    #[test]
    fn a_run_is_ok_only_if_everything_was_sent_and_acknowledged() {
        let all = Summary {
            sent: 3,
            acknowledged: 3,
            failed: 0,
            not_sent: 0,
            bytes: 30,
            elapsed: Duration::from_secs(1),
            errors: Vec::new(),
            interrupted: false,
            breaker_refused: 0,
            breakers: Vec::new(),
        };
        assert!(all.ok(), "{all}");
        let refused = Summary {
            sent: 0,
            acknowledged: 0,
            failed: 1,
            errors: vec!["cannot send to T:P1: too large".into()],
            ..all.clone()
        };
        assert!(!refused.ok());
        let stopped = Summary {
            not_sent: 7,
            interrupted: true,
            ..all.clone()
        };
        assert!(!stopped.ok());
        assert!(
            stopped
                .to_string()
                .ends_with("(interrupted by Ctrl-C: 7 records not sent)"),
            "{stopped}"
        );
        assert!(!Summary {
            errors: vec!["x".into()],
            ..all
        }
        .ok());
    }

    #[test]
    fn breaker_flags_parse_and_the_summary_names_opened_breakers() {
        let base = ["runproduce", "--id", "1", "--topics", "T1:*"];
        let a = Args::try_parse_from(base).unwrap();
        assert_eq!(a.breaker, BreakerMode::Wait);
        let c = a.breaker_args.config(a.breaker);
        assert_eq!(
            (c.failures, c.window, c.cooldown),
            (5, Duration::from_secs(10), Duration::from_secs(2))
        );
        let mut argv = base.to_vec();
        argv.extend([
            "--breaker",
            "fail-fast",
            "--breaker-failures",
            "3",
            "--breaker-window-ms",
            "4000",
            "--breaker-cooldown-ms",
            "500",
        ]);
        let a = Args::try_parse_from(argv).unwrap();
        let c = a.breaker_args.config(a.breaker);
        assert_eq!(c.mode, BreakerMode::FailFast);
        assert_eq!(
            (c.failures, c.window, c.cooldown),
            (3, Duration::from_secs(4), Duration::from_millis(500))
        );
        let mut argv = base.to_vec();
        argv.extend(["--breaker", "sometimes"]);
        assert!(Args::try_parse_from(argv).is_err());

        let s = Summary {
            sent: 10,
            acknowledged: 6,
            failed: 4,
            not_sent: 0,
            bytes: 60,
            elapsed: Duration::from_secs(1),
            errors: Vec::new(),
            interrupted: false,
            breaker_refused: 4,
            breakers: vec![
                BreakerStatus {
                    broker: 1,
                    ..BreakerStatus::default()
                },
                BreakerStatus {
                    broker: 3,
                    state: Some(shardq_protocol::cluster::BreakerState::Open),
                    opened: 2,
                    rejected: 7,
                    ..BreakerStatus::default()
                },
            ],
        };
        assert!(
            s.to_string().ends_with(
                "; breakers: broker 3 open (opened 2x, 7 requests refused); 4 records failed fast"
            ),
            "{s}"
        );
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
