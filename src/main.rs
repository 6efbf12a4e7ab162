//! The `tandem` binary: parse the command line, set up logging, run the server until
//! SIGTERM or Ctrl-C, or run an offline store command (`tandem store copy`).

use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use clap::{Parser, Subcommand};
use tandem::storage::copy::copy_all;
use tandem::storage::{FlushPolicy, PostgresConfig, PostgresStore, SledStore, Store};
use tandem::{Config, Settings};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Tandem: a collaboration server for Yjs documents and chat rooms.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    ///
    /// Every option can also be set by its TANDEM_* environment variable or in the TOML
    /// file given by --config (keys as the long option names, e.g. `room-idle-secs = 30`).
    /// Precedence: flag, then environment, then file, then default. Logging is set with
    /// TANDEM_LOG (e.g. `info`, `tandem=debug`).
    Serve {
        /// TOML configuration file
        #[arg(long, env = "TANDEM_CONFIG")]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: Box<Settings>,
    },
    /// Work on a store offline (the server must not be running on a sled directory).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy every room (documents and chat streams) from one store into another, e.g. a
    /// single node's sled directory onto PostgreSQL, and verify each room after copying.
    ///
    /// A store is `sled:DIR` or a PostgreSQL URL (`postgres://user@host:5432/db`). Rooms
    /// that already exist in the destination are refused.
    Copy {
        /// The store to read (env TANDEM_COPY_FROM keeps a password out of `ps`).
        #[arg(long, env = "TANDEM_COPY_FROM", hide_env_values = true)]
        from: String,
        /// The store to write (env TANDEM_COPY_TO).
        #[arg(long, env = "TANDEM_COPY_TO", hide_env_values = true)]
        to: String,
        /// PostgreSQL schema of a `postgres://` store (created if missing)
        #[arg(long, env = "TANDEM_POSTGRES_SCHEMA", default_value = tandem::storage::DEFAULT_POSTGRES_SCHEMA)]
        postgres_schema: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TANDEM_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (config, settings) = match cli.command {
        Command::Serve { config, settings } => (config, *settings),
        Command::Store(StoreCommand::Copy {
            from,
            to,
            postgres_schema,
        }) => return store_copy(&from, &to, &postgres_schema),
    };
    let file = match config.as_deref().map(Settings::from_file).transpose() {
        Ok(file) => file.unwrap_or_default(),
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let config = match Config::from_settings(settings.or(file)) {
        Ok(config) => config,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = actix::System::new().block_on(tandem::run(config, shutdown_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Opens `sled:DIR` or a PostgreSQL URL for `tandem store copy`.
fn open_store(spec: &str, schema: &str) -> Result<Arc<dyn Store>, String> {
    if let Some(dir) = spec.strip_prefix("sled:") {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            return Err(format!("{}: no such directory", dir.display()));
        }
        return SledStore::open(&dir, FlushPolicy::EveryBatch)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| {
                format!(
                    "{e} (is a server running on {}? stop it first)",
                    dir.display()
                )
            });
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        let config = PostgresConfig {
            url: spec.to_owned(),
            schema: schema.to_owned(),
            pool_size: 4,
        };
        return PostgresStore::connect(&config)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| e.to_string());
    }
    // The text itself is not echoed: it may be a connection string with a password.
    Err("a store is sled:DIR or postgres://USER@HOST:PORT/DB (or postgresql://…)".to_owned())
}

/// `tandem store copy`.
fn store_copy(from: &str, to: &str, schema: &str) -> ExitCode {
    let stores = open_store(from, schema).and_then(|f| Ok((f, open_store(to, schema)?)));
    let (source, destination) = match stores {
        Ok(stores) => stores,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(copy_all(&*source, &*destination)) {
        Ok(report) => {
            println!(
                "copied {} rooms: {} documents ({} logged updates besides snapshots), {} chat \
                 streams ({} messages); every room verified",
                report.rooms, report.documents, report.updates, report.streams, report.messages
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!("copy failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("Ctrl-C received"),
        _ = term => info!("SIGTERM received"),
    }
}
