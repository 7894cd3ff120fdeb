//! `StateActor`: the singleton that stamps, merges, persists (through the ledger) and fans out.
//!
//! Every write takes this path: a session sends [`Write`] for its room; the actor checks the room's
//! caps, stamps it with the HLC and queues it; while no append is in flight the queue goes to the
//! ledger thread ([`crate::ledger::LedgerActor`]) as one batch, whatever rooms it touches (group
//! commit across rooms); when the batch is durable the actor merges each op into its room's map
//! and sends its frames, in order, to the bounded outbound queue of every member of that room
//! (`room`: what one room holds). So nothing is observable before it is on disk, every connection
//! sees its room's ops in apply order, and `hello` + `snapshot` (pushed into a fresh queue while
//! joining) are always a connection's first two frames.
//!
//! A member whose outbound queue is full is too slow: it is dropped from fan-out and told to close,
//! and nobody else waits for it.
//!
//! Ops from federated peers ([`RemoteOps`]) take the same path, but only when they beat both the
//! map and every op still queued for the same key: so only LWW winners reach the ledger, browsers
//! and other peers, and a stale or duplicate op costs one comparison. Once durable, every op goes
//! to the mesh (if any) to be forwarded to the peers that have not seen it.
//!
//! Submodules: `room` (one room's state), `fanout` (applying batches, per-version frames), `join`
//! (first frames, room caps at join), `presence`
//! (cursors, coalesced per tick), `compaction` (online compaction), `remote` (ops and digests
//! from the mesh) and `api` (the HTTP API's writes, reads, disconnects and compactions).

mod api;
mod compaction;
mod dedup;
mod fanout;
mod join;
mod presence;
mod remote;
mod room;

pub use api::{
    ApiRefused, ApiReply, ApiWrite, ClientSummary, CompactNow, DISCONNECTED, Disconnect, ListClients, ListRooms,
    Precondition, RoomSummary, RoomView, ViewRoom,
};
pub use join::{Join, JoinRefused, Seat};
pub use presence::{LocalCursor, Presence, RemoteLeave, RemotePresence, TabLeave};
pub use remote::{AttachMesh, Barrier, DigestRequest, MapView, Registers, RegistersIn, RemoteOps, StateEvent};

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use uuid::Uuid;

use self::room::RoomState;
use crate::{
    config::RoomsConfig,
    digest::{self, Digest},
    hlc::Clock,
    json::Json,
    ledger::{Append, Appended, LedgerHandle, Replayed},
    limits::TokenBucket,
    lww::{LwwMap, Op, Register},
    metrics::Metrics,
    outbox::{Outbound, Outbox},
    protocol::{self, Version, close},
    room::Room,
};

/// Most ops in one ledger batch: bounds the time one fsync holds the next batch back.
const MAX_BATCH_OPS: usize = 8192;

/// One connected, registered client.
struct Member {
    color: String,
    version: Version,
    /// The `sub` of its token, if it presented a JWT (shown to v2 peers in presence).
    user: Option<Arc<str>>,
    /// Its source address (the client's, behind a trusted proxy), for `GET /api/v1/clients`.
    source: std::net::IpAddr,
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
        /// The bytes the write counts for against its room's cap while it is queued.
        bytes: usize,
    },
    /// A peer link, named by the peer's node id (the op is not sent back there).
    Peer(NodeId),
    /// The HTTP API ([`ApiWrite`]): sent to every member of the room (v2 `origin: null`),
    /// answered on `reply` once durable (or refused).
    Api {
        /// Taken when the write is answered.
        reply: Option<oneshot::Sender<ApiReply>>,
        /// As for a client.
        bytes: usize,
    },
}

impl Source {
    /// The peer the op came from, if it came from one.
    fn peer(&self) -> Option<NodeId> {
        match self {
            Source::Peer(node) => Some(Arc::clone(node)),
            Source::Client { .. } | Source::Api { .. } => None,
        }
    }

    /// The bytes a local write counts for against its room's cap while queued (peers: none).
    fn local_bytes(&self) -> Option<usize> {
        match self {
            Source::Client { bytes, .. } | Source::Api { bytes, .. } => Some(*bytes),
            Source::Peer(_) => None,
        }
    }
}

/// Who wrote an op and how to acknowledge it, kept beside the op while the ledger writes it.
struct WriteMeta {
    room: Room,
    source: Source,
    /// Admission slot: held until the op is durable and sent, which bounds the queue.
    _permit: OwnedSemaphorePermit,
}

