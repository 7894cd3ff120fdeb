//! Counters, gauges and histograms, rendered in the Prometheus text format at `/metrics`.
//!
//! Plain atomics updated on the hot paths (relaxed ordering: each value is independent), no
//! registry crate. Everything is created once at boot and shared as an `Arc<Metrics>`.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use crate::protocol::Dropped;

/// A histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const SECONDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 8192.0];

/// Inbound message kinds counted separately.
#[derive(Clone, Copy, Debug)]
pub enum Inbound {
    /// `set`.
    Set,
    /// `delete`.
    Delete,
    /// `presence`.
    Presence,
    /// `auth` (after the handshake; ignored).
    Auth,
    /// Dropped (counted by reason too).
    Dropped,
}

const INBOUND: [&str; 5] = ["set", "delete", "presence", "auth", "dropped"];
const DROPS: [Dropped; 9] = [
    Dropped::MessageTooLarge,
    Dropped::NotJson,
    Dropped::NotObject,
    Dropped::BadKey,
    Dropped::BadValue,
    Dropped::BadPresence,
    Dropped::UnknownType,
    Dropped::Forbidden,
    Dropped::RoomFull,
];

/// Everything `/metrics` reports, besides what the actors are asked for at scrape time.
#[derive(Debug)]
pub struct Metrics {
    connections_opened: AtomicU64,
    inbound: [AtomicU64; 5],
    drops: [AtomicU64; 9],
    /// Joins refused by the room caps: [too many rooms, rooms created too fast].
    rooms_refused: [AtomicU64; 2],
    frames_out: AtomicU64,
    closes: Mutex<BTreeMap<u16, u64>>,
    /// HTTP API answers, by status code.
    api_responses: Mutex<BTreeMap<u16, u64>>,
    /// Connections whose socket took nothing for `write_timeout_s`: [closed with 1013, dropped].
    write_timeouts: [AtomicU64; 2],
    durable_writes: AtomicU64,
    inline_appends: AtomicU64,
    ledger_failures: AtomicU64,
    /// Seconds per ledger append (write + fdatasync).
    pub fsync_seconds: Histogram,
    /// Ops per ledger append.
    pub batch_ops: Histogram,
    /// Seconds the state actor spent in one piece of work that can grow (a durable batch, a join,
    /// a cursor tick): its pauses, during which nothing else it does can run.
    pub state_busy: Histogram,
    state_busy_max_micros: AtomicU64,
    replay_micros: AtomicU64,
    replay_records: AtomicU64,
    compactions: AtomicU64,
    snapshot_bytes: AtomicU64,
    compaction_micros: AtomicU64,
    /// Federation counters.
    pub mesh: crate::mesh::stats::MeshStats,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            connections_opened: AtomicU64::new(0),
            inbound: Default::default(),
            drops: Default::default(),
            rooms_refused: Default::default(),
            frames_out: AtomicU64::new(0),
            closes: Mutex::new(BTreeMap::new()),
            api_responses: Mutex::new(BTreeMap::new()),
            write_timeouts: Default::default(),
            durable_writes: AtomicU64::new(0),
            inline_appends: AtomicU64::new(0),
            ledger_failures: AtomicU64::new(0),
            fsync_seconds: Histogram::new(SECONDS),
            batch_ops: Histogram::new(BATCH),
            state_busy: Histogram::new(SECONDS),
            state_busy_max_micros: AtomicU64::new(0),
            replay_micros: AtomicU64::new(0),
            replay_records: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            snapshot_bytes: AtomicU64::new(0),
            compaction_micros: AtomicU64::new(0),
            mesh: crate::mesh::stats::MeshStats::default(),
        }
    }
}

/// Values read from the singletons when `/metrics` is scraped.
#[derive(Debug, Default, Clone, Copy)]
pub struct Live {
    /// Open WebSocket connections (slots held).
    pub connections: usize,
    /// Registered clients (received `hello`).
    pub clients: usize,
    /// Live keys.
    pub keys: usize,
    /// Writes accepted but not yet durable.
    pub pending_writes: usize,
    /// Ledger file size.
    pub ledger_bytes: u64,
    /// Rooms held (with registers or members).
    pub rooms: usize,
}

impl Metrics {
    /// A WebSocket connection was accepted.
    pub fn connection_opened(&self) {
        self.connections_opened.fetch_add(1, Relaxed);
    }

