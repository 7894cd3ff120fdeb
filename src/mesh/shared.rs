//! What every peer link (and the NATS transport) shares, and the one path by which their ops
//! reach the state: decoded, checked against the browser limits and the drift bound, passed
//! through the seen cache (gossip only), each holding an admission slot.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, Mutex, PoisonError},
};

use actix::Addr;
use serde_json::Value;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Duration,
};

use super::{stats::PeerStats, wire};
use crate::{
    config::Limits,
    hlc::wall_clock_ns,
    lww::Op,
    metrics::Metrics,
    state::{NodeId, RemoteOps, StateActor},
};

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
        let id = crate::digest::register_hash(&op.room, &op.key, &op.stamp, false, &crate::json::Json::null());
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
    /// missed). `kind` says which records the peer may send: an upstream peer only the default
    /// room's (see [`wire::decode_op`]).
    ///
    /// # Errors
    /// When admission is closed (shutting down).
    pub async fn ingest(
        &self,
        peer: &NodeId,
        kind: wire::Peer,
        values: Vec<Value>,
        gossip: bool,
        stats: &PeerStats,
        refused: &mut u64,
    ) -> Result<(), String> {
        let now = wall_clock_ns();
        let mut batch = Vec::with_capacity(values.len());
        let mut newest = 0;
        for value in values {
            let op = match wire::decode_op(value, kind, &self.limits, now, self.max_drift_ns) {
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
