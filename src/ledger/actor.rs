//! `LedgerActor`: the one thread that appends to the ledger file.
//!
//! It is a plain thread that takes batches from a channel, so appends are serialized in the order
//! the `StateActor` sends them. The `StateActor` keeps at most one [`Append`] in flight and gathers
//! the next batch meanwhile: that is the group commit (one `fdatasync` covers a whole batch).
//!
//! Not an actix `SyncArbiter`: a message to one goes first to a forwarding actor on the arbiter
//! that started it (the system's main thread here) and only then to the worker thread, so every
//! batch paid one more cross-thread wake-up (about 40 µs on the bench machine, see
//! benches/README.md) before its `fdatasync` even began. Here the state actor's thread hands the
//! batch straight to the ledger thread, and the ledger thread answers on a oneshot channel that
//! wakes the state actor's arbiter directly.
//!
//! A quiet relay may skip both hand-offs: [`LedgerHandle::append_now`] appends on the caller's
//! thread when the ledger thread is idle (the state actor asks only when nothing is in flight and
//! the relay was quiet, see `state::Inline`). Appends stay serialized: both paths take the same
//! lock, and the state actor still has at most one batch outstanding.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use actix::MailboxError;
use tokio::sync::oneshot;

use super::{
    file::{Compacted, Ledger, LedgerError},
    health::{Busy, LedgerHealth},
    record,
    retention::{self, Retention},
};
use crate::lww::Op;

/// Where the state actor sends its batches: the ledger thread's channel (clones share it). The
/// thread ends once every handle is dropped.
#[derive(Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<(Append, oneshot::Sender<Appended>)>,
    /// The appender, shared by the thread and [`LedgerHandle::append_now`].
    actor: Arc<Mutex<LedgerActor>>,
}

impl LedgerHandle {
    /// Hands `msg` to the ledger thread; resolves with its outcome once the batch is durable (or
    /// refused). [`MailboxError::Closed`] if the thread is gone (it never ends while a handle
    /// lives, unless it panicked).
    pub fn send(&self, msg: Append) -> impl Future<Output = Result<Appended, MailboxError>> + use<> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send((msg, reply)).is_ok();
        async move {
            if !sent {
                return Err(MailboxError::Closed);
            }
            rx.await.map_err(|_| MailboxError::Closed)
        }
    }

    /// Appends `msg` on this thread, now, if the ledger thread is not appending (a batch sent
    /// earlier is then still in its channel or being written: `msg` is handed back, to be sent
    /// behind it). Same outcome as [`LedgerHandle::send`], without the two cross-thread wake-ups;
    /// the caller waits for the `fdatasync`.
    pub fn append_now(&self, msg: Append) -> Result<Appended, Append> {
        match self.actor.try_lock() {
            Ok(mut actor) => Ok(actor.append(msg)),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner().append(msg)),
            Err(std::sync::TryLockError::WouldBlock) => Err(msg),
        }
    }
}

/// The ledger thread's state.
pub struct LedgerActor {
    ledger: Ledger,
    buf: Vec<u8>,
    health: Arc<LedgerHealth>,
    retention: Retention,
    /// A prune runs on its own thread; at most one at a time (see [`Pruning`]).
    pruning: Arc<Pruning>,
}

impl LedgerActor {
    /// Starts the ledger thread, keeping every archive; returns where to send batches.
    pub fn start(ledger: Ledger) -> LedgerHandle {
        Self::start_with(ledger, Retention::KEEP_ALL).0
    }

    /// Starts the ledger thread; returns where to send batches and the health it publishes
    /// (read by `/healthz` without a message, so a probe never waits behind an fsync or a
    /// compaction). After each successful compaction, archives are pruned as `retention` says.
    /// If the thread cannot be started, every batch is refused and the health says why.
    pub fn start_with(ledger: Ledger, retention: Retention) -> (LedgerHandle, Arc<LedgerHealth>) {
        let (actor, health) = Self::new(ledger, retention);
        let actor = Arc::new(Mutex::new(actor));
        let (tx, rx) = mpsc::channel::<(Append, oneshot::Sender<Appended>)>();
        let appender = Arc::clone(&actor);
        let spawned = std::thread::Builder::new().name("aether-ledger".into()).spawn(move || {
            while let Ok((msg, reply)) = rx.recv() {
                // Unlocked before answering: once the caller has the reply, the thread is idle.
                let appended = appender.lock().unwrap_or_else(PoisonError::into_inner).append(msg);
                // The caller may have gone (shutdown): the batch is durable all the same.
                let _ = reply.send(appended);
            }
        });
        if let Err(err) = spawned {
            // Every batch is then refused (its writers told `ledger_failed`), and /healthz says why.
            log::error!("cannot start the ledger thread: {err}");
            health.append_failed(format!("cannot start the ledger thread: {err}"));
        }
        (LedgerHandle { tx, actor }, health)
    }

