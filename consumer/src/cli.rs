//! `runconsume`: reads shards for a consumer group and appends every record to
//! `DIR/consumer_N.txt` as `T1:P1     MESSAGE`. The file is flushed after each poll's lines and
//! before the offsets are committed, so a record committed is a record written. The binary is a
//! thin `main` over [`run`], so tests drive the same code in-process.

use shardq_protocol::cli_args::TokenArgs;
use shardq_protocol::client_metrics::{self, RunCounters};
use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use shardq_protocol::cluster::{BreakerArgs, BreakerMode, BreakerStatus};
use shardq_protocol::{CancellationToken, ShardSpec};
use tokio::time::Instant;
use tracing::warn;

use crate::consumer::{Consumer, ConsumerConfig, Membership, StartFrom};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "runconsume",
    about = "Consume shards of a shardq cluster into DIR/consumer_N.txt",
    after_help = "\
Each record is appended to DIR/consumer_N.txt as a line `T1:P1     MESSAGE` (shard, five spaces,
message), in shard order. Lines are flushed as they arrive and offsets are committed only after
their lines are written, so a rerun with the same --id (group) continues where this one stopped.
Only one runconsume at a time may write a given consumer_N.txt; a second one exits with an error.
Stops once the brokers have answered \"nothing new\" for --idle-timeout seconds (fetches that fail
or time out are retried and do not count, nor does time the process was stopped, e.g. by SIGSTOP),
or on Ctrl-C (after writing and committing what it has; a second Ctrl-C quits at once).
Circuit breakers (one per broker, --breaker on by default): after --breaker-failures consecutive
failures of a broker within --breaker-window-ms (connection errors, timeouts, `unavailable` answers,
or the router reporting it down while a fetch waits on it) its breaker opens: the shards it leads are
neither fetched nor committed (they keep their positions) while every other shard is read as
usual. A shard that moves or fails over is followed at once. After --breaker-cooldown-ms one fetch
goes to the broker as a trial (half-open): success closes the breaker, failure opens it again.
Opening is logged as a warning, closing as info; the summary names every breaker that opened.
Exit status: 0 when it stopped that way, 1 on an error, 130 on a second Ctrl-C.
RUST_LOG sets the log level (default warn)."
)]
pub struct Args {
    #[command(flatten)]
    pub token: TokenArgs,
    /// Consumer id N: writes DIR/consumer_N.txt; the group is consumer-N unless --group says
    /// otherwise.
    #[arg(long)]
    pub id: u32,
    /// Shards to read: T1:P1, T1:1 or T1:* (every partition).
    #[arg(long, num_args = 1.., required = true)]
    pub topics: Vec<ShardSpec>,
    /// The router or any broker: HOST[:PORT] (default port 7400).
    #[arg(long, default_value = "127.0.0.1")]
    pub broker: String,
    /// Directory to write consumer_N.txt into (created if missing).
    #[arg(long = "log_loc", visible_alias = "log-loc", value_name = "DIR")]
    pub log_loc: PathBuf,
    /// Consumer group. Without it the group is consumer-N and this consumer reads every
    /// subscribed shard; with it, every runconsume given the same --group shares the shards:
    /// each is read by one member at a time, and they move between members as members join,
    /// leave (Ctrl-C or the idle timeout: committed first) or die (after --session-timeout-ms;
    /// records after the dead member's last commit are read again by the next owner).
    #[arg(long)]
    pub group: Option<String>,
    /// How a --group spreads its shards: sticky (balanced; a join or leave moves only the
    /// shards that must move), range or round-robin. The group keeps its first member's.
    #[arg(long, default_value = "sticky", value_name = "STRATEGY")]
    pub assignment: String,
    /// A --group member that sends no heartbeat for this long loses its shards to the others.
    #[arg(
        long = "session-timeout-ms",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    pub session_timeout_ms: u64,
    /// Where a group with no committed offset starts: earliest or latest.
    #[arg(long, default_value = "earliest")]
    pub from: StartFrom,
    /// Stop after the brokers answered "nothing new" for this many seconds (fractions allowed);
    /// failed or timed-out fetches and time stopped do not count.
    #[arg(long = "idle-timeout", default_value_t = 20.0, value_name = "SECS")]
    pub idle_timeout: f64,
    /// How long one fetch waits on the broker for new records, in milliseconds.
    #[arg(long = "max-wait-ms", default_value_t = 500)]
    pub max_wait_ms: u64,
    /// Per-broker circuit breakers: on (skip the shards of a broker whose breaker is open) or
    /// off.
    #[arg(long, default_value = "on", value_name = "on|off", value_parser = parse_on_off, action = clap::ArgAction::Set)]
    pub breaker: bool,
    #[command(flatten)]
    pub breaker_args: BreakerArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics while the run lasts: every broker's
    /// circuit breaker (state, times opened, requests refused) and the records consumed.
    /// Port 0 picks a free port (printed on stderr).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

impl Args {
    pub fn group(&self) -> String {
        self.group
            .clone()
            .unwrap_or_else(|| format!("consumer-{}", self.id))
    }
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Summary {
    pub records: u64,
    pub elapsed: Duration,
    /// Poll or commit failures (each was retried).
    pub errors: u64,
    /// Whether it stopped because it was asked to (rather than being idle).
    pub stopped: bool,
    /// The brokers' circuit breakers, as the run ended.
    pub breakers: Vec<BreakerStatus>,
    /// It stopped because this topic no longer exists (it was deleted while it was read).
    pub topic_gone: Option<String>,
    /// Records retention or a purge deleted before they were read (skipped by `--from`).
    pub skipped: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "consumed {} records in {:.3}s: {:.0} msgs/s{}",
            self.records,
            secs,
            self.records as f64 / secs,
            if self.errors > 0 {
                format!(" ({} transient errors)", self.errors)
            } else {
                String::new()
            }
        )?;
        let opened: Vec<String> = self
            .breakers
            .iter()
            .filter(|b| b.opened > 0)
            .map(ToString::to_string)
            .collect();
        if self.skipped > 0 {
            write!(
                f,
                "; skipped {} records that retention or a purge deleted before they were read",
                self.skipped
            )?;
        }
        if let Some(t) = &self.topic_gone {
            write!(f, "; stopped: topic {t:?} no longer exists (deleted)")?;
        }
        if !opened.is_empty() {
            write!(f, "; breakers: {}", opened.join(", "))?;
        }
        Ok(())
    }
}

