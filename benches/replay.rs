//! Boot-time ledger replay: how fast `Ledger::open` reads a large ledger back into an `LwwMap`.
//!
//! Writes a ledger of 1,000,000 set records over 200,000 keys (so 80% of the records overwrite an
//! earlier one) with `record::encode`, then times `Ledger::open` replaying it into a fresh
//! `LwwMap` + `Clock`, exactly as the relay does at boot. Three runs; the median is reported. The
//! file is freshly written, so it is read from the page cache (a warm-cache number).
//!
//! `cargo bench --bench replay`. Environment:
//! - `AETHER_BENCH_RECORDS` / `AETHER_BENCH_KEYS`: sizes (default 1,000,000 / 200,000).
//! - `AETHER_BENCH_UPSTREAM=/path/to/python`: also replay the same file with upstream's Python
//!   `ChronoLedger` (aether-zta 0.4.0 must be importable by that interpreter), via
//!   `benches/upstream/replay.py`.
//!
//! Without `--bench` (as under `cargo test --all-targets`) it runs a 10,000-record smoke check.

use std::{
    env,
    fs::File,
    io::{BufWriter, Write},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use aether_actix::{
    hlc::{Clock, Stamp},
    ledger::{Ledger, ReplayStats, SyncMode, record},
    lww::{LwwMap, Op},
};
use serde_json::json;

const RUNS: usize = 3;
/// A plausible wall clock in nanoseconds (late 2026), the base of the generated stamps.
const BASE_NS: u64 = 1_795_901_405_000_000_000;
/// Multiplier that scatters record `i` over the key space; a prime, so for any key count that is
/// not a multiple of it every block of `keys` records writes every key exactly once.
const SCATTER: u64 = 104_729;

fn env_usize(name: &str, default: usize) -> usize {
    match env::var(name) {
        Ok(v) => v.replace('_', "").parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// Writes `records` set records over `keys` keys; returns the file size in bytes.
fn generate(path: &Path, records: usize, keys: usize) -> u64 {
    let mut out = BufWriter::with_capacity(1 << 20, File::create(path).expect("create ledger"));
    let mut line = Vec::with_capacity(256);
    let mut bytes = 0u64;
    for i in 0..records {
        let k = if i < keys { i } else { (i as u64 * SCATTER % keys as u64) as usize };
        let op =
            Op::set(format!("obj:{k:06}"), json!({"i": i, "tag": "bench"}), Stamp::new(BASE_NS + i as u64, 0, "bench"));
        line.clear();
        record::encode(&op, &mut line);
        bytes += line.len() as u64;
        out.write_all(&line).expect("write ledger");
    }
    out.into_inner().expect("flush ledger").sync_all().expect("fsync ledger");
    bytes
}

/// One replay, as the relay boots: every op goes through the clock and the map.
fn replay_once(path: &Path) -> (Duration, ReplayStats, usize) {
    let mut clock = Clock::new("bench");
    let mut map = LwwMap::new();
    let started = Instant::now();
    let (ledger, stats) = Ledger::open(path, SyncMode::Always, |op| {
        clock.witness(&op.stamp);
        map.apply(op);
    })
    .expect("open ledger");
    let elapsed = started.elapsed();
    drop(ledger); // releases the lock for the next run
    (elapsed, stats, map.live_len())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let bench = env::args().any(|a| a == "--bench");
    let (records, keys) = if bench {
        (env_usize("AETHER_BENCH_RECORDS", 1_000_000), env_usize("AETHER_BENCH_KEYS", 200_000))
    } else {
        println!("replay: smoke run (use `cargo bench --bench replay` for the real numbers)");
        (10_000, 2_000)
    };
    assert!(keys > 0 && keys <= records, "need 0 < keys <= records");
    assert!(!(keys as u64).is_multiple_of(SCATTER), "the key count must not be a multiple of {SCATTER}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ledger.jsonl");
    let started = Instant::now();
    let size = generate(&path, records, keys);
    println!(
        "generated {records} records over {keys} keys ({:.0}% overwrites), {:.1} MiB, in {:.2} s: {}",
        100.0 * (records - keys) as f64 / records as f64,
        size as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64(),
        path.display(),
    );

    let mut secs = Vec::new();
    println!("\n{:<28} {:>10} {:>14} {:>10}", "run", "wall (s)", "records/s", "live keys");
    for run in 1..=RUNS {
        let (elapsed, stats, live) = replay_once(&path);
        assert_eq!(stats.records, records as u64, "every record replayed");
        assert_eq!((stats.corrupt, stats.truncated_bytes), (0, 0), "clean file");
        assert_eq!(live, keys, "one live entry per key");
        let s = elapsed.as_secs_f64();
        println!("{:<28} {:>10.3} {:>14.0} {:>10}", format!("aether-actix #{run}"), s, records as f64 / s, live);
        secs.push(s);
    }
    let ours = median(secs);
    println!("{:<28} {:>10.3} {:>14.0}", "aether-actix median", ours, records as f64 / ours);

    if let Ok(python) = env::var("AETHER_BENCH_UPSTREAM") {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/upstream/replay.py");
        let mut secs = Vec::new();
        for run in 1..=RUNS {
            // A fresh interpreter per run, as a fresh process boots; import time is not timed.
            let out = Command::new(&python).arg(&script).arg(&path).output().expect("run upstream python");
            assert!(out.status.success(), "upstream replay failed: {}", String::from_utf8_lossy(&out.stderr));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("upstream prints one JSON line");
            let (n, s) = (result["records"].as_u64().unwrap_or(0), result["seconds"].as_f64().unwrap_or(f64::NAN));
            let live = result["live_keys"].as_u64().unwrap_or(0);
            assert_eq!(n, records as u64, "upstream replayed every record");
            println!("{:<28} {:>10.3} {:>14.0} {:>10}", format!("upstream 0.4.0 #{run}"), s, records as f64 / s, live);
            secs.push(s);
        }
        let theirs = median(secs);
        println!("{:<28} {:>10.3} {:>14.0}", "upstream 0.4.0 median", theirs, records as f64 / theirs);
        println!("speed-up (median wall time): {:.1}x", theirs / ours);
    }
}
