//! The [`Producer`]: queues records per shard, packs them into batches (linger and size caps), keeps
//! one batch in flight per shard (which is what keeps per-shard order while many shards are in
//! flight at once), retries a failed batch under the same idempotence sequence until the delivery
//! timeout, and resolves each record's [`DeliveryFuture`] with its offset.
//!
//! Hot-path cost per record: two uncontended mutex locks (topic map, the shard's accumulator), one
//! copy of the payload into the batch buffer and an `Arc` clone for the delivery future; all
//! records of a batch share one oneshot.
//!
//! Circuit breakers (one per broker, in the [`ClusterClient`], see [`ProducerConfig::breaker`]):
//! while a broker's breaker is open, records for the shards it leads do not take room in the
//! shared buffer, so the other shards keep flowing. They fail at once with
//! [`ProducerError::BreakerOpen`] ([`BreakerMode::FailFast`]), or wait outside the buffer for the
//! shard to move or the breaker to close, at most until their delivery timeout
//! ([`BreakerMode::Wait`], the default).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::{FutureExt, Shared};
use shardq_protocol::batch::{encoded_headers_size, encoded_record_size};
use shardq_protocol::cluster::{
    BreakerConfig, BreakerMode, BreakerOpen, BreakerStatus, ShardError,
};
use shardq_protocol::{
    Acks, BatchBuilder, ClientError, ClusterClient, ConnectionConfig, ErrorKind, Offset,
    ProduceRequest, ProducerSeq, RecordBatch, Request, Response, ShardId, ShardSpec,
};
use thiserror::Error;
// futures' oneshot, not tokio's: a batch's outcome is polled through `Shared` by every record's
// future, and tokio's channel takes part in the task's cooperative budget: once an ack tracker
// polled many futures, a pending poll of a batch outcome would wake every sibling sharing it,
// again and again (a wake storm that slowed a run with many records failing fast 40-fold).
use futures::channel::oneshot;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::partitioner::{PartitionContext, Partitioner};

/// Room kept in a frame for the envelope around a batch.
const FRAME_HEADROOM: usize = 4096;

#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// Router or any broker (`HOST[:PORT]`).
    pub bootstrap: String,
    /// How long a batch waits for more records after its first one.
    pub linger: Duration,
    /// A batch is sent once it holds this many bytes (a single larger record goes alone).
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    /// A record not acknowledged within this time (from when its batch started) fails.
    pub delivery_timeout: Duration,
    /// How long one produce try waits for its answer before it is retried.
    pub request_timeout: Duration,
    pub acks: Acks,
    /// How `T:*` targets pick a partition.
    pub partitioner: Partitioner,
    /// Tag batches with a producer id and per-shard sequence so a retried batch is never
    /// appended twice.
    pub idempotent: bool,
    /// Batches in flight per shard. Only 1 is supported: it is what keeps per-shard order
    /// across retries.
    pub max_in_flight_per_shard: usize,
    /// Bytes of records queued and in flight over all shards; `send` waits when it is reached.
    pub buffer_bytes: usize,
    /// The per-broker circuit breakers (see the module docs). Applied to the cluster client,
    /// which shares them with everyone using it.
    pub breaker: BreakerConfig,
    /// Wait mode: bytes of records that may wait outside the shared buffer for open breakers;
    /// records beyond it fail at once with [`ProducerError::BreakerBacklogFull`].
    pub breaker_wait_bytes: usize,
    pub connection: ConnectionConfig,
}

