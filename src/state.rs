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

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use uuid::Uuid;

use crate::{
    hlc::Clock,
    ledger::{Append, Appended, LedgerActor},
    ledger::{Compact, snapshot},
    lww::{LwwMap, Op},
    metrics::Metrics,
    outbox::{Outbound, Outbox, PushError},
    protocol,
};

/// Most ops in one ledger batch: bounds the time one fsync holds the next batch back.
const MAX_BATCH_OPS: usize = 8192;

/// Close codes this server uses (see the README's protocol section).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: broken WebSocket framing.
    pub const PROTOCOL: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Auth failed, or rate limit exceeded.
    pub const POLICY: u16 = 1008;
    /// Message larger than `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// No pong to our pings.
    pub const KEEPALIVE: u16 = 1011;
    /// Connection cap reached, or this client read too slowly.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// One connected, registered client.
struct Member {
    color: String,
    outbox: Outbox,
    kick: Option<oneshot::Sender<(u16, &'static str)>>,
}

/// A write accepted from a client, waiting for its batch.
struct Pending {
    op: Op,
    /// Admission slot: held until the op is durable and sent, which bounds the queue.
    _permit: OwnedSemaphorePermit,
}

/// The state singleton. Construct with [`StateActor::new`] and start under a `Supervisor`.
pub struct StateActor {
    clock: Clock,
    map: LwwMap,
    ledger: Addr<LedgerActor>,
    queue: Vec<Pending>,
    /// Admission slots of the batch the ledger is writing; `Some` while an append is in flight.
    in_flight: Option<Vec<OwnedSemaphorePermit>>,
    members: HashMap<Uuid, Member>,
    snapshot_cache: Option<ByteString>,
    /// Set once shutdown began: the waiters to answer when everything accepted is durable and sent.
    stopping: Option<Vec<oneshot::Sender<()>>>,
    metrics: Arc<Metrics>,
    compaction: Compaction,
    /// Ledger length after the last durable batch: exactly what `map` reflects.
    ledger_len: u64,
    /// A snapshot is being made or folded in.
    compacting: bool,
    /// After a failed compaction, when to try again.
    compact_retry_at: Option<std::time::Instant>,
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
    /// The actor over the replayed `map`, stamping with `clock`, persisting through `ledger`.
    pub fn new(
        clock: Clock,
        map: LwwMap,
        ledger: Addr<LedgerActor>,
        metrics: Arc<Metrics>,
        compaction: Compaction,
    ) -> Self {
        Self {
            ledger_len: compaction.ledger_len,
            compaction,
            compacting: false,
            compact_retry_at: None,
            clock,
            map,
            ledger,
            queue: Vec::new(),
            in_flight: None,
            members: HashMap::new(),
            snapshot_cache: None,
            stopping: None,
            metrics,
        }
    }

    fn snapshot_frame(&mut self) -> ByteString {
        self.snapshot_cache.get_or_insert_with(|| protocol::snapshot(self.map.live())).clone()
    }

    /// Sends the next batch to the ledger if none is in flight.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight.is_some() || self.queue.is_empty() {
            return;
        }
        let take = self.queue.len().min(MAX_BATCH_OPS);
        let (ops, permits): (Vec<Op>, Vec<OwnedSemaphorePermit>) =
            self.queue.drain(..take).map(|p| (p.op, p._permit)).unzip();
        self.in_flight = Some(permits);
        self.ledger.send(Append { ops }).into_actor(self).map(|reply, act, ctx| act.committed(reply, ctx)).spawn(ctx);
    }

    /// A batch came back from the ledger: publish it if durable, drop it otherwise.
    fn committed(&mut self, reply: Result<Appended, MailboxError>, ctx: &mut Context<Self>) {
        let permits = self.in_flight.take();
        match reply {
            Ok(Appended { ops, result: Ok(()), elapsed, len_after, .. }) => {
                self.metrics.batch(ops.len(), elapsed);
                self.ledger_len = len_after;
                let frames: Arc<[ByteString]> = ops.iter().map(protocol::op_frame).collect();
                let mut changed = false;
                for op in ops {
                    changed |= self.map.apply(op);
                }
                if changed {
                    self.snapshot_cache = None;
                }
                self.broadcast(&Outbound::frames(frames), None);
            }
            Ok(Appended { ops, result: Err(err), .. }) => {
                self.metrics.ledger_failure();
                log::error!("{} writes were not made durable and are dropped: {err}", ops.len());
            }
            Err(err) => {
                self.metrics.ledger_failure();
                log::error!("ledger actor unavailable, batch dropped: {err}");
            }
        }
        drop(permits);
        self.flush(ctx);
        self.maybe_compact(ctx);
        self.maybe_finish_stopping();
    }

    /// Starts an online compaction when the ledger has grown enough: the map (which reflects
    /// exactly the first `ledger_len` bytes) is copied and encoded on a thread of its own, so
    /// neither writes nor broadcasts wait for it; the ledger actor then folds it in between two
    /// appends.
    fn maybe_compact(&mut self, ctx: &mut Context<Self>) {
        let due = self.compaction.after_bytes > 0 && self.ledger_len >= self.compaction.after_bytes;
        let waiting = self.compact_retry_at.is_some_and(|at| std::time::Instant::now() < at);
        if !due || waiting || self.compacting || self.stopping.is_some() {
            return;
        }
        self.compacting = true;
        let (map, covered, path, me) =
            (self.map.clone(), self.ledger_len, self.compaction.ledger_path.clone(), ctx.address());
        let spawned = std::thread::Builder::new().name("aether-snapshot".into()).spawn(move || {
            let snapshot = snapshot::encode(&map, &path);
            drop(map);
            me.do_send(SnapshotReady { snapshot, covered });
        });
        if let Err(err) = spawned {
            log::error!("cannot start compaction: {err}");
            self.compacting = false;
        }
    }

    /// Sends `item` to every member except `skip`; members whose queue is full are dropped.
    fn broadcast(&mut self, item: &Outbound, skip: Option<Uuid>) {
        let mut slow = Vec::new();
        self.members.retain(|id, member| {
            if Some(*id) == skip {
                return true;
            }
            match member.outbox.push(item.clone()) {
                Ok(()) => true,
                Err(PushError::Full) => {
                    slow.push(*id);
                    if let Some(kick) = member.kick.take() {
                        let _ = kick.send((close::TRY_AGAIN_LATER, "too slow"));
                    }
                    false
                }
                // The session ended; its Leave is on the way and will find nothing to remove.
                Err(PushError::Closed) => false,
            }
        });
        for id in slow {
            log::info!("client {} read too slowly and was disconnected", short(&id));
            self.announce_leave(id);
        }
    }

    fn announce_leave(&mut self, id: Uuid) {
        if self.stopping.is_none() {
            let frame = protocol::presence_leave(&id.to_string());
            self.broadcast(&Outbound::frames(Arc::new([frame])), Some(id));
        }
    }

    fn maybe_finish_stopping(&mut self) {
        if self.in_flight.is_some() || !self.queue.is_empty() {
            return;
        }
        let Some(waiters) = self.stopping.as_mut().map(std::mem::take) else { return };
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

fn short(id: &Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

impl Actor for StateActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Writes arrive admission-bounded; a large mailbox keeps joins and presence from waiting.
        ctx.set_mailbox_capacity(4096);
    }
}

