//! Issue 10, "no input reaches a panic": property-based fuzzing of everything a client controls,
//! on stable Rust (proptest, no nightly, no cargo-fuzz).
//!
//! Each property feeds hostile input through the real request path, exactly as the HTTP handlers,
//! Kafka and the outbox do, and asserts that nothing panics and that every outcome is either a value
//! or a rejection whose code is in a known list:
//!
//! ```text
//!  bytes ─▶ parse_batch (typed, or through parse_json) ─▶ validate_sample (each sample, with a RequestContext)
//!  bytes ─▶ parse_json ─▶ parse_domain ─▶ parse_change   (each change)
//!                      └▶ parse_profile
//!  strings ─▶ Zone::parse, parse_instant;  (metric, unit, f64) ─▶ normalize + check_range
//! ```
//!
//! An accepted sample or session is then checked against the invariants the views rely on (finite
//! value, instants within G3/G6, bounded metadata), and split into local days as the views do.
//!
//! Run (the default, 15 000 cases per property: about 40 s in a dev build on 2 cores):
//!
//! ```text
//! cargo test -p vitalflow-ingest --test fuzz
//! ```
//!
//! `VITALFLOW_FUZZ_CASES` sets the number of cases of each of the 9 properties. A long run of 10.8
//! million inputs (9 × 1.2 M; about 25 min on 2 cores, most of it in the two body properties):
//!
//! ```text
//! VITALFLOW_FUZZ_CASES=1200000 cargo test -p vitalflow-ingest --test fuzz -- --test-threads=2
//! ```
//!
//! A failing case is shrunk and its seed appended to `tests/fuzz-regressions/fuzz.txt`, which is
//! replayed first on every later run: commit it, and add an explicit test to [`regressions`].

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::StatusCode;
use chrono::{DateTime, FixedOffset, SecondsFormat};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{FileFailurePersistence, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Number, Value, json};
use vitalflow_ingest::IngestError;
use vitalflow_ingest::http::{parse_batch, parse_domain, parse_json, parse_profile};
use vitalflow_schemas::domain::{DomainChange, parse_change};
use vitalflow_schemas::error::codes;
use vitalflow_schemas::metric::{self, Metric, Platform};
use vitalflow_schemas::time::{MAX_FUTURE_MS, MIN_PLAUSIBLE_MS, parse_instant};
use vitalflow_schemas::validate::{MAX_SAMPLE_MS, RequestContext, validate_sample};
use vitalflow_schemas::wire::valid_id;
use vitalflow_schemas::{Limits, UserProfile, Zone, split};

// ---------------------------------------------------------------------------------------------
// Configuration

/// Cases per property when `VITALFLOW_FUZZ_CASES` is unset.
const DEFAULT_CASES: u32 = 15_000;

fn config() -> ProptestConfig {
    let cases = std::env::var("VITALFLOW_FUZZ_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(DEFAULT_CASES);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/fuzz-regressions/fuzz.txt"))),
        // Hostile inputs are mostly rejected early; that is the point, not a reason to give up.
        max_global_rejects: u32::MAX,
        ..ProptestConfig::default()
    }
}

/// 2026-01-01T00:00:00Z: generated instants cluster around it, and so does the receive time.
const ANCHOR_MS: i64 = 1_767_225_600_000;

/// Limits tight enough that generated inputs cross them often.
const TIGHT: Limits = Limits {
    max_samples_per_batch: 3,
    max_deletions_per_batch: 2,
    max_changes_per_request: 3,
    max_field_bytes: 12,
    max_metadata_bytes: 200,
    max_json_depth: 6,
    // Out of the generators' reach: the limit has its own test.
    max_blocked_metrics: 1_000,
};

// ---------------------------------------------------------------------------------------------
// Known codes

/// Codes a whole request may fail with in the parse functions (all 400).
const REQUEST_CODES: &[&str] = &[
    "MALFORMED_JSON",
    "INVALID_REQUEST",
    codes::JSON_TOO_DEEP,
    codes::INVALID_ID,
    codes::INVALID_ZONE,
    codes::FIELD_TOO_LONG,
    codes::TOO_MANY_SAMPLES,
    codes::TOO_MANY_DELETIONS,
    codes::TOO_MANY_CHANGES,
];

/// Codes of a rejected sample.
const SAMPLE_CODES: &[&str] = &[
    codes::UNKNOWN_METRIC,
    codes::UNIT_UNSUPPORTED,
    codes::INVALID_INTERVAL,
    codes::OUT_OF_RANGE,
    codes::INVALID_ID,
    codes::INVALID_ZONE,
    codes::INVALID_TIMESTAMP,
    codes::INVALID_VALUE,
    codes::INVALID_SOURCE_CLASS,
    codes::UNKNOWN_CATEGORY,
    codes::PRIVACY_UPLOAD_DISABLED,
    codes::METRIC_BLOCKED,
    codes::FUTURE_TIMESTAMP,
    codes::FIELD_TOO_LONG,
    codes::METADATA_TOO_LARGE,
];

/// Codes of a rejected domain change.
const CHANGE_CODES: &[&str] = &[
    codes::INVALID_CHANGE,
    codes::INVALID_ID,
    codes::INVALID_TIMESTAMP,
    codes::FUTURE_TIMESTAMP,
    codes::OUT_OF_RANGE,
    codes::INVALID_ZONE,
    codes::FIELD_TOO_LONG,
];

