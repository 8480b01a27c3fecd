//! The original design as a peer: samples upserted into a Postgres `health_sample` table with its
//! unique key and, in the same transaction, the touched `(user, metric, local day)` rollups
//! recomputed with `INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE` (M1 written in SQL), driven
//! from Rust with tokio-postgres. Replays a workload written by `e2e --write DIR` in chunks of
//! 10,000 sample operations and checks the final rollups against vitalflow's rows (cumulative
//! metrics, as the DuckDB peer).
//!
//! `cargo bench --profile dev --bench peer_postgres -- DIR VITALFLOW_ROWS_JSON DATABASE_URL`

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use serde_json::{Value, json};
use tokio_postgres::NoTls;

const CUMULATIVE: [&str; 2] = ["steps", "active_energy"];

fn rank(class: &str) -> i32 {
    ["manual", "watch", "ring", "band", "chest_strap", "phone", "other", "unknown"]
        .iter()
        .position(|c| *c == class)
        .unwrap_or(7) as i32
}

fn ms(iso: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(iso).map_or(0, |t| t.timestamp_millis())
}

/// `(metric, start_ms, end_ms, value, rank, zone)`.
type SampleRow = (String, i64, i64, f64, i32, String);

/// One sample operation: an upsert (with its row) or a deletion.
struct Op {
    user: String,
    source: String,
    record: String,
    row: Option<SampleRow>,
}

fn operations(path: &str) -> Vec<Op> {
    let text = std::fs::read_to_string(path).expect("batches.jsonl");
    let mut ops = Vec::new();
    let mut tomb: HashSet<(String, String, String)> = HashSet::new();
    for line in text.lines() {
        let b: Value = serde_json::from_str(line).expect("json");
        let user = b["userId"].as_str().unwrap_or("").to_owned();
        let zone = b["deviceTimeZone"].as_str().unwrap_or("UTC").to_owned();
        for s in b["samples"].as_array().into_iter().flatten() {
            let (source, record) = (s["sourceId"].as_str().unwrap_or(""), s["sourceRecordId"].as_str().unwrap_or(""));
            let metric = s["metric"].as_str().unwrap_or("");
            if !CUMULATIVE.contains(&metric) || tomb.contains(&(user.clone(), source.to_owned(), record.to_owned())) {
                continue;
            }
            ops.push(Op {
                user: user.clone(),
                source: source.to_owned(),
                record: record.to_owned(),
                row: Some((
                    metric.to_owned(),
                    ms(s["startAt"].as_str().unwrap_or("")),
                    ms(s["endAt"].as_str().unwrap_or("")),
                    s["value"].as_f64().unwrap_or(0.0),
                    rank(s["sourceClass"].as_str().unwrap_or("unknown")),
                    zone.clone(),
                )),
            });
        }
        for d in b["deletions"].as_array().into_iter().flatten() {
            let key = (
                user.clone(),
                d["sourceId"].as_str().unwrap_or("").to_owned(),
                d["sourceRecordId"].as_str().unwrap_or("").to_owned(),
            );
            tomb.insert(key.clone());
            ops.push(Op { user: key.0, source: key.1, record: key.2, row: None });
        }
    }
    ops
}

