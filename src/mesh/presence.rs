//! Cursors across relays, whatever carries them (peer links or NATS subjects).
//!
//! Presence is ephemeral: never stored, never in the ledger. Each relay numbers the cursor
//! messages it originates (a wall-clock-based sequence, so it keeps growing across restarts), and a
//! relay accepts a message only if its sequence is newer than the last it saw from that origin: a
//! message flooding a ring or arriving twice is dropped at its second copy. Local cursors are
//! announced again every [`REFRESH`], and a remote cursor that is not refreshed for [`TTL`]
//! leaves, which bounds how long a cursor outlives a relay that vanished without a word.
//!
//! [`Hub`] is the one presence logic both transports use (peer links and NATS): it keeps the
//! bookkeeping ([`Cursors`]), shows and hides remote cursors through the state, and hands the
//! transport the frames to send; the transport only carries them.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use actix::Addr;
use bytestring::ByteString;
use uuid::Uuid;

use super::wire::{self, RemoteCursor};
use crate::{
    hlc::wall_clock_ns,
    room::Room,
    state::{RemoteLeave, RemotePresence, StateActor},
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

    /// A local client moved: the frame to send to every relay.
    pub fn moved(&mut self, id: Uuid, color: String, x: i64, y: i64) -> ByteString {
        wire::presence(&self.cursors.moved(id, color, x, y))
    }

    /// A local client left: the frame to send, if its cursor had gone out.
    pub fn left(&mut self, id: Uuid) -> Option<ByteString> {
        let (origin, seq, id) = self.cursors.left(id)?;
        Some(wire::presence_leave(&origin, seq, &id))
    }

    /// A remote cursor came by way of `via`: shown here if it is new; then the frame to pass on.
    pub fn heard(&mut self, cursor: RemoteCursor, via: &str) -> Option<ByteString> {
        if !self.cursors.remote(&cursor, via) {
            return None;
        }
        let frame = wire::presence(&cursor);
        let RemoteCursor { id, color, x, y, .. } = cursor;
        self.state.do_send(RemotePresence { id, room: Room::DEFAULT, color, user: None, x, y });
        Some(frame)
    }

    /// A remote leave: the cursor is hidden here if the leave is new; then the frame to pass on.
    pub fn heard_leave(&mut self, origin: &str, seq: u64, id: String) -> Option<ByteString> {
        if !self.cursors.remote_left(origin, seq, &id) {
            return None;
        }
        let frame = wire::presence_leave(origin, seq, &id);
        self.state.do_send(RemoteLeave { ids: vec![(Room::DEFAULT, id)] });
        Some(frame)
    }

    /// `via` is gone (a link dropped, a relay's heartbeat stopped): the cursors that came by it
    /// leave here; the leaves to pass on to relays behind us.
    pub fn gone(&mut self, via: &str) -> Vec<ByteString> {
        let gone = self.cursors.gone(via);
        let frames = gone.iter().map(|(origin, seq, id)| wire::presence_leave(origin, *seq, id)).collect();
        self.hide(gone.into_iter().map(|(_, _, id)| id).collect());
        frames
    }

    /// Every [`REFRESH`]: our cursors again (the frames to send); remote cursors not refreshed
    /// for [`TTL`] leave here.
    pub fn refresh(&mut self) -> Vec<ByteString> {
        let expired = self.cursors.expired();
        self.hide(expired);
        self.cursors.refresh().iter().map(wire::presence).collect()
    }

    fn hide(&self, ids: Vec<String>) {
        if !ids.is_empty() {
            self.state.do_send(RemoteLeave { ids: ids.into_iter().map(|id| (Room::DEFAULT, id)).collect() });
        }
    }
}

/// Local cursors are announced again this often.
pub const REFRESH: Duration = Duration::from_secs(10);
/// A remote cursor not refreshed for this long leaves.
pub const TTL: Duration = Duration::from_secs(30);

/// A remote cursor being shown to local clients.
struct Shown {
    origin: String,
    /// The peer (link) it came by; over NATS, its origin.
    via: String,
    refreshed: Instant,
}

