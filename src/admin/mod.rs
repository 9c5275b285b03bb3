//! Admin commands that talk to a running cluster: topics, brokers, status, moves. Every command
//! that prints data takes `--json` (the views are in [`json`]); `watch` is in [`watch`].

mod group;
mod json;
mod topic;
pub mod units;
pub mod watch;

pub use group::{group_delete, group_describe, group_list, group_reset_offsets};
pub use topic::{
    topic_alter, topic_create, topic_delete, topic_describe, topic_list, topic_purge, TopicAlter,
};
pub use watch::watch;

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{
    BrokerStatus, ClusterStatus, ConnectionConfig, MovePhase, Request, Response, Secret, ShardId,
};

/// The cluster secret admin commands prove, set once from `--token-file` before they run.
static SECRET: std::sync::OnceLock<Option<Secret>> = std::sync::OnceLock::new();

/// Sets the secret every admin connection of this process proves (the first call wins).
pub fn use_secret(secret: Option<Secret>) {
    let _ = SECRET.set(secret);
}

/// The secret set with [`use_secret`], for the other clients this process opens.
pub fn secret() -> Option<Secret> {
    SECRET.get().cloned().flatten()
}

pub async fn client(bootstrap: &str) -> Result<ClusterClient> {
    let cfg = ConnectionConfig {
        client_name: "shardq-cli".into(),
        secret: SECRET.get().cloned().flatten(),
        ..ConnectionConfig::default()
    };
    ClusterClient::connect(bootstrap, cfg)
        .await
        .with_context(|| format!("cannot reach the cluster at {bootstrap}"))
}

pub(crate) async fn ask(bootstrap: &str, req: Request) -> Result<Response> {
    let c = client(bootstrap).await?;
    Ok(c.admin(req).await?)
}

/// Brokers the router reports Down.
fn down_brokers(st: &ClusterStatus) -> BTreeSet<u32> {
    st.brokers
        .iter()
        .filter(|b| b.status == BrokerStatus::Down)
        .map(|b| b.addr.id)
        .collect()
}

/// The shard table; a shard whose owner is in `down` shows e.g. `4 (down)`: it is unavailable
/// until that broker returns.
pub(crate) fn render_shards(
    shards: &[(
        shardq_protocol::ShardRoute,
        Option<shardq_protocol::ShardReport>,
    )],
    down: &BTreeSet<u32>,
) -> String {
    let mut s = format!(
        "{:<24} {:<10} {:<12} {:<12} {:>12} {:>12} {:>12} {:>10} {:>12}  groups (committed/lag)\n",
        "shard",
        "leader",
        "replicas",
        "in sync",
        "log start",
        "end offset",
        "committed",
        "max lag",
        "bytes"
    );
    for (route, report) in shards {
        let owner = route.owner.as_ref().map_or("-".to_string(), |o| {
            if down.contains(&o.id) {
                format!("{} (down)", o.id)
            } else {
                o.id.to_string()
            }
        });
        let owner = if route.moving {
            format!("{owner}*")
        } else {
            owner
        };
        let (end, hw, lag, bytes, groups) = report_cells(report.as_ref(), |b| b.to_string());
        let start = report
            .as_ref()
            .map_or("?".to_string(), |r| r.start_offset.to_string());
        let ids = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        s.push_str(&format!(
            "{:<24} {:<10} {:<12} {:<12} {:>12} {:>12} {:>12} {:>10} {:>12}  {}\n",
            route.shard.to_string(),
            owner,
            ids(&route.replicas),
            ids(&route.isr),
            start,
            end,
            hw,
            lag,
            bytes,
            groups
        ));
    }
    s
}

