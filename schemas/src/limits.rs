//! Input limits of ingestion (issue 10: no input reaches a panic, and no input is unbounded). Each
//! limit has a stable rejection code: a limit of the whole request fails it with a 400, a limit of
//! one item rejects that item only (DOMAIN.md I5).
//!
//! | limit | scope | code |
//! |---|---|---|
//! | `max_samples_per_batch` | request (400) | `TOO_MANY_SAMPLES` |
//! | `max_deletions_per_batch` | request (400) | `TOO_MANY_DELETIONS` |
//! | `max_changes_per_request` | request (400) | `TOO_MANY_CHANGES` |
//! | `max_field_bytes` | item, or request (400) for `platform` | `FIELD_TOO_LONG` |
//! | `max_metadata_bytes` | item | `METADATA_TOO_LARGE` |
//! | `max_json_depth` | request (400) | `JSON_TOO_DEEP` |
//!
//! Fixed rules that are not configurable: identifiers are 1 to 128 bytes without control
//! characters (`INVALID_ID`, [`crate::wire::MAX_ID_BYTES`]); zone strings are at most
//! [`crate::zone::MAX_ZONE_BYTES`] bytes (`INVALID_ZONE`).

use serde::Deserialize;

/// Limits on request bodies, checked at ingest before anything is stored.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most samples in one batch-upsert request (count). More fails the request: 400
    /// `TOO_MANY_SAMPLES`.
    pub max_samples_per_batch: usize,
    /// Most deletions in one batch-upsert request (count). More fails the request: 400
    /// `TOO_MANY_DELETIONS`.
    pub max_deletions_per_batch: usize,
    /// Most changes in one domain-changes request (count). More fails the request: 400
    /// `TOO_MANY_CHANGES`.
    pub max_changes_per_request: usize,
    /// Most bytes (UTF-8) of a free-text field: `platform` (400), and per item `metric`, `unit`,
    /// `category`, `sourceClass`, a product's `name` and `category`, a `blockedMetrics` entry
    /// (rejection `FIELD_TOO_LONG`).
    pub max_field_bytes: usize,
    /// Most bytes of one sample's `metadata`, serialized as compact JSON. More rejects the sample:
    /// `METADATA_TOO_LARGE`.
    pub max_metadata_bytes: usize,
    /// Deepest nesting of arrays and objects in a JSON body (levels; the body's top-level object is
    /// level 1). Deeper fails the request: 400 `JSON_TOO_DEEP`. serde_json stops at 128 levels on
    /// its own, so a value above 127 has no effect beyond that.
    pub max_json_depth: usize,
    /// Most entries of a profile's `blockedMetrics` (count; duplicates are dropped first). More
    /// fails a profile request (400) or rejects a domain user change, both with
    /// `TOO_MANY_BLOCKED_METRICS`: every sample of the user is checked against the list.
    pub max_blocked_metrics: usize,
}

impl Limits {
    /// The defaults, as a constant (so that `&Limits::DEFAULT` is a `&'static Limits`).
    pub const DEFAULT: Limits = Limits {
        max_samples_per_batch: 10_000,
        max_deletions_per_batch: 10_000,
        max_changes_per_request: 10_000,
        max_field_bytes: 256,
        max_metadata_bytes: 16 * 1024,
        max_json_depth: 64,
        max_blocked_metrics: 64,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// Whether a string field fits `max_field_bytes`.
pub fn field_fits(s: &str, limits: &Limits) -> bool {
    s.len() <= limits.max_field_bytes
}

/// The deepest nesting of arrays and objects in JSON text, stopping early once it passes `limit`
/// (so that the scan costs nothing more on a hostile body). Strings are skipped, escapes included;
/// on malformed text the answer is only an estimate, which is enough: the parser rejects the text.
pub fn json_depth_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_config() {
        let d = Limits::default();
        assert_eq!(d.max_samples_per_batch, 10_000);
        assert_eq!(d.max_deletions_per_batch, 10_000);
        assert_eq!(d.max_changes_per_request, 10_000);
        assert_eq!(d.max_field_bytes, 256);
        assert_eq!(d.max_metadata_bytes, 16_384);
        assert_eq!(d.max_json_depth, 64);
        let l: Limits = serde_json::from_str(r#"{"max_samples_per_batch": 5}"#).expect("partial limits");
        assert_eq!(l, Limits { max_samples_per_batch: 5, ..Limits::default() });
        assert!(serde_json::from_str::<Limits>(r#"{"max_sample": 5}"#).is_err());
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert!(!json_depth_exceeds(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(json_depth_exceeds(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(!json_depth_exceeds(br#"{"a":"[[[[[[\"[[[["}"#, 1));
        assert!(!json_depth_exceeds(br#"{"a":"\\"}"#, 1));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(json_depth_exceeds(deep.as_bytes(), 64));
        assert!(!json_depth_exceeds(deep.as_bytes(), 100));
        assert!(!json_depth_exceeds(b"]]]]}}}", 0));
    }

    #[test]
    fn field_length_is_in_bytes() {
        let l = Limits { max_field_bytes: 4, ..Limits::default() };
        assert!(field_fits("abcd", &l));
        assert!(!field_fits("abcde", &l));
        assert!(!field_fits("ééé", &l));
    }
}
