//! The peer protocol: upstream's two messages, and ours beside them.
//!
//! Upstream (`aether_core.mesh`, what a Python `MeshNode` sends and reads):
//! - `{"type":"hello","node_id":N[,"auth_token":T]}`: each side's first frame;
//! - `{"type":"op","op":<ledger record>}`: one stamped op.
//!
//! Ours, sent only to peers whose `hello` carried an `aether` object (upstream ignores unknown
//! fields and types, so mixing is safe):
//! - `hello` gains `"aether":{"v":1,"instance":I,"nonce":R[,"proof":P]}`: the protocol version, a
//!   random id of the running process (tells a restarted node from a second node with the same
//!   id), and the challenge-response (see [`super::auth`]);
//! - `{"type":"auth","proof":P}`: the dialler's answer to the challenge;
//! - `{"type":"ops","ops":[<record>...]}`: a batch of gossip;
//! - `{"type":"digest","buckets":[u64; 4096]}`: anti-entropy, see [`crate::digest`];
//! - `{"type":"sync","ops":[<record>...]}`: registers sent because their bucket differed;
//! - `{"type":"presence",...}` and `{"type":"presence_leave",...}`: cursors across nodes, with
//!   the origin node and a per-origin sequence number for flooding without loops, the cursor's
//!   `room` (omitted for the default room) and, on `presence`, its `user` (when it has one);
//! - `{"type":"heartbeat","origin":N}`: over NATS only, a relay is alive.
//!
//! Every op from a peer passes [`decode_op`]: the browser limits on keys and values, a sane node id,
//! and a bound on how far in the future its stamp may be.
//!
//! Rooms: an op record names its room as the ledger does ([`record`]): a default-room op is
//! upstream's record, a named room's has `room` and `op` instead of `kind`. Only our peers (and
//! NATS) exchange named rooms: [`Peer::Upstream`] decodes default-room records only, and what we
//! send an upstream peer passes [`for_peer`].

use bytestring::ByteString;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    config::Limits,
    ledger::record,
    lww::Op,
    protocol::{self, Dropped},
    room::Room,
};

/// Largest frame on a peer link (our batches are cut well below it).
pub const MAX_FRAME_BYTES: usize = 4 << 20;

/// Batches are cut at about this many bytes of records.
pub const CHUNK_BYTES: usize = 192 * 1024;

/// Our extension of `hello`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Caps {
    /// Protocol version.
    pub v: u32,
    /// Random id of the running process.
    pub instance: String,
    /// The sender's challenge.
    pub nonce: String,
    /// The listener's proof (in its reply, when a token is configured).
    #[serde(default)]
    pub proof: Option<String>,
}

/// A `hello`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Hello {
    /// The peer's node id.
    pub node_id: String,
    /// Upstream's token-in-hello.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// Present when the peer is one of ours.
    #[serde(default)]
    pub aether: Option<Caps>,
}

/// One frame from a peer.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerFrame {
    /// See [`Hello`].
    Hello(Hello),
    /// The dialler's proof.
    Auth {
        /// HMAC over the handshake.
        proof: String,
    },
    /// One op (upstream).
    Op {
        /// The record, checked by [`decode_op`].
        op: Value,
    },
    /// A batch of gossip.
    Ops {
        /// Records.
        ops: Vec<Value>,
    },
    /// Anti-entropy registers.
    Sync {
        /// Records.
        ops: Vec<Value>,
    },
    /// The sender's digest.
    Digest {
        /// One number per bucket.
        buckets: Vec<u64>,
    },
    /// A cursor.
    Presence(RemoteCursor),
    /// A client left.
    PresenceLeave {
        /// Node the client is on.
        origin: String,
        /// The origin's sequence number.
        seq: u64,
        /// The client.
        id: String,
        /// Its room (absent: the default room).
        #[serde(default, deserialize_with = "room_field")]
        room: Room,
    },
    /// A relay is alive (NATS transport only, on the presence subject).
    Heartbeat {
        /// The relay.
        origin: String,
    },
    /// Anything else: ignored, as upstream reserves other types for later.
    #[serde(other)]
    Other,
}

