//! `shardq topic create|list|describe|alter|delete`.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Result};
use shardq_protocol::{BrokerStatus, Request, Response, Retention, TopicDescription, TopicInfo};

use super::{ask, client, json, render_shards};

pub async fn topic_create(
    bootstrap: &str,
    name: &str,
    partitions: u32,
    replication_factor: Option<u32>,
    min_insync: Option<u32>,
    retention: Retention,
    as_json: bool,
) -> Result<()> {
    match ask(
        bootstrap,
        Request::CreateTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            min_insync,
            retention,
        },
    )
    .await?
    {
        Response::TopicCreated(t) => {
            if as_json {
                println!("{}", json::topic(&t));
                return Ok(());
            }
            println!("topic {} with {}", t.name, settings(&t));
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

pub async fn topic_list(bootstrap: &str, as_json: bool) -> Result<()> {
    match ask(bootstrap, Request::ListTopics).await? {
        Response::Topics(ts) => {
            if as_json {
                let v: Vec<_> = ts.iter().map(json::topic).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            if ts.is_empty() {
                println!("no topics");
            }
            for t in ts {
                println!("{:<30} {}", t.name, settings(&t));
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

pub async fn topic_describe(bootstrap: &str, name: &str, as_json: bool) -> Result<()> {
    let c = client(bootstrap).await?;
    let d = match c
        .admin(Request::DescribeTopic {
            name: name.to_string(),
        })
        .await?
    {
        Response::Topic(d) => d,
        other => bail!("unexpected answer {}", other.name()),
    };
    let down = match c.admin(Request::ListBrokers).await? {
        Response::Brokers(bs) => bs
            .iter()
            .filter(|b| b.status == BrokerStatus::Down)
            .map(|b| b.addr.id)
            .collect(),
        other => bail!("unexpected answer {}", other.name()),
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json::topic_description(&d, &down))?
        );
    } else {
        print!("{}", render_topic(&d, &down));
    }
    Ok(())
}

fn render_topic(d: &TopicDescription, down: &BTreeSet<u32>) -> String {
    let mut s = format!("topic {} ({})\n", d.topic.name, settings(&d.topic));
    s.push_str(&render_shards(&d.shards, down));
    s
}

/// `4 partition(s), replication factor 3, min in-sync 2, retention forever`: a topic's settings
/// as every command prints them.
pub(crate) fn settings(t: &TopicInfo) -> String {
    format!(
        "{} partition(s), replication factor {}, min in-sync {}, retention {}",
        t.partitions,
        t.replication_factor,
        t.min_insync,
        retention_text(t)
    )
}

/// `forever`, or e.g. `7d, 10.0 MB (5.0 MB per partition)`.
fn retention_text(t: &TopicInfo) -> String {
    let r = t.retention;
    if r.is_forever() {
        return "forever".into();
    }
    let mut parts = Vec::new();
    if let Some(ms) = r.ms {
        parts.push(human_ms(ms));
    }
    if let (Some(b), Some(per)) = (r.bytes, r.shard_bytes(t.partitions)) {
        parts.push(format!(
            "{} ({} per partition)",
            super::human_bytes(b),
            super::human_bytes(per)
        ));
    }
    parts.join(", ")
}

fn human_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    UNITS
        .iter()
        .find(|(f, _)| ms >= *f && ms.is_multiple_of(*f))
        .map_or(format!("{ms} ms"), |(f, u)| format!("{}{u}", ms / f))
}

/// What `shardq topic alter` changes (None: unchanged; `Some(None)`: the limit is lifted).
#[derive(Debug, Default)]
pub struct TopicAlter {
    pub partitions: Option<u32>,
    pub retention_ms: Option<Option<u64>>,
    pub retention_bytes: Option<Option<u64>>,
}

/// `shardq topic alter T [--partitions N] [--retention-ms D] [--retention-bytes B]`.
pub async fn topic_alter(
    bootstrap: &str,
    name: &str,
    change: TopicAlter,
    as_json: bool,
) -> Result<()> {
    if change.partitions.is_none()
        && change.retention_ms.is_none()
        && change.retention_bytes.is_none()
    {
        bail!("nothing to change: give --partitions, --retention-ms or --retention-bytes");
    }
    let grows = change.partitions.is_some();
    let request = Request::AlterTopic {
        name: name.to_string(),
        partitions: change.partitions,
        retention_ms: change.retention_ms,
        retention_bytes: change.retention_bytes,
    };
    match ask(bootstrap, request).await? {
        Response::TopicAltered(t) => {
            if as_json {
                println!("{}", json::topic(&t));
                return Ok(());
            }
            if grows {
                println!(
                    "topic {} has {} partition(s) now (replication factor {}); producers to \
                     {}:* use the new ones once they refresh their routing",
                    t.name, t.partitions, t.replication_factor, t.name
                );
            }
            println!("topic {} keeps records: {}", t.name, retention_text(&t));
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

/// `shardq topic purge T`: deletes every committed record; prints each shard's log after.
pub async fn topic_purge(bootstrap: &str, name: &str, as_json: bool) -> Result<()> {
    let request = Request::PurgeTopic {
        name: name.to_string(),
    };
    let shards = match ask(bootstrap, request).await? {
        Response::TopicPurged { shards, .. } => shards,
        other => bail!("unexpected answer {}", other.name()),
    };
    let failed = shards.iter().filter(|s| s.result.is_err()).count();
    if as_json {
        let v: Vec<_> = shards
            .iter()
            .map(|s| match &s.result {
                Ok(r) => serde_json::json!({
                    "shard": s.shard.to_string(), "start": r.start, "end": r.end,
                    "deleted": r.deleted,
                }),
                Err(e) => {
                    serde_json::json!({ "shard": s.shard.to_string(), "error": e.to_string() })
                }
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for s in &shards {
            match &s.result {
                Ok(r) => println!(
                    "{:<24} deleted {:>10} record(s); the log now starts at {} (end {})",
                    s.shard.to_string(),
                    r.deleted,
                    r.start,
                    r.end
                ),
                Err(e) => println!("{:<24} NOT purged: {e}", s.shard.to_string()),
            }
        }
    }
    if failed > 0 {
        bail!("{failed} shard(s) of {name} could not be purged; run it again once their leaders are up");
    }
    if !as_json {
        println!(
            "topic {name} purged; consumers below the new log starts move on by their --from \
             policy, and offsets are never reused"
        );
    }
    Ok(())
}

/// `shardq topic delete T`: its routes go now; unless `no_wait`, waits (up to `timeout`) until
/// every replica's copy is deleted, printing who it waits for.
pub async fn topic_delete(
    bootstrap: &str,
    name: &str,
    no_wait: bool,
    timeout: Duration,
    as_json: bool,
) -> Result<()> {
    let c = client(bootstrap).await?;
    let (partitions, copies) = match c
        .admin(Request::DeleteTopic {
            name: name.to_string(),
        })
        .await?
    {
        Response::TopicDeleted {
            partitions, copies, ..
        } => (partitions, copies),
        other => bail!("unexpected answer {}", other.name()),
    };
    if !as_json {
        println!(
            "topic {name} deleted: {partitions} partition(s); {copies} replica cop{} being deleted",
            if copies == 1 { "y is" } else { "ies are" }
        );
    }
    let left = if no_wait {
        None
    } else {
        Some(wait_dropped(&c, name, timeout, as_json).await?)
    };
    if as_json {
        println!(
            "{}",
            serde_json::json!({
                "topic": name, "partitions": partitions, "copies": copies,
                "copies_left": left,
            })
        );
    }
    Ok(())
}

/// Waits until no broker holds a copy of `name`'s shards, as the brokers report it; returns
/// how many copies are left when `timeout` passed (0: all gone).
async fn wait_dropped(
    c: &shardq_protocol::cluster::ClusterClient,
    name: &str,
    timeout: Duration,
    quiet: bool,
) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_said = None;
    loop {
        let held = match c.admin(Request::ListBrokers).await? {
            Response::Brokers(bs) => bs
                .iter()
                .filter(|b| b.status != BrokerStatus::Up)
                .map(|b| b.addr.id)
                .collect::<BTreeSet<u32>>(),
            other => bail!("unexpected answer {}", other.name()),
        };
        let copies = match c.admin(Request::Status).await? {
            Response::Status(st) => st
                .pending_drops
                .iter()
                .filter(|(_, s)| s.topic == name)
                .count(),
            other => bail!("unexpected answer {}", other.name()),
        };
        if copies == 0 {
            if !quiet {
                println!("every copy of {name} is deleted; the name can be used again");
            }
            return Ok(0);
        }
        if tokio::time::Instant::now() >= deadline {
            if !quiet {
                println!(
                    "{copies} cop{} of {name} not deleted yet{}: brokers delete theirs when \
                     they are up; `shardq topic create {name}` is refused until then",
                    if copies == 1 { "y" } else { "ies" },
                    if held.is_empty() {
                        String::new()
                    } else {
                        format!(" (brokers not up: {held:?})")
                    }
                );
            }
            return Ok(copies);
        }
        if !quiet && last_said != Some(copies) {
            println!(
                "waiting for {copies} cop{} to be deleted...",
                if copies == 1 { "y" } else { "ies" }
            );
            last_said = Some(copies);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
