//! Kafka and PostgreSQL for real (no mocks): the services come from `.ci/services.sh`, which
//! exports `KAFKA_BROKERS`, `DATABASE_URL` and `VITALFLOW_TEST_PG_CTL`. Without them these tests skip
//! with a message, except under `CI=true`, where a missing service fails them. Every test makes its
//! own topics and database with unique names, so reruns against long-lived services never collide.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tokio_postgres::NoTls;

use crate::common::{Server, UPSERT, temp_dir};
use crate::fitbit::{batches, daily_sums, hourly, read_days};

/// Tests that stop Postgres must not overlap the others that use it.
static POSTGRES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The variable's value; `None` (skip) when unset, a failure when unset under `CI=true`.
fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "{var} is not set under CI=true: the service-backed tests must run (.ci/services.sh starts them)"
            );
            eprintln!("skipped: {var} is not set; run `.ci/services.sh start` and source its env file to enable");
            None
        }
    }
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("vf_{tag}_{}_{}", std::process::id(), nanos % 1_000_000_000_000)
}

/// A new database on the server of `base_url`; returns its URL.
async fn fresh_database(base_url: &str, tag: &str) -> String {
    let (client, conn) = tokio_postgres::connect(base_url, NoTls).await.expect("connect to DATABASE_URL");
    tokio::spawn(conn);
    let name = unique(tag);
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
    let (prefix, _) = base_url.rsplit_once('/').expect("DATABASE_URL ends in /dbname");
    format!("{prefix}/{name}")
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let new: Vec<NewTopic<'_>> = topics.iter().map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1))).collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await.expect("create topics") {
        r.expect("topic created");
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new().set("bootstrap.servers", brokers).set("message.timeout.ms", "30000").create().expect("producer")
}

async fn produce(p: &FutureProducer, topic: &str, key: &str, payload: &[u8]) {
    p.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(30)).await.expect("delivered");
}

async fn frontiers(server: &Server) -> Value {
    server.get("/v1/frontiers").await.1
}

