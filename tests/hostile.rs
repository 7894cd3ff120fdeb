//! Clients that misbehave on purpose: nobody else may notice.

mod common;

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use common::{Client, Closed, Server};
use serde_json::json;
use tungstenite::Message;

const FAST: &str = "[limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n";

/// One client stops reading; the others keep round-tripping at full speed and the stalled one is
/// closed once its bounded queue is full.
#[test]
fn a_client_that_stops_reading_is_closed_and_nobody_waits_for_it() {
    let server = Server::start(FAST);
    let mut stalled = server.client();
    stalled.ws.get_mut().set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (mut writer, mut bystander) = (server.client(), server.client());
    let big = "x".repeat(30_000);
    let stalled_id = stalled.id();
    let mut left = false;
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut i = 0;
    // Push far more than the stalled client's socket buffers and queue can hold (tens of MB).
    while !server.log().contains("read too slowly") {
        assert!(started.elapsed() < Duration::from_secs(60), "stalled client never disconnected");
        for _ in 0..20 {
            writer.set(&format!("big:{i}"), json!(big));
            i += 1;
        }
        let t = Instant::now();
        bystander.set("probe", json!(i));
        bystander.recv_until(|f| {
            left |= f["type"] == "presence-leave" && f["id"] == stalled_id;
            f["key"] == "probe" && f["value"] == i
        });
        worst = worst.max(t.elapsed());
        // Keep the writer's own socket drained so only `stalled` falls behind.
        while writer.next_within(Duration::from_millis(1)).is_some() {}
    }
    assert!(worst < Duration::from_secs(2), "a bystander round trip took {worst:?} while a client stalled");
    // The stalled client finds, after whatever was already buffered, a 1013 or an ended connection.
    let ended = loop {
        match stalled.ws.read() {
            Ok(Message::Close(Some(frame))) => break Closed::Frame(frame.code.into(), frame.reason.to_string()),
            Ok(_) => continue,
            Err(_) => break Closed::Eof,
        }
    };
    assert!(matches!(&ended, Closed::Eof) || ended == Closed::Frame(1013, "too slow".into()), "{ended:?}");
    // And the bystander saw the stalled client leave.
    if !left {
        bystander.recv_until(|f| f["type"] == "presence-leave" && f["id"] == stalled_id);
    }
}

/// A thousand connections abandoned at every stage of the handshake, from one source, leave no
/// slot behind: a normal client connects afterwards.
#[test]
fn a_thousand_aborted_handshakes_leak_no_connection_slot() {
    use std::io::Write;
    let server =
        Server::start("[limits]\nmax_connections_per_source = 4\nhandshake_timeout_s = 2.0\n[auth]\ntoken = \"t\"\n");
    let url = server.url();
    for i in 0..1000 {
        match i % 4 {
            // Half an HTTP request, then gone.
            0 => {
                let mut tcp = TcpStream::connect(server.addr).unwrap();
                let _ = tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: webs");
            }
            // Upgraded, then gone while the relay waits for the auth frame (upstream leaked here).
            1 => drop(Client::try_raw(&url, &[])),
            // Upgraded, half an auth frame, then gone.
            2 => {
                if let Ok(mut ws) = Client::try_raw(&url, &[]) {
                    let _ = ws.get_mut().write_all(&[0x81, 0xfe, 0x00]);
                }
            }
            // Authenticated, then gone without a close frame.
            _ => {
                if let Ok(mut ws) = Client::try_raw(&format!("{url}?auth_token=t"), &[]) {
                    let _ = ws.read();
                }
            }
        }
    }
    common::wait_until("every slot to be released", || server.health("connections") == 0);
    let mut client = Client::connect(&format!("{url}?auth_token=t"));
    client.set("still:open", json!(true));
    client.recv_set("still:open");
}

