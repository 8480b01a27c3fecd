//! The PostgreSQL outbox source: polls the backend's outbox table (`id bigint` increasing,
//! `event_type text`, `payload jsonb`) for `health.samples.batch` (a batch-upsert body) and
//! `domain.changes` (a domain-changes body). The last applied id is committed to the durable store
//! in the same transaction as the rows it brought (exactly-once, as for Kafka).
//!
//! Ids commit out of order when backend transactions overlap: a row with a smaller id may become
//! visible after a larger one was read. The poller therefore reads only rows written by
//! transactions older than every transaction still running (`xmin` before the snapshot's `xmin`),
//! so a row it has passed can no longer appear.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_postgres::NoTls;

use crate::http::{parse_batch, parse_domain, parse_json};
use crate::writer::{Ingest, SourceBody, SourceOutcome};

/// `[sources.postgres_outbox]` in `vitalflow.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// A libpq-style connection string or URL.
    #[serde(alias = "dsn", alias = "database_url", alias = "connection_string")]
    pub url: String,
    /// The outbox table (optionally schema-qualified).
    #[serde(alias = "outbox_table")]
    pub table: String,
    pub poll_interval_ms: u64,
    /// Most rows applied in one store transaction.
    pub batch_size: i64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            table: "outbox".into(),
            poll_interval_ms: 200,
            batch_size: 500,
        }
    }
}

/// The outbox source's state, for `/v1/frontiers`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStatus {
    pub table: String,
    /// The last applied outbox id.
    pub stored_id: i64,
    /// The largest id in the table when last polled.
    pub max_id: i64,
    pub lag: i64,
    pub applied: u64,
    /// Rows with an event type of ours whose payload was malformed (skipped, logged).
    pub malformed: u64,
    pub connected: bool,
    pub last_error: Option<String>,
}

/// The position key of `table` in the store.
pub fn position_key(table: &str) -> String {
    format!("outbox/{table}")
}

/// Starts polling; runs until `shutdown` turns true.
pub fn spawn(
    config: OutboxConfig,
    ingest: Ingest,
    start_after: i64,
    mut shutdown: watch::Receiver<bool>,
) -> (Arc<Mutex<OutboxStatus>>, tokio::task::JoinHandle<()>) {
    let status = Arc::new(Mutex::new(OutboxStatus {
        table: config.table.clone(),
        stored_id: start_after,
        ..OutboxStatus::default()
    }));
    let st = status.clone();
    let task = tokio::spawn(async move {
        let mut position = start_after;
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match run(&config, &ingest, &mut position, &st, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, table = config.table, "outbox poller; reconnecting");
                    let mut s = st.lock();
                    s.connected = false;
                    s.last_error = Some(e);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    (status, task)
}

async fn run(
    config: &OutboxConfig,
    ingest: &Ingest,
    position: &mut i64,
    status: &Mutex<OutboxStatus>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let (client, connection) = tokio_postgres::connect(&config.url, NoTls).await.map_err(|e| e.to_string())?;
    let conn = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "outbox connection closed");
        }
    });
    let _guard = AbortOnDrop(conn);
    status.lock().connected = true;
    // Rows whose writing transaction precedes every running one: `age(xmin)` grows with time, so
    // "older than the snapshot's xmin" is "age greater than the age of that xmin" (wraparound-safe).
    let select = client
        .prepare(&format!(
            "SELECT id, event_type, payload::text FROM {t} \
             WHERE id > $1 AND age(xmin) > age((pg_snapshot_xmin(pg_current_snapshot())::text::numeric % 4294967296)::text::xid) \
             ORDER BY id LIMIT $2",
            t = config.table
        ))
        .await
        .map_err(|e| e.to_string())?;
    let max_id = client
        .prepare(&format!("SELECT coalesce(max(id), 0) FROM {}", config.table))
        .await
        .map_err(|e| e.to_string())?;
    let key = position_key(&config.table);
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let rows = client.query(&select, &[&*position, &config.batch_size]).await.map_err(|e| e.to_string())?;
        let max: i64 = client.query_one(&max_id, &[]).await.map_err(|e| e.to_string())?.get(0);
        if rows.is_empty() {
            {
                let mut s = status.lock();
                s.max_id = max;
                s.lag = (max - *position).max(0);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(config.poll_interval_ms)) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            continue;
        }
        let mut items = Vec::with_capacity(rows.len());
        let mut last = *position;
        let mut malformed = 0;
        let limits = crate::limits();
        for row in &rows {
            let id: i64 = row.get(0);
            let event_type: &str = row.get(1);
            let payload: &str = row.get(2);
            last = id;
            let parsed = match event_type {
                "health.samples.batch" => parse_batch(axum::body::Bytes::copy_from_slice(payload.as_bytes()), limits)
                    .map(|(r, h)| SourceBody::Batch(r, h)),
                "domain.changes" => parse_json(payload.as_bytes(), limits)
                    .and_then(|v| parse_domain(v, limits))
                    .map(|(r, h)| SourceBody::Domain(r, h)),
                _ => Ok(SourceBody::Skip), // another consumer's event
            };
            items.push(parsed.unwrap_or_else(|e| {
                tracing::warn!(id, event_type, code = e.code(), error = %e, "malformed outbox payload skipped");
                malformed += 1;
                SourceBody::Skip
            }));
        }
        let outcomes = ingest.source_commit(items, vec![(key.clone(), last)]).await.map_err(|e| e.to_string())?;
        let mut refused = false;
        for (row, o) in rows.iter().zip(&outcomes) {
            if let SourceOutcome::Batch(Err(e)) | SourceOutcome::Domain(Err(e)) = o {
                let id: i64 = row.get(0);
                tracing::warn!(id, code = e.code(), error = %e, "outbox event rejected (logged, skipped)");
                refused = true;
            }
        }
        if refused {
            // The writer keeps positions back when an event is refused; store it now that the
            // refusal is logged (the outbox has no dead-letter topic: the row stays in the table).
            ingest.source_commit(Vec::new(), vec![(key.clone(), last)]).await.map_err(|e| e.to_string())?;
        }
        *position = last;
        let mut s = status.lock();
        s.stored_id = last;
        s.max_id = max.max(last);
        s.lag = (s.max_id - last).max(0);
        s.applied += rows.len() as u64;
        s.malformed += malformed;
        s.last_error = None;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
