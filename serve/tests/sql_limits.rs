//! `POST /v1/sql` under its limits, through the router: refusals with stable codes, cancellation,
//! the concurrency cap, result caps, and row visibility per caller.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use vitalflow_schemas::auth::Caller;
use vitalflow_serve::ServeConfig;
use vitalflow_serve::sql::SqlLimits;

use common::{query, router, send, sql_request};

/// Runs for seconds (a hundred million rows, filtered and counted, yielding between batches),
/// below the bound on rows crossing one operator.
const SLOW: &str = "SELECT count(*) AS n FROM generate_series(1, 100000000) a WHERE a.value % 7 = 3";

fn config(limits: SqlLimits) -> ServeConfig {
    ServeConfig { sql: limits, ..ServeConfig::default() }
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn plain_queries_and_value_functions_still_work() {
    let app = router(ServeConfig::default());
    let (status, body) = query(
        &app,
        "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS l, 'a' || 'b' || 'c' AS c, \
         concat_ws('-', 'x', 'y') AS w, regexp_replace('aaa', 'a', 'bb', 'g') AS g, \
         array_to_string(range(1, 4), ',') AS s, cardinality(generate_series(1, 10)) AS n, \
         replace('abc', 'b', 'xyz') AS p",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["rows"][0],
        json!({"r": "ababab", "l": "007", "c": "abc", "w": "x-y", "g": "bbbbbb", "s": "1,2,3", "n": 10, "p": "axyzc"})
    );
    let (status, body) = query(&app, "SELECT user_id || ':' || steps AS k FROM steps ORDER BY k").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 5);
    assert_eq!(body["rows"][0]["k"], json!("u1:100"));
    // Window functions with fixed-width results run; a string result is refused.
    let (status, body) = query(
        &app,
        "SELECT steps, sum(steps) OVER (ORDER BY steps ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS m, \
         row_number() OVER (PARTITION BY user_id ORDER BY steps) AS r FROM steps ORDER BY steps",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 5);
    for window in [
        "first_value(user_id) OVER (ORDER BY steps)",
        "first_value(arrow_cast(arrow_cast('ab', 'Binary'), 'FixedSizeBinary(2)')) OVER ()",
        "first_value(arrow_cast(user_id, 'Dictionary(Int32, Utf8)')) OVER ()",
    ] {
        let (status, body) = query(&app, &format!("SELECT {window} AS f FROM steps")).await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, "QUERY_TOO_EXPENSIVE"),
            "{window}: {body}"
        );
    }
    // An unaliased `||` keeps the name DataFusion gives it.
    let (status, body) = query(&app, "SELECT user_id || 'x' FROM steps LIMIT 1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["columns"], json!(["steps.user_id || Utf8(\"x\")"]));
}

#[tokio::test]
async fn refusals_have_stable_codes() {
    let app = router(ServeConfig::default());
    let text = Request::post("/v1/sql")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(json!({"sql": "SELECT 1"}).to_string()))
        .unwrap();
    let (status, _, body) = send(&app, text).await;
    assert_eq!((status, code(&body)), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE"));
    let bare = Request::post("/v1/sql").body(Body::from(json!({"sql": "SELECT 1"}).to_string())).unwrap();
    let (status, _, _) = send(&app, bare).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let charset = Request::post("/v1/sql")
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .body(Body::from(json!({"sql": "SELECT 1 AS one"}).to_string()))
        .unwrap();
    let (status, _, body) = send(&app, charset).await;
    assert_eq!((status, &body["rows"]), (StatusCode::OK, &json!([{"one": 1}])));

    let (status, body) = query(&app, "SELEC 1").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "INVALID_SQL"));
    let (status, body) = query(&app, "CREATE TABLE t (a INT)").await;
    assert_eq!((status, code(&body)), (StatusCode::BAD_REQUEST, "INVALID_SQL"));
    let (status, body) = query(&app, "SELECT 1 / 0").await;
    assert!(status.is_client_error(), "{status} {body}");

    let (status, _, body) = send(&app, sql_request("SELECT 1", Some(Caller::from_claims("svc", "backend")))).await;
    assert_eq!((status, code(&body)), (StatusCode::FORBIDDEN, "FORBIDDEN"));

    let long = format!("SELECT 1 {}", " ".repeat(70 << 10));
    let (status, body) = query(&app, &long).await;
    assert_eq!((status, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "QUERY_TOO_LARGE"));
}

