//! HTTP handlers for ingestion: `POST /v1/health/samples/batch-upsert` and
//! `POST /v1/users/{userId}/profile`. Request-level failures are JSON `{"code", "message"}`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use serde_json::Value;
use vitalflow_schemas::auth::Caller;
use vitalflow_schemas::domain::DomainChangesRequest;
use vitalflow_schemas::error::codes;
use vitalflow_schemas::limits::{field_fits, json_depth_exceeds};
use vitalflow_schemas::wire::{
    BatchUpsertRequest, HASH_SCHEME_BATCH_FIELDS, HASH_SCHEME_JCS, ProfileRequest, batch_hash, payload_hash, valid_id,
};
use vitalflow_schemas::{Limits, UserProfile, Zone};

use crate::error::IngestError;
use crate::store::PayloadHash;
use crate::writer::Ingest;

/// Body limit of `POST /v1/users/{userId}/profile`: 64 KiB (413 `PAYLOAD_TOO_LARGE` beyond).
pub const PROFILE_MAX_BODY_BYTES: usize = 64 * 1024;

/// Default request body limit: 8 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The ingestion routes, with `max_body_bytes` as the body limit.
pub fn router(ingest: Ingest, max_body_bytes: usize) -> Router {
    let profile_limit = PROFILE_MAX_BODY_BYTES.min(max_body_bytes);
    Router::new()
        .route(
            "/v1/health/samples/batch-upsert",
            post(batch_upsert).layer(middleware::from_fn_with_state(max_body_bytes, declared_size)),
        )
        // A profile is a few fields: its own, smaller body limit.
        .route(
            "/v1/users/{user_id}/profile",
            post(upsert_profile)
                .layer(DefaultBodyLimit::max(profile_limit))
                .layer(middleware::from_fn_with_state(profile_limit, declared_size)),
        )
        .route(
            "/v1/domain/changes",
            post(domain_changes).layer(middleware::from_fn_with_state(max_body_bytes, declared_size)),
        )
        .route("/v1/users/{user_id}", axum::routing::delete(erase_user))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(ingest)
}

/// Refuses a body whose `Content-Length` exceeds `limit` bytes before reading any of it: 413
/// `PAYLOAD_TOO_LARGE` with `Connection: close` (the unread body makes the connection unusable),
/// so that a client is not made to send megabytes only to be refused, and one that sent
/// `Expect: 100-continue` sends none. A body without `Content-Length` (chunked) is refused by
/// `DefaultBodyLimit` once `limit` bytes have been read.
async fn declared_size(State(limit): State<usize>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(bytes) if bytes > limit as u64 => {
            let mut refused = IngestError::Invalid {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "PAYLOAD_TOO_LARGE",
                message: format!("the declared body of {bytes} bytes exceeds the limit of {limit}"),
            }
            .into_response();
            refused.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
            refused
        }
        _ => next.run(request).await,
    }
}

/// Checks the content type, the body size, the nesting depth and the JSON syntax.
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>, limits: &Limits) -> Result<Value, IngestError> {
    json_bytes(headers, body).and_then(|bytes| parse_json(&bytes, limits))
}

/// Checks the content type and the body size; the body's bytes, unparsed.
fn json_bytes(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, IngestError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(IngestError::Invalid {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "UNSUPPORTED_MEDIA_TYPE",
            message: format!("expected Content-Type application/json, got '{content_type}'"),
        });
    }
    body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            IngestError::Invalid {
                status,
                code: "PAYLOAD_TOO_LARGE",
                message: "request body exceeds the size limit".into(),
            }
        } else {
            IngestError::bad_request("INVALID_BODY", rejection.body_text())
        }
    })
}

/// Identifiers are 1 to 128 bytes without control characters (DOMAIN.md §0.1); a bad one fails the
/// whole request.
fn check_id(name: &str, id: &str) -> Result<(), IngestError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(IngestError::bad_request(
            codes::INVALID_ID,
            format!("{name} must be 1 to 128 bytes without control characters"),
        ))
    }
}

