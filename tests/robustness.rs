//! Issue 10 §2–§3 over a real server: faults are visible and fail closed (a dead worker or
//! applier turns `/readyz` 503 and stops acknowledgements, then the process exits non-zero), a
//! request that panics the writer fails alone, storage failures answer 503 and heal by
//! themselves, startup refuses a corrupted store or an unknown format version, and overload is
//! answered (`OVERLOADED`, `RATE_LIMITED`) rather than absorbed. Plus `/metrics`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Server, UPSERT, batch, start_expecting_failure, steps, temp_dir};

fn body(request_id: &str, user: &str, rec: &str, value: f64) -> Value {
    batch(request_id, user, vec![steps(rec, "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", value)])
}

async fn day_sum(server: &Server, user: &str, epoch: u64) -> (bool, Vec<f64>) {
    let (status, b) =
        server.get(&format!("/v1/users/{user}/daily-rollups?metric=steps&minEpoch={epoch}&waitMs=20000")).await;
    assert_eq!(status, 200, "{b}");
    let sums = b["rows"].as_array().map(|r| r.iter().filter_map(|x| x["sum"].as_f64()).collect()).unwrap_or_default();
    (b["pending"].as_bool().unwrap_or(true), sums)
}

async fn readyz(server: &Server) -> (u16, Value) {
    server.get("/readyz").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_panics_the_writer_fails_alone() {
    let dir = temp_dir();
    let server = Server::start_with(dir.path(), &[("VITALFLOW_FAULT_INJECTION", "1")]);
    server.ready().await;
    let (status, ok) = server.post(UPSERT, &body("r-1", "u1", "a", 100.0)).await;
    assert_eq!(status, 200, "{ok}");
    // The fault hook's requestId panics inside the writer's transaction.
    let bad = body(vitalflow_ingest::writer::FAULT_PANIC_REQUEST_ID, "u1", "b", 5000.0);
    let (status, err) = server.post(UPSERT, &bad).await;
    assert_eq!(status, 500, "{err}");
    assert_eq!(err["code"], json!("INTERNAL"));
    // The writer goes on; nothing of the failed request was applied.
    let (status, next) = server.post(UPSERT, &body("r-2", "u1", "c", 1.0)).await;
    assert_eq!(status, 200, "{next}");
    let epoch = next["epoch"].as_u64().expect("epoch");
    assert_eq!(day_sum(&server, "u1", epoch).await, (false, vec![101.0]));
    assert_eq!(readyz(&server).await.0, 200);
    let (_, metrics) = metrics_text(&server).await;
    assert!(metrics.contains("vitalflow_panics_caught_total"), "{metrics}");
}

async fn metrics_text(server: &Server) -> (u16, String) {
    let r = server.client.get(server.url("/metrics")).send().await.expect("GET /metrics");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_turns_readiness_off_stops_acks_and_exits_non_zero() {
    for component in ["worker", "applier"] {
        let dir = temp_dir();
        let server = Server::start_with(
            dir.path(),
            &[("VITALFLOW_FAULT_INJECTION", "1"), ("VITALFLOW_FATAL_EXIT_GRACE_MS", "3000")],
        );
        server.ready().await;
        let (status, _) = server.post(UPSERT, &body("r-1", "u1", "a", 100.0)).await;
        assert_eq!(status, 200);
        let (status, _) = server.post(&format!("/v1/_faults/{component}"), &json!({})).await;
        assert_eq!(status, 202);
        // Within the grace period: not ready (naming the component), not healthy, no acks.
        let mut seen = None;
        for _ in 0..40 {
            let (status, body) = readyz(&server).await;
            if status == 503 {
                seen = Some(body);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ready = seen.unwrap_or_else(|| panic!("{component}: /readyz stayed 200"));
        assert_eq!(ready["status"], json!("failed"), "{ready}");
        let want = if component == "worker" { "dataflow-worker" } else { "snapshot-applier" };
        assert!(ready["failed"].as_array().is_some_and(|a| a.contains(&json!(want))), "{ready}");
        assert_eq!(server.get("/healthz").await.0, 503);
        let (status, refused) = server.post(UPSERT, &body("r-2", "u1", "b", 1.0)).await;
        assert_eq!(status, 503, "{component}: {refused}");
        assert_eq!(refused["code"], json!("UNAVAILABLE"));
        // Then the process exits non-zero so that a supervisor restarts it.
        let exit = server.wait_exit(Duration::from_secs(30)).expect("exits after the grace period");
        assert_eq!(exit.code(), Some(70), "{component}: {exit:?}");
        // And a restart serves the acknowledged data.
        let server = Server::start(dir.path());
        server.ready().await;
        let (status, next) = server.post(UPSERT, &body("r-3", "u1", "c", 1.0)).await;
        assert_eq!(status, 200, "{next}");
        let epoch = next["epoch"].as_u64().expect("epoch");
        assert_eq!(day_sum(&server, "u1", epoch).await, (false, vec![101.0]), "{component}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_failures_answer_503_and_heal() {
    let dir = temp_dir();
    let fault = dir.path().join("storage-fault");
    let fault_path = fault.to_string_lossy().into_owned();
    let data = dir.path().join("data");
    let server = Server::start_with(&data, &[("VITALFLOW_FAULT_STORAGE", fault_path.as_str())]);
    server.ready().await;
    let (status, _) = server.post(UPSERT, &body("r-1", "u1", "a", 100.0)).await;
    assert_eq!(status, 200);
    std::fs::write(&fault, b"disk full").expect("fault file");
    let r = server.client.post(server.url(UPSERT)).json(&body("r-2", "u1", "b", 5.0)).send().await.expect("POST");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["code"], json!("STORAGE_UNAVAILABLE"));
    std::fs::remove_file(&fault).expect("heal");
    // The same request again succeeds: it was never acknowledged, so it is new.
    let (status, ok) = server.post(UPSERT, &body("r-2", "u1", "b", 5.0)).await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["replayed"], json!(false));
    let epoch = ok["epoch"].as_u64().expect("epoch");
    assert_eq!(day_sum(&server, "u1", epoch).await, (false, vec![105.0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_fails_closed_on_a_corrupt_store_or_an_unknown_version() {
    // An unknown (newer) format version.
    let dir = temp_dir();
    {
        let store = vitalflow_ingest::Store::open(dir.path()).expect("store");
        store.set_format_version(vitalflow_ingest::store::FORMAT_VERSION + 1).expect("set version");
    }
    let (status, stderr) = start_expecting_failure(dir.path(), &[]);
    let status = status.expect("exits");
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("format version"), "{stderr}");

    // A store file that is not a store.
    let dir = temp_dir();
    std::fs::write(dir.path().join("vitalflow.redb"), vec![0x5a_u8; 64 * 1024]).expect("garbage");
    let (status, stderr) = start_expecting_failure(dir.path(), &[]);
    assert!(!status.expect("exits").success(), "{stderr}");
    assert!(stderr.contains("cannot open the store"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_not_absorbed() {
    let dir = temp_dir();
    // A queue budget that holds one small body but not the 5-sample one (OVERLOADED); and a
    // per-user rate of 1 request/s with a burst of 2.
    let server = Server::start_with(
        dir.path(),
        &[("VITALFLOW_WRITER_QUEUE_BYTES", "600"), ("VITALFLOW_USER_RATE", "1"), ("VITALFLOW_USER_BURST", "2")],
    );
    server.ready().await;
    let big = batch(
        "r-big",
        "u9",
        (0..5).map(|i| steps(&format!("x{i}"), "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 1.0)).collect(),
    );
    let r = server.client.post(server.url(UPSERT)).json(&big).send().await.expect("POST");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(r.json::<Value>().await.expect("json")["code"], json!("OVERLOADED"));

    let mut limited = None;
    for i in 0..6 {
        let r = server
            .client
            .post(server.url(UPSERT))
            .json(&body(&format!("q-{i}"), "u1", "a", 1.0))
            .send()
            .await
            .expect("POST");
        if r.status().as_u16() == 429 {
            limited = Some((r.headers().get("retry-after").cloned(), r.json::<Value>().await.expect("json")));
            break;
        }
        assert_eq!(r.status().as_u16(), 200);
    }
    let (retry_after, err) = limited.expect("the sixth request within a second is rate limited");
    assert!(retry_after.is_some());
    assert_eq!(err["code"], json!("RATE_LIMITED"));
    // Another user is not limited by u1's rate.
    let (status, _) = server.post(UPSERT, &body("o-1", "u2", "a", 1.0)).await;
    assert_eq!(status, 200);
}

/// `from`/`to` on `session-impacts` select through the `sessions` view; a server that does not
/// serve it refuses them rather than answering every session's impacts as if filtered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_to_through_a_view_not_served_is_refused() {
    let dir = temp_dir();
    let server = Server::start_with(dir.path(), &[("VITALFLOW_VIEWS", "session_impacts")]);
    server.ready().await;
    let (status, b) = server.get("/v1/users/u1/session-impacts?from=2024-06-01").await;
    assert_eq!((status, &b["code"]), (400, &json!("INVALID_QUERY")), "{b}");
    assert!(b["message"].as_str().is_some_and(|m| m.contains("sessionId, metric, minEpoch")), "{b}");
    let (status, b) = server.get("/v1/users/u1/session-impacts?sessionId=s1&metric=heart_rate").await;
    assert_eq!(status, 200, "{b}");
    server.stop();
}

/// A per-user read answers at most `server.max_read_rows` rows; beyond, 422 `READ_TOO_LARGE`, and
/// a narrower read of the same user is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_over_the_row_cap_is_refused_and_a_narrower_one_answered() {
    let dir = temp_dir();
    let server = Server::start_with(dir.path(), &[("VITALFLOW_MAX_READ_ROWS", "3")]);
    server.ready().await;
    let samples = (1..=5)
        .map(|d| {
            steps(
                &format!("d{d}"),
                "watch",
                &format!("2024-06-0{d}T10:00:00Z"),
                &format!("2024-06-0{d}T10:30:00Z"),
                1.0,
            )
        })
        .collect();
    let (status, b) = server.post(UPSERT, &batch("r-1", "u1", samples)).await;
    assert_eq!(status, 200, "{b}");
    let epoch = b["epoch"].as_u64().expect("epoch");
    let (status, b) =
        server.get(&format!("/v1/users/u1/daily-rollups?metric=steps&minEpoch={epoch}&waitMs=20000")).await;
    assert_eq!(status, 422, "{b}");
    assert_eq!(b["code"], json!("READ_TOO_LARGE"));
    let (status, b) = server.get("/v1/users/u1/daily-rollups?metric=steps&from=2024-06-02&to=2024-06-04").await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["rows"].as_array().map(Vec::len), Some(3));
    // An unknown metric is a bad query, not an empty answer.
    let (status, b) = server.get("/v1/users/u1/daily-rollups?metric=nope").await;
    assert_eq!((status, &b["code"]), (400, &json!("INVALID_QUERY")), "{b}");
    // Dates are exactly YYYY-MM-DD, as the refusal says; a parameter given twice is refused.
    for query in [
        "from=2024-6-2",
        "from=%202024-06-02",
        "to=2024-06-02%0A",
        "from=-2024-06-02",
        "to=2024-02-30",
        "metric=steps&metric=heart_rate",
        "from=2024-06-02&from=2024-06-03",
        // A parameter the view does not take (a typo, another view's filter) would otherwise
        // answer unfiltered rows; a value that is not UTF-8 could match a stored U+FFFD.
        "metrc=steps",
        "sessionId=s1",
        "metric=steps&limit=10",
        "metric=%FF",
        "sourceId=%C3%28",
    ] {
        let (status, b) = server.get(&format!("/v1/users/u1/daily-rollups?{query}")).await;
        assert_eq!((status, &b["code"]), (400, &json!("INVALID_QUERY")), "{query}: {b}");
    }
    // Views without a date of their own (or one reached through another view) take no from/to.
    for path in ["/v1/users/u1/product-impacts?from=2024-06-02", "/v1/users/u1/routines?to=2024-06-02"] {
        let (status, b) = server.get(path).await;
        assert_eq!((status, &b["code"]), (400, &json!("INVALID_QUERY")), "{path}: {b}");
        assert!(b["message"].as_str().is_some_and(|m| m.contains("minEpoch")), "{path}: {b}");
    }
    // A refusal does not echo a long value back.
    let (status, b) = server.get(&format!("/v1/users/u1/daily-rollups?metric={}", "a".repeat(10_000))).await;
    assert_eq!(status, 400, "{b}");
    assert!(b["message"].as_str().is_some_and(|m| m.len() < 200), "{b}");
    // Identifiers follow DOMAIN.md §0.1 in reads as at ingest.
    let long = "x".repeat(129);
    for path in [
        format!("/v1/users/{long}/daily-rollups"),
        "/v1/users/u%01/daily-rollups".to_owned(),
        format!("/v1/users/u1/daily-rollups-by-source?sourceId={long}"),
        "/v1/users/u1/session-impacts?sessionId=".to_owned(),
    ] {
        let (status, b) = server.get(&path).await;
        assert_eq!((status, &b["code"]), (400, &json!("INVALID_ID")), "{path}: {b}");
    }
    // ... and every identifier ingest accepts is still read: `*`, 128 bytes, multibyte.
    let longest = "y".repeat(128);
    for path in [
        "/v1/users/u1/routines?scope=*".to_owned(),
        format!("/v1/users/{longest}/daily-rollups"),
        format!("/v1/users/u1/daily-rollups-by-source?sourceId={longest}"),
        "/v1/users/%C3%A9t%C3%A9/sessions?productId=caf%C3%A9".to_owned(),
    ] {
        let (status, b) = server.get(&path).await;
        assert_eq!(status, 200, "{path}: {b}");
    }
    // An unknown view's name is not echoed in full either.
    let (status, b) = server.get(&format!("/v1/users/u1/{}", "v".repeat(5_000))).await;
    assert_eq!((status, &b["code"]), (404, &json!("UNKNOWN_VIEW")), "{b}");
    assert!(b["message"].as_str().is_some_and(|m| m.len() < 200), "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exposed_without_user_ids() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    let (status, ok) = server.post(UPSERT, &body("r-1", "secret-user-7", "a", 1234.0)).await;
    assert_eq!(status, 200);
    let epoch = ok["epoch"].as_u64().expect("epoch");
    let _ = day_sum(&server, "secret-user-7", epoch).await;
    let (status, bad) = server.post(UPSERT, &json!({"requestId": "x"})).await;
    assert_eq!(status, 400, "{bad}");
    tokio::time::sleep(Duration::from_millis(400)).await; // one supervisor tick publishes gauges
    let (status, text) = metrics_text(&server).await;
    assert_eq!(status, 200);
    for name in [
        "vitalflow_http_requests_total",
        "vitalflow_http_request_duration_seconds",
        "vitalflow_ingest_refusals_total",
        "vitalflow_epoch_latest",
        "vitalflow_view_as_of_epoch",
        "vitalflow_view_lag_seconds",
        "vitalflow_writer_queue_bytes",
        "vitalflow_component_up",
        "vitalflow_process_resident_memory_bytes",
        "vitalflow_snapshot_publish_seconds",
        "vitalflow_view_visible_seconds",
        "vitalflow_view_computed_seconds",
        "vitalflow_dataflow_push_seconds",
        "vitalflow_dataflow_slow_epochs_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    // The workers' time per view (docs/operations.md, "Slow epochs"): every view ran.
    let elapsed = |account: &str| {
        let prefix = format!("vitalflow_dataflow_elapsed_seconds{{view=\"{account}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse::<f64>().ok()))
    };
    for account in ["daily_rollups", "sleep_nights", "inputs", "progress"] {
        assert!(elapsed(account).is_some_and(|s| s > 0.0), "{account}: {:?}\n{text}", elapsed(account));
    }
    // Each arrangement's size (docs/operations.md, "Arrangement sizes"): the M1 input holds the
    // sample's two 15-minute slices (10:00–10:15, 10:15–10:30).
    let slices = text
        .lines()
        .filter(|l| {
            l.starts_with("vitalflow_arrangement_records{view=\"daily_rollups\",operator=\"Arrange: M1: slice winner\",operator_id=\"")
        })
        .find_map(|l| l.rsplit(' ').next().and_then(|v| v.trim().parse::<f64>().ok()));
    assert_eq!(slices, Some(2.0), "{text}");
    assert!(!text.contains("secret-user-7"), "a user id leaked into /metrics");
    assert!(text.contains("route=\"/v1/users/{user_id}/{view}\""), "routes are templates");
    // Every answer, a refusal too, says what the server spent on it (W3C Server Timing, ms).
    for path in ["/v1/users/secret-user-7/daily-rollups?metric=steps", "/v1/users/secret-user-7/no-such-view"] {
        let r = server.client.get(server.url(path)).send().await.expect("GET");
        let timing = r.headers().get("server-timing").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let ms = timing.strip_prefix("app;dur=").and_then(|d| d.parse::<f64>().ok());
        assert!(ms.is_some_and(|ms| ms >= 0.0), "{path}: Server-Timing {timing:?}");
    }
}
