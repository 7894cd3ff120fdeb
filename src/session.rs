//! One WebSocket connection: auth, registration, inbound parsing and limits, outbound writing.
//!
//! Each connection is one task (an actor in the "task + handle" sense) driving its own
//! [`Socket`]; this is the only module that knows how a connection's socket is driven. The task
//! reaches the [`StateActor`] through its address and receives frames through a bounded queue, so a
//! client that stops reading fills only its own queue and is then closed (see [`crate::state`]).

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use actix::Addr;
use actix_web::web::{Bytes, BytesMut};
use tokio::sync::{Semaphore, oneshot};
use uuid::Uuid;

use crate::{
    access::{Access, Admitted, Level, Refusal},
    config::{Limits, RoomsConfig},
    limits::{ConnectionSlot, TokenBucket},
    metrics::{Inbound, Metrics},
    outbox::{Outbound, OutboxReceiver, outbox},
    protocol::{self, ClientFrame, Tab, Version, close},
    room::Room,
    socket::{self, CloseCode, CloseReason, Io, Item, Message, ProtocolError, Socket},
    state::{Join, Leave, Presence, Seat, StateActor, TabLeave, Write},
};

/// What every session shares.
#[derive(Clone)]
pub struct Deps {
    /// The state singleton.
    pub state: Addr<StateActor>,
    /// The configured limits.
    pub limits: Arc<Limits>,
    /// Tokens to decisions: the shared secret and the JWT key (`[auth]`).
    pub access: Arc<Access>,
    /// Admission slots for writes not yet durable: bounds the ledger queue and slows writers
    /// when the disk falls behind.
    pub admission: Arc<Semaphore>,
    /// How often each client is pinged (`[server] ping_interval_s`).
    pub ping_interval: Duration,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// `[rooms]`: the caps on rooms this connection's joins and writes meet.
    pub rooms: RoomsConfig,
}

impl Deps {
    /// Silence (no frame at all, pongs included) after which a client is considered gone.
    pub fn client_timeout(&self) -> Duration {
        2 * self.ping_interval + self.limits.handshake_timeout()
    }
}

/// Why a session ends: a close frame to send, if any.
type End = Option<(u16, &'static str)>;

/// What the connection's URL asked for.
#[derive(Debug)]
pub struct Params {
    /// `?auth_token=`, if given (blank values count as absent, as upstream).
    pub token: Option<String>,
    /// `?v=2` selects protocol v2.
    pub version2: bool,
    /// v2 `?resume=<token>`: send what changed since, instead of the whole state.
    pub resume: Option<String>,
    /// v2 `?cid=<client id>`: 1 to 64 bytes of `[A-Za-z0-9._:-]`; with it, writes that carry a
    /// `ref` are applied at most once per (cid, ref) (see `state::dedup`). Otherwise ignored.
    pub cid: Option<String>,
    /// `?room=<name>`: the room (the first one given); none is the default room, a name that is
    /// not valid (see [`crate::room`]) is `Err` and closes the connection ("bad room").
    pub room: Result<Room, crate::room::BadRoom>,
}

impl Default for Params {
    fn default() -> Self {
        Params { token: None, version2: false, resume: None, cid: None, room: Ok(Room::DEFAULT) }
    }
}

impl Params {
    /// Reads the query string.
    pub fn from_query(query: &str) -> Params {
        let mut params = Params::default();
        let pairs = actix_web::web::Query::<Vec<(String, String)>>::from_query(query).map(|q| q.into_inner());
        let mut room_given = false;
        for (name, value) in pairs.unwrap_or_default() {
            match name.as_str() {
                "room" if !room_given => {
                    room_given = true;
                    params.room = Room::parse(&value);
                }
                "auth_token" if params.token.is_none() && !value.is_empty() => params.token = Some(value),
                "v" => params.version2 = value == "2",
                "resume" if !value.is_empty() => params.resume = Some(value),
                "cid" if valid_cid(&value) => params.cid = Some(value),
                _ => {}
            }
        }
        params
    }
}

/// A client id is short and plain, so it can sit in logs and maps as it is.
fn valid_cid(cid: &str) -> bool {
    (1..=64).contains(&cid.len()) && cid.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b))
}

