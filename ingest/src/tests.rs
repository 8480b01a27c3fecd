//! The writer against a model of DOMAIN.md I1–I3: random inserts, edits, deletes, stale sync
//! versions and replays, grouped into random requests, leave exactly the model's final rows, both
//! in the changes handed to the dataflow (folded) and in the store that recovery replays.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use serde_json::{Value, json};
use vitalflow_schemas::wire::BatchUpsertRequest;
use vitalflow_schemas::{Change, EpochBatch, Sample};

use crate::store::PayloadHash;
use crate::{Ingest, IngestProgress, Store};

/// The payload hash of `body` as every path computes it.
fn hash_of(body: &Value) -> PayloadHash {
    let bytes = axum::body::Bytes::from(serde_json::to_vec(body).expect("json"));
    crate::http::parse_batch(bytes, &vitalflow_schemas::Limits::DEFAULT).expect("a valid request").1
}

#[derive(Clone, Debug)]
enum Op {
    Upsert { rec: u8, value: u16, version: Option<u8> },
    Delete { rec: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..6u8, 0..50u16, prop::option::of(0..4u8)).prop_map(|(rec, value, version)| Op::Upsert { rec, value, version }),
        1 => (0..6u8).prop_map(|rec| Op::Delete { rec }),
    ]
}

fn sample_json(rec: u8, value: u16, version: Option<u8>) -> Value {
    let mut s = json!({"sourceId": "w", "sourceRecordId": format!("r{rec}"), "metric": "steps",
        "startAt": format!("2024-06-01T{:02}:00:00Z", rec), "endAt": format!("2024-06-01T{:02}:30:00Z", rec),
        "value": value, "unit": "count"});
    if let Some(v) = version {
        s["metadata"] = json!({"HKMetadataKeySyncVersion": v});
    }
    s
}

/// The model: current rows `rec → (value, version)`, and tombstones.
#[derive(Default)]
struct Model {
    rows: BTreeMap<u8, (u16, Option<u8>)>,
    tombstones: BTreeSet<u8>,
}

impl Model {
    fn apply(&mut self, ops: &[Op]) {
        let mut deletes = Vec::new();
        for op in ops {
            match *op {
                Op::Upsert { rec, value, version } => {
                    if self.tombstones.contains(&rec) {
                        continue;
                    }
                    if let Some((_, Some(cur))) = self.rows.get(&rec)
                        && version.is_some_and(|v| v < *cur)
                    {
                        continue;
                    }
                    self.rows.insert(rec, (value, version));
                }
                Op::Delete { rec } => deletes.push(rec),
            }
        }
        for rec in deletes {
            self.tombstones.insert(rec);
            self.rows.remove(&rec);
        }
    }
}

fn request(id: usize, ops: &[Op]) -> Value {
    let samples: Vec<Value> = ops
        .iter()
        .filter_map(|o| match *o {
            Op::Upsert { rec, value, version } => Some(sample_json(rec, value, version)),
            Op::Delete { .. } => None,
        })
        .collect();
    let deletions: Vec<Value> = ops
        .iter()
        .filter_map(|o| match *o {
            Op::Delete { rec } => Some(json!({"sourceId": "w", "sourceRecordId": format!("r{rec}")})),
            Op::Upsert { .. } => None,
        })
        .collect();
    json!({"requestId": format!("q{id}"), "userId": "u", "samples": samples, "deletions": deletions})
}

