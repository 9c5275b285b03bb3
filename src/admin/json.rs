//! The `--json` views of the admin commands: one stable shape per kind of thing (broker, topic,
//! shard, move), shared by every command that prints it, with the same spellings as the text
//! (`up`/`down`/`leaving`, `copying`/`done`/...).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use shardq_protocol::{
    BrokerInfo, ClusterStatus, MoveProgress, ShardReport, ShardRoute, TopicDescription, TopicInfo,
};

use super::down_brokers;

pub fn broker(b: &BrokerInfo) -> Value {
    json!({
        "id": b.addr.id, "addr": b.addr.addr, "status": b.status.to_string(),
        "weight": b.weight, "shards": b.shards, "last_seen_ms": b.last_seen_ms,
        "degraded": b.degraded,
    })
}

pub fn topic(t: &TopicInfo) -> Value {
    json!({
        "name": t.name, "partitions": t.partitions,
        "replication_factor": t.replication_factor, "min_insync": t.min_insync,
        "retention_ms": t.retention.ms, "retention_bytes": t.retention.bytes,
    })
}

pub fn shard(r: &ShardRoute, rep: Option<&ShardReport>, down: &BTreeSet<u32>) -> Value {
    json!({
        "shard": r.shard.to_string(),
        "owner": r.owner.as_ref().map(|o| o.id),
        "owner_down": r.owner.as_ref().is_some_and(|o| down.contains(&o.id)),
        "moving": r.moving,
        "leader": r.owner.as_ref().map(|o| o.id),
        "leader_epoch": r.leader_epoch,
        "replicas": r.replicas,
        "isr": r.isr,
        "start_offset": rep.map(|x| x.start_offset),
        "end_offset": rep.map(|x| x.end_offset),
        "high_watermark": rep.map(|x| x.high_watermark),
        "bytes": rep.map(|x| x.bytes),
        "followers": rep.map(|x| x.followers.iter().map(|f| json!({
            "broker": f.broker, "end": f.end, "lag": f.lag, "in_sync": f.in_sync,
        })).collect::<Vec<_>>()),
        "groups": rep.map(|x| x.groups.iter().map(|(g, o)| (g.clone(), *o)).collect::<BTreeMap<_, _>>()),
    })
}

pub fn move_progress(m: &MoveProgress) -> Value {
    json!({
        "id": m.move_id, "shard": m.shard.to_string(), "from": m.from, "to": m.to,
        "phase": m.phase.to_string(), "in_flight": !m.phase.is_finished(),
        "records_copied": m.records_copied, "bytes_copied": m.bytes_copied, "lag": m.lag,
        "percent": super::move_percent(m),
        "started_ms": m.started_ms, "finished_ms": m.finished_ms,
        "took_ms": m.finished_ms.map(|f| f.saturating_sub(m.started_ms)),
        "write_pause_ms": m.write_pause_ms, "error": m.error,
    })
}

pub fn topic_description(d: &TopicDescription, down: &BTreeSet<u32>) -> Value {
    let mut v = topic(&d.topic);
    v["shards"] = d
        .shards
        .iter()
        .map(|(r, rep)| shard(r, rep.as_ref(), down))
        .collect();
    v
}

/// `shardq status --json`.
pub fn status(st: &ClusterStatus) -> Value {
    let down = down_brokers(st);
    json!({
        "epoch": st.epoch,
        "brokers": st.brokers.iter().map(broker).collect::<Vec<_>>(),
        "topics": st.topics.iter().map(topic).collect::<Vec<_>>(),
        "under_replicated": st.shards.iter().filter(|(r, _)| r.isr.len() < r.replicas.len()).count(),
        "offline": st.shards.iter().filter(|(r, _)| r.owner.is_none()).count(),
        "shards": st.shards.iter().map(|(r, rep)| shard(r, rep.as_ref(), &down)).collect::<Vec<_>>(),
        "moves": st.moves.iter().map(move_progress).collect::<Vec<_>>(),
        "autoscaler": st.scaling,
    })
}

/// `shardq moves --json`: every move and the summary line's numbers.
pub fn moves(st: &ClusterStatus) -> Value {
    let s = super::MoveSummary::of(st);
    json!({
        "moves": st.moves.iter().map(move_progress).collect::<Vec<_>>(),
        "summary": {
            "done": s.done, "bytes_copied": s.bytes, "took_ms": s.took_ms,
            "mb_per_s": s.mb_per_s(),
            "write_pause_median_ms": s.pause_median, "write_pause_max_ms": s.pause_max,
        },
    })
}
