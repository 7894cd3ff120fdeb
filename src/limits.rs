//! Admission primitives: the per-connection token bucket and the connection counter.
//!
//! Plain Rust, no actix. The counter hands out RAII slots, so a slot is released on every path a
//! connection can end by (close, error, auth failure, timeout, a client vanishing mid-handshake),
//! which is the bug upstream had in two places.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

/// A token bucket: `capacity` tokens, refilled at `per_second`, starting full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, per_second: f64) -> Self {
        let capacity = f64::from(capacity);
        Self { capacity, per_second, tokens: capacity, last: Instant::now() }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// Would the bucket be full at `now` (refilled to capacity)?
    pub fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.per_second >= self.capacity
    }

    /// [`TokenBucket::try_take`] at time `now`.
    pub fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts open connections, in total and per source address.
#[derive(Debug, Clone)]
pub struct ConnectionCounter {
    inner: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_source: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One held connection slot; dropping it releases the slot.
#[derive(Debug)]
pub struct ConnectionSlot {
    inner: Arc<Mutex<Counts>>,
    source: IpAddr,
}

impl ConnectionCounter {
    /// A counter with these caps.
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self { inner: Arc::default(), max_total, max_per_source }
    }

    /// Takes a slot for `source`, or `None` when either cap is reached.
    pub fn acquire(&self, source: IpAddr) -> Option<ConnectionSlot> {
        self.acquire_within(source, self.max_total, self.max_per_source)
    }

    /// Takes a slot for `source` under these caps instead of the counter's own, or `None` when
    /// either is reached. The caps may change between calls (a reload): slots already held stay,
    /// and while more are held than a lowered cap allows, new ones are refused.
    pub fn acquire_within(&self, source: IpAddr, max_total: usize, max_per_source: usize) -> Option<ConnectionSlot> {
        let mut counts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let from_source = counts.per_source.get(&source).copied().unwrap_or(0);
        if counts.total >= max_total || from_source >= max_per_source {
            return None;
        }
        counts.total += 1;
        counts.per_source.insert(source, from_source + 1);
        Some(ConnectionSlot { inner: Arc::clone(&self.inner), source })
    }

    /// Open connections in total.
    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total -= 1;
        if let Some(n) = counts.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                counts.per_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let mut bucket = TokenBucket::new(5, 10.0);
        let t0 = Instant::now();
        assert!((0..5).all(|_| bucket.try_take_at(t0)));
        assert!(!bucket.try_take_at(t0));
        assert!(bucket.try_take_at(t0 + Duration::from_millis(100)));
        assert!(!bucket.try_take_at(t0 + Duration::from_millis(100)));
        // Refill never exceeds capacity.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| bucket.try_take_at(later)).count(), 5);
    }

    #[test]
    fn slots_are_capped_and_released_on_drop() {
        let counter = ConnectionCounter::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let s1 = counter.acquire(a).unwrap();
        let _s2 = counter.acquire(a).unwrap();
        assert!(counter.acquire(a).is_none(), "per-source cap");
        let _s3 = counter.acquire(b).unwrap();
        assert!(counter.acquire(b).is_none(), "total cap");
        drop(s1);
        assert!(counter.acquire(a).is_some());
        assert_eq!(counter.total(), 2);
    }

    #[test]
    fn caps_given_per_call_apply_to_slots_already_held() {
        let counter = ConnectionCounter::new(100, 100);
        let a: IpAddr = [127, 0, 0, 1].into();
        let held: Vec<_> = (0..3).map(|_| counter.acquire_within(a, 10, 10).unwrap()).collect();
        assert!(counter.acquire_within(a, 10, 3).is_none(), "lowered per-source cap, 3 held");
        assert!(counter.acquire_within(a, 2, 10).is_none(), "lowered total cap, 3 held");
        assert!(counter.acquire_within(a, 10, 4).is_some(), "raised again");
        assert_eq!(counter.total(), 3, "the refused and the dropped slot are not counted");
        drop(held);
    }
}
