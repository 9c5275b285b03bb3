//! Circuit breakers under a paused broker: with 1 of 3 brokers SIGSTOPped (a topic with one
//! replica per shard, so its shards cannot fail over), a producer spread over every shard keeps
//! at least 2/3 of its earlier throughput on the healthy shards, because the stopped broker's
//! records no longer fill its buffer; in fail-fast mode those records fail within the breaker's
//! window (not at the 30 s delivery timeout) with an error naming the broker's breaker, and in
//! wait mode they wait outside the buffer and are all acknowledged once the broker resumes.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use shardq_producer::{Producer, ProducerError};
use shardq_protocol::cluster::BreakerMode;
use shardq_protocol::{CancellationToken, Request, Response, ShardId, ShardSpec};
use tokio::time::Instant;

const PARTITIONS: u32 = 6;

/// SIGCONTs the paused broker on drop, so a failed assertion never leaves it stopped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0, libc::SIGCONT);
        }
    }
}

/// What became of the records, as their deliveries completed.
#[derive(Default)]
struct Log {
    /// When each record of a healthy shard was acknowledged.
    healthy_acks: Vec<Instant>,
    /// Records of the paused broker's shards: sent at, completed at, outcome.
    paused: Vec<(Instant, Instant, Result<(), ProducerError>)>,
    /// Failures of healthy shards' records.
    healthy_failures: Vec<String>,
}

impl Log {
    fn healthy_rate(&self, from: Instant, to: Instant) -> f64 {
        let n = self
            .healthy_acks
            .iter()
            .filter(|t| **t >= from && **t < to)
            .count();
        n as f64 / (to - from).as_secs_f64()
    }
}

/// Sends records round-robin over every shard of `topic` (at `rate` per second, or as fast as
/// the producer takes them) until `stop`, logging every outcome. Returns the records sent.
async fn drive(
    producer: Arc<Producer>,
    topic: &'static str,
    paused: Vec<u32>,
    rate: Option<u64>,
    stop: CancellationToken,
    log: Arc<Mutex<Log>>,
) -> u64 {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let tracker = {
        let log = log.clone();
        tokio::spawn(async move {
            let mut pending = FuturesUnordered::new();
            let mut open = true;
            while open || !pending.is_empty() {
                tokio::select! {
                    got = rx.recv(), if open => match got {
                        Some((p, at, fut)) => pending.push(async move {
                            let r: Result<_, ProducerError> = fut.await;
                            (p, at, r.map(|_| ()), Instant::now())
                        }),
                        None => open = false,
                    },
                    Some((p, at, r, done)) = pending.next(), if !pending.is_empty() => {
                        let mut l = log.lock().unwrap();
                        if paused.contains(&p) {
                            l.paused.push((at, done, r));
                        } else {
                            match r {
                                Ok(()) => l.healthy_acks.push(done),
                                Err(e) => l.healthy_failures.push(e.to_string()),
                            }
                        }
                    }
                }
            }
        })
    };
    let payload = Bytes::from(vec![b'x'; 200]);
    let start = Instant::now();
    let mut sent = 0u64;
    while !stop.is_cancelled() {
        if let Some(rate) = rate {
            let at = start + Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        let p = (sent % u64::from(PARTITIONS)) as u32 + 1;
        let target = ShardSpec::One(ShardId::new(topic, p));
        let fut = tokio::select! {
            _ = stop.cancelled() => break,
            f = producer.send(&target, None, payload.clone()) => f.expect("send accepts the record"),
        };
        tx.send((p, Instant::now(), fut)).expect("tracker runs");
        sent += 1;
        if sent.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), tracker)
        .await
        .expect("every delivery completes within its timeout")
        .expect("tracker");
    sent
}

