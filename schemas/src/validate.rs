//! Turning a wire sample into a stored one: privacy gating (I4), identifiers, field limits, the
//! catalogue and units (§1.3–1.4), intervals (G3), plausible instants (G6), source class (§1.5) and
//! zone resolution (Z1). Every input gives a value or a [`Rejection`], never a panic (issue 10).

use serde_json::Value;

use crate::error::{Rejection, codes, quote};
use crate::limits::{Limits, field_fits};
use crate::metric::{self, Metric, Platform, ValueKind};
use crate::ordf64::OrdF64;
use crate::record::{Sample, StoredSample, UserProfile};
use crate::sleep::SleepStage;
use crate::source::SourceClass;
use crate::time::{Implausible, check_plausible, parse_instant};
use crate::wire::{WireSample, valid_id};
use crate::zone::Zone;

/// `MAX_SAMPLE` (G3): 24 hours.
pub const MAX_SAMPLE_MS: i64 = 86_400_000;

/// What a request contributes to validating each of its samples.
#[derive(Clone, Debug)]
pub struct RequestContext<'a> {
    pub user_id: &'a str,
    pub platform: Option<&'a str>,
    /// The request's `deviceTimeZone`, already validated.
    pub device_zone: Option<Zone>,
    /// The user's profile at ingest time, if one exists.
    pub profile: Option<&'a UserProfile>,
    /// When the server received the request, in UTC milliseconds (G6). The caller reads the clock:
    /// this crate has none.
    pub received_at_ms: i64,
    /// Per-sample limits (field lengths, metadata size).
    pub limits: &'a Limits,
}

impl RequestContext<'_> {
    fn profile_zone(&self) -> Option<Zone> {
        self.profile.and_then(|p| p.time_zone.as_deref()).and_then(Zone::parse)
    }
}

/// Validates and normalizes one sample; `Err` carries the stable rejection code.
pub fn validate_sample(ws: &WireSample, ctx: &RequestContext<'_>) -> Result<StoredSample, Rejection> {
    if let Some(p) = ctx.profile {
        if !p.allow_health_data_upload {
            return Err(Rejection::new(
                codes::PRIVACY_UPLOAD_DISABLED,
                "the user's profile does not allow health data upload",
            ));
        }
        if p.blocked_metrics.iter().any(|m| m == &ws.metric) {
            return Err(Rejection::new(
                codes::METRIC_BLOCKED,
                format!("metric '{}' is blocked by the user", quote(&ws.metric)),
            ));
        }
    }
    for (name, id) in [("sourceId", &ws.source_id), ("sourceRecordId", &ws.source_record_id)] {
        if !valid_id(id) {
            return Err(Rejection::new(
                codes::INVALID_ID,
                format!("{name} must be 1 to 128 bytes without control characters"),
            ));
        }
    }
    check_fields(ws, ctx.limits)?;
    let metric = Metric::parse(&ws.metric)
        .ok_or_else(|| Rejection::new(codes::UNKNOWN_METRIC, format!("unknown metric '{}'", quote(&ws.metric))))?;
    let (start_ms, end_ms) = interval(ws, ctx.received_at_ms)?;
    let platform = Platform::parse(ctx.platform);
    let metadata = ws.metadata.as_ref().map_or(&Value::Null, |m| &m.value);
    let metadata_text = if metadata.is_null() { "{}".to_owned() } else { metadata.to_string() };
    if metadata_text.len() > ctx.limits.max_metadata_bytes {
        return Err(Rejection::new(
            codes::METADATA_TOO_LARGE,
            format!(
                "metadata has {} bytes as JSON, more than the limit of {}",
                metadata_text.len(),
                ctx.limits.max_metadata_bytes
            ),
        ));
    }
    let empty = Value::Object(Default::default());
    let meta = if metadata.is_object() { metadata } else { &empty };
    let source_class = match ws.source_class.as_deref() {
        Some(s) => SourceClass::parse(s).ok_or_else(|| {
            Rejection::new(
                codes::INVALID_SOURCE_CLASS,
                format!(
                    "sourceClass '{}' is not one of manual, watch, ring, band, chest_strap, phone, other, unknown",
                    quote(s)
                ),
            )
        })?,
        None => SourceClass::derive(platform, meta),
    };
    let zone = resolve_zone(ws, meta, start_ms == end_ms, ctx)?;

    let (value, category) = match metric {
        Metric::SleepAnalysis => {
            let c = ws.category.as_deref().unwrap_or("");
            let stage = SleepStage::parse(c).ok_or_else(|| {
                Rejection::new(codes::UNKNOWN_CATEGORY, format!("sleep category '{}' is not recognised", quote(c)))
            })?;
            (None, Some(stage))
        }
        m => match (ws.value, ws.unit.as_deref()) {
            (Some(v), Some(unit)) => {
                if !v.is_finite() {
                    return Err(Rejection::new(
                        codes::OUT_OF_RANGE,
                        format!("{} value is not a finite number", m.key()),
                    ));
                }
                // A finite value can still overflow to ±inf through a unit factor: check_range
                // rejects that, so no infinity is ever stored.
                let v = metric::normalize(m, unit, v, platform)?;
                metric::check_range(m, v)?;
                (Some(OrdF64(v)), None)
            }
            (Some(_), None) => {
                return Err(Rejection::new(codes::UNIT_UNSUPPORTED, format!("{} needs a unit", m.key())));
            }
            (None, _) if m.kind() == ValueKind::Interval => (None, None),
            (None, _) => {
                return Err(Rejection::new(codes::INVALID_VALUE, format!("{} needs a numeric value", m.key())));
            }
        },
    };
    let sync_version = sync_version(meta)?;
    Ok(StoredSample {
        sample: Sample {
            user_id: ctx.user_id.to_owned(),
            source_id: ws.source_id.clone(),
            source_record_id: ws.source_record_id.clone(),
            metric,
            start_ms,
            end_ms,
            value,
            category,
            source_class,
            zone,
        },
        platform: ctx.platform.map(str::to_owned),
        metadata: metadata_text,
        sync_version,
    })
}

