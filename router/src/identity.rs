//! Broker identity: which process may be broker N.
//!
//! A broker id alone does not say which process speaks for it: a second process started with
//! `--id 1` and an empty data dir used to register "again", take over broker 1's routes and serve
//! its shards from empty logs (split brain). So every broker data dir holds a UUID created once,
//! and the router binds a broker id to the UUID of the first process that registers it
//! (persisted). From then on a registration or a heartbeat of that id with another UUID is
//! refused with `IdentityConflict`, whether broker N is up or down, before anything about the
//! member (its address, its liveness) changes: the router never routes to a refused process, and
//! a refused process cannot keep an id looking alive. Only `shardq broker replace N` (for a broker
//! whose disk was lost, refused while it is up) unbinds the id so that a new process can take it.
//!
//! The router also has a cluster id, created once and persisted; a broker records it in its data
//! dir at its first registration, and a data dir of another cluster is refused (`WrongCluster`).
//! Stores and data dirs from before identities existed have neither: the router creates its
//! cluster id at its first start, and binds each id at its first registration (or heartbeat)
//! after the upgrade.

use std::collections::BTreeMap;

use shardq_protocol::{is_uuid, BrokerId, BrokerReport, BrokerStatus, ErrorKind, ShardId};
use tokio::time::Instant;

use crate::state::State;
use crate::store::Op;

/// The cluster id and the id -> UUID bindings, as loaded from the store.
#[derive(Clone, Debug, Default)]
pub struct Identities {
    cluster: String,
    bound: BTreeMap<BrokerId, String>,
}

impl Identities {
    pub fn new(cluster: String, bound: BTreeMap<BrokerId, String>) -> Identities {
        Identities { cluster, bound }
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The UUID broker `id` is bound to, if any.
    #[cfg(test)]
    pub fn uuid_of(&self, id: BrokerId) -> Option<&str> {
        self.bound.get(&id).map(String::as_str)
    }

    /// Whether the process with `uuid` (whose data dir belongs to `cluster`, None if it is
    /// fresh) may act as broker `id`. `Ok(Some(op))`: `id` is not bound yet and this process
    /// takes it once `op` is persisted (then call [`Identities::bind`]).
    pub fn admit(
        &self,
        id: BrokerId,
        uuid: &str,
        cluster: Option<&str>,
    ) -> Result<Option<Op>, ErrorKind> {
        if !is_uuid(uuid) {
            return Err(ErrorKind::BadRequest {
                reason: format!("broker {id} sent {uuid:?} as its UUID, which is not a UUID"),
            });
        }
        if let Some(theirs) = cluster.filter(|c| *c != self.cluster) {
            return Err(ErrorKind::WrongCluster {
                id,
                data_cluster: theirs.to_string(),
                router_cluster: self.cluster.clone(),
            });
        }
        match self.bound.get(&id) {
            Some(bound) if bound.eq_ignore_ascii_case(uuid) => Ok(None),
            Some(bound) => Err(ErrorKind::IdentityConflict {
                id,
                bound: bound.clone(),
                offered: uuid.to_string(),
            }),
            None => Ok(Some(Op::Bind {
                id,
                uuid: uuid.to_string(),
            })),
        }
    }

    pub fn bind(&mut self, id: BrokerId, uuid: &str) {
        self.bound.insert(id, uuid.to_string());
    }

    pub fn unbind(&mut self, id: BrokerId) {
        self.bound.remove(&id);
    }
}

/// Who a registering process says it is: its data dir's UUID and cluster (None: a fresh dir).
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    pub uuid: &'a str,
    pub cluster: Option<&'a str>,
    /// The process (new at every start).
    pub incarnation: u64,
}

/// Applies a binding `admit` asked for, once it is persisted.
fn bound(state: &mut State, ops: &[Op]) {
    for op in ops {
        if let Op::Bind { id, uuid } = op {
            state.identities.bind(*id, uuid);
        }
    }
}

