//! The composition root: the one place where the store, the dataflow runtime, the snapshot store
//! and HTTP are built, wired together, and shut down again in reverse order.
//!
//! Start: open store → start workers and the snapshot applier → writer thread (first replays the
//! durable state into the dataflow, then commits requests) → HTTP. `/readyz` turns ready once every
//! view reflects the recovered epoch.
//! Stop (SIGINT/SIGTERM): HTTP drains in-flight requests → writer finishes its queue → workers
//! drain → applier publishes the last updates → exit 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use vitalflow_dataflows::{Elapsed, Runtime, RuntimeHealth, RuntimeOptions, ViewProgress};
use vitalflow_ingest::kafka::{KafkaSource, KafkaStatus};
use vitalflow_ingest::outbox::OutboxStatus;
use vitalflow_ingest::writer::IngestOptions;
use vitalflow_ingest::{Ingest, IngestProgress, Startup, Store};
use vitalflow_schemas::wire::ErrorBody;
use vitalflow_schemas::{Change, Epoch};
use vitalflow_serve::persist::{Loaded, Persister};
use vitalflow_serve::pg_sink::SinkStatus;
use vitalflow_serve::{Freshness, ServeConfig, SnapshotStore};

use crate::config::Config;

/// Samples fed to the dataflow per message during recovery (split among the workers). Within a
/// step recovery outruns the workers, so their queues fill: at 64 bytes per queued sample, each
/// worker's queue holds up to `WORKER_QUEUE` (256) × 2,048 / workers samples (16 MiB with two).
const RECOVERY_CHUNK: usize = 2_048;

/// Views' progress messages queued from the dataflow to the snapshot applier before worker 0
/// waits (the channel is bounded).
const APPLIER_QUEUE: usize = 1024;

/// Exit code after a fatal component failure (EX_SOFTWARE), so that a supervisor restarts us.
pub const EXIT_COMPONENT_FAILED: i32 = 70;
/// Exit code when the store cannot be recovered (EX_DATAERR).
pub const EXIT_RECOVERY_FAILED: i32 = 65;

/// The long-running components whose death makes vitalflow unhealthy, and the fault hooks tests
/// use to kill them (`VITALFLOW_FAULT_INJECTION=1` enables `POST /v1/_faults/{component}`).
struct Components {
    ingest: Ingest,
    workers: RuntimeHealth,
    applier_alive: Arc<AtomicBool>,
    applier_fault: Arc<AtomicBool>,
    runtime: Arc<Mutex<Runtime>>,
    /// The workers' time per view (`vitalflow_dataflow_elapsed_seconds`) and the slow epochs
    /// (`vitalflow_dataflow_slow_epochs_total`), kept while `slow_epoch_ms` > 0.
    elapsed: Option<Elapsed>,
    stopping: AtomicBool,
    /// Set when a stop request ended recovery early: the writer then ends without having failed.
    recovery_stopped: Arc<AtomicBool>,
    /// Names of the failed components, as `/readyz` reports them.
    failed: parking_lot::RwLock<Vec<&'static str>>,
}

impl Components {
    fn check(&self) -> Vec<&'static str> {
        if self.stopping.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let mut failed = Vec::new();
        if !self.ingest.is_alive() && !self.recovery_stopped.load(Ordering::SeqCst) {
            failed.push("writer");
        }
        if !self.workers.is_healthy() {
            failed.push("dataflow-worker");
        }
        if !self.applier_alive.load(Ordering::SeqCst) {
            failed.push("snapshot-applier");
        }
        failed
    }
}

