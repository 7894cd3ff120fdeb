//! Federation: `MeshActor` links this relay with other relays (ours, or upstream's Python
//! `MeshNode`) so that they all converge on one state, whatever the order, losses and partitions.
//!
//! How it converges:
//! - Gossip: every op that becomes durable here (a local write, or a remote op that won) is
//!   forwarded to every linked peer except the one it came from. Peers keep only winners, so an op
//!   flooding a ring stops where it no longer changes anything.
//! - Anti-entropy: on every connect (and on quiet links every `anti_entropy_interval_s`) two of our
//!   nodes exchange bucketed digests ([`crate::digest`]) and send each other the registers of the
//!   buckets that differ; so writes made while nodes were apart, or lost with a dropped link or a
//!   crash, reach both. One digest covers every room (a bucket holds keys of any room), and the
//!   registers sent carry their room. An upstream peer has no digest: it is sent our whole default
//!   room on connect.
//! - Rooms: our peers exchange every room (each op record names its room); an upstream
//!   `MeshNode` knows one map, so it is sent the default room only and a named room's record
//!   from it is refused ([`wire::Peer`], [`wire::for_peer`]). Cursors carry their room too, and go
//!   to our peers only.
//!   Either goes in chunks that wait for room in the link's queue ([`link`]), so a state larger
//!   than `max_peer_queue_bytes` still converges.
//! - Links come back: each `[mesh] peers` URL has a dialler that redials with exponential backoff
//!   and jitter; simultaneous mutual dials settle on the link dialled by the smaller node id; a
//!   second process claiming a linked node id (or ours) is refused loudly.
//!
//! Layers: [`wire`] (frames), [`auth`] (challenge-response), [`handshake`], [`transport`]
//! (sockets), [`link`] (one link: reading with flow control, paced writing), [`shared`] (the checked
//! path of peer ops into the state), [`presence`] (cursors), [`stats`] (counters), `dial` and
//! `listener`; this module owns the set of links, forwarding and presence across nodes.
//!
//! The seam with the state is transport-neutral: the state sends [`StateEvent`]s (durable ops,
//! local cursors) and takes checked ops as `RemoteOps`. [`nats`] is the second transport behind
//! that seam: a NATS JetStream stream instead of peer links (`[mesh] transport = "nats"`).

pub mod auth;
mod dial;
pub mod handshake;
pub mod link;
mod listener;
pub mod nats;
pub mod presence;
pub mod shared;
pub mod stats;
pub mod transport;
pub mod wire;

pub use listener::serve;

use std::{
    collections::{HashMap, HashSet},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use actix::prelude::*;
use openssl::ssl::SslConnector;
use tokio::sync::{Notify, mpsc};

use self::{link::Control, presence::Hub, shared::Shared, transport::Dialer, wire::RemoteCursor};
use crate::{
    lww::Op,
    outbox::{Outbound, Outbox, PushError},
    protocol::close,
    room::Room,
    state::{DigestRequest, NodeId, StateEvent},
};

/// A link that stayed up this long resets its dialler's backoff.
const STABLE_LINK: Duration = Duration::from_secs(10);

/// Why the mesh refused to register a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Close code sent to the peer.
    pub code: u16,
    /// Close reason sent to the peer.
    pub reason: &'static str,
}

const ALREADY_LINKED: Refusal = Refusal { code: close::DUPLICATE_LINK, reason: "duplicate link" };
const ID_IN_USE: Refusal = Refusal { code: close::NODE_ID_IN_USE, reason: "node id in use" };
const SELF_DIAL: Refusal = Refusal { code: close::SELF_DIAL, reason: "dialled itself" };

/// A registered link.
struct LinkEntry {
    id: u64,
    instance: Option<String>,
    dialled: bool,
    ours: bool,
    outbox: Outbox,
    control: mpsc::Sender<Control>,
}

/// Settings of the mesh besides what links share.
pub struct MeshSettings {
    /// URLs to dial.
    pub peers: Vec<String>,
    /// First redial delay.
    pub redial_min: Duration,
    /// Longest redial delay.
    pub redial_max: Duration,
    /// TLS for `wss://` URLs.
    pub tls: SslConnector,
}

/// The mesh singleton. Start [`MeshActor::new`] on an arbiter of its own.
pub struct MeshActor {
    shared: Arc<Shared>,
    settings: Arc<MeshSettings>,
    links: HashMap<NodeId, LinkEntry>,
    next_id: u64,
    /// Woken whenever a link drops: diallers parked behind a duplicate try again.
    link_down: Arc<Notify>,
    dialling: bool,
    /// Cursors: ours, and the remote ones shown here.
    presence: Hub,
    stopping: bool,
    /// Peers some of whose ops our ledger refused after the seen cache had recorded them: a
    /// digest round with each fetches them again (every [`REFETCH`] while the ledger refuses).
    owed: HashSet<NodeId>,
}

