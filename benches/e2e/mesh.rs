//! Federation (`[mesh]`): our relays linked to each other, against upstream's `MeshNode`s
//! (`benches/upstream/mesh.py`).
//!
//! - **Convergence**: rings of 3, 5 and 10 relays (node i dials node i-1, the last also dials node
//!   0). Once every link is up (`/healthz`), one browser client on node 0 writes 100 keys as fast
//!   as it can (all sent, then the echoes read); from its first send until every node's `/healthz`
//!   shows the keys and all fingerprints are equal, each node polled every 5 ms by its own thread.
//!   Median of a few runs on the same ring, `pause` seconds apart. Every hop makes the write
//!   durable (fdatasync) before forwarding it.
//! - **Catch-up**: A dials B (A's `redial_max_s = 0.5`, so its dialler finds B again within half a
//!   second). B is stopped (SIGTERM); one client writes 100,000 keys on A (256 in flight); B is
//!   started again on its own ledger and on the same mesh port, and is timed from its spawn until
//!   its fingerprint equals A's (anti-entropy on connect sends B the buckets that differ).
//! - **Spread**: a ring of 10, one client per relay, each writing its own keys (16 in flight,
//!   reading every broadcast): acknowledged writes per second over all, and the time from the
//!   first send until every relay holds every key (polled once the last writer is done).
//!
//! Upstream runs the same shapes as `MeshNode`s, one process each, without ledger or gateway
//! (`set()` is the write): see `benches/upstream/mesh.py`.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Barrier, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tempfile::TempDir;

use crate::{
    client::{Client, set_frame, set_key},
    procs::{Launch, OursConfig, Relay, stop_and_check, write_ours_config},
    util::{clock_ticks, grouped, machine_busy_secs, median, temp_dir, upstream_script},
};

/// How often `/healthz` is polled while waiting for a state.
const POLL: Duration = Duration::from_millis(5);
/// Longest the ring may take to bring every link up.
const LINK_LIMIT: Duration = Duration::from_secs(30);
/// Keys written on both sides of the partition before it, to check the link works.
const BEFORE: u64 = 100;
/// Writes upstream's catch-up check makes while B is down, and how long it then waits.
const UPSTREAM_CATCHUP: (u64, f64) = (1000, 5.0);

/// What the scenario runs.
pub struct Settings {
    /// Ring sizes for the convergence runs.
    pub rings: Vec<usize>,
    /// Writes per convergence run.
    pub writes: u64,
    /// Convergence runs per ring (median reported).
    pub runs: usize,
    /// Seconds between convergence runs.
    pub pause: f64,
    /// Writes B misses in the catch-up run; 0 skips it.
    pub catchup: u64,
    /// Relays in the spread run; 0 skips it.
    pub spread_nodes: usize,
    /// Writes per relay in the spread run.
    pub spread_writes: u64,
    /// Writes in flight per spread writer.
    pub window: u64,
    /// Longest wait for any convergence, s.
    pub wait: f64,
}

/// One ring size's convergence times, s (`None`: did not converge in time).
pub struct Ring {
    /// Relays.
    pub nodes: usize,
    /// Ours, per run.
    pub ours: Vec<Option<f64>>,
    /// Upstream's, per run.
    pub upstream: Vec<Option<f64>>,
}

impl Ring {
    /// Median of the runs that converged; `None` when any did not.
    pub fn median(runs: &[Option<f64>]) -> Option<f64> {
        let v: Option<Vec<f64>> = runs.iter().copied().collect();
        v.filter(|v| !v.is_empty()).map(median)
    }
}

/// The catch-up run, ours.
#[derive(Default)]
pub struct CatchUp {
    /// Writes B missed.
    pub writes: u64,
    /// Their rate on A, acknowledged writes/s.
    pub write_rate: f64,
    /// B's spawn to listening (replaying its ledger), s.
    pub boot: f64,
    /// B's spawn to its link to A up, s.
    pub link: Option<f64>,
    /// B's spawn to B's fingerprint equal to A's, s.
    pub same: Option<f64>,
}