pub fn render_status(st: &ClusterStatus) -> String {
    let mut s = format!("routing epoch {}\n\nbrokers:\n", st.epoch);
    // Per broker: shards it leads, replicas it holds.
    let mut per_broker: BTreeMap<u32, (usize, usize)> = BTreeMap::new();
    for (route, _) in &st.shards {
        if let Some(o) = &route.owner {
            per_broker.entry(o.id).or_default().0 += 1;
        }
        for b in &route.replicas {
            per_broker.entry(*b).or_default().1 += 1;
        }
    }
    s.push_str(&format!(
        "  {:<4} {:<22} {:<8} {:>6} {:>7} {:>10}\n",
        "id", "address", "status", "weight", "shards", "last seen"
    ));
    for b in &st.brokers {
        let mut status = b.status.to_string();
        if let Some(why) = &b.degraded {
            // The short cause in the table ("storage full"), the whole reason below it.
            let short = why.split(':').next().unwrap_or(why);
            status = format!("{status} (degraded: {short})");
        }
        s.push_str(&format!(
            "  {:<4} {:<22} {:<8} {:>6} {:>7} {:>8}ms\n",
            b.addr.id, b.addr.addr, status, b.weight, b.shards, b.last_seen_ms
        ));
        if let Some(why) = &b.degraded {
            s.push_str(&format!("       degraded: {why}\n"));
        }
    }
    s.push_str(&format!("\ntopics: {}\n", st.topics.len()));
    for t in &st.topics {
        s.push_str(&format!("  {} ({})\n", t.name, topic::settings(t)));
    }
    let under = st
        .shards
        .iter()
        .filter(|(r, _)| r.isr.len() < r.replicas.len())
        .count();
    let offline = st.shards.iter().filter(|(r, _)| r.owner.is_none()).count();
    s.push_str(&format!(
        "shards: {} ({under} under-replicated, {offline} offline)\n",
        st.shards.len()
    ));
    if !per_broker.is_empty() {
        s.push_str("\nshards per broker (leads / holds):\n");
        let max = per_broker.values().map(|v| v.1).max().unwrap_or(1).max(1);
        for (id, (led, held)) in &per_broker {
            s.push_str(&format!(
                "  {id:<4} {led:>5} / {held:<5} {}\n",
                "#".repeat((held * 40).div_ceil(max))
            ));
        }
    }
    if !st.shards.is_empty() {
        s.push('\n');
        s.push_str(&render_shards(&st.shards, &down_brokers(st)));
    }
    let (active, done): (Vec<_>, Vec<_>) = st.moves.iter().partition(|m| {
        !matches!(
            m.phase,
            MovePhase::Done | MovePhase::Failed | MovePhase::RolledBack
        )
    });
    if !active.is_empty() {
        s.push_str("\nmoves in flight:\n");
        for m in &active {
            s.push_str(&format!(
                "  {} {:>3}% copied {} records / {}, lag {}\n",
                move_head(m),
                move_percent(m),
                m.records_copied,
                human_bytes(m.bytes_copied),
                m.lag,
            ));
        }
    }
    if !done.is_empty() {
        s.push_str("\nfinished moves (latest 20):\n");
        for m in done.iter().rev().take(20).rev() {
            let took = m
                .finished_ms
                .map(|f| format!("{} ms", f.saturating_sub(m.started_ms)))
                .unwrap_or_else(|| "?".into());
            s.push_str(&format!(
                "  {} {} records / {} in {}, write pause {}{}\n",
                move_head(m),
                m.records_copied,
                human_bytes(m.bytes_copied),
                took,
                m.write_pause_ms
                    .map_or("?".to_string(), |p| format!("{p} ms")),
                m.error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" ({e})")),
            ));
        }
    }
    if !st.scaling.is_empty() {
        s.push_str(
            "
autoscaler decisions (latest last):
",
        );
        for d in &st.scaling {
            s.push_str(&format!(
                "  {}
",
                scaling_line(d)
            ));
        }
    }
    s
}

/// `08:41:07 add broker 3 (2 brokers serving): average 25000 msgs/s ...` (time of day in UTC).
pub fn scaling_line(d: &shardq_protocol::ScalingDecision) -> String {
    let secs = d.time_ms / 1000 % 86_400;
    let who = d.broker.map_or(String::new(), |b| format!(" broker {b}"));
    format!(
        "{:02}:{:02}:{:02} {}{who} ({} brokers serving): {}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        d.action,
        d.brokers,
        d.reason
    )
}

