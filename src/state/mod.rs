//! `StateActor`: the singleton that stamps, merges, persists (through the ledger) and fans out.
//!
//! Every write takes this path: a session sends [`Write`]; the actor stamps it with the HLC and
//! queues it; while no append is in flight the queue goes to the [`LedgerActor`] as one batch (group
//! commit); when the batch is durable the actor merges it into the map and sends its frames, in
//! order, to every member's bounded outbound queue. So nothing is observable before it is on disk,
//! every connection sees ops in apply order, and `hello` + `snapshot` (pushed into a fresh queue
//! while joining) are always a connection's first two frames.
//!
//! A member whose outbound queue is full is too slow: it is dropped from fan-out and told to close,
//! and nobody else waits for it.
//!
//! Ops from federated peers ([`RemoteOps`]) take the same path, but only when they beat both the
//! map and every op still queued for the same key: so only LWW winners reach the ledger, browsers
//! and other peers, and a stale or duplicate op costs one comparison. Once durable, every op goes
//! to the mesh (if any) to be forwarded to the peers that have not seen it.
//!
//! Submodules: `fanout` (applying batches, per-version frames), `join` (first frames), `presence`
//! (cursors, coalesced per tick), `compaction` (online compaction) and `remote` (ops and digests
//! from the mesh).

mod compaction;
mod dedup;
mod fanout;
mod join;
mod presence;
mod remote;

pub use join::Join;
pub use presence::{Presence, RemoteLeave, RemotePresence};
pub use remote::{AttachMesh, Barrier, DigestRequest, MapView, Registers, RegistersIn, RemoteOps, StateEvent};

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use uuid::Uuid;

use crate::{
    digest::{self, Digest},
    hlc::Clock,
    ledger::{Append, Appended, Compact, LedgerActor},
    lww::{LwwMap, Op, Register},
    metrics::Metrics,
    outbox::{Outbound, Outbox},
    protocol::{Version, close},
};

/// Most ops in one ledger batch: bounds the time one fsync holds the next batch back.
const MAX_BATCH_OPS: usize = 8192;

