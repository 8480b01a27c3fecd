//! Request and response bodies on the wire (JSON, camelCase), and the payload hashes of DOMAIN.md
//! I1: scheme 1, SHA-256 of the RFC 8785 form without `requestId` ([`payload_hash`]); scheme 2,
//! SHA-256 of a batch-upsert's parsed fields in a fixed order ([`batch_hash`]).

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
    #[serde(default, deserialize_with = "objects")]
    pub samples: Vec<WireSample>,
    #[serde(default, deserialize_with = "objects")]
    pub deletions: Vec<WireDeletion>,
}

/// A list whose items must be JSON objects: serde's derive also reads a struct from an array of
/// its fields in order, which would let `["w", "1", "steps", …]` pass as a sample. `null` is the
/// empty list, as an explicit `null` is absent for every optional field.
fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Vec<Object<T>>>::deserialize(deserializer)
        .map(|items| items.unwrap_or_default().into_iter().map(|o| o.0).collect())
}

/// `T` read from a JSON object only.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(ObjectVisitor(std::marker::PhantomData)).map(Object)
    }
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
    pub metadata: Option<WireMetadata>,
}

/// A sample's free `metadata` (HealthKit `HKMetadataKey…`, Health Connect `zoneOffset`, …) as
/// parsed, and how deeply its JSON text nests. The depth lets the typed parse of a batch
/// (`ingest::http::parse_batch`) enforce `Limits::max_json_depth` without scanning the whole body:
/// the rest of a batch's shape is at most 3 levels deep.
///
/// Serialized as its value.
#[derive(Clone, Debug, PartialEq)]
pub struct WireMetadata {
    pub value: Value,
    /// The deepest nesting of arrays and objects in the metadata's JSON text (levels: a scalar is
    /// 0, `{}` and `{"a": 1}` are 1, `{"a": [1]}` is 2). It counts every value of the text, also
    /// one that a later duplicate key replaced in `value`, as a scan of the text does.
    pub depth: usize,
}

impl From<Value> for WireMetadata {
    /// `value` with its depth measured.
    fn from(value: Value) -> WireMetadata {
        fn depth(v: &Value) -> usize {
            match v {
                Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
                Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
                _ => 0,
            }
        }
        WireMetadata { depth: depth(&value), value }
    }
}

impl Serialize for WireMetadata {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for WireMetadata {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MeasuredValue::deserialize(deserializer).map(|m| WireMetadata { value: m.value, depth: m.depth })
    }
}

/// The first key that makes `serde_json::Value` (with its `raw_value` feature) read an object as
/// the JSON text of its string value. A test checks that `Value` still does.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// A JSON value read as `serde_json::Value` reads it (last duplicate key wins, a non-finite float
/// is `null`, [`RAW_VALUE_TOKEN`]), with the depth of everything read on the way.
struct MeasuredValue {
    value: Value,
    depth: usize,
}

impl MeasuredValue {
    fn scalar(value: Value) -> MeasuredValue {
        MeasuredValue { value, depth: 0 }
    }
}

impl<'de> Deserialize<'de> for MeasuredValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MeasuredVisitor)
    }
}

struct MeasuredVisitor;

