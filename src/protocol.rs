//! Protocol v1: upstream's browser wire protocol, parsed once at the edge and encoded once per
//! broadcast.
//!
//! Inbound text becomes a [`ClientFrame`] or a [`Dropped`] reason; nothing here closes connections
//! (that is the session's call). Outbound frames have upstream's exact field sets and order.

use bytestring::ByteString;
use serde_json::{Map, Value};

use crate::{
    config::Limits,
    json::Json,
    lww::{Op, OpKind},
    room::Room,
};

/// Deepest nesting of arrays and objects accepted inside a value.
pub const MAX_VALUE_DEPTH: usize = 64;

/// A valid client message.
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    /// `{"type":"set","key":K,"value":V}`; a missing value is `null`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Json,
        /// v2: the client's reference for this write, echoed in its `ack` or `nack`.
        reference: Option<Value>,
    },
    /// `{"type":"delete","key":K}`.
    Delete {
        /// The key.
        key: String,
        /// v2: the client's reference for this write.
        reference: Option<Value>,
    },
    /// `{"type":"presence","x":X,"y":Y}`, coordinates coerced as upstream's `int()` does; v2 may
    /// add `"tab":ID`, the browser tab the cursor belongs to (v1 ignores it).
    Presence {
        /// Horizontal position.
        x: i64,
        /// Vertical position.
        y: i64,
        /// The `tab` field, if there is one.
        tab: Tab,
    },
    /// v2 `{"type":"presence-leave","tab":ID}`: the tab `ID` of this connection closed. In v1 it
    /// is dropped as upstream drops it (a message without a key).
    PresenceLeave {
        /// The `tab` field.
        tab: Tab,
    },
    /// `{"type":"auth","token":T}`.
    Auth {
        /// The presented token, if it is a string.
        token: Option<String>,
    },
    /// v2 `{"type":"ping"}`: answered with `{"type":"pong"}`, so a browser (which cannot see
    /// WebSocket pings) can tell a live connection from a dead one. In v1 it is dropped as upstream
    /// drops it (a message without a key).
    Ping,
}

/// The `tab` field of a v2 presence frame: one connection (a browser's leader tab) can carry the
/// cursors of several tabs, each shown as its own cursor `<connection id>:<tab>`.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Tab {
    /// No `tab` field: the connection's own cursor.
    None,
    /// A valid tab id: 1 to [`MAX_TAB_BYTES`] bytes of `[A-Za-z0-9._:-]`.
    Valid(String),
    /// A `tab` field that is not a valid tab id (v2 drops the frame as `bad_presence`).
    Invalid,
}

/// Longest tab id.
pub const MAX_TAB_BYTES: usize = 64;

impl Tab {
    fn parse(value: Option<&Value>) -> Tab {
        match value {
            None => Tab::None,
            Some(Value::String(tab)) if valid_tab(tab) => Tab::Valid(tab.clone()),
            Some(_) => Tab::Invalid,
        }
    }
}

/// A tab id: 1 to [`MAX_TAB_BYTES`] bytes of `[A-Za-z0-9._:-]`.
pub fn valid_tab(tab: &str) -> bool {
    (1..=MAX_TAB_BYTES).contains(&tab.len())
        && tab.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Why an inbound message was dropped (the connection stays open).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Dropped {
    /// Larger than `max_message_bytes`.
    MessageTooLarge,
    /// Not JSON (including `NaN`, `Infinity`, numbers that overflow, nesting deeper than the parser allows).
    NotJson,
    /// JSON, but not an object.
    NotObject,
    /// Missing, empty, non-string or over-long key.
    BadKey,
    /// Value larger than `max_value_bytes` or nested deeper than [`MAX_VALUE_DEPTH`].
    BadValue,
    /// Presence coordinates that are not integers; in v2 also a bad or missing `tab`, or one tab
    /// more than a connection may show at once.
    BadPresence,
    /// A `type` this server does not know.
    UnknownType,
    /// A write from a connection whose token grants its room for reading only.
    Forbidden,
    /// A write that would take its room past `[rooms] max_keys` or `max_bytes`.
    RoomFull,
}

impl Dropped {
    /// Short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::MessageTooLarge => "message_too_large",
            Dropped::NotJson => "not_json",
            Dropped::NotObject => "not_object",
            Dropped::BadKey => "bad_key",
            Dropped::BadValue => "bad_value",
            Dropped::BadPresence => "bad_presence",
            Dropped::UnknownType => "unknown_type",
            Dropped::Forbidden => "forbidden",
            Dropped::RoomFull => "room_full",
        }
    }
}