/// One connected, registered client.
struct Member {
    color: String,
    version: Version,
    outbox: Outbox,
    kick: Option<oneshot::Sender<(u16, &'static str)>>,
}

/// A write accepted from a client, waiting for its batch.
struct Pending {
    op: Op,
    meta: WriteMeta,
}

/// A federated node's id, shared by every op that came from it.
pub type NodeId = Arc<str>;

/// Where a queued op came from.
enum Source {
    /// A client of this relay.
    Client {
        /// The writing connection.
        origin: Uuid,
        /// The v2 client's reference for its `ack`, if it gave one.
        reference: Option<Value>,
    },
    /// A peer link, named by the peer's node id (the op is not sent back there).
    Peer(NodeId),
}

impl Source {
    /// The peer the op came from, if it came from one.
    fn peer(&self) -> Option<NodeId> {
        match self {
            Source::Peer(node) => Some(Arc::clone(node)),
            Source::Client { .. } => None,
        }
    }
}

/// Who wrote an op and how to acknowledge it, kept beside the op while the ledger writes it.
struct WriteMeta {
    source: Source,
    /// Admission slot: held until the op is durable and sent, which bounds the queue.
    _permit: OwnedSemaphorePermit,
}

/// The state singleton. Construct with [`StateActor::new`] and start it on an arbiter of its
/// own. A panic aborts the relay (see `relay::run`): actix restarts no actor after a panic.
pub struct StateActor {
    clock: Clock,
    map: LwwMap,
    ledger: Addr<LedgerActor>,
    queue: Vec<Pending>,
    /// Writers of the batch the ledger is writing; `Some` while an append is in flight.
    in_flight: Option<Vec<WriteMeta>>,
    /// Identifies this run of the relay in resume tokens (sequence numbers restart at boot).
    epoch: String,
    /// Sequence number of the last op applied in this run.
    seq: u64,
    /// The sequence number at which each key last changed in this run, and the same ordered by
    /// sequence number (a v2 delta costs what changed since, not the map).
    changed_at: HashMap<String, u64>,
    changes: BTreeMap<u64, String>,
    members: HashMap<Uuid, Member>,
    /// Encoded snapshots for joiners, and joiners waiting for one.
    snapshots: join::Snapshots,
    /// Set once shutdown began: the waiters to answer when everything accepted is durable and sent.
    stopping: Option<Vec<oneshot::Sender<()>>>,
    metrics: Arc<Metrics>,
    compaction: Compaction,
    /// Ledger generation and length after the last batch: exactly what `map` reflects (replies
    /// come back in order, one append in flight at a time).
    ledger_pos: (u64, u64),
    /// A snapshot is being made or folded in.
    compacting: bool,
    /// A snapshot ready to ride on the next append.
    ready_compaction: Option<Compact>,
    /// After a failed compaction, when to try again.
    compact_retry_at: Option<std::time::Instant>,
    /// The mesh, told of every durable op and of local cursors; `None` without federation.
    mesh: Option<Recipient<StateEvent>>,
    /// With a mesh: the newest queued (not yet durable) register per key, which a remote op must
    /// beat as well as the map's, so that only winners are queued.
    overlay: HashMap<String, Register>,
    /// Bucketed digest of `map`, kept current, for anti-entropy.
    digest: Digest,
    /// Ops ever queued, and ops made durable or dropped since: [`Barrier`]s wait for the latter
    /// to reach the former's value when they came.
    queued_total: u64,
    settled_total: u64,
    barriers: Vec<(u64, oneshot::Sender<u64>)>,
    /// Ops dropped because the ledger refused their batch, since start.
    dropped_total: u64,
    /// Cursors waiting for the next presence tick.
    cursors: presence::Cursors,
    /// v2 writes with a client id, remembered to answer repeats (exactly-once; see `dedup`).
    dedup: dedup::Dedup,
}

/// When and where the state actor compacts the ledger online.
#[derive(Clone, Debug)]
pub struct Compaction {
    /// Compact once the ledger is at least this long; 0 never.
    pub after_bytes: u64,
    /// The ledger (named inside the snapshot).
    pub ledger_path: PathBuf,
    /// Ledger length at boot.
    pub ledger_len: u64,
}

impl StateActor {
    /// The actor over the replayed `rooms`, stamping with `clock`, persisting through `ledger`.
    pub fn new(
        clock: Clock,
        mut rooms: HashMap<crate::room::Room, LwwMap>,
        ledger: Addr<LedgerActor>,
        metrics: Arc<Metrics>,
        compaction: Compaction,
    ) -> Self {
        let map = rooms.remove(&crate::room::Room::DEFAULT).unwrap_or_default();
        Self {
            digest: Digest::of(&map),
            queued_total: 0,
            settled_total: 0,
            barriers: Vec::new(),
            dropped_total: 0,
            cursors: presence::Cursors::default(),
            dedup: dedup::Dedup::default(),
            mesh: None,
            overlay: HashMap::new(),
            ledger_pos: (0, compaction.ledger_len),
            compaction,
            compacting: false,
            ready_compaction: None,
            compact_retry_at: None,
            epoch: format!("{:016x}", Uuid::new_v4().as_u64_pair().0),
            seq: 0,
            changed_at: HashMap::new(),
            changes: BTreeMap::new(),
            clock,
            map,
            ledger,
            queue: Vec::new(),
            in_flight: None,
            members: HashMap::new(),
            snapshots: join::Snapshots::default(),
            stopping: None,
            metrics,
        }
    }

    /// Queues a winning op for the next batch; with a mesh, remembers it as its key's newest.
    fn enqueue(&mut self, op: Op, meta: WriteMeta) {
        if self.mesh.is_some() {
            let (key, register) = Register::from_op(op.clone());
            self.overlay.insert(key, register);
        }
        self.queue.push(Pending { op, meta });
        self.queued_total += 1;
    }

