//! `shardq consume T[:P|:*]`: prints records as text (the value, one per line) or JSON (one
//! object per line), from where `--from` says, following new ones until Ctrl-C or `--count`.
//! Offsets are committed only with `--group` (after the records are printed), so a plain
//! consume never moves anyone's position.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use shardq_consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartFrom};
use shardq_protocol::{ShardId, ShardSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The value as it is, one record per line.
    Text,
    /// One JSON object per record: topic, partition, shard, offset, key, timestamp_ms,
    /// headers ([[name, value], ...]) and value.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    /// What to read: `T` or `T:*` (every partition), or one partition `T:P3` (or `T:3`).
    #[arg(value_parser = super::parse_target)]
    pub source: ShardSpec,
    /// Where to start on a shard the group has no committed offset for: earliest, latest, an
    /// OFFSET, or a TIMESTAMP (`@MILLISECONDS` since the Unix epoch, or UTC like
    /// 2026-11-28T08:00:00Z: the first record stamped at or after it).
    #[arg(long, default_value = "earliest")]
    pub from: StartFrom,
    /// Stop after printing this many records (default: follow until Ctrl-C).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Read as a member of this consumer group: it shares the shards with the group's other
    /// members (each shard read by one member at a time), starts at the group's committed
    /// offsets and commits what it printed. Without it nothing is committed.
    #[arg(long)]
    pub group: Option<String>,
}

/// Prints records until Ctrl-C, `--count`, or stdout closing (`| head`). Returns how many
/// were printed.
pub async fn run(bootstrap: &str, args: ConsumeArgs) -> Result<u64> {
    // Without --group, a name no one else uses: nothing is read from it or committed to it.
    let group = args.group.clone().unwrap_or_else(|| {
        format!(
            "shardq-consume-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        )
    });
    let mut config = ConsumerConfig {
        from: args.from,
        max_wait: Duration::from_millis(500),
        membership: args
            .group
            .as_ref()
            .map(|_| shardq_consumer::consumer::Membership {
                client: "shardq-consume".into(),
                ..Default::default()
            }),
        ..ConsumerConfig::new(bootstrap, group, vec![args.source.clone()])
    };
    config.connection.secret = crate::admin::secret();
    config.connection.client_name = "shardq-consume".into();
    let mut consumer = Consumer::connect(config)
        .await
        .with_context(|| format!("cannot read {} from {bootstrap}", args.source))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let limit = args.count.unwrap_or(u64::MAX);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    while printed < limit {
        let records = tokio::select! {
            _ = &mut ctrl_c => break,
            r = consumer.poll() => r,
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                if let Some(topic) = e.unknown_topic() {
                    anyhow::bail!("topic {topic:?} no longer exists (it was deleted)");
                }
                tracing::warn!(error = %e, "poll failed; retrying");
                continue;
            }
        };
        let take = records.len().min((limit - printed) as usize);
        let mut closed = false;
        for r in &records[..take] {
            if let Err(e) = write_record(&mut out, r, args.format) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    closed = true;
                    break;
                }
                return Err(e).context("cannot write to stdout");
            }
            printed += 1;
        }
        if !closed {
            match out.flush() {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => closed = true,
                r => r.context("cannot write to stdout")?,
            }
        }
        // Records handed out but not printed go back, so a group's commit does not skip them.
        for (shard, offset) in first_unprinted(&records, printed_of(&records, take, closed)) {
            consumer.seek(&shard, offset);
        }
        if args.group.is_some() {
            if let Err(e) = consumer.commit().await {
                tracing::warn!(error = %e, "commit failed; the next one retries");
            }
        }
        if closed {
            break;
        }
    }
    if args.group.is_some() {
        // Committed already; a member also hands its shards to the others at once.
        if let Err(e) = consumer.leave().await {
            tracing::warn!(error = %e, "leaving the group failed; its session expires instead");
        }
    }
    consumer.close();
    Ok(printed)
}

/// How many of `records` were printed: `take`, or fewer if stdout closed midway (then none
/// are assumed printed past the last full flush; the group re-reads them).
fn printed_of(records: &[ConsumedRecord], take: usize, closed: bool) -> usize {
    if closed {
        0
    } else {
        take.min(records.len())
    }
}

/// For each shard with records in `records[printed..]`, the offset of its first such record.
fn first_unprinted(records: &[ConsumedRecord], printed: usize) -> BTreeMap<ShardId, u64> {
    let mut first = BTreeMap::new();
    for r in &records[printed..] {
        first.entry(r.shard.clone()).or_insert(r.offset);
    }
    first
}

fn write_record(out: &mut impl Write, r: &ConsumedRecord, format: Format) -> std::io::Result<()> {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match format {
        Format::Text => {
            out.write_all(&r.record.value)?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let v = json!({
                "topic": r.shard.topic,
                "partition": r.shard.partition,
                "shard": r.shard.to_string(),
                "offset": r.offset,
                "key": r.record.key.as_deref().map(text),
                "timestamp_ms": r.record.timestamp_ms,
                "headers": r.record.headers.iter().map(|(k, v)| json!([k, text(v)])).collect::<Vec<_>>(),
                "value": text(&r.record.value),
            });
            serde_json::to_writer(&mut *out, &v)?;
            out.write_all(b"\n")
        }
    }
}