impl<'de> serde::de::Visitor<'de> for MeasuredVisitor {
    type Value = MeasuredValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<MeasuredValue, E> {
        Ok(MeasuredValue::scalar(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<MeasuredValue, E> {
        Ok(MeasuredValue::scalar(Value::Number(v.into())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<MeasuredValue, E> {
        Ok(MeasuredValue::scalar(Value::Number(v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<MeasuredValue, E> {
        Ok(MeasuredValue::scalar(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)))
    }
    fn visit_str<E>(self, v: &str) -> Result<MeasuredValue, E> {
        Ok(MeasuredValue::scalar(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<MeasuredValue, E> {
        Ok(MeasuredValue::scalar(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<MeasuredValue, E> {
        Ok(MeasuredValue::scalar(Value::Null))
    }
    fn visit_none<E>(self) -> Result<MeasuredValue, E> {
        Ok(MeasuredValue::scalar(Value::Null))
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<MeasuredValue, D::Error> {
        MeasuredValue::deserialize(deserializer)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<MeasuredValue, A::Error> {
        let (mut items, mut depth) = (Vec::new(), 0);
        while let Some(item) = seq.next_element::<MeasuredValue>()? {
            depth = depth.max(item.depth);
            items.push(item.value);
        }
        Ok(MeasuredValue { value: Value::Array(items), depth: depth + 1 })
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<MeasuredValue, A::Error> {
        let (mut object, mut depth) = (serde_json::Map::new(), 0);
        while let Some(key) = map.next_key::<String>()? {
            if object.is_empty() && key == RAW_VALUE_TOKEN {
                // As `Value` reads it (serde_json's `raw_value` feature): the object stands for the
                // JSON text of its string value, and must have no other key (the parser refuses
                // the rest). That text is inside a string, so a scan of the body sees one level.
                let text: String = map.next_value()?;
                let value = serde_json::from_str::<Value>(&text).map_err(serde::de::Error::custom)?;
                return Ok(MeasuredValue { value, depth: 1 });
            }
            let item = map.next_value::<MeasuredValue>()?;
            depth = depth.max(item.depth);
            object.insert(key, item.value);
        }
        Ok(MeasuredValue { value: Value::Object(object), depth: depth + 1 })
    }
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

/// The payload-hash scheme of [`payload_hash`]: SHA-256 of the RFC 8785 (JCS) text of the body
/// without `requestId`. Domain changes use it; batch upserts stored before scheme 2 carry it.
pub const HASH_SCHEME_JCS: u32 = 1;
/// The payload-hash scheme of [`batch_hash`].
pub const HASH_SCHEME_BATCH_FIELDS: u32 = 2;

/// I1, scheme 2 ([`HASH_SCHEME_BATCH_FIELDS`]): SHA-256 (hex) over a batch upsert's parsed fields
/// in a fixed order, without `requestId`, computed without building a JSON tree:
/// `userId`, `deviceTimeZone`, `platform`; the number of samples, then per sample `sourceId`,
/// `sourceRecordId`, `metric`, `startAt`, `endAt`, `value`, `unit`, `category`, `sourceClass`,
/// `zoneId`, `metadata`; the number of deletions, then per deletion `sourceId`, `sourceRecordId`.
/// A string is its UTF-8 bytes after its length (u64, little-endian); an absent field (or `null`)
/// is byte 0, a present one byte 1 and its encoding; `value` is its IEEE-754 bits (`-0` as `0`);
/// `metadata` is encoded by meaning, as `FieldHasher::json` says (sorted keys, exact numbers). So key order, whitespace, escapes, number spelling and an
/// explicit `null` for an optional field do not change the hash, and any change of a field's
/// meaning does. A domain tag leads, so no other encoding collides with it.
pub fn batch_hash(req: &BatchUpsertRequest) -> String {
    let mut h = FieldHasher(Sha256::new());
    h.str("vitalflow batch-upsert payload v2");
    h.str(&req.user_id);
    h.opt_str(req.device_time_zone.as_deref());
    h.opt_str(req.platform.as_deref());
    h.len(req.samples.len());
    for x in &req.samples {
        h.str(&x.source_id);
        h.str(&x.source_record_id);
        h.str(&x.metric);
        h.str(&x.start_at);
        h.str(&x.end_at);
        match x.value {
            Some(v) => {
                h.0.update([1]);
                h.0.update((if v == 0.0 { 0.0f64 } else { v }).to_bits().to_le_bytes());
            }
            None => h.0.update([0]),
        }
        h.opt_str(x.unit.as_deref());
        h.opt_str(x.category.as_deref());
        h.opt_str(x.source_class.as_deref());
        h.opt_str(x.zone_id.as_deref());
        match x.metadata.as_ref().map(|m| &m.value) {
            Some(m) if !m.is_null() => {
                h.0.update([1]);
                h.json(m);
            }
            _ => h.0.update([0]),
        }
    }
    h.len(req.deletions.len());
    for d in &req.deletions {
        h.str(&d.source_id);
        h.str(&d.source_record_id);
    }
    hex::encode(h.0.finalize())
}

/// The length-prefixed field encoding of [`batch_hash`].
struct FieldHasher(Sha256);

impl FieldHasher {
    fn len(&mut self, n: usize) {
        self.0.update((n as u64).to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.update(s.as_bytes());
    }
    /// Free JSON (`metadata`) by meaning: objects by sorted key, numbers by value. A number is its
    /// `f64` bits (`-0` as `0`), unless it is an integer that `f64` cannot hold exactly (beyond
    /// 2⁵³), which is hashed as that integer: `1200` and `1.2e3` agree, `2⁵³ + 1` and `2⁵³` do not
    /// (metadata keeps integers exactly, e.g. `HKMetadataKeySyncVersion`).
    fn json(&mut self, v: &Value) {
        match v {
            Value::Null => self.0.update(b"n"),
            Value::Bool(b) => self.0.update(if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                const EXACT: u64 = 1 << 53;
                if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() > EXACT) {
                    self.0.update(b"i");
                    self.0.update(i.to_le_bytes());
                } else if let Some(u) = n.as_u64().filter(|u| *u > EXACT) {
                    self.0.update(b"u");
                    self.0.update(u.to_le_bytes());
                } else {
                    let f = n.as_f64().unwrap_or(0.0);
                    self.0.update(b"d");
                    self.0.update((if f == 0.0 { 0.0f64 } else { f }).to_bits().to_le_bytes());
                }
            }
            Value::String(s) => {
                self.0.update(b"s");
                self.str(s);
            }
            Value::Array(items) => {
                self.0.update(b"a");
                self.len(items.len());
                items.iter().for_each(|item| self.json(item));
            }
            Value::Object(map) => {
                self.0.update(b"o");
                self.len(map.len());
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable();
                for k in keys {
                    self.str(k);
                    self.json(&map[k]);
                }
            }
        }
    }

    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.update([1]);
                self.str(s);
            }
            None => self.0.update([0]),
        }
    }
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

    fn batch(v: &Value) -> BatchUpsertRequest {
        serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
    }

    #[test]
    fn batch_hash_ignores_spelling_and_sees_every_field() {
        let a: Value = serde_json::from_str(
            r#"{"requestId":"r-1","userId":"u1","samples":[{"sourceId":"w","sourceRecordId":"1","metric":"steps",
                "startAt":"2024-06-01T00:00:00Z","endAt":"2024-06-01T00:10:00Z","value":1200,"unit":"count",
                "metadata":{"b":1,"a":[1,2]}}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{ "samples" : [ {"metadata":{"a":[1,2.0e0],"b":1.0},"value":1.2e3,"unit":"count","endAt":"2024-06-01T00:10:00Z",
                "startAt":"2024-06-01T00:00:00Z","metric":"st\u0065ps","sourceRecordId":"1","sourceId":"w","zoneId":null}],
                "platform": null, "deletions": [], "userId":"u1","requestId":"r-2"}"#,
        )
        .unwrap();
        let base = batch_hash(&batch(&a));
        assert_eq!(base, batch_hash(&batch(&b)));
        assert_eq!(base.len(), 64);
        // Every field's meaning counts, including moving a value between fields.
        let edits: [(&str, Value); 12] = [
            ("/userId", json!("u2")),
            ("/samples/0/sourceId", json!("w2")),
            ("/samples/0/sourceRecordId", json!("2")),
            ("/samples/0/metric", json!("heart_rate")),
            ("/samples/0/startAt", json!("2024-06-01T00:00:01Z")),
            ("/samples/0/endAt", json!("2024-06-01T00:10:01Z")),
            ("/samples/0/value", json!(1201)),
            ("/samples/0/value", json!(null)),
            ("/samples/0/unit", json!("kcount")),
            ("/samples/0/metadata", json!({"b": 2, "a": [1, 2]})),
            ("/samples/0/metadata", json!(null)),
            ("/samples/0/unit", json!(null)),
        ];
        for (path, v) in edits {
            let mut c = a.clone();
            *c.pointer_mut(path).unwrap() = v.clone();
            assert_ne!(batch_hash(&batch(&c)), base, "{path} = {v}");
        }
        let mut c = a.clone();
        c["platform"] = json!("healthkit");
        assert_ne!(batch_hash(&batch(&c)), base);
        let mut c = a.clone();
        c["deletions"] = json!([{"sourceId": "w", "sourceRecordId": "1"}]);
        assert_ne!(batch_hash(&batch(&c)), base);
        // Field boundaries are unambiguous: "ab" + "c" is not "a" + "bc".
        let mut c = a.clone();
        c["samples"][0]["sourceId"] = json!("w1");
        c["samples"][0]["sourceRecordId"] = json!("");
        assert_ne!(batch_hash(&batch(&c)), base);
        // Integers beyond 2⁵³ keep their exact value; spelling still does not count.
        let with_meta = |m: Value| {
            let mut c = a.clone();
            c["samples"][0]["metadata"] = m;
            batch_hash(&batch(&c))
        };
        assert_ne!(
            with_meta(json!({"HKMetadataKeySyncVersion": 9_007_199_254_740_993_u64})),
            with_meta(json!({"HKMetadataKeySyncVersion": 9_007_199_254_740_992_u64}))
        );
        assert_ne!(with_meta(json!({"v": i64::MIN})), with_meta(json!({"v": i64::MIN + 1})));
        assert_ne!(with_meta(json!({"v": u64::MAX})), with_meta(json!({"v": u64::MAX - 1})));
        assert_eq!(with_meta(json!({"v": 1200, "w": [0.0]})), with_meta(json!({"w": [-0.0], "v": 1.2e3})));
        // -0 and 0 mean the same value.
        let (mut z, mut nz) = (a.clone(), a.clone());
        z["samples"][0]["value"] = json!(0.0);
        nz["samples"][0]["value"] = json!(-0.0);
        assert_eq!(batch_hash(&batch(&z)), batch_hash(&batch(&nz)));
    }

    #[test]
    fn metadata_depth_is_measured_while_parsing() {
        let parsed = |t: &str| serde_json::from_str::<WireMetadata>(t).unwrap_or_else(|e| panic!("{e}: {t}"));
        for t in [
            "1",
            "null",
            "true",
            r#""[[{""#,
            "{}",
            "[]",
            r#"{"a":[1,{"b":[]}],"c":"]]"}"#,
            "[[[[1]]]]",
            "1.5e3",
            "-0.0",
        ] {
            let value: Value = serde_json::from_str(t).unwrap_or_default();
            let m = parsed(t);
            assert_eq!(m.value, value, "{t}");
            assert_eq!(m, WireMetadata::from(value), "{t}");
        }
        assert_eq!(parsed("7").depth, 0);
        assert_eq!(parsed("{}").depth, 1);
        assert_eq!(parsed(r#"{"a":[1,{"b":[]}]}"#).depth, 4);
        // The last duplicate key wins, as in serde_json::Value; the depth counts the replaced value.
        let dup = parsed(r#"{"a":[[[1]]],"a":2}"#);
        assert_eq!(dup.value, json!({"a": 2}));
        assert_eq!(dup.depth, 4);
        // Integers keep their exact value.
        assert_eq!(parsed("18446744073709551615").value, json!(u64::MAX));
        assert_eq!(parsed("-9223372036854775808").value, json!(i64::MIN));
        // It serializes as its value.
        assert_eq!(serde_json::to_string(&dup).ok().as_deref(), Some(r#"{"a":2}"#));
    }

    /// Metadata means what `serde_json::Value` makes of it, also for serde_json's raw-value token
    /// (found by a break attempt: a hash or sync version read another way would turn a replay
    /// after an upgrade into a 409, and change which version is stale).
    #[test]
    fn metadata_reads_as_serde_json_value_reads_it() {
        let token = RAW_VALUE_TOKEN;
        let texts = [
            format!(r#"{{"{token}": "{{\"HKMetadataKeySyncVersion\": 5}}"}}"#),
            format!(r#"{{"{token}": "[1, {{\"{token}\": \"2\"}}]"}}"#),
            format!(r#"{{"{token}": "not json"}}"#),
            format!(r#"{{"{token}": 7}}"#),
            format!(r#"{{"{token}": "[1]", "b": 2}}"#),
            format!(r#"{{"b": 2, "{token}": "[1]"}}"#),
            format!(r#"{{"a": {{"{token}": "3"}}}}"#),
            format!(r#"[{{"{token}": "{{}}"}}]"#),
            format!(r#"{{"{token}": "{}{}"}}"#, "[".repeat(130), "]".repeat(130)),
            r#"{"HKMetadataKeySyncVersion": 5, "x": [1, {"y": null}]}"#.to_owned(),
        ];
        for text in &texts {
            let ours = serde_json::from_str::<WireMetadata>(text).map(|m| m.value).ok();
            let values = serde_json::from_str::<Value>(text).ok();
            assert_eq!(ours, values, "{text}");
        }
        // The token is read (the feature is on): the first text is its inner object.
        let first = serde_json::from_str::<WireMetadata>(&texts[0]).ok();
        assert_eq!(first.map(|m| (m.value, m.depth)), Some((json!({"HKMetadataKeySyncVersion": 5}), 1)));
    }

    #[test]
    fn samples_and_deletions_must_be_objects() {
        let positional: Value = serde_json::from_str(
            r#"{"requestId":"r","userId":"u","samples":[["w","1","steps","2024-06-01T00:00:00Z","2024-06-01T00:10:00Z",1200,"count"]]}"#,
        )
        .unwrap();
        assert!(serde_json::from_value::<BatchUpsertRequest>(positional.clone()).is_err());
        assert!(serde_json::from_slice::<BatchUpsertRequest>(positional.to_string().as_bytes()).is_err());
        let deletion = json!({"requestId": "r", "userId": "u", "deletions": [["w", "1"]]});
        assert!(serde_json::from_value::<BatchUpsertRequest>(deletion).is_err());
        let null = json!({"requestId": "r", "userId": "u", "samples": null, "deletions": null});
        let null = serde_json::from_value::<BatchUpsertRequest>(null).expect("null lists are empty");
        assert!(null.samples.is_empty() && null.deletions.is_empty());
        let ok = json!({"requestId": "r", "userId": "u", "deletions": [{"sourceId": "w", "sourceRecordId": "1"}]});
        assert_eq!(serde_json::from_value::<BatchUpsertRequest>(ok).map(|r| r.deletions.len()).ok(), Some(1));
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