thread_local! {
    /// Every outcome (code, or `accepted …`) this thread has seen: [`generators_reach_every_code`]
    /// checks that the generators reach all of them.
    static SEEN: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

fn seen(outcome: &str) {
    SEEN.with(|s| {
        if !s.borrow().contains(outcome) {
            s.borrow_mut().insert(outcome.to_owned());
        }
    });
}

/// The error is a 400 with a known request-level code.
fn check_request_error(e: &IngestError) -> Result<(), TestCaseError> {
    match e {
        IngestError::Invalid { status, code, .. } => {
            seen(code);
            prop_assert_eq!(*status, StatusCode::BAD_REQUEST, "{}", code);
            prop_assert!(REQUEST_CODES.contains(code), "unknown request code {}: {}", code, e);
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("a parse function returned a non-400 error: {other:?}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Generators

/// Strings that broke or could break a parser: multi-byte characters where ASCII is expected,
/// offsets out of range, control characters, RFC 3339 edge cases.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "+1é1",
    "-é12",
    "+99:99",
    "+18:60",
    "-24:00",
    "+0545",
    "+05:45",
    "Z",
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kathmandu",
    "America/Argentina/ComodRivadavia",
    "Nowhere/City",
    "\0",
    "a\0b",
    "\u{7f}",
    "\u{85}",
    "\u{feff}",
    "\u{202e}evil",
    "𝕊𝕥𝕖𝕡𝕤",
    "é",
    "\"",
    "\\",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "-0001-01-01T00:00:00Z",
    "+275760-09-13T00:00:00Z",
    "1970-01-01T00:00:00Z",
    "1999-12-31T23:59:59.999Z",
    "2000-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-06-01T24:00:00Z",
    "2024-06-01T23:59:60Z",
    "2024-06-01T03:50:00+99:99",
    "2024-06-01T03:50:00+1é:00",
    "2024-06-01T03:50:00.é",
    "2024-06-01T03:50:00.0000000000000000000001Z",
    "2024-06-01",
    "NaN",
    "Infinity",
    "-0",
    "1e309",
    "steps",
    "count",
    "mmol<>/L",
    "mmol<180.1558800000541>/L",
    "mmol<<>>/L",
    "°F",
    "asleepREM",
    "chest_strap",
];

/// Characters chosen to hit every branch of the byte-level parsers.
fn odd_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => any::<char>(),
        2 => prop::sample::select(vec!['\0', '\n', '\t', '\u{7f}', '\u{85}', '\u{feff}', 'é', '東', '😀', '"', '\\', '/']),
        3 => prop::sample::select(vec!['+', '-', ':', '.', 'T', 'Z', '<', '>', '0', '1', '2', '5', '9']),
    ]
}

fn odd_string() -> BoxedStrategy<String> {
    prop_oneof![
        4 => prop::sample::select(ODD_STRINGS).prop_map(str::to_owned),
        3 => prop::collection::vec(odd_char(), 0..12).prop_map(String::from_iter),
        1 => any::<String>(),
        1 => (odd_char(), prop_oneof![Just(65usize), Just(129), Just(257), 0..20_000usize])
            .prop_map(|(c, n)| c.to_string().repeat(n)),
    ]
    .boxed()
}

fn odd_number() -> BoxedStrategy<Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        prop::num::f64::NORMAL.prop_map(|x| json!(x)),
        prop::sample::select(vec![
            0.0,
            -0.0,
            1.0,
            0.5,
            1e308,
            -1e308,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            1.7e308,
            9007199254740993.0,
        ])
        .prop_map(|x| json!(x)),
        prop::sample::select(vec![i64::MIN, i64::MAX, -64_800, 64_800, 64_801, 0, -1])
            .prop_map(|n| Value::Number(Number::from(n))),
        Just(json!(u64::MAX)),
    ]
    .boxed()
}

