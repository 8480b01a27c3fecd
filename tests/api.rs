//! The HTTP contract: idempotency, rejections, edits, tombstones, privacy, read-your-writes,
//! SQL, Arrow IPC, frontiers and every request-level error.

use serde_json::{Value, json};

use crate::common::{Server, UPSERT, batch, steps, temp_dir};

fn codes(resp: &Value) -> Vec<(u64, String)> {
    resp["rejected"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| (r["index"].as_u64().unwrap_or(999), r["code"].as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

async fn day_sums(server: &Server, user: &str, metric: &str, epoch: u64) -> Vec<(String, f64, i64)> {
    let (status, body) =
        server.get(&format!("/v1/users/{user}/daily-rollups?metric={metric}&minEpoch={epoch}&waitMs=20000")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pending"], json!(false), "{body}");
    body["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["localDate"].as_str().unwrap_or("").to_owned(),
                r["sum"].as_f64().unwrap_or(f64::NAN),
                r["count"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_contract_and_reads() {
    let dir = temp_dir();
    let server = Server::start_with(dir.path(), &[("VITALFLOW_SQL_ROW_LIMIT", "20")]);
    server.ready().await;

    // Worked example 2a over HTTP, with the zone from the request's device zone.
    let mut body =
        batch("r-1", "u1", vec![steps("a1", "watch-1", "2024-06-01T03:50:00Z", "2024-06-01T04:30:00Z", 1200.0)]);
    body["deviceTimeZone"] = json!("America/New_York");
    body["platform"] = json!("healthkit");
    let (status, first) = server.post(UPSERT, &body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!((first["accepted"].as_u64(), first["replayed"].as_bool()), (Some(1), Some(false)));
    let e1 = first["epoch"].as_u64().expect("epoch");
    assert_eq!(
        day_sums(&server, "u1", "steps", e1).await,
        vec![("2024-05-31".into(), 300.0, 1), ("2024-06-01".into(), 900.0, 1)]
    );

    // I1: the same request again is replayed, with no side effect; a different payload is a 409.
    let (status, replay) = server.post(UPSERT, &body).await;
    assert_eq!(status, 200);
    assert_eq!(replay["replayed"], json!(true));
    assert_eq!(replay["epoch"], first["epoch"]);
    assert_eq!(replay["accepted"], first["accepted"]);
    let mut changed = body.clone();
    changed["samples"][0]["value"] = json!(1300);
    let (status, conflict) = server.post(UPSERT, &changed).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["code"], json!("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(day_sums(&server, "u1", "steps", e1).await[0].1, 300.0, "nothing applied by the 409");

    // I2: an identical sample is unchanged; a changed one is an edit.
    let (_, same) = server
        .post(UPSERT, &{
            let mut b = body.clone();
            b["requestId"] = json!("r-2");
            b
        })
        .await;
    assert_eq!((same["accepted"].as_u64(), same["unchanged"].as_u64()), (Some(0), Some(1)));
    let mut edit = changed.clone();
    edit["requestId"] = json!("r-3");
    let (_, edited) = server.post(UPSERT, &edit).await;
    assert_eq!(edited["accepted"], json!(1));
    let e3 = edited["epoch"].as_u64().expect("epoch");
    assert!(e3 > e1, "epochs increase");
    assert_eq!(
        day_sums(&server, "u1", "steps", e3).await,
        vec![("2024-05-31".into(), 325.0, 1), ("2024-06-01".into(), 975.0, 1)]
    );

    // Sync versions: a lower version is stale.
    let versioned = |req: &str, v: i64, value: f64| {
        let mut s = steps("sv", "watch-1", "2024-06-02T10:00:00Z", "2024-06-02T10:10:00Z", value);
        s["metadata"] = json!({"HKMetadataKeySyncIdentifier": "x", "HKMetadataKeySyncVersion": v});
        batch(req, "u1", vec![s])
    };
    let (_, v2) = server.post(UPSERT, &versioned("sv-2", 2, 50.0)).await;
    assert_eq!(v2["accepted"], json!(1));
    let (_, v1) = server.post(UPSERT, &versioned("sv-1", 1, 70.0)).await;
    assert_eq!((v1["accepted"].as_u64(), v1["stale"].as_u64()), (Some(0), Some(1)));

    // I3: deletions remove current rows; a tombstone blocks a later insert; unknown ids are not counted.
    let del = json!({"requestId": "d-1", "userId": "u1",
        "deletions": [{"sourceId": "watch-1", "sourceRecordId": "sv"}, {"sourceId": "watch-1", "sourceRecordId": "never-seen"}]});
    let (_, deleted) = server.post(UPSERT, &del).await;
    assert_eq!(deleted["deleted"], json!(1));
    let (_, late) = server
        .post(
            UPSERT,
            &batch(
                "late-1",
                "u1",
                vec![steps("never-seen", "watch-1", "2024-06-03T10:00:00Z", "2024-06-03T10:10:00Z", 5.0)],
            ),
        )
        .await;
    assert_eq!((late["accepted"].as_u64(), late["stale"].as_u64()), (Some(0), Some(1)));
    let e = late["epoch"].as_u64().expect("epoch");
    assert!(day_sums(&server, "u1", "steps", e).await.iter().all(|(d, _, _)| d != "2024-06-02" && d != "2024-06-03"));

    // I5: per-sample rejections with stable codes; the rest of the request applies.
    let mut bad_zone = steps("z", "w", "2024-06-01T10:00:00Z", "2024-06-01T10:00:00Z", 1.0);
    bad_zone["zoneId"] = json!("Mars/Base");
    let mut bad_class = steps("c", "w", "2024-06-01T10:00:00Z", "2024-06-01T10:00:00Z", 1.0);
    bad_class["sourceClass"] = json!("Watch");
    let mixed = batch(
        "mixed",
        "u2",
        vec![
            steps("ok", "w", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 10.0),
            json!({"sourceId": "w", "sourceRecordId": "m", "metric": "mood", "startAt": "2024-06-01T10:00:00Z", "endAt": "2024-06-01T10:00:00Z", "value": 1, "unit": "count"}),
            json!({"sourceId": "w", "sourceRecordId": "u", "metric": "steps", "startAt": "2024-06-01T10:00:00Z", "endAt": "2024-06-01T10:00:00Z", "value": 1, "unit": "STEPS"}),
            steps("i", "w", "2024-06-01T10:00:00Z", "2024-06-01T09:00:00Z", 1.0),
            steps("long", "w", "2024-06-01T10:00:00Z", "2024-06-02T10:00:01Z", 1.0),
            steps("neg", "w", "2024-06-01T10:00:00Z", "2024-06-01T10:01:00Z", -1.0),
            steps("", "w", "2024-06-01T10:00:00Z", "2024-06-01T10:01:00Z", 1.0),
            bad_zone,
            bad_class,
            json!({"sourceId": "w", "sourceRecordId": "hr", "metric": "heart_rate", "startAt": "2024-06-01T10:00:00Z", "endAt": "2024-06-01T10:00:00Z", "value": 400, "unit": "bpm"}),
        ],
    );
    let (status, mixed_resp) = server.post(UPSERT, &mixed).await;
    assert_eq!(status, 200);
    assert_eq!(mixed_resp["accepted"], json!(1));
    assert_eq!(
        codes(&mixed_resp),
        vec![
            (1, "UNKNOWN_METRIC".into()),
            (2, "UNIT_UNSUPPORTED".into()),
            (3, "INVALID_INTERVAL".into()),
            (4, "INVALID_INTERVAL".into()),
            (5, "OUT_OF_RANGE".into()),
            (6, "INVALID_ID".into()),
            (7, "INVALID_ZONE".into()),
            (8, "INVALID_SOURCE_CLASS".into()),
            (9, "OUT_OF_RANGE".into()),
        ]
    );

    // I4 and Z1 step 4: the profile's zone and privacy settings apply at ingest.
    let (status, profile) =
        server.post("/v1/users/u3/profile", &json!({"timeZone": "Asia/Tokyo", "blockedMetrics": ["heart_rate"]})).await;
    assert_eq!(status, 200, "{profile}");
    let hr = json!({"sourceId": "w", "sourceRecordId": "hr", "metric": "heart_rate", "startAt": "2024-06-01T16:00:00Z", "endAt": "2024-06-01T16:00:00Z", "value": 60, "unit": "bpm"});
    let (_, gated) = server
        .post(
            UPSERT,
            &batch("p-1", "u3", vec![hr.clone(), steps("s", "w", "2024-06-01T16:00:00Z", "2024-06-01T16:10:00Z", 7.0)]),
        )
        .await;
    assert_eq!(codes(&gated), vec![(0, "METRIC_BLOCKED".into())]);
    let e = gated["epoch"].as_u64().expect("epoch");
    assert_eq!(day_sums(&server, "u3", "steps", e).await, vec![("2024-06-02".into(), 7.0, 1)], "Tokyo date");
    server.post("/v1/users/u3/profile", &json!({"allowHealthDataUpload": false})).await;
    let (_, off) = server
        .post(UPSERT, &batch("p-2", "u3", vec![steps("s2", "w", "2024-06-01T16:00:00Z", "2024-06-01T16:10:00Z", 7.0)]))
        .await;
    assert_eq!(codes(&off), vec![(0, "PRIVACY_UPLOAD_DISABLED".into())]);

    // Request-level errors.
    let raw = |body: &'static str, ct: &'static str| {
        server.client.post(server.url(UPSERT)).header("content-type", ct).body(body).send()
    };
    let r = raw("{not json", "application/json").await.expect("send");
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.expect("json")["code"], json!("MALFORMED_JSON"));
    let r = raw(r#"{"userId": "u1"}"#, "application/json").await.expect("send");
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.expect("json")["message"].as_str().unwrap_or("").contains("requestId"));
    let r = raw(r#"{"requestId": "x", "userId": "u1"}"#, "text/plain").await.expect("send");
    assert_eq!(r.status(), 415);
    assert_eq!(r.json::<Value>().await.expect("json")["code"], json!("UNSUPPORTED_MEDIA_TYPE"));
    // A body declared larger than its route's limit is refused from its headers, before any of it
    // is sent (raw TCP: a client that kept writing would race the server's close), with the
    // route's own limit in the message and `Connection: close`.
    for (path, declared, limit) in [(UPSERT, 9 * 1024 * 1024, "8388608"), ("/v1/users/u1/profile", 70_000, "65536")] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = server.base.trim_start_matches("http://").to_owned();
        let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.expect("write the head");
        let mut answer = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(60), conn.read_to_end(&mut answer))
            .await
            .expect("the server answers without waiting for the body")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with("HTTP/1.1 413 "), "{answer}");
        assert!(head.to_ascii_lowercase().contains("\r\nconnection: close"), "{answer}");
        let resp: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        assert_eq!(resp["code"], json!("PAYLOAD_TOO_LARGE"), "{answer}");
        assert!(resp["message"].as_str().is_some_and(|m| m.ends_with(limit)), "{answer}");
    }
    let (status, bad_dz) = server
        .post(UPSERT, &{
            let mut b = batch("dz", "u1", vec![]);
            b["deviceTimeZone"] = json!("Nowhere");
            b
        })
        .await;
    assert_eq!((status, bad_dz["code"].as_str()), (400, Some("INVALID_ZONE")));
    let (status, _) = server.post("/v1/users/u1/profile", &json!({"timeZone": "Not/AZone"})).await;
    assert_eq!(status, 400);

    // SQL: read-only, one table per view, limits; Arrow IPC on request.
    let (status, q) = server
        .sql_at("SELECT user_id, metric, local_date, sum FROM daily_rollups_by_source ORDER BY user_id, local_date", e3)
        .await;
    assert_eq!(status, 200, "{q}");
    assert!(q["asOfEpoch"].as_u64().is_some_and(|a| a >= e3), "{q}");
    // u1's watch sample of worked example 2a, edited to 1300: 325 + 975 by source too.
    let u1: Vec<f64> = q["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter(|r| r["user_id"] == json!("u1") && r["metric"] == json!("steps"))
        .filter_map(|r| r["sum"].as_f64())
        .collect();
    assert_eq!(u1, vec![325.0, 975.0]);
    // A query over more rows than the limit (20 for this server) is truncated, and says so.
    let (status, limited) = server
        .sql("SELECT a.user_id FROM daily_rollups_by_source a, daily_rollups_by_source b, daily_rollups_by_source c")
        .await;
    assert_eq!(status, 200, "{limited}");
    assert_eq!((limited["rows"].as_array().map(Vec::len), limited["truncated"].as_bool()), (Some(20), Some(true)));
    for stmt in
        ["CREATE TABLE t (a INT)", "INSERT INTO daily_rollups VALUES (1)", "DROP TABLE daily_rollups", "SELEC 1"]
    {
        let (status, err) = server.sql(stmt).await;
        assert_eq!(status, 400, "{stmt}: {err}");
        assert_eq!(err["code"], json!("INVALID_SQL"));
    }
    let r = server
        .client
        .get(server.url("/v1/users/u1/daily-rollups?metric=steps"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .send()
        .await
        .expect("arrow");
    assert_eq!(r.headers()["content-type"], "application/vnd.apache.arrow.stream");
    let bytes = r.bytes().await.expect("bytes");
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None).expect("ipc");
    let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(rows, 2);

    // Bad read parameters and unknown views.
    assert_eq!(server.get("/v1/users/u1/daily-rollups?from=June").await.0, 400);
    assert_eq!(server.get("/v1/users/u1/no-such-view").await.0, 404);
    let (_, ranged) = server.get("/v1/users/u1/daily-rollups?metric=steps&from=2024-06-01&to=2024-06-01").await;
    assert_eq!(ranged["rows"].as_array().map(Vec::len), Some(1));

    // Frontiers list every view.
    let (status, f) = server.get("/v1/frontiers").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = f["views"].as_array().expect("views").iter().filter_map(|v| v["name"].as_str()).collect();
    let registered: Vec<&str> = vitalflow_dataflows::VIEWS.iter().map(|v| v.def.name).collect();
    assert_eq!(names, registered);
    assert!(names.contains(&"daily_rollups") && names.contains(&"weekly_steps"));
    assert!(f["latestEpoch"].as_u64().is_some_and(|e| e >= 1));
    assert_eq!(server.get("/healthz").await.0, 200);
    server.stop();
}
