//! The relays under test, as child processes: ours (the release binary) and upstream's
//! (`benches/upstream/relay.py` under the interpreter named by `AETHER_BENCH_UPSTREAM`); and the
//! `nats-server` the `nats` scenario federates ours through.
//!
//! Both listen on `127.0.0.1:0` only; the bench learns the port from the relay's own output
//! (ours logs `listening on http://ADDR`, the driver prints its `ws://` URL). Every process is
//! stopped with SIGTERM (graceful: both write every accepted record), then SIGKILL after 10 s,
//! and killed on drop if still running.

use std::{
    fmt, fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::util::{cpu_secs, temp_dir, upstream_script, vm_rss_kib};

/// How long a relay may take to start listening (a replay of a large ledger included).
const START_LIMIT: Duration = Duration::from_secs(120);

/// Which relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// aether-actix.
    Ours,
    /// Aether-Core 0.4.0 (Python).
    Upstream,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Ours => "aether-actix",
            Kind::Upstream => "upstream 0.4.0",
        })
    }
}

/// How to start a relay.
#[derive(Clone, Debug)]
pub struct Launch {
    /// Our binary.
    pub bin: PathBuf,
    /// Upstream's interpreter, if upstream is benchmarked.
    pub python: Option<PathBuf>,
}

/// Options for our relay's configuration.
#[derive(Clone, Debug)]
pub struct OursConfig {
    /// `[ledger] sync`.
    pub sync: &'static str,
    /// Extra lines for `[limits]`.
    pub limits: String,
    /// Extra tables at the end (`[mesh]`).
    pub mesh: String,
    /// `[ledger] compact_after_bytes` (0: never compact online).
    pub compact_after_bytes: u64,
}

impl Default for OursConfig {
    fn default() -> Self {
        OursConfig { sync: "always", limits: String::new(), mesh: String::new(), compact_after_bytes: 0 }
    }
}

/// Writes the configuration the bench runs our relay with; returns its path.
pub fn write_ours_config(dir: &Path, ledger: &Path, cfg: &OursConfig) -> PathBuf {
    let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let text = format!(
        "[server]\nbind = \"127.0.0.1:0\"\nstatic_dir = {static_dir:?}\n\n\
         [ledger]\npath = {ledger:?}\nsync = \"{sync}\"\ncompact_after_bytes = {compact}\n\n\
         [limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n\
         max_connections_per_source = 20000\nmax_connections_total = 20000\n{extra}\n\n\
         [rooms]\nmax_keys = 1000000000\nmax_bytes = 1099511627776\ncreated_per_minute = 1000000\n\n{mesh}",
        sync = cfg.sync,
        compact = cfg.compact_after_bytes,
        extra = cfg.limits,
        mesh = cfg.mesh,
    );
    let path = dir.join("bench.toml");
    fs::write(&path, text).expect("write config");
    path
}

/// A running relay.
pub struct Relay {
    /// Which one.
    pub kind: Kind,
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its ledger file.
    pub ledger: PathBuf,
    /// Spawn to listening.
    pub boot: Duration,
    log: Arc<Mutex<Vec<String>>>,
    _dir: Option<TempDir>,
}

/// Collects a child's output lines into `log`, and sends the first line `ready` recognises.
fn watch<R: Read + Send + 'static>(
    out: R,
    log: Arc<Mutex<Vec<String>>>,
    ready: fn(&str) -> Option<String>,
    tx: mpsc::Sender<String>,
) {
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(addr) = ready(&line) {
                let _ = tx.send(addr);
            }
            log.lock().expect("log lock").push(line);
        }
    });
}

fn ours_ready(line: &str) -> Option<String> {
    line.split("listening on http://").nth(1).map(|rest| rest.split_whitespace().next().unwrap_or("").to_owned())
}

fn upstream_ready(line: &str) -> Option<String> {
    line.trim().strip_prefix("ws://").map(str::to_owned)
}

