//! Durable write throughput: N writer connections, each keeping up to W of its own writes
//! un-echoed; a write counts when its writer reads its own echo. Ours echoes a write only once its
//! batch is fsynced; upstream echoes before its ledger has written anything.
//!
//! One blocking thread per writer. Every connection also receives every other writer's echoes
//! (both relays broadcast to all), which it reads and skips: with N writers each write is
//! delivered N times.

use std::{
    collections::VecDeque,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use crate::{
    client::{Client, set_frame, set_key},
    procs::Relay,
    util::{cpu_secs, machine_busy_secs, thread_cpu_summary},
};

/// Longest the writers may take to collect their outstanding echoes after the measured window.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Writer {
    acked_in_window: u64,
    acked: u64,
    sent: u64,
    frames_in_window: u64,
    ack_latency: Vec<Duration>,
    out_of_order: u64,
    error: Option<String>,
}

/// One writer: keep up to `window` writes un-echoed until the deadline, then collect the rest.
/// The connection closes only once every writer is done (`done`), so that no relay broadcasts to
/// a closed connection while others still drain.
fn write_loop(mut client: Client, id: usize, window: usize, start: &Barrier, done: &Barrier, secs: f64) -> Writer {
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
    done.wait();
    // Let the relay finish sending the last broadcasts before the connections go.
    thread::sleep(Duration::from_millis(300));
    client.close();
    w
}

/// The outcome of one run.
pub struct Throughput {
    /// Measured window.
    pub secs: f64,
    /// Own echoes read inside the window, all writers.
    pub acked_in_window: u64,
    /// Writes sent, all writers.
    pub sent: u64,
    /// Own echoes read in all (window and drain).
    pub acked: u64,
    /// Frames of any kind read in the window, all connections.
    pub frames_in_window: u64,
    /// Own echoes that came out of send order.
    pub out_of_order: u64,
    /// Send-to-own-echo times in the window, sorted.
    pub ack_latency: Vec<Duration>,
    /// Fewest and most writes one connection got acknowledged in the window.
    pub per_conn: (u64, u64),
    /// Writers that failed, and why.
    pub errors: Vec<String>,
    /// CPU the relay used in the measured window, seconds.
    pub relay_cpu: f64,
    /// CPU this process (all clients) used in the measured window, seconds.
    pub bench_cpu: f64,
    /// The relay's busiest threads in the window, % of one core each.
    pub threads: String,
    /// CPU the rest of the machine used in the window (other processes and the kernel's own
    /// network processing), seconds.
    pub other_cpu: f64,
}

impl Throughput {
    /// Acknowledged writes per second.
    pub fn rate(&self) -> f64 {
        self.acked_in_window as f64 / self.secs
    }
}

/// `conns` writers with `window` writes in flight each, for `secs`.
pub fn run(relay: &Relay, conns: usize, window: usize, secs: f64) -> Result<Throughput, String> {
    run_at(relay, &vec![relay.url(); conns], window, secs)
}

/// One writer per URL (the URL picks its room), each with `window` writes in flight, for `secs`.
pub fn run_at(relay: &Relay, urls: &[String], window: usize, secs: f64) -> Result<Throughput, String> {
    let conns = urls.len();
    let clients = urls.iter().map(|url| Client::connect(relay.addr, url)).collect::<Result<Vec<_>, _>>()?;
    let start = Arc::new(Barrier::new(conns + 1));
    let done = Arc::new(Barrier::new(conns));
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, client)| {
            let (start, done) = (Arc::clone(&start), Arc::clone(&done));
            thread::Builder::new()
                .name(format!("writer-{id}"))
                .stack_size(256 << 10) // the rooms scenario runs a thousand of them
                .spawn(move || write_loop(client, id, window, &start, &done, secs))
                .expect("spawn writer thread")
        })
        .collect();
    let (relay_before, bench_before, threads_before) = (relay.cpu_secs(), cpu_secs("self"), relay.threads());
    let busy_before = machine_busy_secs();
    start.wait();
    thread::sleep(Duration::from_secs_f64(secs));
    let (relay_cpu, bench_cpu) = (relay.cpu_secs() - relay_before, cpu_secs("self") - bench_before);
    let other_cpu = machine_busy_secs() - busy_before - relay_cpu - bench_cpu;
    let threads = thread_cpu_summary(&threads_before, &relay.threads(), secs);
    let mut t = Throughput {
        secs,
        acked_in_window: 0,
        sent: 0,
        acked: 0,
        frames_in_window: 0,
        out_of_order: 0,
        ack_latency: Vec::new(),
        per_conn: (u64::MAX, 0),
        errors: Vec::new(),
        relay_cpu,
        bench_cpu,
        threads,
        other_cpu,
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
        t.errors.extend(w.error);
    }
    t.ack_latency.sort();
    Ok(t)
}

/// The outcome of one paced run ([`run_paced`]).
pub struct Paced {
    /// The rate asked for, writes/s over all writers.
    pub target: f64,
    /// Own echoes read inside the window, per second.
    pub acked_rate: f64,
    /// Send-to-own-echo times of the writes sent in the window, sorted.
    pub latency: Vec<Duration>,
    /// The same from the instant each write was due (so a harness that fell behind its schedule
    /// shows that delay too, instead of hiding it), sorted.
    pub from_due: Vec<Duration>,
    /// Writers that failed, and why.
    pub errors: Vec<String>,
    /// CPU of the relay, of this process, and of the rest of the machine in the window, seconds.
    pub relay_cpu: f64,
    pub bench_cpu: f64,
    pub other_cpu: f64,
    /// The relay's busiest threads in the window, % of one core each.
    pub threads: String,
    /// Small appends + `fdatasync` beside the ledger, one every 5 ms through the window, sorted:
    /// what the disk cost meanwhile.
    pub fdatasync: Vec<Duration>,
}

