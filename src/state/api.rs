//! The HTTP API's side of the state actor (`crate::api` is the HTTP side): writes that are stamped,
//! queued, made durable, broadcast and replicated exactly like a client's and answered once
//! durable; O(1) copies of a room's map for reads; the room list; closing a room's members; and a
//! compaction started now.
//!
//! A conditional write (`If-Match`) is checked here, on the actor, against the newest op accepted
//! for its key: the queue's, else the map's. Ops of the batch in flight are in neither, so a
//! conditional write that comes while a batch is in flight waits in `api_waiting` until that
//! batch is back (`StateActor::committed`): then every accepted op is in a map or in the queue.

use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{Source, StateActor, WriteMeta, room};
use crate::{
    config::RoomsConfig,
    hlc::Stamp,
    json::Json,
    ledger::Compacted,
    lww::{LwwMap, Op},
    outbox::Outbound,
    protocol::{self, Version, close},
    room::Room,
};

/// The close text (v1 code 1008, v2 [`close::V2_DISCONNECTED`]) for members closed by
/// [`Disconnect`].
pub const DISCONNECTED: &str = "disconnected by the operator";

/// Why an API write was not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRefused {
    /// The room's `[rooms] max_keys` or `max_bytes` would be exceeded.
    RoomFull,
    /// The room is new and `[rooms] max_rooms` are held.
    TooManyRooms,
    /// The condition did not hold; the key's newest stamp (`None`: never written).
    Precondition(Option<Stamp>),
    /// The write lost to a newer stamp already held (a clock at its edge; never expected).
    Superseded,
    /// The ledger refused its batch: nothing of it is applied.
    LedgerFailed,
    /// Shutdown began before the write arrived.
    ShuttingDown,
}

/// What an API write is answered: its stamp once durable, or why not.
pub type ApiReply = Result<Stamp, ApiRefused>;

/// A condition on the key's newest op (HTTP `If-Match` / `If-None-Match`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match: "<stamp>"`: the newest op of the key (set or delete) has this stamp.
    Stamp(String),
    /// `If-Match: *`: the key holds a value.
    Exists,
    /// `If-None-Match: *`: the key holds no value (never written, or deleted).
    Absent,
}

/// A set or delete from the HTTP API.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApiWrite {
    /// The room.
    pub room: Room,
    /// The key (checked against `[limits]` by the caller).
    pub key: String,
    /// `Some(value)` for a set, `None` for a delete.
    pub value: Option<Json>,
    /// The writer recorded in the ledger (`by`): the JWT `sub`, or `api` for the API key.
    pub by: Arc<str>,
    /// Applied only if this holds.
    pub condition: Option<Precondition>,
    /// The `[rooms]` caps in force.
    pub caps: RoomsConfig,
    /// An admission slot, as a session's write holds.
    pub permit: OwnedSemaphorePermit,
    /// Answered once durable, or refused.
    pub reply: oneshot::Sender<ApiReply>,
}

impl Handler<ApiWrite> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: ApiWrite, ctx: &mut Context<Self>) {
        if msg.condition.is_some() && self.in_flight.is_some() {
            self.api_waiting.push(msg);
            return;
        }
        self.api_write(msg);
        self.flush(ctx);
    }
}

