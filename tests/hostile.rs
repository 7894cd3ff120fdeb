//! Clients that misbehave on purpose: nobody else may notice.

mod common;

use std::time::{Duration, Instant};

use common::{Closed, Server};
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
        while !writer.silent_for(Duration::from_millis(1)) {}
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