#[derive(Default)]
struct PacedWriter {
    acked: u64,
    latency: Vec<Duration>,
    from_due: Vec<Duration>,
    error: Option<String>,
}

/// One paced writer: a write every `interval` (its first after `offset`) until the deadline,
/// whatever came back, then it collects its outstanding echoes. Reads wait at most until the next
/// write is due.
fn paced_loop(
    mut client: Client,
    id: usize,
    interval: Duration,
    offset: Duration,
    start: &Barrier,
    done: &Barrier,
    secs: f64,
) -> PacedWriter {
    let mut w = PacedWriter::default();
    let key_prefix = format!("p{id:03}:");
    let mut in_flight: VecDeque<(Instant, Instant)> = VecDeque::new();
    let mut sent = 0u64;
    start.wait();
    let begun = Instant::now();
    let deadline = begun + Duration::from_secs_f64(secs);
    let mut due = begun + offset;
    let mut timeout = None;
    let result = (|| -> Result<(), String> {
        loop {
            let now = Instant::now();
            if due < deadline && now >= due {
                // Every write that is due goes now (a late harness catches up, it never skips).
                while due <= now && due < deadline {
                    client
                        .ws
                        .write(set_frame(&format!("{key_prefix}{sent}"), sent))
                        .map_err(|e| format!("write: {e}"))?;
                    in_flight.push_back((due, Instant::now()));
                    sent += 1;
                    due += interval;
                }
                client.ws.flush().map_err(|e| format!("flush: {e}"))?;
                continue;
            }
            if due >= deadline && in_flight.is_empty() {
                return Ok(());
            }
            if now > deadline + DRAIN_LIMIT {
                return Err(format!("{} echoes still missing {DRAIN_LIMIT:?} after the window", in_flight.len()));
            }
            // A read waits at most until the next write is due, within 50 µs..1 ms: the timeout
            // is set (a system call) only when that changes it, not once per frame read.
            let wait = due.saturating_duration_since(now).clamp(Duration::from_micros(50), Duration::from_millis(1));
            if timeout != Some(wait) {
                client.ws.get_ref().set_read_timeout(Some(wait)).map_err(|e| format!("read timeout: {e}"))?;
                timeout = Some(wait);
            }
            let frame = match client.ws.read() {
                Ok(tungstenite::Message::Text(text)) => text,
                Ok(tungstenite::Message::Close(frame)) => return Err(crate::client::closed(frame.as_ref())),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    continue;
                }
                Err(e) => return Err(format!("read: {e}")),
            };
            let at = Instant::now();
            let Some(key) = set_key(&frame) else { continue };
            if !key.starts_with(&key_prefix) {
                continue;
            }
            let Some((due_at, sent_at)) = in_flight.pop_front() else {
                return Err(format!("echo of {key} that was never sent"));
            };
            if sent_at < deadline {
                w.acked += u64::from(at <= deadline);
                w.latency.push(at - sent_at);
                w.from_due.push(at - due_at);
            }
        }
    })();
    w.error = result.err();
    done.wait();
    thread::sleep(Duration::from_millis(300));
    client.close();
    w
}

/// `conns` writers that together send `rate` writes/s, evenly paced and spread over the
/// interval (not in step), for `secs`; every connection also reads every other writer's echoes.
pub fn run_paced(relay: &Relay, conns: usize, rate: f64, secs: f64) -> Result<Paced, String> {
    let clients = (0..conns).map(|_| Client::connect(relay.addr, &relay.url())).collect::<Result<Vec<_>, String>>()?;
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Arc::new(Barrier::new(conns + 1));
    let done = Arc::new(Barrier::new(conns));
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(id, client)| {
            let (start, done) = (Arc::clone(&start), Arc::clone(&done));
            let offset = interval.mul_f64(id as f64 / conns as f64);
            thread::Builder::new()
                .name(format!("paced-{id}"))
                .stack_size(256 << 10)
                .spawn(move || paced_loop(client, id, interval, offset, &start, &done, secs))
                .expect("spawn writer thread")
        })
        .collect();
    let mut probe = match relay.ledger.parent() {
        Some(dir) => Some(crate::roundtrip::Probe::open(dir)?),
        None => None,
    };
    let (relay_before, bench_before, threads_before) = (relay.cpu_secs(), cpu_secs("self"), relay.threads());
    let busy_before = machine_busy_secs();
    start.wait();
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut fdatasync = Vec::new();
    while Instant::now() < deadline {
        if let Some(probe) = &mut probe {
            fdatasync.push(probe.time()?);
        }
        thread::sleep(Duration::from_millis(5).min(deadline.saturating_duration_since(Instant::now())));
    }
    fdatasync.sort();
    let (relay_cpu, bench_cpu) = (relay.cpu_secs() - relay_before, cpu_secs("self") - bench_before);
    let other_cpu = machine_busy_secs() - busy_before - relay_cpu - bench_cpu;
    let threads = thread_cpu_summary(&threads_before, &relay.threads(), secs);
    let mut p = Paced {
        fdatasync,
        target: rate,
        acked_rate: 0.0,
        latency: Vec::new(),
        from_due: Vec::new(),
        errors: Vec::new(),
        relay_cpu,
        bench_cpu,
        other_cpu,
        threads,
    };
    let mut acked = 0;
    for (id, handle) in handles.into_iter().enumerate() {
        let w = handle.join().map_err(|_| format!("writer {id} panicked"))?;
        acked += w.acked;
        p.latency.extend(w.latency);
        p.from_due.extend(w.from_due);
        p.errors.extend(w.error);
    }
    p.acked_rate = acked as f64 / secs;
    p.latency.sort();
    p.from_due.sort();
    Ok(p)
}
