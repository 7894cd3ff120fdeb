//! The benchmark harness: every scenario against our release binary and, when asked, against
//! upstream's relay (Aether-Core 0.4.0, Python) on the same machine, then one side-by-side table.
//!
//! `cargo bench` (or `cargo bench --bench e2e` for this part alone). Upstream runs only when
//! `AETHER_BENCH_UPSTREAM=/path/to/python` names an interpreter with `aether-zta==0.4.0`. Scenarios
//! (`AETHER_BENCH_ONLY` selects, comma-separated): `roundtrip`, `throughput`, `load` (ours only:
//! echo latency of 64 writers paced at shares of their maximum), `api` (ours only:
//! durable `PUT`s through the HTTP API beside the same writes over WebSocket), `fanout`, `idle`,
//! `ledger`, `replay`, `pauses`, `mesh`, `nats` (ours only: federation through a `nats-server`
//! against the WebSocket mesh), `rooms` (ours only: memory per room, writes spread over rooms).
//! Every other knob is in [`Settings::from_env`] and in benches/README.md.
//!
//! Everything is bounded in count and time, uses only 127.0.0.1 and temporary directories, and
//! stops every process it starts. Without `--bench` (as under `cargo test --all-targets`) it runs
//! a tiny in-process smoke check and starts nothing.

mod access;
mod api;
mod client;
mod connector;
mod fanout;
mod feed;
mod idle;
mod ledger;
mod mesh;
mod nats;
mod pauses;
mod poller;
mod procs;
mod replay;
mod report;
mod rooms;
mod roundtrip;
mod throughput;
mod util;

use std::{
    env,
    path::PathBuf,
    time::{Duration, Instant},
};

use procs::{Kind, Launch, OursConfig, Relay, histogram, stop_and_check};
use report::{Goal, Row};
use util::{env_list, env_or, ms, percentile};

/// Every knob, from the environment.
struct Settings {
    launch: Launch,
    only: Vec<String>,
    samples: usize,
    warmup: usize,
    /// `roundtrip`: runs of each case (median and spread reported).
    rt_runs: usize,
    /// `load`: the paced rates, % of the measured maximum.
    load_shares: Vec<f64>,
    secs: f64,
    conns: Vec<usize>,
    window: usize,
    extra: Vec<(usize, usize, &'static str)>,
    readers: usize,
    fan_window: usize,
    fan_warmup: f64,
    idle: usize,
    pollers: usize,
    records: usize,
    keys: usize,
    runs: usize,
    boot: replay::Boot,
    appenders: usize,
    writes: u64,
    append_secs: f64,
    other_max: f64,
    retries: usize,
    pause_keys: usize,
    pause_secs: f64,
    mesh: mesh::Settings,
    nats: nats::Settings,
    rooms: rooms::Settings,
    /// `access`: connects measured per case, after warm-up ones.
    access_conns: usize,
    access_warmup: usize,
    /// `feed`: readers, and seconds of writing.
    feed_readers: usize,
    feed_secs: u64,
}

const SCENARIOS: [&str; 14] = [
    "roundtrip",
    "throughput",
    "load",
    "api",
    "feed",
    "fanout",
    "idle",
    "ledger",
    "replay",
    "pauses",
    "mesh",
    "nats",
    "rooms",
    "access",
];

impl Settings {
    fn from_env() -> Settings {
        let quick = env::var("AETHER_BENCH_QUICK").is_ok_and(|v| v == "1");
        let bin =
            env::var_os("AETHER_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_aether-actix")), PathBuf::from);
        let python = env::var_os("AETHER_BENCH_UPSTREAM").filter(|p| !p.is_empty()).map(PathBuf::from);
        let only = env_list("AETHER_BENCH_ONLY", &SCENARIOS.join(","));
        for s in &only {
            assert!(SCENARIOS.contains(&s.as_str()), "AETHER_BENCH_ONLY: unknown scenario {s} (know {SCENARIOS:?})");
        }
        let positive = |name: &str, v: &str| -> usize {
            v.parse().ok().filter(|&n| n > 0).unwrap_or_else(|| panic!("{name}: {v} is not a positive number"))
        };
        let conns =
            env_list("AETHER_BENCH_CONNS", "1,8,64").iter().map(|c| positive("AETHER_BENCH_CONNS", c)).collect();
        let extra = env_list("AETHER_BENCH_EXTRA", pick(quick, "1x1,1x256,64x256,64x16:none", ""))
            .iter()
            .map(|shape| {
                let (shape, sync) = shape.split_once(':').unwrap_or((shape, "always"));
                let sync = match sync {
                    "always" => "always",
                    "none" => "none",
                    other => panic!("AETHER_BENCH_EXTRA: sync {other} is neither always nor none"),
                };
                let (c, w) = shape.split_once('x').unwrap_or_else(|| panic!("AETHER_BENCH_EXTRA: {shape} is not CxW"));
                (positive("AETHER_BENCH_EXTRA", c), positive("AETHER_BENCH_EXTRA", w), sync)
            })
            .collect();
        let rings = env_list("AETHER_BENCH_MESH_RINGS", "3,5,10")
            .iter()
            .map(|n| positive("AETHER_BENCH_MESH_RINGS", n))
            .inspect(|&n| assert!(n >= 2, "AETHER_BENCH_MESH_RINGS: a ring needs 2 relays or more"))
            .collect();
        let topologies = env_list("AETHER_BENCH_NATS_MESH", "ring,full")
            .iter()
            .map(|t| match t.as_str() {
                "ring" => mesh::Topology::Ring,
                "full" => mesh::Topology::Full,
                other => panic!("AETHER_BENCH_NATS_MESH: {other} is neither ring nor full"),
            })
            .collect();
        let window = env_or("AETHER_BENCH_WINDOW", 16);
        let (pause, wait) = (env_or("AETHER_BENCH_MESH_PAUSE", 1.5), env_or("AETHER_BENCH_MESH_WAIT", 60.0));
        let spread_nodes = env_or("AETHER_BENCH_MESH_SPREAD_NODES", 10);
        let spread_writes = env_or("AETHER_BENCH_MESH_SPREAD_WRITES", pick(quick, 2000, 200));
        Settings {
            launch: Launch { bin, python },
            only,
            samples: env_or("AETHER_BENCH_SAMPLES", pick(quick, 2000, 300)),
            warmup: env_or("AETHER_BENCH_WARMUP", pick(quick, 200, 50)),
            rt_runs: env_or("AETHER_BENCH_RT_RUNS", pick(quick, 3, 1)),
            load_shares: env_list("AETHER_BENCH_LOAD_SHARES", "25,50,75,100")
                .iter()
                .map(|v| {
                    v.parse().ok().filter(|&p: &f64| p > 0.0).unwrap_or_else(|| panic!("AETHER_BENCH_LOAD_SHARES: {v}"))
                })
                .collect(),
            secs: env_or("AETHER_BENCH_SECS", pick(quick, 5.0, 1.0)),
            conns,
            window,
            extra,
            readers: env_or("AETHER_BENCH_READERS", pick(quick, 1000, 100)),
            fan_window: env_or("AETHER_BENCH_FANOUT_WINDOW", 32),
            fan_warmup: env_or("AETHER_BENCH_FANOUT_WARMUP", pick(quick, 1.0, 0.3)),
            idle: env_or("AETHER_BENCH_IDLE", pick(quick, 19_000, 1000)),
            pollers: env_or("AETHER_BENCH_POLLERS", 2),
            records: env_or("AETHER_BENCH_RECORDS", pick(quick, 1_000_000, 100_000)),
            keys: env_or("AETHER_BENCH_KEYS", pick(quick, 200_000, 20_000)),
            runs: env_or("AETHER_BENCH_RUNS", pick(quick, 3, 1)),
            boot: replay::Boot {
                records: env_or("AETHER_BENCH_BOOT_RECORDS", pick(quick, 300_000, 30_000)),
                keys: env_or("AETHER_BENCH_BOOT_KEYS", pick(quick, 60_000, 6_000)),
                snapshot_keys: env_or("AETHER_BENCH_SNAPSHOT_KEYS", pick(quick, 1_000_000, 100_000)),
            },
            appenders: env_or("AETHER_BENCH_APPENDERS", 64),
            writes: env_or("AETHER_BENCH_WRITES", pick(quick, 5000, 1000)),
            append_secs: env_or("AETHER_BENCH_APPEND_SECS", pick(quick, 2.0, 0.5)),
            other_max: env_or("AETHER_BENCH_OTHER_MAX", 35.0) / 100.0,
            retries: env_or("AETHER_BENCH_RETRIES", 2),
            pause_keys: env_or("AETHER_BENCH_PAUSE_KEYS", pick(quick, 1_000_000, 100_000)),
            pause_secs: env_or("AETHER_BENCH_PAUSE_SECS", pick(quick, 5.0, 2.0)),
            mesh: mesh::Settings {
                rings,
                writes: env_or("AETHER_BENCH_MESH_WRITES", 100),
                runs: env_or("AETHER_BENCH_MESH_RUNS", pick(quick, 5, 3)),
                pause,
                catchup: env_or("AETHER_BENCH_MESH_CATCHUP", pick(quick, 100_000, 10_000)),
                spread_nodes,
                spread_writes,
                window: window as u64,
                wait,
            },
            feed_readers: env_or("AETHER_BENCH_FEED_READERS", pick(quick, 100, 20)),
            feed_secs: env_or("AETHER_BENCH_FEED_SECS", pick(quick, 5, 1)),
            access_conns: env_or("AETHER_BENCH_ACCESS_CONNS", pick(quick, 4000, 300)),
            access_warmup: env_or("AETHER_BENCH_ACCESS_WARMUP", pick(quick, 300, 30)),
            rooms: rooms::Settings {
                rooms: env_or("AETHER_BENCH_ROOMS", pick(quick, 6000, 300)),
                per_room: env_or("AETHER_BENCH_ROOMS_CLIENTS", 3),
                single: env_or("AETHER_BENCH_ROOMS_SINGLE", pick(quick, 10_000, 600)),
                dormant: env_or("AETHER_BENCH_ROOMS_DORMANT", pick(quick, 10_000, 600)),
                dormant_keys: env_or("AETHER_BENCH_ROOMS_DORMANT_KEYS", 1),
                write_rooms: env_or("AETHER_BENCH_ROOMS_WRITERS", pick(quick, 1000, 100)),
                write_window: env_or("AETHER_BENCH_ROOMS_WINDOW", 1),
                runs: env_or("AETHER_BENCH_ROOMS_RUNS", pick(quick, 3, 1)),
                secs: env_or("AETHER_BENCH_SECS", pick(quick, 5.0, 1.0)),
                connect_rate: env_or("AETHER_BENCH_CONNECT_RATE", 1000.0),
                pollers: env_or("AETHER_BENCH_POLLERS", 2),
                settle: Duration::from_secs_f64(env_or("AETHER_BENCH_ROOMS_SETTLE", pick(quick, 2.0, 0.5))),
            },
            nats: nats::Settings {
                server: procs::nats_server_bin(),
                topologies,
                nodes: spread_nodes,
                writes: spread_writes,
                window: window as u64,
                runs: env_or("AETHER_BENCH_NATS_RUNS", pick(quick, 3, 1)),
                pause,
                samples: env_or("AETHER_BENCH_NATS_SAMPLES", pick(quick, 300, 100)),
                warmup: env_or("AETHER_BENCH_NATS_WARMUP", pick(quick, 50, 20)),
                wait,
            },
        }
    }

    fn runs(&self, scenario: &str) -> bool {
        self.only.iter().any(|s| s == scenario)
    }

    /// The relays to compare: ours always, upstream when configured.
    fn kinds(&self) -> Vec<Kind> {
        let mut kinds = vec![Kind::Ours];
        if self.launch.python.is_some() {
            kinds.push(Kind::Upstream);
        }
        kinds
    }
}

