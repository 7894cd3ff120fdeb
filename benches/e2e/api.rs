//! Durable writes through the HTTP API: N clients, each on one keep-alive HTTP/1.1 connection,
//! each sending `PUT /api/v1/rooms/_/keys/<key>` and waiting for its answer (which comes only once
//! the write is durable) before the next. The same writes over WebSocket with one write in flight
//! per connection are `throughput::run(relay, N, 1, secs)`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use crate::{procs::Relay, util::cpu_secs};

/// The API key the bench's relay is started with (`[api] key`).
pub const KEY: &str = "the-benchmark-api-key-0123456789";

/// The TOML that turns the API on.
pub fn config() -> String {
    format!("[api]\nkey = \"{KEY}\"\n")
}

/// The outcome of one run.
pub struct ApiThroughput {
    /// Measured window.
    pub secs: f64,
    /// Writes answered 200 inside the window.
    pub acked: u64,
    /// Request-to-answer times in the window, sorted.
    pub latency: Vec<Duration>,
    /// Clients that failed, and why.
    pub errors: Vec<String>,
    /// CPU the relay and this process used in the window, seconds.
    pub relay_cpu: f64,
    pub bench_cpu: f64,
}

impl ApiThroughput {
    /// Durable writes answered per second.
    pub fn rate(&self) -> f64 {
        self.acked as f64 / self.secs
    }
}

/// Reads one response on a keep-alive connection; returns its status.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "head not UTF-8")?;
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .ok_or("no content-length")?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed in a body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(status)
}

fn client(addr: SocketAddr, id: usize, start: &Barrier, secs: f64) -> (u64, Vec<Duration>, Option<String>) {
    let (mut acked, mut latency) = (0, Vec::new());
    let result = (|| -> Result<(), String> {
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        let mut buf = Vec::with_capacity(4096);
        start.wait();
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        while Instant::now() < deadline {
            let body = format!("{{\"n\":{n},\"pad\":\"bench-value\"}}");
            let request = format!(
                "PUT /api/v1/rooms/_/keys/h{id:03}:{n} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                addr,
                body.len()
            );
            let sent = Instant::now();
            stream.write_all(request.as_bytes()).map_err(|e| format!("write: {e}"))?;
            let status = read_response(&mut stream, &mut buf)?;
            if status != 200 {
                return Err(format!("PUT answered {status}: {}", String::from_utf8_lossy(&buf)));
            }
            if Instant::now() <= deadline {
                acked += 1;
                latency.push(sent.elapsed());
            }
            n += 1;
        }
        Ok(())
    })();
    (acked, latency, result.err())
}

/// `conns` HTTP clients, one durable PUT in flight each, for `secs`.
pub fn run(relay: &Relay, conns: usize, secs: f64) -> ApiThroughput {
    let start = Arc::new(Barrier::new(conns + 1));
    let handles: Vec<_> = (0..conns)
        .map(|id| {
            let (addr, start) = (relay.addr, Arc::clone(&start));
            thread::Builder::new()
                .name(format!("http-{id}"))
                .spawn(move || client(addr, id, &start, secs))
                .expect("spawn a client thread")
        })
        .collect();
    let (relay_before, bench_before) = (relay.cpu_secs(), cpu_secs("self"));
    start.wait();
    thread::sleep(Duration::from_secs_f64(secs));
    let (relay_cpu, bench_cpu) = (relay.cpu_secs() - relay_before, cpu_secs("self") - bench_before);
    let mut t = ApiThroughput { secs, acked: 0, latency: Vec::new(), errors: Vec::new(), relay_cpu, bench_cpu };
    for handle in handles {
        match handle.join() {
            Ok((acked, latency, error)) => {
                t.acked += acked;
                t.latency.extend(latency);
                t.errors.extend(error);
            }
            Err(_) => t.errors.push("a client panicked".into()),
        }
    }
    t.latency.sort();
    t
}
