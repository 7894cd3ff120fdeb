//! Reload without restart: SIGHUP (sent with `kill -HUP`, as an operator or systemd's
//! `ExecReload` would) re-reads the configuration; new connections get the new token, limits,
//! origins and TLS certificate, open ones stay and keep syncing, a broken file is refused with the
//! old configuration kept (a bad JWT key file too), and keys that need a restart are named in the log.

mod common;

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
};

use common::{Client, Closed, Server, make_certificate, wait_closed, wait_until};
use openssl::ssl::{SslConnector, SslMethod, SslStream};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// The config `Server::start` writes, with `extra` instead of what it was started with.
fn rewrite(server: &Server, extra: &str) {
    let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
    let sections = [
        ("[server]\n", format!("bind = \"127.0.0.1:0\"\nstatic_dir = {static_dir:?}\n")),
        ("[ledger]\n", format!("path = {:?}\n", server.ledger_path())),
    ];
    let mut text = extra.to_owned();
    for (header, keys) in sections {
        text = match text.find(header) {
            Some(at) => format!("{}{header}{keys}{}", &text[..at], &text[at + header.len()..]),
            None => format!("{header}{keys}\n{text}"),
        };
    }
    std::fs::write(&server.config, text).unwrap();
}

/// The relay's process id, from the pid file it keeps beside its ledger.
fn pid(server: &Server) -> String {
    let mut path = server.ledger_path().into_os_string();
    path.push(".pid");
    std::fs::read_to_string(PathBuf::from(path)).expect("pid file").trim().to_owned()
}

/// `kill -HUP` the relay and wait until it logged the outcome ("reloaded", or the error that
/// kept the running configuration); returns that log line.
fn hangup(server: &Server) -> String {
    let outcome = |l: &&str| l.contains("SIGHUP: reloaded") || l.contains("running configuration stays");
    let before = server.log().lines().filter(outcome).count();
    assert!(Command::new("kill").args(["-HUP", &pid(server)]).status().unwrap().success());
    wait_until("the reload to be logged", || server.log().lines().filter(outcome).count() > before);
    server.log().lines().filter(outcome).nth(before).unwrap().to_owned()
}

/// Rewrites the config with `extra`, sends SIGHUP, and checks it was taken.
fn reload(server: &Server, extra: &str) -> String {
    rewrite(server, extra);
    let line = hangup(server);
    assert!(line.contains("SIGHUP: reloaded"), "{line}\n{}", server.log());
    line
}

fn with_token(server: &Server, token: &str) -> String {
    format!("{}?auth_token={token}", server.url())
}

/// Both clients see each other's writes.
fn syncing(a: &mut Client, b: &mut Client, tag: &str) {
    a.set(&format!("{tag}:a"), json!(1));
    b.recv_set(&format!("{tag}:a"));
    b.set(&format!("{tag}:b"), json!(2));
    a.recv_set(&format!("{tag}:b"));
}

#[test]
fn a_new_token_refuses_the_old_one_for_new_connections_and_open_ones_keep_syncing() {
    let server = Server::start("[auth]\ntoken = \"old-secret\"\n");
    let mut open = Client::connect(&with_token(&server, "old-secret"));

    let line = reload(&server, "[auth]\ntoken = \"new-secret\"\n");
    assert!(line.contains("[auth] token") && !line.contains("new-secret"), "names the key, never the secret: {line}");
    assert!(!server.log().contains("new-secret") && !server.log().contains("old-secret"));

    let mut refused = Client::raw(&with_token(&server, "old-secret"));
    assert_eq!(wait_closed(&mut refused), Closed::Frame(1008, "auth failed".into()));
    let mut fresh = Client::connect(&with_token(&server, "new-secret"));
    syncing(&mut open, &mut fresh, "after-token");

    // A token file is re-read too (the usual way to rotate a secret kept out of the config).
    let file = server.dir.path().join("token");
    std::fs::write(&file, "from-file\n").unwrap();
    reload(&server, &format!("[auth]\ntoken_file = {file:?}\n"));
    let mut refused = Client::raw(&with_token(&server, "new-secret"));
    assert_eq!(wait_closed(&mut refused), Closed::Frame(1008, "auth failed".into()));
    let mut third = Client::connect(&with_token(&server, "from-file"));
    syncing(&mut open, &mut third, "after-file");
    syncing(&mut fresh, &mut third, "all-three");
}