/// `short` in quick mode, else `full`.
fn pick<T>(quick: bool, full: T, short: T) -> T {
    if quick { short } else { full }
}

/// What all scenarios add to.
#[derive(Default)]
struct Out {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Out {
    /// Drops, from the notes after the first `before`, the warning every relay of the rooms, feed
    /// and access scenarios logs: their connection cap equals the open-file limit on purpose.
    fn drop_open_file_warnings(&mut self, before: usize) {
        let mut i = 0;
        self.notes.retain(|n| {
            i += 1;
            i <= before || !n.contains("but the open-file limit is")
        });
    }
}

impl Out {
    fn section(&mut self, title: &str) {
        self.rows.push(Row::new(format!("## {title}"), None, None, 0));
    }
}

/// Picks ours and upstream's value of a per-relay result.
fn pair<T>(results: &[(Kind, T)], f: impl Fn(&T) -> Option<f64>) -> (Option<f64>, Option<f64>) {
    let get = |k: Kind| results.iter().find(|(kind, _)| *kind == k).and_then(|(_, t)| f(t));
    (get(Kind::Ours), get(Kind::Upstream))
}

fn main() {
    if !env::args().any(|a| a == "--bench") {
        smoke();
        return;
    }
    let s = Settings::from_env();
    if !s.launch.bin.is_file() {
        eprintln!(
            "e2e: relay binary {} not found; run `cargo build --release` (or set AETHER_BIN)",
            s.launch.bin.display()
        );
        std::process::exit(2);
    }
    let nofile = util::raise_nofile();
    let started = Instant::now();
    println!("relay binary: {}", s.launch.bin.display());
    match &s.launch.python {
        Some(p) => println!("upstream: {} benches/upstream/relay.py (aether-zta 0.4.0)", p.display()),
        None => println!("upstream: not run (set AETHER_BENCH_UPSTREAM=/path/to/python to compare)"),
    }
    println!("scenarios: {}; open-file limit {nofile}", s.only.join(", "));
    let mut out = Out::default();
    if s.runs("roundtrip") {
        round_trip(&s, &mut out);
    }
    if s.runs("throughput") {
        throughput(&s, &mut out);
    }
    if s.runs("load") {
        load(&s, &mut out);
    }
    if s.runs("api") {
        api_writes(&s, &mut out);
    }
    if s.runs("fanout") {
        fan_out(&s, &mut out);
    }
    if s.runs("idle") {
        let max = usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(256);
        if s.idle > max {
            println!(
                "\n(idle: only {max} connections: the open-file limit is {nofile}; raise its hard limit for more)"
            );
        }
        idle::scenario(&s, s.idle.min(max), &mut out);
    }
    if s.runs("ledger") {
        ledger(&s, &mut out);
    }
    if s.runs("replay") {
        replay(&s, &mut out);
    }
    if s.runs("pauses") {
        pauses(&s, &mut out);
    }
    if s.runs("mesh") {
        federation(&s, &mut out);
    }
    if s.runs("nats") {
        nats_federation(&s, &mut out);
    }
    if s.runs("rooms") {
        let max = usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(512);
        let before = out.notes.len();
        rooms_scenario(&s, max, &mut out);
        out.drop_open_file_warnings(before);
    }
    if s.runs("feed") {
        let before = out.notes.len();
        feed_scenario(&s, &mut out);
        out.drop_open_file_warnings(before);
    }
    if s.runs("access") {
        let before = out.notes.len();
        access_scenario(&s, &mut out);
        out.drop_open_file_warnings(before);
    }

    println!("\n== Notes ==");
    if out.notes.is_empty() {
        println!("none: no errors, no disconnects, every acknowledged write in its ledger, relay logs clean");
    }
    for note in &out.notes {
        println!("  {note}");
    }
    println!(
        "\n== aether-actix vs upstream 0.4.0, same machine (all scenarios took {:.0} s) ==\n",
        started.elapsed().as_secs_f64()
    );
    report::print(&out.rows, s.launch.python.is_some());
    println!(
        "\n† upstream broadcasts (and so echoes) a write before its ledger has written or fsynced it; ours \
         only after the write's batch is fdatasynced (`sync = \"always\"`). Ratios: ours / upstream."
    );
    if s.runs("mesh") {
        println!(
            "‡ upstream's federation rows are bare `MeshNode`s (`set()` is the write: no client, no ledger, no \
             fsync); ours go from a browser client through every relay's ledger, fdatasynced at every hop."
        );
    }
}

fn round_trip(s: &Settings, out: &mut Out) {
    println!(
        "\n== Round trip: client A sets, client B receives; one write at a time; {} run(s) per relay; after each \
         sample one small append + fdatasync beside the ledger (the disk's cost, same run) ==",
        s.rt_runs
    );
    let mut results: Vec<(Kind, Vec<roundtrip::Latency>)> = Vec::new();
    let mut none: Vec<roundtrip::Latency> = Vec::new();
    let cases: Vec<(Kind, &'static str)> = s
        .kinds()
        .into_iter()
        .flat_map(|k| if k == Kind::Ours { vec![(k, "always"), (k, "none")] } else { vec![(k, "")] })
        .collect();
    println!(
        "{:<32} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "relay", "samples", "p50 ms", "p95 ms", "p99 ms", "max ms", "fsync p50", "fsync p99", "p50-fsync", "samples/s"
    );
    for run in 0..s.rt_runs {
        for &(kind, sync) in &cases {
            let label =
                if sync.is_empty() { format!("{kind} (no fsync on the path)") } else { format!("{kind} sync={sync}") };
            let attempt = || {
                let mut relay = Relay::start(kind, &s.launch, &OursConfig { sync, ..OursConfig::default() })?;
                let (t0, busy, relay_cpu, bench_cpu) =
                    (Instant::now(), util::machine_busy_secs(), relay.cpu_secs(), util::cpu_secs("self"));
                let result = roundtrip::run(&relay, s.warmup, s.samples, true);
                let other = (util::machine_busy_secs()
                    - busy
                    - (relay.cpu_secs() - relay_cpu)
                    - (util::cpu_secs("self") - bench_cpu))
                    / t0.elapsed().as_secs_f64();
                let expected = (s.warmup + s.samples) as u64;
                let notes = stop_and_check(&mut relay, "round trip", result.is_ok().then_some((expected, true)));
                Some((result, notes, other))
            };
            let Some((result, notes)) = quiet(s, &label, attempt) else { continue };
            out.notes.extend(notes);
            match result {
                Ok(l) => {
                    let n = l.sorted.len();
                    let (p50, f50) = (ms(percentile(&l.sorted, 0.50)), ms(percentile(&l.fdatasync, 0.50)));
                    println!(
                        "{:<32} {:>7} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>9.3} {:>9.3} {:>9.3} {:>9.0}",
                        format!("{label} #{}", run + 1),
                        n,
                        p50,
                        ms(percentile(&l.sorted, 0.95)),
                        ms(percentile(&l.sorted, 0.99)),
                        ms(l.sorted.last().copied().unwrap_or_default()),
                        f50,
                        ms(percentile(&l.fdatasync, 0.99)),
                        p50 - f50,
                        n as f64 / l.wall.as_secs_f64(),
                    );
                    if sync == "none" {
                        none.push(l);
                    } else if let Some((_, runs)) = results.iter_mut().find(|(k, _)| *k == kind) {
                        runs.push(l);
                    } else {
                        results.push((kind, vec![l]));
                    }
                }
                Err(e) => out.notes.push(format!("{label} round trip failed: {e}")),
            }
        }
    }
    // Each figure: the median over the runs, and the spread (lowest-highest) printed beside it.
    let figure = |runs: &[roundtrip::Latency], f: &dyn Fn(&roundtrip::Latency) -> f64| -> Option<f64> {
        (!runs.is_empty()).then(|| util::median(runs.iter().map(f).collect()))
    };
    let spread = |runs: &[roundtrip::Latency], f: &dyn Fn(&roundtrip::Latency) -> f64| -> String {
        let v: Vec<f64> = runs.iter().map(f).collect();
        let (lo, hi) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{lo:.3}-{hi:.3}")
    };
    let p = |q: f64| move |l: &roundtrip::Latency| ms(percentile(&l.sorted, q));
    let f = |q: f64| move |l: &roundtrip::Latency| ms(percentile(&l.fdatasync, q));
    let excess = |l: &roundtrip::Latency| ms(percentile(&l.sorted, 0.5)) - ms(percentile(&l.fdatasync, 0.5));
    if let Some((_, ours)) = results.iter().find(|(k, _)| *k == Kind::Ours) {
        println!("over {} run(s), lowest-highest:", ours.len());
        println!("  ours sync=always  p50 {} ms, p99 {} ms", spread(ours, &p(0.5)), spread(ours, &p(0.99)));
        println!("  fdatasync         p50 {} ms, p99 {} ms", spread(ours, &f(0.5)), spread(ours, &f(0.99)));
        println!("  p50 - fdatasync p50: {} ms", spread(ours, &excess));
        if !none.is_empty() {
            println!("  ours sync=none    p50 {} ms, p99 {} ms", spread(&none, &p(0.5)), spread(&none, &p(0.99)));
        }
    }
    out.section("Round trip, one writer and one reader (ours: fdatasync on the path)");
    let runs_of = |k: Kind| results.iter().find(|(kind, _)| *kind == k).map_or(&[][..], |(_, r)| &r[..]);
    let (ours, upstream) = (runs_of(Kind::Ours), runs_of(Kind::Upstream));
    for (q, name) in [(0.50, "p50"), (0.99, "p99")] {
        out.rows.push(
            Row::new(format!("round trip {name}, ms †"), figure(ours, &p(q)), figure(upstream, &p(q)), 3)
                .goal(Goal::RatioAtMost(0.3)),
        );
    }
    out.rows.push(Row::new("fdatasync of a small append beside the ledger p50, ms", figure(ours, &f(0.5)), None, 3));
    out.rows.push(Row::new("fdatasync of a small append beside the ledger p99, ms", figure(ours, &f(0.99)), None, 3));
    let excess_us = |l: &roundtrip::Latency| 1e3 * excess(l);
    out.rows.push(
        Row::new("round trip p50 minus fdatasync p50 (same run), µs", figure(ours, &excess_us), None, 0)
            .goal(Goal::AtMost(150.0)),
    );
    if !none.is_empty() {
        out.rows.push(
            Row::new(
                "round trip p50, ms, ours with sync = \"none\"",
                figure(&none, &p(0.5)),
                figure(upstream, &p(0.5)),
                3,
            )
            .goal(Goal::RatioAtMost(0.35)),
        );
    }
}

/// Runs `attempt` (which returns its result, its notes, and the share of a core the rest of the
/// machine used meanwhile) until the rest of the machine stayed under `AETHER_BENCH_OTHER_MAX`,
/// at most `1 + AETHER_BENCH_RETRIES` times; keeps the least disturbed run.
fn quiet<T>(
    s: &Settings,
    what: &str,
    mut attempt: impl FnMut() -> Option<(T, Vec<String>, f64)>,
) -> Option<(T, Vec<String>)> {
    let mut best: Option<(T, Vec<String>, f64)> = None;
    for i in 0..=s.retries {
        let (result, notes, other) = attempt()?;
        let calm = other <= s.other_max;
        if best.as_ref().is_none_or(|(_, _, b)| other < *b) {
            best = Some((result, notes, other));
        }
        if calm {
            break;
        }
        let again = if i < s.retries { "; repeating" } else { "; keeping the calmest run" };
        println!("  ({what}: the rest of the machine used {:.0}% of a core meanwhile{again})", 100.0 * other);
    }
    best.map(|(result, notes, _)| (result, notes))
}

/// Mean of a histogram in our `/metrics`.
fn mean_of(metrics: &str, name: &str) -> Option<f64> {
    histogram(metrics, name).and_then(|(sum, count)| (count > 0.0).then(|| sum / count))
}

/// The share of ledger appends the state actor made itself (a quiet relay's batches).
fn inline_share(metrics: &str) -> Option<f64> {
    let inline: f64 =
        metrics.lines().find_map(|l| l.strip_prefix("aether_ledger_inline_appends_total "))?.trim().parse().ok()?;
    let (_, batches) = histogram(metrics, "aether_ledger_batch_ops")?;
    (batches > 0.0).then(|| inline / batches)
}

fn throughput(s: &Settings, out: &mut Out) {
    println!(
        "\n== Durable write throughput: N writer connections x W writes in flight each; a write counts when its \
         writer reads its own echo; {} s per run ==",
        s.secs
    );
    println!(
        "{:<16} {:<7} {:>8} {:>10} {:>15} {:>8} {:>8} {:>8} {:>12} {:>6} {:>6} {:>7} {:>9}",
        "relay",
        "sync",
        "shape",
        "acked/s",
        "per conn",
        "ack p50",
        "ack p99",
        "ack max",
        "frames rd/s",
        "relay",
        "bench",
        "batch",
        "append"
    );
    let mut cases: Vec<(Kind, usize, usize, &'static str)> = Vec::new();
    for &c in &s.conns {
        cases.extend(s.kinds().into_iter().map(|k| (k, c, s.window, "always")));
    }
    cases.extend(s.extra.iter().map(|&(c, w, sync)| (Kind::Ours, c, w, sync)));
    let mut main_results: Vec<(usize, Kind, throughput::Throughput)> = Vec::new();
    for (kind, conns, window, sync) in cases {
        let what = format!("{conns}x{window}");
        let attempt = || -> Option<(Result<(throughput::Throughput, String), String>, _, _)> {
            let mut relay = Relay::start(kind, &s.launch, &OursConfig { sync, ..OursConfig::default() })?;
            let result = throughput::run(&relay, conns, window, s.secs);
            let metrics = relay.metrics();
            let acked = result.as_ref().ok().map(|t| (t.acked, t.errors.is_empty()));
            let notes = stop_and_check(&mut relay, &what, acked);
            let other = result.as_ref().map_or(0.0, |t| t.other_cpu / t.secs);
            Some((result.map(|t| (t, metrics)), notes, other))
        };
        let Some((result, notes)) = quiet(s, &format!("{kind} {what}"), attempt) else { continue };
        out.notes.extend(notes);
        match result {
            Ok((t, metrics)) => {
                for (n, e) in util::grouped(t.errors.iter().cloned()) {
                    out.notes.push(format!("{kind} {what}: {n} of {conns} writers failed: {e}"));
                }
                if t.out_of_order > 0 {
                    out.notes.push(format!("{kind} {what}: {} own echoes out of send order", t.out_of_order));
                }
                let lat = &t.ack_latency;
                let batch = mean_of(&metrics, "aether_ledger_batch_ops");
                let append = mean_of(&metrics, "aether_ledger_append_seconds");
                println!(
                    "{:<16} {:<7} {:>8} {:>10} {:>15} {:>6.2}ms {:>6.2}ms {:>6.1}ms {:>12.0} {:>5.0}% {:>5.0}% {:>7} {:>9}",
                    kind.to_string(),
                    if kind == Kind::Ours { sync } else { "(none)" },
                    what,
                    format!("{}{:.0}", if t.errors.is_empty() { "" } else { "*" }, t.rate()),
                    format!("{:.0}-{:.0}", t.per_conn.0 as f64 / t.secs, t.per_conn.1 as f64 / t.secs),
                    ms(percentile(lat, 0.50)),
                    ms(percentile(lat, 0.99)),
                    ms(lat.last().copied().unwrap_or_default()),
                    t.frames_in_window as f64 / t.secs,
                    100.0 * t.relay_cpu / t.secs,
                    100.0 * t.bench_cpu / t.secs,
                    batch.map_or("-".to_owned(), |b| format!("{b:.1}")),
                    append.map_or("-".to_owned(), |a| format!("{:.3}ms", a * 1e3)),
                );
                println!(
                    "{:<16} relay threads, % of a core: {}; rest of the machine: {:.0}%",
                    "",
                    t.threads,
                    100.0 * t.other_cpu / t.secs
                );
                if window == s.window && sync == "always" && s.conns.contains(&conns) {
                    main_results.push((conns, kind, t));
                }
            }
            Err(e) => out.notes.push(format!("{kind} {what} failed: {e}")),
        }
    }
    println!(
        "(per conn: slowest-fastest connection, acked/s; frames rd/s: every frame all clients read; relay/bench: CPU \
         in the window, % of one core; batch: mean writes per ledger append and append: mean write + fdatasync time, \
         from our /metrics; rest of the machine: \
         CPU used by other processes and by the kernel outside them, such as loopback network processing; * some \
         writers failed, see notes)"
    );
    out.section(&format!("Durable writes end to end, each connection {} in flight; acked/s", s.window));
    for &conns in &s.conns {
        let results: Vec<(Kind, &throughput::Throughput)> =
            main_results.iter().filter(|(c, _, _)| *c == conns).map(|(_, k, t)| (*k, t)).collect();
        let (o, u) = pair(&results, |t| Some(t.rate()));
        let row = Row::new(format!("{conns} writer connection(s), acked writes/s †"), o, u, 0);
        out.rows.push(if conns == 64 { row.goal(Goal::RatioAtLeast(20.0)) } else { row });
        if conns == *s.conns.iter().max().unwrap_or(&0) {
            let (o, u) = pair(&results, |t| Some(ms(percentile(&t.ack_latency, 0.99))));
            out.rows.push(Row::new(format!("{conns} writer connections, echo p99, ms †"), o, u, 1));
        }
    }
}

/// Latency under load: the maximum acked writes/s of 64 writer connections (as `throughput`
/// measures it, `AETHER_BENCH_WINDOW` in flight each), then the same 64 connections paced at
/// 25/50/75/100% of it, each run on a fresh relay; the echo latency at each rate.
fn load(s: &Settings, out: &mut Out) {
    const CONNS: usize = 64;
    println!(
        "\n== Latency under load: {CONNS} writers; first the maximum ({CONNS}x{} closed loop), then paced at \
         25/50/75/100% of it; {} s per run ==",
        s.window, s.secs
    );
    let attempt = || {
        let mut relay = Relay::start(Kind::Ours, &s.launch, &OursConfig::default())?;
        let result = throughput::run(&relay, CONNS, s.window, s.secs);
        let acked = result.as_ref().ok().map(|t| (t.acked, t.errors.is_empty()));
        let notes = stop_and_check(&mut relay, "load maximum", acked);
        let other = result.as_ref().map_or(0.0, |t| t.other_cpu / t.secs);
        Some((result, notes, other))
    };
    let Some((max, notes)) = quiet(s, "load maximum", attempt) else { return };
    out.notes.extend(notes);
    let max = match max {
        Ok(t) if t.errors.is_empty() => t,
        Ok(t) => return out.notes.push(format!("load: the maximum's writers failed: {:?}", t.errors)),
        Err(e) => return out.notes.push(format!("load: the maximum failed: {e}")),
    };
    let rate = max.rate();
    println!(
        "maximum: {rate:.0} acked writes/s; echo p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; relay threads, % of a core: {}",
        ms(percentile(&max.ack_latency, 0.5)),
        ms(percentile(&max.ack_latency, 0.99)),
        ms(max.ack_latency.last().copied().unwrap_or_default()),
        max.threads
    );
    println!(
        "{:>6} {:>10} {:>10} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9} {:>9} {:>6} {:>8} {:>6} {:>6} {:>6} {:>6}  relay threads",
        "load",
        "asked/s",
        "acked/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "due p99",
        "due max",
        "fsync p50",
        "fsync p99",
        "batch",
        "append",
        "inline",
        "relay",
        "bench",
        "rest"
    );
    out.section(&format!("Latency under load, {CONNS} writers paced at a share of the maximum acked writes/s"));
    out.rows.push(Row::new(format!("maximum, {CONNS}x{} closed loop, acked writes/s", s.window), Some(rate), None, 0));
    for share in s.load_shares.iter().map(|&pct| pct / 100.0) {
        let attempt = || {
            let mut relay = Relay::start(Kind::Ours, &s.launch, &OursConfig::default())?;
            let result = throughput::run_paced(&relay, CONNS, s.pollers, share * rate, s.secs);
            let metrics = relay.metrics();
            let result = result.map(|p| (p, metrics));
            let acked = result.as_ref().ok().map(|(p, _)| ((p.acked_rate * s.secs) as u64, false));
            let notes = stop_and_check(&mut relay, "load", acked);
            let other = result.as_ref().map_or(0.0, |(p, _)| p.other_cpu / s.secs);
            Some((result, notes, other))
        };
        let label = format!("load {:.0}%", share * 100.0);
        let Some((result, notes)) = quiet(s, &label, attempt) else { continue };
        out.notes.extend(notes);
        let (p, metrics) = match result {
            Ok(p) => p,
            Err(e) => {
                out.notes.push(format!("{label} failed: {e}"));
                continue;
            }
        };
        for (n, e) in util::grouped(p.errors.iter().cloned()) {
            out.notes.push(format!("{label}: {n} of {CONNS} writers failed: {e}"));
        }
        let (p50, p99) = (ms(percentile(&p.latency, 0.5)), ms(percentile(&p.latency, 0.99)));
        println!(
            "{:>5.0}% {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.1} {:>10.2} {:>10.1} {:>9.3} {:>9.3} {:>6} {:>8} {:>6} {:>5.0}% {:>5.0}% {:>5.0}%  {}",
            share * 100.0,
            p.target,
            p.acked_rate,
            p50,
            p99,
            ms(p.latency.last().copied().unwrap_or_default()),
            ms(percentile(&p.from_due, 0.99)),
            ms(p.from_due.last().copied().unwrap_or_default()),
            ms(percentile(&p.fdatasync, 0.5)),
            ms(percentile(&p.fdatasync, 0.99)),
            mean_of(&metrics, "aether_ledger_batch_ops").map_or("-".to_owned(), |b| format!("{b:.1}")),
            mean_of(&metrics, "aether_ledger_append_seconds").map_or("-".to_owned(), |a| format!("{:.3}ms", a * 1e3)),
            inline_share(&metrics).map_or("-".to_owned(), |i| format!("{:.0}%", i * 100.0)),
            100.0 * p.relay_cpu / s.secs,
            100.0 * p.bench_cpu / s.secs,
            100.0 * p.other_cpu / s.secs,
            p.threads,
        );
        let pct = share * 100.0;
        out.rows.push(Row::new(format!("echo p50 at {pct:.0}% of the maximum, ms"), Some(p50), None, 2));
        let row = Row::new(format!("echo p99 at {pct:.0}% of the maximum, ms"), Some(p99), None, 2);
        out.rows.push(if share == 0.5 { row.goal(Goal::AtMost(10.0)) } else { row });
        out.rows.push(Row::new(
            format!("fdatasync beside the ledger meanwhile ({pct:.0}%) p99, ms"),
            Some(ms(percentile(&p.fdatasync, 0.99))),
            None,
            2,
        ));
    }
    println!(
        "(p50/p99/max: send to own echo; due: from the instant the write was due, which also counts any delay of \
         the harness in sending it; fsync: a small append + fdatasync beside the ledger every 5 ms meanwhile, ms; \
         batch, append: mean writes per ledger append and mean write + fdatasync, from our /metrics; \
         inline: appends the state actor made itself, the relay being quiet; relay/bench/rest: CPU in the window, % of one core)"
    );
}

/// Durable writes/s through `PUT /api/v1/…` with 16 HTTP clients (one request in flight each),
/// beside the same writes over 16 WebSocket connections with one write in flight each (and with
/// `AETHER_BENCH_WINDOW` in flight, what a browser pipelines).
fn api_writes(s: &Settings, out: &mut Out) {
    const CONNS: usize = 16;
    println!("\n== Durable writes through the HTTP API vs WebSocket: {CONNS} clients, {} s per run ==", s.secs);
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>9} {:>7} {:>7}",
        "transport", "writes/s", "p50 ms", "p99 ms", "max ms", "relay", "bench"
    );
    let cfg = OursConfig { mesh: api::config(), ..OursConfig::default() };
    let attempt = || {
        let mut relay = Relay::start(Kind::Ours, &s.launch, &cfg)?;
        let t = api::run(&relay, CONNS, s.secs);
        let acked = Some((t.acked, t.errors.is_empty()));
        let notes = stop_and_check(&mut relay, "api", acked);
        Some((t, notes, 0.0))
    };
    let Some((t, notes)) = quiet(s, "api PUT", attempt) else { return };
    out.notes.extend(notes);
    for (n, e) in util::grouped(t.errors.iter().cloned()) {
        out.notes.push(format!("api: {n} of {CONNS} HTTP clients failed: {e}"));
    }
    let row = |what: &str, rate: f64, lat: &[Duration], relay: f64, bench: f64, secs: f64| {
        println!(
            "{:<34} {:>10.0} {:>9.2} {:>9.2} {:>9.1} {:>6.0}% {:>6.0}%",
            what,
            rate,
            ms(percentile(lat, 0.50)),
            ms(percentile(lat, 0.99)),
            ms(lat.last().copied().unwrap_or_default()),
            100.0 * relay / secs,
            100.0 * bench / secs,
        );
    };
    row(&format!("HTTP PUT, {CONNS} clients x 1"), t.rate(), &t.latency, t.relay_cpu, t.bench_cpu, t.secs);
    out.rows.push(Row::new(format!("HTTP API: {CONNS} clients, durable PUT/s"), Some(t.rate()), None, 0));
    for window in [1, s.window] {
        let attempt = || {
            let mut relay = Relay::start(Kind::Ours, &s.launch, &cfg)?;
            let result = throughput::run(&relay, CONNS, window, s.secs);
            let acked = result.as_ref().ok().map(|t| (t.acked, t.errors.is_empty()));
            let notes = stop_and_check(&mut relay, "api ws", acked);
            Some((result, notes, 0.0))
        };
        let Some((result, notes)) = quiet(s, "api ws", attempt) else { continue };
        out.notes.extend(notes);
        match result {
            Ok(w) => {
                row(
                    &format!("WebSocket set, {CONNS} conns x {window}"),
                    w.rate(),
                    &w.ack_latency,
                    w.relay_cpu,
                    w.bench_cpu,
                    w.secs,
                );
                out.rows.push(Row::new(
                    format!("WebSocket: {CONNS} conns x {window}, durable writes/s"),
                    Some(w.rate()),
                    None,
                    0,
                ));
            }
            Err(e) => out.notes.push(format!("api ws {CONNS}x{window} failed: {e}")),
        }
    }
    println!(
        "(HTTP: each client waits for its durable answer before the next PUT, on one keep-alive connection; \
         WebSocket: a write counts when its writer reads its own echo, which every other connection also receives)"
    );
}

fn fan_out(s: &Settings, out: &mut Out) {
    println!(
        "\n== Fan-out: one writer, {} readers, {} writes in flight to all readers; {} s measured after {} s ==",
        s.readers, s.fan_window, s.secs, s.fan_warmup
    );
    println!(
        "{:<16} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "relay", "delivered/s", "writes/s", "p50 ms", "p99 ms", "max ms", "relay", "bench", "connect"
    );
    let mut results = Vec::new();
    for kind in s.kinds() {
        let attempt = || {
            let mut relay = Relay::start(kind, &s.launch, &OursConfig::default())?;
            let f = fanout::run(&mut relay, s.readers, s.fan_window, s.pollers, s.fan_warmup, s.secs);
            let other = f.other_cpu / f.secs;
            Some((f, Vec::new(), other))
        };
        let Some((f, _)) = quiet(s, &format!("{kind} fan-out"), attempt) else { continue };
        let lat = |p| f64::from(percentile(&f.latency_us, p)) / 1e3;
        println!(
            "{:<16} {:>12.0} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>7.0}% {:>7.0}% {:>8.1}s",
            kind.to_string(),
            f.rate(),
            f.rate() / s.readers as f64,
            lat(0.50),
            lat(0.99),
            f64::from(f.latency_us.last().copied().unwrap_or(0)) / 1e3,
            100.0 * f.relay_cpu / f.secs,
            100.0 * f.bench_cpu / f.secs,
            f.connect.as_secs_f64(),
        );
        println!(
            "{:<16} relay threads, % of a core: {}; rest of the machine: {:.0}%",
            "",
            f.threads,
            100.0 * f.other_cpu / f.secs
        );
        out.notes.extend(f.errors.iter().map(|e| format!("{kind} fan-out: {e}")));
        results.push((kind, f));
    }
    println!("(writes/s: delivered/s divided by the readers; latency: writer's send to a reader's receive)");
    out.section(&format!("Fan-out, one writer to {} readers", s.readers));
    let ok = |f: &fanout::FanOut| f.errors.is_empty() || f.delivered > 0;
    let (o, u) = pair(&results, |f| ok(f).then(|| f.rate()));
    out.rows.push(Row::new("delivered messages/s †", o, u, 0).goal(Goal::RatioAtLeast(20.0)));
    for (p, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (o, u) = pair(&results, |f| ok(f).then(|| f64::from(percentile(&f.latency_us, p)) / 1e3));
        out.rows.push(Row::new(format!("delivery latency {name}, ms †"), o, u, 2));
    }
}

fn ledger(s: &Settings, out: &mut Out) {
    println!("\n== Ledger appends in-process (no network), median of {} ==", s.runs);
    let a = ledger::run(s.launch.python.as_deref(), s.appenders, s.writes, s.append_secs, s.runs);
    let up = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    println!("{:<58} {:>14} {:>14}", "case", "aether-actix/s", "upstream/s");
    println!(
        "{:<58} {:>14.0} {:>14}",
        format!("{} appenders, each waits for its record to be durable", a.appenders),
        a.group.0.rate,
        up(a.group.1)
    );
    println!("{:<58} {:>14.0} {:>14}", "1 appender, one fsync per record", a.single.0, up(a.single.1));
    println!("{:<58} {:>14.0} {:>14}", "256 records per append (ours only)", a.batched, "-");
    println!(
        "({} appenders, ours: {:.1} records per append on average; append-to-durable p50 {:.3} ms, p99 {:.3} ms)",
        a.appenders,
        a.group.0.mean_batch,
        ms(a.group.0.latency.0),
        ms(a.group.0.latency.1)
    );
    out.notes.extend(a.notes);
    out.section("Ledger appends in-process, records made durable per second");
    out.rows.push(
        Row::new(format!("{} concurrent appenders, records/s", a.appenders), Some(a.group.0.rate), a.group.1, 0)
            .goal(Goal::RatioAtLeast(50.0)),
    );
    out.rows.push(Row::new("1 appender, fsync per record, records/s", Some(a.single.0), a.single.1, 0));
}

fn replay(s: &Settings, out: &mut Out) {
    println!("\n== Replay and boot: {} records over {} keys, median of {} ==", s.records, s.keys, s.runs);
    let mut r = replay::run(&s.launch, s.records, s.keys, s.runs);
    let boot = s.boot;
    println!(
        "\n== Boot to first hello: {} records over {} keys; a snapshot of {} keys; median of {} ==",
        boot.records, boot.keys, boot.snapshot_keys, s.runs
    );
    replay::run_boot(&s.launch, boot, s.runs, &mut r);
    let rate = |t: &replay::Timed| t.median().map(|m| r.records as f64 / m);
    println!(
        "replay: aether-actix {} records/s, upstream {} records/s; snapshot {} / {} bytes",
        rate(&r.replay.0).map_or("-".into(), |v| format!("{v:.0}")),
        rate(&r.replay.1).map_or("-".into(), |v| format!("{v:.0}")),
        r.snapshot_bytes.0,
        r.snapshot_bytes.1
    );
    out.notes.extend(r.notes.iter().cloned());
    out.section(&format!("Replay and boot, {} records over {} keys", s.records, s.keys));
    out.rows.push(
        Row::new("replay (in-process boot), records/s", rate(&r.replay.0), rate(&r.replay.1), 0)
            .goal(Goal::RatioAtLeast(20.0)),
    );
    out.rows.push(Row::new("offline compaction, s", r.compact.0, r.compact.1, 2));
    out.rows.push(Row::new(
        "boot with the snapshot, process start to listening, s",
        r.boot.0.median(),
        r.boot.1.median(),
        3,
    ));
    out.rows.push(
        Row::new("replay (in-process boot), records/s, absolute", rate(&r.replay.0), None, 0)
            .goal(Goal::AtLeast(2_000_000.0)),
    );
    out.rows.push(Row::new("replay op by op (the boot before #14), records/s", rate(&r.op_by_op), None, 0));
    out.section(&format!(
        "Boot to the first hello (#14): {} records over {} keys; a snapshot of {} keys",
        boot.records, boot.keys, boot.snapshot_keys
    ));
    out.rows.push(
        Row::new(
            format!("{} records: process start to first hello, s", boot.records),
            r.hello.0.median(),
            r.hello.1.median(),
            3,
        )
        .goal(Goal::RatioAtMost(1.0 / 20.0)),
    );
    out.rows.push(
        Row::new(
            format!("snapshot of {} keys: process start to first hello, s", boot.snapshot_keys),
            r.snapshot_hello.0.median(),
            r.snapshot_hello.1.median(),
            3,
        )
        .goal(Goal::AtMost(1.0)),
    );
}

fn pauses(s: &Settings, out: &mut Out) {
    let keys = s.pause_keys;
    println!("\n== State actor pauses on {keys} keys: echo alone, then beside joins, probes and a compaction ==");
    let p = pauses::run(&s.launch, keys, s.pause_secs);
    println!(
        "echo alone p50/p99/max {:.2}/{:.2}/{:.2} ms; busy {:.2}/{:.2}/{:.2} ms; {} joins (slowest {:.0} ms), {} probes, compacted: {}; state actor's longest work {:.2} ms quiet, {:.2} ms busy",
        p.alone.0,
        p.alone.1,
        p.alone.2,
        p.busy.0,
        p.busy.1,
        p.busy.2,
        p.joins.0,
        p.joins.1,
        p.probes,
        p.compacted,
        p.actor.0,
        p.actor.1
    );
    out.notes.extend(p.notes);
    if !p.compacted {
        out.notes.push("pauses: no online compaction finished during the busy phase".into());
    }
    out.section(&format!("State actor pauses, {keys} keys (ours only; reference: the same echo alone)"));
    out.rows.push(Row::new("echo p99 alone, ms", Some(p.alone.1), None, 2));
    out.rows.push(Row::new("echo max alone, ms", Some(p.alone.2), None, 2));
    out.rows.push(Row::new("echo p99 beside joins, probes, compaction, ms", Some(p.busy.1), None, 2));
    out.rows.push(Row::new("echo max beside joins, probes, compaction, ms", Some(p.busy.2), None, 2));
    out.rows.push(Row::new("state actor's longest piece of work, quiet phase, ms", Some(p.actor.0), None, 2));
    out.rows.push(
        Row::new("state actor's longest piece of work, busy phase, ms", Some(p.actor.1), None, 2)
            .goal(Goal::AtMost(10.0)),
    );
    out.rows.push(Row::new("joins of the whole state during it", Some(p.joins.0 as f64), None, 0));
}

fn federation(s: &Settings, out: &mut Out) {
    let m = &s.mesh;
    println!(
        "\n== Federation: rings of {:?} relays, catch-up after a partition, {} relays written at once ==",
        m.rings, m.spread_nodes
    );
    let r = mesh::run(&s.launch, m);
    out.notes.extend(r.notes.iter().cloned());
    out.section(&format!(
        "Federation: {} writes on one relay of a ring until every relay holds them, median of {}",
        m.writes, m.runs
    ));
    for ring in &r.rings {
        let never = ring.upstream.iter().filter(|t| t.is_none()).count();
        let label = if never > 0 {
            format!("{}-relay ring, ms ‡ (upstream: never in {never} of {} runs)", ring.nodes, ring.upstream.len())
        } else {
            format!("{}-relay ring, ms ‡", ring.nodes)
        };
        let ms = |v: Option<f64>| v.map(|t| t * 1e3);
        out.rows.push(Row::new(label, ms(mesh::Ring::median(&ring.ours)), ms(mesh::Ring::median(&ring.upstream)), 1));
    }
    if let Some(c) = &r.catchup {
        out.section(&format!("Federation: catch-up of a relay that missed {} writes", c.writes));
        let upstream = match &r.upstream_catchup {
            Some(u) if u.same.is_none() => {
                format!("upstream: never, no catch-up; {} of {} after {} s", u.held, u.writes, u.waited)
            }
            Some(u) => format!("upstream: caught up {} writes", u.writes),
            None => "upstream: never, no catch-up (upstream-behaviour §5.4)".to_owned(),
        };
        let up = r.upstream_catchup.as_ref().and_then(|u| u.same);
        out.rows.push(Row::new(format!("restart to the same state, s ({upstream})"), c.same, up, 3));
        let anti_entropy = c.link.zip(c.same).map(|(l, s)| s - l);
        out.rows.push(Row::new("of which its link up to the same state (anti-entropy), s", anti_entropy, None, 3));
        out.rows.push(Row::new(
            "missed writes applied per second once linked",
            anti_entropy.filter(|t| *t > 0.0).map(|t| c.writes as f64 / t),
            None,
            0,
        ));
    }
    let (ours, up) = &r.spread;
    if let Some(sp) = ours.as_ref().or(up.as_ref()) {
        out.section(&format!("Federation: {} relays in a ring, {} writes spread over all", sp.nodes, sp.writes));
        let get = |f: fn(&mesh::Spread) -> Option<f64>| (ours.as_ref().and_then(f), up.as_ref().and_then(f));
        let (o, u) = get(|sp| sp.rate);
        out.rows.push(Row::new("acked writes/s ‡ (upstream: limits raised)", o, u, 0));
        let (o, u) = get(|sp| sp.converged);
        out.rows.push(Row::new("first write until all hold all, s ‡", o, u, 2));
        if let Some(d) = &r.spread_default {
            let what = d.failed.clone().unwrap_or_else(|| "converged".to_owned());
            out.rows.push(Row::new(
                format!("same, upstream at its default limits, s ‡ (upstream: {what})"),
                ours.as_ref().and_then(|sp| sp.converged),
                d.converged,
                2,
            ));
        }
    }
}

fn nats_federation(s: &Settings, out: &mut Out) {
    let m = &s.nats;
    let names: Vec<String> = m.topologies.iter().map(|t| format!("WebSocket {}", t.name())).collect();
    println!(
        "\n== Federation through NATS JetStream against the WebSocket mesh ({}): {} relays each, ours only ==",
        names.join(", "),
        m.nodes
    );
    if m.nodes < 2 {
        out.notes.push("nats: not run: it needs AETHER_BENCH_MESH_SPREAD_NODES of 2 or more".to_owned());
        return;
    }
    let r = nats::run(&s.launch, m);
    out.notes.extend(r.notes.iter().cloned());
    out.section(&format!(
        "Federation of {} relays, {} writes spread over all at once, median of {} (ours only)",
        m.nodes,
        m.writes * m.nodes as u64,
        m.runs
    ));
    for f in &r.federations {
        let name = f.via.name();
        out.rows.push(Row::new(format!("{name}: acked writes/s"), f.median(|sp| sp.rate), None, 0));
        out.rows.push(Row::new(
            format!("{name}: first write until all hold all, s"),
            f.median(|sp| sp.converged),
            None,
            2,
        ));
        out.rows.push(Row::new(
            format!("{name}: CPU per write, all relays (and nats-server), µs"),
            f.cpu_per_write(),
            None,
            0,
        ));
        out.rows.push(Row::new(format!("{name}: op messages sent per write"), f.sent_per_write, None, 2));
    }
    out.section(&format!(
        "Federation: one write at a time from a browser on relay 0 to a browser on relay ..., {} samples, ms (ours only)",
        m.samples
    ));
    for f in &r.federations {
        let name = f.via.name();
        for t in &f.targets {
            for (p, q) in [("p50", 0.5), ("p99", 0.99)] {
                out.rows.push(Row::new(format!("{name}, {}: {p}", t.what), nats::quantile(&t.latency, q), None, 3));
            }
            if !t.added.is_empty() {
                out.rows.push(Row::new(
                    format!("{name}, {}: added over the same relay, median per write", t.what),
                    nats::quantile(&t.added, 0.5),
                    None,
                    3,
                ));
            }
        }
    }
}

fn rooms_scenario(s: &Settings, max_conns: usize, out: &mut Out) {
    let r = &s.rooms;
    let per_room = r.per_room.max(1);
    let mut rooms_n = r.rooms.max(2);
    if rooms_n * per_room > max_conns {
        let fits = max_conns / per_room;
        println!(
            "\n(rooms: {rooms_n} rooms x {per_room} clients do not fit under the open-file limit: {fits} rooms instead)"
        );
        rooms_n = fits;
    }
    let conns = rooms_n * per_room;
    let single = r.single.min(max_conns).max(2);
    println!(
        "\n== Rooms (ours only): memory of {rooms_n} rooms x {per_room} clients, of {single} rooms x 1 client, of {} \
         dormant rooms; writes over {} rooms vs one room ==",
        r.dormant, r.write_rooms
    );
    let launch = &s.launch;
    let mib = |kib: f64| kib / 1024.0;
    let show = |label: &str, h: &rooms::Held| {
        let at: Vec<String> = h.at.iter().map(|(n, kib)| format!("{n}: {:.1} MiB", mib(*kib as f64))).collect();
        println!(
            "{label:<44} {:>6} conns {:>6} rooms  RSS before {:>7.1} MiB, at {}; connect {:.1}s; rooms held {} then {}",
            h.conns,
            h.rooms,
            mib(h.base_kib as f64),
            at.join(", "),
            h.connect.as_secs_f64(),
            h.rooms_held.0.map_or("-".into(), |v| v.to_string()),
            h.rooms_held.1.map_or("-".into(), |v| v.to_string()),
        );
    };
    let one = rooms::hold(launch, r, "rooms: one room", conns, |_| "one".to_owned(), &[single], &mut out.notes);
    show(&format!("{conns} connections in one room"), &one);
    let spread = rooms::hold(launch, r, "rooms: spread", conns, |i| format!("r{}", i / per_room), &[], &mut out.notes);
    show(&format!("{conns} connections over {rooms_n} rooms"), &spread);
    let singles = rooms::hold(launch, r, "rooms: singles", single, |i| format!("r{i}"), &[], &mut out.notes);
    show(&format!("{single} connections over {single} rooms"), &singles);
    for h in [&one, &spread, &singles] {
        out.notes.extend(h.errors.iter().cloned());
        if h.rooms_held.1.is_some_and(|n| n > 0) {
            out.notes.push(format!(
                "rooms: {} rooms still held after every client of {} left",
                h.rooms_held.1.unwrap_or(0),
                h.conns
            ));
        }
    }
    let ok = |h: &rooms::Held| h.errors.is_empty() && h.at.last().is_some_and(|(n, _)| *n == h.conns);
    let per_conn = one.delta_at(None).filter(|_| ok(&one)).map(|d| d / conns as f64);
    let per_room3 = (ok(&one) && ok(&spread))
        .then(|| Some((spread.delta_at(None)? - one.delta_at(None)?) / (rooms_n - 1) as f64))
        .flatten();
    let single_ref = one.delta_at(Some(single)).or_else(|| per_conn.map(|c| c * single as f64));
    let per_room1 = (ok(&singles) && ok(&one))
        .then(|| Some((singles.delta_at(None)? - single_ref?) / (single - 1) as f64))
        .flatten();
    let whole3 = spread.delta_at(None).filter(|_| ok(&spread)).map(|d| d / rooms_n as f64);
    let predicted = per_conn.zip(per_room3).map(|(c, room)| one.base_kib as f64 + 30_000.0 * c + 10_000.0 * room);

    let dormant_room = |i: usize| format!("d{i}");
    let one_room = |_: usize| "one".to_owned();
    let d_rooms = rooms::dormant(launch, r, "rooms: dormant", r.dormant, dormant_room, &mut out.notes);
    let d_one = rooms::dormant(launch, r, "rooms: dormant reference", r.dormant, one_room, &mut out.notes);
    for (label, d) in
        [(format!("{} dormant rooms", r.dormant), &d_rooms), ("the same keys in one room".to_owned(), &d_one)]
    {
        println!(
            "{label:<44} {:>6} writers, {} key(s) each: RSS {:.1} -> {:.1} MiB ({:.2} KiB per writer); rooms {} keys {} after; {:.1}s",
            d.conns,
            r.dormant_keys,
            mib(d.rss_kib.0 as f64),
            mib(d.rss_kib.1 as f64),
            d.delta() / d.conns.max(1) as f64,
            d.rooms.map_or("-".into(), |v| v.to_string()),
            d.keys.map_or("-".into(), |v| v.to_string()),
            d.took.as_secs_f64()
        );
        out.notes.extend(d.errors.iter().cloned());
    }
    let dormant_ok = d_rooms.errors.is_empty() && d_one.errors.is_empty() && r.dormant > 0;
    let per_dormant = dormant_ok.then(|| d_rooms.delta() / r.dormant as f64);
    let per_dormant_beyond = dormant_ok.then(|| (d_rooms.delta() - d_one.delta()) / r.dormant as f64);

    println!(
        "\n-- Writes: {} writer connections x {} in flight, one per room over {} rooms vs all in one room; {} s each, {} run(s) --",
        r.write_rooms, r.write_window, r.write_rooms, r.secs, r.runs
    );
    println!(
        "{:<26} {:>4} {:>10} {:>10} {:>8} {:>8} {:>12} {:>9} {:>9} {:>7} {:>7} {:>7}",
        "case",
        "run",
        "acked/s",
        "per conn",
        "ack p50",
        "ack p99",
        "frames rd/s",
        "batch",
        "batches",
        "relay",
        "bench",
        "rest"
    );
    let mut rates: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut batches: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let in_flight = r.write_rooms * r.write_window;
    let cases = [
        (0, format!("{} rooms", r.write_rooms), r.write_rooms, r.write_window),
        (1, "one room".to_owned(), r.write_rooms, r.write_window),
        // The same writes in flight, each delivered once as over rooms, from one connection.
        (2, format!("one room, 1 conn x {in_flight}"), 1, in_flight),
    ];
    for run in 0..r.runs {
        for (case, label, writers, window) in &cases {
            let (case, writers, window) = (*case, *writers, *window);
            let room_of = |i: usize| if case == 0 { format!("w{i}") } else { "one".to_owned() };
            let what = format!("rooms: writes, {label}");
            match rooms::writes(launch, r, &what, writers, window, room_of, &mut out.notes) {
                Ok(w) => {
                    let t = &w.t;
                    println!(
                        "{:<26} {:>4} {:>10.0} {:>10} {:>6.2}ms {:>6.2}ms {:>12.0} {:>9} {:>9} {:>6.0}% {:>6.0}% {:>6.0}%",
                        label,
                        run + 1,
                        t.rate(),
                        format!("{:.0}-{:.0}", t.per_conn.0 as f64 / t.secs, t.per_conn.1 as f64 / t.secs),
                        ms(percentile(&t.ack_latency, 0.50)),
                        ms(percentile(&t.ack_latency, 0.99)),
                        t.frames_in_window as f64 / t.secs,
                        w.batch.map_or("-".to_owned(), |(b, _)| format!("{b:.1}")),
                        w.batch.map_or("-".to_owned(), |(_, n)| format!("{n:.0}")),
                        100.0 * t.relay_cpu / t.secs,
                        100.0 * t.bench_cpu / t.secs,
                        100.0 * t.other_cpu / t.secs,
                    );
                    if t.errors.is_empty() {
                        rates[case].push(t.rate());
                        batches[case].extend(w.batch.map(|(b, _)| b));
                    }
                }
                Err(e) => out.notes.push(format!("rooms: writes, {label} failed: {e}")),
            }
        }
    }
    println!(
        "(per conn: slowest-fastest writer, acked/s; frames rd/s: every frame all clients read; batch: mean writes per \
         ledger append, i.e. per fdatasync, and batches: appends, whole run, from /metrics; relay/bench/rest: CPU of the relay, \
         of the clients and of the rest of the machine, % of one core)"
    );
    let spread_of = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if v.is_empty() { "-".to_owned() } else { format!("{lo:.0}-{hi:.0}") }
    };
    let med = |v: &[f64]| (!v.is_empty()).then(|| util::median(v.to_vec()));
    let (spread_rate, one_rate, one_conn_rate) = (med(&rates[0]), med(&rates[1]), med(&rates[2]));
    let text = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
    println!(
        "acked writes/s, median (min-max): {} rooms {} ({}); one room {} ({}); one room, 1 conn {} ({})",
        r.write_rooms,
        text(spread_rate),
        spread_of(&rates[0]),
        text(one_rate),
        spread_of(&rates[1]),
        text(one_conn_rate),
        spread_of(&rates[2]),
    );