fn values(samples: impl IntoIterator<Item = Sample>) -> BTreeMap<String, f64> {
    samples.into_iter().map(|s| (s.source_record_id, s.value.map_or(f64::NAN, |v| v.0))).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn writer_follows_the_model(ops in prop::collection::vec(op(), 1..40), sizes in prop::collection::vec(1..6usize, 1..10), replay_every in 2..5usize) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        let batches: Arc<Mutex<Vec<EpochBatch>>> = Arc::default();
        let sink = batches.clone();
        let progress = Arc::new(IngestProgress::default());
        let (ingest, writer) = Ingest::start(
            store.clone(),
            progress,
            Box::new(|| Ok(crate::Startup::Ready)),
            Box::new(move |b| { sink.lock().expect("lock").push(b); true }),
            crate::writer::IngestOptions::default(),
        );
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        let mut model = Model::default();
        let mut rest: &[Op] = &ops;
        let mut size = sizes.iter().cycle();
        let mut id = 0;
        rt.block_on(async {
            while !rest.is_empty() {
                let n = (*size.next().unwrap_or(&1)).min(rest.len());
                let (group, tail) = rest.split_at(n);
                rest = tail;
                let body = request(id, group);
                let req: BatchUpsertRequest = serde_json::from_value(body.clone()).expect("request");
                let first = ingest.batch_upsert(req.clone(), hash_of(&body), 1).await.expect("upsert");
                model.apply(group);
                if id % replay_every == 0 {
                    let again = ingest.batch_upsert(req, hash_of(&body), 1).await.expect("replay");
                    assert!(again.replayed);
                    assert_eq!(again.epoch, first.epoch);
                }
                id += 1;
            }
        });
        drop(ingest);
        writer.join().expect("writer");

        let want: BTreeMap<String, f64> = model.rows.iter().map(|(r, (v, _))| (format!("r{r}"), f64::from(*v))).collect();
        // The dataflow's view of the rows: every change folded, epochs strictly increasing.
        let mut folded: BTreeMap<Sample, i64> = BTreeMap::new();
        let mut last_epoch = 0;
        for b in batches.lock().expect("lock").iter() {
            prop_assert!(b.epoch > last_epoch);
            last_epoch = b.epoch;
            for c in &b.changes {
                if let Change::Sample(s, d) = c {
                    *folded.entry(s.clone()).or_insert(0) += d;
                }
            }
        }
        folded.retain(|_, d| *d != 0);
        prop_assert!(folded.values().all(|d| *d == 1), "every row exactly once: {:?}", folded);
        prop_assert_eq!(values(folded.into_keys()), want.clone());
        // What recovery would replay.
        let mut stored = Vec::new();
        store.scan_samples(|s| { stored.push(Sample::from(s)); Ok(()) }).expect("scan");
        prop_assert_eq!(values(stored), want);
        prop_assert_eq!(store.last_epoch().expect("epoch"), last_epoch);
    }
}

/// Retention: request records and tombstones older than the cutoff are pruned, so a replay after
/// the retention is a new request and a re-sent deleted sample is accepted again.
#[test]
fn retention_prunes_request_records_and_tombstones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let (ingest, writer, rt) = start_writer(&store);
    let body = json!({"requestId": "r-1", "userId": "u1", "samples": [sample_json(1, 10, None)],
                      "deletions": [{"sourceId": "watch", "sourceRecordId": "gone"}]});
    let req: BatchUpsertRequest = serde_json::from_value(body.clone()).expect("request");
    rt.block_on(async {
        let first = ingest.batch_upsert(req.clone(), hash_of(&body), 1).await.expect("upsert");
        assert!(!first.replayed);
        let again = ingest.batch_upsert(req.clone(), hash_of(&body), 1).await.expect("replay");
        assert!(again.replayed, "within the retention a replay answers the stored response");
        // Nothing is older than the epoch of time: nothing pruned.
        assert_eq!(crate::writer::prune(&store, 0).expect("prune"), 0);
        // Everything is older than the end of time: the request record and the tombstone go.
        assert_eq!(crate::writer::prune(&store, i64::MAX).expect("prune"), 2);
        let after = ingest.batch_upsert(req, hash_of(&body), 1).await.expect("after retention");
        assert!(!after.replayed, "past the retention the request is new");
        assert_eq!((after.accepted, after.unchanged), (0, 1), "its sample is unchanged, not doubled");
    });
    drop(ingest);
    writer.join().expect("writer");
}