#[test]
fn limits_change_for_new_connections_and_spare_open_ones() {
    let server = Server::start("[limits]\nmax_connections_per_source = 2\n");
    let mut a = server.client();
    let mut b = server.client();
    let mut refused = Client::raw(&server.url());
    assert_eq!(wait_closed(&mut refused), Closed::Frame(1013, "server busy".into()));

    let line = reload(&server, "[limits]\nmax_connections_per_source = 3\nmax_key_bytes = 8\n");
    assert!(line.contains("[limits] max_connections_per_source") && line.contains("[limits] max_key_bytes"), "{line}");
    let mut c = server.client();
    // `c` was admitted under max_key_bytes = 8: its long key is dropped (as any oversized key
    // is), while `a`, admitted before, still writes one.
    c.set("a-key-longer-than-8", json!("dropped"));
    a.set("another-long-key", json!("kept"));
    let seen = b.recv_until(|f| f["type"] == "set");
    assert_eq!(seen["key"], "another-long-key", "the old connection's limit holds, the new one's drop: {seen}");
    syncing(&mut a, &mut c, "k");

    // Lowering a cap below what is open refuses new connections and closes none.
    reload(&server, "[limits]\nmax_connections_per_source = 1\n");
    let mut refused = Client::raw(&server.url());
    assert_eq!(wait_closed(&mut refused), Closed::Frame(1013, "server busy".into()));
    syncing(&mut b, &mut c, "lo");
    assert_eq!(server.health("connections"), 3);
}

#[test]
fn allowed_origins_change_for_new_connections() {
    let server = Server::start("[server]\nallowed_origins = [\"https://a.example\"]\n");
    let from = |origin: &str| Client::try_raw(&server.url(), &[("Origin", origin)]);
    let mut a = Client::connect_with(&server.url(), &[("Origin", "https://a.example")]);
    assert_eq!(from("https://b.example").err(), Some(403));

    let line = reload(&server, "[server]\nallowed_origins = [\"https://b.example\"]\n");
    assert!(line.contains("[server] allowed_origins"), "{line}");
    assert_eq!(from("https://a.example").err(), Some(403));
    let mut b = Client::connect_with(&server.url(), &[("Origin", "https://b.example")]);
    syncing(&mut a, &mut b, "origins");

    // curl, a client that is not ours, sees the same refusal.
    let url = format!("http://{}/ws", server.addr);
    let status = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", "-H", "Origin: https://a.example"])
        .args(["-H", "Upgrade: websocket", "-H", "Connection: Upgrade", "-H", "Sec-WebSocket-Version: 13"])
        .args(["-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", &url])
        .output();
    if let Ok(out) = status {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "403");
    }
}

fn next_set(ws: &mut WebSocket<SslStream<TcpStream>>, key: &str) -> Value {
    loop {
        if let Message::Text(text) = ws.read().unwrap() {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "set" && frame["key"] == key {
                return frame;
            }
        }
    }
}

fn fingerprint_of(cert: &Path) -> String {
    let pem = std::fs::read(cert).unwrap();
    let digest = openssl::x509::X509::from_pem(&pem).unwrap().digest(openssl::hash::MessageDigest::sha256()).unwrap();
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// The SHA-256 fingerprint of the certificate `openssl s_client` is shown (no SNI), if it runs.
fn s_client_fingerprint(server: &Server) -> Option<String> {
    let script = format!(
        "echo | openssl s_client -connect {} -noservername 2>/dev/null | openssl x509 -noout -fingerprint -sha256",
        server.addr
    );
    let out = Command::new("timeout").args(["10", "sh", "-c", &script]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.trim().split('=').nth(1)?.to_owned())
}

#[test]
fn a_rotated_certificate_serves_new_connections_while_open_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = make_certificate(dir.path());
    let old_ca = dir.path().join("first.pem");
    std::fs::copy(&first, &old_ca).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let tls = format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n");
    let server = Server::start(&tls);
    let mut open = common::wss_connect(&server, Some(&old_ca)).expect("trusting the first certificate");
    if let Some(seen) = s_client_fingerprint(&server) {
        assert_eq!(seen, fingerprint_of(&old_ca));
    }

    // Rotate in place, as certbot and friends do: same file names, new contents.
    let next = tempfile::tempdir().unwrap();
    let (new_cert, new_key) = make_certificate(next.path());
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    assert_ne!(fingerprint_of(&cert), fingerprint_of(&old_ca));
    let line = reload(&server, &tls);
    assert!(line.contains(&format!("[tls] certificate (SHA-256 {})", fingerprint_of(&cert))), "{line}");

    if let Some(seen) = s_client_fingerprint(&server) {
        assert_eq!(seen, fingerprint_of(&cert), "openssl s_client sees the new certificate");
    }
    let refused = common::wss_connect(&server, Some(&old_ca)).expect_err("a new connection gets the new certificate");
    assert!(refused.contains("certificate verify failed"), "{refused}");
    let mut fresh = common::wss_connect(&server, Some(&cert)).expect("trusting the new certificate");

    // The connection opened under the old certificate is still up, both ways.
    open.send(Message::text(json!({"type": "set", "key": "old-tls", "value": 1}).to_string())).unwrap();
    next_set(&mut fresh, "old-tls");
    fresh.send(Message::text(json!({"type": "set", "key": "new-tls", "value": 2}).to_string())).unwrap();
    next_set(&mut open, "new-tls");
}

