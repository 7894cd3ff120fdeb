//! Fan-out: applying durable batches and sending every member the frames of its protocol
//! version, through its bounded outbox; removing members that are gone, each with one leave.

use std::sync::Arc;

use uuid::Uuid;

use super::{Member, Source, StateActor, StateEvent, WriteMeta};
use crate::{
    lww::Op,
    outbox::{Outbound, PushError},
    protocol::{self, Version, close},
};

impl StateActor {
    /// Applies a durable batch and sends what won: v1 frames to v1 members, v2 frames (stamp,
    /// origin, sequence number) to v2 members, then an `ack` to each v2 writer that asked for one,
    /// and the winners to the mesh.
    ///
    /// Peer ops were checked against the map and the queue before they were queued, and local
    /// stamps order after everything the clock has seen, so every op should win; one that does
    /// not (a clock pushed to its edge) is never shown, echoed or acked: its writer is told the
    /// relay's value instead (see [`StateActor::lost`]).
    pub(super) fn publish(&mut self, ops: Vec<Op>, metas: &[WriteMeta]) {
        let has = |v| self.members.values().any(|m| m.version == v);
        // Joiners waiting for a snapshot being encoded get these frames after it, in their version.
        let recording = self.snapshots.recording();
        let (want_v1, want_v2) = (recording || has(Version::V1), recording || has(Version::V2));
        let (mut v1, mut v2, mut acks) = (Vec::new(), Vec::new(), Vec::new());
        let (mut durable, mut sources) = (Vec::new(), Vec::new());
        for (op, meta) in ops.into_iter().zip(metas) {
            if !self.map.would_win(&op) {
                self.lost(&op, meta);
                continue;
            }
            self.seq += 1;
            let seq = self.seq;
            let origin = match &meta.source {
                Source::Client { origin, .. } => Some(origin.to_string()),
                Source::Peer(_) => None,
            };
            if want_v1 {
                v1.push(protocol::op_frame(&op));
            }
            if want_v2 {
                v2.push(protocol::op_frame_v2(&op, origin.as_deref(), seq));
            }
            if let Source::Client { origin, reference: Some(reference) } = &meta.source {
                acks.push((*origin, reference, protocol::ack(reference, &op, seq)));
            }
            if self.mesh.is_some() {
                durable.push(op.clone());
                sources.push(meta.source.peer());
            }
            if let Some(before) = self.changed_at.insert(op.key.clone(), seq) {
                self.changes.remove(&before);
            }
            self.changes.insert(seq, op.key.clone());
            self.apply(op);
        }
        if recording {
            self.snapshots.record(&v1, &v2);
        }
        if let Some(mesh) = &self.mesh
            && !durable.is_empty()
        {
            mesh.do_send(StateEvent::Durable { ops: durable.into(), sources });
        }
        self.broadcast(&Outbound::frames(v1.into()), &Outbound::frames(v2.into()), None);
        for (origin, reference, frame) in acks {
            // Connections that sent the same write again while it was in flight get the ack too.
            let waiters = self.dedup.acked(origin, reference, &frame);
            for id in std::iter::once(origin).chain(waiters) {
                if let Some(member) = self.members.get(&id).filter(|m| m.version == Version::V2) {
                    // A writer too slow for its ack is caught by the next broadcast.
                    let _ = member.outbox.push(Outbound::frames(Arc::new([frame.clone()])));
                }
            }
        }
    }

    /// A durable op that lost to the map: nobody is shown it. A v2 writer that gave a `ref` gets
    /// `nack superseded` (its client then shows the relay's value again); a v1 writer, which has
    /// no nack, is sent the relay's register for the key, so the tab agrees with the relay.
    fn lost(&mut self, op: &Op, meta: &WriteMeta) {
        let Source::Client { origin, reference } = &meta.source else { return };
        log::warn!("a local write to {:?} lost to a newer stamp already held; its writer is told", op.key);
        if let Some(reference) = reference {
            self.nack_waiters(*origin, reference, "superseded");
        }
        let Some(member) = self.members.get(origin) else { return };
        let frame = match (member.version, reference) {
            (Version::V2, Some(reference)) => protocol::nack(reference, "superseded"),
            (Version::V1, _) => match self.map.register(&op.key) {
                Some(register) => protocol::op_frame(&register.to_op(&op.key)),
                None => return,
            },
            (Version::V2, None) => return,
        };
        let _ = member.outbox.push(Outbound::frames(Arc::new([frame])));
    }

    /// Tells v2 writers that gave a `ref` that these writes will never apply.
    pub(super) fn refuse(&mut self, metas: &[WriteMeta], reason: &str) {
        for meta in metas {
            let Source::Client { origin, reference: Some(reference) } = &meta.source else { continue };
            self.nack_waiters(*origin, reference, reason);
            if let Some(member) = self.members.get(origin).filter(|m| m.version == Version::V2) {
                let _ = member.outbox.push(Outbound::frames(Arc::new([protocol::nack(reference, reason)])));
            }
        }
    }

    /// A write that will never apply: the connections that sent it again meanwhile are told too.
    fn nack_waiters(&mut self, origin: Uuid, reference: &serde_json::Value, reason: &str) {
        for id in self.dedup.refused(origin, reference) {
            if let Some(member) = self.members.get(&id).filter(|m| m.version == Version::V2) {
                let _ = member.outbox.push(Outbound::frames(Arc::new([protocol::nack(reference, reason)])));
            }
        }
    }

    /// Sends to every member except `skip` the item for its protocol version.
    pub(super) fn broadcast(&mut self, v1: &Outbound, v2: &Outbound, skip: Option<Uuid>) {
        self.send_each(|id, member| {
            if Some(*id) == skip {
                return None;
            }
            let item = if member.version == Version::V1 { v1 } else { v2 };
            let empty = matches!(item, Outbound::Frames { frames, .. } if frames.is_empty());
            (!empty).then(|| item.clone())
        });
    }

    /// Pushes to each member what `item_for` gives it. A member whose queue is full is too slow:
    /// it is told to close. A member whose queue is full or closed (its session ended, its own
    /// `Leave` may still be on the way) is removed here, and its leave is announced here, once:
    /// the later `Leave` finds nothing, so every member that goes produces exactly one
    /// `presence-leave`, locally and across relays, whichever path noticed first.
    pub(super) fn send_each(&mut self, item_for: impl Fn(&Uuid, &Member) -> Option<Outbound>) {
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
        for id in gone {
            self.announce_leave(id);
        }
    }

    /// A local member left: tell the others, and the mesh.
    pub(super) fn announce_leave(&mut self, id: Uuid) {
        self.cursors.forget_local(&id);
        if let Some(mesh) = &self.mesh {
            mesh.do_send(StateEvent::Leave { id });
        }
        self.broadcast_leave(&id.to_string(), Some(id));
    }

    /// Sends `presence-leave` for `id` to every member except `skip`; a cursor of `id` still
    /// waiting for the next presence tick is dropped first, so it cannot follow its leave.
    pub(super) fn broadcast_leave(&mut self, id: &str, skip: Option<Uuid>) {
        self.cursors.forget(id);
        if self.stopping.is_none() {
            let item = Outbound::frames(Arc::new([protocol::presence_leave(id)]));
            self.broadcast(&item, &item, skip);
        }
    }
}

fn short(id: &Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}
