//! Rooms and keys: the state now, one key, writes and deletes (through [`state::ApiWrite`]:
//! admitted like a session's write, answered once durable), and the admin endpoints (the room
//! list, the client list, disconnect, compact).

use std::{sync::Arc, time::Duration};

use actix_web::{
    HttpRequest, HttpResponse,
    http::{StatusCode, header},
    web,
};
use futures_util::StreamExt;
use serde::{Serialize, Serializer};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::{Answer, ApiError, STATE_TIMEOUT};
use crate::{
    config::Live,
    json::Json,
    lww::LwwMap,
    protocol::{self, MAX_VALUE_DEPTH},
    relay::Relay,
    room::Room,
    state::{self, ApiRefused, Precondition},
};

/// How long a write waits for an admission slot (the disk is behind) before `503 busy`.
const ADMISSION_WAIT: Duration = Duration::from_secs(30);

/// How long a write waits to be durable before `503 timeout` (it may still become durable).
const DURABLE_WAIT: Duration = Duration::from_secs(60);

/// Rooms with more registers than this are encoded for `GET /rooms/{room}` on the blocking pool.
const SMALL_ROOM: usize = 1_000;

/// How long `POST /compact` waits for the outcome before `202` (it goes on).
const COMPACT_WAIT: Duration = Duration::from_secs(120);

async fn view(relay: &Relay, room: &Room) -> Result<Option<state::RoomView>, ApiError> {
    match tokio::time::timeout(STATE_TIMEOUT, relay.deps.state.send(state::ViewRoom(room.clone()))).await {
        Ok(Ok(view)) => Ok(view),
        _ => Err(ApiError::unavailable("unavailable", "the state actor did not answer")),
    }
}

fn unknown_room(room: &Room) -> ApiError {
    ApiError::not_found("unknown_room", format!("room {room} holds no keys and no members"))
}

/// `GET /rooms/{room}`: `{"room": name, "keys": {key: value, …}, "members": n}`, live keys only.
/// A large room is encoded on the blocking pool, not on the request workers.
pub(super) async fn state(relay: &Relay, room: Room) -> Answer {
    let view = view(relay, &room).await?.ok_or_else(|| unknown_room(&room))?;
    let small = view.map.len() <= SMALL_ROOM;
    let encode = move || {
        /// The live keys, each value written as it is kept.
        struct Keys<'a>(&'a LwwMap);
        impl Serialize for Keys<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.live())
            }
        }
        #[derive(Serialize)]
        struct Body<'a> {
            room: &'a str,
            keys: Keys<'a>,
            members: usize,
        }
        serde_json::to_vec(&Body { room: room.written(), keys: Keys(&view.map), members: view.members })
    };
    let body = if small { Ok(encode()) } else { web::block(encode).await };
    match body {
        Ok(Ok(body)) => Ok(HttpResponse::Ok().content_type("application/json").body(body)),
        _ => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encoding_failed", "the room could not be encoded")),
    }
}

/// `GET /rooms/{room}/keys/{key}`: `{"value": v, "stamp": s}` and `ETag: "<stamp>"`; 404 when the
/// key holds no value (never written or deleted) or the room is not held.
pub(super) async fn get_key(relay: &Relay, room: Room, key: String) -> Answer {
    let view = view(relay, &room).await?.ok_or_else(|| unknown_room(&room))?;
    let register = view
        .map
        .register(&key)
        .filter(|r| !r.tombstone)
        .ok_or_else(|| ApiError::not_found("no_such_key", format!("{key:?} holds no value in room {room}")))?;
    let stamp = register.stamp.to_string();
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, format!("\"{stamp}\"")))
        .json(json!({"value": register.value, "stamp": stamp})))
}

/// What a PUT or DELETE names.
pub(super) struct KeyWrite {
    pub(super) room: Room,
    pub(super) key: String,
    pub(super) by: Arc<str>,
}

