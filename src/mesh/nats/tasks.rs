//! The transport's background tasks: publishing this relay's writes, consuming the stream
//! (bootstrapping from a snapshot when needed), and publishing snapshots.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    consumer::{AckPolicy, DeliverPolicy, pull},
    object_store::ObjectMetadata,
};
use futures_util::StreamExt;
use tokio::{io::AsyncReadExt, sync::mpsc};

use super::{CHECKPOINT, CONSUMER_ENDED, Connection, NATS_PEER, PUBLISH_BATCH, position::Position, sanitize};
use crate::{
    lww::Op,
    mesh::{
        shared::Shared,
        stats::PeerStats,
        wire::{self, PeerFrame},
    },
    state::{Barrier, MapView, NodeId, RegistersIn},
};

/// What the background tasks share.
#[derive(Clone)]
pub(super) struct Tasks {
    pub(super) shared: Arc<Shared>,
    pub(super) conn: Arc<Connection>,
    pub(super) position: Arc<Mutex<Position>>,
    /// Held while the position file is written.
    pub(super) file: Arc<Mutex<()>>,
    pub(super) path: PathBuf,
    pub(super) stats: Arc<PeerStats>,
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
    pub(super) async fn publisher(
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
                match self
                    .shared
                    .state
                    .send(MapView)
                    .await
                    .map(|maps| written_by(&maps, &self.shared.node_id, after.as_ref()))
                {
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
    pub(super) async fn consumer(self) {
        let peer: NodeId = NATS_PEER.into();
        let name = format!("relay-{}", sanitize(&self.shared.node_id));
        let mut refused = 0;
        // Ops the ledger refused so far: a checkpoint that sees more reads its range again.
        let Ok(mut seen) = self.shared.state.send(Barrier).await else { return };
        let mut delay = Duration::from_millis(200);
        loop {
            match self.consume_once(&peer, &name, &mut refused, &mut seen).await {
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

    async fn consume_once(&self, peer: &NodeId, name: &str, refused: &mut u64, seen: &mut u64) -> Result<(), String> {
        let mut stream = self.conn.stream.clone();
        let info = stream.info().await.map_err(|e| e.to_string())?.clone();
        let mut applied = self.position().applied;
        if applied > info.state.last_sequence {
            log::warn!("nats: applied sequence {applied} is past the stream's end; reading it from its start");
            applied = 0;
        }
        if applied + 1 < info.state.first_sequence {
            applied = self.bootstrap(peer, info.state.first_sequence, seen).await?;
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
                            self.shared.ingest(peer, wire::Peer::Ours, ops, false, &self.stats, refused).await?;
                        }
                        Some(PeerFrame::Op { op }) => self.shared.ingest(peer, wire::Peer::Ours, vec![op], false, &self.stats, refused).await?,
                        _ => self.shared.refuse(NATS_PEER, wire::Refused::Malformed, refused),
                    }
                    handed = seq;
                }
                _ = checkpoint.tick() => {
                    if handed > self.position().applied {
                        self.checkpoint(handed, seen).await?;
                    }
                }
            }
        }
    }

    /// Everything handed to the state up to `seq` is settled: record it, unless the ledger
    /// refused some of it meanwhile (`dropped` grew past `seen`), in which case reading starts
    /// again from the last recorded sequence.
    async fn checkpoint(&self, seq: u64, seen: &mut u64) -> Result<(), String> {
        let dropped = self.shared.state.send(Barrier).await.map_err(|_| "state unavailable")?;
        if dropped > *seen {
            *seen = dropped;
            return Err(format!("the ledger refused ops up to sequence {seq}; reading them again"));
        }
        self.save(|p| p.applied = p.applied.max(seq)).await;
        Ok(())
    }

    /// Loads the newest snapshot that reaches `first - 1` and returns the sequence it covers.
    async fn bootstrap(&self, peer: &NodeId, first: u64, seen: &mut u64) -> Result<u64, String> {
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
                self.shared
                    .ingest(peer, wire::Peer::Ours, std::mem::take(&mut values), false, &self.stats, &mut refused)
                    .await?;
            }
        }
        self.shared.ingest(peer, wire::Peer::Ours, values, false, &self.stats, &mut refused).await?;
        let resume = covered.max(first - 1);
        self.checkpoint(resume, seen).await?;
        log::info!("nats: loaded snapshot {name} covering sequences up to {covered}");
        Ok(resume)
    }

    /// Publishes a snapshot every `interval` while the applied sequence moves.
    pub(super) async fn snapshots(self, interval: Duration) {
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
        let registers = self.shared.state.send(RegistersIn::All).await.map_err(|_| "state unavailable")?;
        let mut body = Vec::new();
        for op in registers.ops() {
            body.extend_from_slice(&wire::record_of(&op));
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

/// The ops of every room that `node` wrote after `after`, in stamp order.
fn written_by(
    maps: &[(crate::room::Room, crate::lww::LwwMap)],
    node: &str,
    after: Option<&crate::hlc::Stamp>,
) -> Vec<Op> {
    let mut ops: Vec<Op> = maps
        .iter()
        .flat_map(|(room, map)| map.written_by(node, after).into_iter().map(|op| op.in_room(room.clone())))
        .collect();
    ops.sort_by(|a, b| a.stamp.cmp(&b.stamp));
    ops
}
