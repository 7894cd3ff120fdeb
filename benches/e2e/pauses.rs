//! Pauses of the state actor on a large map: a relay booted on 1,000,000 distinct keys, one
//! client writing and timing each echo (one write in flight, fsync on), first alone (at most
//! 1,000 echoes), then while other threads open v1 and v2 connections (each needs the whole
//! state), read `/healthz` and `/metrics`, and the ledger passes its compaction threshold (an
//! online compaction, which the busy phase waits for, up to a minute). Every piece of work on
//! the state actor's or the ledger's thread delays the echo, so the longest echo bounds the
//! longest pause; the same client alone is the reference.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tungstenite::{Message, protocol::WebSocketConfig};

use crate::{
    client::{Client, set_frame},
    procs::{Launch, OursConfig, Relay, stop_and_check, write_ours_config},
    replay::generate,
    util::{ms, percentile, temp_dir},
};

/// What one run measured, in milliseconds.
pub struct Pauses {
    /// Echo p50, p99 and max with nothing else going on.
    pub alone: (f64, f64, f64),
    /// The same while joins, probes and a compaction happen.
    pub busy: (f64, f64, f64),
    /// Joins (v1 and v2) completed during the busy phase, and their slowest, in ms.
    pub joins: (u64, f64),
    /// Health and metrics requests answered during the busy phase.
    pub probes: u64,
    /// Did an online compaction finish during the busy phase?
    pub compacted: bool,
    /// The state actor's longest single piece of work (its own metric), ms: after the quiet
    /// phase (boot included), and after the busy one.
    pub actor: (f64, f64),
    /// Anything amiss with the relay.
    pub notes: Vec<String>,
}

/// Echo round trips until `done(echoes so far, time so far)`: (p50, p99, max) in ms.
fn echoes(client: &mut Client, tag: &str, mut done: impl FnMut(usize, Duration) -> bool) -> (f64, f64, f64) {
    let mut times = Vec::new();
    let started = Instant::now();
    let mut i = 0u64;
    while !done(times.len(), started.elapsed()) {
        let key = format!("probe-{tag}-{}", i % 64);
        let sent = Instant::now();
        client.ws.send(set_frame(&key, i)).expect("send");
        client.wait_for(&key).expect("echo");
        times.push(sent.elapsed());
        i += 1;
    }
    times.sort();
    (ms(percentile(&times, 0.5)), ms(percentile(&times, 0.99)), ms(*times.last().expect("an echo")))
}

/// Connects and reads `hello` and the whole state (one frame of tens of megabytes: the client's
/// frame and message limits are lifted).
fn join(addr: SocketAddr, url: &str) -> Option<Client> {
    let stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    stream.set_nodelay(true).ok()?;
    let config = WebSocketConfig::default().max_frame_size(None).max_message_size(None);
    let (mut ws, _) = tungstenite::client::client_with_config(url, stream, Some(config)).ok()?;
    let mut texts = 0;
    while texts < 2 {
        if let Message::Text(_) = ws.read().ok()? {
            texts += 1;
        }
    }
    Some(Client { ws })
}

/// The answer to a GET if it was 200.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    tcp.write_all(request.as_bytes()).ok()?;
    tcp.read_to_string(&mut answer).ok()?;
    answer.starts_with("HTTP/1.1 200").then_some(answer)
}

/// The state actor's longest piece of work so far (`aether_state_busy_max_seconds`), in ms.
fn actor_max_ms(addr: SocketAddr) -> f64 {
    let metrics = http_get(addr, "/metrics").unwrap_or_default();
    let line = metrics.lines().find(|l| l.starts_with("aether_state_busy_max_seconds "));
    line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok()).map_or(f64::NAN, |s| s * 1e3)
}

/// Runs the scenario on `keys` distinct keys for `secs` per phase.
pub fn run(launch: &Launch, keys: usize, secs: f64) -> Pauses {
    let dir = temp_dir();
    let ledger = dir.path().join("ledger.jsonl");
    let bytes = generate(&ledger, keys, keys);
    // Compaction starts once the ledger has grown by 512 KiB (about 5,000 echo writes): after the
    // quiet phase (at most 1,000), during the busy one.
    let cfg = OursConfig { compact_after_bytes: bytes + 512 * 1024, ..OursConfig::default() };
    let config = write_ours_config(dir.path(), &ledger, &cfg);
    let mut relay = Relay::ours_with(launch, &config, ledger.clone());
    let url = relay.url();
    let mut prober = join(relay.addr, &url).expect("prober");
    let alone = echoes(&mut prober, "alone", |n, t| n >= 1000 || t.as_secs_f64() >= secs);
    let actor_alone = actor_max_ms(relay.addr);

    let stop = Arc::new(AtomicBool::new(false));
    let (joins, slowest, probes) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let joiner = {
        let (stop, joins, slowest, url, addr) =
            (Arc::clone(&stop), Arc::clone(&joins), Arc::clone(&slowest), url.clone(), relay.addr);
        thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let url = if n % 2 == 0 { url.clone() } else { format!("{url}?v=2") };
                let started = Instant::now();
                if let Some(client) = join(addr, &url) {
                    joins.fetch_add(1, Ordering::Relaxed);
                    slowest.fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                    client.close();
                }
                n += 1;
            }
        })
    };
    let prober_http = {
        let (stop, probes, addr) = (Arc::clone(&stop), Arc::clone(&probes), relay.addr);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for path in ["/healthz", "/metrics"] {
                    if http_get(addr, path).is_some() {
                        probes.fetch_add(1, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let compacted = || relay.log_lines().iter().any(|l| l.contains("compacted "));
    let busy = echoes(&mut prober, "busy", |n, t| {
        t.as_secs_f64() >= 60.0 || (t.as_secs_f64() >= secs && n % 100 == 0 && compacted())
    });
    let compacted = compacted();
    let actor_busy = actor_max_ms(relay.addr);
    stop.store(true, Ordering::Relaxed);
    joiner.join().expect("joiner");
    prober_http.join().expect("prober");
    prober.close();
    let notes = stop_and_check(&mut relay, "pauses", None);
    Pauses {
        actor: (actor_alone, actor_busy),
        notes,
        alone,
        busy,
        joins: (joins.load(Ordering::Relaxed), slowest.load(Ordering::Relaxed) as f64 / 1000.0),
        probes: probes.load(Ordering::Relaxed),
        compacted,
    }
}
