//! Durable ledger appends in-process, without the network.
//!
//! - **64 concurrent appenders** (the target's shape): 64 tasks, each appending one record and
//!   waiting until it is durable before the next, through the relay's group commit: a batcher
//!   (the `StateActor`'s role) takes everything queued (at most 8,192 ops) and hands it to one
//!   committer thread (the ledger actor's role), which encodes it with `record::encode` and writes
//!   it with one `Ledger::append` (write + `fdatasync`) while the next batch gathers. Upstream:
//!   64 asyncio tasks, each `MeshNode.set()` + `ChronoLedger.flush()`
//!   (`benches/upstream/ledger_write.py`), whose writer does `os.write` + `os.fsync` per record.
//! - **one appender**, one record and one `fdatasync` per append: our `Ledger::append` with
//!   `SyncMode::Always`; upstream: the same script with one task.
//! - **256 records per append** (ours only): the ceiling of the file itself with large batches.
//!
//! Each case runs `runs` times on a fresh ledger; the median is reported. The batcher is the
//! bench's own code (the relay's actors carry protocol state this measurement does not need);
//! what it measures is the ledger: encode, write, `fdatasync`, and the batching policy.

use std::{
    thread,
    time::{Duration, Instant},
};

use aether_actix::{
    hlc::{Clock, Stamp},
    ledger::{Ledger, SyncMode, record},
    lww::Op,
};
use serde_json::json;

use crate::{
    replay::python_json,
    util::{median, temp_dir, upstream_script},
};

/// Most ops per batch, as the relay's `StateActor` caps them.
const MAX_BATCH_OPS: usize = 8192;
const BASE_NS: u64 = 1_795_901_405_000_000_000;

fn op(i: u64) -> Op {
    Op::set(format!("obj:{:06}", i % 200_000), json!({"i": i, "tag": "bench"}), Stamp::new(BASE_NS + i, 0, "bench"))
}

/// One group-commit run.
pub struct Group {
    /// Durable records per second.
    pub rate: f64,
    /// Mean records per append.
    pub mean_batch: f64,
    /// Append-to-durable latency of one record, p50 and p99.
    pub latency: (Duration, Duration),
}

type Ack = tokio::sync::oneshot::Sender<()>;