impl ProducerConfig {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        ProducerConfig {
            bootstrap: bootstrap.into(),
            linger: Duration::from_millis(2),
            max_batch_bytes: 64 * 1024,
            max_batch_records: 5000,
            delivery_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            acks: Acks::Durable,
            partitioner: Partitioner::RoundRobin,
            idempotent: true,
            max_in_flight_per_shard: 1,
            buffer_bytes: 64 << 20,
            breaker: BreakerConfig::default(),
            breaker_wait_bytes: 64 << 20,
            connection: ConnectionConfig {
                client_name: "shardq-producer".into(),
                ..ConnectionConfig::default()
            },
        }
    }

    fn validate(&self) -> Result<(), ProducerError> {
        let bad = |m: &str| Err(ProducerError::Config(m.to_string()));
        if self.max_in_flight_per_shard != 1 {
            return bad(
                "max_in_flight_per_shard must be 1 (one batch in flight keeps per-shard order)",
            );
        }
        if self.max_batch_bytes == 0 || self.max_batch_records == 0 {
            return bad("max_batch_bytes and max_batch_records must be at least 1");
        }
        if self.delivery_timeout.is_zero() || self.request_timeout.is_zero() {
            return bad("delivery_timeout and request_timeout must be positive");
        }
        if self.buffer_bytes < self.max_batch_bytes {
            return bad("buffer_bytes must be at least max_batch_bytes");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProducerError {
    #[error("cannot reach the cluster: {0}")]
    Connect(ClientError),
    #[error(
        "unknown topic {topic:?} (create it with `shardq topic create {topic} --partitions N`)"
    )]
    UnknownTopic { topic: String },
    #[error("unknown shard {shard}: topic {} has partitions P1..P{partitions}", shard.topic)]
    UnknownShard { shard: ShardId, partitions: u32 },
    #[error("record of {size} bytes does not fit in a frame of at most {max} bytes")]
    RecordTooLarge { size: usize, max: usize },
    #[error("delivery to {shard} failed: {error}")]
    Delivery { shard: ShardId, error: ClientError },
    /// The shard's broker's circuit breaker is open: refused at once (fail-fast mode), or it
    /// stayed open until the record's delivery timeout (wait mode).
    #[error("delivery to {shard} failed: {open}")]
    BreakerOpen {
        shard: ShardId,
        open: Box<BreakerOpen>,
    },
    /// Wait mode: the shard's broker's breaker is open and `breaker_wait_bytes` already wait
    /// outside the buffer for open breakers.
    #[error("delivery to {shard} failed: {open}; {parked} bytes already wait for open breakers (at most breaker_wait_bytes), so this record is refused")]
    BreakerBacklogFull {
        shard: ShardId,
        open: Box<BreakerOpen>,
        parked: usize,
    },
    #[error("no room in the producer's buffer within the delivery timeout ({0:?}); the cluster is not keeping up")]
    BufferFull(Duration),
    #[error("the producer is closed")]
    Closed,
    #[error("invalid producer configuration: {0}")]
    Config(String),
}

/// Where an acknowledged record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub shard: ShardId,
    pub offset: Offset,
}

/// Counters of a producer's life, returned by [`Producer::close`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Records accepted by `send`.
    pub sent: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// Batches acknowledged.
    pub batches: u64,
    /// Payload bytes (encoded records) acknowledged.
    pub bytes: u64,
    /// Records failed at once because their broker's circuit breaker was open (included in
    /// `failed`).
    pub breaker_refused: u64,
    /// Bytes now held outside the shared buffer for shards whose breaker is open (wait mode).
    pub parked_bytes: u64,
    /// Every broker's circuit breaker that saw a request.
    pub breakers: Vec<BreakerStatus>,
}

/// The outcome of one batch: its base offset or why it failed.
type BatchResult = Result<Offset, ProducerError>;
type BatchOutcome = Shared<oneshot::Receiver<BatchResult>>;

/// Resolves to a record's [`Delivery`] once its batch is acknowledged (or to the batch's error).
/// Dropping it does not cancel the record.
#[must_use = "a DeliveryFuture tells whether the record was acknowledged"]
pub struct DeliveryFuture {
    shard: Arc<ShardId>,
    index: u32,
    outcome: BatchOutcome,
}

impl DeliveryFuture {
    pub fn shard(&self) -> &ShardId {
        &self.shard
    }

    /// A delivery that already failed.
    fn failed(shard: Arc<ShardId>, error: ProducerError) -> Self {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Err(error));
        DeliveryFuture {
            shard,
            index: 0,
            outcome: rx.shared(),
        }
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivery, ProducerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.outcome).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(base))) => Poll::Ready(Ok(Delivery {
                shard: this.shard.as_ref().clone(),
                offset: base + u64::from(this.index),
            })),
            Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e)),
            // The shard's sender went away without answering: only when the runtime shuts down.
            Poll::Ready(Err(_)) => Poll::Ready(Err(ProducerError::Closed)),
        }
    }
}

