//! Live shard migration, router side: the rebalancer task and one driver task per move.
//!
//! The rebalancer wakes on membership changes (a broker joins, comes back, or is asked to leave),
//! when a move ends, and every [`REBALANCE_PERIOD`]. Each round it removes drained Leaving
//! brokers, retries pending drops, and starts the moves of `diff(actual, desired)` that may run
//! now (both ends Up, no move of that shard in flight, at most `max_moves` in flight). A move is
//! persisted (Pending) before any broker hears of it.
//!
//! A driver runs one move to its end: ImportShard to the destination, MoveStatus polling (slow
//! while copying, fast once the source is fenced so the write pause stays short), the owner flip
//! (persisted, epoch bumped) when the destination is ready, AssignShards to it, the final
//! progress, and DropShard to the source. If the destination stays down longer than the move
//! timeout, reports no progress for that long, or refuses the import, the move is rolled back:
//! the source is unfenced and keeps the shard. After a router restart nothing is sent to (or
//! named with) a broker's address until that broker has registered or heartbeated again: it may
//! listen elsewhere now.
//!
//! Each round also reconciles fences: a shard its owner reports Fenced while no move of it is in
//! flight (an unfence lost in a rollback, a late fence from a cancelled import) is unfenced. Every step is idempotent on the brokers, so a restarted router simply resumes each
//! unfinished move from the phase it persisted.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardq_protocol::{
    BrokerAddr, BrokerId, BrokerStatus, ClientError, ErrorKind, MovePhase, Request, Response,
    ShardAssignment, ShardId,
};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, info_span, warn, Instrument};

#[cfg(doc)]
use crate::state::State;
use crate::store::{MoveRecord, PendingDrop};
use crate::Shared;

/// How often the rebalancer looks again without being woken.
pub const REBALANCE_PERIOD: Duration = Duration::from_millis(500);
/// MoveStatus polling while the destination copies.
const POLL_COPYING: Duration = Duration::from_millis(100);
/// MoveStatus polling once the source is fenced (writes are paused until the flip), and while the
/// destination is close enough to fence any moment: it goes from caught-up through fenced to
/// ready in a few milliseconds, and every millisecond the router takes to notice is write pause.
const POLL_FENCED: Duration = Duration::from_millis(5);
/// Lag (records) under which the destination is about to fence.
const NEAR_FENCE_LAG: u64 = 20_000;
/// A shard whose move failed is not moved again for this long.
pub(crate) const FAILED_MOVE_BACKOFF: Duration = Duration::from_secs(5);
/// Retry delays after a failed request to a broker.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long the driver waits, after the flip, for the destination to report the move Done.
const FINAL_STATUS_WAIT: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch, for move timestamps.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Pending drops being sent right now, so a slow broker does not get the same drop twice.
#[derive(Default)]
pub(crate) struct Dropping(Mutex<HashSet<(BrokerId, ShardId)>>);

impl Dropping {
    fn claim(&self, key: (BrokerId, ShardId)) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(key)
    }

    fn release(&self, key: &(BrokerId, ShardId)) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

