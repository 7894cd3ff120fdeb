//! The HTTP API (`/api/v1/`, src/api/README.md) against the real binary: every endpoint without,
//! with a wrong and with a read-only credential; API writes seen by v1 and v2 WebSocket clients of
//! the room and WebSocket writes seen by GET; `If-Match` atomic under a race; durability across
//! `kill -9`; every bad input's status; history and past state as the CLI prints them; disconnect
//! with its close codes; compact now. The guide's curl examples run as written (curl is a client
//! that is not ours), and the OpenAPI description is checked against the server's answers.

mod common;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use common::{Client, Closed, Server, WAIT};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const KEY: &str = "an-api-key-for-the-integration-tests";
const SECRET: &str = "an-integration-test-secret-32-bytes+";
const SHARED: &str = "the-browsers-shared-token";

fn server_with(extra: &str) -> Server {
    Server::start(&format!("[api]\nkey = \"{KEY}\"\n[auth]\njwt_secret = \"{SECRET}\"\ntoken = \"{SHARED}\"\n{extra}"))
}

fn server() -> Server {
    server_with("")
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(sub: &str, rooms: Value, ttl: i64) -> String {
    let claims = json!({"sub": sub, "exp": now() as i64 + ttl, "iat": now(), "rooms": rooms});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.1 request (Connection: close); `auth` is the bearer credential.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT * 3)).unwrap();
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: Bearer {auth}\r\n"));
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let response = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let (status, headers) = parse_head(head);
    Answer { status, headers, body: body.to_owned() }
}

