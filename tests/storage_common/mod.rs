//! Helpers of the storage tests: a `shardq broker` process run under strace, a parser of strace's
//! output, and raw produce/fetch calls against one standalone broker.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shardq_protocol::{
    Acks, ClientError, Connection, ConnectionConfig, FetchRequest, ProduceRequest, Record,
    RecordBatch, Request, Response, Secret, ShardAssignment, ShardId,
};

/// The system calls the strace tests look at.
pub const TRACED: &str = "trace=read,recvfrom,write,writev,sendto,sendmsg,pwrite64,pwritev,\
                          fsync,fdatasync,sync_file_range,openat,unlink,unlinkat";

/// A `shardq broker` process (standalone, `--router none`) running under `strace -f`; killed
/// (with strace) when dropped, so a failed assertion leaves nothing behind.
pub struct TracedBroker {
    strace: Child,
    pub addr: String,
    /// The secret the broker runs with (its token file is in the test's directory).
    pub secret: Secret,
    pub trace: PathBuf,
    pub stderr: PathBuf,
}

/// Reads the broker's "broker 1 listening on ADDR" line (within 30 s) and keeps draining its
/// stdout on a thread so it never blocks on a full pipe.
pub fn listen_address(stdout: std::process::ChildStdout, stderr: Option<&Path>) -> String {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some((_, addr)) = line.rsplit_once(" listening on ") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|e| {
            panic!(
                "the broker did not report its address ({e})\nstderr:\n{}",
                stderr
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default()
            )
        })
}

/// The first child of `pid` (the traced broker under strace).
fn child_of(pid: u32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl TracedBroker {
    /// Starts the broker under strace with `--fsync fsync`, data in `dir`. Panics (the test
    /// fails) if strace is not installed: these tests exist to look at system calls.
    pub fn start(dir: &Path, fsync: &str) -> TracedBroker {
        let trace = dir.join("strace.out");
        let stderr = dir.join("broker.stderr");
        let token = dir.join("cluster.token");
        let secret = Secret::write_new(&token).expect("token file");
        let strace = Command::new("strace")
            .args(["-f", "-tt", "-y", "-s", "256", "-e", TRACED, "-o"])
            .arg(&trace)
            .arg(env!("CARGO_BIN_EXE_shardq"))
            .args(["broker", "--id", "1", "--router", "none", "--fsync", fsync])
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(dir.join("data"))
            .arg("--token-file")
            .arg(&token)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run strace ({e}): install it (apt-get install -y strace); this test \
                     checks the broker's system calls and cannot pass without it"
                )
            });
        let mut strace = strace;
        let addr = listen_address(strace.stdout.take().expect("piped stdout"), Some(&stderr));
        TracedBroker {
            strace,
            addr,
            secret,
            trace,
            stderr,
        }
    }

    /// Connects once the broker listens (bounded wait).
    pub async fn connect(&self) -> Connection {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let config = ConnectionConfig {
                secret: Some(self.secret.clone()),
                ..ConnectionConfig::default()
            };
            match Connection::connect(&self.addr, config).await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!(
                    "the traced broker never listened on {}: {e}\nstderr:\n{}",
                    self.addr,
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                ),
            }
        }
    }

    /// Kills the broker, waits for strace to write everything out, and parses the trace.
    pub fn finish(mut self) -> Vec<Call> {
        if let Some(pid) = child_of(self.strace.id()) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.strace.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "strace did not end after the broker was killed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&self.trace).expect("strace output");
        let calls = parse(&text);
        assert!(
            calls.iter().any(|c| c.is_socket_read()),
            "no socket read parsed from the trace: the parser does not match strace's output"
        );
        calls
    }
}

impl Drop for TracedBroker {
    fn drop(&mut self) {
        if self.strace.try_wait().ok().flatten().is_none() {
            if let Some(pid) = child_of(self.strace.id()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = self.strace.kill();
            let _ = self.strace.wait();
        }
    }
}

/// One system call, in the order strace saw it complete (one the kill interrupted: where it
/// began).
#[derive(Clone, Debug)]
pub struct Call {
    /// Microseconds since midnight (strace -tt).
    pub at_us: u64,
    pub name: String,
    /// The whole call text: arguments and ` = result`.
    pub text: String,
    /// Begun but never completed in the trace: the process was killed while strace held it at
    /// the call's exit (the call's effect, say data sent on a socket, may have happened).
    pub unfinished: bool,
}

impl Call {
    /// The first argument with strace -y's path annotation, e.g. `9</tmp/x/db>`.
    pub fn fd_arg(&self) -> &str {
        let args = &self.text[self.text.find('(').map_or(0, |i| i + 1)..];
        let end = args.find(['>', ',', ')']).map_or(args.len(), |i| i + 1);
        &args[..end]
    }

    pub fn on_db(&self) -> bool {
        self.fd_arg().ends_with("/data/db>")
    }

    /// On one of the shards' segment files (where records' payloads are).
    pub fn on_segment(&self) -> bool {
        let fd = self.fd_arg();
        fd.contains("/data/segments/") && fd.ends_with(".seg>")
    }

    /// A completed, successful fsync or fdatasync of a segment file.
    pub fn is_segment_sync(&self) -> bool {
        matches!(self.name.as_str(), "fsync" | "fdatasync") && self.on_segment() && self.ok()
    }

    pub fn on_socket(&self) -> bool {
        let fd = self.fd_arg();
        fd.contains("socket:[") || fd.contains("TCP")
    }

