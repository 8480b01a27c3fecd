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
    /// The durable store failed; nothing of the request was applied (500, retry may help).
    #[error("storage failure: {0}")]
    Storage(String),
    /// The server is shutting down (503, retry elsewhere or later).
    #[error("ingestion is shutting down")]
    Unavailable,
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
            IngestError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "STORAGE_FAILURE"),
            IngestError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
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
            tracing::error!(error = %self, "ingest request failed");
        }
        (status, axum::Json(ErrorBody { code: code.to_owned(), message: self.to_string() })).into_response()
    }
}
