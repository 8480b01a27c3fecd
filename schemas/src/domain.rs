//! Domain records from the app backend (DOMAIN.md §0.1, §4): consumption sessions, products and
//! user profiles, as they arrive on `POST /v1/domain/changes` and as the views see them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Rejection, codes, quote};
use crate::limits::{Limits, field_fits};
use crate::metric::MAX_ABS_VALUE;
use crate::ordf64::OrdF64;
use crate::record::UserProfile;
use crate::time::{Implausible, check_plausible, parse_instant};
use crate::wire::{RejectedItem, valid_id};
use crate::zone::Zone;

/// A consumption session; `end_ms` is `None` while it is open.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Session {
    pub user_id: String,
    pub session_id: String,
    pub product_id: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub quantity: OrdF64,
    /// Resolved at ingest (Z5): the session's zone, else the profile's, else UTC.
    pub zone: Zone,
}

/// A product of the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Product {
    pub product_id: String,
    pub name: String,
    pub category: Option<String>,
}

/// `POST /v1/domain/changes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainChangesRequest {
    pub request_id: String,
    /// Each change is checked on its own, so that one bad change is a rejection, not a 400.
    pub changes: Vec<Value>,
}

/// The 200 answer to a domain-changes request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DomainChangesResponse {
    pub request_id: String,
    pub epoch: u64,
    pub accepted: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub rejected: Vec<RejectedItem>,
    pub replayed: bool,
}

/// One validated domain change.
#[derive(Clone, Debug, PartialEq)]
pub enum DomainChange {
    UpsertSession(WireSession),
    DeleteSession { user_id: String, session_id: String },
    UpsertProduct(Product),
    DeleteProduct { product_id: String },
    UpsertUser(UserProfile),
}

/// A session before its zone is resolved (the profile is read inside the commit).
#[derive(Clone, Debug, PartialEq)]
pub struct WireSession {
    pub user_id: String,
    pub session_id: String,
    pub product_id: String,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub quantity: f64,
    pub zone: Option<Zone>,
}

