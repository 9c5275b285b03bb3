//! The broker's request handler: the shards it holds, and one method per request kind.
//!
//! Order-sensitive work (appending, committing, changing a shard's state) runs synchronously in
//! [`Service::call`], so it happens in the order requests arrive; waiting (group commit, long poll,
//! forwarding to the router) happens in the returned future.

use std::collections::HashMap;
use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use shardq_protocol::batch::RECORD_OVERHEAD;
use shardq_protocol::{
    Acks, BrokerAddr, BrokerId, BrokerReport, CancellationToken, Epoch, ErrorKind, FetchRequest,
    MovePhase, MoveProgress, Offset, ProduceRequest, Request, Response, Secret, Service,
    ServiceFuture, ShardAssignment, ShardId, ShardReport, ShardState, ShardTrim, TrimResult,
    TrimTo,
};
use tracing::{info, warn};

use crate::durability::Durability;
use crate::import::{self, now_ms, ImportCtx, ImportRecord, ImportStore, Job};
use crate::metrics::BrokerMetrics;
use crate::replication::Replication;
use crate::router_link::RouterLink;
use crate::shard::{tree_name, Access, Limit, Ownership, Shard, ShardEnv};

/// Room left in a frame for the envelope around fetched batches.
const FRAME_MARGIN: usize = 64 * 1024;
/// How long a forwarded request may take at the router.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// A broker: its sled database, the shards it holds and its link to the router.
pub struct Broker {
    pub(crate) id: BrokerId,
    /// The database and its `shards` tree (shard key -> [`Ownership`]).
    pub(crate) store: Store,
    pub(crate) shards: RwLock<HashMap<ShardId, Arc<Shard>>>,
    /// What every shard shares (write-ahead file, health, this broker's id).
    env: ShardEnv,
    /// The leader lease and the fetchers that keep followed shards in sync.
    pub(crate) replication: Replication,
    pub(crate) durability: Arc<Durability>,
    /// The newest routing epoch this broker has seen (for `NotOwner` answers).
    epoch: AtomicU64,
    router: Option<Arc<RouterLink>>,
    max_record_bytes: usize,
    max_frame: usize,
    /// Most bytes of batches one answer may carry.
    read_limit: usize,
    /// Persisted state of imports (moves into this broker), one record per shard.
    pub(crate) imports: Arc<ImportStore>,
    /// Imports run or finished since this process started, by move id.
    jobs: Mutex<HashMap<u64, Arc<Job>>>,
    /// The broker's shutdown; import tasks stop with it.
    shutdown: CancellationToken,
    /// Cap on the bytes per second one import copies (None: as fast as it goes).
    move_rate_limit: Option<u64>,
    /// New at every start of the process: sent with every fetch answer (see `stable_end`), and
    /// with registrations, heartbeats and replica fetches (an ISR change names the process the
    /// leader heard from).
    pub(crate) incarnation: u64,
    /// The cluster secret this broker proves to the brokers it imports shards from.
    secret: Option<Secret>,
    /// What `/metrics` reports.
    pub(crate) metrics: BrokerMetrics,
}

/// One instance of the database and its `shards` tree.
#[derive(Clone)]
pub(crate) struct Store {
    pub db: sled::Db,
    pub owners: sled::Tree,
}

/// How long a `durable` produce waits for its batch to reach every in-sync replica before
/// answering `Timeout` (the producer retries; the retry is recognised and waits again).
const REPLICATION_WAIT: Duration = Duration::from_secs(5);

/// Waits until a leader's batch is below the high watermark.
struct Replicated(Arc<Shard>);

impl Replicated {
    async fn wait(&self, end: Offset) -> Result<(), ErrorKind> {
        self.wait_for(|s| s.ack_check(end)).await
    }

    /// Waits until `check` says yes (re-checked whenever the high watermark, a follower's
    /// progress or the shard's state changes), or fails with its error or a timeout.
    async fn wait_for(
        &self,
        check: impl Fn(&Shard) -> Result<bool, ErrorKind>,
    ) -> Result<(), ErrorKind> {
        let shard = &self.0;
        let mut hw = shard.subscribe(Limit::Committed);
        let deadline = tokio::time::Instant::now() + REPLICATION_WAIT;
        loop {
            let changed = shard.state_changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if check(shard)? {
                return Ok(());
            }
            tokio::select! {
                _ = hw.changed() => {}
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ErrorKind::Timeout { after_ms: REPLICATION_WAIT.as_millis() as u64 });
                }
            }
        }
    }
}

/// The longest a fetch waits for data before answering with none.
const MAX_LONG_POLL: Duration = Duration::from_secs(30);

fn ready_result(r: Result<Response, ErrorKind>) -> ServiceFuture {
    Box::pin(ready(r))
}

/// A value that differs between two starts of a broker: the start time in nanoseconds, mixed
/// with the process id (two starts within one clock tick are then still told apart).
pub(crate) fn new_incarnation() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

