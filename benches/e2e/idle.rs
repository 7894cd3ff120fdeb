//! Dense connections (#14): N idle clients opened as fast as the relay takes them, held, then one
//! write delivered to all of them.
//!
//! Several connector threads, each from its own loopback source address (127.0.0.1, .2, ...: a
//! source address has about 28,000 ephemeral ports, and the relay counts its per-source cap by
//! address), open connections as a tab does (upgrade, read `hello` and `snapshot`, send one first
//! frame) with no pacing unless `AETHER_BENCH_IDLE_RATE` asks for one. Each is then handed to a
//! few poller threads that keep reading, so the clients answer the relay's pings as browsers do.
//!
//! Reported: connects/s overall and per quarter of N (a cost per connect that grows with what is
//! held shows as later quarters slower than the first), the slowest single connect (a SYN the
//! kernel dropped from a full listen queue is retried after a second), the kernel's
//! `ListenOverflows` / `ListenDrops` over the run (machine-wide counters), the relay's resident
//! memory per connection (overall, and the slope over the second half, which leaves out what the
//! first connections grow once), then `AETHER_BENCH_IDLE_WRITES` writes from one more client, each
//! timed from its send to its arrival at every one of the N (p50, p99, max over the N).

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use tungstenite::Message;

use crate::{
    Out, Settings,
    client::{Client, READ_TIMEOUT},
    connector, pair,
    poller::{Pollers, Raw, Sink},
    procs::{OursConfig, Relay, histogram},
    report::{Goal, Row},
    util::{cpu_secs, env_or, machine_busy_secs, meminfo_kib, ms, percentile, tcp_ext},
};

/// The knobs of this scenario.
pub struct Knobs {
    /// Connections to hold.
    pub conns: usize,
    /// Connector threads.
    pub connectors: usize,
    /// Connects each connector keeps in flight.
    pub in_flight: usize,
    /// Loopback source addresses, 127.0.0.1 up.
    pub sources: usize,
    /// Connects per second at most; 0: as fast as they go.
    pub rate: f64,
    /// Poller threads holding the connections.
    pub pollers: usize,
    /// Pause after the last connect before memory is read.
    pub settle: Duration,
    /// Writes delivered to all, one after another.
    pub writes: usize,
}

impl Knobs {
    fn from_env(conns: usize, pollers: usize) -> Knobs {
        Knobs {
            conns,
            connectors: env_or("AETHER_BENCH_IDLE_CONNECTORS", 2),
            in_flight: env_or("AETHER_BENCH_IDLE_IN_FLIGHT", 8),
            sources: env_or("AETHER_BENCH_IDLE_SOURCES", 4usize).clamp(1, 250),
            rate: env_or("AETHER_BENCH_IDLE_RATE", 0.0),
            pollers: env_or("AETHER_BENCH_IDLE_POLLERS", pollers),
            settle: Duration::from_secs_f64(env_or("AETHER_BENCH_IDLE_SETTLE", 2.0)),
            writes: env_or("AETHER_BENCH_IDLE_WRITES", 5),
        }
    }
}

/// What the pollers and the writer share: when each write was sent, how many have it.
struct Shared {
    epoch: Instant,
    received: Vec<AtomicUsize>,
}

/// A poller's view: latencies per write, and anything else it got.
struct Receiver {
    shared: Arc<Shared>,
    /// (write, ns from its send to this receipt).
    latencies: Vec<(usize, u64)>,
    other: u64,
}