impl WireSession {
    /// Z5: the session's own zone, else the profile's zone at ingest, else UTC.
    pub fn resolve(self, profile: Option<&UserProfile>) -> Session {
        let profile_zone = profile.and_then(|p| p.time_zone.as_deref()).and_then(Zone::parse);
        Session {
            user_id: self.user_id,
            session_id: self.session_id,
            product_id: self.product_id,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            quantity: OrdF64(self.quantity),
            zone: self.zone.or(profile_zone).unwrap_or(Zone::UTC),
        }
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.get(name).filter(|x| !x.is_null())
}

fn id(v: &Value, name: &str) -> Result<String, Rejection> {
    match field(v, name).and_then(Value::as_str) {
        Some(s) if valid_id(s) => Ok(s.to_owned()),
        _ => Err(Rejection::new(
            codes::INVALID_ID,
            format!("{name} must be a string of 1 to 128 bytes without control characters"),
        )),
    }
}

fn instant(v: &Value, name: &str) -> Result<Option<i64>, Rejection> {
    match field(v, name) {
        None => Ok(None),
        Some(Value::String(s)) => parse_instant(s).map(Some).ok_or_else(|| {
            Rejection::new(codes::INVALID_TIMESTAMP, format!("{name} '{}' is not an RFC 3339 instant", quote(s)))
        }),
        Some(_) => Err(Rejection::new(codes::INVALID_TIMESTAMP, format!("{name} must be an RFC 3339 string"))),
    }
}

/// An optional free-text field: absent or null is `None`, a string must fit `max_field_bytes`
/// (`FIELD_TOO_LONG`), anything else is `INVALID_CHANGE`.
fn text(v: &Value, name: &str, limits: &Limits) -> Result<Option<String>, Rejection> {
    match field(v, name) {
        None => Ok(None),
        Some(Value::String(s)) if field_fits(s, limits) => Ok(Some(s.clone())),
        Some(Value::String(s)) => Err(Rejection::new(
            codes::FIELD_TOO_LONG,
            format!("{name} has {} bytes, more than the limit of {}", s.len(), limits.max_field_bytes),
        )),
        Some(_) => Err(Rejection::new(codes::INVALID_CHANGE, format!("{name} must be a string"))),
    }
}

/// G6 for a session: every instant it has lies between 2000-01-01T00:00:00Z (`INVALID_TIMESTAMP`)
/// and 24 h after the server received it (`FUTURE_TIMESTAMP`). An open session (no `endAt`) is
/// judged by its `startAt`.
fn check_session_instants(start_ms: i64, end_ms: Option<i64>, received_at_ms: i64) -> Result<(), Rejection> {
    for (name, ms) in [("startAt", Some(start_ms)), ("endAt", end_ms)] {
        let Some(ms) = ms else { continue };
        check_plausible(ms, received_at_ms).map_err(|e| match e {
            Implausible::TooEarly => {
                Rejection::new(codes::INVALID_TIMESTAMP, format!("{name} is before 2000-01-01T00:00:00Z"))
            }
            Implausible::TooLate => Rejection::new(
                codes::FUTURE_TIMESTAMP,
                format!("{name} is more than 24 h after the server received the change"),
            ),
        })?;
    }
    Ok(())
}

/// Validates one change of a domain-changes request. `received_at_ms` is when the server received
/// the request, in UTC milliseconds (G6 for sessions; this crate has no clock); `limits` bounds the
/// free-text fields. Every input gives a change or a [`Rejection`], never a panic.
pub fn parse_change(change: &Value, received_at_ms: i64, limits: &Limits) -> Result<DomainChange, Rejection> {
    let entity = field(change, "entity").and_then(Value::as_str).unwrap_or("");
    let op = field(change, "op").and_then(Value::as_str).unwrap_or("");
    let empty = Value::Object(Default::default());
    let data = field(change, "data").unwrap_or(&empty);
    let key = field(change, "key").unwrap_or(data);
    match (entity, op) {
        ("session", "upsert") => {
            let start_ms = instant(data, "startAt")?
                .ok_or_else(|| Rejection::new(codes::INVALID_TIMESTAMP, "startAt is required"))?;
            let end_ms = instant(data, "endAt")?;
            check_session_instants(start_ms, end_ms, received_at_ms)?;
            let quantity = match field(data, "quantity") {
                None => 1.0,
                Some(q) => q
                    .as_f64()
                    .filter(|q| (0.0..=MAX_ABS_VALUE).contains(q))
                    .ok_or_else(|| Rejection::new(codes::OUT_OF_RANGE, "quantity must be a number from 0 to 1e9"))?,
            };
            let zone = match field(data, "zoneId") {
                None => None,
                Some(Value::String(z)) => Some(Zone::parse(z).ok_or_else(|| {
                    Rejection::new(
                        codes::INVALID_ZONE,
                        format!("zoneId '{}' is not an IANA zone or a ±HH:MM offset", quote(z)),
                    )
                })?),
                Some(_) => return Err(Rejection::new(codes::INVALID_ZONE, "zoneId must be a string")),
            };
            Ok(DomainChange::UpsertSession(WireSession {
                user_id: id(data, "userId")?,
                session_id: id(data, "sessionId")?,
                product_id: id(data, "productId")?,
                start_ms,
                end_ms,
                quantity,
                zone,
            }))
        }
        ("session", "delete") => {
            Ok(DomainChange::DeleteSession { user_id: id(key, "userId")?, session_id: id(key, "sessionId")? })
        }
        ("product", "upsert") => Ok(DomainChange::UpsertProduct(Product {
            product_id: id(data, "productId")?,
            name: text(data, "name", limits)?.unwrap_or_default(),
            category: text(data, "category", limits)?,
        })),
        ("product", "delete") => Ok(DomainChange::DeleteProduct { product_id: id(key, "productId")? }),
        ("user", "upsert") => {
            let time_zone = match field(data, "timeZone") {
                None => None,
                Some(Value::String(z)) if matches!(Zone::parse(z), Some(Zone::Iana(_))) => Some(z.clone()),
                Some(Value::String(z)) => {
                    return Err(Rejection::new(
                        codes::INVALID_ZONE,
                        format!("timeZone '{}' is not an IANA zone", quote(z)),
                    ));
                }
                Some(_) => return Err(Rejection::new(codes::INVALID_ZONE, "timeZone must be a string")),
            };
            let blocked_metrics = match field(data, "blockedMetrics") {
                None => Vec::new(),
                Some(Value::Array(a)) => blocked_metrics(a, limits)?,
                Some(_) => {
                    return Err(Rejection::new(codes::INVALID_CHANGE, "blockedMetrics must be an array of strings"));
                }
            };
            let allow_health_data_upload = match field(data, "allowHealthDataUpload") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(Rejection::new(codes::INVALID_CHANGE, "allowHealthDataUpload must be a boolean"));
                }
            };
            Ok(DomainChange::UpsertUser(UserProfile {
                user_id: id(data, "userId")?,
                time_zone,
                allow_health_data_upload,
                blocked_metrics,
            }))
        }
        _ => Err(Rejection::new(
            codes::INVALID_CHANGE,
            format!(
                "unsupported change: entity '{}' with op '{}' (session, product: upsert|delete; user: upsert)",
                quote(entity),
                quote(op)
            ),
        )),
    }
}