/// Parses one inbound text message under `limits`, in upstream's order of checks.
///
/// # Errors
/// [`Dropped`] with the reason the message is ignored.
pub fn parse(text: &str, limits: &Limits) -> Result<ClientFrame, Dropped> {
    if text.len() > limits.max_message_bytes {
        return Err(Dropped::MessageTooLarge);
    }
    let Value::Object(mut msg) = serde_json::from_str::<Value>(text).map_err(|_| Dropped::NotJson)? else {
        return Err(Dropped::NotObject);
    };
    match msg.get("type").and_then(Value::as_str) {
        Some("presence") => {
            let x = coerce_int(msg.get("x")).ok_or(Dropped::BadPresence)?;
            let y = coerce_int(msg.get("y")).ok_or(Dropped::BadPresence)?;
            return Ok(ClientFrame::Presence { x, y, tab: Tab::parse(msg.get("tab")) });
        }
        Some("presence-leave") => return Ok(ClientFrame::PresenceLeave { tab: Tab::parse(msg.get("tab")) }),
        Some("auth") => {
            let token = msg.remove("token").and_then(|t| if let Value::String(t) = t { Some(t) } else { None });
            return Ok(ClientFrame::Auth { token });
        }
        Some("ping") => return Ok(ClientFrame::Ping),
        _ => {}
    }
    let key = take_key(&mut msg, limits)?;
    let reference = msg.remove("ref").filter(valid_reference);
    match msg.get("type").and_then(Value::as_str) {
        Some("set") => {
            let value = Json::from_value(&msg.remove("value").unwrap_or(Value::Null));
            check_value(&value, limits)?;
            Ok(ClientFrame::Set { key, value, reference })
        }
        Some("delete") => Ok(ClientFrame::Delete { key, reference }),
        _ => Err(Dropped::UnknownType),
    }
}

/// A write reference is an integer or a string of at most 64 bytes; anything else is ignored.
fn valid_reference(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_i64() || n.is_u64(),
        Value::String(s) => s.len() <= 64,
        _ => false,
    }
}

/// The `ref` of a message that was dropped, so a v2 client can be told which write failed.
pub fn dropped_reference(text: &str) -> Option<Value> {
    let Ok(Value::Object(mut msg)) = serde_json::from_str::<Value>(text) else { return None };
    msg.remove("ref").filter(valid_reference)
}

fn take_key(msg: &mut Map<String, Value>, limits: &Limits) -> Result<String, Dropped> {
    match msg.remove("key") {
        Some(Value::String(key)) if !key.is_empty() && key.len() <= limits.max_key_bytes => Ok(key),
        _ => Err(Dropped::BadKey),
    }
}

/// Checks a value's size (raw UTF-8 bytes of its compact JSON, unlike upstream's escaped count)
/// and nesting depth.
///
/// # Errors
/// [`Dropped::BadValue`].
pub fn check_value(value: &Json, limits: &Limits) -> Result<(), Dropped> {
    if value.len() > limits.max_value_bytes || value.depth() > MAX_VALUE_DEPTH {
        return Err(Dropped::BadValue);
    }
    Ok(())
}

/// Upstream's `int(msg.get(field, 0))`: integers as they are, floats truncated, integer strings
/// parsed, booleans as 0/1, missing as 0; anything else (null, `"1.5"`, objects) is not a coordinate.
fn coerce_int(value: Option<&Value>) -> Option<i64> {
    match value {
        None => Some(0),
        Some(Value::Bool(b)) => Some(i64::from(*b)),
        Some(Value::Number(n)) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            (f.is_finite() && f.abs() < 9.2e18).then_some(f.trunc() as i64)
        }),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    }
}