/// The JSON value of a PUT body, within the limits a browser's write meets.
///
/// # Errors
/// `413 too_large` for a body over `[limits] max_frame_bytes` or a value over `max_value_bytes`,
/// `400 bad_json` for a body that is not one JSON value, `400 too_deep` for a value nested deeper
/// than a browser's may be.
pub(super) async fn read_value(mut body: web::Payload, live: &Live) -> Result<Json, ApiError> {
    let limit = live.limits.max_frame_bytes.max(live.limits.max_value_bytes);
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the value is larger than {} bytes", live.limits.max_value_bytes),
        )
    };
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| ApiError::bad_request("bad_body", format!("cannot read the body: {err}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::bad_request("bad_json", format!("the body is not one JSON value: {err}")))?;
    let value = Json::from_value(&value);
    if value.len() > live.limits.max_value_bytes {
        return Err(too_large());
    }
    if protocol::check_value(&value, &live.limits).is_err() {
        return Err(ApiError::bad_request(
            "too_deep",
            format!("the value is nested deeper than {MAX_VALUE_DEPTH} levels"),
        ));
    }
    Ok(value)
}

/// The condition of a write: `If-Match: "<stamp>"` (quotes optional) or `If-Match: *`, or
/// `If-None-Match: *`.
///
/// # Errors
/// `400 bad_precondition` for both headers, an empty one, or `If-None-Match` other than `*`.
pub(super) fn precondition(req: &HttpRequest) -> Result<Option<Precondition>, ApiError> {
    let get = |name| req.headers().get(name).map(|v| v.to_str().map(str::trim));
    let bad = |message: &str| ApiError::bad_request("bad_precondition", message);
    match (get(header::IF_MATCH), get(header::IF_NONE_MATCH)) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(bad("send If-Match or If-None-Match, not both")),
        (Some(Ok("*")), None) => Ok(Some(Precondition::Exists)),
        (Some(Ok(tag)), None) => {
            let stamp = tag.strip_prefix('"').and_then(|t| t.strip_suffix('"')).unwrap_or(tag);
            if stamp.is_empty() || stamp.contains('"') {
                return Err(bad("If-Match takes one stamp, as the ETag gives it"));
            }
            Ok(Some(Precondition::Stamp(stamp.to_owned())))
        }
        (None, Some(Ok("*"))) => Ok(Some(Precondition::Absent)),
        _ => Err(bad("If-Match takes one stamp or *; If-None-Match only *")),
    }
}

/// `PUT` (`value`) or `DELETE` (`None`) of a key: admitted through the same slots as a browser's
/// write, stamped and queued on the state actor, answered once durable with `{"stamp": s}` and
/// `ETag: "<stamp>"`.
pub(super) async fn write(
    relay: &Relay,
    live: &Live,
    write: KeyWrite,
    value: Option<Json>,
    condition: Option<Precondition>,
) -> Answer {
    if write.key.len() > live.limits.max_key_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("the key is longer than {} bytes", live.limits.max_key_bytes),
        ));
    }
    let permit = tokio::time::timeout(ADMISSION_WAIT, Arc::clone(&relay.deps.admission).acquire_owned())
        .await
        .map_err(|_| ApiError::unavailable("busy", "too many writes are waiting for the disk"))?
        .map_err(|_| ApiError::unavailable("shutting_down", "the relay is shutting down"))?;
    let (reply, answer) = oneshot::channel();
    let msg = state::ApiWrite {
        room: write.room,
        key: write.key,
        value,
        by: write.by,
        condition,
        caps: live.config.rooms,
        permit,
        reply,
    };
    relay.deps.state.send(msg).await.map_err(|_| ApiError::unavailable("unavailable", "the state actor is gone"))?;
    let outcome = tokio::time::timeout(DURABLE_WAIT, answer)
        .await
        .map_err(|_| ApiError::unavailable("timeout", "not durable within 60 s; it may still become durable"))?
        .map_err(|_| ApiError::unavailable("shutting_down", "the write was not taken"))?;
    match outcome {
        Ok(stamp) => {
            let stamp = stamp.to_string();
            Ok(HttpResponse::Ok().insert_header((header::ETAG, format!("\"{stamp}\""))).json(json!({"stamp": stamp})))
        }
        Err(refused) => Err(refusal(refused)),
    }
}

