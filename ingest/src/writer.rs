//! The single writer: takes requests from a queue, applies a whole group of them in one redb
//! transaction (group commit: one fsync for many requests), stamps the commit with the next epoch,
//! hands the group's changes to the dataflow and only then answers each request.
//!
//! Robustness (issue 10): the queue is bounded in bytes ([`IngestOptions::queue_bytes`]; full →
//! `503 OVERLOADED`), ingestion refuses while the views trail by more than
//! [`IngestOptions::max_lag_epochs`] (`503 VIEWS_LAGGING`) or while the dataflow is down
//! (`503 UNAVAILABLE`), and each request is applied under `catch_unwind`: a bug that panics fails
//! that request alone (`500 INTERNAL`, nothing of it applied) and the writer goes on.

use std::collections::{BTreeSet, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use redb::{ReadableTable, Table};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use vitalflow_schemas::domain::{DomainChangesRequest, DomainChangesResponse};
use vitalflow_schemas::validate::{RequestContext, validate_sample};
use vitalflow_schemas::wire::{BatchUpsertRequest, BatchUpsertResponse, RejectedItem, valid_id};
use vitalflow_schemas::{Change, Epoch, EpochBatch, UserProfile, Zone};

use crate::domain::apply_domain;
use crate::error::IngestError;
use crate::progress::IngestProgress;
use crate::store::{
    EPOCH_KEY, LAST_ERASURE_KEY, META, PRODUCTS, PROFILES, PayloadHash, REQUEST_STAMPS, REQUEST_TIMES, REQUESTS,
    RequestRecord, SAMPLES, SESSIONS, SOURCE_POSITIONS, Store, TOMBSTONE_STAMPS, TOMBSTONE_TIMES, TOMBSTONES,
    USER_EPOCHS, decode_sample, encode_sample,
};

/// Called after each commit, in epoch order, with everything the commit changed. Returns whether
/// the dataflow took the batch; when it did not (a worker died), the group's requests are answered
/// `503 UNAVAILABLE`, not acknowledged (the batch is durable and becomes visible after a restart).
pub type OnCommit = Box<dyn FnMut(EpochBatch) -> bool + Send>;

/// Test-only (`VITALFLOW_FAULT_INJECTION=1`): a batch with this `requestId` panics inside the
/// writer, to show that the panic fails that request alone.
pub const FAULT_PANIC_REQUEST_ID: &str = "vitalflow-fault-panic";

/// Most requests applied in one transaction.
const MAX_GROUP: usize = 256;
/// Requests waiting for the writer (the byte budget below binds first in practice).
const QUEUE: usize = 4096;

/// Limits of the ingestion path; see the README's table of limits.
#[derive(Clone)]
pub struct IngestOptions {
    /// Bytes of request bodies queued for the writer before HTTP submitters get `503 OVERLOADED`
    /// (Kafka and the outbox wait instead). Default 64 MiB.
    pub queue_bytes: usize,
    /// HTTP ingestion answers `503 VIEWS_LAGGING` while the slowest view trails the newest
    /// committed epoch by more than this many epochs. Default 1,000.
    pub max_lag_epochs: u64,
    /// HTTP ingestion also answers `503 VIEWS_LAGGING` while the oldest epoch no view has made
    /// visible yet was committed longer ago than this (views stalled by expensive changes, not by
    /// many epochs). Default 120 s.
    pub max_lag: std::time::Duration,
    /// The epoch every view reflects (the slowest view's `asOfEpoch`).
    pub visible_epoch: Arc<dyn Fn() -> Epoch + Send + Sync>,
    /// Whether the components a commit needs (dataflow workers, snapshot applier) are alive;
    /// when not, nothing is committed and every request answers `503 UNAVAILABLE`.
    pub healthy: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Sustained batch-upsert requests per second per user over HTTP (`429 RATE_LIMITED` above it;
    /// Kafka and the outbox are not limited). Default 50; 0 turns the limit off.
    pub user_requests_per_sec: u32,
    /// Requests a user may send at once above the sustained rate. Default 100.
    pub user_burst: u32,
    /// Request records (idempotency, I1) and tombstones (I3) older than this are pruned. A replay
    /// older than the retention is a new request; a sample re-sent after its tombstone is pruned
    /// is accepted again. Default 30 days.
    pub retention: std::time::Duration,
    /// Called on the writer thread before a group holding an erasure is applied, with the epoch
    /// that group will commit as: whatever outlives the store and may name the user (the
    /// persisted view snapshots) is invalidated here. An error fails the group's erasures alone
    /// (503 `STORAGE_UNAVAILABLE`, nothing of them applied); the rest of the group goes on.
    pub before_erase: Arc<dyn Fn(Epoch) -> Result<(), String> + Send + Sync>,
}

/// Per-user request rate limiter (GCRA, the `governor` crate), keyed by `userId`.
type UserLimiter = governor::DefaultKeyedRateLimiter<String>;

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            queue_bytes: 64 * 1024 * 1024,
            max_lag_epochs: 1_000,
            max_lag: std::time::Duration::from_secs(120),
            visible_epoch: Arc::new(|| Epoch::MAX),
            healthy: Arc::new(|| true),
            user_requests_per_sec: 50,
            user_burst: 100,
            retention: std::time::Duration::from_secs(30 * 86_400),
            before_erase: Arc::new(|_| Ok(())),
        }
    }
}

