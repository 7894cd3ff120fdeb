//! The NATS JetStream transport: real `nats-server` processes (Debian's package; `tests/run.sh`
//! installs it) with JetStream on free loopback ports, one server or a three-server cluster with
//! replicated streams, and real relay processes; every test ends with every relay holding
//! byte-identical state.

mod common;

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use common::{
    Server,
    federation::{CONVERGE, converged, write_in_background, write_keys, writer},
    wait_within,
};
use serde_json::json;

/// The `nats-server` binary: on PATH, or where Debian puts it.
fn nats_server_bin() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("nats-server not found: run tests/run.sh (installs Debian's nats-server)"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One `nats-server` with JetStream, storing under its own directory; killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    log: Arc<Mutex<String>>,
    _dir: Arc<tempfile::TempDir>,
}

impl Nats {
    /// A single server.
    fn single() -> Nats {
        Nats::start(free_port(), &[])
    }

    /// Three servers in one cluster (JetStream replicated across them).
    fn cluster() -> Vec<Nats> {
        let (ports, routes): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port(), free_port())).unzip();
        let all_routes: Vec<String> = routes.iter().map(|r| format!("nats://127.0.0.1:{r}")).collect();
        (0..3)
            .map(|i| {
                let extra = [
                    "--name".to_owned(),
                    format!("s{i}"),
                    "--cluster_name".to_owned(),
                    "aether".to_owned(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".to_owned(),
                    all_routes.join(","),
                ];
                Nats::start(ports[i], &extra)
            })
            .collect()
    }

    fn start(port: u16, extra: &[String]) -> Nats {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut args: Vec<String> = ["-js", "-a", "127.0.0.1", "-p"].iter().map(|s| s.to_string()).collect();
        args.push(port.to_string());
        args.push("-sd".into());
        args.push(dir.path().display().to_string());
        args.extend(extra.iter().cloned());
        let mut nats = Nats { child: None, port, args, log: Arc::default(), _dir: dir };
        nats.restart();
        nats
    }

    /// (Re)starts the server with the same port and store.
    fn restart(&mut self) {
        let mut child = Command::new(nats_server_bin())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::clone(&self.log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        self.child = Some(child);
        let port = self.port;
        wait_within(Duration::from_secs(20), "nats-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Config of a relay on the NATS transport.
fn relay_toml(id: &str, servers: &[String], extra: &str) -> String {
    format!(
        "[mesh]\nnode_id = \"{id}\"\ntransport = \"nats\"\n[mesh.nats]\nservers = {servers:?}\nsnapshot_interval_s = 0.5\n{extra}\n\
         [limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n"
    )
}

fn relay(id: &str, servers: &[String], extra: &str) -> Server {
    Server::start(&relay_toml(id, servers, extra))
}

fn relay_in(dir: Arc<tempfile::TempDir>, id: &str, servers: &[String]) -> Server {
    Server::start_in(dir, &relay_toml(id, servers, ""))
}

fn position(server: &Server) -> serde_json::Value {
    let path = Path::new(&format!("{}.nats.json", server.ledger_path().display())).to_owned();
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

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
