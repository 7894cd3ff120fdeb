//! The shipped `config/nginx.conf`, run by a real nginx in front of a real relay: TLS at the proxy,
//! WebSocket sync through it, per-source caps by the client's own address, and idle connections
//! that outlive the proxy's read timeout.
//!
//! Needs `nginx` on the PATH (tests/run.sh installs Debian's package). Without it the test fails
//! and says so, unless `AETHER_SKIP_NGINX=1` is set.

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
    proxy::{closed, connect_from, feed_streams_through, next_text, stays_up_while_idle},
};
use serde_json::json;
use tungstenite::Message;

struct Nginx {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nginx with the shipped site config, rewritten only where a test must differ.
fn start_nginx(dir: &Path, relay: SocketAddr, read_timeout: &str) -> Nginx {
    let (cert, key) = make_certificate(dir);
    let port = free_port();
    let mut site = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/nginx.conf")).unwrap();
    let swaps = [
        ("server 127.0.0.1:8211;", format!("server {relay};")),
        ("    listen 80;\n    listen [::]:80;\n", format!("    listen 127.0.0.1:{};\n", free_port())),
        ("    listen 443 ssl;\n    listen [::]:443 ssl;\n", format!("    listen 127.0.0.1:{port} ssl;\n")),
        ("/etc/letsencrypt/live/aether.example.com/fullchain.pem", cert.display().to_string()),
        ("/etc/letsencrypt/live/aether.example.com/privkey.pem", key.display().to_string()),
        ("proxy_read_timeout 1h;", format!("proxy_read_timeout {read_timeout};")),
    ];
    for (from, to) in swaps {
        assert!(site.contains(from), "config/nginx.conf no longer contains {from:?}; update this test");
        site = site.replace(from, &to);
    }
    fs::write(dir.join("site.conf"), site).unwrap();
    let d = dir.display();
    fs::write(
        dir.join("nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               include {d}/site.conf;\n}}\n"
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf"), "-e", &format!("{d}/error.log")])
        .args(["-g", "daemon off; master_process off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let nginx = Nginx { child, addr };
    let deadline = Instant::now() + common::WAIT;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(20));
    }
    nginx
}

fn nginx_available() -> bool {
    let found = Command::new("nginx").arg("-v").output().is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("AETHER_SKIP_NGINX").is_none() {
        panic!("nginx is not installed: run tests/run.sh (it installs it) or set AETHER_SKIP_NGINX=1");
    }
    found
}

#[test]
fn sync_per_source_caps_and_idle_connections_through_nginx() {
    if !nginx_available() {
        return;
    }
    let relay = Server::start(
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\nping_interval_s = 0.5\n[limits]\nmax_connections_per_source = 2\n",
    );
    let dir = tempfile::tempdir().unwrap();
    let nginx = start_nginx(dir.path(), relay.addr, "3s");
    let ca = dir.path().join("cert.pem");

    // Sync through the proxy, over TLS.
    let mut a1 = connect_from(nginx.addr, &ca, [127, 0, 0, 2], &[]);
    let mut b = connect_from(nginx.addr, &ca, [127, 0, 0, 3], &[]);
    for ws in [&mut a1, &mut b] {
        assert_eq!(next_text(ws)["type"], "hello");
        assert_eq!(next_text(ws)["type"], "snapshot");
    }
    a1.send(Message::text(json!({"type": "set", "key": "via", "value": "nginx"}).to_string())).unwrap();
    assert_eq!(next_text(&mut b), json!({"type": "set", "key": "via", "value": "nginx"}));
    assert_eq!(next_text(&mut a1), json!({"type": "set", "key": "via", "value": "nginx"}));

    // Per-source caps count the client's address (127.0.0.2), not nginx's; a forged header does
    // not help, because nginx appends the real address and the relay reads from the right.
    let mut a2 = connect_from(nginx.addr, &ca, [127, 0, 0, 2], &[]);
    next_text(&mut a2);
    let mut a3 = connect_from(nginx.addr, &ca, [127, 0, 0, 2], &[("X-Forwarded-For", "198.51.100.77")]);
    assert_eq!(closed(&mut a3), Closed::Frame(1013, "server busy".into()));
    let mut c = connect_from(nginx.addr, &ca, [127, 0, 0, 4], &[]);
    assert_eq!(next_text(&mut c)["type"], "hello");

    // Idle for twice nginx's 3 s read timeout: the relay's pings keep the connection alive.
    stays_up_while_idle(&mut b, Duration::from_secs(7));
}

/// The change feed (Server-Sent Events) through the shipped configuration: each event reaches the
/// reader as it happens (`proxy_buffering off`; the relay also sends `X-Accel-Buffering: no`).
#[test]
fn the_change_feed_streams_through_nginx() {
    if !nginx_available() {
        return;
    }
    let key = "an-api-key-for-the-proxy-tests";
    let relay = Server::start(&format!("[api]\nkey = \"{key}\"\n"));
    let dir = tempfile::tempdir().unwrap();
    let nginx = start_nginx(dir.path(), relay.addr, "3s");
    feed_streams_through(nginx.addr, &dir.path().join("cert.pem"), relay.addr, key);
}