/// Counts that let transports wait until what they handed over has settled ([`Barrier`]).
#[derive(Default)]
struct Settlement {
    /// Ops ever queued, and ops made durable or dropped since: [`Barrier`]s wait for the latter
    /// to reach the former's value when they came.
    queued_total: u64,
    settled_total: u64,
    barriers: Vec<(u64, oneshot::Sender<u64>)>,
    /// Ops dropped because the ledger refused their batch, since start.
    dropped_total: u64,
}

/// The state singleton. Construct with [`StateActor::new`] and start it on an arbiter of its
/// own. A panic aborts the relay (see `relay::run`): actix restarts no actor after a panic.
///
/// Relay-wide here; everything that belongs to one room is in its [`RoomState`] (`state::room`).
pub struct StateActor {
    clock: Clock,
    ledger: LedgerHandle,
    queue: Vec<Pending>,
    /// Writers of the batch the ledger is writing; `Some` while an append is in flight.
    in_flight: Option<Vec<WriteMeta>>,
    /// A [`Flush`] is on its way: the next batch goes once the mailbox is drained.
    flush_requested: bool,
    /// Whether the next batch may be appended on this thread (see [`Inline`]).
    inline: Inline,
    /// Identifies this run of the relay in resume tokens (sequence numbers restart at boot).
    epoch: String,
    /// Every room with registers or members.
    rooms: HashMap<Room, RoomState>,
    /// The room of every member.
    member_rooms: HashMap<Uuid, Room>,
    /// New rooms each source created lately (`[rooms] created_per_minute`).
    creations: HashMap<IpAddr, TokenBucket>,
    /// Set once shutdown began: the waiters to answer when everything accepted is durable and sent.
    stopping: Option<Vec<oneshot::Sender<()>>>,
    metrics: Arc<Metrics>,
    compaction: compaction::Online,
    /// The mesh, told of every durable op and of local cursors; `None` without federation.
    mesh: Option<Recipient<StateEvent>>,
    /// Bucketed digest of every room, kept current, for anti-entropy.
    digest: Digest,
    settlement: Settlement,
    /// Cursors waiting for the next presence tick.
    cursors: presence::Cursors,
    /// v2 writes with a client id, remembered to answer repeats (exactly-once; see `dedup`).
    dedup: dedup::Dedup,
    /// Conditional API writes that came while a batch was in flight: checked once it is back,
    /// when every accepted op is in a map or in the queue (see `api`).
    api_waiting: Vec<ApiWrite>,
}

/// Sends the next batch (see [`StateActor::flush`]). Notified to itself, so it runs after the
/// messages already in the mailbox: a burst that arrives together leaves in one batch.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for StateActor {
    type Result = ();

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) {
        self.flush_requested = false;
        self.flush_now(ctx);
    }
}

/// When the state actor appends a batch itself instead of handing it to the ledger thread.
///
/// A lone write's round trip is mostly thread hand-offs and the disk (benches/README.md, "Speed at
/// the limit"): handing the batch to the ledger thread and being woken by its answer cost two
/// cross-thread wake-ups. When the relay is quiet and the disk is fast, the state actor writes and
/// `fdatasync`s the batch itself, then publishes it, exactly as it would on the thread's answer.
/// Quiet: nothing was queued when the last batch came back, and the first write of this batch came
/// at least [`Self::QUIET`] after that (a write that waited in the mailbox behind the last batch is
/// handled right after it, so it does not count as quiet). Under load, batches come back to back
/// with writes behind them and go to the thread as before, so one `fdatasync` still runs while the
/// next batch gathers. A compaction always goes to the thread. The cost: while an inline
/// `fdatasync` runs (at most about [`Self::FAST_DISK`], as the last one took), the actor handles
/// nothing else; what arrives meanwhile waits in its mailbox and leaves in the next batch, which
/// goes to the thread.
#[derive(Clone, Copy)]
struct Inline {
    /// When the last batch came back (published or dropped).
    settled_at: Instant,
    /// Whether the queue was empty then.
    idle_at_settle: bool,
    /// When the oldest write in the queue was queued.
    first_queued_at: Instant,
    /// How long the last append (write + `fdatasync`) took.
    last_append: Duration,
}

impl Inline {
    /// Quiet: the batch's first write came this long after the last batch came back.
    const QUIET: Duration = Duration::from_micros(50);
    /// A disk whose last append took longer is left to the ledger thread.
    const FAST_DISK: Duration = Duration::from_millis(2);

    fn allows(&self, append: &Append) -> bool {
        append.compact.is_none()
            && self.last_append <= Self::FAST_DISK
            && self.idle_at_settle
            && self.first_queued_at.saturating_duration_since(self.settled_at) >= Self::QUIET
    }