impl Shared {
    /// Runs `f` unless the router shuts down first (then `None`).
    async fn unless_shutdown<F: Future>(&self, f: F) -> Option<F::Output> {
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            r = f => Some(r),
        }
    }

    /// Sleeps `d`; false if the router is shutting down.
    async fn pause(&self, d: Duration) -> bool {
        self.unless_shutdown(tokio::time::sleep(d)).await.is_some()
    }

    async fn flush_logged(&self) {
        if let Err(e) = self.store.flush().await {
            warn!("flushing router metadata failed: {e}");
        }
    }

    /// Wakes the rebalancer (membership changed, a move ended).
    pub(crate) fn kick_rebalancer(&self) {
        self.rebalance.notify_one();
    }

    async fn ask(&self, broker: &BrokerAddr, request: Request) -> Result<Response, ClientError> {
        let timeout = self.config.request_timeout;
        match self
            .unless_shutdown(self.pool.request(broker, request, timeout))
            .await
        {
            Some(r) => r,
            None => Err(ClientError::Server(ErrorKind::ShuttingDown)),
        }
    }

    fn broker(&self, id: BrokerId) -> Option<(BrokerAddr, BrokerStatus)> {
        let st = self.state();
        let m = st.members.get(&id)?;
        Some((
            BrokerAddr {
                id,
                addr: m.addr.clone(),
            },
            m.status,
        ))
    }

    /// Whether broker `id` registered or heartbeated since this router started (its address is
    /// current).
    fn confirmed(&self, id: BrokerId) -> bool {
        self.state().members.get(&id).is_some_and(|m| m.confirmed)
    }

    /// One rebalancing round.
    async fn rebalance_once(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        let reaped = {
            let mut st = self.state();
            st.reap_leavers(|ops| self.persist(ops))
        };
        match reaped {
            Ok(ids) if !ids.is_empty() => {
                self.flush_logged().await;
                for id in ids {
                    info!(
                        broker = id,
                        "leaving broker drained: removed from the cluster"
                    );
                    self.pool.evict(id);
                }
            }
            Ok(_) => {}
            Err(e) => warn!("cannot remove drained brokers: {e}"),
        }

        let (due, moot) = self.state().drops_due();
        if !moot.is_empty() {
            let forgotten = {
                let mut st = self.state();
                st.forget_drops(&moot, |ops| self.persist(ops))
            };
            if let Err(e) = forgotten {
                warn!("cannot forget moot pending drops: {e}");
            }
        }
        for (broker, shard, epoch) in due {
            if self.dropping.claim((broker.id, shard.clone())) {
                let shared = self.clone();
                tasks.spawn(
                    async move { shared.send_drop(broker, shard, epoch).await }
                        .instrument(info_span!("drop")),
                );
            }
        }

        // Observed vs desired: a shard its owner reports Fenced with no move in flight would
        // refuse writes forever. Marked under the lock before planning, so no new move of it
        // starts until the unfence is answered.
        let stale = self.state().stale_fences();
        for (broker, shard) in stale {
            let shared = self.clone();
            tasks.spawn(
                async move { shared.send_unfence(broker, shard).await }
                    .instrument(info_span!("unfence")),
            );
        }

        let planned = {
            let mut st = self.state();
            st.plan_moves(self.config.max_moves, Instant::now(), now_ms(), |ops| {
                self.persist(ops)
            })
        };
        let planned = match planned {
            Ok(p) => p,
            Err(e) => {
                warn!("cannot plan shard moves: {e}");
                return;
            }
        };
        if planned.is_empty() {
            self.start_replica_moves(tasks).await;
            self.prefer_leaders().await;
            return;
        }
        // Persisted before any broker is told.
        if let Err(e) = self.store.flush().await {
            warn!("cannot flush new moves; they start once the store recovers: {e}");
            return;
        }
        for m in planned {
            info!(move_id = m.move_id, shard = %m.shard, from = m.from, to = m.to, "move started");
            tasks.spawn(drive(self.clone(), m.move_id));
        }
        self.start_replica_moves(tasks).await;
        self.prefer_leaders().await;
    }

    /// Unfences a shard fenced without a move in flight (see [`State::stale_fences`]).
    async fn send_unfence(self: Arc<Self>, broker: BrokerAddr, shard: ShardId) {
        warn!(
            broker = broker.id,
            %shard,
            "shard reported fenced with no move in flight: unfencing it"
        );
        let request = Request::UnfenceShard {
            shard: shard.clone(),
            // No move: 0 is never a move id (ids start at 1).
            move_id: 0,
        };
        let ok = match self.ask(&broker, request).await {
            Ok(_) => true,
            // The broker itself answered (e.g. "not fenced", "not the owner"): nothing to undo
            // now; its next report says how things are.
            Err(ClientError::Server(ErrorKind::ShuttingDown)) => false,
            Err(ClientError::Server(e)) => {
                debug!(broker = broker.id, %shard, "unfence answered: {e}");
                true
            }
            Err(e) => {
                debug!(broker = broker.id, %shard, "unfence failed: {e}; retried later");
                false
            }
        };
        if ok {
            info!(broker = broker.id, %shard, "stale fence removed: the shard takes writes again");
        }
        self.state().unfenced(
            broker.id,
            &shard,
            ok,
            Instant::now() + self.config.request_timeout,
        );
    }

    /// Sends one pending drop; forgets it once the broker answered (whatever it said: a refusal
    /// means it owns the shard again or has no copy).
    async fn send_drop(self: Arc<Self>, broker: BrokerAddr, shard: ShardId, epoch: u64) {
        let key = (broker.id, shard.clone());
        let request = Request::DropShard {
            shard: shard.clone(),
            epoch,
        };
        match self.ask(&broker, request).await {
            Ok(_) | Err(ClientError::Server(_)) => {
                let forgotten = {
                    let mut st = self.state();
                    st.forget_drops(std::slice::from_ref(&key), |ops| self.persist(ops))
                };
                match forgotten {
                    Ok(()) => {
                        debug!(broker = broker.id, %shard, "old copy dropped");
                        // A drained leaver waits for its drops before it is removed.
                        self.kick_rebalancer();
                    }
                    Err(e) => warn!("cannot forget a done drop: {e}"),
                }
            }
            Err(e) => debug!(
                broker = broker.id,
                %shard,
                "drop-shard failed: {e}; retried later"
            ),
        }
        self.dropping.release(&key);
    }
}