/// Any JSON value, nested up to a few levels.
fn any_json() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        odd_number(),
        odd_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((odd_string(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Instants around the anchor, around the G6 lower bound, across years 1–9999, and a few fixed
/// edge cases.
fn instant_ms() -> BoxedStrategy<i64> {
    prop_oneof![
        4 => ANCHOR_MS - 400 * 86_400_000..ANCHOR_MS + 4 * 86_400_000,
        2 => MIN_PLAUSIBLE_MS - 2 * 86_400_000..MIN_PLAUSIBLE_MS + 2 * 86_400_000,
        1 => -62_135_596_800_000i64..253_402_300_799_999,
        1 => prop::sample::select(vec![0i64, -1, MIN_PLAUSIBLE_MS, MIN_PLAUSIBLE_MS - 1, ANCHOR_MS + MAX_FUTURE_MS,
            ANCHOR_MS + MAX_FUTURE_MS + 1, 2_147_483_647_000, 253_402_300_799_999]),
    ]
    .boxed()
}

/// How an instant is written: (offset east of UTC in seconds, sub-second digits, `Z` for UTC).
fn style() -> BoxedStrategy<(i32, usize, bool)> {
    let offset = prop_oneof![Just(0i32), -64_800..=64_800i32, prop::sample::select(vec![-14_400, 20_700, 49_500])];
    (offset, 0..4usize, any::<bool>()).boxed()
}

/// `ms` as RFC 3339 text in `style`; empty when chrono cannot represent it.
fn format_ms(ms: i64, (offset, precision, z): (i32, usize, bool)) -> String {
    let Some(utc) = DateTime::from_timestamp_millis(ms) else { return String::new() };
    let precision = [SecondsFormat::Secs, SecondsFormat::Millis, SecondsFormat::Micros, SecondsFormat::Nanos]
        .get(precision)
        .copied()
        .unwrap_or(SecondsFormat::AutoSi);
    match FixedOffset::east_opt(offset) {
        Some(tz) if offset != 0 || !z => utc.with_timezone(&tz).to_rfc3339_opts(precision, false),
        _ => utc.to_rfc3339_opts(precision, true),
    }
}

/// An instant as text: well-formed (see [`instant_ms`], with random precision and offsets), or an
/// odd string.
fn timestamp() -> BoxedStrategy<String> {
    prop_oneof![6 => (instant_ms(), style()).prop_map(|(ms, st)| format_ms(ms, st)), 1 => odd_string()].boxed()
}

/// `(startAt, endAt)`: mostly related (the end 0 to 24 h after the start, just past 24 h, or before
/// it), so that generated samples get past G3 to the later checks; sometimes independent.
fn interval_pair() -> BoxedStrategy<(Option<Value>, Option<Value>)> {
    let delta = prop_oneof![
        4 => 0..=MAX_SAMPLE_MS,
        1 => prop::sample::select(vec![0, 1, MAX_SAMPLE_MS, MAX_SAMPLE_MS + 1, -1, i64::MAX / 2]),
        1 => -86_400_000..0i64,
    ];
    let related = (instant_ms(), delta, style(), style()).prop_map(|(start, delta, s1, s2)| {
        (Some(Value::String(format_ms(start, s1))), Some(Value::String(format_ms(start.saturating_add(delta), s2))))
    });
    let independent = (field(timestamp().prop_map(Value::String)), field(timestamp().prop_map(Value::String)));
    prop_oneof![5 => related, 1 => independent].boxed()
}

/// A JSON field that is usually well-typed and plausible, sometimes hostile, sometimes absent.
fn field(plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    prop_oneof![6 => plausible.prop_map(Some), 1 => any_json().prop_map(Some), 1 => Just(None)].boxed()
}

/// Bodies come in two kinds. A *wild* body may have a wrong type or an unknown key anywhere, which
/// mostly fails the whole request at the serde level. A *typed* body has the right JSON type in
/// every field (with hostile content), so that it gets through to the per-item checks.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Wild,
    Typed,
}

/// An optional field of a body of `kind`.
fn opt(kind: Kind, plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    match kind {
        Kind::Wild => field(plausible),
        Kind::Typed => prop_oneof![7 => plausible.prop_map(Some), 1 => Just(None)].boxed(),
    }
}

/// A required field of a body of `kind`.
fn req(kind: Kind, plausible: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Option<Value>> {
    match kind {
        Kind::Wild => field(plausible),
        Kind::Typed => plausible.prop_map(Some).boxed(),
    }
}

fn extra(kind: Kind) -> BoxedStrategy<Option<(String, Value)>> {
    match kind {
        Kind::Wild => extra_field(),
        Kind::Typed => Just(None).boxed(),
    }
}

fn kinds<T: std::fmt::Debug + 'static>(of: impl Fn(Kind) -> BoxedStrategy<T>) -> BoxedStrategy<T> {
    prop_oneof![4 => of(Kind::Typed), 1 => of(Kind::Wild)].boxed()
}

fn id() -> BoxedStrategy<Value> {
    prop_oneof![
        6 => prop::sample::select(vec!["u1", "w", "r-1", "a", "p1", "s1", "東京-ü"]).prop_map(|s| json!(s)),
        2 => odd_string().prop_map(Value::String),
        1 => (Just("x"), 126..131usize).prop_map(|(c, n)| json!(c.repeat(n))),
    ]
    .boxed()
}

fn text(options: &'static [&'static str]) -> BoxedStrategy<Value> {
    prop_oneof![4 => prop::sample::select(options).prop_map(|s| json!(s)), 1 => odd_string().prop_map(Value::String)]
        .boxed()
}

const METRICS: &[&str] = &[
    "steps",
    "distance",
    "active_energy",
    "basal_energy",
    "basal_metabolic_rate",
    "heart_rate",
    "resting_heart_rate",
    "hrv_sdnn",
    "hrv_rmssd",
    "respiratory_rate",
    "spo2",
    "body_mass",
    "body_temperature",
    "blood_glucose",
    "sleep_analysis",
    "mindful_minutes",
    "exercise_minutes",
];
const UNITS: &[&str] = &[
    "count",
    "count/min",
    "bpm",
    "beats/min",
    "/min",
    "breaths/min",
    "count/s",
    "m",
    "km",
    "mi",
    "ft",
    "yd",
    "kcal",
    "Cal",
    "kJ",
    "J",
    "cal",
    "kcal/d",
    "W",
    "kg",
    "g",
    "lb",
    "st",
    "oz",
    "degC",
    "°C",
    "degF",
    "°F",
    "K",
    "mg/dL",
    "mg/dl",
    "mmol/L",
    "mmol<180.1558800000541>/L",
    "mmol<1>/l",
    "%",
    "ms",
    "s",
    "min",
    "hr",
    "h",
    " count ",
    "KCAL",
];
const CATEGORIES: &[&str] =
    &["in_bed", "asleep", "asleepCore", "asleep_deep", "REM", "awake", "AWAKE_IN_BED", "UNKNOWN", "dozing"];
const SOURCE_CLASSES: &[&str] =
    &["manual", "watch", "ring", "band", "chest_strap", "phone", "other", "unknown", "Watch"];
const ZONES: &[&str] = &["UTC", "America/New_York", "Europe/Berlin", "+05:45", "-04:00", "Z", "+1é1", "+99:99"];

fn zone_value() -> BoxedStrategy<Value> {
    text(ZONES).boxed()
}

fn metadata() -> BoxedStrategy<Value> {
    let key = prop::sample::select(vec![
        "HKMetadataKeySyncVersion",
        "HKMetadataKeySyncIdentifier",
        "HKMetadataKeyTimeZone",
        "HKMetadataKeyWasUserEntered",
        "zoneOffset",
        "startZoneOffset",
        "endZoneOffset",
        "recordingMethod",
        "deviceType",
        "device",
        "productType",
        "sourceRevision",
    ]);
    let value = prop_oneof![
        2 => odd_number(),
        1 => zone_value(),
        1 => Just(json!({"type": 4})),
        1 => Just(json!({"productType": "Watch2,4"})),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any_json(),
    ];
    prop_oneof![
        6 => prop::collection::vec((key, value), 0..5)
            .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        1 => any_json(),
        1 => (0..20_000usize).prop_map(|n| json!({"blob": "m".repeat(n)})),
    ]
    .boxed()
}

fn object(fields: Vec<(&'static str, Option<Value>)>, extra: Option<(String, Value)>) -> Value {
    let mut map: Map<String, Value> = fields.into_iter().filter_map(|(k, v)| Some((k.to_owned(), v?))).collect();
    if let Some((k, v)) = extra {
        map.insert(k, v);
    }
    Value::Object(map)
}

fn extra_field() -> BoxedStrategy<Option<(String, Value)>> {
    prop_oneof![12 => Just(None), 1 => (odd_string(), any_json()).prop_map(Some)].boxed()
}

fn sample(k: Kind) -> BoxedStrategy<Value> {
    let value = prop_oneof![4 => (0.0..500.0f64).prop_map(|x| json!(x)), 2 => odd_number()];
    let interval = match k {
        Kind::Wild => interval_pair(),
        // Both instants present and strings, whatever their content.
        Kind::Typed => interval_pair().prop_map(|(s, e)| (as_text(s), as_text(e))).boxed(),
    };
    (
        (req(k, id()), req(k, id()), req(k, text(METRICS)), interval),
        (opt(k, value), opt(k, text(UNITS)), opt(k, text(CATEGORIES))),
        (opt(k, text(SOURCE_CLASSES)), opt(k, zone_value()), opt(k, metadata()), extra(k)),
    )
        .prop_map(
            |((source_id, record_id, metric, (start, end)), (value, unit, category), (class, zone, meta, extra))| {
                object(
                    vec![
                        ("sourceId", source_id),
                        ("sourceRecordId", record_id),
                        ("metric", metric),
                        ("startAt", start),
                        ("endAt", end),
                        ("value", value),
                        ("unit", unit),
                        ("category", category),
                        ("sourceClass", class),
                        ("zoneId", zone),
                        ("metadata", meta),
                    ],
                    extra,
                )
            },
        )
        .boxed()
}

/// A string field as a string: a non-string becomes the empty string.
fn as_text(v: Option<Value>) -> Option<Value> {
    Some(Value::String(v.and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()))
}

fn deletion(k: Kind) -> BoxedStrategy<Value> {
    (req(k, id()), req(k, id()), extra(k))
        .prop_map(|(s, r, extra)| object(vec![("sourceId", s), ("sourceRecordId", r)], extra))
        .boxed()
}

fn array_of(item: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![8 => prop::collection::vec(item, 0..6).prop_map(Value::Array), 1 => any_json()].boxed()
}

/// An array in a body of `kind` (a typed body has an array there, never another type).
fn list(k: Kind, item: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    match k {
        Kind::Wild => array_of(item),
        Kind::Typed => prop::collection::vec(item, 0..6).prop_map(Value::Array).boxed(),
    }
}

fn batch_body() -> BoxedStrategy<Value> {
    kinds(|k| {
        (
            (
                req(k, id()),
                req(k, id()),
                opt(k, zone_value()),
                opt(k, text(&["healthkit", "health_connect", "fitbit"])),
            ),
            (opt(k, list(k, sample(k))), opt(k, list(k, deletion(k))), extra(k)),
        )
            .prop_map(|((request_id, user_id, zone, platform), (samples, deletions, extra))| {
                object(
                    vec![
                        ("requestId", request_id),
                        ("userId", user_id),
                        ("deviceTimeZone", zone),
                        ("platform", platform),
                        ("samples", samples),
                        ("deletions", deletions),
                    ],
                    extra,
                )
            })
            .boxed()
    })
}

fn change_data(k: Kind) -> BoxedStrategy<Value> {
    (
        (req(k, id()), req(k, id()), req(k, id()), interval_pair()),
        (
            prop::bool::weighted(0.3),
            opt(k, prop_oneof![(0.0..10.0f64).prop_map(|x| json!(x)), odd_number()]),
            opt(k, zone_value()),
            opt(k, text(&["Espresso", "Coffee"])),
        ),
        (
            opt(k, text(&["drink", "food"])),
            opt(k, list(k, text(METRICS))),
            opt(k, any::<bool>().prop_map(Value::Bool)),
            extra(k),
        ),
    )
        .prop_map(
            |(
                (user, session, product, (start, end)),
                (open, quantity, zone, name),
                (category, blocked, allow, extra),
            )| {
                let end = if open { Some(Value::Null) } else { end };
                object(
                    vec![
                        ("userId", user),
                        ("sessionId", session),
                        ("productId", product),
                        ("startAt", start),
                        ("endAt", end),
                        ("quantity", quantity),
                        ("zoneId", zone.clone()),
                        ("timeZone", zone),
                        ("name", name),
                        ("category", category),
                        ("blockedMetrics", blocked),
                        ("allowHealthDataUpload", allow),
                    ],
                    extra,
                )
            },
        )
        .boxed()
}

fn change(k: Kind) -> BoxedStrategy<Value> {
    (
        req(k, text(&["session", "product", "user", "planet"])),
        req(k, text(&["upsert", "delete"])),
        opt(k, change_data(k)),
        opt(k, change_data(k)),
    )
        .prop_map(|(entity, op, data, key)| {
            object(vec![("entity", entity), ("op", op), ("data", data), ("key", key)], None)
        })
        .boxed()
}

fn domain_body() -> BoxedStrategy<Value> {
    kinds(|k| {
        (req(k, id()), req(k, list(k, change(k))), extra(k))
            .prop_map(|(request_id, changes, extra)| {
                object(vec![("requestId", request_id), ("changes", changes)], extra)
            })
            .boxed()
    })
}

fn profile_body() -> BoxedStrategy<Value> {
    kinds(|k| {
        (
            opt(k, prop_oneof![text(ZONES), text(&["Asia/Tokyo"])]),
            opt(k, any::<bool>().prop_map(Value::Bool)),
            opt(k, list(k, text(METRICS))),
            extra(k),
        )
            .prop_map(|(tz, allow, blocked, extra)| {
                object(vec![("timeZone", tz), ("allowHealthDataUpload", allow), ("blockedMetrics", blocked)], extra)
            })
            .boxed()
    })
}

fn profile() -> BoxedStrategy<Option<UserProfile>> {
    prop::option::of(
        (prop::option::of(text(ZONES)), prop::bool::weighted(0.9), prop::collection::vec(text(METRICS), 0..3))
            .prop_map(|(tz, allow, blocked)| UserProfile {
                user_id: "u1".into(),
                time_zone: tz.and_then(|v| v.as_str().map(str::to_owned)),
                allow_health_data_upload: allow,
                blocked_metrics: blocked.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            }),
    )
    .boxed()
}

/// When the server received the request: near the anchor, so that generated instants hit the G6
/// bound, or anywhere.
fn received_at() -> impl Strategy<Value = i64> {
    prop_oneof![
        4 => ANCHOR_MS - 2 * 86_400_000..ANCHOR_MS + 2 * 86_400_000,
        1 => any::<i64>(),
        1 => prop::sample::select(vec![i64::MIN, i64::MAX, 0, MIN_PLAUSIBLE_MS]),
    ]
}

fn limits() -> impl Strategy<Value = &'static Limits> {
    prop_oneof![3 => Just(&Limits::DEFAULT), 1 => Just(&TIGHT)]
}

/// A body as bytes: the value serialized, then sometimes damaged byte by byte (flip, insert,
/// delete, truncate), or wrapped in deep nesting.
fn damaged(body: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0..4u8);
    let edits = prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(edit, 1..4)];
    (body, edits, prop_oneof![12 => Just(0usize), 1 => 1..200usize]).prop_map(|(v, edits, nesting)| {
        let mut bytes = serde_json::to_vec(&v).unwrap_or_default();
        for (at, byte, kind) in edits {
            if bytes.is_empty() {
                bytes.push(byte);
                continue;
            }
            let i = at.index(bytes.len());
            match kind {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 => {
                    bytes.remove(i);
                }
                _ => bytes.truncate(i),
            }
        }
        if nesting > 0 {
            let mut wrapped = b"{\"a\":".repeat(nesting);
            wrapped.extend_from_slice(&bytes);
            wrapped.extend(std::iter::repeat_n(b'}', nesting));
            bytes = wrapped;
        }
        bytes
    })
}