/// A cursor as it travels between nodes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RemoteCursor {
    /// Node the client is on.
    pub origin: String,
    /// The origin's sequence number.
    pub seq: u64,
    /// The client.
    pub id: String,
    /// Its colour.
    pub color: String,
    /// Horizontal position.
    pub x: i64,
    /// Vertical position.
    pub y: i64,
    /// Its room (absent: the default room).
    #[serde(default, deserialize_with = "room_field")]
    pub room: Room,
    /// The `sub` of its token, when it has one.
    #[serde(default, deserialize_with = "user_field")]
    pub user: Option<String>,
}

/// Longest `user` a cursor may carry (a token's `sub` is 1 to 256 bytes).
pub const MAX_USER_BYTES: usize = 256;

/// A `room` field: a valid room name (a bad one makes the frame malformed, never the default room).
fn room_field<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Room, D::Error> {
    let name = String::deserialize(de)?;
    Room::parse(&name).map_err(serde::de::Error::custom)
}

/// A `user` field: 1 to [`MAX_USER_BYTES`] bytes.
fn user_field<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    let user = String::deserialize(de)?;
    if user.is_empty() || user.len() > MAX_USER_BYTES {
        return Err(serde::de::Error::custom("user: 1 to 256 bytes"));
    }
    Ok(Some(user))
}

/// Who is at the other end of a link: which records it may send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// One of ours (or the NATS stream, which only ours write): every room.
    Ours,
    /// Upstream's `MeshNode`: it knows one map, the default room.
    Upstream,
}

impl Peer {
    /// `Ours` when `ours`, else `Upstream`.
    pub fn from_ours(ours: bool) -> Self {
        if ours { Peer::Ours } else { Peer::Upstream }
    }
}

/// Whether `op` may be sent to `peer`: an upstream peer gets the default room only.
pub fn for_peer(op: &Op, peer: Peer) -> bool {
    peer == Peer::Ours || op.room.is_default()
}

/// Parses a frame; `None` for anything that is not a well-formed frame.
pub fn parse(text: &str) -> Option<PeerFrame> {
    serde_json::from_str(text).ok()
}

/// Why an op from a peer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a ledger record.
    Malformed,
    /// Key over `max_key_bytes`.
    BadKey,
    /// Value over `max_value_bytes` or nested too deep.
    BadValue,
    /// Node id empty or over 128 bytes.
    BadNode,
    /// Stamped further ahead of our clock than `max_clock_drift_s`.
    ClockDrift,
    /// A logical counter above [`crate::hlc::MAX_LOGICAL`]: no real clock gets there, and
    /// taking it would push our own clock towards the counter's end.
    BadCounter,
    /// Not an op: a digest of the wrong length (ignored; never answered with a full dump).
    BadDigest,
    /// A named room's record from an upstream peer (upstream has one map; only our peers
    /// exchange rooms).
    Room,
}

impl Refused {
    /// Every reason, for metrics.
    pub const ALL: [Refused; 8] = [
        Refused::Malformed,
        Refused::BadKey,
        Refused::BadValue,
        Refused::BadNode,
        Refused::ClockDrift,
        Refused::BadCounter,
        Refused::BadDigest,
        Refused::Room,
    ];

    /// Name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::BadKey => "bad_key",
            Refused::BadValue => "bad_value",
            Refused::BadNode => "bad_node",
            Refused::ClockDrift => "clock_drift",
            Refused::BadCounter => "bad_counter",
            Refused::BadDigest => "bad_digest",
            Refused::Room => "room",
        }
    }
}