/// The rebalancer: resumes the moves found in the store, then rebalances on every wake-up until
/// the router shuts down, and waits for its move drivers to stop.
pub(crate) async fn rebalancer_task(shared: Arc<Shared>) {
    async move {
        let mut tasks = JoinSet::new();
        let resumed: Vec<(u64, bool)> = {
            let st = shared.state();
            st.moves
                .values()
                .map(|m| (m.move_id, st.replicated(&m.shard)))
                .collect()
        };
        for (id, replicated) in resumed {
            info!(move_id = id, "resuming an unfinished move");
            if replicated {
                tasks.spawn(crate::reassign::drive_replica_move(shared.clone(), id));
            } else {
                tasks.spawn(drive(shared.clone(), id));
            }
        }
        let mut tick = tokio::time::interval(REBALANCE_PERIOD);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = shared.rebalance.notified() => {}
            }
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    warn!("a migration task failed: {e}");
                }
            }
            shared.rebalance_once(&mut tasks).await;
        }
        // Drivers and drops watch the same token and stop at their next step.
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = done {
                warn!("a migration task failed: {e}");
            }
        }
    }
    .instrument(info_span!("rebalancer"))
    .await
}

/// Drives move `move_id` to Done or RolledBack (or until shutdown: it resumes at the next start).
async fn drive(shared: Arc<Shared>, move_id: u64) {
    let mut d = Driver {
        shared,
        move_id,
        imported: None,
        down_since: None,
        progress: None,
        progress_at: Instant::now(),
        backoff: BACKOFF_MIN,
    };
    d.run().instrument(info_span!("move", id = move_id)).await
}

struct Driver {
    shared: Arc<Shared>,
    move_id: u64,
    /// ImportShard was accepted by the destination (since the last error), naming the source at
    /// this address: sent again when the source's address changes (it restarted elsewhere).
    imported: Option<String>,
    /// When the destination was first seen Down or not yet re-registered (reset when it is Up).
    down_since: Option<Instant>,
    /// The destination's last reported (phase, records, bytes, lag), and since when: a move
    /// whose destination is up but reports no change for the move timeout is rolled back
    /// (e.g. it keeps failing to reach the source).
    progress: Option<(MovePhase, u64, u64, u64)>,
    progress_at: Instant,
    backoff: Duration,
}

impl Driver {
    fn record(&self) -> Option<MoveRecord> {
        self.shared.state().moves.get(&self.move_id).cloned()
    }

