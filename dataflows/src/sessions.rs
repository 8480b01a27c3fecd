//! `sessions`, `products`, `user_profiles`: the current domain records as ingested (DOMAIN.md §8),
//! deleted ones absent.

use differential_dataflow::VecCollection;
use vitalflow_schemas::domain::Product;
use vitalflow_schemas::view::{ColumnType::*, col};
use vitalflow_schemas::{Datum, Epoch, Row, UserProfile, ViewDef};

use crate::records::SessionRecord;

/// Key `(user_id, session_id)`.
pub const SESSIONS: ViewDef = ViewDef {
    name: "sessions",
    columns: &[
        col("user_id", Str),
        col("session_id", Str),
        col("product_id", Str),
        col("start_at", Timestamp),
        col("end_at", Timestamp),
        col("quantity", Float),
        col("zone_id", Str),
    ],
    key_len: 2,
    route: Some("sessions"),
    filters: &["productId"],
    range_column: Some("start_at"),
    range_via: None,
};

/// Key `product_id` (SQL only: products belong to no user).
pub const PRODUCTS: ViewDef = ViewDef {
    name: "products",
    columns: &[col("product_id", Str), col("name", Str), col("category", Str)],
    key_len: 1,
    route: None,
    filters: &[],
    range_column: None,
    range_via: None,
};

/// Key `user_id`; `blocked_metrics` is a JSON array. SQL only (the profile is written at
/// `POST /v1/users/{userId}/profile`).
pub const USER_PROFILES: ViewDef = ViewDef {
    name: "user_profiles",
    columns: &[
        col("user_id", Str),
        col("time_zone", Str),
        col("allow_health_data_upload", Bool),
        col("blocked_metrics", Str),
    ],
    key_len: 1,
    route: None,
    filters: &[],
    range_column: None,
    range_via: None,
};

/// In: current sessions. Out: one row per `(user_id, session_id)`.
pub fn sessions<'s>(sessions: VecCollection<'s, Epoch, SessionRecord>) -> VecCollection<'s, Epoch, Row> {
    sessions.map(|s| {
        vec![
            Datum::Str(s.user_id.to_string()),
            Datum::Str(s.session_id.to_string()),
            Datum::Str(s.product_id.to_string()),
            Datum::Ts(s.start_ms),
            s.end_ms.map_or(Datum::Null, Datum::Ts),
            Datum::Float(s.quantity),
            Datum::Str(s.zone.name()),
        ]
    })
}

/// In: current products. Out: one row per `product_id`.
pub fn products<'s>(products: VecCollection<'s, Epoch, Product>) -> VecCollection<'s, Epoch, Row> {
    products.map(|p| vec![Datum::Str(p.product_id), Datum::Str(p.name), p.category.map_or(Datum::Null, Datum::Str)])
}

/// In: current profiles. Out: one row per `user_id`.
pub fn user_profiles<'s>(profiles: VecCollection<'s, Epoch, UserProfile>) -> VecCollection<'s, Epoch, Row> {
    profiles.map(|p| {
        let blocked = serde_json::to_string(&p.blocked_metrics).unwrap_or_default();
        vec![
            Datum::Str(p.user_id),
            p.time_zone.map_or(Datum::Null, Datum::Str),
            Datum::Bool(p.allow_health_data_upload),
            Datum::Str(blocked),
        ]
    })
}
