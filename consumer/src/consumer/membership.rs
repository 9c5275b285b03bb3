//! A consumer as a member of a group whose members share the shards (coordinated by the
//! router, see `shardq_router::groups`): it joins, heartbeats from `poll`, reads only the
//! shards the coordinator lets it own, commits a shard before giving it up, and leaves.
//!
//! Safety rules: a shard is given up only after its position is committed (graceful); when the
//! member cannot tell the coordinator it is alive for a whole session, it stops reading every
//! shard without committing (the coordinator may have handed them to another member, whose
//! commits must not be overwritten), and joins again; "unknown member" is handled the same way.

use std::collections::BTreeSet;
use std::time::Duration;

use shardq_protocol::{ClientError, ErrorKind, Request, Response, ShardId};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{open_cursors, Consumer, ConsumerConfig, ConsumerError};

/// How a consumer takes part in its group.
#[derive(Clone, Debug)]
pub struct Membership {
    /// `sticky` (default), `range` or `round-robin`: how the group spreads its shards (the
    /// group keeps its first member's choice).
    pub strategy: String,
    /// A member silent for this long loses its shards to the others.
    pub session_timeout: Duration,
    /// Names the member in `group describe` (e.g. `runconsume-3`).
    pub client: String,
}

impl Default for Membership {
    fn default() -> Self {
        Membership {
            strategy: "sticky".into(),
            session_timeout: Duration::from_secs(10),
            client: "consumer".into(),
        }
    }
}

/// The member's standing with the coordinator.
pub(super) struct MemberState {
    pub id: String,
    pub generation: u64,
    /// When the last heartbeat that the coordinator answered was sent.
    pub last_ok: Instant,
    pub next_beat: Instant,
}

impl MemberState {
    fn new(id: String, generation: u64, sent: Instant, every: Duration) -> Self {
        MemberState {
            id,
            generation,
            last_ok: sent,
            next_beat: sent + every,
        }
    }
}

fn beat_every(m: &Membership) -> Duration {
    m.session_timeout / 3
}

/// Joins the group; returns the member and the shards it may read now.
pub(super) async fn join(
    cluster: &shardq_protocol::ClusterClient,
    config: &ConsumerConfig,
    m: &Membership,
    owned: Vec<ShardId>,
) -> Result<(MemberState, Vec<ShardId>), ConsumerError> {
    let sent = Instant::now();
    let request = Request::JoinGroup {
        group: config.group.clone(),
        member: None,
        client: m.client.clone(),
        subscriptions: config.subscriptions.clone(),
        strategy: m.strategy.clone(),
        session_timeout_ms: u32::try_from(m.session_timeout.as_millis()).unwrap_or(u32::MAX),
        owned,
    };
    match cluster.admin(request).await {
        Ok(Response::GroupAssignment {
            member_id,
            generation,
            shards,
            strategy,
        }) => {
            info!(group = %config.group, member = %member_id, generation, %strategy, shards = shards.len(), "joined the group");
            Ok((
                MemberState::new(member_id, generation, sent, beat_every(m)),
                shards,
            ))
        }
        Ok(other) => Err(ConsumerError::Group(format!(
            "the router answered join-group with {}",
            other.name()
        ))),
        Err(e) => Err(ConsumerError::Group(format!(
            "cannot join group {}: {e}",
            config.group
        ))),
    }
}

impl Consumer {
    /// The member's id in its group (None: not a group member, or between memberships).
    pub fn member_id(&self) -> Option<&str> {
        self.member.as_ref().map(|m| m.id.as_str())
    }

    /// Heartbeats when one is due and applies the answer; fences itself after a silent session;
    /// joins again when it is not a member. Failures are logged and retried at the next poll.
    pub(super) async fn keep_membership(&mut self) {
        let Some(m) = self.config.membership.clone() else {
            return;
        };
        let now = Instant::now();
        let Some(state) = &self.member else {
            self.rejoin(&m).await;
            return;
        };
        if now < state.next_beat {
            return;
        }
        if now.saturating_duration_since(state.last_ok) >= m.session_timeout {
            warn!(group = %self.config.group, member = %state.id, "no heartbeat answered for a whole session: giving up every shard (uncommitted) and joining again");
            self.lose_all();
            self.rejoin(&m).await;
            return;
        }
        let request = Request::GroupHeartbeat {
            group: self.config.group.clone(),
            member: state.id.clone(),
            owned: self.assignment(),
        };
        let answer = tokio::time::timeout(beat_every(&m), self.cluster.admin(request)).await;
        match answer {
            Ok(Ok(Response::GroupAssignment {
                generation, shards, ..
            })) => {
                if let Some(st) = &mut self.member {
                    st.last_ok = now;
                    st.next_beat = now + beat_every(&m);
                    if st.generation != generation {
                        debug!(group = %self.config.group, generation, "group generation changed");
                        st.generation = generation;
                    }
                }
                self.apply(shards).await;
            }
            Ok(Err(ClientError::Server(ErrorKind::UnknownMember { .. }))) => {
                warn!(group = %self.config.group, "the coordinator no longer knows this member: giving up every shard (uncommitted) and joining again");
                self.lose_all();
                self.rejoin(&m).await;
            }
            Ok(Ok(other)) => {
                warn!(
                    answer = other.name(),
                    "unexpected answer to a group heartbeat"
                );
                self.retry_beat_soon();
            }
            Ok(Err(e)) => {
                warn!(error = %e, "group heartbeat failed; retrying");
                self.retry_beat_soon();
            }
            Err(_) => {
                warn!("group heartbeat timed out; retrying");
                self.retry_beat_soon();
            }
        }
    }

