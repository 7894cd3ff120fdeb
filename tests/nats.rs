//! The NATS JetStream transport: real `nats-server` processes (Debian's package; `tests/run.sh`
//! installs it) with JetStream on free loopback ports, one server or a three-server cluster with
//! replicated streams, and real relay processes; every test ends with every relay holding
//! byte-identical state.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{
    Client, Server,
    federation::{CONVERGE, converged, room_data, room_url, write_in_background, write_keys, write_room, writer},
    free_port,
    nats::{Nats, position, relay, relay_in, relay_toml},
    wait_within,
};
use serde_json::json;

#[test]
fn five_relays_converge_through_nats() {
    let nats = Nats::single();
    let servers = [nats.url()];
    let relays: Vec<Server> = (0..5).map(|i| relay(&format!("r{i}"), &servers, "")).collect();
    let writers: Vec<_> = relays.iter().enumerate().map(|(i, r)| writer(r, i as u64 + 1, 400, 60)).collect();
    for w in writers {
        w.join().unwrap();
    }
    let snapshot = converged(&relays.iter().collect::<Vec<_>>(), 60);
    for i in 1..=5 {
        assert_eq!(snapshot["data"][format!("done-{i}")], 400);
    }
}

#[test]
fn a_killed_relay_resumes_from_its_stream_position() {
    let nats = Nats::single();
    let servers = [nats.url()];
    let a = relay("a", &servers, "");
    let c = relay("c", &servers, "");
    write_keys(&a, "before-", 500);
    converged(&[&a, &c], 500);
    const STREAM: usize = 20_000;
    let stream = write_in_background(&a, "stream-", STREAM);
    wait_within(CONVERGE, "c to apply part of the stream", || {
        c.healthz()["registers"].as_u64().unwrap_or(0) > 1500 && position(&c)["applied"].as_u64().unwrap_or(0) > 1
    });
    assert!(!stream.is_finished(), "c is killed while a is still writing");
    let dir = c.kill9();
    let c = relay_in(dir, "c", &servers);
    wait_within(CONVERGE, "c consuming", || c.log().contains("consuming from sequence"));
    let resumed = c.log();
    let from: u64 = resumed
        .split("consuming from sequence ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("consuming line");
    assert!(from > 1, "resumed from its position, not from the start:\n{resumed}");
    stream.join().unwrap();
    let snapshot = converged(&[&a, &c], 500 + STREAM as u64);
    assert_eq!(snapshot["data"][format!("stream-{}", STREAM - 1)], STREAM - 1);
}

#[test]
fn a_new_relay_bootstraps_from_the_latest_snapshot_after_the_stream_was_trimmed() {
    let nats = Nats::single();
    let servers = [nats.url()];
    // A stream that keeps only ~256 KiB: most of what follows is trimmed away.
    let small = "max_bytes = 262144\n";
    let a = relay("a", &servers, small);
    write_keys(&a, "old-", 5000);
    // Wait for a snapshot of everything: a's position stops at the stream's end once it has
    // applied its own writes back, and the next snapshot covers it.
    wait_within(CONVERGE, "a snapshot of everything", || {
        let applied = position(&a)["applied"].as_u64().unwrap_or(0);
        applied > 0 && a.log().contains(&format!("snapshot up to sequence {applied} published"))
    });
    let late = relay("late", &servers, small);
    wait_within(CONVERGE, "the snapshot loaded", || late.log().contains("loaded snapshot"));
    let snapshot = converged(&[&a, &late], 5000);
    assert_eq!(snapshot["data"]["old-0"], 0, "a key long gone from the stream");
    // And the newcomer keeps up with what follows.
    write_keys(&a, "new-", 10);
    converged(&[&a, &late], 5010);
}

#[test]
fn nats_stopped_and_restarted_under_load_loses_no_acknowledged_write() {
    let mut nats = Nats::single();
    let servers = [nats.url()];
    // A small publish queue, so the outage overflows it: the relays then republish from their
    // state (the ledger is the durable queue).
    let small_queue = "max_publish_queue = 100\n";
    let relays: Vec<Server> = (0..3).map(|i| relay(&format!("r{i}"), &servers, small_queue)).collect();
    write_keys(&relays[0], "warm-", 10);
    converged(&relays.iter().collect::<Vec<_>>(), 10);
    let writers: Vec<_> = relays.iter().enumerate().map(|(i, r)| writer(r, i as u64 + 1, 3000, 500)).collect();
    wait_within(CONVERGE, "writes flowing", || relays[2].healthz()["registers"].as_u64().unwrap_or(0) > 100);
    nats.kill();
    // The relays keep accepting (and acknowledging) writes from their own clients meanwhile.
    let during = Instant::now();
    write_keys(&relays[1], "during-", 200);
    assert!(during.elapsed() < Duration::from_secs(10), "local writes do not wait for NATS");
    nats.restart();
    for w in writers {
        w.join().unwrap();
    }
    let snapshot = converged(&relays.iter().collect::<Vec<_>>(), 510);
    assert_eq!(snapshot["data"]["during-199"], 199);
    assert!(relays[1].log().contains("publish queue full"), "the overflow path ran:\n{}", relays[1].log());
    for i in 1..=3 {
        assert_eq!(snapshot["data"][format!("done-{i}")], 3000);
    }
}

#[test]
fn a_three_server_cluster_keeps_relays_converging_when_one_server_dies() {
    let mut cluster = Nats::cluster();
    let servers: Vec<String> = cluster.iter().map(Nats::url).collect();
    let replicated = "replicas = 3\n";
    let relays: Vec<Server> = (0..3).map(|i| relay(&format!("r{i}"), &servers, replicated)).collect();
    write_keys(&relays[0], "before-", 200);
    converged(&relays.iter().collect::<Vec<_>>(), 200);
    cluster[0].kill();
    let writers: Vec<_> = relays.iter().enumerate().map(|(i, r)| writer(r, i as u64 + 1, 500, 100)).collect();
    for w in writers {
        w.join().unwrap();
    }
    let snapshot = converged(&relays.iter().collect::<Vec<_>>(), 300);
    assert_eq!(snapshot["data"]["before-199"], 199);
    assert_eq!(snapshot["data"]["done-3"], 500);
}

#[test]
fn cursors_cross_relays_over_nats_and_leave_with_their_relay() {
    let nats = Nats::single();
    let servers = [nats.url()];
    let a = relay("a", &servers, "");
    let b = relay("b", &servers, "");
    let mut on_a = a.client();
    let mut on_b = b.client();
    // The subscription is up once a write crossed.
    write_keys(&a, "ready-", 1);
    converged(&[&a, &b], 1);
    on_a.send(json!({"type": "presence", "x": 3, "y": 4}));
    let seen = on_b.recv_until(|f| f["type"] == "presence");
    assert_eq!(seen, json!({"type": "presence", "id": on_a.id(), "color": on_a.hello["color"], "x": 3, "y": 4}));
    let id = on_a.id();
    drop(on_a);
    // (Other clients leaving, like the ones that read snapshots above, show up as leaves too.)
    on_b.recv_until(|f| f["type"] == "presence-leave" && f["id"] == id);
    // A relay that vanishes: its cursors leave once its heartbeat stops (6 s).
    let mut on_a = a.client();
    on_a.send(json!({"type": "presence", "x": 5, "y": 6}));
    on_b.recv_until(|f| f["type"] == "presence" && f["id"] == on_a.id());
    let started = Instant::now();
    drop(a.kill9());
    on_b.recv_until_within(Duration::from_secs(15), |f| f["type"] == "presence-leave" && f["id"] == on_a.id());
    assert!(started.elapsed() < Duration::from_secs(12), "left after {:?}", started.elapsed());
}

#[test]
fn a_relay_that_cannot_reach_nats_says_so_and_exits() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &relay_toml("x", &[format!("nats://127.0.0.1:{port}")], ""));
    let out = Command::new(env!("CARGO_BIN_EXE_aether-actix")).arg("--config").arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot connect to NATS at"), "{stderr}");
}

