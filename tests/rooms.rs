//! Rooms: many independent maps on one relay (`?room=NAME`), each with its own members, snapshot,
//! echoes, broadcasts, cursors and resume tokens, under caps that keep rooms from exhausting the
//! relay. The real binary on a free port with a temporary ledger; tungstenite clients here and a
//! Python `websockets` client for the refusals (see `rooms_refusals_seen_by_python`).

mod common;

use std::{process::Command, time::Duration};

use common::{Client, Closed, Server};
use serde_json::{Value, json};

/// A short wait for a frame that must not come (used only after a sentinel proves order).
const QUIET: Duration = Duration::from_millis(200);

fn url(server: &Server, query: &str) -> String {
    format!("{}/ws?{query}", server.url())
}

/// Writes a sentinel in the client's own room and reads up to its echo: every frame of another
/// room that leaked before it would be read here. Returns the frames before the echo.
fn frames_before_own_echo(client: &mut Client, key: &str) -> Vec<Value> {
    client.set(key, json!("sentinel"));
    let mut before = Vec::new();
    loop {
        let frame = client.recv();
        if frame["type"] == "set" && frame["key"] == key {
            return before;
        }
        before.push(frame);
    }
}

#[test]
fn rooms_are_isolated_values_cursors_and_leaves() {
    let server = Server::start("");
    let mut a1 = Client::connect(&url(&server, "room=board-a"));
    let mut a2 = Client::connect(&url(&server, "room=board-a&v=2"));
    let mut b = Client::connect(&url(&server, "room=board-b&v=2"));
    let mut default = Client::connect(&server.url());
    assert_eq!(a2.hello["room"], "board-a", "v2 hello names the room: {}", a2.hello);
    assert_eq!(a2.hello["access"], "write");
    assert!(a1.hello.get("room").is_none(), "v1 hello keeps upstream's fields: {}", a1.hello);
    assert!(default.hello.get("room").is_none());

    a1.set("k", json!("in a"));
    assert_eq!(a1.recv_set("k")["value"], "in a");
    assert_eq!(a2.recv_set("k")["value"], "in a");
    a1.send(json!({"type": "presence", "x": 3, "y": 4}));
    let cursor = a2.recv_until(|f| f["type"] == "presence");
    assert_eq!(cursor["id"], a1.id());

    assert_eq!(frames_before_own_echo(&mut b, "b-sentinel"), Vec::<Value>::new(), "room b saw nothing of a");
    assert_eq!(frames_before_own_echo(&mut default, "d-sentinel"), Vec::<Value>::new());
    b.send(json!({"type": "presence", "x": 1, "y": 1}));
    default.set("k", json!("in default"));
    default.recv_set("k");

    // a1 leaves: a2 sees the leave, b and the default room do not.
    let a1_id = a1.id();
    drop(a1);
    assert_eq!(a2.recv_until(|f| f["type"] == "presence-leave")["id"], a1_id);
    assert_eq!(frames_before_own_echo(&mut b, "b-sentinel-2"), Vec::<Value>::new());
    assert_eq!(a2.next_within(QUIET), None, "nothing of b or the default room reached a: {a1_id}");

    // Fresh joiners get their room's snapshot only.
    let a3 = Client::connect(&url(&server, "room=board-a"));
    assert_eq!(a3.snapshot["data"], json!({"k": "in a"}));
    let b2 = Client::connect(&url(&server, "room=board-b"));
    assert_eq!(b2.snapshot["data"], json!({"b-sentinel": "sentinel", "b-sentinel-2": "sentinel"}));
    let d2 = Client::connect(&server.url());
    assert_eq!(d2.snapshot["data"], json!({"k": "in default", "d-sentinel": "sentinel"}));
    assert_eq!(server.healthz()["rooms"], 3);
}

