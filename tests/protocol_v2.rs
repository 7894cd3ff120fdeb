//! Protocol v2 (`?v=2`) against the real binary: stamps, origins, sequence numbers, acks, nacks,
//! resume with a delta, actionable close codes; and v1 clients never see any of it.

mod common;

use std::collections::BTreeSet;

use common::{Client, Closed, Server, wait_closed};
use serde_json::{Value, json};

fn v2(server: &Server, query: &str) -> Client {
    Client::connect(&format!("{}?v=2{query}", server.url()))
}

fn keys(frame: &Value) -> BTreeSet<String> {
    frame.as_object().unwrap().keys().cloned().collect()
}

fn set_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn v2_frames_carry_stamps_origins_and_seqs_and_v1_frames_stay_exact() {
    let server = Server::start("");
    let mut old = server.client();
    let mut new = v2(&server, "");
    assert_eq!(keys(&new.hello), set_of(&["type", "id", "color", "v", "node", "access"]));
    assert_eq!((new.hello["v"].clone(), new.hello["node"].clone()), (json!(2), json!("alpha")));
    assert_eq!(keys(&new.snapshot), set_of(&["type", "data", "resume"]));

    new.send(json!({"type": "set", "key": "k", "value": 1, "ref": 7}));
    let echo = new.recv();
    assert_eq!(keys(&echo), set_of(&["type", "key", "value", "stamp", "origin", "seq"]));
    assert_eq!((echo["origin"].clone(), echo["value"].clone()), (new.hello["id"].clone(), json!(1)));
    let stamp = echo["stamp"].as_str().unwrap().to_owned();
    assert!(stamp.ends_with(".alpha") && stamp.len() == 20 + 1 + 10 + 1 + 5, "{stamp}");
    let ack = new.recv();
    assert_eq!(ack, json!({"type": "ack", "ref": 7, "key": "k", "stamp": stamp, "seq": echo["seq"]}));

    // The v1 client got exactly upstream's frame, nothing more.
    assert_eq!(old.recv(), json!({"type": "set", "key": "k", "value": 1}));
    new.send(json!({"type": "delete", "key": "k", "ref": "d1"}));
    let del = new.recv();
    assert_eq!(keys(&del), set_of(&["type", "key", "stamp", "origin", "seq"]));
    assert_eq!(del["seq"].as_u64(), Some(echo["seq"].as_u64().unwrap() + 1));
    assert!(del["stamp"].as_str().unwrap() > stamp.as_str(), "stamps compare as text");
    assert_eq!(new.recv()["type"], "ack");
    assert_eq!(old.recv(), json!({"type": "delete", "key": "k"}));
    // A v1 writer's writes reach v2 clients with its origin, and need no ref.
    old.set("from-v1", json!(true));
    assert_eq!(new.recv()["origin"], old.hello["id"]);
}

#[test]
fn v2_refused_writes_get_a_nack_v1_stays_silent() {
    let server = Server::start("");
    let mut new = v2(&server, "");
    new.send(json!({"type": "set", "key": "", "value": 1, "ref": "a"}));
    assert_eq!(new.recv(), json!({"type": "nack", "ref": "a", "reason": "bad_key"}));
    new.send(json!({"type": "set", "key": "big", "value": "x".repeat(40_000), "ref": 9}));
    assert_eq!(new.recv(), json!({"type": "nack", "ref": 9, "reason": "bad_value"}));
    // No ref, no nack; nothing else comes back.
    new.send(json!({"type": "set", "key": ""}));
    new.send(json!({"type": "set", "key": "ok", "value": 1}));
    assert_eq!(new.recv()["key"], "ok");
    let mut old = server.client();
    old.send(json!({"type": "set", "key": "", "value": 1, "ref": "a"}));
    old.set("after", json!(1));
    assert_eq!(old.recv(), json!({"type": "set", "key": "after", "value": 1}));
}

