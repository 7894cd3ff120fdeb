//! Boot, reload and shutdown: replays the ledger, starts the singletons, serves HTTP until a signal,
//! re-reads the configuration on SIGHUP.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use actix::{Actor, Addr, Arbiter};
use tokio::sync::Semaphore;

use crate::{
    config::{
        Config, Live, LiveConfig, TlsConfig, Transport,
        live::{self, fixed_changes, live_changes},
    },
    hlc::Clock,
    http,
    ledger::{self, Ledger, LedgerActor, LedgerError, LedgerHealth},
    limits::ConnectionCounter,
    lww::LwwMap,
    mesh::{self, MeshActor, MeshSettings, nats, shared::Shared},
    metrics::Metrics,
    session::{self, Deps},
    state::{self, Compaction, StateActor},
};

/// Writes accepted but not yet durable, across all clients: past this, writers wait.
pub const MAX_PENDING_WRITES: usize = 65_536;

/// Why the relay cannot start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ledger cannot be opened or replayed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The listener failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// A TLS certificate or key, or the `[auth]` JWT key, cannot be used (the message names the
    /// section).
    #[error("{0}")]
    Tls(String),
    /// NATS cannot be reached, or its stream cannot be created or used.
    #[error("[mesh.nats] {0}")]
    Nats(String),
}

/// The running mesh, when federation is configured.
#[derive(Clone)]
pub struct Mesh {
    /// The WebSocket mesh singleton (`None` with the NATS transport).
    pub links: Option<Addr<MeshActor>>,
    /// Told when the relay shuts down.
    pub stop: actix::Recipient<mesh::Shutdown>,
    /// What the transport's links share.
    pub shared: Arc<Shared>,
}

/// Handles to a running relay; cheap to clone into every HTTP worker.
#[derive(Clone)]
pub struct Relay {
    /// What sessions need.
    pub deps: Deps,
    /// The ledger's health, published by the ledger thread (read without a message).
    pub ledger: Arc<LedgerHealth>,
    /// Open WebSocket connections, per source.
    pub connections: ConnectionCounter,
    /// Where static files come from.
    pub static_dir: Arc<PathBuf>,
    /// What admission reads for every new connection (token, origins, proxies, limits, TLS):
    /// the one handle a reload swaps ([`Relay::reload`]).
    pub live: LiveConfig,
    /// The configuration the relay started with: its keys that need a restart stay in force.
    pub boot: Arc<Config>,
    /// Federation, if configured.
    pub mesh: Option<Mesh>,
}