#[test]
fn bad_room_names_are_refused_before_anything_is_sent() {
    let server = Server::start("");
    let long = "x".repeat(129);
    for name in ["", "_", "_reserved", "a%20b", "a%2Fb", "caf%C3%A9", "a*", long.as_str()] {
        for (version, code) in [("", 1008), ("&v=2", 4400)] {
            let mut ws = Client::raw(&url(&server, &format!("room={name}{version}")));
            match ws.read().expect("a frame") {
                tungstenite::Message::Close(Some(frame)) => {
                    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (code, "bad room"), "{name:?}{version}");
                }
                other => panic!("{name:?}{version}: expected a close first, got {other:?}"),
            }
        }
    }
    assert_eq!(server.healthz()["rooms"], 0);
}

#[test]
fn a_resume_token_is_only_its_own_rooms() {
    let server = Server::start("");
    let mut a = Client::connect(&url(&server, "room=a&v=2"));
    a.set("x", json!(1));
    let echo = a.recv_set("x");
    assert_eq!(echo["seq"], 1, "each room counts its own sequence: {echo}");
    let token = a.snapshot["resume"].as_str().unwrap().to_owned();
    let mut b = Client::connect(&url(&server, "room=b&v=2"));
    b.set("y", json!(2));
    b.recv_set("y");
    // a's token in room b: the whole of b, never a "delta" computed from a's sequence.
    let in_b = Client::connect(&url(&server, &format!("room=b&v=2&resume={token}")));
    assert_eq!(in_b.snapshot["type"], "snapshot");
    assert_eq!(in_b.snapshot["data"], json!({"y": 2}));
    // In its own room it resumes.
    let in_a = Client::connect(&url(&server, &format!("room=a&v=2&resume={token}")));
    assert_eq!(in_a.snapshot["type"], "delta", "{}", in_a.snapshot);
    assert_eq!(in_a.snapshot["data"], json!({"x": 1}));
    // The default room's token does not open a named room either.
    let d = Client::connect(&format!("{}/ws?v=2", server.url()));
    let token = d.snapshot["resume"].as_str().unwrap().to_owned();
    let in_a = Client::connect(&url(&server, &format!("room=a&v=2&resume={token}")));
    assert_eq!(in_a.snapshot["type"], "snapshot");
}

#[test]
fn rooms_are_durable_and_the_default_room_keeps_upstreams_records() {
    let server = Server::start("");
    let mut d = Client::connect(&server.url());
    let mut a = Client::connect(&url(&server, "room=team-a"));
    d.set("shared", json!({"n": 1}));
    d.recv_set("shared");
    a.set("shared", json!("a's"));
    a.recv_set("shared");
    a.delete("shared");
    a.recv_until(|f| f["type"] == "delete");
    a.set("other", json!([1, null]));
    a.recv_set("other");
    let ledger = std::fs::read_to_string(server.ledger_path()).unwrap();
    let lines: Vec<Value> = ledger.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{ledger}");
    assert_eq!(lines[0]["kind"], "set", "the default room's record is upstream's: {}", lines[0]);
    assert!(lines[0].get("room").is_none() && lines[0].get("by").is_none());
    assert_eq!((lines[1]["room"].as_str(), lines[1]["op"].as_str()), (Some("team-a"), Some("set")));
    assert!(lines[1].get("kind").is_none(), "a room's record is one upstream skips: {}", lines[1]);
    assert_eq!(lines[2]["op"], "del");

    let dir = server.kill9();
    let server = Server::start_in(dir, "");
    assert_eq!(Client::connect(&server.url()).snapshot["data"], json!({"shared": {"n": 1}}));
    assert_eq!(Client::connect(&url(&server, "room=team-a")).snapshot["data"], json!({"other": [1, null]}));
    let room = server.get("/healthz?room=team-a").1;
    let room: Value = serde_json::from_str(&room).unwrap();
    assert_eq!(
        (room["room"].as_str(), room["keys"].as_u64(), room["registers"].as_u64()),
        (Some("team-a"), Some(1), Some(2))
    );
    let default: Value = serde_json::from_str(&server.get("/healthz?room=_").1).unwrap();
    assert_eq!((default["room"].as_str(), default["keys"].as_u64()), (Some("_"), Some(1)));
    assert_ne!(room["fingerprint"], default["fingerprint"]);
    assert_eq!(server.get("/healthz?room=_bad").0, 400);
}

