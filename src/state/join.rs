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
//!
//! All of this is per room: a joiner gets its room's state, its room's cached snapshot, and a
//! resume token that only its room accepts.

use std::{net::IpAddr, sync::Arc};

use actix::prelude::*;
use bytestring::ByteString;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Member, StateActor};
use crate::{
    config::RoomsConfig,
    limits::TokenBucket,
    lww::LwwMap,
    outbox::{Outbound, Outbox},
    protocol::{self, Version, close},
    room::Room,
};

/// Maps with at most this many registers are encoded on the actor's thread (well under a
/// millisecond); larger ones off it.
pub const INLINE_REGISTERS: usize = 20_000;
/// Live keys from which a snapshot is encoded on every core (off the actor: above
/// [`INLINE_REGISTERS`]).
const PARALLEL_ENCODE: usize = 50_000;

/// Snapshots larger than this are freed off the actor's thread.
const INLINE_FREE_BYTES: usize = 1 << 20;

/// Register a new connection in its room; the actor pushes `hello` and the room's state into its
/// outbox first. Replies why not when it is refused.
#[derive(Message)]
#[rtype(result = "Result<(), JoinRefused>")]
pub struct Join {
    /// The room, who joins it and from where.
    pub seat: Seat,
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

/// Where a joiner sits and who it is.
pub struct Seat {
    /// The room it joins.
    pub room: Room,
    /// The `sub` of its token, if it presented a JWT.
    pub user: Option<Arc<str>>,
    /// Whether it may write (told in a v2 `hello`; the session enforces it).
    pub write: bool,
    /// When its token expires, in Unix seconds (told in a v2 `hello`).
    pub expires: Option<u64>,
    /// Its source address, for `[rooms] created_per_minute`.
    pub source: IpAddr,
    /// The room caps of its configuration.
    pub caps: RoomsConfig,
}

/// Why a join was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRefused {
    /// The relay is shutting down.
    ShuttingDown,
    /// The room is new and `[rooms] max_rooms` are held.
    TooManyRooms,
    /// The room is new and its source created `[rooms] created_per_minute` rooms lately.
    RateLimited,
}

impl JoinRefused {
    /// The close it is told with (v1 code; sessions map it for v2).
    pub fn close(self) -> (u16, &'static str) {
        match self {
            JoinRefused::ShuttingDown => (close::GOING_AWAY, "server shutting down"),
            JoinRefused::TooManyRooms => (close::TRY_AGAIN_LATER, "too many rooms"),
            JoinRefused::RateLimited => (close::POLICY, "rate limit"),
        }
    }
}

/// The encoded state of a room's map at one of its sequence numbers.
#[derive(Clone, Message)]
#[rtype(result = "()")]
struct Encoded {
    room: Room,
    at: u64,
    v1: ByteString,
    v2: ByteString,
}

impl Encoded {
    /// `map`, at sequence number `at`, as both versions' `snapshot` frames (one encoding; on
    /// every core for a map of [`PARALLEL_ENCODE`] live keys or more).
    fn of(room: Room, map: &LwwMap, at: u64, token: &str) -> Self {
        if map.live_len() >= PARALLEL_ENCODE {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
            let entries: Vec<_> = map.live().collect();
            let (v1, v2) = protocol::snapshots_on_cores(&entries, token, cores);
            return Self { room, at, v1, v2 };
        }
        let v1 = protocol::snapshot(map.live());
        let v2 = protocol::snapshot_v2(&v1, token);
        Self { room, at, v1, v2 }
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

    /// Nothing is being encoded and nobody waits.
    pub(super) fn is_idle(&self) -> bool {
        self.building.is_none() && self.waiting.is_empty()
    }
}

impl StateActor {
    /// The token that resumes `room` from its sequence number `seq`: `<epoch>.<seq>` for the
    /// default room, `<epoch>-<tag>.<seq>` for a named one, so no room accepts another's token.
    fn resume_token_at(&self, room: &Room, seq: u64) -> String {
        match room.name() {
            None => format!("{}.{}", self.epoch, seq),
            Some(name) => {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                name.hash(&mut h);
                format!("{}-{:08x}.{}", self.epoch, h.finish() as u32, seq)
            }
        }
    }

