//! Test harness: the real `aether-actix` binary on a free loopback port with a temporary ledger,
//! and a blocking WebSocket client with timeouts.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod disk;
pub mod federation;
pub mod nats;
pub mod proxy;

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tempfile::TempDir;
use tungstenite::{Message, WebSocket, protocol::CloseFrame};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running relay process.
pub struct Server {
    pub addr: SocketAddr,
    /// The peer listener, when `[mesh] bind` is set.
    pub mesh: Option<SocketAddr>,
    pub dir: Arc<TempDir>,
    pub config: PathBuf,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the relay with `extra` TOML appended to a config that binds 127.0.0.1:0 and keeps
    /// its ledger in a fresh temporary directory.
    pub fn start(extra: &str) -> Server {
        Self::start_in(Arc::new(tempfile::tempdir().expect("tempdir")), extra)
    }

    /// Starts the relay on the ledger in `dir` (to restart after a crash).
    pub fn start_in(dir: Arc<TempDir>, extra: &str) -> Server {
        let config = dir.path().join("aether.toml");
        let ledger = dir.path().join("ledger.jsonl");
        let static_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("static");
        let sections = [
            ("[server]\n", format!("bind = \"127.0.0.1:0\"\nstatic_dir = {static_dir:?}\n")),
            ("[ledger]\n", format!("path = {ledger:?}\n")),
        ];
        // Base keys go into `extra`'s own section when it has one (TOML forbids repeating it).
        let mut text = extra.to_owned();
        for (header, keys) in sections {
            text = match text.find(header) {
                Some(at) => format!("{}{header}{keys}{}", &text[..at], &text[at + header.len()..]),
                None => format!("{header}{keys}\n{text}"),
            };
        }
        std::fs::write(&config, text).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", std::env::var("AETHER_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aether-actix");
        let log = Arc::new(Mutex::new(String::new()));
        let mesh = Arc::new(Mutex::new(None::<String>));
        let mesh_sink = Arc::clone(&mesh);
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Log first, then report the address: a test reading the log after start sees it.
                {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
                // The mesh listener is logged before the HTTP listener.
                if let Some(rest) = line.split("mesh listening on ").nth(1).and_then(|r| r.split("://").nth(1)) {
                    *mesh_sink.lock().unwrap() = rest.split_whitespace().next().map(str::to_owned);
                } else if let Some(rest) = line.split("listening on http").nth(1).and_then(|r| r.split("://").nth(1)) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr.parse().expect("bound address"),
            Err(_) => {
                let _ = child.kill();
                panic!("relay did not start; log:\n{}", log.lock().unwrap());
            }
        };
        let mesh = mesh.lock().unwrap().as_deref().map(|a| a.parse().expect("mesh address"));
        Server { addr, mesh, dir, config, child, log }
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.dir.path().join("ledger.jsonl")
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The peer listener's URL (`ws://`).
    pub fn mesh_url(&self) -> String {
        format!("ws://{}", self.mesh.expect("no [mesh] bind"))
    }

    /// `/healthz` as JSON.
    pub fn healthz(&self) -> Value {
        serde_json::from_str(&self.get("/healthz").1).expect("healthz JSON")
    }

    /// Everything the relay logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Opens a client and reads `hello` + `snapshot`.
    pub fn client(&self) -> Client {
        Client::connect(&self.url())
    }

    /// `kill -9`.
    pub fn kill9(mut self) -> Arc<TempDir> {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait");
        Arc::clone(&self.dir)
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread drain the last lines.
                thread::sleep(Duration::from_millis(50));
                let log = self.log();
                assert!(!log.contains("panicked"), "the relay panicked:\n{log}");
                return (status, log);
            }
            assert!(Instant::now() < deadline, "relay did not exit after SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path`; returns (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    /// A numeric field of `/healthz`.
    pub fn health(&self, field: &str) -> u64 {
        let body = self.get("/healthz").1;
        let health: Value = serde_json::from_str(&body).expect("healthz JSON");
        health[field].as_u64().unwrap_or_else(|| panic!("no {field} in {body}"))
    }
}

impl Drop for Server {
    /// Stops the relay, and fails the test if the relay panicked anywhere while it ran.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = self.log();
        if !thread::panicking() && log.contains("panicked") {
            panic!("the relay panicked:\n{log}");
        }
    }
}

/// A minimal HTTP/1.1 GET, enough for /healthz and static files.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// How a connection ended.
#[derive(Debug, PartialEq)]
pub enum Closed {
    /// A close frame with this code and reason.
    Frame(u16, String),
    /// The TCP connection ended without a close frame.
    Eof,
}

/// A blocking WebSocket client.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
    pub hello: Value,
    pub snapshot: Value,
}