fn frame(value: &Value) -> ByteString {
    ByteString::from(value.to_string())
}

/// Appends the compact JSON of `value` to `out`.
fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // A String or a serde_json::Value always serializes into a Vec (no I/O, string map keys).
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `K:V,K:V,…` for a snapshot's `data` object.
fn push_entries<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a String, &'a Json)>) {
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_json(out, key);
        out.push(b':');
        out.extend_from_slice(value.as_str().as_bytes());
    }
}

fn into_frame(out: Vec<u8>) -> ByteString {
    // serde_json writes UTF-8 only; the fallback is unreachable and merely avoids a panic path.
    String::from_utf8(out).map(ByteString::from).unwrap_or_default()
}

/// `{"type":"hello","id":ID,"color":COLOR}`.
pub fn hello(id: &str, color: &str) -> ByteString {
    frame(&serde_json::json!({"type": "hello", "id": id, "color": color}))
}

/// `{"type":"snapshot","data":{K:V,…}}` from live entries, written without copying the values.
pub fn snapshot<'a>(entries: impl Iterator<Item = (&'a String, &'a Json)>) -> ByteString {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(b"{\"type\":\"snapshot\",\"data\":{");
    push_entries(&mut out, entries);
    out.extend_from_slice(b"}}");
    // Cached per room for as long as the room lives: no spare capacity (an empty room's
    // snapshot would otherwise hold 4 KiB for 30 bytes).
    out.shrink_to_fit();
    into_frame(out)
}

