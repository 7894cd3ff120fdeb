//! What the mesh asks of the state: merging peers' ops, digests and registers for anti-entropy,
//! and remote cursors; and what the state tells the mesh ([`StateEvent`]).

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::OwnedSemaphorePermit;

use super::{NodeId, Source, StateActor, WriteMeta};
use crate::{
    digest,
    lww::{LwwMap, Op, OpKind},
    room::Room,
};

/// What the state tells the mesh.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum StateEvent {
    /// A batch became durable, in apply order: to be forwarded to every peer except the one each
    /// op came from (`sources[i]`, `None` for local writes).
    Durable {
        /// The ops.
        ops: Arc<[Op]>,
        /// Where each came from.
        sources: Vec<Option<NodeId>>,
    },
    /// A local client moved its cursor.
    Presence {
        /// The cursor: the client's id, or `<client id>:<tab>` for one of its tabs (v2).
        id: String,
        /// Where it is, and whose.
        cursor: super::LocalCursor,
    },
    /// A local client (or one of its tabs) left.
    Leave {
        /// The cursor: the client's id, or `<client id>:<tab>`.
        id: String,
        /// Its room.
        room: Room,
    },
    /// The ledger refused a batch holding ops from these peers: they were dropped after the
    /// mesh had counted them as seen, so it must fetch them again (a digest round with each).
    Dropped {
        /// The peers whose ops were dropped.
        peers: Vec<NodeId>,
    },
}

/// Connects the mesh: from now on durable ops and local cursors go to `0`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AttachMesh(pub Recipient<StateEvent>);

impl Handler<AttachMesh> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: AttachMesh, _: &mut Context<Self>) {
        self.mesh = Some(msg.0);
        self.rebuild_overlay();
    }
}

/// Ops received from the peer `peer`, each with its admission slot. Already validated (key and
/// value limits, clock drift); merged only if they win.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteOps {
    /// The peer they came from (not sent back there).
    pub peer: NodeId,
    /// The ops.
    pub ops: Vec<(Op, OwnedSemaphorePermit)>,
}

impl Handler<RemoteOps> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: RemoteOps, ctx: &mut Context<Self>) {
        if self.stopping.is_some() {
            // Not taken: counted as dropped, so a transport's next Barrier sees them and it does
            // not record them as applied (NATS reads them again at the next start; a peer link
            // brings them again with anti-entropy).
            self.settlement.dropped_total += msg.ops.len() as u64;
            return;
        }
        for (op, permit) in msg.ops {
            if !self.wins(&op) {
                self.metrics.mesh.stale();
                continue;
            }
            self.clock.observe(&op.stamp);
            let meta =
                WriteMeta { room: op.room.clone(), source: Source::Peer(Arc::clone(&msg.peer)), _permit: permit };
            self.enqueue(op, meta);
        }
        self.flush(ctx);
    }
}

impl StateActor {
    /// Does `op` beat both the newest queued op for its key and its room's register?
    fn wins(&self, op: &Op) -> bool {
        let Some(room) = self.rooms.get(&op.room) else { return true };
        let current = room.overlay.get(&op.key).or_else(|| room.map.register(&op.key));
        current.is_none_or(|r| crate::lww::beats(&op.stamp, op.kind == OpKind::Del, &op.value, r))
    }

    /// An O(1) copy of every room's map (persistent maps), default room first.
    pub(super) fn maps(&self) -> Vec<(Room, LwwMap)> {
        let mut maps: Vec<(Room, LwwMap)> = self
            .rooms
            .iter()
            .filter(|(_, r)| !r.map.is_empty())
            .map(|(room, r)| (room.clone(), r.map.clone()))
            .collect();
        maps.sort_by(|a, b| a.0.cmp(&b.0));
        maps
    }
}

/// The digest of the durable state of every room, bucket by bucket.
#[derive(Message)]
#[rtype(result = "Vec<u64>")]
pub struct DigestRequest;

impl Handler<DigestRequest> for StateActor {
    type Result = MessageResult<DigestRequest>;

    fn handle(&mut self, _: DigestRequest, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.digest.buckets().to_vec())
    }
}

/// Durable registers as ops (deletes for tombstones), for anti-entropy and snapshots: a
/// [`Registers`] view, made in O(buckets) on the actor; the caller walks it.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "Registers")]
pub enum RegistersIn {
    /// Every register: for peers without digests (upstream's), and for snapshots.
    All,
    /// The registers of the buckets where this digest (a peer's, one number per bucket) differs
    /// from ours. A digest of the wrong length selects nothing: links refuse it before asking
    /// (never read it as "everything differs", which a peer could use to ask for a full dump).
    Differing(Vec<u64>),
}