impl Client {
    /// Connects to `url` and reads the first two frames, which must be hello and snapshot.
    pub fn connect(url: &str) -> Client {
        let mut ws = Self::raw(url);
        let hello = recv_json(&mut ws);
        let snapshot = recv_json(&mut ws);
        assert_eq!(hello["type"], "hello", "first frame: {hello}");
        // (v2 clients resuming get a "delta" instead.)
        assert!(snapshot["type"] == "snapshot" || snapshot["type"] == "delta", "second frame: {snapshot}");
        Client { ws, hello, snapshot }
    }

    /// Connects without reading anything.
    pub fn raw(url: &str) -> WebSocket<TcpStream> {
        Self::try_raw(url, &[]).expect("websocket handshake")
    }

    /// Connects with extra request headers; the HTTP status on refusal.
    pub fn try_raw(url: &str, headers: &[(&str, &str)]) -> Result<WebSocket<TcpStream>, u16> {
        let authority = url.trim_start_matches("ws://").split('/').next().unwrap();
        let stream = TcpStream::connect(authority).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self::handshake(url, headers, stream)
    }

    /// The WebSocket handshake over an already connected stream.
    pub fn handshake(url: &str, headers: &[(&str, &str)], stream: TcpStream) -> Result<WebSocket<TcpStream>, u16> {
        use tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("request");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(), value.parse().unwrap());
        }
        match tungstenite::client(request, stream) {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                Err(response.status().as_u16())
            }
            Err(err) => panic!("handshake failed: {err}"),
        }
    }

    /// Connects with extra request headers and reads `hello` + `snapshot`.
    pub fn connect_with(url: &str, headers: &[(&str, &str)]) -> Client {
        let mut ws = Self::try_raw(url, headers).expect("websocket handshake");
        let (hello, snapshot) = (recv_json(&mut ws), recv_json(&mut ws));
        assert_eq!((hello["type"].as_str(), snapshot["type"].as_str()), (Some("hello"), Some("snapshot")));
        Client { ws, hello, snapshot }
    }

    pub fn id(&self) -> String {
        self.hello["id"].as_str().unwrap().to_owned()
    }

    pub fn send(&mut self, value: Value) {
        self.send_text(&value.to_string());
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    pub fn set(&mut self, key: &str, value: Value) {
        self.send(json!({"type": "set", "key": key, "value": value}));
    }

    pub fn delete(&mut self, key: &str) {
        self.send(json!({"type": "delete", "key": key}));
    }

    /// The next JSON frame.
    pub fn recv(&mut self) -> Value {
        recv_json(&mut self.ws)
    }

    /// Reads frames until one matches; returns it.
    pub fn recv_until(&mut self, pred: impl FnMut(&Value) -> bool) -> Value {
        self.recv_until_within(WAIT, pred)
    }

    /// Reads frames until one matches within `wait`; returns it.
    pub fn recv_until_within(&mut self, wait: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no matching frame within {wait:?}");
            if let Some(frame) = self.next_within(left)
                && pred(&frame)
            {
                return frame;
            }
        }
    }

    /// Waits for the echo of a set of `key`.
    pub fn recv_set(&mut self, key: &str) -> Value {
        self.recv_until(|f| f["type"] == "set" && f["key"] == key)
    }

    /// Reads until the connection ends; returns how.
    pub fn closed(&mut self) -> Closed {
        wait_closed(&mut self.ws)
    }

    /// The next JSON frame if one arrives within `wait` (pings are answered and skipped).
    pub fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            self.ws.get_mut().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(Message::Text(text)) => break Some(serde_json::from_str(&text).expect("frame is JSON")),
                Ok(Message::Ping(_) | Message::Pong(_)) if Instant::now() < deadline => continue,
                Ok(Message::Ping(_) | Message::Pong(_)) => break None,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break None;
                }
                other => panic!("connection ended: {other:?}"),
            }
        };
        self.ws.get_mut().set_read_timeout(Some(WAIT)).unwrap();
        result
    }
}

