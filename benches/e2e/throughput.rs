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
