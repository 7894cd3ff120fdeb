//! Durability against the real binary: kill -9 under load, upstream ledgers, graceful shutdown.

mod common;

use std::{
    collections::HashMap,
    fs,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use common::{Client, Closed, Server};
use serde_json::{Value, json};
use tungstenite::Message;

const FAST: &str = "[limits]\nmessages_per_second = 1000000.0\nmessages_burst = 1000000\n";

/// Many concurrent writers, `kill -9` while writes are in flight, restart on the same ledger:
/// every write any client was shown is still there.
#[test]
fn nothing_any_client_was_shown_is_lost_by_kill_9() {
    let server = Server::start(FAST);
    let shown = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (url, shown) = (server.url(), Arc::clone(&shown));
            thread::spawn(move || {
                let mut client = Client::connect(&url);
                let mut seen: HashMap<String, Value> = HashMap::new();
                'outer: for round in 0.. {
                    for i in 0..16 {
                        let key = format!("w{w}:{}", round * 16 + i);
                        let text = json!({"type": "set", "key": key, "value": round * 16 + i}).to_string();
                        if client.ws.send(Message::text(text)).is_err() {
                            break 'outer;
                        }
                    }
                    // Read until our own 16 echoes are back, recording everything we are shown.
                    let mut own = 0;
                    while own < 16 {
                        let text = match client.ws.read() {
                            Ok(Message::Text(text)) => text,
                            Ok(_) => continue, // pings
                            Err(_) => break 'outer,
                        };
                        let frame: Value = serde_json::from_str(&text).unwrap();
                        let key = frame["key"].as_str().unwrap_or_else(|| panic!("unexpected {frame}")).to_owned();
                        if key.starts_with(&format!("w{w}:")) {
                            own += 1;
                        }
                        seen.insert(key, frame["value"].clone());
                        shown.fetch_add(1, Ordering::Relaxed);
                    }
                }
                seen
            })
        })
        .collect();
    common::wait_until("clients to be shown 3000 writes", || shown.load(Ordering::Relaxed) >= 3000);
    let dir = server.kill9();
    let mut all_shown: HashMap<String, Value> = HashMap::new();
    for writer in writers {
        all_shown.extend(writer.join().unwrap());
    }
    assert!(all_shown.len() >= 375, "writers saw {} distinct writes", all_shown.len());

    let restarted = Server::start_in(dir, FAST);
    let data = restarted.client().snapshot["data"].clone();
    let missing: Vec<&String> =
        all_shown.iter().filter(|(k, v)| data.get(k.as_str()) != Some(v)).map(|(k, _)| k).collect();
    assert!(
        missing.is_empty(),
        "{} shown writes lost after kill -9, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // The restarted relay keeps accepting writes after whatever the crash left behind.
    let mut c = restarted.client();
    c.set("after:restart", json!(1));
    c.recv_set("after:restart");
}

/// A ledger written by upstream 0.4.0, damaged the two ways crashes and bugs damage it, loads.
#[test]
fn upstream_ledger_with_null_corrupt_line_and_torn_tail_replays() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let upstream = include_str!("fixtures/upstream-0.4.0.jsonl");
    let mut lines: Vec<&str> = upstream.lines().collect();
    lines.insert(3, "{\"kind\":\"set\",\"key\":\"broken\",\"val");
    let torn = "{\"kind\":\"set\",\"key\":\"torn\",\"value\":1,\"stamp\":{\"p\":17959042513330";
    let ledger = dir.path().join("ledger.jsonl");
    fs::write(&ledger, format!("{}\n{torn}", lines.join("\n"))).unwrap();
    let good_len = fs::metadata(&ledger).unwrap().len() - torn.len() as u64;

    let server = Server::start_in(Arc::clone(&dir), "");
    let data = server.client().snapshot["data"].clone();
    assert_eq!(
        data,
        json!({
            "board:title": "Ünïcødé ✓ 🚀",
            "card:1": {"title": "first", "order": 1, "tags": ["a", "b"]},
            "count": 42,
            "float": 1.5e-7,
            "nothing": null,
        })
    );
    assert_eq!(fs::metadata(&ledger).unwrap().len(), good_len, "torn tail cut off");
    let log = server.log();
    assert!(log.contains("8 records") && log.contains("1 corrupt lines skipped"), "{log}");
    // New writes carry on in upstream's record format after the repaired tail.
    let mut c = server.client();
    c.set("count", json!(43));
    c.recv_set("count");
    let text = fs::read_to_string(&ledger).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "set");
    assert_eq!(last["value"], 43);
    assert_eq!(last["stamp"]["n"], "alpha");
    assert!(last["stamp"]["p"].as_u64().unwrap() > 1_795_904_251_333_083_606, "clock moved past replayed stamps");
}

#[test]
fn null_values_survive_a_restart() {
    let server = Server::start("");
    let mut c = server.client();
    c.set("n", Value::Null);
    c.recv_set("n");
    let dir = server.kill9();
    let restarted = Server::start_in(dir, "");
    assert_eq!(restarted.client().snapshot["data"], json!({"n": null}));
}

