//! `GET /rooms/{room}/changes`: the room's durable ops as Server-Sent Events.
//!
//! The feed joins its room as a v2 member (a fresh bounded outbox, like a WebSocket's), so it
//! gets exactly what a v2 client gets, in apply order and only once durable: the state (or a
//! delta since `Last-Event-ID` / `?since=`), then each `set` and `delete`. A task converts those
//! frames to events and hands them to the response body through a small bounded channel; it
//! skips presence. A reader that falls `[limits] max_outbound_bytes` behind is kicked by the state
//! actor like a slow WebSocket, and one whose socket takes nothing for `write_timeout_s` is ended
//! here; either way the stream ends (after `event: error` if it fits) and the member leaves.
//!
//! Events (the guide, src/api/README.md, documents them):
//! - `snapshot`: `{"keys": {…}}`, the room's live keys; `delta`: `{"keys": {…}, "deleted": […]}`,
//!   what changed since the presented token; `resync`: `{"reason": …}` before a `snapshot` when a
//!   presented token cannot be resumed from.
//! - `set` / `delete`: `{"key", "value" (set only), "stamp", "seq", "origin"}`.
//! - `error`: `{"reason": …}`, the last event before the relay ends the stream (`too slow`,
//!   `disconnected by the operator`, `server shutting down`, `token expired`).
//!
//! Each `snapshot`, `delta`, `set` and `delete` carries `id: <resume token>` (the v2 token after
//! it, `<run>[-<room tag>].<seq>`), which is what `Last-Event-ID` resumes from.

use std::{convert::Infallible, net::IpAddr, time::Duration};

use actix_web::{HttpRequest, HttpResponse, http::header, web::Bytes};
use bytestring::ByteString;
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{Answer, ApiError, STATE_TIMEOUT};
use crate::{
    config::Live,
    limits::ConnectionSlot,
    outbox::{Outbound, OutboxReceiver, outbox},
    protocol::Version,
    relay::Relay,
    room::Room,
    state::{self, Join, JoinRefused, Leave, Seat},
};

/// A comment line sent when nothing else was for this long, so proxies and readers see the
/// stream alive (and a reader that is gone is noticed).
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Chunks between the converting task and the socket: a small, fixed slack on top of the
/// outbox's byte bound.
const BODY_CHUNKS: usize = 8;

/// Who follows the feed: the `sub` of a JWT, if one was presented.
pub(super) struct Reader {
    pub(super) user: Option<std::sync::Arc<str>>,
    /// When its JWT expires: the stream ends then (`error` `token expired`), as a WebSocket
    /// closes at its token's `exp`.
    pub(super) expires: Option<std::time::SystemTime>,
}

/// Opens the feed of `room` for `reader`, resuming from `resume` if given.
pub(super) async fn open(relay: &Relay, live: &Live, req: &HttpRequest, room: Room, reader: Reader) -> Answer {
    let peer = req.peer_addr().map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |a| a.ip());
    let hdr = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let source = live.proxies.client_addr(peer, hdr("x-forwarded-for"), hdr("x-real-ip"));
    let Some(slot) = relay.connections.acquire_within(
        source,
        live.limits.max_connections_total,
        live.limits.max_connections_per_source,
    ) else {
        return Err(ApiError::unavailable("busy", "the connection caps are reached"));
    };
    let resume = hdr("last-event-id")
        .map(str::to_owned)
        .or_else(|| super::query_param(req, "since"))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let id = Uuid::new_v4();
    let (outbox, rx) = outbox(live.limits.max_outbound_bytes);
    let (kick, kicked) = oneshot::channel();
    let seat =
        Seat { room: room.clone(), user: reader.user, write: false, expires: None, source, caps: live.config.rooms };
    let join = Join { id, color: String::new(), version: Version::V2, resume: resume.clone(), outbox, kick, seat };
    let state = relay.deps.state.clone();
    match tokio::time::timeout(STATE_TIMEOUT, state.send(join)).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(JoinRefused::TooManyRooms))) => {
            return Err(ApiError::new(
                actix_web::http::StatusCode::CONFLICT,
                "too_many_rooms",
                "a new room beyond [rooms] max_rooms",
            ));
        }
        Ok(Ok(Err(JoinRefused::RateLimited))) => {
            return Err(ApiError::new(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limit",
                "this address created [rooms] created_per_minute rooms lately",
            ));
        }
        Ok(Ok(Err(JoinRefused::ShuttingDown))) => {
            return Err(ApiError::unavailable("shutting_down", "the relay is shutting down"));
        }
        _ => {
            state.do_send(Leave { id });
            return Err(ApiError::unavailable("unavailable", "the state actor did not answer"));
        }
    }
    let (body_tx, body_rx) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let expires = reader.expires.map(|at| {
        let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        tokio::time::Instant::now() + left
    });
    let pump =
        Pump { id, resume, prefix: None, rx, body: body_tx, write_timeout: live.limits.write_timeout(), expires };
    actix_web::rt::spawn(pump.run(kicked, state, slot, relay.deps.metrics.clone()));
    let body = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    });
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// Moves one feed's frames from its outbox to its response body.
struct Pump {
    id: Uuid,
    /// The token the reader presented, if any.
    resume: Option<String>,
    /// The resume tokens' part before the sequence number (known from the first state frame).
    prefix: Option<String>,
    rx: OutboxReceiver,
    body: mpsc::Sender<Bytes>,
    write_timeout: Duration,
    /// When the reader's JWT expires.
    expires: Option<tokio::time::Instant>,
}

