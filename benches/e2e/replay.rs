//! Replay and boot: a 1,000,000-record ledger (200,000 keys, 80% of records overwrite) read back
//! at boot, and a relay booting from a snapshot of it.
//!
//! - **replay**, in-process: `Ledger::open` replaying every record through a `Clock` and an
//!   `lww::Replay` (then the persistent `LwwMap`), as our relay's boot does; upstream: `ChronoLedger.boot()` into a `MeshNode`
//!   (`benches/upstream/replay.py`, a fresh interpreter per run, import not timed). Same file,
//!   freshly written, so from the page cache. Median of `runs`.
//! - **boot with a snapshot**: the ledger compacted offline (ours: `aether-actix compact --config
//!   FILE`; upstream: `python -m aether_core.compact LEDGER --rotate`, which likewise archives the
//!   ledger and leaves an empty one beside the snapshot), then the whole relay process started and
//!   timed from spawn until it listens (ours logs `listening on`, upstream's driver prints its URL).

use std::{
    fs::{self, File},
    io::{BufWriter, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use aether_actix::{
    hlc::{Clock, Stamp},
    ledger::{Ledger, SyncMode, record},
    lww::{self, Op},
};
use serde_json::json;

use crate::{
    procs::{Launch, OursConfig, Relay, stop_and_check, write_ours_config},
    util::{median, upstream_script},
};

/// A plausible wall clock in nanoseconds (late 2026), the base of the generated stamps.
const BASE_NS: u64 = 1_795_901_405_000_000_000;
/// Multiplier that scatters record `i` over the key space; a prime, so for any key count that is
/// not a multiple of it every block of `keys` records writes every key exactly once.
const SCATTER: u64 = 104_729;

/// Writes `records` set records over `keys` keys; returns the file size in bytes.
pub fn generate(path: &Path, records: usize, keys: usize) -> u64 {
    assert!(keys > 0 && keys <= records, "need 0 < keys <= records");
    assert!(!(keys as u64).is_multiple_of(SCATTER), "the key count must not be a multiple of {SCATTER}");
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

/// One in-process replay, as the relay boots (`Ledger::open_replayed`: every room's persistent
/// map, and the clock witnessing the newest stamp); returns (time, records, live keys).
pub fn replay_once(path: &Path) -> (Duration, u64, usize) {
    let mut clock = Clock::new("bench");
    let started = Instant::now();
    let (ledger, stats, replayed) = Ledger::open_replayed(path, SyncMode::Always).expect("open ledger");
    if let Some(newest) = &replayed.newest {
        clock.witness(newest);
    }
    let elapsed = started.elapsed();
    assert_eq!((stats.corrupt, stats.truncated_bytes), (0, 0), "clean file");
    drop(ledger); // releases the lock for the next run
    let live = replayed.rooms.values().map(lww::LwwMap::live_len).sum();
    (elapsed, stats.records, live)
}

/// The same replay op by op (`Ledger::open` into an `lww::Replay`), as the relay booted before
/// #14 and as the offline commands still read: the reference the table shows it beside.
pub fn replay_op_by_op(path: &Path) -> Duration {
    let mut clock = Clock::new("bench");
    let mut map = lww::Replay::default();
    let started = Instant::now();
    let (ledger, _) = Ledger::open(path, SyncMode::Always, |op| {
        clock.witness(&op.stamp);
        map.apply(op);
    })
    .expect("open ledger");
    let map = map.finish();
    let elapsed = started.elapsed();
    drop((ledger, map));
    elapsed
}

/// Reads the first frame a WebSocket client gets from `relay`; it must be `hello`.
fn first_hello(relay: &Relay) -> Result<(), String> {
    let stream =
        TcpStream::connect_timeout(&relay.addr, Duration::from_secs(60)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| format!("timeout: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    let (mut ws, _) = tungstenite::client(relay.url(), stream).map_err(|e| format!("handshake: {e}"))?;
    loop {
        match ws.read().map_err(|e| format!("read: {e}"))? {
            tungstenite::Message::Text(text) => {
                let v: serde_json::Value = serde_json::from_str(text.as_str()).map_err(|e| format!("{e}"))?;
                return if v["type"] == "hello" { Ok(()) } else { Err(format!("first frame {text:.80}")) };
            }
            tungstenite::Message::Close(_) => return Err("closed before hello".into()),
            _ => {}
        }
    }
}

/// Process start to the first `hello` on a fresh relay, `runs` times: ours on `config` (whose
/// ledger is `ledger`), or upstream's on `ledger` when `config` is `None`. Every run is stopped
/// gracefully and checked.
fn boot_to_hello(
    launch: &Launch,
    config: Option<&Path>,
    ledger: &Path,
    runs: usize,
    what: &str,
    out: &mut Replay,
) -> Timed {
    let mut timed = Timed::default();
    for run in 1..=runs {
        let started = Instant::now();
        let relay = match config {
            Some(config) => Some(Relay::ours_with(launch, config, ledger.to_owned())),
            None => Relay::upstream_with(launch, ledger.to_owned()),
        };
        let Some(mut relay) = relay else { break };
        match first_hello(&relay) {
            Ok(()) => {
                let s = started.elapsed().as_secs_f64();
                println!(
                    "  {what}, {} #{run}: {s:.3} s to hello (listening at {:.3} s)",
                    relay.kind,
                    relay.boot.as_secs_f64()
                );
                timed.runs.push(s);
            }
            Err(e) => out.notes.push(format!("{what}, {}: {e}", relay.kind)),
        }
        out.notes.extend(stop_and_check(&mut relay, what, None));
    }
    timed
}

/// Medians and runs, for the report.
#[derive(Default)]
pub struct Timed {
    /// Each run, s.
    pub runs: Vec<f64>,
}

impl Timed {
    /// Median, s.
    pub fn median(&self) -> Option<f64> {
        (!self.runs.is_empty()).then(|| median(self.runs.clone()))
    }
}

/// Everything this scenario measures.
#[derive(Default)]
pub struct Replay {
    /// Records in the ledger.
    pub records: u64,
    /// Its size, bytes.
    pub bytes: u64,
    /// In-process replay, ours and upstream's.
    pub replay: (Timed, Timed),
    /// Offline compaction, ours and upstream's (one run each).
    pub compact: (Option<f64>, Option<f64>),
    /// Snapshot size, ours and upstream's, bytes.
    pub snapshot_bytes: (u64, u64),
    /// Process start to listening with the snapshot, ours and upstream's.
    pub boot: (Timed, Timed),
    /// In-process replay op by op (the boot before #14), ours.
    pub op_by_op: Timed,
    /// Process start to the first `hello` on the boot ledger, ours and upstream's.
    pub hello: (Timed, Timed),
    /// Process start to the first `hello` with a snapshot of `snapshot_keys` keys and an
    /// empty ledger, ours and upstream's (on the same snapshot file).
    pub snapshot_hello: (Timed, Timed),
    /// Anything that went wrong.
    pub notes: Vec<String>,
}

/// Sizes of the boot measures (#14).
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    /// Records of the boot ledger.
    pub records: usize,
    /// Its keys.
    pub keys: usize,
    /// Keys of the snapshot-only boot.
    pub snapshot_keys: usize,
}

/// Boot to the first `hello` (#14): a `boot.records`-record ledger over `boot.keys` keys, both
/// relays; then a snapshot of `boot.snapshot_keys` keys beside an empty ledger (written by our
/// offline compaction, upstream's format), both relays on the same file.
pub fn run_boot(launch: &Launch, boot: Boot, runs: usize, out: &mut Replay) {
    let dir = crate::util::temp_dir();
    let path = dir.path().join("ledger.jsonl");
    let bytes = generate(&path, boot.records, boot.keys);
    println!(
        "  boot ledger: {} records over {} keys, {:.1} MiB",
        boot.records,
        boot.keys,
        bytes as f64 / (1 << 20) as f64
    );
    let config = write_ours_config(dir.path(), &path, &OursConfig::default());
    out.hello.0 = boot_to_hello(launch, Some(&config), &path, runs, "boot to hello", out);
    if launch.python.is_some() {
        let up_dir = dir.path().join("upstream");
        fs::create_dir_all(&up_dir).expect("mkdir");
        let up_ledger = up_dir.join("ledger.jsonl");
        fs::copy(&path, &up_ledger).expect("copy ledger");
        out.hello.1 = boot_to_hello(launch, None, &up_ledger, runs, "boot to hello", out);
    }
    drop(dir);

    // The snapshot-only boot: every key once, compacted offline into a snapshot, empty ledger.
    let dir = crate::util::temp_dir();
    let path = dir.path().join("ledger.jsonl");
    generate(&path, boot.snapshot_keys, boot.snapshot_keys);
    let config = write_ours_config(dir.path(), &path, &OursConfig::default());
    let compact = Command::new(&launch.bin).arg("compact").arg("--config").arg(&config).output();
    match compact {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            out.notes.push(format!("snapshot boot: compact failed: {}", String::from_utf8_lossy(&o.stderr).trim()));
            return;
        }
        Err(e) => {
            out.notes.push(format!("snapshot boot: compact: {e}"));
            return;
        }
    }
    let snapshot = snapshot_of(&path);
    println!(
        "  snapshot of {} keys: {:.1} MiB, ledger {} bytes",
        boot.snapshot_keys,
        fs::metadata(&snapshot).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64,
        fs::metadata(&path).map_or(0, |m| m.len())
    );
    out.snapshot_hello.0 = boot_to_hello(launch, Some(&config), &path, runs, "snapshot boot to hello", out);
    if launch.python.is_some() {
        let up_dir = dir.path().join("upstream");
        fs::create_dir_all(&up_dir).expect("mkdir");
        let up_ledger = up_dir.join("ledger.jsonl");
        fs::write(&up_ledger, b"").expect("empty ledger");
        fs::copy(&snapshot, snapshot_of(&up_ledger)).expect("copy snapshot");
        out.snapshot_hello.1 = boot_to_hello(launch, None, &up_ledger, runs, "snapshot boot to hello", out);
    }
}

/// Runs the whole scenario; upstream's parts when `launch.python` is set.
pub fn run(launch: &Launch, records: usize, keys: usize, runs: usize) -> Replay {
    let dir = crate::util::temp_dir();
    let path = dir.path().join("ledger.jsonl");
    let started = Instant::now();
    let mut out = Replay { records: records as u64, bytes: generate(&path, records, keys), ..Replay::default() };
    println!(
        "  generated {records} records over {keys} keys ({:.0}% overwrites), {:.1} MiB, in {:.1} s",
        100.0 * (records - keys) as f64 / records as f64,
        out.bytes as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64(),
    );

    for run in 1..=runs {
        let (elapsed, n, live) = replay_once(&path);
        assert_eq!((n, live), (records as u64, keys), "every record replayed, one live entry per key");
        println!("  replay, aether-actix #{run}: {:.3} s", elapsed.as_secs_f64());
        out.replay.0.runs.push(elapsed.as_secs_f64());
    }
    for run in 1..=runs {
        let elapsed = replay_op_by_op(&path);
        println!("  replay op by op (before #14), aether-actix #{run}: {:.3} s", elapsed.as_secs_f64());
        out.op_by_op.runs.push(elapsed.as_secs_f64());
    }
    if let Some(python) = &launch.python {
        for run in 1..=runs {
            let result = python_json(Command::new(python).arg(upstream_script("replay.py")).arg(&path));
            match result {
                Ok(v) if v["records"].as_u64() == Some(records as u64) => {
                    let s = v["seconds"].as_f64().unwrap_or(f64::NAN);
                    println!("  replay, upstream #{run}: {s:.3} s");
                    out.replay.1.runs.push(s);
                }
                Ok(v) => out.notes.push(format!("upstream replay: unexpected result {v}")),
                Err(e) => out.notes.push(format!("upstream replay: {e}")),
            }
        }
    }

    // Ours: compact a copy offline, then boot the relay on it.
    let ours_dir = dir.path().join("ours");
    fs::create_dir_all(&ours_dir).expect("mkdir");
    let ours_ledger = ours_dir.join("ledger.jsonl");
    fs::copy(&path, &ours_ledger).expect("copy ledger");
    let config = write_ours_config(&ours_dir, &ours_ledger, &OursConfig::default());
    let t0 = Instant::now();
    let compact = Command::new(&launch.bin).arg("compact").arg("--config").arg(&config).output();
    match compact {
        Ok(o) if o.status.success() => {
            out.compact.0 = Some(t0.elapsed().as_secs_f64());
            println!(
                "  compact, aether-actix: {:.2} s: {}",
                t0.elapsed().as_secs_f64(),
                String::from_utf8_lossy(&o.stdout).trim()
            );
        }
        Ok(o) => out.notes.push(format!("aether-actix compact failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => out.notes.push(format!("aether-actix compact: {e}")),
    }
    out.snapshot_bytes.0 = fs::metadata(snapshot_of(&ours_ledger)).map(|m| m.len()).unwrap_or(0);
    if out.compact.0.is_some() {
        for run in 1..=runs {
            let mut relay = Relay::ours_with(launch, &config, ours_ledger.clone());
            let replayed = relay.log_lines().into_iter().find(|l| l.contains(" replayed in "));
            let expected = format!("{keys} snapshot entries");
            if !replayed.as_deref().is_some_and(|l| l.contains(&expected)) {
                out.notes.push(format!("aether-actix boot: expected {expected}, log says {replayed:?}"));
            }
            println!("  boot with snapshot, aether-actix #{run}: {:.3} s", relay.boot.as_secs_f64());
            out.boot.0.runs.push(relay.boot.as_secs_f64());
            relay.wait_healthy();
            out.notes.extend(stop_and_check(&mut relay, "boot with snapshot", None));
        }
    }

    // Upstream: its compactor (with --rotate) on a copy, then its relay on it.
    if let Some(python) = &launch.python {
        let up_dir = dir.path().join("upstream");
        fs::create_dir_all(&up_dir).expect("mkdir");
        let up_ledger = up_dir.join("ledger.jsonl");
        fs::copy(&path, &up_ledger).expect("copy ledger");
        let t0 = Instant::now();
        let compact =
            Command::new(python).args(["-m", "aether_core.compact", "--rotate", "--quiet"]).arg(&up_ledger).output();
        match compact {
            Ok(o) if o.status.success() => {
                out.compact.1 = Some(t0.elapsed().as_secs_f64());
                println!("  compact, upstream: {:.2} s", t0.elapsed().as_secs_f64());
            }
            Ok(o) => out.notes.push(format!("upstream compact failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => out.notes.push(format!("upstream compact: {e}")),
        }
        out.snapshot_bytes.1 = fs::metadata(snapshot_of(&up_ledger)).map(|m| m.len()).unwrap_or(0);
        if out.compact.1.is_some() {
            for run in 1..=runs {
                let Some(mut relay) = Relay::upstream_with(launch, up_ledger.clone()) else { break };
                println!("  boot with snapshot, upstream #{run}: {:.3} s", relay.boot.as_secs_f64());
                out.boot.1.runs.push(relay.boot.as_secs_f64());
                out.notes.extend(stop_and_check(&mut relay, "boot with snapshot", None));
                let expected = format!("{keys} snapshot entries");
                if !relay.log_lines().iter().any(|l| l.contains(&expected)) {
                    out.notes.push(format!("upstream boot: no {expected:?} in its log"));
                }
            }
        }
    }
    out
}

fn snapshot_of(ledger: &Path) -> std::path::PathBuf {
    let mut name = ledger.as_os_str().to_owned();
    name.push(".snapshot.json");
    name.into()
}

/// Runs a driver that prints one JSON line; returns it.
pub fn python_json(cmd: &mut Command) -> Result<serde_json::Value, String> {
    let out = cmd.output().map_err(|e| format!("cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).map_err(|e| format!("bad output {stdout:?}: {e}"))
}