/// The slices of the given samples, their C1 shares and local dates (the M1 input).
const PIECES: &str = "SELECT s.user_id, s.metric, s.source_id, s.rank, k AS slice,
       (to_timestamp(k * 900) AT TIME ZONE s.zone)::date AS local_date,
       s.value * (least(s.end_ms, (k + 1) * 900000) - greatest(s.start_ms, k * 900000))::float8 / (s.end_ms - s.start_ms) AS share
  FROM {samples} s, generate_series(s.start_ms / 900000, (s.end_ms - 1) / 900000) AS k
 WHERE s.end_ms > s.start_ms";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let [dir, rows_json, url] = [0, 1, 2].map(|i| args.get(i).cloned().expect("DIR VITALFLOW_ROWS_JSON DATABASE_URL"));
    let ops = operations(&format!("{dir}/batches.jsonl"));
    let (mut client, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
        .batch_execute(
            "DROP TABLE IF EXISTS health_sample, health_rollup_day;
             CREATE TABLE health_sample (user_id text, source_id text, source_record_id text, metric text NOT NULL,
               start_ms bigint NOT NULL, end_ms bigint NOT NULL, value float8 NOT NULL, rank int NOT NULL, zone text NOT NULL,
               PRIMARY KEY (user_id, source_id, source_record_id));
             CREATE TABLE health_rollup_day (user_id text, metric text, local_date date, sum float8 NOT NULL,
               PRIMARY KEY (user_id, metric, local_date));",
        )
        .await
        .expect("tables");
    let touched_sql = format!(
        "CREATE TEMP TABLE touched ON COMMIT DROP AS SELECT DISTINCT user_id, metric, local_date FROM ({}) p",
        PIECES.replace(
            "{samples}",
            "(SELECT h.* FROM health_sample h JOIN chunk_keys c USING (user_id, source_id, source_record_id)) "
        )
    );
    let recompute = format!(
        "WITH p AS ({pieces}), w AS (
           SELECT DISTINCT ON (user_id, metric, slice) user_id, metric, slice, rank, source_id FROM p
            ORDER BY user_id, metric, slice, rank, source_id)
         INSERT INTO health_rollup_day
         SELECT p.user_id, p.metric, p.local_date, sum(p.share) FROM p JOIN w USING (user_id, metric, slice, rank, source_id)
          JOIN (SELECT DISTINCT * FROM touched) t ON t.user_id = p.user_id AND t.metric = p.metric AND t.local_date = p.local_date
          GROUP BY 1, 2, 3
         ON CONFLICT (user_id, metric, local_date) DO UPDATE SET sum = excluded.sum",
        pieces = PIECES.replace(
            "{samples}",
            "(SELECT h.* FROM health_sample h WHERE (h.user_id, h.metric) IN (SELECT DISTINCT user_id, metric FROM touched))"
        )
    );
    let started = Instant::now();
    let mut chunk_ms = Vec::new();
    for chunk in ops.chunks(10_000) {
        let t0 = Instant::now();
        // The chunk's last word per key.
        let mut last: BTreeMap<(&str, &str, &str), &Op> = BTreeMap::new();
        for op in chunk {
            last.insert((op.user.as_str(), op.source.as_str(), op.record.as_str()), op);
        }
        let txn = client.transaction().await.expect("txn");
        let cols = |f: &dyn Fn(&Op) -> String| last.values().map(|o| f(o)).collect::<Vec<String>>();
        let (users, sources, records) =
            (cols(&|o| o.user.clone()), cols(&|o| o.source.clone()), cols(&|o| o.record.clone()));
        txn.execute(
            "CREATE TEMP TABLE chunk_keys ON COMMIT DROP AS SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS k(user_id, source_id, source_record_id)",
            &[&users, &sources, &records],
        )
        .await
        .expect("keys");
        // Groups touched by the old versions, before they change …
        txn.batch_execute(&touched_sql).await.expect("touched (old)");
        txn.execute("DELETE FROM health_sample h USING chunk_keys c WHERE (h.user_id, h.source_id, h.source_record_id) = (c.user_id, c.source_id, c.source_record_id)", &[])
            .await
            .expect("delete");
        let ups: Vec<&Op> = last.values().copied().filter(|o| o.row.is_some()).collect();
        let rows: Vec<(&Op, &SampleRow)> = ups.iter().filter_map(|o| o.row.as_ref().map(|r| (*o, r))).collect();
        let u: Vec<&str> = rows.iter().map(|(o, _)| o.user.as_str()).collect();
        let so: Vec<&str> = rows.iter().map(|(o, _)| o.source.as_str()).collect();
        let re: Vec<&str> = rows.iter().map(|(o, _)| o.record.as_str()).collect();
        let m: Vec<&str> = rows.iter().map(|(_, r)| r.0.as_str()).collect();
        let a: Vec<i64> = rows.iter().map(|(_, r)| r.1).collect();
        let b: Vec<i64> = rows.iter().map(|(_, r)| r.2).collect();
        let v: Vec<f64> = rows.iter().map(|(_, r)| r.3).collect();
        let k: Vec<i32> = rows.iter().map(|(_, r)| r.4).collect();
        let z: Vec<&str> = rows.iter().map(|(_, r)| r.5.as_str()).collect();
        txn.execute(
            "INSERT INTO health_sample SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[],
               $6::int8[], $7::float8[], $8::int4[], $9::text[])",
            &[&u, &so, &re, &m, &a, &b, &v, &k, &z],
        )
        .await
        .expect("insert");
        // … and by the new ones.
        txn.batch_execute(&format!(
            "INSERT INTO touched SELECT DISTINCT user_id, metric, local_date FROM ({}) p",
            PIECES.replace(
                "{samples}",
                "(SELECT h.* FROM health_sample h JOIN chunk_keys c USING (user_id, source_id, source_record_id))"
            )
        ))
        .await
        .expect("touched (new)");
        txn.batch_execute(
            "DELETE FROM health_rollup_day d USING touched t WHERE (d.user_id, d.metric, d.local_date) = (t.user_id, t.metric, t.local_date)",
        )
        .await
        .expect("clear touched");
        txn.batch_execute(&recompute).await.expect("recompute");
        txn.commit().await.expect("commit");
        chunk_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    let seconds = started.elapsed().as_secs_f64();
    let got: BTreeMap<(String, String, String), f64> = client
        .query("SELECT user_id, metric, local_date::text, sum FROM health_rollup_day", &[])
        .await
        .expect("rollups")
        .iter()
        .map(|r| ((r.get(0), r.get(1), r.get(2)), r.get(3)))
        .collect();
    let want: BTreeMap<(String, String, String), f64> =
        serde_json::from_str::<Value>(&std::fs::read_to_string(&rows_json).expect("rows")).expect("json")["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .filter(|r| CUMULATIVE.contains(&r["metric"].as_str().unwrap_or("")))
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_owned();
                ((s("user_id"), s("metric"), s("local_date")), r["sum"].as_f64().unwrap_or(f64::NAN))
            })
            .collect();
    let keys: HashSet<&(String, String, String)> = want.keys().chain(got.keys()).collect();
    let mismatches = keys
        .iter()
        .filter(|k| {
            let (a, b) = (want.get(**k).copied().unwrap_or(f64::NAN), got.get(**k).copied().unwrap_or(f64::NAN));
            (a - b).abs().is_nan() || (a - b).abs() > 1e-6 * a.abs().max(1.0)
        })
        .count();
    chunk_ms.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({"peer": "postgres", "what": "upsert + touched-groups recompute in one transaction per 10k chunk",
               "operations": ops.len(), "chunks": chunk_ms.len(), "seconds": seconds, "samples_per_s": ops.len() as f64 / seconds,
               "chunk_ms_p50": chunk_ms.get(chunk_ms.len() / 2), "chunk_ms_max": chunk_ms.last(),
               "checked_against_vitalflow": {"groups": want.len(), "mismatches": mismatches}})
    );
}
