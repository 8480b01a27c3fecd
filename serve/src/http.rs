//! The read API: per-user view reads, SQL, frontiers, health. Every read states its freshness:
//! `asOfEpoch` (all input through it is reflected), `latestEpoch` (newest accepted) and `pending`.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::Router;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use serde::Deserialize;
use serde_json::{Value, json};
use vitalflow_schemas::auth::Caller;
use vitalflow_schemas::error::quote;
use vitalflow_schemas::time::{date_to_days, parse_date};
use vitalflow_schemas::view::camel_case;
use vitalflow_schemas::wire::{ErrorBody, MAX_ID_BYTES, valid_id};
use vitalflow_schemas::{Datum, Epoch, Row, Zone};

use crate::snapshot::{Served, SnapshotStore};
use crate::sql::{self, SqlEngine, SqlError, SqlLimits};

/// What the serving side needs to know about ingestion (wired in by the binary).
pub trait Freshness: Send + Sync {
    /// Newest durably committed epoch.
    fn latest_epoch(&self) -> Epoch;
    /// Newest epoch that changed `user`'s data.
    fn user_epoch(&self, user: &str) -> Option<Epoch>;
    /// When `epoch` was committed, if remembered.
    fn committed_at(&self, epoch: Epoch) -> Option<SystemTime>;
    /// Components that have failed (the writer, a dataflow worker, the snapshot applier); while
    /// any has, `/readyz` and `/healthz` answer 503 naming them.
    fn failed_components(&self) -> Vec<&'static str> {
        Vec::new()
    }
    /// The sources' positions and lag (Kafka partitions, the outbox), for `/v1/frontiers`.
    fn sources(&self) -> Value {
        json!({})
    }
    /// The sinks' positions and lag (the Postgres tables), for `/v1/frontiers`.
    fn sinks(&self) -> Value {
        json!({})
    }
}

/// Limits of the read API.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// `POST /v1/sql`: rows, bytes, time, memory, concurrency and threads.
    pub sql: SqlLimits,
    /// Longest `waitMs` honoured.
    pub max_wait: Duration,
    /// Most rows one per-user view read answers (100,000); more: 422 `READ_TOO_LARGE`, and the
    /// caller narrows the read with `from`/`to` or a filter, or uses SQL.
    pub max_read_rows: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig { sql: SqlLimits::default(), max_wait: Duration::from_secs(30), max_read_rows: 100_000 }
    }
}

#[derive(Clone)]
struct AppState {
    store: Arc<SnapshotStore>,
    freshness: Arc<dyn Freshness>,
    config: ServeConfig,
    sql: Arc<SqlEngine>,
    /// Reads waiting with `waitMs` ([`MAX_WAITERS`] at most).
    waiters: Arc<tokio::sync::Semaphore>,
}

/// Reads that may wait (`waitMs`) at once; more are refused with 429 `TOO_MANY_WAITERS`. Half of
/// the default in-flight cap (512), so waiting reads can never take every request slot from
/// ingestion.
pub const MAX_WAITERS: usize = 256;

/// A place among the `waitMs` waiters, or 429 `TOO_MANY_WAITERS`.
fn wait_permit(st: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    st.waiters.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_WAITERS", "too many reads are waiting; retry later")
    })
}

/// The read routes, with the SQL engine's threads started.
///
/// Errors: the OS refused to start a SQL thread.
pub fn router(
    store: Arc<SnapshotStore>,
    freshness: Arc<dyn Freshness>,
    config: ServeConfig,
) -> std::io::Result<Router> {
    let sql = Arc::new(SqlEngine::new(config.sql.clone())?);
    let waiters = Arc::new(tokio::sync::Semaphore::new(MAX_WAITERS));
    Ok(Router::new()
        .route("/v1/users/{user_id}/{view}", get(read_view))
        .route("/v1/sql", post(run_sql))
        .route("/v1/frontiers", get(frontiers))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { store, freshness, config, sql, waiters }))
}

/// A read failure with a stable code.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }
    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = self.code, message = %self.message, "read failed");
        }
        let mut response =
            (self.status, Json(ErrorBody { code: self.code.to_owned(), message: self.message })).into_response();
        // Every 429 of the read API (`TOO_MANY_WAITERS`, `TOO_MANY_QUERIES`) is worth retrying.
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

fn wants_arrow(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains(ARROW_STREAM))
}

