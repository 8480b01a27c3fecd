//! The PostgreSQL sink: every view kept in a Postgres table of its DOMAIN.md §8 name (created if
//! missing, primary key = the view's key), with a progress table `vitalflow_progress(view,
//! as_of_epoch)` that says exactly how fresh each table is.
//!
//! The sink works from snapshots, not from a queue of updates: it remembers the snapshot it last
//! wrote per view and, when the view's snapshot advances, writes the difference between the two
//! (only shards whose `Arc` changed are compared). Each write is one transaction that also records
//! the new `as_of_epoch`, so a reader never sees half an epoch. A Postgres outage therefore costs no
//! buffering: when Postgres is back, the sink writes one difference from the last written snapshot
//! to the current one.
//!
//! On (re)connection the progress table is the truth: a view whose recorded epoch (written from
//! this durable store, by `store_id`) is the one the sink last wrote (or the current snapshot's)
//! continues incrementally; any other view is reloaded
//! whole with `COPY … FROM STDIN (FORMAT binary)` in one transaction (first load, after a restart
//! of vitalflow at a newer epoch, or a table changed behind our back).

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use chrono::{DateTime, Utc};
use futures::pin_mut;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{NoTls, Statement};
use vitalflow_schemas::time::days_to_date;
use vitalflow_schemas::view::ColumnType;
use vitalflow_schemas::{Datum, Epoch, Row, ViewDef};

use crate::snapshot::{SnapshotStore, ViewSnapshot};

/// `[sinks.postgres]` in `vitalflow.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PgSinkConfig {
    /// A libpq-style connection string or URL.
    #[serde(alias = "dsn", alias = "database_url", alias = "connection_string")]
    pub url: String,
    /// The table recording each view's `as_of_epoch`.
    pub progress_table: String,
    /// Table name per view name, overriding [`default_table`].
    pub tables: BTreeMap<String, String>,
}

/// DOMAIN.md §8: the four original projections keep the original backend's table names; every
/// other view's table is named after the view.
pub fn default_table(view: &str) -> &str {
    match view {
        "daily_rollups" => "user_health_rollup_day",
        "sleep_nights" => "user_sleep_night_summary",
        "session_impacts" => "user_session_impact_summary",
        "product_impacts" => "user_product_impact_rollup",
        other => other,
    }
}

impl PgSinkConfig {
    /// The Postgres table of `view`.
    pub fn table(&self, view: &str) -> String {
        self.tables.get(view).cloned().unwrap_or_else(|| default_table(view).to_owned())
    }
}

impl Default for PgSinkConfig {
    fn default() -> Self {
        PgSinkConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            progress_table: "vitalflow_progress".into(),
            tables: BTreeMap::new(),
        }
    }
}

/// One view's table as `/v1/frontiers` shows it.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkViewStatus {
    pub name: String,
    /// Its Postgres table.
    pub table: String,
    /// The epoch the Postgres table reflects (as recorded in the progress table).
    pub as_of_epoch: Epoch,
    /// Epochs between the view's snapshot and the table.
    pub lag_epochs: Epoch,
    pub full_loads: u64,
}

/// The sink's state, for `/v1/frontiers`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    pub connected: bool,
    pub views: Vec<SinkViewStatus>,
    pub last_error: Option<String>,
}

/// Starts the sink; it runs until `shutdown` turns true (after writing what is published).
pub fn spawn(
    config: PgSinkConfig,
    snapshots: Arc<SnapshotStore>,
    store_id: String,
    mut shutdown: watch::Receiver<bool>,
) -> (Arc<Mutex<SinkStatus>>, tokio::task::JoinHandle<()>) {
    let status = Arc::new(Mutex::new(SinkStatus {
        views: (0..snapshots.len())
            .map(|v| SinkViewStatus {
                name: snapshots.def(v).name.to_owned(),
                table: config.table(snapshots.def(v).name),
                ..Default::default()
            })
            .collect(),
        ..SinkStatus::default()
    }));
    let st = status.clone();
    let task = tokio::spawn(async move {
        // Recovery first: before it, a snapshot is empty and would wipe the tables.
        while !snapshots.is_ready() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return,
            }
        }
        // Each view's definition under its table name (leaked once: a handful of names for the
        // life of the process).
        let defs = (0..snapshots.len())
            .map(|v| {
                let def = *snapshots.def(v);
                let table: &'static str = Box::leak(config.table(def.name).into_boxed_str());
                ViewDef { name: table, ..def }
            })
            .collect();
        let mut sink = Sink { config, snapshots, defs, store_id, status: st, written: Vec::new() };
        sink.written = (0..sink.snapshots.len()).map(|_| None).collect();
        let mut backoff = Duration::from_millis(100);
        loop {
            match sink.run(&mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "postgres sink; reconnecting");
                    let mut s = sink.status.lock();
                    s.connected = false;
                    s.last_error = Some(e.to_string());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { return; }
                }
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    (status, task)
}

