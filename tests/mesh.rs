//! Federation: real relay processes on free loopback ports, linked into lines and rings, written
//! to concurrently, partitioned, killed and restarted; every test ends with every node holding
//! byte-identical state (same `/healthz` fingerprint, which covers keys, stamps, tombstones and
//! values, and the same v1 snapshot bytes).
//!
//! Interop with upstream's Python `MeshNode` is in `mesh_upstream.rs`.

mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    Client, Server,
    federation::{
        CONVERGE, converged, fingerprint, node, node_toml, restart, room_data, room_url, write_in_background,
        write_keys, write_room, writer,
    },
    free_port, make_certificate, metric, wait_within,
};
use serde_json::{Value, json};
use tungstenite::Message;

/// Random concurrent writes on every node of `nodes` (2,000 in all over 60 keys) converge.
fn concurrent_writes_converge(nodes: &[&Server]) {
    let per_node = 2000 / nodes.len();
    let writers: Vec<_> = nodes.iter().enumerate().map(|(i, n)| writer(n, i as u64 + 1, per_node, 60)).collect();
    for w in writers {
        w.join().expect("writer");
    }
    let snapshot = converged(nodes, 60);
    for i in 1..=nodes.len() {
        assert_eq!(snapshot["data"][format!("done-{i}")], json!(per_node), "every writer's marker everywhere");
    }
}

#[test]
fn three_node_ring_converges() {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    let c = node("c", &[&b, &a]);
    concurrent_writes_converge(&[&a, &b, &c]);
}

#[test]
fn three_node_line_converges() {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    let c = node("c", &[&b]);
    concurrent_writes_converge(&[&a, &b, &c]);
}

#[test]
fn five_node_line_converges() {
    let mut nodes: Vec<Server> = vec![node("n0", &[])];
    for i in 1..5 {
        let next = node(&format!("n{i}"), &[&nodes[i - 1]]);
        nodes.push(next);
    }
    concurrent_writes_converge(&nodes.iter().collect::<Vec<_>>());
}

#[test]
fn five_node_ring_converges() {
    let mut nodes: Vec<Server> = vec![node("n0", &[])];
    for i in 1..5 {
        let peers: Vec<&Server> = if i == 4 { vec![&nodes[3], &nodes[0]] } else { vec![&nodes[i - 1]] };
        let next = node(&format!("n{i}"), &peers);
        nodes.push(next);
    }
    concurrent_writes_converge(&nodes.iter().collect::<Vec<_>>());
}

#[test]
fn partition_heals_and_a_killed_node_catches_up_from_its_ledger() {
    // Line a - b - c: b is the only path between a and c.
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    let c = node("c", &[&b]);
    write_keys(&a, "before-", 50);
    converged(&[&a, &b, &c], 50);

    // Partition: b stops; both sides keep writing, on their own keys and on one contested key.
    let (b_port, b_dir) = (b.mesh.unwrap().port(), Arc::clone(&b.dir));
    let (status, _) = b.terminate();
    assert!(status.success());
    write_keys(&a, "a-side-", 100);
    write_keys(&c, "c-side-", 100);
    let mut on_a = a.client();
    on_a.set("contested", json!("from a"));
    on_a.recv_set("contested");
    let mut on_c = c.client();
    on_c.set("contested", json!("from c, later"));
    on_c.recv_set("contested");
    assert_eq!(fingerprint(&a).unwrap().1, 151);
    assert_eq!(fingerprint(&c).unwrap().1, 151);

    // Heal: b comes back on its ledger; a and c were never linked to each other.
    let b = restart("b", b_dir, b_port, &[&a]);
    let snapshot = converged(&[&a, &b, &c], 251);
    assert_eq!(snapshot["data"]["contested"], "from c, later", "the later write wins everywhere");
    assert_eq!(snapshot["data"]["a-side-99"], 99);
    assert_eq!(snapshot["data"]["c-side-99"], 99);

    // kill -9 c in the middle of a stream of writes on a; restart it from its ledger.
    const STREAM: usize = 20_000;
    let stream = write_in_background(&a, "stream-", STREAM);
    wait_within(CONVERGE, "c to receive part of the stream", || {
        c.healthz()["registers"].as_u64().unwrap_or(0) > 251 + 300
    });
    assert!(!stream.is_finished(), "c is killed while a is still writing");
    let c_port = c.mesh.unwrap().port();
    let c_dir = c.kill9();
    let c = restart("c", c_dir, c_port, &[&b]);
    stream.join().unwrap();
    let snapshot = converged(&[&a, &b, &c], 251 + STREAM as u64);
    assert_eq!(snapshot["data"][format!("stream-{}", STREAM - 1)], STREAM - 1);
}