/// What a new connection starts from, decided when its upgrade was answered (and carried to
/// [`run`] in the `101`'s extensions). `slot` is `None` when the connection caps are reached.
pub struct Start {
    /// What every connection shares.
    pub deps: Deps,
    /// Its place under the connection caps.
    pub slot: Option<ConnectionSlot>,
    /// Its query parameters.
    pub params: Params,
    /// The client's address.
    pub source: IpAddr,
}

/// Runs one connection to its end, on `io` (the upgraded connection) and `early` (what the
/// client sent after its upgrade request, already read).
///
/// A task keeps room for its future's largest state for its whole life, so what is large and
/// passing stays out of it: the start (boxed: its parameters, before they move into the
/// connection), opening (its join on the way to the state actor), and each step of the pump that
/// writes or reads a message. What stays is the pump's wait for its next event.
pub async fn run(start: Box<Start>, io: Box<dyn Io>, early: Bytes) {
    let socket = Socket::new(io, &early, start.deps.limits.max_frame_bytes);
    drop(early);
    let Start { deps, slot, params, source } = *start;
    let socket = match Box::pin(open(deps, socket, slot, params, source)).await {
        Ok(open) => open.serve().await,
        Err(socket) => socket,
    };
    // Everything else (its slot under the caps, its queue) went before this last wait.
    socket.finish(CLOSE_WAIT).await;
}

