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
//!   (`<ledger>.nats.json`, written atomically) and advanced only after a [`Barrier`] says every op
//!   up to it is durable here, so a relay killed at any point resumes where its ledger stands.
//! - **Bootstrap.** Relays publish compacted snapshots (every register, as ledger records) to an
//!   object store bucket, with the stream sequence they cover. A relay whose next sequence is no
//!   longer in the stream (retention, or a brand-new relay after trimming) loads the newest
//!   snapshot, then consumes from the sequence after it.
//! - **Presence.** Cursors go over a plain NATS subject, never into the stream, with the same rules
//!   as over peer links ([`super::presence`]); each relay also sends a heartbeat every
//!   [`HEARTBEAT`], and the cursors of a relay silent for [`HEARTBEAT_LOST`] leave.

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use actix::prelude::*;
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    object_store::{self, ObjectMetadata, ObjectStore},
    stream,
};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::{io::AsyncReadExt, sync::mpsc};

use super::{
    link::Shared,
    presence::{self, Cursors},
    stats::PeerStats,
    wire::{self, PeerFrame, RemoteCursor},
};
use crate::{
    config::NatsConfig,
    hlc::Stamp,
    lww::Op,
    state::{Barrier, LocalAfter, NodeId, RegistersIn, RemoteLeave, RemotePresence, StateEvent},
};

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

/// How far this relay is, kept beside the ledger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// The stream it refers to, and when that stream was created (a recreated stream starts
    /// over).
    pub stream: String,
    /// Creation time of the stream, in ns since the epoch.
    pub created: i128,
    /// Last stream sequence whose ops are all durable here.
    pub applied: u64,
    /// Newest stamp of this relay's own ops that JetStream acknowledged.
    pub published: Option<Stamp>,
}

impl Position {
    /// The position file of the ledger at `ledger`.
    pub fn path(ledger: &Path) -> PathBuf {
        let mut name = ledger.as_os_str().to_owned();
        name.push(".nats.json");
        PathBuf::from(name)
    }

    /// Reads the position file; a missing file is the start of everything.
    ///
    /// # Errors
    /// When the file exists but cannot be read or parsed.
    pub fn load(path: &Path) -> Result<Position, String> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Position::default()),
            Err(err) => Err(format!("{}: {err}", path.display())),
        }
    }

    /// Writes the position atomically and durably (temp file, fsync, rename, fsync directory).
    ///
    /// # Errors
    /// The I/O error.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(self).unwrap_or_default())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// A connection to NATS with the stream and bucket ready.
pub struct Connection {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    store: ObjectStore,
    subject: String,
    presence_subject: String,
    /// Stream creation time (identifies the stream across recreations).
    created: i128,
    connected: Arc<AtomicBool>,
}