    /// A batch came back; `idle`: nothing is queued behind it.
    fn settled(&mut self, idle: bool) {
        self.settled_at = Instant::now();
        self.idle_at_settle = idle;
    }
}

impl Default for Inline {
    fn default() -> Self {
        let now = Instant::now();
        Inline { settled_at: now, idle_at_settle: true, first_queued_at: now, last_append: Duration::ZERO }
    }
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
        rooms: HashMap<Room, LwwMap>,
        ledger: LedgerHandle,
        metrics: Arc<Metrics>,
        compaction: Compaction,
    ) -> Self {
        let mut digest = Digest::default();
        let rooms = rooms
            .into_iter()
            .filter(|(_, map)| !map.is_empty())
            .map(|(room, map)| {
                let state = RoomState::with_map(&room, map, &mut digest);
                (room, state)
            })
            .collect();
        Self::with_rooms(clock, rooms, digest, ledger, metrics, compaction)
    }

    /// The actor over a boot's replay, whose digest was made while its maps were built (the
    /// same as [`StateActor::new`] computes from the maps, without a second pass over them).
    pub fn replayed(
        clock: Clock,
        replayed: Replayed,
        ledger: LedgerHandle,
        metrics: Arc<Metrics>,
        compaction: Compaction,
    ) -> Self {
        let Replayed { rooms, digest, hashes, .. } = replayed;
        let rooms = rooms
            .into_iter()
            .filter(|(_, map)| !map.is_empty())
            .map(|(room, map)| {
                let bytes =
                    if room.is_default() { 0 } else { map.live().map(|(k, v)| room::size_of(&room, k, v)).sum() };
                let hashes = hashes.get(&room).copied().unwrap_or_default();
                (room, RoomState { map, hashes, bytes, ..RoomState::default() })
            })
            .collect();
        Self::with_rooms(clock, rooms, digest, ledger, metrics, compaction)
    }

    fn with_rooms(
        clock: Clock,
        rooms: HashMap<Room, RoomState>,
        digest: Digest,
        ledger: LedgerHandle,
        metrics: Arc<Metrics>,
        compaction: Compaction,
    ) -> Self {
        Self {
            digest,
            settlement: Settlement::default(),
            cursors: presence::Cursors::default(),
            dedup: dedup::Dedup::default(),
            api_waiting: Vec::new(),
            mesh: None,
            compaction: compaction::Online::new(compaction),
            epoch: format!("{:016x}", Uuid::new_v4().as_u64_pair().0),
            clock,
            rooms,
            member_rooms: HashMap::new(),
            creations: HashMap::new(),
            ledger,
            queue: Vec::new(),
            in_flight: None,
            flush_requested: false,
            inline: Inline::default(),
            stopping: None,
            metrics,
        }
    }

    /// Queues a winning op for the next batch; with a mesh, remembers it as its key's newest.
    fn enqueue(&mut self, op: Op, meta: WriteMeta) {
        if self.queue.is_empty() {
            self.inline.first_queued_at = Instant::now();
        }
        let room = self.rooms.entry(meta.room.clone()).or_default();
        if let Some(bytes) = meta.source.local_bytes() {
            room.queued += 1;
            room.queued_bytes += bytes;
        }
        if self.mesh.is_some() {
            let (key, register) = Register::from_op(op.clone());
            room.overlay.insert(key, register);
        }
        self.queue.push(Pending { op, meta });
        self.settlement.queued_total += 1;
    }

    /// A queued op settled (durable or dropped): it no longer counts against its room's caps.
    fn settle(&mut self, meta: &WriteMeta) {
        if let Some(bytes) = meta.source.local_bytes()
            && let Some(room) = self.rooms.get_mut(&meta.room)
        {
            room.queued = room.queued.saturating_sub(1);
            room.queued_bytes = room.queued_bytes.saturating_sub(bytes);
        }
    }

    /// After a batch was dropped: the overlays again hold exactly the newest queued op per key.
    fn rebuild_overlay(&mut self) {
        if self.mesh.is_none() {
            return;
        }
        for room in self.rooms.values_mut() {
            room.overlay.clear();
        }
        for pending in &self.queue {
            let (key, register) = Register::from_op(pending.op.clone());
            self.rooms.entry(pending.meta.room.clone()).or_default().overlay.insert(key, register);
        }
    }

    /// Forgets `room` if nothing is left of it (no registers, members, queued ops or joiners).
    fn drop_if_idle(&mut self, room: &Room) {
        if self.rooms.get(room).is_some_and(RoomState::is_idle) {
            self.rooms.remove(room);
        }
    }

    /// No batch is in flight and there is something to send (writes, or a compaction to fold in).
    fn can_send_batch(&self) -> bool {
        self.in_flight.is_none() && (!self.queue.is_empty() || self.compaction.has_ready())
    }

    /// Asks for the next batch to go to the ledger once the messages already in the mailbox are
    /// handled (they join it), unless one is in flight: its return flushes again.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.flush_requested || !self.can_send_batch() {
            return;
        }
        self.flush_requested = true;
        ctx.notify(Flush);
    }

    /// Sends the next batch to the ledger if none is in flight: appended here and now if the
    /// relay is quiet ([`Inline`]), otherwise handed to the ledger thread.
    fn flush_now(&mut self, ctx: &mut Context<Self>) {
        if !self.can_send_batch() {
            return;
        }
        let take = self.queue.len().min(MAX_BATCH_OPS);
        let (ops, metas): (Vec<Op>, Vec<WriteMeta>) = self.queue.drain(..take).map(|p| (p.op, p.meta)).unzip();
        self.in_flight = Some(metas);
        let mut append = Append { ops, compact: self.compaction.take_ready() };
        if self.inline.allows(&append) {
            let started = Instant::now();
            match self.ledger.append_now(append) {
                Ok(appended) => return self.committed(Ok(appended), Some(started), ctx),
                Err(back) => append = back,
            }
        }
        self.ledger.send(append).into_actor(self).map(|reply, act, ctx| act.committed(reply, None, ctx)).spawn(ctx);
    }

    /// A batch came back from the ledger: publish it if durable, drop it otherwise. `inline`: when
    /// this thread began appending it itself.
    fn committed(&mut self, reply: Result<Appended, MailboxError>, inline: Option<Instant>, ctx: &mut Context<Self>) {
        let started = inline.unwrap_or_else(Instant::now);
        let mut metas = self.in_flight.take().unwrap_or_default();
        for meta in &metas {
            self.settle(meta);
        }
        match reply {
            Ok(Appended { ops, result, elapsed, position, compacted, .. }) => {
                self.compaction.ledger_pos = position;
                if let Some(outcome) = compacted {
                    self.compaction.finished(outcome, &self.metrics);
                }
                self.inline.last_append = elapsed;
                match result {
                    Ok(()) if ops.is_empty() => {}
                    Ok(()) => {
                        self.metrics.batch(ops.len(), elapsed, inline.is_some());
                        self.publish(ops, &mut metas);
                    }
                    Err(err) => {
                        log::error!("{} writes were not made durable and are dropped: {err}", ops.len());
                        self.dropped(&mut metas);
                    }
                }
            }
            Err(err) => {
                log::error!("ledger actor unavailable, batch dropped: {err}");
                self.dropped(&mut metas);
            }
        }
        self.settlement.settled_total += metas.len() as u64;
        let mut rooms: Vec<Room> = metas.iter().map(|m| m.room.clone()).collect();
        drop(metas);
        rooms.dedup();
        for room in &rooms {
            self.drop_if_idle(room);
        }
        self.release_barriers();
        for write in std::mem::take(&mut self.api_waiting) {
            self.api_write(write);
        }
        self.flush(ctx);
        self.maybe_compact(ctx);
        self.maybe_finish_stopping();
        self.metrics.state_busy(started.elapsed());
        self.inline.settled(self.queue.is_empty());
    }

    /// A batch the ledger refused: its writers are told (v2 `nack ledger_failed`), transports'
    /// barriers will see it, and the mesh fetches again what came from its peers.
    fn dropped(&mut self, metas: &mut [WriteMeta]) {
        self.metrics.ledger_failure();
        self.settlement.dropped_total += metas.len() as u64;
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
        let Settlement { settled_total, dropped_total, barriers, .. } = &mut self.settlement;
        for (_, waiter) in barriers.extract_if(.., |(target, _)| *target <= *settled_total) {
            let _ = waiter.send(*dropped_total);
        }
    }

    fn maybe_finish_stopping(&mut self) {
        if self.in_flight.is_some() || !self.queue.is_empty() {
            return;
        }
        let Some(waiters) = self.stopping.as_mut().map(std::mem::take) else { return };
        let going = (close::GOING_AWAY, "server shutting down");
        for room in self.rooms.values_mut() {
            for join in room.snapshots.drain_waiting() {
                let _ = join.outbox.push(Outbound::Close(going.0, going.1));
            }
            for (_, member) in room.members.drain() {
                if member.outbox.push(Outbound::Close(going.0, going.1)).is_err()
                    && let Some(kick) = member.kick
                {
                    let _ = kick.send(going);
                }
            }
        }
        self.member_rooms.clear();
        self.cursors.clear_tabs();
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
        let Some(room) = self.member_rooms.get(&msg.id).cloned() else { return };
        if self.rooms.get_mut(&room).and_then(|r| r.members.remove(&msg.id)).is_some() {
            self.announce_leave(&room, msg.id);
        }
    }
}