    out.section(&format!(
        "Rooms (ours only): {conns} connections in one room / over {rooms_n} rooms; {single} rooms x 1; {} dormant rooms",
        r.dormant
    ));
    out.rows.push(Row::new("resident KiB per idle connection (vs none)", per_conn, None, 2));
    out.rows.push(
        Row::new(
            format!("resident KiB per idle empty room, {per_room} clients each (vs one room)"),
            per_room3,
            None,
            2,
        )
        .goal(Goal::AtMost(2.0)),
    );
    out.rows.push(
        Row::new("resident KiB per idle empty room, 1 client each (vs one room)", per_room1, None, 2)
            .goal(Goal::AtMost(2.0)),
    );
    out.rows.push(Row::new(format!("resident KiB per room with its {per_room} clients"), whole3, None, 1));
    out.rows.push(Row::new(
        format!("resident MiB, {rooms_n} rooms x {per_room} clients"),
        spread.at.last().filter(|_| ok(&spread)).map(|(_, kib)| mib(*kib as f64)),
        None,
        1,
    ));
    out.rows.push(Row::new("resident MiB predicted for 10,000 rooms x 3 clients", predicted.map(mib), None, 1));
    out.rows.push(Row::new(
        format!("resident KiB per dormant room, {} key(s), no members", r.dormant_keys),
        per_dormant,
        None,
        2,
    ));
    out.rows.push(Row::new("of which beyond its key(s) (vs the same keys in one room)", per_dormant_beyond, None, 2));
    let writers = format!("{} writers x {} in flight", r.write_rooms, r.write_window);
    out.section(&format!("Rooms (ours only): durable writes, {writers}, median of {}", r.runs));
    out.rows.push(Row::new(format!("one per room over {} rooms, acked writes/s", r.write_rooms), spread_rate, None, 0));
    out.rows.push(Row::new("all in one room, acked writes/s", one_rate, None, 0));
    out.rows.push(
        Row::new(format!("{} rooms / one room", r.write_rooms), spread_rate.zip(one_rate).map(|(a, b)| a / b), None, 2)
            .goal(Goal::AtLeast(0.9)),
    );
    out.rows.push(Row::new(
        format!("all in one room from 1 connection x {in_flight} (each write delivered once), acked writes/s"),
        one_conn_rate,
        None,
        0,
    ));
    out.rows.push(Row::new(
        format!("{} rooms / one room from 1 connection", r.write_rooms),
        spread_rate.zip(one_conn_rate).map(|(a, b)| a / b),
        None,
        2,
    ));
    out.rows.push(Row::new("writes per fdatasync, over rooms", med(&batches[0]), None, 1));
    out.rows.push(Row::new("writes per fdatasync, one room", med(&batches[1]), None, 1));
    out.rows.push(Row::new("writes per fdatasync, one room from 1 connection", med(&batches[2]), None, 1));
}

