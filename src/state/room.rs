//! One room's state: its map, its members, what a v2 resume needs, its encoded snapshots, and the
//! size it holds. This is everything that belongs to one room; what is relay-wide (the clock, the
//! batch going to the ledger, admission, the mesh and its one digest, compaction) stays on
//! [`super::StateActor`], which keeps one `RoomState` per room that has registers or members.
//!
//! How a write reaches a room: the session sends `Write { room, .. }`; the actor checks the room's
//! caps ([`RoomState::admits`]), stamps the op and queues it (relay-wide, one batch for every
//! room); once the batch is durable, [`super::fanout`] applies each op to its room
//! ([`RoomState::apply`]) and sends its frames to that room's members only.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use uuid::Uuid;

use super::{Member, join};
use crate::{
    digest,
    json::Json,
    lww::{LwwMap, Op, OpKind, Register},
    outbox::{Outbound, PushError},
    protocol::{self, close},
    room::Room,
};

/// One room.
#[derive(Default)]
pub(super) struct RoomState {
    pub(super) map: LwwMap,
    pub(super) members: HashMap<Uuid, Member>,
    /// Sequence number of the last op applied to this room in this run of the relay.
    pub(super) seq: u64,
    /// The sequence number at which each key last changed in this run, and the same ordered by
    /// sequence number (a v2 delta costs what changed since, not the map).
    pub(super) changed_at: HashMap<String, u64>,
    pub(super) changes: BTreeMap<u64, String>,
    /// Encoded snapshots for joiners, and joiners waiting for one.
    pub(super) snapshots: join::Snapshots,
    /// With a mesh: the newest queued (not yet durable) register per key, which a remote op must
    /// beat as well as the map's, so that only winners are queued.
    pub(super) overlay: HashMap<String, Register>,
    /// XOR of every register's hash: the room's fingerprint ([`digest::room_fingerprint`]).
    pub(super) hashes: u64,
    /// Bytes of keys and values (as JSON) of the room's live registers: what `[rooms] max_bytes`
    /// caps. Not counted (always 0) in the default room, which has no such cap.
    pub(super) bytes: usize,
    /// Client writes queued or being made durable, and their bytes: counted against the caps
    /// before they apply, so a burst cannot overshoot them.
    pub(super) queued: usize,
    pub(super) queued_bytes: usize,
}

/// The size a register of `room` counts for against `[rooms] max_bytes`: its key and its value
/// as JSON. Nothing in the default room, which has no byte cap, so its writes and its replay at
/// boot never pay for the count.
pub(super) fn size_of(room: &Room, key: &str, value: &Json) -> usize {
    if room.is_default() { 0 } else { key.len() + value.len() }
}

/// What the room's caps say about one more client write.
pub(super) struct Caps {
    pub(super) max_keys: usize,
    pub(super) max_bytes: usize,
}

impl RoomState {
    /// A room over a replayed map.
    pub(super) fn with_map(room: &Room, map: LwwMap, digest: &mut digest::Digest) -> Self {
        let hashes = digest.add(room, &map);
        let bytes = if room.is_default() { 0 } else { map.live().map(|(k, v)| size_of(room, k, v)).sum() };
        RoomState { map, hashes, bytes, ..RoomState::default() }
    }

    /// Nothing to keep: no registers, no members, nothing queued or being encoded.
    pub(super) fn is_idle(&self) -> bool {
        self.map.is_empty() && self.members.is_empty() && self.queued == 0 && self.snapshots.is_idle()
    }

    /// Would one more client write of `key` (`value`: `None` for a delete) to `room` stay within
    /// `caps`? Deletes always do; a new key must fit under the key cap; growing must fit under the
    /// bytes. The default room is upstream's one map, which had no such caps: it has none either.
    pub(super) fn admits(&self, room: &Room, key: &str, value: Option<&Json>, caps: &Caps) -> bool {
        let Some(value) = value.filter(|_| !room.is_default()) else { return true };
        let current = self.map.register(key);
        let new_key = current.is_none();
        if new_key && self.map.len() + self.queued >= caps.max_keys {
            return false;
        }
        let old = current.filter(|r| !r.tombstone).map_or(0, |r| size_of(room, key, &r.value));
        let new = size_of(room, key, value);
        new <= old || self.bytes + self.queued_bytes + (new - old) <= caps.max_bytes
    }

