//! Crash soak (issue 10 §5): `kill -9` at random moments during mixed HTTP and Kafka ingestion,
//! then a restart and a check that every acknowledged sample is in the views exactly once.
//!
//! ```sh
//! cargo bench --bench crash_soak -- --cycles 100            # the reported run (benches/README.md)
//! cargo bench --bench crash_soak --profile dev -- --cycles 3 # what CI runs
//! ```
//!
//! Kafka joins when `KAFKA_BROKERS` is set (`.ci/services.sh start` sets it); otherwise HTTP alone.
//!
//! Each sample is a distinct `steps` sample of value 1 (a minute apart), under its own `sourceId`
//! per writer path, so that `daily_rollups_by_source` (unmerged) counts samples one for one. An
//! HTTP sample is *acknowledged* when its batch got a 200; a Kafka sample when the broker accepted
//! its record (the store must then apply it exactly once, whatever crashes follow). After every
//! restart, for each (user, source): acknowledged ≤ visible count ≤ sent, and visible sum ==
//! visible count (no sample counted twice). Exits non-zero on the first violation.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};

const USERS: usize = 8;

struct Args {
    cycles: usize,
    seed: u64,
}

fn parse_args() -> Args {
    let mut args = Args { cycles: 100, seed: 7 };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--cycles" => args.cycles = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.cycles),
            "--seed" => args.seed = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.seed),
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// A small deterministic generator (xorshift), so that a run is reproducible from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What was sent and what was acknowledged, per (user, source).
#[derive(Default)]
struct Ledger {
    sent: BTreeMap<(String, String), u64>,
    acked: BTreeMap<(String, String), u64>,
}

fn spawn(dir: &std::path::Path, brokers: Option<&str>, topic: &str, restart: usize) -> (Child, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vitalflow"));
    c.args(["serve", "--listen", "127.0.0.1:0", "--workers", "2", "--data-dir"])
        .arg(dir)
        .env("VITALFLOW_LOG", std::env::var("VITALFLOW_LOG").unwrap_or_else(|_| "error".into()))
        .env("VITALFLOW_USER_RATE", "0")
        .stdout(Stdio::piped());
    // SOAK_LOG: append every server's stderr to this file (to see what a failed cycle did).
    if let Some(path) = std::env::var_os("SOAK_LOG") {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("SOAK_LOG file");
        c.stderr(log);
    }
    if let Some(b) = brokers {
        c.env("VITALFLOW_KAFKA_BROKERS", b)
            .env("VITALFLOW_KAFKA_SAMPLES_TOPIC", topic)
            .env("VITALFLOW_KAFKA_DOMAIN_TOPIC", format!("{topic}.domain"))
            // A consumer group per restart: tansu 0.6 does not expire members killed with -9, so
            // in one group they pile up and the range assignor hands a restarted instance no
            // partition (seen: "partitions assigned ... partitions=0" after ~20 kills). A fresh
            // group has no committed offsets at all, so every cycle checks that consumption
            // starts at the offsets stored with the rows (issue 10 §3), not at the group's.
            .env("VITALFLOW_KAFKA_GROUP_ID", format!("{topic}.group.{restart}"))
            .env("VITALFLOW_KAFKA_PROPERTIES", "session.timeout.ms=6000,heartbeat.interval.ms=1000");
    }
    let mut child = c.spawn().expect("spawn vitalflow");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("listen line");
    (child, line.trim().rsplit(' ').next().unwrap_or_default().to_owned())
}

fn body(request_id: &str, user: &str, source: &str, first_slice: u64, n: u64) -> Value {
    // 2024-01-01T00:00:00Z + slot × 1 min: distinct, 30 s long, value 1, far from the future
    // (DOMAIN.md G6) however many cycles run.
    let base = 1_704_067_200_000_i64;
    let samples: Vec<Value> = (0..n)
        .map(|i| {
            let start = base + i64::try_from((first_slice + i) * 60_000).unwrap_or(0);
            let iso = |ms: i64| {
                chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                    .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                    .unwrap_or_default()
            };
            json!({"sourceId": source, "sourceRecordId": format!("{}", first_slice + i), "metric": "steps",
                   "startAt": iso(start), "endAt": iso(start + 30_000), "value": 1, "unit": "count",
                   "sourceClass": "watch"})
        })
        .collect();
    json!({"requestId": request_id, "userId": user, "deviceTimeZone": "UTC", "samples": samples})
}