/// The next text frame as JSON (pings and pongs skipped).
pub fn recv_json(ws: &mut WebSocket<TcpStream>) -> Value {
    loop {
        match ws.read().expect("read frame") {
            Message::Text(text) => return serde_json::from_str(&text).expect("frame is JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads until the connection ends; returns the close frame if any.
pub fn wait_closed(ws: &mut WebSocket<TcpStream>) -> Closed {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "connection not closed within {WAIT:?}");
        match ws.read() {
            Ok(Message::Close(Some(CloseFrame { code, reason }))) => {
                return Closed::Frame(u16::from(code), reason.to_string());
            }
            Ok(Message::Close(None)) => return Closed::Frame(1005, String::new()),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                panic!("connection not closed within {WAIT:?}")
            }
            Err(_) => return Closed::Eof,
        }
    }
}

/// A loopback port the OS considers free right now (for processes that must be told their port,
/// or whose address others must know up front).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` until it holds (or fails after [`WAIT`]).
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_within(WAIT, what, cond);
}

/// Polls `cond` until it holds; fails the test after `limit`.
pub fn wait_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `wss://` client of `server`, trusting the certificates in `ca` (the system's when `None`).
pub fn wss_connect(
    server: &Server,
    ca: Option<&Path>,
) -> Result<WebSocket<openssl::ssl::SslStream<TcpStream>>, String> {
    let mut connector = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).unwrap();
    if let Some(ca) = ca {
        connector.set_ca_file(ca).unwrap();
    }
    let tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let tls = connector.build().connect("localhost", tcp).map_err(|err| err.to_string())?;
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    tungstenite::client(url, tls).map(|(ws, _)| ws).map_err(|err| err.to_string())
}

/// A WebSocket upgrade done by hand over plain TCP, for clients that must not answer pings.
pub fn raw_upgrade(addr: SocketAddr, path: &str) -> TcpStream {
    upgrade_over(TcpStream::connect(addr).expect("connect"), addr, path)
}

/// [`raw_upgrade`] over a connection the caller made (with its own socket options).
pub fn upgrade_over(mut tcp: TcpStream, addr: SocketAddr, path: &str) -> TcpStream {
    use std::io::{Read, Write};
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        tcp,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("read response head");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    tcp
}

/// The value of the first `/metrics` line that starts with `line_start` (0 when there is none).
pub fn metric(server: &Server, line_start: &str) -> f64 {
    let text = server.get("/metrics").1;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Reads server frames (unmasked) until the connection ends; returns (opcode, payload) pairs.
pub fn read_raw_frames(tcp: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let _ = tcp.read_to_end(&mut bytes);
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= bytes.len() {
        let opcode = bytes[at] & 0x0f;
        let (len, header) = match bytes[at + 1] & 0x7f {
            126 => (u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize, 4),
            127 => (u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        let end = (at + header + len).min(bytes.len());
        frames.push((opcode, bytes[at + header..end].to_vec()));
        at = end;
    }
    frames
}

/// The close frame among raw frames, as a [`Closed`].
pub fn raw_close(frames: &[(u8, Vec<u8>)]) -> Closed {
    match frames.iter().find(|(op, _)| *op == 0x8) {
        Some((_, payload)) if payload.len() >= 2 => Closed::Frame(
            u16::from_be_bytes([payload[0], payload[1]]),
            String::from_utf8_lossy(&payload[2..]).into_owned(),
        ),
        Some(_) => Closed::Frame(1005, String::new()),
        None => Closed::Eof,
    }
}

/// A masked client frame: `head` is the first byte (FIN, RSV, opcode).
pub fn client_frame(head: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![head];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Writes a self-signed certificate for `localhost` / 127.0.0.1 and its key into `dir`.
pub fn make_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    use openssl::{
        asn1::Asn1Time,
        bn::BigNum,
        hash::MessageDigest,
        pkey::PKey,
        rsa::Rsa,
        x509::{X509, X509NameBuilder, extension::SubjectAlternativeName},
    };
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap()).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(2).unwrap()).unwrap();
    let san = SubjectAlternativeName::new().dns("localhost").ip("127.0.0.1").build(&cert.x509v3_context(None, None));
    cert.append_extension(san.unwrap()).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.build().to_pem().unwrap()).unwrap();
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (cert_path, key_path)
}