    /// Waits the current backoff and doubles it; false on shutdown.
    async fn back_off(&mut self) -> bool {
        let d = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.shared.pause(d).await
    }

    fn persist_phase(&self, phase: MovePhase) -> bool {
        let r = {
            let mut st = self.shared.state();
            st.set_phase(self.move_id, phase, |ops| self.shared.persist(ops))
        };
        match r {
            Ok(()) => true,
            Err(e) => {
                warn!("cannot record phase {phase}: {e}");
                false
            }
        }
    }

    async fn run(&mut self) {
        loop {
            if self.shared.shutdown.is_cancelled() {
                return;
            }
            let Some(m) = self.record() else { return };
            if m.phase == MovePhase::Activating {
                return self.complete(m).await;
            }
            let Some((source, _)) = self.shared.broker(m.from) else {
                // Force-removed: its shards were re-created elsewhere; nothing to hand over.
                let reason = format!("source broker {} was removed", m.from);
                return self.end(&m, MovePhase::Failed, reason, m.to).await;
            };
            let Some((dest, status)) = self.shared.broker(m.to) else {
                let reason = format!("destination broker {} was removed", m.to);
                return self.rollback(m, source, reason).await;
            };
            // After a router restart a broker may come back on another port: nothing is sent to
            // (or named with) an address it has not confirmed since.
            let waiting = if status == BrokerStatus::Down {
                Some(format!("destination broker {} was down", m.to))
            } else if !self.shared.confirmed(m.to) {
                Some(format!("destination broker {} did not re-register", m.to))
            } else if !self.shared.confirmed(m.from) {
                Some(format!("source broker {} did not re-register", m.from))
            } else {
                None
            };
            if let Some(what) = waiting {
                let since = *self.down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.shared.config.move_timeout {
                    let reason =
                        format!("{what} for more than {:?}", self.shared.config.move_timeout);
                    return self.rollback(m, source, reason).await;
                }
                self.imported = None;
                if !self.shared.pause(POLL_COPYING).await {
                    return;
                }
                continue;
            }
            if self.down_since.take().is_some() {
                // The no-progress clock runs only while both ends are reachable.
                self.progress_at = Instant::now();
            }
            if self.progress_at.elapsed() >= self.shared.config.move_timeout {
                let reason =
                    format!(
                    "no progress for {:?} (destination broker {} last reported {})",
                    self.shared.config.move_timeout,
                    m.to,
                    self.progress.map_or("nothing".to_string(), |(phase, records, bytes, lag)| {
                        format!("{phase:?}, {records} records / {bytes} bytes copied, lag {lag}")
                    })
                );
                return self.rollback(m, source, reason).await;
            }
            if self.imported.as_ref() != Some(&source.addr) {
                let epoch = self.shared.state().epoch;
                let request = Request::ImportShard {
                    move_id: m.move_id,
                    shard: m.shard.clone(),
                    source: source.clone(),
                    epoch,
                };
                match self.shared.ask(&dest, request).await {
                    Ok(Response::Ok) => {
                        self.imported = Some(source.addr.clone());
                        self.backoff = BACKOFF_MIN;
                        if m.phase == MovePhase::Pending {
                            self.persist_phase(MovePhase::Copying);
                            self.shared.flush_logged().await;
                        }
                    }
                    Err(ClientError::Server(k)) if !k.is_retriable() => {
                        let reason = format!("broker {} refused the import: {k}", m.to);
                        return self.rollback(m, source, reason).await;
                    }
                    Ok(other) => {
                        warn!("import-shard answered with {}; retrying", other.name());
                        if !self.back_off().await {
                            return;
                        }
                    }
                    Err(e) => {
                        debug!("import-shard to broker {} failed: {e}; retrying", m.to);
                        if !self.back_off().await {
                            return;
                        }
                    }
                }
                continue;
            }
            let request = Request::MoveStatus { move_id: m.move_id };
            match self.shared.ask(&dest, request).await {
                Ok(Response::Move(p)) => {
                    self.backoff = BACKOFF_MIN;
                    self.shared.state().progress(&p);
                    let seen = Some((p.phase, p.records_copied, p.bytes_copied, p.lag));
                    if seen != self.progress {
                        self.progress = seen;
                        self.progress_at = Instant::now();
                    }
                    let wait = match p.phase {
                        MovePhase::Pending | MovePhase::Copying => {
                            if m.phase == MovePhase::Pending {
                                self.persist_phase(MovePhase::Copying);
                            }
                            if p.phase == MovePhase::Copying && p.lag < NEAR_FENCE_LAG {
                                POLL_FENCED
                            } else {
                                POLL_COPYING
                            }
                        }
                        MovePhase::Fenced => {
                            if m.phase != MovePhase::Fenced {
                                // Not flushed here: the fence itself is durable on the source,
                                // and a resumed move re-learns it from the destination.
                                self.persist_phase(MovePhase::Fenced);
                            }
                            POLL_FENCED
                        }
                        MovePhase::Activating | MovePhase::Done => {
                            self.flip(&m).await;
                            continue;
                        }
                        MovePhase::Failed | MovePhase::RolledBack => {
                            let reason = p.error.unwrap_or_else(|| {
                                format!("broker {} reported the import {:?}", m.to, p.phase)
                            });
                            return self.rollback(m, source, reason).await;
                        }
                    };
                    if !self.shared.pause(wait).await {
                        return;
                    }
                }
                Ok(other) => {
                    warn!("move-status answered with {}; retrying", other.name());
                    if !self.back_off().await {
                        return;
                    }
                }
                Err(e) => {
                    // "No move N here" (the destination restarted, or never got the import) or
                    // the connection failed: send the import again (idempotent, resumes).
                    debug!(
                        "move-status from broker {} failed: {e}; re-sending the import",
                        m.to
                    );
                    self.imported = None;
                    if !self.back_off().await {
                        return;
                    }
                }
            }
        }
    }

