//! Per-user access with JSON Web Tokens, over real sockets: the real binary with `[auth]
//! jwt_secret`, tokens minted here (jsonwebtoken's encoder, and raw segments for the forged ones)
//! and by Python's standard library (a client that is not ours), presented in the URL and in the
//! first frame, v1 and v2. What is checked: the documented close for every bad token and room,
//! nothing of any room sent before it, read-only writes refused, the user in hello, presence and
//! the ledger, expiry closing a live connection, and a fresh token keeping it open.

mod common;

use std::{
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use common::{Client, Closed, Server};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tungstenite::Message;

const SECRET: &str = "an-integration-test-secret-32-bytes+";

fn server() -> Server {
    Server::start(&format!("[auth]\njwt_secret = \"{SECRET}\"\n"))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn mint(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

fn token(sub: &str, rooms: Value, ttl: i64) -> String {
    mint(&json!({"sub": sub, "exp": now() as i64 + ttl, "iat": now(), "rooms": rooms}))
}

fn b64(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes).replace('+', "-").replace('/', "_").trim_end_matches('=').to_owned()
}

fn url(server: &Server, query: &str) -> String {
    format!("{}/ws?{query}", server.url())
}

/// Opens `query` and expects a close as the very first frame; returns it.
fn refused(server: &Server, query: &str, first_frame: Option<&str>) -> (u16, String) {
    let mut ws = Client::raw(&url(server, query));
    if let Some(text) = first_frame {
        ws.send(Message::text(text)).unwrap();
    }
    match ws.read().expect("a frame") {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("{query}: expected a close first, got {other:?}"),
    }
}

#[test]
fn every_bad_token_and_room_gets_its_documented_close_and_nothing_else() {
    let server = server();
    // Something in the rooms, to be sure nothing of it leaks before a refusal.
    let mut owner =
        Client::connect(&url(&server, &format!("room=secret&auth_token={}", token("o", json!({"*": "write"}), 60))));
    owner.set("secret:api:key", json!("do not leak"));
    owner.recv_set("secret:api:key");

    let good = token("alice", json!({"board-*": "write", "_": "read"}), 600);
    let (header, rest) = good.split_once('.').unwrap();
    let (payload, _sig) = rest.split_once('.').unwrap();
    let tampered_payload =
        b64(json!({"sub": "alice", "exp": now() + 600, "rooms": {"*": "write"}}).to_string().as_bytes());
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub": "alice", "exp": now() + 600, "rooms": {"*": "write"}}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let wrong_key = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": now() + 600, "rooms": {"*": "write"}}),
        &EncodingKey::from_secret(b"another-secret-of-thirty-two-bytes!!").unwrap(),
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "not-a-token".into(), "auth failed"),
        ("alg none", format!("{none_header}.{payload}."), "auth failed"),
        ("hs512", hs512, "auth failed"),
        ("wrong key", wrong_key, "auth failed"),
        ("tampered", format!("{header}.{tampered_payload}.{}", rest.split_once('.').unwrap().1), "auth failed"),
        ("expired", token("alice", json!({"*": "write"}), -30), "token expired"),
        (
            "not yet",
            mint(&json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300, "rooms": {"*": "write"}})),
            "auth failed",
        ),
        ("no sub", mint(&json!({"exp": now() + 600, "rooms": {"*": "write"}})), "auth failed"),
        ("no exp", mint(&json!({"sub": "a", "rooms": {"*": "write"}})), "auth failed"),
        ("other room", token("alice", json!({"board-*": "write"}), 600), "forbidden"),
        ("no rooms claim", mint(&json!({"sub": "a", "exp": now() + 600})), "forbidden"),
    ];
    for (what, bad, reason) in &cases {
        let v2_code = if *reason == "forbidden" { 4403 } else { 4401 };
        // In the URL and as the first frame; v1 and v2.
        for (version, code) in [("", 1008), ("&v=2", v2_code)] {
            let query = format!("room=secret&auth_token={bad}{version}");
            assert_eq!(refused(&server, &query, None), (code, reason.to_string()), "{what} in the URL{version}");
            let frame = json!({"type": "auth", "token": bad}).to_string();
            let query = format!("room=secret{version}");
            assert_eq!(
                refused(&server, &query, Some(&frame)),
                (code, reason.to_string()),
                "{what} as a frame{version}"
            );
        }
    }
    // No token at all, and a first frame that is not auth.
    assert_eq!(
        refused(&server, "room=secret&v=2", Some(r#"{"type":"set","key":"k","value":1}"#)),
        (4401, "auth failed".into())
    );
    // The shared secret is not configured: the JWT secret itself is not a token.
    assert_eq!(refused(&server, &format!("auth_token={SECRET}"), None), (1008, "auth failed".into()));
    // The good token works where granted, and `_` grants the default room (read).
    let board = Client::connect(&url(&server, &format!("room=board-1&v=2&auth_token={good}")));
    assert_eq!((board.hello["user"].as_str(), board.hello["access"].as_str()), (Some("alice"), Some("write")));
    assert!(board.hello["exp"].as_u64().unwrap() > now());
    let default = Client::connect(&url(&server, &format!("v=2&auth_token={good}")));
    assert_eq!(default.hello["access"], "read");
    assert_eq!(default.snapshot["data"], json!({}), "the default room holds nothing of room secret");
}

#[test]
fn read_only_users_see_everything_and_change_nothing() {
    let server = server();
    let writer_token = token("writer", json!({"doc": "write"}), 600);
    let reader_token = token("reader", json!({"doc": "read"}), 600);
    let mut writer = Client::connect(&url(&server, &format!("room=doc&v=2&auth_token={writer_token}")));
    let mut v1_reader = Client::connect(&url(&server, &format!("room=doc&auth_token={reader_token}")));
    let mut v2_reader = Client::connect(&url(&server, &format!("room=doc&v=2&auth_token={reader_token}")));
    assert_eq!(v2_reader.hello["access"], "read");

    v2_reader.send(json!({"type": "set", "key": "k", "value": "reader", "ref": 1}));
    let nack = v2_reader.recv_until(|f| f["type"] == "nack");
    assert_eq!((nack["ref"].as_i64(), nack["reason"].as_str()), (Some(1), Some("forbidden")));
    v2_reader.send(json!({"type": "delete", "key": "k", "ref": 2}));
    assert_eq!(v2_reader.recv_until(|f| f["type"] == "nack")["reason"], "forbidden");
    v1_reader.set("k", json!("v1 reader")); // dropped silently, as upstream drops
    // Readers do see writes and cursors; their own cursor is shown to others with their user.
    writer.send(json!({"type": "set", "key": "k", "value": "writer", "ref": 1}));
    assert_eq!(v1_reader.recv_set("k")["value"], "writer", "the reader's write never applied before this");
    assert_eq!(v2_reader.recv_set("k")["value"], "writer");
    v2_reader.send(json!({"type": "presence", "x": 5, "y": 6}));
    let cursor = writer.recv_until(|f| f["type"] == "presence");
    assert_eq!((cursor["user"].as_str(), cursor["x"].as_i64()), (Some("reader"), Some(5)));
    let cursor = v1_reader.recv_until(|f| f["type"] == "presence");
    assert!(cursor.get("user").is_none(), "v1 presence keeps upstream's fields: {cursor}");
    assert_eq!(
        Client::connect(&url(&server, &format!("room=doc&auth_token={reader_token}"))).snapshot["data"],
        json!({"k": "writer"})
    );
    assert_eq!(common::metric(&server, "aether_messages_dropped_total{reason=\"forbidden\"}"), 3.0);
    // The ledger says who wrote it, and `ledger log` shows it.
    let ledger = std::fs::read_to_string(server.ledger_path()).unwrap();
    let record: Value = serde_json::from_str(ledger.lines().next().unwrap()).unwrap();
    assert_eq!((record["room"].as_str(), record["by"].as_str()), (Some("doc"), Some("writer")));
    let out = Command::new(env!("CARGO_BIN_EXE_aether-actix"))
        .args(["--config", server.config.to_str().unwrap(), "ledger", "log", "k", "--room", "doc"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("writer"),
        "ledger log: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_expiring_token_closes_the_connection_unless_a_fresh_one_came() {
    let server = server();
    let short = |sub: &str, rooms: Value| token(sub, rooms, 3);
    // v1 and v2 without a refresh: closed at expiry with the documented code.
    let mut v1 = Client::connect(&url(&server, &format!("room=r&auth_token={}", short("a", json!({"r": "write"})))));
    let mut v2 =
        Client::connect(&url(&server, &format!("room=r&v=2&auth_token={}", short("a", json!({"r": "write"})))));
    // v2 with a fresh token in time: stays, and is told the new expiry.
    let mut kept =
        Client::connect(&url(&server, &format!("room=r&v=2&auth_token={}", short("a", json!({"r": "write"})))));
    let fresh = token("a", json!({"r": "read"}), 600);
    kept.send(json!({"type": "auth", "token": fresh}));
    let ok = kept.recv_until(|f| f["type"] == "auth_ok");
    assert_eq!(ok["access"], "read", "access becomes the new token's");
    assert!(ok["exp"].as_u64().unwrap() > now() + 500);
    assert_eq!(common::wait_closed(&mut v1.ws), Closed::Frame(1008, "token expired".into()));
    assert_eq!(common::wait_closed(&mut v2.ws), Closed::Frame(4401, "token expired".into()));
    // Past the old expiry, the refreshed connection still works (and now only reads).
    kept.send(json!({"type": "set", "key": "k", "value": 1, "ref": 9}));
    assert_eq!(kept.recv_until(|f| f["type"] == "nack")["reason"], "forbidden");
    kept.send(json!({"type": "ping"}));
    kept.recv_until(|f| f["type"] == "pong");
    // A fresh token for another user, or without this room, closes it.
    kept.send(json!({"type": "auth", "token": token("b", json!({"r": "write"}), 600)}));
    assert_eq!(common::wait_closed(&mut kept.ws), Closed::Frame(4401, "auth failed".into()));
    let mut other =
        Client::connect(&url(&server, &format!("room=r&v=2&auth_token={}", token("a", json!({"r": "write"}), 600))));
    other.send(json!({"type": "auth", "token": token("a", json!({"s": "write"}), 600)}));
    assert_eq!(common::wait_closed(&mut other.ws), Closed::Frame(4403, "forbidden".into()));
    // A v1 client's later auth frames are ignored, as upstream's are.
    let mut v1 =
        Client::connect(&url(&server, &format!("room=r&auth_token={}", token("a", json!({"r": "write"}), 600))));
    v1.send(json!({"type": "auth", "token": "garbage"}));
    v1.set("still", json!(true));
    v1.recv_set("still");
}

#[test]
fn the_shared_secret_still_opens_every_room_beside_jwts() {
    let server = Server::start(&format!("[auth]\ntoken = \"hunter2\"\njwt_secret = \"{SECRET}\"\n"));
    let mut a = Client::connect(&url(&server, "room=any&v=2&auth_token=hunter2"));
    assert_eq!(a.hello["access"], "write");
    assert!(a.hello.get("user").is_none() && a.hello.get("exp").is_none());
    a.set("k", json!(1));
    a.recv_set("k");
    let jwt =
        Client::connect(&url(&server, &format!("room=any&v=2&auth_token={}", token("u", json!({"any": "read"}), 60))));
    assert_eq!(jwt.snapshot["data"], json!({"k": 1}));
    assert_eq!(refused(&server, "room=any&auth_token=hunter3", None), (1008, "auth failed".into()));
}

/// A client that is not ours: Python's standard library mints the HS256 tokens (hmac, base64) and
/// `websockets` (asyncio) connects with them, in the URL and as the first frame.
#[test]
fn tokens_minted_by_python_and_presented_by_python_websockets() {
    let python = common::websockets_python();
    let server = server();
    let script = r#"
import asyncio, base64, hashlib, hmac, json, sys, time, websockets
secret, base = sys.argv[1].encode(), sys.argv[2]
def b64(b): return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def mint(claims):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, (head + "." + body).encode(), hashlib.sha256).digest()
    return head + "." + body + "." + b64(sig)
async def first_two(url, frame=None):
    async with websockets.connect(url) as ws:
        if frame: await ws.send(json.dumps(frame))
        try:
            return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
        except websockets.ConnectionClosed as e:
            return {"code": e.rcvd.code, "reason": e.rcvd.reason}
async def main():
    now = int(time.time())
    good = mint({"sub": "py", "exp": now + 60, "rooms": {"py-*": "write"}})
    out = {
        "url": await first_two(base + "/ws?v=2&room=py-1&auth_token=" + good),
        "frame": await first_two(base + "/ws?v=2&room=py-2", {"type": "auth", "token": good}),
        "forbidden": await first_two(base + "/ws?v=2&room=other&auth_token=" + good),
        "expired": await first_two(base + "/ws?room=py-1&auth_token=" + mint({"sub": "py", "exp": now - 5, "rooms": {"*": "write"}})),
    }
    print(json.dumps(out))
asyncio.run(main())
"#;
    let output = Command::new(python).arg("-c").arg(script).arg(SECRET).arg(server.url()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let out: Value = serde_json::from_slice(&output.stdout).unwrap();
    for case in ["url", "frame"] {
        let hello = &out[case][0];
        assert_eq!((hello["type"].as_str(), hello["user"].as_str()), (Some("hello"), Some("py")), "{case}: {out}");
        assert_eq!(out[case][1]["type"], "snapshot");
    }
    assert_eq!(out["forbidden"], json!({"code": 4403, "reason": "forbidden"}));
    assert_eq!(out["expired"], json!({"code": 1008, "reason": "token expired"}));
}

/// A backend that mints with a private key and gives the relay only the public one: ES256 and
/// RS256 over sockets; an HS256 token "signed" with the public key's PEM (algorithm confusion) and
/// one signed by another key pair are refused.
#[test]
fn public_key_tokens_es256_and_rs256() {
    use openssl::{ec::EcGroup, ec::EcKey, nid::Nid, pkey::PKey, rsa::Rsa};
    let ec =
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap();
    let other_ec =
        PKey::from_ec_key(EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap()).unwrap();
    let rsa = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let claims = json!({"sub": "svc", "exp": now() + 600, "rooms": {"*": "write"}});
    for (alg, key, other) in [(Algorithm::ES256, &ec, Some(&other_ec)), (Algorithm::RS256, &rsa, None)] {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("jwt.pub.pem");
        std::fs::write(&public, key.public_key_to_pem().unwrap()).unwrap();
        let server = Server::start(&format!("[auth]\njwt_public_key_file = {public:?}\n"));
        let private = key.private_key_to_pem_pkcs8().unwrap();
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&private).unwrap(),
            _ => EncodingKey::from_rsa_pem(&private).unwrap(),
        };
        let good = jsonwebtoken::encode(&Header::new(alg), &claims, &encoding).unwrap();
        let client = Client::connect(&url(&server, &format!("room=r&v=2&auth_token={good}")));
        assert_eq!(client.hello["user"], "svc", "{alg:?}");
        let confused = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&key.public_key_to_pem().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(refused(&server, &format!("room=r&v=2&auth_token={confused}"), None), (4401, "auth failed".into()));
        if let Some(other) = other {
            let private = other.private_key_to_pem_pkcs8().unwrap();
            let forged =
                jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_ec_pem(&private).unwrap()).unwrap();
            assert_eq!(refused(&server, &format!("room=r&auth_token={forged}"), None), (1008, "auth failed".into()));
        }
    }
}
