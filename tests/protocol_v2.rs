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
    assert_eq!(types(&inbound), ["set", "delete", "presence", "auth", "ping"]);
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