fn arrow_response(
    schema: SchemaRef,
    batches: &[RecordBatch],
    fresh: &[(&'static str, String)],
) -> Result<Response, ApiError> {
    let mut buf = Vec::new();
    {
        let mut w = StreamWriter::try_new(&mut buf, &schema)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ARROW_ENCODE", e.to_string()))?;
        for b in batches {
            w.write(b).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ARROW_ENCODE", e.to_string()))?;
        }
        w.finish().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ARROW_ENCODE", e.to_string()))?;
    }
    let mut resp = (StatusCode::OK, buf).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ARROW_STREAM));
    for (k, v) in fresh {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    Ok(resp)
}

/// The query string's parameters in order, each key and value percent-decoded (`+` stands for a
/// space, as in a form). A key or value that is not UTF-8 once decoded is refused
/// (`INVALID_QUERY`) rather than read with U+FFFD in place of its bytes, which could match a stored
/// identifier that holds U+FFFD.
fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let decode = |s: &str| -> Option<String> {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode(spaced.as_bytes()).decode_utf8().ok().map(Cow::into_owned)
    };
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let k = decode(k).ok_or_else(|| {
                ApiError::bad("INVALID_QUERY", "a query parameter's name is not UTF-8 once percent-decoded")
            })?;
            let v = decode(v).ok_or_else(|| {
                ApiError::bad(
                    "INVALID_QUERY",
                    format!("the value of '{}' is not UTF-8 once percent-decoded", quote(&k)),
                )
            })?;
            Ok((k, v))
        })
        .collect()
}

