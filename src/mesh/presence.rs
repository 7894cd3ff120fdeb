//! Cursors across relays, whatever carries them (peer links or NATS subjects).
//!
//! Presence is ephemeral: never stored, never in the ledger. Each relay numbers the cursor
//! messages it originates (a wall-clock-based sequence, so it keeps growing across restarts), and a
//! relay accepts a message only if its sequence is newer than the last it saw from that origin: a
//! message flooding a ring or arriving twice is dropped at its second copy. LocalCursor cursors are
//! announced again every [`REFRESH`], and a remote cursor that is not refreshed for [`TTL`]
//! leaves, which bounds how long a cursor outlives a relay that vanished without a word.
//!
//! [`Hub`] is the one presence logic both transports use (peer links and NATS): it keeps the
//! bookkeeping ([`Cursors`]), shows and hides remote cursors through the state, and hands the
//! transport the frames to send; the transport only carries them.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::Addr;
use bytestring::ByteString;

use super::wire::{self, RemoteCursor};
use crate::{
    hlc::wall_clock_ns,
    room::Room,
    state::{LocalCursor, RemoteLeave, RemotePresence, StateActor},
};

/// Presence across relays for one transport: what to send, and what the state shows.
pub struct Hub {
    cursors: Cursors,
    state: Addr<StateActor>,
}

impl Hub {
    /// The hub of relay `node`, showing remote cursors through `state`.
    pub fn new(node: &str, state: Addr<StateActor>) -> Self {
        Self { cursors: Cursors::new(node), state }
    }

    /// A local cursor `id` (a client, or `<client>:<tab>`) of `room` moved: the frame to send to
    /// every relay.
    pub fn moved(&mut self, id: String, cursor: LocalCursor) -> ByteString {
        wire::presence(&self.cursors.moved(id, cursor))
    }

    /// A local cursor left: the frame to send, if it had gone out.
    pub fn left(&mut self, id: &str) -> Option<ByteString> {
        let leave = self.cursors.left(id)?;
        Some(wire::presence_leave(&leave.origin, leave.seq, &leave.id, &leave.room))
    }

    /// A remote cursor came by way of `via`: shown here (to its room's members) if it is new;
    /// then the frame to pass on.
    pub fn heard(&mut self, cursor: RemoteCursor, via: &str) -> Option<ByteString> {
        if !self.cursors.remote(&cursor, via) {
            return None;
        }
        let frame = wire::presence(&cursor);
        let RemoteCursor { id, room, color, user, x, y, .. } = cursor;
        self.state.do_send(RemotePresence { id, room, color, user: user.map(Arc::from), x, y });
        Some(frame)
    }

    /// A remote leave of a client of `room`: the cursor is hidden here if the leave is new; then
    /// the frame to pass on.
    pub fn heard_leave(&mut self, origin: &str, seq: u64, id: String, room: Room) -> Option<ByteString> {
        // The room the cursor was shown in, if it was; else the leave's own.
        let room = self.cursors.remote_left(origin, seq, &id)?.unwrap_or(room);
        let frame = wire::presence_leave(origin, seq, &id, &room);
        self.state.do_send(RemoteLeave { ids: vec![(room, id)] });
        Some(frame)
    }

    /// `via` is gone (a link dropped, a relay's heartbeat stopped): the cursors that came by it
    /// leave here; the leaves to pass on to relays behind us.
    pub fn gone(&mut self, via: &str) -> Vec<ByteString> {
        let gone = self.cursors.gone(via);
        let frames = gone.iter().map(|l| wire::presence_leave(&l.origin, l.seq, &l.id, &l.room)).collect();
        self.hide(gone.into_iter().map(|l| (l.room, l.id)).collect());
        frames
    }

    /// Every [`REFRESH`]: our cursors again (the frames to send); remote cursors not refreshed
    /// for [`TTL`] leave here.
    pub fn refresh(&mut self) -> Vec<ByteString> {
        let expired = self.cursors.expired();
        self.hide(expired);
        self.cursors.refresh().iter().map(wire::presence).collect()
    }

    fn hide(&self, ids: Vec<(Room, String)>) {
        if !ids.is_empty() {
            self.state.do_send(RemoteLeave { ids });
        }
    }
}

/// LocalCursor cursors are announced again this often.
pub const REFRESH: Duration = Duration::from_secs(10);
/// A remote cursor not refreshed for this long leaves.
pub const TTL: Duration = Duration::from_secs(30);

