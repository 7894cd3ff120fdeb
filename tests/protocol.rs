//! Protocol v1 against the real binary: one test per rule, asserting exact frames.

mod common;

use std::{collections::BTreeSet, sync::Arc, thread};

use common::{Client, Closed, Server, recv_json, wait_closed};
use serde_json::{Value, json};
use tungstenite::{
    Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

fn keys(frame: &Value) -> BTreeSet<&str> {
    frame.as_object().expect("object").keys().map(String::as_str).collect()
}

fn set_of<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

fn is_hsl(color: &Value) -> bool {
    let s = color.as_str().unwrap_or("");
    let Some(inner) = s.strip_prefix("hsl(").and_then(|s| s.strip_suffix(", 78%, 62%)")) else { return false };
    inner.parse::<u16>().is_ok_and(|h| h < 360)
}

#[test]
fn hello_then_snapshot_with_exact_fields() {
    let server = Server::start("");
    let client = server.client();
    assert_eq!(keys(&client.hello), set_of(&["type", "id", "color"]));
    assert!(uuid_like(&client.hello["id"]), "{}", client.hello);
    assert!(is_hsl(&client.hello["color"]), "{}", client.hello);
    assert_eq!(client.snapshot, json!({"type": "snapshot", "data": {}}));
    let other = server.client();
    assert_ne!(client.id(), other.id(), "every connection gets a new id");
}

fn uuid_like(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() == 36
        && s.chars()
            .enumerate()
            .all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() })
}

#[test]
fn hello_and_snapshot_come_first_even_while_others_write() {
    let server = Server::start("");
    let url = server.url();
    let writer = thread::spawn(move || {
        let mut w = Client::connect(&url);
        for i in 0..150 {
            w.set(&format!("busy:{i}"), json!(i));
        }
        w.recv_set("busy:149");
    });
    for _ in 0..30 {
        // Client::connect asserts frames #1 and #2 are hello and snapshot.
        let c = server.client();
        // Whatever the snapshot lacked arrives afterwards as set frames, never before it.
        let seen: usize = c.snapshot["data"].as_object().unwrap().len();
        assert!(seen <= 150);
    }
    writer.join().unwrap();
}

#[test]
fn set_is_echoed_to_sender_and_everyone_with_exact_fields() {
    let server = Server::start("");
    let (mut a, mut b) = (server.client(), server.client());
    a.set("k", json!({"nested": [1, 2, 3], "z": 1, "a": 2}));
    for client in [&mut a, &mut b] {
        let frame = client.recv();
        assert_eq!(frame, json!({"type": "set", "key": "k", "value": {"nested": [1, 2, 3], "z": 1, "a": 2}}));
        assert_eq!(keys(&frame), set_of(&["type", "key", "value"]));
        // Key order inside the value is kept, so clients comparing JSON text see no change.
        assert_eq!(frame["value"].as_object().unwrap().keys().collect::<Vec<_>>(), ["nested", "z", "a"]);
    }
    assert_eq!(server.client().snapshot["data"], json!({"k": {"nested": [1, 2, 3], "z": 1, "a": 2}}));
}

#[test]
fn delete_is_echoed_even_for_a_key_that_never_existed() {
    let server = Server::start("");
    let (mut a, mut b) = (server.client(), server.client());
    a.set("todel", json!(1));
    b.recv_set("todel");
    a.delete("todel");
    a.delete("never-existed");
    for client in [&mut a, &mut b] {
        let frame = client.recv_until(|f| f["type"] == "delete");
        assert_eq!(frame, json!({"type": "delete", "key": "todel"}));
        assert_eq!(client.recv(), json!({"type": "delete", "key": "never-existed"}));
    }
    assert_eq!(server.client().snapshot["data"], json!({}));
}

#[test]
fn null_and_missing_values_are_legal_values() {
    let server = Server::start("");
    let mut a = server.client();
    a.set("explicit", Value::Null);
    a.send(json!({"type": "set", "key": "missing"}));
    assert_eq!(a.recv(), json!({"type": "set", "key": "explicit", "value": null}));
    assert_eq!(a.recv(), json!({"type": "set", "key": "missing", "value": null}));
    assert_eq!(server.client().snapshot["data"], json!({"explicit": null, "missing": null}));
}