/// Under `cargo test --all-targets`: the in-process parts on a tiny scale, nothing started.
fn smoke() {
    println!("e2e: smoke run (use `cargo bench` for the real numbers)");
    let dir = util::temp_dir();
    let path = dir.path().join("ledger.jsonl");
    replay::generate(&path, 2000, 500);
    let (_, records, live) = replay::replay_once(&path);
    assert_eq!((records, live), (2000, 500));
    let g = ledger::group_commit(4, 0.05);
    assert!(g.rate > 0.0 && g.mean_batch >= 1.0);
    assert!(ledger::sequential(10, 1) > 0.0);
    println!("e2e: smoke run ok");
}

/// `access`: relay CPU per connect with each kind of token (see `access.rs`).
fn access_scenario(s: &Settings, out: &mut Out) {
    println!(
        "\n== Access (ours only): relay CPU per connect, {} connects one after another per case, by token ==",
        s.access_conns
    );
    let cases = access::run(&s.launch, s.access_conns, s.access_warmup, &mut out.notes);
    let base = cases.first().and_then(|c| c.cpu_us);
    println!("{:<16} {:>14} {:>16} {:>12}", "token", "relay CPU, µs", "beyond no auth", "connects/s");
    for c in &cases {
        let beyond = c.cpu_us.zip(base).map(|(c, b)| c - b);
        println!(
            "{:<16} {:>14} {:>16} {:>12}",
            c.name,
            c.cpu_us.map_or("-".into(), |v| format!("{v:.1}")),
            beyond.map_or("-".into(), |v| format!("{v:+.1}")),
            c.per_sec.map_or("-".into(), |v| format!("{v:.0}")),
        );
    }
    out.rows.push(Row::new(
        format!("**Access (ours only): relay CPU per connect, {} connects per case**", s.access_conns),
        None,
        None,
        0,
    ));
    for c in &cases {
        let goal = match c.name {
            "HS256 JWT" => Some(Goal::AtMost(50.0)),
            "ES256 JWT" => Some(Goal::AtMost(200.0)),
            _ => None,
        };
        let beyond = c.cpu_us.zip(base).map(|(c, b)| (c - b).max(0.0));
        out.rows.push(Row::new(format!("relay CPU per connect, µs: {}", c.name), c.cpu_us, None, 1));
        if c.name != "no auth" {
            let row = Row::new(format!("  of which the token (beyond no auth), µs: {}", c.name), beyond, None, 1);
            out.rows.push(match goal {
                Some(goal) => row.goal(goal),
                None => row,
            });
        }
    }
}