// ---------------------------------------------------------------------------------------------
// The pipelines

/// HTTP/Kafka/outbox path of a batch: parse, check, validate every sample, then the invariants of
/// what is accepted.
fn run_batch(
    bytes: &[u8],
    limits: &Limits,
    profile: Option<&UserProfile>,
    received_at_ms: i64,
) -> Result<(), TestCaseError> {
    let parsed = parse_batch(Bytes::copy_from_slice(bytes), limits);
    let (req, hash) = match parsed {
        Ok(ok) => ok,
        Err(e) => return check_request_error(&e),
    };
    prop_assert_eq!(hash.hex.len(), 64);
    prop_assert!(valid_id(&req.user_id) && valid_id(&req.request_id));
    prop_assert!(req.samples.len() <= limits.max_samples_per_batch);
    prop_assert!(req.deletions.len() <= limits.max_deletions_per_batch);
    prop_assert!(req.platform.as_deref().is_none_or(|p| p.len() <= limits.max_field_bytes));
    let device_zone = req.device_time_zone.as_deref().map(Zone::parse);
    prop_assert!(!matches!(device_zone, Some(None)), "an invalid deviceTimeZone passed parse_batch");
    let ctx = RequestContext {
        user_id: &req.user_id,
        platform: req.platform.as_deref(),
        device_zone: device_zone.flatten(),
        profile,
        received_at_ms,
        limits,
    };
    for ws in &req.samples {
        match validate_sample(ws, &ctx) {
            Ok(stored) => {
                seen("accepted sample");
                let s = &stored.sample;
                prop_assert!(s.start_ms >= MIN_PLAUSIBLE_MS, "{}", s.start_ms);
                prop_assert!(s.end_ms >= s.start_ms && s.end_ms - s.start_ms <= MAX_SAMPLE_MS);
                prop_assert!(s.end_ms <= received_at_ms.saturating_add(MAX_FUTURE_MS));
                prop_assert!(s.value.is_none_or(|v| v.0.abs() <= metric::MAX_ABS_VALUE), "{:?}", s.value);
                prop_assert!(stored.metadata.len() <= limits.max_metadata_bytes);
                prop_assert!(valid_id(&s.source_id) && valid_id(&s.source_record_id));
                // What the views do with it must not panic either.
                let v = s.value.map_or(1.0, |v| v.0);
                let total: f64 = split::day_shares(s.start_ms, s.end_ms, v, s.zone).iter().map(|d| d.1).sum();
                prop_assert!(total.is_finite());
                let _ = split::day_pieces(s.start_ms, s.end_ms, s.zone);
                let _ = s.zone.start_of_day(s.zone.local_date(s.end_ms));
            }
            Err(rej) => {
                seen(&rej.code);
                prop_assert!(SAMPLE_CODES.contains(&rej.code.as_str()), "unknown sample code {:?}", rej);
            }
        }
    }
    Ok(())
}

