//! Findings of the review of the state path (issue 16), each reproduced with clients that are not
//! ours (tungstenite browsers and a raw tungstenite peer) against the real binary: cursors of tabs
//! that vanish always leave, a peer cannot wrap the clock, cursors are coalesced so they cannot
//! crowd out writes.

mod common;

use std::{
    collections::HashSet,
    net::Shutdown,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use common::{Client, Server, metric, wait_within};
use serde_json::{Value, json};
use tungstenite::Message;

/// Client limits out of the way of a cursor that moves as fast as it can.
const FAST: &str =
    "[limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\nmax_connections_per_source = 1000\n";

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Collects the ids of `presence-leave` frames `client` reads until `want` are all seen (or the
/// wait runs out); presence frames of ids that already left are returned as ghosts.
fn leaves(client: &mut Client, want: &HashSet<String>, wait: Duration) -> (HashSet<String>, Vec<String>) {
    let (mut left, mut ghosts) = (HashSet::new(), Vec::new());
    let deadline = Instant::now() + wait;
    while !want.is_subset(&left) && Instant::now() < deadline {
        let Some(frame) = client.next_within(Duration::from_millis(200)) else { continue };
        let id = frame["id"].as_str().unwrap_or_default().to_owned();
        match frame["type"].as_str() {
            Some("presence-leave") => {
                left.insert(id);
            }
            Some("presence") if left.contains(&id) => ghosts.push(id),
            _ => {}
        }
    }
    (left, ghosts)
}

/// Finding 1: with one tab moving its cursor continuously, every tab that vanishes (TCP dropped,
/// no Close) produces exactly one `presence-leave`, on its own relay and on a federated one.
#[test]
fn every_vanished_tab_leaves_once_locally_and_across_relays() {
    let a = Server::start(&format!("[mesh]\nnode_id = \"a\"\nbind = \"127.0.0.1:0\"\n{FAST}"));
    let b =
        Server::start(&format!("[mesh]\nnode_id = \"b\"\npeers = [{:?}]\nredial_min_s = 0.05\n{FAST}", a.mesh_url()));
    wait_within(common::WAIT, "b linked to a", || b.healthz()["mesh"]["peers"][0]["connected"] == true);
    let mut on_a = a.client();
    let mut on_b = b.client();
    let mut tabs: Vec<Client> = (0..40).map(|_| a.client()).collect();
    for (i, tab) in tabs.iter_mut().enumerate() {
        tab.send(json!({"type": "presence", "x": i, "y": i}));
    }
    let ids: HashSet<String> = tabs.iter().map(Client::id).collect();
    // Every tab's cursor is shown on b first (a relay passes on leaves for the cursors it showed).
    let mut shown = HashSet::new();
    on_b.recv_until(|f| {
        shown.extend(f["id"].as_str().filter(|_| f["type"] == "presence").map(str::to_owned));
        ids.is_subset(&shown)
    });

    let moving = Arc::new(AtomicBool::new(true));
    let mut mover = a.client();
    let mover_thread = {
        let moving = Arc::clone(&moving);
        thread::spawn(move || {
            let mut x = 0;
            while moving.load(Ordering::Relaxed) {
                x += 1;
                mover.send(json!({"type": "presence", "x": x, "y": 0}));
                if x % 64 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    for tab in tabs.drain(..) {
        tab.ws.get_ref().shutdown(Shutdown::Both).unwrap();
    }
    let (left_a, ghosts_a) = leaves(&mut on_a, &ids, Duration::from_secs(10));
    let (left_b, ghosts_b) = leaves(&mut on_b, &ids, Duration::from_secs(10));
    moving.store(false, Ordering::Relaxed);
    mover_thread.join().unwrap();
    assert_eq!(ids.difference(&left_a).count(), 0, "tabs that never left on their own relay");
    assert_eq!(ids.difference(&left_b).count(), 0, "tabs that never left on the federated relay");
    assert!(ghosts_a.is_empty() && ghosts_b.is_empty(), "cursors after their leave: {ghosts_a:?} {ghosts_b:?}");
    // Exactly once: nothing more about them arrives.
    let again = on_a.next_within(Duration::from_millis(300));
    assert!(again.is_none_or(|f| f["type"] != "presence-leave" || !ids.contains(f["id"].as_str().unwrap())));
    wait_within(common::WAIT, "a counts its one client left", || a.healthz()["clients"] == 1);
}

/// Finding 2: a peer op stamped ahead with the logical counter at its end cannot wrap our clock:
/// a counter past the bound is refused; one at the bound is taken, and the next local write still
/// orders after it, wins, and is what every tab and a fresh snapshot show.
#[test]
fn a_peer_cannot_wrap_the_clock() {
    let a = Server::start(&format!("[mesh]\nnode_id = \"a\"\nbind = \"127.0.0.1:0\"\n{FAST}"));
    let mut tab = a.client();
    let mut peer = Client::raw(&a.mesh_url());
    peer.send(Message::text(json!({"type": "hello", "node_id": "evil"}).to_string())).unwrap();
    common::recv_json(&mut peer);
    let op = |value: &str, l: u64| {
        let stamp = json!({"p": now_ns() + 5_000_000_000, "l": l, "n": "evil"});
        Message::text(
            json!({"type": "op", "op": {"kind": "set", "key": "k", "value": value, "stamp": stamp}}).to_string(),
        )
    };
    peer.send(op("wrapped", u64::MAX)).unwrap();
    peer.send(op("edge", u64::from(u32::MAX))).unwrap();
    assert_eq!(tab.recv_set("k")["value"], "edge", "the counter at its bound is a legal stamp");
    assert_eq!(metric(&a, "aether_mesh_ops_refused_total{reason=\"bad_counter\"}"), 1.0);

    tab.set("k", json!("mine"));
    assert_eq!(tab.recv_set("k")["value"], "mine", "the echo");
    let fresh = a.client();
    assert_eq!(fresh.snapshot["data"]["k"], "mine", "the relay keeps what it echoed: {}", fresh.snapshot);
    let mut v2 = Client::connect(&format!("{}?v=2", a.url()));
    v2.send(json!({"type": "set", "key": "k", "value": "v2", "ref": 1}));
    let ack = v2.recv_until(|f| f["type"] == "ack" || f["type"] == "nack");
    assert_eq!(ack["type"], "ack", "{ack}");
    let stamp = ack["stamp"].as_str().unwrap();
    assert!(stamp > "00000000000000000000", "{stamp}");
    assert_eq!(a.client().snapshot["data"]["k"], "v2");
    assert!(a.log().find("panicked").is_none(), "{}", a.log());
}

/// Finding 5: cursors are coalesced: a tab sending 2,000 cursor frames as fast as it can reaches
/// another tab as far fewer frames, the last one at its final position, and a write made in the
/// middle of the storm is echoed promptly.
#[test]
fn cursors_are_coalesced_and_never_hold_writes_back() {
    let a = Server::start(FAST);
    let mut watcher = a.client();
    let mut mover = a.client();
    let mut writer = a.client();
    for x in 1..=2000 {
        mover.send(json!({"type": "presence", "x": x, "y": 7}));
        if x == 1000 {
            writer.set("during", json!(true));
        }
    }
    let started = Instant::now();
    writer.recv_set("during");
    assert!(started.elapsed() < Duration::from_secs(2), "write echoed after {:?}", started.elapsed());
    let mut frames = 0;
    let last: Value = watcher.recv_until(|f| {
        frames += usize::from(f["type"] == "presence");
        f["type"] == "presence" && f["x"] == 2000
    });
    assert_eq!(last["y"], 7);
    assert!(frames < 2000, "{frames} cursor frames for 2,000 moves: not coalesced");
}

/// Finding 6: joins on a map too large to encode on the state actor (over its inline bound of
/// 20,000 registers) are served from an encoding made off the actor. Joiners that come while
/// writes flow end with exactly the relay's state, and a write acknowledged before a connect is
/// in that connection's snapshot.
#[test]
fn joins_on_a_large_map_see_exactly_the_relays_state() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let mut ledger = String::new();
    for i in 0..30_000 {
        let stamp = json!({"p": 1_000 + i, "l": 0, "n": "old"});
        ledger.push_str(&json!({"kind": "set", "key": format!("k{i}"), "value": i, "stamp": stamp}).to_string());
        ledger.push('\n');
    }
    std::fs::write(dir.path().join("ledger.jsonl"), ledger).unwrap();
    let server = Server::start_in(dir, FAST);
    let url = server.url();
    let writer = thread::spawn({
        let url = url.clone();
        move || {
            let mut w = Client::connect(&url);
            for i in 0..400 {
                w.set(&format!("k{}", i % 50), json!(format!("new-{i}")));
                if i % 40 == 0 {
                    w.recv_set(&format!("k{}", i % 50));
                }
            }
            w.set("done", json!(true));
            w.recv_set("done");
        }
    });
    let joiners: Vec<_> = (0..8)
        .map(|n| {
            let url = if n % 2 == 0 { url.clone() } else { format!("{url}?v=2") };
            thread::spawn(move || {
                let mut c = Client::connect(&url);
                let mut state = c.snapshot["data"].as_object().unwrap().clone();
                loop {
                    let frame = c.recv();
                    let key = frame["key"].as_str().unwrap_or_default().to_owned();
                    match frame["type"].as_str() {
                        Some("set") => {
                            state.insert(key.clone(), frame["value"].clone());
                        }
                        Some("delete") => {
                            state.remove(&key);
                        }
                        _ => {}
                    }
                    if key == "done" {
                        return state;
                    }
                }
            })
        })
        .collect();
    writer.join().unwrap();
    let mut last = Client::connect(&url);
    last.set("acked", json!(1));
    last.recv_set("acked");
    let fresh = Client::connect(&format!("{url}?v=2"));
    assert_eq!(fresh.snapshot["data"]["acked"], 1, "a write acked before the connect is in its snapshot");
    let mut relay = fresh.snapshot["data"].as_object().unwrap().clone();
    relay.remove("acked");
    assert_eq!(relay.len(), 30_001);
    for joiner in joiners {
        assert!(joiner.join().unwrap() == relay, "a joiner's state differs from the relay's");
    }
}
