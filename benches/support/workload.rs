//! The benchmark workload: realistic phone uploads, deterministic by seed, in the order phones would
//! send them, written once to files so every contender reads identical input.
//!
//! Per user and local day: heart rate every 5 minutes (watch); steps in 10-minute intervals from the
//! watch (07:00–23:00) and 15-minute intervals from the phone (08:00–20:00, offset, so they overlap
//! and the priority merge matters); active energy in 10-minute intervals (watch); a night of 20–40
//! sleep stages (a third of the nights also from a ring); three HRV readings; a weekly weight in kg
//! or lb; 0–3 consumption sessions over five products (domain changes). Users are spread over six
//! IANA zones; the range starts 2024-03-01, so US and EU DST transitions fall inside a month.
//! Arrival: day by day, most users' batches on time, about 5% of user-days three to seven days late,
//! about 2% of batches followed later by an edit of some of their samples and 1% by deletions.

use std::io::Write;
use std::path::Path;

use chrono::{NaiveDate, TimeZone};
use serde_json::{Value, json};

pub const ZONES: [&str; 6] =
    ["America/New_York", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata", "Australia/Sydney", "UTC"];

/// `S` = 120 users × 30 days (≈ 2.0M samples), `M` = 110 users × 240 days (≈ 14.8M samples): the
/// issue's sample counts and day ranges. Its per-day content (heart rate every 5 minutes alone is
/// 288 samples) makes about 562 samples per user-day, so 1,000 users would be 8× its counts.
pub fn scale(name: &str) -> Option<(usize, usize)> {
    match name {
        "S" | "s" => Some((120, 30)),
        "M" | "m" => Some((110, 240)),
        _ => None,
    }
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub struct Workload {
    /// Batch-upsert bodies in arrival order, serialized (JSON with sorted keys): as values they
    /// would take about three times the memory, too much at scale `M`.
    pub batches: Vec<Vec<u8>>,
    /// Domain-changes bodies (products once, then sessions), in arrival order.
    pub domain: Vec<Value>,
    /// Samples in the batches (edits count again; deletions do not).
    pub samples: usize,
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// UTC milliseconds of local `date` + `minutes` in `zone` (the earlier instant in a fold, the
/// instant after a gap).
fn local_ms(zone: chrono_tz::Tz, date: NaiveDate, minutes: i64) -> i64 {
    let wall = date.and_hms_opt(0, 0, 0).unwrap_or_default() + chrono::Duration::minutes(minutes);
    match zone.from_local_datetime(&wall) {
        chrono::LocalResult::Single(t) | chrono::LocalResult::Ambiguous(t, _) => t.timestamp_millis(),
        chrono::LocalResult::None => {
            zone.from_utc_datetime(&(wall - chrono::Duration::hours(1))).timestamp_millis() + 3_600_000
        }
    }
}

/// A quantity sample; the source class follows the source (`scale` is a manual entry).
fn quantity(src: &str, rec: String, metric: &str, a: i64, b: i64, v: f64, unit: &str) -> Value {
    let class = if src == "scale" { "manual" } else { src };
    json!({"sourceId": src, "sourceRecordId": rec, "metric": metric, "startAt": iso(a), "endAt": iso(b),
           "value": v, "unit": unit, "sourceClass": class})
}

fn stage(src: &str, rec: String, a: i64, b: i64, category: &str, class: &str) -> Value {
    json!({"sourceId": src, "sourceRecordId": rec, "metric": "sleep_analysis", "startAt": iso(a), "endAt": iso(b),
           "category": category, "sourceClass": class})
}

/// One user's samples of one local day.
fn day_samples(rng: &mut Rng, zone: chrono_tz::Tz, date: NaiveDate, d: usize, lb: bool) -> Vec<Value> {
    let mut out = Vec::with_capacity(600);
    let at = |m: i64| local_ms(zone, date, m);
    for k in 0..288 {
        let t = at(k * 5);
        let base = if (23 * 12..).contains(&k) || k < 7 * 12 { 55.0 } else { 72.0 };
        out.push(quantity(
            "watch",
            format!("hr-{d}-{k}"),
            "heart_rate",
            t,
            t,
            base + rng.below(30) as f64,
            "count/min",
        ));
    }
    for k in 0..96 {
        let a = at(7 * 60 + k * 10);
        out.push(quantity("watch", format!("st-{d}-{k}"), "steps", a, a + 600_000, rng.below(900) as f64, "count"));
        out.push(quantity(
            "watch",
            format!("ae-{d}-{k}"),
            "active_energy",
            a,
            a + 600_000,
            rng.below(40) as f64 / 2.0,
            "kcal",
        ));
    }
    for k in 0..48 {
        let a = at(8 * 60 + 5 + k * 15);
        out.push(quantity("phone", format!("ps-{d}-{k}"), "steps", a, a + 900_000, rng.below(1200) as f64, "count"));
    }
    // The night ending this morning: 20–40 stages from 23:00 the day before.
    let stages = 20 + rng.below(21) as i64;
    let mut t = at(-60 + rng.below(45) as i64);
    for k in 0..stages {
        let len = (8 + rng.below(20)) as i64 * 60_000;
        let category = ["asleepCore", "asleepDeep", "asleepREM", "asleepCore", "awake"][rng.below(5) as usize];
        out.push(stage("watch", format!("sl-{d}-{k}"), t, t + len, category, "watch"));
        t += len;
    }
    if rng.below(3) == 0 {
        let a = at(-50);
        out.push(stage("ring", format!("rs-{d}"), a, a + 7 * 3_600_000, "asleepUnspecified", "ring"));
    }
    for k in 0..3 {
        let t = at(6 * 60 + k * 300 + rng.below(60) as i64);
        out.push(quantity("watch", format!("hrv-{d}-{k}"), "hrv_sdnn", t, t, 30.0 + rng.below(60) as f64, "ms"));
    }
    if d.is_multiple_of(7) {
        let t = at(7 * 60 + 30);
        let kg = 60.0 + rng.below(400) as f64 / 10.0;
        let (v, unit) = if lb { (kg * 2.204_622_6, "lb") } else { (kg, "kg") };
        out.push(quantity("scale", format!("w-{d}"), "body_mass", t, t, (v * 10.0).round() / 10.0, unit));
    }
    out
}

/// The whole workload for `users` × `days`, batches of at most `batch` samples.
pub fn generate(users: usize, days: usize, batch: usize, seed: u64) -> Workload {
    let start = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap_or_default();
    let mut rng = Rng::new(seed);
    let products: Vec<String> = (0..5).map(|p| format!("product-{p}")).collect();
    let mut domain = vec![
        json!({"requestId": "products", "changes": products.iter().map(|p| json!({"entity": "product",
        "op": "upsert", "data": {"productId": p, "name": format!("Product {p}"), "category": "coffee"}})).collect::<Vec<_>>()}),
    ];
    // (arrival day, body) so that late batches can be sorted into place.
    let mut arrivals: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    let bytes = |v: Value| serde_json::to_vec(&v).unwrap_or_default();
    let mut samples = 0;
    for u in 0..users {
        let zone_name = ZONES[u % ZONES.len()];
        let zone: chrono_tz::Tz = zone_name.parse().unwrap_or(chrono_tz::UTC);
        let user = format!("user-{u}");
        let lb = u % 3 == 0;
        for d in 0..days {
            let date = start + chrono::Duration::days(d as i64);
            let day = day_samples(&mut rng, zone, date, d, lb);
            let arrive = if rng.below(20) == 0 { d + 3 + rng.below(5) as usize } else { d };
            for (i, chunk) in day.chunks(batch.max(1)).enumerate() {
                samples += chunk.len();
                arrivals.push((
                    arrive,
                    arrivals.len(),
                    bytes(json!({"requestId": format!("{user}-{d}-{i}"), "userId": user,
                    "deviceTimeZone": zone_name, "platform": "healthkit", "samples": chunk})),
                ));
                let roll = rng.below(100);
                if roll < 2 {
                    let edited: Vec<Value> = chunk
                        .iter()
                        .step_by(10)
                        .filter(|s| s.get("value").is_some())
                        .map(|s| {
                            let mut s = s.clone();
                            s["value"] = json!(s["value"].as_f64().unwrap_or(0.0) + 1.0);
                            s
                        })
                        .collect();
                    samples += edited.len();
                    arrivals.push((
                        arrive + 1,
                        arrivals.len(),
                        bytes(json!({"requestId": format!("{user}-{d}-{i}-edit"),
                        "userId": user, "deviceTimeZone": zone_name, "samples": edited})),
                    ));
                } else if roll < 3 {
                    let deletions: Vec<Value> = chunk
                        .iter()
                        .step_by(25)
                        .map(|s| json!({"sourceId": s["sourceId"], "sourceRecordId": s["sourceRecordId"]}))
                        .collect();
                    arrivals.push((
                        arrive + 1,
                        arrivals.len(),
                        bytes(json!({"requestId": format!("{user}-{d}-{i}-del"),
                        "userId": user, "samples": [], "deletions": deletions})),
                    ));
                }
            }
            for s in 0..rng.below(4) {
                let a = local_ms(zone, date, 8 * 60 + rng.below(10 * 60) as i64);
                domain.push(json!({"requestId": format!("{user}-{d}-s{s}"), "changes": [{"entity": "session", "op": "upsert",
                    "data": {"userId": user, "sessionId": format!("{d}-{s}"), "productId": products[rng.below(5) as usize],
                             "startAt": iso(a), "endAt": iso(a + 15 * 60_000), "quantity": 1.0, "zoneId": zone_name}}]}));
            }
        }
    }
    arrivals.sort_by_key(|(day, order, _)| (*day, *order));
    Workload { batches: arrivals.into_iter().map(|(_, _, b)| b).collect(), domain, samples }
}

/// Writes `batches.jsonl`, `domain.jsonl` and `samples.csv` (the batches' samples, flattened).
pub fn write(w: &Workload, dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut b = std::io::BufWriter::new(std::fs::File::create(dir.join("batches.jsonl"))?);
    for body in &w.batches {
        b.write_all(body)?;
        b.write_all(b"\n")?;
    }
    let mut d = std::io::BufWriter::new(std::fs::File::create(dir.join("domain.jsonl"))?);
    for body in &w.domain {
        writeln!(d, "{body}")?;
    }
    let mut c = std::io::BufWriter::new(std::fs::File::create(dir.join("samples.csv"))?);
    writeln!(
        c,
        "request_id,user_id,device_time_zone,source_id,source_record_id,metric,start_at,end_at,value,unit,category,source_class"
    )?;
    let s = |v: &Value| {
        v.as_str().map(str::to_owned).unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() })
    };
    for body in &w.batches {
        let body: Value = serde_json::from_slice(body)?;
        for x in body["samples"].as_array().into_iter().flatten() {
            let batch = ["requestId", "userId", "deviceTimeZone"].map(|k| s(&body[k]));
            let sample = [
                "sourceId",
                "sourceRecordId",
                "metric",
                "startAt",
                "endAt",
                "value",
                "unit",
                "category",
                "sourceClass",
            ]
            .map(|k| s(&x[k]));
            writeln!(c, "{},{}", batch.join(","), sample.join(","))?;
        }
    }
    Ok(())
}
