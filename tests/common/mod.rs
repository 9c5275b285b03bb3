//! Helpers shared by the end-to-end tests: an in-process cluster (router + brokers on ephemeral
//! loopback ports in a temp dir) and polling with a deadline.

#![allow(dead_code)]

pub mod http;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shardq_protocol::cluster::ClusterClient;
use shardq_protocol::{ConnectionConfig, Request, Response, Secret};

/// Where a test cluster listens and the secret its clients prove (as a token file too, for the
/// command-line clients).
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: String,
    pub token: PathBuf,
    pub secret: Secret,
}

impl Endpoint {
    pub fn connection(&self) -> ConnectionConfig {
        ConnectionConfig {
            secret: Some(self.secret.clone()),
            ..ConnectionConfig::default()
        }
    }

    pub async fn client(&self) -> ClusterClient {
        ClusterClient::connect(&self.addr, self.connection())
            .await
            .expect("client connects")
    }

    pub fn producer_config(&self) -> shardq_producer::ProducerConfig {
        let mut c = shardq_producer::ProducerConfig::new(self.addr.clone());
        c.connection.secret = Some(self.secret.clone());
        c
    }

    pub fn consumer_config(
        &self,
        group: &str,
        subs: Vec<shardq_protocol::ShardSpec>,
    ) -> shardq_consumer::ConsumerConfig {
        let mut c = shardq_consumer::ConsumerConfig::new(self.addr.clone(), group, subs);
        c.connection.secret = Some(self.secret.clone());
        c
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub router: shardq_router::RouterHandle,
    pub brokers: Vec<shardq_broker::BrokerHandle>,
    pub secret: Secret,
}

impl Cluster {
    pub async fn start(brokers: u32, fsync: &str) -> Cluster {
        Self::start_with(brokers, fsync, false).await
    }

    /// With `open_data_plane`, clients without the secret may produce and fetch.
    pub async fn start_with(brokers: u32, fsync: &str, open_data_plane: bool) -> Cluster {
        Self::start_tuned(brokers, fsync, open_data_plane, |_| {}).await
    }

    /// [`Cluster::start_with`], with `tune` changing the router's configuration first.
    pub async fn start_tuned(
        brokers: u32,
        fsync: &str,
        open_data_plane: bool,
        tune: impl FnOnce(&mut shardq_router::RouterConfig),
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        // Authentication on, as every real cluster runs.
        let secret = Secret::write_new(&dir.path().join("cluster.token")).expect("token file");
        let mut rc = shardq_router::RouterConfig::new(dir.path().join("router"));
        rc.listen = "127.0.0.1:0".into();
        rc.listener.secret = Some(secret.clone());
        rc.listener.open_data_plane = open_data_plane;
        rc.http = Some("127.0.0.1:0".into());
        tune(&mut rc);
        let router = shardq_router::start(rc).await.expect("router starts");
        let mut handles = Vec::new();
        for id in 1..=brokers {
            let mut bc =
                shardq_broker::BrokerConfig::new(id, dir.path().join(format!("broker-{id}")));
            bc.listen = "127.0.0.1:0".into();
            bc.router = Some(router.addr().to_string());
            bc.fsync = fsync.parse().expect("fsync policy");
            bc.listener.secret = Some(secret.clone());
            bc.listener.open_data_plane = open_data_plane;
            handles.push(shardq_broker::start(bc).await.expect("broker starts"));
        }
        let c = Cluster {
            dir,
            router,
            brokers: handles,
            secret,
        };
        let want = brokers as usize;
        let client = c.client().await;
        wait_until(Duration::from_secs(20), "all brokers registered", || {
            let client = client.clone();
            async move {
                matches!(client.admin(Request::ListBrokers).await,
                    Ok(Response::Brokers(b)) if b.len() == want)
            }
        })
        .await;
        c
    }

    /// The router's HTTP address.
    pub fn http(&self) -> String {
        self.router.http_addr().expect("http on").to_string()
    }

