//! `vitalflow`: the binary. `vitalflow serve` runs everything on embedded defaults.

mod bootstrap;
mod config;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "vitalflow", version, about = "Incremental dataflow engine for personal health data")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Ingest over HTTP, maintain every view, serve reads and SQL.
    Serve {
        /// A vitalflow.toml; its values override the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Directory of the durable store [default: ./vitalflow-data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP listen address [default: 127.0.0.1:8080].
        #[arg(long)]
        listen: Option<String>,
        /// Dataflow worker threads [default: available cores].
        #[arg(long)]
        workers: Option<usize>,
        /// Consume from Kafka at these brokers (turns `[sources.kafka]` on).
        #[arg(long)]
        kafka_brokers: Option<String>,
        /// Poll the outbox table of this Postgres (turns `[sources.postgres_outbox]` on).
        #[arg(long)]
        outbox_url: Option<String>,
        /// Keep every view in this Postgres (turns `[sinks.postgres]` on).
        #[arg(long)]
        sink_postgres_url: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VITALFLOW_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve { config, data_dir, listen, workers, kafka_brokers, outbox_url, sink_postgres_url } => {
            let flags = Overrides { config, data_dir, listen, workers, kafka_brokers, outbox_url, sink_postgres_url };
            let config = Config::load(&flags, |k| std::env::var(k).ok())?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(bootstrap::serve(config))
        }
    }
}