/// How often peers owed a digest round are sent one.
const REFETCH: Duration = Duration::from_secs(1);

impl MeshActor {
    /// The mesh over `shared`, dialling `settings.peers` once started.
    pub fn new(shared: Arc<Shared>, settings: MeshSettings) -> Self {
        Self {
            presence: Hub::new(&shared.node_id, shared.state.clone()),
            shared,
            settings: Arc::new(settings),
            links: HashMap::new(),
            next_id: 0,
            link_down: Arc::new(Notify::new()),
            dialling: false,
            stopping: false,
            owed: HashSet::new(),
        }
    }

    /// Sends `frame` to every link of ours except `skip`.
    fn to_ours(&self, frame: &bytestring::ByteString, skip: Option<&str>) {
        let item = Outbound::frames(Arc::new([frame.clone()]));
        for (node, link) in &self.links {
            if link.ours && Some(&**node) != skip {
                let _ = link.outbox.push(item.clone());
            }
        }
    }

    /// Forwards a durable batch to every peer but each op's source.
    fn forward(&self, ops: &[Op], sources: &[Option<NodeId>]) {
        if self.links.is_empty() || ops.is_empty() {
            return;
        }
        let records: Vec<Vec<u8>> = ops.iter().map(wire::record_of).collect();
        for (node, link) in &self.links {
            // Every room to our peers, the default room only to upstream's.
            let kind = wire::Peer::from_ours(link.ours);
            let picked: Vec<usize> = (0..ops.len())
                .filter(|&i| {
                    sources.get(i).and_then(|s| s.as_deref()) != Some(&**node) && wire::for_peer(&ops[i], kind)
                })
                .collect();
            if picked.is_empty() {
                continue;
            }
            let frames: Vec<_> = if link.ours {
                wire::batches("ops", picked.iter().map(|&i| records[i].as_slice()))
            } else {
                picked.iter().map(|&i| wire::op(&records[i])).collect()
            };
            match link.outbox.push(Outbound::frames(frames.into())) {
                Ok(()) => self.shared.metrics.mesh.peer(node).sent(picked.len()),
                Err(PushError::Full) => {
                    log::warn!("mesh: {node} reads too slowly; closing its link (anti-entropy catches it up)");
                    let _ = link.control.try_send(Control::Close(close::TRY_AGAIN_LATER, "too slow"));
                }
                Err(PushError::Closed) => {}
            }
        }
    }

    fn start_dialling(&mut self, ctx: &mut Context<Self>) {
        if self.dialling {
            return;
        }
        self.dialling = true;
        let dialer =
            Rc::new(Dialer::new(self.settings.tls.clone(), self.shared.handshake_timeout.max(Duration::from_secs(5))));
        for url in self.settings.peers.clone() {
            let task = dial::dial_forever(
                Arc::clone(&self.shared),
                Arc::clone(&self.settings),
                ctx.address(),
                Rc::clone(&dialer),
                url,
                Arc::clone(&self.link_down),
            );
            actix::spawn(task);
        }
    }

    /// The link to `peer` dropped: the cursors that came by it leave, here and on the nodes
    /// behind us.
    fn drop_remote_cursors(&mut self, peer: &str) {
        for frame in self.presence.gone(peer) {
            self.to_ours(&frame, None);
        }
    }

    /// Sends our digest to each owed peer of ours: it answers with the registers that differ,
    /// which reach the state past the seen cache. (An upstream peer has no digest: what our
    /// ledger refused from it comes back only when it writes the keys again.)
    fn refetch(&mut self) {
        for node in std::mem::take(&mut self.owed) {
            let Some(link) = self.links.get(&node).filter(|link| link.ours) else { continue };
            let (state, outbox) = (self.shared.state.clone(), link.outbox.clone());
            log::info!("mesh: fetching again from {node} what our ledger refused");
            actix::spawn(async move {
                if let Ok(buckets) = state.send(DigestRequest).await {
                    let _ = outbox.push(Outbound::frames(Arc::new([wire::digest(&buckets)])));
                }
            });
        }
    }
}

impl Actor for MeshActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        self.start_dialling(ctx);
        ctx.run_interval(REFETCH, |act, _| act.refetch());
        ctx.run_interval(presence::REFRESH, |act, _| {
            for frame in act.presence.refresh() {
                act.to_ours(&frame, None);
            }
        });
    }
}

/// A link finished its handshake and asks to be registered.
#[derive(Message)]
#[rtype(result = "Result<u64, Refusal>")]
pub struct Connected {
    /// The peer's node id.
    pub node: NodeId,
    /// The peer's process id (ours only).
    pub instance: Option<String>,
    /// Dialled by us?
    pub dialled: bool,
    /// Speaks our protocol?
    pub ours: bool,
    /// Where the mesh queues frames for it.
    pub outbox: Outbox,
    /// Where the mesh tells it to close.
    pub control: mpsc::Sender<Control>,
    /// Its address or URL, for logs.
    pub remote: String,
}