#[test]
fn presence_goes_to_others_never_back_to_the_sender() {
    let server = Server::start("");
    let (mut a, mut b) = (server.client(), server.client());
    a.send(json!({"type": "presence", "x": 123, "y": 456}));
    let frame = b.recv();
    assert_eq!(frame, json!({"type": "presence", "id": a.id(), "color": a.hello["color"], "x": 123, "y": 456}));
    assert_eq!(keys(&frame), set_of(&["type", "id", "color", "x", "y"]));
    // Coercion as upstream's int(): floats truncate, integer strings parse, missing is 0.
    // (One at a time: cursors a client sends within one presence tick are coalesced, latest wins.)
    a.send(json!({"type": "presence", "x": 1.9, "y": "7"}));
    let frame = b.recv();
    assert_eq!((&frame["x"], &frame["y"]), (&json!(1), &json!(7)));
    a.send(json!({"type": "presence"}));
    assert_eq!(b.recv()["x"], json!(0));
    // The sender's next frame is its own set echo: no presence came back to it.
    a.set("after", json!(true));
    assert_eq!(a.recv(), json!({"type": "set", "key": "after", "value": true}));
}

#[test]
fn presence_leave_on_every_disconnect_of_a_registered_client() {
    let server = Server::start("");
    let mut b = server.client();
    let mut a = server.client();
    let a_id = a.id();
    a.ws.close(None).unwrap();
    let frame = b.recv();
    assert_eq!(frame, json!({"type": "presence-leave", "id": a_id}));
    assert_eq!(keys(&frame), set_of(&["type", "id"]));
    // A connection dropped without a close frame counts too.
    let c = server.client();
    let c_id = c.id();
    drop(c);
    assert_eq!(b.recv(), json!({"type": "presence-leave", "id": c_id}));
}

