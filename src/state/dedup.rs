//! Exactly-once v2 writes: the relay remembers, for a bounded window, which writes of which client
//! it already applied, and answers a repeat with the original `ack` instead of applying it again.
//!
//! A v2 client that connects with `?cid=<client id>` (stable across its reconnects and reloads)
//! names each write by its `ref`. A client re-sends writes it sent but saw no `ack` for (the socket
//! dropped between apply and ack); applied again, such a repeat would get a fresh stamp and land
//! over another client's later write. So, per `(cid, ref)`:
//!
//! - unseen: the write is applied, and remembered as in flight;
//! - in flight (queued or being made durable): the repeat is not applied; its connection gets the
//!   `ack` (or `nack`) when the first one settles;
//! - done: the repeat is answered at once with the original `ack` frame, byte for byte.
//!
//! The window is bounded by count, never by time: the last [`PER_CLIENT`] acknowledged writes of
//! each client id, and [`TOTAL`] over all client ids (the oldest go first). In-flight entries are
//! not counted: they are bounded by the admission semaphore (each holds a permit). The table lives
//! in memory: a repeat after the relay restarted, after its entry was evicted, or sent to another
//! relay of a mesh is applied again (static/README.md, "Exactly-once writes").

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytestring::ByteString;
use serde_json::Value;
use uuid::Uuid;

/// Acknowledged writes remembered per client id.
pub const PER_CLIENT: usize = 1024;
/// Acknowledged writes remembered in total: about 400 bytes each plus the key, so some 25 MiB at
/// most; at 10,000 writes a second that is still the last 6 seconds, enough for a reconnect.
pub const TOTAL: usize = 65_536;

/// A write's identity: the client id and the JSON text of its `ref`.
type WriteId = (Arc<str>, String);

enum Entry {
    /// Being made durable; the connections (besides the writer's) waiting for its answer.
    InFlight(Vec<Uuid>),
    /// Durable: the `ack` frame the writer got.
    Done(ByteString),
}

/// What to do with an incoming write that names itself.
pub(super) enum Check {
    /// First time: apply it.
    Apply,
    /// The same write is in flight: wait for its answer.
    Wait,
    /// Already applied: send this, the original `ack`.
    Answer(ByteString),
}

#[derive(Default)]
struct ClientWrites {
    entries: HashMap<String, Entry>,
    /// Acknowledged refs, oldest first.
    done: VecDeque<String>,
}

/// The table. One per state actor.
#[derive(Default)]
pub(super) struct Dedup {
    clients: HashMap<Arc<str>, ClientWrites>,
    /// Acknowledged writes over all clients, oldest first (may name entries already evicted).
    done: VecDeque<WriteId>,
    /// In-flight writes by (writing connection, ref text), to find them when they settle.
    in_flight: HashMap<(Uuid, String), Arc<str>>,
}

impl Dedup {
    /// Looks up the write `reference` of client `cid`, sent on connection `origin`.
    pub(super) fn check(&mut self, cid: &Arc<str>, reference: &Value, origin: Uuid) -> Check {
        let text = reference.to_string();
        let client = self.clients.entry(Arc::clone(cid)).or_default();
        match client.entries.get_mut(&text) {
            Some(Entry::Done(frame)) => Check::Answer(frame.clone()),
            Some(Entry::InFlight(waiters)) => {
                waiters.push(origin);
                Check::Wait
            }
            None => {
                client.entries.insert(text.clone(), Entry::InFlight(Vec::new()));
                self.in_flight.insert((origin, text), Arc::clone(cid));
                Check::Apply
            }
        }
    }

    /// The write `reference` from `origin` is durable and acknowledged with `ack`: remember the
    /// frame, and return the other connections waiting for it.
    pub(super) fn acked(&mut self, origin: Uuid, reference: &Value, ack: &ByteString) -> Vec<Uuid> {
        let text = reference.to_string();
        let Some(cid) = self.in_flight.remove(&(origin, text.clone())) else { return Vec::new() };
        let Some(client) = self.clients.get_mut(&cid) else { return Vec::new() };
        let waiters = match client.entries.insert(text.clone(), Entry::Done(ack.clone())) {
            Some(Entry::InFlight(waiters)) => waiters,
            _ => Vec::new(),
        };
        client.done.push_back(text.clone());
        if client.done.len() > PER_CLIENT
            && let Some(old) = client.done.pop_front()
        {
            client.entries.remove(&old);
        }
        self.done.push_back((cid, text));
        while self.done.len() > TOTAL {
            let Some((cid, old)) = self.done.pop_front() else { break };
            self.forget_done(&cid, &old);
        }
        waiters
    }

