//! End-to-end load driver (not a test): starts `vitalflow serve` (or targets `--url`), uploads
//! synthetic phone batches over real HTTP on loopback with several requests in flight, and waits
//! until every view's `asOfEpoch` covers the last acknowledged batch. Prints one JSON line.
//!
//! `cargo bench --bench e2e -- --users 200 --days 30 --batch 500 --concurrency 16`
//!
//! With `--kafka BROKERS` the same batches are produced to a fresh samples topic (6 partitions,
//! keyed by user) while the server consumes them; the line reports Kafka-to-visible throughput and,
//! with `--sink-postgres URL`, the Postgres sink's lag under that load. `--server-bin PATH` starts
//! that binary (e.g. `target/release/vitalflow`) instead of the one built with the driver.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[path = "support/workload.rs"]
mod workload;

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
    /// The server binary to start (default: the one cargo built with this driver).
    server_bin: Option<String>,
    /// `bulk` (default); `steady` / `reads` / `late` (also `paced`): bulk as the history, then the
    /// steady stream with reads beside it, then late samples; `restart`: bulk, then a restart;
    /// `all`: every one of them. One JSON line each.
    scenario: String,
    /// Syncs per second in `steady`.
    rate: u64,
    /// Seconds of `steady` and of `late`.
    seconds: u64,
    /// During `steady`, every this many point reads one whole-view SQL aggregate (0: none).
    sql_every: usize,
    /// Point reads and visibility reads ask for the last this many days up to the live edge
    /// (`from=`), as a dashboard would; a late sample's visibility read covers its day too (`late`
    /// reads from it when the window is shorter than 26 days); 0 (default): the whole history.
    read_days: usize,
    /// Point reads per second during `steady` (0, the default: back to back, as fast as the server
    /// answers).
    read_rate: u64,
    /// `S` or `M`: the issue-5 workload (benches/support/workload.rs) instead of the simple one.
    scale: Option<String>,
    seed: u64,
    /// Write the workload's files here (batches.jsonl, domain.jsonl, samples.csv) and exit.
    write: Option<String>,
}

impl Args {
    /// The issue-5 workload (`--scale`, or any seed but the default), not the simple synthetic one.
    fn issue_workload(&self) -> bool {
        self.scale.is_some() || self.seed != 1
    }
}

