//! Configuration, layered: embedded defaults, then `--config vitalflow.toml`, then `VITALFLOW_*`
//! environment variables, then command-line flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use vitalflow_ingest::kafka::KafkaConfig;
use vitalflow_ingest::outbox::OutboxConfig;
use vitalflow_serve::pg_sink::PgSinkConfig;

/// Samples replayed per internal time at recovery by default ([`Config::recovery_step_samples`]).
pub const DEFAULT_RECOVERY_STEP_SAMPLES: u64 = 1_000_000;

/// Everything vitalflow can be configured with.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the durable store lives.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub listen: String,
    /// Timely worker threads.
    pub workers: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most rows a SQL query returns.
    pub sql_row_limit: usize,
    /// SQL query time limit.
    pub sql_timeout_ms: u64,
    /// Maintain only these views (by SQL name); all of them when absent.
    pub views: Option<Vec<String>>,
    /// Seconds between writes of the views' snapshots to `{data_dir}/snapshots` (only views that
    /// advanced are written; also at a graceful stop), read back at the next start so that reads
    /// are served while the dataflow rehydrates; 0 turns persistence off.
    pub snapshot_persist_secs: u64,
    /// MiB of the store's pages kept in memory (pages beyond it are read through the operating
    /// system's page cache).
    pub store_cache_mb: usize,
    /// Dataflow introspection (docs/operations.md, "Slow epochs"): the workers' time per view,
    /// and a count of and warnings about the epochs that take the workers at least this many
    /// milliseconds to carry through every view; 0 turns all of it off.
    pub slow_epoch_ms: u64,
    /// Idle merging (docs/operations.md, "Arrangement sizes"): an arrangement not yet compact
    /// keeps merging whenever it is scheduled, as if this many updates arrived each time, so that
    /// deleted and erased rows free their memory without waiting for later writes; 0 (the
    /// default) merges only as batches arrive. Costs a quarter to a third of bulk throughput.
    pub idle_merge_effort: u64,
    /// Recovery (docs/operations.md, "Persisted snapshots and restarts"; ADR 0014): the stored samples are
    /// replayed through internal times of this many samples each, so that the arrangements seal
    /// and merge the history step by step instead of holding all of it until one seal. Smaller
    /// steps lower recovery's peak memory and cost more merging, down to a step of a few users'
    /// histories: a user spread over k steps has their days recomputed up to k times. 0 replays
    /// the whole history as one step.
    pub recovery_step_samples: u64,
    /// Where input comes from besides HTTP (none by default).
    pub sources: Sources,
    /// `[server]`: connection, request and ingestion limits (README, "Limits").
    pub server: ServerLimits,
    /// `[limits]`: input limits of ingestion (sizes and counts of request bodies).
    pub limits: vitalflow_schemas::Limits,
    /// `[sql]`: resources of one SQL query and of the SQL pool.
    pub sql: SqlConfig,
    /// Where views go besides the read API (none by default).
    pub sinks: Sinks,
    /// `[auth]`: who may call the API (docs/security.md).
    pub auth: AuthConfig,
    /// `[tls]`: serve HTTPS instead of plain HTTP (docs/security.md).
    pub tls: TlsConfig,
}

/// `[tls]`: a certificate chain and its private key, both PEM files. Both set: the listener
/// speaks only HTTPS (TLS 1.2 and 1.3 through rustls, ALPN `h2` and `http/1.1`); both absent: plain
/// HTTP; one alone is a configuration error.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the server certificate first, then any intermediates.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

/// `auth.mode`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every request is trusted: only allowed while listening on a loopback address.
    None,
    /// Every route but `/healthz` and `/readyz` needs a valid `Authorization: Bearer` JWT.
    Jwt,
}