type SinkError = Box<dyn Error + Send + Sync>;

struct Sink {
    config: PgSinkConfig,
    snapshots: Arc<SnapshotStore>,
    /// Per view: its definition named after its Postgres table.
    defs: Vec<ViewDef>,
    /// The durable store's identity: a progress row written from another store means nothing here.
    store_id: String,
    status: Arc<Mutex<SinkStatus>>,
    /// Per view: the snapshot whose state the table holds, as far as this process knows.
    written: Vec<Option<Arc<ViewSnapshot>>>,
}

/// The prepared statements of one view.
struct ViewStatements {
    upsert: Statement,
    delete: Statement,
}

impl Sink {
    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<(), SinkError> {
        let (mut client, connection) = tokio_postgres::connect(&self.config.url, NoTls).await?;
        let conn = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres sink connection closed");
            }
        });
        let _guard = AbortOnDrop(conn);
        let progress = quote(&self.config.progress_table);
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {progress} (view text PRIMARY KEY, as_of_epoch bigint NOT NULL, \
                 store_id text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
        let mut statements = Vec::with_capacity(self.snapshots.len());
        for v in 0..self.snapshots.len() {
            let def = self.defs[v];
            client.batch_execute(&create_table(&def)).await?;
            check_table(&client, &def).await?;
            statements.push(ViewStatements {
                upsert: client.prepare(&upsert_sql(&def)).await?,
                delete: client.prepare(&delete_sql(&def)).await?,
            });
        }
        let set_progress = client
            .prepare(&format!(
                "INSERT INTO {progress} (view, as_of_epoch, store_id, updated_at) VALUES ($1, $2, $3, now()) \
                 ON CONFLICT (view) DO UPDATE SET as_of_epoch = excluded.as_of_epoch, \
                 store_id = excluded.store_id, updated_at = now()"
            ))
            .await?;
        // Rows written from another store (another data directory) do not count as ours.
        let recorded: BTreeMap<String, i64> = client
            .query(&format!("SELECT view, as_of_epoch FROM {progress} WHERE store_id = $1"), &[&self.store_id])
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
            .collect();
        // Reconcile: keep what the table is known to hold, forget the rest (it will be reloaded).
        for v in 0..self.snapshots.len() {
            let name = self.snapshots.def(v).name;
            let at = recorded.get(name).map(|e| *e as Epoch);
            let current = self.snapshots.snapshot(v);
            let keep = match (&self.written[v], at) {
                (Some(w), Some(at)) if w.as_of == at => Some(w.clone()),
                (_, Some(at)) if current.as_of == at => Some(current),
                _ => None,
            };
            self.written[v] = keep;
            if let Some(at) = at {
                self.status.lock().views[v].as_of_epoch = at;
            }
        }
        {
            let mut s = self.status.lock();
            s.connected = true;
            s.last_error = None;
        }
        let mut watches: Vec<_> = (0..self.snapshots.len()).map(|v| self.snapshots.watch(v)).collect();
        loop {
            for (v, statements) in statements.iter().enumerate() {
                let current = self.snapshots.snapshot(v);
                let def = self.defs[v];
                let view = self.snapshots.def(v).name;
                match self.written[v].clone() {
                    Some(w) if w.as_of >= current.as_of => {}
                    Some(w) => {
                        let txn = client.transaction().await?;
                        write_difference(&txn, statements, &def, &w, &current).await?;
                        txn.execute(&set_progress, &[&view, &(current.as_of as i64), &self.store_id]).await?;
                        // Unknown outcome if the commit fails: the progress table will tell.
                        self.written[v] = None;
                        txn.commit().await?;
                    }
                    None => {
                        let txn = client.transaction().await?;
                        full_load(&txn, &def, &current).await?;
                        txn.execute(&set_progress, &[&view, &(current.as_of as i64), &self.store_id]).await?;
                        txn.commit().await?;
                        self.status.lock().views[v].full_loads += 1;
                        tracing::info!(
                            view,
                            table = def.name,
                            as_of = current.as_of,
                            rows = current.row_count,
                            "postgres table loaded"
                        );
                    }
                }
                self.written[v] = Some(current.clone());
                let mut s = self.status.lock();
                s.views[v].as_of_epoch = current.as_of;
                s.views[v].lag_epochs = 0;
            }
            // Wait for any view to advance (or shut down once everything published is written).
            if *shutdown.borrow() {
                return Ok(());
            }
            let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                _ = changed => {}
                _ = shutdown.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let mut s = self.status.lock();
            for v in 0..self.snapshots.len() {
                let latest = self.snapshots.snapshot(v).as_of;
                s.views[v].lag_epochs = latest.saturating_sub(s.views[v].as_of_epoch);
            }
        }
    }
}