fn parse_args() -> Args {
    let mut a = Args {
        users: 200,
        days: 30,
        batch: 500,
        concurrency: 16,
        workers: 2,
        url: None,
        views: None,
        kafka: None,
        sink_postgres: None,
        server_bin: None,
        scenario: "bulk".into(),
        rate: 1000,
        sql_every: 20,
        read_days: 0,
        read_rate: 0,
        seconds: 20,
        scale: None,
        seed: 1,
        write: None,
    };
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
            "--server-bin" => a.server_bin = it.next(),
            "--scenario" => a.scenario = it.next().unwrap_or_default(),
            "--rate" => a.rate = num("--rate") as u64,
            "--seconds" => a.seconds = num("--seconds") as u64,
            "--sql-every" => a.sql_every = num("--sql-every"),
            "--read-days" => a.read_days = num("--read-days"),
            "--read-rate" => a.read_rate = num("--read-rate") as u64,
            "--scale" => {
                a.scale = it.next();
                let (u, d) =
                    a.scale.as_deref().and_then(workload::scale).unwrap_or_else(|| panic!("--scale is S or M"));
                (a.users, a.days) = (u, d);
            }
            "--seed" => a.seed = num("--seed") as u64,
            "--write" => a.write = it.next(),
            "--smoke" => {
                a.users = 4;
                a.days = 2;
                a.rate = 20;
                a.seconds = 1;
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
    if let Some(dir) = &args.write {
        let w = workload::generate(args.users, args.days, args.batch, args.seed);
        workload::write(&w, std::path::Path::new(dir)).expect("write the workload");
        println!(
            "{}",
            json!({"wrote": dir, "users": args.users, "days": args.days, "seed": args.seed,
            "batches": w.batches.len(), "domain_bodies": w.domain.len(), "samples": w.samples})
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = None;
    let topic = format!("bench-samples-{}", std::process::id());
    let mut env: Vec<(&str, String)> = Vec::new();
    if let Some(b) = &args.kafka {
        env.push(("VITALFLOW_KAFKA_BROKERS", b.clone()));
        env.push(("VITALFLOW_KAFKA_SAMPLES_TOPIC", topic.clone()));
        env.push(("VITALFLOW_KAFKA_GROUP_ID", topic.clone()));
        env.push((
            "VITALFLOW_KAFKA_PROPERTIES",
            std::env::var("BENCH_KAFKA_PROPERTIES").unwrap_or_else(|_| "session.timeout.ms=6000".into()),
        ));
    }
    if let Some(u) = &args.sink_postgres {
        env.push(("VITALFLOW_SINK_POSTGRES_URL", u.clone()));
    }
    let base = match &args.url {
        Some(u) => u.clone(),
        None => {
            if let Some(b) = &args.kafka {
                create_topic(b, &topic);
            }
            let (c, base) = spawn_server(&args, dir.path(), &env);
            child = Some(c);
            base
        }
    };
    let (mut payloads, domain, samples) = if args.issue_workload() {
        let w = workload::generate(args.users, args.days, args.batch, args.seed);
        (w.batches, w.domain, w.samples)
    } else {
        let bodies: Vec<Value> = (0..args.users).flat_map(|u| user_batches(u, args.days, args.batch)).collect();
        let samples = bodies.iter().map(|b| b["samples"].as_array().map_or(0, Vec::len)).sum();
        (bodies.iter().map(|b| serde_json::to_vec(b).unwrap_or_default()).collect(), Vec::new(), samples)
    };
    if args.kafka.is_none() {
        // Domain bodies travel with the batches over HTTP (serialized with sorted keys, they start
        // with `{"changes"`, which is how the senders route them).
        payloads.extend(domain.iter().map(|b| serde_json::to_vec(b).unwrap_or_default()));
    }

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let result = if let Some(brokers) = args.kafka.clone() {
        rt.block_on(kafka_run(&args, &brokers, &topic, &base, payloads, samples))
    } else {
        let mut bulk = rt.block_on(http_run(&args, &base, payloads, samples));
        if let Some(c) = &child {
            bulk["server_cpu_seconds"] = json!(proc_cpu_seconds(c.id()));
            bulk["server_peak_rss_mb"] = json!(proc_kib(c.id(), "VmHWM:") / 1024);
        }
        bulk["driver_cpu_seconds"] = json!(proc_cpu_seconds(std::process::id()));
        // `steady` reports `reads` beside it, and `late` follows: any of the three runs all three.
        let paced_too = matches!(args.scenario.as_str(), "paced" | "steady" | "reads" | "late" | "all");
        let restart_too = matches!(args.scenario.as_str(), "restart" | "all");
        if paced_too {
            println!("{bulk}");
            // Each phase's CPU, the server's beside the driver's (they share the two cores).
            let server_pid = child.as_ref().map(std::process::Child::id);
            let cpu = || (server_pid.map(proc_cpu_seconds), proc_cpu_seconds(std::process::id()));
            let with_cpu = |mut phase: Value, before: (Option<f64>, f64)| {
                let after = cpu();
                phase["server_cpu_seconds"] = json!(after.0.zip(before.0).map(|(a, b)| a - b));
                phase["driver_cpu_seconds"] = json!(after.1 - before.1);
                phase
            };
            let before = cpu();
            let steady = with_cpu(rt.block_on(paced(&args, &base, false, samples)), before);
            println!("{steady}");
            let sent = |v: &Value| v["samples_sent"].as_u64().unwrap_or(0) as usize;
            let before = cpu();
            let late = with_cpu(rt.block_on(paced(&args, &base, true, samples + sent(&steady))), before);
            // The restart's history is everything the server holds: the bulk load and the syncs.
            let samples = samples + sent(&steady) + sent(&late);
            if !restart_too {
                late
            } else {
                println!("{late}");
                match child.take() {
                    Some(old) => restart(&args, dir.path(), &env, old, samples),
                    None => json!({"scenario": "restart", "skipped": "needs the server the driver starts (no --url)"}),
                }
            }
        } else if restart_too {
            println!("{bulk}");
            match child.take() {
                Some(old) => restart(&args, dir.path(), &env, old, samples),
                None => json!({"scenario": "restart", "skipped": "needs the server the driver starts (no --url)"}),
            }
        } else {
            bulk
        }
    };
    finish(child, result);
}

fn percentiles(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    json!({"n": v.len(), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
}

/// `steady` (with `reads` beside it) or `late`: paced syncs against the loaded history. Each sync is
/// acknowledged, then read back with `minEpoch` = its epoch (ack → visible for that user's read).
/// `late` sends single samples 25 days in the past.
async fn paced(args: &Args, base: &str, late: bool, history: usize) -> Value {
    use std::sync::{Arc, Mutex};
    let client = reqwest::Client::new();
    let rate = if late { (args.rate / 4).max(1) } else { args.rate.max(1) };
    let per_sync = if late { 1 } else { 50 };
    let acks = Arc::new(Mutex::new(Vec::new()));
    let visible = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The live edge is the day after the loaded history (the issue-5 workload starts 2024-03-01,
    // the simple one 2024-06-01), so `late` lands 25 days back inside the history.
    let first_day = if args.issue_workload() { 1_709_251_200_000_i64 } else { 1_717_200_000_000 };
    let base_ms = first_day + args.days as i64 * 86_400_000;
    // `&from=` for `--read-days`: the window's first day, the live edge its last.
    let from = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|d| format!("&from={}", d.format("%Y-%m-%d")))
            .unwrap_or_default()
    };
    let window = match args.read_days {
        0 => String::new(),
        n => from(base_ms - (n as i64 - 1) * 86_400_000),
    };
    // A late sample is read back through the same window when the window holds its day (26 days
    // or more), else from its day on; `--read-days 0` reads the whole history in both phases.
    let late_window = match args.read_days {
        0 => String::new(),
        n if n > 25 => window.clone(),
        _ => from(base_ms - 25 * 86_400_000),
    };
    // reads: point reads and whole-view SQL aggregates while the stream runs (`Reads`). The reader
    // has a thread, a runtime and a client of its own, so that its timings measure the server, not
    // the driver's queue of sync tasks (the driver shares the two cores).
    let readers = if late {
        None
    } else {
        let reads =
            Reads { users: args.users.max(1), sql_every: args.sql_every, window: window.clone(), rate: args.read_rate };
        let (base, stop) = (base.to_owned(), stop.clone());
        let reader = move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("reader runtime");
            runtime.block_on(reader_loop(base, stop, reads))
        };
        Some(std::thread::spawn(reader))
    };
    let metrics_before = scrape(&client, base).await;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = rate * args.seconds;
    let mut tasks = Vec::new();
    let started = Instant::now();
    // At most this many syncs in flight (the driver's and the server's open files are finite); a
    // sync that has to wait for a slot is timed from its scheduled start, so queueing counts.
    let slots = Arc::new(tokio::sync::Semaphore::new(1024));
    let late_reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for n in 0..total {
        ticker.tick().await;
        let t = Instant::now();
        let slot = slots.clone().acquire_owned().await.expect("semaphore");
        let user = (n as usize * 7919) % args.users.max(1);
        let t0 = if late { base_ms - 25 * 86_400_000 + n as i64 * 1000 } else { base_ms + n as i64 * 60_000 };
        let iso = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default();
        let samples: Vec<Value> = (0..per_sync as i64)
            .map(|k| {
                json!({"sourceId": "watch", "sourceRecordId": format!("{}-{n}-{k}", if late { "late" } else { "live" }),
                       "metric": "steps", "startAt": iso(t0 + k * 1000), "endAt": iso(t0 + k * 1000 + 1000),
                       "value": 1, "unit": "count", "sourceClass": "watch"})
            })
            .collect();
        let body = json!({"requestId": format!("{}-{n}", if late { "late" } else { "steady" }), "userId": format!("user-{user}"),
                          "deviceTimeZone": "UTC", "samples": samples});
        let window = if late { late_window.clone() } else { window.clone() };
        let (client, base, acks, visible) = (client.clone(), base.to_owned(), acks.clone(), visible.clone());
        let (late_reads, refused, errors) = (late_reads.clone(), refused.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slot;
            // A transport error (a connection reset under load) is counted, not a panic.
            let failed = || {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            };
            let Ok(r) = client.post(format!("{base}/v1/health/samples/batch-upsert")).json(&body).send().await else {
                return failed();
            };
            let ok = r.status().is_success();
            let Ok(v) = r.json::<Value>().await else { return failed() };
            let acked = t.elapsed();
            if !ok {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            let epoch = v["epoch"].as_u64().unwrap_or(0);
            let url =
                format!("{base}/v1/users/user-{user}/daily-rollups?metric=steps{window}&minEpoch={epoch}&waitMs=30000");
            let Ok(r) = client.get(url).send().await else { return failed() };
            let Ok(r) = r.json::<Value>().await else { return failed() };
            let seen = t.elapsed();
            acks.lock().map(|mut a| a.push(acked.as_secs_f64() * 1000.0)).ok();
            if r["asOfEpoch"].as_u64().unwrap_or(0) >= epoch {
                visible.lock().map(|mut a| a.push((seen - acked).as_secs_f64() * 1000.0)).ok();
            } else {
                late_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acks = acks.lock().map(|a| a.clone()).unwrap_or_default();
    let visible = visible.lock().map(|a| a.clone()).unwrap_or_default();
    let mut out = json!({
        "scenario": if late { "late" } else { "steady" },
        "target_syncs_per_s": rate, "samples_per_sync": per_sync, "syncs": acks.len(), "max_in_flight": 1024,
        "not_visible_within_30s": late_reads.load(std::sync::atomic::Ordering::Relaxed),
        "syncs_refused": refused.load(std::sync::atomic::Ordering::Relaxed),
        "transport_errors": errors.load(std::sync::atomic::Ordering::Relaxed),
        "achieved_syncs_per_s": acks.len() as f64 / elapsed,
        "history_samples": history, "samples_sent": acks.len() * per_sync,
        "ack_ms": percentiles(acks), "ack_to_visible_ms": percentiles(visible),
    });
    // The server's own view of the same window, from its histograms: what it spent per request,
    // per group commit and per publish, without the driver's share of the two cores.
    let after = scrape(&client, base).await;
    let server = |name: &str, labels: &str| server_histogram(&metrics_before, &after, name, labels);
    out["server"] = json!({
        "sync_handler": server("vitalflow_http_request_duration_seconds", "batch-upsert"),
        "sql_handler": server("vitalflow_http_request_duration_seconds", "/v1/sql"),
        "store_commit": server("vitalflow_store_commit_seconds", ""),
        "dataflow_push": server("vitalflow_dataflow_push_seconds", ""),
        "snapshot_publish": server("vitalflow_snapshot_publish_seconds", ""),
        // Commit → in the snapshot of the view the syncs are read back from.
        "visible_daily_rollups": server("vitalflow_view_visible_seconds", "daily_rollups\""),
        // Commit → the dataflow's output for it at the snapshot applier (before the publish).
        "computed_daily_rollups": server("vitalflow_view_computed_seconds", "daily_rollups\""),
        "snapshot_persist": server("vitalflow_snapshot_persist_seconds", ""),
    });
    // Dataflow introspection (`slow_epoch_ms` > 0; docs/operations.md, "Slow epochs"): the epochs
    // over the threshold, and the workers' seconds per view over the phase, largest first.
    let delta = |k: &str| after.get(k).map(|a| a - metrics_before.get(k).copied().unwrap_or(0.0));
    out["server"]["slow_epochs"] = json!(delta("vitalflow_dataflow_slow_epochs_total"));
    let mut elapsed: Vec<(String, f64)> = after
        .keys()
        .filter_map(|k| {
            let view = k.strip_prefix("vitalflow_dataflow_elapsed_seconds{view=\"")?.strip_suffix("\"}")?;
            Some((view.to_owned(), delta(k)?))
        })
        .collect();
    elapsed.sort_by(|a, b| b.1.total_cmp(&a.1));
    out["server"]["dataflow_elapsed_s"] =
        elapsed.into_iter().map(|(view, s)| json!({"view": view, "seconds": (s * 1000.0).round() / 1000.0})).collect();
    if let Some(r) = readers {
        let stats = r.join().unwrap_or_default();
        out["reads"] = json!({
            "point_read_ms": percentiles(stats.point), "point_read_server_ms": percentiles(stats.point_server),
            "sql_aggregate_ms": percentiles(stats.sql),
            "failed": stats.failed, "point_reads_per_s": stats.point_per_s,
            "read_rate": args.read_rate, "read_days": args.read_days, "sql_every": args.sql_every,
        });
    }
    out
}

/// The server's metrics (`/metrics`, Prometheus text): each series' value by its name and labels,
/// e.g. `vitalflow_store_commit_seconds_bucket{le="0.05"}`. Empty when the scrape fails.
async fn scrape(client: &reqwest::Client, base: &str) -> HashMap<String, f64> {
    let Ok(r) = client.get(format!("{base}/metrics")).send().await else { return HashMap::new() };
    let text = r.text().await.unwrap_or_default();
    let series = |l: &str| {
        let (k, v) = l.rsplit_once(' ')?;
        Some((k.to_owned(), v.parse().ok()?))
    };
    text.lines().filter(|l| !l.starts_with('#')).filter_map(series).collect()
}

/// What histogram `name` recorded between two scrapes, summed over the series whose labels contain
/// `labels`: the count, and the bucket bounds (ms) that the median and the 99th percentile fall
/// under (`null` past the last finite bound, or when nothing was recorded), and how many took over
/// 50 ms.
fn server_histogram(before: &HashMap<String, f64>, after: &HashMap<String, f64>, name: &str, labels: &str) -> Value {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for (series, n) in after.iter().filter(|(k, _)| k.starts_with(&prefix) && k.contains(labels)) {
        let Some(le) = series.split("le=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let le = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
        let n = n - before.get(series).copied().unwrap_or(0.0);
        match buckets.iter_mut().find(|b| b.0 == le) {
            Some(b) => b.1 += n,
            None => buckets.push((le, n)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let under = |q: f64| {
        let bound = buckets.iter().find(|b| b.1 >= q * total).map(|b| b.0 * 1000.0);
        bound.filter(|ms| total > 0.0 && ms.is_finite())
    };
    let within_50ms = buckets.iter().find(|b| b.0 >= 0.05).map_or(total, |b| b.1);
    json!({"count": total, "p50_under_ms": under(0.5), "p99_under_ms": under(0.99), "over_50ms": total - within_50ms})
}

/// What the reader beside `steady` asks for.
struct Reads {
    /// Point reads go to `user-{i % users}`.
    users: usize,
    /// Every this many point reads, a whole-view SQL aggregate (never when 0).
    sql_every: usize,
    /// `&from=…` or nothing (the whole history).
    window: String,
    /// Point reads per second; 0: back to back.
    rate: u64,
}

/// What the reader saw: latencies in ms (with the server's share of each point read), reads that
/// failed (a transport error or a status other than 2xx), and the point reads served per second.
#[derive(Default)]
struct ReadStats {
    point: Vec<f64>,
    /// The server's own time for each point read (`Server-Timing`), ms.
    point_server: Vec<f64>,
    sql: Vec<f64>,
    failed: usize,
    point_per_s: f64,
}

/// Point reads and SQL aggregates as `reads` says, until `stop`. Back to back (`rate` 0): one
/// after the other, an aggregate after every `sql_every`th read. Paced: point reads at `rate` per
/// second and aggregates at `rate / sql_every` per second, on two loops of their own (so that a
/// read never waits behind the reader's own aggregate). Every request is timed from its send: a
/// tick's scheduled instant would add tokio's timer lateness (about a millisecond) to each read.
async fn reader_loop(base: String, stop: std::sync::Arc<std::sync::atomic::AtomicBool>, reads: Reads) -> ReadStats {
    let Reads { users, sql_every, window, rate } = reads;
    let client = reqwest::Client::new();
    let running = || !stop.load(std::sync::atomic::Ordering::Relaxed);
    let ticker = |per_s: f64| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / per_s));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    };
    // One request, timed from `t`: its latency in ms and the server's own share of it (its
    // `Server-Timing` header, from routing to the answer's last byte built), or `None` when it failed.
    let point_read = |i: usize, t: Instant| {
        let url = format!("{base}/v1/users/user-{}/daily-rollups?metric=steps{window}", i % users);
        let request = client.get(url);
        async move {
            let r = request.send().await.ok().filter(|r| r.status().is_success())?;
            let server = r
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split("dur=").nth(1).and_then(|d| d.parse::<f64>().ok()));
            Some((ms_since(t), server))
        }
    };
    let aggregate = |t: Instant| {
        let body = json!({"sql": "SELECT metric, count(*) AS n, sum(sum) AS s FROM daily_rollups GROUP BY metric"});
        let request = client.post(format!("{base}/v1/sql")).json(&body);
        async move { request.send().await.ok().filter(|r| r.status().is_success()).map(|_| ms_since(t)) }
    };
    let record = |into: &mut Vec<f64>, failed: &mut usize, r: Option<f64>| match r {
        Some(ms) => into.push(ms),
        None => *failed += 1,
    };
    let started = Instant::now();
    let mut stats = ReadStats::default();
    if rate == 0 {
        let mut i = 0usize;
        while running() {
            let r = point_read(i, Instant::now()).await;
            stats.point_server.extend(r.and_then(|r| r.1));
            record(&mut stats.point, &mut stats.failed, r.map(|r| r.0));
            if sql_every > 0 && i % sql_every == 0 {
                record(&mut stats.sql, &mut stats.failed, aggregate(Instant::now()).await);
            }
            i += 1;
        }
    } else {
        let points = async {
            let (mut ticks, mut out, mut server, mut failed, mut i) =
                (ticker(rate as f64), Vec::new(), Vec::new(), 0, 0usize);
            while running() {
                ticks.tick().await;
                let r = point_read(i, Instant::now()).await;
                server.extend(r.and_then(|r| r.1));
                record(&mut out, &mut failed, r.map(|r| r.0));
                i += 1;
            }
            (out, server, failed)
        };
        let aggregates = async {
            let (mut out, mut failed) = (Vec::new(), 0);
            if sql_every > 0 {
                let mut ticks = ticker(rate as f64 / sql_every as f64);
                while running() {
                    ticks.tick().await;
                    record(&mut out, &mut failed, aggregate(Instant::now()).await);
                }
            }
            (out, failed)
        };
        let ((point, server, f1), (sql, f2)) = tokio::join!(points, aggregates);
        (stats.point, stats.point_server, stats.sql, stats.failed) = (point, server, sql, f1 + f2);
    }
    stats.point_per_s = stats.point.len() as f64 / started.elapsed().as_secs_f64();
    stats
}

/// Milliseconds since `t`.
fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Produces every batch to the samples topic while the server consumes; waits until every record
/// is applied and visible in every view (and, with the sink, written to Postgres).
async fn kafka_run(
    args: &Args,
    brokers: &str,
    topic: &str,
    base: &str,
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
        let user = |p: &[u8]| serde_json::from_slice::<Value>(p).ok()?["userId"].as_str().map(str::to_owned);
        let keys: Vec<String> = payloads.iter().map(|p| user(p).unwrap_or_default()).collect();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            for chunk in payloads.chunks(64).zip(keys.chunks(64)) {
                let sends = chunk.0.iter().zip(chunk.1).map(|(p, k)| {
                    producer
                        .send(FutureRecord::to(&topic).key(k.as_str()).payload(p.as_slice()), Duration::from_secs(60))
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
        let f: Value =
            client.get(format!("{base}/v1/frontiers")).send().await.expect("frontiers").json().await.expect("json");
        let parts = f["sources"]["kafka"]["partitions"].as_array().cloned().unwrap_or_default();
        let stored: i64 = parts.iter().filter_map(|p| p["storedOffset"].as_i64()).sum();
        let latest = &f["latestEpoch"];
        let views_done = stored as usize >= records
            && f["views"].as_array().is_some_and(|v| v.iter().all(|v| &v["asOfEpoch"] == latest));
        if let Some(views) = f["sinks"]["postgres"]["views"].as_array() {
            let lag = views
                .iter()
                .filter_map(|v| latest.as_u64().map(|l| l.saturating_sub(v["asOfEpoch"].as_u64().unwrap_or(0))))
                .max()
                .unwrap_or(0);
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
    let r =
        rt.block_on(admin.create_topics(&[NewTopic::new(topic, 6, TopicReplication::Fixed(1))], &AdminOptions::new()));
    for t in r.expect("create topic") {
        t.expect("topic created");
    }
}

async fn http_run(args: &Args, base: &str, payloads: Vec<Vec<u8>>, samples: usize) -> Value {
    let base = base.to_owned();
    let args = Args {
        url: None,
        kafka: None,
        sink_postgres: None,
        server_bin: None,
        views: args.views.clone(),
        scenario: String::new(),
        scale: None,
        write: None,
        ..*args
    };
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
                        && let Ok(f) = r.json::<Value>().await
                    {
                        let min =
                            f["views"].as_array().and_then(|v| v.iter().filter_map(|v| v["asOfEpoch"].as_u64()).min());
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
            let (client, queue, url, domain_url) = (
                client.clone(),
                queue.clone(),
                format!("{base}/v1/health/samples/batch-upsert"),
                format!("{base}/v1/domain/changes"),
            );
            tasks.push(tokio::spawn(async move {
                let (mut max_epoch, mut lat, mut acks, mut refused) = (0_u64, Vec::new(), Vec::new(), 0_u64);
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.next());
                    let Some(body) = next else { break };
                    let t = Instant::now();
                    let to = if body.starts_with(b"{\"changes\"") { &domain_url } else { &url };
                    // Backpressure (503 OVERLOADED / VIEWS_LAGGING, 429) is answered as a client
                    // would: wait the Retry-After (at most 1 s here) and send the same body again.
                    let r = loop {
                        let r = client
                            .post(to)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await
                            .expect("post");
                        if r.status() == 503 || r.status() == 429 {
                            refused += 1;
                            let wait = r
                                .headers()
                                .get("retry-after")
                                .and_then(|v| v.to_str().ok()?.parse::<f64>().ok())
                                .unwrap_or(0.1)
                                .min(1.0);
                            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                            continue;
                        }
                        break r;
                    };
                    assert!(r.status().is_success(), "status {}", r.status());
                    let v: Value = r.json().await.expect("json");
                    lat.push(t.elapsed());
                    let epoch = v["epoch"].as_u64().unwrap_or(0);
                    acks.push((Instant::now(), epoch));
                    max_epoch = max_epoch.max(epoch);
                }
                (max_epoch, lat, acks, refused)
            }));
        }
        let (mut last_epoch, mut lat, mut acks, mut refused) = (0, Vec::new(), Vec::new(), 0);
        for t in tasks {
            let (e, l, a, r) = t.await.expect("task");
            last_epoch = last_epoch.max(e);
            lat.extend(l);
            acks.extend(a);
            refused += r;
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
        let pct_of = |v: &[Duration], p: f64| {
            v.get(((v.len() as f64 - 1.0) * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        };
        let pct = |p: f64| pct_of(&lat, p);
        json!({
            "scenario": "bulk", "samples": samples, "batches": lat.len(), "batch_size": args.batch,
            "concurrency": args.concurrency, "workers": args.workers, "epochs": last_epoch,
            "refused_then_retried": refused,
            "ack_seconds": acked.as_secs_f64(), "visible_seconds": visible.as_secs_f64(),
            "samples_per_s_visible": samples as f64 / visible.as_secs_f64(),
            "ack_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "ack_to_visible_ms": {"p50": pct_of(&vis, 0.5), "p99": pct_of(&vis, 0.99), "max": pct_of(&vis, 1.0), "poll_ms": 5},
            "views": args.views.clone().unwrap_or_else(|| "all".into()),
        })
    }
}

/// Starts the server on `dir`; returns it and its base URL.
fn spawn_server(args: &Args, dir: &std::path::Path, env: &[(&str, String)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let bin = args.server_bin.clone().unwrap_or_else(|| env!("CARGO_BIN_EXE_vitalflow").to_owned());
    let mut c = std::process::Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", &args.workers.to_string(), "--data-dir"])
        .arg(dir)
        .env("VITALFLOW_LOG", "warn")
        .env("VITALFLOW_USER_RATE", "0") // a load driver, not a phone
        .envs(env.iter().cloned())
        .envs(args.views.iter().map(|v| ("VITALFLOW_VIEWS", v.clone())))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn vitalflow");
    let mut line = String::new();
    std::io::BufReader::new(c.stdout.take().expect("stdout")).read_line(&mut line).expect("listen line");
    (c, line.trim().rsplit(' ').next().unwrap_or_default().to_owned())
}

/// User + system CPU seconds a process has used so far (`/proc/PID/stat`, clock ticks of 1/100 s).
fn proc_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let field = |i: usize| after_name.split_whitespace().nth(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// One HTTP/1.0 exchange on a fresh connection: the response's status and body.
fn http_once(addr: &str, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.get(9..12)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned())))
}

/// `restart`: stops the loaded server (SIGTERM), starts it again on the same data directory and
/// times process start → the first point read that returns rows (served from the snapshots the
/// previous run persisted, while the dataflow rehydrates) and start → `/readyz` (recovery replays
/// the whole history into every view).
fn restart(
    args: &Args,
    dir: &std::path::Path,
    env: &[(&str, String)],
    mut old: std::process::Child,
    samples: usize,
) -> Value {
    let _ = std::process::Command::new("kill").arg("-TERM").arg(old.id().to_string()).status();
    let _ = old.wait();
    let started = Instant::now();
    let (mut c, base) = spawn_server(args, dir, env);
    let addr = base.trim_start_matches("http://").to_owned();
    let ready_now = || http_once(&addr, "GET", "/readyz", "").is_some_and(|(status, _)| status == 200);
    // A user to read: the first of the view (SQL answers as soon as a snapshot is served).
    let (mut first_read, mut first_read_as_of, mut first_read_status) = (None, None, None);
    let mut user: Option<String> = None;
    while !ready_now() {
        if first_read.is_none() {
            if user.is_none() {
                let sql = r#"{"sql": "SELECT user_id FROM daily_rollups LIMIT 1"}"#;
                user = http_once(&addr, "POST", "/v1/sql", sql)
                    .filter(|(s, _)| *s == 200)
                    .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                    .and_then(|v| v["rows"][0]["user_id"].as_str().map(str::to_owned));
            }
            if let Some(u) = &user
                && let Some((200, b)) = http_once(&addr, "GET", &format!("/v1/users/{u}/daily-rollups"), "")
                && let Ok(v) = serde_json::from_str::<Value>(&b)
                && v["rows"].as_array().is_some_and(|r| !r.is_empty())
            {
                first_read = Some(started.elapsed().as_secs_f64());
                first_read_as_of = v["asOfEpoch"].as_u64();
                first_read_status = http_once(&addr, "GET", "/readyz", "")
                    .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                    .map(|v| v["status"].clone());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let ready = started.elapsed().as_secs_f64();
    let first_read = first_read.unwrap_or(ready);
    std::thread::sleep(Duration::from_millis(500));
    let (rss, hwm) = (proc_kib(c.id(), "VmRSS:"), proc_kib(c.id(), "VmHWM:"));
    // The updates every arrangement holds after the replay (docs/operations.md, "Arrangement
    // sizes"): one epoch, so no retraction is left in them.
    let arranged: f64 = http_once(&addr, "GET", "/metrics", "")
        .map(|(_, text)| {
            text.lines()
                .filter(|l| l.starts_with("vitalflow_arrangement_records{"))
                .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    let _ = c.kill();
    let _ = c.wait();
    json!({"scenario": "restart", "samples": samples, "start_to_ready_seconds": ready,
           "arrangement_updates": arranged, "arrangement_updates_per_sample": arranged / samples.max(1) as f64,
           "start_to_first_read_seconds": first_read, "first_read_as_of_epoch": first_read_as_of,
           "first_read_readyz_status": first_read_status,
           "rss_after_ready_mb": rss / 1024, "peak_rss_during_recovery_mb": hwm / 1024,
           "resident_bytes_per_sample": (rss * 1024) as f64 / samples.max(1) as f64,
           "views": args.views.clone().unwrap_or_else(|| "all".into())})
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