#[test]
fn relays_reach_nats_over_tls_and_check_the_existing_stream() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = common::make_certificate(certs.path());
    let port = free_port();
    let tls = [
        "--tls".to_owned(),
        "--tlscert".to_owned(),
        cert.display().to_string(),
        "--tlskey".to_owned(),
        key.display().to_string(),
    ];
    let _nats = Nats::start(port, &tls);
    let servers = [format!("tls://127.0.0.1:{port}")];
    let ca = format!("tls_ca = {cert:?}\n");
    let a = relay("a", &servers, &ca);
    let b = relay("b", &servers, &ca);
    write_keys(&a, "secure-", 50);
    converged(&[&a, &b], 50);
    // Without the CA the server's certificate is not trusted: the relay stops and says why.
    let untrusting = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .arg("--config")
        .arg(write_config(certs.path(), &relay_toml("u", &servers, "")))
        .output()
        .unwrap();
    assert!(!untrusting.status.success());
    assert!(String::from_utf8_lossy(&untrusting.stderr).contains("cannot connect to NATS"));
    // A stream that exists with other subjects is named in a clear error.
    let clash = relay_toml("c", &servers, &format!("{ca}subject = \"other.subject\"\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .arg("--config")
        .arg(write_config(certs.path(), &clash))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("exists with subjects"), "{stderr}");
}