impl Sink for Receiver {
    fn frame(&mut self, text: &str, at: Instant) {
        let write = text.split_once(r#""key":"idle:"#).and_then(|(_, rest)| crate::util::leading_u64(rest));
        let sent = text.split_once(r#""t":"#).and_then(|(_, rest)| crate::util::leading_u64(rest));
        let (Some(write), Some(sent)) = (write, sent) else {
            // The writer leaves before the relay is stopped: its `presence-leave` is expected.
            self.other += u64::from(!text.contains(r#""presence-leave""#));
            return;
        };
        let now = (at - self.shared.epoch).as_nanos() as u64;
        let write = write as usize;
        self.latencies.push((write, now.saturating_sub(sent)));
        if let Some(n) = self.shared.received.get(write) {
            n.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The outcome of one run.
pub struct Idle {
    /// Connections held.
    pub conns: usize,
    /// Relay RSS before the first connection, KiB.
    pub rss_before: u64,
    /// Relay RSS when each quarter of the connections was open (the last one after `settle`).
    pub rss_quarters: [u64; 4],
    /// Time to open them all.
    pub connect: Duration,
    /// Connects/s in each quarter.
    pub quarters: [f64; 4],
    /// Single connects: p50, p99, max.
    pub connect_latency: (Duration, Duration, Duration),
    /// `ListenOverflows`, `ListenDrops` over the connects (the whole machine's).
    pub overflows: (u64, u64),
    /// CPU the relay, this process and the rest of the machine used while connecting, % of one core.
    pub cpu: (f64, f64, f64),
    /// Growth of the kernel's slab memory while connecting, KiB (the whole machine's: both ends
    /// of every loopback connection, and anything else the machine did meanwhile).
    pub slab_kib: u64,
    /// The relay's state actor, busy per write (its `aether_state_busy_seconds`), s: the part
    /// of a write that one thread does for every member in turn.
    pub state_busy: Option<f64>,
    /// Per write, from its send until every receiver had it: CPU seconds of the relay, of this
    /// process (the receivers' reads included) and of the rest of the machine.
    pub write_cpu: Vec<(f64, f64, f64)>,
    /// Per write: every receiver's latency, sorted (ns).
    pub deliveries: Vec<Vec<u64>>,
    /// Anything that went wrong.
    pub errors: Vec<String>,
    /// Anything odd about the relay (its shutdown, its log).
    pub notes: Vec<String>,
}

impl Idle {
    /// KiB per connection, all of them against none.
    pub fn per_conn_kib(&self) -> f64 {
        self.rss_quarters[3].saturating_sub(self.rss_before) as f64 / self.conns.max(1) as f64
    }

    /// KiB per connection over the second half (from half held to all held).
    pub fn slope_kib(&self) -> f64 {
        self.rss_quarters[3].saturating_sub(self.rss_quarters[1]) as f64 / (self.conns / 2).max(1) as f64
    }

    /// Connects/s overall.
    pub fn rate(&self) -> f64 {
        self.conns as f64 / self.connect.as_secs_f64().max(1e-9)
    }

    /// Every write's slowest receiver: the time until all had it, ms, per write.
    pub fn all_have_it_ms(&self) -> Vec<f64> {
        self.deliveries.iter().map(|d| d.last().map_or(f64::NAN, |&ns| ns as f64 / 1e6)).collect()
    }

    /// The median over the writes of their quantile `p`, ms.
    pub fn delivery_ms(&self, p: f64) -> f64 {
        let per: Vec<f64> = self.deliveries.iter().map(|d| percentile(d, p) as f64 / 1e6).collect();
        if per.is_empty() { f64::NAN } else { crate::util::median(per) }
    }
}

/// Opens `k.conns` connections on `k.connectors` threads, `k.in_flight` at a time each (see
/// `connector`), and hands them to `pool`; fills the connect figures of `out`.
fn open_all(relay: &Relay, k: &Knobs, pool: &mut Pollers<Receiver>, out: &mut Idle) {
    let path = relay.url().split_once("//").and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()));
    let plan = Arc::new(connector::Plan {
        addr: relay.addr,
        path: path.unwrap_or_else(|| "/".to_owned()),
        sources: (0..k.sources).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8))).collect(),
        in_flight: k.in_flight,
        timeout: READ_TIMEOUT,
    });
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel::<Vec<(Raw, Duration)>>();
    let overflows_before = (tcp_ext("ListenOverflows"), tcp_ext("ListenDrops"));
    let slab_before = meminfo_kib("Slab");
    let (relay_cpu, bench_cpu, busy) = (relay.cpu_secs(), cpu_secs("self"), machine_busy_secs());
    let started = Instant::now();
    let connectors: Vec<_> = (0..k.connectors.max(1))
        .map(|_| {
            let (plan, next, stop, errors, tx) = (plan.clone(), next.clone(), stop.clone(), errors.clone(), tx.clone());
            let (n, rate) = (k.conns, k.rate);
            thread::spawn(move || {
                let mut batch = Vec::new();
                let mut sent_at = Instant::now();
                let claim = || {
                    let j = next.fetch_add(1, Ordering::AcqRel);
                    (j < n && !stop.load(Ordering::Acquire))
                        .then(|| if rate > 0.0 { started + Duration::from_secs_f64(j as f64 / rate) } else { started })
                };
                connector::run(&plan, claim, |opened| {
                    match opened {
                        Ok(o) => batch.push((o.raw, o.took)),
                        Err(e) => {
                            let mut errors = errors.lock().expect("errors lock");
                            errors.push(format!("a client of {n}: {e}"));
                            if errors.len() >= 100 {
                                stop.store(true, Ordering::Release);
                            }
                        }
                    }
                    // Handed over in batches: one wake-up of the main thread per batch.
                    if batch.len() >= 32 || sent_at.elapsed() > Duration::from_millis(5) {
                        let _ = tx.send(std::mem::take(&mut batch));
                        sent_at = Instant::now();
                    }
                });
                let _ = tx.send(batch);
            })
        })
        .collect();
    drop(tx);
    let mut latencies = Vec::with_capacity(k.conns);
    let mut marks = [started; 4];
    for batch in rx {
        let before = latencies.len();
        let (sockets, took): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        pool.add_raw(sockets);
        latencies.extend(took);
        let held = latencies.len();
        if let Some(q) = (0..4).find(|q| before < (q + 1) * k.conns / 4 && held >= (q + 1) * k.conns / 4) {
            marks[q] = Instant::now();
            out.rss_quarters[q] = relay.rss_kib();
        }
    }
    for c in connectors {
        let _ = c.join();
    }
    let took = started.elapsed();
    out.connect = took;
    out.slab_kib = meminfo_kib("Slab").saturating_sub(slab_before);
    let secs = took.as_secs_f64().max(1e-9);
    let relay_cpu = relay.cpu_secs() - relay_cpu;
    let bench_cpu = cpu_secs("self") - bench_cpu;
    out.cpu = (
        100.0 * relay_cpu / secs,
        100.0 * bench_cpu / secs,
        100.0 * (machine_busy_secs() - busy - relay_cpu - bench_cpu) / secs,
    );
    out.overflows = (
        tcp_ext("ListenOverflows").saturating_sub(overflows_before.0),
        tcp_ext("ListenDrops").saturating_sub(overflows_before.1),
    );
    let mut from = started;
    for (q, mark) in marks.iter().enumerate() {
        let quarter = k.conns / 4 * (q + 1) - k.conns / 4 * q;
        out.quarters[q] = quarter as f64 / (*mark - from).as_secs_f64().max(1e-9);
        from = *mark;
    }
    out.conns = latencies.len();
    latencies.sort_unstable();
    out.connect_latency =
        (percentile(&latencies, 0.5), percentile(&latencies, 0.99), latencies.last().copied().unwrap_or_default());
    out.errors.extend(errors.lock().expect("errors lock").drain(..));
}

/// Sends `k.writes` writes from one more client, each once every receiver has the one before
/// (or 10 s passed).
fn write_to_all(relay: &Relay, k: &Knobs, shared: &Shared, held: usize, out: &mut Idle) {
    let mut writer = match Client::connect(relay.addr, &relay.url()) {
        Ok(c) => c,
        Err(e) => {
            out.errors.push(format!("writer: {e}"));
            return;
        }
    };
    for w in 0..k.writes {
        let cpu = (relay.cpu_secs(), cpu_secs("self"), machine_busy_secs());
        let t = shared.epoch.elapsed().as_nanos();
        let frame = format!(r#"{{"type":"set","key":"idle:{w}","value":{{"t":{t}}}}}"#);
        if let Err(e) = writer.ws.send(Message::text(frame)) {
            out.errors.push(format!("writer: {e}"));
            return;
        }
        if let Err(e) = writer.wait_for(&format!("idle:{w}")) {
            out.errors.push(format!("writer: {e}"));
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.received[w].load(Ordering::Acquire) < held && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let (relay_cpu, bench_cpu) = (relay.cpu_secs() - cpu.0, cpu_secs("self") - cpu.1);
        out.write_cpu.push((relay_cpu, bench_cpu, machine_busy_secs() - cpu.2 - relay_cpu - bench_cpu));
        let got = shared.received[w].load(Ordering::Acquire);
        if got < held {
            out.errors.push(format!("write {w}: {got} of {held} receivers had it after 10 s"));
        }
        // Let the pollers go quiet before the next one.
        thread::sleep(Duration::from_millis(200));
    }
    writer.close();
}

/// One relay: open, hold, measure memory, write to all, stop.
pub fn run(relay: &mut Relay, k: &Knobs) -> Idle {
    let mut out = Idle {
        conns: 0,
        rss_before: relay.rss_kib(),
        rss_quarters: [0; 4],
        connect: Duration::ZERO,
        quarters: [0.0; 4],
        connect_latency: Default::default(),
        overflows: (0, 0),
        cpu: (0.0, 0.0, 0.0),
        deliveries: Vec::new(),
        write_cpu: Vec::new(),
        slab_kib: 0,
        state_busy: None,
        errors: Vec::new(),
        notes: Vec::new(),
    };
    let shared =
        Arc::new(Shared { epoch: Instant::now(), received: (0..k.writes).map(|_| AtomicUsize::new(0)).collect() });
    let mut pool =
        Pollers::spawn(k.pollers, || Receiver { shared: Arc::clone(&shared), latencies: Vec::new(), other: 0 });
    open_all(relay, k, &mut pool, &mut out);
    thread::sleep(k.settle);
    out.rss_quarters[3] = relay.rss_kib();
    let held = out.conns;
    if out.errors.is_empty() {
        let busy = || histogram(&relay.metrics(), "aether_state_busy_seconds").map(|(sum, _)| sum);
        let before = busy();
        write_to_all(relay, k, &shared, held, &mut out);
        out.state_busy = before.zip(busy()).map(|(b, a)| (a - b) / k.writes.max(1) as f64);
    }
    let stopping = Instant::now();
    out.notes = crate::procs::stop_and_check(relay, &format!("{} idle connections", k.conns), None);
    out.deliveries = vec![Vec::with_capacity(held); k.writes];
    let mut other = 0;
    for (receiver, ended) in pool.finish() {
        other += receiver.other;
        for (w, ns) in receiver.latencies {
            out.deliveries[w].push(ns);
        }
        for (at, why) in ended.reasons {
            if at < stopping {
                out.errors.push(format!("a connection ended before the relay was stopped: {why}"));
            }
        }
    }
    for d in &mut out.deliveries {
        d.sort_unstable();
    }
    if other > 0 {
        // Nobody else writes: besides the writes (and the writer's leave), an idle connection
        // gets nothing.
        out.errors.push(format!("{other} frames other than the writes on the idle connections"));
    }
    out.errors = crate::util::grouped(out.errors).into_iter().map(|(n, e)| format!("{n}x {e}")).collect();
    out
}

/// The scenario: every relay in turn, a table, and the rows for the side-by-side report.
pub fn scenario(s: &Settings, conns: usize, out: &mut Out) {
    let k = Knobs::from_env(conns, s.pollers);
    let pace = if k.rate > 0.0 { format!("at up to {}/s", k.rate) } else { "as fast as they go".to_owned() };
    println!(
        "\n== Dense connections: {conns} idle clients opened {pace} by {} threads from {} source addresses, \
         then {} writes to all ==",
        k.connectors, k.sources, k.writes
    );
    let mut results = Vec::new();
    for kind in s.kinds() {
        let Some(mut relay) = Relay::start(kind, &s.launch, &OursConfig::default()) else { continue };
        let r = run(&mut relay, &k);
        let q = r.quarters;
        println!(
            "{kind}: held {} in {:.2} s = {:.0} connects/s (quarters {:.0} / {:.0} / {:.0} / {:.0}); one connect \
             p50 {:.2} ms, p99 {:.2} ms, max {:.0} ms; ListenOverflows {}, ListenDrops {}",
            r.conns,
            r.connect.as_secs_f64(),
            r.rate(),
            q[0],
            q[1],
            q[2],
            q[3],
            ms(r.connect_latency.0),
            ms(r.connect_latency.1),
            ms(r.connect_latency.2),
            r.overflows.0,
            r.overflows.1
        );
        println!(
            "{:w$}  while connecting, % of a core: relay {:.0}, bench {:.0}, rest of the machine {:.0}",
            "",
            r.cpu.0,
            r.cpu.1,
            r.cpu.2,
            w = kind.to_string().len()
        );
        println!(
            "{:w$}  RSS {} KiB before, {:?} KiB at each quarter: {:.2} KiB per connection, {:.2} over the second half",
            "",
            r.rss_before,
            r.rss_quarters,
            r.per_conn_kib(),
            r.slope_kib(),
            w = kind.to_string().len()
        );
        let all: Vec<String> = r.all_have_it_ms().iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "{:w$}  one write to all {}: p50 {:.1} ms, p99 {:.1} ms (median of {} writes); all have it after {} ms",
            "",
            r.conns,
            r.delivery_ms(0.5),
            r.delivery_ms(0.99),
            r.deliveries.len(),
            all.join(" / "),
            w = kind.to_string().len()
        );
        println!(
            "{:w$}  kernel slab grew {} KiB while connecting: {:.2} KiB per socket (both ends counted); state actor busy {} per write",
            "",
            r.slab_kib,
            r.slab_kib as f64 / (2 * r.conns.max(1)) as f64,
            r.state_busy.map_or("-".to_owned(), |b| format!("{:.1} ms", b * 1e3)),
            w = kind.to_string().len()
        );
        if !r.write_cpu.is_empty() {
            let med = |f: fn(&(f64, f64, f64)) -> f64| crate::util::median(r.write_cpu.iter().map(f).collect()) * 1e3;
            println!(
                "{:w$}  CPU per write (median), ms: relay {:.0}, bench {:.0}, rest of the machine {:.0}",
                "",
                med(|c| c.0),
                med(|c| c.1),
                med(|c| c.2),
                w = kind.to_string().len()
            );
        }
        out.notes.extend(r.errors.iter().map(|e| format!("{kind} idle: {e}")));
        out.notes.extend(r.notes.iter().cloned());
        results.push((kind, r));
    }
    out.section(&format!("Dense connections, {conns} idle clients held"));
    let ok = |r: &Idle| r.errors.is_empty();
    let (o, u) = pair(&results, |r| ok(r).then(|| r.per_conn_kib()));
    out.rows.push(Row::new("resident KiB per idle connection", o, u, 1).goal(Goal::AtMost(12.0)));
    let (o, u) = pair(&results, |r| ok(r).then(|| r.rate()));
    out.rows.push(Row::new("connects/s, all of them", o, u, 0).goal(Goal::AtLeast(10_000.0)));
    let (o, u) = pair(&results, |r| ok(r).then(|| r.quarters[3]));
    out.rows.push(Row::new("connects/s, last quarter", o, u, 0));
    let (o, u) = pair(&results, |r| ok(r).then_some(r.overflows.0 as f64));
    out.rows.push(Row::new("listen-queue overflows", o, u, 0));
    let (o, u) = pair(&results, |r| {
        let all = r.all_have_it_ms();
        (ok(r) && !all.is_empty()).then(|| crate::util::median(all)).filter(|v| v.is_finite())
    });
    out.rows.push(Row::new("one write, ms until all have it (median)", o, u, 0).goal(Goal::AtMost(250.0)));
}
