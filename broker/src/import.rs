//! The destination side of a live shard migration: one background task per move copies a shard
//! from its source broker, fences the source once it has nearly caught up, copies the tail up to
//! the fenced end offset, imports the group offsets and producer states, flushes, and then waits
//! (phase `Activating`) for the router's `AssignShards` to turn the shard on here.
//!
//! The copy overlaps network and disk: the task asks the source for the next chunk while a
//! blocking writer thread applies the previous ones to sled, entries unchanged at their original
//! offsets. Every attempt starts from the local end of the log, so a broker restart or a source
//! outage resumes instead of starting over. Transport and source failures are retried with
//! backoff until the move is cancelled (`DropShard`) or the broker stops; only local failures and
//! a source whose log does not continue the local copy end the move (phase `Failed`).
//!
//! Each move's state is persisted in the `imports` tree (one [`ImportRecord`] per shard) at phase
//! changes, so a restarted broker knows the fence offset and time, and can activate a copy that
//! had become ready even if the router flips it before re-sending `ImportShard`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shardq_protocol::codec::{decode, encode};
use shardq_protocol::{
    BrokerAddr, CancellationToken, ClientError, Connection, ConnectionConfig, Epoch, ErrorKind,
    MovePhase, MoveProgress, Offset, Request, Response, Secret, ShardId, StoredBatch,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::durability::Durability;
use crate::shard::Shard;

/// Bytes asked for per export request.
pub const EXPORT_CHUNK_BYTES: u32 = 4 << 20;
/// The smallest chunk asked for under a throttle.
const MIN_THROTTLED_CHUNK_BYTES: u64 = 64 << 10;

/// Bytes to ask for per export request: under a throttle about a quarter second's worth, so a
/// slow move still shows steady progress (a 4 MiB chunk at 1 MB/s would look stalled for seconds,
/// and the router rolls back moves that make no progress).
fn chunk_bytes(rate_limit: Option<u64>) -> u32 {
    match rate_limit {
        Some(rate) => {
            (rate / 4).clamp(MIN_THROTTLED_CHUNK_BYTES, u64::from(EXPORT_CHUNK_BYTES)) as u32
        }
        None => EXPORT_CHUNK_BYTES,
    }
}
/// Fence the source once fewer records than this are left to copy...
const FENCE_LAG_RECORDS: u64 = 2_000;
/// ...and (estimated from the last chunk) fewer bytes than this: what is left is copied during
/// the write pause, so both bound it (2,000 large records would be far too much to copy then).
const FENCE_LAG_BYTES: u64 = 1 << 20;
/// Flush before fencing when more than this was written since the last flush, so the flush
/// inside the write pause stays small.
const PRE_FENCE_FLUSH_BYTES: u64 = 2 << 20;
/// Deadline of one request to the source.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// Finished moves stay in heartbeat reports this long, so the router sees their outcome.
const REPORT_FINISHED_FOR_MS: u64 = 60_000;
/// Chunks buffered between the network side and the writer.
const WRITE_QUEUE: usize = 2;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the `imports` tree keeps per shard: the latest move of that shard into this broker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImportRecord {
    pub move_id: u64,
    pub source: BrokerAddr,
    pub epoch: Epoch,
    pub progress: MoveProgress,
    /// The source's final end offset, once fenced.
    pub fence_end: Option<Offset>,
    /// Wall-clock time of the fence, for the write pause after a restart.
    pub fenced_ms: Option<u64>,
}

/// The persisted import records, keyed by shard key.
pub struct ImportStore {
    tree: sled::Tree,
}

impl ImportStore {
    /// Opens the `imports` tree, forgetting records of shards no longer held (a crash between a
    /// drop and the record's removal).
    pub fn open(db: &sled::Db, held: &dyn Fn(&str) -> bool) -> Result<ImportStore, ErrorKind> {
        let tree = db.open_tree("imports").map_err(|e| ErrorKind::Storage {
            reason: format!("cannot open the imports tree: {e}"),
        })?;
        let stale: Vec<sled::IVec> = tree
            .iter()
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !held(&String::from_utf8_lossy(k)))
            .collect();
        for k in stale {
            tree.remove(k).map_err(|e| ErrorKind::Storage {
                reason: format!("cannot clean the imports tree: {e}"),
            })?;
        }
        Ok(ImportStore { tree })
    }

    fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    fn storage(shard: &ShardId, e: impl std::fmt::Display) -> ErrorKind {
        ErrorKind::Storage {
            reason: format!("{shard}: import record: {e}"),
        }
    }

    pub fn load(&self, shard: &ShardId) -> Result<Option<ImportRecord>, ErrorKind> {
        match self
            .tree()
            .get(shard.key().as_bytes())
            .map_err(|e| Self::storage(shard, e))?
        {
            Some(v) => decode(&v).map(Some).map_err(|e| Self::storage(shard, e)),
            None => Ok(None),
        }
    }

    pub fn save(&self, record: &ImportRecord) -> Result<(), ErrorKind> {
        let shard = &record.progress.shard;
        let v = encode(record).map_err(|e| Self::storage(shard, e))?;
        self.tree()
            .insert(shard.key().as_bytes(), v)
            .map_err(|e| Self::storage(shard, e))?;
        Ok(())
    }

    pub fn remove(&self, shard: &ShardId) -> Result<(), ErrorKind> {
        self.tree()
            .remove(shard.key().as_bytes())
            .map_err(|e| Self::storage(shard, e))?;
        Ok(())
    }

    /// The record of move `move_id`, whatever its shard.
    pub fn find(&self, move_id: u64) -> Option<ImportRecord> {
        self.tree()
            .iter()
            .values()
            .filter_map(Result::ok)
            .filter_map(|v| decode::<ImportRecord>(&v).ok())
            .find(|r| r.move_id == move_id)
    }
}

