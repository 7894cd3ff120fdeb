//! Round trip: client A sets a key, client B receives the broadcast; one write at a time.
//!
//! With our `sync = "always"` every sample includes an `fdatasync` (a batch of one) before B can
//! see the write; upstream broadcasts before its ledger writes or fsyncs anything.

use std::time::{Duration, Instant};

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
}

/// `warmup` untimed writes, then `samples` timed ones.
pub fn run(relay: &Relay, warmup: usize, samples: usize) -> Result<Latency, String> {
    let mut a = Client::connect(relay.addr, &relay.url())?;
    let mut b = Client::connect(relay.addr, &relay.url())?;
    let mut out = Vec::with_capacity(samples);
    let mut started = Instant::now();
    for i in 0..(warmup + samples) as u64 {
        if i == warmup as u64 {
            started = Instant::now();
        }
        let key = format!("lat:{i}");
        let t0 = Instant::now();
        a.ws.send(set_frame(&key, i)).map_err(|e| format!("send: {e}"))?;
        b.wait_for(&key)?;
        let dt = t0.elapsed();
        a.wait_for(&key)?; // A gets its own echo too; it must be read, or A's queue fills
        if i >= warmup as u64 {
            out.push(dt);
        }
    }
    let wall = started.elapsed();
    a.close();
    b.close();
    out.sort();
    Ok(Latency { sorted: out, wall })
}
