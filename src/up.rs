//! `shardq up`: a local cluster of child processes (one router, N brokers) for trying shardq on
//! one machine. Prints where each listens, writes `DATA/cluster.json` for scripts, restarts a broker
//! process that dies, and stops everything on Ctrl-C / SIGTERM. A broker the router removed from
//! the cluster is not restarted: it exits with `shardq_broker::EXIT_REMOVED` (removed while
//! running, or refused at start because its id was removed earlier, e.g. it was killed right
//! after its drain ended), and its id is never given to a new broker. Nor is a broker the router
//! refused as the process of its id (`shardq_broker::EXIT_REFUSED`: another data dir is bound
//! to that id, or its data dir is another cluster's): it would be refused again, forever.
//!
//! Run again on the same data directory, it restarts the cluster as it was: the router keeps the
//! membership in `DATA/router`, so the brokers started are exactly its members (brokers added
//! with `shardq broker add` included, removed ones not), each on its own `broker-N` data dir;
//! `--brokers` only sizes a new cluster.
//!
//! What happens to the cluster (a broker exits, restarts, is held down or retired) is printed
//! once, on stdout; the log (stderr) carries only what is not printed, so a terminal showing
//! both shows each event once.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use shardq_broker::{EXIT_REFUSED, EXIT_REMOVED};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tracing::{info, warn};

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Number of brokers of a new cluster (a restarted one starts the brokers that are members).
    #[arg(long, default_value_t = 3)]
    pub brokers: u32,
    /// Data directory: router/, broker-N/ and logs/ are created inside.
    #[arg(long, default_value = "./shardq-data")]
    pub data: PathBuf,
    /// Router port on 127.0.0.1 (0 = any free port). Brokers take the ports after it (or any free
    /// port when this is 0).
    #[arg(long, default_value_t = shardq_protocol::DEFAULT_ROUTER_PORT)]
    pub port: u16,
    /// Broker durability policy: always | interval=MS | never.
    #[arg(long, default_value = "interval=100")]
    pub fsync: String,
    /// Extra arguments passed to every broker (e.g. `--broker-arg=--max-record-bytes=2048`).
    #[arg(long = "broker-arg", allow_hyphen_values = true)]
    pub broker_args: Vec<String>,
    /// Extra arguments passed to the router.
    #[arg(long = "router-arg", allow_hyphen_values = true)]
    pub router_args: Vec<String>,
    /// Let clients without the cluster secret produce, fetch and read metadata (control and
    /// admin still need DATA/cluster.token).
    #[arg(long)]
    pub open_data_plane: bool,
    /// Address of the router's web page, JSON API and metrics (default: 127.0.0.1 at the
    /// router port + 80, e.g. 7480; any free port when --port is 0).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Keep the data directory (DATA/broker-N) of a broker that was removed from the cluster;
    /// by default it is deleted when the broker exits removed (its shards live elsewhere).
    #[arg(long)]
    pub keep_removed_data: bool,
    #[command(flatten)]
    pub autoscale: crate::autoscale::AutoscaleArgs,
}

/// Where the router serves HTTP: `--http`, else the router port + 80, else (port 0) a free port
/// the router picks and reports.
fn http_listen(args: &UpArgs) -> Result<String> {
    match &args.http {
        Some(a) => Ok(a.clone()),
        None => local_port(args, 80),
    }
}

/// Where broker `id` serves `/metrics`: the router port + 100 + id, or a free port it reports.
fn metrics_listen(args: &UpArgs, id: u32) -> Result<String> {
    local_port(args, 100 + id)
}

/// 127.0.0.1 at the router port + `offset`, or (port 0) port 0: the process binds a free port
/// and reports it ([`spawn`] reads it), and [`pin_flag`] keeps it for restarts. Picking a free
/// port here and passing it would race: another process started in between (a broker binding
/// its own port 0) can take it.
fn local_port(args: &UpArgs, offset: u32) -> Result<String> {
    if args.port != 0 {
        return Ok(format!("127.0.0.1:{}", u32::from(args.port) + offset));
    }
    Ok("127.0.0.1:0".to_string())
}

