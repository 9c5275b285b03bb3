use super::*;

fn topics(name: &str) -> Option<u32> {
    match name {
        "T" => Some(12),
        "U" => Some(3),
        _ => None,
    }
}

const P: Partitions<'static> = &topics;

fn all_t() -> Vec<ShardSpec> {
    vec![ShardSpec::All("T".into())]
}

fn joining(client: &str, subscriptions: Vec<ShardSpec>) -> Joining<'_> {
    Joining {
        group: "g",
        member: None,
        client,
        subscriptions,
        strategy: Strategy::Sticky,
        session: SESSION,
        owned: Vec::new(),
    }
}

/// A member that follows the protocol: owns exactly what it was last granted, and stops
/// reading everything once its last answered heartbeat is a session old.
struct Sim {
    id: String,
    owned: Vec<ShardId>,
    last_ok: Instant,
}

const SESSION: Duration = Duration::from_secs(10);

impl Sim {
    fn fence(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_ok) >= SESSION {
            self.owned.clear();
        }
    }
}

fn join(c: &mut Coordinator, client: &str, now: Instant) -> Sim {
    let a = c.join(joining(client, all_t()), P, now).expect("join");
    Sim {
        id: a.member_id,
        owned: a.shards,
        last_ok: now,
    }
}

fn beat(c: &mut Coordinator, m: &mut Sim, now: Instant) {
    let a = c
        .heartbeat("g", &m.id, m.owned.clone(), P, now)
        .expect("heartbeat");
    m.owned = a.shards;
    m.last_ok = now;
}

/// A heartbeat as a real member handles it: "unknown member" means give up everything and
/// join again.
fn beat_or_rejoin(c: &mut Coordinator, m: &mut Sim, now: Instant) {
    match c.heartbeat("g", &m.id, m.owned.clone(), P, now) {
        Ok(a) => {
            m.owned = a.shards;
            m.last_ok = now;
        }
        Err(GroupError::UnknownMember { .. }) => {
            m.owned.clear();
            *m = join(c, &m.id.clone(), now);
        }
        Err(e) => panic!("{e}"),
    }
}

/// No shard is owned by two members.
fn exclusive(members: &[Sim]) {
    let mut seen = BTreeMap::new();
    for m in members {
        for s in &m.owned {
            if let Some(other) = seen.insert(s.clone(), m.id.clone()) {
                panic!("{s} owned by {other} and {}", m.id);
            }
        }
    }
}

#[test]
fn a_join_moves_shards_only_after_their_owners_let_go() {
    let mut c = Coordinator::default();
    let now = Instant::now();
    let mut ms = vec![join(&mut c, "a", now)];
    ms.push(join(&mut c, "b", now));
    ms.push(join(&mut c, "c", now));
    // Everyone heartbeats twice: revocations, then grants.
    for _ in 0..2 {
        for m in ms.iter_mut() {
            beat(&mut c, m, now);
        }
        exclusive(&ms);
    }
    assert!(
        ms.iter().all(|m| m.owned.len() == 4),
        "{:?}",
        ms.iter().map(|m| m.owned.len()).collect::<Vec<_>>()
    );
    let before: BTreeMap<ShardId, String> = ms
        .iter()
        .flat_map(|m| m.owned.iter().map(|s| (s.clone(), m.id.clone())))
        .collect();
    // d joins: nothing for it while the others still own its shards.
    let mut d = join(&mut c, "d", now);
    assert!(d.owned.is_empty(), "{:?}", d.owned);
    ms.push(d);
    exclusive(&ms);
    // The old members heartbeat: each is told to give up one shard (and does), but d gets
    // nothing until they report that they let go, at their next heartbeat.
    for m in ms.iter_mut().take(3) {
        beat(&mut c, m, now);
    }
    assert!(ms.iter().take(3).all(|m| m.owned.len() == 3));
    d = ms.pop().unwrap();
    beat(&mut c, &mut d, now);
    assert!(d.owned.is_empty(), "{:?}", d.owned);
    for m in ms.iter_mut() {
        beat(&mut c, m, now);
    }
    beat(&mut c, &mut d, now);
    assert_eq!(d.owned.len(), 3);
    ms.push(d);
    exclusive(&ms);
    let after: BTreeMap<ShardId, String> = ms
        .iter()
        .flat_map(|m| m.owned.iter().map(|s| (s.clone(), m.id.clone())))
        .collect();
    let moved = before.iter().filter(|(s, o)| after[*s] != **o).count();
    assert_eq!(moved, 3, "only the new member's share moved");
}

#[test]
fn leaving_and_expiring_members_free_their_shards() {
    let mut c = Coordinator::default();
    let t0 = Instant::now();
    let mut ms: Vec<Sim> = ["a", "b", "c"]
        .iter()
        .map(|n| join(&mut c, n, t0))
        .collect();
    for _ in 0..2 {
        for m in ms.iter_mut() {
            beat(&mut c, m, t0);
        }
    }
    // b leaves gracefully: a and c get its shards at their next heartbeat.
    let b = ms.remove(1);
    c.leave("g", &b.id, P);
    for m in ms.iter_mut() {
        beat(&mut c, m, t0);
    }
    assert_eq!(ms.iter().map(|m| m.owned.len()).sum::<usize>(), 12);
    exclusive(&ms);
    assert!(matches!(
        c.heartbeat("g", &b.id, vec![], P, t0),
        Err(GroupError::UnknownMember { .. })
    ));
    // c stops heartbeating: after its session, a takes everything.
    let t1 = t0 + Duration::from_secs(11);
    beat(&mut c, &mut ms[0], t1 - Duration::from_secs(2));
    let gone = c.expire(P, t1);
    assert_eq!(gone, vec![("g".to_string(), ms[1].id.clone())]);
    beat(&mut c, &mut ms[0], t1);
    assert_eq!(ms[0].owned.len(), 12);
    assert_eq!(c.names(), vec!["g".to_string()]);
    c.leave("g", &ms[0].id, P);
    assert!(c.names().is_empty(), "an empty group goes");
}

