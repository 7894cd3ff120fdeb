//! Rooms (ours only): what a room costs in resident memory, and whether writes spread over many
//! rooms are made durable as fast as the same load in one room (one ledger batch, one
//! `fdatasync`, carries every room's writes).
//!
//! Memory is measured as slopes between runs that differ in one thing only, each on a fresh
//! relay (its `VmRSS` after the clients connected minus before the first):
//! - C idle connections in ONE room against none: the cost of a connection;
//! - the same C connections over C/3 rooms (3 each) against C in one room: the cost of a room
//!   beyond its members, i.e. of an idle room that holds no key;
//! - N rooms with one client each against N connections in one room: the same, another way;
//! - N rooms each written one key by one connection that then closed (dormant rooms: keys, no
//!   members) against the same N keys written to one room the same way: what a dormant room
//!   costs beyond its keys.
//!
//! Writes: writer connections (one thread each, as in `throughput`), each keeping W writes in
//! flight, one per room over R rooms against all of them in one room; fresh relay per run,
//! alternating, several runs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    client::{Client, set_frame},
    poller::{Pollers, Sink},
    procs::{Launch, OursConfig, Relay, histogram, stop_and_check},
    throughput::{self, Throughput},
};

/// Knobs of the `rooms` scenario.
pub struct Settings {
    /// Rooms held with `per_room` clients each (the slope runs hold `rooms * per_room` connections).
    pub rooms: usize,
    /// Clients per room in that run.
    pub per_room: usize,
    /// Rooms held with one client each.
    pub single: usize,
    /// Dormant rooms (one key each, written by a connection that then closed).
    pub dormant: usize,
    /// Keys each dormant room is written.
    pub dormant_keys: usize,
    /// Rooms the writes are spread over (one writer connection each).
    pub write_rooms: usize,
    /// Writes each writer keeps in flight.
    pub write_window: usize,
    /// Runs of each write case (alternating), spread reported.
    pub runs: usize,
    /// Measured window of each write run, s.
    pub secs: f64,
    /// Connections opened per second at most.
    pub connect_rate: f64,
    /// Poller threads holding idle connections.
    pub pollers: usize,
    /// Wait after the last connection before reading RSS.
    pub settle: Duration,
}

/// The bench's configuration ([`crate::procs::write_ours_config`]) already lifts the `[rooms]`
/// caps: no per-source creation rate, no key or byte cap that a run could reach.
fn config() -> OursConfig {
    OursConfig::default()
}

/// `ws://ADDR/ws?room=NAME`.
fn room_url(relay: &Relay, room: &str) -> String {
    format!("{}?room={room}", relay.url())
}

/// Frames that reached idle connections before they were dropped (dropping them makes the relay
/// send `presence-leave` to those still in the room, which is expected and not counted).
struct Count(u64, Arc<AtomicBool>);

impl Sink for Count {
    fn frame(&mut self, _: &str, _: Instant) {
        self.0 += u64::from(!self.1.load(Ordering::Acquire));
    }
}

/// One memory run: a fresh relay, clients connected and held.
pub struct Held {
    /// Connections held.
    pub conns: usize,
    /// Distinct rooms they were in.
    pub rooms: usize,
    /// RSS before the first connection, KiB.
    pub base_kib: u64,
    /// RSS after `n` connections (and `settle`), KiB: each checkpoint and the end.
    pub at: Vec<(usize, u64)>,
    /// Rooms `/healthz` reported with every client connected, and after every client left.
    pub rooms_held: (Option<u64>, Option<u64>),
    /// Time to connect them all.
    pub connect: Duration,
    /// What went wrong.
    pub errors: Vec<String>,
}

impl Held {
    /// RSS growth at `n` connections (the last reading for `None`), KiB.
    pub fn delta_at(&self, n: Option<usize>) -> Option<f64> {
        let reading = match n {
            None => self.at.last(),
            Some(n) => self.at.iter().find(|(c, _)| *c == n),
        }?;
        Some(reading.1 as f64 - self.base_kib as f64)
    }
}