    /// The destination holds everything up to the fenced end: the shard is its from now on.
    async fn flip(&mut self, m: &MoveRecord) {
        let flipped = {
            let mut st = self.shared.state();
            st.flip(self.move_id, |ops| self.shared.persist(ops))
        };
        match flipped {
            Ok(epoch) => {
                self.shared.flush_logged().await;
                info!(shard = %m.shard, from = m.from, to = m.to, epoch, "owner flipped");
            }
            Err(e) => {
                warn!("cannot flip the owner: {e}");
                // Retried by the caller's next round (or rolled back if the source went away).
                self.shared.pause(self.backoff).await;
            }
        }
    }

    /// After the flip: activate the shard on the destination, collect its final progress,
    /// record the move Done and drop the source's copy.
    async fn complete(&mut self, m: MoveRecord) {
        let mut down_since: Option<Instant> = None;
        // Activate: retried until it answers; the destination's heartbeat would too.
        while let Some((dest, status)) = self.shared.broker(m.to) {
            if status == BrokerStatus::Down {
                let since = *down_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.shared.config.move_timeout {
                    // The flip stands (the destination holds the data durably); the shard is
                    // unavailable like any down broker's until it returns.
                    warn!(
                        "destination broker {} is down after the flip; it activates {} when back",
                        m.to, m.shard
                    );
                    break;
                }
            } else {
                down_since = None;
            }
            let (epoch, set) = {
                let st = self.shared.state();
                (st.epoch, st.replica_set(&m.shard))
            };
            let Some(replication) = set else {
                break;
            };
            let request = Request::AssignShards {
                epoch,
                shards: vec![ShardAssignment {
                    shard: m.shard.clone(),
                    epoch,
                    replication,
                }],
            };
            match self.shared.ask(&dest, request).await {
                Ok(_) | Err(ClientError::Server(_)) if !self.shared.shutdown.is_cancelled() => {
                    break
                }
                _ => {
                    if !self.back_off().await {
                        return;
                    }
                }
            }
        }
        // The final progress (write pause); bounded: the move is Done whatever it says.
        let deadline = Instant::now() + FINAL_STATUS_WAIT;
        while Instant::now() < deadline {
            let Some((dest, _)) = self.shared.broker(m.to) else {
                break;
            };
            let request = Request::MoveStatus { move_id: m.move_id };
            match self.shared.ask(&dest, request).await {
                Ok(Response::Move(p)) => {
                    self.shared.state().progress(&p);
                    if p.phase == MovePhase::Done {
                        break;
                    }
                }
                Err(ClientError::Server(ErrorKind::ShuttingDown))
                    if self.shared.shutdown.is_cancelled() =>
                {
                    return
                }
                _ => {}
            }
            if !self.shared.pause(POLL_FENCED).await {
                return;
            }
        }
        let epoch = self.shared.state().epoch;
        let drop = PendingDrop {
            broker: m.from,
            shard: m.shard.clone(),
            epoch,
        };
        let finished = {
            let mut st = self.shared.state();
            self.shared
                .finish_move(&mut st, self.move_id, MovePhase::Done, None, Some(drop))
        };
        match finished {
            Ok(Some(r)) => {
                self.shared.flush_logged().await;
                info!(
                    shard = %r.shard,
                    from = r.from,
                    to = r.to,
                    records = r.records_copied,
                    bytes = r.bytes_copied,
                    write_pause_ms = r.write_pause_ms,
                    took_ms = r.finished_ms.unwrap_or(r.started_ms).saturating_sub(r.started_ms),
                    "move done"
                );
            }
            Ok(None) => {}
            Err(e) => warn!("cannot record the move as done: {e}"),
        }
        // Next moves, and the source's drop, at once.
        self.shared.kick_rebalancer();
    }