async fn read_view(
    State(st): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path((user, route)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // No `Caller` (no auth middleware, as in the handler tests) is the trusted caller.
    if let Some(Extension(c)) = &caller
        && !c.may_read_user(&user)
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "reading a user's views needs health:read for your own userId, or analytics",
        ));
    }
    let view = st.store.view_by_route(&route).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "UNKNOWN_VIEW", format!("no view is served at '{}'", quote(&route)))
    })?;
    let def = *st.store.def(view);
    let pairs = query_pairs(query.as_deref())?;
    // A parameter given twice has no one meaning: refused rather than taking either. One the view
    // does not take (a typo, or another view's filter) is refused rather than ignored, which
    // would answer the unfiltered rows as if they were the filtered ones.
    // Through another view only where that view is served (`VITALFLOW_VIEWS` may leave it out).
    let dated = def.range_column.is_some() || def.range_via.is_some_and(|rv| st.store.view_by_name(rv.view).is_some());
    let takes = |k: &str| {
        def.filters.contains(&k) || matches!(k, "minEpoch" | "waitMs") || (dated && matches!(k, "from" | "to"))
    };
    let mut params: HashMap<String, String> = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if !takes(&k) {
            let dates: &[&str] = if dated { &["from", "to"] } else { &[] };
            let known: Vec<&str> = def.filters.iter().chain(dates).chain(&["minEpoch", "waitMs"]).copied().collect();
            return Err(ApiError::bad(
                "INVALID_QUERY",
                format!("'{}' is not a parameter of {route}; it takes {}", quote(&k), known.join(", ")),
            ));
        }
        if params.contains_key(&k) {
            return Err(ApiError::bad(
                "INVALID_QUERY",
                format!("query parameter '{}' is given more than once", quote(&k)),
            ));
        }
        params.insert(k, v);
    }
    // Identifiers, in the path and in the filters, follow DOMAIN.md §0.1 as they do at ingest: no
    // stored row could match another, so the read is refused rather than answered empty.
    let bad_id = |what: &str| {
        ApiError::bad("INVALID_ID", format!("{what} must be 1 to {MAX_ID_BYTES} bytes with no control character"))
    };
    if !valid_id(&user) {
        return Err(bad_id("userId"));
    }
    if let Some(p) = def.filters.iter().find(|p| **p != "metric" && params.get(**p).is_some_and(|v| !valid_id(v))) {
        return Err(bad_id(p));
    }
    let date_param = |name: &str| -> Result<Option<i32>, ApiError> {
        params
            .get(name)
            .map(|s| {
                parse_date(s)
                    .map(date_to_days)
                    .ok_or_else(|| ApiError::bad("INVALID_QUERY", format!("{name} must be YYYY-MM-DD")))
            })
            .transpose()
    };
    let num_param = |name: &str| -> Result<Option<u64>, ApiError> {
        params
            .get(name)
            .map(|s| {
                s.parse::<u64>()
                    .map_err(|_| ApiError::bad("INVALID_QUERY", format!("{name} must be a non-negative integer")))
            })
            .transpose()
    };
    if let Some(m) = params.get("metric")
        && def.filters.contains(&"metric")
        && vitalflow_schemas::Metric::parse(m).is_none()
    {
        return Err(ApiError::bad(
            "INVALID_QUERY",
            format!("unknown metric '{}' (DOMAIN.md §1.3 lists the metric keys)", quote(m)),
        ));
    }
    let (from, to) = (date_param("from")?, date_param("to")?);
    let (min_epoch, wait_ms) = (num_param("minEpoch")?, num_param("waitMs")?);
    let filters: Vec<(usize, &String)> = def
        .filters
        .iter()
        .filter_map(|p| params.get(*p).map(|v| (p, v)))
        .filter_map(|(p, v)| def.columns.iter().position(|c| camel_case(c.name) == *p).map(|i| (i, v)))
        .collect();
    let range_idx = def.range_column.and_then(|c| def.column_index(c));
    let zone_idx = def.column_index("zone_id");
    let in_range = |r: &Row, idx: Option<usize>, zone: Option<usize>| -> bool {
        let Some(i) = idx else { return true };
        if from.is_none() && to.is_none() {
            return true;
        }
        row_date(r, i, zone).is_some_and(|d| from.is_none_or(|f| d >= f) && to.is_none_or(|t| d <= t))
    };

    if let (Some(min), Some(wait)) = (min_epoch, wait_ms)
        && st.store.snapshot(view).as_of < min
    {
        let _permit = wait_permit(&st)?;
        let mut rx = st.store.watch(view);
        let wait = Duration::from_millis(wait).min(st.config.max_wait);
        let _ = tokio::time::timeout(wait, rx.wait_for(|e| *e >= min)).await;
    }
    let snap = st.store.snapshot(view);
    // `from`/`to` through another view: the values of the shared column whose row there is in range.
    let via: Option<(usize, BTreeSet<Datum>)> = match (def.range_via, from.or(to)) {
        (Some(rv), Some(_)) => st.store.view_by_name(rv.view).and_then(|other| {
            let odef = *st.store.def(other);
            let (oi, ri, zi) = (
                odef.column_index(rv.column)?,
                odef.range_column.and_then(|c| odef.column_index(c)),
                odef.column_index("zone_id"),
            );
            let osnap = st.store.snapshot(other);
            let keys = osnap
                .user(&user)
                .map(|shard| shard.rows().filter(|r| in_range(r, ri, zi)).filter_map(|r| r.get(oi).cloned()).collect())
                .unwrap_or_default();
            Some((def.column_index(rv.column)?, keys))
        }),
        _ => None,
    };
    let (lo, hi) = key_range(&def, &user, &params, from, to);
    let rows: Vec<&Row> = snap
        .user(&user)
        .map(|shard| {
            shard
                .range(&lo, &hi)
                .filter(|r| filters.iter().all(|(i, v)| r.get(*i).and_then(Datum::as_str) == Some(v.as_str())))
                .filter(|r| in_range(r, range_idx, zone_idx))
                .filter(|r| via.as_ref().is_none_or(|(i, keys)| r.get(*i).is_some_and(|k| keys.contains(k))))
                .collect()
        })
        .unwrap_or_default();
    if rows.len() > st.config.max_read_rows {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "READ_TOO_LARGE",
            format!(
                "the read matches {} rows, more than the {} one read answers; narrow it with from/to or a filter, or use SQL",
                rows.len(),
                st.config.max_read_rows
            ),
        ));
    }
    let latest = st.freshness.latest_epoch();
    let pending =
        st.freshness.user_epoch(&user).is_some_and(|e| e > snap.as_of) || min_epoch.is_some_and(|m| m > snap.as_of);
    if wants_arrow(&headers) {
        let batch = def
            .to_record_batch(rows.iter().copied())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "ARROW_ENCODE", e.to_string()))?;
        return arrow_response(
            def.arrow_schema(),
            &[batch],
            &[
                ("x-vitalflow-as-of-epoch", snap.as_of.to_string()),
                ("x-vitalflow-latest-epoch", latest.to_string()),
                ("x-vitalflow-pending", pending.to_string()),
            ],
        );
    }
    // A large read is CPU work: the worker thread hands its other tasks over while it encodes.
    let encode = || -> Response {
        Json(RowsBody { as_of_epoch: snap.as_of, latest_epoch: latest, pending, rows: def.json_rows(&rows) })
            .into_response()
    };
    let multi_thread = tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread;
    Ok(if rows.len() > 2_000 && multi_thread { tokio::task::block_in_place(encode) } else { encode() })
}