#[test]
fn resume_sends_only_what_changed_and_a_foreign_token_gets_the_whole_state() {
    let server = Server::start("");
    let mut writer = server.client();
    for i in 0..5 {
        writer.set(&format!("k{i}"), json!(i));
    }
    writer.recv_set("k4");
    let first = v2(&server, "");
    let token = first.snapshot["resume"].as_str().unwrap().to_owned();
    assert_eq!(first.snapshot["data"].as_object().unwrap().len(), 5);
    drop(first);
    writer.set("k1", json!("changed"));
    writer.delete("k2");
    writer.set("k9", json!("new"));
    writer.recv_set("k9");

    let resumed = v2(&server, &format!("&resume={token}"));
    assert_eq!(resumed.snapshot["type"], "delta");
    assert_eq!(resumed.snapshot["data"], json!({"k1": "changed", "k9": "new"}));
    assert_eq!(resumed.snapshot["deleted"], json!(["k2"]));
    assert_ne!(resumed.snapshot["resume"], json!(token));
    // Nothing changed since: an empty delta.
    let again = v2(&server, &format!("&resume={}", resumed.snapshot["resume"].as_str().unwrap()));
    assert_eq!((again.snapshot["data"].clone(), again.snapshot["deleted"].clone()), (json!({}), json!([])));
    // A token from another run (or garbage) gets the whole state.
    for stale in ["0123456789abcdef.3", "nonsense", &format!("{}9", token)] {
        let whole = v2(&server, &format!("&resume={stale}"));
        assert_eq!(whole.snapshot["type"], "snapshot", "{stale}");
        assert_eq!(whole.snapshot["data"].as_object().unwrap().len(), 5);
    }
    // Across a restart the run changes: the whole state again.
    let restarted = Server::start_in(server.kill9(), "");
    let after = v2(&restarted, &format!("&resume={token}"));
    assert_eq!(after.snapshot["type"], "snapshot");
}

#[test]
fn v2_close_codes_say_what_to_do() {
    let server = Server::start(
        "[auth]\ntoken = \"t\"\n[limits]\nmessages_burst = 5\nmessages_per_second = 1.0\nmax_connections_per_source = 3\n",
    );
    let url = server.url();
    let mut refused = Client::raw(&format!("{url}?v=2&auth_token=wrong"));
    assert_eq!(wait_closed(&mut refused), Closed::Frame(4401, "auth failed".into()));
    let mut flood = Client::connect(&format!("{url}?v=2&auth_token=t"));
    for i in 0..20 {
        let _ = flood
            .ws
            .send(tungstenite::Message::text(json!({"type": "set", "key": format!("f{i}"), "value": i}).to_string()));
    }
    assert_eq!(flood.closed(), Closed::Frame(4429, "rate limit".into()));
    let _a = Client::connect(&format!("{url}?v=2&auth_token=t"));
    let _b = Client::connect(&format!("{url}?v=2&auth_token=t"));
    let _c = Client::connect(&format!("{url}?v=2&auth_token=t"));
    let mut busy = Client::raw(&format!("{url}?v=2&auth_token=t"));
    assert_eq!(wait_closed(&mut busy), Closed::Frame(4503, "server busy".into()));
    // v1 keeps upstream's codes.
    let mut busy_v1 = Client::raw(&format!("{url}?auth_token=t"));
    assert_eq!(wait_closed(&mut busy_v1), Closed::Frame(1013, "server busy".into()));
}