#[test]
fn subscriptions_that_name_nothing_are_refused_and_topic_growth_rebalances() {
    let mut c = Coordinator::default();
    let now = Instant::now();
    let r = c.join(joining("x", vec![ShardSpec::All("nope".into())]), P, now);
    assert!(matches!(r, Err(GroupError::NoShards { .. })), "{r:?}");
    let a = c
        .join(
            Joining {
                strategy: Strategy::Range,
                ..joining("x", vec![ShardSpec::All("U".into())])
            },
            P,
            now,
        )
        .unwrap();
    assert_eq!(a.shards.len(), 3);
    let gen = a.generation;
    // U grows to 5: the next heartbeat sees it.
    let grown = |t: &str| if t == "U" { Some(5) } else { topics(t) };
    let b = c
        .heartbeat("g", &a.member_id, a.shards.clone(), &grown, now)
        .unwrap();
    assert_eq!(b.shards.len(), 5);
    assert!(b.generation > gen);
}

/// Random joins, leaves, crashes (expiry) and heartbeats of members that follow the protocol:
/// no shard is ever owned by two members, and once everyone has heartbeated twice with no
/// change, every shard is owned and the members' counts differ by at most one.
#[test]
fn random_membership_changes_never_share_a_shard() {
    let mut seed: u64 = 0x5eed;
    let mut rnd = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    for _case in 0..200 {
        let mut c = Coordinator::default();
        let mut now = Instant::now();
        let mut ms: Vec<Sim> = Vec::new();
        let mut crashed: Vec<Sim> = Vec::new();
        for step in 0..60 {
            now += Duration::from_millis(500);
            match rnd(10) {
                0 | 1 if ms.len() < 6 => ms.push(join(&mut c, &format!("m{step}"), now)),
                2 if !ms.is_empty() => {
                    let m = ms.remove(rnd(ms.len() as u64) as usize);
                    c.leave("g", &m.id, P);
                }
                3 if !ms.is_empty() => {
                    // Crashed: stops heartbeating but keeps "owning" until it expires.
                    crashed.push(ms.remove(rnd(ms.len() as u64) as usize));
                }
                _ => {
                    if !ms.is_empty() {
                        let i = rnd(ms.len() as u64) as usize;
                        beat_or_rejoin(&mut c, &mut ms[i], now);
                    }
                }
            }
            for m in ms.iter_mut().chain(crashed.iter_mut()) {
                m.fence(now);
            }
            let expired = c.expire(P, now);
            crashed.retain(|m| !expired.iter().any(|(_, id)| *id == m.id));
            let everyone: Vec<Sim> = ms
                .iter()
                .chain(crashed.iter())
                .map(|m| Sim {
                    id: m.id.clone(),
                    owned: m.owned.clone(),
                    last_ok: m.last_ok,
                })
                .collect();
            exclusive(&everyone);
        }
        // Let the crashed expire, then settle.
        now += SESSION + Duration::from_secs(1);
        for m in ms.iter_mut() {
            beat_or_rejoin(&mut c, m, now - Duration::from_secs(1));
        }
        c.expire(P, now);
        for _ in 0..3 {
            for m in ms.iter_mut() {
                beat_or_rejoin(&mut c, m, now);
            }
            exclusive(&ms);
        }
        if ms.is_empty() {
            continue;
        }
        let counts: Vec<usize> = ms.iter().map(|m| m.owned.len()).collect();
        assert_eq!(counts.iter().sum::<usize>(), 12, "{counts:?}");
        let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(hi - lo <= 1, "{counts:?}");
    }
}

#[test]
fn a_restarted_coordinator_grants_only_what_members_hold_until_it_is_warm() {
    let now = Instant::now();
    let mut c = Coordinator::new(Some(now + SESSION));
    // a still reads T:P1..P6 from before the restart and says so; b is new.
    let held: Vec<ShardId> = (1..=6).map(|p| ShardId::new("T", p)).collect();
    let a = c
        .join(
            Joining {
                owned: held.clone(),
                ..joining("a", all_t())
            },
            P,
            now,
        )
        .unwrap();
    assert!(
        a.shards.iter().all(|s| held.contains(s)),
        "nothing new yet: {:?}",
        a.shards
    );
    let b = c.join(joining("b", all_t()), P, now).unwrap();
    assert!(
        b.shards.is_empty(),
        "nothing new while warming: {:?}",
        b.shards
    );
    let later = now + SESSION;
    let a = c.heartbeat("g", &a.member_id, a.shards, P, later).unwrap();
    let b = c.heartbeat("g", &b.member_id, vec![], P, later).unwrap();
    let a = c.heartbeat("g", &a.member_id, a.shards, P, later).unwrap();
    let b = c.heartbeat("g", &b.member_id, b.shards, P, later).unwrap();
    assert_eq!(b.shards.len() + a.shards.len(), 12, "{a:?} {b:?}");
}