/// `[auth]`: token verification. Setting a key source without a mode turns `jwt` on.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `none` or `jwt`; when absent, `jwt` if a key source is set, else `none`.
    pub mode: Option<AuthMode>,
    /// A file holding the HS256 secret (at least 32 bytes; surrounding whitespace is ignored).
    pub jwt_secret_file: Option<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`) of RS256 and ES256 public keys.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (an identity provider's `jwks_uri`), fetched at start and refreshed periodically.
    pub jwks_url: Option<String>,
    /// How often `jwks_url` is fetched again.
    pub jwks_refresh_secs: u64,
    /// The required `iss` claim, if set.
    pub issuer: Option<String>,
    /// The required `aud` claim, if set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: None,
            jwt_secret_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300,
            issuer: None,
            audience: None,
            leeway_secs: 30,
        }
    }
}

impl AuthConfig {
    /// The mode in force: the configured one, else `jwt` when a key source is set.
    pub fn effective_mode(&self) -> AuthMode {
        self.mode.unwrap_or(if self.has_keys() { AuthMode::Jwt } else { AuthMode::None })
    }

    fn has_keys(&self) -> bool {
        self.jwt_secret_file.is_some() || self.jwks_file.is_some() || self.jwks_url.is_some()
    }
}

/// `[sources.*]`: each is off unless configured.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Sources {
    pub kafka: Option<KafkaConfig>,
    pub postgres_outbox: Option<OutboxConfig>,
}

/// `[sinks.*]`: each is off unless configured.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Sinks {
    pub postgres: Option<PgSinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./vitalflow-data"),
            listen: "127.0.0.1:8080".into(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_body_bytes: vitalflow_ingest::http::DEFAULT_MAX_BODY_BYTES,
            sql_row_limit: 10_000,
            sql_timeout_ms: 10_000,
            views: None,
            snapshot_persist_secs: 30,
            store_cache_mb: vitalflow_ingest::store::DEFAULT_CACHE_BYTES >> 20,
            slow_epoch_ms: 250,
            idle_merge_effort: 0,
            recovery_step_samples: DEFAULT_RECOVERY_STEP_SAMPLES,
            sources: Sources::default(),
            sinks: Sinks::default(),
            server: ServerLimits::default(),
            limits: vitalflow_schemas::Limits::default(),
            sql: SqlConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// The flags of `vitalflow serve`: they override everything else.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// A vitalflow.toml; its values override the embedded defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of the durable store [default: ./vitalflow-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// Dataflow worker threads [default: available cores].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Consume from Kafka at these brokers (turns `[sources.kafka]` on).
    #[arg(long)]
    pub kafka_brokers: Option<String>,
    /// Poll the outbox table of this Postgres (turns `[sources.postgres_outbox]` on).
    #[arg(long)]
    pub outbox_url: Option<String>,
    /// Keep every view in this Postgres (turns `[sinks.postgres]` on).
    #[arg(long)]
    pub sink_postgres_url: Option<String>,
    /// Require HS256 tokens signed with the secret in this file (turns `auth.mode = "jwt"` on).
    #[arg(long)]
    pub auth_jwt_secret_file: Option<PathBuf>,
    /// Require RS256/ES256 tokens signed by a key of this JWKS file (turns `jwt` on).
    #[arg(long)]
    pub auth_jwks_file: Option<PathBuf>,
    /// Require this `iss` claim.
    #[arg(long)]
    pub auth_issuer: Option<String>,
    /// Require this `aud` claim.
    #[arg(long)]
    pub auth_audience: Option<String>,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key-file`).
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `--tls-cert-file`.
    #[arg(long)]
    pub tls_key_file: Option<PathBuf>,
}