#[test]
fn readme_protocol_v2_block_matches_the_running_server() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let (inbound, outbound) = common::readme_protocol_block(&readme, "protocol-v2");
    let types = |frames: &[common::Documented]| frames.iter().map(|f| f.0.clone()).collect::<Vec<_>>();
    assert_eq!(types(&inbound), ["set", "delete", "presence", "presence-leave", "auth", "ping"]);
    let server = Server::start("");
    let mut writer = server.client();
    writer.set("gone", json!(0));
    writer.recv_set("gone");
    let first = v2(&server, "");
    let token = first.snapshot["resume"].as_str().unwrap().to_owned();
    drop(first);
    writer.delete("gone");
    writer.recv_until(|f| f["type"] == "delete");
    let (mut a, mut b) = (v2(&server, &format!("&resume={token}")), v2(&server, ""));
    let mut seen = vec![a.hello.clone(), b.snapshot.clone(), a.snapshot.clone()];
    a.send(json!({"type": "set", "key": "k", "value": 1, "ref": 1}));
    seen.push(a.recv());
    a.send(json!({"type": "delete", "key": "k", "ref": 2}));
    seen.push(a.recv_until(|f| f["type"] == "delete"));
    seen.push(a.recv());
    a.send(json!({"type": "set", "key": "", "value": 1, "ref": 3}));
    seen.push(a.recv());
    a.send(json!({"type": "presence", "x": 1, "y": 2}));
    seen.push(b.recv_until(|f| f["type"] == "presence"));
    let a_id = a.id();
    // A tab's cursor and its leave (the documented inbound `tab` and `presence-leave`).
    a.send(json!({"type": "presence", "x": 1, "y": 2, "tab": "t"}));
    let tab_cursor = b.recv_until(|f| f["type"] == "presence");
    assert_eq!(keys(&tab_cursor), keys(&seen[seen.len() - 1]));
    assert_eq!(tab_cursor["id"], format!("{a_id}:t"));
    a.send(json!({"type": "presence-leave", "tab": "t"}));
    let tab_leave = b.recv_until(|f| f["type"] == "presence-leave");
    assert_eq!(tab_leave["id"], format!("{a_id}:t"));
    drop(a);
    seen.push(b.recv_until(|f| f["type"] == "presence-leave" && f["id"] == a_id));
    b.send(json!({"type": "ping"}));
    seen.push(b.recv_until(|f| f["type"] == "pong"));
    // A fresh token (here the shared secret of a relay with auth) is answered with auth_ok.
    let with_auth = Server::start("[auth]\ntoken = \"t\"\n");
    let mut c = Client::connect(&format!("{}?v=2&auth_token=t", with_auth.url()));
    c.send(json!({"type": "auth", "token": "t"}));
    seen.push(c.recv_until(|f| f["type"] == "auth_ok"));
    let seen_types: Vec<String> = seen.iter().map(|f| f["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(seen_types, types(&outbound));
    for (frame, (ty, fields)) in seen.iter().zip(&outbound) {
        assert_eq!(&keys(frame), fields, "fields of {ty}: {frame}");
    }
}

/// The next frame that is not about presence (closed connections' leaves come at any time).
fn next_op(client: &mut Client) -> Value {
    client.recv_until(|f| !f["type"].as_str().unwrap_or("").starts_with("presence"))
}

/// Exactly-once writes (`?cid=`): a write applied while its socket dropped before the ack is
/// answered, when sent again, with the original ack; it is not applied a second time, so another
/// client's later write survives. v1 ignores `cid` and applies every write.
#[test]
fn a_repeated_write_with_a_client_id_is_answered_not_applied_again() {
    let server = Server::start("");
    let mut watcher = v2(&server, "");
    let url = format!("{}?v=2&cid=tab-1", server.url());

    // Send, see it applied, drop the socket without reading the ack: the writer never learns.
    let mut first = Client::connect(&url);
    first.send(json!({"type": "set", "key": "k", "value": "mine", "ref": "w-1"}));
    let applied = watcher.recv_set("k");
    assert_eq!(applied["value"], "mine");
    drop(first);

    // Meanwhile another client writes the same key.
    let mut other = v2(&server, "&cid=tab-2");
    other.send(json!({"type": "set", "key": "k", "value": "theirs", "ref": "w-1"}));
    let theirs = other.recv_until(|f| f["type"] == "ack");
    assert_eq!(watcher.recv_set("k")["value"], "theirs");

    // The first client reconnects with its id and sends its unacknowledged write again.
    let mut again = Client::connect(&url);
    assert_eq!(again.snapshot["data"]["k"], "theirs");
    again.send(json!({"type": "set", "key": "k", "value": "mine", "ref": "w-1"}));
    let ack = next_op(&mut again);
    assert_eq!(
        ack,
        json!({"type": "ack", "ref": "w-1", "key": "k", "stamp": applied["stamp"], "seq": applied["seq"]}),
        "the original ack"
    );
    assert!(ack["stamp"].as_str() < theirs["stamp"].as_str());
    // Nothing was applied: the next frame anyone sees is a later, unrelated write.
    again.send(json!({"type": "set", "key": "marker", "value": 1, "ref": "w-2"}));
    assert_eq!(next_op(&mut watcher)["key"], "marker", "no second apply of w-1");
    let fresh = v2(&server, "");
    assert_eq!(fresh.snapshot["data"]["k"], "theirs");

    // A repeat sent while the first is still in flight is applied once; both get the same ack.
    let (mut a, mut b) = (Client::connect(&url), Client::connect(&url));
    a.send(json!({"type": "delete", "key": "k", "ref": "w-3"}));
    b.send(json!({"type": "delete", "key": "k", "ref": "w-3"}));
    let ack_a = a.recv_until(|f| f["type"] == "ack");
    let ack_b = b.recv_until(|f| f["type"] == "ack");
    assert_eq!(ack_a, ack_b);
    assert_eq!(next_op(&mut watcher)["type"], "delete");
    watcher.send(json!({"type": "set", "key": "after", "value": 1}));
    assert_eq!(next_op(&mut watcher)["key"], "after", "one delete, not two");

    // v1: `cid` means nothing; both copies apply; a `ping` gets no answer.
    let mut old = Client::connect(&format!("{}?cid=tab-1", server.url()));
    old.send(json!({"type": "ping"}));
    old.send(json!({"type": "set", "key": "v1", "value": 0}));
    assert_eq!(old.recv_set("v1"), json!({"type": "set", "key": "v1", "value": 0}));
    drop(old);
    let mut old = Client::connect(&format!("{}?cid=tab-1", server.url()));
    old.send(json!({"type": "set", "key": "v1", "value": 1, "ref": "w-1"}));
    old.send(json!({"type": "set", "key": "v1", "value": 1, "ref": "w-1"}));
    assert_eq!(old.recv_set("v1"), json!({"type": "set", "key": "v1", "value": 1}));
    assert_eq!(old.recv_set("v1"), json!({"type": "set", "key": "v1", "value": 1}));
}

/// Frames up to the `pong` answering a `ping` sent now: what the relay had queued for `client`.
fn until_pong(client: &mut Client) -> Vec<Value> {
    client.send(json!({"type": "ping"}));
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let frame = client.recv();
        if frame["type"] == "pong" {
            return seen;
        }
        seen.push(frame);
    }
    panic!("no pong: {seen:?}")
}

