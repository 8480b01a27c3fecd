//! End-to-end load driver (not a test): starts `vitalflow serve` (or targets `--url`), uploads
//! synthetic phone batches over real HTTP on loopback with several requests in flight, and waits
//! until every view's `asOfEpoch` covers the last acknowledged batch. Prints one JSON line.
//!
//! `cargo bench --bench e2e -- --users 200 --days 30 --batch 500 --concurrency 16`
//!
//! With `--kafka BROKERS` the same batches are produced to a fresh samples topic (6 partitions,
//! keyed by user) while the server consumes them; the line reports Kafka-to-visible throughput and,
//! with `--sink-postgres URL`, the Postgres sink's lag under that load.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    users: usize,
    days: usize,
    batch: usize,
    concurrency: usize,
    workers: usize,
    url: Option<String>,
    /// `VITALFLOW_VIEWS` for the server the driver starts (all views when absent).
    views: Option<String>,
    kafka: Option<String>,
    sink_postgres: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args { users: 200, days: 30, batch: 500, concurrency: 16, workers: 2, url: None, views: None, kafka: None, sink_postgres: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match flag.as_str() {
            "--users" => a.users = num("--users"),
            "--days" => a.days = num("--days"),
            "--batch" => a.batch = num("--batch"),
            "--concurrency" => a.concurrency = num("--concurrency"),
            "--workers" => a.workers = num("--workers"),
            "--url" => a.url = it.next(),
            "--views" => a.views = it.next(),
            "--kafka" => a.kafka = it.next(),
            "--sink-postgres" => a.sink_postgres = it.next(),
            "--smoke" => {
                a.users = 4;
                a.days = 2;
            }
            _ => {} // cargo passes --bench
        }
    }
    a
}

/// Deterministic synthetic day: steps every 10 minutes from a watch and, overlapping, a phone;
/// heart rate every 5 minutes.
fn user_batches(user: usize, days: usize, batch: usize) -> Vec<Value> {
    let zones = ["America/New_York", "Europe/Berlin", "Asia/Kolkata", "UTC"];
    let base = 1_717_200_000_000_i64; // 2024-06-01T00:00:00Z
    let mut samples = Vec::new();
    let mut seed = (user as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % 1000
    };
    let iso = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default();
    for day in 0..days as i64 {
        for slot in 0..144_i64 {
            let t = base + day * 86_400_000 + slot * 600_000;
            samples.push(json!({"sourceId": "watch", "sourceRecordId": format!("w{day}-{slot}"), "metric": "steps",
                "startAt": iso(t), "endAt": iso(t + 600_000), "value": rnd(), "unit": "count", "sourceClass": "watch"}));
            if slot % 3 == 0 {
                samples.push(json!({"sourceId": "phone", "sourceRecordId": format!("p{day}-{slot}"), "metric": "steps",
                    "startAt": iso(t), "endAt": iso(t + 1_200_000), "value": rnd(), "unit": "count", "sourceClass": "phone"}));
            }
            for h in 0..2 {
                let ts = t + h * 300_000;
                samples.push(json!({"sourceId": "watch", "sourceRecordId": format!("h{day}-{slot}-{h}"), "metric": "heart_rate",
                    "startAt": iso(ts), "endAt": iso(ts), "value": 50 + rnd() % 100, "unit": "count/min", "sourceClass": "watch"}));
            }
        }
    }
    samples
        .chunks(batch)
        .enumerate()
        .map(|(i, chunk)| {
            json!({"requestId": format!("bench-{user}-{i}"), "userId": format!("user-{user}"),
                   "deviceTimeZone": zones[user % zones.len()], "platform": "healthkit", "samples": chunk})
        })
        .collect()
}

