//! Request and response bodies on the wire (JSON, camelCase), and the canonical payload hash of
//! DOMAIN.md I1 (SHA-256 of the RFC 8785 form, without `requestId`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `POST /v1/health/samples/batch-upsert`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchUpsertRequest {
    pub request_id: String,
    pub user_id: String,
    #[serde(default)]
    pub device_time_zone: Option<String>,
    #[serde(default)]
    pub platform: Option<String>,
    #[serde(default)]
    pub samples: Vec<WireSample>,
    #[serde(default)]
    pub deletions: Vec<WireDeletion>,
}

/// One sample as the phone sends it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireSample {
    pub source_id: String,
    pub source_record_id: String,
    pub metric: String,
    pub start_at: String,
    pub end_at: String,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub unit: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub source_class: Option<String>,
    #[serde(default)]
    pub zone_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
}

/// A deletion (tombstone) of a sample identity (I3).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WireDeletion {
    pub source_id: String,
    pub source_record_id: String,
}

/// A rejected item of a request (I5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedItem {
    /// Index in `samples` (or in `deletions` when `field` says so).
    pub index: usize,
    pub code: String,
    pub message: String,
    /// `deletions` for a rejected deletion; absent for samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The 200 answer to a batch upsert.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchUpsertResponse {
    pub request_id: String,
    /// The epoch whose commit carried this request.
    pub epoch: u64,
    pub accepted: u64,
    pub unchanged: u64,
    pub stale: u64,
    pub deleted: u64,
    pub rejected: Vec<RejectedItem>,
    pub replayed: bool,
}

/// `POST /v1/users/{userId}/profile`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileRequest {
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default = "default_true")]
    pub allow_health_data_upload: bool,
    #[serde(default)]
    pub blocked_metrics: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// A request-level error body: `{"code", "message"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// I1: SHA-256 (hex) of the JCS canonical form of `body` without its `requestId`.
pub fn payload_hash(body: &Value) -> String {
    let mut body = body.clone();
    if let Value::Object(map) = &mut body {
        map.remove("requestId");
    }
    let canonical = serde_jcs::to_vec(&body).unwrap_or_else(|_| body.to_string().into_bytes());
    hex::encode(Sha256::digest(&canonical))
}

/// Longest identifier, in bytes (§0.1).
pub const MAX_ID_BYTES: usize = 128;

/// Identifiers are non-empty UTF-8 strings of at most [`MAX_ID_BYTES`] bytes (§0.1) with no control
/// character (`char::is_control`: C0, DEL and C1, NUL included), since they become store keys,
/// log fields and CSV/SQL cells.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_ignores_request_id_key_order_and_number_spelling() {
        let a = json!({"requestId": "r-1", "userId": "u1", "samples": [{"value": 1200, "metric": "steps"}]});
        let b: Value =
            serde_json::from_str(r#"{"samples":[{"metric":"steps","value":1.2e3}],"userId":"u1","requestId":"r-2"}"#)
                .unwrap();
        assert_eq!(payload_hash(&a), payload_hash(&b));
        let c = json!({"requestId": "r-1", "userId": "u1", "samples": [{"value": 1201, "metric": "steps"}]});
        assert_ne!(payload_hash(&a), payload_hash(&c));
        assert_eq!(payload_hash(&a).len(), 64);
    }

    #[test]
    fn hash_is_sha256_of_jcs() {
        // JCS of {"b":1,"a":"x"} is {"a":"x","b":1}.
        let v = json!({"b": 1, "a": "x"});
        let want = hex::encode(Sha256::digest(br#"{"a":"x","b":1}"#));
        assert_eq!(payload_hash(&v), want);
    }

    #[test]
    fn ids_are_bounded() {
        assert!(valid_id("a"));
        assert!(!valid_id(""));
        assert!(valid_id(&"x".repeat(128)));
        assert!(!valid_id(&"x".repeat(129)));
        assert!(valid_id(&"é".repeat(64)));
        assert!(!valid_id(&"é".repeat(65)));
        for bad in ["a\0b", "a\nb", "\t", "a\u{7f}", "a\u{85}", "\u{1b}[31m"] {
            assert!(!valid_id(bad), "{bad:?}");
        }
        assert!(valid_id("user-1 ü 東京"));
    }
}