fn dropped_presence(server: &Server) -> f64 {
    common::metric(server, "aether_messages_dropped_total{reason=\"bad_presence\"}")
}

/// v2 tab cursors (`"tab"` on `presence`): one connection (a browser's leader tab) shows each of
/// its tabs as its own cursor `<id>:<tab>` to v1 and v2 members alike (never back to itself);
/// `presence-leave` with a tab takes one away; the connection's end takes away its own and every
/// tab's, each once. Bad tab ids and one tab too many are dropped as `bad_presence`; v1 ignores
/// `tab` and drops `presence-leave` as upstream does.
#[test]
fn tab_cursors_are_cursors_of_their_own_and_leave_each_once() {
    let server = Server::start("");
    let mut leader = v2(&server, "");
    let (mut watcher, mut old) = (v2(&server, ""), server.client());
    let id = leader.id();
    let tab = |t: &str| format!("{id}:{t}");

    leader.send(json!({"type": "presence", "x": 1, "y": 2, "tab": "t-1"}));
    // In the connection's colour: the browser's tabs show each other's cursors alike.
    let own_color = leader.hello["color"].as_str().unwrap().to_owned();
    let expected = json!({"type": "presence", "id": tab("t-1"), "color": own_color, "x": 1, "y": 2});
    assert_eq!(watcher.recv_until(|f| f["type"] == "presence"), expected);
    assert_eq!(old.recv_until(|f| f["type"] == "presence"), expected, "v1 members see it as any cursor");
    leader.send(json!({"type": "presence", "x": 3, "y": 4, "tab": "t-2"}));
    leader.send(json!({"type": "presence", "x": 5, "y": 6}));
    for member in [&mut watcher, &mut old] {
        // Coalesced in one tick: in either order.
        let mut colors = std::collections::BTreeMap::new();
        while colors.len() < 2 {
            let seen = member.recv_until(|f| f["type"] == "presence");
            colors.insert(seen["id"].as_str().unwrap().to_owned(), seen["color"].as_str().unwrap().to_owned());
        }
        assert_eq!(colors, [(tab("t-2"), own_color.clone()), (id.clone(), own_color.clone())].into());
    }
    assert!(until_pong(&mut leader).iter().all(|f| f["type"] != "presence"), "its own cursors are not sent back");
    // (`old` has not moved yet: every presence the leader could get would be its own.)

    // Bad tab ids: dropped, counted, nothing shown.
    let before = dropped_presence(&server);
    let long = "a".repeat(65);
    for bad in [json!(""), json!("a b"), json!(long), json!(7), json!(null)] {
        leader.send(json!({"type": "presence", "x": 9, "y": 9, "tab": bad}));
    }
    leader.send(json!({"type": "presence-leave"}));
    leader.send(json!({"type": "presence-leave", "tab": "no such tab"}));
    common::wait_until("bad tabs counted", || dropped_presence(&server) == before + 7.0);
    leader.send(json!({"type": "presence-leave", "tab": "never-shown"}));
    leader.send(json!({"type": "presence", "x": 7, "y": 7, "tab": "t-1"}));
    let next = watcher.recv_until(|f| f["type"].as_str().unwrap().starts_with("presence"));
    assert_eq!((next["id"].as_str(), next["x"].as_i64()), (Some(tab("t-1").as_str()), Some(7)), "{next}");

    // A v1 client's `tab` is ignored (its own cursor), its `presence-leave` dropped.
    old.send(json!({"type": "presence", "x": 1, "y": 1, "tab": "a b"}));
    old.send(json!({"type": "presence-leave", "tab": "t"}));
    let seen = watcher.recv_until(|f| f["type"] == "presence" && f["id"] == old.id());
    assert_eq!(seen["color"], old.hello["color"]);
    assert!(until_pong(&mut watcher).is_empty());

    // One tab leaves: everyone else is told, once; the leader is not.
    leader.send(json!({"type": "presence-leave", "tab": "t-1"}));
    leader.send(json!({"type": "presence-leave", "tab": "t-1"}));
    let leave = json!({"type": "presence-leave", "id": tab("t-1")});
    assert_eq!(watcher.recv_until(|f| f["type"] == "presence-leave"), leave);
    assert_eq!(old.recv_until(|f| f["type"] == "presence-leave"), leave);
    let own = |f: &Value| f["id"].as_str().is_some_and(|i| i.starts_with(id.as_str()));
    assert!(!until_pong(&mut leader).iter().any(own), "not told of its own tab's leave");

    // At most 32 tabs at once: the 33rd is dropped until one leaves.
    for i in 0..31 {
        leader.send(json!({"type": "presence", "x": i, "y": 0, "tab": format!("many-{i}")}));
    }
    common::wait_until("31 more tabs shown", || {
        watcher.next_within(std::time::Duration::from_millis(50)).is_some_and(|f| f["id"] == tab("many-30"))
    });
    let before = dropped_presence(&server);
    leader.send(json!({"type": "presence", "x": 0, "y": 0, "tab": "one-too-many"}));
    common::wait_until("the 33rd tab dropped", || dropped_presence(&server) == before + 1.0);
    leader.send(json!({"type": "presence-leave", "tab": "many-0"}));
    for member in [&mut watcher, &mut old] {
        member.recv_until(|f| f["type"] == "presence-leave" && f["id"] == tab("many-0"));
    }
    leader.send(json!({"type": "presence", "x": 0, "y": 0, "tab": "one-too-many"}));
    watcher.recv_until(|f| f["type"] == "presence" && f["id"] == tab("one-too-many"));

    // The connection ends: its own cursor and each tab it still shows leave, each exactly once.
    let mut expected: BTreeSet<String> = (1..31).map(|i| tab(&format!("many-{i}"))).collect();
    expected.extend([id.clone(), tab("t-2"), tab("one-too-many")]);
    drop(leader);
    for member in [&mut watcher, &mut old] {
        let mut left = BTreeSet::new();
        while left.len() < expected.len() {
            let frame = member.recv_until(|f| f["type"] == "presence-leave");
            assert!(left.insert(frame["id"].as_str().unwrap().to_owned()), "twice: {frame}");
        }
        assert_eq!(left, expected);
    }
    let rest = until_pong(&mut watcher);
    assert!(rest.iter().all(|f| f["type"] != "presence-leave"), "{rest:?}");
}

