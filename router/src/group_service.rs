//! The router's answers to consumer-group requests (join, heartbeat, leave, list, describe),
//! over the coordinator in [`crate::groups`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shardq_protocol::{ErrorKind, GroupDescription, Request, Response, ShardId};
use tokio::time::Instant;
use tracing::info;

use crate::groups::{Assignment, GroupError, Joining, Strategy};
use crate::Shared;

/// Longest session a member may ask for (a dead member's shards wait this long at most).
const MAX_SESSION: Duration = Duration::from_secs(300);
/// Shortest: below this a member could not heartbeat reliably.
const MIN_SESSION: Duration = Duration::from_millis(500);

fn assignment(a: Assignment) -> Response {
    Response::GroupAssignment {
        member_id: a.member_id,
        generation: a.generation,
        strategy: a.strategy.to_string(),
        shards: a.shards,
    }
}

fn group_error(e: GroupError) -> ErrorKind {
    match e {
        GroupError::UnknownMember { group, member } => ErrorKind::UnknownMember { group, member },
        e @ GroupError::NoShards { .. } => ErrorKind::BadRequest {
            reason: e.to_string(),
        },
    }
}

impl Shared {
    /// Topic -> partitions, as the coordinator resolves subscriptions.
    fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.state()
            .topics
            .iter()
            .map(|(name, c)| (name.clone(), c.partitions))
            .collect()
    }

    /// Answers a group request (`None`: not one).
    pub(crate) fn group_request(&self, request: &Request) -> Option<Result<Response, ErrorKind>> {
        let counts = self.partition_counts();
        let partitions = |t: &str| counts.get(t).copied();
        let now = Instant::now();
        let mut groups = self.groups();
        for (group, member) in groups.expire(&partitions, now) {
            info!(%group, %member, "group member's session expired; its shards go to the others");
        }
        let answer = match request {
            Request::JoinGroup {
                group,
                member,
                client,
                subscriptions,
                strategy,
                session_timeout_ms,
                owned,
            } => {
                let strategy: Strategy = match strategy.parse() {
                    Ok(s) => s,
                    Err(reason) => return Some(Err(ErrorKind::BadRequest { reason })),
                };
                if group.is_empty() {
                    return Some(Err(ErrorKind::BadRequest {
                        reason: "a group name must not be empty".into(),
                    }));
                }
                let session = Duration::from_millis(u64::from(*session_timeout_ms))
                    .clamp(MIN_SESSION, MAX_SESSION);
                let joined = groups.join(
                    Joining {
                        group,
                        member: member.as_deref(),
                        client,
                        subscriptions: subscriptions.clone(),
                        strategy,
                        session,
                        owned: owned.clone(),
                    },
                    &partitions,
                    now,
                );
                if let Ok(a) = &joined {
                    info!(%group, member = %a.member_id, generation = a.generation, shards = a.shards.len(), "member joined the group");
                }
                joined.map(assignment).map_err(group_error)
            }
            Request::GroupHeartbeat {
                group,
                member,
                owned,
            } => groups
                .heartbeat(group, member, owned.clone(), &partitions, now)
                .map(assignment)
                .map_err(group_error),
            Request::LeaveGroup { group, member } => {
                groups.leave(group, member, &partitions);
                info!(%group, %member, "member left the group");
                Ok(Response::Ok)
            }
            Request::ListGroups => {
                let mut names: BTreeSet<String> = groups.names().into_iter().collect();
                drop(groups);
                names.extend(self.committed_offsets().into_keys());
                Ok(Response::Groups(names.into_iter().collect()))
            }
            Request::DescribeGroup { group } => {
                let view = groups.describe(group, now);
                drop(groups);
                let offsets = self.committed_offsets().remove(group).unwrap_or_default();
                match (view, offsets.is_empty()) {
                    (None, true) => Err(ErrorKind::BadRequest {
                        reason: format!(
                            "no consumer group {group:?}: no live members and no committed offsets"
                        ),
                    }),
                    (view, _) => Ok(Response::Group(GroupDescription {
                        name: group.clone(),
                        strategy: view.as_ref().map_or("-".into(), |v| v.strategy.to_string()),
                        generation: view.as_ref().map_or(0, |v| v.generation),
                        members: view.map(|v| v.members).unwrap_or_default(),
                        offsets,
                    })),
                }
            }
            _ => return None,
        };
        Some(answer)
    }

    /// Group -> (shard, committed offset, end offset), from the leaders' last reports.
    fn committed_offsets(&self) -> BTreeMap<String, Vec<(ShardId, u64, u64)>> {
        let status = self.state().status(Instant::now());
        let mut out: BTreeMap<String, Vec<(ShardId, u64, u64)>> = BTreeMap::new();
        for (route, report) in &status.shards {
            let Some(r) = report else { continue };
            for (group, offset) in &r.groups {
                out.entry(group.clone()).or_default().push((
                    route.shard.clone(),
                    *offset,
                    r.end_offset,
                ));
            }
        }
        out
    }
}
