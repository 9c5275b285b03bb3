//! Chaos under live traffic, with real processes under `shardq up`: 5 brokers, 3 topics x 8
//! partitions with 3 replicas each, 4 producers (ack logs) and 3 consumers running throughout,
//! while a random broker (leaders included) is SIGKILLed 10 times and restarted after 2-5 s, a
//! leader is frozen (SIGSTOP) for three times the router's detection time, one broker loses its
//! data dir and is replaced, one broker is added and one removed (their replicas move). Then the
//! verifier passes (nothing acknowledged lost, nothing twice, per-producer order kept) and every
//! shard's replicas hold the same records.
//!
//! The victims and timings come from a seed printed at the start (`CHAOS_SEED=N` replays one).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{leaders, replicas_agree, signal, status, UpCluster};
use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{BrokerStatus, MovePhase, Request, Response};

const BROKERS: u32 = 5;
const TOPICS: [&str; 3] = ["CA", "CB", "CC"];
/// The router's down timeout (`shardq up`'s default router).
const DETECTION: Duration = Duration::from_secs(1);

/// xorshift64*: enough randomness for victims and pauses, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn hold(data: &Path, id: u32, on: bool) {
    let f = data.join("control").join(format!("hold-broker-{id}"));
    if on {
        std::fs::write(&f, b"").expect("hold file");
    } else {
        let _ = std::fs::remove_file(&f);
    }
}

