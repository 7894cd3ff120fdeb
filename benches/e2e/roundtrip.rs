//! Round trip: client A sets a key, client B receives the broadcast; one write at a time.
//!
//! With our `sync = "always"` every sample includes an `fdatasync` (a batch of one) before B can
//! see the write; upstream broadcasts before its ledger writes or fsyncs anything.
//!
//! The disk's own cost is measured in the same run, interleaved with the samples: after each
//! round trip (the relay idle again), the harness appends one ledger-sized record to a file in
//! the ledger's directory and `fdatasync`s it. So "round trip minus fdatasync" compares the two
//! under the same conditions, sample for sample.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    client::{Client, set_frame},
    procs::Relay,
};

/// Sorted samples and the wall time they took.
pub struct Latency {
    /// Round trips, sorted.
    pub sorted: Vec<Duration>,
    /// Wall time of the timed samples (each also read back by its writer).
    pub wall: Duration,
    /// One small append + `fdatasync` to a file beside the ledger after each sample, sorted
    /// (empty when not asked for).
    pub fdatasync: Vec<Duration>,
}

/// A file beside the ledger that takes small appends, each `fdatasync`ed, as the ledger does.
pub struct Probe {
    file: File,
    line: Vec<u8>,
}

impl Probe {
    /// A probe file in `dir` (the ledger's directory).
    pub fn open(dir: &Path) -> Result<Probe, String> {
        let path = dir.join("fdatasync-probe.jsonl");
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| format!("probe: {e}"))?;
        // A record the size of the relay's for these writes.
        let line = br#"{"kind":"set","key":"lat:1234","value":{"i":1234,"tag":"bench"},"stamp":{"p":1700000000000000000,"l":0,"n":"0123456789abcdef"}}"#;
        Ok(Probe { file, line: [&line[..], b"\n"].concat() })
    }

    /// One append + `fdatasync`, timed.
    pub fn time(&mut self) -> Result<Duration, String> {
        let t0 = Instant::now();
        self.file.write_all(&self.line).map_err(|e| format!("probe write: {e}"))?;
        self.file.sync_data().map_err(|e| format!("probe fdatasync: {e}"))?;
        Ok(t0.elapsed())
    }
}

/// `warmup` untimed writes, then `samples` timed ones; with `probe`, one `fdatasync` of a small
/// append beside the relay's ledger after each.
pub fn run(relay: &Relay, warmup: usize, samples: usize, probe: bool) -> Result<Latency, String> {
    let mut a = Client::connect(relay.addr, &relay.url())?;
    let mut b = Client::connect(relay.addr, &relay.url())?;
    let mut probe = match (probe, relay.ledger.parent()) {
        (true, Some(dir)) => Some(Probe::open(dir)?),
        _ => None,
    };
    let mut out = Vec::with_capacity(samples);
    let mut fdatasync = Vec::with_capacity(if probe.is_some() { samples } else { 0 });
    let mut wall = Duration::ZERO;
    for i in 0..(warmup + samples) as u64 {
        let key = format!("lat:{i}");
        let t0 = Instant::now();
        a.ws.send(set_frame(&key, i)).map_err(|e| format!("send: {e}"))?;
        b.wait_for(&key)?;
        let dt = t0.elapsed();
        a.wait_for(&key)?; // A gets its own echo too; it must be read, or A's queue fills
        let timed = i >= warmup as u64;
        if timed {
            out.push(dt);
            wall += t0.elapsed();
        }
        if let Some(probe) = &mut probe {
            let d = probe.time()?;
            if timed {
                fdatasync.push(d);
            }
        }
    }
    a.close();
    b.close();
    out.sort();
    fdatasync.sort();
    Ok(Latency { sorted: out, wall, fdatasync })
}