/// A connection admitted and joined, about to pump.
struct Open {
    conn: Connection,
    socket: Socket,
    rx: OutboxReceiver,
    kick: oneshot::Receiver<(u16, &'static str)>,
    _slot: ConnectionSlot,
}

/// Admits and joins a new connection; its socket back once it was refused (and closed).
async fn open(
    deps: Deps,
    mut socket: Socket,
    slot: Option<ConnectionSlot>,
    params: Params,
    source: IpAddr,
) -> Result<Box<Open>, Socket> {
    deps.metrics.connection_opened();
    let version = if params.version2 { Version::V2 } else { Version::V1 };
    let Some(slot) = slot else {
        close_with(&deps, version, &mut socket, Some((close::TRY_AGAIN_LATER, "server busy"))).await;
        return Err(socket);
    };
    let Ok(room) = params.room else {
        close_with(&deps, version, &mut socket, Some((close::POLICY, "bad room"))).await;
        return Err(socket);
    };
    let admitted = match authenticate(&deps, &room, params.token, &mut socket).await {
        Ok(admitted) => admitted,
        Err(refusal) => {
            log::info!("connection to room {room} refused: {refusal}");
            close_with(&deps, version, &mut socket, Some(refusal.close(Version::V1))).await;
            return Err(socket);
        }
    };

    let id = Uuid::new_v4();
    let color = protocol::color_for(&id.to_string());
    let (outbox, rx) = outbox(deps.limits.max_outbound_bytes);
    let (kick_tx, kick_rx) = oneshot::channel();
    let grant = Grant::from(admitted);
    let seat = Seat {
        room: room.clone(),
        user: grant.user.clone(),
        write: grant.write,
        expires: grant.expires.map(unix_seconds),
        source,
        caps: deps.rooms,
    };
    let join = Join { id, color, version, resume: params.resume, outbox, kick: kick_tx, seat };
    let joined = deps.state.send(join).await.unwrap_or(Err(crate::state::JoinRefused::ShuttingDown));
    if let Err(refused) = joined {
        close_with(&deps, version, &mut socket, Some(refused.close())).await;
        return Err(socket);
    }
    // Exactly-once is per room: the same client id in two rooms names two clients (`@` is not in
    // a client id, so the scoped ids cannot collide).
    let client = params.cid.filter(|_| version == Version::V2).map(|cid| match room.name() {
        None => Arc::from(cid),
        Some(name) => Arc::from(format!("{cid}@{name}")),
    });
    let conn = Connection {
        id,
        deps,
        version,
        room,
        grant,
        client,
        bucket: None,
        partial: None,
        pending: None,
        last_heard: Instant::now(),
        stalled: false,
        tabs: HashSet::new(),
    };
    Ok(Box::new(Open { conn, socket, rx, kick: kick_rx, _slot: slot }))
}

impl Open {
    /// Pumps until the connection ends, then leaves and closes; gives back the socket.
    async fn serve(self: Box<Self>) -> Socket {
        // Out of the box: the task keeps one copy of each part (a by-value `self` would be kept
        // beside its moved-out fields).
        let Open { mut conn, mut socket, rx, kick, _slot } = *self;
        let (id, version) = (conn.id, conn.version);
        let end = conn.pump(&mut socket, rx, kick).await;
        conn.deps.state.do_send(Leave { id });
        let stalled = conn.stalled;
        let sent = close_with(&conn.deps, version, &mut socket, end).await;
        if stalled {
            conn.deps.metrics.write_timed_out(sent);
            log::info!(
                "client {id}: its socket took nothing for {:?}, {}",
                conn.deps.limits.write_timeout(),
                if sent { "closed (1013 too slow)" } else { "dropped (not even a close frame would go)" }
            );
        }
        socket
    }
}

/// The code a v2 client sees for a v1 close: distinct codes in the 4000 range for the closes a
/// client should act on differently (stop, back off, reconnect at once); the standard ones stay.
fn close_code_for(version: Version, code: u16, reason: &str) -> u16 {
    match (version, code, reason) {
        (Version::V1, ..) => code,
        (_, close::POLICY, "auth failed") => close::V2_AUTH_FAILED,
        (_, close::POLICY, "handshake timeout") => close::V2_HANDSHAKE_TIMEOUT,
        (_, close::POLICY, "rate limit") => close::V2_RATE_LIMIT,
        (_, close::POLICY, "token expired") => close::V2_AUTH_FAILED,
        (_, close::POLICY, "forbidden") => close::V2_FORBIDDEN,
        (_, close::POLICY, "bad room") => close::V2_BAD_ROOM,
        (_, close::POLICY, crate::state::DISCONNECTED) => close::V2_DISCONNECTED,
        (_, close::TRY_AGAIN_LATER, "server busy" | "too many rooms") => close::V2_SERVER_BUSY,
        (_, close::TRY_AGAIN_LATER, "too slow") => close::V2_TOO_SLOW,
        _ => code,
    }
}

/// How long a closing connection may take: to accept our close frame, then to answer it.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Before our Close frame: what the client already sent is read (and dropped) until nothing comes
/// for `QUIET`, for `DRAIN` at most.
const QUIET: Duration = Duration::from_millis(2);
const DRAIN: Duration = Duration::from_millis(20);

/// How long the kernel lets a connection's sent bytes go unacknowledged before it resets it
/// (`TCP_USER_TIMEOUT`, set on the listener by [`crate::relay`]): `write_timeout_s` plus the time
/// the session takes to close, so the session's verdict (1013, or dropped and counted) comes first
/// and the kernel then frees what it still buffers for that socket.
pub fn socket_timeout(limits: &Limits) -> Duration {
    limits.write_timeout() + 2 * CLOSE_WAIT
}

/// Sends the close frame (if any) and ends the relay's side of the connection ([`Socket::close`]),
/// so the frame is on the wire before the connection's slot goes away. Whether a close frame went.
async fn close_with(deps: &Deps, version: Version, socket: &mut Socket, end: End) -> bool {
    deps.metrics.closed(end.map_or(close::ABNORMAL, |(code, _)| code));
    let Some((code, text)) = end else { return false };
    let code = close_code_for(version, code, text);
    let reason = CloseReason { code: CloseCode::from(code), description: (!text.is_empty()).then(|| text.to_owned()) };
    // The connection is closed as soon as our Close frame is out. Bytes the client sent that we
    // have not read would make that close a reset, which can destroy the Close frame before the
    // client reads it (a client flooding writes loses its 4429 / 1008). So first take in what
    // has already arrived: until nothing comes for a moment, at most DRAIN in all. Not after a
    // broken or oversized frame: the stream cannot be read on, and the rest of a frame of
    // megabytes is not worth waiting for.
    if !matches!(code, close::TOO_BIG | close::PROTOCOL | close::INVALID_DATA) {
        let drain = async { while let Ok(Some(Ok(_))) = tokio::time::timeout(QUIET, socket.recv()).await {} };
        let _ = tokio::time::timeout(DRAIN, drain).await;
    }
    // A client that stopped reading cannot take a close frame either; do not wait for it.
    matches!(tokio::time::timeout(CLOSE_WAIT, socket.close(Some(reason))).await, Ok(Ok(())))
}

/// Why a write stalled: the client accepts nothing (its socket's buffers are full).
const STALLED: (u16, &str) = (close::TRY_AGAIN_LATER, "too slow");

/// The client sent nothing (pongs included) for [`Deps::client_timeout`].
const SILENT: (u16, &str) = (close::KEEPALIVE, "keepalive timeout");

/// How long one write may wait: `[limits] write_timeout_s` for the socket to take it, and never
/// past the instant the keepalive gives up on a silent client.
#[derive(Clone, Copy)]
struct Bounds {
    write: Duration,
    keepalive: tokio::time::Instant,
}

/// Runs one write to the socket, raced against a kick and bounded by `bounds`: every write goes
/// through here (frames, pings, pongs, nacks), so a client that never reads (say, one that sends
/// pings and never takes the pongs) cannot hold its task, and with it its connection slot, by
/// filling its socket, and the keepalive holds while the session waits on the socket.
/// `Err` carries the end of the connection.
///
/// Most writes complete at once (the socket's buffer has room): those are tried first, after a
/// look at the kick, without arming the two timers (a timer-wheel entry each, per write, was a
/// measurable share of a broadcast to thousands of connections: benches/README.md).
async fn bounded(
    kick: &mut Option<oneshot::Receiver<(u16, &'static str)>>,
    bounds: Bounds,
    stalled: &mut bool,
    write: impl Future<Output = Result<(), socket::Closed>>,
) -> Result<(), End> {
    match kick.as_mut().map(oneshot::Receiver::try_recv) {
        Some(Ok(reason)) => {
            *kick = None;
            return Err(Some(reason));
        }
        Some(Err(oneshot::error::TryRecvError::Closed)) => *kick = None,
        Some(Err(oneshot::error::TryRecvError::Empty)) | None => {}
    }
    let mut write = std::pin::pin!(write);
    let at_once = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    if let std::task::Poll::Ready(written) = at_once {
        return written.map_err(|_| None);
    }
    tokio::select! {
        biased;
        reason = kicked(kick) => Err(Some(reason)),
        written = write => written.map_err(|_| None),
        () = tokio::time::sleep(bounds.write) => {
            *stalled = true;
            Err(Some(STALLED))
        }
        () = tokio::time::sleep_until(bounds.keepalive) => Err(Some(SILENT)),
    }
}

/// Resolves at `at`; never without one.
async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A write waiting for an admission slot (the ledger is behind), sent once it has one.
type Admission = std::pin::Pin<Box<dyn Future<Output = ()>>>;

/// Resolves when the waiting write (if any) was admitted and sent; never while there is none.
async fn admitted(waiting: &mut Option<Admission>) {
    match waiting.as_mut() {
        Some(admission) => {
            admission.as_mut().await;
            *waiting = None;
        }
        None => std::future::pending().await,
    }
}

/// Resolves when the state actor kicks this connection; never, once it dropped the sender
/// without kicking (a oneshot receiver must not be polled again after it completed).
async fn kicked(kick: &mut Option<oneshot::Receiver<(u16, &'static str)>>) -> (u16, &'static str) {
    if let Some(rx) = kick.as_mut() {
        if let Ok(reason) = rx.await {
            return reason;
        }
        *kick = None;
    }
    std::future::pending().await
}

/// Admission to `room` with the token presented: the query token if given (a wrong one fails at
/// once, as upstream), else a first `auth` frame within the handshake timeout. Without auth
/// configured, everyone writes everywhere.
async fn authenticate(
    deps: &Deps,
    room: &Room,
    query_token: Option<String>,
    socket: &mut Socket,
) -> Result<Admitted, Refusal> {
    let access = &deps.access;
    if !access.required() {
        return access.admit(None, room, SystemTime::now());
    }
    if let Some(presented) = query_token {
        return access.admit(Some(&presented), room, SystemTime::now());
    }
    let first = tokio::time::timeout(deps.limits.handshake_timeout(), async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Ping(bytes))) => {
                    let _ = socket.pong(&bytes).await;
                }
                Some(Ok(Message::Pong(_) | Message::Nop)) => {}
                Some(Ok(Message::Text(text))) => return Some(text.to_string()),
                Some(Ok(Message::Binary(bytes))) => return String::from_utf8(bytes.to_vec()).ok(),
                _ => return None,
            }
        }
    })
    .await;
    match first.ok().flatten().map(|text| protocol::parse(&text, &deps.limits)) {
        Some(Ok(ClientFrame::Auth { token: Some(presented) })) => {
            access.admit(Some(&presented), room, SystemTime::now())
        }
        _ => Err(Refusal::BadToken("no token")),
    }
}

