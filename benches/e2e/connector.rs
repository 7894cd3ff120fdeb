//! Opens many WebSocket connections from one thread, several at once, as cheaply as a client can:
//! non-blocking connects from a chosen loopback source address, driven by epoll (`mio`); a fixed
//! upgrade request; the `101` response and the first two frames (`hello`, `snapshot`) read as
//! bytes; one masked first frame (`auth`) written. The socket then goes to the pollers as a
//! bare [`Raw`] connection.
//!
//! A blocking tungstenite client per connect cost this harness about as much CPU as the relay
//! spent accepting (a random key, an `http` request, three blocking reads and two thread
//! hand-offs per connection), on the same two cores: the connect rate it measured was as much the
//! harness's as the relay's. The relay's side of the handshake is the same either way.

use std::{
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Token, unix::SourceFd};
use socket2::{Domain, Socket, Type};

use crate::poller::{Raw, server_frame};

/// The key every connection sends, and the `Sec-WebSocket-Accept` RFC 6455 derives from it (the
/// example of its section 1.3).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// `{"type":"auth"}` as a client frame: FIN + text, masked, 15 bytes, mask key 0 (the payload
/// goes as is).
const AUTH_FRAME: &[u8] = b"\x81\x8f\0\0\0\0{\"type\":\"auth\"}";

/// One connection that completed its greeting.
pub struct Opened {
    /// Non-blocking, with whatever the relay sent after `snapshot`.
    pub raw: Raw,
    /// From the start of its connect to its first frame written.
    pub took: Duration,
}

/// What to open and how.
pub struct Plan {
    /// The relay.
    pub addr: SocketAddr,
    /// Path of its WebSocket endpoint (`/ws`, or `/` for upstream).
    pub path: String,
    /// Source addresses, used in turn.
    pub sources: Vec<IpAddr>,
    /// Connects in flight at once on this thread.
    pub in_flight: usize,
    /// A connect that has not completed its greeting after this long fails.
    pub timeout: Duration,
}

enum Stage {
    Connecting,
    /// The upgrade request is (partly) written; `usize` bytes of it so far.
    Upgrading(usize),
}

struct Pending {
    stream: TcpStream,
    stage: Stage,
    read: Vec<u8>,
    started: Instant,
}

/// Opens connections while `next()` gives a go (`Some(due)`: start it no earlier than `due`),
/// `plan.in_flight` at a time, handing each outcome to `done`.
pub fn run(plan: &Plan, mut next: impl FnMut() -> Option<Instant>, mut done: impl FnMut(Result<Opened, String>)) {
    let mut poll = Poll::new().expect("mio poll");
    let mut events = Events::with_capacity(256);
    let mut slots: Vec<Option<Pending>> = (0..plan.in_flight.max(1)).map(|_| None).collect();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        plan.path, plan.addr
    );
    let (mut opened, mut exhausted, mut waiting_until) = (0usize, false, None::<Instant>);
    loop {
        // Fill the free slots.
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.is_some() || exhausted {
                continue;
            }
            if waiting_until.is_some_and(|due| Instant::now() < due) {
                break;
            }
            if waiting_until.take().is_none() {
                match next() {
                    None => {
                        exhausted = true;
                        continue;
                    }
                    Some(due) if Instant::now() < due => {
                        waiting_until = Some(due);
                        break;
                    }
                    Some(_) => {}
                }
            }
            let source = plan.sources[opened % plan.sources.len()];
            opened += 1;
            match start(source, plan.addr) {
                Ok(stream) => {
                    let fd = stream.as_raw_fd();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    poll.registry().register(&mut SourceFd(&fd), Token(i), interest).expect("register");
                    *slot =
                        Some(Pending { stream, stage: Stage::Connecting, read: Vec::new(), started: Instant::now() });
                }
                Err(e) => done(Err(e)),
            }
        }
        if exhausted && slots.iter().all(Option::is_none) {
            return;
        }
        let wait = waiting_until.map_or(Duration::from_millis(20), |due| due.saturating_duration_since(Instant::now()));
        if let Err(e) = poll.poll(&mut events, Some(wait.min(Duration::from_millis(20)))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        for event in &events {
            let slot = &mut slots[event.token().0];
            let Some(pending) = slot.as_mut() else { continue };
            match advance(pending, request.as_bytes()) {
                Ok(None) => {}
                outcome => {
                    let pending = slot.take().expect("slot");
                    let fd = pending.stream.as_raw_fd();
                    let _ = poll.registry().deregister(&mut SourceFd(&fd));
                    done(outcome.and_then(|end| finish(pending, end.expect("greeting complete"))));
                }
            }
        }
        // Connects that take too long fail (a SYN the kernel dropped is retried after 1 s, so
        // the timeout is well above that).
        for slot in &mut slots {
            if slot.as_ref().is_some_and(|p| p.started.elapsed() > plan.timeout) {
                let pending = slot.take().expect("slot");
                let fd = pending.stream.as_raw_fd();
                let _ = poll.registry().deregister(&mut SourceFd(&fd));
                done(Err(format!("no greeting within {:?}", plan.timeout)));
            }
        }
    }
}

