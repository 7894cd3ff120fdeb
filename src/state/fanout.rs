//! Fan-out: applying durable batches and sending every member of the op's room the frames of its
//! protocol version, through its bounded outbox; removing members that are gone, each with one
//! leave.

use std::{collections::HashMap, sync::Arc};

use bytestring::ByteString;
use uuid::Uuid;

use super::{Source, StateActor, StateEvent, WriteMeta};
use crate::{
    lww::Op,
    outbox::Outbound,
    protocol::{self, Version},
    room::Room,
};

/// The frames one batch produced for one room.
#[derive(Default)]
struct RoomFrames {
    v1: Vec<ByteString>,
    v2: Vec<ByteString>,
}

impl StateActor {
    /// Applies a durable batch and sends what won to the members of each op's room: v1 frames to
    /// v1 members, v2 frames (stamp, origin, the room's sequence number) to v2 members, then an
    /// `ack` to each v2 writer that asked for one, and the winners to the mesh.
    ///
    /// Peer ops were checked against the map and the queue before they were queued, and local
    /// stamps order after everything the clock has seen, so every op should win; one that does
    /// not (a clock pushed to its edge) is never shown, echoed or acked: its writer is told the
    /// relay's value instead (see [`StateActor::lost`]).
    pub(super) fn publish(&mut self, ops: Vec<Op>, metas: &mut [WriteMeta]) {
        let mut frames: HashMap<Room, RoomFrames> = HashMap::new();
        let mut acks = Vec::new();
        let (mut durable, mut sources) = (Vec::new(), Vec::new());
        let mut api_done = Vec::new();
        for (i, (op, meta)) in ops.into_iter().zip(metas.iter_mut()).enumerate() {
            if !self.rooms.entry(op.room.clone()).or_default().map.would_win(&op) {
                self.lost(&op, meta);
                continue;
            }
            let Some(room) = self.rooms.get_mut(&op.room) else { continue };
            let seq = room.next_seq(&op.key);
            // Joiners waiting for a snapshot being encoded get these frames after it, in their version.
            let recording = room.snapshots.recording();
            let has = |v| room.members.values().any(|m| m.version == v);
            let out = frames.entry(op.room.clone()).or_default();
            if recording || has(Version::V1) {
                out.v1.push(protocol::op_frame(&op));
            }
            if recording || has(Version::V2) {
                let origin = match &meta.source {
                    Source::Client { origin, .. } => Some(origin.to_string()),
                    Source::Peer(_) | Source::Api { .. } => None,
                };
                out.v2.push(protocol::op_frame_v2(&op, origin.as_deref(), seq));
            }
            if let Source::Client { origin, reference: Some(reference), .. } = &meta.source {
                acks.push((op.room.clone(), *origin, reference, protocol::ack(reference, &op, seq)));
            }
            if let Source::Api { .. } = &meta.source {
                api_done.push((i, op.stamp.clone()));
            }
            if self.mesh.is_some() {
                durable.push(op.clone());
                sources.push(meta.source.peer());
            }
            let room_name = op.room.clone();
            room.apply(&room_name, op, &mut self.digest);
        }
        if let Some(mesh) = &self.mesh
            && !durable.is_empty()
        {
            mesh.do_send(StateEvent::Durable { ops: durable.into(), sources });
        }
        for (name, RoomFrames { v1, v2 }) in frames {
            let Some(room) = self.rooms.get_mut(&name) else { continue };
            if room.snapshots.recording() {
                room.snapshots.record(&v1, &v2);
            }
            let gone = room.broadcast(&Outbound::frames(v1.into()), &Outbound::frames(v2.into()), None);
            self.announce_leaves(&name, gone);
        }
        for (room, origin, reference, frame) in acks {
            // Connections that sent the same write again while it was in flight get the ack too.
            let waiters = self.dedup.acked(origin, reference, &frame);
            for id in std::iter::once(origin).chain(waiters) {
                self.send_v2(&room, id, &frame);
            }
        }
        // API callers are answered once their write is durable and sent to the room.
        for (i, stamp) in api_done {
            if let Source::Api { reply, .. } = &mut metas[i].source
                && let Some(reply) = reply.take()
            {
                let _ = reply.send(Ok(stamp));
            }
        }
    }