/// A connection that never answers is closed after the handshake timeout; an idle tab, whose
/// WebSocket stack answers pings, stays.
#[test]
fn a_silent_connection_is_closed_but_an_idle_tab_stays() {
    let server = Server::start("[limits]\nhandshake_timeout_s = 1.0\n[server]\nping_interval_s = 0.3\n");
    let started = Instant::now();
    let mut silent = common::raw_upgrade(server.addr, "/ws");
    let mut idle = server.client();
    // The idle tab reads (its stack answers pings) but sends nothing itself for 3 s; all it hears
    // about is the silent one leaving.
    while started.elapsed() < Duration::from_secs(3) {
        if let Some(frame) = idle.next_within(Duration::from_millis(100)) {
            assert_eq!(frame["type"], "presence-leave", "{frame}");
        }
    }
    idle.set("still", json!("here"));
    assert_eq!(idle.recv(), json!({"type": "set", "key": "still", "value": "here"}));
    // The silent one never answered the ping: hello, snapshot, ping, then closed.
    let frames = common::read_raw_frames(&mut silent);
    assert_eq!(frames.iter().map(|f| f.0).take(3).collect::<Vec<_>>(), [0x1, 0x1, 0x9], "text, text, ping");
    assert_eq!(common::raw_close(&frames), Closed::Frame(1008, "handshake timeout".into()));
}

#[test]
fn origin_allow_list_refuses_other_sites_before_the_upgrade() {
    let server = Server::start("[server]\nallowed_origins = [\"https://app.example.com\"]\n");
    let url = server.url();
    assert_eq!(Client::try_raw(&url, &[("Origin", "https://evil.example")]).err(), Some(403));
    assert_eq!(Client::try_raw(&url, &[("Origin", "null")]).err(), Some(403));
    Client::connect_with(&url, &[("Origin", "https://app.example.com")]);
    Client::connect_with(&url, &[("Origin", "HTTPS://APP.EXAMPLE.COM")]);
    // Non-browser clients send no Origin at all.
    Client::connect(&url);
}

#[test]
fn forwarded_addresses_count_per_source_only_from_trusted_proxies() {
    let limits = "[limits]\nmax_connections_per_source = 2\n";
    let trusting = Server::start(&format!("{limits}[server]\ntrusted_proxies = [\"127.0.0.1\"]\n"));
    let url = trusting.url();
    let xff = |ip: &'static str| [("X-Forwarded-For", ip)];
    let _a1 = Client::connect_with(&url, &xff("198.51.100.1"));
    let _a2 = Client::connect_with(&url, &xff("203.0.113.5, 198.51.100.1"));
    let mut a3 = Client::try_raw(&url, &xff("198.51.100.1")).unwrap();
    assert_eq!(common::wait_closed(&mut a3), Closed::Frame(1013, "server busy".into()));
    let _b = Client::connect_with(&url, &[("X-Real-IP", "198.51.100.2")]);

    let untrusting = Server::start(limits);
    let url = untrusting.url();
    let _c1 = Client::connect_with(&url, &xff("198.51.100.1"));
    let _c2 = Client::connect_with(&url, &xff("198.51.100.2"));
    let mut c3 = Client::try_raw(&url, &xff("198.51.100.3")).unwrap();
    assert_eq!(common::wait_closed(&mut c3), Closed::Frame(1013, "server busy".into()), "spoofed headers ignored");
}

/// Opens a raw TCP connection with a receive buffer of `rcvbuf` bytes (set before connecting, so
/// the kernel does not grow it) and upgrades it to a WebSocket at `path` by hand.
fn small_window_upgrade(addr: std::net::SocketAddr, path: &str, rcvbuf: usize) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(rcvbuf).unwrap();
    socket.connect(&addr.into()).unwrap();
    common::upgrade_over(socket.into(), addr, path)
}

/// Writes masked ping frames (125-byte payloads) until the peer stops taking them (a write
/// blocks for 300 ms) or `max` were sent; returns how many went out.
fn flood_pings(tcp: &mut TcpStream, max: usize) -> usize {
    use std::io::Write;
    let frame = common::client_frame(0x89, &[0u8; 125]);
    let burst: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 64).collect();
    tcp.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut sent = 0;
    while sent < max {
        if tcp.write_all(&burst).is_err() {
            break;
        }
        sent += 64;
    }
    sent
}

