//! One peer link, once its handshake ([`super::handshake`]) is done: reading and writing at the
//! same time.
//!
//! Reading decodes and checks every op, drops what the seen-stamp cache already passed, takes an
//! admission slot per op (when the relay is saturated, reading pauses and TCP pushes back on the
//! peer: flow control, never a rate-limit kill), and hands ops to the state actor, which keeps
//! only winners. A peer's digest is handed to the catch-up side; one of the wrong length is
//! ignored and counted (`bad_digest`), never answered.
//!
//! Catching up runs beside both: our digest (on connect and on quiet links), the registers of the
//! buckets that differ from a peer's digest, or our whole state for an upstream peer. However
//! large, it goes in chunks that each wait for room in the link's outbox and take at most half of
//! it ([`Outbox::push_within`]), so a large state converges over a link whose queue is far
//! smaller, live gossip keeps its room, and reading never waits on it (two peers answering each
//! other's digests would otherwise wait on each other's reading).
//!
//! Writing drains the link's outbox (filled by the mesh actor with durable ops, and by catching
//! up), paced for upstream peers so their rate limit never trips, pings, and answers the peer's
//! latest ping. Every write is bounded: one that waits [`PEER_TIMEOUT`] for the socket ends the
//! link (the peer reads nothing), as does a peer that sends nothing but pings for as long (it
//! answers none of ours, so it reads nothing either).

use std::{future::Future, iter::Peekable, sync::Arc, time::Duration};

use actix::Addr;
use actix_web::web::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use tokio::{
    sync::{mpsc, watch},
    time::{Instant, sleep, sleep_until, timeout},
};

use super::{
    Connected, Disconnected, MeshActor, PeerCursor, Refusal,
    handshake::Peer,
    shared::Shared,
    stats::PeerStats,
    transport::{Gone, Incoming, Reader, Writer},
    wire::{self, PeerFrame, RemoteCursor},
};
use crate::{
    digest,
    limits::TokenBucket,
    lww::Op,
    outbox::{Outbound, Outbox, OutboxReceiver, PushError, outbox},
    protocol::close,
    state::{DigestRequest, RegistersIn},
};

/// Interval between pings on a link.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A peer that sends nothing (pongs included) for this long is considered gone; one write that
/// waits this long for the socket ends the link too.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);
/// Catch-up work waiting for the catch-up side; more is dropped (the next round repeats it).
const CATCH_UP_QUEUE: usize = 2;
/// Upstream's per-peer rate limit (`SecurityLimits.messages_burst`, `messages_per_second`).
const UPSTREAM_BURST: u32 = 200;
const UPSTREAM_PER_SECOND: f64 = 100.0;

/// Writer commands that jump the queue (pongs do not queue: only the latest ping is answered,
/// as RFC 6455 §5.5.3 allows, so a peer sending pings cannot grow a queue).
#[derive(Debug)]
pub enum Control {
    /// Close the link now with this code and reason.
    Close(u16, &'static str),
}

/// How many commands a link's writer holds at most; more are dropped (a close already waits).
pub const CONTROL_QUEUE: usize = 4;

/// Work for the catch-up side.
#[derive(Debug)]
enum CatchUp {
    /// Send our digest.
    Digest,
    /// Send these registers.
    Registers(RegistersIn),
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
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let (pong, pong_rx) = watch::channel(None);
    let (catch_up, catch_up_rx) = mpsc::channel(CATCH_UP_QUEUE);
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
            writer.close(close::KEEPALIVE, "mesh unavailable").await;
            return Ended::Ran("mesh unavailable".into());
        }
    };
    stats.link_up(outbox.gauge());
    let kind = if peer.ours { "aether" } else { "upstream" };
    let direction = if dialled { "dialled" } else { "accepted" };
    log::info!("mesh: linked to {} at {remote} ({direction}, {kind} protocol)", peer.node);
    let sender = CatchUpSender { shared: Arc::clone(&shared), outbox, stats: Arc::clone(&stats), ours: peer.ours };
    let mut link = Link { shared: Arc::clone(&shared), mesh: mesh.clone(), peer, pong, catch_up, stats, refused: 0 };
    // Stay under upstream's per-peer token bucket (its SecurityLimits defaults), which closes
    // the link for good when exceeded. Our own [limits] are for our browsers, not for it.
    let pacer = (!link.peer.ours).then(|| TokenBucket::new(UPSTREAM_BURST * 3 / 4, UPSTREAM_PER_SECOND * 0.9));
    // Anti-entropy on connect: our digest to one of ours; our whole default room to upstream's,
    // which has no digest (it merges and keeps what wins) and no rooms.
    link.catch_up(if link.peer.ours { CatchUp::Digest } else { CatchUp::Registers(RegistersIn::All) });
    let why = tokio::select! {
        why = write(writer, rx, control_rx, pong_rx, pacer) => why,
        why = link.read(&mut reader) => why,
        why = sender.run(catch_up_rx) => why,
    };
    link.stats.link_down();
    mesh.do_send(Disconnected { node: Arc::clone(&link.peer.node), id });
    log::info!("mesh: link to {} at {remote} closed: {why}", link.peer.node);
    Ended::Ran(why)
}

