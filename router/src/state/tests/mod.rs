//! Unit tests of the router state, by concern, with the helpers they share.

mod membership;
mod moves;
mod replicas;
mod topics;

use shardq_protocol::{BrokerId, BrokerStatus, Epoch, ErrorKind, MovePhase};
use shardq_ring::RingConfig;
use tokio::time::Instant;

use super::State;
use crate::store::{MoveRecord, Op, PendingDrop, Snapshot};

fn state(brokers: &[BrokerId]) -> State {
    let now = Instant::now();
    let mut s = State::restore(Snapshot::default(), RingConfig::default(), now);
    for &id in brokers {
        join(&mut s, id);
    }
    s
}

/// Broker `id` registers (its process: [`process`]).
fn join(s: &mut State, id: BrokerId) {
    s.register(id, format!("127.0.0.1:{}", 9000 + id), 1, Instant::now())
        .unwrap();
    s.members.get_mut(&id).unwrap().incarnation = Some(process(id));
}

/// The process broker `id` runs in these tests.
fn process(id: BrokerId) -> u64 {
    1_000 + u64::from(id)
}

/// What a leader that heard from the brokers' current processes names in an ISR change.
fn heard(s: &State, isr: &[BrokerId]) -> Vec<(BrokerId, u64)> {
    isr.iter()
        .filter_map(|id| Some((*id, s.members.get(id)?.incarnation?)))
        .collect()
}

fn ok(_: &[Op]) -> Result<(), ErrorKind> {
    Ok(())
}

/// Broker `id` missed its heartbeats.
fn down(s: &mut State, id: BrokerId) {
    s.members.get_mut(&id).unwrap().status = BrokerStatus::Down;
}

/// Flips a planned move and records it Done with the drop of the source's copy due; returns
/// the new epoch.
fn complete(s: &mut State, m: &MoveRecord) -> Epoch {
    let epoch = s.flip(m.move_id, ok).unwrap();
    let drop = PendingDrop {
        broker: m.from,
        shard: m.shard.clone(),
        epoch,
    };
    s.finish(m.move_id, MovePhase::Done, None, 2, Some(drop), ok)
        .unwrap();
    epoch
}
