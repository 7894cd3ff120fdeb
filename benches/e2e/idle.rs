//! Resident memory per idle connection: the relay's `VmRSS` after N idle clients connected, minus
//! before, divided by N.
//!
//! The clients connect at a modest rate (each reads `hello` and `snapshot` and sends one first
//! frame, as a tab that opens and then idles), and are then held by a few poller threads that keep
//! reading, so they answer the relays' pings as browsers do.

use std::{thread, time::Duration};

use crate::{
    poller::{Pollers, Sink},
    procs::Relay,
};

struct Count(u64);

impl Sink for Count {
    fn frame(&mut self, _: &str, _: std::time::Instant) {
        self.0 += 1;
    }
}

/// The outcome of one run.
pub struct Idle {
    /// Connections held.
    pub conns: usize,
    /// Relay RSS before the first and after the last connection, KiB.
    pub rss_kib: (u64, u64),
    /// Time to connect them all.
    pub connect: Duration,
    /// Anything that went wrong with the connections.
    pub errors: Vec<String>,
    /// Anything odd about the relay (its shutdown, its log).
    pub notes: Vec<String>,
}

impl Idle {
    /// KiB per connection.
    pub fn per_conn_kib(&self) -> f64 {
        self.rss_kib.1.saturating_sub(self.rss_kib.0) as f64 / self.conns.max(1) as f64
    }
}

/// Connects `conns` clients at `rate`/s on `pollers` threads, lets the relay settle for `settle`,
/// reads its RSS, then stops it (while the clients still answer) and drops the clients.
pub fn run(relay: &mut Relay, conns: usize, rate: f64, pollers: usize, settle: Duration) -> Idle {
    let mut out =
        Idle { conns, rss_kib: (relay.rss_kib(), 0), connect: Duration::ZERO, errors: Vec::new(), notes: Vec::new() };
    let mut pool = Pollers::spawn(pollers, || Count(0));
    match pool.connect(relay.addr, &relay.url(), conns, rate) {
        Ok(took) => out.connect = took,
        Err(e) => out.errors.push(e),
    }
    thread::sleep(settle);
    out.rss_kib.1 = relay.rss_kib();
    let stopping = std::time::Instant::now();
    out.notes = crate::procs::stop_and_check(relay, &format!("{conns} idle connections"), None);
    let mut frames = 0;
    for (count, ended) in pool.finish() {
        frames += count.0;
        for (at, why) in ended.reasons {
            if at < stopping {
                out.errors.push(format!("a connection ended before the relay was stopped: {why}"));
            }
        }
    }
    if frames > 0 {
        // Nobody writes and nobody leaves: after the greeting an idle connection gets no frame.
        out.errors.push(format!("{frames} unexpected frames on idle connections"));
    }
    out.errors = crate::util::grouped(out.errors).into_iter().map(|(n, e)| format!("{n}x {e}")).collect();
    out
}