/// Top-level field names of a documented frame like `{"type": "set", "key": "<str>", ...}`.
pub fn documented_fields(line: &str) -> (String, std::collections::BTreeSet<String>) {
    let mut fields = std::collections::BTreeSet::new();
    let (mut depth, mut chars) = (0, line.char_indices().peekable());
    while let Some((i, c)) = chars.next() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            '"' => {
                let end = line[i + 1..].find('"').map(|e| i + 1 + e).expect("closing quote");
                let name = &line[i + 1..end];
                while chars.peek().is_some_and(|(j, _)| *j <= end) {
                    chars.next();
                }
                if depth == 1 && line[end + 1..].trim_start().starts_with(':') {
                    fields.insert(name.to_owned());
                }
            }
            _ => {}
        }
    }
    let ty = line.split("\"type\":").nth(1).and_then(|s| s.split('"').nth(1)).expect("type").to_owned();
    (ty, fields)
}

/// A documented frame: its type and exact top-level fields.
pub type Documented = (String, std::collections::BTreeSet<String>);

/// The frames of the README block between `<!-- name -->` markers: (browser -> relay, relay -> browser).
pub fn readme_protocol_block(readme: &str, name: &str) -> (Vec<Documented>, Vec<Documented>) {
    let block = readme
        .split(&format!("<!-- {name} -->"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("<!-- /{name} -->")).next())
        .unwrap_or_else(|| panic!("README has a block between <!-- {name} --> markers"));
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    let mut direction = None;
    for line in block.lines().map(str::trim) {
        if line.starts_with("Browser -> relay") {
            direction = Some(&mut inbound);
        } else if line.starts_with("Relay -> browser") {
            direction = Some(&mut outbound);
        } else if line.starts_with('{') {
            direction.as_mut().expect("a direction heading first").push(documented_fields(line));
        }
    }
    (inbound, outbound)
}

/// A Python that imports `module`: `$env` if set, else `target/<venv>/bin/python` (tests/run.sh
/// makes `closes-venv`, a current `websockets`, and `upstream-venv`, upstream's `aether-zta==0.4.0`
/// with its `websockets`); panics saying how to get one.
pub fn python_with(env: &str, venv: &str, module: &str) -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(venv).join("bin/python");
    let mut candidates = std::env::var_os(env).map(PathBuf::from).into_iter().chain([venv]);
    let imports = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    candidates.find(imports).unwrap_or_else(|| {
        panic!("no Python that imports {module}: set {env}, or run tests/run.sh once to create the venv under target/")
    })
}

/// A Python with a current `websockets` (sync and asyncio clients): a client that is not ours.
pub fn websockets_python() -> PathBuf {
    python_with("AETHER_CLOSES_PYTHON", "closes-venv", "websockets")
}

/// The Python of upstream's venv, which imports `aether_core` (Aether-Core 0.4.0).
pub fn upstream_python() -> &'static Path {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(|| python_with("AETHER_UPSTREAM_PYTHON", "upstream-venv", "aether_core"))
}