/// Why the stream ends.
enum End {
    /// The reader went away.
    Gone,
    /// Told to the reader in an `event: error` (if it fits).
    Told(&'static str),
    /// The socket took nothing for `write_timeout_s`.
    Stalled,
}

impl Pump {
    async fn run(
        mut self,
        kicked: oneshot::Receiver<(u16, &'static str)>,
        state: actix::Addr<state::StateActor>,
        slot: ConnectionSlot,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) {
        let end = self.follow(&mut Some(kicked)).await;
        state.do_send(Leave { id: self.id });
        let reason = match end {
            End::Told(reason) => {
                let _ = self.body.try_send(event("error", None, &json!({"reason": reason})));
                reason
            }
            End::Stalled => {
                metrics.write_timed_out(false);
                "stalled"
            }
            End::Gone => "gone",
        };
        log::debug!("change feed {} ended: {reason}", self.id);
        drop(slot);
    }

    async fn follow(&mut self, kicked: &mut Option<oneshot::Receiver<(u16, &'static str)>>) -> End {
        loop {
            let item = tokio::select! {
                biased;
                reason = kicked_by(kicked) => return End::Told(reason),
                () = self.body.closed() => return End::Gone,
                () = until(self.expires) => return End::Told("token expired"),
                item = self.rx.recv() => item,
                () = tokio::time::sleep(KEEPALIVE) => {
                    if let Some(end) = self.send(Bytes::from_static(b": ping\n\n"), kicked).await {
                        return end;
                    }
                    continue;
                }
            };
            match item {
                None => return End::Told("server shutting down"),
                Some(Outbound::Close(_, reason)) => return End::Told(reason),
                Some(Outbound::Frames { frames, bytes }) => {
                    let mut chunk = Vec::new();
                    for frame in frames.iter() {
                        self.convert(frame, &mut chunk);
                    }
                    self.rx.written(bytes);
                    if !chunk.is_empty()
                        && let Some(end) = self.send(Bytes::from(chunk), kicked).await
                    {
                        return end;
                    }
                }
            }
        }
    }

    /// Hands `chunk` to the socket, waiting at most `write_timeout_s` for room (and not past a
    /// kick).
    async fn send(&self, chunk: Bytes, kicked: &mut Option<oneshot::Receiver<(u16, &'static str)>>) -> Option<End> {
        tokio::select! {
            biased;
            reason = kicked_by(kicked) => Some(End::Told(reason)),
            sent = tokio::time::timeout(self.write_timeout, self.body.send(chunk)) => match sent {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some(End::Gone),
                Err(_) => Some(End::Stalled),
            },
        }
    }

    /// Appends the events of one v2 frame to `out` (presence and `hello` give none).
    fn convert(&mut self, frame: &ByteString, out: &mut Vec<u8>) {
        if let Some(prefix) = &self.prefix
            && let Some((kind, data, seq)) = op_event(frame)
        {
            // The frames of ops, by far the most, are rewritten without parsing them: every
            // reader of the room gets the same frame.
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(kind.as_bytes());
            out.extend_from_slice(b"\nid: ");
            out.extend_from_slice(prefix.as_bytes());
            out.push(b'.');
            out.extend_from_slice(seq.as_bytes());
            out.extend_from_slice(b"\ndata: {");
            out.extend_from_slice(data.as_bytes());
            out.extend_from_slice(b"\n\n");
            return;
        }
        let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(frame) else { return };
        let Some(Value::String(kind)) = frame.shift_remove("type") else { return };
        match kind.as_str() {
            "snapshot" | "delta" => {
                let token = frame.get("resume").and_then(Value::as_str).unwrap_or_default().to_owned();
                self.prefix = token.rsplit_once('.').map(|(p, _)| p.to_owned());
                let keys = frame.shift_remove("data").unwrap_or_else(|| Value::Object(Map::new()));
                if kind == "delta" {
                    let deleted = frame.shift_remove("deleted").unwrap_or_else(|| json!([]));
                    out.extend(event("delta", Some(&token), &json!({"keys": keys, "deleted": deleted})));
                    return;
                }
                if let Some(presented) = self.resume.take() {
                    let reason = resync_reason(&presented, self.prefix.as_deref());
                    out.extend(event("resync", None, &json!({"reason": reason})));
                }
                out.extend(event("snapshot", Some(&token), &json!({"keys": keys})));
            }
            "set" | "delete" => {
                let seq = frame.get("seq").and_then(Value::as_u64).unwrap_or_default();
                let id = self.prefix.as_ref().map(|p| format!("{p}.{seq}"));
                out.extend(event(&kind, id.as_deref(), &Value::Object(frame)));
            }
            _ => {}
        }
    }
}

/// A v2 `set`/`delete` frame as made by `protocol::op_frame_v2` (`{"type":"set",` … `,"seq":N}`):
/// its kind, the rest of the object after `"type"` (with its closing brace) and `N`. `None` for
/// any other frame.
fn op_event(frame: &str) -> Option<(&'static str, &str, &str)> {
    let (kind, rest) = if let Some(rest) = frame.strip_prefix(r#"{"type":"set","#) {
        ("set", rest)
    } else {
        ("delete", frame.strip_prefix(r#"{"type":"delete","#)?)
    };
    let (_, seq) = rest.strip_suffix('}')?.rsplit_once(r#","seq":"#)?;
    (!seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit())).then_some((kind, rest, seq))
}

/// Resolves at `deadline`; never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when the state actor kicks the feed; never once it dropped the sender unused.
async fn kicked_by(kick: &mut Option<oneshot::Receiver<(u16, &'static str)>>) -> &'static str {
    if let Some(rx) = kick.as_mut() {
        if let Ok((_, reason)) = rx.await {
            return reason;
        }
        *kick = None;
    }
    std::future::pending().await
}

/// Why a presented token was not resumed from: `bad_token` (not a resume token), `other_run`
/// (from another run of the relay or another room), `too_old` (this room and run, but too far
/// behind to send as a delta, or ahead of the room).
fn resync_reason(presented: &str, prefix: Option<&str>) -> &'static str {
    match presented.rsplit_once('.') {
        Some((p, seq)) if !p.is_empty() && seq.parse::<u64>().is_ok() => {
            if Some(p) == prefix {
                "too_old"
            } else {
                "other_run"
            }
        }
        _ => "bad_token",
    }
}

/// One event: `event:`, `id:` if any, one `data:` line of compact JSON (which holds no newline).
fn event(kind: &str, id: Option<&str>, data: &Value) -> Bytes {
    let mut out = format!("event: {kind}\n");
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_data_line_each() {
        let e = event("set", Some("ab.3"), &json!({"key": "a\nb", "value": "x\ny"}));
        assert_eq!(&e[..], b"event: set\nid: ab.3\ndata: {\"key\":\"a\\nb\",\"value\":\"x\\ny\"}\n\n");
    }

    #[test]
    fn op_frames_are_rewritten_without_parsing() {
        let set = r#"{"type":"set","key":"k","value":{"seq":1},"stamp":"s","origin":null,"seq":12}"#;
        assert_eq!(
            op_event(set),
            Some(("set", r#""key":"k","value":{"seq":1},"stamp":"s","origin":null,"seq":12}"#, "12"))
        );
        let del = r#"{"type":"delete","key":"k","stamp":"s","origin":"o","seq":3}"#;
        assert_eq!(op_event(del).map(|(k, _, n)| (k, n)), Some(("delete", "3")));
        for other in
            [r#"{"type":"presence","id":"x"}"#, r#"{"type":"set","key":"k","value":1}"#, r#"{"type":"set","seq":}"#]
        {
            assert_eq!(op_event(other), None, "{other}");
        }
    }

    #[test]
    fn resync_reasons() {
        assert_eq!(resync_reason("garbage", Some("e")), "bad_token");
        assert_eq!(resync_reason("e.x", Some("e")), "bad_token");
        assert_eq!(resync_reason("f.3", Some("e")), "other_run");
        assert_eq!(resync_reason("e.99", Some("e")), "too_old");
    }

    #[test]
    fn frames_convert_to_events_with_resume_ids() {
        let (_tx, rx) = outbox(1000);
        let (body, _body_rx) = mpsc::channel(1);
        let mut pump = Pump {
            id: Uuid::nil(),
            resume: Some("ff.3".into()),
            prefix: None,
            rx,
            body,
            write_timeout: KEEPALIVE,
            expires: None,
        };
        let mut out = Vec::new();
        for frame in [
            r#"{"type":"hello","id":"x","v":2}"#,
            r#"{"type":"snapshot","data":{"a":1},"resume":"ep-1.4"}"#,
            r#"{"type":"presence","id":"y","x":1,"y":2}"#,
            r#"{"type":"set","key":"a","value":2,"stamp":"s","origin":null,"seq":5}"#,
            r#"{"type":"delete","key":"a","stamp":"t","origin":"o","seq":6}"#,
        ] {
            pump.convert(&ByteString::from(frame), &mut out);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: resync\ndata: {\"reason\":\"other_run\"}\n\n\
             event: snapshot\nid: ep-1.4\ndata: {\"keys\":{\"a\":1}}\n\n\
             event: set\nid: ep-1.5\ndata: {\"key\":\"a\",\"value\":2,\"stamp\":\"s\",\"origin\":null,\"seq\":5}\n\n\
             event: delete\nid: ep-1.6\ndata: {\"key\":\"a\",\"stamp\":\"t\",\"origin\":\"o\",\"seq\":6}\n\n"
        );
    }
}
