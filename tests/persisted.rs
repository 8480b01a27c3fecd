//! Issue 14 §3 and §5: reads from the first seconds after a restart. A graceful stop persists
//! every view's snapshot; the next start serves them (same rows, their own `asOfEpoch`) while the
//! dataflow rehydrates, and says so (`/readyz` 503 `catching_up`, `/v1/frontiers` `servedFrom`).
//! A snapshot older than a user's input is served with `pending: true` for that user and never
//! claims an epoch it does not reflect; an erasure invalidates the files before it answers.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::{Server, UPSERT, batch, steps};

/// The per-user routes of every view, with what they read.
const ROUTES: &[&str] = &[
    "daily-rollups",
    "daily-rollups-by-source",
    "sleep-nights",
    "session-impacts",
    "product-impacts",
    "routines?scope=*",
    "sessions",
    "weekly-steps",
];

fn hr(rec: &str, at: &str, bpm: f64) -> Value {
    json!({"sourceId": "watch", "sourceRecordId": rec, "metric": "heart_rate", "startAt": at, "endAt": at,
           "value": bpm, "unit": "bpm"})
}

fn sleep(rec: &str, category: &str, start: &str, end: &str) -> Value {
    json!({"sourceId": "watch", "sourceRecordId": rec, "metric": "sleep_analysis", "category": category,
           "startAt": start, "endAt": end})
}

/// Input for two users that touches every view; returns the last epoch.
async fn load(server: &Server) -> u64 {
    let mut last = 0;
    for user in ["u1", "u2"] {
        let samples = vec![
            steps(&format!("{user}-s1"), "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 1200.0),
            steps(&format!("{user}-s2"), "phone", "2024-06-01T09:50:00Z", "2024-06-01T10:50:00Z", 2000.0),
            steps(&format!("{user}-s3"), "watch", "2024-06-03T08:00:00Z", "2024-06-03T08:20:00Z", 700.0),
            hr(&format!("{user}-h1"), "2024-06-01T11:30:00Z", 62.0),
            hr(&format!("{user}-h2"), "2024-06-01T12:05:00Z", 78.0),
            hr(&format!("{user}-h3"), "2024-06-01T13:30:00Z", 70.0),
            sleep(&format!("{user}-z1"), "asleepCore", "2024-06-01T03:10:00Z", "2024-06-01T07:40:00Z"),
            sleep(&format!("{user}-z2"), "asleepDeep", "2024-06-01T07:40:00Z", "2024-06-01T08:30:00Z"),
        ];
        let (status, ack) = server.post(UPSERT, &batch(&format!("{user}-r1"), user, samples)).await;
        assert_eq!(status, 200, "{ack}");
        let changes = json!({"requestId": format!("{user}-d1"), "changes": [
            {"entity": "product", "op": "upsert", "data": {"productId": "p1", "name": "Espresso", "category": "coffee"}},
            {"entity": "session", "op": "upsert", "data": {"userId": user, "sessionId": format!("{user}-x"),
             "productId": "p1", "startAt": "2024-06-01T12:00:00Z", "endAt": "2024-06-01T12:10:00Z", "quantity": 1.0}}]});
        let (status, ack) = server.post("/v1/domain/changes", &changes).await;
        assert_eq!(status, 200, "{ack}");
        last = ack["epoch"].as_u64().expect("epoch");
    }
    last
}

/// Every route's rows for `user` (after waiting for `min_epoch` when given), with the read's
/// `asOfEpoch` and `pending`.
async fn read_all(server: &Server, user: &str, min_epoch: Option<u64>) -> Vec<(Value, u64, bool)> {
    let mut out = Vec::new();
    for route in ROUTES {
        let sep = if route.contains('?') { '&' } else { '?' };
        let wait = min_epoch.map_or(String::new(), |e| format!("{sep}minEpoch={e}&waitMs=20000"));
        let (status, b) = server.get(&format!("/v1/users/{user}/{route}{wait}")).await;
        assert_eq!(status, 200, "{route}: {b}");
        out.push((b["rows"].clone(), b["asOfEpoch"].as_u64().expect("asOfEpoch"), b["pending"] == json!(true)));
    }
    out
}

fn snapshot_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("snapshots"))
        .map(|d| d.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "arrow")).count())
        .unwrap_or(0)
}

const DELAYED: &[(&str, &str)] = &[("VITALFLOW_FAULT_INJECTION", "1"), ("VITALFLOW_FAULT_RECOVERY_DELAY_MS", "4000")];