/// Path of a domain-changes body: parse, check, then every change.
fn run_domain(
    bytes: &[u8],
    limits: &Limits,
    profile: Option<&UserProfile>,
    received_at_ms: i64,
) -> Result<(), TestCaseError> {
    let (req, hash) = match parse_json(bytes, limits).and_then(|v| parse_domain(v, limits)) {
        Ok(ok) => ok,
        Err(e) => return check_request_error(&e),
    };
    prop_assert_eq!(hash.hex.len(), 64);
    prop_assert!(req.changes.len() <= limits.max_changes_per_request);
    for raw in &req.changes {
        match parse_change(raw, received_at_ms, limits) {
            Ok(DomainChange::UpsertSession(w)) => {
                seen("accepted session");
                prop_assert!(w.start_ms >= MIN_PLAUSIBLE_MS);
                prop_assert!(w.start_ms <= received_at_ms.saturating_add(MAX_FUTURE_MS));
                prop_assert!(
                    w.end_ms.is_none_or(|e| e >= MIN_PLAUSIBLE_MS && e <= received_at_ms.saturating_add(MAX_FUTURE_MS))
                );
                prop_assert!((0.0..=metric::MAX_ABS_VALUE).contains(&w.quantity), "{}", w.quantity);
                let s = w.resolve(profile);
                let _ = s.zone.local(s.start_ms);
            }
            Ok(DomainChange::UpsertProduct(p)) => {
                seen("accepted product");
                prop_assert!(p.name.len() <= limits.max_field_bytes);
                prop_assert!(p.category.as_deref().is_none_or(|c| c.len() <= limits.max_field_bytes));
            }
            Ok(DomainChange::UpsertUser(u)) => {
                seen("accepted user");
                prop_assert!(u.time_zone.as_deref().is_none_or(|z| matches!(Zone::parse(z), Some(Zone::Iana(_)))));
            }
            Ok(_) => {}
            Err(rej) => {
                seen(&format!("change {}", rej.code));
                prop_assert!(CHANGE_CODES.contains(&rej.code.as_str()), "unknown change code {:?}", rej);
            }
        }
    }
    Ok(())
}

/// Path of a profile body.
fn run_profile(bytes: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    match parse_json(bytes, limits).and_then(|v| parse_profile(v, limits)) {
        Ok(req) => {
            seen("accepted profile");
            prop_assert!(req.time_zone.as_deref().is_none_or(|z| matches!(Zone::parse(z), Some(Zone::Iana(_)))));
            prop_assert!(req.blocked_metrics.iter().all(|m| m.len() <= limits.max_field_bytes));
            Ok(())
        }
        Err(e) => check_request_error(&e),
    }
}

// ---------------------------------------------------------------------------------------------
// The properties

proptest! {
    #![proptest_config(config())]

    /// (a) Random bytes, into every body parser.
    #[test]
    fn raw_bytes(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        prop::collection::vec(prop::sample::select(b"{}[]\",:0123456789.eE+-truefalsnul\\ \x00\xc3\xa9".to_vec()), 0..256),
    ], limits in limits(), received in received_at()) {
        run_batch(&bytes, limits, None, received)?;
        run_domain(&bytes, limits, None, received)?;
        run_profile(&bytes, limits)?;
    }

    /// (b) Structured but hostile batch-upsert bodies, sometimes damaged.
    #[test]
    fn batch_bodies(bytes in damaged(batch_body()), limits in limits(), profile in profile(), received in received_at()) {
        run_batch(&bytes, limits, profile.as_ref(), received)?;
    }

    /// (b) Structured but hostile domain-changes bodies, sometimes damaged.
    #[test]
    fn domain_bodies(bytes in damaged(domain_body()), limits in limits(), profile in profile(), received in received_at()) {
        run_domain(&bytes, limits, profile.as_ref(), received)?;
    }

    /// (b) Structured but hostile profile bodies, sometimes damaged.
    #[test]
    fn profile_bodies(bytes in damaged(profile_body()), limits in limits()) {
        run_profile(&bytes, limits)?;
    }

    /// Any JSON value as any body: wrong types everywhere.
    #[test]
    fn any_json_bodies(v in any_json(), limits in limits(), received in received_at()) {
        let bytes = serde_json::to_vec(&v).unwrap_or_default();
        run_batch(&bytes, limits, None, received)?;
        run_domain(&bytes, limits, None, received)?;
        run_profile(&bytes, limits)?;
        // A change need not come from a well-formed body to reach parse_change.
        let _ = parse_change(&v, received, limits);
    }

    /// Nesting at and around the depth limits, including serde_json's own (128).
    #[test]
    fn deep_nesting(depth in prop_oneof![0..10usize, 60..70usize, 120..140usize, 1_000..5_000usize],
                    open in prop::sample::select(vec!["[", "{\"a\":"]), limits in limits()) {
        let close = if open == "[" { "]" } else { "}" };
        let body = format!("{}0{}", open.repeat(depth), close.repeat(depth));
        match parse_json(body.as_bytes(), limits) {
            Ok(_) => prop_assert!(depth <= limits.max_json_depth),
            Err(e) => {
                prop_assert!(depth > limits.max_json_depth);
                prop_assert_eq!(e.code(), codes::JSON_TOO_DEEP);
            }
        }
    }

    /// Zone strings directly.
    #[test]
    fn zones(s in odd_string()) {
        if let Some(z) = Zone::parse(&s) {
            prop_assert!(s.len() <= vitalflow_schemas::zone::MAX_ZONE_BYTES);
            // A zone's name parses back to the same zone.
            prop_assert_eq!(Zone::parse(&z.name()), Some(z));
            let _ = z.local(ANCHOR_MS);
        }
    }

    /// Timestamps directly.
    #[test]
    fn timestamps(s in prop_oneof![timestamp(), odd_string()], received in received_at()) {
        if let Some(ms) = parse_instant(&s) {
            let _ = vitalflow_schemas::time::check_plausible(ms, received);
            let _ = vitalflow_schemas::time::format_instant(ms);
            let _ = Zone::UTC.local(ms);
        }
    }

    /// Units and values directly: whatever is accepted after the range check is finite.
    #[test]
    fn units_and_values(metric in prop::sample::select(METRICS), unit in prop_oneof![4 => prop::sample::select(UNITS).prop_map(str::to_owned), 1 => odd_string()],
                        value in prop_oneof![any::<f64>(), prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, f64::MIN, -0.0, 1.0])],
                        platform in prop::sample::select(vec![Platform::HealthKit, Platform::HealthConnect, Platform::Unknown])) {
        let Some(m) = Metric::parse(metric) else { return Err(TestCaseError::fail("catalogue")) };
        match metric::normalize(m, &unit, value, platform).and_then(|v| metric::check_range(m, v).map(|()| v)) {
            Ok(v) => prop_assert!(v.abs() <= metric::MAX_ABS_VALUE, "{}", v),
            Err(rej) => prop_assert!([codes::UNIT_UNSUPPORTED, codes::OUT_OF_RANGE].contains(&rej.code.as_str())),
        }
    }
}