    fn new(ledger: Ledger, retention: Retention) -> (Self, Arc<LedgerHealth>) {
        let health = Arc::new(LedgerHealth::new(ledger.len()));
        let actor = LedgerActor {
            ledger,
            buf: Vec::new(),
            health: Arc::clone(&health),
            retention,
            pruning: Arc::new(Pruning::default()),
        };
        (actor, health)
    }

    /// Prunes archives on a thread of its own (it reads whole archives): appends never wait for it.
    /// A compaction that ends while a prune runs makes that prune go round once more, so the
    /// archives it added are pruned too, even if no compaction follows.
    fn prune(&self, ledger: PathBuf) {
        if self.retention.keeps_all() {
            return;
        }
        self.pruning.again.store(true, Ordering::SeqCst);
        if self.pruning.running.swap(true, Ordering::SeqCst) {
            return; // the running prune sees `again`
        }
        let (retention, pruning) = (self.retention, Arc::clone(&self.pruning));
        let spawned = std::thread::Builder::new().name("aether-prune".into()).spawn(move || {
            loop {
                pruning.again.store(false, Ordering::SeqCst);
                prune_once(&ledger, retention);
                pruning.running.store(false, Ordering::SeqCst);
                // Asked again meanwhile, and no new prune thread took over: go round.
                if !pruning.again.load(Ordering::SeqCst) || pruning.running.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
        if let Err(err) = spawned {
            log::error!("cannot start archive pruning: {err}");
            self.pruning.running.store(false, Ordering::SeqCst);
        }
    }
}

/// Whether a prune thread runs, and whether it was asked to go round again.
#[derive(Default)]
struct Pruning {
    running: AtomicBool,
    again: AtomicBool,
}

fn prune_once(ledger: &std::path::Path, retention: Retention) {
    match retention::prune(ledger, &retention, SystemTime::now()) {
        Ok(done) if done.removed.is_empty() => {}
        Ok(done) => log::info!(
            "pruned {} archive(s) of {} ([ledger] keep_archives = {}, keep_archive_days = {}); {} kept; history exact from {}",
            done.removed.len(),
            ledger.display(),
            retention.keep_archives,
            retention.keep_archive_days,
            done.kept,
            done.horizon.map_or_else(|| "the start".to_owned(), super::history::format_time),
        ),
        Err(err) => log::error!("archive pruning failed (nothing deleted; retried after the next compaction): {err}"),
    }
}

/// Append these ops, in order, durably (as `[ledger] sync` says); then, if asked, compact.
///
/// Compaction rides on an append so that its outcome reaches the state actor in the same ordered
/// stream of replies as the appends: the state actor always knows which file (`generation`) and
/// which length its state reflects, and so what a snapshot covers.
pub struct Append {
    /// The batch (may be empty), handed back in the reply so the caller need not clone it.
    pub ops: Vec<Op>,
    /// A compaction to run after the batch.
    pub compact: Option<Compact>,
}

/// Fold the first `covered` bytes of ledger generation `generation` into the snapshot staged by
/// [`super::stage_snapshot`] (see [`Ledger::compact_staged`]).
pub struct Compact {
    /// Size of the staged snapshot (the whole state as of `covered`), or why it could not be
    /// staged: then the compaction fails here, with its error in the ledger's health.
    pub staged: Result<u64, LedgerError>,
    /// Ledger length the snapshot covers.
    pub covered: u64,
    /// The ledger generation `covered` refers to; a compaction for another one is refused.
    pub generation: u64,
}

/// The outcome of an [`Append`].
pub struct Appended {
    /// The ops of the batch, unchanged.
    pub ops: Vec<Op>,
    /// `Ok` once the batch is durable; on `Err` none of it is in the file.
    pub result: Result<(), LedgerError>,
    /// Bytes the batch took in the file.
    pub bytes: u64,
    /// Time spent in write + fdatasync.
    pub elapsed: Duration,
    /// Ledger generation (compactions so far) and length after this batch and any compaction.
    pub position: (u64, u64),
    /// The compaction's outcome, if one was asked for.
    pub compacted: Option<Result<Compacted, LedgerError>>,
}

impl LedgerActor {
    /// Appends one batch (and runs its compaction, if any).
    fn append(&mut self, msg: Append) -> Appended {
        self.buf.clear();
        for op in &msg.ops {
            record::encode(op, &mut self.buf);
        }
        let ledger = &mut self.ledger;
        let started = Instant::now();
        let result = if msg.ops.is_empty() {
            Ok(())
        } else {
            self.health.begin(Busy::Appending);
            let result = ledger.append(&self.buf);
            match &result {
                Ok(()) => self.health.append_ok(),
                Err(err) => {
                    log::error!("ledger append of {} ops failed: {err}", msg.ops.len());
                    self.health.append_failed(err.to_string());
                }
            }
            result
        };
        let elapsed = started.elapsed();
        let compacted = msg.compact.map(|job| {
            if job.generation != ledger.generation() {
                return Err(LedgerError::Stale { expected: ledger.generation(), got: job.generation });
            }
            self.health.begin(Busy::Compacting);
            let outcome = job.staged.and_then(|bytes| ledger.compact_staged(bytes, job.covered));
            self.health.compaction_done(outcome.as_ref().err().map(ToString::to_string));
            if let Err(err) = &outcome
                && ledger.is_poisoned()
            {
                // The ledger refuses appends until it is reopened: that is a write failure.
                self.health.append_failed(err.to_string());
            }
            outcome
        });
        let position = (ledger.generation(), ledger.len());
        self.health.idle(ledger.len());
        if matches!(compacted, Some(Ok(_))) {
            self.prune(self.ledger.path().to_owned());
        }
        let bytes = self.buf.len() as u64;
        if self.buf.capacity() > 8 << 20 {
            self.buf = Vec::new(); // do not keep a huge buffer after a burst
        }
        Appended { ops: msg.ops, result, bytes, elapsed, position, compacted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{hlc::Stamp, ledger::SyncMode};

    fn op(n: u64) -> Op {
        Op::set(format!("k{n}"), serde_json::json!(n), Stamp::new(n + 1, 0, "a"))
    }

    /// Batches handed over without waiting are appended in the order they were sent, each reply
    /// says where the file ends after it, and what was answered is in the file.
    #[tokio::test]
    async fn batches_are_appended_in_send_order_and_answered_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (ledger, _) = Ledger::open(&path, SyncMode::Always, |_| {}).unwrap();
        let handle = LedgerActor::start(ledger);
        let replies: Vec<_> =
            (0..20u64).map(|i| handle.send(Append { ops: vec![op(2 * i), op(2 * i + 1)], compact: None })).collect();
        let mut last = 0;
        for (i, reply) in replies.into_iter().enumerate() {
            let appended = reply.await.unwrap();
            appended.result.unwrap();
            assert_eq!(appended.ops.len(), 2);
            assert_eq!(appended.ops[0].key, format!("k{}", 2 * i));
            assert!(appended.position.1 > last, "each batch ends the file further on");
            last = appended.position.1;
            // Answered once written: the file already holds the batch.
            assert!(std::fs::metadata(&path).unwrap().len() >= last);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let keys: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["key"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(keys, (0..40).map(|n| format!("k{n}")).collect::<Vec<_>>());
        assert_eq!(text.len() as u64, last);
    }

    /// The thread ends once the last handle is gone; a handle whose thread is gone refuses.
    #[tokio::test]
    async fn a_handle_without_its_thread_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (ledger, _) = Ledger::open(&dir.path().join("ledger.jsonl"), SyncMode::Always, |_| {}).unwrap();
        let (tx, rx) = mpsc::channel();
        drop(rx);
        let handle = LedgerHandle { tx, actor: Arc::new(Mutex::new(LedgerActor::new(ledger, Retention::KEEP_ALL).0)) };
        let refused = handle.send(Append { ops: vec![op(1)], compact: None }).await;
        assert!(matches!(refused, Err(MailboxError::Closed)));
    }

    /// An append on the caller's thread lands in order after what the thread appended, and is
    /// in the file when it returns; while the thread holds the appender, the batch is handed back.
    #[tokio::test]
    async fn append_now_is_serialized_with_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (ledger, _) = Ledger::open(&path, SyncMode::Always, |_| {}).unwrap();
        let handle = LedgerActor::start(ledger);
        let first = handle.send(Append { ops: vec![op(0)], compact: None }).await.unwrap();
        first.result.unwrap();
        let now = handle.append_now(Append { ops: vec![op(1), op(2)], compact: None }).ok().unwrap();
        now.result.unwrap();
        assert!(now.position.1 > first.position.1);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), now.position.1, "durable when it returns");
        let busy = handle.actor.lock().unwrap();
        let back = handle.append_now(Append { ops: vec![op(3)], compact: None });
        assert!(matches!(back, Err(Append { ref ops, .. }) if ops.len() == 1), "handed back while the thread appends");
        drop(busy);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().nth(1).unwrap().contains(r#""key":"k1""#));
    }
}
