//! Federation through NATS JetStream (`[mesh] transport = "nats"`) against the WebSocket mesh,
//! ours only (upstream has no NATS transport).
//!
//! Each federation is N relays (10): a WebSocket ring and a full mesh (`[mesh] peers`, as the
//! `mesh` scenario starts them), and N relays on one `nats-server` with JetStream (file storage in
//! a fresh temporary directory, `-p -1` on 127.0.0.1; every relay on its defaults plus `servers`
//! and `cluster`). Each is started fresh for each of `runs` runs (`pause` s apart), and on each:
//!
//! - **Ready**: one key written on every relay; every relay polled until it holds all N (the
//!   federation carries writes every way; for NATS, every consumer is reading).
//! - **Latency** (first run only): one writer client on relay 0 and one observer client per target
//!   relay (relay 0 itself, the baseline; its neighbour; for the ring also the relay N/2 hops
//!   away), each observer read by its own thread that notes when each `set` arrives. The writer
//!   sends one `set`, waits until every observer has it, reads its own echo, and sends the next:
//!   warm-up, then the timed samples. Reported per target: arrival minus send, and per write the
//!   target's arrival minus the same-relay observer's (what the federation adds to a local
//!   browser's view of the write).
//! - **Spread**: the `mesh` scenario's "written at once" run: one client per relay writes its own
//!   keys, W in flight, reading every broadcast; acked writes/s over all, and the first send until
//!   every relay holds every key with one fingerprint. CPU the relays (and nats-server) used from
//!   the clients' connect to convergence.
//!
//! Every relay and the nats-server are stopped (SIGTERM, then SIGKILL after 10 s) after each run;
//! every ledger must hold every key written.

use std::{
    path::{Path, PathBuf},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{
    client::{Client, READ_TIMEOUT, set_frame, set_key},
    mesh::{self, Load, Node, Others, Spread, Topology, converged, federation, spread_over, stop_all, write_keys},
    procs::{Launch, NatsServer, Relay},
    util::median,
};

/// What the scenario runs.
pub struct Settings {
    /// `nats-server`, if found.
    pub server: Option<PathBuf>,
    /// WebSocket federations to compare with.
    pub topologies: Vec<Topology>,
    /// Relays in each federation.
    pub nodes: usize,
    /// Writes per relay in a spread run.
    pub writes: u64,
    /// Writes in flight per spread writer.
    pub window: u64,
    /// Spread runs per federation, each on a fresh one (median reported); 0: latency only.
    pub runs: usize,
    /// Seconds between runs.
    pub pause: f64,
    /// Timed latency samples.
    pub samples: usize,
    /// Untimed latency writes first.
    pub warmup: usize,
    /// Longest wait for any convergence, s.
    pub wait: f64,
}

/// Which federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Peer links.
    WebSocket(Topology),
    /// One NATS JetStream stream.
    Nats,
}

impl Via {
    /// Its name in output and in the table.
    pub fn name(self) -> String {
        match self {
            Via::WebSocket(t) => format!("WebSocket {}", t.name()),
            Via::Nats => "NATS JetStream".to_owned(),
        }
    }
}

/// One observer's samples, ms, sorted.
pub struct Target {
    /// Where it is, relative to the writer's relay.
    pub what: String,
    /// Send until it received the write.
    pub latency: Vec<f64>,
    /// Per write, its arrival minus the same-relay observer's (empty for that one).
    pub added: Vec<f64>,
}

/// Spread runs' CPU, s: every relay together, and nats-server.
pub struct Cpu {
    /// The relays'.
    pub relays: f64,
    /// nats-server's (`None`: not NATS).
    pub nats: Option<f64>,
    /// Wall time of the run (connect to convergence), s.
    pub wall: f64,
}

/// One federation's results.
pub struct Federation {
    /// Which.
    pub via: Via,
    /// Latency per target, the same-relay baseline first.
    pub targets: Vec<Target>,
    /// Spread runs.
    pub spreads: Vec<Spread>,
    /// CPU of each spread run.
    pub cpu: Vec<Cpu>,
    /// Op messages the relays sent (over links, or published) per write, over all its runs.
    pub sent_per_write: Option<f64>,
}

