//! Queries that build huge values are refused (422 `QUERY_TOO_EXPENSIVE`) before the process's
//! memory grows: the peak resident memory (`VmHWM`) is compared before and after. One test in its
//! own binary, so that nothing else moves the peak.

mod common;

use axum::http::StatusCode;
use vitalflow_serve::ServeConfig;

use common::{peak_rss, query, router};

/// `WITH l0 AS (SELECT <base> AS s), l1 AS (SELECT <step> AS s FROM l0), …`: each level doubles
/// the value `s`; the query returns `<size>` of the last.
fn doubling(base: &str, step: &str, levels: usize, size: &str) -> String {
    let mut sql = format!("WITH l0 AS (SELECT {base} AS s)");
    for i in 1..=levels {
        sql += &format!(", l{i} AS (SELECT {step} AS s FROM l{})", i - 1);
    }
    sql + &format!(" SELECT {size}(s) AS n FROM l{levels}")
}

#[tokio::test]
async fn hostile_queries_are_refused_within_the_memory_budget() {
    let app = router(ServeConfig::default());
    let before = peak_rss();
    let hostile = [
        // The query of issue 10: string_agg's state is in DataFusion's memory pool.
        "SELECT length(string_agg(repeat('x', 1000), '')) FROM generate_series(1, 2000000)".to_owned(),
        // One huge value, folded at planning or built per row.
        "SELECT length(repeat('x', 2000000000))".to_owned(),
        "SELECT length(repeat('x', 999999 + value % 2)) FROM generate_series(1, 100000)".to_owned(),
        "SELECT length(lpad('x', 2000000000))".to_owned(),
        "SELECT cardinality(range(1, 2000000000))".to_owned(),
        "SELECT cardinality(generate_series(1, 2000000000))".to_owned(),
        "SELECT cardinality(generate_series(TIMESTAMP '1970-01-01', TIMESTAMP '2100-01-01', INTERVAL '1 second'))"
            .to_owned(),
        "SELECT cardinality(array_repeat(1, 2000000000))".to_owned(),
        "SELECT cardinality(array_resize([1], 2000000000))".to_owned(),
        "SELECT length(replace(repeat('x', 1000000), 'x', repeat('y', 1000000)))".to_owned(),
        "SELECT length(regexp_replace(repeat('x', 100000), '', repeat('y', 100000), 'g'))".to_owned(),
        "SELECT length(array_to_string(range(1, 100000), repeat('x', 100000)))".to_owned(),
        // Growth by repetition: each level doubles, or one call repeats its argument.
        doubling("repeat('x', 1000)", "s || s", 24, "length"),
        doubling("repeat('x', 1000)", "concat(s, s)", 24, "length"),
        doubling("make_array(1, 2, 3, 4)", "array_concat(s, s)", 28, "cardinality"),
        doubling("make_array(1, 2, 3, 4)", "s || s", 28, "cardinality"),
        format!("WITH a AS (SELECT repeat('x', 1000000) AS s) SELECT length(concat({})) FROM a", ["s"; 500].join(", ")),
        // A constant repeated once per row of a batch.
        "SELECT max(length(s)) FROM (SELECT repeat('x', 100000) AS s FROM generate_series(1, 100000))".to_owned(),
        // Window functions whose value per row grows with the frame, or repeats a large value per
        // row (a window evaluates its whole partition outside the pool): refused at analysis.
        "SELECT sum(cardinality(a)) FROM (SELECT array_agg(repeat('x', 200000)) OVER (ORDER BY value) a \
         FROM generate_series(1, 2000))"
            .to_owned(),
        "SELECT sum(length(s)) FROM (SELECT string_agg(repeat('x', 1000), '') OVER (ORDER BY value) s \
         FROM generate_series(1, 20000))"
            .to_owned(),
        "SELECT max(length(s)) FROM (SELECT first_value(repeat('x', 200000)) OVER (PARTITION BY value % 7) s \
         FROM generate_series(1, 100000))"
            .to_owned(),
        // The same in a dictionary: a string all the same.
        "SELECT count(a) FROM (SELECT first_value(arrow_cast(repeat('x', 200000), 'Dictionary(Int32, Utf8)')) \
         OVER (PARTITION BY value % 7) a FROM generate_series(1, 40000))"
            .to_owned(),
        // A window buffers its whole input (1 GB of values here): charged to the pool as it arrives.
        "SELECT max(n + length(s)) FROM (SELECT count(*) OVER () AS n, s FROM \
         (SELECT repeat('x', 50000) || value AS s FROM generate_series(1, 20000)))"
            .to_owned(),
    ];
    for sql in &hostile {
        let (status, body) = query(&app, sql).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("QUERY_TOO_EXPENSIVE")),
            "{sql}: {}",
            &body.to_string()[..body.to_string().len().min(300)]
        );
        let grown = peak_rss().saturating_sub(before);
        println!("{} MiB after {}", grown >> 20, &sql[..sql.len().min(100)]);
        assert!(grown < 1 << 30, "{sql}: peak memory grew by {} MiB", grown >> 20);
    }
    // Operators that copy a value once per output row (a cross join, a window) build their output
    // outside the pool; small batches and the per-batch bound keep that bounded, whether the query
    // then succeeds or is refused.
    let copying = [
        // A cross join copies a large value once per output row, outside the memory pool.
        "SELECT max(a.s) = '' FROM (SELECT repeat('x', 100000 + v) AS s FROM generate_series(0, 0) t(v)) a \
         CROSS JOIN generate_series(1, 20000) b"
            .to_owned(),
        "SELECT max(a.s) = '' FROM (SELECT repeat('x', 200000 + v) AS s FROM generate_series(0, 0) t(v)) a \
         CROSS JOIN generate_series(1, 16384) b"
            .to_owned(),
        // A window repeats its frame's first value on every row.
        "SELECT max(length(f)) FROM (SELECT first_value(s) OVER (ORDER BY v) AS f FROM \
         (SELECT repeat('x', 50000) || v AS s, v FROM generate_series(1, 20000) t(v)) x) y"
            .to_owned(),
    ];
    for sql in &copying {
        let (status, body) = query(&app, sql).await;
        assert!(
            status == StatusCode::OK || body["code"] == "QUERY_TOO_EXPENSIVE",
            "{sql}: {status} {}",
            &body.to_string()[..body.to_string().len().min(300)]
        );
        let grown = peak_rss().saturating_sub(before);
        println!("{} MiB after {} ({status})", grown >> 20, &sql[..sql.len().min(100)]);
        assert!(grown < 1 << 30, "{sql}: peak memory grew by {} MiB", grown >> 20);
    }
    // A grouping table hits the pool too, or the query runs out of time first (partial aggregation
    // emits early under memory pressure): either way the memory stays bounded.
    for sql in [
        "SELECT count(DISTINCT value) AS n FROM generate_series(1, 200000000)",
        "SELECT cardinality(array_agg(value)) FROM generate_series(1, 200000000)",
    ] {
        let (status, body) = query(&app, sql).await;
        assert!(
            ["QUERY_TOO_EXPENSIVE", "QUERY_TIMEOUT"].contains(&body["code"].as_str().unwrap_or("")),
            "{status} {body}"
        );
        let grown = peak_rss().saturating_sub(before);
        assert!(grown < 1 << 30, "{sql}: peak memory grew by {} MiB", grown >> 20);
    }
    println!("peak memory grew by {} MiB over {} hostile queries", (peak_rss() - before) >> 20, hostile.len());
}