/// Mesh links as `/healthz` lists them: (peer, connected).
fn peers(server: &Server) -> Vec<(String, bool)> {
    let health = server.healthz();
    health["mesh"]["peers"]
        .as_array()
        .map(|peers| peers.iter().map(|p| (p["node"].as_str().unwrap().to_owned(), p["connected"] == true)).collect())
        .unwrap_or_default()
}

fn connected(server: &Server) -> Vec<String> {
    peers(server).into_iter().filter(|(_, up)| *up).map(|(node, _)| node).collect()
}

#[test]
fn a_burst_of_10000_writes_reaches_every_node_with_the_links_intact() {
    let (a, b, c) = line_of_three();
    // One write through the line first: by the time it has reached c, the digest exchanges of
    // both links are over (an op written meanwhile may travel twice, once as anti-entropy).
    write_keys(&a, "warm-", 1);
    converged(&[&a, &b, &c], 1);
    let (b_in, c_in) = (r#"aether_mesh_ops_in_total{peer="a"}"#, r#"aether_mesh_ops_in_total{peer="b"}"#);
    let (b_before, c_before) = (metric(&b, b_in), metric(&c, c_in));
    write_keys(&a, "burst-", 10_000);
    converged(&[&a, &b, &c], 10_001);
    for (server, links) in [(&a, 1), (&b, 2), (&c, 1)] {
        assert_eq!(connected(server).len(), links, "{:?}", peers(server));
        assert!(!server.log().contains("closed:"), "a link dropped:\n{}", server.log());
    }
    assert_eq!(metric(&c, "aether_mesh_redials_total"), 0.0);
    // Each of the 10,000 crossed each link exactly once.
    assert_eq!(metric(&b, b_in) - b_before, 10_000.0);
    assert_eq!(metric(&c, c_in) - c_before, 10_000.0);
}

#[test]
fn simultaneous_mutual_dials_settle_on_one_link() {
    let (pa, pb) = (free_port(), free_port());
    let a = Server::start(&node_toml("a", &format!("127.0.0.1:{pa}"), &[format!("ws://127.0.0.1:{pb}")], ""));
    let b = Server::start(&node_toml("b", &format!("127.0.0.1:{pb}"), &[format!("ws://127.0.0.1:{pa}")], ""));
    wait_within(CONVERGE, "one link each way", || connected(&a) == ["b"] && connected(&b) == ["a"]);
    write_keys(&a, "from-a-", 100);
    write_keys(&b, "from-b-", 100);
    converged(&[&a, &b], 200);
    // Settled: both still linked, by the link b... whichever survived, exactly once.
    assert_eq!((connected(&a), connected(&b)), (vec!["b".to_owned()], vec!["a".to_owned()]));
}

#[test]
fn duplicate_node_ids_are_refused_loudly() {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    wait_within(CONVERGE, "b linked", || connected(&a) == ["b"]);
    let impostor = node("b", &[&a]);
    wait_within(CONVERGE, "refusal logged", || a.log().contains("claims node id \"b\""));
    wait_within(CONVERGE, "refusal seen by the impostor", || impostor.log().contains("4410"));
    let own = node("a", &[&a]);
    wait_within(CONVERGE, "own id refused", || a.log().contains("claims our own node id \"a\""));
    // The original link carries on.
    write_keys(&b, "still-", 10);
    converged(&[&a, &b], 10);
    assert_eq!(connected(&a), ["b"]);
    drop((impostor, own));
}

/// Nodes a - b - c (b dials a, c dials b), once both links are up.
fn line_of_three() -> (Server, Server, Server) {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    let c = node("c", &[&b]);
    wait_within(CONVERGE, "links up", || connected(&b).len() == 2);
    (a, b, c)
}

#[test]
fn cursors_cross_nodes_and_leave_with_their_node() {
    let (a, b, c) = line_of_three();
    let mut on_a = a.client();
    let mut on_c = c.client();
    on_a.send(json!({"type": "presence", "x": 10, "y": 20}));
    let seen = on_c.recv_until(|f| f["type"] == "presence");
    assert_eq!(seen, json!({"type": "presence", "id": on_a.id(), "color": on_a.hello["color"], "x": 10, "y": 20}));
    // A client leaving: its cursor leaves on the other nodes.
    let gone = on_a.id();
    drop(on_a);
    let leave = on_c.recv_until(|f| f["type"] == "presence-leave");
    assert_eq!(leave, json!({"type": "presence-leave", "id": gone}));
    // A node going away: its clients' cursors leave too (b sees the link drop at once).
    let mut on_a = a.client();
    on_a.send(json!({"type": "presence", "x": 1, "y": 2}));
    on_c.recv_until(|f| f["type"] == "presence" && f["id"] == on_a.id());
    let mut on_b = b.client();
    let id = on_a.id();
    let started = Instant::now();
    drop(a.kill9());
    let leave = on_b.recv_until(|f| f["type"] == "presence-leave");
    assert_eq!(leave["id"], id);
    let leave = on_c.recv_until(|f| f["type"] == "presence-leave");
    assert_eq!(leave["id"], id);
    assert!(started.elapsed() < Duration::from_secs(5), "left after {:?}", started.elapsed());
}

/// v2 tab cursors travel the mesh as cursors of their own (`<id>:<tab>`), and their leaves too:
/// a tab's `presence-leave`, and its connection's end (each tab once, besides the connection's own).
#[test]
fn tab_cursors_cross_nodes_and_leave_there_too() {
    let (a, _b, c) = line_of_three();
    let mut leader = Client::connect(&format!("{}?v=2", a.url()));
    let mut on_c = c.client();
    let id = leader.id();
    for t in ["one", "two", "three"] {
        leader.send(json!({"type": "presence", "x": 1, "y": 2, "tab": t}));
    }
    let mut shown = std::collections::BTreeSet::new();
    while shown.len() < 3 {
        let seen = on_c.recv_until(|f| f["type"] == "presence");
        shown.insert(seen["id"].as_str().unwrap().to_owned());
    }
    let tab = |t: &str| format!("{id}:{t}");
    assert_eq!(shown, [tab("one"), tab("two"), tab("three")].into());
    leader.send(json!({"type": "presence-leave", "tab": "two"}));
    assert_eq!(on_c.recv_until(|f| f["type"] == "presence-leave"), json!({"type": "presence-leave", "id": tab("two")}));
    leader.send(json!({"type": "presence", "x": 3, "y": 3}));
    on_c.recv_until(|f| f["type"] == "presence" && f["id"] == id);
    drop(leader);
    let mut left = std::collections::BTreeSet::new();
    while left.len() < 3 {
        let leave = on_c.recv_until(|f| f["type"] == "presence-leave");
        assert!(left.insert(leave["id"].as_str().unwrap().to_owned()), "twice: {leave}");
    }
    assert_eq!(left, [id.clone(), tab("one"), tab("three")].into());
}

/// Opens a raw peer connection to `server`'s mesh listener and sends `hello`.
fn fake_peer(server: &Server, hello: Value) -> tungstenite::WebSocket<TcpStream> {
    let mut ws = Client::raw(&server.mesh_url());
    ws.send(Message::text(hello.to_string())).unwrap();
    ws
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn op_frame(key: &str, value: Value, p: u64) -> Message {
    Message::text(json!({"type": "op", "op": {"kind": "set", "key": key, "value": value, "stamp": {"p": p, "l": 0, "n": "evil"}}}).to_string())
}

#[test]
fn ops_from_peers_are_checked_and_only_winners_are_kept() {
    let a = node("a", &[]);
    let mut browser = a.client();
    let mut peer = fake_peer(&a, json!({"type": "hello", "node_id": "evil"}));
    let reply = common::recv_json(&mut peer);
    assert_eq!(reply, json!({"type": "hello", "node_id": "a"}), "upstream-style reply, no token");
    let now = now_ns();
    peer.send(op_frame("future", json!(1), now + 3_600_000_000_000)).unwrap();
    peer.send(op_frame(&"k".repeat(257), json!(1), now)).unwrap();
    peer.send(op_frame("big", json!("v".repeat(40_000)), now)).unwrap();
    peer.send(op_frame("k", json!("first"), now)).unwrap();
    assert_eq!(browser.recv(), json!({"type": "set", "key": "k", "value": "first"}));
    // An older write for the same key loses: not shown, not stored.
    peer.send(op_frame("k", json!("older"), now - 1_000_000_000)).unwrap();
    // A flood does not kill the link (upstream closed it with 1008 past 200 messages).
    for i in 0..5000 {
        peer.send(op_frame(&format!("flood-{i}"), json!(i), now)).unwrap();
    }
    let frame = browser.recv();
    assert_eq!(frame, json!({"type": "set", "key": "flood-0", "value": 0}), "the loser was never broadcast");
    wait_within(CONVERGE, "the flood applied", || a.healthz()["registers"] == 5001);
    assert_eq!(connected(&a), ["evil"]);
    assert_eq!(metric(&a, "aether_mesh_ops_refused_total{reason=\"clock_drift\"}"), 1.0);
    assert_eq!(metric(&a, "aether_mesh_ops_refused_total{reason=\"bad_key\"}"), 1.0);
    assert_eq!(metric(&a, "aether_mesh_ops_refused_total{reason=\"bad_value\"}"), 1.0);
    assert_eq!(metric(&a, "aether_mesh_ops_stale_total"), 1.0);
    let ledger = std::fs::read_to_string(a.ledger_path()).unwrap();
    assert_eq!(ledger.lines().count(), 5001, "only winners reach the ledger");
    assert!(!ledger.contains("older"));
}

#[test]
fn peers_prove_the_token_without_ever_sending_it() {
    let secret = "[mesh]\ntoken = \"s3cret\"\n";
    let with = |extra: &str| extra.replace("[mesh]\n", "");
    let a = Server::start(&node_toml("a", "127.0.0.1:0", &[], &with(secret)));
    let b = Server::start(&node_toml("b", "127.0.0.1:0", &[a.mesh_url()], &with(secret)));
    let wrong = Server::start(&node_toml("w", "127.0.0.1:0", &[a.mesh_url()], "token = \"guess\""));
    let none = Server::start(&node_toml("n", "127.0.0.1:0", &[a.mesh_url()], ""));
    wait_within(CONVERGE, "b linked", || connected(&a) == ["b"]);
    wait_within(CONVERGE, "wrong token refused", || wrong.log().contains("did not prove it holds the mesh token"));
    wait_within(CONVERGE, "no token refused", || {
        none.log().contains("requires the mesh token and this relay has none")
    });
    write_keys(&b, "k", 5);
    converged(&[&a, &b], 5);
    assert_eq!(connected(&a), ["b"]);
    assert!(connected(&wrong).is_empty() && connected(&none).is_empty());

    // A listener that does not hold the token learns nothing: the dialler's hello carries only
    // a nonce, and a bad proof in the reply makes it hang up with 1008.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", fake.local_addr().unwrap());
    let dialler = Server::start(&node_toml("d", "127.0.0.1:0", &[url], &with(secret)));
    let (tcp, _) = fake.accept().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ws = tungstenite::accept(tcp).unwrap();
    let hello = common::recv_json(&mut ws);
    assert!(!hello.to_string().contains("s3cret") && hello.get("auth_token").is_none(), "{hello}");
    assert_eq!(hello["node_id"], "d");
    assert!(hello["aether"]["nonce"].as_str().is_some_and(|n| n.len() >= 32));
    let bogus =
        json!({"type": "hello", "node_id": "x", "aether": {"v": 1, "instance": "i", "nonce": "n", "proof": "00"}});
    ws.send(Message::text(bogus.to_string())).unwrap();
    match common::wait_closed(&mut ws) {
        common::Closed::Frame(code, reason) => assert_eq!((code, reason.as_str()), (1008, "auth failed")),
        other => panic!("expected 1008, got {other:?}"),
    }
    drop(dialler);
}

#[test]
fn tls_federation_verifies_the_peer_against_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(certs.path());
    let tls = format!("[mesh.tls]\ncert = {cert:?}\nkey = {key:?}\n");
    let a = Server::start(&node_toml("a", "127.0.0.1:0", &[], &tls));
    assert!(a.log().contains("mesh listening on wss://"), "{}", a.log());
    let url = format!("wss://127.0.0.1:{}", a.mesh.unwrap().port());
    let b = Server::start(&node_toml(
        "b",
        "127.0.0.1:0",
        std::slice::from_ref(&url),
        &format!("[mesh.tls]\nca = {cert:?}\n"),
    ));
    let untrusting = Server::start(&node_toml("u", "127.0.0.1:0", &[url], ""));
    wait_within(CONVERGE, "b linked over TLS", || connected(&a) == ["b"]);
    write_keys(&a, "secret-", 20);
    write_keys(&b, "other-", 20);
    converged(&[&a, &b], 40);
    wait_within(CONVERGE, "the unverified dial failing", || untrusting.log().contains("cannot link to wss://"));
    assert_eq!(connected(&a), ["b"]);
    // Plain WebSocket to a TLS listener gets nowhere.
    let mut tcp = TcpStream::connect(a.mesh.unwrap()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains("101"));
}

#[test]
fn cursors_leave_when_the_relay_between_goes_away() {
    let (a, b, c) = line_of_three();
    let mut on_a = a.client();
    let mut on_c = c.client();
    on_c.send(json!({"type": "presence", "x": 5, "y": 6}));
    on_a.recv_until(|f| f["type"] == "presence" && f["id"] == on_c.id());
    let started = Instant::now();
    drop(b.kill9());
    let leave = on_a.recv_until(|f| f["type"] == "presence-leave");
    assert_eq!(leave["id"], on_c.id(), "c's cursor, which came by way of b");
    assert!(started.elapsed() < Duration::from_secs(5), "left after {:?}", started.elapsed());
}

#[test]
fn anti_entropy_sends_only_the_buckets_that_differ() {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    write_keys(&a, "shared-", 4000);
    converged(&[&a, &b], 4000);
    let (b_port, b_dir) = (b.mesh.unwrap().port(), Arc::clone(&b.dir));
    assert!(b.terminate().0.success());
    let sent_before = metric(&a, "aether_mesh_ops_out_total{peer=\"b\"}");
    write_keys(&a, "missed-", 5);
    let b = restart("b", b_dir, b_port, &[&a]);
    let snapshot = converged(&[&a, &b], 4005);
    assert_eq!(snapshot["data"]["missed-4"], 4);
    // 5 missed keys fall in at most 5 of 4,096 buckets (about one key each at this size): far
    // from the 4,005 registers a full exchange would send.
    let sent = metric(&a, "aether_mesh_ops_out_total{peer=\"b\"}") - sent_before;
    assert!((5.0..100.0).contains(&sent), "a sent {sent} ops to catch b up");
}

/// Writes `n` sets of `prefix{i}`, each a string of `size` bytes, and waits for the last echo.
fn write_sized_keys(server: &Server, prefix: &str, n: usize, size: usize) {
    let mut client = Client::connect(&server.url());
    let value = "v".repeat(size);
    for i in 0..n {
        client.set(&format!("{prefix}{i}"), json!(value));
    }
    client.recv_set(&format!("{prefix}{}", n - 1));
}

/// A node whose state is 30 times its peer queue bound catches a new peer up in chunks that wait
/// for room, while live writes keep flowing to that peer: one link, no redial, same state. (The
/// bound stays above a digest frame, up to 86 KB, which cannot be cut.)
#[test]
fn a_state_larger_than_the_peer_queue_converges_without_redialling() {
    const QUEUE: &str = "max_peer_queue_bytes = 131072";
    let a = Server::start(&node_toml("a", "127.0.0.1:0", &[], QUEUE));
    write_sized_keys(&a, "big-", 4000, 1000);
    let b = Server::start(&node_toml("b", "127.0.0.1:0", &[a.mesh_url()], QUEUE));
    // Live writes on a, one at a time, for as long as b is catching up (and a little after).
    let mut live = a.client();
    let mut written = 0;
    let started = Instant::now();
    while written < 20 || b.healthz()["registers"].as_u64().unwrap_or(0) < 4000 {
        assert!(started.elapsed() < CONVERGE, "b never caught up: {}", b.healthz());
        live.set(&format!("live-{written}"), json!(written));
        live.recv_set(&format!("live-{written}"));
        written += 1;
    }
    converged(&[&a, &b], 4000 + written);
    for server in [&a, &b] {
        assert!(!server.log().contains("closed:"), "a link dropped:\n{}", server.log());
    }
    assert_eq!(metric(&b, "aether_mesh_redials_total"), 0.0);
    assert_eq!((connected(&a), connected(&b)), (vec!["b".to_owned()], vec!["a".to_owned()]));
}

/// A digest of the wrong length is ignored and counted (`bad_digest`), never answered with a
/// full dump; the link stays, and the next well-formed digest gets only what differs.
#[test]
fn a_digest_of_the_wrong_length_is_ignored_and_counted() {
    let a = node("a", &[]);
    write_keys(&a, "k", 10);
    let caps = json!({"v": 1, "instance": "fake", "nonce": "n"});
    let mut peer = fake_peer(&a, json!({"type": "hello", "node_id": "p", "aether": caps}));
    let hello = common::recv_json(&mut peer);
    assert_eq!((hello["type"].as_str(), hello["node_id"].as_str()), (Some("hello"), Some("a")), "{hello}");
    let digest = common::recv_json(&mut peer);
    assert_eq!(digest["type"], "digest", "{digest}");
    let mut buckets: Vec<u64> = digest["buckets"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect();
    let send = |peer: &mut tungstenite::WebSocket<TcpStream>, buckets: &[u64]| {
        peer.send(Message::text(json!({"type": "digest", "buckets": buckets}).to_string())).unwrap();
    };
    send(&mut peer, &buckets[..3]);
    send(&mut peer, &[]);
    // Ours again, but for one bucket that holds a key: only that bucket's keys come back.
    let one = buckets.iter().position(|b| *b != 0).unwrap();
    buckets[one] = 0;
    send(&mut peer, &buckets);
    let sync = common::recv_json(&mut peer);
    assert_eq!(sync["type"], "sync", "{sync}");
    let keys = sync["ops"].as_array().unwrap().len();
    assert!((1..10).contains(&keys), "{keys} ops sent back, not the 10 of a full dump: {sync}");
    wait_within(CONVERGE, "both counted", || metric(&a, "aether_mesh_ops_refused_total{reason=\"bad_digest\"}") == 2.0);
    assert_eq!(connected(&a), ["p"]);
}

/// Pings no longer count as hearing a peer; an idle link between two of ours lives on the pongs
/// each answers to the other's pings, past the 20 s peer timeout.
#[test]
fn an_idle_link_outlives_the_peer_timeout() {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    wait_within(CONVERGE, "linked", || connected(&a) == ["b"]);
    std::thread::sleep(Duration::from_secs(25));
    for server in [&a, &b] {
        assert!(!server.log().contains("closed:"), "a link dropped:\n{}", server.log());
    }
    write_keys(&a, "after-", 5);
    converged(&[&a, &b], 5);
}

/// The rooms the room tests write in; `""` is the default room.
const ROOMS: [&str; 4] = ["", "r1", "r2", "board:42"];

/// Rooms replicate and stay apart: a partition with writes in three rooms and the default room on
/// both sides (the same key names in each room, other values) heals into every room on every node
/// holding both sides' writes of that room and nothing of another.
#[test]
fn rooms_converge_after_a_partition_each_in_its_own_room() {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    let c = node("c", &[&b]);
    wait_within(CONVERGE, "links up", || connected(&b).len() == 2);
    // Live: a write in r1 on a reaches r1's members on c, two hops away.
    let mut on_c = Client::connect(&room_url(&c, "r1"));
    write_room(&a, "r1", "live-", "a", 1);
    assert_eq!(on_c.recv_set("live-0")["value"], "a-0");
    drop(on_c);

    // Partition: b stops; a and c write in every room, same keys, their own values, plus keys of
    // their own; one contested key per room, c's write later.
    let (b_port, b_dir) = (b.mesh.unwrap().port(), Arc::clone(&b.dir));
    let (status, _) = b.terminate();
    assert!(status.success());
    for room in ROOMS {
        write_room(&a, room, "k", &format!("a{room}"), 20);
        write_room(&a, room, "a-only-", &format!("a{room}"), 5);
        write_room(&c, room, "c-only-", &format!("c{room}"), 5);
        write_room(&a, room, "contested", &format!("a{room}"), 1);
        write_room(&c, room, "contested", &format!("c{room}"), 1);
    }
    // Default room: 1 + 20 + 5 + 1 registers on a; each named room as many (r1 has live-0 too).
    assert_eq!(fingerprint(&a).unwrap().1, 4 * 26 + 1);
    assert_eq!(fingerprint(&c).unwrap().1, 4 * 6 + 1);

    let b = restart("b", b_dir, b_port, &[&a]);
    // One fingerprint covers every room: equal means every room is equal.
    converged(&[&a, &b, &c], 4 * 31 + 1);
    for room in ROOMS {
        let data: Vec<Value> = [&a, &b, &c].iter().map(|n| room_data(n, room)).collect();
        assert!(data.iter().all(|d| *d == data[0]), "room {room:?} differs: {data:?}");
        let data = data[0].as_object().unwrap();
        assert_eq!(data.len(), if room == "r1" { 32 } else { 31 }, "room {room:?}: {data:?}");
        assert_eq!(data["k19"], format!("a{room}-19"));
        assert_eq!(data["a-only-4"], format!("a{room}-4"));
        assert_eq!(data["c-only-4"], format!("c{room}-4"));
        assert_eq!(data["contested0"], format!("c{room}-0"), "the later write wins, in its room");
    }
}

/// A cursor in room r1 on one relay is seen by r1's members on the other relay and by nobody in
/// r2 or the default room; so are leaves.
#[test]
fn cursors_stay_in_their_room_across_nodes() {
    let a = node("a", &[]);
    let b = node("b", &[&a]);
    wait_within(CONVERGE, "link up", || connected(&b).len() == 1);
    let mut watchers: Vec<Client> = ["r1", "r2", ""].iter().map(|r| Client::connect(&room_url(&b, r))).collect();
    let mut movers: Vec<Client> = ["r1", "r2", ""].iter().map(|r| Client::connect(&room_url(&a, r))).collect();
    // Each mover moves in turn, once the one before was seen: a watcher shown another room's
    // cursor would read it before its own room's (and the first presence it reads is checked).
    for (i, mover) in movers.iter_mut().enumerate() {
        mover.send(json!({"type": "presence", "x": i, "y": 7}));
        let seen = watchers[i].recv_until(|f| f["type"] == "presence");
        assert_eq!(seen, json!({"type": "presence", "id": mover.id(), "color": mover.hello["color"], "x": i, "y": 7}));
    }
    // Leaves: the r1 mover first; the r2 watcher's first leave is its own room's.
    let ids: Vec<String> = movers.iter().map(Client::id).collect();
    for (i, mover) in movers.into_iter().enumerate() {
        drop(mover);
        let leave = watchers[i].recv_until(|f| f["type"] == "presence-leave");
        assert_eq!(leave, json!({"type": "presence-leave", "id": ids[i]}), "room #{i}");
    }
}

/// An upstream-kind peer (its hello has no `aether`) gets the default room only, on connect and
/// as writes happen, and a named room's op or cursor from it is refused and counted, the link up.
#[test]
fn an_upstream_peer_gets_the_default_room_only_and_cannot_write_a_named_one() {
    let a = node("a", &[]);
    write_room(&a, "r1", "k", "room", 3);
    write_room(&a, "", "k", "default", 3);
    let mut peer = fake_peer(&a, json!({"type": "hello", "node_id": "py"}));
    assert_eq!(common::recv_json(&mut peer)["type"], "hello");
    let mut got = Vec::new();
    while got.len() < 3 {
        let frame = common::recv_json(&mut peer);
        assert_eq!(frame["type"], "op", "{frame}");
        got.push(frame["op"].clone());
    }
    // Live: a named room's write, then the default room's; only the latter comes.
    write_room(&a, "r1", "live", "room", 1);
    write_room(&a, "", "live", "default", 1);
    got.push(common::recv_json(&mut peer)["op"].clone());
    for op in &got {
        assert!(op.get("room").is_none() && op["kind"] == "set", "{op}");
        assert!(op["value"].as_str().unwrap().starts_with("default-"), "{op}");
    }
    assert_eq!(got.last().unwrap()["key"], "live0");
    // It tries to write into r1, and to show a cursor there: refused; then a default-room write,
    // which arrives after both (one link, read in order).
    let now = now_ns();
    let room_op =
        json!({"room": "r1", "op": "set", "key": "k0", "value": "forged", "stamp": {"p": now, "l": 0, "n": "py"}});
    peer.send(Message::text(json!({"type": "op", "op": room_op}).to_string())).unwrap();
    peer.send(Message::text(json!({"type": "ops", "ops": [room_op]}).to_string())).unwrap();
    let cursor =
        json!({"type": "presence", "origin": "py", "seq": 1, "id": "x", "color": "c", "x": 1, "y": 1, "room": "r1"});
    peer.send(Message::text(cursor.to_string())).unwrap();
    let mut browser = a.client();
    peer.send(op_frame("after", json!(1), now)).unwrap();
    browser.recv_set("after");
    assert_eq!(metric(&a, "aether_mesh_ops_refused_total{reason=\"room\"}"), 3.0);
    assert_eq!(room_data(&a, "r1"), json!({"k0": "room-0", "k1": "room-1", "k2": "room-2", "live0": "room-0"}));
    assert_eq!(connected(&a), ["py"]);
    let ledger = std::fs::read_to_string(a.ledger_path()).unwrap();
    assert!(!ledger.contains("forged"), "{ledger}");
}