/// The status and headers (names lowercased) of a response head.
fn parse_head(head: &str) -> (u16, BTreeMap<String, String>) {
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn get(s: &Server, path: &str, auth: Option<&str>) -> Answer {
    http(s.addr, "GET", path, auth, &[], b"")
}

fn put(s: &Server, path: &str, auth: Option<&str>, body: &str) -> Answer {
    http(s.addr, "PUT", path, auth, &[], body.as_bytes())
}

fn ws(server: &Server, query: &str) -> Client {
    Client::connect(&format!("{}?{query}", server.url()))
}

/// Every endpoint (method, path, body, needs): without a credential and with a wrong one 401,
/// with a read-only JWT 403 where it needs write or the key, else its own answer.
#[test]
fn every_endpoint_refuses_missing_wrong_and_insufficient_credentials() {
    let s = server();
    assert_eq!(put(&s, "/api/v1/rooms/board-1/keys/k", Some(KEY), "1").status, 200);
    let reader = token("reader", json!({"board-*": "read"}), 600);
    let other = token("other", json!({"elsewhere": "write"}), 600);
    let expired = token("late", json!({"*": "write"}), -600);
    // (method, path, body, what a read grant gets)
    let endpoints: [(&str, &str, &str, u16); 9] = [
        ("GET", "/api/v1/rooms", "", 403),
        ("GET", "/api/v1/clients", "", 403),
        ("GET", "/api/v1/rooms/board-1", "", 200),
        ("GET", "/api/v1/rooms/board-1?at=2020-01-01T00:00:00Z", "", 200),
        ("GET", "/api/v1/rooms/board-1/keys/k", "", 200),
        ("GET", "/api/v1/rooms/board-1/keys/k/history", "", 200),
        ("PUT", "/api/v1/rooms/board-1/keys/k", "2", 403),
        ("POST", "/api/v1/rooms/board-1/disconnect", "", 403),
        ("POST", "/api/v1/compact", "", 403),
    ];
    let delete = ("DELETE", "/api/v1/rooms/board-1/keys/k", "", 403);
    for (method, path, body, read_gets) in endpoints.into_iter().chain([delete]) {
        for (name, credential) in [
            ("none", None),
            ("wrong", Some("not-the-key")),
            ("expired", Some(expired.as_str())),
            ("shared", Some(SHARED)),
        ] {
            let answer = http(s.addr, method, path, credential, &[], body.as_bytes());
            assert_eq!(answer.status, 401, "{method} {path} with {name}: {answer:?}");
            assert_eq!(answer.json()["error"], "unauthorized");
            assert_eq!(answer.headers.get("www-authenticate").map(String::as_str), Some("Bearer"));
        }
        let answer = http(s.addr, method, path, Some(&reader), &[], body.as_bytes());
        assert_eq!(answer.status, read_gets, "{method} {path} read-only: {answer:?}");
        if read_gets == 403 {
            assert_eq!(answer.json()["error"], "forbidden");
        }
        let answer = http(s.addr, method, path, Some(&other), &[], body.as_bytes());
        assert_eq!(answer.status, 403, "{method} {path} not granted: {answer:?}");
    }
    // The key itself gets every endpoint.
    for (method, path, body, _) in endpoints {
        let answer = http(s.addr, method, path, Some(KEY), &[], body.as_bytes());
        assert_eq!(answer.status, 200, "{method} {path} with the key: {answer:?}");
    }
    // A write grant writes, recorded as its sub.
    let writer = token("writer-7", json!({"board-1": "write"}), 600);
    assert_eq!(put(&s, "/api/v1/rooms/board-1/keys/w", Some(&writer), "\"by jwt\"").status, 200);
    let ledger = std::fs::read_to_string(s.ledger_path()).unwrap();
    assert!(ledger.lines().any(|l| l.contains("\"key\":\"w\"") && l.contains("\"by\":\"writer-7\"")), "{ledger}");
    // (The compaction above moved the earlier records to an archive: the history reads both.)
    let history = get(&s, "/api/v1/rooms/board-1/keys/k/history", Some(KEY)).json();
    assert!(history["writes"].as_array().unwrap().iter().all(|w| w["by"] == "api"), "{history}");
    let metrics = s.get("/metrics").1;
    for status in ["200", "401", "403"] {
        assert!(metrics.contains(&format!("aether_api_responses_total{{status=\"{status}\"}}")), "{metrics}");
    }
    let log = s.log();
    for secret in [KEY, SECRET, SHARED, reader.as_str(), writer.as_str()] {
        assert!(!log.contains(secret), "a credential reached the log");
    }
}

#[test]
fn api_is_off_without_a_key() {
    let s = Server::start("");
    for (method, path) in [
        ("GET", "/api/v1/rooms"),
        ("GET", "/api/v1/rooms/_/keys/k"),
        ("PUT", "/api/v1/rooms/_/keys/k"),
        ("POST", "/api/v1/compact"),
        ("GET", "/api/v1"),
    ] {
        let answer = http(s.addr, method, path, Some(KEY), &[], b"1");
        assert_eq!(answer.status, 404, "{method} {path}: {answer:?}");
        assert_eq!(answer.json()["error"], "not_found");
    }
    assert_eq!(s.get("/healthz").0, 200);
    assert_eq!(s.get("/api/openapi.json").0, 200, "the description is a static file");
}

/// A PUT reaches every WebSocket member of its room (v1 as upstream's frame, v2 with its stamp
/// and `origin: null`), nobody elsewhere; a WebSocket write is what GET answers; a DELETE reaches
/// them as a delete.
#[test]
fn api_writes_reach_websocket_clients_and_websocket_writes_reach_get() {
    let s = server();
    let writer = token("tab", json!({"*": "write"}), 600);
    let mut v1 = ws(&s, &format!("room=board-1&auth_token={writer}"));
    let mut v2 = ws(&s, &format!("room=board-1&v=2&auth_token={writer}"));
    let mut default = ws(&s, &format!("auth_token={writer}"));

    let answer = put(&s, "/api/v1/rooms/board-1/keys/card%2F1", Some(KEY), r#"{"title":"from the API"}"#);
    assert_eq!(answer.status, 200, "{answer:?}");
    let stamp = answer.json()["stamp"].as_str().unwrap().to_owned();
    assert_eq!(answer.headers["etag"], format!("\"{stamp}\""));
    let frame = v1.recv_set("card/1");
    assert_eq!(
        frame,
        json!({"type": "set", "key": "card/1", "value": {"title": "from the API"}}),
        "v1 frame as upstream's"
    );
    let frame = v2.recv_set("card/1");
    assert_eq!((frame["stamp"].as_str(), &frame["origin"]), (Some(stamp.as_str()), &Value::Null), "{frame}");
    default.set("sentinel", json!(1));
    assert_eq!(
        default.recv_until(|f| f["type"] == "set")["key"],
        "sentinel",
        "the default room saw nothing of board-1"
    );

    // A WebSocket write (v2, with an ack) is what GET answers, with the same stamp.
    v2.send(json!({"type": "set", "key": "from-ws", "value": [1, 2], "ref": 1}));
    let ack = v2.recv_until(|f| f["type"] == "ack");
    let answer = get(&s, "/api/v1/rooms/board-1/keys/from-ws", Some(KEY));
    assert_eq!(answer.json(), json!({"value": [1, 2], "stamp": ack["stamp"]}));
    let room = get(&s, "/api/v1/rooms/board-1", Some(KEY)).json();
    assert_eq!(
        room,
        json!({"room": "board-1", "keys": {"card/1": {"title": "from the API"}, "from-ws": [1, 2]}, "members": 2})
    );

    let answer = http(s.addr, "DELETE", "/api/v1/rooms/board-1/keys/card/1", Some(KEY), &[], b"");
    assert_eq!(answer.status, 200);
    assert_eq!(v1.recv_until(|f| f["type"] == "delete")["key"], "card/1");
    let frame = v2.recv_until(|f| f["type"] == "delete");
    assert_eq!((&frame["stamp"], &frame["origin"]), (&answer.json()["stamp"], &Value::Null));
    assert_eq!(get(&s, "/api/v1/rooms/board-1/keys/card/1", Some(KEY)).status, 404);

    let rooms = get(&s, "/api/v1/rooms", Some(KEY)).json();
    let board = rooms["rooms"].as_array().unwrap().iter().find(|r| r["room"] == "board-1").unwrap().clone();
    assert_eq!(
        board,
        json!({"room": "board-1", "keys": 1, "registers": 2, "members": 2, "v1": 1, "v2": 1, "users": ["tab"]})
    );
    assert_eq!(rooms["rooms"][0]["room"], "_", "the default room first");
}

/// `If-Match` is decided on the state actor: of 16 racing writes with the same ETag exactly one
/// wins, the others get 412 with the winner's stamp.
#[test]
fn if_match_is_atomic_under_a_race() {
    let s = server();
    let first = put(&s, "/api/v1/rooms/_/keys/counter", Some(KEY), "0");
    let etag = first.headers["etag"].clone();
    let stale = http(
        s.addr,
        "PUT",
        "/api/v1/rooms/_/keys/counter",
        Some(KEY),
        &[("If-Match", "\"00000000000000000001.0000000000.x\"")],
        b"9",
    );
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["stamp"], first.json()["stamp"]);
    let addr = s.addr;
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let etag = etag.clone();
            std::thread::spawn(move || {
                http(
                    addr,
                    "PUT",
                    "/api/v1/rooms/_/keys/counter",
                    Some(KEY),
                    &[("If-Match", &etag)],
                    i.to_string().as_bytes(),
                )
            })
        })
        .collect();
    let answers: Vec<Answer> = racers.into_iter().map(|r| r.join().unwrap()).collect();
    let winners: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(winners.len(), 1, "{answers:?}");
    let winner = winners[0].json()["stamp"].clone();
    for loser in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(loser.status, 412, "{loser:?}");
        assert_eq!(loser.json()["stamp"], winner, "412 names the winner's stamp");
    }
    // Unquoted works too; `*` needs a value; If-None-Match: * needs none.
    let unquoted = winner.as_str().unwrap();
    assert_eq!(
        http(s.addr, "PUT", "/api/v1/rooms/_/keys/counter", Some(KEY), &[("If-Match", unquoted)], b"100").status,
        200
    );
    assert_eq!(http(s.addr, "PUT", "/api/v1/rooms/_/keys/new", Some(KEY), &[("If-Match", "*")], b"1").status, 412);
    assert_eq!(http(s.addr, "PUT", "/api/v1/rooms/_/keys/new", Some(KEY), &[("If-None-Match", "*")], b"1").status, 200);
    assert_eq!(http(s.addr, "PUT", "/api/v1/rooms/_/keys/new", Some(KEY), &[("If-None-Match", "*")], b"2").status, 412);
    assert_eq!(http(s.addr, "DELETE", "/api/v1/rooms/_/keys/new", Some(KEY), &[("If-Match", "*")], b"").status, 200);
    assert_eq!(http(s.addr, "PUT", "/api/v1/rooms/_/keys/new", Some(KEY), &[("If-None-Match", "*")], b"3").status, 200);
    assert_eq!(
        http(s.addr, "PUT", "/api/v1/rooms/_/keys/new", Some(KEY), &[("If-None-Match", "\"x\"")], b"3").status,
        400
    );
    assert_eq!(get(&s, "/api/v1/rooms/_/keys/counter", Some(KEY)).json()["value"], 100);
}

