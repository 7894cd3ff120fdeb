//! The shipped `config/Caddyfile`, run by a real Caddy in front of a real relay: TLS at the proxy,
//! WebSocket sync through it, per-source caps by the client's own address (through
//! `[server] trusted_proxies`), and idle connections that outlive every timeout Caddy has.
//!
//! Caddy is told to stay off the internet and off ports 80/443: the site is served on a free
//! loopback port with a certificate the test makes, automatic HTTPS and the admin endpoint are
//! off, and its storage lives in the test's temporary directory.
//!
//! Needs `caddy` on the PATH (tests/run.sh installs Debian's package). Without it the test fails
//! and says so, unless `AETHER_SKIP_CADDY=1` is set.

mod common;

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::{
    Closed, Server, free_port, make_certificate,
    proxy::{Wss, closed, connect_from, feed_streams_through, next_text, stays_up_while_idle},
};
use serde_json::{Value, json};
use tungstenite::Message;

struct Caddy {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Caddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every timeout Caddy has, set to this in the test (server-wide and towards the relay).
const TIMEOUT: &str = "3s";

/// Starts Caddy with the shipped Caddyfile, rewritten only where a test must differ.
fn start_caddy(dir: &Path, relay: SocketAddr) -> Caddy {
    let (cert, key) = make_certificate(dir);
    let port = free_port();
    let mut site = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/Caddyfile")).unwrap();
    let swaps = [
        (
            "aether.example.com {\n",
            format!("https://localhost:{port} {{\n\ttls {} {}\n", cert.display(), key.display()),
        ),
        ("reverse_proxy 127.0.0.1:8211 {", format!("reverse_proxy {relay} {{")),
        ("read_timeout 1h", format!("read_timeout {TIMEOUT}")),
        ("write_timeout 1h", format!("write_timeout {TIMEOUT}")),
    ];
    for (from, to) in swaps {
        assert!(site.contains(from), "config/Caddyfile no longer contains {from:?}; update this test");
        site = site.replace(from, &to);
    }
    // No certificate fetching, no :80 redirect listener, no admin port, no UDP (HTTP/3) listener,
    // loopback only; and short server-wide timeouts, which a WebSocket must also outlive.
    let global = format!(
        "{{\n\tadmin off\n\tauto_https off\n\tdefault_bind 127.0.0.1\n\tstorage file_system {}\n\
         \tservers {{\n\t\tprotocols h1 h2\n\t\ttimeouts {{\n\t\t\tread_body {TIMEOUT}\n\t\t\tread_header {TIMEOUT}\n\
         \t\t\twrite {TIMEOUT}\n\t\t\tidle {TIMEOUT}\n\t\t}}\n\t}}\n}}\n\n",
        dir.join("storage").display()
    );
    let config = dir.join("Caddyfile");
    fs::write(&config, global + &site).unwrap();
    let log = fs::File::create(dir.join("caddy.log")).unwrap();
    let mut child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&config)
        // Caddy keeps its data and autosaved config under these: the test's directory.
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start caddy");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + common::WAIT;
    while TcpStream::connect(addr).is_err() {
        let exited = child.try_wait().unwrap();
        assert!(
            exited.is_none() && Instant::now() < deadline,
            "caddy did not start ({exited:?}): {}",
            fs::read_to_string(dir.join("caddy.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
    Caddy { child, addr }
}

fn caddy_available() -> bool {
    let found = Command::new("caddy").arg("version").output().is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("AETHER_SKIP_CADDY").is_none() {
        panic!("caddy is not installed: run tests/run.sh (it installs it) or set AETHER_SKIP_CADDY=1");
    }
    found
}

fn open(caddy: &Caddy, ca: &Path, source: [u8; 4], headers: &[(&str, &str)]) -> (Wss, Value) {
    let mut ws = connect_from(caddy.addr, ca, source, headers);
    let hello = next_text(&mut ws);
    assert_eq!(hello["type"], "hello");
    assert_eq!(next_text(&mut ws)["type"], "snapshot");
    (ws, hello)
}

#[test]
fn sync_per_source_caps_and_idle_connections_through_caddy() {
    if !caddy_available() {
        return;
    }
    let relay = Server::start(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\nping_interval_s = 0.5\n[limits]\nmax_connections_per_source = 2\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let caddy = start_caddy(dir.path(), relay.addr);
    let ca = dir.path().join("cert.pem");

    // Plain HTTPS through Caddy, from a client that is not ours.
    let health = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg(format!("https://localhost:{}/healthz", caddy.addr.port()))
        .output()
        .expect("curl");
    assert!(health.status.success(), "{}", String::from_utf8_lossy(&health.stderr));
    let health: Value = serde_json::from_slice(&health.stdout).unwrap();
    assert_eq!(health["status"], "ok");

    // Sync through the proxy, over TLS.
    let (mut a1, _) = open(&caddy, &ca, [127, 0, 0, 2], &[]);
    let (mut b, _) = open(&caddy, &ca, [127, 0, 0, 3], &[]);
    a1.send(Message::text(json!({"type": "set", "key": "via", "value": "caddy"}).to_string())).unwrap();
    assert_eq!(next_text(&mut b), json!({"type": "set", "key": "via", "value": "caddy"}));
    assert_eq!(next_text(&mut a1), json!({"type": "set", "key": "via", "value": "caddy"}));

    // Per-source caps count the client's address (127.0.0.2), not Caddy's: the relay believes
    // Caddy's X-Forwarded-For because trusted_proxies names it. Headers a client forges do not
    // help: Caddy does not pass a client's X-Forwarded-For on as its address, and the relay reads
    // the header from the right and prefers it to X-Real-IP.
    let (_a2, _) = open(&caddy, &ca, [127, 0, 0, 2], &[]);
    let forged = [("X-Forwarded-For", "198.51.100.77"), ("X-Real-IP", "198.51.100.78")];
    let mut a3 = connect_from(caddy.addr, &ca, [127, 0, 0, 2], &forged);
    assert_eq!(closed(&mut a3), Closed::Frame(1013, "server busy".into()));
    common::wait_until("the refusal in the relay's log", || relay.log().contains("connection from 127.0.0.2 refused"));
    // Another address still gets in.
    let (_c, _) = open(&caddy, &ca, [127, 0, 0, 4], &[]);

    // Idle for more than twice every Caddy timeout: the relay's pings keep the connection alive.
    stays_up_while_idle(&mut b, Duration::from_secs(7));
}

/// The test above proves something: without the relay's pings, Caddy's timeout (the one the
/// shipped file sets to an hour) does cut an idle WebSocket.
#[test]
fn without_pings_caddy_cuts_an_idle_websocket() {
    if !caddy_available() {
        return;
    }
    let relay = Server::start("[server]\ntrusted_proxies = [\"127.0.0.1\"]\nping_interval_s = 60\n");
    let dir = tempfile::tempdir().unwrap();
    let caddy = start_caddy(dir.path(), relay.addr);
    let (mut ws, _) = open(&caddy, &dir.path().join("cert.pem"), [127, 0, 0, 2], &[]);
    let started = Instant::now();
    assert_eq!(closed(&mut ws), Closed::Eof);
    let after = started.elapsed();
    assert!(after >= Duration::from_secs(2) && after < Duration::from_secs(8), "cut after {after:?}");
}

/// The change feed (Server-Sent Events) through the shipped Caddyfile: each event reaches the
/// reader as it happens (`flush_interval -1`).
#[test]
fn the_change_feed_streams_through_caddy() {
    if !caddy_available() {
        return;
    }
    let key = "an-api-key-for-the-proxy-tests";
    let relay = Server::start(&format!("[api]\nkey = \"{key}\"\n"));
    let dir = tempfile::tempdir().unwrap();
    let caddy = start_caddy(dir.path(), relay.addr);
    feed_streams_through(caddy.addr, &dir.path().join("cert.pem"), relay.addr, key);
}
