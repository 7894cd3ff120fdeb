//! Joining: a new member's first two frames (`hello`, then the snapshot or a v2 delta), without
//! pausing the actor on a large map.
//!
//! Encoding the whole state is the one piece of a join that grows with the map (about 0.1 s for a
//! million keys). The actor keeps the encoded snapshot of the map at a sequence number and reuses
//! it while nothing changed. A map of at most [`INLINE_REGISTERS`] registers is encoded on the
//! spot; a larger one on a thread of its own, from an O(1) copy of the map (a persistent B-tree):
//! the joiner waits, not the actor. A joiner must see a snapshot at least as new as the state when
//! it came (a write acked before a connect is in its snapshot), so it waits for an encoding that
//! started after it came; the ops applied while that encoding ran follow its snapshot as ordinary
//! frames, then it is a member like any other: to the client it is as if it had joined when the
//! encoding started.

use actix::prelude::*;
use bytestring::ByteString;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Member, StateActor};
use crate::{
    lww::LwwMap,
    outbox::{Outbound, Outbox},
    protocol::{self, Version},
};

/// Maps with at most this many registers are encoded on the actor's thread (well under a
/// millisecond); larger ones off it.
pub const INLINE_REGISTERS: usize = 20_000;

/// Snapshots larger than this are freed off the actor's thread.
const INLINE_FREE_BYTES: usize = 1 << 20;

/// Register a new connection; the actor pushes `hello` and the state into its outbox first.
/// Replies false when the server is shutting down.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Join {
    /// The connection's id (sent in `hello`).
    pub id: Uuid,
    /// Its colour (sent in `hello`).
    pub color: String,
    /// Its protocol version.
    pub version: Version,
    /// v2: the resume token the client presented (`?resume=`), for a delta instead of the
    /// whole state.
    pub resume: Option<String>,
    /// Its bounded outbound queue.
    pub outbox: Outbox,
    /// Fired when the member must close at once (its queue is full).
    pub kick: oneshot::Sender<(u16, &'static str)>,
}

/// The encoded state of the map at one sequence number.
#[derive(Clone, Message)]
#[rtype(result = "()")]
struct Encoded {
    at: u64,
    v1: ByteString,
    v2: ByteString,
}

impl Encoded {
    /// `map`, at sequence number `at`, as both versions' `snapshot` frames (one encoding).
    fn of(map: &LwwMap, at: u64, token: &str) -> Self {
        let v1 = protocol::snapshot(map.live());
        let v2 = protocol::snapshot_v2(&v1, token);
        Self { at, v1, v2 }
    }
}

/// Encoded snapshots and the joiners waiting for one.
#[derive(Default)]
pub(super) struct Snapshots {
    /// The newest encoding; current while its `at` is the actor's `seq`.
    cached: Option<Encoded>,
    /// The sequence number of the map an encoding thread is working on.
    building: Option<u64>,
    /// Joiners waiting, each with the sequence number when it came.
    waiting: Vec<(u64, Join)>,
    /// v1 and v2 frames of the ops applied since the running encoding's copy was taken.
    since: Vec<(ByteString, ByteString)>,
}

impl Snapshots {
    /// Is an encoding running (so published frames must be kept for its joiners)?
    pub(super) fn recording(&self) -> bool {
        self.building.is_some()
    }

    /// Keeps the frames of ops applied while an encoding runs.
    pub(super) fn record(&mut self, v1: &[ByteString], v2: &[ByteString]) {
        self.since.extend(v1.iter().cloned().zip(v2.iter().cloned()));
    }

    /// Every waiting joiner, to be told the server is going away.
    pub(super) fn drain_waiting(&mut self) -> impl Iterator<Item = Join> + '_ {
        self.waiting.drain(..).map(|(_, join)| join)
    }
}

impl StateActor {
    /// The token that resumes from the current state: `<epoch>.<seq>`.
    fn resume_token_at(&self, seq: u64) -> String {
        format!("{}.{}", self.epoch, seq)
    }

    /// A v2 delta since the client's resume token, if the token is from this run and not ahead.
    /// Costs what changed since, not the map: `changes` is ordered by sequence number. A token
    /// more than [`INLINE_REGISTERS`] ops old gets the whole state instead (encoded off the actor
    /// when the map is large), so no delta costs the actor more than a small snapshot would.
    fn delta_v2(&self, resume: Option<&str>) -> Option<ByteString> {
        let (epoch, seq) = resume?.split_once('.')?;
        let since = seq.parse::<u64>().ok()?;
        if epoch != self.epoch || since > self.seq || self.seq - since > INLINE_REGISTERS as u64 {
            return None;
        }
        let (mut changed, mut deleted) = (Vec::new(), Vec::new());
        for (_, key) in self.changes.range(since + 1..) {
            match self.map.register(key) {
                Some(register) if !register.tombstone => changed.push((key, &register.value)),
                _ => deleted.push(key),
            }
        }
        changed.sort_by(|a, b| a.0.cmp(b.0));
        deleted.sort();
        Some(protocol::delta_v2(changed.into_iter(), &deleted, &self.resume_token_at(self.seq)))
    }