/// What a relay knows of cursors: its own clients', and the remote ones it shows.
struct Cursors {
    node: String,
    seq: u64,
    local: HashMap<Uuid, (String, i64, i64)>,
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

    fn cursor(&mut self, id: Uuid, color: String, x: i64, y: i64) -> RemoteCursor {
        RemoteCursor { origin: self.node.clone(), seq: self.next_seq(), id: id.to_string(), color, x, y }
    }

    /// A local client moved: the message to send.
    pub fn moved(&mut self, id: Uuid, color: String, x: i64, y: i64) -> RemoteCursor {
        self.local.insert(id, (color.clone(), x, y));
        self.cursor(id, color, x, y)
    }

    /// A local client left: `(origin, seq, id)` of the leave to send, if it had a cursor.
    pub fn left(&mut self, id: Uuid) -> Option<(String, u64, String)> {
        self.local.remove(&id)?;
        Some((self.node.clone(), self.next_seq(), id.to_string()))
    }

    /// Every local cursor again, with fresh sequence numbers.
    pub fn refresh(&mut self) -> Vec<RemoteCursor> {
        let local: Vec<_> = self.local.iter().map(|(id, c)| (*id, c.clone())).collect();
        local.into_iter().map(|(id, (color, x, y))| self.cursor(id, color, x, y)).collect()
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
        let shown = Shown { origin: cursor.origin.clone(), via: via.to_owned(), refreshed: Instant::now() };
        self.shown.insert(cursor.id.clone(), shown);
        true
    }

    /// A remote leave arrived; true if it is new (hide the cursor, pass it on).
    pub fn remote_left(&mut self, origin: &str, seq: u64, id: &str) -> bool {
        if !self.fresh(origin, seq) {
            return false;
        }
        self.shown.remove(id);
        true
    }

    /// `via` is gone (its link dropped, its heartbeat stopped): the cursors that came by it leave,
    /// whichever node they are from. Returns the leaves to pass on, each numbered just past its
    /// origin's last sequence (a cursor still reachable another way comes back with its origin's
    /// next refresh).
    pub fn gone(&mut self, via: &str) -> Vec<(String, u64, String)> {
        let ids: Vec<String> = self.shown.iter().filter(|(_, c)| c.via == via).map(|(id, _)| id.clone()).collect();
        ids.into_iter()
            .filter_map(|id| {
                let shown = self.shown.remove(&id)?;
                let seq = self.origin_seq.entry(shown.origin.clone()).or_default();
                *seq += 1;
                Some((shown.origin, *seq, id))
            })
            .collect()
    }

    /// Remote cursors not refreshed for [`TTL`]: removed, their ids returned.
    pub fn expired(&mut self) -> Vec<String> {
        let ids: Vec<String> =
            self.shown.iter().filter(|(_, c)| c.refreshed.elapsed() > TTL).map(|(id, _)| id.clone()).collect();
        for id in &ids {
            self.shown.remove(id);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_and_own_messages_are_dropped_and_gone_origins_leave() {
        let mut a = Cursors::new("a");
        let mut b = Cursors::new("b");
        let id = Uuid::new_v4();
        let cursor = a.moved(id, "red".into(), 1, 2);
        assert!(b.remote(&cursor, "x"), "first copy, by way of x");
        assert!(!b.remote(&cursor, "y"), "second copy");
        assert!(!a.remote(&cursor, "x"), "our own, come back");
        let refreshed = a.refresh();
        assert_eq!(refreshed.len(), 1);
        assert!(refreshed[0].seq > cursor.seq && b.remote(&refreshed[0], "x"));
        assert!(b.gone("a").is_empty(), "it did not come by a's own link");
        let gone = b.gone("x");
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].0.as_str(), gone[0].2.as_str()), ("a", id.to_string().as_str()));
        assert!(b.gone("x").is_empty());
        // The origin's next real message is newer than the forged leave.
        let again = a.moved(id, "red".into(), 3, 4);
        assert!(again.seq > gone[0].1 && b.remote(&again, "y"));
        let (origin, seq, left) = a.left(id).unwrap();
        assert!(b.remote_left(&origin, seq, &left));
        assert!(a.left(id).is_none());
    }
}