impl Config {
    /// Defaults ← file ← environment (`env`) ← flags.
    pub fn load(flags: &Overrides, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let mut c = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = env("VITALFLOW_DATA_DIR") {
            c.data_dir = v.into();
        }
        if let Some(v) = env("VITALFLOW_LISTEN") {
            c.listen = v;
        }
        if let Some(v) = env("VITALFLOW_WORKERS") {
            c.workers = v.parse().context("VITALFLOW_WORKERS must be a positive integer")?;
        }
        if let Some(v) = env("VITALFLOW_MAX_BODY_BYTES") {
            c.max_body_bytes = v.parse().context("VITALFLOW_MAX_BODY_BYTES must be a positive integer")?;
        }
        if let Some(v) = env("VITALFLOW_SQL_ROW_LIMIT") {
            c.sql_row_limit = v.parse().context("VITALFLOW_SQL_ROW_LIMIT must be a positive integer")?;
        }
        if let Some(v) = env("VITALFLOW_SQL_TIMEOUT_MS") {
            c.sql_timeout_ms = v.parse().context("VITALFLOW_SQL_TIMEOUT_MS must be a positive integer")?;
        }
        if let Some(v) = env("VITALFLOW_SNAPSHOT_PERSIST_SECS") {
            c.snapshot_persist_secs =
                v.parse().context("VITALFLOW_SNAPSHOT_PERSIST_SECS must be a non-negative integer")?;
        }
        if let Some(v) = env("VITALFLOW_STORE_CACHE_MB") {
            c.store_cache_mb = v.parse().context("VITALFLOW_STORE_CACHE_MB must be a non-negative integer")?;
        }
        if let Some(v) = env("VITALFLOW_SLOW_EPOCH_MS") {
            c.slow_epoch_ms = v.parse().context("VITALFLOW_SLOW_EPOCH_MS must be a non-negative integer")?;
        }
        if let Some(v) = env("VITALFLOW_IDLE_MERGE_EFFORT") {
            c.idle_merge_effort = v.parse().context("VITALFLOW_IDLE_MERGE_EFFORT must be a non-negative integer")?;
        }
        if let Some(v) = env("VITALFLOW_RECOVERY_STEP_SAMPLES") {
            c.recovery_step_samples =
                v.parse().context("VITALFLOW_RECOVERY_STEP_SAMPLES must be a non-negative integer")?;
        }
        if let Some(v) = env("VITALFLOW_VIEWS") {
            c.views = Some(v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect());
        }
        c.connector_env(&env)?;
        c.server.apply_env(&env)?;
        c.auth_env(&env)?;
        if let Some(v) = env("VITALFLOW_TLS_CERT_FILE") {
            c.tls.cert_file = Some(v.into());
        }
        if let Some(v) = env("VITALFLOW_TLS_KEY_FILE") {
            c.tls.key_file = Some(v.into());
        }
        if let Some(v) = &flags.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &flags.listen {
            c.listen = v.clone();
        }
        if let Some(v) = flags.workers {
            c.workers = v;
        }
        if let Some(v) = &flags.kafka_brokers {
            c.sources.kafka.get_or_insert_with(KafkaConfig::default).brokers = v.clone();
        }
        if let Some(v) = &flags.outbox_url {
            c.sources.postgres_outbox.get_or_insert_with(OutboxConfig::default).url = v.clone();
        }
        if let Some(v) = &flags.sink_postgres_url {
            c.sinks.postgres.get_or_insert_with(PgSinkConfig::default).url = v.clone();
        }
        if let Some(v) = &flags.auth_jwt_secret_file {
            c.auth.jwt_secret_file = Some(v.clone());
            c.auth.mode = Some(AuthMode::Jwt);
        }
        if let Some(v) = &flags.auth_jwks_file {
            c.auth.jwks_file = Some(v.clone());
            c.auth.mode = Some(AuthMode::Jwt);
        }
        if let Some(v) = &flags.auth_issuer {
            c.auth.issuer = Some(v.clone());
        }
        if let Some(v) = &flags.auth_audience {
            c.auth.audience = Some(v.clone());
        }
        if let Some(v) = &flags.tls_cert_file {
            c.tls.cert_file = Some(v.clone());
        }
        if let Some(v) = &flags.tls_key_file {
            c.tls.key_file = Some(v.clone());
        }
        if c.tls.cert_file.is_some() != c.tls.key_file.is_some() {
            bail!("TLS needs both tls.cert_file and tls.key_file (or neither, for plain HTTP)");
        }
        if c.workers == 0 {
            bail!("workers must be at least 1");
        }
        if c.store_cache_mb == 0 {
            bail!("store_cache_mb must be at least 1 (the store buffers its writes in half of it)");
        }
        if c.max_body_bytes == 0 {
            bail!("max_body_bytes must be at least 1 (0 would refuse every ingestion request)");
        }
        c.check_auth()?;
        Ok(c)
    }