/// Sends records to a cluster. Share it behind an `Arc` to send from many tasks.
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    config: ProducerConfig,
    cluster: ClusterClient,
    producer_id: u64,
    topics: Mutex<HashMap<String, Arc<TopicState>>>,
    senders: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    buffered: AtomicUsize,
    /// Bytes of records held outside `buffered` because their shard's breaker is open.
    parked: AtomicUsize,
    space: Notify,
    sent: AtomicU64,
    acknowledged: AtomicU64,
    failed: AtomicU64,
    batches: AtomicU64,
    bytes: AtomicU64,
    breaker_refused: AtomicU64,
}

struct TopicState {
    partitions: u32,
    /// Created on first use, so a topic with many partitions costs nothing until sent to.
    queues: Vec<OnceLock<Arc<ShardQueue>>>,
    /// Records sent to `T:*`, for rotation.
    counter: AtomicU64,
}

/// One shard's accumulator and the state its sender task works from.
struct ShardQueue {
    shard: Arc<ShardId>,
    state: Mutex<Accum>,
    /// Wakes the sender: a batch was opened or sealed, or the producer is closing.
    wake: Notify,
    /// Records queued or in flight (for the least-loaded partitioner).
    load: AtomicU64,
}

#[derive(Default)]
struct Accum {
    open: Option<OpenBatch>,
    sealed: VecDeque<SealedBatch>,
    /// The outcome of the newest batch: `flush` waits on it (batches complete in order).
    last: Option<BatchOutcome>,
    closing: bool,
}

struct OpenBatch {
    builder: BatchBuilder,
    started: Instant,
    reply: oneshot::Sender<BatchResult>,
    outcome: BatchOutcome,
    /// Bytes of its records (as reserved), and how many of them are charged to the shared
    /// buffer (the rest are parked: their breaker was open).
    held: usize,
    charged: usize,
}

struct SealedBatch {
    batch: RecordBatch,
    started: Instant,
    reply: oneshot::Sender<BatchResult>,
    held: usize,
    /// Zeroed when the batch is parked (its bytes then count as parked).
    charged: AtomicUsize,
}

