//! The change feed (ours only): 100 readers follow one room's Server-Sent Events
//! (`GET /api/v1/rooms/{room}/changes`) while one WebSocket client writes 1,000 ops/s; the delay
//! from a write being sent to each reader finding its event, percentiles over every (reader,
//! event). Beside it, the same with v2 WebSocket readers. Each write carries its send time (ns
//! since the epoch) as its value; readers find it in the text, without parsing JSON.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tungstenite::Message;

use crate::{
    api,
    client::Client,
    procs::{Launch, OursConfig, Relay, stop_and_check},
};

/// One run's deliveries.
pub struct Delivery {
    /// Delays, sorted.
    pub delays: Vec<Duration>,
    /// Deliveries expected (readers x writes).
    pub expected: usize,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The send time a `set` carries as its value.
fn sent_at(text: &str) -> Option<u64> {
    let (_, rest) = text.split_once(r#""value":"#)?;
    rest.split([',', '}']).next()?.parse().ok()
}

/// An SSE reader: the HTTP request, then the chunked body, event by event.
struct Sse {
    reader: BufReader<TcpStream>,
    text: String,
}

impl Sse {
    fn open(addr: SocketAddr, room: &str) -> Result<Sse, String> {
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        let request = format!(
            "GET /api/v1/rooms/{room}/changes HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
            api::KEY
        );
        stream.write_all(request.as_bytes()).map_err(|e| format!("send: {e}"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("status: {e}"))?;
        if !line.contains(" 200 ") {
            return Err(format!("status line {line:?}"));
        }
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(|e| format!("headers: {e}"))?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        Ok(Sse { reader, text: String::new() })
    }

    /// Reads one chunk of the body into `text`; false at its end.
    fn fill(&mut self) -> bool {
        let mut size = String::new();
        if self.reader.read_line(&mut size).unwrap_or(0) == 0 {
            return false;
        }
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { return false };
        if n == 0 {
            return false;
        }
        let mut chunk = vec![0; n + 2];
        if self.reader.read_exact(&mut chunk).is_err() {
            return false;
        }
        self.text.push_str(&String::from_utf8_lossy(&chunk[..n]));
        true
    }

    /// The next event's text, if the stream goes on.
    fn next_event(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.text.find("\n\n") {
                return Some(self.text.drain(..at + 2).collect());
            }
            if !self.fill() {
                return None;
            }
        }
    }
}

/// One run: `readers` readers (SSE, or v2 WebSocket with `websocket`), `rate` writes/s for `secs`.
pub fn run(
    launch: &Launch,
    readers: usize,
    rate: u64,
    secs: u64,
    websocket: bool,
    notes: &mut Vec<String>,
) -> Option<Delivery> {
    let cfg = OursConfig { mesh: api::config(), ..OursConfig::default() };
    let mut relay = Relay::ours(launch, &cfg);
    relay.wait_healthy();
    let addr = relay.addr;
    let total = (rate * secs) as usize;
    let ws_url = format!("{}?v=2&room=bench", relay.url());
    let mut threads = Vec::new();
    for _ in 0..readers {
        let mut sse = None;
        let mut ws = None;
        if websocket {
            ws = Some(Client::connect(addr, &ws_url).ok()?.ws);
        } else {
            let mut feed = Sse::open(addr, "bench").map_err(|e| notes.push(format!("feed: {e}"))).ok()?;
            feed.next_event()?; // the snapshot
            sse = Some(feed);
        }
        threads.push(thread::spawn(move || {
            let mut delays = Vec::with_capacity(total);
            while delays.len() < total {
                let text = match (&mut sse, &mut ws) {
                    (Some(feed), _) => match feed.next_event() {
                        Some(text) => text,
                        None => break,
                    },
                    (None, Some(ws)) => match ws.read() {
                        Ok(Message::Text(text)) => text.to_string(),
                        Ok(_) => continue,
                        Err(_) => break,
                    },
                    (None, None) => break,
                };
                if let Some(sent) = sent_at(&text) {
                    delays.push(Duration::from_nanos(now_ns().saturating_sub(sent)));
                }
            }
            delays
        }));
    }
    let mut writer = Client::connect(addr, &ws_url).ok()?;
    let started = Instant::now();
    for i in 0..total as u64 {
        let due = started + Duration::from_nanos(i * 1_000_000_000 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let frame = format!(r#"{{"type":"set","key":"k{}","value":{}}}"#, i % 100, now_ns());
        if writer.ws.send(Message::text(frame)).is_err() {
            notes.push("feed: the writer's connection failed".into());
            break;
        }
    }
    let mut delays = Vec::with_capacity(total * readers);
    for t in threads {
        delays.extend(t.join().unwrap_or_default());
    }
    drop(writer);
    notes.extend(stop_and_check(
        &mut relay,
        if websocket { "feed: websocket readers" } else { "feed: sse readers" },
        None,
    ));
    delays.sort_unstable();
    Some(Delivery { delays, expected: total * readers })
}