    /// An inbound message of `kind` was handled.
    pub fn inbound(&self, kind: Inbound) {
        self.inbound[kind as usize].fetch_add(1, Relaxed);
    }

    /// An inbound message was dropped for `reason`.
    pub fn dropped(&self, reason: Dropped) {
        self.inbound(Inbound::Dropped);
        if let Some(i) = DROPS.iter().position(|d| *d == reason) {
            self.drops[i].fetch_add(1, Relaxed);
        }
    }

    /// `n` frames were handed to a socket.
    pub fn frames_out(&self, n: usize) {
        self.frames_out.fetch_add(n as u64, Relaxed);
    }

    /// A connection ended with close `code` (1006 when it ended without a close frame).
    pub fn closed(&self, code: u16) {
        *self.closes.lock().unwrap_or_else(PoisonError::into_inner).entry(code).or_default() += 1;
    }

    /// The HTTP API answered a request with `status`.
    pub fn api_response(&self, status: u16) {
        *self.api_responses.lock().unwrap_or_else(PoisonError::into_inner).entry(status).or_default() += 1;
    }

    /// A connection's socket took nothing for `write_timeout_s`: it was closed with 1013 (`sent`,
    /// the close frame went) or dropped.
    pub fn write_timed_out(&self, sent: bool) {
        self.write_timeouts[usize::from(!sent)].fetch_add(1, Relaxed);
    }

    /// A join was refused by the room caps: `"too_many_rooms"` or `"rate_limit"`.
    pub fn room_refused(&self, reason: &str) {
        let i = usize::from(reason != "too_many_rooms");
        self.rooms_refused[i].fetch_add(1, Relaxed);
    }

    /// A batch of `ops` became durable after `elapsed` in the ledger; `inline` if the state
    /// actor appended it itself (a quiet relay's batch, see `state::Inline`).
    pub fn batch(&self, ops: usize, elapsed: Duration, inline: bool) {
        self.durable_writes.fetch_add(ops as u64, Relaxed);
        self.inline_appends.fetch_add(u64::from(inline), Relaxed);
        self.fsync_seconds.observe(elapsed.as_secs_f64());
        self.batch_ops.observe(ops as f64);
    }

