//! `aether-actix`: parses flags, loads the configuration, starts logging, runs the relay or an
//! offline subcommand.

use std::{net::TcpListener, path::PathBuf, process::ExitCode};

use aether_actix::{
    Config,
    commands::{self, CommandError},
    room::Room,
};
use clap::{Parser, Subcommand};

/// A real-time state-sync relay: Last-Writer-Wins over WebSockets, persisted to an fsynced
/// JSON-lines ledger. Without --config it serves the demos on http://127.0.0.1:8211/ with a ledger
/// under data/.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file (see config/aether.toml for every key and its default).
    #[arg(long, short, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Fold the ledger into its snapshot now, with the relay stopped (a running relay compacts
    /// online by itself). The old ledger is kept as an archive.
    Compact,
    /// Make the relay running on this configuration's ledger re-read its configuration file (sends
    /// it SIGHUP, after checking the file loads): auth token, allowed origins, trusted proxies,
    /// limits and the TLS certificate change for new connections; open ones stay. --config must
    /// name the file the relay was started with.
    Reload,
    /// Read history from the ledger and its archives (safe while the relay runs).
    Ledger {
        #[command(subcommand)]
        query: LedgerQuery,
    },
}

#[derive(Subcommand)]
enum LedgerQuery {
    /// Print a room's state as of a past moment (now, without --at), as JSON.
    State {
        /// RFC 3339 time (2026-11-28T22:30:00Z) or nanoseconds since 1970.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// The room; `_` is the default room (clients without ?room=).
        #[arg(long, value_name = "NAME", value_parser = room, default_value = "_")]
        room: Room,
    },
    /// Print every write to KEY in a room, oldest first, with who wrote it when recorded (the
    /// current value is marked *).
    Log {
        /// The key.
        key: String,
        /// The room; `_` is the default room (clients without ?room=).
        #[arg(long, value_name = "NAME", value_parser = room, default_value = "_")]
        room: Room,
    },
    /// List the rooms with their live keys and registers (tombstones included); `_` is the default
    /// room.
    Rooms,
}

/// A `--room` value: a room name, or `_` for the default room.
fn room(text: &str) -> Result<Room, String> {
    Room::from_written(text).map_err(|err| err.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = match &cli.config {
        Some(path) => Config::load(path),
        None => Ok(Config::default()),
    };
    let config = loaded.and_then(|mut config| {
        use aether_actix::config::{MESH_TOKEN_ENV, TOKEN_ENV};
        config.resolve_secrets(std::env::var(TOKEN_ENV).ok(), std::env::var(MESH_TOKEN_ENV).ok())?;
        Ok(config)
    });
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("aether-actix: {err}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr());
    let result = match &cli.command {
        None => return serve(config, cli.config.clone()),
        Some(Command::Compact) => commands::compact(&config, &mut out),
        Some(Command::Reload) if cli.config.is_none() => {
            Err(CommandError::Usage("reload needs --config FILE, the file the relay runs with".to_owned()))
        }
        Some(Command::Reload) => commands::reload_target(&config).and_then(|pid| hangup(pid, &mut out)),
        Some(Command::Ledger { query: LedgerQuery::State { at, room } }) => {
            commands::state_at(&config, at.as_deref(), room, &mut out, &mut err)
        }
        Some(Command::Ledger { query: LedgerQuery::Log { key, room } }) => {
            commands::key_log(&config, key, room, &mut out, &mut err)
        }
        Some(Command::Ledger { query: LedgerQuery::Rooms }) => commands::rooms(&config, &mut out, &mut err),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aether-actix: {error}");
            ExitCode::from(if matches!(error, CommandError::Usage(_)) { 2 } else { 1 })
        }
    }
}

/// Sends SIGHUP to the relay `pid` and says so.
fn hangup(pid: u32, out: &mut impl std::io::Write) -> Result<(), CommandError> {
    let target = libc::pid_t::try_from(pid).map_err(|err| CommandError::Usage(format!("process id {pid}: {err}")))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(target, libc::SIGHUP) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(CommandError::Usage(format!("cannot signal the relay (pid {pid}): {err}")));
    }
    writeln!(out, "sent SIGHUP to the relay (pid {pid}); it logs what changed, or why it kept its configuration")?;
    Ok(())
}

/// Logs to stderr at the level `RUST_LOG` sets (`info` by default); `AETHER_LOG_FORMAT=json` writes
/// one JSON object a line (`ts`, `level`, `target`, `msg`) for log shippers.
fn init_logging() {
    use std::io::Write;
    let mut builder = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if std::env::var("AETHER_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

/// Raises the open-file soft limit to the hard limit: every WebSocket is a file descriptor, and
/// the common default of 1024 would cap the relay far below what it can hold.
fn raise_fd_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= limit.rlim_max {
        return;
    }
    let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: setrlimit only reads the struct we pass, which lives for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) } != 0 {
        log::warn!("cannot raise the open-file limit above {}", limit.rlim_cur);
    }
}

fn serve(config: Config, path: Option<PathBuf>) -> ExitCode {
    raise_fd_limit();
    let listener = match TcpListener::bind(config.server.bind) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("aether-actix: cannot listen on {}: {err}", config.server.bind);
            return ExitCode::FAILURE;
        }
    };
    match actix_web::rt::System::new().block_on(aether_actix::run(config, path, listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("aether-actix: {err}");
            ExitCode::FAILURE
        }
    }
}