impl Handler<Connected> for MeshActor {
    type Result = Result<u64, Refusal>;

    fn handle(&mut self, msg: Connected, _: &mut Context<Self>) -> Self::Result {
        if self.stopping {
            return Err(Refusal { code: close::GOING_AWAY, reason: "going away" });
        }
        let node = Arc::clone(&msg.node);
        if node == self.shared.node_id {
            if msg.instance.as_deref() == Some(self.shared.instance.as_str()) {
                return Err(SELF_DIAL);
            }
            log::error!(
                "mesh: the peer at {} claims our own node id {node:?}; node ids must be unique, refusing it",
                msg.remote
            );
            return Err(ID_IN_USE);
        }
        if let Some(existing) = self.links.get(&node) {
            if existing.instance != msg.instance {
                log::error!(
                    "mesh: {} claims node id {node:?}, which another process holds on a live link; \
                     node ids must be unique (if {node} just restarted, its old link times out within {} s)",
                    msg.remote,
                    link::PEER_TIMEOUT.as_secs()
                );
                return Err(ID_IN_USE);
            }
            let keep_new = if existing.dialled != msg.dialled {
                // Mutual dial: both sides keep the link dialled by the smaller node id.
                let dialler_of_new = if msg.dialled { &self.shared.node_id } else { &node };
                let smaller = if self.shared.node_id < node { &self.shared.node_id } else { &node };
                dialler_of_new == smaller
            } else {
                // Same direction: if they dialled again, their old link is dead to them.
                !msg.dialled
            };
            if !keep_new {
                return Err(ALREADY_LINKED);
            }
            let _ = existing.control.try_send(Control::Close(ALREADY_LINKED.code, ALREADY_LINKED.reason));
        }
        self.next_id += 1;
        let entry = LinkEntry {
            id: self.next_id,
            instance: msg.instance,
            dialled: msg.dialled,
            ours: msg.ours,
            outbox: msg.outbox,
            control: msg.control,
        };
        self.links.insert(node, entry);
        Ok(self.next_id)
    }
}

/// A link ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnected {
    /// Its peer.
    pub node: NodeId,
    /// Its registration.
    pub id: u64,
}

impl Handler<Disconnected> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: Disconnected, _: &mut Context<Self>) {
        if self.links.get(&msg.node).is_some_and(|l| l.id == msg.id) {
            self.links.remove(&msg.node);
            self.drop_remote_cursors(&msg.node);
            self.link_down.notify_waiters();
        }
    }
}

impl Handler<StateEvent> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: StateEvent, _: &mut Context<Self>) {
        match msg {
            StateEvent::Durable { ops, sources } => self.forward(&ops, &sources),
            StateEvent::Presence { id, cursor } => {
                let frame = self.presence.moved(id, cursor);
                self.to_ours(&frame, None);
            }
            StateEvent::Leave { id, .. } => {
                if let Some(frame) = self.presence.left(&id) {
                    self.to_ours(&frame, None);
                }
            }
            StateEvent::Dropped { peers } => self.owed.extend(peers),
        }
    }
}

/// A cursor (or, as `Err((origin, seq, id, room))`, a leave) from a peer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerCursor {
    /// The link it came by.
    pub from: NodeId,
    /// The cursor, or the leave.
    pub cursor: Result<RemoteCursor, (String, u64, String, Room)>,
}

impl Handler<PeerCursor> for MeshActor {
    type Result = ();

    fn handle(&mut self, msg: PeerCursor, _: &mut Context<Self>) {
        let frame = match msg.cursor {
            Ok(cursor) => self.presence.heard(cursor, &msg.from),
            Err((origin, seq, id, room)) => self.presence.heard_leave(&origin, seq, id, room),
        };
        if let Some(frame) = frame {
            self.to_ours(&frame, Some(&msg.from));
        }
    }
}

/// Close every link ([`close::GOING_AWAY`]) and stop dialling: the relay is shutting down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for MeshActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Context<Self>) {
        self.stopping = true;
        for link in self.links.values() {
            let _ = link.control.try_send(Control::Close(close::GOING_AWAY, "going away"));
        }
    }
}

/// Is the mesh shutting down? (Diallers stop.)
#[derive(Message)]
#[rtype(result = "bool")]
pub(super) struct IsStopping;

impl Handler<IsStopping> for MeshActor {
    type Result = bool;

    fn handle(&mut self, _: IsStopping, _: &mut Context<Self>) -> bool {
        self.stopping
    }
}