/// [`snapshot`] and [`snapshot_v2`] of the same `entries`, encoded on `cores` threads: for a
/// room of a million keys, which its first joiner waits for (at boot, for its `hello`). Each
/// thread encodes a run of entries; one then writes the v1 frame and another the v2 frame from
/// the runs, so neither frame is copied out of the other.
pub fn snapshots_on_cores(entries: &[(&String, &Json)], resume: &str, cores: usize) -> (ByteString, ByteString) {
    let encode = |run: &[(&String, &Json)]| {
        let mut out = Vec::with_capacity(run.len() * 64);
        push_entries(&mut out, run.iter().copied());
        // serde_json writes UTF-8 only (checked here, on every thread, not again below).
        String::from_utf8(out).unwrap_or_default()
    };
    let chunk = entries.len().div_ceil(cores.max(1)).max(1);
    let runs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = entries.chunks(chunk).map(|run| s.spawn(move || encode(run))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    let frame = |tail: &str| {
        let body = runs.iter().map(String::len).sum::<usize>() + runs.len();
        let mut out = String::with_capacity(body + tail.len() + 32);
        out.push_str(r#"{"type":"snapshot","data":{"#);
        for (i, run) in runs.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(run);
        }
        out.push('}');
        out.push_str(tail);
        ByteString::from(out)
    };
    let mut v2_tail = Vec::with_capacity(resume.len() + 16);
    push_resume_end(&mut v2_tail, resume);
    let v2_tail = String::from_utf8(v2_tail).unwrap_or_default();
    std::thread::scope(|s| {
        let v2 = s.spawn(|| frame(&v2_tail));
        let v1 = frame("}");
        (v1, v2.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}

/// `{"type":"set","key":K,"value":V}` or `{"type":"delete","key":K}` for an applied op, written
/// without copying the value.
pub fn op_frame(op: &Op) -> ByteString {
    let mut out = Vec::with_capacity(op.key.len() + 64);
    match op.kind {
        OpKind::Set => {
            out.extend_from_slice(b"{\"type\":\"set\",\"key\":");
            push_json(&mut out, &op.key);
            out.extend_from_slice(b",\"value\":");
            out.extend_from_slice(op.value.as_str().as_bytes());
        }
        OpKind::Del => {
            out.extend_from_slice(b"{\"type\":\"delete\",\"key\":");
            push_json(&mut out, &op.key);
        }
    }
    out.push(b'}');
    into_frame(out)
}

/// Every close code this server sends, to browsers and to peers (the README's protocol sections
/// and config/README.md's federation section list them). No other module writes a bare code.
pub mod close {
    // Standard codes (RFC 6455 §7.4.1), shared by v1 clients, v2 clients and peer links.

    /// Normal closure: the client closed first and this answers it.
    pub const NORMAL: u16 = 1000;
    /// The relay is shutting down (clients and peer links), or a link's writer lost its queue.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: broken WebSocket framing; on a peer link, a first frame that is not a valid
    /// `hello` or a digest of the wrong length.
    pub const PROTOCOL: u16 = 1002;
    /// Never sent; what a connection that ended without a close frame counts as in metrics.
    pub const ABNORMAL: u16 = 1006;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Auth failed, token expired, forbidden (room not granted), bad room, handshake timeout, or
    /// rate limit exceeded (v1); a peer that failed the mesh token check.
    pub const POLICY: u16 = 1008;
    /// Message larger than `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// No pong to our pings (keepalive timeout); on a peer link, the mesh actor was unavailable.
    pub const KEEPALIVE: u16 = 1011;
    /// Connection cap reached, or this client (or peer) read too slowly: its queue filled up or
    /// one write to its socket stalled.
    pub const TRY_AGAIN_LATER: u16 = 1013;

    // v2 only: distinct codes for the closes a v2 client should act on differently (see
    // `session::close_code_for`); v1 clients see the standard code instead.

    /// v2 `bad room`: `?room=` empty or not a room name (v1: [`POLICY`]): fix the name, do not retry.
    pub const V2_BAD_ROOM: u16 = 4400;
    /// v2 `auth failed` (v1: [`POLICY`]): stop reconnecting until there is a token; also `token
    /// expired` (v1: [`POLICY`], same text): reconnect with a fresh token.
    pub const V2_AUTH_FAILED: u16 = 4401;
    /// v2 `forbidden` (v1: [`POLICY`]): the token is valid but does not grant this room; stop.
    pub const V2_FORBIDDEN: u16 = 4403;
    /// v2 `disconnected by the operator` (v1: [`POLICY`], same text): the HTTP API's
    /// `POST /api/v1/rooms/{room}/disconnect` closed it. A client may reconnect (with a token
    /// that is still valid); keeping a user out is the token issuer's job.
    pub const V2_DISCONNECTED: u16 = 4410;
    /// v2 `handshake timeout` (v1: [`POLICY`]).
    pub const V2_HANDSHAKE_TIMEOUT: u16 = 4408;
    /// v2 `rate limit` (v1: [`POLICY`]): slow down.
    pub const V2_RATE_LIMIT: u16 = 4429;
    /// v2 `server busy` (v1: [`TRY_AGAIN_LATER`]): back off. Also `too many rooms`.
    pub const V2_SERVER_BUSY: u16 = 4503;
    /// v2 `too slow` (v1: [`TRY_AGAIN_LATER`]): reconnect and resume.
    pub const V2_TOO_SLOW: u16 = 4504;

    // Peer links only.

    /// A second link to a node already linked (mutual dial, or two URLs naming one node).
    pub const DUPLICATE_LINK: u16 = 4409;
    /// Another process already uses this node id (or the peer claims ours).
    pub const NODE_ID_IN_USE: u16 = 4410;
    /// The URL leads back to this very process.
    pub const SELF_DIAL: u16 = 4411;
}

/// A connection's protocol version: v1 (upstream's, the default) or v2 (`?v=2`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Upstream's protocol, exactly.
    V1,
    /// v1 plus stamps, origins, sequence numbers, acks, nacks, resume and actionable close codes.
    V2,
}

/// What a v2 `hello` tells a client about its seat, beyond its id.
#[derive(Debug, Clone, Copy)]
pub struct HelloV2<'a> {
    /// Its room (named in `hello` unless it is the default room).
    pub room: &'a Room,
    /// The `sub` of its token, if it presented a JWT.
    pub user: Option<&'a str>,
    /// Whether it may write (`"access":"write"`) or only read (`"read"`).
    pub write: bool,
    /// When its token expires, in Unix seconds (`"exp"`).
    pub expires: Option<u64>,
}

/// v2 `{"type":"hello","id":ID,"color":COLOR,"v":2,"node":NODE,"access":"read"|"write"}`, plus
/// `"room"` (a named room), `"user"` and `"exp"` (a JWT's `sub` and expiry) when they apply.
pub fn hello_v2(id: &str, color: &str, node: &str, seat: &HelloV2<'_>) -> ByteString {
    let mut hello = serde_json::json!({
        "type": "hello", "id": id, "color": color, "v": 2, "node": node,
        "access": if seat.write { "write" } else { "read" },
    });
    if let Some(room) = seat.room.name() {
        hello["room"] = room.into();
    }
    if let Some(user) = seat.user {
        hello["user"] = user.into();
    }
    if let Some(exp) = seat.expires {
        hello["exp"] = exp.into();
    }
    frame(&hello)
}

/// v2 `{"type":"auth_ok","exp":N,"access":"read"|"write"}`: a fresh token was accepted.
pub fn auth_ok(expires: Option<u64>, write: bool) -> ByteString {
    frame(&serde_json::json!({"type": "auth_ok", "exp": expires, "access": if write { "write" } else { "read" }}))
}

/// v2 `{"type":"snapshot","data":{…},"resume":TOKEN}`: the whole state, and the token that resumes
/// from it, made from the v1 `snapshot` frame of the same state (one encoding serves both).
pub fn snapshot_v2(v1: &ByteString, resume: &str) -> ByteString {
    // `{"type":"snapshot","data":{…}}` + `,"resume":…}`.
    let mut out = Vec::with_capacity(v1.len() + resume.len() + 16);
    out.extend_from_slice(&v1.as_bytes()[..v1.len() - 1]);
    push_resume_end(&mut out, resume);
    into_frame(out)
}

/// `,"resume":TOKEN}`: how a v2 snapshot ends, after the v1 frame's last brace.
fn push_resume_end(out: &mut Vec<u8>, resume: &str) {
    out.extend_from_slice(b",\"resume\":");
    push_json(out, resume);
    out.push(b'}');
}

/// v2 `{"type":"delta","data":{changed…},"deleted":[keys…],"resume":TOKEN}`: what changed since
/// the client's resume token, instead of the whole state.
pub fn delta_v2<'a>(
    changed: impl Iterator<Item = (&'a String, &'a Json)>,
    deleted: &[&String],
    resume: &str,
) -> ByteString {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"type\":\"delta\",\"data\":{");
    push_entries(&mut out, changed);
    out.extend_from_slice(b"},\"deleted\":");
    push_json(&mut out, deleted);
    push_resume_end(&mut out, resume);
    into_frame(out)
}