    /// The bearer token of the cluster's HTTP API: the token file's line.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cluster.token"))
            .expect("token file")
            .trim()
            .to_string()
    }

    pub fn addr(&self) -> String {
        self.router.addr().to_string()
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr(),
            token: self.dir.path().join("cluster.token"),
            secret: self.secret.clone(),
        }
    }

    pub async fn client(&self) -> ClusterClient {
        self.endpoint().client().await
    }

    /// Creates `name` at the router's default replication factor.
    pub async fn create_topic(&self, name: &str, partitions: u32) {
        self.create_topic_replicated(name, partitions, None).await
    }

    /// Creates `name` with `replication_factor` replicas per shard (None: the default).
    pub async fn create_topic_replicated(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: Option<u32>,
    ) {
        let r = self
            .client()
            .await
            .admin(Request::CreateTopic {
                name: name.into(),
                partitions,
                replication_factor,
                min_insync: None,
                retention: Default::default(),
            })
            .await
            .expect("topic created");
        assert!(matches!(r, Response::TopicCreated(_)), "{r:?}");
    }

    /// Starts broker `id` (a new one joins: shards move to it).
    pub async fn add_broker(&mut self, id: u32) {
        let mut bc =
            shardq_broker::BrokerConfig::new(id, self.dir.path().join(format!("broker-{id}")));
        bc.listen = "127.0.0.1:0".into();
        bc.router = Some(self.addr());
        bc.listener.secret = Some(self.secret.clone());
        self.brokers
            .push(shardq_broker::start(bc).await.expect("broker starts"));
    }

    pub async fn stop(self) {
        for b in self.brokers {
            b.shutdown().await;
        }
        self.router.shutdown().await;
    }
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster of real processes under `shardq up` (router + brokers as children), for tests that
/// kill processes. Stopped (SIGTERM, then kill) on `stop` or drop.
pub struct UpCluster {
    pub dir: tempfile::TempDir,
    pub child: tokio::process::Child,
    pub router: String,
}

impl UpCluster {
    pub async fn start(brokers: u32, extra: &[&str]) -> UpCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
            .args([
                "up",
                "--brokers",
                &brokers.to_string(),
                "--port",
                "0",
                "--data",
            ])
            .arg(dir.path())
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group: dropping the cluster (a failed assertion) kills `shardq up`
            // and the router and brokers it started, not only `shardq up`.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("shardq up starts");
        let mut router = None;
        let path = dir.path().to_path_buf();
        wait_until(Duration::from_secs(60), "cluster.json", || {
            router = read_cluster(&path).and_then(|v| v["router"].as_str().map(str::to_string));
            let ok = router.is_some();
            async move { ok }
        })
        .await;
        UpCluster {
            dir,
            child,
            router: router.expect("router address"),
        }
    }

    /// The router's address and the secret `shardq up` created.
    pub fn endpoint(&self) -> Endpoint {
        let token = self.dir.path().join("cluster.token");
        Endpoint {
            addr: self.router.clone(),
            secret: Secret::load(&token).expect("shardq up wrote its token file"),
            token,
        }
    }

    pub fn info(&self) -> serde_json::Value {
        read_cluster(self.dir.path()).expect("cluster.json readable")
    }

    /// The router's HTTP address (`HOST:PORT`), from cluster.json.
    pub fn http(&self) -> String {
        let info = self.info();
        info["http"]
            .as_str()
            .and_then(|u| u.strip_prefix("http://"))
            .and_then(|u| u.strip_suffix('/'))
            .expect("http://ADDR/ in cluster.json")
            .to_string()
    }

    /// The HTTP API's bearer token: the token file's line.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cluster.token"))
            .expect("token file")
            .trim()
            .to_string()
    }

    /// A client once `brokers` brokers are members, with topic `topic` created (`partitions`,
    /// `replication_factor`, None: the default).
    pub async fn ready_with_topic(
        &self,
        brokers: usize,
        topic: &str,
        partitions: u32,
        replication_factor: Option<u32>,
    ) -> ClusterClient {
        let client = self.endpoint().client().await;
        wait_until(Duration::from_secs(30), "every broker registered", || {
            let client = client.clone();
            async move {
                matches!(client.admin(Request::ListBrokers).await,
                    Ok(Response::Brokers(b)) if b.len() == brokers)
            }
        })
        .await;
        let r = client
            .admin(Request::CreateTopic {
                name: topic.into(),
                partitions,
                replication_factor,
                min_insync: None,
                retention: Default::default(),
            })
            .await
            .expect("topic created");
        assert!(matches!(r, Response::TopicCreated(_)), "{r:?}");
        client
    }

    pub fn router_pid(&self) -> i32 {
        self.info()["router_pid"].as_u64().expect("router pid") as i32
    }

    pub fn broker_pid(&self, id: u32) -> Option<i32> {
        self.info()["broker_pids"]
            .as_array()?
            .iter()
            .find(|p| p[0].as_u64() == Some(id as u64))
            .and_then(|p| p[1].as_u64())
            .map(|p| p as i32)
    }

    pub fn broker_addrs(&self) -> Vec<(u32, String)> {
        self.info()["brokers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| Some((b[0].as_u64()? as u32, b[1].as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        assert!(
            matches!(status, Ok(Ok(s)) if s.success()),
            "shardq up did not stop cleanly: {status:?}"
        );
    }
}

