//! Domain records from the app backend (DOMAIN.md §0.1, §4): consumption sessions, products and
//! user profiles, as they arrive on `POST /v1/domain/changes` and as the views see them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Rejection, codes};
use crate::ordf64::OrdF64;
use crate::record::UserProfile;
use crate::time::parse_instant;
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
        _ => Err(Rejection::new(codes::INVALID_ID, format!("{name} must be a string of 1 to 128 bytes"))),
    }
}

fn instant(v: &Value, name: &str) -> Result<Option<i64>, Rejection> {
    match field(v, name) {
        None => Ok(None),
        Some(Value::String(s)) => parse_instant(s).map(Some).ok_or_else(|| {
            Rejection::new(codes::INVALID_TIMESTAMP, format!("{name} '{s}' is not an RFC 3339 instant"))
        }),
        Some(_) => Err(Rejection::new(codes::INVALID_TIMESTAMP, format!("{name} must be an RFC 3339 string"))),
    }
}

const INVALID_CHANGE: &str = "INVALID_CHANGE";

/// Validates one change of a domain-changes request.
pub fn parse_change(change: &Value) -> Result<DomainChange, Rejection> {
    let entity = field(change, "entity").and_then(Value::as_str).unwrap_or("");
    let op = field(change, "op").and_then(Value::as_str).unwrap_or("");
    let empty = Value::Object(Default::default());
    let data = field(change, "data").unwrap_or(&empty);
    let key = field(change, "key").unwrap_or(data);
    match (entity, op) {
        ("session", "upsert") => {
            let start_ms = instant(data, "startAt")?
                .ok_or_else(|| Rejection::new(codes::INVALID_TIMESTAMP, "startAt is required"))?;
            let quantity = match field(data, "quantity") {
                None => 1.0,
                Some(q) => q
                    .as_f64()
                    .filter(|q| q.is_finite() && *q >= 0.0)
                    .ok_or_else(|| Rejection::new(codes::OUT_OF_RANGE, "quantity must be a non-negative number"))?,
            };
            let zone = match field(data, "zoneId").and_then(Value::as_str) {
                None => None,
                Some(z) => Some(Zone::parse(z).ok_or_else(|| {
                    Rejection::new(codes::INVALID_ZONE, format!("zoneId '{z}' is not an IANA zone or a ±HH:MM offset"))
                })?),
            };
            Ok(DomainChange::UpsertSession(WireSession {
                user_id: id(data, "userId")?,
                session_id: id(data, "sessionId")?,
                product_id: id(data, "productId")?,
                start_ms,
                end_ms: instant(data, "endAt")?,
                quantity,
                zone,
            }))
        }
        ("session", "delete") => {
            Ok(DomainChange::DeleteSession { user_id: id(key, "userId")?, session_id: id(key, "sessionId")? })
        }
        ("product", "upsert") => Ok(DomainChange::UpsertProduct(Product {
            product_id: id(data, "productId")?,
            name: field(data, "name").and_then(Value::as_str).unwrap_or_default().to_owned(),
            category: field(data, "category").and_then(Value::as_str).map(str::to_owned),
        })),
        ("product", "delete") => Ok(DomainChange::DeleteProduct { product_id: id(key, "productId")? }),
        ("user", "upsert") => {
            let time_zone = field(data, "timeZone").and_then(Value::as_str).map(str::to_owned);
            if let Some(z) = &time_zone
                && !matches!(Zone::parse(z), Some(Zone::Iana(_)))
            {
                return Err(Rejection::new(codes::INVALID_ZONE, format!("timeZone '{z}' is not an IANA zone")));
            }
            let blocked_metrics = match field(data, "blockedMetrics") {
                None => Vec::new(),
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
                Some(_) => return Err(Rejection::new(INVALID_CHANGE, "blockedMetrics must be an array of strings")),
            };
            Ok(DomainChange::UpsertUser(UserProfile {
                user_id: id(data, "userId")?,
                time_zone,
                allow_health_data_upload: field(data, "allowHealthDataUpload").and_then(Value::as_bool).unwrap_or(true),
                blocked_metrics,
            }))
        }
        _ => Err(Rejection::new(
            INVALID_CHANGE,
            format!(
                "unsupported change: entity '{entity}' with op '{op}' (session, product: upsert|delete; user: upsert)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_issue_example() {
        let s = parse_change(&json!({"entity": "session", "op": "upsert", "data": {"userId": "u1", "sessionId": "s1",
            "productId": "p1", "startAt": "2024-06-01T08:00:00Z", "endAt": null, "quantity": 1.0, "zoneId": "Europe/Berlin"}}))
        .unwrap();
        let DomainChange::UpsertSession(w) = s else { panic!("session") };
        assert_eq!(w.end_ms, None);
        assert_eq!(w.resolve(None).zone.name(), "Europe/Berlin");
        let d = parse_change(&json!({"entity": "session", "op": "delete", "key": {"userId": "u1", "sessionId": "s1"}}))
            .unwrap();
        assert_eq!(d, DomainChange::DeleteSession { user_id: "u1".into(), session_id: "s1".into() });
        let code = |v: Value| parse_change(&v).err().map(|r| r.code).unwrap_or_default();
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
        assert_eq!(code(json!({"entity": "planet", "op": "upsert"})), INVALID_CHANGE);
        assert_eq!(code(json!({"entity": "product", "op": "delete", "key": {"productId": ""}})), codes::INVALID_ID);
    }
}