/// Drops repeated entries, keeping each first occurrence in place.
pub fn dedup_in_order(items: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    items.retain(|m| seen.insert(m.clone()));
}

/// `blockedMetrics` entries: strings of at most `max_field_bytes` (a metric key need not be known:
/// blocking a metric before the catalogue has it is allowed), deduplicated (first occurrence kept), at most
/// `max_blocked_metrics` of them (`TOO_MANY_BLOCKED_METRICS`).
pub fn blocked_metrics(entries: &[Value], limits: &Limits) -> Result<Vec<String>, Rejection> {
    let mut metrics: Vec<String> = entries
        .iter()
        .map(|m| match m {
            Value::String(s) if field_fits(s, limits) => Ok(s.clone()),
            Value::String(s) => Err(Rejection::new(
                codes::FIELD_TOO_LONG,
                format!(
                    "a blockedMetrics entry has {} bytes, more than the limit of {}",
                    s.len(),
                    limits.max_field_bytes
                ),
            )),
            _ => Err(Rejection::new(codes::INVALID_CHANGE, "blockedMetrics must be an array of strings")),
        })
        .collect::<Result<_, _>>()?;
    dedup_in_order(&mut metrics);
    if metrics.len() > limits.max_blocked_metrics {
        return Err(Rejection::new(
            codes::TOO_MANY_BLOCKED_METRICS,
            format!(
                "blockedMetrics has {} distinct entries, more than the limit of {}",
                metrics.len(),
                limits.max_blocked_metrics
            ),
        ));
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2024-06-02T12:00:00Z.
    const NOW: i64 = 1_717_329_600_000;

    fn parse(v: &Value) -> Result<DomainChange, Rejection> {
        parse_change(v, NOW, &Limits::DEFAULT)
    }
    fn code(v: Value) -> String {
        parse(&v).err().map(|r| r.code).unwrap_or_default()
    }
    fn session(start: &str, end: Option<&str>) -> Value {
        json!({"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": "s1",
            "productId": "p1", "startAt": start, "endAt": end}})
    }
    fn with(mut change: Value, k: &str, v: Value) -> Value {
        change["data"][k] = v;
        change
    }

    #[test]
    fn parses_the_issue_example() {
        let s = parse(&json!({"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": "s1",
            "productId": "p1", "startAt": "2024-06-01T08:00:00Z", "endAt": null, "quantity": 1.0, "zoneId": "Europe/Berlin"}}))
        .unwrap();
        let DomainChange::UpsertSession(w) = s else { panic!("session") };
        assert_eq!(w.end_ms, None);
        assert_eq!(w.resolve(None).zone.name(), "Europe/Berlin");
        let d =
            parse(&json!({"entity": "session", "op": "delete", "key": {"userId": "u1", "sessionId": "s1"}})).unwrap();
        assert_eq!(d, DomainChange::DeleteSession { user_id: "u1".into(), session_id: "s1".into() });
        assert_eq!(
            code(
                json!({"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": "s1", "productId": "p1"}})
            ),
            codes::INVALID_TIMESTAMP
        );
        assert_eq!(
            code(json!({"entity": "user", "op": "upsert", "data": {"userId": "u1", "timeZone": "Nowhere"}})),
            codes::INVALID_ZONE
        );
        assert_eq!(code(json!({"entity": "planet", "op": "upsert"})), codes::INVALID_CHANGE);
        assert_eq!(code(json!({"entity": "product", "op": "delete", "key": {"productId": ""}})), codes::INVALID_ID);
    }

    #[test]
    fn g6_sessions_follow_the_sample_rule() {
        assert!(parse(&session("2024-06-03T11:00:00Z", Some("2024-06-03T12:00:00Z"))).is_ok());
        assert!(parse(&session("2024-06-03T12:00:00Z", None)).is_ok());
        assert_eq!(code(session("2024-06-03T11:00:00Z", Some("2024-06-03T12:00:00.001Z"))), codes::FUTURE_TIMESTAMP);
        assert_eq!(code(session("2024-06-03T12:00:00.001Z", None)), codes::FUTURE_TIMESTAMP);
        assert_eq!(code(session("9999-01-01T00:00:00Z", None)), codes::FUTURE_TIMESTAMP);
        assert_eq!(code(session("1999-12-31T23:59:59.999Z", None)), codes::INVALID_TIMESTAMP);
        assert_eq!(code(session("1970-01-01T00:00:00Z", Some("2024-06-01T00:00:00Z"))), codes::INVALID_TIMESTAMP);
        assert_eq!(code(session("2024-06-01T00:00:00Z", Some("1970-01-01T00:00:00Z"))), codes::INVALID_TIMESTAMP);
        assert!(
            parse_change(&session("2054-06-01T00:00:00Z", None), NOW + 40 * 365 * 86_400_000, &Limits::DEFAULT).is_ok()
        );
    }

    #[test]
    fn hostile_fields_are_rejections() {
        let ok = session("2024-06-01T08:00:00Z", None);
        assert_eq!(code(with(ok.clone(), "zoneId", json!("+1é1"))), codes::INVALID_ZONE);
        assert_eq!(code(with(ok.clone(), "zoneId", json!("+99:99"))), codes::INVALID_ZONE);
        assert_eq!(code(with(ok.clone(), "zoneId", json!("x".repeat(10_000)))), codes::INVALID_ZONE);
        assert_eq!(code(with(ok.clone(), "zoneId", json!(5))), codes::INVALID_ZONE);
        assert_eq!(code(with(ok.clone(), "quantity", json!(-1))), codes::OUT_OF_RANGE);
        assert_eq!(code(with(ok.clone(), "quantity", json!("1"))), codes::OUT_OF_RANGE);
        assert_eq!(code(with(ok.clone(), "quantity", json!(u64::MAX))), codes::OUT_OF_RANGE);
        assert_eq!(code(with(ok.clone(), "quantity", json!(1e308))), codes::OUT_OF_RANGE);
        assert!(parse(&with(ok.clone(), "quantity", json!(1e9))).is_ok());
        assert_eq!(code(with(ok.clone(), "sessionId", json!("a\u{0}b"))), codes::INVALID_ID);
        assert_eq!(code(with(ok.clone(), "productId", json!("x".repeat(129)))), codes::INVALID_ID);
        assert_eq!(code(with(ok.clone(), "startAt", json!(1_717_200_000_000_i64))), codes::INVALID_TIMESTAMP);
        assert_eq!(code(with(ok, "startAt", json!("2024-06-01T08:00:00.1é"))), codes::INVALID_TIMESTAMP);

        let product = json!({"entity": "product", "op": "upsert", "data": {"productId": "p1", "name": "Espresso"}});
        assert!(parse(&product).is_ok());
        assert_eq!(code(with(product.clone(), "name", json!("x".repeat(257)))), codes::FIELD_TOO_LONG);
        assert_eq!(code(with(product.clone(), "category", json!("é".repeat(129)))), codes::FIELD_TOO_LONG);
        assert!(parse(&with(product.clone(), "category", json!("é".repeat(128)))).is_ok());
        assert_eq!(code(with(product, "name", json!({"x": 1}))), codes::INVALID_CHANGE);

        let user = json!({"entity": "user", "op": "upsert", "data": {"userId": "u1"}});
        assert_eq!(code(with(user.clone(), "timeZone", json!("+05:00"))), codes::INVALID_ZONE);
        assert_eq!(code(with(user.clone(), "timeZone", json!(["UTC"]))), codes::INVALID_ZONE);
        assert_eq!(code(with(user.clone(), "allowHealthDataUpload", json!("false"))), codes::INVALID_CHANGE);
        assert_eq!(code(with(user.clone(), "blockedMetrics", json!(["steps", 1]))), codes::INVALID_CHANGE);
        assert_eq!(code(with(user.clone(), "blockedMetrics", json!(["x".repeat(257)]))), codes::FIELD_TOO_LONG);
        assert_eq!(code(with(user.clone(), "userId", json!("u\u{1b}"))), codes::INVALID_ID);
        let Ok(DomainChange::UpsertUser(p)) = parse(&with(user, "blockedMetrics", json!(["steps"]))) else {
            panic!("user")
        };
        assert!(p.allow_health_data_upload && p.blocked_metrics == ["steps"]);

        let long_entity = json!({"entity": "x".repeat(100_000), "op": "é".repeat(100_000)});
        let rej = parse(&long_entity).unwrap_err();
        assert_eq!(rej.code, codes::INVALID_CHANGE);
        assert!(rej.message.len() < 400);
        for v in [json!(null), json!(1), json!("session"), json!([]), json!({"entity": 1, "op": []})] {
            assert_eq!(code(v), codes::INVALID_CHANGE);
        }
    }
}
