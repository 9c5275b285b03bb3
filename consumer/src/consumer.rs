//! The [`Consumer`]: reads a set of shards for a consumer group. One long-poll fetch per shard is
//! in flight at a time, all shards concurrently; `poll` returns as soon as any shard has data.
//! Positions advance only past records handed out, so every record is handed out exactly once
//! per `Consumer`, in shard order, whatever retries, moves or reconnects happen underneath.
//!
//! Circuit breakers (one per broker, in the [`ClusterClient`], see [`ConsumerConfig::breaker`]):
//! while a broker's breaker is open the consumer neither fetches from nor commits to the shards
//! it leads (they keep their positions) and keeps fetching every other shard; once the
//! breaker's cool-down is over one fetch is the trial that closes it again.

use std::time::Duration;

use futures::future::join_all;
use shardq_protocol::cluster::{BreakerConfig, BreakerMode, BreakerStatus, ShardError};
use shardq_protocol::{
    unexpected, ClientError, ClusterClient, ConnectionConfig, ErrorKind, FetchRequest, Offset,
    Record, Request, Response, RoutingTable, ShardId, ShardSpec, StoredBatch,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use crate::start::StartFrom;
pub use membership::Membership;

mod membership;
mod out_of_range;

#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Router or any broker (`HOST[:PORT]`).
    pub bootstrap: String,
    pub group: String,
    /// `T:Pn` or `T:*` (every partition of T).
    pub subscriptions: Vec<ShardSpec>,
    pub from: StartFrom,
    /// Long poll: how long a fetch waits at the broker for new data, and how long `poll`
    /// waits before returning empty.
    pub max_wait: Duration,
    /// Soft cap on the bytes one fetch returns per shard.
    pub max_bytes: u32,
    /// Extra time (beyond `max_wait`) one request try may take before it is retried.
    pub request_timeout: Duration,
    /// How long one fetch or commit keeps retrying retriable failures (owner moving or down)
    /// before `poll`/`commit` report it.
    pub retry_timeout: Duration,
    /// The per-broker circuit breakers (applied to the cluster client, which shares them with
    /// everyone using it). Requests refused by an open breaker are skipped, never reported as
    /// errors; `BreakerMode::Off` turns them off.
    pub breaker: BreakerConfig,
    pub connection: ConnectionConfig,
    /// Share the subscribed shards with the group's other members (each shard read by one
    /// member at a time, see [`Membership`]); None: read them all.
    pub membership: Option<Membership>,
}

impl ConsumerConfig {
    pub fn new(
        bootstrap: impl Into<String>,
        group: impl Into<String>,
        subscriptions: Vec<ShardSpec>,
    ) -> Self {
        ConsumerConfig {
            bootstrap: bootstrap.into(),
            group: group.into(),
            subscriptions,
            from: StartFrom::Earliest,
            max_wait: Duration::from_millis(500),
            max_bytes: 1 << 20,
            request_timeout: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(30),
            breaker: BreakerConfig {
                mode: BreakerMode::FailFast,
                ..BreakerConfig::default()
            },
            connection: ConnectionConfig {
                client_name: "shardq-consumer".into(),
                ..ConnectionConfig::default()
            },
            membership: None,
        }
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConsumerError {
    #[error("cannot reach the cluster: {0}")]
    Connect(ClientError),
    #[error("nothing to consume: no subscriptions given")]
    NoSubscriptions,
    #[error(
        "unknown topic {topic:?} (create it with `shardq topic create {topic} --partitions N`)"
    )]
    UnknownTopic { topic: String },
    #[error("unknown shard {shard}: topic {} has partitions P1..P{partitions}", shard.topic)]
    UnknownShard { shard: ShardId, partitions: u32 },
    #[error("invalid group name {0:?}: must not be empty")]
    InvalidGroup(String),
    #[error("consumer group: {0}")]
    Group(String),
    #[error("{what} {shard} failed: {error}")]
    Shard {
        shard: ShardId,
        what: &'static str,
        error: ClientError,
    },
}

impl ConsumerError {
    /// The topic, when this error says it does not exist (any more: it was deleted). Such an
    /// error does not go away by retrying.
    pub fn unknown_topic(&self) -> Option<&str> {
        match self {
            ConsumerError::UnknownTopic { topic } => Some(topic),
            ConsumerError::Shard { error, .. } => match error.kind() {
                Some(ErrorKind::UnknownTopic { topic }) => Some(topic),
                _ => None,
            },
            _ => None,
        }
    }
}

