//! Clients for the reverse-proxy tests (`tests/nginx.rs`, `tests/caddy.rs`): TLS WebSockets to the
//! proxy from a chosen loopback source address, so the relay behind it can tell clients apart.

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use openssl::ssl::{SslConnector, SslMethod, SslStream};
use serde_json::{Value, json};
use socket2::{Domain, Socket, Type};
use tungstenite::{Message, WebSocket, client::IntoClientRequest};

use super::{Closed, WAIT};

/// A WebSocket over TLS to the proxy.
pub type Wss = WebSocket<SslStream<TcpStream>>;

/// Opens `wss://localhost:<port>/ws` on `proxy` from loopback address `source`, trusting only
/// the certificate in `ca`, with extra request headers.
pub fn connect_from(proxy: SocketAddr, ca: &Path, source: [u8; 4], headers: &[(&str, &str)]) -> Wss {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&proxy.into()).unwrap();
    let tcp: TcpStream = socket.into();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut connector = SslConnector::builder(SslMethod::tls()).unwrap();
    connector.set_ca_file(ca).unwrap();
    let tls = connector.build().connect("localhost", tcp).unwrap();
    let mut request = format!("wss://localhost:{}/ws", proxy.port()).into_client_request().unwrap();
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
    }
    tungstenite::client(request, tls).expect("WebSocket through the proxy").0
}

/// The next text frame, as JSON.
pub fn next_text(ws: &mut Wss) -> Value {
    loop {
        match ws.read().expect("read through the proxy") {
            Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

/// Reads until the connection ends; returns how.
pub fn closed(ws: &mut Wss) -> Closed {
    loop {
        match ws.read() {
            Ok(Message::Close(Some(frame))) => return Closed::Frame(frame.code.into(), frame.reason.to_string()),
            Ok(_) => {}
            Err(_) => return Closed::Eof,
        }
    }
}

/// Keeps `ws` idle (sending nothing, answering pings) for `idle`, then checks it still carries a
/// write both ways: the connection outlived the proxy's timeouts.
pub fn stays_up_while_idle(ws: &mut Wss, idle: Duration) {
    let idle_until = Instant::now() + idle;
    ws.get_mut().get_mut().set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    while Instant::now() < idle_until {
        match ws.read() {
            Ok(Message::Text(text)) => assert!(text.contains("presence"), "unexpected {text}"),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(err) => panic!("idle connection through the proxy died: {err}"),
        }
    }
    ws.get_mut().get_mut().set_read_timeout(Some(WAIT)).unwrap();
    ws.send(Message::text(json!({"type": "set", "key": "after", "value": "idle"}).to_string())).unwrap();
    let echo = loop {
        let frame = next_text(ws);
        if frame["type"] == "set" {
            break frame;
        }
    };
    assert_eq!(echo, json!({"type": "set", "key": "after", "value": "idle"}));
}

/// The change feed through the proxy at `proxy` (TLS, trusting `ca`), followed by curl `-N`: the
/// snapshot, then a write made at the relay (`relay`, with the API key `key`) arrives as its event
/// at once, not when a proxy buffer fills or the stream ends.
pub fn feed_streams_through(proxy: SocketAddr, ca: &Path, relay: SocketAddr, key: &str) {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        process::{Command, Stdio},
    };
    let mut curl = Command::new("curl")
        .args(["-sN", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .arg(format!("https://localhost:{}/api/v1/rooms/proxied/changes", proxy.port()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let mut lines = BufReader::new(curl.stdout.take().unwrap()).lines();
    let mut next = || lines.next().and_then(Result::ok).expect("the stream ended");
    while next() != r#"data: {"keys":{}}"# {}
    let written = Instant::now();
    let mut put = TcpStream::connect(relay).unwrap();
    put.set_read_timeout(Some(WAIT)).unwrap();
    let body = r#""through the proxy""#;
    write!(
        put,
        "PUT /api/v1/rooms/proxied/keys/via HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    put.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    loop {
        let line = next();
        if line.starts_with("data: ") {
            assert!(line.contains(r#""key":"via","value":"through the proxy""#), "{line}");
            break;
        }
    }
    assert!(written.elapsed() < Duration::from_secs(3), "the event waited {:?} in the proxy", written.elapsed());
    let _ = curl.kill();
    let _ = curl.wait();
}