/// A leave to send: `id` of `room`, from `origin`, numbered `seq`.
#[derive(Debug, PartialEq)]
pub struct Leave {
    /// Node the client is on.
    pub origin: String,
    /// The origin's sequence number.
    pub seq: u64,
    /// The client.
    pub id: String,
    /// Its room.
    pub room: Room,
}

/// A remote cursor being shown to local clients.
struct Shown {
    origin: String,
    /// The room it is shown in.
    room: Room,
    /// The peer (link) it came by; over NATS, its origin.
    via: String,
    refreshed: Instant,
}

/// What a relay knows of cursors: its own clients', and the remote ones it shows.
struct Cursors {
    node: String,
    seq: u64,
    /// LocalCursor cursors by id (a client's, or `<client>:<tab>`).
    local: HashMap<String, LocalCursor>,
    origin_seq: HashMap<String, u64>,
    shown: HashMap<String, Shown>,
}

impl Cursors {
    /// Bookkeeping for relay `node`.
    pub fn new(node: &str) -> Self {
        Self { node: node.to_owned(), seq: 0, local: HashMap::new(), origin_seq: HashMap::new(), shown: HashMap::new() }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq = (self.seq + 1).max(wall_clock_ns());
        self.seq
    }

    fn cursor(&mut self, id: String, c: LocalCursor) -> RemoteCursor {
        RemoteCursor {
            origin: self.node.clone(),
            seq: self.next_seq(),
            id,
            color: c.color,
            x: c.x,
            y: c.y,
            room: c.room,
            user: c.user.map(|u| u.to_string()),
        }
    }

    /// A local client moved: the message to send.
    pub fn moved(&mut self, id: String, cursor: LocalCursor) -> RemoteCursor {
        self.local.insert(id.clone(), cursor.clone());
        self.cursor(id, cursor)
    }

    /// A local client left: the leave to send, if it had a cursor.
    pub fn left(&mut self, id: &str) -> Option<Leave> {
        let cursor = self.local.remove(id)?;
        Some(Leave { origin: self.node.clone(), seq: self.next_seq(), id: id.to_owned(), room: cursor.room })
    }

    /// Every local cursor again, with fresh sequence numbers.
    pub fn refresh(&mut self) -> Vec<RemoteCursor> {
        let local: Vec<_> = self.local.iter().map(|(id, c)| (id.clone(), c.clone())).collect();
        local.into_iter().map(|(id, c)| self.cursor(id, c)).collect()
    }

    /// Is this message from `origin` new (not ours, not a copy)? Records its sequence if so.
    fn fresh(&mut self, origin: &str, seq: u64) -> bool {
        if origin == self.node || self.origin_seq.get(origin).is_some_and(|s| *s >= seq) {
            return false;
        }
        self.origin_seq.insert(origin.to_owned(), seq);
        true
    }

    /// A remote cursor arrived by way of `via`; true if it is new (show it, pass it on).
    pub fn remote(&mut self, cursor: &RemoteCursor, via: &str) -> bool {
        if !self.fresh(&cursor.origin, cursor.seq) {
            return false;
        }
        let shown = Shown {
            origin: cursor.origin.clone(),
            room: cursor.room.clone(),
            via: via.to_owned(),
            refreshed: Instant::now(),
        };
        self.shown.insert(cursor.id.clone(), shown);
        true
    }

    /// A remote leave arrived; `Some` if it is new (hide the cursor, pass it on), holding the
    /// room the cursor was shown in, if it was.
    pub fn remote_left(&mut self, origin: &str, seq: u64, id: &str) -> Option<Option<Room>> {
        if !self.fresh(origin, seq) {
            return None;
        }
        Some(self.shown.remove(id).map(|s| s.room))
    }

    /// `via` is gone (its link dropped, its heartbeat stopped): the cursors that came by it leave,
    /// whichever node they are from. Returns the leaves to pass on, each numbered just past its
    /// origin's last sequence (a cursor still reachable another way comes back with its origin's
    /// next refresh).
    pub fn gone(&mut self, via: &str) -> Vec<Leave> {
        let ids: Vec<String> = self.shown.iter().filter(|(_, c)| c.via == via).map(|(id, _)| id.clone()).collect();
        ids.into_iter()
            .filter_map(|id| {
                let shown = self.shown.remove(&id)?;
                let seq = self.origin_seq.entry(shown.origin.clone()).or_default();
                *seq += 1;
                Some(Leave { origin: shown.origin, seq: *seq, id, room: shown.room })
            })
            .collect()
    }