/// A request-level free-text field fits `max_field_bytes` (400 `FIELD_TOO_LONG`).
fn check_field(name: &str, value: Option<&str>, limits: &Limits) -> Result<(), IngestError> {
    match value {
        Some(v) if !field_fits(v, limits) => Err(IngestError::bad_request(
            codes::FIELD_TOO_LONG,
            format!("{name} has {} bytes, more than the limit of {}", v.len(), limits.max_field_bytes),
        )),
        _ => Ok(()),
    }
}

/// A body is a JSON object. serde would also read a struct from an array of its fields in order
/// (`["r-1", [...]]`), which would slip past the checks below that read the object by key.
fn require_object(value: &Value) -> Result<(), IngestError> {
    if value.is_object() {
        Ok(())
    } else {
        Err(IngestError::bad_request("INVALID_REQUEST", "the body must be a JSON object"))
    }
}

/// The length of the array `value[name]` is at most `max` (400 `code`); checked on the raw value,
/// before anything is hashed or deserialized.
fn check_count(value: &Value, name: &str, max: usize, code: &'static str) -> Result<(), IngestError> {
    check_len(name, value.get(name).and_then(Value::as_array).map_or(0, Vec::len), max, code)
}

/// A list of `n` `name`s is at most `max` long (400 `code`).
fn check_len(name: &str, n: usize, max: usize, code: &'static str) -> Result<(), IngestError> {
    if n > max {
        return Err(IngestError::bad_request(code, format!("{n} {name} in one request, more than the limit of {max}")));
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, IngestError> {
    serde_json::from_value(value).map_err(|e| IngestError::bad_request("INVALID_REQUEST", e.to_string()))
}

/// Set on the response of a write: its `requestId`, for the binary's audit line.
#[derive(Clone, Debug)]
pub struct AuditRequestId(pub String);

/// Set on the response of a write: the user whose data it wrote or erased, for the audit line
/// (docs/security.md, "What is logged": who wrote or erased whom).
#[derive(Clone, Debug)]
pub struct AuditUser(pub String);

/// 403 `FORBIDDEN` unless the caller passes `allowed`. No `Caller` (no auth middleware, as in the
/// handler tests) is the trusted caller.
fn authorize(
    caller: Option<Extension<Caller>>,
    allowed: impl FnOnce(&Caller) -> bool,
    message: &str,
) -> Result<(), IngestError> {
    match caller {
        Some(Extension(c)) if !allowed(&c) => {
            Err(IngestError::Invalid { status: StatusCode::FORBIDDEN, code: "FORBIDDEN", message: message.into() })
        }
        _ => Ok(()),
    }
}

/// `result` as a response that names `request_id` (and the user written, if one) for the audit line.
fn with_request_id(
    result: Result<impl IntoResponse, IngestError>,
    request_id: String,
    user: Option<String>,
) -> Response {
    let mut resp = result.into_response();
    resp.extensions_mut().insert(AuditRequestId(request_id));
    if let Some(u) = user {
        resp.extensions_mut().insert(AuditUser(u));
    }
    resp
}

/// `result` as a response that names the user written or erased for the audit line.
fn with_audit_user(result: Result<impl IntoResponse, IngestError>, user: String) -> Response {
    let mut resp = result.into_response();
    resp.extensions_mut().insert(AuditUser(user));
    resp
}

/// Bodies from this size on are parsed on the blocking pool, not on the runtime's threads.
const LARGE_BODY_BYTES: usize = 256 << 10;

/// Large parses at once: a parsed JSON tree can be many times its text, so their number bounds
/// that memory too (waiting callers queue here, within the request timeout).
static LARGE_PARSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Runs `parse` inline for a small body; for a large one, on the blocking pool, at most
/// [`LARGE_PARSES`] at once, so that parsing megabytes never stalls the runtime that serves
/// every other request.
async fn off_runtime<R: Send + 'static>(
    bytes: usize,
    parse: impl FnOnce() -> Result<R, IngestError> + Send + 'static,
) -> Result<R, IngestError> {
    if bytes < LARGE_BODY_BYTES {
        return parse();
    }
    let _permit = LARGE_PARSES.acquire().await.map_err(|_| IngestError::Unavailable)?;
    match tokio::task::spawn_blocking(parse).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(IngestError::Unavailable),
    }
}