/// The cluster secret of the cluster in `data`: `DATA/cluster.token`, created (mode 0600) on
/// the first start. Returns its path and the secret.
fn cluster_secret(data: &Path) -> Result<(PathBuf, shardq_protocol::Secret)> {
    let path = data.join(shardq_protocol::auth::TOKEN_FILE_NAME);
    let secret = if path.exists() {
        shardq_protocol::Secret::load(&path)?
    } else {
        let s = shardq_protocol::Secret::write_new(&path)?;
        info!(path = %path.display(), "created the cluster secret");
        s
    };
    let path = std::fs::canonicalize(&path).unwrap_or(path);
    Ok((path, secret))
}

/// The flags every node of this cluster gets: its secret, and the data plane's openness.
fn auth_args(args: &UpArgs) -> Vec<String> {
    let mut v = vec![
        "--token-file".to_string(),
        args.data
            .join(shardq_protocol::auth::TOKEN_FILE_NAME)
            .display()
            .to_string(),
    ];
    if args.open_data_plane {
        v.push("--open-data-plane".into());
    }
    v
}

/// `DATA/cluster.json`: where everything listens, for scripts and tests.
#[derive(Serialize)]
struct ClusterFile {
    router: String,
    router_pid: Option<u32>,
    /// (id, address) per broker.
    brokers: Vec<(u32, String)>,
    /// (id, pid) per broker.
    broker_pids: Vec<(u32, u32)>,
    /// The router's web page and JSON API (`http://ADDR/`).
    http: String,
    /// (id, `http://ADDR/metrics`) per broker.
    broker_metrics: Vec<(u32, String)>,
}

struct Proc {
    name: String,
    child: Child,
    addr: String,
    args: Vec<String>,
    restarts: u32,
    /// Exited while a hold file kept it down (see the supervisor loop).
    held: bool,
    started: Instant,
}

fn log_file(dir: &Path, name: &str) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .with_context(|| format!("cannot open log file for {name} in {}", dir.display()))
}

/// [`spawn`] failed because the broker exited with [`EXIT_REMOVED`]: the router refused it, its
/// id was removed from the cluster.
#[derive(Debug)]
struct Refused {
    name: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was removed from the cluster: the router refuses its id (exit code {EXIT_REMOVED})",
            self.name
        )
    }
}

impl std::error::Error for Refused {}

fn refused(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Refused>().is_some()
}

/// [`spawn`] failed because the broker exited with [`EXIT_REFUSED`]: the router does not accept
/// this process as the broker of its id. Its id is not retired (the process bound to it keeps
/// it), but restarting this one is pointless.
#[derive(Debug)]
struct IdentityRefused {
    name: String,
}

impl std::fmt::Display for IdentityRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was refused by the router (exit code {EXIT_REFUSED}): another process is bound \
             to its broker id, or its data dir belongs to another cluster (its log says which)",
            self.name
        )
    }
}

impl std::error::Error for IdentityRefused {}

/// A process [`spawn`] started and the addresses it reported.
struct Started {
    child: Child,
    /// From its "... listening on ADDR" line.
    addr: String,
    /// From its "... on http://ADDR/..." line, when it was given `--http` or `--metrics`.
    http: Option<String>,
}

/// The flag whose HTTP address a process reports after its listen address, if it has one.
const HTTP_FLAGS: [&str; 2] = ["--http", "--metrics"];

