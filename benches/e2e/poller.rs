//! Many client connections read by a few threads: each thread waits on its sockets with `mio`
//! (epoll) and reads whatever arrives, so thousands of connections cost a few threads, not
//! thousands. Reading also answers the relay's pings, so the connections stay alive as browser
//! tabs do.
//!
//! A connection is either a tungstenite client or, from `connector`, a bare socket whose frames
//! are read here as bytes ([`Raw`]): one `recv` per wake-up (a short read means the socket is
//! drained; epoll wakes the thread again for more), no allocation per frame. Dense scenarios hold
//! tens of thousands of these on the same two cores as the relay, where the harness's CPU per
//! delivered frame is taken from the relay's.

use std::{
    io::{self, Read, Write},
    net::TcpStream,
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use mio::{Events, Interest, Poll, Token, Waker, unix::SourceFd};
use tungstenite::{Message, WebSocket};

use crate::client::closed;

const WAKE: Token = Token(usize::MAX);

/// What a poller thread does with each text frame its connections receive.
pub trait Sink: Send + 'static {
    /// One text frame, received at `at`.
    fn frame(&mut self, text: &str, at: Instant);
}

/// What happened to a poller's connections besides frames.
#[derive(Default)]
pub struct Ended {
    /// When and how each connection that ended before the poller stopped ended.
    pub reasons: Vec<(Instant, String)>,
}

/// A bare client socket past its greeting, and any bytes of its next frames already read.
pub struct Raw {
    /// Non-blocking.
    pub stream: TcpStream,
    /// The start of a frame not yet whole.
    pub pending: Vec<u8>,
}

enum Conn {
    Ws(Box<WebSocket<TcpStream>>),
    Raw(Raw),
}

impl Conn {
    fn fd(&self) -> std::os::fd::RawFd {
        match self {
            Conn::Ws(ws) => ws.get_ref().as_raw_fd(),
            Conn::Raw(raw) => raw.stream.as_raw_fd(),
        }
    }
}

struct Thread<S> {
    tx: mpsc::Sender<Conn>,
    waker: Arc<Waker>,
    join: JoinHandle<(S, Ended)>,
}

/// A set of poller threads; connections are handed out round-robin.
pub struct Pollers<S: Sink> {
    threads: Vec<Thread<S>>,
    next: usize,
    stop: Arc<AtomicBool>,
    /// Connections handed out so far.
    pub added: usize,
}

impl<S: Sink> Pollers<S> {
    /// `n` threads, each with its own sink from `make`.
    pub fn spawn(n: usize, make: impl Fn() -> S) -> Pollers<S> {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n.max(1))
            .map(|i| {
                let poll = Poll::new().expect("mio poll");
                let waker = Arc::new(Waker::new(poll.registry(), WAKE).expect("mio waker"));
                let (tx, rx) = mpsc::channel();
                let (sink, stop) = (make(), Arc::clone(&stop));
                let join = thread::Builder::new()
                    .name(format!("poller-{i}"))
                    .spawn(move || run(poll, rx, sink, &stop))
                    .expect("spawn poller");
                Thread { tx, waker, join }
            })
            .collect();
        Pollers { threads, next: 0, stop, added: 0 }
    }

    /// Hands a connection (already non-blocking) to the next thread.
    pub fn add(&mut self, ws: WebSocket<TcpStream>) {
        let t = &self.threads[self.next % self.threads.len()];
        self.next += 1;
        self.added += 1;
        if t.tx.send(Conn::Ws(Box::new(ws))).is_ok() {
            let _ = t.waker.wake();
        }
    }

    /// Hands out several bare connections, waking each thread once.
    pub fn add_raw(&mut self, batch: Vec<Raw>) {
        let mut woken = vec![false; self.threads.len()];
        for raw in batch {
            let i = self.next % self.threads.len();
            self.next += 1;
            self.added += 1;
            woken[i] |= self.threads[i].tx.send(Conn::Raw(raw)).is_ok();
        }
        for (t, _) in self.threads.iter().zip(woken).filter(|(_, w)| *w) {
            let _ = t.waker.wake();
        }
    }

    /// Stops the threads, closes every connection (by dropping it), returns each thread's sink.
    pub fn finish(self) -> Vec<(S, Ended)> {
        self.stop.store(true, Ordering::Release);
        self.threads
            .into_iter()
            .map(|t| {
                let _ = t.waker.wake();
                t.join.join().expect("poller thread panicked")
            })
            .collect()
    }
}

