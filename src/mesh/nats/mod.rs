//! The NATS JetStream transport (`[mesh] transport = "nats"`): many relays, one stream, no
//! home-made broker.
//!
//! The seam with the rest of the relay is the same as the WebSocket mesh's: the state actor tells
//! the transport what became durable ([`StateEvent`]) and takes remote ops through the same checked,
//! flow-controlled, winners-only path ([`Shared::ingest`], then `RemoteOps`). What differs is who
//! carries ops between relays:
//!
//! - **Publishing.** Each relay publishes every op its own clients wrote, once it is durable in its
//!   ledger, to the stream's subject (batched in our `ops` frame), and waits for JetStream's ack.
//!   The newest stamp acknowledged is this relay's *publish cursor*. While NATS is away, ops queue
//!   (bounded by `max_publish_queue`); past that bound, and at every start, the relay republishes
//!   from the state everything of its own stamped after the cursor: the ledger is the durable queue,
//!   so nothing accepted is ever lost to an outage or a crash (republishing twice is harmless).
//! - **Consuming.** Each relay reads the whole stream with a durable consumer of its own, starting
//!   after the last stream sequence it applied. That sequence is kept beside the ledger
//!   (`<ledger>.nats.json`, written atomically) and advanced only after a [`Barrier`](crate::state::Barrier) says every op
//!   up to it is durable here, so a relay killed at any point resumes where its ledger stands.
//! - **Bootstrap.** Relays publish compacted snapshots (every register, as ledger records) to an
//!   object store bucket, with the stream sequence they cover. A relay whose next sequence is no
//!   longer in the stream (retention, or a brand-new relay after trimming) loads the newest
//!   snapshot, then consumes from the sequence after it.
//! - **Presence.** Cursors go over a plain NATS subject, never into the stream, with the same rules
//!   as over peer links ([`super::presence`]); each relay also sends a heartbeat every
//!   [`HEARTBEAT`], and the cursors of a relay silent for [`HEARTBEAT_LOST`] leave.

mod connection;
mod position;
mod tasks;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use bytestring::ByteString;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use self::tasks::Tasks;
pub use self::{
    connection::{Connection, connect},
    position::Position,
};
use super::{
    presence::{self, Hub},
    shared::Shared,
    stats::PeerStats,
    wire::{self, PeerFrame},
};
use crate::{config::NatsConfig, lww::Op, state::StateEvent};

/// Interval between a relay's heartbeats on the presence subject.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A relay silent this long is gone: its clients' cursors leave.
pub const HEARTBEAT_LOST: Duration = Duration::from_secs(6);
/// How often the applied sequence is made durable while ops flow.
const CHECKPOINT: Duration = Duration::from_millis(200);
/// What the consumer loop returns when its message stream ends (the client closed).
const CONSUMER_ENDED: &str = "consumer ended";
/// Most ops in one published message (then cut at ~192 KiB anyway).
const PUBLISH_BATCH: usize = 4096;

/// The NATS transport's actor: receives what the state tells the mesh, runs the publisher, the
/// consumer, snapshots and presence.
pub struct NatsActor {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    position_path: PathBuf,
    position: Arc<Mutex<Position>>,
    file: Arc<Mutex<()>>,
    snapshot_interval: Duration,
    stats: Arc<PeerStats>,
    publish: Option<mpsc::UnboundedSender<Vec<Op>>>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    resync: Arc<AtomicBool>,
    presence: Hub,
    heard: HashMap<String, Instant>,
    /// Whether `stats` shows the connection up.
    shown_up: bool,
}

/// The name the stream's ops are received under (the "peer" of every op from NATS).
pub const NATS_PEER: &str = "nats";

impl NatsActor {
    /// The actor over a ready connection; `ledger` locates the position file.
    ///
    /// # Errors
    /// When the position file cannot be read.
    pub fn new(shared: Arc<Shared>, conn: Connection, cfg: &NatsConfig, ledger: &Path) -> Result<Self, String> {
        let position_path = Position::path(ledger);
        let mut position = Position::load(&position_path)?;
        let name = cfg.stream_name();
        if position.stream != name || position.created != conn.created {
            if !position.stream.is_empty() {
                log::warn!(
                    "nats: stream {name} is not the one {} refers to (recreated?); reading it from its start",
                    position_path.display()
                );
            }
            position = Position { stream: name, created: conn.created, applied: 0, published: position.published };
        }
        let stats = shared.metrics.mesh.peer(NATS_PEER);
        Ok(Self {
            presence: Hub::new(&shared.node_id, shared.state.clone()),
            shared,
            conn: Arc::new(conn),
            position_path,
            position: Arc::new(Mutex::new(position)),
            file: Arc::default(),
            snapshot_interval: Duration::from_secs_f64(cfg.snapshot_interval_s),
            stats,
            publish: None,
            queued: Arc::new(AtomicUsize::new(0)),
            max_queue: cfg.max_publish_queue,
            resync: Arc::new(AtomicBool::new(true)),
            heard: HashMap::new(),
            shown_up: false,
        })
    }

    fn tasks(&self) -> Tasks {
        Tasks {
            shared: Arc::clone(&self.shared),
            conn: Arc::clone(&self.conn),
            position: Arc::clone(&self.position),
            file: Arc::clone(&self.file),
            path: self.position_path.clone(),
            stats: Arc::clone(&self.stats),
        }
    }

    fn send_presence(&self, frame: ByteString) {
        let (client, subject) = (self.conn.client.clone(), self.conn.presence_subject.clone());
        actix::spawn(async move {
            let _ = client.publish(subject, frame.into_bytes()).await;
        });
    }
}

