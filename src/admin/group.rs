//! `shardq group list|describe|reset-offsets`: consumer groups, their live members and
//! assignment (from the router's coordinator) and their committed offsets (from the brokers).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use shardq_consumer::StartFrom;
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{
    FetchRequest, GroupDescription, Offset, Request, Response, ShardId, ShardSpec,
};
use tokio::time::Instant;

use super::{ask, client};

pub async fn group_list(bootstrap: &str, as_json: bool) -> Result<()> {
    match ask(bootstrap, Request::ListGroups).await? {
        Response::Groups(names) => {
            if as_json {
                println!("{}", json!(names));
            } else if names.is_empty() {
                println!("no consumer groups (none with live members or committed offsets)");
            } else {
                for n in names {
                    println!("{n}");
                }
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

async fn describe(c: &ClusterClient, group: &str) -> Result<GroupDescription> {
    match c
        .admin(Request::DescribeGroup {
            group: group.to_string(),
        })
        .await?
    {
        Response::Group(g) => Ok(g),
        other => bail!("unexpected answer {}", other.name()),
    }
}

fn ids(shards: &[ShardId]) -> String {
    if shards.is_empty() {
        return "-".into();
    }
    shards
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

pub async fn group_describe(bootstrap: &str, group: &str, as_json: bool) -> Result<()> {
    let g = describe(&client(bootstrap).await?, group).await?;
    if as_json {
        let v = json!({
            "group": g.name,
            "strategy": g.strategy,
            "generation": g.generation,
            "members": g.members.iter().map(|m| json!({
                "member_id": m.member_id, "client": m.client,
                "subscriptions": m.subscriptions.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "owned": m.owned.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "target": m.target.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "last_seen_ms": m.last_seen_ms,
            })).collect::<Vec<_>>(),
            "offsets": g.offsets.iter().map(|(s, committed, end)| json!({
                "shard": s.to_string(), "committed": committed, "end": end,
                "lag": end.saturating_sub(*committed),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "group {} ({} member(s), strategy {}, generation {})",
        g.name,
        g.members.len(),
        g.strategy,
        g.generation
    );
    for m in &g.members {
        let moving: Vec<ShardId> = m
            .target
            .iter()
            .filter(|s| !m.owned.contains(s))
            .cloned()
            .collect();
        println!(
            "  {} ({}): {} shard(s): {}{}",
            m.member_id,
            m.client,
            m.owned.len(),
            ids(&m.owned),
            if moving.is_empty() {
                String::new()
            } else {
                format!(" (taking over {})", ids(&moving))
            }
        );
    }
    if g.offsets.is_empty() {
        println!("no committed offsets yet");
    } else {
        println!(
            "  {:<24} {:>12} {:>12} {:>10}",
            "shard", "committed", "end", "lag"
        );
        for (s, committed, end) in &g.offsets {
            println!(
                "  {:<24} {:>12} {:>12} {:>10}",
                s.to_string(),
                committed,
                end,
                end.saturating_sub(*committed)
            );
        }
    }
    Ok(())
}

const PER_TRY: Duration = Duration::from_secs(5);
const DEADLINE: Duration = Duration::from_secs(30);

/// One request to `shard`'s leader (following moves and failovers for up to 30 s).
async fn on_shard(
    c: &ClusterClient,
    shard: &ShardId,
    make: impl Fn(shardq_protocol::Epoch) -> Request,
) -> Result<Response> {
    c.shard_request(shard, make, PER_TRY, Instant::now() + DEADLINE)
        .await
        .with_context(|| format!("request to {shard} failed"))
}

async fn offsets(c: &ClusterClient, shard: &ShardId) -> Result<(Offset, Offset)> {
    let answer = on_shard(c, shard, |epoch| Request::ListOffsets {
        shard: shard.clone(),
        epoch,
    })
    .await?;
    match answer {
        Response::Offsets { start, end } => Ok((start, end)),
        other => bail!("unexpected answer {}", other.name()),
    }
}

/// The first offset of `shard` whose record is stamped at or after `t` (its end if none),
/// read from the log start.
async fn offset_for_time(c: &ClusterClient, shard: &ShardId, t: u64) -> Result<Offset> {
    let (mut at, end) = offsets(c, shard).await?;
    while at < end {
        let answer = on_shard(c, shard, |epoch| {
            Request::Fetch(FetchRequest {
                shard: shard.clone(),
                epoch,
                offset: at,
                max_bytes: 1 << 20,
                max_wait_ms: 0,
            })
        })
        .await?;
        let Response::Fetched { batches, .. } = answer else {
            bail!("unexpected answer {}", answer.name());
        };
        if batches.is_empty() {
            break;
        }
        for b in &batches {
            for (offset, r) in b.records_from(at) {
                if r.timestamp_ms >= t {
                    return Ok(offset);
                }
                at = offset + 1;
            }
        }
    }
    Ok(end)
}

/// `shardq group reset-offsets G --to WHERE [--shard T:P|T:*]...`: commits new offsets for a
/// group with no live members (its shards, or the ones named).
pub async fn group_reset_offsets(
    bootstrap: &str,
    group: &str,
    to: StartFrom,
    shards: &[ShardSpec],
    as_json: bool,
) -> Result<()> {
    let c = client(bootstrap).await?;
    let g = describe(&c, group).await?;
    if !g.members.is_empty() {
        bail!(
            "group {group} has {} live member(s) ({}): stop them first, so none of them commits \
             over the new offsets",
            g.members.len(),
            g.members
                .iter()
                .map(|m| m.client.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let targets: Vec<ShardId> = if shards.is_empty() {
        g.offsets.iter().map(|(s, _, _)| s.clone()).collect()
    } else {
        let table = c
            .refresh(
                &shards
                    .iter()
                    .map(|s| s.topic().to_string())
                    .collect::<Vec<_>>(),
            )
            .await?;
        shardq_consumer::resolve(&table, shards)?
    };
    if targets.is_empty() {
        bail!("group {group} has no committed offsets; name the shards with --shard T:P or T:*");
    }
    let mut done = Vec::new();
    for shard in &targets {
        let (start, end) = offsets(&c, shard).await?;
        let new = match to {
            StartFrom::Earliest => start,
            StartFrom::Latest => end,
            StartFrom::Offset(o) => o.clamp(start, end),
            StartFrom::Timestamp(t) => offset_for_time(&c, shard, t).await?,
        };
        let answer = on_shard(&c, shard, |epoch| Request::CommitOffset {
            shard: shard.clone(),
            epoch,
            group: group.to_string(),
            offset: new,
        })
        .await?;
        if !matches!(answer, Response::Committed) {
            bail!("unexpected answer {}", answer.name());
        }
        let old = g
            .offsets
            .iter()
            .find(|(s, _, _)| s == shard)
            .map(|(_, o, _)| *o);
        done.push((shard.clone(), old, new));
    }
    if as_json {
        let v: Vec<_> = done
            .iter()
            .map(|(s, old, new)| json!({ "shard": s.to_string(), "from": old, "to": new }))
            .collect();
        println!("{}", json!({ "group": group, "reset": v }));
    } else {
        for (s, old, new) in done {
            println!(
                "{group} {s}: {} -> {new}",
                old.map_or("-".to_string(), |o| o.to_string())
            );
        }
    }
    Ok(())
}

/// `shardq group delete G`: its committed offsets go from every shard (refused while it has
/// live members); a consumer of that group starts again by its `--from` policy.
pub async fn group_delete(bootstrap: &str, group: &str, as_json: bool) -> Result<()> {
    let request = Request::DeleteGroup {
        group: group.to_string(),
    };
    match ask(bootstrap, request).await? {
        Response::GroupDeleted { group, shards } => {
            if as_json {
                println!("{}", json!({ "group": group, "shards": shards }));
            } else {
                println!(
                    "consumer group {group} deleted: its committed offsets are gone from all \
                     {shards} shard(s); a consumer joining it starts by its --from policy"
                );
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}