/// v2 `set`/`delete` with `"stamp":"<p>.<l>.<node>"` (zero-padded: compare as text),
/// `"origin"` (the writing client's id, or null for a write from elsewhere) and `"seq"`.
pub fn op_frame_v2(op: &Op, origin: Option<&str>, seq: u64) -> ByteString {
    let v1 = op_frame(op);
    let mut out = v1.as_bytes()[..v1.len() - 1].to_vec();
    out.extend_from_slice(b",\"stamp\":");
    push_json(&mut out, &op.stamp.to_string());
    out.extend_from_slice(b",\"origin\":");
    push_json(&mut out, &origin);
    out.extend_from_slice(format!(",\"seq\":{seq}}}").as_bytes());
    into_frame(out)
}

/// v2 `{"type":"ack","ref":R,"key":K,"stamp":S,"seq":N}`: the write `R` is durable.
pub fn ack(reference: &Value, op: &Op, seq: u64) -> ByteString {
    frame(
        &serde_json::json!({"type": "ack", "ref": reference, "key": op.key, "stamp": op.stamp.to_string(), "seq": seq}),
    )
}

/// v2 `{"type":"nack","ref":R,"reason":REASON}`: the write `R` was refused and will never apply.
pub fn nack(reference: &Value, reason: &str) -> ByteString {
    frame(&serde_json::json!({"type": "nack", "ref": reference, "reason": reason}))
}

