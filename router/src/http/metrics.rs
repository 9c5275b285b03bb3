//! `/metrics` on the router: counters kept as things happen (requests, finished moves, write
//! pauses, failovers) and gauges read off the cluster state at each scrape (brokers, shards,
//! replication health, offsets, consumer group lag), in the OpenMetrics text format.

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shardq_protocol::{exposition, BrokerStatus, ClusterStatus, MovePhase};
use tokio::time::Instant;

use super::App;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
    topic: String,
    partition: String,
}

/// What the router counts as it runs (shared with every scrape's registry: the metric types
/// are handles onto the same values).
pub(crate) struct RouterMetrics {
    http: Family<HttpLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    moves_finished: Family<PhaseLabels, Counter>,
    move_bytes: Counter,
    write_pause: Histogram,
    failovers: Counter,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        RouterMetrics {
            http: Family::default(),
            requests: Family::default(),
            moves_finished: Family::default(),
            move_bytes: Counter::default(),
            // 1 ms .. 5 s.
            write_pause: Histogram::new([
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
            ]),
            failovers: Counter::default(),
        }
    }
}

impl RouterMetrics {
    pub fn http_request(&self, method: &Method, route: &str, code: StatusCode) {
        self.http
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                code: code.as_u16(),
            })
            .inc();
    }

    /// A protocol request reached the router (`name` is the request's kebab-case name).
    pub fn request(&self, name: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                request: name.to_string(),
            })
            .inc();
    }

    /// A move ended in `phase`, having copied `bytes`, with a write pause if leadership moved.
    pub fn move_finished(&self, phase: MovePhase, bytes: u64, pause_ms: Option<u64>) {
        self.moves_finished
            .get_or_create(&PhaseLabels {
                phase: format!("{phase:?}").to_lowercase(),
            })
            .inc();
        self.move_bytes.inc_by(bytes);
        if let Some(p) = pause_ms {
            self.write_pause.observe(p as f64 / 1000.0);
        }
    }

    /// A broker's failure was acted on (elections and ISR shrinks).
    pub fn failover(&self) {
        self.failovers.inc();
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

fn i(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// The registry of one scrape: the counters plus gauges from `status`.
fn registry(m: &RouterMetrics, status: &ClusterStatus) -> Registry {
    let mut r = Registry::with_prefix("shardq");
    r.register(
        "router_http_requests",
        "HTTP requests to the router by method, route and status code",
        m.http.clone(),
    );
    r.register(
        "router_requests",
        "Protocol requests to the router by kind (proxied produce and fetch included)",
        m.requests.clone(),
    );
    r.register(
        "moves_finished",
        "Shard moves finished, by how they ended",
        m.moves_finished.clone(),
    );
    r.register(
        "move_copied_bytes",
        "Bytes copied by finished shard moves",
        m.move_bytes.clone(),
    );
    r.register(
        "move_write_pause_seconds",
        "Write pause of moves that moved a shard's leadership",
        m.write_pause.clone(),
    );
    r.register(
        "router_failovers",
        "Broker failures (down or restarted) the router acted on",
        m.failovers.clone(),
    );

    gauge(
        &mut r,
        "routing_epoch",
        "The routing table's epoch",
        i(status.epoch),
    );
    let states: Family<StateLabels, Gauge> = Family::default();
    for s in ["up", "down", "leaving"] {
        states
            .get_or_create(&StateLabels { state: s.into() })
            .set(0);
    }
    let mut down = std::collections::BTreeSet::new();
    for b in &status.brokers {
        let state = match b.status {
            BrokerStatus::Up => "up",
            BrokerStatus::Down => {
                down.insert(b.addr.id);
                "down"
            }
            BrokerStatus::Leaving => "leaving",
        };
        states
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .inc();
    }
    r.register("brokers", "Brokers by state", states);
    gauge(&mut r, "topics", "Topics", i(status.topics.len()));
    gauge(
        &mut r,
        "shards",
        "Shards of every topic",
        i(status.shards.len()),
    );

    let led: Family<BrokerLabels, Gauge> = Family::default();
    let held: Family<BrokerLabels, Gauge> = Family::default();
    for b in &status.brokers {
        let l = BrokerLabels {
            broker: b.addr.id.to_string(),
        };
        led.get_or_create(&l).set(0);
        held.get_or_create(&l).set(0);
    }
    let end: Family<ShardLabels, Gauge> = Family::default();
    let committed: Family<ShardLabels, Gauge> = Family::default();
    let follower_lag: Family<ShardLabels, Gauge> = Family::default();
    let group_lag: Family<GroupLabels, Gauge> = Family::default();
    let (mut under, mut offline) = (0i64, 0i64);
    for (route, report) in &status.shards {
        let labels = ShardLabels {
            topic: route.shard.topic.clone(),
            partition: route.shard.partition.to_string(),
        };
        if let Some(o) = &route.owner {
            led.get_or_create(&BrokerLabels {
                broker: o.id.to_string(),
            })
            .inc();
        }
        for b in &route.replicas {
            held.get_or_create(&BrokerLabels {
                broker: b.to_string(),
            })
            .inc();
        }
        if route.isr.len() < route.replicas.len() {
            under += 1;
        }
        if route.owner.as_ref().is_none_or(|o| down.contains(&o.id)) {
            offline += 1;
        }
        if let Some(rep) = report {
            end.get_or_create(&labels).set(i(rep.end_offset));
            committed
                .get_or_create(&labels)
                .set(i(rep.high_watermark.min(rep.end_offset)));
            let lag = rep.followers.iter().map(|f| f.lag).max().unwrap_or(0);
            follower_lag.get_or_create(&labels).set(i(lag));
            for (group, offset) in &rep.groups {
                group_lag
                    .get_or_create(&GroupLabels {
                        group: group.clone(),
                        topic: labels.topic.clone(),
                        partition: labels.partition.clone(),
                    })
                    .set(i(rep
                        .high_watermark
                        .min(rep.end_offset)
                        .saturating_sub(*offset)));
            }
        }
    }
    r.register("broker_shards_led", "Shards each broker leads", led);
    r.register(
        "broker_replicas",
        "Shard replicas each broker holds (led or followed)",
        held,
    );
    gauge(
        &mut r,
        "shards_under_replicated",
        "Shards with fewer in-sync replicas than replicas",
        under,
    );
    gauge(
        &mut r,
        "shards_offline",
        "Shards whose leader is down or that have none",
        offline,
    );
    r.register(
        "shard_end_offset",
        "Each shard's log end at its leader",
        end,
    );
    r.register(
        "shard_committed_offset",
        "Each shard's high watermark: what consumers may read",
        committed,
    );
    r.register(
        "shard_follower_lag_records",
        "Records the furthest-behind follower of each shard lacks",
        follower_lag,
    );
    r.register(
        "consumer_group_lag_records",
        "Committed records each consumer group has not committed yet, per shard",
        group_lag,
    );
    let in_flight = status
        .moves
        .iter()
        .filter(|m| {
            !matches!(
                m.phase,
                MovePhase::Done | MovePhase::Failed | MovePhase::RolledBack
            )
        })
        .count();
    gauge(
        &mut r,
        "moves_in_flight",
        "Shard moves in flight",
        i(in_flight),
    );
    r
}

/// Encodes the metrics of `status` and the autoscaler's `decisions`.
pub(crate) fn render(
    m: &RouterMetrics,
    status: &ClusterStatus,
    decisions: &[shardq_protocol::ScalingDecision],
) -> String {
    let mut r = registry(m, status);
    let by_action: Family<ActionLabels, Counter> = Family::default();
    for action in ["add", "remove"] {
        let _ = by_action.get_or_create(&ActionLabels {
            action: action.into(),
        });
    }
    for d in decisions {
        by_action
            .get_or_create(&ActionLabels {
                action: d.action.clone(),
            })
            .inc();
    }
    r.register(
        "autoscaler_decisions",
        "Brokers the autoscaler of `shardq up` added and removed",
        by_action,
    );
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the Prometheus text format for
/// everyone else.
pub(super) async fn handler(State(shared): State<App>, headers: HeaderMap) -> impl IntoResponse {
    let status = shared.state().status(Instant::now());
    let decisions = shared.autoscaler_decisions();
    let body = render(&shared.metrics, &status, &decisions);
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = exposition::negotiate(accept, body);
    ([(header::CONTENT_TYPE, content_type)], body)
}