fn never(_: &str) -> Option<String> {
    None
}

impl Relay {
    /// Our relay on a fresh temporary ledger.
    pub fn ours(launch: &Launch, cfg: &OursConfig) -> Relay {
        let dir = temp_dir();
        let ledger = dir.path().join("ledger.jsonl");
        let config = write_ours_config(dir.path(), &ledger, cfg);
        let mut relay = Relay::ours_with(launch, &config, ledger);
        relay._dir = Some(dir);
        relay
    }

    /// Our relay with a given configuration file (whose ledger is `ledger`).
    pub fn ours_with(launch: &Launch, config: &Path, ledger: PathBuf) -> Relay {
        let started = Instant::now();
        let mut child = Command::new(&launch.bin)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            // Plain log lines (the bench reads them) and no auth, whatever the caller's environment.
            .env_remove("AETHER_LOG_FORMAT")
            .env_remove("AETHER_AUTH_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", launch.bin.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr: ChildStderr = child.stderr.take().expect("stderr is piped");
        watch(stderr, Arc::clone(&log), ours_ready, tx);
        Relay::wait_ready(Kind::Ours, child, rx, started, ledger, log)
    }

    /// Upstream's relay on a fresh temporary ledger.
    pub fn upstream(launch: &Launch) -> Option<Relay> {
        let dir = temp_dir();
        let ledger = dir.path().join("ledger.jsonl");
        let mut relay = Relay::upstream_with(launch, ledger)?;
        relay._dir = Some(dir);
        Some(relay)
    }

    /// Upstream's relay on `ledger` (and its snapshot, if any).
    pub fn upstream_with(launch: &Launch, ledger: PathBuf) -> Option<Relay> {
        let python = launch.python.as_ref()?;
        let started = Instant::now();
        let mut child = Command::new(python)
            .arg(upstream_script("relay.py"))
            .arg(&ledger)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout: ChildStdout = child.stdout.take().expect("stdout is piped");
        let stderr: ChildStderr = child.stderr.take().expect("stderr is piped");
        watch(stdout, Arc::clone(&log), upstream_ready, tx.clone());
        watch(stderr, Arc::clone(&log), never, tx);
        Some(Relay::wait_ready(Kind::Upstream, child, rx, started, ledger, log))
    }

    /// Either relay on a fresh ledger; `None` for upstream when it is not benchmarked.
    pub fn start(kind: Kind, launch: &Launch, cfg: &OursConfig) -> Option<Relay> {
        match kind {
            Kind::Ours => Some(Relay::ours(launch, cfg)),
            Kind::Upstream => Relay::upstream(launch),
        }
    }

    fn wait_ready(
        kind: Kind,
        mut child: Child,
        rx: mpsc::Receiver<String>,
        started: Instant,
        ledger: PathBuf,
        log: Arc<Mutex<Vec<String>>>,
    ) -> Relay {
        let addr = match rx.recv_timeout(START_LIMIT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(100));
                panic!("{kind} did not start listening; output:\n{}", log.lock().expect("log lock").join("\n"));
            }
        };
        let boot = started.elapsed();
        let addr: SocketAddr = addr.parse().unwrap_or_else(|_| panic!("{kind} printed a bad address {addr:?}"));
        assert!(matches!(addr, SocketAddr::V4(a) if a.ip().is_loopback()), "loopback only, got {addr}");
        Relay { kind, child, addr, ledger, boot, log, _dir: None }
    }

    /// The WebSocket URL: ours serves it at `/ws`, upstream at any path.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Ours => format!("ws://{}/ws", self.addr),
            Kind::Upstream => format!("ws://{}/", self.addr),
        }
    }

    /// CPU seconds the relay has used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.child.id().to_string())
    }

    /// CPU seconds of each of the relay's threads.
    pub fn threads(&self) -> Vec<(String, String, f64)> {
        crate::util::thread_cpu(self.child.id())
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.child.id()).unwrap_or(0)
    }

    /// `GET path` on our relay: the status line and the body.
    fn get(&self, path: &str) -> std::io::Result<(String, String)> {
        let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", self.addr)?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        Ok((head.lines().next().unwrap_or("").to_owned(), body.to_owned()))
    }

    /// Our `/metrics` text (empty for upstream, or on error).
    pub fn metrics(&self) -> String {
        if self.kind != Kind::Ours {
            return String::new();
        }
        self.get("/metrics").map(|(_, body)| body).unwrap_or_default()
    }

    /// Our `/healthz`, parsed.
    pub fn healthz(&self) -> Result<serde_json::Value, String> {
        let (status, body) = self.get("/healthz").map_err(|e| format!("/healthz: {e}"))?;
        if !status.contains(" 200 ") {
            return Err(format!("/healthz: {status}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("/healthz: {e}"))
    }

    /// Where our relay listens for peers (it logs `mesh listening on ws://ADDR` before it listens
    /// for clients), if it does.
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.log_lines().iter().find_map(|l| {
            let rest = l.split("mesh listening on ws://").nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// Waits (up to 5 s) until our `/healthz` answers 200; upstream's driver is ready when it
    /// prints its URL.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.kind == Kind::Ours && Instant::now() < deadline {
            if self.get("/healthz").is_ok_and(|(status, _)| status.contains(" 200 ")) {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every output line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Sends SIGTERM and returns at once (a second one, from [`Relay::stop`], changes nothing:
    /// the handler stays installed). The child is not reaped until `stop`, so its pid cannot
    /// have been reused.
    pub fn terminate(&self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
    }

    /// SIGTERM (both relays drain and close clients), then SIGKILL if still running after 10 s.
    /// Returns the exit status (`None`: killed) and how long it took.
    pub fn stop(&mut self) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        if let Ok(Some(status)) = self.child.try_wait() {
            return (Some(status), Duration::ZERO);
        }
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(20)); // let the log readers catch up
                return (Some(status), started.elapsed());
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (None, started.elapsed())
    }

    /// Log lines worth a look (warnings, errors, slow or rate-limited clients, panics), without
    /// timestamps and with client ids masked, so that repeats group.
    pub fn notable_log(&self) -> Vec<String> {
        const WORDS: [&str; 9] =
            ["WARN", "ERROR", "too slowly", "rate budget", "panicked", "restarting", "Traceback", "refused", "crashed"];
        self.log_lines()
            .iter()
            .filter(|l| WORDS.iter().any(|w| l.contains(w)))
            .filter(|l| !l.contains(r#"sync = "none""#)) // the expected warning of that mode
            .filter(|l| !l.contains("WARNING bench ")) // the driver's own replay report
            .filter(|l| !l.contains("no [mesh] token")) // the bench's federations are unauthenticated
            .map(|l| {
                let l = l.split_once("] ").map_or(l.as_str(), |(_, rest)| rest);
                let id = |w: &&str| w.len() == 8 && w.bytes().all(|b| b.is_ascii_hexdigit());
                l.split(' ').map(|w| if id(&w) { "<id>" } else { w }).collect::<Vec<_>>().join(" ")
            })
            .collect()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Stops `relay` and returns notes on anything odd: a bad exit, a slow shutdown, notable log
/// lines, and a ledger with fewer records than `acked` (or not exactly `acked` when `exact`).
pub fn stop_and_check(relay: &mut Relay, what: &str, acked: Option<(u64, bool)>) -> Vec<String> {
    let mut notes = Vec::new();
    let kind = relay.kind;
    let (status, took) = relay.stop();
    match status {
        Some(s) if s.success() => {}
        Some(s) => notes.push(format!("{kind} {what}: exited with {s} after SIGTERM")),
        None => notes.push(format!("{kind} {what}: still running {:.0} s after SIGTERM; killed", took.as_secs_f64())),
    }
    if status.is_some() && took > Duration::from_secs(3) {
        notes.push(format!("{kind} {what}: graceful shutdown took {took:.1?}"));
    }
    for (n, line) in crate::util::grouped(relay.notable_log()) {
        notes.push(format!("{kind} {what}: log, {n}x: {line:.200}"));
    }
    if let Some((acked, exact)) = acked {
        let found = crate::util::count_lines(&relay.ledger);
        if found < acked || (exact && found != acked) {
            notes.push(format!("{kind} {what}: ledger holds {found} records, {acked} writes were acknowledged"));
        }
    }
    notes
}

/// `(sum, count)` of a histogram in Prometheus text.
pub fn histogram(metrics: &str, name: &str) -> Option<(f64, f64)> {
    let value = |suffix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    Some((value("sum")?, value("count")?))
}

/// Debian's `nats-server` (or `AETHER_BENCH_NATS_SERVER`): on PATH, or where Debian puts it.
pub fn nats_server_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("AETHER_BENCH_NATS_SERVER").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// A running `nats-server` with JetStream (file storage in a fresh temporary directory), on a
/// free port of 127.0.0.1 (it picks one, `-p -1`, and logs it).
pub struct NatsServer {
    child: Child,
    /// Where clients connect.
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

fn nats_ready(line: &str) -> Option<String> {
    line.split("Listening for client connections on ").nth(1).map(|rest| rest.trim().to_owned())
}

impl NatsServer {
    /// Starts `bin -js -a 127.0.0.1 -p -1 -sd DIR` and waits until it listens.
    pub fn start(bin: &Path) -> Result<NatsServer, String> {
        let dir = temp_dir();
        let mut child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", "-1", "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        watch(child.stderr.take().expect("stderr is piped"), Arc::clone(&log), nats_ready, tx);
        let addr = rx.recv_timeout(Duration::from_secs(20)).ok().and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(addr) = addr.filter(|a| matches!(a, SocketAddr::V4(v4) if v4.ip().is_loopback())) else {
            let _ = child.kill();
            let _ = child.wait();
            thread::sleep(Duration::from_millis(100));
            return Err(format!(
                "nats-server did not listen on 127.0.0.1; output:\n{}",
                log.lock().expect("log lock").join("\n")
            ));
        };
        Ok(NatsServer { child, addr, log, _dir: dir })
    }

    /// `nats://ADDR`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// CPU seconds it has used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.child.id().to_string())
    }

    /// SIGTERM, then SIGKILL if still running after 10 s; notes on a bad or slow exit and on its
    /// warnings and errors (`[WRN]`, `[ERR]`, `[FTL]`), grouped.
    pub fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        let started = Instant::now();
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(20)); // let the log reader catch up
                break Some(status);
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(5));
        };
        // nats-server shuts down the same on SIGTERM and SIGINT, but exits 1 on SIGTERM.
        let graceful = self.log.lock().expect("log lock").iter().any(|l| l.contains("Server Exiting"));
        match status {
            Some(s) if s.success() || (s.code() == Some(1) && graceful) => {}
            Some(s) => notes.push(format!("nats-server: exited with {s} after SIGTERM")),
            None => notes.push("nats-server: still running 10 s after SIGTERM; killed".to_owned()),
        }
        let lines = self.log.lock().expect("log lock").clone();
        // `[PID] DATE TIME [WRN] 127.0.0.1:PORT - cid:N - text` as `[WRN] text`, so that repeats group.
        let notable = lines.iter().filter_map(|l| {
            let at = ["[WRN]", "[ERR]", "[FTL]"].iter().find_map(|w| l.find(w))?;
            let words =
                l[at..].split(' ').filter(|w| !w.starts_with("127.0.0.1:") && !w.starts_with("cid:") && *w != "-");
            Some(words.collect::<Vec<_>>().join(" "))
        });
        for (n, line) in crate::util::grouped(notable) {
            notes.push(format!("nats-server: log, {n}x: {line:.200}"));
        }
        notes
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