/// What the read API is told about ingestion, the connectors and component health.
struct IngestFreshness {
    progress: Arc<IngestProgress>,
    components: Arc<Components>,
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
    fn failed_components(&self) -> Vec<&'static str> {
        self.components.failed.read().clone()
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
pub async fn serve(config: Config, tls: Option<tokio_rustls::TlsAcceptor>) -> anyhow::Result<()> {
    // Latencies as Prometheus histograms (buckets from 0.5 ms to 60 s), not summaries: they
    // aggregate across instances and give quantiles over any window. 2 ms and 50 ms are bucket
    // bounds because they are the point-read and freshness targets (issue 14).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0])
        .context("histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    // The counters operators alert on exist from the start, at 0, so a scrape (or an alert rule)
    // finds them before their first increment.
    for component in ["http", "sql", "writer"] {
        metrics::counter!("vitalflow_panics_caught_total", "component" => component).increment(0);
    }
    for name in [
        "vitalflow_snapshot_persist_errors_total",
        "vitalflow_http_tls_handshake_failures_total",
        "vitalflow_http_idle_connections_closed_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    vitalflow_ingest::configure_limits(config.limits.clone());
    let store = Arc::new(
        Store::open_with_cache(&config.data_dir, config.store_cache_mb.saturating_mul(1 << 20))
            .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))?,
    );
    let recovered_epoch = store.last_epoch()?;
    let progress = Arc::new(IngestProgress::new(recovered_epoch, store.user_epochs()?));

    let views = vitalflow_dataflows::select(config.views.as_deref()).map_err(anyhow::Error::msg)?;
    let snapshots = Arc::new(SnapshotStore::new(views.iter().map(|v| v.def)));
    snapshots.set_recovery_epoch(recovered_epoch);
    // Persisted snapshots are loaded before the dataflow starts replaying: reads are served from
    // them within seconds, stamped with their own asOfEpoch (issue 14 §3).
    let persister = match config.snapshot_persist_secs {
        0 => None,
        _ => Some(Arc::new(
            Persister::new(config.data_dir.join("snapshots"), store.store_id()?)
                .context("cannot create the snapshot directory")?,
        )),
    };
    if let Some(p) = &persister {
        let started = std::time::Instant::now();
        for (view, loaded) in p.load(&snapshots, recovered_epoch, store.last_erasure_epoch()?) {
            match loaded {
                Loaded::Served { as_of, rows } => tracing::info!(view, as_of, rows, "persisted snapshot loaded"),
                Loaded::Missing => tracing::info!(view, "no persisted snapshot; the view waits for rehydration"),
                Loaded::Unusable(why) => {
                    tracing::warn!(view, why, "persisted snapshot not used; the view waits for rehydration")
                }
            }
        }
        tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "persisted snapshots read");
    }
    let (out_tx, out_rx) = crossbeam_channel::bounded::<ViewProgress>(APPLIER_QUEUE);
    let options = RuntimeOptions {
        slow_epoch: (config.slow_epoch_ms > 0).then(|| Duration::from_millis(config.slow_epoch_ms)),
        // At most 2²⁰: differential turns the effort into a spine level, and levels past 32 only
        // print warnings; a million updates per activation is already a whole merge.
        idle_merge_effort: (config.idle_merge_effort > 0)
            .then(|| usize::try_from(config.idle_merge_effort.min(1 << 20)).unwrap_or(1 << 20)),
    };
    let runtime = Runtime::start_with(config.workers, views, out_tx, options).map_err(anyhow::Error::msg)?;
    let elapsed = runtime.elapsed();
    let workers = runtime.health();
    let applier_alive = Arc::new(AtomicBool::new(true));
    let applier_fault = Arc::new(AtomicBool::new(false));
    let applier = {
        let snapshots = snapshots.clone();
        let progress = progress.clone();
        let alive = applier_alive.clone();
        let fault = applier_fault.clone();
        std::thread::Builder::new().name("vitalflow-snapshots".into()).spawn(move || {
            struct Alive(Arc<AtomicBool>);
            impl Drop for Alive {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        self.0.store(false, Ordering::SeqCst);
                    }
                }
            }
            let _alive = Alive(alive);
            // Each view's frontier so far: the epochs a new frontier passes became visible now.
            let mut frontiers: Vec<Epoch> = vec![0; snapshots.len()];
            loop {
                if fault.load(Ordering::SeqCst) {
                    panic!("injected fault: snapshot applier");
                }
                match out_rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(p) => {
                        let started = std::time::Instant::now();
                        let name = snapshots.def(p.view).name;
                        let seen = frontiers.get(p.view).copied().unwrap_or(p.frontier);
                        let commits = commit_times(&progress, seen, p.frontier);
                        record_since(&commits, "vitalflow_view_computed_seconds", name);
                        snapshots.apply(
                            p.view,
                            p.frontier,
                            p.updates.into_iter().map(|(row, _, diff)| (row, diff)).collect(),
                        );
                        // Recovery's internal times publish nothing (ADR 0014).
                        if p.frontier > recovered_epoch {
                            metrics::histogram!("vitalflow_snapshot_publish_seconds", "view" => name)
                                .record(started.elapsed().as_secs_f64());
                        }
                        record_since(&commits, "vitalflow_view_visible_seconds", name);
                        if let Some(seen) = frontiers.get_mut(p.view) {
                            *seen = (*seen).max(p.frontier);
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            }
        })?
    };