impl StateActor {
    /// Checks and queues one API write (the caller flushes).
    pub(super) fn api_write(&mut self, msg: ApiWrite) {
        let ApiWrite { room, key, value, by, condition, caps, permit, reply } = msg;
        if self.stopping.is_some() {
            let _ = reply.send(Err(ApiRefused::ShuttingDown));
            return;
        }
        if !room.is_default() && !self.rooms.contains_key(&room) && self.rooms.len() >= caps.max_rooms {
            let _ = reply.send(Err(ApiRefused::TooManyRooms));
            return;
        }
        if let Some(condition) = condition {
            let newest = self.newest(&room, &key);
            let holds = match &condition {
                Precondition::Stamp(want) => newest.as_ref().is_some_and(|(stamp, _)| stamp.to_string() == *want),
                Precondition::Exists => newest.as_ref().is_some_and(|(_, live)| *live),
                Precondition::Absent => !newest.as_ref().is_some_and(|(_, live)| *live),
            };
            if !holds {
                let _ = reply.send(Err(ApiRefused::Precondition(newest.map(|(stamp, _)| stamp))));
                return;
            }
        }
        let state = self.rooms.entry(room.clone()).or_default();
        let room_caps = room::Caps { max_keys: caps.max_keys, max_bytes: caps.max_bytes };
        if !state.admits(&room, &key, value.as_ref(), &room_caps) {
            self.metrics.dropped(protocol::Dropped::RoomFull);
            let _ = reply.send(Err(ApiRefused::RoomFull));
            self.drop_if_idle(&room);
            return;
        }
        let stamp = self.clock.tick();
        let bytes = value.as_ref().map_or(0, |v| room::size_of(&room, &key, v));
        let op = match value {
            Some(value) => Op::set(key, value, stamp),
            None => Op::del(key, stamp),
        };
        let op = op.in_room(room.clone()).by(Some(by));
        let source = Source::Api { reply: Some(reply), bytes };
        self.enqueue(op, WriteMeta { room, source, _permit: permit });
    }

    /// The stamp of the newest op accepted for `key` in `room` (queued, else durable), and
    /// whether it holds a value. Call with no batch in flight.
    fn newest(&self, room: &Room, key: &str) -> Option<(Stamp, bool)> {
        let queued = self
            .queue
            .iter()
            .filter(|p| p.op.key == key && p.op.room == *room)
            .max_by(|a, b| a.op.stamp.cmp(&b.op.stamp))
            .map(|p| (p.op.stamp.clone(), p.op.kind == crate::lww::OpKind::Set));
        let held = self.rooms.get(room).and_then(|r| r.map.register(key)).map(|r| (r.stamp.clone(), !r.tombstone));
        match (queued, held) {
            (Some(q), Some(h)) => Some(if q.0 > h.0 { q } else { h }),
            (q, h) => q.or(h),
        }
    }
}

/// An O(1) copy of one room's durable map (persistent maps), to read off the actor.
#[derive(Message)]
#[rtype(result = "Option<RoomView>")]
pub struct ViewRoom(pub Room);

/// What [`ViewRoom`] answers: `None` when the room is not held (no registers, no members); the
/// default room is always answered.
pub struct RoomView {
    /// Its durable map.
    pub map: LwwMap,
    /// Its connected members.
    pub members: usize,
}

impl Handler<ViewRoom> for StateActor {
    type Result = MessageResult<ViewRoom>;

    fn handle(&mut self, ViewRoom(room): ViewRoom, _: &mut Context<Self>) -> Self::Result {
        let view = self.rooms.get(&room).map(|r| RoomView { map: r.map.clone(), members: r.members.len() });
        MessageResult(if view.is_none() && room.is_default() {
            Some(RoomView { map: LwwMap::new(), members: 0 })
        } else {
            view
        })
    }
}

/// Every room held, the default room first and always.
#[derive(Message)]
#[rtype(result = "Vec<RoomSummary>")]
pub struct ListRooms;

/// One room in [`ListRooms`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomSummary {
    /// The name as written (`_` for the default room).
    pub room: String,
    /// Live keys.
    pub keys: usize,
    /// Registers, tombstones included.
    pub registers: usize,
    /// Connected members.
    pub members: usize,
    /// Members by protocol version.
    pub v1: usize,
    /// See `v1`.
    pub v2: usize,
    /// The distinct JWT users among the members, sorted.
    pub users: Vec<String>,
}

impl Handler<ListRooms> for StateActor {
    type Result = MessageResult<ListRooms>;