/// A client's set or delete.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Write {
    /// The room it writes.
    pub room: Room,
    /// The key.
    pub key: String,
    /// `Some(value)` for a set, `None` for a delete.
    pub value: Option<Json>,
    /// The admission slot the session acquired for this write.
    pub permit: OwnedSemaphorePermit,
    /// The writing connection.
    pub origin: Uuid,
    /// Who writes: the `sub` of the connection's token, if it presented a JWT (kept in the ledger).
    pub by: Option<Arc<str>>,
    /// v2: the client's reference, answered with an `ack` once the write is durable.
    pub reference: Option<Value>,
    /// v2 `?cid=`: the client's stable id; with a `reference`, a repeat of this write is answered
    /// with the original `ack` instead of being applied again.
    pub client: Option<Arc<str>>,
    /// The room caps of the connection's configuration (`[rooms]`).
    pub caps: RoomsConfig,
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
                    if let Some(room) = self.rooms.get(&msg.room) {
                        room.send_to(&msg.origin, ack);
                    }
                    return;
                }
            }
        }
        let room = self.rooms.entry(msg.room.clone()).or_default();
        let caps = room::Caps { max_keys: msg.caps.max_keys, max_bytes: msg.caps.max_bytes };
        if !room.admits(&msg.room, &msg.key, msg.value.as_ref(), &caps) {
            self.metrics.dropped(protocol::Dropped::RoomFull);
            if let Some(reference) = &msg.reference {
                self.nack(&msg.room, msg.origin, reference, "room_full");
            }
            return;
        }
        let stamp = self.clock.tick();
        let bytes = msg.value.as_ref().map_or(0, |v| room::size_of(&msg.room, &msg.key, v));
        let op = match msg.value {
            Some(value) => Op::set(msg.key, value, stamp),
            None => Op::del(msg.key, stamp),
        };
        let op = op.in_room(msg.room.clone()).by(msg.by);
        let source = Source::Client { origin: msg.origin, reference: msg.reference, bytes };
        self.enqueue(op, WriteMeta { room: msg.room, source, _permit: msg.permit });
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

