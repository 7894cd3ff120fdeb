//! Fan-out: applying durable batches and sending every member the frames of its protocol
//! version, through its bounded outbox; joining members' first frames (v1 snapshot, v2 snapshot
//! or delta).

use std::sync::Arc;

use bytestring::ByteString;
use uuid::Uuid;

use super::{Source, StateActor, StateEvent, WriteMeta};
use crate::{
    lww::Op,
    outbox::{Outbound, PushError},
    protocol::{self, Version, close},
};

impl StateActor {
    /// The token that resumes from the current state: `<epoch>.<seq>`.
    pub(super) fn resume_token(&self) -> String {
        format!("{}.{}", self.epoch, self.seq)
    }

    /// A v2 client's second frame: what changed since its resume token if the token is from this
    /// run, the whole state otherwise.
    pub(super) fn state_v2(&self, resume: Option<String>) -> ByteString {
        let token = self.resume_token();
        let since = resume.as_deref().and_then(|r| r.split_once('.')).and_then(|(epoch, seq)| {
            let seq = seq.parse::<u64>().ok()?;
            (epoch == self.epoch && seq <= self.seq).then_some(seq)
        });
        let Some(since) = since else { return protocol::snapshot_v2(self.map.live(), &token) };
        let (mut changed, mut deleted) = (Vec::new(), Vec::new());
        for (key, _) in self.changed_at.iter().filter(|(_, at)| **at > since) {
            match self.map.register(key) {
                Some(register) if !register.tombstone => changed.push((key, &register.value)),
                _ => deleted.push(key),
            }
        }
        changed.sort_by(|a, b| a.0.cmp(b.0));
        deleted.sort();
        protocol::delta_v2(changed.into_iter(), &deleted, &token)
    }

    pub(super) fn snapshot_frame(&mut self) -> ByteString {
        self.snapshot_cache.get_or_insert_with(|| protocol::snapshot(self.map.live())).clone()
    }

    /// Applies a durable batch and sends it: v1 frames to v1 members, v2 frames (stamp, origin,
    /// sequence number) to v2 members, then an `ack` to each v2 writer that asked for one, and
    /// the whole batch to the mesh.
    pub(super) fn publish(&mut self, ops: Vec<Op>, metas: &[WriteMeta]) {
        let has = |v| self.members.values().any(|m| m.version == v);
        let v1: Option<Arc<[ByteString]>> = has(Version::V1).then(|| ops.iter().map(protocol::op_frame).collect());
        let first = self.seq + 1;
        let origins: Vec<Option<String>> = metas
            .iter()
            .map(|m| match &m.source {
                Source::Client { origin, .. } => Some(origin.to_string()),
                Source::Peer(_) => None,
            })
            .collect();
        let v2: Option<Arc<[ByteString]>> = has(Version::V2).then(|| {
            ops.iter()
                .zip(&origins)
                .zip(first..)
                .map(|((op, origin), seq)| protocol::op_frame_v2(op, origin.as_deref(), seq))
                .collect()
        });
        let acks: Vec<(Uuid, ByteString)> = ops
            .iter()
            .zip(metas)
            .zip(first..)
            .filter_map(|((op, meta), seq)| match &meta.source {
                Source::Client { origin, reference: Some(reference) } => {
                    Some((*origin, protocol::ack(reference, op, seq)))
                }
                _ => None,
            })
            .collect();
        if let Some(mesh) = &self.mesh {
            let sources = metas
                .iter()
                .map(|m| match &m.source {
                    Source::Peer(node) => Some(Arc::clone(node)),
                    Source::Client { .. } => None,
                })
                .collect();
            mesh.do_send(StateEvent::Durable { ops: ops.clone().into(), sources });
        }
        for op in ops {
            self.seq += 1;
            self.changed_at.insert(op.key.clone(), self.seq);
            if self.apply(op) {
                self.snapshot_cache = None;
            }
        }
        let empty: Arc<[ByteString]> = Arc::new([]);
        self.broadcast(
            &Outbound::frames(v1.unwrap_or_else(|| Arc::clone(&empty))),
            &Outbound::frames(v2.unwrap_or(empty)),
            None,
        );
        for (origin, frame) in acks {
            if let Some(member) = self.members.get(&origin).filter(|m| m.version == Version::V2) {
                // A writer too slow for its ack is caught by the next broadcast.
                let _ = member.outbox.push(Outbound::frames(Arc::new([frame])));
            }
        }
    }

    /// Tells v2 writers that gave a `ref` that these writes will never apply.
    pub(super) fn refuse(&mut self, metas: &[WriteMeta], reason: &str) {
        for meta in metas {
            let Source::Client { origin, reference: Some(reference) } = &meta.source else { continue };
            if let Some(member) = self.members.get(origin).filter(|m| m.version == Version::V2) {
                let _ = member.outbox.push(Outbound::frames(Arc::new([protocol::nack(reference, reason)])));
            }
        }
    }

    /// Sends to every member except `skip` the item for its protocol version; members whose
    /// queue is full are dropped.
    pub(super) fn broadcast(&mut self, v1: &Outbound, v2: &Outbound, skip: Option<Uuid>) {
        let mut slow = Vec::new();
        self.members.retain(|id, member| {
            if Some(*id) == skip {
                return true;
            }
            let item = if member.version == Version::V1 { v1 } else { v2 };
            if matches!(item, Outbound::Frames { frames, .. } if frames.is_empty()) {
                return true;
            }
            match member.outbox.push(item.clone()) {
                Ok(()) => true,
                Err(PushError::Full) => {
                    slow.push(*id);
                    if let Some(kick) = member.kick.take() {
                        let _ = kick.send((close::TRY_AGAIN_LATER, "too slow"));
                    }
                    false
                }
                // The session ended; its Leave is on the way and will find nothing to remove.
                Err(PushError::Closed) => false,
            }
        });
        for id in slow {
            log::info!("client {} read too slowly and was disconnected", short(&id));
            self.announce_leave(id);
        }
    }

    /// A local member left: tell the others, and the mesh.
    pub(super) fn announce_leave(&mut self, id: Uuid) {
        if let Some(mesh) = &self.mesh {
            mesh.do_send(StateEvent::Leave { id });
        }
        self.broadcast_leave(&id.to_string(), Some(id));
    }

    /// Sends `presence-leave` for `id` to every member except `skip`.
    pub(super) fn broadcast_leave(&mut self, id: &str, skip: Option<Uuid>) {
        if self.stopping.is_none() {
            let item = Outbound::frames(Arc::new([protocol::presence_leave(id)]));
            self.broadcast(&item, &item, skip);
        }
    }
}

fn short(id: &Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}
