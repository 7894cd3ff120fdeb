//! The ledger's health, published by the ledger thread and read by `/healthz` and `/metrics`
//! without a message: a probe never queues behind a long `fdatasync` or a compaction on the one
//! ledger thread, and it still sees a ledger that can no longer write.
//!
//! The lock is held only to copy a few fields, never across I/O.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// An append (write + `fdatasync`, not a compaction) running longer than this makes the ledger
/// `degraded`: the disk has stopped answering, and every write waits on it.
pub const APPEND_STALL: Duration = Duration::from_secs(30);

/// What the ledger thread is doing right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// Writing and syncing a batch.
    Appending,
    /// Folding the ledger into a snapshot (may take long; appends wait, health does not).
    Compacting,
}

#[derive(Clone, Debug, Default)]
struct Inner {
    bytes: u64,
    last_ok: Option<SystemTime>,
    /// The first failure of the current run of failures, and the latest error.
    failing: Option<(SystemTime, String)>,
    failed_appends: u64,
    busy: Option<(Busy, SystemTime, Instant)>,
    last_compaction_error: Option<String>,
}

/// Shared between the ledger thread (writer) and the HTTP handlers (readers).
#[derive(Debug, Default)]
pub struct LedgerHealth {
    inner: Mutex<Inner>,
}

/// A consistent copy of the ledger's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthReport {
    /// Bytes in the live ledger.
    pub bytes: u64,
    /// When the last batch was made durable (since start).
    pub last_append_ok: Option<SystemTime>,
    /// Set while the ledger fails: since when, and the latest error.
    pub failing: Option<(SystemTime, String)>,
    /// Appends refused in the current run of failures.
    pub failed_appends: u64,
    /// What the ledger thread is doing, since when, for how long.
    pub busy: Option<(Busy, SystemTime, Duration)>,
    /// The last compaction's error, cleared by a successful one (informational: nothing is lost).
    pub last_compaction_error: Option<String>,
}

impl LedgerHealth {
    /// A healthy ledger of `bytes` bytes.
    pub fn new(bytes: u64) -> Self {
        Self { inner: Mutex::new(Inner { bytes, ..Inner::default() }) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The ledger thread starts `what`.
    pub fn begin(&self, what: Busy) {
        self.with(|h| h.busy = Some((what, SystemTime::now(), Instant::now())));
    }

    /// The ledger thread is idle again; the ledger is `bytes` long.
    pub fn idle(&self, bytes: u64) {
        self.with(|h| {
            h.busy = None;
            h.bytes = bytes;
        });
    }

    /// A batch was made durable: the ledger is healthy again.
    pub fn append_ok(&self) {
        self.with(|h| {
            h.last_ok = Some(SystemTime::now());
            if let Some((since, _)) = h.failing.take() {
                log::warn!(
                    "ledger writes again after {} failed batches (failing since {})",
                    h.failed_appends,
                    super::history::format_time(unix_ns(since))
                );
            }
            h.failed_appends = 0;
        });
    }

    /// A batch (or the ledger itself) failed with `error`.
    pub fn append_failed(&self, error: String) {
        self.with(|h| {
            h.failed_appends += 1;
            let since = h.failing.as_ref().map_or_else(SystemTime::now, |(since, _)| *since);
            h.failing = Some((since, error));
        });
    }

    /// A compaction ended (its failure loses nothing and is retried; see `last_compaction_error`).
    pub fn compaction_done(&self, error: Option<String>) {
        self.with(|h| h.last_compaction_error = error);
    }

    /// Bytes in the live ledger.
    pub fn bytes(&self) -> u64 {
        self.with(|h| h.bytes)
    }

    /// A copy of everything, for `/healthz`.
    pub fn report(&self) -> HealthReport {
        self.with(|h| HealthReport {
            bytes: h.bytes,
            last_append_ok: h.last_ok,
            failing: h.failing.clone(),
            failed_appends: h.failed_appends,
            busy: h.busy.map(|(what, since, started)| (what, since, started.elapsed())),
            last_compaction_error: h.last_compaction_error.clone(),
        })
    }
}

impl HealthReport {
    /// Why the ledger is not healthy, and since when; `None` when it is.
    ///
    /// Unhealthy means: the last append failed (a full disk, a file that can no longer be
    /// written), or one append has been running for longer than [`APPEND_STALL`]. A compaction,
    /// however long, is not a reason: appends only wait for it.
    pub fn problem(&self) -> Option<(String, SystemTime)> {
        if let Some((since, error)) = &self.failing {
            return Some((format!("ledger append failed: {error}"), *since));
        }
        match self.busy {
            Some((Busy::Appending, since, running)) if running >= APPEND_STALL => {
                Some((format!("ledger append running for {} s (disk stalled?)", running.as_secs()), since))
            }
            _ => None,
        }
    }

    /// The `ledger` object of `/healthz`.
    pub fn to_json(&self) -> serde_json::Value {
        let time = |t: &SystemTime| super::history::format_time(unix_ns(*t));
        serde_json::json!({
            "bytes": self.bytes,
            "last_append_ok": self.last_append_ok.as_ref().map(time),
            "failing_since": self.failing.as_ref().map(|(since, _)| time(since)),
            "error": self.failing.as_ref().map(|(_, error)| error),
            "failed_appends": self.failed_appends,
            "compacting_since": match self.busy {
                Some((Busy::Compacting, since, _)) => Some(time(&since)),
                _ => None,
            },
            "busy_ms": self.busy.map_or(0, |(_, _, running)| u64::try_from(running.as_millis()).unwrap_or(u64::MAX)),
            "last_compaction_error": self.last_compaction_error,
        })
    }
}

/// Nanoseconds since 1970 (0 for times before it).
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_keeps_its_first_time_and_clears_on_the_next_good_append() {
        let health = LedgerHealth::new(10);
        assert_eq!(health.report().problem(), None);
        health.append_failed("disk full".into());
        let (_, first) = health.report().problem().unwrap();
        health.append_failed("still full".into());
        let report = health.report();
        let (reason, since) = report.problem().unwrap();
        assert_eq!((since, report.failed_appends), (first, 2));
        assert!(reason.contains("still full"), "{reason}");
        assert_eq!(report.to_json()["error"], "still full");
        health.append_ok();
        assert_eq!(health.report().problem(), None);
        assert_eq!(health.report().failed_appends, 0);
    }

    #[test]
    fn a_long_compaction_is_no_problem_but_a_stalled_append_is() {
        let mut report = LedgerHealth::new(0).report();
        let long_ago = SystemTime::now() - Duration::from_secs(600);
        report.busy = Some((Busy::Compacting, long_ago, Duration::from_secs(600)));
        assert_eq!(report.problem(), None);
        assert!(report.to_json()["compacting_since"].is_string());
        report.busy = Some((Busy::Appending, long_ago, APPEND_STALL - Duration::from_millis(1)));
        assert_eq!(report.problem(), None);
        report.busy = Some((Busy::Appending, long_ago, APPEND_STALL));
        assert!(report.problem().unwrap().0.contains("stalled"));
    }
}
