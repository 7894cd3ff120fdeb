//! One peer link: the handshake (either role), then reading and writing at the same time.
//!
//! Reading decodes and checks every op, drops what the seen-stamp cache already passed, takes an
//! admission slot per op (when the relay is saturated, reading pauses and TCP pushes back on the
//! peer: flow control, never a rate-limit kill), and hands ops to the state actor, which keeps
//! only winners. It answers a peer's digest with the registers of the buckets that differ.
//!
//! Writing drains the link's outbox (filled by the mesh actor with durable ops, and by reading
//! with anti-entropy answers), paced for upstream peers so their rate limit never trips, and
//! pings; a peer silent for [`PEER_TIMEOUT`] is dropped and redialled.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use actix::Addr;
use actix_web::web::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, sleep, sleep_until, timeout},
};

use super::{
    Connected, Disconnected, MeshActor, PeerCursor, Refusal,
    auth::{self, Role, Transcript},
    stats::PeerStats,
    transport::{Gone, Incoming, Reader, Writer},
    wire::{self, Caps, Hello, PeerFrame},
};
use crate::{
    config::Limits,
    hlc::wall_clock_ns,
    limits::TokenBucket,
    lww::Op,
    metrics::Metrics,
    outbox::{Outbound, Outbox, OutboxReceiver, PushError, outbox},
    state::{DigestRequest, NodeId, RegistersIn, RemoteOps, StateActor},
};

/// Interval between pings on a link.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A peer that sends nothing (pongs included) for this long is considered gone.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);
/// Upstream's per-peer rate limit (`SecurityLimits.messages_burst`, `messages_per_second`).
const UPSTREAM_BURST: u32 = 200;
const UPSTREAM_PER_SECOND: f64 = 100.0;
/// Our peer protocol version (in `hello`).
const VERSION: u32 = 1;

/// What every link shares.
pub struct Shared {
    /// Our node id.
    pub node_id: NodeId,
    /// Random id of this process.
    pub instance: String,
    /// The mesh token, if peers must authenticate.
    pub token: Option<String>,
    /// Upstream's token-in-hello accepted and used.
    pub token_in_hello: bool,
    /// Refuse ops stamped further ahead than this.
    pub max_drift_ns: u64,
    /// Anti-entropy rounds on quiet links, besides the one on connect.
    pub anti_entropy: Option<Duration>,
    /// Time for the peer's `hello` (and `auth`).
    pub handshake_timeout: Duration,
    /// Bytes queued for a peer before its link counts as stuck.
    pub max_queue_bytes: usize,
    /// Key and value limits, and upstream's rate (for pacing).
    pub limits: Arc<Limits>,
    /// The state.
    pub state: Addr<StateActor>,
    /// Admission slots shared with browser writes.
    pub admission: Arc<Semaphore>,
    /// Counters (the mesh's are `metrics.mesh`).
    pub metrics: Arc<Metrics>,
    /// Ops already passed on (by stamp and key), so gossip arriving by several paths costs once.
    pub seen: Mutex<SeenCache>,
}

/// A peer that completed the handshake.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its node id.
    pub node: NodeId,
    /// Its process id (ours only).
    pub instance: Option<String>,
    /// One of ours (speaks digests, batches, presence) or upstream's.
    pub ours: bool,
}

