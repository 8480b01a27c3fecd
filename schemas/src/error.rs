//! Per-record rejections (DOMAIN.md I5): a stable code and a message, never a panic.

use serde::{Deserialize, Serialize};

/// Why one sample or change was not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Stable machine-readable code such as `UNIT_UNSUPPORTED`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Rejection { code: code.to_owned(), message: message.into() }
    }
}

/// Stable rejection codes.
pub mod codes {
    pub const UNKNOWN_METRIC: &str = "UNKNOWN_METRIC";
    pub const UNIT_UNSUPPORTED: &str = "UNIT_UNSUPPORTED";
    pub const INVALID_INTERVAL: &str = "INVALID_INTERVAL";
    pub const OUT_OF_RANGE: &str = "OUT_OF_RANGE";
    pub const INVALID_ID: &str = "INVALID_ID";
    pub const INVALID_ZONE: &str = "INVALID_ZONE";
    pub const INVALID_TIMESTAMP: &str = "INVALID_TIMESTAMP";
    pub const INVALID_VALUE: &str = "INVALID_VALUE";
    pub const INVALID_SOURCE_CLASS: &str = "INVALID_SOURCE_CLASS";
    pub const UNKNOWN_CATEGORY: &str = "UNKNOWN_CATEGORY";
    pub const PRIVACY_UPLOAD_DISABLED: &str = "PRIVACY_UPLOAD_DISABLED";
    pub const METRIC_BLOCKED: &str = "METRIC_BLOCKED";
}