/// SIGTERM: accepted writes are made durable and sent, clients get 1001, exit status 0.
#[test]
fn sigterm_flushes_closes_clients_with_1001_and_exits_0() {
    let server = Server::start(FAST);
    let mut watcher = server.client();
    let mut writer = server.client();
    for i in 0..200 {
        writer.set(&format!("k{i}"), json!(i));
    }
    watcher.recv_set("k0"); // writes are flowing
    // Keep reading (and answering pings) while the relay shuts down.
    let reader = thread::spawn(move || {
        let mut received = vec![json!(0)];
        loop {
            match watcher.ws.read() {
                Ok(Message::Text(text)) => {
                    received.push(serde_json::from_str::<Value>(&text).unwrap()["value"].clone())
                }
                Ok(Message::Close(Some(frame))) => {
                    return (received, Closed::Frame(frame.code.into(), frame.reason.to_string()));
                }
                Ok(_) => {}
                Err(_) => return (received, Closed::Eof),
            }
        }
    });
    let dir = Arc::clone(&server.dir);
    let (status, log) = server.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{log}");
    // Everything the watcher received before the close is durable; the close code is 1001.
    let (received, closed) = reader.join().unwrap();
    assert_eq!(closed, Closed::Frame(1001, "server shutting down".into()), "log:\n{log}");
    let restarted = Server::start_in(dir, "");
    let data = restarted.client().snapshot["data"].clone();
    for (i, value) in received.iter().enumerate() {
        assert_eq!(&data[format!("k{i}")], value);
    }
}

#[test]
fn a_second_relay_on_the_same_ledger_is_refused() {
    let server = Server::start("");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .arg("--config")
        .arg(&server.config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another process"), "{stderr}");
}

/// Many concurrent writers share fsyncs: the relay appends far fewer batches than writes.
#[test]
fn concurrent_writers_share_fsyncs_group_commit() {
    let server = Server::start(FAST);
    let writers: Vec<_> = (0..32)
        .map(|w| {
            let url = server.url();
            thread::spawn(move || {
                let mut c = Client::connect(&url);
                for i in 0..50 {
                    c.set(&format!("g{w}:{i}"), json!(i));
                }
                c.recv_set(&format!("g{w}:49"));
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let health: Value = serde_json::from_str(&server.get("/healthz").1).unwrap();
    let (writes, batches) = (health["durable_writes"].as_u64().unwrap(), health["ledger_batches"].as_u64().unwrap());
    assert_eq!(writes, 32 * 50);
    eprintln!("{writes} writes in {batches} batches");
    assert!(batches * 4 <= writes, "{batches} batches for {writes} writes: fsyncs are not shared");
}

/// A ledger with ops of named rooms and authors boots; a client of the default room (every v1 and
/// upstream client) sees exactly the default room's keys, and the named rooms' records stay.
#[test]
fn a_ledger_with_named_rooms_boots_and_the_default_room_sees_only_its_own() {
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let ledger = dir.path().join("ledger.jsonl");
    let stamp = |p: u64| format!(r#""stamp":{{"p":{p},"l":0,"n":"alpha"}}"#);
    let lines = [
        format!(r#"{{"kind":"set","key":"shared","value":"default",{}}}"#, stamp(1)),
        format!(r#"{{"kind":"set","key":"mine","value":1,{},"by":"alice"}}"#, stamp(2)),
        format!(r#"{{"room":"board-1","op":"set","key":"shared","value":"board",{},"by":"bob"}}"#, stamp(3)),
        format!(r#"{{"room":"board-1","op":"set","key":"only-board","value":true,{}}}"#, stamp(4)),
        format!(r#"{{"room":"_reserved","op":"set","key":"shared","value":"never",{}}}"#, stamp(5)),
    ];
    fs::write(&ledger, lines.join("\n") + "\n").unwrap();
    let server = Server::start_in(Arc::clone(&dir), "");
    assert_eq!(server.client().snapshot["data"], json!({"shared": "default", "mine": 1}));
    let log = server.log();
    assert!(log.contains("4 records") && log.contains("1 corrupt lines skipped"), "{log}");
    let mut c = server.client();
    c.set("shared", json!("new"));
    c.recv_set("shared");
    let dir = server.kill9();
    let text = fs::read_to_string(&ledger).unwrap();
    assert!(text.starts_with(&(lines.join("\n") + "\n")), "the rooms' records stay as written");
    let restarted = Server::start_in(dir, "");
    assert_eq!(restarted.client().snapshot["data"], json!({"shared": "new", "mine": 1}));
}

/// A quiet relay appends a lone write on the state actor's own thread (two thread hand-offs fewer
/// on its round trip); a burst from many writers still leaves in shared batches (group commit),
/// and every write is durable before it is shown either way: the ledger holds each echoed write.
#[test]
fn a_lone_write_is_appended_inline_and_a_burst_still_shares_fsyncs() {
    let metric = |text: &str, name: &str| -> u64 {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
        line.and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    let server = Server::start(FAST);
    let mut lone = server.client();
    lone.set("lone", json!(1));
    lone.recv_set("lone");
    let text = server.get("/metrics").1;
    assert_eq!(metric(&text, "aether_ledger_inline_appends_total"), 1, "{text}");
    assert_eq!(metric(&text, "aether_ledger_batch_ops_count"), 1);

    let (writers, each) = (8, 50);
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let url = server.url();
            thread::spawn(move || {
                let mut client = Client::connect(&url);
                for i in 0..each {
                    let text = json!({"type": "set", "key": format!("b{w}:{i}"), "value": i}).to_string();
                    client.ws.send(Message::text(text)).unwrap();
                }
                client.recv_set(&format!("b{w}:{}", each - 1));
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let text = server.get("/metrics").1;
    let batches = metric(&text, "aether_ledger_batch_ops_count") - 1;
    let writes = (writers * each) as u64;
    assert_eq!(metric(&text, "aether_durable_writes_total"), writes + 1);
    assert!(batches < writes, "{batches} batches for {writes} concurrent writes: group commit gathered none");
    let dir = server.kill9();
    let ledger = fs::read_to_string(dir.path().join("ledger.jsonl")).unwrap();
    assert_eq!(ledger.lines().count() as u64, writes + 1, "every echoed write is in the ledger");
}