impl Federation {
    /// Median over the spread runs of `f`; `None` when any run has none.
    pub fn median(&self, f: impl Fn(&Spread) -> Option<f64>) -> Option<f64> {
        let v: Option<Vec<f64>> = self.spreads.iter().map(f).collect();
        v.filter(|v| !v.is_empty()).map(median)
    }

    /// Median over the spread runs of the CPU every relay and nats-server used together, per
    /// write, µs.
    pub fn cpu_per_write(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .spreads
            .iter()
            .zip(&self.cpu)
            .map(|(sp, c)| 1e6 * (c.relays + c.nats.unwrap_or(0.0)) / sp.writes as f64)
            .collect();
        (!v.is_empty()).then(|| median(v))
    }
}

/// Everything the scenario measures.
#[derive(Default)]
pub struct Nats {
    /// Per federation, in the order run.
    pub federations: Vec<Federation>,
    /// Anything that went wrong.
    pub notes: Vec<String>,
}

/// A federation standing: its relays, and its nats-server for NATS.
struct Standing {
    nodes: Vec<Node>,
    server: Option<NatsServer>,
}

impl Standing {
    /// Starts `n` relays federated by `via` (for NATS, on a fresh nats-server `bin`).
    fn start(launch: &Launch, via: Via, n: usize, bin: Option<&Path>) -> Result<Standing, String> {
        match via {
            Via::WebSocket(topology) => Ok(Standing { nodes: federation(launch, n, topology)?, server: None }),
            Via::Nats => {
                let bin = bin.ok_or(
                    "not run: no nats-server on PATH, in /usr/sbin or /usr/bin (apt-get install nats-server, or set \
                     AETHER_BENCH_NATS_SERVER)",
                )?;
                let server = NatsServer::start(bin)?;
                let nodes = (0..n)
                    .map(|i| {
                        let id = format!("n{i:02}");
                        let mesh = format!(
                            "[mesh]\nnode_id = \"{id}\"\ntransport = \"nats\"\n\n[mesh.nats]\nservers = [\"{}\"]\n\
                             cluster = \"bench\"\n",
                            server.url()
                        );
                        Node::with_mesh(launch, &id, mesh, None)
                    })
                    .collect();
                Ok(Standing { nodes, server: Some(server) })
            }
        }
    }

    /// Stops every relay (each ledger must hold `keys` records), then the nats-server.
    fn stop(self, what: &str, notes: &mut Vec<String>, keys: u64) {
        stop_all(self.nodes, what, notes, keys);
        if let Some(mut server) = self.server {
            notes.extend(server.stop());
        }
    }
}

/// Runs the WebSocket federations, then the NATS one; each `runs` times, fresh each time.
pub fn run(launch: &Launch, s: &Settings) -> Nats {
    let mut out = Nats::default();
    let n = s.nodes;
    let vias = s.topologies.iter().map(|&t| Via::WebSocket(t)).chain([Via::Nats]);
    for via in vias {
        let name = via.name();
        match via {
            Via::WebSocket(_) => println!("  {name}: {n} relays; {} run(s), each on a fresh federation", s.runs),
            Via::Nats => println!(
                "  {name}: {n} relays on one nats-server (JetStream, file storage); {} runs, each on a fresh \
                 federation and server",
                s.runs
            ),
        }
        let others = Others::start();
        let mut fed =
            Federation { via, targets: Vec::new(), spreads: Vec::new(), cpu: Vec::new(), sent_per_write: None };
        let (mut sent, mut written) = (0, 0);
        for run in 0..s.runs.max(1) {
            if run > 0 {
                thread::sleep(Duration::from_secs_f64(s.pause));
            }
            let standing = match Standing::start(launch, via, n, s.server.as_deref()) {
                Ok(standing) => standing,
                Err(e) => {
                    out.notes.push(format!("aether-actix {name}: {e}"));
                    break;
                }
            };
            let (held, ok) = measure(&standing, &mut fed, run, s, &mut out.notes);
            let relays = standing.nodes.iter().map(|n| &n.relay);
            sent += relays.map(|relay| mesh::ops_out(relay).iter().map(|(_, n)| n).sum::<u64>()).sum::<u64>();
            written += held;
            standing.stop(&name, &mut out.notes, held);
            if !ok {
                break;
            }
        }
        if written > 0 {
            let per = sent as f64 / written as f64;
            fed.sent_per_write = Some(per);
            println!(
                "    {per:.2} op messages sent per write ({}; {written} writes in all)",
                if via == Via::Nats { "publishes to the stream" } else { "over peer links, as in `mesh`" }
            );
        }
        others.report(if via == Via::Nats { "aether-actix and nats-server" } else { "aether-actix" });
        if !fed.spreads.is_empty() || !fed.targets.is_empty() {
            out.federations.push(fed);
        }
    }
    out
}