/// Health and size probe: the whole relay, or one room.
#[derive(Message, Default)]
#[rtype(result = "StateInfo")]
pub struct Probe {
    /// Only this room (keys, registers, clients and fingerprint are the room's).
    pub room: Option<Room>,
}

/// What [`Probe`] reports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct StateInfo {
    /// Live keys.
    pub keys: usize,
    /// Registers including tombstones.
    pub registers: usize,
    /// Connected, registered clients.
    pub clients: usize,
    /// Rooms held (with registers or members).
    pub rooms: usize,
    /// Writes accepted but not yet durable.
    pub pending_writes: usize,
    /// Writes made durable since start.
    pub durable_writes: u64,
    /// Ledger appends since start; far fewer than writes under concurrency (group commit).
    pub ledger_batches: u64,
    /// One number for the whole state (keys, stamps, tombstones, values; every room): equal on
    /// two nodes exactly when their states are equal. With a room: that room's.
    pub fingerprint: u64,
}

impl Handler<Probe> for StateActor {
    type Result = MessageResult<Probe>;

    fn handle(&mut self, msg: Probe, _: &mut Context<Self>) -> Self::Result {
        let pending_writes = self.queue.len() + self.in_flight.as_ref().map_or(0, Vec::len);
        let (durable_writes, ledger_batches) = (self.metrics.durable_writes(), self.metrics.batches());
        let rooms = self.rooms.len();
        MessageResult(match msg.room {
            None => StateInfo {
                keys: self.rooms.values().map(|r| r.map.live_len()).sum(),
                registers: self.rooms.values().map(|r| r.map.len()).sum(),
                clients: self.member_rooms.len(),
                rooms,
                pending_writes,
                durable_writes,
                ledger_batches,
                fingerprint: self.digest.fingerprint(),
            },
            Some(room) => {
                let room = self.rooms.get(&room);
                StateInfo {
                    keys: room.map_or(0, |r| r.map.live_len()),
                    registers: room.map_or(0, |r| r.map.len()),
                    clients: room.map_or(0, |r| r.members.len()),
                    rooms,
                    pending_writes,
                    durable_writes,
                    ledger_batches,
                    fingerprint: digest::room_fingerprint(room.map_or(0, |r| r.hashes)),
                }
            }
        })
    }
}