/// Every row of `table` whose key names `user` (as a whole key part).
fn rows_naming(store: &Store, user: &str) -> Vec<String> {
    use redb::{ReadableDatabase, ReadableTable};
    let txn = store.db.begin_read().expect("read");
    let mut out = Vec::new();
    for e in txn.open_table(crate::store::REQUEST_TIMES).expect("t").iter().expect("iter") {
        let (k, _) = e.expect("row");
        if k.value().1 == user {
            out.push(format!("request_times {:?}", k.value()));
        }
    }
    for e in txn.open_table(crate::store::TOMBSTONE_TIMES).expect("t").iter().expect("iter") {
        let (k, _) = e.expect("row");
        if k.value().1 == user {
            out.push(format!("tombstone_times {:?}", k.value()));
        }
    }
    for e in txn.open_table(crate::store::REQUEST_STAMPS).expect("t").iter().expect("iter") {
        let (k, _) = e.expect("row");
        if k.value().0 == user {
            out.push(format!("request_stamps {:?}", k.value()));
        }
    }
    for e in txn.open_table(crate::store::TOMBSTONE_STAMPS).expect("t").iter().expect("iter") {
        let (k, _) = e.expect("row");
        if k.value().0 == user {
            out.push(format!("tombstone_stamps {:?}", k.value()));
        }
    }
    if txn.open_table(crate::store::USER_EPOCHS).expect("t").get(user).expect("get").is_some() {
        out.push("user_epochs".into());
    }
    out
}

/// Issue 11 §3: erasure leaves no retention index entry and no per-user epoch naming the user;
/// a user who comes back is recorded anew.
#[test]
fn erasure_leaves_no_index_row_naming_the_user() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let (ingest, writer, rt) = start_writer(&store);
    let body = json!({"requestId": "r-1", "userId": "u2", "samples": [sample_json(1, 10, None)],
                      "deletions": [{"sourceId": "watch", "sourceRecordId": "gone"}]});
    let req: BatchUpsertRequest = serde_json::from_value(body.clone()).expect("request");
    let other = json!({"requestId": "r-1", "userId": "u1", "samples": [sample_json(2, 10, None)]});
    let other_req: BatchUpsertRequest = serde_json::from_value(other.clone()).expect("request");
    rt.block_on(async {
        ingest.batch_upsert(req.clone(), hash_of(&body), 1).await.expect("upsert");
        ingest.batch_upsert(other_req, hash_of(&other), 1).await.expect("upsert");
        assert!(!rows_naming(&store, "u2").is_empty(), "the index names the user before the erasure");
        let erased = ingest.erase_user("u2".into()).await.expect("erase");
        assert_eq!((erased.deleted.requests, erased.deleted.tombstones), (1, 1));
        assert_eq!(rows_naming(&store, "u2"), Vec::<String>::new());
        assert!(!rows_naming(&store, "u1").is_empty(), "the other user is untouched");

        // The user comes back with the same requestId: recorded anew, pruned only by its own entry.
        let back = ingest.batch_upsert(req.clone(), hash_of(&body), 1).await.expect("upsert");
        assert!(!back.replayed);
        assert!(rows_naming(&store, "u2").contains(&"user_epochs".to_owned()));
        let again = ingest.batch_upsert(req, hash_of(&body), 1).await.expect("replay");
        assert!(again.replayed, "the new record answers replays");
    });
    drop(ingest);
    writer.join().expect("writer");
}