/// The catch-up side: sends what [`CatchUp`] asks for, in chunks that wait for room.
struct CatchUpSender {
    shared: Arc<Shared>,
    outbox: Outbox,
    stats: Arc<PeerStats>,
    ours: bool,
}

impl CatchUpSender {
    /// Runs until the link ends; returns why, if it ended the link.
    async fn run(self, mut work: mpsc::Receiver<CatchUp>) -> String {
        while let Some(job) = work.recv().await {
            let done = match job {
                CatchUp::Digest => self.digest().await,
                CatchUp::Registers(which) => self.registers(which).await,
            };
            if let Err(why) = done {
                return why;
            }
        }
        std::future::pending().await // the reading side is gone: the link is ending
    }

    async fn digest(&self) -> Result<(), String> {
        let buckets = self.shared.state.send(DigestRequest).await.map_err(|_| "state unavailable")?;
        self.push(vec![wire::digest(&buckets)], 0).await
    }

    /// Sends `which` registers, in chunks of at most a quarter of the queue (and of a frame's
    /// usual size), each waiting until the queue holds at most half its bound.
    async fn registers(&self, which: RegistersIn) -> Result<(), String> {
        // A view of the map: walking it (it may hold millions of keys) happens here, chunk by
        // chunk as the queue drains, not on the state actor.
        let registers = self.shared.state.send(which).await.map_err(|_| "state unavailable")?;
        let chunk = (self.shared.max_queue_bytes / 4).clamp(1, wire::CHUNK_BYTES);
        // Every room to one of ours; the default room only to upstream's, whatever asked for it.
        let kind = wire::Peer::from_ours(self.ours);
        let mut ops = registers.ops().filter(|op| wire::for_peer(op, kind)).peekable();
        while ops.peek().is_some() {
            let (frames, taken) = chunk_of(&mut ops, self.ours, chunk);
            self.push(frames, taken).await?;
        }
        Ok(())
    }

    async fn push(&self, frames: Vec<ByteString>, ops: usize) -> Result<(), String> {
        let share = (self.shared.max_queue_bytes / 2).max(1);
        match self.outbox.push_within(Outbound::frames(frames.into()), share).await {
            Ok(()) => {
                self.stats.sent(ops);
                Ok(())
            }
            Err(PushError::Full | PushError::Closed) => Err("writer ended".into()),
        }
    }
}

/// The frames for the next ops of `ops` that fit in about `limit` bytes (at least one op): one
/// `sync` frame for our peers, `op` frames for upstream's. Returns how many ops they carry.
fn chunk_of(ops: &mut Peekable<impl Iterator<Item = Op>>, ours: bool, limit: usize) -> (Vec<ByteString>, usize) {
    // An `op` frame wraps each record in 20 bytes; a `sync` frame adds a comma per record.
    let overhead = if ours { 1 } else { 20 };
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut bytes = 0;
    while let Some(op) = ops.peek() {
        let record = wire::record_of(op);
        if !records.is_empty() && bytes + record.len() + overhead > limit {
            break;
        }
        ops.next();
        bytes += record.len() + overhead;
        records.push(record);
    }
    let frames = if ours {
        wire::batches("sync", records.iter().map(Vec::as_slice))
    } else {
        records.iter().map(|r| wire::op(r)).collect()
    };
    (frames, records.len())
}