impl Relay {
    /// Opens and replays the ledger, then starts the ledger and state singletons. Must run inside
    /// an actix `System`. Blocks while replaying: nothing is served before state is complete.
    ///
    /// `nats` is the NATS connection when `[mesh] transport = "nats"` (see [`nats::connect`]);
    /// `live` is `config` prepared ([`Live::prepare`]), checked before the replay.
    ///
    /// # Errors
    /// [`Error::Ledger`] when the ledger cannot be opened or replayed, [`Error::Tls`] when the
    /// mesh's CA file cannot be used, [`Error::Nats`] when the NATS position file cannot be read.
    pub fn start(config: &Config, nats: Option<nats::Connection>, live: LiveConfig) -> Result<Relay, Error> {
        // The dialler's TLS, only with peer links (checked before the replay, so a bad CA fails fast).
        let mesh_tls = config
            .mesh
            .enabled()
            .then(|| mesh::transport::tls_connector(config.mesh.tls.ca.as_deref()))
            .transpose()
            .map_err(|err| Error::Tls(format!("[mesh.tls] ca: {err}")))?;
        let mut clock = Clock::new(config.mesh.node_id.clone());
        let (ledger, stats, replayed) = Ledger::open_replayed(&config.ledger.path, config.ledger.sync)?;
        if let Some(newest) = &replayed.newest {
            clock.witness(newest);
        }
        let rooms = &replayed.rooms;
        log::info!(
            "ledger {} replayed in {} ms: {} records, {} snapshot entries, {} corrupt lines skipped, {} torn bytes cut; {} live keys in {} rooms",
            config.ledger.path.display(),
            stats.millis,
            stats.records,
            stats.snapshot_entries,
            stats.corrupt,
            stats.truncated_bytes,
            rooms.values().map(LwwMap::live_len).sum::<usize>(),
            rooms.len(),
        );
        if matches!(config.ledger.sync, ledger::SyncMode::None) {
            log::warn!("[ledger] sync = \"none\": an OS crash or power loss can lose recent writes");
        }
        let metrics = Arc::new(Metrics::default());
        metrics.replayed(stats.records, std::time::Duration::from_millis(stats.millis));
        let compaction = Compaction {
            after_bytes: config.ledger.compact_after_bytes,
            ledger_path: config.ledger.path.clone(),
            ledger_len: ledger.len(),
        };
        let (ledger, ledger_health) = LedgerActor::start_with(ledger, config.ledger.retention());
        let state_metrics = Arc::clone(&metrics);
        // Not under an actix `Supervisor`: it restarts an actor that stopped, never one that
        // panicked, and none of ours stops by itself. A panic aborts the process (Cargo.toml,
        // `panic = "abort"`) and the service manager restarts it; boot replays the ledger.
        let state = StateActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            StateActor::replayed(clock, replayed, ledger, state_metrics, compaction)
        });
        let limits = Arc::new(config.limits.clone());
        let admission = Arc::new(Semaphore::new(MAX_PENDING_WRITES));
        let m = &config.mesh;
        let shared = || {
            Arc::new(Shared {
                node_id: m.node_id.as_str().into(),
                instance: uuid::Uuid::new_v4().simple().to_string(),
                token: (!m.token.is_empty()).then(|| m.token.clone()),
                token_in_hello: m.token_in_hello,
                max_drift_ns: m.max_drift_ns(),
                anti_entropy: (m.anti_entropy_interval_s > 0.0)
                    .then(|| Duration::from_secs_f64(m.anti_entropy_interval_s)),
                handshake_timeout: limits.handshake_timeout(),
                max_queue_bytes: m.max_peer_queue_bytes,
                limits: Arc::clone(&limits),
                state: state.clone(),
                admission: Arc::clone(&admission),
                metrics: Arc::clone(&metrics),
                seen: std::sync::Mutex::new(mesh::shared::SeenCache::new(limits.max_seen_stamps)),
            })
        };
        let mesh = match (nats, mesh_tls) {
            (Some(conn), _) => {
                let shared = shared();
                let actor = nats::NatsActor::new(Arc::clone(&shared), conn, &m.nats, &config.ledger.path)
                    .map_err(Error::Nats)?;
                let addr = nats::NatsActor::start_in_arbiter(&Arbiter::new().handle(), move |_| actor);
                state.do_send(state::AttachMesh(addr.clone().recipient()));
                Some(Mesh { links: None, stop: addr.recipient(), shared })
            }
            (None, Some(tls)) => {
                let shared = shared();
                let settings = MeshSettings {
                    peers: m.peers.clone(),
                    redial_min: Duration::from_secs_f64(m.redial_min_s),
                    redial_max: Duration::from_secs_f64(m.redial_max_s),
                    tls,
                };
                let actor_shared = Arc::clone(&shared);
                let addr = MeshActor::start_in_arbiter(&Arbiter::new().handle(), move |_| {
                    MeshActor::new(actor_shared, settings)
                });
                state.do_send(state::AttachMesh(addr.clone().recipient()));
                log::info!("mesh: node {} dialling {} peer(s)", m.node_id, m.peers.len());
                if m.bind.is_some() && m.token.is_empty() {
                    log::warn!("mesh: no [mesh] token: any process that reaches the peer listener can join and write");
                }
                Some(Mesh { stop: addr.clone().recipient(), links: Some(addr), shared })
            }
            (None, None) => None,
        };
        let static_dir = Arc::new(config.server.static_dir.clone());
        if !static_dir.is_dir() {
            log::warn!("static_dir {} is not a directory; only /ws and /healthz will answer", static_dir.display());
        }
        Ok(Relay {
            deps: Deps {
                state,
                access: Arc::clone(&live.current().access),
                admission,
                limits: Arc::clone(&limits),
                ping_interval: config.server.ping_interval(),
                metrics,
                rooms: config.rooms,
            },
            ledger: ledger_health,
            // The caps come from `live` at each admission (ConnectionCounter::acquire_within).
            connections: ConnectionCounter::new(limits.max_connections_total, limits.max_connections_per_source),
            static_dir,
            live,
            boot: Arc::new(config.clone()),
            mesh,
        })
    }

    /// What a session admitted under `live` works with: its token, limits and ping interval,
    /// fixed for the connection's life.
    pub fn deps_for(&self, live: &Live) -> Deps {
        let mut deps = self.deps.clone();
        deps.access = Arc::clone(&live.access);
        deps.limits = Arc::clone(&live.limits);
        deps.ping_interval = live.ping_interval;
        deps.rooms = live.config.rooms;
        deps
    }

    /// Re-reads the configuration file at `path` (secrets resolved as at start) and publishes its
    /// live part for every connection from now on; open connections keep what they have. Keys
    /// that need a restart keep their running values and are reported in [`Reloaded::fixed`].
    ///
    /// # Errors
    /// The same one-line error as at start (file, line and key; or `[tls]` and the file) when the
    /// file does not load; nothing changes then.
    pub fn reload(&self, path: &Path) -> Result<Reloaded, String> {
        use crate::config::{MESH_TOKEN_ENV, TOKEN_ENV};
        let mut config = Config::load(path).map_err(|e| e.to_string())?;
        config
            .resolve_secrets(std::env::var(TOKEN_ENV).ok(), std::env::var(MESH_TOKEN_ENV).ok())
            .map_err(|e| e.to_string())?;
        let mut live = Live::prepare(config)?;
        let current = self.live.current();
        // TLS cannot be switched on or off live: a listener serving TLS keeps its certificate.
        if live.tls.is_none() {
            live.tls.clone_from(&current.tls);
        }
        let mut changed = live_changes(&current.config, &live.config);
        let fixed = fixed_changes(&self.boot, &live.config);
        let fingerprint = live.tls_fingerprint();
        let certificate = (fingerprint != current.tls_fingerprint()).then_some(fingerprint).flatten();
        if certificate.is_some() {
            changed.push("[tls] certificate");
        }
        if !live.access.same_jwt_key(&current.access) && !changed.iter().any(|key| key.starts_with("[auth] jwt_")) {
            changed.push("[auth] JWT key");
        }
        self.live.replace(live);
        Ok(Reloaded { changed, fixed, certificate })
    }

    /// Makes everything accepted durable, sends it, and closes every client with 1001; returns
    /// once every connection has ended (or after 5 s).
    pub async fn shutdown(&self) {
        let _ = self.deps.state.send(state::Shutdown).await;
        if let Some(mesh) = &self.mesh {
            let _ = mesh.stop.send(mesh::Shutdown).await;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.connections.total() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What a successful [`Relay::reload`] changed.
#[derive(Debug)]
pub struct Reloaded {
    /// Live keys whose values changed (names only).
    pub changed: Vec<&'static str>,
    /// Keys that differ from the running configuration but need a restart (kept as running).
    pub fixed: Vec<&'static str>,
    /// The new certificate's SHA-256 fingerprint, when the TLS certificate changed.
    pub certificate: Option<String>,
}

/// Where a running relay writes its process id: `<ledger path>.pid`, beside the ledger's lock.
pub fn pid_path(ledger: &Path) -> PathBuf {
    let mut path = ledger.as_os_str().to_owned();
    path.push(".pid");
    PathBuf::from(path)
}

/// What a panic does, logged at start: the process always ends (see [`abort_on_panic`]).
pub const PANIC_STRATEGY: &str = if cfg!(panic = "abort") {
    "abort (panic = \"abort\"): the process exits; the service manager restarts it and boot replays the ledger"
} else {
    "abort (panic hook): the process exits; the service manager restarts it and boot replays the ledger"
};

/// Makes any panic, on any thread, end the process (after the usual message), in every build.
///
/// actix does not restart an actor that panicked (its `Supervisor` restarts only actors that
/// stopped), so after a panic in a singleton the process would keep serving with that actor gone:
/// every join answered with 1001, every write refused. Ending the process lets the service
/// manager restart it (`Restart=always`), and boot replays the ledger, which holds everything
/// any client was shown. Release builds also set `panic = "abort"` (Cargo.toml); this hook
/// covers debug builds, whose tests need unwinding.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("aether-actix: aborting after a panic (a relay with a dead actor must not keep serving)");
        std::process::abort();
    }));
}