#[test]
fn a_broken_configuration_is_refused_and_the_running_one_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(dir.path());
    let tls = format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n");
    let server = Server::start(&format!("[auth]\ntoken = \"kept\"\n{tls}"));
    let config = server.config.display().to_string();

    // A bad value: the same one-line error as at start (file, line, key), and nothing changes.
    rewrite(&server, &format!("[auth]\ntoken = \"other\"\n[limits]\nmax_key_bytes = \"big\"\n{tls}"));
    let line = hangup(&server);
    assert!(line.contains("ERROR") && line.contains(&format!("SIGHUP: {config}: line ")), "{line}");
    assert!(line.contains("key `max_key_bytes` in [limits]") && line.contains("running configuration stays"), "{line}");
    // `aether-actix --config` on the same file fails at start with the same words.
    let start = Command::new(env!("CARGO_BIN_EXE_aether-actix")).arg("--config").arg(&server.config).output().unwrap();
    let start_error = String::from_utf8_lossy(&start.stderr);
    let reason = line.split("SIGHUP: ").nth(1).unwrap().split("; the running").next().unwrap();
    assert!(start_error.contains(reason), "start: {start_error}\nreload: {line}");

    // A key that does not match its certificate: refused, the old certificate still served.
    let other = tempfile::tempdir().unwrap();
    let (_, wrong_key) = make_certificate(other.path());
    rewrite(&server, &format!("[auth]\ntoken = \"other\"\n[tls]\ncert = {cert:?}\nkey = {wrong_key:?}\n"));
    let line = hangup(&server);
    assert!(line.contains("[tls] cannot load key") && line.contains("running configuration stays"), "{line}");

    // `aether-actix reload` checks the file first and says the same, without signalling.
    let out = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .arg("--config")
        .arg(&server.config)
        .arg("reload")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[tls] cannot load key"), "{out:?}");

    // Still serving, still with the old token and certificate.
    let mut old = common::wss_connect(&server, Some(&cert)).expect("the first certificate, still");
    old.send(Message::text(json!({"type": "auth", "token": "kept"}).to_string())).unwrap();
    let url = format!("wss://localhost:{}/ws?auth_token=other", server.addr.port());
    let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
    connector.set_ca_file(&cert).unwrap();
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(common::WAIT)).unwrap();
    let mut wrong = tungstenite::client(url, connector.build().connect("localhost", tcp).unwrap()).unwrap().0;
    loop {
        match wrong.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!((u16::from(frame.code), frame.reason.as_str()), (1008, "auth failed"));
                break;
            }
            Ok(Message::Text(text)) => panic!("the new token was taken: {text}"),
            Ok(_) => {}
            Err(err) => panic!("no close frame: {err}"),
        }
    }
    old.send(Message::text(json!({"type": "set", "key": "still", "value": true}).to_string())).unwrap();
    assert_eq!(next_set(&mut old, "still")["value"], true);
}