    /// `VITALFLOW_AUTH_*`. A key source turns `jwt` on; `VITALFLOW_AUTH_MODE`
    /// still has the last word.
    fn auth_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = env("VITALFLOW_AUTH_JWT_SECRET_FILE") {
            self.auth.jwt_secret_file = Some(v.into());
            self.auth.mode = Some(AuthMode::Jwt);
        }
        if let Some(v) = env("VITALFLOW_AUTH_JWKS_FILE") {
            self.auth.jwks_file = Some(v.into());
            self.auth.mode = Some(AuthMode::Jwt);
        }
        if let Some(v) = env("VITALFLOW_AUTH_JWKS_URL") {
            self.auth.jwks_url = Some(v);
            self.auth.mode = Some(AuthMode::Jwt);
        }
        if let Some(v) = env("VITALFLOW_AUTH_JWKS_REFRESH_SECS") {
            self.auth.jwks_refresh_secs =
                v.parse().context("VITALFLOW_AUTH_JWKS_REFRESH_SECS must be a number of seconds")?;
        }
        if let Some(v) = env("VITALFLOW_AUTH_ISSUER") {
            self.auth.issuer = Some(v);
        }
        if let Some(v) = env("VITALFLOW_AUTH_AUDIENCE") {
            self.auth.audience = Some(v);
        }
        if let Some(v) = env("VITALFLOW_AUTH_LEEWAY_SECS") {
            self.auth.leeway_secs = v.parse().context("VITALFLOW_AUTH_LEEWAY_SECS must be a non-negative integer")?;
        }
        if let Some(v) = env("VITALFLOW_AUTH_MODE") {
            self.auth.mode = Some(match v.trim() {
                "none" => AuthMode::None,
                "jwt" => AuthMode::Jwt,
                other => bail!("VITALFLOW_AUTH_MODE must be 'none' or 'jwt', not '{other}'"),
            });
        }
        Ok(())
    }

    /// `jwt` needs a key source; `none` is only for a loopback listen address, where nothing but
    /// this machine can reach the API.
    fn check_auth(&self) -> anyhow::Result<()> {
        match self.auth.effective_mode() {
            AuthMode::Jwt if !self.auth.has_keys() => bail!(
                "auth.mode = \"jwt\" needs a key: set auth.jwt_secret_file (HS256), auth.jwks_file or \
                 auth.jwks_url (RS256/ES256), e.g. VITALFLOW_AUTH_JWT_SECRET_FILE=/path/to/secret"
            ),
            AuthMode::None if !is_loopback(&self.listen) => bail!(
                "refusing to listen on {} without authentication: auth.mode = \"none\" is only allowed on a \
                 loopback address (127.0.0.0/8, ::1, localhost). Turn JWT auth on with \
                 VITALFLOW_AUTH_JWT_SECRET_FILE=<file with an HS256 secret> (or --auth-jwt-secret-file), or \
                 VITALFLOW_AUTH_JWKS_FILE / [auth] jwks_url for RS256/ES256 keys (docs/security.md); or \
                 listen on 127.0.0.1",
                self.listen
            ),
            _ => {}
        }
        Ok(())
    }

    /// `VITALFLOW_KAFKA_*`, `VITALFLOW_OUTBOX_*`, `VITALFLOW_SINK_POSTGRES_*`: setting any of a
    /// connector's variables turns that connector on (with defaults for the rest).
    fn connector_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = env("VITALFLOW_KAFKA_BROKERS") {
            self.kafka().brokers = v;
        }
        if let Some(v) = env("VITALFLOW_KAFKA_GROUP_ID") {
            self.kafka().group_id = v;
        }
        if let Some(v) = env("VITALFLOW_KAFKA_SAMPLES_TOPIC") {
            self.kafka().samples_topic = v;
        }
        if let Some(v) = env("VITALFLOW_KAFKA_DOMAIN_TOPIC") {
            self.kafka().domain_topic = v;
        }
        if let Some(v) = env("VITALFLOW_KAFKA_DEAD_LETTER_TOPIC") {
            self.kafka().dead_letter_topic = v;
        }
        if let Some(v) = env("VITALFLOW_KAFKA_MAX_LAG_EPOCHS") {
            self.kafka().max_lag_epochs = v.parse().context("VITALFLOW_KAFKA_MAX_LAG_EPOCHS must be an integer")?;
        }
        if let Some(v) = env("VITALFLOW_KAFKA_MAX_MESSAGE_BYTES") {
            self.kafka().max_message_bytes =
                v.parse().context("VITALFLOW_KAFKA_MAX_MESSAGE_BYTES must be a positive integer")?;
        }
        if let Some(v) = env("VITALFLOW_KAFKA_MAX_POLL_RECORDS") {
            self.kafka().max_poll_records =
                v.parse().context("VITALFLOW_KAFKA_MAX_POLL_RECORDS must be a positive integer")?;
        }
        if let Some(v) = env("VITALFLOW_KAFKA_PROPERTIES") {
            // `key=value,key=value`: extra librdkafka settings.
            for pair in v.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, val) = pair.split_once('=').context("VITALFLOW_KAFKA_PROPERTIES is key=value,…")?;
                self.kafka().properties.insert(k.trim().to_owned(), val.trim().to_owned());
            }
        }
        if let Some(v) = env("VITALFLOW_OUTBOX_URL") {
            self.sources.postgres_outbox.get_or_insert_with(OutboxConfig::default).url = v;
        }
        if let Some(v) = env("VITALFLOW_OUTBOX_TABLE") {
            self.sources.postgres_outbox.get_or_insert_with(OutboxConfig::default).table = v;
        }
        if let Some(v) = env("VITALFLOW_SINK_POSTGRES_URL") {
            self.sinks.postgres.get_or_insert_with(PgSinkConfig::default).url = v;
        }
        if let Some(v) = env("VITALFLOW_SINK_POSTGRES_PROGRESS_TABLE") {
            self.sinks.postgres.get_or_insert_with(PgSinkConfig::default).progress_table = v;
        }
        Ok(())
    }

    fn kafka(&mut self) -> &mut KafkaConfig {
        self.sources.kafka.get_or_insert_with(KafkaConfig::default)
    }

    fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid configuration in {}", path.display()))
    }
}

