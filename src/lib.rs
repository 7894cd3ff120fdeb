//! aether-actix: a real-time state-sync relay on actix.
//!
//! Browsers keep their state in a Last-Writer-Wins map stamped by hybrid logical clocks; this
//! server stamps and merges their writes, persists each to an append-only, fsynced JSON-lines
//! ledger, relays it to every tab, and replays the ledger at boot. It speaks the browser protocol of
//! Aether-Core 0.4.0 (Python) exactly and reads its ledgers.
//!
//! # Layout
//!
//! Core, plain Rust without actix:
//! - [`hlc`]: stamps and the hybrid logical clock.
//! - [`digest`]: bucketed digests of the map, kept current, for anti-entropy between nodes.
//! - [`json`]: a value as the relay keeps it, its canonical JSON text (made once where it enters,
//!   copied as bytes into ledger lines, frames, snapshots and digests).
//! - [`lww`]: ops, registers and the Last-Writer-Wins map.
//! - [`room`]: room names (the default room is upstream's one map).
//! - [`ledger`]: the JSONL record codec, snapshot files, the ledger file (replay, torn-tail repair,
//!   durable append, crash-safe compaction of a snapshot staged off-thread), history over archives,
//!   archive retention, the health the ledger thread publishes for `/healthz`, `LedgerActor`,
//!   the thread that appends (group commit) and folds compactions in (a quiet relay's lone batch
//!   is appended by the state actor itself, through the same lock), and `replay`, boot's parallel
//!   read of the snapshot and the ledger into every room's map and digest.
//! - [`protocol`]: v1 and v2 wire frames, parsed once at the edge and encoded once per broadcast,
//!   and `protocol::close`, every close code the relay sends (browsers and peers).
//! - [`limits`]: token bucket and connection counter.
//! - [`proxy`]: trusted reverse proxies and the client address behind them.
//! - [`access`]: the one place a presented token becomes a decision: the shared secret or a JWT
//!   (HS256, RS256, ES256; `access::keys` loads the key) → the user, its expiry and its room
//!   grants, and a refusal's close code.
//! - [`config`]: the typed TOML configuration; `config::live`, the keys a reload (SIGHUP) swaps
//!   for new connections, behind the one handle admission reads.
//! - [`metrics`]: counters and histograms for `/metrics` (Prometheus text format).
//! - [`outbox`]: a connection's outbound queue, bounded in bytes.
//!
//! Actors and I/O:
//! - [`state`]: `StateActor`, the singleton that stamps, merges, batches to the ledger and fans
//!   out durable ops to the bounded queues of the op's room's members (`state::room`: everything
//!   that belongs to one room, the map, members, resume sequence, snapshots and caps, while the
//!   actor keeps what is relay-wide; `state::fanout`: per-version frames;
//!   `state::join`: first frames, v2 resume, snapshots encoded off the actor for large maps;
//!   `state::presence`: cursors coalesced per tick; `state::compaction`: online compaction riding
//!   on appends; `state::remote`: peers' ops and digests; `state::api`: the HTTP API's writes,
//!   room views, disconnects and compactions on demand).
//! - [`session`]: one task per WebSocket connection (auth, limits, parsing, writing).
//! - [`socket`]: a browser's WebSocket on the connection actix-http hands over at the upgrade,
//!   framed by actix-http's codec, read and written by its session's task alone.
//! - [`mesh`]: federation. `MeshActor` owns the peer links, forwards durable ops and relays
//!   cursors; `mesh::dial` redials `peers` with backoff, `mesh::listener` accepts peers,
//!   `mesh::handshake` authenticates them (challenge-response), `mesh::link` runs one link
//!   (flow-controlled reading, anti-entropy, paced writing), `mesh::shared` is the one checked path
//!   by which peer ops reach the state; `mesh::wire` is the peer protocol (upstream's `hello`/`op`
//!   plus ours), `mesh::transport` the sockets (actix-ws in, awc out), `mesh::presence` cursors
//!   across relays. `mesh::nats` is the other transport: a NATS JetStream stream instead of peer
//!   links (connection, position file, publisher/consumer/snapshot tasks), behind the same seam
//!   (`state::StateEvent` out, checked `RemoteOps` in).
//! - [`http`]: the one listener (built from actix-http's parts, so an upgraded WebSocket leaves
//!   it) and its routes (static files, WebSocket, `/healthz`, `/metrics`, the API).
//! - [`api`]: the HTTP API under `/api/v1/` for backends and operators (`api::auth`: the API key
//!   or a JWT; `api::rooms`: state, keys, durable writes through `state::ApiWrite`, disconnect,
//!   compact; `api::history`: a key's history and a room's past state from the ledger files;
//!   `api::feed`: a room's change feed as Server-Sent Events, a v2 member of the room).
//! - [`relay`]: boot (replay, start singletons), serve, graceful shutdown.
//! - [`commands`]: the offline subcommands (`compact`, `ledger state`, `ledger log`, `ledger rooms`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod api;
pub mod commands;
pub mod config;
pub mod digest;
pub mod hlc;
pub mod http;
pub mod json;
pub mod ledger;
pub mod limits;
pub mod lww;
pub mod mesh;
pub mod metrics;
pub mod outbox;
pub mod protocol;
pub mod proxy;
pub mod relay;
pub mod room;
pub mod session;
pub mod socket;
pub mod state;

pub use config::Config;
pub use relay::{Error, Relay, run};