#[test]
fn room_caps_refuse_with_documented_outcomes_and_lose_nothing() {
    let server = Server::start("[rooms]\nmax_rooms = 2\nmax_keys = 3\nmax_bytes = 200\ncreated_per_minute = 1000\n");
    let mut v1 = Client::connect(&url(&server, "room=full"));
    let mut v2 = Client::connect(&url(&server, "room=full&v=2"));
    for key in ["a", "b", "c"] {
        v1.set(key, json!(1));
        v1.recv_set(key);
    }
    // A fourth key: v2 is told, v1 loses it silently (as upstream drops), the room keeps three.
    v2.send(json!({"type": "set", "key": "d", "value": 1, "ref": 7}));
    let nack = v2.recv_until(|f| f["type"] == "nack");
    assert_eq!((nack["ref"].as_i64(), nack["reason"].as_str()), (Some(7), Some("room_full")));
    v1.set("e", json!(1));
    v1.set("a", json!(2)); // an existing key still writes
    assert_eq!(v1.recv_set("a")["value"], 2, "the refused write was never echoed");
    // Bytes: growing a value past 200 bytes is refused, shrinking is not, deleting always works.
    v2.send(json!({"type": "set", "key": "b", "value": "x".repeat(300), "ref": 8}));
    assert_eq!(v2.recv_until(|f| f["type"] == "nack")["reason"], "room_full");
    v2.send(json!({"type": "delete", "key": "c", "ref": 9}));
    assert_eq!(v2.recv_until(|f| f["type"] == "ack")["ref"], 9);
    let snapshot = Client::connect(&url(&server, "room=full")).snapshot;
    assert_eq!(snapshot["data"], json!({"a": 2, "b": 1}));
    assert_eq!(common::metric(&server, "aether_messages_dropped_total{reason=\"room_full\"}"), 3.0);

    // Rooms held: "full" is one, a second is fine, a third is refused (the default room is free).
    let _second = Client::connect(&url(&server, "room=second"));
    for (version, code) in [("", 1013), ("&v=2", 4503)] {
        let mut ws = Client::raw(&url(&server, &format!("room=third{version}")));
        assert_eq!(common::wait_closed(&mut ws), Closed::Frame(code, "too many rooms".into()));
    }
    // The default room is upstream's one map: open whatever the caps, and not capped in keys.
    let mut default = Client::connect(&server.url());
    for key in ["a", "b", "c", "d", "e"] {
        default.set(key, json!(key));
    }
    default.recv_set("e");
    assert_eq!(Client::connect(&server.url()).snapshot["data"].as_object().unwrap().len(), 5);
    assert_eq!(common::metric(&server, "aether_rooms_refused_total{reason=\"too_many_rooms\"}"), 2.0);
}

#[test]
fn rooms_created_too_fast_are_refused_and_empty_rooms_are_forgotten() {
    let server = Server::start("[rooms]\ncreated_per_minute = 2\n");
    drop(Client::connect(&url(&server, "room=r1")));
    drop(Client::connect(&url(&server, "room=r2")));
    common::wait_until("empty rooms forgotten", || server.healthz()["rooms"] == 0);
    for (version, code) in [("", 1008), ("&v=2", 4429)] {
        let mut ws = Client::raw(&url(&server, &format!("room=r3{version}")));
        assert_eq!(common::wait_closed(&mut ws), Closed::Frame(code, "rate limit".into()));
    }
    // A room that has keys is not new: joining it costs nothing.
    let server = Server::start("[rooms]\ncreated_per_minute = 1\n");
    let mut c = Client::connect(&url(&server, "room=kept"));
    c.set("k", json!(1));
    c.recv_set("k");
    drop(c);
    for _ in 0..3 {
        assert_eq!(Client::connect(&url(&server, "room=kept")).snapshot["data"], json!({"k": 1}));
    }
}

