//! The web page's data: `GET /api/view` is one snapshot of the cluster as the page draws it (the
//! ring's tokens, every shard at its hash with its leader and replicas, brokers, moves), and
//! `GET /api/events` pushes a new snapshot as a server-sent event whenever it changes (checked
//! every 250 ms, so the page is never more than a quarter second behind).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde_json::{json, Value};
use shardq_protocol::BrokerStatus;

use super::App;
use crate::Shared;

/// How often the event stream looks for a change.
const TICK: Duration = Duration::from_millis(250);

/// A position on the ring as a fraction of the full circle (JSON numbers cannot hold a u64).
fn turn(h: u64) -> f64 {
    h as f64 / 18_446_744_073_709_551_616.0
}

/// The cluster as the page draws it.
pub(crate) fn view(shared: &Shared) -> Value {
    let status = shared.status();
    let (tokens, hashes) = shared.state().ring_view().unwrap_or_default();
    let hash_of: std::collections::HashMap<String, u64> = hashes.into_iter().collect();
    let brokers: Vec<Value> = status
        .brokers
        .iter()
        .map(|b| {
            json!({
                "id": b.addr.id,
                "addr": b.addr.addr,
                "status": match b.status {
                    BrokerStatus::Up => "up",
                    BrokerStatus::Down => "down",
                    BrokerStatus::Leaving => "leaving",
                },
                "weight": b.weight,
            })
        })
        .collect();
    let shards: Vec<Value> = status
        .shards
        .iter()
        .map(|(r, report)| {
            let key = r.shard.key();
            json!({
                "shard": key,
                "at": hash_of.get(&key).map_or(0.0, |h| turn(*h)),
                "leader": r.owner.as_ref().map(|o| o.id),
                "replicas": r.replicas,
                "isr": r.isr,
                "moving": r.moving,
                "end": report.as_ref().map(|s| s.end_offset),
            })
        })
        .collect();
    let tokens: Vec<Value> = tokens
        .into_iter()
        .map(|(t, b)| json!([turn(t), b]))
        .collect();
    json!({
        "epoch": status.epoch,
        "brokers": brokers,
        "tokens": tokens,
        "shards": shards,
        "moves": status.moves,
        "autoscaler": status.scaling,
    })
}

pub(super) async fn snapshot(State(shared): State<App>) -> Json<Value> {
    Json(view(&shared))
}

/// Server-sent events: a snapshot at once, then each changed one, until the router stops.
pub(super) async fn events(
    State(shared): State<App>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures::stream::unfold(
        (shared, None::<String>, true),
        |(shared, last, mut first)| async move {
            loop {
                if !first {
                    tokio::select! {
                        _ = shared.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(TICK) => {}
                    }
                }
                first = false;
                let text = view(&shared).to_string();
                if last.as_deref() != Some(text.as_str()) {
                    let event = Event::default().event("view").data(text.clone());
                    return Some((Ok(event), (shared, Some(text), false)));
                }
            }
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}