/// The key range of a user's shard that a read can match ([`crate::snapshot::UserShard::range`]):
/// from `[user_id, v₁, …, vₖ, from]` to `[user_id, v₁, …, vₖ, to]`, where `v₁…vₖ` are the
/// equality filters given for the key columns right after `user_id` (string columns, in key
/// order), and `from`/`to` (days) bound the next key column when it is the view's date column;
/// an absent bound leaves that end at the prefix. The read's filters still apply to every row in
/// the range: the range only spares the rows they would refuse, so that a read costs the rows it
/// returns, not the user's whole history (issue 14 §1).
fn key_range(
    def: &vitalflow_schemas::ViewDef,
    user: &str,
    params: &HashMap<String, String>,
    from: Option<i32>,
    to: Option<i32>,
) -> (Row, Row) {
    use vitalflow_schemas::view::ColumnType;
    let mut prefix = vec![Datum::Str(user.to_owned())];
    for c in def.columns.iter().take(def.key_len).skip(1) {
        let name = camel_case(c.name);
        match params.get(&name) {
            Some(v) if c.ty == ColumnType::Str && def.filters.contains(&name.as_str()) => {
                prefix.push(Datum::Str(v.clone()))
            }
            _ => break,
        }
    }
    let (mut lo, mut hi) = (prefix.clone(), prefix);
    if let Some(c) = def.columns.get(lo.len()).filter(|_| lo.len() < def.key_len)
        && c.ty == ColumnType::Date
        && def.range_column == Some(c.name)
    {
        lo.extend(from.map(Datum::Date));
        hi.extend(to.map(Datum::Date));
    }
    (lo, hi)
}

/// The local date of a row's date or timestamp column (a timestamp in the row's `zone_id`, if it
/// has a valid one, else in UTC).
fn row_date(r: &Row, idx: usize, zone_idx: Option<usize>) -> Option<i32> {
    match r.get(idx)? {
        Datum::Date(d) => Some(*d),
        Datum::Ts(ms) => {
            let zone =
                zone_idx.and_then(|z| r.get(z)).and_then(Datum::as_str).and_then(Zone::parse).unwrap_or(Zone::UTC);
            Some(date_to_days(zone.local_date(*ms)))
        }
        _ => None,
    }
}

/// The body of a per-user read: `asOfEpoch`, `latestEpoch`, `pending` and the rows, keys in that
/// (sorted) order, the rows streamed ([`vitalflow_schemas::ViewDef::json_rows`]).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct RowsBody<'a> {
    as_of_epoch: Epoch,
    latest_epoch: Epoch,
    pending: bool,
    rows: vitalflow_schemas::view::JsonRows<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    /// Wait (up to `wait_ms`) until every view reflects this epoch.
    #[serde(default)]
    min_epoch: Option<u64>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

/// `POST /v1/sql`: `{"sql": …}` as `application/json`, run by the [`SqlEngine`] over the rows the
/// caller may see (`health:read`: their own; `analytics`: all). Refusals: 403 `FORBIDDEN`, 415
/// `UNSUPPORTED_MEDIA_TYPE`, 400 `INVALID_REQUEST` / `INVALID_SQL`, 413 `QUERY_TOO_LARGE`, 422
/// `QUERY_TOO_EXPENSIVE` / `QUERY_FAILED`, 408 `QUERY_TIMEOUT`, 429 `TOO_MANY_QUERIES` /
/// `TOO_MANY_WAITERS` (with `Retry-After`), 500 `INTERNAL`. Counted in
/// `vitalflow_sql_queries_total{code}` (`OK` or the refusal) and `vitalflow_sql_refusals_total{code}`.
async fn run_sql(
    State(st): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let (response, code) = match answer_sql(st, caller, headers, body).await {
        Ok(r) => (r, "OK"),
        Err(e) => {
            let code = e.code;
            (e.into_response(), code)
        }
    };
    metrics::counter!("vitalflow_sql_queries_total", "code" => code).increment(1);
    if code != "OK" {
        metrics::counter!("vitalflow_sql_refusals_total", "code" => code).increment(1);
    }
    response
}