/// One record handed out by [`Consumer::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumedRecord {
    pub shard: ShardId,
    pub offset: Offset,
    pub record: Record,
}

/// The answer of one fetch: shard index, the offset it was asked for, the outcome.
type FetchDone = (u64, usize, Offset, Result<Response, ShardError>);

struct ShardCursor {
    shard: ShardId,
    /// Next offset to hand out.
    position: Offset,
    /// Last offset committed for the group (None: never).
    committed: Option<Offset>,
    fetch: Option<JoinHandle<()>>,
    /// After a failed fetch, the next one waits until then (no hot loop on a dead shard).
    retry_at: Option<Instant>,
    /// The incarnation of the broker process the last records came from.
    incarnation: Option<u64>,
    /// Its broker answered "nothing new" since the current idle round began.
    answered_empty: bool,
    /// `--from TIMESTAMP` with no committed offset: records before the first one stamped at
    /// or after this are skipped, not handed out.
    not_before_ms: Option<u64>,
}

/// Reads its shards for one group. Not `Sync`: one task polls it.
pub struct Consumer {
    cluster: ClusterClient,
    config: ConsumerConfig,
    shards: Vec<ShardCursor>,
    done_tx: mpsc::UnboundedSender<FetchDone>,
    done_rx: mpsc::UnboundedReceiver<FetchDone>,
    /// An error seen while records were also ready: reported by the next `poll`.
    deferred: Option<ConsumerError>,
    /// See [`Consumer::idle`].
    idle: Duration,
    /// When the current idle round began: it ends once every shard answered "nothing new".
    round_start: Instant,
    /// Bumped whenever the set of cursors changes (a group member's shards): fetch answers
    /// name their cursor by index, and answers from before a change are dropped.
    layout: u64,
    /// Its membership in a consumer group whose members share the shards.
    member: Option<membership::MemberState>,
    /// Records deleted (retention, purge) before this consumer read them.
    skipped_records: u64,
}

/// Pause before re-fetching a shard whose fetch failed.
const FETCH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Pause before looking again at a shard skipped for an open breaker whose next trial is
/// `retry_in` away (zero: a trial is under way).
fn breaker_pause(retry_in: Duration) -> Duration {
    retry_in.clamp(Duration::from_millis(20), FETCH_RETRY_PAUSE)
}

impl Consumer {
    /// Connects, resolves the subscriptions (`T:*` to every partition) and finds each shard's
    /// start position: the group's committed offset, else the start or end per `from`.
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer, ConsumerError> {
        let cluster = ClusterClient::connect(&config.bootstrap, config.connection.clone())
            .await
            .map_err(ConsumerError::Connect)?;
        Self::with_cluster(cluster, config).await
    }

    /// A consumer over an existing cluster client (sharing its connections).
    pub async fn with_cluster(
        cluster: ClusterClient,
        config: ConsumerConfig,
    ) -> Result<Consumer, ConsumerError> {
        if config.group.is_empty() {
            return Err(ConsumerError::InvalidGroup(config.group));
        }
        cluster.set_breakers(config.breaker.clone());
        let mut table = cluster.table();
        let topics: Vec<String> = config
            .subscriptions
            .iter()
            .map(|s| s.topic().to_string())
            .collect();
        if topics.iter().any(|t| table.topic(t).is_none()) {
            match cluster.refresh(&topics).await {
                Ok(_) => {}
                // The router refuses metadata for a topic it does not know.
                Err(ClientError::Server(ErrorKind::UnknownTopic { topic })) => {
                    return Err(ConsumerError::UnknownTopic { topic })
                }
                Err(e) => return Err(ConsumerError::Connect(e)),
            }
            table = cluster.table();
        }
        let shards = resolve(&table, &config.subscriptions)?;
        let (member, shards) = match &config.membership {
            // A group member reads what the group's coordinator gives it.
            Some(m) => {
                let (member, given) = membership::join(&cluster, &config, m, Vec::new()).await?;
                (Some(member), given)
            }
            None => (None, shards),
        };
        let cursors = open_cursors(&cluster, &config, shards).await?;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(Consumer {
            cluster,
            config,
            shards: cursors,
            done_tx,
            done_rx,
            deferred: None,
            idle: Duration::ZERO,
            round_start: Instant::now(),
            layout: 0,
            member,
            skipped_records: 0,
        })
    }