/// A client (raw TCP, a tiny receive window) that sends pings and never reads: the pongs fill its
/// window and the relay's socket buffers. It is closed in bounded time and its slot comes back; a
/// well-behaved client is not held up meanwhile.
#[test]
fn a_client_that_pings_and_never_reads_is_closed_and_its_slot_freed() {
    let server = Server::start("[limits]\nhandshake_timeout_s = 1.0\n[server]\nping_interval_s = 0.5\n");
    let mut flooder = small_window_upgrade(server.addr, "/ws", 4096);
    let sent = flood_pings(&mut flooder, 2_000_000);
    assert!(sent < 2_000_000, "the relay kept taking pings: it never stalled on its pongs");
    let mut bystander = server.client();
    bystander.set("during", json!(1));
    bystander.recv_set("during");
    drop(bystander);
    // A pong may wait until the keepalive gives up (2 × ping_interval_s + handshake_timeout_s =
    // 2 s, below write_timeout_s), then 1 s for the close.
    let started = Instant::now();
    common::wait_within(Duration::from_secs(20), "the flooder's slot to be freed", || {
        server.health("connections") == 0
    });
    assert!(started.elapsed() < Duration::from_secs(10), "freed after {:?}", started.elapsed());
    // Closed as too slow (a pong waited 2 s), or by the keepalive when the flood itself lasted
    // that long (its pings do not count as hearing it).
    let metrics = server.get("/metrics").1;
    let closed = |code: u16| metrics.contains(&format!("aether_connections_closed_total{{code=\"{code}\"}} 1"));
    assert!(closed(1013) || closed(1011), "{metrics}");
    drop(flooder);
}

/// The same with protocol v2's own `ping` message: each `pong` is a write like any other, bounded
/// by `write_timeout_s`, so a client that sends pings and never reads is closed as too slow (and
/// counted), not left to hold its session until the kernel gives up on the socket.
#[test]
fn a_v2_client_that_sends_ping_messages_and_never_reads_times_out_as_too_slow() {
    use std::io::Write;
    let server = Server::start(&format!("{FAST}write_timeout_s = 1.0\nhandshake_timeout_s = 1.0\n"));
    let mut flooder = small_window_upgrade(server.addr, "/ws?v=2", 4096);
    let frame = common::client_frame(0x81, br#"{"type":"ping"}"#);
    let burst: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 256).collect();
    flooder.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
    let started = Instant::now();
    // Until the relay stops taking them: it stops reading while a pong waits for the socket.
    while flooder.write_all(&burst).is_ok() {
        assert!(started.elapsed() < Duration::from_secs(30), "the relay kept taking pings: no pong ever waited");
    }
    common::wait_within(Duration::from_secs(15), "the pong's write to time out", || {
        common::metric(&server, "aether_write_timeouts_total{outcome=\"dropped\"}")
            + common::metric(&server, "aether_write_timeouts_total{outcome=\"closed\"}")
            >= 1.0
    });
    common::wait_within(Duration::from_secs(10), "the flooder's slot to be freed", || {
        server.health("connections") == 0
    });
    drop(flooder);
}

/// A client that sends a ping now and then and never reads: too slow to fill any buffer, so no
/// write stalls; its pings do not count as hearing it (they prove it writes, not that it reads),
/// so it meets the keepalive timeout like a silent one, even in a room where nothing happens.
#[test]
fn a_client_that_pings_slowly_and_never_reads_meets_the_keepalive_timeout() {
    use std::io::Write;
    let server = Server::start("[limits]\nhandshake_timeout_s = 1.0\n[server]\nping_interval_s = 0.3\n");
    let mut pinger = small_window_upgrade(server.addr, "/ws", 4096);
    let ping = [0x89, 0x80, 1, 2, 3, 4];
    let started = Instant::now();
    // 2 × 0.3 s + 1 s of no pong: closed after about 1.6 s.
    while server.health("connections") > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "a pinging client that never reads kept its slot");
        let _ = pinger.write_all(&ping);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.get("/metrics").1.contains("aether_connections_closed_total{code=\"1011\"} 1"));
}