    let runtime = Arc::new(Mutex::new(runtime));
    // Set when SIGINT or SIGTERM arrives: a recovery still replaying the store gives up within a
    // chunk (the store is only read, so the next start replays it from the beginning) instead of
    // holding the stop back until the whole history is replayed.
    let stop_requested = Arc::new(AtomicBool::new(false));
    let recovery_stopped = Arc::new(AtomicBool::new(false));
    let (recovery_tx, recovery_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let recovery = {
        let (store, runtime, stopping, stopped) =
            (store.clone(), runtime.clone(), stop_requested.clone(), recovery_stopped.clone());
        let samples_per_time = match config.recovery_step_samples {
            0 => usize::MAX,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        // Test-only (`VITALFLOW_FAULT_INJECTION=1`): `VITALFLOW_FAULT_RECOVERY_DELAY_MS` holds
        // recovery back before its first sample (a stop request ends the hold), so that tests can
        // read what is served before the views are rehydrated, and stop a replay under way.
        let delay = std::env::var("VITALFLOW_FAULT_RECOVERY_DELAY_MS")
            .ok()
            .filter(|_| std::env::var_os("VITALFLOW_FAULT_INJECTION").is_some_and(|v| v == "1"))
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        Box::new(move || {
            let result = recover(&store, &runtime, recovered_epoch, samples_per_time, delay, &stopping);
            // A stopped recovery sends nothing: the readiness task sees the writer end (shutdown).
            match &result {
                Ok(Startup::Ready) => {
                    let _ = recovery_tx.send(Ok(()));
                }
                Ok(Startup::Stopped) => stopped.store(true, Ordering::SeqCst),
                Err(e) => {
                    let _ = recovery_tx.send(Err(e.clone()));
                }
            }
            result
        })
    };
    let on_commit = {
        let runtime = runtime.clone();
        Box::new(move |batch| {
            // What a commit's acknowledgements and visibility wait for after the fsync: interning
            // and handing the epoch to the workers' queues (`vitalflow_dataflow_push_seconds`).
            let pushing = std::time::Instant::now();
            let taken = match runtime.lock() {
                Ok(mut rt) => match rt.push(batch) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot hand a committed epoch to the dataflow");
                        false
                    }
                },
                Err(_) => false,
            };
            metrics::histogram!("vitalflow_dataflow_push_seconds").record(pushing.elapsed().as_secs_f64());
            taken
        })
    };
    let visible_epoch: Arc<dyn Fn() -> Epoch + Send + Sync> = {
        let s = snapshots.clone();
        Arc::new(move || (0..s.len()).map(|v| s.snapshot(v).as_of).min().unwrap_or(Epoch::MAX))
    };
    let healthy: Arc<dyn Fn() -> bool + Send + Sync> = {
        let (workers, applier_alive) = (workers.clone(), applier_alive.clone());
        Arc::new(move || workers.is_healthy() && applier_alive.load(Ordering::SeqCst))
    };
    let options = IngestOptions {
        queue_bytes: config.server.writer_queue_bytes,
        max_lag_epochs: config.server.max_view_lag_epochs,
        max_lag: Duration::from_millis(config.server.max_view_lag_ms),
        visible_epoch: visible_epoch.clone(),
        healthy,
        user_requests_per_sec: config.server.user_requests_per_sec,
        user_burst: config.server.user_burst,
        retention: Duration::from_secs(config.server.retention_days.saturating_mul(86_400)),
        before_erase: match &persister {
            Some(p) => {
                let p = p.clone();
                Arc::new(move |epoch| p.invalidate(epoch))
            }
            None => Arc::new(|_| Ok(())),
        },
    };
    let (ingest, writer) = Ingest::start(store.clone(), progress.clone(), recovery, on_commit, options);
    let components = Arc::new(Components {
        ingest: ingest.clone(),
        workers,
        applier_alive,
        applier_fault,
        runtime: runtime.clone(),
        elapsed,
        stopping: AtomicBool::new(false),
        recovery_stopped: recovery_stopped.clone(),
        failed: parking_lot::RwLock::new(Vec::new()),
    });
    drop(runtime);