enum Command {
    Domain {
        req: DomainChangesRequest,
        hash: PayloadHash,
        reply: oneshot::Sender<Result<DomainChangesResponse, IngestError>>,
    },
    Batch {
        req: BatchUpsertRequest,
        hash: PayloadHash,
        reply: oneshot::Sender<Result<BatchUpsertResponse, IngestError>>,
    },
    Profile {
        profile: UserProfile,
        reply: oneshot::Sender<Result<Epoch, IngestError>>,
    },
    Source {
        items: Vec<SourceBody>,
        positions: Vec<(String, i64)>,
        reply: oneshot::Sender<Result<Vec<SourceOutcome>, IngestError>>,
    },
    Erase {
        user_id: String,
        reply: oneshot::Sender<Result<ErasureResponse, IngestError>>,
    },
}

/// A command and its share of the queue's byte budget (released when the command is answered).
struct Queued {
    command: Command,
    _permit: Option<OwnedSemaphorePermit>,
}

/// One message of a source (Kafka, the outbox), already parsed.
#[derive(Debug)]
pub enum SourceBody {
    Batch(BatchUpsertRequest, PayloadHash),
    Domain(DomainChangesRequest, PayloadHash),
    /// Nothing to apply (malformed and dead-lettered, or not ours); only its position counts.
    Skip,
}

/// What became of one [`SourceBody`].
#[derive(Debug)]
pub enum SourceOutcome {
    Batch(Result<BatchUpsertResponse, IngestError>),
    Domain(Result<DomainChangesResponse, IngestError>),
    Skipped,
}

/// What `DELETE /v1/users/{userId}` removed, per kind of record (issue 11 §3).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ErasedCounts {
    pub samples: u64,
    pub sessions: u64,
    pub profile: u64,
    pub requests: u64,
    pub tombstones: u64,
}

/// The answer to an erasure: the epoch of the durable commit that removed the user's records.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErasureResponse {
    pub user_id: String,
    pub epoch: Epoch,
    pub deleted: ErasedCounts,
}

/// A cloneable handle for submitting requests to the writer.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Queued>,
    progress: Arc<IngestProgress>,
    budget: Arc<Semaphore>,
    options: IngestOptions,
    alive: Arc<AtomicBool>,
    limiter: Option<Arc<UserLimiter>>,
}

/// Clears the writer's liveness flag when the writer thread ends, however it ends.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// How the work [`Ingest::start`] runs before the first request (recovery) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Startup {
    /// Done: the writer takes requests.
    Ready,
    /// Given up because the process is stopping (SIGTERM during recovery): the writer ends
    /// without taking a request and without writing anything.
    Stopped,
}

