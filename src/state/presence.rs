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
//!
//! A v2 connection may carry the cursors of several browser tabs (the leader tab holds the one
//! socket of its browser): each is shown as its own cursor `<connection id>:<tab>`, in the
//! connection's colour (the browser's tabs can show each other's cursors alike without asking the
//! relay), and leaves on its own (`presence-leave` with the tab)
//! or with its connection, which then announces a leave for its own id and each tab it showed.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use actix::prelude::*;
use bytestring::ByteString;
use uuid::Uuid;

use super::{StateActor, StateEvent};
use crate::{
    outbox::Outbound,
    protocol::{self, Version},
    room::Room,
};

/// How often waiting cursors are sent: 50 a second, a display's pace for a moving pointer.
pub const TICK: Duration = Duration::from_millis(20);

/// A cursor waiting for the tick.
struct Waiting {
    /// The room it moves in: only that room's members see it.
    room: Room,
    /// The frame for v1 members, and for v2 members (with the user, when there is one).
    v1: ByteString,
    v2: ByteString,
    /// The local member it belongs to (who is not sent its own); `None` for remote cursors.
    from: Option<Uuid>,
}

/// A cursor of one of this relay's clients (or of one of its tabs), as it last moved: what the
/// state tells the mesh, and what the mesh keeps to announce again.
#[derive(Clone, Debug)]
pub struct LocalCursor {
    /// Its room: only that room's members, on every relay, see it.
    pub room: Room,
    /// Its colour.
    pub color: String,
    /// The `sub` of its token, if any.
    pub user: Option<Arc<str>>,
    /// Horizontal position.
    pub x: i64,
    /// Vertical position.
    pub y: i64,
}

/// Cursors waiting for the next tick: the latest per client.
#[derive(Default)]
pub(super) struct Cursors {
    /// By client id, local and remote.
    waiting: HashMap<String, Waiting>,
    /// Local cursors for the mesh, by cursor id.
    to_mesh: HashMap<String, LocalCursor>,
    /// The tabs each local connection showed a cursor for (each leaves with its connection).
    tabs: HashMap<Uuid, HashSet<Arc<str>>>,
    /// A tick is scheduled.
    scheduled: bool,
}

impl Cursors {
    /// Drops the waiting cursor of `id` (it left).
    pub(super) fn forget(&mut self, id: &str) {
        self.waiting.remove(id);
    }

    /// Drops the waiting mesh cursor `id` (a local client or tab that left).
    pub(super) fn forget_local(&mut self, id: &str) {
        self.to_mesh.remove(id);
    }

    /// The local connection `id` ended: the tabs it showed cursors for.
    pub(super) fn take_tabs(&mut self, id: &Uuid) -> HashSet<Arc<str>> {
        self.tabs.remove(id).unwrap_or_default()
    }

    /// The tab `tab` of the local connection `id` left: true if it had shown a cursor.
    fn forget_tab(&mut self, id: &Uuid, tab: &str) -> bool {
        let Some(tabs) = self.tabs.get_mut(id) else { return false };
        let had = tabs.remove(tab);
        if tabs.is_empty() {
            self.tabs.remove(id);
        }
        had
    }

    /// Forgets every connection's tabs (the relay is stopping).
    pub(super) fn clear_tabs(&mut self) {
        self.tabs.clear();
    }
}

impl StateActor {
    /// A cursor is waiting: send now if no tick is scheduled (leading edge), then tick while
    /// cursors keep coming.
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

    /// Sends every waiting cursor to the members of its room (each mover's own left out), one
    /// push per member, and local cursors to the mesh.
    fn send_cursors(&mut self) {
        let started = std::time::Instant::now();
        if let Some(mesh) = &self.mesh {
            for (id, cursor) in self.cursors.to_mesh.drain() {
                mesh.do_send(StateEvent::Presence { id, cursor });
            }
        }
        if self.cursors.waiting.is_empty() || self.stopping.is_some() {
            return;
        }
        let mut by_room: HashMap<Room, Vec<Waiting>> = HashMap::new();
        for (_, w) in self.cursors.waiting.drain() {
            by_room.entry(w.room.clone()).or_default().push(w);
        }
        for (room, waiting) in by_room {
            let Some(state) = self.rooms.get_mut(&room) else { continue };
            let all = |v: Version| -> Arc<[ByteString]> {
                waiting.iter().map(|w| if v == Version::V1 { w.v1.clone() } else { w.v2.clone() }).collect()
            };
            let (all_v1, all_v2) = (all(Version::V1), all(Version::V2));
            let movers: HashSet<Uuid> = waiting.iter().filter_map(|w| w.from).collect();
            let gone = state.send_each(|id, member| {
                if !movers.contains(id) {
                    let all = if member.version == Version::V1 { &all_v1 } else { &all_v2 };
                    return Some(Outbound::frames(Arc::clone(all)));
                }
                let others: Arc<[ByteString]> = waiting
                    .iter()
                    .filter(|w| w.from != Some(*id))
                    .map(|w| if member.version == Version::V1 { w.v1.clone() } else { w.v2.clone() })
                    .collect();
                (!others.is_empty()).then(|| Outbound::frames(others))
            });
            self.announce_leaves(&room, gone);
        }
        self.metrics.state_busy(started.elapsed());
    }
}