/// Answered means durable: after `kill -9` and a restart every answered write is there.
#[test]
fn answered_writes_survive_kill_9() {
    let s = server();
    for i in 0..20 {
        assert_eq!(put(&s, &format!("/api/v1/rooms/durable/keys/k{i}"), Some(KEY), &i.to_string()).status, 200);
    }
    let deleted = http(s.addr, "DELETE", "/api/v1/rooms/durable/keys/k0", Some(KEY), &[], b"");
    assert_eq!(deleted.status, 200);
    let dir = s.kill9();
    let s = Server::start_in(dir, &format!("[api]\nkey = \"{KEY}\"\n"));
    let room = get(&s, "/api/v1/rooms/durable", Some(KEY)).json();
    let keys = room["keys"].as_object().unwrap();
    assert_eq!(keys.len(), 19);
    assert_eq!(keys["k19"], 19);
    assert_eq!(get(&s, "/api/v1/rooms/durable/keys/k0", Some(KEY)).status, 404);
}

/// Every bad input has its status and a JSON body, and loses nothing accepted.
#[test]
fn bad_inputs_get_defined_statuses() {
    let s = server_with(
        "[limits]\nmax_value_bytes = 200\nmax_key_bytes = 10\nmax_frame_bytes = 1024\n[rooms]\nmax_keys = 2\nmax_rooms = 3\n",
    );
    assert_eq!(put(&s, "/api/v1/rooms/_/keys/keep", Some(KEY), "\"kept\"").status, 200);
    let deep = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    let long_value = format!("\"{}\"", "x".repeat(300));
    let cases: Vec<(&str, String, Vec<u8>, u16, &str)> = vec![
        ("PUT", "/api/v1/rooms/_/keys/k".into(), b"{bad".to_vec(), 400, "bad_json"),
        ("PUT", "/api/v1/rooms/_/keys/k".into(), b"".to_vec(), 400, "bad_json"),
        ("PUT", "/api/v1/rooms/_/keys/k".into(), b"1 2".to_vec(), 400, "bad_json"),
        ("PUT", "/api/v1/rooms/_/keys/k".into(), deep.into_bytes(), 400, "too_deep"),
        ("PUT", "/api/v1/rooms/_/keys/k".into(), long_value.into_bytes(), 413, "too_large"),
        ("PUT", "/api/v1/rooms/_/keys/k".into(), vec![b' '; 4096], 413, "too_large"),
        ("PUT", "/api/v1/rooms/_/keys/eleven-byte".into(), b"1".to_vec(), 413, "too_large"),
        ("PUT", "/api/v1/rooms/_/keys/%FF".into(), b"1".to_vec(), 400, "bad_key"),
        ("PUT", "/api/v1/rooms/_x/keys/k".into(), b"1".to_vec(), 400, "bad_room"),
        ("GET", "/api/v1/rooms/a%20b".into(), vec![], 400, "bad_room"),
        ("GET", "/api/v1/rooms/nowhere".into(), vec![], 404, "unknown_room"),
        ("GET", "/api/v1/rooms/nowhere/keys/k".into(), vec![], 404, "unknown_room"),
        ("GET", "/api/v1/rooms/_/keys/absent".into(), vec![], 404, "no_such_key"),
        ("GET", "/api/v1/nothing".into(), vec![], 404, "not_found"),
        ("GET", "/api/v1/rooms/_?at=yesterday".into(), vec![], 400, "bad_time"),
        ("GET", "/api/v1/rooms/_/keys/k/history?limit=0".into(), vec![], 400, "bad_limit"),
        ("PATCH", "/api/v1/rooms/_/keys/k".into(), vec![], 405, "method_not_allowed"),
        ("GET", "/api/v1/compact".into(), vec![], 405, "method_not_allowed"),
        ("POST", "/api/v1/rooms/_/disconnect".into(), b"[1]".to_vec(), 400, "bad_body"),
        ("POST", "/api/v1/rooms/_/disconnect".into(), b"{\"user\":1}".to_vec(), 400, "bad_body"),
        ("POST", "/api/v1/rooms/_/disconnect".into(), b"{".to_vec(), 400, "bad_json"),
        ("PUT", "/api/v1/rooms/_/keys/k".into(), b"1".to_vec(), 200, ""),
        // max_keys = 2 in a named room (the default room has no cap, as upstream).
        ("PUT", "/api/v1/rooms/capped/keys/a".into(), b"1".to_vec(), 200, ""),
        ("PUT", "/api/v1/rooms/capped/keys/b".into(), b"1".to_vec(), 200, ""),
        ("PUT", "/api/v1/rooms/capped/keys/c".into(), b"1".to_vec(), 409, "room_full"),
        ("PUT", "/api/v1/rooms/_/keys/c".into(), b"1".to_vec(), 200, ""),
        // max_rooms = 3: `_`, capped and r1 are held.
        ("PUT", "/api/v1/rooms/r1/keys/k".into(), b"1".to_vec(), 200, ""),
        ("PUT", "/api/v1/rooms/r2/keys/k".into(), b"1".to_vec(), 409, "too_many_rooms"),
    ];
    for (method, path, body, status, error) in cases {
        let answer = http(s.addr, method, &path, Some(KEY), &[], &body);
        assert_eq!(answer.status, status, "{method} {path}: {answer:?}");
        if !error.is_empty() {
            assert_eq!(answer.json()["error"], error, "{method} {path}");
        }
        if status == 405 {
            assert!(answer.headers.contains_key("allow"), "{answer:?}");
        }
    }
    assert_eq!(
        get(&s, "/api/v1/rooms/_", Some(KEY)).json()["keys"],
        json!({"keep": "kept", "k": 1, "c": 1}),
        "nothing lost"
    );
}

