//! Every derived view end to end over HTTP, with late data visible through `minEpoch`: a sleep
//! sample for a night 20 days ago, a session edited after its impact was computed, a product
//! deleted; and a restart that keeps every view identical.

use serde_json::{Value, json};

use crate::common::{Server, UPSERT, temp_dir};

fn sleep(rec: &str, source: &str, class: &str, category: &str, a: &str, b: &str) -> Value {
    json!({"sourceId": source, "sourceRecordId": rec, "metric": "sleep_analysis", "category": category,
           "startAt": a, "endAt": b, "sourceClass": class})
}

fn hr(rec: &str, at: &str, v: f64) -> Value {
    json!({"sourceId": "watch", "sourceRecordId": rec, "metric": "heart_rate", "startAt": at, "endAt": at,
           "value": v, "unit": "bpm", "sourceClass": "watch"})
}

async fn epoch_of(server: &Server, path: &str, body: &Value) -> u64 {
    let (status, resp) = server.post(path, body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["rejected"], json!([]), "{resp}");
    resp["epoch"].as_u64().expect("epoch")
}

async fn rows(server: &Server, path: &str, epoch: u64) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (status, body) = server.get(&format!("{path}{sep}minEpoch={epoch}&waitMs=20000")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending"], json!(false), "{body}");
    body["rows"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_views_over_http_with_late_data_and_restart() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    let user = "/v1/users/u1";

    // Worked example 3 (America/New_York), uploaded as the phones would.
    let w = |rec: &str, cat: &str, a: &str, b: &str| {
        sleep(rec, "W", "watch", cat, &format!("2024-06-02T{a}:00Z"), &format!("2024-06-02T{b}:00Z"))
    };
    let night = json!({"requestId": "n-1", "userId": "u1", "deviceTimeZone": "America/New_York", "samples": [
        w("1", "asleepCore", "03:05", "04:30"), w("2", "asleepDeep", "04:30", "05:15"), w("3", "asleepCore", "05:15", "06:40"),
        w("4", "awake", "06:40", "06:55"), w("5", "asleepREM", "06:55", "07:40"), w("6", "asleepCore", "07:40", "09:10"),
        w("7", "asleepCore", "09:50", "10:30"), w("8", "awake", "10:30", "10:40"), w("9", "asleepREM", "10:40", "11:00"),
        w("10", "asleepCore", "18:00", "18:35"),
        sleep("ib", "P", "phone", "inBed", "2024-06-02T02:45:00Z", "2024-06-02T11:10:00Z"),
        sleep("r1", "R", "ring", "SLEEPING", "2024-06-02T03:20:00Z", "2024-06-02T10:50:00Z")]});
    let e = epoch_of(&server, UPSERT, &night).await;
    let nights = rows(&server, &format!("{user}/sleep-nights?from=2024-06-02&to=2024-06-02"), e).await;
    assert_eq!(nights.len(), 2);
    assert_eq!(
        (nights[0]["totalAsleepMin"].as_f64(), nights[0]["wasoMin"].as_f64(), nights[0]["isMain"].as_bool()),
        (Some(410.0), Some(65.0), Some(true))
    );
    assert_eq!((nights[1]["totalAsleepMin"].as_f64(), nights[1]["isMain"].as_bool()), (Some(35.0), Some(false)));

    // Late data: a night 20 days earlier arrives now; it adds exactly one row.
    let late = json!({"requestId": "n-2", "userId": "u1", "deviceTimeZone": "America/New_York",
        "samples": [sleep("old", "W", "watch", "asleepCore", "2024-05-13T03:00:00Z", "2024-05-13T10:00:00Z")]});
    let e = epoch_of(&server, UPSERT, &late).await;
    let all = rows(&server, &format!("{user}/sleep-nights"), e).await;
    assert_eq!(all.len(), 3);
    assert_eq!((all[0]["nightDate"].as_str(), all[0]["totalAsleepMin"].as_f64()), (Some("2024-05-13"), Some(420.0)));

    // A session with heart rate around it, then an edit after its impact was computed.
    let domain = |req: &str, start: &str, end: &str| {
        json!({"requestId": req, "changes": [
            {"entity": "product", "op": "upsert", "data": {"productId": "p1", "name": "Espresso"}},
            {"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": "s1", "productId": "p1",
                "startAt": start, "endAt": end, "quantity": 2.0}}]})
    };
    let hrs = json!({"requestId": "h-1", "userId": "u1", "samples": [
        hr("h1", "2024-06-10T11:30:00Z", 60.0), hr("h2", "2024-06-10T12:10:00Z", 75.0), hr("h3", "2024-06-10T13:00:00Z", 90.0)]});
    epoch_of(&server, UPSERT, &hrs).await;
    let e =
        epoch_of(&server, "/v1/domain/changes", &domain("d-1", "2024-06-10T12:00:00Z", "2024-06-10T12:30:00Z")).await;
    let impact = rows(&server, &format!("{user}/session-impacts?sessionId=s1"), e).await;
    assert_eq!(impact.len(), 1);
    assert_eq!((impact[0]["deltaDuring"].as_f64(), impact[0]["deltaAfter"].as_f64()), (Some(15.0), Some(30.0)));
    let e =
        epoch_of(&server, "/v1/domain/changes", &domain("d-2", "2024-06-10T12:00:00Z", "2024-06-10T13:30:00Z")).await;
    let impact = rows(&server, &format!("{user}/session-impacts?sessionId=s1"), e).await;
    assert_eq!((impact[0]["duringN"].as_i64(), impact[0]["duringMean"].as_f64()), (Some(2), Some(82.5)));
    assert_eq!(impact[0]["afterN"], json!(0), "{impact:?}");
    // `from`/`to` select impacts by their session's local start date (the session has no zone here:
    // UTC), and sessions by their start date.
    let within = rows(&server, &format!("{user}/session-impacts?from=2024-06-10&to=2024-06-10"), e).await;
    assert_eq!(within.len(), 1);
    assert!(rows(&server, &format!("{user}/session-impacts?from=2024-06-11"), e).await.is_empty());
    assert!(rows(&server, &format!("{user}/session-impacts?to=2024-06-09"), e).await.is_empty());
    assert_eq!(rows(&server, &format!("{user}/sessions?from=2024-06-10&to=2024-06-10"), e).await.len(), 1);
    assert!(rows(&server, &format!("{user}/sessions?from=2024-06-11"), e).await.is_empty());
    let product = rows(&server, &format!("{user}/product-impacts?productId=p1"), e).await;
    assert_eq!((product[0]["sessionCount"].as_i64(), product[0]["totalQuantity"].as_f64()), (Some(1), Some(2.0)));
    assert_eq!(product[0]["deltaDuringMean"].as_f64(), Some(22.5));

    // Deleting the product removes it from `products` (and joins), not from product_impacts.
    let del =
        json!({"requestId": "d-3", "changes": [{"entity": "product", "op": "delete", "key": {"productId": "p1"}}]});
    let e = epoch_of(&server, "/v1/domain/changes", &del).await;
    assert_eq!(rows(&server, &format!("{user}/product-impacts"), e).await.len(), 1);
    let (_, q) = server
        .post("/v1/sql", &json!({"sql": "SELECT count(*) AS n FROM products", "minEpoch": e, "waitMs": 20000}))
        .await;
    assert!(q["asOfEpoch"].as_u64().is_some_and(|a| a >= e), "{q}");
    assert_eq!(q["rows"][0]["n"], json!(0));

    let views =
        ["sleep-nights", "session-impacts", "product-impacts", "routines", "sessions", "daily-rollups", "weekly-steps"];
    let mut before = Vec::new();
    for v in views {
        before.push(rows(&server, &format!("{user}/{v}"), e).await);
    }
    server.stop();
    let server = Server::start(dir.path());
    server.ready().await;
    for (v, want) in views.iter().zip(before) {
        assert_eq!(rows(&server, &format!("{user}/{v}"), e).await, want, "{v} after restart");
    }
    server.stop();
}
