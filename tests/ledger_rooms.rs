//! Rooms in the ledger's files (issue #12): ledgers written by hand with ops in several rooms, by
//! several users, replayed with the library, compacted, pruned and queried with the real binary,
//! and booted by upstream's own `ChronoLedger` (in the upstream venv), which must see exactly our
//! default room; and a large room's snapshot, encoded on every core, sent as the ledger holds it.

use std::{
    collections::{BTreeMap, HashMap},
    fs::{self, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::Arc,
};

mod common;

use aether_actix::{
    hlc::Stamp,
    ledger::{Ledger, SyncMode, history, record, retention, snapshot_path},
    lww::{LwwMap, Op, RoomsReplay},
    room::Room,
};
use serde_json::{Value, json};

fn room(name: &str) -> Room {
    Room::from_written(name).unwrap()
}

fn set(room_name: &str, key: &str, value: Value, p: u64, by: Option<&str>) -> Op {
    Op::set(key, value, Stamp::new(p, 0, "alpha")).in_room(room(room_name)).by(by.map(Arc::from))
}

fn del(room_name: &str, key: &str, p: u64, by: Option<&str>) -> Op {
    Op::del(key, Stamp::new(p, 0, "alpha")).in_room(room(room_name)).by(by.map(Arc::from))
}

/// Appends `ops` as records, then `extra` lines as they are.
fn append(ledger: &Path, ops: &[Op], extra: &[&str]) {
    let mut bytes = Vec::new();
    for op in ops {
        record::encode(op, &mut bytes);
    }
    for line in extra {
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
    }
    OpenOptions::new().create(true).append(true).open(ledger).unwrap().write_all(&bytes).unwrap();
}

/// Every room's map as the library replays the ledger (snapshot included), and the replay's
/// corrupt-line count.
fn replay(ledger: &Path) -> (HashMap<Room, LwwMap>, u64) {
    let mut rooms = RoomsReplay::default();
    let (_, stats) = Ledger::open(ledger, SyncMode::Always, |op| {
        rooms.apply(op);
    })
    .unwrap();
    (rooms.finish(), stats.corrupt)
}

/// The live state each room must have after `ops`, as JSON objects, by room name.
fn expected(ops: &[Op], at: u64) -> BTreeMap<String, Value> {
    let mut rooms: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut sorted: Vec<&Op> = ops.iter().filter(|op| op.stamp.p <= at).collect();
    sorted.sort_by(|a, b| a.stamp.cmp(&b.stamp));
    for op in sorted {
        let map = rooms.entry(op.room.to_string()).or_default();
        match op.kind {
            aether_actix::lww::OpKind::Set => map.insert(op.key.clone(), op.value.to_value()),
            aether_actix::lww::OpKind::Del => map.remove(&op.key),
        };
    }
    rooms.into_iter().map(|(room, map)| (room, Value::Object(map))).collect()
}

fn live(rooms: &HashMap<Room, LwwMap>) -> BTreeMap<String, Value> {
    rooms
        .iter()
        .map(|(room, map)| {
            (room.to_string(), Value::Object(map.live().map(|(k, v)| (k.clone(), v.to_value())).collect()))
        })
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    ledger: PathBuf,
    config: PathBuf,
}

fn setup(ledger_keys: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let config = dir.path().join("aether.toml");
    fs::write(&config, format!("[ledger]\npath = {ledger:?}\n{ledger_keys}")).unwrap();
    Setup { _dir: dir, ledger, config }
}

fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aether-actix")).arg("--config").arg(config).args(args).output().unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(config: &Path, args: &[&str]) -> String {
    let out = cli(config, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn state(config: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(config, &[&["ledger", "state"], args].concat())).unwrap()
}

/// Boots upstream's own `ChronoLedger` on `ledger` (its snapshot included; it never writes unless
/// the tail is torn); returns its state and how many snapshot entries it loaded.
fn upstream_boot(ledger: &Path) -> (Value, u64) {
    const BOOT: &str = "import asyncio, json, sys
from aether_core import ChronoLedger, MeshNode
async def main():
    ledger = ChronoLedger(sys.argv[1])
    mesh = MeshNode('py', port=0, on_op=ledger.on_op)
    await ledger.boot(mesh)
    print(json.dumps({'state': mesh.snapshot(), 'snapshot_entries': ledger.snapshot_entries}))
    await ledger.close()
asyncio.run(main())
";
    let out = Command::new(common::upstream_python()).args(["-c", BOOT]).arg(ledger).output().unwrap();
    assert!(out.status.success(), "upstream boot: {}", String::from_utf8_lossy(&out.stderr));
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
    (reply["state"].clone(), reply["snapshot_entries"].as_u64().unwrap())
}

/// Three named rooms and the default room, two compactions (a room written before the first only
/// lives on in the first snapshot when the second is made), the history commands per room, and
/// upstream booting the result to exactly our default room.
#[test]
fn rooms_survive_replay_two_compactions_and_upstream_sees_only_the_default_room() {
    let s = setup("");
    let first = vec![
        set("_", "k", json!("default"), 10, None),
        set("_", "who", json!(1), 11, Some("alice")),
        set("board-1", "k", json!({"card": 1}), 12, Some("bob")),
        set("board-1", "k", json!({"card": 2}), 13, Some("carol")),
        set("board-2", "k", json!([2]), 14, None),
        set("only-first", "x", json!(true), 15, Some("dave")),
        del("board-2", "gone", 16, Some("bob")),
    ];
    let stamp = r#""stamp":{"p":17,"l":0,"n":"alpha"}"#;
    let upstream_with_room = format!(r#"{{"kind":"set","room":"board-1","key":"u","value":"default room",{stamp}}}"#);
    let bad_room = format!(r#"{{"room":"_hidden","op":"set","key":"k","value":"never",{stamp}}}"#);
    append(&s.ledger, &first, &[&upstream_with_room, &bad_room, "not json"]);
    let mut all = first.clone();
    all.push(set("_", "u", json!("default room"), 17, None));

    let (rooms, corrupt) = replay(&s.ledger);
    assert_eq!(corrupt, 2, "the bad room name and the garbage line");
    assert_eq!(live(&rooms), expected(&all, u64::MAX));
    assert_eq!(rooms.len(), 4);

    let out = ok(&s.config, &["compact"]);
    assert!(out.contains("in the default room and 3 named rooms"), "{out}");
    let snap: Value = serde_json::from_slice(&fs::read(snapshot_path(&s.ledger)).unwrap()).unwrap();
    let names: Vec<&String> = snap["rooms"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["board-1", "board-2", "only-first"]);
    assert_eq!(snap["entries"].as_array().unwrap().len(), 3, "the default room's k, who and u");
    assert_eq!(snap["max_stamp"]["p"], 17, "the default room's frontier");

    // A second batch, without `only-first`, and a second compaction.
    let second = vec![
        set("board-1", "k", json!({"card": 3}), 20, Some("erin")),
        set("_", "k", json!("default again"), 21, Some("alice")),
        del("board-2", "k", 22, None),
        set("board-3", "n", json!(null), 23, Some("frank")),
    ];
    append(&s.ledger, &second, &[]);
    all.extend(second.iter().cloned());
    ok(&s.config, &["compact"]);
    let (rooms, _) = replay(&s.ledger);
    let want = expected(&all, u64::MAX);
    assert_eq!(live(&rooms), want);
    assert_eq!(want["only-first"], json!({"x": true}), "kept from the first snapshot alone");
    assert!(rooms[&room("board-2")].register("gone").is_some_and(|r| r.tombstone), "tombstones kept");

    // Upstream boots our snapshot (extra `rooms` key) and ledger: the default room, nothing else.
    append(&s.ledger, &[set("board-1", "late", json!(1), 30, None), set("_", "late", json!(2), 31, None)], &[]);
    all.extend([set("board-1", "late", json!(1), 30, None), set("_", "late", json!(2), 31, None)]);
    let (upstream, entries) = upstream_boot(&s.ledger);
    let want = expected(&all, u64::MAX);
    assert_eq!(upstream, want["_"]);
    assert_eq!(entries, 3, "only the default room's entries");

    // History, per room.
    assert_eq!(state(&s.config, &[]), want["_"]);
    assert_eq!(state(&s.config, &["--room", "_"]), want["_"]);
    for name in ["board-1", "board-2", "board-3", "only-first"] {
        assert_eq!(state(&s.config, &["--room", name]), want[name], "{name}");
    }
    assert_eq!(state(&s.config, &["--room", "board-1", "--at", "12"]), json!({"k": {"card": 1}}));
    assert_eq!(state(&s.config, &["--room", "no-such-room"]), json!({}));
    let log = ok(&s.config, &["ledger", "log", "k", "--room", "board-1"]);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3, "{log}");
    for (line, by) in lines.iter().zip(["bob", "carol", "erin"]) {
        assert!(line.contains(&format!("  by={by}  set  {{\"card\":")), "{log}");
    }
    assert!(lines[2].starts_with('*'), "{log}");
    let log = ok(&s.config, &["ledger", "log", "k"]);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].ends_with("  alpha  l=0  set  \"default\""), "no author: today's line: {log}");
    assert!(lines[1].ends_with("  alpha  l=0  by=alice  set  \"default again\""), "{log}");
    let rooms = ok(&s.config, &["ledger", "rooms"]);
    let rows: Vec<Vec<&str>> = rooms.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            vec!["ROOM", "LIVE", "KEYS", "REGISTERS"],
            vec!["_", "4", "4"],
            vec!["board-1", "2", "2"],
            vec!["board-2", "0", "2"],
            vec!["board-3", "1", "1"],
            vec!["only-first", "1", "1"],
        ],
        "{rooms}"
    );
}

