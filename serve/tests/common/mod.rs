//! A router over a small snapshot store: two per-user views (`steps`, `sessions`) and one shared
//! view (`products`), with users `u1` (3 steps rows) and `u2` (2 steps rows).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;
use vitalflow_schemas::auth::Caller;
use vitalflow_schemas::view::{ColumnType, col};
use vitalflow_schemas::{Datum, Epoch, ViewDef};
use vitalflow_serve::{Freshness, ServeConfig, SnapshotStore};

pub const STEPS: ViewDef = ViewDef {
    name: "steps",
    columns: &[col("user_id", ColumnType::Str), col("day", ColumnType::Int), col("steps", ColumnType::Int)],
    key_len: 2,
    route: Some("steps"),
    filters: &[],
    range_column: None,
    range_via: None,
};

pub const SESSIONS: ViewDef = ViewDef {
    name: "sessions",
    columns: &[col("user_id", ColumnType::Str), col("session_id", ColumnType::Str)],
    key_len: 2,
    route: Some("sessions"),
    filters: &[],
    range_column: None,
    range_via: None,
};

pub const PRODUCTS: ViewDef = ViewDef {
    name: "products",
    columns: &[col("product_id", ColumnType::Str), col("name", ColumnType::Str)],
    key_len: 1,
    route: None,
    filters: &[],
    range_column: None,
    range_via: None,
};

struct Fixed;

impl Freshness for Fixed {
    fn latest_epoch(&self) -> Epoch {
        1
    }
    fn user_epoch(&self, _user: &str) -> Option<Epoch> {
        None
    }
    fn committed_at(&self, _epoch: Epoch) -> Option<SystemTime> {
        None
    }
}

fn s(v: &str) -> Datum {
    Datum::Str(v.into())
}

/// The store with both users' rows, published at epoch 1.
pub fn store() -> Arc<SnapshotStore> {
    let store = SnapshotStore::new([STEPS, SESSIONS, PRODUCTS]);
    let steps = [("u1", 1, 100), ("u1", 2, 200), ("u1", 3, 300), ("u2", 1, 1000), ("u2", 2, 2000)];
    store.apply(0, 2, steps.iter().map(|(u, d, n)| (vec![s(u), Datum::Int(*d), Datum::Int(*n)], 1)).collect());
    let sessions = [("u1", "s1"), ("u2", "s2"), ("u2", "s3")];
    store.apply(1, 2, sessions.iter().map(|(u, id)| (vec![s(u), s(id)], 1)).collect());
    let products = [("p1", "tea"), ("p2", "coffee")];
    store.apply(2, 2, products.iter().map(|(id, name)| (vec![s(id), s(name)], 1)).collect());
    Arc::new(store)
}

pub fn router(config: ServeConfig) -> Router {
    vitalflow_serve::http::router(store(), Arc::new(Fixed), config).unwrap()
}

/// A `POST /v1/sql` request with a JSON body.
pub fn sql_request(sql: &str, caller: Option<Caller>) -> Request<Body> {
    let mut req = Request::post("/v1/sql")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "sql": sql }).to_string()))
        .unwrap();
    if let Some(c) = caller {
        req.extensions_mut().insert(c);
    }
    req
}

/// Sends `req`; returns the status, the `Retry-After` header and the JSON body.
pub async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Option<String>, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let retry = resp.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
    let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, retry, value)
}

/// Runs `sql` as the trusted caller.
pub async fn query(app: &Router, sql: &str) -> (StatusCode, Value) {
    let (status, _, body) = send(app, sql_request(sql, None)).await;
    (status, body)
}

/// The process's peak resident memory (`VmHWM`), in bytes.
pub fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}