/// Serves the relay on `listener` until SIGINT or SIGTERM, then shuts down gracefully. SIGHUP
/// re-reads `config_path` ([`Relay::reload`]); without one it has nothing to re-read.
///
/// # Errors
/// [`Error`] when the ledger cannot be opened or the server fails.
pub async fn run(config: Config, config_path: Option<PathBuf>, listener: TcpListener) -> Result<(), Error> {
    // Handlers first: from the moment anything is served, SIGTERM means a graceful stop, and a
    // SIGHUP during the replay waits for it instead of ending the process (its default action).
    let mut signals = Signals::install();
    abort_on_panic();
    // Check TLS files before the (possibly long) replay, so a typo fails at once.
    let live = LiveConfig::new(Live::prepare(config.clone()).map_err(Error::Tls)?);
    let tls = live::switching_acceptor(&live).map_err(|e| Error::Tls(format!("[tls] {e}")))?;
    let mesh_tls = TlsConfig { cert: config.mesh.tls.cert.clone(), key: config.mesh.tls.key.clone() };
    let mesh_tls = live::acceptor(&mesh_tls).map_err(|e| Error::Tls(format!("[mesh.tls] {e}")))?;
    let mesh_listener = match config.mesh.bind {
        Some(bind) => Some(
            TcpListener::bind(bind)
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for peers on {bind}: {e}")))?,
        ),
        None => None,
    };
    let nats = match config.mesh.transport {
        Transport::Nats => Some(nats::connect(&config.mesh.nats, &config.mesh.node_id).await.map_err(Error::Nats)?),
        Transport::Websocket => None,
    };
    let relay = Relay::start(&config, nats, live)?;
    log::info!("on panic: {PANIC_STRATEGY}");
    let pid_file = pid_path(&config.ledger.path);
    if let Err(err) = std::fs::write(&pid_file, format!("{}\n", std::process::id())) {
        log::warn!("cannot write {}: {err} (`aether-actix reload` needs it; SIGHUP works)", pid_file.display());
    }
    warn_if_caps_exceed_open_files(&config.limits);
    let mesh_server = match (relay.mesh.as_ref().and_then(|m| Some((m, m.links.as_ref()?))), mesh_listener) {
        (Some((mesh, links)), Some(listener)) => {
            let addr = listener.local_addr()?;
            let scheme = if mesh_tls.is_some() { "wss" } else { "ws" };
            let server =
                mesh::serve(listener, mesh_tls, Arc::clone(&mesh.shared), links.clone(), config.mesh.max_peers)?;
            log::info!("mesh listening on {scheme}://{addr}");
            let handle = server.handle();
            actix_web::rt::spawn(server);
            Some(handle)
        }
        _ => None,
    };
    let addr = listener.local_addr()?;
    // Sockets accepted from here inherit it: the kernel resets a connection whose sent bytes go
    // unacknowledged that long, which frees what the kernel still holds to send to a client that
    // stopped reading after its session gave up on it (tests/hostile.rs).
    let timeout = session::socket_timeout(&config.limits);
    let millis = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    if let Err(err) = rustix::net::sockopt::set_tcp_user_timeout(&listener, millis) {
        log::warn!("cannot set TCP_USER_TIMEOUT ({err}): a client that stops reading is dropped by its session only");
    }
    set_backlog(&listener, config.server.listen_backlog);
    // actix stops accepting on a worker that holds 25,600 connections (its default; a WebSocket
    // leaves that count at its upgrade), and the listen queue then overflows: no worker should
    // pause below what the process can hold. Our own caps ([limits], live) refuse past them with
    // 1013, and every connection is a file descriptor, so the open-file limit bounds them all.
    let serving =
        http::Serving { max_connections_per_worker: open_file_limit().unwrap_or(0).max(25_600), shutdown_timeout_s: 5 };
    let scheme = if tls.is_some() { ("https", "wss") } else { ("http", "ws") };
    let server = http::serve(listener, tls, &relay, &serving)?;
    log::info!("listening on {}://{addr} (WebSocket at {}://{addr}/ws)", scheme.0, scheme.1);
    let handle = server.handle();
    if let Some(hangups) = signals.hangup.take() {
        actix_web::rt::spawn(reload_on_hangup(hangups, relay.clone(), config_path));
    }
    actix_web::rt::spawn(async move {
        let signal = signals.wait().await;
        log::info!("{signal}: shutting down");
        handle.pause().await;
        relay.shutdown().await;
        if let Some(mesh) = mesh_server {
            mesh.stop(true).await;
        }
        handle.stop(true).await;
    });
    server.await?;
    // Everything accepted was made durable and sent before the workers were told to stop.
    let _ = std::fs::remove_file(&pid_file);
    log::info!("stopped");
    Ok(())
}