/// `appenders` concurrent appenders for `secs`, through the group commit.
///
/// As in the relay: the appenders are tasks on one runtime thread (sessions); a batcher task
/// (the `StateActor`'s part) stamps what has queued and hands it to the committer thread (the
/// ledger actor), which encodes and appends it while the next batch gathers; when the batch is
/// durable, the batcher acknowledges each of its appenders.
pub fn group_commit(appenders: usize, secs: f64) -> Group {
    let dir = temp_dir();
    let (mut ledger, _) = Ledger::open(&dir.path().join("ledger.jsonl"), SyncMode::Always, |_| {}).expect("open");
    let (to_committer, committer_rx) = std::sync::mpsc::channel::<(Vec<Op>, tokio::sync::oneshot::Sender<Vec<Op>>)>();
    let committer = thread::spawn(move || {
        let mut buf = Vec::new();
        for (batch, reply) in committer_rx {
            buf.clear();
            for op in &batch {
                record::encode(op, &mut buf);
            }
            ledger.append(&buf).expect("append");
            let _ = reply.send(batch);
        }
    });
    let system = actix::System::new();
    let (batches, ops, elapsed, mut latencies) = system.block_on(async move {
        let (to_batcher, mut requests) = tokio::sync::mpsc::unbounded_channel::<(Op, Ack)>();
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = (0..appenders)
            .map(|id| {
                let to_batcher = to_batcher.clone();
                actix::spawn(async move {
                    let mut latencies = Vec::new();
                    for n in (id as u64 * 1_000_000).. {
                        let t0 = Instant::now();
                        if t0 >= deadline {
                            break;
                        }
                        let (ack, acked) = tokio::sync::oneshot::channel();
                        if to_batcher.send((op(n), ack)).is_err() || acked.await.is_err() {
                            break;
                        }
                        latencies.push(t0.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        drop(to_batcher);
        let mut clock = Clock::new("bench");
        let (mut batches, mut ops, mut last_durable) = (0u64, 0u64, started);
        while let Some(first) = requests.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH_OPS
                && let Ok(more) = requests.try_recv()
            {
                batch.push(more);
            }
            let (mut records, acks): (Vec<Op>, Vec<Ack>) = batch.into_iter().unzip();
            for op in &mut records {
                op.stamp = clock.tick(); // the relay stamps each write as it accepts it
            }
            let (reply, durable) = tokio::sync::oneshot::channel();
            to_committer.send((records, reply)).expect("committer");
            durable.await.expect("committer replies");
            batches += 1;
            ops += acks.len() as u64;
            last_durable = Instant::now();
            for ack in acks {
                let _ = ack.send(());
            }
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("appender task"));
        }
        (batches, ops, last_durable - started, latencies)
    });
    committer.join().expect("committer thread");
    latencies.sort();
    let pct = |p| crate::util::percentile(&latencies, p);
    Group {
        rate: ops as f64 / elapsed.as_secs_f64(),
        mean_batch: ops as f64 / batches.max(1) as f64,
        latency: (pct(0.50), pct(0.99)),
    }
}

/// `records` records in appends of `batch`, one `fdatasync` each; records per second.
pub fn sequential(records: u64, batch: u64) -> f64 {
    let dir = temp_dir();
    let (mut ledger, _) = Ledger::open(&dir.path().join("ledger.jsonl"), SyncMode::Always, |_| {}).expect("open");
    let batches: Vec<Vec<u8>> = (0..records.div_ceil(batch))
        .map(|b| {
            let mut buf = Vec::new();
            for i in b * batch..((b + 1) * batch).min(records) {
                record::encode(&op(i), &mut buf);
            }
            buf
        })
        .collect();
    let started = Instant::now();
    for bytes in &batches {
        ledger.append(bytes).expect("append");
    }
    records as f64 / started.elapsed().as_secs_f64()
}

/// Upstream's writer: `records` appends by `appenders` tasks; records per second.
pub fn upstream(python: &std::path::Path, records: u64, appenders: usize) -> Result<f64, String> {
    let dir = temp_dir();
    let v = python_json(
        std::process::Command::new(python)
            .arg(upstream_script("ledger_write.py"))
            .arg(dir.path().join("ledger.jsonl"))
            .arg(records.to_string())
            .arg(appenders.to_string()),
    )?;
    let (n, s) = (v["records"].as_f64().unwrap_or(0.0), v["seconds"].as_f64().unwrap_or(f64::NAN));
    if n <= 0.0 {
        return Err(format!("upstream wrote nothing: {v}"));
    }
    Ok(n / s)
}

/// Everything this scenario measures (medians).
pub struct Appends {
    /// 64 (or N) appenders: ours, upstream's.
    pub group: (Group, Option<f64>),
    /// One appender, an fsync per record: ours, upstream's.
    pub single: (f64, Option<f64>),
    /// 256-record appends, ours.
    pub batched: f64,
    /// Appenders in the group case.
    pub appenders: usize,
    /// Anything that went wrong.
    pub notes: Vec<String>,
}

/// Runs every case `runs` times; `records` per single-appender run, `secs` per group run.
pub fn run(python: Option<&std::path::Path>, appenders: usize, records: u64, secs: f64, runs: usize) -> Appends {
    let mut notes = Vec::new();
    let mut groups: Vec<Group> = (0..runs).map(|_| group_commit(appenders, secs)).collect();
    groups.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let group = groups.swap_remove(groups.len() / 2);
    let single = median((0..runs).map(|_| sequential(records, 1)).collect());
    let batched = median((0..runs).map(|_| sequential(records * 25, 256)).collect());
    let mut upstream_median = |n: usize| -> Option<f64> {
        let python = python?;
        let rates: Vec<f64> = (0..runs)
            .filter_map(|_| upstream(python, records, n).map_err(|e| notes.push(format!("upstream ledger: {e}"))).ok())
            .collect();
        (!rates.is_empty()).then(|| median(rates))
    };
    let up_group = upstream_median(appenders);
    let up_single = upstream_median(1);
    Appends { group: (group, up_group), single: (single, up_single), batched, appenders, notes }
}
