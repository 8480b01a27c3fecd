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

/// At most this many bytes of an input string are quoted back in a message, so that a hostile
/// field cannot make a response as large as the request.
pub const MAX_QUOTED_BYTES: usize = 64;

/// `s` as quoted in a message: its first [`MAX_QUOTED_BYTES`] bytes (cut at a character boundary)
/// with `…` when cut.
pub fn quote(s: &str) -> String {
    if s.len() <= MAX_QUOTED_BYTES {
        return s.to_owned();
    }
    format!("{}…", &s[..s.floor_char_boundary(MAX_QUOTED_BYTES)])
}

/// Stable rejection codes. Per-item codes appear in a response's `rejected` list; the request-level
/// codes (`TOO_MANY_*`, `JSON_TOO_DEEP`, and `FIELD_TOO_LONG`, `INVALID_ID`, `INVALID_ZONE` for a
/// request's own fields) fail the whole request with a 400.
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
    /// G6: a sample's `endAt` (a session's `startAt` or `endAt`) lies more than 24 h after the moment
    /// the server received it.
    pub const FUTURE_TIMESTAMP: &str = "FUTURE_TIMESTAMP";
    /// A domain change that is not one of the supported entity/op pairs or has a malformed field.
    pub const INVALID_CHANGE: &str = "INVALID_CHANGE";
    /// A free-text field is longer than `Limits::max_field_bytes`.
    pub const FIELD_TOO_LONG: &str = "FIELD_TOO_LONG";
    /// A sample's serialized `metadata` is longer than `Limits::max_metadata_bytes`.
    pub const METADATA_TOO_LARGE: &str = "METADATA_TOO_LARGE";
    /// A batch has more samples than `Limits::max_samples_per_batch` (400).
    pub const TOO_MANY_SAMPLES: &str = "TOO_MANY_SAMPLES";
    /// A batch has more deletions than `Limits::max_deletions_per_batch` (400).
    pub const TOO_MANY_DELETIONS: &str = "TOO_MANY_DELETIONS";
    /// A domain-changes request has more changes than `Limits::max_changes_per_request` (400).
    pub const TOO_MANY_CHANGES: &str = "TOO_MANY_CHANGES";
    /// A profile's `blockedMetrics` has more distinct entries than `Limits::max_blocked_metrics`.
    pub const TOO_MANY_BLOCKED_METRICS: &str = "TOO_MANY_BLOCKED_METRICS";
    /// A JSON body nests deeper than `Limits::max_json_depth` (400).
    pub const JSON_TOO_DEEP: &str = "JSON_TOO_DEEP";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_at_a_char_boundary() {
        assert_eq!(quote("short"), "short");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.ends_with('…'));
        assert_eq!(q.len(), 64 + '…'.len_utf8());
        assert_eq!(quote(&format!("a{}", "é".repeat(40))).len(), 63 + '…'.len_utf8());
    }
}