    /// Applies one durable op to the map, keeping the digest current; true if the map changed.
    fn apply(&mut self, op: Op) -> bool {
        let old = self.map.register(&op.key).map(|r| digest::hash_of(&op.key, r));
        let new = digest::op_hash(&op);
        let key = op.key.clone();
        if self.overlay.get(&key).is_some_and(|r| r.stamp == op.stamp) {
            self.overlay.remove(&key);
        }
        let changed = self.map.apply(op);
        if changed {
            self.digest.replace(&key, old, new);
        }
        changed
    }

    /// After a batch was dropped: the overlay again holds exactly the newest queued op per key.
    fn rebuild_overlay(&mut self) {
        if self.mesh.is_none() {
            return;
        }
        self.overlay.clear();
        for pending in &self.queue {
            let (key, register) = Register::from_op(pending.op.clone());
            self.overlay.insert(key, register);
        }
    }

    /// Sends the next batch to the ledger if none is in flight.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() || (self.queue.is_empty() && self.ready_compaction.is_none()) {
            return;
        }
        let take = self.queue.len().min(MAX_BATCH_OPS);
        let (ops, metas): (Vec<Op>, Vec<WriteMeta>) = self.queue.drain(..take).map(|p| (p.op, p.meta)).unzip();
        self.in_flight = Some(metas);
        let append = Append { ops, compact: self.ready_compaction.take() };
        self.ledger.send(append).into_actor(self).map(|reply, act, ctx| act.committed(reply, ctx)).spawn(ctx);
    }

    /// A batch came back from the ledger: publish it if durable, drop it otherwise.
    fn committed(&mut self, reply: Result<Appended, MailboxError>, ctx: &mut Context<Self>) {
        let started = std::time::Instant::now();
        let metas = self.in_flight.take().unwrap_or_default();
        match reply {
            Ok(Appended { ops, result, elapsed, position, compacted, .. }) => {
                self.ledger_pos = position;
                if let Some(outcome) = compacted {
                    self.compacted(outcome);
                }
                match result {
                    Ok(()) if ops.is_empty() => {}
                    Ok(()) => {
                        self.metrics.batch(ops.len(), elapsed);
                        self.publish(ops, &metas);
                    }
                    Err(err) => {
                        log::error!("{} writes were not made durable and are dropped: {err}", ops.len());
                        self.dropped(&metas);
                    }
                }
            }
            Err(err) => {
                log::error!("ledger actor unavailable, batch dropped: {err}");
                self.dropped(&metas);
            }
        }
        self.settled_total += metas.len() as u64;
        drop(metas);
        self.release_barriers();
        self.flush(ctx);
        self.maybe_compact(ctx);
        self.maybe_finish_stopping();
        self.metrics.state_busy(started.elapsed());
    }

    /// A batch the ledger refused: its writers are told (v2 `nack ledger_failed`), transports'
    /// barriers will see it, and the mesh fetches again what came from its peers.
    fn dropped(&mut self, metas: &[WriteMeta]) {
        self.metrics.ledger_failure();
        self.dropped_total += metas.len() as u64;
        self.rebuild_overlay();
        self.refuse(metas, "ledger_failed");
        let mut peers: Vec<NodeId> = metas.iter().filter_map(|m| m.source.peer()).collect();
        peers.sort();
        peers.dedup();
        if let Some(mesh) = &self.mesh
            && !peers.is_empty()
        {
            mesh.do_send(StateEvent::Dropped { peers });
        }
    }

    /// Answers the barriers whose ops have all settled.
    fn release_barriers(&mut self) {
        let (settled, dropped) = (self.settled_total, self.dropped_total);
        for (_, waiter) in self.barriers.extract_if(.., |(target, _)| *target <= settled) {
            let _ = waiter.send(dropped);
        }
    }

    fn maybe_finish_stopping(&mut self) {
        if self.in_flight.is_some() || !self.queue.is_empty() {
            return;
        }
        let Some(waiters) = self.stopping.as_mut().map(std::mem::take) else { return };
        for join in self.snapshots.drain_waiting() {
            let _ = join.outbox.push(Outbound::Close(close::GOING_AWAY, "server shutting down"));
        }
        for (_, member) in self.members.drain() {
            if member.outbox.push(Outbound::Close(close::GOING_AWAY, "server shutting down")).is_err()
                && let Some(kick) = member.kick
            {
                let _ = kick.send((close::GOING_AWAY, "server shutting down"));
            }
        }
        for waiter in waiters {
            let _ = waiter.send(());
        }
    }
}

