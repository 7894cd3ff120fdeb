//! Durable write throughput: N writer connections, each keeping up to W of its own writes
//! un-echoed; a write counts when its writer reads its own echo. Ours echoes a write only once its
//! batch is fsynced; upstream echoes before its ledger has written anything.
//!
//! One blocking thread per writer. Every connection also receives every other writer's echoes
//! (both relays broadcast to all), which it reads and skips: with N writers each write is
//! delivered N times.

use std::{
    collections::VecDeque,
    net::TcpStream,
    os::fd::AsRawFd,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Token, unix::SourceFd};
use tungstenite::WebSocket;

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
struct PacedResult {
    acked: u64,
    latency: Vec<Duration>,
    from_due: Vec<Duration>,
    errors: Vec<String>,
}

/// One paced writer connection, driven by a poller thread.
struct PacedConn {
    ws: WebSocket<TcpStream>,
    key_prefix: String,
    due: Instant,
    sent: u64,
    /// (due, sent) of each write not yet echoed, in send order.
    in_flight: VecDeque<(Instant, Instant)>,
    dead: bool,
}

/// Is this the error of a non-blocking socket that has nothing more now?
fn would_block(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
}

/// One poller thread: its connections each send a write every `interval` (each from its own
/// first instant) until the deadline, whatever came back, and read (epoll, edge-triggered)
/// everything that arrives; then they collect their outstanding echoes. A few such threads
/// drive all the writers, so the harness spends its CPU on frames, not on switching between
/// dozens of blocking threads (each woken for every batch the relay fans out).
fn paced_poller(mut conns: Vec<PacedConn>, interval: Duration, deadline: Instant) -> PacedResult {
    let mut r = PacedResult::default();
    let poll = Poll::new().and_then(|poll| {
        for (i, c) in conns.iter().enumerate() {
            poll.registry().register(&mut SourceFd(&c.ws.get_ref().as_raw_fd()), Token(i), Interest::READABLE)?;
        }
        Ok(poll)
    });
    let mut poll = match poll {
        Ok(poll) => poll,
        Err(e) => {
            r.errors.push(format!("poll: {e}"));
            return r;
        }
    };
    let mut events = Events::with_capacity(256);
    loop {
        let now = Instant::now();
        for c in conns.iter_mut().filter(|c| !c.dead) {
            while c.due <= now && c.due < deadline {
                // A write that would block is queued by tungstenite and goes with a later flush.
                match c.ws.write(set_frame(&format!("{}{}", c.key_prefix, c.sent), c.sent)) {
                    Ok(()) => {}
                    Err(e) if would_block(&e) => {}
                    Err(e) => {
                        r.errors.push(format!("write: {e}"));
                        c.dead = true;
                        break;
                    }
                }
                c.in_flight.push_back((c.due, Instant::now()));
                c.sent += 1;
                c.due += interval;
            }
            // Also sends what an earlier flush left (and pongs); nothing to send costs no system call.
            if !c.dead {
                match c.ws.flush() {
                    Ok(()) => {}
                    Err(e) if would_block(&e) => {}
                    Err(e) => {
                        r.errors.push(format!("flush: {e}"));
                        c.dead = true;
                    }
                }
            }
        }
        let live = || conns.iter().filter(|c| !c.dead);
        if now >= deadline && live().all(|c| c.in_flight.is_empty()) {
            break;
        }
        if now > deadline + DRAIN_LIMIT {
            let missing: usize = live().map(|c| c.in_flight.len()).sum();
            r.errors.push(format!("{missing} echoes still missing {DRAIN_LIMIT:?} after the window"));
            break;
        }
        let next_due = live().map(|c| c.due).filter(|d| *d < deadline).min();
        let wait = next_due.map_or(Duration::from_millis(1), |d| d.saturating_duration_since(now));
        if let Err(e) = poll.poll(&mut events, Some(wait.min(Duration::from_millis(1)))) {
            r.errors.push(format!("poll: {e}"));
            break;
        }
        for event in &events {
            let Some(c) = conns.get_mut(event.token().0).filter(|c| !c.dead) else { continue };
            loop {
                let frame = match c.ws.read() {
                    Ok(tungstenite::Message::Text(text)) => text,
                    Ok(tungstenite::Message::Close(frame)) => {
                        r.errors.push(crate::client::closed(frame.as_ref()));
                        c.dead = true;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if would_block(&e) => break,
                    Err(e) => {
                        r.errors.push(format!("read: {e}"));
                        c.dead = true;
                        break;
                    }
                };
                let at = Instant::now();
                let Some(key) = set_key(&frame) else { continue };
                if !key.starts_with(&c.key_prefix) {
                    continue;
                }
                let Some((due_at, sent_at)) = c.in_flight.pop_front() else {
                    r.errors.push(format!("echo of {key} that was never sent"));
                    c.dead = true;
                    break;
                };
                if sent_at < deadline {
                    r.acked += u64::from(at <= deadline);
                    r.latency.push(at - sent_at);
                    r.from_due.push(at - due_at);
                }
            }
        }
    }
    // Let the relay finish sending the last broadcasts before the connections go.
    thread::sleep(Duration::from_millis(300));
    for mut c in conns {
        let _ = c.ws.close(None);
        let _ = c.ws.flush();
    }
    r
}

/// `conns` writers that together send `rate` writes/s, evenly paced and spread over the
/// interval (not in step), for `secs`, driven by `pollers` threads; every connection also reads
/// every other writer's echoes.
pub fn run_paced(relay: &Relay, conns: usize, pollers: usize, rate: f64, secs: f64) -> Result<Paced, String> {
    let pollers = pollers.clamp(1, conns.max(1));
    let mut groups: Vec<Vec<(usize, WebSocket<TcpStream>)>> = (0..pollers).map(|_| Vec::new()).collect();
    for id in 0..conns {
        let ws =
            Client::connect(relay.addr, &relay.url())?.into_nonblocking().map_err(|e| format!("nonblocking: {e}"))?;
        groups[id % pollers].push((id, ws));
    }
    let interval = Duration::from_secs_f64(conns as f64 / rate);
    let start = Arc::new(Barrier::new(pollers + 1));
    let window = Duration::from_secs_f64(secs);
    let handles: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(t, group)| {
            let start = Arc::clone(&start);
            thread::Builder::new()
                .name(format!("paced-{t}"))
                .spawn(move || {
                    start.wait();
                    let begun = Instant::now();
                    let conns = group
                        .into_iter()
                        .map(|(id, ws)| PacedConn {
                            ws,
                            key_prefix: format!("p{id:03}:"),
                            due: begun + interval.mul_f64(id as f64 / conns as f64),
                            sent: 0,
                            in_flight: VecDeque::new(),
                            dead: false,
                        })
                        .collect();
                    paced_poller(conns, interval, begun + window)
                })
                .expect("spawn poller thread")
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
    for (t, handle) in handles.into_iter().enumerate() {
        let w = handle.join().map_err(|_| format!("poller {t} panicked"))?;
        acked += w.acked;
        p.latency.extend(w.latency);
        p.from_due.extend(w.from_due);
        p.errors.extend(w.errors);
    }
    p.acked_rate = acked as f64 / secs;
    p.latency.sort();
    p.from_due.sort();
    Ok(p)
}
