//! Turning a wire sample into a stored one: privacy gating (I4), identifiers, the catalogue and
//! units (§1.3–1.4), intervals (G3), source class (§1.5) and zone resolution (Z1).

use serde_json::Value;

use crate::error::{Rejection, codes};
use crate::metric::{self, Metric, Platform, ValueKind};
use crate::ordf64::OrdF64;
use crate::record::{Sample, StoredSample, UserProfile};
use crate::sleep::SleepStage;
use crate::source::SourceClass;
use crate::time::parse_instant;
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
                format!("metric '{}' is blocked by the user", ws.metric),
            ));
        }
    }
    for (name, id) in [("sourceId", &ws.source_id), ("sourceRecordId", &ws.source_record_id)] {
        if !valid_id(id) {
            return Err(Rejection::new(codes::INVALID_ID, format!("{name} must be 1 to 128 bytes")));
        }
    }
    let metric = Metric::parse(&ws.metric)
        .ok_or_else(|| Rejection::new(codes::UNKNOWN_METRIC, format!("unknown metric '{}'", ws.metric)))?;
    let start_ms = parse_instant(&ws.start_at).ok_or_else(|| {
        Rejection::new(codes::INVALID_TIMESTAMP, format!("startAt '{}' is not an RFC 3339 instant", ws.start_at))
    })?;
    let end_ms = parse_instant(&ws.end_at).ok_or_else(|| {
        Rejection::new(codes::INVALID_TIMESTAMP, format!("endAt '{}' is not an RFC 3339 instant", ws.end_at))
    })?;
    if end_ms < start_ms {
        return Err(Rejection::new(codes::INVALID_INTERVAL, "endAt is before startAt"));
    }
    if end_ms - start_ms > MAX_SAMPLE_MS {
        return Err(Rejection::new(codes::INVALID_INTERVAL, "a sample may not be longer than 24 h"));
    }
    let platform = Platform::parse(ctx.platform);
    let metadata = ws.metadata.clone().unwrap_or(Value::Null);
    let meta = if metadata.is_object() { metadata.clone() } else { Value::Object(Default::default()) };
    let source_class = match ws.source_class.as_deref() {
        Some(s) => SourceClass::parse(s).ok_or_else(|| {
            Rejection::new(
                codes::INVALID_SOURCE_CLASS,
                format!(
                    "sourceClass '{s}' is not one of manual, watch, ring, band, chest_strap, phone, other, unknown"
                ),
            )
        })?,
        None => SourceClass::derive(platform, &meta),
    };
    let zone = resolve_zone(ws, &meta, start_ms == end_ms, ctx)?;

    let (value, category) = match metric {
        Metric::SleepAnalysis => {
            let c = ws.category.as_deref().unwrap_or("");
            let stage = SleepStage::parse(c).ok_or_else(|| {
                Rejection::new(codes::UNKNOWN_CATEGORY, format!("sleep category '{c}' is not recognised"))
            })?;
            (None, Some(stage))
        }
        m => match (ws.value, ws.unit.as_deref()) {
            (Some(v), Some(unit)) => {
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
    let sync_version =
        meta.get("HKMetadataKeySyncVersion").and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()));
    let metadata = if metadata.is_null() { "{}".to_owned() } else { metadata.to_string() };
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
        metadata,
        sync_version,
    })
}

/// Z1: the sample's own zone, then its metadata, then the device zone, then the profile, then UTC.
fn resolve_zone(ws: &WireSample, meta: &Value, instant: bool, ctx: &RequestContext<'_>) -> Result<Zone, Rejection> {
    if let Some(z) = ws.zone_id.as_deref() {
        return Zone::parse(z).ok_or_else(|| {
            Rejection::new(codes::INVALID_ZONE, format!("zoneId '{z}' is not an IANA zone or a ±HH:MM offset"))
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
                if let Some(secs) = n.as_i64().filter(|s| s.abs() <= 18 * 3600) {
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
    fn ctx<'a>(profile: Option<&'a UserProfile>, device: Option<Zone>) -> RequestContext<'a> {
        RequestContext { user_id: "u1", platform: Some("healthkit"), device_zone: device, profile }
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
}