    fn handle(&mut self, _: ListRooms, _: &mut Context<Self>) -> Self::Result {
        let summary = |name: &Room, r: &room::RoomState| {
            let mut users: Vec<String> =
                r.members.values().filter_map(|m| m.user.as_deref().map(str::to_owned)).collect();
            users.sort();
            users.dedup();
            let v1 = r.members.values().filter(|m| m.version == Version::V1).count();
            RoomSummary {
                room: name.written().to_owned(),
                keys: r.map.live_len(),
                registers: r.map.len(),
                members: r.members.len(),
                v1,
                v2: r.members.len() - v1,
                users,
            }
        };
        let mut rooms: Vec<(&Room, RoomSummary)> =
            self.rooms.iter().map(|(name, r)| (name, summary(name, r))).collect();
        if !self.rooms.contains_key(&Room::DEFAULT) {
            rooms.push((&Room::DEFAULT, summary(&Room::DEFAULT, &room::RoomState::default())));
        }
        rooms.sort_by(|a, b| a.0.cmp(b.0));
        MessageResult(rooms.into_iter().map(|(_, summary)| summary).collect())
    }
}

/// Every connected member of every room, for `GET /api/v1/clients`: by room, then connection id.
#[derive(Message)]
#[rtype(result = "Vec<ClientSummary>")]
pub struct ListClients;

/// One connection in [`ListClients`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientSummary {
    /// The connection's id (the one its `hello` carried).
    pub id: String,
    /// Its room, as written (`_` for the default room).
    pub room: String,
    /// Its source address (the client's, when it came through a trusted proxy).
    pub address: String,
    /// Its protocol version: 1 or 2.
    pub protocol: u8,
    /// The `sub` of its JWT, if it presented one.
    pub user: Option<String>,
}

impl Handler<ListClients> for StateActor {
    type Result = MessageResult<ListClients>;

    fn handle(&mut self, _: ListClients, _: &mut Context<Self>) -> Self::Result {
        let mut clients: Vec<(&Room, ClientSummary)> = self
            .rooms
            .iter()
            .flat_map(|(name, r)| {
                r.members.iter().map(move |(id, m)| {
                    (
                        name,
                        ClientSummary {
                            id: id.to_string(),
                            room: name.written().to_owned(),
                            address: m.source.to_string(),
                            protocol: if m.version == Version::V1 { 1 } else { 2 },
                            user: m.user.as_deref().map(str::to_owned),
                        },
                    )
                })
            })
            .collect();
        clients.sort_by(|a, b| a.0.cmp(b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        MessageResult(clients.into_iter().map(|(_, client)| client).collect())
    }
}

/// Closes the members of a room (all, or those whose JWT `sub` is `user`) with [`DISCONNECTED`];
/// answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Disconnect {
    /// The room.
    pub room: Room,
    /// Only this user's connections.
    pub user: Option<String>,
}

impl Handler<Disconnect> for StateActor {
    type Result = usize;

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) -> usize {
        let Some(state) = self.rooms.get_mut(&msg.room) else { return 0 };
        let chosen: Vec<uuid::Uuid> = state
            .members
            .iter()
            .filter(|(_, m)| msg.user.as_deref().is_none_or(|user| m.user.as_deref() == Some(user)))
            .map(|(id, _)| *id)
            .collect();
        for id in &chosen {
            if let Some(member) = state.members.remove(id)
                && member.outbox.push(Outbound::Close(close::POLICY, DISCONNECTED)).is_err()
                && let Some(kick) = member.kick
            {
                let _ = kick.send((close::POLICY, DISCONNECTED));
            }
        }
        if !chosen.is_empty() {
            log::info!("{} member(s) of room {} disconnected through the API", chosen.len(), msg.room);
        }
        self.announce_leaves(&msg.room, chosen.clone());
        chosen.len()
    }
}

/// Starts an online compaction now, whatever the ledger's length (or joins the one running);
/// answers its outcome once the ledger has folded it in.
#[derive(Message)]
#[rtype(result = "Result<Compacted, String>")]
pub struct CompactNow;

impl Handler<CompactNow> for StateActor {
    type Result = ResponseFuture<Result<Compacted, String>>;

    fn handle(&mut self, _: CompactNow, ctx: &mut Context<Self>) -> Self::Result {
        if self.stopping.is_some() {
            return Box::pin(async { Err("the relay is shutting down".to_owned()) });
        }
        let (tx, rx) = oneshot::channel();
        self.compaction.waiters.push(tx);
        // One already running answers this caller too.
        self.compaction.forced |= !self.compaction.running;
        self.maybe_compact(ctx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("the compaction was abandoned".to_owned())) })
    }
}
