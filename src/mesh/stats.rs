//! Counters of the mesh for `/metrics` and `/healthz`: per peer (connected, ops in and out,
//! lag, queued bytes), per dialled URL (redials), and ops refused or found stale.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use super::wire::Refused;

/// One peer's counters, shared by its link task and the mesh actor. Kept after the link drops
/// (with `connected` false), so counters survive reconnects.
#[derive(Debug, Default)]
pub struct PeerStats {
    /// Links up to this peer: briefly two while a new link replaces an old one.
    links: AtomicUsize,
    ops_in: AtomicU64,
    ops_out: AtomicU64,
    /// Age of the newest op received from this peer when it arrived (replication delay), in ns.
    lag_ns: AtomicU64,
    /// Bytes queued for the peer (the link's outbox counter) while connected.
    queued: Mutex<Option<Arc<AtomicUsize>>>,
}

impl PeerStats {
    /// `n` ops arrived; the newest was stamped `lag_ns` before it arrived.
    pub fn received(&self, n: usize, lag_ns: u64) {
        self.ops_in.fetch_add(n as u64, Relaxed);
        self.lag_ns.store(lag_ns, Relaxed);
    }

    /// `n` ops were queued for the peer.
    pub fn sent(&self, n: usize) {
        self.ops_out.fetch_add(n as u64, Relaxed);
    }

    /// A link came up, with its outbox counter.
    pub fn link_up(&self, queued: Arc<AtomicUsize>) {
        self.links.fetch_add(1, Relaxed);
        *self.queued.lock().unwrap_or_else(PoisonError::into_inner) = Some(queued);
    }

    /// A link went down.
    pub fn link_down(&self) {
        if self.links.fetch_sub(1, Relaxed) == 1 {
            *self.queued.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    fn connected(&self) -> bool {
        self.links.load(Relaxed) > 0
    }

    fn queued_bytes(&self) -> usize {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner).as_ref().map_or(0, |q| q.load(Relaxed))
    }
}

/// The mesh's counters.
#[derive(Debug, Default)]
pub struct MeshStats {
    peers: Mutex<BTreeMap<String, Arc<PeerStats>>>,
    redials: Mutex<BTreeMap<String, u64>>,
    refused: [AtomicU64; Refused::ALL.len()],
    stale: AtomicU64,
    duplicates: AtomicU64,
}

/// A peer as `/healthz` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerSummary {
    /// Node id.
    pub node: String,
    /// Link up?
    pub connected: bool,
    /// Ops received.
    pub ops_in: u64,
    /// Ops sent.
    pub ops_out: u64,
}

impl MeshStats {
    /// The counters of peer `node`, created on first use.
    pub fn peer(&self, node: &str) -> Arc<PeerStats> {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(peers.entry(node.to_owned()).or_default())
    }

    /// The dialler of `url` tries again.
    pub fn redial(&self, url: &str) {
        *self.redials.lock().unwrap_or_else(PoisonError::into_inner).entry(url.to_owned()).or_default() += 1;
    }

    /// An op from a peer was refused.
    pub fn refused(&self, reason: Refused) {
        if let Some(i) = Refused::ALL.iter().position(|r| *r == reason) {
            self.refused[i].fetch_add(1, Relaxed);
        }
    }

    /// An op from a peer lost to what this node already had (a duplicate or an older write).
    pub fn stale(&self) {
        self.stale.fetch_add(1, Relaxed);
    }

    /// An op from a peer was dropped by the seen-stamp cache before reaching the state.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Relaxed);
    }

    /// Connected peers.
    pub fn connected(&self) -> usize {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner).values().filter(|p| p.connected()).count()
    }

    /// Every peer seen since start.
    pub fn summary(&self) -> Vec<PeerSummary> {
        let peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        peers
            .iter()
            .map(|(node, p)| PeerSummary {
                node: node.clone(),
                connected: p.connected(),
                ops_in: p.ops_in.load(Relaxed),
                ops_out: p.ops_out.load(Relaxed),
            })
            .collect()
    }

    /// Appends the Prometheus text of the mesh's metrics to `out`.
    pub fn render(&self, out: &mut String) {
        let peers: Vec<(String, Arc<PeerStats>)> = self
            .peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (escape(k), Arc::clone(v)))
            .collect();
        let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        family(
            "aether_mesh_peers",
            "gauge",
            "Connected federation peers.",
            vec![(String::new(), self.connected() as f64)],
        );
        let per_peer = |f: &dyn Fn(&PeerStats) -> f64| -> Vec<(String, f64)> {
            peers.iter().map(|(node, p)| (format!("{{peer=\"{node}\"}}"), f(p))).collect()
        };
        family(
            "aether_mesh_peer_connected",
            "gauge",
            "1 while the link to the peer is up.",
            per_peer(&|p| f64::from(u8::from(p.connected()))),
        );
        family(
            "aether_mesh_ops_in_total",
            "counter",
            "Ops received from the peer.",
            per_peer(&|p| p.ops_in.load(Relaxed) as f64),
        );
        family(
            "aether_mesh_ops_out_total",
            "counter",
            "Ops sent to the peer.",
            per_peer(&|p| p.ops_out.load(Relaxed) as f64),
        );
        family(
            "aether_mesh_peer_lag_seconds",
            "gauge",
            "Age of the newest op received from the peer when it arrived.",
            per_peer(&|p| p.lag_ns.load(Relaxed) as f64 / 1e9),
        );
        family(
            "aether_mesh_peer_queue_bytes",
            "gauge",
            "Bytes queued for the peer and not yet written to its socket.",
            per_peer(&|p| p.queued_bytes() as f64),
        );
        let redials = self
            .redials
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(url, n)| (format!("{{url=\"{}\"}}", escape(url)), *n as f64))
            .collect();
        family("aether_mesh_redials_total", "counter", "Dial attempts after the first, per peer URL.", redials);
        let refused = Refused::ALL
            .iter()
            .zip(&self.refused)
            .map(|(r, n)| (format!("{{reason=\"{}\"}}", r.as_str()), n.load(Relaxed) as f64))
            .collect();
        family("aether_mesh_ops_refused_total", "counter", "Ops from peers refused, by reason.", refused);
        family(
            "aether_mesh_ops_stale_total",
            "counter",
            "Ops from peers that lost to what this node had (not stored, not forwarded).",
            vec![(String::new(), self.stale.load(Relaxed) as f64)],
        );
        family(
            "aether_mesh_ops_duplicate_total",
            "counter",
            "Ops from peers dropped by the seen-stamp cache.",
            vec![(String::new(), self.duplicates.load(Relaxed) as f64)],
        );
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
