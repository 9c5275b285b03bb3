//! Drivers of replicated moves (see `state::reassign` for the steps): each waits until its
//! destination is in the ISR, tracking its progress from the leader's reports, then switches
//! the replica set (moving leadership if the source led, and timing the write pause), records
//! the move done with the source's copy to drop, or rolls back when the destination makes no
//! progress for the move timeout.

use std::sync::Arc;
use std::time::Duration;

use shardq_protocol::{MovePhase, MoveProgress};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, info_span, warn, Instrument};

use crate::rebalance::{now_ms, FAILED_MOVE_BACKOFF};
use crate::service::push;
use crate::Shared;

/// How often a driver looks at its destination's progress.
const POLL: Duration = Duration::from_millis(100);

impl Shared {
    /// Moves leadership back to preferred leaders (see `State::prefer_leaders`), a few shards
    /// per round.
    pub(crate) async fn prefer_leaders(self: &Arc<Self>) {
        let result = {
            let mut st = self.state();
            st.prefer_leaders(self.config.max_moves.max(1), |ops| self.persist(ops))
                .map(|(e, p)| (e, p, st.epoch))
        };
        let (elected, pushes, epoch) = match result {
            Ok(r) => r,
            Err(e) => {
                warn!("cannot restore preferred leaders: {e}");
                return;
            }
        };
        if elected.is_empty() {
            return;
        }
        if let Err(e) = self.store.flush().await {
            warn!("flushing preferred leaders failed: {e}");
        }
        push(&self.pool, epoch, pushes, self.config.request_timeout).await;
        for (shard, leader) in elected {
            info!(%shard, leader, "leadership back to the preferred replica");
        }
    }

    /// Plans and starts the replicated moves there is room for.
    pub(crate) async fn start_replica_moves(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        let planned = {
            let mut st = self.state();
            let room = self.config.max_moves.max(1).saturating_sub(st.moves.len());
            st.plan_replica_moves(room, Instant::now(), now_ms(), |ops| self.persist(ops))
                .map(|(m, p)| (m, p, st.epoch))
        };
        let (planned, pushes, epoch) = match planned {
            Ok(p) => p,
            Err(e) => {
                warn!("cannot plan replica moves: {e}");
                return;
            }
        };
        if planned.is_empty() {
            return;
        }
        if let Err(e) = self.store.flush().await {
            warn!("cannot flush new replica moves; they start once the store recovers: {e}");
            return;
        }
        // The leader learns of its new follower, the destination of the shard it follows now.
        push(&self.pool, epoch, pushes, self.config.request_timeout).await;
        for m in planned {
            info!(move_id = m.move_id, shard = %m.shard, from = m.from, to = m.to,
                "replica move started: the destination follows the leader");
            tasks.spawn(drive_replica_move(self.clone(), m.move_id));
        }
    }
}

/// Drives replicated move `move_id` to Done or RolledBack (or until shutdown: it resumes at the
/// next start).
pub(crate) async fn drive_replica_move(shared: Arc<Shared>, move_id: u64) {
    async move {
        let timeout = shared.config.move_timeout;
        let mut best: Option<u64> = None;
        let mut progress_at = Instant::now();
        loop {
            if shared.shutdown.is_cancelled() {
                return;
            }
            let caught_up = shared.state().replica_caught_up(move_id);
            match caught_up {
                None => return,
                Some(true) => {
                    let mut st = shared.state();
                    if let (Some((records, bytes)), Some(m)) =
                        (st.replica_copied(move_id), st.moves.get(&move_id))
                    {
                        let mut p: MoveProgress = m.progress();
                        p.records_copied = p.records_copied.max(records);
                        p.bytes_copied = bytes;
                        st.progress(&p);
                    }
                    break;
                }
                Some(false) => {}
            }
            let lag = shared.state().replica_lags().get(&move_id).copied();
            if let Some((lag, end)) = lag {
                let end = end.unwrap_or(0);
                if best.is_none_or(|b| end > b) {
                    best = Some(end);
                    progress_at = Instant::now();
                }
                let mut st = shared.state();
                if let Some(m) = st.moves.get(&move_id) {
                    let mut p: MoveProgress = m.progress();
                    p.records_copied = end;
                    p.lag = lag;
                    st.progress(&p);
                }
            }
            if progress_at.elapsed() > timeout {
                roll_back(&shared, move_id, "the destination made no progress").await;
                return;
            }
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        let switched = shared
            .state()
            .switch_replica_move(move_id, |ops| shared.persist(ops));
        let f = match switched {
            Ok(f) => f,
            Err(e) => {
                warn!("cannot switch the replica set: {e}");
                return;
            }
        };
        if let Err(e) = shared.store.flush().await {
            warn!("flushing the switched replica set failed: {e}");
        }
        let pushed = Instant::now();
        push(
            &shared.pool,
            f.epoch,
            f.pushes,
            shared.config.request_timeout,
        )
        .await;
        let pause = f.leader_moved.then(|| pushed.elapsed().as_millis() as u64);
        let done = {
            let mut st = shared.state();
            if let Some(m) = st.moves.get(&move_id) {
                let mut p = m.progress();
                p.write_pause_ms = pause;
                p.lag = 0;
                st.progress(&p);
            }
            shared.finish_move(&mut st, move_id, MovePhase::Done, None, Some(f.drop))
        };
        match done {
            Ok(Some(m)) => {
                info!(shard = %m.shard, from = m.from, to = m.to, write_pause_ms = pause,
                    "replica move done")
            }
            Ok(None) => {}
            Err(e) => warn!("cannot record the replica move as done: {e}"),
        }
        if let Err(e) = shared.store.flush().await {
            warn!("flushing the finished replica move failed: {e}");
        }
        shared.kick_rebalancer();
    }
    .instrument(info_span!("replica-move", id = move_id))
    .await
}

async fn roll_back(shared: &Arc<Shared>, move_id: u64, why: &str) {
    warn!("rolling back: {why}");
    let result = {
        let mut st = shared.state();
        let epoch = st.epoch;
        st.roll_back_replica_move(move_id, |ops| shared.persist(ops))
            .and_then(|(pushes, drop)| {
                let shard = st.moves.get(&move_id).map(|m| m.shard.clone());
                shared.finish_move(
                    &mut st,
                    move_id,
                    MovePhase::RolledBack,
                    Some(why.to_string()),
                    drop,
                )?;
                if let Some(shard) = shard {
                    st.retry_after
                        .insert(shard, Instant::now() + FAILED_MOVE_BACKOFF);
                }
                Ok((pushes, epoch))
            })
    };
    match result {
        Ok((pushes, epoch)) => {
            if let Err(e) = shared.store.flush().await {
                warn!("flushing the rolled-back replica move failed: {e}");
            }
            push(&shared.pool, epoch, pushes, shared.config.request_timeout).await;
        }
        Err(e) => warn!("cannot roll back the replica move: {e}"),
    }
    shared.kick_rebalancer();
}