#[test]
fn keys_that_need_a_restart_are_named_and_keep_their_running_values() {
    let server = Server::start("[mesh]\nnode_id = \"alpha\"\n");
    let mut a = server.client();
    a.set("before", json!(1));
    a.recv_set("before");

    let elsewhere = server.dir.path().join("elsewhere.jsonl");
    rewrite(&server, "[ledger]\nsync = \"none\"\n[mesh]\nnode_id = \"beta\"\n[limits]\nmax_connections_total = 9\n");
    // `rewrite` keeps the ledger path; name another one too.
    let text = std::fs::read_to_string(&server.config).unwrap();
    let moved = text.replace(&format!("path = {:?}", server.ledger_path()), &format!("path = {elsewhere:?}"));
    std::fs::write(&server.config, moved).unwrap();

    // Through the subcommand this time: it finds the relay by its ledger... which the file now
    // moves, so it says nobody runs there; SIGHUP it is.
    let out = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .arg("--config")
        .arg(&server.config)
        .arg("reload")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no relay is running on the ledger"), "{out:?}");

    hangup(&server);
    let log = server.log();
    let warning = log.lines().find(|l| l.contains("only a restart applies")).unwrap_or_else(|| panic!("{log}"));
    for key in ["[ledger] path", "[ledger] sync", "[mesh] node_id"] {
        assert!(warning.contains(key), "{key}: {warning}");
    }
    assert!(!warning.contains("max_connections_total"), "a live key is no restart key: {warning}");
    assert!(log.contains("new connections get the new [limits] max_connections_total"), "{log}");

    // The running values stay: writes still go to the first ledger, stamped by alpha.
    a.set("after", json!(2));
    let echo = a.recv_set("after");
    assert_eq!(echo["value"], 2);
    let ledger = std::fs::read_to_string(server.ledger_path()).unwrap();
    let line = ledger.lines().find(|l| l.contains("\"after\"")).expect("written to the running ledger");
    assert!(line.contains("\"n\":\"alpha\""), "{line}");
    assert!(!elsewhere.exists());
}

#[test]
fn the_reload_subcommand_signals_the_relay_on_the_configured_ledger() {
    let server = Server::start("[auth]\ntoken = \"one\"\n");
    rewrite(&server, "[auth]\ntoken = \"two\"\n");
    let before = server.log().matches("SIGHUP: reloaded").count();
    let out = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .arg("--config")
        .arg(&server.config)
        .arg("reload")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("pid {}", pid(&server))), "{out:?}");
    wait_until("the reload", || server.log().matches("SIGHUP: reloaded").count() > before);
    Client::connect(&with_token(&server, "two"));

    // Once the relay is gone, its pid file is too, and the subcommand says nobody runs there.
    let (config, _dir) = (server.config.clone(), std::sync::Arc::clone(&server.dir));
    let (_status, _) = server.terminate();
    let out = Command::new(env!("CARGO_BIN_EXE_aether-actix")).arg("--config").arg(&config).arg("reload").output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no relay is running"), "{out:?}");
}

#[test]
fn open_connections_live_through_repeated_reloads() {
    let server = Server::start("[auth]\ntoken = \"t0\"\n");
    let mut clients: Vec<Client> = (0..50).map(|_| Client::connect(&with_token(&server, "t0"))).collect();
    for round in 1..=5 {
        reload(&server, &format!("[auth]\ntoken = \"t{round}\"\n[limits]\nmessages_burst = {}\n", 100 + round));
        clients.push(Client::connect(&with_token(&server, &format!("t{round}"))));
    }
    let mut writer = clients.remove(0);
    writer.set("after-five-reloads", json!(5));
    writer.recv_set("after-five-reloads");
    for client in &mut clients {
        assert_eq!(client.recv_set("after-five-reloads")["value"], 5);
    }
    assert_eq!(server.health("connections"), 55);
    assert_eq!(server.log().matches("SIGHUP: reloaded").count(), 5);
}

#[test]
fn the_jwt_key_file_is_read_again_and_a_bad_one_is_refused_with_the_running_key_kept() {
    let keys = tempfile::tempdir().unwrap();
    let file = keys.path().join("jwt.secret");
    let config = format!("[auth]\njwt_secret_file = {file:?}\n");
    std::fs::write(&file, "first-jwt-secret-of-at-least-32-bytes\n").unwrap();
    let server = Server::start(&config);

    // Same file name, new content: the reload says the key changed, never what it is.
    std::fs::write(&file, "second-jwt-secret-of-at-least-32-bytes\n").unwrap();
    let line = reload(&server, &config);
    assert!(line.contains("[auth] JWT key"), "{line}");

    // A secret too short to be one, then no file at all: refused, named, the running key kept.
    std::fs::write(&file, "tiny!\n").unwrap();
    let line = hangup(&server);
    assert!(line.contains("ERROR") && line.contains("[auth] jwt_secret_file: the HS256 secret is 5 bytes"), "{line}");
    assert!(line.contains("running configuration stays"), "{line}");
    std::fs::remove_file(&file).unwrap();
    let line = hangup(&server);
    assert!(line.contains("[auth] jwt_secret_file") && line.contains("cannot read"), "{line}");
    assert!(line.contains("running configuration stays"), "{line}");
    let log = server.log();
    assert!(!log.contains("jwt-secret-of") && !log.contains("tiny!"), "no secret in the log:\n{log}");
}