/// The reading side's state.
struct Link {
    shared: Arc<Shared>,
    mesh: Addr<MeshActor>,
    peer: Peer,
    /// The latest ping to answer.
    pong: watch::Sender<Option<Bytes>>,
    /// Work for the catch-up side.
    catch_up: mpsc::Sender<CatchUp>,
    stats: Arc<PeerStats>,
    refused: u64,
}

impl Link {
    /// Hands `job` to the catch-up side, unless it has work waiting already (a round finds what
    /// a dropped one would have).
    fn catch_up(&self, job: CatchUp) {
        if let Err(mpsc::error::TrySendError::Full(job)) = self.catch_up.try_send(job) {
            log::debug!("mesh: catch-up for {} busy; dropped {job:?}", self.peer.node);
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
                () = sleep_until(heard + PEER_TIMEOUT) => {
                    return format!("no pong or message for {} s", PEER_TIMEOUT.as_secs());
                }
                () = round => {
                    let every = every.unwrap_or(PEER_TIMEOUT);
                    next_round = Some(Instant::now() + every);
                    // Only on a quiet link: while ops flow, digests differ anyway.
                    if last_op.elapsed() >= every / 2 {
                        self.catch_up(CatchUp::Digest);
                    }
                    continue;
                }
            };
            // A ping proves the peer writes, not that it reads: a peer that pings and never reads
            // (so never answers our pings) is not heard, and goes after PEER_TIMEOUT.
            if let Incoming::Ping(bytes) = incoming {
                self.pong.send_replace(Some(bytes));
                continue;
            }
            heard = Instant::now();
            let result = match incoming {
                Incoming::Closed(code) => {
                    return format!("peer closed ({})", code.map_or("no code".into(), |c| c.to_string()));
                }
                Incoming::Ping(_) => continue,
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
            Some(PeerFrame::Digest { buckets }) if buckets.len() == digest::BUCKETS => {
                self.catch_up(CatchUp::Registers(RegistersIn::Differing(buckets)));
                Ok(())
            }
            Some(PeerFrame::Digest { .. }) => {
                self.refuse(wire::Refused::BadDigest);
                Ok(())
            }
            // Rooms are ours: an upstream-kind link has the default room only, cursors included.
            Some(PeerFrame::Presence(RemoteCursor { room, .. }) | PeerFrame::PresenceLeave { room, .. })
                if !self.peer.ours && !room.is_default() =>
            {
                self.refuse(wire::Refused::Room);
                Ok(())
            }
            Some(PeerFrame::Presence(cursor)) => {
                self.mesh.do_send(PeerCursor { from: Arc::clone(&self.peer.node), cursor: Ok(cursor) });
                Ok(())
            }
            Some(PeerFrame::PresenceLeave { origin, seq, id, room }) => {
                let leave = (origin, seq, id, room);
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
        let kind = wire::Peer::from_ours(self.peer.ours);
        self.shared.ingest(&self.peer.node, kind, values, gossip, &self.stats, &mut self.refused).await
    }
}

/// The writing side: control first, the latest ping's pong, pings, then the outbox, paced when
/// `pacer` is set. Each write may wait [`PEER_TIMEOUT`] for the socket, no longer.
async fn write(
    mut writer: Writer,
    mut rx: OutboxReceiver,
    mut control: mpsc::Receiver<Control>,
    mut pong: watch::Receiver<Option<Bytes>>,
    mut pacer: Option<TokenBucket>,
) -> String {
    enum Step {
        Control(Option<Control>),
        Pong(Option<Bytes>),
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
            // The sender lives as long as the reading side; once it is gone the link is ending.
            Ok(()) = pong.changed() => Step::Pong(pong.borrow_and_update().clone()),
            _ = ping.tick() => Step::Ping,
            ready = next_ready(&mut current, &mut rx, pacer.as_mut()) => Step::Ready(ready),
        };
        let done: Result<Result<(), (u16, &'static str)>, Stalled> = match step {
            Step::Control(Some(Control::Close(code, reason))) => Ok(Err((code, reason))),
            Step::Control(None) => Ok(Err((close::GOING_AWAY, "going away"))),
            Step::Pong(None) => Ok(Ok(())),
            Step::Pong(Some(bytes)) => bounded(writer.pong(bytes)).await,
            Step::Ping => bounded(writer.ping()).await,
            Step::Ready(Err(close)) => Ok(Err(close)),
            Step::Ready(Ok(())) => bounded(write_next(&mut writer, &mut current, &rx)).await,
        };
        match done {
            Ok(Ok(())) => {}
            Ok(Err((code, reason))) => {
                writer.close(code, reason).await;
                return format!("closed by us ({code} {reason})");
            }
            Err(Stalled::Gone) => return "socket closed".into(),
            Err(Stalled::Timeout) => {
                writer.close(close::TRY_AGAIN_LATER, "too slow").await;
                return format!("peer too slow: a write waited {} s for its socket", PEER_TIMEOUT.as_secs());
            }
        }
    }
}

/// Why a write did not complete.
enum Stalled {
    /// The socket is closed.
    Gone,
    /// It waited [`PEER_TIMEOUT`]: the peer reads nothing.
    Timeout,
}

/// `write`, given at most [`PEER_TIMEOUT`].
async fn bounded(write: impl Future<Output = Result<(), Gone>>) -> Result<Result<(), (u16, &'static str)>, Stalled> {
    match timeout(PEER_TIMEOUT, write).await {
        Ok(Ok(())) => Ok(Ok(())),
        Ok(Err(Gone)) => Err(Stalled::Gone),
        Err(_) => Err(Stalled::Timeout),
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
            None => return Err((close::GOING_AWAY, "going away")),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::hlc::Stamp;

    fn ops(sizes: &[usize]) -> Vec<Op> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Op::set(format!("k{i}"), json!("v".repeat(n)), Stamp::new(1, 0, "a")))
            .collect()
    }