impl OpenBatch {
    fn seal(self) -> SealedBatch {
        SealedBatch {
            batch: self.builder.finish(),
            started: self.started,
            reply: self.reply,
            held: self.held,
            charged: AtomicUsize::new(self.charged),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A random 64-bit id from the standard library's per-process random hash keys.
fn random_id() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Producer {
    /// Connects to the cluster and loads its routing table.
    pub async fn connect(config: ProducerConfig) -> Result<Producer, ProducerError> {
        config.validate()?;
        let cluster = ClusterClient::connect(&config.bootstrap, config.connection.clone())
            .await
            .map_err(ProducerError::Connect)?;
        Ok(Self::with_cluster(cluster, config))
    }

    /// A producer over an existing cluster client (sharing its connections).
    pub fn with_cluster(cluster: ClusterClient, config: ProducerConfig) -> Producer {
        let producer_id = random_id();
        debug!(producer_id, "producer session started");
        cluster.set_breakers(config.breaker.clone());
        Producer {
            inner: Arc::new(Inner {
                config,
                cluster,
                producer_id,
                topics: Mutex::new(HashMap::new()),
                senders: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                buffered: AtomicUsize::new(0),
                parked: AtomicUsize::new(0),
                space: Notify::new(),
                sent: AtomicU64::new(0),
                acknowledged: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                breaker_refused: AtomicU64::new(0),
            }),
        }
    }

    pub fn cluster(&self) -> &ClusterClient {
        &self.inner.cluster
    }

    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// This session's idempotence id.
    pub fn producer_id(&self) -> u64 {
        self.inner.producer_id
    }

    /// Queues a record for `target` (`T:Pn`, or `T:*` to let the partitioner choose) and
    /// returns at once with a future for its delivery. Waits only when the producer's buffer is
    /// full. Unknown topics and partitions are refused here, before anything is queued.
    pub async fn send(
        &self,
        target: &ShardSpec,
        key: Option<Bytes>,
        value: Bytes,
    ) -> Result<DeliveryFuture, ProducerError> {
        self.send_with_headers(target, key, value, Vec::new()).await
    }

    /// [`Producer::send`] with headers (name, value) carried with the record to its consumers.
    pub async fn send_with_headers(
        &self,
        target: &ShardSpec,
        key: Option<Bytes>,
        value: Bytes,
        headers: Vec<(String, Bytes)>,
    ) -> Result<DeliveryFuture, ProducerError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ProducerError::Closed);
        }
        let size = encoded_record_size(key.as_ref().map(Bytes::len), value.len())
            + encoded_headers_size(&headers);
        let max = inner
            .config
            .connection
            .max_frame
            .saturating_sub(FRAME_HEADROOM);
        if size > max {
            return Err(ProducerError::RecordTooLarge { size, max });
        }
        let topic = inner.topic(target.topic()).await?;
        let partition = match target {
            ShardSpec::One(id) => {
                if id.partition == 0 || id.partition > topic.partitions {
                    return Err(ProducerError::UnknownShard {
                        shard: id.clone(),
                        partitions: topic.partitions,
                    });
                }
                id.partition
            }
            ShardSpec::All(name) => {
                let load = |p: u32| {
                    topic
                        .queues
                        .get(p as usize - 1)
                        .and_then(OnceLock::get)
                        .map_or(0, |q| q.load.load(Ordering::Relaxed))
                };
                inner.config.partitioner.choose(&PartitionContext {
                    topic: name,
                    key: key.as_deref(),
                    partitions: topic.partitions,
                    counter: topic.counter.fetch_add(1, Ordering::Relaxed),
                    load: &load,
                })
            }
        };
        let queue = inner.queue(target.topic(), &topic, partition);
        // A shard whose broker's breaker is open takes no room in the shared buffer: the
        // record fails at once, or waits outside it.
        let charged = match inner.cluster.shard_gate(&queue.shard) {
            Ok(()) => true,
            Err(open) => {
                let refused = if inner.cluster.breaker_config().mode == BreakerMode::FailFast {
                    Some(ProducerError::BreakerOpen {
                        shard: queue.shard.as_ref().clone(),
                        open: Box::new(open),
                    })
                } else {
                    let limit = inner.config.breaker_wait_bytes;
                    let parked = inner.parked.fetch_add(size, Ordering::AcqRel);
                    if parked > 0 && parked + size > limit {
                        inner.parked.fetch_sub(size, Ordering::AcqRel);
                        Some(ProducerError::BreakerBacklogFull {
                            shard: queue.shard.as_ref().clone(),
                            open: Box::new(open),
                            parked,
                        })
                    } else {
                        None
                    }
                };
                if let Some(e) = refused {
                    inner.sent.fetch_add(1, Ordering::Relaxed);
                    inner.failed.fetch_add(1, Ordering::Relaxed);
                    inner.breaker_refused.fetch_add(1, Ordering::Relaxed);
                    return Ok(DeliveryFuture::failed(queue.shard.clone(), e));
                }
                false
            }
        };
        if charged {
            inner.reserve(size).await?;
        }
        inner.sent.fetch_add(1, Ordering::Relaxed);
        let record = (key.as_deref(), &value[..], &headers[..]);
        Ok(queue.push(record, size, charged, &inner.config))
    }

