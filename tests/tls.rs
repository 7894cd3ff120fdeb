//! TLS on the listener: wss:// with a certificate the test makes.

mod common;

use std::{fs, net::TcpStream};

use common::{Server, make_certificate};
use openssl::ssl::SslStream;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

fn next_text(ws: &mut WebSocket<SslStream<TcpStream>>) -> Value {
    loop {
        if let Message::Text(text) = ws.read().unwrap() {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[test]
fn wss_with_a_generated_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = make_certificate(certs.path());
    let server = Server::start(&format!("[tls]\ncert = {cert:?}\nkey = {key:?}\n"));
    assert!(server.log().contains("listening on https://"), "{}", server.log());

    let mut a = common::wss_connect(&server, Some(&cert)).expect("TLS client trusting the certificate");
    let mut b = common::wss_connect(&server, Some(&cert)).unwrap();
    assert_eq!(next_text(&mut a)["type"], "hello");
    assert_eq!(next_text(&mut a)["type"], "snapshot");
    next_text(&mut b);
    next_text(&mut b);
    a.send(Message::text(json!({"type": "set", "key": "secure", "value": true}).to_string())).unwrap();
    assert_eq!(next_text(&mut b), json!({"type": "set", "key": "secure", "value": true}));

    // A client that does not trust the certificate refuses it; plain ws:// gets no WebSocket.
    let untrusted = common::wss_connect(&server, None).expect_err("verification must fail");
    assert!(untrusted.contains("certificate verify failed"), "{untrusted}");
    let plain = TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(common::WAIT)).unwrap();
    assert!(tungstenite::client(server.url(), plain).is_err());
}

#[test]
fn unusable_certificate_stops_the_relay_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = make_certificate(dir.path());
    let other = tempfile::tempdir().unwrap();
    let (_, wrong_key) = make_certificate(other.path());
    let config = dir.path().join("c.toml");
    fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:0\"\n[ledger]\npath = {:?}\n[tls]\ncert = {cert:?}\nkey = {wrong_key:?}\n",
            dir.path().join("l.jsonl")
        ),
    )
    .unwrap();
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_aether-actix")).arg("--config").arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("[tls] cannot load key") && stderr.contains("key values mismatch"), "{stderr}");
    assert!(!stderr.contains("replayed"), "TLS is checked before the ledger is touched: {stderr}");
}
