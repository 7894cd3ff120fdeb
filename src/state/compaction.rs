//! Online compaction: when the ledger has grown past `[ledger] compact_after_bytes`, the map is
//! copied (O(1): a persistent map), encoded and staged durably on a thread of its own, then the
//! fold rides on the next append (see [`crate::ledger::Append`]), so the ledger position it covers
//! is always exact. Neither the state actor nor the ledger thread does work that grows with the
//! map: the ledger thread only renames the snapshot into place and moves the short tail.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::StateActor;
use crate::ledger::{Compact, Compacted, LedgerError, snapshot};

impl StateActor {
    /// Starts an online compaction when the ledger has grown enough: the map (which reflects
    /// exactly the first `ledger_len` bytes) is encoded and staged on a thread of its own, so
    /// neither writes nor broadcasts wait for it; the ledger actor then folds it in between two
    /// appends.
    pub(super) fn maybe_compact(&mut self, ctx: &mut Context<Self>) {
        let (generation, covered) = self.ledger_pos;
        let due = self.compaction.after_bytes > 0 && covered >= self.compaction.after_bytes;
        let waiting = self.compact_retry_at.is_some_and(|at| Instant::now() < at);
        if !due || waiting || self.compacting || self.stopping.is_some() {
            return;
        }
        self.compacting = true;
        log::info!("compaction started: a snapshot of {} registers, covering {covered} ledger bytes", self.map.len());
        let (map, path, me) = (self.map.clone(), self.compaction.ledger_path.clone(), ctx.address());
        let spawned = std::thread::Builder::new().name("aether-snapshot".into()).spawn(move || {
            let snapshot = snapshot::encode(&[(crate::room::Room::DEFAULT, map.clone())], &path);
            drop(map);
            let staged = crate::ledger::stage_snapshot(&path, &snapshot).map(|()| snapshot.len() as u64);
            me.do_send(SnapshotReady(Compact { staged, covered, generation }));
        });
        if let Err(err) = spawned {
            log::error!("cannot start compaction: {err}");
            self.compacting = false;
        }
    }

    /// Records a compaction's outcome (it came back with an append).
    pub(super) fn compacted(&mut self, outcome: Result<Compacted, LedgerError>) {
        self.compacting = false;
        match outcome {
            Ok(done) => {
                self.metrics.compacted(&done);
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
                self.compact_retry_at = Some(Instant::now() + Duration::from_secs(60));
            }
        }
    }
}

/// A snapshot encoded and staged off-thread (or the error that kept it from being staged), ready
/// to ride on the next append.
#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotReady(Compact);

impl Handler<SnapshotReady> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotReady, ctx: &mut Context<Self>) {
        self.ready_compaction = Some(msg.0);
        self.flush(ctx);
    }
}
