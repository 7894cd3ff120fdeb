//! Durable ledger appends in-process, without the network: `Ledger::append` + `fdatasync`.
//!
//! - one record per append (one `fdatasync` per record), the shape of upstream's ledger writer;
//! - 256 records per append (one `fdatasync` per batch), the shape of the relay's group commit;
//! - one record per append with `sync = "none"` (no `fdatasync`), for scale.
//!
//! Each case runs 3 times on a fresh ledger; the median is reported. `cargo bench --bench ledger`.
//! Environment: `AETHER_BENCH_WRITES` (records per per-record run, default 5000),
//! `AETHER_BENCH_DIR` (directory for the temporary ledgers; default the system temp dir, whose
//! file system is what is measured), `AETHER_BENCH_UPSTREAM=/path/to/python` to also time
//! upstream's `ChronoLedger` writer (aether-zta 0.4.0) with `benches/upstream/ledger_write.py`.
//!
//! Without `--bench` (as under `cargo test --all-targets`) it runs a tiny smoke check.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use aether_actix::{
    hlc::Stamp,
    ledger::{Ledger, SyncMode, record},
    lww::Op,
};
use serde_json::json;
use tempfile::TempDir;

const RUNS: usize = 3;
const BATCH: usize = 256;
const BASE_NS: u64 = 1_795_901_405_000_000_000;

fn temp_dir() -> TempDir {
    match env::var_os("AETHER_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temporary directory")
}

fn encoded(i: usize) -> Vec<u8> {
    let op = Op::set(
        format!("obj:{:06}", i % 200_000),
        json!({"i": i, "tag": "bench"}),
        Stamp::new(BASE_NS + i as u64, 0, "bench"),
    );
    let mut line = Vec::with_capacity(128);
    record::encode(&op, &mut line);
    line
}

struct Case {
    records_per_s: f64,
    p50: Duration,
    p99: Duration,
}

/// Appends `records` records in appends of `batch`; returns records/s and per-append latencies.
fn run(sync: SyncMode, records: usize, batch: usize) -> Case {
    let dir = temp_dir();
    let path = dir.path().join("ledger.jsonl");
    let (mut ledger, _) = Ledger::open(&path, sync, |_| {}).expect("open ledger");
    let batches: Vec<Vec<u8>> =
        (0..records).collect::<Vec<_>>().chunks(batch).map(|c| c.iter().flat_map(|&i| encoded(i)).collect()).collect();
    let mut lat = Vec::with_capacity(batches.len());
    let started = Instant::now();
    for bytes in &batches {
        let t0 = Instant::now();
        ledger.append(bytes).expect("append");
        lat.push(t0.elapsed());
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    Case { records_per_s: records as f64 / secs, p50: pct(0.50), p99: pct(0.99) }
}

fn median_case(mut cases: Vec<Case>) -> Case {
    cases.sort_by(|a, b| a.records_per_s.total_cmp(&b.records_per_s));
    cases.swap_remove(cases.len() / 2)
}

fn upstream(python: &str, records: usize) -> f64 {
    let script: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/upstream/ledger_write.py");
    let dir = temp_dir();
    let path = dir.path().join("ledger.jsonl");
    let out =
        Command::new(python).arg(&script).arg(&path).arg(records.to_string()).output().expect("run upstream python");
    assert!(out.status.success(), "upstream ledger write failed: {}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("upstream prints one JSON line");
    assert_eq!(result["records"].as_u64(), Some(records as u64), "upstream wrote every record");
    records as f64 / result["seconds"].as_f64().expect("seconds")
}

fn main() {
    let bench = env::args().any(|a| a == "--bench");
    let writes: usize = if bench {
        env::var("AETHER_BENCH_WRITES").map_or(5000, |v| v.parse().expect("AETHER_BENCH_WRITES is a number"))
    } else {
        println!("ledger: smoke run (use `cargo bench --bench ledger` for the real numbers)");
        20
    };
    let cases = [
        ("fdatasync per record", SyncMode::Always, writes, 1),
        ("fdatasync per 256 records", SyncMode::Always, writes * 25, BATCH),
        ("no fdatasync, per record", SyncMode::None, writes * 25, 1),
    ];
    println!(
        "{:<42} {:>9} {:>13} {:>14} {:>14}",
        "case (median of 3)", "records", "records/s", "append p50", "append p99"
    );
    for (name, sync, records, batch) in cases {
        let case = median_case((0..RUNS).map(|_| run(sync, records, batch)).collect());
        println!(
            "{:<42} {:>9} {:>13.0} {:>11.3} ms {:>11.3} ms",
            format!("aether-actix: {name}"),
            records,
            case.records_per_s,
            case.p50.as_secs_f64() * 1e3,
            case.p99.as_secs_f64() * 1e3,
        );
    }
    if let Ok(python) = env::var("AETHER_BENCH_UPSTREAM") {
        let mut rates: Vec<f64> = (0..RUNS).map(|_| upstream(&python, writes)).collect();
        rates.sort_by(f64::total_cmp);
        println!("{:<42} {:>9} {:>13.0}", "upstream 0.4.0: fsync per record", writes, rates[RUNS / 2]);
    }
}