/// Reloads the configuration on every SIGHUP, logging the outcome in one line (and a warning
/// naming the keys that need a restart).
async fn reload_on_hangup(mut hangups: tokio::signal::unix::Signal, relay: Relay, path: Option<PathBuf>) {
    while hangups.recv().await.is_some() {
        let Some(path) = &path else {
            log::warn!("SIGHUP: the relay was started without --config; there is nothing to re-read");
            continue;
        };
        match relay.reload(path) {
            Ok(reloaded) => {
                // The restart keys first: the "reloaded" line closes the report.
                if !reloaded.fixed.is_empty() {
                    log::warn!(
                        "SIGHUP: {}: {} changed, which only a restart applies; the running values stay",
                        path.display(),
                        reloaded.fixed.join(", ")
                    );
                }
                let changed = if reloaded.changed.is_empty() {
                    "no live key changed".to_owned()
                } else {
                    format!("new connections get the new {}", reloaded.changed.join(", "))
                };
                let certificate = reloaded.certificate.map(|fp| format!(" (SHA-256 {fp})")).unwrap_or_default();
                log::info!("SIGHUP: reloaded {}: {changed}{certificate}", path.display());
            }
            Err(err) => log::error!("SIGHUP: {err}; the running configuration stays"),
        }
    }
}