/// Connects to NATS and creates (or verifies) the stream and the snapshot bucket. Runs before
/// the relay serves anything, so a wrong URL, credentials or an incompatible existing stream stop
/// it with one clear line.
///
/// # Errors
/// What is wrong, for the operator.
pub async fn connect(cfg: &NatsConfig, node: &str) -> Result<Connection, String> {
    let connected = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&connected);
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("aether-actix {node}"))
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let flag = Arc::clone(&flag);
            async move {
                match event {
                    async_nats::Event::Connected => {
                        flag.store(true, Ordering::Relaxed);
                        log::info!("nats: connected");
                    }
                    async_nats::Event::Disconnected => {
                        flag.store(false, Ordering::Relaxed);
                        log::warn!("nats: disconnected; serving local clients, queueing what to publish");
                    }
                    other => log::info!("nats: {other}"),
                }
            }
        });
    if !cfg.token.is_empty() {
        options = options.token(cfg.token.clone());
    }
    if !cfg.user.is_empty() {
        options = options.user_and_password(cfg.user.clone(), cfg.password.clone());
    }
    if let Some(creds) = &cfg.creds_file {
        options = options.credentials_file(creds).await.map_err(|e| format!("{}: {e}", creds.display()))?;
    }
    if let Some(ca) = &cfg.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let addrs = cfg
        .servers
        .iter()
        .map(|url| url.parse::<async_nats::ServerAddr>().map_err(|e| format!("servers: {url:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let servers = cfg.servers.join(", ");
    let client = options.connect(addrs).await.map_err(|e| format!("cannot connect to NATS at {servers}: {e}"))?;
    connected.store(true, Ordering::Relaxed);
    // Short timeouts: an ack lost in an outage is retried after a few seconds, not 30.
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .ack_timeout(Duration::from_secs(5))
        .build(client.clone());
    let (name, subject) = (cfg.stream_name(), cfg.subject_name());
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        max_bytes: i64::try_from(cfg.max_bytes).ok().filter(|b| *b > 0).unwrap_or(-1),
        max_age: Duration::from_secs_f64(cfg.max_age_s),
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: Duration::from_secs(120),
        description: Some(format!("aether-actix ops of federation {}", cfg.cluster)),
        ..Default::default()
    };
    // A cluster that starts with us may need a few seconds to elect a JetStream leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match js.get_or_create_stream(config.clone()).await {
            Ok(stream) => break stream,
            Err(err) if Instant::now() < deadline => {
                log::info!("nats: stream {name} not available yet ({err}); retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => {
                return Err(format!("NATS stream {name}: cannot create or open it: {err} (is JetStream enabled?)"));
            }
        }
    };
    let info = stream.info().await.map_err(|e| format!("NATS stream {name}: {e}"))?.clone();
    if !info.config.subjects.contains(&subject) {
        return Err(format!(
            "NATS stream {name} exists with subjects {:?}, not {subject:?}; set [mesh.nats] stream or subject to match",
            info.config.subjects
        ));
    }
    if info.config.num_replicas != cfg.replicas {
        log::warn!(
            "nats: stream {name} has {} replica(s), [mesh.nats] replicas says {}; keeping the stream's",
            info.config.num_replicas,
            cfg.replicas
        );
    }
    let bucket = cfg.bucket_name();
    let store = match js.get_object_store(&bucket).await {
        Ok(store) => store,
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.clone(),
                description: Some("aether-actix snapshots".into()),
                num_replicas: cfg.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("NATS object store {bucket}: cannot create it: {e}"))?,
    };
    log::info!(
        "nats: stream {name} on {subject} ({} ops, sequences {}..={}), snapshots in {bucket}",
        info.state.messages,
        info.state.first_sequence,
        info.state.last_sequence
    );
    Ok(Connection {
        client,
        js,
        stream,
        store,
        subject,
        presence_subject: cfg.presence_subject_name(),
        created: info.created.unix_timestamp_nanos(),
        connected,
    })
}

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
    cursors: Cursors,
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
            cursors: Cursors::new(&shared.node_id),
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
        if self.publish.is_some() {
            return; // restarted by its supervisor: the background tasks still run
        }
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
            let mut ids = Vec::new();
            for origin in lost {
                act.heard.remove(&origin);
                log::info!("nats: no heartbeat from {origin} for {} s; its cursors leave", HEARTBEAT_LOST.as_secs());
                ids.extend(act.cursors.gone(&origin).into_iter().map(|(_, _, id)| id));
            }
            ids.extend(act.cursors.expired());
            if !ids.is_empty() {
                act.shared.state.do_send(RemoteLeave { ids });
            }
        });
        ctx.run_interval(presence::REFRESH, |act, _| {
            for cursor in act.cursors.refresh() {
                act.send_presence(wire::presence(&cursor));
            }
        });
    }
}

impl Supervised for NatsActor {}

impl Handler<super::MeshShutdown> for NatsActor {
    type Result = ();

    /// Nothing to close: what is not published yet is in the ledger, and goes out at next start.
    fn handle(&mut self, _: super::MeshShutdown, _: &mut Context<Self>) {}
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
            StateEvent::Presence { id, color, x, y } => {
                let cursor = self.cursors.moved(id, color, x, y);
                self.send_presence(wire::presence(&cursor));
            }
            StateEvent::Leave { id } => {
                if let Some((origin, seq, id)) = self.cursors.left(id) {
                    self.send_presence(wire::presence_leave(&origin, seq, &id));
                }
            }
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
            PeerFrame::Presence(cursor) => {
                let origin = cursor.origin.clone();
                if self.cursors.remote(&cursor, &origin) {
                    self.heard.insert(origin, Instant::now());
                    let RemoteCursor { id, color, x, y, .. } = cursor;
                    self.shared.state.do_send(RemotePresence { id, color, x, y });
                }
            }
            PeerFrame::PresenceLeave { origin, seq, id } if self.cursors.remote_left(&origin, seq, &id) => {
                self.shared.state.do_send(RemoteLeave { ids: vec![id] });
            }
            _ => {}
        }
    }
}

