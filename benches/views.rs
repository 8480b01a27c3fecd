//! The single-worker kernel of each view (issue 13): every view maintained alone by one timely
//! worker, fed the issue-5 workload (benches/support/workload.rs) as validated records, one epoch
//! per request, as the writer would feed it (an edit is a retraction and an insertion, a deletion
//! a retraction). No HTTP, no store, no snapshot: the time from the first epoch pushed to the
//! view's frontier passing the last one, and the input updates per second it gives.
//!
//! `cargo bench --bench views -- [--users 12] [--days 30] [--runs 3] [--views a,b] [--probe N]`
//!
//! With `--probe N` (issue 14: does a small change cost more with more history behind it?), each
//! view is first fed the whole workload, then N syncs of 50 one-second `steps` samples, one user
//! each in turn, on the workload's last day: each sync is its own epoch, pushed only after the
//! previous one has passed the view's frontier, and timed from push to frontier; then the same N
//! syncs 25 days back (issue 14 §4, the end-to-end bench's late samples). Run it at two `--days` to
//! compare the same sync behind 30 and 240 days of history. Prints a Markdown table of percentiles
//! per view instead of the JSON lines.
//!
//! A view built on another (`weekly_steps` on `daily_rollups`, `product_impacts` on
//! `session_impacts`) includes what it is built on. Prints one JSON line per view and a
//! Markdown table.

/// The server's allocator, so that the kernel allocates as the server does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)]
#[path = "support/workload.rs"]
mod workload;

use std::collections::HashMap;
use std::time::Instant;

use vitalflow_dataflows::registry::{VIEWS, ViewSpec};
use vitalflow_dataflows::runtime::Runtime;
use vitalflow_ingest::http::parse_batch;
use vitalflow_schemas::domain::{DomainChange, parse_change};
use vitalflow_schemas::validate::{RequestContext, validate_sample};
use vitalflow_schemas::{Change, EpochBatch, Limits, Sample, Zone};

/// The workload as the dataflow sees it, and its size.
struct Epochs {
    batches: Vec<EpochBatch>,
    updates: usize,
    samples: usize,
    sessions: usize,
}

/// A sample's identity in the store (I3): user, source, record.
type RecordKey = (String, String, String);

/// After the workload's last day, so that G6 takes every instant as past.
fn received_at(days: usize) -> i64 {
    1_709_251_200_000 + (days as i64 + 30) * 86_400_000
}

/// Validates the workload into epochs: domain changes first (epoch 1), then one epoch per batch.
fn epochs(users: usize, days: usize) -> Epochs {
    let w = workload::generate(users, days, 500, 1);
    let limits = Limits::default();
    let received_at_ms = received_at(days);
    let mut batches = Vec::new();
    let mut domain = Vec::new();
    let mut sessions = 0;
    for request in &w.domain {
        for change in request["changes"].as_array().into_iter().flatten() {
            match parse_change(change, received_at_ms, &limits) {
                Ok(DomainChange::UpsertSession(s)) => {
                    sessions += 1;
                    domain.push(Change::Session(s.resolve(None), 1));
                }
                Ok(DomainChange::UpsertProduct(p)) => domain.push(Change::Product(p, 1)),
                Ok(other) => panic!("the workload has no {other:?}"),
                Err(e) => panic!("workload domain change refused: {e:?}"),
            }
        }
    }
    batches.push(EpochBatch { epoch: 1, changes: domain });
    let mut store: HashMap<RecordKey, Sample> = HashMap::new();
    let mut samples = 0;
    for body in &w.batches {
        let (changes, n) = changes_of(body, &mut store, received_at_ms);
        samples += n;
        let epoch = batches.len() as u64 + 1;
        batches.push(EpochBatch { epoch, changes });
    }
    let updates = batches.iter().map(|b| b.changes.len()).sum();
    Epochs { batches, updates, samples, sessions }
}

