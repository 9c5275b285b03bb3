//! Placement from the ring: the ring over the Up brokers, the desired placement of every shard,
//! and the shard keys the ring places.

use shardq_protocol::{BrokerId, BrokerStatus, ErrorKind, ShardId};
use shardq_ring::{Assignment, Member as RingMember, ReplicaAssignment, Ring};

use super::State;

impl State {
    pub(super) fn up_ring(&self, except: Option<BrokerId>) -> Result<Ring, ErrorKind> {
        let members: Vec<RingMember> = self
            .members
            .iter()
            .filter(|(id, m)| m.status == BrokerStatus::Up && !m.leaving && Some(**id) != except)
            .map(|(id, m)| RingMember {
                id: *id,
                weight: m.weight,
            })
            .collect();
        self.ring_of(&members)
    }

    fn ring_of(&self, members: &[RingMember]) -> Result<Ring, ErrorKind> {
        Ring::try_new(self.ring.clone(), members).map_err(|e| ErrorKind::Internal {
            reason: format!("cannot build the ring: {e}"),
        })
    }

    /// Where every shard (plus `extra`) should live: the ring over every member that is not
    /// leaving, Up or Down (a Down broker keeps its place: its shards wait for it rather than
    /// moving away).
    pub fn desired(&self, extra: &[ShardId]) -> Result<Assignment, ErrorKind> {
        Ok(self.member_ring()?.place(&self.all_keys(extra)))
    }

    /// Like [`State::desired`], with `r` replicas per shard (the leader first, balanced).
    pub fn desired_replicas(
        &self,
        extra: &[ShardId],
        r: usize,
    ) -> Result<ReplicaAssignment, ErrorKind> {
        Ok(self.member_ring()?.place_replicas(&self.all_keys(extra), r))
    }

    /// The ring over every member that is not leaving, nor down for longer than
    /// `replace_after` (its replicas are re-created on the others; it gets its place back when
    /// it returns).
    fn member_ring(&self) -> Result<Ring, ErrorKind> {
        let now = tokio::time::Instant::now();
        let members: Vec<RingMember> = self
            .members
            .iter()
            .filter(|(_, m)| !m.leaving)
            .filter(|(_, m)| {
                m.status != BrokerStatus::Down
                    || now.saturating_duration_since(m.last_seen) <= self.replace_after
            })
            .map(|(id, m)| RingMember {
                id: *id,
                weight: m.weight,
            })
            .collect();
        self.ring_of(&members)
    }

    /// The ring placement uses now: every token with its owner, and each shard's key with its
    /// hash on it (for the web page's picture of the ring).
    #[allow(clippy::type_complexity)]
    pub fn ring_view(&self) -> Result<(Vec<(u64, BrokerId)>, Vec<(String, u64)>), ErrorKind> {
        let ring = self.member_ring()?;
        let tokens = ring.tokens().collect();
        let shards = self
            .all_keys(&[])
            .into_iter()
            .map(|k| {
                let h = ring.key_hash(&k);
                (k, h)
            })
            .collect();
        Ok((tokens, shards))
    }

    /// Every shard key of every topic plus `extra`, for `Ring::place`.
    pub(super) fn all_keys(&self, extra: &[ShardId]) -> Vec<String> {
        self.topics
            .iter()
            .flat_map(|(t, c)| (1..=c.partitions).map(move |p| ShardId::new(t.clone(), p).key()))
            .chain(extra.iter().map(ShardId::key))
            .collect()
    }
}