    pub fn ok(&self) -> bool {
        self.text
            .rsplit_once(" = ")
            .is_some_and(|(_, r)| r.trim_start().starts_with(|c: char| c.is_ascii_digit()))
    }

    /// A completed, successful fsync or fdatasync of sled's database file.
    pub fn is_db_sync(&self) -> bool {
        matches!(self.name.as_str(), "fsync" | "fdatasync") && self.on_db() && self.ok()
    }

    /// A write to a socket that succeeded, or that the kill interrupted (the last answer's
    /// may be, although its client got it).
    pub fn is_socket_write(&self) -> bool {
        matches!(
            self.name.as_str(),
            "write" | "writev" | "sendto" | "sendmsg"
        ) && self.on_socket()
            && (self.ok() || self.unfinished)
    }

    pub fn is_socket_read(&self) -> bool {
        matches!(self.name.as_str(), "read" | "recvfrom") && self.on_socket() && self.ok()
    }
}

fn parse_time(t: &str) -> Option<u64> {
    let (hms, frac) = t.split_once('.')?;
    let mut parts = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (parts.next()??, parts.next()??, parts.next()??);
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + frac.parse::<u64>().ok()?)
}

/// Parses `strace -f -tt -o FILE` output (`PID HH:MM:SS.ffffff call`), joining calls that other
/// threads interrupted (`<unfinished ...>` / `<... name resumed>`).
pub fn parse(text: &str) -> Vec<Call> {
    assert!(
        !text.is_empty(),
        "strace wrote nothing: was the broker traced at all?"
    );
    // Calls another thread interrupted: their beginning, and where they began.
    let mut pending: HashMap<String, (String, usize, u64)> = HashMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        // strace pads the pid column: split on runs of spaces, not on each one.
        let mut it = line.trim_start().splitn(2, ' ');
        let (Some(pid), Some(tail)) = (it.next(), it.next()) else {
            continue;
        };
        let mut it = tail.trim_start().splitn(2, ' ');
        let (Some(time), Some(rest)) = (it.next(), it.next()) else {
            continue;
        };
        let Some(at_us) = parse_time(time) else {
            continue;
        };
        let full = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((_, tail)) = r.split_once(" resumed>") else {
                continue;
            };
            match pending.remove(pid) {
                Some((head, _, _)) => format!("{head}{tail}"),
                None => continue,
            }
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), (head.to_string(), calls.len(), at_us));
            continue;
        } else {
            rest.to_string()
        };
        if full.starts_with("---") || full.starts_with("+++") {
            continue;
        }
        let Some(name) = full.split('(').next().filter(|n| !n.contains(' ')) else {
            continue;
        };
        calls.push(Call {
            at_us,
            name: name.to_string(),
            text: full,
            unfinished: false,
        });
    }
    // Never resumed: the kill ended them. They go where they began, the latest first so the
    // earlier positions stay valid.
    let mut killed: Vec<(String, usize, u64)> = pending.into_values().collect();
    killed.sort_by_key(|(_, at, _)| std::cmp::Reverse(*at));
    for (head, at, at_us) in killed {
        if let Some(name) = head.split('(').next().filter(|n| !n.contains(' ')) {
            calls.insert(
                at,
                Call {
                    at_us,
                    name: name.to_string(),
                    text: head.clone(),
                    unfinished: true,
                },
            );
        }
    }
    calls
}

pub fn shard() -> ShardId {
    ShardId::new("S", 1)
}

pub async fn assign(conn: &Connection, shard: &ShardId) {
    let r = conn
        .request(Request::AssignShards {
            epoch: 1,
            shards: vec![ShardAssignment::sole(shard.clone(), 1, 1)],
        })
        .await;
    assert!(matches!(r, Ok(Response::Ok)), "assign: {r:?}");
}

pub fn batch(values: &[Vec<u8>]) -> RecordBatch {
    let records: Vec<Record> = values
        .iter()
        .map(|v| Record {
            key: None,
            value: Bytes::copy_from_slice(v),
            ..Record::default()
        })
        .collect();
    RecordBatch::from_records(&records)
}

/// One produce call (acks after durability as the policy defines it); the base offset.
pub async fn produce(
    conn: &Connection,
    shard: &ShardId,
    values: &[Vec<u8>],
) -> Result<u64, ClientError> {
    match conn
        .request(Request::Produce(ProduceRequest {
            shard: shard.clone(),
            epoch: 1,
            producer: None,
            acks: Acks::Durable,
            batch: batch(values),
        }))
        .await?
    {
        Response::Produced { base_offset, .. } => Ok(base_offset),
        other => panic!("unexpected answer to a produce: {other:?}"),
    }
}

/// Every record of `shard` from offset 0 to its end, by offset.
pub async fn read_all(conn: &Connection, shard: &ShardId) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut from = 0;
    for _ in 0..1_000_000 {
        let r = conn
            .request(Request::Fetch(FetchRequest {
                shard: shard.clone(),
                epoch: 1,
                offset: from,
                max_bytes: 4 << 20,
                max_wait_ms: 0,
            }))
            .await
            .expect("fetch");
        let Response::Fetched {
            batches,
            high_watermark,
            ..
        } = r
        else {
            panic!("unexpected answer to a fetch: {r:?}");
        };
        for b in &batches {
            for (o, rec) in b.records_from(from) {
                out.push((o, rec.value.to_vec()));
            }
        }
        from = out.last().map_or(from, |(o, _)| o + 1);
        if from >= high_watermark || batches.is_empty() {
            return out;
        }
    }
    panic!("reading the shard back did not end");
}