/// `feed`: 100 readers of one room's change feed at 1,000 writes/s, beside 100 v2 WebSocket
/// readers (see `feed.rs`).
fn feed_scenario(s: &Settings, out: &mut Out) {
    let (readers, rate, secs) = (s.feed_readers, 1000, s.feed_secs);
    println!("\n== Change feed (ours only): {readers} readers of one room, {rate} writes/s for {secs} s ==");
    println!(
        "{:<26} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "readers", "deliveries", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
    );
    out.rows.push(Row::new(format!("**Change feed (ours only): {readers} readers, {rate} writes/s**"), None, None, 0));
    for (what, websocket) in [("SSE (/changes)", false), ("v2 WebSocket", true)] {
        let Some(d) = feed::run(&s.launch, readers, rate, secs, websocket, &mut out.notes) else {
            out.notes.push(format!("feed: the {what} run did not start"));
            continue;
        };
        if d.delays.len() != d.expected {
            out.notes.push(format!("feed: {what}: {} of {} deliveries arrived", d.delays.len(), d.expected));
        }
        let p = |q: f64| ms(percentile(&d.delays, q));
        println!(
            "{what:<26} {:>12} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            d.delays.len(),
            p(0.5),
            p(0.99),
            p(0.999),
            ms(d.delays.last().copied().unwrap_or_default())
        );
        out.rows.push(Row::new(format!("delivery p99, ms: {what}"), (!d.delays.is_empty()).then(|| p(0.99)), None, 2));
    }
}