impl Actor for StateActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Writes arrive admission-bounded; a large mailbox keeps joins and presence from waiting.
        ctx.set_mailbox_capacity(4096);
    }
}

/// A registered connection ended (however it ended).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The connection's id.
    pub id: Uuid,
}

impl Handler<Leave> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: Leave, _: &mut Context<Self>) {
        if self.members.remove(&msg.id).is_some() {
            self.announce_leave(msg.id);
        }
    }
}

/// A client's set or delete.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Write {
    /// The key.
    pub key: String,
    /// `Some(value)` for a set, `None` for a delete.
    pub value: Option<Value>,
    /// The admission slot the session acquired for this write.
    pub permit: OwnedSemaphorePermit,
    /// The writing connection.
    pub origin: Uuid,
    /// v2: the client's reference, answered with an `ack` once the write is durable.
    pub reference: Option<Value>,
    /// v2 `?cid=`: the client's stable id; with a `reference`, a repeat of this write is answered
    /// with the original `ack` instead of being applied again.
    pub client: Option<Arc<str>>,
}

impl Handler<Write> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: Write, ctx: &mut Context<Self>) {
        if self.stopping.is_some() {
            return; // not accepted: shutdown began before it arrived
        }
        if let (Some(cid), Some(reference)) = (&msg.client, &msg.reference) {
            match self.dedup.check(cid, reference, msg.origin) {
                dedup::Check::Apply => {}
                dedup::Check::Wait => return,
                dedup::Check::Answer(ack) => {
                    if let Some(member) = self.members.get(&msg.origin) {
                        let _ = member.outbox.push(Outbound::frames(Arc::new([ack])));
                    }
                    return;
                }
            }
        }
        let stamp = self.clock.tick();
        let op = match msg.value {
            Some(value) => Op::set(msg.key, value, stamp),
            None => Op::del(msg.key, stamp),
        };
        let source = Source::Client { origin: msg.origin, reference: msg.reference };
        self.enqueue(op, WriteMeta { source, _permit: msg.permit });
        self.flush(ctx);
    }
}

/// Begin shutdown: accept no more writes or joins, make everything accepted durable and sent,
/// then tell every member to close with 1001. Replies when that is done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for StateActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.stopping.get_or_insert_with(Vec::new).push(tx);
        self.maybe_finish_stopping();
        Box::pin(async move {
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
        })
    }
}

/// Health and size probe.
#[derive(Message)]
#[rtype(result = "StateInfo")]
pub struct Probe;

/// What [`Probe`] reports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StateInfo {
    /// Live keys.
    pub keys: usize,
    /// Registers including tombstones.
    pub registers: usize,
    /// Connected, registered clients.
    pub clients: usize,
    /// Writes accepted but not yet durable.
    pub pending_writes: usize,
    /// Writes made durable since start.
    pub durable_writes: u64,
    /// Ledger appends since start; far fewer than writes under concurrency (group commit).
    pub ledger_batches: u64,
    /// One number for the whole state (keys, stamps, tombstones, values): equal on two nodes
    /// exactly when their states are equal.
    pub fingerprint: u64,
}

impl Handler<Probe> for StateActor {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, _: Probe, _: &mut Context<Self>) -> Self::Result {
        MessageResult(StateInfo {
            keys: self.map.live_len(),
            registers: self.map.len(),
            clients: self.members.len(),
            pending_writes: self.queue.len() + self.in_flight.as_ref().map_or(0, Vec::len),
            durable_writes: self.metrics.durable_writes(),
            ledger_batches: self.metrics.batches(),
            fingerprint: self.digest.fingerprint(),
        })
    }
}