impl Broker {
    /// Loads every shard recorded in the `shards` tree.
    pub(crate) fn open(
        id: BrokerId,
        db: sled::Db,
        durability: Arc<Durability>,
        router: Option<Arc<RouterLink>>,
        max_record_bytes: usize,
        max_frame: usize,
        shutdown: CancellationToken,
    ) -> Result<Broker, ErrorKind> {
        let storage = |what: &str, e: &dyn std::fmt::Display| ErrorKind::Storage {
            reason: format!("{what}: {e}"),
        };
        let owners = db
            .open_tree("shards")
            .map_err(|e| storage("cannot open the shards tree", &e))?;
        let (segments_root, pending) = durability.segments();
        let env = ShardEnv {
            segments_root,
            pending,
            wal: durability.wal(),
            health: durability.health().clone(),
            counts_durable: durability.reads_wait_for_flush(),
            me: id,
            resume_leadership: router.is_none(),
        };
        let mut shards = HashMap::new();
        let mut epoch = 0;
        for kv in owners.iter() {
            let (k, v) = kv.map_err(|e| storage("cannot read the shards tree", &e))?;
            let own = Ownership::decode(&v).map_err(|e| {
                storage(
                    &format!("corrupt ownership record {}", String::from_utf8_lossy(&k)),
                    &e,
                )
            })?;
            epoch = epoch.max(own.epoch);
            let shard = Shard::open(&db, own, &env)?;
            shards.insert(shard.id().clone(), Arc::new(shard));
        }
        let imports = ImportStore::open(&db, &|key| shards.keys().any(|s| s.key() == key))?;
        Ok(Broker {
            id,
            store: Store { db, owners },
            shards: RwLock::new(shards),
            env,
            replication: Replication::new(router.is_some()),
            durability,
            epoch: AtomicU64::new(epoch),
            router,
            max_record_bytes,
            max_frame,
            read_limit: max_frame.saturating_sub(FRAME_MARGIN).max(RECORD_OVERHEAD),
            imports: Arc::new(imports),
            jobs: Mutex::new(HashMap::new()),
            shutdown,
            move_rate_limit: None,
            incarnation: new_incarnation(),
            secret: None,
            metrics: BrokerMetrics::default(),
        })
    }

    /// The cluster secret this broker proves to the brokers it imports shards from.
    pub(crate) fn with_secret(mut self, secret: Option<Secret>) -> Self {
        self.secret = secret;
        self
    }