/// A store written before retention stamps existed: its index rows get stamps at the next open
/// (the newest time of each key; older duplicates dropped), so erasure then removes them all.
#[test]
fn legacy_retention_rows_are_stamped_at_open_and_erased() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path()).expect("store");
        let txn = store.db.begin_write().expect("txn");
        {
            let mut times = txn.open_table(crate::store::REQUEST_TIMES).expect("t");
            times.insert((1_000, "u9", "r-1"), ()).expect("row");
            times.insert((2_000, "u9", "r-1"), ()).expect("row");
            let mut requests = txn.open_table(crate::store::REQUESTS).expect("t");
            requests.insert(("u9", "r-1"), b"{}".as_slice()).expect("row");
            let mut ttimes = txn.open_table(crate::store::TOMBSTONE_TIMES).expect("t");
            ttimes.insert((1_500, "u9", "watch", "k"), ()).expect("row");
            ttimes.insert((500, "u9", "watch", "k"), ()).expect("row");
            let mut tombstones = txn.open_table(crate::store::TOMBSTONES).expect("t");
            tombstones.insert(("u9", "watch", "k"), 1).expect("row");
        }
        txn.commit().expect("commit");
    }
    let store = Arc::new(Store::open(dir.path()).expect("reopen"));
    {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = store.db.begin_read().expect("read");
        let stamps = txn.open_table(crate::store::REQUEST_STAMPS).expect("t");
        assert_eq!(stamps.get(("u9", "r-1")).expect("get").map(|v| v.value()), Some(2_000));
        let tstamps = txn.open_table(crate::store::TOMBSTONE_STAMPS).expect("t");
        assert_eq!(tstamps.get(("u9", "watch", "k")).expect("get").map(|v| v.value()), Some(1_500));
        assert_eq!(txn.open_table(crate::store::REQUEST_TIMES).expect("t").iter().expect("iter").count(), 1);
        assert_eq!(txn.open_table(crate::store::TOMBSTONE_TIMES).expect("t").iter().expect("iter").count(), 1);
    }
    let (ingest, writer, rt) = start_writer(&store);
    rt.block_on(async {
        ingest.erase_user("u9".into()).await.expect("erase");
    });
    assert_eq!(rows_naming(&store, "u9"), Vec::<String>::new());
    drop(ingest);
    writer.join().expect("writer");
}

/// A writer on `store` with default options (views always keep up), and a runtime to await it.
fn start_writer(store: &Arc<Store>) -> (Ingest, std::thread::JoinHandle<()>, tokio::runtime::Runtime) {
    let (ingest, writer) = Ingest::start(
        store.clone(),
        Arc::new(IngestProgress::default()),
        Box::new(|| Ok(crate::Startup::Ready)),
        Box::new(|_| true),
        crate::writer::IngestOptions::default(),
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    (ingest, writer, rt)
}

/// Issue 13 §5: a request recorded under the JCS scheme (scheme 1, what vitalflow stored before
/// batch hashes were computed over the parsed fields) is still recognised after the upgrade: the
/// same payload, however its keys are ordered, is a replay, and another payload is a 409.
#[test]
fn a_request_recorded_under_the_jcs_scheme_replays_after_the_upgrade() {
    use vitalflow_schemas::wire::{HASH_SCHEME_JCS, payload_hash};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::open(dir.path()).expect("store"));
    let (ingest, writer, rt) = start_writer(&store);
    let body = json!({"requestId": "r-1", "userId": "u1", "samples": [sample_json(1, 10, None)]});
    let req: BatchUpsertRequest = serde_json::from_value(body.clone()).expect("request");
    let legacy = PayloadHash { scheme: HASH_SCHEME_JCS, hex: payload_hash(&body), body: Default::default() };
    // The same payload, keys reversed and spaced, as this version parses it.
    let reversed: serde_json::Map<String, Value> =
        body.as_object().expect("object").iter().rev().map(|(k, v)| (k.clone(), v.clone())).collect();
    let text = serde_json::to_string_pretty(&Value::Object(reversed)).expect("json");
    assert_ne!(text, body.to_string());
    let (again_req, again_hash) =
        crate::http::parse_batch(text.into(), &vitalflow_schemas::Limits::DEFAULT).expect("valid");
    assert_ne!(again_hash.scheme, HASH_SCHEME_JCS);
    let other = json!({"requestId": "r-1", "userId": "u1", "samples": [sample_json(1, 11, None)]});
    rt.block_on(async {
        let first = ingest.batch_upsert(req, legacy, 1).await.expect("upsert");
        assert!(!first.replayed);
        let again = ingest.batch_upsert(again_req, again_hash, 1).await.expect("replay");
        assert!(again.replayed, "the scheme-1 record answers the same payload");
        assert_eq!(again.epoch, first.epoch);
        let refused =
            ingest.batch_upsert(serde_json::from_value(other.clone()).expect("request"), hash_of(&other), 1).await;
        assert!(matches!(refused, Err(crate::IngestError::IdempotencyKeyReused(_))), "{refused:?}");
    });
    drop(ingest);
    writer.join().expect("writer");
}