    /// The write `reference` from `origin` was refused and never applied: forget it (a repeat
    /// may apply) and return the connections waiting for it, to be told too.
    pub(super) fn refused(&mut self, origin: Uuid, reference: &Value) -> Vec<Uuid> {
        let text = reference.to_string();
        let Some(cid) = self.in_flight.remove(&(origin, text.clone())) else { return Vec::new() };
        let Some(client) = self.clients.get_mut(&cid) else { return Vec::new() };
        let waiters = match client.entries.remove(&text) {
            Some(Entry::InFlight(waiters)) => waiters,
            Some(done) => {
                client.entries.insert(text, done);
                Vec::new()
            }
            None => Vec::new(),
        };
        if client.entries.is_empty() {
            self.clients.remove(&cid);
        }
        waiters
    }

    fn forget_done(&mut self, cid: &Arc<str>, text: &str) {
        let Some(client) = self.clients.get_mut(cid) else { return };
        // Both queues are in acknowledgement order, so a live entry is its client's oldest.
        if client.done.front().is_some_and(|r| r == text) {
            client.done.pop_front();
            client.entries.remove(text);
        }
        if client.entries.is_empty() {
            self.clients.remove(cid);
        }
    }

    /// Remembered acknowledged writes, in total.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.clients.values().map(|c| c.entries.values().filter(|e| matches!(e, Entry::Done(_))).count()).sum()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_repeat_waits_while_in_flight_then_gets_the_original_ack() {
        let mut d = Dedup::default();
        let cid: Arc<str> = "c".into();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(matches!(d.check(&cid, &json!("w1"), a), Check::Apply));
        assert!(matches!(d.check(&cid, &json!("w1"), b), Check::Wait));
        let ack = ByteString::from_static("{\"type\":\"ack\"}");
        assert_eq!(d.acked(a, &json!("w1"), &ack), vec![b]);
        assert!(matches!(d.check(&cid, &json!("w1"), b), Check::Answer(f) if f == ack));
        // Another client's ref of the same text is its own write.
        assert!(matches!(d.check(&"other".into(), &json!("w1"), b), Check::Apply));
    }

    #[test]
    fn a_refused_write_may_be_sent_again_and_its_waiters_are_told() {
        let mut d = Dedup::default();
        let cid: Arc<str> = "c".into();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(matches!(d.check(&cid, &json!(1), a), Check::Apply));
        assert!(matches!(d.check(&cid, &json!(1), b), Check::Wait));
        assert_eq!(d.refused(a, &json!(1)), vec![b]);
        assert!(matches!(d.check(&cid, &json!(1), b), Check::Apply));
    }

    #[test]
    fn the_window_is_bounded_per_client_and_in_total() {
        let mut d = Dedup::default();
        let cid: Arc<str> = "c".into();
        let origin = Uuid::new_v4();
        let ack = ByteString::from_static("a");
        for i in 0..PER_CLIENT + 10 {
            assert!(matches!(d.check(&cid, &json!(i), origin), Check::Apply));
            d.acked(origin, &json!(i), &ack);
        }
        assert_eq!(d.remembered(), PER_CLIENT);
        assert!(matches!(d.check(&cid, &json!(0), origin), Check::Apply), "the oldest was evicted");
        assert!(matches!(d.check(&cid, &json!(PER_CLIENT + 9), origin), Check::Answer(_)));
        let mut d = Dedup::default();
        for i in 0..TOTAL + 5 {
            let cid: Arc<str> = format!("c{}", i % 200).into();
            d.check(&cid, &json!(i), origin);
            d.acked(origin, &json!(i), &ack);
        }
        assert_eq!(d.remembered(), TOTAL);
        assert!(d.done.len() <= TOTAL && d.clients.len() <= 200);
    }
}
