//! Hybrid logical clock stamps: the total order behind every write.
//!
//! A [`Stamp`] is `(physical ns, logical counter, node id)` compared as a tuple, exactly as upstream
//! compares its `HybridLogicalClock`. [`Clock`] issues stamps for local writes and absorbs the stamps
//! of everything it merges, so a local write always orders after everything this node has seen.
//!
//! Plain Rust: no actix, no I/O besides reading the wall clock (and that is injectable for tests).

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// One point of the hybrid logical clock. Field order is the comparison order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Physical time, nanoseconds since the Unix epoch.
    pub p: u64,
    /// Logical counter, for events within one physical nanosecond reading.
    pub l: u64,
    /// Node id of the writer; breaks ties between nodes.
    pub n: String,
}

impl Stamp {
    /// A stamp at `p` ns with logical counter `l` from `node`.
    pub fn new(p: u64, l: u64, node: impl Into<String>) -> Self {
        Self { p, l, n: node.into() }
    }
}

impl Stamp {
    /// Is the logical counter at most [`MAX_LOGICAL`]? Stamps from peers must be.
    pub fn counter_in_range(&self) -> bool {
        self.l <= MAX_LOGICAL
    }
}

impl fmt::Display for Stamp {
    /// Upstream's `encode()` form: `{p:020}.{l:010}.{node}`, sortable as text for equal-width ids.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}.{:010}.{}", self.p, self.l, self.n)
    }
}

/// The largest logical counter a stamp may carry.
///
/// The counter only counts events that share one physical reading (or that happen while the wall
/// clock lags behind a stamp already seen), so real stamps stay far below it: four billion writes
/// within one nanosecond, or within the few seconds of drift the mesh allows, cannot happen. A peer
/// op above it is refused ([`Stamp::counter_in_range`]), and the clock never counts past it: it
/// carries into the physical part instead, so the counter can never wrap to a smaller stamp.
pub const MAX_LOGICAL: u64 = u32::MAX as u64;

/// Nanoseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn wall_clock_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// The clock of one node: issues monotonically increasing stamps and absorbs remote ones.
#[derive(Clone, Debug)]
pub struct Clock {
    node: String,
    p: u64,
    l: u64,
}

impl Clock {
    /// A clock for `node` that has seen nothing yet.
    pub fn new(node: impl Into<String>) -> Self {
        Self { node: node.into(), p: 0, l: 0 }
    }

    /// The node id this clock stamps with.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The newest stamp this clock has issued or observed (with this node's id).
    pub fn last(&self) -> Stamp {
        Stamp::new(self.p, self.l, self.node.clone())
    }

    /// Issues the stamp for a local write, reading the wall clock.
    pub fn tick(&mut self) -> Stamp {
        self.tick_at(wall_clock_ns())
    }

    /// Issues the stamp for a local write at wall time `now_ns`.
    ///
    /// If the wall clock moved past everything seen, the stamp is `(now, 0)`; otherwise the logical
    /// counter advances, so stamps stay strictly increasing even when the wall clock steps back.
    pub fn tick_at(&mut self, now_ns: u64) -> Stamp {
        if now_ns > self.p {
            self.set(now_ns, 0);
        } else {
            self.set(self.p, self.l.saturating_add(1));
        }
        self.last()
    }

    /// Absorbs a stamp seen in a merged op (replay, peer), at wall time `now_ns`, so that the next
    /// local stamp orders after it. Same rule as upstream's `observe`.
    pub fn observe_at(&mut self, remote: &Stamp, now_ns: u64) {
        let m = now_ns.max(self.p).max(remote.p);
        let l = if m == self.p && m == remote.p {
            self.l.max(remote.l).saturating_add(1)
        } else if m == self.p {
            self.l.saturating_add(1)
        } else if m == remote.p {
            remote.l.saturating_add(1)
        } else {
            0
        };
        self.set(m, l);
    }