    // Connectors: sources feed the writer like HTTP does; the sink follows the snapshots.
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let (sink_shutdown_tx, sink_shutdown_rx) = tokio::sync::watch::channel(false);
    let positions = store.source_positions()?;
    let kafka = match config.sources.kafka.clone() {
        Some(k) => {
            let source = KafkaSource::start(
                k,
                ingest.clone(),
                positions.clone(),
                visible_epoch.clone(),
                tokio::runtime::Handle::current(),
            )
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

    let persist_task = persister.clone().map(|p| {
        let (snapshots, every) = (snapshots.clone(), Duration::from_secs(config.snapshot_persist_secs));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if snapshots.is_ready() {
                    persist_round(p.clone(), snapshots.clone()).await;
                }
            }
        })
    });
    let ready_task = {
        let snapshots = snapshots.clone();
        tokio::spawn(async move {
            // Fail closed: a recovery that cannot read the store stops the process, never "ready"
            // with partial views.
            match recovery_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "recovery failed; vitalflow stops (the store is left as it is)");
                    eprintln!("vitalflow: recovery failed: {e}");
                    std::process::exit(EXIT_RECOVERY_FAILED);
                }
                Err(_) => return, // the writer ended before recovery (shutdown)
            }
            // The live snapshots, not persisted ones: ready means rehydrated.
            for view in 0..snapshots.len() {
                let mut rx = snapshots.watch(view);
                let _ = rx.wait_for(|_| snapshots.live_snapshot(view).as_of >= recovered_epoch).await;
            }
            snapshots.set_ready();
            tracing::info!(epoch = recovered_epoch, "recovery finished; ready");
        })
    };

    let sql = vitalflow_serve::sql::SqlLimits {
        row_limit: config.sql_row_limit,
        timeout: Duration::from_millis(config.sql_timeout_ms),
        max_result_bytes: config.sql.max_result_bytes,
        memory_limit_bytes: config.sql.memory_limit_bytes,
        max_value_bytes: config.sql.max_value_bytes,
        max_concurrent: config.sql.max_concurrent,
        threads: config.sql.threads,
        max_sql_bytes: config.sql.max_sql_bytes,
    };
    let serve_config = ServeConfig { sql, max_read_rows: config.server.max_read_rows, ..ServeConfig::default() };
    let freshness: Arc<dyn Freshness> = Arc::new(IngestFreshness {
        progress: progress.clone(),
        components: components.clone(),
        kafka: kafka.as_ref().map(KafkaSource::status_handle),
        outbox: outbox.as_ref().map(|(s, _)| s.clone()),
        sink: sink.as_ref().map(|(s, _)| s.clone()),
    });
    let supervisor = tokio::spawn(supervise(
        components.clone(),
        snapshots.clone(),
        freshness.clone(),
        Duration::from_millis(config.server.fatal_exit_grace_ms),
    ));
    let mut app = vitalflow_ingest::http::router(ingest.clone(), config.max_body_bytes)
        .merge(vitalflow_serve::http::router(snapshots.clone(), freshness, serve_config)?)
        .route("/metrics", axum::routing::get(move |caller| metrics_endpoint(caller, prometheus.clone())));
    if std::env::var_os("VITALFLOW_FAULT_INJECTION").is_some_and(|v| v == "1") {
        tracing::warn!("fault injection is enabled (VITALFLOW_FAULT_INJECTION=1): test use only");
        app = app.route("/v1/_faults/{component}", axum::routing::post(inject_fault).with_state(components.clone()));
    }
    // Every route but /healthz and /readyz needs a token in auth mode jwt (docs/security.md).
    let auth = Arc::new(crate::auth::Auth::load(&config.auth).await?);
    let app = app
        .fallback(|| async { json_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .layer(axum::middleware::from_fn_with_state(auth, crate::auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(RequestLimits::new(&config.server, config.max_body_bytes)),
            limit_requests,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            metrics::counter!("vitalflow_panics_caught_total", "component" => "http").increment(1);
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal error")
        }));

    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // The handlers are installed before the address is printed: whoever learns the address and
    // sends SIGTERM gets the graceful stop, not the default action.
    let shutdown = {
        let (signal, stopping) = (shutdown_signal()?, stop_requested.clone());
        async move {
            signal.await;
            stopping.store(true, Ordering::SeqCst);
        }
    };
    tracing::info!(%addr, workers = config.workers, data_dir = %config.data_dir.display(), "vitalflow serving");
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("vitalflow listening on {scheme}://{addr}");

    let limits = crate::server::ConnLimits {
        max_connections: config.server.max_connections,
        header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
        write_timeout: Duration::from_millis(config.server.request_timeout_ms),
        drain_timeout: Duration::from_secs(30),
    };
    crate::server::serve(listener, app, tls, limits, shutdown).await;
    tracing::info!("HTTP drained; flushing");
    components.stopping.store(true, Ordering::SeqCst);
    supervisor.abort();
    let _ = supervisor.await;
    ready_task.abort();
    if let Some(t) = &persist_task {
        t.abort();
    }
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
    // the runtime, whose workers drain and close the applier's channel. After a stopped recovery
    // the writer holds no runtime and `components` may be its last holder: dropping it joins the
    // workers, so it is dropped off the async threads.
    tokio::task::spawn_blocking(move || {
        drop(components);
        let _ = writer.join();
        let _ = applier.join();
    })
    .await?;
    // The views as they stand are persisted, so that the next start serves them at once.
    if let Some(p) = persister.filter(|_| snapshots.is_ready()) {
        persist_round(p, snapshots.clone()).await;
    }
    // The sink writes what was published last (bounded: Postgres may be away).
    let _ = sink_shutdown_tx.send(true);
    if let Some((_, task)) = sink {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// One round of snapshot persistence on the blocking pool, logged and counted (its duration as
/// the histogram `vitalflow_snapshot_persist_seconds`). A failure is not fatal: the previous
/// files stay, and only the next start's rehydration takes longer.
async fn persist_round(p: Arc<Persister>, s: Arc<SnapshotStore>) {
    let started = std::time::Instant::now();
    match tokio::task::spawn_blocking(move || p.persist(&s)).await {
        Ok(Ok(written)) => {
            if written > 0 {
                let took = started.elapsed();
                metrics::histogram!("vitalflow_snapshot_persist_seconds").record(took.as_secs_f64());
                tracing::debug!(views = written, elapsed_ms = took.as_millis() as u64, "view snapshots persisted");
            }
        }
        Ok(Err(e)) => {
            metrics::counter!("vitalflow_snapshot_persist_errors_total").increment(1);
            tracing::error!(error = %e, "cannot persist a view snapshot; the previous file stays");
        }
        Err(e) => {
            metrics::counter!("vitalflow_snapshot_persist_errors_total").increment(1);
            tracing::error!(error = %e, "the snapshot persistence task failed");
        }
    }
}

/// Watches the components every 250 ms and publishes the operators' gauges. A failed component
/// turns `/readyz` and `/healthz` to 503 at once (and ingestion answers 503); after `grace` the
/// process exits with [`EXIT_COMPONENT_FAILED`] so that a supervisor restarts it (recovery
/// rebuilds every view from the store).
async fn supervise(
    components: Arc<Components>,
    snapshots: Arc<SnapshotStore>,
    freshness: Arc<dyn Freshness>,
    grace: Duration,
) {
    let mut failing_since: Option<std::time::Instant> = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    loop {
        ticker.tick().await;
        let failed = components.check();
        for (name, up) in [
            ("writer", !failed.contains(&"writer")),
            ("dataflow-worker", !failed.contains(&"dataflow-worker")),
            ("snapshot-applier", !failed.contains(&"snapshot-applier")),
        ] {
            metrics::gauge!("vitalflow_component_up", "component" => name).set(if up { 1.0 } else { 0.0 });
        }
        let latest = freshness.latest_epoch();
        metrics::gauge!("vitalflow_epoch_latest").set(latest as f64);
        connector_gauges(&freshness.sources(), &freshness.sinks());
        metrics::gauge!("vitalflow_epoch_durable").set(latest as f64);
        metrics::gauge!("vitalflow_writer_queue_bytes").set(components.ingest.queued_bytes() as f64);
        metrics::gauge!("vitalflow_writer_queue_requests").set(components.ingest.queued_requests() as f64);
        let now = SystemTime::now();
        for v in 0..snapshots.len() {
            let name = snapshots.def(v).name;
            let as_of = snapshots.snapshot(v).as_of;
            metrics::gauge!("vitalflow_view_as_of_epoch", "view" => name).set(as_of as f64);
            let lag = if as_of >= latest {
                0.0
            } else {
                freshness
                    .committed_at(as_of + 1)
                    .and_then(|t| now.duration_since(t).ok())
                    .map_or(0.0, |d| d.as_secs_f64())
            };
            metrics::gauge!("vitalflow_view_lag_seconds", "view" => name).set(lag);
        }
        if let Some(rss) = resident_bytes() {
            metrics::gauge!("vitalflow_process_resident_memory_bytes").set(rss as f64);
        }
        metrics::gauge!("vitalflow_dataflow_interned_names").set(vitalflow_dataflows::Name::interned() as f64);
        if let Some(elapsed) = &components.elapsed {
            for (account, spent) in elapsed.accounts() {
                metrics::gauge!("vitalflow_dataflow_elapsed_seconds", "view" => account).set(spent.as_secs_f64());
            }
            metrics::counter!("vitalflow_dataflow_slow_epochs_total").absolute(elapsed.slow_epochs());
            for a in elapsed.arrangements() {
                let labels =
                    [("view", a.view.to_owned()), ("operator", a.operator), ("operator_id", a.operator_id.to_string())];
                metrics::gauge!("vitalflow_arrangement_records", &labels).set(a.records as f64);
                metrics::gauge!("vitalflow_arrangement_batcher_records", &labels).set(a.batcher_records as f64);
            }
        }
        if failed.is_empty() {
            failing_since = None;
            components.failed.write().clear();
            continue;
        }
        if failing_since.is_none() {
            tracing::error!(components = ?failed, grace_ms = grace.as_millis() as u64,
                "a component has failed: not ready, ingestion refused; exiting after the grace period");
        }
        *components.failed.write() = failed.clone();
        let since = *failing_since.get_or_insert_with(std::time::Instant::now);
        if since.elapsed() >= grace {
            tracing::error!(components = ?failed, "exiting so that a supervisor restarts vitalflow");
            eprintln!("vitalflow: component failed: {}", failed.join(", "));
            std::process::exit(EXIT_COMPONENT_FAILED);
        }
    }
}

/// Connector positions and lag as gauges (from what `/v1/frontiers` shows): Kafka partitions
/// (labels `topic`, `partition`), the outbox, and each Postgres sink view's lag in epochs.
fn connector_gauges(sources: &serde_json::Value, sinks: &serde_json::Value) {
    for p in sources["kafka"]["partitions"].as_array().into_iter().flatten() {
        let labels = [
            ("topic", p["topic"].as_str().unwrap_or("").to_owned()),
            ("partition", p["partition"].as_i64().unwrap_or(-1).to_string()),
        ];
        let num = |k: &str| p[k].as_f64().unwrap_or(0.0);
        metrics::gauge!("vitalflow_kafka_stored_offset", &labels).set(num("storedOffset"));
        metrics::gauge!("vitalflow_kafka_high_watermark", &labels).set(num("highWatermark"));
        metrics::gauge!("vitalflow_kafka_lag_records", &labels).set(num("lag"));
    }
    let outbox = &sources["postgresOutbox"];
    if outbox.is_object() {
        metrics::gauge!("vitalflow_outbox_stored_id").set(outbox["storedId"].as_f64().unwrap_or(0.0));
        metrics::gauge!("vitalflow_outbox_lag_rows").set(outbox["lag"].as_f64().unwrap_or(0.0));
    }
    for v in sinks["postgres"]["views"].as_array().into_iter().flatten() {
        let view = v["name"].as_str().unwrap_or("").to_owned();
        metrics::gauge!("vitalflow_sink_lag_epochs", "view" => view).set(v["lagEpochs"].as_f64().unwrap_or(0.0));
    }
}

/// The process's resident set size, from `/proc/self/statm` (Linux).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// `GET /metrics`: Prometheus text format (needs the `ops` scope under JWT).
async fn metrics_endpoint(
    caller: Option<axum::Extension<vitalflow_schemas::auth::Caller>>,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> axum::response::Response {
    if caller.is_some_and(|c| !c.may_operate()) {
        return json_error(StatusCode::FORBIDDEN, "FORBIDDEN", "/metrics needs the ops scope");
    }
    handle.run_upkeep();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// Test-only (`VITALFLOW_FAULT_INJECTION=1`): `worker` makes a dataflow worker panic,
/// `applier` the snapshot applier.
async fn inject_fault(
    axum::extract::State(components): axum::extract::State<Arc<Components>>,
    axum::extract::Path(component): axum::extract::Path<String>,
) -> axum::response::Response {
    match component.as_str() {
        "worker" => {
            if let Ok(rt) = components.runtime.lock() {
                rt.inject_fault();
            }
        }
        "applier" => components.applier_fault.store(true, Ordering::SeqCst),
        _ => return json_error(StatusCode::NOT_FOUND, "NOT_FOUND", "components: worker, applier"),
    }
    tracing::warn!(component = %component, "fault injected");
    (StatusCode::ACCEPTED, axum::Json(serde_json::json!({"injected": component}))).into_response()
}

/// Request-level limits applied to every route: a cap on requests in flight (503 `OVERLOADED`
/// beyond it) and a request timeout (408 `REQUEST_TIMEOUT`, which covers reading a slow body).
/// Also counts requests by route template and status, with a latency histogram.
struct RequestLimits {
    in_flight: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    /// Bytes of request bodies being received or parsed at once (`server.max_buffered_body_bytes`).
    bodies: Arc<tokio::sync::Semaphore>,
    /// A body without `Content-Length` is charged this much (`max_body_bytes`).
    unknown_body: u32,
}

impl RequestLimits {
    fn new(c: &crate::config::ServerLimits, max_body_bytes: usize) -> Self {
        let budget = c.max_buffered_body_bytes.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        RequestLimits {
            in_flight: Arc::new(tokio::sync::Semaphore::new(c.max_in_flight.max(1))),
            timeout: Duration::from_millis(c.request_timeout_ms),
            bodies: Arc::new(tokio::sync::Semaphore::new(budget)),
            unknown_body: u32::try_from(max_body_bytes.min(budget)).unwrap_or(u32::MAX),
        }
    }

    /// The body budget for `req`: its declared length (capped at the budget), or the largest
    /// body when it declares none; `None` for requests without a body.
    fn body_charge(&self, req: &axum::extract::Request) -> Option<u32> {
        let declared = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match declared {
            Some(0) => None,
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX).min(self.unknown_body.max(1))),
            None if matches!(*req.method(), axum::http::Method::POST | axum::http::Method::PUT) => {
                Some(self.unknown_body.max(1))
            }
            None => None,
        }
    }
}

/// An error the framework answered itself (a path that is not UTF-8, a wrong method, a body
/// over the limit) in plain text: the same answer as JSON with a stable code, like every other
/// refusal.
async fn with_json_error_body(response: axum::response::Response) -> axum::response::Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status {
        StatusCode::BAD_REQUEST => "INVALID_REQUEST",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        StatusCode::REQUEST_TIMEOUT => "REQUEST_TIMEOUT",
        _ if status.is_server_error() => "INTERNAL",
        _ => "INVALID_REQUEST",
    };
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text).trim().to_owned();
    let message = if message.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { message };
    let mut r = json_error(status, code, &message);
    for name in [axum::http::header::ALLOW, axum::http::header::RETRY_AFTER, axum::http::header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            r.headers_mut().insert(name, v.clone());
        }
    }
    r
}