/// Decodes and checks one op from `peer` against the same limits as a browser write, and
/// refuses stamps more than `max_drift_ns` ahead of `now_ns`. An upstream peer's op is always
/// of the default room: a named room's record from it is refused.
///
/// # Errors
/// [`Refused`] saying why.
pub fn decode_op(value: Value, peer: Peer, limits: &Limits, now_ns: u64, max_drift_ns: u64) -> Result<Op, Refused> {
    let op = record::decode_value(value).map_err(|_| Refused::Malformed)?;
    if !for_peer(&op, peer) {
        return Err(Refused::Room);
    }
    if op.key.len() > limits.max_key_bytes {
        return Err(Refused::BadKey);
    }
    if let Err(Dropped::BadValue) = protocol::check_value(&op.value, limits) {
        return Err(Refused::BadValue);
    }
    if op.stamp.n.is_empty() || op.stamp.n.len() > 128 {
        return Err(Refused::BadNode);
    }
    if op.stamp.p > now_ns.saturating_add(max_drift_ns) {
        return Err(Refused::ClockDrift);
    }
    if !op.stamp.counter_in_range() {
        return Err(Refused::BadCounter);
    }
    Ok(op)
}

/// Our `hello` (with `caps`), or upstream's (without); `token` only in upstream mode.
pub fn hello(node_id: &str, caps: Option<&Caps>, token: Option<&str>) -> ByteString {
    let mut frame = json!({"type": "hello", "node_id": node_id});
    if let Some(token) = token {
        frame["auth_token"] = json!(token);
    }
    if let Some(caps) = caps {
        frame["aether"] = json!({"v": caps.v, "instance": caps.instance, "nonce": caps.nonce});
        if let Some(proof) = &caps.proof {
            frame["aether"]["proof"] = json!(proof);
        }
    }
    frame.to_string().into()
}

/// The dialler's proof.
pub fn auth(proof: &str) -> ByteString {
    json!({"type": "auth", "proof": proof}).to_string().into()
}

/// Upstream's `op` frame around `record` (a ledger record without its newline, [`record_of`]).
pub fn op(record: &[u8]) -> ByteString {
    let mut out = Vec::with_capacity(20 + record.len());
    out.extend_from_slice(b"{\"type\":\"op\",\"op\":");
    out.extend_from_slice(record);
    out.push(b'}');
    utf8(out)
}

/// `ops` (gossip) or `sync` (anti-entropy) frames carrying `records` (each a ledger record
/// without its newline), cut into frames of about 192 KiB.
pub fn batches<'a>(kind: &str, records: impl Iterator<Item = &'a [u8]>) -> Vec<ByteString> {
    let head = format!("{{\"type\":\"{kind}\",\"ops\":[");
    let mut frames = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    for record in records {
        if out.is_empty() {
            out.extend_from_slice(head.as_bytes());
        } else {
            out.push(b',');
        }
        out.extend_from_slice(record);
        if out.len() >= CHUNK_BYTES {
            out.extend_from_slice(b"]}");
            frames.push(utf8(std::mem::take(&mut out)));
        }
    }
    if !out.is_empty() {
        out.extend_from_slice(b"]}");
        frames.push(utf8(out));
    }
    frames
}

/// The ledger record of `op`, without its newline.
pub fn record_of(op: &Op) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + op.key.len());
    record::encode(op, &mut out);
    out.pop();
    out
}

/// Our digest frame.
pub fn digest(buckets: &[u64]) -> ByteString {
    json!({"type": "digest", "buckets": buckets}).to_string().into()
}

/// A cursor frame (`room` only for a named room, `user` only when there is one: a default-room
/// cursor without a user is the frame as it was before rooms).
pub fn presence(c: &RemoteCursor) -> ByteString {
    let mut frame =
        json!({"type": "presence", "origin": c.origin, "seq": c.seq, "id": c.id, "color": c.color, "x": c.x, "y": c.y});
    if let Some(room) = c.room.name() {
        frame["room"] = json!(room);
    }
    if let Some(user) = &c.user {
        frame["user"] = json!(user);
    }
    frame.to_string().into()
}

/// A leave frame (`room` only for a named room).
pub fn presence_leave(origin: &str, seq: u64, id: &str, room: &Room) -> ByteString {
    let mut frame = json!({"type": "presence_leave", "origin": origin, "seq": seq, "id": id});
    if let Some(room) = room.name() {
        frame["room"] = json!(room);
    }
    frame.to_string().into()
}