/// The changes one batch-upsert body makes against `store` (the records stored so far), as the
/// writer would push them, and the number of samples in it.
fn changes_of(body: &[u8], store: &mut HashMap<RecordKey, Sample>, received_at_ms: i64) -> (Vec<Change>, usize) {
    let limits = Limits::default();
    let (req, _) = parse_batch(axum::body::Bytes::from(body.to_vec()), &limits)
        .unwrap_or_else(|e| panic!("workload batch refused: {e:?}"));
    let zone = req.device_time_zone.as_deref().and_then(Zone::parse);
    let ctx = RequestContext {
        user_id: &req.user_id,
        platform: req.platform.as_deref(),
        device_zone: zone,
        profile: None,
        received_at_ms,
        limits: &limits,
    };
    let mut changes = Vec::new();
    for ws in &req.samples {
        let sample = validate_sample(ws, &ctx).unwrap_or_else(|e| panic!("workload sample refused: {e:?}")).sample;
        let key = (sample.user_id.clone(), sample.source_id.clone(), sample.source_record_id.clone());
        if let Some(old) = store.insert(key, sample.clone()) {
            changes.push(Change::Sample(old, -1));
        }
        changes.push(Change::Sample(sample, 1));
    }
    for d in &req.deletions {
        let key = (req.user_id.clone(), d.source_id.clone(), d.source_record_id.clone());
        if let Some(old) = store.remove(&key) {
            changes.push(Change::Sample(old, -1));
        }
    }
    (changes, req.samples.len())
}

/// `n` syncs of 50 one-second `steps` samples from a watch (the end-to-end bench's steady sync),
/// one workload user each in turn, from noon UTC `days_back` days before the workload's last day
/// on (0: the live edge; 25: the end-to-end bench's late samples), each its own epoch from `first`
/// on. `tag` keeps the record and request ids of two probe sets apart.
fn probe_batches(n: usize, users: usize, days: usize, days_back: usize, tag: &str, first: u64) -> Vec<EpochBatch> {
    let mut store = HashMap::new();
    let noon = 1_709_251_200_000 + (days as i64 - 1 - days_back as i64) * 86_400_000 + 43_200_000;
    let iso = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|d| d.to_rfc3339()).unwrap_or_default();
    (0..n)
        .map(|i| {
            let t0 = noon + i as i64 * 60_000;
            let samples: Vec<serde_json::Value> = (0..50_i64)
                .map(|k| {
                    serde_json::json!({"sourceId": "watch", "sourceRecordId": format!("probe-{tag}-{i}-{k}"),
                        "metric": "steps", "startAt": iso(t0 + k * 1000), "endAt": iso(t0 + k * 1000 + 1000),
                        "value": 1, "unit": "count", "sourceClass": "watch"})
                })
                .collect();
            let body = serde_json::json!({"requestId": format!("probe-{tag}-{i}"), "userId": format!("user-{}", i % users),
                "deviceTimeZone": "UTC", "samples": samples});
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            EpochBatch { epoch: first + i as u64, changes: changes_of(&bytes, &mut store, received_at(days)).0 }
        })
        .collect()
}

/// One view alone on one worker, its input pushed: the runtime, and what it reports (each
/// frontier with the number of output updates that came with it), read on a thread of its own,
/// since the worker queue is bounded and a push can wait for the output to drain.
struct Fed {
    runtime: Runtime,
    progress: crossbeam_channel::Receiver<(u64, usize)>,
    drain: std::thread::JoinHandle<()>,
}

impl Fed {
    /// Starts `view` on one worker.
    fn start(view: ViewSpec) -> Fed {
        let (tx, rx) = crossbeam_channel::unbounded();
        let runtime = Runtime::start(1, vec![view], tx).unwrap_or_else(|e| panic!("{e}"));
        let (ptx, progress) = crossbeam_channel::unbounded();
        let drain = std::thread::spawn(move || {
            for p in rx {
                if ptx.send((p.frontier, p.updates.len())).is_err() {
                    break;
                }
            }
        });
        Fed { runtime, progress, drain }
    }