async fn limit_requests(
    axum::extract::State(limits): axum::extract::State<Arc<RequestLimits>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    // Every answer, a refusal here too, is counted and timed below.
    let response = 'answer: {
        // Bodies are JSON as sent: a compressed one would be read as garbage (415, not 400).
        if let Some(enc) = req.headers().get(axum::http::header::CONTENT_ENCODING)
            && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
        {
            break 'answer json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_CONTENT_ENCODING",
                "request bodies must not be compressed (Content-Encoding: identity)",
            );
        }
        // Probes and scrapes are cheap and must answer while the API is saturated (a liveness probe
        // that sees 503 would restart a healthy process): outside the in-flight cap.
        let exempt = matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics");
        let permit = if exempt { Ok(None) } else { limits.in_flight.clone().try_acquire_owned().map(Some) };
        // Bodies being received count against one budget: 512 slow uploads of 8 MiB must not hold
        // 4 GiB (each route's body limit still applies on its own).
        let body = match limits.body_charge(&req) {
            None => Ok(None),
            Some(n) => limits.bodies.clone().try_acquire_many_owned(n).map(Some),
        };
        let permit = match (permit, body) {
            (Ok(p), Ok(b)) => Ok((p, b)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match permit {
            Err(_) => {
                let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED", "too many requests in flight");
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
                r
            }
            Ok(_permit) => match tokio::time::timeout(limits.timeout, next.run(req)).await {
                Ok(r) => r,
                Err(_) => json_error(StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT", "the request took too long"),
            },
        }
    };
    let mut response = with_json_error_body(response).await;
    let status = response.status().as_u16().to_string();
    let seconds = started.elapsed().as_secs_f64();
    metrics::counter!("vitalflow_http_requests_total", "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("vitalflow_http_request_duration_seconds", "route" => route).record(seconds);
    // The same time on the answer itself (W3C Server Timing, milliseconds), so that a client can
    // tell the server's share of a latency from the network's and its own queue's.
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("app;dur={:.3}", seconds * 1000.0)) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

/// The durable-commit instants of the epochs a frontier move from `from` to `to` completes
/// (`[from, to)`). Epochs whose commit time is not remembered (recovered ones, or older than the
/// last 100,000 commits) are skipped, and a move over more than 10,000 epochs gives only its last
/// 10,000.
fn commit_times(progress: &IngestProgress, from: Epoch, to: Epoch) -> Vec<SystemTime> {
    // At shutdown a frontier jumps past every epoch: only committed epochs can have become visible.
    let to = to.min(progress.latest_epoch().saturating_add(1));
    (from.max(to.saturating_sub(10_000))..to).filter_map(|epoch| progress.committed_at(epoch)).collect()
}

/// Records histogram `metric` for `view`: the time from each of `commits` to now. The applier
/// records `vitalflow_view_computed_seconds` when the dataflow's output for the epochs arrives and
/// `vitalflow_view_visible_seconds` once the snapshot holding them is published; the difference
/// is the applier's queue and publish.
fn record_since(commits: &[SystemTime], metric: &'static str, view: &'static str) {
    let now = SystemTime::now();
    for waited in commits.iter().filter_map(|t| now.duration_since(*t).ok()) {
        metrics::histogram!(metric, "view" => view).record(waited.as_secs_f64());
    }
}

/// Replays the durable state into the dataflow, in bounded chunks, through internal times that
/// end at the recovered epoch (ADR 0014): sessions, products and profiles first, then the samples
/// in the store's order (by user), closing an internal time every `samples_per_time` samples.
///
/// Errors: any store read or decode error, or a dataflow that cannot take the records; the
/// caller stops the process (fail closed).
///
/// `Ok(Startup::Stopped)` when `stopping` is set before the samples are all read (checked every
/// [`RECOVERY_CHUNK`] samples): the replay is given up, and the writer must take no request.
/// `hold` (tests only) waits that long, or until `stopping`, before the first sample.
fn recover(
    store: &Store,
    runtime: &Mutex<Runtime>,
    epoch: Epoch,
    samples_per_time: usize,
    hold: Option<Duration>,
    stopping: &AtomicBool,
) -> Result<Startup, String> {
    let mut rt = runtime.lock().map_err(|_| "the dataflow runtime lock is poisoned".to_owned())?;
    let started = std::time::Instant::now();
    let mut changes: Vec<Change> = store
        .profiles()
        .map_err(|e| format!("cannot read the stored profiles: {e}"))?
        .into_iter()
        .map(|p| Change::Profile(p, 1))
        .collect();
    changes.extend(
        store
            .sessions()
            .map_err(|e| format!("cannot read the stored sessions: {e}"))?
            .into_iter()
            .map(|s| Change::Session(s, 1)),
    );
    changes.extend(
        store
            .products()
            .map_err(|e| format!("cannot read the stored products: {e}"))?
            .into_iter()
            .map(|p| Change::Product(p, 1)),
    );
    let mut feed = rt.recovery_feed(epoch, RECOVERY_CHUNK, samples_per_time);
    let first_time = feed.time();
    feed.push_changes(changes).map_err(|e| e.to_string())?;
    if let Some(d) = hold {
        tracing::warn!(delay_ms = d.as_millis() as u64, "fault injected: recovery held before the samples");
        let until = std::time::Instant::now() + d;
        while std::time::Instant::now() < until && !stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut sent: u64 = 0;
    let mut stopped = false;
    let scanned = store.scan_samples(|s| {
        if sent % RECOVERY_CHUNK as u64 == 0 && stopping.load(Ordering::Relaxed) {
            stopped = true;
            return Err("shutdown requested".to_owned());
        }
        feed.push(s).map_err(|e| e.to_string())?;
        sent += 1;
        if sent % 100_000 == 0 {
            metrics::gauge!("vitalflow_recovery_replayed_samples").set(sent as f64);
        }
        Ok(())
    });
    if stopped {
        // Nothing partial is served or written: the views hold back their states until a
        // frontier passes the recovered epoch, the writer ends before taking a request, and the
        // persister and the Postgres sink write only views that became ready.
        tracing::warn!(
            replayed_samples = sent,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shutdown requested during recovery: stopping before the replay finished (recovery only reads the store; the next start replays it whole)"
        );
        return Ok(Startup::Stopped);
    }
    let samples = scanned.map_err(|e| format!("cannot read the stored samples: {e}"))?;
    metrics::gauge!("vitalflow_recovery_replayed_samples").set(samples as f64);
    let last_time = feed.finish().map_err(|e| e.to_string())?;
    rt.advance(epoch + 1).map_err(|e| e.to_string())?;
    tracing::info!(
        samples,
        epoch,
        internal_times = last_time - first_time + 1,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "durable state replayed"
    );
    Ok(Startup::Ready)
}

fn json_error(status: StatusCode, code: &str, message: &str) -> axum::response::Response {
    (status, axum::Json(ErrorBody { code: code.into(), message: message.into() })).into_response()
}

/// SIGINT or SIGTERM, as a future. The handlers are installed by this call (not when the future is
/// first polled), so a signal that arrives before the server polls it is not lost.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested");
    })
}