/// One run on a standing federation: the ready check; on the first run the latency samples; the
/// spread run (unless `runs` is 0). Returns the keys every relay must hold, and whether all went
/// well.
fn measure(
    standing: &Standing,
    fed: &mut Federation,
    run: usize,
    s: &Settings,
    notes: &mut Vec<String>,
) -> (u64, bool) {
    let name = fed.via.name();
    let relays: Vec<&Relay> = standing.nodes.iter().map(|n| &n.relay).collect();
    let n = relays.len();
    let deadline = || Instant::now() + Duration::from_secs_f64(s.wait);
    let started = Instant::now();
    let ready = relays.iter().enumerate().try_for_each(|(i, relay)| {
        let mut c = Client::connect(relay.addr, &relay.url())?;
        write_keys(&mut c, &format!("ready{i:02}:"), 1, 1)?;
        c.close();
        Ok::<(), String>(())
    });
    if let Err(e) = ready.and_then(|()| converged(&relays, n as u64, deadline())) {
        notes.push(format!("aether-actix {name}, run {}: not ready: {e}", run + 1));
        return (0, false);
    }
    let mut held = n as u64;
    if run == 0 {
        println!(
            "    run 1: every relay holds a write of every other {:.3} s after the first",
            started.elapsed().as_secs_f64()
        );
    }
    if run == 0 && s.samples > 0 {
        let mut targets = vec![("same relay".to_owned(), 0)];
        match fed.via {
            Via::WebSocket(Topology::Ring) => {
                targets.push(("neighbour, 1 hop".to_owned(), 1));
                if n > 3 {
                    targets.push((format!("{} hops", n / 2), n / 2));
                }
            }
            Via::WebSocket(Topology::Full) => targets.push(("neighbour, 1 hop".to_owned(), 1)),
            Via::Nats => targets.push(("another relay".to_owned(), 1)),
        }
        match latency(&relays, &targets, s.warmup, s.samples) {
            Ok(t) => {
                for target in &t {
                    print_target(target);
                }
                fed.targets = t;
            }
            Err(e) => notes.push(format!("aether-actix {name}, latency: {e}")),
        }
        // Every relay holds the latency writes before the spread run starts from a known count.
        let written = (s.warmup + s.samples) as u64;
        if let Err(e) = converged(&relays, held + written, deadline()) {
            notes.push(format!("aether-actix {name}, after the latency writes: {e}"));
            return (held, false);
        }
        held += written;
    }
    if run >= s.runs {
        return (held, true);
    }
    let load = Load { writes: s.writes, window: s.window, wait: s.wait, held, prefix: "s" };
    let nats = standing.server.as_ref();
    let (t0, relay_cpu, nats_cpu) =
        (Instant::now(), relays.iter().map(|r| r.cpu_secs()).sum::<f64>(), nats.map(NatsServer::cpu_secs));
    let (sp, errors) = spread_over(&relays, &load);
    let cpu = Cpu {
        relays: relays.iter().map(|r| r.cpu_secs()).sum::<f64>() - relay_cpu,
        nats: nats.map(NatsServer::cpu_secs).zip(nats_cpu).map(|(a, b)| a - b),
        wall: t0.elapsed().as_secs_f64(),
    };
    notes.extend(errors.into_iter().map(|e| format!("aether-actix {name}, spread run {}: {e}", run + 1)));
    println!(
        "    spread #{}: {} writes, {}; all converged {}; CPU {:.0}% of a core for all relays{} over {:.2} s, {:.0} µs \
         per write",
        run + 1,
        sp.writes,
        sp.rate.map_or("writers failed".into(), |r| format!("{r:.0} acked/s")),
        sp.converged.map_or("never".into(), |c| format!("{c:.2} s after the first send")),
        100.0 * cpu.relays / cpu.wall,
        cpu.nats.map_or(String::new(), |c| format!(", {:.0}% for nats-server", 100.0 * c / cpu.wall)),
        cpu.wall,
        1e6 * (cpu.relays + cpu.nats.unwrap_or(0.0)) / sp.writes as f64,
    );
    let ok = sp.converged.is_some();
    if ok {
        held += sp.writes;
    }
    fed.spreads.push(sp);
    fed.cpu.push(cpu);
    (held, ok)
}