    /// How long, since the last record was handed out, the brokers have been answering that
    /// nothing new is there. It grows only by rounds in which every shard's long poll answered
    /// "nothing new", and a round counts for at most one long-poll wait (`max_wait`): time in
    /// which a fetch failed, timed out or was still unanswered, or in which this process was
    /// not running (SIGSTOP, a suspended laptop), is never taken for idleness.
    /// Records that retention or a purge deleted before this consumer read them (it moved past
    /// them by its `from` policy, with a warning each time).
    pub fn skipped_records(&self) -> u64 {
        self.skipped_records
    }

    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// A shard answered "nothing new": the round ends once every shard did.
    fn answered_empty(&mut self, idx: usize) {
        if let Some(c) = self.shards.get_mut(idx) {
            c.answered_empty = true;
        }
        if self.shards.iter().all(|c| c.answered_empty) {
            let now = Instant::now();
            self.idle += now
                .saturating_duration_since(self.round_start)
                .min(self.config.max_wait);
            self.new_round(now);
        }
    }

    fn new_round(&mut self, now: Instant) {
        self.round_start = now;
        for c in &mut self.shards {
            c.answered_empty = false;
        }
    }

    /// The shards this consumer reads, in subscription order.
    pub fn assignment(&self) -> Vec<ShardId> {
        self.shards.iter().map(|c| c.shard.clone()).collect()
    }

    /// Next offset to hand out per shard.
    pub fn positions(&self) -> Vec<(ShardId, Offset)> {
        self.shards
            .iter()
            .map(|c| (c.shard.clone(), c.position))
            .collect()
    }

    pub fn cluster(&self) -> &ClusterClient {
        &self.cluster
    }

    /// Every broker's circuit breaker that saw a request.
    pub fn breakers(&self) -> Vec<BreakerStatus> {
        self.cluster.breakers()
    }

    /// Moves `shard`'s position back (or forward) to `offset`: the next records handed out for
    /// it start there, and the next commit commits it. A fetch in flight for the old position
    /// is dropped. Used to give back records handed out but not processed (e.g. past a
    /// `--count`), so committing does not skip them. False if the shard is not assigned.
    pub fn seek(&mut self, shard: &ShardId, offset: Offset) -> bool {
        let Some(c) = self.shards.iter_mut().find(|c| &c.shard == shard) else {
            return false;
        };
        if let Some(f) = c.fetch.take() {
            f.abort();
        }
        c.position = offset;
        c.retry_at = None;
        c.not_before_ms = None;
        true
    }

    /// The shards not fetched now because their broker's breaker is open.
    pub fn skipped(&self) -> Vec<ShardId> {
        self.shards
            .iter()
            .filter(|c| c.fetch.is_none() && self.cluster.shard_gate(&c.shard).is_err())
            .map(|c| c.shard.clone())
            .collect()
    }