/// A local client moved its cursor (or the cursor of one of its tabs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Presence {
    /// The client.
    pub id: Uuid,
    /// v2: the tab the cursor belongs to (a valid tab id); `None` for the connection's own.
    pub tab: Option<Arc<str>>,
    /// Horizontal position.
    pub x: i64,
    /// Vertical position.
    pub y: i64,
}

impl Handler<Presence> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: Presence, ctx: &mut Context<Self>) {
        let Some(room) = self.member_rooms.get(&msg.id) else { return };
        let Some(member) = self.rooms.get(room).and_then(|r| r.members.get(&msg.id)) else { return };
        let id = match &msg.tab {
            None => msg.id.to_string(),
            Some(tab) => {
                self.cursors.tabs.entry(msg.id).or_default().insert(Arc::clone(tab));
                format!("{}:{tab}", msg.id)
            }
        };
        let color = member.color.clone();
        let (v1, v2) = protocol::presence_frames(&id, &color, member.user.as_deref(), msg.x, msg.y);
        if self.mesh.is_some() {
            let cursor = LocalCursor { room: room.clone(), color, user: member.user.clone(), x: msg.x, y: msg.y };
            self.cursors.to_mesh.insert(id.clone(), cursor);
        }
        self.cursors.waiting.insert(id, Waiting { room: room.clone(), v1, v2, from: Some(msg.id) });
        self.cursor_waiting(ctx);
    }
}

/// v2: the tab `tab` of the local client `id` closed: its cursor leaves (everywhere but on
/// that client's own connection).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TabLeave {
    /// The client.
    pub id: Uuid,
    /// The tab.
    pub tab: Arc<str>,
}

impl Handler<TabLeave> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: TabLeave, _: &mut Context<Self>) {
        let Some(room) = self.member_rooms.get(&msg.id).cloned() else { return };
        if !self.cursors.forget_tab(&msg.id, &msg.tab) {
            return; // never shown (or already gone): nothing to take away
        }
        self.tab_left(&room, msg.id, &msg.tab);
    }
}

impl StateActor {
    /// The cursor of tab `tab` of the local client `id` leaves `room`, here and on the mesh.
    pub(super) fn tab_left(&mut self, room: &Room, id: Uuid, tab: &str) {
        let cursor = format!("{id}:{tab}");
        self.cursors.forget_local(&cursor);
        if let Some(mesh) = &self.mesh {
            mesh.do_send(StateEvent::Leave { id: cursor.clone(), room: room.clone() });
        }
        self.broadcast_leave(room, &cursor, Some(id));
    }
}

/// A cursor from another relay.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemotePresence {
    /// The client's id (on its relay).
    pub id: String,
    /// Its room.
    pub room: Room,
    /// Its colour.
    pub color: String,
    /// The `sub` of its token, if it has one.
    pub user: Option<Arc<str>>,
    /// Horizontal position.
    pub x: i64,
    /// Vertical position.
    pub y: i64,
}

impl Handler<RemotePresence> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: RemotePresence, ctx: &mut Context<Self>) {
        if !self.rooms.contains_key(&msg.room) {
            return; // nobody here to see it
        }
        let (v1, v2) = protocol::presence_frames(&msg.id, &msg.color, msg.user.as_deref(), msg.x, msg.y);
        self.cursors.waiting.insert(msg.id, Waiting { room: msg.room, v1, v2, from: None });
        self.cursor_waiting(ctx);
    }
}

/// Clients of other relays left (or their relay is gone): each with its room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemoteLeave {
    /// The clients' ids and rooms.
    pub ids: Vec<(Room, String)>,
}

impl Handler<RemoteLeave> for StateActor {
    type Result = ();

    fn handle(&mut self, msg: RemoteLeave, _: &mut Context<Self>) {
        for (room, id) in msg.ids {
            self.broadcast_leave(&room, &id, None);
        }
    }
}