/// The generators are worth their cases only if they reach every outcome: each request code, each
/// sample code, each change code, and acceptance. A fixed seed keeps this test deterministic.
#[test]
fn generators_reach_every_code() {
    const N: usize = 3_000;
    let mut runner =
        TestRunner::new_with_rng(ProptestConfig::default(), TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    SEEN.with(|s| s.borrow_mut().clear());
    let batches = (damaged(batch_body()), limits(), profile(), received_at());
    let domains = (damaged(domain_body()), limits(), profile(), received_at());
    let profiles = (damaged(profile_body()), limits());
    for _ in 0..N {
        let (bytes, limits, profile, received) = batches.new_tree(&mut runner).expect("batch").current();
        run_batch(&bytes, limits, profile.as_ref(), received).expect("batch case");
        let (bytes, limits, profile, received) = domains.new_tree(&mut runner).expect("domain").current();
        run_domain(&bytes, limits, profile.as_ref(), received).expect("domain case");
        let (bytes, limits) = profiles.new_tree(&mut runner).expect("profile").current();
        run_profile(&bytes, limits).expect("profile case");
    }
    let seen = SEEN.with(|s| s.borrow().clone());
    let want = REQUEST_CODES
        .iter()
        .chain(SAMPLE_CODES)
        .map(|c| (*c).to_owned())
        .chain(CHANGE_CODES.iter().map(|c| format!("change {c}")))
        .chain(
            ["accepted sample", "accepted session", "accepted product", "accepted user", "accepted profile"]
                .map(str::to_owned),
        );
    let missing: Vec<String> = want.filter(|w| !seen.contains(w)).collect();
    assert!(missing.is_empty(), "never reached in {N} cases: {missing:?}");
}

/// A well-formed sample body anchored at `ANCHOR_MS`, for the explicit tests.
fn good_sample() -> Value {
    json!({"sourceId": "w", "sourceRecordId": "a", "metric": "steps", "startAt": "2025-12-31T03:50:00Z",
           "endAt": "2025-12-31T04:30:00Z", "value": 1200, "unit": "count"})
}

fn static_profile() -> &'static UserProfile {
    static P: OnceLock<UserProfile> = OnceLock::new();
    P.get_or_init(|| UserProfile {
        user_id: "u1".into(),
        time_zone: Some("Asia/Tokyo".into()),
        allow_health_data_upload: true,
        blocked_metrics: vec![],
    })
}

/// Explicit regressions and the request-level codes of every limit (issue 10).
mod regressions {
    use super::*;

    fn batch(v: Value) -> Result<(), String> {
        let bytes = serde_json::to_vec(&v).map_err(|e| e.to_string())?;
        parse_batch(Bytes::from(bytes), &Limits::DEFAULT).map(|_| ()).map_err(|e| {
            assert!(matches!(e, IngestError::Invalid { status: StatusCode::BAD_REQUEST, .. }), "{e:?}");
            e.code().to_owned()
        })
    }

    fn body(samples: Vec<Value>) -> Value {
        json!({"requestId": "r-1", "userId": "u1", "samples": samples})
    }

    fn sample_code(s: Value) -> String {
        let bytes = serde_json::to_vec(&body(vec![s])).unwrap_or_default();
        let (req, _) = parse_batch(Bytes::from(bytes), &Limits::DEFAULT).unwrap_or_else(|e| panic!("{e}"));
        let ctx = RequestContext {
            user_id: "u1",
            platform: None,
            device_zone: None,
            profile: Some(static_profile()),
            received_at_ms: ANCHOR_MS,
            limits: &Limits::DEFAULT,
        };
        validate_sample(&req.samples[0], &ctx).err().map(|r| r.code).unwrap_or_default()
    }

    fn with(k: &str, v: Value) -> Value {
        let mut s = good_sample();
        s[k] = v;
        s
    }

    #[test]
    fn zone_with_a_multibyte_char_is_a_rejection() {
        // `Zone::parse("+1é1")` used to panic in `split_at(2)` inside 'é'.
        assert_eq!(sample_code(with("zoneId", json!("+1é1"))), codes::INVALID_ZONE);
        assert_eq!(sample_code(with("zoneId", json!("+99:99"))), codes::INVALID_ZONE);
        assert_eq!(sample_code(with("zoneId", json!("x".repeat(10_000)))), codes::INVALID_ZONE);
        assert_eq!(sample_code(with("metadata", json!({"startZoneOffset": "+1é1"}))), "");
        assert_eq!(sample_code(with("metadata", json!({"zoneOffset": i64::MIN}))), "");
        let mut b = body(vec![good_sample()]);
        b["deviceTimeZone"] = json!("+1é1");
        assert_eq!(batch(b.clone()), Err(codes::INVALID_ZONE.into()));
        b["deviceTimeZone"] = json!(format!("Europe/{}", "B".repeat(100)));
        assert_eq!(batch(b), Err(codes::INVALID_ZONE.into()));
    }

    #[test]
    fn g6_through_the_request_path() {
        assert_eq!(sample_code(good_sample()), "");
        let mut s = good_sample();
        s["startAt"] = json!("2026-01-02T00:00:00Z");
        s["endAt"] = json!("2026-01-02T00:00:00.001Z");
        assert_eq!(sample_code(s), codes::FUTURE_TIMESTAMP);
        let mut s = good_sample();
        s["startAt"] = json!("1970-01-01T00:00:00Z");
        s["endAt"] = json!("1970-01-01T00:00:00Z");
        assert_eq!(sample_code(s), codes::INVALID_TIMESTAMP);
        let mut s = good_sample();
        s["startAt"] = json!("9999-12-31T23:59:59Z");
        s["endAt"] = json!("9999-12-31T23:59:59Z");
        assert_eq!(sample_code(s), codes::FUTURE_TIMESTAMP);
        let mut s = good_sample();
        s["startAt"] = json!("0000-01-01T00:00:00Z");
        s["endAt"] = json!("0000-01-01T00:00:00Z");
        assert_eq!(sample_code(s), codes::INVALID_TIMESTAMP);
    }

