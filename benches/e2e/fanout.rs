//! Fan-out: one writer, R reader connections (1,000 by default).
//!
//! The writer sets `fan:<seq>` to `{"t":<ns>}`, `t` being its send time on this process's
//! monotonic clock. Readers are polled by a few threads; each frame received is a delivery, and
//! its latency is receive time minus `t`. The writer keeps at most W writes not yet received by
//! every reader (a closed loop over the slowest reader): the relay runs as fast as it can deliver
//! to all, without being flooded into disconnecting readers. After a warm-up, deliveries in the
//! measured window are counted; delivered messages/s = frames received by all readers / s.

use std::{
    io,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tungstenite::Message;

use crate::{
    client::{Client, closed},
    poller::{Pollers, Sink},
    procs::Relay,
    util::{cpu_secs, machine_busy_secs, thread_cpu_summary},
};

/// What the writer and the readers share.
struct Shared {
    readers: u64,
    /// Readers that received seq `s`, at `s % len`; reset by the writer before it sends `s`.
    counts: Vec<AtomicU64>,
    /// Every seq below this was received by every reader.
    done: AtomicU64,
    progress: (Mutex<()>, Condvar),
    epoch: Instant,
    /// The measured window, ns since `epoch`.
    window: (u64, u64),
}

struct Reader {
    shared: Arc<Shared>,
    delivered: u64,
    /// Delivery latencies in the window, µs.
    latency_us: Vec<u32>,
    unparsed: u64,
}

impl Sink for Reader {
    fn frame(&mut self, text: &str, at: Instant) {
        let seq = text.split_once(r#""key":"fan:"#).and_then(|(_, rest)| crate::util::leading_u64(rest));
        let sent = text.split_once(r#""t":"#).and_then(|(_, rest)| crate::util::leading_u64(rest));
        let (Some(seq), Some(sent)) = (seq, sent) else {
            // The writer's connection ends before the relay is stopped: its `presence-leave`.
            self.unparsed += u64::from(!text.contains(r#""presence-leave""#));
            return;
        };
        let shared = &*self.shared;
        let now = (at - shared.epoch).as_nanos() as u64;
        if now >= shared.window.0 && now < shared.window.1 {
            self.delivered += 1;
            self.latency_us.push(u32::try_from(now.saturating_sub(sent) / 1000).unwrap_or(u32::MAX));
        }
        let slot = &shared.counts[(seq % shared.counts.len() as u64) as usize];
        if slot.fetch_add(1, Ordering::AcqRel) + 1 == shared.readers {
            shared.done.fetch_max(seq + 1, Ordering::AcqRel);
            let _guard = shared.progress.0.lock().expect("progress lock");
            shared.progress.1.notify_all();
        }
    }
}

/// The outcome of one run.
pub struct FanOut {
    /// Measured window, s.
    pub secs: f64,
    /// Frames received by readers in the window.
    pub delivered: u64,
    /// Delivery latencies in the window, µs, sorted.
    pub latency_us: Vec<u32>,
    /// Time to connect the readers.
    pub connect: Duration,
    /// CPU the relay and this process used in the window, s.
    pub relay_cpu: f64,
    /// CPU of this process (readers and writer) in the window, s.
    pub bench_cpu: f64,
    /// The relay's busiest threads in the window, % of one core each.
    pub threads: String,
    /// CPU the rest of the machine used in the window (other processes, kernel), s.
    pub other_cpu: f64,
    /// Anything that went wrong.
    pub errors: Vec<String>,
}

impl FanOut {
    /// Delivered messages per second.
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }
}

/// The writer, on a non-blocking socket: sends while fewer than `window` writes are undelivered,
/// reads (and skips) its own echoes, stops at `end` and waits for the last deliveries.
fn write_loop(mut client: Client, shared: &Shared, window: u64, end: Instant) -> Result<u64, String> {
    client.ws.get_ref().set_nonblocking(true).map_err(|e| format!("nonblocking: {e}"))?;
    let ws = &mut client.ws;
    let would_block =
        |e: &tungstenite::Error| matches!(e, tungstenite::Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock);
    let mut sent = 0u64;
    let mut last_progress = (0u64, Instant::now());
    loop {
        loop {
            match ws.read() {
                Ok(Message::Close(frame)) => return Err(format!("writer {}", closed(frame.as_ref()))),
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(e) => return Err(format!("writer read: {e}")),
            }
        }
        let done = shared.done.load(Ordering::Acquire);
        let now = Instant::now();
        if now >= end && done >= sent {
            return Ok(sent);
        }
        if done != last_progress.0 {
            last_progress = (done, now);
        } else if now - last_progress.1 > Duration::from_secs(10) {
            return Err(format!("deliveries stalled for 10 s: {done} of {sent} writes reached every reader"));
        }
        if now < end && sent < done + window {
            while sent < done + window {
                shared.counts[(sent % shared.counts.len() as u64) as usize].store(0, Ordering::Release);
                let t = shared.epoch.elapsed().as_nanos();
                let frame = format!(r#"{{"type":"set","key":"fan:{sent}","value":{{"t":{t}}}}}"#);
                match ws.write(Message::text(frame)) {
                    Ok(()) => {}
                    Err(e) if would_block(&e) => {} // queued; flushed later
                    Err(e) => return Err(format!("writer write: {e}")),
                }
                sent += 1;
            }
            match ws.flush() {
                Ok(()) => {}
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(format!("writer flush: {e}")),
            }
        }
        let guard = shared.progress.0.lock().expect("progress lock");
        if shared.done.load(Ordering::Acquire) == done {
            let _ = shared.progress.1.wait_timeout(guard, Duration::from_millis(1));
        }
    }
}

/// One writer, `readers` readers on `pollers` threads, `window` writes in flight; `warmup` s, then
/// `secs` s measured.
pub fn run(relay: &mut Relay, readers: usize, window: usize, pollers: usize, warmup: f64, secs: f64) -> FanOut {
    let epoch = Instant::now();
    let mut out = FanOut {
        secs,
        delivered: 0,
        latency_us: Vec::new(),
        connect: Duration::ZERO,
        relay_cpu: 0.0,
        bench_cpu: 0.0,
        threads: String::new(),
        other_cpu: 0.0,
        errors: Vec::new(),
    };
    let mut shared = Shared {
        readers: readers as u64,
        counts: (0..2 * window.max(1)).map(|_| AtomicU64::new(0)).collect(),
        done: AtomicU64::new(0),
        progress: (Mutex::new(()), Condvar::new()),
        epoch,
        window: (u64::MAX, u64::MAX),
    };
    // The window is fixed once the readers are connected; until then, nothing is written.
    let connect_started = Instant::now();
    let mut clients = Vec::with_capacity(readers);
    for i in 0..readers {
        match Client::connect(relay.addr, &relay.url()) {
            Ok(c) => clients.push(c),
            Err(e) => {
                out.errors.push(format!("reader {i} of {readers}: {e}"));
                return out;
            }
        }
    }
    let writer = match Client::connect(relay.addr, &relay.url()) {
        Ok(c) => c,
        Err(e) => {
            out.errors.push(format!("writer: {e}"));
            return out;
        }
    };
    out.connect = connect_started.elapsed();
    let start = epoch.elapsed() + Duration::from_millis(100);
    let from = start + Duration::from_secs_f64(warmup);
    let to = from + Duration::from_secs_f64(secs);
    shared.window = (from.as_nanos() as u64, to.as_nanos() as u64);
    let shared = Arc::new(shared);
    let mut pool = Pollers::spawn(pollers, || Reader {
        shared: Arc::clone(&shared),
        delivered: 0,
        latency_us: Vec::new(),
        unparsed: 0,
    });
    for client in clients {
        match client.into_nonblocking() {
            Ok(ws) => pool.add(ws),
            Err(e) => out.errors.push(format!("reader: nonblocking: {e}")),
        }
    }
    thread::sleep((epoch + start).saturating_duration_since(Instant::now()));
    let writer_shared = Arc::clone(&shared);
    let end = epoch + to;
    let writer = thread::spawn(move || write_loop(writer, &writer_shared, window as u64, end));
    thread::sleep((epoch + from).saturating_duration_since(Instant::now()));
    let (relay_before, bench_before, threads_before) = (relay.cpu_secs(), cpu_secs("self"), relay.threads());
    let busy_before = machine_busy_secs();
    thread::sleep((epoch + to).saturating_duration_since(Instant::now()));
    out.relay_cpu = relay.cpu_secs() - relay_before;
    out.bench_cpu = cpu_secs("self") - bench_before;
    out.other_cpu = machine_busy_secs() - busy_before - out.relay_cpu - out.bench_cpu;
    out.threads = thread_cpu_summary(&threads_before, &relay.threads(), secs);
    match writer.join() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => out.errors.push(e),
        Err(_) => out.errors.push("writer panicked".to_owned()),
    }
    // Stop the relay while the readers still answer its close frames, then drop them.
    let stopping = Instant::now();
    out.errors.extend(crate::procs::stop_and_check(relay, &format!("fan-out x{readers}"), None));
    for (reader, ended) in pool.finish() {
        out.delivered += reader.delivered;
        out.latency_us.extend(reader.latency_us);
        if reader.unparsed > 0 {
            out.errors.push(format!("{} frames that were not fan-out writes", reader.unparsed));
        }
        for (at, why) in ended.reasons {
            if at < stopping {
                out.errors.push(format!("a reader ended before the relay was stopped: {why}"));
            }
        }
    }
    out.errors = crate::util::grouped(out.errors).into_iter().map(|(n, e)| format!("{n}x {e}")).collect();
    out.latency_us.sort_unstable();
    out
}