/// Whether the relay still holds the TCP connection from the client's local `port` (an
/// established socket on its side, seen by `ss`).
fn relay_holds(server: &Server, port: u16) -> bool {
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "established"])
        .arg(format!("( sport = :{} and dport = :{port} )", server.addr.port()))
        .output()
        .expect("ss (iproute2)");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// A client that stops reading with a few megabytes queued for it, below `max_outbound_bytes`
/// (raw TCP, a tiny receive window): once its socket has taken nothing for `write_timeout_s`
/// (1 s here) it is closed, its slot freed, counted in `/metrics`, and the connection itself is
/// gone from the relay (not held in actix's buffers); keepalive pings meanwhile cannot help it.
#[test]
fn a_socket_that_takes_nothing_for_write_timeout_s_is_dropped_and_counted() {
    let server = Server::start(&format!("{FAST}write_timeout_s = 1.0\n"));
    let mut writer = server.client();
    let big = "x".repeat(30_000);
    for i in 0..100 {
        writer.set(&format!("big:{i}"), json!(big));
    }
    writer.recv_set("big:99");
    let stuck = small_window_upgrade(server.addr, "/ws", 4096);
    let port = stuck.local_addr().unwrap().port();
    common::wait_until("the stuck client to register", || server.health("clients") == 2);
    // Broadcasts it cannot take: 3 MB of snapshot wait in front of them, so actix-ws's channel
    // fills and a write waits on the socket.
    let started = Instant::now();
    for i in 0..200 {
        writer.set(&format!("small:{i}"), json!(i));
    }
    writer.recv_set("small:199");
    let counted = |outcome: &str| {
        server.get("/metrics").1.contains(&format!("aether_write_timeouts_total{{outcome=\"{outcome}\"}} 1"))
    };
    common::wait_within(Duration::from_secs(15), "the stalled write to be counted", || counted("dropped"));
    let took = started.elapsed();
    // 1 s of write timeout, up to 1 s trying to send the close frame it has no room for.
    assert!(took < Duration::from_secs(5), "dropped after {took:?}");
    assert!(!counted("closed"));
    assert_eq!(server.health("connections"), 1, "its slot is freed");
    assert!(server.get("/metrics").1.contains("aether_connections_closed_total{code=\"1013\"} 1"));
    // The kernel gives up on the socket too (TCP_USER_TIMEOUT: the write timeout plus the time to
    // close), so what actix still buffered for it goes as well.
    common::wait_within(Duration::from_secs(10), "the relay to let go of the socket", || !relay_holds(&server, port));
    writer.set("after", json!(1));
    writer.recv_set("after");
    drop(stuck);
}

/// The same client, but it reads again once its write timed out: it gets 1013 `too slow`.
#[test]
fn a_socket_that_takes_nothing_then_reads_again_is_told_too_slow() {
    use std::io::Read;
    let server = Server::start(&format!("{FAST}write_timeout_s = 1.0\n"));
    let mut writer = server.client();
    let big = "x".repeat(30_000);
    for i in 0..100 {
        writer.set(&format!("big:{i}"), json!(big));
    }
    writer.recv_set("big:99");
    let mut stuck = small_window_upgrade(server.addr, "/ws", 4096);
    common::wait_until("the stuck client to register", || server.health("clients") == 2);
    for i in 0..200 {
        writer.set(&format!("small:{i}"), json!(i));
    }
    writer.recv_set("small:199");
    // The write timed out and the relay is trying to send its close frame: read everything now.
    common::wait_within(Duration::from_secs(15), "the write timeout", || {
        server.get("/metrics").1.contains("aether_connections_closed_total{code=\"1013\"} 1")
    });
    let frames = common::read_raw_frames(&mut stuck);
    assert_eq!(common::raw_close(&frames), Closed::Frame(1013, "too slow".into()));
    let metrics = server.get("/metrics").1;
    assert!(metrics.contains("aether_write_timeouts_total{outcome=\"closed\"} 1"), "{metrics}");
    let _ = stuck.read(&mut [0u8; 1]);
}

