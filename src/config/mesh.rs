//! `[mesh]`, `[mesh.tls]` and `[mesh.nats]`: federation settings, with their defaults and checks.

use std::{fmt, net::SocketAddr, path::PathBuf};

use serde::Deserialize;

use super::redacted;

/// `[mesh]`: federation with other relays (ours, or upstream's Python `MeshNode`).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshConfig {
    /// This node's id, written into every stamp it issues. Must be unique in a federation.
    /// Default `alpha` (upstream's demo node).
    pub node_id: String,
    /// Listener for peers (`ws://`, or `wss://` with `[mesh.tls]`). Unset: no listener.
    pub bind: Option<SocketAddr>,
    /// Peers to dial, as `ws://host:port` or `wss://host:port` URLs. Each is redialled with
    /// exponential backoff and jitter whenever its link is down.
    pub peers: Vec<String>,
    /// Shared secret of the federation. Peers prove they hold it by challenge-response; it is
    /// never sent. Empty: peers are not authenticated (trusted network only).
    pub token: String,
    /// File holding the token. Exclusive with `token`; `AETHER_MESH_TOKEN` overrides both.
    pub token_file: Option<PathBuf>,
    /// Interop with upstream's Python `MeshNode`, which can only send the token in its `hello`:
    /// accept such peers, and send the token in our own `hello` when dialling. Default false.
    pub token_in_hello: bool,
    /// Ops from peers stamped more than this many seconds ahead of our clock are refused, so one
    /// bad clock cannot drag every node's clock into the future. Default 60.
    pub max_clock_drift_s: f64,
    /// First redial delay after a link drops, in seconds; doubles per failure. Default 0.25.
    pub redial_min_s: f64,
    /// Longest redial delay, in seconds. Default 30.
    pub redial_max_s: f64,
    /// Seconds between anti-entropy rounds on a quiet link (besides the one on every connect);
    /// 0 only on connect. Default 60.
    pub anti_entropy_interval_s: f64,
    /// Most simultaneous inbound peer connections; more are closed with 1013. Default 64.
    pub max_peers: usize,
    /// Bytes queued for one peer before its link counts as stuck: it is closed and redialled,
    /// and anti-entropy sends what it missed. Default 64 MiB.
    pub max_peer_queue_bytes: usize,
    /// `[mesh.tls]`: TLS for the peer listener and for dialling `wss://` peers.
    pub tls: MeshTlsConfig,
    /// How relays reach each other: `"websocket"` (peer links, the keys above) or `"nats"` (a NATS
    /// JetStream stream, `[mesh.nats]`). Default `"websocket"`.
    pub transport: Transport,
    /// `[mesh.nats]`: the NATS transport.
    pub nats: NatsConfig,
}

/// `[mesh] transport`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Peer links over WebSockets (`bind`, `peers`).
    #[default]
    Websocket,
    /// A NATS JetStream stream shared by every relay.
    Nats,
}

