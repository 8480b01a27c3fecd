//! The single writer: takes requests from a queue, applies a whole group of them in one redb
//! transaction (group commit: one fsync for many requests), stamps the commit with the next epoch,
//! hands the group's changes to the dataflow and only then answers each request.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{ReadableTable, Table};
use tokio::sync::{mpsc, oneshot};
use vitalflow_schemas::domain::{DomainChangesRequest, DomainChangesResponse};
use vitalflow_schemas::validate::{RequestContext, validate_sample};
use vitalflow_schemas::wire::{BatchUpsertRequest, BatchUpsertResponse, RejectedItem, valid_id};
use vitalflow_schemas::{Change, Epoch, EpochBatch, UserProfile, Zone};

use crate::domain::apply_domain;
use crate::error::IngestError;
use crate::progress::IngestProgress;
use crate::store::{
    EPOCH_KEY, META, PRODUCTS, PROFILES, REQUESTS, RequestRecord, SAMPLES, SESSIONS, SOURCE_POSITIONS, Store,
    TOMBSTONES, USER_EPOCHS, decode_sample, encode_sample,
};

/// Called after each commit, in epoch order, with everything the commit changed.
pub type OnCommit = Box<dyn FnMut(EpochBatch) + Send>;

/// Most requests applied in one transaction.
const MAX_GROUP: usize = 256;
/// Requests waiting for the writer before submitters wait (backpressure).
const QUEUE: usize = 4096;

enum Command {
    Domain {
        req: DomainChangesRequest,
        hash: String,
        reply: oneshot::Sender<Result<DomainChangesResponse, IngestError>>,
    },
    Batch {
        req: BatchUpsertRequest,
        hash: String,
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
}

/// One message of a source (Kafka, the outbox), already parsed.
#[derive(Debug)]
pub enum SourceBody {
    Batch(BatchUpsertRequest, String),
    Domain(DomainChangesRequest, String),
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

/// A cloneable handle for submitting requests to the writer.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Command>,
    progress: Arc<IngestProgress>,
}

impl Ingest {
    /// Starts the writer thread over `store`. The thread ends once every `Ingest` handle is dropped
    /// and the queue is drained; join the returned handle to wait for the last commit.
    ///
    /// `startup` runs on the writer thread before the first request is taken (recovery replays the
    /// durable state there, so that no commit can overtake it).
    pub fn start(
        store: Arc<Store>,
        progress: Arc<IngestProgress>,
        startup: Box<dyn FnOnce() + Send>,
        mut on_commit: OnCommit,
    ) -> (Ingest, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Command>(QUEUE);
        let writer_progress = progress.clone();
        let handle = std::thread::Builder::new()
            .name("vitalflow-writer".into())
            .spawn(move || {
                startup();
                while let Some(first) = rx.blocking_recv() {
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(c) => group.push(c),
                            Err(_) => break,
                        }
                    }
                    commit_group(&store, &writer_progress, &mut on_commit, group);
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the writer thread: {e}"));
        (Ingest { tx, progress }, handle)
    }

    /// Shared ingest progress (latest epoch, per-user epochs).
    pub fn progress(&self) -> &Arc<IngestProgress> {
        &self.progress
    }

    /// Applies a batch upsert durably and returns its response (or the stored one, on replay).
    pub async fn batch_upsert(
        &self,
        req: BatchUpsertRequest,
        hash: String,
    ) -> Result<BatchUpsertResponse, IngestError> {
        self.submit(|reply| Command::Batch { req, hash, reply }).await
    }

    /// Applies a domain-changes request durably and returns its response (or the stored one).
    pub async fn domain_changes(
        &self,
        req: DomainChangesRequest,
        hash: String,
    ) -> Result<DomainChangesResponse, IngestError> {
        self.submit(|reply| Command::Domain { req, hash, reply }).await
    }

    /// Upserts a profile durably; returns the epoch of its commit.
    pub async fn upsert_profile(&self, profile: UserProfile) -> Result<Epoch, IngestError> {
        self.submit(|reply| Command::Profile { profile, reply }).await
    }

    /// Applies a source's messages and records its new positions (`key` → next position) in the
    /// same transaction: after a crash, a source resumes from the stored positions and nothing is
    /// applied twice or skipped (exactly-once into the views).
    pub async fn source_commit(
        &self,
        items: Vec<SourceBody>,
        positions: Vec<(String, i64)>,
    ) -> Result<Vec<SourceOutcome>, IngestError> {
        self.submit(|reply| Command::Source { items, positions, reply }).await
    }

    /// Queues a command for the writer and waits for its answer.
    async fn submit<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, IngestError>>) -> Command,
    ) -> Result<T, IngestError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(command(reply)).await.map_err(|_| IngestError::Unavailable)?;
        rx.await.map_err(|_| IngestError::Unavailable)?
    }
}