#[test]
fn every_connection_sees_ops_in_the_same_apply_order() {
    let server = Server::start("");
    let mut watchers: Vec<Client> = (0..3).map(|_| server.client()).collect();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = server.url();
            thread::spawn(move || {
                let mut c = Client::connect(&url);
                for i in 0..50 {
                    c.set("contended", json!(format!("w{w}-{i}")));
                }
                c.recv_until(|f| f["value"] == format!("w{w}-49"));
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    // Writers that finished leave, so watchers also see presence-leave frames; keep the sets.
    let sequences: Vec<Vec<Value>> = watchers
        .iter_mut()
        .map(|w| (0..200).map(|_| w.recv_until(|f| f["type"] == "set")["value"].clone()).collect())
        .collect();
    assert!(sequences.windows(2).all(|pair| pair[0] == pair[1]), "connections saw different orders");
    // The last frame every browser applied is what the server holds.
    let last = sequences[0].last().unwrap().clone();
    assert_eq!(server.client().snapshot["data"]["contended"], last);
}

#[test]
fn malformed_input_is_dropped_silently_and_the_connection_survives() {
    let server = Server::start("");
    let mut a = server.client();
    let cases = [
        "totally not json".to_owned(),
        "[1,2,3]".to_owned(),
        "\"x\"".to_owned(),
        "5".to_owned(),
        json!({"key": "x", "value": 1}).to_string(),
        json!({"type": "set", "value": 1}).to_string(),
        json!({"type": "set", "key": "", "value": 1}).to_string(),
        json!({"type": "delete", "key": 123}).to_string(),
        json!({"type": "set", "key": ["k"], "value": 1}).to_string(),
        json!({"type": "voodoo", "key": "x"}).to_string(),
        json!({"type": "auth", "token": "late"}).to_string(),
        json!({"type": "presence", "x": null}).to_string(),
        json!({"type": "presence", "x": "1.5"}).to_string(),
        r#"{"type":"set","key":"nan","value":NaN}"#.to_owned(),
        r#"{"type":"set","key":"inf","value":Infinity}"#.to_owned(),
        r#"{"type":"set","key":"big","value":1e400}"#.to_owned(),
        r#"{"type":"presence","x":1e400,"y":0}"#.to_owned(),
        format!(r#"{{"type":"set","key":"deep","value":{}1{}}}"#, "[".repeat(65), "]".repeat(65)),
        format!(r#"{{"type":"set","key":"deeper","value":{}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000)),
    ];
    for text in &cases {
        a.send_text(text);
    }
    a.ws.send(Message::binary(vec![0xff, 0xfe, 0x00])).unwrap(); // binary, not UTF-8
    a.set("post:abuse", json!("ok"));
    // Nothing but the echo comes back: every bad message was dropped without a reply.
    assert_eq!(a.recv(), json!({"type": "set", "key": "post:abuse", "value": "ok"}));
    assert_eq!(server.client().snapshot["data"], json!({"post:abuse": "ok"}));
}

#[test]
fn binary_frames_holding_utf8_json_count_as_text() {
    let server = Server::start("");
    let mut a = server.client();
    a.ws.send(Message::binary(json!({"type": "set", "key": "bin", "value": 1}).to_string().into_bytes())).unwrap();
    assert_eq!(a.recv(), json!({"type": "set", "key": "bin", "value": 1}));
}

#[test]
fn fragmented_messages_are_reassembled() {
    let server = Server::start("");
    let mut a = server.client();
    let text = json!({"type": "set", "key": "frag", "value": "x".repeat(1000)}).to_string();
    let (head, tail) = text.split_at(10);
    a.ws.write(Message::Frame(Frame::message(head.as_bytes().to_vec(), OpCode::Data(Data::Text), false))).unwrap();
    a.ws.write(Message::Frame(Frame::message(tail.as_bytes().to_vec(), OpCode::Data(Data::Continue), true))).unwrap();
    a.ws.flush().unwrap();
    assert_eq!(a.recv_set("frag")["value"], json!("x".repeat(1000)));
}

#[test]
fn oversize_keys_and_values_are_dropped_and_the_writer_stays_connected() {
    let server = Server::start("");
    let (mut a, mut b) = (server.client(), server.client());
    a.set("should:not:land", json!("x".repeat(32768 + 100)));
    a.set(&"k".repeat(257), json!(1));
    // At the caps exactly: 256-byte key, value whose compact JSON is 32768 bytes.
    a.set(&"k".repeat(256), json!(1));
    a.set("at:cap", json!("x".repeat(32766)));
    // Value size counts raw UTF-8: 6000 × é is 12 002 bytes (upstream counted 36 002 and refused).
    a.set("accented", json!("é".repeat(6000)));
    a.set("sentinel", json!("ok"));
    let landed: Vec<String> =
        (0..4).map(|_| b.recv_until(|f| f["type"] == "set")["key"].as_str().unwrap().to_owned()).collect();
    assert_eq!(landed, ["k".repeat(256), "at:cap".into(), "accented".into(), "sentinel".into()]);
    let data = server.client().snapshot["data"].clone();
    assert!(data.get("should:not:land").is_none() && data.get("k".repeat(257)).is_none());
}

#[test]
fn message_over_max_message_bytes_is_dropped_over_max_frame_bytes_closes_1009() {
    let server = Server::start("[limits]\nmax_message_bytes = 1000\nmax_frame_bytes = 4000\nmax_value_bytes = 5000\n");
    let mut a = server.client();
    a.set("too:long", json!("x".repeat(1500)));
    a.set("fine", json!(1));
    assert_eq!(a.recv(), json!({"type": "set", "key": "fine", "value": 1}));
    a.set("huge", json!("x".repeat(5000)));
    assert_eq!(a.closed(), Closed::Frame(1009, "message too big".into()));
    // Also when the oversize message is split into small fragments.
    let mut c = server.client();
    for i in 0..5 {
        let op = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        let _ = c.ws.write(Message::Frame(Frame::message(vec![b' '; 1000], op, false)));
    }
    let _ = c.ws.flush();
    assert_eq!(c.closed(), Closed::Frame(1009, "message too big".into()));
    assert_eq!(server.client().snapshot["data"], json!({"fine": 1}));
}

#[test]
fn rate_limit_closes_the_abuser_with_1008_and_spares_the_bystander() {
    let server = Server::start("[limits]\nmessages_burst = 20\nmessages_per_second = 5.0\n");
    let (mut abuser, mut bystander) = (server.client(), server.client());
    for i in 0..40 {
        if abuser
            .ws
            .send(Message::text(json!({"type": "set", "key": format!("burst:{i}"), "value": i}).to_string()))
            .is_err()
        {
            break;
        }
    }
    assert_eq!(abuser.closed(), Closed::Frame(1008, "rate limit".into()));
    // 1 free first message + a burst of 20 were processed; the 22nd and later were not.
    bystander.set("after:abuse", json!("ok"));
    bystander.recv_until(|f| f["key"] == "after:abuse");
    let data = server.client().snapshot["data"].clone();
    assert!(data.get("burst:20").is_some() && data.get("burst:21").is_none(), "{data}");
    assert!(server.log().contains("exceeded its rate budget"));
}

#[test]
fn connection_caps_close_with_1013_and_slots_come_back() {
    let server = Server::start("[limits]\nmax_connections_per_source = 2\n");
    let a = server.client();
    let _b = server.client();
    let mut refused = Client::raw(&server.url());
    assert_eq!(wait_closed(&mut refused), Closed::Frame(1013, "server busy".into()));
    drop(a);
    // The slot comes back once the server has seen the close.
    common::wait_until("a slot to be released", || server.get("/healthz").1.contains("\"clients\":1"));
    let _c = server.client();
}

#[test]
fn websocket_answers_at_any_path_and_http_serves_static_and_health() {
    let server = Server::start("");
    let mut a = Client::connect(&format!("ws://{}/", server.addr));
    let mut b = Client::connect(&format!("ws://{}/some/room?x=1", server.addr));
    a.set("anywhere", json!(1));
    b.recv_set("anywhere");
    let (status, body) = server.get("/");
    assert_eq!(status, 200);
    assert!(body.contains("<html"), "{body}");
    let (status, body) = server.get("/healthz");
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["keys"], 1);
    assert_eq!(server.get("/no-such-file").0, 404);
}

mod auth {
    use super::*;

    const AUTH: &str = "[auth]\ntoken = \"hunter2\"\n[limits]\nhandshake_timeout_s = 1.0\n";

    fn seeded() -> Server {
        let server = Server::start(AUTH);
        let mut owner = Client::connect(&format!("{}?auth_token=hunter2", server.url()));
        owner.set("secret:api:key", json!("s3cr3t"));
        owner.recv_set("secret:api:key");
        server
    }

    #[test]
    fn token_in_the_query_lets_the_client_in() {
        let server = seeded();
        let client = Client::connect(&format!("{}?auth_token=hunter2", server.url()));
        assert_eq!(client.snapshot["data"]["secret:api:key"], "s3cr3t");
    }

    #[test]
    fn token_in_a_first_frame_lets_the_client_in() {
        let server = seeded();
        let mut ws = Client::raw(&server.url());
        ws.send(Message::text(json!({"type": "auth", "token": "hunter2"}).to_string())).unwrap();
        assert_eq!(recv_json(&mut ws)["type"], "hello");
        assert_eq!(recv_json(&mut ws)["data"]["secret:api:key"], "s3cr3t");
    }

    #[test]
    fn rejected_clients_get_1008_and_not_one_byte_of_state() {
        let server = seeded();
        let url = server.url();
        let attempts: Vec<Box<dyn Fn() -> Closed>> = vec![
            Box::new(|| wait_closed(&mut Client::raw(&format!("{url}?auth_token=wrong")))),
            Box::new(|| wait_closed(&mut Client::raw(&format!("{url}?auth_token=hunter22")))),
            Box::new(|| {
                let mut ws = Client::raw(&url);
                ws.send(Message::text(json!({"type": "auth", "token": "nope"}).to_string())).unwrap();
                wait_closed(&mut ws)
            }),
            Box::new(|| {
                let mut ws = Client::raw(&url);
                ws.send(Message::text("garbage")).unwrap();
                wait_closed(&mut ws)
            }),
            Box::new(|| {
                let mut ws = Client::raw(&url);
                ws.send(Message::text(json!({"type": "set", "key": "k", "value": 1}).to_string())).unwrap();
                wait_closed(&mut ws)
            }),
            // Silence past the handshake timeout.
            Box::new(|| wait_closed(&mut Client::raw(&url))),
        ];
        for attempt in attempts {
            // wait_closed panics on any text frame before the close, so no state leaked.
            assert_eq!(attempt(), Closed::Frame(1008, "auth failed".into()));
        }
        assert!(!server.log().contains("hunter2"), "the token must never be logged");
        let data = Client::connect(&format!("{url}?auth_token=hunter2")).snapshot["data"].clone();
        assert_eq!(data, json!({"secret:api:key": "s3cr3t"}), "rejected clients wrote nothing");
    }

    #[test]
    fn a_late_auth_frame_is_ignored() {
        let server = seeded();
        let mut c = Client::connect(&format!("{}?auth_token=hunter2", server.url()));
        c.send(json!({"type": "auth", "token": "whatever"}));
        c.set("still", json!("here"));
        // (The seeding client has left meanwhile, so a presence-leave may come first.)
        assert_eq!(c.recv_set("still"), json!({"type": "set", "key": "still", "value": "here"}));
    }
}

/// The README's protocol block is the documentation users read; check it against the server.
#[test]
fn readme_protocol_block_matches_the_running_server() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (inbound, outbound) = common::readme_protocol_block(&readme, "protocol-v1");
    let types = |frames: &[(String, BTreeSet<String>)]| frames.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(types(&inbound), ["set", "delete", "presence", "auth"]);
    assert_eq!(types(&outbound), ["hello", "snapshot", "set", "delete", "presence", "presence-leave"]);

    // Every documented inbound frame, sent as documented, has its documented effect.
    let server = Server::start("");
    let (mut a, mut b) = (server.client(), server.client());
    a.send(json!({"type": "auth", "token": "ignored without [auth]"}));
    a.set("k", json!(1));
    a.delete("k");
    // Every server frame, produced for real, has exactly the documented fields.
    let mut seen = vec![a.hello.clone(), a.snapshot.clone(), b.recv(), b.recv()];
    a.send(json!({"type": "presence", "x": 1, "y": 2}));
    seen.push(b.recv());
    let a_id = a.id();
    drop(a);
    seen.push(b.recv_until(|f| f["type"] == "presence-leave" && f["id"] == a_id));
    let seen_types: Vec<&str> = seen.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(seen_types, types(&outbound));
    for (frame, (ty, fields)) in seen.iter().zip(&outbound) {
        let actual: BTreeSet<String> = frame.as_object().unwrap().keys().cloned().collect();
        assert_eq!(&actual, fields, "fields of {ty}");
    }
}

#[test]
fn auth_token_can_live_in_a_file() {
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let server = Server::start(&format!("[auth]\ntoken_file = {file:?}\n"));
    Client::connect(&format!("{}?auth_token=from-a-file", server.url()));
    let mut refused = Client::raw(&format!("{}?auth_token=wrong", server.url()));
    assert_eq!(wait_closed(&mut refused), Closed::Frame(1008, "auth failed".into()));
}

#[test]
fn metrics_count_what_happened_in_prometheus_text() {
    let server = Server::start("");
    let mut a = server.client();
    a.set("m", json!(1));
    a.send_text("not json");
    a.send(json!({"type": "set", "key": "", "value": 1}));
    a.recv_set("m");
    a.set("m2", json!(2));
    a.recv_set("m2");
    drop(a);
    common::wait_until("the close to be counted", || server.get("/metrics").1.contains("code=\"1006\""));
    let (status, text) = server.get("/metrics");
    assert_eq!(status, 200);
    for line in [
        "aether_messages_in_total{type=\"set\"} 2",
        "aether_messages_dropped_total{reason=\"not_json\"} 1",
        "aether_messages_dropped_total{reason=\"bad_key\"} 1",
        "aether_durable_writes_total 2",
        "aether_keys 2",
        "aether_connections_opened_total 1",
        "aether_connections_closed_total{code=\"1006\"} 1",
        "aether_ledger_batch_ops_count 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("# TYPE aether_ledger_append_seconds histogram"));
}

/// The next text frame, as the relay wrote it.
fn next_text(client: &mut Client) -> String {
    loop {
        match client.ws.read().expect("read") {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// However a client writes a value (an exponent, an escape, spaces, a key twice, a number past
/// `u64`), the relay relays it, stores it and replays it in one form: what `serde_json` writes
/// for it, as it always has. The frames are read as text and compared byte for byte.
#[test]
fn values_are_relayed_stored_and_replayed_in_one_form_however_they_were_written() {
    let cases = [
        ("1E2", "100.0"),
        ("-0", "-0.0"),
        ("0.10000000000000001", "0.1"),
        ("1e20", "1e+20"),
        ("18446744073709551616", "1.8446744073709552e+19"),
        (r#""\u00e9\/""#, r#""é/""#),
        (r#""\ud83d\ude00""#, "\"😀\""),
        (r#""\u0001\u001F""#, r#""\u0001\u001f""#),
        (r#"{ "b" : [1, 2.50] , "a":1, "a":2 }"#, r#"{"b":[1,2.5],"a":2}"#),
        (r#"{"b":1,"a":2}"#, r#"{"b":1,"a":2}"#),
    ];
    let server = Server::start("");
    let mut writer = server.client();
    let mut reader = server.client();
    for (i, (written, _)) in cases.iter().enumerate() {
        writer.send_text(&format!(r#"{{"type":"set","key":"k{i}","value":{written}}}"#));
    }
    for (i, (written, relayed)) in cases.iter().enumerate() {
        assert_eq!(next_text(&mut reader), format!(r#"{{"type":"set","key":"k{i}","value":{relayed}}}"#), "{written}");
        assert_eq!(serde_json::from_str::<Value>(written).unwrap().to_string(), *relayed, "serde_json's own form");
    }
    let ledger = std::fs::read_to_string(server.ledger_path()).unwrap();
    for (i, (_, relayed)) in cases.iter().enumerate() {
        assert!(
            ledger.contains(&format!(r#""key":"k{i}","value":{relayed},"stamp""#)),
            "k{i} in the ledger:\n{ledger}"
        );
    }
    let dir = Arc::clone(&server.dir);
    drop((writer, reader));
    server.terminate();
    let server = Server::start_in(dir, "");
    let mut client = Client::raw(&server.url());
    let _hello = client.read().expect("hello");
    let Message::Text(snapshot) = client.read().expect("snapshot") else { panic!("a text snapshot") };
    let entries: Vec<String> =
        cases.iter().enumerate().map(|(i, (_, relayed))| format!(r#""k{i}":{relayed}"#)).collect();
    assert_eq!(snapshot.as_str(), format!(r#"{{"type":"snapshot","data":{{{}}}}}"#, entries.join(",")));
}

/// A client may send its first frames in the same packet as its upgrade request, before the
/// `101` comes back: the relay reads them (they were read with the request, before the relay took
/// the socket over), and the connection goes on as any other. A raw socket, one write.
#[test]
fn frames_sent_with_the_upgrade_request_are_read() {
    use std::io::{Read, Write};
    let server = Server::start("");
    let mut reader = Client::connect(&server.url());
    let mut tcp = std::net::TcpStream::connect(server.addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    for (i, key) in ["early-1", "early-2"].into_iter().enumerate() {
        bytes.extend(common::client_frame(0x81, json!({"type": "set", "key": key, "value": i}).to_string().as_bytes()));
    }
    tcp.write_all(&bytes).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    assert_eq!(reader.recv_set("early-1")["value"], 0);
    assert_eq!(reader.recv_set("early-2")["value"], 1);
    let state = server.healthz();
    assert_eq!(state["keys"], 2, "{state}");
}
