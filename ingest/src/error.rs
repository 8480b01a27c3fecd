//! Ingestion errors, classified by fault: the client's (4xx) or ours (5xx).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vitalflow_schemas::wire::ErrorBody;

/// Why a whole request failed. Per-sample problems are not errors: they are rejections in the
/// response.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The request itself is invalid (400, 413, 415): retrying the same request cannot help.
    #[error("{message}")]
    Invalid { status: StatusCode, code: &'static str, message: String },
    /// `(userId, requestId)` was used before with a different payload (409).
    #[error("requestId '{0}' was already used with a different payload")]
    IdempotencyKeyReused(String),
    /// The durable store failed (disk full, a failed fsync); nothing of the request was applied
    /// and nothing acknowledged (503 `STORAGE_UNAVAILABLE`, retry later).
    #[error("storage unavailable: {0}")]
    Storage(String),
    /// The writer is not running: shutting down, or a component it needs has died (503
    /// `UNAVAILABLE`; `/readyz` names the component).
    #[error("ingestion is unavailable (shutting down, or a component has failed; see /readyz)")]
    Unavailable,
    /// The writer's queue is full (503 `OVERLOADED`, retry after `Retry-After`).
    #[error("ingestion is overloaded; retry later")]
    Overloaded,
    /// The views trail the store by more than the configured lag (503 `VIEWS_LAGGING`).
    #[error("the views are {behind} epochs behind ingestion; retry later")]
    ViewsLagging { behind: u64 },
    /// A bug failed this request alone inside the writer; nothing of it was applied (500
    /// `INTERNAL`).
    #[error("internal error: {0}")]
    Internal(String),
    /// Too many requests for this user (429 `RATE_LIMITED`, retry after `Retry-After` seconds).
    #[error("too many requests for this user; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
}

impl IngestError {
    /// A 400 with `code`.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        IngestError::Invalid { status: StatusCode::BAD_REQUEST, code, message: message.into() }
    }

    /// The stable error code (as in the JSON body).
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            IngestError::Invalid { status, code, .. } => (*status, code),
            IngestError::IdempotencyKeyReused(_) => (StatusCode::CONFLICT, "IDEMPOTENCY_KEY_REUSED"),
            IngestError::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "STORAGE_UNAVAILABLE"),
            IngestError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            IngestError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED"),
            IngestError::ViewsLagging { .. } => (StatusCode::SERVICE_UNAVAILABLE, "VIEWS_LAGGING"),
            IngestError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            IngestError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
        }
    }

    /// Seconds a client should wait before retrying, for the refusals that say so.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            IngestError::Storage(_) | IngestError::Overloaded | IngestError::ViewsLagging { .. } => Some(1),
            IngestError::Unavailable => Some(5),
            IngestError::RateLimited { retry_after_secs } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }
}

impl From<redb::Error> for IngestError {
    fn from(e: redb::Error) -> Self {
        IngestError::Storage(e.to_string())
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::warn!(code, error = %self, "ingest request refused");
        }
        metrics::counter!("vitalflow_ingest_refusals_total", "code" => code).increment(1);
        let mut resp =
            (status, axum::Json(ErrorBody { code: code.to_owned(), message: self.to_string() })).into_response();
        if let Some(secs) = self.retry_after_secs()
            && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}
