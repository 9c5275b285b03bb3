//! The liveness task: marks brokers Down once they have not heartbeated for the broker timeout,
//! and sooner when their process is known to be gone, so the shards they led elect new leaders.
//!
//! A broker silent for [`probe_after`] of the timeout (heartbeats come every 250 ms by default)
//! is probed with a TCP connect to the address it listens on. A refused connection means no
//! process listens there: the broker died (SIGKILL, a crash, an OOM kill) and only the kernel
//! answered, so it is Down at once instead of a second later. A probe that connects (the process
//! lives, only slow or cut off from the router) or times out (its machine is gone, nothing
//! answers at all) changes nothing: the timeout decides. This is safe for acknowledged writes
//! whatever the probe says: a leader acknowledges a `durable` write only once every member of
//! the ISR it knows has it, and the new leader is elected from that ISR and stops fetching from
//! the old one as soon as it learns it leads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::BrokerId;
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info_span, warn, Instrument};

use crate::Shared;

/// How long a probe's connect may take: refusals from a dead process on a reachable machine come
/// back in well under a millisecond, and anything slower is left to the timeout.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// Silence after which a broker is probed: 40% of the broker timeout (400 ms by default, past one
/// missed heartbeat).
fn probe_after(timeout: Duration) -> Duration {
    timeout * 2 / 5
}

/// Runs until the router's shutdown token is cancelled.
pub(crate) async fn liveness_task(shared: Arc<Shared>) {
    let timeout = shared.config.broker_timeout;
    // Check often, so a broker is Down at most 5% (50 ms) after its deadline: every
    // millisecond here is a millisecond its shards cannot be written after a crash.
    let period = (timeout / 20).clamp(Duration::from_millis(10), Duration::from_millis(50));
    // The silence each broker was last probed in (its last heartbeat then): one probe per silence.
    let mut probed: HashMap<BrokerId, Instant> = HashMap::new();
    async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let (expired, silent) = {
                let mut st = shared.state();
                (st.expire(now, timeout), st.silent(now, probe_after(timeout)))
            };
            for id in expired {
                warn!(
                    broker = id,
                    "no heartbeat for {timeout:?}: broker is down; its shards elect new leaders from their in-sync replicas"
                );
                // Concurrently: the pushes to a broker that hangs must not hold up detection.
                let shared = shared.clone();
                tokio::spawn(async move { shared.fail_over(Some(id)).await });
            }
            probed.retain(|id, _| silent.iter().any(|(s, _, _)| s == id));
            for (id, addr, last_seen) in silent {
                if probed.insert(id, last_seen) == Some(last_seen) {
                    continue;
                }
                let shared = shared.clone();
                tokio::spawn(async move { probe(shared, id, addr, last_seen).await });
            }
        }
    }
    .instrument(info_span!("liveness"))
    .await
}

/// Connects to broker `id` at `addr`; a refusal marks it Down (unless it heartbeated meanwhile).
async fn probe(shared: Arc<Shared>, id: BrokerId, addr: String, last_seen: Instant) {
    let refused = match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(&addr)).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        Ok(Ok(_)) | Err(_) => false,
    };
    if !refused || !shared.state().down_if_silent_since(id, last_seen) {
        return;
    }
    warn!(
        broker = id,
        %addr,
        "no heartbeat for {:?} and its address refuses connections: the broker's process is gone, so it is down; its shards elect new leaders from their in-sync replicas",
        last_seen.elapsed()
    );
    shared.fail_over(Some(id)).await;
}