    /// Pushes `batches` (in order) without waiting for the view.
    fn push_all(&mut self, batches: Vec<EpochBatch>) {
        for batch in batches {
            self.runtime.push(batch).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Waits until the view's frontier passes `epoch`: the output updates reported until then.
    fn wait_past(&self, epoch: u64) -> usize {
        let mut out = 0;
        for (frontier, updates) in self.progress.iter() {
            out += updates;
            if frontier > epoch {
                return out;
            }
        }
        panic!("the view stopped before passing epoch {epoch}")
    }

    /// Pushes one batch and waits for the frontier to pass it: milliseconds from push to frontier.
    fn time_one(&mut self, batch: EpochBatch) -> f64 {
        let (epoch, t) = (batch.epoch, Instant::now());
        self.runtime.push(batch).unwrap_or_else(|e| panic!("{e}"));
        self.wait_past(epoch);
        t.elapsed().as_secs_f64() * 1000.0
    }

    fn stop(self) {
        self.runtime.shutdown();
        self.drain.join().ok();
    }
}

/// One run of `view` alone on one worker: seconds until its frontier passes the last epoch, and
/// the output updates it produced.
fn run(view: ViewSpec, epochs: &Epochs) -> (f64, usize) {
    let last = epochs.batches.last().map_or(0, |b| b.epoch);
    // The copy and the runtime's start are not part of the figure.
    let (batches, mut fed) = (epochs.batches.clone(), Fed::start(view));
    let start = Instant::now();
    fed.push_all(batches);
    let out = fed.wait_past(last);
    let seconds = start.elapsed().as_secs_f64();
    fed.stop();
    (seconds, out)
}

/// Feeds `view` the whole workload, then each probe of each set alone, in turn: per set, the
/// milliseconds from pushing a probe to the view's frontier passing it.
fn run_probes(view: ViewSpec, epochs: &Epochs, sets: &[Vec<EpochBatch>]) -> Vec<Vec<f64>> {
    let mut fed = Fed::start(view);
    fed.push_all(epochs.batches.clone());
    fed.wait_past(epochs.batches.last().map_or(0, |b| b.epoch));
    // Cloned before timing, so that the copy is not part of a probe's time.
    let ms = sets.iter().map(|set| set.clone().into_iter().map(|probe| fed.time_one(probe)).collect()).collect();
    fed.stop();
    ms
}

/// The `q` quantile of sorted `xs`.
fn quantile(xs: &[f64], q: f64) -> f64 {
    xs.get(((xs.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let num = |name: &str, default: usize| flag(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (users, days, runs) = (num("--users", 12).max(1), num("--days", 30).max(1), num("--runs", 3).max(1));
    let only: Option<Vec<String>> = flag("--views").map(|v| v.split(',').map(str::to_owned).collect());
    let t = Instant::now();
    let epochs = epochs(users, days);
    eprintln!(
        "workload: {users} users × {days} days: {} samples, {} sessions, {} input updates in {} epochs ({:.1} s to build)",
        epochs.samples,
        epochs.sessions,
        epochs.updates,
        epochs.batches.len(),
        t.elapsed().as_secs_f64()
    );
    if let Some(n) = flag("--probe").and_then(|v| v.parse::<usize>().ok()) {
        // The same syncs at the live edge, then 25 days back (issue 14 §4: late data stays cheap).
        let first = epochs.batches.last().map_or(0, |b| b.epoch) + 1;
        let back = 25.min(days - 1);
        let sets = [
            probe_batches(n, users, days, 0, "live", first),
            probe_batches(n, users, days, back, "late", first + n as u64),
        ];
        println!(
            "\n| view | {users} users × {days} days: sync → frontier p50 / p90 / p99 / max ms, live edge | {back} days back |\n|---|---|---|"
        );
        for view in VIEWS.iter().filter(|v| only.as_ref().is_none_or(|o| o.iter().any(|n| n == v.def.name))) {
            let cells: Vec<String> = run_probes(*view, &epochs, &sets)
                .into_iter()
                .map(|mut ms| {
                    ms.sort_by(f64::total_cmp);
                    let [p50, p90, p99, max] = [0.5, 0.9, 0.99, 1.0].map(|q| quantile(&ms, q));
                    format!("{p50:.2} / {p90:.2} / {p99:.2} / {max:.2}")
                })
                .collect();
            println!("| `{}` | {} |", view.def.name, cells.join(" | "));
        }
        return;
    }
    let mut table = Vec::new();
    for view in VIEWS.iter().filter(|v| only.as_ref().is_none_or(|o| o.iter().any(|n| n == v.def.name))) {
        let mut times: Vec<f64> = Vec::new();
        let mut out = 0;
        for _ in 0..runs {
            let (s, o) = run(*view, &epochs);
            times.push(s);
            out = o;
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        let line = serde_json::json!({
            "view": view.def.name, "runs": runs, "median_s": median, "min_s": times[0],
            "max_s": times[times.len() - 1], "input_updates": epochs.updates,
            "updates_per_s": (epochs.updates as f64 / median).round(), "output_updates": out,
        });
        println!("{line}");
        table.push(line);
    }
    println!("\n| view | median s (min–max) | input updates/s | output updates |\n|---|---|---|---|");
    for l in &table {
        let f = |k: &str| l[k].as_f64().unwrap_or(0.0);
        println!(
            "| `{}` | {:.2} ({:.2}–{:.2}) | {:.0} | {} |",
            l["view"].as_str().unwrap_or(""),
            f("median_s"),
            f("min_s"),
            f("max_s"),
            f("updates_per_s"),
            l["output_updates"].as_u64().unwrap_or(0)
        );
    }
}