    /// The second frame for `version`, if it can be had now: a v2 delta, the cached snapshot when
    /// current, or a fresh one when the map is small enough to encode here.
    fn state_now(&mut self, version: Version, resume: Option<&str>) -> Option<(ByteString, bool)> {
        if version == Version::V2
            && let Some(delta) = self.delta_v2(resume)
        {
            return Some((delta, false));
        }
        if self.snapshots.cached.as_ref().is_none_or(|c| c.at != self.seq) {
            if self.map.len() > INLINE_REGISTERS {
                return None;
            }
            self.snapshots.cached = Some(Encoded::of(&self.map, self.seq, &self.resume_token_at(self.seq)));
        }
        let cached = self.snapshots.cached.as_ref()?;
        Some((if version == Version::V1 { cached.v1.clone() } else { cached.v2.clone() }, true))
    }

    /// Pushes `hello`, `state` and `after` (ops since the state) to the joiner and makes it a
    /// member; false if its connection is already gone. `shared`: `state` is the cached snapshot.
    fn admit(&mut self, join: Join, (state, shared): (ByteString, bool), after: &[(ByteString, ByteString)]) -> bool {
        let id = join.id.to_string();
        let hello = match join.version {
            Version::V1 => protocol::hello(&id, &join.color),
            Version::V2 => protocol::hello_v2(&id, &join.color, self.clock.node()),
        };
        // The whole-state snapshot is one buffer shared by every joiner (it costs no memory per
        // connection), so it does not count against the joiner's outbox bound: on a large map
        // the frames that follow it would otherwise find the queue "full" and close every joiner
        // that had not finished reading a snapshot of tens of megabytes. A v2 delta is its own.
        let uncounted = if shared { state.len() } else { 0 };
        let mut frames = vec![hello, state];
        frames.extend(after.iter().map(|(v1, v2)| if join.version == Version::V1 { v1.clone() } else { v2.clone() }));
        let frames: std::sync::Arc<[ByteString]> = frames.into();
        let bytes = frames.iter().map(|f| f.len()).sum::<usize>() - uncounted;
        if join.outbox.push(Outbound::Frames { frames, bytes }).is_err() {
            return false;
        }
        let member = Member { color: join.color, version: join.version, outbox: join.outbox, kick: Some(join.kick) };
        self.members.insert(join.id, member);
        true
    }

    /// Starts encoding the map as it is now on a thread of its own, unless one is running.
    fn start_encoding(&mut self, ctx: &mut Context<Self>) {
        if self.snapshots.building.is_some() {
            return;
        }
        let (map, at, token, me) = (self.map.clone(), self.seq, self.resume_token_at(self.seq), ctx.address());
        let thread_token = token.clone();
        let spawned = std::thread::Builder::new().name("aether-snapshot".into()).spawn(move || {
            let encoded = Encoded::of(&map, at, &thread_token);
            drop(map);
            me.do_send(encoded);
        });
        self.snapshots.building = Some(at);
        self.snapshots.since.clear();
        if let Err(err) = spawned {
            // No thread to be had: encode here rather than leave joiners waiting.
            log::warn!("cannot start a snapshot thread ({err}); encoding on the state actor");
            ctx.notify(Encoded::of(&self.map, at, &token));
        }
    }
}

impl Handler<Join> for StateActor {
    type Result = bool;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        let started = std::time::Instant::now();
        let joined = match self.state_now(msg.version, msg.resume.as_deref()) {
            Some(state) => self.admit(msg, state, &[]),
            None => {
                self.snapshots.waiting.push((self.seq, msg));
                self.start_encoding(ctx);
                true
            }
        };
        self.metrics.state_busy(started.elapsed());
        joined
    }
}

impl Handler<Encoded> for StateActor {
    type Result = ();

    fn handle(&mut self, encoded: Encoded, ctx: &mut Context<Self>) {
        let started = std::time::Instant::now();
        self.snapshots.building = None;
        let since = std::mem::take(&mut self.snapshots.since);
        let at = encoded.at;
        let waiting = std::mem::take(&mut self.snapshots.waiting);
        let (ready, later): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(came, _)| *came <= at);
        self.snapshots.waiting = later;
        for (_, join) in ready {
            let state = if join.version == Version::V1 { encoded.v1.clone() } else { encoded.v2.clone() };
            self.admit(join, (state, true), &since);
        }
        if let Some(old) = self.snapshots.cached.replace(encoded)
            && old.v1.len() > INLINE_FREE_BYTES
        {
            // Freeing tens of megabytes (unmapping them) is work that grows with the map too.
            let _ = std::thread::Builder::new().name("aether-free".into()).spawn(move || drop(old));
        }
        if !self.snapshots.waiting.is_empty() {
            self.start_encoding(ctx);
        }
        self.metrics.state_busy(started.elapsed());
    }
}