    /// Cuts `ops` the way catching up does; returns the chunks' sizes and the ops read back.
    fn cut(ops: &[Op], ours: bool, limit: usize) -> (Vec<usize>, Vec<Op>) {
        let (mut sizes, mut back, mut rest) = (Vec::new(), Vec::new(), ops.iter().cloned().peekable());
        while rest.peek().is_some() {
            let (frames, taken) = chunk_of(&mut rest, ours, limit);
            assert!(taken > 0);
            sizes.push(frames.iter().map(|f| f.len()).sum());
            for frame in &frames {
                let values = match wire::parse(frame) {
                    Some(PeerFrame::Sync { ops }) if ours => ops,
                    Some(PeerFrame::Op { op }) if !ours => vec![op],
                    _ => panic!("unexpected frame {frame}"),
                };
                back.extend(
                    values
                        .into_iter()
                        .map(|v| wire::decode_op(v, wire::Peer::Ours, &Default::default(), u64::MAX, 0).unwrap()),
                );
            }
        }
        (sizes, back)
    }

    #[test]
    fn catch_up_chunks_stay_under_their_limit_and_carry_every_op_in_order() {
        let all = ops(&[100; 500]);
        for ours in [true, false] {
            let (sizes, back) = cut(&all, ours, 4096);
            assert_eq!(back, all);
            assert!(sizes.len() > 10 && sizes.iter().all(|&s| s <= 4096 + 64), "{sizes:?}");
        }
        // An op larger than the limit still goes, alone.
        let big = ops(&[10, 10_000, 10]);
        let (sizes, back) = cut(&big, true, 1000);
        assert_eq!((back, sizes.len()), (big, 3));
    }
}