    /// Moves the clock to `(p, l)`. A counter past [`MAX_LOGICAL`] carries into the physical
    /// part (one nanosecond later, counter 0), which orders after every `(p, _)`: the clock stays
    /// strictly increasing and never wraps, whatever stamps it was shown.
    fn set(&mut self, p: u64, l: u64) {
        if l > MAX_LOGICAL {
            self.p = p.saturating_add(1);
            self.l = 0;
        } else {
            self.p = p;
            self.l = l;
        }
    }

    /// [`Clock::observe_at`] with the wall clock.
    pub fn observe(&mut self, remote: &Stamp) {
        self.observe_at(remote, wall_clock_ns());
    }

    /// Absorbs a stamp without reading the wall clock: only ensures later ticks order after it.
    /// Used by replay, where reading the clock once per record would dominate the cost.
    pub fn witness(&mut self, remote: &Stamp) {
        if (remote.p, remote.l) > (self.p, self.l) {
            self.p = remote.p;
            self.l = remote.l;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_order_as_tuples_with_node_tiebreak() {
        assert!(Stamp::new(1, 9, "z") < Stamp::new(2, 0, "a"));
        assert!(Stamp::new(2, 0, "z") < Stamp::new(2, 1, "a"));
        assert!(Stamp::new(2, 1, "a") < Stamp::new(2, 1, "b"));
        // Node ids compare by code point, as Python strings do.
        assert!(Stamp::new(2, 1, "B") < Stamp::new(2, 1, "a"));
    }

    #[test]
    fn tick_is_strictly_monotonic_even_when_wall_clock_steps_back() {
        let mut clock = Clock::new("a");
        let s1 = clock.tick_at(100);
        let s2 = clock.tick_at(100);
        let s3 = clock.tick_at(50);
        let s4 = clock.tick_at(200);
        assert!(s1 < s2 && s2 < s3 && s3 < s4);
        assert_eq!((s3.p, s3.l), (100, 2));
        assert_eq!((s4.p, s4.l), (200, 0));
    }

    #[test]
    fn observe_moves_past_remote_stamp() {
        let mut clock = Clock::new("a");
        clock.tick_at(10);
        clock.observe_at(&Stamp::new(500, 7, "b"), 20);
        let next = clock.tick_at(30);
        assert!(next > Stamp::new(500, 7, "b"));
        assert_eq!((next.p, next.l), (500, 9));
    }

    #[test]
    fn witness_never_moves_backwards() {
        let mut clock = Clock::new("a");
        clock.witness(&Stamp::new(5, 5, "x"));
        clock.witness(&Stamp::new(4, 9, "x"));
        assert_eq!((clock.last().p, clock.last().l), (5, 5));
    }

    #[test]
    fn counter_never_wraps_it_carries_into_the_physical_part() {
        let mut clock = Clock::new("a");
        let hostile = Stamp::new(1_000, u64::MAX, "peer");
        assert!(!hostile.counter_in_range());
        clock.observe_at(&hostile, 10);
        let next = clock.tick_at(10);
        assert!(next > hostile, "{next} must order after {hostile}");
        assert_eq!((next.p, next.l), (1_001, 1));
        // Replay (witness) of such a stamp, then local writes: still after it, still increasing.
        let mut replayed = Clock::new("a");
        replayed.witness(&hostile);
        let (s1, s2) = (replayed.tick_at(10), replayed.tick_at(10));
        assert!(hostile < s1 && s1 < s2);
        // At the bound exactly, the next tick carries.
        let mut edge = Clock::new("a");
        edge.witness(&Stamp::new(5, MAX_LOGICAL, "x"));
        assert_eq!((edge.tick_at(1).p, edge.last().l), (6, 0));
    }

    #[test]
    fn display_matches_upstream_encode() {
        assert_eq!(Stamp::new(12, 3, "alpha").to_string(), "00000000000000000012.0000000003.alpha");
    }
}