fn run<S: Sink>(mut poll: Poll, rx: mpsc::Receiver<Conn>, mut sink: S, stop: &AtomicBool) -> (S, Ended) {
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut ended = Ended::default();
    let mut events = Events::with_capacity(1024);
    while !stop.load(Ordering::Acquire) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(50))) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("poll: {e}");
        }
        for event in &events {
            if event.token() == WAKE {
                while let Ok(conn) = rx.try_recv() {
                    let i = conns.len();
                    let fd = conn.fd();
                    poll.registry().register(&mut SourceFd(&fd), Token(i), Interest::READABLE).expect("register");
                    conns.push(Some(conn));
                    // Frames may already sit in the client's buffer (read along with the snapshot).
                    drain(&mut conns[i], &mut poll, &mut sink, &mut ended);
                }
            } else {
                drain(&mut conns[event.token().0], &mut poll, &mut sink, &mut ended);
            }
        }
    }
    (sink, ended)
}

/// Reads what arrived (edge-triggered readiness: all of it) and answers pings; an ended
/// connection is deregistered and dropped.
fn drain<S: Sink>(slot: &mut Option<Conn>, poll: &mut Poll, sink: &mut S, ended: &mut Ended) {
    let outcome = match slot {
        None => return,
        Some(Conn::Ws(ws)) => drain_ws(ws, sink, ended),
        Some(Conn::Raw(raw)) => drain_raw(raw, sink, ended),
    };
    if let (Some(error), Some(conn)) = (outcome, slot.as_ref()) {
        ended.reasons.extend(error.map(|e| (Instant::now(), e)));
        let _ = poll.registry().deregister(&mut SourceFd(&conn.fd()));
        *slot = None;
    }
}

/// `None`: open; `Some(why)`: ended (`why` is `None` for a plain close).
type Outcome = Option<Option<String>>;

/// Reads until the socket would block, then sends pending pongs (tungstenite queues them).
fn drain_ws<S: Sink>(ws: &mut WebSocket<TcpStream>, sink: &mut S, ended: &mut Ended) -> Outcome {
    let outcome = loop {
        match ws.read() {
            Ok(Message::Text(text)) => sink.frame(text.as_str(), Instant::now()),
            Ok(Message::Close(frame)) => ended.reasons.push((Instant::now(), closed(frame.as_ref()))),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break None,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break Some(None),
            Err(e) => break Some(Some(format!("read: {e}"))),
        }
    };
    if outcome.is_none() {
        let _ = ws.flush();
    }
    outcome
}

/// Reads what arrived on a bare socket and handles its whole frames; keeps a partial one.
fn drain_raw<S: Sink>(raw: &mut Raw, sink: &mut S, ended: &mut Ended) -> Outcome {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match raw.stream.read(&mut buf) {
            Ok(0) => return Some(None),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(Some(format!("read: {e}"))),
        };
        let at = Instant::now();
        let mut data = std::mem::take(&mut raw.pending);
        let bytes: &[u8] = if data.is_empty() {
            &buf[..n]
        } else {
            data.extend_from_slice(&buf[..n]);
            &data
        };
        let mut used = 0;
        while let Some((opcode, payload, end)) = server_frame(&bytes[used..]) {
            used += end;
            match opcode {
                0x1 => match std::str::from_utf8(payload) {
                    Ok(text) => sink.frame(text, at),
                    Err(_) => return Some(Some("a text frame that is not UTF-8".to_owned())),
                },
                0x8 => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let reason = payload.get(2..).map(String::from_utf8_lossy).unwrap_or_default();
                    ended.reasons.push((
                        at,
                        match code {
                            Some(code) => format!("closed by the relay: {code} {reason}"),
                            None => "closed by the relay without a code".to_owned(),
                        },
                    ));
                    return Some(None);
                }
                0x9 => {
                    // Pong with the ping's payload (at most 125 bytes), masked with a zero key.
                    let mut pong = vec![0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0];
                    pong.extend_from_slice(payload);
                    if let Err(e) = raw.stream.write_all(&pong) {
                        return Some(Some(format!("pong: {e}")));
                    }
                }
                0xa => {}
                other => return Some(Some(format!("unexpected frame: opcode {other:#x} (or a fragment)"))),
            }
        }
        raw.pending = bytes[used..].to_vec();
        if n < buf.len() {
            return None; // a short read drained the socket; epoll says when more comes
        }
    }
}

/// A whole unmasked, unfragmented server frame at the start of `bytes`: its opcode (with the FIN
/// bit cleared; a fragment gives an opcode above 0xf), its payload and where it ends.
pub fn server_frame(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let opcode = if first & 0x80 != 0 { first & 0x0f } else { 0x10 | (first & 0x0f) };
    let (len, header): (usize, usize) = match second & 0x7f {
        126 => (usize::from(u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?])), 4),
        127 => (usize::try_from(u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?)).ok()?, 10),
        n => (usize::from(n), 2),
    };
    let end = header.checked_add(len)?;
    Some((opcode, bytes.get(header..end)?, end))
}