/// Upstream's catch-up check.
pub struct UpstreamCatchUp {
    /// Writes B missed.
    pub writes: u64,
    /// Seconds it was given.
    pub waited: f64,
    /// Of them, B held this many at the end.
    pub held: u64,
    /// B's restart until it held them all, s (upstream has no catch-up: `None`).
    pub same: Option<f64>,
}

/// The spread run: acknowledged writes/s, and first send to every relay holding every key, s.
#[derive(Default)]
pub struct Spread {
    /// Relays.
    pub nodes: usize,
    /// Writes in all.
    pub writes: u64,
    /// Acknowledged writes per second, over all writers.
    pub rate: Option<f64>,
    /// First send until all converged, s.
    pub converged: Option<f64>,
    /// What the relays held when they did not converge.
    pub failed: Option<String>,
}

/// Everything the scenario measures.
#[derive(Default)]
pub struct Mesh {
    /// Per ring size.
    pub rings: Vec<Ring>,
    /// Ours.
    pub catchup: Option<CatchUp>,
    /// Upstream's.
    pub upstream_catchup: Option<UpstreamCatchUp>,
    /// Ours, upstream's (limits raised).
    pub spread: (Option<Spread>, Option<Spread>),
    /// Upstream's at its default limits.
    pub spread_default: Option<Spread>,
    /// Anything that went wrong.
    pub notes: Vec<String>,
}

/// One of our relays in a federation, with its directory (configuration and ledger).
pub struct Node {
    /// Its node id.
    pub id: String,
    /// The process.
    pub relay: Relay,
    /// Its peer listener (`None` on the NATS transport).
    mesh: Option<SocketAddr>,
    dir: TempDir,
}

impl Node {
    /// Starts relay `id` with its peer listener on `bind` (port 0: a free one), dialling `peers`;
    /// `extra` goes into `[mesh]`. In `dir` when given (a restart: the same ledger), else fresh.
    fn start(
        launch: &Launch,
        id: &str,
        bind: SocketAddr,
        peers: &[SocketAddr],
        extra: &str,
        dir: Option<TempDir>,
    ) -> Node {
        let peers: Vec<String> = peers.iter().map(|p| format!("\"ws://{p}\"")).collect();
        let mesh = format!("[mesh]\nnode_id = \"{id}\"\nbind = \"{bind}\"\npeers = [{}]\n{extra}", peers.join(", "));
        let mut node = Node::with_mesh(launch, id, mesh, dir);
        let addr = node.relay.mesh_addr().unwrap_or_else(|| panic!("relay {id} logged no `mesh listening on`"));
        node.mesh = Some(addr);
        node
    }

    /// Starts relay `id` with `mesh` (its `[mesh]` tables, verbatim) at the end of the bench's
    /// configuration. In `dir` when given, else fresh.
    pub fn with_mesh(launch: &Launch, id: &str, mesh: String, dir: Option<TempDir>) -> Node {
        let dir = dir.unwrap_or_else(temp_dir);
        let ledger = dir.path().join("ledger.jsonl");
        let config = write_ours_config(dir.path(), &ledger, &OursConfig { mesh, ..OursConfig::default() });
        let relay = Relay::ours_with(launch, &config, ledger);
        Node { id: id.to_owned(), relay, mesh: None, dir }
    }

    /// Its peer listener.
    fn mesh(&self) -> SocketAddr {
        self.mesh.unwrap_or_else(|| panic!("relay {} has no peer listener", self.id))
    }

    /// Stops the relay (SIGTERM) and returns its directory, for a restart.
    fn stop(mut self, what: &str, notes: &mut Vec<String>) -> (TempDir, SocketAddr) {
        let mesh = self.mesh();
        notes.extend(stop_and_check(&mut self.relay, what, None));
        (self.dir, mesh)
    }
}

/// The share of a core the rest of the machine used over a part of the scenario: the machine's
/// busy time minus this process's and its reaped children's (every relay and driver a part starts
/// is stopped and reaped before the part ends).
pub struct Others {
    t0: Instant,
    busy: f64,
    ours: f64,
}

impl Others {
    pub fn start() -> Others {
        Others { t0: Instant::now(), busy: machine_busy_secs(), ours: family_cpu() }
    }