/// `[mesh.nats]`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// NATS server URLs (`nats://host:4222`, `tls://…`); the client fails over between them.
    /// Default `["nats://127.0.0.1:4222"]`.
    pub servers: Vec<String>,
    /// Name of the federation; the names below derive from it. Default `aether`.
    pub cluster: String,
    /// JetStream stream of ops. Default `AETHER_<CLUSTER>` (upper case, `-`/`.` as `_`).
    pub stream: String,
    /// Subject ops are published on. Default `aether.<cluster>.ops`.
    pub subject: String,
    /// Plain NATS subject for cursors (never in the stream). Default `aether.<cluster>.presence`.
    pub presence_subject: String,
    /// Object store bucket for snapshots. Default `aether_<cluster>_snapshots`.
    pub snapshot_bucket: String,
    /// Replicas of the stream and of the bucket (1, or 3 in a cluster of three). Default 1.
    pub replicas: usize,
    /// Stream retention: the oldest ops go after this many seconds; 0 keeps them until
    /// `max_bytes`. Default 0.
    pub max_age_s: f64,
    /// Stream retention in bytes; 0 unlimited. Default 1 GiB.
    pub max_bytes: u64,
    /// Seconds between snapshots this relay publishes (a relay that missed trimmed ops, or a new
    /// one, starts from the newest). Default 300.
    pub snapshot_interval_s: f64,
    /// Token auth.
    pub token: String,
    /// User and password auth (both or neither).
    pub user: String,
    /// See `user`.
    pub password: String,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// PEM CA that signs the servers' certificates (for `tls://` URLs); unset: system roots.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    /// See `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Most ops waiting to be published while NATS is away; past it the queue is dropped and
    /// rebuilt from the state when NATS is back (nothing is lost: the ledger has every op).
    /// Default 100,000.
    pub max_publish_queue: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            cluster: "aether".to_owned(),
            stream: String::new(),
            subject: String::new(),
            presence_subject: String::new(),
            snapshot_bucket: String::new(),
            replicas: 1,
            max_age_s: 0.0,
            max_bytes: 1 << 30,
            snapshot_interval_s: 300.0,
            token: String::new(),
            user: String::new(),
            password: String::new(),
            creds_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            max_publish_queue: 100_000,
        }
    }
}

impl fmt::Debug for NatsConfig {
    /// Never prints the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("cluster", &self.cluster)
            .field("stream", &self.stream_name())
            .field("subject", &self.subject_name())
            .field("replicas", &self.replicas)
            .field("token", &redacted(&self.token))
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// The stream's name.
    pub fn stream_name(&self) -> String {
        configured_or(&self.stream, || format!("AETHER_{}", self.cluster_token().to_ascii_uppercase()))
    }

    /// The ops subject.
    pub fn subject_name(&self) -> String {
        configured_or(&self.subject, || format!("aether.{}.ops", self.cluster))
    }

    /// The presence subject.
    pub fn presence_subject_name(&self) -> String {
        configured_or(&self.presence_subject, || format!("aether.{}.presence", self.cluster))
    }

    /// The snapshot bucket's name.
    pub fn bucket_name(&self) -> String {
        configured_or(&self.snapshot_bucket, || {
            format!("aether_{}_snapshots", self.cluster_token().to_ascii_lowercase())
        })
    }

    /// `cluster` as it goes into stream and bucket names (letters and digits; the rest as `_`).
    fn cluster_token(&self) -> String {
        self.cluster.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() {
            return Err("[mesh.nats] servers must name at least one server".to_owned());
        }
        let name_ok = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok(&self.cluster) {
            return Err(format!("[mesh.nats] cluster {:?}: letters, digits, - and _ only", self.cluster));
        }
        if self.replicas == 0 || self.replicas > 5 {
            return Err("[mesh.nats] replicas must be 1 to 5".to_owned());
        }
        if self.user.is_empty() != self.password.is_empty() {
            return Err("[mesh.nats] user and password go together".to_owned());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err("[mesh.nats] tls_cert and tls_key go together".to_owned());
        }
        for (key, v) in [("max_age_s", self.max_age_s), ("snapshot_interval_s", self.snapshot_interval_s)] {
            if !(v.is_finite() && (0.0..1e9).contains(&v)) {
                return Err(format!("[mesh.nats] {key} must be a number of seconds, got {v}"));
            }
        }
        if self.snapshot_interval_s < 0.05 || self.max_publish_queue == 0 {
            return Err("[mesh.nats] snapshot_interval_s must be at least 0.05 and max_publish_queue above 0".into());
        }
        Ok(())
    }
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            node_id: "alpha".to_owned(),
            bind: None,
            peers: Vec::new(),
            token: String::new(),
            token_file: None,
            token_in_hello: false,
            max_clock_drift_s: 60.0,
            redial_min_s: 0.25,
            redial_max_s: 30.0,
            anti_entropy_interval_s: 60.0,
            max_peers: 64,
            max_peer_queue_bytes: 64 << 20,
            tls: MeshTlsConfig::default(),
            transport: Transport::Websocket,
            nats: NatsConfig::default(),
        }
    }
}

