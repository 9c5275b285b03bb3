//! Consumer groups whose members share the work, coordinated by the router.
//!
//! Why the router: it already knows every topic's partitions (a member's `T:*` is resolved
//! here), tracks liveness by heartbeats, and every client talks to it for metadata. A
//! broker-side coordinator (Kafka's) would need a coordinator per group and a replicated group
//! log; the router's single authority makes both unnecessary. The committed offsets stay where
//! they are, with each shard on its brokers (replicated with it).
//!
//! The protocol is the incremental, cooperative one of Kafka's KIP-848, with the assignor on
//! the coordinator:
//! - **join**: a member names its subscriptions; the group's target assignment is recomputed
//!   (see [`assign`]) and the member gets a member id.
//! - **heartbeat**: the member reports the shards it owns. The answer is the shards it may own
//!   now: its target shards that it owns, plus its target shards that no other member reports
//!   owning. It gives up (commits, then stops reading) every owned shard not in the answer and
//!   reports that in its next heartbeat. So a shard's next owner starts only after the previous
//!   one committed and let go, or after the previous one's session expired.
//! - **leave**, and **expiry**: a member that has not heartbeated for its session timeout is
//!   removed and its shards are free for the others.
//!
//! Group state is in memory: after a router restart every member's heartbeat is answered
//! "unknown member"; the member then gives up all its shards (committing first) and joins
//! again, so no two members ever read a shard at once.

pub mod assign;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shardq_protocol::{GroupMemberInfo, ShardId, ShardSpec};
use tokio::time::Instant;

pub use assign::Strategy;

/// What a member may own now, as a join or heartbeat answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub member_id: String,
    /// Bumped whenever the group's target assignment changes.
    pub generation: u64,
    pub strategy: Strategy,
    pub shards: Vec<ShardId>,
}

/// Why a heartbeat or leave was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupError {
    /// The member is not (or no longer) in the group: it expired, left, or the router
    /// restarted. It must give up its shards and join again.
    UnknownMember { group: String, member: String },
    /// Nothing to read: the member's subscriptions name no existing shard.
    NoShards { group: String, why: String },
}

impl std::fmt::Display for GroupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GroupError::UnknownMember { group, member } => write!(
                f,
                "member {member} is not in group {group} (its session expired, it left, or the \
                 router restarted): give up its shards and join again"
            ),
            GroupError::NoShards { group, why } => write!(f, "group {group}: {why}"),
        }
    }
}

/// A group as `group describe` shows it: its strategy, generation and members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub strategy: Strategy,
    pub generation: u64,
    pub members: Vec<GroupMemberInfo>,
}

struct Member {
    client: String,
    subscriptions: Vec<ShardSpec>,
    session: Duration,
    last_seen: Instant,
    /// What it reported owning in its last heartbeat.
    owned: BTreeSet<ShardId>,
    /// What the last answer let it own: it may have taken these since it reported.
    granted: BTreeSet<ShardId>,
}

impl Member {
    /// Shards it may be reading now: reported, or granted since.
    fn holds(&self, s: &ShardId) -> bool {
        self.owned.contains(s) || self.granted.contains(s)
    }
}

struct Group {
    strategy: Strategy,
    generation: u64,
    members: BTreeMap<String, Member>,
    /// Shard -> the member the assignment gives it to.
    target: BTreeMap<ShardId, String>,
    /// Member -> the shards it may read, as last resolved (a topic grown or deleted changes it).
    eligible: assign::Eligible,
}

/// Every group with live members.
#[derive(Default)]
pub struct Coordinator {
    groups: BTreeMap<String, Group>,
    next_id: u64,
    /// Until then no shard is granted to a member that does not already hold it: members of
    /// groups from before a router restart either report what they hold (joining again) or
    /// stop reading (their sessions run out) by then.
    warm_until: Option<Instant>,
}

/// A topic's partition count, if it exists.
pub type Partitions<'a> = &'a dyn Fn(&str) -> Option<u32>;

fn resolve(subs: &[ShardSpec], partitions: Partitions<'_>) -> BTreeSet<ShardId> {
    let mut out = BTreeSet::new();
    for s in subs {
        match s {
            ShardSpec::All(t) => {
                if let Some(n) = partitions(t) {
                    out.extend((1..=n).map(|p| ShardId::new(t.clone(), p)));
                }
            }
            ShardSpec::One(id) => {
                if partitions(&id.topic).is_some_and(|n| id.partition <= n) {
                    out.insert(id.clone());
                }
            }
        }
    }
    out
}

impl Group {
    /// Re-resolves the members' subscriptions and, if anything changed (`force`: a member
    /// joined or went), recomputes the target assignment and bumps the generation.
    fn refresh(&mut self, partitions: Partitions<'_>, force: bool) {
        let eligible: assign::Eligible = self
            .members
            .iter()
            .map(|(id, m)| (id.clone(), resolve(&m.subscriptions, partitions)))
            .collect();
        if !force && eligible == self.eligible {
            return;
        }
        self.target = assign::assign(self.strategy, &eligible, &self.target);
        self.eligible = eligible;
        self.generation += 1;
    }

    /// The shards `member` may own now (see the module docs): its target shards that no other
    /// member holds (reported, or granted since its report).
    fn grant(&self, member: &str) -> BTreeSet<ShardId> {
        self.target
            .iter()
            .filter(|(_, owner)| owner.as_str() == member)
            .map(|(s, _)| s)
            .filter(|s| {
                !self
                    .members
                    .iter()
                    .any(|(id, m)| id != member && m.holds(s))
            })
            .cloned()
            .collect()
    }