/// Whether `listen` (`host:port`) names a loopback address: 127.0.0.0/8, ::1 or `localhost`.
fn is_loopback(listen: &str) -> bool {
    if let Ok(addr) = listen.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `[sql]`: see `vitalflow_serve::sql::SqlLimits` for what each bounds. The row limit and the
/// timeout keep their top-level keys (`sql_row_limit`, `sql_timeout_ms`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SqlConfig {
    /// Bytes of values a result returns before it is cut (`truncated: true`).
    pub max_result_bytes: usize,
    /// Memory a query may reserve in DataFusion's pool (bytes); beyond: 422 `QUERY_TOO_EXPENSIVE`.
    pub memory_limit_bytes: usize,
    /// Largest value one SQL function may build (bytes); beyond: 422 `QUERY_TOO_EXPENSIVE`.
    pub max_value_bytes: usize,
    /// Queries running at once; beyond: 429 `TOO_MANY_QUERIES`.
    pub max_concurrent: usize,
    /// Threads of the SQL pool (apart from ingestion and reads).
    pub threads: usize,
    /// Longest SQL text (bytes); beyond: 413 `QUERY_TOO_LARGE`.
    pub max_sql_bytes: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        let d = vitalflow_serve::sql::SqlLimits::default();
        SqlConfig {
            max_result_bytes: d.max_result_bytes,
            memory_limit_bytes: d.memory_limit_bytes,
            max_value_bytes: d.max_value_bytes,
            max_concurrent: d.max_concurrent,
            threads: d.threads,
            max_sql_bytes: d.max_sql_bytes,
        }
    }
}