enum Outcome {
    Domain(Result<DomainChangesResponse, IngestError>),
    Batch(Result<BatchUpsertResponse, IngestError>),
    Profile(Result<Epoch, IngestError>),
    Source(Vec<SourceOutcome>),
}

pub(crate) struct Tables<'t> {
    pub samples: Table<'t, (&'static str, &'static str, &'static str), &'static [u8]>,
    pub tombstones: Table<'t, (&'static str, &'static str, &'static str), u64>,
    pub requests: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub profiles: Table<'t, &'static str, &'static [u8]>,
    pub sessions: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub products: Table<'t, &'static str, &'static [u8]>,
}

fn commit_group(store: &Store, progress: &IngestProgress, on_commit: &mut OnCommit, group: Vec<Command>) {
    let epoch = progress.latest_epoch() + 1;
    let mut changes = Vec::new();
    let mut users = BTreeSet::new();
    let result = (|| -> Result<(Vec<Outcome>, bool), redb::Error> {
        let txn = store.db.begin_write()?;
        let mut wrote = false;
        let mut outcomes = Vec::with_capacity(group.len());
        {
            let mut t = Tables {
                samples: txn.open_table(SAMPLES)?,
                tombstones: txn.open_table(TOMBSTONES)?,
                requests: txn.open_table(REQUESTS)?,
                profiles: txn.open_table(PROFILES)?,
                sessions: txn.open_table(SESSIONS)?,
                products: txn.open_table(PRODUCTS)?,
            };
            for cmd in &group {
                match cmd {
                    Command::Batch { req, hash, .. } => {
                        let (outcome, w) = apply_batch(&mut t, req, hash, epoch, &mut changes, &mut users)?;
                        wrote |= w;
                        outcomes.push(Outcome::Batch(outcome));
                    }
                    Command::Domain { req, hash, .. } => {
                        let (outcome, w) = apply_domain(&mut t, req, hash, epoch, &mut changes, &mut users)?;
                        wrote |= w;
                        outcomes.push(Outcome::Domain(outcome));
                    }
                    Command::Profile { profile, .. } => {
                        if apply_profile(&mut t, profile, &mut changes)? {
                            users.insert(profile.user_id.clone());
                        }
                        wrote = true;
                        outcomes.push(Outcome::Profile(Ok(epoch)));
                    }
                    Command::Source { items, positions, .. } => {
                        let mut results = Vec::with_capacity(items.len());
                        for item in items {
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
                        if !positions.is_empty() {
                            let mut table = txn.open_table(SOURCE_POSITIONS)?;
                            for (key, next) in positions {
                                table.insert(key.as_str(), *next)?;
                            }
                            wrote = true;
                        }
                        outcomes.push(Outcome::Source(results));
                    }
                }
            }
            if wrote {
                let mut meta = txn.open_table(META)?;
                meta.insert(EPOCH_KEY, epoch)?;
                let mut user_epochs = txn.open_table(USER_EPOCHS)?;
                for u in &users {
                    user_epochs.insert(u.as_str(), epoch)?;
                }
            }
        }
        if wrote {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok((outcomes, wrote))
    })();
    match result {
        Ok((outcomes, wrote)) => {
            if wrote {
                progress.record_commit(epoch, users);
                on_commit(EpochBatch { epoch, changes });
            }
            for (cmd, outcome) in group.into_iter().zip(outcomes) {
                match (cmd, outcome) {
                    (Command::Batch { reply, .. }, Outcome::Batch(r)) => {
                        let _ = reply.send(r);
                    }
                    (Command::Profile { reply, .. }, Outcome::Profile(r)) => {
                        let _ = reply.send(r);
                    }
                    (Command::Domain { reply, .. }, Outcome::Domain(r)) => {
                        let _ = reply.send(r);
                    }
                    (Command::Source { reply, .. }, Outcome::Source(r)) => {
                        let _ = reply.send(Ok(r));
                    }
                    _ => {}
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "commit failed; the group's requests were not applied");
            for cmd in group {
                let err = IngestError::Storage(e.to_string());
                match cmd {
                    Command::Batch { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                    Command::Profile { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                    Command::Domain { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                    Command::Source { reply, .. } => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
        }
    }
}

/// I1 for any request kind: `None` for a new `(scope, requestId)`; the stored response for the same
/// payload hash; `IDEMPOTENCY_KEY_REUSED` for another payload.
pub(crate) fn prior_response<R: serde::de::DeserializeOwned>(
    t: &Tables<'_>,
    scope: &str,
    request_id: &str,
    hash: &str,
) -> Result<Option<Result<R, IngestError>>, redb::Error> {
    let Some(prior) = t.requests.get((scope, request_id))? else { return Ok(None) };
    let record: Option<RequestRecord<R>> = serde_json::from_slice(prior.value()).ok();
    Ok(Some(match record {
        Some(r) if r.hash == hash => Ok(r.response),
        _ => Err(IngestError::IdempotencyKeyReused(request_id.to_owned())),
    }))
}

/// Applies one batch inside the group's transaction. Returns the outcome and whether it wrote.
fn apply_batch(
    t: &mut Tables<'_>,
    req: &BatchUpsertRequest,
    hash: &str,
    epoch: Epoch,
    changes: &mut Vec<Change>,
    users: &mut BTreeSet<String>,
) -> Result<(Result<BatchUpsertResponse, IngestError>, bool), redb::Error> {
    let user = req.user_id.as_str();
    if let Some(prior) = prior_response::<BatchUpsertResponse>(t, user, &req.request_id, hash)? {
        return Ok((prior.map(|r| BatchUpsertResponse { replayed: true, ..r }), false));
    }
    let profile: Option<UserProfile> = t.profiles.get(user)?.and_then(|p| serde_json::from_slice(p.value()).ok());
    let ctx = RequestContext {
        user_id: user,
        platform: req.platform.as_deref(),
        device_zone: req.device_time_zone.as_deref().and_then(Zone::parse),
        profile: profile.as_ref(),
    };
    let mut resp = BatchUpsertResponse { request_id: req.request_id.clone(), epoch, ..Default::default() };
    for (index, ws) in req.samples.iter().enumerate() {
        let new = match validate_sample(ws, &ctx) {
            Ok(s) => s,
            Err(rej) => {
                resp.rejected.push(RejectedItem { index, code: rej.code, message: rej.message, field: None });
                continue;
            }
        };
        let key = (user, ws.source_id.as_str(), ws.source_record_id.as_str());
        if t.tombstones.get(key)?.is_some() {
            resp.stale += 1;
            continue;
        }
        let old = t.samples.get(key)?.and_then(|v| decode_sample(v.value()));
        match old {
            Some(old) if old == new => resp.unchanged += 1,
            Some(old) if matches!((old.sync_version, new.sync_version), (Some(a), Some(b)) if b < a) => resp.stale += 1,
            old => {
                if let Some(old) = old {
                    changes.push(Change::Sample(old.sample, -1));
                }
                t.samples.insert(key, encode_sample(&new).as_slice())?;
                changes.push(Change::Sample(new.sample, 1));
                resp.accepted += 1;
            }
        }
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
        t.tombstones.insert(key, epoch)?;
        let removed = t.samples.remove(key)?.and_then(|v| decode_sample(v.value()));
        if let Some(old) = removed {
            changes.push(Change::Sample(old.sample, -1));
            resp.deleted += 1;
        }
    }
    if resp.accepted + resp.deleted > 0 {
        users.insert(user.to_owned());
    }
    let record = RequestRecord { hash: hash.to_owned(), response: resp.clone() };
    let bytes = serde_json::to_vec(&record).unwrap_or_default();
    t.requests.insert((user, req.request_id.as_str()), bytes.as_slice())?;
    Ok((Ok(resp), true))
}

/// Upserts a profile; returns whether it changed anything.
pub(crate) fn apply_profile(
    t: &mut Tables<'_>,
    profile: &UserProfile,
    changes: &mut Vec<Change>,
) -> Result<bool, redb::Error> {
    let user = profile.user_id.as_str();
    let old: Option<UserProfile> = t.profiles.get(user)?.and_then(|p| serde_json::from_slice(p.value()).ok());
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