impl Supervised for StateActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        log::warn!("state actor restarting; {} members kept", self.members.len());
        self.in_flight = None;
    }
}

/// Register a new connection; the actor pushes `hello` and `snapshot` into `tx` first.
/// Replies false when the server is shutting down.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Join {
    /// The connection's id (sent in `hello`).
    pub id: Uuid,
    /// Its colour (sent in `hello`).
    pub color: String,
    /// Its bounded outbound queue.
    pub outbox: Outbox,
    /// Fired when the member must close at once (its queue is full).
    pub kick: oneshot::Sender<(u16, &'static str)>,
}

impl Handler<Join> for StateActor {
    type Result = bool;

    fn handle(&mut self, msg: Join, _: &mut Context<Self>) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        let first = Arc::new([protocol::hello(&msg.id.to_string(), &msg.color), self.snapshot_frame()]);
        if msg.outbox.push(Outbound::frames(first)).is_err() {
            return false;
        }
        self.members.insert(msg.id, Member { color: msg.color, outbox: msg.outbox, kick: Some(msg.kick) });
        true
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
}

impl Handler<Write> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: Write, ctx: &mut Context<Self>) {
        if self.stopping.is_some() {
            return; // not accepted: shutdown began before it arrived
        }
        let stamp = self.clock.tick();
        let op = match msg.value {
            Some(value) => Op::set(msg.key, value, stamp),
            None => Op::del(msg.key, stamp),
        };
        self.queue.push(Pending { op, _permit: msg.permit });
        self.flush(ctx);
    }
}

/// A client's cursor, relayed to every other member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Presence {
    /// The sender.
    pub id: Uuid,
    /// Horizontal position.
    pub x: i64,
    /// Vertical position.
    pub y: i64,
}

impl Handler<Presence> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: Presence, _: &mut Context<Self>) {
        let Some(member) = self.members.get(&msg.id) else { return };
        let frame = protocol::presence(&msg.id.to_string(), &member.color, msg.x, msg.y);
        self.broadcast(&Outbound::frames(Arc::new([frame])), Some(msg.id));
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

/// A snapshot encoded off-thread, ready to be folded into the ledger.
#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotReady {
    snapshot: Vec<u8>,
    covered: u64,
}

impl Handler<SnapshotReady> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: SnapshotReady, ctx: &mut Context<Self>) {
        let started = std::time::Instant::now();
        self.ledger
            .send(Compact { snapshot: msg.snapshot, covered: msg.covered })
            .into_actor(self)
            .map(move |reply, act, _| {
                act.compacting = false;
                match reply {
                    Ok(Ok(done)) => {
                        act.metrics.compacted(&done, started.elapsed());
                        log::info!(
                            "compacted {} ledger bytes into a {}-byte snapshot in {} ms; {} bytes stay in the ledger; old ledger kept as {}",
                            done.folded_bytes,
                            done.snapshot_bytes,
                            started.elapsed().as_millis(),
                            done.tail_bytes,
                            done.archive.display()
                        );
                        act.ledger_len = act.ledger_len.saturating_sub(done.folded_bytes);
                    }
                    Ok(Err(err)) => {
                        log::error!("compaction failed (nothing lost; retrying in a minute): {err}");
                        act.compact_retry_at = Some(std::time::Instant::now() + Duration::from_secs(60));
                    }
                    Err(err) => log::error!("compaction failed, ledger actor unavailable: {err}"),
                }
            })
            .spawn(ctx);
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
        })
    }
}