/// Seconds since the Unix epoch.
fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What a connection may do in its room, and as whom.
#[derive(Debug, Clone)]
struct Grant {
    /// The `sub` of its token, if it presented a JWT.
    user: Option<Arc<str>>,
    /// May write (else its writes are refused: v1 dropped, v2 `nack forbidden`).
    write: bool,
    /// When its token stops being honoured: the connection is closed then ("token expired")
    /// unless a v2 client sent a fresh token before.
    expires: Option<SystemTime>,
}

impl From<Admitted> for Grant {
    fn from(admitted: Admitted) -> Self {
        Grant { user: admitted.user, write: admitted.level == Level::Write, expires: admitted.expires }
    }
}

struct Connection {
    id: Uuid,
    deps: Deps,
    version: Version,
    /// Its room.
    room: Room,
    /// What it may do there.
    grant: Grant,
    /// v2 `?cid=`: the client's stable id, for exactly-once writes.
    client: Option<Arc<str>>,
    /// `None` until the first message, which upstream lets through without a token.
    bucket: Option<TokenBucket>,
    /// A fragmented message being reassembled: (is text, bytes so far).
    partial: Option<(bool, BytesMut)>,
    /// A write that found no admission slot free: the pump waits for one (still pinging and
    /// keeping its keepalive, no longer reading) before it reads on.
    pending: Option<Admission>,
    /// When the client was last heard from (any frame but its own pings).
    last_heard: Instant,
    /// A write found the socket taking nothing for `write_timeout_s` (what ended the connection).
    stalled: bool,
    /// v2: the tab ids whose cursors this connection shows (at most [`MAX_TABS`]).
    tabs: HashSet<String>,
}