/// Starts `shardq <args>` and waits for its "... listening on ADDR" line, and then, when it
/// serves HTTP, for its "... on http://ADDR/..." line.
async fn spawn(name: &str, args: &[String], logs: &Path) -> Result<Started> {
    let serves_http = args.iter().any(|a| HTTP_FLAGS.contains(&a.as_str()));
    let exe = std::env::current_exe().context("cannot find the shardq executable")?;
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(log_file(logs, name)?)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut addr = None;
    let http = loop {
        let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
            .await
            .with_context(|| {
                format!(
                    "{name} did not report its address within 20 s (see {}/{name}.log)",
                    logs.display()
                )
            })?
            .with_context(|| format!("reading {name}'s output"))?;
        match line {
            Some(l) => {
                if let Some((_, a)) = l.rsplit_once(" listening on ") {
                    addr = Some(a.trim().to_string());
                    if !serves_http {
                        break None;
                    }
                } else if let Some((_, url)) = l.split_once(" on http://") {
                    if addr.is_some() {
                        let a = url.split('/').next().unwrap_or(url).trim();
                        break Some(a.to_string());
                    }
                }
            }
            None => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                if matches!(&status, Ok(Ok(s)) if s.code() == Some(EXIT_REMOVED)) {
                    return Err(Refused {
                        name: name.to_string(),
                    }
                    .into());
                }
                if matches!(&status, Ok(Ok(s)) if s.code() == Some(EXIT_REFUSED)) {
                    return Err(IdentityRefused {
                        name: name.to_string(),
                    }
                    .into());
                }
                bail!(
                    "{name} exited during start-up (see {}/{name}.log)",
                    logs.display()
                )
            }
        }
    };
    // Keep draining stdout into the log so the child never blocks on a full pipe.
    let mut out = log_file(logs, name)?;
    tokio::spawn(async move {
        use std::io::Write;
        while let Ok(Some(l)) = lines.next_line().await {
            let _ = writeln!(out, "{l}");
        }
    });
    let addr = addr.context("no listen address")?;
    Ok(Started { child, addr, http })
}

fn broker_listen(args: &UpArgs, id: u32) -> String {
    if args.port == 0 {
        "127.0.0.1:0".to_string()
    } else {
        format!("127.0.0.1:{}", args.port as u32 + id)
    }
}

async fn add_broker(args: &UpArgs, router: &str, id: u32, logs: &Path) -> Result<Proc> {
    let mut bargs: Vec<String> = vec![
        "broker".into(),
        "--id".into(),
        id.to_string(),
        "--listen".into(),
        broker_listen(args, id),
        "--data".into(),
        args.data.join(format!("broker-{id}")).display().to_string(),
        "--router".into(),
        router.to_string(),
        "--fsync".into(),
        args.fsync.clone(),
    ];
    bargs.extend(auth_args(args));
    bargs.extend(["--metrics".into(), metrics_listen(args, id)?]);
    bargs.extend(args.broker_args.iter().cloned());
    let name = format!("broker-{id}");
    let started = spawn(&name, &bargs, logs).await?;
    pin_addresses(&mut bargs, &started);
    Ok(Proc {
        name,
        child: started.child,
        addr: started.addr,
        args: bargs,
        restarts: 0,
        held: false,
        started: Instant::now(),
    })
}

/// Starts a broker with a new id: one above every id in use (a process, a data directory, or an
/// id known to be removed). An id the router refuses (removed earlier, though `up` did not know:
/// its data directory was deleted, say) is added to `retired` and the next one is tried.
async fn add_new_broker(
    args: &UpArgs,
    router: &str,
    procs: &[Proc],
    retired: &mut BTreeSet<u32>,
    logs: &Path,
) -> Result<(u32, Proc)> {
    for _ in 0..10 {
        let id = procs
            .iter()
            .filter_map(|p| p.name.strip_prefix("broker-")?.parse::<u32>().ok())
            .chain(used_ids(&args.data))
            .chain(retired.iter().copied())
            .max()
            .unwrap_or(0)
            + 1;
        match add_broker(args, router, id, logs).await {
            Ok(p) => return Ok((id, p)),
            Err(e) if refused(&e) => {
                println!("broker id {id} was removed from the cluster earlier; trying the next id");
                retired.insert(id);
            }
            Err(e) => return Err(e),
        }
    }
    bail!("the router refused 10 new broker ids in a row")
}