fn print_target(t: &Target) {
    let q = |v: &[f64]| {
        let at = |p| quantile(v, p).unwrap_or(f64::NAN);
        format!("p50 {:.3}, p99 {:.3}, max {:.3} ms", at(0.5), at(0.99), at(1.0))
    };
    let added = if t.added.is_empty() { String::new() } else { format!("; added per write {}", q(&t.added)) };
    println!("    {:<18} {} samples: {}{added}", t.what, t.latency.len(), q(&t.latency));
}

/// One writer on `relays[0]`, one observer client on each target relay, one write in flight.
fn latency(
    relays: &[&Relay],
    targets: &[(String, usize)],
    warmup: usize,
    samples: usize,
) -> Result<Vec<Target>, String> {
    let total = (warmup + samples) as u64;
    let mut writer = Client::connect(relays[0].addr, &relays[0].url())?;
    let observers = targets
        .iter()
        .map(|(_, i)| Client::connect(relays[*i].addr, &relays[*i].url()))
        .collect::<Result<Vec<_>, String>>()?;
    let arrivals: Vec<Vec<Duration>> = thread::scope(|sc| {
        let mut channels = Vec::new();
        for mut client in observers {
            let (tx, rx) = mpsc::channel::<(u64, Instant)>();
            channels.push(rx);
            sc.spawn(move || {
                while let Ok(frame) = client.next_text() {
                    let at = Instant::now();
                    let Some(i) = set_key(&frame).and_then(|k| k.strip_prefix("lat:").and_then(|i| i.parse().ok()))
                    else {
                        continue;
                    };
                    if tx.send((i, at)).is_err() || i + 1 == total {
                        break;
                    }
                }
                client.close();
            });
        }
        let mut arrivals = vec![Vec::with_capacity(samples); channels.len()];
        for i in 0..total {
            let key = format!("lat:{i}");
            let sent = Instant::now();
            writer.ws.send(set_frame(&key, i)).map_err(|e| format!("send: {e}"))?;
            for (rx, out) in channels.iter().zip(&mut arrivals) {
                let at = loop {
                    match rx.recv_timeout(READ_TIMEOUT) {
                        Ok((j, at)) if j == i => break at,
                        Ok(_) => {}
                        Err(_) => return Err(format!("write {i} did not reach an observer in {READ_TIMEOUT:?}")),
                    }
                };
                if i >= warmup as u64 {
                    out.push(at - sent);
                }
            }
            writer.wait_for(&key)?; // its own echo; read, or its queue fills
        }
        Ok(arrivals)
    })?;
    writer.close();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    Ok(targets
        .iter()
        .zip(&arrivals)
        .enumerate()
        .map(|(k, ((what, _), a))| Target {
            what: what.clone(),
            latency: sorted(a.iter().map(ms).collect()),
            added: if k == 0 {
                Vec::new()
            } else {
                sorted(a.iter().zip(&arrivals[0]).map(|(x, base)| ms(x) - ms(base)).collect())
            },
        })
        .collect())
}

/// `p` quantile of sorted ms.
pub fn quantile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}