    /// Gives the shard back to its source: unfence it (retried until it answers), then record
    /// the move RolledBack with the destination's partial copy to drop.
    async fn rollback(&mut self, m: MoveRecord, mut source: BrokerAddr, reason: String) {
        warn!(shard = %m.shard, from = m.from, to = m.to, "rolling the move back: {reason}");
        loop {
            let request = Request::UnfenceShard {
                shard: m.shard.clone(),
                move_id: m.move_id,
            };
            match self.shared.ask(&source, request).await {
                Ok(_) => break,
                Err(ClientError::Server(ErrorKind::ShuttingDown))
                    if self.shared.shutdown.is_cancelled() =>
                {
                    return
                }
                // Any answer from the broker itself (e.g. "not fenced") means it is unfenced.
                Err(ClientError::Server(_)) => break,
                Err(e) => {
                    debug!("unfence on broker {} failed: {e}; retrying", m.from);
                    if !self.back_off().await {
                        return;
                    }
                    match self.shared.broker(m.from) {
                        Some((addr, _)) => source = addr,
                        None => break,
                    }
                }
            }
        }
        self.end(&m, MovePhase::RolledBack, reason, m.to).await;
    }

    /// Records the move finished without a flip; `partial` holds a copy to drop.
    async fn end(&mut self, m: &MoveRecord, phase: MovePhase, reason: String, partial: BrokerId) {
        let epoch = self.shared.state().epoch;
        let drop = PendingDrop {
            broker: partial,
            shard: m.shard.clone(),
            epoch,
        };
        let finished = {
            let mut st = self.shared.state();
            st.retry_after
                .insert(m.shard.clone(), Instant::now() + FAILED_MOVE_BACKOFF);
            self.shared
                .finish_move(&mut st, self.move_id, phase, Some(reason), Some(drop))
        };
        match finished {
            Ok(_) => {
                self.shared.flush_logged().await;
                info!(shard = %m.shard, %phase, "move ended; the shard stays with broker {}", m.from);
            }
            Err(e) => warn!("cannot record the move as {phase}: {e}"),
        }
        self.shared.kick_rebalancer();
    }
}