/// Broker ids whose data directories exist: a new broker never reuses one (its old data would
/// come back with it).
fn used_ids(data: &Path) -> Vec<u32> {
    std::fs::read_dir(data)
        .map(|rd| {
            rd.filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_prefix("broker-")?
                    .parse()
                    .ok()
            })
            .collect()
        })
        .unwrap_or_default()
}

/// `shardq broker add --data DIR` drops a request file in DIR/control; `up` answers in a
/// matching `.done` file.
fn pending_requests(control: &Path) -> Vec<PathBuf> {
    let mut reqs: Vec<PathBuf> = std::fs::read_dir(control)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "req"))
                .collect()
        })
        .unwrap_or_default();
    reqs.sort();
    reqs
}

pub use shardq_router::up_control::request_broker;

/// The brokers the router (restored from its data dir) has as members: who to start. Empty for a
/// new cluster.
async fn members(router: &str) -> Result<Vec<u32>> {
    let client = crate::admin::client(router).await?;
    match client.admin(shardq_protocol::Request::ListBrokers).await {
        Ok(shardq_protocol::Response::Brokers(bs)) => {
            let mut ids: Vec<u32> = bs.iter().map(|b| b.addr.id).collect();
            ids.sort_unstable();
            Ok(ids)
        }
        Ok(other) => bail!("router answered list-brokers with {}", other.name()),
        Err(e) => Err(e).context("cannot ask the router for its members"),
    }
}

/// A broker exited removed: its data directory holds nothing the cluster needs (its shards
/// moved, or were discarded by a forced removal). Deleted unless `--keep-removed-data`; either
/// way the operator is told where it is and how big it was.
fn forget_removed_data(args: &UpArgs, name: &str) {
    let dir = args.data.join(name);
    if !dir.is_dir() {
        return;
    }
    let size = dir_bytes(&dir);
    if args.keep_removed_data {
        println!(
            "{name}'s data directory {} ({}) is kept (--keep-removed-data); nothing uses it now",
            dir.display(),
            crate::admin::human_bytes(size)
        );
        return;
    }
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => println!(
            "deleted {name}'s data directory {} ({}); --keep-removed-data keeps it",
            dir.display(),
            crate::admin::human_bytes(size)
        ),
        Err(e) => eprintln!(
            "cannot delete {name}'s data directory {}: {e}; delete it by hand",
            dir.display()
        ),
    }
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Restarts must come back on the same addresses, so pin the ports a process got.
fn pin_addresses(args: &mut [String], started: &Started) {
    pin_flag(args, &["--listen"], &started.addr);
    if let Some(http) = &started.http {
        pin_flag(args, &HTTP_FLAGS, http);
    }
}

fn pin_flag(args: &mut [String], flags: &[&str], value: &str) {
    if let Some(i) = args.iter().position(|a| flags.contains(&a.as_str())) {
        if let Some(v) = args.get_mut(i + 1) {
            *v = value.to_string();
        }
    }
}

fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SIGTERM lets the node flush and close cleanly; kill_on_drop is the fallback.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
}