/// Tab cursors as a client that is not ours sends and sees them: Python `websockets`, a v2
/// connection carrying two tabs and a v1 connection watching.
#[test]
fn tab_cursors_with_python_websockets() {
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/closes-venv/bin/python");
    let python = std::env::var_os("AETHER_CLOSES_PYTHON")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain([venv])
        .find(|p| {
            std::process::Command::new(p).args(["-c", "import websockets"]).output().is_ok_and(|o| o.status.success())
        })
        .expect("no Python with websockets: run tests/run.sh once (it makes target/closes-venv)");
    let server = Server::start("");
    let script = r#"
import asyncio, json, sys, websockets
async def until(ws, pred):
    while True:
        f = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if pred(f):
            return f
async def main():
    url = sys.argv[1]
    async with websockets.connect(url) as watcher:
        await until(watcher, lambda f: f["type"] == "snapshot")
        leader = await websockets.connect(url + "?v=2")
        me = (await until(leader, lambda f: f["type"] == "hello"))["id"]
        for tab in ["py-1", "py-2"]:
            await leader.send(json.dumps({"type": "presence", "x": 4, "y": 2, "tab": tab}))
        shown = set()
        while len(shown) < 2:
            shown.add((await until(watcher, lambda f: f["type"] == "presence"))["id"])
        await leader.send(json.dumps({"type": "presence-leave", "tab": "py-1"}))
        left = [(await until(watcher, lambda f: f["type"] == "presence-leave"))["id"]]
        await leader.close()
        while len(left) < 3:
            left.append((await until(watcher, lambda f: f["type"] == "presence-leave"))["id"])
        print(json.dumps({"me": me, "shown": sorted(shown), "left": left}))
asyncio.run(main())
"#;
    let output = std::process::Command::new(python).arg("-c").arg(script).arg(server.url()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    let me = out["me"].as_str().unwrap();
    assert_eq!(out["shown"], json!([format!("{me}:py-1"), format!("{me}:py-2")]));
    // Its end: a leave for its own id (as for every connection) and for the tab still shown.
    assert_eq!(out["left"], json!([format!("{me}:py-1"), me, format!("{me}:py-2")]));
}