impl State {
    /// [`State::register`] for the process that makes `claim`: refused, with nothing
    /// about the member changed, when `id` is bound to another process or the data dir is of
    /// another cluster; binds `id` when it is not bound yet. A removed id stays `RemovedBroker`.
    pub fn register_process(
        &mut self,
        id: BrokerId,
        addr: String,
        weight: u32,
        claim: Claim<'_>,
        now: Instant,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<bool, ErrorKind> {
        if self.removed.contains(&id) {
            return Err(ErrorKind::RemovedBroker { id });
        }
        let bind = self.identities.admit(id, claim.uuid, claim.cluster)?;
        let mut ops = self.register(id, addr, weight, now)?;
        ops.extend(bind);
        persist(&ops)?;
        bound(self, &ops);
        if let Some(m) = self.members.get_mut(&id) {
            m.incarnation = Some(claim.incarnation);
        }
        Ok(!ops.is_empty())
    }

    /// [`State::heartbeat`] from the process `uuid`: a heartbeat of another process than the one
    /// bound to `id` is refused and does not count as a sign of life. A member restored from a
    /// store written before identities existed is bound by its first heartbeat.
    pub fn heartbeat_process(
        &mut self,
        id: BrokerId,
        uuid: &str,
        incarnation: u64,
        report: BrokerReport,
        now: Instant,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<
        (
            shardq_protocol::Epoch,
            Vec<shardq_protocol::ShardAssignment>,
            bool,
        ),
        ErrorKind,
    > {
        if self.removed.contains(&id) {
            return Err(ErrorKind::RemovedBroker { id });
        }
        if !self.members.contains_key(&id) {
            return Err(ErrorKind::UnknownBroker { id });
        }
        if let Some(op) = self.identities.admit(id, uuid, None)? {
            let ops = [op];
            persist(&ops)?;
            bound(self, &ops);
        }
        let answer = self.heartbeat(id, report, now)?;
        // Only a registration says which process is broker `id` now (and drops the broker
        // from its ISRs, as a new process may have lost writes): a heartbeat tells a router
        // that restarted, and never replaces the process registered (a late heartbeat of a
        // dead process must not vouch for it again).
        if let Some(m) = self.members.get_mut(&id) {
            match m.incarnation {
                None => m.incarnation = Some(incarnation),
                Some(i) if i != incarnation => tracing::warn!(
                    broker = id,
                    "heartbeat from another process than the one registered as this broker; ignored for ISR changes"
                ),
                Some(_) => {}
            }
        }
        Ok(answer)
    }

    /// `shardq broker replace ID`: unbinds broker `id` so that the next process to register it
    /// (a new data dir) takes it. Only for a broker that is down (a live one would lose its
    /// place to whoever registers next) and in no move in flight. Returns the shards it owns:
    /// they start empty on the new process, as there is no replica to copy them from.
    pub fn replace(
        &mut self,
        id: BrokerId,
        persist: impl FnOnce(&[Op]) -> Result<(), ErrorKind>,
    ) -> Result<Vec<ShardId>, ErrorKind> {
        if self.removed.contains(&id) {
            return Err(ErrorKind::RemovedBroker { id });
        }
        let member = self
            .members
            .get(&id)
            .ok_or(ErrorKind::UnknownBroker { id })?;
        if member.status != BrokerStatus::Down {
            return Err(ErrorKind::BrokerUp {
                id,
                reason: format!(
                    "`shardq broker replace {id}` is only for a broker whose process is gone and \
                     whose disk was lost; this one still heartbeats. Stop it first (if its data \
                     is intact, just restart it on its own data dir instead)"
                ),
            });
        }
        if self.in_moves(id) {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "broker {id} takes part in a shard move in flight; replace it once the move \
                     has rolled back (see `shardq status`)"
                ),
            });
        }
        // The new process holds nothing: it is in sync for no shard, and catches up as a
        // follower. Where it was the last in-sync replica, the shard stays offline (its
        // acknowledged records were only on the lost disk) until an unclean election, rather
        // than the empty process being elected. A shard with no other replica starts empty on it.
        let mut ops = vec![Op::Unbind(id)];
        let mut changed = Vec::new();
        let mut start_empty = Vec::new();
        for shard in self.held_by(id) {
            let Some(mut r) = self.replicas_of(&shard) else {
                continue;
            };
            if r.replicas.len() <= 1 {
                start_empty.push(shard);
                continue;
            }
            r.isr.retain(|b| *b != id);
            r.isr_version += 1;
            if r.leader == Some(id) {
                r.leader = None;
                r.leader_epoch += 1;
            }
            ops.push(Op::PutReplicas {
                shard: shard.clone(),
                replicas: r.clone(),
            });
            changed.push((shard, r));
        }
        persist(&ops)?;
        self.identities.unbind(id);
        for (shard, r) in changed {
            self.put_replicas(&shard, r);
        }
        Ok(start_empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Snapshot;
    use shardq_ring::RingConfig;
    use std::time::Duration;

    const U1: &str = "11111111-1111-4111-8111-111111111111";
    const U2: &str = "22222222-2222-4222-8222-222222222222";
    const C: &str = "cccccccc-cccc-4ccc-8ccc-cccccccccccc";
    const OTHER: &str = "dddddddd-dddd-4ddd-8ddd-dddddddddddd";

    fn ok(_: &[Op]) -> Result<(), ErrorKind> {
        Ok(())
    }

    fn claim<'a>(uuid: &'a str, cluster: Option<&'a str>) -> Claim<'a> {
        Claim {
            uuid,
            cluster,
            incarnation: 1,
        }
    }

    fn state() -> State {
        let snap = Snapshot {
            cluster: Some(C.into()),
            ..Snapshot::default()
        };
        State::restore(snap, RingConfig::default(), Instant::now())
    }

    #[test]
    fn the_first_process_binds_the_id_and_no_other_may_take_it() {
        let mut s = state();
        let t0 = Instant::now();
        let mut persisted = Vec::new();
        s.register_process(1, "h:1".into(), 1, claim(U1, None), t0, |ops| {
            persisted.extend(ops.iter().cloned());
            Ok(())
        })
        .unwrap();
        assert!(persisted
            .iter()
            .any(|op| matches!(op, Op::Bind { id: 1, uuid } if uuid == U1)));
        s.create_topic("t", 4, None, None, Default::default(), ok)
            .unwrap();

        // A rogue with id 1 and a fresh data dir, while broker 1 is up: refused, and broker 1's
        // address is untouched (clients are never pointed at the rogue).
        let e = s
            .register_process(1, "h:99".into(), 1, claim(U2, None), t0, |_| {
                panic!("a refused registration persists nothing")
            })
            .unwrap_err();
        assert_eq!(
            e,
            ErrorKind::IdentityConflict {
                id: 1,
                bound: U1.into(),
                offered: U2.into()
            }
        );
        let text = e.to_string();
        assert!(
            text.contains(U1) && text.contains(U2) && text.contains("shardq broker replace 1"),
            "{text}"
        );
        assert_eq!(s.members[&1].addr, "h:1");
        assert_eq!(s.owner_for(&ShardId::new("t", 1)).unwrap().addr, "h:1");

        // Its heartbeats are refused too, and do not keep broker 1 alive.
        let later = t0 + Duration::from_secs(10);
        assert!(matches!(
            s.heartbeat_process(1, U2, 1, BrokerReport::default(), later, ok),
            Err(ErrorKind::IdentityConflict { .. })
        ));
        assert_eq!(s.expire(later, Duration::from_secs(3)), vec![1]);

        // Down, the id is still bound: the rogue is refused again; the real broker comes back.
        assert!(matches!(
            s.register_process(1, "h:99".into(), 1, claim(U2, None), later, ok),
            Err(ErrorKind::IdentityConflict { .. })
        ));
        assert_eq!(s.members[&1].status, BrokerStatus::Down);
        s.register_process(1, "h:2".into(), 1, claim(U1, Some(C)), later, ok)
            .unwrap();
        assert_eq!(s.members[&1].status, BrokerStatus::Up);
        assert!(s
            .heartbeat_process(1, U1, 1, BrokerReport::default(), later, ok)
            .is_ok());
    }

    #[test]
    fn a_data_dir_of_another_cluster_or_a_malformed_uuid_is_refused() {
        let mut s = state();
        let now = Instant::now();
        assert_eq!(
            s.register_process(1, "h:1".into(), 1, claim(U1, Some(OTHER)), now, ok)
                .unwrap_err(),
            ErrorKind::WrongCluster {
                id: 1,
                data_cluster: OTHER.into(),
                router_cluster: C.into()
            }
        );
        assert!(matches!(
            s.register_process(1, "h:1".into(), 1, claim("", None), now, ok),
            Err(ErrorKind::BadRequest { .. })
        ));
        assert!(s.members.is_empty());
        assert_eq!(s.identities.uuid_of(1), None);
    }

    #[test]
    fn only_a_registration_changes_the_process_an_isr_change_must_name() {
        let mut s = state();
        let now = Instant::now();
        s.register_process(1, "h:1".into(), 1, claim(U1, None), now, ok)
            .unwrap();
        assert_eq!(s.members[&1].incarnation, Some(1));
        // A late heartbeat of another process (a dead one, say) does not replace it...
        s.heartbeat_process(1, U1, 7, BrokerReport::default(), now, ok)
            .unwrap();
        assert_eq!(s.members[&1].incarnation, Some(1));
        // ...a registration does; and after a router restart the first heartbeat tells it.
        let again = Claim {
            incarnation: 2,
            ..claim(U1, Some(C))
        };
        s.register_process(1, "h:1".into(), 1, again, now, ok)
            .unwrap();
        assert_eq!(s.members[&1].incarnation, Some(2));
        s.members.get_mut(&1).unwrap().incarnation = None;
        s.heartbeat_process(1, U1, 2, BrokerReport::default(), now, ok)
            .unwrap();
        assert_eq!(s.members[&1].incarnation, Some(2));
    }

    #[test]
    fn members_from_before_identities_are_bound_by_their_first_contact() {
        let mut snap = Snapshot {
            cluster: Some(C.into()),
            ..Snapshot::default()
        };
        for id in [1, 2] {
            snap.members.insert(
                id,
                crate::store::MemberRecord {
                    id,
                    addr: format!("h:{id}"),
                    weight: 1,
                    leaving: false,
                },
            );
        }
        let now = Instant::now();
        let mut s = State::restore(snap, RingConfig::default(), now);
        let mut persisted = Vec::new();
        s.heartbeat_process(1, U1, 1, BrokerReport::default(), now, |ops| {
            persisted.extend(ops.iter().cloned());
            Ok(())
        })
        .unwrap();
        assert_eq!(s.identities.uuid_of(1), Some(U1));
        assert_eq!(persisted.len(), 1);
        s.register_process(2, "h:2".into(), 1, claim(U2, None), now, ok)
            .unwrap();
        assert_eq!(s.identities.uuid_of(2), Some(U2));
        assert!(matches!(
            s.heartbeat_process(2, U1, 1, BrokerReport::default(), now, ok),
            Err(ErrorKind::IdentityConflict { .. })
        ));
    }

    #[test]
    fn replace_is_for_a_down_broker_and_lets_a_new_process_take_the_id() {
        let mut s = state();
        let t0 = Instant::now();
        for (id, u) in [(1, U1), (2, U2)] {
            s.register_process(id, format!("h:{id}"), 1, claim(u, None), t0, ok)
                .unwrap();
        }
        s.create_topic("t", 6, None, None, Default::default(), ok)
            .unwrap();
        let on_1 = s.held_by(1);
        assert!(!on_1.is_empty());
        let e = s
            .replace(1, |_| panic!("refused: nothing persisted"))
            .unwrap_err();
        assert!(
            matches!(e, ErrorKind::BrokerUp { id: 1, .. }) && e.to_string().contains("UP"),
            "{e}"
        );
        assert_eq!(
            s.replace(9, ok).unwrap_err(),
            ErrorKind::UnknownBroker { id: 9 }
        );

        let later = t0 + Duration::from_secs(10);
        s.heartbeat_process(2, U2, 1, BrokerReport::default(), later, ok)
            .unwrap();
        s.expire(later, Duration::from_secs(3));
        let mut persisted = Vec::new();
        let shards = s
            .replace(1, |ops| {
                persisted.extend(ops.iter().cloned());
                Ok(())
            })
            .unwrap();
        assert_eq!(shards, on_1);
        assert!(matches!(persisted[..], [Op::Unbind(1)]));
        let fresh = "33333333-3333-4333-8333-333333333333";
        s.register_process(1, "h:3".into(), 1, claim(fresh, Some(C)), later, ok)
            .unwrap();
        assert_eq!(s.identities.uuid_of(1), Some(fresh));
        // It keeps the id's shards (they start empty there) and the old process is now refused.
        assert_eq!(s.held_by(1), on_1);
        assert!(matches!(
            s.register_process(1, "h:1".into(), 1, claim(U1, Some(C)), later, ok),
            Err(ErrorKind::IdentityConflict { .. })
        ));
    }
}