/// Asks the kernel for a listen queue of `backlog` on `listener` (listening again only resizes
/// the queue). The standard library listens with 128: a burst of connects beyond what the
/// accept loop drains in time overflows it, the kernel drops those SYNs, and each such client
/// waits a second for its retry (benches/README.md, "Dense connections"). The kernel caps the
/// queue at `net.core.somaxconn`; the start log says what is in force.
fn set_backlog(listener: &TcpListener, backlog: u32) {
    let wanted = i32::try_from(backlog).unwrap_or(i32::MAX);
    if let Err(err) = rustix::net::listen(listener, wanted) {
        log::warn!("cannot resize the listen queue to {backlog} ({err}): it stays at 128");
        return;
    }
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn").ok().and_then(|s| s.trim().parse::<u32>().ok());
    match cap {
        Some(cap) if cap < backlog && cap < 4096 => log::warn!(
            "listen queue: {cap} (net.core.somaxconn caps [server] listen_backlog = {backlog}): a burst of more \
             connects than that waits a second for its retry; raise net.core.somaxconn"
        ),
        Some(cap) => log::info!("listen queue: {}", cap.min(backlog)),
        None => log::info!("listen queue: {backlog} asked (net.core.somaxconn unknown; it caps this)"),
    }
}

/// Warns when the connection cap is above what the open-file limit lets the process hold (every
/// connection is a file descriptor; the ledger, listeners and peers need some too).
fn warn_if_caps_exceed_open_files(limits: &crate::config::Limits) {
    if let Some(soft) = open_file_limit()
        && limits.max_connections_total + 64 > soft
    {
        log::warn!(
            "[limits] max_connections_total = {} but the open-file limit is {soft}: connections past about {} will fail to open (raise LimitNOFILE)",
            limits.max_connections_total,
            soft.saturating_sub(64)
        );
    }
}

/// The process's open-file soft limit (`/proc/self/limits`), if it can be read.
fn open_file_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    text.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}

/// SIGINT and SIGTERM (stop) and SIGHUP (reload), caught from the moment they are installed.
struct Signals {
    stop: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        let stop = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
            (Ok(int), Ok(term)) => Some((int, term)),
            _ => {
                log::error!("cannot install signal handlers; stop with SIGKILL");
                None
            }
        };
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|err| log::error!("cannot catch SIGHUP ({err}): reloading needs a restart"))
            .ok();
        Signals { stop, hangup }
    }

    async fn wait(self) -> &'static str {
        match self.stop {
            Some((mut int, mut term)) => tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            None => std::future::pending().await,
        }
    }
}