/// SIGTERM while a start is still replaying the store stops the process cleanly (exit 0) without
/// finishing the replay, and leaves nothing half-done: the persisted snapshots are not rewritten
/// from a partial state, and the next start serves the views of before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_recovery_stops_without_finishing_the_replay() {
    let dir = crate::common::temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    let e1 = load(&server).await;
    let before: Vec<_> = [read_all(&server, "u1", Some(e1)).await, read_all(&server, "u2", Some(e1)).await].concat();
    server.stop();
    let persisted = std::fs::read_dir(dir.path().join("snapshots"))
        .expect("snapshots")
        .filter_map(Result::ok)
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap_or_default()))
        .collect::<Vec<_>>();
    assert!(!persisted.is_empty(), "a graceful stop persists the views");

    // Recovery held back for two minutes before its first sample: the stop must give it up.
    let log = dir.path().with_extension("recovery.log");
    let held = [
        ("VITALFLOW_FAULT_INJECTION", "1"),
        ("VITALFLOW_FAULT_RECOVERY_DELAY_MS", "120000"),
        ("VITALFLOW_LOG", "info"),
    ];
    let server = Server::start_logging_to(dir.path(), &held, std::fs::File::create(&log).expect("log file"));
    let (status, r) = server.get("/readyz").await;
    assert_eq!((status, &r["status"]), (503, &json!("catching_up")), "{r}");
    server.stop();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("shutdown requested during recovery"), "{text}");
    assert!(!text.contains("durable state replayed"), "{text}");
    for (path, bytes) in &persisted {
        assert_eq!(&std::fs::read(path).unwrap_or_default(), bytes, "{} was rewritten", path.display());
    }

    let server = Server::start(dir.path());
    server.ready().await;
    let after: Vec<_> = [read_all(&server, "u1", None).await, read_all(&server, "u2", None).await].concat();
    for ((want, _, _), (got, _, _)) in before.iter().zip(&after) {
        assert_eq!(got, want, "the next start replays the whole store");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_serves_persisted_snapshots_while_rehydrating() {
    let dir = crate::common::temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    let e1 = load(&server).await;
    let before: Vec<_> = [read_all(&server, "u1", Some(e1)).await, read_all(&server, "u2", Some(e1)).await].concat();
    assert!(before.iter().all(|(rows, _, _)| rows.as_array().is_some_and(|r| !r.is_empty())), "{before:?}");
    server.stop();
    assert!(snapshot_files(dir.path()) >= ROUTES.len(), "a graceful stop persists every view");

    // Served from the persisted snapshots before recovery: the same rows, as of e1, not pending.
    let server = Server::start_with(dir.path(), DELAYED);
    let (status, r) = server.get("/readyz").await;
    assert_eq!((status, &r["status"]), (503, &json!("catching_up")), "{r}");
    let (_, f) = server.get("/v1/frontiers").await;
    assert_eq!(f["status"], json!("catching_up"), "{f}");
    assert!(f["views"].as_array().expect("views").iter().all(|v| v["servedFrom"] == json!("persisted")), "{f}");
    let early: Vec<_> = [read_all(&server, "u1", None).await, read_all(&server, "u2", None).await].concat();
    for ((want, _, _), (got, as_of, pending)) in before.iter().zip(&early) {
        assert_eq!(got, want, "a persisted snapshot serves the rows it was written with");
        assert_eq!(*as_of, e1);
        assert!(!pending, "nothing newer than the snapshot was accepted");
    }
    let (status, sql) = server.sql("SELECT count(*) AS n FROM daily_rollups").await;
    assert_eq!(status, 200, "{sql}");
    assert!(sql["rows"][0]["n"].as_i64().unwrap_or(0) > 0, "SQL reads the persisted snapshot too: {sql}");
    server.ready().await;
    let (_, f) = server.get("/v1/frontiers").await;
    assert_eq!(f["status"], json!("fresh"), "{f}");
    assert!(f["views"].as_array().expect("views").iter().all(|v| v["servedFrom"] == json!("dataflow")), "{f}");
    let after: Vec<_> = [read_all(&server, "u1", None).await, read_all(&server, "u2", None).await].concat();
    for ((want, _, _), (got, _, _)) in before.iter().zip(&after) {
        assert_eq!(got, want, "the rehydrated views equal the persisted ones");
    }

    // Newer input for u1, then a crash before any further persist: the old snapshot is served
    // with pending for u1 only, and never claims u1's new epoch.
    let more =
        batch("u1-r2", "u1", vec![steps("u1-s9", "watch", "2024-06-02T10:00:00Z", "2024-06-02T10:30:00Z", 55.0)]);
    let (status, ack) = server.post(UPSERT, &more).await;
    assert_eq!(status, 200, "{ack}");
    let e2 = ack["epoch"].as_u64().expect("epoch");
    let fresh_u1 = read_all(&server, "u1", Some(e2)).await;
    server.kill();
    let server = Server::start_with(dir.path(), DELAYED);
    for (rows, as_of, pending) in read_all(&server, "u1", None).await {
        assert!(as_of < e2 && pending, "u1's newer input is not in the snapshot: as of {as_of}, rows {rows}");
    }
    for ((want, _, _), (got, as_of, pending)) in before[ROUTES.len()..].iter().zip(read_all(&server, "u2", None).await)
    {
        assert_eq!((&got, as_of, pending), (want, e1, false));
    }
    server.ready().await;
    for ((want, _, _), (got, as_of, pending)) in fresh_u1.iter().zip(read_all(&server, "u1", None).await) {
        assert_eq!((&got, pending), (want, false));
        assert!(as_of >= e2);
    }

    // An erasure invalidates the persisted snapshots before it answers; after a crash, u2's rows
    // are nowhere.
    server.stop();
    let server = Server::start(dir.path());
    server.ready().await;
    assert!(snapshot_files(dir.path()) >= ROUTES.len());
    // A copy of the files from before the erasure, put back later (a restored backup).
    let backup = crate::common::temp_dir();
    for f in std::fs::read_dir(dir.path().join("snapshots")).expect("snapshots").filter_map(Result::ok) {
        std::fs::copy(f.path(), backup.path().join(f.file_name())).expect("copy");
    }
    let r = server.client.delete(server.url("/v1/users/u2")).send().await.expect("DELETE");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(snapshot_files(dir.path()), 0, "the erasure answered only after invalidating the files");
    server.kill();
    for f in std::fs::read_dir(backup.path()).expect("backup").filter_map(Result::ok) {
        std::fs::copy(f.path(), dir.path().join("snapshots").join(f.file_name())).expect("restore");
    }
    let server = Server::start_with(dir.path(), DELAYED);
    for (rows, _, _) in read_all(&server, "u2", None).await {
        assert_eq!(
            rows,
            json!([]),
            "an erased user is never served from a persisted snapshot, not even a restored one"
        );
    }
    server.ready().await;
    for (rows, _, _) in read_all(&server, "u2", None).await {
        assert_eq!(rows, json!([]));
    }
}
