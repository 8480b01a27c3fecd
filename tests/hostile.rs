//! Issue 10 §5: hostile input over a real server. Each case is refused with its stable code (a
//! 4xx, or a rejection inside a 200), the process stays up and within its memory budget, and
//! afterwards a valid request succeeds and the views advance.

use serde_json::{Value, json};

use crate::common::{Server, UPSERT, batch, steps, temp_dir};

fn sample_with(field: &str, value: Value) -> Value {
    let mut s = steps("a", "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 10.0);
    s[field] = value;
    s
}

/// The codes of a 200 response's rejected items.
fn rejected(resp: &Value) -> Vec<String> {
    resp["rejected"]
        .as_array()
        .map(|a| a.iter().map(|r| r["code"].as_str().unwrap_or("").to_owned()).collect())
        .unwrap_or_default()
}

async fn post_raw(server: &Server, path: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let r = server
        .client
        .post(server.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_with_stable_codes_and_the_server_goes_on() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    let mut n = 0;
    let mut id = || {
        n += 1;
        format!("h-{n}")
    };

    // Zones: a multi-byte character where an offset digit belongs, an out-of-range offset, 10 kB.
    let long_zone = "A".repeat(10_000);
    for zone in ["+1é1", "+99:99", long_zone.as_str()] {
        let (status, resp) = server.post(UPSERT, &batch(&id(), "u1", vec![sample_with("zoneId", json!(zone))])).await;
        assert_eq!(status, 200, "sample zone {zone:.20}: {resp}");
        assert_eq!(rejected(&resp), vec!["INVALID_ZONE"], "sample zone {zone:.20}");
        let mut b = batch(&id(), "u1", vec![steps("a", "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 1.0)]);
        b["deviceTimeZone"] = json!(zone);
        let (status, resp) = server.post(UPSERT, &b).await;
        assert_eq!((status, resp["code"].clone()), (400, json!("INVALID_ZONE")), "device zone {zone:.20}");
        let session = json!({"requestId": id(), "changes": [{"entity": "session", "op": "upsert", "data": {
            "userId": "u1", "sessionId": "s1", "productId": "p1", "startAt": "2024-06-01T12:00:00Z",
            "endAt": "2024-06-01T12:10:00Z", "quantity": 1.0, "zoneId": zone}}]});
        let (status, resp) = server.post("/v1/domain/changes", &session).await;
        assert_eq!(status, 200, "session zone {zone:.20}: {resp}");
        assert_eq!(rejected(&resp), vec!["INVALID_ZONE"], "session zone {zone:.20}");
        let (status, resp) = server.post("/v1/users/u1/profile", &json!({"timeZone": zone})).await;
        assert_eq!((status, resp["code"].clone()), (400, json!("INVALID_ZONE")), "profile zone {zone:.20}");
    }

    // Implausible instants (DOMAIN.md G6): decades ahead, and epoch zero.
    let future = steps("f", "watch", "2090-01-01T00:00:00Z", "2090-01-01T00:10:00Z", 5.0);
    let epoch_zero = steps("z", "watch", "1970-01-01T00:00:00Z", "1970-01-01T00:10:00Z", 5.0);
    let (status, resp) = server.post(UPSERT, &batch(&id(), "u1", vec![future, epoch_zero])).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(rejected(&resp), vec!["FUTURE_TIMESTAMP", "INVALID_TIMESTAMP"]);
    let session = json!({"requestId": id(), "changes": [{"entity": "session", "op": "upsert", "data": {
        "userId": "u1", "sessionId": "s2", "productId": "p1", "startAt": "2090-06-01T12:00:00Z", "quantity": 1.0}}]});
    let (status, resp) = server.post("/v1/domain/changes", &session).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(rejected(&resp), vec!["FUTURE_TIMESTAMP"]);

    // Valid JSON nested 100 levels deep.
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let body = format!(r#"{{"requestId": "{}", "userId": "u1", "samples": [{{"metadata": {deep}}}]}}"#, id());
    let (status, resp) = post_raw(&server, UPSERT, "application/json", body.into_bytes()).await;
    assert_eq!((status, resp["code"].clone()), (400, json!("JSON_TOO_DEEP")), "{resp}");

    // 100,000 samples in one batch.
    let many =
        format!(r#"{{"requestId": "{}", "userId": "u1", "samples": [{}]}}"#, id(), vec!["{}"; 100_000].join(","));
    let (status, resp) = post_raw(&server, UPSERT, "application/json", many.into_bytes()).await;
    assert_eq!((status, resp["code"].clone()), (400, json!("TOO_MANY_SAMPLES")), "{resp}");

    // An 8 MiB metadata: beyond the body limit. A 100 kB one: the sample alone is rejected.
    let huge = batch(&id(), "u1", vec![sample_with("metadata", json!({"blob": "x".repeat(8 << 20)}))]);
    let (status, resp) = server.post(UPSERT, &huge).await;
    assert_eq!((status, resp["code"].clone()), (413, json!("PAYLOAD_TOO_LARGE")), "{resp}");
    let big = batch(&id(), "u1", vec![sample_with("metadata", json!({"blob": "x".repeat(100_000)}))]);
    let (status, resp) = server.post(UPSERT, &big).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(rejected(&resp), vec!["METADATA_TOO_LARGE"]);

    // A profile has its own, smaller body limit.
    let blocked: Vec<String> = (0..2000).map(|i| format!("metric-{i:040}")).collect();
    let (status, resp) = server.post("/v1/users/u1/profile", &json!({"blockedMetrics": blocked})).await;
    assert_eq!((status, resp["code"].clone()), (413, json!("PAYLOAD_TOO_LARGE")), "{resp}");

    // Control characters in identifiers; an overlong platform.
    let (status, resp) = server.post(UPSERT, &batch(&id(), "u\u{0}1", vec![])).await;
    assert_eq!((status, resp["code"].clone()), (400, json!("INVALID_ID")), "{resp}");
    let (status, resp) = server.post(UPSERT, &batch(&id(), "u1", vec![sample_with("sourceId", json!("w\u{7}"))])).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(rejected(&resp), vec!["INVALID_ID"]);
    let mut b = batch(&id(), "u1", vec![]);
    b["platform"] = json!("p".repeat(10_000));
    let (status, resp) = server.post(UPSERT, &b).await;
    assert_eq!((status, resp["code"].clone()), (400, json!("FIELD_TOO_LONG")), "{resp}");

    // SQL that would build gigabytes is refused, and the process stays within its budget.
    let heavy = "SELECT length(string_agg(repeat('x', 1000), '')) FROM generate_series(1, 2000000)";
    let (status, resp) = server.sql(heavy).await;
    assert!((400..500).contains(&status), "{status} {resp}");
    assert_eq!(resp["code"], json!("QUERY_TOO_EXPENSIVE"), "{resp}");
    let peak = server.peak_rss_bytes();
    assert!(peak < 1536 << 20, "peak RSS {} MiB during hostile input", peak >> 20);
    let (status, resp) = post_raw(&server, "/v1/sql", "text/plain", b"SELECT 1".to_vec()).await;
    assert_eq!((status, resp["code"].clone()), (415, json!("UNSUPPORTED_MEDIA_TYPE")), "{resp}");

    // Still healthy; a valid request succeeds and the views advance.
    assert_eq!(server.get("/readyz").await.0, 200);
    let (status, ok) = server
        .post(
            UPSERT,
            &batch(&id(), "u1", vec![steps("ok", "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 42.0)]),
        )
        .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["accepted"], json!(1));
    let epoch = ok["epoch"].as_u64().expect("epoch");
    let (status, read) =
        server.get(&format!("/v1/users/u1/daily-rollups?metric=steps&minEpoch={epoch}&waitMs=20000")).await;
    assert_eq!(status, 200);
    assert_eq!(read["pending"], json!(false), "{read}");
    assert_eq!(read["rows"][0]["sum"], json!(42.0), "{read}");
}

/// Issue 10 §2, the connection level: a client that connects and sends nothing is closed after
/// the header read timeout; probes answer while every in-flight slot is taken by waiting reads;
/// framework refusals (a path that is not UTF-8, a wrong method) and compressed bodies get JSON
/// errors with stable codes; `blockedMetrics` is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_saturation_and_framework_refusals() {
    use tokio::io::AsyncReadExt;
    let dir = temp_dir();
    let mut server = Server::start_with(
        dir.path(),
        &[("VITALFLOW_HEADER_READ_TIMEOUT_MS", "1000"), ("VITALFLOW_MAX_IN_FLIGHT", "1")],
    );
    // The server closes idle keep-alive connections after the header timeout too: no pooling, so
    // no request lands on a connection the server has just closed.
    server.client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    server.ready().await;
    let addr = server.base.trim_start_matches("http://").to_owned();

    // Connects, sends nothing: the server closes the connection (EOF), it does not hold it.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let mut buf = [0_u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "an idle connection stayed open: {read:?}");
    // Sends the first bytes of an HTTP/2 preface and stops: closed too (hyper reads the preface
    // without a timer of its own).
    use tokio::io::AsyncWriteExt;
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    stalled.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), stalled.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "a stalled HTTP/2 preface stayed open: {read:?}");

    // A read waits for an epoch that will not come, taking the one in-flight slot; a write then
    // finds no slot. (Launched again if the write took the slot first.)
    let body = batch("sat-1", "u1", vec![steps("s1", "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 5.0)]);
    let mut waiting = Vec::new();
    let start = std::time::Instant::now();
    loop {
        let (client, url) =
            (server.client.clone(), server.url("/v1/users/u1/daily-rollups?minEpoch=999999&waitMs=20000"));
        waiting.push(tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) }));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (status, resp) = server.post(UPSERT, &body).await;
        if status == 503 {
            assert_eq!(resp["code"], json!("OVERLOADED"), "{resp}");
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the in-flight cap never filled: {status} {resp}"
        );
    }
    // The API is saturated; liveness, readiness and metrics still answer.
    assert_eq!(server.get("/healthz").await.0, 200);
    assert_eq!(server.get("/readyz").await.0, 200);
    let metrics = server.client.get(server.url("/metrics")).send().await.expect("metrics");
    assert_eq!(metrics.status(), 200);
    for w in waiting {
        let _ = w.await;
    }

    // Framework refusals as JSON with stable codes.
    let (status, resp) = server.get("/v1/users/%ff/daily-rollups").await;
    assert_eq!((status, resp["code"].as_str()), (400, Some("INVALID_REQUEST")), "{resp}");
    let r = server.client.put(server.url(UPSERT)).json(&body).send().await.expect("PUT");
    assert_eq!(r.status().as_u16(), 405);
    let resp: Value = r.json().await.expect("a JSON body");
    assert_eq!(resp["code"], json!("METHOD_NOT_ALLOWED"), "{resp}");
    let r = server
        .client
        .post(server.url(UPSERT))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 415);
    let resp: Value = r.json().await.expect("a JSON body");
    assert_eq!(resp["code"], json!("UNSUPPORTED_CONTENT_ENCODING"), "{resp}");

    // Requests hyper cannot parse never reach a route; its own answer carries a JSON code too.
    let mut big_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big_header.extend(std::iter::repeat_n(b'a', 2 << 20));
    big_header.extend_from_slice(b"\r\n\r\n");
    let long_uri = [b"GET /".as_slice(), &vec![b'a'; 70_000], b" HTTP/1.1\r\nHost: x\r\n\r\n"].concat();
    for (raw, status, code) in [
        (b"POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(), 400, "MALFORMED_HTTP"),
        (b"GE\x01T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "MALFORMED_HTTP"),
        (big_header, 431, "HEADERS_TOO_LARGE"),
        (long_uri, 414, "URI_TOO_LONG"),
        // A body that cannot be read whole is a bad request; only one over the limit is too large.
        (
            b"POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
                .to_vec(),
            400,
            "INVALID_REQUEST",
        ),
        (
            [
                b"POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n30000\r\n".as_slice(),
                &vec![b' '; 0x30000],
                b"\r\n0\r\n\r\n",
            ]
            .concat(),
            413,
            "QUERY_TOO_LARGE",
        ),
    ] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        // The server may answer and close before it has read everything: a failed write is fine.
        let _ = conn.write_all(&raw).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), conn.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
        assert!(head.contains("content-type: application/json"), "{answer}");
        let resp: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        assert_eq!(resp["code"], json!(code), "{answer}");
    }

    // blockedMetrics: duplicates collapse; more than 64 distinct entries are refused.
    let many: Vec<String> = (0..65).map(|i| format!("m{i}")).collect();
    let (status, resp) = server.post("/v1/users/u1/profile", &json!({"blockedMetrics": many})).await;
    assert_eq!((status, resp["code"].as_str()), (400, Some("TOO_MANY_BLOCKED_METRICS")), "{resp}");
    let dup: Vec<&str> = std::iter::repeat_n("steps", 500).chain(["heart_rate"]).collect();
    let (status, resp) = server.post("/v1/users/u1/profile", &json!({"blockedMetrics": dup})).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["blockedMetrics"], json!(["steps", "heart_rate"]), "{resp}");

    // And the server goes on.
    let (status, resp) = server
        .post(
            UPSERT,
            &batch("sat-2", "u2", vec![steps("s2", "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 5.0)]),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
}

/// Issue 10 §2: bodies being received count against one budget for all requests together: while
/// one slow upload holds most of it, another large body is refused; once it is gone, bodies pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_share_one_budget() {
    use tokio::io::AsyncWriteExt;
    let dir = temp_dir();
    let server = Server::start_with(dir.path(), &[("VITALFLOW_MAX_BUFFERED_BODY_BYTES", "8192")]);
    server.ready().await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    // A slow client: declares 6,000 bytes and sends one. Admitted once no answer comes back at
    // once (an answer would be a refusal; then it tries again).
    let mut slow = loop {
        let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        slow.write_all(
            format!(
                "POST {UPSERT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 6000\r\n\r\n{{"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        let mut buf = [0_u8; 64];
        use tokio::io::AsyncReadExt;
        if tokio::time::timeout(std::time::Duration::from_millis(500), slow.read(&mut buf)).await.is_err() {
            break slow;
        }
    };
    let samples: Vec<Value> = (0..25)
        .map(|i| steps(&format!("b{i}"), "watch", "2024-06-01T10:00:00Z", "2024-06-01T10:30:00Z", 1.0))
        .collect();
    let body = batch("budget-1", "u1", samples);
    assert!(body.to_string().len() > 2200, "{}", body.to_string().len());
    let start = std::time::Instant::now();
    loop {
        let (status, resp) = server.post(UPSERT, &body).await;
        if status == 503 {
            assert_eq!(resp["code"], json!("OVERLOADED"), "{resp}");
            break;
        }
        // The slow request may not have reached the server yet.
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "never refused: {status} {resp}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = slow.shutdown().await;
    drop(slow);
    let start = std::time::Instant::now();
    loop {
        let (status, resp) = server.post(UPSERT, &batch("budget-2", "u1", vec![])).await;
        if status == 200 {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "the budget was not given back: {status} {resp}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