    /// Remote cursors not refreshed for [`TTL`]: removed, their rooms and ids returned.
    pub fn expired(&mut self) -> Vec<(Room, String)> {
        let ids: Vec<String> =
            self.shown.iter().filter(|(_, c)| c.refreshed.elapsed() > TTL).map(|(id, _)| id.clone()).collect();
        ids.into_iter().filter_map(|id| Some((self.shown.remove(&id)?.room, id))).collect()
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    fn at(room: &Room, x: i64, y: i64) -> LocalCursor {
        LocalCursor { room: room.clone(), color: "red".into(), user: None, x, y }
    }

    #[test]
    fn copies_and_own_messages_are_dropped_and_gone_origins_leave() {
        let mut a = Cursors::new("a");
        let mut b = Cursors::new("b");
        let id = Uuid::new_v4().to_string();
        let cursor = a.moved(id.clone(), at(&Room::DEFAULT, 1, 2));
        assert!(b.remote(&cursor, "x"), "first copy, by way of x");
        assert!(!b.remote(&cursor, "y"), "second copy");
        assert!(!a.remote(&cursor, "x"), "our own, come back");
        let refreshed = a.refresh();
        assert_eq!(refreshed.len(), 1);
        assert!(refreshed[0].seq > cursor.seq && b.remote(&refreshed[0], "x"));
        assert!(b.gone("a").is_empty(), "it did not come by a's own link");
        let gone = b.gone("x");
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].origin.as_str(), gone[0].id.as_str()), ("a", id.as_str()));
        assert!(b.gone("x").is_empty());
        // The origin's next real message is newer than the forged leave.
        let again = a.moved(id.clone(), at(&Room::DEFAULT, 3, 4));
        assert!(again.seq > gone[0].seq && b.remote(&again, "y"));
        let leave = a.left(&id).unwrap();
        assert_eq!(b.remote_left(&leave.origin, leave.seq, &leave.id), Some(Some(Room::DEFAULT)));
        assert!(a.left(&id).is_none());
    }

    #[test]
    fn cursors_keep_their_room_through_refreshes_leaves_and_gone_links() {
        let board = Room::parse("board").unwrap();
        let mut a = Cursors::new("a");
        let mut b = Cursors::new("b");
        let (one, two) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
        let mut user = at(&board, 1, 2);
        user.user = Some(Arc::from("alice"));
        let cursor = a.moved(one.clone(), user);
        assert_eq!((&cursor.room, cursor.user.as_deref()), (&board, Some("alice")));
        assert!(b.remote(&cursor, "x"));
        let cursor = a.moved(two.clone(), at(&Room::DEFAULT, 5, 6));
        assert!(b.remote(&cursor, "x"));
        let mut rooms: Vec<Room> = a.refresh().into_iter().map(|c| c.room).collect();
        rooms.sort();
        assert_eq!(rooms, [Room::DEFAULT, board.clone()]);
        // A leave names the room its cursor was in.
        let leave = a.left(&one).unwrap();
        assert_eq!(leave.room, board);
        assert_eq!(b.remote_left(&leave.origin, leave.seq, &leave.id), Some(Some(board.clone())));
        // A leave of a cursor never shown: new, but no room known here.
        assert_eq!(b.remote_left("a", leave.seq + 1, "unknown"), Some(None));
        let gone = b.gone("x");
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].id.as_str(), &gone[0].room), (two.as_str(), &Room::DEFAULT));
    }

    #[test]
    fn the_frames_carry_room_and_user_only_when_there_is_one() {
        let board = Room::parse("board").unwrap();
        let mut a = Cursors::new("a");
        let id = Uuid::new_v4().to_string();
        let plain: serde_json::Value =
            serde_json::from_str(&wire::presence(&a.moved(id.clone(), at(&Room::DEFAULT, 1, 2)))).unwrap();
        let keys: Vec<&str> = plain.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["type", "origin", "seq", "id", "color", "x", "y"], "as before rooms");
        let mut user = at(&board, 1, 2);
        user.user = Some(Arc::from("alice"));
        let frame = wire::presence(&a.moved(id.clone(), user));
        let Some(wire::PeerFrame::Presence(back)) = wire::parse(&frame) else { panic!("{frame}") };
        assert_eq!((back.room, back.user.as_deref()), (board.clone(), Some("alice")));
        let leave = a.left(&id).unwrap();
        let frame = wire::presence_leave(&leave.origin, leave.seq, &leave.id, &leave.room);
        let Some(wire::PeerFrame::PresenceLeave { room, .. }) = wire::parse(&frame) else { panic!("{frame}") };
        assert_eq!(room, board);
        let frame = wire::presence_leave("a", 1, "x", &Room::DEFAULT);
        assert!(!frame.contains("room"));
    }
}