    fn retry_beat_soon(&mut self) {
        if let Some(st) = &mut self.member {
            st.next_beat = Instant::now() + Duration::from_millis(200);
        }
    }

    async fn rejoin(&mut self, m: &Membership) {
        match join(&self.cluster, &self.config, m, self.assignment()).await {
            Ok((state, shards)) => {
                self.member = Some(state);
                self.apply(shards).await;
            }
            Err(e) => {
                warn!(error = %e, "cannot join the group; retrying at the next poll");
                self.member = None;
            }
        }
    }

    /// Takes the coordinator's answer: commits and gives up the shards not in it, then opens
    /// the new ones at their committed offsets.
    async fn apply(&mut self, shards: Vec<ShardId>) {
        let keep: BTreeSet<&ShardId> = shards.iter().collect();
        let revoked: Vec<ShardId> = self
            .shards
            .iter()
            .filter(|c| !keep.contains(&c.shard))
            .map(|c| c.shard.clone())
            .collect();
        let held: BTreeSet<ShardId> = self.shards.iter().map(|c| c.shard.clone()).collect();
        let added: Vec<ShardId> = shards
            .iter()
            .filter(|s| !held.contains(*s))
            .cloned()
            .collect();
        if revoked.is_empty() && added.is_empty() {
            return;
        }
        if !revoked.is_empty() {
            // Committed before they are given up, so the next owner starts where we stopped.
            if let Err(e) = self.commit().await {
                warn!(error = %e, "commit before giving up shards failed; the next owner may read some records again");
            }
            info!(group = %self.config.group, shards = ?revoked.iter().map(ToString::to_string).collect::<Vec<_>>(), "giving up shards");
            self.remove_cursors(|s| revoked.contains(s));
        }
        if !added.is_empty() {
            match open_cursors(&self.cluster, &self.config, added.clone()).await {
                Ok(cursors) => {
                    info!(group = %self.config.group, shards = ?added.iter().map(ToString::to_string).collect::<Vec<_>>(), "taking shards");
                    self.relayout();
                    self.shards.extend(cursors);
                }
                // Not taken: the next heartbeat reports them not owned and they are offered
                // again.
                Err(e) => {
                    warn!(error = %e, "cannot open the shards the group gave; retrying at the next heartbeat")
                }
            }
        }
    }

    /// Drops every cursor without committing (membership lost).
    fn lose_all(&mut self) {
        self.remove_cursors(|_| true);
        self.member = None;
    }

    fn remove_cursors(&mut self, gone: impl Fn(&ShardId) -> bool) {
        self.relayout();
        self.shards.retain(|c| !gone(&c.shard));
    }

    /// Before the cursors change: fetch answers name cursors by index, so every fetch in
    /// flight is dropped (its answer would be ignored) and starts again at the same position.
    fn relayout(&mut self) {
        for c in &mut self.shards {
            if let Some(f) = c.fetch.take() {
                f.abort();
            }
        }
        self.layout += 1;
        self.new_round(Instant::now());
    }

    /// Leaves the group gracefully: commits every shard, gives them up and tells the
    /// coordinator, so the others take them at once. For a consumer without a group, commits.
    pub async fn leave(&mut self) -> Result<(), ConsumerError> {
        let committed = self.commit().await;
        if let Some(st) = self.member.take() {
            self.remove_cursors(|_| true);
            let request = Request::LeaveGroup {
                group: self.config.group.clone(),
                member: st.id.clone(),
            };
            if let Err(e) = self.cluster.admin(request).await {
                // Its session expires instead; its shards were committed.
                warn!(error = %e, "cannot tell the coordinator this member leaves");
            } else {
                info!(group = %self.config.group, member = %st.id, "left the group");
            }
        }
        committed
    }
}
