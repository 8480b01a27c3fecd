//! Source classes and their priority rank (DOMAIN.md §1.5).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::metric::Platform;

/// The kind of device or entry behind a sample. Declaration order is rank order: lower is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SourceClass {
    Manual,
    Watch,
    Ring,
    Band,
    ChestStrap,
    Phone,
    Other,
    Unknown,
}

impl SourceClass {
    /// Parses the lowercase wire name (`manual`, `watch`, …, `unknown`).
    pub fn parse(s: &str) -> Option<SourceClass> {
        Some(match s {
            "manual" => SourceClass::Manual,
            "watch" => SourceClass::Watch,
            "ring" => SourceClass::Ring,
            "band" => SourceClass::Band,
            "chest_strap" => SourceClass::ChestStrap,
            "phone" => SourceClass::Phone,
            "other" => SourceClass::Other,
            "unknown" => SourceClass::Unknown,
            _ => return None,
        })
    }

    /// The priority rank, 0 (manual) to 7 (unknown).
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// Derives the class from a sample's metadata when the wire carries none (§1.5 table).
    pub fn derive(platform: Platform, metadata: &Value) -> SourceClass {
        let get = |k: &str| metadata.get(k);
        let truthy = |v: Option<&Value>| matches!(v, Some(Value::Bool(true))) || v.and_then(Value::as_i64) == Some(1);
        match platform {
            Platform::HealthConnect => {
                if get("recordingMethod").and_then(Value::as_i64) == Some(3) {
                    return SourceClass::Manual;
                }
                let device_type =
                    get("device").and_then(|d| d.get("type")).or_else(|| get("deviceType")).and_then(Value::as_i64);
                match device_type {
                    Some(1) => SourceClass::Watch,
                    Some(2) => SourceClass::Phone,
                    Some(4) => SourceClass::Ring,
                    Some(6) => SourceClass::Band,
                    Some(7) => SourceClass::ChestStrap,
                    Some(0) | None => SourceClass::Unknown,
                    Some(_) => SourceClass::Other,
                }
            }
            Platform::HealthKit | Platform::Unknown => {
                if truthy(get("HKMetadataKeyWasUserEntered")) {
                    return SourceClass::Manual;
                }
                let product = get("productType")
                    .or_else(|| get("sourceRevision").and_then(|r| r.get("productType")))
                    .and_then(Value::as_str);
                match product {
                    None => SourceClass::Unknown,
                    Some(p) if p.to_ascii_lowercase().starts_with("watch") => SourceClass::Watch,
                    Some(p) if p.to_ascii_lowercase().starts_with("iphone") => SourceClass::Phone,
                    Some(_) => SourceClass::Other,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn derives_class_from_vendor_signals() {
        let hk = Platform::HealthKit;
        assert_eq!(SourceClass::derive(hk, &json!({"HKMetadataKeyWasUserEntered": true})), SourceClass::Manual);
        assert_eq!(SourceClass::derive(hk, &json!({"productType": "Watch2,4"})), SourceClass::Watch);
        assert_eq!(
            SourceClass::derive(hk, &json!({"sourceRevision": {"productType": "iPhone12,1"}})),
            SourceClass::Phone
        );
        assert_eq!(SourceClass::derive(hk, &json!({"productType": "Oura"})), SourceClass::Other);
        assert_eq!(SourceClass::derive(hk, &json!({})), SourceClass::Unknown);
        let hc = Platform::HealthConnect;
        assert_eq!(SourceClass::derive(hc, &json!({"recordingMethod": 3})), SourceClass::Manual);
        assert_eq!(SourceClass::derive(hc, &json!({"device": {"type": 4}})), SourceClass::Ring);
        assert_eq!(SourceClass::derive(hc, &json!({"device": {"type": 3}})), SourceClass::Other);
        assert_eq!(SourceClass::derive(hc, &json!({"device": {"type": 0}})), SourceClass::Unknown);
    }

    #[test]
    fn rank_follows_the_table() {
        assert!(SourceClass::Manual < SourceClass::Watch && SourceClass::Phone < SourceClass::Unknown);
        assert_eq!(SourceClass::Phone.rank(), 5);
        assert_eq!(SourceClass::parse("chest_strap"), Some(SourceClass::ChestStrap));
        assert_eq!(SourceClass::parse("Watch"), None);
    }
}