fn list(n: usize, item: impl Fn(usize) -> String, sep: &str) -> String {
    (0..n).map(item).collect::<Vec<_>>().join(sep)
}

#[tokio::test]
async fn deep_or_huge_plans_are_refused_not_a_crash() {
    let app = router(ServeConfig::default());
    let too_large = [
        format!("SELECT {}1{} AS x", "(".repeat(10_000), ")".repeat(10_000)),
        format!("SELECT {}1{} AS x", "(SELECT ".repeat(2_000), ")".repeat(2_000)),
        // Chains parse in a loop but are as deep as they are long.
        format!("SELECT 1{} AS x", "+1".repeat(5_000)),
        format!("SELECT 'a'{} AS x", "||'a'".repeat(5_000)),
        format!("SELECT count(*) FROM steps WHERE steps > 0{}", " OR steps > 0".repeat(3_000)),
        // Relations: a FROM list, a join chain, a UNION, a chain of CTEs, and CTEs that double.
        format!("SELECT count(*) FROM {}", list(1_000, |i| format!("products p{i}"), ", ")),
        format!(
            "SELECT count(*) FROM products p {}",
            list(500, |i| format!("JOIN products p{i} ON p{i}.product_id = p.product_id"), " ")
        ),
        list(1_000, |_| "SELECT 1 AS x".to_owned(), " UNION ALL "),
        format!(
            "WITH c0 AS (SELECT 1 AS x){} SELECT * FROM c499",
            list(499, |i| format!(", c{} AS (SELECT x FROM c{i})", i + 1), "")
        ),
        format!(
            "WITH c0 AS (SELECT 1 AS x){} SELECT count(*) FROM c20",
            list(20, |i| format!(", c{} AS (SELECT p.x FROM c{i} p, c{i} q)", i + 1), "")
        ),
    ];
    for sql in &too_large {
        let (status, body) = query(&app, sql).await;
        assert_eq!((status, code(&body)), (StatusCode::PAYLOAD_TOO_LARGE, "QUERY_TOO_LARGE"), "{body}");
    }
    // At the limits the plan is deep, and the SQL threads' stacks hold it.
    let deep = format!(
        "SELECT count(*) AS n, max(1{}) AS x FROM products p0 {}",
        "+1".repeat(sql_limits_depth() - 5),
        list(60, |i| format!("JOIN products p{} ON p{}.product_id = p0.product_id", i + 1, i + 1), " ")
    );
    let (status, body) = query(&app, &deep).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0]["n"], json!(2));
    let union = list(120, |i| format!("SELECT {i} AS x"), " UNION ALL ");
    let (status, body) = query(&app, &format!("SELECT count(*) AS n FROM ({union})")).await;
    assert_eq!((status, &body["rows"]), (StatusCode::OK, &json!([{"n": 120}])), "{body}");
}

fn sql_limits_depth() -> usize {
    vitalflow_serve::sql::MAX_EXPRESSION_DEPTH
}

