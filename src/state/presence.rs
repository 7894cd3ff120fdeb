//! Cursors on the state actor: coalesced per tick, so presence can never crowd out writes.
//!
//! A cursor frame is the one message whose cost grows with the room (every other member gets
//! it). Sent as they come, 256 members moving at 100 frames/s would be millions of pushes a second
//! on the actor that also stamps writes and admits joins. So the actor keeps only the latest cursor
//! of each client until the next tick ([`TICK`]) and then pushes one item per member holding
//! every cursor that moved (each mover's own left out): at most one presence push per member per
//! tick, whatever the clients send. An idle room sends the first cursor at once (leading edge).
//! Local cursors go to the mesh coalesced the same way. A leave drops the waiting cursor of the
//! client that left, so no cursor can follow its own `presence-leave`.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use actix::prelude::*;
use bytestring::ByteString;
use uuid::Uuid;

use super::{StateActor, StateEvent};
use crate::{outbox::Outbound, protocol};

/// How often waiting cursors are sent: 50 a second, a display's pace for a moving pointer.
pub const TICK: Duration = Duration::from_millis(20);

/// A cursor waiting for the tick.
struct Waiting {
    frame: ByteString,
    /// The local member it belongs to (who is not sent its own); `None` for remote cursors.
    from: Option<Uuid>,
}

/// Cursors waiting for the next tick: the latest per client.
#[derive(Default)]
pub(super) struct Cursors {
    /// By client id, local and remote.
    waiting: HashMap<String, Waiting>,
    /// Local cursors for the mesh: colour and position.
    to_mesh: HashMap<Uuid, (String, i64, i64)>,
    /// A tick is due.
    scheduled: bool,
}

impl Cursors {
    /// Drops the waiting cursor of `id` (it left).
    pub(super) fn forget(&mut self, id: &str) {
        self.waiting.remove(id);
    }

    /// Drops the waiting cursor of the local client `id` for the mesh (it left).
    pub(super) fn forget_local(&mut self, id: &Uuid) {
        self.to_mesh.remove(id);
    }
}

impl StateActor {
    /// A cursor is waiting: send now if no tick is due, and make sure one is.
    fn cursor_waiting(&mut self, ctx: &mut Context<Self>) {
        if self.cursors.scheduled {
            return;
        }
        self.send_cursors();
        self.cursors.scheduled = true;
        ctx.run_later(TICK, |act, ctx| {
            act.cursors.scheduled = false;
            if !act.cursors.waiting.is_empty() || !act.cursors.to_mesh.is_empty() {
                act.cursor_waiting(ctx);
            }
        });
    }

    /// Sends every waiting cursor: one push per member.
    fn send_cursors(&mut self) {
        let started = std::time::Instant::now();
        if let Some(mesh) = &self.mesh {
            for (id, (color, x, y)) in self.cursors.to_mesh.drain() {
                mesh.do_send(StateEvent::Presence { id, color, x, y });
            }
        }
        if self.cursors.waiting.is_empty() || self.stopping.is_some() {
            return;
        }
        let waiting: Vec<Waiting> = self.cursors.waiting.drain().map(|(_, w)| w).collect();
        let all: Arc<[ByteString]> = waiting.iter().map(|w| w.frame.clone()).collect();
        let movers: HashSet<Uuid> = waiting.iter().filter_map(|w| w.from).collect();
        self.send_each(|id, _| {
            if !movers.contains(id) {
                return Some(Outbound::frames(Arc::clone(&all)));
            }
            let others: Arc<[ByteString]> =
                waiting.iter().filter(|w| w.from != Some(*id)).map(|w| w.frame.clone()).collect();
            (!others.is_empty()).then(|| Outbound::frames(others))
        });
        self.metrics.state_busy(started.elapsed());
    }
}

/// A client's cursor, relayed to every other member. Sessions send it with `try_send`: when the
/// actor's mailbox is full a cursor is dropped (the next one replaces it anyway).
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

    fn handle(&mut self, msg: Presence, ctx: &mut Context<Self>) {
        let Some(member) = self.members.get(&msg.id) else { return };
        let id = msg.id.to_string();
        let frame = protocol::presence(&id, &member.color, msg.x, msg.y);
        if self.mesh.is_some() {
            self.cursors.to_mesh.insert(msg.id, (member.color.clone(), msg.x, msg.y));
        }
        self.cursors.waiting.insert(id, Waiting { frame, from: Some(msg.id) });
        self.cursor_waiting(ctx);
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

    fn handle(&mut self, msg: RemotePresence, ctx: &mut Context<Self>) {
        let frame = protocol::presence(&msg.id, &msg.color, msg.x, msg.y);
        self.cursors.waiting.insert(msg.id, Waiting { frame, from: None });
        self.cursor_waiting(ctx);
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
