//! The composition root: the one place where the store, the dataflow runtime, the snapshot store
//! and HTTP are built, wired together, and shut down again in reverse order.
//!
//! Start: open store → start workers and the snapshot applier → writer thread (first replays the
//! durable state into the dataflow, then commits requests) → HTTP. `/readyz` turns ready once every
//! view reflects the recovered epoch.
//! Stop (SIGINT/SIGTERM): HTTP drains in-flight requests → writer finishes its queue → workers
//! drain → applier publishes the last updates → exit 0.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use vitalflow_dataflows::{Runtime, ViewProgress};
use vitalflow_ingest::kafka::{KafkaSource, KafkaStatus};
use vitalflow_ingest::outbox::OutboxStatus;
use vitalflow_ingest::{Ingest, IngestProgress, Store};
use vitalflow_schemas::wire::ErrorBody;
use vitalflow_schemas::{Change, Epoch};
use vitalflow_serve::pg_sink::SinkStatus;
use vitalflow_serve::{Freshness, ServeConfig, SnapshotStore};

use crate::config::Config;

/// Samples fed to the dataflow per message during recovery.
const RECOVERY_CHUNK: usize = 10_000;

/// What the read API is told about ingestion and the connectors.
struct IngestFreshness {
    progress: Arc<IngestProgress>,
    kafka: Option<Arc<parking_lot::Mutex<KafkaStatus>>>,
    outbox: Option<Arc<parking_lot::Mutex<OutboxStatus>>>,
    sink: Option<Arc<parking_lot::Mutex<SinkStatus>>>,
}

impl Freshness for IngestFreshness {
    fn latest_epoch(&self) -> Epoch {
        self.progress.latest_epoch()
    }
    fn user_epoch(&self, user: &str) -> Option<Epoch> {
        self.progress.user_epoch(user)
    }
    fn committed_at(&self, epoch: Epoch) -> Option<SystemTime> {
        self.progress.committed_at(epoch)
    }
    fn sources(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        if let Some(k) = &self.kafka {
            out.insert("kafka".into(), serde_json::to_value(&*k.lock()).unwrap_or_default());
        }
        if let Some(o) = &self.outbox {
            out.insert("postgresOutbox".into(), serde_json::to_value(&*o.lock()).unwrap_or_default());
        }
        out.into()
    }
    fn sinks(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        if let Some(s) = &self.sink {
            out.insert("postgres".into(), serde_json::to_value(&*s.lock()).unwrap_or_default());
        }
        out.into()
    }
}