/// `[server]`: what one process takes on before it refuses (each refusal has a stable code).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// Open HTTP connections at most (`VITALFLOW_MAX_CONNECTIONS`); more wait to be accepted.
    pub max_connections: usize,
    /// Requests being handled at once (`VITALFLOW_MAX_IN_FLIGHT`); more get 503 `OVERLOADED`.
    pub max_in_flight: usize,
    /// Milliseconds a client has to send a request's headers (`VITALFLOW_HEADER_READ_TIMEOUT_MS`).
    pub header_read_timeout_ms: u64,
    /// Milliseconds a request may take, reading its body included (`VITALFLOW_REQUEST_TIMEOUT_MS`);
    /// 408 `REQUEST_TIMEOUT` after.
    pub request_timeout_ms: u64,
    /// Bytes of request bodies queued for the writer (`VITALFLOW_WRITER_QUEUE_BYTES`); 503
    /// `OVERLOADED` beyond.
    pub writer_queue_bytes: usize,
    /// Epochs the slowest view may trail ingestion before HTTP ingestion answers 503
    /// `VIEWS_LAGGING` (`VITALFLOW_MAX_VIEW_LAG_EPOCHS`).
    pub max_view_lag_epochs: u64,
    /// Milliseconds the oldest epoch not yet visible in every view may wait before HTTP ingestion
    /// answers 503 `VIEWS_LAGGING` (`VITALFLOW_MAX_VIEW_LAG_MS`).
    pub max_view_lag_ms: u64,
    /// Sustained batch-upsert requests per second per user over HTTP (`VITALFLOW_USER_RATE`); 429
    /// `RATE_LIMITED` above; 0 turns the limit off.
    pub user_requests_per_sec: u32,
    /// Requests per user allowed at once above the sustained rate (`VITALFLOW_USER_BURST`).
    pub user_burst: u32,
    /// Milliseconds between a fatal component failure and the process exit (code 70), so that a
    /// supervisor restarts it (`VITALFLOW_FATAL_EXIT_GRACE_MS`).
    pub fatal_exit_grace_ms: u64,
    /// Days request records (idempotency) and tombstones are kept (`VITALFLOW_RETENTION_DAYS`).
    pub retention_days: u64,
    /// Bytes of request bodies received at once, over all requests (256 MiB); beyond: 503
    /// `OVERLOADED`. A body without `Content-Length` counts as `max_body_bytes`.
    pub max_buffered_body_bytes: usize,
    /// Rows one per-user view read may answer (`VITALFLOW_MAX_READ_ROWS`); beyond: 422
    /// `READ_TOO_LARGE`.
    pub max_read_rows: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 1024,
            max_in_flight: 512,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 60_000,
            writer_queue_bytes: 64 * 1024 * 1024,
            max_view_lag_epochs: 1_000,
            max_view_lag_ms: 120_000,
            user_requests_per_sec: 50,
            user_burst: 100,
            fatal_exit_grace_ms: 5_000,
            retention_days: 30,
            max_buffered_body_bytes: 256 * 1024 * 1024,
            max_read_rows: 100_000,
        }
    }
}

