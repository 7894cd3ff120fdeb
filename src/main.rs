//! `aether-actix`: parses flags, loads the configuration, starts logging, runs the relay.

use std::{net::TcpListener, path::PathBuf, process::ExitCode};

use aether_actix::Config;
use clap::Parser;

/// A real-time state-sync relay: Last-Writer-Wins over WebSockets, persisted to an fsynced
/// JSON-lines ledger. Without --config it serves the demos on http://127.0.0.1:8211/ with a ledger
/// under data/.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see config/aether.toml for every key and its default).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match &cli.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let config = loaded.and_then(|mut config| {
        config.resolve_secrets(std::env::var(aether_actix::config::TOKEN_ENV).ok())?;
        Ok(config)
    });
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("aether-actix: {err}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let listener = match TcpListener::bind(config.server.bind) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("aether-actix: cannot listen on {}: {err}", config.server.bind);
            return ExitCode::FAILURE;
        }
    };
    match actix_web::rt::System::new().block_on(aether_actix::run(config, listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aether-actix: {err}");
            ExitCode::FAILURE
        }
    }
}