    /// The share since `start`.
    fn share(&self) -> f64 {
        (machine_busy_secs() - self.busy - (family_cpu() - self.ours)) / self.t0.elapsed().as_secs_f64()
    }

    /// Prints the share since `start`.
    pub fn report(&self, what: &str) {
        print_others(what, self.share());
    }
}

fn print_others(what: &str, share: f64) {
    println!("    ({what}: the rest of the machine used {:.0}% of a core meanwhile)", 100.0 * share);
}

/// CPU seconds of this process and of its children it has reaped (utime, stime, cutime, cstime).
fn family_cpu() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    let Some((_, rest)) = stat.rsplit_once(')') else { return f64::NAN };
    rest.split_whitespace().skip(11).take(4).map(|v| v.parse::<f64>().unwrap_or(f64::NAN)).sum::<f64>() / clock_ticks()
}

/// One node's `/healthz`.
struct Health {
    keys: u64,
    fingerprint: String,
    /// Peers with their link up.
    linked: Vec<String>,
}

fn health(relay: &Relay) -> Result<Health, String> {
    let v = relay.healthz()?;
    let linked = v["mesh"]["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .filter(|p| p["connected"] == true)
                .filter_map(|p| p["node"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Ok(Health {
        keys: v["keys"].as_u64().ok_or("no keys in /healthz")?,
        fingerprint: v["fingerprint"].as_str().ok_or("no fingerprint in /healthz")?.to_owned(),
        linked,
    })
}

/// How the relays of a WebSocket federation link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    /// Node i dials node i-1; the last also dials node 0.
    Ring,
    /// Every node dials every node before it: each pair linked once.
    Full,
}

impl Topology {
    /// Its name in settings and output.
    pub fn name(self) -> &'static str {
        match self {
            Topology::Ring => "ring",
            Topology::Full => "full mesh",
        }
    }

    /// The nodes node `i` of `n` dials (all before it).
    fn dials(self, i: usize, n: usize) -> Vec<usize> {
        match self {
            Topology::Ring if i == 0 => Vec::new(),
            Topology::Ring if i == n - 1 && n > 2 => vec![i - 1, 0],
            Topology::Ring => vec![i - 1],
            Topology::Full => (0..i).collect(),
        }
    }

    /// Links up on every node once the federation stands.
    fn links(self, n: usize) -> usize {
        match self {
            Topology::Ring if n > 2 => 2,
            Topology::Ring => 1,
            Topology::Full => n - 1,
        }
    }
}

/// Starts a ring of `n` (node i dials node i-1; the last also dials node 0) and waits until every
/// link is up.
fn ring(launch: &Launch, n: usize) -> Result<Vec<Node>, String> {
    federation(launch, n, Topology::Ring)
}

/// Starts `n` relays linked as `topology` says and waits until every link is up.
pub fn federation(launch: &Launch, n: usize, topology: Topology) -> Result<Vec<Node>, String> {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for i in 0..n {
        let peers: Vec<SocketAddr> = topology.dials(i, n).into_iter().map(|j| nodes[j].mesh()).collect();
        nodes.push(Node::start(launch, &format!("n{i:02}"), any, &peers, "", None));
    }
    let want = topology.links(n);
    let what = topology.name();
    let deadline = Instant::now() + LINK_LIMIT;
    loop {
        let linked: Vec<usize> = nodes.iter().map(|node| health(&node.relay).map_or(0, |h| h.linked.len())).collect();
        if linked.iter().all(|&l| l >= want) {
            return Ok(nodes);
        }
        if Instant::now() > deadline {
            stop_all(nodes, what, &mut Vec::new(), 0);
            return Err(format!("{what} of {n}: links not all up after {LINK_LIMIT:?}: {linked:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM to every relay at once (so no survivor keeps redialling one already gone),
/// then stops and checks each; every ledger must hold at least `keys` records.
pub fn stop_all(nodes: Vec<Node>, what: &str, notes: &mut Vec<String>, keys: u64) {
    for node in &nodes {
        node.relay.terminate();
    }
    for mut node in nodes {
        let what = format!("{what}, {}", node.id);
        notes.extend(stop_and_check(&mut node.relay, &what, Some((keys, false))));
    }
}

/// Ops a relay has sent to each peer, from its `/healthz`.
pub fn ops_out(relay: &Relay) -> Vec<(String, u64)> {
    let v = relay.healthz().unwrap_or_default();
    v["mesh"]["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .map(|p| (p["node"].as_str().unwrap_or("").to_owned(), p["ops_out"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls every relay (one thread each) until each shows at least `keys` keys, then checks that
/// their fingerprints are equal (polling on until they are). Returns when that was first seen.
pub fn converged(relays: &[&Relay], keys: u64, deadline: Instant) -> Result<Instant, String> {
    let seen: Vec<Option<(Instant, String)>> = thread::scope(|s| {
        let pollers: Vec<_> = relays
            .iter()
            .map(|&relay| {
                s.spawn(move || {
                    loop {
                        if let Ok(h) = health(relay)
                            && h.keys >= keys
                        {
                            return Some((Instant::now(), h.fingerprint));
                        }
                        if Instant::now() > deadline {
                            return None;
                        }
                        thread::sleep(POLL);
                    }
                })
            })
            .collect();
        pollers.into_iter().map(|p| p.join().expect("poller")).collect()
    });
    let keys_of = || relays.iter().map(|r| health(r).map_or(0, |h| h.keys)).collect::<Vec<_>>();
    let Some(seen) = seen.into_iter().collect::<Option<Vec<_>>>() else {
        return Err(format!("not converged in time: keys per relay {:?} (want {keys})", keys_of()));
    };
    let at = seen.iter().map(|(t, _)| *t).max().expect("at least one relay");
    if seen.iter().all(|(_, f)| *f == seen[0].1) {
        return Ok(at);
    }
    while Instant::now() < deadline {
        let fps: Vec<String> = relays.iter().filter_map(|r| health(r).ok().map(|h| h.fingerprint)).collect();
        if fps.len() == relays.len() && fps.iter().all(|f| *f == fps[0]) {
            return Ok(Instant::now());
        }
        thread::sleep(POLL);
    }
    Err(format!(
        "{keys} keys everywhere but fingerprints still differ: {:?}",
        seen.iter().map(|(_, f)| f).collect::<Vec<_>>()
    ))
}

/// Writes `count` keys `{prefix}{i}`, keeping up to `window` un-echoed, reading (and skipping)
/// every other frame. Returns the first send and the last own echo.
pub fn write_keys(client: &mut Client, prefix: &str, count: u64, window: u64) -> Result<(Instant, Instant), String> {
    let mut sent = 0;
    let mut acked = 0;
    let mut first = None;
    while acked < count {
        if sent < count && sent - acked <= window / 2 {
            while sent < count && sent - acked < window {
                client.ws.write(set_frame(&format!("{prefix}{sent}"), sent)).map_err(|e| format!("write: {e}"))?;
                first.get_or_insert_with(Instant::now);
                sent += 1;
            }
            client.ws.flush().map_err(|e| format!("flush: {e}"))?;
        }
        let frame = client.next_text()?;
        if set_key(&frame).is_some_and(|k| k.starts_with(prefix)) {
            acked += 1;
        }
    }
    Ok((first.unwrap_or_else(Instant::now), Instant::now()))
}

/// Runs the whole scenario; upstream's parts when `launch.python` is set.
pub fn run(launch: &Launch, s: &Settings) -> Mesh {
    let mut out = Mesh::default();
    let deadline = || Instant::now() + Duration::from_secs_f64(s.wait);
    for &n in &s.rings {
        println!("  ring of {n}: {} runs of {} writes on node 0, {} s apart", s.runs, s.writes, s.pause);
        let mut r = Ring { nodes: n, ours: Vec::new(), upstream: Vec::new() };
        let others = Others::start();
        match ring(launch, n) {
            Err(e) => out.notes.push(format!("aether-actix {e}")),
            Ok(nodes) => {
                let relays: Vec<&Relay> = nodes.iter().map(|n| &n.relay).collect();
                for run in 0..s.runs {
                    if run > 0 {
                        thread::sleep(Duration::from_secs_f64(s.pause));
                    }
                    let total = s.writes * (run as u64 + 1);
                    let result = Client::connect(relays[0].addr, &relays[0].url()).and_then(|mut client| {
                        let (first, last) = write_keys(&mut client, &format!("r{run}:"), s.writes, s.writes)?;
                        let at = converged(&relays, total, deadline())?;
                        client.close();
                        Ok((at - first, last - first))
                    });
                    match result {
                        Ok((all, acked)) => {
                            println!(
                                "    aether-actix #{}: all {n} converged {:.2} ms after the first send (node 0 acked \
                                 all in {:.2} ms)",
                                run + 1,
                                all.as_secs_f64() * 1e3,
                                acked.as_secs_f64() * 1e3
                            );
                            r.ours.push(Some(all.as_secs_f64()));
                        }
                        Err(e) => {
                            out.notes.push(format!("aether-actix ring of {n}, run {}: {e}", run + 1));
                            r.ours.push(None);
                        }
                    }
                }
                let sent: u64 = relays.iter().map(|relay| ops_out(relay).iter().map(|(_, n)| n).sum::<u64>()).sum();
                println!(
                    "    aether-actix: {:.2} op messages over links per write (a flood of a ring of {n} needs {}: \
                     every link once, one both ways where the two waves meet)",
                    sent as f64 / (s.writes * s.runs as u64) as f64,
                    n + 1
                );
                stop_all(nodes, &format!("ring of {n}"), &mut out.notes, s.writes * r.ours.len() as u64);
            }
        }
        others.report("aether-actix");
        if let Some(python) = &launch.python {
            let others = Others::start();
            let args = [
                "ring".to_owned(),
                format!("--nodes={n}"),
                format!("--writes={}", s.writes),
                format!("--runs={}", s.runs),
                format!("--pause={}", s.pause),
                format!("--wait={}", s.wait),
            ];
            match upstream(python, &args, s.runs as f64 * (s.pause + s.wait) + 60.0) {
                Err(e) => out.notes.push(format!("upstream ring of {n}: {e}")),
                Ok((lines, log)) => {
                    for v in &lines {
                        let run = v["run"].as_u64().unwrap_or(0) + 1;
                        let t = v["converged_s"].as_f64();
                        match t {
                            Some(t) => {
                                println!("    upstream #{run}: all {n} converged {:.2} ms after the first set", t * 1e3)
                            }
                            None => {
                                let what = format!(
                                    "run {run}: not converged in {} s; keys per node {}, links per node {}",
                                    s.wait, v["keys"], v["peers"]
                                );
                                println!("    upstream #{run}: {what}");
                                out.notes.push(format!("upstream ring of {n}, {what}"));
                            }
                        }
                        r.upstream.push(t);
                    }
                    out.notes.extend(log.into_iter().map(|l| format!("upstream ring of {n}: {l}")));
                }
            }
            others.report("upstream");
        }
        out.rings.push(r);
    }
    if s.catchup > 0 {
        let others = Others::start();
        match catch_up(launch, s, &mut out.notes) {
            Ok(c) => out.catchup = Some(c),
            Err(e) => out.notes.push(format!("aether-actix catch-up: {e}")),
        }
        others.report("aether-actix");
        if let Some(python) = &launch.python {
            let (writes, wait) = UPSTREAM_CATCHUP;
            let args = ["catchup".to_owned(), format!("--writes={writes}"), format!("--wait={wait}")];
            let others = Others::start();
            let result = upstream(python, &args, wait * 3.0 + 60.0);
            let other = others.share();
            match result {
                Err(e) => out.notes.push(format!("upstream catch-up: {e}")),
                Ok((lines, log)) => {
                    let v = lines.first().cloned().unwrap_or(Value::Null);
                    if v["linked"] != true || v["relinked"] != true || v["after_s"].as_f64().is_none() {
                        out.notes.push(format!("upstream catch-up: the link did not work before or after: {v}"));
                    }
                    let c = UpstreamCatchUp {
                        writes,
                        waited: wait,
                        held: v["b_holds"].as_u64().unwrap_or(0),
                        same: v["caught_up_s"].as_f64(),
                    };
                    println!(
                        "  catch-up, upstream: B restarted and linked again (a write made after that reached it in \
                         {:.1} ms); of the {writes} writes made while it was down it holds {} after {wait} s",
                        v["after_s"].as_f64().unwrap_or(f64::NAN) * 1e3,
                        c.held
                    );
                    print_others("upstream", other);
                    out.upstream_catchup = Some(c);
                    out.notes.extend(log.into_iter().map(|l| format!("upstream catch-up: {l}")));
                }
            }
        }
    }
    if s.spread_nodes > 0 {
        let others = Others::start();
        match spread(launch, s, &mut out.notes) {
            Ok(sp) => out.spread.0 = Some(sp),
            Err(e) => out.notes.push(format!("aether-actix spread: {e}")),
        }
        others.report("aether-actix");
        if let Some(python) = &launch.python {
            out.spread.1 = upstream_spread(python, s, true, s.wait, &mut out.notes);
            // At its defaults every link carries past its 200-message budget: bounded by 10 s.
            out.spread_default = upstream_spread(python, s, false, s.wait.min(10.0), &mut out.notes);
        }
    }
    out
}

/// Ours: B misses `s.catchup` writes while stopped, then restarts; how long until it has them.
fn catch_up(launch: &Launch, s: &Settings, notes: &mut Vec<String>) -> Result<CatchUp, String> {
    println!("  catch-up: B stopped, {} writes on A, B restarted on its ledger and mesh port", s.catchup);
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let b = Node::start(launch, "n1", any, &[], "", None);
    let a = Node::start(launch, "n0", any, &[b.mesh()], "redial_max_s = 0.5\n", None);
    let mut c = CatchUp { writes: s.catchup, ..CatchUp::default() };
    let result = (|| -> Result<Node, String> {
        let mut client = Client::connect(a.relay.addr, &a.relay.url())?;
        write_keys(&mut client, "before:", BEFORE, BEFORE)?;
        converged(&[&a.relay, &b.relay], BEFORE, Instant::now() + Duration::from_secs_f64(s.wait))?;
        let (dir, port) = b.stop("catch-up, B's first run", notes);
        let (first, last) = write_keys(&mut client, "down:", s.catchup, 256)?;
        client.close();
        c.write_rate = s.catchup as f64 / (last - first).as_secs_f64();
        let target = health(&a.relay)?;
        if target.keys != BEFORE + s.catchup {
            return Err(format!("A holds {} keys, want {}", target.keys, BEFORE + s.catchup));
        }
        let spawned = Instant::now();
        let b = Node::start(launch, "n1", port, &[], "", Some(dir));
        c.boot = b.relay.boot.as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs_f64(s.wait);
        while Instant::now() < deadline {
            if let Ok(h) = health(&b.relay) {
                if c.link.is_none() && h.linked.iter().any(|p| p == "n0") {
                    c.link = Some(spawned.elapsed().as_secs_f64());
                }
                if h.fingerprint == target.fingerprint {
                    c.same = Some(spawned.elapsed().as_secs_f64());
                    break;
                }
            }
            thread::sleep(POLL);
        }
        Ok(b)
    })();
    match result {
        Ok(b) => {
            let got = health(&b.relay).map_or(0, |h| h.keys);
            let to_b = ops_out(&a.relay).iter().find(|(p, _)| p == "n1").map_or(0, |(_, n)| *n);
            println!(
                "    aether-actix: A sent B {to_b} ops in all ({BEFORE} before the partition, the rest by \
                 anti-entropy on the new link)"
            );
            println!(
                "    aether-actix: A took the {} writes at {:.0}/s; B booted in {:.3} s, linked {}, same state as A \
                 {} after its spawn ({got} keys)",
                s.catchup,
                c.write_rate,
                c.boot,
                c.link.map_or("never".into(), |t| format!("{t:.3} s")),
                c.same.map_or(format!("not within {} s", s.wait), |t| format!("{t:.3} s")),
            );
            if c.same.is_none() {
                notes.push(format!(
                    "aether-actix catch-up: B holds {got} keys after {} s, A {}",
                    s.wait,
                    BEFORE + s.catchup
                ));
            }
            let mut a_notes = Vec::new();
            stop_all(vec![a, b], "catch-up", &mut a_notes, BEFORE + s.catchup);
            // A redials B while it is down: those warnings are the partition, not a fault.
            notes.extend(a_notes.into_iter().filter(|n| !n.contains("mesh: cannot link to")));
            Ok(c)
        }
        Err(e) => {
            stop_all(vec![a], "catch-up", notes, 0);
            Err(e)
        }
    }
}

/// Ours: a ring of `s.spread_nodes`, a writer on every relay at once.
fn spread(launch: &Launch, s: &Settings, notes: &mut Vec<String>) -> Result<Spread, String> {
    let n = s.spread_nodes;
    println!("  spread: ring of {n}, one client per relay writing {} keys, {} in flight", s.spread_writes, s.window);
    let nodes = ring(launch, n)?;
    let relays: Vec<&Relay> = nodes.iter().map(|n| &n.relay).collect();
    let load = Load { writes: s.spread_writes, window: s.window, wait: s.wait, held: 0, prefix: "s" };
    let (out, errors) = spread_over(&relays, &load);
    notes.extend(errors.into_iter().map(|e| format!("aether-actix spread: {e}")));
    if out.rate.is_some() {
        println!(
            "    aether-actix: {} writes, {:.0} acked/s; all converged {}",
            out.writes,
            out.rate.unwrap_or(0.0),
            out.converged.map_or("never".into(), |c| format!("{c:.2} s after the first send"))
        );
    }
    stop_all(nodes, "spread", notes, if out.converged.is_some() { out.writes } else { 0 });
    Ok(out)
}

/// What each writer of a spread run writes.
pub struct Load<'a> {
    /// Writes per relay.
    pub writes: u64,
    /// In flight per writer.
    pub window: u64,
    /// Longest wait for convergence, s.
    pub wait: f64,
    /// Keys every relay holds before the run (the run's keys are new).
    pub held: u64,
    /// Key prefix: writer i writes `{prefix}{i:02}:{j}`.
    pub prefix: &'a str,
}

/// A writer on every relay of `relays` at once (connected first, then started together), each
/// writing `load.writes` keys of its own with `load.window` in flight and reading every broadcast;
/// then every relay polled until all hold every key with one fingerprint. The run and its errors.
pub fn spread_over(relays: &[&Relay], load: &Load) -> (Spread, Vec<String>) {
    let n = relays.len();
    let total = load.writes * n as u64;
    let (start, done) = (Barrier::new(n), Barrier::new(n));
    let errors = Mutex::new(Vec::new());
    let times: Vec<Option<(Instant, Instant)>> = thread::scope(|sc| {
        let writers: Vec<_> = relays
            .iter()
            .enumerate()
            .map(|(i, &relay)| {
                let (start, done, errors) = (&start, &done, &errors);
                sc.spawn(move || {
                    let mut client = Client::connect(relay.addr, &relay.url());
                    start.wait();
                    let result = match &mut client {
                        Ok(c) => write_keys(c, &format!("{}{i:02}:", load.prefix), load.writes, load.window),
                        Err(e) => Err(e.clone()),
                    };
                    done.wait(); // nobody closes while others still receive broadcasts
                    if let Ok(c) = client {
                        c.close();
                    }
                    result.map_err(|e| errors.lock().expect("errors").push(format!("writer on n{i:02}: {e}"))).ok()
                })
            })
            .collect();
        writers.into_iter().map(|w| w.join().expect("writer")).collect()
    });
    let mut errors = errors.into_inner().expect("errors");
    let mut out = Spread { nodes: n, writes: total, ..Spread::default() };
    if errors.is_empty() {
        let first = times.iter().flatten().map(|t| t.0).min().expect("writers");
        let last = times.iter().flatten().map(|t| t.1).max().expect("writers");
        out.rate = Some(total as f64 / (last - first).as_secs_f64());
        match converged(relays, load.held + total, Instant::now() + Duration::from_secs_f64(load.wait)) {
            Ok(at) => out.converged = Some((at - first).as_secs_f64()),
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
}

/// Upstream's spread run, with its limits `raised` (as `relay.py`) or at their defaults.
fn upstream_spread(python: &Path, s: &Settings, raised: bool, wait: f64, notes: &mut Vec<String>) -> Option<Spread> {
    let limits = if raised { "limits raised" } else { "default limits" };
    let mut args =
        vec!["spread".to_owned(), format!("--nodes={}", s.spread_nodes), format!("--writes={}", s.spread_writes)];
    args.push(format!("--wait={wait}"));
    if raised {
        args.push("--raised".to_owned());
    }
    let others = Others::start();
    let result = upstream(python, &args, wait * 2.0 + 120.0);
    let other = others.share();
    let (lines, log) = result.map_err(|e| notes.push(format!("upstream spread ({limits}): {e}"))).ok()?;
    notes.extend(log.into_iter().map(|l| format!("upstream spread ({limits}): {l}")));
    let v = lines.first().cloned().unwrap_or(Value::Null);
    let writes = v["writes"].as_u64().unwrap_or(0);
    let rate = v["write_s"].as_f64().filter(|t| *t > 0.0).map(|t| writes as f64 / t);
    let converged = v["converged_s"].as_f64();
    let failed = converged.is_none().then(|| {
        let keys: Vec<u64> =
            v["keys"].as_array().map(|k| k.iter().filter_map(Value::as_u64).collect()).unwrap_or_default();
        let links = v["peers"].as_array().map_or(0, |p| p.iter().filter_map(Value::as_u64).sum::<u64>() / 2);
        format!(
            "never in {wait} s: {links} of {} links left, relays hold {}-{} of {writes} keys",
            s.spread_nodes,
            keys.iter().min().unwrap_or(&0),
            keys.iter().max().unwrap_or(&0)
        )
    });
    println!(
        "  spread, upstream ({limits}): {writes} writes, {} sets/s (first set to last returned); all converged {}",
        rate.map_or("-".into(), |r| format!("{r:.0}")),
        converged.map_or_else(|| failed.clone().unwrap_or_default(), |c| format!("{c:.2} s after the first set"))
    );
    print_others("upstream", other);
    Some(Spread { nodes: s.spread_nodes, writes, rate, converged, failed })
}

/// Runs `benches/upstream/mesh.py ARGS`, killed after `limit` s. Returns its JSON lines and its
/// log lines worth a note (grouped).
fn upstream(python: &Path, args: &[String], limit: f64) -> Result<(Vec<Value>, Vec<String>), String> {
    let mut child = Command::new(python)
        .arg(upstream_script("mesh.py"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    let lines = |r: Box<dyn Read + Send>| {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&sink);
        let reader = thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                into.lock().expect("lines").push(line);
            }
        });
        (sink, reader)
    };
    let (stdout, out_reader) = lines(Box::new(child.stdout.take().expect("stdout is piped")));
    let (stderr, err_reader) = lines(Box::new(child.stderr.take().expect("stderr is piped")));
    let deadline = Instant::now() + Duration::from_secs_f64(limit);
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    // Its node processes exit when their stdin (held by the driver) closes; then the pipes end.
    let _ = (out_reader.join(), err_reader.join());
    let stdout = stdout.lock().expect("lines").clone();
    let stderr = stderr.lock().expect("lines").clone();
    match status {
        None => return Err(format!("killed after {limit:.0} s; log: {:.400}", stderr.join(" | "))),
        Some(st) if !st.success() => return Err(format!("{st}: {:.600}", stderr.join(" | "))),
        Some(_) => {}
    }
    let values = stdout
        .iter()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad output {l:?}: {e}")))
        .collect::<Result<Vec<Value>, String>>()?;
    let log = grouped(stderr.iter().map(|l| mask_nodes(l)))
        .into_iter()
        .map(|(n, l)| format!("log, {n}x: {l:.200}"))
        .collect();
    Ok((values, log))
}

/// `[n05] WARNING [n05] peer n04 exceeded rate budget` as `WARNING peer nXX exceeded ...`, so
/// that repeats group.
fn mask_nodes(line: &str) -> String {
    let line = line.split_once("] ").map_or(line, |(_, rest)| rest);
    line.split(' ')
        .filter(|w| !(w.starts_with('[') && w.ends_with(']')))
        .map(
            |w| {
                if w.len() == 3 && w.starts_with('n') && w[1..].bytes().all(|b| b.is_ascii_digit()) { "nXX" } else { w }
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}