/// Waits until broker `id` has status `want` at the router.
async fn await_status(client: &ClusterClient, id: u32, want: BrokerStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = status(client).await.and_then(|st| {
            st.brokers
                .iter()
                .find(|b| b.addr.id == id)
                .map(|b| b.status)
        });
        if now == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "broker {id} not {want:?} after 30 s (it is {now:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `shardq up` runs broker `id` as a process other than `old`.
async fn await_restarted(up: &UpCluster, id: u32, old: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = up.broker_pid(id).filter(|p| *p != old) {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "broker {id} was not restarted within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_a_frozen_leader_and_a_lost_disk_lose_nothing_acknowledged() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("chaos seed {seed} (CHAOS_SEED={seed} replays it)");
    let mut rng = Rng(seed);

    let up = UpCluster::start(BROKERS, &[]).await;
    let data = up.dir.path().to_path_buf();
    let at = up.endpoint();
    let client = at.client().await;
    for t in TOPICS {
        let created = client
            .admin(Request::CreateTopic {
                name: t.into(),
                partitions: 8,
                replication_factor: Some(3),
                min_insync: Some(2),
                retention: Default::default(),
            })
            .await
            .unwrap();
        assert!(matches!(created, Response::TopicCreated(_)), "{created:?}");
    }

    // 4 producers over the 3 topics (some records to a fixed partition, most to `*`).
    let logs = tempfile::tempdir().unwrap();
    let dir = logs.path();
    for p in 1..=4u32 {
        let text: String = (0..12_000u32)
            .map(|i| {
                let topic = TOPICS[((p + i) % 3) as usize];
                let part = if i % 7 == 0 {
                    format!("P{}", 1 + i % 8)
                } else {
                    "*".into()
                };
                format!("12:00:00\tp{p}-m{i}\t{part}\t{topic}\n")
            })
            .collect();
        std::fs::write(dir.join(format!("producer_{p}.txt")), text).unwrap();
    }
    let subs: [(u32, &[&str]); 3] = [
        (1, &["CA:*", "CB:*"]),
        (2, &["CC:*"]),
        (3, &["CA:P1", "CB:P5", "CC:P8"]),
    ];
    let consumers: Vec<_> = subs
        .iter()
        .map(|(id, s)| common::spawn_consumer(&at, dir, *id, s, 25))
        .collect();
    let extra = ["--rate", "250", "--timeout-secs", "180"];
    let topics = ["CA:*", "CB:*", "CC:*"];
    let producers: Vec<_> = (1..=4)
        .map(|p| common::spawn_producer(&at, dir, p, &topics, &extra))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 10 kills of random brokers, each restarted after 2-5 s.
    for k in 0..10 {
        let id = 1 + rng.below(BROKERS as u64) as u32;
        let pid = up.broker_pid(id).expect("broker pid");
        let led = status(&client)
            .await
            .map_or(0, |st| leaders(&st).get(&id).map_or(0, Vec::len));
        hold(&data, id, true);
        common::kill9(pid);
        let down_for = Duration::from_millis(2_000 + rng.below(3_000));
        eprintln!("kill {k}: broker {id} (leading {led} shards) down for {down_for:?}");
        tokio::time::sleep(down_for).await;
        hold(&data, id, false);
        await_restarted(&up, id, pid).await;
        tokio::time::sleep(Duration::from_millis(rng.below(1_500))).await;
    }

    // A leader frozen for three times the detection time, then continued.
    let st = status(&client).await.expect("status");
    let (frozen, led) = leaders(&st)
        .into_iter()
        .max_by_key(|(_, s)| s.len())
        .expect("a leader");
    let pid = up.broker_pid(frozen).expect("pid");
    eprintln!("freezing broker {frozen} (leading {} shards)", led.len());
    signal(pid, libc::SIGSTOP);
    tokio::time::sleep(DETECTION * 3).await;
    signal(pid, libc::SIGCONT);

    // A lost disk: the broker stops, its data dir is wiped, and a new process replaces it.
    let lost = 1 + rng.below(BROKERS as u64) as u32;
    let pid = up.broker_pid(lost).expect("pid");
    hold(&data, lost, true);
    common::kill9(pid);
    await_status(&client, lost, BrokerStatus::Down).await;
    std::fs::remove_dir_all(data.join(format!("broker-{lost}"))).expect("wipe the data dir");
    let replaced = client
        .admin(Request::ReplaceBroker { id: lost })
        .await
        .unwrap();
    assert!(
        matches!(&replaced, Response::BrokerReplaced { shards, .. } if shards.is_empty()),
        "every shard is replicated: none starts empty ({replaced:?})"
    );
    eprintln!("broker {lost} lost its disk and was replaced");
    hold(&data, lost, false);
    await_restarted(&up, lost, pid).await;
    await_status(&client, lost, BrokerStatus::Up).await;

    // A broker joins (replicas move to it), and another leaves gracefully (its replicas move
    // away, leaderships with them, then it is removed).
    let (added, _) = shardq::up::request_broker(&data)
        .await
        .expect("broker added");
    let leaving = 1 + rng.below(BROKERS as u64) as u32;
    eprintln!("broker {added} added; broker {leaving} leaves");
    let removed = client
        .admin(Request::RemoveBroker {
            id: leaving,
            force: false,
        })
        .await
        .unwrap();
    assert!(
        matches!(removed, Response::BrokerRemoved { .. }),
        "{removed:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = status(&client).await;
        let drained = st.as_ref().is_some_and(|st| {
            !st.brokers.iter().any(|b| b.addr.id == leaving)
                && st.shards.iter().any(|(r, _)| r.replicas.contains(&added))
                && !st.moves.iter().any(|m| {
                    !matches!(
                        m.phase,
                        MovePhase::Done | MovePhase::Failed | MovePhase::RolledBack
                    )
                })
        });
        if drained {
            break;
        }
        if Instant::now() >= deadline {
            let detail = st.map(|st| {
                let brokers: Vec<String> = st
                    .brokers
                    .iter()
                    .map(|b| format!("{}:{:?}/{} shards", b.addr.id, b.status, b.shards))
                    .collect();
                let moves: Vec<String> = st
                    .moves
                    .iter()
                    .filter(|m| !matches!(m.phase, MovePhase::Done))
                    .map(|m| {
                        format!(
                            "#{} {} {:?}->{} {:?} lag {} {}",
                            m.move_id,
                            m.shard,
                            m.from,
                            m.to,
                            m.phase,
                            m.lag,
                            m.error.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                let leaderless: Vec<String> = st
                    .shards
                    .iter()
                    .filter(|(r, _)| r.owner.is_none() || r.replicas.contains(&leaving))
                    .map(|(r, _)| format!("{} replicas {:?} isr {:?}", r.shard, r.replicas, r.isr))
                    .collect();
                format!("brokers {brokers:?}\nmoves not done {moves:?}\nshards still on {leaving} or leaderless {leaderless:?}")
            });
            panic!(
                "broker {leaving} not drained (or broker {added} holds nothing) after 120 s\n{}",
                detail.unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for p in producers {
        let s = p.await.unwrap().expect("producer finishes");
        assert_eq!(s.failed, 0, "records failed: {s:?}");
    }
    for c in consumers {
        c.await.unwrap().expect("consumer finishes");
    }
    common::verify_passes(dir, &subs);
    // Everything acknowledged is still there after the faults: a consumer that starts now reads
    // every shard again from the beginning (a replica that lost its log and was then elected
    // would have had the others truncate theirs).
    let late: (u32, &[&str]) = (4, &["CA:*", "CB:*", "CC:*"]);
    common::spawn_consumer(&at, dir, late.0, late.1, 10)
        .await
        .unwrap()
        .expect("the late consumer finishes");
    common::verify_passes(dir, &[subs[0], subs[1], subs[2], late]);
    for t in TOPICS {
        replicas_agree(&client, t, 8, 3).await;
    }
    up.stop().await;
}