impl Handler<RegistersIn> for StateActor {
    type Result = MessageResult<RegistersIn>;

    fn handle(&mut self, msg: RegistersIn, _: &mut Context<Self>) -> Self::Result {
        let wanted = match msg {
            RegistersIn::All => vec![true; digest::BUCKETS],
            RegistersIn::Differing(theirs) if theirs.len() == digest::BUCKETS => {
                let mut wanted = vec![false; digest::BUCKETS];
                for b in self.digest.differing(&theirs) {
                    wanted[b] = true;
                }
                wanted
            }
            RegistersIn::Differing(_) => vec![false; digest::BUCKETS],
        };
        MessageResult(Registers { maps: self.maps(), wanted })
    }
}

/// Some registers of the durable maps, as [`RegistersIn`] chose them. Holds an O(1) copy of each
/// room's map (persistent maps), so the walk, which grows with the maps, happens off the state
/// actor.
pub struct Registers {
    maps: Vec<(Room, LwwMap)>,
    wanted: Vec<bool>,
}

impl Registers {
    /// The chosen registers as ops of their rooms, the default room first, in key order.
    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.maps.iter().flat_map(move |(room, map)| {
            map.registers()
                .filter(move |(key, _)| self.wanted[digest::bucket_of(room, key)])
                .map(move |(key, r)| r.to_op(key).in_room(room.clone()))
        })
    }
}

/// Replies once every op queued before it is durable or was dropped with a batch the ledger
/// refused, with the number of ops ever dropped that way: a transport records that it applied
/// everything it handed over only if that number did not grow (otherwise it reads them again).
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Barrier;

impl Handler<Barrier> for StateActor {
    type Result = ResponseFuture<u64>;

    fn handle(&mut self, _: Barrier, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let settlement = &mut self.settlement;
        if settlement.settled_total >= settlement.queued_total {
            let _ = tx.send(settlement.dropped_total);
        } else {
            settlement.barriers.push((settlement.queued_total, tx));
        }
        Box::pin(async move { rx.await.unwrap_or(u64::MAX) })
    }
}

/// An O(1) copy of every room's durable map (persistent maps), the default room first: what
/// needs the whole state (a transport's republish, [`LwwMap::written_by`]) walks it off the
/// state actor.
#[derive(Message)]
#[rtype(result = "Vec<(Room, LwwMap)>")]
pub struct MapView;

impl Handler<MapView> for StateActor {
    type Result = MessageResult<MapView>;

    fn handle(&mut self, _: MapView, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.maps())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix::prelude::*;
    use tokio::sync::Semaphore;

    use super::{Barrier, RemoteOps};
    use crate::{
        hlc::{Clock, Stamp},
        ledger::{Ledger, LedgerActor, SyncMode},
        lww::Op,
        metrics::Metrics,
        state::{Compaction, Shutdown, StateActor},
    };

    /// A peer batch that reaches the state after shutdown began is not taken, and the next
    /// barrier says so (a transport must not record it as applied).
    #[actix::test]
    async fn ops_arriving_during_shutdown_count_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let (ledger, _) = Ledger::open(&path, SyncMode::Always, |_| {}).unwrap();
        let compaction = Compaction { after_bytes: 0, ledger_path: path, ledger_len: 0 };
        let state = StateActor::new(
            Clock::new("a"),
            Default::default(),
            LedgerActor::start(ledger),
            Arc::new(Metrics::default()),
            compaction,
        )
        .start();
        let admission = Arc::new(Semaphore::new(8));
        let ops = |n: u64| {
            let permit = Arc::clone(&admission).try_acquire_owned().unwrap();
            vec![(Op::set(format!("k{n}"), serde_json::json!(n), Stamp::new(n, 0, "peer")), permit)]
        };
        state.do_send(RemoteOps { peer: "peer".into(), ops: ops(1) });
        assert_eq!(state.send(Barrier).await.unwrap(), 0, "taken and durable");
        state.send(Shutdown).await.unwrap();
        state.do_send(RemoteOps { peer: "peer".into(), ops: ops(2) });
        assert_eq!(state.send(Barrier).await.unwrap(), 1, "the batch that came during shutdown is reported");
    }
}