/// Waits (bounded) until `cond` holds on the log.
async fn wait_log(log: &Mutex<Log>, limit: Duration, what: &str, cond: impl Fn(&Log) -> bool) {
    let deadline = Instant::now() + limit;
    while !cond(&log.lock().unwrap()) {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `topic` with one replica per shard and returns broker id -> partitions it leads.
async fn topic_leaders(
    client: &shardq_protocol::cluster::ClusterClient,
    topic: &str,
) -> BTreeMap<u32, Vec<u32>> {
    let created = client
        .admin(Request::CreateTopic {
            name: topic.into(),
            partitions: PARTITIONS,
            replication_factor: Some(1),
            min_insync: None,
            retention: Default::default(),
        })
        .await
        .unwrap();
    assert!(matches!(created, Response::TopicCreated(_)), "{created:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut m: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        if let Some(st) = common::status(client).await {
            for (b, shards) in common::leaders(&st) {
                for s in shards.into_iter().filter(|s| s.topic == topic) {
                    m.entry(b).or_default().push(s.partition);
                }
            }
        }
        if m.values().map(Vec::len).sum::<usize>() == PARTITIONS as usize {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: shards without a leader: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Phase {
    before: f64,
    during: f64,
}

/// Runs a producer over every shard of a new topic, pauses the broker leading the most of its
/// shards for `pause`, and returns the healthy shards' throughput before and during the pause,
/// the log, the pause and resume times and the paused shards.
async fn run_pause(
    up: &common::UpCluster,
    topic: &'static str,
    mode: BreakerMode,
    buffer_bytes: usize,
    rate: Option<u64>,
    pause: Duration,
    after_resume: impl Fn(&Log, Instant) -> bool,
) -> (Phase, Arc<Mutex<Log>>, Instant, Instant, u32) {
    let at = up.endpoint();
    let client = at.client().await;
    let leaders = topic_leaders(&client, topic).await;
    let (&broker, shards) = leaders
        .iter()
        .max_by_key(|(_, s)| s.len())
        .expect("leaders");
    let paused = shards.clone();
    assert!(!paused.is_empty() && paused.len() < PARTITIONS as usize);
    let mut config = at.producer_config();
    config.buffer_bytes = buffer_bytes;
    config.delivery_timeout = Duration::from_secs(30);
    config.breaker.mode = mode;
    let producer = Arc::new(Producer::connect(config).await.expect("producer"));
    let log = Arc::new(Mutex::new(Log::default()));
    let stop = CancellationToken::new();
    let driver = tokio::spawn(drive(
        producer.clone(),
        topic,
        paused.clone(),
        rate,
        stop.clone(),
        log.clone(),
    ));

    // Warm up, then measure the healthy shards' acknowledgements for 3 s.
    wait_log(
        &log,
        Duration::from_secs(30),
        "first acknowledgements",
        |l| l.healthy_acks.len() > 1000,
    )
    .await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t1 = Instant::now();
    let pid = up.broker_pid(broker).expect("broker runs");
    common::signal(pid, libc::SIGSTOP);
    let resume = Resume(pid);
    let stopped_at = Instant::now();
    tokio::time::sleep(pause).await;
    let t2 = Instant::now();
    drop(resume);
    let resumed_at = Instant::now();
    let phase = {
        let l = log.lock().unwrap();
        Phase {
            before: l.healthy_rate(t0, t1),
            during: l.healthy_rate(stopped_at, t2),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while !after_resume(&log.lock().unwrap(), resumed_at) {
        if Instant::now() > deadline {
            let l = log.lock().unwrap();
            let last = l.paused.iter().rev().take(3).collect::<Vec<_>>();
            panic!(
                "the paused shards did not recover within 40 s of SIGCONT: producer {:?}; routing {:?}; last paused outcomes {last:?}",
                producer.stats(),
                producer.cluster().table().shards.iter().filter(|r| r.shard.topic == topic).map(|r| (r.shard.partition, r.owner.as_ref().map(|o| o.id))).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let sent = tokio::time::timeout(Duration::from_secs(90), driver)
        .await
        .expect("the driver ends")
        .expect("driver");
    let producer = Arc::try_unwrap(producer).unwrap_or_else(|_| panic!("producer still shared"));
    let stats = tokio::time::timeout(Duration::from_secs(60), producer.close())
        .await
        .expect("close");
    println!(
        "{mode:?}: broker {broker} paused (partitions {paused:?}) for {pause:?}; {sent} records sent; \
         healthy shards {:.0} acks/s before, {:.0} acks/s while paused (ratio {:.2}); stats {stats:?}",
        phase.before,
        phase.during,
        phase.during / phase.before,
    );
    assert!(stats.sent >= sent);
    (phase, log, stopped_at, resumed_at, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_does_not_starve_the_healthy_shards() {
    // RUST_LOG=shardq_protocol=debug shows the breakers' transitions.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let up = common::UpCluster::start(3, &[]).await;
    let client = up.endpoint().client().await;
    common::wait_until(Duration::from_secs(30), "three brokers up", || {
        let client = client.clone();
        async move {
            matches!(client.admin(Request::ListBrokers).await,
                Ok(Response::Brokers(b)) if b.len() == 3)
        }
    })
    .await;

    // Fail fast, unpaced: the buffer (8 MiB) would fill with the paused broker's records
    // within about a second.
    let (phase, log, stopped_at, resumed_at, broker) = run_pause(
        &up,
        "FF",
        BreakerMode::FailFast,
        8 << 20,
        None,
        Duration::from_secs(8),
        |l, resumed| l.paused.iter().any(|(at, _, r)| *at > resumed && r.is_ok()),
    )
    .await;
    assert!(
        phase.during >= phase.before * 2.0 / 3.0,
        "healthy shards fell from {:.0} to {:.0} acks/s while broker {broker} was paused",
        phase.before,
        phase.during
    );
    {
        let l = log.lock().unwrap();
        assert!(
            l.healthy_failures.is_empty(),
            "{:?}",
            &l.healthy_failures[..l.healthy_failures.len().min(3)]
        );
        // Records sent to the paused broker's shards while it was paused fail fast, each with
        // the breaker's error naming the broker.
        let during: Vec<_> = l
            .paused
            .iter()
            .filter(|(at, _, _)| *at >= stopped_at && *at < resumed_at)
            .collect();
        assert!(
            during.len() > 100,
            "only {} records for the paused shards",
            during.len()
        );
        let slowest = during
            .iter()
            .map(|(at, done, _)| *done - *at)
            .max()
            .unwrap();
        let first_fail = during
            .iter()
            .filter(|(_, _, r)| r.is_err())
            .map(|(_, done, _)| *done - stopped_at)
            .min()
            .expect("records failed");
        for (_, _, r) in &during {
            match r {
                Err(ProducerError::BreakerOpen { open, .. }) => assert_eq!(open.broker, broker),
                other => panic!("a record for paused broker {broker} ended with {other:?}"),
            }
        }
        println!(
            "fail-fast: {} records for the paused shards, all refused by the breaker; first failed \
             {first_fail:?} after the pause, slowest took {slowest:?}",
            during.len()
        );
        // The breaker's window is 10 s; the delivery timeout is 30 s.
        assert!(
            slowest < Duration::from_secs(10),
            "a record took {slowest:?} to fail"
        );
    }

    // Wait mode, paced (3,000 records/s, 1 MiB buffer: a producer without breakers fills it
    // with the paused broker's records in about 5 s of the 10 s pause, while the breaker opens
    // after 1 to 2 s): nothing fails, the paused records are all acknowledged after SIGCONT.
    let (phase, log, stopped_at, resumed_at, broker) = run_pause(
        &up,
        "WAIT",
        BreakerMode::Wait,
        1 << 20,
        Some(3_000),
        Duration::from_secs(10),
        |l, resumed| l.paused.iter().any(|(at, _, r)| *at > resumed && r.is_ok()),
    )
    .await;
    assert!(
        phase.during >= phase.before * 2.0 / 3.0,
        "healthy shards fell from {:.0} to {:.0} acks/s while broker {broker} was paused",
        phase.before,
        phase.during
    );
    {
        let l = log.lock().unwrap();
        assert!(
            l.healthy_failures.is_empty(),
            "{:?}",
            &l.healthy_failures[..l.healthy_failures.len().min(3)]
        );
        let failed: Vec<_> = l.paused.iter().filter(|(_, _, r)| r.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{} paused records failed: {:?}",
            failed.len(),
            failed.first()
        );
        let waited: Vec<_> = l
            .paused
            .iter()
            .filter(|(at, _, _)| *at >= stopped_at && *at < resumed_at)
            .collect();
        assert!(
            waited.len() > 100,
            "only {} records for the paused shards",
            waited.len()
        );
        let last = waited.iter().map(|(_, done, _)| *done).max().unwrap();
        println!(
        "wait: {} records sent to the paused shards while paused, all acknowledged, the last {:?} \
         after SIGCONT",
        waited.len(),
        last.saturating_duration_since(resumed_at)
    );
        assert!(waited.iter().all(|(_, done, _)| *done >= resumed_at));
    }
    client.close();
    up.stop().await;
}

/// The metrics of `runproduce --metrics` (scraped over HTTP), once it serves them.
async fn scrape(addr: &str) -> String {
    common::wait_until(
        Duration::from_secs(30),
        "runproduce serves /metrics",
        || {
            let addr = addr.to_string();
            async move { tokio::net::TcpStream::connect(&addr).await.is_ok() }
        },
    )
    .await;
    common::http::call(addr, "GET", "/metrics", None, None)
        .await
        .body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runproduce_serves_its_breakers_states_as_metrics() {
    let up = common::UpCluster::start(3, &[]).await;
    let client = up.endpoint().client().await;
    let leaders = topic_leaders(&client, "MX").await;
    let (&broker, _) = leaders
        .iter()
        .max_by_key(|(_, s)| s.len())
        .expect("leaders");
    let dir = tempfile::tempdir().unwrap();
    // runproduce binds it at once; another process taking it in between would fail the run
    // with "cannot serve --metrics", not pass it.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .to_string();
    let producer = common::spawn_producer(
        &up.endpoint(),
        dir.path(),
        1,
        &["MX:*"],
        &[
            "--count",
            "60000",
            "--rate",
            "2000",
            "--breaker",
            "fail-fast",
            "--timeout-secs",
            "5",
            "--metrics",
            &metrics,
        ],
    );
    let open = format!("shardq_client_breaker_state{{broker=\"{broker}\",state=\"open\"}} 1");
    let closed = format!("shardq_client_breaker_state{{broker=\"{broker}\",state=\"closed\"}} 1");
    let first = scrape(&metrics).await;
    assert!(
        first.contains("# TYPE shardq_client_records_acknowledged_total counter"),
        "{first}"
    );

    let pid = up.broker_pid(broker).expect("broker runs");
    common::signal(pid, libc::SIGSTOP);
    let resume = Resume(pid);
    common::wait_until(
        Duration::from_secs(20),
        "the paused broker's breaker opens",
        || {
            let (metrics, open) = (metrics.clone(), open.clone());
            async move { scrape(&metrics).await.lines().any(|l| l == open) }
        },
    )
    .await;
    let opened = scrape(&metrics).await;
    let refused = format!("shardq_client_breaker_refused_total{{broker=\"{broker}\"}} ");
    assert!(
        opened
            .lines()
            .any(|l| l.starts_with(&refused) && !l.ends_with(" 0")),
        "no refusals counted for broker {broker}:\n{opened}"
    );
    drop(resume);
    common::wait_until(Duration::from_secs(30), "the breaker closes again", || {
        let (metrics, closed) = (metrics.clone(), closed.clone());
        async move { scrape(&metrics).await.lines().any(|l| l == closed) }
    })
    .await;
    let summary = producer.await.unwrap().expect("runproduce runs");
    assert!(summary.acknowledged > 0, "{summary:?}");
    up.stop().await;
}