/// The refusals as a client that is not ours sees them: Python `websockets` (asyncio), reading
/// the close code and reason of a bad room name and of a room cap.
#[test]
fn rooms_refusals_seen_by_python() {
    let python = common::websockets_python();
    let server = Server::start("[rooms]\nmax_rooms = 1\n");
    let _held = Client::connect(&url(&server, "room=held"));
    let script = r#"
import asyncio, json, sys, websockets
async def first(url):
    async with websockets.connect(url) as ws:
        try:
            frames = []
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 5)))
                if len(frames) == 2:
                    return {"frames": [f["type"] for f in frames]}
        except websockets.ConnectionClosed as e:
            return {"code": e.rcvd.code, "reason": e.rcvd.reason, "frames": len(frames)}
async def main():
    base = sys.argv[1]
    out = {}
    for name, q in [("bad_v1", "room=a%20b"), ("bad_v2", "room=a%20b&v=2"), ("cap_v1", "room=new"), ("cap_v2", "room=new&v=2"), ("held", "room=held")]:
        out[name] = await first(base + "/ws?" + q)
    print(json.dumps(out))
asyncio.run(main())
"#;
    let output = Command::new(python).arg("-c").arg(script).arg(server.url()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(out["bad_v1"], json!({"code": 1008, "reason": "bad room", "frames": 0}));
    assert_eq!(out["bad_v2"], json!({"code": 4400, "reason": "bad room", "frames": 0}));
    assert_eq!(out["cap_v1"], json!({"code": 1013, "reason": "too many rooms", "frames": 0}));
    assert_eq!(out["cap_v2"], json!({"code": 4503, "reason": "too many rooms", "frames": 0}));
    assert_eq!(out["held"], json!({"frames": ["hello", "snapshot"]}));
}

/// Online compaction folds every room into the snapshot: after it, and after a restart, each room
/// has exactly its keys (and `ledger rooms` lists them).
#[test]
fn online_compaction_keeps_every_room() {
    let server = Server::start("[ledger]\ncompact_after_bytes = 4096\n");
    let rooms = ["_", "alpha", "beta", "gamma"];
    let mut clients: Vec<Client> = rooms
        .iter()
        .map(|r| Client::connect(&if *r == "_" { server.url() } else { url(&server, &format!("room={r}")) }))
        .collect();
    for i in 0..60 {
        for (room, client) in rooms.iter().zip(&mut clients) {
            client.set(&format!("k{}", i % 20), json!(format!("{room}-{i}")));
        }
    }
    for client in &mut clients {
        client.recv_until(|f| f["type"] == "set" && f["value"].as_str().is_some_and(|v| v.ends_with("-59")));
    }
    common::wait_until("a compaction", || common::metric(&server, "aether_compactions_total") >= 1.0);
    let dir = server.kill9();
    let server = Server::start_in(dir, "");
    for room in rooms {
        let query = if room == "_" { String::new() } else { format!("room={room}") };
        let data = Client::connect(&url(&server, &query)).snapshot["data"].clone();
        let expected: serde_json::Map<String, Value> =
            (40..60).map(|i| (format!("k{}", i % 20), json!(format!("{room}-{i}")))).collect();
        assert_eq!(data, Value::Object(expected), "room {room}");
    }
}

/// Exactly-once writes are per room: the same client id and `ref` in two rooms are two writes,
/// and a repeat within one room is still answered with the original ack.
#[test]
fn exactly_once_is_per_room() {
    let server = Server::start("");
    let mut a = Client::connect(&url(&server, "room=a&v=2&cid=tab-1"));
    let mut b = Client::connect(&url(&server, "room=b&v=2&cid=tab-1"));
    a.send(json!({"type": "set", "key": "k", "value": "a", "ref": 1}));
    let ack_a = a.recv_until(|f| f["type"] == "ack");
    b.send(json!({"type": "set", "key": "k", "value": "b", "ref": 1}));
    let ack_b = b.recv_until(|f| f["type"] == "ack");
    assert_ne!(ack_a["stamp"], ack_b["stamp"], "room b's write applied, not answered with room a's ack");
    assert_eq!(Client::connect(&url(&server, "room=b")).snapshot["data"], json!({"k": "b"}));
    a.send(json!({"type": "set", "key": "k", "value": "again", "ref": 1}));
    assert_eq!(a.recv_until(|f| f["type"] == "ack"), ack_a, "a repeat in room a gets its original ack");
}