    /// Throttles imports so a migration leaves bandwidth and disk for clients.
    pub(crate) fn with_move_rate_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.move_rate_limit = bytes_per_sec.filter(|r| *r > 0);
        self
    }

    pub fn id(&self) -> BrokerId {
        self.id
    }

    /// The newest routing epoch seen.
    pub fn epoch(&self) -> Epoch {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn observe_epoch(&self, epoch: Epoch) {
        self.epoch.fetch_max(epoch, Ordering::AcqRel);
    }

    fn open_shard(&self, own: Ownership) -> Result<Arc<Shard>, ErrorKind> {
        Ok(Arc::new(Shard::open(&self.store.db, own, &self.env)?))
    }

    pub(crate) fn shards_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<ShardId, Arc<Shard>>> {
        self.shards.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn shards_write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<ShardId, Arc<Shard>>> {
        self.shards.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn jobs(&self) -> MutexGuard<'_, HashMap<u64, Arc<Job>>> {
        // Lock order: `shards` before `jobs`, never the other way round.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn not_owner(&self, shard: &ShardId) -> ErrorKind {
        ErrorKind::NotOwner {
            shard: shard.to_string(),
            epoch: self.epoch(),
            owner: None,
        }
    }

    /// The shard, if held and accessible as `access` asks.
    fn shard(&self, id: &ShardId, access: Access) -> Result<Arc<Shard>, ErrorKind> {
        let shard = self
            .shards_read()
            .get(id)
            .cloned()
            .ok_or_else(|| self.not_owner(id))?;
        shard.ensure(access, self.epoch())?;
        Ok(shard)
    }

    /// Reports of the shards the router should know about: owned ones, and any mid-move.
    pub fn report(&self) -> BrokerReport {
        let mut shards: Vec<ShardReport> = self
            .shards_read()
            .values()
            .filter(|s| {
                let own = s.ownership();
                own.owned || own.state != ShardState::Active
            })
            .map(|s| s.report())
            .collect();
        shards.sort_by(|a, b| a.shard.cmp(&b.shard));
        let now = now_ms();
        let mut imports: Vec<MoveProgress> = self
            .jobs()
            .values()
            .filter(|j| j.reportable(now))
            .map(|j| j.progress())
            .collect();
        imports.sort_by_key(|p| p.move_id);
        BrokerReport {
            shards,
            imports,
            degraded: self
                .durability
                .health()
                .degraded()
                .map(|reason| format!("storage full: {reason}")),
        }
    }

    /// Holds `a.shard` from `a.epoch` on (creating an empty log if none is held), leading or
    /// following as its replica set says. An assignment older than what this broker already
    /// applied for the shard is ignored.
    pub fn assign(&self, a: &ShardAssignment) -> Result<(), ErrorKind> {
        let shard = self.hold(a)?;
        let following = shard.set_replication(&a.replication, self.id, now_ms());
        self.replication.follow(shard.id(), following);
        Ok(())
    }

    fn hold(&self, a: &ShardAssignment) -> Result<Arc<Shard>, ErrorKind> {
        let (shard, epoch) = (&a.shard, a.epoch);
        self.observe_epoch(epoch);
        let mut shards = self.shards_write();
        if let Some(s) = shards.get(shard) {
            if s.ownership().state == ShardState::Importing {
                self.activate_import(s, epoch)?;
            }
            let before = s.ownership();
            let newer = |o: &Ownership| {
                o.replication.as_ref().is_none_or(|r| {
                    (a.replication.leader_epoch, a.replication.isr_version)
                        >= (r.leader_epoch, r.isr_version)
                })
            };
            let after = s.update_ownership(&self.store.owners, |o| {
                if epoch >= o.epoch && o.state != ShardState::Importing {
                    o.owned = true;
                    o.epoch = epoch;
                }
                if newer(o) {
                    o.replication = Some(a.replication.clone());
                }
            })?;
            if !before.owned && after.owned {
                info!(%shard, epoch, "shard assigned again; serving its existing log");
            }
            return Ok(s.clone());
        }
        let own = Ownership {
            shard: shard.clone(),
            state: ShardState::Active,
            epoch,
            owned: true,
            replication: Some(a.replication.clone()),
        };
        let opened = self.open_shard(own.clone())?;
        self.store
            .owners
            .insert(shard.key().as_bytes(), own.encode()?)
            .map_err(|e| {
                self.durability
                    .health()
                    .sled_error(&format!("{shard}: cannot record ownership"), &e)
            })?;
        info!(%shard, epoch, end_offset = opened.end_offset(), "shard assigned");
        shards.insert(shard.clone(), opened.clone());
        Ok(opened)
    }

    /// Applies the router's complete assignment as of `epoch`: owns every listed shard, and stops
    /// serving held shards that are not listed (unless assigned at a newer epoch than this answer).
    pub fn reconcile(&self, epoch: Epoch, assignments: &[ShardAssignment]) {
        self.observe_epoch(epoch);
        for a in assignments {
            if let Err(e) = self.assign(a) {
                warn!(shard = %a.shard, "cannot take the assigned shard: {e}");
            }
        }
        let held: Vec<Arc<Shard>> = self.shards_read().values().cloned().collect();
        for s in held {
            // An import in progress is not ours to serve yet, nor to give up: only the router's
            // flip (an assignment) or a DropShard ends it.
            if assignments.iter().any(|a| &a.shard == s.id())
                || s.ownership().state == ShardState::Importing
            {
                continue;
            }
            let mut unassigned = false;
            let res = s.update_ownership(&self.store.owners, |o| {
                if o.owned && o.epoch <= epoch {
                    o.owned = false;
                    o.epoch = epoch;
                    unassigned = true;
                }
            });
            if unassigned {
                s.stop_replicating();
                self.replication.follow(s.id(), None);
            }
            match res {
                Ok(_) if unassigned => {
                    info!(shard = %s.id(), epoch, "shard no longer assigned here; keeping its data until dropped");
                }
                Ok(_) => {}
                Err(e) => warn!(shard = %s.id(), "cannot record unassignment: {e}"),
            }
        }
    }

    /// Deletes the local copy of `shard` (cancelling its import, if one runs), unless it is
    /// assigned here at a newer epoch.
    pub fn drop_shard(&self, shard: &ShardId, epoch: Epoch) -> Result<(), ErrorKind> {
        let mut shards = self.shards_write();
        if let Some(s) = shards.get(shard) {
            let own = s.ownership();
            if own.owned && own.epoch > epoch {
                return Err(ErrorKind::BadRequest {
                    reason: format!(
                        "not dropping {shard}: it is assigned to broker {} at epoch {}, newer than the drop's epoch {epoch}",
                        self.id, own.epoch
                    ),
                });
            }
        }
        self.delete_local(&mut shards, shard)?;
        info!(%shard, epoch, "shard dropped");
        Ok(())
    }

    /// Cancels any import of `shard` and deletes its local copy and records.
    fn delete_local(
        &self,
        shards: &mut HashMap<ShardId, Arc<Shard>>,
        shard: &ShardId,
    ) -> Result<(), ErrorKind> {
        for job in self.jobs().values().filter(|j| &j.shard == shard) {
            if job.phase() != MovePhase::Done {
                info!(%shard, move_id = job.move_id, "import cancelled: the shard is dropped here");
                job.cancel("cancelled: the shard was dropped from this broker");
            }
        }
        if let Some(s) = shards.remove(shard) {
            // Under the shard lock: an import write in progress finishes first, later ones fail.
            s.mark_dropped();
        }
        self.replication.follow(shard, None);
        self.imports.remove(shard)?;
        // The log goes first: a crash in between leaves an ownership record over an empty tree,
        // which the router's retried drop removes, never an orphaned log a new assignment would
        // silently reuse.
        let store = &self.store;
        store
            .db
            .drop_tree(tree_name(shard))
            .and_then(|_| store.owners.remove(shard.key().as_bytes()))
            .map_err(|e| ErrorKind::Storage {
                reason: format!("{shard}: cannot delete the local copy: {e}"),
            })?;
        Ok(())
    }

    /// Turns an imported shard on (the router's flip), if its import is complete: the shard
    /// becomes Active and owned at exactly the source's fenced end offset. An early flip leaves
    /// it importing.
    fn activate_import(&self, s: &Arc<Shard>, epoch: Epoch) -> Result<(), ErrorKind> {
        let shard = s.id();
        let end = s.end_offset();
        let live = self
            .jobs()
            .values()
            .find(|j| {
                &j.shard == shard && !matches!(j.phase(), MovePhase::Done | MovePhase::Failed)
            })
            .cloned();
        let job = match live {
            Some(j) if j.phase() == MovePhase::Activating && j.fence_end() == Some(end) => j,
            Some(j) => {
                warn!(%shard, move_id = j.move_id, phase = %j.phase(), epoch,
                    "asked to own a shard whose import has not finished; keeping it importing (the router must wait for phase Activating)");
                return Ok(());
            }
            None => match self.imports.load(shard)? {
                // Ready before a restart: the data, offsets and this record were flushed together.
                Some(r)
                    if r.progress.phase == MovePhase::Activating && r.fence_end == Some(end) =>
                {
                    let j = Job::new(&r, self.shutdown.child_token());
                    self.jobs().insert(r.move_id, j.clone());
                    j
                }
                other => {
                    warn!(%shard, epoch, phase = other.map(|r| r.progress.phase.as_str()),
                        "asked to own a shard whose import has not finished; keeping it importing until ImportShard completes it");
                    return Ok(());
                }
            },
        };
        s.update_ownership(&self.store.owners, |o| {
            o.state = ShardState::Active;
            o.owned = true;
            o.epoch = o.epoch.max(epoch);
        })?;
        // The import flushed the whole copy before it reported Activating.
        s.activated(end);
        let progress = job.finish();
        if let Err(e) = self.imports.save(&job.record()) {
            warn!(%shard, "cannot record the finished import: {e}");
        }
        info!(%shard, move_id = job.move_id, epoch, end_offset = end,
            records = progress.records_copied, bytes = progress.bytes_copied,
            write_pause_ms = progress.write_pause_ms, "imported shard activated");
        Ok(())
    }

    /// Holds `shard` as Importing (an empty log), persisted.
    fn create_importing(
        &self,
        shards: &mut HashMap<ShardId, Arc<Shard>>,
        shard: &ShardId,
        epoch: Epoch,
    ) -> Result<Arc<Shard>, ErrorKind> {
        let own = Ownership {
            shard: shard.clone(),
            state: ShardState::Importing,
            epoch,
            owned: false,
            replication: None,
        };
        let opened = self.open_shard(own.clone())?;
        self.store
            .owners
            .insert(shard.key().as_bytes(), own.encode()?)
            .map_err(|e| {
                self.durability
                    .health()
                    .sled_error(&format!("{shard}: cannot record the import"), &e)
            })?;
        shards.insert(shard.clone(), opened.clone());
        Ok(opened)
    }

    /// Starts (or resumes, or confirms) move `move_id`: importing `shard` from `source`.
    fn import_shard(
        self: &Arc<Self>,
        move_id: u64,
        shard: ShardId,
        source: BrokerAddr,
        epoch: Epoch,
    ) -> Result<Response, ErrorKind> {
        if source.id == self.id {
            return Err(ErrorKind::BadRequest {
                reason: format!("broker {} cannot import {shard} from itself", self.id),
            });
        }
        self.observe_epoch(epoch);
        let mut shards = self.shards_write();
        if let Some(j) = self.jobs().get(&move_id) {
            if j.shard != shard {
                return Err(ErrorKind::BadRequest {
                    reason: format!(
                        "move {move_id} imports {} into broker {}, not {shard}",
                        j.shard, self.id
                    ),
                });
            }
            if j.running() || matches!(j.phase(), MovePhase::Activating | MovePhase::Done) {
                return Ok(Response::Ok);
            }
        }
        match shards.get(&shard).cloned() {
            Some(s) if s.ownership().state == ShardState::Importing => {}
            Some(s) if s.ownership().owned => {
                // Finished before a restart: remember the outcome so MoveStatus reports it.
                if let Some(r) = self
                    .imports
                    .load(&shard)?
                    .filter(|r| r.move_id == move_id && r.progress.phase == MovePhase::Done)
                {
                    self.jobs()
                        .entry(move_id)
                        .or_insert_with(|| Job::new(&r, self.shutdown.child_token()));
                    return Ok(Response::Ok);
                }
                return Err(ErrorKind::BadRequest {
                    reason: format!(
                        "broker {} already owns {shard} ({:?}); it cannot import it in move {move_id}",
                        self.id,
                        s.ownership().state
                    ),
                });
            }
            Some(_) => {
                // A copy left from when this broker last owned the shard: the source's log and
                // state are the truth, so start afresh rather than trust it.
                info!(%shard, move_id, "discarding a stale unassigned copy before importing the shard");
                self.delete_local(&mut shards, &shard)?;
                self.create_importing(&mut shards, &shard, epoch)?;
            }
            None => {
                self.create_importing(&mut shards, &shard, epoch)?;
            }
        }
        let Some(target) = shards.get(&shard).cloned() else {
            return Err(ErrorKind::Internal {
                reason: format!("{shard} vanished while starting its import"),
            });
        };
        let record = match self.imports.load(&shard)?.filter(|r| r.move_id == move_id) {
            Some(mut r) => {
                // Resuming: counters restart from here, the fence (if any) is kept.
                r.source = source.clone();
                r.epoch = epoch;
                let p = &mut r.progress;
                p.from = Some(source.id);
                p.phase = if r.fence_end.is_some() {
                    MovePhase::Fenced
                } else {
                    MovePhase::Copying
                };
                p.records_copied = 0;
                p.bytes_copied = 0;
                p.error = None;
                p.finished_ms = None;
                p.write_pause_ms = None;
                r
            }
            None => ImportRecord {
                move_id,
                source: source.clone(),
                epoch,
                progress: MoveProgress {
                    move_id,
                    shard: shard.clone(),
                    from: Some(source.id),
                    to: self.id,
                    phase: MovePhase::Copying,
                    records_copied: 0,
                    bytes_copied: 0,
                    lag: 0,
                    started_ms: now_ms(),
                    finished_ms: None,
                    write_pause_ms: None,
                    error: None,
                },
                fence_end: None,
                fenced_ms: None,
            },
        };
        self.imports.save(&record)?;
        let job = Job::new(&record, self.shutdown.child_token());
        let superseded: Vec<Arc<Job>> = {
            let mut jobs = self.jobs();
            let now = now_ms();
            // Forget long-finished moves (the last one per shard stays in the imports tree).
            jobs.retain(|_, j| j.reportable(now) || j.running());
            let old: Vec<Arc<Job>> = jobs
                .values()
                .filter(|j| j.shard == shard && j.move_id != move_id)
                .cloned()
                .collect();
            for j in &old {
                if !matches!(j.phase(), MovePhase::Done | MovePhase::Failed) {
                    info!(%shard, old = j.move_id, new = move_id, "import superseded by a newer move");
                    j.cancel(&format!("superseded by move {move_id}"));
                }
            }
            jobs.insert(move_id, job.clone());
            old
        };
        info!(%shard, move_id, %source, from_offset = target.end_offset(), "import started");
        let ctx = ImportCtx {
            shard: target,
            store: self.imports.clone(),
            durability: self.durability.clone(),
            max_frame: self.max_frame,
            broker_id: self.id,
            rate_limit: self.move_rate_limit,
            secret: self.secret.clone(),
        };
        import::spawn(job, ctx, superseded);
        Ok(Response::Ok)
    }

    fn move_status(&self, move_id: u64) -> Result<Response, ErrorKind> {
        if let Some(j) = self.jobs().get(&move_id) {
            return Ok(Response::Move(j.progress()));
        }
        match self.imports.find(move_id) {
            Some(r) if matches!(r.progress.phase, MovePhase::Done | MovePhase::Failed) => {
                Ok(Response::Move(r.progress))
            }
            Some(r) => Err(ErrorKind::UnknownShard {
                shard: r.progress.shard.to_string(),
                reason: format!(
                    "no move {move_id} running on broker {} (it restarted); send ImportShard again to resume it",
                    self.id
                ),
            }),
            None => Err(ErrorKind::UnknownShard {
                shard: String::new(),
                reason: format!("no move {move_id} on broker {}", self.id),
            }),
        }
    }

    /// Waits for every import task to end (after the shutdown token was cancelled).
    pub(crate) async fn stop_imports(&self) {
        let jobs: Vec<Arc<Job>> = self.jobs().values().cloned().collect();
        for j in jobs {
            j.join().await;
        }
    }

    fn produce(self: &Arc<Self>, p: ProduceRequest) -> ServiceFuture {
        let result = self.shard(&p.shard, Access::Write).and_then(|shard| {
            p.batch.validate(self.max_record_bytes)?;
            // A leader cut off from the router for longer than its lease may have been replaced.
            let lease = &self.replication.lease;
            if shard.needs_lease() && !lease.valid() {
                return Err(lease.expired(&p.shard));
            }
            if p.acks == Acks::Durable {
                shard.check_insync()?;
            }
            let d = &self.durability;
            let appended = shard.append(
                &p.batch,
                p.producer,
                self.epoch(),
                &|| d.note_write(),
                &|| d.current(),
            )?;
            Ok((shard, appended))
        });
        let (shard, appended) = match result {
            Ok(a) => a,
            Err(e) => return ready_result(Err(e)),
        };
        let response = Response::Produced {
            base_offset: appended.base_offset,
            count: appended.count,
            duplicate: appended.duplicate,
        };
        // A retry may arrive while the original still waits for its flush: it waits for the
        // same (or a later) flush, never acknowledging less than the original would.
        let ticket = appended.ticket;
        // Once a flush that started after this append is done, everything up to its end is on
        // disk (appends to a shard are ordered, and a flush covers every write applied before it).
        let end = appended.base_offset + appended.count as u64;
        let durability = self.durability.clone();
        let replicated = Replicated(shard.clone());
        let made_durable = async move {
            durability.wait(ticket).await?;
            shard.mark_durable(end);
            Ok(())
        };
        if p.acks == Acks::Appended {
            // Acknowledge now, but still publish the records to readers that wait for the flush.
            if self.durability.reads_wait_for_flush() {
                tokio::spawn(async move {
                    let _: Result<(), ErrorKind> = made_durable.await;
                });
            }
            return ready_result(Ok(response));
        }
        let broker = self.clone();
        let (acks, shard_id) = (p.acks, p.shard);
        Box::pin(async move {
            made_durable.await?;
            if acks == Acks::Durable {
                replicated.wait(end).await?;
            }
            // Checked last: the lease may have run out while this waited.
            let lease = &broker.replication.lease;
            if replicated.0.needs_lease() && !lease.valid() {
                return Err(lease.expired(&shard_id));
            }
            Ok(response)
        })
    }

    fn fetch(&self, f: FetchRequest) -> ServiceFuture {
        let shard = match self.shard(&f.shard, Access::Read) {
            Ok(s) => s,
            Err(e) => return ready_result(Err(e)),
        };
        let read_limit = self.read_limit;
        let max_bytes = (f.max_bytes as usize).min(read_limit);
        let incarnation = self.incarnation;
        let end = self.visible_end(&shard);
        let answer = move |shard: &Shard| {
            let (batches, hw) = shard.read(f.offset, max_bytes, read_limit, Limit::Committed)?;
            // A reader ahead of this replica's high watermark but within its log read those
            // records committed elsewhere (from the leader before a failover, whose high
            // watermark this new leader's has not caught up with): they are committed, not lost.
            let high_watermark = hw.max(f.offset.min(shard.end_offset()));
            Ok(Response::Fetched {
                high_watermark,
                start_offset: shard.offsets().0,
                incarnation,
                stable_end: shard.stable_end(),
                batches,
            })
        };
        // Only a fetch at the end (or between the high watermark and the log end: see above)
        // waits; one past the log end (the log lost records in a crash) learns the end at once.
        if f.offset < end || f.offset > shard.end_offset() || f.max_wait_ms == 0 {
            return ready_result(answer(&shard));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        Box::pin(async move {
            let mut rx = shard.subscribe(Limit::Committed);
            let changed = shard.state_changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            shard.ensure(Access::Read, epoch)?;
            // A long poll is bounded here whatever the client asked: an idle connection with a
            // fetch parked for days would escape the idle timeout and hold its slot.
            let wait = Duration::from_millis(f.max_wait_ms as u64).min(MAX_LONG_POLL);
            // Wakes on the first append past `offset`, or when the shard stops being served here.
            tokio::select! {
                _ = tokio::time::timeout(wait, rx.wait_for(|end| *end > f.offset)) => {}
                _ = changed => {}
            }
            shard.ensure(Access::Read, epoch)?;
            answer(&shard)
        })
    }

    /// A group commit: acknowledged once durable here and held by every in-sync follower, so
    /// a failover never re-delivers what a group committed.
    fn commit(&self, shard: &ShardId, group: &str, offset: Offset) -> ServiceFuture {
        let d = &self.durability;
        let result = self.shard(shard, Access::Write).and_then(|s| {
            s.commit(group, offset, self.epoch(), &|| d.note_write())
                .map(|r| (s, r))
        });
        match result {
            Ok((s, (ticket, version))) => {
                self.group_change_answer(s, ticket, version, Response::Committed)
            }
            Err(e) => ready_result(Err(e)),
        }
    }

    /// The answer to a change of group offsets (a commit, a group deleted): once the write is
    /// durable here and the in-sync followers hold groups version `version`.
    fn group_change_answer(
        &self,
        s: Arc<Shard>,
        ticket: u64,
        version: u64,
        answer: Response,
    ) -> ServiceFuture {
        let durability = self.durability.clone();
        Box::pin(async move {
            durability.wait(ticket).await?;
            Replicated(s).wait_for(|s| s.groups_check(version)).await?;
            Ok(answer)
        })
    }

    /// Retention and purges: each shard this broker leads deletes the front of its log. Off
    /// the async threads (a trim reads the entries it deletes).
    fn trim(&self, trims: Vec<ShardTrim>) -> ServiceFuture {
        let work: Vec<(ShardId, Result<Arc<Shard>, ErrorKind>, TrimTo)> = trims
            .into_iter()
            .map(|t| {
                let s = self.shard(&t.shard, Access::Read);
                (t.shard, s, t.to)
            })
            .collect();
        Box::pin(async move {
            let now = now_ms();
            let results = tokio::task::spawn_blocking(move || {
                work.into_iter()
                    .map(|(shard, s, to)| TrimResult {
                        shard,
                        result: s.and_then(|s| s.trim(to, now)),
                    })
                    .collect()
            })
            .await
            .map_err(|e| ErrorKind::Internal {
                reason: format!("trim task failed: {e}"),
            })?;
            Ok(Response::Trimmed(results))
        })
    }

    /// `group delete`: like a commit, answered once durable and on the in-sync followers.
    fn delete_group(&self, shard: &ShardId, group: &str) -> ServiceFuture {
        let d = &self.durability;
        let result = self
            .shard(shard, Access::Write)
            .and_then(|s| s.delete_group(group, &|| d.note_write()).map(|r| (s, r)));
        match result {
            Ok((_, None)) => ready_result(Ok(Response::Ok)),
            Ok((s, Some((ticket, version)))) => {
                self.group_change_answer(s, ticket, version, Response::Ok)
            }
            Err(e) => ready_result(Err(e)),
        }
    }

    /// The end offset readers may see: the high watermark (which never passes this replica's
    /// durable end where reads wait for the flush).
    fn visible_end(&self, shard: &Shard) -> Offset {
        shard.high_watermark()
    }

    /// The shard if this broker holds a copy, in any state.
    pub(crate) fn held(&self, id: &ShardId) -> Option<Arc<Shard>> {
        self.shards_read().get(id).cloned()
    }

    pub(crate) fn held_shards(&self) -> Vec<Arc<Shard>> {
        self.shards_read().values().cloned().collect()
    }

    pub(crate) fn router_link(&self) -> Option<Arc<RouterLink>> {
        self.router.clone()
    }

    pub(crate) fn durability(&self) -> &Arc<Durability> {
        &self.durability
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    pub(crate) fn read_limit(&self) -> usize {
        self.read_limit
    }

    pub(crate) fn secret(&self) -> Option<Secret> {
        self.secret.clone()
    }

    /// Serves a move's destination: only records already on disk, whatever the fsync policy, so a
    /// crash of this broker can never take back what the destination holds (the copy would then
    /// splice the source's later records onto records the source no longer has). When the copy
    /// has caught up with the durable end, a flush makes the tail durable first.
    fn export(&self, shard: &ShardId, from: Offset, max_bytes: u32) -> ServiceFuture {
        let s = match self.shard(shard, Access::Held) {
            Ok(s) => s,
            Err(e) => return ready_result(Err(e)),
        };
        let (durability, read_limit) = (self.durability.clone(), self.read_limit);
        Box::pin(async move {
            // Read the state first: if it says fenced, no append can follow, so the end is final.
            let fenced = s.ownership().state == ShardState::Fenced;
            let end = s.end_offset();
            let durable = s.durable_end();
            if end > durable && (fenced || from >= durable) {
                durability.flush_now().await?;
                s.mark_durable(end);
            }
            let max_bytes = (max_bytes as usize).min(read_limit);
            let (batches, end_offset) = s.read(from, max_bytes, read_limit, Limit::Durable)?;
            Ok(Response::Exported {
                batches,
                end_offset,
                fenced,
            })
        })
    }

    fn fence(&self, shard: &ShardId, move_id: u64) -> ServiceFuture {
        let result = self.shard(shard, Access::Held).and_then(|s| {
            if s.ownership().state == ShardState::Importing {
                return Err(ErrorKind::BadRequest {
                    reason: format!("{shard} is still being imported here; nothing to fence"),
                });
            }
            // Taking the shard lock orders the fence after every append already accepted.
            s.update_ownership(&self.store.owners, |o| o.state = ShardState::Fenced)?;
            Ok(s.end_offset())
        });
        let end_offset = match result {
            Ok(e) => e,
            Err(e) => return ready_result(Err(e)),
        };
        info!(%shard, move_id, end_offset, "shard fenced: writes stopped for the hand-over");
        let durability = self.durability.clone();
        let s = self.shard(shard, Access::Held);
        // The final offset must survive a crash whatever the fsync policy: flush before answering.
        Box::pin(async move {
            durability.flush_now().await?;
            if let Ok(s) = s {
                s.mark_durable(end_offset);
            }
            Ok(Response::Fenced { end_offset })
        })
    }

    fn unfence(&self, shard: &ShardId, move_id: u64) -> Result<Response, ErrorKind> {
        let s = self.shard(shard, Access::Held)?;
        let own = s.update_ownership(&self.store.owners, |o| {
            if o.state == ShardState::Fenced {
                o.state = ShardState::Active;
            }
        })?;
        if own.state != ShardState::Active {
            return Err(ErrorKind::BadRequest {
                reason: format!("{shard} is {:?} here, not fenced", own.state),
            });
        }
        info!(%shard, move_id, "shard unfenced: accepting writes again");
        Ok(Response::Ok)
    }

    fn forward(&self, request: Request) -> ServiceFuture {
        let Some(router) = self.router.clone() else {
            return ready_result(Err(ErrorKind::Unavailable {
                what: "router".into(),
                reason: format!(
                    "broker {} runs standalone (no --router); send {} requests to a router",
                    self.id,
                    request.name()
                ),
            }));
        };
        Box::pin(async move { router.request(request, FORWARD_TIMEOUT).await })
    }

    /// Flushes the database (used at shutdown).
    pub(crate) async fn flush(&self) -> Result<(), ErrorKind> {
        self.durability.flush_now().await
    }
}

impl Service for Broker {
    fn name(&self) -> String {
        format!("broker-{}", self.id)
    }

    fn call(self: &Arc<Self>, request: Request) -> ServiceFuture {
        // For /metrics: what a produce appends and which shard a fetch reads.
        let name = request.name();
        let start = std::time::Instant::now();
        let produced = match &request {
            Request::Produce(p) => Some((p.shard.clone(), p.batch.count, p.batch.data.len())),
            _ => None,
        };
        let fetched = match &request {
            Request::Fetch(f) => Some(f.shard.clone()),
            _ => None,
        };
        let answer = self.dispatch(request);
        let me = self.clone();
        Box::pin(async move {
            let r = answer.await;
            let m = &me.metrics;
            m.request(name, start.elapsed());
            match (&r, produced, fetched) {
                (
                    Ok(Response::Produced {
                        duplicate: false, ..
                    }),
                    Some((shard, n, b)),
                    _,
                ) => m.produced(&shard, u64::from(n), b as u64),
                (Ok(Response::Fetched { batches, .. }), _, Some(shard)) => {
                    let (n, b) = batches.iter().fold((0u64, 0u64), |(n, b), s| {
                        (n + u64::from(s.batch.count), b + s.batch.data.len() as u64)
                    });
                    m.fetched(&shard, n, b)
                }
                _ => {}
            }
            r
        })
    }
}

impl Broker {
    /// Answers `request` (what [`Service::call`] times and counts).
    fn dispatch(self: &Arc<Self>, request: Request) -> ServiceFuture {
        match request {
            Request::Produce(p) => self.produce(p),
            Request::Fetch(f) => self.fetch(f),
            Request::CommitOffset {
                shard,
                group,
                offset,
                ..
            } => self.commit(&shard, &group, offset),
            Request::FetchOffset { shard, group, .. } => ready_result(
                self.shard(&shard, Access::Read)
                    .map(|s| Response::GroupOffset {
                        offset: s.group_offset(&group),
                    }),
            ),
            Request::ListOffsets { shard, .. } => {
                ready_result(self.shard(&shard, Access::Read).map(|s| {
                    let (start, _) = s.offsets();
                    let end = self.visible_end(&s);
                    Response::Offsets { start, end }
                }))
            }
            r @ (Request::Metadata { .. }
            | Request::CreateTopic { .. }
            | Request::DeleteTopic { .. }
            | Request::AlterTopic { .. }
            | Request::PurgeTopic { .. }
            | Request::DeleteGroup { .. }
            | Request::JoinGroup { .. }
            | Request::GroupHeartbeat { .. }
            | Request::LeaveGroup { .. }
            | Request::ListGroups
            | Request::DescribeGroup { .. }
            | Request::ListTopics
            | Request::DescribeTopic { .. }
            | Request::ListBrokers
            | Request::Status
            | Request::RemoveBroker { .. }
            | Request::ReplaceBroker { .. }) => self.forward(r),
            Request::AssignShards { epoch, shards } => {
                self.observe_epoch(epoch);
                let result = shards.iter().try_for_each(|a| self.assign(a));
                ready_result(result.map(|()| Response::Ok))
            }
            Request::ReplicaFetch(req) => self.replica_fetch(req),
            Request::TrimShards { trims } => self.trim(trims),
            Request::DeleteGroupOffset { shard, group } => self.delete_group(&shard, &group),
            Request::ShardChecksum { shard, upto } => {
                ready_result(crate::replication::checksum(self, &shard, upto))
            }
            Request::DropShard { shard, epoch } => {
                ready_result(self.drop_shard(&shard, epoch).map(|()| Response::Ok))
            }
            Request::ExportShard {
                shard,
                from_offset,
                max_bytes,
            } => self.export(&shard, from_offset, max_bytes),
            Request::ExportMeta { shard } => ready_result(
                self.shard(&shard, Access::Held)
                    .map(|s| Response::Meta(s.meta())),
            ),
            Request::FenceShard { shard, move_id } => self.fence(&shard, move_id),
            Request::UnfenceShard { shard, move_id } => ready_result(self.unfence(&shard, move_id)),
            Request::Handshake { .. } | Request::Authenticate { .. } => {
                ready_result(Err(ErrorKind::BadRequest {
                    reason: "handshake and authentication are only valid when a connection opens"
                        .into(),
                }))
            }
            Request::ImportShard {
                move_id,
                shard,
                source,
                epoch,
            } => ready_result(self.import_shard(move_id, shard, source, epoch)),
            Request::MoveStatus { move_id } => ready_result(self.move_status(move_id)),
            r @ (Request::RegisterBroker { .. }
            | Request::Heartbeat { .. }
            | Request::LeaveBroker { .. }
            | Request::AlterIsr { .. }
            | Request::ElectLeader { .. }) => ready_result(Err(ErrorKind::Unsupported {
                request: r.name().into(),
            })),
        }
    }
}