/// Runs `runconsume` until idle for `--idle-timeout` or until `stop` is cancelled; then writes,
/// commits and returns the summary.
pub async fn run(args: Args, stop: CancellationToken) -> Result<Summary> {
    prepare_log_dir(&args.log_loc)?;
    let path = args.log_loc.join(format!("consumer_{}.txt", args.id));
    // Locked before connecting: a second runconsume with the same id stops here, before it
    // consumes (and commits) anything.
    let file = open_output(&path, args.id)?;
    let mut out = BufWriter::with_capacity(256 * 1024, file);

    let mut config = ConsumerConfig {
        from: args.from,
        max_wait: Duration::from_millis(args.max_wait_ms.max(1)),
        breaker: args.breaker_args.config(if args.breaker {
            BreakerMode::FailFast
        } else {
            BreakerMode::Off
        }),
        membership: args.group.as_ref().map(|_| Membership {
            strategy: args.assignment.clone(),
            session_timeout: Duration::from_millis(args.session_timeout_ms.max(500)),
            client: format!("runconsume-{}", args.id),
        }),
        ..ConsumerConfig::new(args.broker.clone(), args.group(), args.topics.clone())
    };
    config.connection.secret = args.token.secret()?;
    let mut consumer = tokio::select! {
        c = Consumer::connect(config) => c.with_context(|| format!("cannot start a consumer against {}", args.broker))?,
        _ = stop.cancelled() => return Ok(Summary { records: 0, elapsed: Duration::ZERO, errors: 0, stopped: true, breakers: Vec::new(), topic_gone: None, skipped: 0 }),
    };
    let consumed = Arc::new(AtomicU64::new(0));
    let metrics = match &args.metrics {
        Some(addr) => {
            let seen = consumed.clone();
            let counters: RunCounters = Arc::new(move || {
                vec![(
                    "records_consumed",
                    "Records consumed and written out",
                    seen.load(Ordering::Relaxed),
                )]
            });
            let (at, task) = client_metrics::serve(addr, consumer.cluster().clone(), counters)
                .await
                .with_context(|| format!("cannot serve --metrics on {addr}"))?;
            eprintln!("runconsume {}: metrics on http://{at}/metrics", args.id);
            Some(task)
        }
        None => None,
    };
    let idle = Duration::from_secs_f64(args.idle_timeout.max(0.0));
    let start = Instant::now();
    let mut summary = Summary {
        records: 0,
        elapsed: Duration::ZERO,
        errors: 0,
        stopped: false,
        breakers: Vec::new(),
        topic_gone: None,
        skipped: 0,
    };
    let mut line = Vec::with_capacity(256);
    loop {
        let polled = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                summary.stopped = true;
                break;
            }
            p = consumer.poll() => p,
        };
        match polled {
            Ok(records) if !records.is_empty() => {
                for r in &records {
                    line.clear();
                    write!(line, "{}     ", r.shard).context("formatting a line")?;
                    line.extend_from_slice(String::from_utf8_lossy(&r.record.value).as_bytes());
                    line.push(b'\n');
                    out.write_all(&line)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                // Written before committed: a crash between the two repeats records in a
                // rerun, it never loses them.
                out.flush()
                    .with_context(|| format!("cannot write {}", path.display()))?;
                summary.records += records.len() as u64;
                consumed.store(summary.records, Ordering::Relaxed);
                if let Err(e) = consumer.commit().await {
                    summary.errors += 1;
                    warn!(error = %e, "commit failed; will retry with the next one");
                }
            }
            Ok(_) => {}
            Err(e) => {
                summary.errors += 1;
                if let Some(topic) = e.unknown_topic() {
                    // Deleted while we read it: retrying cannot help.
                    warn!(topic, "the topic no longer exists (deleted?); stopping");
                    summary.topic_gone = Some(topic.to_string());
                    break;
                }
                warn!(error = %e, "poll failed; retrying");
            }
        }
        // Idle is what the brokers said ("nothing new"), not time passed: a consumer paused or
        // cut off for longer than the timeout must not give up while records wait.
        if consumer.idle() >= idle {
            break;
        }
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))?;
    // Commits; a group member also gives its shards to the others at once.
    if let Err(e) = consumer.leave().await {
        summary.errors += 1;
        warn!(error = %e, "final commit failed");
    }
    summary.breakers = consumer.breakers();
    summary.skipped = consumer.skipped_records();
    if let Some(m) = metrics {
        m.abort();
    }
    consumer.close();
    summary.elapsed = start.elapsed();
    Ok(summary)
}

