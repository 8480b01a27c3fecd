//! Configuration, layered: embedded defaults, then `--config vitalflow.toml`, then `VITALFLOW_*`
//! environment variables, then command-line flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use vitalflow_ingest::kafka::KafkaConfig;
use vitalflow_ingest::outbox::OutboxConfig;
use vitalflow_serve::pg_sink::PgSinkConfig;

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
    /// Where input comes from besides HTTP (none by default).
    pub sources: Sources,
    /// Where views go besides the read API (none by default).
    pub sinks: Sinks,
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
            sources: Sources::default(),
            sinks: Sinks::default(),
        }
    }
}

/// Flags that override everything else.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub kafka_brokers: Option<String>,
    pub outbox_url: Option<String>,
    pub sink_postgres_url: Option<String>,
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
        if let Some(v) = env("VITALFLOW_VIEWS") {
            c.views = Some(v.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect());
        }
        c.connector_env(&env)?;
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
        if c.workers == 0 {
            bail!("workers must be at least 1");
        }
        Ok(c)
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
}