    /// Waits up to `max_wait` for records; returns as soon as any shard has some (possibly
    /// empty after `max_wait`). Shard failures that outlast `retry_timeout` are returned as
    /// errors; the consumer stays usable and retries them on the next call. Cancel-safe: a
    /// cancelled poll loses nothing.
    pub async fn poll(&mut self) -> Result<Vec<ConsumedRecord>, ConsumerError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if self.member.is_some() {
            // A group member heartbeats here: calling poll says the records handed out before
            // were processed, so shards given up now are committed where processing got.
            self.keep_membership().await;
        }
        let mut out = Vec::new();
        let mut error = None;
        let deadline = Instant::now() + self.config.max_wait;
        loop {
            self.start_fetches();
            let wake = self.next_retry().map_or(deadline, |r| r.min(deadline));
            match tokio::time::timeout_at(wake, self.done_rx.recv()).await {
                // The sender half lives in `self`, so the channel never closes.
                Ok(None) => break,
                Ok(Some(done)) => {
                    // Everything below is synchronous: no await between taking answers and
                    // advancing positions, which is what makes `poll` cancel-safe.
                    self.absorb(done, &mut out, &mut error);
                    while let Ok(done) = self.done_rx.try_recv() {
                        self.absorb(done, &mut out, &mut error);
                    }
                }
                Err(_) => {}
            }
            if !out.is_empty() || error.is_some() || Instant::now() >= deadline {
                break;
            }
        }
        if self.shards.is_empty() {
            // A group member with nothing to read (more members than shards): idle by time.
            self.idle += self.config.max_wait;
        }
        // Prefetch: positions are final for this batch of records, so the next fetches can run
        // while the caller processes these.
        self.start_fetches();
        match error {
            Some(e) if out.is_empty() => Err(e),
            Some(e) => {
                self.deferred = Some(e);
                Ok(out)
            }
            None => Ok(out),
        }
    }

    fn next_retry(&self) -> Option<Instant> {
        self.shards
            .iter()
            .filter(|c| c.fetch.is_none())
            .filter_map(|c| c.retry_at)
            .min()
    }

    /// Starts a fetch for every shard that has none in flight (and is not pausing after an
    /// error).
    fn start_fetches(&mut self) {
        let now = Instant::now();
        for (idx, c) in self.shards.iter_mut().enumerate() {
            if c.fetch.is_some() || c.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            // Its broker's breaker is open: skip it (the others keep going) and look again when
            // a trial may go.
            if let Err(open) = self.cluster.shard_gate(&c.shard) {
                c.retry_at = Some(now + breaker_pause(open.retry_in));
                continue;
            }
            c.retry_at = None;
            let cluster = self.cluster.clone();
            let tx = self.done_tx.clone();
            let layout = self.layout;
            let shard = c.shard.clone();
            let offset = c.position;
            let max_bytes = self.config.max_bytes;
            let max_wait_ms = self.config.max_wait.as_millis().min(u32::MAX as u128) as u32;
            let per_try = self.config.max_wait + self.config.request_timeout;
            let deadline = now + self.config.retry_timeout.max(per_try);
            c.fetch = Some(tokio::spawn(async move {
                let res = cluster
                    .shard_request_checked(
                        &shard,
                        |epoch| {
                            Request::Fetch(FetchRequest {
                                shard: shard.clone(),
                                epoch,
                                offset,
                                max_bytes,
                                max_wait_ms,
                            })
                        },
                        per_try,
                        deadline,
                    )
                    .await;
                let _ = tx.send((layout, idx, offset, res));
            }));
        }
    }

    /// Takes one fetch answer: hands out the records at and after the shard's position.
    fn absorb(
        &mut self,
        (layout, idx, asked, res): FetchDone,
        out: &mut Vec<ConsumedRecord>,
        error: &mut Option<ConsumerError>,
    ) {
        if layout != self.layout {
            // Its cursor was given up or moved since (a group member's shards changed).
            return;
        }
        let Some(c) = self.shards.get_mut(idx) else {
            return;
        };
        c.fetch = None;
        if asked != c.position {
            // The answer to a fetch dropped by a seek; never hand out records from a stale view.
            debug!(shard = %c.shard, asked, position = c.position, "dropping a stale fetch answer");
            return;
        }
        match res {
            Ok(Response::Fetched {
                high_watermark,
                incarnation,
                stable_end,
                batches,
                ..
            }) => {
                let served = Served {
                    high_watermark,
                    incarnation,
                    stable_end,
                };
                let (handed, position) = (out.len(), c.position);
                let taken = take_fetched(c, served, &batches, out);
                if let Some(t) = c.not_before_ms {
                    match out[handed..]
                        .iter()
                        .position(|r| r.record.timestamp_ms >= t)
                    {
                        Some(first) => {
                            out.drain(handed..handed + first);
                            c.not_before_ms = None;
                        }
                        None => out.truncate(handed),
                    }
                }
                if taken.is_ok() {
                    if out.len() > handed || c.position != position {
                        // Records (or a rewind to re-read some): not idle.
                        self.idle = Duration::ZERO;
                        self.new_round(Instant::now());
                    } else if high_watermark <= c.position {
                        self.answered_empty(idx);
                    }
                    return;
                }
                let c = &mut self.shards[idx];
                if let Err(at) = taken {
                    // Data exists past the position but none could be read: a damaged batch.
                    // Pausing avoids spinning on it; the error names the shard.
                    c.retry_at = Some(Instant::now() + FETCH_RETRY_PAUSE);
                    error.get_or_insert(ConsumerError::Shard {
                        shard: c.shard.clone(),
                        what: "reading",
                        error: ClientError::Protocol {
                            addr: String::new(),
                            reason: format!("unreadable record batch at offset {at}"),
                        },
                    });
                }
            }
            Ok(other) => {
                c.retry_at = Some(Instant::now() + FETCH_RETRY_PAUSE);
                error.get_or_insert(ConsumerError::Shard {
                    shard: c.shard.clone(),
                    what: "fetch from",
                    error: ClientError::Server(unexpected("fetched", &other)),
                });
            }
            Err(ShardError::BreakerOpen(open)) => {
                // Not an error of this shard: its broker's breaker opened meanwhile.
                debug!(shard = %c.shard, %open, "fetch skipped");
                c.retry_at = Some(Instant::now() + breaker_pause(open.retry_in));
            }
            Err(ShardError::Client(ClientError::Server(ErrorKind::OffsetOutOfRange {
                start,
                end,
                ..
            }))) => {
                let (to, skipped) =
                    out_of_range::skip_deleted(&c.shard, self.config.from, c.position, start, end);
                c.position = to;
                c.not_before_ms = None;
                self.skipped_records += skipped;
                self.idle = Duration::ZERO;
            }
            Err(ShardError::Client(e)) => {
                c.retry_at = Some(Instant::now() + FETCH_RETRY_PAUSE);
                warn!(shard = %c.shard, error = %e, "fetch failed");
                error.get_or_insert(ConsumerError::Shard {
                    shard: c.shard.clone(),
                    what: "fetch from",
                    error: e,
                });
            }
        }
    }

    /// Commits, for every shard that advanced, the position after the last record handed out.
    /// Shards whose commit fails keep their old committed offset (the next commit retries);
    /// the first failure is returned after every shard was tried.
    pub async fn commit(&mut self) -> Result<(), ConsumerError> {
        let deadline = Instant::now() + self.config.retry_timeout;
        // Shards whose broker's breaker is open keep their commit for later.
        let todo: Vec<(usize, ShardId, Offset)> = self
            .shards
            .iter()
            .enumerate()
            .filter(|(_, c)| c.committed != Some(c.position))
            .filter(|(_, c)| self.cluster.shard_gate(&c.shard).is_ok())
            .map(|(i, c)| (i, c.shard.clone(), c.position))
            .collect();
        let group = &self.config.group;
        let per_try = self.config.request_timeout;
        let cluster = &self.cluster;
        let results = join_all(todo.iter().map(|(_, shard, offset)| {
            cluster.shard_request(
                shard,
                move |epoch| Request::CommitOffset {
                    shard: shard.clone(),
                    epoch,
                    group: group.clone(),
                    offset: *offset,
                },
                per_try,
                deadline,
            )
        }))
        .await;
        let mut first = None;
        for ((idx, shard, offset), res) in todo.into_iter().zip(results) {
            let res = match res {
                Ok(Response::Committed) => Ok(()),
                Ok(other) => Err(ClientError::Server(unexpected("committed", &other))),
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    if let Some(c) = self.shards.get_mut(idx) {
                        c.committed = Some(offset);
                    }
                }
                Err(error) => {
                    warn!(%shard, %error, "commit failed");
                    first.get_or_insert(ConsumerError::Shard {
                        shard,
                        what: "commit to",
                        error,
                    });
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Stops the fetches in flight. Uncommitted positions are not committed.
    pub fn close(mut self) {
        self.stop_fetches();
    }

    fn stop_fetches(&mut self) {
        for c in &mut self.shards {
            if let Some(h) = c.fetch.take() {
                h.abort();
            }
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop_fetches();
    }
}

/// What a fetch answer says about the shard besides its records.
#[derive(Clone, Copy, Debug)]
struct Served {
    high_watermark: Offset,
    incarnation: u64,
    stable_end: Offset,
}

/// Applies one fetch answer to a shard's cursor: hands out the records at and after its position.
///
/// A broker crash can take back records we had read (under `--fsync never`, or `interval` on power
/// loss); their offsets then hold other records, which must not be skipped. Two signs of it: the
/// answer comes from another broker incarnation than our last records and our position is past
/// what that incarnation found on disk (`stable_end`), or the shard ends before our position.
/// Either way we read on from the point that is certainly shared. `Err(at)`: data past the
/// position exists but could not be read.
fn take_fetched(
    c: &mut ShardCursor,
    served: Served,
    batches: &[StoredBatch],
    out: &mut Vec<ConsumedRecord>,
) -> Result<(), Offset> {
    let restarted = c.incarnation.is_some_and(|i| i != served.incarnation);
    c.incarnation = Some(served.incarnation);
    let rewind_to = if restarted && served.stable_end < c.position {
        Some(served.stable_end)
    } else if served.high_watermark < c.position {
        Some(served.high_watermark)
    } else {
        None
    };
    if let Some(to) = rewind_to {
        warn!(shard = %c.shard, position = c.position, from = to,
            "the shard's broker lost records we had read in a crash; their offsets hold other records now: reading again from {to}");
        c.position = to;
        return Ok(());
    }
    let before = c.position;
    hand_out(&c.shard, &mut c.position, batches, out);
    if c.position == before && batches.iter().any(|b| b.end_offset() > before) {
        return Err(before);
    }
    Ok(())
}

/// Appends the records of `batches` at and after `position` to `out`, advancing `position` past
/// each. Stored batches may start before the position (it can point into a batch): the records
/// already handed out are skipped, so nothing is repeated.
fn hand_out(
    shard: &ShardId,
    position: &mut Offset,
    batches: &[StoredBatch],
    out: &mut Vec<ConsumedRecord>,
) {
    for b in batches {
        for (offset, record) in b.records_from(*position) {
            if offset != *position {
                warn!(%shard, expected = *position, got = offset, "gap in the shard's offsets");
            }
            *position = offset + 1;
            out.push(ConsumedRecord {
                shard: shard.clone(),
                offset,
                record,
            });
        }
    }
}

/// Expands the subscriptions into shards (in order, without duplicates), refusing unknown
/// topics and partitions.
pub fn resolve(
    table: &RoutingTable,
    subscriptions: &[ShardSpec],
) -> Result<Vec<ShardId>, ConsumerError> {
    if subscriptions.is_empty() {
        return Err(ConsumerError::NoSubscriptions);
    }
    let mut shards: Vec<ShardId> = Vec::new();
    for spec in subscriptions {
        let info = table
            .topic(spec.topic())
            .ok_or_else(|| ConsumerError::UnknownTopic {
                topic: spec.topic().to_string(),
            })?;
        let ids: Vec<ShardId> = match spec {
            ShardSpec::All(t) => (1..=info.partitions)
                .map(|p| ShardId::new(t.as_str(), p))
                .collect(),
            ShardSpec::One(id) if id.partition >= 1 && id.partition <= info.partitions => {
                vec![id.clone()]
            }
            ShardSpec::One(id) => {
                return Err(ConsumerError::UnknownShard {
                    shard: id.clone(),
                    partitions: info.partitions,
                })
            }
        };
        for id in ids {
            if !shards.contains(&id) {
                shards.push(id);
            }
        }
    }
    Ok(shards)
}

/// (position, committed) for one shard.
/// Cursors for `shards`, each at its start position (see [`start_position`]).
async fn open_cursors(
    cluster: &ClusterClient,
    config: &ConsumerConfig,
    shards: Vec<ShardId>,
) -> Result<Vec<ShardCursor>, ConsumerError> {
    let deadline = Instant::now() + config.retry_timeout;
    let starts = join_all(
        shards
            .iter()
            .map(|s| start_position(cluster, config, s, deadline)),
    )
    .await;
    let mut cursors = Vec::with_capacity(shards.len());
    for (shard, start) in shards.into_iter().zip(starts) {
        let (position, committed) = start?;
        debug!(%shard, position, ?committed, group = %config.group, "starting position");
        cursors.push(ShardCursor {
            shard,
            position,
            committed,
            fetch: None,
            retry_at: None,
            incarnation: None,
            answered_empty: false,
            not_before_ms: match (committed, config.from) {
                (None, StartFrom::Timestamp(t)) => Some(t),
                _ => None,
            },
        });
    }
    Ok(cursors)
}

async fn start_position(
    cluster: &ClusterClient,
    config: &ConsumerConfig,
    shard: &ShardId,
    deadline: Instant,
) -> Result<(Offset, Option<Offset>), ConsumerError> {
    let fail = |what: &'static str, error: ClientError| ConsumerError::Shard {
        shard: shard.clone(),
        what,
        error,
    };
    let per_try = config.request_timeout;
    let committed = match cluster
        .shard_request(
            shard,
            |epoch| Request::FetchOffset {
                shard: shard.clone(),
                epoch,
                group: config.group.clone(),
            },
            per_try,
            deadline,
        )
        .await
    {
        Ok(Response::GroupOffset { offset }) => offset,
        Ok(other) => {
            return Err(fail(
                "fetch the group offset of",
                ClientError::Server(unexpected("group-offset", &other)),
            ))
        }
        Err(e) => return Err(fail("fetch the group offset of", e)),
    };
    if let Some(o) = committed {
        return Ok((o, Some(o)));
    }
    match cluster
        .shard_request(
            shard,
            |epoch| Request::ListOffsets {
                shard: shard.clone(),
                epoch,
            },
            per_try,
            deadline,
        )
        .await
    {
        Ok(Response::Offsets { start, end }) => Ok((
            match config.from {
                StartFrom::Earliest | StartFrom::Timestamp(_) => start,
                StartFrom::Latest => end,
                StartFrom::Offset(o) => o.clamp(start, end),
            },
            None,
        )),
        Ok(other) => Err(fail(
            "list the offsets of",
            ClientError::Server(unexpected("offsets", &other)),
        )),
        Err(e) => Err(fail("list the offsets of", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardq_protocol::{ShardRoute, TopicInfo};

    fn table() -> RoutingTable {
        RoutingTable {
            epoch: 1,
            topics: vec![TopicInfo {
                name: "T1".into(),
                partitions: 3,
                replication_factor: 1,
                min_insync: 1,
                retention: Default::default(),
            }],
            shards: (1..=3)
                .map(|p| ShardRoute {
                    shard: ShardId::new("T1", p),
                    owner: None,
                    moving: false,
                    leader_epoch: 0,
                    replicas: vec![],
                    isr: vec![],
                })
                .collect(),
        }
    }

    fn specs(s: &[&str]) -> Vec<ShardSpec> {
        s.iter().map(|x| x.parse().unwrap()).collect()
    }

    #[test]
    fn subscriptions_expand_in_order_without_duplicates() {
        let got = resolve(&table(), &specs(&["T1:P2", "T1:*"])).unwrap();
        assert_eq!(
            got,
            vec![
                ShardId::new("T1", 2),
                ShardId::new("T1", 1),
                ShardId::new("T1", 3)
            ]
        );
    }

    #[test]
    fn unknown_subscriptions_are_refused_clearly() {
        let e = resolve(&table(), &specs(&["T1:P4"])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown shard T1:P4: topic T1 has partitions P1..P3"
        );
        let e = resolve(&table(), &specs(&["T9:*"])).unwrap_err();
        assert!(e.to_string().contains("unknown topic \"T9\""), "{e}");
        assert_eq!(
            resolve(&table(), &[]).unwrap_err(),
            ConsumerError::NoSubscriptions
        );
    }

    fn stored(base: Offset, values: &[&str]) -> StoredBatch {
        let mut b = shardq_protocol::BatchBuilder::default();
        for v in values {
            b.push(None, v.as_bytes(), 0);
        }
        StoredBatch {
            base_offset: base,
            leader_epoch: 0,
            producer: None,
            batch: b.finish(),
        }
    }

    #[test]
    fn records_below_the_position_are_skipped_and_nothing_repeats() {
        let shard = ShardId::new("T1", 1);
        let mut pos = 2;
        let mut out = Vec::new();
        hand_out(
            &shard,
            &mut pos,
            &[stored(0, &["a", "b", "c", "d"]), stored(4, &["e"])],
            &mut out,
        );
        let got: Vec<(Offset, &[u8])> = out
            .iter()
            .map(|r| (r.offset, &r.record.value[..]))
            .collect();
        assert_eq!(got, vec![(2, &b"c"[..]), (3, b"d"), (4, b"e")]);
        assert_eq!(pos, 5);
        // The same answer again (e.g. a retried fetch) hands out nothing new.
        let mut again = Vec::new();
        hand_out(
            &shard,
            &mut pos,
            &[stored(0, &["a", "b", "c", "d"]), stored(4, &["e"])],
            &mut again,
        );
        assert!(again.is_empty());
        assert_eq!(pos, 5);
    }

    fn batch_at(base: Offset, values: &[&str]) -> StoredBatch {
        let records: Vec<Record> = values
            .iter()
            .map(|v| Record {
                key: None,
                value: bytes::Bytes::copy_from_slice(v.as_bytes()),
                ..Record::default()
            })
            .collect();
        StoredBatch {
            base_offset: base,
            leader_epoch: 0,
            producer: None,
            batch: shardq_protocol::RecordBatch::from_records(&records),
        }
    }

    fn cursor(position: Offset) -> ShardCursor {
        ShardCursor {
            shard: ShardId::new("T", 1),
            position,
            committed: None,
            fetch: None,
            retry_at: None,
            incarnation: None,
            answered_empty: false,
            not_before_ms: None,
        }
    }

    fn values(out: &[ConsumedRecord]) -> Vec<(Offset, String)> {
        out.iter()
            .map(|r| {
                (
                    r.offset,
                    String::from_utf8_lossy(&r.record.value).into_owned(),
                )
            })
            .collect()
    }

    /// An answer from incarnation 1 (unless a test says otherwise).
    fn served(high_watermark: Offset, stable_end: Offset) -> Served {
        Served {
            high_watermark,
            incarnation: 1,
            stable_end,
        }
    }

    #[test]
    fn a_restarted_broker_that_lost_what_we_read_is_read_again_from_its_stable_end() {
        // Read 0..5 from incarnation 1.
        let mut c = cursor(0);
        let mut out = Vec::new();
        let first = [batch_at(0, &["a", "b", "c", "d", "e"])];
        assert_eq!(take_fetched(&mut c, served(5, 0), &first, &mut out), Ok(()));
        assert_eq!(c.position, 5);
        // Incarnation 2 found only 0..3 on disk, and has since appended 3..7 (other records).
        // The log is longer than our position, so only the incarnation tells of the loss.
        out.clear();
        let again = Served {
            high_watermark: 7,
            incarnation: 2,
            stable_end: 3,
        };
        let after = [batch_at(3, &["x3", "x4", "x5", "x6"])];
        assert_eq!(take_fetched(&mut c, again, &after, &mut out), Ok(()));
        assert_eq!(c.position, 3, "reads again from the stable end");
        assert!(out.is_empty());
        assert_eq!(take_fetched(&mut c, again, &after, &mut out), Ok(()));
        assert_eq!(
            values(&out),
            vec![
                (3, "x3".into()),
                (4, "x4".into()),
                (5, "x5".into()),
                (6, "x6".into())
            ]
        );
        // A restart that lost nothing we read (or a move: the new owner's stable end is the
        // move's end) changes nothing.
        out.clear();
        let moved = Served {
            high_watermark: 9,
            incarnation: 3,
            stable_end: 7,
        };
        let more = [batch_at(7, &["y7", "y8"])];
        assert_eq!(take_fetched(&mut c, moved, &more, &mut out), Ok(()));
        assert_eq!(values(&out), vec![(7, "y7".into()), (8, "y8".into())]);
    }

    #[test]
    fn a_shard_shorter_than_the_position_is_read_on_from_its_end() {
        // We had read up to offset 5; the broker crashed and came back ending at 3.
        let mut c = cursor(5);
        let mut out = Vec::new();
        assert_eq!(take_fetched(&mut c, served(3, 3), &[], &mut out), Ok(()));
        assert_eq!(c.position, 3);
        assert!(out.is_empty());
        // The records written at 3 and 4 after the crash are handed out, not skipped.
        let fresh = [batch_at(3, &["new3", "new4", "new5"])];
        assert_eq!(take_fetched(&mut c, served(6, 3), &fresh, &mut out), Ok(()));
        assert_eq!(
            values(&out),
            vec![(3, "new3".into()), (4, "new4".into()), (5, "new5".into())]
        );
        assert_eq!(c.position, 6);
    }

    #[test]
    fn a_fetch_hands_out_from_inside_a_batch() {
        let mut c = cursor(1);
        let mut out = Vec::new();
        let batches = [batch_at(0, &["a", "b", "c"])];
        assert_eq!(
            take_fetched(&mut c, served(3, 0), &batches, &mut out),
            Ok(())
        );
        assert_eq!(values(&out), vec![(1, "b".into()), (2, "c".into())]);
        assert_eq!(c.position, 3);
    }
}