/// Polls `/v1/frontiers` until `done` holds (or panics after `secs`).
async fn wait_frontiers(server: &Server, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let f = frontiers(server).await;
        if done(&f) {
            return f;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}: {f}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kafka_caught_up(f: &Value, partitions: usize) -> bool {
    let parts = f["sources"]["kafka"]["partitions"].as_array().cloned().unwrap_or_default();
    parts.len() >= partitions
        && parts.iter().all(|p| p["lag"] == json!(0) && p["storedOffset"] == p["highWatermark"])
        && f["views"].as_array().is_some_and(|v| v.iter().all(|v| v["asOfEpoch"] == f["latestEpoch"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_exactly_once_across_a_kill_with_dead_letters() {
    let Some(brokers) = service("KAFKA_BROKERS") else { return };
    let samples_topic = unique("samples");
    let domain_topic = unique("domain");
    let dlq = unique("dlq");
    create_topics(&brokers, &[(&samples_topic, 3), (&domain_topic, 1), (&dlq, 1)]).await;

    // The Fitbit hourly steps of every user, in batches of 500, keyed by user.
    let steps: Vec<_> = hourly("hourlySteps_merged.csv");
    let bodies = batches(&steps, "steps", "count", "k");
    let p = producer(&brokers);
    let mut malformed = Vec::new(); // (key, reason)
    for (i, b) in bodies.iter().enumerate() {
        let user = b["userId"].as_str().unwrap_or("");
        produce(&p, &samples_topic, user, b.to_string().as_bytes()).await;
        if i % 7 == 3 {
            let key = format!("bad-json-{i}");
            produce(&p, &samples_topic, &key, b"{\"requestId\": ").await;
            malformed.push((key, "MALFORMED_JSON"));
        }
        if i == 10 {
            let key = "too-large".to_owned();
            produce(&p, &samples_topic, &key, &vec![b' '; 300_000]).await;
            malformed.push((key, "PAYLOAD_TOO_LARGE"));
        }
        if i % 11 == 5 {
            let key = format!("unknown-field-{i}");
            let mut extra = b.clone();
            extra["requestId"] = json!(format!("x-{i}"));
            extra["surprise"] = json!(true);
            produce(&p, &samples_topic, &key, extra.to_string().as_bytes()).await;
            malformed.push((key, "INVALID_REQUEST"));
        }
    }
    // The same requestId with another payload, after the original in the same partition (same
    // key): refused as over HTTP (409), so dead-lettered.
    let mut reused = bodies[0].clone();
    reused["samples"][0]["value"] = json!(999_999);
    let reused_key = bodies[0]["userId"].as_str().unwrap_or("").to_owned();
    produce(&p, &samples_topic, &reused_key, reused.to_string().as_bytes()).await;
    malformed.push((reused_key, "IDEMPOTENCY_KEY_REUSED"));
    let product = json!({"requestId": "d-1", "changes": [
        {"entity": "product", "op": "upsert", "data": {"productId": "p1", "name": "Espresso", "category": "coffee"}}]});
    produce(&p, &domain_topic, "p1", product.to_string().as_bytes()).await;

    let dir = temp_dir();
    let group = unique("group");
    let env = [
        ("VITALFLOW_KAFKA_BROKERS", brokers.as_str()),
        ("VITALFLOW_KAFKA_GROUP_ID", group.as_str()),
        ("VITALFLOW_KAFKA_SAMPLES_TOPIC", samples_topic.as_str()),
        ("VITALFLOW_KAFKA_DOMAIN_TOPIC", domain_topic.as_str()),
        ("VITALFLOW_KAFKA_DEAD_LETTER_TOPIC", dlq.as_str()),
        ("VITALFLOW_KAFKA_MAX_POLL_RECORDS", "1"),
        ("VITALFLOW_KAFKA_MAX_MESSAGE_BYTES", "250000"),
        // Small enough that the views' lag can pause consumption (not asserted: timing-dependent).
        ("VITALFLOW_KAFKA_MAX_LAG_EPOCHS", "4"),
        ("VITALFLOW_KAFKA_PROPERTIES", "session.timeout.ms=6000"),
    ];
    let server = Server::start_with(dir.path(), &env);
    server.ready().await;
    // Kill it abruptly once consumption is under way but not finished.
    let total: u64 = (bodies.len() + malformed.len()) as u64;
    let start = Instant::now();
    let consumed = loop {
        let n = frontiers(&server).await["sources"]["kafka"]["consumed"].as_u64().unwrap_or(0);
        if n > 0 {
            break n;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "consumption did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    server.kill();
    assert!(consumed < total, "killed mid-consumption ({consumed} of {total} records)");

    let server = Server::start_with(dir.path(), &env);
    server.ready().await;
    let f = wait_frontiers(&server, 180, "the topics to be consumed", |f| kafka_caught_up(f, 4)).await;
    // Exactly once: after the restart no body turned out to be one applied before the kill.
    assert_eq!(f["sources"]["kafka"]["replayed"], json!(0), "{f}");
    let latest = f["latestEpoch"].as_u64().unwrap_or(0);
    let expected = daily_sums(&steps);
    let users: BTreeSet<&String> = steps.iter().map(|(u, _, _)| u).collect();
    for user in users {
        let (_, days) = read_days(&server, user, "steps", latest).await;
        for ((u, date), sum) in expected.iter().filter(|((u, _), _)| u == user) {
            let got = days.get(date).map_or(f64::NAN, |d| d.0);
            assert!((got - sum).abs() < 1e-6, "{u} {date}: {got} != {sum}");
            assert_eq!(days[date].1, steps.iter().filter(|(x, s, _)| x == u && &s[..10] == date).count() as i64);
        }
        assert_eq!(days.len(), expected.keys().filter(|(u, _)| u == user).count());
    }
    let (_, products) = server.sql_at("SELECT name FROM products", latest).await;
    assert_eq!(products["rows"], json!([{"name": "Espresso"}]));

    // The consumer group's committed offsets follow the store (for the usual lag tools).
    let stored: BTreeMap<i32, i64> = f["sources"]["kafka"]["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .filter(|p| p["topic"] == json!(samples_topic))
        .map(|p| (p["partition"].as_i64().unwrap_or(-1) as i32, p["storedOffset"].as_i64().unwrap_or(-1)))
        .collect();
    let group_reader: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", &group).create().expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in stored.keys() {
        tpl.add_partition(&samples_topic, *p);
    }
    let start = Instant::now();
    loop {
        let committed: BTreeMap<i32, i64> = group_reader
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .expect("committed offsets")
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset().to_raw().unwrap_or(-1)))
            .collect();
        if committed == stored {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "group offsets {committed:?} != stored {stored:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every malformed record is in the dead-letter topic, with its reason and origin.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&dlq]).expect("subscribe");
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    let start = Instant::now();
    while seen.len() < malformed.len() && start.elapsed() < Duration::from_secs(60) {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else { continue };
        let m = m.expect("dead letter");
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let headers: BTreeMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(headers.get("original-topic"), Some(&samples_topic), "{headers:?}");
        assert!(headers.contains_key("original-partition") && headers.contains_key("original-offset"));
        seen.insert(key, (headers.get("reason").cloned().unwrap_or_default(), headers["original-offset"].clone()));
    }
    let want: BTreeMap<String, String> = malformed.iter().map(|(k, r)| (k.clone(), (*r).to_owned())).collect();
    let got: BTreeMap<String, String> = seen.into_iter().map(|(k, (r, _))| (k, r)).collect();
    assert_eq!(got, want);
    server.stop();
}

/// Rows of a Postgres table as JSON objects keyed like the SQL API's (snake_case), sorted.
async fn pg_rows(client: &tokio_postgres::Client, table: &str) -> Vec<Value> {
    let rows = client
        .query(&format!("SELECT to_jsonb(t)::text FROM \"{table}\" t"), &[])
        .await
        .unwrap_or_else(|e| panic!("read {table}: {e}"));
    let mut out: Vec<Value> =
        rows.iter().map(|r| normalize(&serde_json::from_str(r.get::<_, &str>(0)).expect("json"))).collect();
    out.sort_by_key(|v| v.to_string());
    out
}

/// Makes the two JSON renderings comparable: instants to epoch milliseconds, floats rounded.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), normalize(v))).collect()),
        Value::String(s) if s.len() > 10 && s.as_bytes().get(10) == Some(&b'T') => {
            chrono::DateTime::parse_from_rfc3339(s).map_or_else(|_| v.clone(), |t| json!(t.timestamp_millis()))
        }
        Value::Number(n) if n.is_f64() => json!((n.as_f64().unwrap_or(0.0) * 1e9).round() / 1e9),
        Value::Number(n) => json!((n.as_f64().unwrap_or(0.0) * 1e9).round() / 1e9),
        other => other.clone(),
    }
}

/// Waits until every view's table records the view's current epoch, then compares each table with
/// the view read through SQL at that epoch.
async fn assert_tables_equal_views(server: &Server, client: &tokio_postgres::Client) -> u64 {
    let f = wait_frontiers(server, 120, "the sink to catch up", |f| {
        let latest = &f["latestEpoch"];
        f["views"].as_array().is_some_and(|v| v.iter().all(|v| &v["asOfEpoch"] == latest))
            && f["sinks"]["postgres"]["views"]
                .as_array()
                .is_some_and(|v| !v.is_empty() && v.iter().all(|v| &v["asOfEpoch"] == latest))
    })
    .await;
    let latest = f["latestEpoch"].as_u64().unwrap_or(0);
    let progress: BTreeMap<String, i64> = client
        .query("SELECT view, as_of_epoch FROM vitalflow_progress", &[])
        .await
        .expect("progress table")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let tables: BTreeMap<String, String> = f["sinks"]["postgres"]["views"]
        .as_array()
        .expect("sink views")
        .iter()
        .map(|v| (v["name"].as_str().unwrap_or("").to_owned(), v["table"].as_str().unwrap_or("").to_owned()))
        .collect();
    // DOMAIN.md §8: the original projections keep the original backend's table names.
    assert_eq!(tables["daily_rollups"], "user_health_rollup_day");
    assert_eq!(tables["sleep_nights"], "user_sleep_night_summary");
    assert_eq!(tables["session_impacts"], "user_session_impact_summary");
    assert_eq!(tables["product_impacts"], "user_product_impact_rollup");
    assert_eq!(tables["weekly_steps"], "weekly_steps");
    for view in f["views"].as_array().expect("views") {
        let name = view["name"].as_str().expect("name");
        assert_eq!(progress.get(name), Some(&(latest as i64)), "{name} progress");
        let (status, body) = server.sql_at(&format!("SELECT * FROM {name}"), latest).await;
        assert_eq!(status, 200, "{body}");
        let mut want: Vec<Value> = body["rows"].as_array().expect("rows").iter().map(normalize).collect();
        want.sort_by_key(|v| v.to_string());
        let got = pg_rows(client, &tables[name]).await;
        assert_eq!(got.len(), want.len(), "{name}: row count");
        assert_eq!(got, want, "{name}: rows at epoch {latest}");
    }
    latest
}

fn pg_ctl(args: &str) {
    let ctl = std::env::var("VITALFLOW_TEST_PG_CTL").expect("VITALFLOW_TEST_PG_CTL");
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{ctl} {args}"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("pg_ctl");
    assert!(status.success(), "pg_ctl {args}");
}

fn domain_body(request_id: &str, user: &str) -> Value {
    json!({"requestId": request_id, "changes": [
        {"entity": "product", "op": "upsert", "data": {"productId": "p1", "name": "Espresso", "category": "coffee"}},
        {"entity": "session", "op": "upsert", "data": {"userId": user, "sessionId": "s1", "productId": "p1",
            "startAt": "2016-04-13T09:00:00Z", "endAt": "2016-04-13T09:30:00Z", "zoneId": "UTC"}},
        {"entity": "user", "op": "upsert", "data": {"userId": user, "timeZone": "UTC", "allowHealthDataUpload": true,
            "blockedMetrics": []}}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_sink_tables_equal_the_views_across_restarts() {
    let Some(base) = service("DATABASE_URL") else { return };
    // The outage part stops and starts that server: it needs the pg_ctl command for it.
    let Some(_) = service("VITALFLOW_TEST_PG_CTL") else { return };
    let _serial = POSTGRES.lock().await;
    let url = fresh_database(&base, "sink").await;
    let dir = temp_dir();
    let env = [("VITALFLOW_SINK_POSTGRES_URL", url.as_str()), ("VITALFLOW_SQL_ROW_LIMIT", "1000000")];
    let steps: Vec<_> = hourly("hourlySteps_merged.csv").into_iter().filter(|(u, _, _)| u.as_str() < "2").collect();
    let bodies = batches(&steps, "steps", "count", "pg");
    let user = steps[0].0.clone();
    let (first, rest) = bodies.split_at(bodies.len() / 2);

    let server = Server::start_with(dir.path(), &env);
    server.ready().await;
    for b in first {
        assert_eq!(server.post(UPSERT, b).await.0, 200);
    }
    assert_eq!(server.post("/v1/domain/changes", &domain_body("d1", &user)).await.0, 200);
    let client = pg(&url).await;
    let e1 = assert_tables_equal_views(&server, &client).await;
    // The first load of each table went through COPY (a full load), later epochs incrementally.
    let f = frontiers(&server).await;
    let loads: Vec<u64> = f["sinks"]["postgres"]["views"]
        .as_array()
        .expect("sink views")
        .iter()
        .map(|v| v["fullLoads"].as_u64().unwrap_or(0))
        .collect();
    assert!(loads.iter().all(|n| *n == 1), "one full load per table: {loads:?}");

    // Edits and deletions move rows out as well as in.
    let mut edit = bodies[0].clone();
    edit["requestId"] = json!("pg-edit");
    edit["samples"] = json!([edit["samples"][0].clone()]);
    edit["samples"][0]["value"] = json!(4242);
    edit["deletions"] = json!([{"sourceId": "fitbit", "sourceRecordId": bodies[0]["samples"][1]["sourceRecordId"]}]);
    assert_eq!(server.post(UPSERT, &edit).await.0, 200);
    let delete = json!({"requestId": "d2", "changes": [{"entity": "session", "op": "delete", "key": {"userId": user, "sessionId": "s1"}}]});
    assert_eq!(server.post("/v1/domain/changes", &delete).await.0, 200);
    let e2 = assert_tables_equal_views(&server, &client).await;
    assert!(e2 > e1);
    let f = frontiers(&server).await;
    assert!(
        f["sinks"]["postgres"]["views"].as_array().is_some_and(|v| v.iter().all(|v| v["fullLoads"] == json!(1))),
        "edits were written as differences, not reloads: {f}"
    );

    // A restart of vitalflow: the sink reconciles from the progress table and carries on.
    server.kill();
    let server = Server::start_with(dir.path(), &env);
    server.ready().await;
    for b in rest {
        assert_eq!(server.post(UPSERT, b).await.0, 200);
    }
    let e3 = assert_tables_equal_views(&server, &client).await;
    assert!(e3 > e2);

    // A Postgres outage: ingestion and reads go on, the sink's lag shows, and it catches up.
    drop(client);
    pg_ctl("-m fast stop");
    assert_eq!(server.post("/v1/domain/changes", &domain_body("d3", &user)).await.0, 200);
    let mut more = bodies[1].clone();
    more["requestId"] = json!("pg-outage");
    more["samples"][0]["value"] = json!(7);
    let (status, resp) = server.post(UPSERT, &more).await;
    assert_eq!(status, 200, "ingestion goes on without Postgres");
    let during = resp["epoch"].as_u64().unwrap_or(0);
    let (status, _) = server.get(&format!("/v1/users/{user}/daily-rollups?minEpoch={during}&waitMs=20000")).await;
    assert_eq!(status, 200, "reads go on without Postgres");
    let f = wait_frontiers(&server, 30, "the sink to notice the outage", |f| {
        f["sinks"]["postgres"]["connected"] == json!(false)
            || f["sinks"]["postgres"]["views"]
                .as_array()
                .is_some_and(|v| v.iter().any(|v| v["lagEpochs"].as_u64() > Some(0)))
    })
    .await;
    assert!(f["sinks"]["postgres"]["views"].as_array().is_some());
    pg_ctl("start");
    let client = pg(&url).await;
    let e4 = assert_tables_equal_views(&server, &client).await;
    assert!(e4 >= during);

    // Erasure (issue 11 §3): the sink tables hold none of the user's rows after the erasure epoch.
    let r = server.client.delete(server.url(&format!("/v1/users/{user}"))).send().await.expect("DELETE");
    assert_eq!(r.status().as_u16(), 200);
    let erased: Value = r.json().await.expect("json");
    let e5 = assert_tables_equal_views(&server, &client).await;
    assert!(e5 >= erased["epoch"].as_u64().unwrap_or(u64::MAX));
    for table in ["user_health_rollup_day", "user_session_impact_summary", "daily_rollups_by_source", "sessions"] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM \"{table}\" WHERE user_id = $1"), &[&user])
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"))
            .get(0);
        assert_eq!(n, 0, "{table} still holds rows of the erased user");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_rows_appear_exactly_once_across_a_restart() {
    let Some(base) = service("DATABASE_URL") else { return };
    let _serial = POSTGRES.lock().await;
    let url = fresh_database(&base, "outbox").await;
    let backend = pg(&url).await;
    backend
        .batch_execute(
            "CREATE TABLE outbox (id bigserial PRIMARY KEY, event_type text NOT NULL, payload jsonb NOT NULL)",
        )
        .await
        .expect("outbox table");
    let steps: Vec<_> = hourly("hourlySteps_merged.csv").into_iter().filter(|(u, _, _)| u.as_str() < "2").collect();
    let bodies = batches(&steps, "steps", "count", "ob");
    let (first, rest) = bodies.split_at(bodies.len() / 2);
    let user = steps[0].0.clone();

    // The backend writes its events in one transaction, mixed with events that are not ours.
    let insert = "INSERT INTO outbox (event_type, payload) VALUES ($1, $2::text::jsonb)";
    let txn_rows = |bodies: &[Value]| {
        let mut rows: Vec<(String, String)> =
            bodies.iter().map(|b| ("health.samples.batch".to_owned(), b.to_string())).collect();
        rows.push(("billing.invoice".into(), "{\"n\": 1}".into()));
        rows
    };
    let mut first_rows = txn_rows(first);
    first_rows.push(("domain.changes".into(), domain_body("ob-d1", &user).to_string()));
    first_rows.push(("health.samples.batch".into(), "{\"requestId\": 1}".into())); // malformed
    {
        let mut c = pg(&url).await;
        let t = c.transaction().await.expect("txn");
        for (ty, payload) in &first_rows {
            t.execute(insert, &[ty, payload]).await.expect("insert");
        }
        t.commit().await.expect("commit");
    }
    let dir = temp_dir();
    let env = [("VITALFLOW_OUTBOX_URL", url.as_str())];
    let server = Server::start_with(dir.path(), &env);
    server.ready().await;
    let n1 = first_rows.len() as i64;
    let f = wait_frontiers(&server, 60, "the outbox to be read", |f| {
        f["sources"]["postgresOutbox"]["storedId"] == json!(n1)
    })
    .await;
    assert_eq!(f["sources"]["postgresOutbox"]["applied"], json!(n1));
    assert_eq!(f["sources"]["postgresOutbox"]["malformed"], json!(1));
    let (_, sessions) = server.sql_at("SELECT session_id FROM sessions", f["latestEpoch"].as_u64().unwrap_or(0)).await;
    assert_eq!(sessions["rows"], json!([{"session_id": "s1"}]));

    // Transactions commit out of id order: a row behind an open transaction is held back until
    // that transaction commits, so it is not skipped.
    let mut open = pg(&url).await;
    let held = open.transaction().await.expect("txn");
    held.execute(insert, &[&"health.samples.batch", &rest[0].to_string()]).await.expect("insert");
    server.kill();
    let server = Server::start_with(dir.path(), &env);
    server.ready().await;
    for b in &rest[1..] {
        backend.execute(insert, &[&"health.samples.batch", &b.to_string()]).await.expect("insert");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let f = frontiers(&server).await;
    assert_eq!(f["sources"]["postgresOutbox"]["storedId"], json!(n1), "nothing passes the open transaction: {f}");
    held.commit().await.expect("commit");
    let last = n1 + rest.len() as i64;
    let f = wait_frontiers(&server, 60, "the rest of the outbox", |f| {
        f["sources"]["postgresOutbox"]["storedId"] == json!(last)
            && f["views"].as_array().is_some_and(|v| v.iter().all(|v| v["asOfEpoch"] == f["latestEpoch"]))
    })
    .await;
    // Exactly once: after the restart only the new rows were applied.
    assert_eq!(f["sources"]["postgresOutbox"]["applied"], json!(rest.len()));
    let latest = f["latestEpoch"].as_u64().unwrap_or(0);
    let expected = daily_sums(&steps);
    let users: BTreeSet<&String> = steps.iter().map(|(u, _, _)| u).collect();
    for u in users {
        let (_, days) = read_days(&server, u, "steps", latest).await;
        for ((_, date), sum) in expected.iter().filter(|((x, _), _)| x == u) {
            assert!((days[date].0 - sum).abs() < 1e-6, "{u} {date}");
        }
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_never_touches_a_table_it_did_not_create() {
    let Some(base) = service("DATABASE_URL") else { return };
    let _serial = POSTGRES.lock().await;
    let url = fresh_database(&base, "foreign").await;
    let backend = pg(&url).await;
    backend
        .batch_execute(
            "CREATE TABLE products (id int PRIMARY KEY, label text); INSERT INTO products VALUES (1, 'mine')",
        )
        .await
        .expect("the backend's own products table");
    let dir = temp_dir();
    let server = Server::start_with(dir.path(), &[("VITALFLOW_SINK_POSTGRES_URL", url.as_str())]);
    server.ready().await;
    let f = wait_frontiers(&server, 30, "the sink to refuse the table", |f| {
        f["sinks"]["postgres"]["lastError"].as_str().is_some_and(|e| e.contains("exists with other columns"))
    })
    .await;
    assert!(f["sinks"]["postgres"]["lastError"].as_str().is_some_and(|e| e.contains("products")), "{f}");
    let rows = backend.query("SELECT label FROM products", &[]).await.expect("still there");
    assert_eq!(rows.len(), 1, "the backend's rows are untouched");
    server.stop();
}

/// Sum of every steps value the server's views hold (`None` while SQL is not answering).
async fn steps_total(server: &Server) -> Option<f64> {
    let (status, body) = server.sql("SELECT sum(sum) AS total FROM daily_rollups_by_source").await;
    if status != 200 {
        return None;
    }
    Some(body["rows"][0]["total"].as_f64().unwrap_or(0.0))
}

async fn wait_total(server: &Server, secs: u64, what: &str, done: impl Fn(f64) -> bool) -> f64 {
    let start = Instant::now();
    loop {
        let total = steps_total(server).await.unwrap_or(-1.0);
        if done(total) {
            return total;
        }
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}: total {total}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Produces one batch-upsert record per user (keyed by user, so spread over the partitions), one
/// steps sample each with a distinct value; returns the sum of the values.
async fn produce_round(p: &FutureProducer, topic: &str, round: u32) -> f64 {
    let mut total = 0.0;
    for u in 0..8_u32 {
        let user = format!("hand-u{u}");
        let value = f64::from(round * 100 + u + 1);
        total += value;
        let hour = 8 + round;
        let sample = crate::common::steps(
            &format!("r{round}-{u}"),
            "com.example.watch",
            &format!("2024-03-04T{hour:02}:00:00Z"),
            &format!("2024-03-04T{hour:02}:30:00Z"),
            value,
        );
        let body = crate::common::batch(&format!("hand-{round}-{u}"), &user, vec![sample]);
        produce(p, topic, &user, body.to_string().as_bytes()).await;
    }
    total
}

/// Issue 10 §3: on every partition assignment the consumer starts at the offset stored with the
/// rows, not at the group's committed offset. A new data directory in an existing group reads the
/// topic from the beginning; a partition that comes back from a second instance (which consumed and
/// committed further in its own store) resumes where this instance's store stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_assignment_starts_at_the_store_not_the_group() {
    let Some(brokers) = service("KAFKA_BROKERS") else { return };
    let samples_topic = unique("handover");
    let domain_topic = unique("handover_domain");
    create_topics(&brokers, &[(&samples_topic, 2), (&domain_topic, 1)]).await;
    let group = unique("handover_group");
    let env = [
        ("VITALFLOW_KAFKA_BROKERS", brokers.as_str()),
        ("VITALFLOW_KAFKA_GROUP_ID", group.as_str()),
        ("VITALFLOW_KAFKA_SAMPLES_TOPIC", samples_topic.as_str()),
        ("VITALFLOW_KAFKA_DOMAIN_TOPIC", domain_topic.as_str()),
        ("VITALFLOW_KAFKA_PROPERTIES", "session.timeout.ms=6000,heartbeat.interval.ms=500"),
    ];
    let p = producer(&brokers);
    let first = produce_round(&p, &samples_topic, 0).await;

    // Instance A consumes the first round; the group's committed offsets follow its store.
    let (dir_a, dir_b) = (temp_dir(), temp_dir());
    let a = Server::start_with(dir_a.path(), &env);
    a.ready().await;
    wait_total(&a, 120, "A to consume the first round", |t| (t - first).abs() < 1e-9).await;
    a.stop();

    // Instance B, a new data directory in the same group: the group says "at the end", the store
    // says "nothing yet"; the store wins and B reads the first round too.
    let b = Server::start_with(dir_b.path(), &env);
    b.ready().await;
    wait_total(&b, 120, "a new data directory to read the topic from the beginning", |t| (t - first).abs() < 1e-9)
        .await;

    // A joins again: the two share the partitions. Once B holds one, a second round is produced;
    // B consumes its share and commits it to the group, then leaves.
    let a = Server::start_with(dir_a.path(), &env);
    a.ready().await;
    let start = Instant::now();
    loop {
        // A holds a partition once its status lists a high watermark refreshed for it.
        let f = frontiers(&a).await;
        let held = f["sources"]["kafka"]["partitions"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| p["topic"] == json!(samples_topic) && p["highWatermark"].as_i64().unwrap_or(0) > 0)
        });
        if held {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "A never got a partition: {f}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Give the rebalance time to settle on both sides before the second round.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = produce_round(&p, &samples_topic, 1).await;
    wait_total(&b, 120, "B to consume part of the second round", |t| t > first + 1e-9).await;
    wait_total(&a, 120, "A to consume part of the second round", |t| t > first + 1e-9).await;
    b.stop();

    // B's partition comes back to A: A resumes at its own stored offset (behind the group's) and
    // ends with both rounds exactly, nothing skipped, nothing twice.
    let total = wait_total(&a, 180, "A to hold both rounds", |t| (t - (first + second)).abs() < 1e-9).await;
    assert!((total - (first + second)).abs() < 1e-9);
    let (_, rows) = a.sql("SELECT count(*) AS n FROM daily_rollups_by_source WHERE user_id LIKE 'hand-u%'").await;
    assert_eq!(rows["rows"][0]["n"], json!(8), "{rows}");
    a.stop();
}
