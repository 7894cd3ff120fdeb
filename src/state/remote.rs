//! What the mesh asks of the state: merging peers' ops, digests and registers for anti-entropy,
//! and remote cursors; and what the state tells the mesh ([`StateEvent`]).

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

use super::{NodeId, Source, StateActor, WriteMeta};
use crate::{
    digest,
    lww::{Op, OpKind},
    outbox::Outbound,
    protocol,
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
        /// The client.
        id: Uuid,
        /// Its colour.
        color: String,
        /// Horizontal position.
        x: i64,
        /// Vertical position.
        y: i64,
    },
    /// A local client left.
    Leave {
        /// The client.
        id: Uuid,
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
            return; // the peer's next anti-entropy round brings them again
        }
        for (op, permit) in msg.ops {
            if !self.wins(&op) {
                self.metrics.mesh.stale();
                continue;
            }
            self.clock.observe(&op.stamp);
            self.enqueue(op, WriteMeta { source: Source::Peer(Arc::clone(&msg.peer)), _permit: permit });
        }
        self.flush(ctx);
    }
}

impl StateActor {
    /// Does `op` beat both the newest queued op for its key and the map's register?
    fn wins(&self, op: &Op) -> bool {
        let current = self.overlay.get(&op.key).or_else(|| self.map.register(&op.key));
        current.is_none_or(|r| crate::lww::beats(&op.stamp, op.kind == OpKind::Del, &op.value, r))
    }
}

/// The digest of the durable state, bucket by bucket.
#[derive(Message)]
#[rtype(result = "Vec<u64>")]
pub struct DigestRequest;

impl Handler<DigestRequest> for StateActor {
    type Result = MessageResult<DigestRequest>;

    fn handle(&mut self, _: DigestRequest, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.digest.buckets().to_vec())
    }
}

/// Durable registers as ops (deletes for tombstones), for anti-entropy and snapshots.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
#[rtype(result = "Vec<Op>")]
pub enum RegistersIn {
    /// Every register: for peers without digests (upstream's), and for snapshots.
    All,
    /// The registers of the buckets where this digest (a peer's, one number per bucket) differs
    /// from ours. A digest of the wrong length selects nothing: links refuse it before asking
    /// (never read it as "everything differs", which a peer could use to ask for a full dump).
    Differing(Vec<u64>),
}

impl RegistersIn {
    /// Same as [`RegistersIn::All`] (kept for callers written before the enum).
    pub fn all() -> Self {
        Self::All
    }
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
            RegistersIn::Differing(_) => return MessageResult(Vec::new()),
        };
        let ops = self
            .map
            .registers()
            .filter(|(key, _)| wanted[digest::bucket_of(key)])
            .map(|(key, r)| r.to_op(key))
            .collect();
        MessageResult(ops)
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
        if self.settled_total >= self.queued_total {
            let _ = tx.send(self.dropped_total);
        } else {
            self.barriers.push((self.queued_total, tx));
        }
        Box::pin(async move { rx.await.unwrap_or(u64::MAX) })
    }
}

/// This node's own durable registers stamped after `after` (all of them when `None`), in stamp
/// order: what a transport must (re)publish after an outage or a crash.
#[derive(Message)]
#[rtype(result = "Vec<Op>")]
pub struct LocalAfter {
    /// The newest stamp known to be published.
    pub after: Option<crate::hlc::Stamp>,
}

impl Handler<LocalAfter> for StateActor {
    type Result = MessageResult<LocalAfter>;

    fn handle(&mut self, msg: LocalAfter, _: &mut Context<Self>) -> Self::Result {
        let node = self.clock.node().to_owned();
        let mut ops: Vec<Op> = self
            .map
            .registers()
            .filter(|(_, r)| r.stamp.n == node && msg.after.as_ref().is_none_or(|after| r.stamp > *after))
            .map(|(key, r)| r.to_op(key))
            .collect();
        ops.sort_by(|a, b| a.stamp.cmp(&b.stamp));
        MessageResult(ops)
    }
}

/// A cursor of a client on another node, to show to every local member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemotePresence {
    /// The remote client's id.
    pub id: String,
    /// Its colour.
    pub color: String,
    /// Horizontal position.
    pub x: i64,
    /// Vertical position.
    pub y: i64,
}

impl Handler<RemotePresence> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: RemotePresence, _: &mut Context<Self>) {
        let item = Outbound::frames(Arc::new([protocol::presence(&msg.id, &msg.color, msg.x, msg.y)]));
        self.broadcast(&item, &item, None);
    }
}

/// Clients of other nodes that left (or whose node went away).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteLeave {
    /// Their ids.
    pub ids: Vec<String>,
}

impl Handler<RemoteLeave> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: RemoteLeave, _: &mut Context<Self>) {
        for id in msg.ids {
            self.broadcast_leave(&id, None);
        }
    }
}