    #[test]
    fn too_many_samples_deletions_changes() {
        let n = Limits::DEFAULT.max_samples_per_batch;
        assert_eq!(batch(body(vec![good_sample(); n])), Ok(()));
        assert_eq!(batch(body(vec![json!({}); n + 1])), Err(codes::TOO_MANY_SAMPLES.into()));
        let d = json!({"sourceId": "w", "sourceRecordId": "a"});
        let mut b = body(vec![]);
        b["deletions"] = json!(vec![d.clone(); Limits::DEFAULT.max_deletions_per_batch]);
        assert_eq!(batch(b.clone()), Ok(()));
        b["deletions"] = json!(vec![d; Limits::DEFAULT.max_deletions_per_batch + 1]);
        assert_eq!(batch(b), Err(codes::TOO_MANY_DELETIONS.into()));

        let change = json!({"entity": "product", "op": "delete", "key": {"productId": "p1"}});
        let domain = |n: usize| {
            let v = json!({"requestId": "r-1", "changes": vec![change.clone(); n]});
            parse_domain(v, &Limits::DEFAULT).map(|_| ()).map_err(|e| e.code())
        };
        assert_eq!(domain(Limits::DEFAULT.max_changes_per_request), Ok(()));
        assert_eq!(domain(Limits::DEFAULT.max_changes_per_request + 1), Err(codes::TOO_MANY_CHANGES));
    }

    #[test]
    fn request_level_fields() {
        let mut b = body(vec![good_sample()]);
        b["platform"] = json!("p".repeat(256));
        assert_eq!(batch(b.clone()), Ok(()));
        b["platform"] = json!("p".repeat(257));
        assert_eq!(batch(b), Err(codes::FIELD_TOO_LONG.into()));
        for bad in ["r\0", "r\n", "", "\u{85}"] {
            let mut b = body(vec![]);
            b["requestId"] = json!(bad);
            assert_eq!(batch(b), Err(codes::INVALID_ID.into()), "{bad:?}");
            let mut b = body(vec![]);
            b["userId"] = json!(bad);
            assert_eq!(batch(b), Err(codes::INVALID_ID.into()), "{bad:?}");
            let d = json!({"requestId": bad, "changes": []});
            assert_eq!(parse_domain(d, &Limits::DEFAULT).map(|_| ()).map_err(|e| e.code()), Err(codes::INVALID_ID));
        }
    }

    #[test]
    fn per_sample_limits() {
        for k in ["metric", "unit", "category", "sourceClass"] {
            assert_eq!(sample_code(with(k, json!("x".repeat(257)))), codes::FIELD_TOO_LONG, "{k}");
        }
        assert_eq!(sample_code(with("metadata", json!({"k": "x".repeat(16 * 1024)}))), codes::METADATA_TOO_LARGE);
        assert_eq!(sample_code(with("metadata", json!({"HKMetadataKeySyncVersion": 1e300}))), codes::INVALID_VALUE);
        assert_eq!(sample_code(with("metadata", json!({"HKMetadataKeySyncVersion": u64::MAX}))), codes::INVALID_VALUE);
        assert_eq!(sample_code(with("sourceRecordId", json!("a\u{0}b"))), codes::INVALID_ID);
        let mut s = with("value", json!(1.7e308));
        s["metric"] = json!("distance");
        s["unit"] = json!("mi");
        assert_eq!(sample_code(s), codes::OUT_OF_RANGE);
    }

