//! Online compaction: when the ledger has grown past `[ledger] compact_after_bytes`, every room's
//! map is copied (O(1) each: persistent maps), encoded and staged durably on a thread of its own,
//! then the fold rides on the next append (see [`crate::ledger::Append`]), so the ledger position
//! it covers is always exact. Neither the state actor nor the ledger thread does work that grows
//! with the maps: the ledger thread only renames the snapshot into place and moves the short tail.

use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::{Compaction, StateActor};
use crate::{
    ledger::{Compact, Compacted, LedgerError, snapshot},
    metrics::Metrics,
};

/// The state actor's side of online compaction.
pub(super) struct Online {
    settings: Compaction,
    /// Ledger generation and length after the last batch: exactly what the maps reflect (replies
    /// come back in order, one append in flight at a time).
    pub(super) ledger_pos: (u64, u64),
    /// A snapshot is being made or folded in.
    pub(super) running: bool,
    /// A snapshot ready to ride on the next append.
    ready: Option<Compact>,
    /// After a failed compaction, when to try again.
    retry_at: Option<Instant>,
    /// Asked for now ([`super::CompactNow`]): starts at the next chance whatever the ledger's
    /// length or a retry delay, and these are told the outcome.
    pub(super) forced: bool,
    pub(super) waiters: Vec<oneshot::Sender<Result<Compacted, String>>>,
}

impl Online {
    pub(super) fn new(settings: Compaction) -> Self {
        let ledger_pos = (0, settings.ledger_len);
        Online { settings, ledger_pos, running: false, ready: None, retry_at: None, forced: false, waiters: Vec::new() }
    }

    /// A staged snapshot waits for the next append.
    pub(super) fn has_ready(&self) -> bool {
        self.ready.is_some()
    }

    /// The staged snapshot, to ride on the append being sent.
    pub(super) fn take_ready(&mut self) -> Option<Compact> {
        self.ready.take()
    }

    /// The ledger folded a snapshot in (or failed to).
    pub(super) fn finished(&mut self, outcome: Result<Compacted, LedgerError>, metrics: &Metrics) {
        self.running = false;
        let told = outcome.as_ref().map(Clone::clone).map_err(ToString::to_string);
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(told.clone());
        }
        match outcome {
            Ok(done) => {
                metrics.compacted(&done);
                log::info!(
                    "compacted {} ledger bytes into a {}-byte snapshot; {} bytes stay in the ledger; old ledger kept as {}",
                    done.folded_bytes,
                    done.snapshot_bytes,
                    done.tail_bytes,
                    done.archive.display()
                );
            }
            Err(err) => {
                log::error!("compaction failed (nothing lost; retrying in a minute): {err}");
                self.retry_at = Some(Instant::now() + Duration::from_secs(60));
            }
        }
    }
}

impl StateActor {
    /// Starts a compaction if the ledger is long enough and none is running.
    pub(super) fn maybe_compact(&mut self, ctx: &mut Context<Self>) {
        let online = &mut self.compaction;
        let (generation, covered) = online.ledger_pos;
        let due = online.settings.after_bytes > 0 && covered >= online.settings.after_bytes;
        let waiting = online.retry_at.is_some_and(|at| Instant::now() < at) && !online.forced;
        if !(due || online.forced) || waiting || online.running || self.stopping.is_some() {
            return;
        }
        online.running = true;
        online.forced = false;
        let path = online.settings.ledger_path.clone();
        let rooms = self.maps();
        let registers: usize = rooms.iter().map(|(_, map)| map.len()).sum();
        log::info!(
            "compaction started: a snapshot of {registers} registers in {} rooms, covering {covered} ledger bytes",
            rooms.len()
        );
        let me = ctx.address();
        let spawned = std::thread::Builder::new().name("aether-snapshot".into()).spawn(move || {
            let snapshot = snapshot::encode(&rooms, &path);
            drop(rooms);
            let staged = crate::ledger::stage_snapshot(&path, &snapshot).map(|()| snapshot.len() as u64);
            me.do_send(SnapshotReady(Compact { staged, covered, generation }));
        });
        if let Err(err) = spawned {
            log::error!("cannot start compaction: {err}");
            self.compaction.running = false;
            for waiter in self.compaction.waiters.drain(..) {
                let _ = waiter.send(Err(format!("cannot start compaction: {err}")));
            }
        }
    }
}

/// A snapshot staged on its thread, to ride on the next append.
#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotReady(Compact);

impl Handler<SnapshotReady> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotReady, ctx: &mut Context<Self>) {
        self.compaction.ready = Some(msg.0);
        self.flush(ctx);
    }
}