pub async fn status(bootstrap: &str, json: bool) -> Result<()> {
    match ask(bootstrap, Request::Status).await? {
        Response::Status(st) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&json::status(&st))?);
            } else {
                print!("{}", render_status(&st));
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

/// `shardq shard elect`: a new leader for `shard` now.
pub async fn shard_elect(
    bootstrap: &str,
    shard: &ShardId,
    unclean: bool,
    json: bool,
) -> Result<()> {
    let e = match ask(
        bootstrap,
        Request::ElectLeader {
            shard: shard.clone(),
            unclean,
        },
    )
    .await?
    {
        Response::Elected(e) => e,
        other => bail!("unexpected answer {}", other.name()),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "shard": e.shard.to_string(), "leader": e.leader, "leader_epoch": e.leader_epoch,
                "unclean": e.unclean, "may_lose": e.may_lose,
            })
        );
    } else if e.unclean {
        println!(
            "{}: broker {} leads at leader epoch {} (UNCLEAN: it was not in sync; {} that only the old in-sync replicas held are lost)",
            e.shard,
            e.leader,
            e.leader_epoch,
            e.may_lose
                .map_or("records".to_string(), |n| format!("about {n} record(s)"))
        );
    } else {
        println!(
            "{}: broker {} leads at leader epoch {}",
            e.shard, e.leader, e.leader_epoch
        );
    }
    Ok(())
}

/// `shardq shard checksum`: one checksum per replica over the leader's committed range. Fails
/// (exit code 1) when the in-sync replicas disagree.
pub async fn shard_checksum(bootstrap: &str, shard: &ShardId, json: bool) -> Result<()> {
    let sums = match ask(
        bootstrap,
        Request::ShardChecksum {
            shard: shard.clone(),
            upto: None,
        },
    )
    .await?
    {
        Response::Checksums(v) => v,
        other => bail!("unexpected answer {}", other.name()),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &sums
                    .iter()
                    .map(|c| serde_json::json!({
                        "broker": c.broker, "role": format!("{:?}", c.role).to_lowercase(),
                        "start": c.start, "end": c.end, "records": c.records,
                        "checksum": format!("{:016x}", c.checksum), "error": c.error,
                    }))
                    .collect::<Vec<_>>()
            )?
        );
    } else {
        println!("{shard}:");
        for c in &sums {
            match &c.error {
                Some(e) => println!("  broker {:<4} error: {e}", c.broker),
                None => println!(
                    "  broker {:<4} {:<8} offsets {}..{} {:>10} records  checksum {:016x}",
                    c.broker,
                    format!("{:?}", c.role).to_lowercase(),
                    c.start,
                    c.end,
                    c.records,
                    c.checksum
                ),
            }
        }
    }
    let answered: Vec<_> = sums.iter().filter(|c| c.error.is_none()).collect();
    if let Some(first) = answered.first() {
        if answered
            .iter()
            .any(|c| c.end == first.end && c.checksum != first.checksum)
        {
            bail!("{shard}: replicas disagree over the same range");
        }
    }
    Ok(())
}

