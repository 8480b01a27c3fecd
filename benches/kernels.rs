//! criterion micro-benchmarks of the hot kernels (no server): request parsing and canonical
//! hashing, validation (unit normalization and zone resolution), M1 slicing and the C1 day split,
//! a snapshot shard publish, and a point read.
//!
//! `cargo bench --bench kernels`

use std::hint::black_box;

/// The server's allocator (src/main.rs), so that the kernels allocate as the server does (as in
/// benches/views.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use vitalflow_ingest::http::parse_batch;
use vitalflow_schemas::split::{day_shares, slice_overlaps};
use vitalflow_schemas::validate::{RequestContext, validate_sample};
use vitalflow_schemas::{Datum, Row, Zone};
use vitalflow_serve::SnapshotStore;

/// A phone's batch: 500 samples of steps (10-minute intervals) and heart rate (instants).
fn body() -> Value {
    let base = 1_717_200_000_000_i64;
    let iso = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default();
    let samples: Vec<Value> = (0..500_i64)
        .map(|i| {
            let t = base + i * 600_000;
            if i % 2 == 0 {
                json!({"sourceId": "watch", "sourceRecordId": format!("s{i}"), "metric": "steps", "startAt": iso(t),
                       "endAt": iso(t + 600_000), "value": 100 + i, "unit": "count", "sourceClass": "watch"})
            } else {
                json!({"sourceId": "watch", "sourceRecordId": format!("h{i}"), "metric": "heart_rate", "startAt": iso(t),
                       "endAt": iso(t), "value": 60 + i % 40, "unit": "count/min", "sourceClass": "watch"})
            }
        })
        .collect();
    json!({"requestId": "r-1", "userId": "user-1", "deviceTimeZone": "America/New_York", "platform": "healthkit",
           "samples": samples})
}

fn parsing(c: &mut Criterion) {
    let bytes = axum::body::Bytes::from(serde_json::to_vec(&body()).unwrap_or_default());
    c.bench_function("parse_and_hash_500_sample_batch", |b| {
        let limits = vitalflow_schemas::Limits::default();
        b.iter(|| parse_batch(black_box(bytes.clone()), &limits).map(|(r, h)| (r.samples.len(), h.hex)))
    });
    let limits = vitalflow_schemas::Limits::default();
    let (req, _) = parse_batch(bytes, &limits).unwrap_or_else(|e| panic!("{e}"));
    let ctx = RequestContext {
        user_id: "user-1",
        platform: Some("healthkit"),
        device_zone: Zone::parse("America/New_York"),
        profile: None,
        // The benchmark's samples are from 2024: judged as if received then (G6).
        received_at_ms: 1_717_500_000_000,
        limits: &limits,
    };
    c.bench_function("validate_500_samples_units_and_zones", |b| {
        b.iter(|| req.samples.iter().filter(|s| validate_sample(black_box(s), &ctx).is_ok()).count())
    });
}

fn slicing(c: &mut Criterion) {
    let zone = Zone::parse("America/New_York").unwrap_or(Zone::UTC);
    let s = 1_717_200_000_000_i64 + 3 * 60_000;
    c.bench_function("m1_slices_of_a_10_minute_sample", |b| {
        b.iter(|| slice_overlaps(black_box(s), black_box(s + 600_000)).count())
    });
    c.bench_function("c1_day_split_of_a_24_hour_sample", |b| {
        b.iter(|| day_shares(black_box(s), black_box(s + 86_400_000), black_box(1000.0), zone).len())
    });
}

/// A daily-rollup-like view: key (user, metric, day), one value.
const DEF: vitalflow_schemas::ViewDef = {
    use vitalflow_schemas::view::{ColumnType, ViewDef, col};
    ViewDef {
        name: "t",
        columns: &[
            col("user_id", ColumnType::Str),
            col("metric", ColumnType::Str),
            col("local_date", ColumnType::Date),
            col("sum", ColumnType::Float),
        ],
        key_len: 3,
        route: Some("t"),
        filters: &[],
        range_column: Some("local_date"),
        range_via: None,
    }
};

fn row(user: usize, day: i32) -> Row {
    vec![Datum::Str(format!("user-{user}")), Datum::Str("steps".into()), Datum::Date(day), Datum::float(Some(1.0))]
}