    /// Sends everything queued so far without waiting for linger, and waits until every record
    /// sent before this call is acknowledged or failed.
    pub async fn flush(&self) {
        let mut outcomes = Vec::new();
        for q in self.inner.queues() {
            let mut st = lock(&q.state);
            if let Some(open) = st.open.take() {
                st.sealed.push_back(open.seal());
            }
            if let Some(last) = st.last.clone() {
                outcomes.push(last);
            }
            drop(st);
            q.wake.notify_one();
        }
        for o in outcomes {
            let _ = o.await;
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ProducerStats {
        self.inner.stats()
    }

    /// Stops accepting records, delivers (or fails) everything queued, and returns the counters.
    pub async fn close(self) -> ProducerStats {
        self.inner.begin_close();
        let handles: Vec<_> = std::mem::take(&mut *lock(&self.inner.senders));
        for h in handles {
            if let Err(e) = h.await {
                warn!(error = %e, "a shard sender ended abnormally");
            }
        }
        self.inner.stats()
    }
}

impl Drop for Producer {
    /// Dropping without `close` still delivers what was queued (the senders finish in the
    /// background) but nobody waits for it.
    fn drop(&mut self) {
        self.inner.begin_close();
    }
}

impl Inner {
    fn stats(&self) -> ProducerStats {
        ProducerStats {
            sent: self.sent.load(Ordering::Relaxed),
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            breaker_refused: self.breaker_refused.load(Ordering::Relaxed),
            parked_bytes: self.parked.load(Ordering::Relaxed) as u64,
            breakers: self.cluster.breakers(),
        }
    }

    /// Moves the shard's records out of the shared buffer while its broker's breaker refuses
    /// it (wait mode): the in-flight batch, the sealed ones and the open one. They count as
    /// parked until they complete.
    fn park_if_refused(&self, q: &ShardQueue, in_flight: &SealedBatch) {
        if self.cluster.shard_gate(&q.shard).is_ok() {
            return;
        }
        let mut freed = in_flight.charged.swap(0, Ordering::AcqRel);
        {
            let mut st = lock(&q.state);
            for b in &st.sealed {
                freed += b.charged.swap(0, Ordering::AcqRel);
            }
            if let Some(o) = st.open.as_mut() {
                freed += std::mem::take(&mut o.charged);
            }
        }
        if freed > 0 {
            debug!(shard = %q.shard, bytes = freed, "breaker open: the shard's records leave the shared buffer");
            self.parked.fetch_add(freed, Ordering::AcqRel);
            self.release(freed);
        }
    }

    /// A batch completed: its charged bytes go back to the buffer, the rest leave the parked
    /// count.
    fn settle(&self, b: &SealedBatch) {
        let charged = b.charged.load(Ordering::Acquire);
        self.parked
            .fetch_sub(b.held.saturating_sub(charged), Ordering::AcqRel);
        self.release(charged);
    }

    fn begin_close(&self) {
        self.closed.store(true, Ordering::Release);
        for q in self.queues() {
            lock(&q.state).closing = true;
            q.wake.notify_one();
        }
        // Senders blocked on buffer space must see the close too.
        self.space.notify_waiters();
    }

    fn queues(&self) -> Vec<Arc<ShardQueue>> {
        lock(&self.topics)
            .values()
            .flat_map(|t| t.queues.iter().filter_map(|q| q.get().cloned()))
            .collect()
    }

    /// The topic's state, loading it from the routing table (refreshed once if the topic is
    /// not cached yet).
    async fn topic(&self, name: &str) -> Result<Arc<TopicState>, ProducerError> {
        if let Some(t) = lock(&self.topics).get(name) {
            return Ok(t.clone());
        }
        let mut table = self.cluster.table();
        if table.topic(name).is_none() {
            match self.cluster.refresh(&[name.to_string()]).await {
                Ok(_) => {}
                // The router refuses metadata for a topic it does not know.
                Err(ClientError::Server(ErrorKind::UnknownTopic { topic })) => {
                    return Err(ProducerError::UnknownTopic { topic })
                }
                Err(e) => return Err(ProducerError::Connect(e)),
            }
            table = self.cluster.table();
        }
        let info = table
            .topic(name)
            .ok_or_else(|| ProducerError::UnknownTopic {
                topic: name.to_string(),
            })?;
        let mut topics = lock(&self.topics);
        let t = topics
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(TopicState {
                    partitions: info.partitions,
                    queues: (0..info.partitions).map(|_| OnceLock::new()).collect(),
                    counter: AtomicU64::new(0),
                })
            })
            .clone();
        Ok(t)
    }

    /// The shard's queue, starting its sender task on first use.
    fn queue(self: &Arc<Self>, topic: &str, state: &TopicState, partition: u32) -> Arc<ShardQueue> {
        let slot = &state.queues[partition as usize - 1];
        if let Some(q) = slot.get() {
            return q.clone();
        }
        let mut started = None;
        let q = slot
            .get_or_init(|| {
                let q = Arc::new(ShardQueue {
                    shard: Arc::new(ShardId::new(topic, partition)),
                    state: Mutex::new(Accum {
                        closing: self.closed.load(Ordering::Acquire),
                        ..Accum::default()
                    }),
                    wake: Notify::new(),
                    load: AtomicU64::new(0),
                });
                started = Some(tokio::spawn(run_sender(self.clone(), q.clone())));
                q
            })
            .clone();
        if let Some(h) = started {
            lock(&self.senders).push(h);
        }
        q
    }

