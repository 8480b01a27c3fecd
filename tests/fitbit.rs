//! The Fitbit export end to end: hourly steps and calories uploaded in batches of 500 give, per user
//! and day, exactly the sum of the file's hourly rows, over HTTP and over SQL.

use std::collections::BTreeMap;

use chrono::NaiveDateTime;
use serde_json::{Value, json};

use crate::common::{Server, UPSERT, fitabase, temp_dir};

/// `(user, "YYYY-MM-DDTHH:00:00Z", value)` rows of an hourly Fitbit file.
pub fn hourly(file: &str) -> Vec<(String, String, f64)> {
    let text = std::fs::read_to_string(fitabase().join(file)).expect("fitabase file");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            let t = NaiveDateTime::parse_from_str(cols[1], "%m/%d/%y %H:%M").expect("ActivityHour");
            (cols[0].to_owned(), t.format("%Y-%m-%dT%H:%M:%SZ").to_string(), cols[2].parse().expect("value"))
        })
        .collect()
}

/// Batch bodies of at most 500 samples per user, for one metric of one file.
pub fn batches(rows: &[(String, String, f64)], metric: &str, unit: &str, tag: &str) -> Vec<Value> {
    let mut per_user: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for (user, start, v) in rows {
        let end = (chrono::DateTime::parse_from_rfc3339(start).expect("start") + chrono::Duration::hours(1))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        per_user.entry(user).or_default().push(json!({
            "sourceId": "fitbit", "sourceRecordId": format!("{metric}-{start}"), "metric": metric,
            "startAt": start, "endAt": end, "value": v, "unit": unit, "sourceClass": "band"}));
    }
    let mut out = Vec::new();
    for (user, samples) in per_user {
        for (i, chunk) in samples.chunks(500).enumerate() {
            out.push(json!({"requestId": format!("{tag}-{metric}-{user}-{i}"), "userId": user,
                            "deviceTimeZone": "UTC", "platform": "fitbit", "samples": chunk}));
        }
    }
    out
}

/// Per (user, date) sums of an hourly file.
pub fn daily_sums(rows: &[(String, String, f64)]) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for (user, start, v) in rows {
        *out.entry((user.clone(), start[..10].to_owned())).or_insert(0.0) += v;
    }
    out
}

/// Reads a user's daily rollups of `metric` as `date → (sum, count)`, waiting for `min_epoch`.
pub async fn read_days(
    server: &Server,
    user: &str,
    metric: &str,
    min_epoch: u64,
) -> (Value, BTreeMap<String, (f64, i64)>) {
    let (status, body) =
        server.get(&format!("/v1/users/{user}/daily-rollups?metric={metric}&minEpoch={min_epoch}&waitMs=30000")).await;
    assert_eq!(status, 200, "{body}");
    let mut days = BTreeMap::new();
    for r in body["rows"].as_array().expect("rows") {
        days.insert(
            r["localDate"].as_str().expect("localDate").to_owned(),
            (r["sum"].as_f64().expect("sum"), r["count"].as_i64().expect("count")),
        );
    }
    (body, days)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fitbit_hourly_steps_and_calories_sum_exactly_per_user_and_day() {
    let dir = temp_dir();
    let server = Server::start(dir.path());
    server.ready().await;
    let steps = hourly("hourlySteps_merged.csv");
    let calories = hourly("hourlyCalories_merged.csv");
    let mut bodies = batches(&steps, "steps", "count", "fit");
    bodies.extend(batches(&calories, "active_energy", "kcal", "fit"));

    // Upload with a few requests in flight at once, as phones would.
    let mut last_epoch = 0;
    for group in bodies.chunks(8) {
        let futures = group.iter().map(|b| server.post(UPSERT, b));
        for (status, resp) in futures::future::join_all(futures).await {
            assert_eq!(status, 200, "{resp}");
            assert_eq!(resp["rejected"], json!([]));
            last_epoch = last_epoch.max(resp["epoch"].as_u64().expect("epoch"));
        }
    }

    for (rows, metric) in [(&steps, "steps"), (&calories, "active_energy")] {
        let want = daily_sums(rows);
        let users: std::collections::BTreeSet<&String> = want.keys().map(|(u, _)| u).collect();
        for user in users {
            let (body, got) = read_days(&server, user, metric, last_epoch).await;
            assert!(body["asOfEpoch"].as_u64().expect("asOfEpoch") >= last_epoch);
            assert_eq!(body["pending"], json!(false));
            let want_user: BTreeMap<&String, f64> =
                want.iter().filter(|((u, _), _)| u == user).map(|((_, d), v)| (d, *v)).collect();
            assert_eq!(got.len(), want_user.len(), "days of {user} {metric}");
            for (d, v) in want_user {
                let (sum, count) = got[d.as_str()];
                assert!((sum - v).abs() <= 1e-9 * v.abs().max(1.0), "{user} {d} {metric}: {sum} vs {v}");
                assert!(count > 0);
            }
        }
        // The same totals through SQL.
        let (status, body) = server
            .sql(&format!("SELECT count(*) AS days, sum(sum) AS total FROM daily_rollups WHERE metric = '{metric}'"))
            .await;
        assert_eq!(status, 200, "{body}");
        let total: f64 = want.values().sum();
        assert_eq!(body["rows"][0]["days"].as_i64(), Some(want.len() as i64));
        let got_total = body["rows"][0]["total"].as_f64().expect("total");
        assert!((got_total - total).abs() <= 1e-6 * total, "{got_total} vs {total}");
    }
    server.stop();
}
