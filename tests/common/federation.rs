//! Helpers for federation tests (WebSocket mesh and NATS): concurrent random writers, and the
//! check that every node ends with byte-identical state.

use std::{
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tungstenite::Message;

use super::{Client, Server};

/// Convergence of a few thousand writes across five debug-build nodes on a loaded 2-core machine.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// Config for a mesh node: fast redials, client limits out of the way of the test's writers.
pub fn node_toml(id: &str, bind: &str, peers: &[String], extra: &str) -> String {
    format!(
        "[mesh]\nnode_id = \"{id}\"\nbind = \"{bind}\"\npeers = {peers:?}\nredial_min_s = 0.05\nredial_max_s = 0.5\n{extra}\n\
         [limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n"
    )
}

/// A mesh node that dials `peers`.
pub fn node(id: &str, peers: &[&Server]) -> Server {
    let urls: Vec<String> = peers.iter().map(|p| p.mesh_url()).collect();
    Server::start(&node_toml(id, "127.0.0.1:0", &urls, ""))
}

/// Restarts a stopped node on its ledger and on the same peer port (its peers redial that).
pub fn restart(id: &str, dir: Arc<tempfile::TempDir>, mesh_port: u16, peers: &[&Server]) -> Server {
    let urls: Vec<String> = peers.iter().map(|p| p.mesh_url()).collect();
    Server::start_in(dir, &node_toml(id, &format!("127.0.0.1:{mesh_port}"), &urls, ""))
}

/// Writes `n` random sets and deletes over a keyspace of `keys` keys shared by every writer (so
/// writers conflict), then waits for the echo of a final marker: everything was accepted.
pub fn writer(server: &Server, seed: u64, n: usize, keys: u64) -> thread::JoinHandle<()> {
    let url = server.url();
    thread::spawn(move || {
        let mut client = Client::connect(&url);
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("k{}", x % keys);
            if x.is_multiple_of(7) {
                client.delete(&key);
            } else {
                client.set(&key, json!({"writer": seed, "i": i, "text": "é\u{1F600}"}));
            }
        }
        let marker = format!("done-{seed}");
        client.set(&marker, json!(n));
        client.recv_set(&marker);
    })
}

pub fn fingerprint(server: &Server) -> Option<(String, u64)> {
    let health = server.healthz();
    (health["pending_writes"] == 0)
        .then(|| (health["fingerprint"].as_str().unwrap_or("").to_owned(), health["registers"].as_u64().unwrap_or(0)))
}

/// The raw text of the v1 snapshot a new client receives.
pub fn snapshot_text(server: &Server) -> String {
    let mut ws = Client::raw(&server.url());
    let mut texts = Vec::new();
    while texts.len() < 2 {
        if let Message::Text(text) = ws.read().expect("frame") {
            texts.push(text.to_string());
        }
    }
    texts.pop().unwrap()
}

/// Waits until every node has the same state (with at least `min_registers` registers), then
/// checks that their snapshots are byte-identical. Returns the snapshot.
pub fn converged(nodes: &[&Server], min_registers: u64) -> Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let last = nodes.iter().map(|n| fingerprint(n)).collect::<Vec<_>>();
        let first = &last[0];
        if first.as_ref().is_some_and(|(_, r)| *r >= min_registers) && last.iter().all(|f| f == first) {
            break;
        }
        assert!(Instant::now() < deadline, "no convergence within {CONVERGE:?}: {last:?}");
        thread::sleep(Duration::from_millis(50));
    }
    let snapshots: Vec<String> = nodes.iter().map(|n| snapshot_text(n)).collect();
    assert!(snapshots.iter().all(|s| *s == snapshots[0]), "snapshots differ");
    serde_json::from_str(&snapshots[0]).unwrap()
}

/// Writes `n` sets of `prefix{i}` on `server` and waits for the last echo.
pub fn write_keys(server: &Server, prefix: &str, n: usize) {
    let mut client = Client::connect(&server.url());
    for i in 0..n {
        client.set(&format!("{prefix}{i}"), json!(i));
    }
    client.recv_set(&format!("{prefix}{}", n - 1));
}

/// Writes `n` sets of `prefix{i}` on `server` from another thread (done once the last echo came).
pub fn write_in_background(server: &Server, prefix: &str, n: usize) -> thread::JoinHandle<()> {
    let (url, prefix) = (server.url(), prefix.to_owned());
    thread::spawn(move || {
        let mut client = Client::connect(&url);
        for i in 0..n {
            client.set(&format!("{prefix}{i}"), json!(i));
        }
        client.recv_set(&format!("{prefix}{}", n - 1));
    })
}

/// The browsers' URL of `room` on `server` (the default room for `""`).
pub fn room_url(server: &Server, room: &str) -> String {
    if room.is_empty() { server.url() } else { format!("{}?room={room}", server.url()) }
}

/// The `data` of the v1 snapshot a new client of `room` receives (the default room for `""`).
pub fn room_data(server: &Server, room: &str) -> Value {
    Client::connect(&room_url(server, room)).snapshot["data"].take()
}

/// Writes `key{i}` = `"{tag}-{i}"` for `i < n` in `room` on `server` (the default room for `""`)
/// and waits for the last echo.
pub fn write_room(server: &Server, room: &str, key: &str, tag: &str, n: usize) {
    let mut client = Client::connect(&room_url(server, room));
    for i in 0..n {
        client.set(&format!("{key}{i}"), json!(format!("{tag}-{i}")));
    }
    client.recv_set(&format!("{key}{}", n - 1));
}