impl fmt::Debug for MeshConfig {
    /// Never prints the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshConfig")
            .field("node_id", &self.node_id)
            .field("bind", &self.bind)
            .field("peers", &self.peers)
            .field("token", &redacted(&self.token))
            .field("token_file", &self.token_file)
            .field("token_in_hello", &self.token_in_hello)
            .field("max_clock_drift_s", &self.max_clock_drift_s)
            .field("redial_min_s", &self.redial_min_s)
            .field("redial_max_s", &self.redial_max_s)
            .field("anti_entropy_interval_s", &self.anti_entropy_interval_s)
            .field("max_peers", &self.max_peers)
            .field("max_peer_queue_bytes", &self.max_peer_queue_bytes)
            .field("tls", &self.tls)
            .field("transport", &self.transport)
            .field("nats", &self.nats)
            .finish()
    }
}

impl MeshConfig {
    /// Is federation over peer links on (a listener or peers to dial)?
    pub fn enabled(&self) -> bool {
        self.transport == Transport::Websocket && (self.bind.is_some() || !self.peers.is_empty())
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        if self.node_id.is_empty() || self.node_id.len() > 128 {
            return Err("[mesh] node_id must be 1 to 128 bytes".to_owned());
        }
        if let Some(peer) = self.peers.iter().find(|p| !(p.starts_with("ws://") || p.starts_with("wss://"))) {
            return Err(format!("[mesh] peers: {peer:?} is not a ws:// or wss:// URL"));
        }
        if !self.token.is_empty() && self.token_file.is_some() {
            return Err("[mesh] set token or token_file, not both".to_owned());
        }
        let seconds = [
            ("max_clock_drift_s", self.max_clock_drift_s, 0.001),
            ("redial_min_s", self.redial_min_s, 0.001),
            ("redial_max_s", self.redial_max_s, self.redial_min_s),
            ("anti_entropy_interval_s", self.anti_entropy_interval_s, 0.0),
        ];
        if let Some((key, v, min)) = seconds.iter().find(|(_, v, min)| !(v.is_finite() && *v >= *min && *v < 1e7)) {
            return Err(format!("[mesh] {key} must be a number of seconds from {min}, got {v}"));
        }
        if self.max_peers == 0 || self.max_peer_queue_bytes == 0 {
            return Err("[mesh] max_peers and max_peer_queue_bytes must be greater than 0".to_owned());
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("[mesh.tls] cert and key go together".to_owned());
        }
        if self.transport == Transport::Nats {
            if self.bind.is_some() || !self.peers.is_empty() {
                return Err(
                    "[mesh] bind and peers are for transport = \"websocket\"; with NATS, relays meet on the stream"
                        .into(),
                );
            }
            self.nats.validate()?;
        }
        Ok(())
    }

    /// [`MeshConfig::max_clock_drift_s`] in nanoseconds.
    pub fn max_drift_ns(&self) -> u64 {
        // Validated finite, non-negative and below 1e7 s, so the product fits.
        (self.max_clock_drift_s * 1e9) as u64
    }
}

/// `[mesh.tls]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MeshTlsConfig {
    /// PEM certificate chain the peer listener serves (with `key`: the listener speaks `wss://`).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM file of the certificate authorities that sign peers' certificates, for dialling
    /// `wss://` peers. Unset: the system's trust store. Host names are always verified.
    pub ca: Option<PathBuf>,
}

/// `value` when set, else the name derived from the cluster.
fn configured_or(value: &str, derived: impl FnOnce() -> String) -> String {
    if value.is_empty() { derived() } else { value.to_owned() }
}
