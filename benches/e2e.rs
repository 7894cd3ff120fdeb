//! End-to-end load harness against the real relay binary, over loopback WebSockets.
//!
//! For each ledger sync mode (`always`: fdatasync per group-committed batch; `none`: write only)
//! it starts a fresh `aether-actix` on `127.0.0.1:0` with a temporary ledger and raised limits,
//! runs one scenario, and stops it (SIGTERM, SIGKILL after 10 s):
//!
//! - **latency**: client A sets a key, client B receives the broadcast; one write at a time.
//!   Every write is fsynced (in `always`) before B can see it.
//! - **throughput**: N writer connections, each keeping up to W writes un-echoed; a write counts
//!   when its writer receives its own echo (the echo is sent only once the write is durable).
//!   Every connection also receives every other writer's echoes (the relay broadcasts to all).
//!
//! `cargo build --release && cargo bench --bench e2e`. Environment (all optional):
//! `AETHER_BIN` (binary; default the one cargo built for this bench, `target/release/aether-actix`),
//! `AETHER_BENCH_SYNC` (`always,none`), `AETHER_BENCH_SECS` (5), `AETHER_BENCH_SAMPLES` (2000),
//! `AETHER_BENCH_WARMUP` (200), `AETHER_BENCH_CONNS` (`1,64`), `AETHER_BENCH_WINDOW` (`16,256`: every
//! connection count runs with every window, after a 1-connection, window-1 run),
//! `AETHER_BENCH_DIR` (where the temporary ledger directories go; default the system temp dir).
//!
//! Without `--bench` (as under `cargo test --all-targets`) it does nothing.

use std::{
    borrow::Cow,
    collections::VecDeque,
    env, fs,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Barrier, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;
use tungstenite::{Message, WebSocket};

/// Longest any single socket read may block before the scenario fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the writers may take to collect their outstanding echoes after the measured window.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long the relay may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How the relay frames a set, up to the key; a frame that does not start like this is parsed.
const SET_KEY_PREFIX: &str = r#"{"type":"set","key":""#;

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    bin: PathBuf,
    syncs: Vec<String>,
    secs: f64,
    samples: usize,
    warmup: usize,
    conns: Vec<usize>,
    windows: Vec<usize>,
    dir: Option<PathBuf>,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match env::var(name) {
        Ok(v) => v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={v} is not valid")),
        Err(_) => default,
    }
}

fn env_list(name: &str, default: &str) -> Vec<String> {
    env::var(name).unwrap_or_else(|_| default.to_owned()).split(',').map(|s| s.trim().to_owned()).collect()
}

