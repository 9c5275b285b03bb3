//! `/metrics` on a broker (`--metrics ADDR`): counters and histograms kept as requests are
//! served (requests and their latency by kind, records and bytes produced and fetched per
//! shard, fsync latency, connections), and gauges read off the broker at each scrape (shards by
//! role, under-replicated shards it leads), in the OpenMetrics text format.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use prometheus_client::registry::Registry;
use shardq_protocol::{exposition, CancellationToken, ReplicaRole, ShardId};
use tokio::net::TcpListener;

use crate::service::Broker;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    request: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

/// Buckets of the latency histograms (request and fsync).
pub(crate) fn latency_histogram() -> Histogram {
    // 50 us .. ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// What a broker counts as it serves (shared with every scrape's registry).
pub struct BrokerMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    produced_records: Family<ShardLabels, Counter>,
    produced_bytes: Family<ShardLabels, Counter>,
    fetched_records: Family<ShardLabels, Counter>,
    fetched_bytes: Family<ShardLabels, Counter>,
    /// Connections open on the listener (the server keeps it).
    pub(crate) connections: Arc<AtomicUsize>,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        BrokerMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            produced_records: Family::default(),
            produced_bytes: Family::default(),
            fetched_records: Family::default(),
            fetched_bytes: Family::default(),
            connections: Arc::default(),
        }
    }
}

fn shard_labels(shard: &ShardId) -> ShardLabels {
    ShardLabels {
        topic: shard.topic.clone(),
        partition: shard.partition.to_string(),
    }
}

impl BrokerMetrics {
    /// A request of kind `name` was answered after `took`.
    pub fn request(&self, name: &str, took: Duration) {
        let l = RequestLabels {
            request: name.to_string(),
        };
        self.requests.get_or_create(&l).inc();
        self.latency.get_or_create(&l).observe(took.as_secs_f64());
    }

    pub fn produced(&self, shard: &ShardId, records: u64, bytes: u64) {
        let l = shard_labels(shard);
        self.produced_records.get_or_create(&l).inc_by(records);
        self.produced_bytes.get_or_create(&l).inc_by(bytes);
    }

    pub fn fetched(&self, shard: &ShardId, records: u64, bytes: u64) {
        if records == 0 {
            return;
        }
        let l = shard_labels(shard);
        self.fetched_records.get_or_create(&l).inc_by(records);
        self.fetched_bytes.get_or_create(&l).inc_by(bytes);
    }
}

/// The registry of one scrape of `broker`.
fn registry(broker: &Broker) -> Registry {
    let m = &broker.metrics;
    let mut r = Registry::with_prefix("shardq_broker");
    r.register("requests", "Requests answered, by kind", m.requests.clone());
    r.register(
        "request_duration_seconds",
        "Time to answer a request, by kind (fetches include their long-poll wait)",
        m.latency.clone(),
    );
    r.register(
        "produced_records",
        "Records appended by produce requests, per shard",
        m.produced_records.clone(),
    );
    r.register(
        "produced_bytes",
        "Bytes of record batches appended by produce requests, per shard",
        m.produced_bytes.clone(),
    );
    r.register(
        "fetched_records",
        "Records handed to consumers, per shard",
        m.fetched_records.clone(),
    );
    r.register(
        "fetched_bytes",
        "Bytes of record batches handed to consumers, per shard",
        m.fetched_bytes.clone(),
    );
    r.register(
        "fsync_duration_seconds",
        "Time of a flush: sled's flush and the fdatasync of its files",
        broker.durability.flush_histogram(),
    );
    let open = Gauge::<i64>::default();
    open.set(i64::try_from(m.connections.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    r.register(
        "connections",
        "Connections open on the broker's listener",
        open,
    );
    let report = broker.report();
    let roles: Family<RoleLabels, Gauge> = Family::default();
    for role in ["leader", "follower", "idle"] {
        roles
            .get_or_create(&RoleLabels { role: role.into() })
            .set(0);
    }
    let mut under = 0i64;
    for s in &report.shards {
        let role = match s.role {
            ReplicaRole::Leader => "leader",
            ReplicaRole::Follower => "follower",
            ReplicaRole::Idle => "idle",
        };
        roles.get_or_create(&RoleLabels { role: role.into() }).inc();
        if s.role == ReplicaRole::Leader && s.followers.iter().any(|f| !f.in_sync) {
            under += 1;
        }
    }
    r.register(
        "shards",
        "Shards this broker holds, by its role in them",
        roles,
    );
    let g = Gauge::<i64>::default();
    g.set(under);
    r.register(
        "under_replicated_shards",
        "Shards this broker leads with a follower out of the ISR",
        g,
    );
    r
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the Prometheus text format for
/// everyone else.
async fn handler(State(broker): State<Arc<Broker>>, headers: HeaderMap) -> impl IntoResponse {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry(&broker));
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = exposition::negotiate(accept, out);
    ([(header::CONTENT_TYPE, content_type)], body)
}

/// Serves `/metrics` of `broker` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(handler))
        .with_state(broker);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