/// A non-blocking connect from `source`, under way.
fn start(source: IpAddr, addr: SocketAddr) -> Result<TcpStream, String> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
    socket.bind(&SocketAddr::new(source, 0).into()).map_err(|e| format!("bind {source}: {e}"))?;
    socket.set_nonblocking(true).map_err(|e| format!("nonblocking: {e}"))?;
    socket.set_tcp_nodelay(true).map_err(|e| format!("nodelay: {e}"))?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(format!("connect: {e}")),
    }
    Ok(socket.into())
}

/// Moves a connection on as far as it can go now; `Ok(Some(end of snapshot))` once `hello` and
/// `snapshot` are in.
fn advance(p: &mut Pending, request: &[u8]) -> Result<Option<usize>, String> {
    if let Stage::Connecting = p.stage {
        match p.stream.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => return Err(format!("connect: {e}")),
        }
        match p.stream.peer_addr() {
            Ok(_) => p.stage = Stage::Upgrading(0),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(None),
            Err(e) => return Err(format!("connect: {e}")),
        }
    }
    if let Stage::Upgrading(sent) = &mut p.stage
        && *sent < request.len()
    {
        match p.stream.write(&request[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(format!("upgrade request: {e}")),
        }
        if *sent < request.len() {
            return Ok(None);
        }
    }
    let mut buf = [0u8; 4096];
    loop {
        match p.stream.read(&mut buf) {
            Ok(0) => return Err(format!("closed during the greeting after {} bytes", p.read.len())),
            Ok(n) => p.read.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    greeting(&p.read)
}

/// Checks the `101` and the first two frames in `read`: `Some(end of snapshot)` once both are in.
fn greeting(read: &[u8]) -> Result<Option<usize>, String> {
    let Some(head_end) = read.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4) else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&read[..head_end]);
    if !head.starts_with("HTTP/1.1 101") || !head.contains(ACCEPT) {
        return Err(format!("upgrade refused: {:.200}", head));
    }
    let mut at = head_end;
    for expected in ["hello", "snapshot"] {
        let Some((opcode, payload, end)) = server_frame(&read[at..]) else { return Ok(None) };
        if opcode != 0x1 {
            return Err(format!("expected a whole text frame ({expected}), got opcode {opcode:#x}"));
        }
        let needle = format!(r#""type":"{expected}""#);
        if !payload.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            return Err(format!("expected {expected}, got {:.120}", String::from_utf8_lossy(payload)));
        }
        at += end;
    }
    Ok(Some(at))
}

/// Writes the first frame; the socket, with what followed `snapshot` (from `end` on), is ready
/// for a poller.
fn finish(mut p: Pending, end: usize) -> Result<Opened, String> {
    // 19 bytes into an empty send buffer of a fresh socket: written whole or the socket failed.
    match p.stream.write(AUTH_FRAME) {
        Ok(n) if n == AUTH_FRAME.len() => {}
        Ok(n) => return Err(format!("first frame: only {n} bytes written")),
        Err(e) => return Err(format!("first frame: {e}")),
    }
    let took = p.started.elapsed();
    let pending = p.read.split_off(end);
    Ok(Opened { raw: Raw { stream: p.stream, pending }, took })
}
