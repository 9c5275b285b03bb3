//! Admin commands that talk to a running cluster: topics, brokers, status.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{
    BrokerStatus, ClusterStatus, ConnectionConfig, Request, Response, TopicDescription,
};

pub async fn client(bootstrap: &str) -> Result<ClusterClient> {
    let cfg = ConnectionConfig {
        client_name: "shardq-cli".into(),
        ..ConnectionConfig::default()
    };
    ClusterClient::connect(bootstrap, cfg)
        .await
        .with_context(|| format!("cannot reach the cluster at {bootstrap}"))
}

async fn ask(bootstrap: &str, req: Request) -> Result<Response> {
    let c = client(bootstrap).await?;
    Ok(c.admin(req).await?)
}

pub async fn topic_create(bootstrap: &str, name: &str, partitions: u32) -> Result<()> {
    match ask(
        bootstrap,
        Request::CreateTopic {
            name: name.to_string(),
            partitions,
        },
    )
    .await?
    {
        Response::TopicCreated(t) => {
            println!("topic {} with {} partition(s)", t.name, t.partitions);
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

pub async fn topic_list(bootstrap: &str) -> Result<()> {
    match ask(bootstrap, Request::ListTopics).await? {
        Response::Topics(ts) => {
            if ts.is_empty() {
                println!("no topics");
            }
            for t in ts {
                println!("{:<30} {} partition(s)", t.name, t.partitions);
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

pub async fn topic_describe(bootstrap: &str, name: &str) -> Result<()> {
    match ask(
        bootstrap,
        Request::DescribeTopic {
            name: name.to_string(),
        },
    )
    .await?
    {
        Response::Topic(d) => {
            print!("{}", render_topic(&d));
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

fn render_topic(d: &TopicDescription) -> String {
    let mut s = format!(
        "topic {} ({} partitions)\n",
        d.topic.name, d.topic.partitions
    );
    s.push_str(&render_shards(&d.shards));
    s
}

fn render_shards(
    shards: &[(
        shardq_protocol::ShardRoute,
        Option<shardq_protocol::ShardReport>,
    )],
) -> String {
    let mut s = format!(
        "{:<24} {:<8} {:>12} {:>12}  groups (committed/lag)\n",
        "shard", "owner", "end offset", "bytes"
    );
    for (route, report) in shards {
        let owner = route
            .owner
            .as_ref()
            .map_or("-".to_string(), |o| o.id.to_string());
        let owner = if route.moving {
            format!("{owner}*")
        } else {
            owner
        };
        let (end, bytes, groups) = match report {
            Some(r) => (
                r.end_offset.to_string(),
                r.bytes.to_string(),
                r.groups
                    .iter()
                    .map(|(g, o)| format!("{g}={o}/{}", r.end_offset.saturating_sub(*o)))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            None => ("?".into(), "?".into(), String::new()),
        };
        s.push_str(&format!(
            "{:<24} {:<8} {:>12} {:>12}  {}\n",
            route.shard.to_string(),
            owner,
            end,
            bytes,
            groups
        ));
    }
    s
}

pub fn render_status(st: &ClusterStatus) -> String {
    let mut s = format!("routing epoch {}\n\nbrokers:\n", st.epoch);
    let mut per_broker: BTreeMap<u32, usize> = BTreeMap::new();
    for (route, _) in &st.shards {
        if let Some(o) = &route.owner {
            *per_broker.entry(o.id).or_default() += 1;
        }
    }
    s.push_str(&format!(
        "  {:<4} {:<22} {:<8} {:>6} {:>7} {:>10}\n",
        "id", "address", "status", "weight", "shards", "last seen"
    ));
    for b in &st.brokers {
        let status = match b.status {
            BrokerStatus::Up => "up",
            BrokerStatus::Down => "DOWN",
            BrokerStatus::Leaving => "leaving",
        };
        s.push_str(&format!(
            "  {:<4} {:<22} {:<8} {:>6} {:>7} {:>8}ms\n",
            b.addr.id, b.addr.addr, status, b.weight, b.shards, b.last_seen_ms
        ));
    }
    s.push_str(&format!("\ntopics: {}\n", st.topics.len()));
    for t in &st.topics {
        s.push_str(&format!("  {} ({} partitions)\n", t.name, t.partitions));
    }
    if !st.shards.is_empty() {
        s.push('\n');
        s.push_str(&render_shards(&st.shards));
    }
    if !st.moves.is_empty() {
        s.push_str("\nmoves:\n");
        for m in &st.moves {
            s.push_str(&format!(
                "  #{} {} {} -> {} {:?} copied {} records / {} bytes, lag {}{}\n",
                m.move_id,
                m.shard,
                m.from.map_or("-".into(), |f| f.to_string()),
                m.to,
                m.phase,
                m.records_copied,
                m.bytes_copied,
                m.lag,
                m.write_pause_ms
                    .map_or(String::new(), |p| format!(", write pause {p} ms"))
            ));
        }
    }
    s
}

pub async fn status(bootstrap: &str, json: bool) -> Result<()> {
    match ask(bootstrap, Request::Status).await? {
        Response::Status(st) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&st))?);
            } else {
                print!("{}", render_status(&st));
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

/// A stable JSON view of the status for scripts.
fn status_json(st: &ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "epoch": st.epoch,
        "brokers": st.brokers.iter().map(|b| serde_json::json!({
            "id": b.addr.id, "addr": b.addr.addr, "status": format!("{:?}", b.status),
            "weight": b.weight, "shards": b.shards, "last_seen_ms": b.last_seen_ms,
        })).collect::<Vec<_>>(),
        "topics": st.topics.iter().map(|t| serde_json::json!({"name": t.name, "partitions": t.partitions})).collect::<Vec<_>>(),
        "shards": st.shards.iter().map(|(r, rep)| serde_json::json!({
            "shard": r.shard.to_string(),
            "owner": r.owner.as_ref().map(|o| o.id),
            "moving": r.moving,
            "end_offset": rep.as_ref().map(|x| x.end_offset),
            "groups": rep.as_ref().map(|x| x.groups.iter().map(|(g, o)| (g.clone(), *o)).collect::<BTreeMap<_, _>>()),
        })).collect::<Vec<_>>(),
        "moves": st.moves.iter().map(|m| serde_json::json!({
            "id": m.move_id, "shard": m.shard.to_string(), "from": m.from, "to": m.to,
            "phase": format!("{:?}", m.phase), "records_copied": m.records_copied,
            "bytes_copied": m.bytes_copied, "lag": m.lag, "write_pause_ms": m.write_pause_ms,
        })).collect::<Vec<_>>(),
    })
}

pub async fn broker_list(bootstrap: &str) -> Result<()> {
    match ask(bootstrap, Request::ListBrokers).await? {
        Response::Brokers(bs) => {
            for b in bs {
                println!(
                    "broker {:<4} {:<22} {:?} weight {} shards {} last seen {} ms ago",
                    b.addr.id, b.addr.addr, b.status, b.weight, b.shards, b.last_seen_ms
                );
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

pub async fn broker_remove(bootstrap: &str, id: u32, force: bool) -> Result<()> {
    match ask(bootstrap, Request::RemoveBroker { id, force }).await? {
        Response::BrokerRemoved { id, shards, forced } => {
            if forced {
                println!(
                    "broker {id} removed; the data of {} shard(s) it held was DISCARDED: {}",
                    shards.len(),
                    shards
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            } else {
                println!(
                    "broker {id} is draining {} shard(s) to their new owners: {}",
                    shards.len(),
                    shards
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}