impl Settings {
    fn from_env() -> Settings {
        let bin =
            env::var_os("AETHER_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_aether-actix")), PathBuf::from);
        let numbers = |name: &str, default: &str| -> Vec<usize> {
            env_list(name, default)
                .iter()
                .map(|c| {
                    c.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| panic!("{name}: {c} is not a positive number"))
                })
                .collect()
        };
        let syncs = env_list("AETHER_BENCH_SYNC", "always,none");
        for sync in &syncs {
            assert!(sync == "always" || sync == "none", "AETHER_BENCH_SYNC: {sync} is neither always nor none");
        }
        Settings {
            bin,
            syncs,
            secs: env_or("AETHER_BENCH_SECS", 5.0),
            samples: env_or("AETHER_BENCH_SAMPLES", 2000),
            warmup: env_or("AETHER_BENCH_WARMUP", 200),
            conns: numbers("AETHER_BENCH_CONNS", "1,64"),
            windows: numbers("AETHER_BENCH_WINDOW", "16,256"),
            dir: env::var_os("AETHER_BENCH_DIR").map(PathBuf::from),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The relay process

struct Server {
    child: Child,
    addr: SocketAddr,
    ledger: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Server {
    fn start(settings: &Settings, sync: &str) -> Server {
        let dir = match &settings.dir {
            Some(parent) => tempfile::tempdir_in(parent),
            None => tempfile::tempdir(),
        }
        .expect("temporary directory");
        let ledger = dir.path().join("ledger.jsonl");
        let config = dir.path().join("bench.toml");
        let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
        let text = format!(
            "[server]\nbind = \"127.0.0.1:0\"\nstatic_dir = {static_dir:?}\n\n\
             [ledger]\npath = {ledger:?}\nsync = \"{sync}\"\n\n\
             [limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n\
             max_connections_per_source = 10000\nmax_connections_total = 10000\n"
        );
        fs::write(&config, text).expect("write config");
        let mut child = Command::new(&settings.bin)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", settings.bin.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let addr = match rx.recv_timeout(START_LIMIT) {
            Ok(addr) => addr.parse().expect("the relay logs its bound address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("relay did not start listening; log:\n{}", log.lock().expect("log lock").join("\n"));
            }
        };
        assert!(matches!(addr, SocketAddr::V4(a) if a.ip().is_loopback()), "loopback only, got {addr}");
        Server { child, addr, ledger, log, _dir: dir }
    }

    /// CPU seconds (user + system) the relay has used so far.
    fn cpu_secs(&self) -> f64 {
        proc_cpu_secs(&format!("/proc/{}/stat", self.child.id()))
    }

    /// SIGTERM (graceful: drain, close clients), then SIGKILL if it has not exited within 10 s.
    fn stop(&mut self) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (Some(status), started.elapsed());
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (None, started.elapsed())
    }

    /// Log lines worth a look (warnings, errors, slow or rate-limited clients, panics), without
    /// their timestamp and with client ids masked, so that repeats can be counted.
    fn notable_log(&self) -> Vec<String> {
        let log = self.log.lock().expect("log lock");
        log.iter()
            .filter(|l| {
                ["WARN", "ERROR", "too slowly", "rate budget", "panicked", "restarting"].iter().any(|w| l.contains(w))
            })
            .filter(|l| !l.contains(r#"sync = "none""#)) // the expected warning of that mode
            .map(|l| {
                let l = l.split_once("] ").map_or(l.as_str(), |(_, rest)| rest);
                let hex_id = |w: &&str| w.len() == 8 && w.bytes().all(|b| b.is_ascii_hexdigit());
                l.split(' ').map(|w| if hex_id(&w) { "<id>" } else { w }).collect::<Vec<_>>().join(" ")
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn proc_cpu_secs(stat_path: &str) -> f64 {
    let Ok(stat) = fs::read_to_string(stat_path) else { return f64::NAN };
    // Fields after the command name (which is in parentheses): state is field 3, utime 14, stime 15.
    let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / clock_ticks()
}

// ---------------------------------------------------------------------------------------------
// A blocking WebSocket client

struct Client {
    ws: WebSocket<TcpStream>,
}

impl Client {
    /// Connects and reads the two greeting frames (`hello`, `snapshot`).
    fn connect(addr: SocketAddr) -> Result<Client, String> {
        let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
        stream.set_read_timeout(Some(READ_TIMEOUT)).map_err(|e| format!("read timeout: {e}"))?;
        let (ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).map_err(|e| format!("handshake: {e}"))?;
        let mut client = Client { ws };
        for expected in ["hello", "snapshot"] {
            let frame = client.next_text()?;
            let kind = serde_json::from_str::<Value>(&frame).ok().and_then(|v| v["type"].as_str().map(str::to_owned));
            if kind.as_deref() != Some(expected) {
                return Err(format!("expected {expected} first, got {frame:.120}"));
            }
        }
        Ok(client)
    }

    /// The next text frame; control frames are skipped, a close is an error.
    fn next_text(&mut self) -> Result<String, String> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => return Ok(text.as_str().to_owned()),
                Ok(Message::Close(Some(frame))) => {
                    return Err(format!("closed by the relay: {} {}", u16::from(frame.code), frame.reason.as_str()));
                }
                Ok(Message::Close(None)) => return Err("closed by the relay without a code".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Reads until the `set` frame for `key` arrives.
    fn wait_for(&mut self, key: &str) -> Result<(), String> {
        loop {
            let frame = self.next_text()?;
            if set_key(&frame).as_deref() == Some(key) {
                return Ok(());
            }
        }
    }

    fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

/// The key of a `set` frame, `None` for any other frame.
fn set_key(frame: &str) -> Option<Cow<'_, str>> {
    if let Some(rest) = frame.strip_prefix(SET_KEY_PREFIX)
        && let Some(end) = rest.find('"')
        && !rest[..end].contains('\\')
    {
        return Some(Cow::Borrowed(&rest[..end]));
    }
    let value: Value = serde_json::from_str(frame).ok()?;
    if value["type"] != "set" {
        return None;
    }
    value["key"].as_str().map(|k| Cow::Owned(k.to_owned()))
}

fn set_frame(key: &str, i: u64) -> Message {
    Message::text(format!(r#"{{"type":"set","key":"{key}","value":{{"i":{i},"tag":"bench"}}}}"#))
}

// ---------------------------------------------------------------------------------------------
// Scenarios

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Latency {
    sorted: Vec<Duration>,
    wall: Duration,
}

/// A sets, B receives; sequential.
fn latency(addr: SocketAddr, warmup: usize, samples: usize) -> Result<Latency, String> {
    let mut a = Client::connect(addr)?;
    let mut b = Client::connect(addr)?;
    let mut out = Vec::with_capacity(samples);
    let mut started = Instant::now();
    for i in 0..(warmup + samples) as u64 {
        if i == warmup as u64 {
            started = Instant::now();
        }
        let key = format!("lat:{i}");
        let t0 = Instant::now();
        a.ws.send(set_frame(&key, i)).map_err(|e| format!("send: {e}"))?;
        b.wait_for(&key)?;
        let dt = t0.elapsed();
        a.wait_for(&key)?; // A gets its own echo too; it must be read, or A's queue fills
        if i >= warmup as u64 {
            out.push(dt);
        }
    }
    let wall = started.elapsed();
    a.close();
    b.close();
    out.sort();
    Ok(Latency { sorted: out, wall })
}

#[derive(Default)]
struct Writer {
    /// Own echoes received by the end of the measured window.
    acked_in_window: u64,
    /// Own echoes received in all (the window plus the drain).
    acked: u64,
    sent: u64,
    /// Frames of any kind received in the measured window (own and other writers' echoes).
    frames_in_window: u64,
    /// Send-to-own-echo time of each write acknowledged in the window.
    ack_latency: Vec<Duration>,
    /// Own echoes that arrived out of send order.
    out_of_order: u64,
    error: Option<String>,
}

/// One writer connection: keep up to `window` writes un-echoed until `deadline`, then drain.
fn write_loop(mut client: Client, id: usize, window: usize, start: &Barrier, secs: f64) -> Writer {
    let mut w = Writer::default();
    let key_prefix = format!("w{id:03}:");
    let refill_at = window - (window / 8).max(1); // refill in chunks, not one frame per echo
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(window);
    start.wait();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let result = (|| -> Result<(), String> {
        loop {
            let now = Instant::now();
            let sending = now < deadline;
            if sending && in_flight.len() <= refill_at {
                while in_flight.len() < window {
                    client
                        .ws
                        .write(set_frame(&format!("{key_prefix}{}", w.sent), w.sent))
                        .map_err(|e| format!("write: {e}"))?;
                    in_flight.push_back(Instant::now());
                    w.sent += 1;
                }
                client.ws.flush().map_err(|e| format!("flush: {e}"))?;
            }
            if !sending && in_flight.is_empty() {
                return Ok(());
            }
            if now > deadline + DRAIN_LIMIT {
                return Err(format!("{} echoes still missing {DRAIN_LIMIT:?} after the window", in_flight.len()));
            }
            let frame = client.next_text()?;
            let at = Instant::now();
            let in_window = at <= deadline;
            w.frames_in_window += u64::from(in_window);
            let Some(key) = set_key(&frame) else { continue };
            let Some(seq) = key.strip_prefix(&key_prefix) else { continue };
            let Some(sent_at) = in_flight.pop_front() else {
                return Err(format!("echo of {key} that was never sent"));
            };
            if seq.parse::<u64>().ok() != Some(w.acked) {
                w.out_of_order += 1;
            }
            w.acked += 1;
            if in_window {
                w.acked_in_window += 1;
                w.ack_latency.push(at - sent_at);
            }
        }
    })();
    w.error = result.err();
    client.close();
    w
}

struct Throughput {
    conns: usize,
    window: usize,
    secs: f64,
    acked_in_window: u64,
    sent: u64,
    acked: u64,
    frames_in_window: u64,
    out_of_order: u64,
    ack_latency: Vec<Duration>,
    /// Fewest and most writes one connection got acknowledged in the window (fairness).
    per_conn: (u64, u64),
    errors: Vec<String>,
    client_cpu: f64,
}

fn throughput(addr: SocketAddr, conns: usize, window: usize, secs: f64) -> Result<Throughput, String> {
    let clients = (0..conns).map(|_| Client::connect(addr)).collect::<Result<Vec<_>, _>>()?;
    let start = Arc::new(Barrier::new(conns + 1));
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, client)| {
            let start = Arc::clone(&start);
            thread::Builder::new()
                .name(format!("writer-{id}"))
                .spawn(move || write_loop(client, id, window, &start, secs))
                .expect("spawn writer thread")
        })
        .collect();
    let cpu_before = proc_cpu_secs("/proc/self/stat");
    start.wait();
    let mut t = Throughput {
        conns,
        window,
        secs,
        acked_in_window: 0,
        sent: 0,
        acked: 0,
        frames_in_window: 0,
        out_of_order: 0,
        ack_latency: Vec::new(),
        per_conn: (u64::MAX, 0),
        errors: Vec::new(),
        client_cpu: 0.0,
    };
    for (id, handle) in handles.into_iter().enumerate() {
        let w = handle.join().map_err(|_| format!("writer {id} panicked"))?;
        t.acked_in_window += w.acked_in_window;
        t.sent += w.sent;
        t.acked += w.acked;
        t.frames_in_window += w.frames_in_window;
        t.out_of_order += w.out_of_order;
        t.per_conn = (t.per_conn.0.min(w.acked_in_window), t.per_conn.1.max(w.acked_in_window));
        t.ack_latency.extend(w.ack_latency);
        if let Some(e) = w.error {
            t.errors.push(e);
        }
    }
    // Includes the drain after the window; close enough to show who held the CPU.
    t.client_cpu = proc_cpu_secs("/proc/self/stat") - cpu_before;
    t.ack_latency.sort();
    Ok(t)
}

fn ledger_records(path: &Path) -> usize {
    fs::read(path).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Driver

struct Run {
    sync: String,
    latency: Option<Latency>,
    throughput: Vec<(Throughput, f64)>,
    notes: Vec<String>,
}

/// Distinct items with their counts, in order of first appearance.
fn grouped(items: impl IntoIterator<Item = String>) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for item in items {
        match out.iter_mut().find(|(_, seen)| *seen == item) {
            Some((n, _)) => *n += 1,
            None => out.push((1, item)),
        }
    }
    out
}

/// Stops the relay and notes anything odd: a bad exit, a slow shutdown, notable log lines, and a
/// ledger that lacks acknowledged writes (`expected_records`: acknowledged count, and whether every
/// write sent was acknowledged so the counts must match exactly).
fn report_server(
    server: &mut Server,
    sync: &str,
    what: &str,
    expected_records: Option<(u64, bool)>,
    notes: &mut Vec<String>,
) {
    let (status, took) = server.stop();
    match status {
        Some(s) if s.success() => {}
        Some(s) => notes.push(format!("[{sync}] {what}: relay exited with {s} after SIGTERM")),
        None => notes.push(format!("[{sync}] {what}: relay ignored SIGTERM for {took:?}; killed")),
    }
    if took > Duration::from_secs(2) {
        notes.push(format!("[{sync}] {what}: graceful shutdown took {took:.1?}"));
    }
    for (n, line) in grouped(server.notable_log()) {
        notes.push(format!("[{sync}] {what}: relay log, {n}x: {line}"));
    }
    if let Some((acked, exact)) = expected_records {
        let found = ledger_records(&server.ledger) as u64;
        if found < acked || (exact && found != acked) {
            notes.push(format!("[{sync}] {what}: ledger holds {found} records, {acked} writes were acknowledged"));
        }
    }
}

fn main() {
    if !env::args().any(|a| a == "--bench") {
        println!("e2e: skipped (a load benchmark; run it with `cargo bench --bench e2e`)");
        return;
    }
    let settings = Settings::from_env();
    if !settings.bin.is_file() {
        eprintln!(
            "e2e: relay binary {} not found; run `cargo build --release` first (or set AETHER_BIN)",
            settings.bin.display()
        );
        std::process::exit(2);
    }
    println!("relay binary: {}", settings.bin.display());
    println!(
        "settings: {} latency samples after {} warm-up; throughput {} s per run, {:?} connections x {:?} window",
        settings.samples, settings.warmup, settings.secs, settings.conns, settings.windows
    );

    let mut runs = Vec::new();
    for sync in &settings.syncs {
        let mut run = Run { sync: sync.clone(), latency: None, throughput: Vec::new(), notes: Vec::new() };

        let mut server = Server::start(&settings, sync);
        println!("\n[sync={sync}] latency: relay on {}", server.addr);
        match latency(server.addr, settings.warmup, settings.samples) {
            Ok(l) => run.latency = Some(l),
            Err(e) => run.notes.push(format!("[{sync}] latency failed: {e}")),
        }
        let expected = (settings.warmup + settings.samples) as u64;
        report_server(&mut server, sync, "latency", run.latency.as_ref().map(|_| (expected, true)), &mut run.notes);

        let mut shapes = vec![(1, 1)];
        for &conns in &settings.conns {
            shapes.extend(settings.windows.iter().map(|&window| (conns, window)));
        }
        for (conns, window) in shapes {
            let mut server = Server::start(&settings, sync);
            println!("[sync={sync}] throughput: {conns} connection(s), window {window}: relay on {}", server.addr);
            let cpu_before = server.cpu_secs();
            let what = format!("{conns}x{window}");
            match throughput(server.addr, conns, window, settings.secs) {
                Ok(t) => {
                    let server_cpu = server.cpu_secs() - cpu_before;
                    for (n, e) in grouped(t.errors.iter().cloned()) {
                        run.notes.push(format!("[{sync}] {what}: {n} of {conns} writers failed: {e}"));
                    }
                    if t.out_of_order > 0 {
                        run.notes.push(format!("[{sync}] {what}: {} own echoes out of send order", t.out_of_order));
                    }
                    let expected = (t.acked, t.errors.is_empty());
                    report_server(&mut server, sync, &what, Some(expected), &mut run.notes);
                    run.throughput.push((t, server_cpu));
                }
                Err(e) => {
                    run.notes.push(format!("[{sync}] {what} failed: {e}"));
                    report_server(&mut server, sync, &what, None, &mut run.notes);
                }
            }
        }
        runs.push(run);
    }
    print_report(&runs);
}

fn print_report(runs: &[Run]) {
    println!("\n== Round trip: client A sets, client B receives (one write at a time) ==");
    println!(
        "{:<14} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "ledger sync", "samples", "p50 ms", "p95 ms", "p99 ms", "max ms", "mean ms", "samples/s"
    );
    for run in runs {
        if let Some(l) = &run.latency {
            let n = l.sorted.len();
            let mean = l.sorted.iter().sum::<Duration>() / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
            println!(
                "{:<14} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>12.0}",
                run.sync,
                n,
                ms(percentile(&l.sorted, 0.50)),
                ms(percentile(&l.sorted, 0.95)),
                ms(percentile(&l.sorted, 0.99)),
                ms(*l.sorted.last().unwrap_or(&Duration::ZERO)),
                ms(mean),
                n as f64 / l.wall.as_secs_f64(),
            );
        }
    }

    println!("(samples/s: sequential writes, each also read back by its writer; no pipelining)");

    println!("\n== Durable write throughput: a write counts when its writer gets its own echo ==");
    println!(
        "{:<12} {:>6} {:>7} {:>11} {:>17} {:>9} {:>9} {:>9} {:>14} {:>10} {:>10}",
        "ledger sync",
        "conns",
        "window",
        "acked/s",
        "per conn min-max",
        "ack p50",
        "ack p99",
        "ack max",
        "frames recv/s",
        "relay CPU",
        "bench CPU"
    );
    for run in runs {
        for (t, server_cpu) in &run.throughput {
            let lat = &t.ack_latency;
            println!(
                "{:<12} {:>6} {:>7} {:>11} {:>17} {:>7.2}ms {:>7.2}ms {:>7.2}ms {:>14.0} {:>9.0}% {:>9.0}%",
                run.sync,
                t.conns,
                t.window,
                format!("{}{:.0}", if t.errors.is_empty() { "" } else { "*" }, t.acked_in_window as f64 / t.secs),
                format!("{:.0}-{:.0}", t.per_conn.0 as f64 / t.secs, t.per_conn.1 as f64 / t.secs),
                ms(percentile(lat, 0.50)),
                ms(percentile(lat, 0.99)),
                ms(*lat.last().unwrap_or(&Duration::ZERO)),
                t.frames_in_window as f64 / t.secs,
                100.0 * server_cpu / t.secs,
                100.0 * t.client_cpu / t.secs,
            );
            if !t.errors.is_empty() {
                println!(
                    "  * {} of {} writers failed before the end (see notes); {} writes sent, {} acknowledged",
                    t.errors.len(),
                    t.conns,
                    t.sent,
                    t.acked
                );
            }
        }
    }
    println!("(CPU: % of one core over the measured window; relay and bench share the machine's cores)");

    let notes: Vec<&String> = runs.iter().flat_map(|r| &r.notes).collect();
    if notes.is_empty() {
        println!("\nno errors; every acknowledged write is in its ledger; relay logs clean");
    } else {
        println!("\nnotes:");
        for note in notes {
            println!("  {note}");
        }
    }
}