/// v2 `{"type":"pong"}`: the answer to a `ping`.
pub fn pong() -> ByteString {
    ByteString::from_static(r#"{"type":"pong"}"#)
}

/// `{"type":"presence","id":ID,"color":COLOR,"x":X,"y":Y}`.
pub fn presence(id: &str, color: &str, x: i64, y: i64) -> ByteString {
    frame(&serde_json::json!({"type": "presence", "id": id, "color": color, "x": x, "y": y}))
}

/// A cursor's frames for v1 (upstream's, exactly) and v2 members (with `"user"` when the mover
/// presented a JWT).
pub fn presence_frames(id: &str, color: &str, user: Option<&str>, x: i64, y: i64) -> (ByteString, ByteString) {
    let v1 = presence(id, color, x, y);
    let v2 = match user {
        None => v1.clone(),
        Some(user) => {
            frame(&serde_json::json!({"type": "presence", "id": id, "color": color, "x": x, "y": y, "user": user}))
        }
    };
    (v1, v2)
}

/// `{"type":"presence-leave","id":ID}`.
pub fn presence_leave(id: &str) -> ByteString {
    frame(&serde_json::json!({"type": "presence-leave", "id": id}))
}

/// Upstream's client colour: `hsl(H, 78%, 62%)` with `H = int(sha1(id).hex[:6], 16) % 360`.
pub fn color_for(id: &str) -> String {
    let digest = openssl::sha::sha1(id.as_bytes());
    let h = (u32::from(digest[0]) << 16 | u32::from(digest[1]) << 8 | u32::from(digest[2])) % 360;
    format!("hsl({h}, 78%, 62%)")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::hlc::Stamp;

    fn p(text: &str) -> Result<ClientFrame, Dropped> {
        parse(text, &Limits::default())
    }

    #[test]
    fn parses_the_four_message_types() {
        assert_eq!(
            p(r#"{"type":"set","key":"k","value":{"a":[1]}}"#),
            Ok(ClientFrame::Set { key: "k".into(), value: json!({"a":[1]}).into(), reference: None })
        );
        assert_eq!(
            p(r#"{"type":"set","key":"k"}"#),
            Ok(ClientFrame::Set { key: "k".into(), value: Json::null(), reference: None })
        );
        assert_eq!(p(r#"{"type":"delete","key":"k"}"#), Ok(ClientFrame::Delete { key: "k".into(), reference: None }));
        assert_eq!(
            p(r#"{"type":"presence","x":1.9,"y":"7"}"#),
            Ok(ClientFrame::Presence { x: 1, y: 7, tab: Tab::None })
        );
        assert_eq!(p(r#"{"type":"presence","x":true}"#), Ok(ClientFrame::Presence { x: 1, y: 0, tab: Tab::None }));
        assert_eq!(p(r#"{"type":"auth","token":"t"}"#), Ok(ClientFrame::Auth { token: Some("t".into()) }));
    }

    #[test]
    fn parses_tab_ids_and_tells_bad_ones() {
        let presence = |tab| Ok(ClientFrame::Presence { x: 1, y: 2, tab });
        assert_eq!(p(r#"{"type":"presence","x":1,"y":2,"tab":"t-1.a_b:c"}"#), presence(Tab::Valid("t-1.a_b:c".into())));
        let longest = "a".repeat(MAX_TAB_BYTES);
        let frame = format!(r#"{{"type":"presence","x":1,"y":2,"tab":"{longest}"}}"#);
        assert_eq!(p(&frame), presence(Tab::Valid(longest.clone())));
        for bad in [r#""""#, r#""a b""#, r#""é""#, "1", "null", r#"["a"]"#, &format!(r#""{longest}a""#)] {
            let frame = format!(r#"{{"type":"presence","x":1,"y":2,"tab":{bad}}}"#);
            assert_eq!(p(&frame), presence(Tab::Invalid), "{frame}");
        }
        assert_eq!(
            p(r#"{"type":"presence-leave","tab":"t"}"#),
            Ok(ClientFrame::PresenceLeave { tab: Tab::Valid("t".into()) })
        );
        assert_eq!(p(r#"{"type":"presence-leave"}"#), Ok(ClientFrame::PresenceLeave { tab: Tab::None }));
    }

    #[test]
    fn duplicate_fields_last_one_wins_as_in_python() {
        assert_eq!(
            p(r#"{"type":"set","key":"k","value":1,"type":"delete"}"#),
            Ok(ClientFrame::Delete { key: "k".into(), reference: None })
        );
    }

    #[test]
    fn drops_bad_input_with_a_reason() {
        let cases = [
            ("nope", Dropped::NotJson),
            ("[1,2,3]", Dropped::NotObject),
            ("5", Dropped::NotObject),
            (r#"{"type":"set","key":"k","value":NaN}"#, Dropped::NotJson),
            (r#"{"type":"set","key":"k","value":1e400}"#, Dropped::NotJson),
            (r#"{"type":"presence","x":1e400}"#, Dropped::NotJson),
            (r#"{"type":"set","value":1}"#, Dropped::BadKey),
            (r#"{"type":"set","key":"","value":1}"#, Dropped::BadKey),
            (r#"{"type":"delete","key":5}"#, Dropped::BadKey),
            (r#"{"type":"bogus","key":"k"}"#, Dropped::UnknownType),
            (r#"{"key":"k"}"#, Dropped::UnknownType),
            (r#"{"type":"presence","x":null}"#, Dropped::BadPresence),
            (r#"{"type":"presence","x":"1.5"}"#, Dropped::BadPresence),
        ];
        for (text, reason) in cases {
            assert_eq!(p(text), Err(reason), "{text}");
        }
        let deep = format!(r#"{{"type":"set","key":"k","value":{}1{}}}"#, "[".repeat(65), "]".repeat(65));
        assert_eq!(p(&deep), Err(Dropped::BadValue));
        let ok = format!(r#"{{"type":"set","key":"k","value":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
        assert!(p(&ok).is_ok());
        let deeper = format!(r#"{{"type":"set","key":"k","value":{}1{}}}"#, "[".repeat(5000), "]".repeat(5000));
        assert_eq!(p(&deeper), Err(Dropped::NotJson));
    }

    #[test]
    fn key_and_value_caps_count_raw_utf8_bytes() {
        let limits = Limits::default();
        assert!(p(&format!(r#"{{"type":"delete","key":"{}"}}"#, "k".repeat(256))).is_ok());
        assert_eq!(p(&format!(r#"{{"type":"delete","key":"{}"}}"#, "k".repeat(257))), Err(Dropped::BadKey));
        // 6000 × é is 12 000 UTF-8 bytes: accepted (upstream measured 36 000 escaped bytes).
        let value = Json::from(Value::String("é".repeat(6000)));
        assert_eq!(check_value(&value, &limits), Ok(()));
        let exact = Json::from(Value::String("x".repeat(limits.max_value_bytes - 2)));
        assert_eq!(exact.len(), limits.max_value_bytes);
        assert_eq!(check_value(&exact, &limits), Ok(()));
        let over = Json::from(Value::String("x".repeat(limits.max_value_bytes - 1)));
        assert_eq!(check_value(&over, &limits), Err(Dropped::BadValue));
    }

    #[test]
    fn outbound_frames_have_upstreams_exact_shape() {
        assert_eq!(&*hello("i", "c"), r#"{"type":"hello","id":"i","color":"c"}"#);
        assert_eq!(
            &*op_frame(&Op::set("k", json!({"b":1,"a":2}), Stamp::new(1, 0, "n"))),
            r#"{"type":"set","key":"k","value":{"b":1,"a":2}}"#
        );
        assert_eq!(&*op_frame(&Op::del("k", Stamp::new(1, 0, "n"))), r#"{"type":"delete","key":"k"}"#);
        assert_eq!(&*presence("i", "c", 1, -2), r#"{"type":"presence","id":"i","color":"c","x":1,"y":-2}"#);
        assert_eq!(&*presence_leave("i"), r#"{"type":"presence-leave","id":"i"}"#);
        let (a, b, c, d) = ("a".to_string(), Json::null(), "é\"".to_string(), Json::from(json!({"x": [1.5, "é"]})));
        assert_eq!(
            &*snapshot([(&a, &b), (&c, &d)].into_iter()),
            r#"{"type":"snapshot","data":{"a":null,"é\"":{"x":[1.5,"é"]}}}"#
        );
        assert_eq!(&*snapshot(std::iter::empty()), r#"{"type":"snapshot","data":{}}"#);
    }

    #[test]
    fn snapshots_on_cores_are_the_one_core_frames() {
        let keys: Vec<String> = (0..50).map(|i| format!("k{i:02}é\"")).collect();
        let values: Vec<Json> = (0..50).map(|i| Json::from(json!({"i": i, "s": "é\n"}))).collect();
        for len in [0, 1, 2, 3, 7, 50] {
            let entries: Vec<(&String, &Json)> = keys.iter().zip(&values).take(len).collect();
            let v1 = snapshot(entries.iter().copied());
            let v2 = snapshot_v2(&v1, "e.7\"");
            for cores in [1, 2, 3, 8, 64] {
                assert_eq!(snapshots_on_cores(&entries, "e.7\"", cores), (v1.clone(), v2.clone()), "{len} on {cores}");
            }
        }
    }

    #[test]
    fn color_matches_upstreams_formula() {
        // sha1("abc") = a9993e36…, and 0xa9993e % 360 = 174.
        assert_eq!(color_for("abc"), "hsl(174, 78%, 62%)");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
            prop::sample::select(vec!["set", "delete", "presence", "auth", "type", "key", "value"])
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (prop::sample::select(vec!["type", "key", "value", "x", "y", "token", "z"]), inner),
                    0..6
                )
                .prop_map(|pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Arbitrary text never panics the parser.
        #[test]
        fn fuzz_arbitrary_text_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = p(&String::from_utf8_lossy(&bytes));
        }

        /// Arbitrary JSON never panics the parser, and whatever it accepts respects every limit.
        #[test]
        fn fuzz_arbitrary_json_accepts_only_what_the_limits_allow(value in arb_json()) {
            let limits = Limits { max_key_bytes: 8, max_value_bytes: 64, ..Limits::default() };
            match parse(&value.to_string(), &limits) {
                Ok(ClientFrame::Set { key, value, .. }) => {
                    prop_assert!(!key.is_empty() && key.len() <= 8);
                    prop_assert!(value.len() <= 64 && value.depth() <= MAX_VALUE_DEPTH);
                }
                Ok(ClientFrame::Delete { key, .. }) => prop_assert!(!key.is_empty() && key.len() <= 8),
                Ok(ClientFrame::Presence { .. } | ClientFrame::PresenceLeave { .. } | ClientFrame::Auth { .. } | ClientFrame::Ping) | Err(_) => {}
            }
        }

        /// Every well-formed set parses back to exactly what was sent.
        #[test]
        fn fuzz_valid_sets_round_trip(key in "[a-z:0-9é]{1,20}", value in arb_json()) {
            let text = json!({"type": "set", "key": key, "value": value}).to_string();
            let parsed = p(&text);
            let value = Json::from(value);
            if value.len() <= Limits::default().max_value_bytes && value.depth() <= MAX_VALUE_DEPTH {
                prop_assert_eq!(parsed, Ok(ClientFrame::Set { key, value, reference: None }));
            }
        }
    }
}