impl Actor for NatsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        self.timers(ctx);
        let (tx, rx) = mpsc::unbounded_channel();
        self.publish = Some(tx);
        let tasks = self.tasks();
        actix::spawn(tasks.clone().publisher(rx, Arc::clone(&self.queued), Arc::clone(&self.resync)));
        actix::spawn(tasks.clone().consumer());
        actix::spawn(tasks.snapshots(self.snapshot_interval));
        // Presence: one subscription, frames handed to this actor.
        let (client, subject, addr) = (self.conn.client.clone(), self.conn.presence_subject.clone(), ctx.address());
        actix::spawn(async move {
            match client.subscribe(subject.clone()).await {
                Ok(mut sub) => {
                    while let Some(msg) = sub.next().await {
                        if let Ok(text) = std::str::from_utf8(&msg.payload)
                            && let Some(frame) = wire::parse(text)
                        {
                            addr.do_send(Heard(frame));
                        }
                    }
                }
                Err(err) => log::error!("nats: cannot subscribe to {subject}: {err}; cursors stay local"),
            }
        });
    }
}

impl NatsActor {
    /// Shows the NATS connection in the peer counters (`/healthz`, `/metrics`) as it is now.
    fn show_connection(&mut self) {
        let up = self.conn.connected.load(Ordering::Relaxed);
        if up != self.shown_up {
            self.shown_up = up;
            if up { self.stats.link_up(Arc::new(AtomicUsize::new(0))) } else { self.stats.link_down() }
        }
    }

    /// Heartbeats, cursor refreshes and expiry (the context's timers, set again on a restart).
    fn timers(&mut self, ctx: &mut Context<Self>) {
        self.show_connection();
        ctx.run_interval(HEARTBEAT, |act, _| {
            act.show_connection();
            act.send_presence(wire::heartbeat(&act.shared.node_id));
            let lost: Vec<String> =
                act.heard.iter().filter(|(_, at)| at.elapsed() > HEARTBEAT_LOST).map(|(o, _)| o.clone()).collect();
            for origin in lost {
                act.heard.remove(&origin);
                log::info!("nats: no heartbeat from {origin} for {} s; its cursors leave", HEARTBEAT_LOST.as_secs());
                // Every relay hears the origin directly: nothing to pass on.
                act.presence.gone(&origin);
            }
        });
        ctx.run_interval(presence::REFRESH, |act, _| {
            for frame in act.presence.refresh() {
                act.send_presence(frame);
            }
        });
    }
}

impl Handler<super::Shutdown> for NatsActor {
    type Result = ();

    /// Nothing to close: what is not published yet is in the ledger, and goes out at next start.
    fn handle(&mut self, _: super::Shutdown, _: &mut Context<Self>) {}
}

impl Handler<StateEvent> for NatsActor {
    type Result = ();

    fn handle(&mut self, msg: StateEvent, _: &mut Context<Self>) {
        match msg {
            StateEvent::Durable { ops, sources } => {
                // Only our clients' writes: ops from the stream are in it already.
                let mut ours: Vec<Op> =
                    ops.iter().zip(&sources).filter(|(_, source)| source.is_none()).map(|(op, _)| op.clone()).collect();
                if ours.is_empty() {
                    return;
                }
                let n = ours.len();
                // While a republish from the state is due, queue nothing: it will cover these (they
                // are in the map before it reads it), and the publish cursor must not move past
                // them before it runs.
                if self.resync.load(Ordering::Relaxed) {
                    return;
                }
                if self.queued.load(Ordering::Relaxed) + n > self.max_queue {
                    self.resync.store(true, Ordering::Relaxed);
                    log::warn!("nats: publish queue full; will republish from the ledger once NATS keeps up");
                    ours.clear(); // an empty batch: wakes the publisher up to do so
                }
                self.queued.fetch_add(ours.len(), Ordering::Relaxed);
                if let Some(tx) = &self.publish {
                    let _ = tx.send(ours);
                }
            }
            StateEvent::Presence { id, cursor } => {
                let frame = self.presence.moved(id, cursor);
                self.send_presence(frame);
            }
            StateEvent::Leave { id, .. } => {
                if let Some(frame) = self.presence.left(&id) {
                    self.send_presence(frame);
                }
            }
            // The stream is read again from the last checkpoint (the barrier counts the drop).
            StateEvent::Dropped { .. } => {}
        }
    }
}

/// A frame heard on the presence subject.
#[derive(Message)]
#[rtype(result = "()")]
struct Heard(PeerFrame);

impl Handler<Heard> for NatsActor {
    type Result = ();

    fn handle(&mut self, Heard(frame): Heard, _: &mut Context<Self>) {
        match frame {
            PeerFrame::Heartbeat { origin } if *origin != *self.shared.node_id => {
                self.heard.insert(origin, Instant::now());
            }
            // Heard directly from the origin: shown, never passed on.
            PeerFrame::Presence(cursor) => {
                let origin = cursor.origin.clone();
                if self.presence.heard(cursor, &origin).is_some() {
                    self.heard.insert(origin, Instant::now());
                }
            }
            PeerFrame::PresenceLeave { origin, seq, id, room } => {
                self.presence.heard_leave(&origin, seq, id, room);
            }
            _ => {}
        }
    }
}

/// `node` with anything but letters, digits, `-` and `_` replaced (NATS names).
fn sanitize(node: &str) -> String {
    node.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}