/// The free-text fields of a sample fit `max_field_bytes` (the zone has its own bound in
/// [`Zone::parse`], the timestamps in [`parse_instant`]).
fn check_fields(ws: &WireSample, limits: &Limits) -> Result<(), Rejection> {
    let fields = [
        ("metric", Some(ws.metric.as_str())),
        ("unit", ws.unit.as_deref()),
        ("category", ws.category.as_deref()),
        ("sourceClass", ws.source_class.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(v) = value
            && !field_fits(v, limits)
        {
            return Err(Rejection::new(
                codes::FIELD_TOO_LONG,
                format!("{name} has {} bytes, more than the limit of {}", v.len(), limits.max_field_bytes),
            ));
        }
    }
    Ok(())
}

/// `startAt` and `endAt` as UTC milliseconds: RFC 3339 instants (`INVALID_TIMESTAMP`), in order and
/// at most 24 h apart (G3, `INVALID_INTERVAL`), then plausible (G6: `INVALID_TIMESTAMP` before 2000,
/// `FUTURE_TIMESTAMP` when `endAt` lies more than 24 h after `received_at_ms`).
fn interval(ws: &WireSample, received_at_ms: i64) -> Result<(i64, i64), Rejection> {
    let instant = |name: &str, s: &str| {
        parse_instant(s).ok_or_else(|| {
            Rejection::new(codes::INVALID_TIMESTAMP, format!("{name} '{}' is not an RFC 3339 instant", quote(s)))
        })
    };
    let start_ms = instant("startAt", &ws.start_at)?;
    let end_ms = instant("endAt", &ws.end_at)?;
    if end_ms < start_ms {
        return Err(Rejection::new(codes::INVALID_INTERVAL, "endAt is before startAt"));
    }
    if end_ms.saturating_sub(start_ms) > MAX_SAMPLE_MS {
        return Err(Rejection::new(codes::INVALID_INTERVAL, "a sample may not be longer than 24 h"));
    }
    check_plausible(start_ms, received_at_ms).and(check_plausible(end_ms, received_at_ms)).map_err(|e| match e {
        Implausible::TooEarly => Rejection::new(codes::INVALID_TIMESTAMP, "startAt is before 2000-01-01T00:00:00Z"),
        Implausible::TooLate => {
            Rejection::new(codes::FUTURE_TIMESTAMP, "endAt is more than 24 h after the server received the sample")
        }
    })?;
    Ok((start_ms, end_ms))
}

/// `HKMetadataKeySyncVersion` (I2): absent or null is `None`; an integer (or a string of one) in
/// the `i64` range is the version; anything else (a fraction, a huge number, text) is
/// `INVALID_VALUE`, since guessing would let an edit pass or fail the stale check at random.
fn sync_version(meta: &Value) -> Result<Option<i64>, Rejection> {
    let parsed = match meta.get("HKMetadataKeySyncVersion") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        Some(_) => None,
    };
    parsed.map(Some).ok_or_else(|| {
        Rejection::new(codes::INVALID_VALUE, "metadata HKMetadataKeySyncVersion must be an integer in the i64 range")
    })
}