/// Runs vitalflow until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let store = Arc::new(
        Store::open(&config.data_dir)
            .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?,
    );
    let recovered_epoch = store.last_epoch()?;
    let progress = Arc::new(IngestProgress::new(recovered_epoch, store.user_epochs()?));

    let views = vitalflow_dataflows::select(config.views.as_deref()).map_err(anyhow::Error::msg)?;
    let snapshots = Arc::new(SnapshotStore::new(views.iter().map(|v| v.def)));
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<ViewProgress>();
    let runtime = Runtime::start(config.workers, views, out_tx).map_err(anyhow::Error::msg)?;
    let applier = {
        let snapshots = snapshots.clone();
        std::thread::Builder::new().name("vitalflow-snapshots".into()).spawn(move || {
            for p in out_rx {
                snapshots.apply(p.view, p.frontier, p.updates.into_iter().map(|(row, _, diff)| (row, diff)).collect());
            }
        })?
    };

    let runtime = Arc::new(Mutex::new(runtime));
    let recovery = {
        let (store, runtime) = (store.clone(), runtime.clone());
        Box::new(move || recover(&store, &runtime, recovered_epoch))
    };
    let on_commit = {
        let runtime = runtime.clone();
        Box::new(move |batch| {
            if let Ok(mut rt) = runtime.lock() {
                rt.push(batch);
            }
        })
    };
    drop(runtime);
    let (ingest, writer) = Ingest::start(store.clone(), progress.clone(), recovery, on_commit);

    // Connectors: sources feed the writer like HTTP does; the sink follows the snapshots.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let (sink_shutdown_tx, sink_shutdown_rx) = tokio::sync::watch::channel(false);
    let positions = store.source_positions()?;
    let kafka = match config.sources.kafka.clone() {
        Some(k) => {
            let s = snapshots.clone();
            let visible: Arc<dyn Fn() -> Epoch + Send + Sync> =
                Arc::new(move || (0..s.len()).map(|v| s.snapshot(v).as_of).min().unwrap_or(Epoch::MAX));
            let source =
                KafkaSource::start(k, ingest.clone(), positions.clone(), visible, tokio::runtime::Handle::current())
                    .context("cannot start the Kafka source")?;
            Some(source)
        }
        None => None,
    };
    let outbox = config.sources.postgres_outbox.clone().map(|o| {
        let start = positions.get(&vitalflow_ingest::outbox::position_key(&o.table)).copied().unwrap_or(0);
        vitalflow_ingest::outbox::spawn(o, ingest.clone(), start, shutdown_rx.clone())
    });
    let store_id = store.store_id()?;
    let sink = config
        .sinks
        .postgres
        .clone()
        .map(|p| vitalflow_serve::pg_sink::spawn(p, snapshots.clone(), store_id, sink_shutdown_rx));

    let ready_task = {
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            for view in 0..snapshots.len() {
                let mut rx = snapshots.watch(view);
                let _ = rx.wait_for(|e| *e >= recovered_epoch).await;
            }
            snapshots.set_ready();
            tracing::info!(epoch = recovered_epoch, "recovery finished; ready");
        })
    };

    let serve_config = ServeConfig {
        sql_row_limit: config.sql_row_limit,
        sql_timeout: Duration::from_millis(config.sql_timeout_ms),
        ..ServeConfig::default()
    };
    let freshness: Arc<dyn Freshness> = Arc::new(IngestFreshness {
        progress: progress.clone(),
        kafka: kafka.as_ref().map(KafkaSource::status_handle),
        outbox: outbox.as_ref().map(|(s, _)| s.clone()),
        sink: sink.as_ref().map(|(s, _)| s.clone()),
    });
    let app = vitalflow_ingest::http::router(ingest.clone(), config.max_body_bytes)
        .merge(vitalflow_serve::http::router(snapshots.clone(), freshness, serve_config))
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error")
        }));

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, workers = config.workers, data_dir = %config.data_dir.display(), "vitalflow serving");
    println!("vitalflow listening on http://{addr}");

    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("HTTP drained; flushing");
    ready_task.abort();
    // Sources stop taking input (their last commits finish), dropping their Ingest handles.
    let _ = shutdown_tx.send(true);
    if let Some((_, task)) = outbox {
        let _ = task.await;
    }
    if let Some(k) = kafka {
        tokio::task::spawn_blocking(move || k.stop()).await?;
    }
    drop(ingest);
    // The router (and its Ingest handles) is gone: the writer drains its queue and exits, dropping
    // the runtime, whose workers drain and close the applier's channel.
    tokio::task::spawn_blocking(move || {
        let _ = writer.join();
        let _ = applier.join();
    })
    .await?;
    // The sink writes what was published last (bounded: Postgres may be away).
    let _ = sink_shutdown_tx.send(true);
    if let Some((_, task)) = sink {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Replays the durable state into the dataflow at the recovered epoch, in bounded chunks.
fn recover(store: &Store, runtime: &Mutex<Runtime>, epoch: Epoch) {
    let Ok(mut rt) = runtime.lock() else { return };
    let started = std::time::Instant::now();
    let result = store.scan_samples(RECOVERY_CHUNK, |chunk| {
        rt.push_changes(epoch, chunk.into_iter().map(|s| Change::Sample(s, 1)).collect());
    });
    let records = (|| -> Result<Vec<Change>, vitalflow_ingest::store::StoreError> {
        let mut changes: Vec<Change> = store.profiles()?.into_iter().map(|p| Change::Profile(p, 1)).collect();
        changes.extend(store.sessions()?.into_iter().map(|s| Change::Session(s, 1)));
        changes.extend(store.products()?.into_iter().map(|p| Change::Product(p, 1)));
        Ok(changes)
    })();
    match records {
        Ok(changes) => rt.push_changes(epoch, changes),
        Err(e) => tracing::error!(error = %e, "cannot read domain records during recovery"),
    }
    rt.advance(epoch + 1);
    match result {
        Ok(n) => tracing::info!(
            samples = n,
            epoch,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "durable state replayed"
        ),
        Err(e) => tracing::error!(error = %e, "recovery scan failed"),
    }
}

fn json_error(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    (status, axum::Json(ErrorBody { code: code.into(), message: message.into() })).into_response()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}
