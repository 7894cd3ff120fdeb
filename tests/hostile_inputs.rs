//! A table of hostile inputs against the running relay. Each has one defined outcome (dropped with
//! the connection left open, or closed with a documented code); after each, a bystander pair must
//! still sync and nothing the case sent may have landed.

mod common;

use std::io::Write;

use common::{Closed, Server};
use serde_json::{Value, json};
use tungstenite::Message;

enum Input {
    Text(String),
    Binary(Vec<u8>),
    /// Bytes written straight to the socket after the upgrade (for framing attacks).
    Raw(Vec<u8>),
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Dropped,
    Closed(u16),
}

fn text(s: impl Into<String>) -> Input {
    Input::Text(s.into())
}

fn set_value(key: &str, value_json: &str) -> Input {
    text(format!(r#"{{"type":"set","key":"{key}","value":{value_json}}}"#))
}

fn cases() -> Vec<(&'static str, Input, Outcome)> {
    use Outcome::*;
    let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
    let many_keys: String = format!("{{{}}}", (0..5000).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>().join(","));
    vec![
        ("empty text", text(""), Dropped),
        ("whitespace", text("   \n"), Dropped),
        ("json null", text("null"), Dropped),
        ("json true", text("true"), Dropped),
        ("json number", text("42"), Dropped),
        ("json string", text("\"set\""), Dropped),
        ("json array", text(r#"[{"type":"set","key":"h","value":1}]"#), Dropped),
        ("empty object", text("{}"), Dropped),
        ("null type", text(r#"{"type":null,"key":"h","value":1}"#), Dropped),
        ("numeric type", text(r#"{"type":5,"key":"h","value":1}"#), Dropped),
        ("type is case-sensitive", text(r#"{"type":"SET","key":"h","value":1}"#), Dropped),
        ("set without key", text(r#"{"type":"set","value":1}"#), Dropped),
        ("null key", text(r#"{"type":"set","key":null,"value":1}"#), Dropped),
        ("numeric key", text(r#"{"type":"set","key":1,"value":1}"#), Dropped),
        ("object key", text(r#"{"type":"set","key":{},"value":1}"#), Dropped),
        ("empty key", text(r#"{"type":"set","key":"","value":1}"#), Dropped),
        ("257-byte key", set_value(&"h".repeat(257), "1"), Dropped),
        ("258-byte key of 3-byte chars", set_value(&"€".repeat(86), "1"), Dropped),
        ("value one byte over the cap", set_value("h", &format!("\"{}\"", "x".repeat(32767))), Dropped),
        ("value nested 65 deep", set_value("h", &deep(65)), Dropped),
        ("value nested 200 deep", set_value("h", &deep(200)), Dropped),
        ("NaN", set_value("h", "NaN"), Dropped),
        ("-Infinity", set_value("h", "-Infinity"), Dropped),
        ("1e400", set_value("h", "1e400"), Dropped),
        ("-1e400", set_value("h", "-1e400"), Dropped),
        ("trailing garbage", text(r#"{"type":"set","key":"h","value":1} x"#), Dropped),
        ("truncated JSON", text(r#"{"type":"set","key":"h","value":"#), Dropped),
        ("single quotes", text("{'type':'set','key':'h','value':1}"), Dropped),
        ("comment", text(r#"{"type":"set",/*c*/"key":"h","value":1}"#), Dropped),
        ("lone surrogate escape", text(r#"{"type":"set","key":"\ud800","value":1}"#), Dropped),
        ("raw control character", text("{\"type\":\"set\",\"key\":\"a\u{1}b\",\"value\":1}"), Dropped),
        ("byte-order mark", text("\u{feff}{\"type\":\"set\",\"key\":\"h\",\"value\":1}"), Dropped),
        ("message over max_message_bytes", set_value("h", &format!("\"{}\"", "x".repeat(70_000))), Dropped),
        ("60 000 open brackets", text(format!(r#"{{"type":"set","key":"h","value":{}"#, "[".repeat(60_000))), Dropped),
        ("5000-key object value", set_value("h", &many_keys), Dropped),
        ("duplicate type, last wins", text(r#"{"type":"set","key":"h","value":1,"type":"bogus"}"#), Dropped),
        ("delete without key", text(r#"{"type":"delete"}"#), Dropped),
        ("delete with array key", text(r#"{"type":"delete","key":["h"]}"#), Dropped),
        ("presence x not a number", text(r#"{"type":"presence","x":"abc","y":1}"#), Dropped),
        ("presence x array", text(r#"{"type":"presence","x":[1],"y":1}"#), Dropped),
        ("presence x object", text(r#"{"type":"presence","x":{"a":1},"y":1}"#), Dropped),
        ("presence x 1e300", text(r#"{"type":"presence","x":1e300,"y":1}"#), Dropped),
        ("presence x 20-digit string", text(r#"{"type":"presence","x":"99999999999999999999","y":1}"#), Dropped),
        ("presence y null", text(r#"{"type":"presence","x":1,"y":null}"#), Dropped),
        ("late auth frame", text(r#"{"type":"auth","token":"x"}"#), Dropped),
        ("server-only hello", text(r#"{"type":"hello","id":"x","color":"red"}"#), Dropped),
        ("server-only snapshot", text(r#"{"type":"snapshot","data":{"h":1}}"#), Dropped),
        ("server-only presence-leave", text(r#"{"type":"presence-leave","id":"x"}"#), Dropped),
        ("binary, not UTF-8", Input::Binary(vec![0xff, 0xfe, 0xfd]), Dropped),
        ("binary, truncated UTF-8", Input::Binary(vec![b'{', 0xc3]), Dropped),
        ("binary, JSON array", Input::Binary(b"[1,2]".to_vec()), Dropped),
        ("text frame, not UTF-8", Input::Raw(common::client_frame(0x81, &[0xff, 0xfe])), Closed(1007)),
        ("frame over max_frame_bytes", Input::Raw(common::client_frame(0x81, &vec![b' '; 300 * 1024])), Closed(1009)),
        ("unmasked frame", Input::Raw(vec![0x81, 0x02, b'{', b'}']), Closed(1002)),
        ("reserved opcode 3", Input::Raw(common::client_frame(0x83, b"x")), Closed(1002)),
        ("continuation without a start", Input::Raw(common::client_frame(0x80, b"x")), Closed(1002)),
        ("close with a code", Input::Raw(common::client_frame(0x88, &[0x03, 0xe8])), Closed(1000)),
        ("ping over 125 bytes", Input::Raw(common::client_frame(0x89, &[b'p'; 200])), Closed(1002)),
        ("fragmented ping", Input::Raw(common::client_frame(0x09, b"p")), Closed(1002)),
        ("RSV1 set without an extension", Input::Raw(common::client_frame(0xc1, b"{}")), Closed(1002)),
    ]
}

#[test]
fn every_hostile_input_has_its_defined_outcome_and_bystanders_keep_syncing() {
    let server = Server::start("");
    let (mut a, mut b) = (server.client(), server.client());
    let cases = cases();
    assert!(cases.len() >= 50, "{} cases", cases.len());
    for (n, (name, input, expected)) in cases.into_iter().enumerate() {
        let outcome = match input {
            Input::Text(_) | Input::Binary(_) => {
                let mut hostile = server.client();
                let sent = match input {
                    Input::Text(t) => hostile.ws.send(Message::text(t)),
                    Input::Binary(bytes) => hostile.ws.send(Message::binary(bytes)),
                    Input::Raw(_) => unreachable!(),
                };
                sent.unwrap_or_else(|err| panic!("{name}: send failed: {err}"));
                // Still open? Its next write must be echoed, and be the next frame it gets.
                let sentinel = format!("sentinel:{n}");
                match hostile.ws.send(Message::text(json!({"type": "set", "key": sentinel, "value": n}).to_string())) {
                    Ok(()) => loop {
                        match hostile.ws.read() {
                            Ok(Message::Text(t)) => {
                                let frame: Value = serde_json::from_str(&t).unwrap();
                                assert_eq!(frame["key"], sentinel.as_str(), "{name}: unexpected reply {frame}");
                                break Outcome::Dropped;
                            }
                            Ok(Message::Ping(_)) => continue,
                            Ok(Message::Close(Some(f))) => break Outcome::Closed(f.code.into()),
                            other => panic!("{name}: {other:?}"),
                        }
                    },
                    Err(_) => match hostile.closed() {
                        Closed::Frame(code, _) => Outcome::Closed(code),
                        Closed::Eof => panic!("{name}: connection dropped without a close code"),
                    },
                }
            }
            Input::Raw(bytes) => {
                let mut tcp = common::raw_upgrade(server.addr, "/ws");
                let _ = tcp.write_all(&bytes);
                match common::raw_close(&common::read_raw_frames(&mut tcp)) {
                    Closed::Frame(code, _) => Outcome::Closed(code),
                    Closed::Eof => panic!("{name}: connection dropped without a close code"),
                }
            }
        };
        assert_eq!(outcome, expected, "case {n}: {name}");
        // Bystanders keep syncing.
        a.set(&format!("bystander:{n}"), json!(n));
        b.recv_until(|f| f["key"] == format!("bystander:{n}"));
    }
    // Nothing any case sent landed: only sentinels and bystander keys exist.
    let data = server.client().snapshot["data"].clone();
    let stray: Vec<&String> = data
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.starts_with("sentinel:") && !k.starts_with("bystander:"))
        .collect();
    assert!(stray.is_empty(), "hostile input landed: {stray:?}");
    let health: Value = serde_json::from_str(&server.get("/healthz").1).unwrap();
    assert_eq!(health["status"], "ok");
}