/// What the background tasks share.
#[derive(Clone)]
struct Tasks {
    shared: Arc<Shared>,
    conn: Arc<Connection>,
    position: Arc<Mutex<Position>>,
    /// Held while the position file is written.
    file: Arc<Mutex<()>>,
    path: PathBuf,
    stats: Arc<PeerStats>,
}

impl Tasks {
    /// Updates the position and writes it durably, on the blocking pool (file I/O never runs on
    /// the arbiter). Writes are serialized and each writes the newest position, so a slow write
    /// can never overwrite a newer one.
    async fn save(&self, update: impl FnOnce(&mut Position)) {
        update(&mut self.position.lock().unwrap_or_else(PoisonError::into_inner));
        let (position, path, file) = (Arc::clone(&self.position), self.path.clone(), Arc::clone(&self.file));
        let written = actix_web::rt::task::spawn_blocking(move || {
            let _serial = file.lock().unwrap_or_else(PoisonError::into_inner);
            let newest = position.lock().unwrap_or_else(PoisonError::into_inner).clone();
            newest.save(&path)
        })
        .await;
        if let Ok(Err(err)) | Err(err) = written.map_err(std::io::Error::other) {
            log::error!("nats: cannot write {}: {err} (a restart would re-read a little more)", self.path.display());
        }
    }

    fn position(&self) -> Position {
        self.position.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Publishes one batch of ops (already durable here) and waits for every ack.
    async fn publish(&self, ops: &[Op]) -> Result<(), String> {
        let records: Vec<Vec<u8>> = ops.iter().map(wire::record_of).collect();
        let mut acks = Vec::new();
        for frame in wire::batches("ops", records.iter().map(Vec::as_slice)) {
            let ack = self
                .conn
                .js
                .publish(self.conn.subject.clone(), frame.into_bytes())
                .await
                .map_err(|e| format!("publish: {e}"))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| format!("no ack from JetStream: {e}"))?;
        }
        self.stats.sent(ops.len());
        Ok(())
    }