#[tokio::test]
async fn timeout_cancels_the_query_and_frees_its_thread() {
    let limits =
        SqlLimits { timeout: Duration::from_millis(300), threads: 1, max_concurrent: 1, ..SqlLimits::default() };
    let app = router(config(limits));
    let started = Instant::now();
    let (status, body) = query(&app, SLOW).await;
    assert_eq!((status, code(&body)), (StatusCode::REQUEST_TIMEOUT, "QUERY_TIMEOUT"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The aborted task gives back its permit (max_concurrent = 1) only once it has stopped, and
    // the next query needs the one SQL thread.
    next_query_runs_within(&app, Duration::from_secs(5)).await;
}

/// With `max_concurrent = 1`: a query answers (with the right count) within `within`, after
/// 429 `TOO_MANY_QUERIES` while an earlier one still holds the permit.
async fn next_query_runs_within(app: &axum::Router, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = query(app, "SELECT count(*) AS n FROM steps").await;
        if status == StatusCode::OK {
            assert_eq!(body["rows"], json!([{"n": 5}]));
            break;
        }
        assert_eq!((status, code(&body)), (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_QUERIES"));
        assert!(Instant::now() < deadline, "the timed-out query still holds the SQL thread");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A three-way cross join's build side pulls batches in a loop that never yields to the runtime:
/// aborting its task cannot stop it, the deadline inside the plan does.
#[tokio::test]
async fn timeout_stops_work_that_never_yields() {
    let limits =
        SqlLimits { timeout: Duration::from_millis(500), threads: 1, max_concurrent: 1, ..SqlLimits::default() };
    let app = router(config(limits));
    let sql = "SELECT count(*) AS n FROM generate_series(1, 100000) a, generate_series(1, 100000) b, \
               generate_series(1, 100000) c";
    let (status, body) = query(&app, sql).await;
    // Stopped by its deadline, or earlier by the bound on rows crossing one operator.
    assert!(
        [(StatusCode::REQUEST_TIMEOUT, "QUERY_TIMEOUT"), (StatusCode::UNPROCESSABLE_ENTITY, "QUERY_TOO_EXPENSIVE")]
            .contains(&(status, code(&body))),
        "{status} {body}"
    );
    // Until the work stops, its permit (max_concurrent = 1) keeps every other query out.
    next_query_runs_within(&app, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn concurrent_queries_beyond_the_cap_get_429() {
    let limits = SqlLimits { timeout: Duration::from_secs(30), threads: 1, max_concurrent: 1, ..SqlLimits::default() };
    let app = router(config(limits));
    let slow = tokio::spawn({
        let app = app.clone();
        async move { query(&app, SLOW).await }
    });
    // Let the slow query take the one permit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!slow.is_finished(), "{:?}", slow.await);
    let (status, retry, body) = send(&app, sql_request("SELECT 1", None)).await;
    assert_eq!((status, code(&body)), (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_QUERIES"), "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    // A client that goes away cancels its query.
    slow.abort();
    let deadline = Instant::now() + Duration::from_secs(5);
    while query(&app, "SELECT 1").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "the abandoned query was not cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn results_are_cut_at_the_row_and_byte_limits() {
    let limits = SqlLimits { row_limit: 3, ..SqlLimits::default() };
    let app = router(config(limits));
    let (status, body) = query(&app, "SELECT value FROM generate_series(1, 100) ORDER BY value").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["rows"].as_array().unwrap().len(), &body["truncated"]), (3, &json!(true)));

    let limits = SqlLimits { max_result_bytes: 1 << 20, ..SqlLimits::default() };
    let app = router(config(limits));
    let (status, body) = query(&app, "SELECT repeat('x', 10000) AS s FROM generate_series(1, 1000)").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["truncated"], json!(true));
    assert_eq!(body["rows"].as_array().unwrap().len(), (1 << 20) / 10_000);
    let (status, body) = query(&app, "SELECT value FROM generate_series(1, 100)").await;
    assert_eq!((status, &body["truncated"]), (StatusCode::OK, &json!(false)));
    assert_eq!(body["rows"].as_array().unwrap().len(), 100);
}

async fn rows_as(app: &axum::Router, sql: &str, caller: Option<Caller>) -> Vec<Value> {
    let (status, _, body) = send(app, sql_request(sql, caller)).await;
    assert_eq!(status, StatusCode::OK, "{sql}: {body}");
    body["rows"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_user_sees_only_their_own_rows() {
    let app = router(ServeConfig::default());
    let u1 = || Some(Caller::from_claims("u1", "health:read"));
    let analyst = || Some(Caller::from_claims("a", "analytics"));

    let sql = "SELECT DISTINCT user_id FROM steps ORDER BY user_id";
    assert_eq!(rows_as(&app, sql, u1()).await, vec![json!({"user_id": "u1"})]);
    assert_eq!(rows_as(&app, sql, analyst()).await, vec![json!({"user_id": "u1"}), json!({"user_id": "u2"})]);
    assert_eq!(rows_as(&app, sql, None).await.len(), 2, "no caller is the trusted caller");

    let sql = "SELECT count(*) AS n, sum(steps) AS total FROM steps";
    assert_eq!(rows_as(&app, sql, u1()).await, vec![json!({"n": 3, "total": 600})]);
    assert_eq!(rows_as(&app, sql, analyst()).await, vec![json!({"n": 5, "total": 3600})]);

    let sql = "SELECT count(*) AS n FROM steps WHERE user_id = 'u2'";
    assert_eq!(rows_as(&app, sql, u1()).await, vec![json!({"n": 0})]);

    let sql = "SELECT DISTINCT s.user_id AS a, x.user_id AS b FROM steps s CROSS JOIN sessions x ORDER BY a, b";
    assert_eq!(rows_as(&app, sql, u1()).await, vec![json!({"a": "u1", "b": "u1"})]);
    assert_eq!(rows_as(&app, sql, analyst()).await.len(), 4);

    let sql = "SELECT count(*) AS n FROM sessions WHERE user_id IN (SELECT user_id FROM steps WHERE steps >= 1000)";
    assert_eq!(rows_as(&app, sql, u1()).await, vec![json!({"n": 0})]);
    assert_eq!(rows_as(&app, sql, analyst()).await, vec![json!({"n": 2})]);
    let sql = "SELECT (SELECT max(steps) FROM steps) AS m";
    assert_eq!(rows_as(&app, sql, u1()).await, vec![json!({"m": 300})]);

    let sql = "SELECT user_id FROM steps UNION SELECT user_id FROM sessions ORDER BY user_id";
    assert_eq!(rows_as(&app, sql, u1()).await, vec![json!({"user_id": "u1"})]);
    assert_eq!(rows_as(&app, sql, analyst()).await.len(), 2);

    // Reference data has no user_id: everyone sees all of it.
    let sql = "SELECT count(*) AS n FROM products";
    assert_eq!(rows_as(&app, sql, u1()).await, vec![json!({"n": 2})]);
    // A user without rows sees empty views, not an error.
    let sql = "SELECT count(*) AS n FROM steps";
    assert_eq!(rows_as(&app, sql, Some(Caller::from_claims("u9", "health:read"))).await, vec![json!({"n": 0})]);
}

#[tokio::test]
async fn explain_answers_a_plan_and_explain_analyze_runs_under_the_visibility() {
    let app = router(ServeConfig::default());
    let (status, body) = query(&app, "EXPLAIN SELECT count(*) FROM steps").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rows = body["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["plan_type"] == json!("logical_plan")), "{body}");
    let u1 = || Some(Caller::from_claims("u1", "health:read"));
    let rows = rows_as(&app, "EXPLAIN ANALYZE SELECT user_id FROM steps WHERE steps > 0", u1()).await;
    assert!(!rows.is_empty());
    // The plan's scan sees the caller's rows only (3 of the 5).
    let text = rows.iter().map(|r| r.to_string()).collect::<String>();
    assert!(text.contains("output_rows=3") && !text.contains("output_rows=5"), "{text}");
}

#[tokio::test]
async fn aggregates_and_quadratic_functions_that_would_run_away_are_refused() {
    let app = router(ServeConfig::default());
    // 2^58 centroids: an allocation that used to abort the process.
    for sql in [
        "SELECT approx_percentile_cont(v, 0.5, 288230376151711744) FROM generate_series(1, 3) t(v)",
        "SELECT approx_percentile_cont_with_weight(v, 1, 0.5, 288230376151711744) FROM generate_series(1, 3) t(v)",
        "SELECT approx_percentile_cont(v, 0.5, 9223372036854775807) FROM generate_series(1, 3) t(v)",
    ] {
        let (status, body) = query(&app, sql).await;
        assert!(status.is_client_error(), "{sql}: {status} {body}");
        assert_eq!(code(&body), "QUERY_TOO_EXPENSIVE", "{sql}: {body}");
    }
    let (status, body) =
        query(&app, "SELECT approx_percentile_cont(v, 0.5, 100) AS p FROM generate_series(1, 3) t(v)").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // levenshtein is quadratic inside one call, where no timeout can reach.
    let (status, body) = query(&app, "SELECT levenshtein(repeat('a', 150000), repeat('b', 150000)) AS d").await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(code(&body), "QUERY_TOO_EXPENSIVE", "{body}");
    let (status, body) = query(&app, "SELECT levenshtein('kitten', 'sitting') AS d").await;
    assert_eq!((status, &body["rows"][0]["d"]), (StatusCode::OK, &json!(3)), "{body}");
}

/// Issue 14 §2: `user_id = …` and `user_id IN (…)` read only those users' shards (the scan's
/// output rows show it), and the results stay exact whatever the filter.
#[tokio::test]
async fn user_filters_read_only_the_users_shards() {
    let app = router(ServeConfig::default());
    let scanned = |rows: &[Value]| -> String { rows.iter().map(|r| r.to_string()).collect::<String>() };
    let rows = rows_as(&app, "EXPLAIN ANALYZE SELECT day FROM steps WHERE user_id = 'u2'", None).await;
    let text = scanned(&rows);
    assert!(text.contains("DataSourceExec") && text.contains("output_rows=2"), "{text}");
    assert!(!text.contains("output_rows=5"), "the whole view was scanned: {text}");

    let n = |sql: &'static str, caller: Option<Caller>| {
        let app = app.clone();
        async move { rows_as(&app, sql, caller).await[0]["n"].clone() }
    };
    assert_eq!(n("SELECT count(*) AS n FROM steps WHERE user_id = 'u2'", None).await, json!(2));
    assert_eq!(n("SELECT count(*) AS n FROM steps WHERE 'u1' = user_id", None).await, json!(3));
    assert_eq!(n("SELECT count(*) AS n FROM steps WHERE user_id IN ('u1', 'u2')", None).await, json!(5));
    assert_eq!(n("SELECT count(*) AS n FROM steps WHERE user_id = 'u1' OR steps > 0", None).await, json!(5));
    assert_eq!(n("SELECT count(*) AS n FROM steps WHERE user_id = 'u1' AND user_id = 'u2'", None).await, json!(0));
    assert_eq!(n("SELECT count(*) AS n FROM steps WHERE user_id = 'nobody'", None).await, json!(0));
    // Under health:read the caller's own rows only, whatever the query names.
    let u1 = || Some(Caller::from_claims("u1", "health:read"));
    assert_eq!(n("SELECT count(*) AS n FROM steps WHERE user_id = 'u2'", u1()).await, json!(0));
    assert_eq!(n("SELECT count(*) AS n FROM steps WHERE user_id IN ('u1', 'u2')", u1()).await, json!(3));
}

#[tokio::test]
async fn constructs_that_allocate_before_any_check_are_refused() {
    let app = router(ServeConfig::default());
    for sql in [
        // The window form of the t-digest aggregate.
        "SELECT approx_percentile_cont(v, 0.5, 288230376151711744) OVER () FROM generate_series(1, 3) t(v)",
        "SELECT approx_percentile_cont(v, 0.5, -5) FROM generate_series(1, 3) t(v)",
        // A null of a huge fixed-size type, built while the optimizer folds constants.
        "SELECT arrow_cast(NULL, 'FixedSizeList(2147483647, FixedSizeBinary(2147483647))')",
        "SELECT arrow_cast(NULL, 'FixedSizeList(2147483647, FixedSizeList(2147483647, Int64))')",
        // A pattern per row: each compiled on its own, outside the memory pool.
        "SELECT count(*) FROM generate_series(1, 1024) t(v) WHERE regexp_like('x', '\\w{200}' || v)",
        "SELECT count(*) FROM generate_series(1, 10) t(v) WHERE 'x' ~ ('a' || v)",
        "SELECT count(*) FROM generate_series(1, 10) t(v) WHERE 'x' SIMILAR TO ('a' || v)",
        // An index that overflowed inside the function.
        "SELECT array_position(make_array(1, 2), 1, -9223372036854775808)",
        // Zero-column rows buffered by a join's build side.
        "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b, generate_series(1, 10) c",
    ] {
        let (status, body) = query(&app, sql).await;
        assert!(
            status.is_client_error() && ["QUERY_TOO_EXPENSIVE", "QUERY_TIMEOUT"].contains(&code(&body)),
            "{sql}: {status} {body}"
        );
    }
    // Constant patterns, small casts and ordinary positions still work.
    let (status, body) = query(
        &app,
        "SELECT regexp_like('abc', '^a') AS a, 'abc' ~ 'b' AS b, array_position(make_array(1, 2), 2) AS p, \
         arrow_cast(1, 'Int8') AS c",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["rows"][0], json!({"a": true, "b": true, "p": 2, "c": 1}));
}