impl ServerLimits {
    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        fn num<T: std::str::FromStr>(
            env: &impl Fn(&str) -> Option<String>,
            key: &str,
            into: &mut T,
        ) -> anyhow::Result<()> {
            if let Some(v) = env(key) {
                *into = v.trim().parse().map_err(|_| anyhow::anyhow!("{key} must be a non-negative integer"))?;
            }
            Ok(())
        }
        num(env, "VITALFLOW_MAX_CONNECTIONS", &mut self.max_connections)?;
        num(env, "VITALFLOW_MAX_IN_FLIGHT", &mut self.max_in_flight)?;
        num(env, "VITALFLOW_HEADER_READ_TIMEOUT_MS", &mut self.header_read_timeout_ms)?;
        num(env, "VITALFLOW_REQUEST_TIMEOUT_MS", &mut self.request_timeout_ms)?;
        num(env, "VITALFLOW_WRITER_QUEUE_BYTES", &mut self.writer_queue_bytes)?;
        num(env, "VITALFLOW_MAX_VIEW_LAG_EPOCHS", &mut self.max_view_lag_epochs)?;
        num(env, "VITALFLOW_MAX_VIEW_LAG_MS", &mut self.max_view_lag_ms)?;
        num(env, "VITALFLOW_USER_RATE", &mut self.user_requests_per_sec)?;
        num(env, "VITALFLOW_USER_BURST", &mut self.user_burst)?;
        num(env, "VITALFLOW_FATAL_EXIT_GRACE_MS", &mut self.fatal_exit_grace_ms)?;
        num(env, "VITALFLOW_RETENTION_DAYS", &mut self.retention_days)?;
        num(env, "VITALFLOW_MAX_BUFFERED_BODY_BYTES", &mut self.max_buffered_body_bytes)?;
        num(env, "VITALFLOW_MAX_READ_ROWS", &mut self.max_read_rows)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("vf-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vitalflow.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:9000\"\nworkers = 3\ndata_dir = \"/tmp/a\"\n").unwrap();
        let env = |k: &str| (k == "VITALFLOW_WORKERS").then(|| "5".to_owned());
        let flags = Overrides { config: Some(file.clone()), data_dir: Some("/tmp/b".into()), ..Default::default() };
        let c = Config::load(&flags, env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.workers, 5);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/b"));
        let d = Config::load(&Overrides::default(), |_| None).unwrap();
        assert_eq!(d.data_dir, PathBuf::from("./vitalflow-data"));
        assert_eq!(d.listen, "127.0.0.1:8080");
        assert_eq!(d.sources, Sources::default(), "no connector unless configured");
        assert_eq!(d.store_cache_mb, 64);
        std::fs::write(&file, "store_cache_mb = 16\n").unwrap();
        let from_file = Overrides { config: Some(file.clone()), ..Default::default() };
        assert_eq!(Config::load(&from_file, |_| None).unwrap().store_cache_mb, 16);
        let env = |k: &str| (k == "VITALFLOW_STORE_CACHE_MB").then(|| "256".to_owned());
        assert_eq!(Config::load(&from_file, env).unwrap().store_cache_mb, 256);
        for bad in ["lots", "0"] {
            let env = |k: &str| (k == "VITALFLOW_STORE_CACHE_MB").then(|| bad.to_owned());
            assert!(Config::load(&from_file, env).is_err(), "{bad}");
            let env = |k: &str| (k == "VITALFLOW_MAX_BODY_BYTES").then(|| bad.to_owned());
            assert!(Config::load(&from_file, env).is_err(), "max_body_bytes {bad}");
        }
        let env = |k: &str| (k == "VITALFLOW_MAX_BODY_BYTES").then(|| "1".to_owned());
        assert_eq!(Config::load(&from_file, env).unwrap().max_body_bytes, 1);
        std::fs::write(&file, "[sources.kafka]\nbrokers = \"k:1\"\n[sinks.postgres]\nurl = \"postgres://x\"\n")
            .unwrap();
        let env = |k: &str| (k == "VITALFLOW_KAFKA_GROUP_ID").then(|| "g".to_owned());
        let flags =
            Overrides { config: Some(file.clone()), outbox_url: Some("postgres://o".into()), ..Default::default() };
        let k = Config::load(&flags, env).unwrap();
        let kafka = k.sources.kafka.unwrap();
        assert_eq!((kafka.brokers.as_str(), kafka.group_id.as_str()), ("k:1", "g"));
        assert_eq!(kafka.samples_topic, "vitalflow.samples");
        assert_eq!(k.sinks.postgres.unwrap().url, "postgres://x");
        assert_eq!(k.sources.postgres_outbox.unwrap().table, "outbox");
        std::fs::write(&file, "bogus = 1\n").unwrap();
        assert!(Config::load(&flags, |_| None).is_err());
    }

    #[test]
    fn auth_none_only_on_loopback() {
        for ok in ["127.0.0.1:8080", "127.1.2.3:1", "[::1]:8080", "localhost:8080", "LOCALHOST:0"] {
            assert!(is_loopback(ok), "{ok}");
        }
        for bad in ["0.0.0.0:8080", "[::]:8080", "10.0.0.1:80", "example.com:80", "localhost.evil.com:1"] {
            assert!(!is_loopback(bad), "{bad}");
        }
        let public = Overrides { listen: Some("0.0.0.0:8080".into()), ..Default::default() };
        let err = Config::load(&public, |_| None).unwrap_err().to_string();
        assert!(err.contains("VITALFLOW_AUTH_JWT_SECRET_FILE"), "{err}");
        let env = |k: &str| (k == "VITALFLOW_AUTH_JWT_SECRET_FILE").then(|| "/s".to_owned());
        let c = Config::load(&public, env).unwrap();
        assert_eq!((c.auth.effective_mode(), c.auth.leeway_secs), (AuthMode::Jwt, 30));
        let env = |k: &str| match k {
            "VITALFLOW_AUTH_JWT_SECRET_FILE" => Some("/s".to_owned()),
            "VITALFLOW_AUTH_MODE" => Some("none".to_owned()),
            _ => None,
        };
        assert!(Config::load(&public, env).is_err(), "an explicit none still needs loopback");
        let jwt_without_key = |k: &str| (k == "VITALFLOW_AUTH_MODE").then(|| "jwt".to_owned());
        assert!(Config::load(&Overrides::default(), jwt_without_key).is_err());
    }
}
