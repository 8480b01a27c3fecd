//! Issue 11 §3, end to end over a real server: `DELETE /v1/users/{userId}` removes the user's
//! records in one durable commit, every view read and every SQL table shows nothing of the user
//! at the erasure epoch and after a restart, other users are untouched, and a later upload is new
//! data.

use serde_json::{Value, json};

use crate::common::{Server, UPSERT, temp_dir};

const ROUTES: [&str; 8] = [
    "daily-rollups",
    "daily-rollups-by-source",
    "weekly-steps",
    "sleep-nights",
    "session-impacts",
    "product-impacts",
    "routines",
    "sessions",
];
const TABLES: [&str; 9] = [
    "daily_rollups",
    "daily_rollups_by_source",
    "weekly_steps",
    "sleep_nights",
    "session_impacts",
    "product_impacts",
    "routine_bins",
    "sessions",
    "user_profiles",
];

fn samples(user: &str, request_id: &str) -> Value {
    json!({"requestId": request_id, "userId": user, "deviceTimeZone": "UTC", "samples": [
        {"sourceId": "watch", "sourceRecordId": "s1", "metric": "steps", "startAt": "2024-06-01T10:00:00Z",
         "endAt": "2024-06-01T11:00:00Z", "value": 1000, "unit": "count", "sourceClass": "watch"},
        {"sourceId": "watch", "sourceRecordId": "h1", "metric": "heart_rate", "startAt": "2024-06-01T11:30:00Z",
         "endAt": "2024-06-01T11:30:00Z", "value": 60, "unit": "bpm"},
        {"sourceId": "watch", "sourceRecordId": "h2", "metric": "heart_rate", "startAt": "2024-06-01T12:05:00Z",
         "endAt": "2024-06-01T12:05:00Z", "value": 80, "unit": "bpm"},
        {"sourceId": "watch", "sourceRecordId": "z1", "metric": "sleep_analysis", "category": "asleepCore",
         "startAt": "2024-06-01T01:00:00Z", "endAt": "2024-06-01T06:00:00Z"}],
        "deletions": [{"sourceId": "watch", "sourceRecordId": "gone"}]})
}

fn domain(user: &str, request_id: &str) -> Value {
    json!({"requestId": request_id, "changes": [
        {"entity": "product", "op": "upsert", "data": {"productId": "p1", "name": "Espresso", "category": "coffee"}},
        {"entity": "session", "op": "upsert", "data": {"userId": user, "sessionId": "s1", "productId": "p1",
           "startAt": "2024-06-01T12:00:00Z", "endAt": "2024-06-01T12:10:00Z", "quantity": 1.0}}]})
}

async fn rows(server: &Server, user: &str, route: &str, epoch: u64) -> Vec<Value> {
    let (status, body) = server.get(&format!("/v1/users/{user}/{route}?minEpoch={epoch}&waitMs=20000")).await;
    assert_eq!(status, 200, "{route}: {body}");
    body["rows"].as_array().cloned().unwrap_or_default()
}

async fn sql_count(server: &Server, table: &str, user: &str, epoch: u64) -> i64 {
    let (status, body) =
        server.sql_at(&format!("SELECT count(*) AS n FROM {table} WHERE user_id = '{user}'"), epoch).await;
    assert_eq!(status, 200, "{table}: {body}");
    body["rows"][0]["n"].as_i64().unwrap_or(-1)
}

/// Every per-user read and SQL table for `user`: (route or table, rows).
async fn footprint(server: &Server, user: &str, epoch: u64) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for route in ROUTES {
        out.push((route.to_owned(), rows(server, user, route, epoch).await.len()));
    }
    for table in TABLES {
        out.push((table.to_owned(), usize::try_from(sql_count(server, table, user, epoch).await).unwrap_or(0)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_reaches_every_view_survives_restart_and_spares_others() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    for user in ["u1", "u2"] {
        let (status, r) = server.post(UPSERT, &samples(user, "r-1")).await;
        assert_eq!(status, 200, "{r}");
        let (status, r) = server.post(&format!("/v1/users/{user}/profile"), &json!({"timeZone": "UTC"})).await;
        assert_eq!(status, 200, "{r}");
        let (status, r) = server.post("/v1/domain/changes", &domain(user, &format!("d-{user}"))).await;
        assert_eq!(status, 200, "{r}");
    }
    let (_, f) = server.get("/v1/frontiers").await;
    let before = f["latestEpoch"].as_u64().expect("epoch");
    let u2_before = footprint(&server, "u2", before).await;
    let u1_before = footprint(&server, "u1", before).await;
    assert!(u1_before.iter().filter(|(_, n)| *n > 0).count() >= 12, "u1 shows up in the views: {u1_before:?}");

    let r = server.client.delete(server.url("/v1/users/u1")).send().await.expect("DELETE");
    assert_eq!(r.status().as_u16(), 200);
    let erased: Value = r.json().await.expect("json");
    assert_eq!(erased["userId"], json!("u1"));
    assert_eq!(erased["deleted"]["samples"], json!(4), "{erased}");
    assert_eq!(erased["deleted"]["sessions"], json!(1), "{erased}");
    assert_eq!(erased["deleted"]["profile"], json!(1), "{erased}");
    assert_eq!(erased["deleted"]["requests"], json!(1), "{erased}");
    assert_eq!(erased["deleted"]["tombstones"], json!(1), "{erased}");
    let epoch = erased["epoch"].as_u64().expect("epoch");
    assert!(epoch > before);

    let gone = footprint(&server, "u1", epoch).await;
    assert!(gone.iter().all(|(_, n)| *n == 0), "u1 still visible at the erasure epoch: {gone:?}");
    assert_eq!(footprint(&server, "u2", epoch).await, u2_before, "u2 untouched");
    // Products are shared reference data: still there.
    let (_, products) = server.sql_at("SELECT count(*) AS n FROM products", epoch).await;
    assert_eq!(products["rows"][0]["n"], json!(1));

    // After a restart recovery does not bring u1 back.
    server.stop();
    let server = Server::start(dir.path());
    server.ready().await;
    let gone = footprint(&server, "u1", epoch).await;
    assert!(gone.iter().all(|(_, n)| *n == 0), "u1 came back after a restart: {gone:?}");
    assert_eq!(footprint(&server, "u2", epoch).await, u2_before, "u2 untouched after restart");

    // The user comes back: the same requestId is new data, not a replay.
    let (status, again) = server.post(UPSERT, &samples("u1", "r-1")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["replayed"], json!(false));
    assert_eq!(again["accepted"], json!(4));
    let e = again["epoch"].as_u64().expect("epoch");
    assert_eq!(rows(&server, "u1", "daily-rollups", e).await.len(), 2, "steps and heart rate (sleep has its own view)");
    // Erasing a user with no data is not an error.
    let r = server.client.delete(server.url("/v1/users/nobody")).send().await.expect("DELETE");
    assert_eq!(r.status().as_u16(), 200);
}
