//! Federation with upstream's own `MeshNode` (Python Aether-Core 0.4.0), side by side with the
//! real relay binary.
//!
//! `tests/mesh.rs` checks our mesh against itself; these tests check that a real upstream node
//! (driven by `tests/upstream/mesh_peer.py` in the venv `tests/run.sh` makes) federates with us in
//! both directions: when it dials us and when we dial it, without a token and with one (upstream
//! can only send the token in its `hello`, so ours must have `token_in_hello`), that a wrong or
//! missing token is refused, that our state reaches it on connect (upstream itself has no
//! catch-up), and that our pacing keeps a burst of writes under upstream's per-peer rate limit,
//! which would otherwise close the link for good.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use common::{
    Client, Server,
    federation::{room_data, room_url},
    wait_until, wait_within,
};
use serde_json::{Map, Value, json};

/// Our node id in every test.
const OURS: &str = "rs";
/// The upstream node's id in every test.
const THEIRS: &str = "py";
/// Longest wait for one answer of the Python driver (a connect waits up to upstream's 5 s
/// handshake timeout).
const REPLY_WAIT: Duration = Duration::from_secs(30);

/// One upstream `MeshNode` in a `mesh_peer.py` process, killed on drop.
struct Upstream {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    port: u16,
}

impl Upstream {
    /// Starts node [`THEIRS`], requiring `token` from its peers (and presenting it) when given.
    fn start(token: Option<&str>) -> Upstream {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream/mesh_peer.py");
        let mut command = Command::new(common::upstream_python());
        command.arg(&script).args(["--node-id", THEIRS]);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}; run tests/run.sh", common::upstream_python().display()));
        let stdin = child.stdin.take().expect("stdin");
        let (tx, replies) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let mut pipe = child.stderr.take().expect("stderr");
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut node = Upstream { child, stdin, replies, stderr, port: 0 };
        let listening = node.reply();
        assert_eq!(listening["event"], "listening", "first line of mesh_peer.py: {listening}");
        node.port = listening["port"].as_u64().and_then(|p| u16::try_from(p).ok()).expect("port");
        node
    }

    /// Its peer listener.
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// What it logged so far.
    fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn reply(&mut self) -> Value {
        match self.replies.recv_timeout(REPLY_WAIT) {
            Ok(line) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("mesh_peer.py said {line:?}: {e}")),
            Err(e) => panic!("no answer from mesh_peer.py ({e}); its log:\n{}", self.log()),
        }
    }

    /// Sends one command; returns its answer.
    fn cmd(&mut self, cmd: Value) -> Value {
        writeln!(self.stdin, "{cmd}").and_then(|()| self.stdin.flush()).expect("write to mesh_peer.py");
        self.reply()
    }

    /// `connect_to` our peer listener; the raw answer.
    fn connect(&mut self, url: &str) -> Value {
        self.cmd(json!({"cmd": "connect", "url": url}))
    }

    /// A local write, gossiped to its peers.
    fn set(&mut self, key: &str, value: Value) {
        let reply = self.cmd(json!({"cmd": "set", "key": key, "value": value}));
        assert_eq!(reply, json!({"ok": true}), "set {key}");
    }

    /// Its live state and its connected peers.
    fn state(&mut self) -> (Map<String, Value>, Vec<String>) {
        let mut reply = self.cmd(json!({"cmd": "state"}));
        assert_eq!(reply["ok"], true, "state: {reply}");
        let state = reply["state"].as_object_mut().map(std::mem::take).expect("state object");
        let peers = reply["peers"].as_array().expect("peers").iter().map(|p| p.as_str().unwrap().to_owned()).collect();
        (state, peers)
    }

    /// Its value of `key`, if any.
    fn get(&mut self, key: &str) -> Option<Value> {
        self.state().0.remove(key)
    }

    fn peers(&mut self) -> Vec<String> {
        self.state().1
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `[mesh]` section for node [`OURS`] with a peer listener, plus `extra` keys.
fn mesh_config(extra: &str) -> String {
    format!("[mesh]\nnode_id = \"{OURS}\"\nbind = \"127.0.0.1:0\"\n{extra}\n")
}

/// `mesh_config` dialling `node`.
fn dialling(node: &Upstream, extra: &str) -> String {
    mesh_config(&format!("peers = [\"{}\"]\n{extra}", node.url()))
}

/// Peer `node` as our `/healthz` shows it.
fn health_of(server: &Server, node: &str) -> Option<Value> {
    server.healthz()["mesh"]["peers"].as_array()?.iter().find(|p| p["node"] == node).cloned()
}

/// Is our link to `node` up?
fn linked(server: &Server, node: &str) -> bool {
    health_of(server, node).is_some_and(|p| p["connected"] == true)
}

/// How many peers our `/healthz` shows connected.
fn connected_peers(server: &Server) -> usize {
    let health = server.healthz();
    let peers = health["mesh"]["peers"].as_array().expect("mesh.peers in /healthz");
    peers.iter().filter(|p| p["connected"] == true).count()
}

/// Once linked: upstream's write reaches a browser on our relay, and a browser write on our relay
/// reaches upstream. Keys are prefixed with `tag`.
fn assert_syncs_both_ways(server: &Server, node: &mut Upstream, tag: &str) {
    wait_until("our /healthz to show the upstream peer connected", || linked(server, THEIRS));
    wait_until("upstream to list our node as its peer", || node.peers() == [OURS]);
    let mut browser = server.client();

    let key = format!("{tag}/from-upstream");
    node.set(&key, json!({"n": 1, "s": "é"}));
    let frame = browser.recv_set(&key);
    assert_eq!(frame["value"], json!({"n": 1, "s": "é"}), "{frame}");

    let key = format!("{tag}/from-relay");
    browser.set(&key, json!(["x", 2, null, true]));
    wait_until("the browser's write to reach upstream", || node.get(&key).is_some());
    assert_eq!(node.get(&key), Some(json!(["x", 2, null, true])));
}

#[test]
fn upstream_dials_us_without_a_token() {
    let server = Server::start(&mesh_config(""));
    let mut node = Upstream::start(None);
    assert_eq!(node.connect(&server.mesh_url()), json!({"ok": true, "peer": OURS}));
    assert_syncs_both_ways(&server, &mut node, "plain-in");
    wait_until("one op counted each way", || {
        health_of(&server, THEIRS) == Some(json!({"node": THEIRS, "connected": true, "ops_in": 1, "ops_out": 1}))
    });
}

#[test]
fn we_dial_upstream_without_a_token_and_push_our_earlier_writes() {
    let mut node = Upstream::start(None);
    // A write made before any link: the relay runs without peers, then restarts dialling upstream.
    let server = Server::start(&mesh_config(""));
    let mut browser = server.client();
    browser.set("early", json!({"before": "link"}));
    browser.recv_set("early"); // echoed once durable
    let dir = Arc::clone(&server.dir);
    let (status, _) = server.terminate();
    assert!(status.success(), "{status}");
    assert_eq!(node.get("early"), None, "no link yet");

    let server = Server::start_in(dir, &dialling(&node, ""));
    wait_until("our earlier write to reach upstream on connect", || node.get("early").is_some());
    assert_eq!(node.get("early"), Some(json!({"before": "link"})));
    assert_syncs_both_ways(&server, &mut node, "plain-out");
    wait_until("the early write counted among the ops out", || {
        health_of(&server, THEIRS) == Some(json!({"node": THEIRS, "connected": true, "ops_in": 1, "ops_out": 2}))
    });
}

#[test]
fn a_token_works_both_ways_with_token_in_hello() {
    let token = "token = \"s3cret\"\ntoken_in_hello = true";
    // Upstream dials us.
    let server = Server::start(&mesh_config(token));
    let mut node = Upstream::start(Some("s3cret"));
    assert_eq!(node.connect(&server.mesh_url()), json!({"ok": true, "peer": OURS}));
    assert_syncs_both_ways(&server, &mut node, "token-in");
    drop((server, node));

    // We dial upstream.
    let mut node = Upstream::start(Some("s3cret"));
    let server = Server::start(&dialling(&node, token));
    assert_syncs_both_ways(&server, &mut node, "token-out");
}

/// Upstream (with `token`, if any) dials `server`, which refuses it; `why` is in our log.
fn assert_refused(server: &Server, token: Option<&str>, why: &str) {
    let mut node = Upstream::start(token);
    let reply = node.connect(&server.mesh_url());
    assert_eq!(reply["ok"], false, "{reply}");
    let error = reply["error"].as_str().expect("error");
    assert!(error.contains("1008") && error.contains("auth failed"), "upstream's error: {error}");
    wait_until("our log to say why", || server.log().contains(why));
    assert_eq!(node.peers(), Vec::<String>::new(), "upstream's peers");
    assert_eq!(connected_peers(server), 0, "{}", server.healthz());
}

#[test]
fn a_wrong_or_missing_token_is_refused() {
    let server = Server::start(&mesh_config("token = \"s3cret\"\ntoken_in_hello = true"));
    assert_refused(&server, Some("wrong"), &format!("{THEIRS} sent a wrong or no token"));
    assert_refused(&server, None, &format!("{THEIRS} sent a wrong or no token"));

    // Without token_in_hello, upstream cannot prove it holds the token at all.
    let server = Server::start(&mesh_config("token = \"s3cret\""));
    assert_refused(&server, Some("s3cret"), "accepting its token needs [mesh] token_in_hello");
}

#[test]
fn a_burst_of_writes_stays_under_upstreams_rate_limit() {
    const KEYS: usize = 1_000;
    let limits = "[limits]\nmessages_per_second = 100000.0\nmessages_burst = 100000\n";
    let server = Server::start(&format!("{}{limits}", mesh_config("")));
    let mut node = Upstream::start(None);
    assert_eq!(node.connect(&server.mesh_url()), json!({"ok": true, "peer": OURS}));
    wait_until("our /healthz to show the upstream peer connected", || linked(&server, THEIRS));

    let mut browser = server.client();
    let expected: Map<String, Value> = (0..KEYS).map(|i| (format!("burst/{i:04}"), json!(i))).collect();
    for (key, value) in &expected {
        browser.set(key, value.clone());
    }
    browser.recv_set(&format!("burst/{:04}", KEYS - 1));

    // Paced at 90% of upstream's 100 msg/s, this takes about 11 s. Upstream logs a trip at once,
    // but then lists the dead link among its peers for up to 30 s (its close handshake times out).
    wait_within(Duration::from_secs(60), "every write to reach upstream", || {
        assert!(!node.log().contains("exceeded rate budget"), "upstream closed our link; its log:\n{}", node.log());
        let (state, peers) = node.state();
        assert_eq!(peers, [OURS], "upstream dropped our link; its log:\n{}", node.log());
        state.len() == KEYS
    });
    assert_eq!(node.state(), (expected, vec![OURS.to_owned()]));
    assert_eq!(
        health_of(&server, THEIRS),
        Some(json!({"node": THEIRS, "connected": true, "ops_in": 0, "ops_out": KEYS}))
    );
}

/// Our state, ten times the peer queue bound, reaches a new upstream peer on connect in chunks
/// that wait for room (paced under its rate limit), while live writes keep coming: the link is
/// never closed as too slow, and upstream ends with every key.
#[test]
fn a_state_larger_than_the_peer_queue_reaches_upstream_on_connect() {
    const KEYS: usize = 600;
    const LIVE: usize = 20;
    let limits = "[limits]\nmessages_per_second = 100000.0\nmessages_burst = 100000\n";
    let server = Server::start(&format!("{}{limits}", mesh_config("max_peer_queue_bytes = 16384")));
    let mut browser = server.client();
    let value = "v".repeat(200);
    for i in 0..KEYS {
        browser.set(&format!("big/{i:04}"), json!(value));
    }
    browser.recv_set(&format!("big/{:04}", KEYS - 1));

    let mut node = Upstream::start(None);
    assert_eq!(node.connect(&server.mesh_url()), json!({"ok": true, "peer": OURS}));
    // Paced at 90 ops/s, the catch-up takes about 6 s: these writes land in the middle of it.
    for i in 0..LIVE {
        browser.set(&format!("live/{i}"), json!(i));
        browser.recv_set(&format!("live/{i}"));
    }
    wait_within(Duration::from_secs(60), "every key to reach upstream", || {
        assert!(!server.log().contains("closed:"), "our link closed:\n{}", server.log());
        assert!(!node.log().contains("exceeded rate budget"), "upstream closed our link:\n{}", node.log());
        let (state, peers) = node.state();
        assert_eq!(peers, [OURS], "upstream dropped our link; its log:\n{}", node.log());
        state.len() == KEYS + LIVE
    });
    assert_eq!(node.get(&format!("big/{:04}", KEYS - 1)), Some(json!(value)));
    // A write that became durable while the catch-up was read from the state travels twice.
    let health = health_of(&server, THEIRS).expect("peer in /healthz");
    assert_eq!(health["connected"], true);
    assert!((KEYS + LIVE..=KEYS + 2 * LIVE).contains(&(health["ops_out"].as_u64().unwrap() as usize)), "{health}");
}

/// Pings from a peer no longer count as hearing it (a peer that pings and never reads is
/// dropped), so an idle link lives on upstream's pongs to ours: it outlives the 20 s peer timeout.
#[test]
fn an_idle_link_to_upstream_outlives_the_peer_timeout() {
    let server = Server::start(&mesh_config(""));
    let mut node = Upstream::start(None);
    assert_eq!(node.connect(&server.mesh_url()), json!({"ok": true, "peer": OURS}));
    wait_until("linked", || linked(&server, THEIRS));
    thread::sleep(Duration::from_secs(25));
    assert!(linked(&server, THEIRS) && !server.log().contains("closed:"), "{}", server.log());
    assert_syncs_both_ways(&server, &mut node, "idle");
}

/// Rooms are ours: an upstream `MeshNode` federating with a relay that holds named rooms sees the
/// default room only (on connect and live), even where a room has the same key names, and its
/// writes land in the default room only.
#[test]
fn upstream_sees_only_the_default_room() {
    let server = Server::start(&mesh_config(""));
    let mut in_room = Client::connect(&room_url(&server, "board-1"));
    let mut browser = server.client();
    for (client, tag) in [(&mut in_room, "room"), (&mut browser, "default")] {
        for key in ["shared", &format!("only-{tag}")] {
            client.set(key, json!(tag));
            client.recv_set(key);
        }
    }
    let mut node = Upstream::start(None);
    assert_eq!(node.connect(&server.mesh_url()), json!({"ok": true, "peer": OURS}));
    wait_until("the default room to reach upstream on connect", || node.get("only-default").is_some());
    // Live: a room's write, then the default room's; once the latter is there, the former had
    // its chance (one link, in order).
    in_room.set("live-room", json!(1));
    in_room.recv_set("live-room");
    browser.set("live-default", json!(2));
    browser.recv_set("live-default");
    wait_until("the live default-room write to reach upstream", || node.get("live-default").is_some());
    let (state, _) = node.state();
    assert_eq!(Value::Object(state), json!({"shared": "default", "only-default": "default", "live-default": 2}));
    // Upstream's writes go to the default room, never into a named room.
    node.set("shared", json!("upstream"));
    assert_eq!(browser.recv_set("shared")["value"], "upstream");
    assert_eq!(room_data(&server, "board-1"), json!({"shared": "room", "only-room": "room", "live-room": 1}));
    wait_until("ops counted: 3 out (the default room's), 1 in", || {
        health_of(&server, THEIRS) == Some(json!({"node": THEIRS, "connected": true, "ops_in": 1, "ops_out": 3}))
    });
}