fn healthz_u64(relay: &Relay, field: &str) -> Option<u64> {
    relay.healthz().ok().and_then(|h| h[field].as_u64())
}

/// Waits (bounded) until `/healthz` shows `field` at `want`.
fn wait_healthz(relay: &Relay, field: &str, want: u64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if healthz_u64(relay, field) == Some(want) {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Holds `n` idle connections, the i-th in room `room_of(i)`, reading RSS at each of
/// `checkpoints` and at the end; then drops them, checks every room with no key was forgotten,
/// and stops the relay.
pub fn hold(
    launch: &Launch,
    s: &Settings,
    what: &str,
    n: usize,
    room_of: impl Fn(usize) -> String,
    checkpoints: &[usize],
    notes: &mut Vec<String>,
) -> Held {
    let mut relay = Relay::ours(launch, &config());
    relay.wait_healthy();
    thread::sleep(s.settle / 4);
    let mut held = Held {
        conns: n,
        rooms: 0,
        base_kib: relay.rss_kib(),
        at: Vec::new(),
        rooms_held: (None, None),
        connect: Duration::ZERO,
        errors: Vec::new(),
    };
    let closing = Arc::new(AtomicBool::new(false));
    let mut pool = Pollers::spawn(s.pollers, || Count(0, Arc::clone(&closing)));
    let started = Instant::now();
    let mut paused = Duration::ZERO;
    let mut rooms = std::collections::HashSet::new();
    for i in 0..n {
        let due = started + paused + Duration::from_secs_f64(i as f64 / s.connect_rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let room = room_of(i);
        let client = match Client::connect(relay.addr, &room_url(&relay, &room)) {
            Ok(c) => c,
            Err(e) => {
                held.errors.push(format!("client {i} of {n} (room {room}): {e}"));
                break;
            }
        };
        rooms.insert(room);
        match client.into_nonblocking() {
            Ok(ws) => pool.add(ws),
            Err(e) => {
                held.errors.push(format!("client {i}: nonblocking: {e}"));
                break;
            }
        }
        if checkpoints.contains(&(i + 1)) && i + 1 < n {
            let t = Instant::now();
            thread::sleep(s.settle);
            held.at.push((i + 1, relay.rss_kib()));
            paused += t.elapsed();
        }
    }
    held.connect = started.elapsed() - paused;
    held.rooms = rooms.len();
    thread::sleep(s.settle);
    held.at.push((pool.added, relay.rss_kib()));
    held.rooms_held.0 = healthz_u64(&relay, "rooms");
    let stopping = Instant::now();
    closing.store(true, Ordering::Release);
    let mut frames = 0;
    for (count, ended) in pool.finish() {
        frames += count.0;
        for (at, why) in ended.reasons {
            if at < stopping {
                held.errors.push(format!("a connection ended while held: {why}"));
            }
        }
    }
    if !wait_healthz(&relay, "clients", 0, Duration::from_secs(20)) {
        held.errors.push("clients still registered 20 s after every client closed".to_owned());
    }
    held.rooms_held.1 = healthz_u64(&relay, "rooms");
    if frames > 0 {
        held.errors.push(format!("{frames} unexpected frames on idle connections"));
    }
    notes.extend(stop_and_check(&mut relay, what, None));
    held.errors = crate::util::grouped(std::mem::take(&mut held.errors))
        .into_iter()
        .map(|(n, e)| format!("rooms {what}: {n}x {e}"))
        .collect();
    held
}

/// One dormant-rooms run: a fresh relay; `n` connections, the i-th to room `room_of(i)`, each
/// writes `keys` keys, reads their echoes and closes (a few at a time); RSS once all have left.
pub struct Dormant {
    /// Connections (and writers) in all.
    pub conns: usize,
    /// RSS before and after, KiB.
    pub rss_kib: (u64, u64),
    /// `/healthz` rooms and keys after.
    pub rooms: Option<u64>,
    pub keys: Option<u64>,
    /// Time it took.
    pub took: Duration,
    /// What went wrong.
    pub errors: Vec<String>,
}

impl Dormant {
    /// RSS growth, KiB.
    pub fn delta(&self) -> f64 {
        self.rss_kib.1 as f64 - self.rss_kib.0 as f64
    }
}

pub fn dormant(
    launch: &Launch,
    s: &Settings,
    what: &str,
    n: usize,
    room_of: fn(usize) -> String,
    notes: &mut Vec<String>,
) -> Dormant {
    const THREADS: usize = 4;
    let mut relay = Relay::ours(launch, &config());
    relay.wait_healthy();
    thread::sleep(s.settle / 4);
    let before = relay.rss_kib();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let (addr, base, keys) = (relay.addr, relay.url(), s.dormant_keys);
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (next, base) = (Arc::clone(&next), base.clone());
            thread::spawn(move || -> Vec<String> {
                let mut errors = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || errors.len() > 10 {
                        return errors;
                    }
                    let once = || -> Result<(), String> {
                        let mut c = Client::connect(addr, &format!("{base}?room={}", room_of(i)))?;
                        for k in 0..keys {
                            c.ws.send(set_frame(&format!("k{i}:{k}"), k as u64)).map_err(|e| format!("write: {e}"))?;
                        }
                        c.wait_for(&format!("k{i}:{}", keys - 1))?;
                        c.close();
                        Ok(())
                    };
                    if let Err(e) = once() {
                        errors.push(e);
                    }
                }
            })
        })
        .collect();
    let mut errors: Vec<String> =
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|_| vec!["writer panicked".to_owned()])).collect();
    if !wait_healthz(&relay, "clients", 0, Duration::from_secs(20)) {
        errors.push("clients still registered 20 s after every client closed".to_owned());
    }
    let took = started.elapsed();
    thread::sleep(s.settle);
    let after = relay.rss_kib();
    let (rooms, keys) = (healthz_u64(&relay, "rooms"), healthz_u64(&relay, "keys"));
    notes.extend(stop_and_check(&mut relay, what, Some(((n * s.dormant_keys) as u64, true))));
    let errors = crate::util::grouped(errors).into_iter().map(|(c, e)| format!("rooms {what}: {c}x {e}")).collect();
    Dormant { conns: n, rss_kib: (before, after), rooms, keys, took, errors }
}

