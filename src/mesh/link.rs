//! One peer link, once its handshake ([`super::handshake`]) is done: reading and writing at the
//! same time.
//!
//! Reading decodes and checks every op, drops what the seen-stamp cache already passed, takes an
//! admission slot per op (when the relay is saturated, reading pauses and TCP pushes back on the
//! peer: flow control, never a rate-limit kill), and hands ops to the state actor, which keeps
//! only winners. It answers a peer's digest with the registers of the buckets that differ.
//!
//! Writing drains the link's outbox (filled by the mesh actor with durable ops, and by reading
//! with anti-entropy answers), paced for upstream peers so their rate limit never trips, and
//! pings; a peer silent for [`PEER_TIMEOUT`] is dropped and redialled.

use std::{sync::Arc, time::Duration};

use actix::Addr;
use actix_web::web::Bytes;
use bytestring::ByteString;
use serde_json::Value;
use tokio::{
    sync::mpsc,
    time::{Instant, sleep, sleep_until},
};

use super::{
    Connected, Disconnected, MeshActor, PeerCursor, Refusal,
    handshake::Peer,
    shared::Shared,
    stats::PeerStats,
    transport::{Gone, Incoming, Reader, Writer},
    wire::{self, PeerFrame},
};
use crate::{
    limits::TokenBucket,
    outbox::{Outbound, Outbox, OutboxReceiver, PushError, outbox},
    state::{DigestRequest, RegistersIn},
};

/// Interval between pings on a link.
const PING_EVERY: Duration = Duration::from_secs(5);
/// A peer that sends nothing (pongs included) for this long is considered gone.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(20);
/// Upstream's per-peer rate limit (`SecurityLimits.messages_burst`, `messages_per_second`).
const UPSTREAM_BURST: u32 = 200;
const UPSTREAM_PER_SECOND: f64 = 100.0;

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
            let ops = self.shared.state.send(RegistersIn::all()).await.map_err(|_| "state unavailable")?;
            let n = ops.len();
            self.push(ops.iter().map(|op| wire::op(&wire::record_of(op))).collect(), n)
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