fn cli(server: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .arg("--config")
        .arg(&server.config)
        .args(args)
        .output()
        .expect("run the CLI");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A key's history and a room's past state, across a compaction's archive, are what `ledger log`
/// and `ledger state --at` print.
#[test]
fn history_and_past_state_agree_with_the_cli() {
    let s = server();
    let writer = token("alice", json!({"notes": "write"}), 600);
    let stamps: Vec<String> = (0..3)
        .map(|i| {
            put(&s, "/api/v1/rooms/notes/keys/draft", Some(&writer), &format!("{{\"v\":{i}}}")).json()["stamp"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(http(s.addr, "POST", "/api/v1/compact", Some(KEY), &[], b"").status, 200);
    let deleted = http(s.addr, "DELETE", "/api/v1/rooms/notes/keys/draft", Some(KEY), &[], b"").json();
    let history = get(&s, "/api/v1/rooms/notes/keys/draft/history", Some(KEY)).json();
    let writes = history["writes"].as_array().unwrap();
    let got: Vec<(&str, &str, Option<&str>, &Value)> = writes
        .iter()
        .map(|w| (w["stamp"].as_str().unwrap(), w["op"].as_str().unwrap(), w["by"].as_str(), &w["value"]))
        .collect();
    assert_eq!(
        got,
        vec![
            (stamps[0].as_str(), "set", Some("alice"), &json!({"v": 0})),
            (stamps[1].as_str(), "set", Some("alice"), &json!({"v": 1})),
            (stamps[2].as_str(), "set", Some("alice"), &json!({"v": 2})),
            (deleted["stamp"].as_str().unwrap(), "del", Some("api"), &Value::Null),
        ]
    );
    assert_eq!(writes.iter().map(|w| w["current"] == true).collect::<Vec<_>>(), [false, false, false, true]);
    let log = cli(&s, &["ledger", "log", "draft", "--room", "notes"]);
    assert_eq!(log.lines().count(), writes.len(), "{log}");
    for (line, write) in log.lines().zip(writes) {
        assert!(line.contains(write["time"].as_str().unwrap()), "{line} vs {write}");
    }
    let limited = get(&s, "/api/v1/rooms/notes/keys/draft/history?limit=2", Some(KEY)).json();
    assert_eq!((limited["writes"].as_array().unwrap().len(), &limited["truncated"]), (2, &json!(true)));

    let at = writes[1]["time"].as_str().unwrap();
    let past = get(&s, &format!("/api/v1/rooms/notes?at={at}"), Some(KEY)).json();
    assert_eq!(past["keys"], json!({"draft": {"v": 1}}));
    let printed: Value = serde_json::from_str(&cli(&s, &["ledger", "state", "--at", at, "--room", "notes"])).unwrap();
    assert_eq!(past["keys"], printed);
    let reader = token("r", json!({"notes": "read"}), 600);
    assert_eq!(get(&s, "/api/v1/rooms/notes/keys/draft/history", Some(&reader)).status, 200);
}

/// `disconnect` closes one user's connections (v2 4410, v1 1008, "disconnected by the operator")
/// and leaves the others; without a body, every member.
#[test]
fn disconnect_closes_members_with_the_documented_codes() {
    let s = server();
    let alice = token("alice", json!({"*": "write"}), 600);
    let bob = token("bob", json!({"*": "write"}), 600);
    let mut alice_v1 = ws(&s, &format!("room=r&auth_token={alice}"));
    let mut alice_v2 = ws(&s, &format!("room=r&v=2&auth_token={alice}"));
    let mut bob_v2 = ws(&s, &format!("room=r&v=2&auth_token={bob}"));
    let answer = http(s.addr, "POST", "/api/v1/rooms/r/disconnect", Some(KEY), &[], br#"{"user":"alice"}"#);
    assert_eq!(answer.json(), json!({"disconnected": 2}));
    assert_eq!(alice_v1.closed(), Closed::Frame(1008, "disconnected by the operator".into()));
    assert_eq!(alice_v2.closed(), Closed::Frame(4410, "disconnected by the operator".into()));
    // bob is still a member: he sees alice's leaves, then an API write.
    assert_eq!(put(&s, "/api/v1/rooms/r/keys/k", Some(KEY), "1").status, 200);
    bob_v2.recv_set("k");
    let answer = http(s.addr, "POST", "/api/v1/rooms/r/disconnect", Some(KEY), &[], b"");
    assert_eq!(answer.json(), json!({"disconnected": 1}));
    assert_eq!(bob_v2.closed(), Closed::Frame(4410, "disconnected by the operator".into()));
    assert_eq!(
        http(s.addr, "POST", "/api/v1/rooms/nobody/disconnect", Some(KEY), &[], b"{}").json(),
        json!({"disconnected": 0})
    );
}

/// `GET /clients` lists each connection: its room, source address, protocol version and JWT user
/// (the operator console shows them); a closed connection leaves the list.
#[test]
fn clients_lists_each_connection_with_its_address_protocol_and_user() {
    let s = server();
    let alice = token("alice", json!({"*": "write"}), 600);
    let alice_v1 = ws(&s, &format!("room=r&auth_token={alice}"));
    let anon_v2 = ws(&s, &format!("room=other&v=2&auth_token={SHARED}"));
    let list = get(&s, "/api/v1/clients", Some(KEY)).json();
    let clients = list["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2, "{list}");
    let (other, r) = (&clients[0], &clients[1]);
    assert_eq!(
        (other["room"].as_str(), other["protocol"].as_u64(), &other["user"]),
        (Some("other"), Some(2), &Value::Null)
    );
    assert_eq!((r["room"].as_str(), r["protocol"].as_u64(), r["user"].as_str()), (Some("r"), Some(1), Some("alice")));
    for (client, conn) in [(other, &anon_v2), (r, &alice_v1)] {
        assert_eq!(client["address"], "127.0.0.1");
        if let Some(id) = conn.hello["id"].as_str() {
            assert_eq!(client["id"], id);
        }
    }
    let answer = http(s.addr, "POST", "/api/v1/rooms/other/disconnect", Some(KEY), &[], b"");
    assert_eq!(answer.json(), json!({"disconnected": 1}));
    let list = get(&s, "/api/v1/clients", Some(KEY)).json();
    assert_eq!(list["clients"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["clients"][0]["user"], "alice");
    drop(alice_v1);
}

/// `POST /compact` folds the ledger now and keeps everything.
#[test]
fn compact_now_folds_the_ledger_and_keeps_the_state() {
    let s = server();
    for i in 0..10 {
        put(&s, "/api/v1/rooms/_/keys/k", Some(KEY), &i.to_string());
    }
    let answer = http(s.addr, "POST", "/api/v1/compact", Some(KEY), &[], b"");
    assert_eq!(answer.status, 200, "{answer:?}");
    let done = answer.json();
    assert!(Path::new(done["archive"].as_str().unwrap()).exists(), "{done}");
    assert!(done["folded_bytes"].as_u64().unwrap() > 0);
    assert_eq!(std::fs::metadata(s.ledger_path()).unwrap().len(), done["tail_bytes"].as_u64().unwrap());
    let dir = s.kill9();
    let s = Server::start_in(dir, &format!("[api]\nkey = \"{KEY}\"\n"));
    assert_eq!(get(&s, "/api/v1/rooms/_/keys/k", Some(KEY)).json()["value"], 9);
}

/// `expected` matches `actual`: `"…"` matches any value; objects match key for key.
fn matches(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::String(s), _) if s == "…" => true,
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len() && e.iter().all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av)))
        }
        (Value::Array(e), Value::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a)),
        _ => expected == actual,
    }
}