/// Writes a full config (free port, ledger in `dir`) and returns its path.
fn write_config(dir: &Path, relay: &str) -> PathBuf {
    let name = format!("relay-{}.toml", free_port());
    let path = dir.join(&name);
    let ledger = dir.join(format!("{name}.jsonl"));
    std::fs::write(&path, format!("[server]\nbind = \"127.0.0.1:0\"\n[ledger]\npath = {ledger:?}\n{relay}")).unwrap();
    path
}

/// Rooms go through the stream, each into its own room: live, and through an outage long enough
/// to overflow the publish queue, after which the relays republish what they wrote (every room)
/// from their state.
#[test]
fn rooms_cross_relays_over_nats_and_survive_an_outage() {
    let mut nats = Nats::single();
    let servers = [nats.url()];
    let small_queue = "max_publish_queue = 5\n";
    let (a, b) = (relay("a", &servers, small_queue), relay("b", &servers, small_queue));
    write_room(&a, "", "ready-", "a", 1);
    converged(&[&a, &b], 1);
    // Live: a write in r1 reaches r1's members on b.
    let mut on_b = Client::connect(&room_url(&b, "r1"));
    write_room(&a, "r1", "live-", "a", 1);
    assert_eq!(on_b.recv_set("live-0")["value"], "a-0");
    drop(on_b);
    nats.kill();
    for room in ["", "r1", "r2"] {
        write_room(&a, room, "k", &format!("a{room}"), 20);
        write_room(&b, room, "b-only-", &format!("b{room}"), 10);
    }
    nats.restart();
    // ready-0, live-0, and per room 20 + 10.
    converged(&[&a, &b], 2 + 3 * 30);
    assert!(a.log().contains("publish queue full"), "the republish path ran:\n{}", a.log());
    for room in ["", "r1", "r2"] {
        let data = room_data(&a, room);
        assert_eq!(data, room_data(&b, room), "room {room:?}");
        let data = data.as_object().unwrap();
        let extra = if room.is_empty() || room == "r1" { 1 } else { 0 };
        assert_eq!(data.len(), 30 + extra, "room {room:?}: {data:?}");
        assert_eq!((&data["k19"], &data["b-only-9"]), (&json!(format!("a{room}-19")), &json!(format!("b{room}-9"))));
    }
}

/// A relay that bootstraps from a snapshot gets every room, each in its own room.
#[test]
fn a_snapshot_carries_every_room() {
    let nats = Nats::single();
    let servers = [nats.url()];
    let small = "max_bytes = 262144\n";
    let a = relay("a", &servers, small);
    for room in ["", "r1", "r2"] {
        write_room(&a, room, "old-", &format!("a{room}"), 1500);
    }
    wait_within(CONVERGE, "a snapshot of everything", || {
        let applied = position(&a)["applied"].as_u64().unwrap_or(0);
        applied > 0 && a.log().contains(&format!("snapshot up to sequence {applied} published"))
    });
    let late = relay("late", &servers, small);
    wait_within(CONVERGE, "the snapshot loaded", || late.log().contains("loaded snapshot"));
    converged(&[&a, &late], 4500);
    for room in ["", "r1", "r2"] {
        let data = room_data(&late, room);
        assert_eq!(data.as_object().unwrap().len(), 1500, "room {room:?}");
        assert_eq!(data["old-0"], format!("a{room}-0"), "a key long gone from the stream, in its room");
    }
}

/// Cursors over NATS keep their room: r1's cursor reaches r1's members on the other relay, and
/// r2's members see only r2's cursor and leave.
#[test]
fn cursors_over_nats_stay_in_their_room() {
    let nats = Nats::single();
    let servers = [nats.url()];
    let (a, b) = (relay("a", &servers, ""), relay("b", &servers, ""));
    write_keys(&a, "ready-", 1);
    converged(&[&a, &b], 1);
    let mut watchers: Vec<Client> = ["r1", "r2"].iter().map(|r| Client::connect(&room_url(&b, r))).collect();
    let movers: Vec<Client> = ["r1", "r2"]
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut mover = Client::connect(&room_url(&a, r));
            mover.send(json!({"type": "presence", "x": i, "y": 1}));
            // The first cursor a watcher reads is its own room's (r1's was sent first).
            let seen = watchers[i].recv_until(|f| f["type"] == "presence");
            assert_eq!((&seen["id"], &seen["x"]), (&json!(mover.id()), &json!(i)), "room #{i}");
            mover
        })
        .collect();
    let ids: Vec<String> = movers.iter().map(Client::id).collect();
    for (i, mover) in movers.into_iter().enumerate() {
        drop(mover);
        let leave = watchers[i].recv_until(|f| f["type"] == "presence-leave");
        assert_eq!(leave["id"], ids[i], "room #{i}");
    }
}