/// One write run and what `/metrics` said about its ledger batches.
pub struct Writes {
    /// The throughput run.
    pub t: Throughput,
    /// Mean writes per ledger batch (one `fdatasync` each) and batches, over the whole run.
    pub batch: Option<(f64, f64)>,
}

/// `writers` writer connections with `window` writes in flight each; writer i in room
/// `room_of(i)`; fresh relay.
pub fn writes(
    launch: &Launch,
    s: &Settings,
    what: &str,
    writers: usize,
    window: usize,
    room_of: impl Fn(usize) -> String,
    notes: &mut Vec<String>,
) -> Result<Writes, String> {
    let mut relay = Relay::ours(launch, &config());
    let urls: Vec<String> = (0..writers).map(|i| room_url(&relay, &room_of(i))).collect();
    let result = throughput::run_at(&relay, &urls, window, s.secs);
    let metrics = relay.metrics();
    let acked = result.as_ref().ok().map(|t| (t.acked, t.errors.is_empty()));
    notes.extend(stop_and_check(&mut relay, what, acked));
    let t = result?;
    for (n, e) in crate::util::grouped(t.errors.iter().cloned()) {
        notes.push(format!("rooms {what}: {n} of {writers} writers failed: {e}"));
    }
    if t.out_of_order > 0 {
        notes.push(format!("rooms {what}: {} own echoes out of send order", t.out_of_order));
    }
    let batch = histogram(&metrics, "aether_ledger_batch_ops").filter(|(_, c)| *c > 0.0).map(|(s, c)| (s / c, c));
    Ok(Writes { t, batch })
}