    /// Waits for `size` bytes of buffer room (backpressure when the cluster falls behind).
    async fn reserve(&self, size: usize) -> Result<(), ProducerError> {
        let limit = self.config.buffer_bytes;
        let give_up = Instant::now() + self.config.delivery_timeout;
        loop {
            let notified = self.space.notified();
            let cur = self.buffered.load(Ordering::Acquire);
            // An empty buffer always admits one record, however large.
            if cur == 0 || cur + size <= limit {
                if self
                    .buffered
                    .compare_exchange(cur, cur + size, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(());
                }
                continue;
            }
            if self.closed.load(Ordering::Acquire) {
                return Err(ProducerError::Closed);
            }
            if tokio::time::timeout_at(give_up, notified).await.is_err() {
                return Err(ProducerError::BufferFull(self.config.delivery_timeout));
            }
        }
    }

    fn release(&self, size: usize) {
        self.buffered.fetch_sub(size, Ordering::AcqRel);
        self.space.notify_waiters();
    }
}

/// A record's key, value and headers, as [`ShardQueue::push`] takes them.
type RecordParts<'a> = (Option<&'a [u8]>, &'a [u8], &'a [(String, Bytes)]);

impl ShardQueue {
    /// Queues a record of `size` bytes; `charged`: its bytes were reserved in the shared
    /// buffer (else they are parked).
    fn push(
        &self,
        (key, value, headers): RecordParts<'_>,
        size: usize,
        charged: bool,
        cfg: &ProducerConfig,
    ) -> DeliveryFuture {
        let mut st = lock(&self.state);
        let mut wake = false;
        if let Some(open) = &st.open {
            if open.builder.size_bytes() + size > cfg.max_batch_bytes {
                let open = st.open.take().expect("checked above");
                st.sealed.push_back(open.seal());
                wake = true;
            }
        }
        let open = match &mut st.open {
            Some(o) => o,
            slot @ None => {
                let (reply, rx) = oneshot::channel();
                let outcome = rx.shared();
                wake = true;
                slot.insert(OpenBatch {
                    builder: BatchBuilder::with_capacity(
                        cfg.max_batch_bytes.min(size.max(1024) * 64),
                    ),
                    started: Instant::now(),
                    reply,
                    outcome,
                    held: 0,
                    charged: 0,
                })
            }
        };
        open.held += size;
        if charged {
            open.charged += size;
        }
        let index = open.builder.len();
        open.builder
            .push_with_headers(key, value, now_ms(), headers);
        let fut = DeliveryFuture {
            shard: self.shard.clone(),
            index,
            outcome: open.outcome.clone(),
        };
        let full = open.builder.len() as usize >= cfg.max_batch_records
            || open.builder.size_bytes() >= cfg.max_batch_bytes;
        if wake {
            st.last = Some(fut.outcome.clone());
        }
        if full {
            let open = st.open.take().expect("just pushed into it");
            st.sealed.push_back(open.seal());
            wake = true;
        }
        drop(st);
        self.load.fetch_add(1, Ordering::Relaxed);
        if wake {
            self.wake.notify_one();
        }
        fut
    }