    /// A v2 delta of `room` since the client's resume token, if the token is this room's, from
    /// this run and not ahead. Costs what changed since, not the map: `changes` is ordered by
    /// sequence number. A token more than [`INLINE_REGISTERS`] ops old gets the whole state
    /// instead (encoded off the actor when the map is large), so no delta costs the actor more
    /// than a small snapshot would.
    fn delta_v2(&self, room: &Room, resume: Option<&str>) -> Option<ByteString> {
        let state = self.rooms.get(room)?;
        let (epoch, seq) = resume?.rsplit_once('.')?;
        let since = seq.parse::<u64>().ok()?;
        let current = self.resume_token_at(room, state.seq);
        let expected = current.rsplit_once('.').map(|(e, _)| e)?;
        if epoch != expected || since > state.seq || state.seq - since > INLINE_REGISTERS as u64 {
            return None;
        }
        let (mut changed, mut deleted) = (Vec::new(), Vec::new());
        for (_, key) in state.changes.range(since + 1..) {
            match state.map.register(key) {
                Some(register) if !register.tombstone => changed.push((key, &register.value)),
                _ => deleted.push(key),
            }
        }
        changed.sort_by(|a, b| a.0.cmp(b.0));
        deleted.sort();
        Some(protocol::delta_v2(changed.into_iter(), &deleted, &current))
    }

    /// The second frame for `version`, if it can be had now: a v2 delta, the cached snapshot when
    /// current, or a fresh one when the map is small enough to encode here.
    fn state_now(&mut self, room: &Room, version: Version, resume: Option<&str>) -> Option<(ByteString, bool)> {
        if version == Version::V2
            && let Some(delta) = self.delta_v2(room, resume)
        {
            return Some((delta, false));
        }
        let state = self.rooms.get(room)?;
        if state.snapshots.cached.as_ref().is_none_or(|c| c.at != state.seq) {
            if state.map.len() > INLINE_REGISTERS {
                return None;
            }
            let token = self.resume_token_at(room, state.seq);
            let state = self.rooms.get_mut(room)?;
            state.snapshots.cached = Some(Encoded::of(room.clone(), &state.map, state.seq, &token));
        }
        let cached = self.rooms.get(room)?.snapshots.cached.as_ref()?;
        Some((if version == Version::V1 { cached.v1.clone() } else { cached.v2.clone() }, true))
    }

    /// Pushes `hello`, `state` and `after` (ops since the state) to the joiner and makes it a
    /// member of its room; false if its connection is already gone. `shared`: `state` is the
    /// cached snapshot.
    fn admit(&mut self, join: Join, (state, shared): (ByteString, bool), after: &[(ByteString, ByteString)]) -> bool {
        let id = join.id.to_string();
        let seat = &join.seat;
        let hello = match join.version {
            Version::V1 => protocol::hello(&id, &join.color),
            Version::V2 => protocol::hello_v2(
                &id,
                &join.color,
                self.clock.node(),
                &protocol::HelloV2 {
                    room: &seat.room,
                    user: seat.user.as_deref(),
                    write: seat.write,
                    expires: seat.expires,
                },
            ),
        };
        // The whole-state snapshot is one buffer shared by every joiner (it costs no memory per
        // connection), so it does not count against the joiner's outbox bound: on a large map
        // the frames that follow it would otherwise find the queue "full" and close every joiner
        // that had not finished reading a snapshot of tens of megabytes. A v2 delta is its own.
        let uncounted = if shared { state.len() } else { 0 };
        let mut frames = vec![hello, state];
        frames.extend(after.iter().map(|(v1, v2)| if join.version == Version::V1 { v1.clone() } else { v2.clone() }));
        let frames: Arc<[ByteString]> = frames.into();
        let bytes = frames.iter().map(|f| f.len()).sum::<usize>() - uncounted;
        if join.outbox.push(Outbound::Frames { frames, bytes }).is_err() {
            return false;
        }
        let Join { id, color, version, outbox, kick, seat, .. } = join;
        let member = Member { color, version, user: seat.user, source: seat.source, outbox, kick: Some(kick) };
        self.rooms.entry(seat.room.clone()).or_default().members.insert(id, member);
        self.member_rooms.insert(id, seat.room);
        true
    }