/// Refuses a table that existed with other columns (e.g. the backend's own `sessions` table in the
/// same database): the sink truncates its tables on a full load, so it must own them.
async fn check_table(client: &tokio_postgres::Client, def: &ViewDef) -> Result<(), SinkError> {
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_name = $1 AND table_schema = current_schema() ORDER BY ordinal_position",
            &[&def.name],
        )
        .await?;
    let found: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, String)> = def
        .columns
        .iter()
        .map(|c| {
            let ty = match c.ty {
                ColumnType::Timestamp => "timestamp with time zone",
                other => pg_type_name(other),
            };
            (c.name.to_owned(), ty.to_owned())
        })
        .collect();
    if found == want {
        Ok(())
    } else {
        Err(format!(
            "table {} exists with other columns ({:?}); the sink only writes tables it created: \
             drop it or map the view to another table in [sinks.postgres.tables]",
            def.name,
            found.iter().map(|(n, t)| format!("{n} {t}")).collect::<Vec<_>>()
        )
        .into())
    }
}

/// Writes `new − old` (deletes by key, then upserts), pipelined on the one connection.
async fn write_difference(
    txn: &tokio_postgres::Transaction<'_>,
    st: &ViewStatements,
    def: &ViewDef,
    old: &ViewSnapshot,
    new: &ViewSnapshot,
) -> Result<(), SinkError> {
    let (removed, added) = difference(old, new);
    let key_len = def.key_len;
    let added_keys: std::collections::BTreeSet<&[Datum]> = added.iter().map(|r| &r[..key_len]).collect();
    let deletes: Vec<&Row> = removed.into_iter().filter(|r| !added_keys.contains(&r[..key_len])).collect();
    for chunk in deletes.chunks(1000) {
        let futures = chunk.iter().map(|r| {
            let cells: Vec<Cell<'_>> =
                def.columns[..key_len].iter().zip(r.iter()).map(|(c, d)| Cell(d, c.ty)).collect();
            async move {
                let params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                txn.execute(&st.delete, &params).await
            }
        });
        futures::future::try_join_all(futures).await?;
    }
    for chunk in added.chunks(1000) {
        let futures = chunk.iter().map(|r| {
            let cells: Vec<Cell<'_>> = def.columns.iter().zip(r.iter()).map(|(c, d)| Cell(d, c.ty)).collect();
            async move {
                let params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                txn.execute(&st.upsert, &params).await
            }
        });
        futures::future::try_join_all(futures).await?;
    }
    Ok(())
}

/// Rows only in `old` and rows only in `new`, comparing only shards whose `Arc` differs.
pub fn difference<'a>(old: &'a ViewSnapshot, new: &'a ViewSnapshot) -> (Vec<&'a Row>, Vec<&'a Row>) {
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    for (ob, nb) in old.buckets.iter().zip(&new.buckets) {
        if Arc::ptr_eq(ob, nb) {
            continue;
        }
        let users: std::collections::BTreeSet<&String> = ob.users.keys().chain(nb.users.keys()).collect();
        for u in users {
            let (o, n) = (ob.users.get(u), nb.users.get(u));
            if let (Some(o), Some(n)) = (o, n)
                && Arc::ptr_eq(o, n)
            {
                continue;
            }
            // Chunks shared by both shards hold the same rows: only the others can differ.
            let (o, n) = changed_rows(o.map(|s| &**s), n.map(|s| &**s));
            // Both sorted: one merge.
            let (mut i, mut j) = (0, 0);
            while i < o.len() || j < n.len() {
                match (o.get(i).copied(), n.get(j).copied()) {
                    (Some(a), Some(b)) if a == b => {
                        i += 1;
                        j += 1;
                    }
                    (Some(a), Some(b)) if a < b => {
                        removed.push(a);
                        i += 1;
                    }
                    (Some(_), Some(b)) => {
                        added.push(b);
                        j += 1;
                    }
                    (Some(a), None) => {
                        removed.push(a);
                        i += 1;
                    }
                    (None, Some(b)) => {
                        added.push(b);
                        j += 1;
                    }
                    (None, None) => break,
                }
            }
        }
    }
    (removed, added)
}