struct JobState {
    progress: MoveProgress,
    fence_end: Option<Offset>,
    fenced_ms: Option<u64>,
    /// Monotonic fence time, when the fence happened in this process (more precise).
    fenced_at: Option<Instant>,
    /// The source's end offset as last seen.
    source_end: Offset,
}

/// One move into this broker, running or finished.
pub struct Job {
    pub move_id: u64,
    pub shard: ShardId,
    pub source: BrokerAddr,
    pub epoch: Epoch,
    state: Mutex<JobState>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Job {
    /// A job for `record` (phase as recorded); `cancel` should be a child of the broker's
    /// shutdown token.
    pub fn new(record: &ImportRecord, cancel: CancellationToken) -> Arc<Job> {
        Arc::new(Job {
            move_id: record.move_id,
            shard: record.progress.shard.clone(),
            source: record.source.clone(),
            epoch: record.epoch,
            state: Mutex::new(JobState {
                progress: record.progress.clone(),
                fence_end: record.fence_end,
                fenced_ms: record.fenced_ms,
                fenced_at: None,
                source_end: 0,
            }),
            cancel,
            task: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, JobState> {
        // Plain data, always left consistent: usable after a panic elsewhere.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn progress(&self) -> MoveProgress {
        self.lock().progress.clone()
    }

    pub fn phase(&self) -> MovePhase {
        self.lock().progress.phase
    }

    pub fn fence_end(&self) -> Option<Offset> {
        self.lock().fence_end
    }

    /// Whether the copy task is still running.
    pub fn running(&self) -> bool {
        self.task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// For heartbeat reports: running, waiting for the flip, or finished recently.
    pub fn reportable(&self, now: u64) -> bool {
        let st = self.lock();
        match st.progress.finished_ms {
            Some(f) => now.saturating_sub(f) < REPORT_FINISHED_FOR_MS,
            None => true,
        }
    }

    pub fn record(&self) -> ImportRecord {
        let st = self.lock();
        ImportRecord {
            move_id: self.move_id,
            source: self.source.clone(),
            epoch: self.epoch,
            progress: st.progress.clone(),
            fence_end: st.fence_end,
            fenced_ms: st.fenced_ms,
        }
    }

    /// Stops the task (it ends at its next step) and marks the move failed with `why`.
    pub fn cancel(&self, why: &str) {
        self.cancel.cancel();
        let mut st = self.lock();
        if !matches!(st.progress.phase, MovePhase::Done | MovePhase::Failed) {
            st.progress.phase = MovePhase::Failed;
            st.progress.error = Some(why.to_string());
            st.progress.finished_ms = Some(now_ms());
        }
    }

    /// Marks the move done at activation; returns the final progress.
    pub fn finish(&self) -> MoveProgress {
        let mut st = self.lock();
        let now = now_ms();
        let pause = match (st.fenced_at, st.fenced_ms) {
            (Some(at), _) => Some(at.elapsed().as_millis() as u64),
            (None, Some(ms)) => Some(now.saturating_sub(ms)),
            (None, None) => None,
        };
        let p = &mut st.progress;
        p.phase = MovePhase::Done;
        p.lag = 0;
        p.finished_ms = Some(now);
        p.write_pause_ms = pause;
        p.error = None;
        p.clone()
    }

    /// Waits for the task to end (after a cancel).
    pub async fn join(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            if let Err(e) = t.await {
                warn!(move_id = self.move_id, "import task ended abnormally: {e}");
            }
        }
    }

    fn set_phase(&self, phase: MovePhase) {
        self.lock().progress.phase = phase;
    }

    fn set_error(&self, e: Option<String>) {
        self.lock().progress.error = e;
    }

    fn note_source_end(&self, end: Offset, local_end: Offset) {
        let mut st = self.lock();
        st.source_end = end;
        st.progress.lag = end.saturating_sub(local_end);
    }

    fn note_written(&self, records: u64, bytes: u64, local_end: Offset) {
        let mut st = self.lock();
        st.progress.records_copied += records;
        st.progress.bytes_copied += bytes;
        st.progress.lag = st.source_end.saturating_sub(local_end);
    }
}

/// Everything a copy task needs besides its job.
pub struct ImportCtx {
    pub shard: Arc<Shard>,
    pub store: Arc<ImportStore>,
    pub durability: Arc<Durability>,
    pub max_frame: usize,
    pub broker_id: u32,
    /// Bytes per second this import may copy (None: unthrottled).
    pub rate_limit: Option<u64>,
    /// Proven to the source broker (an export needs it).
    pub secret: Option<Secret>,
}

/// Starts `job`'s copy task, once the tasks of `superseded` moves of the same shard have ended
/// (two tasks never write one shard).
pub fn spawn(job: Arc<Job>, ctx: ImportCtx, superseded: Vec<Arc<Job>>) {
    let handle = tokio::spawn({
        let job = job.clone();
        async move {
            for old in superseded {
                old.join().await;
            }
            run(job, ctx).await;
        }
    });
    *job.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
}

/// Why an attempt stopped.
enum Stop {
    Cancelled,
    /// Worth another attempt (the source is away or answered an error).
    Retry(String),
    /// Ends the move: local storage failure, or a source log that does not continue ours.
    Fatal(String),
}

impl From<ErrorKind> for Stop {
    fn from(e: ErrorKind) -> Self {
        Stop::Fatal(e.to_string())
    }
}

async fn run(job: Arc<Job>, ctx: ImportCtx) {
    let mut backoff = MIN_BACKOFF;
    let mut last_error: Option<String> = None;
    loop {
        let before = ctx.shard.end_offset();
        match attempt(&job, &ctx).await {
            Ok(()) => return,
            Err(Stop::Cancelled) => {
                info!(move_id = job.move_id, shard = %job.shard, "import stopped");
                return;
            }
            Err(Stop::Fatal(e)) => {
                warn!(move_id = job.move_id, shard = %job.shard, "import failed: {e}");
                {
                    let mut st = job.lock();
                    st.progress.phase = MovePhase::Failed;
                    st.progress.error = Some(e);
                    st.progress.finished_ms = Some(now_ms());
                }
                if let Err(e) = ctx.store.save(&job.record()) {
                    warn!(
                        move_id = job.move_id,
                        "cannot record the failed import: {e}"
                    );
                }
                return;
            }
            Err(Stop::Retry(e)) => {
                if ctx.shard.end_offset() > before {
                    backoff = MIN_BACKOFF;
                }
                if last_error.as_deref() != Some(e.as_str()) {
                    warn!(move_id = job.move_id, shard = %job.shard, source = %job.source,
                        "import interrupted: {e}; retrying with backoff");
                    last_error = Some(e.clone());
                }
                job.set_error(Some(e));
            }
        }
        tokio::select! {
            _ = job.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

enum WriterMsg {
    Batches(Vec<StoredBatch>),
    /// Answered once everything sent before it is written.
    Sync(oneshot::Sender<()>),
}

/// The blocking writer: applies chunks in order until the channel closes or a write fails.
fn write_loop(
    job: &Job,
    shard: &Shard,
    mut rx: mpsc::Receiver<WriterMsg>,
) -> Result<(), ErrorKind> {
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            WriterMsg::Batches(batches) => {
                let (records, bytes) = shard.import_batches(&batches)?;
                job.note_written(records, bytes, shard.end_offset());
            }
            WriterMsg::Sync(done) => {
                let _ = done.send(());
            }
        }
    }
    Ok(())
}

/// One pass from the local end to `Activating`; the writer thread lives exactly as long.
async fn attempt(job: &Arc<Job>, ctx: &ImportCtx) -> Result<(), Stop> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking({
        let (job, shard) = (job.clone(), ctx.shard.clone());
        move || write_loop(&job, &shard, rx)
    });
    let copied = copy(job, ctx, &tx).await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Stop::Fatal(format!("writer failed: {e}")))?;
    // A write failure explains a copy that stopped because the writer went away.
    written?;
    copied
}

struct Source<'a> {
    job: &'a Job,
    conn: Connection,
    chunk_bytes: u32,
}

impl Source<'_> {
    async fn call(&self, request: Request) -> Result<Response, Stop> {
        let name = request.name();
        tokio::select! {
            _ = self.job.cancel.cancelled() => Err(Stop::Cancelled),
            r = self.conn.request_with_timeout(request, SOURCE_TIMEOUT) => r.map_err(|e| {
                let e = match e {
                    ClientError::Server(k) => format!("{} answered {name} with: {k}", self.job.source),
                    other => other.to_string(),
                };
                Stop::Retry(e)
            }),
        }
    }

    async fn export(&self, from: Offset) -> Result<(Vec<StoredBatch>, Offset, bool), Stop> {
        let request = Request::ExportShard {
            shard: self.job.shard.clone(),
            from_offset: from,
            max_bytes: self.chunk_bytes,
        };
        match self.call(request).await? {
            Response::Exported {
                batches,
                end_offset,
                fenced,
            } => {
                if end_offset < from {
                    return Err(Stop::Fatal(format!(
                        "{} holds {} only up to offset {end_offset}, but the local copy already reaches {from}: \
                         the source's log is not the one this copy came from; drop this copy (DropShard) and start a new move",
                        self.job.source, self.job.shard
                    )));
                }
                Ok((batches, end_offset, fenced))
            }
            other => Err(Stop::Retry(format!(
                "{} answered export-shard with {}",
                self.job.source,
                other.name()
            ))),
        }
    }
}

async fn send(tx: &mpsc::Sender<WriterMsg>, msg: WriterMsg) -> Result<(), Stop> {
    tx.send(msg)
        .await
        .map_err(|_| Stop::Fatal("the import writer stopped".into()))
}

async fn sync(tx: &mpsc::Sender<WriterMsg>) -> Result<(), Stop> {
    let (done, wait) = oneshot::channel();
    send(tx, WriterMsg::Sync(done)).await?;
    wait.await
        .map_err(|_| Stop::Fatal("the import writer stopped".into()))
}

fn chunk_size(batches: &[StoredBatch]) -> (u64, u64) {
    batches.iter().fold((0, 0), |(r, b), s| {
        (r + s.batch.count as u64, b + s.batch.data.len() as u64 + 4)
    })
}

async fn copy(job: &Arc<Job>, ctx: &ImportCtx, tx: &mpsc::Sender<WriterMsg>) -> Result<(), Stop> {
    let config = ConnectionConfig {
        max_frame: ctx.max_frame,
        client_name: format!("broker-{}-import", ctx.broker_id),
        connect_timeout: Duration::from_secs(2),
        request_timeout: SOURCE_TIMEOUT,
        secret: ctx.secret.clone(),
        ..ConnectionConfig::default()
    };
    let conn = tokio::select! {
        _ = job.cancel.cancelled() => return Err(Stop::Cancelled),
        c = Connection::connect(&job.source.addr, config) => c.map_err(|e| Stop::Retry(e.to_string()))?,
    };
    let source = Source {
        job,
        conn,
        chunk_bytes: chunk_bytes(ctx.rate_limit),
    };
    let result = copy_from(job, ctx, tx, &source).await;
    source.conn.close();
    result
}

async fn copy_from(
    job: &Arc<Job>,
    ctx: &ImportCtx,
    tx: &mpsc::Sender<WriterMsg>,
    source: &Source<'_>,
) -> Result<(), Stop> {
    let mut from = ctx.shard.end_offset();
    let resumed_at = from;
    if job.fence_end().is_none() {
        job.set_phase(MovePhase::Copying);
    }
    // Bytes written since the last flush, roughly: decides a flush before the fence.
    let mut unflushed: u64 = 0;
    let (started, mut copied) = (tokio::time::Instant::now(), 0u64);
    loop {
        if let Some(rate) = ctx.rate_limit {
            // Throttle: do not get ahead of `rate` bytes per second since this attempt began.
            let due = started + Duration::from_secs_f64(copied as f64 / rate as f64);
            tokio::select! {
                _ = job.cancel.cancelled() => return Err(Stop::Cancelled),
                _ = tokio::time::sleep_until(due) => {}
            }
        }
        let (batches, end, fenced) = source.export(from).await?;
        job.set_error(None);
        let (records, bytes) = chunk_size(&batches);
        let chunk_end = batches.last().map_or(from, StoredBatch::end_offset);
        job.note_source_end(end, ctx.shard.end_offset());
        if !batches.is_empty() {
            send(tx, WriterMsg::Batches(batches)).await?;
        } else if from < end {
            return Err(Stop::Retry(format!(
                "{} sent no data at offset {from} below its end {end}",
                job.source
            )));
        }
        unflushed = unflushed.saturating_add(bytes);
        copied = copied.saturating_add(bytes);
        from = chunk_end;
        if fenced {
            // Fenced already (a resumed move): its end is final; the fence below is a no-op.
            break;
        }
        let remaining = end - from;
        let per_record = bytes.checked_div(records).unwrap_or(0);
        if remaining >= FENCE_LAG_RECORDS || remaining.saturating_mul(per_record) >= FENCE_LAG_BYTES
        {
            continue;
        }
        if unflushed > PRE_FENCE_FLUSH_BYTES {
            // Almost there: put what we have on disk now, so the flush inside the write pause
            // only covers the tail.
            sync(tx).await?;
            ctx.durability.flush_now().await?;
            unflushed = 0;
            continue;
        }
        break;
    }
    if from > resumed_at {
        info!(move_id = job.move_id, shard = %job.shard, from = resumed_at, to = from, "import caught up with the source; fencing it");
    }

    // The pause is measured from before the request: the source stops writes (and flushes)
    // before it answers, so this bounds the pause from above.
    let fence_sent_ms = now_ms();
    let fence_sent_at = Instant::now();
    let fence_end = match source
        .call(Request::FenceShard {
            shard: job.shard.clone(),
            move_id: job.move_id,
        })
        .await?
    {
        Response::Fenced { end_offset } => end_offset,
        other => {
            return Err(Stop::Retry(format!(
                "{} answered fence-shard with {}",
                job.source,
                other.name()
            )))
        }
    };
    if fence_end < from {
        return Err(Stop::Fatal(format!(
            "{} fenced {} at offset {fence_end}, below the {from} already copied",
            job.source, job.shard
        )));
    }
    {
        let mut st = job.lock();
        if st.fence_end != Some(fence_end) || st.fenced_ms.is_none() {
            st.fenced_ms = Some(fence_sent_ms);
            st.fenced_at = Some(fence_sent_at);
        }
        st.fence_end = Some(fence_end);
        st.progress.phase = MovePhase::Fenced;
        st.source_end = fence_end;
    }
    ctx.store.save(&job.record())?;
    info!(move_id = job.move_id, shard = %job.shard, fence_end, "source fenced; copying the tail");

    while from < fence_end {
        let (batches, _, _) = source.export(from).await?;
        let Some(last) = batches.last() else {
            return Err(Stop::Retry(format!(
                "{} sent no data at offset {from} below its fenced end {fence_end}",
                job.source
            )));
        };
        from = last.end_offset();
        send(tx, WriterMsg::Batches(batches)).await?;
    }
    sync(tx).await?;
    let local_end = ctx.shard.end_offset();
    if local_end != fence_end {
        return Err(Stop::Fatal(format!(
            "after the tail the local copy ends at {local_end}, not at the fenced end {fence_end}"
        )));
    }
    let meta = match source
        .call(Request::ExportMeta {
            shard: job.shard.clone(),
        })
        .await?
    {
        Response::Meta(m) => m,
        other => {
            return Err(Stop::Retry(format!(
                "{} answered export-meta with {}",
                job.source,
                other.name()
            )))
        }
    };
    ctx.shard.import_meta(&meta)?;
    // The record says Activating before the flush, and the router learns it only after: once it
    // may flip, the data, offsets and this record are all on disk.
    let mut record = job.record();
    record.progress.phase = MovePhase::Activating;
    record.progress.lag = 0;
    ctx.store.save(&record)?;
    ctx.durability.flush_now().await?;
    {
        let mut st = job.lock();
        st.progress.phase = MovePhase::Activating;
        st.progress.lag = 0;
        st.progress.error = None;
    }
    info!(move_id = job.move_id, shard = %job.shard, end_offset = fence_end,
        groups = meta.groups.len(), producers = meta.producers.len(),
        "import complete; waiting for the router to activate the shard here");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_moves_ask_for_a_quarter_second_of_data() {
        assert_eq!(chunk_bytes(None), EXPORT_CHUNK_BYTES);
        // 1 MB/s: 250 KB per request, so progress shows four times a second.
        assert_eq!(chunk_bytes(Some(1_000_000)), 250_000);
        // Very slow: never below 64 KiB (one stored entry); very fast: never above the default.
        assert_eq!(chunk_bytes(Some(1_000)), 64 << 10);
        assert_eq!(chunk_bytes(Some(1 << 40)), EXPORT_CHUNK_BYTES);
    }
}