    /// Starts encoding `room`'s map as it is now on a thread of its own, unless one is running.
    fn start_encoding(&mut self, room: &Room, ctx: &mut Context<Self>) {
        let Some(state) = self.rooms.get(room) else { return };
        if state.snapshots.building.is_some() {
            return;
        }
        let (map, at, token, me) = (state.map.clone(), state.seq, self.resume_token_at(room, state.seq), ctx.address());
        let (thread_room, thread_token) = (room.clone(), token.clone());
        let spawned = std::thread::Builder::new().name("aether-snapshot".into()).spawn(move || {
            let encoded = Encoded::of(thread_room, &map, at, &thread_token);
            drop(map);
            me.do_send(encoded);
        });
        let Some(state) = self.rooms.get_mut(room) else { return };
        state.snapshots.building = Some(at);
        state.snapshots.since.clear();
        if let Err(err) = spawned {
            // No thread to be had: encode here rather than leave joiners waiting.
            log::warn!("cannot start a snapshot thread ({err}); encoding on the state actor");
            ctx.notify(Encoded::of(room.clone(), &state.map, at, &token));
        }
    }

    /// May `seat` open its room? The default room or an existing room, yes; a new one only
    /// under `max_rooms` and its source's `created_per_minute`.
    fn may_open(&mut self, seat: &Seat) -> Result<(), JoinRefused> {
        if seat.room.is_default() || self.rooms.contains_key(&seat.room) {
            return Ok(());
        }
        if self.rooms.len() >= seat.caps.max_rooms {
            self.metrics.room_refused("too_many_rooms");
            return Err(JoinRefused::TooManyRooms);
        }
        let per_minute = seat.caps.created_per_minute;
        if self.creations.len() > 4096 {
            // Sources that could create a full burst again are remembered for nothing.
            let now = std::time::Instant::now();
            self.creations.retain(|_, bucket| !bucket.is_full_at(now));
        }
        let bucket = self
            .creations
            .entry(seat.source)
            .or_insert_with(|| TokenBucket::new(per_minute, f64::from(per_minute) / 60.0));
        if !bucket.try_take() {
            self.metrics.room_refused("rate_limit");
            return Err(JoinRefused::RateLimited);
        }
        Ok(())
    }
}

impl Handler<Join> for StateActor {
    type Result = Result<(), JoinRefused>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        if self.stopping.is_some() {
            return Err(JoinRefused::ShuttingDown);
        }
        let started = std::time::Instant::now();
        self.may_open(&msg.seat)?;
        let room = msg.seat.room.clone();
        self.rooms.entry(room.clone()).or_default();
        match self.state_now(&room, msg.version, msg.resume.as_deref()) {
            Some(state) => {
                self.admit(msg, state, &[]);
            }
            None => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    state.snapshots.waiting.push((state.seq, msg));
                }
                self.start_encoding(&room, ctx);
            }
        }
        self.drop_if_idle(&room);
        self.metrics.state_busy(started.elapsed());
        Ok(())
    }
}

impl Handler<Encoded> for StateActor {
    type Result = ();

    fn handle(&mut self, encoded: Encoded, ctx: &mut Context<Self>) {
        let started = std::time::Instant::now();
        let room = encoded.room.clone();
        let Some(state) = self.rooms.get_mut(&room) else { return };
        state.snapshots.building = None;
        let since = std::mem::take(&mut state.snapshots.since);
        let at = encoded.at;
        let waiting = std::mem::take(&mut state.snapshots.waiting);
        let (ready, later): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(came, _)| *came <= at);
        state.snapshots.waiting = later;
        for (_, join) in ready {
            let frame = if join.version == Version::V1 { encoded.v1.clone() } else { encoded.v2.clone() };
            self.admit(join, (frame, true), &since);
        }
        let Some(state) = self.rooms.get_mut(&room) else { return };
        if let Some(old) = state.snapshots.cached.replace(encoded)
            && old.v1.len() > INLINE_FREE_BYTES
        {
            // Freeing tens of megabytes (unmapping them) is work that grows with the map too.
            let _ = std::thread::Builder::new().name("aether-free".into()).spawn(move || drop(old));
        }
        if !state.snapshots.waiting.is_empty() {
            self.start_encoding(&room, ctx);
        }
        self.drop_if_idle(&room);
        self.metrics.state_busy(started.elapsed());
    }
}