impl Drop for UpCluster {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
        if std::thread::panicking() {
            // A failed test keeps its cluster's data and logs to look into.
            self.dir.disable_cleanup(true);
            eprintln!(
                "the cluster's data and logs are kept in {}",
                self.dir.path().display()
            );
        }
    }
}

fn read_cluster(dir: &std::path::Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("cluster.json")).ok()?;
    serde_json::from_str(&text).ok()
}

pub fn kill9(pid: i32) {
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Runs `runconsume --id ID --topics ...` (in process) against `addr`, writing into `dir`.
pub fn spawn_consumer(
    at: &Endpoint,
    dir: &std::path::Path,
    id: u32,
    topics: &[&str],
    idle_secs: u32,
) -> tokio::task::JoinHandle<anyhow::Result<shardq_consumer::cli::Summary>> {
    use clap::Parser;
    let (id, idle, dir, token) = (
        id.to_string(),
        idle_secs.to_string(),
        dir.display().to_string(),
        at.token.display().to_string(),
    );
    let mut argv = vec![
        "runconsume",
        "--token-file",
        &token,
        "--id",
        &id,
        "--broker",
        &at.addr,
        "--log_loc",
        &dir,
        "--idle-timeout",
        &idle,
        "--topics",
    ];
    argv.extend_from_slice(topics);
    let args = shardq_consumer::cli::Args::try_parse_from(argv).expect("runconsume arguments");
    tokio::spawn(shardq_consumer::cli::run(
        args,
        shardq_protocol::CancellationToken::new(),
    ))
}

/// Runs `runproduce --id ID --ack-log --topics ... EXTRA...` (in process) on `dir/producer_ID.txt`.
pub fn spawn_producer(
    at: &Endpoint,
    dir: &std::path::Path,
    id: u32,
    topics: &[&str],
    extra: &[&str],
) -> tokio::task::JoinHandle<anyhow::Result<shardq_producer::cli::Summary>> {
    use clap::Parser;
    let (id, dir, token) = (
        id.to_string(),
        dir.display().to_string(),
        at.token.display().to_string(),
    );
    let mut argv = vec![
        "runproduce",
        "--token-file",
        &token,
        "--id",
        &id,
        "--broker",
        &at.addr,
        "--log_loc",
        &dir,
        "--ack-log",
    ];
    argv.extend_from_slice(extra);
    argv.push("--topics");
    argv.extend_from_slice(topics);
    let args = shardq_producer::cli::Args::try_parse_from(argv).expect("runproduce arguments");
    tokio::spawn(shardq_producer::cli::run(args))
}

/// Runs the verifier over `dir` for these consumers and their subscriptions; panics with its
/// report unless it passes.
pub fn verify_passes(
    dir: &std::path::Path,
    consumers: &[(u32, &[&str])],
) -> shardq::verify::VerifyReport {
    let spec = shardq::verify::VerifySpec {
        dir: dir.to_path_buf(),
        producers: vec![],
        consumers: consumers
            .iter()
            .map(|(id, subs)| {
                (
                    *id,
                    subs.iter()
                        .map(|s| s.parse().expect("shard spec"))
                        .collect(),
                )
            })
            .collect(),
    };
    let report = shardq::verify::verify(&spec).expect("verifier reads the files");
    assert!(report.passed(), "{}", report.render());
    report
}

/// Resident memory of process `pid` in KiB (from /proc).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

// ---- replication helpers ----

pub async fn status(
    client: &shardq_protocol::cluster::ClusterClient,
) -> Option<shardq_protocol::ClusterStatus> {
    match client.admin(shardq_protocol::Request::Status).await {
        Ok(shardq_protocol::Response::Status(s)) => Some(s),
        _ => None,
    }
}

/// Broker id -> shards it leads.
pub fn leaders(
    st: &shardq_protocol::ClusterStatus,
) -> std::collections::BTreeMap<u32, Vec<shardq_protocol::ShardId>> {
    let mut m: std::collections::BTreeMap<u32, Vec<shardq_protocol::ShardId>> =
        std::collections::BTreeMap::new();
    for (r, _) in &st.shards {
        if let Some(o) = &r.owner {
            m.entry(o.id).or_default().push(r.shard.clone());
        }
    }
    m
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: sends a signal to a process this test's cluster started.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// Waits until every replica of every shard of `topic` holds the same records (same end, same
/// checksum) and there are `replicas` of them.
pub async fn replicas_agree(
    client: &shardq_protocol::cluster::ClusterClient,
    topic: &str,
    partitions: u32,
    replicas: usize,
) {
    for p in 1..=partitions {
        let shard = shardq_protocol::ShardId::new(topic, p);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = client
                .admin(shardq_protocol::Request::ShardChecksum {
                    shard: shard.clone(),
                    upto: None,
                })
                .await;
            let sums = match answer {
                Ok(shardq_protocol::Response::Checksums(v)) => v,
                other => panic!("checksum of {shard}: {other:?}"),
            };
            let all_ok = sums.len() == replicas && sums.iter().all(|c| c.error.is_none());
            let same = all_ok
                && sums
                    .iter()
                    .all(|c| (c.end, c.checksum) == (sums[0].end, sums[0].checksum));
            // A leader elected a moment ago may not know the high watermark yet (it learns it
            // from its followers' next fetches): the range must also hold records.
            if same && sums[0].records > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{shard}: replicas still disagree after 60 s: {sums:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A binary of another package of the workspace (runproduce, runconsume), built if missing.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>/deps")
        .to_path_buf();
    let path = dir.join(name);
    if !path.exists() {
        let pkg = if name == "runproduce" {
            "shardq-producer"
        } else {
            "shardq-consumer"
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args(["build", "-p", pkg, "--bin", name])
            .status()
            .expect("cargo runs");
        assert!(st.success(), "cannot build {name}");
    }
    path
}

/// What a `shardq` command printed.
pub struct CliOutput {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `shardq ARGS -b ROUTER --token-file F` against `at` with `stdin`, within 60 s (a
/// command that does not end fails the test).
pub async fn cli(at: &Endpoint, args: &[&str], stdin: &str) -> CliOutput {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardq"))
        .args(args)
        .args(["-b", &at.addr, "--token-file"])
        .arg(&at.token)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("shardq runs");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("shardq {args:?} did not end within 60 s"))
        .expect("shardq output");
    CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