pub async fn broker_list(bootstrap: &str, as_json: bool) -> Result<()> {
    match ask(bootstrap, Request::ListBrokers).await? {
        Response::Brokers(bs) => {
            if as_json {
                let v: Vec<_> = bs.iter().map(json::broker).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            for b in bs {
                println!(
                    "broker {:<4} {:<22} {}{} weight {} shards {} last seen {} ms ago",
                    b.addr.id,
                    b.addr.addr,
                    b.status,
                    b.degraded
                        .as_ref()
                        .map_or(String::new(), |d| format!(" (degraded: {d})")),
                    b.weight,
                    b.shards,
                    b.last_seen_ms
                );
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

pub async fn broker_remove(bootstrap: &str, id: u32, force: bool, as_json: bool) -> Result<()> {
    match ask(bootstrap, Request::RemoveBroker { id, force }).await? {
        Response::BrokerRemoved { id, shards, forced } => {
            let names: Vec<String> = shards.iter().map(|s| s.to_string()).collect();
            if as_json {
                let key = if forced { "discarded" } else { "draining" };
                println!(
                    "{}",
                    serde_json::json!({ "event": "removed", "id": id, "forced": forced, key: names })
                );
                return Ok(());
            }
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

/// `shardq broker replace ID`: lets a new process (an empty data dir) take broker `id`'s place.
/// Its replicated shards are copied back from their leaders; its unreplicated ones start empty
/// on the new process: the text says so, and lists them.
pub async fn broker_replace(bootstrap: &str, id: u32, json: bool) -> Result<()> {
    match ask(bootstrap, Request::ReplaceBroker { id }).await? {
        Response::BrokerReplaced { id, shards } => {
            if json {
                let v = serde_json::json!({
                    "id": id,
                    "shards_start_empty": shards.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", render_replaced(id, &shards));
            }
            Ok(())
        }
        other => bail!("unexpected answer {}", other.name()),
    }
}

fn render_replaced(id: u32, shards: &[shardq_protocol::ShardId]) -> String {
    let list = if shards.is_empty() {
        "none".to_string()
    } else {
        shards
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "broker {id} can now be taken over: the next broker process to register with --id {id} \
         (start it on an empty data dir) becomes broker {id}.\n\
         Its replicated shards are copied back from their leaders (it follows them, and \
         rejoins their in-sync replicas once caught up; a shard whose only in-sync replica it \
         was stays offline until `shardq shard elect T:Pn --unclean`).\n\
         Its {} unreplicated shard(s) START EMPTY on the new process: their records were only on \
         the lost disk.\n\
         shards that start empty: {list}\n",
        shards.len()
    )
}

/// `#12  T1:P3  2 -> 4  Copying   `: which move, of what, where, and how far.
fn move_head(m: &shardq_protocol::MoveProgress) -> String {
    format!(
        "#{:<4} {:<20} {} -> {}  {:<10}",
        m.move_id,
        m.shard.to_string(),
        m.from.map_or("-".into(), |f| f.to_string()),
        m.to,
        m.phase.as_str()
    )
}

/// How far a move is: records copied against records copied plus the destination's lag, 100
/// once done (a move that has not counted anything yet is at 0, or 100 once fenced).
pub fn move_percent(m: &shardq_protocol::MoveProgress) -> u8 {
    if m.phase == MovePhase::Done {
        return 100;
    }
    let total = m.records_copied + m.lag;
    if total == 0 {
        return match m.phase {
            MovePhase::Fenced | MovePhase::Activating => 100,
            _ => 0,
        };
    }
    (m.records_copied.saturating_mul(100) / total).min(100) as u8
}

/// A shard report's cells (end, high watermark, largest follower lag, bytes, groups with their
/// committed offset and lag), `?` where no report came yet.
pub(crate) fn report_cells(
    report: Option<&shardq_protocol::ShardReport>,
    bytes: impl Fn(u64) -> String,
) -> (String, String, String, String, String) {
    match report {
        Some(r) => (
            r.end_offset.to_string(),
            r.high_watermark.to_string(),
            r.followers
                .iter()
                .map(|f| f.lag)
                .max()
                .map_or("-".to_string(), |l| l.to_string()),
            bytes(r.bytes),
            r.groups
                .iter()
                .map(|(g, o)| format!("{g}={o}/{}", r.end_offset.saturating_sub(*o)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        None => (
            "?".into(),
            "?".into(),
            "?".into(),
            "?".into(),
            String::new(),
        ),
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub(crate) async fn fetch_status(client: &ClusterClient) -> Result<ClusterStatus> {
    match client.admin(Request::Status).await? {
        Response::Status(st) => Ok(st),
        other => bail!("unexpected answer {}", other.name()),
    }
}

/// After a graceful remove: waits until the router has drained and removed broker `id`, printing
/// progress.
/// With `as_json`, one JSON object per line: `{"event":"draining",...}` on each change, then
/// `{"event":"drained",...}`.
pub async fn wait_drained(
    bootstrap: &str,
    id: u32,
    timeout: std::time::Duration,
    as_json: bool,
) -> Result<()> {
    let client = client(bootstrap).await?;
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let st = fetch_status(&client).await?;
        let Some(broker) = st.brokers.iter().find(|b| b.addr.id == id) else {
            if as_json {
                println!("{}", serde_json::json!({ "event": "drained", "id": id }));
            } else {
                println!(
                    "broker {id} drained and removed; its data directory (its --data; \
                     DATA/broker-{id} in a `shardq up` cluster, which deletes it unless \
                     --keep-removed-data) is no longer used"
                );
            }
            return Ok(());
        };
        // The router's count: it includes shards whose routes are gone because it is down.
        let owned = broker.shards;
        let moving = st
            .moves
            .iter()
            .filter(|m| {
                (m.from == Some(id) || m.to == id)
                    && !matches!(
                        m.phase,
                        MovePhase::Done | MovePhase::Failed | MovePhase::RolledBack
                    )
            })
            .count();
        if broker.status == BrokerStatus::Down {
            // The router refuses to start a drain of a broker that is down, so this one went
            // down after its leave was recorded: the leave stays.
            let what = if owned > 0 {
                format!(
                    "its {owned} shard(s) cannot be copied to other brokers until it returns; \
                     its leave stays recorded, so it keeps draining then"
                )
            } else {
                "it owns no shard any more, but its old copies are deleted and it is removed \
                 only once it returns (its leave stays recorded)"
                    .to_string()
            };
            bail!(
                "broker {id} went DOWN while draining: {what}. Restart it, then run \
                 `shardq broker remove {id}` again to watch the drain; or \
                 `shardq broker remove {id} --force` removes it now and DISCARDS the data of the \
                 shards it still holds"
            );
        }
        let line = format!("broker {id}: {owned} shard(s) left, {moving} moving");
        if line != last {
            if as_json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "draining", "id": id, "shards_left": owned, "moving": moving,
                    })
                );
            } else {
                println!("{line}");
            }
            last = line;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "broker {id} still holds {owned} shard(s) after {timeout:?}; it keeps draining \
                 (see `shardq status`)"
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// `shardq moves`: every move the router remembers, and a summary of the finished ones (count,
/// records and bytes copied, copy rate, write pause median and max).
pub async fn moves(bootstrap: &str, as_json: bool) -> Result<()> {
    let st = fetch_status(&client(bootstrap).await?).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&json::moves(&st))?);
    } else {
        print!("{}", render_moves(&st));
    }
    Ok(())
}

/// The finished moves of a status, summed up (`shardq moves`' last line).
pub(crate) struct MoveSummary {
    pub done: usize,
    pub bytes: u64,
    pub took_ms: u64,
    pub pause_median: Option<u64>,
    pub pause_max: Option<u64>,
}

impl MoveSummary {
    pub fn of(st: &ClusterStatus) -> MoveSummary {
        let mut pauses = Vec::new();
        let (mut bytes, mut took_ms, mut done) = (0u64, 0u64, 0usize);
        for m in st.moves.iter().filter(|m| m.phase == MovePhase::Done) {
            done += 1;
            bytes += m.bytes_copied;
            took_ms += m.finished_ms.map_or(0, |f| f.saturating_sub(m.started_ms));
            if let Some(p) = m.write_pause_ms {
                pauses.push(p);
            }
        }
        pauses.sort_unstable();
        MoveSummary {
            done,
            bytes,
            took_ms,
            pause_median: pauses.get(pauses.len() / 2).copied(),
            pause_max: pauses.last().copied(),
        }
    }

    /// Copy rate over the moves' durations, MB/s.
    pub fn mb_per_s(&self) -> Option<f64> {
        (self.took_ms > 0).then(|| self.bytes as f64 / 1e6 / (self.took_ms as f64 / 1e3))
    }
}

pub fn render_moves(st: &ClusterStatus) -> String {
    let mut s = format!(
        "{:<6} {:<20} {:>4} {:>4} {:<11} {:>10} {:>10} {:>9} {:>8} {:>9}\n",
        "move", "shard", "from", "to", "phase", "records", "bytes", "took ms", "MB/s", "pause ms"
    );
    for m in &st.moves {
        let took = m.finished_ms.map(|f| f.saturating_sub(m.started_ms));
        s.push_str(&format!(
            "#{:<5} {:<20} {:>4} {:>4} {:<11} {:>10} {:>10} {:>9} {:>8} {:>9}\n",
            m.move_id,
            m.shard.to_string(),
            m.from.map_or("-".into(), |f| f.to_string()),
            m.to,
            m.phase.as_str(),
            m.records_copied,
            human_bytes(m.bytes_copied),
            took.map_or("-".into(), |t| t.to_string()),
            took.filter(|t| *t > 0).map_or("-".into(), |t| format!(
                "{:.1}",
                m.bytes_copied as f64 / 1e3 / t as f64
            )),
            m.write_pause_ms.map_or("-".into(), |p| p.to_string()),
        ));
    }
    let sum = MoveSummary::of(st);
    s.push_str(&format!(
        "{} move(s) done, {} copied{}; write pause median {} ms, max {} ms\n",
        sum.done,
        human_bytes(sum.bytes),
        sum.mb_per_s().map_or(String::new(), |r| format!(
            " ({r:.1} MB/s over their durations)"
        )),
        sum.pause_median.map_or("-".into(), |m| m.to_string()),
        sum.pause_max.map_or("-".into(), |m| m.to_string()),
    ));
    s
}

/// How often `wait-balanced` says how far it is while moves run.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits until no move is in flight for `quiet` in a row (and, with `broker`, until that broker
/// owns at least one shard), printing moves as they change phase and, every 5 s while moves
/// run, a progress line (moves in flight, their copy progress, moves done, elapsed). With
/// `as_json`, one JSON object per line: `{"event":"move",...}`, `{"event":"progress",...}`,
/// then `{"event":"balanced",...}`.
pub async fn wait_balanced(
    bootstrap: &str,
    broker: Option<u32>,
    quiet: std::time::Duration,
    timeout: std::time::Duration,
    as_json: bool,
) -> Result<()> {
    let client = client(bootstrap).await?;
    let start = std::time::Instant::now();
    let mut quiet_since: Option<std::time::Instant> = None;
    let mut next_progress = start + PROGRESS_EVERY;
    // Moves already known at the start are history: only changes from here on are printed.
    let mut reported: Option<std::collections::BTreeMap<u64, MovePhase>> = None;
    let mut finished_here = 0usize;
    loop {
        let st = fetch_status(&client).await?;
        let first = reported.is_none();
        let seen = reported.get_or_insert_with(Default::default);
        for m in &st.moves {
            if seen.insert(m.move_id, m.phase) == Some(m.phase) || first {
                continue;
            }
            if m.phase.is_finished() {
                finished_here += 1;
            }
            if as_json {
                let mut v = json::move_progress(m);
                v["event"] = "move".into();
                println!("{v}");
                continue;
            }
            let extra = if m.phase == MovePhase::Done {
                format!(
                    " ({} records, {}, write pause {} ms)",
                    m.records_copied,
                    human_bytes(m.bytes_copied),
                    m.write_pause_ms.map_or("?".into(), |p| p.to_string())
                )
            } else {
                String::new()
            };
            println!(
                "  move #{} {} {} -> {}: {}{extra}",
                m.move_id,
                m.shard,
                m.from.map_or("-".into(), |f| f.to_string()),
                m.to,
                m.phase
            );
        }
        let active: Vec<_> = st.moves.iter().filter(|m| !m.phase.is_finished()).collect();
        let owns = broker.is_none_or(|id| {
            st.shards
                .iter()
                .any(|(r, _)| r.owner.as_ref().is_some_and(|o| o.id == id))
        });
        let now = std::time::Instant::now();
        if now >= next_progress {
            next_progress = now + PROGRESS_EVERY;
            let copied: u64 = active.iter().map(|m| m.records_copied).sum();
            let left: u64 = active.iter().map(|m| m.lag).sum();
            let pct = (copied + left > 0).then(|| copied * 100 / (copied + left));
            if as_json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "progress", "in_flight": active.len(), "done": finished_here,
                        "records_copied": copied, "records_left": left, "percent": pct,
                        "elapsed_ms": start.elapsed().as_millis() as u64,
                    })
                );
            } else {
                println!(
                    "  ... {} move(s) in flight{}, {finished_here} finished, {}s elapsed{}",
                    active.len(),
                    pct.map_or(String::new(), |p| format!(" ({p}% copied)")),
                    start.elapsed().as_secs(),
                    if owns {
                        String::new()
                    } else {
                        format!("; broker {} owns no shard yet", broker.unwrap_or_default())
                    }
                );
            }
        }
        if !active.is_empty() || !owns {
            quiet_since = None;
        } else if quiet_since.get_or_insert(now).elapsed() >= quiet {
            if as_json {
                println!(
                    "{}",
                    serde_json::json!({
                        "event": "balanced", "done": finished_here,
                        "elapsed_ms": start.elapsed().as_millis() as u64,
                    })
                );
            }
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!("moves still in flight after {timeout:?}; see `shardq status`");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardq_protocol::{BrokerAddr, BrokerInfo, ShardId, ShardRoute, TopicInfo};

    #[test]
    fn a_shard_on_a_down_broker_names_it_as_down() {
        let broker = |id: u32, status| BrokerInfo {
            addr: BrokerAddr {
                id,
                addr: format!("127.0.0.1:{}", 9000 + id),
            },
            weight: 1,
            status,
            last_seen_ms: 0,
            shards: 1,
            degraded: None,
        };
        let route = |p: u32, owner: u32| ShardRoute {
            shard: ShardId::new("T", p),
            owner: Some(BrokerAddr {
                id: owner,
                addr: format!("127.0.0.1:{}", 9000 + owner),
            }),
            moving: false,
            leader_epoch: 0,
            replicas: vec![],
            isr: vec![],
        };
        let st = ClusterStatus {
            epoch: 3,
            brokers: vec![broker(1, BrokerStatus::Up), broker(4, BrokerStatus::Down)],
            topics: vec![TopicInfo {
                name: "T".into(),
                partitions: 2,
                replication_factor: 1,
                min_insync: 1,
                retention: Default::default(),
            }],
            shards: vec![(route(1, 1), None), (route(2, 4), None)],
            moves: Vec::new(),
            scaling: vec![shardq_protocol::ScalingDecision {
                // 01:02:03 UTC.
                time_ms: 1_790_035_200_000 + 3_723_000,
                action: "remove".into(),
                reason: "average 10 msgs/s below 2000".into(),
                brokers: 3,
                broker: Some(3),
            }],
            pending_drops: vec![(3, ShardId::new("orders", 2))],
        };
        let text = render_status(&st);
        let line = |shard: &str| {
            text.lines()
                .find(|l| l.starts_with(shard))
                .unwrap_or_else(|| panic!("no {shard} line in {text}"))
                .to_string()
        };
        assert!(line("T:P2").contains("4 (down)"), "{text}");
        assert!(!line("T:P1").contains("down"), "{text}");
        let v = json::status(&st);
        assert_eq!(v["shards"][1]["owner_down"], true);
        assert_eq!(v["brokers"][1]["status"], "down");
        assert!(
            text.contains(
                "  01:02:03 remove broker 3 (3 brokers serving): average 10 msgs/s below 2000\n"
            ),
            "{text}"
        );
        assert_eq!(v["autoscaler"][0]["action"], "remove");
    }
}