/// Most tab cursors one v2 connection may show at once (a browser's leader tab carries its
/// siblings' cursors); a cursor for one more tab is dropped as `bad_presence` until one leaves.
pub const MAX_TABS: usize = 32;

enum Event {
    Expired,
    Kicked((u16, &'static str)),
    Out(Option<Outbound>),
    In(Option<Result<Message, ProtocolError>>),
    Tick,
    Silent,
    Admitted,
}

impl Connection {
    /// Moves frames both ways until the connection ends; returns the close to send.
    async fn pump(
        &mut self,
        socket: &mut Socket,
        mut rx: OutboxReceiver,
        kick: oneshot::Receiver<(u16, &'static str)>,
    ) -> End {
        // The first tick is immediate: a ping right after hello + snapshot, which every WebSocket
        // stack answers with a pong, proves the client alive within the handshake timeout.
        let mut kick = Some(kick);
        let mut ticker = tokio::time::interval(self.deps.ping_interval);
        let deadline = tokio::time::sleep(self.deps.limits.handshake_timeout());
        tokio::pin!(deadline);
        let mut heard = false;
        let mut waiting: Option<Admission> = None;
        loop {
            // Not biased: reading the client's writes and sending it broadcasts take turns, so a
            // busy connection is neither starved of its own writes nor deaf to others'.
            let expiry = self.grant.expires.map(|at| {
                let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::time::Instant::now() + left
            });
            let event = tokio::select! {
                () = until(expiry) => Event::Expired,
                reason = kicked(&mut kick) => Event::Kicked(reason),
                out = rx.recv() => Event::Out(out),
                // While a write waits for admission nothing more is read: the writer is slowed.
                msg = socket.recv(), if waiting.is_none() => Event::In(msg),
                () = admitted(&mut waiting) => Event::Admitted,
                _ = ticker.tick() => Event::Tick,
                () = &mut deadline, if !heard => Event::Silent,
            };
            match event {
                Event::Expired => {
                    log::info!("client {}: its token expired", self.id);
                    return Some((close::POLICY, "token expired"));
                }
                Event::Kicked(reason) => return Some(reason),
                Event::Out(None) => return None,
                Event::Out(Some(Outbound::Close(code, reason))) => return Some((code, reason)),
                Event::Out(Some(Outbound::Frames { frames, bytes })) => {
                    // Take whatever else is queued too and write it in one go: under load this
                    // turns many small broadcasts into one pass (up to a bound, to stay fair).
                    let mut batches = vec![frames];
                    let (mut total, mut close_after) = (bytes, None);
                    while batches.len() < 64 && total < 256 * 1024 {
                        match rx.try_recv() {
                            Some(Outbound::Frames { frames, bytes }) => {
                                batches.push(frames);
                                total += bytes;
                            }
                            Some(Outbound::Close(code, reason)) => {
                                close_after = Some((code, reason));
                                break;
                            }
                            None => break,
                        }
                    }
                    let count: usize = batches.iter().map(|b| b.len()).sum();
                    for frame in batches.iter().flat_map(|b| b.iter()) {
                        socket.queue_text(frame.clone());
                    }
                    drop(batches);
                    self.deps.metrics.frames_out(count);
                    // Boxed, as every step of this loop that writes or reads a message: the
                    // connection's task would keep room for the largest step inline for its
                    // whole life, and an idle connection only ever waits in the select above.
                    let bounded = Box::pin(bounded(&mut kick, self.bounds(), &mut self.stalled, socket.flush()));
                    if let Err(end) = bounded.await {
                        return end;
                    }
                    rx.written(total);
                    if close_after.is_some() {
                        return close_after;
                    }
                }
                Event::In(None) => return None,
                Event::In(Some(Err(ProtocolError::Overflow))) => return Some((close::TOO_BIG, "message too big")),
                Event::In(Some(Err(ProtocolError::Io(err))))
                    if err.get_ref().is_some_and(|inner| inner.is::<std::str::Utf8Error>()) =>
                {
                    return Some((close::INVALID_DATA, "invalid utf-8"));
                }
                Event::In(Some(Err(ProtocolError::Io(err)))) if err.kind() != std::io::ErrorKind::InvalidData => {
                    log::debug!("client {}: connection lost: {err}", self.id);
                    return None;
                }
                Event::In(Some(Err(err))) => {
                    log::debug!("client {}: protocol error: {err}", self.id);
                    return Some((close::PROTOCOL, "protocol error"));
                }
                Event::In(Some(Ok(msg))) => {
                    heard = true;
                    // A ping proves the client writes, not that it reads: one that pings and
                    // never reads (so never answers ours) still meets the keepalive timeout.
                    if !matches!(msg, Message::Ping(_)) {
                        self.last_heard = Instant::now();
                    }
                    if let Some(end) = Box::pin(self.inbound(msg, socket, &mut kick)).await {
                        return end;
                    }
                    waiting = self.pending.take();
                }
                // The client's pongs went unread meanwhile: that silence was ours, not its.
                Event::Admitted => self.last_heard = Instant::now(),
                Event::Silent => return Some((close::POLICY, "handshake timeout")),
                Event::Tick => {
                    if waiting.is_some() {
                        self.last_heard = Instant::now();
                    }
                    if self.last_heard.elapsed() > self.deps.client_timeout() {
                        return Some(SILENT);
                    }
                    let ping = Box::pin(bounded(&mut kick, self.bounds(), &mut self.stalled, socket.ping(b"")));
                    if let Err(end) = ping.await {
                        return end;
                    }
                }
            }
        }
    }

    /// How long the next write may wait for the socket.
    fn bounds(&self) -> Bounds {
        let keepalive = tokio::time::Instant::from_std(self.last_heard + self.deps.client_timeout());
        Bounds { write: self.deps.limits.write_timeout(), keepalive }
    }

    /// Handles one inbound WebSocket message; `Some` ends the connection.
    async fn inbound(
        &mut self,
        msg: Message,
        socket: &mut Socket,
        kick: &mut Option<oneshot::Receiver<(u16, &'static str)>>,
    ) -> Option<End> {
        let max = self.deps.limits.max_frame_bytes;
        let text: Bytes = match msg {
            Message::Text(text) => text.into_bytes(),
            Message::Binary(bytes) => bytes,
            Message::Continuation(item) => {
                let (is_first, is_text, chunk, last) = match item {
                    Item::FirstText(b) => (true, true, b, false),
                    Item::FirstBinary(b) => (true, false, b, false),
                    Item::Continue(b) => (false, false, b, false),
                    Item::Last(b) => (false, false, b, true),
                };
                if is_first {
                    self.partial = Some((is_text, BytesMut::new()));
                }
                let Some((_, buf)) = self.partial.as_mut() else {
                    return Some(Some((close::PROTOCOL, "protocol error")));
                };
                if buf.len() + chunk.len() > max {
                    return Some(Some((close::TOO_BIG, "message too big")));
                }
                buf.extend_from_slice(&chunk);
                if !last {
                    return None;
                }
                let (_, buf) = self.partial.take()?;
                buf.freeze()
            }
            Message::Ping(bytes) => {
                return bounded(kick, self.bounds(), &mut self.stalled, socket.pong(&bytes)).await.err();
            }
            Message::Pong(_) | Message::Nop => return None,
            Message::Close(_) => return Some(Some((close::NORMAL, ""))),
        };
        match &mut self.bucket {
            None => {
                let limits = &self.deps.limits;
                self.bucket = Some(TokenBucket::new(limits.messages_burst, limits.messages_per_second));
            }
            Some(bucket) => {
                if !bucket.try_take() {
                    log::info!("client {} exceeded its rate budget, closing", self.id);
                    return Some(Some((close::POLICY, "rate limit")));
                }
            }
        }
        let Ok(text) = std::str::from_utf8(&text) else {
            self.deps.metrics.dropped(protocol::Dropped::NotJson);
            log::debug!("client {}: dropped non-UTF-8 binary message", self.id);
            return None;
        };
        let metrics = &self.deps.metrics;
        match protocol::parse(text, &self.deps.limits) {
            Ok(ClientFrame::Set { reference, .. } | ClientFrame::Delete { reference, .. }) if !self.grant.write => {
                // A read grant: the write never applies (v1 drops it silently, v2 is told).
                metrics.dropped(protocol::Dropped::Forbidden);
                if self.version == Version::V2
                    && let Some(reference) = reference
                    && let Err(end) = bounded(
                        kick,
                        self.bounds(),
                        &mut self.stalled,
                        socket.text(protocol::nack(&reference, protocol::Dropped::Forbidden.as_str())),
                    )
                    .await
                {
                    return Some(end);
                }
            }
            Ok(ClientFrame::Set { key, value, reference }) => {
                metrics.inbound(Inbound::Set);
                self.write(key, Some(value), reference);
            }
            Ok(ClientFrame::Delete { key, reference }) => {
                metrics.inbound(Inbound::Delete);
                self.write(key, None, reference);
            }
            Ok(ClientFrame::Presence { x, y, tab }) => {
                // v1 ignores `tab` (upstream does not know it); v2 shows a tab's cursor as its own.
                let tab = match tab {
                    Tab::Valid(tab) if self.version == Version::V2 => {
                        if !self.tabs.contains(&tab) && self.tabs.len() >= MAX_TABS {
                            metrics.dropped(protocol::Dropped::BadPresence);
                            return None;
                        }
                        self.tabs.insert(tab.clone());
                        Some(Arc::from(tab))
                    }
                    Tab::Invalid if self.version == Version::V2 => {
                        metrics.dropped(protocol::Dropped::BadPresence);
                        return None;
                    }
                    _ => None,
                };
                metrics.inbound(Inbound::Presence);
                // A full mailbox drops the cursor: the next one replaces it anyway.
                let _ = self.deps.state.try_send(Presence { id: self.id, tab, x, y });
            }
            Ok(ClientFrame::PresenceLeave { tab: Tab::Valid(tab) }) if self.version == Version::V2 => {
                metrics.inbound(Inbound::Presence);
                // Only a tab this connection showed has a cursor to take away.
                if self.tabs.remove(&tab) {
                    self.deps.state.do_send(TabLeave { id: self.id, tab: Arc::from(tab) });
                }
            }
            Ok(ClientFrame::PresenceLeave { .. }) if self.version == Version::V2 => {
                metrics.dropped(protocol::Dropped::BadPresence);
            }
            Ok(ClientFrame::Auth { token }) => {
                metrics.inbound(Inbound::Auth);
                // v1 ignores every `auth` after admission, as upstream; v2 takes a fresh token.
                if self.version == Version::V2 && self.deps.access.required() {
                    let frame = match self.refresh(token.as_deref()) {
                        Ok(()) => protocol::auth_ok(self.grant.expires.map(unix_seconds), self.grant.write),
                        Err(refusal) => {
                            log::info!("client {}: a fresh token was refused: {refusal}", self.id);
                            return Some(Some(refusal.close(Version::V1)));
                        }
                    };
                    if let Err(end) = bounded(kick, self.bounds(), &mut self.stalled, socket.text(frame)).await {
                        return Some(end);
                    }
                }
            }
            Ok(ClientFrame::Ping) if self.version == Version::V2 => {
                if let Err(end) = bounded(kick, self.bounds(), &mut self.stalled, socket.text(protocol::pong())).await {
                    return Some(end);
                }
            }
            // v1: a message without a key, dropped silently as upstream does.
            Ok(ClientFrame::Ping | ClientFrame::PresenceLeave { .. }) => metrics.dropped(protocol::Dropped::BadKey),
            Err(reason) => {
                metrics.dropped(reason);
                log::debug!("client {}: dropped message ({})", self.id, reason.as_str());
                // v1 drops silently; v2 tells the writer which write will never apply.
                if self.version == Version::V2
                    && let Some(reference) = protocol::dropped_reference(text)
                    && let Err(end) = bounded(
                        kick,
                        self.bounds(),
                        &mut self.stalled,
                        socket.text(protocol::nack(&reference, reason.as_str())),
                    )
                    .await
                {
                    return Some(end);
                }
            }
        }
        None
    }

    /// A v2 client's fresh token: it must verify, name the same user and grant this room (read
    /// or write: the connection's access becomes the new token's); then its expiry replaces the
    /// old one. Anything else is refused (and the connection closed by the caller).
    fn refresh(&mut self, token: Option<&str>) -> Result<(), Refusal> {
        let token = token.ok_or(Refusal::BadToken("no token"))?;
        let identity = self.deps.access.verify(token, SystemTime::now())?;
        if identity.user() != self.grant.user.as_ref() {
            return Err(Refusal::BadToken("another user"));
        }
        self.grant = Grant::from(identity.admit(&self.room)?);
        Ok(())
    }

    /// Sends a write to the state actor once it has an admission slot: at once if one is free,
    /// else it becomes [`Connection::pending`] and the pump waits for one (the ledger is that many
    /// writes behind: the writer is slowed, nothing is buffered without bound).
    fn write(&mut self, key: String, value: Option<crate::json::Json>, reference: Option<serde_json::Value>) {
        let state = self.deps.state.clone();
        let (room, origin, by, client, caps) =
            (self.room.clone(), self.id, self.grant.user.clone(), self.client.clone(), self.deps.rooms);
        let write = move |permit| Write { room, key, value, permit, origin, by, reference, client, caps };
        match Arc::clone(&self.deps.admission).try_acquire_owned() {
            Ok(permit) => state.do_send(write(permit)),
            Err(_) => {
                let admission = Arc::clone(&self.deps.admission);
                self.pending = Some(Box::pin(async move {
                    // The semaphore is never closed, so acquire cannot fail.
                    if let Ok(permit) = admission.acquire_owned().await {
                        state.do_send(write(permit));
                    }
                }));
            }
        }
    }
}