/// The rows of `old` and of `new` outside the chunks both share, each sorted.
fn changed_rows<'a>(
    old: Option<&'a crate::snapshot::UserShard>,
    new: Option<&'a crate::snapshot::UserShard>,
) -> (Vec<&'a Row>, Vec<&'a Row>) {
    let ptrs = |s: Option<&'a crate::snapshot::UserShard>| -> std::collections::HashSet<*const crate::snapshot::Chunk> {
        s.map(|s| s.chunks().iter().map(Arc::as_ptr).collect()).unwrap_or_default()
    };
    let (in_old, in_new) = (ptrs(old), ptrs(new));
    let rows = |s: Option<&'a crate::snapshot::UserShard>,
                other: &std::collections::HashSet<*const crate::snapshot::Chunk>| {
        let mut out: Vec<&'a Row> = s
            .map(|s| {
                s.chunks()
                    .iter()
                    .filter(|c| !other.contains(&Arc::as_ptr(c)))
                    .flat_map(|c| c.rows.iter().map(|r| &**r))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    };
    (rows(old, &in_new), rows(new, &in_old))
}

/// Replaces the table's contents with the snapshot: `TRUNCATE`, then binary `COPY`.
async fn full_load(txn: &tokio_postgres::Transaction<'_>, def: &ViewDef, snap: &ViewSnapshot) -> Result<(), SinkError> {
    let table = quote(def.name);
    txn.batch_execute(&format!("TRUNCATE {table}")).await?;
    let columns: Vec<String> = def.columns.iter().map(|c| quote(c.name)).collect();
    let sink = txn.copy_in(&format!("COPY {table} ({}) FROM STDIN (FORMAT binary)", columns.join(", "))).await?;
    let types: Vec<Type> = def.columns.iter().map(|c| pg_type(c.ty)).collect();
    let writer = BinaryCopyInWriter::new(sink, &types);
    pin_mut!(writer);
    for bucket in &snap.buckets {
        for shard in bucket.users.values() {
            for row in shard.rows() {
                let cells: Vec<Cell<'_>> = def.columns.iter().zip(row.iter()).map(|(c, d)| Cell(d, c.ty)).collect();
                let params: Vec<&(dyn ToSql + Sync)> = cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
                writer.as_mut().write(&params).await?;
            }
        }
    }
    writer.finish().await?;
    Ok(())
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn pg_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Str => Type::TEXT,
        ColumnType::Int => Type::INT8,
        ColumnType::Float => Type::FLOAT8,
        ColumnType::Bool => Type::BOOL,
        ColumnType::Date => Type::DATE,
        ColumnType::Timestamp => Type::TIMESTAMPTZ,
    }
}

fn pg_type_name(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Str => "text",
        ColumnType::Int => "bigint",
        ColumnType::Float => "double precision",
        ColumnType::Bool => "boolean",
        ColumnType::Date => "date",
        ColumnType::Timestamp => "timestamptz",
    }
}

/// `CREATE TABLE IF NOT EXISTS` with the view's columns and its key as the primary key.
pub fn create_table(def: &ViewDef) -> String {
    let columns: Vec<String> = def
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let not_null = if i < def.key_len { " NOT NULL" } else { "" };
            format!("{} {}{not_null}", quote(c.name), pg_type_name(c.ty))
        })
        .collect();
    let key: Vec<String> = def.columns[..def.key_len].iter().map(|c| quote(c.name)).collect();
    format!("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))", quote(def.name), columns.join(", "), key.join(", "))
}