    /// Applies one durable op, keeping the relay's `digest`, the room's fingerprint and size
    /// current; true if the map changed.
    pub(super) fn apply(&mut self, room: &Room, op: Op, digest: &mut digest::Digest) -> bool {
        let old = self.map.register(&op.key);
        let old_hash = old.map(|r| digest::hash_of(room, &op.key, r));
        let old_size = old.filter(|r| !r.tombstone).map_or(0, |r| size_of(room, &op.key, &r.value));
        let new_hash = digest::op_hash(&op);
        let new_size = if op.kind == OpKind::Del { 0 } else { size_of(room, &op.key, &op.value) };
        if self.overlay.get(&op.key).is_some_and(|r| r.stamp == op.stamp) {
            self.overlay.remove(&op.key);
        }
        let key = op.key.clone();
        let changed = self.map.apply(op);
        if changed {
            digest.replace(room, &key, old_hash, new_hash);
            self.hashes ^= old_hash.unwrap_or(0) ^ new_hash;
            self.bytes = (self.bytes + new_size).saturating_sub(old_size);
        }
        changed
    }

    /// Records that `key` changed at the next sequence number; returns it.
    pub(super) fn next_seq(&mut self, key: &str) -> u64 {
        self.seq += 1;
        if let Some(before) = self.changed_at.insert(key.to_owned(), self.seq) {
            self.changes.remove(&before);
        }
        self.changes.insert(self.seq, key.to_owned());
        self.seq
    }

    /// Pushes to each member what `item_for` gives it. A member whose queue is full is too slow:
    /// it is told to close. A member whose queue is full or closed (its session ended, its own
    /// `Leave` may still be on the way) is removed here and returned, so the actor announces its
    /// leave once: the later `Leave` finds nothing, so every member that goes produces exactly one
    /// `presence-leave`, locally and across relays, whichever path noticed first.
    #[must_use]
    pub(super) fn send_each(&mut self, item_for: impl Fn(&Uuid, &Member) -> Option<Outbound>) -> Vec<Uuid> {
        let mut gone = Vec::new();
        self.members.retain(|id, member| {
            let Some(item) = item_for(id, member) else { return true };
            match member.outbox.push(item) {
                Ok(()) => true,
                Err(PushError::Full) => {
                    log::info!("client {} read too slowly and was disconnected", short(id));
                    if let Some(kick) = member.kick.take() {
                        let _ = kick.send((close::TRY_AGAIN_LATER, "too slow"));
                    }
                    gone.push(*id);
                    false
                }
                Err(PushError::Closed) => {
                    gone.push(*id);
                    false
                }
            }
        });
        gone
    }

    /// Sends to every member except `skip` the item for its protocol version.
    #[must_use]
    pub(super) fn broadcast(&mut self, v1: &Outbound, v2: &Outbound, skip: Option<Uuid>) -> Vec<Uuid> {
        self.send_each(|id, member| {
            if Some(*id) == skip {
                return None;
            }
            let item = if member.version == protocol::Version::V1 { v1 } else { v2 };
            let empty = matches!(item, Outbound::Frames { frames, .. } if frames.is_empty());
            (!empty).then(|| item.clone())
        })
    }

    /// Pushes one frame to one member, if it is here (a writer's ack or nack).
    pub(super) fn send_to(&self, id: &Uuid, frame: bytestring::ByteString) {
        if let Some(member) = self.members.get(id) {
            // A member too slow for this is caught by the next broadcast.
            let _ = member.outbox.push(Outbound::frames(Arc::new([frame])));
        }
    }
}

/// The first eight hex digits of a connection id, for logs.
pub(super) fn short(id: &Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}