pub async fn run(args: UpArgs) -> Result<()> {
    if args.brokers == 0 {
        bail!("--brokers must be at least 1");
    }
    let logs = args.data.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let (token_path, secret) = cluster_secret(&args.data)?;
    crate::admin::use_secret(Some(secret));
    let mut router_args: Vec<String> = vec![
        "router".into(),
        "--listen".into(),
        broker_listen(&args, 0),
        "--data".into(),
        args.data.join("router").display().to_string(),
    ];
    router_args.extend(auth_args(&args));
    let http = http_listen(&args)?;
    router_args.extend([
        "--http".into(),
        http.clone(),
        "--up-data".into(),
        args.data.display().to_string(),
    ]);
    router_args.extend(args.router_args.iter().cloned());
    let started = spawn("router", &router_args, &logs).await?;
    pin_addresses(&mut router_args, &started);
    let (child, router_addr) = (started.child, started.addr);
    let http = started.http.unwrap_or(http);
    println!("router   listening on {router_addr}");
    println!("web, API http://{http}/ (JSON API under /api, metrics at /metrics)");
    let mut procs = vec![Proc {
        name: "router".into(),
        child,
        addr: router_addr.clone(),
        args: router_args,
        restarts: 0,
        held: false,
        started: Instant::now(),
    }];
    let ids = match members(&router_addr).await? {
        ids if ids.is_empty() => (1..=args.brokers).collect(),
        ids => {
            println!(
                "restarting the cluster in {}: its members are broker(s) {}",
                args.data.display(),
                ids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ids
        }
    };
    // Ids the router refused: removed from the cluster, never started again.
    let mut retired = BTreeSet::new();
    for &id in &ids {
        let (id, p) = match add_broker(&args, &router_addr, id, &logs).await {
            Ok(p) => (id, p),
            Err(e) if refused(&e) => {
                // A member is never refused; this is a new cluster on a data directory whose
                // brokers were all removed: start new ones under new ids.
                println!("broker id {id} was removed from the cluster earlier; using a new id");
                retired.insert(id);
                add_new_broker(&args, &router_addr, &procs, &mut retired, &logs).await?
            }
            Err(e) => return Err(e),
        };
        println!("broker {id} listening on {}", p.addr);
        procs.push(p);
    }
    write_cluster_file(&args.data, &procs, &http)?;
    println!(
        "cluster up: {} broker(s); logs in {}; Ctrl-C stops it",
        ids.len(),
        logs.display()
    );
    let found_by_default = std::fs::canonicalize(shardq_protocol::cli_args::DEFAULT_DATA_DIR)
        .is_ok_and(|d| Some(d) == std::fs::canonicalize(&args.data).ok());
    if found_by_default {
        println!(
            "cluster secret in {} (mode 0600): commands run from this directory find it; \
             elsewhere: export SHARDQ_TOKEN_FILE={}",
            token_path.display(),
            token_path.display()
        );
    } else {
        println!(
            "cluster secret in {} (mode 0600); for the commands that talk to this cluster: \
             export SHARDQ_TOKEN_FILE={}",
            token_path.display(),
            token_path.display()
        );
    }

    if let Some(range) = args.autoscale.autoscale {
        tokio::spawn(crate::autoscale::run(
            args.autoscale.clone(),
            range,
            args.data.clone(),
            router_addr.clone(),
        ));
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let control = args.data.join("control");
    std::fs::create_dir_all(&control)
        .with_context(|| format!("cannot create {}", control.display()))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {}
        }
        for req in pending_requests(&control) {
            let answer =
                match add_new_broker(&args, &router_addr, &procs, &mut retired, &logs).await {
                    Ok((id, p)) => {
                        println!("broker {id} listening on {} (added)", p.addr);
                        let line = format!("{id} {}", p.addr);
                        procs.push(p);
                        write_cluster_file(&args.data, &procs, &http)?;
                        line
                    }
                    Err(e) => format!("error {e:#}"),
                };
            let _ = std::fs::write(req.with_extension("done"), answer);
            let _ = std::fs::remove_file(&req);
        }
        let mut left = Vec::new();
        for (i, p) in procs.iter_mut().enumerate() {
            let Ok(Some(status)) = p.child.try_wait() else {
                continue;
            };
            if p.name != "router" {
                if status.code() == Some(EXIT_REMOVED) {
                    println!(
                        "{} was removed from the cluster and exited (code {EXIT_REMOVED}); not \
                         restarting it: its id is retired",
                        p.name
                    );
                    retired.extend(
                        p.name
                            .strip_prefix("broker-")
                            .and_then(|n| n.parse::<u32>().ok()),
                    );
                    forget_removed_data(&args, &p.name);
                    left.push(i);
                    continue;
                }
                if status.code() == Some(EXIT_REFUSED) {
                    let e = IdentityRefused {
                        name: p.name.clone(),
                    };
                    println!("{e}; not restarting it");
                    left.push(i);
                    continue;
                }
                if status.success() {
                    // Stopped on purpose (SIGTERM or Ctrl-C sent to it alone).
                    println!("{} stopped ({status}); not restarting it", p.name);
                    left.push(i);
                    continue;
                }
            }
            // `touch DATA/control/hold-broker-N` keeps broker N down when it dies (a machine that
            // is gone, for failover drills); removing the file lets it restart.
            let hold = control.join(format!("hold-{}", p.name));
            if hold.exists() {
                if !p.held {
                    println!(
                        "{} exited ({status}); held down by {}: not restarting it until that file is removed",
                        p.name,
                        hold.display()
                    );
                    p.held = true;
                }
                continue;
            }
            p.held = false;
            println!("{} exited ({status}); restarting", p.name);
            if p.started.elapsed() < Duration::from_secs(2) {
                p.restarts += 1;
            } else {
                p.restarts = 0;
            }
            if p.restarts > 5 {
                eprintln!(
                    "{} keeps dying; see {}/{}.log",
                    p.name,
                    logs.display(),
                    p.name
                );
                continue;
            }
            match spawn(&p.name, &p.args, &logs).await {
                Ok(started) => {
                    p.child = started.child;
                    p.addr = started.addr;
                    p.started = Instant::now();
                    println!("{} restarted on {}", p.name, p.addr);
                }
                Err(e) if refused(&e) => {
                    // It was removed (a drain ended, or a forced removal) before it died, too
                    // late to notice: the router refuses it, so it stays down for good.
                    println!("{e}; not restarting it");
                    retired.extend(
                        p.name
                            .strip_prefix("broker-")
                            .and_then(|n| n.parse::<u32>().ok()),
                    );
                    left.push(i);
                }
                Err(e) if e.downcast_ref::<IdentityRefused>().is_some() => {
                    println!("{e}; not restarting it");
                    left.push(i);
                }
                Err(e) => eprintln!("cannot restart {}: {e:#}", p.name),
            }
        }
        for i in left.into_iter().rev() {
            procs.remove(i);
        }
        write_cluster_file(&args.data, &procs, &http)?;
    }
    println!("stopping cluster");
    // Brokers first, then the router.
    for p in procs.iter().rev() {
        terminate(&p.child);
    }
    for p in procs.iter_mut().rev() {
        match tokio::time::timeout(Duration::from_secs(10), p.child.wait()).await {
            Ok(_) => info!("{} stopped", p.name),
            Err(_) => {
                warn!("{} did not stop within 10 s; killing it", p.name);
                let _ = p.child.kill().await;
            }
        }
    }
    let _ = std::fs::remove_file(args.data.join("cluster.json"));
    println!("cluster stopped");
    Ok(())
}

fn write_cluster_file(data: &Path, procs: &[Proc], http: &str) -> Result<()> {
    let broker_id = |p: &Proc| p.name.strip_prefix("broker-")?.parse::<u32>().ok();
    let file = ClusterFile {
        router: procs[0].addr.clone(),
        router_pid: procs[0].child.id(),
        brokers: procs[1..]
            .iter()
            .filter_map(|p| Some((broker_id(p)?, p.addr.clone())))
            .collect(),
        broker_pids: procs[1..]
            .iter()
            .filter_map(|p| Some((broker_id(p)?, p.child.id()?)))
            .collect(),
        http: format!("http://{http}/"),
        broker_metrics: procs[1..]
            .iter()
            .filter_map(|p| {
                let at = p.args.iter().position(|a| a == "--metrics")?;
                Some((
                    broker_id(p)?,
                    format!("http://{}/metrics", p.args.get(at + 1)?),
                ))
            })
            .collect(),
    };
    let tmp = data.join("cluster.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&file)?)?;
    std::fs::rename(&tmp, data.join("cluster.json"))?;
    Ok(())
}