async fn batch_upsert(
    State(ingest): State<Ingest>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = body.as_ref().map_or(0, Bytes::len);
    let parsed =
        off_runtime(bytes, move || json_bytes(&headers, body).and_then(|b| parse_batch(b, crate::limits()))).await;
    let (req, hash) = match parsed {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let request_id = req.request_id.clone();
    let user = req.user_id.clone();
    // Decided before the writer sees the request: nothing of a forbidden batch is stored, and its
    // requestId is not recorded.
    let result = match authorize(
        caller,
        |c| c.may_write_user(&req.user_id),
        "writing samples needs health:write for your own userId, or backend",
    ) {
        Ok(()) => ingest.batch_upsert(req, hash, bytes).await.map(Json),
        Err(e) => Err(e),
    };
    with_request_id(result, request_id, Some(user))
}

async fn domain_changes(
    State(ingest): State<Ingest>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let bytes = body.as_ref().map_or(0, Bytes::len);
    let parsed = off_runtime(bytes, move || {
        json_body(&headers, body, crate::limits()).and_then(|v| parse_domain(v, crate::limits()))
    })
    .await;
    let (req, hash) = match parsed {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let request_id = req.request_id.clone();
    let result = match authorize(caller, Caller::may_write_domain, "domain changes need the backend scope") {
        Ok(()) => ingest.domain_changes(req, hash, bytes).await.map(Json),
        Err(e) => Err(e),
    };
    with_request_id(result, request_id, None)
}

/// A batch-upsert body checked at the request level, with its payload hash. Every path (HTTP,
/// Kafka, the outbox) goes through here, so a body means the same thing however it arrives.
///
/// The body is parsed straight into [`BatchUpsertRequest`] and hashed over its fields (scheme 2,
/// [`batch_hash`]), with no JSON tree. A body that does not parse that way (bad syntax or shape,
/// a duplicate key) takes the general path, a `serde_json::Value` first, so that every refusal,
/// and the last-wins reading of duplicate keys, is the same as it always was.
///
/// Request-level failures (400): `JSON_TOO_DEEP`, `MALFORMED_JSON`, `TOO_MANY_SAMPLES`,
/// `TOO_MANY_DELETIONS`, `INVALID_REQUEST` (shape), `INVALID_ID` (`requestId`, `userId`),
/// `INVALID_ZONE` (`deviceTimeZone`), `FIELD_TOO_LONG` (`platform`). Per-sample checks happen
/// later, in `validate_sample`.
pub fn parse_batch(body: Bytes, limits: &Limits) -> Result<(BatchUpsertRequest, PayloadHash), IngestError> {
    let req = match parse_batch_fields(&body, limits) {
        Some(req) => {
            check_len("samples", req.samples.len(), limits.max_samples_per_batch, codes::TOO_MANY_SAMPLES)?;
            check_len("deletions", req.deletions.len(), limits.max_deletions_per_batch, codes::TOO_MANY_DELETIONS)?;
            req
        }
        None => {
            let value = parse_json(&body, limits)?;
            require_object(&value)?;
            check_count(&value, "samples", limits.max_samples_per_batch, codes::TOO_MANY_SAMPLES)?;
            check_count(&value, "deletions", limits.max_deletions_per_batch, codes::TOO_MANY_DELETIONS)?;
            parse(value)?
        }
    };
    check_id("requestId", &req.request_id)?;
    check_id("userId", &req.user_id)?;
    check_field("platform", req.platform.as_deref(), limits)?;
    if let Some(z) = req.device_time_zone.as_deref()
        && Zone::parse(z).is_none()
    {
        return Err(IngestError::bad_request(
            codes::INVALID_ZONE,
            format!("deviceTimeZone '{}' is not a valid zone", vitalflow_schemas::error::quote(z)),
        ));
    }
    let hash = PayloadHash { scheme: HASH_SCHEME_BATCH_FIELDS, hex: batch_hash(&req), body };
    Ok((req, hash))
}

/// The typed parse of [`parse_batch`], `None` when the body needs the general path (which answers
/// `JSON_TOO_DEEP` for a body nested deeper than `max_json_depth`).
///
/// A batch's own shape nests [`BATCH_SHAPE_DEPTH`] levels deep (the body, `samples`, a sample);
/// only a sample's `metadata` goes deeper, and its parse measures how deep
/// ([`vitalflow_schemas::wire::WireMetadata`]). So a body that parses this way is checked against
/// `max_json_depth` without a scan of its bytes, which cost a quarter of this parse. Recursion
/// while parsing is bounded by serde_json's own limit (128 levels).
fn parse_batch_fields(body: &[u8], limits: &Limits) -> Option<BatchUpsertRequest> {
    // serde reads a struct from an array of its fields too; a body must be an object.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return None;
    }
    // Below the shape's own depth, whether `[]` or `null` was sent matters: the scan decides.
    let scanned = limits.max_json_depth < BATCH_SHAPE_DEPTH;
    if scanned && json_depth_exceeds(body, limits.max_json_depth) {
        return None;
    }
    // One UTF-8 check of the whole body, not one per string (serde_json's `from_str` trusts its
    // input's encoding; `from_slice` checks each string). A body that is not UTF-8 takes the general
    // path, whose parse reports it.
    let req: BatchUpsertRequest = serde_json::from_str(std::str::from_utf8(body).ok()?).ok()?;
    let deepest = req.samples.iter().filter_map(|s| s.metadata.as_ref()).map(|m| m.depth).max().unwrap_or(0);
    (scanned || BATCH_SHAPE_DEPTH + deepest <= limits.max_json_depth).then_some(req)
}

/// The nesting of a batch-upsert body without metadata: the body, `samples` or `deletions`, one
/// sample or deletion (levels, as `max_json_depth` counts them).
const BATCH_SHAPE_DEPTH: usize = 3;

/// A domain-changes body checked at the request level, with its payload hash (scheme 1, JCS). Request-level
/// failures (400): `TOO_MANY_CHANGES`, `INVALID_REQUEST`, `INVALID_ID` (`requestId`); each change is
/// checked later, by `parse_change`.
pub fn parse_domain(value: Value, limits: &Limits) -> Result<(DomainChangesRequest, PayloadHash), IngestError> {
    require_object(&value)?;
    check_count(&value, "changes", limits.max_changes_per_request, codes::TOO_MANY_CHANGES)?;
    let hash = PayloadHash { scheme: HASH_SCHEME_JCS, hex: payload_hash(&value), body: Bytes::new() };
    let req: DomainChangesRequest = parse(value)?;
    check_id("requestId", &req.request_id)?;
    Ok((req, hash))
}

/// A profile body checked as a whole (400): `INVALID_REQUEST` (shape), `INVALID_ZONE` (`timeZone`
/// must be an IANA zone), `FIELD_TOO_LONG` (a `blockedMetrics` entry).
pub fn parse_profile(value: Value, limits: &Limits) -> Result<ProfileRequest, IngestError> {
    require_object(&value)?;
    let mut req: ProfileRequest = parse(value)?;
    if let Some(z) = req.time_zone.as_deref()
        && !matches!(Zone::parse(z), Some(Zone::Iana(_)))
    {
        return Err(IngestError::bad_request(
            codes::INVALID_ZONE,
            format!("timeZone '{}' is not an IANA zone", vitalflow_schemas::error::quote(z)),
        ));
    }
    for m in &req.blocked_metrics {
        check_field("a blockedMetrics entry", Some(m), limits)?;
    }
    vitalflow_schemas::domain::dedup_in_order(&mut req.blocked_metrics);
    if req.blocked_metrics.len() > limits.max_blocked_metrics {
        return Err(IngestError::bad_request(
            codes::TOO_MANY_BLOCKED_METRICS,
            format!(
                "blockedMetrics has {} distinct entries, more than the limit of {}",
                req.blocked_metrics.len(),
                limits.max_blocked_metrics
            ),
        ));
    }
    Ok(req)
}

/// JSON bytes to a value, with the HTTP API's error codes: `JSON_TOO_DEEP` when arrays and objects
/// nest deeper than `max_json_depth` (checked by a scan before parsing, so that no recursion is
/// deeper than that), else `MALFORMED_JSON` for bad syntax.
pub fn parse_json(bytes: &[u8], limits: &Limits) -> Result<Value, IngestError> {
    let too_deep = || {
        IngestError::bad_request(
            codes::JSON_TOO_DEEP,
            format!("JSON nests deeper than {} levels", limits.max_json_depth),
        )
    };
    if json_depth_exceeds(bytes, limits.max_json_depth) {
        return Err(too_deep());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        // serde_json's own limit (128 levels), should `max_json_depth` be set above it.
        if e.to_string().starts_with("recursion limit exceeded") {
            too_deep()
        } else {
            IngestError::bad_request("MALFORMED_JSON", format!("malformed JSON: {e}"))
        }
    })
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProfileResponse {
    epoch: u64,
    #[serde(flatten)]
    profile: UserProfile,
}

async fn upsert_profile(
    State(ingest): State<Ingest>,
    caller: Option<Extension<Caller>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let user = user_id.clone();
    with_audit_user(write_profile(ingest, caller, user_id, &headers, body).await, user)
}

async fn write_profile(
    ingest: Ingest,
    caller: Option<Extension<Caller>>,
    user_id: String,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ProfileResponse>, IngestError> {
    let req = parse_profile(json_body(headers, body, crate::limits())?, crate::limits())?;
    check_id("userId", &user_id)?;
    authorize(
        caller,
        |c| c.may_write_user(&user_id),
        "writing a profile needs health:write for your own userId, or backend",
    )?;
    let profile = UserProfile {
        user_id,
        time_zone: req.time_zone,
        allow_health_data_upload: req.allow_health_data_upload,
        blocked_metrics: req.blocked_metrics,
    };
    let epoch = ingest.upsert_profile(profile.clone()).await?;
    Ok(Json(ProfileResponse { epoch, profile }))
}

/// `DELETE /v1/users/{userId}` (issue 11 §3): erases the user in one durable commit and answers
/// `{"userId", "epoch", "deleted": {"samples", "sessions", "profile", "requests", "tombstones"}}`
/// once it is on disk; a read with `minEpoch=<epoch>` shows none of the user's rows. Needs
/// `backend`, or `health:write` for one's own `sub` (403 `FORBIDDEN` otherwise).
async fn erase_user(
    State(ingest): State<Ingest>,
    caller: Option<axum::Extension<vitalflow_schemas::auth::Caller>>,
    Path(user_id): Path<String>,
) -> Response {
    let user = user_id.clone();
    with_audit_user(erase(ingest, caller, user_id).await, user)
}

async fn erase(
    ingest: Ingest,
    caller: Option<axum::Extension<vitalflow_schemas::auth::Caller>>,
    user_id: String,
) -> Result<Json<crate::writer::ErasureResponse>, IngestError> {
    check_id("userId", &user_id)?;
    let caller = caller.map_or_else(vitalflow_schemas::auth::Caller::trusted, |c| c.0);
    if !caller.may_erase_user(&user_id) {
        return Err(IngestError::Invalid {
            status: StatusCode::FORBIDDEN,
            code: "FORBIDDEN",
            message: "erasure needs the backend scope, or health:write for your own user".into(),
        });
    }
    let response = ingest.erase_user(user_id).await?;
    metrics::counter!("vitalflow_erasures_total").increment(1);
    // The audit line (target `audit`) records who erased whom; this line names no user.
    tracing::info!(epoch = response.epoch, samples = response.deleted.samples, "user erased");
    Ok(Json(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid body takes the typed path (no JSON tree), whitespace and key order notwithstanding.
    #[test]
    fn a_valid_batch_parses_without_a_json_tree() {
        let body = br#" {"userId":"u1","requestId":"r-1","deviceTimeZone":"America/New_York","platform":"healthkit",
            "samples":[{"sourceId":"watch","sourceRecordId":"s0","metric":"steps","startAt":"2024-06-01T00:00:00+00:00",
            "endAt":"2024-06-01T00:10:00+00:00","value":100,"unit":"count","sourceClass":"watch"}]}"#;
        let req = parse_batch_fields(body, &Limits::DEFAULT).expect("the typed path");
        assert_eq!((req.user_id.as_str(), req.samples.len()), ("u1", 1));
        assert!(parse_batch_fields(b"[]", &Limits::DEFAULT).is_none());
    }
}
