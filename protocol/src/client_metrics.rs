//! `--metrics ADDR` on runproduce and runconsume: the client's circuit breakers, one per broker
//! (state, times opened, requests refused, failures counted now), and the run's record counters,
//! as Prometheus metrics at `http://ADDR/metrics` for as long as the run lasts. Everything is
//! read at scrape time, so nothing is kept twice.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::IntoResponse;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::cluster::{BreakerState, BreakerStatus};
use crate::{exposition, ClusterClient};

/// One counter of the run: (name without the `shardq_client_` prefix and `_total`, help, value).
pub type RunCounter = (&'static str, &'static str, u64);

/// Reads the run's counters at scrape time.
pub type RunCounters = Arc<dyn Fn() -> Vec<RunCounter> + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BrokerLabels {
    broker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    broker: String,
    state: String,
}

const STATES: [BreakerState; 3] = [
    BreakerState::Closed,
    BreakerState::Open,
    BreakerState::HalfOpen,
];

/// The metrics of a client whose breakers are `breakers` and whose counters are `counters`,
/// in the OpenMetrics text format.
pub fn render(breakers: &[BreakerStatus], counters: &[RunCounter]) -> String {
    let mut r = Registry::with_prefix("shardq_client");
    let state: Family<StateLabels, Gauge> = Family::default();
    let opened: Family<BrokerLabels, Counter> = Family::default();
    let refused: Family<BrokerLabels, Counter> = Family::default();
    let failures: Family<BrokerLabels, Gauge> = Family::default();
    for b in breakers {
        let broker = b.broker.to_string();
        let now = b.state.unwrap_or(BreakerState::Closed);
        for s in STATES {
            state
                .get_or_create(&StateLabels {
                    broker: broker.clone(),
                    state: s.to_string(),
                })
                .set(i64::from(s == now));
        }
        let labels = BrokerLabels { broker };
        opened.get_or_create(&labels).inc_by(b.opened);
        refused.get_or_create(&labels).inc_by(b.rejected);
        failures.get_or_create(&labels).set(i64::from(b.failures));
    }
    r.register(
        "breaker_state",
        "Each broker's circuit breaker: 1 for the state it is in (closed, open, half-open)",
        state,
    );
    r.register(
        "breaker_opened",
        "Times each broker's circuit breaker opened",
        opened,
    );
    r.register(
        "breaker_refused",
        "Requests each broker's open circuit breaker refused",
        refused,
    );
    r.register(
        "breaker_failures",
        "Consecutive failures each broker's circuit breaker counts now",
        failures,
    );
    for &(name, help, value) in counters {
        let c = Counter::<u64>::default();
        c.inc_by(value);
        r.register(name, help, c);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}

#[derive(Clone)]
struct Client {
    cluster: ClusterClient,
    counters: RunCounters,
}

async fn handler(State(c): State<Client>, headers: HeaderMap) -> impl IntoResponse {
    let body = render(&c.cluster.breakers(), &(c.counters)());
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = exposition::negotiate(accept, body);
    ([(header::CONTENT_TYPE, content_type)], body)
}

/// Serves `/metrics` of `cluster`'s breakers and `counters` on `addr` (port 0 picks one) until
/// the returned task is aborted or the process ends. Returns the bound address.
pub async fn serve(
    addr: &str,
    cluster: ClusterClient,
    counters: RunCounters,
) -> std::io::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(handler))
        .with_state(Client { cluster, counters });
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_breaker_has_one_state_set_and_its_counts() {
        let breakers = [
            BreakerStatus {
                broker: 2,
                state: Some(BreakerState::Open),
                opened: 3,
                rejected: 40,
                failures: 5,
                ..BreakerStatus::default()
            },
            BreakerStatus {
                broker: 1,
                ..BreakerStatus::default()
            },
        ];
        let text = render(&breakers, &[("records_acknowledged", "Records acked", 7)]);
        for line in [
            "shardq_client_breaker_state{broker=\"2\",state=\"open\"} 1",
            "shardq_client_breaker_state{broker=\"2\",state=\"closed\"} 0",
            "shardq_client_breaker_state{broker=\"2\",state=\"half-open\"} 0",
            "shardq_client_breaker_state{broker=\"1\",state=\"closed\"} 1",
            "shardq_client_breaker_opened_total{broker=\"2\"} 3",
            "shardq_client_breaker_refused_total{broker=\"2\"} 40",
            "shardq_client_breaker_failures{broker=\"2\"} 5",
            "shardq_client_records_acknowledged_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