impl Ingest {
    /// Starts the writer thread over `store`. The thread ends once every `Ingest` handle is dropped
    /// and the queue is drained; join the returned handle to wait for the last commit.
    ///
    /// `startup` runs on the writer thread before the first request is taken (recovery replays the
    /// durable state there, so that no commit can overtake it); when it fails or answers
    /// [`Startup::Stopped`], the writer ends and [`Ingest::is_alive`] turns false.
    pub fn start(
        store: Arc<Store>,
        progress: Arc<IngestProgress>,
        startup: Box<dyn FnOnce() -> Result<Startup, String> + Send>,
        mut on_commit: OnCommit,
        options: IngestOptions,
    ) -> (Ingest, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE);
        let writer_progress = progress.clone();
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(alive.clone());
        let healthy = options.healthy.clone();
        let before_erase = options.before_erase.clone();
        let retention_ms = i64::try_from(options.retention.as_millis()).unwrap_or(i64::MAX);
        let handle = std::thread::Builder::new()
            .name("vitalflow-writer".into())
            .spawn(move || {
                let _guard = guard;
                match startup() {
                    Ok(Startup::Ready) => {}
                    Ok(Startup::Stopped) => {
                        tracing::info!("the process is stopping: the writer ends before taking a request");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "writer startup (recovery) failed; the writer stops");
                        return;
                    }
                }
                let mut next_prune = std::time::Instant::now();
                loop {
                    if std::time::Instant::now() >= next_prune {
                        next_prune = std::time::Instant::now() + std::time::Duration::from_secs(60);
                        match prune(&store, now_ms().saturating_sub(retention_ms)) {
                            Ok(n) if n >= PRUNE_BATCH => next_prune = std::time::Instant::now(),
                            Ok(n) => {
                                if n > 0 {
                                    tracing::info!(entries = n, "pruned request records and tombstones past retention");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "retention pruning failed; retried later"),
                        }
                    }
                    let Some(first) = rx.blocking_recv() else { break };
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(c) => group.push(c),
                            Err(_) => break,
                        }
                    }
                    if !healthy() {
                        answer_all(group, || IngestError::Unavailable);
                        continue;
                    }
                    if group.iter().any(|q| matches!(q.command, Command::Erase { .. }))
                        && let Err(e) = before_erase(writer_progress.latest_epoch() + 1)
                    {
                        tracing::error!(error = %e, "cannot invalidate what may name an erased user; the erasure is refused");
                        let (erasures, rest): (Vec<Queued>, Vec<Queued>) =
                            group.into_iter().partition(|q| matches!(q.command, Command::Erase { .. }));
                        answer_all(erasures, || IngestError::Storage(e.clone()));
                        group = rest;
                        if group.is_empty() {
                            continue;
                        }
                    }
                    commit_group(&store, &writer_progress, &mut on_commit, group);
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
        let budget = Arc::new(Semaphore::new(options.queue_bytes.clamp(1, Semaphore::MAX_PERMITS)));
        let limiter = std::num::NonZeroU32::new(options.user_requests_per_sec).map(|rate| {
            let burst = std::num::NonZeroU32::new(options.user_burst).unwrap_or(rate).max(rate);
            Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(rate).allow_burst(burst)))
        });
        (Ingest { tx, progress, budget, options, alive, limiter }, handle)
    }

    /// Shared ingest progress (latest epoch, per-user epochs).
    pub fn progress(&self) -> &Arc<IngestProgress> {
        &self.progress
    }

    /// Whether the writer thread is running (false after a failed recovery or a fatal fault).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Requests and source batches queued for the writer now.
    pub fn queued_requests(&self) -> usize {
        self.tx.max_capacity().saturating_sub(self.tx.capacity())
    }

    /// Bytes of request bodies queued for the writer now.
    pub fn queued_bytes(&self) -> usize {
        self.options.queue_bytes.clamp(1, Semaphore::MAX_PERMITS).saturating_sub(self.budget.available_permits())
    }

    /// Applies a batch upsert durably and returns its response (or the stored one, on replay).
    /// `bytes` is the body's size, charged to the queue's byte budget.
    ///
    /// Errors: `OVERLOADED`/`VIEWS_LAGGING`/`UNAVAILABLE` (503, retry later), `STORAGE_UNAVAILABLE`
    /// (503), `IDEMPOTENCY_KEY_REUSED` (409), `INTERNAL` (500).
    pub async fn batch_upsert(
        &self,
        req: BatchUpsertRequest,
        hash: PayloadHash,
        bytes: usize,
    ) -> Result<BatchUpsertResponse, IngestError> {
        self.rate_limit(&req.user_id)?;
        let permit = self.admit(bytes)?;
        self.submit(permit, |reply| Command::Batch { req, hash, reply }).await
    }

    /// Applies a domain-changes request durably and returns its response (or the stored one).
    pub async fn domain_changes(
        &self,
        req: DomainChangesRequest,
        hash: PayloadHash,
        bytes: usize,
    ) -> Result<DomainChangesResponse, IngestError> {
        let permit = self.admit(bytes)?;
        self.submit(permit, |reply| Command::Domain { req, hash, reply }).await
    }

    /// Upserts a profile durably; returns the epoch of its commit.
    pub async fn upsert_profile(&self, profile: UserProfile) -> Result<Epoch, IngestError> {
        let permit = self.admit(256)?;
        self.submit(permit, |reply| Command::Profile { profile, reply }).await
    }

    /// Erases `user_id` in one durable commit: samples, tombstones, sessions, profile and request
    /// records; every view row of the user is retracted at the returned epoch (issue 11 §3).
    pub async fn erase_user(&self, user_id: String) -> Result<ErasureResponse, IngestError> {
        if !self.is_alive() {
            return Err(IngestError::Unavailable);
        }
        // Erasure is never refused for load: it only removes data.
        self.submit(None, |reply| Command::Erase { user_id, reply }).await
    }

    /// Applies a source's messages and records its new positions (`key` → next position) in the
    /// same transaction: after a crash, a source resumes from the stored positions and nothing is
    /// applied twice or skipped (exactly-once into the views). Waits for room in the queue.
    ///
    /// When a message is refused as a whole (an `Err` outcome), the positions are NOT stored: the
    /// source dead-letters the refused messages first, then commits the positions alone.
    pub async fn source_commit(
        &self,
        items: Vec<SourceBody>,
        positions: Vec<(String, i64)>,
    ) -> Result<Vec<SourceOutcome>, IngestError> {
        self.submit(None, |reply| Command::Source { items, positions, reply }).await
    }

    /// The per-user rate limit (HTTP only).
    fn rate_limit(&self, user_id: &str) -> Result<(), IngestError> {
        let Some(limiter) = &self.limiter else { return Ok(()) };
        if limiter.len() > 100_000 {
            limiter.retain_recent(); // bounded: forget users whose bucket is full again
        }
        match limiter.check_key(&user_id.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait =
                    not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
                Err(IngestError::RateLimited { retry_after_secs: wait.as_secs().saturating_add(1) })
            }
        }
    }

    /// Admission control for HTTP requests: the writer is alive, the views keep up and the queue
    /// has room for `bytes`.
    fn admit(&self, bytes: usize) -> Result<Option<OwnedSemaphorePermit>, IngestError> {
        if !self.is_alive() {
            return Err(IngestError::Unavailable);
        }
        let latest = self.progress.latest_epoch();
        let visible = (self.options.visible_epoch)();
        if latest.saturating_sub(visible) > self.options.max_lag_epochs {
            return Err(IngestError::ViewsLagging { behind: latest.saturating_sub(visible) });
        }
        if latest > visible
            && let Some(committed) = self.progress.committed_at(visible + 1)
            && committed.elapsed().is_ok_and(|waited| waited > self.options.max_lag)
        {
            return Err(IngestError::ViewsLagging { behind: latest - visible });
        }
        let permits = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
        match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(IngestError::Overloaded),
        }
    }

    /// Queues a command for the writer and waits for its answer.
    async fn submit<T>(
        &self,
        permit: Option<OwnedSemaphorePermit>,
        command: impl FnOnce(oneshot::Sender<Result<T, IngestError>>) -> Command,
    ) -> Result<T, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Queued { command: command(reply), _permit: permit })
            .await
            .map_err(|_| IngestError::Unavailable)?;
        rx.await.map_err(|_| IngestError::Unavailable)?
    }
}