    /// Publishes this relay's ops, in order: what the state says was not published yet (at start,
    /// and after an outage overflowed the queue), then each batch as it becomes durable.
    async fn publisher(
        self,
        mut rx: mpsc::UnboundedReceiver<Vec<Op>>,
        queued: Arc<AtomicUsize>,
        resync: Arc<AtomicBool>,
    ) {
        let mut pending: Vec<Op> = Vec::new();
        let mut delay = Duration::from_millis(100);
        let (mut last_save, mut unsaved) = (Instant::now(), false);
        loop {
            if resync.load(Ordering::Relaxed) && pending.is_empty() {
                resync.store(false, Ordering::Relaxed);
                let after = self.position().published;
                match self.shared.state.send(LocalAfter { after }).await {
                    Ok(ops) if !ops.is_empty() => {
                        log::info!("nats: publishing {} op(s) of ours not yet in the stream", ops.len());
                        pending = ops;
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            if pending.is_empty() {
                let first = if unsaved {
                    match tokio::time::timeout(CHECKPOINT, rx.recv()).await {
                        Ok(first) => first,
                        Err(_) => {
                            // Quiet: make the cursor durable now.
                            self.save(|_| {}).await;
                            (last_save, unsaved) = (Instant::now(), false);
                            continue;
                        }
                    }
                } else {
                    rx.recv().await
                };
                let Some(first) = first else { return };
                pending = first;
                while pending.len() < PUBLISH_BATCH {
                    match rx.try_recv() {
                        Ok(more) => pending.extend(more),
                        Err(_) => break,
                    }
                }
                queued.fetch_sub(pending.len().min(queued.load(Ordering::Relaxed)), Ordering::Relaxed);
                if pending.is_empty() {
                    continue; // woken up to republish from the state
                }
            }
            match self.publish(&pending).await {
                Ok(()) => {
                    delay = Duration::from_millis(100);
                    let newest = pending.iter().map(|op| &op.stamp).max().cloned();
                    pending.clear();
                    let advance = |p: &mut Position| {
                        if newest.as_ref() > p.published.as_ref() {
                            p.published = newest;
                        }
                    };
                    // The cursor is made durable at most every CHECKPOINT (a stale one only means
                    // republishing a little after a crash); an fsync per write would halve the rate.
                    advance(&mut self.position.lock().unwrap_or_else(PoisonError::into_inner));
                    unsaved = true;
                    if last_save.elapsed() >= CHECKPOINT {
                        self.save(|_| {}).await;
                        (last_save, unsaved) = (Instant::now(), false);
                    }
                }
                Err(err) => {
                    log::warn!("nats: {err}; retrying in {delay:?} (the ops are safe in the ledger)");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Consumes the stream from after the last applied sequence, for as long as the relay runs;
    /// bootstraps from a snapshot when that sequence is gone from the stream.
    async fn consumer(self) {
        let peer: NodeId = NATS_PEER.into();
        let name = format!("relay-{}", sanitize(&self.shared.node_id));
        let mut refused = 0;
        let mut delay = Duration::from_millis(200);
        loop {
            match self.consume_once(&peer, &name, &mut refused).await {
                Ok(()) => return,
                // The client closes when the relay stops: nothing to report then.
                Err(err) if err == CONSUMER_ENDED => {
                    log::debug!("nats: consumer stream ended; again in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
                Err(err) => {
                    log::warn!("nats: consuming: {err}; again in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume_once(&self, peer: &NodeId, name: &str, refused: &mut u64) -> Result<(), String> {
        let mut stream = self.conn.stream.clone();
        let info = stream.info().await.map_err(|e| e.to_string())?.clone();
        let mut applied = self.position().applied;
        if applied > info.state.last_sequence {
            log::warn!("nats: applied sequence {applied} is past the stream's end; reading it from its start");
            applied = 0;
        }
        if applied + 1 < info.state.first_sequence {
            applied = self.bootstrap(peer, info.state.first_sequence).await?;
        }
        let _ = stream.delete_consumer(name).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.to_owned()),
                deliver_policy: if applied == 0 {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence { start_sequence: applied + 1 }
                },
                ack_policy: AckPolicy::None,
                // Relays come and go (autoscaling): the server forgets a gone relay's consumer.
                inactive_threshold: Duration::from_secs(24 * 3600),
                description: Some(format!("aether-actix relay {}", self.shared.node_id)),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("cannot create consumer {name}: {e}"))?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(1000)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        log::info!("nats: consuming from sequence {}", applied + 1);
        let mut handed = applied;
        let mut checkpoint = tokio::time::interval(CHECKPOINT);
        loop {
            tokio::select! {
                next = messages.next() => {
                    let msg = match next {
                        Some(Ok(msg)) => msg,
                        Some(Err(err)) => return Err(err.to_string()),
                        None => return Err(CONSUMER_ENDED.into()),
                    };
                    let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
                    if seq <= handed {
                        continue;
                    }
                    let ops = std::str::from_utf8(&msg.payload).ok().and_then(wire::parse);
                    match ops {
                        Some(PeerFrame::Ops { ops } | PeerFrame::Sync { ops }) => {
                            self.shared.ingest(peer, ops, false, &self.stats, refused).await?;
                        }
                        Some(PeerFrame::Op { op }) => self.shared.ingest(peer, vec![op], false, &self.stats, refused).await?,
                        _ => self.shared.refuse(NATS_PEER, wire::Refused::Malformed, refused),
                    }
                    handed = seq;
                }
                _ = checkpoint.tick() => {
                    if handed > self.position().applied {
                        self.checkpoint(handed).await?;
                    }
                }
            }
        }
    }

    /// Everything handed to the state up to `seq` is durable: record it.
    async fn checkpoint(&self, seq: u64) -> Result<(), String> {
        self.shared.state.send(Barrier).await.map_err(|_| "state unavailable")?;
        self.save(|p| p.applied = p.applied.max(seq)).await;
        Ok(())
    }

    /// Loads the newest snapshot that reaches `first - 1` and returns the sequence it covers.
    async fn bootstrap(&self, peer: &NodeId, first: u64) -> Result<u64, String> {
        let mut newest: Option<(u64, String)> = None;
        let mut list = self.conn.store.list().await.map_err(|e| e.to_string())?;
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| e.to_string())?;
            let covered = info.description.as_deref().and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            if newest.as_ref().is_none_or(|(c, _)| covered > *c) {
                newest = Some((covered, info.name));
            }
        }
        let Some((covered, name)) = newest else {
            log::error!(
                "nats: the stream starts at sequence {first}, past what this relay applied, and there is no snapshot: \
                 state before it is missing here (raise the stream's retention, or keep a relay publishing snapshots)"
            );
            return Ok(first - 1);
        };
        if covered + 1 < first {
            // Still the most this relay can get: the snapshot, then the stream from its start.
            log::error!(
                "nats: the newest snapshot covers sequences up to {covered} but the stream starts at {first}: \
                 ops in between are missing here (raise the stream's retention or snapshot more often)"
            );
        }
        let mut object = self.conn.store.get(&name).await.map_err(|e| format!("snapshot {name}: {e}"))?;
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|e| format!("snapshot {name}: {e}"))?;
        let mut refused = 0;
        let mut values = Vec::new();
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(value) = serde_json::from_slice(line) {
                values.push(value);
            }
            if values.len() >= PUBLISH_BATCH {
                self.shared.ingest(peer, std::mem::take(&mut values), false, &self.stats, &mut refused).await?;
            }
        }
        self.shared.ingest(peer, values, false, &self.stats, &mut refused).await?;
        let resume = covered.max(first - 1);
        self.checkpoint(resume).await?;
        log::info!("nats: loaded snapshot {name} covering sequences up to {covered}");
        Ok(resume)
    }

    /// Publishes a snapshot every `interval` while the applied sequence moves.
    async fn snapshots(self, interval: Duration) {
        let mut last = 0;
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            let covered = self.position().applied;
            if covered <= last {
                continue;
            }
            match self.snapshot(covered).await {
                Ok(bytes) => {
                    last = covered;
                    log::info!("nats: snapshot up to sequence {covered} published ({bytes} bytes)");
                }
                Err(err) => log::warn!("nats: snapshot failed: {err}"),
            }
        }
    }

    async fn snapshot(&self, covered: u64) -> Result<usize, String> {
        // The map holds every op up to `covered` (it was checkpointed after a barrier).
        let ops = self.shared.state.send(RegistersIn { theirs: Vec::new() }).await.map_err(|_| "state unavailable")?;
        let mut body = Vec::new();
        for op in &ops {
            body.extend_from_slice(&wire::record_of(op));
            body.push(b'\n');
        }
        let meta = ObjectMetadata {
            name: format!("snapshot.{}", sanitize(&self.shared.node_id)),
            description: Some(covered.to_string()),
            ..Default::default()
        };
        self.conn.store.put(meta, &mut body.as_slice()).await.map_err(|e| e.to_string())?;
        Ok(body.len())
    }
}

/// `node` with anything but letters, digits, `-` and `_` replaced (NATS names).
fn sanitize(node: &str) -> String {
    node.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_durably_and_a_missing_file_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = Position::path(&dir.path().join("l.jsonl"));
        assert_eq!(path.file_name().unwrap(), "l.jsonl.nats.json");
        assert_eq!(Position::load(&path).unwrap(), Position::default());
        let position = Position { stream: "S".into(), created: 7, applied: 42, published: Some(Stamp::new(1, 2, "a")) };
        position.save(&path).unwrap();
        assert_eq!(Position::load(&path).unwrap(), position);
        fs::write(&path, "{").unwrap();
        assert!(Position::load(&path).unwrap_err().contains("l.jsonl.nats.json"));
    }
}