async fn ready(client: &reqwest::Client, base: &str) {
    for _ in 0..2400 {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("vitalflow did not become ready");
}

/// Waits until the Kafka source has stored every produced record and every view reflects the
/// newest epoch.
async fn settle(client: &reqwest::Client, base: &str, kafka_records: usize) {
    let mut last = Value::Null;
    for _ in 0..6000 {
        let f: Value = match client.get(format!("{base}/v1/frontiers")).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let parts = f["sources"]["kafka"]["partitions"].as_array().cloned().unwrap_or_default();
        let stored: i64 = parts.iter().filter_map(|p| p["storedOffset"].as_i64()).sum();
        let latest = &f["latestEpoch"];
        let views = f["views"].as_array().is_some_and(|v| v.iter().all(|v| &v["asOfEpoch"] == latest));
        if views && stored as usize >= kafka_records {
            return;
        }
        last = f;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the views did not settle: {kafka_records} Kafka records produced; /v1/frontiers: {last}");
}

/// acknowledged ≤ visible ≤ sent for every (user, source), and no sample counted twice.
async fn verify(client: &reqwest::Client, base: &str, ledger: &Mutex<Ledger>, cycle: usize) {
    let sql =
        "SELECT user_id, source_id, sum(count) AS n, sum(sum) AS total FROM daily_rollups_by_source GROUP BY 1, 2";
    let check: Value = client
        .post(format!("{base}/v1/sql"))
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .expect("sql")
        .json()
        .await
        .expect("json");
    let mut visible: BTreeMap<(String, String), (u64, f64)> = BTreeMap::new();
    for row in check["rows"].as_array().cloned().unwrap_or_default() {
        let key =
            (row["user_id"].as_str().unwrap_or("").to_owned(), row["source_id"].as_str().unwrap_or("").to_owned());
        visible.insert(key, (row["n"].as_u64().unwrap_or(0), row["total"].as_f64().unwrap_or(-1.0)));
    }
    let l = ledger.lock();
    for (key, sent) in &l.sent {
        let acked = l.acked.get(key).copied().unwrap_or(0);
        let (n, total) = visible.get(key).copied().unwrap_or((0, 0.0));
        assert!(acked <= n && n <= *sent, "cycle {cycle}: {key:?} acknowledged {acked}, visible {n}, sent {sent}");
        assert!((total - n as f64).abs() < 1e-6, "cycle {cycle}: {key:?} counted twice: sum {total}, count {n}");
    }
}

fn create_topic(brokers: &str, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    for t in [topic.to_owned(), format!("{topic}.domain")] {
        let r =
            rt.block_on(admin.create_topics(&[NewTopic::new(&t, 3, TopicReplication::Fixed(1))], &AdminOptions::new()));
        for x in r.expect("create topic") {
            x.expect("topic created");
        }
    }
}

#[allow(clippy::too_many_lines)]
fn main() {
    let args = parse_args();
    let brokers = std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
    let dir = tempfile::tempdir().expect("temp dir");
    let topic = format!("vitalflow.soak.{}", std::process::id());
    if let Some(b) = &brokers {
        create_topic(b, &topic);
    }
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng(args.seed.max(1));
    let mut next_slice = [0_u64; USERS];
    let mut kafka_records = 0_usize;
    let started = Instant::now();
    let producer: Option<rdkafka::producer::FutureProducer> = brokers.as_deref().map(|b| {
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", b)
            .set("message.timeout.ms", "60000")
            .create()
            .expect("producer")
    });
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
    let mut request = 0_u64;
    for cycle in 0..args.cycles {
        let (mut child, base) = spawn(dir.path(), brokers.as_deref(), &topic, cycle);
        rt.block_on(ready(&client, &base));
        // Check what the previous cycles left: acknowledged ⊆ visible ⊆ sent, each counted once.
        rt.block_on(settle(&client, &base, kafka_records));
        rt.block_on(verify(&client, &base, &ledger, cycle));
        // Mixed ingestion, then kill -9 at a random moment.
        let kill_after = Duration::from_millis(200 + rng.below(1500));
        let deadline = Instant::now() + kill_after;
        let mut tasks = Vec::new();
        for writer in 0..4 {
            let (client, base, ledger) = (client.clone(), base.clone(), ledger.clone());
            let mut plan = Vec::new();
            for _ in 0..200 {
                let u = usize::try_from(rng.below(USERS as u64)).unwrap_or(0);
                let n = 1 + rng.below(20);
                plan.push((u, next_slice[u], n, request));
                next_slice[u] += n;
                request += 1;
            }
            tasks.push(rt.spawn(async move {
                for (u, slice, n, id) in plan {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let (user, source) = (format!("u{u}"), format!("http-{writer}"));
                    ledger.lock().sent.entry((user.clone(), source.clone())).and_modify(|s| *s += n).or_insert(n);
                    let b = body(&format!("h-{id}"), &user, &source, slice, n);
                    if let Ok(r) = client.post(format!("{base}/v1/health/samples/batch-upsert")).json(&b).send().await
                        && r.status() == 200
                    {
                        // Acknowledged: the samples the 200 says were accepted.
                        let accepted = r.json::<Value>().await.ok().and_then(|v| v["accepted"].as_u64()).unwrap_or(0);
                        assert_eq!(accepted, n, "every soak sample is valid and new");
                        ledger.lock().acked.entry((user, source)).and_modify(|s| *s += n).or_insert(n);
                    }
                }
            }));
        }
        if let Some(producer) = &producer {
            let mut plan = Vec::new();
            for _ in 0..50 {
                let u = usize::try_from(rng.below(USERS as u64)).unwrap_or(0);
                let n = 1 + rng.below(20);
                plan.push((u, next_slice[u], n, request));
                next_slice[u] += n;
                request += 1;
            }
            let (producer, topic, ledger) = (producer.clone(), topic.clone(), ledger.clone());
            kafka_records += plan.len();
            tasks.push(rt.spawn(async move {
                for (u, slice, n, id) in plan {
                    let (user, source) = (format!("u{u}"), "kafka".to_owned());
                    ledger.lock().sent.entry((user.clone(), source.clone())).and_modify(|s| *s += n).or_insert(n);
                    let payload = body(&format!("k-{id}"), &user, &source, slice, n).to_string();
                    let record =
                        rdkafka::producer::FutureRecord::to(&topic).key(user.as_str()).payload(payload.as_str());
                    producer.send(record, Duration::from_secs(60)).await.expect("delivered");
                    ledger.lock().acked.entry((user, source)).and_modify(|s| *s += n).or_insert(n);
                }
            }));
        }
        std::thread::sleep(kill_after);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        for t in tasks {
            let _ = rt.block_on(t);
        }
        eprintln!("cycle {}/{}: killed after {} ms", cycle + 1, args.cycles, kill_after.as_millis());
    }
    // A last restart checks the last cycle's writes.
    let (mut child, base) = spawn(dir.path(), brokers.as_deref(), &topic, args.cycles);
    rt.block_on(ready(&client, &base));
    rt.block_on(settle(&client, &base, kafka_records));
    rt.block_on(verify(&client, &base, &ledger, args.cycles));
    let l = ledger.lock();
    let acked: u64 = l.acked.values().sum();
    let sent: u64 = l.sent.values().sum();
    drop(l);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{}",
        json!({"bench": "crash_soak", "cycles": args.cycles, "seed": args.seed, "kafka": brokers.is_some(),
               "samples_sent": sent, "samples_acknowledged": acked, "violations": 0,
               "seconds": started.elapsed().as_secs_f64()})
    );
}
