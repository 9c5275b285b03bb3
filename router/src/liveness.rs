//! The liveness task: marks brokers Down once they have not heartbeated for the broker timeout,
//! so their shards' routes show no owner (clients retry until the broker returns).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info_span, warn, Instrument};

use crate::Shared;

/// Runs until the router's shutdown token is cancelled.
pub(crate) async fn liveness_task(shared: Arc<Shared>) {
    let timeout = shared.config.broker_timeout;
    // Check often, so a broker is Down at most 5% (50 ms) after its deadline: every
    // millisecond here is a millisecond its shards cannot be written after a crash.
    let period = (timeout / 20).clamp(Duration::from_millis(10), Duration::from_millis(50));
    async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let expired = shared.state().expire(Instant::now(), timeout);
            for id in expired {
                warn!(
                    broker = id,
                    "no heartbeat for {timeout:?}: broker is down; its shards elect new leaders from their in-sync replicas"
                );
                // Concurrently: the pushes to a broker that hangs must not hold up detection.
                let shared = shared.clone();
                tokio::spawn(async move { shared.fail_over(Some(id)).await });
            }
        }
    }
    .instrument(info_span!("liveness"))
    .await
}
