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
    Server,
    federation::{CONVERGE, converged, write_in_background, write_keys, writer},
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