    /// The state actor spent `elapsed` on one piece of work.
    pub fn state_busy(&self, elapsed: Duration) {
        self.state_busy.observe(elapsed.as_secs_f64());
        self.state_busy_max_micros.fetch_max(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A ledger append failed.
    pub fn ledger_failure(&self) {
        self.ledger_failures.fetch_add(1, Relaxed);
    }

    /// Boot replayed `records` in `elapsed`.
    pub fn replayed(&self, records: u64, elapsed: Duration) {
        self.replay_records.store(records, Relaxed);
        self.replay_micros.store(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// A compaction finished.
    pub fn compacted(&self, done: &crate::ledger::Compacted) {
        self.compactions.fetch_add(1, Relaxed);
        self.snapshot_bytes.store(done.snapshot_bytes, Relaxed);
        self.compaction_micros.store(u64::try_from(done.elapsed.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Writes made durable since start.
    pub fn durable_writes(&self) -> u64 {
        self.durable_writes.load(Relaxed)
    }

    /// Ledger appends since start.
    pub fn batches(&self) -> u64 {
        self.batch_ops.count.load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, live: Live) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge("aether_connections", "Open WebSocket connections.", live.connections as f64);
        gauge("aether_clients", "Connected clients that received hello.", live.clients as f64);
        gauge("aether_keys", "Live keys in the state (every room).", live.keys as f64);
        gauge("aether_rooms", "Rooms held (with registers or members), the default room included.", live.rooms as f64);
        gauge("aether_pending_writes", "Writes accepted and not yet durable.", live.pending_writes as f64);
        gauge("aether_ledger_bytes", "Size of the ledger file.", live.ledger_bytes as f64);
        gauge("aether_replay_seconds", "Time the boot replay took.", self.replay_micros.load(Relaxed) as f64 / 1e6);
        gauge("aether_replay_records", "Ledger records replayed at boot.", self.replay_records.load(Relaxed) as f64);
        gauge("aether_snapshot_bytes", "Size of the last snapshot written.", self.snapshot_bytes.load(Relaxed) as f64);
        gauge(
            "aether_last_compaction_seconds",
            "Time the last online compaction took (fold into the ledger).",
            self.compaction_micros.load(Relaxed) as f64 / 1e6,
        );
        let mut counter = |name: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |v: &AtomicU64| vec![(String::new(), v.load(Relaxed))];
        counter("aether_connections_opened_total", "WebSocket connections accepted.", &plain(&self.connections_opened));
        let inbound: Vec<_> =
            INBOUND.iter().zip(&self.inbound).map(|(k, v)| (format!("{{type=\"{k}\"}}"), v.load(Relaxed))).collect();
        counter("aether_messages_in_total", "Inbound messages by type.", &inbound);
        let drops: Vec<_> = DROPS
            .iter()
            .zip(&self.drops)
            .map(|(d, v)| (format!("{{reason=\"{}\"}}", d.as_str()), v.load(Relaxed)))
            .collect();
        counter("aether_messages_dropped_total", "Inbound messages dropped, by reason.", &drops);
        counter("aether_frames_out_total", "Frames handed to client sockets.", &plain(&self.frames_out));
        let closes: Vec<_> = self
            .closes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(code, n)| (format!("{{code=\"{code}\"}}"), *n))
            .collect();
        counter(
            "aether_connections_closed_total",
            "Connections closed, by close code (1006: no close frame).",
            &closes,
        );
        let api: Vec<_> = self
            .api_responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(status, n)| (format!("{{status=\"{status}\"}}"), *n))
            .collect();
        if !api.is_empty() {
            counter("aether_api_responses_total", "HTTP API (/api/v1/) answers, by status code.", &api);
        }
        let outcomes = ["closed", "dropped"].iter().zip(&self.write_timeouts);
        let write_timeouts: Vec<_> =
            outcomes.map(|(outcome, v)| (format!("{{outcome=\"{outcome}\"}}"), v.load(Relaxed))).collect();
        counter(
            "aether_write_timeouts_total",
            "Connections whose socket took nothing for write_timeout_s: closed with 1013, or dropped.",
            &write_timeouts,
        );
        let reasons = ["too_many_rooms", "rate_limit"].iter().zip(&self.rooms_refused);
        let rooms_refused: Vec<_> =
            reasons.map(|(reason, v)| (format!("{{reason=\"{reason}\"}}"), v.load(Relaxed))).collect();
        counter("aether_rooms_refused_total", "Joins refused by the [rooms] caps, by reason.", &rooms_refused);
        counter("aether_durable_writes_total", "Writes made durable in the ledger.", &plain(&self.durable_writes));
        counter(
            "aether_ledger_inline_appends_total",
            "Ledger appends the state actor made itself, the relay being quiet (the rest: the ledger thread).",
            &plain(&self.inline_appends),
        );
        counter("aether_ledger_failures_total", "Ledger appends that failed.", &plain(&self.ledger_failures));
        counter("aether_compactions_total", "Online compactions completed.", &plain(&self.compactions));
        self.fsync_seconds.render(
            &mut out,
            "aether_ledger_append_seconds",
            "Time per ledger append (write + fdatasync).",
        );
        self.batch_ops.render(&mut out, "aether_ledger_batch_ops", "Writes per ledger append (group commit).");
        self.state_busy.render(
            &mut out,
            "aether_state_busy_seconds",
            "Time the state actor spent on one durable batch, join or cursor tick.",
        );
        let busy_max = self.state_busy_max_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "# HELP aether_state_busy_max_seconds The state actor's longest single piece of work since start.\n\
             # TYPE aether_state_busy_max_seconds gauge\naether_state_busy_max_seconds {busy_max}"
        );
        self.mesh.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.inbound(Inbound::Set);
        metrics.dropped(Dropped::BadKey);
        metrics.closed(1008);
        metrics.write_timed_out(false);
        metrics.batch(3, Duration::from_micros(700), false);
        let text = metrics.render(Live { connections: 2, ..Live::default() });
        for line in [
            "aether_connections 2",
            "aether_messages_in_total{type=\"set\"} 1",
            "aether_messages_in_total{type=\"dropped\"} 1",
            "aether_messages_dropped_total{reason=\"bad_key\"} 1",
            "aether_connections_closed_total{code=\"1008\"} 1",
            "aether_write_timeouts_total{outcome=\"closed\"} 0",
            "aether_write_timeouts_total{outcome=\"dropped\"} 1",
            "aether_ledger_append_seconds_bucket{le=\"0.001\"} 1",
            "aether_ledger_append_seconds_bucket{le=\"0.0005\"} 0",
            "aether_ledger_batch_ops_bucket{le=\"4\"} 1",
            "aether_ledger_batch_ops_count 1",
            "aether_durable_writes_total 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