/// `--log_loc` must be a directory; a missing one is created.
fn prepare_log_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!(
            "--log_loc {} is not a directory: give the directory to write consumer_N.txt into",
            dir.display()
        ),
        Err(_) => std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the --log_loc directory {}", dir.display())),
    }
}

/// Opens consumer_N.txt for appending under an exclusive lock, held until the run ends.
fn open_output(path: &Path, id: u32) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => anyhow::bail!(
            "{} is in use: another runconsume --id {id} is writing to it; \
             run one consumer per id and --log_loc at a time",
            path.display()
        ),
        Err(TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "runconsume",
            "--id",
            "2",
            "--topics",
            "T1:*",
            "T2:P1",
            "--broker",
            "r:7400",
            "--log_loc",
            "/tmp/l",
        ])
        .unwrap();
        assert_eq!(a.group(), "consumer-2");
        assert_eq!(a.from, StartFrom::Earliest);
        assert_eq!(a.idle_timeout, 20.0);
        assert_eq!(a.topics.len(), 2);
        let a = Args::try_parse_from([
            "runconsume",
            "--id",
            "2",
            "--topics",
            "T1:P1",
            "--log-loc",
            "d",
            "--group",
            "g",
            "--from",
            "latest",
            "--idle-timeout",
            "3",
        ])
        .unwrap();
        assert_eq!(a.group(), "g");
        assert_eq!(a.from, StartFrom::Latest);
        assert!(a.breaker);
        assert!(Args::try_parse_from(["runconsume", "--id", "1", "--topics", "T1:P1"]).is_err());
        let a = Args::try_parse_from([
            "runconsume",
            "--id",
            "2",
            "--topics",
            "T1:P1",
            "--log-loc",
            "d",
            "--breaker",
            "off",
            "--breaker-failures",
            "9",
        ])
        .unwrap();
        assert!(!a.breaker);
        assert_eq!(a.breaker_args.failures, 9);
    }

    /// Flags for a run that must fail before it connects (nothing listens on port 1).
    fn offline(dir: &Path) -> Args {
        Args::try_parse_from([
            "runconsume",
            "--id",
            "1",
            "--topics",
            "T1:*",
            "--broker",
            "127.0.0.1:1",
            "--log_loc",
            dir.to_str().unwrap(),
        ])
        .unwrap()
    }

    #[tokio::test]
    async fn log_loc_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("producer_9.txt");
        std::fs::write(&file, "1 A P1 T1\n").unwrap();
        let e = run(offline(&file), CancellationToken::new())
            .await
            .expect_err("refused");
        let e = format!("{e:#}");
        assert_eq!(
            e,
            format!(
                "--log_loc {} is not a directory: give the directory to write consumer_N.txt into",
                file.display()
            )
        );
        // A missing directory is created (the run then fails at connecting).
        let sub = dir.path().join("a/b");
        let e = run(offline(&sub), CancellationToken::new())
            .await
            .expect_err("no cluster");
        assert!(
            format!("{e:#}").contains("cannot start a consumer"),
            "{e:#}"
        );
        assert!(sub.join("consumer_1.txt").is_file());
    }

    #[tokio::test]
    async fn a_second_consumer_with_the_same_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("consumer_1.txt");
        let held = open_output(&path, 1).expect("first lock");
        let e = run(offline(dir.path()), CancellationToken::new())
            .await
            .expect_err("refused");
        assert_eq!(
            format!("{e:#}"),
            format!(
                "{} is in use: another runconsume --id 1 is writing to it; \
                 run one consumer per id and --log_loc at a time",
                path.display()
            )
        );
        drop(held);
        let e = run(offline(dir.path()), CancellationToken::new())
            .await
            .expect_err("no cluster");
        assert!(
            format!("{e:#}").contains("cannot start a consumer"),
            "{e:#}"
        );
    }

    #[test]
    fn summary_reads_well() {
        let s = Summary {
            records: 10,
            elapsed: Duration::from_secs(2),
            errors: 0,
            stopped: false,
            breakers: vec![BreakerStatus {
                broker: 2,
                ..BreakerStatus::default()
            }],
            topic_gone: None,
            skipped: 0,
        };
        assert_eq!(s.to_string(), "consumed 10 records in 2.000s: 5 msgs/s");
        let s = Summary {
            breakers: vec![BreakerStatus {
                broker: 2,
                state: Some(shardq_protocol::cluster::BreakerState::Closed),
                opened: 1,
                rejected: 3,
                ..BreakerStatus::default()
            }],
            ..s
        };
        assert_eq!(
            s.to_string(),
            "consumed 10 records in 2.000s: 5 msgs/s; breakers: broker 2 closed (opened 1x, 3 requests refused)"
        );
        let s = Summary {
            skipped: 7,
            breakers: Vec::new(),
            ..s
        };
        assert_eq!(
            s.to_string(),
            "consumed 10 records in 2.000s: 5 msgs/s; skipped 7 records that retention or a purge \
             deleted before they were read"
        );
    }
}