    /// Pushes `frame` to the member `id`, if it is a v2 member (of `room`, or wherever it is).
    fn send_v2(&self, room: &Room, id: Uuid, frame: &ByteString) {
        let room = self.member_rooms.get(&id).unwrap_or(room);
        if let Some(state) = self.rooms.get(room)
            && state.members.get(&id).is_some_and(|m| m.version == Version::V2)
        {
            state.send_to(&id, frame.clone());
        }
    }

    /// A durable op that lost to the map: nobody is shown it. A v2 writer that gave a `ref` gets
    /// `nack superseded` (its client then shows the relay's value again); a v1 writer, which has
    /// no nack, is sent the relay's register for the key, so the tab agrees with the relay.
    fn lost(&mut self, op: &Op, meta: &mut WriteMeta) {
        if let Source::Api { reply, .. } = &mut meta.source {
            log::warn!("an API write to {:?} lost to a newer stamp already held; its caller is told", op.key);
            if let Some(reply) = reply.take() {
                let _ = reply.send(Err(super::ApiRefused::Superseded));
            }
            return;
        }
        let Source::Client { origin, reference, .. } = &meta.source else { return };
        log::warn!("a local write to {:?} lost to a newer stamp already held; its writer is told", op.key);
        if let Some(reference) = reference {
            self.nack(&op.room, *origin, reference, "superseded");
            return;
        }
        let Some(room) = self.rooms.get(&op.room) else { return };
        if room.members.get(origin).is_some_and(|m| m.version == Version::V1)
            && let Some(register) = room.map.register(&op.key)
        {
            room.send_to(origin, protocol::op_frame(&register.to_op(&op.key)));
        }
    }

    /// Tells v2 writers that gave a `ref`, and API callers, that these writes will never apply
    /// because the ledger refused them (`reason`: `ledger_failed`).
    pub(super) fn refuse(&mut self, metas: &mut [WriteMeta], reason: &str) {
        for meta in metas {
            match &mut meta.source {
                Source::Client { origin, reference: Some(reference), .. } => {
                    self.nack(&meta.room, *origin, reference, reason);
                }
                Source::Api { reply, .. } => {
                    if let Some(reply) = reply.take() {
                        let _ = reply.send(Err(super::ApiRefused::LedgerFailed));
                    }
                }
                _ => {}
            }
        }
    }

    /// A write that will never apply: its writer (if v2) is told, and so are the connections that
    /// sent it again meanwhile.
    pub(super) fn nack(&mut self, room: &Room, origin: Uuid, reference: &serde_json::Value, reason: &str) {
        let frame = protocol::nack(reference, reason);
        for id in std::iter::once(origin).chain(self.dedup.refused(origin, reference)) {
            self.send_v2(room, id, &frame);
        }
    }

    /// Members that were found gone while sending to `room`: each one's leave, once.
    pub(super) fn announce_leaves(&mut self, room: &Room, gone: Vec<Uuid>) {
        for id in gone {
            self.announce_leave(room, id);
        }
    }

    /// A local member of `room` left: tell the others there, and the mesh.
    /// Its tabs' cursors (v2) leave with it, each once.
    pub(super) fn announce_leave(&mut self, room: &Room, id: Uuid) {
        self.member_rooms.remove(&id);
        let plain = id.to_string();
        self.cursors.forget_local(&plain);
        if let Some(mesh) = &self.mesh {
            mesh.do_send(StateEvent::Leave { id: plain.clone(), room: room.clone() });
        }
        self.broadcast_leave(room, &plain, Some(id));
        for tab in self.cursors.take_tabs(&id) {
            self.tab_left(room, id, &tab);
        }
        self.drop_if_idle(room);
    }

    /// Sends `presence-leave` for `id` to every member of `room` except `skip`; a cursor of `id`
    /// still waiting for the next presence tick is dropped first, so it cannot follow its leave.
    pub(super) fn broadcast_leave(&mut self, room: &Room, id: &str, skip: Option<Uuid>) {
        self.cursors.forget(id);
        if self.stopping.is_some() {
            return;
        }
        let Some(state) = self.rooms.get_mut(room) else { return };
        let item = Outbound::frames(Arc::new([protocol::presence_leave(id)]));
        let gone = state.broadcast(&item, &item, skip);
        self.announce_leaves(room, gone);
    }
}