/// Z1: the sample's own zone, then its metadata, then the device zone, then the profile, then UTC.
fn resolve_zone(ws: &WireSample, meta: &Value, instant: bool, ctx: &RequestContext<'_>) -> Result<Zone, Rejection> {
    if let Some(z) = ws.zone_id.as_deref() {
        return Zone::parse(z).ok_or_else(|| {
            Rejection::new(
                codes::INVALID_ZONE,
                format!("zoneId '{}' is not an IANA zone or a ±HH:MM offset of at most 64 bytes", quote(z)),
            )
        });
    }
    if let Some(z) = meta.get("HKMetadataKeyTimeZone").and_then(Value::as_str).and_then(Zone::parse)
        && matches!(z, Zone::Iana(_))
    {
        return Ok(z);
    }
    let hc_key = if instant { ["zoneOffset", "startZoneOffset"] } else { ["startZoneOffset", "zoneOffset"] };
    for key in hc_key {
        match meta.get(key) {
            Some(Value::String(s)) => {
                if let Some(z @ Zone::Fixed(_)) = Zone::parse(s) {
                    return Ok(z);
                }
            }
            Some(Value::Number(n)) => {
                // In range, so the cast is exact (`abs` is not used: it overflows on i64::MIN). A
                // whole number of minutes only: a zone is stored by its ±HH:MM name, so an offset
                // with seconds would come back another zone after a restart (it falls through, as
                // any other unusable offset does).
                if let Some(secs) = n.as_i64().filter(|s| (-18 * 3600..=18 * 3600).contains(s) && s % 60 == 0) {
                    return Ok(Zone::Fixed(secs as i32));
                }
            }
            _ => {}
        }
    }
    Ok(ctx.device_zone.or_else(|| ctx.profile_zone()).unwrap_or(Zone::UTC))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(v: Value) -> WireSample {
        serde_json::from_value(v).expect("wire sample")
    }
    fn base() -> Value {
        json!({"sourceId": "w", "sourceRecordId": "a", "metric": "steps", "startAt": "2024-06-01T03:50:00Z",
               "endAt": "2024-06-01T04:30:00Z", "value": 1200, "unit": "count"})
    }
    /// 2024-06-02T12:00:00Z: the base sample ends 31.5 h before it.
    const NOW: i64 = 1_717_329_600_000;

    fn ctx<'a>(profile: Option<&'a UserProfile>, device: Option<Zone>) -> RequestContext<'a> {
        RequestContext {
            user_id: "u1",
            platform: Some("healthkit"),
            device_zone: device,
            profile,
            received_at_ms: NOW,
            limits: &Limits::DEFAULT,
        }
    }
    fn with(k: &str, v: Value) -> WireSample {
        let mut b = base();
        b[k] = v;
        wire(b)
    }
    fn code(r: Result<StoredSample, Rejection>) -> String {
        r.err().map(|e| e.code).unwrap_or_default()
    }

    #[test]
    fn z1_zone_resolution_order() {
        let ny = Zone::parse("America/New_York");
        let berlin = Zone::parse("Europe/Berlin");
        let profile = UserProfile {
            user_id: "u1".into(),
            time_zone: Some("Asia/Tokyo".into()),
            allow_health_data_upload: true,
            blocked_metrics: vec![],
        };
        let zone =
            |w: &WireSample, p, d| validate_sample(w, &ctx(p, d)).map(|s| s.sample.zone.name()).unwrap_or_default();
        assert_eq!(zone(&with("zoneId", json!("+05:45")), Some(&profile), ny), "+05:45");
        assert_eq!(
            zone(&with("metadata", json!({"HKMetadataKeyTimeZone": "Europe/Berlin"})), Some(&profile), ny),
            "Europe/Berlin"
        );
        assert_eq!(zone(&with("metadata", json!({"startZoneOffset": "-04:00"})), None, berlin), "-04:00");
        assert_eq!(zone(&base_w(), Some(&profile), ny), "America/New_York");
        assert_eq!(zone(&base_w(), Some(&profile), None), "Asia/Tokyo");
        assert_eq!(zone(&base_w(), None, None), "UTC");
        assert_eq!(
            code(validate_sample(&with("zoneId", json!("Nowhere/City")), &ctx(None, None))),
            codes::INVALID_ZONE
        );
    }

    fn base_w() -> WireSample {
        wire(base())
    }

    #[test]
    fn rejections_carry_stable_codes() {
        let c = ctx(None, None);
        assert_eq!(code(validate_sample(&with("metric", json!("mood")), &c)), codes::UNKNOWN_METRIC);
        assert_eq!(code(validate_sample(&with("unit", json!("steps")), &c)), codes::UNIT_UNSUPPORTED);
        assert_eq!(code(validate_sample(&with("endAt", json!("2024-06-01T03:00:00Z")), &c)), codes::INVALID_INTERVAL);
        assert_eq!(
            code(validate_sample(&with("endAt", json!("2024-06-02T03:50:00.001Z")), &c)),
            codes::INVALID_INTERVAL
        );
        assert!(validate_sample(&with("endAt", json!("2024-06-02T03:50:00Z")), &c).is_ok());
        assert_eq!(code(validate_sample(&with("value", json!(-1)), &c)), codes::OUT_OF_RANGE);
        assert_eq!(code(validate_sample(&with("sourceId", json!("")), &c)), codes::INVALID_ID);
        assert_eq!(code(validate_sample(&with("sourceClass", json!("Watch")), &c)), codes::INVALID_SOURCE_CLASS);
        let mut sleep = base();
        sleep["metric"] = json!("sleep_analysis");
        sleep["category"] = json!("dozing");
        assert_eq!(code(validate_sample(&wire(sleep), &c)), codes::UNKNOWN_CATEGORY);
    }

    #[test]
    fn i4_privacy_gating() {
        let mut p = UserProfile {
            user_id: "u1".into(),
            time_zone: None,
            allow_health_data_upload: false,
            blocked_metrics: vec![],
        };
        assert_eq!(code(validate_sample(&base_w(), &ctx(Some(&p), None))), codes::PRIVACY_UPLOAD_DISABLED);
        p.allow_health_data_upload = true;
        p.blocked_metrics = vec!["steps".into()];
        assert_eq!(code(validate_sample(&base_w(), &ctx(Some(&p), None))), codes::METRIC_BLOCKED);
        p.blocked_metrics = vec!["heart_rate".into()];
        assert!(validate_sample(&base_w(), &ctx(Some(&p), None)).is_ok());
    }

    fn sample_at(start: &str, end: &str) -> WireSample {
        let mut b = base();
        b["startAt"] = json!(start);
        b["endAt"] = json!(end);
        wire(b)
    }

    #[test]
    fn g6_future_end_is_rejected() {
        let c = ctx(None, None);
        // NOW + 24 h is 2024-06-03T12:00:00Z.
        assert!(validate_sample(&sample_at("2024-06-03T11:00:00Z", "2024-06-03T12:00:00Z"), &c).is_ok());
        assert_eq!(
            code(validate_sample(&sample_at("2024-06-03T11:00:00Z", "2024-06-03T12:00:00.001Z"), &c)),
            codes::FUTURE_TIMESTAMP
        );
        assert_eq!(
            code(validate_sample(&sample_at("2054-06-01T00:00:00Z", "2054-06-01T00:00:00Z"), &c)),
            codes::FUTURE_TIMESTAMP
        );
        assert_eq!(
            code(validate_sample(&sample_at("9999-12-31T00:00:00Z", "9999-12-31T23:59:59Z"), &c)),
            codes::FUTURE_TIMESTAMP
        );
        // The receive time decides, not a clock of this crate.
        let later = RequestContext { received_at_ms: NOW + 40 * 365 * 86_400_000, ..ctx(None, None) };
        assert!(validate_sample(&sample_at("2054-06-01T00:00:00Z", "2054-06-01T00:00:00Z"), &later).is_ok());
    }

    #[test]
    fn g6_start_before_2000_is_rejected() {
        let c = ctx(None, None);
        assert!(validate_sample(&sample_at("2000-01-01T00:00:00Z", "2000-01-01T00:10:00Z"), &c).is_ok());
        for start in ["1999-12-31T23:59:59.999Z", "1970-01-01T00:00:00Z", "0000-01-01T00:00:00Z"] {
            assert_eq!(code(validate_sample(&sample_at(start, start), &c)), codes::INVALID_TIMESTAMP, "{start}");
        }
        assert_eq!(
            code(validate_sample(&sample_at("1999-12-31T23:00:00Z", "2000-01-01T01:00:00Z"), &c)),
            codes::INVALID_TIMESTAMP
        );
        // G3 comes first.
        assert_eq!(
            code(validate_sample(&sample_at("2054-06-02T00:00:00Z", "2054-06-01T00:00:00Z"), &c)),
            codes::INVALID_INTERVAL
        );
        assert_eq!(
            code(validate_sample(&sample_at("1970-01-01T00:00:00Z", "1980-01-01T00:00:00Z"), &c)),
            codes::INVALID_INTERVAL
        );
    }

    #[test]
    fn field_limits_reject_the_sample() {
        let c = ctx(None, None);
        let long = "x".repeat(257);
        for k in ["metric", "unit", "category", "sourceClass"] {
            assert_eq!(code(validate_sample(&with(k, json!(long)), &c)), codes::FIELD_TOO_LONG, "{k}");
        }
        assert_eq!(code(validate_sample(&with("unit", json!("x".repeat(256))), &c)), codes::UNIT_UNSUPPORTED);
        let tight = Limits { max_field_bytes: 4, ..Limits::default() };
        let c = RequestContext { limits: &tight, ..ctx(None, None) };
        assert_eq!(code(validate_sample(&base_w(), &c)), codes::FIELD_TOO_LONG);
    }

    #[test]
    fn metadata_size_is_bounded() {
        let c = ctx(None, None);
        // {"k":"…"} is 8 bytes plus the string.
        let fits = json!({"k": "x".repeat(16 * 1024 - 8)});
        assert_eq!(fits.to_string().len(), 16 * 1024);
        assert!(validate_sample(&with("metadata", fits), &c).is_ok());
        let over = json!({"k": "x".repeat(16 * 1024 - 7)});
        assert_eq!(code(validate_sample(&with("metadata", over), &c)), codes::METADATA_TOO_LARGE);
        assert_eq!(code(validate_sample(&with("metadata", json!("y".repeat(20_000))), &c)), codes::METADATA_TOO_LARGE);
    }

    #[test]
    fn ids_with_control_characters_are_rejected() {
        let c = ctx(None, None);
        for bad in ["a\0", "a\nb", "\u{85}", "\u{7f}"] {
            assert_eq!(code(validate_sample(&with("sourceRecordId", json!(bad)), &c)), codes::INVALID_ID, "{bad:?}");
            assert_eq!(code(validate_sample(&with("sourceId", json!(bad)), &c)), codes::INVALID_ID, "{bad:?}");
        }
    }

    #[test]
    fn sync_versions_must_be_integers() {
        let c = ctx(None, None);
        let version = |v: Value| {
            validate_sample(&with("metadata", json!({"HKMetadataKeySyncVersion": v})), &c).map(|s| s.sync_version)
        };
        assert_eq!(version(json!(3)), Ok(Some(3)));
        assert_eq!(version(json!("12")), Ok(Some(12)));
        assert_eq!(version(json!(i64::MAX)), Ok(Some(i64::MAX)));
        assert_eq!(version(json!(i64::MIN)), Ok(Some(i64::MIN)));
        assert_eq!(version(Value::Null), Ok(None));
        for bad in [json!(u64::MAX), json!(1.5), json!(1e300), json!("99999999999999999999"), json!("v2"), json!([1])] {
            assert_eq!(version(bad.clone()).map_err(|e| e.code), Err(codes::INVALID_VALUE.to_owned()), "{bad}");
        }
    }

    #[test]
    fn odd_values_are_rejected_not_stored() {
        let c = ctx(None, None);
        // Finite on the wire, infinite after the unit factor.
        let mut b = base();
        b["metric"] = json!("distance");
        b["unit"] = json!("mi");
        b["value"] = json!(1.7e308);
        assert_eq!(code(validate_sample(&wire(b.clone()), &c)), codes::OUT_OF_RANGE);
        b["value"] = json!(f64::MAX);
        b["unit"] = json!("km");
        assert_eq!(code(validate_sample(&wire(b.clone()), &c)), codes::OUT_OF_RANGE);
        b["unit"] = json!("m");
        assert_eq!(code(validate_sample(&wire(b.clone()), &c)), codes::OUT_OF_RANGE);
        b["value"] = json!(1e9);
        assert!(validate_sample(&wire(b.clone()), &c).is_ok());
        let mut r = base();
        r["metric"] = json!("respiratory_rate");
        r["unit"] = json!("count/min");
        r["value"] = json!(1e308);
        assert_eq!(code(validate_sample(&wire(r), &c)), codes::OUT_OF_RANGE);
        let mut t = base();
        t["metric"] = json!("body_temperature");
        t["unit"] = json!("degF");
        t["value"] = json!(-f64::MAX);
        assert_eq!(code(validate_sample(&wire(t), &c)), codes::OUT_OF_RANGE);
        let nan = WireSample { value: Some(f64::NAN), ..base_w() };
        assert_eq!(code(validate_sample(&nan, &c)), codes::OUT_OF_RANGE);
        let inf = WireSample { value: Some(f64::INFINITY), unit: Some("count".into()), ..base_w() };
        assert_eq!(code(validate_sample(&inf, &c)), codes::OUT_OF_RANGE);
    }

    #[test]
    fn odd_metadata_zone_offsets_fall_through() {
        let c = ctx(None, None);
        let zone = |m: Value| validate_sample(&with("metadata", m), &c).map(|s| s.sample.zone.name());
        assert_eq!(zone(json!({"startZoneOffset": i64::MIN})), Ok("UTC".into()));
        assert_eq!(zone(json!({"startZoneOffset": i64::MAX})), Ok("UTC".into()));
        assert_eq!(zone(json!({"startZoneOffset": u64::MAX})), Ok("UTC".into()));
        assert_eq!(zone(json!({"startZoneOffset": -64800})), Ok("-18:00".into()));
        assert_eq!(zone(json!({"startZoneOffset": 64801})), Ok("UTC".into()));
        assert_eq!(zone(json!({"startZoneOffset": 3630})), Ok("UTC".into()));
        assert_eq!(zone(json!({"startZoneOffset": -1})), Ok("UTC".into()));
        assert_eq!(zone(json!({"startZoneOffset": 20700})), Ok("+05:45".into()));
        assert_eq!(zone(json!({"startZoneOffset": -2700})), Ok("-00:45".into()));
        assert_eq!(zone(json!({"startZoneOffset": "+1é1"})), Ok("UTC".into()));
        assert_eq!(zone(json!({"HKMetadataKeyTimeZone": "x".repeat(10_000)})), Ok("UTC".into()));
        assert_eq!(code(validate_sample(&with("zoneId", json!("+1é1")), &c)), codes::INVALID_ZONE);
        assert_eq!(code(validate_sample(&with("zoneId", json!("+99:99")), &c)), codes::INVALID_ZONE);
        let long = validate_sample(&with("zoneId", json!("x".repeat(10_000))), &c).unwrap_err();
        assert_eq!(long.code, codes::INVALID_ZONE);
        assert!(long.message.len() < 200, "the message quotes a bounded excerpt");
    }
}