/// Why a handshake failed: the close to send, and what to log.
#[derive(Debug)]
pub struct HandshakeError {
    /// Close code, if a close frame is worth sending.
    pub close: Option<(u16, &'static str)>,
    /// For the log.
    pub why: String,
}

fn fail(close: Option<(u16, &'static str)>, why: impl Into<String>) -> HandshakeError {
    HandshakeError { close, why: why.into() }
}

const AUTH_FAILED: Option<(u16, &str)> = Some((1008, "auth failed"));

async fn recv_text(reader: &mut Reader, writer: &mut Writer, wait: Duration) -> Result<String, HandshakeError> {
    let deadline = Instant::now() + wait;
    loop {
        match timeout(deadline.saturating_duration_since(Instant::now()), reader.recv()).await {
            Err(_) => return Err(fail(None, "no handshake in time")),
            Ok(Incoming::Text(text)) => return Ok(text),
            Ok(Incoming::Ping(bytes)) => writer.pong(bytes).await.map_err(|_| fail(None, "socket closed"))?,
            Ok(Incoming::Alive) => {}
            Ok(Incoming::Closed(code)) => return Err(fail(None, format!("closed during handshake ({code:?})"))),
        }
    }
}

async fn recv_hello(reader: &mut Reader, writer: &mut Writer, wait: Duration) -> Result<Hello, HandshakeError> {
    let text = recv_text(reader, writer, wait).await?;
    match wire::parse(&text) {
        Some(PeerFrame::Hello(hello)) if !hello.node_id.is_empty() && hello.node_id.len() <= 128 => Ok(hello),
        _ => Err(fail(Some((1002, "bad handshake")), "first frame is not a valid hello")),
    }
}

async fn send(writer: &mut Writer, frame: ByteString) -> Result<(), HandshakeError> {
    writer.text(frame).await.map_err(|_| fail(None, "socket closed"))?;
    writer.flush().await.map_err(|_| fail(None, "socket closed"))
}

impl Shared {
    fn caps(&self, nonce: &str, proof: Option<String>) -> Caps {
        Caps { v: VERSION, instance: self.instance.clone(), nonce: nonce.to_owned(), proof }
    }

    /// The listener's side of the handshake.
    ///
    /// # Errors
    /// [`HandshakeError`] with the close to send.
    pub async fn accept(&self, reader: &mut Reader, writer: &mut Writer) -> Result<Peer, HandshakeError> {
        let hello = recv_hello(reader, writer, self.handshake_timeout).await?;
        let node: NodeId = hello.node_id.as_str().into();
        let Some(theirs) = hello.aether else {
            // An upstream MeshNode: it can only authenticate with the token itself.
            if let Some(token) = &self.token {
                if !self.token_in_hello {
                    return Err(fail(
                        AUTH_FAILED,
                        format!("{node} speaks upstream's protocol; accepting its token needs [mesh] token_in_hello"),
                    ));
                }
                if !hello.auth_token.as_deref().is_some_and(|t| auth::same_token(token, t)) {
                    return Err(fail(AUTH_FAILED, format!("{node} sent a wrong or no token")));
                }
            }
            // It proved it holds the token, so ours may go back (its dialler checks it).
            send(writer, wire::hello(&self.node_id, None, self.token.as_deref())).await?;
            return Ok(Peer { node, instance: None, ours: false });
        };
        let nonce = auth::nonce();
        let t = Transcript {
            dialler_nonce: &theirs.nonce,
            listener_nonce: &nonce,
            dialler: &hello.node_id,
            listener: &self.node_id,
        };
        let proof = self.token.as_ref().map(|token| auth::proof(token, Role::Listener, &t));
        send(writer, wire::hello(&self.node_id, Some(&self.caps(&nonce, proof)), None)).await?;
        if let Some(token) = &self.token {
            let text = recv_text(reader, writer, self.handshake_timeout).await?;
            let ok = match wire::parse(&text) {
                Some(PeerFrame::Auth { proof }) => auth::verify(token, Role::Dialler, &t, &proof),
                _ => false,
            };
            if !ok {
                return Err(fail(AUTH_FAILED, format!("{node} did not prove it holds the mesh token")));
            }
        }
        Ok(Peer { node, instance: Some(theirs.instance), ours: true })
    }

    /// The dialler's side of the handshake.
    ///
    /// # Errors
    /// [`HandshakeError`] with the close to send.
    pub async fn dial(&self, reader: &mut Reader, writer: &mut Writer) -> Result<Peer, HandshakeError> {
        let nonce = auth::nonce();
        let token_in_hello = self.token.as_deref().filter(|_| self.token_in_hello);
        send(writer, wire::hello(&self.node_id, Some(&self.caps(&nonce, None)), token_in_hello)).await?;
        let hello = recv_hello(reader, writer, self.handshake_timeout).await?;
        let node: NodeId = hello.node_id.as_str().into();
        let Some(theirs) = hello.aether else {
            if let Some(token) = &self.token {
                // Upstream's mutual check: its reply must carry the same token.
                if !(self.token_in_hello && hello.auth_token.as_deref().is_some_and(|t| auth::same_token(token, t))) {
                    return Err(fail(
                        AUTH_FAILED,
                        format!("{node} (upstream protocol) did not present the mesh token"),
                    ));
                }
            }
            return Ok(Peer { node, instance: None, ours: false });
        };
        if let Some(token) = &self.token {
            let t = Transcript {
                dialler_nonce: &nonce,
                listener_nonce: &theirs.nonce,
                dialler: &self.node_id,
                listener: &hello.node_id,
            };
            if !theirs.proof.as_deref().is_some_and(|p| auth::verify(token, Role::Listener, &t, p)) {
                return Err(fail(AUTH_FAILED, format!("{node} did not prove it holds the mesh token")));
            }
            send(writer, wire::auth(&auth::proof(token, Role::Dialler, &t))).await?;
        }
        Ok(Peer { node, instance: Some(theirs.instance), ours: true })
    }
}

/// Ops already seen, by (stamp, key), first in first out.
#[derive(Debug)]
pub struct SeenCache {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl SeenCache {
    /// A cache of at most `capacity` entries (`[limits] max_seen_stamps`).
    pub fn new(capacity: usize) -> Self {
        Self { set: HashSet::new(), order: VecDeque::new(), capacity }
    }

    /// Records `op`; false if it was there already.
    pub fn insert(&mut self, op: &Op) -> bool {
        let id = crate::digest::register_hash(&op.key, &op.stamp, false, &Value::Null);
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// Writer commands that jump the queue.
#[derive(Debug)]
pub enum Control {
    /// Answer a ping.
    Pong(Bytes),
    /// Close the link now with this code and reason.
    Close(u16, &'static str),
}

/// How a link ended.
#[derive(Debug)]
pub enum Ended {
    /// The mesh refused to register it.
    Refused(Refusal),
    /// It ran, then ended for this reason.
    Ran(String),
}

/// Runs an authenticated link until it ends: registers it with the mesh, then reads and writes.
pub async fn run(
    shared: Arc<Shared>,
    mesh: Addr<MeshActor>,
    peer: Peer,
    mut reader: Reader,
    writer: Writer,
    dialled: bool,
    remote: String,
) -> Ended {
    let (outbox, rx) = outbox(shared.max_queue_bytes);
    let (control, control_rx) = mpsc::unbounded_channel();
    let stats = shared.metrics.mesh.peer(&peer.node);
    let connected = Connected {
        node: Arc::clone(&peer.node),
        instance: peer.instance.clone(),
        dialled,
        ours: peer.ours,
        outbox: outbox.clone(),
        control: control.clone(),
        remote: remote.clone(),
    };
    let id = match mesh.send(connected).await {
        Ok(Ok(id)) => id,
        Ok(Err(refusal)) => {
            writer.close(refusal.code, refusal.reason).await;
            return Ended::Refused(refusal);
        }
        Err(_) => {
            writer.close(1011, "mesh unavailable").await;
            return Ended::Ran("mesh unavailable".into());
        }
    };
    stats.link_up(outbox.gauge());
    let kind = if peer.ours { "aether" } else { "upstream" };
    let direction = if dialled { "dialled" } else { "accepted" };
    log::info!("mesh: linked to {} at {remote} ({direction}, {kind} protocol)", peer.node);
    let mut link = Link { shared: Arc::clone(&shared), mesh: mesh.clone(), peer, outbox, control, stats, refused: 0 };
    // Stay under upstream's per-peer token bucket (its SecurityLimits defaults), which closes
    // the link for good when exceeded. Our own [limits] are for our browsers, not for it.
    let pacer = (!link.peer.ours).then(|| TokenBucket::new(UPSTREAM_BURST * 3 / 4, UPSTREAM_PER_SECOND * 0.9));
    let why = match link.catch_up().await {
        Err(why) => why,
        Ok(()) => tokio::select! {
            why = write(writer, rx, control_rx, pacer) => why,
            why = link.read(&mut reader) => why,
        },
    };
    link.stats.link_down();
    mesh.do_send(Disconnected { node: Arc::clone(&link.peer.node), id });
    log::info!("mesh: link to {} at {remote} closed: {why}", link.peer.node);
    Ended::Ran(why)
}

/// The reading side's state.
struct Link {
    shared: Arc<Shared>,
    mesh: Addr<MeshActor>,
    peer: Peer,
    outbox: Outbox,
    control: mpsc::UnboundedSender<Control>,
    stats: Arc<PeerStats>,
    refused: u64,
}

impl Link {
    /// Anti-entropy on connect: our digest to one of ours; our whole state to upstream's, which
    /// has no digest (it merges and keeps what wins).
    async fn catch_up(&mut self) -> Result<(), String> {
        if self.peer.ours {
            let buckets = self.shared.state.send(DigestRequest).await.map_err(|_| "state unavailable")?;
            self.push(vec![wire::digest(&buckets)], 0)
        } else {
            let ops =
                self.shared.state.send(RegistersIn { theirs: Vec::new() }).await.map_err(|_| "state unavailable")?;
            let n = ops.len();
            self.push(ops.iter().map(wire::op).collect(), n)
        }
    }

    fn push(&self, frames: Vec<ByteString>, ops: usize) -> Result<(), String> {
        if frames.is_empty() {
            return Ok(());
        }
        match self.outbox.push(Outbound::frames(frames.into())) {
            Ok(()) => {
                self.stats.sent(ops);
                Ok(())
            }
            Err(PushError::Full) => Err("peer too slow: queue full (it will be redialled and caught up)".into()),
            Err(PushError::Closed) => Err("writer ended".into()),
        }
    }

    async fn read(&mut self, reader: &mut Reader) -> String {
        let mut heard = Instant::now();
        let mut last_op = Instant::now();
        let every = self.shared.anti_entropy.filter(|_| self.peer.ours);
        let mut next_round = every.map(|d| Instant::now() + d);
        loop {
            let round = async {
                match next_round {
                    Some(at) => sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let incoming = tokio::select! {
                biased;
                incoming = reader.recv() => incoming,
                () = sleep_until(heard + PEER_TIMEOUT) => return format!("no frame for {} s", PEER_TIMEOUT.as_secs()),
                () = round => {
                    let every = every.unwrap_or(PEER_TIMEOUT);
                    next_round = Some(Instant::now() + every);
                    // Only on a quiet link: while ops flow, digests differ anyway.
                    if last_op.elapsed() >= every / 2
                        && let Err(why) = self.catch_up().await
                    {
                        return why;
                    }
                    continue;
                }
            };
            heard = Instant::now();
            let result = match incoming {
                Incoming::Closed(code) => {
                    return format!("peer closed ({})", code.map_or("no code".into(), |c| c.to_string()));
                }
                Incoming::Ping(bytes) => {
                    let _ = self.control.send(Control::Pong(bytes));
                    continue;
                }
                Incoming::Alive => continue,
                Incoming::Text(text) => self.frame(&text, &mut last_op).await,
            };
            if let Err(why) = result {
                return why;
            }
            // Time spent here (waiting for admission, say) was ours, not the peer's silence.
            heard = Instant::now();
        }
    }

    async fn frame(&mut self, text: &str, last_op: &mut Instant) -> Result<(), String> {
        match wire::parse(text) {
            Some(PeerFrame::Op { op }) => self.ingest(vec![op], true, last_op).await,
            Some(PeerFrame::Ops { ops }) => self.ingest(ops, true, last_op).await,
            Some(PeerFrame::Sync { ops }) => self.ingest(ops, false, last_op).await,
            Some(PeerFrame::Digest { buckets }) => {
                let ops =
                    self.shared.state.send(RegistersIn { theirs: buckets }).await.map_err(|_| "state unavailable")?;
                let records: Vec<Vec<u8>> = ops.iter().map(wire::record_of).collect();
                self.push(wire::batches("sync", records.iter().map(Vec::as_slice)), ops.len())
            }
            Some(PeerFrame::Presence(cursor)) => {
                self.mesh.do_send(PeerCursor { from: Arc::clone(&self.peer.node), cursor: Ok(cursor) });
                Ok(())
            }
            Some(PeerFrame::PresenceLeave { origin, seq, id }) => {
                let leave = (origin, seq, id);
                self.mesh.do_send(PeerCursor { from: Arc::clone(&self.peer.node), cursor: Err(leave) });
                Ok(())
            }
            Some(PeerFrame::Hello(_) | PeerFrame::Auth { .. } | PeerFrame::Heartbeat { .. } | PeerFrame::Other) => {
                Ok(())
            }
            None => {
                self.refuse(wire::Refused::Malformed);
                Ok(())
            }
        }
    }

    fn refuse(&mut self, reason: wire::Refused) {
        self.shared.refuse(&self.peer.node, reason, &mut self.refused);
    }

    async fn ingest(&mut self, values: Vec<Value>, gossip: bool, last_op: &mut Instant) -> Result<(), String> {
        *last_op = Instant::now();
        self.shared.ingest(&self.peer.node, values, gossip, &self.stats, &mut self.refused).await
    }
}

impl Shared {
    /// Counts and (sparingly) logs an op refused from `peer`; `refused` is that peer's count.
    pub fn refuse(&self, peer: &str, reason: wire::Refused, refused: &mut u64) {
        self.metrics.mesh.refused(reason);
        *refused += 1;
        if refused.is_power_of_two() {
            log::warn!("mesh: refused {refused} op(s) from {peer} so far; latest: {}", reason.as_str());
        }
    }

    /// Checks ops from `peer` and hands them to the state with an admission slot each. `gossip`
    /// ops pass the seen-stamp cache; anti-entropy and snapshot ops do not (they repair what gossip
    /// missed).
    ///
    /// # Errors
    /// When admission is closed (shutting down).
    pub async fn ingest(
        &self,
        peer: &NodeId,
        values: Vec<Value>,
        gossip: bool,
        stats: &PeerStats,
        refused: &mut u64,
    ) -> Result<(), String> {
        let now = wall_clock_ns();
        let mut batch = Vec::with_capacity(values.len());
        let mut newest = 0;
        for value in values {
            let op = match wire::decode_op(value, &self.limits, now, self.max_drift_ns) {
                Ok(op) => op,
                Err(reason) => {
                    self.refuse(peer, reason, refused);
                    continue;
                }
            };
            if gossip && !self.seen.lock().unwrap_or_else(PoisonError::into_inner).insert(&op) {
                self.metrics.mesh.duplicate();
                continue;
            }
            newest = newest.max(op.stamp.p);
            let permit = match Arc::clone(&self.admission).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Saturated: hand over what we hold (never sit on slots while waiting for
                    // more), then wait; meanwhile this peer is not read.
                    self.hand_over(peer, std::mem::take(&mut batch), stats, 0);
                    Arc::clone(&self.admission).acquire_owned().await.map_err(|_| "admission closed")?
                }
            };
            batch.push((op, permit));
        }
        self.hand_over(peer, batch, stats, now.saturating_sub(newest));
        Ok(())
    }

    fn hand_over(&self, peer: &NodeId, ops: Vec<(Op, OwnedSemaphorePermit)>, stats: &PeerStats, lag_ns: u64) {
        if !ops.is_empty() {
            stats.received(ops.len(), lag_ns);
            self.state.do_send(RemoteOps { peer: Arc::clone(peer), ops });
        }
    }
}

/// The writing side: control first, pings, then the outbox, paced when `pacer` is set.
async fn write(
    mut writer: Writer,
    mut rx: OutboxReceiver,
    mut control: mpsc::UnboundedReceiver<Control>,
    mut pacer: Option<TokenBucket>,
) -> String {
    enum Step {
        Control(Option<Control>),
        Ping,
        /// The current batch has a frame to write now, or the queue says close.
        Ready(Result<(), (u16, &'static str)>),
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut current: Option<(Arc<[ByteString]>, usize, usize)> = None; // frames, next, bytes
    loop {
        let step = tokio::select! {
            biased;
            c = control.recv() => Step::Control(c),
            _ = ping.tick() => Step::Ping,
            ready = next_ready(&mut current, &mut rx, pacer.as_mut()) => Step::Ready(ready),
        };
        let done: Result<Result<(), (u16, &'static str)>, Gone> = match step {
            Step::Control(Some(Control::Pong(bytes))) => writer.pong(bytes).await.map(Ok),
            Step::Control(Some(Control::Close(code, reason))) => Ok(Err((code, reason))),
            Step::Control(None) => Ok(Err((1001, "going away"))),
            Step::Ping => writer.ping().await.map(Ok),
            Step::Ready(Err(close)) => Ok(Err(close)),
            Step::Ready(Ok(())) => write_next(&mut writer, &mut current, &rx).await.map(Ok),
        };
        match done {
            Ok(Ok(())) => {}
            Ok(Err((code, reason))) => {
                writer.close(code, reason).await;
                return format!("closed by us ({code} {reason})");
            }
            Err(Gone) => return "socket closed".into(),
        }
    }
}

/// Waits until a frame may be written: a batch is at hand and the pacer (if any) has a token.
/// Cancel-safe: nothing is lost if another branch wins meanwhile.
async fn next_ready(
    current: &mut Option<(Arc<[ByteString]>, usize, usize)>,
    rx: &mut OutboxReceiver,
    pacer: Option<&mut TokenBucket>,
) -> Result<(), (u16, &'static str)> {
    if current.is_none() {
        match rx.recv().await {
            Some(Outbound::Frames { frames, bytes }) => *current = Some((frames, 0, bytes)),
            Some(Outbound::Close(code, reason)) => return Err((code, reason)),
            None => return Err((1001, "going away")),
        }
    }
    if let Some(pacer) = pacer {
        while !pacer.try_take() {
            sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}

/// Writes the next frame of the current batch; flushes and releases its bytes when it is done.
async fn write_next(
    writer: &mut Writer,
    current: &mut Option<(Arc<[ByteString]>, usize, usize)>,
    rx: &OutboxReceiver,
) -> Result<(), Gone> {
    let Some((frames, next, bytes)) = current.as_mut() else { return Ok(()) };
    if let Some(frame) = frames.get(*next) {
        writer.text(frame.clone()).await?;
        *next += 1;
    }
    if *next >= frames.len() {
        writer.flush().await?;
        rx.written(*bytes);
        *current = None;
    }
    Ok(())
}