fn snapshots(c: &mut Criterion) {
    // 10,000 users × 30 days in the view.
    let store = SnapshotStore::new([DEF]);
    let all: Vec<(Row, i64)> = (0..10_000).flat_map(|u| (0..30).map(move |d| (row(u, 19_875 + d), 1))).collect();
    store.apply(0, 2, all);
    let mut frontier = 3;
    c.bench_function("publish_one_user_shard_in_a_300k_row_view", |b| {
        b.iter(|| {
            // Retract and re-insert one user's day: one shard rebuilt, one bucket copied.
            store.apply(0, frontier, vec![(row(42, 19_875), -1), (row(42, 19_875), 1)]);
            frontier += 1;
        })
    });
    c.bench_function("point_read_one_user_as_json", |b| {
        b.iter(|| {
            let snap = store.snapshot(0);
            // As a read writes them: the rows streamed to the serializer.
            let shard = snap.user(black_box("user-4242")).map(|s| {
                let rows: Vec<&Row> = s.rows().collect();
                serde_json::to_vec(&DEF.json_rows(&rows)).map_or(0, |b| b.len())
            });
            (snap.as_of, shard)
        })
    });
}

/// Issue 14 §1: a 50-row change to one user whose history in the view is 1,000, 10,000 or
/// 100,000 rows (beside 1,000 other users of 30 rows): appended at the end of the history (a
/// sync) and in its middle (late data). Publishing should cost the change, not the history.
fn publish_vs_history(c: &mut Criterion) {
    for history in [1_000_i32, 10_000, 100_000] {
        let store = SnapshotStore::new([DEF]);
        let others: Vec<(Row, i64)> = (1..=1_000).flat_map(|u| (0..30).map(move |d| (row(u, d), 1))).collect();
        store.apply(0, 2, others);
        store.apply(0, 3, (0..history).map(|d| (row(0, d), 1)).collect());
        let mut frontier = 4;
        let mut on = true;
        c.bench_function(&format!("publish_50_appended_rows_history_{history}"), |b| {
            b.iter(|| {
                // 50 new days at the end of the history, then retracted again (the history stays
                // the size it is measured at).
                let diff = if on { 1 } else { -1 };
                on = !on;
                store.apply(0, frontier, (history..history + 50).map(|d| (row(0, d), diff)).collect());
                frontier += 1;
            })
        });
        let mid = history / 2;
        let mut on = true;
        c.bench_function(&format!("publish_50_late_rows_history_{history}"), |b| {
            b.iter(|| {
                // Retract then restore 50 rows in the middle of the history, alternately.
                let diff = if on { -1 } else { 1 };
                on = !on;
                store.apply(0, frontier, (mid..mid + 50).map(|d| (row(0, d), diff)).collect());
                frontier += 1;
            })
        });
    }
}

/// Issue 14 §2: SQL over a view of 1,000,000 rows (1,000 users × 1,000 days): a whole-view
/// aggregate, a grouped one, and one user's rows through the `user_id` pushdown.
fn sql_over_a_million_rows(c: &mut Criterion) {
    let store = std::sync::Arc::new(SnapshotStore::new([DEF]));
    store.apply(0, 2, (0..1_000).flat_map(|u| (0..1_000).map(move |d| (row(u, d), 1))).collect());
    let engine = vitalflow_serve::sql::SqlEngine::new(vitalflow_serve::sql::SqlLimits::default()).expect("engine");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    for (name, sql) in [
        ("sql_count_sum_1m_rows", "SELECT count(*) AS n, sum(sum) AS total FROM t"),
        ("sql_group_by_day_1m_rows", "SELECT local_date, avg(sum) AS mean FROM t GROUP BY local_date"),
        ("sql_one_user_of_1m_rows", "SELECT sum(sum) AS total FROM t WHERE user_id = 'user-42'"),
        ("sql_one_day_of_1m_rows", "SELECT sum(sum) AS total FROM t WHERE local_date = DATE '1971-01-01'"),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let run = engine.run(store.clone(), sql.to_owned(), vitalflow_schemas::auth::RowVisibility::All);
                rt.block_on(run).expect("query").batches.len()
            })
        });
    }
}

criterion_group!(kernels, parsing, slicing, snapshots, publish_vs_history, sql_over_a_million_rows);
criterion_main!(kernels);