fn main() {
    let args = parse_args();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = None;
    let topic = format!("bench-samples-{}", std::process::id());
    let mut env: Vec<(&str, String)> = Vec::new();
    if let Some(b) = &args.kafka {
        env.push(("VITALFLOW_KAFKA_BROKERS", b.clone()));
        env.push(("VITALFLOW_KAFKA_SAMPLES_TOPIC", topic.clone()));
        env.push(("VITALFLOW_KAFKA_GROUP_ID", topic.clone()));
        env.push(("VITALFLOW_KAFKA_PROPERTIES", "session.timeout.ms=6000".into()));
    }
    if let Some(u) = &args.sink_postgres {
        env.push(("VITALFLOW_SINK_POSTGRES_URL", u.clone()));
    }
    let base = match &args.url {
        Some(u) => u.clone(),
        None => {
            use std::io::BufRead;
            if let Some(b) = &args.kafka {
                create_topic(b, &topic);
            }
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_vitalflow"))
                .args(["serve", "--listen", "127.0.0.1:0", "--workers", &args.workers.to_string(), "--data-dir"])
                .arg(dir.path())
                .env("VITALFLOW_LOG", "warn")
                .envs(env.iter().cloned())
                .envs(args.views.iter().map(|v| ("VITALFLOW_VIEWS", v.clone())))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn vitalflow");
            let mut line = String::new();
            std::io::BufReader::new(c.stdout.take().expect("stdout")).read_line(&mut line).expect("listen line");
            child = Some(c);
            line.trim().rsplit(' ').next().unwrap_or_default().to_owned()
        }
    };
    let bodies: Vec<Value> = (0..args.users).flat_map(|u| user_batches(u, args.days, args.batch)).collect();
    let samples: usize = bodies.iter().map(|b| b["samples"].as_array().map_or(0, Vec::len)).sum();
    let payloads: Vec<Vec<u8>> = bodies.iter().map(|b| serde_json::to_vec(b).unwrap_or_default()).collect();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let result = if let Some(brokers) = args.kafka.clone() {
        rt.block_on(kafka_run(&args, &brokers, &topic, &base, &bodies, payloads, samples))
    } else {
        rt.block_on(http_run(&args, &base, payloads, samples))
    };
    finish(child, result);
}