    /// Grants `member` what it may own now, remembering the grant, and answers it. `warming`:
    /// only what it already holds (see [`Coordinator::warm_until`]).
    fn answer(&mut self, member: &str, warming: bool) -> Assignment {
        let mut granted = self.grant(member);
        if warming {
            if let Some(m) = self.members.get(member) {
                granted.retain(|s| m.holds(s));
            }
        }
        if let Some(m) = self.members.get_mut(member) {
            m.granted = granted.clone();
        }
        Assignment {
            member_id: member.to_string(),
            generation: self.generation,
            strategy: self.strategy,
            shards: granted.into_iter().collect(),
        }
    }
}

/// A member asking to join.
pub struct Joining<'a> {
    pub group: &'a str,
    /// Its old member id, to rejoin under it.
    pub member: Option<&'a str>,
    pub client: &'a str,
    pub subscriptions: Vec<ShardSpec>,
    pub strategy: Strategy,
    pub session: Duration,
    /// Shards it still reads (it joins again after "unknown member", e.g. a router restart).
    pub owned: Vec<ShardId>,
}

impl Coordinator {
    /// A coordinator that grants nothing new before `warm_until` (a restarted router: see the
    /// field).
    pub fn new(warm_until: Option<Instant>) -> Coordinator {
        Coordinator {
            warm_until,
            ..Coordinator::default()
        }
    }

    fn warming(&self, now: Instant) -> bool {
        self.warm_until.is_some_and(|t| now < t)
    }

    /// A member joins `group` (or rejoins under `member`, its old id, if the group still has
    /// it). The group's strategy is the one its first member asked for.
    pub fn join(
        &mut self,
        j: Joining<'_>,
        partitions: Partitions<'_>,
        now: Instant,
    ) -> Result<Assignment, GroupError> {
        let Joining {
            group,
            member,
            client,
            subscriptions,
            strategy,
            session,
            owned: still_owned,
        } = j;
        let warming = self.warming(now);
        if resolve(&subscriptions, partitions).is_empty() {
            return Err(GroupError::NoShards {
                group: group.to_string(),
                why: format!(
                    "the subscriptions {} name no existing shard",
                    subscriptions
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            });
        }
        let g = self
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group {
                strategy,
                generation: 0,
                members: BTreeMap::new(),
                target: BTreeMap::new(),
                eligible: BTreeMap::new(),
            });
        let id = match member.filter(|m| g.members.contains_key(*m)) {
            Some(m) => m.to_string(),
            None => {
                self.next_id += 1;
                format!("{client}-{}", self.next_id)
            }
        };
        let (mut owned, granted) = g
            .members
            .remove(&id)
            .map(|m| (m.owned, m.granted))
            .unwrap_or_default();
        owned.extend(still_owned);
        g.members.insert(
            id.clone(),
            Member {
                client: client.to_string(),
                subscriptions,
                session,
                last_seen: now,
                owned,
                granted,
            },
        );
        g.refresh(partitions, true);
        Ok(g.answer(&id, warming))
    }

    /// A member's heartbeat with the shards it owns now; answers what it may own.
    pub fn heartbeat(
        &mut self,
        group: &str,
        member: &str,
        owned: Vec<ShardId>,
        partitions: Partitions<'_>,
        now: Instant,
    ) -> Result<Assignment, GroupError> {
        let unknown = || GroupError::UnknownMember {
            group: group.to_string(),
            member: member.to_string(),
        };
        let warming = self.warming(now);
        let g = self.groups.get_mut(group).ok_or_else(unknown)?;
        let m = g.members.get_mut(member).ok_or_else(unknown)?;
        m.last_seen = now;
        m.owned = owned.into_iter().collect();
        g.refresh(partitions, false);
        Ok(g.answer(member, warming))
    }

    /// A member leaves (after committing and giving up its shards). Unknown members are
    /// ignored: leaving twice is harmless.
    pub fn leave(&mut self, group: &str, member: &str, partitions: Partitions<'_>) {
        if let Some(g) = self.groups.get_mut(group) {
            if g.members.remove(member).is_some() {
                g.refresh(partitions, true);
            }
            if g.members.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    /// Removes members whose session expired; returns (group, member) of each.
    pub fn expire(&mut self, partitions: Partitions<'_>, now: Instant) -> Vec<(String, String)> {
        let mut gone = Vec::new();
        for (name, g) in &mut self.groups {
            let dead: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| now.saturating_duration_since(m.last_seen) > m.session)
                .map(|(id, _)| id.clone())
                .collect();
            if dead.is_empty() {
                continue;
            }
            for id in dead {
                g.members.remove(&id);
                gone.push((name.clone(), id));
            }
            g.refresh(partitions, true);
        }
        self.groups.retain(|_, g| !g.members.is_empty());
        gone
    }

    /// Groups with live members, by name.
    pub fn names(&self) -> Vec<String> {
        self.groups.keys().cloned().collect()
    }

    pub fn describe(&self, group: &str, now: Instant) -> Option<GroupView> {
        let g = self.groups.get(group)?;
        Some(GroupView {
            strategy: g.strategy,
            generation: g.generation,
            members: g
                .members
                .iter()
                .map(|(id, m)| GroupMemberInfo {
                    member_id: id.clone(),
                    client: m.client.clone(),
                    subscriptions: m.subscriptions.clone(),
                    owned: m.owned.iter().cloned().collect(),
                    target: g
                        .target
                        .iter()
                        .filter(|(_, o)| *o == id)
                        .map(|(s, _)| s.clone())
                        .collect(),
                    last_seen_ms: u64::try_from(
                        now.saturating_duration_since(m.last_seen).as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests;