    /// The next batch to send: a sealed one, or the open one once its linger is over (at once
    /// when closing). `None` when closing and nothing is left.
    async fn next_batch(&self, linger: Duration) -> Option<SealedBatch> {
        loop {
            let wait_until = {
                let mut st = lock(&self.state);
                if let Some(b) = st.sealed.pop_front() {
                    return Some(b);
                }
                match &st.open {
                    Some(o) if st.closing || o.started + linger <= Instant::now() => {
                        return st.open.take().map(OpenBatch::seal);
                    }
                    Some(o) => Some(o.started + linger),
                    None if st.closing => return None,
                    None => None,
                }
            };
            match wait_until {
                Some(t) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

/// The idempotence identity a shard's batches are sent under.
struct Session {
    producer_id: u64,
    sequence: u64,
}

/// One shard's sender: drains its queue one batch at a time.
async fn run_sender(inner: Arc<Inner>, q: Arc<ShardQueue>) {
    let mut session = Session {
        producer_id: inner.producer_id,
        sequence: 0,
    };
    let mut changes = inner.cluster.breaker_changes();
    while let Some(b) = q.next_batch(inner.config.linger).await {
        let count = b.batch.count;
        let bytes = b.batch.size_bytes();
        let mut wait_mode = {
            let c = inner.cluster.breaker_config();
            c.enabled() && c.mode == BreakerMode::Wait
        };
        if wait_mode {
            inner.park_if_refused(&q, &b);
        }
        let result = {
            let delivery = deliver(&inner, &q.shard, &mut session, &b);
            tokio::pin!(delivery);
            loop {
                tokio::select! {
                    r = &mut delivery => break r,
                    changed = changes.changed(), if wait_mode => match changed {
                        // A breaker changed: if this shard's opened, leave the buffer.
                        Ok(()) => inner.park_if_refused(&q, &b),
                        Err(_) => wait_mode = false,
                    },
                }
            }
        };
        match &result {
            Ok(_) => {
                inner
                    .acknowledged
                    .fetch_add(u64::from(count), Ordering::Relaxed);
                inner.batches.fetch_add(1, Ordering::Relaxed);
                inner.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            Err(e) => {
                warn!(shard = %q.shard, records = count, error = %e, "batch failed");
                inner.failed.fetch_add(u64::from(count), Ordering::Relaxed);
            }
        }
        q.load.fetch_sub(u64::from(count), Ordering::Relaxed);
        inner.settle(&b);
        let _ = b.reply.send(result);
    }
    debug!(shard = %q.shard, "shard sender done");
}

/// Sends one batch until it is acknowledged, refused, or its delivery timeout passes.
async fn deliver(
    inner: &Inner,
    shard: &ShardId,
    session: &mut Session,
    b: &SealedBatch,
) -> BatchResult {
    let deadline = b.started + inner.config.delivery_timeout;
    let mut renewed = false;
    loop {
        let producer = inner.config.idempotent.then_some(ProducerSeq {
            producer_id: session.producer_id,
            sequence: session.sequence,
        });
        let res = inner
            .cluster
            .shard_request_checked(
                shard,
                |epoch| {
                    Request::Produce(ProduceRequest {
                        shard: shard.clone(),
                        epoch,
                        producer,
                        acks: inner.config.acks,
                        batch: b.batch.clone(),
                    })
                },
                inner.config.request_timeout,
                deadline,
            )
            .await;
        let error = match res {
            Ok(Response::Produced {
                base_offset,
                count,
                duplicate,
            }) => {
                if count != b.batch.count {
                    warn!(%shard, sent = b.batch.count, acked = count, "broker acknowledged a different record count");
                }
                if duplicate {
                    debug!(%shard, base_offset, "retried batch was already appended");
                }
                session.sequence += 1;
                return Ok(base_offset);
            }
            Ok(other) => ClientError::Server(shardq_protocol::unexpected("produced", &other)),
            // The broker lost track of this session (e.g. its state did not travel with a
            // move): start a fresh session and try once more; the batch was not appended.
            Err(ShardError::Client(ClientError::Server(ErrorKind::OutOfOrderSequence {
                ..
            }))) if !renewed && Instant::now() < deadline => {
                renew(session, shard);
                renewed = true;
                continue;
            }
            Err(ShardError::BreakerOpen(open)) => {
                // A try may have reached the broker before it stalled: never reuse the sequence.
                renew(session, shard);
                return Err(ProducerError::BreakerOpen {
                    shard: shard.clone(),
                    open: Box::new(open),
                });
            }
            Err(ShardError::Client(e)) => e,
        };
        // Whether an earlier try of this batch was appended is unknown here, so its sequence
        // must never be reused for other records: later batches go under a fresh session.
        renew(session, shard);
        return Err(ProducerError::Delivery {
            shard: shard.clone(),
            error,
        });
    }
}

fn renew(session: &mut Session, shard: &ShardId) {
    session.producer_id = random_id();
    session.sequence = 0;
    debug!(%shard, producer_id = session.producer_id, "new idempotence session for the shard");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(bytes: usize, records: usize) -> ProducerConfig {
        ProducerConfig {
            max_batch_bytes: bytes,
            max_batch_records: records,
            ..ProducerConfig::new("unused")
        }
    }

    fn queue() -> ShardQueue {
        ShardQueue {
            shard: Arc::new(ShardId::new("T", 1)),
            state: Mutex::new(Accum::default()),
            wake: Notify::new(),
            load: AtomicU64::new(0),
        }
    }

    fn push(q: &ShardQueue, c: &ProducerConfig, v: &[u8]) -> DeliveryFuture {
        q.push((None, v, &[]), encoded_record_size(None, v.len()), true, c)
    }

    fn batch_counts(q: &ShardQueue) -> (Vec<u32>, Option<u32>) {
        let st = lock(&q.state);
        (
            st.sealed.iter().map(|b| b.batch.count).collect(),
            st.open.as_ref().map(|o| o.builder.len()),
        )
    }

    #[tokio::test]
    async fn batches_are_cut_at_the_record_cap() {
        let c = cfg(1 << 20, 3);
        let q = queue();
        let futs: Vec<_> = (0..7).map(|_| push(&q, &c, b"x")).collect();
        assert_eq!(batch_counts(&q), (vec![3, 3], Some(1)));
        let idx: Vec<u32> = futs.iter().map(|f| f.index).collect();
        assert_eq!(idx, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(q.load.load(Ordering::Relaxed), 7);
    }

    #[tokio::test]
    async fn batches_are_cut_at_the_byte_cap_and_big_records_go_alone() {
        // Each 10-byte value costs 26 bytes; 3 fit in 80, a 4th would not.
        let c = cfg(80, 1000);
        let q = queue();
        for _ in 0..4 {
            drop(push(&q, &c, &[0; 10]));
        }
        assert_eq!(batch_counts(&q), (vec![3], Some(1)));
        drop(push(&q, &c, &[0; 500]));
        assert_eq!(batch_counts(&q), (vec![3, 1, 1], None));
        for b in &lock(&q.state).sealed {
            assert!(b.batch.size_bytes() <= 80 || b.batch.count == 1);
            assert!(b.batch.validate(1 << 20).is_ok());
        }
    }

    #[tokio::test]
    async fn the_open_batch_waits_for_linger_unless_closing() {
        let c = cfg(1 << 20, 1000);
        let q = queue();
        drop(push(&q, &c, b"a"));
        let linger = Duration::from_millis(30);
        let t = Instant::now();
        let b = q.next_batch(linger).await.expect("a batch");
        assert!(
            t.elapsed() >= linger - Duration::from_millis(1),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(b.batch.count, 1);
        drop(push(&q, &c, b"b"));
        lock(&q.state).closing = true;
        let t = Instant::now();
        let b = q
            .next_batch(Duration::from_secs(10))
            .await
            .expect("a batch");
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(b.batch.count, 1);
        assert!(q.next_batch(linger).await.is_none());
    }

    #[tokio::test]
    async fn delivery_futures_share_their_batch_outcome() {
        let c = cfg(1 << 20, 1000);
        let q = queue();
        let f0 = push(&q, &c, b"a");
        let f1 = push(&q, &c, b"b");
        let b = q.next_batch(Duration::ZERO).await.expect("a batch");
        b.reply.send(Ok(40)).expect("futures alive");
        assert_eq!(
            f1.await.unwrap(),
            Delivery {
                shard: ShardId::new("T", 1),
                offset: 41
            }
        );
        assert_eq!(f0.await.unwrap().offset, 40);

        let f2 = push(&q, &c, b"c");
        let b = q.next_batch(Duration::ZERO).await.expect("a batch");
        b.reply
            .send(Err(ProducerError::Closed))
            .expect("future alive");
        assert_eq!(f2.await.unwrap_err(), ProducerError::Closed);
    }

    #[test]
    fn config_is_checked() {
        let mut c = ProducerConfig::new("x");
        assert!(c.validate().is_ok());
        c.max_in_flight_per_shard = 2;
        assert!(matches!(c.validate(), Err(ProducerError::Config(m)) if m.contains("must be 1")));
    }
}