/// The answer to one `POST /v1/sql`, or why not.
async fn answer_sql(
    st: AppState,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // No `Caller` (no auth middleware, as in the handler tests) is the trusted caller.
    let visibility = match &caller {
        Some(Extension(c)) => c.sql_visibility(),
        None => Caller::trusted().sql_visibility(),
    }
    .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", "SQL needs the health:read or analytics scope"))?;
    if !is_json(&headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the query as application/json: {\"sql\": \"...\"}",
        ));
    }
    let limits = st.sql.limits();
    // Room for the JSON escaping of a query of `max_sql_bytes`, and for the other fields.
    let max_body = limits.max_sql_bytes.saturating_mul(2).saturating_add(4096);
    // Only a body over the limit is a large query; one that fails to arrive whole (a truncated
    // body, a malformed chunk) is a bad request.
    let body = axum::body::to_bytes(body, max_body).await.map_err(|e| {
        let over_limit = std::error::Error::source(&e)
            .is_some_and(|inner| inner.downcast_ref::<http_body_util::LengthLimitError>().is_some());
        if over_limit {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "QUERY_TOO_LARGE",
                format!("the request body is larger than {max_body} bytes"),
            )
        } else {
            ApiError::bad("INVALID_REQUEST", format!("the request body could not be read whole: {e}"))
        }
    })?;
    let req: SqlRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("INVALID_REQUEST", format!("expected {{\"sql\": \"...\"}}: {e}")))?;
    if let (Some(min), Some(wait)) = (req.min_epoch, req.wait_ms) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait).min(st.config.max_wait);
        let _permit = wait_permit(&st)?;
        for view in 0..st.store.len() {
            let mut rx = st.store.watch(view);
            let _ = tokio::time::timeout_at(deadline, rx.wait_for(|e| *e >= min)).await;
        }
    }
    let result = st.sql.run(st.store.clone(), req.sql, visibility).await.map_err(sql_error)?;
    let latest = st.freshness.latest_epoch();
    let arrow = wants_arrow(&headers);
    // Encoding a result (up to `max_result_bytes` of values) is CPU work: on the blocking pool,
    // never on the runtime threads that serve ingestion and reads.
    tokio::task::spawn_blocking(move || encode_result(&result, latest, arrow))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "encoding the result failed"))?
}

/// A SQL result as Arrow IPC or JSON, with its freshness.
fn encode_result(result: &sql::SqlResult, latest: u64, arrow: bool) -> Result<Response, ApiError> {
    if arrow {
        return arrow_response(
            result.schema.clone(),
            &result.batches,
            &[
                ("x-vitalflow-as-of-epoch", result.as_of.to_string()),
                ("x-vitalflow-latest-epoch", latest.to_string()),
                ("x-vitalflow-truncated", result.truncated.to_string()),
            ],
        );
    }
    let columns: Vec<&str> = result.schema.fields().iter().map(|f| f.name().as_str()).collect();
    Ok(Json(json!({
        "asOfEpoch": result.as_of,
        "latestEpoch": latest,
        "columns": columns,
        "rows": sql::batches_to_json(&result.batches),
        "truncated": result.truncated,
    }))
    .into_response())
}

/// Whether the request says its body is JSON (`application/json` or `application/*+json`, any
/// parameters).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A query the engine refused or could not run, with its stable code.
fn sql_error(e: SqlError) -> ApiError {
    let message = e.to_string();
    let (status, code) = match e {
        SqlError::Invalid(_) => (StatusCode::BAD_REQUEST, "INVALID_SQL"),
        SqlError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "QUERY_TOO_LARGE"),
        SqlError::TooExpensive(_) => (StatusCode::UNPROCESSABLE_ENTITY, "QUERY_TOO_EXPENSIVE"),
        SqlError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, "QUERY_TIMEOUT"),
        SqlError::Busy(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_QUERIES"),
        SqlError::Execution(_) => (StatusCode::UNPROCESSABLE_ENTITY, "QUERY_FAILED"),
        SqlError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    };
    ApiError::new(status, code, message)
}