fn refusal(refused: ApiRefused) -> ApiError {
    match refused {
        ApiRefused::RoomFull => {
            ApiError::new(StatusCode::CONFLICT, "room_full", "the room would exceed [rooms] max_keys or max_bytes")
        }
        ApiRefused::TooManyRooms => {
            ApiError::new(StatusCode::CONFLICT, "too_many_rooms", "the relay holds [rooms] max_rooms rooms")
        }
        ApiRefused::Precondition(current) => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "precondition_failed",
            "the key's newest write does not match the condition",
        )
        .with("stamp", current.map_or(Value::Null, |s| Value::from(s.to_string()))),
        ApiRefused::Superseded => {
            ApiError::new(StatusCode::CONFLICT, "superseded", "a newer write to the key was already held")
        }
        ApiRefused::LedgerFailed => {
            ApiError::unavailable("ledger_failed", "the ledger could not make the write durable; nothing was applied")
        }
        ApiRefused::ShuttingDown => ApiError::unavailable("shutting_down", "the relay is shutting down"),
    }
}

/// `GET /rooms` (admin): `{"rooms": [{"room", "keys", "registers", "members", "v1", "v2",
/// "users"}, …]}`, the default room first.
pub(super) async fn list(relay: &Relay) -> Answer {
    let rooms = tokio::time::timeout(STATE_TIMEOUT, relay.deps.state.send(state::ListRooms))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::unavailable("unavailable", "the state actor did not answer"))?;
    Ok(HttpResponse::Ok().json(json!({"rooms": rooms})))
}

/// `GET /clients` (admin): `{"clients": [{"id", "room", "address", "protocol", "user"}, …]}`, every
/// connected member, by room then id.
pub(super) async fn clients(relay: &Relay) -> Answer {
    let clients = tokio::time::timeout(STATE_TIMEOUT, relay.deps.state.send(state::ListClients))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::unavailable("unavailable", "the state actor did not answer"))?;
    Ok(HttpResponse::Ok().json(json!({"clients": clients})))
}

/// `POST /rooms/{room}/disconnect` (admin), body empty, `{}` or `{"user": sub}`:
/// `{"disconnected": n}`.
pub(super) async fn disconnect(relay: &Relay, room: Room, mut body: web::Payload, live: &Live) -> Answer {
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| ApiError::bad_request("bad_body", format!("cannot read the body: {err}")))?;
        if bytes.len() + chunk.len() > live.limits.max_frame_bytes {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "the body is too large"));
        }
        bytes.extend_from_slice(&chunk);
    }
    let user = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let body: Value = serde_json::from_slice(&bytes)
            .map_err(|err| ApiError::bad_request("bad_json", format!("the body is not JSON: {err}")))?;
        let bad = || ApiError::bad_request("bad_body", r#"the body is {} or {"user": "<sub>"}"#);
        let Value::Object(body) = body else { return Err(bad()) };
        match body.get("user") {
            None if body.is_empty() => None,
            Some(Value::String(user)) if body.len() == 1 => Some(user.clone()),
            _ => return Err(bad()),
        }
    };
    let n = tokio::time::timeout(STATE_TIMEOUT, relay.deps.state.send(state::Disconnect { room, user }))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| ApiError::unavailable("unavailable", "the state actor did not answer"))?;
    Ok(HttpResponse::Ok().json(json!({"disconnected": n})))
}

/// `POST /compact` (admin): starts an online compaction now (or joins the one running) and
/// answers its outcome: `200 {"archive", "snapshot_bytes", "folded_bytes", "tail_bytes",
/// "elapsed_ms"}`, `500 compaction_failed`, or `202 {"status": "running"}` after two minutes.
pub(super) async fn compact(relay: &Relay) -> Answer {
    let sent = relay.deps.state.send(state::CompactNow);
    match tokio::time::timeout(COMPACT_WAIT, sent).await {
        Err(_) => Ok(HttpResponse::Accepted().json(json!({"status": "running"}))),
        Ok(Err(_)) => Err(ApiError::unavailable("unavailable", "the state actor is gone")),
        Ok(Ok(Err(message))) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "compaction_failed", message)),
        Ok(Ok(Ok(done))) => Ok(HttpResponse::Ok().json(json!({
            "archive": done.archive.display().to_string(),
            "snapshot_bytes": done.snapshot_bytes,
            "folded_bytes": done.folded_bytes,
            "tail_bytes": done.tail_bytes,
            "elapsed_ms": done.elapsed.as_secs_f64() * 1000.0,
        }))),
    }
}