fn upsert_sql(def: &ViewDef) -> String {
    let columns: Vec<String> = def.columns.iter().map(|c| quote(c.name)).collect();
    let params: Vec<String> = (1..=def.columns.len()).map(|i| format!("${i}")).collect();
    let key = &columns[..def.key_len];
    let rest: Vec<String> = columns[def.key_len..].iter().map(|c| format!("{c} = excluded.{c}")).collect();
    let action = if rest.is_empty() { "DO NOTHING".to_owned() } else { format!("DO UPDATE SET {}", rest.join(", ")) };
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {action}",
        quote(def.name),
        columns.join(", "),
        params.join(", "),
        key.join(", ")
    )
}

fn delete_sql(def: &ViewDef) -> String {
    let conditions: Vec<String> =
        def.columns[..def.key_len].iter().enumerate().map(|(i, c)| format!("{} = ${}", quote(c.name), i + 1)).collect();
    format!("DELETE FROM {} WHERE {}", quote(def.name), conditions.join(" AND "))
}

/// One datum as a Postgres value of its column's type.
#[derive(Debug)]
struct Cell<'a>(&'a Datum, ColumnType);

impl ToSql for Cell<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match (self.0, self.1) {
            (Datum::Null, _) => Ok(IsNull::Yes),
            (Datum::Bool(b), _) => b.to_sql(ty, out),
            (Datum::Int(i), ColumnType::Float) => (*i as f64).to_sql(ty, out),
            (Datum::Int(i), _) => i.to_sql(ty, out),
            (Datum::Float(f), _) => f.0.to_sql(ty, out),
            (Datum::Str(s), _) => s.as_str().to_sql(ty, out),
            (Datum::Date(d), _) => days_to_date(*d).to_sql(ty, out),
            (Datum::Ts(ms), _) => match DateTime::<Utc>::from_timestamp_millis(*ms) {
                Some(t) => t.to_sql(ty, out),
                None => Ok(IsNull::Yes),
            },
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vitalflow_schemas::view::col;

    const DEF: ViewDef = ViewDef {
        name: "t",
        columns: &[col("user_id", ColumnType::Str), col("n", ColumnType::Int), col("v", ColumnType::Float)],
        key_len: 2,
        route: Some("t"),
        filters: &[],
        range_column: None,
        range_via: None,
    };

    fn row(u: &str, n: i64, v: f64) -> Row {
        vec![Datum::Str(u.into()), Datum::Int(n), Datum::float(Some(v))]
    }

    #[test]
    fn difference_of_snapshots_is_the_change() {
        let store = SnapshotStore::new([DEF]);
        store.apply(0, 2, vec![(row("a", 1, 1.0), 1), (row("b", 1, 1.0), 1), (row("b", 2, 2.0), 1)]);
        let s1 = store.snapshot(0);
        store.apply(
            0,
            3,
            vec![(row("b", 1, 1.0), -1), (row("b", 1, 5.0), 1), (row("b", 2, 2.0), -1), (row("c", 7, 0.0), 1)],
        );
        let s2 = store.snapshot(0);
        let (removed, added) = difference(&s1, &s2);
        let mut removed: Vec<Row> = removed.into_iter().cloned().collect();
        let mut added: Vec<Row> = added.into_iter().cloned().collect();
        removed.sort();
        added.sort();
        assert_eq!(removed, vec![row("b", 1, 1.0), row("b", 2, 2.0)]);
        assert_eq!(added, vec![row("b", 1, 5.0), row("c", 7, 0.0)]);
        let (r, a) = difference(&s2, &s2);
        assert!(r.is_empty() && a.is_empty());
    }

    #[test]
    fn statements_follow_the_view() {
        assert_eq!(
            create_table(&DEF),
            "CREATE TABLE IF NOT EXISTS \"t\" (\"user_id\" text NOT NULL, \"n\" bigint NOT NULL, \"v\" double precision, PRIMARY KEY (\"user_id\", \"n\"))"
        );
        assert_eq!(
            upsert_sql(&DEF),
            "INSERT INTO \"t\" (\"user_id\", \"n\", \"v\") VALUES ($1, $2, $3) ON CONFLICT (\"user_id\", \"n\") DO UPDATE SET \"v\" = excluded.\"v\""
        );
        assert_eq!(delete_sql(&DEF), "DELETE FROM \"t\" WHERE \"user_id\" = $1 AND \"n\" = $2");
    }
}
