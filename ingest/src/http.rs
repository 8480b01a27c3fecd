//! HTTP handlers for ingestion: `POST /v1/health/samples/batch-upsert` and
//! `POST /v1/users/{userId}/profile`. Request-level failures are JSON `{"code", "message"}`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use serde::Serialize;
use serde_json::Value;
use vitalflow_schemas::domain::{DomainChangesRequest, DomainChangesResponse};
use vitalflow_schemas::wire::{BatchUpsertRequest, BatchUpsertResponse, ProfileRequest, payload_hash, valid_id};
use vitalflow_schemas::{UserProfile, Zone};

use crate::error::IngestError;
use crate::writer::Ingest;

/// Default request body limit: 8 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The ingestion routes, with `max_body_bytes` as the body limit.
pub fn router(ingest: Ingest, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/health/samples/batch-upsert", post(batch_upsert))
        .route("/v1/users/{user_id}/profile", post(upsert_profile))
        .route("/v1/domain/changes", post(domain_changes))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(ingest)
}

/// Checks the content type, the body size and the JSON syntax.
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, IngestError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(IngestError::Invalid {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "UNSUPPORTED_MEDIA_TYPE",
            message: format!("expected Content-Type application/json, got '{content_type}'"),
        });
    }
    let body = body.map_err(|rejection| {
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
    })?;
    parse_json(&body)
}

/// Identifiers are 1 to 128 bytes (DOMAIN.md §0.1); a bad one fails the whole request.
fn check_id(name: &str, id: &str) -> Result<(), IngestError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(IngestError::bad_request("INVALID_ID", format!("{name} must be 1 to 128 bytes")))
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, IngestError> {
    serde_json::from_value(value).map_err(|e| IngestError::bad_request("INVALID_REQUEST", e.to_string()))
}

async fn batch_upsert(
    State(ingest): State<Ingest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<BatchUpsertResponse>, IngestError> {
    let (req, hash) = parse_batch(json_body(&headers, body)?)?;
    Ok(Json(ingest.batch_upsert(req, hash).await?))
}

async fn domain_changes(
    State(ingest): State<Ingest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<DomainChangesResponse>, IngestError> {
    let (req, hash) = parse_domain(json_body(&headers, body)?)?;
    Ok(Json(ingest.domain_changes(req, hash).await?))
}

/// A batch-upsert body checked at the request level, with its payload hash. Every path (HTTP,
/// Kafka, the outbox) goes through here, so a body means the same thing however it arrives.
pub fn parse_batch(value: Value) -> Result<(BatchUpsertRequest, String), IngestError> {
    let hash = payload_hash(&value);
    let req: BatchUpsertRequest = parse(value)?;
    check_id("requestId", &req.request_id)?;
    check_id("userId", &req.user_id)?;
    if let Some(z) = req.device_time_zone.as_deref()
        && Zone::parse(z).is_none()
    {
        return Err(IngestError::bad_request("INVALID_ZONE", format!("deviceTimeZone '{z}' is not a valid zone")));
    }
    Ok((req, hash))
}

/// A domain-changes body checked at the request level, with its payload hash.
pub fn parse_domain(value: Value) -> Result<(DomainChangesRequest, String), IngestError> {
    let hash = payload_hash(&value);
    let req: DomainChangesRequest = parse(value)?;
    check_id("requestId", &req.request_id)?;
    Ok((req, hash))
}

/// JSON bytes to a value, with the HTTP API's error code for bad syntax.
pub fn parse_json(bytes: &[u8]) -> Result<Value, IngestError> {
    serde_json::from_slice(bytes)
        .map_err(|e| IngestError::bad_request("MALFORMED_JSON", format!("malformed JSON: {e}")))
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
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ProfileResponse>, IngestError> {
    let req: ProfileRequest = parse(json_body(&headers, body)?)?;
    check_id("userId", &user_id)?;
    if let Some(z) = req.time_zone.as_deref()
        && !matches!(Zone::parse(z), Some(Zone::Iana(_)))
    {
        return Err(IngestError::bad_request("INVALID_ZONE", format!("timeZone '{z}' is not an IANA zone")));
    }
    let profile = UserProfile {
        user_id,
        time_zone: req.time_zone,
        allow_health_data_upload: req.allow_health_data_upload,
        blocked_metrics: req.blocked_metrics,
    };
    let epoch = ingest.upsert_profile(profile.clone()).await?;
    Ok(Json(ProfileResponse { epoch, profile }))
}