enum Outcome {
    Domain(Result<DomainChangesResponse, IngestError>),
    Batch(Result<BatchUpsertResponse, IngestError>),
    Profile(Result<Epoch, IngestError>),
    Source(Vec<SourceOutcome>),
    Erase(Result<ErasureResponse, IngestError>),
}

pub(crate) struct Tables<'t> {
    pub samples: Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>,
    pub tombstones: Table<'t, (&'static str, &'static str, &'static str), u64>,
    pub tombstone_times: Table<'t, (i64, &'static str, &'static str, &'static str), ()>,
    pub request_times: Table<'t, (i64, &'static str, &'static str), ()>,
    pub tombstone_stamps: Table<'t, (&'static str, &'static str, &'static str), i64>,
    pub request_stamps: Table<'t, (&'static str, &'static str), i64>,
    pub requests: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub profiles: Table<'t, &'static str, &'static [u8]>,
    pub sessions: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub products: Table<'t, &'static str, &'static [u8]>,
}

impl Tables<'_> {
    /// Stores a request record (I1) and indexes it by time for retention.
    pub(crate) fn record_request(&mut self, scope: &str, request_id: &str, bytes: &[u8]) -> Result<(), redb::Error> {
        self.requests.insert((scope, request_id), bytes)?;
        let now = now_ms();
        if let Some(old) = self.request_stamps.insert((scope, request_id), now)? {
            self.request_times.remove((old.value(), scope, request_id))?;
        }
        self.request_times.insert((now, scope, request_id), ())?;
        Ok(())
    }

    /// Stores a tombstone (DOMAIN.md I3) at `epoch` and indexes it by time for retention.
    pub(crate) fn record_tombstone(
        &mut self,
        user: &str,
        source: &str,
        record: &str,
        epoch: Epoch,
    ) -> Result<(), redb::Error> {
        self.tombstones.insert((user, source, record), epoch)?;
        let now = now_ms();
        if let Some(old) = self.tombstone_stamps.insert((user, source, record), now)? {
            self.tombstone_times.remove((old.value(), user, source, record))?;
        }
        self.tombstone_times.insert((now, user, source, record), ())?;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Most retention entries pruned in one transaction (pruning is spread over the writer's idle
/// moments, so it never holds up a commit for long).
const PRUNE_BATCH: usize = 5_000;

/// Removes request records and tombstones stored before `cutoff_ms` (retention). Returns how many
/// entries it removed; at most [`PRUNE_BATCH`] per call.
pub(crate) fn prune(store: &Store, cutoff_ms: i64) -> Result<usize, redb::Error> {
    let txn = store.db.begin_write()?;
    let mut removed = 0;
    {
        let mut times = txn.open_table(REQUEST_TIMES)?;
        let mut requests = txn.open_table(REQUESTS)?;
        let old: Vec<(i64, String, String)> = times
            .range((i64::MIN, "", "")..(cutoff_ms, "", ""))?
            .take(PRUNE_BATCH)
            .map(|e| {
                e.map(|(k, _)| {
                    let (t, scope, id) = k.value();
                    (t, scope.to_owned(), id.to_owned())
                })
            })
            .collect::<Result<_, _>>()?;
        let mut stamps = txn.open_table(REQUEST_STAMPS)?;
        for (t, scope, id) in &old {
            times.remove((*t, scope.as_str(), id.as_str()))?;
            // Only the current entry of a request removes its record: an older entry of a
            // request recorded again since (after an erasure) must not cut the new one short.
            // Records from before stamps existed have none and go with their entry.
            let current = stamps.get((scope.as_str(), id.as_str()))?.map(|v| v.value());
            if current.is_none_or(|c| c == *t) {
                requests.remove((scope.as_str(), id.as_str()))?;
                stamps.remove((scope.as_str(), id.as_str()))?;
            }
        }
        removed += old.len();
        let mut times = txn.open_table(TOMBSTONE_TIMES)?;
        let mut tombstones = txn.open_table(TOMBSTONES)?;
        let old: Vec<(i64, String, String, String)> = times
            .range((i64::MIN, "", "", "")..(cutoff_ms, "", "", ""))?
            .take(PRUNE_BATCH)
            .map(|e| {
                e.map(|(k, _)| {
                    let (t, u, s, r) = k.value();
                    (t, u.to_owned(), s.to_owned(), r.to_owned())
                })
            })
            .collect::<Result<_, _>>()?;
        let mut stamps = txn.open_table(TOMBSTONE_STAMPS)?;
        for (t, u, s, r) in &old {
            times.remove((*t, u.as_str(), s.as_str(), r.as_str()))?;
            let current = stamps.get((u.as_str(), s.as_str(), r.as_str()))?.map(|v| v.value());
            if current.is_none_or(|c| c == *t) {
                tombstones.remove((u.as_str(), s.as_str(), r.as_str()))?;
                stamps.remove((u.as_str(), s.as_str(), r.as_str()))?;
            }
        }
        removed += old.len();
    }
    if removed > 0 {
        crate::store::fault_point().map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        txn.commit()?;
    } else {
        txn.abort()?;
    }
    Ok(removed)
}

/// Where the writer is inside a group: `(command, item)`; `item` counts a source's messages.
type Cursor = (usize, usize);

/// A group's transaction result: the outcomes, whether anything was written, and the changes.
type Applied = (Vec<Outcome>, bool, Vec<Change>, BTreeSet<String>);

/// Answers every command of `group` with the same error.
fn answer_all(group: Vec<Queued>, err: impl Fn() -> IngestError) {
    let commands: Vec<Command> = group.into_iter().map(|q| q.command).collect();
    for command in commands {
        match command {
            Command::Batch { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Command::Profile { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Command::Domain { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Command::Source { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
            Command::Erase { reply, .. } => {
                let _ = reply.send(Err(err()));
            }
        }
    }
}

/// Applies a group in one transaction. A command (or a source's message) whose application panics
/// is poisoned: the transaction is dropped and the group applied again without it, so that a bug
/// fails that request alone and nothing of it is applied.
fn commit_group(store: &Store, progress: &IngestProgress, on_commit: &mut OnCommit, group: Vec<Queued>) {
    let epoch = progress.latest_epoch() + 1;
    let mut poisoned: HashSet<Cursor> = HashSet::new();
    let result = loop {
        let mut cursor: Cursor = (usize::MAX, 0);
        let attempt = catch_unwind(AssertUnwindSafe(|| apply_group(store, &group, epoch, &poisoned, &mut cursor)));
        match attempt {
            Ok(r) => break r,
            Err(panic) => {
                let what = panic_message(&panic);
                tracing::error!(
                    command = cursor.0,
                    item = cursor.1,
                    panic = %what,
                    "a request panicked the writer; it fails alone (500 INTERNAL) and the group is applied without it"
                );
                metrics::counter!("vitalflow_panics_caught_total", "component" => "writer").increment(1);
                if cursor.0 == usize::MAX || !poisoned.insert(cursor) {
                    // Not attributable to a request: fail the whole group rather than loop.
                    break Err(IngestError::Internal(format!("writer panic: {what}")));
                }
            }
        }
    };
    match result {
        Ok((outcomes, wrote, changes, users)) => {
            let mut visible = true;
            if wrote {
                progress.record_commit(epoch, users);
                visible = on_commit(EpochBatch { epoch, changes });
                if !visible {
                    tracing::error!(epoch, "the dataflow did not take a committed epoch; answering 503");
                }
            }
            // The queue's byte budget is released before the answers go out, so that a client's
            // next request never finds its own previous body still counted.
            let commands: Vec<Command> = group.into_iter().map(|q| q.command).collect();
            for (index, (command, outcome)) in commands.into_iter().zip(outcomes).enumerate() {
                // A poisoned request fails alone; a batch the dataflow did not take is not acknowledged.
                let poisoned_here = poisoned.contains(&(index, 0));
                fn settle<T>(r: Result<T, IngestError>, poisoned: bool, visible: bool) -> Result<T, IngestError> {
                    if poisoned {
                        Err(IngestError::Internal("the request failed inside the writer".into()))
                    } else if visible {
                        r
                    } else {
                        Err(IngestError::Unavailable)
                    }
                }
                match (command, outcome) {
                    (Command::Batch { reply, .. }, Outcome::Batch(r)) => {
                        let _ = reply.send(settle(r, poisoned_here, visible));
                    }
                    (Command::Profile { reply, .. }, Outcome::Profile(r)) => {
                        let _ = reply.send(settle(r, poisoned_here, visible));
                    }
                    (Command::Domain { reply, .. }, Outcome::Domain(r)) => {
                        let _ = reply.send(settle(r, poisoned_here, visible));
                    }
                    (Command::Erase { reply, .. }, Outcome::Erase(r)) => {
                        let _ = reply.send(settle(r, poisoned_here, visible));
                    }
                    (Command::Source { reply, .. }, Outcome::Source(r)) => {
                        let _ = reply.send(if visible { Ok(r) } else { Err(IngestError::Unavailable) });
                    }
                    _ => {}
                }
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "commit failed; the group's requests were not applied");
            let storage = matches!(err, IngestError::Storage(_));
            let message = match err {
                IngestError::Storage(m) | IngestError::Internal(m) => m,
                other => other.to_string(),
            };
            answer_all(group, || {
                if storage { IngestError::Storage(message.clone()) } else { IngestError::Internal(message.clone()) }
            });
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// One attempt at a group's transaction; `cursor` tells which command is being applied, so that
/// a panic can be attributed.
fn apply_group(
    store: &Store,
    group: &[Queued],
    epoch: Epoch,
    poisoned: &HashSet<Cursor>,
    cursor: &mut Cursor,
) -> Result<Applied, IngestError> {
    let mut changes = Vec::new();
    let mut users = BTreeSet::new();
    let mut erased: BTreeSet<String> = BTreeSet::new();
    let txn = store.db.begin_write().map_err(storage)?;
    let mut wrote = false;
    let mut outcomes = Vec::with_capacity(group.len());
    {
        let mut t = Tables {
            samples: txn.open_table(SAMPLES).map_err(storage)?,
            tombstones: txn.open_table(TOMBSTONES).map_err(storage)?,
            tombstone_times: txn.open_table(TOMBSTONE_TIMES).map_err(storage)?,
            request_times: txn.open_table(REQUEST_TIMES).map_err(storage)?,
            tombstone_stamps: txn.open_table(TOMBSTONE_STAMPS).map_err(storage)?,
            request_stamps: txn.open_table(REQUEST_STAMPS).map_err(storage)?,
            requests: txn.open_table(REQUESTS).map_err(storage)?,
            profiles: txn.open_table(PROFILES).map_err(storage)?,
            sessions: txn.open_table(SESSIONS).map_err(storage)?,
            products: txn.open_table(PRODUCTS).map_err(storage)?,
        };
        for (ci, q) in group.iter().enumerate() {
            *cursor = (ci, 0);
            let skip = poisoned.contains(&(ci, 0));
            match &q.command {
                Command::Batch { req, hash, .. } => {
                    if skip {
                        outcomes.push(Outcome::Batch(Err(IngestError::Unavailable)));
                        continue;
                    }
                    let (outcome, w) = apply_batch(&mut t, req, hash, epoch, &mut changes, &mut users)?;
                    wrote |= w;
                    outcomes.push(Outcome::Batch(outcome));
                }
                Command::Domain { req, hash, .. } => {
                    if skip {
                        outcomes.push(Outcome::Domain(Err(IngestError::Unavailable)));
                        continue;
                    }
                    let (outcome, w) = apply_domain(&mut t, req, hash, epoch, &mut changes, &mut users)?;
                    wrote |= w;
                    outcomes.push(Outcome::Domain(outcome));
                }
                Command::Profile { profile, .. } => {
                    if skip {
                        outcomes.push(Outcome::Profile(Err(IngestError::Unavailable)));
                        continue;
                    }
                    if apply_profile(&mut t, profile, &mut changes)? {
                        users.insert(profile.user_id.clone());
                    }
                    wrote = true;
                    outcomes.push(Outcome::Profile(Ok(epoch)));
                }
                Command::Erase { user_id, .. } => {
                    if skip {
                        outcomes.push(Outcome::Erase(Err(IngestError::Unavailable)));
                        continue;
                    }
                    let deleted = apply_erase(&mut t, user_id, &mut changes)?;
                    users.insert(user_id.clone());
                    erased.insert(user_id.clone());
                    wrote = true;
                    outcomes.push(Outcome::Erase(Ok(ErasureResponse { user_id: user_id.clone(), epoch, deleted })));
                }
                Command::Source { items, positions, .. } => {
                    let mut results = Vec::with_capacity(items.len());
                    for (ii, item) in items.iter().enumerate() {
                        *cursor = (ci, ii);
                        if poisoned.contains(&(ci, ii)) {
                            // A message that panicked the writer: refused, so the source
                            // dead-letters it instead of wedging its partition.
                            let err = || IngestError::Internal("the record failed inside the writer".into());
                            results.push(match item {
                                SourceBody::Domain(..) => SourceOutcome::Domain(Err(err())),
                                _ => SourceOutcome::Batch(Err(err())),
                            });
                            continue;
                        }
                        results.push(match item {
                            SourceBody::Batch(req, hash) => {
                                let (o, w) = apply_batch(&mut t, req, hash, epoch, &mut changes, &mut users)?;
                                wrote |= w;
                                SourceOutcome::Batch(o)
                            }
                            SourceBody::Domain(req, hash) => {
                                let (o, w) = apply_domain(&mut t, req, hash, epoch, &mut changes, &mut users)?;
                                wrote |= w;
                                SourceOutcome::Domain(o)
                            }
                            SourceBody::Skip => SourceOutcome::Skipped,
                        });
                    }
                    *cursor = (usize::MAX, 0);
                    // A message refused as a whole (a reused requestId, a panic) must be
                    // dead-lettered before its position is stored: the positions wait for the
                    // source's next commit (re-reading the good messages replays them, I1).
                    let refused = results
                        .iter()
                        .any(|r| matches!(r, SourceOutcome::Batch(Err(_)) | SourceOutcome::Domain(Err(_))));
                    if !positions.is_empty() && !refused {
                        let mut table = txn.open_table(SOURCE_POSITIONS).map_err(storage)?;
                        for (key, next) in positions {
                            table.insert(key.as_str(), *next).map_err(storage)?;
                        }
                        wrote = true;
                    }
                    outcomes.push(Outcome::Source(results));
                }
            }
        }
        *cursor = (usize::MAX, 0);
        if wrote {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(EPOCH_KEY, epoch).map_err(storage)?;
            if !erased.is_empty() {
                meta.insert(LAST_ERASURE_KEY, epoch).map_err(storage)?;
            }
            let mut user_epochs = txn.open_table(USER_EPOCHS).map_err(storage)?;
            for u in &users {
                // An erased user with nothing stored since leaves no row naming them (issue 11
                // §3); the in-memory progress still learns the erasure epoch (`users`).
                if erased.contains(u) && !user_has_records(&t, u).map_err(storage)? {
                    user_epochs.remove(u.as_str()).map_err(storage)?;
                } else {
                    user_epochs.insert(u.as_str(), epoch).map_err(storage)?;
                }
            }
        }
    }
    if wrote {
        crate::store::fault_point()?;
        // The group's durable commit (its fsync): what every acknowledgement in it waits for.
        let committing = std::time::Instant::now();
        txn.commit().map_err(storage)?;
        metrics::histogram!("vitalflow_store_commit_seconds").record(committing.elapsed().as_secs_f64());
    } else {
        txn.abort().map_err(storage)?;
    }
    Ok((outcomes, wrote, changes, users))
}

fn storage(e: impl Into<redb::Error>) -> IngestError {
    IngestError::Storage(e.into().to_string())
}

/// Whether any row of `user` is stored (after an erasure in the same group: a re-upload).
fn user_has_records(t: &Tables<'_>, user: &str) -> Result<bool, redb::Error> {
    let first_is_user = |k: Option<&str>| k == Some(user);
    let sample = t.samples.range((user, "", "")..)?.next().transpose()?;
    let tomb = t.tombstones.range((user, "", "")..)?.next().transpose()?;
    let session = t.sessions.range((user, "")..)?.next().transpose()?;
    let request = t.requests.range((user, "")..)?.next().transpose()?;
    Ok(first_is_user(sample.as_ref().map(|(k, _)| k.value().0))
        || first_is_user(tomb.as_ref().map(|(k, _)| k.value().0))
        || first_is_user(session.as_ref().map(|(k, _)| k.value().0))
        || first_is_user(request.as_ref().map(|(k, _)| k.value().0))
        || t.profiles.get(user)?.is_some())
}

/// Whether `user` has any tombstone (DOMAIN.md I3).
fn user_has_tombstones(t: &Tables<'_>, user: &str) -> Result<bool, redb::Error> {
    let first = t.tombstones.range((user, "", "")..)?.next().transpose()?;
    Ok(first.is_some_and(|(k, _)| k.value().0 == user))
}

/// Removes every record of `user_id` (samples, tombstones, sessions, profile, request records)
/// and emits the retractions of the samples, sessions and profile.
fn apply_erase(t: &mut Tables<'_>, user_id: &str, changes: &mut Vec<Change>) -> Result<ErasedCounts, redb::Error> {
    let user = user_id;
    let mut counts = ErasedCounts::default();
    let mut keys: Vec<(String, String)> = Vec::new();
    for entry in t.samples.range((user, "", "")..)? {
        let (k, v) = entry?;
        let (u, source, record) = k.value();
        if u != user {
            break;
        }
        let sample = decode_sample(v.value())
            .ok_or_else(|| redb::Error::Corrupted(format!("undecodable stored sample of an erased user ({source})")))?;
        changes.push(Change::Sample(sample.sample, -1));
        keys.push((source.to_owned(), record.to_owned()));
    }
    for (source, record) in &keys {
        t.samples.remove((user, source.as_str(), record.as_str()))?;
    }
    counts.samples = keys.len() as u64;
    keys.clear();
    for entry in t.tombstones.range((user, "", "")..)? {
        let (k, _) = entry?;
        let (u, source, record) = k.value();
        if u != user {
            break;
        }
        keys.push((source.to_owned(), record.to_owned()));
    }
    for (source, record) in &keys {
        t.tombstones.remove((user, source.as_str(), record.as_str()))?;
        if let Some(at) = t.tombstone_stamps.remove((user, source.as_str(), record.as_str()))? {
            t.tombstone_times.remove((at.value(), user, source.as_str(), record.as_str()))?;
        }
    }
    counts.tombstones = keys.len() as u64;
    let mut ids: Vec<String> = Vec::new();
    for entry in t.sessions.range((user, "")..)? {
        let (k, v) = entry?;
        let (u, id) = k.value();
        if u != user {
            break;
        }
        let session = serde_json::from_slice(v.value())
            .map_err(|e| redb::Error::Corrupted(format!("undecodable stored session: {e}")))?;
        changes.push(Change::Session(session, -1));
        ids.push(id.to_owned());
    }
    for id in &ids {
        t.sessions.remove((user, id.as_str()))?;
    }
    counts.sessions = ids.len() as u64;
    ids.clear();
    for entry in t.requests.range((user, "")..)? {
        let (k, _) = entry?;
        let (u, id) = k.value();
        if u != user {
            break;
        }
        ids.push(id.to_owned());
    }
    for id in &ids {
        t.requests.remove((user, id.as_str()))?;
        if let Some(at) = t.request_stamps.remove((user, id.as_str()))? {
            t.request_times.remove((at.value(), user, id.as_str()))?;
        }
    }
    counts.requests = ids.len() as u64;
    if let Some(old) = t.profiles.remove(user)? {
        let profile: UserProfile = serde_json::from_slice(old.value())
            .map_err(|e| redb::Error::Corrupted(format!("undecodable stored profile: {e}")))?;
        changes.push(Change::Profile(profile, -1));
        counts.profile = 1;
    }
    Ok(counts)
}

/// I1 for any request kind: `None` for a new `(scope, requestId)`; the stored response for the same
/// payload hash; `IDEMPOTENCY_KEY_REUSED` for another payload.
pub(crate) fn prior_response<R: serde::de::DeserializeOwned>(
    t: &Tables<'_>,
    scope: &str,
    request_id: &str,
    hash: &PayloadHash,
) -> Result<Option<Result<R, IngestError>>, redb::Error> {
    let Some(prior) = t.requests.get((scope, request_id))? else { return Ok(None) };
    let record: Option<RequestRecord<R>> = serde_json::from_slice(prior.value()).ok();
    Ok(Some(match record {
        Some(r) if hash.matches(r.scheme, &r.hash) => Ok(r.response),
        _ => Err(IngestError::IdempotencyKeyReused(request_id.to_owned())),
    }))
}

/// Applies one batch inside the group's transaction. Returns the outcome and whether it wrote.
fn apply_batch(
    t: &mut Tables<'_>,
    req: &BatchUpsertRequest,
    hash: &PayloadHash,
    epoch: Epoch,
    changes: &mut Vec<Change>,
    users: &mut BTreeSet<String>,
) -> Result<(Result<BatchUpsertResponse, IngestError>, bool), redb::Error> {
    let user = req.user_id.as_str();
    if req.request_id == FAULT_PANIC_REQUEST_ID && crate::store::fault_injection_enabled() {
        panic!("injected fault: a request that panics the writer");
    }
    if let Some(prior) = prior_response::<BatchUpsertResponse>(t, user, &req.request_id, hash)? {
        return Ok((prior.map(|r| BatchUpsertResponse { replayed: true, ..r }), false));
    }
    let profile = read_profile(t, user)?;
    let ctx = RequestContext {
        user_id: user,
        platform: req.platform.as_deref(),
        device_zone: req.device_time_zone.as_deref().and_then(Zone::parse),
        profile: profile.as_ref(),
        // G6 judges new samples against the moment the writer takes the request (recovery replays
        // stored rows and never comes here).
        received_at_ms: chrono::Utc::now().timestamp_millis(),
        limits: crate::limits(),
    };
    let mut resp = BatchUpsertResponse { request_id: req.request_id.clone(), epoch, ..Default::default() };
    // Most users have no tombstone: one probe per batch then spares a lookup per sample. (This
    // batch's own deletions are applied after its samples.)
    let tombstoned = user_has_tombstones(t, user)?;
    let mut look_first = true;
    for (index, ws) in req.samples.iter().enumerate() {
        let new = match validate_sample(ws, &ctx) {
            Ok(s) => s,
            Err(rej) => {
                resp.rejected.push(RejectedItem { index, code: rej.code, message: rej.message, field: None });
                continue;
            }
        };
        let key = (user, ws.source_id.as_str(), ws.source_record_id.as_str());
        if tombstoned && t.tombstones.get(key)?.is_some() {
            resp.stale += 1;
            continue;
        }
        // After a sample that was new or edited, the next is most likely new too (a sync of new
        // data): one descent of the `samples` B-tree, an insert, then a look at the row it
        // replaced; an unchanged or stale sample puts that row back, inside this transaction, so
        // no reader and no restart ever sees the swap. After an unchanged or stale sample (a
        // resend), and for the first sample of a batch, the row is looked up before it is
        // written: an insert dirties the pages it touches even when it changes nothing
        // (benches/README.md, "Parse, validate and hash under a microsecond").
        // `replaced`: the stored bytes an insert-first overwrote with different ones.
        let (old, replaced) = if look_first {
            (t.samples.get(key)?.and_then(|v| decode_sample(v.value())), None)
        } else {
            let row = encode_sample(&new);
            let prior = t.samples.insert(key, row.as_slice())?.map(|v| v.value().to_vec());
            (prior.as_deref().and_then(decode_sample), prior.filter(|p| *p != row))
        };
        let kept = match &old {
            Some(old) if *old == new => Some(&mut resp.unchanged),
            Some(old) if matches!((old.sync_version, new.sync_version), (Some(a), Some(b)) if b < a) => {
                Some(&mut resp.stale)
            }
            _ => None,
        };
        if let Some(count) = kept {
            *count += 1;
            if let Some(prior) = replaced {
                t.samples.insert(key, prior.as_slice())?;
            }
            look_first = true;
            continue;
        }
        if look_first {
            t.samples.insert(key, encode_sample(&new).as_slice())?;
        }
        look_first = false;
        if let Some(old) = old {
            changes.push(Change::Sample(old.sample, -1));
        }
        changes.push(Change::Sample(new.sample, 1));
        resp.accepted += 1;
    }
    for (index, d) in req.deletions.iter().enumerate() {
        if !valid_id(&d.source_id) || !valid_id(&d.source_record_id) {
            resp.rejected.push(RejectedItem {
                index,
                code: "INVALID_ID".into(),
                message: "sourceId and sourceRecordId must be 1 to 128 bytes".into(),
                field: Some("deletions".into()),
            });
            continue;
        }
        let key = (user, d.source_id.as_str(), d.source_record_id.as_str());
        t.record_tombstone(user, d.source_id.as_str(), d.source_record_id.as_str(), epoch)?;
        let removed = t.samples.remove(key)?.and_then(|v| decode_sample(v.value()));
        if let Some(old) = removed {
            changes.push(Change::Sample(old.sample, -1));
            resp.deleted += 1;
        }
    }
    if resp.accepted + resp.deleted > 0 {
        users.insert(user.to_owned());
    }
    let record = RequestRecord { hash: hash.hex.clone(), scheme: hash.scheme, response: resp.clone() };
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    t.record_request(user, req.request_id.as_str(), &bytes)?;
    Ok((Ok(resp), true))
}

/// The stored profile of `user`. An undecodable one is an error, never "no profile": the
/// privacy gate (I4) must not open because a record cannot be read.
pub(crate) fn read_profile(t: &Tables<'_>, user: &str) -> Result<Option<UserProfile>, redb::Error> {
    match t.profiles.get(user)? {
        None => Ok(None),
        Some(p) => serde_json::from_slice(p.value())
            .map(Some)
            .map_err(|e| redb::Error::Corrupted(format!("undecodable stored profile: {e}"))),
    }
}

/// Upserts a profile; returns whether it changed anything.
pub(crate) fn apply_profile(
    t: &mut Tables<'_>,
    profile: &UserProfile,
    changes: &mut Vec<Change>,
) -> Result<bool, redb::Error> {
    let user = profile.user_id.as_str();
    let old = read_profile(t, user)?;
    if old.as_ref() == Some(profile) {
        return Ok(false);
    }
    if let Some(old) = old {
        changes.push(Change::Profile(old, -1));
    }
    let bytes = serde_json::to_vec(profile).unwrap_or_default();
    t.profiles.insert(user, bytes.as_slice())?;
    changes.push(Change::Profile(profile.clone(), 1));
    Ok(true)
}