fn json_stream(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The guide's `sh` blocks, run in order in one shell with curl against the real relay, print
/// what the `json` block after each shows.
#[test]
fn api_guide_examples_run_as_written() {
    let guide = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/README.md")).unwrap();
    let mut blocks: Vec<(String, String)> = Vec::new(); // (language, text)
    let mut lines = guide.lines();
    while let Some(line) = lines.next() {
        if let Some(lang) = line.strip_prefix("```").filter(|l| !l.is_empty()) {
            let text: Vec<&str> = lines.by_ref().take_while(|l| !l.starts_with("```")).collect();
            blocks.push((lang.to_owned(), text.join("\n")));
        }
    }
    let examples: Vec<(&str, Option<&str>)> = blocks
        .iter()
        .enumerate()
        .filter(|(_, (lang, _))| lang == "sh")
        .map(|(i, (_, text))| (text.as_str(), blocks.get(i + 1).filter(|(l, _)| l == "json").map(|(_, t)| t.as_str())))
        .collect();
    assert!(examples.iter().filter(|(_, e)| e.is_some()).count() >= 15, "the guide's examples were not found");
    let s = server();
    let mut script = String::from("set -e\n");
    for (i, (text, _)) in examples.iter().enumerate() {
        script.push_str(&format!("{text}\nprintf '\\n@@@ {i} @@@\\n'\n"));
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .env("AETHER", format!("http://{}", s.addr))
        .env("AETHER_API_KEY", KEY)
        .env("TOKEN", token("reporting", json!({"board-*": "read"}), 600))
        .output()
        .expect("sh");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "the examples failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let mut rest = stdout.as_str();
    for (i, (text, expected)) in examples.iter().enumerate() {
        let marker = format!("\n@@@ {i} @@@\n");
        let (output, after) = rest.split_once(&marker).unwrap_or_else(|| panic!("example {i} printed no marker"));
        rest = after;
        let Some(expected) = expected else { continue };
        let (want, got) = (json_stream(expected), json_stream(output));
        assert!(
            want.len() == got.len() && want.iter().zip(&got).all(|(w, g)| matches(w, g)),
            "example {i}:\n{text}\nprinted:\n{output}\nthe guide shows:\n{expected}"
        );
    }
}

/// The `required` properties of an OpenAPI schema (following one `$ref` into the components).
fn required_fields(doc: &Value, schema: &Value) -> Vec<String> {
    let schema = match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => &doc["components"]["schemas"][name],
        None => schema,
    };
    schema["required"].as_array().into_iter().flatten().filter_map(|f| f.as_str().map(str::to_owned)).collect()
}

/// The status and headers of a GET that answers a stream (the change feed), which is not read.
fn stream_head(addr: SocketAddr, path: &str, auth: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT * 3)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {auth}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("a head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let (status, headers) = parse_head(&head);
    Answer { status, headers, body: String::new() }
}

/// Every path and method of static/api/openapi.json, called with the key (its example values and
/// body) and without a credential, answers a status the description lists, with the fields its
/// schema requires.
#[test]
fn openapi_description_matches_the_running_server() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("static/api/openapi.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).expect("openapi.json is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let base = doc["servers"][0]["url"].as_str().unwrap().to_owned();
    let s = server();
    assert_eq!(put(&s, "/api/v1/rooms/board-1/keys/card/42", Some(KEY), "1").status, 200);
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    let mut seen = std::collections::BTreeSet::new();
    for (template, item) in paths {
        let mut path = template.clone();
        for param in item["parameters"].as_array().into_iter().flatten() {
            let name = param["name"].as_str().unwrap();
            path =
                path.replace(&format!("{{{name}}}"), param["example"].as_str().expect("path parameters have examples"));
        }
        assert!(!path.contains('{'), "{template}: a path parameter without an example");
        for method in ["get", "put", "delete", "post", "patch"] {
            let Some(operation) = item.get(method) else {
                // Undocumented methods are refused.
                let answer = http(s.addr, &method.to_uppercase(), &format!("{base}{path}"), Some(KEY), &[], b"");
                assert_eq!(answer.status, 405, "{method} {template} is not documented: {answer:?}");
                continue;
            };
            let responses = operation["responses"].as_object().unwrap();
            let body = operation["requestBody"]["content"]["application/json"]["example"].to_string();
            let body = if operation.get("requestBody").is_some() { body.into_bytes() } else { Vec::new() };
            let streams = responses.get("200").is_some_and(|r| r["content"].get("text/event-stream").is_some());
            for auth in [Some(KEY), None] {
                let answer = if streams && auth.is_some() {
                    stream_head(s.addr, &format!("{base}{path}"), KEY)
                } else {
                    http(s.addr, &method.to_uppercase(), &format!("{base}{path}"), auth, &[], &body)
                };
                if streams && answer.status == 200 {
                    assert_eq!(answer.headers["content-type"], "text/event-stream", "{template}");
                }
                let status = answer.status.to_string();
                assert!(
                    responses.contains_key(&status),
                    "{method} {template}: {status} is not documented ({answer:?})"
                );
                if answer.headers.get("content-type").is_some_and(|t| t.contains("json")) {
                    let body = answer.json();
                    let schema = &responses[&status]["content"]["application/json"]["schema"];
                    for field in required_fields(&doc, schema) {
                        assert!(body.get(&field).is_some(), "{method} {template} {status}: no {field} in {body}");
                    }
                }
                seen.insert(status);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 2 * 10, "every documented operation was called");
    assert!(seen.contains("200") && seen.contains("401"));
}

/// An API write is replicated like a browser's: a WebSocket client of the room on a federated
/// peer sees it, and the peer's API answers it with the same stamp.
#[test]
fn api_writes_replicate_to_federated_peers() {
    use common::federation::node_toml;
    let api = format!("[api]\nkey = \"{KEY}\"");
    let a = Server::start(&node_toml("node-a", "127.0.0.1:0", &[], &api));
    let b = Server::start(&node_toml("node-b", "127.0.0.1:0", &[a.mesh_url()], &api));
    let mut on_b = ws(&b, "room=shared&v=2");
    let answer = put(&a, "/api/v1/rooms/shared/keys/k", Some(KEY), r#""from a""#);
    assert_eq!(answer.status, 200);
    let frame = on_b.recv_set("k");
    assert_eq!((&frame["value"], &frame["stamp"]), (&json!("from a"), &answer.json()["stamp"]));
    assert_eq!(get(&b, "/api/v1/rooms/shared/keys/k", Some(KEY)).json()["stamp"], answer.json()["stamp"]);
}

/// A write the ledger refuses (a full disk) is answered `503 ledger_failed`, applied nowhere and
/// shown to nobody; once space is back the next write is durable.
#[test]
fn a_write_the_ledger_refuses_is_503_ledger_failed() {
    use common::disk::{Tmpfs, fill};
    let Some(disk) = Tmpfs::mount_or_skip(512 << 10, "a_write_the_ledger_refuses_is_503_ledger_failed") else {
        return;
    };
    let s = Server::start_in(disk.dir(), &format!("[api]\nkey = \"{KEY}\"\n"));
    let mut watcher = ws(&s, "room=full&v=2");
    assert_eq!(put(&s, "/api/v1/rooms/full/keys/before", Some(KEY), "1").status, 200);
    watcher.recv_set("before");
    let filler = disk.path().join("filler");
    assert!(fill(&filler, 0) > 0);
    let pad = format!("\"{}\"", "x".repeat(1000));
    let refused = (0..50)
        .map(|i| put(&s, &format!("/api/v1/rooms/full/keys/k{i}"), Some(KEY), &pad))
        .find(|answer| answer.status != 200)
        .expect("a write refused on a full disk");
    assert_eq!((refused.status, &refused.json()["error"]), (503, &json!("ledger_failed")), "{refused:?}");
    std::fs::remove_file(&filler).unwrap();
    let after = put(&s, "/api/v1/rooms/full/keys/after", Some(KEY), "2");
    assert_eq!(after.status, 200, "{after:?}");
    // The watcher saw only durable writes: no frame for the refused one before `after`.
    let keys: Vec<Value> = std::iter::from_fn(|| Some(watcher.recv()))
        .filter(|f| f["type"] == "set")
        .map(|f| f["key"].clone())
        .take_while(|k| k != "after")
        .collect();
    let stored = get(&s, "/api/v1/rooms/full", Some(KEY)).json();
    assert_eq!(keys.len() + 2, stored["keys"].as_object().unwrap().len(), "{keys:?} vs {stored}");
    drop(s);
}

/// A client that is not ours (Python `websockets`, v1 and v2) sees an API write, then the close
/// of `disconnect` with its documented code and reason.
#[test]
fn python_websockets_sees_api_writes_and_the_disconnect_close() {
    use std::io::BufRead;
    let python = common::websockets_python();
    let s = server();
    let writer = token("py-user", json!({"py": "write"}), 600);
    let script = r#"
import asyncio, json, sys, websockets
async def member(url, out):
    async with websockets.connect(url) as ws:
        first = [json.loads(await ws.recv())["type"] for _ in range(2)]
        out["first"] = first
        ready.release()
        try:
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame.get("type") == "set":
                    out["set"] = frame
        except websockets.ConnectionClosed as e:
            out["close"] = [e.rcvd.code, e.rcvd.reason]
async def main():
    global ready
    ready = asyncio.Semaphore(0)
    base, token = sys.argv[1], sys.argv[2]
    v1, v2 = {}, {}
    tasks = [asyncio.create_task(member(f"{base}?room=py&auth_token={token}", v1)),
             asyncio.create_task(member(f"{base}?room=py&v=2&auth_token={token}", v2))]
    await ready.acquire(); await ready.acquire()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    print(json.dumps({"v1": v1, "v2": v2}), flush=True)
asyncio.run(main())
"#;
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(s.url())
        .arg(&writer)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let stamp = put(&s, "/api/v1/rooms/py/keys/k", Some(KEY), r#"{"from":"api"}"#).json()["stamp"].clone();
    // Both members are sent the write before the disconnect's close (one queue per member, in order).
    let answer = http(s.addr, "POST", "/api/v1/rooms/py/disconnect", Some(KEY), &[], br#"{"user":"py-user"}"#);
    assert_eq!(answer.json(), json!({"disconnected": 2}));
    let out: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out["v1"]["set"], json!({"type": "set", "key": "k", "value": {"from": "api"}}));
    assert_eq!((&out["v2"]["set"]["stamp"], &out["v2"]["set"]["origin"]), (&stamp, &Value::Null));
    assert_eq!(out["v1"]["close"], json!([1008, "disconnected by the operator"]));
    assert_eq!(out["v2"]["close"], json!([4410, "disconnected by the operator"]));
}

/// A large room (encoded off the request workers) is answered whole.
#[test]
fn a_large_room_is_answered_whole() {
    let s = server_with("[limits]\nmessages_per_second = 100000.0\nmessages_burst = 100000\n");
    let writer = token("bulk", json!({"big": "write"}), 600);
    let mut client = ws(&s, &format!("room=big&auth_token={writer}"));
    for i in 0..1500 {
        client.set(&format!("k{i:04}"), json!({"i": i}));
    }
    client.recv_until(|f| f["type"] == "set" && f["key"] == "k1499");
    let answer = get(&s, "/api/v1/rooms/big", Some(KEY));
    assert_eq!(answer.headers.get("content-type").map(String::as_str), Some("application/json"));
    let keys = answer.json()["keys"].as_object().unwrap().clone();
    assert_eq!(keys.len(), 1500);
    assert_eq!(keys["k0750"], json!({"i": 750}));
}
