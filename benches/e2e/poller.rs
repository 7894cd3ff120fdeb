//! Many client connections read by a few threads: each thread waits on its sockets with `mio`
//! (epoll) and reads whatever arrives, so thousands of connections cost a few threads, not
//! thousands. Reading also answers the relay's pings (tungstenite queues the pong and sends it on
//! the next read or flush), so the connections stay alive as browser tabs do.

use std::{
    io,
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

struct Thread<S> {
    tx: mpsc::Sender<WebSocket<TcpStream>>,
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
        if t.tx.send(ws).is_ok() {
            let _ = t.waker.wake();
        }
    }

    /// Hands out several connections (already non-blocking), waking each thread once.
    pub fn add_all(&mut self, batch: Vec<WebSocket<TcpStream>>) {
        let mut woken = vec![false; self.threads.len()];
        for ws in batch {
            let i = self.next % self.threads.len();
            self.next += 1;
            self.added += 1;
            woken[i] |= self.threads[i].tx.send(ws).is_ok();
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

fn run<S: Sink>(
    mut poll: Poll,
    rx: mpsc::Receiver<WebSocket<TcpStream>>,
    mut sink: S,
    stop: &AtomicBool,
) -> (S, Ended) {
    let mut conns: Vec<Option<WebSocket<TcpStream>>> = Vec::new();
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
                while let Ok(ws) = rx.try_recv() {
                    let i = conns.len();
                    let fd = ws.get_ref().as_raw_fd();
                    poll.registry().register(&mut SourceFd(&fd), Token(i), Interest::READABLE).expect("register");
                    conns.push(Some(ws));
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

/// Reads until the socket would block (edge-triggered readiness), then sends pending pongs.
fn drain<S: Sink>(slot: &mut Option<WebSocket<TcpStream>>, poll: &mut Poll, sink: &mut S, ended: &mut Ended) {
    let Some(ws) = slot.as_mut() else { return };
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
    match outcome {
        None => {
            let _ = ws.flush();
        }
        Some(error) => {
            ended.reasons.extend(error.map(|e| (Instant::now(), e)));
            let fd = ws.get_ref().as_raw_fd();
            let _ = poll.registry().deregister(&mut SourceFd(&fd));
            *slot = None;
        }
    }
}
