//! The `tandem` binary: parse the command line, set up logging, run the server until
//! SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
        settings: Settings,
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
    let Command::Serve { config, settings } = cli.command;
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
