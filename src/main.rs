//! `vitalflow`: the binary. `vitalflow serve` runs everything on embedded defaults;
//! `vitalflow token` signs an HS256 token for the API (docs/security.md).

mod auth;
mod bootstrap;
mod config;
mod framing;
mod linger;
mod server;
mod tls;

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
    Serve(#[command(flatten)] Overrides),
    /// Print an HS256 token signed with the secret in `--secret-file`.
    Token {
        /// The HS256 secret, as given to `serve` in `auth.jwt_secret_file`.
        #[arg(long)]
        secret_file: PathBuf,
        /// The subject (`sub`): the user id the token acts for.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes: health:write health:read backend analytics ops.
        #[arg(long, default_value = "")]
        scope: String,
        /// Lifetime, with an s, m, h or d suffix (plain numbers are seconds).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The `iss` claim.
        #[arg(long)]
        issuer: Option<String>,
        /// The `aud` claim.
        #[arg(long)]
        audience: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    // The SQL engine's debug logs print the parsed query and its plans, literals included (user
    // ids, values): capped at info whatever VITALFLOW_LOG says, even for a more specific target
    // such as `sqlparser::parser=debug` (docs/security.md, "What is logged").
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, filter};
    let wanted = tracing_subscriber::EnvFilter::try_from_env("VITALFLOW_LOG").unwrap_or_else(|_| "info".into());
    let sql_engine_capped = filter::filter_fn(|meta| {
        let t = meta.target();
        !(t.starts_with("sqlparser") || t.starts_with("datafusion")) || *meta.level() <= tracing::Level::INFO
    });
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colours only for a person at a terminal; log collectors get plain text.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(wanted)
                .with_filter(sql_engine_capped),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(flags) => {
            let config = Config::load(&flags, |k| std::env::var(k).ok())?;
            auth::check_key_files(&config.auth)?;
            // Before the store opens: a bad certificate or key stops startup with its reason.
            let tls = tls::acceptor(&config.tls)?;
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(bootstrap::serve(config, tls))
        }
        Command::Token { secret_file, sub, scope, ttl, issuer, audience } => {
            let ttl = auth::parse_ttl(&ttl)?;
            let token = auth::mint(&secret_file, &sub, &scope, ttl, issuer.as_deref(), audience.as_deref())?;
            println!("{token}");
            Ok(())
        }
    }
}
