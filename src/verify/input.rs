//! Reading the run's files: the producers' input files (`producer_N.txt`), the shard prefix of
//! consumer and ack-log lines, `--consumer` arguments, and which producers a directory holds.

use std::path::Path;

use anyhow::{bail, Context, Result};
use shardq_protocol::{parse_partition, validate_topic, ShardId, ShardSpec};

/// A record as the producer's input file names it.
#[derive(Clone, Debug)]
pub(super) struct Sent {
    pub(super) line: usize,
    pub(super) topic: String,
    pub(super) partition: Option<u32>,
    pub(super) msg: String,
}

pub(super) fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Parses `producer_N.txt`: `<time> <message> <partition|*> <topic>` per line.
pub(super) fn parse_producer_file(path: &Path) -> Result<Vec<Sent>> {
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut out = Vec::new();
    for (i, line) in read(path)?.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() {
            continue;
        }
        let [_, msg, part, topic] = fields[..] else {
            bail!(
                "{name}:{}: expected 4 fields `<time> <message> <partition|*> <topic>`, found {}",
                i + 1,
                fields.len()
            );
        };
        validate_topic(topic).map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?;
        let partition = if part == "*" {
            None
        } else {
            Some(parse_partition(part).map_err(|e| anyhow::anyhow!("{name}:{}: {e}", i + 1))?)
        };
        out.push(Sent {
            line: i + 1,
            topic: topic.to_string(),
            partition,
            msg: msg.to_string(),
        });
    }
    Ok(out)
}

/// Splits `T1:P1     MSG` (consumer output) or `T1:P1 OFFSET MSG` (ack log) into the shard and rest.
pub(super) fn split_shard(line: &str) -> Option<(ShardId, &str)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (shard, rest) = line.split_once(char::is_whitespace)?;
    Some((shard.parse().ok()?, rest.trim_start()))
}

/// Parses a `--consumer` argument: `ID=T1:P1,T2:*` (commas or spaces between shards).
pub fn parse_consumer(s: &str) -> Result<(u32, Vec<ShardSpec>)> {
    let (id, subs) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--consumer {s:?}: expected ID=T1:P1,T2:*"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("--consumer {s:?}: {id:?} is not a consumer id"))?;
    let subs = subs
        .split([',', ' '])
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<ShardSpec>()
                .map_err(|e| anyhow::anyhow!("--consumer {s:?}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if subs.is_empty() {
        bail!("--consumer {s:?}: consumer {id} subscribes to no shard (expected ID=T1:P1,T2:*)");
    }
    Ok((id, subs))
}

pub(super) fn discover_producers(dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(id) = name
            .strip_prefix("producer_")
            .and_then(|r| r.strip_suffix(".txt"))
            .and_then(|n| n.parse().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}
