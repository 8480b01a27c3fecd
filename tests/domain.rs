//! `POST /v1/domain/changes` end to end: idempotency, per-change rejections, the sessions,
//! products, user_profiles and routine_bins views over HTTP and SQL, and a restart keeping them.

use serde_json::{Value, json};

use crate::common::{Server, temp_dir};

const CHANGES: &str = "/v1/domain/changes";

fn session(id: &str, product: &str, start: &str) -> Value {
    json!({"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": id, "productId": product,
        "startAt": start, "endAt": null, "quantity": 1.0, "zoneId": "Europe/Berlin"}})
}

fn monday_plus_weeks(weeks: i64) -> String {
    let monday = chrono::DateTime::parse_from_rfc3339("2024-06-03T07:30:00Z").expect("instant");
    (monday + chrono::Duration::weeks(weeks)).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_changes_feed_the_domain_views_and_survive_a_restart() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    // Mondays 09:30 Berlin (07:30Z in summer) = bin 9, five times, plus one bad change.
    let mut changes: Vec<Value> = (0..5).map(|i| session(&format!("s{i}"), "p1", &monday_plus_weeks(i))).collect();
    changes.push(json!({"entity": "product", "op": "upsert", "data": {"productId": "p1", "name": "Espresso", "category": "coffee"}}));
    changes.push(json!({"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": "bad", "productId": "p1", "startAt": "soon"}}));
    changes.push(json!({"entity": "user", "op": "upsert", "data": {"userId": "u1", "timeZone": "Europe/Berlin", "allowHealthDataUpload": true, "blockedMetrics": ["spo2"]}}));
    let body = json!({"requestId": "d-1", "changes": changes});
    let (status, resp) = server.post(CHANGES, &body).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["accepted"], json!(7), "{resp}");
    assert_eq!(resp["rejected"][0]["index"], json!(6));
    assert_eq!(resp["rejected"][0]["code"], json!("INVALID_TIMESTAMP"));
    let epoch = resp["epoch"].as_u64().expect("epoch");
    let (_, replay) = server.post(CHANGES, &body).await;
    assert_eq!((replay["replayed"].as_bool(), replay["epoch"].as_u64()), (Some(true), Some(epoch)));
    let mut other = body.clone();
    other["changes"] = json!([]);
    assert_eq!(server.post(CHANGES, &other).await.0, 409);

    let (status, routines) = server.get(&format!("/v1/users/u1/routines?scope=*&minEpoch={epoch}&waitMs=20000")).await;
    assert_eq!(status, 200, "{routines}");
    assert_eq!(routines["pending"], json!(false));
    let rows = routines["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0]["bin"].as_i64(), rows[0]["count"].as_i64(), rows[0]["isPeak"].as_bool()),
        (Some(9), Some(5), Some(true))
    );

    // A cross-view join: sessions with their product's name.
    let join = "SELECT s.session_id, p.name FROM sessions s JOIN products p ON s.product_id = p.product_id ORDER BY 1";
    let (status, q) = server.sql_at(join, epoch).await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(q["rows"].as_array().map(Vec::len), Some(5));
    assert_eq!(q["rows"][0], json!({"session_id": "s0", "name": "Espresso"}));
    let (_, prof) =
        server.sql_at("SELECT time_zone, blocked_metrics FROM user_profiles WHERE user_id = 'u1'", epoch).await;
    assert_eq!(prof["rows"][0], json!({"time_zone": "Europe/Berlin", "blocked_metrics": "[\"spo2\"]"}));

    // Deletes: a session and the product.
    let del = json!({"requestId": "d-2", "changes": [
        {"entity": "session", "op": "delete", "key": {"userId": "u1", "sessionId": "s0"}},
        {"entity": "product", "op": "delete", "key": {"productId": "p1"}}]});
    let (_, d) = server.post(CHANGES, &del).await;
    assert_eq!(d["deleted"], json!(2));
    let e2 = d["epoch"].as_u64().expect("epoch");
    let (_, routines) = server.get(&format!("/v1/users/u1/routines?scope=*&minEpoch={e2}&waitMs=20000")).await;
    assert_eq!(routines["rows"][0]["count"], json!(4));
    assert_eq!(routines["rows"][0]["isPeak"], json!(false), "N = 4 < N_MIN");
    let (_, q) = server.sql_at(join, e2).await;
    assert_eq!(q["rows"], json!([]));

    server.stop();
    let server = Server::start(dir.path());
    server.ready().await;
    let (_, sessions) = server.get("/v1/users/u1/sessions").await;
    assert_eq!(sessions["rows"].as_array().map(Vec::len), Some(4));
    assert_eq!(sessions["rows"][0]["zoneId"], json!("Europe/Berlin"));
    assert_eq!(sessions["rows"][0]["endAt"], Value::Null);
    let (_, routines) = server.get("/v1/users/u1/routines?scope=p1").await;
    assert_eq!(routines["rows"][0]["count"], json!(4));
    server.stop();
}