async fn frontiers(State(st): State<AppState>, caller: Option<Extension<Caller>>) -> Result<Json<Value>, ApiError> {
    if let Some(Extension(c)) = &caller
        && !c.may_operate()
    {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", "/v1/frontiers needs the ops scope"));
    }
    let latest = st.freshness.latest_epoch();
    let now = SystemTime::now();
    let views: Vec<Value> = (0..st.store.len())
        .map(|v| {
            let snap = st.store.snapshot(v);
            let lag_ms = if snap.as_of >= latest {
                0
            } else {
                st.freshness
                    .committed_at(snap.as_of + 1)
                    .and_then(|t| now.duration_since(t).ok())
                    .map_or(0, |d| d.as_millis() as u64)
            };
            json!({
                "name": st.store.def(v).name,
                "asOfEpoch": snap.as_of,
                "lagEpochs": latest.saturating_sub(snap.as_of),
                "lagMs": lag_ms,
                "rowCount": snap.row_count,
                "servedFrom": match st.store.served(v) {
                    Served::Live => "dataflow",
                    Served::Persisted => "persisted",
                },
            })
        })
        .collect();
    Ok(Json(json!({
        "latestEpoch": latest,
        "durableEpoch": latest,
        "ready": st.store.is_ready(),
        "status": status(&st.store).as_str(),
        "views": views,
        "sources": st.freshness.sources(),
        "sinks": st.freshness.sinks(),
    })))
}

/// `GET /healthz`: 200 `{"status": "ok"}` while every component runs; 503 `{"status": "failed",
/// "failed": [...]}` once one has died (the process then exits after its grace period).
async fn healthz(State(st): State<AppState>) -> Response {
    let failed = st.freshness.failed_components();
    if failed.is_empty() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "failed": failed}))).into_response()
    }
}

/// Where the views stand after a start: `fresh` once recovery has finished (every view reflects
/// every epoch committed before the start), `catching_up` while reads are served from snapshots
/// persisted by the previous run (each read says its `asOfEpoch`, and `pending` for users with
/// newer input), `recovering` while there is nothing to serve yet.
fn status(store: &SnapshotStore) -> ViewsStatus {
    if store.is_ready() {
        ViewsStatus::Fresh
    } else if (0..store.len()).any(|v| store.served(v) == Served::Persisted) {
        ViewsStatus::CatchingUp
    } else {
        ViewsStatus::Recovering
    }
}

/// See [`status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ViewsStatus {
    Fresh,
    CatchingUp,
    Recovering,
}

impl ViewsStatus {
    fn as_str(self) -> &'static str {
        match self {
            ViewsStatus::Fresh => "fresh",
            ViewsStatus::CatchingUp => "catching_up",
            ViewsStatus::Recovering => "recovering",
        }
    }
}

/// `GET /readyz`: 200 `{"status": "ready"}` once recovery has finished and every component runs;
/// before, 503 `{"status": "catching_up", "serving": true}` while reads are served from persisted
/// snapshots, or 503 `{"status": "recovering", "serving": false}`; 503 `{"status": "failed",
/// "failed": [...]}` after a component died. 200 keeps meaning "every view is fresh".
async fn readyz(State(st): State<AppState>) -> Response {
    let failed = st.freshness.failed_components();
    if !failed.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "failed": failed}))).into_response();
    }
    match status(&st.store) {
        ViewsStatus::Fresh => Json(json!({"status": "ready"})).into_response(),
        s => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": s.as_str(), "serving": s == ViewsStatus::CatchingUp})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README: refusals worth retrying carry `Retry-After`; a 429 of the read API is one.
    #[test]
    fn a_429_says_when_to_retry() {
        let r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_WAITERS", "retry later").into_response();
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let r = ApiError::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", "bad").into_response();
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn a_query_decodes_as_a_form_and_refuses_what_is_not_utf8() {
        let pairs = |q: &str| query_pairs(Some(q)).map_err(|e| e.code);
        assert_eq!(
            pairs("productId=caf%C3%A9&scope=*&a+b=c%2Bd&&flag"),
            Ok(vec![
                ("productId".to_owned(), "café".to_owned()),
                ("scope".to_owned(), "*".to_owned()),
                ("a b".to_owned(), "c+d".to_owned()),
                ("flag".to_owned(), String::new()),
            ])
        );
        assert_eq!(query_pairs(None).map_err(|e| e.code), Ok(vec![]));
        for q in ["sourceId=%FFabc", "%C3=1", "metric=%C3%28"] {
            assert_eq!(pairs(q), Err("INVALID_QUERY"), "{q}");
        }
    }
}