/// A relay's heartbeat (NATS transport).
pub fn heartbeat(origin: &str) -> ByteString {
    json!({"type": "heartbeat", "origin": origin}).to_string().into()
}

fn utf8(bytes: Vec<u8>) -> ByteString {
    // Records are serde_json output and ASCII punctuation: always UTF-8.
    String::from_utf8(bytes).map(ByteString::from).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Stamp;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn upstream_frames_parse_with_its_spacing() {
        let hello = r#"{"type": "hello", "node_id": "py", "auth_token": "s"}"#;
        let Some(PeerFrame::Hello(h)) = parse(hello) else { panic!() };
        assert_eq!((h.node_id.as_str(), h.auth_token.as_deref(), h.aether), ("py", Some("s"), None));
        let op = r#"{"type": "op", "op": {"kind": "set", "key": "k", "value": {"a": 1}, "stamp": {"p": 5, "l": 0, "n": "py"}}}"#;
        let Some(PeerFrame::Op { op }) = parse(op) else { panic!() };
        let op = decode_op(op, Peer::Upstream, &limits(), 10, 0).unwrap();
        assert_eq!(op, Op::set("k", json!({"a": 1}), Stamp::new(5, 0, "py")));
        assert!(matches!(parse(r#"{"type": "later"}"#), Some(PeerFrame::Other)));
        assert!(parse("[1]").is_none() && parse("{").is_none() && parse(r#"{"type":"op"}"#).is_none());
    }

    #[test]
    fn our_frames_round_trip() {
        let caps = Caps { v: 1, instance: "i".into(), nonce: "n".into(), proof: Some("p".into()) };
        let Some(PeerFrame::Hello(h)) = parse(&hello("a", Some(&caps), None)) else { panic!() };
        assert_eq!((h.aether, h.auth_token), (Some(caps), None));
        let ops: Vec<Op> =
            (0..3000).map(|i| Op::set(format!("k{i}"), json!("x".repeat(100)), Stamp::new(i, 0, "a"))).collect();
        let records: Vec<Vec<u8>> = ops.iter().map(record_of).collect();
        let frames = batches("sync", records.iter().map(Vec::as_slice));
        assert!(frames.len() > 1 && frames.iter().all(|f| f.len() < MAX_FRAME_BYTES));
        let mut back = Vec::new();
        for frame in &frames {
            let Some(PeerFrame::Sync { ops }) = parse(frame) else { panic!() };
            back.extend(ops.into_iter().map(|v| decode_op(v, Peer::Ours, &limits(), u64::MAX, 0).unwrap()));
        }
        assert_eq!(back, ops);
        let Some(PeerFrame::Op { op: one }) = parse(&op(&records[0])) else { panic!() };
        assert_eq!(decode_op(one, Peer::Ours, &limits(), u64::MAX, 0).unwrap(), ops[0]);
        let Some(PeerFrame::Digest { buckets }) = parse(&digest(&[u64::MAX, 0])) else { panic!() };
        assert_eq!(buckets, vec![u64::MAX, 0]);
    }

    #[test]
    fn ops_from_peers_meet_browser_limits_and_the_drift_bound() {
        let rec = |key: &str, value: Value, p: u64, n: &str| json!({"kind": "set", "key": key, "value": value, "stamp": {"p": p, "l": 0, "n": n}});
        let l = limits();
        let check = |v| decode_op(v, Peer::Upstream, &l, 1_000, 100).err();
        assert_eq!(check(rec("k", json!(1), 1_100, "a")), None);
        assert_eq!(check(rec("k", json!(1), 1_101, "a")), Some(Refused::ClockDrift));
        assert_eq!(check(rec(&"k".repeat(257), json!(1), 1, "a")), Some(Refused::BadKey));
        assert_eq!(check(rec("k", json!("v".repeat(40_000)), 1, "a")), Some(Refused::BadValue));
        assert_eq!(check(rec("k", json!(1), 1, "")), Some(Refused::BadNode));
        let wrapping = json!({"kind": "set", "key": "k", "value": 1, "stamp": {"p": 1, "l": u64::MAX, "n": "a"}});
        assert_eq!(check(wrapping), Some(Refused::BadCounter));
        assert_eq!(
            check(json!({"kind": "set", "key": 5, "stamp": {"p": 1, "l": 0, "n": "a"}})),
            Some(Refused::Malformed)
        );
        assert_eq!(
            check(json!({"kind": "upsert", "key": "k", "stamp": {"p": 1, "l": 0, "n": "a"}})),
            Some(Refused::Malformed)
        );
    }

    #[test]
    fn rooms_travel_to_our_peers_and_never_from_or_to_upstreams() {
        let board = Room::parse("board-42").unwrap();
        let named = Op::set("k", json!(1), Stamp::new(5, 0, "a")).in_room(board.clone()).by(Some("alice".into()));
        let default = Op::set("k", json!(2), Stamp::new(6, 0, "a"));
        let frames = batches("ops", [record_of(&named), record_of(&default)].iter().map(Vec::as_slice));
        let Some(PeerFrame::Ops { ops }) = parse(&frames[0]) else { panic!() };
        assert_eq!(ops[0]["room"], "board-42", "a named room's op is a room record: {}", ops[0]);
        assert!(ops[1].get("room").is_none() && ops[1]["kind"] == "set", "the default room's is upstream's");
        let back: Vec<Op> =
            ops.iter().map(|v| decode_op(v.clone(), Peer::Ours, &limits(), u64::MAX, 0).unwrap()).collect();
        assert_eq!(back, [named.clone(), default.clone()]);
        // From an upstream peer: the default room only.
        assert_eq!(decode_op(ops[0].clone(), Peer::Upstream, &limits(), u64::MAX, 0), Err(Refused::Room));
        assert_eq!(decode_op(ops[1].clone(), Peer::Upstream, &limits(), u64::MAX, 0), Ok(default.clone()));
        // A `kind` record is upstream's, whatever `room` it also carries: the default room.
        let mixed =
            json!({"kind": "set", "room": "board-42", "key": "k", "value": 2, "stamp": {"p": 6, "l": 0, "n": "a"}});
        assert_eq!(decode_op(mixed, Peer::Upstream, &limits(), u64::MAX, 0), Ok(default.clone()));
        // A bad room name is malformed, from anyone.
        let bad = json!({"room": "_x", "op": "set", "key": "k", "value": 2, "stamp": {"p": 6, "l": 0, "n": "a"}});
        assert_eq!(decode_op(bad, Peer::Ours, &limits(), u64::MAX, 0), Err(Refused::Malformed));
        assert!(
            !for_peer(&named, Peer::Upstream) && for_peer(&named, Peer::Ours) && for_peer(&default, Peer::Upstream)
        );
    }

    #[test]
    fn cursor_frames_with_a_bad_room_or_user_are_malformed() {
        let frame = |extra: Value| {
            let mut f = json!({"type": "presence", "origin": "a", "seq": 1, "id": "i", "color": "c", "x": 1, "y": 2});
            for (k, v) in extra.as_object().unwrap() {
                f[k] = v.clone();
            }
            parse(&f.to_string())
        };
        let Some(PeerFrame::Presence(c)) = frame(json!({})) else { panic!() };
        assert_eq!((c.room, c.user), (Room::DEFAULT, None));
        let Some(PeerFrame::Presence(c)) = frame(json!({"room": "b", "user": "u"})) else { panic!() };
        assert_eq!((c.room.name(), c.user.as_deref()), (Some("b"), Some("u")));
        for bad in [
            json!({"room": ""}),
            json!({"room": "_"}),
            json!({"room": 5}),
            json!({"user": ""}),
            json!({"user": "u".repeat(257)}),
        ] {
            assert!(frame(bad.clone()).is_none(), "{bad}");
        }
        let leave = r#"{"type":"presence_leave","origin":"a","seq":1,"id":"i","room":"a b"}"#;
        assert!(parse(leave).is_none());
    }
}