    /// Found by `batch_bodies`: a respiratory rate of 1e308 count/min (no range of its own) was
    /// accepted, and its C1 share over 2 ms (`v × 2 / 2`) was infinite. Values are now bounded by
    /// `MAX_ABS_VALUE` (1e9 in the canonical unit), session quantities likewise.
    #[test]
    fn huge_finite_values_are_out_of_range() {
        let mut s = with("value", json!(1e308));
        s["metric"] = json!("respiratory_rate");
        s["unit"] = json!("count/min");
        s["startAt"] = json!("2024-11-27T00:00:00+00:00");
        s["endAt"] = json!("2024-11-26T20:00:00.002-04:00");
        assert_eq!(sample_code(s.clone()), codes::OUT_OF_RANGE);
        s["value"] = json!(14);
        assert_eq!(sample_code(s), "");
        let session = json!({"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": "s1",
            "productId": "p1", "startAt": "2025-12-31T08:00:00Z", "quantity": 1e308}});
        let code = parse_change(&session, ANCHOR_MS, &Limits::DEFAULT).err().map(|r| r.code);
        assert_eq!(code.as_deref(), Some(codes::OUT_OF_RANGE));
    }

    /// A batch that parses as typed is held to `max_json_depth` by its metadata's measured depth,
    /// not by a scan: the answer must still be the scan's, at every limit, for `[]` against `null`
    /// lists, and for a deep value that a later duplicate key replaced.
    #[test]
    fn typed_batches_are_as_deep_as_their_text() {
        /// The nesting of JSON text, strings skipped (this test's own reference).
        fn depth(text: &str) -> usize {
            let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0, false, false);
            for c in text.chars() {
                match (in_string, escaped, c) {
                    (true, true, _) => escaped = false,
                    (true, false, '\\') => escaped = true,
                    (true, false, '"') => in_string = false,
                    (true, ..) => {}
                    (false, _, '"') => in_string = true,
                    (false, _, '[' | '{') => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    (false, _, ']' | '}') => depth -= 1,
                    _ => {}
                }
            }
            deepest
        }
        let nested = |d: usize| format!("{}1{}", "{\"k\":[".repeat(d / 2), "]}".repeat(d / 2));
        let metadata = [
            None,
            Some("7".to_owned()),
            Some("{}".to_owned()),
            Some(r#"{"HKMetadataKeySyncVersion": 3}"#.to_owned()),
            Some(format!(r#"{{"a": {}}}"#, nested(4))),
            Some(format!(r#"{{"a": {}, "b": "[[[[[["}}"#, nested(6))),
            // The deep value is replaced by the duplicate key: the text is still 7 levels deep.
            Some(format!(r#"{{"a": {}, "a": 1}}"#, nested(6))),
            Some(format!("[{}]", nested(8))),
        ];
        let sample = |m: &Option<String>| {
            let mut s = good_sample().to_string();
            if let Some(m) = m {
                s.truncate(s.len() - 1);
                s.push_str(&format!(r#","metadata":{m}}}"#));
            }
            s
        };
        let mut bodies = vec![
            r#"{"requestId":"r-1","userId":"u1"}"#.to_owned(),
            r#"{"requestId":"r-1","userId":"u1","samples":null,"deletions":null}"#.to_owned(),
            r#"{"requestId":"r-1","userId":"u1","samples":[]}"#.to_owned(),
            r#"{"requestId":"r-1","userId":"u1","deletions":[{"sourceId":"w","sourceRecordId":"a"}]}"#.to_owned(),
        ];
        for m in &metadata {
            bodies.push(format!(r#"{{"requestId":"r-1","userId":"u1","samples":[{}]}}"#, sample(m)));
            bodies.push(format!(r#"{{"requestId":"r-1","userId":"u1","samples":[{},{}]}}"#, sample(&None), sample(m)));
        }
        let mut too_deep = 0;
        for limit in 1..=12 {
            let limits = Limits { max_json_depth: limit, ..Limits::DEFAULT };
            for body in &bodies {
                let result =
                    parse_batch(Bytes::from(body.clone()), &limits).map(|_| ()).map_err(|e| e.code().to_owned());
                let want = if depth(body) > limit { Err(codes::JSON_TOO_DEEP.to_owned()) } else { Ok(()) };
                assert_eq!(result, want, "limit {limit}: {body}");
                too_deep += usize::from(want.is_err());
            }
        }
        // The grid has both answers at every depth the bodies reach.
        assert!(too_deep > 0 && too_deep < 12 * bodies.len());
    }

    /// Found by a break attempt: serde_json's raw-value token as the first key of a sample's
    /// `metadata` reads as `serde_json::Value` reads it, on the typed path as on the general one
    /// (which a duplicate top-level key forces), with the answers it always had.
    #[test]
    fn metadata_with_the_raw_value_token_reads_as_before() {
        let token = "$serde_json::private::RawValue";
        let body = |m: &str, extra: &str| {
            let mut s = good_sample().to_string();
            s.truncate(s.len() - 1);
            format!(r#"{{"requestId":"r-1","userId":"u1"{extra},"samples":[{s},"metadata":{m}}}]}}"#)
        };
        let parsed = |b: String| parse_batch(Bytes::from(b), &Limits::DEFAULT).map_err(|e| e.code().to_owned());
        for (m, code) in [
            (format!(r#"{{"{token}": "not json"}}"#), "MALFORMED_JSON"),
            (format!(r#"{{"{token}": 7}}"#), "MALFORMED_JSON"),
            (format!(r#"{{"{token}": "[1]", "b": 2}}"#), "MALFORMED_JSON"),
            (format!(r#"{{"{token}": "{}{}"}}"#, "[".repeat(130), "]".repeat(130)), codes::JSON_TOO_DEEP),
        ] {
            assert_eq!(parsed(body(&m, "")).err().as_deref(), Some(code), "{m}");
        }
        let m = format!(r#"{{"{token}": "{{\"HKMetadataKeySyncVersion\": 5}}"}}"#);
        let typed = parsed(body(&m, "")).map(|(r, _)| r.samples[0].metadata.clone().map(|m| m.value));
        let general = parsed(body(&m, r#","platform":"x","platform":"healthkit""#))
            .map(|(r, _)| r.samples[0].metadata.clone().map(|m| m.value));
        assert_eq!(typed, Ok(Some(json!({"HKMetadataKeySyncVersion": 5}))));
        assert_eq!(general, typed);
    }

    #[test]
    fn deep_bodies_are_a_clean_400() {
        for depth in [65, 100, 128, 129, 1_000, 1_000_000] {
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let e = parse_json(body.as_bytes(), &Limits::DEFAULT).expect_err("too deep");
            assert_eq!(e.code(), codes::JSON_TOO_DEEP, "{depth}");
            assert!(matches!(e, IngestError::Invalid { status: StatusCode::BAD_REQUEST, .. }));
        }
        // An unclosed deep body is also too deep, not a crash.
        assert_eq!(
            parse_json("{\"a\":".repeat(100_000).as_bytes(), &Limits::DEFAULT).map_err(|e| e.code()).err(),
            Some(codes::JSON_TOO_DEEP)
        );
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_json(ok.as_bytes(), &Limits::DEFAULT).is_ok());
        // Above serde_json's own limit, its error keeps the same code.
        let high = Limits { max_json_depth: 1_000, ..Limits::DEFAULT };
        let body = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(parse_json(body.as_bytes(), &high).map_err(|e| e.code()).err(), Some(codes::JSON_TOO_DEEP));
        // Brackets inside strings do not count.
        let quoted = format!("{{\"a\":\"{}\"}}", "[".repeat(1_000));
        assert!(parse_json(quoted.as_bytes(), &Limits::DEFAULT).is_ok());
    }

    /// Found by `any_json_bodies`: serde reads a struct from an array of its fields, so
    /// `["r-1", [null, null, null, null]]` was a domain request with 4 changes that the count limit,
    /// which reads `changes` by key, did not see.
    #[test]
    fn bodies_must_be_objects() {
        let tight = Limits { max_changes_per_request: 3, max_samples_per_batch: 1, ..Limits::DEFAULT };
        let domain = json!(["r-1", [null, null, null, null]]);
        assert_eq!(parse_domain(domain, &tight).map(|_| ()).map_err(|e| e.code()), Err("INVALID_REQUEST"));
        let batch = json!(["r-1", "u1", null, null, [good_sample(), good_sample()], []]);
        let batch = Bytes::from(serde_json::to_vec(&batch).unwrap_or_default());
        assert_eq!(parse_batch(batch, &tight).map(|_| ()).map_err(|e| e.code()), Err("INVALID_REQUEST"));
        let profile = json!(["Asia/Tokyo", true, []]);
        assert_eq!(parse_profile(profile, &tight).map(|_| ()).map_err(|e| e.code()), Err("INVALID_REQUEST"));
        for v in [json!(null), json!(1), json!("x"), json!([])] {
            let v = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
            assert_eq!(parse_batch(v, &tight).map(|_| ()).map_err(|e| e.code()), Err("INVALID_REQUEST"));
        }
        // Whitespace before an array changes nothing.
        let spaced = Bytes::from(format!(" \n[\"r-1\", \"u1\", null, null, [{}], []]", good_sample()));
        assert_eq!(parse_batch(spaced, &Limits::DEFAULT).map(|_| ()).map_err(|e| e.code()), Err("INVALID_REQUEST"));
    }

    #[test]
    fn profile_bodies() {
        let profile = |v: Value| parse_profile(v, &Limits::DEFAULT).map(|_| ()).map_err(|e| e.code());
        assert_eq!(profile(json!({"timeZone": "Asia/Tokyo", "blockedMetrics": ["steps"]})), Ok(()));
        assert_eq!(profile(json!({"timeZone": "+05:00"})), Err(codes::INVALID_ZONE));
        assert_eq!(profile(json!({"timeZone": "+1é1"})), Err(codes::INVALID_ZONE));
        assert_eq!(profile(json!({"blockedMetrics": ["x".repeat(257)]})), Err(codes::FIELD_TOO_LONG));
        assert_eq!(profile(json!({"blockedMetrics": [1]})), Err("INVALID_REQUEST"));
        assert_eq!(profile(json!({"allowHealthDataUpload": "false"})), Err("INVALID_REQUEST"));
    }
}