/// Retention folds every room into the history base, apart; history stays exact per room from
/// that room's own horizon, and a room the pruned archives never wrote keeps its whole history.
#[test]
fn retention_folds_archives_per_room() {
    let s = setup("keep_archives = 1\n");
    let batches = [
        vec![set("a", "k", json!(1), 100, Some("u1")), set("b", "k", json!(1), 101, None), del("b", "d", 102, None)],
        vec![set("a", "k", json!(2), 200, Some("u2")), set("a", "j", json!(3), 201, None)],
        vec![set("_", "k", json!(3), 300, None), set("a", "k", json!(4), 301, Some("u3"))],
    ];
    let mut all = Vec::new();
    for batch in &batches {
        append(&s.ledger, batch, &[]);
        all.extend(batch.iter().cloned());
        ok(&s.config, &["compact"]);
    }
    assert_eq!(history::archives(&s.ledger).unwrap().len(), 1, "two pruned");
    let base: Value = serde_json::from_slice(&fs::read(retention::base_path(&s.ledger)).unwrap()).unwrap();
    assert_eq!(base["entries"], json!([]), "the default room was only written after the cut");
    assert_eq!(base["rooms"]["a"].as_array().unwrap().len(), 2);
    assert_eq!(base["rooms"]["b"].as_array().unwrap().len(), 2);
    let (rooms, _) = replay(&s.ledger);
    assert_eq!(live(&rooms), expected(&all, u64::MAX));

    // Room b's history is exact from its own newest folded write (102), room a's from 201.
    assert_eq!(state(&s.config, &["--room", "b", "--at", "102"]), json!({"k": 1}));
    let refused = cli(&s.config, &["ledger", "state", "--room", "b", "--at", "101"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("history is exact only from"));
    assert_eq!(state(&s.config, &["--room", "a", "--at", "201"]), json!({"k": 2, "j": 3}));
    assert_eq!(state(&s.config, &["--room", "a", "--at", "301"]), json!({"k": 4, "j": 3}));
    assert_eq!(cli(&s.config, &["ledger", "state", "--room", "a", "--at", "200"]).status.code(), Some(2));
    // The default room lost nothing to pruning: its whole history is still there.
    let out = cli(&s.config, &["ledger", "state", "--at", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("history exact from the first write"));
    // A's log: the horizon's value (`~`, no author: the base keeps none), then the live write.
    let log = ok(&s.config, &["ledger", "log", "k", "--room", "a"]);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 2, "{log}");
    assert!(lines[0].starts_with('~') && lines[0].ends_with("  set  2"), "{log}");
    assert!(lines[1].starts_with('*') && lines[1].ends_with("  by=u3  set  4"), "{log}");
}

/// A room big enough that its snapshot is encoded on every core (60,000 live keys, over the
/// relay's parallel threshold): a booted relay sends a v1 and a v2 client exactly the state its
/// ledger holds, each key once and in order, with the v2 resume token.
#[test]
fn a_large_rooms_snapshot_is_the_ledgers_state_in_both_versions() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ledger = dir.path().join("ledger.jsonl");
    let mut ops: Vec<Op> = (0..60_000u64)
        .map(|i| Op::set(format!("k{i:05}"), json!({"i": i, "s": "é\"\n"}), Stamp::new(10 + i, 0, "alpha")))
        .collect();
    // Overwrites and deletes among them, then a few past the end.
    ops.extend(
        (0..60_000u64).step_by(7).map(|i| Op::set(format!("k{i:05}"), json!(i), Stamp::new(100_000 + i, 0, "b"))),
    );
    ops.extend((0..60_000u64).step_by(11).map(|i| Op::del(format!("k{i:05}"), Stamp::new(200_000 + i, 0, "b"))));
    ops.extend((0..500u64).map(|i| Op::set(format!("z{i}"), json!([i]), Stamp::new(300_000 + i, 0, "b"))));
    append(&ledger, &ops, &[]);
    let want = expected(&ops, u64::MAX).into_values().next().unwrap();
    assert!(want.as_object().unwrap().len() > 50_000);
    let server = common::Server::start_in(dir, "");
    for (path, v2) in [("/ws", false), ("/ws?v=2", true)] {
        let url = server.url().replace("/ws", path);
        let mut ws = common::Client::raw(&url);
        assert_eq!(common::recv_json(&mut ws)["type"], "hello");
        // Read as text, so that a key sent twice would show (a JSON object keeps the last).
        let text = loop {
            match ws.read().unwrap() {
                tungstenite::Message::Text(text) => break text.to_string(),
                _ => continue,
            }
        };
        let snapshot: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(snapshot["type"], "snapshot");
        assert_eq!(snapshot["data"], want, "{path}");
        let keys: Vec<&String> = snapshot["data"].as_object().unwrap().keys().collect();
        assert_eq!(text.matches("\"k").count() + text.matches("\"z").count(), keys.len(), "each key once");
        assert_eq!(snapshot["resume"].is_string(), v2, "{path}");
    }
}