/// `write_timeout_s` is refused, with the one-line error naming it, unless a positive number.
#[test]
fn write_timeout_s_must_be_a_positive_number() {
    let dir = tempfile::tempdir().unwrap();
    for value in ["0", "-1.0", "nan", "inf"] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("[limits]\nwrite_timeout_s = {value}\n")).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_aether-actix"))
            .args(["--config", path.to_str().unwrap()])
            .output()
            .expect("run aether-actix");
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{value}: {err}");
        assert!(err.contains("[limits] write_timeout_s must be a positive number"), "{value}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{value}: one line: {err}");
    }
}

/// A peer listener of node "a" that holds at most one peer, with a 1 s handshake timeout.
fn mesh_node() -> Server {
    Server::start(
        "[mesh]\nnode_id = \"a\"\nbind = \"127.0.0.1:0\"\nmax_peers = 1\n[limits]\nhandshake_timeout_s = 1.0\n",
    )
}

/// A would-be peer that sends pings instead of `hello` and never reads: the handshake's pongs are
/// written within its timeout too, so the connection is dropped in time and its slot comes back.
#[test]
fn a_peer_that_pings_through_the_handshake_and_never_reads_is_dropped() {
    let server = mesh_node();
    let mut flooder = small_window_upgrade(server.mesh.unwrap(), "/", 4096);
    let started = Instant::now();
    flood_pings(&mut flooder, 2_000_000);
    common::wait_within(Duration::from_secs(15), "the handshake to time out", || {
        server.log().contains("refused: no handshake in time")
    });
    assert!(started.elapsed() < Duration::from_secs(10), "dropped after {:?}", started.elapsed());
    // Its slot (max_peers = 1) is free again: a peer gets through the handshake.
    let mut peer = Client::raw(&server.mesh_url());
    peer.send(Message::text(json!({"type": "hello", "node_id": "p"}).to_string())).unwrap();
    assert_eq!(common::recv_json(&mut peer), json!({"type": "hello", "node_id": "a"}));
    drop(flooder);
}

/// A peer we dial (a fake listener speaking upstream's protocol, with a tiny receive window)
/// that sends pings without end and never reads. Its pongs must not pile up in a queue (only the
/// latest ping is answered), and since it answers none of our pings it is not heard: the link
/// ends within the peer timeout (20 s) instead of living as long as the pings come.
#[test]
fn a_dialled_peer_that_pings_and_never_reads_is_dropped() {
    use std::{
        io::Write,
        net::TcpListener,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap(); // inherited by the accepted socket
    socket.bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.listen(1).unwrap();
    let listener: TcpListener = socket.into();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let server = Server::start(&format!(
        "[mesh]\nnode_id = \"a\"\npeers = [\"{url}\"]\nredial_min_s = 60.0\nredial_max_s = 60.0\n"
    ));
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut ws = tungstenite::accept(tcp).unwrap();
    let hello = common::recv_json(&mut ws);
    assert_eq!(hello["node_id"], "a");
    ws.send(Message::text(json!({"type": "hello", "node_id": "p"}).to_string())).unwrap();
    common::wait_until("the link to come up", || server.healthz()["mesh"]["peers"][0]["connected"] == true);
    // Server frames are not masked: a ping with a 125-byte payload, 64 at a time.
    let mut frame = vec![0x89, 125];
    frame.extend(std::iter::repeat_n(b'p', 125));
    let burst: Vec<u8> = frame.iter().copied().cycle().take(frame.len() * 64).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tcp = ws.get_ref().try_clone().unwrap();
    let flood = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            // Fast enough to fill every buffer on the way back, then steadily so it is never silent.
            for _ in 0..3000 {
                if tcp.write_all(&burst).is_err() {
                    return;
                }
            }
            while !stop.load(Ordering::Relaxed) && tcp.write_all(&frame).is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let started = Instant::now();
    common::wait_within(Duration::from_secs(45), "the link to be dropped", || {
        server.log().contains("link to p at ws://")
            && ["closed: peer too slow", "closed: no pong or message"].iter().any(|why| server.log().contains(why))
    });
    assert!(started.elapsed() < Duration::from_secs(35), "dropped after {:?}", started.elapsed());
    assert_eq!(server.healthz()["mesh"]["peers"][0]["connected"], false);
    stop.store(true, Ordering::Relaxed);
    drop(ws);
    flood.join().unwrap();
}