/// Produces every batch to the samples topic while the server consumes; waits until every record
/// is applied and visible in every view (and, with the sink, written to Postgres).
async fn kafka_run(
    args: &Args,
    brokers: &str,
    topic: &str,
    base: &str,
    bodies: &[Value],
    payloads: Vec<Vec<u8>>,
    samples: usize,
) -> Value {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let records = payloads.len();
    let mut sink_lag_max = 0_u64;
    let sink = args.sink_postgres.is_some();
    let producing = {
        let producer = producer.clone();
        let keys: Vec<String> = bodies.iter().map(|b| b["userId"].as_str().unwrap_or("").to_owned()).collect();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            for chunk in payloads.chunks(64).zip(keys.chunks(64)) {
                let sends = chunk.0.iter().zip(chunk.1).map(|(p, k)| {
                    producer.send(FutureRecord::to(&topic).key(k.as_str()).payload(p.as_slice()), Duration::from_secs(60))
                });
                for r in futures::future::join_all(sends).await {
                    r.expect("delivered");
                }
            }
            Instant::now()
        })
    };
    let produced_at = producing.await.expect("producer task");
    let (mut visible_at, mut sink_at) = (None, None);
    loop {
        let f: Value = client.get(format!("{base}/v1/frontiers")).send().await.expect("frontiers").json().await.expect("json");
        let parts = f["sources"]["kafka"]["partitions"].as_array().cloned().unwrap_or_default();
        let stored: i64 = parts.iter().filter_map(|p| p["storedOffset"].as_i64()).sum();
        let latest = &f["latestEpoch"];
        let views_done = stored as usize >= records
            && f["views"].as_array().is_some_and(|v| v.iter().all(|v| &v["asOfEpoch"] == latest));
        if let Some(views) = f["sinks"]["postgres"]["views"].as_array() {
            let lag = views.iter().filter_map(|v| latest.as_u64().map(|l| l.saturating_sub(v["asOfEpoch"].as_u64().unwrap_or(0)))).max().unwrap_or(0);
            sink_lag_max = sink_lag_max.max(lag);
            if views_done && visible_at.is_some() && lag == 0 && sink_at.is_none() {
                sink_at = Some(Instant::now());
            }
        }
        if views_done && visible_at.is_none() {
            visible_at = Some(Instant::now());
        }
        if visible_at.is_some() && (!sink || sink_at.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let visible = visible_at.map_or(0.0, |t| t.duration_since(started).as_secs_f64());
    let mut out = json!({
        "scenario": "kafka", "samples": samples, "records": records, "batch_size": args.batch,
        "workers": args.workers, "produce_seconds": produced_at.duration_since(started).as_secs_f64(),
        "visible_seconds": visible, "samples_per_s_visible": samples as f64 / visible,
        "views": args.views.clone().unwrap_or_else(|| "all".into()),
    });
    if let (Some(s), Some(v)) = (sink_at, visible_at) {
        out["sink_lag_epochs_max"] = json!(sink_lag_max);
        out["sink_after_views_ms"] = json!(s.duration_since(v).as_secs_f64() * 1000.0);
    }
    out
}

fn create_topic(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    let r = rt.block_on(admin.create_topics(&[NewTopic::new(topic, 6, TopicReplication::Fixed(1))], &AdminOptions::new()));
    for t in r.expect("create topic") {
        t.expect("topic created");
    }
}

async fn http_run(args: &Args, base: &str, payloads: Vec<Vec<u8>>, samples: usize) -> Value {
    let base = base.to_owned();
    let args = Args { url: None, kafka: None, sink_postgres: None, views: args.views.clone(), ..*args };
    {
        let client = reqwest::Client::new();
        let started = Instant::now();
        // Every 5 ms: the smallest asOfEpoch over the views, and when it was first seen.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = {
            let (client, done, url) = (client.clone(), done.clone(), format!("{base}/v1/frontiers"));
            tokio::spawn(async move {
                let mut seen: Vec<(Instant, u64)> = Vec::new();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(r) = client.get(&url).send().await
                        && let Ok(f) = r.json::<Value>().await {
                            let min = f["views"].as_array().and_then(|v| v.iter().filter_map(|v| v["asOfEpoch"].as_u64()).min());
                            if let Some(min) = min.filter(|m| seen.last().is_none_or(|l| *m > l.1)) {
                                seen.push((Instant::now(), min));
                            }
                        }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                seen
            })
        };
        let queue = std::sync::Arc::new(std::sync::Mutex::new(payloads.into_iter()));
        let mut tasks = Vec::new();
        for _ in 0..args.concurrency {
            let (client, queue, url) =
                (client.clone(), queue.clone(), format!("{base}/v1/health/samples/batch-upsert"));
            tasks.push(tokio::spawn(async move {
                let (mut max_epoch, mut lat, mut acks) = (0_u64, Vec::new(), Vec::new());
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some(body) = next else { break };
                    let t = Instant::now();
                    let r = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .expect("post");
                    assert!(r.status().is_success(), "status {}", r.status());
                    let v: Value = r.json().await.expect("json");
                    lat.push(t.elapsed());
                    let epoch = v["epoch"].as_u64().unwrap_or(0);
                    acks.push((Instant::now(), epoch));
                    max_epoch = max_epoch.max(epoch);
                }
                (max_epoch, lat, acks)
            }));
        }
        let (mut last_epoch, mut lat, mut acks) = (0, Vec::new(), Vec::new());
        for t in tasks {
            let (e, l, a) = t.await.expect("task");
            last_epoch = last_epoch.max(e);
            lat.extend(l);
            acks.extend(a);
        }
        let acked = started.elapsed();
        loop {
            let f: Value =
                client.get(format!("{base}/v1/frontiers")).send().await.expect("frontiers").json().await.expect("json");
            let done = f["views"]
                .as_array()
                .is_some_and(|v| v.iter().all(|v| v["asOfEpoch"].as_u64().unwrap_or(0) >= last_epoch));
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let visible = started.elapsed();
        tokio::time::sleep(Duration::from_millis(20)).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let seen = poller.await.expect("poller");
        // Ack → visible: from each acknowledgement to the first poll that saw its epoch in every view.
        let mut vis: Vec<Duration> = acks
            .iter()
            .filter_map(|(at, epoch)| {
                let i = seen.partition_point(|(_, e)| e < epoch);
                seen.get(i).map(|(t, _)| t.saturating_duration_since(*at))
            })
            .collect();
        vis.sort();
        lat.sort();
        let pct_of = |v: &[Duration], p: f64| v.get(((v.len() as f64 - 1.0) * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        let pct = |p: f64| pct_of(&lat, p);
        json!({
            "scenario": "bulk", "samples": samples, "batches": lat.len(), "batch_size": args.batch,
            "concurrency": args.concurrency, "workers": args.workers, "epochs": last_epoch,
            "ack_seconds": acked.as_secs_f64(), "visible_seconds": visible.as_secs_f64(),
            "samples_per_s_visible": samples as f64 / visible.as_secs_f64(),
            "ack_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "ack_to_visible_ms": {"p50": pct_of(&vis, 0.5), "p99": pct_of(&vis, 0.99), "max": pct_of(&vis, 1.0), "poll_ms": 5},
            "views": args.views.clone().unwrap_or_else(|| "all".into()),
        })
    }
}

fn finish(mut child: Option<std::process::Child>, result: Value) {
    if let Some(c) = child.as_mut() {
        let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", c.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut result = result;
        result["server_peak_rss_mb"] = json!(rss_kb / 1024);
        println!("{result}");
        let _ = c.kill();
        let _ = c.wait();
    } else {
        println!("{result}");
    }
}
